/* POSIX quoting and script building for CommandSpecs (see shell.h for the two-pass contract). */
#include <string.h>
#include "shell.h"

#define STR_(x) #x
#define STR(x) STR_(x)
/* Ends each prelude line: a failed cd/export stops the script before the command. */
#define PRELUDE_END " || exit " STR(GALLEY_SHELL_PRELUDE_EXIT) "\n"


/* Write cursor: with out == NULL it only counts. */
struct sink {
  char *out;
  size_t len;
};


static void put(struct sink *k, const char *s, size_t n) {
  if (k->out && n) memcpy(k->out + k->len, s, n);
  k->len += n;
}


static void put_str(struct sink *k, const char *s) {
  put(k, s, strlen(s));
}


/* Characters a word may hold unquoted: letters, digits and _./:@%+=,- (a table: words can be
 * megabytes of base64). */
static const bool BARE[256] = {
  ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
  ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
  ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
  ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
  ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
  ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
  ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1,
  ['9'] = 1, ['_'] = 1, ['.'] = 1, ['/'] = 1, [':'] = 1, ['@'] = 1, ['%'] = 1, ['+'] = 1, ['='] = 1,
  [','] = 1, ['-'] = 1,
};

/* Whether every byte of s[0..n) is bare. */
static bool all_bare(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!BARE[(unsigned char)s[i]]) return false;
  return true;
}


static bool is_name_start(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}


static bool is_name_char(unsigned char c) {
  return is_name_start(c) || (c >= '0' && c <= '9');
}


/* A word given as up to two pieces (an expanded home is home + the rest of the path), so the
 * quoting code never needs a scratch copy. */
struct word {
  const char *ptr[2];
  size_t len[2];
};


static size_t word_len(const struct word *w) {
  return w->len[0] + w->len[1];
}


static unsigned char word_at(const struct word *w, size_t i) {
  return (unsigned char)(i < w->len[0] ? w->ptr[0][i] : w->ptr[1][i - w->len[0]]);
}


/* `NAME=...` or `NAME+=...` in command position is an assignment, not a word. */
static bool looks_like_assignment(const struct word *w) {
  size_t n = word_len(w);
  if (n == 0 || !is_name_start(word_at(w, 0))) return false;
  size_t i = 1;
  while (i < n && is_name_char(word_at(w, i))) i++;
  if (i < n && word_at(w, i) == '=') return true;
  return i + 1 < n && word_at(w, i) == '+' && word_at(w, i + 1) == '=';
}


/* Bash reserved words made only of bare characters; quoting them is harmless everywhere and
 * keeps `shell.join{"time", ...}` a command rather than the `time` keyword. */
static bool is_reserved_word(const struct word *w) {
  static const char *const words[] = {
    "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for", "function",
    "if", "in", "select", "then", "time", "until", "while", NULL
  };
  size_t n = word_len(w);
  for (const char *const *r = words; *r; r++) {
    if (strlen(*r) != n) continue;
    size_t i = 0;
    while (i < n && word_at(w, i) == (unsigned char)(*r)[i]) i++;
    if (i == n) return true;
  }
  return false;
}


static void quote_word(struct sink *k, const struct word *w) {
  bool bare = word_len(w) > 0 && all_bare(w->ptr[0], w->len[0]) && all_bare(w->ptr[1], w->len[1]);
  if (bare && !looks_like_assignment(w) && !is_reserved_word(w)) {
    put(k, w->ptr[0], w->len[0]);
    put(k, w->ptr[1], w->len[1]);
    return;
  }
  put(k, "'", 1);
  for (int p = 0; p < 2; p++) {
    const char *s = w->ptr[p];
    size_t start = 0;
    for (const char *q; (q = memchr(s + start, '\'', w->len[p] - start)) != NULL;) {
      size_t i = (size_t)(q - s);
      put(k, s + start, i - start);
      put(k, "'\\''", 4);
      start = i + 1;
    }
    put(k, s + start, w->len[p] - start);
  }
  put(k, "'", 1);
}


static void quote_into(struct sink *k, const char *s, size_t n) {
  struct word w = { { s, "" }, { n, 0 } };
  quote_word(k, &w);
}


size_t galley_shell_quote(char *out, const char *s, size_t n) {
  struct sink k = { out, 0 };
  quote_into(&k, s, n);
  return k.len;
}


bool galley_shell_is_env_name(const char *s, size_t n) {
  if (n == 0 || !is_name_start((unsigned char)s[0])) return false;
  for (size_t i = 1; i < n; i++)
    if (!is_name_char((unsigned char)s[i])) return false;
  return true;
}


bool galley_shell_has_home_prefix(const char *s, size_t n) {
  return n >= 1 && s[0] == '~' && (n == 1 || s[1] == '/');
}


/* The path as (home, rest) pieces; "~/x" with home "/root/" gives "/root/x", not "/root//x". */
static struct word expanded(const char *path, size_t n, const char *home, size_t hn) {
  if (!galley_shell_has_home_prefix(path, n)) return (struct word){ { path, "" }, { n, 0 } };
  size_t skip = (n > 1 && hn > 0 && home[hn - 1] == '/') ? 2 : 1;
  return (struct word){ { home, path + skip }, { hn, n - skip } };
}


size_t galley_shell_expand_home(char *out, const char *path, size_t n, const char *home, size_t hn) {
  struct sink k = { out, 0 };
  struct word w = expanded(path, n, home, hn);
  put(&k, w.ptr[0], w.len[0]);
  put(&k, w.ptr[1], w.len[1]);
  return k.len;
}


static void quote_path_into(struct sink *k, const char *s, size_t n, struct galley_str home) {
  if (galley_shell_has_home_prefix(s, n) && !home.ptr) {
    /* No home known here: leave the ~ for bash to expand, quote the rest. */
    put(k, n == 1 ? "~" : "~/", n == 1 ? 1 : 2);
    if (n > 2) quote_into(k, s + 2, n - 2);
    return;
  }
  struct word w = expanded(s, n, home.ptr, home.len);
  quote_word(k, &w);
}


size_t galley_shell_quote_path(char *out, const char *s, size_t n, struct galley_str home) {
  struct sink k = { out, 0 };
  quote_path_into(&k, s, n, home);
  return k.len;
}


bool galley_shell_needs_script(const struct galley_shell_spec *spec) {
  if (spec->kind != GALLEY_SHELL_ARGV || spec->cwd.ptr || spec->nenv > 0) return true;
  /* "~/bin/x" with no home to substitute: only bash can expand it. */
  return !spec->home.ptr && galley_shell_has_home_prefix(spec->command.ptr, spec->command.len);
}


/* `cd -- <cwd> || exit 127` and `export K=<v> || exit 127` lines, then the command. The payload
 * variant redirects the command's stdin and has no trailing newline after an exec line. */
static void build(struct sink *k, const struct galley_shell_spec *spec, bool payload, bool stdin_inherit) {
  if (spec->cwd.ptr) {
    put_str(k, "cd -- ");
    quote_path_into(k, spec->cwd.ptr, spec->cwd.len, spec->home);
    put_str(k, PRELUDE_END);
  }
  for (size_t i = 0; i < spec->nenv; i++) {
    put_str(k, "export ");
    put(k, spec->env[i].name.ptr, spec->env[i].name.len);
    put_str(k, "=");
    quote_into(k, spec->env[i].value.ptr, spec->env[i].value.len);
    put_str(k, PRELUDE_END);
  }
  bool devnull = payload && !stdin_inherit;
  if (spec->kind == GALLEY_SHELL_SCRIPT) {
    if (devnull) put_str(k, "exec </dev/null\n");
    put(k, spec->script.ptr, spec->script.len);
    return;
  }
  /* `--` so a command starting with '-' is not read as an option of exec. */
  put_str(k, "exec -- ");
  quote_path_into(k, spec->command.ptr, spec->command.len, spec->home);
  for (size_t i = 0; i < spec->nargs; i++) {
    put_str(k, " ");
    quote_into(k, spec->args[i].ptr, spec->args[i].len);
  }
  if (devnull) put_str(k, " </dev/null");
  if (!payload) put_str(k, "\n");
}


size_t galley_shell_script(char *out, const struct galley_shell_spec *spec) {
  struct sink k = { out, 0 };
  build(&k, spec, false, false);
  return k.len;
}


size_t galley_shell_payload(char *out, const struct galley_shell_spec *spec, bool stdin_inherit) {
  struct sink k = { out, 0 };
  build(&k, spec, true, stdin_inherit);
  return k.len;
}
