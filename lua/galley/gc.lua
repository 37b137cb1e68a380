--- galley.gc: finds instances created by galley runs that are finished or past their TTL and
-- stops them. An instance is galley's when its metadata carries `galley_run`. It is collected
-- when its TTL has passed, or when its run was started on this machine (`galley_host`) and is
-- no longer alive (no live process behind `<state>/runs/<run-id>`). Instances marked
-- `galley_keep` (booted with --keep) are left alone unless `include_kept` is set; runs from
-- other machines are judged by TTL only unless `all_hosts` is set. Snapshots a run made
-- (`instances.snapshot` inside a run, `galley -e` or a script: metadata `galley_run`) are deleted
-- by the same rule (they have no TTL), unless made with `keep = true` (`galley_keep`). Images
-- (snapshots taken with a digest, e.g. by `snapshots.build`) carry no run tag: never collected.
local run = require("galley.run")

local M = {}

---@class galley.GcCandidate
---@field provider string provider name
---@field kind "instance"|"snapshot"
---@field id string instance or snapshot id
---@field status string
---@field run string|nil run id
---@field recipe string|nil
---@field reason string why it is collected
---@field action string "stopped" | "would stop" | "deleted" | "would delete" | "in use" (a snapshot that
--- instances gc leaves still use: Proxmox linked clones; a later gc deletes it) | "failed"
---@field error? string

local function expired(inst, now)
  local ttl = inst.ttl
  local at = type(ttl) == "table" and (ttl.expires_at or ttl.ttl_expire_at) or nil
  if type(at) ~= "number" then return false end
  if at > 1e12 then at = at / 1000 end
  return at <= now
end

--- Decides which of a provider's instances to collect.
---@param provider table a galley provider
---@param opts? {all_hosts?: boolean, include_kept?: boolean, now?: integer}
---@return galley.GcCandidate[] found
---@return {provider: string, id: string, run: string, reason: string}[] skipped kept instances
function M.find(provider, opts)
  opts = opts or {}
  local now = opts.now or os.time()
  local host = run.hostname()
  run.check_runs_dir() -- run files in a directory others control are never believed: UNSAFE_PATH
  local out, skipped = {}, {}
  local function judge(kind, item)
    local meta = item.metadata or {}
    local run_id = meta[run.TAG_RUN]
    if run_id and not opts.include_kept and meta[run.TAG_KEEP] == "1" then
      skipped[#skipped + 1] = { provider = provider.name, kind = kind, id = item.id, run = run_id,
        reason = kind == "instance" and "kept (--keep; --include-kept stops it)"
          or "kept (keep = true; --include-kept deletes it)" }
    end
    if run_id and (opts.include_kept or meta[run.TAG_KEEP] ~= "1") then
      local reason
      if kind == "instance" and expired(item, now) then
        reason = "past its TTL"
      elseif (opts.all_hosts or meta[run.TAG_HOST] == host) and not run.is_live(run_id) then
        reason = meta[run.TAG_HOST] == host and "its run has finished" or "its run is not live on this machine"
      end
      if reason then
        out[#out + 1] = { provider = provider.name, kind = kind, id = item.id, status = item.status, run = run_id,
          recipe = meta[run.TAG_RECIPE], reason = reason,
          action = kind == "instance" and "would stop" or "would delete" }
      end
    end
  end
  for _, inst in ipairs(provider.instances.list({}) or {}) do judge("instance", inst) end
  if provider.snapshots and provider.snapshots.list then
    for _, snap in ipairs(provider.snapshots.list({}) or {}) do judge("snapshot", snap) end
  end
  return out, skipped
end

--- Finds and (unless dry_run) stops collectable instances.
---@param provider table
---@param opts? {dry_run?: boolean, all_hosts?: boolean, include_kept?: boolean}
---@return galley.GcCandidate[]
function M.collect(provider, opts)
  opts = opts or {}
  local found, skipped = M.find(provider, opts)
  if opts.dry_run then return found, skipped end
  for _, c in ipairs(found) do
    local done = c.kind == "snapshot" and "deleted" or "stopped"
    local ok, err = pcall(c.kind == "snapshot" and provider.snapshots.delete or provider.instances.terminate, c.id)
    if ok then
      c.action = done
    elseif type(err) == "table" and err.code == "NOT_FOUND" then
      c.action = done -- gone meanwhile (its TTL or another gc)
    elseif type(err) == "table" and err.code == "CONFLICT" and type(err.details) == "table"
      and err.details.reason == "linked_clones" then
      -- instances that gc does not collect still use it (Proxmox linked clones): a later gc, once
      -- they are gone, deletes it
      c.action, c.error = "in use", err.message
    else
      c.action, c.error = "failed", tostring(err)
    end
  end
  return found, skipped
end

--- Removes the run files (`<state>/runs/<run-id>`) of runs whose process is gone: those runs are
-- settled (their instances are judged by their metadata alone). Returns the removed run ids.
---@return string[]
function M.prune_runs()
  local dir = run.state_dir() .. "/runs"
  local removed = {}
  local ok, names = pcall(require("galley.core.fs").list, dir)
  if not ok or type(names) ~= "table" then return removed end
  for _, entry in ipairs(names) do
    local name = type(entry) == "table" and entry.name or entry
    if type(name) == "string" and name:match("^run%-[%w]+$") and not run.is_live(name) then
      if os.remove(dir .. "/" .. name) then removed[#removed + 1] = name end
    end
  end
  table.sort(removed)
  return removed
end

--- The providers `galley gc` sweeps by default: local always, Morph when MORPH_API_KEY is set,
--- Proxmox when PVE_URL is set (Proxmox has no TTL of its own: this is what enforces it).
---@param which? "morph"|"local"|"proxmox"|"all"
---@return table[] providers, string[] notes
function M.default_providers(which)
  local list, notes = {}, {}
  local function add(name)
    local ok, p = pcall(function() return require("galley.providers." .. name).new({}) end)
    if ok then
      list[#list + 1] = p
    else
      notes[#notes + 1] = ("%s provider unavailable: %s"):format(name, tostring(p))
      notes.unavailable = (notes.unavailable or 0) + 1
    end
  end
  if which == nil or which == "all" then
    for _, name in ipairs(require("galley.providers").configured()) do add(name) end
  else
    add(which)
  end
  return list, notes
end

return M
