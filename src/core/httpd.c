/* Loopback HTTP server on libmicrohttpd; see httpd.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "dyn_mhd.h"
#include "httpd.h"

/* Seconds an idle keep-alive connection may stay open. */
#define IDLE_TIMEOUT_S 300

struct galley_httpd {
  struct MHD_Daemon *daemon;
  int port;
  galley_httpd_handler handler;
  void *ud;
  atomic_uint_fast64_t next_conn;
};

/* One HTTP request, created by the URI log callback (so the raw URI is kept) and freed when
 * libmicrohttpd reports the request complete. */
struct request_ctx {
  char *uri;
  char *path;
  char *raw_query;
  struct galley_httpd_pair *query;
  size_t nquery;
  struct galley_httpd_pair *headers;
  size_t nheaders, cap_headers;
  char *body;
  size_t body_len, body_cap;
  int started;
  int too_large;
  int oom;
};

/* Source of a STREAM or TRUNCATE body; owns the current chunk. */
struct body_reader {
  galley_httpd_next_fn next;
  galley_httpd_free_fn free_ctx;
  void *ctx;
  char *buf;
  size_t len, off;
  int done;
  size_t limit;  /* TRUNCATE: bytes to send before cutting the connection */
};


static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}


static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}


char *galley_httpd_decode(const char *src, size_t len, int plus_is_space) {
  char *out = malloc(len + 1);
  if (!out) return NULL;
  size_t j = 0;
  for (size_t i = 0; i < len; i++) {
    char c = src[i];
    if (c == '%' && i + 2 < len) {
      int hi = hexval(src[i + 1]);
      int lo = hexval(src[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out[j++] = (char)(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out[j++] = (plus_is_space && c == '+') ? ' ' : c;
  }
  out[j] = '\0';
  return out;
}


static void free_pairs(struct galley_httpd_pair *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(p[i].name);
    free(p[i].value);
  }
  free(p);
}


static int push_pair(struct galley_httpd_pair **arr, size_t *n, size_t *cap, char *name, char *value) {
  if (!name || !value) {
    free(name);
    free(value);
    return -1;
  }
  if (*n == *cap) {
    size_t ncap = *cap ? *cap * 2 : 8;
    struct galley_httpd_pair *p = realloc(*arr, ncap * sizeof *p);
    if (!p) {
      free(name);
      free(value);
      return -1;
    }
    *arr = p;
    *cap = ncap;
  }
  (*arr)[*n].name = name;
  (*arr)[*n].value = value;
  (*n)++;
  return 0;
}


/* Splits "a=1&b=&c" into decoded pairs. */
static int parse_query(struct request_ctx *rq) {
  size_t cap = 0;
  const char *s = rq->raw_query;
  while (*s) {
    const char *amp = strchr(s, '&');
    size_t n = amp ? (size_t)(amp - s) : strlen(s);
    if (n > 0) {
      const char *eq = memchr(s, '=', n);
      size_t kn = eq ? (size_t)(eq - s) : n;
      char *k = galley_httpd_decode(s, kn, 1);
      char *v = eq ? galley_httpd_decode(eq + 1, n - kn - 1, 1) : dup_n("", 0);
      if (push_pair(&rq->query, &rq->nquery, &cap, k, v) != 0) return -1;
    }
    s += n + (amp ? 1 : 0);
  }
  return 0;
}


static void request_free(struct request_ctx *rq) {
  if (!rq) return;
  free(rq->uri);
  free(rq->path);
  free(rq->raw_query);
  free_pairs(rq->query, rq->nquery);
  free_pairs(rq->headers, rq->nheaders);
  free(rq->body);
  free(rq);
}


/* MHD_OPTION_URI_LOG_CALLBACK: sees the URI exactly as sent; its result becomes *con_cls. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
  (void)cls;
  (void)c;
  struct request_ctx *rq = calloc(1, sizeof *rq);
  if (!rq) return NULL;
  rq->uri = dup_n(uri, strlen(uri));
  if (!rq->uri) rq->oom = 1;
  return rq;
}


static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)c;
  (void)toe;
  request_free(*con_cls);
  *con_cls = NULL;
}


static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
  (void)c;
  struct galley_httpd *srv = cls;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED)
    *socket_context = (void *)(uintptr_t)atomic_fetch_add(&srv->next_conn, 1);
}


static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  (void)kind;
  struct request_ctx *rq = cls;
  size_t n = strlen(key);
  char *name = dup_n(key, n);
  if (name) {
    for (size_t i = 0; i < n; i++)
      if (name[i] >= 'A' && name[i] <= 'Z') name[i] = (char)(name[i] - 'A' + 'a');
  }
  char *v = dup_n(value ? value : "", value ? strlen(value) : 0);
  if (push_pair(&rq->headers, &rq->nheaders, &rq->cap_headers, name, v) != 0) rq->oom = 1;
  return MHD_YES;
}


/* First call for a request: headers are known, the body is not. */
static void request_start(struct request_ctx *rq, struct MHD_Connection *c) {
  rq->started = 1;
  if (rq->oom) return;
  const char *q = strchr(rq->uri, '?');
  size_t plen = q ? (size_t)(q - rq->uri) : strlen(rq->uri);
  rq->path = galley_httpd_decode(rq->uri, plen, 0);
  rq->raw_query = q ? dup_n(q + 1, strlen(q + 1)) : dup_n("", 0);
  if (!rq->path || !rq->raw_query || parse_query(rq) != 0) rq->oom = 1;
  MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, rq);
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl && strtoull(cl, NULL, 10) > GALLEY_HTTPD_MAX_BODY) rq->too_large = 1;
}


static void request_append(struct request_ctx *rq, const char *data, size_t n) {
  if (rq->too_large || rq->oom) return;
  if (rq->body_len + n > GALLEY_HTTPD_MAX_BODY) {
    rq->too_large = 1;
    return;
  }
  if (rq->body_len + n + 1 > rq->body_cap) {
    size_t cap = rq->body_cap ? rq->body_cap : 4096;
    while (cap < rq->body_len + n + 1) cap *= 2;
    char *b = realloc(rq->body, cap);
    if (!b) {
      rq->oom = 1;
      return;
    }
    rq->body = b;
    rq->body_cap = cap;
  }
  memcpy(rq->body + rq->body_len, data, n);
  rq->body_len += n;
  rq->body[rq->body_len] = '\0';
}


int galley_httpd_response_header(struct galley_httpd_response *resp, const char *name, const char *value) {
  return push_pair(&resp->headers, &resp->nheaders, &resp->cap_headers, dup_n(name, strlen(name)),
                   dup_n(value, strlen(value)));
}


int galley_httpd_response_body(struct galley_httpd_response *resp, const char *data, size_t len) {
  char *b = dup_n(data, len);
  if (!b) return -1;
  free(resp->body);
  resp->body = b;
  resp->body_len = len;
  return 0;
}


static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max) {
  (void)pos;
  struct body_reader *r = cls;
  while (r->off >= r->len) {
    free(r->buf);
    r->buf = NULL;
    r->len = r->off = 0;
    if (r->done) return MHD_CONTENT_READER_END_OF_STREAM;
    char *chunk = NULL;
    size_t n = 0;
    int rc = r->next(r->ctx, &chunk, &n);
    if (rc <= 0) {
      free(chunk);
      r->done = 1;
      return rc < 0 ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    }
    r->buf = chunk;
    r->len = chunk ? n : 0;
  }
  size_t n = r->len - r->off < max ? r->len - r->off : max;
  memcpy(buf, r->buf + r->off, n);
  r->off += n;
  return (ssize_t)n;
}


/* TRUNCATE: `buf` holds the whole body; serve `limit` bytes, then fail (the connection closes). */
static ssize_t read_truncated(void *cls, uint64_t pos, char *buf, size_t max) {
  struct body_reader *r = cls;
  if (pos >= r->limit) return MHD_CONTENT_READER_END_WITH_ERROR;
  size_t n = r->limit - pos < max ? r->limit - (size_t)pos : max;
  memcpy(buf, r->buf + pos, n);
  return (ssize_t)n;
}


static void free_reader(void *cls) {
  struct body_reader *r = cls;
  if (r->free_ctx) r->free_ctx(r->ctx);
  free(r->buf);
  free(r);
}


static void response_clear(struct galley_httpd_response *resp) {
  free_pairs(resp->headers, resp->nheaders);
  free(resp->body);
}


/* Turns the handler's answer into an MHD response (NULL when out of memory). Takes over a
 * stream context: from here on its free_ctx runs exactly once. */
static struct MHD_Response *build_response(struct galley_httpd_response *resp) {
  struct MHD_Response *r = NULL;
  if (resp->kind == GALLEY_HTTPD_STREAM || resp->kind == GALLEY_HTTPD_TRUNCATE) {
    struct body_reader *br = calloc(1, sizeof *br);
    if (!br) {
      if (resp->free_ctx) resp->free_ctx(resp->ctx);
      return NULL;
    }
    if (resp->kind == GALLEY_HTTPD_STREAM) {
      br->next = resp->next;
      br->free_ctx = resp->free_ctx;
      br->ctx = resp->ctx;
      r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, read_stream, br, free_reader);
    } else {
      br->buf = resp->body;  /* ownership moves to the reader */
      resp->body = NULL;
      br->limit = resp->truncate_at < resp->body_len ? resp->truncate_at : resp->body_len;
      r = MHD_create_response_from_callback(resp->body_len, 16 * 1024, read_truncated, br, free_reader);
    }
    if (!r) free_reader(br);
  } else {
    r = MHD_create_response_from_buffer(resp->body_len, resp->body ? resp->body : "", MHD_RESPMEM_MUST_COPY);
  }
  if (!r) return NULL;
  for (size_t i = 0; i < resp->nheaders; i++) {
    if (strcasecmp(resp->headers[i].name, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) continue;
    if (strcasecmp(resp->headers[i].name, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) continue;
    MHD_add_response_header(r, resp->headers[i].name, resp->headers[i].value);
  }
  return r;
}


static enum MHD_Result queue_plain(struct MHD_Connection *c, int status, const char *json) {
  struct MHD_Response *r = MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_PERSISTENT);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
  MHD_destroy_response(r);
  return ok;
}


/* Drops the connection with a TCP reset (SO_LINGER 0) instead of a response. */
static enum MHD_Result reset_connection(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (ci) {
    struct linger lg = {1, 0};
    setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  return MHD_NO;
}


static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_size,
                                 void **con_cls) {
  (void)url;
  (void)version;
  struct galley_httpd *srv = cls;
  struct request_ctx *rq = *con_cls;
  if (!rq) return queue_plain(c, 500, "{\"detail\":\"out of memory\"}");
  if (!rq->started) {
    request_start(rq, c);
    return MHD_YES;
  }
  if (*upload_size > 0) {
    request_append(rq, upload_data, *upload_size);
    *upload_size = 0;
    return MHD_YES;
  }
  if (rq->too_large) return queue_plain(c, 413, "{\"detail\":\"request body too large\"}");
  if (rq->oom) return queue_plain(c, 500, "{\"detail\":\"out of memory\"}");

  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  struct galley_httpd_request req = {
    .method = method,
    .path = rq->path,
    .raw_query = rq->raw_query,
    .query = rq->query,
    .nquery = rq->nquery,
    .headers = rq->headers,
    .nheaders = rq->nheaders,
    .body = rq->body ? rq->body : "",
    .body_len = rq->body_len,
    .conn_id = ci ? (uint64_t)(uintptr_t)ci->socket_context : 0,
  };
  struct galley_httpd_response resp;
  memset(&resp, 0, sizeof resp);
  resp.kind = GALLEY_HTTPD_FULL;
  resp.status = 200;
  srv->handler(srv->ud, &req, &resp);

  if (resp.kind == GALLEY_HTTPD_RESET) {
    if (resp.free_ctx) resp.free_ctx(resp.ctx);
    response_clear(&resp);
    return reset_connection(c);
  }
  struct MHD_Response *r = build_response(&resp);
  int status = resp.status;
  response_clear(&resp);
  if (!r) return queue_plain(c, 500, "{\"detail\":\"out of memory\"}");
  enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
  MHD_destroy_response(r);
  return ok;
}


static int listen_loopback(int port, char *code, size_t code_len, char *msg, size_t msg_len, int *bound) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(code, code_len, "HTTPD_BIND");
    snprintf(msg, msg_len, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);  /* loopback only, never any other address */
  socklen_t slen = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &slen) != 0) {
    snprintf(code, code_len, "HTTPD_BIND");
    snprintf(msg, msg_len, "cannot listen on 127.0.0.1:%d: %s", port, strerror(errno));
    close(fd);
    return -1;
  }
  *bound = ntohs(sa.sin_port);
  return fd;
}


struct galley_httpd *galley_httpd_start(int port, galley_httpd_handler handler, void *ud,
                                        char *code, size_t code_len, char *msg, size_t msg_len) {
  char load_err[300];
  if (!galley_mhd(load_err, sizeof load_err)) {
    snprintf(code, code_len, "HTTPD_UNAVAILABLE");
    snprintf(msg, msg_len, "%s (apt-get install libmicrohttpd12)", load_err);
    return NULL;
  }
  if (port < 0 || port > 65535) {
    snprintf(code, code_len, "HTTPD_BIND");
    snprintf(msg, msg_len, "port %d out of range", port);
    return NULL;
  }
  struct galley_httpd *srv = calloc(1, sizeof *srv);
  if (!srv) {
    snprintf(code, code_len, "HTTPD_START");
    snprintf(msg, msg_len, "out of memory");
    return NULL;
  }
  srv->handler = handler;
  srv->ud = ud;
  atomic_init(&srv->next_conn, 1);
  int fd = listen_loopback(port, code, code_len, msg, msg_len, &srv->port);
  if (fd < 0) {
    free(srv);
    return NULL;
  }
  unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC;
  srv->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_access, srv,
                                 MHD_OPTION_LISTEN_SOCKET, fd,
                                 MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                                 MHD_OPTION_END);
  if (!srv->daemon) {
    snprintf(code, code_len, "HTTPD_START");
    snprintf(msg, msg_len, "libmicrohttpd could not start on 127.0.0.1:%d", srv->port);
    close(fd);
    free(srv);
    return NULL;
  }
  return srv;
}


int galley_httpd_port(const struct galley_httpd *srv) { return srv->port; }


void galley_httpd_stop(struct galley_httpd *srv) {
  if (!srv) return;
  MHD_stop_daemon(srv->daemon);
  free(srv);
}
