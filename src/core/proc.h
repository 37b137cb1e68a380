/* Local child processes without a shell: argv in, exit status and captured output out.
 * The child runs in its own process group with stdin from a pipe or /dev/null and stdout/stderr
 * on nonblocking pipes; every other descriptor is closed in the child. Blocking waits poll in
 * slices of at most 50 ms and give up when galley_sig_pending() is set.
 * Writing to a child that closed its stdin relies on SIGPIPE being ignored (galley_sig_install). */
#ifndef GALLEY_PROC_H
#define GALLEY_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Status codes returned by the functions below. */
enum {
  GALLEY_PROC_OK = 0,
  GALLEY_PROC_ESPAWN = -1,      /* could not start the program (errno in *err_no) */
  GALLEY_PROC_ENOMEM = -2,      /* out of memory before the child started */
  GALLEY_PROC_EINTR = -3,       /* a signal became pending while waiting */
  GALLEY_PROC_TIMEOUT = -4,     /* the wait ran out of time (read/wait only) */
  GALLEY_PROC_ECLOSED = -5      /* stdin is closed or the child closed its end */
};

enum { GALLEY_PROC_STDIN_NULL, GALLEY_PROC_STDIN_PIPE, GALLEY_PROC_STDIN_DATA };

/* What galley_proc_next() reports. */
enum { GALLEY_PROC_EV_STDOUT = 1, GALLEY_PROC_EV_STDERR = 2, GALLEY_PROC_EV_EXIT = 3 };

#define GALLEY_PROC_DEFAULT_MAX_OUTPUT ((size_t)64 << 20)
#define GALLEY_PROC_DEFAULT_GRACE_MS 2000

typedef struct {
  const char *const *argv;  /* NULL-terminated; argv[0] without '/' is looked up in PATH */
  const char *cwd;          /* NULL: the current directory */
  const char *const *env;   /* NULL-terminated "KEY=VALUE" list, or NULL for none */
  int env_replace;          /* 0: env adds to / overrides the current environment; 1: env only */
  int stdin_mode;           /* GALLEY_PROC_STDIN_* */
  const char *stdin_data;   /* STDIN_DATA: bytes fed to the child, then its stdin is closed */
  size_t stdin_len;
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
  int timed_out;            /* run() hit its time limit and killed the group */
} galley_proc_status;

/* A started child and everything we know about it. Owned by the caller; free with
 * galley_proc_close(). */
typedef struct galley_proc galley_proc;

/* Starts spec's program. On success *out is the new process. STDIN_DATA bytes are copied.
 * Returns GALLEY_PROC_OK, GALLEY_PROC_ESPAWN (errno in *err_no) or GALLEY_PROC_ENOMEM. */
int galley_proc_spawn(const galley_proc_spec *spec, galley_proc **out, int *err_no);

/* Runs spec's program to completion under lim, capturing both streams. *out is set as soon as
 * the child exists (the caller closes it, whatever the result); stdin bytes are not copied and
 * must stay valid until the call returns. Returns GALLEY_PROC_OK (see galley_proc_get_status
 * and galley_proc_output), ESPAWN, ENOMEM or EINTR (the group was killed and reaped). */
int galley_proc_run(const galley_proc_spec *spec, const galley_proc_limits *lim, galley_proc **out,
                    int *err_no);

/* Waits up to timeout_ms (< 0: no limit) for the next event: a chunk of output (data and len point
 * into p and stay valid until the next call) or the exit, reported once both pipes are at EOF and
 * the child is reaped (and again on every later call). Pending stdin is fed meanwhile.
 * Returns an GALLEY_PROC_EV_* value, GALLEY_PROC_TIMEOUT or GALLEY_PROC_EINTR. */
int galley_proc_next(galley_proc *p, int64_t timeout_ms, const char **data, size_t *len);

/* Closes stdin once pending bytes are written, then collects the remaining output (capped at
 * max_output per stream) until the child is reaped and both pipes are at EOF. Output collected
 * by an earlier timed-out wait is kept. Returns GALLEY_PROC_OK, TIMEOUT or EINTR. */
int galley_proc_wait(galley_proc *p, int64_t timeout_ms, size_t max_output);

/* Queues bytes for the child's stdin (copied) and writes what the pipe takes now.
 * Returns GALLEY_PROC_OK, GALLEY_PROC_ECLOSED or GALLEY_PROC_ENOMEM. */
int galley_proc_write(galley_proc *p, const char *data, size_t len);

/* Closes stdin after the queued bytes are written (at once when none are queued). */
void galley_proc_close_stdin(galley_proc *p);

/* Whether stdin can still take bytes (a pipe that neither side has closed). */
int galley_proc_stdin_open(const galley_proc *p);

/* Sends sig to the child's whole process group. Returns 0, or -1 with errno set. */
int galley_proc_kill(galley_proc *p, int sig);

/* The child's pid (also its process group id). */
pid_t galley_proc_pid(const galley_proc *p);

/* The exit status as far as known. */
void galley_proc_get_status(const galley_proc *p, galley_proc_status *st);

/* The output captured for stream 1 (stdout) or 2 (stderr): the kept head and tail as one run of
 * bytes, plus the count of bytes dropped between them. Valid until the next call on p. */
const char *galley_proc_output(galley_proc *p, int stream, size_t *len, uint64_t *dropped);

/* Forgets the captured output (after the caller has copied it). */
void galley_proc_clear_output(galley_proc *p);

/* Kills the group (with SIGKILL) unless the child is reaped and its pipes are at EOF, waits for
 * it, closes every descriptor and frees p. NULL is ignored. */
void galley_proc_close(galley_proc *p);

/* Finds name in PATH the way execvp would; writes an absolute path into out.
 * Returns 0, or -1 when not found or when it does not fit in cap bytes. */
int galley_proc_which(const char *name, char *out, size_t cap);

/* Signal number for "TERM", "SIGTERM", "kill", ...; 0 when unknown. */
int galley_proc_signal_number(const char *name);

#endif
