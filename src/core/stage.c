/* `galley __stage`: the mount set-up of a root-started sandbox in one process; see stage.h. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "stage.h"

static const char *mode_name = "__stage";

static int die(const char *what, const char *path) {
  fprintf(stderr, "galley %s: %s %s: %s\n", mode_name, what, path ? path : "", strerror(errno));
  return 1;
}


/* The per-mount flags a read-only bind keeps from the mount it copies (a remount replaces
 * them all, so they are asked for again): it may only become stricter. */
static unsigned long kept_flags(const char *path) {
  struct statvfs sv;
  if (statvfs(path, &sv) != 0) return 0;
  unsigned long f = 0;
  if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}


static int bind_at(int fd, const char *target) {
  char src[64];
  snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
  return mount(src, target, NULL, MS_BIND, NULL);
}


int galley_stage_main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: galley __stage STAGE INSTANCE_DIR UID GID [READ_ONLY_DIR...] -- COMMAND...\n");
    return 2;
  }
  const char *stage = argv[1], *dir = argv[2];
  char *end_uid, *end_gid;
  long uid = strtol(argv[3], &end_uid, 10), gid = strtol(argv[4], &end_gid, 10);
  if (*argv[3] == '\0' || *end_uid != '\0' || uid <= 0 || *argv[4] == '\0' || *end_gid != '\0' || gid <= 0) {
    fprintf(stderr, "galley __stage: UID and GID must be positive numbers\n");
    return 2;
  }
  int cmd = 5;
  while (cmd < argc && strcmp(argv[cmd], "--") != 0) cmd++;
  if (cmd + 1 >= argc) {
    fprintf(stderr, "galley __stage: no command after --\n");
    return 2;
  }

  /* A private mount namespace: nothing below reaches the host's. */
  if (unshare(CLONE_NEWNS) != 0) return die("unshare", "mount namespace");
  if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return die("make private", "/");

  char path[4096];
  snprintf(path, sizeof path, "%s/home", dir);
  int home = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (home < 0) return die("open", path);
  snprintf(path, sizeof path, "%s/tmp", dir);
  int tmp = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (tmp < 0) return die("open", path);

  /* Read-only binds of the system directories over themselves: in the sandbox's user namespace
   * the read-only flag is then locked. */
  for (int i = 5; i < cmd; i++) {
    const char *ro = argv[i];
    if (mount(ro, ro, NULL, MS_BIND, NULL) != 0) return die("bind", ro);
    if (mount("none", ro, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | kept_flags(ro), NULL) != 0)
      return die("make read-only", ro);
  }

  /* A small tmpfs at STAGE with the instance's home and tmp bound below it, where the sandbox
   * (started under a subordinate id that cannot enter the state directory) finds them. */
  if (mount("galley-stage", stage, "tmpfs", 0, "mode=0755,size=1m") != 0) return die("mount tmpfs at", stage);
  snprintf(path, sizeof path, "%s/home", stage);
  if (mkdir(path, 0755) != 0) return die("mkdir", path);
  if (bind_at(home, path) != 0) return die("bind home at", path);
  snprintf(path, sizeof path, "%s/tmp", stage);
  if (mkdir(path, 0755) != 0) return die("mkdir", path);
  if (bind_at(tmp, path) != 0) return die("bind tmp at", path);
  close(home);
  close(tmp);

  /* A session of its own, then the subordinate ids (no groups): from here on nothing of the
   * host's state directory can be reached. */
  if (setsid() < 0) return die("setsid", NULL);
  if (setgroups(0, NULL) != 0) return die("setgroups", NULL);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) return die("setresgid", argv[4]);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return die("setresuid", argv[3]);

  execvp(argv[cmd + 1], argv + cmd + 1);
  die("cannot run", argv[cmd + 1]);
  return 127;
}


int galley_userns_off_main(int argc, char **argv) {
  mode_name = "__userns-off";
  if (argc != 2 || argv[1][0] == '\0' || strspn(argv[1], "0123456789") != strlen(argv[1])) {
    fprintf(stderr, "usage: galley __userns-off PID\n");
    return 2;
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/%s/ns/user", argv[1]);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return die("open", path);
  if (setns(fd, CLONE_NEWUSER) != 0) return die("enter the user namespace of", path);
  close(fd);
  const char *limit = "/proc/sys/user/max_user_namespaces";
  fd = open(limit, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return die("open", limit);
  if (write(fd, "0\n", 2) != 2) return die("write", limit);
  if (close(fd) != 0) return die("write", limit);
  return 0;
}
