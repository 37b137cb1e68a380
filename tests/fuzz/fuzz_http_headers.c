/* libFuzzer target: the HTTP header recorder (galley_http_headers_add in src/core/http.c, what
 * every transfer's header callback runs). The input is cut into lines at '\n' as libcurl hands
 * them over. Checks: names are lowercase and trimmed, values trimmed, each name recorded once,
 * the kept bytes within GALLEY_HTTP_MAX_HEADER_BYTES; and a status line forgets what came
 * before: the same lines after an interim response ("HTTP/1.1 100 Continue" and its headers)
 * give exactly the same record. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http.h"

static void feed(galley_http_headers *h, const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const char *nl = memchr(s + i, '\n', n - i);
    size_t len = nl ? (size_t)(nl - (s + i)) + 1 : n - i;
    if (!galley_http_headers_add(h, s + i, len)) abort();  /* out of memory: not expected here */
    i += len;
  }
}


static void check(const galley_http_headers *h) {
  if (h->bytes > GALLEY_HTTP_MAX_HEADER_BYTES) abort();
  for (size_t i = 0; i < h->n; i++) {
    const char *name = h->items[i].name, *value = h->items[i].value;
    size_t nl = strlen(name), vl = strlen(value);
    for (size_t k = 0; k < nl; k++)
      if (isupper((unsigned char)name[k])) abort();
    if (nl > 0 && (name[0] == ' ' || name[0] == '\t' || isspace((unsigned char)name[nl - 1]))) abort();
    if (vl > 0 && (value[0] == ' ' || value[0] == '\t' || isspace((unsigned char)value[vl - 1]))) abort();
    for (size_t j = 0; j < i; j++)
      if (strcmp(h->items[j].name, name) == 0) abort();
  }
}


static void same(const galley_http_headers *a, const galley_http_headers *b) {
  if (a->n != b->n || a->bytes != b->bytes) abort();
  for (size_t i = 0; i < a->n; i++) {
    if (strcmp(a->items[i].name, b->items[i].name) != 0) abort();
    if (strcmp(a->items[i].value, b->items[i].value) != 0) abort();
  }
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char interim[] = "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\nContent-Type: no\r\n\r\n";
  const char *s = (const char *)data;
  galley_http_headers plain = { 0 }, after = { 0 };
  feed(&plain, s, size);
  check(&plain);
  /* The fuzzed lines start with a status line of their own only sometimes: prepend one so the
   * interim response is forgotten either way. */
  feed(&after, interim, sizeof interim - 1);
  feed(&after, "HTTP/1.1 200 OK\r\n", 17);
  galley_http_headers fresh = { 0 };
  feed(&fresh, "HTTP/1.1 200 OK\r\n", 17);
  feed(&fresh, s, size);
  feed(&after, s, size);
  same(&fresh, &after);
  galley_http_headers_free(&plain);
  galley_http_headers_free(&plain);  /* safe twice */
  galley_http_headers_free(&after);
  galley_http_headers_free(&fresh);
  return 0;
}
