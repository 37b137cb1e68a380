/* Unit tests for src/core/pm2.c: safe process names and cleaning `pm2 logs --raw` output. */
#include <limits.h>
#include "check.h"
#include "pm2.h"

static char out[4096];


static const char *sanitize(const char *s) {
  size_t n = galley_pm2_sanitize_name(out, s, strlen(s));
  CHECK(n == strlen(out));
  CHECK(n > 0 && n <= GALLEY_PM2_NAME_MAX);
  return out;
}


static void pm2_should_keep_letters_digits_and_dashes(void) {
  CHECK_STR(sanitize("cc-demo"), "cc-demo");
  CHECK_STR(sanitize("Job2"), "Job2");
  CHECK_STR(sanitize("cc demo!"), "cc-demo");
  CHECK_STR(sanitize("a..b__c"), "a-b-c");
  CHECK_STR(sanitize("--a--b--"), "a-b");
  CHECK_STR(sanitize("x.json"), "x-json");
  CHECK_STR(sanitize("/re/"), "re");
  CHECK_STR(sanitize("h\xc3\xa9llo"), "h-llo");
}


static void pm2_should_never_give_an_id_all_or_empty(void) {
  CHECK_STR(sanitize(""), "proc");
  CHECK_STR(sanitize("!!!"), "proc");
  CHECK_STR(sanitize("123"), "p-123");
  CHECK_STR(sanitize("1e5"), "p-1e5");
  CHECK_STR(sanitize("0x1f"), "p-0x1f");
  CHECK_STR(sanitize("all"), "p-all");
  CHECK_STR(sanitize("All"), "p-All");
  CHECK_STR(sanitize("default"), "p-default");
  CHECK_STR(sanitize("Infinity"), "p-Infinity");
  CHECK_STR(sanitize("allx"), "allx");
}


static void pm2_should_stay_under_50_characters(void) {
  char long_name[200];
  memset(long_name, 'a', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  CHECK(strlen(sanitize(long_name)) == 49);
  /* A dash at the cut is trimmed; a prefixed digit run is cut to fit. */
  memset(long_name, 'a', 48);
  strcpy(long_name + 48, "-bc");
  CHECK_STR(sanitize(long_name), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  memset(long_name, '7', 60);
  long_name[60] = '\0';
  CHECK_STR(sanitize(long_name), "p-77777777777777777777777777777777777777777777777");
}


static void pm2_should_tell_safe_names(void) {
  CHECK(galley_pm2_name_is_safe("cc-demo", 7));
  CHECK(!galley_pm2_name_is_safe("cc demo", 7));
  CHECK(!galley_pm2_name_is_safe("12", 2));
  CHECK(!galley_pm2_name_is_safe("all", 3));
  CHECK(!galley_pm2_name_is_safe("", 0));
  CHECK(!galley_pm2_name_is_safe("-a", 2));
}


static const char *logs(const char *s, long lines) {
  size_t n = galley_pm2_logs_text(out, s, strlen(s), lines);
  out[n] = '\0';
  return out;
}


/* Captured from pm2 7.0.4: `pm2 logs logt --nostream --lines 10 --raw` (stdout). */
static const char raw_stdout[] =
  "\033[1m\033[90m[TAILING] Tailing last 10 lines for [logt] process (change the value with --lines option)\033[39m\033[22m\n"
  "\033[90m/tmp/h/logs/logt-out.log last 10 lines:\033[39m\n"
  "out1\n"
  "\n"
  "out2\n"
  "\n"
  "\033[90m/tmp/h/logs/logt-error.log last 10 lines:\033[39m\n"
  "\n";


static void pm2_should_strip_tailing_headers_and_separators(void) {
  CHECK_STR(logs(raw_stdout, 10), "out1\n\nout2\n");
  CHECK_STR(logs(raw_stdout, 0), "out1\n\nout2\n");
  /* With another N the headers are not ours to drop. */
  CHECK(strstr(logs(raw_stdout, 5), "last 10 lines:") != NULL);
}


static void pm2_should_keep_a_trailing_blank_log_line(void) {
  CHECK_STR(logs("[TAILING] x\n/h/a-out.log last 5 lines:\na\n\n\n/h/a-error.log last 5 lines:\n", 5), "a\n\n");
  CHECK_STR(logs("[TAILING] x\n/h/a-error.log last 5 lines:\n/h/a-out.log last 5 lines:\n", 5), "");
  CHECK_STR(logs("[TAILING] only\n", 5), "");
  CHECK_STR(logs("", 5), "");
  CHECK_STR(logs("no newline", 0), "no newline\n");
}


/* Header digits past LONG_MAX must not overflow (UBSan) nor wrap around to `lines`:
 * 27670116110564327423 is LONG_MAX + 2^64. */
static void pm2_should_read_huge_line_counts_without_overflow(void) {
  CHECK_STR(logs("/h/a-out.log last 27670116110564327423 lines:\nx\n", LONG_MAX), "/h/a-out.log last "
    "27670116110564327423 lines:\nx\n");
  CHECK_STR(logs("/h/a-out.log last 99999999999999999999 lines:\nx\n", LONG_MAX), "/h/a-out.log last "
    "99999999999999999999 lines:\nx\n");
  CHECK_STR(logs("/h/a-out.log last 9223372036854775807 lines:\nx\n", LONG_MAX), "x\n");
  CHECK_STR(logs("/h/a-out.log last 922337203685477580 lines:\nx\n", LONG_MAX / 10), "x\n");
  CHECK_STR(logs("/h/a-out.log last 7 lines:\nx\n", 3), "/h/a-out.log last 7 lines:\nx\n");
}


int main(void) {
  RUN(pm2_should_keep_letters_digits_and_dashes);
  RUN(pm2_should_never_give_an_id_all_or_empty);
  RUN(pm2_should_stay_under_50_characters);
  RUN(pm2_should_tell_safe_names);
  RUN(pm2_should_strip_tailing_headers_and_separators);
  RUN(pm2_should_keep_a_trailing_blank_log_line);
  RUN(pm2_should_read_huge_line_counts_without_overflow);
  return CHECK_DONE();
}
