/* Shared binding helpers: the error table every galley C module returns, option readers. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "bind.h"


/* err.__tostring -> "CODE: message", or "CODE" alone when there is no message */
static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  const char *code = luaL_optstring(L, -2, "ERROR");
  const char *msg = luaL_optstring(L, -1, "");
  if (*msg) lua_pushfstring(L, "%s: %s", code, msg);
  else lua_pushstring(L, code);
  return 1;
}


void galley_error_metatable(lua_State *L) {
  if (luaL_newmetatable(L, GALLEY_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, "galley.Error");
    lua_setfield(L, -2, "__name");
  }
}


static void push_errorv(lua_State *L, const char *code, const char *fmt, va_list ap) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  galley_error_metatable(L);
  lua_setmetatable(L, -2);
}


void galley_push_error(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
}


int galley_fail(lua_State *L, const char *code, const char *fmt, ...) {
  lua_pushnil(L);
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
  return 2;
}


int galley_raise(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_errorv(L, code, fmt, ap);
  va_end(ap);
  return lua_error(L);
}


void galley_error_set_string(lua_State *L, const char *field, const char *value) {
  if (!value) return;
  lua_pushstring(L, value);
  lua_setfield(L, -2, field);
}


void galley_error_set_integer(lua_State *L, const char *field, lua_Integer value) {
  lua_pushinteger(L, value);
  lua_setfield(L, -2, field);
}


/* Pushes t[field]; returns its type. The caller pops. */
static int get_field(lua_State *L, int idx, const char *field) {
  if (lua_isnoneornil(L, idx)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  return lua_getfield(L, idx, field);
}


static int bad_field(lua_State *L, int idx, const char *field, const char *expected) {
  return luaL_error(L, "bad field '%s' in options (%s expected, got %s)", field, expected,
                    luaL_typename(L, -1));
}


lua_Integer galley_opt_integer(lua_State *L, int idx, const char *field, lua_Integer def) {
  int t = get_field(L, idx, field);
  lua_Integer v = def;
  if (t != LUA_TNIL) {
    int ok = 0;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) bad_field(L, idx, field, "integer");
  }
  lua_pop(L, 1);
  return v;
}


double galley_opt_number(lua_State *L, int idx, const char *field, double def) {
  int t = get_field(L, idx, field);
  double v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TNUMBER) bad_field(L, idx, field, "number");
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}


bool galley_opt_boolean(lua_State *L, int idx, const char *field, bool def) {
  int t = get_field(L, idx, field);
  bool v = def;
  if (t != LUA_TNIL) {
    if (t != LUA_TBOOLEAN) bad_field(L, idx, field, "boolean");
    v = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  return v;
}


const char *galley_opt_string(lua_State *L, int idx, const char *field, const char *def, size_t *len) {
  int t = get_field(L, idx, field);
  const char *v = def;
  if (len) *len = def ? strlen(def) : 0;
  if (t != LUA_TNIL) {
    if (t != LUA_TSTRING) bad_field(L, idx, field, "string");
    v = lua_tolstring(L, -1, len);
  }
  /* The string stays alive: it is still referenced by the options table. */
  lua_pop(L, 1);
  return v;
}
