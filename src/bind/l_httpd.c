/* galley.core.httpd: a loopback HTTP server on the event loop (src/core/httpd.h).
 *
 * C never calls Lua here. The core queues complete requests; `server:accept()` awaits the next
 * one (yielding inside a task, running the loop elsewhere) and hands it out as a Request
 * handle plus a plain table. Answers go back through the handle, each write awaited until the
 * bytes are out (so a streamed body never runs ahead of the client). `serve{}` is the request
 * loop on top of this, written in Lua (lua/galley/httpd.lua): an accept task that spawns one
 * task per request, so handlers may sleep, run processes and make HTTP calls.
 *
 * Memory: a response body is written straight from the Lua string, which the Request
 * userdata keeps as its user value until the next answer; if a wait is cancelled the
 * connection is closed first, so libuv never reads a string that Lua may have collected. */
#include <stdlib.h>
#include <string.h>
#include "await.h"
#include "bind.h"
#include "httpd.h"

#define SERVER_MT "galley.httpd.Server"
#define REQUEST_MT "galley.httpd.Request"

typedef struct {
  struct galley_httpd *srv;  /* NULL once stopped */
} Server;

typedef struct {
  struct galley_httpd_req *rq;  /* NULL once released */
} Request;


static Server *check_server(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (!s->srv) luaL_error(L, "attempt to use a stopped server");
  return s;
}


static Request *check_request(lua_State *L) {
  Request *r = luaL_checkudata(L, 1, REQUEST_MT);
  if (!r->rq) luaL_error(L, "attempt to use a released request");
  return r;
}


/* Pushes {name=value, ...} from an array of pairs. */
static void push_pairs(lua_State *L, const struct galley_httpd_pair *p, size_t n) {
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, p[i].value);
    lua_setfield(L, -2, p[i].name);
  }
}


/* Pushes the Request handle and the request table; the handle owns rq from here on. */
static int push_request(lua_State *L, struct galley_httpd_req *rq) {
  Request *r = lua_newuserdatauv(L, sizeof *r, 1);  /* user value: the body being written */
  r->rq = NULL;
  luaL_setmetatable(L, REQUEST_MT);
  r->rq = rq;
  lua_createtable(L, 0, 7);
  lua_pushstring(L, rq->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, rq->path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, rq->raw_query);
  lua_setfield(L, -2, "raw_query");
  push_pairs(L, rq->query, rq->nquery);
  lua_setfield(L, -2, "query");
  push_pairs(L, rq->headers, rq->nheaders);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, rq->body, rq->body_len);
  lua_setfield(L, -2, "body");
  lua_pushinteger(L, (lua_Integer)rq->conn_id);
  lua_setfield(L, -2, "conn");
  /* The body is in Lua now: let C memory go early (big uploads). */
  free(rq->body);
  rq->body = NULL;
  rq->body_len = rq->body_cap = 0;
  return 2;
}


/* --- server ------------------------------------------------------------------------------- */

static lua_Integer opt_limit(lua_State *L, const char *field, lua_Integer max) {
  lua_Integer v = galley_opt_integer(L, 1, field, 0);
  if (v < 0 || v > max) luaL_error(L, "bad argument #1 to 'listen' (field '%s' must be 0..%I)", field, max);
  return v;
}


/* httpd.listen{port=0, bearer?, max_body_bytes?, max_header_bytes?, max_connections?,
 *              max_connections_per_client?, header_timeout_ms?, idle_timeout_ms?}
 *   -> server | nil, err(HTTPD_BIND|HTTPD_START)
 * Listens on 127.0.0.1; requests queue until taken with server:accept(). */
static int l_httpd_listen(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer port = galley_opt_integer(L, 1, "port", 0);
  if (port < 0 || port > 65535) return luaL_argerror(L, 1, "port must be 0..65535");
  struct galley_httpd_limits lim = {0};
  lim.max_body = (size_t)opt_limit(L, "max_body_bytes", (lua_Integer)1 << 40);
  lim.max_header_bytes = (size_t)opt_limit(L, "max_header_bytes", (lua_Integer)1 << 30);
  lim.max_connections = (unsigned)opt_limit(L, "max_connections", 1000000);
  lim.max_per_client = (unsigned)opt_limit(L, "max_connections_per_client", 1000000);
  lim.header_timeout_ms = (unsigned)opt_limit(L, "header_timeout_ms", 86400000);
  lim.idle_timeout_ms = (unsigned)opt_limit(L, "idle_timeout_ms", 86400000);
  size_t blen = 0;
  lim.bearer = galley_opt_string(L, 1, "bearer", NULL, &blen);
  if (lim.bearer && (blen == 0 || strlen(lim.bearer) != blen))
    return luaL_argerror(L, 1, "field 'bearer' must be a non-empty string without NUL bytes");
  Server *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->srv = NULL;
  luaL_setmetatable(L, SERVER_MT);
  char code[32], msg[256];
  s->srv = galley_httpd_start((int)port, &lim, code, sizeof code, msg, sizeof msg);
  if (!s->srv) return galley_fail(L, code, "%s", msg);
  return 1;
}


/* httpd.serve{port=0, handler=function(req) return resp end, <listen limits>...}
 *   -> server | nil, err   (lua/galley/httpd.lua: one task per request) */
static int l_httpd_serve(lua_State *L) {
  lua_settop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "galley.httpd");
  lua_call(L, 1, 1);                                                  /* [opts, mod] */
  lua_getfield(L, -1, "serve");                                       /* [opts, mod, serve] */
  lua_pushvalue(L, 1);
  lua_call(L, 1, 2);
  return 2;
}


/* server:port() -> integer */
static int l_server_port(lua_State *L) {
  Server *s = check_server(L);
  lua_pushinteger(L, galley_httpd_port(s->srv));
  return 1;
}


/* server:stats() -> {connections, open, requests, unauthorized, too_large, bad_requests,
 *                    timed_out, evicted, refused} */
static int l_server_stats(lua_State *L) {
  Server *s = check_server(L);
  struct galley_httpd_stats st;
  galley_httpd_get_stats(s->srv, &st);
  lua_createtable(L, 0, 9);
#define F(name) lua_pushinteger(L, (lua_Integer)st.name); lua_setfield(L, -2, #name);
  F(connections) F(open) F(requests) F(unauthorized) F(too_large) F(bad_requests) F(timed_out)
  F(evicted) F(refused)
#undef F
  return 1;
}


/* Continuation of accept: [server, ok, err?] */
static int accept_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (!galley_await_ok(L)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;  /* nil, err */
  }
  Server *s = lua_touserdata(L, 1);
  if (!s->srv) {
    lua_pushnil(L);
    return 1;
  }
  struct galley_httpd_req *rq = galley_httpd_take(s->srv);
  if (rq) return push_request(L, rq);
  uint64_t token = galley_httpd_wait(s->srv);
  if (!token) {
    lua_pushnil(L);
    return 1;
  }
  return galley_await(L, token, 0, accept_k);
}


/* server:accept() -> request_handle, req | nil (stopped) | nil, err (wait cancelled)
 * req = {method, path, raw_query, query, headers (lower-case names), body, conn} */
static int l_server_accept(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  lua_settop(L, 1);
  if (!s->srv) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushboolean(L, 1);
  lua_pushnil(L);
  return accept_k(L, LUA_OK, 0);
}


/* server:stop() / server:close()   closes the listener and every connection; requests being
 * handled lose their connection. Safe to call twice (also from a handler). */
static int l_server_stop(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->srv) galley_httpd_stop(s->srv);
  s->srv = NULL;
  return 0;
}


/* tostring(server) -> "galley.httpd.Server (127.0.0.1:PORT)" | "... (stopped)" */
static int l_server_tostring(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->srv) lua_pushfstring(L, "%s (127.0.0.1:%d)", SERVER_MT, galley_httpd_port(s->srv));
  else lua_pushfstring(L, "%s (stopped)", SERVER_MT);
  return 1;
}


/* --- request ------------------------------------------------------------------------------ */

/* Reads the headers table at idx ({string = string}) into pairs held by a scratch userdata
 * pushed on the stack (so nothing leaks on a raise). The strings stay owned by the table,
 * which must stay on the stack while the pairs are used. Returns the count. */
static size_t check_headers(lua_State *L, int idx, struct galley_httpd_pair **out) {
  *out = NULL;
  if (lua_isnoneornil(L, idx)) {
    lua_pushnil(L);
    return 0;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {                                          /* [.., key, value] */
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, idx, "headers must map strings to strings");
    lua_pop(L, 1);
    n++;
  }
  struct galley_httpd_pair *p = lua_newuserdatauv(L, (n ? n : 1) * sizeof *p, 0);  /* [.., scratch] */
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    p[i].name = (char *)lua_tostring(L, -2);
    p[i].value = (char *)lua_tostring(L, -1);
    i++;
    lua_pop(L, 1);
  }
  *out = p;
  return n;
}


static int check_status(lua_State *L, int idx) {
  lua_Integer status = luaL_checkinteger(L, idx);
  if (status < 100 || status > 599) luaL_argerror(L, idx, "status must be 100..599");
  return (int)status;
}


/* Continuation of every awaited write: [self, ..., ok, err?] -> ok | nil, err */
static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  Request *r = (Request *)ctx;
  if (!galley_await_ok(L)) {
    if (r->rq) galley_httpd_abort(r->rq, 0);  /* before the body string can be collected */
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, r->rq && galley_httpd_ok(r->rq));
  return 1;
}


static int await_write(lua_State *L, Request *r, uint64_t token) {
  if (!token) {
    lua_pushboolean(L, 0);
    return 1;
  }
  return galley_await(L, token, (lua_KContext)r, write_k);
}


/* req:respond(status, headers?, body?, truncate_at?) -> ok
 * The whole answer; with truncate_at < #body, Content-Length announces #body but only
 * truncate_at bytes are sent before the connection closes. ok is false when the client is
 * gone (or the request was answered already); nil, err when the wait was cancelled. */
static int l_request_respond(lua_State *L) {
  Request *r = check_request(L);
  int status = check_status(L, 2);
  size_t len = 0;
  const char *body = luaL_optlstring(L, 4, "", &len);
  lua_Integer cut = luaL_optinteger(L, 5, -1);
  lua_settop(L, 5);
  struct galley_httpd_pair *h;
  size_t nh = check_headers(L, 3, &h);                                /* [.., scratch] */
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, 1, 1);  /* keeps the body alive while libuv writes it */
  size_t truncate_at = cut < 0 ? len : (size_t)cut;
  uint64_t token = galley_httpd_respond(r->rq, status, h, nh, body, len, truncate_at);
  return await_write(L, r, token);
}


/* req:stream_head(status, headers?) -> ok   starts a chunked answer */
static int l_request_stream_head(lua_State *L) {
  Request *r = check_request(L);
  int status = check_status(L, 2);
  lua_settop(L, 3);
  struct galley_httpd_pair *h;
  size_t nh = check_headers(L, 3, &h);
  return await_write(L, r, galley_httpd_stream_head(r->rq, status, h, nh));
}


/* req:write(chunk) -> ok   one chunk of a streamed answer, awaited until written */
static int l_request_write(lua_State *L) {
  Request *r = check_request(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, 1);
  return await_write(L, r, galley_httpd_stream_chunk(r->rq, data, len));
}


/* req:finish() -> ok   ends a streamed answer */
static int l_request_finish(lua_State *L) {
  Request *r = check_request(L);
  lua_settop(L, 1);
  return await_write(L, r, galley_httpd_stream_end(r->rq));
}


/* req:abort(reset?)   drops the connection (a TCP reset when reset is true) */
static int l_request_abort(lua_State *L) {
  Request *r = check_request(L);
  galley_httpd_abort(r->rq, lua_toboolean(L, 2));
  return 0;
}


/* req:peer_gone() -> boolean: the client closed or reset its connection while the request is
 * handled (a handler that waits long checks it, and stops the work nobody will read). */
static int l_request_peer_gone(lua_State *L) {
  Request *r = check_request(L);
  lua_pushboolean(L, galley_httpd_peer_gone(r->rq));
  return 1;
}


/* req:release() (also __gc/__close): done with the request; unanswered, its connection closes */
static int l_request_release(lua_State *L) {
  Request *r = luaL_checkudata(L, 1, REQUEST_MT);
  if (r->rq) galley_httpd_release(r->rq);
  r->rq = NULL;
  return 0;
}


static const luaL_Reg server_methods[] = {
  { "port",   l_server_port   },
  { "accept", l_server_accept },
  { "stats",  l_server_stats  },
  { "stop",   l_server_stop   },
  { "close",  l_server_stop   },
  { NULL,     NULL            }
};

static const luaL_Reg server_meta[] = {
  { "__gc",       l_server_stop     },
  { "__close",    l_server_stop     },
  { "__tostring", l_server_tostring },
  { "__index",    NULL              },
  { NULL,         NULL              }
};

static const luaL_Reg request_methods[] = {
  { "respond",     l_request_respond     },
  { "stream_head", l_request_stream_head },
  { "write",       l_request_write       },
  { "finish",      l_request_finish      },
  { "abort",       l_request_abort       },
  { "peer_gone",   l_request_peer_gone   },
  { "release",     l_request_release     },
  { NULL,          NULL                  }
};

static const luaL_Reg request_meta[] = {
  { "__gc",    l_request_release },
  { "__close", l_request_release },
  { "__index", NULL              },
  { NULL,      NULL              }
};

static const luaL_Reg httpd_funcs[] = {
  { "listen", l_httpd_listen },
  { "serve",  l_httpd_serve  },
  { NULL,     NULL           }
};

int luaopen_galley_core_httpd(lua_State *L) {
  luaL_newmetatable(L, SERVER_MT);                                    /* [mt] */
  luaL_setfuncs(L, server_meta, 0);
  luaL_newlib(L, server_methods);                                     /* [mt, methods] */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, REQUEST_MT);
  luaL_setfuncs(L, request_meta, 0);
  luaL_newlib(L, request_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, httpd_funcs);
  return 1;
}
