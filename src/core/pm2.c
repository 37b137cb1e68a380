/* PM2 names and log-output cleaning (see pm2.h). */
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "pm2.h"


static bool is_alnum(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}


/* Names PM2 reads as something other than one process name. */
static bool is_reserved_name(const char *s, size_t n) {
  static const char *const words[] = { "all", "default", "Infinity", NULL };
  for (const char *const *w = words; *w; w++)
    if (strlen(*w) == n && strncasecmp(*w, s, n) == 0) return true;
  return false;
}


size_t galley_pm2_sanitize_name(char *out, const char *s, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n && len < GALLEY_PM2_NAME_MAX; i++) {
    unsigned char c = (unsigned char)s[i];
    if (is_alnum(c)) {
      out[len++] = (char)c;
    } else if (len > 0 && out[len - 1] != '-') {
      out[len++] = '-';
    }
  }
  while (len > 0 && out[len - 1] == '-') len--;
  if (len == 0) {
    memcpy(out, "proc", 4);
    len = 4;
  } else if ((out[0] >= '0' && out[0] <= '9') || is_reserved_name(out, len)) {
    size_t keep = len + 2 > GALLEY_PM2_NAME_MAX ? GALLEY_PM2_NAME_MAX - 2 : len;
    memmove(out + 2, out, keep);
    memcpy(out, "p-", 2);
    len = keep + 2;
    while (out[len - 1] == '-') len--;
  }
  out[len] = '\0';
  return len;
}


bool galley_pm2_name_is_safe(const char *s, size_t n) {
  char buf[GALLEY_PM2_NAME_MAX + 1];
  if (n == 0 || n > GALLEY_PM2_NAME_MAX) return false;
  size_t len = galley_pm2_sanitize_name(buf, s, n);
  return len == n && memcmp(buf, s, n) == 0;
}


/* Copies line without ANSI colour sequences (ESC [ params letter) into buf (cap bytes);
 * returns the visible length, or cap + 1 when it does not fit. */
static size_t visible(char *buf, size_t cap, const char *s, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\033' && i + 1 < n && s[i + 1] == '[') {
      i += 2;
      while (i < n && !isalpha((unsigned char)s[i])) i++;
      continue;
    }
    if (len == cap) return cap + 1;
    buf[len++] = s[i];
  }
  return len;
}


static bool starts_with(const char *s, size_t n, const char *prefix) {
  size_t p = strlen(prefix);
  return n >= p && memcmp(s, prefix, p) == 0;
}


/* "<absolute path> last N lines:" (N must equal `lines` when lines > 0). */
static bool is_file_header(const char *s, size_t n, long lines) {
  char buf[4096];
  size_t len = visible(buf, sizeof buf, s, n);
  if (len > sizeof buf || len == 0 || buf[0] != '/') return false;
  static const char tail[] = " lines:";
  size_t tl = sizeof tail - 1;
  if (len < tl || memcmp(buf + len - tl, tail, tl) != 0) return false;
  size_t end = len - tl, start = end;
  while (start > 0 && buf[start - 1] >= '0' && buf[start - 1] <= '9') start--;
  if (start == end || start < 6 || memcmp(buf + start - 6, " last ", 6) != 0) return false;
  if (lines <= 0) return true;
  /* v * 10 + d <= lines, checked before it is computed: a header's digits never overflow. */
  long v = 0;
  for (size_t i = start; i < end; i++) {
    long d = buf[i] - '0';
    if (v > (lines - d) / 10) return false;
    v = v * 10 + d;
  }
  return v == lines;
}


size_t galley_pm2_logs_text(char *out, const char *s, size_t n, long lines) {
  size_t len = 0;
  bool first = true, pending_blank = false;
  size_t pos = 0;
  while (pos < n) {
    const char *nl = memchr(s + pos, '\n', n - pos);
    size_t end = nl ? (size_t)(nl - s) : n;
    const char *line = s + pos;
    size_t ll = end - pos;
    pos = nl ? end + 1 : n;
    if (first) {
      first = false;
      char buf[16];
      size_t vl = visible(buf, sizeof buf, line, ll);
      if (vl >= 9 && starts_with(buf, vl > sizeof buf ? sizeof buf : vl, "[TAILING]")) continue;
    }
    if (is_file_header(line, ll, lines)) {
      pending_blank = false;  /* the separator PM2 printed after the previous file */
      continue;
    }
    if (pending_blank) out[len++] = '\n';
    pending_blank = false;
    if (ll == 0) {
      pending_blank = true;
      continue;
    }
    memcpy(out + len, line, ll);
    len += ll;
    out[len++] = '\n';
  }
  return len;
}
