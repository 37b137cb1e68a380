/* OpenSSL's libcrypto, loaded on first use, for SHA-256 only. Its SHA-256 uses the CPU's SHA
 * extensions where there are some (about 1.6 GB/s here, six times libsodium's portable code):
 * file transfers hash every chunk on both ends. galley links no libcrypto at build time, for the
 * same reason as libcurl (start-up; see dyn_curl.h); libcurl's OpenSSL build needs libcrypto, so
 * it is on every machine that runs galley. When it cannot be loaded, codec.c falls back to
 * libsodium (same digests, slower). */
#ifndef GALLEY_DYN_CRYPTO_H
#define GALLEY_DYN_CRYPTO_H

#define OPENSSL_SUPPRESS_DEPRECATED 1 /* SHA256_Init & co: plain-memory state, no allocation */
#include <openssl/sha.h>

struct galley_crypto_api {
  int (*sha256_init)(SHA256_CTX *);
  int (*sha256_update)(SHA256_CTX *, const void *, size_t);
  int (*sha256_final)(unsigned char *, SHA256_CTX *);
};

/* The loaded table, or NULL when libcrypto (libcrypto.so.3) cannot be loaded or lacks a symbol.
 * The first call loads it (a few milliseconds); GALLEY_SHA256=libsodium in the environment
 * makes it NULL (for comparisons). Thread-safe. */
const struct galley_crypto_api *galley_crypto(void);

#endif
