/* libFuzzer target: Retry-After parsing and URL building (src/core/morph.c).
 * - parse_retry_after gives -1 or 0..365 days in ms for any header value;
 * - url_encode keeps only unreserved bytes and %XX, decodes back to the input, and follows the
 *   snprintf contract (same length whatever the cap, always NUL-terminated);
 * - build_path fills {id} and a query pair from the input, with the same contract. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "morph.h"

static int hex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}


static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *z = malloc(size + 1);  /* NUL-terminated copy (headers are C strings) */
  if (!z) abort();
  memcpy(z, data, size);
  z[size] = '\0';
  long ms = galley_morph_parse_retry_after(z, 1700000000);
  if (ms < -1 || ms > 86400L * 365 * 1000) abort();

  size_t n = galley_morph_url_encode((const char *)data, size, NULL, 0);
  char *enc = malloc(n + 1);
  if (!enc) abort();
  if (galley_morph_url_encode((const char *)data, size, enc, n + 1) != n || enc[n] != '\0') abort();
  char small[8];
  if (galley_morph_url_encode((const char *)data, size, small, sizeof small) != n) abort();
  if (memchr(small, '\0', sizeof small) == NULL) abort();
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)enc[i];
    if (c == '%') {
      if (i + 2 >= n) abort();
      int h = hex(enc[i + 1]), l = hex(enc[i + 2]);
      if (h < 0 || l < 0) abort();
      if ((unsigned char)(h * 16 + l) != data[o]) abort();
      if (unreserved(data[o])) abort();  /* encoded although it need not be */
      i += 2;
    } else {
      if (!unreserved(c) || o >= size || c != data[o]) abort();
    }
    o++;
  }
  if (o != size) abort();
  free(enc);

  /* {id} and one query pair from the input, split at the first NUL (C strings). */
  const char *id = z, *qv = z + strlen(z) + (strlen(z) < size ? 1 : 0);
  galley_morph_kv params[] = { { "id", id } };
  galley_morph_kv query[] = { { "metadata[k]", qv } };
  const char *missing = NULL;
  size_t missing_len = 0;
  size_t pn = galley_morph_build_path("/instance/{id}/exec", params, 1, query, 1, NULL, 0, &missing, &missing_len);
  if (pn == (size_t)-1) abort();
  char *path = malloc(pn + 1);
  if (!path) abort();
  if (galley_morph_build_path("/instance/{id}/exec", params, 1, query, 1, path, pn + 1, &missing, &missing_len) != pn)
    abort();
  if (path[pn] != '\0' || strlen(path) != pn) abort();
  if (strncmp(path, "/instance/", 10) != 0) abort();
  /* The id stays one path segment: no '/', '?' or '#' from the input survives unencoded. */
  const char *seg = path + 10, *slash = strchr(seg, '/');
  if (!slash || strncmp(slash, "/exec?", 6) != 0) abort();
  for (const char *c = seg; c < slash; c++)
    if (*c == '?' || *c == '#') abort();
  if (galley_morph_build_path("/instance/{id}", NULL, 0, NULL, 0, NULL, 0, &missing, &missing_len) != (size_t)-1)
    abort();
  free(path);
  free(z);
  return 0;
}
