--- galley.images: images built by recipe steps, each step cached as a snapshot keyed by a digest.
--
--   local snap = provider.snapshots.build(base_id, {
--     contracts.shell("apt-get install -y nodejs npm"),                  -- a CommandSpec
--     { files = { { path = "~/.npmrc", content = "fund=false\n" } } },    -- an upload
--     { run = function(inst) ... end, key = "configure v2" },             -- a function (explicit key)
--   }, { progress = true })
--
-- Written once over the provider contract (instances.boot/exec/terminate/snapshot,
-- snapshots.list/delete, files) and attached by every provider as `snapshots.build`.
--
-- Step digest = sha256(parent digest, canonical encoding of the step, opts.salt); the base's
-- digest is its own (when it has one) or "snapshot:<id>". For each step in order: a snapshot with
-- that digest exists → it is used; else the parent is booted, the step runs, the instance is
-- snapshotted with the digest (metadata galley_step "<i>/<n> <key>", galley_parent <parent id>,
-- galley_digest <digest>) and terminated. A failing step leaves no instance and no snapshot and
-- raises IMAGE_STEP_FAILED naming the step (`details = {step = i, key = k}`, `cause`).
--
-- Concurrency: inside one process, tasks (recipe.parallel branches) that need the same digest wait
-- for the one building it and reuse its snapshot. Across processes, each builder lists the digest
-- again after snapshotting and keeps the oldest snapshot (created_at, then id), deleting its own
-- when it is not that one; Morph (and the emulator) already return the existing snapshot when a
-- snapshot is taken with a digest that one has.
local codec = require("galley.core.codec")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local progress = require("galley.progress")
local task = require("galley.task")
local util = require("galley.util")

local M = {}

--- Bumped when the step encoding changes (old caches are then ignored).
M.ENCODING_VERSION = "galley-image-step/1"

--- TTL of a builder instance, so a crashed build does not leave it running forever.
M.BUILDER_TTL_SECONDS = 3600

local KEY_MAX = 120


local function bad(field, message, hint)
  errors.raise("VALIDATION_ERROR", ("snapshots.build: %s: %s"):format(field, message), { field = field, hint = hint })
end


-- A canonical, deterministic encoding of plain data (sorted keys; strings %q-quoted).
local function canonical(v)
  local t = type(v)
  if t == "string" then return ("%q"):format(v) end
  if t == "number" or t == "boolean" then return tostring(v) end
  if t == "nil" then return "nil" end
  if t ~= "table" then error("cannot encode a " .. t, 0) end
  local parts = {}
  for _, k in ipairs(util.sorted_keys(v)) do parts[#parts + 1] = canonical(k) .. "=" .. canonical(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end
M.canonical = canonical


-- One line of at most KEY_MAX bytes, cut at a UTF-8 character boundary (metadata must be UTF-8).
local function short(s)
  s = require("galley.json").valid_utf8(tostring(s)):gsub("%s+", " ")
  if #s > KEY_MAX then
    local cut = KEY_MAX - 3
    while cut > 0 and ((s:byte(cut + 1) or 0) & 0xC0) == 0x80 do cut = cut - 1 end
    s = s:sub(1, cut) .. "…"
  end
  return s
end


local function read_host_file(path, field)
  local f, err = io.open(path, "rb")
  if not f then bad(field, "cannot read " .. tostring(path) .. ": " .. tostring(err)) end
  local data = f:read("a")
  f:close()
  return data
end


-- Normalises one step: {kind = "command"|"files"|"run", key, encoding, ...}.
local function normalize(step, i)
  local field = ("steps[%d]"):format(i)
  if type(step) == "string" then -- a shell line, run by sh -c (a RUN line)
    local spec = contracts.check_command(step, field)
    return { kind = "command", spec = spec, key = short(step), encoding = "command:" .. canonical(spec) }
  end
  if type(step) ~= "table" then
    bad(field, "expected a shell command string or a table (a CommandSpec, {files = ...} or {run = fn, key = ...})")
  end
  if step.key ~= nil and (type(step.key) ~= "string" or step.key == "") then
    bad(field .. ".key", "expected a non-empty string")
  end
  if step.kind ~= nil then
    local spec = contracts.check_command(step, field)
    local key = spec.name
      or (spec.kind == "argv" and table.concat({ spec.command, table.unpack(spec.args) }, " ") or spec.script)
    return { kind = "command", spec = spec, key = short(key), encoding = "command:" .. canonical(spec) }
  end
  if step.command ~= nil then -- {command = CommandSpec, key = "label"}
    local spec = contracts.check_command(step.command, field .. ".command")
    local key = step.key or spec.name or spec.script or spec.command
    return { kind = "command", spec = spec, key = short(key), encoding = "command:" .. canonical(spec) }
  end
  if step.files ~= nil then
    if type(step.files) ~= "table" or #step.files == 0 then bad(field .. ".files", "expected a non-empty array") end
    local files, enc = {}, {}
    for j, f in ipairs(step.files) do
      local ff = ("%s.files[%d]"):format(field, j)
      if type(f) ~= "table" then bad(ff, "expected {path = ..., content = ... | from_file = ...}") end
      if type(f.path) ~= "string" or f.path == "" then bad(ff .. ".path", "expected a non-empty string") end
      local content = f.content
      if content == nil and f.from_file ~= nil then content = read_host_file(f.from_file, ff .. ".from_file") end
      if type(content) ~= "string" then bad(ff .. ".content", "expected a string (or from_file = a local path)") end
      if f.mode ~= nil and (type(f.mode) ~= "string" or not f.mode:match("^[0-7]?[0-7][0-7][0-7]$")) then
        bad(ff .. ".mode", 'expected an octal mode string like "644"')
      end
      files[j] = { path = f.path, content = content, mode = f.mode }
      enc[j] = { path = f.path, sha256 = codec.sha256(content), mode = f.mode or "" }
    end
    local names = {}
    for j, f in ipairs(files) do names[j] = f.path end
    return { kind = "files", files = files, key = short(step.key or ("files " .. table.concat(names, " "))),
      encoding = "files:" .. canonical(enc) }
  end
  if step.run ~= nil then
    if type(step.run) ~= "function" then bad(field .. ".run", "expected a function") end
    if step.key == nil then
      bad(field .. ".key", "a function step needs an explicit key",
        "the key stands for the function in the digest: change it when the function changes")
    end
    return { kind = "run", run = step.run, key = short(step.key), encoding = "run:" .. canonical(step.key) }
  end
  bad(field, "expected a CommandSpec (kind = ...), {files = {...}} or {run = fn, key = ...}")
end
M.normalize = normalize


--- The digest of a step after `parent_digest`.
---@param parent_digest string
---@param encoding string the step's canonical encoding
---@param salt? string
---@return string hex sha256
function M.step_digest(parent_digest, encoding, salt)
  return codec.sha256(table.concat({ M.ENCODING_VERSION, parent_digest, encoding, salt or "" }, "\n"))
end


-- Snapshots holding `digest`, oldest first (created_at, then id).
local function by_digest(provider, digest)
  local list = provider.snapshots.list({ metadata = { galley_digest = digest }, digest = digest })
  local out = {}
  for _, s in ipairs(list) do
    if s.digest == digest or (s.metadata and s.metadata.galley_digest == digest) then
      if s.status == nil or s.status == "ready" then out[#out + 1] = s end
    end
  end
  table.sort(out, function(a, b)
    if (a.created_at or 0) ~= (b.created_at or 0) then return (a.created_at or 0) < (b.created_at or 0) end
    return a.id < b.id
  end)
  return out
end
M.find = by_digest


-- In-process building locks: provider table -> digest -> {token list} (waiters).
local building = setmetatable({}, { __mode = "k" })


local function lock(provider, digest)
  local held = building[provider]
  if not held then
    held = {}
    building[provider] = held
  end
  local waited = false
  while held[digest] do
    waited = true
    local token = task.token()
    local waiters = held[digest]
    waiters[#waiters + 1] = token
    local ok, err = task.await(token)
    if not ok then error(err, 0) end
  end
  held[digest] = {}
  return waited
end


local function unlock(provider, digest)
  local held = building[provider]
  local waiters = held and held[digest]
  if not waiters then return end
  held[digest] = nil
  for _, token in ipairs(waiters) do task.wake(token) end
end


local function step_error(i, n, step, cause)
  if errors.is(cause, "INTERRUPTED") then return cause end
  local msg = type(cause) == "table" and (cause.message or tostring(cause)) or tostring(cause)
  return errors.new("IMAGE_STEP_FAILED", ("step %d/%d (%s) failed: %s"):format(i, n, step.key, msg), {
    details = { step = i, key = step.key, exit_code = type(cause) == "table" and cause.details
      and cause.details.exit_code or nil },
    cause = cause,
    hint = "fix the step and build again: the steps before it are cached",
  })
end


local function run_step(provider, inst, step)
  if step.kind == "command" then
    local res = provider.exec(inst.id, step.spec)
    if res.exit_code ~= 0 then
      local tail = (res.stderr ~= "" and res.stderr or res.stdout or ""):sub(-1000)
      errors.raise("PROCESS_ERROR", ("exited %d: %s"):format(res.exit_code, tail),
        { details = { exit_code = res.exit_code, stdout = res.stdout:sub(-2000), stderr = res.stderr:sub(-2000) } })
    end
  elseif step.kind == "files" then
    for _, f in ipairs(step.files) do
      provider.files.write_file_atomic(inst.id, f.path, f.content, { mode = f.mode, create_dirs = true })
    end
  else
    step.run(inst, provider)
  end
end


-- Boots the parent, runs the step, snapshots with the digest and terminates the instance.
local function build_step(provider, parent_id, step, digest, meta, replace)
  local inst = provider.instances.boot(parent_id, { ttl_seconds = M.BUILDER_TTL_SECONDS,
    ttl_action = "stop", metadata = { galley_builder = digest:sub(1, 16) } })
  local ok, res = pcall(function()
    run_step(provider, inst, step)
    if replace then
      for _, old in ipairs(by_digest(provider, digest)) do pcall(provider.snapshots.delete, old.id) end
    end
    return provider.instances.snapshot(inst.id, { digest = digest, metadata = meta })
  end)
  local tok, terr = pcall(provider.instances.terminate, inst.id)
  if not ok then error(res, 0) end
  if not tok and errors.is(terr, "INTERRUPTED") then error(terr, 0) end
  -- Providers that keep digests (Morph, the emulator, local) return the snapshot that already
  -- has the digest. For any other, the oldest snapshot with the digest wins.
  if res.digest == digest then return res end
  local all = by_digest(provider, digest)
  local winner = all[1]
  if winner and winner.id ~= res.id then
    pcall(provider.snapshots.delete, res.id)
    return winner
  end
  return res
end


---@class galley.ImageBuildOptions
---@field salt? string mixed into every digest (a new salt rebuilds everything)
---@field progress? boolean show "step i/n cached|running" lines (galley.progress)
---@field rebuild_from? integer ignore cached snapshots from this step on
---@field name? string a name kept in the snapshots' metadata (galley_image)
---@field on_step? fun(ev: {index: integer, total: integer, key: string, digest: string, cached: boolean,
---  snapshot_id: string})

--- Builds (or finds) the image `steps` make on top of `base_id`; returns the last step's snapshot
--- (the base's own snapshot table when steps is empty).
---@param provider table
---@param base_id string
---@param steps table[]
---@param opts? galley.ImageBuildOptions
---@return table snapshot with `build = {steps = {...}, cached = n, built = n}`
---@raise VALIDATION_ERROR | IMAGE_STEP_FAILED | INTERRUPTED | provider errors of the look-ups
function M.build(provider, base_id, steps, opts)
  opts = opts or {}
  if type(base_id) ~= "string" or base_id == "" then bad("base_id", "expected a snapshot id") end
  if type(steps) ~= "table" then bad("steps", "expected an array of steps") end
  if type(opts) ~= "table" then bad("opts", "expected a table") end
  if opts.salt ~= nil and type(opts.salt) ~= "string" then bad("opts.salt", "expected a string") end
  local rebuild_from = opts.rebuild_from
  if rebuild_from ~= nil and (math.type(rebuild_from) ~= "integer" or rebuild_from < 1) then
    bad("opts.rebuild_from", "expected a step number (1 or more)")
  end
  local norm = {}
  for i, s in ipairs(steps) do norm[i] = normalize(s, i) end
  local n = #norm
  local function say(text)
    if opts.progress then progress.say(text) end
  end

  local parent_id = base_id
  local parent_digest = "snapshot:" .. base_id
  local final
  local report = { steps = {}, cached = 0, built = 0 }
  for i, step in ipairs(norm) do
    local digest = M.step_digest(parent_digest, step.encoding, opts.salt)
    local replace = rebuild_from ~= nil and i >= rebuild_from
    local snap = not replace and by_digest(provider, digest)[1] or nil
    local cached = snap ~= nil
    if not snap then
      local waited = lock(provider, digest)
      local ok, res, again_cached = pcall(function()
        -- A task of this process may have built it while we waited.
        local again = waited and not replace and by_digest(provider, digest)[1] or nil
        if again then return again, true end
        local meta = { galley_step = short(("%d/%d %s"):format(i, n, step.key)), galley_parent = parent_id,
          galley_digest = digest, galley_image = opts.name }
        local runner = build_step
        if opts.progress then
          local label = ("step %d/%d running: %s"):format(i, n, step.key)
          runner = function(...) return progress.step(label, build_step, ...) end
        end
        local bok, built = pcall(runner, provider, parent_id, step, digest, meta, replace)
        if not bok then error(step_error(i, n, step, built), 0) end
        return built, false
      end)
      unlock(provider, digest)
      if not ok then error(res, 0) end
      snap, cached = res, again_cached
    end
    if cached then say(("step %d/%d cached: %s"):format(i, n, step.key)) end
    report.steps[i] = { key = step.key, digest = digest, snapshot_id = snap.id, cached = cached }
    if cached then report.cached = report.cached + 1 else report.built = report.built + 1 end
    if opts.on_step then
      opts.on_step({ index = i, total = n, key = step.key, digest = digest, cached = cached, snapshot_id = snap.id })
    end
    parent_id, parent_digest, final = snap.id, digest, snap
  end
  if not final then final = provider.snapshots.get(base_id) end
  local out = {}
  for k, v in pairs(final) do out[k] = v end
  out.build = report
  return out
end


--- The agents whose modules offer install_steps, by name.
M.AGENTS = { claude = "galley.agents.claude", codex = "galley.agents.codex", gemini = "galley.agents.gemini" }


--- Builds (or finds) the image of an agent: `base_id` plus the agent module's install_steps
--- (node and npm when missing, PM2, the agent's CLI, a check). A second call is all cache hits.
---@param provider table
---@param agent "claude"|"codex"|"gemini"
---@param base_id string
---@param opts? {version?: string, global?: boolean, salt?: string, rebuild_from?: integer, progress?: boolean}
---@return table snapshot (with `build`)
---@raise VALIDATION_ERROR (unknown agent) | IMAGE_STEP_FAILED | ...
function M.agent_image(provider, agent, base_id, opts)
  opts = opts or {}
  local module = M.AGENTS[agent]
  if not module then
    errors.raise("VALIDATION_ERROR", ("unknown agent %s"):format(errors.quote(agent)),
      { field = "agent", hint = "use claude, codex or gemini" })
  end
  local steps = require(module).install_steps({ version = opts.version, global = opts.global })
  return provider.snapshots.build(base_id, steps, { salt = opts.salt, rebuild_from = opts.rebuild_from,
    progress = opts.progress, name = "agent-" .. agent })
end

return M
