/* Shared by the http and morph bindings (defined in l_http.c). */
#ifndef GALLEY_L_HTTP_H
#define GALLEY_L_HTTP_H

#include <lua.h>
#include "http.h"

/* Pushes an empty response box (userdata "galley.http.Response") whose __gc frees whatever a
 * transfer puts in it, so a Lua error mid-call never leaks the response. */
galley_http_response *galley_push_http_response_box(lua_State *L);

/* Starts req (its strings anchored on the stack by the caller) and waits for it through
 * galley_await: pushes resp | nil, err, as http.request does. With req->stream it pushes a
 * stream ("galley.http.Transfer": read/result/status/close) at once instead. Must be the
 * binding's tail call: `return galley_http_request_lua(L, &req);` */
int galley_http_request_lua(lua_State *L, const galley_http_request *req);

#endif
