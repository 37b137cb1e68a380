/* Unit tests for src/core/sig.c: the interrupt flag and interruptible sleep. */
#include <signal.h>
#include "check.h"
#include "sig.h"


static void sig_should_start_with_nothing_pending(void) {
  galley_sig_install(NULL);
  CHECK(galley_sig_pending() == 0);
}


static void sig_should_record_a_raised_signal_and_cut_sleep_short(void) {
  galley_sig_install(NULL);
  raise(SIGINT);
  CHECK(galley_sig_pending() == SIGINT);
  int64_t t0 = galley_now_ms();
  CHECK(galley_sleep_ms(5000) == -1);
  CHECK(galley_now_ms() - t0 < 1000);
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


static void sig_should_sleep_the_full_time_without_signals(void) {
  int64_t t0 = galley_now_ms();
  CHECK(galley_sleep_ms(60) == 0);
  CHECK(galley_now_ms() - t0 >= 60);
}


int main(void) {
  RUN(sig_should_start_with_nothing_pending);
  RUN(sig_should_record_a_raised_signal_and_cut_sleep_short);
  RUN(sig_should_count_but_not_act_while_deferred);
  RUN(sig_should_sleep_the_full_time_without_signals);
  return CHECK_DONE();
}
