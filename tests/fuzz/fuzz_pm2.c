/* libFuzzer target: PM2 names and log parsing (src/core/pm2.c).
 * - sanitize_name gives a safe name ([A-Za-z0-9-], 1..GALLEY_PM2_NAME_MAX, is_safe), and is
 *   idempotent;
 * - logs_text writes at most n + 1 bytes for any input and any `lines` (no overflow, UBSan). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "pm2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  char name[GALLEY_PM2_NAME_MAX + 1], again[GALLEY_PM2_NAME_MAX + 1];
  size_t n = galley_pm2_sanitize_name(name, s, size);
  if (n == 0 || n > GALLEY_PM2_NAME_MAX || strlen(name) != n) abort();
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) abort();
  }
  if (!galley_pm2_name_is_safe(name, n)) abort();
  if (galley_pm2_sanitize_name(again, name, n) != n || memcmp(again, name, n) != 0) abort();

  /* The first 8 bytes choose `lines` (any long, LONG_MAX and negatives included). */
  long lines = 0;
  if (size >= 8) {
    uint64_t u;
    memcpy(&u, data, 8);
    lines = (long)(u >> 1);
    if (u & 1) lines = -lines;
    s += 8;
    size -= 8;
  }
  char *out = malloc(size + 2);
  if (!out) abort();
  out[size + 1] = 0x5a;
  size_t m = galley_pm2_logs_text(out, s, size, lines);
  if (m > size + 1 || out[size + 1] != 0x5a) abort();
  free(out);
  return 0;
}
