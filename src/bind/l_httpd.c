/* galley.core.httpd: a loopback HTTP server whose requests are answered by one Lua function.
 *
 * Threads: libmicrohttpd runs one OS thread per TCP connection. Lua is single-threaded, so
 * serve() turns the GIL on (src/core/gil.h) and every connection thread takes it before it
 * touches Lua and gives it back when done. Each request runs on its own Lua thread
 * (lua_newthread), anchored in the registry while in use, so a handler blocked in a call that
 * releases the GIL (a process wait, runtime.sleep_ms) leaves its stack intact while other
 * requests run on theirs. Lua threads are created from a private "anchor" thread whose stack
 * nobody else uses: the main thread may be parked inside a C function at any moment. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bind.h"
#include "gil.h"
#include "httpd.h"

#define SERVER_MT "galley.httpd.Server"

/* Shared by the userdata and every connection thread; freed by server_close once the
 * connection threads are gone. */
struct server_ctx {
  struct galley_httpd *srv;
  lua_State *anchor;
  int anchor_ref;
  int handler_ref;
  pthread_t owner;        /* the thread that called serve(); only it may stop the server */
  atomic_int stopping;    /* set before stopping: no new Lua work starts */
  atomic_int finalizing;  /* set by __gc: the state may be closing, run no Lua callbacks */
};

typedef struct {
  struct server_ctx *ctx;  /* NULL once stopped */
} Server;

/* One streamed response: the Lua function producing chunks, an optional close callback and
 * the request's Lua thread, all anchored until libmicrohttpd lets go of the stream. */
struct stream_ctx {
  struct server_ctx *sctx;
  lua_State *T;
  int thread_ref;
  int fn_ref;
  int close_ref;
};

/* What run_request needs, passed as a light userdata. */
struct request_call {
  struct server_ctx *sctx;
  const struct galley_httpd_request *req;
  struct galley_httpd_response *resp;
  int thread_ref;
  int kept;  /* the response is a stream that now owns thread_ref */
};


static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
    else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}


static void report_error(lua_State *T, const char *what) {
  fprintf(stderr, "galley: httpd: %s failed: %s\n", what, lua_tostring(T, -1));
  fflush(stderr);
}


/* Pushes {name=value, ...} from an array of pairs. */
static void push_pairs(lua_State *T, const struct galley_httpd_pair *p, size_t n) {
  lua_createtable(T, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(T, p[i].value);
    lua_setfield(T, -2, p[i].name);
  }
}


static void push_request(lua_State *T, const struct galley_httpd_request *req) {
  lua_createtable(T, 0, 7);
  lua_pushstring(T, req->method);
  lua_setfield(T, -2, "method");
  lua_pushstring(T, req->path);
  lua_setfield(T, -2, "path");
  lua_pushstring(T, req->raw_query);
  lua_setfield(T, -2, "raw_query");
  push_pairs(T, req->query, req->nquery);
  lua_setfield(T, -2, "query");
  push_pairs(T, req->headers, req->nheaders);
  lua_setfield(T, -2, "headers");
  lua_pushlstring(T, req->body, req->body_len);
  lua_setfield(T, -2, "body");
  lua_pushinteger(T, (lua_Integer)req->conn_id);
  lua_setfield(T, -2, "conn");
}


static int stream_next(void *ctx, char **chunk, size_t *len);
static void stream_free(void *ctx);


/* Copies resp.headers (table at idx) into the C response. */
static void read_headers(lua_State *T, int idx, struct galley_httpd_response *resp) {
  if (lua_getfield(T, idx, "headers") == LUA_TNIL) {
    lua_pop(T, 1);
    return;
  }
  luaL_argexpected(T, lua_istable(T, -1), 1, "headers table");
  lua_pushnil(T);                                                     /* [.., headers, key] */
  while (lua_next(T, -2)) {                                           /* [.., headers, key, value] */
    if (lua_type(T, -2) != LUA_TSTRING || !lua_isstring(T, -1))
      luaL_error(T, "response headers must map strings to strings");
    lua_pushvalue(T, -2);                     /* copy the key: lua_tostring must not touch it */
    const char *name = lua_tostring(T, -1);
    const char *value = lua_tostring(T, -2);
    if (galley_httpd_response_header(resp, name, value) != 0) luaL_error(T, "out of memory");
    lua_pop(T, 2);
  }
  lua_pop(T, 1);
}


/* Reads the handler's response table at idx into call->resp. Raises on a malformed table;
 * the core frees whatever was already attached to resp. */
static void read_response(lua_State *T, int idx, struct request_call *call) {
  struct galley_httpd_response *resp = call->resp;
  if (!lua_istable(T, idx)) luaL_error(T, "handler must return a response table, got %s", luaL_typename(T, idx));
  lua_getfield(T, idx, "reset");
  int reset = lua_toboolean(T, -1);
  lua_pop(T, 1);
  if (reset) {
    resp->kind = GALLEY_HTTPD_RESET;
    return;
  }
  lua_Integer status = galley_opt_integer(T, idx, "status", 200);
  if (status < 100 || status > 599) luaL_error(T, "response status %d out of range", (int)status);
  resp->status = (int)status;
  read_headers(T, idx, resp);

  if (lua_getfield(T, idx, "stream") == LUA_TFUNCTION) {              /* [.., stream] */
    int has_close = lua_getfield(T, idx, "close") == LUA_TFUNCTION;   /* [.., stream, close] */
    struct stream_ctx *sc = malloc(sizeof *sc);
    if (!sc) luaL_error(T, "out of memory");
    /* Nothing below raises except on memory exhaustion. */
    sc->sctx = call->sctx;
    sc->T = T;
    sc->thread_ref = call->thread_ref;
    sc->close_ref = LUA_NOREF;
    if (has_close) sc->close_ref = luaL_ref(T, LUA_REGISTRYINDEX);
    else lua_pop(T, 1);
    sc->fn_ref = luaL_ref(T, LUA_REGISTRYINDEX);                      /* [..] */
    resp->kind = GALLEY_HTTPD_STREAM;
    resp->next = stream_next;
    resp->free_ctx = stream_free;
    resp->ctx = sc;  /* the core now guarantees one stream_free(sc) */
    call->kept = 1;
    return;
  }
  lua_pop(T, 1);

  size_t len;
  const char *body = galley_opt_string(T, idx, "body", "", &len);
  if (galley_httpd_response_body(resp, body, len) != 0) luaL_error(T, "out of memory");
  lua_Integer truncate = galley_opt_integer(T, idx, "truncate", -1);
  if (truncate >= 0) {
    resp->kind = GALLEY_HTTPD_TRUNCATE;
    resp->truncate_at = (size_t)truncate;
  }
}


/* Runs on the request's thread under lua_pcall: [call] -> handler(req) -> response. */
static int run_request(lua_State *T) {
  struct request_call *call = lua_touserdata(T, 1);
  lua_rawgeti(T, LUA_REGISTRYINDEX, call->sctx->handler_ref);
  push_request(T, call->req);
  lua_call(T, 1, 1);                                                  /* [call, resp] */
  read_response(T, 2, call);
  return 0;
}


/* The galley_httpd handler: called on a connection thread without the GIL. */
static void on_request(void *ud, const struct galley_httpd_request *req, struct galley_httpd_response *resp) {
  struct server_ctx *sctx = ud;
  galley_gil_acquire();
  if (atomic_load(&sctx->stopping)) {
    galley_gil_release();
    resp->status = 503;
    galley_httpd_response_header(resp, "Content-Type", "application/json");
    galley_httpd_response_body(resp, "{\"detail\":\"server stopping\"}", 28);
    return;
  }
  lua_State *T = lua_newthread(sctx->anchor);                          /* [anchor: T] */
  struct request_call call = {sctx, req, resp, luaL_ref(sctx->anchor, LUA_REGISTRYINDEX), 0};
  lua_pushcfunction(T, msghandler);
  lua_pushcfunction(T, run_request);
  lua_pushlightuserdata(T, &call);                                    /* [T: msgh, run, call] */
  if (lua_pcall(T, 1, 0, 1) != LUA_OK) {
    report_error(T, "request handler");
    /* Start over with a plain 500; a stream context is only ever created last, so none
     * exists here. */
    resp->kind = GALLEY_HTTPD_FULL;
    resp->status = 500;
    galley_httpd_response_body(resp, "{\"detail\":\"Internal Server Error\"}", 34);
    galley_httpd_response_header(resp, "Content-Type", "application/json");
    call.kept = 0;
  }
  lua_settop(T, 0);
  if (!call.kept) luaL_unref(sctx->anchor, LUA_REGISTRYINDEX, call.thread_ref);
  galley_gil_release();
}


/* galley_httpd_next_fn: calls the Lua stream function once (GIL taken for the call). */
static int stream_next(void *ctx, char **chunk, size_t *len) {
  struct stream_ctx *sc = ctx;
  int rc = -1;
  galley_gil_acquire();
  if (!atomic_load(&sc->sctx->stopping)) {
    lua_State *T = sc->T;
    lua_settop(T, 0);
    lua_pushcfunction(T, msghandler);
    lua_rawgeti(T, LUA_REGISTRYINDEX, sc->fn_ref);
    if (lua_pcall(T, 0, 1, 1) != LUA_OK) {
      report_error(T, "stream function");
    } else if (lua_type(T, -1) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(T, -1, &n);
      *chunk = malloc(n ? n : 1);
      if (*chunk) {
        memcpy(*chunk, s, n);
        *len = n;
        rc = 1;
      }
    } else if (lua_isnil(T, -1)) {
      rc = 0;
    } /* false (or anything else): abort the body */
    lua_settop(T, 0);
  }
  galley_gil_release();
  return rc;
}


/* galley_httpd_free_fn: runs the close callback, drops the anchors. */
static void stream_free(void *ctx) {
  struct stream_ctx *sc = ctx;
  galley_gil_acquire();
  lua_State *T = sc->T;
  if (sc->close_ref != LUA_NOREF && !atomic_load(&sc->sctx->finalizing)) {
    lua_settop(T, 0);
    lua_pushcfunction(T, msghandler);
    lua_rawgeti(T, LUA_REGISTRYINDEX, sc->close_ref);
    if (lua_pcall(T, 0, 0, 1) != LUA_OK) report_error(T, "stream close callback");
    lua_settop(T, 0);
  }
  luaL_unref(T, LUA_REGISTRYINDEX, sc->fn_ref);
  luaL_unref(T, LUA_REGISTRYINDEX, sc->close_ref);
  luaL_unref(T, LUA_REGISTRYINDEX, sc->thread_ref);  /* T may be collected from here on */
  galley_gil_release();
  free(sc);
}


/* Stops the server and frees its context; safe to call twice. Called with the GIL held. */
static void server_close(lua_State *L, Server *s) {
  struct server_ctx *ctx = s->ctx;
  if (!ctx) return;
  s->ctx = NULL;
  atomic_store(&ctx->stopping, 1);
  /* Connection threads may be waiting for the GIL (and stream close callbacks need it):
   * let them finish while we wait for them. */
  galley_gil_release();
  galley_httpd_stop(ctx->srv);
  galley_gil_acquire();
  luaL_unref(L, LUA_REGISTRYINDEX, ctx->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ctx->anchor_ref);
  free(ctx);
}


static Server *check_server(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (!s->ctx) luaL_error(L, "attempt to use a stopped server");
  return s;
}


/* httpd.serve{port=0, handler=function(req) return resp end} -> server | nil, err */
static int l_httpd_serve(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer port = galley_opt_integer(L, 1, "port", 0);
  if (port < 0 || port > 65535) return luaL_argerror(L, 1, "port must be 0..65535");
  if (lua_getfield(L, 1, "handler") != LUA_TFUNCTION)                 /* [opts, handler] */
    return luaL_argerror(L, 1, "field 'handler' must be a function");

  Server *s = lua_newuserdatauv(L, sizeof *s, 0);                     /* [opts, handler, ud] */
  s->ctx = NULL;
  luaL_setmetatable(L, SERVER_MT);
  lua_State *anchor = lua_newthread(L);                               /* [opts, handler, ud, anchor] */
  int anchor_ref = luaL_ref(L, LUA_REGISTRYINDEX);                    /* [opts, handler, ud] */
  lua_pushvalue(L, 2);
  int handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  struct server_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    luaL_unref(L, LUA_REGISTRYINDEX, anchor_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, handler_ref);
    return galley_fail(L, "HTTPD_START", "out of memory");
  }
  /* From here on nothing raises until ctx is owned by the userdata or freed. */
  ctx->anchor = anchor;
  ctx->anchor_ref = anchor_ref;
  ctx->handler_ref = handler_ref;
  ctx->owner = pthread_self();
  atomic_init(&ctx->stopping, 0);
  atomic_init(&ctx->finalizing, 0);
  galley_gil_enable();  /* this thread holds it from now on; waits elsewhere release it */
  char code[32], msg[256];
  ctx->srv = galley_httpd_start((int)port, on_request, ctx, code, sizeof code, msg, sizeof msg);
  if (!ctx->srv) {
    free(ctx);
    luaL_unref(L, LUA_REGISTRYINDEX, anchor_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, handler_ref);
    return galley_fail(L, code, "%s", msg);
  }
  s->ctx = ctx;
  return 1;
}


/* server:port() -> integer */
static int l_server_port(lua_State *L) {
  Server *s = check_server(L);
  lua_pushinteger(L, galley_httpd_port(s->ctx->srv));
  return 1;
}


/* server:stop()   waits for running handlers; only from the thread that called serve() */
static int l_server_stop(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->ctx && !pthread_equal(s->ctx->owner, pthread_self()))
    return galley_raise(L, "HTTPD_MISUSE", "server:stop() called from a request handler");
  server_close(L, s);
  return 0;
}


/* __gc/__close: stop if still running. On another thread (a collection that happened to run
 * inside a request) it cannot wait for itself, so it only refuses new work. */
static int l_server_gc(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (!s->ctx) return 0;
  if (!pthread_equal(s->ctx->owner, pthread_self())) {
    atomic_store(&s->ctx->stopping, 1);
    return 0;
  }
  atomic_store(&s->ctx->finalizing, 1);
  server_close(L, s);
  return 0;
}


/* tostring(server) -> "galley.httpd.Server (127.0.0.1:PORT)" | "... (stopped)" */
static int l_server_tostring(lua_State *L) {
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->ctx) lua_pushfstring(L, "%s (127.0.0.1:%d)", SERVER_MT, galley_httpd_port(s->ctx->srv));
  else lua_pushfstring(L, "%s (stopped)", SERVER_MT);
  return 1;
}


static const luaL_Reg server_methods[] = {
  { "port", l_server_port },
  { "stop", l_server_stop },
  { NULL,   NULL          }
};

static const luaL_Reg server_meta[] = {
  { "__gc",       l_server_gc       },
  { "__close",    l_server_gc       },
  { "__tostring", l_server_tostring },
  { "__index",    NULL              },
  { NULL,         NULL              }
};

static const luaL_Reg httpd_funcs[] = {
  { "serve", l_httpd_serve },
  { NULL,    NULL          }
};

int luaopen_galley_core_httpd(lua_State *L) {
  luaL_newmetatable(L, SERVER_MT);                                    /* [mt] */
  luaL_setfuncs(L, server_meta, 0);
  luaL_newlib(L, server_methods);                                     /* [mt, methods] */
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, httpd_funcs);
  return 1;
}
