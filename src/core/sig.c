/* Interrupt flag shared by every blocking call; see sig.h. */
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "sig.h"

static volatile sig_atomic_t pending_sig;
static volatile sig_atomic_t deferred;
static volatile sig_atomic_t deferred_count;
static void (*notify_fn)(int);


static void on_signal(int sig) {
  if (deferred) {
    int n = ++deferred_count;
    if (n > GALLEY_SIG_ABORT_AT) _exit(128 + sig); /* the abort itself is stuck: leave at once */
    if (n < GALLEY_SIG_ABORT_AT) return;           /* counted; the cleanup says how many are left */
    /* The abort: the signal becomes pending like an ordinary one, so waiting tasks are cancelled
     * with INTERRUPTED and the cleanup names what it leaves behind. */
  }
  pending_sig = sig;
  if (notify_fn) notify_fn(sig);
}


void galley_sig_install(void (*notify)(int sig)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  notify_fn = notify;
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  /* Handled from here on even where the parent started galley with them blocked (inherited
   * across exec): a Ctrl-C or SIGTERM sent meanwhile arrives now. */
  sigset_t handled;
  sigemptyset(&handled);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &handled, NULL);
  /* A peer that closes its end (curl, a child's pipe) must not kill the whole run. */
  signal(SIGPIPE, SIG_IGN);
}


int galley_sig_pending(void) { return pending_sig; }


void galley_sig_clear(void) { pending_sig = 0; }


void galley_sig_defer(int on) {
  deferred_count = 0;
  deferred = on;
}


int galley_sig_deferred_count(void) { return deferred_count; }


int64_t galley_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
