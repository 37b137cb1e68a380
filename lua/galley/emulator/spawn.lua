--- galley.emulator.spawn: start `galley emulate` as a child process and talk to it.
--   local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0 })
--   -- emu.base_url ("http://127.0.0.1:PORT/api"), emu.api_key (random; passed through the
--   -- child's environment, never argv), emu.state_dir
--   emu.stop()   -- SIGTERM, wait, remove the state directory (also runs at the run's end)
-- Recipes use it to run against an offline Morph API (e2e-smoke without MORPH_API_KEY).
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local M = {}

local START_TIMEOUT_MS = 30000

---@class galley.EmulatorChild
---@field base_url string
---@field api_key string
---@field port integer
---@field state_dir string
---@field ssh_host string|nil "127.0.0.1" when the SSH gateway runs
---@field ssh_port integer|nil the SSH gateway's port (user `<instance_id>:<api_key>`, any key)
---@field stop fun() stops the emulator and removes its state (idempotent)

--- Reads process `h`'s stdout up to its first newline within timeout_ms (after what `buf`
--- already holds). Returns the line (without its newline), what followed it, and stderr so far;
--- or nil, stderr so far, and how the wait ended: "exit" (with the code) or nil (time passed).
---@param h table a galley.core.proc Process
---@param timeout_ms integer
---@param buf? string
---@return string|nil line
---@return string rest_or_stderr
---@return string|nil stderr_or_kind
---@return any data
function M.read_line(h, timeout_ms, buf)
  local out, errtext = buf or "", ""
  local deadline = runtime.now_ms() + timeout_ms
  while not out:find("\n", 1, true) do
    local left = deadline - runtime.now_ms()
    local kind, data = nil, nil
    if left > 0 then kind, data = h:read(left) end
    if kind == "stdout" then
      out = out .. data
    elseif kind == "stderr" then
      errtext = errtext .. data
    else
      return nil, errtext, kind, data
    end
  end
  local nl = out:find("\n", 1, true)
  return out:sub(1, nl - 1), out:sub(nl + 1), errtext
end


--- Reads a starting emulator's first stdout line, `listening on http://127.0.0.1:PORT<path>`, and
--- returns PORT; on anything else (or nothing within timeout_ms) calls stop() and raises
--- EMULATOR_START with what it printed on stderr. Shared by the Morph and Proxmox emulators.
--- Also returns what followed the first line on stdout (read in the same chunks).
---@param h table the emulator's Process
---@param stop fun()
---@param what string the command, for messages
---@param path string the API path after the port ("/api", "/api2/json")
---@param timeout_ms? integer default 30 s
---@return string port
---@return string rest
function M.listening_port(h, stop, what, path, timeout_ms)
  local line, rest, errtext = M.read_line(h, timeout_ms or START_TIMEOUT_MS)
  if not line then
    stop()
    errors.raise("EMULATOR_START", what .. " did not start", { stderr = rest })
  end
  local port = line:match("^listening on http://127%.0%.0%.1:(%d+)" .. path:gsub("%p", "%%%0") .. "$")
  if not port then
    stop()
    errors.raise("EMULATOR_START", "unexpected first line from " .. what .. ": " .. line, { stderr = errtext })
  end
  return port, rest
end

-- The second stdout line of `galley emulate`: `ssh gateway on 127.0.0.1:PORT` or `ssh gateway
-- off`. Returns the port or nil.
local function ssh_line(h, stop, rest)
  local line = M.read_line(h, START_TIMEOUT_MS, rest)
  if not line then
    stop()
    errors.raise("EMULATOR_START", "galley emulate did not say whether its SSH gateway runs")
  end
  return math.tointeger(tonumber(line:match("^ssh gateway on 127%.0%.0%.1:(%d+)$")))
end

-- Finalizers of the stops registered outside a run: strong references until the Lua state
-- closes (galley's exit, also after a script's error).
local exit_stops = {}

--- Runs stop() when the run ends, or outside a run (`galley SCRIPT.lua`, `-e`, the REPL) when
--- galley exits, also after an error: an emulator child, its instances and its state directory
--- never outlive the galley that started them. Shared by the Morph and Proxmox emulators.
---@param stop fun()
---@param label string
function M.stop_at_exit(stop, label)
  if require("galley.run").defer(stop, label) then return end
  exit_stops[#exit_stops + 1] = setmetatable({}, { __gc = function() pcall(stop) end })
end

--- Starts an emulator on a free loopback port and waits until it listens.
---@param opts? {boot_delay_ms?: integer, latency_ms?: integer, faults?: string[], snapshots?: string[],
---  sandbox?: boolean, argv_mode?: "exec"|"join", state_parent?: string, ssh?: boolean, ssh_port?: integer}
--- ssh: false starts no SSH gateway; ssh_port: its port (given, a gateway that cannot start fails
--- the start).
--- state_parent: where the state directory (and so every instance's files) is made, default /tmp
--- (benchmarks pass /dev/shm: see bench/workspace).
---@return galley.EmulatorChild
---@raise EMULATOR_START (could not start; err.stderr holds its output)
function M.start(opts)
  opts = opts or {}
  local exe = assert(runtime.executable())
  local dir, derr = fs.mkdtemp((opts.state_parent or "/tmp") .. "/galley-emulator.")
  if not dir then
    errors.raise("EMULATOR_START", ("cannot create the emulator's state directory in %s: %s"):format(
      opts.state_parent or "/tmp", tostring(derr)), { field = "state_parent" })
  end
  local key = "morph_emulator_" .. codec.random_hex(16)
  local argv = { exe, "-q", "emulate", "--port", "0", "--state-dir", dir }
  local function add(flag, v)
    argv[#argv + 1] = flag
    argv[#argv + 1] = tostring(v)
  end
  if opts.boot_delay_ms then add("--boot-delay-ms", opts.boot_delay_ms) end
  if opts.latency_ms then add("--latency-ms", opts.latency_ms) end
  for _, f in ipairs(opts.faults or {}) do add("--fault", f) end
  for _, s in ipairs(opts.snapshots or {}) do add("--snapshot", s) end
  if opts.sandbox == false then argv[#argv + 1] = "--no-sandbox" end
  if opts.argv_mode then add("--argv-mode", opts.argv_mode) end
  if opts.ssh == false then argv[#argv + 1] = "--no-ssh" end
  if opts.ssh_port then add("--ssh-port", opts.ssh_port) end
  local h, err = proc.spawn({ argv = argv, env = { MORPH_API_KEY = key }, env_mode = "extend", stdin = "null" })
  if not h then
    fs.remove_tree(dir)
    errors.raise("EMULATOR_START", "cannot start galley emulate: " .. tostring(err))
  end
  local stopped = false
  local child = { api_key = key, state_dir = dir }
  function child.stop()
    if stopped then return end
    stopped = true
    pcall(h.kill, h, "TERM")
    pcall(h.wait, h, 20000)
    pcall(h.close, h)
    fs.remove_tree(dir)
  end
  local port, rest = M.listening_port(h, child.stop, "galley emulate", "/api")
  child.ssh_port = ssh_line(h, child.stop, rest)
  child.ssh_host = child.ssh_port and "127.0.0.1" or nil
  child.port = math.tointeger(tonumber(port))
  child.base_url = "http://127.0.0.1:" .. port .. "/api"
  M.stop_at_exit(child.stop, "stop the emulator")
  return child
end

return M
