/* HTTP transport on libcurl. A session owns one curl multi handle (and so one connection cache):
 * every transfer made through it reuses live connections, HTTP/2 is negotiated over TLS when the
 * server offers it, and TLS verification is always on.
 *
 * A transfer runs in three steps so that a scheduler can later drive many at once:
 *   galley_http_prepare()  builds the request and adds it to the session (no I/O yet);
 *   galley_http_wait()     drives the session until that transfer completes; it polls
 *                          galley_sig_pending() every 50 ms and releases the GIL while polling;
 *   galley_http_finish()   removes the transfer and hands back a response or an error.
 * galley_http_perform() does all three. */
#ifndef GALLEY_HTTP_H
#define GALLEY_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct galley_http_session galley_http_session;
typedef struct galley_http_xfer galley_http_xfer;

/* Why a transfer failed. `code` is a static string, NULL on success:
 *   HTTP_CONNECT   connection refused, DNS failure: the request provably never reached the server
 *   HTTP_TIMEOUT   the time limit passed (connect or transfer; see `sent`)
 *   HTTP_NETWORK   reset, truncated body, garbled reply, any other transfer error
 *   HTTP_TLS       handshake or certificate failure
 *   HTTP_ABORTED   the body sink asked to stop
 *   INTERRUPTED    a signal arrived while waiting */
typedef struct {
  const char *code;
  char message[256];
  int curl_code;
  bool sent;  /* false only when no byte of the request can have reached the server */
} galley_http_error;

/* Streaming body sink: receives each chunk of a 2xx response body as it arrives (non-2xx bodies
 * are always collected). It runs inside curl's write path, with the GIL held; return non-zero to
 * abort the transfer (finish then reports HTTP_ABORTED). */
typedef int (*galley_http_sink)(void *ud, const char *data, size_t len);

typedef struct {
  const char *method;              /* "GET", "POST", ... */
  const char *url;                 /* http:// or https:// only */
  const char *const *headers;      /* "Name: value" lines */
  size_t nheaders;
  const char *body;                /* NULL: none */
  size_t body_len;
  long timeout_ms;                 /* whole transfer; <= 0: no limit */
  long connect_timeout_ms;         /* <= 0: curl's default */
  galley_http_sink sink;           /* NULL: collect the body */
  void *sink_ud;
  bool no_resend;                  /* libcurl resends a request on its own when a reused
                                    * connection dies before any reply: forbid that (the
                                    * transfer then fails with HTTP_NETWORK, sent=true) */
} galley_http_request;

typedef struct {
  char *name;   /* lowercased */
  char *value;  /* repeated headers are joined with ", " */
} galley_http_header;

typedef struct {
  long status;
  galley_http_header *headers;     /* of the final response only */
  size_t nheaders;
  char *body;                      /* NUL-terminated; empty when a sink took it */
  size_t body_len;
  double total_ms;
  long new_connections;            /* connections opened for this transfer (0: one was reused) */
  char http_version[8];            /* "1.1", "2", ... */
} galley_http_response;

galley_http_session *galley_http_session_new(void);
/* Safe on NULL. Aborts any transfer still in the session. */
void galley_http_session_free(galley_http_session *s);

/* Copies everything it needs from req (the sink's ud excepted). NULL + err on setup failure. */
galley_http_xfer *galley_http_prepare(galley_http_session *s, const galley_http_request *req,
                                      galley_http_error *err);
/* Drives the session until x is done (or until every transfer is, when x is NULL).
 * Returns 0, or -1 when a signal became pending (finish then reports INTERRUPTED). */
int galley_http_wait(galley_http_session *s, galley_http_xfer *x);
/* Frees x. On success fills resp (free it with galley_http_response_free) and returns 0;
 * otherwise fills err and returns -1. resp is left zeroed on failure. */
int galley_http_finish(galley_http_xfer *x, galley_http_response *resp, galley_http_error *err);
int galley_http_perform(galley_http_session *s, const galley_http_request *req,
                        galley_http_response *resp, galley_http_error *err);

void galley_http_response_free(galley_http_response *r);
/* The value of a (lowercase) header, or NULL. */
const char *galley_http_response_header(const galley_http_response *r, const char *name);

#endif
