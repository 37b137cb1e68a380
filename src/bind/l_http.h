/* Shared by the http and morph bindings (defined in l_http.c). */
#ifndef GALLEY_L_HTTP_H
#define GALLEY_L_HTTP_H

#include <lua.h>
#include "http.h"

/* Pushes an empty response box (userdata "galley.http.Response") whose __gc frees whatever a
 * transfer puts in it, so a Lua error mid-call never leaks the response. */
galley_http_response *galley_push_http_response_box(lua_State *L);

#endif
