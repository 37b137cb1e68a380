--- galley.morph_client: the Morph Cloud API client, policy in Lua over the thin transport
--- galley.core.morph (endpoint table, URL building, SSE parsing, libcurl on the event loop).
--
--   local mc = require("galley.morph_client")
--   local c = assert(mc.new{ base_url = url, api_key = key, retry = {max_attempts = 4} })
--   local inst = c:instances_get("morphvm_abc")           -- nil, err on failure
--   local r = c:instances_exec(id, {"uname", "-a"}, {on_stdout = io.write})
--   c:wait_ready(id, {timeout_ms = 60000})
--
-- Every call waits on the event loop: inside a galley.task it yields, so many calls (and their
-- retry waits and readiness polls) overlap on one shared connection pool.
--
-- Here live the rules:
--   * creating calls (start, boot, branch) carry a request token in their metadata
--     (`galley_request_token`), so a create whose answer was lost can be found later;
--   * what an HTTP status means: errors.code_for_http_status (one table for all of galley);
--   * retries: 429 always (honouring Retry-After); 502/503/504 and transport failures for
--     idempotent calls, 500 too for idempotent GETs and DELETEs, and a 2xx whose body is not
--     JSON for GETs; creating/running calls only when the request provably never reached the
--     server (libcurl is never let to resend them either: http.c no_resend). Exponential
--     backoff with equal jitter, within max_attempts and max_elapsed_ms;
--   * deletes are idempotent: a DELETE retried after a lost answer that then gets 404, or a 2xx
--     whose body cannot be parsed, has done its job;
--   * wait_ready polls GET /instance/{id}, tolerating failed polls (5xx, malformed answers,
--     network trouble) within its time budget.
-- Errors are galley errors: code VALIDATION_ERROR, AUTHENTICATION_ERROR, NOT_FOUND, CONFLICT,
-- RATE_LIMIT, SERVER_ERROR, NETWORK_ERROR, TIMEOUT, PROTOCOL_ERROR or INTERRUPTED (with
-- `signal` when a signal caused it), and operation, resource, status, attempt, max_attempts,
-- hint, retry_after (s), request_token, sent, fields/details (FastAPI's 422 list). The API key
-- never appears in errors or in the log hook's records.
local cjson = require("cjson")
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local morph = require("galley.core.morph")
local runtime = require("galley.core.runtime")

local M = {}

M.TOKEN_KEY = "galley_request_token"
M.DEFAULT_RETRY = { max_attempts = 4, base_delay_ms = 250, max_delay_ms = 8000, max_elapsed_ms = 60000 }
M.DEFAULT_WAIT_READY_MS = 300000
M.endpoints = morph.endpoints
M.default_base_url = morph.default_base_url

M.HINTS = {
  AUTHENTICATION_ERROR = "check MORPH_API_KEY (or the api_key option): the server refused it",
  VALIDATION_ERROR = "the server rejected the request; see err.fields",
  NOT_FOUND = "the resource does not exist (stopped, deleted or expired by its TTL?)",
  CONFLICT = "the instance is not in a state that allows this (not ready, or paused?)",
  RATE_LIMIT = "too many requests: wait err.retry_after seconds before trying again",
  SERVER_ERROR = "Morph had a problem; try again later",
  NETWORK_ERROR = "check connectivity to the Morph API (base_url, proxy, DNS)",
  TIMEOUT = "the call may still have taken effect: check before repeating it",
  PROTOCOL_ERROR = "the server's reply was not what the Morph API returns; check base_url",
}

---@class galley.MorphClient
---@field transport userdata the galley.core.morph client
local Client = {}
Client.__name = "galley.MorphClient"

-- Path parameters of each endpoint, in template order.
local PARAMS = {}
for name, ep in pairs(morph.endpoints) do
  local list = {}
  for p in ep.path:gmatch("{([%w_]+)}") do list[#list + 1] = p end
  PARAMS[name] = list
end


local function value(v)
  if v == cjson.null then return nil end
  return v
end


local function endpoint(name)
  if type(name) ~= "string" then error("endpoint name must be a string", 3) end
  local ep = morph.endpoints[name] or morph.endpoints[(name:gsub("_", ".", 1))]
  if not ep then error(("unknown Morph endpoint '%s'"):format(name), 3) end
  return ep
end


--- The error code for an HTTP status (errors.code_for_http_status; other non-2xx: PROTOCOL_ERROR).
---@param status integer
---@return string|nil
function M.code_for_status(status)
  if status >= 200 and status < 300 then return nil end
  return errors.code_for_http_status(status) or "PROTOCOL_ERROR"
end


-- The error code of a failed transfer: the wait's own cancellation keeps its code.
local function transport_code(herr)
  local c = herr.code
  if c == "HTTP_TIMEOUT" then return "TIMEOUT" end
  if type(c) == "string" and c:match("^HTTP_") then return "NETWORK_ERROR" end
  return c or "NETWORK_ERROR"
end


--- Whether one failed attempt may be tried again (status: HTTP status, or nil with herr).
---@param ep table the endpoint
---@param status integer|nil
---@param herr table|nil the transport error
---@return boolean
function M.retryable(ep, status, herr)
  if status then
    if status == 429 then return true end
    if status == 502 or status == 503 or status == 504 then return ep.idempotent end
    -- 500 is retried for reads and deletes only: a retried delete that meets 404 has succeeded
    if status == 500 then return ep.idempotent and (ep.method == "GET" or ep.method == "DELETE") end
    return false
  end
  local c = herr and herr.code
  if type(c) ~= "string" or not c:match("^HTTP_") or c == "HTTP_TLS" then return false end
  if herr.sent == false then return true end -- provably never reached the server
  return ep.idempotent
end


--- Equal-jitter exponential backoff: min(max, base * 2^(attempt-1)), half fixed, half random.
---@param retry table
---@param attempt integer tries made so far
---@param jitter? number in [0, 1) (default: random)
---@return integer ms
function M.backoff_ms(retry, attempt, jitter)
  local d = retry.base_delay_ms
  for _ = 2, attempt do
    if d >= retry.max_delay_ms then break end
    d = d * 2
  end
  d = math.min(d, retry.max_delay_ms)
  jitter = jitter or math.random()
  return math.floor(d / 2 + jitter * d / 2)
end


-- A copy of map (or {}) with the request token added unless present.
local function stamped_map(map, token)
  local copy = {}
  if type(map) == "table" then
    for k, v in pairs(map) do copy[k] = v end
  end
  if copy[M.TOKEN_KEY] == nil then copy[M.TOKEN_KEY] = token end
  return copy
end


-- Stamps body[field] with a request token (each element of a list, as branch's per-clone
-- metadata). Keeps a token the caller already put there. Returns the new body and the token.
local function stamp(body, field)
  if body ~= nil and type(body) ~= "table" then error("body must be a table", 4) end
  local md = type(body) == "table" and body[field] or nil
  local first = type(md) == "table" and (md[1] ~= nil and md[1] or md) or nil
  local token = type(first) == "table" and type(first[M.TOKEN_KEY]) == "string" and first[M.TOKEN_KEY]
    or morph.request_token()
  local copy = {}
  for k, v in pairs(body or {}) do copy[k] = v end
  if type(md) == "table" and #md > 0 then
    local list = {}
    for i, m in ipairs(md) do list[i] = stamped_map(m, token) end
    copy[field] = list
  else
    copy[field] = stamped_map(md, token)
  end
  return copy, token
end


-- FastAPI's error body: the message suffix, and err.details / err.fields.
local function parse_detail(body)
  if type(body) ~= "string" or body == "" then return "" end
  local ok, decoded = pcall(cjson.decode, body)
  if not ok or type(decoded) ~= "table" then return "" end
  local detail = value(decoded.detail)
  if type(detail) == "string" then return ": " .. detail, detail end
  if type(detail) ~= "table" then return "", detail end
  local parts, fields = {}, {}
  for _, item in ipairs(detail) do
    if type(item) == "table" then
      local loc = {}
      for _, l in ipairs(type(item.loc) == "table" and item.loc or {}) do
        if type(l) == "string" or type(l) == "number" then loc[#loc + 1] = tostring(l) end
      end
      local field = #loc > 0 and table.concat(loc, ".") or "?"
      fields[#fields + 1] = field
      parts[#parts + 1] = type(item.msg) == "string" and (field .. ": " .. item.msg) or field
    end
  end
  if #parts == 0 then return "", detail end
  return ": " .. table.concat(parts, "; "), detail, fields
end


function Client:_error(code, message, f)
  f = f or {}
  local err = errors.new(code, self.transport:redact(message), {
    operation = f.operation, resource = f.resource, status = f.status, attempt = f.attempt,
    max_attempts = f.max_attempts, request_token = f.request_token, signal = f.signal, sent = f.sent,
    field = f.field, hint = f.hint or M.HINTS[code],
  })
  if f.retry_after_ms then err.retry_after = f.retry_after_ms / 1000 end
  return err
end


function Client:_log(rec)
  if not self.log then return end
  pcall(self.log, rec)
end


-- Sleeps ms (yields inside a task); nil, err(INTERRUPTED, signal) when cancelled.
local function pause(ms)
  local ok, err = runtime.sleep_ms(ms)
  if ok then return true end
  return nil, err
end


-- One SSE attempt: reads the stream, dispatching exec events into st; returns the final
-- response (its body empty for a 2xx) or nil, err. A callback's error closes the stream and
-- is raised again.
local function sse_attempt(self, ep, a, st)
  local s, err = self.transport:call(ep.name, a)
  if not s then return nil, err end
  local parser = morph.sse()
  local function dispatch(payloads)
    for _, payload in ipairs(payloads) do
      st.events = st.events + 1
      if payload ~= "[DONE]" then
        local ok, ev = pcall(cjson.decode, payload)
        if ok and type(ev) == "table" then
          local ty, content = value(ev.type), value(ev.content)
          if ty == "exit_code" then
            local code = content
            if type(code) == "string" then
              local dok, n = pcall(cjson.decode, code)
              code = dok and n or nil
            end
            if type(code) == "number" then st.exit_code = math.tointeger(code) or code end
          elseif (ty == "stdout" or ty == "stderr") and type(content) == "string" then
            local list = ty == "stdout" and st.out or st.err
            list[#list + 1] = content
            local cb = ty == "stdout" and st.on_stdout or st.on_stderr
            if cb then
              local cok, cerr = pcall(cb, content)
              if not cok then
                s:close()
                error(cerr, 0)
              end
            end
          end
        end
      end
    end
  end
  while true do
    local chunk, rerr = s:read()
    if rerr then
      s:close()
      return nil, rerr
    end
    if not chunk then break end
    dispatch(parser:feed(chunk))
  end
  dispatch(parser:flush())
  return s:result()
end


--- Performs endpoint `name` with args: path parameters by name, query, body (table or JSON),
--- timeout_ms (0: the client's, < 0: none), on_stdout/on_stderr (SSE exec). Returns the decoded
--- JSON result (a 204 gives true; SSE exec gives {exit_code, stdout, stderr}) or nil, err.
---@param name string "instances.get" or "instances_get"
---@param args? table
---@return any|nil result
---@return galley.Error|nil err
-- A request body as JSON. An exec's `{command = {...}}` (megabytes of base64 when files move)
-- is written with codec.json_string, a plain copy for text with nothing to escape, where
-- cjson's per-character encoder took ~4 ms a MiB and escaped every `/`; anything else by cjson.
local function encode_body(body)
  local command = body.command
  local only_command = next(body) == "command" and next(body, "command") == nil
  if only_command and type(command) == "table" then
    local parts, n = {}, 0
    for _ in pairs(command) do n = n + 1 end
    for i = 1, n do
      local s = command[i]
      if type(s) ~= "string" then return cjson.encode(body) end -- not a list of strings
      parts[i] = codec.json_string(s)
    end
    if n == 0 then return cjson.encode(body) end
    return '{"command":[' .. table.concat(parts, ",") .. "]}"
  end
  return cjson.encode(body)
end


function Client:call(name, args)
  local ep = endpoint(name)
  args = args or {}
  if type(args) ~= "table" then error("args must be a table", 2) end
  local a = {}
  for k, v in pairs(args) do a[k] = v end
  a.on_stdout, a.on_stderr = nil, nil
  local token
  if ep.stamp then a.body, token = stamp(a.body, ep.stamp) end
  if type(a.body) == "table" then a.body = encode_body(a.body) end
  local path = self.transport:path(ep.name, a) -- raises on a missing path parameter
  local plain = path:match("^[^?]*")
  local first = PARAMS[ep.name][1]
  local resource = ep.resource and first and (ep.resource .. ":" .. tostring(a[first])) or nil
  local retry = self.retry
  local start = runtime.now_ms()
  local acted = false -- an earlier attempt may have reached the server and done the work
  local attempt = 0
  local info = { operation = ep.name, resource = resource, request_token = token, max_attempts = retry.max_attempts }
  while true do
    attempt = attempt + 1
    info.attempt = attempt
    local t0 = runtime.now_ms()
    local st
    local resp, herr
    if ep.sse then
      st = { out = {}, err = {}, events = 0, on_stdout = args.on_stdout, on_stderr = args.on_stderr }
      resp, herr = sse_attempt(self, ep, a, st)
    else
      resp, herr = self.transport:call(ep.name, a)
    end
    local status = resp and resp.status or nil
    self:_log({ method = ep.method, path = plain, status = status or 0, ms = runtime.now_ms() - t0,
      attempt = attempt, error = herr and herr.code or nil })

    -- success
    if status and status >= 200 and status < 300 then
      if ep.sse then
        if st.exit_code == nil then
          return nil, self:_error("PROTOCOL_ERROR", ep.name .. ": exec stream ended without an exit code",
            { status = status, operation = ep.name, resource = resource, attempt = attempt,
              max_attempts = retry.max_attempts })
        end
        return { exit_code = st.exit_code, stdout = table.concat(st.out), stderr = table.concat(st.err) }
      end
      if status == 204 then return true end
      local ok, decoded = pcall(cjson.decode, resp.body)
      if ok and type(decoded) == "table" then return decoded end
      if ep.method == "DELETE" then return true end -- the delete happened; its answer is noise
      -- A garbled answer to a read is asked again; to anything else it is final (it acted).
      local again = ep.method == "GET" and ep.idempotent and attempt < retry.max_attempts
        and M.backoff_ms(retry, attempt) or nil
      if again and retry.max_elapsed_ms > 0 and runtime.now_ms() - start + again > retry.max_elapsed_ms then
        again = nil
      end
      if not again then
        info.status = status
        return nil, self:_error("PROTOCOL_ERROR", ep.name .. ": the response body is not the JSON object expected",
          info)
      end
      local pok, perr = pause(again)
      if not pok then
        info.signal = perr.signal
        return nil, self:_error(perr.code or "INTERRUPTED", ep.name .. ": interrupted while waiting to retry", info)
      end
      goto continue
    end
    if status == 404 and acted and ep.method == "DELETE" then
      return true -- a retried delete whose first try did the work
    end

    -- failure: try again?
    local retry_after_ms = status and morph.parse_retry_after(resp.headers["retry-after"]) or nil
    local delay
    if M.retryable(ep, status, herr) and attempt < retry.max_attempts then
      delay = retry_after_ms or M.backoff_ms(retry, attempt)
      if retry.max_elapsed_ms > 0 and runtime.now_ms() - start + delay > retry.max_elapsed_ms then delay = nil end
    end
    if not delay then
      info.retry_after_ms = retry_after_ms
      if status then
        local code = M.code_for_status(status)
        local suffix, details, fields = parse_detail(resp.body)
        info.status = status
        local message = ("%s: HTTP %d from %s %s%s"):format(ep.name, status, ep.method, plain, suffix)
        if code == "NOT_FOUND" then
          -- A base URL without /api answers 404 to every path: name it, and suggest /api when
          -- the same path answers under it.
          local hint = self:_api_prefix_hint()
          if not hint and not resource then
            -- A listing has no resource that could be gone: the path itself is not served.
            hint = ("%s answered 404 to %s %s: check MORPH_BASE_URL (the Morph API's ends in /api)")
              :format(self:base_url(), ep.method, plain)
          end
          if hint then
            message = message .. (" (base URL %s)"):format(self:base_url())
            info.hint = hint
          end
        end
        local err = self:_error(code, message, info)
        if info.hint and code == "NOT_FOUND" then
          err.base_url = self:base_url()
          err.suggested_base_url = self._api_hint and self._api_base or nil
        end
        err.details, err.fields = details, fields
        return nil, err
      end
      info.sent = herr.sent
      info.signal = herr.signal
      return nil, self:_error(transport_code(herr),
        ("%s: %s %s: %s"):format(ep.name, ep.method, plain, tostring(herr.message)), info)
    end
    acted = acted or (status ~= nil and status >= 500) or (herr ~= nil and herr.sent ~= false)
    local ok, perr = pause(delay)
    if not ok then
      info.signal = perr.signal
      return nil, self:_error(perr.code or "INTERRUPTED", ep.name .. ": interrupted while waiting to retry", info)
    end
    ::continue::
  end
end


--- client:instances_exec(id, argv, opts?) -> {exit_code, stdout, stderr} | nil, err
--- argv: one shell line (a string) or a list of strings. With on_stdout/on_stderr in opts the
--- output streams over SSE as it arrives (the callbacks may yield). opts.timeout_ms: default none.
function Client:instances_exec(id, argv, opts)
  if type(id) ~= "string" then error("bad argument #1 to 'instances_exec' (string expected)", 2) end
  opts = opts or {}
  local cmd
  if type(argv) == "string" then
    cmd = { argv }
  elseif type(argv) == "table" then
    if #argv == 0 then error("bad argument #2 to 'instances_exec' (argv must not be empty)", 2) end
    cmd = {}
    for i, v in ipairs(argv) do
      if type(v) ~= "string" then error("bad argument #2 to 'instances_exec' (argv must be a list of strings)", 2) end
      cmd[i] = v
    end
  else
    error("bad argument #2 to 'instances_exec' (string or table expected)", 2)
  end
  for _, k in ipairs({ "on_stdout", "on_stderr" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then error("on_stdout/on_stderr must be functions", 2) end
  end
  local stream = opts.on_stdout ~= nil or opts.on_stderr ~= nil
  local name = stream and "instances.exec_sse" or "instances.exec"
  local res, err = self:call(name, { instance_id = id, body = { command = cmd }, timeout_ms = opts.timeout_ms or -1,
    on_stdout = opts.on_stdout, on_stderr = opts.on_stderr })
  if not res then return nil, err end
  if not stream and type(res.exit_code) ~= "number" then
    return nil, self:_error("PROTOCOL_ERROR", "exec response has no integer exit_code",
      { operation = name, resource = "instance:" .. id, status = 200, field = "exit_code" })
  end
  return res
end


--- client:wait_ready(id, {timeout_ms=?}) -> instance | nil, err
--- Polls GET /instance/{id} (0.25 s growing to 2 s; default limit 300 s). Status "error" gives
--- SERVER_ERROR, the limit TIMEOUT (naming the instance; a failed poll before it in
--- err.last_error). A failed poll (5xx, malformed answer, network trouble) is tolerated within the
--- limit; when the last poll failed too, its error is the answer. NOT_FOUND,
--- AUTHENTICATION_ERROR and INTERRUPTED end the wait at once.
function Client:wait_ready(id, opts)
  if type(id) ~= "string" then error("bad argument #1 to 'wait_ready' (string expected)", 2) end
  opts = opts or {}
  local limit = opts.timeout_ms or M.DEFAULT_WAIT_READY_MS
  local resource = "instance:" .. id
  local start = runtime.now_ms()
  local delay = 250
  local polls = 0
  local status, last
  while true do
    polls = polls + 1
    local inst, err = self:call("instances.get", { instance_id = id })
    if inst then
      status = value(inst.status)
      if status == "ready" then return inst end
      if status == "error" then
        local e = self:_error("SERVER_ERROR", ("instance %s entered status 'error'"):format(id),
          { operation = "instances.wait_ready", resource = resource, attempt = polls,
            hint = "the instance failed: stop it (instances_stop) and start another" })
        e.instance_status = "error"
        return nil, e
      end
    else
      local c = err.code
      if c ~= "SERVER_ERROR" and c ~= "PROTOCOL_ERROR" and c ~= "NETWORK_ERROR" and c ~= "TIMEOUT"
          and c ~= "RATE_LIMIT" then
        err.operation = "instances.wait_ready"
        return nil, err
      end
      last = err
    end
    local elapsed = runtime.now_ms() - start
    if elapsed >= limit and not inst then
      -- every poll up to the limit failed: that failure is the answer
      last.operation = "instances.wait_ready"
      last.resource = resource
      last.message = ("instance %s not ready after %d ms: %s"):format(id, limit, tostring(last.message))
      return nil, last
    end
    if elapsed >= limit then
      local e = self:_error("TIMEOUT", ("instance %s not ready after %d ms (status '%s')"):format(id, limit,
        tostring(status or "?")), { operation = "instances.wait_ready", resource = resource, attempt = polls,
        hint = "stop the instance (instances_stop) or wait longer (timeout_ms)" })
      e.instance_status = status
      e.last_error = last
      return nil, e
    end
    local ok, perr = pause(math.min(delay, limit - elapsed))
    if not ok then
      return nil, self:_error(perr.code or "INTERRUPTED", ("interrupted while waiting for instance %s"):format(id),
        { operation = "instances.wait_ready", resource = resource, attempt = polls, signal = perr.signal })
    end
    delay = math.min(delay * 2, 2000)
  end
end


--- The base URL (no trailing slash).
function Client:base_url()
  return self.transport:base_url()
end


--- After a 404: when the base URL's path does not end in /api and `<base>/api` answers a
-- listing (GET /instance, same key) with 2xx, a hint that suggests the /api base URL; else nil.
-- Asked once per client.
---@return string|nil
function Client:_api_prefix_hint()
  if self._api_hint ~= nil then return self._api_hint or nil end
  self._api_hint = false
  local base = tostring(self:base_url() or ""):gsub("/+$", "")
  local origin, base_path = base:match("^(https?://[^/]+)(.*)$")
  if not origin or base_path:match("/api$") then return nil end
  local with_api = base .. "/api"
  -- A listing (a safe GET) with the same key: 2xx means /api serves the Morph API.
  local t = self._transport_at and self._transport_at(with_api)
  local ok, resp = pcall(function() return t and t:call("instances.list", {}) end)
  if ok and type(resp) == "table" and resp.status and resp.status >= 200 and resp.status < 300 then
    self._api_base = with_api
    self._api_hint = ("the base URL %s does not serve the Morph API, %s does: set MORPH_BASE_URL=%s")
      :format(base, with_api, with_api)
  end
  return self._api_hint or nil
end


--- Closes the client (safe twice).
function Client:close()
  self.transport:close()
end


-- client:<group>_<action>(<path params...>, [body,] [query]) for every endpoint.
local methods = {}
for name, ep in pairs(morph.endpoints) do
  local method = name:gsub("%.", "_", 1)
  local params = PARAMS[name]
  methods[method] = function(self, ...)
    local n = select("#", ...)
    local argv = { ... }
    local a = {}
    local i = 1
    for _, p in ipairs(params) do
      local v = argv[i]
      if type(v) ~= "string" then
        error(("bad argument #%d to '%s' (%s expected)"):format(i, method, p), 2)
      end
      a[p] = v
      i = i + 1
    end
    if ep.body then
      local b = argv[i]
      if b ~= nil and type(b) ~= "table" and type(b) ~= "string" then
        error(("bad argument #%d to '%s' (table expected)"):format(i, method), 2)
      end
      a.body = b
      i = i + 1
    end
    if i <= n and argv[i] ~= nil then
      if type(argv[i]) ~= "table" then error(("bad argument #%d to '%s' (table expected)"):format(i, method), 2) end
      a.query = argv[i]
    end
    return self:call(name, a)
  end
end
for k, v in pairs(Client) do methods[k] = v end
methods.instances_exec = Client.instances_exec

local mt = {
  __name = "galley.MorphClient",
  __index = methods,
  __tostring = function(self) return tostring(self.transport) end,
  __close = function(self) self.transport:close() end,
}


local function check_retry(r)
  local out = {}
  for k, v in pairs(M.DEFAULT_RETRY) do out[k] = v end
  if r == nil then return out end
  if type(r) ~= "table" then error("retry must be a table", 3) end
  for k in pairs(M.DEFAULT_RETRY) do
    if r[k] ~= nil then
      if math.type(r[k]) ~= "integer" then error(("bad field 'retry.%s' (integer expected)"):format(k), 3) end
      out[k] = r[k]
    end
  end
  if out.max_attempts < 1 then error("retry.max_attempts must be at least 1", 3) end
  if out.base_delay_ms < 0 or out.max_delay_ms < 0 then error("retry delays must be >= 0", 3) end
  return out
end


--- Creates a client.
---@class galley.MorphClientOptions
---@field api_key? string default MORPH_API_KEY
---@field base_url? string default MORPH_BASE_URL, else https://cloud.morph.so/api
---@field connect_timeout_ms? integer
---@field timeout_ms? integer per request (default 120 s)
---@field retry? {max_attempts?: integer, base_delay_ms?: integer, max_delay_ms?: integer, max_elapsed_ms?: integer}
---@field log? fun(rec: {method: string, path: string, status: integer, ms: number, attempt: integer, error?: string})
---@field insecure? boolean allow plain http:// to a remote host

---@param opts? galley.MorphClientOptions
---@return galley.MorphClient|nil
---@return galley.Error|nil err AUTHENTICATION_ERROR (no key) | VALIDATION_ERROR (bad base URL)
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'new' (table expected)", 2) end
  local retry = check_retry(opts.retry)
  if opts.log ~= nil and type(opts.log) ~= "function" then error("log must be a function", 2) end
  local t, err = morph.new({ api_key = opts.api_key, base_url = opts.base_url, timeout_ms = opts.timeout_ms,
    connect_timeout_ms = opts.connect_timeout_ms, insecure = opts.insecure })
  if not t then return nil, err end
  -- For the /api hint after a 404: a transport to another base URL with the same key (kept in
  -- this closure, never in a field a printout could show).
  local function transport_at(url)
    return morph.new({ api_key = opts.api_key, base_url = url, timeout_ms = 5000,
      connect_timeout_ms = opts.connect_timeout_ms, insecure = opts.insecure })
  end
  return setmetatable({ transport = t, retry = retry, log = opts.log, _transport_at = transport_at }, mt)
end

return M
