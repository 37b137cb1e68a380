/* HTTP transport on libcurl, driven by the event loop (src/core/loop.h).
 *
 * One curl multi handle serves the whole process: every transfer shares its connection cache
 * (HTTP/1.1 keep-alive, HTTP/2 multiplexing over TLS when offered) and many transfers are in
 * flight at once. libcurl runs on libuv through curl_multi_socket_action: a uv_poll_t per
 * socket curl asks to watch and one uv_timer_t for curl's timeouts (curl's docs/examples/
 * multi-uv.c shows the technique). Nothing polls, nothing blocks: a transfer is started, the
 * caller asks for a loop token to be readied when it completes (or, when streaming, when more
 * body bytes arrived), and collects the result once the token is ready. TLS verification is
 * always on.
 *
 *   galley_http_start()    builds the request and adds it to the multi handle;
 *   galley_http_notify()   the token to ready at completion (or at new stream data);
 *   galley_http_finish()   removes the transfer (aborting it when not done) and hands back a
 *                          response or an error.
 * Callbacks run on the loop's thread from inside uv_run; they never call Lua. */
#ifndef GALLEY_HTTP_H
#define GALLEY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct galley_http_xfer galley_http_xfer;

/* Why a transfer failed. `code` is a static string, NULL on success:
 *   HTTP_CONNECT   connection refused, DNS failure: the request provably never reached the server
 *   HTTP_TIMEOUT   the time limit passed (connect or transfer; see `sent`)
 *   HTTP_NETWORK   reset, truncated body, garbled reply, any other transfer error
 *   HTTP_TLS       handshake or certificate failure
 *   INTERRUPTED    finished before it completed (the caller's wait was cancelled) */
typedef struct {
  const char *code;
  char message[256];
  int curl_code;
  bool sent;  /* false only when no byte of the request can have reached the server */
} galley_http_error;

typedef struct {
  const char *method;              /* "GET", "POST", ... */
  const char *url;                 /* http:// or https:// only */
  const char *const *headers;      /* "Name: value" lines */
  size_t nheaders;
  const char *body;                /* NULL: none */
  size_t body_len;
  long timeout_ms;                 /* whole transfer; <= 0: no limit */
  long connect_timeout_ms;         /* <= 0: curl's default */
  bool stream;                     /* a 2xx body is handed over in pieces (galley_http_stream_peek) */
  bool fresh;                      /* a new connection, closed afterwards (not from the pool) */
  bool no_resend;                  /* libcurl resends a request on its own when a reused
                                    * connection dies before any reply: forbid that (the
                                    * transfer then fails with HTTP_NETWORK, sent=true) */
  const char *ca_file;             /* PEM bundle to verify the server with (NULL: the system's) */
  const char *pinned_public_key;   /* libcurl's CURLOPT_PINNEDPUBLICKEY ("sha256//BASE64;..."):
                                    * the server's public key must match, checked before any
                                    * request byte is sent; with it the chain is not verified
                                    * (a self-signed node certificate), the key is */
  bool insecure;                   /* no verification at all (the caller warns) */
} galley_http_request;

typedef struct {
  char *name;   /* lowercased */
  char *value;  /* repeated headers are joined with ", " */
} galley_http_header;

/* The header recorder behind every transfer's header callback (exposed for tests and the
 * fuzz target tests/fuzz/fuzz_http_headers.c). galley_http_headers_add takes one raw header
 * line as libcurl hands it over ("Name: value\r\n"): the name is lowercased, name and value
 * are trimmed (a NUL byte reads as a space), a repeated name gets its non-empty values joined
 * with ", ", a line without ':' is skipped, and a status line ("HTTP/...") forgets everything
 * so far (a new response: after a 1xx or a redirect). Lines past GALLEY_HTTP_MAX_HEADER_BYTES
 * in all are dropped (the body still arrives). false: out of memory (what was recorded stays valid). Start from a zeroed struct;
 * galley_http_headers_free empties it (safe twice). */
#define GALLEY_HTTP_MAX_HEADER_BYTES (64 * 1024)

typedef struct {
  galley_http_header *items;
  size_t n;
  size_t bytes;                    /* raw bytes of the lines kept */
} galley_http_headers;

bool galley_http_headers_add(galley_http_headers *h, const char *line, size_t len);
void galley_http_headers_free(galley_http_headers *h);

typedef struct {
  long status;
  galley_http_header *headers;     /* of the final response only */
  size_t nheaders;
  char *body;                      /* NUL-terminated; what a stream reader did not take */
  size_t body_len;
  double total_ms;
  long new_connections;            /* connections opened for this transfer (0: one was reused) */
  char http_version[8];            /* "1.1", "2", ... */
  char reason[128];                /* the status line's reason phrase (HTTP/1.x; "" on HTTP/2) */
} galley_http_response;

/* Starts a transfer (copies everything it needs from req). NULL + err on setup failure. */
galley_http_xfer *galley_http_start(const galley_http_request *req, galley_http_error *err);

/* Readies `token` once: when x completes, or (stream mode) when 2xx body bytes are buffered.
 * Readied at once when that is already the case. 0 cancels. */
void galley_http_notify(galley_http_xfer *x, uint64_t token);

bool galley_http_done(const galley_http_xfer *x);

/* Stream mode: the buffered 2xx body bytes (owned by x, valid until the next call on x) and
 * their length; galley_http_stream_consume() drops them once copied. */
size_t galley_http_stream_peek(galley_http_xfer *x, const char **data);
void galley_http_stream_consume(galley_http_xfer *x);

/* The status of the response being received (0 while unknown). */
long galley_http_status(const galley_http_xfer *x);

/* Removes and frees x (aborting it when not done). On success fills resp (free it with
 * galley_http_response_free) and returns 0; otherwise fills err and returns -1. */
int galley_http_finish(galley_http_xfer *x, galley_http_response *resp, galley_http_error *err);

/* Transfers in flight (started and not finished). */
int galley_http_inflight(void);

void galley_http_response_free(galley_http_response *r);
/* The value of a (lowercase) header, or NULL. */
const char *galley_http_response_header(const galley_http_response *r, const char *name);

#endif
