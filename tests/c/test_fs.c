/* Unit tests for src/core/fs.c, in a fresh temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "fs.h"

static char root[PATH_MAX];


/* root + "/" + rel, in one of a few rotating static buffers. */
static const char *at(const char *rel) {
  static char bufs[8][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 8];
  int n = snprintf(b, PATH_MAX, "%s/%s", root, rel);
  if (n < 0 || n >= PATH_MAX) abort();
  return b;
}


static void put(const char *rel, const char *text) {
  galley_fs_error e;
  CHECK(galley_fs_write(at(rel), text, strlen(text), -1, &e) == 0);
}


/* Reads rel into a static buffer as a C string ("" when missing). */
static const char *get(const char *rel) {
  static char out[4096];
  char *data;
  size_t len;
  galley_fs_error e;
  out[0] = '\0';
  if (galley_fs_read(at(rel), &data, &len, &e) != 0) return out;
  snprintf(out, sizeof out, "%.*s", (int)len, data);
  free(data);
  return out;
}


static unsigned mode_of(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0 ? st.st_mode & 07777 : 0xffff;
}


static void fs_should_write_and_read_binary_data(void) {
  char bytes[256];
  for (int i = 0; i < 256; i++) bytes[i] = (char)i;
  galley_fs_error e;
  CHECK(galley_fs_write(at("bin"), bytes, sizeof bytes, -1, &e) == 0);
  char *data;
  size_t len;
  CHECK(galley_fs_read(at("bin"), &data, &len, &e) == 0);
  CHECK(len == 256 && memcmp(data, bytes, 256) == 0);
  free(data);
  CHECK(galley_fs_write(at("empty"), "", 0, -1, &e) == 0);
  CHECK(galley_fs_read(at("empty"), &data, &len, &e) == 0);
  CHECK(len == 0 && data[0] == '\0');
  free(data);
}


static void fs_should_read_files_that_report_no_size(void) {
  char *data;
  size_t len;
  galley_fs_error e;
  CHECK(galley_fs_read("/proc/self/status", &data, &len, &e) == 0);
  CHECK(len > 0 && strstr(data, "Pid:") != NULL);
  free(data);
}


static void fs_should_report_errno_and_path_on_failure(void) {
  char *data;
  size_t len;
  galley_fs_error e;
  CHECK(galley_fs_read(at("missing"), &data, &len, &e) == -1);
  CHECK(e.err == ENOENT);
  CHECK_STR(e.path, at("missing"));
  CHECK(galley_fs_read(root, &data, &len, &e) == -1);
  CHECK(e.err == EISDIR);
  CHECK(galley_fs_write(at("no/such/dir/file"), "x", 1, -1, &e) == -1);
  CHECK(e.err == ENOENT);
}


static void fs_should_apply_an_explicit_mode_and_keep_an_existing_one(void) {
  galley_fs_error e;
  CHECK(galley_fs_write(at("m"), "x", 1, 0600, &e) == 0);
  CHECK(mode_of(at("m")) == 0600);
  CHECK(galley_fs_write(at("m"), "y", 1, 0640, &e) == 0);
  CHECK(mode_of(at("m")) == 0640);
  CHECK(galley_fs_write(at("m"), "z", 1, -1, &e) == 0);
  CHECK(mode_of(at("m")) == 0640);
  CHECK_STR(get("m"), "z");
}


static int count_entries(const char *dir) {
  char **names;
  size_t n;
  galley_fs_error e;
  if (galley_fs_list(dir, &names, &n, &e) != 0) return -1;
  galley_fs_list_free(names);
  return (int)n;
}


static void fs_should_replace_a_file_atomically(void) {
  galley_fs_error e;
  CHECK(galley_fs_mkdir_p(at("atomic"), -1, &e) == 0);
  CHECK(galley_fs_write(at("atomic/t"), "old", 3, 0640, &e) == 0);
  CHECK(galley_fs_write_atomic(at("atomic/t"), "new contents", 12, -1, &e) == 0);
  CHECK_STR(get("atomic/t"), "new contents");
  CHECK(mode_of(at("atomic/t")) == 0640); /* the old target's mode is kept */
  CHECK(galley_fs_write_atomic(at("atomic/t"), "secret", 6, 0600, &e) == 0);
  CHECK(mode_of(at("atomic/t")) == 0600);
  CHECK(galley_fs_write_atomic(at("atomic/fresh"), "f", 1, -1, &e) == 0);
  CHECK_STR(get("atomic/fresh"), "f");
  CHECK(count_entries(at("atomic")) == 2); /* no temporary files left behind */
}


static void fs_should_leave_the_target_and_no_temp_file_when_atomic_write_fails(void) {
  galley_fs_error e;
  /* The target is a non-empty directory: rename fails after the temp file was written. */
  CHECK(galley_fs_mkdir_p(at("fail/target"), -1, &e) == 0);
  put("fail/target/keep", "kept");
  CHECK(galley_fs_write_atomic(at("fail/target"), "x", 1, -1, &e) == -1);
  CHECK(e.err == EISDIR || e.err == ENOTEMPTY || e.err == EEXIST);
  CHECK_STR(e.path, at("fail/target"));
  CHECK_STR(get("fail/target/keep"), "kept");
  CHECK(count_entries(at("fail")) == 1);
  /* A missing directory fails before anything is written. */
  CHECK(galley_fs_write_atomic(at("fail/nodir/x"), "x", 1, -1, &e) == -1);
  CHECK(e.err == ENOENT);
}


static void fs_should_stat_files_directories_and_links(void) {
  galley_fs_info info;
  galley_fs_error e;
  CHECK(galley_fs_write(at("s"), "12345", 5, 0604, &e) == 0);
  CHECK(galley_fs_stat(at("s"), &info, &e) == 0);
  CHECK(info.type == GALLEY_FS_FILE && info.size == 5 && info.mode == 0604);
  CHECK(info.uid == getuid() && info.mtime > 1600000000);
  CHECK(galley_fs_stat(root, &info, &e) == 0 && info.type == GALLEY_FS_DIRECTORY);
  CHECK(symlink("s", at("s-link")) == 0);
  CHECK(galley_fs_stat(at("s-link"), &info, &e) == 0 && info.type == GALLEY_FS_LINK);
  CHECK(galley_fs_stat("/dev/null", &info, &e) == 0 && info.type == GALLEY_FS_OTHER);
  CHECK(galley_fs_stat(at("nope"), &info, &e) == -1 && e.err == ENOENT);
  CHECK(galley_fs_exists(at("s")) && galley_fs_exists(at("s-link")) && galley_fs_exists(root));
  CHECK(!galley_fs_exists(at("nope")));
  CHECK(symlink("nope", at("dangling")) == 0);
  CHECK(!galley_fs_exists(at("dangling")));
}


static void fs_should_make_nested_directories(void) {
  galley_fs_error e;
  CHECK(galley_fs_mkdir_p(at("a/b//c/"), -1, &e) == 0);
  CHECK(galley_fs_exists(at("a/b/c")));
  CHECK(galley_fs_mkdir_p(at("a/b/c"), -1, &e) == 0);
  CHECK(galley_fs_mkdir_p(at("a/m"), 0750, &e) == 0);
  CHECK((mode_of(at("a/m")) & 0700) == 0700);
  put("a/file", "x");
  CHECK(galley_fs_mkdir_p(at("a/file/sub"), -1, &e) == -1);
  CHECK(galley_fs_mkdir_p(at("a/file"), -1, &e) == -1 && e.err == EEXIST);
  CHECK_STR(e.path, at("a/file"));
}


static void fs_should_remove_files_and_empty_directories_only(void) {
  galley_fs_error e;
  put("r1", "x");
  CHECK(galley_fs_remove(at("r1"), &e) == 0 && !galley_fs_exists(at("r1")));
  CHECK(galley_fs_remove(at("r1"), &e) == -1 && e.err == ENOENT);
  CHECK(galley_fs_mkdir_p(at("r2/sub"), -1, &e) == 0);
  CHECK(galley_fs_remove(at("r2"), &e) == -1 && e.err == ENOTEMPTY);
  CHECK(galley_fs_remove(at("r2/sub"), &e) == 0);
  CHECK(galley_fs_remove(at("r2"), &e) == 0 && !galley_fs_exists(at("r2")));
}


static void fs_should_remove_a_tree_without_following_symlinks_out_of_it(void) {
  galley_fs_error e;
  CHECK(galley_fs_mkdir_p(at("outside/inner"), -1, &e) == 0);
  put("outside/inner/precious", "keep me");
  CHECK(galley_fs_mkdir_p(at("tree/d1/d2"), -1, &e) == 0);
  put("tree/f", "1");
  put("tree/d1/d2/f", "2");
  CHECK(symlink(at("outside"), at("tree/link-to-outside")) == 0);
  CHECK(symlink(at("outside/inner"), at("tree/d1/link2")) == 0);
  CHECK(chmod(at("tree/d1/d2"), 0500) == 0); /* read-only directories are emptied too */
  CHECK(galley_fs_remove_tree(at("tree"), &e) == 0);
  CHECK(!galley_fs_exists(at("tree")));
  CHECK_STR(get("outside/inner/precious"), "keep me");
  CHECK(galley_fs_remove_tree(at("tree"), &e) == -1 && e.err == ENOENT);
  /* A symlink given directly is removed itself. */
  CHECK(symlink(at("outside"), at("top-link")) == 0);
  CHECK(galley_fs_remove_tree(at("top-link"), &e) == 0);
  CHECK_STR(get("outside/inner/precious"), "keep me");
}


static void fs_should_list_names_sorted(void) {
  galley_fs_error e;
  CHECK(galley_fs_mkdir_p(at("l"), -1, &e) == 0);
  put("l/b", "");
  put("l/a", "");
  put("l/C", "");
  put("l/.hidden", "");
  CHECK(galley_fs_mkdir_p(at("l/dir"), -1, &e) == 0);
  char **names;
  size_t n;
  CHECK(galley_fs_list(at("l"), &names, &n, &e) == 0);
  CHECK(n == 5);
  if (n == 5) {
    CHECK_STR(names[0], ".hidden");
    CHECK_STR(names[1], "C");
    CHECK_STR(names[2], "a");
    CHECK_STR(names[3], "b");
    CHECK_STR(names[4], "dir");
    CHECK(names[5] == NULL);
  }
  galley_fs_list_free(names);
  CHECK(galley_fs_list(at("l/a"), &names, &n, &e) == -1 && e.err == ENOTDIR);
}


static void fs_should_make_fresh_temporary_directories(void) {
  char a[PATH_MAX], b[PATH_MAX];
  galley_fs_error e;
  CHECK(galley_fs_mkdtemp(at("tmp-"), a, sizeof a, &e) == 0);
  CHECK(galley_fs_mkdtemp(at("tmp-"), b, sizeof b, &e) == 0);
  CHECK(strcmp(a, b) != 0 && strncmp(a, at("tmp-"), strlen(at("tmp-"))) == 0);
  CHECK(mode_of(a) == 0700);
  CHECK(galley_fs_mkdtemp(at("no/such/tmp-"), a, sizeof a, &e) == -1 && e.err == ENOENT);
}


static void fs_should_copy_a_tree_with_modes_links_and_times(void) {
  galley_fs_error e;
  CHECK(galley_fs_mkdir_p(at("src/sub/deeper"), -1, &e) == 0);
  CHECK(galley_fs_write(at("src/run.sh"), "#!/bin/sh\n", 10, 0755, &e) == 0);
  CHECK(galley_fs_write(at("src/sub/secret"), "s", 1, 0600, &e) == 0);
  put("src/sub/deeper/x", "deep");
  CHECK(symlink("sub/secret", at("src/link")) == 0);
  CHECK(chmod(at("src/sub"), 0750) == 0);
  CHECK(chmod(at("src/sub/deeper"), 0500) == 0);
  struct timespec old[2] = {{1000000000, 0}, {1000000000, 0}};
  CHECK(utimensat(AT_FDCWD, at("src/sub/deeper/x"), old, 0) == 0);

  CHECK(galley_fs_copy_tree(at("src"), at("dst"), &e) == 0);
  CHECK_STR(get("dst/sub/deeper/x"), "deep");
  CHECK(mode_of(at("dst/run.sh")) == 0755);
  CHECK(mode_of(at("dst/sub/secret")) == 0600);
  CHECK(mode_of(at("dst/sub")) == 0750);
  CHECK(mode_of(at("dst/sub/deeper")) == 0500);
  galley_fs_info info;
  CHECK(galley_fs_stat(at("dst/sub/deeper/x"), &info, &e) == 0 && info.mtime == 1000000000);
  CHECK(galley_fs_stat(at("dst/link"), &info, &e) == 0 && info.type == GALLEY_FS_LINK);
  char target[64] = "";
  CHECK(readlink(at("dst/link"), target, sizeof target - 1) > 0);
  CHECK_STR(target, "sub/secret");

  CHECK(galley_fs_copy_tree(at("src"), at("dst"), &e) == -1 && e.err == EEXIST);
  CHECK(galley_fs_copy_tree(at("nothing"), at("dst2"), &e) == -1 && e.err == ENOENT);
  CHECK(galley_fs_copy_tree(at("src/run.sh"), at("single"), &e) == 0);
  CHECK(mode_of(at("single")) == 0755);
  /* Copying a tree into itself stops at the copy. */
  CHECK(galley_fs_copy_tree(at("src"), at("src/sub/self"), &e) == 0);
  CHECK_STR(get("src/sub/self/sub/deeper/x"), "deep");
  CHECK(!galley_fs_exists(at("src/sub/self/sub/self")));
  CHECK(chmod(at("src/sub/deeper"), 0700) == 0);
}


static void fs_should_resolve_real_paths(void) {
  char out[PATH_MAX], expect[PATH_MAX];
  galley_fs_error e;
  CHECK(realpath(root, expect) != NULL);
  CHECK(galley_fs_realpath(at("s-link/../."), out, &e) == -1); /* s-link is a file link */
  CHECK(galley_fs_realpath(at("a/b/../b/c/.."), out, &e) == 0);
  strcat(expect, "/a/b");
  CHECK_STR(out, expect);
  CHECK(galley_fs_realpath(at("missing"), out, &e) == -1 && e.err == ENOENT);
}


static void fs_should_read_in_bounded_pieces(void) {
  galley_fs_error e;
  put("pieces", "abcdefghij");
  int fd = galley_fs_open_read(at("pieces"), &e);
  CHECK(fd >= 0);
  char buf[4];
  CHECK(galley_fs_read_full(fd, buf, 4) == 4 && memcmp(buf, "abcd", 4) == 0);
  CHECK(galley_fs_read_full(fd, buf, 4) == 4 && memcmp(buf, "efgh", 4) == 0);
  CHECK(galley_fs_read_full(fd, buf, 4) == 2 && memcmp(buf, "ij", 2) == 0);
  CHECK(galley_fs_read_full(fd, buf, 4) == 0);
  close(fd);
  CHECK(galley_fs_open_read(at("missing"), &e) == -1 && e.err == ENOENT);
}


int main(void) {
  galley_fs_error e;
  if (galley_fs_mkdtemp("galley-test-fs-", root, sizeof root, &e) != 0) return 1;
  RUN(fs_should_write_and_read_binary_data);
  RUN(fs_should_read_files_that_report_no_size);
  RUN(fs_should_report_errno_and_path_on_failure);
  RUN(fs_should_apply_an_explicit_mode_and_keep_an_existing_one);
  RUN(fs_should_replace_a_file_atomically);
  RUN(fs_should_leave_the_target_and_no_temp_file_when_atomic_write_fails);
  RUN(fs_should_stat_files_directories_and_links);
  RUN(fs_should_make_nested_directories);
  RUN(fs_should_remove_files_and_empty_directories_only);
  RUN(fs_should_remove_a_tree_without_following_symlinks_out_of_it);
  RUN(fs_should_list_names_sorted);
  RUN(fs_should_make_fresh_temporary_directories);
  RUN(fs_should_copy_a_tree_with_modes_links_and_times);
  RUN(fs_should_resolve_real_paths);
  RUN(fs_should_read_in_bounded_pieces);
  CHECK(galley_fs_remove_tree(root, &e) == 0);
  return CHECK_DONE();
}
