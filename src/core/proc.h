/* Local child processes without a shell, on the event loop (loop.h): argv in, exit status and
 * captured output out.
 *
 * The child is started by posix_spawn (no copy of our page tables, as a fork would make) in its
 * own session and process group (setsid), so kill(-pid) reaches everything it starts, with
 * signals 1-31 at their defaults and none blocked (glibc's posix_spawn leaves its two internal
 * real-time signals, 32 and 33, ignored); its exit is seen through a pidfd watched on the loop (Linux 5.3
 * or later). stdin comes from /dev/null, a pipe or given bytes; stdout and stderr are pipes
 * read by libuv; no other descriptor reaches the child. Nothing here
 * blocks or polls: callbacks record what happened and ready the waiter's token
 * (galley_proc_notify), and the caller runs the loop (src/bind/await.h, or galley_loop_turn in
 * tests) until galley_proc_finished / galley_proc_next says so.
 * Writing to a child that closed its stdin relies on SIGPIPE being ignored (galley_sig_install). */
#ifndef GALLEY_PROC_H
#define GALLEY_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* Status codes returned by the functions below. */
enum {
  GALLEY_PROC_OK = 0,
  GALLEY_PROC_ESPAWN = -1,      /* could not start the program (errno in *err_no) */
  GALLEY_PROC_ENOMEM = -2,      /* out of memory before the child started */
  GALLEY_PROC_EINTR = -3,       /* a signal became pending while waiting */
  GALLEY_PROC_TIMEOUT = -4,     /* the wait ran out of time */
  GALLEY_PROC_ECLOSED = -5      /* stdin is closed or the child closed its end */
};

enum { GALLEY_PROC_STDIN_NULL, GALLEY_PROC_STDIN_PIPE, GALLEY_PROC_STDIN_DATA };

/* What galley_proc_next() reports. */
enum { GALLEY_PROC_EV_STDOUT = 1, GALLEY_PROC_EV_STDERR = 2, GALLEY_PROC_EV_EXIT = 3 };

#define GALLEY_PROC_DEFAULT_MAX_OUTPUT ((size_t)64 << 20)
#define GALLEY_PROC_DEFAULT_GRACE_MS 2000
#define GALLEY_PROC_CGROUP_WAIT_MS 2000

typedef struct {
  const char *const *argv;  /* NULL-terminated; argv[0] without '/' is looked up in PATH */
  const char *cwd;          /* NULL: the current directory */
  const char *const *env;   /* NULL-terminated "KEY=VALUE" list, or NULL for none */
  int env_replace;          /* 0: env adds to / overrides the current environment; 1: env only */
  int stdin_mode;           /* GALLEY_PROC_STDIN_* */
  const char *stdin_data;   /* STDIN_DATA: bytes fed to the child (copied), then stdin is closed */
  size_t stdin_len;
  /* NULL, or a cgroup v2 directory holding the child's work (the child itself may be outside it:
   * a supervisor such as `galley __enter`). Closing a child still running kills that cgroup
   * first (its cgroup.kill) and gives the child up to GALLEY_PROC_CGROUP_WAIT_MS to end by
   * itself (having reaped what it ran), before its process group is killed. */
  const char *cgroup;
} galley_proc_spec;

typedef struct {
  int64_t timeout_ms;       /* < 0: no time limit */
  int64_t kill_grace_ms;    /* after SIGTERM on timeout, SIGKILL follows this much later */
  size_t max_output;        /* per stream: head and tail kept, the middle dropped */
} galley_proc_limits;

typedef struct {
  int reaped;               /* the child has exited and been waited for */
  int exit_code;            /* exit status, or 128 + signal when killed by a signal */
  int signal;               /* the terminating signal, 0 when it exited */
  int timed_out;            /* its time limit ran out and the group was killed */
} galley_proc_status;

/* A started child and everything we know about it, owned by the caller: free with
 * galley_proc_close() (its memory goes once libuv has closed its handles). */
typedef struct galley_proc galley_proc;

/* Starts spec's program on `loop` (never NULL: galley_loop()). On success *out is the new process.
 * Returns GALLEY_PROC_OK, GALLEY_PROC_ESPAWN (errno in *err_no) or GALLEY_PROC_ENOMEM. */
int galley_proc_spawn(uv_loop_t *loop, const galley_proc_spec *spec, galley_proc **out, int *err_no);

/* Runs it the way proc.run does: a time limit (SIGTERM to the group, SIGKILL after the grace)
 * and both streams captured (max_output each). Finished once galley_proc_finished says so. */
void galley_proc_limit(galley_proc *p, const galley_proc_limits *lim);

/* Collects output into the capture from now on (max_output per stream unless something is
 * captured already): what read mode buffered and not yet returned comes first. */
void galley_proc_capture(galley_proc *p, size_t max_output);

/* Whether it is all over: the child was reaped and both pipes are at EOF (or, under a time
 * limit, the SIGKILL was sent and the child reaped: whatever else holds the pipes escaped). */
int galley_proc_finished(const galley_proc *p);

/* Read mode, never waits: the next chunk of output (data and len point into p and stay valid
 * until the next call on p), GALLEY_PROC_EV_EXIT once finished (and on every later call), or 0
 * when nothing is there yet. Reading stops while an unread chunk reaches 64 KiB. */
int galley_proc_next(galley_proc *p, const char **data, size_t *len);

/* Whether galley_proc_next would report something now. */
int galley_proc_has_event(galley_proc *p);

/* token (0: none) is readied (galley_loop_ready) at the next change: output, EOF, exit, the
 * deadline, close. Once: set it again for the change after. */
void galley_proc_notify(galley_proc *p, uint64_t token);

/* Starts (ms >= 0) or stops (ms < 0) the deadline of a wait; galley_proc_deadline_passed then
 * says whether it ran out. */
void galley_proc_deadline(galley_proc *p, int64_t ms);
int galley_proc_deadline_passed(const galley_proc *p);


/* Queues bytes for the child's stdin (copied). Returns GALLEY_PROC_OK, GALLEY_PROC_ECLOSED or
 * GALLEY_PROC_ENOMEM. */
int galley_proc_write(galley_proc *p, const char *data, size_t len);

/* Closes stdin after the queued bytes are written (at once when none are queued). */
void galley_proc_close_stdin(galley_proc *p);

/* Whether stdin can still take bytes (a pipe that neither side has closed). */
int galley_proc_stdin_open(const galley_proc *p);

/* Sends sig to the child's whole process group. Returns 0, or -1 with errno set. */
int galley_proc_kill(galley_proc *p, int sig);

/* SIGKILL to the group unless it is finished, and reaps the child now (waitpid: a killed child
 * dies at once). For cancellation; galley_proc_close does it too. */
void galley_proc_terminate(galley_proc *p);

/* The child's pid (also its process group id). */
pid_t galley_proc_pid(const galley_proc *p);

/* The exit status as far as known. */
void galley_proc_get_status(const galley_proc *p, galley_proc_status *st);

/* The output captured for stream 1 (stdout) or 2 (stderr): the kept head and tail as one run of
 * bytes, plus the count of bytes dropped between them. Valid until the next call on p. */
const char *galley_proc_output(galley_proc *p, int stream, size_t *len, uint64_t *dropped);

/* Forgets the captured output (after the caller has copied it). */
void galley_proc_clear_output(galley_proc *p);

/* galley_proc_terminate, then closes every handle (the waiter's token is readied) and frees p
 * once libuv is done with it. NULL is ignored. */
void galley_proc_close(galley_proc *p);

/* Finds name in PATH the way execvp would; writes an absolute path into out.
 * Returns 0, or -1 when not found or when it does not fit in cap bytes. */
int galley_proc_which(const char *name, char *out, size_t cap);

/* Signal number for "TERM", "SIGTERM", "kill", ...; 0 when unknown. */
int galley_proc_signal_number(const char *name);

#endif
