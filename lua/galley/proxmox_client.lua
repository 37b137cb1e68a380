--- galley.proxmox_client: the Proxmox VE API client (wire table and policy), on galley.core.http.
--
--   local pc = require("galley.proxmox_client")
--   local c = assert(pc.new{ url = "https://pve:8006", token_id = "root@pam!galley", token_secret = s })
--   local nodes = c:call("nodes")                                   -- the `data` of the answer
--   local upid = c:call("lxc.start", { node = "pve", vmid = 105 })
--   c:wait_task(upid, { deadline_ms = runtime.now_ms() + 60000 })
--
-- The wire (one table, like galley.core.morph's endpoint table): `/api2/json` + path, bodies
-- form-encoded (application/x-www-form-urlencoded, booleans as 0/1), answers `{"data": ...}`.
-- Every request waits on the event loop (galley.core.http): inside a galley.task it yields.
--
-- Policy:
--   * auth: an API token (`Authorization: PVEAPIToken=USER@REALM!NAME=SECRET`) or a ticket from
--     POST /access/ticket (cookie `PVEAuthCookie`, `CSRFPreventionToken` on every non-GET),
--     fetched on first use and renewed after `TICKET_RENEW_S` (PVE tickets live 2 h); a 401 on a
--     ticket renews it once;
--   * errors: `M.map_error` (400 + `errors` → VALIDATION_ERROR naming the parameter, 401
--     AUTHENTICATION_ERROR, 403 PERMISSION_DENIED, 501 NOT_SUPPORTED, 500 "does not exist" →
--     NOT_FOUND, "already exists" → CONFLICT, lock timeouts → LOCKED (retryable), other 5xx
--     SERVER_ERROR). The message is the body's `message`, else (older servers) the status line;
--   * retries: GETs on 5xx (not the mapped ones), LOCKED, 429 and transport failures; changes only
--     when the request provably never reached the server (connect refused), or was refused (LOCKED,
--     429). A change whose answer was lost is NOT sent again: the error carries `sent = true` and
--     the caller looks the result up (a create: the container by its id);
--   * tasks: `wait_task(upid, {deadline_ms})`: one wait for every UPID (node from the UPID), polled
--     with backoff (100 ms growing to 2 s) up to the caller's deadline; `OK` and `WARNINGS: N`
--     succeed (warnings counted in the result), anything else is an error carrying `exitstatus`,
--     `upid` and the task log's last lines (`log`).
-- Secrets (token secret, password, ticket, CSRF token) are registered with galley.log and never
-- appear in logs, errors or argv.
local cjson = require("cjson")
local errors = require("galley.errors")
local http = require("galley.core.http")
local logmod = require("galley.log")
local runtime = require("galley.core.runtime")

local M = {}

M.API_PREFIX = "/api2/json"
M.TICKET_RENEW_S = 90 * 60
M.DEFAULT_TIMEOUT_MS = 60000
M.DEFAULT_RETRY = { max_attempts = 4, base_delay_ms = 200, max_delay_ms = 4000 }
M.TASK_LOG_LINES = 20

--- The endpoints: method, path (with {params}), and whether repeating it is harmless.
M.ENDPOINTS = {
  ["version"] = { "GET", "/version" },
  ["ticket"] = { "POST", "/access/ticket", safe = true },
  ["nodes"] = { "GET", "/nodes" },
  ["nextid"] = { "GET", "/cluster/nextid" },
  ["resources"] = { "GET", "/cluster/resources" },
  ["cluster.status"] = { "GET", "/cluster/status" },
  ["storage.list"] = { "GET", "/nodes/{node}/storage" },
  ["storage.content"] = { "GET", "/nodes/{node}/storage/{storage}/content" },
  ["lxc.list"] = { "GET", "/nodes/{node}/lxc" },
  ["lxc.create"] = { "POST", "/nodes/{node}/lxc" },
  ["lxc.config"] = { "GET", "/nodes/{node}/lxc/{vmid}/config" },
  ["lxc.set_config"] = { "PUT", "/nodes/{node}/lxc/{vmid}/config", safe = true },
  ["lxc.status"] = { "GET", "/nodes/{node}/lxc/{vmid}/status/current" },
  ["lxc.start"] = { "POST", "/nodes/{node}/lxc/{vmid}/status/start" },
  ["lxc.stop"] = { "POST", "/nodes/{node}/lxc/{vmid}/status/stop" },
  ["lxc.shutdown"] = { "POST", "/nodes/{node}/lxc/{vmid}/status/shutdown" },
  ["lxc.delete"] = { "DELETE", "/nodes/{node}/lxc/{vmid}" },
  ["lxc.clone"] = { "POST", "/nodes/{node}/lxc/{vmid}/clone" },
  ["lxc.template"] = { "POST", "/nodes/{node}/lxc/{vmid}/template" },
  ["lxc.snapshot"] = { "POST", "/nodes/{node}/lxc/{vmid}/snapshot" },
  ["lxc.snapshot_delete"] = { "DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}" },
  ["lxc.interfaces"] = { "GET", "/nodes/{node}/lxc/{vmid}/interfaces" },
  ["task.status"] = { "GET", "/nodes/{node}/tasks/{upid}/status" },
  ["task.log"] = { "GET", "/nodes/{node}/tasks/{upid}/log" },
  ["task.stop"] = { "DELETE", "/nodes/{node}/tasks/{upid}", safe = true },
}

M.HINTS = {
  AUTHENTICATION_ERROR = "check PVE_TOKEN_ID/PVE_TOKEN_SECRET (or the user and password)",
  PERMISSION_DENIED = "the token lacks a privilege: a privilege-separated token (privsep=1) has only the ACLs "
    .. "given to the token itself; grant them (pveum acl modify / --tokens) or create it with --privsep 0",
  NOT_SUPPORTED = "this Proxmox VE does not have that API call (older version?)",
  LOCKED = "the container is locked by another task; galley retries, or wait for that task",
}


-- Percent-encoding of everything but RFC 3986 unreserved characters.
local function pct(s, keep)
  return (tostring(s):gsub("[^%w%-%._~" .. (keep or "") .. "]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end
M.pct = pct


--- application/x-www-form-urlencoded body of `t` (keys sorted; booleans 0/1; nil skipped).
---@param t table<string, string|number|boolean>|nil
---@return string
function M.form_encode(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "boolean" then
      v = v and "1" or "0"
    elseif math.type(v) == "float" and v == math.floor(v) then
      v = ("%d"):format(v)
    end
    parts[#parts + 1] = pct(k) .. "=" .. pct(v)
  end
  return table.concat(parts, "&")
end


--- Parses a UPID ("UPID:node:pid:pstart:starttime:type:id:user:"); nil when malformed.
---@param upid any
---@return {node: string, pid: integer, pstart: integer, starttime: integer, type: string, id: string, user: string}|nil
function M.parse_upid(upid)
  if type(upid) ~= "string" or #upid > 512 then return nil end
  local node, pid, pstart, starttime, ty, id, user =
    upid:match("^UPID:([%w][%w%-%.]*):(%x+):(%x+):(%x+):([^:]*):([^:]*):([^:]+):$")
  if not node then return nil end
  return { node = node, pid = tonumber(pid, 16), pstart = tonumber(pstart, 16), starttime = tonumber(starttime, 16),
    type = ty, id = id, user = user }
end


--- What a finished task's exitstatus means: ok, the warning count ("WARNINGS: N"), or the
--- error code a failure maps to (as 500 messages do, default SERVER_ERROR).
---@param exitstatus any
---@return boolean ok, integer warnings_or_nil, string|nil code
function M.task_result(exitstatus)
  if exitstatus == "OK" then return true, 0 end
  local n = type(exitstatus) == "string" and exitstatus:match("^WARNINGS: (%d+)$")
  if n then return true, math.tointeger(tonumber(n)) end
  return false, nil, M.code_for_message(tostring(exitstatus or "")) or "SERVER_ERROR"
end


--- What a PVE failure message says beyond its code, as `details.reason` of a failed task's
--- error: "linked_clones" for a template whose linked clones still live (PVE::Storage's "still in
--- use by linked clones", qemu-server's "... linked cloned", ZFS's "has dependent clones"); nil.
---@param msg string
---@return string|nil
function M.reason_for_message(msg)
  local m = msg:lower()
  if m:find("in use by linked clone", 1, true) or m:find("dependent clones", 1, true) then return "linked_clones" end
  return nil
end


--- The code a PVE failure message implies (nil when it says nothing specific).
---@param msg string
---@return string|nil
function M.code_for_message(msg)
  local m = msg:lower()
  if m:find("can't lock file", 1, true) or m:find("got timeout", 1, true) or m:find(" is locked", 1, true) then
    return "LOCKED"
  end
  if m:find("already exists", 1, true) then return "CONFLICT" end
  if M.reason_for_message(msg) == "linked_clones" then return "CONFLICT" end
  if m:find("does not exist", 1, true) or m:find("no such", 1, true) or m:find("not found", 1, true) then
    return "NOT_FOUND"
  end
  return nil
end


local function value(v)
  if v == cjson.null then return nil end
  return v
end
M.value = value


--- Maps an HTTP error answer: code, message, fields ({field, details = {errors}}).
---@param status integer
---@param body string|nil
---@param reason string|nil the status line's reason phrase
---@return string code, string message, table fields
function M.map_error(status, body, reason)
  local decoded
  if type(body) == "string" and body:sub(1, 1) == "{" then
    local ok, d = pcall(cjson.decode, body)
    if ok and type(d) == "table" then decoded = d end
  end
  local msg = decoded and type(value(decoded.message)) == "string" and decoded.message or nil
  if not msg or msg:match("^%s*$") then msg = (reason and reason ~= "") and reason or ("HTTP " .. status) end
  msg = msg:gsub("%s+$", "")
  local fields = {}
  local perr = decoded and type(value(decoded.errors)) == "table" and decoded.errors or nil
  if status == 400 then
    if perr then
      local names = {}
      for k in pairs(perr) do names[#names + 1] = tostring(k) end
      table.sort(names)
      if #names > 0 then
        fields.field = names[1]
        local parts = {}
        for _, k in ipairs(names) do parts[#parts + 1] = ("%s: %s"):format(k, tostring(perr[k]):gsub("%s+$", "")) end
        msg = msg .. " (" .. table.concat(parts, "; ") .. ")"
        fields.details = { errors = perr }
      end
    end
    return "VALIDATION_ERROR", msg, fields
  end
  if status == 401 then return "AUTHENTICATION_ERROR", msg, fields end
  if status == 403 then return "PERMISSION_DENIED", msg, fields end
  if status == 501 then return "NOT_SUPPORTED", msg, fields end
  if status == 404 then return "NOT_FOUND", msg, fields end
  if status == 429 then return "RATE_LIMIT", msg, fields end
  if status >= 500 then return M.code_for_message(msg) or "SERVER_ERROR", msg, fields end
  return errors.code_for_http_status(status) or "PROTOCOL_ERROR", msg, fields
end


--- Exponential backoff with equal jitter for attempt n (1-based).
function M.backoff_ms(retry, n)
  local d = math.min(retry.max_delay_ms, retry.base_delay_ms * (2 ^ (n - 1)))
  return math.floor(d / 2 + math.random() * d / 2)
end


local Client = {}
Client.__index = Client
Client.__name = "galley.ProxmoxClient"


function Client._error(_, code, message, fields)
  fields = fields or {}
  if fields.hint == nil then fields.hint = M.HINTS[code] end
  if code == "LOCKED" then fields.retryable = true end
  fields.kind = fields.kind or "ProviderError"
  return errors.new(code, message, fields)
end


-- Path of endpoint `ep` with params from args (raises on a missing one).
local function build_path(name, ep, args)
  return (ep[2]:gsub("{(%w+)}", function(p)
    local v = args[p]
    if v == nil then error(("proxmox_client: %s needs '%s'"):format(name, p), 4) end
    return pct(v, ":@!")
  end))
end


function Client:_auth_headers(method)
  local h = {}
  if self.token_header then
    h["Authorization"] = self.token_header
    return h
  end
  if not self.ticket or os.time() - self.ticket_at >= M.TICKET_RENEW_S then
    local ok, err = self:login()
    if not ok then return nil, err end
  end
  h["Cookie"] = "PVEAuthCookie=" .. self.ticket
  if method ~= "GET" then h["CSRFPreventionToken"] = self.csrf end
  return h
end


--- Fetches a ticket with the user and password (PVE: POST /access/ticket).
---@return true|nil, galley.Error|nil
function Client:login()
  local resp, herr = self:_send("POST", "/access/ticket", M.form_encode({ username = self.username,
    password = self.password }), {})
  if not resp then
    return nil, self:_error(herr.code == "HTTP_CONNECT" and "NETWORK_ERROR" or "NETWORK_ERROR",
      "login: " .. tostring(herr.message), { operation = "ticket", sent = herr.sent })
  end
  if resp.status ~= 200 then
    local code, msg, f = M.map_error(resp.status, resp.body, resp.reason)
    if resp.status == 401 then code = "AUTHENTICATION_ERROR" end
    f.operation, f.status = "ticket", resp.status
    return nil, self:_error(code, "login: " .. msg, f)
  end
  local ok, d = pcall(cjson.decode, resp.body)
  local data = ok and type(d) == "table" and type(d.data) == "table" and d.data or nil
  if not data or type(data.ticket) ~= "string" or type(data.CSRFPreventionToken) ~= "string" then
    return nil, self:_error("PROTOCOL_ERROR", "login: the answer has no ticket and CSRFPreventionToken",
      { operation = "ticket", status = resp.status })
  end
  logmod.register_secret(data.ticket)
  logmod.register_secret(data.CSRFPreventionToken)
  self.ticket, self.csrf, self.ticket_at = data.ticket, data.CSRFPreventionToken, os.time()
  return true
end


-- One HTTP exchange (no policy). headers: extra headers.
function Client:_send(method, path, body, headers, timeout_ms)
  local h = { ["Accept"] = "application/json" }
  for k, v in pairs(headers) do h[k] = v end
  if body then h["Content-Type"] = "application/x-www-form-urlencoded" end
  self.requests = self.requests + 1
  local t0 = runtime.now_ms()
  if not self.session then self.session = http.session({}) end -- used again after close
  local resp, err = self.session:request({ method = method, url = self.base .. M.API_PREFIX .. path, headers = h,
    body = body, timeout_ms = timeout_ms or self.timeout_ms, connect_timeout_ms = self.connect_timeout_ms,
    no_resend = method ~= "GET", ca_file = self.ca_file, pinned_public_key = self.pin, insecure = self.insecure })
  if self.log then
    pcall(self.log, { method = method, path = path:match("^[^?]*"), status = resp and resp.status or 0,
      ms = runtime.now_ms() - t0, error = err and err.code or nil })
  end
  return resp, err
end


local TRANSPORT_CODE = { HTTP_TIMEOUT = "TIMEOUT", HTTP_CONNECT = "NETWORK_ERROR", HTTP_NETWORK = "NETWORK_ERROR",
  HTTP_TLS = "NETWORK_ERROR" }


--- Performs endpoint `name`. args: path parameters by name, `query` (table), `body` (table,
--- form-encoded), `timeout_ms`. Returns the answer's `data` (cjson.null becomes nil → true) or
--- nil, err.
---@param name string
---@param args? table
---@return any|nil data
---@return galley.Error|nil err
function Client:call(name, args)
  local ep = M.ENDPOINTS[name]
  if not ep then error("proxmox_client: unknown endpoint " .. tostring(name), 2) end
  args = args or {}
  local method = ep[1]
  local path = build_path(name, ep, args)
  if args.query and next(args.query) then path = path .. "?" .. M.form_encode(args.query) end
  local body = (method == "POST" or method == "PUT") and M.form_encode(args.body) or nil
  local idempotent = method == "GET" or ep.safe
  local retry = self.retry
  local attempt = 0
  local renewed = false
  local info = { operation = name, resource = args.vmid and ("ct:" .. tostring(args.vmid)) or nil }
  while true do
    attempt = attempt + 1
    info.attempt = attempt
    local headers, aerr = self:_auth_headers(method)
    if not headers then return nil, aerr end
    local resp, herr = self:_send(method, path, body, headers, args.timeout_ms)
    local code, msg, fields, retryable
    if resp and resp.status >= 200 and resp.status < 300 then
      local ok, d = pcall(cjson.decode, resp.body)
      if not ok or type(d) ~= "table" then
        if method == "DELETE" then return true end
        return nil, self:_error("PROTOCOL_ERROR", ("%s: the answer is not a JSON object"):format(name),
          { operation = name, status = resp.status, resource = info.resource })
      end
      local data = value(d.data)
      if data == nil then return true end
      return data
    end
    if resp then
      code, msg, fields = M.map_error(resp.status, resp.body, resp.reason)
      fields.status = resp.status
      if resp.status == 401 and self.password and not renewed then
        renewed = true
        self.ticket = nil
        attempt = attempt - 1
        goto again
      end
      retryable = code == "LOCKED" or code == "RATE_LIMIT"
        or (idempotent and (code == "SERVER_ERROR" or resp.status == 502 or resp.status == 503 or resp.status == 504))
    else
      if herr.code == "INTERRUPTED" then
        return nil, self:_error("INTERRUPTED", ("%s: interrupted"):format(name),
          { operation = name, signal = herr.signal, sent = herr.sent, resource = info.resource })
      end
      code = TRANSPORT_CODE[herr.code] or "NETWORK_ERROR"
      msg = tostring(herr.message)
      fields = { sent = herr.sent }
      retryable = idempotent or herr.sent == false
    end
    if not retryable or attempt >= retry.max_attempts then
      for k, v in pairs(info) do if fields[k] == nil then fields[k] = v end end
      fields.max_attempts = retry.max_attempts
      local what = resp and ("HTTP %d"):format(resp.status) or herr.code
      return nil, self:_error(code, ("%s: %s %s: %s: %s"):format(name, method, path:match("^[^?]*"), what, msg), fields)
    end
    do
      local ok, perr = runtime.sleep_ms(M.backoff_ms(retry, attempt))
      if not ok then
        return nil, self:_error(perr.code or "INTERRUPTED", name .. ": interrupted while waiting to retry",
          { operation = name, signal = perr.signal })
      end
    end
    ::again::
  end
end


--- Waits for task `upid` to finish (node from the UPID), polling with backoff until
--- `deadline_ms` (runtime.now_ms() clock; default 10 minutes from now). Returns
--- `{exitstatus, warnings, upid}` or nil, err: the task's failure (code from its exitstatus,
--- fields exitstatus, upid, log = its last lines), TIMEOUT (the task still runs; err.upid), or a
--- poll's error that is not transient.
---@param upid string
---@param opts? {deadline_ms?: integer, operation?: string, stop_on_timeout?: boolean}
---@return table|nil result
---@return galley.Error|nil err
function Client:wait_task(upid, opts)
  opts = opts or {}
  local operation = opts.operation or "task"
  local t = M.parse_upid(upid)
  if not t then
    return nil, self:_error("PROTOCOL_ERROR", ("%s: expected a UPID, got %s"):format(operation,
      errors.quote(tostring(upid))), { operation = operation })
  end
  local deadline = opts.deadline_ms or (runtime.now_ms() + 600000)
  local delay = 100
  local last
  while true do
    local st, err = self:call("task.status", { node = t.node, upid = upid })
    if st then
      if type(st) == "table" and st.status == "stopped" then
        local exit = value(st.exitstatus)
        local ok, warnings, code = M.task_result(exit)
        if ok then
          if warnings > 0 and self.warn then pcall(self.warn, upid, warnings) end
          return { exitstatus = exit, warnings = warnings, upid = upid }
        end
        local lines = self:task_log_tail(t.node, upid)
        local e = self:_error(code, ("%s: task %s failed: %s"):format(operation, t.type, tostring(exit)),
          { operation = operation, upid = upid, exitstatus = exit, log = lines,
            resource = t.id ~= "" and ("ct:" .. t.id) or nil,
            details = { reason = M.reason_for_message(tostring(exit)) } })
        return nil, e
      end
    elseif err.code == "INTERRUPTED" or err.code == "AUTHENTICATION_ERROR" or err.code == "PERMISSION_DENIED"
        or err.code == "VALIDATION_ERROR" then
      return nil, err
    else
      last = err
    end
    local now = runtime.now_ms()
    if now >= deadline then
      if opts.stop_on_timeout then self:call("task.stop", { node = t.node, upid = upid }) end
      return nil, self:_error("TIMEOUT", ("%s: task %s (%s) still running at the deadline"):format(operation,
        t.type, upid), { operation = operation, upid = upid, last_error = last })
    end
    local ok, perr = runtime.sleep_ms(math.min(delay, deadline - now))
    if not ok then
      return nil, self:_error(perr.code or "INTERRUPTED", operation .. ": interrupted while waiting for task " .. upid,
        { operation = operation, upid = upid, signal = perr.signal })
    end
    delay = math.min(math.floor(delay * 1.5), 2000)
  end
end


--- The last lines of a task's log (strings), or {} when it cannot be read.
function Client:task_log_tail(node, upid, n)
  n = n or M.TASK_LOG_LINES
  local log = self:call("task.log", { node = node, upid = upid, query = { start = 0, limit = 50000 } })
  local lines = {}
  if type(log) == "table" then
    for _, l in ipairs(log) do
      if type(l) == "table" and type(l.t) == "string" then lines[#lines + 1] = l.t end
    end
  end
  local out = {}
  for i = math.max(1, #lines - n + 1), #lines do out[#out + 1] = lines[i] end
  return out
end


function Client:close()
  if self.session then self.session:close() end
  self.session = nil
end


---@class galley.ProxmoxClientOptions
---@field url string e.g. https://pve:8006 (no path)
---@field token_id? string USER@REALM!NAME
---@field token_secret? string
---@field username? string USER@REALM (ticket auth)
---@field password? string
---@field ca_file? string PEM bundle that signs the node's certificate
---@field pin? string libcurl public-key pin ("sha256//BASE64")
---@field insecure? boolean no TLS verification
---@field timeout_ms? integer per request (default 60 s)
---@field connect_timeout_ms? integer
---@field retry? {max_attempts?: integer, base_delay_ms?: integer, max_delay_ms?: integer}
---@field log? fun(rec: table)
---@field warn? fun(upid: string, warnings: integer)

--- Creates a client (checks nothing over the network).
---@param opts galley.ProxmoxClientOptions
---@return table client
function M.new(opts)
  local retry = {}
  for k, v in pairs(M.DEFAULT_RETRY) do retry[k] = (opts.retry or {})[k] or v end
  local c = setmetatable({
    base = opts.url:gsub("/+$", ""),
    username = opts.username, password = opts.password,
    ca_file = opts.ca_file, pin = opts.pin, insecure = opts.insecure or nil,
    timeout_ms = opts.timeout_ms or M.DEFAULT_TIMEOUT_MS, connect_timeout_ms = opts.connect_timeout_ms,
    retry = retry, log = opts.log, warn = opts.warn, requests = 0,
    session = http.session({}),
  }, Client)
  if opts.token_id then
    logmod.register_secret(opts.token_secret)
    c.token_header = ("PVEAPIToken=%s=%s"):format(opts.token_id, opts.token_secret)
    logmod.register_secret(c.token_header)
  elseif opts.password then
    logmod.register_secret(opts.password)
  end
  return c
end

return M
