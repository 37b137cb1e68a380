--- galley.run: the context of one recipe run (or REPL session), for self-cleaning runs.
-- Every instance a provider boots while a run is active is tagged in metadata with the run's id
-- and the recipe's name and gets a TTL unless the caller says otherwise. When the run ends
-- (success, error, Ctrl-C or SIGTERM) its cleanup hooks run (last registered first), the
-- instances it booted are stopped unless kept, and any instance still tagged with the run id is
-- reported as a leak.
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local paths = require("galley.paths")

local M = {}

--- Metadata keys galley stamps on instances it boots.
M.TAG_RUN, M.TAG_RECIPE, M.TAG_KEEP, M.TAG_HOST = "galley_run", "galley_recipe", "galley_keep", "galley_host"
M.DEFAULT_TTL_SECONDS = 3600

local current

--- Where live runs record themselves (`<state>/runs/<run-id>`), so `galley gc` can tell a
-- finished run's instances from a live one's: galley.paths.state_dir() (GALLEY_STATE_DIR, else
-- ~/.local/state/galley, the home coming from the password database when HOME is unset).
---@return string
function M.state_dir()
  return paths.state_dir()
end

local hostname_cache
--- This machine's name (instances carry it in metadata `galley_host`).
---@return string
function M.hostname()
  if not hostname_cache then
    local f = io.open("/proc/sys/kernel/hostname")
    hostname_cache = f and f:read("l") or "unknown"
    if f then f:close() end
  end
  return hostname_cache
end

local function runs_dir() return M.state_dir() .. "/runs" end

--- Checks the runs directory without creating it: raises UNSAFE_PATH when it (or the state
-- directory) is a symlink, another user's or writable by others, so planted run files are never
-- believed. Returns whether it exists.
---@return boolean
function M.check_runs_dir()
  paths.check_private_dir(M.state_dir())
  return paths.check_private_dir(runs_dir())
end

local function write_run_file(ctx)
  local ok, err = pcall(function()
    paths.private_dir(M.state_dir())
    paths.private_dir(runs_dir())
  end)
  if not ok then
    -- An unsafe directory is refused; one that cannot be created (a read-only home) only means
    -- `galley gc` cannot tell this run is live.
    if errors.is(err, "UNSAFE_PATH") then error(err, 0) end
    return
  end
  fs.write_atomic(runs_dir() .. "/" .. ctx.id, ("pid=%d\nrecipe=%s\nstarted=%d\n"):format(
    require("galley.core.runtime").getpid(), ctx.recipe, os.time()), { mode = "600" })
end

--- Whether a run with this id is alive on this machine (its run file names a live process).
---@param id string
---@return boolean
function M.is_live(id)
  if type(id) ~= "string" or not id:match("^[%w%-_]+$") then return false end
  local f = io.open(runs_dir() .. "/" .. id)
  if not f then return false end
  local text = f:read("a")
  f:close()
  local pid = tonumber(text:match("pid=(%d+)"))
  if not pid then return false end
  local stat = io.open("/proc/" .. pid .. "/stat")
  if not stat then return false end
  stat:close()
  return true
end

local function random_id()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(6) or tostring(os.time())
  if f then f:close() end
  return "run-" .. bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

---@class galley.RunContext
---@field id string
---@field recipe string
---@field keep boolean instances survive the run (no stop, no leak report)
---@field ttl_seconds integer|false default TTL for booted instances (false: none)
---@field hooks {fn: function, label: string}[]
---@field providers table[] providers used during the run
---@field instances {provider: table, id: string}[] instances booted during the run

local function new_context(opts)
  return {
    id = opts.id or random_id(),
    recipe = opts.recipe or "recipe",
    keep = opts.keep or false,
    keep_seconds = opts.keep_seconds,
    ttl_seconds = opts.ttl_seconds == nil and M.DEFAULT_TTL_SECONDS or opts.ttl_seconds,
    hooks = {},
    providers = {},
    instances = {},
    snapshots = {},
    pending = {},
    started_ms = os.time() * 1000,
  }
end

--- Starts a run; the runner calls this before a recipe's first line. Records the run in
-- `<state>/runs/` unless `record = false`.
---@param opts {recipe: string, keep?: boolean, keep_seconds?: integer, ttl_seconds?: integer|false, id?: string,
---  record?: boolean}
---@return galley.RunContext
---@raise UNSAFE_PATH (the state or runs directory is a symlink, another user's or writable by others)
function M.begin(opts)
  current = new_context(opts)
  if opts.record ~= false then
    local ok, err = pcall(write_run_file, current)
    if not ok then
      current = nil
      error(err, 0)
    end
  end
  return current
end

-- `galley -e CODE` and `galley SCRIPT.lua` begin no run, but what they boot is tagged and tracked
-- the same way: main.c names the script in runtime.options().script, and the first boot (or
-- snapshot) outside a run makes this context, recorded in `<state>/runs/` like a run's, so
-- `galley gc` collects what is left once the process is gone. galley.runner.finish_script names
-- what is still live at exit.
local script_ctx

local function active()
  if current then return current end
  if script_ctx then return script_ctx end
  local name = require("galley.core.runtime").options().script
  if type(name) ~= "string" then return nil end
  script_ctx = new_context({ recipe = name == "-e" and "-e" or (name:match("([^/]+)$") or name) })
  script_ctx.script = true
  local ok, err = pcall(write_run_file, script_ctx)
  if not ok then
    script_ctx = nil
    error(err, 0)
  end
  return script_ctx
end

--- The context of `galley -e` / `galley SCRIPT.lua` once it booted or snapshotted something
-- outside a run, else nil.
---@return galley.RunContext|nil
function M.script_context() return script_ctx end

--- The active run, or nil outside recipes.
---@return galley.RunContext|nil
function M.current() return current end

--- Registers a cleanup hook (runs at the end of the run, last registered first, even on error).
---@param fn fun()
---@param label? string shown when the hook fails
---@return boolean registered false outside a run
function M.defer(fn, label)
  assert(type(fn) == "function", "run.defer: expected a function")
  if not current then return false end
  current.hooks[#current.hooks + 1] = { fn = fn, label = label or "cleanup" }
  return true
end

--- Keeps (or stops keeping) the run's instances when it ends. With `seconds`, each kept
-- instance's TTL is set to that many seconds from the end of the run (`--keep 4h`).
---@param on boolean
---@param seconds? integer
function M.set_keep(on, seconds)
  if not current then return end
  current.keep = on and true or false
  if on and seconds then current.keep_seconds = seconds end
  if not on then current.keep_seconds = nil end
end

--- Providers call this from `new`: the run checks their instances for leaks at the end.
---@param provider table
function M.register_provider(provider)
  local ctx = current or script_ctx
  if not ctx then return end
  for _, p in ipairs(ctx.providers) do
    if p == provider then return end
  end
  ctx.providers[#ctx.providers + 1] = provider
end

--- Providers call this in `instances.boot`/`fork`: returns opts with the run's tags and default
-- TTL added (a copy; the caller's table is not changed). `opts.ttl_seconds = false` means none.
---@param opts? table
---@return table
function M.boot_options(opts)
  local out = {}
  for k, v in pairs(opts or {}) do out[k] = v end
  local meta = {}
  for k, v in pairs(out.metadata or {}) do meta[k] = v end
  out.metadata = meta
  local ctx = active()
  if not ctx then
    if out.ttl_seconds == false then out.ttl_seconds = nil end
    return out
  end
  meta[M.TAG_RUN] = ctx.id
  meta[M.TAG_RECIPE] = ctx.recipe
  meta[M.TAG_HOST] = M.hostname()
  if ctx.keep then meta[M.TAG_KEEP] = "1" end
  if out.ttl_seconds == nil and ctx.ttl_seconds then
    out.ttl_seconds = ctx.ttl_seconds
    out.ttl_action = out.ttl_action or "stop"
  elseif out.ttl_seconds == false then
    out.ttl_seconds = nil
  end
  return out
end

--- Providers call this after a successful boot/fork.
---@param provider table
---@param instance_id string
function M.track_instance(provider, instance_id, ttl_seconds)
  local ctx = current or script_ctx
  if not ctx then return end
  M.register_provider(provider)
  ctx.instances[#ctx.instances + 1] = { provider = provider, id = instance_id, booted_at = os.time(),
    ttl_seconds = math.tointeger(ttl_seconds) }
end

--- Providers call this in `instances.snapshot`/`snapshots.create`: returns sopts (a copy, without
-- `keep`) with the run's tags added to its metadata (`galley_keep=1` when `keep = true` or the
-- run is kept), and whether the snapshot is the run's. A snapshot taken with a `digest` is an
-- image (galley.images' step cache, Morph's digest cache): meant to outlive runs, it gets no run
-- tag, is not tracked and `galley gc` never deletes it.
---@param sopts? table `{metadata?, digest?, keep?: boolean, ...}`
---@return table sopts, boolean tagged
---@raise VALIDATION_ERROR (keep is not a boolean)
function M.snapshot_options(sopts)
  local out = {}
  for k, v in pairs(sopts or {}) do out[k] = v end
  local meta = {}
  if type(out.metadata) == "table" then
    for k, v in pairs(out.metadata) do meta[k] = v end
    out.metadata = meta
  end
  local keep = out.keep
  out.keep = nil
  if keep ~= nil and type(keep) ~= "boolean" then
    errors.raise("VALIDATION_ERROR", "keep must be true or false", { field = "keep",
      hint = "snapshot(id, {keep = true}) keeps the snapshot after the run; without it `galley gc` deletes it" })
  end
  if out.digest ~= nil or (type(out.metadata) == "table" and meta.galley_digest ~= nil) then return out, false end
  local ctx = active()
  if not ctx then return out, false end
  if out.metadata == nil then out.metadata = meta end
  meta[M.TAG_RUN] = ctx.id
  meta[M.TAG_RECIPE] = ctx.recipe
  meta[M.TAG_HOST] = M.hostname()
  if keep or ctx.keep then meta[M.TAG_KEEP] = "1" end
  return out, true
end

--- Providers call this after a snapshot `snapshot_options` tagged was made.
---@param provider table
---@param snapshot_id string
---@param keep? boolean made with galley_keep=1
function M.track_snapshot(provider, snapshot_id, keep)
  local ctx = current or script_ctx
  if not ctx then return end
  M.register_provider(provider)
  ctx.snapshots[#ctx.snapshots + 1] = { provider = provider, id = snapshot_id, keep = keep or false }
end

--- When `err` is NOT_FOUND for an instance this run booted whose TTL has passed, a sentence
-- saying so ("instance X expired: its TTL of 60 s ran out 3 s ago"); else nil.
---@param err any
---@return string|nil
function M.expired_note(err)
  if not current or type(err) ~= "table" or err.code ~= "NOT_FOUND" then return nil end
  local id = tostring(err.resource or ""):match("^instance:(.+)$") or err.instance_id
  for _, t in ipairs(current.instances) do
    if t.id == id and t.ttl_seconds and t.ttl_seconds > 0 then
      local over = os.time() - (t.booted_at + t.ttl_seconds)
      if over >= 0 then
        return ("instance %s expired: its TTL of %d s ran out %d s ago (a longer --ttl keeps it)"):format(id,
          t.ttl_seconds, over)
      end
    end
  end
  return nil
end

--- Providers call this when a create (boot, fork) was cut off after it may have reached the
-- service (interrupted, timed out, connection lost): `filter` is the metadata that finds the
-- instance it may have created (its request token). The run's end waits for it to appear, up to
-- `finish{pending_wait_ms}`, and stops it.
---@param provider table
---@param filter table<string,string>
---@param request_token? string the create's token (instances carry it as `request_token`)
function M.note_pending(provider, filter, request_token)
  local ctx = current or script_ctx
  if not ctx then return end
  M.register_provider(provider)
  ctx.pending[#ctx.pending + 1] = { provider = provider, filter = filter, token = request_token }
end

--- Instances still tagged with this run's id, per provider: {{provider, instance}...}.
---@param ctx? galley.RunContext default: the active run
---@return {provider: table, instance: table}[]
function M.tagged_instances(ctx)
  ctx = ctx or current
  local found = {}
  if not ctx then return found end
  for _, p in ipairs(ctx.providers) do
    local ok, list = pcall(p.instances.list, { [M.TAG_RUN] = ctx.id })
    if ok and type(list) == "table" then
      for _, inst in ipairs(list) do
        if (inst.metadata or {})[M.TAG_RUN] == ctx.id then
          found[#found + 1] = { provider = p, instance = inst }
        end
      end
    end
  end
  return found
end

--- Snapshots still tagged with this run's id, per provider: {{provider, snapshot}...}. Only
-- asked of the providers when the run took a snapshot itself (so a run that took none makes no
-- extra call; `galley gc` still finds any other snapshot carrying the run's tag, such as the one
-- a Morph fork makes).
---@param ctx? galley.RunContext default: the active run
---@return {provider: table, snapshot: table}[]
function M.tagged_snapshots(ctx)
  ctx = ctx or current
  local found = {}
  if not ctx or #ctx.snapshots == 0 then return found end
  for _, p in ipairs(ctx.providers) do
    local ok, list = pcall(function() return p.snapshots.list({ [M.TAG_RUN] = ctx.id }) end)
    if ok and type(list) == "table" then
      for _, snap in ipairs(list) do
        if (snap.metadata or {})[M.TAG_RUN] == ctx.id then
          found[#found + 1] = { provider = p, snapshot = snap }
        end
      end
    end
  end
  return found
end

-- The cleanup was aborted when a signal became pending while signals are deferred (the
-- runtime.SIGNAL_ABORT_AT-th Ctrl-C): a task's pcall may have swallowed its INTERRUPTED, so the
-- cleanup checks between its steps and stops there.
local function check_abort()
  local sig = require("galley.core.runtime").pending_signal()
  if sig ~= 0 then errors.raise("INTERRUPTED", "the cleanup was aborted", { signal = sig, aborted = true }) end
end

-- The end of an instance's TTL (Unix seconds), or nil.
local function ttl_end(inst)
  local ttl = type(inst) == "table" and inst.ttl or nil
  local at = type(ttl) == "table" and (ttl.expires_at or ttl.ttl_expire_at) or nil
  if type(at) ~= "number" then return nil end
  if at > 1e12 then at = at // 1000 end
  return math.tointeger(at) or math.floor(at)
end
M.ttl_end = ttl_end

--- Ends the run: hooks, then (unless kept) stops every instance still tagged with the run, then
-- the leak check: a leak is a tagged, unkept instance that still exists after that. Kept
-- instances get the TTL `--keep DURATION` asked for. Snapshots the run made are listed (kept or
-- left for `galley gc`; `delete_snapshots` deletes the unkept ones). While it runs,
-- `ctx.cleanup` says how far it got: {phase, hook, total, stopped, left = {id = true}}.
-- Returns a report {hook_errors, stopped, leaks, kept, kept_until = {id = unix|false},
-- until_of = {leaked id = unix|false}, snapshots_left, snapshots_kept, snapshots_deleted} (ids).
---@param opts? {stop_instances?: boolean, delete_snapshots?: boolean, log?: fun(msg: string), ctx?: galley.RunContext}
---@return table report
---@raise INTERRUPTED (aborted: the SIGNAL_ABORT_AT-th deferred Ctrl-C; ctx.cleanup says what was left)
function M.finish(opts)
  opts = opts or {}
  local ctx = opts.ctx or current
  local report = { hook_errors = {}, stopped = {}, leaks = {}, kept = {}, kept_until = {}, snapshots_left = {},
    snapshots_kept = {}, snapshots_deleted = {}, until_of = {} }
  if not ctx then return report end
  local say = opts.log or function() end
  local progress = { phase = "hooks", total = 0, stopped = 0, left = {} }
  ctx.cleanup = progress
  for i = #ctx.hooks, 1, -1 do
    local h = ctx.hooks[i]
    progress.hook = h.label
    ctx.hooks[i] = nil
    local ok, err = pcall(h.fn)
    check_abort()
    if not ok then
      report.hook_errors[#report.hook_errors + 1] = { label = h.label, err = err }
      say(("cleanup '%s' failed: %s"):format(h.label, tostring(err)))
    end
  end
  progress.hook = nil
  progress.phase = "instances"
  local task = require("galley.task")
  local leftovers = M.tagged_instances(ctx)
  check_abort()
  local stopped_tokens = {}
  local stops = {}
  for _, item in ipairs(leftovers) do
    local inst, p = item.instance, item.provider
    if inst.request_token then stopped_tokens[inst.request_token] = true end
    if ctx.keep or (inst.metadata or {})[M.TAG_KEEP] == "1" then
      report.kept[#report.kept + 1] = inst.id
      local at = ttl_end(inst)
      if ctx.keep_seconds then
        local ok, updated = pcall(function() return p.instances.set_ttl(inst.id, ctx.keep_seconds) end)
        check_abort()
        if ok then
          at = ttl_end(updated) or (os.time() + ctx.keep_seconds)
        else
          say(("could not set the TTL of kept instance %s: %s"):format(inst.id, tostring(updated)))
        end
      end
      report.kept_until[inst.id] = at or false
    elseif opts.stop_instances ~= false then
      report.stopped[#report.stopped + 1] = inst.id
      progress.total = progress.total + 1
      progress.left[inst.id] = true
      stops[#stops + 1] = task.spawn(function()
        local ok = pcall(p.instances.terminate or p.instances.stop, inst.id)
        if ok then
          progress.stopped = progress.stopped + 1
          progress.left[inst.id] = nil
        else
          say(("could not stop instance %s"):format(inst.id))
        end
      end)
    end
  end
  task.join(stops) -- every instance is stopped at the same time
  check_abort()
  -- Creates cut off in flight may land after the list above: wait for each (all at once), then
  -- stop it.
  if #ctx.pending > 0 and not ctx.keep and opts.stop_instances ~= false then
    progress.phase = "pending"
    local runtime = require("galley.core.runtime")
    local deadline = runtime.now_ms() + (opts.pending_wait_ms or 15000)
    local waits, unresolved = {}, 0
    for _, pend in ipairs(ctx.pending) do
      -- Already stopped above (it landed before the tagged list): nothing to wait for.
      -- A create that provably never reached the service (pend.sent == false) is not waited for.
      if not (pend.token and stopped_tokens[pend.token]) and pend.sent ~= false then
        waits[#waits + 1] = task.spawn(function()
          while true do
            local ok, list = pcall(pend.provider.instances.list, pend.filter)
            if ok and type(list) == "table" and #list > 0 then
              for _, inst in ipairs(list) do
                pcall(pend.provider.instances.terminate or pend.provider.instances.stop, inst.id)
                report.stopped[#report.stopped + 1] = inst.id
              end
              return
            end
            if runtime.now_ms() >= deadline then
              unresolved = unresolved + 1
              return
            end
            task.sleep(250)
          end
        end)
      end
    end
    progress.waiting = #waits
    task.join(waits)
    check_abort()
    report.unresolved = unresolved
  end
  -- Whatever is still tagged and not kept after that is a leak.
  progress.phase = "check"
  for _, item in ipairs(M.tagged_instances(ctx)) do
    local inst = item.instance
    if not (ctx.keep or (inst.metadata or {})[M.TAG_KEEP] == "1") then
      report.leaks[#report.leaks + 1] = inst.id
      report.until_of[inst.id] = ttl_end(inst) or false
    end
  end
  check_abort()
  -- Snapshots the run made: kept on purpose, else left for `galley gc` (or deleted when asked).
  for _, item in ipairs(M.tagged_snapshots(ctx)) do
    local snap = item.snapshot
    if (snap.metadata or {})[M.TAG_KEEP] == "1" then
      report.snapshots_kept[#report.snapshots_kept + 1] = snap.id
    elseif opts.delete_snapshots and pcall(item.provider.snapshots.delete, snap.id) then
      report.snapshots_deleted[#report.snapshots_deleted + 1] = snap.id
    else
      report.snapshots_left[#report.snapshots_left + 1] = snap.id
    end
  end
  check_abort()
  os.remove(runs_dir() .. "/" .. ctx.id)
  if ctx == current then current = nil end
  if ctx == script_ctx then script_ctx = nil end
  return report
end

--- Drops a run whose cleanup was aborted: its run file goes (so `galley gc` collects what it
-- left once this process is gone) and it is no longer the active run.
---@param ctx galley.RunContext
function M.abandon(ctx)
  if not ctx then return end
  os.remove(runs_dir() .. "/" .. ctx.id)
  if ctx == current then current = nil end
  if ctx == script_ctx then script_ctx = nil end
end

--- How many finished runs `<state>/run-history/` keeps (the oldest are removed).
M.HISTORY_LIMIT = 200

local function history_dir() return M.state_dir() .. "/run-history" end

--- Records a finished run in `<state>/run-history/<id>.json` (what `galley dashboard` shows):
-- {id, recipe, started, finished, exit_code, stopped, kept, leaks, cleanup?}. `cleanup` is
-- "aborted" (Ctrl-C three times) or "failed" when the cleanup did not end; leaks then lists what
-- it left. Best effort: a state directory that cannot be written only loses the record.
---@param ctx galley.RunContext the run (from M.current() before M.finish)
---@param report table M.finish's report
---@param exit_code integer
---@param cleanup? "aborted"|"failed"
function M.record_history(ctx, report, exit_code, cleanup)
  if not ctx or not ctx.id:match("^[%w%-_]+$") then return end
  pcall(function()
    paths.private_dir(history_dir())
    local json = require("galley.json")
    local function ids(list) return json.array(table.move(list or {}, 1, #(list or {}), 1, {})) end
    fs.write_atomic(history_dir() .. "/" .. ctx.id .. ".json", json.encode({
      id = ctx.id, recipe = ctx.recipe, started = ctx.started_ms // 1000, finished = os.time(),
      exit_code = exit_code, stopped = ids(report.stopped), kept = ids(report.kept), leaks = ids(report.leaks),
      cleanup = cleanup,
    }), { mode = "600" })
    local names = fs.list(history_dir()) or {}
    if #names > M.HISTORY_LIMIT then
      local dated = {}
      for _, n in ipairs(names) do
        local st = fs.stat(history_dir() .. "/" .. n)
        dated[#dated + 1] = { n = n, t = st and st.mtime or 0 }
      end
      table.sort(dated, function(a, b) return a.t < b.t end)
      for i = 1, #dated - M.HISTORY_LIMIT do os.remove(history_dir() .. "/" .. dated[i].n) end
    end
  end)
end

--- The finished runs recorded by M.record_history, newest first (unreadable records skipped).
---@return table[]
function M.history()
  local out = {}
  local ok, exists = pcall(paths.check_private_dir, history_dir())
  if not ok or not exists then return out end
  local json = require("galley.json")
  for _, n in ipairs(fs.list(history_dir()) or {}) do
    if n:match("^[%w%-_]+%.json$") then
      local rec = json.decode(fs.read(history_dir() .. "/" .. n) or "")
      if type(rec) == "table" and type(rec.id) == "string" then out[#out + 1] = rec end
    end
  end
  table.sort(out, function(a, b) return (a.finished or 0) > (b.finished or 0) end)
  return out
end

require("galley.tracker").set(M)

return M
