/* galley.core.morph: the Morph Cloud API transport (src/core/morph.c) seen from Lua. Policy
 * (request tokens, retries, error bodies, readiness polling) lives in lua/galley/morph_client.lua.
 *   morph.new{api_key=?, base_url=?, connect_timeout_ms=?, timeout_ms=?, insecure=?}
 *     -> client | nil, err (AUTHENTICATION_ERROR without a key, VALIDATION_ERROR bad base URL)
 *   morph.endpoints          name -> {name, method, path, idempotent, body, resource, stamp, sse}
 *   morph.request_token()    -> 32 hex characters (libsodium's CSPRNG)
 *   morph.parse_retry_after(value) -> ms | nil   (delta-seconds or an HTTP date)
 *   morph.sse()              -> parser; parser:feed(chunk) -> {data payload, ...};
 *                               parser:flush() -> {last payload without a newline}
 *   client:call(name, {<path params>, query=?, body=?(table|JSON string), timeout_ms=?})
 *     -> {status, headers, body, http_version, reused, ms} | nil, err (HTTP_CONNECT, HTTP_TIMEOUT,
 *        HTTP_NETWORK, HTTP_TLS with err.sent; or the wait's cancellation error). An SSE endpoint
 *        returns a stream (galley.core.http's: read/result/status/close) instead.
 *   client:path(name, args)  -> the path (+ query) call would request, after the base URL
 *   client:redact(s)         -> s with the API key masked
 * A call waits on the event loop (galley_await): inside a galley.task it yields. Creating calls
 * are never resent by libcurl on its own (no_resend).
 *
 * Memory rule: strings handed to C are anchored in an `anchor` table on the stack; the transfer
 * and the SSE line buffer live in userdata with __gc, so a Lua error never leaks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bind.h"
#include "l_http.h"
#include "morph.h"

#define CLIENT_MT   "galley.morph.Client"
#define SSE_MT      "galley.morph.SSE"
#define CJSON_KEY   "galley.morph.cjson"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_TIMEOUT_MS         120000

typedef struct {
  galley_morph_client *c;   /* NULL once closed */
} l_client;


static l_client *check_client(lua_State *L, int idx) {
  l_client *cl = luaL_checkudata(L, idx, CLIENT_MT);
  if (!cl->c) luaL_argerror(L, idx, "client is closed");
  return cl;
}


/* Pushes cjson.<name>. */
static void push_cjson(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, CJSON_KEY);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}


/* Stores a string in the anchor table and returns the pointer (valid while anchored). */
static const char *anchor(lua_State *L, int anchors) {
  const char *s = lua_tostring(L, -1);
  lua_rawseti(L, anchors, (lua_Integer)lua_rawlen(L, anchors) + 1);
  return s;
}


/* Pushes a string form of the value at idx (string, number, boolean) or raises. */
static void push_scalar(lua_State *L, int idx, const char *what) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      lua_pushvalue(L, idx);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
      else lua_pushfstring(L, "%f", lua_tonumber(L, idx));
      break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
      break;
    default:
      luaL_error(L, "%s must be a string, number or boolean (got %s)", what, luaL_typename(L, idx));
  }
}


static int kv_compare(const void *a, const void *b) {
  return strcmp(((const galley_morph_kv *)a)->key, ((const galley_morph_kv *)b)->key);
}


/* Collects path parameters named in the template from args. Pushes the kv array userdata. */
static galley_morph_kv *collect_params(lua_State *L, const char *tmpl, int args, int anchors, size_t *n) {
  size_t count = 0;
  for (const char *p = strchr(tmpl, '{'); p; p = strchr(p + 1, '{')) count++;
  galley_morph_kv *kv = lua_newuserdatauv(L, (count ? count : 1) * sizeof *kv, 0);
  size_t i = 0;
  for (const char *p = strchr(tmpl, '{'); p; p = strchr(p + 1, '{')) {
    const char *end = strchr(p, '}');
    if (!end) break;
    lua_pushlstring(L, p + 1, (size_t)(end - p - 1));
    kv[i].key = anchor(L, anchors);
    lua_getfield(L, args, kv[i].key);
    if (lua_isnil(L, -1)) luaL_error(L, "missing path parameter '%s'", kv[i].key);
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "path parameter '%s' must be a string", kv[i].key);
    push_scalar(L, -1, "a path parameter");
    if (lua_rawlen(L, -1) == 0) luaL_error(L, "path parameter '%s' is empty", kv[i].key);
    kv[i].value = anchor(L, anchors);
    lua_pop(L, 1);
    i++;
  }
  *n = i;
  return kv;
}


/* Flattens args.query ({k=v, metadata={k=v}}) into sorted key=value pairs; metadata becomes
 * metadata[k]=v. Pushes the kv array userdata. */
static galley_morph_kv *collect_query(lua_State *L, int args, int anchors, size_t *n) {
  lua_getfield(L, args, "query");
  int q = lua_gettop(L);
  size_t count = 0;
  if (!lua_isnil(L, q)) {
    luaL_argcheck(L, lua_istable(L, q), 2, "query must be a table");
    lua_pushnil(L);
    while (lua_next(L, q)) {
      if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "query keys must be strings");
      if (strcmp(lua_tostring(L, -2), "metadata") == 0 && lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
          if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "metadata keys must be strings");
          lua_pop(L, 1);
          count++;
        }
      } else {
        count++;
      }
      lua_pop(L, 1);
    }
  }
  galley_morph_kv *kv = lua_newuserdatauv(L, (count ? count : 1) * sizeof *kv, 0);
  size_t i = 0;
  if (count) {
    lua_pushnil(L);
    while (lua_next(L, q)) {  // [.., q, kv, k, v]
      const char *k = lua_tostring(L, -2);
      if (strcmp(k, "metadata") == 0 && lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {  // [.., k, v, mk, mv]
          lua_pushfstring(L, "metadata[%s]", lua_tostring(L, -2));
          kv[i].key = anchor(L, anchors);
          push_scalar(L, -1, "a metadata filter value");
          kv[i].value = anchor(L, anchors);
          i++;
          lua_pop(L, 1);
        }
      } else {
        lua_pushvalue(L, -2);
        kv[i].key = anchor(L, anchors);
        push_scalar(L, -1, "a query value");
        kv[i].value = anchor(L, anchors);
        i++;
      }
      lua_pop(L, 1);
    }
  }
  qsort(kv, i, sizeof *kv, kv_compare);
  lua_remove(L, q);
  *n = i;
  return kv;
}


static const galley_morph_endpoint *check_endpoint(lua_State *L, int idx) {
  const char *name = luaL_checkstring(L, idx);
  const galley_morph_endpoint *ep = galley_morph_endpoint_find(name);
  if (!ep) luaL_argerror(L, idx, lua_pushfstring(L, "unknown Morph endpoint '%s'", name));
  return ep;
}


/* Pushes the path (+ query) of endpoint ep for the args table at `args`; anchors in `anchors`. */
static const char *push_path(lua_State *L, const galley_morph_endpoint *ep, int args, int anchors) {
  size_t nparams, nquery;
  galley_morph_kv *params = collect_params(L, ep->path, args, anchors, &nparams);  // [.., kv]
  galley_morph_kv *query = collect_query(L, args, anchors, &nquery);              // [.., kv, kv]
  const char *missing = NULL;
  size_t missing_len = 0;
  size_t plen = galley_morph_build_path(ep->path, params, nparams, query, nquery, NULL, 0, &missing, &missing_len);
  if (plen == (size_t)-1) luaL_error(L, "missing path parameter '%s'", lua_pushlstring(L, missing, missing_len));
  luaL_Buffer pb;
  char *pbuf = luaL_buffinitsize(L, &pb, plen + 1);
  galley_morph_build_path(ep->path, params, nparams, query, nquery, pbuf, plen + 1, NULL, NULL);
  luaL_pushresultsize(&pb, plen);  // [.., kv, kv, path]
  lua_replace(L, -3);
  lua_pop(L, 1);                   // [.., path]
  return lua_tostring(L, -1);
}


/* client:path(name, args?) -> string */
static int l_client_path(lua_State *L) {
  check_client(L, 1);
  const galley_morph_endpoint *ep = check_endpoint(L, 2);
  if (lua_isnoneornil(L, 3)) {
    lua_settop(L, 2);
    lua_newtable(L);
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_newtable(L);  // [client, name, args, anchors]
  push_path(L, ep, 3, 4);
  return 1;
}


/* client:call(name, args?) -> resp | stream | nil, err */
static int l_client_call(lua_State *L) {
  l_client *cl = check_client(L, 1);
  const galley_morph_endpoint *ep = check_endpoint(L, 2);
  if (lua_isnoneornil(L, 3)) {
    lua_settop(L, 2);
    lua_newtable(L);
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  lua_newtable(L);  // [client, name, args, anchors]
  int anchors = 4;
  const char *path = push_path(L, ep, 3, anchors);
  anchor(L, anchors);
  lua_Integer timeout_ms = galley_opt_integer(L, 3, "timeout_ms", 0);

  lua_getfield(L, 3, "body");
  const char *json = NULL;
  size_t json_len = 0;
  if (lua_type(L, -1) == LUA_TSTRING) {
    json = lua_tolstring(L, -1, &json_len);
    anchor(L, anchors);
  } else if (lua_istable(L, -1)) {
    push_cjson(L, "encode");
    lua_insert(L, -2);
    lua_call(L, 1, 1);  /* misuse (functions, sparse arrays) raises here, before any C work */
    json = lua_tolstring(L, -1, &json_len);
    anchor(L, anchors);
  } else if (!lua_isnil(L, -1)) {
    luaL_error(L, "body must be a table or a JSON string");
  } else {
    lua_pop(L, 1);
  }
  /* The prepared request is big (the URL buffer): keep it in a userdata, not on the C stack
   * across the wait. */
  galley_morph_prepared *p = lua_newuserdatauv(L, sizeof *p, 0);
  lua_rawseti(L, anchors, (lua_Integer)lua_rawlen(L, anchors) + 1);
  if (galley_morph_prepare(cl->c, ep, path, json, json_len, (long)timeout_ms, p) != 0)
    return galley_fail(L, "VALIDATION_ERROR", "%s: URL too long", ep->name);
  return galley_http_request_lua(L, &p->req);
}


/* client:redact(s) -> s with every occurrence of the API key masked */
static int l_client_redact(lua_State *L) {
  l_client *cl = check_client(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  luaL_Buffer b;
  char *copy = luaL_buffinitsize(L, &b, len);
  memcpy(copy, s, len);
  galley_morph_redact(cl->c, copy, len);
  luaL_pushresultsize(&b, len);
  return 1;
}


/* --- server-sent events ------------------------------------------------------------------------ */

static int sse_gc(lua_State *L) {
  galley_sse_free(luaL_checkudata(L, 1, SSE_MT));
  return 0;
}


/* Collects one payload into the list at the top of the stack (no error can escape: the
 * caller protects itself by owning the buffer through the userdata). */
static int sse_collect(void *ud, const char *data, size_t len) {
  lua_State *L = ud;
  lua_pushlstring(L, data, len);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}


/* parser:feed(chunk) -> {payload, ...}   ("data:" lines; other lines are ignored) */
static int l_sse_feed(lua_State *L) {
  galley_sse *p = luaL_checkudata(L, 1, SSE_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_newtable(L);
  if (galley_sse_feed(p, data, len, sse_collect, L) < 0) return luaL_error(L, "out of memory");
  return 1;
}


/* parser:flush() -> {payload} | {}   (a last line that had no newline) */
static int l_sse_flush(lua_State *L) {
  galley_sse *p = luaL_checkudata(L, 1, SSE_MT);
  lua_newtable(L);
  galley_sse_flush(p, sse_collect, L);
  return 1;
}


/* morph.sse() -> parser */
static int l_morph_sse(lua_State *L) {
  galley_sse *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, SSE_MT);
  return 1;
}


/* morph.request_token() -> string */
static int l_morph_request_token(lua_State *L) {
  char token[33];
  galley_morph_request_token(token);
  lua_pushstring(L, token);
  return 1;
}


/* morph.parse_retry_after(value) -> ms | nil */
static int l_morph_parse_retry_after(lua_State *L) {
  const char *v = luaL_optstring(L, 1, NULL);
  long ms = galley_morph_parse_retry_after(v, (int64_t)time(NULL));
  if (ms < 0) lua_pushnil(L);
  else lua_pushinteger(L, ms);
  return 1;
}


/* client:base_url() -> string */
static int l_client_base_url(lua_State *L) {
  l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
  if (!cl->c) luaL_argerror(L, 1, "client is closed");
  lua_pushstring(L, galley_morph_client_base_url(cl->c));
  return 1;
}


/* client:close()   (also __gc and __close; safe twice; transfers in flight keep their copies) */
static int l_client_close(lua_State *L) {
  l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
  galley_morph_client_free(cl->c);
  cl->c = NULL;
  return 0;
}


/* tostring(client) -> "galley.morph.Client (<base url>)"  (never the key) */
static int l_client_tostring(lua_State *L) {
  l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
  if (cl->c) lua_pushfstring(L, "galley.morph.Client (%s)", galley_morph_client_base_url(cl->c));
  else lua_pushliteral(L, "galley.morph.Client (closed)");
  return 1;
}


static const char *env_or(const char *name, const char *def) {
  const char *v = getenv(name);
  return v && *v ? v : def;
}


/* morph.new(opts?) -> client | nil, err */
static int l_morph_new(lua_State *L) {
  lua_settop(L, 1);
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  galley_morph_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.api_key = galley_opt_string(L, 1, "api_key", env_or("MORPH_API_KEY", NULL), NULL);
  cfg.base_url = galley_opt_string(L, 1, "base_url", env_or("MORPH_BASE_URL", GALLEY_MORPH_DEFAULT_BASE_URL), NULL);
  cfg.connect_timeout_ms = (long)galley_opt_integer(L, 1, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS);
  cfg.timeout_ms = (long)galley_opt_integer(L, 1, "timeout_ms", DEFAULT_TIMEOUT_MS);
  cfg.insecure = galley_opt_boolean(L, 1, "insecure", false);

  l_client *cl = lua_newuserdatauv(L, sizeof *cl, 0);  // closed until the core client exists
  cl->c = NULL;
  luaL_setmetatable(L, CLIENT_MT);
  galley_morph_error e;
  cl->c = galley_morph_client_new(&cfg, &e);
  if (!cl->c) {
    galley_fail(L, e.code, "%s", e.message);
    galley_error_set_string(L, "operation", "morph.new");
    galley_error_set_string(L, "hint", strcmp(e.code, "AUTHENTICATION_ERROR") == 0
      ? "set MORPH_API_KEY in the environment, or pass api_key"
      : "base_url must be https:// (or http:// to a loopback address)");
    return 2;
  }
  if (cfg.insecure)
    fprintf(stderr, "galley: warning: Morph client created with insecure=true (%s)\n", galley_morph_client_base_url(cl->c));
  return 1;
}


/* Pushes morph.endpoints: name -> {name, method, path, idempotent, body, resource, stamp, sse}. */
static void push_endpoints(lua_State *L) {
  lua_createtable(L, 0, (int)galley_morph_nendpoints);
  for (size_t i = 0; i < galley_morph_nendpoints; i++) {
    const galley_morph_endpoint *ep = &galley_morph_endpoints[i];
    lua_createtable(L, 0, 8);
    lua_pushstring(L, ep->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, ep->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, ep->path);
    lua_setfield(L, -2, "path");
    lua_pushboolean(L, ep->idempotent);
    lua_setfield(L, -2, "idempotent");
    lua_pushboolean(L, ep->body);
    lua_setfield(L, -2, "body");
    galley_error_set_string(L, "resource", ep->resource);
    galley_error_set_string(L, "stamp", ep->stamp);
    lua_pushboolean(L, ep->sse);
    lua_setfield(L, -2, "sse");
    lua_setfield(L, -2, ep->name);
  }
}


static const luaL_Reg client_methods[] = {
  { "call",     l_client_call     },
  { "path",     l_client_path     },
  { "redact",   l_client_redact   },
  { "base_url", l_client_base_url },
  { "close",    l_client_close    },
  { NULL,       NULL              }
};

static const luaL_Reg client_meta[] = {
  { "__gc",       l_client_close    },
  { "__close",    l_client_close    },
  { "__tostring", l_client_tostring },
  { "__index",    NULL              },
  { NULL,         NULL              }
};

static const luaL_Reg sse_methods[] = {
  { "feed",  l_sse_feed  },
  { "flush", l_sse_flush },
  { NULL,    NULL        }
};

static const luaL_Reg morph_funcs[] = {
  { "new",               l_morph_new               },
  { "sse",               l_morph_sse               },
  { "request_token",     l_morph_request_token     },
  { "parse_retry_after", l_morph_parse_retry_after },
  { NULL,                NULL                      }
};

int luaopen_galley_core_morph(lua_State *L) {
  /* cjson (preloaded) encodes request bodies. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, CJSON_KEY);

  luaL_newmetatable(L, CLIENT_MT);  // [mt]
  luaL_setfuncs(L, client_meta, 0);
  luaL_newlib(L, client_methods);   // [mt, methods]
  lua_setfield(L, -2, "__index");   // [mt]
  lua_pop(L, 1);
  luaL_newmetatable(L, SSE_MT);
  lua_pushcfunction(L, sse_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, sse_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  luaL_newlib(L, morph_funcs);
  push_endpoints(L);
  lua_setfield(L, -2, "endpoints");
  lua_pushstring(L, GALLEY_MORPH_DEFAULT_BASE_URL);
  lua_setfield(L, -2, "default_base_url");
  return 1;
}
