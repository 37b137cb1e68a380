/* Morph Cloud API client core: the endpoint table, URL building, error classification, retry
 * planning and the retrying request loop on top of http.h. JSON is the binding's business; this
 * file moves bytes and decides when to try again.
 *
 * Retry rules (galley_morph_plan_retry):
 *   - 429 is retried for every call, honouring Retry-After (seconds or an HTTP date);
 *   - idempotent calls are also retried on 502/503/504, timeouts and network errors;
 *   - calls that create or run something (start, boot, branch, snapshot, exec) are otherwise
 *     retried only when the request provably never reached the server (connect failed);
 *   - never beyond max_attempts, nor when the next wait would pass max_elapsed_ms.
 * Delays grow exponentially from base_delay_ms to max_delay_ms with "equal jitter" (half fixed,
 * half random). The API key is only ever placed in the Authorization header. */
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

/* Error code for an HTTP status: VALIDATION_ERROR (400, 422, other 4xx), AUTHENTICATION_ERROR
 * (401, 403), NOT_FOUND (404), RATE_LIMIT (429), SERVER_ERROR (5xx), PROTOCOL_ERROR (others),
 * NULL for 2xx. */
const char *galley_morph_status_code(long status);
/* Error code for an http.h failure: TIMEOUT, INTERRUPTED or NETWORK_ERROR. */
const char *galley_morph_transport_code(const char *http_code);
/* A short remediation hint for a code, or NULL. */
const char *galley_morph_hint(const char *code);

/* Retry-After as milliseconds from now, or -1 when absent or unparsable. Accepts delta-seconds
 * and HTTP dates; a date in the past gives 0. `now` is Unix time in seconds. */
long galley_morph_parse_retry_after(const char *value, int64_t now);

typedef struct {
  int max_attempts;     /* total tries, >= 1 */
  long base_delay_ms;
  long max_delay_ms;
  long max_elapsed_ms;  /* <= 0: no limit */
} galley_morph_retry;

/* One attempt's outcome, as the planner sees it. */
typedef struct {
  long status;            /* HTTP status; 0 when the transfer failed */
  const char *transport;  /* http.h error code when status == 0 */
  bool sent;              /* the request may have reached the server */
  long retry_after_ms;    /* -1: none */
} galley_morph_outcome;

bool galley_morph_retryable(bool idempotent, const galley_morph_outcome *o);
/* min(max_delay, base * 2^(attempt-1)), halved and topped up by jitter in [0, 1). */
long galley_morph_backoff_ms(const galley_morph_retry *r, int attempt, double jitter);
/* Delay before the next attempt, or -1 to stop. `attempt`: tries made so far (1-based);
 * `elapsed_ms`: since the first try started. */
long galley_morph_plan_retry(const galley_morph_retry *r, bool idempotent,
                             const galley_morph_outcome *o, int attempt, long elapsed_ms,
                             double jitter);

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
  galley_morph_retry retry;
  bool insecure;             /* allow plain http:// to a non-loopback host; warns on every use */
} galley_morph_config;

typedef struct {
  const char *code;          /* NULL: no error */
  long status;               /* HTTP status of the last attempt, 0 for transport failures */
  char message[384];
  int attempt;
  int max_attempts;
  long retry_after_ms;       /* -1: none */
  bool sent;
} galley_morph_error;

/* One record per attempt, for the log hook. `path` has no query string. */
typedef struct {
  const char *method;
  const char *path;
  long status;               /* 0 when the transfer failed */
  const char *error;         /* http.h code of a failed transfer, else NULL */
  double ms;
  int attempt;
} galley_morph_log_record;
typedef void (*galley_morph_log_fn)(void *ud, const galley_morph_log_record *rec);

typedef struct {
  const galley_morph_endpoint *ep;
  const char *path;          /* built path + query, after the base URL */
  const char *body;          /* JSON or NULL */
  size_t body_len;
  long timeout_ms;           /* 0: the client's; < 0: none */
  galley_http_sink sink;     /* stream a 2xx body here instead of collecting it */
  void *sink_ud;
  galley_morph_log_fn log;
  void *log_ud;
} galley_morph_call;

/* NULL with err set (VALIDATION_ERROR for a bad base URL, AUTHENTICATION_ERROR without a key). */
galley_morph_client *galley_morph_client_new(const galley_morph_config *cfg, galley_morph_error *err);
void galley_morph_client_free(galley_morph_client *c);
const char *galley_morph_client_base_url(const galley_morph_client *c);
const galley_morph_retry *galley_morph_client_retry(const galley_morph_client *c);

/* Runs a call with retries. Returns 0 with a 2xx response in resp, or -1 with err set; for an
 * HTTP error status resp still holds that last response (free it either way). */
int galley_morph_perform(galley_morph_client *c, const galley_morph_call *call,
                         galley_http_response *resp, galley_morph_error *err);

/* Overwrites every occurrence of the client's API key in buf with '*'. */
void galley_morph_redact(const galley_morph_client *c, char *buf, size_t len);

#endif
