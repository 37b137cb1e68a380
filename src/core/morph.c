/* Morph Cloud API client core; see morph.h. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "dyn_curl.h"
#include <sodium.h>
#include "morph.h"

#ifndef GALLEY_VERSION
#define GALLEY_VERSION "0"
#endif

/* The one endpoint table (paths from the official SDKs; see docs/reference morph-api.md §4).
 * Creating or running calls are not idempotent; reboot is counted among them (it restarts
 * whatever runs in the VM), pause/resume/metadata/ttl/wake-on/expose/hide/key rotation are not. */
const galley_morph_endpoint galley_morph_endpoints[] = {
  /* name                        method    path                                         idem   body   resource    stamp                sse */
  { "images.list",               "GET",    "/image",                                    true,  false, NULL,       NULL,                false },
  { "snapshots.list",            "GET",    "/snapshot",                                 true,  false, NULL,       NULL,                false },
  { "snapshots.list_page",       "GET",    "/snapshot/list",                            true,  false, NULL,       NULL,                false },
  { "snapshots.create",          "POST",   "/snapshot",                                 false, true,  NULL,       NULL,                false },
  { "snapshots.get",             "GET",    "/snapshot/{snapshot_id}",                   true,  false, "snapshot", NULL,                false },
  { "snapshots.delete",          "DELETE", "/snapshot/{snapshot_id}",                   true,  false, "snapshot", NULL,                false },
  { "snapshots.metadata",        "POST",   "/snapshot/{snapshot_id}/metadata",          true,  true,  "snapshot", NULL,                false },
  { "snapshots.ttl",             "POST",   "/snapshot/{snapshot_id}/ttl",               true,  true,  "snapshot", NULL,                false },
  { "snapshots.boot",            "POST",   "/snapshot/{snapshot_id}/boot",              false, true,  "snapshot", "metadata",          false },
  { "instances.list",            "GET",    "/instance",                                 true,  false, NULL,       NULL,                false },
  { "instances.list_page",       "GET",    "/instance/list",                            true,  false, NULL,       NULL,                false },
  { "instances.start",           "POST",   "/instance?snapshot_id={snapshot_id}",       false, true,  "snapshot", "metadata",          false },
  { "instances.get",             "GET",    "/instance/{instance_id}",                   true,  false, "instance", NULL,                false },
  { "instances.stop",            "DELETE", "/instance/{instance_id}",                   true,  false, "instance", NULL,                false },
  { "instances.pause",           "POST",   "/instance/{instance_id}/pause",             true,  false, "instance", NULL,                false },
  { "instances.resume",          "POST",   "/instance/{instance_id}/resume",            true,  false, "instance", NULL,                false },
  { "instances.reboot",          "POST",   "/instance/{instance_id}/reboot",            false, true,  "instance", NULL,                false },
  { "instances.snapshot",        "POST",   "/instance/{instance_id}/snapshot",          false, true,  "instance", NULL,                false },
  { "instances.branch",          "POST",   "/instance/{instance_id}/branch",            false, true,  "instance", "instance_metadata", false },
  { "instances.exec",            "POST",   "/instance/{instance_id}/exec",              false, true,  "instance", NULL,                false },
  { "instances.exec_sse",        "POST",   "/instance/{instance_id}/exec/sse",          false, true,  "instance", NULL,                true  },
  { "instances.metadata",        "POST",   "/instance/{instance_id}/metadata",          true,  true,  "instance", NULL,                false },
  { "instances.ttl",             "POST",   "/instance/{instance_id}/ttl",               true,  true,  "instance", NULL,                false },
  { "instances.wake_on",         "POST",   "/instance/{instance_id}/wake-on",           true,  true,  "instance", NULL,                false },
  { "instances.http_expose",     "POST",   "/instance/{instance_id}/http",              true,  true,  "instance", NULL,                false },
  { "instances.http_hide",       "DELETE", "/instance/{instance_id}/http/{service_name}", true, false, "instance", NULL,                false },
  { "instances.ssh_key",         "GET",    "/instance/{instance_id}/ssh/key",           true,  false, "instance", NULL,                false },
  { "instances.ssh_key_rotate",  "POST",   "/instance/{instance_id}/ssh/key",           true,  false, "instance", NULL,                false },
};
const size_t galley_morph_nendpoints = sizeof galley_morph_endpoints / sizeof galley_morph_endpoints[0];

struct galley_morph_client {
  char *api_key;
  char *auth_header;   /* "Authorization: Bearer <key>", wiped on free */
  char *base_url;      /* no trailing slash */
  long connect_timeout_ms;
  long timeout_ms;
  bool warn;           /* insecure=true: say so on every request */
};


const galley_morph_endpoint *galley_morph_endpoint_find(const char *name) {
  if (!name) return NULL;
  size_t n = strlen(name);
  for (size_t i = 0; i < galley_morph_nendpoints; i++) {
    const char *e = galley_morph_endpoints[i].name;
    if (strlen(e) != n) continue;
    /* "instances_get" matches "instances.get": the first '_' stands for the dot. */
    const char *dot = strchr(e, '.');
    size_t d = (size_t)(dot - e);
    if (strncmp(e, name, d) == 0 && (name[d] == '.' || name[d] == '_') &&
        strcmp(e + d + 1, name + d + 1) == 0)
      return &galley_morph_endpoints[i];
  }
  return NULL;
}


static bool unreserved(unsigned char c) {
  return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}


/* Appends bytes to out[*n] (writing only while room remains); counts all of them. */
static void put(char *out, size_t cap, size_t *n, const char *s, size_t len) {
  for (size_t i = 0; i < len; i++, (*n)++)
    if (out && *n + 1 < cap) out[*n] = s[i];
}


static void put_encoded(char *out, size_t cap, size_t *n, const char *s, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (unreserved(c)) {
      put(out, cap, n, (const char *)&s[i], 1);
    } else {
      char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
      put(out, cap, n, esc, 3);
    }
  }
}


static void terminate(char *out, size_t cap, size_t n) {
  if (out && cap > 0) out[n < cap ? n : cap - 1] = '\0';
}


size_t galley_morph_url_encode(const char *s, size_t len, char *out, size_t cap) {
  size_t n = 0;
  put_encoded(out, cap, &n, s, len);
  terminate(out, cap, n);
  return n;
}


size_t galley_morph_build_path(const char *tmpl, const galley_morph_kv *params, size_t nparams,
                               const galley_morph_kv *query, size_t nquery, char *out, size_t cap,
                               const char **missing, size_t *missing_len) {
  size_t n = 0;
  bool has_query = false;
  for (const char *p = tmpl; *p;) {
    if (*p == '?') has_query = true;
    if (*p != '{') {
      put(out, cap, &n, p++, 1);
      continue;
    }
    const char *name = p + 1, *end = strchr(name, '}');
    if (!end) {  /* a lone brace is copied as it is */
      put(out, cap, &n, p++, 1);
      continue;
    }
    size_t len = (size_t)(end - name);
    const char *value = NULL;
    for (size_t i = 0; i < nparams; i++)
      if (strlen(params[i].key) == len && strncmp(params[i].key, name, len) == 0) value = params[i].value;
    if (!value) {
      if (missing) *missing = name;
      if (missing_len) *missing_len = len;
      terminate(out, cap, 0);
      return (size_t)-1;
    }
    put_encoded(out, cap, &n, value, strlen(value));
    p = end + 1;
  }
  for (size_t i = 0; i < nquery; i++) {
    put(out, cap, &n, has_query ? "&" : "?", 1);
    has_query = true;
    put_encoded(out, cap, &n, query[i].key, strlen(query[i].key));
    put(out, cap, &n, "=", 1);
    put_encoded(out, cap, &n, query[i].value, strlen(query[i].value));
  }
  terminate(out, cap, n);
  return n;
}


long galley_morph_parse_retry_after(const char *value, int64_t now) {
  if (!value) return -1;
  while (*value == ' ' || *value == '\t') value++;
  if (!*value) return -1;
  if (isdigit((unsigned char)*value)) {
    char *end;
    double s = strtod(value, &end);
    while (*end == ' ' || *end == '\t') end++;
    if (*end || s < 0) return -1;
    if (s > 86400.0 * 365) s = 86400.0 * 365;
    return (long)(s * 1000.0 + 0.5);
  }
  time_t t = curl_getdate(value, NULL);
  if (t == (time_t)-1) return -1;
  /* Same one-year cap as delta-seconds, applied before multiplying (a date in the year 20115
   * gave more than a year, and d * 1000 could overflow). */
  int64_t d = (int64_t)t - now;
  if (d > 86400 * 365) d = 86400 * 365;
  return d <= 0 ? 0 : (long)(d * 1000);
}


void galley_morph_request_token(char out[33]) {
  unsigned char raw[16];
  randombytes_buf(raw, sizeof raw);
  sodium_bin2hex(out, 33, raw, sizeof raw);
}


/* --- server-sent events ------------------------------------------------------------------ */

/* Reports one complete line (no newline) if it is a data line. */
static int sse_line(const char *line, size_t len, galley_sse_event_fn fn, void *ud) {
  if (len > 0 && line[len - 1] == '\r') len--;
  if (len < 5 || memcmp(line, "data:", 5) != 0) return 0;
  line += 5;
  len -= 5;
  if (len > 0 && *line == ' ') line++, len--;
  return fn(ud, line, len);
}


int galley_sse_feed(galley_sse *p, const char *data, size_t len, galley_sse_event_fn fn, void *ud) {
  while (len > 0) {
    const char *nl = memchr(data, '\n', len);
    size_t take = nl ? (size_t)(nl - data) : len;
    if (p->len + take + 1 > p->cap) {
      size_t cap = p->cap ? p->cap : 256;
      while (cap < p->len + take + 1) cap *= 2;
      char *nb = realloc(p->buf, cap);
      if (!nb) return -1;
      p->buf = nb;
      p->cap = cap;
    }
    memcpy(p->buf + p->len, data, take);
    p->len += take;
    if (!nl) break;
    size_t line_len = p->len;
    p->len = 0;
    int rc = sse_line(p->buf, line_len, fn, ud);
    if (rc) return rc;
    data += take + 1;
    len -= take + 1;
  }
  return 0;
}


int galley_sse_flush(galley_sse *p, galley_sse_event_fn fn, void *ud) {
  if (p->len == 0) return 0;
  size_t n = p->len;
  p->len = 0;
  return sse_line(p->buf, n, fn, ud);
}


void galley_sse_free(galley_sse *p) {
  free(p->buf);
  memset(p, 0, sizeof *p);
}


/* --- the client ----------------------------------------------------------------------------- */

/* Host part of an http(s) URL is a loopback name or address. */
static bool loopback_url(const char *url) {
  const char *h = strstr(url, "://");
  if (!h) return false;
  h += 3;
  const char *at = strpbrk(h, "@/");
  if (at && *at == '@') h = at + 1;
  size_t n = strcspn(h, ":/?#");
  if (*h == '[') n = strcspn(h, "]/") + (h[strcspn(h, "]/")] == ']');
  if ((n == 9 && strncasecmp(h, "localhost", 9) == 0) || (n == 5 && strncmp(h, "[::1]", 5) == 0))
    return true;
  return n >= 4 && strncmp(h, "127.", 4) == 0;
}


static void set_err(galley_morph_error *err, const char *code, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static void set_err(galley_morph_error *err, const char *code, const char *fmt, ...) {
  if (!err) return;
  err->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
}


galley_morph_client *galley_morph_client_new(const galley_morph_config *cfg, galley_morph_error *err) {
  if (err) memset(err, 0, sizeof *err);
  const char *base = cfg->base_url && *cfg->base_url ? cfg->base_url : GALLEY_MORPH_DEFAULT_BASE_URL;
  if (!cfg->api_key || !*cfg->api_key) {
    set_err(err, "AUTHENTICATION_ERROR", "no Morph API key: set MORPH_API_KEY or pass api_key");
    return NULL;
  }
  for (const char *k = cfg->api_key; *k; k++) {
    if ((unsigned char)*k < 0x21 || *k == 0x7f) {
      set_err(err, "AUTHENTICATION_ERROR", "the Morph API key contains spaces or control characters");
      return NULL;
    }
  }
  bool tls = strncmp(base, "https://", 8) == 0;
  if (!tls && strncmp(base, "http://", 7) != 0) {
    set_err(err, "VALIDATION_ERROR", "base_url must start with https:// (or http:// for loopback)");
    return NULL;
  }
  if (!tls && !loopback_url(base) && !cfg->insecure) {
    set_err(err, "VALIDATION_ERROR",
            "base_url is plain http:// to a remote host; the API key would travel in clear text "
            "(use https://, or insecure=true)");
    return NULL;
  }
  galley_morph_client *c = calloc(1, sizeof *c);
  if (!c) goto oom;
  c->api_key = strdup(cfg->api_key);
  c->base_url = strdup(base);
  size_t alen = strlen(cfg->api_key) + sizeof "Authorization: Bearer ";
  c->auth_header = malloc(alen);
  if (!c->api_key || !c->base_url || !c->auth_header) goto oom;
  snprintf(c->auth_header, alen, "Authorization: Bearer %s", cfg->api_key);
  size_t bl = strlen(c->base_url);
  while (bl > 0 && c->base_url[bl - 1] == '/') c->base_url[--bl] = '\0';
  c->connect_timeout_ms = cfg->connect_timeout_ms;
  c->timeout_ms = cfg->timeout_ms;
  c->warn = cfg->insecure;
  return c;
oom:
  galley_morph_client_free(c);
  set_err(err, "NETWORK_ERROR", "out of memory");
  return NULL;
}


void galley_morph_client_free(galley_morph_client *c) {
  if (!c) return;
  if (c->api_key) sodium_memzero(c->api_key, strlen(c->api_key));
  if (c->auth_header) sodium_memzero(c->auth_header, strlen(c->auth_header));
  free(c->api_key);
  free(c->auth_header);
  free(c->base_url);
  free(c);
}


const char *galley_morph_client_base_url(const galley_morph_client *c) { return c->base_url; }


void galley_morph_redact(const galley_morph_client *c, char *buf, size_t len) {
  size_t kl = strlen(c->api_key);
  if (kl == 0 || len < kl) return;
  for (size_t i = 0; i + kl <= len; i++)
    if (memcmp(buf + i, c->api_key, kl) == 0) memset(buf + i, '*', kl);
}


int galley_morph_prepare(galley_morph_client *c, const galley_morph_endpoint *ep, const char *path,
                         const char *body, size_t body_len, long timeout_ms, galley_morph_prepared *p) {
  memset(p, 0, sizeof *p);
  if ((size_t)snprintf(p->url, sizeof p->url, "%s%s", c->base_url, path) >= sizeof p->url) return -1;
  if (c->warn)
    fprintf(stderr, "galley: warning: Morph client created with insecure=true (%s %s)\n",
            ep->method, c->base_url);
  p->headers[0] = c->auth_header;
  p->headers[1] = ep->sse ? "Accept: text/event-stream" : "Accept: application/json";
  p->headers[2] = "Content-Type: application/json";
  p->headers[3] = "User-Agent: galley/" GALLEY_VERSION;
  p->req = (galley_http_request){
    .method = ep->method, .url = p->url, .headers = p->headers, .nheaders = 4,
    .body = body, .body_len = body_len,
    .timeout_ms = timeout_ms == 0 ? c->timeout_ms : timeout_ms < 0 ? 0 : timeout_ms,
    .connect_timeout_ms = c->connect_timeout_ms,
    .stream = ep->sse,
    .no_resend = !ep->idempotent,
  };
  return 0;
}
