/* galley.core.http: HTTP requests on libcurl (src/core/http.c), waiting on the event loop.
 *   http.request{method=, url=, headers=?{K=V}, body=?, timeout_ms=?, connect_timeout_ms=?,
 *                no_resend=?, stream=?}   (no_resend: never let libcurl resend it on a fresh
 *                                          connection)
 *     -> {status, headers={lowercased name=value}, body, http_version, reused, ms} | nil, err
 *     with stream=true -> stream: stream:read() -> next piece of a 2xx body | nil at the end
 *       (| nil, err when the wait was cancelled); stream:result() -> resp | nil, err (waits for
 *       the end; resp.body holds what was not read, e.g. a 4xx body); stream:close() aborts.
 *   http.request uses a fresh connection and closes it afterwards.
 *   http.session{timeout_ms=?, connect_timeout_ms=?} -> session; session:request{...} with those
 *     defaults, from the process's one pool of keep-alive connections (HTTP/2 over TLS when
 *     offered), shared by every session and by galley.core.morph.
 *   http.inflight() -> transfers in flight (for tests).
 * A 404 is a result. Errors: HTTP_CONNECT, HTTP_TIMEOUT, HTTP_NETWORK, HTTP_TLS, and the wait's
 * own cancellation error (INTERRUPTED with .signal on Ctrl-C/SIGTERM, a task's cancel error);
 * err.sent is false only when the request provably never reached the server.
 *
 * Waiting: galley_await (await.h). Inside a galley.task the calling coroutine yields while the
 * transfer runs, so many transfers overlap; elsewhere the loop runs until it is done. On
 * cancellation the easy handle is removed from the multi handle (the transfer is aborted).
 *
 * Memory rule: the transfer lives in a userdata ("galley.http.Transfer") whose __gc aborts and
 * frees it, and the response in a box with __gc, so a Lua error or an abandoned coroutine never
 * leaks; every other C allocation is freed before anything that can raise. */
#include <stdlib.h>
#include <string.h>
#include "await.h"
#include "bind.h"
#include "l_http.h"
#include "loop.h"

#define SESSION_MT  "galley.http.Session"
#define RESPONSE_MT "galley.http.Response"
#define XFER_MT     "galley.http.Transfer"

#define DEFAULT_TIMEOUT_MS         60000
#define DEFAULT_CONNECT_TIMEOUT_MS 10000

typedef struct {
  bool open;
  long timeout_ms;
  long connect_timeout_ms;
} l_session;

/* A transfer in flight, owned by Lua. */
typedef struct {
  galley_http_xfer *x;      /* NULL once finished */
  bool ended;               /* stream: read() saw the end */
} l_xfer;


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
  req->stream = galley_opt_boolean(L, arg, "stream", false);
  req->ca_file = galley_opt_string(L, arg, "ca_file", NULL, NULL);
  req->pinned_public_key = galley_opt_string(L, arg, "pinned_public_key", NULL, NULL);
  req->insecure = galley_opt_boolean(L, arg, "insecure", false);

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
  lua_createtable(L, 0, 7);
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
  lua_pushstring(L, r->reason);
  lua_setfield(L, -2, "reason");
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


/* Aborts and frees the transfer (safe twice). */
static void xfer_abort(l_xfer *ux) {
  if (!ux->x) return;
  galley_http_finish(ux->x, NULL, NULL);
  ux->x = NULL;
}


static int xfer_gc(lua_State *L) {
  xfer_abort(luaL_checkudata(L, 1, XFER_MT));
  return 0;
}


static void push_stream_mt(lua_State *L);

/* Pushes a closed transfer userdata (uservalue 1: the request URL, for errors). */
static l_xfer *push_xfer(lua_State *L, const char *url) {
  l_xfer *ux = lua_newuserdatauv(L, sizeof *ux, 1);
  ux->x = NULL;
  ux->ended = false;
  push_stream_mt(L);  /* galley.core.morph may start transfers before this module is loaded */
  lua_setmetatable(L, -2);
  lua_pushstring(L, url);
  lua_setiuservalue(L, -2, 1);
  return ux;
}


/* Finishes the done transfer at idx: pushes resp, or nil, err (2 values). */
static int xfer_result(lua_State *L, int idx, l_xfer *ux) {
  idx = lua_absindex(L, idx);
  galley_http_response *r = galley_push_http_response_box(L);
  galley_http_error err;
  int rc = galley_http_finish(ux->x, r, &err);  /* nothing raises between finish and here */
  ux->x = NULL;
  if (rc != 0) {
    lua_getiuservalue(L, idx, 1);
    const char *url = lua_tostring(L, -1);
    return push_failure(L, &err, url);
  }
  push_response(L, r);
  galley_http_response_free(r);
  return 1;
}


/* Continuation of a request: [..., ux, ok, err?] */
static int request_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  l_xfer *ux = (l_xfer *)ctx;
  if (!galley_await_ok(L)) {
    xfer_abort(ux);  /* the cancellation error is on top */
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (!ux->x) return luaL_error(L, "transfer already finished");
  return xfer_result(L, -1, ux);
}


int galley_http_request_lua(lua_State *L, const galley_http_request *req) {
  l_xfer *ux = push_xfer(L, req->url);  // [..., ux]
  galley_http_error err;
  ux->x = galley_http_start(req, &err);  /* curl copied what it needs: the anchors may go */
  if (!ux->x) return push_failure(L, &err, req->url);
  if (req->stream) return 1;
  uint64_t token = galley_loop_token();
  galley_http_notify(ux->x, token);
  return galley_await(L, token, (lua_KContext)ux, request_k);
}


/* Starts one request (opts at `arg`) and waits for it, or returns a stream. */
static int do_request(lua_State *L, int arg, long def_timeout, long def_connect, bool fresh) {
  galley_http_request req;
  check_request(L, arg, &req, def_timeout, def_connect);  // [..., lines, ptrs]
  req.fresh = fresh;
  return galley_http_request_lua(L, &req);
}


static l_xfer *check_stream(lua_State *L) {
  l_xfer *ux = luaL_checkudata(L, 1, XFER_MT);
  if (!ux->x) luaL_argerror(L, 1, "stream is closed");
  return ux;
}


/* Continuation of stream:read(): [stream, ok, err?] */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  l_xfer *ux = (l_xfer *)ctx;
  if (!galley_await_ok(L)) {
    xfer_abort(ux);
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  const char *data = NULL;
  size_t n = ux->x ? galley_http_stream_peek(ux->x, &data) : 0;
  if (n > 0) {
    lua_pushlstring(L, data, n);  /* the bytes stay owned by the transfer if this raises */
    galley_http_stream_consume(ux->x);
    return 1;
  }
  if (!ux->x || galley_http_done(ux->x)) {
    ux->ended = true;
    lua_pushnil(L);
    return 1;
  }
  uint64_t token = galley_loop_token();
  galley_http_notify(ux->x, token);
  return galley_await(L, token, ctx, read_k);
}


/* stream:read() -> string | nil (the end) | nil, err (cancelled: the transfer is aborted) */
static int l_stream_read(lua_State *L) {
  l_xfer *ux = luaL_checkudata(L, 1, XFER_MT);
  lua_settop(L, 1);
  if (!ux->x || ux->ended) {
    lua_pushnil(L);
    return 1;
  }
  uint64_t token = galley_loop_token();
  galley_http_notify(ux->x, token);
  return galley_await(L, token, (lua_KContext)ux, read_k);
}


/* Continuation of stream:result(): [stream, ok, err?] */
static int result_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  l_xfer *ux = (l_xfer *)ctx;
  if (!galley_await_ok(L)) {
    xfer_abort(ux);
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (!ux->x) return luaL_argerror(L, 1, "stream is closed");
  if (!galley_http_done(ux->x)) {
    /* Woken by stream data: wait on until the end. */
    uint64_t token = galley_loop_token();
    galley_http_notify(ux->x, token);
    return galley_await(L, token, ctx, result_k);
  }
  return xfer_result(L, 1, ux);
}


/* stream:result() -> resp | nil, err   (waits for the end; closes the stream) */
static int l_stream_result(lua_State *L) {
  l_xfer *ux = check_stream(L);
  lua_settop(L, 1);
  if (galley_http_done(ux->x)) return xfer_result(L, 1, ux);
  uint64_t token = galley_loop_token();
  galley_http_notify(ux->x, token);
  return galley_await(L, token, (lua_KContext)ux, result_k);
}


/* stream:status() -> integer (0 until the status line arrived) */
static int l_stream_status(lua_State *L) {
  l_xfer *ux = check_stream(L);
  lua_pushinteger(L, galley_http_status(ux->x));
  return 1;
}


/* stream:close()   aborts the transfer (also __gc and __close; safe twice) */
static int l_stream_close(lua_State *L) {
  xfer_abort(luaL_checkudata(L, 1, XFER_MT));
  return 0;
}


/* http.request(opts) -> resp | nil, err   (a fresh connection, closed afterwards) */
static int l_http_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  return do_request(L, 1, DEFAULT_TIMEOUT_MS, DEFAULT_CONNECT_TIMEOUT_MS, true);
}


static l_session *check_session(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  if (!box->open) luaL_argerror(L, 1, "session is closed");
  return box;
}


/* http.session(opts?) -> session   (opts: timeout_ms, connect_timeout_ms as defaults) */
static int l_http_session(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  long timeout = (long)galley_opt_integer(L, 1, "timeout_ms", DEFAULT_TIMEOUT_MS);
  long connect = (long)galley_opt_integer(L, 1, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS);
  l_session *box = lua_newuserdatauv(L, sizeof *box, 0);
  box->open = true;
  box->timeout_ms = timeout;
  box->connect_timeout_ms = connect;
  luaL_setmetatable(L, SESSION_MT);
  return 1;
}


/* session:request(opts) -> resp | nil, err */
static int l_session_request(lua_State *L) {
  l_session *box = check_session(L);
  return do_request(L, 2, box->timeout_ms, box->connect_timeout_ms, false);
}


/* session:close()   (also __gc and __close; safe to call twice) */
static int l_session_close(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  box->open = false;
  return 0;
}


/* tostring(session) -> "galley.http.Session (0x...)" | "... (closed)" */
static int l_session_tostring(lua_State *L) {
  l_session *box = luaL_checkudata(L, 1, SESSION_MT);
  if (box->open) lua_pushfstring(L, "galley.http.Session (%p)", (void *)box);
  else lua_pushliteral(L, "galley.http.Session (closed)");
  return 1;
}


/* http.inflight() -> integer */
static int l_http_inflight(lua_State *L) {
  lua_pushinteger(L, galley_http_inflight());
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

static const luaL_Reg stream_methods[] = {
  { "read",   l_stream_read   },
  { "result", l_stream_result },
  { "status", l_stream_status },
  { "close",  l_stream_close  },
  { NULL,     NULL            }
};

static const luaL_Reg stream_meta[] = {
  { "__gc",    xfer_gc },
  { "__close", xfer_gc },
  { "__index", NULL    },
  { NULL,      NULL    }
};

static const luaL_Reg http_funcs[] = {
  { "request",  l_http_request  },
  { "session",  l_http_session  },
  { "inflight", l_http_inflight },
  { NULL,       NULL            }
};

/* Pushes the stream metatable, creating it on first use. */
static void push_stream_mt(lua_State *L) {
  if (luaL_newmetatable(L, XFER_MT)) {   // [mt]
    luaL_setfuncs(L, stream_meta, 0);
    luaL_newlib(L, stream_methods);      // [mt, methods]
    lua_setfield(L, -2, "__index");      // [mt]
  }
}


int luaopen_galley_core_http(lua_State *L) {
  luaL_newmetatable(L, SESSION_MT);      // [mt]
  luaL_setfuncs(L, session_meta, 0);
  luaL_newlib(L, session_methods);       // [mt, methods]
  lua_setfield(L, -2, "__index");        // [mt]
  lua_pop(L, 1);
  push_stream_mt(L);
  lua_pop(L, 1);
  luaL_newlib(L, http_funcs);
  return 1;
}
