/* Unit tests for the header recorder of src/core/http.c (galley_http_headers_add), with the
 * inputs tests/fuzz/fuzz_http_headers.c found (corpus seed4, seed5). */
#include <stdlib.h>
#include "check.h"
#include "http.h"

static void feed(galley_http_headers *h, const char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const char *nl = memchr(s + i, '\n', n - i);
    size_t len = nl ? (size_t)(nl - (s + i)) + 1 : n - i;
    CHECK(galley_http_headers_add(h, s + i, len));
    i += len;
  }
}


static const char *get(const galley_http_headers *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcmp(h->items[i].name, name) == 0) return h->items[i].value;
  return NULL;
}


static void headers_should_lowercase_trim_and_join(void) {
  static const char in[] = "HTTP/1.1 200 OK\r\nContent-Type:  application/json \t\r\n"
                           "Set-Cookie: a=1\r\nset-cookie: b=2\r\nno colon here\r\n\r\n";
  galley_http_headers h = { 0 };
  feed(&h, in, sizeof in - 1);
  CHECK(h.n == 2);
  CHECK_STR(get(&h, "content-type"), "application/json");
  CHECK_STR(get(&h, "set-cookie"), "a=1, b=2");
  galley_http_headers_free(&h);
  galley_http_headers_free(&h);
  CHECK(h.n == 0 && h.items == NULL && h.bytes == 0);
}


static void headers_should_forget_an_interim_response(void) {
  static const char in[] = "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                           "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\n";
  galley_http_headers h = { 0 };
  feed(&h, in, sizeof in - 1);
  CHECK(h.n == 1);
  CHECK(get(&h, "x-interim") == NULL);
  CHECK_STR(get(&h, "retry-after"), "3");
  galley_http_headers_free(&h);
}


/* seed4: a NUL inside a value used to cut it short, leaving a trailing space. */
static void headers_should_read_a_nul_as_a_space(void) {
  static const char in[] = "Location: /: \0\0" "2\r\n";
  galley_http_headers h = { 0 };
  feed(&h, in, sizeof in - 1);
  CHECK_STR(get(&h, "location"), "/:   2");
  galley_http_headers_free(&h);
}


/* seed5: a repeated header with an empty value used to add a dangling ", ". */
static void headers_should_skip_empty_values_when_joining(void) {
  static const char in[] = "X-A: one\r\nX-A:\r\nX-B:\r\nX-B: two\r\nX-C:  \r\n";
  galley_http_headers h = { 0 };
  feed(&h, in, sizeof in - 1);
  CHECK_STR(get(&h, "x-a"), "one");
  CHECK_STR(get(&h, "x-b"), "two");
  CHECK_STR(get(&h, "x-c"), "");
  galley_http_headers_free(&h);
}


static void headers_should_stop_at_the_byte_limit(void) {
  char line[1024];
  memset(line, 'v', sizeof line);
  memcpy(line, "X-Big: ", 7);
  line[sizeof line - 2] = '\r';
  line[sizeof line - 1] = '\n';
  galley_http_headers h = { 0 };
  for (int i = 0; i < 200; i++) CHECK(galley_http_headers_add(&h, line, sizeof line));
  CHECK(h.bytes <= GALLEY_HTTP_MAX_HEADER_BYTES);
  CHECK(h.bytes == (GALLEY_HTTP_MAX_HEADER_BYTES / sizeof line) * sizeof line);
  CHECK(galley_http_headers_add(&h, "X-Late: 1\r\n", 11));
  CHECK(get(&h, "x-late") == NULL);
  galley_http_headers_free(&h);
}


int main(void) {
  RUN(headers_should_lowercase_trim_and_join);
  RUN(headers_should_forget_an_interim_response);
  RUN(headers_should_read_a_nul_as_a_space);
  RUN(headers_should_skip_empty_values_when_joining);
  RUN(headers_should_stop_at_the_byte_limit);
  return CHECK_DONE();
}
