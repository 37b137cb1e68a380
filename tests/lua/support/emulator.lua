--- support.emulator: runs `galley emulate` for a spec and talks to it.
--
--   local emulator = require("support.emulator")
--   local em = emulator.start{boot_delay_ms = 20, latency_ms = 0, faults = {...}}
--   -- em.base_url ("http://127.0.0.1:PORT/api"), em.api_key, em.port, em.state_dir,
--   -- em.ssh_port (the SSH gateway's; nil with opts.ssh = false or without libssh)
--   local r = em:request("POST", "/instance?snapshot_id=snapshot_galleydev", {metadata = {}})
--   -- r.status, r.headers, r.body, r.json (decoded body or nil)
--   em:fault{method = "POST", path = "/instance/*/exec", action = "status", status = 503,
--            retry_after = 1, count = 1}
--   em:log()     -> {{method, path, status, at, ms, conn, fault?}, ...}   (paths relative to /api)
--   em:stop()    (always: in `finally` or lazy_teardown)
--
-- The emulator gets a random API key through its environment (never argv) and its own
-- temporary state directory, removed by stop(). Fault tables take the fields documented in
-- lua/galley/emulator/faults.lua: method, path, count, action, status, retry_after, delay_ms,
-- bytes. Control calls fail the spec (error) when the emulator does not answer them.
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")
local support = require("support")

local M = {}

--- Snapshot every emulator starts with.
M.SNAPSHOT = "snapshot_galleydev"

--- The argv modes specs run in (`galley emulate --argv-mode`).
M.ARGV_MODES = { "exec", "join" }

local START_TIMEOUT_MS = 20000
local STOP_TIMEOUT_MS = 10000

---@class support.Emulator
---@field base_url string
---@field root_url string
---@field api_key string
---@field port integer
---@field state_dir string
local Emulator = {}
Emulator.__index = Emulator

local function random_key()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(16)
  f:close()
  return "morph_test_" .. bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

local function fault_spec(f)
  if type(f) == "string" then return f end
  local parts = {}
  for _, k in ipairs({ "method", "path", "count", "action", "status", "retry_after", "delay_ms", "bytes" }) do
    if f[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(f[k]) end
  end
  return table.concat(parts, ",")
end

-- Finalizers that stop the emulators still running when the Lua state closes.
M.unstopped = {}

--- Starts an emulator on a free port and waits until it listens.
-- opts.snapshots: extra seeded snapshots as "ID" or "ID=DIR"; opts.verbose: the emulator logs
-- each request to its stderr (see em:drain()); opts.argv_mode: "exec" (default) or "join" (a
-- multi-element exec command is space-joined and run by /bin/sh -c, like an SSH-style server);
-- opts.args: more `galley emulate` arguments.
---@param opts? {boot_delay_ms?: integer, latency_ms?: integer, faults?: (table|string)[], snapshots?: string[],
---  argv_mode?: "exec"|"join", verbose?: boolean, args?: string[], ssh?: boolean}
---@return support.Emulator
function M.start(opts)
  opts = opts or {}
  local mk = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-emu-spec.XXXXXX" }, timeout_ms = 10000 }))
  assert(mk.exit_code == 0, mk.stderr)
  local dir = mk.stdout:gsub("%s+$", "")
  local key = random_key()
  local argv = { support.bin }
  if opts.verbose then argv[#argv + 1] = "-v" end
  for _, a in ipairs({ "emulate", "--port", "0", "--state-dir", dir }) do argv[#argv + 1] = a end
  if opts.boot_delay_ms then
    argv[#argv + 1] = "--boot-delay-ms"
    argv[#argv + 1] = tostring(opts.boot_delay_ms)
  end
  if opts.latency_ms then
    argv[#argv + 1] = "--latency-ms"
    argv[#argv + 1] = tostring(opts.latency_ms)
  end
  for _, f in ipairs(opts.faults or {}) do
    argv[#argv + 1] = "--fault"
    argv[#argv + 1] = fault_spec(f)
  end
  for _, s in ipairs(opts.snapshots or {}) do
    argv[#argv + 1] = "--snapshot"
    argv[#argv + 1] = s
  end
  if opts.argv_mode then
    argv[#argv + 1] = "--argv-mode"
    argv[#argv + 1] = opts.argv_mode
  end
  if opts.ssh == false then argv[#argv + 1] = "--no-ssh" end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local h, err = proc.spawn({ argv = argv, env = { MORPH_API_KEY = key }, env_mode = "extend" })
  if not h then
    proc.run({ argv = { "rm", "-rf", "--", dir } })
    error("cannot start the emulator: " .. tostring(err))
  end
  local self = setmetatable({ api_key = key, state_dir = dir, handle = h, stdout = "", stderr = "" }, Emulator)
  -- A spec that does not stop it: stopped (and its state directory removed) when the spec
  -- process's Lua state closes.
  M.unstopped[#M.unstopped + 1] = setmetatable({}, { __gc = function() pcall(self.stop, self) end })
  local deadline = runtime.now_ms() + START_TIMEOUT_MS
  while not self.stdout:find("\n[^\n]*\n") do -- the ready line and the SSH gateway's
    local left = deadline - runtime.now_ms()
    local kind, data, extra = nil, nil, nil
    if left > 0 then kind, data, extra = h:read(left) end
    if kind == "stdout" then
      self.stdout = self.stdout .. data
    elseif kind == "stderr" then
      self.stderr = self.stderr .. data
    else
      local why = kind == "exit" and ("exited with " .. tostring(data) .. " " .. tostring(extra)) or "did not start"
      self:stop()
      error("emulator " .. why .. ": " .. self.stderr)
    end
  end
  local port = self.stdout:match("^listening on http://127%.0%.0%.1:(%d+)/api\n")
  if not port then
    self:stop()
    error("unexpected first line from the emulator: " .. self.stdout)
  end
  self.port = math.tointeger(tonumber(port))
  self.ssh_port = math.tointeger(tonumber(self.stdout:match("\nssh gateway on 127%.0%.0%.1:(%d+)\n")))
  self.root_url = "http://127.0.0.1:" .. port
  self.base_url = self.root_url .. "/api"
  self.session = http.session({ timeout_ms = 60000 })
  return self
end

--- Collects whatever the emulator wrote to stderr so far (so its pipe never fills).
---@return string everything written to stderr since start
function Emulator:drain()
  local h = self.handle
  while h do
    local kind, data = h:read(0)
    if kind == "stderr" then
      self.stderr = self.stderr .. data
    elseif kind == "stdout" then
      self.stdout = self.stdout .. data
    else
      break
    end
  end
  return self.stderr
end

--- A raw call with the bearer key. `path` is relative to /api unless it starts with "/_emulator".
-- `body` may be a table (sent as JSON) or a string. Returns {status, headers, body, json} or
-- nil, err (transport failures are results here: fault specs need them).
---@param method string
---@param path string
---@param body? table|string
---@param headers? table<string, string>
---@return table|nil resp
---@return table|nil err
function Emulator:request(method, path, body, headers)
  self:drain()
  local url = (path:sub(1, 10) == "/_emulator" and self.root_url or self.base_url) .. path
  local h = { Authorization = "Bearer " .. self.api_key, ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  if type(body) == "table" then body = cjson.encode(body) end
  local resp, err = self.session:request({ method = method, url = url, headers = h, body = body })
  if not resp then return nil, err end
  local ok, decoded = pcall(cjson.decode, resp.body)
  resp.json = ok and decoded or nil
  return resp
end

local function control(self, method, path, body, want)
  local resp, err = self:request(method, path, body)
  if not resp then error("emulator control call " .. method .. " " .. path .. " failed: " .. tostring(err), 3) end
  if resp.status ~= want then
    error(("emulator control call %s %s: status %d: %s"):format(method, path, resp.status, resp.body), 3)
  end
  return resp.json
end

--- Request records `{method, path, status, ms, conn, fault?}` (control routes excluded).
---@return table[]
function Emulator:log()
  return control(self, "GET", "/_emulator/log", nil, 200).data
end

function Emulator:clear_log()
  control(self, "DELETE", "/_emulator/log", nil, 204)
end

--- `{instances, snapshots, images, faults, options}`; instances carry `dir` and `processes`.
---@return table
function Emulator:state()
  return control(self, "GET", "/_emulator/state", nil, 200)
end

--- Installs a fault: {method?, path, count?, action?, status?, retry_after?, delay_ms?, bytes?}.
---@param f table
---@return table[] the faults now installed
function Emulator:fault(f)
  return control(self, "POST", "/_emulator/faults", f, 200).data
end

function Emulator:clear_faults()
  control(self, "DELETE", "/_emulator/faults", nil, 204)
end

--- Stops the emulator (asks, then signals), waits for it and removes its state directory.
-- Safe to call twice.
function Emulator:stop()
  local h = self.handle
  if not h then return end
  self.handle = nil
  if self.session then
    self.session:close()
    self.session = nil
  end
  pcall(h.kill, h, "TERM")
  local done = h:wait(STOP_TIMEOUT_MS)
  if not done then
    pcall(h.kill, h, "KILL")
    h:wait(STOP_TIMEOUT_MS)
  end
  pcall(h.close, h)
  proc.run({ argv = { "rm", "-rf", "--", self.state_dir }, timeout_ms = 60000 })
end

--- The host pid of a process an instance reported as `pid` (its pid namespace's number: the
-- last NSpid entry in /proc/PID/status) whose command line is `cmdline` (NUL-separated), or nil.
---@param pid string|integer
---@param cmdline string
---@param within? string only a process whose mounts come from this directory (the emulator's state_dir)
---@return string|nil
function M.host_pid(pid, cmdline, within)
  local deadline = runtime.now_ms() + 10000 -- the background command may not have exec'd yet
  repeat
    local found = M.find_host_pid(pid, cmdline, within)
    if found then return found end
    runtime.sleep_ms(20)
  until runtime.now_ms() > deadline
  return nil
end


--- One look for host_pid.
function M.find_host_pid(pid, cmdline, within)
  local names = require("galley.core.fs").list("/proc") or {}
  for _, name in ipairs(names) do
    if name:match("^%d+$") then
      local f = io.open("/proc/" .. name .. "/cmdline", "rb")
      local cmd = f and f:read("a")
      if f then f:close() end
      if cmd == cmdline then
        f = io.open("/proc/" .. name .. "/status", "r")
        local status = f and f:read("a") or ""
        if f then f:close() end
        local nspid = status:match("\nNSpid:([^\n]*)")
        if nspid and nspid:match("(%d+)%s*$") == tostring(pid) then
          -- Other instances on the machine number their processes from 1 too: only one whose
          -- mounts come from `within` (an emulator's state directory) is this one.
          f = within and io.open("/proc/" .. name .. "/mountinfo", "r")
          local mounts = f and f:read("a") or ""
          if f then f:close() end
          if not within or mounts:find(within, 1, true) then return name end
        end
      end
    end
  end
  return nil
end


return M
