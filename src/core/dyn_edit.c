/* Loads libedit on first use; see dyn_edit.h. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include "dyn_edit.h"

static struct galley_edit_api api;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];
static int loaded;


static void load(void) {
  void *lib = dlopen("libedit.so.2", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) lib = dlopen("libedit.so", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    snprintf(load_error, sizeof load_error, "cannot load libedit: %s", dlerror());
    return;
  }
  struct { void **slot; const char *name; } syms[] = {
    {(void **)&api.readline, "readline"},
    {(void **)&api.add_history, "add_history"},
    {(void **)&api.read_history, "read_history"},
    {(void **)&api.write_history, "write_history"},
    {(void **)&api.stifle_history, "stifle_history"},
    {(void **)&api.using_history, "using_history"},
    {(void **)&api.replace_line, "rl_replace_line"},
    {(void **)&api.catch_signals, "rl_catch_signals"},
    {(void **)&api.getc_function, "rl_getc_function"},
    {(void **)&api.attempted_completion_function, "rl_attempted_completion_function"},
    {(void **)&api.basic_word_break_characters, "rl_basic_word_break_characters"},
    {(void **)&api.line_buffer, "rl_line_buffer"},
    {(void **)&api.completion_append_character, "rl_completion_append_character"},
    {(void **)&api.attempted_completion_over, "rl_attempted_completion_over"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    *syms[i].slot = dlsym(lib, syms[i].name);
    if (!*syms[i].slot) {
      snprintf(load_error, sizeof load_error, "libedit lacks %s", syms[i].name);
      return;
    }
  }
  loaded = 1;
}


const struct galley_edit_api *galley_edit(char *err, size_t errlen) {
  pthread_once(&once, load);
  if (!loaded && err) snprintf(err, errlen, "%s", load_error);
  return loaded ? &api : NULL;
}
