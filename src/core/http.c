/* HTTP transport on libcurl's multi interface, driven by the event loop; see http.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dyn_curl.h"
#include "http.h"
#include "loop.h"

/* Idle connections kept open for reuse (each holds one file descriptor). */
#define MAX_IDLE_CONNECTIONS 256
/* Spare easy handles kept for reuse (their TLS session and DNS caches survive). */
#define MAX_IDLE 8

struct galley_http_xfer {
  CURL *easy;
  struct curl_slist *slist;
  bool stream;
  char *body;
  size_t body_len, body_cap;
  galley_http_headers headers;  /* of the latest response so far */
  char reason[128];     /* reason phrase of the last status line */
  bool done, oom;
  bool no_resend, resend_blocked;
  int prereqs;          /* times the request was about to be sent */
  uint64_t token;       /* readied at completion / new stream data; 0: none */
  CURLcode result;
  char errbuf[CURL_ERROR_SIZE];
};

/* The process's one multi handle and its loop glue. */
static CURLM *multi;
static uv_timer_t *curl_timer;
static CURL *idle[MAX_IDLE];
static int nidle;
static int inflight;

/* One per socket curl watches: curl_multi_assign keeps the pointer for us. */
typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
} sock_ctx;


/* message = prefix + detail (cut to fit). */
static void set_error(galley_http_error *err, const char *code, int curl_code, bool sent,
                      const char *prefix, const char *detail) {
  if (!err) return;
  err->code = code;
  err->curl_code = curl_code;
  err->sent = sent;
  snprintf(err->message, sizeof err->message, "%.60s%.180s", prefix, detail ? detail : "");
}


static void free_headers(galley_http_header *h, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(h[i].name);
    free(h[i].value);
  }
  free(h);
}


static void wake(galley_http_xfer *x) {
  if (!x->token) return;
  galley_loop_ready(x->token);
  x->token = 0;
}


/* Marks every transfer curl reports finished and wakes its waiter. */
static void collect_done(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    galley_http_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (!x) continue;
    x->done = true;
    x->result = m->data.result;
    wake(x);
  }
}


static void on_poll(uv_poll_t *h, int status, int events) {
  sock_ctx *c = h->data;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(multi, c->fd, flags, &running);
  collect_done();
}


static void on_curl_timer(uv_timer_t *t) {
  (void)t;
  int running;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  collect_done();
}


/* CURLMOPT_TIMERFUNCTION: curl wants to be called after timeout_ms (-1: never). */
static int on_timer_change(CURLM *m, long timeout_ms, void *ud) {
  (void)m;
  (void)ud;
  if (timeout_ms < 0) uv_timer_stop(curl_timer);
  else uv_timer_start(curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
  return 0;
}


static void free_sock(uv_handle_t *h) { free(h->data); }


/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl asks, or stop watching it. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
  (void)e;
  (void)ud;
  sock_ctx *c = sockp;
  if (what == CURL_POLL_REMOVE) {
    if (c) {
      uv_poll_stop(&c->poll);
      uv_close((uv_handle_t *)&c->poll, free_sock);
      curl_multi_assign(multi, fd, NULL);
    }
    return 0;
  }
  if (!c) {
    c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->fd = fd;
    if (uv_poll_init_socket(galley_loop(), &c->poll, fd) != 0) {
      free(c);
      return -1;
    }
    c->poll.data = c;
    curl_multi_assign(multi, fd, c);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
  uv_poll_start(&c->poll, events, on_poll);
  return 0;
}


/* The multi handle, set up on first use. NULL when out of memory. */
static CURLM *get_multi(void) {
  if (multi) return multi;
  curl_timer = malloc(sizeof *curl_timer);
  if (!curl_timer) return NULL;
  multi = curl_multi_init();
  if (!multi) {
    free(curl_timer);
    curl_timer = NULL;
    return NULL;
  }
  uv_timer_init(galley_loop(), curl_timer);
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
  /* Many transfers to one host share one HTTP/2 connection when the server allows it. */
  curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  /* Keep idle connections for reuse: curl's default cache (4 x the transfers in flight at that
   * moment) closes them whenever most tasks sit between requests (sleeps, readiness polls). */
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)MAX_IDLE_CONNECTIONS);
  return multi;
}


int galley_http_inflight(void) { return inflight; }


/* Appends body bytes to the transfer's buffer, keeping it NUL-terminated. */
static bool buffer_append(galley_http_xfer *x, const char *p, size_t n) {
  if (x->body_len + n + 1 > x->body_cap) {
    size_t cap = x->body_cap ? x->body_cap : 1024;
    while (cap < x->body_len + n + 1) cap *= 2;
    char *nb = realloc(x->body, cap);
    if (!nb) return false;
    x->body = nb;
    x->body_cap = cap;
  }
  memcpy(x->body + x->body_len, p, n);
  x->body_len += n;
  x->body[x->body_len] = '\0';
  return true;
}


static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  galley_http_xfer *x = ud;
  size_t len = size * n;
  if (!buffer_append(x, p, len)) {
    x->oom = true;
    return 0;
  }
  /* A streamed 2xx body wakes its reader at every piece; other bodies only at the end. */
  if (x->stream && galley_http_status(x) / 100 == 2) wake(x);
  return len;
}


/* A copy of p[0..n) with each NUL turned into a space (RFC 9110 5.5 lets a recipient replace
 * it with SP; kept, it would cut the C string short), then trimmed; lowercased if asked. */
static char *dup_trimmed(const char *p, size_t n, bool lower) {
  char *s = malloc(n + 1);
  if (!s) return NULL;
  for (size_t i = 0; i < n; i++) {
    char c = p[i] == '\0' ? ' ' : p[i];
    s[i] = lower ? (char)tolower((unsigned char)c) : c;
  }
  size_t a = 0, b = n;
  while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
  while (b > a && isspace((unsigned char)s[b - 1])) b--;
  memmove(s, s + a, b - a);
  s[b - a] = '\0';
  return s;
}


/* Records one "Name: value" line; a status line starts a new response (after 1xx, redirects). */
bool galley_http_headers_add(galley_http_headers *h, const char *p, size_t len) {
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    galley_http_headers_free(h);
    return true;
  }
  const char *colon = memchr(p, ':', len);
  if (!colon || len > GALLEY_HTTP_MAX_HEADER_BYTES - h->bytes) return true;
  char *name = dup_trimmed(p, (size_t)(colon - p), true);
  char *value = dup_trimmed(colon + 1, len - (size_t)(colon - p) - 1, false);
  if (!name || !value) goto oom;
  for (size_t i = 0; i < h->n; i++) {
    if (strcmp(h->items[i].name, name) != 0) continue;
    size_t a = strlen(h->items[i].value), b = strlen(value);
    if (a == 0) {  /* an empty value is an empty list element: nothing to join */
      free(h->items[i].value);
      h->items[i].value = value;
      value = NULL;
    } else if (b > 0) {
      char *joined = realloc(h->items[i].value, a + b + 3);
      if (!joined) goto oom;
      memcpy(joined + a, ", ", 2);
      memcpy(joined + a + 2, value, b + 1);
      h->items[i].value = joined;
    }
    h->bytes += len;
    free(name);
    free(value);
    return true;
  }
  galley_http_header *nh = realloc(h->items, (h->n + 1) * sizeof *nh);
  if (!nh) goto oom;
  h->items = nh;
  h->items[h->n].name = name;
  h->items[h->n].value = value;
  h->n++;
  h->bytes += len;
  return true;
oom:
  free(name);
  free(value);
  return false;
}


void galley_http_headers_free(galley_http_headers *h) {
  free_headers(h->items, h->n);
  h->items = NULL;
  h->n = 0;
  h->bytes = 0;
}


/* "HTTP/1.1 500 reason text\r\n": keeps the reason phrase (cut to fit; control bytes dropped). */
static void keep_reason(galley_http_xfer *x, const char *p, size_t len) {
  const char *sp = memchr(p, ' ', len);
  const char *sp2 = sp ? memchr(sp + 1, ' ', len - (size_t)(sp + 1 - p)) : NULL;
  size_t n = 0;
  if (sp2)
    for (const char *c = sp2 + 1; c < p + len && n + 1 < sizeof x->reason; c++)
      if ((unsigned char)*c >= 0x20 && *c != 0x7f) x->reason[n++] = *c;
  while (n > 0 && x->reason[n - 1] == ' ') n--;
  x->reason[n] = '\0';
}


static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  galley_http_xfer *x = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) keep_reason(x, p, len);
  if (!galley_http_headers_add(&x->headers, p, len)) {
    x->oom = true;
    return 0;
  }
  return len;
}


/* Called right before the request goes out, each time: a second call is libcurl resending it on
 * a fresh connection after a reused one died. */
static int on_prereq(void *ud, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                     int conn_local_port) {
  galley_http_xfer *x = ud;
  if (++x->prereqs > 1 && x->no_resend) {
    x->resend_blocked = true;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}


static void xfer_free(galley_http_xfer *x) {
  if (!x) return;
  if (x->easy) {
    if (nidle < MAX_IDLE) {
      curl_easy_reset(x->easy);  /* keeps the TLS session and DNS caches */
      idle[nidle++] = x->easy;
    } else {
      curl_easy_cleanup(x->easy);
    }
  }
  curl_slist_free_all(x->slist);
  free(x->body);
  galley_http_headers_free(&x->headers);
  free(x);
}


static bool set_method_and_body(CURL *e, const galley_http_request *req) {
  const char *m = req->method ? req->method : "GET";
  bool ok = true;
  if (strcmp(m, "HEAD") == 0) {
    ok &= curl_easy_setopt(e, CURLOPT_NOBODY, 1L) == CURLE_OK;
  } else if (!req->body && (strcmp(m, "GET") == 0 || strcmp(m, "DELETE") == 0 ||
                            strcmp(m, "OPTIONS") == 0)) {
    ok &= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) == CURLE_OK;
  } else {
    /* Any method with a body (or POST/PUT/PATCH without one, sent as Content-Length: 0). */
    ok &= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                           (curl_off_t)(req->body ? req->body_len : 0)) == CURLE_OK;
    ok &= curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body ? req->body : "") == CURLE_OK;
  }
  /* A body makes curl send POST; any other method (a GET with a body too) is named explicitly. */
  if (strcmp(m, "POST") != 0 && strcmp(m, "HEAD") != 0 && !(strcmp(m, "GET") == 0 && !req->body))
    ok &= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m) == CURLE_OK;
  return ok;
}


galley_http_xfer *galley_http_start(const galley_http_request *req, galley_http_error *err) {
  if (err) memset(err, 0, sizeof *err);
  if (!req->url || (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0)) {
    set_error(err, "HTTP_CONNECT", 0, false, "unsupported URL scheme (http:// or https:// only)", NULL);
    return NULL;
  }
  galley_http_xfer *x = calloc(1, sizeof *x);
  if (!x) {
    set_error(err, "HTTP_NETWORK", 0, false, "out of memory", NULL);
    return NULL;
  }
  x->stream = req->stream;
  x->no_resend = req->no_resend;
  if (!get_multi()) goto oom;
  x->easy = nidle > 0 ? idle[--nidle] : curl_easy_init();
  if (!x->easy) goto oom;
  for (size_t i = 0; i < req->nheaders; i++) {
    struct curl_slist *l = curl_slist_append(x->slist, req->headers[i]);
    if (!l) goto oom;
    x->slist = l;
  }
  /* No "Expect: 100-continue" round trip before larger bodies. */
  struct curl_slist *l = curl_slist_append(x->slist, "Expect:");
  if (!l) goto oom;
  x->slist = l;

  CURL *e = x->easy;
  bool ok = true;
  ok &= curl_easy_setopt(e, CURLOPT_URL, req->url) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK;
  /* Verified unless asked otherwise: a pinned key replaces the chain and name checks (libcurl
   * checks the pin whatever VERIFYPEER says, before the request is sent). */
  bool verify = !req->insecure && !req->pinned_public_key;
  ok &= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L) == CURLE_OK;
  if (req->ca_file) ok &= curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file) == CURLE_OK;
  if (req->pinned_public_key)
    ok &= curl_easy_setopt(e, CURLOPT_PINNEDPUBLICKEY, req->pinned_public_key) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->slist) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_WRITEDATA, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HEADERDATA, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PRIVATE, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PREREQDATA, x) == CURLE_OK;
  if (req->fresh) {
    ok &= curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) == CURLE_OK;
    ok &= curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) == CURLE_OK;
  }
  if (req->timeout_ms > 0) ok &= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms) == CURLE_OK;
  if (req->connect_timeout_ms > 0)
    ok &= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms) == CURLE_OK;
  ok &= set_method_and_body(e, req);
  if (!ok) {
    set_error(err, "HTTP_NETWORK", 0, false, "cannot set up the request", NULL);
    xfer_free(x);
    return NULL;
  }
  /* Adding arms curl's timer at 0 ms: the transfer starts on the next loop turn. */
  if (curl_multi_add_handle(multi, e) != CURLM_OK) goto oom;
  inflight++;
  return x;
oom:
  set_error(err, "HTTP_NETWORK", 0, false, "out of memory", NULL);
  xfer_free(x);
  return NULL;
}


void galley_http_notify(galley_http_xfer *x, uint64_t token) {
  x->token = token;
  if (x->done || (x->stream && x->body_len > 0 && galley_http_status(x) / 100 == 2)) wake(x);
}


bool galley_http_done(const galley_http_xfer *x) { return x->done; }


long galley_http_status(const galley_http_xfer *x) {
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  return status;
}


size_t galley_http_stream_peek(galley_http_xfer *x, const char **data) {
  *data = NULL;
  if (x->body_len == 0 || galley_http_status(x) / 100 != 2) return 0;
  *data = x->body;
  return x->body_len;
}


void galley_http_stream_consume(galley_http_xfer *x) {
  x->body_len = 0;
  if (x->body) x->body[0] = '\0';
}


/* Whether any byte of the request may have left this machine. */
static bool request_sent(CURL *e, CURLcode rc) {
  if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
      rc == CURLE_COULDNT_RESOLVE_PROXY || rc == CURLE_UNSUPPORTED_PROTOCOL ||
      rc == CURLE_URL_MALFORMAT)
    return false;
  curl_off_t pre = 0;
  long reqsize = 0;
  curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pre);
  curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &reqsize);
  return pre > 0 || reqsize > 0;
}


static void classify(galley_http_xfer *x, galley_http_error *err) {
  CURLcode rc = x->result;
  bool sent = request_sent(x->easy, rc);
  const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      set_error(err, "HTTP_CONNECT", rc, false, "cannot connect: ", detail);
      break;
    case CURLE_OPERATION_TIMEDOUT:
      set_error(err, "HTTP_TIMEOUT", rc, sent, "timed out: ", detail);
      break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_USE_SSL_FAILED:
      set_error(err, "HTTP_TLS", rc, sent, "TLS failure: ", detail);
      break;
    default:
      set_error(err, "HTTP_NETWORK", rc, sent, "transfer failed: ", detail);
      break;
  }
}


int galley_http_finish(galley_http_xfer *x, galley_http_response *resp, galley_http_error *err) {
  if (resp) memset(resp, 0, sizeof *resp);
  if (err) memset(err, 0, sizeof *err);
  curl_multi_remove_handle(multi, x->easy);
  inflight--;
  int rc = -1;
  if (!x->done) {
    /* Cut off mid-transfer, libcurl's counters may not say yet what went out: once the
     * pre-request callback ran, the request may have reached the server. */
    set_error(err, "INTERRUPTED", 0, x->prereqs > 0 || request_sent(x->easy, CURLE_OK), "the transfer was cancelled",
              NULL);
  } else if (x->resend_blocked) {
    set_error(err, "HTTP_NETWORK", x->result, true,
              "the connection closed before any reply (request not resent)", NULL);
  } else if (x->oom) {
    set_error(err, "HTTP_NETWORK", x->result, true, "out of memory while receiving", NULL);
  } else if (x->result != CURLE_OK) {
    classify(x, err);
  } else {
    rc = 0;
    if (resp) {
      curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &resp->status);
      curl_off_t total = 0;
      curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &total);
      resp->total_ms = (double)total / 1000.0;
      curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &resp->new_connections);
      long ver = 0;
      curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver);
      snprintf(resp->http_version, sizeof resp->http_version, "%s",
               ver == CURL_HTTP_VERSION_2_0 ? "2" : ver == CURL_HTTP_VERSION_3 ? "3" :
               ver == CURL_HTTP_VERSION_1_0 ? "1.0" : "1.1");
      if (!x->body && !buffer_append(x, "", 0)) {
        set_error(err, "HTTP_NETWORK", 0, true, "out of memory", NULL);
        xfer_free(x);
        return -1;
      }
      memcpy(resp->reason, x->reason, sizeof resp->reason);
      resp->body = x->body;
      resp->body_len = x->body_len;
      resp->headers = x->headers.items;
      resp->nheaders = x->headers.n;
      x->body = NULL;
      x->headers.items = NULL;
      x->headers.n = 0;
    }
  }
  xfer_free(x);
  return rc;
}


void galley_http_response_free(galley_http_response *r) {
  if (!r) return;
  free(r->body);
  free_headers(r->headers, r->nheaders);
  memset(r, 0, sizeof *r);
}


const char *galley_http_response_header(const galley_http_response *r, const char *name) {
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}
