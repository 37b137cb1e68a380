/* galley.core.shell: POSIX quoting and CommandSpec -> what to run (an argv, or bash script text).
 *
 * CommandSpec: {kind="argv", command=s, args=?{s...}, cwd=?s, env=?{K=V}, name=?s}
 *           or {kind="shell", script=s, cwd=?, env=?, name=?}
 * Misuse raises a SHELL_BAD_SPEC error table whose `field` names the offending path
 * (e.g. "args[2]"). The reader below is shared with l_pm2.c (PM2_BAD_OPTION, "command." paths).
 *
 * Memory: the C views of a spec (arrays of pointers into Lua strings) live in a userdata the
 * reader leaves on the stack, and results are written straight into a luaL_Buffer sized by the
 * core's counting pass, so nothing here is malloc'd and any raise is leak-free. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "bind.h"
#include "l_shell.h"

/* Shared with l_pm2.c (declared there; bind.h belongs to another engineer). */
void galley_shell_read_spec(lua_State *L, int idx, const char *prefix, const char *code,
                            struct galley_shell_spec *spec);
const struct galley_shell_env *galley_shell_read_env(lua_State *L, int idx, const char *path,
                                                     const char *code, size_t *count);
void galley_shell_raise_field(lua_State *L, const char *code, const char *path, const char *fmt, ...);


/* Raises {code, message="<path>: <fmt...>", field=path}. */
void galley_shell_raise_field(lua_State *L, const char *code, const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *what = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  galley_push_error(L, code, "%s: %s", path, what);
  galley_error_set_string(L, "field", path);
  lua_error(L);
}


/* Raw t[key] without metamethods, so no user code runs while we hold string pointers. */
static int raw_field(lua_State *L, int t, const char *key) {
  lua_pushstring(L, key);
  return lua_rawget(L, t);
}


/* Checks the value on top of the stack is a string without NUL bytes (non-empty unless
 * allow_empty); returns it. Leaves the stack alone. */
static const char *check_string(lua_State *L, const char *code, const char *path, bool allow_empty,
                                size_t *len) {
  if (lua_type(L, -1) != LUA_TSTRING)
    galley_shell_raise_field(L, code, path, "expected string, got %s", luaL_typename(L, -1));
  const char *s = lua_tolstring(L, -1, len);
  if (memchr(s, '\0', *len))
    galley_shell_raise_field(L, code, path, "contains a NUL byte");
  if (!allow_empty && *len == 0)
    galley_shell_raise_field(L, code, path, "must not be empty");
  return s;
}


/* Reads optional string t[key] (absent -> ptr NULL). */
static struct galley_str opt_string(lua_State *L, int t, const char *key, const char *code,
                                    const char *prefix, bool allow_empty) {
  struct galley_str v = { NULL, 0 };
  if (raw_field(L, t, key) != LUA_TNIL) {
    const char *path = lua_pushfstring(L, "%s%s", prefix, key);
    lua_insert(L, -2);
    v.ptr = check_string(L, code, path, allow_empty, &v.len);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return v;
}


static int env_cmp(const void *a, const void *b) {
  const struct galley_shell_env *x = a, *y = b;
  size_t n = x->name.len < y->name.len ? x->name.len : y->name.len;
  int c = memcmp(x->name.ptr, y->name.ptr, n);
  if (c) return c;
  return x->name.len < y->name.len ? -1 : x->name.len > y->name.len;
}


/* Validates the env table at idx ({NAME = "value"}) and pushes a userdata holding it as an
 * array sorted by name (so generated text is stable). Returns the array; *count entries. */
const struct galley_shell_env *galley_shell_read_env(lua_State *L, int idx, const char *path,
                                                     const char *code, size_t *count) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE)
    galley_shell_raise_field(L, code, path, "expected table, got %s", luaL_typename(L, idx));
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {  // [key, value]
    if (lua_type(L, -2) != LUA_TSTRING)
      galley_shell_raise_field(L, code, path, "keys must be strings, got %s", luaL_typename(L, -2));
    size_t kl, vl;
    const char *k = lua_tolstring(L, -2, &kl);
    const char *vpath = lua_pushfstring(L, "%s.%s", path, k);
    if (!galley_shell_is_env_name(k, kl))
      galley_shell_raise_field(L, code, vpath, "not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)");
    lua_pushvalue(L, -2);  // [key, value, vpath, value]
    check_string(L, code, vpath, true, &vl);
    lua_pop(L, 3);         // [key]
    n++;
  }
  struct galley_shell_env *env = lua_newuserdatauv(L, (n ? n : 1) * sizeof *env, 0);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {  // [ud, key, value]; same table, same n entries as above
    if (i < n) {
      env[i].name.ptr = lua_tolstring(L, -2, &env[i].name.len);
      env[i].value.ptr = lua_tolstring(L, -1, &env[i].value.len);
      i++;
    }
    lua_pop(L, 1);
  }
  qsort(env, n, sizeof *env, env_cmp);
  *count = n;
  return env;
}


/* Validates the CommandSpec at idx into *spec (home not set) and pushes two values that own its
 * arrays (args userdata, env userdata or nil): keep them on the stack while spec is in use.
 * Error paths are prefix + field, e.g. "command.args[3]". */
void galley_shell_read_spec(lua_State *L, int idx, const char *prefix, const char *code,
                            struct galley_shell_spec *spec) {
  idx = lua_absindex(L, idx);
  memset(spec, 0, sizeof *spec);
  if (lua_type(L, idx) != LUA_TTABLE) {
    const char *path = *prefix ? lua_pushlstring(L, prefix, strlen(prefix) - 1) : "spec";
    galley_shell_raise_field(L, code, path, "expected table, got %s", luaL_typename(L, idx));
  }
  struct galley_str kind = opt_string(L, idx, "kind", code, prefix, false);
  bool argv_form = kind.ptr && strcmp(kind.ptr, "argv") == 0;
  if (!kind.ptr || (!argv_form && strcmp(kind.ptr, "shell") != 0)) {
    const char *path = lua_pushfstring(L, "%skind", prefix);
    galley_shell_raise_field(L, code, path, "expected \"argv\" or \"shell\", got %s",
                             kind.ptr ? kind.ptr : "nil");
  }
  spec->kind = argv_form ? GALLEY_SHELL_ARGV : GALLEY_SHELL_SCRIPT;
  opt_string(L, idx, "name", code, prefix, false);
  spec->cwd = opt_string(L, idx, "cwd", code, prefix, false);

  /* The fields of the other form are mistakes, not extras to ignore. */
  static const char *const argv_only[] = { "command", "args", NULL };
  static const char *const shell_only[] = { "script", NULL };
  for (const char *const *f = argv_form ? shell_only : argv_only; *f; f++) {
    if (raw_field(L, idx, *f) != LUA_TNIL) {
      const char *path = lua_pushfstring(L, "%s%s", prefix, *f);
      galley_shell_raise_field(L, code, path, "not allowed with kind=\"%s\"", kind.ptr);
    }
    lua_pop(L, 1);
  }

  size_t nargs = 0;
  if (argv_form) {
    spec->command = opt_string(L, idx, "command", code, prefix, false);
    if (!spec->command.ptr) {
      const char *path = lua_pushfstring(L, "%scommand", prefix);
      galley_shell_raise_field(L, code, path, "expected string, got nil");
    }
    int t = raw_field(L, idx, "args");  // [args]
    int args = lua_gettop(L);
    if (t != LUA_TNIL) {
      if (t != LUA_TTABLE) {
        const char *path = lua_pushfstring(L, "%sargs", prefix);
        galley_shell_raise_field(L, code, path, "expected table, got %s", luaL_typename(L, args));
      }
      nargs = lua_rawlen(L, args);
      lua_pushnil(L);
      while (lua_next(L, args)) {  // [args, key, value]
        int isint = 0;
        lua_Integer i = lua_tointegerx(L, -2, &isint);
        if (lua_type(L, -2) != LUA_TNUMBER || !isint || i < 1 || (size_t)i > nargs) {
          const char *path = lua_pushfstring(L, "%sargs", prefix);
          galley_shell_raise_field(L, code, path, "must be a list of strings (unexpected key %s)",
                                   luaL_tolstring(L, -3, NULL));
        }
        const char *path = lua_pushfstring(L, "%sargs[%I]", prefix, i);
        lua_insert(L, -2);  // [args, key, path, value]
        size_t len;
        check_string(L, code, path, true, &len);
        lua_pop(L, 2);      // [args, key]
      }
    }
    struct galley_str *argv = lua_newuserdatauv(L, (nargs ? nargs : 1) * sizeof *argv, 0);
    for (size_t i = 0; i < nargs; i++) {
      lua_rawgeti(L, args, (lua_Integer)i + 1);
      argv[i].ptr = lua_tolstring(L, -1, &argv[i].len);  // still referenced by args
      lua_pop(L, 1);
    }
    lua_remove(L, args);   // [argv ud]
    spec->args = argv;
    spec->nargs = nargs;
  } else {
    spec->script = opt_string(L, idx, "script", code, prefix, true);
    if (!spec->script.ptr) {
      const char *path = lua_pushfstring(L, "%sscript", prefix);
      galley_shell_raise_field(L, code, path, "expected string, got nil");
    }
    lua_pushnil(L);        // [nil] in place of the args userdata
  }

  if (raw_field(L, idx, "env") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushnil(L);        // [args ud, nil]
  } else {
    const char *path = lua_pushfstring(L, "%senv", prefix);          // [args ud, env, path]
    spec->env = galley_shell_read_env(L, -2, path, code, &spec->nenv);  // [args ud, env, path, env ud]
    lua_replace(L, -3);    // [args ud, env ud, path]
    lua_pop(L, 1);         // [args ud, env ud]
  }
}


/* Reads optional opts.home (index idx may be none/nil). */
static struct galley_str read_home(lua_State *L, int idx, const char *code) {
  struct galley_str home = { NULL, 0 };
  if (lua_isnoneornil(L, idx)) return home;
  if (lua_type(L, idx) != LUA_TTABLE)
    galley_shell_raise_field(L, code, "opts", "expected table, got %s", luaL_typename(L, idx));
  return opt_string(L, lua_absindex(L, idx), "home", code, "opts.", false);
}


/* Checks argument `arg` is a string without NUL (named `what` in errors). */
static const char *check_arg_string(lua_State *L, int arg, const char *what, size_t *len) {
  lua_pushvalue(L, arg);
  const char *s = check_string(L, "SHELL_BAD_SPEC", what, true, len);
  lua_pop(L, 1);  // the argument slot still holds the string
  return s;
}


/* shell.quote(s) -> string   (one word bash reads back byte-identical) */
static int l_shell_quote(lua_State *L) {
  size_t n;
  const char *s = check_arg_string(L, 1, "s", &n);
  luaL_Buffer b;
  size_t len = galley_shell_quote(NULL, s, n);
  galley_shell_quote(luaL_buffinitsize(L, &b, len), s, n);
  luaL_pushresultsize(&b, len);
  return 1;
}


/* shell.join(argv) -> string   (quoted words joined by single spaces) */
static int l_shell_join(lua_State *L) {
  if (lua_type(L, 1) != LUA_TTABLE)
    galley_shell_raise_field(L, "SHELL_BAD_SPEC", "argv", "expected table, got %s", luaL_typename(L, 1));
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  size_t total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    const char *path = lua_pushfstring(L, "argv[%I]", i);
    lua_insert(L, -2);
    size_t len;
    const char *s = check_string(L, "SHELL_BAD_SPEC", path, true, &len);
    total += galley_shell_quote(NULL, s, len) + (i > 1);
    lua_pop(L, 2);
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, total);
  size_t pos = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);  // checked above; still referenced by argv
    lua_pop(L, 1);
    if (i > 1) out[pos++] = ' ';
    pos += galley_shell_quote(out + pos, s, len);
  }
  luaL_pushresultsize(&b, pos);
  return 1;
}


/* shell.expand_home(path, home) -> string   ("~" and "~/x" only; "~user" stays) */
static int l_shell_expand_home(lua_State *L) {
  size_t n, hn;
  const char *path = check_arg_string(L, 1, "path", &n);
  const char *home = check_arg_string(L, 2, "home", &hn);
  luaL_Buffer b;
  size_t len = galley_shell_expand_home(NULL, path, n, home, hn);
  galley_shell_expand_home(luaL_buffinitsize(L, &b, len), path, n, home, hn);
  luaL_pushresultsize(&b, len);
  return 1;
}


/* shell.plan(spec, opts?) -> {argv={...}} | {script="..."}   (opts.home replaces a leading ~) */
static int l_shell_plan(lua_State *L) {
  struct galley_shell_spec spec;
  struct galley_str home = read_home(L, 2, "SHELL_BAD_SPEC");
  galley_shell_read_spec(L, 1, "", "SHELL_BAD_SPEC", &spec);  // [.., args ud, env ud]
  spec.home = home;
  lua_createtable(L, 0, 1);                                   // [.., result]
  if (!galley_shell_needs_script(&spec)) {
    lua_createtable(L, (int)spec.nargs + 1, 0);                // [.., result, argv]
    luaL_Buffer b;
    size_t len = galley_shell_expand_home(NULL, spec.command.ptr, spec.command.len, home.ptr, home.len);
    galley_shell_expand_home(luaL_buffinitsize(L, &b, len), spec.command.ptr, spec.command.len,
                             home.ptr, home.len);
    luaL_pushresultsize(&b, len);
    lua_rawseti(L, -2, 1);
    for (size_t i = 0; i < spec.nargs; i++) {
      lua_pushlstring(L, spec.args[i].ptr, spec.args[i].len);
      lua_rawseti(L, -2, (lua_Integer)i + 2);
    }
    lua_setfield(L, -2, "argv");
    return 1;
  }
  luaL_Buffer b;
  size_t len = galley_shell_script(NULL, &spec);
  galley_shell_script(luaL_buffinitsize(L, &b, len), &spec);
  luaL_pushresultsize(&b, len);                                // [.., result, script]
  lua_setfield(L, -2, "script");
  return 1;
}


static const luaL_Reg shell_funcs[] = {
  { "quote",       l_shell_quote       },
  { "join",        l_shell_join        },
  { "expand_home", l_shell_expand_home },
  { "plan",        l_shell_plan        },
  { NULL,          NULL                }
};

int luaopen_galley_core_shell(lua_State *L) {
  luaL_newlib(L, shell_funcs);
  /* Exit status of a plan script whose cd/export prelude failed (nothing ran). */
  lua_pushinteger(L, GALLEY_SHELL_PRELUDE_EXIT);
  lua_setfield(L, -2, "PRELUDE_EXIT");
  return 1;
}
