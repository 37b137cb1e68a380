/* Local files; see fs.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "fs.h"

#define COPY_CHUNK 65536


/* Records errno (or err when non-zero) and path in e; returns -1. */
static int fail(galley_fs_error *e, const char *path, int err) {
  e->err = err ? err : errno;
  snprintf(e->path, sizeof e->path, "%s", path);
  return -1;
}


static int write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}


ssize_t galley_fs_read_full(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}


int galley_fs_open_read(const char *path, galley_fs_error *e) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(e, path, 0);
  return fd;
}


int galley_fs_read(const char *path, char **data, size_t *len, galley_fs_error *e) {
  *data = NULL;
  *len = 0;
  int fd = galley_fs_open_read(path, e);
  if (fd < 0) return -1;
  struct stat st;
  /* Files in /proc report size 0: the size is only a first guess, reading goes on to EOF. */
  size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size + 1 : 65536;
  char *buf = malloc(cap);
  size_t used = 0;
  for (;;) {
    if (!buf) {
      close(fd);
      return fail(e, path, ENOMEM);
    }
    if (used + 1 >= cap) {
      char *bigger = realloc(buf, cap * 2);
      if (!bigger) free(buf);
      buf = bigger;
      cap *= 2;
      continue;
    }
    ssize_t r = read(fd, buf + used, cap - used - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      free(buf);
      close(fd);
      return fail(e, path, err);
    }
    if (r == 0) break;
    used += (size_t)r;
  }
  close(fd);
  buf[used] = '\0';
  *data = buf;
  *len = used;
  return 0;
}


int galley_fs_write(const char *path, const void *data, size_t len, int mode, galley_fs_error *e) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode >= 0 ? (mode_t)mode : 0666);
  if (fd < 0) return fail(e, path, 0);
  if ((mode >= 0 && fchmod(fd, (mode_t)mode) != 0) || write_all(fd, data, len) != 0) {
    int err = errno;
    close(fd);
    return fail(e, path, err);
  }
  if (close(fd) != 0) return fail(e, path, 0);
  return 0;
}


/* Splits path into its directory (into dir, "." when there is none). */
static void dir_of(const char *path, char *dir, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, cap, ".");
  else if (slash == path) snprintf(dir, cap, "/");
  else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}


static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  /* Some file systems cannot fsync a directory; that is no reason to fail the write. */
  if (rc != 0 && (errno == EINVAL || errno == ENOTSUP)) rc = 0;
  close(fd);
  return rc;
}


/* An unpredictable temporary name beside the target: "<dir>/.<base>.tmp-<16 hex digits>". */
static int temp_name(char *tmp, size_t cap, const char *dir, const char *base) {
  unsigned char r[8];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) return -1;
  int w = snprintf(tmp, cap, "%s/.%s.tmp-%02x%02x%02x%02x%02x%02x%02x%02x", dir, base,
                   r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
  if (w < 0 || (size_t)w >= cap) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}


int galley_fs_write_atomic(const char *path, const void *data, size_t len, int mode, galley_fs_error *e) {
  char dir[PATH_MAX], tmp[PATH_MAX];
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  if (!*base) return fail(e, path, EISDIR);
  dir_of(path, dir, sizeof dir);

  /* The final mode is decided before the file exists: the one asked for, else the old target's,
   * else 0666 minus the umask (what open gives a new file). */
  struct stat old;
  int final = mode;
  if (final < 0 && stat(path, &old) == 0 && S_ISREG(old.st_mode)) final = (int)(old.st_mode & 07777);

  /* Created 0600 (or the plain default) so no other user can open it at any moment, then set to
   * exactly the final mode, whatever the umask, before a byte is written. */
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
    if (temp_name(tmp, sizeof tmp, dir, base) != 0) return fail(e, path, 0);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, final >= 0 ? 0600 : 0666);
    if (fd < 0 && errno != EEXIST) return fail(e, path, 0);
  }
  if (fd < 0) return fail(e, path, EEXIST);

  int rc = final >= 0 ? fchmod(fd, (mode_t)final) : 0;
  if (rc == 0) rc = write_all(fd, data, len);
  if (rc == 0) rc = fsync(fd);
  int err = errno;
  if (close(fd) != 0 && rc == 0) {
    rc = -1;
    err = errno;
  }
  if (rc == 0 && rename(tmp, path) != 0) {
    rc = -1;
    err = errno;
  }
  if (rc != 0) {
    unlink(tmp);
    return fail(e, path, err);
  }
  if (fsync_dir(dir) != 0) return fail(e, dir, 0);
  return 0;
}


static int type_of(mode_t m) {
  if (S_ISREG(m)) return GALLEY_FS_FILE;
  if (S_ISDIR(m)) return GALLEY_FS_DIRECTORY;
  if (S_ISLNK(m)) return GALLEY_FS_LINK;
  return GALLEY_FS_OTHER;
}


int galley_fs_stat(const char *path, galley_fs_info *info, galley_fs_error *e) {
  struct stat st;
  if (lstat(path, &st) != 0) return fail(e, path, 0);
  info->type = type_of(st.st_mode);
  info->size = (uint64_t)st.st_size;
  info->mode = st.st_mode & 07777;
  info->mtime = (int64_t)st.st_mtime;
  info->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  info->ctime_ns = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
  info->ino = (uint64_t)st.st_ino;
  info->uid = st.st_uid;
  info->gid = st.st_gid;
  return 0;
}


int galley_fs_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}


static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}


int galley_fs_mkdir_p(const char *path, int mode, galley_fs_error *e) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0) return fail(e, path, ENOENT);
  if (n >= sizeof buf) return fail(e, path, ENAMETOOLONG);
  memcpy(buf, path, n + 1);
  while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
  for (char *p = buf + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(buf, mode >= 0 ? (mode_t)mode : 0777) != 0) {
      int err = errno;
      if (!is_dir(buf)) return fail(e, buf, err); /* EEXIST: a non-directory is in the way */
    }
    *p = saved;
    if (saved == '\0') break;
    while (p[1] == '/') p++;
  }
  return 0;
}


int galley_fs_mkdir(const char *path, int mode, galley_fs_error *e) {
  if (mkdir(path, 0700) != 0) return fail(e, path, 0);
  if (chmod(path, (mode_t)mode) != 0) {
    int err = errno;
    rmdir(path);
    return fail(e, path, err);
  }
  return 0;
}


int galley_fs_mkfifo(const char *path, int mode, galley_fs_error *e) {
  if (mkfifo(path, 0600) != 0) return fail(e, path, 0);
  if (chmod(path, (mode_t)mode) != 0) {
    int err = errno;
    unlink(path);
    return fail(e, path, err);
  }
  return 0;
}


int galley_fs_chown(const char *path, long uid, long gid, galley_fs_error *e) {
  if (lchown(path, (uid_t)uid, (gid_t)gid) != 0) return fail(e, path, 0);
  return 0;
}


int galley_fs_remove(const char *path, galley_fs_error *e) {
  if (unlink(path) == 0) return 0;
  if (errno != EISDIR && errno != EPERM) return fail(e, path, 0);
  if (rmdir(path) == 0) return 0;
  /* rmdir's ENOTDIR means unlink's EPERM was the real answer. */
  return fail(e, path, errno == ENOTDIR ? EPERM : 0);
}


/* Removes `name` inside the directory dirfd; path/plen name it for errors. Directories are
 * opened with O_NOFOLLOW relative to their parent, so a symlink is never entered. */
static int remove_at(int dirfd, const char *name, char *path, size_t plen, galley_fs_error *e) {
  if (unlinkat(dirfd, name, 0) == 0) return 0;
  if (errno != EISDIR && errno != EPERM) return fail(e, path, 0);
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return fail(e, path, errno == ENOTDIR || errno == ELOOP ? EPERM : 0);
  DIR *d = fdopendir(fd);
  if (!d) {
    int err = errno;
    close(fd);
    return fail(e, path, err);
  }
  int rc = 0;
  struct dirent *ent;
  errno = 0;
  while (rc == 0 && (ent = readdir(d)) != NULL) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    size_t nlen = strlen(ent->d_name);
    if (plen + 1 + nlen >= PATH_MAX) {
      rc = fail(e, path, ENAMETOOLONG);
      break;
    }
    path[plen] = '/';
    memcpy(path + plen + 1, ent->d_name, nlen + 1);
    rc = remove_at(fd, ent->d_name, path, plen + 1 + nlen, e);
    path[plen] = '\0';
    errno = 0;
  }
  if (rc == 0 && errno != 0) rc = fail(e, path, 0);
  closedir(d);
  if (rc == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) != 0) rc = fail(e, path, 0);
  return rc;
}


int galley_fs_remove_tree(const char *path, galley_fs_error *e) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n >= sizeof buf) return fail(e, path, ENAMETOOLONG);
  memcpy(buf, path, n + 1);
  return remove_at(AT_FDCWD, path, buf, n, e);
}


static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}


void galley_fs_list_free(char **names) {
  if (!names) return;
  for (char **p = names; *p; p++) free(*p);
  free(names);
}


int galley_fs_list(const char *path, char ***names, size_t *count, galley_fs_error *e) {
  *names = NULL;
  *count = 0;
  DIR *d = opendir(path);
  if (!d) return fail(e, path, 0);
  size_t n = 0, cap = 16;
  char **v = calloc(cap, sizeof *v);
  struct dirent *ent;
  int err = v ? 0 : ENOMEM;
  errno = 0;
  while (!err && (ent = readdir(d)) != NULL) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    if (n + 1 >= cap) {
      char **bigger = realloc(v, cap * 2 * sizeof *v);
      if (!bigger) {
        err = ENOMEM;
        break;
      }
      v = bigger;
      cap *= 2;
    }
    v[n] = strdup(ent->d_name);
    if (!v[n]) {
      err = ENOMEM;
      break;
    }
    v[++n] = NULL;
    errno = 0;
  }
  if (!err && errno != 0) err = errno;
  closedir(d);
  if (err) {
    galley_fs_list_free(v);
    return fail(e, path, err);
  }
  qsort(v, n, sizeof *v, cmp_names);
  *names = v;
  *count = n;
  return 0;
}


int galley_fs_mkdtemp(const char *prefix, char *out, size_t cap, galley_fs_error *e) {
  int w;
  if (strchr(prefix, '/')) {
    w = snprintf(out, cap, "%sXXXXXX", prefix);
  } else {
    const char *tmp = getenv("TMPDIR");
    w = snprintf(out, cap, "%s/%sXXXXXX", tmp && *tmp ? tmp : "/tmp", prefix);
  }
  if (w < 0 || (size_t)w >= cap) return fail(e, prefix, ENAMETOOLONG);
  if (!mkdtemp(out)) return fail(e, out, 0);
  return 0;
}


static int copy_file(const char *src, const char *dst, const struct stat *st, galley_fs_error *e) {
  int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (in < 0) return fail(e, src, 0);
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    int err = errno;
    close(in);
    return fail(e, dst, err);
  }
  char buf[COPY_CHUNK];
  int rc = 0;
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = fail(e, src, 0);
      break;
    }
    if (n == 0) break;
    if (write_all(out, buf, (size_t)n) != 0) {
      rc = fail(e, dst, 0);
      break;
    }
  }
  struct timespec times[2] = {st->st_atim, st->st_mtim};
  if (rc == 0 && fchmod(out, st->st_mode & 07777) != 0) rc = fail(e, dst, 0);
  if (rc == 0 && futimens(out, times) != 0) rc = fail(e, dst, 0);
  close(in);
  if (close(out) != 0 && rc == 0) rc = fail(e, dst, 0);
  return rc;
}


/* The copy's top directory, so copying a tree into itself does not recurse forever. */
typedef struct {
  int known;
  dev_t dev;
  ino_t ino;
} copy_root;


/* Copies src to dst; both are buffers of PATH_MAX bytes holding slen/dlen characters, which
 * the recursion extends and restores. */
static int copy_at(char *src, size_t slen, char *dst, size_t dlen, copy_root *root, galley_fs_error *e) {
  struct stat st;
  if (lstat(src, &st) != 0) return fail(e, src, 0);
  if (root->known && st.st_dev == root->dev && st.st_ino == root->ino) return 0;
  if (S_ISREG(st.st_mode)) return copy_file(src, dst, &st, e);
  if (S_ISLNK(st.st_mode)) {
    char target[PATH_MAX];
    ssize_t n = readlink(src, target, sizeof target - 1);
    if (n < 0) return fail(e, src, 0);
    target[n] = '\0';
    if (symlink(target, dst) != 0) return fail(e, dst, 0);
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    utimensat(AT_FDCWD, dst, times, AT_SYMLINK_NOFOLLOW); /* best effort */
    return 0;
  }
  if (!S_ISDIR(st.st_mode)) return 0; /* sockets, FIFOs, devices: skipped */

  /* Owner-writable while filling; the real mode and times are set once the contents exist. */
  if (mkdir(dst, 0700) != 0) return fail(e, dst, 0);
  struct stat made;
  if (!root->known && lstat(dst, &made) == 0) {
    root->known = 1;
    root->dev = made.st_dev;
    root->ino = made.st_ino;
  }
  DIR *d = opendir(src);
  if (!d) return fail(e, src, 0);
  int rc = 0;
  struct dirent *ent;
  errno = 0;
  while (rc == 0 && (ent = readdir(d)) != NULL) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    size_t nlen = strlen(ent->d_name);
    if (slen + 1 + nlen >= PATH_MAX || dlen + 1 + nlen >= PATH_MAX) {
      rc = fail(e, src, ENAMETOOLONG);
      break;
    }
    src[slen] = '/';
    memcpy(src + slen + 1, ent->d_name, nlen + 1);
    dst[dlen] = '/';
    memcpy(dst + dlen + 1, ent->d_name, nlen + 1);
    rc = copy_at(src, slen + 1 + nlen, dst, dlen + 1 + nlen, root, e);
    src[slen] = '\0';
    dst[dlen] = '\0';
    errno = 0;
  }
  if (rc == 0 && errno != 0) rc = fail(e, src, 0);
  closedir(d);
  struct timespec times[2] = {st.st_atim, st.st_mtim};
  if (rc == 0 && chmod(dst, st.st_mode & 07777) != 0) rc = fail(e, dst, 0);
  if (rc == 0 && utimensat(AT_FDCWD, dst, times, 0) != 0) rc = fail(e, dst, 0);
  return rc;
}


int galley_fs_copy_tree(const char *src, const char *dst, galley_fs_error *e) {
  char s[PATH_MAX], d[PATH_MAX];
  size_t slen = strlen(src), dlen = strlen(dst);
  if (slen >= sizeof s) return fail(e, src, ENAMETOOLONG);
  if (dlen >= sizeof d) return fail(e, dst, ENAMETOOLONG);
  memcpy(s, src, slen + 1);
  memcpy(d, dst, dlen + 1);
  while (slen > 1 && s[slen - 1] == '/') s[--slen] = '\0';
  while (dlen > 1 && d[dlen - 1] == '/') d[--dlen] = '\0';
  /* dst must not exist (a dangling symlink counts as existing). */
  struct stat st;
  if (lstat(d, &st) == 0) return fail(e, dst, EEXIST);
  copy_root root = {0};
  return copy_at(s, slen, d, dlen, &root, e);
}


int galley_fs_realpath(const char *path, char *out, galley_fs_error *e) {
  if (!realpath(path, out)) return fail(e, path, 0);
  return 0;
}
