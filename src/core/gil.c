/* Global interpreter lock; see gil.h. */
#include <pthread.h>
#include "gil.h"

static pthread_mutex_t gil = PTHREAD_MUTEX_INITIALIZER;
static int enabled;


void galley_gil_enable(void) {
  if (enabled) return;
  pthread_mutex_lock(&gil);
  enabled = 1;
}


int galley_gil_enabled(void) { return enabled; }


void galley_gil_release(void) {
  if (enabled) pthread_mutex_unlock(&gil);
}


void galley_gil_acquire(void) {
  if (enabled) pthread_mutex_lock(&gil);
}
