--- galley.emulator: the Morph Cloud API served on 127.0.0.1, with instances that really run.
-- `/api/...` is the Morph API (galley.emulator.api) behind a bearer key, with optional latency
-- and injected faults (galley.emulator.faults). `/_emulator/...` are control routes, behind the
-- same key, never logged:
--   GET    /_emulator/log       {"object":"list","data":[{method, path, status, ms, conn, handled, fault?}],
--                                 "rejected": N (401s, counted), "server": {connection counters}}
--   DELETE /_emulator/log       204
--   GET    /_emulator/state     {instances, snapshots, images, faults, options} (no API key)
--   GET    /_emulator/faults    {"object":"list","data":[fault]}
--   POST   /_emulator/faults    body: a fault or an array of them -> the list
--   DELETE /_emulator/faults    204
--   POST   /_emulator/shutdown  200; the server stops after answering
--   POST   /_emulator/ssh/ID[/run]  how the SSH gateway runs a command in instance ID (below;
--                                    /run: for a command about to start, logged as method "SSH")
-- The SSH gateway (`galley __ssh-gateway`, src/core/ssh_gateway.h) is the emulator's guess of
-- Morph's ssh.cloud.morph.so: it starts with the emulator when libssh can be loaded (opts.ssh
-- false: not at all), listens on 127.0.0.1 (opts.ssh_port, 0: a free port), gets the API key on
-- its stdin (never argv or environment) and asks POST /_emulator/ssh/ID at login and
-- /_emulator/ssh/ID/run before each command:
-- 200 with NUL-terminated records `A<argv element>` `E<NAME=value>` `C<cwd>` (the command line
-- is appended to the argv), 404 unknown instance, 409 not ready (paused: refused unless its
-- wake_on.wake_on_ssh is set, then woken).
-- Log and fault paths are relative to /api and carry no query string. The log keeps the last
-- M.LOG_LIMIT records, each path cut to M.LOG_PATH_LIMIT bytes; a request with a body but
-- without the key is refused by the server before its body is read (counted, never logged).
local api_mod = require("galley.emulator.api")
local backend_mod = require("galley.emulator.backend")
local sandbox_mod = require("galley.emulator.sandbox")
local faults_mod = require("galley.emulator.faults")
local json = require("galley.emulator.json")
local errors = require("galley.errors")
local paths = require("galley.paths")
local httpd = require("galley.core.httpd")
local runtime = require("galley.core.runtime")
local proc = require("galley.core.proc")

local M = {}

--- The key used when neither --api-key nor MORPH_API_KEY is given.
M.DEV_API_KEY = "morph_galley_emulator_dev_key"

--- The snapshot every emulator starts with (what the recipes boot by default).
M.DEFAULT_SNAPSHOT = "snapshot_galleydev"

--- Most request records kept by the log.
M.LOG_LIMIT = 10000

--- Longest path kept in a log record (longer ones are cut).
M.LOG_PATH_LIMIT = 256

---@class galley.emulator.Options
---@field state_dir string        where instance and snapshot files live (created if missing)
---@field api_key string
---@field port? integer           0 (default) picks a free port
---@field latency_ms? integer     added before every /api request
---@field boot_delay_ms? integer  pending -> ready (default 50)
---@field faults? (table|string)[] faults to install at start (tables or key=value specs)
---@field snapshots? {id: string, dir?: string}[] extra ready snapshots (files copied from dir)
---@field verbose? boolean        one stderr line per request
---@field sandbox? boolean        false: run instance commands on the host (default: bubblewrap)
---@field argv_mode? "exec"|"join" a multi-element exec command: run as an argv (default), or
---                               space-joined and run by /bin/sh -c (an SSH-style server)
---@field max_output? integer     bytes kept of one exec's stdout and of its stderr (64 MiB)
---@field ssh? boolean           false: no SSH gateway (default: one when libssh can be loaded)
---@field ssh_port? integer       the SSH gateway's port (0 or nil: a free one); given, a gateway
---                               that cannot start is an error instead of a warning
---@field limits? table           galley.core.httpd.listen limits: max_body_bytes,
---                               max_header_bytes, max_connections, max_connections_per_client,
---                               header_timeout_ms, idle_timeout_ms

---@class galley.emulator.Emulator
---@field opts galley.emulator.Options
---@field api galley.emulator.Api
---@field faults galley.emulator.FaultList
---@field log table[]
---@field server any
---@field stop_requested boolean
local Emulator = {}
Emulator.__index = Emulator

local reply, detail = api_mod.reply, api_mod.detail

--- Creates an emulator (not yet listening).
---@param opts galley.emulator.Options
---@return galley.emulator.Emulator|nil
---@return galley.Error|nil err
function M.new(opts)
  assert(type(opts.state_dir) == "string", "emulator.new: state_dir required")
  assert(type(opts.api_key) == "string" and opts.api_key ~= "", "emulator.new: api_key required")
  if opts.argv_mode ~= nil and not backend_mod.ARGV_MODES[opts.argv_mode] then
    return nil, errors.new("EMULATOR_BAD_OPTION", ("argv_mode must be \"exec\" or \"join\", got %s"):format(
      tostring(opts.argv_mode)), { field = "argv_mode", hint = "galley emulate --argv-mode exec|join" })
  end
  -- The state directory holds every instance's files: this user's alone (0700, no symlink).
  local dir_ok, dir_err = pcall(paths.private_dir, opts.state_dir)
  if not dir_ok then return nil, errors.wrap(dir_err, nil, "FILE_IO_ERROR") end
  -- Instances are local-provider sandboxes (host read-only, home at /root) unless bubblewrap is
  -- missing or the caller opts out; the plain-directory backend then runs commands on the host.
  local backend, err
  if opts.sandbox ~= false then
    backend, err = sandbox_mod.new({ root = opts.state_dir })
    if backend and not sandbox_mod.available(backend.provider) then
      require("galley.progress").warn("galley emulate: WARNING: bubblewrap is not available; instance commands run "
        .. "on this machine with the caller's rights and absolute paths (/root/...) touch it. Install bubblewrap.")
      backend = nil
    elseif not backend then
      return nil, err
    elseif backend.provider.capabilities.isolation ~= "userns" then
      require("galley.progress").warn("galley emulate: WARNING: instances get no user and pid namespaces of their "
        .. "own here (isolation \"none\"): they see this machine's processes. Run scripts/setup (uidmap, "
        .. "subordinate ids).")
    end
  else
    require("galley.progress").warn("galley emulate: WARNING: --no-sandbox: instance commands run on this machine "
      .. "with the caller's rights; absolute paths (/root/...) touch it.")
  end
  if not backend then
    backend, err = backend_mod.new({ root = opts.state_dir })
    if not backend then return nil, err end
  end
  backend.argv_mode = opts.argv_mode or "exec"
  local self = setmetatable({
    opts = opts,
    api = api_mod.new({ backend = backend, boot_delay_ms = opts.boot_delay_ms or 50, max_output = opts.max_output }),
    faults = faults_mod.list(),
    log = {},
    rejected = 0,
    stop_requested = false,
  }, Emulator)
  for _, spec in ipairs(opts.faults or {}) do
    local f, problem
    if type(spec) == "string" then f, problem = faults_mod.parse(spec) else f, problem = faults_mod.validate(spec) end
    if not f then return nil, errors.new("EMULATOR_BAD_FAULT", "bad fault: " .. problem) end
    self.faults:add(f)
  end
  local seeds = { { id = M.DEFAULT_SNAPSHOT } }
  for _, s in ipairs(opts.snapshots or {}) do seeds[#seeds + 1] = s end
  for _, s in ipairs(seeds) do
    local ok
    ok, err = self.api:seed_snapshot(s.id, s.dir)
    if not ok then return nil, err end
  end
  return self
end

local function bearer(req)
  local h = req.headers.authorization
  return h and h:match("^[Bb]earer%s+(.-)%s*$")
end

function Emulator:authorized(req)
  return bearer(req) == self.opts.api_key
end

local function unauthorized(req)
  local resp = detail(401, bearer(req) and "Invalid API key" or "Not authenticated")
  resp.headers["WWW-Authenticate"] = "Bearer"
  return resp
end

function Emulator:record(entry)
  if #entry.path > M.LOG_PATH_LIMIT then entry.path = entry.path:sub(1, M.LOG_PATH_LIMIT) end
  if entry.status == 401 then self.rejected = self.rejected + 1 end
  local log = self.log
  log[#log + 1] = entry
  if #log > M.LOG_LIMIT then table.remove(log, 1) end
  if self.opts.verbose then
    io.stderr:write(("emulate: %s %s -> %d (%d ms, conn %d%s)\n"):format(entry.method, entry.path,
      entry.status, entry.ms, entry.conn, entry.fault and (", fault " .. entry.fault) or ""))
  end
end

--- Wraps a streamed response so the fault applies to it.
local function fault_stream(resp, fault)
  local inner = resp.stream
  if fault.action == "truncate" then
    local budget = fault.bytes
    local first = true
    resp.stream = function()
      if budget == nil and not first then return false end
      if budget ~= nil and budget <= 0 then return false end
      first = false
      local chunk = inner()
      if chunk == nil or chunk == false then return chunk end
      if budget then
        chunk = chunk:sub(1, budget)
        budget = budget - #chunk
      end
      return chunk
    end
  elseif fault.action == "malformed" then
    local sent = false
    resp.stream = function()
      if not sent then
        sent = true
        return 'data: {"type": "stdout", "content": \n\n'
      end
      return inner()
    end
  end
end

--- Applies a fault that lets the request be handled first.
local function fault_after(resp, fault)
  if fault.action == "delay" then
    runtime.sleep_ms(fault.delay_ms)
  elseif resp.stream then
    fault_stream(resp, fault)
  elseif fault.action == "malformed" then
    resp.status = 200
    resp.body = "{malformed" .. (resp.body or "")
  elseif fault.action == "truncate" then
    local body = resp.body or ""
    resp.truncate = fault.bytes or #body // 2
  end
end

--- The answer to a request that was handled but whose answer is lost: a stream is run to its
--- end first (the command finishes), then the connection is reset.
local function lose_answer(resp)
  if type(resp.stream) == "function" then
    while true do
      local ok, chunk = pcall(resp.stream)
      if not ok or chunk == nil or chunk == false then break end
    end
    if type(resp.close) == "function" then pcall(resp.close) end
  end
  return { reset = true }
end

--- Answers one /api request (path relative to /api).
function Emulator:handle_api(req, path)
  local t0 = runtime.now_ms()
  local latency = self.opts.latency_ms or 0
  if latency > 0 then runtime.sleep_ms(latency) end
  local fault = self.faults:take(req.method, path)
  local resp
  local handled = false
  if fault and fault.action == "stall" then runtime.sleep_ms(fault.delay_ms) end
  if fault and fault.action == "status" then
    resp = detail(fault.status, "injected fault: status " .. fault.status)
    if fault.retry_after then resp.headers["Retry-After"] = tostring(fault.retry_after) end
  elseif fault and fault.action == "reset" then
    resp = { reset = true }
  else
    if not self:authorized(req) then
      resp = unauthorized(req)
    else
      self.api:tick()
      resp = self.api:handle(req, path)
      handled = true
    end
    if fault and fault.action == "reset_after" then
      resp = lose_answer(resp)
    elseif fault then
      fault_after(resp, fault)
    end
  end
  self:record({
    method = req.method, path = path, status = resp.reset and 0 or resp.status,
    at = t0, ms = runtime.now_ms() - t0, conn = req.conn, fault = fault and fault.action or nil, handled = handled,
  })
  return resp
end

--- Requests refused for want of the key: 401s answered by the handler plus those the server
--- refused before reading their bodies.
---@return integer
function Emulator:rejected_count()
  return self.rejected + (self.server and self.server:stats().unauthorized or 0)
end

function Emulator:state()
  local s = self.api:dump()
  s.faults = json.array(self.faults:describe())
  s.options = {
    port = self.server and self.server:port() or self.opts.port or 0,
    state_dir = self.opts.state_dir,
    latency_ms = self.opts.latency_ms or 0,
    boot_delay_ms = self.opts.boot_delay_ms or 50,
    argv_mode = self.opts.argv_mode or "exec",
    ssh_port = self.ssh_port,
  }
  return s
end

--- Control routes under /_emulator.
function Emulator:handle_control(req, path)
  if not self:authorized(req) then return unauthorized(req) end
  local m = req.method
  if path == "/log" then
    if m == "GET" then
      local data = table.move(self.log, 1, #self.log, 1, {})
      return reply(200, { object = "list", data = json.array(data), rejected = self:rejected_count(),
        server = self.server and self.server:stats() or nil })
    end
    if m == "DELETE" then
      self.log = {}
      return { status = 204, headers = {}, body = "" }
    end
  elseif path == "/state" and m == "GET" then
    self.api:tick()
    return reply(200, self:state())
  elseif path == "/faults" then
    if m == "GET" then return reply(200, { object = "list", data = json.array(self.faults:describe()) }) end
    if m == "DELETE" then
      self.faults:clear()
      return { status = 204, headers = {}, body = "" }
    end
    if m == "POST" then
      local body = json.decode(req.body)
      if type(body) ~= "table" then return detail(422, "body must be a fault object or an array of them") end
      local list = body[1] ~= nil and body or { body }
      local valid = {}
      for _, spec in ipairs(list) do
        local f, problem = faults_mod.validate(spec)
        if not f then return detail(422, problem) end
        valid[#valid + 1] = f
      end
      for _, f in ipairs(valid) do self.faults:add(f) end
      return reply(200, { object = "list", data = json.array(self.faults:describe()) })
    end
  elseif path:match("^/ssh/[^/]+$") or path:match("^/ssh/[^/]+/run$") then
    if m ~= "POST" then return detail(405, "Method Not Allowed") end
    local t0 = runtime.now_ms()
    self.api:tick()
    local id, run = path:match("^/ssh/([^/]+)(.*)$")
    local plan, bad = self.api:ssh_plan(id)
    -- A command about to run (/run; a login only checks the instance) goes in the request log
    -- too, as method "SSH", so a test or a bench counts SSH commands beside the API requests.
    if run == "/run" then
      self:record({ method = "SSH", path = "/instance/" .. id .. "/ssh", status = plan and 200 or bad.status,
        at = t0, ms = runtime.now_ms() - t0, conn = req.conn, handled = plan ~= nil })
    end
    if not plan then return bad end
    return { status = 200, headers = { ["Content-Type"] = "application/octet-stream" }, body = M.encode_plan(plan) }
  elseif path == "/shutdown" and m == "POST" then
    self.stop_requested = true
    return reply(200, { detail = "shutting down" })
  else
    return detail(404, "Not Found")
  end
  return detail(405, "Method Not Allowed")
end

--- The request handler given to galley.core.httpd.
---@param req table
---@return table response
function Emulator:handle(req)
  local path = req.path
  if path:sub(1, 11) == "/_emulator/" then return self:handle_control(req, path:sub(11)) end
  if path == "/api" or path:sub(1, 5) == "/api/" then
    local rel = path:sub(5)
    if #rel > 1 then rel = rel:gsub("/+$", "") end
    if rel == "" then rel = "/" end
    return self:handle_api(req, rel)
  end
  return detail(404, "Not Found")
end

--- The SSH gateway's answer to POST /_emulator/ssh/ID: NUL-terminated records, `A` argv
--- elements, `E` NAME=value environment entries (sorted), `C` the working directory.
---@param plan {argv: string[], env: table<string, string>, cwd: string}
---@return string
function M.encode_plan(plan)
  local out = {}
  for _, a in ipairs(plan.argv) do out[#out + 1] = "A" .. a .. "\0" end
  local names = {}
  for k in pairs(plan.env or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do out[#out + 1] = "E" .. k .. "=" .. plan.env[k] .. "\0" end
  out[#out + 1] = "C" .. (plan.cwd or "/") .. "\0"
  return table.concat(out)
end

--- Exit code of `galley __ssh-gateway` when libssh cannot be loaded.
local GATEWAY_NO_LIBSSH = 3

--- Starts the SSH gateway for an emulator listening on `port`; sets self.ssh_port.
---@return true|nil
---@return galley.Error|nil err  EMULATOR_SSH (err.no_libssh when libssh is missing)
function Emulator:start_ssh(port)
  local exe = assert(runtime.executable())
  local env = { PATH = os.getenv("PATH") or "/usr/bin:/bin" }
  for _, k in ipairs({ "LANG", "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS" }) do env[k] = os.getenv(k) end
  local h, err = proc.spawn({
    argv = { exe, "__ssh-gateway", "--port", tostring(self.opts.ssh_port or 0),
      "--host-key", self.opts.state_dir .. "/ssh_host_ed25519_key", "--api", "http://127.0.0.1:" .. port },
    env = env, env_mode = "replace", stdin = "pipe",
  })
  if not h then return nil, errors.new("EMULATOR_SSH", "cannot start the SSH gateway: " .. tostring(err)) end
  h:write(self.opts.api_key .. "\n") -- the key travels on stdin; stdin's end stops the gateway
  local line, errtext, kind, data = require("galley.emulator.spawn").read_line(h, 15000)
  if not line then
    pcall(h.kill, h, "KILL")
    pcall(h.close, h)
    return nil, errors.new("EMULATOR_SSH", "the SSH gateway did not start: " .. errtext:gsub("%s+$", ""),
      { no_libssh = kind == "exit" and data == GATEWAY_NO_LIBSSH or nil,
        hint = "install libssh (apt-get install libssh-4), or pass --no-ssh" })
  end
  self.ssh_process = h
  self.ssh_port = math.tointeger(tonumber(line:match("^(%d+)$")))
  return true
end

--- Starts listening on 127.0.0.1 (and the SSH gateway unless opts.ssh is false; a gateway that
--- cannot start is an error when opts.ssh_port was given, else a warning and no gateway).
---@return integer|nil port
---@return galley.Error|nil err
function Emulator:start()
  local opts = { port = self.opts.port or 0, bearer = self.opts.api_key }
  for k, v in pairs(self.opts.limits or {}) do opts[k] = v end
  opts.handler = function(req) return self:handle(req) end
  local server, err = httpd.serve(opts)
  if not server then return nil, err end
  self.server = server
  if self.opts.ssh ~= false then
    local ok, serr = self:start_ssh(server:port())
    if not ok and self.opts.ssh_port and self.opts.ssh_port ~= 0 then
      self:stop()
      return nil, serr
    elseif not ok then
      require("galley.progress").warn("galley emulate: WARNING: no SSH gateway: " .. tostring(serr))
    end
  end
  return server:port()
end

--- Stops the SSH gateway (its connections end, their commands are killed).
function Emulator:stop_ssh()
  local h = self.ssh_process
  if not h then return end
  self.ssh_process, self.ssh_port = nil, nil
  pcall(h.kill, h, "TERM")
  pcall(h.wait, h, 15000)
  pcall(h.close, h)
end

--- Applies TTLs and boot delays until shutdown is requested or a signal arrives.
---@param tick_ms? integer
---@return true|nil
---@return galley.Error|nil err  (INTERRUPTED on Ctrl-C/SIGTERM)
function Emulator:wait(tick_ms)
  while not self.stop_requested do
    local ok, err = runtime.sleep_ms(tick_ms or 50)
    if not ok then return nil, err end
    self.api:tick()
  end
  return true
end

--- Kills every instance process and stops the server (requests still running lose their
--- connections; their tasks end on their own).
function Emulator:stop()
  self.stop_requested = true
  self:stop_ssh()
  self.api:shutdown()
  if self.server then
    self.server:stop()
    self.server = nil
  end
end

return M
