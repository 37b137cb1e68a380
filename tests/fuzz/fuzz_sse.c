/* libFuzzer target: the SSE line parser (galley_sse_feed in src/core/morph.c). The stream fed in
 * pieces (cut where the first byte says) must give the same events as fed whole. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "morph.h"

typedef struct {
  char *buf;
  size_t len;
} events;

static int on_event(void *ud, const char *data, size_t len) {
  events *e = ud;
  char *nb = realloc(e->buf, e->len + len + 9);
  if (!nb) abort();
  e->buf = nb;
  memcpy(e->buf + e->len, &len, sizeof len);  /* length-prefixed: event boundaries count */
  memcpy(e->buf + e->len + sizeof len, data, len);
  e->len += sizeof len + len;
  return 0;
}


static void run(const char *s, size_t n, size_t step, events *e) {
  galley_sse p = { 0 };
  size_t i = 0;
  while (i < n) {
    size_t take = step ? step : n;
    if (take > n - i) take = n - i;
    if (galley_sse_feed(&p, s + i, take, on_event, e) != 0) abort();
    i += take;
  }
  if (galley_sse_flush(&p, on_event, e) != 0) abort();
  galley_sse_free(&p);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  size_t step = data[0] % 17;  /* 0: whole */
  const char *s = (const char *)data + 1;
  size_t n = size - 1;
  events whole = { 0 }, pieces = { 0 };
  run(s, n, 0, &whole);
  run(s, n, step ? step : 1, &pieces);
  if (whole.len != pieces.len || (whole.len && memcmp(whole.buf, pieces.buf, whole.len) != 0)) abort();
  free(whole.buf);
  free(pieces.buf);
  return 0;
}
