/* Waiting from C bindings without blocking other work (the cosocket model of OpenResty).
 *
 * A binding that starts an operation on the loop (src/core/loop.h) takes a token, keeps its
 * state somewhere that survives a yield (a userdata on the Lua stack, or the continuation
 * context), and ends with
 *
 *     return galley_await(L, token, ctx, k);
 *
 * galley_await calls the scheduler's await(token) (lua/galley/task.lua) with lua_callk: inside
 * a task that yields the coroutine until the token is ready, while other tasks run; anywhere
 * else it runs the loop (and every runnable task) until the token is ready. Either way the
 * continuation k(L, status, ctx) runs next with two values on top of the stack:
 *
 *     true, nil    the token is ready: collect the result
 *     false, err   the wait was cancelled (Ctrl-C/SIGTERM, t:cancel(), a task timeout):
 *                  abort the operation (close its handles), then return or raise err
 *
 * The continuation pops both. It may call galley_await again for a multi-step operation.
 * Rule: never call galley_await, nor anything that can raise, while holding C memory that is
 * not reachable from a userdata's __gc. */
#ifndef GALLEY_AWAIT_H
#define GALLEY_AWAIT_H

#include <stdint.h>
#include <lua.h>

int galley_await(lua_State *L, uint64_t token, lua_KContext ctx, lua_KFunction k);

/* In a continuation: 1 when the token is ready (both values popped), 0 when cancelled (the
 * `false` popped, the error left on top of the stack). */
int galley_await_ok(lua_State *L);

/* loop.sleep(ms) / runtime.sleep_ms(ms) -> true | nil, err(INTERRUPTED): a wait on the loop. */
int galley_loop_sleep_lua(lua_State *L);

/* The coroutine the scheduler is running now (NULL: the main thread or none); the signal
 * handler points its interrupt hook there. */
extern lua_State *volatile galley_running_thread;

/* Non-zero while the scheduler's own code runs (no interrupt hook then: it checks signals). */
extern volatile int galley_scheduling;

#endif
