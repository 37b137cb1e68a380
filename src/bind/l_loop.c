/* galley.core.loop: the event loop as the Lua scheduler (lua/galley/task.lua) sees it, plus
 * galley_await (await.h) for every binding that waits. Only the scheduler should call these;
 * recipes use galley.task. */
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include "await.h"
#include "bind.h"
#include "loop.h"
#include "sig.h"

#define AWAIT_KEY "galley.await"
#define TIMER_MT "galley.loop.Timer"

lua_State *volatile galley_running_thread;
volatile int galley_scheduling;


/* Pushes the scheduler's await function, loading galley.task on first use. */
static void push_await(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, AWAIT_KEY) == LUA_TFUNCTION) return;
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "galley.task");
  lua_call(L, 1, 0);  /* registers AWAIT_KEY */
  if (lua_getfield(L, LUA_REGISTRYINDEX, AWAIT_KEY) != LUA_TFUNCTION)
    luaL_error(L, "galley.task did not register its scheduler");
}


int galley_await(lua_State *L, uint64_t token, lua_KContext ctx, lua_KFunction k) {
  push_await(L);
  lua_pushinteger(L, (lua_Integer)token);
  lua_callk(L, 1, 2, ctx, k);  /* may yield: k runs on resume */
  return k(L, LUA_OK, ctx);
}


int galley_await_ok(lua_State *L) {
  if (lua_toboolean(L, -2)) {
    lua_pop(L, 2);
    return 1;
  }
  lua_remove(L, -2);
  return 0;
}


/* loop.token() -> integer   a new token for a Lua-side wait */
static int l_loop_token(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)galley_loop_token());
  return 1;
}


/* loop.turn(nowait) -> {token, ...}, alive
 * One loop turn (blocking unless nowait or tokens are ready), then every ready token. */
static int l_loop_turn(lua_State *L) {
  int nowait = lua_toboolean(L, 1);
  int alive = galley_loop_turn(nowait);
  uint64_t buf[256];
  size_t n, i = 0;
  lua_createtable(L, (int)galley_loop_nready(), 0);
  while ((n = galley_loop_take_ready(buf, 256)) > 0)
    for (size_t j = 0; j < n; j++) {
      lua_pushinteger(L, (lua_Integer)buf[j]);
      lua_rawseti(L, -2, (lua_Integer)++i);
    }
  lua_pushboolean(L, alive || galley_loop_nready() > 0);
  return 2;
}


/* loop.resume(co, ...) -> true, ... | false, err   (coroutine.resume, noting the running
 * coroutine so that Ctrl-C interrupts the Lua code actually running) */
static int l_loop_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  int narg = lua_gettop(L) - 1;
  int status = lua_status(co);
  if (status != LUA_YIELD && !(status == LUA_OK && lua_gettop(co) > 0))
    return luaL_error(L, "cannot resume a coroutine that is not suspended");
  luaL_checkstack(co, narg, "too many arguments to resume");
  lua_xmove(L, co, narg);
  lua_State *prev = galley_running_thread;
  int prev_sched = galley_scheduling;
  galley_running_thread = co;
  galley_scheduling = 0;
  int nres;
  status = lua_resume(co, L, narg, &nres);
  galley_running_thread = prev;
  galley_scheduling = prev_sched;
  if (status == LUA_OK || status == LUA_YIELD) {
    luaL_checkstack(L, nres + 1, "too many results to resume");
    lua_pushboolean(L, 1);
    lua_xmove(co, L, nres);
    return nres + 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);  /* the error object */
  return 2;
}


/* loop.scheduling(on)   the scheduler's own code is running (nesting counted) */
static int l_loop_scheduling(lua_State *L) {
  if (lua_toboolean(L, 1)) galley_scheduling++;
  else if (galley_scheduling > 0) galley_scheduling--;
  return 0;
}


/* --- sleep ------------------------------------------------------------------------------- */

typedef struct {
  uv_timer_t *timer;  /* NULL once released */
  uint64_t token;
} sleep_op;


static void on_timer(uv_timer_t *t) {
  galley_loop_ready(*(uint64_t *)t->data);
}


static void sleep_release(sleep_op *op) {
  if (!op->timer) return;
  uv_timer_stop(op->timer);
  galley_loop_close_free((uv_handle_t *)op->timer);
  op->timer = NULL;
}


static int timer_gc(lua_State *L) {
  sleep_release(luaL_checkudata(L, 1, TIMER_MT));
  return 0;
}


/* Continuation of loop.sleep: [ms, op, ok, err?] */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  sleep_op *op = (sleep_op *)ctx;
  int ok = galley_await_ok(L);
  sleep_release(op);
  if (!ok) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;  /* nil, err */
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* loop.sleep(ms) -> true | nil, err(INTERRUPTED)   waits without blocking other tasks */
int galley_loop_sleep_lua(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  if (ms < 0) ms = 0;
  lua_settop(L, 1);
  sleep_op *op = lua_newuserdatauv(L, sizeof *op, 1);  /* [ms, op] kept across the yield */
  op->timer = NULL;
  op->token = galley_loop_token();
  luaL_setmetatable(L, TIMER_MT);
  uv_timer_t *t = malloc(sizeof *t);
  if (!t) return luaL_error(L, "out of memory");
  uv_timer_init(galley_loop(), t);
  t->data = &op->token;
  op->timer = t;
  /* The loop's clock only moves while it runs: after blocking work it is stale, and a timer
   * started from it would fire early by the time spent blocked. */
  uv_update_time(galley_loop());
  uv_timer_start(t, on_timer, (uint64_t)ms, 0);
  return galley_await(L, op->token, (lua_KContext)op, sleep_k);
}


/* loop.now_ms() -> integer (monotonic) */
static int l_loop_now_ms(lua_State *L) {
  lua_pushinteger(L, galley_now_ms());
  return 1;
}


static const luaL_Reg loop_funcs[] = {
  {"token",      l_loop_token},
  {"turn",       l_loop_turn},
  {"resume",     l_loop_resume},
  {"scheduling", l_loop_scheduling},
  {"sleep",      galley_loop_sleep_lua},
  {"now_ms",     l_loop_now_ms},
  {NULL, NULL}
};


int luaopen_galley_core_loop(lua_State *L) {
  if (luaL_newmetatable(L, TIMER_MT)) {
    lua_pushcfunction(L, timer_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, loop_funcs);
  return 1;
}
