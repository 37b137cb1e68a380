/* libFuzzer target: base64 decode/encode round trip (src/core/codec.c), both variants.
 * - whatever decodes must encode back to exactly the input (strict: one spelling per value);
 * - any bytes encode and decode back to themselves;
 * - no byte 0x80-0xFF is ever accepted. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "codec.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return sodium_init() < 0 ? -1 : 0;
}


static void check_decode(const uint8_t *data, size_t size, int variant) {
  size_t cap = galley_b64_decoded_max(size) + 1;
  unsigned char *out = malloc(cap);
  size_t len = 0;
  if (!out) abort();
  if (galley_b64_decode(out, cap, (const char *)data, size, variant, &len) == 0) {
    for (size_t i = 0; i < size; i++)
      if (data[i] >= 0x80) abort();  /* a high byte was accepted */
    size_t ecap = galley_b64_encoded_size(len, variant);
    char *enc = malloc(ecap);
    if (!enc) abort();
    size_t elen = galley_b64_encode(enc, ecap, out, len, variant);
    if (elen != size || memcmp(enc, data, size) != 0) abort();  /* not the one spelling */
    free(enc);
  }
  free(out);
}


static void check_encode(const uint8_t *data, size_t size, int variant) {
  size_t ecap = galley_b64_encoded_size(size, variant);
  char *enc = malloc(ecap);
  if (!enc) abort();
  size_t elen = galley_b64_encode(enc, ecap, data, size, variant);
  size_t cap = galley_b64_decoded_max(elen) + 1;
  unsigned char *out = malloc(cap);
  size_t len = 0;
  if (!out) abort();
  if (galley_b64_decode(out, cap, enc, elen, variant, &len) != 0) abort();
  if (len != size || (size > 0 && memcmp(out, data, size) != 0)) abort();
  free(out);
  free(enc);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_decode(data, size, GALLEY_B64_STANDARD);
  check_decode(data, size, GALLEY_B64_URLSAFE);
  check_encode(data, size, GALLEY_B64_STANDARD);
  check_encode(data, size, GALLEY_B64_URLSAFE);
  return 0;
}
