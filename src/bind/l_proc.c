/* galley.core.proc: run local programs from an argv table (never a shell string).
 * The work happens in src/core/proc.c; this file turns option tables into a galley_proc_spec and
 * results into tables, and waits through galley_await (await.h): inside a galley.task the task
 * yields while other tasks run, elsewhere the loop runs until the process is done. Borrowed Lua
 * strings (argv, env, cwd) are only read while spawning; stdin bytes are copied. A started child
 * is always owned by a "galley.proc.Process" userdata, so an error raised while building the
 * result cannot leak it: close/__gc/__close kill the group and reap. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include "await.h"
#include "bind.h"
#include "loop.h"
#include "proc.h"
#include "sig.h"

#define PROCESS_MT "galley.proc.Process"
#define BUSY_MT "galley.proc.Busy"

typedef struct {
  galley_proc *p;   /* NULL once closed (and before the child exists) */
  int busy;         /* a task waits in read/wait (cleared by the Busy guard's __close) */
} lprocess;


/* Raises a misuse error about options field `field`. */
static int bad_option(lua_State *L, const char *field, const char *what) {
  return luaL_error(L, "bad field '%s' in options (%s)", field, what);
}


/* Returns the string at the top of the stack, converting a number; raises on other types or
 * embedded NULs (which C could not pass on). */
static const char *checked_cstring(lua_State *L, const char *field) {
  size_t len;
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER) bad_option(L, field, "string expected");
  const char *s = lua_tolstring(L, -1, &len);
  if (strlen(s) != len) bad_option(L, field, "string contains a NUL byte");
  return s;
}


/* Reads opts.argv into a NULL-terminated array kept in the anchor table at `anchor`. */
static const char *const *read_argv(lua_State *L, int opts, int anchor) {
  if (lua_getfield(L, opts, "argv") != LUA_TTABLE) bad_option(L, "argv", "table of strings expected");
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  if (n < 1) bad_option(L, "argv", "at least the program name expected");
  if (n > INT_MAX / 2) bad_option(L, "argv", "too many entries");
  const char **argv = lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *argv, 0);   // [argv, arr]
  lua_setfield(L, anchor, "argv");
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);                                                       // [argv, s]
    argv[i - 1] = checked_cstring(L, "argv");
    lua_rawseti(L, anchor, i);              /* the anchor keeps the (converted) string alive */
  }
  argv[n] = NULL;
  lua_pop(L, 1);
  return argv;
}


/* Reads opts.env ({KEY = value}) into a NULL-terminated "KEY=value" array, or NULL when absent. */
static const char *const *read_env(lua_State *L, int opts, int anchor) {
  int t = lua_getfield(L, opts, "env");                                          // [env]
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (t != LUA_TTABLE) bad_option(L, "env", "table expected");
  size_t n = 0;
  for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) n++;
  const char **env = lua_newuserdatauv(L, (n + 1) * sizeof *env, 0);            // [env, arr]
  lua_setfield(L, anchor, "env");
  size_t k = 0;
  for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {                         // [env, key, value]
    size_t klen;
    if (lua_type(L, -2) != LUA_TSTRING) bad_option(L, "env", "string keys expected");
    const char *key = lua_tolstring(L, -2, &klen);
    if (klen == 0 || strlen(key) != klen || strchr(key, '=')) bad_option(L, "env", "keys must be names without '='");
    lua_pushvalue(L, -1);                                                        // [env, key, value, value]
    const char *value = checked_cstring(L, "env");
    env[k] = lua_pushfstring(L, "%s=%s", key, value);                            // [..., value, "K=V"]
    lua_rawsetp(L, anchor, env + k);        /* anchored under a unique light-userdata key */
    lua_pop(L, 1);
    k++;
  }
  env[k] = NULL;
  lua_pop(L, 1);
  return env;
}


/* Fills spec from the options table at `opts`; pushes one anchor table that owns every string
 * spec points to. `spawn` selects how stdin is read ("pipe" | "null" | bytes, versus bytes). */
static void read_spec(lua_State *L, int opts, galley_proc_spec *spec, int spawn) {
  memset(spec, 0, sizeof *spec);
  luaL_checktype(L, opts, LUA_TTABLE);
  lua_newtable(L);                                                               // [anchor]
  int anchor = lua_gettop(L);
  spec->argv = read_argv(L, opts, anchor);
  spec->env = read_env(L, opts, anchor);

  const char *mode = galley_opt_string(L, opts, "env_mode", "extend", NULL);
  if (strcmp(mode, "replace") == 0) spec->env_replace = 1;
  else if (strcmp(mode, "extend") != 0) bad_option(L, "env_mode", "\"extend\" or \"replace\" expected");

  if (lua_getfield(L, opts, "cwd") != LUA_TNIL) {
    spec->cwd = checked_cstring(L, "cwd");
    lua_setfield(L, anchor, "cwd");
  } else {
    lua_pop(L, 1);
  }

  if (lua_getfield(L, opts, "cgroup") != LUA_TNIL) {
    spec->cgroup = checked_cstring(L, "cgroup");
    lua_setfield(L, anchor, "cgroup");
  } else {
    lua_pop(L, 1);
  }

  spec->stdin_mode = GALLEY_PROC_STDIN_NULL;
  int t = lua_getfield(L, opts, "stdin");
  if (t != LUA_TNIL && t != LUA_TSTRING) bad_option(L, "stdin", spawn ? "\"pipe\", \"null\" or bytes expected" : "bytes expected");
  if (t == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (spawn && strcmp(s, "pipe") == 0) {
      spec->stdin_mode = GALLEY_PROC_STDIN_PIPE;
    } else if (!(spawn && strcmp(s, "null") == 0)) {
      spec->stdin_mode = GALLEY_PROC_STDIN_DATA;
      spec->stdin_data = s;
      spec->stdin_len = len;
    }
  }
  lua_setfield(L, anchor, "stdin");
}


/* A non-negative integer option, or def when absent. */
static lua_Integer opt_count(lua_State *L, int opts, const char *field, lua_Integer def) {
  lua_Integer v = galley_opt_integer(L, opts, field, def);
  if (v < 0) bad_option(L, field, "must not be negative");
  return v;
}


/* Pushes a new, closed process userdata. */
static lprocess *new_process(lua_State *L) {
  lprocess *lp = lua_newuserdatauv(L, sizeof *lp, 0);
  lp->p = NULL;
  lp->busy = 0;
  luaL_setmetatable(L, PROCESS_MT);
  return lp;
}


/* The loop a new process runs on. */
static uv_loop_t *spawn_loop(void) {
  return galley_loop();
}


static int spawn_failed(lua_State *L, const galley_proc_spec *spec, int rc, int err_no) {
  if (rc == GALLEY_PROC_ENOMEM) err_no = ENOMEM;
  if (spec->cwd)
    galley_fail(L, "PROC_SPAWN", "cannot run %s in %s: %s", spec->argv[0], spec->cwd, strerror(err_no));
  else
    galley_fail(L, "PROC_SPAWN", "cannot run %s: %s", spec->argv[0], strerror(err_no));
  galley_error_set_string(L, "argv0", spec->argv[0]);
  galley_error_set_string(L, "cwd", spec->cwd);
  galley_error_set_integer(L, "errno", err_no);
  return 2;
}


static int interrupted(lua_State *L) {
  int sig = galley_sig_pending();
  galley_fail(L, "INTERRUPTED", "interrupted by signal %d while waiting for a child process", sig);
  galley_error_set_integer(L, "signal", sig);
  return 2;
}


/* [..., err] -> [..., nil, err]: a wait cancelled (Ctrl-C/SIGTERM, t:cancel, a task timeout). */
static int cancelled(lua_State *L) {
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}




/* Pushes {exit_code, signal, stdout, stderr, timed_out, truncated, stdout_dropped,
 * stderr_dropped} from p. May raise (memory): p stays owned by its userdata. */
static void push_result(lua_State *L, galley_proc *p) {
  galley_proc_status st;
  galley_proc_get_status(p, &st);
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, st.exit_code);
  lua_setfield(L, -2, "exit_code");
  if (st.signal) {
    lua_pushinteger(L, st.signal);
    lua_setfield(L, -2, "signal");
  }
  int truncated = 0;
  static const char *const names[2][2] = {{"stdout", "stdout_dropped"}, {"stderr", "stderr_dropped"}};
  for (int s = 1; s <= 2; s++) {
    size_t len;
    uint64_t dropped;
    const char *data = galley_proc_output(p, s, &len, &dropped);
    lua_pushlstring(L, data, len);
    lua_setfield(L, -2, names[s - 1][0]);
    lua_pushinteger(L, (lua_Integer)dropped);
    lua_setfield(L, -2, names[s - 1][1]);
    truncated |= dropped > 0;
  }
  lua_pushboolean(L, st.timed_out);
  lua_setfield(L, -2, "timed_out");
  lua_pushboolean(L, truncated);
  lua_setfield(L, -2, "truncated");
}


static int run_k(lua_State *L, int status, lua_KContext ctx);


/* proc.run, until finished: [opts, anchor, proc(to-be-closed)] */
static int run_step(lua_State *L, lprocess *lp) {
  if (!galley_proc_finished(lp->p)) {
    uint64_t token = galley_loop_token();
    galley_proc_notify(lp->p, token);
    return galley_await(L, token, (lua_KContext)lp, run_k);
  }
  push_result(L, lp->p);
  galley_proc_close(lp->p);
  lp->p = NULL;
  return 1;
}


/* Continuation of proc.run: [opts, anchor, proc, ok, err?] */
static int run_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lprocess *lp = (lprocess *)ctx;
  if (!galley_await_ok(L)) {
    galley_proc_close(lp->p); /* SIGKILL to the group, reaped before we return */
    lp->p = NULL;
    return cancelled(L);
  }
  return run_step(L, lp);
}


/* proc.run{argv, cwd?, env?, env_mode?, stdin?, timeout_ms?, max_output?, kill_grace_ms?}
 *   -> {exit_code, signal?, stdout, stderr, timed_out, truncated, stdout_dropped, stderr_dropped}
 *    | nil, err(PROC_SPAWN | INTERRUPTED) */
static int l_proc_run(lua_State *L) {
  galley_proc_spec spec;
  lua_settop(L, 1);
  read_spec(L, 1, &spec, 0);                                                     // [opts, anchor]
  galley_proc_limits lim;
  int has_timeout = lua_getfield(L, 1, "timeout_ms") != LUA_TNIL;
  lua_pop(L, 1);
  lim.timeout_ms = has_timeout ? opt_count(L, 1, "timeout_ms", 0) : -1;
  lim.kill_grace_ms = opt_count(L, 1, "kill_grace_ms", GALLEY_PROC_DEFAULT_GRACE_MS);
  lim.max_output = (size_t)opt_count(L, 1, "max_output", (lua_Integer)GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  if (galley_sig_pending()) return interrupted(L);  /* nothing starts once Ctrl-C is pending */
  lprocess *lp = new_process(L);                                                 // [opts, anchor, proc]
  /* To-be-closed: however this call ends (an error raised by the interrupt hook included), the
   * group is killed and reaped. */
  lua_toclose(L, 3);
  int err_no = 0;
  int rc = galley_proc_spawn(spawn_loop(), &spec, &lp->p, &err_no);
  if (rc != GALLEY_PROC_OK) return spawn_failed(L, &spec, rc, err_no);
  galley_proc_limit(lp->p, &lim);
  return run_step(L, lp);
}


/* proc.spawn{argv, cwd?, env?, env_mode?, stdin? = "null" | "pipe" | bytes}
 *   -> Process | nil, err(PROC_SPAWN) */
static int l_proc_spawn(lua_State *L) {
  galley_proc_spec spec;
  read_spec(L, 1, &spec, 1);                                                     // [opts, anchor]
  lprocess *lp = new_process(L);                                                 // [opts, anchor, proc]
  int err_no = 0;
  int rc = galley_proc_spawn(spawn_loop(), &spec, &lp->p, &err_no);   /* stdin bytes are copied */
  if (rc != GALLEY_PROC_OK) return spawn_failed(L, &spec, rc, err_no);
  return 1;
}


/* proc.which(name) -> absolute path | nil */
static int l_proc_which(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char path[PATH_MAX];
  if (galley_proc_which(name, path, sizeof path) != 0) return 0;
  lua_pushstring(L, path);
  return 1;
}


/* --- Process methods --------------------------------------------------------------------------- */

/* The open process at argument 1; raises when closed or when another task or thread waits on it. */
static lprocess *check_process(lua_State *L) {
  lprocess *lp = luaL_checkudata(L, 1, PROCESS_MT);
  if (!lp->p) luaL_error(L, "attempt to use a closed process");
  if (lp->busy) luaL_error(L, "process is in use by another task");
  return lp;
}


/* The open process at argument 1, even while another task reads it: pid and kill only signal
 * the group, which is safe concurrently with a read (the group id is fixed at spawn). */
static lprocess *check_open_process(lua_State *L) {
  lprocess *lp = luaL_checkudata(L, 1, PROCESS_MT);
  if (!lp->p) luaL_error(L, "attempt to use a closed process");
  return lp;
}


/* An optional timeout argument: nil -> -1 (no limit). */
static int64_t opt_timeout(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return -1;
  lua_Integer ms = luaL_checkinteger(L, arg);
  luaL_argcheck(L, ms >= 0, arg, "timeout must not be negative");
  return ms;
}


/* Busy guard __close: the wait is over however it ended (returned, cancelled, or an error
 * unwinding through it): the process takes other waits again; its deadline and waiter go. */
static int busy_close(lua_State *L) {
  lprocess **g = luaL_checkudata(L, 1, BUSY_MT);
  lprocess *lp = *g;
  if (!lp) return 0;
  *g = NULL;
  lp->busy = 0;
  if (lp->p) {
    galley_proc_notify(lp->p, 0);
    galley_proc_deadline(lp->p, -1);
  }
  return 0;
}


/* Marks lp busy until the calling function returns: pushes a to-be-closed guard. The guard's user
 * value is the process userdata at index 1, so lp lives as long as the guard. */
static void push_busy(lua_State *L, lprocess *lp) {
  lprocess **g = lua_newuserdatauv(L, sizeof *g, 1);
  *g = NULL;
  luaL_setmetatable(L, BUSY_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  *g = lp;
  lp->busy = 1;
  lua_toclose(L, -1);
}


/* Woken because another task closed the process. */
static int closed_while_waiting(lua_State *L) {
  return galley_fail(L, "PROC_CLOSED", "the process was closed while waiting for it");
}


/* Pushes what galley_proc_next reported (ev != 0). */
static int push_event(lua_State *L, lprocess *lp, int ev, const char *data, size_t len) {
  if (ev == GALLEY_PROC_EV_EXIT) {
    galley_proc_status st;
    galley_proc_get_status(lp->p, &st);
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, st.exit_code);
    if (st.signal) lua_pushinteger(L, st.signal);
    else lua_pushnil(L);
    return 3;
  }
  lua_pushstring(L, ev == GALLEY_PROC_EV_STDOUT ? "stdout" : "stderr");
  lua_pushlstring(L, data, len);          /* data points into the process: copied now */
  return 2;
}


static int read_k(lua_State *L, int status, lua_KContext ctx);


/* Process:read until an event or the deadline: [proc, timeout, guard] */
static int read_step(lua_State *L, lprocess *lp) {
  const char *data = NULL;
  size_t len = 0;
  int ev = galley_proc_next(lp->p, &data, &len);
  if (ev) return push_event(L, lp, ev, data, len);
  if (galley_proc_deadline_passed(lp->p)) {
    lua_pushnil(L);
    return 1;
  }
  uint64_t token = galley_loop_token();
  galley_proc_notify(lp->p, token);
  return galley_await(L, token, (lua_KContext)lp, read_k);
}


/* Continuation of Process:read: [proc, timeout, guard, ok, err?] */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lprocess *lp = (lprocess *)ctx;
  if (!galley_await_ok(L)) return cancelled(L);
  if (!lp->p) return closed_while_waiting(L);
  return read_step(L, lp);
}


/* Process:read([timeout_ms]) -> "stdout", data | "stderr", data | "exit", exit_code, signal?
 *                             | nil (timeout) | nil, err(INTERRUPTED | PROC_CLOSED) */
static int l_process_read(lua_State *L) {
  lprocess *lp = check_process(L);
  int64_t timeout = opt_timeout(L, 2);
  lua_settop(L, 2);                                                              // [proc, timeout]
  const char *data = NULL;
  size_t len = 0;
  int ev = galley_proc_next(lp->p, &data, &len);
  if (ev) return push_event(L, lp, ev, data, len);
  if (timeout == 0) {
    lua_pushnil(L);
    return 1;
  }
  push_busy(L, lp);                                                              // [proc, timeout, guard]
  galley_proc_deadline(lp->p, timeout);
  return read_step(L, lp);
}


/* Process:write(data) -> true | nil, err(PROC_STDIN_CLOSED) */
static int l_process_write(lua_State *L) {
  lprocess *lp = check_open_process(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int rc = galley_proc_write(lp->p, data, len);
  if (rc == GALLEY_PROC_ENOMEM) return galley_fail(L, "PROC_NOMEM", "out of memory queueing stdin");
  if (rc != GALLEY_PROC_OK) return galley_fail(L, "PROC_STDIN_CLOSED", "the child's stdin is closed");
  lua_pushboolean(L, 1);
  return 1;
}


/* Process:close_stdin()   (after the queued bytes are written) */
static int l_process_close_stdin(lua_State *L) {
  lprocess *lp = check_open_process(L);
  galley_proc_close_stdin(lp->p);
  return 0;
}


/* Process:kill([signal = "TERM"]) -> true | nil, err(PROC_KILL)   (the whole process group) */
static int l_process_kill(lua_State *L) {
  lprocess *lp = check_open_process(L);
  int sig = SIGTERM;
  if (lua_type(L, 2) == LUA_TSTRING) {
    sig = galley_proc_signal_number(lua_tostring(L, 2));
    luaL_argcheck(L, sig != 0, 2, "unknown signal name");
  } else if (!lua_isnoneornil(L, 2)) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0 && n < 65, 2, "signal number out of range");
    sig = (int)n;
  }
  if (galley_proc_kill(lp->p, sig) != 0) {
    int e = errno;
    galley_fail(L, "PROC_KILL", "cannot signal process group %d: %s", (int)galley_proc_pid(lp->p), strerror(e));
    galley_error_set_integer(L, "errno", e);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


static int wait_k(lua_State *L, int status, lua_KContext ctx);


/* Process:wait until finished or the deadline: [proc, timeout, guard?] */
static int wait_step(lua_State *L, lprocess *lp) {
  if (galley_proc_finished(lp->p)) {
    push_result(L, lp->p);
    galley_proc_clear_output(lp->p);
    return 1;
  }
  if (galley_proc_deadline_passed(lp->p)) {
    lua_pushnil(L);
    return 1;
  }
  uint64_t token = galley_loop_token();
  galley_proc_notify(lp->p, token);
  return galley_await(L, token, (lua_KContext)lp, wait_k);
}


/* Continuation of Process:wait: [proc, timeout, guard, ok, err?] */
static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  lprocess *lp = (lprocess *)ctx;
  if (!galley_await_ok(L)) return cancelled(L);
  if (!lp->p) return closed_while_waiting(L);
  return wait_step(L, lp);
}


/* Process:wait([timeout_ms]) -> result (as proc.run) | nil (timeout) | nil, err(INTERRUPTED | PROC_CLOSED)
 * Closes stdin first; output not yet returned by :read is collected (64 MiB cap per stream). */
static int l_process_wait(lua_State *L) {
  lprocess *lp = check_process(L);
  int64_t timeout = opt_timeout(L, 2);
  lua_settop(L, 2);                                                              // [proc, timeout]
  galley_proc_close_stdin(lp->p);
  galley_proc_capture(lp->p, GALLEY_PROC_DEFAULT_MAX_OUTPUT);
  if (galley_proc_finished(lp->p)) return wait_step(L, lp);
  if (timeout == 0) { /* a poll: what the event loop has seen (as running()), never a wait */
    lua_pushnil(L);
    return 1;
  }
  push_busy(L, lp);                                                              // [proc, timeout, guard]
  galley_proc_deadline(lp->p, timeout);
  return wait_step(L, lp);
}


/* Process:pid() -> integer */
static int l_process_pid(lua_State *L) {
  lprocess *lp = check_open_process(L);
  lua_pushinteger(L, galley_proc_pid(lp->p));
  return 1;
}


/* Process:running() -> boolean[, exit_code]: false once the child has exited (as the event loop
 * has seen: it looks whenever something waits, so a poll that sleeps sees an exit within its
 * period), then with how it ended (128 + N for signal N). Never waits; output not yet read stays
 * readable, and wait() still returns it. */
static int l_process_running(lua_State *L) {
  lprocess *lp = check_open_process(L);
  galley_proc_status st;
  galley_proc_get_status(lp->p, &st);
  lua_pushboolean(L, !st.reaped);
  if (!st.reaped) return 1;
  lua_pushinteger(L, st.exit_code);
  return 2;
}


/* Process:close()   also __gc and __close: kills the group unless finished, reaps; idempotent.
 * A task waiting in read/wait meanwhile wakes up with nil, err(PROC_CLOSED). */
static int l_process_close(lua_State *L) {
  lprocess *lp = luaL_checkudata(L, 1, PROCESS_MT);
  galley_proc_close(lp->p);
  lp->p = NULL;
  return 0;
}


/* tostring(Process) -> "galley.proc.Process (pid N)" | "galley.proc.Process (closed)" */
static int l_process_tostring(lua_State *L) {
  lprocess *lp = luaL_checkudata(L, 1, PROCESS_MT);
  if (lp->p) lua_pushfstring(L, "%s (pid %d)", PROCESS_MT, (int)galley_proc_pid(lp->p));
  else lua_pushfstring(L, "%s (closed)", PROCESS_MT);
  return 1;
}


static const luaL_Reg process_methods[] = {
  { "read",        l_process_read        },
  { "write",       l_process_write       },
  { "close_stdin", l_process_close_stdin },
  { "kill",        l_process_kill        },
  { "wait",        l_process_wait        },
  { "pid",         l_process_pid         },
  { "running",     l_process_running     },
  { "close",       l_process_close       },
  { NULL,          NULL                  }
};

static const luaL_Reg process_meta[] = {
  { "__gc",        l_process_close       },
  { "__close",     l_process_close       },
  { "__tostring",  l_process_tostring    },
  { "__index",     NULL                  },
  { NULL,          NULL                  }
};

static const luaL_Reg proc_funcs[] = {
  { "run",         l_proc_run            },
  { "spawn",       l_proc_spawn          },
  { "which",       l_proc_which          },
  { NULL,          NULL                  }
};

int luaopen_galley_core_proc(lua_State *L) {
  if (luaL_newmetatable(L, BUSY_MT)) {                                           // [busy_mt]
    lua_pushcfunction(L, busy_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newmetatable(L, PROCESS_MT);                                              // [mt]
  luaL_setfuncs(L, process_meta, 0);
  luaL_newlib(L, process_methods);                                               // [mt, methods]
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, proc_funcs);
  return 1;
}
