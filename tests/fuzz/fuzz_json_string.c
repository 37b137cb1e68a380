/* libFuzzer target: galley_json_quote (src/core/codec.c), the JSON string literal of any bytes.
 * - the size galley_json_quoted_size gives is exactly what galley_json_quote writes;
 * - the literal is a quote, then no raw control character, quote or lone backslash, then a
 *   quote (every escape is one JSON allows);
 * - reading the escapes back gives exactly the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "codec.h"

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *in = (const char *)data;
  size_t cap = galley_json_quoted_size(in, size);
  char *q = malloc(cap);
  unsigned char *back = malloc(size + 1);
  if (!q || !back) abort();
  size_t n = galley_json_quote(q, in, size);
  if (n != cap || n < 2 || q[0] != '"' || q[n - 1] != '"') abort();
  size_t k = 0;
  for (size_t i = 1; i + 1 < n; i++) {
    unsigned char c = (unsigned char)q[i];
    if (c < 0x20 || c == '"') abort(); /* must have been escaped */
    if (c != '\\') {
      back[k++] = c;
      continue;
    }
    if (++i + 1 >= n) abort(); /* a backslash must start a whole escape */
    switch (q[i]) {
      case '"': back[k++] = '"'; break;
      case '\\': back[k++] = '\\'; break;
      case 'b': back[k++] = '\b'; break;
      case 'f': back[k++] = '\f'; break;
      case 'n': back[k++] = '\n'; break;
      case 'r': back[k++] = '\r'; break;
      case 't': back[k++] = '\t'; break;
      case 'u': {
        if (i + 5 >= n || q[i + 1] != '0' || q[i + 2] != '0') abort();
        int hi = hexval(q[i + 3]), lo = hexval(q[i + 4]);
        if (hi < 0 || lo < 0) abort();
        back[k++] = (unsigned char)(hi * 16 + lo);
        i += 4;
        break;
      }
      default: abort();
    }
    if (k > size) abort();
  }
  if (k != size || (size > 0 && memcmp(back, data, size) != 0)) abort();
  free(q);
  free(back);
  return 0;
}
