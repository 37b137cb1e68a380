/* Unit tests for src/core/morph.c (URL and query building, Retry-After, SSE parsing, client
 * construction, prepared requests) and src/core/http.c on the event loop (completion, abort). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <curl/curl.h>
#include <sodium.h>
#include "check.h"
#include "http.h"
#include "loop.h"
#include "morph.h"
#include "sig.h"


static void morph_should_find_endpoints_by_dotted_or_method_name(void) {
  const galley_morph_endpoint *e = galley_morph_endpoint_find("instances.get");
  CHECK(e != NULL);
  CHECK(e == galley_morph_endpoint_find("instances_get"));
  CHECK_STR(e->path, "/instance/{instance_id}");
  CHECK(galley_morph_endpoint_find("instances_ssh_key_rotate") == galley_morph_endpoint_find("instances.ssh_key_rotate"));
  CHECK(galley_morph_endpoint_find("instances.nope") == NULL);
  CHECK(galley_morph_endpoint_find("instances") == NULL);
  CHECK(galley_morph_endpoint_find(NULL) == NULL);
}


static void morph_should_mark_creating_and_running_calls_not_idempotent(void) {
  const char *creators[] = {"instances.start", "snapshots.boot", "instances.branch", "instances.snapshot",
                            "instances.exec", "instances.exec_sse", "snapshots.create"};
  for (size_t i = 0; i < sizeof creators / sizeof creators[0]; i++)
    CHECK(!galley_morph_endpoint_find(creators[i])->idempotent);
  CHECK(galley_morph_endpoint_find("instances.get")->idempotent);
  CHECK(galley_morph_endpoint_find("instances.stop")->idempotent);
  CHECK_STR(galley_morph_endpoint_find("instances.start")->stamp, "metadata");
  CHECK_STR(galley_morph_endpoint_find("instances.branch")->stamp, "instance_metadata");
  for (size_t i = 0; i < galley_morph_nendpoints; i++)
    for (size_t j = i + 1; j < galley_morph_nendpoints; j++)
      CHECK(strcmp(galley_morph_endpoints[i].name, galley_morph_endpoints[j].name) != 0);
}


static void morph_should_percent_encode_all_but_unreserved(void) {
  char buf[64];
  CHECK(galley_morph_url_encode("aZ09-._~", 8, buf, sizeof buf) == 8);
  CHECK_STR(buf, "aZ09-._~");
  galley_morph_url_encode("a b/c[d]&=?%", 12, buf, sizeof buf);
  CHECK_STR(buf, "a%20b%2Fc%5Bd%5D%26%3D%3F%25");
  /* snprintf-style: reports the full length, writes what fits */
  CHECK(galley_morph_url_encode("a b", 3, buf, 3) == 5);
  CHECK_STR(buf, "a%");
  CHECK(galley_morph_url_encode("\xc3\xa9", 2, NULL, 0) == 6);
}


static void morph_should_fill_path_templates_and_append_queries(void) {
  char buf[256];
  galley_morph_kv params[] = {{"instance_id", "morphvm_ab/1"}, {"service_name", "web"}};
  size_t n = galley_morph_build_path("/instance/{instance_id}/http/{service_name}", params, 2, NULL, 0,
                                     buf, sizeof buf, NULL, NULL);
  CHECK_STR(buf, "/instance/morphvm_ab%2F1/http/web");
  CHECK(n == strlen(buf));

  galley_morph_kv query[] = {{"digest", "abc"}, {"metadata[env]", "dev"}, {"metadata[a b]", "x&y"}};
  galley_morph_build_path("/snapshot", NULL, 0, query, 3, buf, sizeof buf, NULL, NULL);
  CHECK_STR(buf, "/snapshot?digest=abc&metadata%5Benv%5D=dev&metadata%5Ba%20b%5D=x%26y");

  galley_morph_kv snap[] = {{"snapshot_id", "snapshot_1"}};
  galley_morph_kv extra[] = {{"x", "1"}};
  galley_morph_build_path("/instance?snapshot_id={snapshot_id}", snap, 1, extra, 1, buf, sizeof buf, NULL, NULL);
  CHECK_STR(buf, "/instance?snapshot_id=snapshot_1&x=1");

  const char *missing = NULL;
  size_t missing_len = 0;
  CHECK(galley_morph_build_path("/instance/{instance_id}", NULL, 0, NULL, 0, buf, sizeof buf, &missing,
                                &missing_len) == (size_t)-1);
  CHECK(missing_len == 11 && strncmp(missing, "instance_id", 11) == 0);

  /* length first, then fill */
  size_t need = galley_morph_build_path("/instance/{instance_id}", params, 2, NULL, 0, NULL, 0, NULL, NULL);
  CHECK(need == strlen("/instance/morphvm_ab%2F1"));
}


static void morph_should_parse_retry_after_seconds_and_dates(void) {
  CHECK(galley_morph_parse_retry_after("1", 0) == 1000);
  CHECK(galley_morph_parse_retry_after(" 2 ", 0) == 2000);
  CHECK(galley_morph_parse_retry_after("0", 0) == 0);
  CHECK(galley_morph_parse_retry_after("1.5", 0) == 1500);
  CHECK(galley_morph_parse_retry_after(NULL, 0) == -1);
  CHECK(galley_morph_parse_retry_after("", 0) == -1);
  CHECK(galley_morph_parse_retry_after("soon", 0) == -1);
  CHECK(galley_morph_parse_retry_after("5x", 0) == -1);
  /* Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 */
  CHECK(galley_morph_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412475) == 5000);
  CHECK(galley_morph_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490) == 0);
  /* Far-future dates are capped at a year, like delta-seconds (found by tests/fuzz). */
  CHECK(galley_morph_parse_retry_after("Wed, 21 Oct 20115r", 1700000000) == 86400L * 365 * 1000);
  CHECK(galley_morph_parse_retry_after("99999999999999999999", 0) == 86400L * 365 * 1000);
}


static void morph_should_make_distinct_hex_request_tokens(void) {
  char a[33], b[33];
  galley_morph_request_token(a);
  galley_morph_request_token(b);
  CHECK(strlen(a) == 32);
  CHECK(strspn(a, "0123456789abcdef") == 32);
  CHECK(strcmp(a, b) != 0);
}


typedef struct {
  char seen[8][64];
  int n;
  int stop_at;
} sse_log;


static int on_event(void *ud, const char *data, size_t len) {
  sse_log *l = ud;
  if (l->n < 8) snprintf(l->seen[l->n], sizeof l->seen[0], "%.*s", (int)len, data);
  l->n++;
  return l->stop_at && l->n >= l->stop_at ? 7 : 0;
}


static void sse_should_report_data_lines_split_anywhere(void) {
  const char *stream = ": comment\r\ndata: {\"a\":1}\r\nevent: x\n\ndata:{\"b\":2}\ndata: [DONE]";
  size_t len = strlen(stream);
  for (size_t step = 1; step <= len; step++) {
    galley_sse p = {0};
    sse_log l = {0};
    for (size_t i = 0; i < len; i += step)
      CHECK(galley_sse_feed(&p, stream + i, i + step > len ? len - i : step, on_event, &l) == 0);
    CHECK(galley_sse_flush(&p, on_event, &l) == 0);
    CHECK(l.n == 3);
    CHECK_STR(l.seen[0], "{\"a\":1}");
    CHECK_STR(l.seen[1], "{\"b\":2}");
    CHECK_STR(l.seen[2], "[DONE]");
    galley_sse_free(&p);
  }
  galley_sse p = {0};
  sse_log l = {.stop_at = 1};
  CHECK(galley_sse_feed(&p, "data: 1\ndata: 2\n", 16, on_event, &l) == 7);
  CHECK(l.n == 1);
  galley_sse_free(&p);
}


static galley_morph_config config(const char *key, const char *base) {
  galley_morph_config cfg = {key, base, 1000, 1000, false};
  return cfg;
}


static void morph_should_refuse_to_build_a_client_without_key_or_with_a_cleartext_remote_url(void) {
  galley_morph_error err;
  galley_morph_config cfg = config(NULL, "http://127.0.0.1:1/api");
  CHECK(galley_morph_client_new(&cfg, &err) == NULL);
  CHECK_STR(err.code, "AUTHENTICATION_ERROR");
  cfg = config("", NULL);
  CHECK(galley_morph_client_new(&cfg, &err) == NULL);
  CHECK_STR(err.code, "AUTHENTICATION_ERROR");
  cfg = config("k", "http://10.1.2.3/api");
  CHECK(galley_morph_client_new(&cfg, &err) == NULL);
  CHECK_STR(err.code, "VALIDATION_ERROR");
  cfg = config("k", "ftp://127.0.0.1/api");
  CHECK(galley_morph_client_new(&cfg, &err) == NULL);
  CHECK_STR(err.code, "VALIDATION_ERROR");

  cfg = config("k", "http://10.1.2.3/api");
  cfg.insecure = true;
  galley_morph_client *c = galley_morph_client_new(&cfg, &err);
  CHECK(c != NULL);
  galley_morph_client_free(c);

  const char *local[] = {"http://127.0.0.1:8080/api/", "http://localhost/api", "http://[::1]:9/api", NULL};
  for (int i = 0; local[i]; i++) {
    cfg = config("k", local[i]);
    c = galley_morph_client_new(&cfg, &err);
    CHECK(c != NULL);
    if (c && i == 0) CHECK_STR(galley_morph_client_base_url(c), "http://127.0.0.1:8080/api");
    galley_morph_client_free(c);
  }
  cfg = config("k", NULL);
  c = galley_morph_client_new(&cfg, &err);
  CHECK(c && strcmp(galley_morph_client_base_url(c), GALLEY_MORPH_DEFAULT_BASE_URL) == 0);
  galley_morph_client_free(c);
}


static void morph_should_redact_the_key(void) {
  galley_morph_error err;
  galley_morph_config cfg = config("morph_sekrit", "http://127.0.0.1:1/api");
  galley_morph_client *c = galley_morph_client_new(&cfg, &err);
  char buf[] = "detail: bad key morph_sekrit (morph_sekrit)";
  galley_morph_redact(c, buf, strlen(buf));
  CHECK_STR(buf, "detail: bad key ************ (************)");
  galley_morph_client_free(c);
}


static void morph_should_prepare_requests_that_creating_calls_never_resend(void) {
  galley_morph_error err;
  galley_morph_config cfg = config("k", "http://127.0.0.1:1/api/");
  galley_morph_client *c = galley_morph_client_new(&cfg, &err);
  galley_morph_prepared p;
  CHECK(galley_morph_prepare(c, galley_morph_endpoint_find("instances.exec"), "/instance/x/exec", "{}", 2, 0, &p) == 0);
  CHECK_STR(p.req.url, "http://127.0.0.1:1/api/instance/x/exec");
  CHECK(p.req.no_resend && !p.req.stream && p.req.timeout_ms == 1000);
  CHECK_STR(p.headers[0], "Authorization: Bearer k");
  CHECK(galley_morph_prepare(c, galley_morph_endpoint_find("instances.exec_sse"), "/i", NULL, 0, -1, &p) == 0);
  CHECK(p.req.stream && p.req.timeout_ms == 0);
  CHECK(galley_morph_prepare(c, galley_morph_endpoint_find("instances.get"), "/i", NULL, 0, 5, &p) == 0);
  CHECK(!p.req.no_resend && p.req.timeout_ms == 5);
  galley_morph_client_free(c);
}


/* Runs the loop until token is ready (or 200 turns pass). */
static int run_until_ready(uint64_t token) {
  for (int i = 0; i < 2000; i++) {
    uint64_t got[16];
    size_t n = galley_loop_take_ready(got, 16);
    for (size_t j = 0; j < n; j++)
      if (got[j] == token) return 1;
    galley_loop_turn(0);
  }
  return 0;
}


static void http_should_fail_a_refused_connect_as_never_sent_on_the_loop(void) {
  galley_http_request req = {.method = "POST", .url = "http://127.0.0.1:1/", .body = "{}", .body_len = 2,
                             .timeout_ms = 5000};
  galley_http_error err;
  galley_http_xfer *x = galley_http_start(&req, &err);
  CHECK(x != NULL && galley_http_inflight() == 1);
  uint64_t token = galley_loop_token();
  galley_http_notify(x, token);
  CHECK(run_until_ready(token));
  CHECK(galley_http_done(x));
  galley_http_response resp;
  CHECK(galley_http_finish(x, &resp, &err) == -1);
  CHECK_STR(err.code, "HTTP_CONNECT");
  CHECK(!err.sent);
  CHECK(galley_http_inflight() == 0);
}


/* A loopback socket that accepts connections (the kernel's backlog) but never answers. */
static int silent_listener(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    return -1;
  *port = ntohs(a.sin_port);
  return fd;
}


static void http_should_abort_a_transfer_finished_before_it_completed(void) {
  int port;
  int fd = silent_listener(&port);
  CHECK(fd >= 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
  galley_http_request req = {.method = "GET", .url = url, .timeout_ms = 10000};
  galley_http_error err;
  galley_http_xfer *x = galley_http_start(&req, &err);
  CHECK(x != NULL);
  for (int i = 0; i < 5; i++) galley_loop_turn(1);
  CHECK(!galley_http_done(x));
  galley_http_response resp;
  CHECK(galley_http_finish(x, &resp, &err) == -1);
  CHECK_STR(err.code, "INTERRUPTED");
  CHECK(galley_http_inflight() == 0);
  close(fd);
}


static void http_should_time_out_on_a_silent_server_after_sending(void) {
  int port;
  int fd = silent_listener(&port);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
  galley_http_request req = {.method = "POST", .url = url, .body = "{}", .body_len = 2, .timeout_ms = 150};
  galley_http_response resp;
  galley_http_error err;
  galley_http_xfer *x = galley_http_start(&req, &err);
  uint64_t token = galley_loop_token();
  galley_http_notify(x, token);
  CHECK(run_until_ready(token));
  CHECK(galley_http_finish(x, &resp, &err) == -1);
  CHECK_STR(err.code, "HTTP_TIMEOUT");
  CHECK(err.sent);
  close(fd);
}


int main(void) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0 || sodium_init() < 0) return 2;
  RUN(morph_should_find_endpoints_by_dotted_or_method_name);
  RUN(morph_should_mark_creating_and_running_calls_not_idempotent);
  RUN(morph_should_percent_encode_all_but_unreserved);
  RUN(morph_should_fill_path_templates_and_append_queries);
  RUN(morph_should_parse_retry_after_seconds_and_dates);
  RUN(morph_should_make_distinct_hex_request_tokens);
  RUN(sse_should_report_data_lines_split_anywhere);
  RUN(morph_should_refuse_to_build_a_client_without_key_or_with_a_cleartext_remote_url);
  RUN(morph_should_redact_the_key);
  RUN(morph_should_prepare_requests_that_creating_calls_never_resend);
  RUN(http_should_fail_a_refused_connect_as_never_sent_on_the_loop);
  RUN(http_should_abort_a_transfer_finished_before_it_completed);
  RUN(http_should_time_out_on_a_silent_server_after_sending);
  int rc = CHECK_DONE();
  curl_global_cleanup();
  return rc;
}
