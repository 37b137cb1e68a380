/* Unit tests for src/core/sig.c: the interrupt flag. (Sleeps are timers on the loop.) */
#include <signal.h>
#include "check.h"
#include "sig.h"


static void sig_should_start_with_nothing_pending(void) {
  galley_sig_install(NULL);
  CHECK(galley_sig_pending() == 0);
}


static void sig_should_record_a_raised_signal(void) {
  galley_sig_install(NULL);
  raise(SIGINT);
  CHECK(galley_sig_pending() == SIGINT);
  galley_sig_clear();
  CHECK(galley_sig_pending() == 0);
}


static void sig_should_count_but_not_act_while_deferred(void) {
  galley_sig_install(NULL);
  galley_sig_defer(1);
  raise(SIGINT);
  CHECK(galley_sig_pending() == 0);
  galley_sig_defer(0);
}


int main(void) {
  RUN(sig_should_start_with_nothing_pending);
  RUN(sig_should_record_a_raised_signal);
  RUN(sig_should_count_but_not_act_while_deferred);
  return CHECK_DONE();
}
