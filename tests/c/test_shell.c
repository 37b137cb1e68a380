/* Unit tests for src/core/shell.c: quoting, ~ expansion, script text; a few strings go through
 * real bash (posix_spawn, no shell in between) and must come back byte-identical. */
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "shell.h"

extern char **environ;

static char out[1 << 16];


#define S(lit) ((struct galley_str){ (lit), sizeof(lit) - 1 })
#define NONE ((struct galley_str){ NULL, 0 })


/* Runs the two passes of a builder and checks they agree; returns the NUL-terminated text. */
#define BUILD(call_null, call_out)                                                   \
  do {                                                                               \
    size_t want_ = (call_null);                                                      \
    CHECK(want_ < sizeof out);                                                       \
    size_t got_ = (call_out);                                                        \
    CHECK(got_ == want_);                                                            \
    out[got_] = '\0';                                                                \
  } while (0)


static const char *quote(const char *s, size_t n) {
  BUILD(galley_shell_quote(NULL, s, n), galley_shell_quote(out, s, n));
  return out;
}


static const char *script(const struct galley_shell_spec *spec) {
  BUILD(galley_shell_script(NULL, spec), galley_shell_script(out, spec));
  return out;
}


static const char *payload(const struct galley_shell_spec *spec, bool inherit) {
  BUILD(galley_shell_payload(NULL, spec, inherit), galley_shell_payload(out, spec, inherit));
  return out;
}


/* Runs `bash -c <text>` with stdin and stderr on /dev/null; returns stdout (into buf) and its length, or
 * -1 when bash could not be run. *status gets the exit status. */
static ssize_t run_bash(const char *text, char *buf, size_t cap, int *status) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  char *argv[] = { "bash", "-c", (char *)text, NULL };
  pid_t pid;
  int rc = posix_spawn(&pid, "/bin/bash", &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return -1;
  }
  size_t len = 0;
  ssize_t r;
  while ((r = read(fds[0], buf + len, cap - len)) > 0) len += (size_t)r;
  close(fds[0]);
  waitpid(pid, status, 0);
  *status = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
  return (ssize_t)len;
}


static void shell_should_quote_words_exactly(void) {
  CHECK_STR(quote("", 0), "''");
  CHECK_STR(quote("abc", 3), "abc");
  CHECK_STR(quote("--flag=x,y:z@1%/.+", 18), "--flag=x,y:z@1%/.+");
  CHECK_STR(quote("a b", 3), "'a b'");
  CHECK_STR(quote("it's", 4), "'it'\\''s'");
  CHECK_STR(quote("'", 1), "''\\'''");
  CHECK_STR(quote("~", 1), "'~'");
  CHECK_STR(quote("$HOME", 5), "'$HOME'");
  CHECK_STR(quote("a\nb", 3), "'a\nb'");
}


static void shell_should_quote_assignments_and_reserved_words(void) {
  CHECK_STR(quote("A=1", 3), "'A=1'");
  CHECK_STR(quote("_x+=1", 5), "'_x+=1'");
  CHECK_STR(quote("1A=1", 4), "1A=1");
  CHECK_STR(quote("time", 4), "'time'");
  CHECK_STR(quote("if", 2), "'if'");
  CHECK_STR(quote("iff", 3), "iff");
}


static void shell_should_validate_env_names(void) {
  CHECK(galley_shell_is_env_name("A", 1));
  CHECK(galley_shell_is_env_name("_a9", 3));
  CHECK(!galley_shell_is_env_name("", 0));
  CHECK(!galley_shell_is_env_name("9a", 2));
  CHECK(!galley_shell_is_env_name("A-B", 3));
  CHECK(!galley_shell_is_env_name("A=", 2));
}


static const char *expand(const char *path, const char *home) {
  BUILD(galley_shell_expand_home(NULL, path, strlen(path), home, strlen(home)),
        galley_shell_expand_home(out, path, strlen(path), home, strlen(home)));
  return out;
}


static void shell_should_expand_only_a_leading_home(void) {
  CHECK_STR(expand("~", "/root"), "/root");
  CHECK_STR(expand("~/", "/root"), "/root/");
  CHECK_STR(expand("~/a b", "/root"), "/root/a b");
  CHECK_STR(expand("~/x", "/root/"), "/root/x");
  CHECK_STR(expand("~user/x", "/root"), "~user/x");
  CHECK_STR(expand("/a/~/b", "/root"), "/a/~/b");
  CHECK_STR(expand("", "/root"), "");
}


static const char *quote_path(const char *s, struct galley_str home) {
  BUILD(galley_shell_quote_path(NULL, s, strlen(s), home),
        galley_shell_quote_path(out, s, strlen(s), home));
  return out;
}


static void shell_should_quote_paths_with_and_without_a_home(void) {
  CHECK_STR(quote_path("~/a b", S("/h")), "'/h/a b'");
  CHECK_STR(quote_path("~/bin", S("/h")), "/h/bin");
  CHECK_STR(quote_path("~/it's", S("/h'q")), "'/h'\\''q/it'\\''s'");
  CHECK_STR(quote_path("~/a b", NONE), "~/'a b'");
  CHECK_STR(quote_path("~/", NONE), "~/");
  CHECK_STR(quote_path("~", NONE), "~");
  CHECK_STR(quote_path("~x", S("/h")), "'~x'");
  CHECK_STR(quote_path("", S("/h")), "''");
}


static void shell_should_build_an_argv_script(void) {
  struct galley_str args[] = { S("%s\\n"), S("a b"), S("") };
  struct galley_shell_env env[] = { { S("A"), S("x'y") }, { S("B"), S("2") } };
  struct galley_shell_spec spec = {
    .kind = GALLEY_SHELL_ARGV, .command = S("printf"), .args = args, .nargs = 3,
    .cwd = S("/tmp/my dir"), .env = env, .nenv = 2,
  };
  CHECK(galley_shell_needs_script(&spec));
  CHECK_STR(script(&spec),
            "cd -- '/tmp/my dir' || exit 127\n"
            "export A='x'\\''y' || exit 127\n"
            "export B=2 || exit 127\n"
            "exec -- printf '%s\\n' 'a b' ''\n");
  CHECK_STR(payload(&spec, false),
            "cd -- '/tmp/my dir' || exit 127\n"
            "export A='x'\\''y' || exit 127\n"
            "export B=2 || exit 127\n"
            "exec -- printf '%s\\n' 'a b' '' </dev/null");
  CHECK_STR(payload(&spec, true),
            "cd -- '/tmp/my dir' || exit 127\n"
            "export A='x'\\''y' || exit 127\n"
            "export B=2 || exit 127\n"
            "exec -- printf '%s\\n' 'a b' ''");
}


static void shell_should_keep_a_plain_argv_without_a_script(void) {
  struct galley_shell_spec spec = { .kind = GALLEY_SHELL_ARGV, .command = S("ls") };
  CHECK(!galley_shell_needs_script(&spec));
  spec.command = S("~/bin/x");
  CHECK(galley_shell_needs_script(&spec));      /* only bash can expand ~ */
  spec.home = S("/root");
  CHECK(!galley_shell_needs_script(&spec));
  spec.env = NULL;
  spec.cwd = S("/");
  CHECK(galley_shell_needs_script(&spec));
}


static void shell_should_put_a_shell_script_verbatim(void) {
  struct galley_shell_spec spec = { .kind = GALLEY_SHELL_SCRIPT, .script = S("echo \"$X\" # hi") };
  CHECK_STR(script(&spec), "echo \"$X\" # hi");
  CHECK_STR(payload(&spec, false), "exec </dev/null\necho \"$X\" # hi");
  spec.cwd = S("~/w");
  CHECK_STR(script(&spec), "cd -- ~/w || exit 127\necho \"$X\" # hi");
}


static const char hostile[][24] = {
  "", " ", "'", "''", "\"", "$HOME", "`id`", "$(id)", "\\", "\\'", "a\nb", "\t", "-n", "--",
  "~", "~/x", "*", "?", "[a]", "{a,b}", "!!", "#x", "x#", "a;b", "a|b", "a&b", "<x", ">x",
  "A=1", "time", "\xc3\xa9", "\xff\xfe", "\x80", "\x01\x7f", "%s", "\r\n",
};


static void shell_should_round_trip_hostile_words_through_bash(void) {
  static char text[1 << 15], got[1 << 15];
  size_t len = 0;
  memcpy(text, "printf '%s\\0'", 13);
  len = 13;
  size_t count = sizeof hostile / sizeof hostile[0];
  for (size_t i = 0; i < count; i++) {
    text[len++] = ' ';
    len += galley_shell_quote(text + len, hostile[i], strlen(hostile[i]));
  }
  text[len] = '\0';
  int status = -1;
  ssize_t n = run_bash(text, got, sizeof got, &status);
  CHECK(status == 0);
  size_t pos = 0;
  CHECK(n >= 0);
  size_t i = 0;
  for (; i < count && n >= 0; i++) {
    size_t want = strlen(hostile[i]);
    if (pos + want >= (size_t)n || memcmp(got + pos, hostile[i], want) != 0 || got[pos + want] != '\0') {
      fprintf(stderr, "word %zu (\"%s\") did not come back\n", i, hostile[i]);
      break;
    }
    pos += want + 1;
  }
  CHECK(i == count);
  CHECK(pos == (size_t)n);
}


static void shell_should_stop_with_127_when_cwd_is_missing(void) {
  struct galley_str args[] = { S("ran") };
  struct galley_shell_spec spec = {
    .kind = GALLEY_SHELL_ARGV, .command = S("echo"), .args = args, .nargs = 1,
    .cwd = S("/nonexistent/galley-test-dir"),
  };
  static char got[256];
  int status = -1;
  ssize_t n = run_bash(script(&spec), got, sizeof got, &status);
  CHECK(status == GALLEY_SHELL_PRELUDE_EXIT);
  CHECK(n == 0);
}


int main(void) {
  RUN(shell_should_quote_words_exactly);
  RUN(shell_should_quote_assignments_and_reserved_words);
  RUN(shell_should_validate_env_names);
  RUN(shell_should_expand_only_a_leading_home);
  RUN(shell_should_quote_paths_with_and_without_a_home);
  RUN(shell_should_build_an_argv_script);
  RUN(shell_should_keep_a_plain_argv_without_a_script);
  RUN(shell_should_put_a_shell_script_verbatim);
  RUN(shell_should_round_trip_hostile_words_through_bash);
  RUN(shell_should_stop_with_127_when_cwd_is_missing);
  return CHECK_DONE();
}
