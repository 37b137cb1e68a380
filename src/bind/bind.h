/* Helpers shared by every binding: one error shape, option-table readers. */
#ifndef GALLEY_BIND_H
#define GALLEY_BIND_H

#include <stdbool.h>
#include <lua.h>
#include <lauxlib.h>

/* Registry name of the metatable every galley error table carries ("CODE: message"). */
#define GALLEY_ERROR_MT "galley.Error"

/* Pushes the shared error metatable, creating it on first use. */
void galley_error_metatable(lua_State *L);

/* Pushes {code=code, message=<fmt...>} with the shared metatable. Leaves it on the stack. */
void galley_push_error(lua_State *L, const char *code, const char *fmt, ...);

/* Pushes nil, {code, message}; returns 2 so a binding can `return galley_fail(...)`. */
int galley_fail(lua_State *L, const char *code, const char *fmt, ...);

/* Raises {code, message} as a Lua error (never returns). For misuse only. */
int galley_raise(lua_State *L, const char *code, const char *fmt, ...);

/* Sets err[field] = value on the error table at the top of the stack. */
void galley_error_set_string(lua_State *L, const char *field, const char *value);
void galley_error_set_integer(lua_State *L, const char *field, lua_Integer value);

/* Option-table readers: `idx` is the table, `field` the key. A present value of the wrong type
 * raises an argument error naming the field (e.g. "bad field 'timeout_ms' (number expected)"). */
lua_Integer galley_opt_integer(lua_State *L, int idx, const char *field, lua_Integer def);
double galley_opt_number(lua_State *L, int idx, const char *field, double def);
bool galley_opt_boolean(lua_State *L, int idx, const char *field, bool def);
/* Returns a pointer into the Lua string (valid while the table holds it) or def. */
const char *galley_opt_string(lua_State *L, int idx, const char *field, const char *def, size_t *len);

#endif
