/* Child processes without a shell; see proc.h. */
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "proc.h"
#include "sig.h"

extern char **environ;

#define READ_CHUNK 65536
#define WRITE_CHUNK 65536
#define SLICE_MS 50

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

struct galley_proc {
  pid_t pid;
  int in_fd, out_fd, err_fd;   /* our ends; -1 once closed */
  const char *in_data;         /* queued stdin bytes: borrowed (run) or in_own */
  size_t in_len, in_off;
  char *in_own;
  size_t in_own_cap;
  int in_close_wanted;         /* close stdin once the queue is empty */
  int in_broken;               /* the child closed its end */
  int reaped, wstatus, timed_out;
  int last_stream;             /* fairness between stdout and stderr in next() */
  int idle_ms;                 /* backoff while only waiting for the exit */
  capture cap[2];
  char buf[READ_CHUNK];
};


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


/* --- descriptors and environment ------------------------------------------------------------ */

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}


/* Moves fd above the standard descriptors, so the dup2 file actions cannot collide. */
static int lift_fd(int fd) {
  if (fd >= 3) return fd;
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return nfd;
}


/* pipe2 with both ends close-on-exec and above fd 2; our end (`ours`: 0 read, 1 write) is made
 * nonblocking. */
static int make_pipe(int fds[2], int ours) {
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  fds[0] = lift_fd(fds[0]);
  fds[1] = lift_fd(fds[1]);
  if (fds[0] < 0 || fds[1] < 0 || fcntl(fds[ours], F_SETFL, O_NONBLOCK) != 0) {
    close_fd(&fds[0]);
    close_fd(&fds[1]);
    return -1;
  }
  return 0;
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


/* --- spawning ------------------------------------------------------------------------------- */

static void flush_stdin(galley_proc *p);


static galley_proc *proc_new(void) {
  galley_proc *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->pid = -1;
  p->in_fd = p->out_fd = p->err_fd = -1;
  p->idle_ms = 1;
  cap_reset(&p->cap[0], GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  cap_reset(&p->cap[1], GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  return p;
}


static void proc_free(galley_proc *p) {
  close_fd(&p->in_fd);
  close_fd(&p->out_fd);
  close_fd(&p->err_fd);
  free(p->in_own);
  free(p->cap[0].data);
  free(p->cap[1].data);
  free(p);
}


/* Starts the child; `copy` says whether STDIN_DATA bytes are copied or borrowed. */
static int spawn_child(const galley_proc_spec *spec, int copy, galley_proc **out, int *err_no) {
  int in[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
  int rc = GALLEY_PROC_ENOMEM, fa_ok = 0, attr_ok = 0;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  char **envp = NULL;
  galley_proc *p = proc_new();
  *out = NULL;
  *err_no = ENOMEM;
  if (!p) return GALLEY_PROC_ENOMEM;
  if (spec->stdin_mode == GALLEY_PROC_STDIN_DATA && spec->stdin_len > 0) {
    if (copy) {
      p->in_own = malloc(spec->stdin_len);
      if (!p->in_own) goto fail;
      memcpy(p->in_own, spec->stdin_data, spec->stdin_len);
      p->in_own_cap = spec->stdin_len;
      p->in_data = p->in_own;
    } else {
      p->in_data = spec->stdin_data;
    }
    p->in_len = spec->stdin_len;
  }
  p->in_close_wanted = spec->stdin_mode == GALLEY_PROC_STDIN_DATA;
  if (spec->env || spec->env_replace) {
    envp = build_env(spec);
    if (!envp) goto fail;
  }

  rc = GALLEY_PROC_ESPAWN;
  if ((spec->stdin_mode != GALLEY_PROC_STDIN_NULL && make_pipe(in, 1) != 0) || make_pipe(outp, 0) != 0 ||
      make_pipe(errp, 0) != 0) {
    *err_no = errno;
    goto fail;
  }
  if ((*err_no = posix_spawn_file_actions_init(&fa)) != 0) goto fail;
  fa_ok = 1;
  if ((*err_no = posix_spawnattr_init(&attr)) != 0) goto fail;
  attr_ok = 1;
  if (in[0] >= 0) *err_no = posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  else *err_no = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (*err_no == 0) *err_no = posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
  if (*err_no == 0) *err_no = posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
  if (*err_no == 0) *err_no = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  if (*err_no == 0 && spec->cwd) *err_no = posix_spawn_file_actions_addchdir_np(&fa, spec->cwd);
  if (*err_no != 0) goto fail;

  /* Own process group; default dispositions (we ignore SIGPIPE, which exec would keep) and an
   * empty signal mask. */
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);

  *err_no = posix_spawnp(&p->pid, spec->argv[0], &fa, &attr, (char *const *)spec->argv,
                         envp ? envp : environ);
  if (*err_no != 0) goto fail;
  rc = GALLEY_PROC_OK;
  p->in_fd = in[1];
  p->out_fd = outp[0];
  p->err_fd = errp[0];
  in[1] = outp[0] = errp[0] = -1;
  flush_stdin(p);
  *out = p;
  p = NULL;
  *err_no = 0;

fail:
  if (fa_ok) posix_spawn_file_actions_destroy(&fa);
  if (attr_ok) posix_spawnattr_destroy(&attr);
  free(envp);
  close_fd(&in[0]);
  close_fd(&in[1]);
  close_fd(&outp[0]);
  close_fd(&outp[1]);
  close_fd(&errp[0]);
  close_fd(&errp[1]);
  if (p) proc_free(p);
  return rc;
}


int galley_proc_spawn(const galley_proc_spec *spec, galley_proc **out, int *err_no) {
  return spawn_child(spec, 1, out, err_no);
}


/* --- the I/O loop ---------------------------------------------------------------------------- */

static int finished(const galley_proc *p) {
  return p->reaped && p->out_fd < 0 && p->err_fd < 0;
}


static void reap_nohang(galley_proc *p) {
  if (p->reaped) return;
  int st;
  pid_t r = waitpid(p->pid, &st, WNOHANG);
  if (r == p->pid) {
    p->reaped = 1;
    p->wstatus = st;
  } else if (r < 0 && errno == ECHILD) {
    p->reaped = 1; /* someone else reaped it: no status to report */
    p->wstatus = 0;
  }
}


static void reap_blocking(galley_proc *p) {
  while (!p->reaped) {
    int st;
    pid_t r = waitpid(p->pid, &st, 0);
    if (r == p->pid) {
      p->reaped = 1;
      p->wstatus = st;
    } else if (r < 0 && errno != EINTR) {
      p->reaped = 1;
    }
  }
}


static void stdin_done_check(galley_proc *p) {
  if (p->in_off == p->in_len) {
    p->in_off = p->in_len = 0;
    if (p->in_close_wanted) close_fd(&p->in_fd);
  }
}


/* Writes queued stdin bytes until the pipe is full. A closed reader drops the queue. */
static void flush_stdin(galley_proc *p) {
  while (p->in_fd >= 0 && p->in_off < p->in_len) {
    size_t left = p->in_len - p->in_off;
    ssize_t n = write(p->in_fd, p->in_data + p->in_off, left < WRITE_CHUNK ? left : WRITE_CHUNK);
    if (n > 0) {
      p->in_off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      close_fd(&p->in_fd);
      p->in_broken = 1;
      p->in_off = p->in_len = 0;
      return;
    }
  }
  if (p->in_fd >= 0) stdin_done_check(p);
}


/* Reads once from stream s (1 or 2). Returns bytes read into p->buf, 0 at EOF (fd closed) or
 * -1 when nothing is there yet. */
static ssize_t read_stream(galley_proc *p, int s) {
  int *fd = s == 1 ? &p->out_fd : &p->err_fd;
  for (;;) {
    ssize_t n = read(*fd, p->buf, sizeof p->buf);
    if (n > 0) return n;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return -1;
    close_fd(fd); /* EOF, or an error we treat like one */
    return 0;
  }
}


/* One poll of at most wait_ms. With capture, everything read goes into p->cap and 0 is
 * returned; without, the first chunk read is reported: returns its stream (1 or 2) with
 * *len set, or 0 when nothing arrived. */
static int io_once(galley_proc *p, int wait_ms, int capture_mode, size_t *len) {
  struct pollfd fds[3];
  int n = 0, i_out = -1, i_err = -1, i_in = -1;
  if (p->out_fd >= 0) i_out = n, fds[n++] = (struct pollfd){p->out_fd, POLLIN, 0};
  if (p->err_fd >= 0) i_err = n, fds[n++] = (struct pollfd){p->err_fd, POLLIN, 0};
  if (p->in_fd >= 0 && p->in_off < p->in_len) i_in = n, fds[n++] = (struct pollfd){p->in_fd, POLLOUT, 0};

  if (n == 0) {
    /* Only the exit is left to wait for: back off from 1 ms up to the slice. */
    reap_nohang(p);
    if (p->reaped) return 0;
    int ms = p->idle_ms < wait_ms ? p->idle_ms : wait_ms;
    if (ms > 0) {
      struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
    }
    if (p->idle_ms < SLICE_MS) p->idle_ms *= 2;
    reap_nohang(p);
    return 0;
  }
  p->idle_ms = 1;
  int r = poll(fds, (nfds_t)n, wait_ms);
  if (r <= 0) {
    reap_nohang(p);
    return 0;
  }
  if (i_in >= 0 && fds[i_in].revents) flush_stdin(p);
  int ready[2] = {i_out >= 0 && fds[i_out].revents != 0, i_err >= 0 && fds[i_err].revents != 0};
  int result = 0;
  if (capture_mode) {
    for (int s = 1; s <= 2; s++) {
      if (!ready[s - 1]) continue;
      ssize_t got = read_stream(p, s);
      if (got > 0) cap_add(&p->cap[s - 1], p->buf, (size_t)got);
    }
  } else {
    /* Serve the stream not served last time first, so neither starves the other. */
    int order[2] = {p->last_stream == 1 ? 2 : 1, p->last_stream == 1 ? 1 : 2};
    for (int k = 0; k < 2 && !result; k++) {
      int s = order[k];
      if (!ready[s - 1]) continue;
      ssize_t got = read_stream(p, s);
      if (got > 0) {
        p->last_stream = s;
        *len = (size_t)got;
        result = s;
      }
    }
  }
  reap_nohang(p);
  return result;
}


/* Milliseconds to wait in this slice: at most SLICE_MS, at most until deadline (< 0: none). */
static int slice_until(int64_t deadline, int64_t now) {
  if (deadline < 0) return SLICE_MS;
  int64_t left = deadline - now;
  if (left < 0) left = 0;
  return left < SLICE_MS ? (int)left : SLICE_MS;
}


/* SIGKILL to the group (unless it is certainly gone) and a blocking reap. */
static void terminate(galley_proc *p) {
  if (p->pid <= 0) return;
  if (!p->reaped || p->out_fd >= 0 || p->err_fd >= 0) {
    kill(-p->pid, SIGKILL);
    if (!p->reaped) kill(p->pid, SIGKILL); /* in case it left the group */
  }
  reap_blocking(p);
}


int galley_proc_run(const galley_proc_spec *spec, const galley_proc_limits *lim, galley_proc **out,
                    int *err_no) {
  *out = NULL;
  *err_no = 0;
  if (galley_sig_pending()) return GALLEY_PROC_EINTR;
  int rc = spawn_child(spec, 0, out, err_no);
  galley_proc *p = *out;
  if (rc != GALLEY_PROC_OK) {
    return rc;
  }
  cap_reset(&p->cap[0], lim->max_output);
  cap_reset(&p->cap[1], lim->max_output);
  flush_stdin(p);

  int64_t now = galley_now_ms();
  int64_t deadline = lim->timeout_ms >= 0 ? now + lim->timeout_ms : -1;
  int stage = 0; /* 0 running, 1 SIGTERM sent, 2 SIGKILL sent */
  for (;;) {
    if (galley_sig_pending()) {
      terminate(p);
      rc = GALLEY_PROC_EINTR;
      break;
    }
    if (finished(p)) break;
    now = galley_now_ms();
    if (stage == 0 && deadline >= 0 && now >= deadline) {
      p->timed_out = 1;
      kill(-p->pid, SIGTERM);
      stage = 1;
      deadline = now + (lim->kill_grace_ms > 0 ? lim->kill_grace_ms : 0);
    }
    if (stage == 1 && now >= deadline) {
      kill(-p->pid, SIGKILL);
      stage = 2;
      deadline = -1;
    }
    if (stage == 2 && p->reaped) {
      /* Whatever still holds the pipes escaped the group: take what is there and stop. */
      io_once(p, 0, 1, NULL);
      break;
    }
    io_once(p, slice_until(deadline, now), 1, NULL);
  }
  return rc;
}


int galley_proc_next(galley_proc *p, int64_t timeout_ms, const char **data, size_t *len) {
  if (finished(p)) return GALLEY_PROC_EV_EXIT;
  int64_t deadline = timeout_ms >= 0 ? galley_now_ms() + timeout_ms : -1;
  int rc;
  for (;;) {
    if (galley_sig_pending()) {
      rc = GALLEY_PROC_EINTR;
      break;
    }
    int64_t now = galley_now_ms();
    int s = io_once(p, slice_until(deadline, now), 0, len);
    if (s) {
      *data = p->buf;
      rc = s;
      break;
    }
    if (finished(p)) {
      rc = GALLEY_PROC_EV_EXIT;
      break;
    }
    if (deadline >= 0 && galley_now_ms() >= deadline) {
      rc = GALLEY_PROC_TIMEOUT;
      break;
    }
  }
  return rc;
}


int galley_proc_wait(galley_proc *p, int64_t timeout_ms, size_t max_output) {
  for (int s = 0; s < 2; s++)
    if (p->cap[s].len == 0 && p->cap[s].dropped == 0) cap_reset(&p->cap[s], max_output);
  galley_proc_close_stdin(p);
  int64_t deadline = timeout_ms >= 0 ? galley_now_ms() + timeout_ms : -1;
  int rc;
  for (;;) {
    if (galley_sig_pending()) {
      rc = GALLEY_PROC_EINTR;
      break;
    }
    if (finished(p)) {
      rc = GALLEY_PROC_OK;
      break;
    }
    int64_t now = galley_now_ms();
    if (deadline >= 0 && now >= deadline) {
      rc = GALLEY_PROC_TIMEOUT;
      break;
    }
    io_once(p, slice_until(deadline, now), 1, NULL);
  }
  return rc;
}


int galley_proc_write(galley_proc *p, const char *data, size_t len) {
  if (p->in_fd < 0 || p->in_close_wanted) return GALLEY_PROC_ECLOSED;
  if (len == 0) return GALLEY_PROC_OK;
  size_t pending = p->in_len - p->in_off;
  if (p->in_data != p->in_own || pending + len > p->in_own_cap) {
    size_t want = p->in_own_cap ? p->in_own_cap : 4096;
    while (want < pending + len) want *= 2;
    char *buf = malloc(want);
    if (!buf) return GALLEY_PROC_ENOMEM;
    if (pending) memcpy(buf, p->in_data + p->in_off, pending);
    free(p->in_own);
    p->in_own = buf;
    p->in_own_cap = want;
  } else if (p->in_off > 0) {
    memmove(p->in_own, p->in_own + p->in_off, pending);
  }
  memcpy(p->in_own + pending, data, len);
  p->in_data = p->in_own;
  p->in_off = 0;
  p->in_len = pending + len;
  flush_stdin(p);
  return p->in_broken ? GALLEY_PROC_ECLOSED : GALLEY_PROC_OK;
}


void galley_proc_close_stdin(galley_proc *p) {
  p->in_close_wanted = 1;
  if (p->in_fd >= 0) stdin_done_check(p);
}


int galley_proc_stdin_open(const galley_proc *p) {
  return p->in_fd >= 0 && !p->in_close_wanted && !p->in_broken;
}


int galley_proc_kill(galley_proc *p, int sig) {
  if (p->pid <= 0) {
    errno = ESRCH;
    return -1;
  }
  if (p->reaped && p->out_fd < 0 && p->err_fd < 0) {
    errno = ESRCH; /* gone: do not signal a group id that may have been reused */
    return -1;
  }
  return kill(-p->pid, sig);
}


pid_t galley_proc_pid(const galley_proc *p) { return p->pid; }


void galley_proc_get_status(const galley_proc *p, galley_proc_status *st) {
  memset(st, 0, sizeof *st);
  st->reaped = p->reaped;
  st->timed_out = p->timed_out;
  if (!p->reaped) return;
  if (WIFEXITED(p->wstatus)) {
    st->exit_code = WEXITSTATUS(p->wstatus);
  } else if (WIFSIGNALED(p->wstatus)) {
    st->signal = WTERMSIG(p->wstatus);
    st->exit_code = 128 + st->signal;
  }
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
  terminate(p); /* keeps the GIL: this may run inside a __gc, and SIGKILL + reap is quick */
  proc_free(p);
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
