/* The one event loop under everything (libuv's default loop) and the ready queue that links it
 * to Lua's scheduler (lua/galley/task.lua).
 *
 * Every wait in galley is an operation on this loop identified by a token: C code that starts
 * an operation (a timer, a child process, an HTTP transfer) takes a token, and the libuv or
 * libcurl callback that completes it calls galley_loop_ready(token). Callbacks never call into
 * Lua: the scheduler runs one loop turn at a time and collects the ready tokens afterwards,
 * then resumes the coroutines waiting for them (see src/bind/await.h). */
#ifndef GALLEY_LOOP_H
#define GALLEY_LOOP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The loop, initialised on first use (with the wake-up handle). Never NULL. */
uv_loop_t *galley_loop(void);

/* A new token: a positive integer never handed out before in this process. */
uint64_t galley_loop_token(void);

/* Marks token ready (called from loop callbacks, on the loop's thread). */
void galley_loop_ready(uint64_t token);

/* How many ready tokens wait to be collected. */
size_t galley_loop_nready(void);

/* Moves up to cap ready tokens into out (oldest first); returns how many. */
size_t galley_loop_take_ready(uint64_t *out, size_t cap);

/* Runs one loop turn: without blocking when `nowait` is set or tokens are already ready,
 * otherwise until at least one event has been handled (or galley_loop_wake is called).
 * Returns non-zero while the loop has active handles or requests (uv_loop_alive). */
int galley_loop_turn(int nowait);

/* Makes a blocking turn return soon. Async-signal-safe: the signal handler calls it. */
void galley_loop_wake(void);

/* Closes h (if not closing already) and frees it with free() once libuv is done with it. */
void galley_loop_close_free(uv_handle_t *h);

#endif
