/* HTTP transport on libcurl's multi interface; see http.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dyn_curl.h"
#include "http.h"
#include "sig.h"

/* The longest header block we keep; anything beyond it is dropped (the body still arrives). */
#define MAX_HEADER_BYTES (64 * 1024)

struct galley_http_session {
  CURLM *multi;
  CURL *idle;      /* one spare easy handle: keeps its TLS session cache between transfers */
  int nxfers;      /* transfers added and not yet finished */
};

struct galley_http_xfer {
  galley_http_session *s;
  CURL *easy;
  struct curl_slist *slist;
  galley_http_sink sink;
  void *sink_ud;
  char *body;
  size_t body_len, body_cap;
  galley_http_header *headers;
  size_t nheaders, header_bytes;
  bool done, aborted, oom;
  bool no_resend, resend_blocked;
  int prereqs;          /* times the request was about to be sent */
  CURLcode result;
  char errbuf[CURL_ERROR_SIZE];
};


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


galley_http_session *galley_http_session_new(void) {
  galley_http_session *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->multi = curl_multi_init();
  if (!s->multi) {
    free(s);
    return NULL;
  }
  /* Many transfers to one host share one HTTP/2 connection when the server allows it. */
  curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  return s;
}


void galley_http_session_free(galley_http_session *s) {
  if (!s) return;
  if (s->idle) curl_easy_cleanup(s->idle);
  curl_multi_cleanup(s->multi);
  free(s);
}


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
  if (x->sink) {
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) {
      if (x->sink(x->sink_ud, p, len) != 0) {
        x->aborted = true;
        return 0;
      }
      return len;
    }
  }
  if (!buffer_append(x, p, len)) {
    x->oom = true;
    return 0;
  }
  return len;
}


static char *dup_trimmed(const char *p, size_t n, bool lower) {
  while (n > 0 && (*p == ' ' || *p == '\t')) p++, n--;
  while (n > 0 && isspace((unsigned char)p[n - 1])) n--;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  for (size_t i = 0; i < n; i++) s[i] = lower ? (char)tolower((unsigned char)p[i]) : p[i];
  s[n] = '\0';
  return s;
}


/* Records one "Name: value" line; a status line starts a new response (after 1xx, redirects). */
static bool add_header_line(galley_http_xfer *x, const char *p, size_t len) {
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    free_headers(x->headers, x->nheaders);
    x->headers = NULL;
    x->nheaders = 0;
    x->header_bytes = 0;
    return true;
  }
  const char *colon = memchr(p, ':', len);
  if (!colon || x->header_bytes + len > MAX_HEADER_BYTES) return true;
  x->header_bytes += len;
  char *name = dup_trimmed(p, (size_t)(colon - p), true);
  char *value = dup_trimmed(colon + 1, len - (size_t)(colon - p) - 1, false);
  if (!name || !value) goto oom;
  for (size_t i = 0; i < x->nheaders; i++) {
    if (strcmp(x->headers[i].name, name) != 0) continue;
    size_t a = strlen(x->headers[i].value), b = strlen(value);
    char *joined = realloc(x->headers[i].value, a + b + 3);
    if (!joined) goto oom;
    memcpy(joined + a, ", ", 2);
    memcpy(joined + a + 2, value, b + 1);
    x->headers[i].value = joined;
    free(name);
    free(value);
    return true;
  }
  galley_http_header *nh = realloc(x->headers, (x->nheaders + 1) * sizeof *nh);
  if (!nh) goto oom;
  x->headers = nh;
  x->headers[x->nheaders].name = name;
  x->headers[x->nheaders].value = value;
  x->nheaders++;
  return true;
oom:
  free(name);
  free(value);
  return false;
}


static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  galley_http_xfer *x = ud;
  size_t len = size * n;
  if (!add_header_line(x, p, len)) {
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
    galley_http_session *s = x->s;
    if (s && !s->idle) {
      curl_easy_reset(x->easy);  /* keeps live connections, TLS session and DNS caches */
      s->idle = x->easy;
    } else {
      curl_easy_cleanup(x->easy);
    }
  }
  curl_slist_free_all(x->slist);
  free(x->body);
  free_headers(x->headers, x->nheaders);
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


galley_http_xfer *galley_http_prepare(galley_http_session *s, const galley_http_request *req,
                                      galley_http_error *err) {
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
  x->s = s;
  x->sink = req->sink;
  x->sink_ud = req->sink_ud;
  x->no_resend = req->no_resend;
  if (s->idle) {
    x->easy = s->idle;
    s->idle = NULL;
  } else {
    x->easy = curl_easy_init();
  }
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
  ok &= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->slist) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_WRITEDATA, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_HEADERDATA, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PRIVATE, x) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) == CURLE_OK;
  ok &= curl_easy_setopt(e, CURLOPT_PREREQDATA, x) == CURLE_OK;
  if (req->timeout_ms > 0) ok &= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms) == CURLE_OK;
  if (req->connect_timeout_ms > 0)
    ok &= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms) == CURLE_OK;
  ok &= set_method_and_body(e, req);
  if (!ok) {
    set_error(err, "HTTP_NETWORK", 0, false, "cannot set up the request", NULL);
    xfer_free(x);
    return NULL;
  }
  if (curl_multi_add_handle(s->multi, e) != CURLM_OK) goto oom;
  s->nxfers++;
  return x;
oom:
  set_error(err, "HTTP_NETWORK", 0, false, "out of memory", NULL);
  xfer_free(x);
  return NULL;
}


/* Marks every transfer curl reports finished. */
static void collect_done(galley_http_session *s) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(s->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    galley_http_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (!x) continue;
    x->done = true;
    x->result = m->data.result;
  }
}


int galley_http_wait(galley_http_session *s, galley_http_xfer *x) {
  for (;;) {
    int running = 0;
    /* Body sinks run inside perform, with the GIL held. */
    CURLMcode mc = curl_multi_perform(s->multi, &running);
    collect_done(s);
    if (x ? x->done : running == 0) return 0;
    if (mc != CURLM_OK && mc != CURLM_CALL_MULTI_PERFORM) {
      /* The multi handle itself is broken: fail the transfer rather than spin. */
      if (x) {
        x->done = true;
        x->result = CURLE_RECV_ERROR;
      }
      return 0;
    }
    if (galley_sig_pending()) return -1;
    curl_multi_poll(s->multi, NULL, 0, 50, NULL);
  }
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
  galley_http_session *s = x->s;
  curl_multi_remove_handle(s->multi, x->easy);
  s->nxfers--;
  int rc = -1;
  if (!x->done) {
    set_error(err, "INTERRUPTED", 0, request_sent(x->easy, CURLE_OK),
              "interrupted by a signal", NULL);
  } else if (x->resend_blocked) {
    set_error(err, "HTTP_NETWORK", x->result, true,
              "the connection closed before any reply (request not resent)", NULL);
  } else if (x->aborted) {
    set_error(err, "HTTP_ABORTED", x->result, true, "aborted by the body sink", NULL);
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
      resp->body = x->body;
      resp->body_len = x->body_len;
      resp->headers = x->headers;
      resp->nheaders = x->nheaders;
      x->body = NULL;
      x->headers = NULL;
      x->nheaders = 0;
    }
  }
  xfer_free(x);
  return rc;
}


int galley_http_perform(galley_http_session *s, const galley_http_request *req,
                        galley_http_response *resp, galley_http_error *err) {
  if (resp) memset(resp, 0, sizeof *resp);
  galley_http_xfer *x = galley_http_prepare(s, req, err);
  if (!x) return -1;
  galley_http_wait(s, x);
  return galley_http_finish(x, resp, err);
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
