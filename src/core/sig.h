/* Process-wide interrupt state: SIGINT/SIGTERM set a flag that blocking calls (HTTP transfers,
 * child process waits, sleeps) poll so they can give up promptly with an INTERRUPTED result. */
#ifndef GALLEY_SIG_H
#define GALLEY_SIG_H

#include <stdint.h>

/* Installs SIGINT/SIGTERM handlers. `notify` (may be NULL) runs inside the handler after the
 * flag is set; it must be async-signal-safe (main.c uses it to set a Lua hook). */
void galley_sig_install(void (*notify)(int sig));

/* The signal number waiting to be handled, or 0. */
int galley_sig_pending(void);

/* Forgets a pending signal (after the runner has started its cleanup). */
void galley_sig_clear(void);

/* The press (counted while deferred) that aborts a deferred cleanup: it becomes pending like an
 * ordinary signal (waiting tasks get INTERRUPTED); one more exits at once with 128 + signal. */
#define GALLEY_SIG_ABORT_AT 3

/* While deferred, signals are counted but not made pending, up to GALLEY_SIG_ABORT_AT (see above).
 * Turning it on or off resets the count. */
void galley_sig_defer(int on);

/* How many signals arrived since galley_sig_defer(1). */
int galley_sig_deferred_count(void);

/* Monotonic clock in milliseconds. */
int64_t galley_now_ms(void);


#endif
