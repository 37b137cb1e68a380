/* galley: the binary. Parses global options, sets up one Lua state exactly the same way for
 * every mode, then runs `-e CODE`, a plain Lua script (lua-compatible, so busted can use galley
 * as its interpreter), or hands a subcommand to lua/galley/cli.lua. */
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sodium.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "await.h"
#include "bind.h"
#include "loader.h"
#include "loop.h"
#include "sig.h"
#include "enter.h"
#include "ssh_gateway.h"
#include "stage.h"

#define EXIT_USAGE 2

static lua_State *globalL;


/* Count hook set from the signal handler: raises {code="INTERRUPTED", signal=N} in Lua. */
static void lstop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  int sig = galley_sig_pending();
  if (!sig) return; /* handled (cleared) in the meantime */
  galley_push_error(L, "INTERRUPTED", "interrupted by %s", sig == SIGINT ? "Ctrl-C (SIGINT)" : "SIGTERM");
  galley_error_set_integer(L, "signal", sig);
  lua_error(L);
}


/* Signal handler hook (async-signal-safe: lua_sethook may be called from a signal handler).
 * The interrupt is raised in the Lua code actually running: the task coroutine the scheduler
 * resumed, else the main thread unless it is inside the scheduler, which checks signals itself
 * (lua/galley/task.lua). The loop is woken so that a blocking turn notices at once. */
static void on_signal(int sig) {
  (void)sig;
  int mask = LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT;
  lua_State *co = galley_running_thread;
  if (co) lua_sethook(co, lstop, mask, 1);
  else if (globalL && !galley_scheduling) lua_sethook(globalL, lstop, mask, 1);
  galley_loop_wake();
}


/* Message handler: error tables print through __tostring; a traceback follows. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
    else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}


/* The text of an error value (error tables through their __tostring). */
static int describe_error(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}


/* Calls the function below `narg` arguments; on error prints "galley: <msg>" and returns it. */
static int docall(lua_State *L, int narg, int nres) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, narg, nres, base);
  lua_remove(L, base);
  if (status != LUA_OK) {
    fprintf(stderr, "galley: %s\n", lua_tostring(L, -1));
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}


static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "galley: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'galley help' for usage.\n");
  return EXIT_USAGE;
}


/* arg table as lua.c builds it: arg[0] = script, negative indices for what came before. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}


/* Exit code of a failure: 128 + the signal when Ctrl-C/SIGTERM is pending (it may land before
 * galley's own handling is loaded), else 1. */
static int failure_code(void) {
  int sig = galley_sig_pending();
  return sig ? 128 + sig : 1;
}


/* Puts the script's own directory first on package.path, so a script split into files can
 * require its neighbours (`require("helper")` finds helper.lua beside it). galley's own modules
 * are preloaded, so nothing there can shadow them. */
static void prepend_script_dir(lua_State *L, const char *fname) {
  const char *slash = strrchr(fname, '/');
  int dirlen = slash ? (int)(slash - fname) : 1;
  const char *dir = slash ? fname : ".";
  if (slash && dirlen == 0) dirlen = 1; /* "/x.lua": the root */
  lua_getglobal(L, "package");                                        /* [package] */
  lua_pushlstring(L, dir, (size_t)dirlen);                            /* [package, dir] */
  const char *d = lua_tostring(L, -1);
  lua_getfield(L, -2, "path");                                        /* [package, dir, path] */
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", d, d, lua_tostring(L, -1));
  lua_setfield(L, -4, "path");
  lua_pop(L, 3);                                                      /* [] */
}


/* Runs a plain Lua script file (or "-" for stdin) with _G as its environment. */
static int run_script(lua_State *L, char **argv, int argc, int script) {
  const char *fname = strcmp(argv[script], "-") == 0 ? NULL : argv[script];
  create_arg_table(L, argv, argc, script);
  if (fname) prepend_script_dir(L, fname);
  int status = luaL_loadfile(L, fname);
  if (status != LUA_OK) {
    fprintf(stderr, "galley: %s\n", lua_tostring(L, -1));
    return EXIT_USAGE;
  }
  int n = argc - script - 1;
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = script + 1; i < argc; i++) lua_pushstring(L, argv[i]);
  return docall(L, n, 0) == LUA_OK ? 0 : failure_code();
}


/* Names what a `-e CODE` or a plain script boots (runtime.options().script): galley.run tags and
 * tracks its instances and snapshots like a run's (lua/galley/run.lua). */
static void set_script_name(lua_State *L, const char *name) {
  lua_getglobal(L, "require");
  lua_pushstring(L, "galley.core.runtime");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "options");
  lua_call(L, 0, 1);                                                  /* [runtime, options] */
  lua_pushstring(L, name);
  lua_setfield(L, -2, "script");
  lua_pop(L, 2);
}


/* After `-e CODE` or a script: when it booted anything (galley.run is loaded), the exit report
 * names what is still live with the command that stops it (galley.runner.finish_script).
 * Returns the exit code, 1 when the report itself failed. */
static int finish_script(lua_State *L, int code) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  int loaded = lua_getfield(L, -1, "galley.run") == LUA_TTABLE;       /* [package, loaded, run] */
  lua_pop(L, 3);
  if (!loaded) return code;
  lua_getglobal(L, "require");
  lua_pushstring(L, "galley.runner");
  if (docall(L, 1, 1) != LUA_OK) return code ? code : 1;
  lua_getfield(L, -1, "finish_script");                               /* [runner, finish_script] */
  lua_pushinteger(L, code);
  if (docall(L, 1, 1) != LUA_OK) {
    lua_pop(L, 1);
    return code ? code : 1;
  }
  if (lua_isinteger(L, -1)) code = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return code;
}


/* Hands argv[first..] to require("galley.cli").main(args) and returns its exit code. */
static int run_cli(lua_State *L, char **argv, int argc, int first) {
  lua_getglobal(L, "require");
  lua_pushstring(L, "galley.cli");
  if (docall(L, 1, 1) != LUA_OK) return failure_code();
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc - first, 0);
  for (int i = first; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - first + 1);
  }
  if (docall(L, 1, 1) != LUA_OK) return failure_code();
  int code = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  lua_pop(L, 2);
  return code;
}


/* A first argument that names a file (has a '/', ends in .lua, or is "-") is a plain script,
 * as with `lua FILE`; anything else is a subcommand for galley.cli. */
static int is_script(const char *a) {
  size_t n = strlen(a);
  return strcmp(a, "-") == 0 || strchr(a, '/') != NULL || (n > 4 && strcmp(a + n - 4, ".lua") == 0);
}


static void set_option(lua_State *L, const char *key, int value) {
  lua_pushinteger(L, value);
  lua_setfield(L, -2, key);
}


static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = (char **)lua_touserdata(L, 2);
  const char *lua_dir = getenv("GALLEY_LUA_DIR");
  const char *lua_dir_from = "GALLEY_LUA_DIR"; /* what to name when it is unusable */
  const char *code = NULL;
  int verbose = 0, quiet = 0, json = 0, color = -1, interactive = 0;
  int i = 1;
  if (lua_dir && !*lua_dir) lua_dir = NULL;

  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--lua-dir") == 0) {
      if (i + 1 >= argc) return lua_pushinteger(L, usage_error("'%s' needs a directory", a)), 1;
      lua_dir = argv[++i];
      lua_dir_from = "--lua-dir";
    } else if (strncmp(a, "--lua-dir=", 10) == 0) {
      lua_dir = a + 10;
      lua_dir_from = "--lua-dir";
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
      verbose++;
    } else if (a[0] == '-' && a[1] == 'v' && strspn(a + 1, "v") == strlen(a + 1)) {
      verbose += (int)strlen(a + 1); /* -vv: trace */
    } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
      quiet = 1;
    } else if (strcmp(a, "--json") == 0) {
      json = 1;
    } else if (strcmp(a, "--no-color") == 0) {
      color = 0;
    } else if (strcmp(a, "--color") == 0) {
      color = 1;
    } else if (strcmp(a, "-i") == 0) {
      interactive = 1;
    } else if (strcmp(a, "-e") == 0) {
      if (i + 1 >= argc) return lua_pushinteger(L, usage_error("'%s' needs code to run", a)), 1;
      code = argv[++i];
    } else if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (a[0] == '-' && a[1] != '\0' && strcmp(a, "--version") != 0 && strcmp(a, "--help") != 0 &&
               strcmp(a, "-h") != 0) {
      return lua_pushinteger(L, usage_error("unknown option '%s'", a)), 1;
    } else {
      break;
    }
  }
  struct stat st;
  if (lua_dir && (access(lua_dir, R_OK | X_OK) != 0 || stat(lua_dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
    fprintf(stderr, "galley: %s '%s' is not a readable directory\n  hint: %s\n", lua_dir_from, lua_dir,
            strcmp(lua_dir_from, "GALLEY_LUA_DIR") == 0
              ? "unset GALLEY_LUA_DIR (embedded modules) or point it at galley's lua/ directory"
              : "give galley's lua/ directory, or leave --lua-dir out (embedded modules)");
    lua_pushinteger(L, EXIT_USAGE);
    return 1;
  }

  luaL_openlibs(L);
  /* math.random from the system's CSPRNG: Lua's own seed mixes the time in seconds with
   * addresses, which repeat under a sanitizer's allocator, so two galley processes started in
   * the same second drew the same numbers (and two emulators the same loopback addresses). */
  lua_getglobal(L, "math");
  lua_getfield(L, -1, "randomseed");
  for (int i = 0; i < 2; i++) {
    uint64_t seed = (uint64_t)randombytes_random() << 32 | randombytes_random();
    lua_pushinteger(L, (lua_Integer)(seed >> 1)); /* non-negative: no signed overflow */
  }
  lua_call(L, 2, 0);
  lua_pop(L, 1);
  galley_loader_init(L, lua_dir);
  lua_getglobal(L, "require");  /* the registry options table lives in galley.core.runtime */
  lua_pushstring(L, "galley.core.runtime");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "options");
  lua_call(L, 0, 1);                                                  /* [runtime, options] */
  set_option(L, "verbose", verbose);
  set_option(L, "quiet", quiet);
  set_option(L, "json", json);
  set_option(L, "color", color < 0 ? (isatty(2) && !getenv("NO_COLOR")) : color && !getenv("NO_COLOR"));
  set_option(L, "interactive", interactive);
  lua_pop(L, 2);

  int status = 0;
  if (code) {
    create_arg_table(L, argv, argc, 0);
    if (luaL_loadbuffer(L, code, strlen(code), "=(command line)") != LUA_OK) {
      fprintf(stderr, "galley: %s\n", lua_tostring(L, -1));
      lua_pushinteger(L, EXIT_USAGE);
      return 1;
    }
    set_script_name(L, "-e");
    status = docall(L, 0, 0) == LUA_OK ? 0 : failure_code();
    status = finish_script(L, status);
    if (status == 0 && interactive) {
      char *repl[] = {"repl"};
      status = run_cli(L, repl, 1, 0);
    }
  } else if (i < argc && is_script(argv[i])) {
    set_script_name(L, argv[i]);
    status = finish_script(L, run_script(L, argv, argc, i));
    if (status == 0 && interactive) {
      char *repl[] = {"repl"};
      status = run_cli(L, repl, 1, 0);
    }
  } else {
    status = run_cli(L, argv, argc, i);
  }
  lua_pushinteger(L, status);
  return 1;
}


int main(int argc, char **argv) {
  /* The sandbox's helpers (src/core/stage.h, enter.h) run before anything else is set up, and
   * end with _exit: nothing of galley's is left to flush, and exit handlers (a sanitizer's leak
   * check, which stops the world with ptrace) must not run in a process that changed its
   * namespaces or ids. */
  if (argc > 1 && strcmp(argv[1], "__stage") == 0) _exit(galley_stage_main(argc - 1, argv + 1));
  if (argc > 1 && strcmp(argv[1], "__enter") == 0) _exit(galley_enter_main(argc - 1, argv + 1));
  if (argc > 1 && strcmp(argv[1], "__userns-off") == 0) _exit(galley_userns_off_main(argc - 1, argv + 1));
  /* The emulator's SSH gateway (src/core/ssh_gateway.h): forks per connection, loads libssh. */
  if (argc > 1 && strcmp(argv[1], "__ssh-gateway") == 0) _exit(galley_ssh_gateway_main(argc - 1, argv + 1));
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
  /* File transfers allocate megabytes a request (the content, its base64, the argv pieces, the
   * JSON body): glibc's default gives each such block a fresh mmap and unmaps it when freed, and
   * the page faults of touching it again cost ~10 ms per MiB written on a small VM (bench/files:
   * 1 MiB up 46 -> 55 % of raw). Blocks under 32 MiB come from the heap instead, and up to
   * 64 MiB of freed heap stays mapped; larger blocks (a big string-mode content) still come and
   * go as mappings, so the peak RSS is unchanged. */
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
#endif
  /* libcurl and libedit are loaded on first use (src/core/dyn_*.c). */
  if (sodium_init() < 0) {
    fprintf(stderr, "galley: cannot initialise libsodium\n");
    return 1;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "galley: cannot create Lua state: not enough memory\n");
    return 1;
  }
  globalL = L;
  galley_sig_install(on_signal);
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int code = status == LUA_OK ? (int)lua_tointeger(L, -1) : 1;
  if (status != LUA_OK) {
    /* An error outside docall: a Ctrl-C or SIGTERM that landed while galley itself was being
     * set up raises an error table here (it printed "(null)" and exited 1). */
    lua_sethook(L, NULL, 0, 0);
    lua_pushcfunction(L, describe_error);
    lua_insert(L, -2);
    const char *msg = lua_pcall(L, 1, 1, 0) == LUA_OK ? lua_tostring(L, -1) : NULL;
    fprintf(stderr, "galley: %s\n", msg ? msg : "(an error that cannot be shown)");
    code = failure_code();
  }
  globalL = NULL;
  lua_close(L);
  return code;
}
