/* Unit tests for src/core/proc.c: real children, real pipes, real signals, on the event loop
 * (driven here with galley_loop_turn, as the Lua scheduler does). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "loop.h"
#include "proc.h"
#include "sig.h"

static const galley_proc_limits no_limits = {-1, GALLEY_PROC_DEFAULT_GRACE_MS, GALLEY_PROC_DEFAULT_MAX_OUTPUT};


static int finished(galley_proc *p) { return galley_proc_finished(p); }
static int has_event(galley_proc *p) { return galley_proc_has_event(p); }


/* Turns the loop until done(p), ms (< 0: none) or a pending signal: GALLEY_PROC_OK, TIMEOUT or
 * EINTR. */
static int drive(galley_proc *p, int (*done)(galley_proc *), int64_t ms) {
  int rc;
  galley_proc_deadline(p, ms);
  for (;;) {
    if (done(p)) {
      rc = GALLEY_PROC_OK;
      break;
    }
    if (galley_sig_pending()) {
      rc = GALLEY_PROC_EINTR;
      break;
    }
    if (galley_proc_deadline_passed(p)) {
      rc = GALLEY_PROC_TIMEOUT;
      break;
    }
    galley_loop_turn(0);
  }
  galley_proc_deadline(p, -1);
  return rc;
}


/* What proc.run does: nothing starts with a signal pending; a signal kills and reaps. */
static int run_spec(const galley_proc_spec *spec, const galley_proc_limits *lim, galley_proc **out, int *err_no) {
  *out = NULL;
  if (galley_sig_pending()) return GALLEY_PROC_EINTR;
  int rc = galley_proc_spawn(galley_loop(), spec, out, err_no);
  if (rc != GALLEY_PROC_OK) return rc;
  galley_proc_limit(*out, lim);
  rc = drive(*out, finished, -1);
  if (rc == GALLEY_PROC_EINTR) galley_proc_terminate(*out);
  return rc;
}


/* What Process:wait does. */
static int wait_for(galley_proc *p, int64_t ms, size_t max_output) {
  galley_proc_close_stdin(p);
  galley_proc_capture(p, max_output);
  return drive(p, finished, ms);
}


/* What Process:read does: an event, or GALLEY_PROC_TIMEOUT / EINTR. */
static int next_event(galley_proc *p, int64_t ms, const char **data, size_t *len) {
  int ev = galley_proc_next(p, data, len);
  if (ev) return ev;
  int rc = drive(p, has_event, ms);
  if (rc != GALLEY_PROC_OK) return rc;
  return galley_proc_next(p, data, len);
}


static int spawn_spec(const galley_proc_spec *spec, galley_proc **out, int *err_no) {
  return galley_proc_spawn(galley_loop(), spec, out, err_no);
}


/* Runs argv (NULL-terminated) under lim with optional stdin; returns the process or NULL. */
static galley_proc *run_argv(const char *const *argv, const galley_proc_limits *lim, const char *in, size_t in_len) {
  galley_proc_spec spec = {0};
  spec.argv = argv;
  if (in) {
    spec.stdin_mode = GALLEY_PROC_STDIN_DATA;
    spec.stdin_data = in;
    spec.stdin_len = in_len;
  }
  galley_proc *p = NULL;
  int err_no = 0;
  int rc = run_spec(&spec, lim ? lim : &no_limits, &p, &err_no);
  CHECK(rc == GALLEY_PROC_OK);
  if (rc != GALLEY_PROC_OK) {
    galley_proc_close(p);
    return NULL;
  }
  return p;
}


static const char *out_of(galley_proc *p, int stream, size_t *len) {
  uint64_t dropped;
  size_t n;
  const char *s = galley_proc_output(p, stream, &n, &dropped);
  if (len) *len = n;
  return s;
}


/* Copies stream output into a NUL-terminated static buffer for CHECK_STR. */
static const char *out_str(galley_proc *p, int stream) {
  static char buf[2][4096];
  size_t n;
  const char *s = out_of(p, stream, &n);
  if (n >= sizeof buf[0]) n = sizeof buf[0] - 1;
  memcpy(buf[stream - 1], s, n);
  buf[stream - 1][n] = '\0';
  return buf[stream - 1];
}


static int exit_code_of(const char *const *argv) {
  galley_proc *p = run_argv(argv, NULL, NULL, 0);
  if (!p) return -1;
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  galley_proc_close(p);
  return st.exit_code;
}


static void proc_should_report_exit_codes(void) {
  CHECK(exit_code_of((const char *[]){"true", NULL}) == 0);
  CHECK(exit_code_of((const char *[]){"false", NULL}) == 1);
  CHECK(exit_code_of((const char *[]){"sh", "-c", "exit 7", NULL}) == 7);
}


static void proc_should_capture_stdout_and_stderr_separately(void) {
  galley_proc *p = run_argv((const char *[]){"sh", "-c", "echo out; echo err >&2", NULL}, NULL, NULL, 0);
  if (!p) return;
  CHECK_STR(out_str(p, 1), "out\n");
  CHECK_STR(out_str(p, 2), "err\n");
  galley_proc_close(p);
}


static void proc_should_report_a_terminating_signal(void) {
  galley_proc *p = run_argv((const char *[]){"sh", "-c", "kill -TERM $$", NULL}, NULL, NULL, 0);
  if (!p) return;
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.reaped);
  CHECK(st.signal == SIGTERM);
  CHECK(st.exit_code == 128 + SIGTERM);
  CHECK(!st.timed_out);
  galley_proc_close(p);
}


/* A pid is gone once it no longer exists or is only a zombie awaiting its new parent. */
/* A reader that awaits something else after taking a chunk (the emulator writes it to a socket)
 * lets the loop run: what the child wrote meanwhile must still come next, not be dropped. */
static void proc_should_keep_output_read_while_the_caller_was_busy(void) {
  const char *argv[] = {"sh", "-c", "echo first; sleep 0.2; echo second", NULL};
  galley_proc_spec spec = {.argv = argv};
  galley_proc *p = NULL;
  int err_no;
  CHECK(spawn_spec(&spec, &p, &err_no) == GALLEY_PROC_OK);
  if (!p) return;
  const char *data;
  size_t len;
  CHECK(next_event(p, 5000, &data, &len) == GALLEY_PROC_EV_STDOUT);
  CHECK(len == 6 && memcmp(data, "first\n", 6) == 0);
  CHECK(drive(p, finished, 5000) == GALLEY_PROC_OK); /* "second" arrives, then EOF and exit */
  CHECK(next_event(p, 0, &data, &len) == GALLEY_PROC_EV_STDOUT);
  CHECK(len == 7 && memcmp(data, "second\n", 7) == 0);
  CHECK(next_event(p, 0, &data, &len) == GALLEY_PROC_EV_EXIT);
  galley_proc_close(p);
}


static int pid_gone(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X');
}


static void proc_should_kill_the_whole_group_on_timeout(void) {
  /* The grandchild reports the SIGTERM it gets and says when its trap is set; the child waits
   * for that, prints the grandchild's pid and sleeps until the time limit. */
  const char *script =
    "f=$(mktemp); "
    "sh -c 'trap \"echo got-term >&2; exit 0\" TERM; echo x >\"$0\"; while :; do sleep 1; done' \"$f\" & "
    "while [ ! -s \"$f\" ]; do sleep 0.01; done; rm -f \"$f\"; echo $!; sleep 30";
  galley_proc_limits lim = {1000, 5000, 1 << 20};
  galley_proc *p = run_argv((const char *[]){"sh", "-c", script, NULL}, &lim, NULL, 0);
  if (!p) return;
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.timed_out);
  CHECK(st.signal == SIGTERM);
  CHECK(strstr(out_str(p, 2), "got-term\n") != NULL); /* sh may add "Terminated" */
  pid_t grandchild = (pid_t)atoi(out_str(p, 1));
  CHECK(grandchild > 0);
  galley_proc_close(p);
  /* Its new parent reaps it shortly. */
  int gone = 0;
  for (int i = 0; i < 100 && !gone; i++) {
    gone = grandchild > 0 && pid_gone(grandchild);
    if (!gone) usleep(20000);
  }
  CHECK(gone);
}


static void proc_should_follow_sigterm_with_sigkill_after_the_grace(void) {
  galley_proc_limits lim = {100, 100, 1 << 20};
  galley_proc *p = run_argv((const char *[]){"sh", "-c", "trap '' TERM; echo ready; sleep 30", NULL}, &lim, NULL, 0);
  if (!p) return;
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.timed_out);
  CHECK(st.signal == SIGKILL);
  CHECK_STR(out_str(p, 1), "ready\n");
  galley_proc_close(p);
}


/* "1\n2\n...n\n", as seq prints it; caller frees. */
static char *seq_text(int n, size_t *len) {
  size_t cap = (size_t)n * 8 + 1, k = 0;
  char *s = malloc(cap);
  for (int i = 1; i <= n; i++) k += (size_t)snprintf(s + k, cap - k, "%d\n", i);
  *len = k;
  return s;
}


static void proc_should_keep_the_head_and_tail_of_long_output(void) {
  size_t full_len;
  char *full = seq_text(200000, &full_len);
  galley_proc_limits lim = {-1, 2000, 1001};
  galley_proc *p = run_argv((const char *[]){"seq", "1", "200000", NULL}, &lim, NULL, 0);
  if (p) {
    size_t n;
    uint64_t dropped;
    const char *s = galley_proc_output(p, 1, &n, &dropped);
    CHECK(n == 1001);
    CHECK(dropped == full_len - 1001);
    CHECK(memcmp(s, full, 500) == 0);                           /* head: max / 2 */
    CHECK(memcmp(s + 500, full + full_len - 501, 501) == 0);    /* tail: the rest */
    galley_proc_close(p);
  }
  free(full);
}


static void proc_should_keep_everything_under_the_cap_and_nothing_with_a_zero_cap(void) {
  galley_proc_limits small = {-1, 2000, 0};
  galley_proc *p = run_argv((const char *[]){"echo", "hello", NULL}, NULL, NULL, 0);
  if (p) {
    size_t n;
    uint64_t dropped;
    galley_proc_output(p, 1, &n, &dropped);
    CHECK(n == 6 && dropped == 0);
    galley_proc_close(p);
  }
  p = run_argv((const char *[]){"echo", "hello", NULL}, &small, NULL, 0);
  if (p) {
    size_t n;
    uint64_t dropped;
    galley_proc_output(p, 1, &n, &dropped);
    CHECK(n == 0 && dropped == 6);
    galley_proc_close(p);
  }
}


static galley_proc *run_env(const char *const *env, int replace) {
  galley_proc_spec spec = {0};
  spec.argv = (const char *[]){"env", NULL};
  spec.env = env;
  spec.env_replace = replace;
  galley_proc *p = NULL;
  int err_no;
  CHECK(run_spec(&spec, &no_limits, &p, &err_no) == GALLEY_PROC_OK);
  return p;
}


static void proc_should_extend_or_replace_the_environment(void) {
  setenv("GALLEY_TEST_OUTER", "outer", 1);
  galley_proc *p = run_env((const char *[]){"GALLEY_TEST_INNER=1", NULL}, 0);
  if (p) {
    const char *s = out_str(p, 1);
    CHECK(strstr(s, "GALLEY_TEST_OUTER=outer\n") != NULL);
    CHECK(strstr(s, "GALLEY_TEST_INNER=1\n") != NULL);
    galley_proc_close(p);
  }
  p = run_env((const char *[]){"GALLEY_TEST_OUTER=inner", NULL}, 0);
  if (p) {
    const char *s = out_str(p, 1);
    CHECK(strstr(s, "GALLEY_TEST_OUTER=inner\n") != NULL);
    CHECK(strstr(s, "GALLEY_TEST_OUTER=outer") == NULL);
    galley_proc_close(p);
  }
  p = run_env((const char *[]){"GALLEY_TEST_INNER=1", "B=two words", NULL}, 1);
  if (p) {
    CHECK_STR(out_str(p, 1), "GALLEY_TEST_INNER=1\nB=two words\n");
    galley_proc_close(p);
  }
  unsetenv("GALLEY_TEST_OUTER");
}


static void proc_should_run_in_the_given_directory(void) {
  char tmpl[] = "/tmp/galley-proc-XXXXXX";
  char *dir = mkdtemp(tmpl);
  CHECK(dir != NULL);
  if (!dir) return;
  char real[PATH_MAX], expect[PATH_MAX + 2];
  CHECK(realpath(dir, real) != NULL);
  snprintf(expect, sizeof expect, "%s\n", real);
  galley_proc_spec spec = {0};
  spec.argv = (const char *[]){"pwd", "-P", NULL};
  spec.cwd = dir;
  galley_proc *p = NULL;
  int err_no;
  CHECK(run_spec(&spec, &no_limits, &p, &err_no) == GALLEY_PROC_OK);
  if (p) CHECK_STR(out_str(p, 1), expect);
  galley_proc_close(p);
  rmdir(dir);
}


static void proc_should_pass_5_mib_of_stdin_through_cat(void) {
  size_t n = 5u << 20;
  char *in = malloc(n);
  for (size_t i = 0; i < n; i++) in[i] = (char)(i * 7 + i / 4096);
  galley_proc *p = run_argv((const char *[]){"cat", NULL}, NULL, in, n);
  if (p) {
    size_t len;
    const char *s = out_of(p, 1, &len);
    CHECK(len == n);
    CHECK(len == n && memcmp(s, in, n) == 0);
    galley_proc_close(p);
  }
  free(in);
}


static void proc_should_survive_a_child_that_ignores_its_stdin(void) {
  size_t n = 1u << 20;
  char *in = calloc(1, n);
  CHECK(exit_code_of((const char *[]){"true", NULL}) == 0);
  galley_proc *p = run_argv((const char *[]){"sh", "-c", "exec 0<&-; echo done", NULL}, NULL, in, n);
  if (p) {
    CHECK_STR(out_str(p, 1), "done\n");
    galley_proc_close(p);
  }
  free(in);
}


static void proc_should_fail_to_spawn_a_missing_program_or_directory(void) {
  galley_proc_spec spec = {0};
  galley_proc *p = NULL;
  int err_no = 0;
  spec.argv = (const char *[]){"/nonexistent/program", NULL};
  CHECK(run_spec(&spec, &no_limits, &p, &err_no) == GALLEY_PROC_ESPAWN);
  CHECK(p == NULL);
  CHECK(err_no == ENOENT);
  spec.argv = (const char *[]){"galley-no-such-program-here", NULL};
  CHECK(spawn_spec(&spec, &p, &err_no) == GALLEY_PROC_ESPAWN);
  CHECK(p == NULL);
  spec.argv = (const char *[]){"true", NULL};
  spec.cwd = "/nonexistent/directory";
  CHECK(run_spec(&spec, &no_limits, &p, &err_no) == GALLEY_PROC_ESPAWN);
  CHECK(err_no == ENOENT);
}


static void proc_should_close_other_descriptors_in_the_child(void) {
  int fd = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
  CHECK(dup2(fd, 37) == 37);
  galley_proc *p = run_argv(
    (const char *[]){"sh", "-c", "if [ -e /proc/self/fd/37 ]; then echo leaked; else echo closed; fi", NULL},
    NULL, NULL, 0);
  if (p) {
    CHECK_STR(out_str(p, 1), "closed\n");
    galley_proc_close(p);
  }
  close(37);
  close(fd);
}


static void proc_should_stream_events_in_order_and_exit_last(void) {
  galley_proc_spec spec = {0};
  /* The child waits for a line from us before each write, so the order is fixed. */
  spec.argv = (const char *[]){"sh", "-c", "read a; echo one; read a; echo two >&2; read a; echo three; exit 3", NULL};
  spec.stdin_mode = GALLEY_PROC_STDIN_PIPE;
  galley_proc *p = NULL;
  int err_no;
  CHECK(spawn_spec(&spec, &p, &err_no) == GALLEY_PROC_OK);
  if (!p) return;
  char all[256] = "";
  int ev, exits = 0;
  CHECK(galley_proc_write(p, "go\n", 3) == GALLEY_PROC_OK);
  for (int i = 0; i < 1000; i++) {
    const char *data;
    size_t len;
    ev = next_event(p, 5000, &data, &len);
    if (ev == GALLEY_PROC_EV_STDOUT || ev == GALLEY_PROC_EV_STDERR) {
      strcat(all, ev == GALLEY_PROC_EV_STDOUT ? "O:" : "E:");
      strncat(all, data, len);
      galley_proc_write(p, "go\n", 3);
    } else if (ev == GALLEY_PROC_EV_EXIT) {
      exits++;
      break;
    } else {
      break;
    }
  }
  CHECK(exits == 1);
  CHECK_STR(all, "O:one\nE:two\nO:three\n");
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.exit_code == 3);
  const char *data;
  size_t len;
  CHECK(next_event(p, 0, &data, &len) == GALLEY_PROC_EV_EXIT);
  galley_proc_close(p);
}


static void proc_should_feed_written_stdin_and_collect_on_wait(void) {
  galley_proc_spec spec = {0};
  spec.argv = (const char *[]){"cat", NULL};
  spec.stdin_mode = GALLEY_PROC_STDIN_PIPE;
  galley_proc *p = NULL;
  int err_no;
  CHECK(spawn_spec(&spec, &p, &err_no) == GALLEY_PROC_OK);
  if (!p) return;
  CHECK(galley_proc_write(p, "abc", 3) == GALLEY_PROC_OK);
  CHECK(galley_proc_write(p, "def\n", 4) == GALLEY_PROC_OK);
  const char *data;
  size_t len;
  CHECK(next_event(p, 0, &data, &len) != GALLEY_PROC_EV_EXIT); /* cat waits for more */
  CHECK(wait_for(p, -1, 1 << 20) == GALLEY_PROC_OK);
  /* Whatever next() did not report, wait() collected. */
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.reaped && st.exit_code == 0);
  CHECK(!galley_proc_stdin_open(p));
  CHECK(galley_proc_write(p, "x", 1) == GALLEY_PROC_ECLOSED);
  galley_proc_close(p);
}


static void proc_should_time_out_a_wait_and_kill_on_close(void) {
  galley_proc_spec spec = {0};
  spec.argv = (const char *[]){"sleep", "30", NULL};
  galley_proc *p = NULL;
  int err_no;
  CHECK(spawn_spec(&spec, &p, &err_no) == GALLEY_PROC_OK);
  if (!p) return;
  pid_t pid = galley_proc_pid(p);
  CHECK(wait_for(p, 20, 1024) == GALLEY_PROC_TIMEOUT);
  const char *data;
  size_t len;
  CHECK(next_event(p, 10, &data, &len) == GALLEY_PROC_TIMEOUT);
  CHECK(galley_proc_kill(p, SIGTERM) == 0);
  CHECK(wait_for(p, -1, 1024) == GALLEY_PROC_OK);
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  CHECK(st.signal == SIGTERM);
  galley_proc_close(p);
  CHECK(kill(pid, 0) == -1 && errno == ESRCH);
}


static void proc_should_give_up_when_interrupted(void) {
  galley_sig_clear();
  galley_proc_spec spec = {0};
  /* The child interrupts us (its parent), then would sleep on. */
  spec.argv = (const char *[]){"sh", "-c", "kill -INT $PPID; sleep 30", NULL};
  galley_proc *p = NULL;
  int err_no;
  int rc = run_spec(&spec, &no_limits, &p, &err_no);
  CHECK(rc == GALLEY_PROC_EINTR);
  CHECK(galley_sig_pending() == SIGINT);
  if (p) {
    pid_t pid = galley_proc_pid(p);
    galley_proc_status st;
    galley_proc_get_status(p, &st);
    CHECK(st.reaped);
    galley_proc_close(p);
    CHECK(kill(pid, 0) == -1 && errno == ESRCH);
  }
  /* With a signal already pending nothing starts. */
  spec.argv = (const char *[]){"true", NULL};
  p = NULL;
  CHECK(run_spec(&spec, &no_limits, &p, &err_no) == GALLEY_PROC_EINTR);
  CHECK(p == NULL);
  galley_sig_clear();
}


static void proc_should_find_programs_in_path(void) {
  char buf[PATH_MAX];
  CHECK(galley_proc_which("sh", buf, sizeof buf) == 0);
  CHECK(buf[0] == '/' && strcmp(buf + strlen(buf) - 3, "/sh") == 0);
  CHECK(galley_proc_which("galley-no-such-program-here", buf, sizeof buf) == -1);
  CHECK(galley_proc_which("/bin/sh", buf, sizeof buf) == 0);
  CHECK_STR(buf, "/bin/sh");
  CHECK(galley_proc_which("/etc/passwd", buf, sizeof buf) == -1);
}


static void proc_should_know_signal_names(void) {
  CHECK(galley_proc_signal_number("TERM") == SIGTERM);
  CHECK(galley_proc_signal_number("SIGKILL") == SIGKILL);
  CHECK(galley_proc_signal_number("int") == SIGINT);
  CHECK(galley_proc_signal_number("NOPE") == 0);
}




static void proc_should_run_many_children_at_once(void) {
  /* Eight `sleep 0.3` at once take about 0.3 s, not 2.4 s: nothing waits for one child alone. */
  galley_proc_spec spec = {0};
  spec.argv = (const char *[]){"sleep", "0.3", NULL};
  galley_proc *ps[8];
  int err_no;
  int64_t t0 = galley_now_ms();
  for (int i = 0; i < 8; i++) {
    CHECK(spawn_spec(&spec, &ps[i], &err_no) == GALLEY_PROC_OK);
    if (ps[i]) galley_proc_limit(ps[i], &no_limits);
  }
  for (int i = 0; i < 8; i++) {
    if (!ps[i]) continue;
    CHECK(drive(ps[i], finished, 10000) == GALLEY_PROC_OK);
    galley_proc_close(ps[i]);
  }
  CHECK(galley_now_ms() - t0 < 2000);
}


static void wake(int sig) {
  (void)sig;
  galley_loop_wake();
}


int main(void) {
  galley_loop();
  galley_sig_install(wake); /* SIGPIPE ignored, SIGINT recorded and the loop woken: as in galley */
  RUN(proc_should_report_exit_codes);
  RUN(proc_should_capture_stdout_and_stderr_separately);
  RUN(proc_should_report_a_terminating_signal);
  RUN(proc_should_kill_the_whole_group_on_timeout);
  RUN(proc_should_follow_sigterm_with_sigkill_after_the_grace);
  RUN(proc_should_keep_the_head_and_tail_of_long_output);
  RUN(proc_should_keep_everything_under_the_cap_and_nothing_with_a_zero_cap);
  RUN(proc_should_extend_or_replace_the_environment);
  RUN(proc_should_run_in_the_given_directory);
  RUN(proc_should_pass_5_mib_of_stdin_through_cat);
  RUN(proc_should_survive_a_child_that_ignores_its_stdin);
  RUN(proc_should_fail_to_spawn_a_missing_program_or_directory);
  RUN(proc_should_close_other_descriptors_in_the_child);
  RUN(proc_should_stream_events_in_order_and_exit_last);
  RUN(proc_should_feed_written_stdin_and_collect_on_wait);
  RUN(proc_should_time_out_a_wait_and_kill_on_close);
  RUN(proc_should_run_many_children_at_once);
  RUN(proc_should_give_up_when_interrupted);
  RUN(proc_should_find_programs_in_path);
  RUN(proc_should_know_signal_names);
  RUN(proc_should_keep_output_read_while_the_caller_was_busy);
  return CHECK_DONE();
}
