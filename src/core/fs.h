/* Local files, binary-safe. Every function that can fail returns 0 on success and -1 on failure
 * with e->err (an errno value) and e->path (the file it concerns, which for tree operations may
 * be an entry inside the tree) filled in. */
#ifndef GALLEY_FS_H
#define GALLEY_FS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
  int err;                  /* errno */
  char path[PATH_MAX];
} galley_fs_error;

enum { GALLEY_FS_FILE, GALLEY_FS_DIRECTORY, GALLEY_FS_LINK, GALLEY_FS_OTHER };

typedef struct {
  int type;                 /* GALLEY_FS_*, without following a final symlink */
  uint64_t size;
  unsigned mode;            /* permission bits (& 07777) */
  int64_t mtime;            /* seconds since the epoch */
  int64_t mtime_ns;         /* nanoseconds since the epoch */
  int64_t ctime_ns;         /* the inode's last change, nanoseconds since the epoch */
  uint64_t ino;             /* inode number */
  uid_t uid;
  gid_t gid;
} galley_fs_info;

/* The whole file in a malloc'd buffer (*data, *len; NUL-terminated for convenience, the NUL
 * not counted). The caller frees *data. */
int galley_fs_read(const char *path, char **data, size_t *len, galley_fs_error *e);

/* Creates or truncates path and writes data. mode < 0: 0666 minus the umask for a new file and
 * unchanged for an existing one; otherwise the file gets exactly that mode. */
int galley_fs_write(const char *path, const void *data, size_t len, int mode, galley_fs_error *e);

/* Writes a temporary file beside path (an unpredictable name, opened O_CREAT|O_EXCL|O_NOFOLLOW
 * with mode 0600), sets it to its final mode before writing a byte (mode >= 0: exactly that,
 * whatever the umask; mode < 0: the old target's mode, or 0666 minus the umask for a new file),
 * writes and fsyncs it, renames it over path and fsyncs the directory. So the data is never in a
 * file with more permissions than the final one. On failure the old target is untouched and the
 * temporary file is gone. */
int galley_fs_write_atomic(const char *path, const void *data, size_t len, int mode, galley_fs_error *e);

/* lstat: a symlink is reported as GALLEY_FS_LINK. */
int galley_fs_stat(const char *path, galley_fs_info *info, galley_fs_error *e);

/* 1 when path names something (following symlinks), else 0. */
int galley_fs_exists(const char *path);

/* Creates path and any missing parents (mode before the umask). An existing directory is fine. */
int galley_fs_mkdir_p(const char *path, int mode, galley_fs_error *e);

/* Creates one directory (its parent must exist; an existing path is an error) with exactly
 * `mode` (0..07777, the umask does not apply), as `mkdir -m MODE` does. */
int galley_fs_mkdir(const char *path, int mode, galley_fs_error *e);

/* Creates a named pipe with exactly `mode` (the umask does not apply), as `mkfifo -m MODE`. */
int galley_fs_mkfifo(const char *path, int mode, galley_fs_error *e);

/* Changes the owner and group of path itself (a symlink is not followed). */
int galley_fs_chown(const char *path, long uid, long gid, galley_fs_error *e);

/* Removes a file, a symlink or an empty directory. */
int galley_fs_remove(const char *path, galley_fs_error *e);

/* Removes path and, for a directory, everything below it. Symlinks are removed, never
 * followed, so nothing outside the tree is touched. */
int galley_fs_remove_tree(const char *path, galley_fs_error *e);

/* The names in a directory (without "." and ".."), sorted bytewise, as a malloc'd
 * NULL-terminated array; free it with galley_fs_list_free(). */
int galley_fs_list(const char *path, char ***names, size_t *n, galley_fs_error *e);
void galley_fs_list_free(char **names);

/* Creates a fresh directory named prefix + 6 random characters (a prefix without '/' goes in
 * $TMPDIR or /tmp) and writes its path into out. */
int galley_fs_mkdtemp(const char *prefix, char *out, size_t cap, galley_fs_error *e);

/* Copies src to dst (which must not exist): directories, regular files and symlinks, keeping
 * permission bits and modification times. Sockets, FIFOs and devices are skipped. */
int galley_fs_copy_tree(const char *src, const char *dst, galley_fs_error *e);

/* The canonical absolute path (symlinks resolved) into out (PATH_MAX bytes). */
int galley_fs_realpath(const char *path, char *out, galley_fs_error *e);

/* Opens path for reading (close-on-exec). Returns the descriptor or -1. */
int galley_fs_open_read(const char *path, galley_fs_error *e);

/* Reads until n bytes are in buf or the file ends. Returns the count (0 at EOF) or -1. */
ssize_t galley_fs_read_full(int fd, void *buf, size_t n);

#endif
