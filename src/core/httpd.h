/* A small HTTP/1.1 server on 127.0.0.1 (libmicrohttpd, one thread per TCP connection, so
 * keep-alive connections and long requests never block each other). The caller supplies one
 * handler that sees each complete request (body included) and fills in a response: a whole
 * body, a stream of chunks, a body cut short, or a reset connection. Handlers run on the
 * connection's thread; the server itself holds no locks while they run. */
#ifndef GALLEY_HTTPD_H
#define GALLEY_HTTPD_H

#include <stddef.h>
#include <stdint.h>

/* Largest request body accepted; bigger ones are answered 413 without calling the handler. */
#define GALLEY_HTTPD_MAX_BODY (64u * 1024u * 1024u)

struct galley_httpd;

struct galley_httpd_pair {
  char *name;  /* header names are lowercased; query names and values are percent-decoded */
  char *value;
};

struct galley_httpd_request {
  const char *method;
  const char *path;       /* percent-decoded, without the query */
  const char *raw_query;  /* as sent, without '?' ("" when absent) */
  const struct galley_httpd_pair *query;
  size_t nquery;
  const struct galley_httpd_pair *headers;
  size_t nheaders;
  const char *body;       /* NUL-terminated for convenience; may contain NULs */
  size_t body_len;
  uint64_t conn_id;       /* the same for every request on one TCP connection, from 1 */
};

enum galley_httpd_kind {
  GALLEY_HTTPD_FULL,      /* status, headers, body */
  GALLEY_HTTPD_STREAM,    /* status, headers, then chunks from `next` (chunked encoding) */
  GALLEY_HTTPD_TRUNCATE,  /* Content-Length of the whole body, only `truncate_at` bytes, close */
  GALLEY_HTTPD_RESET      /* no response: the connection is reset */
};

/* Produces the next chunk of a streamed body: returns 1 and sets *chunk (malloc'd; the server
 * frees it) and *len, 0 at the end of the body, -1 to abort (the connection is closed). */
typedef int (*galley_httpd_next_fn)(void *ctx, char **chunk, size_t *len);
/* Called once when a stream is done with, finished or not (client gone, server stopping). */
typedef void (*galley_httpd_free_fn)(void *ctx);

struct galley_httpd_response {
  enum galley_httpd_kind kind;
  int status;
  struct galley_httpd_pair *headers;  /* owned; use galley_httpd_response_header */
  size_t nheaders, cap_headers;
  char *body;                         /* owned; use galley_httpd_response_body */
  size_t body_len;
  size_t truncate_at;
  galley_httpd_next_fn next;
  galley_httpd_free_fn free_ctx;
  void *ctx;
};

/* Called on the connection's thread for each complete request. `resp` starts as an empty 200
 * FULL response. If the handler sets a STREAM, `free_ctx(ctx)` is guaranteed to run later. */
typedef void (*galley_httpd_handler)(void *ud, const struct galley_httpd_request *req,
                                     struct galley_httpd_response *resp);

/* Adds a response header (copied). Returns 0, or -1 when out of memory. */
int galley_httpd_response_header(struct galley_httpd_response *resp, const char *name, const char *value);

/* Replaces the response body with a copy of data[0..len). Returns 0, or -1 when out of memory. */
int galley_httpd_response_body(struct galley_httpd_response *resp, const char *data, size_t len);

/* Starts listening on 127.0.0.1:port (0 picks a free port). On failure returns NULL and writes
 * an UPPER_SNAKE code (HTTPD_BIND, HTTPD_START) and a message into the buffers. */
struct galley_httpd *galley_httpd_start(int port, galley_httpd_handler handler, void *ud,
                                        char *code, size_t code_len, char *msg, size_t msg_len);

/* The port actually bound. */
int galley_httpd_port(const struct galley_httpd *srv);

/* Closes the listening socket and every connection, waits for the connection threads (a
 * handler still running delays this until it returns), and frees the server. */
void galley_httpd_stop(struct galley_httpd *srv);

/* Percent-decodes src[0..len) into a new NUL-terminated string (malloc'd; NULL when out of
 * memory); with `plus_is_space`, '+' becomes ' ' as in query strings. Bad escapes stay as-is. */
char *galley_httpd_decode(const char *src, size_t len, int plus_is_space);

#endif
