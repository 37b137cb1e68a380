/* Spinner thread; see spinner.h. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "sig.h"
#include "spinner.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t thread;
static int running;
static int stop_requested;
static char label[200];
static int64_t started_ms;
static const char *frames[] = {"|", "/", "-", "\\"};


static void write_all(const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}


/* Caller holds mu. */
static void draw(int frame) {
  char line[300];
  double secs = (double)(galley_now_ms() - started_ms) / 1000.0;
  int n = snprintf(line, sizeof line, "\r\033[K%s %s %.1fs", frames[frame % 4], label, secs);
  if (n > 0) write_all(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}


static void *spin(void *arg) {
  (void)arg;
  for (int frame = 0;; frame++) {
    pthread_mutex_lock(&mu);
    if (stop_requested) {
      write_all("\r\033[K", 4);
      pthread_mutex_unlock(&mu);
      return NULL;
    }
    draw(frame);
    pthread_mutex_unlock(&mu);
    struct timespec ts = {0, 100 * 1000000};
    nanosleep(&ts, NULL);
  }
}


void galley_spinner_start(const char *text) {
  pthread_mutex_lock(&mu);
  snprintf(label, sizeof label, "%s", text);
  started_ms = galley_now_ms();
  if (running) {
    pthread_mutex_unlock(&mu);
    return;
  }
  stop_requested = 0;
  running = pthread_create(&thread, NULL, spin, NULL) == 0;
  pthread_mutex_unlock(&mu);
}


void galley_spinner_label(const char *text) {
  pthread_mutex_lock(&mu);
  snprintf(label, sizeof label, "%s", text);
  pthread_mutex_unlock(&mu);
}


void galley_spinner_stop(void) {
  pthread_mutex_lock(&mu);
  if (!running) {
    pthread_mutex_unlock(&mu);
    return;
  }
  stop_requested = 1;
  pthread_mutex_unlock(&mu);
  pthread_join(thread, NULL);
  running = 0;
}


void galley_spinner_write(const char *text, size_t len) {
  pthread_mutex_lock(&mu);
  if (running) write_all("\r\033[K", 4);
  write_all(text, len);
  if (running) draw(0);
  pthread_mutex_unlock(&mu);
}
