/* galley.core.runtime: facts about this process (version, module source, embedded files),
 * the interrupt flag, clocks and terminals. */
#include <errno.h>
#include <malloc.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "dyn_curl.h"
#include <sodium.h>
#include "await.h"
#include "bind.h"
#include "embedded.h"
#include "loader.h"
#include "proc.h"
#include "sig.h"


/* runtime.versions() -> {galley=, lua=, curl=, sodium=, source=} */
static int l_runtime_versions(lua_State *L) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, GALLEY_VERSION);
  lua_setfield(L, -2, "galley");
  lua_pushstring(L, LUA_RELEASE);
  lua_setfield(L, -2, "lua");
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl");
  lua_pushstring(L, sodium_version_string());
  lua_setfield(L, -2, "sodium");
  lua_pushstring(L, galley_loader_mode());
  lua_setfield(L, -2, "source");
  return 1;
}


/* runtime.resource(path) -> string | nil   (an embedded file such as "recipes/gc.lua") */
static int l_runtime_resource(lua_State *L) {
  size_t len;
  const char *data = galley_loader_resource(luaL_checkstring(L, 1), &len);
  if (!data) return 0;
  lua_pushlstring(L, data, len);
  return 1;
}


/* runtime.resources() -> {path, ...}   (every embedded file) */
static int l_runtime_resources(lua_State *L) {
  lua_newtable(L);
  lua_Integer n = 0;
  for (const struct galley_embedded *e = galley_embedded; e->path; e++) {
    lua_pushstring(L, e->path);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}


/* runtime.pending_signal() -> integer (0 when none) */
static int l_runtime_pending_signal(lua_State *L) {
  lua_pushinteger(L, galley_sig_pending());
  return 1;
}


/* runtime.clear_signal() */
static int l_runtime_clear_signal(lua_State *L) {
  galley_sig_clear();
  return 0;
}


/* runtime.defer_signals(on)   while on, Ctrl-C is counted, not acted on, until the
 * runtime.SIGNAL_ABORT_AT-th one, which becomes pending (an abort); one more exits at once */
static int l_runtime_defer_signals(lua_State *L) {
  galley_sig_defer(lua_toboolean(L, 1));
  return 0;
}


/* runtime.deferred_signals() -> integer   signals counted since defer_signals(true) */
static int l_runtime_deferred_signals(lua_State *L) {
  lua_pushinteger(L, galley_sig_deferred_count());
  return 1;
}


/* runtime.now_ms() -> integer (monotonic) */
static int l_runtime_now_ms(lua_State *L) {
  lua_pushinteger(L, galley_now_ms());
  return 1;
}


/* runtime.trim_memory(): a full garbage collection, then the C heap's free pages go back to the
 * system (malloc_trim). Before a large allocation whose peak matters: the chunks that were in
 * flight (megabytes each) are garbage by then, but glibc keeps their pages. */
static int l_runtime_trim_memory(lua_State *L) {
  lua_gc(L, LUA_GCCOLLECT);
  malloc_trim(0);
  return 0;
}


/* runtime.isatty(fd) -> boolean */
static int l_runtime_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}


/* runtime.getpid() -> integer */
static int l_runtime_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}


/* runtime.kill(pid, signal) -> true | nil, errno_name   (signal: a name galley.core.proc's kill
 * knows, "TERM" or "SIGTERM", or a number; pid > 0 only: never a process group or every process) */
static int l_runtime_kill(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0 && pid <= 0x7fffffff, 1, "pid must be a positive process id");
  int sig;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0 && n < 65, 2, "signal number out of range");
    sig = (int)n;
  } else {
    sig = galley_proc_signal_number(luaL_checkstring(L, 2));
    luaL_argcheck(L, sig != 0, 2, "unknown signal name");
  }
  if (kill((pid_t)pid, sig) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, errno == ESRCH ? "ESRCH" : errno == EPERM ? "EPERM" : strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* runtime.getuid() -> uid, euid */
static int l_runtime_getuid(lua_State *L) {
  lua_pushinteger(L, getuid());
  lua_pushinteger(L, geteuid());
  return 2;
}


/* runtime.home() -> path | nil, err(RUNTIME_NO_HOME)
 * The home directory of the real user id in the password database (never $HOME). */
static int l_runtime_home(lua_State *L) {
  char stackbuf[4096];
  struct passwd pw, *found = NULL;
  int rc = getpwuid_r(getuid(), &pw, stackbuf, sizeof stackbuf, &found);
  char *heap = NULL;
  /* A long entry (many groups in NSS) does not fit: retry with a heap buffer. */
  for (size_t cap = 16384; rc == ERANGE && cap <= (1u << 20); cap *= 4) {
    free(heap);
    heap = malloc(cap);
    if (!heap) break;
    rc = getpwuid_r(getuid(), &pw, heap, cap, &found);
  }
  if (rc != 0 || !found || !pw.pw_dir || pw.pw_dir[0] != '/') {
    free(heap);
    return galley_fail(L, "RUNTIME_NO_HOME", "user id %d has no absolute home directory in the password database%s%s",
                       (int)getuid(), rc ? ": " : "", rc ? strerror(rc) : "");
  }
  /* Copy before anything that can raise: heap must be freed first. */
  char home[4096];
  snprintf(home, sizeof home, "%s", pw.pw_dir);
  free(heap);
  lua_pushstring(L, home);
  return 1;
}


/* runtime.executable() -> path | nil, err   absolute path of the running galley binary */
static int l_runtime_executable(lua_State *L) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return galley_fail(L, "RUNTIME_EXE", "cannot read /proc/self/exe");
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}


/* runtime.options() -> table   (global command-line options: verbose, quiet, json, color) */
static int l_runtime_options(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, "galley.options") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "galley.options");
  }
  return 1;
}


/* runtime.error_metatable() -> the metatable shared by every galley error table */
static int l_runtime_error_metatable(lua_State *L) {
  galley_error_metatable(L);
  return 1;
}


static const luaL_Reg runtime_funcs[] = {
  { "versions",          l_runtime_versions          },
  { "resource",          l_runtime_resource          },
  { "resources",         l_runtime_resources         },
  { "pending_signal",    l_runtime_pending_signal    },
  { "clear_signal",      l_runtime_clear_signal      },
  { "defer_signals",     l_runtime_defer_signals     },
  { "deferred_signals",  l_runtime_deferred_signals  },
  { "now_ms",            l_runtime_now_ms            },
  { "sleep_ms",          galley_loop_sleep_lua       },
  { "isatty",            l_runtime_isatty            },
  { "trim_memory",       l_runtime_trim_memory       },
  { "getpid",            l_runtime_getpid            },
  { "kill",              l_runtime_kill              },
  { "getuid",            l_runtime_getuid            },
  { "home",              l_runtime_home              },
  { "executable",        l_runtime_executable        },
  { "options",           l_runtime_options           },
  { "error_metatable",   l_runtime_error_metatable   },
  { NULL,                NULL                        }
};

int luaopen_galley_core_runtime(lua_State *L) {
  luaL_newlib(L, runtime_funcs);
  lua_pushinteger(L, GALLEY_SIG_ABORT_AT);
  lua_setfield(L, -2, "SIGNAL_ABORT_AT");
  return 1;
}
