/* The event loop and its ready queue; see loop.h. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "loop.h"

static uv_loop_t *loop;
static uv_async_t wake;
static volatile sig_atomic_t wake_ready;
static uint64_t next_token;

/* Ready tokens: a growable FIFO ring. */
static uint64_t *ring;
static size_t ring_cap, ring_head, ring_len;


static void on_wake(uv_async_t *h) { (void)h; }


uv_loop_t *galley_loop(void) {
  if (loop) return loop;
  loop = uv_default_loop();
  uv_async_init(loop, &wake, on_wake);
  /* The wake-up handle alone must not keep a turn blocking when nothing else is pending. */
  uv_unref((uv_handle_t *)&wake);
  wake_ready = 1;
  return loop;
}


uint64_t galley_loop_token(void) { return ++next_token; }


void galley_loop_ready(uint64_t token) {
  if (ring_len == ring_cap) {
    size_t cap = ring_cap ? ring_cap * 2 : 64;
    uint64_t *n = malloc(cap * sizeof *n);
    if (!n) abort(); /* a lost wake-up would hang a waiter forever: fail loudly instead */
    for (size_t i = 0; i < ring_len; i++) n[i] = ring[(ring_head + i) % ring_cap];
    free(ring);
    ring = n;
    ring_cap = cap;
    ring_head = 0;
  }
  ring[(ring_head + ring_len) % ring_cap] = token;
  ring_len++;
}


size_t galley_loop_nready(void) { return ring_len; }


size_t galley_loop_take_ready(uint64_t *out, size_t cap) {
  size_t n = 0;
  while (n < cap && ring_len > 0) {
    out[n++] = ring[ring_head];
    ring_head = (ring_head + 1) % ring_cap;
    ring_len--;
  }
  return n;
}


int galley_loop_turn(int nowait) {
  uv_loop_t *l = galley_loop();
  uv_run(l, (nowait || ring_len > 0) ? UV_RUN_NOWAIT : UV_RUN_ONCE);
  return uv_loop_alive(l);
}


void galley_loop_wake(void) {
  if (wake_ready) uv_async_send(&wake);
}


static void free_handle(uv_handle_t *h) { free(h); }


void galley_loop_close_free(uv_handle_t *h) {
  if (!h) return;
  if (uv_is_closing(h)) return;
  uv_close(h, free_handle);
}
