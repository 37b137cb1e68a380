/* Module loading policy; see ../shared/STYLE.md "Where Lua files come from". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>
#include "embedded.h"
#include "loader.h"
#include "modules.h"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);

static char mode[4200] = "embedded";


/* preload loader for embedded module number upvalue(1). */
static int load_embedded(lua_State *L) {
  const struct galley_embedded *e = &galley_embedded[lua_tointeger(L, lua_upvalueindex(1))];
  char chunkname[1100];
  snprintf(chunkname, sizeof chunkname, "@%s", e->path);
  if (luaL_loadbufferx(L, e->data, e->len, chunkname, "t") != LUA_OK) return lua_error(L);
  lua_pushvalue(L, 1);                     /* module name */
  lua_pushstring(L, chunkname + 1);        /* like the file searcher: name, path */
  lua_call(L, 2, 1);
  return 1;
}


/* Removes "./..." entries from a search path string at the top of the stack, in place. */
static void drop_cwd_entries(lua_State *L) {
  const char *path = lua_tostring(L, -1);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int first = 1;
  while (path && *path) {
    const char *end = strchr(path, ';');
    size_t n = end ? (size_t)(end - path) : strlen(path);
    if (n > 0 && strncmp(path, "./", 2) != 0) {
      if (!first) luaL_addchar(&b, ';');
      luaL_addlstring(&b, path, n);
      first = 0;
    }
    path += n + (end ? 1 : 0);
  }
  luaL_pushresult(&b);
  lua_remove(L, -2);
}


void galley_loader_init(lua_State *L, const char *lua_dir) {
  lua_getglobal(L, "package");                                        /* [package] */
  int user_path = getenv("LUA_PATH_5_4") || getenv("LUA_PATH");
  int user_cpath = getenv("LUA_CPATH_5_4") || getenv("LUA_CPATH");
  lua_getfield(L, -1, "path");
  if (!user_path) drop_cwd_entries(L);  /* no file in the cwd may shadow a module */
  if (lua_dir) {
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir);
    lua_insert(L, -2);
    lua_concat(L, 2);
    snprintf(mode, sizeof mode, "directory %s", lua_dir);
  }
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "cpath");
  if (!user_cpath) drop_cwd_entries(L);
  lua_setfield(L, -2, "cpath");

  lua_getfield(L, -1, "preload");                                     /* [package, preload] */
  lua_pushcfunction(L, luaopen_cjson);
  lua_setfield(L, -2, "cjson");
  lua_pushcfunction(L, luaopen_cjson_safe);
  lua_setfield(L, -2, "cjson.safe");
  for (const struct galley_cmodule *m = galley_cmodules; m->name; m++) {
    lua_pushcfunction(L, m->open);
    lua_setfield(L, -2, m->name);
  }
  /* With --lua-dir only galley's own modules come from DIR; embedded system modules stay. */
  for (lua_Integer i = 0; galley_embedded[i].path; i++) {
    const char *m = galley_embedded[i].module;
    if (!m || (lua_dir && strncmp(m, "galley", 6) == 0)) continue;
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, m);
  }
  lua_pop(L, 2);                                                      /* [] */
}


const char *galley_loader_mode(void) { return mode; }


const char *galley_loader_resource(const char *path, size_t *len) {
  for (const struct galley_embedded *e = galley_embedded; e->path; e++) {
    if (strcmp(e->path, path) == 0) {
      if (len) *len = e->len;
      return e->data;
    }
  }
  return NULL;
}
