/* Unit tests for src/core/codec.c: RFC 4648 and FIPS 180-2 vectors, strict decoding. */
#include <stdlib.h>
#include "check.h"
#include "codec.h"

static const char *const rfc4648[][3] = {
  /* input, standard, urlsafe */
  {"", "", ""},
  {"f", "Zg==", "Zg"},
  {"fo", "Zm8=", "Zm8"},
  {"foo", "Zm9v", "Zm9v"},
  {"foob", "Zm9vYg==", "Zm9vYg"},
  {"fooba", "Zm9vYmE=", "Zm9vYmE"},
  {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};


static const char *encode(const char *in, size_t n, int variant) {
  static char out[1024];
  size_t size = galley_b64_encoded_size(n, variant);
  if (size == 0 || size > sizeof out) return NULL;
  galley_b64_encode(out, size, in, n, variant);
  return out;
}


/* Decodes into a static NUL-terminated buffer; NULL when invalid. */
static const char *decode(const char *in, int variant, size_t *len) {
  static char out[1024];
  size_t n = strlen(in);
  if (galley_b64_decoded_max(n) >= sizeof out) return NULL;
  if (galley_b64_decode(out, sizeof out - 1, in, n, variant, len) != 0) return NULL;
  out[*len] = '\0';
  return out;
}


static void codec_should_encode_the_rfc4648_vectors(void) {
  for (size_t i = 0; i < sizeof rfc4648 / sizeof rfc4648[0]; i++) {
    CHECK_STR(encode(rfc4648[i][0], strlen(rfc4648[i][0]), GALLEY_B64_STANDARD), rfc4648[i][1]);
    CHECK_STR(encode(rfc4648[i][0], strlen(rfc4648[i][0]), GALLEY_B64_URLSAFE), rfc4648[i][2]);
  }
}


static void codec_should_decode_the_rfc4648_vectors(void) {
  size_t len;
  for (size_t i = 0; i < sizeof rfc4648 / sizeof rfc4648[0]; i++) {
    CHECK_STR(decode(rfc4648[i][1], GALLEY_B64_STANDARD, &len), rfc4648[i][0]);
    CHECK_STR(decode(rfc4648[i][2], GALLEY_B64_URLSAFE, &len), rfc4648[i][0]);
  }
}


static void codec_should_use_different_alphabets_per_variant(void) {
  const char in[] = {(char)0xfb, (char)0xff, (char)0xbf};
  CHECK_STR(encode(in, 3, GALLEY_B64_STANDARD), "+/+/");
  CHECK_STR(encode(in, 3, GALLEY_B64_URLSAFE), "-_-_");
  CHECK_STR(encode(in, 2, GALLEY_B64_STANDARD), "+/8=");
  CHECK_STR(encode(in, 2, GALLEY_B64_URLSAFE), "-_8");
}


static void codec_should_round_trip_all_256_byte_values(void) {
  char in[256], enc[400], out[300];
  for (int i = 0; i < 256; i++) in[i] = (char)i;
  for (int v = GALLEY_B64_STANDARD; v <= GALLEY_B64_URLSAFE; v++) {
    for (size_t n = 0; n <= 256; n += 1) {
      size_t size = galley_b64_encoded_size(n, v), len = 0;
      CHECK(size <= sizeof enc);
      size_t elen = galley_b64_encode(enc, size, in + 256 - n, n, v);
      CHECK(elen == size - 1);
      CHECK(galley_b64_decode(out, sizeof out, enc, elen, v, &len) == 0);
      CHECK(len == n && memcmp(out, in + 256 - n, n) == 0);
    }
  }
}


static void codec_should_reject_invalid_base64(void) {
  size_t len;
  static const char *const bad_standard[] = {
    "Zg", "Zg=", "Zg===", "Z", "Zm9vY", "Zm9v\n", " Zm9v", "Zm9v ", "Zh==", "Zm9=", "Zm 9v",
    "-_8=", "Zg==Zg==", "====", "Zm9v=", "Z%9v",
  };
  static const char *const bad_urlsafe[] = {"Zg==", "Zg=", "+/8", "Zh", "Z", "Zm9vY", "Zm9v\n", "Zm9", "=="};
  for (size_t i = 0; i < sizeof bad_standard / sizeof bad_standard[0]; i++) {
    const char *r = decode(bad_standard[i], GALLEY_B64_STANDARD, &len);
    if (r) fprintf(stderr, "accepted standard %s\n", bad_standard[i]);
    CHECK(r == NULL);
  }
  for (size_t i = 0; i < sizeof bad_urlsafe / sizeof bad_urlsafe[0]; i++) {
    const char *r = decode(bad_urlsafe[i], GALLEY_B64_URLSAFE, &len);
    if (r) fprintf(stderr, "accepted urlsafe %s\n", bad_urlsafe[i]);
    CHECK(r == NULL);
  }
  /* Bytes 0x80-0xFF are not base64 (libsodium alone takes them as the value 63). */
  static const char *const high[] = {"s\xbd\xbd-", "Zm9\xff", "\x80\x80\x80\x80", "Zm9v\xbf\xbf\xbf\xbf"};
  for (size_t i = 0; i < sizeof high / sizeof high[0]; i++) {
    CHECK(decode(high[i], GALLEY_B64_URLSAFE, &len) == NULL);
    CHECK(decode(high[i], GALLEY_B64_STANDARD, &len) == NULL);
  }
  /* An embedded NUL is an invalid character, not the end of the input. */
  char out[8];
  CHECK(galley_b64_decode(out, sizeof out, "Zm9v\0AAA", 8, GALLEY_B64_STANDARD, &len) == -1);
}


/* The reference: libsodium's coder with the same strictness (what codec.c used before its own
 * tables): no ignored characters, the whole input consumed, bytes 0x80-0xFF refused. */
static int reference_decode(unsigned char *out, size_t out_size, const char *in, size_t n, int variant,
                            size_t *len) {
  const char *end = NULL;
  int v = variant == GALLEY_B64_URLSAFE ? sodium_base64_VARIANT_URLSAFE_NO_PADDING : sodium_base64_VARIANT_ORIGINAL;
  *len = 0;
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)in[i] >= 0x80) return -1;
  }
  if (sodium_base642bin(out, out_size, in, n, NULL, len, &end, v) != 0 || end != in + n) return -1;
  return 0;
}


static void codec_should_code_base64_exactly_as_libsodium(void) {
  /* Encoding: random inputs of every length up to 200 bytes, both variants. */
  unsigned char in[200], got[300], want[300];
  char enc[300], ref[300];
  for (int round = 0; round < 20; round++) {
    randombytes_buf(in, sizeof in);
    for (size_t n = 0; n <= sizeof in; n++) {
      for (int v = GALLEY_B64_STANDARD; v <= GALLEY_B64_URLSAFE; v++) {
        size_t size = galley_b64_encoded_size(n, v);
        galley_b64_encode(enc, size, in, n, v);
        sodium_bin2base64(ref, sizeof ref, in, n,
                          v == GALLEY_B64_URLSAFE ? sodium_base64_VARIANT_URLSAFE_NO_PADDING : sodium_base64_VARIANT_ORIGINAL);
        CHECK_STR(enc, ref);
      }
    }
  }
  /* Decoding: 200,000 random strings of 0-13 characters from both alphabets, '=', and bytes
   * neither takes (NUL, space, newline, '%', 0x80, 0xff): same verdict, same bytes when valid. */
  static const char pool[] = "AZaz09+/-_=Qgw8\0 \n%\x80\xff";
  uint32_t differ = 0, valid = 0;
  for (int i = 0; i < 200000; i++) {
    char s[16];
    size_t n = randombytes_uniform(14);
    for (size_t k = 0; k < n; k++) s[k] = pool[randombytes_uniform(sizeof pool - 1)];
    for (int v = GALLEY_B64_STANDARD; v <= GALLEY_B64_URLSAFE; v++) {
      size_t glen = 0, rlen = 0;
      int g = galley_b64_decode(got, sizeof got, s, n, v, &glen);
      int r = reference_decode(want, sizeof want, s, n, v, &rlen);
      if (g != r || (g == 0 && (glen != rlen || memcmp(got, want, glen) != 0))) differ++;
      if (r == 0) valid++;
    }
  }
  CHECK(differ == 0);
  CHECK(valid > 10000); /* enough valid strings among them to compare the bytes */
}


static void codec_should_hash_the_fips_vectors(void) {
  char hex[GALLEY_SHA256_HEX_LEN + 1];
  galley_sha256_hex_of("", 0, hex);
  CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  galley_sha256_hex_of("abc", 3, hex);
  CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  galley_sha256_hex_of(two, strlen(two), hex);
  CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}


static void codec_should_hash_a_million_as_in_pieces(void) {
  char piece[1000], hex[GALLEY_SHA256_HEX_LEN + 1];
  memset(piece, 'a', sizeof piece);
  galley_sha256 h;
  galley_sha256_init(&h);
  for (int i = 0; i < 1000; i++) galley_sha256_update(&h, piece, sizeof piece);
  galley_sha256_hex(&h, hex);
  CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  /* hex() does not end the stream. */
  galley_sha256_hex(&h, hex);
  CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}


/* libcrypto's SHA-256 (picked when it loads) and libsodium's give the same digests, for random
 * content of every length around the block size and cut into random pieces. */
static void codec_should_hash_with_libcrypto_exactly_as_libsodium(void) {
  CHECK_STR(galley_sha256_backend(), "openssl"); /* libcrypto is on this machine (libcurl's) */
  static unsigned char buf[70000];
  galley_random_bytes(buf, sizeof buf);
  int differ = 0;
  for (size_t n = 0; n < sizeof buf; n = n < 300 ? n + 1 : n * 3 / 2 + 7) {
    galley_sha256 a, b;
    galley_sha256_init(&a);
    CHECK(a.openssl);
    galley_sha256_init_libsodium(&b);
    for (size_t at = 0; at < n;) {
      uint32_t cut = randombytes_uniform(200) == 0 ? (uint32_t)(n - at) : randombytes_uniform(130) + 1;
      size_t take = cut < n - at ? cut : n - at;
      galley_sha256_update(&a, buf + at, take);
      galley_sha256_update(&b, buf + at, take);
      at += take;
    }
    char ha[GALLEY_SHA256_HEX_LEN + 1], hb[GALLEY_SHA256_HEX_LEN + 1];
    galley_sha256_hex(&a, ha);
    galley_sha256_hex(&b, hb);
    differ += strcmp(ha, hb) != 0;
  }
  CHECK(differ == 0);
  /* one-shot: small inputs use libsodium, large ones libcrypto; both agree with a streamed hash */
  char one[GALLEY_SHA256_HEX_LEN + 1], streamed[GALLEY_SHA256_HEX_LEN + 1];
  galley_sha256_hex_of(buf, sizeof buf, one);
  galley_sha256 s;
  galley_sha256_init_libsodium(&s);
  galley_sha256_update(&s, buf, sizeof buf);
  galley_sha256_hex(&s, streamed);
  CHECK_STR(one, streamed);
}


static void codec_should_compare_in_constant_time_by_value(void) {
  CHECK(galley_equal("secret", 6, "secret", 6));
  CHECK(!galley_equal("secret", 6, "secreT", 6));
  CHECK(!galley_equal("secret", 6, "secret!", 7));
  CHECK(galley_equal("", 0, "", 0));
  CHECK(galley_equal("a\0b", 3, "a\0b", 3));
  CHECK(!galley_equal("a\0b", 3, "a\0c", 3));
}


static void codec_should_give_distinct_random_bytes_and_hex(void) {
  unsigned char a[32], b[32];
  char hex[65];
  galley_random_bytes(a, sizeof a);
  galley_random_bytes(b, sizeof b);
  CHECK(memcmp(a, b, sizeof a) != 0);
  galley_hex(hex, "\x00\xff\x10\xab", 4);
  CHECK_STR(hex, "00ff10ab");
}


int main(void) {
  if (sodium_init() < 0) return 1;
  RUN(codec_should_encode_the_rfc4648_vectors);
  RUN(codec_should_decode_the_rfc4648_vectors);
  RUN(codec_should_use_different_alphabets_per_variant);
  RUN(codec_should_round_trip_all_256_byte_values);
  RUN(codec_should_reject_invalid_base64);
  RUN(codec_should_code_base64_exactly_as_libsodium);
  RUN(codec_should_hash_the_fips_vectors);
  RUN(codec_should_hash_a_million_as_in_pieces);
  RUN(codec_should_hash_with_libcrypto_exactly_as_libsodium);
  RUN(codec_should_compare_in_constant_time_by_value);
  RUN(codec_should_give_distinct_random_bytes_and_hex);
  return CHECK_DONE();
}
