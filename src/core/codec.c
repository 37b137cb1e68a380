/* Encodings and digests; see codec.h. */
#include <stdint.h>
#include <string.h>
#include "codec.h"


/* Base64 is table-driven here (libsodium's constant-time coder took ~5 ms to encode and ~9 ms
 * to decode a MiB, the largest local cost of a file transfer); its output and its strictness
 * are libsodium's, checked against it in tests/c/test_codec.c. */
static const char STD_ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char URL_ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Value of each byte in either alphabet, -1 for bytes outside it. */
static const signed char STD_VALUE[256] = {
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
  52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
  -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
  15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
  -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
  41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};


static const signed char URL_VALUE[256] = {
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
  52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
  -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
  15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
  -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
  41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
  -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};


static int sodium_variant(int variant) {
  return variant == GALLEY_B64_URLSAFE ? sodium_base64_VARIANT_URLSAFE_NO_PADDING : sodium_base64_VARIANT_ORIGINAL;
}


size_t galley_b64_encoded_size(size_t n, int variant) {
  if (n > SIZE_MAX / 4 * 3 - 3) return 0;
  return sodium_base64_ENCODED_LEN(n, sodium_variant(variant));
}


size_t galley_b64_encode(char *out, size_t out_size, const void *in, size_t n, int variant) {
  const char *alpha = variant == GALLEY_B64_URLSAFE ? URL_ALPHABET : STD_ALPHABET;
  const unsigned char *s = in;
  size_t len = n / 3 * 4 + (n % 3 == 0 ? 0 : variant == GALLEY_B64_URLSAFE ? n % 3 + 1 : 4);
  if (out_size == 0) return 0;
  if (len + 1 > out_size) {
    out[0] = '\0';
    return 0;
  }
  char *o = out;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    o[0] = alpha[v >> 18];
    o[1] = alpha[v >> 12 & 63];
    o[2] = alpha[v >> 6 & 63];
    o[3] = alpha[v & 63];
    o += 4;
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)s[i] << 16;
    *o++ = alpha[v >> 18];
    *o++ = alpha[v >> 12 & 63];
    if (variant != GALLEY_B64_URLSAFE) {
      *o++ = '=';
      *o++ = '=';
    }
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
    *o++ = alpha[v >> 18];
    *o++ = alpha[v >> 12 & 63];
    *o++ = alpha[v >> 6 & 63];
    if (variant != GALLEY_B64_URLSAFE) *o++ = '=';
  }
  *o = '\0';
  return (size_t)(o - out);
}


size_t galley_b64_decoded_max(size_t n) { return n / 4 * 3 + 3; }


int galley_b64_decode(void *out, size_t out_size, const char *in, size_t n, int variant, size_t *out_len) {
  const unsigned char *s = (const unsigned char *)in;
  const signed char *value = variant == GALLEY_B64_URLSAFE ? URL_VALUE : STD_VALUE;
  unsigned char *o = out;
  *out_len = 0;
  /* Strict: no characters are ignored (bytes 0x80-0xFF, NUL and whitespace are invalid), the
   * standard variant has exactly the padding its length needs, the urlsafe one none ('=' is
   * not in its alphabet), and the unused bits of the last character are zero. */
  size_t data = n;
  if (variant != GALLEY_B64_URLSAFE) {
    if (n % 4 != 0) return -1;
    if (n > 0 && s[n - 1] == '=') data--;
    if (n > 1 && s[n - 1] == '=' && s[n - 2] == '=') data--;
  }
  size_t rest = data % 4;
  if (rest == 1) return -1;
  if (data / 4 * 3 + (rest ? rest - 1 : 0) > out_size) return -1;
  size_t i = 0;
  for (; i + 4 <= data; i += 4) {
    int a = value[s[i]], b = value[s[i + 1]], c = value[s[i + 2]], d = value[s[i + 3]];
    if ((a | b | c | d) < 0) return -1;
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    o[0] = (unsigned char)(v >> 16);
    o[1] = (unsigned char)(v >> 8);
    o[2] = (unsigned char)v;
    o += 3;
  }
  if (rest == 2) {
    int a = value[s[i]], b = value[s[i + 1]];
    if ((a | b) < 0 || (b & 15) != 0) return -1;
    *o++ = (unsigned char)(a << 2 | b >> 4);
  } else if (rest == 3) {
    int a = value[s[i]], b = value[s[i + 1]], c = value[s[i + 2]];
    if ((a | b | c) < 0 || (c & 3) != 0) return -1;
    *o++ = (unsigned char)(a << 2 | b >> 4);
    *o++ = (unsigned char)((b & 15) << 4 | c >> 2);
  }
  *out_len = (size_t)(o - (unsigned char *)out);
  return 0;
}


void galley_hex(char *out, const void *in, size_t n) {
  sodium_bin2hex(out, n * 2 + 1, in, n);
}


void galley_sha256_init_libsodium(galley_sha256 *h) {
  h->openssl = 0;
  crypto_hash_sha256_init(&h->st.sodium);
}


void galley_sha256_init(galley_sha256 *h) {
  const struct galley_crypto_api *c = galley_crypto();
  if (!c) {
    galley_sha256_init_libsodium(h);
    return;
  }
  h->openssl = 1;
  c->sha256_init(&h->st.openssl);
}


const char *galley_sha256_backend(void) { return galley_crypto() ? "openssl" : "libsodium"; }


void galley_sha256_update(galley_sha256 *h, const void *data, size_t n) {
  if (h->openssl) galley_crypto()->sha256_update(&h->st.openssl, data, n);
  else crypto_hash_sha256_update(&h->st.sodium, data, n);
}


void galley_sha256_hex(const galley_sha256 *h, char out[GALLEY_SHA256_HEX_LEN + 1]) {
  galley_sha256 copy = *h; /* final() consumes the state: finish a copy */
  unsigned char digest[crypto_hash_sha256_BYTES];
  if (copy.openssl) galley_crypto()->sha256_final(digest, &copy.st.openssl);
  else crypto_hash_sha256_final(&copy.st.sodium, digest);
  galley_hex(out, digest, sizeof digest);
}


void galley_sha256_hex_of(const void *data, size_t n, char out[GALLEY_SHA256_HEX_LEN + 1]) {
  galley_sha256 h;
  if (n < 16384) galley_sha256_init_libsodium(&h); /* small: not worth loading libcrypto for */
  else galley_sha256_init(&h);
  galley_sha256_update(&h, data, n);
  galley_sha256_hex(&h, out);
}


void galley_random_bytes(void *out, size_t n) { randombytes_buf(out, n); }


int galley_equal(const void *a, size_t alen, const void *b, size_t blen) {
  if (alen != blen) return 0;
  return sodium_memcmp(a, b, alen) == 0;
}


/* Extra bytes a byte costs in a JSON string: 0 as it is, 1 for a two-character escape, 5 for
 * \u00XX. */
static const unsigned char json_extra_of[256] = {
  5, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1, 5, 1, 1, 5, 5, /* \b \t \n \f \r */
  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* " */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* \ */
};
#define json_extra(c) json_extra_of[(unsigned char)(c)]


size_t galley_json_quoted_size(const char *s, size_t n) {
  size_t size = n + 2;
  for (size_t i = 0; i < n; i++) size += json_extra((unsigned char)s[i]);
  return size;
}


size_t galley_json_quote(char *out, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  char *o = out;
  *o++ = '"';
  size_t run = 0; /* bytes copied as they are, in one memcpy */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!json_extra(c)) continue;
    memcpy(o, s + run, i - run);
    o += i - run;
    run = i + 1;
    *o++ = '\\';
    switch (c) {
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '\b': *o++ = 'b'; break;
      case '\f': *o++ = 'f'; break;
      case '\n': *o++ = 'n'; break;
      case '\r': *o++ = 'r'; break;
      case '\t': *o++ = 't'; break;
      default:
        *o++ = 'u';
        *o++ = '0';
        *o++ = '0';
        *o++ = hex[c >> 4];
        *o++ = hex[c & 15];
    }
  }
  memcpy(o, s + run, n - run);
  o += n - run;
  *o++ = '"';
  return (size_t)(o - out);
}
