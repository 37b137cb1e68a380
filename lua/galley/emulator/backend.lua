--- galley.emulator.backend: the fallback instance store, used only when bubblewrap is missing
-- or `--no-sandbox` is given (the default is galley.emulator.sandbox: local-provider sandboxes).
-- It uses plain directories under the state dir and runs commands on this machine:
--   <root>/instances/<id>/   an instance's files; commands run there with HOME set to it
--   <root>/snapshots/<id>/   a snapshot's files, copied into each instance started from it
-- Commands get a fresh environment (PATH, HOME, PWD, USER, LOGNAME, SHELL, LANG, TZ from the
-- emulator's, nothing else: no API key) plus GALLEY_EMULATOR_INSTANCE=<token>:<id>, which marks
-- every process of the instance, including daemons left running after an exec returns. Stop,
-- pause and resume find the instance's processes by that mark (in /proc) and signal them.
-- The `local` provider (bubblewrap sandboxes) will bring another implementation with the same
-- methods: create_instance, remove_instance, snapshot_instance, create_snapshot,
-- remove_snapshot, exec, spawn, spawn_plan, release, kill, pause, resume, pids, shutdown.
local errors = require("galley.errors")
local paths = require("galley.paths")
local proc = require("galley.core.proc")

local M = {}

--- Bytes of one exec's stdout (and of its stderr) kept, like the local provider: the first and
-- the last half, the middle dropped and the result marked `truncated`.
M.MAX_OUTPUT = 64 * 1024 * 1024

--- How long a file operation (mkdir, cp, rm) may take.
local FS_TIMEOUT_MS = 10 * 60 * 1000

--- The environment variable marking an instance's processes.
M.MARK = "GALLEY_EMULATOR_INSTANCE"

local INHERITED = { "PATH", "USER", "LOGNAME", "LANG", "TZ" }

---@class galley.emulator.Backend
---@field root string
---@field token string  distinguishes this emulator's processes from another's
---@field running table<string, table<table, integer>>  instance id -> {live handle = its pgid}
---@field paused table<string, boolean>
local Backend = {}
Backend.__index = Backend

local function fs(argv)
  local r, err = proc.run({ argv = argv, timeout_ms = FS_TIMEOUT_MS })
  if not r then return nil, err end
  if r.exit_code ~= 0 then
    return nil, errors.new("EMULATOR_FS", ("%s failed (exit %d): %s"):format(argv[1], r.exit_code, r.stderr))
  end
  return true
end

--- How a multi-element exec `command` runs: "exec" runs it as an argv; "join" space-joins it
-- and runs the line with /bin/sh -c, as an SSH-style server does.
M.ARGV_MODES = { exec = true, join = true }

--- Turns an exec `command` into an argv: one element is a shell command line (as on the
-- service); several are run directly (mode "exec", the default) or space-joined into one shell
-- line (mode "join").
---@param command string[]
---@param mode? "exec"|"join"
---@return string[]
function M.command_argv(command, mode)
  if #command == 1 then return { "/bin/sh", "-c", command[1] } end
  if mode == "join" then return { "/bin/sh", "-c", table.concat(command, " ") } end
  return command
end

--- A backend storing everything under `root` (created if missing).
---@param opts {root: string}
---@return galley.emulator.Backend|nil
---@return galley.Error|nil err
function M.new(opts)
  local token = {}
  for i = 1, 16 do token[i] = ("%x"):format(math.random(0, 15)) end
  local self = setmetatable({ root = opts.root, token = table.concat(token), running = {}, paused = {} }, Backend)
  local ok, err = pcall(function()
    for _, d in ipairs({ self.root, self.root .. "/instances", self.root .. "/snapshots" }) do paths.private_dir(d) end
  end)
  if not ok then return nil, errors.wrap(err, nil, "EMULATOR_FS") end
  return self
end

---@param id string
---@return string
function Backend:instance_dir(id)
  return self.root .. "/instances/" .. id
end

---@param id string
---@return string
function Backend:snapshot_dir(id)
  return self.root .. "/snapshots/" .. id
end

local function copy_tree(from, to)
  local ok, err = fs({ "mkdir", "-p", to })
  if not ok then return nil, err end
  return fs({ "cp", "-a", "--", from .. "/.", to .. "/" })
end

--- Creates an instance's directory, filled with a snapshot's files when `snapshot_id` is given.
---@param id string
---@param snapshot_id? string
---@return true|nil
---@return galley.Error|nil err
function Backend:create_instance(id, snapshot_id)
  if snapshot_id then return copy_tree(self:snapshot_dir(snapshot_id), self:instance_dir(id)) end
  return fs({ "mkdir", "-p", self:instance_dir(id) })
end

--- Kills the instance's processes and deletes its files.
---@param id string
---@return true|nil
---@return galley.Error|nil err
function Backend:remove_instance(id)
  self:kill(id)
  self.running[id] = nil
  self.paused[id] = nil
  return fs({ "rm", "-rf", "--", self:instance_dir(id) })
end

--- Copies an instance's files into a new snapshot.
---@param id string
---@param snapshot_id string
---@return true|nil
---@return galley.Error|nil err
function Backend:snapshot_instance(id, snapshot_id)
  return copy_tree(self:instance_dir(id), self:snapshot_dir(snapshot_id))
end

--- Creates a snapshot's directory, empty or a copy of the host directory `from_dir`.
---@param snapshot_id string
---@param from_dir? string
---@return true|nil
---@return galley.Error|nil err
function Backend:create_snapshot(snapshot_id, from_dir)
  if from_dir then return copy_tree(from_dir, self:snapshot_dir(snapshot_id)) end
  return fs({ "mkdir", "-p", self:snapshot_dir(snapshot_id) })
end

---@param snapshot_id string
---@return true|nil
---@return galley.Error|nil err
function Backend:remove_snapshot(snapshot_id)
  return fs({ "rm", "-rf", "--", self:snapshot_dir(snapshot_id) })
end

--- The environment an instance's commands get.
---@param id string
---@return table<string, string>
function Backend:environment(id)
  local dir = self:instance_dir(id)
  local env = { HOME = dir, PWD = dir, SHELL = "/bin/sh", [M.MARK] = self.token .. ":" .. id }
  for _, k in ipairs(INHERITED) do env[k] = os.getenv(k) end
  env.PATH = env.PATH or "/usr/local/bin:/usr/bin:/bin"
  return env
end

--- Starts `command` (see command_argv) in the instance's directory. The handle is tracked until
-- `release(id, handle)`.
---@param id string
---@param command string[]
---@return table|nil handle  galley.core.proc process: read(timeout_ms), kill(sig), close()
---@return galley.Error|nil err  PROC_SPAWN when the program cannot be started
function Backend:spawn(id, command)
  local dir = self:instance_dir(id)
  local h, err = proc.spawn({
    argv = M.command_argv(command, self.argv_mode),
    cwd = dir,
    env = self:environment(id),
    env_mode = "replace",
  })
  if not h then return nil, err end
  local set = self.running[id] or {}
  self.running[id] = set
  set[h] = h:pid()
  if self.paused[id] then h:kill("STOP") end
  return h
end

--- How to start a command in the instance without starting it (the SSH gateway does):
-- `{argv, env, cwd}`, the command's argv to be appended to `argv` (empty here). The
-- environment carries the mark, so stop, pause and delete find those processes too.
---@param id string
---@return {argv: string[], env: table<string, string>, cwd: string}
function Backend:spawn_plan(id)
  return { argv = {}, env = self:environment(id), cwd = self:instance_dir(id) }
end

--- Stops tracking a handle and closes it (kills what is left of its group, reaps it). Called by
-- the one thread that reads the handle, once its exit was seen or it is abandoned.
---@param id string
---@param h table
function Backend:release(id, h)
  local set = self.running[id]
  if set then set[h] = nil end
  pcall(h.close, h)
end

-- One stream's output, capped like the local provider's: the first max/2 bytes and the last
-- max/2 (whole chunks are dropped from the front of the tail as it grows, so memory stays
-- about max).
local function capture(max)
  return { head = {}, nhead = 0, tail = {}, first = 1, last = 0, ntail = 0, dropped = 0, max = max }
end

local function capture_add(c, s)
  local head_max = c.max - c.max // 2
  if c.nhead < head_max then
    local take = s:sub(1, head_max - c.nhead)
    c.head[#c.head + 1] = take
    c.nhead = c.nhead + #take
    s = s:sub(#take + 1)
    if s == "" then return end
  end
  local tail_max = c.max // 2
  c.last = c.last + 1
  c.tail[c.last] = s
  c.ntail = c.ntail + #s
  while c.ntail - #c.tail[c.first] >= tail_max do
    c.ntail = c.ntail - #c.tail[c.first]
    c.dropped = c.dropped + #c.tail[c.first]
    c.tail[c.first] = nil
    c.first = c.first + 1
  end
end

local function capture_result(c)
  local tail = table.concat(c.tail, "", c.first, c.last)
  local tail_max = c.max // 2
  if #tail > tail_max then
    c.dropped = c.dropped + #tail - tail_max
    tail = tail:sub(#tail - tail_max + 1)
  end
  return table.concat(c.head) .. tail, c.dropped
end

--- Runs `command` to completion: `{exit_code, stdout, stderr, truncated?}`. Each stream keeps
-- at most `max_output` bytes (default M.MAX_OUTPUT: head and tail, `truncated = true` when
-- something was dropped). A program that cannot be started gives exit code 127, as a shell
-- would.
---@param id string
---@param command string[]
---@param max_output? integer
---@param gone? fun(): boolean true once the client left (the command is then killed: CLIENT_GONE)
---@return {exit_code: integer, stdout: string, stderr: string, truncated: boolean|nil}|nil
---@return galley.Error|nil err  (INTERRUPTED when the emulator is being stopped)
function Backend:exec(id, command, max_output, gone)
  local h, err = self:spawn(id, command)
  if not h then
    if errors.is(err) and err.code == "PROC_SPAWN" then
      return { exit_code = 127, stdout = "", stderr = tostring(command[1]) .. ": command not found\n" }
    end
    return nil, err
  end
  local cap = { stdout = capture(max_output or M.MAX_OUTPUT), stderr = capture(max_output or M.MAX_OUTPUT) }
  local code
  while not code do
    local kind, a = h:read(gone and 250 or 1000) -- yields to other requests while the command runs
    if kind == "stdout" or kind == "stderr" then
      capture_add(cap[kind], a)
    elseif kind == "exit" then
      code = a
    elseif kind == nil and a ~= nil then -- interrupted: give up on the process
      self:release(id, h)
      return nil, a
    end
    if not code and gone and gone() then
      -- The client closed its connection (Ctrl-C, a timeout): the command is killed, as an
      -- SSH server kills a command whose channel closed, instead of running on unread.
      self:release(id, h)
      return nil, errors.new("CLIENT_GONE", "the client closed its connection before the command ended")
    end
  end
  self:release(id, h)
  local out, out_dropped = capture_result(cap.stdout)
  cap.stdout = nil
  local errs, err_dropped = capture_result(cap.stderr)
  return { exit_code = code, stdout = out, stderr = errs,
    truncated = (out_dropped > 0 or err_dropped > 0) or nil }
end

--- The exec loop over any backend's spawn/release (the sandbox backend uses it too).
M.exec = Backend.exec

--- Pids of the instance's processes (every instance's when `id` is nil), found by their mark.
---@param id? string
---@return integer[]
function Backend:pids(id)
  local mark = "\0" .. M.MARK .. "=" .. self.token .. ":" .. (id and (id .. "\0") or "")
  local r = proc.run({ argv = { "ls", "-1", "/proc" }, timeout_ms = 10000 })
  local pids = {}
  for pid in (r and r.stdout or ""):gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/environ", "rb")
    if f then
      local env = f:read("a")
      f:close()
      if env and ("\0" .. env):find(mark, 1, true) then pids[#pids + 1] = math.tointeger(tonumber(pid)) end
    end
  end
  return pids
end

--- Sends `sig` ("KILL", "STOP", "CONT") to the instance's processes (every instance's when `id`
-- is nil): the tracked ones through their handles where free, the rest found by their mark.
local function signal_instance(self, id, sig)
  local ids = {}
  if id then ids[1] = id else for i in pairs(self.running) do ids[#ids + 1] = i end end
  for _, i in ipairs(ids) do
    for h in pairs(self.running[i] or {}) do pcall(h.kill, h, sig) end -- busy handles refuse
  end
  local pids = self:pids(id)
  if #pids > 0 then
    local argv = { "kill", "-s", sig, "--" }
    for _, pid in ipairs(pids) do argv[#argv + 1] = tostring(pid) end
    proc.run({ argv = argv, timeout_ms = 10000 })
  end
end

--- Kills every process the instance is running (readers of its commands then see them exit).
---@param id string
function Backend:kill(id)
  signal_instance(self, id, "KILL")
end

--- Freezes the instance's processes (SIGSTOP to each process group).
---@param id string
function Backend:pause(id)
  self.paused[id] = true
  signal_instance(self, id, "STOP")
end

--- Lets the instance's processes run again.
---@param id string
function Backend:resume(id)
  self.paused[id] = nil
  signal_instance(self, id, "CONT")
end

--- Kills every process of every instance (the emulator is stopping).
function Backend:shutdown()
  signal_instance(self, nil, "KILL")
end

return M
