/* The stragglers of a process group killed by a signal; see sweep.h. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sweep.h"


/* Reads `name` of process `pid` (a directory of the procfs open as proc_fd) into buf; its length
 * or -1. */
static ssize_t read_proc(int proc_fd, const char *pid, const char *name, char *buf, size_t cap) {
  char path[64];
  snprintf(path, sizeof path, "%s/%s", pid, name);
  int fd = openat(proc_fd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, cap - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  return n;
}


/* The bit of signal `sig` in the hex mask after `key` in a /proc/PID/status text. */
static int mask_has(const char *status, const char *key, int sig) {
  const char *p = strstr(status, key);
  if (!p) return 0;
  unsigned long long mask = strtoull(p + strlen(key), NULL, 16);
  return (int)((mask >> (sig - 1)) & 1u);
}


/* Signals process `pid` when it is a live member of `pgid` (in `pidns`, if given) that neither
 * catches, ignores nor has `sig` pending; 1 when it did. */
static int sweep_one(int proc_fd, const char *pid, pid_t pgid, int sig, const struct stat *pidns) {
  char buf[4096];
  if (pidns) {
    struct stat ns;
    snprintf(buf, sizeof buf, "%s/ns/pid", pid);
    if (fstatat(proc_fd, buf, &ns, 0) != 0 || ns.st_dev != pidns->st_dev || ns.st_ino != pidns->st_ino) return 0;
  }
  if (read_proc(proc_fd, pid, "stat", buf, sizeof buf) <= 0) return 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
  char state = 0;
  long group = 0;
  if (!p || sscanf(p + 1, " %c %*d %ld", &state, &group) != 2) return 0;
  if (group != (long)pgid || state == 'Z' || state == 'X') return 0;
  if (read_proc(proc_fd, pid, "status", buf, sizeof buf) <= 0) return 0;
  if (mask_has(buf, "\nSigCgt:", sig) || mask_has(buf, "\nSigIgn:", sig) || mask_has(buf, "\nSigPnd:", sig) ||
      mask_has(buf, "\nShdPnd:", sig))
    return 0;
  return kill((pid_t)atol(pid), sig) == 0;
}


void galley_sweep_group(int proc_fd, pid_t pgid, int sig, const struct stat *pidns) {
  if (pgid <= 1 || sig <= 0 || sig > 64 || kill(-pgid, 0) != 0) return; /* (no member left) */
  int own = proc_fd < 0;
  if (own) proc_fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (proc_fd < 0) return;
  for (int pass = 0; pass < 3; pass++) {
    int dup_fd = dup(proc_fd);
    DIR *dir = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!dir) {
      if (dup_fd >= 0) close(dup_fd);
      break;
    }
    int sent = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
      if (e->d_name[0] < '1' || e->d_name[0] > '9' || strspn(e->d_name, "0123456789") != strlen(e->d_name)) continue;
      sent += sweep_one(proc_fd, e->d_name, pgid, sig, pidns);
    }
    closedir(dir);
    if (!sent) break;
  }
  if (own) close(proc_fd);
}
