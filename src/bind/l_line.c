/* galley.core.line: line editing for the REPL (libedit's readline interface), with Lua-driven
 * tab completion and Ctrl-C that cancels the line being edited instead of ending the REPL. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "bind.h"
#include "dyn_edit.h"
#include "sig.h"

#define COMPLETER_KEY "galley.line.completer"

static const struct galley_edit_api *ed;  /* set by luaopen */
static lua_State *completion_L;  /* set only while readline() runs, on the calling thread */
static int line_interrupted;


/* Reads one key; a pending SIGINT cancels the line (readline returns, we report "interrupted"). */
static int getc_interruptible(FILE *in) {
  unsigned char c;
  for (;;) {
    if (galley_sig_pending() == SIGINT) {
      galley_sig_clear();
      line_interrupted = 1;
      ed->replace_line("", 0);
      return '\n';
    }
    struct pollfd p = {fileno(in), POLLIN, 0};
    int r = poll(&p, 1, 50);
    if (r < 0 && errno != EINTR) return EOF;
    if (r <= 0) continue;
    ssize_t n = read(fileno(in), &c, 1);
    if (n == 1) return c;
    if (n == 0) return EOF;
    if (errno != EINTR && errno != EAGAIN) return EOF;
  }
}


/* Candidates come from the Lua completer: fn(word, line) -> {candidate, ...}. */
static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  *ed->attempted_completion_over = 1;  /* never fall back to file names */
  lua_State *L = completion_L;
  if (!L || lua_getfield(L, LUA_REGISTRYINDEX, COMPLETER_KEY) != LUA_TFUNCTION) {
    if (L) lua_pop(L, 1);
    return NULL;
  }
  lua_pushstring(L, text);
  lua_pushstring(L, *ed->line_buffer ? *ed->line_buffer : "");
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  size_t n = lua_rawlen(L, -1);
  if (n == 0) {
    lua_pop(L, 1);
    return NULL;
  }
  /* readline wants matches[0] = the common prefix, then the matches, then NULL. */
  char **matches = calloc(n + 2, sizeof *matches);
  if (!matches) {
    lua_pop(L, 1);
    return NULL;
  }
  size_t k = 1;
  for (size_t i = 1; i <= n; i++) {
    const char *s = (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TSTRING) ? lua_tostring(L, -1) : NULL;
    if (s && (matches[k] = strdup(s)) != NULL) k++;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (k == 1) {
    free(matches);
    return NULL;
  }
  size_t common = strlen(matches[1]);
  for (size_t i = 2; i < k; i++) {
    size_t j = 0;
    while (j < common && matches[i][j] == matches[1][j]) j++;
    common = j;
  }
  matches[0] = strndup(matches[1], common);
  if (k == 2) *ed->completion_append_character = '\0';
  return matches;
}


/* line.readline(prompt) -> string | nil, "interrupted"   (nil, nil at end of input) */
static int l_line_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  line_interrupted = 0;
  completion_L = L;
  char *s = ed->readline(prompt);
  completion_L = NULL;
  if (line_interrupted) {
    free(s);
    lua_pushnil(L);
    lua_pushliteral(L, "interrupted");
    return 2;
  }
  if (!s) return 0;
  lua_pushstring(L, s);
  free(s);
  return 1;
}


/* line.set_completer(fn | nil)   fn(word, line) -> {candidates} */
static int l_line_set_completer(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, COMPLETER_KEY);
  return 0;
}


/* line.add_history(text) */
static int l_line_add_history(lua_State *L) {
  ed->add_history(luaL_checkstring(L, 1));
  return 0;
}


/* line.load_history(path) -> true | nil, err */
static int l_line_load_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (ed->read_history(path) != 0) return galley_fail(L, "LINE_HISTORY", "cannot read history file %s", path);
  lua_pushboolean(L, 1);
  return 1;
}


/* line.save_history(path [, max_lines]) -> true | nil, err */
static int l_line_save_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000);
  ed->stifle_history(max);
  if (ed->write_history(path) != 0) return galley_fail(L, "LINE_HISTORY", "cannot write history file %s", path);
  lua_pushboolean(L, 1);
  return 1;
}


static const luaL_Reg line_funcs[] = {
  { "readline",      l_line_readline      },
  { "set_completer", l_line_set_completer },
  { "add_history",   l_line_add_history   },
  { "load_history",  l_line_load_history  },
  { "save_history",  l_line_save_history  },
  { NULL,            NULL                 }
};

int luaopen_galley_core_line(lua_State *L) {
  char err[300];
  ed = galley_edit(err, sizeof err);
  if (!ed) return galley_raise(L, "LINE_UNAVAILABLE", "%s (apt-get install libedit2)", err);
  *ed->catch_signals = 0;
  *ed->getc_function = getc_interruptible;
  *ed->attempted_completion_function = complete;
  *ed->basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
  ed->using_history();
  luaL_newlib(L, line_funcs);
  return 1;
}
