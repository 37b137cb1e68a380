/* Encodings and digests: base64 (strict, table-driven: not constant-time), and over libsodium
 * SHA-256, random bytes, hex and constant-time comparison. sodium_init() must have run (main.c
 * does it before any Lua state). */
#ifndef GALLEY_CODEC_H
#define GALLEY_CODEC_H

#include <stddef.h>
#include <sodium.h>
#include "dyn_crypto.h"

enum { GALLEY_B64_STANDARD, GALLEY_B64_URLSAFE };  /* standard pads with '='; urlsafe has none */

#define GALLEY_SHA256_HEX_LEN 64

/* Bytes needed to encode n input bytes, including the terminating NUL; 0 if n is too large. */
size_t galley_b64_encoded_size(size_t n, int variant);

/* Writes the encoding of in[0..n) and a NUL into out (out_size from galley_b64_encoded_size).
 * Returns the encoded length (without the NUL). */
size_t galley_b64_encode(char *out, size_t out_size, const void *in, size_t n, int variant);

/* Largest decoded size of an n-character input. */
size_t galley_b64_decoded_max(size_t n);

/* Decodes in[0..n) into out. Strict: no whitespace, exact padding for standard and none for
 * urlsafe, unused bits zero. Returns 0 with *out_len set, or -1 for invalid input. */
int galley_b64_decode(void *out, size_t out_size, const char *in, size_t n, int variant, size_t *out_len);

/* Lowercase hex of in[0..n) into out (2n + 1 bytes, NUL-terminated). */
void galley_hex(char *out, const void *in, size_t n);

/* Streaming SHA-256: libcrypto's (SHA extensions) when it loads, else libsodium's; see
 * dyn_crypto.h. Plain memory: nothing to free. */
typedef struct {
  int openssl; /* which state below is in use */
  union {
    crypto_hash_sha256_state sodium;
    SHA256_CTX openssl;
  } st;
} galley_sha256;

void galley_sha256_init(galley_sha256 *h);
/* The same with libsodium whatever loads (small inputs; comparisons). */
void galley_sha256_init_libsodium(galley_sha256 *h);
/* Which implementation galley_sha256_init picks: "openssl" or "libsodium". */
const char *galley_sha256_backend(void);
void galley_sha256_update(galley_sha256 *h, const void *data, size_t n);
/* Lowercase hex digest of everything so far into out (65 bytes); h can keep being updated. */
void galley_sha256_hex(const galley_sha256 *h, char out[GALLEY_SHA256_HEX_LEN + 1]);

/* One-shot SHA-256 of data[0..n) as lowercase hex. */
void galley_sha256_hex_of(const void *data, size_t n, char out[GALLEY_SHA256_HEX_LEN + 1]);

/* n bytes from the system CSPRNG. */
void galley_random_bytes(void *out, size_t n);

/* 1 when a[0..alen) equals b[0..blen), in time that depends only on the lengths. */
int galley_equal(const void *a, size_t alen, const void *b, size_t blen);

/* The JSON string literal of n bytes (quotes included): `"`, `\` and control characters
 * escaped (\b \f \n \r \t, else \u00XX), every other byte as it is (UTF-8 passes through;
 * `/` is not escaped). galley_json_quoted_size gives the exact length to allocate. */
size_t galley_json_quoted_size(const char *s, size_t n);
size_t galley_json_quote(char *out, const char *s, size_t n);

#endif
