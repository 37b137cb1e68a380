/* Readers shared by the shell and pm2 bindings (defined in l_shell.c): CommandSpec tables to
 * galley_shell_spec, env tables, and errors naming a field path such as `command.args[3]`. */
#ifndef GALLEY_L_SHELL_H
#define GALLEY_L_SHELL_H

#include <lua.h>
#include "shell.h"

/* Reads the CommandSpec at idx into spec; misuse raises `code` naming the field under prefix. */
void galley_shell_read_spec(lua_State *L, int idx, const char *prefix, const char *code,
                            struct galley_shell_spec *spec);

/* Reads an env table at idx; *count receives the number of variables. */
const struct galley_shell_env *galley_shell_read_env(lua_State *L, int idx, const char *path,
                                                     const char *code, size_t *count);

/* Raises {code, message, field = path}. Never returns. */
void galley_shell_raise_field(lua_State *L, const char *code, const char *path, const char *fmt, ...);

#endif
