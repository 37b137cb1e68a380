/* Child processes without a shell, on the event loop; see proc.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "loop.h"
#include "proc.h"
#include "sweep.h"
#include "sig.h"

extern char **environ;

#define READ_CHUNK 65536
#define PEND_MAX 65536      /* read mode: stop reading a stream while this much waits unread */

/* One captured stream: the first head_max bytes, then a ring of the latest (max - head_max)
 * bytes. Every byte that arrives once the buffer is full pushes exactly one byte out of the
 * middle, which `dropped` counts. */
typedef struct {
  char *data;
  size_t len;       /* bytes stored, <= max */
  size_t cap;       /* bytes allocated, <= max */
  size_t max;
  size_t head_max;
  size_t ring;      /* offset of the oldest tail byte inside the tail region, once full */
  uint64_t dropped;
} capture;


/* --- captures ------------------------------------------------------------------------------ */

static void cap_reset(capture *c, size_t max) {
  free(c->data);
  memset(c, 0, sizeof *c);
  c->max = max;
  c->head_max = max / 2;
}


static void cap_add(capture *c, const char *s, size_t n) {
  if (c->len < c->max) {
    size_t take = n < c->max - c->len ? n : c->max - c->len;
    if (c->len + take > c->cap) {
      size_t want = c->cap ? c->cap : 16384;
      while (want < c->len + take) want *= 2;
      if (want > c->max) want = c->max;
      char *d = realloc(c->data, want);
      if (!d) {
        c->dropped += n; /* out of memory: count the bytes as dropped rather than fail */
        return;
      }
      c->data = d;
      c->cap = want;
    }
    memcpy(c->data + c->len, s, take);
    c->len += take;
    s += take;
    n -= take;
  }
  if (n == 0) return;
  size_t tail_max = c->max - c->head_max;
  c->dropped += n;
  if (tail_max == 0) return;
  char *tail = c->data + c->head_max;
  if (n >= tail_max) {
    memcpy(tail, s + n - tail_max, tail_max);
    c->ring = 0;
    return;
  }
  size_t first = n < tail_max - c->ring ? n : tail_max - c->ring;
  memcpy(tail + c->ring, s, first);
  memcpy(tail, s + first, n - first);
  c->ring = (c->ring + n) % tail_max;
}


static void reverse(char *a, size_t n) {
  for (size_t i = 0, j = n; i + 1 < j; i++, j--) {
    char t = a[i];
    a[i] = a[j - 1];
    a[j - 1] = t;
  }
}


/* Puts the tail ring in order so head + tail are one run of bytes. */
static void cap_flatten(capture *c) {
  if (c->ring == 0) return;
  char *tail = c->data + c->head_max;
  size_t tail_max = c->max - c->head_max;
  reverse(tail, c->ring);
  reverse(tail + c->ring, tail_max - c->ring);
  reverse(tail, tail_max);
  c->ring = 0;
}


static size_t key_len(const char *kv) {
  const char *eq = strchr(kv, '=');
  return eq ? (size_t)(eq - kv) : strlen(kv);
}


/* The child's environment: a malloc'd array of borrowed strings (NULL on allocation failure). */
static char **build_env(const galley_proc_spec *spec) {
  size_t n_env = 0, n_ov = 0;
  if (!spec->env_replace) while (environ && environ[n_env]) n_env++;
  if (spec->env) while (spec->env[n_ov]) n_ov++;
  char **envp = malloc((n_env + n_ov + 1) * sizeof *envp);
  if (!envp) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n_env; i++) {
    size_t kl = key_len(environ[i]);
    int overridden = 0;
    for (size_t j = 0; j < n_ov && !overridden; j++)
      overridden = key_len(spec->env[j]) == kl && strncmp(spec->env[j], environ[i], kl) == 0;
    if (!overridden) envp[k++] = environ[i];
  }
  for (size_t j = 0; j < n_ov; j++) envp[k++] = (char *)spec->env[j];
  envp[k] = NULL;
  return envp;
}


/* Read mode: bytes of one stream not yet handed out by galley_proc_next. */
typedef struct {
  char *data;
  size_t len, cap;
} pending;

/* The libuv handles embedded in a process; `live` has a bit for each one initialised and not
 * yet closed, `nopen` counts those whose close callback has not run. */
enum { H_CHILD, H_IN, H_OUT, H_ERR, H_LIMIT, H_DEADLINE, H_TICK, H_COUNT };

struct galley_proc {
  uv_loop_t *loop;
  uv_poll_t child;             /* readable when the child has exited (its pidfd) */
  int pidfd;
  uv_pipe_t pipe[3];           /* our ends of stdin, stdout, stderr */
  uv_timer_t limit, deadline, tick;
  unsigned live;
  int nopen;
  int closing;                 /* close was called: free once nopen is 0 */
  pid_t pid;
  char *cgroup_kill;           /* spec->cgroup's cgroup.kill, or NULL */
  int exited, exit_status, term_signal;
  int signalled;               /* the last signal galley_proc_kill sent the group (0: none) */
  int eof[2];                  /* stdout/stderr closed (EOF, error, or never open) */
  int reading[2];
  int capturing;               /* output goes to cap (run, wait) rather than pend (read) */
  int in_close_wanted;         /* close stdin once the queued writes are done */
  int in_broken;               /* the child closed its end */
  int in_writes;               /* write requests in flight */
  int stage;                   /* time limit: 0 running, 1 SIGTERM sent, 2 SIGKILL sent */
  int64_t grace_ms;
  int timed_out;
  int deadline_passed;
  uint64_t waiter;             /* token to ready at the next change, 0 for none */
  int last_stream;             /* fairness between stdout and stderr in next() */
  int taken;                   /* stream (1, 2) whose pending bytes next() handed out last */
  size_t taken_len;            /* how many: bytes read after them stay pending */
  capture cap[2];
  pending pend[2];
  char buf[READ_CHUNK];
};

/* A write request with its bytes. */
typedef struct {
  uv_write_t req;
  galley_proc *p;
  char data[];
} write_req;


static uv_handle_t *handle_of(galley_proc *p, int h) {
  switch (h) {
    case H_CHILD: return (uv_handle_t *)&p->child;
    case H_IN: return (uv_handle_t *)&p->pipe[0];
    case H_OUT: return (uv_handle_t *)&p->pipe[1];
    case H_ERR: return (uv_handle_t *)&p->pipe[2];
    case H_LIMIT: return (uv_handle_t *)&p->limit;
    case H_DEADLINE: return (uv_handle_t *)&p->deadline;
    default: return (uv_handle_t *)&p->tick;
  }
}


static void proc_free(galley_proc *p) {
  free(p->cgroup_kill);
  free(p->cap[0].data);
  free(p->cap[1].data);
  free(p->pend[0].data);
  free(p->pend[1].data);
  free(p);
}


static void on_closed(uv_handle_t *h) {
  galley_proc *p = h->data;
  p->nopen--;
  if (p->closing && p->nopen == 0) proc_free(p);
}


static void mark_live(galley_proc *p, int h) {
  handle_of(p, h)->data = p;
  p->live |= 1u << h;
  p->nopen++;
}


static void close_handle(galley_proc *p, int h) {
  if (!(p->live & (1u << h))) return;
  p->live &= ~(1u << h);
  uv_close(handle_of(p, h), on_closed);
  if (h == H_CHILD && p->pidfd >= 0) {
    close(p->pidfd); /* uv_close stopped watching it */
    p->pidfd = -1;
  }
}


static void notify(galley_proc *p) {
  if (!p->waiter) return;
  uint64_t t = p->waiter;
  p->waiter = 0;
  galley_loop_ready(t);
}


static int all_eof(const galley_proc *p) { return p->eof[0] && p->eof[1]; }


int galley_proc_finished(const galley_proc *p) {
  return p->exited && (all_eof(p) || p->stage == 2);
}


/* Stops the time limit once there is nothing left to limit. */
static void check_finished(galley_proc *p) {
  if (galley_proc_finished(p) && (p->live & (1u << H_LIMIT))) uv_timer_stop(&p->limit);
}


/* --- output --------------------------------------------------------------------------------- */

static void pend_add(pending *b, const char *s, size_t n) {
  if (b->len + n > b->cap) {
    size_t want = b->cap ? b->cap : 4096;
    while (want < b->len + n) want *= 2;
    char *d = realloc(b->data, want);
    if (!d) return; /* out of memory: the chunk is lost rather than the process */
    b->data = d;
    b->cap = want;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
}


static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  galley_proc *p = h->data;
  *buf = uv_buf_init(p->buf, sizeof p->buf); /* one buffer: each read is consumed before the next */
}


static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  galley_proc *p = st->data;
  int s = (uv_pipe_t *)st == &p->pipe[1] ? 0 : 1;
  if (n > 0) {
    if (p->capturing) {
      cap_add(&p->cap[s], buf->base, (size_t)n);
    } else {
      pend_add(&p->pend[s], buf->base, (size_t)n);
      if (p->pend[s].len >= PEND_MAX) {
        uv_read_stop(st); /* the child blocks on a full pipe until someone reads */
        p->reading[s] = 0;
      }
    }
  } else if (n < 0) {
    p->eof[s] = 1; /* EOF, or an error we treat like one */
    p->reading[s] = 0;
    close_handle(p, H_OUT + s);
    check_finished(p);
  } else {
    return;
  }
  notify(p);
}


/* Reads every open stream that is not held back by unread bytes. */
static void start_reading(galley_proc *p) {
  for (int s = 0; s < 2; s++) {
    if (p->eof[s] || p->reading[s]) continue;
    if (!p->capturing && p->pend[s].len >= PEND_MAX) continue;
    if (uv_read_start((uv_stream_t *)&p->pipe[s + 1], on_alloc, on_read) == 0) {
      p->reading[s] = 1;
    } else {
      p->eof[s] = 1;
      close_handle(p, H_OUT + s);
    }
  }
}


/* What next() handed out last is consumed now. */
static void consume_taken(galley_proc *p) {
  if (!p->taken) return;
  pending *b = &p->pend[p->taken - 1];
  /* The loop may have run since next() (the caller awaited something): what arrived meanwhile
   * was appended and is not consumed. */
  if (b->len > p->taken_len) memmove(b->data, b->data + p->taken_len, b->len - p->taken_len);
  b->len = b->len > p->taken_len ? b->len - p->taken_len : 0;
  p->taken = 0;
  p->taken_len = 0;
}


void galley_proc_capture(galley_proc *p, size_t max_output) {
  consume_taken(p);
  for (int s = 0; s < 2; s++) {
    if (p->cap[s].len == 0 && p->cap[s].dropped == 0) cap_reset(&p->cap[s], max_output);
    if (p->pend[s].len) cap_add(&p->cap[s], p->pend[s].data, p->pend[s].len);
    p->pend[s].len = 0;
  }
  p->capturing = 1;
  start_reading(p);
}


int galley_proc_has_event(galley_proc *p) {
  consume_taken(p);
  return p->pend[0].len > 0 || p->pend[1].len > 0 || galley_proc_finished(p);
}


int galley_proc_next(galley_proc *p, const char **data, size_t *len) {
  consume_taken(p);
  p->capturing = 0;
  start_reading(p);
  /* Serve the stream not served last time first, so neither starves the other. */
  int order[2] = {p->last_stream == 1 ? 2 : 1, p->last_stream == 1 ? 1 : 2};
  for (int k = 0; k < 2; k++) {
    pending *b = &p->pend[order[k] - 1];
    if (b->len == 0) continue;
    p->taken = p->last_stream = order[k];
    p->taken_len = b->len;
    *data = b->data;
    *len = b->len;
    return order[k] == 1 ? GALLEY_PROC_EV_STDOUT : GALLEY_PROC_EV_STDERR;
  }
  return galley_proc_finished(p) ? GALLEY_PROC_EV_EXIT : 0;
}


/* --- stdin ---------------------------------------------------------------------------------- */

static void close_stdin_now(galley_proc *p) {
  close_handle(p, H_IN);
}


static void on_written(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  galley_proc *p = w->p;
  free(w);
  p->in_writes--;
  if (status < 0 && status != UV_ECANCELED) {
    p->in_broken = 1; /* the child closed its end: the rest is dropped */
    close_stdin_now(p);
  } else if (p->in_close_wanted && p->in_writes == 0) {
    close_stdin_now(p);
  }
}


/* Queues len bytes (copied) on stdin. */
static int queue_write(galley_proc *p, const char *data, size_t len) {
  write_req *w = malloc(sizeof *w + len);
  if (!w) return GALLEY_PROC_ENOMEM;
  w->p = p;
  memcpy(w->data, data, len);
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&p->pipe[0], &b, 1, on_written) != 0) {
    free(w);
    p->in_broken = 1;
    close_stdin_now(p);
    return GALLEY_PROC_ECLOSED;
  }
  p->in_writes++;
  return GALLEY_PROC_OK;
}


int galley_proc_write(galley_proc *p, const char *data, size_t len) {
  if (!galley_proc_stdin_open(p)) return GALLEY_PROC_ECLOSED;
  if (len == 0) return GALLEY_PROC_OK;
  while (len > 0) { /* uv_buf_t lengths are unsigned int */
    size_t n = len > (size_t)1 << 30 ? (size_t)1 << 30 : len;
    int rc = queue_write(p, data, n);
    if (rc != GALLEY_PROC_OK) return rc;
    data += n;
    len -= n;
  }
  return GALLEY_PROC_OK;
}


void galley_proc_close_stdin(galley_proc *p) {
  p->in_close_wanted = 1;
  if (p->in_writes == 0) close_stdin_now(p);
}


int galley_proc_stdin_open(const galley_proc *p) {
  return (p->live & (1u << H_IN)) && !p->in_close_wanted && !p->in_broken;
}


/* --- spawning ------------------------------------------------------------------------------- */

/* Records a wait status. */
static void set_status(galley_proc *p, int st) {
  p->exited = 1;
  if (WIFEXITED(st)) p->exit_status = WEXITSTATUS(st);
  else if (WIFSIGNALED(st)) p->term_signal = WTERMSIG(st);
}


/* The pidfd turned readable: the child exited. Reap it (never blocks: it is a zombie now). */
static void on_child_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  galley_proc *p = h->data;
  int st;
  pid_t r;
  /* Died of the signal kill() sent its group: the group's stragglers get it too (sweep.h),
   * while the child is a zombie still (its number stays its own). */
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (p->signalled && waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == p->pid &&
      (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED) && si.si_status == p->signalled)
    galley_sweep_group(-1, p->pid, p->signalled, NULL);
  do r = waitpid(p->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return; /* not yet (spurious wake-up) */
  if (r == p->pid) set_status(p, st);
  else p->exited = 1; /* someone else reaped it: no status to report */
  close_handle(p, H_CHILD);
  check_finished(p);
  notify(p);
}


/* Marks every descriptor above 2 close-on-exec, so the child gets only its stdio: libuv does not
 * close the others, and Lua's io.open and inherited descriptors are not close-on-exec. */
static void cloexec_all(void) {
  if (close_range(3, ~0u, CLOSE_RANGE_CLOEXEC) == 0) return;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int fd = atoi(e->d_name);
    if (fd > 2 && fd != dirfd(d)) fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  }
  closedir(d);
}


static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}


int galley_proc_spawn(uv_loop_t *loop, const galley_proc_spec *spec, galley_proc **out, int *err_no) {
  int fds[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  char **envp = NULL;
  char path[PATH_MAX];
  int rc = GALLEY_PROC_ENOMEM;
  *out = NULL;
  *err_no = ENOMEM;
  galley_proc *p = calloc(1, sizeof *p);
  if (!p) return GALLEY_PROC_ENOMEM;
  p->pid = -1;
  p->pidfd = -1;
  cap_reset(&p->cap[0], GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  cap_reset(&p->cap[1], GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  p->loop = loop;
  if (spec->cgroup) {
    size_t n = strlen(spec->cgroup) + sizeof "/cgroup.kill";
    p->cgroup_kill = malloc(n);
    if (!p->cgroup_kill) goto fail_early;
    snprintf(p->cgroup_kill, n, "%s/cgroup.kill", spec->cgroup);
  }
  if (spec->env || spec->env_replace) {
    envp = build_env(spec);
    if (!envp) goto fail_early;
  }

  /* The program is looked up in our PATH (as posix_spawnp did), not in the child's env. */
  rc = GALLEY_PROC_ESPAWN;
  const char *file = spec->argv[0];
  if (!strchr(file, '/')) {
    if (galley_proc_which(file, path, sizeof path) != 0) {
      *err_no = ENOENT;
      goto fail_early;
    }
    file = path;
  }

  /* Real pipes (libuv's own stdio pipes are socketpairs, which /dev/stdout cannot open). */
  int want_in = spec->stdin_mode != GALLEY_PROC_STDIN_NULL;
  for (int i = want_in ? 0 : 1; i < 3; i++) {
    int r = uv_pipe(fds[i], 0, 0);
    if (r != 0) {
      *err_no = -r;
      goto fail_fds;
    }
  }
  /* posix_spawn (glibc: clone with CLONE_VM|CLONE_VFORK) rather than uv_spawn, whose fork
   * copies our page tables: from a process as large as the emulator that was most of what a
   * spawn cost. Its own session (setsid), signals 1-31 at their defaults, none blocked, only the
   * three stdio descriptors (cloexec_all marks the rest), stdin /dev/null unless asked. */
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  if (posix_spawn_file_actions_init(&fa) != 0) goto fail_fds;
  if (posix_spawnattr_init(&attr) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    goto fail_fds;
  }
  int r = 0;
  if (want_in) r = posix_spawn_file_actions_adddup2(&fa, fds[0][0], 0);
  else r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDWR, 0);
  if (r == 0) r = posix_spawn_file_actions_adddup2(&fa, fds[1][1], 1);
  if (r == 0) r = posix_spawn_file_actions_adddup2(&fa, fds[2][1], 2);
  if (r == 0 && spec->cwd) r = posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
  if (r == 0) r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  if (r == 0) r = posix_spawnattr_setsigdefault(&attr, &all);
  if (r == 0) r = posix_spawnattr_setsigmask(&attr, &none);
  cloexec_all();
  pid_t pid = -1;
  if (r == 0) r = posix_spawn(&pid, file, &fa, &attr, (char *const *)spec->argv, envp ? envp : environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (r != 0) {
    *err_no = r;
    goto fail_fds;
  }
  p->pid = pid;
  /* Its exit is watched through a pidfd on the loop (no SIGCHLD handler). */
  p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (p->pidfd < 0 || uv_poll_init(loop, &p->child, p->pidfd) != 0) {
    *err_no = p->pidfd < 0 ? errno : EINVAL;
    if (p->pidfd >= 0) close(p->pidfd);
    p->pidfd = -1;
    kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    p->pid = -1;
    goto fail_fds;
  }
  mark_live(p, H_CHILD);
  uv_poll_start(&p->child, UV_READABLE, on_child_cb);
  close_fd(&fds[0][0]);
  close_fd(&fds[1][1]);
  close_fd(&fds[2][1]);

  /* Our ends. uv_pipe_open makes them nonblocking; failure there only means EOF. */
  for (int i = 0; i < 3; i++) {
    int ours = i == 0 ? fds[0][1] : fds[i][0];
    if (ours < 0) {
      if (i > 0) p->eof[i - 1] = 1;
      continue;
    }
    uv_pipe_init(loop, &p->pipe[i], 0);
    mark_live(p, H_IN + i);
    if (uv_pipe_open(&p->pipe[i], ours) != 0) {
      close(ours);
      close_handle(p, H_IN + i);
      if (i > 0) p->eof[i - 1] = 1;
    }
    fds[i][i == 0 ? 1 : 0] = -1;
  }
  uv_timer_init(loop, &p->limit);
  mark_live(p, H_LIMIT);
  uv_timer_init(loop, &p->deadline);
  mark_live(p, H_DEADLINE);

  if (spec->stdin_mode == GALLEY_PROC_STDIN_DATA) {
    if (spec->stdin_len > 0) galley_proc_write(p, spec->stdin_data, spec->stdin_len);
    galley_proc_close_stdin(p);
  }
  free(envp);
  *out = p;
  *err_no = 0;
  return GALLEY_PROC_OK;

fail_fds:
  for (int i = 0; i < 3; i++) {
    close_fd(&fds[i][0]);
    close_fd(&fds[i][1]);
  }
fail_early:
  free(envp);
  galley_proc_close(p); /* closes what was opened (the failed process handle) and frees */
  return rc;
}


/* --- time limits and deadlines ----------------------------------------------------------------- */

static void on_limit(uv_timer_t *t) {
  galley_proc *p = t->data;
  if (p->stage == 0) {
    p->timed_out = 1;
    p->signalled = SIGTERM;
    kill(-p->pid, SIGTERM);
    p->stage = 1;
    uv_timer_start(&p->limit, on_limit, (uint64_t)(p->grace_ms > 0 ? p->grace_ms : 0), 0);
  } else if (p->stage == 1) {
    kill(-p->pid, SIGKILL);
    p->stage = 2;
    check_finished(p);
    notify(p);
  }
}


void galley_proc_limit(galley_proc *p, const galley_proc_limits *lim) {
  cap_reset(&p->cap[0], lim->max_output);
  cap_reset(&p->cap[1], lim->max_output);
  p->grace_ms = lim->kill_grace_ms;
  if (lim->timeout_ms >= 0 && (p->live & (1u << H_LIMIT)))
    uv_timer_start(&p->limit, on_limit, (uint64_t)lim->timeout_ms, 0);
  galley_proc_capture(p, lim->max_output);
}


static void on_deadline(uv_timer_t *t) {
  galley_proc *p = t->data;
  p->deadline_passed = 1;
  notify(p);
}


void galley_proc_deadline(galley_proc *p, int64_t ms) {
  p->deadline_passed = 0;
  if (!(p->live & (1u << H_DEADLINE))) return;
  if (ms < 0) uv_timer_stop(&p->deadline);
  else uv_timer_start(&p->deadline, on_deadline, (uint64_t)ms, 0);
}


int galley_proc_deadline_passed(const galley_proc *p) { return p->deadline_passed; }


void galley_proc_notify(galley_proc *p, uint64_t token) { p->waiter = token; }


/* --- signals, status, closing ------------------------------------------------------------------ */

int galley_proc_kill(galley_proc *p, int sig) {
  if (p->pid <= 0 || galley_proc_finished(p)) {
    errno = ESRCH; /* gone: do not signal a group id that may have been reused */
    return -1;
  }
  if (sig != 0 && sig != SIGKILL) p->signalled = sig;
  return kill(-p->pid, sig);
}


/* Kills the child's cgroup (spec->cgroup) and waits up to GALLEY_PROC_CGROUP_WAIT_MS for the
 * child to exit by itself: a supervisor outside the cgroup reaps what it ran there and ends,
 * where killing it first would hand its children to this machine's pid 1. */
static void kill_cgroup_first(galley_proc *p) {
  int fd = open(p->cgroup_kill, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return; /* gone, or no cgroup.kill (before Linux 5.14): the group kill follows */
  ssize_t w;
  do w = write(fd, "1", 1);
  while (w < 0 && errno == EINTR);
  close(fd);
  if (w != 1 || p->pidfd < 0) return;
  struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
  int64_t left = GALLEY_PROC_CGROUP_WAIT_MS;
  while (left > 0) {
    uint64_t t0 = uv_hrtime();
    if (poll(&pfd, 1, (int)left) >= 0 || errno != EINTR) return; /* exited, out of time, failed */
    left -= (int64_t)((uv_hrtime() - t0) / 1000000);
  }
}


void galley_proc_terminate(galley_proc *p) {
  if (p->pid <= 0) return;
  if (!p->exited && p->cgroup_kill) kill_cgroup_first(p);
  if (!p->exited || !all_eof(p)) {
    kill(-p->pid, SIGKILL);
    if (!p->exited) kill(p->pid, SIGKILL); /* in case it left the group */
  }
  while (!p->exited) {
    /* The pidfd is seen only in a loop turn; the child is our own and dies at once, so reap
     * it here. */
    int st;
    pid_t r = waitpid(p->pid, &st, 0);
    if (r == p->pid) {
      set_status(p, st);
    } else if (r < 0 && errno != EINTR) {
      p->exited = 1; /* someone else reaped it: no status to report */
    }
  }
  close_handle(p, H_CHILD);
}


pid_t galley_proc_pid(const galley_proc *p) { return p->pid; }


void galley_proc_get_status(const galley_proc *p, galley_proc_status *st) {
  memset(st, 0, sizeof *st);
  st->reaped = p->exited;
  st->timed_out = p->timed_out;
  if (!p->exited) return;
  st->signal = p->term_signal;
  st->exit_code = p->term_signal ? 128 + p->term_signal : p->exit_status;
}


const char *galley_proc_output(galley_proc *p, int stream, size_t *len, uint64_t *dropped) {
  capture *c = &p->cap[stream == 2 ? 1 : 0];
  cap_flatten(c);
  *len = c->len;
  *dropped = c->dropped;
  return c->data ? c->data : "";
}


void galley_proc_clear_output(galley_proc *p) {
  cap_reset(&p->cap[0], p->cap[0].max);
  cap_reset(&p->cap[1], p->cap[1].max);
}


void galley_proc_close(galley_proc *p) {
  if (!p) return;
  galley_proc_terminate(p);
  p->closing = 1;
  for (int h = 0; h < H_COUNT; h++) close_handle(p, h);
  notify(p);
  if (p->nopen == 0) {
    proc_free(p);
  }
}


/* --- lookups -------------------------------------------------------------------------------- */

static int is_executable_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}


/* Writes dir/name (dir made absolute against the cwd) into out. */
static int join_abs(const char *dir, size_t dlen, const char *name, char *out, size_t cap) {
  char cwd[PATH_MAX];
  int n;
  if (dlen > 0 && dir[0] == '/') {
    n = snprintf(out, cap, "%.*s/%s", (int)dlen, dir, name);
  } else {
    if (!getcwd(cwd, sizeof cwd)) return -1;
    if (dlen == 0) n = snprintf(out, cap, "%s/%s", cwd, name);
    else n = snprintf(out, cap, "%s/%.*s/%s", cwd, (int)dlen, dir, name);
  }
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}


int galley_proc_which(const char *name, char *out, size_t cap) {
  if (!name || !*name) return -1;
  if (strchr(name, '/')) {
    if (!is_executable_file(name)) return -1;
    return name[0] == '/' ? (snprintf(out, cap, "%s", name) < (int)cap ? 0 : -1) : join_abs("", 0, name, out, cap);
  }
  const char *path = getenv("PATH");
  if (!path) path = "/usr/local/bin:/usr/bin:/bin";
  for (;;) {
    const char *end = strchr(path, ':');
    size_t dlen = end ? (size_t)(end - path) : strlen(path);
    if (join_abs(path, dlen, name, out, cap) == 0 && is_executable_file(out)) return 0;
    if (!end) break;
    path = end + 1;
  }
  return -1;
}


int galley_proc_signal_number(const char *name) {
  static const struct { const char *name; int sig; } sigs[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"ABRT", SIGABRT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"TERM", SIGTERM},
    {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP}, {"TSTP", SIGTSTP}, {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU}, {"WINCH", SIGWINCH},
  };
  if (strncasecmp(name, "SIG", 3) == 0) name += 3;
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    if (strcasecmp(name, sigs[i].name) == 0) return sigs[i].sig;
  return 0;
}
