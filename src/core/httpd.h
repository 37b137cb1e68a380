/* A small HTTP/1.1 server on 127.0.0.1, on the one event loop (loop.h), parsing with nodejs'
 * http-parser (Debian libhttp-parser-dev).
 *
 * The server never calls back into its user while it parses: each complete request (body
 * included) is queued, and the token handed out by galley_httpd_wait is made ready, so the
 * scheduler's accept task takes it (galley_httpd_take) and runs its handler in a task of its
 * own. Answers go back through galley_httpd_respond / _stream_* / _reset, each of which returns
 * a token ready once the bytes are written (or the connection is gone): the caller awaits it,
 * which is the flow control of a streamed body.
 *
 * One request at a time per connection (keep-alive; pipelined bytes wait their turn). Limits
 * (galley_httpd_limits): concurrent connections overall and per client address (at the limit,
 * the oldest connection that is idle or still sending its headers is closed to make room, so a
 * flood of half-sent requests cannot lock clients out), a deadline for the request line and
 * headers, an idle timeout between requests and during an upload, a header size cap (431) and
 * a body cap (413). With a bearer key set, a request that carries a body without
 * `Authorization: Bearer <key>` is answered 401 and closed before its body is read.
 * Everything runs on the loop's thread; nothing here is thread-safe. */
#ifndef GALLEY_HTTPD_H
#define GALLEY_HTTPD_H

#include <stddef.h>
#include <stdint.h>

/* Defaults of galley_httpd_limits (a zero field takes its default). */
#define GALLEY_HTTPD_MAX_BODY (64u * 1024u * 1024u)
#define GALLEY_HTTPD_MAX_HEADER_BYTES (64u * 1024u)
#define GALLEY_HTTPD_MAX_CONNECTIONS 512u
#define GALLEY_HTTPD_MAX_PER_CLIENT 256u
#define GALLEY_HTTPD_HEADER_TIMEOUT_MS 10000u
#define GALLEY_HTTPD_IDLE_TIMEOUT_MS 60000u

struct galley_httpd;
struct galley_httpd_conn;

struct galley_httpd_limits {
  size_t max_body;             /* bytes of one request body; more is 413 */
  size_t max_header_bytes;     /* request line + headers; more is 431 */
  unsigned max_connections;    /* open connections at once */
  unsigned max_per_client;     /* open connections from one client address */
  unsigned header_timeout_ms;  /* from a request's first byte (or accept) to its last header */
  unsigned idle_timeout_ms;    /* keep-alive wait between requests; silence during an upload */
  const char *bearer;          /* NULL: no check; else requests with a body need this key */
};

/* Counters since start (server:stats()). */
struct galley_httpd_stats {
  uint64_t connections;     /* accepted */
  uint64_t open;            /* open now */
  uint64_t requests;        /* complete requests queued */
  uint64_t unauthorized;    /* 401 before the body (bearer check) */
  uint64_t too_large;       /* 413 and 431 */
  uint64_t bad_requests;    /* 400: unparsable */
  uint64_t timed_out;       /* closed by the header or idle timeout */
  uint64_t evicted;         /* closed to make room at a connection limit */
  uint64_t refused;         /* refused at a connection limit (nothing could be evicted) */
};

struct galley_httpd_pair {
  char *name;  /* header names are lowercased; query names and values are percent-decoded */
  char *value;
};

/* A complete request. Owned by whoever took it (galley_httpd_release when done); its
 * connection may go away at any time (then responses are no-ops reporting failure). */
struct galley_httpd_req {
  const char *method;
  char *path;        /* percent-decoded, without the query */
  char *raw_query;   /* as sent, without '?' ("" when absent) */
  struct galley_httpd_pair *query;
  size_t nquery, cap_query;
  struct galley_httpd_pair *headers;
  size_t nheaders, cap_headers;
  char *body;        /* NUL-terminated for convenience; may contain NULs */
  size_t body_len, body_cap;
  uint64_t conn_id;  /* the same for every request on one TCP connection, from 1 */

  /* private */
  char *url;
  size_t url_len;
  int head_request;              /* HEAD: no body is sent */
  int keep_alive;
  int refs;                      /* the owner + each write in flight */
  int write_status;              /* 0, or the first failed write's libuv error */
  int head_sent, chunked, done;
  struct galley_httpd_conn *conn;
  struct galley_httpd_req *next;  /* server queue */
};

/* Starts listening on 127.0.0.1:port (0 picks a free port). On failure returns NULL and writes
 * an UPPER_SNAKE code (HTTPD_BIND, HTTPD_START) and a message into the buffers. */
struct galley_httpd *galley_httpd_start(int port, const struct galley_httpd_limits *limits,
                                        char *code, size_t code_len, char *msg, size_t msg_len);

/* The port actually bound. */
int galley_httpd_port(const struct galley_httpd *srv);

void galley_httpd_get_stats(const struct galley_httpd *srv, struct galley_httpd_stats *out);

/* The next queued request (the caller owns it), or NULL. */
struct galley_httpd_req *galley_httpd_take(struct galley_httpd *srv);

/* 0 when a request is queued or the server is stopped; otherwise a token made ready when one
 * is queued or the server stops. */
uint64_t galley_httpd_wait(struct galley_httpd *srv);

/* Whether galley_httpd_stop was called. */
int galley_httpd_stopped(const struct galley_httpd *srv);

/* Closes the listening socket and every connection (requests already taken stay valid, their
 * responses fail) and frees the server once libuv is done with its handles. Readies the
 * pending wait token. Call once. */
void galley_httpd_stop(struct galley_httpd *srv);

/* Answers `req` in full: status line, the given headers (Content-Length, Transfer-Encoding and
 * Connection from `headers` are replaced by the server's own), then body[0..len), sent as is
 * (the caller keeps the bytes alive until the token is ready). With truncate_at < len the
 * Content-Length still announces len but only truncate_at bytes are sent, then the connection
 * closes. Returns the token of the write, or 0 when the connection is gone or already answered
 * (check galley_httpd_ok). */
uint64_t galley_httpd_respond(struct galley_httpd_req *req, int status,
                              const struct galley_httpd_pair *headers, size_t nheaders,
                              const char *body, size_t len, size_t truncate_at);

/* A streamed answer: the head with chunked encoding, then chunks, then the end. Same token
 * rules as galley_httpd_respond; `data` must stay alive until the token is ready. */
uint64_t galley_httpd_stream_head(struct galley_httpd_req *req, int status,
                                  const struct galley_httpd_pair *headers, size_t nheaders);
uint64_t galley_httpd_stream_chunk(struct galley_httpd_req *req, const char *data, size_t len);
uint64_t galley_httpd_stream_end(struct galley_httpd_req *req);

/* Drops the connection without (more of) an answer: a TCP reset when `reset`, else a close. */
void galley_httpd_abort(struct galley_httpd_req *req, int reset);

/* Whether every write of req so far succeeded and its connection is still there or was handed
 * back after a complete answer. */
int galley_httpd_ok(const struct galley_httpd_req *req);

/* Whether the client of a request still being handled has gone: its connection closed, reset, or
 * shut down its sending side (EOF, seen without consuming pipelined bytes). */
int galley_httpd_peer_gone(const struct galley_httpd_req *req);

/* Drops the owner's reference; a request never answered closes its connection. */
void galley_httpd_release(struct galley_httpd_req *req);

/* Percent-decodes src[0..len) into a new NUL-terminated string (malloc'd; NULL when out of
 * memory); with `plus_is_space`, '+' becomes ' ' as in query strings. Bad escapes stay as-is. */
char *galley_httpd_decode(const char *src, size_t len, int plus_is_space);

#endif
