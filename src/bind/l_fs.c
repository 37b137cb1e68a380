/* galley.core.fs: local files, binary-safe (src/core/fs.c does the work).
 * Ownership: whatever the core allocates (a file's contents, a directory listing) goes into a
 * "galley.fs.Scratch" userdata before anything that can raise runs, so its __gc frees it if
 * pushing the result fails; an open file for fs.chunks lives in a "galley.fs.Chunks" userdata
 * that is created closed and closes on EOF, error, close, __close or __gc. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bind.h"
#include "fs.h"

#define SCRATCH_MT "galley.fs.Scratch"
#define CHUNKS_MT "galley.fs.Chunks"
#define MAX_CHUNK (1 << 30)

typedef struct {
  void *ptr;                  /* owned; NULL when empty */
  void (*release)(void *);
} scratch;

typedef struct {
  int fd;                     /* -1 once closed */
  size_t n;                   /* bytes per piece */
} chunks;


static const char *code_for(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return "FS_NOT_FOUND";
    case EACCES:
    case EPERM:
    case EROFS:
      return "FS_PERMISSION";
    case EEXIST:
    case ENOTEMPTY:
      return "FS_EXISTS";
    default:
      return "FS_IO";
  }
}


/* Pushes the error table for e: {code, message, path, errno}. */
static void push_fs_error(lua_State *L, const galley_fs_error *e, const char *what) {
  galley_push_error(L, code_for(e->err), "%s %s: %s", what, e->path, strerror(e->err));
  galley_error_set_string(L, "path", e->path);
  galley_error_set_integer(L, "errno", e->err);
}


/* Returns nil, err for e. */
static int fs_fail(lua_State *L, const galley_fs_error *e, const char *what) {
  lua_pushnil(L);
  push_fs_error(L, e, what);
  return 2;
}


static int push_true(lua_State *L) {
  lua_pushboolean(L, 1);
  return 1;
}


/* A path argument: a string without NUL bytes. */
static const char *check_path(lua_State *L, int arg) {
  size_t len;
  const char *s = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, strlen(s) == len, arg, "path contains a NUL byte");
  return s;
}


/* A mode at stack index idx: an integer (384) or an octal string ("600", "0640"). */
static int check_mode(lua_State *L, int idx, int arg) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    size_t n = strlen(s);
    int ok = n >= 1 && n <= 5 && strspn(s, "01234567") == n;
    long v = ok ? strtol(s, NULL, 8) : -1;
    if (!ok || v > 07777) luaL_argerror(L, arg, "mode must be an octal string such as \"600\" or \"0640\"");
    return (int)v;
  }
  int isint = 0;
  lua_Integer v = lua_tointegerx(L, idx, &isint);
  if (!isint || v < 0 || v > 07777) luaL_argerror(L, arg, "mode must be an integer 0..4095 or an octal string");
  return (int)v;
}


/* The mode field of an optional options table at arg, or -1. */
static int opt_mode_field(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return -1;
  luaL_checktype(L, arg, LUA_TTABLE);
  int mode = -1;
  if (lua_getfield(L, arg, "mode") != LUA_TNIL) mode = check_mode(L, -1, arg);
  lua_pop(L, 1);
  return mode;
}


/* Pushes an empty scratch box. */
static scratch *new_scratch(lua_State *L) {
  scratch *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->ptr = NULL;
  s->release = free;
  luaL_setmetatable(L, SCRATCH_MT);
  return s;
}


static int scratch_gc(lua_State *L) {
  scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
  if (s->ptr) s->release(s->ptr);
  s->ptr = NULL;
  return 0;
}


static void list_release(void *p) { galley_fs_list_free(p); }


/* fs.read(path) -> string | nil, err */
static int l_fs_read(lua_State *L) {
  const char *path = check_path(L, 1);
  scratch *box = new_scratch(L);                                                 // [path, box]
  galley_fs_error e;
  char *data;
  size_t len;
  if (galley_fs_read(path, &data, &len, &e) != 0) return fs_fail(L, &e, "cannot read");
  box->ptr = data;                 /* owned by the box from here: a raise below cannot leak it */
  lua_pushlstring(L, data, len);                                                 // [path, box, s]
  free(data);
  box->ptr = NULL;
  return 1;
}


/* fs.write(path, data [, {mode=}]) -> true | nil, err */
static int l_fs_write(lua_State *L) {
  const char *path = check_path(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int mode = opt_mode_field(L, 3);
  galley_fs_error e;
  if (galley_fs_write(path, data, len, mode, &e) != 0) return fs_fail(L, &e, "cannot write");
  return push_true(L);
}


/* fs.write_atomic(path, data [, {mode=}]) -> true | nil, err   (temp file, fsync, rename) */
static int l_fs_write_atomic(lua_State *L) {
  const char *path = check_path(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int mode = opt_mode_field(L, 3);
  galley_fs_error e;
  if (galley_fs_write_atomic(path, data, len, mode, &e) != 0) return fs_fail(L, &e, "cannot write");
  return push_true(L);
}


/* fs.stat(path) -> {type, size, mode, mtime, mtime_ns, ctime_ns, ino, uid, gid} | nil, err
   (a symlink is "link"; *_ns: nanoseconds since the epoch) */
static int l_fs_stat(lua_State *L) {
  static const char *const types[] = {"file", "directory", "link", "other"};
  const char *path = check_path(L, 1);
  galley_fs_info info;
  galley_fs_error e;
  if (galley_fs_stat(path, &info, &e) != 0) return fs_fail(L, &e, "cannot stat");
  lua_createtable(L, 0, 9);
  lua_pushstring(L, types[info.type]);
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)info.size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, info.mode);
  lua_setfield(L, -2, "mode");
  lua_pushinteger(L, info.mtime);
  lua_setfield(L, -2, "mtime");
  lua_pushinteger(L, info.mtime_ns);
  lua_setfield(L, -2, "mtime_ns");
  lua_pushinteger(L, info.ctime_ns);
  lua_setfield(L, -2, "ctime_ns");
  lua_pushinteger(L, (lua_Integer)info.ino);
  lua_setfield(L, -2, "ino");
  lua_pushinteger(L, info.uid);
  lua_setfield(L, -2, "uid");
  lua_pushinteger(L, info.gid);
  lua_setfield(L, -2, "gid");
  return 1;
}


/* fs.exists(path) -> boolean   (follows symlinks) */
static int l_fs_exists(lua_State *L) {
  lua_pushboolean(L, galley_fs_exists(check_path(L, 1)));
  return 1;
}


/* fs.mkdir_p(path [, mode]) -> true | nil, err */
static int l_fs_mkdir_p(lua_State *L) {
  const char *path = check_path(L, 1);
  int mode = lua_isnoneornil(L, 2) ? -1 : check_mode(L, 2, 2);
  galley_fs_error e;
  if (galley_fs_mkdir_p(path, mode, &e) != 0) return fs_fail(L, &e, "cannot create directory");
  return push_true(L);
}


/* fs.mkdir(path, mode) -> true | nil, err   (one directory, exactly this mode: `mkdir -m`) */
static int l_fs_mkdir(lua_State *L) {
  const char *path = check_path(L, 1);
  int mode = check_mode(L, 2, 2);
  galley_fs_error e;
  if (galley_fs_mkdir(path, mode, &e) != 0) return fs_fail(L, &e, "cannot create directory");
  return push_true(L);
}


/* fs.mkfifo(path, mode) -> true | nil, err   (a named pipe, exactly this mode: `mkfifo -m`) */
static int l_fs_mkfifo(lua_State *L) {
  const char *path = check_path(L, 1);
  int mode = check_mode(L, 2, 2);
  galley_fs_error e;
  if (galley_fs_mkfifo(path, mode, &e) != 0) return fs_fail(L, &e, "cannot create named pipe");
  return push_true(L);
}


/* fs.chown(path, uid, gid) -> true | nil, err   (the path itself, never a symlink's target) */
static int l_fs_chown(lua_State *L) {
  const char *path = check_path(L, 1);
  lua_Integer uid = luaL_checkinteger(L, 2);
  lua_Integer gid = luaL_checkinteger(L, 3);
  luaL_argcheck(L, uid >= 0 && uid <= 0xfffffffe, 2, "uid out of range");
  luaL_argcheck(L, gid >= 0 && gid <= 0xfffffffe, 3, "gid out of range");
  galley_fs_error e;
  if (galley_fs_chown(path, (long)uid, (long)gid, &e) != 0) return fs_fail(L, &e, "cannot change the owner of");
  return push_true(L);
}


/* fs.remove(path) -> true | nil, err   (a file, a symlink or an empty directory) */
static int l_fs_remove(lua_State *L) {
  const char *path = check_path(L, 1);
  galley_fs_error e;
  if (galley_fs_remove(path, &e) != 0) return fs_fail(L, &e, "cannot remove");
  return push_true(L);
}


/* fs.remove_tree(path) -> true | nil, err   (never follows symlinks) */
static int l_fs_remove_tree(lua_State *L) {
  const char *path = check_path(L, 1);
  galley_fs_error e;
  if (galley_fs_remove_tree(path, &e) != 0) return fs_fail(L, &e, "cannot remove");
  return push_true(L);
}


/* fs.list(path) -> {name, ...} (sorted) | nil, err */
static int l_fs_list(lua_State *L) {
  const char *path = check_path(L, 1);
  scratch *box = new_scratch(L);                                                 // [path, box]
  char **names;
  size_t n;
  galley_fs_error e;
  if (galley_fs_list(path, &names, &n, &e) != 0) return fs_fail(L, &e, "cannot list");
  box->ptr = names;
  box->release = list_release;
  lua_createtable(L, (int)(n < 1000000 ? n : 0), 0);                            // [path, box, t]
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  galley_fs_list_free(names);
  box->ptr = NULL;
  return 1;
}


/* fs.mkdtemp([prefix = "galley-"]) -> path | nil, err   (a prefix without '/' goes in $TMPDIR) */
static int l_fs_mkdtemp(lua_State *L) {
  const char *prefix = lua_isnoneornil(L, 1) ? "galley-" : check_path(L, 1);
  char out[PATH_MAX];
  galley_fs_error e;
  if (galley_fs_mkdtemp(prefix, out, sizeof out, &e) != 0) return fs_fail(L, &e, "cannot create directory");
  lua_pushstring(L, out);
  return 1;
}


/* fs.copy_tree(src, dst) -> true | nil, err   (dst must not exist; modes and mtimes kept) */
static int l_fs_copy_tree(lua_State *L) {
  const char *src = check_path(L, 1);
  const char *dst = check_path(L, 2);
  galley_fs_error e;
  if (galley_fs_copy_tree(src, dst, &e) != 0) return fs_fail(L, &e, "cannot copy");
  return push_true(L);
}


/* fs.realpath(path) -> absolute path | nil, err */
static int l_fs_realpath(lua_State *L) {
  const char *path = check_path(L, 1);
  char out[PATH_MAX];
  galley_fs_error e;
  if (galley_fs_realpath(path, out, &e) != 0) return fs_fail(L, &e, "cannot resolve");
  lua_pushstring(L, out);
  return 1;
}


/* --- fs.chunks ------------------------------------------------------------------------------- */

static void chunks_close_fd(chunks *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}


/* Iterator (upvalue 1: the Chunks userdata, whose user value is the path)
 *   -> next piece of at most n bytes | nil at EOF; raises FS_IO on a read error */
static int l_chunks_next(lua_State *L) {
  chunks *c = luaL_checkudata(L, lua_upvalueindex(1), CHUNKS_MT);
  if (c->fd < 0) return 0;
  luaL_Buffer b;
  char *buf = luaL_buffinitsize(L, &b, c->n);     /* may raise: the fd stays owned by c */
  ssize_t got = galley_fs_read_full(c->fd, buf, c->n);
  if (got > 0) {
    luaL_pushresultsize(&b, (size_t)got);
    return 1;
  }
  int err = errno;
  chunks_close_fd(c);
  luaL_pushresultsize(&b, 0);
  lua_pop(L, 1);
  if (got == 0) return 0;
  galley_fs_error e;
  e.err = err;
  lua_getiuservalue(L, lua_upvalueindex(1), 1);
  snprintf(e.path, sizeof e.path, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  push_fs_error(L, &e, "cannot read");
  return lua_error(L);
}


/* fs.chunks(path, n) -> iterator, nil, nil, closer | nil, err
 * for piece in assert(fs.chunks(p, 65536)) do ... end   (memory bounded by n) */
static int l_fs_chunks(lua_State *L) {
  const char *path = check_path(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= MAX_CHUNK, 2, "piece size must be 1..2^30");
  chunks *c = lua_newuserdatauv(L, sizeof *c, 1);                               // [path, n, c]
  c->fd = -1;
  c->n = (size_t)n;
  luaL_setmetatable(L, CHUNKS_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);                     /* the path, for error messages */
  galley_fs_error e;
  c->fd = galley_fs_open_read(path, &e);
  if (c->fd < 0) return fs_fail(L, &e, "cannot open");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_chunks_next, 1);                                         // [path, n, c, iter]
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, -4);                                                          // [..., iter, nil, nil, c]
  return 4;
}


/* Chunks:close()   also __close and __gc; idempotent */
static int l_chunks_close(lua_State *L) {
  chunks_close_fd(luaL_checkudata(L, 1, CHUNKS_MT));
  return 0;
}


/* tostring(Chunks) -> "galley.fs.Chunks (open)" | "galley.fs.Chunks (closed)" */
static int l_chunks_tostring(lua_State *L) {
  chunks *c = luaL_checkudata(L, 1, CHUNKS_MT);
  lua_pushfstring(L, "%s (%s)", CHUNKS_MT, c->fd >= 0 ? "open" : "closed");
  return 1;
}


static const luaL_Reg chunks_meta[] = {
  { "close",       l_chunks_close    },
  { "__close",     l_chunks_close    },
  { "__gc",        l_chunks_close    },
  { "__tostring",  l_chunks_tostring },
  { NULL,          NULL              }
};

static const luaL_Reg fs_funcs[] = {
  { "read",         l_fs_read         },
  { "write",        l_fs_write        },
  { "write_atomic", l_fs_write_atomic },
  { "stat",         l_fs_stat         },
  { "exists",       l_fs_exists       },
  { "chunks",       l_fs_chunks       },
  { "mkdir_p",      l_fs_mkdir_p      },
  { "mkdir",        l_fs_mkdir        },
  { "chown",        l_fs_chown        },
  { "mkfifo",       l_fs_mkfifo       },
  { "remove",       l_fs_remove       },
  { "remove_tree",  l_fs_remove_tree  },
  { "list",         l_fs_list         },
  { "mkdtemp",      l_fs_mkdtemp      },
  { "copy_tree",    l_fs_copy_tree    },
  { "realpath",     l_fs_realpath     },
  { NULL,           NULL              }
};

int luaopen_galley_core_fs(lua_State *L) {
  luaL_newmetatable(L, SCRATCH_MT);                                              // [mt]
  lua_pushcfunction(L, scratch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, CHUNKS_MT);                                               // [mt]
  luaL_setfuncs(L, chunks_meta, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");                  /* c:close() from the metatable itself */
  lua_pop(L, 1);
  luaL_newlib(L, fs_funcs);
  return 1;
}
