--- galley.httpd: the request loop behind galley.core.httpd's `serve`.
--
--   local server = httpd.serve{port = 0, handler = function(req) return {status = 200, body = "ok"} end}
--
-- serve() listens (galley.core.httpd.listen) and starts an accept task; every request then
-- runs its handler in a task of its own (galley.task), so a handler may sleep, run processes
-- or make HTTP calls, all yielding, while other requests are served. Whatever drives the loop
-- serves them: any blocking galley call of the main program, or a task scheduler's wait.
--
-- A handler returns {status = 200, headers = {}, body = ""}, {status, headers, body, truncate
-- = N} (Content-Length of the whole body, N bytes, then the connection closes), {reset = true}
-- (a TCP reset instead of an answer) or {status, headers, stream = fn, close = fn}: fn() is
-- called in the request's task for each chunk (a string; nil ends the body, false cuts it),
-- and close() once the stream is done with, finished or not (the client may have gone).
-- `reason` (optional) replaces the status line's reason phrase (printable bytes, at most 512;
-- Proxmox VE puts its error messages there).
-- A handler that raises is logged on stderr and answered 500.
local core = require("galley.core.httpd")
local task = require("galley.task")

local M = {}

local INTERNAL = '{"detail":"Internal Server Error"}'
local JSON = { ["Content-Type"] = "application/json" }

local function report(what, err)
  io.stderr:write("galley: httpd: ", what, " failed: ", tostring(err), "\n")
end

local function traceback(e)
  if type(e) == "string" then return debug.traceback(e, 2) end
  return e
end

-- Checks a handler's response; returns status, headers (strings) or raises a message.
local function check(resp)
  if type(resp) ~= "table" then error("handler must return a response table, got " .. type(resp), 0) end
  local status = resp.status or 200
  if math.type(status) ~= "integer" or status < 100 or status > 599 then
    error("response status must be an integer 100..599, got " .. tostring(status), 0)
  end
  local headers = {}
  if resp.headers ~= nil then
    if type(resp.headers) ~= "table" then error("response headers must be a table", 0) end
    for k, v in pairs(resp.headers) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        error("response headers must map strings to strings", 0)
      end
      headers[k] = tostring(v)
    end
  end
  if resp.reason ~= nil then
    if type(resp.reason) ~= "string" then error("response reason must be a string", 0) end
    headers[":reason"] = resp.reason
  end
  if resp.stream == nil and resp.body ~= nil and type(resp.body) ~= "string" then
    error("response body must be a string, got " .. type(resp.body), 0)
  end
  if resp.truncate ~= nil and math.type(resp.truncate) ~= "integer" then
    error("response truncate must be an integer", 0)
  end
  return status, headers
end

local function stream_body(r, resp)
  local alive = true
  while alive do
    local ok, chunk = xpcall(resp.stream, traceback)
    if not ok then
      report("stream function", chunk)
      chunk = false
    end
    if chunk == nil then
      r:finish()
      break
    elseif type(chunk) ~= "string" then
      r:abort(false)
      break
    end
    alive = r:write(chunk)
  end
  if type(resp.close) == "function" then
    local ok, err = xpcall(resp.close, traceback)
    if not ok then report("stream close callback", err) end
  end
end

-- One request, in its own task.
local function serve_one(handler, r, req)
  -- whether the client left meanwhile (a handler that waits long stops what nobody will read)
  req.peer_gone = function() return r:peer_gone() end
  local ok, resp = xpcall(handler, traceback, req)
  local status, headers
  if ok and not (type(resp) == "table" and resp.reset) then
    local valid
    valid, status, headers = pcall(check, resp)
    if not valid then ok, resp = false, status end
  end
  if not ok then
    report("request handler", resp)
    r:respond(500, JSON, INTERNAL)
  elseif resp.reset then
    r:abort(true)
  elseif type(resp.stream) == "function" then
    if r:stream_head(status, headers) then
      stream_body(r, resp)
    elseif type(resp.close) == "function" then
      pcall(resp.close)
    end
  else
    local body = resp.body or ""
    local cut = resp.truncate
    if cut and cut > #body then cut = nil end
    r:respond(status, headers, body, cut)
  end
  r:release()
end

--- Listens on 127.0.0.1 and answers each request with handler(req) in a task of its own.
--- opts: port (0 = a free one), handler, and galley.core.httpd.listen's limits (bearer,
--- max_body_bytes, max_header_bytes, max_connections, max_connections_per_client,
--- header_timeout_ms, idle_timeout_ms).
---@param opts table
---@return any|nil server  galley.httpd.Server: port(), stats(), stop()/close()
---@return galley.Error|nil err  HTTPD_BIND, HTTPD_START
function M.serve(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'serve' (table expected, got " .. type(opts) .. ")", 2) end
  local handler = opts.handler
  if type(handler) ~= "function" then error("bad argument #1 to 'serve' (field 'handler' must be a function)", 2) end
  local server, err = core.listen(opts)
  if not server then return nil, err end
  local acceptor
  acceptor = task.spawn(function()
    while true do
      local r, req = server:accept()
      if r then
        task.spawn(serve_one, handler, r, req)
      elseif req == nil or acceptor.cancel_err then
        return -- stopped, or this task was cancelled
      end
      -- else: a Ctrl-C cancelled every wait; the server keeps serving until stopped
    end
  end)
  acceptor.name = "httpd accept " .. server:port()
  return server
end

return M
