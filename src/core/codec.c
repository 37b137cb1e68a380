/* Encodings and digests; see codec.h. */
#include <stdint.h>
#include <string.h>
#include "codec.h"


static int sodium_variant(int variant) {
  return variant == GALLEY_B64_URLSAFE ? sodium_base64_VARIANT_URLSAFE_NO_PADDING : sodium_base64_VARIANT_ORIGINAL;
}


size_t galley_b64_encoded_size(size_t n, int variant) {
  if (n > SIZE_MAX / 4 * 3 - 3) return 0;
  return sodium_base64_ENCODED_LEN(n, sodium_variant(variant));
}


size_t galley_b64_encode(char *out, size_t out_size, const void *in, size_t n, int variant) {
  sodium_bin2base64(out, out_size, in, n, sodium_variant(variant));
  return strlen(out);
}


size_t galley_b64_decoded_max(size_t n) { return n / 4 * 3 + 3; }


int galley_b64_decode(void *out, size_t out_size, const char *in, size_t n, int variant, size_t *out_len) {
  const char *end = NULL;
  *out_len = 0;
  /* libsodium's constant-time character lookup maps bytes 0x80-0xFF to the value 63 instead of
   * rejecting them: refuse any non-ASCII byte first. */
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)in[i] >= 0x80) return -1;
  }
  /* No characters are ignored and the whole input must be consumed. libsodium rejects missing
   * or extra padding and non-zero unused bits. */
  if (sodium_base642bin(out, out_size, in, n, NULL, out_len, &end, sodium_variant(variant)) != 0) return -1;
  if (end != in + n) return -1;
  return 0;
}


void galley_hex(char *out, const void *in, size_t n) {
  sodium_bin2hex(out, n * 2 + 1, in, n);
}


void galley_sha256_init(galley_sha256 *h) { crypto_hash_sha256_init(&h->st); }


void galley_sha256_update(galley_sha256 *h, const void *data, size_t n) {
  crypto_hash_sha256_update(&h->st, data, n);
}


void galley_sha256_hex(const galley_sha256 *h, char out[GALLEY_SHA256_HEX_LEN + 1]) {
  crypto_hash_sha256_state copy = h->st; /* final() consumes the state: finish a copy */
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&copy, digest);
  galley_hex(out, digest, sizeof digest);
}


void galley_sha256_hex_of(const void *data, size_t n, char out[GALLEY_SHA256_HEX_LEN + 1]) {
  galley_sha256 h;
  galley_sha256_init(&h);
  galley_sha256_update(&h, data, n);
  galley_sha256_hex(&h, out);
}


void galley_random_bytes(void *out, size_t n) { randombytes_buf(out, n); }


int galley_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) return 0;
  return sodium_memcmp(a, b, alen) == 0;
}
