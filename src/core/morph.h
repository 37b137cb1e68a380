/* Morph Cloud API client core: the endpoint table, URL building, Retry-After and server-sent
 * event parsing, and requests ready for http.h. JSON is the binding's business; this file moves
 * bytes; the policy (request tokens, retries, what a status means, readiness polling)
 * is Lua's (lua/galley/morph_client.lua). The API key is only ever placed in the Authorization
 * header. */
#ifndef GALLEY_MORPH_H
#define GALLEY_MORPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "http.h"

#define GALLEY_MORPH_DEFAULT_BASE_URL "https://cloud.morph.so/api"
#define GALLEY_MORPH_TOKEN_KEY "galley_request_token"

typedef struct {
  const char *name;      /* "instances.get"; the Lua method is instances_get */
  const char *method;    /* "GET", "POST", "DELETE" */
  const char *path;      /* template after the base URL: "/instance/{instance_id}" */
  bool idempotent;       /* safe to send twice */
  bool body;             /* takes a JSON body (before the query table in convenience methods) */
  const char *resource;  /* "instance", "snapshot": err.resource = "<kind>:<first path param>" */
  const char *stamp;     /* body field that carries the request token, or NULL */
  bool sse;              /* the response is a server-sent event stream */
} galley_morph_endpoint;

extern const galley_morph_endpoint galley_morph_endpoints[];
extern const size_t galley_morph_nendpoints;

/* Looks up "instances.get" or "instances_get". NULL when unknown. */
const galley_morph_endpoint *galley_morph_endpoint_find(const char *name);

typedef struct {
  const char *key;
  const char *value;
} galley_morph_kv;

/* Percent-encodes everything but RFC 3986 unreserved characters. Writes at most cap bytes
 * (NUL included) to out (may be NULL) and returns the full length, like snprintf. */
size_t galley_morph_url_encode(const char *s, size_t len, char *out, size_t cap);

/* Fills a path template ({name} -> encoded value of params[name]) and appends the query pairs
 * (keys and values encoded, '?' or '&' as needed). snprintf-style: returns the full length, or
 * (size_t)-1 with *missing set to the unfilled parameter's name (pointing into tmpl, not
 * NUL-terminated at the brace: its length is stored in *missing_len). */
size_t galley_morph_build_path(const char *tmpl, const galley_morph_kv *params, size_t nparams,
                               const galley_morph_kv *query, size_t nquery, char *out, size_t cap,
                               const char **missing, size_t *missing_len);

/* Retry-After as milliseconds from now, or -1 when absent or unparsable. Accepts delta-seconds
 * and HTTP dates; a date in the past gives 0. `now` is Unix time in seconds. */
long galley_morph_parse_retry_after(const char *value, int64_t now);

/* 32 lowercase hex characters + NUL, from libsodium's CSPRNG. */
void galley_morph_request_token(char out[33]);

/* Server-sent events: splits the stream into lines and reports each "data:" payload. */
typedef struct {
  char *buf;
  size_t len, cap;
} galley_sse;
/* Return non-zero to stop; galley_sse_feed then returns that value. */
typedef int (*galley_sse_event_fn)(void *ud, const char *data, size_t len);
/* 0, the callback's non-zero result, or -1 when out of memory. */
int galley_sse_feed(galley_sse *p, const char *data, size_t len, galley_sse_event_fn fn, void *ud);
/* Delivers a last line that had no newline. */
int galley_sse_flush(galley_sse *p, galley_sse_event_fn fn, void *ud);
void galley_sse_free(galley_sse *p);

/* --- the client ------------------------------------------------------------------------ */

typedef struct galley_morph_client galley_morph_client;

typedef struct {
  const char *api_key;
  const char *base_url;      /* NULL: GALLEY_MORPH_DEFAULT_BASE_URL */
  long connect_timeout_ms;
  long timeout_ms;
  bool insecure;             /* allow plain http:// to a non-loopback host; warns on every use */
} galley_morph_config;

typedef struct {
  const char *code;          /* NULL: no error */
  char message[384];
} galley_morph_error;

/* One request ready for http.h: the URL and headers live here. */
typedef struct {
  char url[4096];
  const char *headers[4];
  galley_http_request req;
} galley_morph_prepared;

/* NULL with err set (VALIDATION_ERROR for a bad base URL, AUTHENTICATION_ERROR without a key). */
galley_morph_client *galley_morph_client_new(const galley_morph_config *cfg, galley_morph_error *err);
void galley_morph_client_free(galley_morph_client *c);
const char *galley_morph_client_base_url(const galley_morph_client *c);

/* Fills p for endpoint ep with the built path (+ query) and an optional JSON body (both must
 * outlive the transfer's start). timeout_ms: 0 the client's, < 0 none. Non-idempotent calls
 * forbid libcurl's silent resend (no_resend); SSE endpoints stream. -1 when the URL is too long. */
int galley_morph_prepare(galley_morph_client *c, const galley_morph_endpoint *ep, const char *path,
                         const char *body, size_t body_len, long timeout_ms, galley_morph_prepared *p);

/* Overwrites every occurrence of the client's API key in buf with '*'. */
void galley_morph_redact(const galley_morph_client *c, char *buf, size_t len);

#endif
