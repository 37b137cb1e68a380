/* A global interpreter lock for the one Lua state. Off by default (every call is a no-op).
 * When a server runs request handlers on several threads (galley emulate), it enables the
 * lock; blocking C calls (child-process waits, sleeps, HTTP transfers) release it around the
 * wait so other threads can run Lua meanwhile. Rule: never touch a lua_State while released. */
#ifndef GALLEY_GIL_H
#define GALLEY_GIL_H

/* Turns the lock on; the calling thread then holds it. */
void galley_gil_enable(void);

/* Whether the lock is on. */
int galley_gil_enabled(void);

/* Around a blocking wait: release before, acquire after. No-ops when the lock is off. */
void galley_gil_release(void);
void galley_gil_acquire(void);

#endif
