--- galley.emulator.backend: where emulated instances keep their files and run their commands.
-- This one uses plain directories under the state dir and runs commands on this machine:
--   <root>/instances/<id>/   an instance's files; commands run there with HOME set to it
--   <root>/snapshots/<id>/   a snapshot's files, copied into each instance started from it
-- The `local` provider (bubblewrap sandboxes) will bring another implementation with the same
-- methods: create_instance, remove_instance, snapshot_instance, create_snapshot,
-- remove_snapshot, exec, spawn, kill, pause, resume, shutdown.
local errors = require("galley.errors")
local proc = require("galley.core.proc")

local M = {}

--- How long a file operation (mkdir, cp, rm) may take.
local FS_TIMEOUT_MS = 10 * 60 * 1000

---@class galley.emulator.Backend
---@field root string
---@field running table<string, table<table, boolean>>  instance id -> set of live process handles
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

--- Turns an exec `command` into an argv: one element is a shell command line (as on the
-- service), several are run directly.
---@param command string[]
---@return string[]
function M.command_argv(command)
  if #command == 1 then return { "/bin/sh", "-c", command[1] } end
  return command
end

--- A backend storing everything under `root` (created if missing).
---@param opts {root: string}
---@return galley.emulator.Backend|nil
---@return galley.Error|nil err
function M.new(opts)
  local self = setmetatable({ root = opts.root, running = {}, paused = {} }, Backend)
  local ok, err = fs({ "mkdir", "-p", self.root .. "/instances", self.root .. "/snapshots" })
  if not ok then return nil, err end
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

--- Starts `command` (see command_argv) in the instance's directory. The handle is tracked until
-- `release(id, handle)`; kill/pause/resume/remove_instance signal every tracked process group.
---@param id string
---@param command string[]
---@return table|nil handle  galley.core.proc process: read(timeout_ms), kill(sig), close()
---@return galley.Error|nil err  PROC_SPAWN when the program cannot be started
function Backend:spawn(id, command)
  local dir = self:instance_dir(id)
  local h, err = proc.spawn({
    argv = M.command_argv(command),
    cwd = dir,
    env = { HOME = dir, PWD = dir },
    env_mode = "extend",
  })
  if not h then return nil, err end
  local set = self.running[id] or {}
  self.running[id] = set
  set[h] = h:pid()
  if self.paused[id] then h:kill("STOP") end
  return h
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

--- Runs `command` to completion: `{exit_code, stdout, stderr}`. A program that cannot be
-- started gives exit code 127, as a shell would.
---@param id string
---@param command string[]
---@return {exit_code: integer, stdout: string, stderr: string}|nil
---@return galley.Error|nil err  (INTERRUPTED when the emulator is being stopped)
function Backend:exec(id, command)
  local h, err = self:spawn(id, command)
  if not h then
    if errors.is(err) and err.code == "PROC_SPAWN" then
      return { exit_code = 127, stdout = "", stderr = tostring(command[1]) .. ": command not found\n" }
    end
    return nil, err
  end
  local out, errs = {}, {}
  local code
  while not code do
    local kind, a = h:read(1000)
    if kind == "stdout" then
      out[#out + 1] = a
    elseif kind == "stderr" then
      errs[#errs + 1] = a
    elseif kind == "exit" then
      code = a
    elseif kind == nil and a ~= nil then -- interrupted: give up on the process
      self:release(id, h)
      return nil, a
    end
  end
  self:release(id, h)
  return { exit_code = code, stdout = table.concat(out), stderr = table.concat(errs) }
end

--- Sends `sig` to one tracked process group. A handle that another request is reading cannot
-- be used meanwhile (galley.core.proc refuses), so then the group, whose id is the pid recorded
-- at spawn, is signalled with kill(1).
local function signal_one(h, pgid, sig)
  if not pcall(h.kill, h, sig) then
    proc.run({ argv = { "kill", "-s", sig, "--", "-" .. tostring(pgid) }, timeout_ms = 10000 })
  end
end

local function signal_all(self, id, sig)
  local list = {}
  for h, pgid in pairs(self.running[id] or {}) do list[#list + 1] = { h, pgid } end
  for _, e in ipairs(list) do signal_one(e[1], e[2], sig) end
end

--- Kills every process the instance is running (their readers then see them exit).
---@param id string
function Backend:kill(id)
  signal_all(self, id, "KILL")
end

--- Freezes the instance's processes (SIGSTOP to each process group).
---@param id string
function Backend:pause(id)
  self.paused[id] = true
  signal_all(self, id, "STOP")
end

--- Lets the instance's processes run again.
---@param id string
function Backend:resume(id)
  self.paused[id] = nil
  signal_all(self, id, "CONT")
end

--- Kills every process of every instance (the emulator is stopping).
function Backend:shutdown()
  local ids = {}
  for id in pairs(self.running) do ids[#ids + 1] = id end
  for _, id in ipairs(ids) do self:kill(id) end
end

return M
