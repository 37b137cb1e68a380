--- galley.tracker: what providers and the orchestrator tell the active run (a foundation module:
-- it requires nothing). galley.run (the user-level run context) plugs itself in when loaded;
-- with no run, providers still work and nothing is tracked.
--
--   local tracker = require("galley.tracker")
--   bopts = tracker.boot_options(bopts)        -- the run's tags and default TTL added
--   tracker.track_instance(provider, inst.id)  -- stopped at the end of the run unless kept
local M = {}

local run -- the plugged-in run module (galley.run), or nil

-- `galley -e` and `galley SCRIPT.lua` (main.c sets runtime.options().script) tag and track what
-- they boot even when the script never loads galley.run: it is loaded on the first call here.
local function plugged()
  if not run and type(require("galley.core.runtime").options().script) == "string" then require("galley.run") end
  return run
end

--- Plugs in the run module (galley.run does this itself).
---@param r table `{register_provider, boot_options, track_instance, snapshot_options, track_snapshot,
---  note_pending, current, defer}`
function M.set(r)
  run = r
end

--- Providers call this from `new`: the run checks their instances for leaks at the end.
---@param provider table
function M.register_provider(provider)
  if plugged() then run.register_provider(provider) end
end

--- Providers call this in `instances.boot`/`fork`: opts with the run's tags and default TTL
--- added (a copy; the caller's table is not changed).
---@param opts? table
---@return table
function M.boot_options(opts)
  if plugged() then return run.boot_options(opts) end
  local out = {}
  for k, v in pairs(opts or {}) do out[k] = v end
  local meta = {}
  for k, v in pairs(out.metadata or {}) do meta[k] = v end
  out.metadata = meta
  if out.ttl_seconds == false then out.ttl_seconds = nil end
  return out
end

--- Providers call this after a successful boot/fork.
---@param provider table
---@param instance_id string
---@param ttl_seconds? integer its TTL (so a later NOT_FOUND can say the TTL ran out)
function M.track_instance(provider, instance_id, ttl_seconds)
  if plugged() then run.track_instance(provider, instance_id, ttl_seconds) end
end

--- Providers call this in `instances.snapshot`/`snapshots.create`: sopts (a copy without `keep`)
--- with the run's tags added, and whether the snapshot is the run's (then call track_snapshot).
--- A snapshot with a `digest` is an image: untagged (see galley.run.snapshot_options).
---@param sopts? table
---@return table sopts, boolean tagged
function M.snapshot_options(sopts)
  if plugged() then return run.snapshot_options(sopts) end
  local out = {}
  for k, v in pairs(sopts or {}) do out[k] = v end
  if out.keep ~= nil and type(out.keep) ~= "boolean" then
    require("galley.errors").raise("VALIDATION_ERROR", "keep must be true or false", { field = "keep" })
  end
  out.keep = nil
  return out, false
end

--- Providers call this after a snapshot snapshot_options tagged was made.
---@param provider table
---@param snapshot_id string
---@param keep? boolean
function M.track_snapshot(provider, snapshot_id, keep)
  if plugged() then run.track_snapshot(provider, snapshot_id, keep) end
end

--- Providers call this when a create was cut off after it may have reached the service.
---@param provider table
---@param filter table<string, string>
---@param request_token? string
function M.note_pending(provider, filter, request_token)
  if plugged() then run.note_pending(provider, filter, request_token) end
end

--- Registers a cleanup hook that runs when the active run ends (galley.run's `defer`); false
--- outside a run (the caller then cleans up itself, e.g. in its `close`).
---@param fn fun()
---@param label? string
---@return boolean registered
function M.defer(fn, label)
  if plugged() and run.defer and run.defer(fn, label) then return true end
  local scope = M._scopes[#M._scopes]
  if not scope then return false end
  scope[#scope + 1] = { fn = fn, label = label or "cleanup" }
  return true
end

-- Open scopes of M.scope, innermost last.
M._scopes = {}

--- Runs fn(...) with a place for cleanups deferred outside a run (the CLI's commands: `galley
--- cp` interrupted mid-write leaves a temporary file only the deferred cleanup removes). They run
--- when fn returns or fails, last registered first, after a pending Ctrl-C is cleared (a second
--- one stops them); their own errors are dropped. Returns what fn returns; fn's error is raised.
---@param fn function
---@return any ...
function M.scope(fn, ...)
  local scope = {}
  M._scopes[#M._scopes + 1] = scope
  local r = table.pack(pcall(fn, ...))
  table.remove(M._scopes)
  if #scope > 0 then
    local runtime = require("galley.core.runtime")
    runtime.clear_signal() -- (fn's error, INTERRUPTED, still says which signal it was)
    for i = #scope, 1, -1 do
      if runtime.pending_signal() ~= 0 then break end
      pcall(scope[i].fn)
    end
  end
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end

--- The active run's context (keep, id, ...), or nil.
---@return table|nil
function M.current()
  return run and run.current() or nil
end

return M
