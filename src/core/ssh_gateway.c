/* `galley __ssh-gateway`: the emulator's SSH gateway; see ssh_gateway.h. */
#define _GNU_SOURCE 1
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "dyn_curl.h"
#include "dyn_ssh.h"
#include "ssh_gateway.h"

#define EXIT_USAGE 2
#define EXIT_NO_LIBSSH 3
#define MAX_CONNECTIONS 256       /* connection children at once; more are closed at accept */
#define MAX_CHANNELS 64           /* session channels open at once on one connection */
#define LOGIN_GRACE_S 30          /* key exchange and authentication must end within this */
#define KILL_GRACE_MS 2000        /* SIGTERM, then SIGKILL after this */
#define STOP_GRACE_MS 5000        /* the parent's wait for its children at a stop */
#define IO_CHUNK 32768
#define PEND_CAP 65536
#define MAX_GROUPS 16
#define MAX_ENV 16
#define SFTP_SERVER "/usr/lib/openssh/sftp-server"

static const char *PROG = "galley __ssh-gateway";

/* Gateway-wide settings, read-only after start. */
static struct {
  char key[4096];       /* the emulator's API key (never printed) */
  size_t key_len;
  const char *host_key; /* path */
  const char *api;      /* http://127.0.0.1:PORT (no trailing slash) */
  int port;
} gw;

/* Signals become bytes on a self-pipe; flags say which. */
static int sig_pipe[2] = { -1, -1 };
static volatile sig_atomic_t got_stop, got_child;


static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


static void on_signal(int sig) {
  int saved = errno;
  if (sig == SIGCHLD) got_child = 1;
  else got_stop = 1;
  if (sig_pipe[1] >= 0) {
    ssize_t n = write(sig_pipe[1], "x", 1);
    (void)n;
  }
  errno = saved;
}


static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}


static int make_sig_pipe(void) {
  if (sig_pipe[0] >= 0) close(sig_pipe[0]);
  if (sig_pipe[1] >= 0) close(sig_pipe[1]);
  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP };
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  return 0;
}


static void drain_sig_pipe(void) {
  char buf[64];
  while (read(sig_pipe[0], buf, sizeof buf) > 0) {}
}


/* Equal strings, in time that depends on the lengths only. */
static int same_secret(const char *a, size_t alen, const char *b, size_t blen) {
  unsigned char diff = alen != blen;
  size_t n = alen > blen ? alen : blen;
  for (size_t i = 0; i < n; i++) {
    unsigned char x = i < alen ? (unsigned char)a[i] : 0;
    unsigned char y = i < blen ? (unsigned char)b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}


/* ---------------------------------------------------------------------------------------------
 * Process trees. A command runs in a session of its own (setsid); `galley __enter` makes one
 * more session inside the instance. Killing walks the tree from the command's pid through
 * /proc (parent links) and signals every process and every process group met. */

typedef struct {
  pid_t pid, ppid, pgid;
} proc_row;


static size_t scan_procs(proc_row **out) {
  size_t n = 0, cap = 256;
  proc_row *rows = malloc(cap * sizeof *rows);
  DIR *d = opendir("/proc");
  if (!rows || !d) {
    free(rows);
    if (d) closedir(d);
    *out = NULL;
    return 0;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!isdigit((unsigned char)e->d_name[0])) continue;
    char path[300], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0) continue;
    buf[len] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    char state;
    int ppid, pgid;
    if (!p || sscanf(p + 1, " %c %d %d", &state, &ppid, &pgid) != 3) continue;
    if (n == cap) {
      proc_row *more = realloc(rows, cap * 2 * sizeof *rows);
      if (!more) break;
      rows = more;
      cap *= 2;
    }
    rows[n].pid = (pid_t)atoi(e->d_name);
    rows[n].ppid = (pid_t)ppid;
    rows[n].pgid = (pid_t)pgid;
    n++;
  }
  closedir(d);
  *out = rows;
  return n;
}


/* Sends sig to root's tree; adds the groups met to groups (up to MAX_GROUPS, *ngroups). */
static void kill_tree(pid_t root, int sig, pid_t *groups, int *ngroups) {
  proc_row *rows;
  size_t n = scan_procs(&rows);
  pid_t own = getpgrp();
  pid_t *tree = malloc((n + 1) * sizeof *tree);
  size_t nt = 0;
  if (tree) tree[nt++] = root;
  for (size_t i = 0; tree && i < nt; i++) { /* breadth first over the parent links */
    for (size_t j = 0; j < n; j++) {
      if (rows[j].ppid == tree[i] && nt < n + 1) tree[nt++] = rows[j].pid;
    }
  }
  for (size_t i = 0; tree && i < nt; i++) {
    pid_t g = 0;
    for (size_t j = 0; j < n; j++) {
      if (rows[j].pid == tree[i]) g = rows[j].pgid;
    }
    if (g > 1 && g != own) {
      int known = 0;
      for (int k = 0; k < *ngroups; k++) known |= groups[k] == g;
      if (!known && *ngroups < MAX_GROUPS) groups[(*ngroups)++] = g;
    }
    kill(tree[i], sig);
  }
  if (!tree) kill(root, sig);
  for (int k = 0; k < *ngroups; k++) kill(-groups[k], sig);
  free(tree);
  free(rows);
}


/* Whether any remembered group still has a process. */
static int groups_alive(const pid_t *groups, int ngroups) {
  for (int k = 0; k < ngroups; k++) {
    if (kill(-groups[k], 0) == 0) return 1;
  }
  return 0;
}


/* ---------------------------------------------------------------------------------------------
 * How to run a command in an instance: the emulator's answer to POST /_emulator/ssh/<id>. */

typedef struct {
  char *body;     /* the answer; the arrays point into it */
  char **argv;    /* A records, then room for the command (3 more) and NULL */
  int argc;
  char **env;     /* E records, then room for MAX_ENV more and NULL */
  int envc;
  const char *cwd;
} run_plan;

typedef struct {
  char *data;
  size_t len, cap;
} growbuf;


static size_t collect(char *ptr, size_t size, size_t nmemb, void *ud) {
  growbuf *b = ud;
  size_t n = size * nmemb;
  if (b->len + n + 1 > (1u << 20)) return 0; /* more than 1 MiB: not an answer of ours */
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->len + n + 1) * 2;
    char *more = realloc(b->data, cap);
    if (!more) return 0;
    b->data = more;
    b->cap = cap;
  }
  memcpy(b->data + b->len, ptr, n);
  b->len += n;
  b->data[b->len] = '\0';
  return n;
}


static void plan_free(run_plan *p) {
  free(p->body);
  free(p->argv);
  free(p->env);
  memset(p, 0, sizeof *p);
}


/* Asks the emulator how to run a command in instance id, authenticated with key: for a command
 * about to start (run: the emulator logs it), or to check at login that the instance is there
 * and ready. Returns the HTTP status (200 with *plan filled), or -1 when the emulator could not
 * be asked. */
static int fetch_plan(const char *id, const char *key, int run, run_plan *plan) {
  memset(plan, 0, sizeof *plan);
  char url[512], auth[4200];
  snprintf(url, sizeof url, "%s/_emulator/ssh/%s%s", gw.api, id, run ? "/run" : "");
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
  CURL *c = curl_easy_init();
  if (!c) return -1;
  growbuf b = { NULL, 0, 0 };
  struct curl_slist *hdrs = curl_slist_append(NULL, auth);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
  CURLcode rc = curl_easy_perform(c);
  long status = -1;
  if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(c);
  memset(auth, 0, sizeof auth);
  if (status != 200 || !b.data) {
    free(b.data);
    return (int)status;
  }
  /* Records: NUL-terminated, the first byte names the kind. */
  int na = 0, ne = 0;
  for (size_t i = 0; i < b.len; i += strlen(b.data + i) + 1) {
    if (b.data[i] == 'A') na++;
    if (b.data[i] == 'E') ne++;
  }
  plan->body = b.data;
  plan->argv = calloc((size_t)na + 4, sizeof *plan->argv);
  plan->env = calloc((size_t)ne + MAX_ENV + 1, sizeof *plan->env);
  if (!plan->argv || !plan->env) {
    plan_free(plan);
    return -1;
  }
  plan->cwd = "/";
  for (size_t i = 0; i < b.len; i += strlen(b.data + i) + 1) {
    char *rec = b.data + i;
    if (rec[0] == 'A') plan->argv[plan->argc++] = rec + 1;
    else if (rec[0] == 'E' && strchr(rec, '=')) plan->env[plan->envc++] = rec + 1;
    else if (rec[0] == 'C') plan->cwd = rec + 1;
  }
  return 200;
}


/* ---------------------------------------------------------------------------------------------
 * One connection (a forked child). */

struct conn;

typedef struct chan {
  struct conn *conn;
  ssh_channel ch;
  struct ssh_channel_callbacks_struct cb;
  pid_t pid;            /* the command; 0 before exec/subsystem */
  int started;
  int reaped, status;
  int in_fd, out_fd, err_fd;
  int out_eof, err_eof;
  int watch_in, watch_out, watch_err;
  uint32_t buffered;    /* client bytes libssh holds for us (not yet read) */
  char *pend;           /* bytes read from libssh, not yet written to in_fd */
  size_t pend_off, pend_len;
  int remote_eof, peer_closed, done;
  long long kill_at;    /* SIGKILL the tree then (0: not being killed) */
  pid_t groups[MAX_GROUPS];
  int ngroups;
  char *env[MAX_ENV];   /* LANG / LC_* from env requests */
  int nenv;
} chan;

typedef struct conn {
  ssh_session s;
  ssh_event ev;
  int authed;
  char user_id[160];
  chan *chans[MAX_CHANNELS];
} conn;


static int valid_id(const char *id, size_t len) {
  if (len == 0 || len > 128) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)id[i];
    if (!isalnum(c) && c != '_' && c != '-') return 0;
  }
  return 1;
}


/* publickey with any key: the API key in the user name is the credential (as on Morph). */
static int auth_pubkey(ssh_session s, const char *user, struct ssh_key_struct *pubkey, char state, void *ud) {
  (void)s;
  (void)pubkey;
  conn *c = ud;
  if (state != SSH_PUBLICKEY_STATE_NONE && state != SSH_PUBLICKEY_STATE_VALID) return SSH_AUTH_DENIED;
  const char *colon = user ? strchr(user, ':') : NULL;
  if (!colon) return SSH_AUTH_DENIED;
  size_t id_len = (size_t)(colon - user), key_len = strlen(colon + 1);
  if (!valid_id(user, id_len) || key_len == 0) return SSH_AUTH_DENIED;
  if (!same_secret(colon + 1, key_len, gw.key, gw.key_len)) return SSH_AUTH_DENIED;
  char id[160];
  memcpy(id, user, id_len);
  id[id_len] = '\0';
  run_plan plan;
  int status = fetch_plan(id, gw.key, 0, &plan); /* exists and ready? */
  plan_free(&plan);
  if (status != 200) return SSH_AUTH_DENIED;
  if (state == SSH_PUBLICKEY_STATE_VALID) {
    memcpy(c->user_id, id, id_len + 1);
    c->authed = 1;
    /* Commands may run from now on: a stop must end them first, and no grace applies. */
    alarm(0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
  }
  return SSH_AUTH_SUCCESS; /* STATE_NONE: the key is acceptable (pk_ok) */
}


static void chan_close_fd(conn *c, int *fd, int *watch) {
  if (*fd < 0) return;
  if (*watch) ssh_event_remove_fd(c->ev, *fd);
  *watch = 0;
  close(*fd);
  *fd = -1;
}


/* Writes pending bytes, then what libssh holds, to the command's stdin until it would block. */
static void feed_stdin(chan *ch) {
  while (ch->in_fd >= 0) {
    if (ch->pend_len == 0) {
      if (ch->buffered == 0) return;
      uint32_t want = ch->buffered < PEND_CAP ? ch->buffered : PEND_CAP;
      int n = ssh_channel_read(ch->ch, ch->pend, want, 0); /* from libssh's buffer: no waiting */
      if (n <= 0) {
        ch->buffered = 0;
        return;
      }
      ch->buffered -= (uint32_t)n;
      ch->pend_off = 0;
      ch->pend_len = (size_t)n;
    }
    ssize_t w = write(ch->in_fd, ch->pend + ch->pend_off, ch->pend_len);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (w < 0) { /* EPIPE: the command stopped reading; drop what is left */
      ch->pend_len = 0;
      chan_close_fd(ch->conn, &ch->in_fd, &ch->watch_in);
      return;
    }
    ch->pend_off += (size_t)w;
    ch->pend_len -= (size_t)w;
  }
}


static int on_stdin_writable(socket_t fd, int revents, void *ud) {
  (void)fd;
  (void)revents;
  feed_stdin(ud);
  return 0;
}


/* Reads the command's stdout or stderr into the channel, at most the client's window. */
static int on_output(socket_t fd, int revents, void *ud) {
  (void)revents;
  chan *ch = ud;
  int is_err = fd == ch->err_fd;
  if ((is_err ? ch->err_eof : ch->out_eof) || ch->peer_closed) return 0;
  uint32_t win = ssh_channel_window_size(ch->ch);
  if (win == 0) return 0;
  char buf[IO_CHUNK];
  size_t want = win < sizeof buf ? win : sizeof buf;
  ssize_t n = read(fd, buf, want);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (n <= 0) {
    if (is_err) ch->err_eof = 1;
    else ch->out_eof = 1;
    return 0;
  }
  int w = is_err ? ssh_channel_write_stderr(ch->ch, buf, (uint32_t)n) : ssh_channel_write(ch->ch, buf, (uint32_t)n);
  if (w == SSH_ERROR) ch->peer_closed = 1;
  return 0;
}


static int data_cb(ssh_session s, ssh_channel channel, void *data, uint32_t len, int is_stderr, void *ud) {
  (void)s;
  (void)channel;
  chan *ch = ud;
  if (is_stderr || ch->in_fd < 0) return (int)len; /* nothing reads it: dropped */
  if (ch->pend_len > 0) {
    ch->buffered = len;
    return 0;
  }
  ssize_t w = write(ch->in_fd, data, len);
  if (w < 0 && (errno == EAGAIN || errno == EINTR)) w = 0;
  if (w < 0) {
    chan_close_fd(ch->conn, &ch->in_fd, &ch->watch_in);
    return (int)len;
  }
  ch->buffered = len - (uint32_t)w;
  return (int)w;
}


static void eof_cb(ssh_session s, ssh_channel channel, void *ud) {
  (void)s;
  (void)channel;
  ((chan *)ud)->remote_eof = 1;
}


static void close_cb(ssh_session s, ssh_channel channel, void *ud) {
  (void)s;
  (void)channel;
  chan *ch = ud;
  ch->peer_closed = 1;
  ch->remote_eof = 1;
}


static int env_cb(ssh_session s, ssh_channel channel, const char *name, const char *value, void *ud) {
  (void)s;
  (void)channel;
  chan *ch = ud;
  if (strcmp(name, "LANG") != 0 && strncmp(name, "LC_", 3) != 0) return -1;
  if (ch->nenv >= MAX_ENV || strchr(name, '=')) return -1;
  for (const char *p = name; *p; p++) {
    if (!isalnum((unsigned char)*p) && *p != '_') return -1;
  }
  char *e = malloc(strlen(name) + strlen(value) + 2);
  if (!e) return -1;
  sprintf(e, "%s=%s", name, value);
  ch->env[ch->nenv++] = e;
  return 0;
}


static int refuse_pty(ssh_session s, ssh_channel channel, const char *term, int w, int h, int pw, int ph, void *ud) {
  (void)s, (void)channel, (void)term, (void)w, (void)h, (void)pw, (void)ph, (void)ud;
  return -1;
}


static int refuse_shell(ssh_session s, ssh_channel channel, void *ud) {
  (void)s, (void)channel, (void)ud;
  return -1;
}


/* Starts cmd (NULL-terminated) in the connection's instance for channel ch. 0 or -1. */
static int start_command(chan *ch, const char *const *cmd) {
  conn *c = ch->conn;
  if (ch->started) return -1;
  run_plan plan;
  if (fetch_plan(c->user_id, gw.key, 1, &plan) != 200) return -1; /* gone, stopped or paused */
  for (int i = 0; cmd[i]; i++) plan.argv[plan.argc++] = (char *)cmd[i];
  plan.argv[plan.argc] = NULL;
  for (int i = 0; i < ch->nenv; i++) { /* LANG / LC_* replace the instance's value */
    size_t klen = (size_t)(strchr(ch->env[i], '=') - ch->env[i]) + 1;
    int j;
    for (j = 0; j < plan.envc; j++) {
      if (strncmp(plan.env[j], ch->env[i], klen) == 0) break;
    }
    plan.env[j] = ch->env[i];
    if (j == plan.envc) plan.envc++;
  }
  plan.env[plan.envc] = NULL;
  if (plan.argc == 0) {
    plan_free(&plan);
    return -1;
  }
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0) {
    plan_free(&plan);
    return -1;
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]), close(in[1]);
    plan_free(&plan);
    return -1;
  }
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(in[0]), close(in[1]), close(out[0]), close(out[1]);
    plan_free(&plan);
    return -1;
  }
  char *pend = malloc(PEND_CAP);
  pid_t parent = getpid();
  pid_t pid = pend ? fork() : -1;
  if (pid == 0) {
    /* The command: a session of its own, killed with its connection. */
    setsid();
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent) _exit(125);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    closefrom(3);
    if (chdir(plan.cwd) != 0) {
      dprintf(2, "galley ssh gateway: cd %s: %s\n", plan.cwd, strerror(errno));
      _exit(127);
    }
    execvpe(plan.argv[0], plan.argv, plan.env);
    dprintf(2, "galley ssh gateway: %s: %s\n", plan.argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  plan_free(&plan);
  if (pid < 0) {
    free(pend);
    close(in[1]), close(out[0]), close(err[0]);
    return -1;
  }
  set_nonblock(in[1]);
  set_nonblock(out[0]);
  set_nonblock(err[0]);
  ch->pid = pid;
  ch->started = 1;
  ch->pend = pend;
  ch->in_fd = in[1];
  ch->out_fd = out[0];
  ch->err_fd = err[0];
  return 0;
}


static int exec_cb(ssh_session s, ssh_channel channel, const char *command, void *ud) {
  (void)s;
  (void)channel;
  const char *cmd[] = { "/bin/sh", "-c", command, NULL };
  return start_command(ud, cmd);
}


static int subsystem_cb(ssh_session s, ssh_channel channel, const char *name, void *ud) {
  (void)s;
  (void)channel;
  if (strcmp(name, "sftp") != 0 || access(SFTP_SERVER, X_OK) != 0) return -1;
  const char *cmd[] = { SFTP_SERVER, NULL };
  return start_command(ud, cmd);
}


static ssh_channel open_session_cb(ssh_session s, void *ud) {
  conn *c = ud;
  if (!c->authed) return NULL;
  int slot = -1;
  for (int i = 0; i < MAX_CHANNELS && slot < 0; i++) {
    if (!c->chans[i]) slot = i;
  }
  if (slot < 0) return NULL;
  chan *ch = calloc(1, sizeof *ch);
  if (!ch) return NULL;
  ch->ch = ssh_channel_new(s);
  if (!ch->ch) {
    free(ch);
    return NULL;
  }
  ch->conn = c;
  ch->in_fd = ch->out_fd = ch->err_fd = -1;
  ch->cb.size = sizeof ch->cb;
  ch->cb.userdata = ch;
  ch->cb.channel_data_function = data_cb;
  ch->cb.channel_eof_function = eof_cb;
  ch->cb.channel_close_function = close_cb;
  ch->cb.channel_env_request_function = env_cb;
  ch->cb.channel_exec_request_function = exec_cb;
  ch->cb.channel_subsystem_request_function = subsystem_cb;
  ch->cb.channel_pty_request_function = refuse_pty;
  ch->cb.channel_shell_request_function = refuse_shell;
  ssh_set_channel_callbacks(ch->ch, &ch->cb);
  c->chans[slot] = ch;
  return ch->ch;
}


static const char *signal_name(int sig) {
  switch (sig) {
    case SIGABRT: return "ABRT";
    case SIGALRM: return "ALRM";
    case SIGFPE: return "FPE";
    case SIGHUP: return "HUP";
    case SIGILL: return "ILL";
    case SIGINT: return "INT";
    case SIGKILL: return "KILL";
    case SIGPIPE: return "PIPE";
    case SIGQUIT: return "QUIT";
    case SIGSEGV: return "SEGV";
    case SIGTERM: return "TERM";
    case SIGUSR1: return "USR1";
    case SIGUSR2: return "USR2";
    default: return NULL;
  }
}


static void set_watch(conn *c, chan *ch, int fd, int *watch, int want, short events, ssh_event_callback cb) {
  if (fd < 0 || want == *watch) return;
  if (want) ssh_event_add_fd(c->ev, fd, events, cb, ch);
  else ssh_event_remove_fd(c->ev, fd);
  *watch = want;
}


static void chan_free(conn *c, int slot) {
  chan *ch = c->chans[slot];
  chan_close_fd(c, &ch->in_fd, &ch->watch_in);
  chan_close_fd(c, &ch->out_fd, &ch->watch_out);
  chan_close_fd(c, &ch->err_fd, &ch->watch_err);
  /* libssh keeps the channel until the peer's close arrives: it must not call back into ch. */
  ssh_remove_channel_callbacks(ch->ch, &ch->cb);
  ssh_channel_free(ch->ch);
  for (int i = 0; i < ch->nenv; i++) free(ch->env[i]);
  free(ch->pend);
  free(ch);
  c->chans[slot] = NULL;
}


static void begin_kill(chan *ch) {
  if (ch->kill_at || !ch->pid || ch->reaped) return;
  kill_tree(ch->pid, SIGTERM, ch->groups, &ch->ngroups);
  ch->kill_at = now_ms() + KILL_GRACE_MS;
}


/* Moves every channel on after a poll: stdin's end, the command's end, the peer gone. */
static void progress(conn *c) {
  for (int i = 0; i < MAX_CHANNELS; i++) {
    chan *ch = c->chans[i];
    if (!ch) continue;
    if (ch->pid && !ch->reaped) {
      int st;
      pid_t r = waitpid(ch->pid, &st, WNOHANG);
      if (r == ch->pid) {
        ch->reaped = 1;
        ch->status = st;
      }
    }
    if (ch->reaped && ch->in_fd >= 0) { /* nobody reads stdin any more */
      ch->pend_len = 0;
      chan_close_fd(c, &ch->in_fd, &ch->watch_in);
    }
    if (ch->remote_eof && ch->in_fd >= 0 && ch->buffered == 0 && ch->pend_len == 0) {
      chan_close_fd(c, &ch->in_fd, &ch->watch_in);
    }
    if (ch->out_eof) chan_close_fd(c, &ch->out_fd, &ch->watch_out);
    if (ch->err_eof) chan_close_fd(c, &ch->err_fd, &ch->watch_err);
    if (ch->peer_closed) {
      /* The client closed the channel (or the connection failed): the command goes. */
      chan_close_fd(c, &ch->out_fd, &ch->watch_out);
      chan_close_fd(c, &ch->err_fd, &ch->watch_err);
      begin_kill(ch);
      if (ch->kill_at && now_ms() >= ch->kill_at) {
        kill_tree(ch->pid, SIGKILL, ch->groups, &ch->ngroups);
        if (ch->reaped && !groups_alive(ch->groups, ch->ngroups)) ch->kill_at = 0, ch->pid = 0;
        else ch->kill_at = now_ms() + 200;
      }
      if (!ch->pid || (ch->reaped && !ch->kill_at) || (ch->reaped && !groups_alive(ch->groups, ch->ngroups))) {
        if (!ssh_channel_is_closed(ch->ch)) ssh_channel_close(ch->ch);
        chan_free(c, i);
      }
      continue;
    }
    if (ch->started && ch->reaped && ch->out_fd < 0 && ch->err_fd < 0 && !ch->done) {
      int st = ch->status;
      const char *name = WIFSIGNALED(st) ? signal_name(WTERMSIG(st)) : NULL;
      if (name) ssh_channel_request_send_exit_signal(ch->ch, name, WCOREDUMP(st) ? 1 : 0, "", "");
      else ssh_channel_request_send_exit_status(ch->ch, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
      ssh_channel_send_eof(ch->ch);
      ssh_channel_close(ch->ch);
      ch->done = 1;
    }
    if (ch->done) {
      chan_free(c, i);
      continue;
    }
    /* What to wait for next. */
    int win = ssh_channel_window_size(ch->ch) > 0;
    set_watch(c, ch, ch->out_fd, &ch->watch_out, win && !ch->out_eof, POLLIN, on_output);
    set_watch(c, ch, ch->err_fd, &ch->watch_err, win && !ch->err_eof, POLLIN, on_output);
    set_watch(c, ch, ch->in_fd, &ch->watch_in, ch->pend_len > 0 || ch->buffered > 0, POLLOUT, on_stdin_writable);
  }
}


static int on_sig_pipe(socket_t fd, int revents, void *ud) {
  (void)fd;
  (void)revents;
  (void)ud;
  drain_sig_pipe();
  return 0;
}


static int connected(conn *c) {
  return ssh_is_connected(c->s) && !(ssh_get_status(c->s) & (SSH_CLOSED | SSH_CLOSED_ERROR));
}


/* Kills every command still running and waits for them (the connection is over). */
static void kill_all(conn *c) {
  int any = 0;
  for (int i = 0; i < MAX_CHANNELS; i++) {
    chan *ch = c->chans[i];
    if (ch && ch->pid && !ch->reaped) {
      kill_tree(ch->pid, SIGTERM, ch->groups, &ch->ngroups);
      any = 1;
    }
  }
  long long deadline = now_ms() + KILL_GRACE_MS;
  int killed = 0;
  while (any) {
    any = 0;
    for (int i = 0; i < MAX_CHANNELS; i++) {
      chan *ch = c->chans[i];
      if (!ch || !ch->pid) continue;
      if (!ch->reaped && waitpid(ch->pid, &ch->status, WNOHANG) == ch->pid) ch->reaped = 1;
      if (!ch->reaped || groups_alive(ch->groups, ch->ngroups)) {
        any = 1;
        if (killed) kill_tree(ch->pid, SIGKILL, ch->groups, &ch->ngroups);
      }
    }
    if (!any) break;
    if (now_ms() >= deadline) {
      if (killed && now_ms() >= deadline + KILL_GRACE_MS) break; /* unkillable (D state): give up */
      killed = 1;
    }
    poll(NULL, 0, 20);
  }
}


static int run_connection(int fd) {
  char why[256];
  if (galley_ssh_load(why, sizeof why) != 0) return EXIT_NO_LIBSSH;
  alarm(LOGIN_GRACE_S); /* key exchange and authentication within the grace time, or die */
  conn *c = calloc(1, sizeof *c);
  ssh_bind b = ssh_bind_new();
  if (!c || !b) return 1;
  bool no = false;
  ssh_bind_options_set(b, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no);
  ssh_bind_options_set(b, SSH_BIND_OPTIONS_HOSTKEY, gw.host_key);
  c->s = ssh_new();
  if (!c->s) return 1;
  ssh_options_set(c->s, SSH_OPTIONS_PROCESS_CONFIG, &no);
  if (ssh_bind_accept_fd(b, c->s, fd) != SSH_OK) return 1;
  struct ssh_server_callbacks_struct scb;
  memset(&scb, 0, sizeof scb);
  scb.size = sizeof scb;
  scb.userdata = c;
  scb.auth_pubkey_function = auth_pubkey;
  scb.channel_open_request_session_function = open_session_cb;
  ssh_set_server_callbacks(c->s, &scb);
  ssh_set_auth_methods(c->s, SSH_AUTH_METHOD_PUBLICKEY);
  if (ssh_handle_key_exchange(c->s) != SSH_OK) {
    ssh_free(c->s);
    ssh_bind_free(b);
    free(c);
    return 0;
  }
  ssh_set_blocking(c->s, 0);
  c->ev = ssh_event_new();
  ssh_event_add_session(c->ev, c->s);
  ssh_event_add_fd(c->ev, sig_pipe[0], POLLIN, on_sig_pipe, NULL);
  while (!got_stop && connected(c)) {
    ssh_event_dopoll(c->ev, 200);
    progress(c);
  }
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (c->chans[i]) c->chans[i]->peer_closed = 1;
  }
  kill_all(c);
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (c->chans[i]) chan_free(c, i);
  }
  ssh_event_remove_fd(c->ev, sig_pipe[0]);
  ssh_event_remove_session(c->ev, c->s);
  ssh_event_free(c->ev);
  ssh_disconnect(c->s);
  ssh_free(c->s);
  ssh_bind_free(b);
  free(c);
  return 0;
}


/* ---------------------------------------------------------------------------------------------
 * The parent: host key, listening socket, accept loop. */

static int usage(const char *msg) {
  fprintf(stderr, "%s: %s\nusage: galley __ssh-gateway --port N --host-key FILE --api URL (key on stdin)\n", PROG,
    msg);
  return EXIT_USAGE;
}


static int ensure_host_key(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0) return 0;
  ssh_key key = NULL;
  if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &key) != SSH_OK) return -1;
  mode_t old = umask(077);
  int rc = ssh_pki_export_privkey_file(key, NULL, NULL, NULL, path);
  umask(old);
  ssh_key_free(key);
  return rc == SSH_OK ? 0 : -1;
}


/* The key: stdin's first line. */
static int read_key(void) {
  size_t n = 0;
  while (n < sizeof gw.key - 1) {
    char ch;
    ssize_t r = read(0, &ch, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    if (ch == '\n') break;
    gw.key[n++] = ch;
  }
  if (n == 0 || n == sizeof gw.key - 1) return -1;
  gw.key[n] = '\0';
  gw.key_len = n;
  return 0;
}


int galley_ssh_gateway_main(int argc, char **argv) {
  for (int i = 1; i < argc; i += 2) { /* --name value pairs */
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    char *end = NULL;
    if (strcmp(a, "--port") == 0 && v) {
      long port = strtol(v, &end, 10);
      gw.port = (*v && !*end && port >= 0 && port <= 65535) ? (int)port : -1;
    } else if (strcmp(a, "--host-key") == 0 && v) gw.host_key = v;
    else if (strcmp(a, "--api") == 0 && v) gw.api = v;
    else return usage("bad arguments");
  }
  if (!gw.host_key || !gw.api || gw.port < 0 || gw.port > 65535) return usage("--host-key and --api are required");
  if (strncmp(gw.api, "http://127.", 11) != 0) return usage("--api must be a loopback http:// URL");
  char why[256];
  if (galley_ssh_load(why, sizeof why) != 0) {
    fprintf(stderr, "%s: %s\n  hint: apt-get install libssh-4\n", PROG, why);
    return EXIT_NO_LIBSSH;
  }
  if (read_key() != 0) return usage("expected the API key as the first line of stdin");
  if (ensure_host_key(gw.host_key) != 0) {
    fprintf(stderr, "%s: cannot create the host key %s\n", PROG, gw.host_key);
    return 1;
  }
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)gw.port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof addr;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 128) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) {
    fprintf(stderr, "%s: cannot listen on 127.0.0.1:%d: %s\n", PROG, gw.port, strerror(errno));
    return 1;
  }
  if (make_sig_pipe() != 0) return 1;
  printf("%d\n", ntohs(addr.sin_port));
  fflush(stdout);

  pid_t kids[MAX_CONNECTIONS];
  int nkids = 0;
  int stdin_open = 1;
  while (!got_stop && stdin_open) {
    struct pollfd fds[3] = { { lfd, POLLIN, 0 }, { sig_pipe[0], POLLIN, 0 }, { 0, POLLIN, 0 } };
    int rc = poll(fds, 3, 1000);
    if (rc < 0 && errno != EINTR) break;
    drain_sig_pipe();
    if (got_child || rc == 0) {
      got_child = 0;
      for (int i = 0; i < nkids;) {
        if (waitpid(kids[i], NULL, WNOHANG) == kids[i]) kids[i] = kids[--nkids];
        else i++;
      }
    }
    if (fds[2].revents) {
      char buf[256];
      ssize_t n = read(0, buf, sizeof buf);
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) stdin_open = 0; /* the emulator is gone */
    }
    if (fds[0].revents & POLLIN) {
      int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) poll(NULL, 0, 100);
        continue;
      }
      /* SSH packets are small and answered at once: Nagle's wait for the peer's (delayed) ACK
       * would add ~40 ms to every request and reply. */
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      if (nkids >= MAX_CONNECTIONS) {
        close(fd);
        continue;
      }
      pid_t parent = getpid();
      pid_t pid = fork();
      if (pid == 0) {
        close(lfd);
        close(0);
        prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
        if (getppid() != parent) _exit(0);
        got_stop = 0;
        got_child = 0;
        make_sig_pipe();
        signal(SIGTERM, SIG_DFL); /* until a login succeeds: nothing of ours runs yet */
        _exit(run_connection(fd));
      }
      close(fd);
      if (pid > 0) kids[nkids++] = pid;
    }
  }
  /* Stop: every connection ends (killing its commands), then this process. */
  close(lfd);
  for (int i = 0; i < nkids; i++) kill(kids[i], SIGTERM);
  long long deadline = now_ms() + STOP_GRACE_MS;
  while (nkids > 0) {
    for (int i = 0; i < nkids;) {
      if (waitpid(kids[i], NULL, WNOHANG) == kids[i]) kids[i] = kids[--nkids];
      else i++;
    }
    if (nkids == 0) break;
    if (now_ms() >= deadline) {
      for (int i = 0; i < nkids; i++) kill(kids[i], SIGKILL);
      for (int i = 0; i < nkids; i++) waitpid(kids[i], NULL, 0);
      break;
    }
    poll(NULL, 0, 20);
  }
  memset(gw.key, 0, sizeof gw.key);
  return 0;
}
