/* Where Lua modules come from (decided once, here). */
#ifndef GALLEY_LOADER_H
#define GALLEY_LOADER_H

#include <lua.h>

/* Sets package.path/cpath and registers galley.core.*, cjson and (unless lua_dir is given) the
 * embedded galley.* modules in package.preload. lua_dir may be NULL (embedded mode). */
void galley_loader_init(lua_State *L, const char *lua_dir);

/* "embedded" or "directory <path>": what `galley --version` reports. */
const char *galley_loader_mode(void);

/* Finds an embedded file by its source-relative path ("recipes/gc.lua"); NULL if absent. */
const char *galley_loader_resource(const char *path, size_t *len);

#endif
