/* `galley __enter`: a command inside a local sandbox's namespaces; see enter.h. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/sched.h> /* struct clone_args, CLONE_INTO_CGROUP */
#include "enter.h"
#include "sweep.h"

#define EXIT_ENTER 125

typedef struct {
  const char *name;
  int type;
  int fd;
} ns_file;


static int fail(const char *what, const char *arg) {
  fprintf(stderr, "galley __enter: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  return EXIT_ENTER;
}


static int write_pid(const char *cgroup) {
  char path[4096], pid[32];
  snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  int ok = write(fd, pid, (size_t)n) == n;
  int saved = errno;
  close(fd);
  errno = saved;
  return ok ? 0 : -1;
}


/* Field 22 of /proc/PID/stat (the start time in clock ticks) into out, or -1. */
static int start_time(const char *pid, char *out, size_t cap) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  if (!p) return -1;
  p++;
  for (int field = 3; field <= 22; field++) {
    while (*p == ' ') p++;
    char *end = p + strcspn(p, " \n");
    if (field == 22) {
      size_t len = (size_t)(end - p);
      if (len == 0 || len >= cap) return -1;
      memcpy(out, p, len);
      out[len] = '\0';
      return 0;
    }
    if (*end == '\0') return -1;
    p = end;
  }
  return -1;
}


/* The signals a caller ends a command with. Caught here, they go on to the command's process
 * group (it is a session leader once it runs): if this process died of them instead, its child
 * (a process of the instance's pid namespace) would be left to this machine's pid 1 to reap, and
 * the instance's stop would wait until pid 1 did. SIGKILL cannot be passed on: the local
 * provider kills a command's cgroup first, and this process then ends by itself. */
static const int FORWARDED[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
static volatile sig_atomic_t forward_to = 0;  /* the child, once forked */
static volatile sig_atomic_t forward_pending = 0;
static volatile sig_atomic_t forwarded = 0; /* the last signal passed on */

static void forward(int sig) {
  pid_t child = (pid_t)forward_to;
  if (child <= 0) {
    forward_pending = sig;
    return;
  }
  forwarded = sig;
  int saved = errno;
  if (kill(-child, sig) != 0) kill(child, sig); /* before its setsid: the child alone */
  errno = saved;
}

static void catch_forwarded(void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof FORWARDED / sizeof FORWARDED[0]; i++) sigaction(FORWARDED[i], &sa, NULL);
}


/* The instance's pid namespace: the sweep signals nothing outside it. */
static struct stat instance_pidns;


/* Waits for the child and ends the same way (nsenter's behaviour). */
static int relay(pid_t child, int proc_fd) {
  int st;
  for (;;) {
    pid_t r = waitpid(child, &st, WUNTRACED);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail("wait for the command", NULL);
    if (WIFSTOPPED(st)) {
      kill(getpid(), SIGSTOP);
      kill(child, SIGCONT);
      continue;
    }
    break;
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) {
    int sig = WTERMSIG(st);
    /* (the leader is reaped: the sweep keeps to the instance's pid namespace) */
    if (sig == forwarded && proc_fd >= 0) galley_sweep_group(proc_fd, child, sig, &instance_pidns);
    signal(sig, SIG_DFL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    sigprocmask(SIG_UNBLOCK, &one, NULL);
    kill(getpid(), sig);
    return 128 + sig;
  }
  return EXIT_ENTER;
}


/* A child created inside the cgroup open as cgroup_fd (clone3 with CLONE_INTO_CGROUP, Linux 5.7+),
 * else a plain fork after this process joins the cgroup by writing its pid (older kernels).
 * Writing to cgroup.procs moves a running process, and the kernel then waits for an RCU grace
 * period: 10-20 ms here on every exec, more than the rest of an exec's start-up. */
static pid_t fork_into(int cgroup_fd, const char *cgroup) {
  if (cgroup_fd < 0) return fork();
#ifdef CLONE_INTO_CGROUP
  struct clone_args args;
  memset(&args, 0, sizeof args);
  args.flags = CLONE_INTO_CGROUP;
  args.exit_signal = SIGCHLD;
  args.cgroup = (uint64_t)cgroup_fd;
  long r = syscall(SYS_clone3, &args, sizeof args);
  if (r >= 0) return (pid_t)r;
#endif
  if (write_pid(cgroup) != 0) {
    fail("join the cgroup", cgroup);
    return -2;
  }
  return fork();
}


int galley_enter_main(int argc, char **argv) {
  if (argc < 8 || strcmp(argv[6], "--") != 0) {
    fprintf(stderr, "usage: galley __enter CGROUP HOLDER_PID HOLDER_START NET CWD -- COMMAND...\n");
    return 2;
  }
  const char *cgroup = argv[1], *pid = argv[2], *want = argv[3], *cwd = argv[5];
  int net = strcmp(argv[4], "net") == 0;
  if (pid[0] == '\0' || strspn(pid, "0123456789") != strlen(pid)) {
    fprintf(stderr, "galley __enter: HOLDER_PID must be a number\n");
    return 2;
  }
  int cgroup_fd = -1;
  if (cgroup[0]) {
    cgroup_fd = open(cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup_fd < 0) return fail("open the cgroup", cgroup);
  }

  /* The user namespace first in the list: it is entered on the second pass only. */
  ns_file ns[] = {
    { "user", CLONE_NEWUSER, -1 }, { "cgroup", CLONE_NEWCGROUP, -1 }, { "ipc", CLONE_NEWIPC, -1 },
    { "uts", CLONE_NEWUTS, -1 },   { "net", CLONE_NEWNET, -1 },       { "pid", CLONE_NEWPID, -1 },
    { "mnt", CLONE_NEWNS, -1 },
  };
  size_t count = sizeof ns / sizeof ns[0];
  for (size_t i = 0; i < count; i++) {
    if (ns[i].type == CLONE_NEWNET && !net) continue;
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/%s", pid, ns[i].name);
    ns[i].fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ns[i].fd < 0) return fail("open", path);
  }
  char started[32];
  if (start_time(pid, started, sizeof started) != 0 || strcmp(started, want) != 0) {
    fprintf(stderr, "galley __enter: the instance's holder (pid %s) is gone\n", pid);
    return EXIT_ENTER;
  }

  /* This machine's procfs, for the sweep (sweep.h) once the mount namespace is the instance's. */
  int proc_fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  for (size_t i = 0; i < count; i++)
    if (ns[i].type == CLONE_NEWPID && fstat(ns[i].fd, &instance_pidns) != 0 && proc_fd >= 0) {
      close(proc_fd);
      proc_fd = -1;
    }

  /* As root on the host every namespace but the user one can be entered first; a caller
   * without privileges needs the user namespace (where it has them) before the others. */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = pass ? 0 : 1; i < count; i++) {
      if (ns[i].fd < 0 || ns[i].type == CLONE_NEWCGROUP) continue;
      if (setns(ns[i].fd, ns[i].type) != 0) {
        if (pass == 0) continue;
        return fail("enter the namespace", ns[i].name);
      }
      close(ns[i].fd);
      ns[i].fd = -1;
    }
  }

  /* The child is made in the instance's cgroup while this process still has its own ids (the
   * cgroup files are the caller's), and it enters the cgroup namespace itself: with nsdelegate,
   * a process inside that namespace could not name the instance's cgroup. */
  catch_forwarded(forward);
  pid_t child = fork_into(cgroup_fd, cgroup);
  if (child == -2) return EXIT_ENTER;
  if (child < 0) return fail("fork", NULL);
  if (child > 0) {
    if (cgroup_fd >= 0) close(cgroup_fd);
    forward_to = child;
    if (forward_pending) forward(forward_pending);
    return relay(child, proc_fd);
  }

  /* The child: pid 2 or more of the instance's pid namespace. */
  catch_forwarded(SIG_DFL);
  if (cgroup_fd >= 0) close(cgroup_fd);
  if (proc_fd >= 0) close(proc_fd);
  for (size_t i = 0; i < count; i++) {
    if (ns[i].fd < 0) continue;
    if (setns(ns[i].fd, ns[i].type) != 0) _exit(fail("enter the namespace", ns[i].name));
    close(ns[i].fd);
  }
  if (setgroups(0, NULL) != 0 && errno != EPERM) _exit(fail("setgroups", NULL));
  if (setgid(0) != 0) _exit(fail("setgid", "0"));
  if (setuid(0) != 0) _exit(fail("setuid", "0"));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(fail("set no_new_privs", NULL));
  if (prctl(PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0) _exit(fail("drop", "CAP_SYS_RESOURCE"));
  if (prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) != 0) _exit(fail("drop", "CAP_SYS_ADMIN"));
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) _exit(fail("set the parent-death signal", NULL));
  /* Its parent is outside the namespace (getppid() is 0) unless it already died. */
  if (getppid() != 0) _exit(EXIT_ENTER);
  if (setsid() < 0) _exit(fail("setsid", NULL));
  if (chdir(cwd) != 0) {
    fprintf(stderr, "galley __enter: cd %s: %s\n", cwd, strerror(errno));
    _exit(127);
  }
  execvp(argv[7], argv + 7);
  int err = errno;
  fprintf(stderr, "galley __enter: %s: %s\n", argv[7], strerror(err));
  _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}
