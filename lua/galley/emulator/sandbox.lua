--- galley.emulator.sandbox: the emulator's instances as `local` provider instances.
-- Every emulated instance is a local-provider instance, so it inherits that provider's isolation
-- (docs/api/providers.md, Isolation): its own user namespace with a full id range (root inside
-- is no one outside), pid, ipc and uts namespaces, the system directories read-only, the
-- instance's home at /root and its own /tmp, inside a per-instance cgroup. So a Morph-facing test
-- that writes /root/.claude/... writes into the instance, never into this machine's /root, it
-- cannot see the emulator's process (nor its API key), and stopping an instance kills everything
-- it started, daemons included.
-- Same methods as galley.emulator.backend (the plain-directory backend used when bubblewrap is
-- missing): create_instance, remove_instance, snapshot_instance, create_snapshot,
-- remove_snapshot, exec, spawn, spawn_plan, release, kill, pause, resume, shutdown, instance_dir,
-- snapshot_dir, running.
local backend_mod = require("galley.emulator.backend")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local logmod = require("galley.log")

local M = {}

---@class galley.emulator.Sandbox
---@field provider table the local provider
---@field instances table<string, string> emulator instance id -> local instance id
---@field snapshots table<string, string> emulator snapshot id -> local snapshot id
---@field running table<string, table<table, boolean>> emulator instance id -> live handles
local Sandbox = {}
Sandbox.__index = Sandbox

--- Whether this machine can sandbox instances (bubblewrap present and working).
---@param provider table a local provider
---@return boolean
function M.available(provider)
  return provider.capabilities.sandbox == true
end

--- A sandbox backend keeping its local instances under `root`.
---@param opts {root: string, provider?: table}
---@return galley.emulator.Sandbox|nil
---@return galley.Error|nil err
function M.new(opts)
  local ok, provider = pcall(function()
    return opts.provider or require("galley.providers.local").new({
      state_dir = opts.root .. "/local", log = logmod.silent(),
    })
  end)
  if not ok then return nil, errors.wrap(provider, nil, "EMULATOR_BACKEND") end
  return setmetatable({ provider = provider, root = opts.root, instances = {}, snapshots = {}, running = {} },
    Sandbox)
end

local function protect(fn, ...)
  local ok, res = pcall(fn, ...)
  if ok then return res or true end
  return nil, errors.wrap(res, nil, "EMULATOR_BACKEND")
end

function Sandbox:instance_dir(id)
  return self.root .. "/local/instances/" .. tostring(self.instances[id])
end

function Sandbox:snapshot_dir(id)
  return self.root .. "/local/snapshots/" .. tostring(self.snapshots[id])
end

--- Boots the local instance behind emulator instance `id` from an emulator snapshot.
function Sandbox:create_instance(id, snapshot_id)
  local local_snap = snapshot_id and self.snapshots[snapshot_id] or nil
  local inst, err = protect(self.provider.instances.boot, local_snap,
    { metadata = { emulator_instance = id }, ttl_seconds = false })
  if not inst then return nil, err end
  self.instances[id] = inst.id
  return true
end

function Sandbox:remove_instance(id)
  local lid = self.instances[id]
  if not lid then return true end
  self.instances[id] = nil
  self.running[id] = nil
  local ok, err = protect(self.provider.instances.terminate, lid)
  if not ok and errors.is(err, "NOT_FOUND") then return true end
  return ok, err
end

function Sandbox:snapshot_instance(id, snapshot_id)
  local snap, err = protect(self.provider.instances.snapshot, self.instances[id], {})
  if not snap then return nil, err end
  self.snapshots[snapshot_id] = snap.id
  return true
end

--- An empty snapshot, or one holding a copy of the host directory `from_dir` as its home.
function Sandbox:create_snapshot(snapshot_id, from_dir)
  local p = self.provider
  if not from_dir then
    self.snapshots[snapshot_id] = p.DEFAULT_SNAPSHOT or "snapshot_empty"
    return true
  end
  return protect(function()
    local inst = p.instances.boot(nil, { ttl_seconds = false })
    local ok, err = pcall(function()
      -- The sandbox hides the host's /tmp, so copy on the host into the instance's home
      -- (instances/<id>/home under the provider's state dir: its documented layout).
      local home = self.root .. "/local/instances/" .. inst.id .. "/home"
      local done, cerr = fs.remove(home) -- the fresh (empty) home is replaced by the copy
      if done then done, cerr = fs.copy_tree(from_dir, home) end
      if not done then
        errors.raise("EMULATOR_BACKEND", ("cannot copy %s into a snapshot: %s"):format(from_dir, tostring(cerr)))
      end
      if p.adopt_files then p.adopt_files(inst.id) end
      self.snapshots[snapshot_id] = p.instances.snapshot(inst.id, {}).id
    end)
    p.instances.terminate(inst.id)
    if not ok then error(err, 0) end
  end)
end

function Sandbox:remove_snapshot(snapshot_id)
  local lid = self.snapshots[snapshot_id]
  self.snapshots[snapshot_id] = nil
  if not lid or lid == (self.provider.DEFAULT_SNAPSHOT or "snapshot_empty") then return true end
  local ok, err = protect(self.provider.snapshots.delete, lid)
  if not ok and errors.is(err, "NOT_FOUND") then return true end
  return ok, err
end

--- Starts `command` in the instance (one element: through /bin/sh -c, as on the service;
-- several: see galley.emulator.backend.command_argv and `argv_mode`).
function Sandbox:spawn(id, command)
  local argv = backend_mod.command_argv(command, self.argv_mode)
  local lid = self.instances[id]
  if not lid then return nil, errors.new("NOT_FOUND", "no instance " .. tostring(id)) end
  local h, err = protect(self.provider.spawn, lid, argv)
  if not h then return nil, err end
  local set = self.running[id] or {}
  self.running[id] = set
  set[h] = true
  return h
end

--- How to start a command in the instance without starting it (the SSH gateway does):
-- `{argv, env, cwd}`, the command's argv to be appended to `argv`.
function Sandbox:spawn_plan(id)
  local lid = self.instances[id]
  if not lid then return nil, errors.new("NOT_FOUND", "no instance " .. tostring(id)) end
  local popts, err = protect(self.provider.spawn_options, lid, {})
  if not popts then return nil, err end
  return { argv = popts.argv, env = popts.env, cwd = popts.cwd or "/" }
end

function Sandbox:release(id, h)
  local set = self.running[id]
  if set then set[h] = nil end
  pcall(h.close, h)
end

--- Runs `command` to completion: `{exit_code, stdout, stderr}` (the same loop as the plain
-- backend's, over this backend's spawn/release).
Sandbox.exec = backend_mod.exec

--- Kills every process of the instance, keeping its files (reboot).
function Sandbox:kill(id)
  local lid = self.instances[id]
  if lid then protect(self.provider.instances.reboot, lid) end
end

function Sandbox:pause(id)
  local lid = self.instances[id]
  if lid then protect(self.provider.instances.pause, lid) end
end

function Sandbox:resume(id)
  local lid = self.instances[id]
  if lid then
    local ok, err = protect(self.provider.instances.get, lid)
    if ok and ok.status == "stopped" then protect(self.provider.instances.resume, lid) end
    return ok, err
  end
end

--- Terminates every instance (the emulator is stopping).
function Sandbox:shutdown()
  for id in pairs(self.instances) do self:remove_instance(id) end
end

return M
