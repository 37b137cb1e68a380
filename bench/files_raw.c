/* Baseline for bench/files: the same base64 traffic as a file transfer through the Morph
 * provider, with one bare libcurl easy handle (one kept-alive connection) and nothing else.
 *   bench_files_raw BASE_URL INSTANCE_ID up|decode|down MIB CHUNK_B64 PIECE [REMOTE_PATH]
 * (the key comes from MORPH_API_KEY, never argv)
 *   up    each request is POST /instance/ID/exec {"command": ["/bin/true", <base64 pieces>]}
 *         carrying CHUNK_B64 bytes of base64 (split into PIECE-byte argv elements), freshly
 *         encoded from pseudo-random bytes, until MIB MiB of raw bytes went out;
 *   decode  the same as up, but the instance decodes each request's base64 into REMOTE_PATH
 *         (`base64 -d -i > PATH` reading the pieces back from the shell's /proc/$$/cmdline, as
 *         galley's one-exec writes do): the least work any write through exec does there (no
 *         check, no fsync, no rename), so its rate bounds galley's;
 *   down  each request asks the instance for CHUNK_B64 bytes of base64 of REMOTE_PATH
 *         (tail -c +OFF | head -c LEN | base64 -w0) until MIB MiB of raw bytes came back.
 * Prints "raw: up|down N MiB in MS ms (X MB/s), R requests, C connections". Exit 1 on any
 * failure (transport, HTTP status, or an exec that did not exit 0). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>

#define MIB (1024L * 1024L)

typedef struct {
  char *p;
  size_t n, cap;
} buf;


static void put(buf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (b->n + n + 1 > cap) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      fprintf(stderr, "bench_files_raw: out of memory\n");
      exit(1);
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}


static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }


static size_t collect(char *p, size_t size, size_t n, void *ud) {
  put(ud, p, size * n);
  return size * n;
}


static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}


/* Standard base64 of n bytes into out (4 * ceil(n / 3) bytes, no NUL). */
static void b64(const unsigned char *in, size_t n, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i = 0, o = 0;
  for (; i + 2 < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    out[o++] = tab[v >> 6 & 63];
    out[o++] = tab[v & 63];
  }
  if (i < n) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
    out[o++] = tab[v >> 18 & 63];
    out[o++] = tab[v >> 12 & 63];
    out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
    out[o++] = '=';
  }
}


int main(int argc, char **argv) {
  if (argc < 7 || argc > 8) {
    fprintf(stderr, "usage: bench_files_raw BASE_URL INSTANCE_ID up|decode|down MIB CHUNK_B64 PIECE [REMOTE_PATH]\n"
                    "       (key in MORPH_API_KEY)\n");
    return 2;
  }
  const char *base = argv[1], *id = argv[2], *dir = argv[3];
  long mib = strtol(argv[4], NULL, 10), chunk_b64 = strtol(argv[5], NULL, 10), piece = strtol(argv[6], NULL, 10);
  const char *remote = argc == 8 ? argv[7] : NULL;
  const char *key = getenv("MORPH_API_KEY");
  int decode = strcmp(dir, "decode") == 0;
  int up = decode || strcmp(dir, "up") == 0;
  if ((!up && strcmp(dir, "down") != 0) || mib <= 0 || chunk_b64 < 4 || piece < 4 || !key || (!up && !remote) ||
      (decode && !remote)) {
    fprintf(stderr, "bench_files_raw: bad arguments (or no MORPH_API_KEY)\n");
    return 2;
  }
  piece -= piece % 4;
  long raw_per = 3 * (chunk_b64 / 4);
  long total = mib * MIB;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) return 1;
  CURL *e = curl_easy_init();
  char url[2048], auth[512];
  snprintf(url, sizeof url, "%s/instance/%s/exec", base, id);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
  struct curl_slist *h = curl_slist_append(NULL, auth);
  h = curl_slist_append(h, "Content-Type: application/json");
  h = curl_slist_append(h, "Accept: application/json");
  buf body = {0}, resp = {0};
  unsigned char *raw = malloc((size_t)raw_per);
  char *enc = malloc((size_t)chunk_b64 + 4);
  if (!raw || !enc) return 1;
  unsigned long long x = 0x9E3779B97F4A7C15ULL;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  long requests = 0, connects = 0;
  double t0 = now_ms();
  for (long done = 0; done < total; done += raw_per) {
    long n = total - done < raw_per ? total - done : raw_per;
    body.n = 0;
    if (up) {
      for (long i = 0; i < n; i++) {  /* xorshift: cheap bytes that do not compress */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        raw[i] = (unsigned char)x;
      }
      size_t elen = 4 * (((size_t)n + 2) / 3);
      b64(raw, (size_t)n, enc);
      if (decode) {
        /* base64 -d -i reads the pieces back from the shell's own argv (/proc/$$/cmdline, NULs
         * ignored), past the script and $0: `read` stops at the line break that is $1 (galley's
         * writes skip their longer script with one dd instead) */
        puts_(&body, "{\"command\":[\"/bin/sh\",\"-c\",\"{ read -r _; exec base64 -d -i; } < /proc/$$/cmdline > \\\"$0\\\"\",\"");
        puts_(&body, remote);  /* a plain path: no JSON escaping needed for the bench's paths */
        puts_(&body, "\",\"\\n\"");
      } else {
        puts_(&body, "{\"command\":[\"/bin/true\"");
      }
      for (size_t off = 0; off < elen; off += (size_t)piece) {
        size_t len = elen - off < (size_t)piece ? elen - off : (size_t)piece;
        puts_(&body, ",\"");
        put(&body, enc + off, len);
        puts_(&body, "\"");
      }
      puts_(&body, "]}");
    } else {
      char nums[64];
      puts_(&body, "{\"command\":[\"/bin/sh\",\"-c\",\"tail -c +\\\"$1\\\" -- \\\"$3\\\" | head -c \\\"$2\\\" | base64 -w0\","
                   "\"sh\",\"");
      snprintf(nums, sizeof nums, "%ld\",\"%ld\",\"", done + 1, n);
      puts_(&body, nums);
      puts_(&body, remote);  /* a plain path: no JSON escaping needed for the bench's paths */
      puts_(&body, "\"]}");
    }
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body.p);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body.n);
    resp.n = 0;
    CURLcode cc = curl_easy_perform(e);
    long status = 0, nc = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
    connects += nc;
    requests++;
    if (cc != CURLE_OK || status != 200 || !resp.p || !strstr(resp.p, "\"exit_code\":0")) {
      fprintf(stderr, "bench_files_raw: request %ld failed: %s, status %ld: %.200s\n", requests,
              curl_easy_strerror(cc), status, resp.p ? resp.p : "");
      return 1;
    }
    if (!up && resp.n < (size_t)(4 * ((n + 2) / 3))) {
      fprintf(stderr, "bench_files_raw: request %ld: short answer (%zu bytes)\n", requests, resp.n);
      return 1;
    }
  }
  double ms = now_ms() - t0;
  printf("raw: %s %ld MiB in %.0f ms (%.1f MB/s), %ld requests, %ld connection(s)\n", dir, mib, ms,
         (double)total / 1e6 / (ms / 1000.0), requests, connects);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  free(raw);
  free(enc);
  free(body.p);
  free(resp.p);
  return 0;
}
