/* Loopback HTTP/1.1 server on the event loop with http-parser; see httpd.h. */
#include <ctype.h>
#include <errno.h>
#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include "httpd.h"
#include "loop.h"

/* How long a closing connection keeps draining what the client still sends (so the kernel
 * does not turn our answer into a reset), and how much a busy connection buffers ahead. */
#define LINGER_MS 2000
#define SWEEP_MS 250
#define MAX_PENDING (64u * 1024u)

enum conn_state { C_HEAD, C_BODY, C_BUSY, C_IDLE, C_LINGER };

struct client {
  char addr[64];
  unsigned n;
  struct client *next;
};

struct galley_httpd_conn {
  uv_tcp_t tcp;                       /* tcp.data = this */
  uv_shutdown_t shutdown;
  struct galley_httpd *srv;
  struct client *client;
  http_parser parser;
  uint64_t id;
  enum conn_state state;
  uint64_t deadline;                  /* loop time in ms; 0: none */
  struct galley_httpd_req *cur;       /* being parsed (owned here) */
  struct galley_httpd_req *inflight;  /* handed out, not answered yet (not owned) */
  char *pending;                      /* bytes after the request in flight */
  size_t npending;
  size_t head_bytes, field_len, value_len;
  int in_field;
  int reject;                         /* status to answer after a failed parser callback */
  int reading, peer_eof, closing, listed;
  struct galley_httpd_conn *prev, *next;
};

struct galley_httpd {
  uv_tcp_t listener;
  uv_timer_t sweep;
  int handles;                        /* open libuv handles; freed at 0 once stopped */
  int port;
  struct galley_httpd_limits lim;
  char *bearer;
  struct galley_httpd_conn *head, *tail;  /* open connections, oldest first */
  struct client *clients;
  struct galley_httpd_req *q_head, *q_tail;
  uint64_t wait_token;
  uint64_t next_conn;
  int stopped;
  struct galley_httpd_stats st;
};

struct write_op {
  uv_write_t w;
  struct galley_httpd_conn *conn;
  struct galley_httpd_req *req;       /* holds a reference */
  uint64_t token;
  char *owned;
  int final;                          /* the answer is complete once this is written */
  int close_after;                    /* ...and the connection closes (truncated body) */
};

static http_parser_settings settings;
static char read_buf[64 * 1024];      /* one buffer for every read: parsed before the next */

static void conn_close(struct galley_httpd_conn *c, int reset);
static void feed(struct galley_httpd_conn *c, const char *data, size_t len);


/* --- small helpers ------------------------------------------------------------------------ */

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  if (n) memcpy(d, s, n);
  d[n] = '\0';
  return d;
}


static int append(char **s, size_t *len, const char *at, size_t n) {
  char *d = realloc(*s, *len + n + 1);
  if (!d) return -1;
  memcpy(d + *len, at, n);
  *len += n;
  d[*len] = '\0';
  *s = d;
  return 0;
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


/* Appends a pair taking ownership of name and value (freed on failure). */
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
static int parse_query(struct galley_httpd_req *rq) {
  const char *s = rq->raw_query;
  while (*s) {
    const char *amp = strchr(s, '&');
    size_t n = amp ? (size_t)(amp - s) : strlen(s);
    if (n > 0) {
      const char *eq = memchr(s, '=', n);
      size_t kn = eq ? (size_t)(eq - s) : n;
      char *k = galley_httpd_decode(s, kn, 1);
      char *v = eq ? galley_httpd_decode(eq + 1, n - kn - 1, 1) : dup_n("", 0);
      if (push_pair(&rq->query, &rq->nquery, &rq->cap_query, k, v) != 0) return -1;
    }
    s += n + (amp ? 1 : 0);
  }
  return 0;
}


static void req_free(struct galley_httpd_req *rq) {
  if (!rq) return;
  free(rq->url);
  free(rq->path);
  free(rq->raw_query);
  free_pairs(rq->query, rq->nquery);
  free_pairs(rq->headers, rq->nheaders);
  free(rq->body);
  free(rq);
}


static const char *find_header(const struct galley_httpd_req *rq, const char *name) {
  for (size_t i = 0; i < rq->nheaders; i++)
    if (strcmp(rq->headers[i].name, name) == 0) return rq->headers[i].value;
  return NULL;
}


/* Whether the request carries `Authorization: Bearer <key>` (compared in constant time). */
static int authorized(const struct galley_httpd *srv, const struct galley_httpd_req *rq, int *had_key) {
  const char *h = find_header(rq, "authorization");
  *had_key = 0;
  if (!h || strncasecmp(h, "bearer", 6) != 0 || !isspace((unsigned char)h[6])) return 0;
  h += 6;
  while (isspace((unsigned char)*h)) h++;
  size_t n = strlen(h);
  while (n > 0 && isspace((unsigned char)h[n - 1])) n--;
  *had_key = n > 0;
  size_t k = strlen(srv->bearer);
  if (n != k) return 0;
  unsigned char diff = 0;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)(h[i] ^ srv->bearer[i]);
  return diff == 0;
}


/* The loop's clock, brought up to date (it is stale after blocking work in a handler). */
static uint64_t now_ms(void) {
  uv_update_time(galley_loop());
  return uv_now(galley_loop());
}


/* --- clients and the connection list ------------------------------------------------------ */

static struct client *client_get(struct galley_httpd *srv, const char *addr) {
  for (struct client *cl = srv->clients; cl; cl = cl->next)
    if (strcmp(cl->addr, addr) == 0) return cl;
  struct client *cl = calloc(1, sizeof *cl);
  if (!cl) return NULL;
  snprintf(cl->addr, sizeof cl->addr, "%s", addr);
  cl->next = srv->clients;
  srv->clients = cl;
  return cl;
}


static void client_put(struct galley_httpd *srv, struct client *cl) {
  if (!cl || --cl->n > 0) return;
  for (struct client **pp = &srv->clients; *pp; pp = &(*pp)->next)
    if (*pp == cl) {
      *pp = cl->next;
      free(cl);
      return;
    }
}


static void list_add(struct galley_httpd *srv, struct galley_httpd_conn *c) {
  c->prev = srv->tail;
  c->next = NULL;
  if (srv->tail) srv->tail->next = c;
  else srv->head = c;
  srv->tail = c;
  c->listed = 1;
  srv->st.open++;
  c->client->n++;
}


static void list_remove(struct galley_httpd *srv, struct galley_httpd_conn *c) {
  if (!c->listed) return;
  c->listed = 0;
  if (c->prev) c->prev->next = c->next;
  else srv->head = c->next;
  if (c->next) c->next->prev = c->prev;
  else srv->tail = c->prev;
  srv->st.open--;
  client_put(srv, c->client);
  c->client = NULL;
}


static void maybe_free_server(struct galley_httpd *srv) {
  if (!srv->stopped || srv->handles > 0) return;
  while (srv->clients) {
    struct client *n = srv->clients->next;
    free(srv->clients);
    srv->clients = n;
  }
  free(srv->bearer);
  free(srv);
}


static void on_handle_closed(uv_handle_t *h) {
  struct galley_httpd *srv = h->data;
  srv->handles--;
  maybe_free_server(srv);
}


static void on_conn_closed(uv_handle_t *h) {
  struct galley_httpd_conn *c = h->data;
  struct galley_httpd *srv = c->srv;
  free(c);
  srv->handles--;
  maybe_free_server(srv);
}


/* Closes a connection at once (a TCP reset when `reset`). A request in flight loses it. */
static void conn_close(struct galley_httpd_conn *c, int reset) {
  if (c->closing) return;
  c->closing = 1;
  list_remove(c->srv, c);
  req_free(c->cur);
  c->cur = NULL;
  if (c->inflight) {
    c->inflight->conn = NULL;
    c->inflight = NULL;
  }
  free(c->pending);
  c->pending = NULL;
  c->npending = 0;
  if (reset && uv_tcp_close_reset(&c->tcp, on_conn_closed) == 0) return;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}


static void on_shutdown(uv_shutdown_t *s, int status) {
  struct galley_httpd_conn *c = s->handle->data;
  if (status < 0 || c->peer_eof) conn_close(c, 0);
}


static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = read_buf;
  buf->len = sizeof read_buf;
}


static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);


static void start_reading(struct galley_httpd_conn *c) {
  if (c->reading || c->closing || c->peer_eof) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}


static void stop_reading(struct galley_httpd_conn *c) {
  if (!c->reading) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
}


/* Ends a connection politely: no more requests, our answer flushed, then FIN; what the client
 * still sends is drained for a while so that the answer is not lost to a reset. */
static void conn_finish(struct galley_httpd_conn *c) {
  if (c->closing || c->state == C_LINGER) return;
  c->state = C_LINGER;
  c->deadline = now_ms() + LINGER_MS;
  req_free(c->cur);
  c->cur = NULL;
  free(c->pending);
  c->pending = NULL;
  c->npending = 0;
  if (c->peer_eof) {
    /* Nothing more will come: close once the writes are out (shutdown waits for them). */
  }
  start_reading(c);
  c->shutdown.data = c;
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) conn_close(c, 0);
}


/* --- writing ------------------------------------------------------------------------------ */

/* Longest custom reason phrase kept (see build_head). */
#define REASON_MAX 512

static const char *reason(int status) {
  switch (status) {
#define XX(num, name, string) case num: return #string;
    HTTP_STATUS_MAP(XX)
#undef XX
    default: return "Status";
  }
}


static void on_write(uv_write_t *w, int status);


/* Queues bufs on the connection as one write; returns its token, or 0 (nothing queued). */
static uint64_t write_op(struct galley_httpd_req *req, uv_buf_t *bufs, unsigned nbufs, char *owned,
                         int final, int close_after) {
  struct galley_httpd_conn *c = req->conn;
  struct write_op *op = calloc(1, sizeof *op);
  if (!op) {
    free(owned);
    if (!req->write_status) req->write_status = UV_ENOMEM;
    conn_close(c, 0);
    return 0;
  }
  op->conn = c;
  op->req = req;
  op->token = galley_loop_token();
  op->owned = owned;
  op->final = final;
  op->close_after = close_after;
  op->w.data = op;
  req->refs++;
  int rc = uv_write(&op->w, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write);
  if (rc != 0) {
    req->refs--;
    if (!req->write_status) req->write_status = rc;
    free(owned);
    free(op);
    conn_close(c, 0);
    return 0;
  }
  return op->token;
}


/* The answer to the request in flight is complete: next request, or close. */
static void answer_complete(struct galley_httpd_conn *c, int force_close) {
  struct galley_httpd_req *req = c->inflight;
  if (req) {
    req->done = 1;
    req->conn = NULL;
    c->inflight = NULL;
    force_close |= !req->keep_alive;
  }
  if (force_close || c->peer_eof || c->srv->stopped) {
    conn_finish(c);
    return;
  }
  c->state = C_IDLE;
  c->deadline = now_ms() + c->srv->lim.idle_timeout_ms;
  http_parser_pause(&c->parser, 0);
  char *data = c->pending;
  size_t n = c->npending;
  c->pending = NULL;
  c->npending = 0;
  if (n) feed(c, data, n);
  free(data);
  if (!c->closing && !c->inflight) start_reading(c);
}


static void on_write(uv_write_t *w, int status) {
  struct write_op *op = w->data;
  struct galley_httpd_req *req = op->req;
  struct galley_httpd_conn *c = op->conn;
  if (status < 0) {
    if (!req->write_status) req->write_status = status;
    conn_close(c, 0);
  } else if (op->final && req->conn == c && c->inflight == req && !c->closing) {
    answer_complete(c, op->close_after);
  }
  free(op->owned);
  if (op->token) galley_loop_ready(op->token);
  free(op);
  galley_httpd_release(req);
}


/* Builds the status line and headers (malloc'd). content_length < 0: chunked encoding. */
static char *build_head(const struct galley_httpd_req *req, int status, const struct galley_httpd_pair *h,
                        size_t nh, long long content_length, int keep_alive, size_t *out_len) {
  char *buf = NULL;
  size_t len = 0;
  char line[128];
  /* The pseudo-header ":reason" replaces the standard reason phrase (Proxmox VE puts its error
   * messages there); it is cut at REASON_MAX bytes and must hold no CR, LF or other control. */
  const char *phrase = reason(status);
  size_t phrase_len = strlen(phrase);
  for (size_t i = 0; i < nh; i++) {
    if (strcmp(h[i].name, ":reason") != 0) continue;
    size_t k = 0;
    while (h[i].value[k] && k < REASON_MAX && (unsigned char)h[i].value[k] >= 0x20 && h[i].value[k] != 0x7f) k++;
    if (k > 0 && (h[i].value[k] == '\0' || k == REASON_MAX)) {
      phrase = h[i].value;
      phrase_len = k;
    }
  }
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
  if (append(&buf, &len, line, (size_t)n) != 0 || append(&buf, &len, phrase, phrase_len) != 0 ||
      append(&buf, &len, "\r\n", 2) != 0) {
    free(buf);
    return NULL;
  }
  for (size_t i = 0; i < nh; i++) {
    const char *name = h[i].name, *value = h[i].value;
    if (strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0 ||
        strcasecmp(name, "connection") == 0)
      continue;
    if (!*name || strpbrk(name, "\r\n: ") || strpbrk(value, "\r\n")) continue;  /* no header injection */
    if (append(&buf, &len, name, strlen(name)) || append(&buf, &len, ": ", 2) ||
        append(&buf, &len, value, strlen(value)) || append(&buf, &len, "\r\n", 2)) {
      free(buf);
      return NULL;
    }
  }
  if (content_length >= 0) n = snprintf(line, sizeof line, "Content-Length: %lld\r\n", content_length);
  else n = snprintf(line, sizeof line, "Transfer-Encoding: chunked\r\n");
  if (append(&buf, &len, line, (size_t)n) != 0) return NULL;
  if (!keep_alive && append(&buf, &len, "Connection: close\r\n", 19) != 0) return NULL;
  if (append(&buf, &len, "\r\n", 2) != 0) return NULL;
  (void)req;
  *out_len = len;
  return buf;
}


static int can_answer(const struct galley_httpd_req *req) {
  return req->conn && !req->conn->closing && req->conn->inflight == req;
}


uint64_t galley_httpd_respond(struct galley_httpd_req *req, int status,
                              const struct galley_httpd_pair *headers, size_t nheaders,
                              const char *body, size_t len, size_t truncate_at) {
  if (!can_answer(req) || req->head_sent) return 0;
  req->head_sent = 1;
  int cut = truncate_at < len;
  if (cut) req->keep_alive = 0;
  size_t hlen;
  char *head = build_head(req, status, headers, nheaders, (long long)len, req->keep_alive, &hlen);
  if (!head) {
    req->write_status = UV_ENOMEM;
    conn_close(req->conn, 0);
    return 0;
  }
  uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init((char *)body, 0)};
  unsigned nbufs = 1;
  size_t send = cut ? truncate_at : len;
  if (!req->head_request && send > 0) {
    bufs[1] = uv_buf_init((char *)body, (unsigned)send);
    nbufs = 2;
  }
  return write_op(req, bufs, nbufs, head, 1, cut);
}


uint64_t galley_httpd_stream_head(struct galley_httpd_req *req, int status,
                                  const struct galley_httpd_pair *headers, size_t nheaders) {
  if (!can_answer(req) || req->head_sent) return 0;
  req->head_sent = 1;
  req->chunked = 1;
  size_t hlen;
  char *head = build_head(req, status, headers, nheaders, -1, req->keep_alive, &hlen);
  if (!head) {
    req->write_status = UV_ENOMEM;
    conn_close(req->conn, 0);
    return 0;
  }
  uv_buf_t buf = uv_buf_init(head, (unsigned)hlen);
  return write_op(req, &buf, 1, head, 0, 0);
}


uint64_t galley_httpd_stream_chunk(struct galley_httpd_req *req, const char *data, size_t len) {
  if (!can_answer(req) || !req->chunked) return 0;
  if (len == 0 || req->head_request) {
    uint64_t t = galley_loop_token();
    galley_loop_ready(t);
    return t;
  }
  char *prefix = malloc(24);
  if (!prefix) {
    req->write_status = UV_ENOMEM;
    conn_close(req->conn, 0);
    return 0;
  }
  int n = snprintf(prefix, 24, "%zx\r\n", len);
  uv_buf_t bufs[3] = {uv_buf_init(prefix, (unsigned)n), uv_buf_init((char *)data, (unsigned)len),
                      uv_buf_init("\r\n", 2)};
  return write_op(req, bufs, 3, prefix, 0, 0);
}


uint64_t galley_httpd_stream_end(struct galley_httpd_req *req) {
  if (!can_answer(req) || !req->chunked) return 0;
  uv_buf_t buf = uv_buf_init(req->head_request ? "" : "0\r\n\r\n", req->head_request ? 0 : 5);
  return write_op(req, &buf, 1, NULL, 1, 0);
}


void galley_httpd_abort(struct galley_httpd_req *req, int reset) {
  if (!req->conn) return;
  if (!req->write_status) req->write_status = UV_ECANCELED;
  conn_close(req->conn, reset);
}


int galley_httpd_ok(const struct galley_httpd_req *req) {
  return req->write_status == 0 && (req->conn != NULL || req->done);
}


int galley_httpd_peer_gone(const struct galley_httpd_req *req) {
  if (!req->conn || req->conn->closing || req->conn->peer_eof) return !req->done;
  uv_os_fd_t fd;
  if (uv_fileno((const uv_handle_t *)&req->conn->tcp, &fd) != 0) return 1;
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return 1; /* FIN: the client will send nothing more, nor read our answer */
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return 1; /* reset */
  return 0;
}


void galley_httpd_release(struct galley_httpd_req *req) {
  if (!req || --req->refs > 0) return;
  if (req->conn) conn_close(req->conn, 0);  /* never (fully) answered */
  req_free(req);
}


/* Answers a request the server refuses by itself (JSON detail), then closes. */
static void reject(struct galley_httpd_conn *c, int status, const char *detail) {
  char body[160];
  int blen = snprintf(body, sizeof body, "{\"detail\":\"%s\"}", detail);
  char *head = malloc(512);
  if (!head) {
    conn_close(c, 0);
    return;
  }
  int hlen = snprintf(head, 512,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n%s",
                      status, reason(status), status == 401 ? "WWW-Authenticate: Bearer\r\n" : "", blen, body);
  req_free(c->cur);
  c->cur = NULL;
  uv_buf_t buf = uv_buf_init(head, (unsigned)hlen);
  struct write_op *op = calloc(1, sizeof *op);
  struct galley_httpd_req *dummy = calloc(1, sizeof *dummy);  /* keeps on_write uniform */
  if (!op || !dummy) {
    free(op);
    free(dummy);
    free(head);
    conn_close(c, 0);
    return;
  }
  dummy->refs = 1;
  op->conn = c;
  op->req = dummy;
  op->owned = head;
  op->w.data = op;
  if (uv_write(&op->w, (uv_stream_t *)&c->tcp, &buf, 1, on_write) != 0) {
    free(op);
    free(dummy);
    free(head);
    conn_close(c, 0);
    return;
  }
  conn_finish(c);
}


/* --- parsing ------------------------------------------------------------------------------ */

static int fail(struct galley_httpd_conn *c, int status) {
  c->reject = status;
  return -1;
}


static int count_head(struct galley_httpd_conn *c, size_t n) {
  c->head_bytes += n;
  return c->head_bytes > c->srv->lim.max_header_bytes;
}


static int on_message_begin(http_parser *p) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd_req *rq = calloc(1, sizeof *rq);
  if (!rq) return fail(c, 500);
  rq->refs = 1;
  rq->conn_id = c->id;
  rq->write_status = 0;
  c->cur = rq;
  c->head_bytes = 0;
  c->in_field = 0;
  if (c->state == C_IDLE) {
    c->state = C_HEAD;
    c->deadline = now_ms() + c->srv->lim.header_timeout_ms;
  }
  return 0;
}


static int on_url(http_parser *p, const char *at, size_t n) {
  struct galley_httpd_conn *c = p->data;
  if (count_head(c, n)) return fail(c, 431);
  return append(&c->cur->url, &c->cur->url_len, at, n) ? fail(c, 500) : 0;
}


static int on_header_field(http_parser *p, const char *at, size_t n) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd_req *rq = c->cur;
  if (count_head(c, n)) return fail(c, 431);
  if (!c->in_field) {
    if (push_pair(&rq->headers, &rq->nheaders, &rq->cap_headers, dup_n("", 0), dup_n("", 0)) != 0)
      return fail(c, 500);
    c->in_field = 1;
    c->field_len = c->value_len = 0;
  }
  return append(&rq->headers[rq->nheaders - 1].name, &c->field_len, at, n) ? fail(c, 500) : 0;
}


static int on_header_value(http_parser *p, const char *at, size_t n) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd_req *rq = c->cur;
  if (count_head(c, n)) return fail(c, 431);
  c->in_field = 0;
  if (rq->nheaders == 0) return fail(c, 400);
  return append(&rq->headers[rq->nheaders - 1].value, &c->value_len, at, n) ? fail(c, 500) : 0;
}


static int on_headers_complete(http_parser *p) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd *srv = c->srv;
  struct galley_httpd_req *rq = c->cur;
  /* Protocol upgrades are not served; CONNECT is answered like any request (a proxy trap in the
   * specs records it and refuses it), and the connection ends after that answer. */
  if (p->upgrade && p->method != HTTP_CONNECT) return fail(c, 400);
  for (size_t i = 0; i < rq->nheaders; i++)
    for (char *s = rq->headers[i].name; *s; s++) *s = (char)tolower((unsigned char)*s);
  rq->method = http_method_str((enum http_method)p->method);
  rq->head_request = p->method == HTTP_HEAD;
  const char *url = rq->url ? rq->url : "/";
  const char *q = strchr(url, '?');
  size_t plen = q ? (size_t)(q - url) : strlen(url);
  rq->path = galley_httpd_decode(url, plen, 0);
  rq->raw_query = q ? dup_n(q + 1, strlen(q + 1)) : dup_n("", 0);
  if (!rq->path || !rq->raw_query || parse_query(rq) != 0) return fail(c, 500);

  int sized = p->content_length != ULLONG_MAX;
  int has_body = (p->flags & F_CHUNKED) || (sized && p->content_length > 0);
  if (sized && p->content_length > srv->lim.max_body) return fail(c, 413);
  if (srv->bearer && has_body) {
    int had_key;
    if (!authorized(srv, rq, &had_key)) return fail(c, had_key ? 4011 : 401);
  }
  if (has_body) {
    const char *expect = find_header(rq, "expect");
    if (expect && strcasecmp(expect, "100-continue") == 0) {
      uv_buf_t buf = uv_buf_init("HTTP/1.1 100 Continue\r\n\r\n", 25);
      uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);  /* best effort: the client goes on anyway */
    }
  }
  c->state = C_BODY;
  c->deadline = now_ms() + srv->lim.idle_timeout_ms;
  return 0;
}


static int on_body(http_parser *p, const char *at, size_t n) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd_req *rq = c->cur;
  if (rq->body_len + n > c->srv->lim.max_body) return fail(c, 413);
  if (rq->body_len + n + 1 > rq->body_cap) {
    size_t cap = rq->body_cap ? rq->body_cap : 4096;
    while (cap < rq->body_len + n + 1) cap *= 2;
    if (cap > c->srv->lim.max_body + 1) cap = c->srv->lim.max_body + 1;
    char *b = realloc(rq->body, cap);
    if (!b) return fail(c, 500);
    rq->body = b;
    rq->body_cap = cap;
  }
  memcpy(rq->body + rq->body_len, at, n);
  rq->body_len += n;
  rq->body[rq->body_len] = '\0';
  c->deadline = now_ms() + c->srv->lim.idle_timeout_ms;
  return 0;
}


static int on_message_complete(http_parser *p) {
  struct galley_httpd_conn *c = p->data;
  struct galley_httpd *srv = c->srv;
  struct galley_httpd_req *rq = c->cur;
  c->cur = NULL;
  if (!rq->body) {
    rq->body = dup_n("", 0);
    if (!rq->body) {
      req_free(rq);
      return fail(c, 500);
    }
  }
  rq->keep_alive = http_should_keep_alive(p) && !srv->stopped && p->method != HTTP_CONNECT;
  rq->conn = c;
  c->inflight = rq;
  c->state = C_BUSY;
  c->deadline = 0;
  if (srv->q_tail) srv->q_tail->next = rq;
  else srv->q_head = rq;
  srv->q_tail = rq;
  srv->st.requests++;
  if (srv->wait_token) {
    galley_loop_ready(srv->wait_token);
    srv->wait_token = 0;
  }
  http_parser_pause(p, 1);  /* one request at a time: the rest waits in c->pending */
  return 0;
}


static void feed(struct galley_httpd_conn *c, const char *data, size_t len) {
  size_t n = http_parser_execute(&c->parser, &settings, data, len);
  enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
  if (e == HPE_PAUSED) {
    if (n < len) {
      c->pending = dup_n(data + n, len - n);
      if (!c->pending) {
        conn_close(c, 0);
        return;
      }
      c->npending = len - n;
    }
    return;
  }
  if (e == HPE_OK && (!c->parser.upgrade || c->parser.method == HTTP_CONNECT)) return;
  struct galley_httpd *srv = c->srv;
  int status = c->reject ? c->reject : 400;
  switch (status) {
    case 401:
    case 4011:
      srv->st.unauthorized++;
      reject(c, 401, status == 401 ? "Not authenticated" : "Invalid API key");
      return;
    case 413:
      srv->st.too_large++;
      reject(c, 413, "request body too large");
      return;
    case 431:
      srv->st.too_large++;
      reject(c, 431, "request header fields too large");
      return;
    case 500:
      reject(c, 500, "out of memory");
      return;
    default:
      srv->st.bad_requests++;
      reject(c, 400, "bad request");
  }
}


static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct galley_httpd_conn *c = s->data;
  if (nread == 0 || c->closing) return;
  if (nread < 0) {
    stop_reading(c);
    if (nread != UV_EOF) {
      conn_close(c, 0);
      return;
    }
    c->peer_eof = 1;
    /* A request in flight is still answered (the client only closed its sending side);
     * anything else ends here. */
    if (!c->inflight || c->state == C_LINGER) conn_close(c, 0);
    return;
  }
  if (c->state == C_LINGER) return;  /* drained */
  if (c->inflight) {
    if (c->npending + (size_t)nread > MAX_PENDING) {
      stop_reading(c);  /* the client sends ahead too much: wait for the answer first */
      return;
    }
    if (append(&c->pending, &c->npending, buf->base, (size_t)nread) != 0) conn_close(c, 0);
    if (c->npending >= MAX_PENDING) stop_reading(c);
    return;
  }
  feed(c, buf->base, (size_t)nread);
}


/* --- accepting, limits and timeouts ------------------------------------------------------- */

static int evictable(const struct galley_httpd_conn *c) {
  return c->state == C_HEAD || c->state == C_IDLE || c->state == C_LINGER;
}


/* Closes the oldest idle or still-sending-headers connection (of `cl` when given). */
static int evict_one(struct galley_httpd *srv, struct client *cl) {
  for (struct galley_httpd_conn *c = srv->head; c; c = c->next) {
    if ((cl && c->client != cl) || !evictable(c)) continue;
    srv->st.evicted++;
    conn_close(c, 0);
    return 1;
  }
  return 0;
}


static void on_connection(uv_stream_t *ls, int status) {
  struct galley_httpd *srv = ls->data;
  if (status < 0 || srv->stopped) return;
  struct galley_httpd_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = srv;
  uv_tcp_init(galley_loop(), &c->tcp);
  c->tcp.data = c;
  srv->handles++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  uv_unref((uv_handle_t *)&c->tcp);
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage peer;
  int plen = sizeof peer;
  char addr[64] = "?";
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0) {
    if (peer.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&peer, addr, sizeof addr);
    else if (peer.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&peer, addr, sizeof addr);
  }
  struct client *cl = client_get(srv, addr);
  int room = cl != NULL;
  if (room && cl->n >= srv->lim.max_per_client) room = evict_one(srv, cl);
  if (room && srv->st.open >= srv->lim.max_connections) room = evict_one(srv, NULL);
  if (!room) {
    srv->st.refused++;
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Content-Length: 31\r\nConnection: close\r\n\r\n{\"detail\":\"too many connections\"}";
    uv_buf_t b = uv_buf_init((char *)busy, sizeof busy - 1);
    uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (cl && cl->n == 0) {
      cl->n = 1;
      client_put(srv, cl);
    }
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  c->client = cl;
  c->id = ++srv->next_conn;
  srv->st.connections++;
  list_add(srv, c);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->state = C_HEAD;
  c->deadline = now_ms() + srv->lim.header_timeout_ms;
  start_reading(c);
}


static void on_sweep(uv_timer_t *t) {
  struct galley_httpd *srv = t->data;
  uint64_t now = now_ms();
  struct galley_httpd_conn *c = srv->head;
  while (c) {
    struct galley_httpd_conn *next = c->next;
    if (c->deadline && now >= c->deadline) {
      if (c->state != C_LINGER) srv->st.timed_out++;
      conn_close(c, 0);
    }
    c = next;
  }
}


struct galley_httpd *galley_httpd_start(int port, const struct galley_httpd_limits *limits,
                                        char *code, size_t code_len, char *msg, size_t msg_len) {
  if (port < 0 || port > 65535) {
    snprintf(code, code_len, "HTTPD_BIND");
    snprintf(msg, msg_len, "port %d out of range", port);
    return NULL;
  }
  if (!settings.on_message_complete) {
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
  }
  struct galley_httpd *srv = calloc(1, sizeof *srv);
  if (!srv) {
    snprintf(code, code_len, "HTTPD_START");
    snprintf(msg, msg_len, "out of memory");
    return NULL;
  }
  struct galley_httpd_limits lim = {0};
  if (limits) lim = *limits;
  if (!lim.max_body) lim.max_body = GALLEY_HTTPD_MAX_BODY;
  if (!lim.max_header_bytes) lim.max_header_bytes = GALLEY_HTTPD_MAX_HEADER_BYTES;
  if (!lim.max_connections) lim.max_connections = GALLEY_HTTPD_MAX_CONNECTIONS;
  if (!lim.max_per_client) lim.max_per_client = GALLEY_HTTPD_MAX_PER_CLIENT;
  if (!lim.header_timeout_ms) lim.header_timeout_ms = GALLEY_HTTPD_HEADER_TIMEOUT_MS;
  if (!lim.idle_timeout_ms) lim.idle_timeout_ms = GALLEY_HTTPD_IDLE_TIMEOUT_MS;
  if (lim.bearer) {
    srv->bearer = dup_n(lim.bearer, strlen(lim.bearer));
    if (!srv->bearer) {
      free(srv);
      snprintf(code, code_len, "HTTPD_START");
      snprintf(msg, msg_len, "out of memory");
      return NULL;
    }
  }
  lim.bearer = NULL;
  srv->lim = lim;
  uv_loop_t *loop = galley_loop();
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  srv->handles = 1;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);  /* loopback only, never any other address */
  int rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
  int slen = sizeof sa;
  if (rc == 0) rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&sa, &slen);
  if (rc != 0) {
    snprintf(code, code_len, "HTTPD_BIND");
    snprintf(msg, msg_len, "cannot listen on 127.0.0.1:%d: %s", port, uv_strerror(rc));
    srv->stopped = 1;
    uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
    return NULL;
  }
  srv->port = ntohs(sa.sin_port);
  /* The server alone keeps no wait alive: it is served while anything else waits. */
  uv_unref((uv_handle_t *)&srv->listener);
  uv_timer_init(loop, &srv->sweep);
  srv->sweep.data = srv;
  srv->handles++;
  uv_timer_start(&srv->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
  uv_unref((uv_handle_t *)&srv->sweep);
  return srv;
}


int galley_httpd_port(const struct galley_httpd *srv) { return srv->port; }


void galley_httpd_get_stats(const struct galley_httpd *srv, struct galley_httpd_stats *out) { *out = srv->st; }


struct galley_httpd_req *galley_httpd_take(struct galley_httpd *srv) {
  struct galley_httpd_req *rq = srv->q_head;
  if (!rq) return NULL;
  srv->q_head = rq->next;
  if (!srv->q_head) srv->q_tail = NULL;
  rq->next = NULL;
  return rq;
}


uint64_t galley_httpd_wait(struct galley_httpd *srv) {
  if (srv->q_head || srv->stopped) return 0;
  /* A fresh token each time: a waiter that was cancelled abandoned the previous one. */
  srv->wait_token = galley_loop_token();
  return srv->wait_token;
}


int galley_httpd_stopped(const struct galley_httpd *srv) { return srv->stopped; }


void galley_httpd_stop(struct galley_httpd *srv) {
  if (!srv || srv->stopped) return;
  srv->stopped = 1;
  if (srv->wait_token) {
    galley_loop_ready(srv->wait_token);
    srv->wait_token = 0;
  }
  struct galley_httpd_req *rq;
  while ((rq = galley_httpd_take(srv)) != NULL) galley_httpd_release(rq);
  while (srv->head) conn_close(srv->head, 0);
  uv_timer_stop(&srv->sweep);
  uv_close((uv_handle_t *)&srv->sweep, on_handle_closed);
  uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
}
