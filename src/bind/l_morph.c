/* galley.core.morph: the Morph Cloud API client (src/core/morph.c) seen from Lua.
 *   morph.new{api_key=?, base_url=?, connect_timeout_ms=?, timeout_ms=?, retry=?{max_attempts,
 *     base_delay_ms, max_delay_ms, max_elapsed_ms}, log=?fn, insecure=?} -> client | nil, err
 *   morph.endpoints                  name -> {name, method, path, idempotent, body, resource, stamp, sse}
 *   client:call(name, {<path params>, query=?, body=?, timeout_ms=?, on_stdout=?, on_stderr=?})
 *   client:<group>_<action>(<path params...>, [body,] [query])    e.g. client:instances_get(id)
 *   client:instances_exec(id, argv, {on_stdout=?, on_stderr=?, timeout_ms=?})
 *   client:wait_ready(id, {timeout_ms=?})
 * Results are decoded JSON tables (a 204 gives true); failures are nil, err with err.code one of
 * VALIDATION_ERROR, AUTHENTICATION_ERROR, NOT_FOUND, RATE_LIMIT, SERVER_ERROR, NETWORK_ERROR,
 * TIMEOUT, PROTOCOL_ERROR, INTERRUPTED, and operation, resource, status, attempt, max_attempts,
 * hint, retry_after (s), request_token (start/boot/branch) besides.
 *
 * Stream callbacks (on_stdout/on_stderr, the log hook) run in the middle of a transfer, from
 * curl's write path: they are called under lua_pcall and must not use this client (it is busy;
 * doing so raises) nor yield. An error in on_stdout/on_stderr aborts the transfer and is raised
 * again once every C resource is released. Errors in the log hook are ignored.
 *
 * Memory rule: C allocations (responses, the SSE line buffer) live in userdata with __gc, so a
 * Lua error at any point leaks nothing; strings handed to C are anchored in an `anchor` table. */
#include <stdlib.h>
#include <string.h>
#include "bind.h"
#include "l_http.h"
#include "morph.h"
#include "sig.h"

#define CLIENT_MT   "galley.morph.Client"
#define SSE_MT      "galley.morph.Stream"
#define CJSON_KEY   "galley.morph.cjson"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_TIMEOUT_MS         120000
#define DEFAULT_WAIT_READY_MS      300000

typedef struct {
  galley_morph_client *c;   /* NULL once closed */
  bool busy;                /* a call is in flight (stream callbacks must not re-enter) */
} l_client;

typedef struct {
  lua_State *L;
  int client;               /* absolute index of the client userdata */
} log_ctx;

typedef struct {
  galley_sse sse;
  lua_State *L;
  int state;                /* absolute index of the stream state table */
  const char *payload;      /* the event being dispatched */
  size_t payload_len;
  bool stopped;             /* a callback failed: its error is in state.error */
} sse_ctx;


/* --- small helpers ------------------------------------------------------------------------ */

static l_client *check_client(lua_State *L, int idx) {
  l_client *cl = luaL_checkudata(L, idx, CLIENT_MT);
  if (!cl->c) luaL_argerror(L, idx, "client is closed");
  if (cl->busy) luaL_error(L, "Morph client is busy (called from a stream callback or log hook?)");
  return cl;
}


/* Pushes cjson.<name>. */
static void push_cjson(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, CJSON_KEY);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}


static int decode_json(lua_State *L) {
  push_cjson(L, "decode");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}


/* Pushes the decoded value of the string at idx, or nothing and returns false. */
static bool try_decode(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, decode_json);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return false;
  }
  return true;
}


/* Stores a string in the anchor table and returns the pointer (valid while anchored). */
static const char *anchor(lua_State *L, int anchors) {
  const char *s = lua_tostring(L, -1);
  lua_rawseti(L, anchors, (lua_Integer)lua_rawlen(L, anchors) + 1);
  return s;
}


static int gc_sse(lua_State *L) {
  galley_sse_free(&((sse_ctx *)luaL_checkudata(L, 1, SSE_MT))->sse);
  return 0;
}


static sse_ctx *push_sse_box(lua_State *L) {
  sse_ctx *x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  if (luaL_newmetatable(L, SSE_MT)) {
    lua_pushcfunction(L, gc_sse);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return x;
}


/* --- the log hook ------------------------------------------------------------------------- */

/* (client, record) -> calls the client's log function with {method, path, status, ms, attempt} */
static int log_trampoline(lua_State *L) {
  const galley_morph_log_record *rec = lua_touserdata(L, 2);
  if (lua_getiuservalue(L, 1, 1) != LUA_TFUNCTION) return 0;
  lua_createtable(L, 0, 6);
  lua_pushstring(L, rec->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, rec->path);
  lua_setfield(L, -2, "path");
  lua_pushinteger(L, rec->status);
  lua_setfield(L, -2, "status");
  lua_pushnumber(L, rec->ms);
  lua_setfield(L, -2, "ms");
  lua_pushinteger(L, rec->attempt);
  lua_setfield(L, -2, "attempt");
  if (rec->error) {
    lua_pushstring(L, rec->error);
    lua_setfield(L, -2, "error");
  }
  lua_call(L, 1, 0);
  return 0;
}


/* Runs between attempts (GIL held). Only non-allocating pushes happen outside the pcall. */
static void on_log(void *ud, const galley_morph_log_record *rec) {
  log_ctx *x = ud;
  lua_State *L = x->L;
  lua_pushcfunction(L, log_trampoline);
  lua_pushvalue(L, x->client);
  lua_pushlightuserdata(L, (void *)rec);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
}


/* --- server-sent exec events ---------------------------------------------------------------- */

/* Appends s (at the top) to state[field] (a chunk list) and pops it. */
static void append_chunk(lua_State *L, int state, const char *field) {
  lua_getfield(L, state, field);
  lua_insert(L, -2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
}


/* (state, ctx): handles one "data:" payload: {"type": "stdout"|"stderr"|"exit_code", "content"}.
 * Malformed events and unknown types are skipped, as the official SDKs do. */
static int sse_dispatch(lua_State *L) {
  sse_ctx *x = lua_touserdata(L, 2);
  lua_pushlstring(L, x->payload, x->payload_len);  // [state, ctx, payload]
  if (strcmp(lua_tostring(L, 3), "[DONE]") == 0) return 0;
  if (!try_decode(L, 3) || !lua_istable(L, -1)) return 0;  // [state, ctx, payload, ev]
  lua_getfield(L, 4, "type");
  lua_getfield(L, 4, "content");                   // [..., ev, type, content]
  const char *type = lua_tostring(L, 5);
  if (!type) return 0;
  if (strcmp(type, "exit_code") == 0) {
    lua_Integer code;
    if (lua_type(L, 6) == LUA_TNUMBER) {
      code = (lua_Integer)lua_tonumber(L, 6);
    } else {
      lua_pushcfunction(L, decode_json);
      lua_pushvalue(L, 6);
      if (lua_type(L, 6) != LUA_TSTRING || lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isnumber(L, -1)) return 0;
      code = (lua_Integer)lua_tonumber(L, -1);
    }
    lua_pushinteger(L, code);
    lua_setfield(L, 1, "exit_code");
    return 0;
  }
  bool out = strcmp(type, "stdout") == 0;
  if (!out && strcmp(type, "stderr") != 0) return 0;
  if (lua_type(L, 6) != LUA_TSTRING) return 0;
  lua_pushvalue(L, 6);
  append_chunk(L, 1, out ? "out" : "err");
  if (lua_getfield(L, 1, out ? "on_stdout" : "on_stderr") == LUA_TNIL) return 0;
  lua_pushvalue(L, 6);
  lua_call(L, 1, 0);  /* an error here is caught by sse_event's pcall */
  return 0;
}


static int sse_event(void *ud, const char *data, size_t len) {
  sse_ctx *x = ud;
  lua_State *L = x->L;
  x->payload = data;
  x->payload_len = len;
  lua_pushcfunction(L, sse_dispatch);
  lua_pushvalue(L, x->state);
  lua_pushlightuserdata(L, x);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    /* state.error already exists (false), so this assignment does not grow the table. */
    lua_setfield(L, x->state, "error");
    x->stopped = true;
    return 1;
  }
  return 0;
}


/* http sink: runs inside curl_multi_perform (GIL held); non-zero aborts the transfer. */
static int sse_sink(void *ud, const char *data, size_t len) {
  sse_ctx *x = ud;
  return galley_sse_feed(&x->sse, data, len, sse_event, x) != 0;
}


/* --- building a call -------------------------------------------------------------------------- */

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


/* Pushes a copy of the table at idx (or a new table when it is not one) with
 * galley_request_token = token added unless already present. */
static void push_stamped_map(lua_State *L, int idx, const char *token) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);
  if (lua_istable(L, idx)) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {  // [.., copy, k, v]
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  if (lua_getfield(L, -1, GALLEY_MORPH_TOKEN_KEY) == LUA_TNIL) {
    lua_pushstring(L, token);
    lua_setfield(L, -3, GALLEY_MORPH_TOKEN_KEY);
  }
  lua_pop(L, 1);
}


/* Pushes the token a caller already put in body[field] (or its first element), else a fresh one. */
static void push_token(lua_State *L, int body, const char *field) {
  int top = lua_gettop(L);
  if (lua_istable(L, body) && lua_getfield(L, body, field) == LUA_TTABLE) {
    if (lua_rawlen(L, -1) > 0) lua_rawgeti(L, -1, 1);
    else lua_pushvalue(L, -1);
    if (lua_istable(L, -1) && lua_getfield(L, -1, GALLEY_MORPH_TOKEN_KEY) == LUA_TSTRING) {
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return;
    }
  }
  lua_settop(L, top);
  char fresh[33];
  galley_morph_request_token(fresh);
  lua_pushstring(L, fresh);
}


/* Replaces the body at `body` with a copy whose body[field] carries the request token (every
 * element of a list, as branch's per-clone instance_metadata). Pushes the token used. */
static void stamp_body(lua_State *L, int body, const char *field) {
  if (!lua_isnil(L, body) && !lua_istable(L, body)) luaL_error(L, "body must be a table");
  push_token(L, body, field);
  const char *token = lua_tostring(L, -1);
  lua_newtable(L);  // [.., token, copy]
  int copy = lua_gettop(L);
  if (lua_istable(L, body)) {
    lua_pushnil(L);
    while (lua_next(L, body)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, copy);
    }
  }
  lua_getfield(L, copy, field);  // [.., token, copy, md]
  int md = lua_gettop(L);
  if (lua_istable(L, md) && lua_rawlen(L, md) > 0) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, md);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, md, i);
      push_stamped_map(L, -1, token);
      lua_rawseti(L, -3, i);
      lua_pop(L, 1);
    }
  } else {
    push_stamped_map(L, md, token);
  }
  lua_setfield(L, copy, field);  // [.., token, copy, md]
  lua_pop(L, 1);
  lua_replace(L, body);          // [.., token]
}


/* --- errors ----------------------------------------------------------------------------------- */

/* Pushes the "a.b.c" form of a FastAPI loc list at idx ("?" when unusable). */
static void push_loc(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  int parts = 0;
  if (lua_istable(L, idx)) {
    lua_Integer m = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer j = 1; j <= m; j++) {
      lua_rawgeti(L, idx, j);
      if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        continue;
      }
      luaL_tolstring(L, -1, NULL);
      lua_remove(L, -2);
      if (parts > 0) {
        lua_pushliteral(L, ".");
        lua_insert(L, -2);
        parts++;
      }
      parts++;
    }
  }
  if (parts == 0) lua_pushliteral(L, "?");
  else lua_concat(L, parts);
}


/* Pushes what FastAPI's `detail` adds to the message (": text" or ": field: msg; ..."), maybe
 * "", and sets err.details (the decoded detail) and err.fields ({"body.port", ...}). */
static void push_detail(lua_State *L, int err, const galley_http_response *r) {
  lua_newtable(L);
  int parts = lua_gettop(L);
  lua_Integer np = 0;
  if (r && r->body && r->body_len > 0) {
    lua_pushlstring(L, r->body, r->body_len);
    if (try_decode(L, -1) && lua_istable(L, -1)) {
      lua_getfield(L, -1, "detail");  // [parts, body, decoded, detail]
      int detail = lua_gettop(L);
      if (lua_type(L, detail) == LUA_TSTRING) {
        lua_pushliteral(L, ": ");
        lua_rawseti(L, parts, ++np);
        lua_pushvalue(L, detail);
        lua_rawseti(L, parts, ++np);
      } else if (lua_istable(L, detail)) {
        lua_newtable(L);
        int fields = lua_gettop(L);
        lua_Integer n = (lua_Integer)lua_rawlen(L, detail), nf = 0;
        for (lua_Integer i = 1; i <= n; i++) {
          if (lua_rawgeti(L, detail, i) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
          }
          int item = lua_gettop(L);
          lua_getfield(L, item, "loc");
          push_loc(L, -1);  // [.., item, loc, field]
          lua_pushvalue(L, -1);
          lua_rawseti(L, fields, ++nf);
          lua_pushstring(L, nf == 1 ? ": " : "; ");
          lua_rawseti(L, parts, ++np);
          lua_rawseti(L, parts, ++np);
          if (lua_getfield(L, item, "msg") == LUA_TSTRING) {
            lua_pushliteral(L, ": ");
            lua_rawseti(L, parts, ++np);
            lua_rawseti(L, parts, ++np);
          }
          lua_settop(L, fields);
        }
        lua_setfield(L, err, "fields");
      }
      if (!lua_isnil(L, detail)) {
        lua_pushvalue(L, detail);
        lua_setfield(L, err, "details");
      }
    }
    lua_settop(L, parts);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (lua_Integer i = 1; i <= np; i++) {
    lua_rawgeti(L, parts, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);  // [parts, text]
  lua_remove(L, parts);
}


/* Pushes nil, err for a failed call. resource/token/r may be NULL. */
static int push_call_error(lua_State *L, const galley_morph_client *c, const char *operation,
                           const char *code, const char *message, long status, int attempt,
                           int max_attempts, long retry_after_ms, const char *resource,
                           const char *token, const galley_http_response *r) {
  lua_pushnil(L);
  galley_push_error(L, code, "%s", message);
  int err = lua_gettop(L);
  lua_pushstring(L, message);
  push_detail(L, err, r);
  lua_concat(L, 2);
  /* The server might echo the key: redact a private copy before the message becomes visible. */
  size_t len;
  const char *m = lua_tolstring(L, -1, &len);
  luaL_Buffer b;
  char *copy = luaL_buffinitsize(L, &b, len);
  memcpy(copy, m, len);
  galley_morph_redact(c, copy, len);
  luaL_pushresultsize(&b, len);  // [nil, err, raw, redacted]
  lua_setfield(L, err, "message");
  lua_settop(L, err);
  galley_error_set_string(L, "operation", operation);
  galley_error_set_string(L, "resource", resource);
  galley_error_set_string(L, "hint", galley_morph_hint(code));
  galley_error_set_string(L, "request_token", token);
  if (status) galley_error_set_integer(L, "status", status);
  if (attempt) galley_error_set_integer(L, "attempt", attempt);
  if (max_attempts) galley_error_set_integer(L, "max_attempts", max_attempts);
  if (retry_after_ms >= 0) {
    lua_pushnumber(L, (lua_Number)retry_after_ms / 1000.0);
    lua_setfield(L, err, "retry_after");
  }
  return 2;
}


/* --- one call ------------------------------------------------------------------------------- */

/* Performs endpoint ep with the arguments table at `args` on the client at `client`.
 * Pushes the result (1 value) or nil, err (2 values) and returns the count. */
static int do_call(lua_State *L, int client, const galley_morph_endpoint *ep, int args) {
  l_client *cl = check_client(L, client);
  luaL_checktype(L, args, LUA_TTABLE);
  lua_newtable(L);
  int anchors = lua_gettop(L);

  size_t nparams, nquery;
  galley_morph_kv *params = collect_params(L, ep->path, args, anchors, &nparams);
  galley_morph_kv *query = collect_query(L, args, anchors, &nquery);
  lua_Integer timeout_ms = galley_opt_integer(L, args, "timeout_ms", 0);

  /* err.resource: "<kind>:<first path parameter>" */
  const char *resource = NULL;
  if (ep->resource && nparams > 0) {
    lua_pushfstring(L, "%s:%s", ep->resource, params[0].value);
    resource = anchor(L, anchors);
  }

  /* Body: stamped with a request token where the call creates instances, then JSON. */
  lua_getfield(L, args, "body");
  int body = lua_gettop(L);
  const char *token = NULL;
  if (ep->stamp) {
    stamp_body(L, body, ep->stamp);  // [.., body', token]
    token = anchor(L, anchors);
  }
  const char *json = NULL;
  size_t json_len = 0;
  if (lua_type(L, body) == LUA_TSTRING) {
    json = lua_tolstring(L, body, &json_len);
  } else if (lua_istable(L, body)) {
    push_cjson(L, "encode");
    lua_pushvalue(L, body);
    lua_call(L, 1, 1);  /* misuse (functions, sparse arrays) raises here, before any C work */
    json = lua_tolstring(L, -1, &json_len);
    anchor(L, anchors);
  } else if (!lua_isnil(L, body)) {
    luaL_error(L, "body must be a table or a JSON string");
  }

  /* Stream state for SSE endpoints: {on_stdout, on_stderr, out={}, err={}, error=false}. */
  sse_ctx *sx = NULL;
  int state = 0;
  if (ep->sse) {
    lua_createtable(L, 0, 6);
    state = lua_gettop(L);
    lua_getfield(L, args, "on_stdout");
    if (!lua_isnil(L, -1)) luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_setfield(L, state, "on_stdout");
    lua_getfield(L, args, "on_stderr");
    if (!lua_isnil(L, -1)) luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_setfield(L, state, "on_stderr");
    lua_newtable(L);
    lua_setfield(L, state, "out");
    lua_newtable(L);
    lua_setfield(L, state, "err");
    lua_pushboolean(L, 0);
    lua_setfield(L, state, "error");
    sx = push_sse_box(L);
    sx->L = L;
    sx->state = state;
  }

  /* Path + query, built into a Lua string. */
  const char *missing = NULL;
  size_t missing_len = 0;
  size_t plen = galley_morph_build_path(ep->path, params, nparams, query, nquery, NULL, 0, &missing, &missing_len);
  if (plen == (size_t)-1) luaL_error(L, "missing path parameter '%s'", lua_pushlstring(L, missing, missing_len));
  luaL_Buffer pb;
  char *pbuf = luaL_buffinitsize(L, &pb, plen + 1);
  galley_morph_build_path(ep->path, params, nparams, query, nquery, pbuf, plen + 1, NULL, NULL);
  luaL_pushresultsize(&pb, plen);
  const char *path = anchor(L, anchors);

  galley_http_response *r = galley_push_http_response_box(L);
  log_ctx lx = {L, lua_absindex(L, client)};
  galley_morph_call call = {ep, path, json, json_len, (long)timeout_ms,
                            sx ? sse_sink : NULL, sx, on_log, &lx};
  galley_morph_error e;
  /* Stream callbacks and the log hook push a few values without a check: reserve room now. */
  luaL_checkstack(L, 24, "Morph call");
  cl->busy = true;
  int rc = galley_morph_perform(cl->c, &call, r, &e);
  if (rc == 0 && sx && !sx->stopped) galley_sse_flush(&sx->sse, sse_event, sx);
  cl->busy = false;

  if (sx && sx->stopped) {
    /* A stream callback failed: every C resource is owned by a userdata, so raising is safe. */
    lua_getfield(L, state, "error");
    return lua_error(L);
  }
  if (rc != 0) {
    const char *code = e.code;
    if (strcmp(code, "HTTP_ABORTED") == 0) code = "NETWORK_ERROR";  /* out of memory in the sink */
    return push_call_error(L, cl->c, ep->name, code, e.message, e.status, e.attempt, e.max_attempts,
                           e.retry_after_ms, resource, token, e.status ? r : NULL);
  }

  long status = r->status;
  if (sx) {
    lua_getfield(L, state, "exit_code");
    if (lua_isnil(L, -1))
      return push_call_error(L, cl->c, ep->name, "PROTOCOL_ERROR", "exec stream ended without an exit code",
                             status, e.attempt, e.max_attempts, -1, resource, token, NULL);
    lua_createtable(L, 0, 3);
    lua_insert(L, -2);
    lua_setfield(L, -2, "exit_code");
    const char *names[2] = {"out", "err"};
    const char *fields[2] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
      lua_getfield(L, state, names[i]);
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      luaL_Buffer ob;
      luaL_buffinit(L, &ob);
      for (lua_Integer j = 1; j <= n; j++) {
        lua_rawgeti(L, -2 - 0, j);
        luaL_addvalue(&ob);
      }
      luaL_pushresult(&ob);
      lua_setfield(L, -3, fields[i]);
      lua_pop(L, 1);
    }
    return 1;
  }
  if (status == 204) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushlstring(L, r->body, r->body_len);
  galley_http_response_free(r);
  if (!try_decode(L, -1) || !lua_istable(L, -1))
    return push_call_error(L, cl->c, ep->name, "PROTOCOL_ERROR", "the response body is not the JSON object expected",
                           status, e.attempt, e.max_attempts, -1, resource, token, NULL);
  return 1;
}


/* --- Lua entry points ---------------------------------------------------------------------------- */

static const galley_morph_endpoint *check_endpoint(lua_State *L, int idx) {
  const char *name = luaL_checkstring(L, idx);
  const galley_morph_endpoint *ep = galley_morph_endpoint_find(name);
  if (!ep) luaL_argerror(L, idx, lua_pushfstring(L, "unknown Morph endpoint '%s'", name));
  return ep;
}


/* client:call(name, args?) -> result | nil, err */
static int l_client_call(lua_State *L) {
  check_client(L, 1);
  const galley_morph_endpoint *ep = check_endpoint(L, 2);
  if (lua_isnoneornil(L, 3)) {
    lua_settop(L, 2);
    lua_newtable(L);
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  return do_call(L, 1, ep, 3);
}


/* client:<group>_<action>(<path params...>, [body,] [query]) -> result | nil, err
 * (upvalue 1: the endpoint's index in the table) */
static int l_client_endpoint(lua_State *L) {
  const galley_morph_endpoint *ep = &galley_morph_endpoints[lua_tointeger(L, lua_upvalueindex(1))];
  check_client(L, 1);
  int top = lua_gettop(L);
  lua_newtable(L);
  int args = lua_gettop(L);
  int next = 2;
  for (const char *p = strchr(ep->path, '{'); p; p = strchr(p + 1, '{')) {
    const char *end = strchr(p, '}');
    if (!end) break;
    if (next > top || lua_isnil(L, next))
      luaL_argerror(L, next, lua_pushfstring(L, "%s expected", lua_pushlstring(L, p + 1, (size_t)(end - p - 1))));
    if (lua_type(L, next) != LUA_TSTRING) luaL_checktype(L, next, LUA_TSTRING);
    lua_pushlstring(L, p + 1, (size_t)(end - p - 1));
    lua_pushvalue(L, next++);
    lua_rawset(L, args);
  }
  if (ep->body) {
    if (next <= top && !lua_isnil(L, next)) {
      if (!lua_istable(L, next) && lua_type(L, next) != LUA_TSTRING) luaL_checktype(L, next, LUA_TTABLE);
      lua_pushvalue(L, next);
      lua_setfield(L, args, "body");
    }
    next++;
  }
  if (next <= top && !lua_isnil(L, next)) {
    luaL_checktype(L, next, LUA_TTABLE);
    lua_pushvalue(L, next);
    lua_setfield(L, args, "query");
  }
  return do_call(L, 1, ep, args);
}


/* client:instances_exec(id, argv, opts?) -> {exit_code, stdout, stderr} | nil, err
 * argv: a string (one shell line, as the SDKs send it) or a list of strings. With on_stdout or
 * on_stderr in opts, output streams over SSE as it arrives. opts.timeout_ms: default no limit. */
static int l_client_instances_exec(lua_State *L) {
  lua_settop(L, 4);
  check_client(L, 1);
  luaL_checktype(L, 2, LUA_TSTRING);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_newtable(L);  // command list
  int cmd = lua_gettop(L);
  if (lua_type(L, 3) == LUA_TSTRING) {
    lua_pushvalue(L, 3);
    lua_rawseti(L, cmd, 1);
  } else {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 3);
    luaL_argcheck(L, n > 0, 3, "argv must not be empty");
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 3, i) != LUA_TSTRING) luaL_argerror(L, 3, "argv must be a list of strings");
      lua_rawseti(L, cmd, i);
    }
  }
  bool stream = false;
  lua_createtable(L, 0, 6);
  int args = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_setfield(L, args, "instance_id");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, cmd);
  lua_setfield(L, -2, "command");
  lua_setfield(L, args, "body");
  const char *cbs[] = {"on_stdout", "on_stderr"};
  for (int i = 0; i < 2; i++) {
    if (lua_isnil(L, 4)) continue;
    if (lua_getfield(L, 4, cbs[i]) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    luaL_argcheck(L, lua_isfunction(L, -1), 4, "on_stdout/on_stderr must be functions");
    lua_setfield(L, args, cbs[i]);
    stream = true;
  }
  lua_Integer timeout = galley_opt_integer(L, 4, "timeout_ms", -1);
  lua_pushinteger(L, timeout);
  lua_setfield(L, args, "timeout_ms");
  const galley_morph_endpoint *ep = galley_morph_endpoint_find(stream ? "instances.exec_sse" : "instances.exec");
  int n = do_call(L, 1, ep, args);
  if (n == 1 && !stream && lua_istable(L, -1)) {
    lua_getfield(L, -1, "exit_code");
    bool ok = lua_isinteger(L, -1) || lua_isnumber(L, -1);
    lua_pop(L, 1);
    if (!ok) {
      l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
      lua_pushfstring(L, "instance:%s", lua_tostring(L, 2));
      const char *res = lua_tostring(L, -1);
      return push_call_error(L, cl->c, ep->name, "PROTOCOL_ERROR", "exec response has no exit_code", 200, 0, 0,
                             -1, res, NULL, NULL);
    }
  }
  return n;
}


/* client:wait_ready(id, {timeout_ms=?}) -> instance | nil, err
 * Polls GET /instance/{id} (0.25 s growing to 2 s, default limit 300 s). Status "error" gives
 * SERVER_ERROR, the limit TIMEOUT; both name the instance in err.resource. */
static int l_client_wait_ready(lua_State *L) {
  l_client *cl = check_client(L, 1);
  const char *id = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer limit = galley_opt_integer(L, 3, "timeout_ms", DEFAULT_WAIT_READY_MS);
  const galley_morph_endpoint *ep = galley_morph_endpoint_find("instances.get");
  lua_pushfstring(L, "instance:%s", id);
  int resource = lua_gettop(L);
  lua_createtable(L, 0, 1);
  int args = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_setfield(L, args, "instance_id");
  int64_t start = galley_now_ms();
  lua_Integer delay = 250;
  for (int polls = 1;; polls++) {
    lua_settop(L, args);
    if (do_call(L, 1, ep, args) == 2) {
      lua_pushliteral(L, "instances.wait_ready");
      lua_setfield(L, -2, "operation");
      return 2;
    }
    lua_getfield(L, -1, "status");
    const char *status = lua_tostring(L, -1);
    if (status && strcmp(status, "ready") == 0) {
      lua_pop(L, 1);
      return 1;
    }
    if (status && strcmp(status, "error") == 0) {
      push_call_error(L, cl->c, "instances.wait_ready", "SERVER_ERROR", "", 0, polls, 0, -1,
                      lua_tostring(L, resource), NULL, NULL);
      lua_pushfstring(L, "instance %s entered status 'error'", id);
      lua_setfield(L, -2, "message");
      lua_pushliteral(L, "the instance failed: stop it (instances_stop) and start another");
      lua_setfield(L, -2, "hint");
      lua_pushliteral(L, "error");
      lua_setfield(L, -2, "instance_status");
      return 2;
    }
    int64_t elapsed = galley_now_ms() - start;
    if (elapsed >= limit) {
      push_call_error(L, cl->c, "instances.wait_ready", "TIMEOUT", "", 0, polls, 0, -1,
                      lua_tostring(L, resource), NULL, NULL);
      lua_pushfstring(L, "instance %s not ready after %d ms (status '%s')", id, (int)limit,
                      status ? status : "?");
      lua_setfield(L, -2, "message");
      lua_pushliteral(L, "stop the instance (instances_stop) or wait longer (timeout_ms)");
      lua_setfield(L, -2, "hint");
      galley_error_set_string(L, "instance_status", status);
      return 2;
    }
    lua_Integer wait = delay < limit - elapsed ? delay : limit - elapsed;
    if (galley_sleep_ms(wait) != 0) {
      push_call_error(L, cl->c, "instances.wait_ready", "INTERRUPTED", "", 0, polls, 0, -1,
                      lua_tostring(L, resource), NULL, NULL);
      lua_pushfstring(L, "interrupted while waiting for instance %s", id);
      lua_setfield(L, -2, "message");
      return 2;
    }
    delay = delay * 2 > 2000 ? 2000 : delay * 2;
  }
}


/* client:base_url() -> string */
static int l_client_base_url(lua_State *L) {
  l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
  if (!cl->c) luaL_argerror(L, 1, "client is closed");
  lua_pushstring(L, galley_morph_client_base_url(cl->c));
  return 1;
}


/* client:close()   (also __gc and __close; safe twice) */
static int l_client_close(lua_State *L) {
  l_client *cl = luaL_checkudata(L, 1, CLIENT_MT);
  if (cl->busy) return luaL_error(L, "cannot close a Morph client during a call");
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
  cfg.retry = (galley_morph_retry){4, 250, 8000, 60000};
  if (!lua_isnoneornil(L, 1) && lua_getfield(L, 1, "retry") != LUA_TNIL) {
    int rt = lua_gettop(L);
    luaL_argcheck(L, lua_istable(L, rt), 1, "retry must be a table");
    cfg.retry.max_attempts = (int)galley_opt_integer(L, rt, "max_attempts", cfg.retry.max_attempts);
    cfg.retry.base_delay_ms = (long)galley_opt_integer(L, rt, "base_delay_ms", cfg.retry.base_delay_ms);
    cfg.retry.max_delay_ms = (long)galley_opt_integer(L, rt, "max_delay_ms", cfg.retry.max_delay_ms);
    cfg.retry.max_elapsed_ms = (long)galley_opt_integer(L, rt, "max_elapsed_ms", cfg.retry.max_elapsed_ms);
    luaL_argcheck(L, cfg.retry.max_attempts >= 1, 1, "retry.max_attempts must be at least 1");
    luaL_argcheck(L, cfg.retry.base_delay_ms >= 0 && cfg.retry.max_delay_ms >= 0, 1, "retry delays must be >= 0");
  }
  if (!lua_isnoneornil(L, 1)) lua_getfield(L, 1, "log");
  else lua_pushnil(L);
  if (!lua_isnil(L, -1)) luaL_argcheck(L, lua_isfunction(L, -1), 1, "log must be a function");
  int log = lua_gettop(L);

  l_client *cl = lua_newuserdatauv(L, sizeof *cl, 1);  // closed until the core client exists
  cl->c = NULL;
  cl->busy = false;
  luaL_setmetatable(L, CLIENT_MT);
  lua_pushvalue(L, log);
  lua_setiuservalue(L, -2, 1);
  galley_morph_error e;
  cl->c = galley_morph_client_new(&cfg, &e);
  if (!cl->c) {
    galley_fail(L, e.code, "%s", e.message);
    galley_error_set_string(L, "operation", "morph.new");
    /* No request was made: the generic "the server refused it" hint would mislead. */
    galley_error_set_string(L, "hint", strcmp(e.code, "AUTHENTICATION_ERROR") == 0
      ? "set MORPH_API_KEY in the environment, or pass api_key" : galley_morph_hint(e.code));
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
  { "call",           l_client_call           },
  { "instances_exec", l_client_instances_exec },
  { "wait_ready",     l_client_wait_ready     },
  { "base_url",       l_client_base_url       },
  { "close",          l_client_close          },
  { NULL,             NULL                    }
};

static const luaL_Reg client_meta[] = {
  { "__gc",       l_client_close    },
  { "__close",    l_client_close    },
  { "__tostring", l_client_tostring },
  { "__index",    NULL              },
  { NULL,         NULL              }
};

static const luaL_Reg morph_funcs[] = {
  { "new", l_morph_new },
  { NULL,  NULL        }
};

int luaopen_galley_core_morph(lua_State *L) {
  /* cjson (preloaded) decodes responses; keep it where the callbacks can find it. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, CJSON_KEY);

  luaL_newmetatable(L, CLIENT_MT);               // [mt]
  luaL_setfuncs(L, client_meta, 0);
  lua_createtable(L, 0, (int)galley_morph_nendpoints + 5);  // [mt, methods]
  for (size_t i = 0; i < galley_morph_nendpoints; i++) {
    /* "instances.get" -> instances_get */
    char name[64];
    snprintf(name, sizeof name, "%s", galley_morph_endpoints[i].name);
    char *dot = strchr(name, '.');
    if (dot) *dot = '_';
    lua_pushinteger(L, (lua_Integer)i);
    lua_pushcclosure(L, l_client_endpoint, 1);
    lua_setfield(L, -2, name);
  }
  luaL_setfuncs(L, client_methods, 0);           /* instances_exec replaces the generic one */
  lua_setfield(L, -2, "__index");                // [mt]
  lua_pop(L, 1);

  luaL_newlib(L, morph_funcs);
  push_endpoints(L);
  lua_setfield(L, -2, "endpoints");
  lua_pushstring(L, GALLEY_MORPH_DEFAULT_BASE_URL);
  lua_setfield(L, -2, "default_base_url");
  return 1;
}
