/* Minimal test harness for the C unit tests: one executable per core unit, functions named
 * <unit>_should_<behaviour>, run with RUN(fn). Exit status is non-zero when any check failed. */
#ifndef GALLEY_CHECK_H
#define GALLEY_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    check_count++;                                                                  \
    if (!(cond)) {                                                                  \
      check_failures++;                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
    }                                                                               \
  } while (0)

#define CHECK_STR(a, b)                                                             \
  do {                                                                              \
    const char *a_ = (a), *b_ = (b);                                                \
    check_count++;                                                                  \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                        \
      check_failures++;                                                             \
      fprintf(stderr, "%s:%d: expected \"%s\", got \"%s\"\n", __FILE__, __LINE__,   \
              b_ ? b_ : "(null)", a_ ? a_ : "(null)");                              \
    }                                                                               \
  } while (0)

#define RUN(fn)                                                                     \
  do {                                                                              \
    int before_ = check_failures;                                                   \
    fn();                                                                           \
    printf("%s %s\n", check_failures == before_ ? "ok  " : "FAIL", #fn);            \
  } while (0)

#define CHECK_DONE()                                                                \
  (printf("%d checks, %d failed\n", check_count, check_failures), check_failures ? 1 : 0)

#endif
