/* Baseline for bench/http: N sequential GETs with one bare libcurl easy handle (so one kept-alive
 * connection), the bearer key in a header, the body collected and dropped.
 *   bench_http_raw URL N        (the key comes from MORPH_API_KEY, never argv)
 * Prints "raw: N requests in MS ms (RPS req/s), C connections". Exit 1 on any failure. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>


static size_t discard(char *p, size_t size, size_t n, void *ud) {
  size_t *total = ud;
  *total += size * n;
  return size * n;
}


static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}


int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: bench_http_raw URL N   (key in MORPH_API_KEY)\n");
    return 2;
  }
  const char *url = argv[1];
  long n = strtol(argv[2], NULL, 10);
  const char *key = getenv("MORPH_API_KEY");
  if (n <= 0 || !key) {
    fprintf(stderr, "bench_http_raw: need N > 0 and MORPH_API_KEY\n");
    return 2;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) return 1;
  CURL *e = curl_easy_init();
  char auth[512];
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
  struct curl_slist *h = curl_slist_append(NULL, auth);
  h = curl_slist_append(h, "Accept: application/json");
  size_t bytes = 0;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &bytes);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  long connects = 0;
  int rc = 0;
  double t0 = now_ms();
  for (long i = 0; i < n; i++) {
    CURLcode cc = curl_easy_perform(e);
    long status = 0, nc = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
    connects += nc;
    if (cc != CURLE_OK || status != 200) {
      fprintf(stderr, "bench_http_raw: request %ld failed: %s, status %ld\n", i + 1, curl_easy_strerror(cc), status);
      rc = 1;
      break;
    }
  }
  double ms = now_ms() - t0;
  if (rc == 0)
    printf("raw: %ld requests in %.0f ms (%.0f req/s), %ld connections, %zu bytes\n", n, ms,
           (double)n * 1000.0 / ms, connects, bytes);
  curl_slist_free_all(h);
  curl_easy_cleanup(e);
  curl_global_cleanup();
  return rc;
}
