/* galley.core.codec: base64, SHA-256, random bytes and constant-time comparison (libsodium via
 * src/core/codec.c). Results are built directly in luaL_Buffers, so no C memory is ever held
 * across a call that can raise. */
#include <string.h>
#include "bind.h"
#include "codec.h"

#define SHA256_MT "galley.codec.Sha256"

static const char *const variant_names[] = {"standard", "urlsafe", NULL};


/* codec.base64_encode(s [, "standard" | "urlsafe"]) -> string */
static int l_codec_base64_encode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int variant = luaL_checkoption(L, 2, "standard", variant_names);
  size_t size = galley_b64_encoded_size(n, variant);
  luaL_argcheck(L, size > 0, 1, "string too long to encode");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, size);
  size_t len = galley_b64_encode(out, size, s, n, variant);
  luaL_pushresultsize(&b, len);
  return 1;
}


/* codec.json_string(s) -> the JSON string literal of s (src/core/codec.h) */
static int l_codec_json_string(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  size_t size = galley_json_quoted_size(s, n);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, size);
  luaL_pushresultsize(&b, galley_json_quote(out, s, n));
  return 1;
}


/* codec.base64_decode(s [, "standard" | "urlsafe"]) -> string | nil, err(B64_INVALID) */
static int l_codec_base64_decode(lua_State *L) {
  size_t n, len;
  const char *s = luaL_checklstring(L, 1, &n);
  int variant = luaL_checkoption(L, 2, "standard", variant_names);
  luaL_Buffer b;
  size_t cap = galley_b64_decoded_max(n);
  char *out = luaL_buffinitsize(L, &b, cap);
  if (galley_b64_decode(out, cap, s, n, variant, &len) != 0) {
    luaL_pushresultsize(&b, 0);                                                 // [..., ""]
    lua_pop(L, 1);
    return galley_fail(L, "B64_INVALID", "invalid %s base64 input", variant_names[variant]);
  }
  luaL_pushresultsize(&b, len);
  return 1;
}


/* codec.sha256(s) -> lowercase hex */
static int l_codec_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char hex[GALLEY_SHA256_HEX_LEN + 1];
  galley_sha256_hex_of(s, n, hex);
  lua_pushlstring(L, hex, GALLEY_SHA256_HEX_LEN);
  return 1;
}


/* codec.sha256_backend() -> "openssl" | "libsodium": which SHA-256 the hashers use */
static int l_codec_sha256_backend(lua_State *L) {
  lua_pushstring(L, galley_sha256_backend());
  return 1;
}


/* codec.sha256_hasher() -> Sha256 (plain memory: nothing to close) */
static int l_codec_sha256_hasher(lua_State *L) {
  galley_sha256 *h = lua_newuserdatauv(L, sizeof *h, 0);
  galley_sha256_init(h);
  luaL_setmetatable(L, SHA256_MT);
  return 1;
}


/* Sha256:update(s) -> self */
static int l_sha256_update(lua_State *L) {
  galley_sha256 *h = luaL_checkudata(L, 1, SHA256_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  galley_sha256_update(h, s, n);
  lua_settop(L, 1);
  return 1;
}


/* Sha256:hex() -> lowercase hex of everything so far (more updates may follow) */
static int l_sha256_hex(lua_State *L) {
  galley_sha256 *h = luaL_checkudata(L, 1, SHA256_MT);
  char hex[GALLEY_SHA256_HEX_LEN + 1];
  galley_sha256_hex(h, hex);
  lua_pushlstring(L, hex, GALLEY_SHA256_HEX_LEN);
  return 1;
}


/* tostring(Sha256) -> "galley.codec.Sha256" */
static int l_sha256_tostring(lua_State *L) {
  luaL_checkudata(L, 1, SHA256_MT);
  lua_pushliteral(L, SHA256_MT);
  return 1;
}


/* Checks argument 1 as a byte count. */
static size_t check_count(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= (1 << 30), 1, "byte count out of range (0 to 2^30)");
  return (size_t)n;
}


/* codec.random_bytes(n) -> string of n bytes */
static int l_codec_random_bytes(lua_State *L) {
  size_t n = check_count(L);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n);
  galley_random_bytes(out, n);
  luaL_pushresultsize(&b, n);
  return 1;
}


/* codec.random_hex(n_bytes) -> string of 2 * n_bytes hex digits */
static int l_codec_random_hex(lua_State *L) {
  size_t n = check_count(L);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n * 2 + 1);
  unsigned char chunk[256];
  for (size_t done = 0; done < n; done += sizeof chunk) {
    size_t k = n - done < sizeof chunk ? n - done : sizeof chunk;
    galley_random_bytes(chunk, k);
    galley_hex(out + done * 2, chunk, k);
  }
  sodium_memzero(chunk, sizeof chunk);
  luaL_pushresultsize(&b, n * 2);
  return 1;
}


/* codec.equal(a, b) -> boolean   (constant time for equal lengths; different lengths -> false) */
static int l_codec_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen);
  const char *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, galley_equal(a, alen, b, blen));
  return 1;
}


static const luaL_Reg sha256_methods[] = {
  { "update",        l_sha256_update        },
  { "hex",           l_sha256_hex           },
  { NULL,            NULL                   }
};

static const luaL_Reg codec_funcs[] = {
  { "base64_encode", l_codec_base64_encode  },
  { "base64_decode", l_codec_base64_decode  },
  { "json_string",   l_codec_json_string    },
  { "sha256",        l_codec_sha256         },
  { "sha256_hasher", l_codec_sha256_hasher  },
  { "sha256_backend", l_codec_sha256_backend },
  { "random_bytes",  l_codec_random_bytes   },
  { "random_hex",    l_codec_random_hex     },
  { "equal",         l_codec_equal          },
  { NULL,            NULL                   }
};

int luaopen_galley_core_codec(lua_State *L) {
  luaL_newmetatable(L, SHA256_MT);                                               // [mt]
  lua_pushcfunction(L, l_sha256_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, sha256_methods);                                                // [mt, methods]
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newlib(L, codec_funcs);
  return 1;
}
