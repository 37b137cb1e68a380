/* galley.core.pm2: PM2 command lines as argv arrays, plus tolerant parsers for what PM2 prints.
 *
 * ProcessSpec: {command=CommandSpec, restart=?"never"|{max_restarts=?, min_uptime_ms=?},
 *               instances=?, max_memory=?, logs=?{out=?, err=?}, stdin=?"null"|"inherit"}
 * Misuse raises a PM2_BAD_OPTION error table whose `field` names the path ("command.args[3]").
 * restart nil or "never" -> --no-autorestart; a table -> pm2's autorestart with --max-restarts.
 * min_uptime_ms gives nil, PM2_UNSUPPORTED_OPTION: pm2 7.0.4's CLI has no --min-uptime. Other
 * ProcessSpec fields (e.g. `files`) are the caller's business and are ignored here.
 *
 * start_argv builds `pm2 start bash [--name N] <restart flags> ... -- -lc <payload>`; the payload
 * (src/core/shell.c, galley_shell_payload) does cd/export itself, never PM2's --cwd or env
 * flags. Its `cd`/`export` lines end in `|| exit 127`, so exit code 127 means nothing ran. The
 * command's stdin is /dev/null (PM2 gives apps a stdin pipe that never reaches EOF) unless
 * stdin="inherit". Env values land in the payload, which PM2 shows in `jlist` and keeps in
 * dump.pm2: never put secrets in spec.command.env; have the script read them from a file.
 *
 * logs_argv uses --raw: no "<id>|<name> | " prefixes, out lines on stdout and err lines on
 * stderr. PM2 still prints a "[TAILING]" line and "<path> last N lines:" headers on stdout;
 * parse_logs removes them. For exact content read the out_log/err_log paths from parse_jlist. */
#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include "bind.h"
#include "l_shell.h"
#include "pm2.h"

#define BAD "PM2_BAD_OPTION"


/* Raw t[key] (no metamethods); pushes the value, returns its type. */
static int raw_field(lua_State *L, int t, const char *key) {
  lua_pushstring(L, key);
  return lua_rawget(L, t);
}


/* The value on top as a string without NUL; raises naming path otherwise. */
static const char *top_string(lua_State *L, const char *path, size_t *len) {
  if (lua_type(L, -1) != LUA_TSTRING)
    galley_shell_raise_field(L, BAD, path, "expected string, got %s", luaL_typename(L, -1));
  const char *s = lua_tolstring(L, -1, len);
  if (memchr(s, '\0', *len)) galley_shell_raise_field(L, BAD, path, "contains a NUL byte");
  if (*len == 0) galley_shell_raise_field(L, BAD, path, "must not be empty");
  return s;
}


/* The value on top as an integer >= min; raises naming path otherwise. */
static lua_Integer top_integer(lua_State *L, const char *path, lua_Integer min) {
  int ok = 0;
  lua_Integer v = lua_tointegerx(L, -1, &ok);
  if (lua_type(L, -1) != LUA_TNUMBER || !ok)
    galley_shell_raise_field(L, BAD, path, "expected integer, got %s", luaL_typename(L, -1));
  if (v < min) galley_shell_raise_field(L, BAD, path, "must be >= %I", min);
  return v;
}


/* Raises unless every key of the table at t is one of `allowed`. */
static void only_keys(lua_State *L, int t, const char *path, const char *const *allowed) {
  lua_pushnil(L);
  while (lua_next(L, t)) {  // [key, value]
    bool known = false;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (const char *const *a = allowed; *a && !known; a++) known = strcmp(*a, lua_tostring(L, -2)) == 0;
    if (!known)
      galley_shell_raise_field(L, BAD, path, "unknown key %s", luaL_tolstring(L, -2, NULL));
    lua_pop(L, 1);
  }
}


/* A process name or pm_id for stop/delete/logs/...: an integer id >= 0, or a string already in
 * sanitized form (so "all", "default" or "12" cannot slip through as a name). Pushes it. */
static void push_target(lua_State *L, int arg, const char *path) {
  lua_pushvalue(L, arg);
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Integer id = top_integer(L, path, 0);
    lua_pop(L, 1);
    lua_pushfstring(L, "%I", id);
    return;
  }
  size_t n;
  const char *s = top_string(L, path, &n);
  if (!galley_pm2_name_is_safe(s, n))
    galley_shell_raise_field(L, BAD, path, "not a safe PM2 name (use pm2.sanitize_name)");
}


static void append(lua_State *L, int t, const char *s) {
  lua_pushstring(L, s);
  lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
}


/* Appends the value on top of the stack to the array at t (pops it). */
static void append_top(lua_State *L, int t) {
  lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
}


/* pm2.sanitize_name(s) -> string   ([A-Za-z0-9-], < 50 chars, never numeric/"all"/empty) */
static int l_pm2_sanitize_name(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING)
    galley_shell_raise_field(L, BAD, "name", "expected string, got %s", luaL_typename(L, 1));
  size_t n;
  const char *s = lua_tolstring(L, 1, &n);
  char out[GALLEY_PM2_NAME_MAX + 1];
  size_t len = galley_pm2_sanitize_name(out, s, n);
  lua_pushlstring(L, out, len);
  return 1;
}


/* Optional string field t[key]: pushes nothing, returns ptr NULL when absent. The string stays
 * referenced by t. */
static struct galley_str opt_field_string(lua_State *L, int t, const char *key, const char *path) {
  struct galley_str v = { NULL, 0 };
  if (raw_field(L, t, key) != LUA_TNIL) v.ptr = top_string(L, path, &v.len);
  lua_pop(L, 1);
  return v;
}


/* `max_memory`: bytes as an integer, or PM2's own "<n>", "<n>K", "<n>M", "<n>G" (unit in either
 * case, passed upper-case). Pushes the flag value. */
static void push_max_memory(lua_State *L) {
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Integer v = top_integer(L, "max_memory", 1);
    lua_pushfstring(L, "%I", v);
    return;
  }
  size_t n;
  const char *s = top_string(L, "max_memory", &n);
  size_t digits = 0;
  while (digits < n && s[digits] >= '0' && s[digits] <= '9') digits++;
  char unit = digits + 1 == n ? (char)toupper((unsigned char)s[digits]) : 0;
  bool ok = digits > 0 && digits <= 18 && s[0] != '0' && (digits == n || (unit && strchr("KMG", unit)));
  if (!ok) galley_shell_raise_field(L, BAD, "max_memory", "expected bytes or \"<n>K|M|G\"");
  lua_pushlstring(L, s, digits);
  if (unit) {
    lua_pushlstring(L, &unit, 1);
    lua_concat(L, 2);
  }
}


/* pm2.start_argv(spec, opts?) -> argv | nil, err(PM2_PAYLOAD_TOO_LARGE | PM2_UNSUPPORTED_OPTION)
 * opts: {name=?, home=?, env_clean=?{PATH=, HOME=, PM2_HOME=}} */
static int l_pm2_start_argv(lua_State *L) {
  if (lua_type(L, 1) != LUA_TTABLE)
    galley_shell_raise_field(L, BAD, "spec", "expected table, got %s", luaL_typename(L, 1));
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TTABLE)
    galley_shell_raise_field(L, BAD, "opts", "expected table, got %s", luaL_typename(L, 2));
  lua_settop(L, 2);
  bool have_opts = lua_type(L, 2) == LUA_TTABLE;

  /* --- opts ----------------------------------------------------------------------------- */
  struct galley_str home = { NULL, 0 }, name = { NULL, 0 };
  const char *name_path = "opts.name";
  const struct galley_shell_env *clean = NULL;
  size_t nclean = 0;
  if (have_opts) {
    static const char *const keys[] = { "name", "home", "env_clean", NULL };
    only_keys(L, 2, "opts", keys);
    home = opt_field_string(L, 2, "home", "opts.home");
    name = opt_field_string(L, 2, "name", "opts.name");
    if (raw_field(L, 2, "env_clean") != LUA_TNIL)
      clean = galley_shell_read_env(L, -1, "opts.env_clean", BAD, &nclean);  // [.., t, ud]
  }

  /* --- spec.command ---------------------------------------------------------------------- */
  if (raw_field(L, 1, "command") != LUA_TTABLE)
    galley_shell_raise_field(L, BAD, "command", "expected table, got %s", luaL_typename(L, -1));
  int command = lua_gettop(L);
  struct galley_shell_spec spec;
  galley_shell_read_spec(L, command, "command.", BAD, &spec);  // [.., command, args ud, env ud]
  spec.home = home;
  if (!name.ptr) {
    name = opt_field_string(L, command, "name", "command.name");
    name_path = "command.name";
  }
  if (name.ptr && !galley_pm2_name_is_safe(name.ptr, name.len))
    galley_shell_raise_field(L, BAD, name_path, "not a safe PM2 name (use pm2.sanitize_name)");

  /* --- the rest of the ProcessSpec ------------------------------------------------------- */
  lua_Integer max_restarts = -1, min_uptime = -1, instances = 0;
  bool autorestart = false;
  int t = raw_field(L, 1, "restart");
  if (t == LUA_TTABLE) {
    static const char *const keys[] = { "max_restarts", "min_uptime_ms", NULL };
    int r = lua_gettop(L);
    only_keys(L, r, "restart", keys);
    autorestart = true;
    if (raw_field(L, r, "max_restarts") != LUA_TNIL) max_restarts = top_integer(L, "restart.max_restarts", 0);
    if (raw_field(L, r, "min_uptime_ms") != LUA_TNIL) min_uptime = top_integer(L, "restart.min_uptime_ms", 0);
    lua_pop(L, 2);
  } else if (t != LUA_TNIL && !(t == LUA_TSTRING && strcmp(lua_tostring(L, -1), "never") == 0)) {
    galley_shell_raise_field(L, BAD, "restart", "expected \"never\" or a table, got %s",
                             t == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  if (raw_field(L, 1, "instances") != LUA_TNIL) instances = top_integer(L, "instances", 1);
  lua_pop(L, 1);

  int memory = 0;
  if (raw_field(L, 1, "max_memory") != LUA_TNIL) {
    push_max_memory(L);                // [.., max_memory, flag value]
    memory = lua_gettop(L);
  }

  struct galley_str out_log = { NULL, 0 }, err_log = { NULL, 0 };
  t = raw_field(L, 1, "logs");
  if (t == LUA_TTABLE) {
    static const char *const keys[] = { "out", "err", NULL };
    int l = lua_gettop(L);
    only_keys(L, l, "logs", keys);
    out_log = opt_field_string(L, l, "out", "logs.out");
    err_log = opt_field_string(L, l, "err", "logs.err");
  } else if (t != LUA_TNIL) {
    galley_shell_raise_field(L, BAD, "logs", "expected table, got %s", luaL_typename(L, -1));
  }

  bool stdin_inherit = false;
  t = raw_field(L, 1, "stdin");
  if (t != LUA_TNIL) {
    const char *v = t == LUA_TSTRING ? lua_tostring(L, -1) : "";
    stdin_inherit = strcmp(v, "inherit") == 0;
    if (!stdin_inherit && strcmp(v, "null") != 0)
      galley_shell_raise_field(L, BAD, "stdin", "expected \"null\" or \"inherit\", got %s",
                               t == LUA_TSTRING ? v : luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  /* --- everything checked: what pm2's CLI cannot express, size, then build ---------------- */
  if (min_uptime >= 0) {
    /* pm2 7.0.4's `start` has --max-restarts but no --min-uptime (unknown option): min_uptime
     * exists only in ecosystem files. Say so rather than drop it; callers may fall back to one. */
    galley_fail(L, "PM2_UNSUPPORTED_OPTION", "pm2 start has no --min-uptime flag");
    galley_error_set_string(L, "field", "restart.min_uptime_ms");
    galley_error_set_string(L, "hint", "leave min_uptime_ms out (pm2 then uses 1000 ms) or start "
                            "the process from an ecosystem file");
    return 2;
  }
  size_t len = galley_shell_payload(NULL, &spec, stdin_inherit);
  if (len > GALLEY_PM2_PAYLOAD_MAX) {
    galley_fail(L, "PM2_PAYLOAD_TOO_LARGE", "bash payload is %I bytes, over the %d-byte limit",
                (lua_Integer)len, GALLEY_PM2_PAYLOAD_MAX);
    galley_error_set_integer(L, "size", (lua_Integer)len);
    galley_error_set_integer(L, "limit", GALLEY_PM2_PAYLOAD_MAX);
    galley_error_set_string(L, "hint", "write the script to a file on the machine and start "
                            "{kind=\"argv\", command=\"/bin/bash\", args={path}} instead");
    return 2;
  }

  lua_newtable(L);
  int argv = lua_gettop(L);
  if (clean) {
    append(L, argv, "env");
    append(L, argv, "-i");
    for (size_t i = 0; i < nclean; i++) {
      lua_pushlstring(L, clean[i].name.ptr, clean[i].name.len);
      lua_pushliteral(L, "=");
      lua_pushlstring(L, clean[i].value.ptr, clean[i].value.len);
      lua_concat(L, 3);
      append_top(L, argv);
    }
  }
  append(L, argv, "pm2");
  append(L, argv, "start");
  append(L, argv, "bash");
  if (name.ptr) {
    append(L, argv, "--name");
    lua_pushlstring(L, name.ptr, name.len);
    append_top(L, argv);
  }
  if (!autorestart) append(L, argv, "--no-autorestart");
  if (max_restarts >= 0) {
    append(L, argv, "--max-restarts");
    lua_pushfstring(L, "%I", max_restarts);
    append_top(L, argv);
  }
  if (instances > 0) {
    append(L, argv, "-i");
    lua_pushfstring(L, "%I", instances);
    append_top(L, argv);
  }
  if (memory) {
    append(L, argv, "--max-memory-restart");
    lua_pushvalue(L, memory);
    append_top(L, argv);
  }
  if (out_log.ptr) {
    append(L, argv, "-o");
    lua_pushlstring(L, out_log.ptr, out_log.len);
    append_top(L, argv);
  }
  if (err_log.ptr) {
    append(L, argv, "-e");
    lua_pushlstring(L, err_log.ptr, err_log.len);
    append_top(L, argv);
  }
  append(L, argv, "--");
  append(L, argv, "-lc");
  luaL_Buffer b;
  galley_shell_payload(luaL_buffinitsize(L, &b, len), &spec, stdin_inherit);
  luaL_pushresultsize(&b, len);
  append_top(L, argv);
  lua_pushvalue(L, argv);
  return 1;
}


/* pm2.argv(action, name_or_id) -> {"pm2", action, target}   (stop|restart|delete|flush|describe) */
static int l_pm2_argv(lua_State *L) {
  static const char *const actions[] = { "stop", "restart", "delete", "flush", "describe", NULL };
  size_t n;
  const char *action = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
  bool known = false;
  for (const char *const *a = actions; action && *a && !known; a++) known = strcmp(*a, action) == 0;
  if (!known)
    galley_shell_raise_field(L, BAD, "action", "expected stop|restart|delete|flush|describe, got %s",
                             action ? action : luaL_typename(L, 1));
  lua_settop(L, 2);
  push_target(L, 2, "name");          // [action, name, target]
  lua_createtable(L, 3, 0);
  int argv = lua_gettop(L);
  append(L, argv, "pm2");
  append(L, argv, action);
  lua_pushvalue(L, -2);
  append_top(L, argv);
  return 1;
}


/* pm2.logs_argv(name_or_id, lines?) -> {"pm2","logs",name,"--nostream","--lines",N,"--raw"} */
static int l_pm2_logs_argv(lua_State *L) {
  lua_Integer lines = 15;             // pm2's own default
  if (!lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, 2);
    lines = top_integer(L, "lines", 1);
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  push_target(L, 1, "name");          // [name, lines, target]
  lua_createtable(L, 7, 0);
  int argv = lua_gettop(L);
  append(L, argv, "pm2");
  append(L, argv, "logs");
  lua_pushvalue(L, -2);
  append_top(L, argv);
  append(L, argv, "--nostream");
  append(L, argv, "--lines");
  lua_pushfstring(L, "%I", lines);
  append_top(L, argv);
  append(L, argv, "--raw");
  return 1;
}


static int push_fixed(lua_State *L, const char *verb) {
  lua_createtable(L, 2, 0);
  append(L, lua_gettop(L), "pm2");
  append(L, lua_gettop(L), verb);
  return 1;
}


/* pm2.jlist_argv() -> {"pm2","jlist"} */
static int l_pm2_jlist_argv(lua_State *L) {
  return push_fixed(L, "jlist");
}


/* pm2.ping_argv() -> {"pm2","ping"}   (starts the daemon if needed) */
static int l_pm2_ping_argv(lua_State *L) {
  return push_fixed(L, "ping");
}


/* pm2.kill_argv() -> {"pm2","kill"}   (stops the daemon and every app) */
static int l_pm2_kill_argv(lua_State *L) {
  return push_fixed(L, "kill");
}


/* pm2.parse_logs(stdout, stderr?, lines?) -> {out=string, err=string}   (for logs_argv output) */
static int l_pm2_parse_logs(lua_State *L) {
  size_t n, en = 0;
  if (lua_type(L, 1) != LUA_TSTRING)
    galley_shell_raise_field(L, BAD, "stdout", "expected string, got %s", luaL_typename(L, 1));
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TSTRING)
    galley_shell_raise_field(L, BAD, "stderr", "expected string, got %s", luaL_typename(L, 2));
  lua_Integer lines = 0;
  if (!lua_isnoneornil(L, 3)) {
    lua_pushvalue(L, 3);
    lines = top_integer(L, "lines", 1);
    lua_pop(L, 1);
  }
  const char *s = lua_tolstring(L, 1, &n);
  const char *e = lua_isnoneornil(L, 2) ? "" : lua_tolstring(L, 2, &en);
  lua_createtable(L, 0, 2);
  luaL_Buffer b;
  size_t len = galley_pm2_logs_text(luaL_buffinitsize(L, &b, n + 1), s, n, (long)lines);
  luaL_pushresultsize(&b, len);
  lua_setfield(L, -2, "out");
  lua_pushlstring(L, e, en);
  lua_setfield(L, -2, "err");
  return 1;
}


/* Pushes t[key] when it is a number (else nothing); returns whether it did. */
static bool push_number(lua_State *L, int t, const char *key) {
  if (t == 0) return false;
  if (raw_field(L, t, key) == LUA_TNUMBER) return true;
  lua_pop(L, 1);
  return false;
}


static lua_Number number_or(lua_State *L, int t, const char *key, lua_Number def) {
  if (!push_number(L, t, key)) return def;
  lua_Number v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}


/* item[key] = v, as an integer when v is integral (cjson decodes every number as a float). */
static void set_number(lua_State *L, int item, const char *key, lua_Number v) {
  lua_Integer i;
  if (lua_numbertointeger(v, &i) && (lua_Number)i == v) lua_pushinteger(L, i);
  else lua_pushnumber(L, v);
  lua_setfield(L, item, key);
}


/* item[key] = t[from] when that is a string. */
static void copy_string(lua_State *L, int item, const char *key, int t, const char *from) {
  if (t == 0) return;
  if (raw_field(L, t, from) == LUA_TSTRING) lua_setfield(L, item, key);
  else lua_pop(L, 1);
}


/* Sub-table t[key] pushed, or 0 (and nothing pushed) when it is not a table. */
static int sub_table(lua_State *L, int t, const char *key) {
  if (raw_field(L, t, key) == LUA_TTABLE) return lua_gettop(L);
  lua_pop(L, 1);
  return 0;
}


/* Turns one decoded jlist element (at src) into our flat item; pushes it. */
static void push_item(lua_State *L, int src, int64_t now_ms) {
  int top = lua_gettop(L);
  lua_createtable(L, 0, 13);
  int item = lua_gettop(L);
  int env = sub_table(L, src, "pm2_env");
  int monit = sub_table(L, src, "monit");
  copy_string(L, item, "name", src, "name");
  if (push_number(L, src, "pm_id")) {
    set_number(L, item, "pm_id", lua_tonumber(L, -1));
    lua_pop(L, 1);
  }
  set_number(L, item, "pid", number_or(L, src, "pid", 0));
  if (env && raw_field(L, env, "status") == LUA_TSTRING) {
    lua_setfield(L, item, "status");
  } else {
    if (env) lua_pop(L, 1);
    lua_pushliteral(L, "unknown");
    lua_setfield(L, item, "status");
  }
  set_number(L, item, "restarts", env ? number_or(L, env, "restart_time", 0) : 0);
  set_number(L, item, "unstable_restarts", env ? number_or(L, env, "unstable_restarts", 0) : 0);
  lua_getfield(L, item, "status");
  bool online = strcmp(lua_tostring(L, -1), "online") == 0;
  lua_pop(L, 1);
  lua_Number started = env ? number_or(L, env, "pm_uptime", 0) : 0;
  lua_Number up = online && started > 0 && (lua_Number)now_ms > started ? (lua_Number)now_ms - started : 0;
  set_number(L, item, "uptime_ms", up);
  set_number(L, item, "memory", monit ? number_or(L, monit, "memory", 0) : 0);
  set_number(L, item, "cpu", monit ? number_or(L, monit, "cpu", 0) : 0);
  if (env && push_number(L, env, "exit_code")) {
    set_number(L, item, "exit_code", lua_tonumber(L, -1));
    lua_pop(L, 1);
  }
  copy_string(L, item, "out_log", env, "pm_out_log_path");
  copy_string(L, item, "err_log", env, "pm_err_log_path");
  copy_string(L, item, "cwd", env, "pm_cwd");
  lua_pushvalue(L, item);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);  // [.., item]
}


/* pm2.parse_jlist(stdout, now_ms?) -> list, warning?
 * Takes the last line that starts with '[' and decodes as JSON (skipping banners and [PM2]
 * lines); anything unusable gives an empty list and a warning string, never an error. The
 * warning never quotes the output: jlist carries every app's environment. */
static int l_pm2_parse_jlist(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING)
    galley_shell_raise_field(L, BAD, "stdout", "expected string, got %s", luaL_typename(L, 1));
  int64_t now_ms;
  if (!lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, 2);
    now_ms = (int64_t)top_integer(L, "now_ms", 0);
    lua_pop(L, 1);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  }
  lua_settop(L, 1);
  size_t n;
  const char *s = lua_tolstring(L, 1, &n);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson.safe");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "decode");       // [stdout, cjson, decode]
  int decode = lua_gettop(L);

  int found = 0;
  size_t end = n;
  while (end > 0 && !found) {
    size_t start = end;
    while (start > 0 && s[start - 1] != '\n') start--;
    size_t len = end - start;
    if (len > 0 && s[start + len - 1] == '\r') len--;
    if (len > 0 && s[start] == '[') {
      lua_pushvalue(L, decode);
      lua_pushlstring(L, s + start, len);
      lua_call(L, 1, 1);               // cjson.safe: nil, msg on bad JSON
      if (lua_type(L, -1) == LUA_TTABLE) found = lua_gettop(L);
      else lua_pop(L, 1);
    }
    end = start > 0 ? start - 1 : 0;
  }

  lua_newtable(L);
  int list = lua_gettop(L);
  if (!found) {
    lua_pushfstring(L, "pm2 jlist: no JSON array in %I bytes of output", (lua_Integer)n);
    return 2;
  }
  lua_Integer count = (lua_Integer)lua_rawlen(L, found), kept = 0, skipped = 0;
  for (lua_Integer i = 1; i <= count; i++) {
    if (lua_rawgeti(L, found, i) != LUA_TTABLE) {
      lua_pop(L, 1);
      skipped++;
      continue;
    }
    push_item(L, lua_gettop(L), now_ms);
    lua_rawseti(L, list, ++kept);
    lua_pop(L, 1);
  }
  if (skipped) {
    lua_pushfstring(L, "pm2 jlist: skipped %I malformed entries", skipped);
    return 2;
  }
  return 1;
}


static const luaL_Reg pm2_funcs[] = {
  { "sanitize_name", l_pm2_sanitize_name },
  { "start_argv",    l_pm2_start_argv    },
  { "argv",          l_pm2_argv          },
  { "logs_argv",     l_pm2_logs_argv     },
  { "jlist_argv",    l_pm2_jlist_argv    },
  { "ping_argv",     l_pm2_ping_argv     },
  { "kill_argv",     l_pm2_kill_argv     },
  { "parse_jlist",   l_pm2_parse_jlist   },
  { "parse_logs",    l_pm2_parse_logs    },
  { NULL,            NULL                }
};

int luaopen_galley_core_pm2(lua_State *L) {
  luaL_newlib(L, pm2_funcs);
  lua_pushinteger(L, GALLEY_PM2_PAYLOAD_MAX);
  lua_setfield(L, -2, "PAYLOAD_MAX");
  lua_pushinteger(L, GALLEY_PM2_NAME_MAX);
  lua_setfield(L, -2, "NAME_MAX");
  return 1;
}
