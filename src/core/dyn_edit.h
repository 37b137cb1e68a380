/* libedit (readline interface), loaded on first use: only the REPL needs it, and linking it
 * would cost every start-up. Include this instead of <editline/readline.h>. */
#ifndef GALLEY_DYN_EDIT_H
#define GALLEY_DYN_EDIT_H

#include <stdio.h>
#include <editline/readline.h>

struct galley_edit_api {
  char *(*readline)(const char *);
  int (*add_history)(const char *);
  int (*read_history)(const char *);
  int (*write_history)(const char *);
  void (*stifle_history)(int);
  void (*using_history)(void);
  void (*replace_line)(const char *, int);
  /* variables */
  int *catch_signals;
  int (**getc_function)(FILE *);
  rl_completion_func_t **attempted_completion_function;
  const char **basic_word_break_characters;
  char **line_buffer;
  int *completion_append_character;
  int *attempted_completion_over;
};

/* The loaded table, or NULL (with a reason in err) when libedit cannot be loaded. */
const struct galley_edit_api *galley_edit(char *err, size_t errlen);

#endif
