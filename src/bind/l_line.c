/* galley.core.line: line editing for the REPL (libedit's readline interface). */
#include <stdlib.h>
#include <editline/readline.h>
#include "bind.h"


/* line.readline(prompt) -> string | nil   (nil at end of input) */
static int l_line_readline(lua_State *L) {
  const char *prompt = luaL_optstring(L, 1, "> ");
  char *s = readline(prompt);
  if (!s) return 0;
  lua_pushstring(L, s);
  free(s);
  return 1;
}


/* line.add_history(text) */
static int l_line_add_history(lua_State *L) {
  add_history(luaL_checkstring(L, 1));
  return 0;
}


/* line.load_history(path) -> true | nil, err */
static int l_line_load_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (read_history(path) != 0) return galley_fail(L, "LINE_HISTORY", "cannot read history file %s", path);
  lua_pushboolean(L, 1);
  return 1;
}


/* line.save_history(path, max_lines) -> true | nil, err */
static int l_line_save_history(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int max = (int)luaL_optinteger(L, 2, 1000);
  stifle_history(max);
  if (write_history(path) != 0) return galley_fail(L, "LINE_HISTORY", "cannot write history file %s", path);
  lua_pushboolean(L, 1);
  return 1;
}


static const luaL_Reg line_funcs[] = {
  { "readline",     l_line_readline     },
  { "add_history",  l_line_add_history  },
  { "load_history", l_line_load_history },
  { "save_history", l_line_save_history },
  { NULL,           NULL                }
};

int luaopen_galley_core_line(lua_State *L) {
  luaL_newlib(L, line_funcs);
  return 1;
}
