/* libFuzzer target: shell quoting (src/core/shell.c) against a model of how bash reads a word
 * back: unquoted bytes must be from the safe set, '...' is literal, \x is x, and a leading
 * unquoted ~ or ~/ expands to $HOME. Whatever the input (without NUL), bash must read back
 * exactly the input: galley_shell_quote gives the bytes, galley_shell_quote_path (no home known)
 * gives the input with ~ expanded, as galley_shell_expand_home says. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "shell.h"

#define HOME "/home/fz"

static int bare(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         strchr("_./:@%+=,-", c) != NULL;
}


static const char *const reserved[] = {
  "!", "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in",
  "select", "then", "until", "while", "{", "}", "time", "[[", "]]", NULL,
};


/* Bash's reading of one word `w` (n bytes) into out; returns its length, aborts on a byte bash
 * would treat specially. */
static size_t unquote(const char *w, size_t n, char *out) {
  size_t o = 0, i = 0;
  int any_quote = 0;
  if (n >= 1 && w[0] == '~' && (n == 1 || w[1] == '/')) {
    memcpy(out, HOME, strlen(HOME));
    o = strlen(HOME);
    i = 1;
  }
  while (i < n) {
    unsigned char c = (unsigned char)w[i];
    if (c == '\'') {
      any_quote = 1;
      const char *end = memchr(w + i + 1, '\'', n - i - 1);
      if (!end) abort();  /* unterminated quote */
      size_t len = (size_t)(end - (w + i + 1));
      memcpy(out + o, w + i + 1, len);
      o += len;
      i += len + 2;
    } else if (c == '\\') {
      any_quote = 1;
      if (i + 1 >= n) abort();
      out[o++] = w[i + 1];
      i += 2;
    } else {
      if (!bare(c)) abort();  /* bash would expand, split or glob this */
      out[o++] = (char)c;
      i++;
    }
  }
  if (!any_quote) {
    if (n == 0) abort();  /* an empty word vanishes */
    for (int r = 0; reserved[r]; r++)
      if (strlen(reserved[r]) == n && memcmp(reserved[r], w, n) == 0) abort();
    /* NAME=... in command position is an assignment, not a word */
    size_t k = 0;
    while (k < n && ((w[k] >= 'A' && w[k] <= 'Z') || (w[k] >= 'a' && w[k] <= 'z') || w[k] == '_' ||
                     (k > 0 && w[k] >= '0' && w[k] <= '9')))
      k++;
    if (k > 0 && k < n && w[k] == '=') abort();
  }
  return o;
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  if (memchr(s, '\0', size)) return 0;  /* callers reject NUL */
  size_t qn = galley_shell_quote(NULL, s, size);
  char *q = malloc(qn + 1);
  char *back = malloc(qn + strlen(HOME) + 1);
  if (!q || !back) abort();
  if (galley_shell_quote(q, s, size) != qn) abort();
  /* The quoted word never starts with an unquoted ~, so no expansion applies. */
  if (qn > 0 && q[0] == '~') abort();
  size_t bn = unquote(q, qn, back);
  if (bn != size || memcmp(back, s, size) != 0) abort();
  free(q);
  free(back);

  struct galley_str nohome = { NULL, 0 };
  size_t pn = galley_shell_quote_path(NULL, s, size, nohome);
  char *p = malloc(pn + 1);
  back = malloc(pn + strlen(HOME) + 1);
  if (!p || !back) abort();
  if (galley_shell_quote_path(p, s, size, nohome) != pn) abort();
  bn = unquote(p, pn, back);
  size_t en = galley_shell_expand_home(NULL, s, size, HOME, strlen(HOME));
  char *want = malloc(en + 1);
  if (!want) abort();
  galley_shell_expand_home(want, s, size, HOME, strlen(HOME));
  if (bn != en || memcmp(back, want, en) != 0) abort();
  free(want);
  free(p);
  free(back);
  return 0;
}
