/* galley.core.http: HTTP requests on libcurl (src/core/http.c).
 *   http.request{method=, url=, headers=?{K=V}, body=?, timeout_ms=?, connect_timeout_ms=?,
 *                no_resend=?}   (no_resend: never let libcurl resend it on a fresh connection)
 *     -> {status, headers={lowercased name=value}, body, http_version, reused, ms} | nil, err
 *   http.session{timeout_ms=?, connect_timeout_ms=?} -> session; session:request{...} keeps one
 *     connection alive across calls (HTTP/2 over TLS when offered).
 * A 404 is a result. Errors: HTTP_CONNECT, HTTP_TIMEOUT, HTTP_NETWORK, HTTP_TLS, INTERRUPTED;
 * err.sent is false only when the request provably never reached the server.
 *
 * Memory rule: every C allocation made for a request lives in a userdata (the header array, the
 * response box) or is freed before anything that can raise, so a Lua error never leaks. */
#include <stdlib.h>
#include <string.h>
#include "bind.h"
#include "l_http.h"

#define SESSION_MT  "galley.http.Session"
#define RESPONSE_MT "galley.http.Response"

#define DEFAULT_TIMEOUT_MS         60000
#define DEFAULT_CONNECT_TIMEOUT_MS 10000

typedef struct {
  galley_http_session *s;   /* NULL once closed */
  long timeout_ms;
  long connect_timeout_ms;
} l_session;


/* Rejects CR/LF so that no header can smuggle another one in. */
static void check_header_text(lua_State *L, int arg, const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      luaL_argerror(L, arg, "header names and values must not contain CR, LF or NUL");
}


/* Reads opts (at `arg`) into req. Pushes two anchors that must stay on the stack until the
 * transfer is finished: a table of "Name: value" strings and the userdata holding their
 * pointers. Raises on misuse; allocates nothing outside Lua. */
static void check_request(lua_State *L, int arg, galley_http_request *req, long def_timeout,
                          long def_connect) {
  luaL_checktype(L, arg, LUA_TTABLE);
  memset(req, 0, sizeof *req);
  req->method = galley_opt_string(L, arg, "method", "GET", NULL);
  for (const char *m = req->method; *m; m++)
    if (!(*m >= 'A' && *m <= 'Z')) luaL_argerror(L, arg, "method must be an upper-case token");
  req->url = galley_opt_string(L, arg, "url", NULL, NULL);
  if (!req->url) luaL_argerror(L, arg, "field 'url' is required");
  req->body = galley_opt_string(L, arg, "body", NULL, &req->body_len);
  req->timeout_ms = (long)galley_opt_integer(L, arg, "timeout_ms", def_timeout);
  req->connect_timeout_ms = (long)galley_opt_integer(L, arg, "connect_timeout_ms", def_connect);
  req->no_resend = galley_opt_boolean(L, arg, "no_resend", false);

  lua_newtable(L);  // [..., lines]
  int lines = lua_gettop(L);
  size_t n = 0;
  if (lua_getfield(L, arg, "headers") != LUA_TNIL) {  // [..., lines, headers]
    luaL_argcheck(L, lua_istable(L, -1), arg, "field 'headers' must be a table");
    lua_pushnil(L);
    while (lua_next(L, -2)) {  // [..., lines, headers, k, v]
      if (lua_type(L, -2) != LUA_TSTRING || (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        luaL_argerror(L, arg, "headers must map string names to string values");
      size_t kl, vl;
      const char *k = lua_tolstring(L, -2, &kl);
      lua_pushvalue(L, -1);  // a copy, so converting a number leaves lua_next's key alone
      const char *v = lua_tolstring(L, -1, &vl);
      check_header_text(L, arg, k, kl);
      check_header_text(L, arg, v, vl);
      lua_pushfstring(L, "%s: %s", k, v);  // [..., lines, headers, k, v, v', line]
      lua_rawseti(L, lines, (lua_Integer)++n);
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);  // [..., lines]
  const char **ptrs = lua_newuserdatauv(L, (n ? n : 1) * sizeof *ptrs, 0);  // [..., lines, ptrs]
  for (size_t i = 0; i < n; i++) {
    lua_rawgeti(L, lines, (lua_Integer)(i + 1));
    ptrs[i] = lua_tostring(L, -1);  // anchored by `lines`
    lua_pop(L, 1);
  }
  req->headers = ptrs;
  req->nheaders = n;
}


static int response_gc(lua_State *L) {
  galley_http_response_free(luaL_checkudata(L, 1, RESPONSE_MT));
  return 0;
}


galley_http_response *galley_push_http_response_box(lua_State *L) {
  galley_http_response *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  if (luaL_newmetatable(L, RESPONSE_MT)) {
    lua_pushcfunction(L, response_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return r;
}


/* Pushes {status, headers, body, http_version, reused, ms} built from a boxed response. */
static void push_response(lua_State *L, const galley_http_response *r) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  lua_createtable(L, 0, (int)r->nheaders);
  for (size_t i = 0; i < r->nheaders; i++) {
    lua_pushstring(L, r->headers[i].value);
    lua_setfield(L, -2, r->headers[i].name);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->body ? r->body : "", r->body_len);
  lua_setfield(L, -2, "body");
  lua_pushstring(L, r->http_version);
  lua_setfield(L, -2, "http_version");
  lua_pushboolean(L, r->new_connections == 0);
  lua_setfield(L, -2, "reused");
  lua_pushnumber(L, r->total_ms);
  lua_setfield(L, -2, "ms");
}


static int push_failure(lua_State *L, const galley_http_error *err, const char *url) {
  galley_fail(L, err->code, "%s", err->message);
  galley_error_set_string(L, "url", url);
  galley_error_set_integer(L, "curl_code", err->curl_code);
  lua_pushboolean(L, err->sent);
  lua_setfield(L, -2, "sent");
  return 2;
}


/* Runs one request through session s; opts at `arg`. */
static int do_request(lua_State *L, galley_http_session *s, int arg, long def_timeout, long def_connect) {
  galley_http_request req;
  check_request(L, arg, &req, def_timeout, def_connect);  // [..., lines, ptrs]
  galley_http_response *r = galley_push_http_response_box(L);         // [..., lines, ptrs, box]
  galley_http_error err;
  /* No Lua call between here and the end of perform: the GIL may be released meanwhile. */
  if (galley_http_perform(s, &req, r, &err) != 0) return push_failure(L, &err, req.url);
  push_response(L, r);
  galley_http_response_free(r);
  return 1;
}


/* http.request(opts) -> resp | nil, err   (a fresh connection; use a session to keep one) */
static int l_http_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  l_session *box = lua_newuserdatauv(L, sizeof *box, 0);  // closed until the session exists
  box->s = NULL;
  luaL_setmetatable(L, SESSION_MT);
  box->s = galley_http_session_new();
  if (!box->s) return galley_fail(L, "HTTP_NETWORK", "cannot create an HTTP session");
  int n = do_request(L, box->s, 1, DEFAULT_TIMEOUT_MS, DEFAULT_CONNECT_TIMEOUT_MS);
  galley_http_session_free(box->s);
  box->s = NULL;
  return n;
}


static l_session *check_session(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  if (!box->s) luaL_argerror(L, 1, "session is closed");
  return box;
}


/* http.session(opts?) -> session   (opts: timeout_ms, connect_timeout_ms as defaults) */
static int l_http_session(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  long timeout = (long)galley_opt_integer(L, 1, "timeout_ms", DEFAULT_TIMEOUT_MS);
  long connect = (long)galley_opt_integer(L, 1, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS);
  l_session *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->s = NULL;
  box->timeout_ms = timeout;
  box->connect_timeout_ms = connect;
  luaL_setmetatable(L, SESSION_MT);
  box->s = galley_http_session_new();
  if (!box->s) return galley_fail(L, "HTTP_NETWORK", "cannot create an HTTP session");
  return 1;
}


/* session:request(opts) -> resp | nil, err */
static int l_session_request(lua_State *L) {
  l_session *box = check_session(L);
  return do_request(L, box->s, 2, box->timeout_ms, box->connect_timeout_ms);
}


/* session:close()   (also __gc and __close; safe to call twice) */
static int l_session_close(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  galley_http_session_free(box->s);
  box->s = NULL;
  return 0;
}


/* tostring(session) -> "galley.http.Session (0x...)" | "... (closed)" */
static int l_session_tostring(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  if (box->s) lua_pushfstring(L, "galley.http.Session (%p)", (void *)box->s);
  else lua_pushliteral(L, "galley.http.Session (closed)");
  return 1;
}


static const luaL_Reg session_methods[] = {
  { "request", l_session_request },
  { "close",   l_session_close   },
  { NULL,      NULL              }
};

static const luaL_Reg session_meta[] = {
  { "__gc",       l_session_close    },
  { "__close",    l_session_close    },
  { "__tostring", l_session_tostring },
  { "__index",    NULL               },
  { NULL,         NULL               }
};

static const luaL_Reg http_funcs[] = {
  { "request", l_http_request },
  { "session", l_http_session },
  { NULL,      NULL           }
};

int luaopen_galley_core_http(lua_State *L) {
  luaL_newmetatable(L, SESSION_MT);      // [mt]
  luaL_setfuncs(L, session_meta, 0);
  luaL_newlib(L, session_methods);       // [mt, methods]
  lua_setfield(L, -2, "__index");        // [mt]
  lua_pop(L, 1);
  luaL_newlib(L, http_funcs);
  return 1;
}
