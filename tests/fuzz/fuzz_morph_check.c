/* libFuzzer target: the Lua-facing checks of Morph answers, run through galley's embedded Lua
 * runtime (the same loader, bindings and embedded modules as the binary). The first input byte
 * picks a client method, the rest is the answer's body: cjson decodes it as the client does,
 * galley.providers.morph_check.answer checks it, and an accepted instance or snapshot goes
 * through the provider's conversion (galley.providers.morph.instance/.snapshot). Each must
 * either accept, or raise a galley error with code PROTOCOL_ERROR naming a field; any other
 * Lua error (an index of nil, a bad comparison, ...) aborts.
 * libFuzzer sees the C coverage of cjson-free code only, so a line hook feeds it Lua coverage:
 * each (chunk, line) bumps a counter in the __libfuzzer_extra_counters section. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include "loader.h"

#define NCOUNTERS (1 << 14)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_lines[NCOUNTERS];

static lua_State *L;
static int driver_ref = LUA_NOREF;

static const char DRIVER[] =
  "local cjson = require('cjson')\n"
  "local check = require('galley.providers.morph_check')\n"
  "local morph = require('galley.providers.morph')\n"
  "local METHODS = { 'images_list', 'snapshots_list', 'snapshots_get', 'snapshots_boot',\n"
  "  'instances_list', 'instances_get', 'wait_ready', 'instances_branch', 'instances_exec',\n"
  "  'instances_snapshot', 'instances_ttl', 'instances_pause' }\n"
  "local SNAPSHOT = { snapshots_get = true, instances_snapshot = true }\n"
  "local function expected(err)\n"
  "  return type(err) == 'table' and err.code == 'PROTOCOL_ERROR' and type(err.field) == 'string'\n"
  "    and type(tostring(err)) == 'string'\n"
  "end\n"
  "return function(which, text)\n"
  "  local ok, body = pcall(cjson.decode, text)\n"
  "  if not ok then return true end\n"
  "  local method = METHODS[which % #METHODS + 1]\n"
  "  local cok, res = pcall(check.answer, method, body, 'fuzz', 'instance:fuzz')\n"
  "  if not cok then\n"
  "    if expected(res) then return true end\n"
  "    return false, method .. ': ' .. tostring(res)\n"
  "  end\n"
  "  if method == 'instances_exec' then\n"
  "    if math.type(res.exit_code) ~= 'integer' or type(res.stdout) ~= 'string' or type(res.stderr) ~= 'string' then\n"
  "      return false, 'exec answer not normalized'\n"
  "    end\n"
  "    return true\n"
  "  end\n"
  "  local items = {}\n"
  "  if method:match('_list$') then items = res.data\n"
  "  elseif method == 'instances_branch' then items = res.instances\n"
  "  else items = { res } end\n"
  "  for _, raw in ipairs(items) do\n"
  "    local convert = (SNAPSHOT[method] or method == 'snapshots_list') and morph.snapshot\n"
  "      or method == 'images_list' and function(x) return x end or morph.instance\n"
  "    local vok, verr = pcall(convert, raw)\n"
  "    if not vok then return false, method .. ' conversion: ' .. tostring(verr) end\n"
  "  end\n"
  "  if method == 'instances_branch' then\n"
  "    local vok, verr = pcall(morph.snapshot, res.snapshot)\n"
  "    if not vok then return false, 'branch snapshot conversion: ' .. tostring(verr) end\n"
  "  end\n"
  "  return true\n"
  "end\n";


/* Line hook: one counter per (chunk, line), so new Lua lines count as new coverage. */
static void on_line(lua_State *l, lua_Debug *ar) {
  if (!lua_getinfo(l, "S", ar)) return;
  uintptr_t h = (uintptr_t)ar->source * 2654435761u ^ (uintptr_t)ar->currentline * 40503u;
  uint8_t *c = &lua_lines[(h ^ (h >> 15)) % NCOUNTERS];
  if (*c != 255) (*c)++;
}


static void setup(void) {
  L = luaL_newstate();
  if (!L) abort();
  luaL_openlibs(L);
  galley_loader_init(L, NULL);
  if (luaL_loadbuffer(L, DRIVER, sizeof DRIVER - 1, "=fuzz_morph_check") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_morph_check: %s\n", lua_tostring(L, -1));
    abort();
  }
  driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, on_line, LUA_MASKLINE, 0);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  if (!L) setup();
  lua_rawgeti(L, LUA_REGISTRYINDEX, driver_ref);                     /* [driver] */
  lua_pushinteger(L, data[0]);
  lua_pushlstring(L, (const char *)data + 1, size - 1);               /* [driver, which, text] */
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_morph_check: driver failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  if (!lua_toboolean(L, -2)) {                                        /* [ok, why] */
    fprintf(stderr, "fuzz_morph_check: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_pop(L, 2);                                                      /* [] */
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
