/* galley.core.term: terminal helpers for progress output (stderr only). */
#include <stdlib.h>
#include <unistd.h>
#include "bind.h"
#include "spinner.h"


/* term.spinner_start(label)   draws "<frame> label 1.2s" on stderr until spinner_stop */
static int l_term_spinner_start(lua_State *L) {
  galley_spinner_start(luaL_checkstring(L, 1));
  return 0;
}


/* term.spinner_label(label)   relabels a running spinner without resetting its clock */
static int l_term_spinner_label(lua_State *L) {
  galley_spinner_label(luaL_checkstring(L, 1));
  return 0;
}


/* term.spinner_stop() */
static int l_term_spinner_stop(lua_State *L) {
  galley_spinner_stop();
  return 0;
}


/* term.write_err(text)   stderr output that does not garble a running spinner */
static int l_term_write_err(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  galley_spinner_write(s, len);
  return 0;
}


/* term.stderr_is_tty() -> boolean */
static int l_term_stderr_is_tty(lua_State *L) {
  lua_pushboolean(L, isatty(2));
  return 1;
}


static const luaL_Reg term_funcs[] = {
  { "spinner_start",  l_term_spinner_start  },
  { "spinner_label",  l_term_spinner_label  },
  { "spinner_stop",   l_term_spinner_stop   },
  { "write_err",      l_term_write_err      },
  { "stderr_is_tty",  l_term_stderr_is_tty  },
  { NULL,             NULL                  }
};

int luaopen_galley_core_term(lua_State *L) {
  luaL_newlib(L, term_funcs);
  return 1;
}
