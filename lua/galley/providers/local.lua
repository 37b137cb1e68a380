--- galley.providers.local: a VM provider whose instances are sandboxes on this machine.
--
--   local provider = require("galley.providers.local").new()
--   local inst = provider.instances.boot(provider.DEFAULT_SNAPSHOT)     -- "snapshot_empty"
--   provider.exec(inst.id, {kind = "argv", command = "uname", args = {"-a"}})
--   provider.files.write_file_atomic(inst.id, "~/.config/app.json", "{}", {create_dirs = true})
--   provider.instances.terminate(inst.id)
--
-- Layout (state dir: opts.state_dir, else GALLEY_STATE_DIR, else ~/.local/state/galley; mode 0700,
-- refused when it is a symlink, another user's or writable by others; see galley.paths):
--   instances/<id>/meta.json   id, status, metadata, TTL, snapshot, cgroup (written atomically,
--                              so every galley process sees the same instances)
--   instances/<id>/home/       the instance's home directory
--   instances/<id>/tmp/        its /tmp (kept across execs, removed with the instance)
--   snapshots/<id>/{meta.json,home/,tmp/}
-- The snapshot "snapshot_empty" (M.DEFAULT_SNAPSHOT) always exists: an empty home and /tmp.
--
-- Sandbox (bubblewrap, when installed and opts.sandbox ~= false): the host is mounted read-only
-- at /, with a fresh /dev and /proc, the instance's home at `home_dir` (default /root, which
-- must exist on the host) and its tmp at /tmp; HOME=home_dir. The pid namespace is shared and
-- bwrap does not die with its parent, so daemons (PM2) started by one exec outlive it. Without
-- bubblewrap, commands run on the host with HOME (and `~`) at instances/<id>/home, and
-- capabilities.sandbox is false (a warning is logged): absolute paths then touch the host.
--
-- Processes: every exec joins the instance's cgroup v2 (a cgroup2 mount found in
-- /proc/self/mounts that we can write to). pause/resume write cgroup.freeze; terminate writes
-- cgroup.kill and waits until the cgroup is empty, so nothing started in the instance survives,
-- PM2 daemons included. Without cgroups, processes carry GALLEY_INSTANCE_ID=<id> in their
-- environment and are found by scanning /proc/*/environ (SIGSTOP/SIGCONT/SIGKILL). Limitation:
-- a process that replaces its environment (env -i, exec -c) escapes that scan.
--
-- Vocabulary follows Morph: `stop` deletes the instance like `terminate`; `pause` leaves it in
-- status "stopped" until `resume`. TTL actions: "stop"/"terminate" delete at expiry, "pause"
-- pauses; expiry is applied at the start of every provider call; resume re-arms the TTL.
-- Files go through galley.providers.execfiles (exec of argv, like the Morph provider).
local cjson = require("cjson")
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local execfiles = require("galley.providers.execfiles")
local fs = require("galley.core.fs")
local logmod = require("galley.log")
local paths = require("galley.paths")
local proc = require("galley.core.proc")
local run = require("galley.tracker")
local runtime = require("galley.core.runtime")

local M = {}

M.NAME = "local"
M.VERSION = "0.1.0"
M.DEFAULT_SNAPSHOT = "snapshot_empty"
M.IMAGE_ID = "local-host"

local TOOL_TIMEOUT_MS = 10 * 60 * 1000
local KILL_WAIT_MS = 15000
local FREEZE_WAIT_MS = 5000
local REAP_WAIT_MS = 5000

-- The sh that starts every command: joins the instance's cgroup ($1, "" for none), changes to
-- the working directory ($2; 127 when it is missing, as galley.core.shell's scripts do) and
-- execs the command (127 when it does not exist, as a shell on a VM would).
local ENTER = 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 125; fi; cd -- "$2" || exit 127; '
  .. 'shift 2; exec "$@"'


local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end


local function write_raw(path, data)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(data)
  f:close()
  if not ok then return nil, werr end
  return true
end


-- Runs a host tool (mkdir, cp, rm, kill); raises PROCESS_ERROR when it fails.
local function tool(argv, what)
  local r, err = proc.run({ argv = argv, timeout_ms = TOOL_TIMEOUT_MS })
  if not r then
    if errors.is(err, "INTERRUPTED") then error(err, 0) end
    common.raise("PROCESS_ERROR", ("%s: %s"):format(what or argv[1], tostring(err)), { cause = err })
  end
  if r.exit_code ~= 0 then
    common.raise("PROCESS_ERROR", ("%s failed (exit %d): %s"):format(what or argv[1], r.exit_code,
      common.tail(r.stderr, 500)), { details = { exit_code = r.exit_code, stderr = common.tail(r.stderr) } })
  end
  return r
end


-- Names in a directory ({} when it does not exist).
local function list_names(dir)
  local names = fs.list(dir)
  return names or {}
end


-- rmdir of a cgroup and of the child cgroups an instance may have made inside it (bottom-up).
local function remove_cgroup(dir)
  for _, name in ipairs(list_names(dir)) do
    local st = fs.stat(dir .. "/" .. name)
    if st and st.type == "directory" then remove_cgroup(dir .. "/" .. name) end
  end
  return os.remove(dir)
end


-- The mount point of a writable cgroup2 hierarchy where instance cgroups can be made, or nil.
local function detect_cgroup_root(explicit)
  local mount = explicit
  if not mount then
    local mounts = read_all("/proc/self/mounts") or ""
    for line in mounts:gmatch("[^\n]+") do
      local _, dir, fstype, options = line:match("^(%S+) (%S+) (%S+) (%S+)")
      if fstype == "cgroup2" and options:match("^rw") then
        mount = dir:gsub("\\040", " ")
        break
      end
    end
  end
  if not mount then return nil, "no cgroup2 mount in /proc/self/mounts" end
  local base = mount .. "/galley"
  local ok = pcall(tool, { "mkdir", "-p", base }, "mkdir cgroup")
  if not ok then return nil, "cannot create " .. base end
  local probe = base .. "/probe-" .. codec.random_hex(4)
  if not pcall(tool, { "mkdir", probe }, "mkdir cgroup") then return nil, "cannot create cgroups under " .. base end
  local usable = fs.exists(probe .. "/cgroup.freeze") and fs.exists(probe .. "/cgroup.kill")
  os.remove(probe)
  if not usable then return nil, "cgroup.freeze or cgroup.kill missing (kernel older than 5.14?)" end
  return base
end


-- Whether bubblewrap can make a sandbox here (checked once per provider).
local function probe_bwrap(bwrap, home_dir)
  local r = proc.run({
    argv = { bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", "/tmp", home_dir,
      "--", "/bin/true" },
    timeout_ms = 30000,
  })
  if not r then return false, "bwrap could not be started" end
  if r.exit_code ~= 0 then return false, common.tail(r.stderr, 300) end
  return true
end


---@class galley.LocalProviderOptions
---@field state_dir? string default GALLEY_STATE_DIR, else ~/.local/state/galley
---@field sandbox? boolean false: never use bubblewrap; true: fail when it does not work
---@field home_dir? string the home directory inside the sandbox (default /root; must exist here)
---@field cgroups? boolean false: track processes by environment even when cgroup v2 works
---@field cgroup_root? string a cgroup2 mount point to use instead of the detected one
---@field size_limit? integer largest file the files API moves (default 256 MiB)
---@field max_output? integer per-stream output cap of one exec (default: galley.core.proc's)
---@field exec_timeout_ms? integer time limit of one exec (default none)
---@field log? galley.Logger
---@field clock? fun(): integer Unix seconds for TTLs (default os.time; tests move time forward)

--- Creates a local provider.
---@param opts? galley.LocalProviderOptions
---@return table provider `{name, version, capabilities, instances, snapshots, images, files, exec}`
---@raise VALIDATION_ERROR (home_dir missing on the host) | UNSAFE_PATH (state dir a symlink, another user's or
--- writable by others) | FILE_IO_ERROR (state dir cannot be created)
function M.new(opts)
  opts = opts or {}
  local log = opts.log or logmod.new({ prefix = "local" })
  local now = opts.clock or os.time
  -- The state directory and its instances/ and snapshots/ are this user's alone (0700; a
  -- symlink, another user's or a group/other-writable directory is refused with UNSAFE_PATH).
  local state_dir = paths.private_dir(opts.state_dir or paths.state_dir())
  paths.private_dir(state_dir .. "/instances")
  paths.private_dir(state_dir .. "/snapshots")
  state_dir = fs.realpath(state_dir) or state_dir:gsub("/+$", "")
  local instances_dir, snapshots_dir = state_dir .. "/instances", state_dir .. "/snapshots"

  -- Sandbox.
  local bwrap = opts.sandbox ~= false and proc.which("bwrap") or nil
  local home_dir = opts.home_dir or "/root"
  local sandbox = false
  if bwrap then
    if not fs.exists(home_dir) then
      common.raise("VALIDATION_ERROR", ("home_dir %s does not exist on this machine"):format(home_dir),
        { field = "home_dir", hint = "the sandbox mounts the instance's home over an existing directory" })
    end
    local ok, why = probe_bwrap(bwrap, home_dir)
    if ok then
      sandbox = true
    elseif opts.sandbox == true then
      common.raise("PROCESS_ERROR", "bubblewrap cannot create a sandbox here: " .. tostring(why), {})
    else
      log.warn("bubblewrap does not work here; instances run unsandboxed", { reason = why })
    end
  elseif opts.sandbox == true then
    common.raise("VALIDATION_ERROR", "sandbox = true but bwrap is not installed", { field = "sandbox" })
  end
  if not sandbox and not bwrap then
    log.warn(opts.sandbox == false and "sandbox = false: instances run unsandboxed with HOME in their directory"
      or "bubblewrap (bwrap) not found; instances run unsandboxed with HOME in their directory")
  end

  -- Process tracking.
  local cgroup_base, cg_why
  if opts.cgroups ~= false then
    cgroup_base, cg_why = detect_cgroup_root(opts.cgroup_root)
    if not cgroup_base then
      log.warn("cgroup v2 unavailable; tracking instance processes by environment", { reason = cg_why })
    end
  end

  local provider = {
    name = M.NAME,
    version = M.VERSION,
    DEFAULT_SNAPSHOT = M.DEFAULT_SNAPSHOT,
    state_dir = state_dir,
    capabilities = {
      home_dir = sandbox and home_dir or nil,
      home_dir_per_instance = not sandbox,
      sandbox = sandbox,
      process_tracking = cgroup_base and "cgroup" or "environ",
      -- Without cgroups the instance's processes are found by this variable: process managers
      -- that clean an environment (PM2's app env) must keep it, or their daemons escape terminate.
      keep_env = (not cgroup_base) and { "GALLEY_INSTANCE_ID" } or nil,
      pause = true,
      snapshots = true,
      fork = true,
      max_file_bytes = opts.size_limit or execfiles.DEFAULT_SIZE_LIMIT,
    },
    instances = {},
    snapshots = {},
    images = {},
  }

  local function inst_dir(id) return instances_dir .. "/" .. id end
  -- Instance cgroups are <base>/<state tag>_<id>: the tag keeps state dirs apart.
  local cgroup_tag = codec.sha256(state_dir):sub(1, 8)
  if cgroup_base then
    -- Empty cgroups left behind when killed processes were slow to be reaped (rmdir fails on a
    -- cgroup that still has processes), for instances of this state dir that no longer exist.
    for _, name in ipairs(list_names(cgroup_base)) do
      local id = name:match("^" .. cgroup_tag .. "_(.+)$")
      if id and not fs.exists(inst_dir(id)) then remove_cgroup(cgroup_base .. "/" .. name) end
    end
  end
  local function snap_dir(id) return snapshots_dir .. "/" .. id end

  -- Ids name directories: common.check_id refuses anything else (".", "..", "/") up front.
  local function valid_id(id, field)
    common.check_id(id, field or "instance_id")
    return true
  end

  -- meta.json ------------------------------------------------------------------------------
  local function load_meta(dir)
    local text = read_all(dir .. "/meta.json")
    if not text then return nil end
    local ok, meta = pcall(cjson.decode, text)
    if not ok or type(meta) ~= "table" then return nil end
    for _, k in ipairs({ "created_at", "ttl_seconds", "expires_at" }) do
      if type(meta[k]) == "number" then meta[k] = math.tointeger(meta[k]) or meta[k] end
    end
    if type(meta.metadata) ~= "table" then meta.metadata = {} end
    return meta
  end

  local function save_meta(dir, meta)
    local tmp = dir .. "/.meta.json." .. codec.random_hex(4)
    local ok, err = write_raw(tmp, cjson.encode(meta))
    if ok then ok, err = os.rename(tmp, dir .. "/meta.json") end
    if not ok then
      os.remove(tmp)
      common.raise("FILE_IO_ERROR", "cannot write " .. dir .. "/meta.json: " .. tostring(err),
        { resource = "file:" .. dir .. "/meta.json" })
    end
  end

  local function public_instance(meta)
    local md = {}
    for k, v in pairs(meta.metadata or {}) do md[k] = v end
    return {
      object = "instance",
      id = meta.id,
      status = meta.status,
      metadata = md,
      created_at = meta.created_at,
      snapshot_id = meta.snapshot_id,
      ttl = common.ttl_table(meta.ttl_seconds, meta.ttl_action, meta.expires_at),
      forked_from = meta.forked_from,
      host_dir = inst_dir(meta.id),
    }
  end

  local function public_snapshot(meta)
    local md = {}
    for k, v in pairs(meta.metadata or {}) do md[k] = v end
    return {
      object = "snapshot",
      id = meta.id,
      status = meta.status or "ready",
      metadata = md,
      created_at = meta.created_at,
      instance_id = meta.instance_id,
      digest = meta.digest,
      host_dir = meta.id ~= M.DEFAULT_SNAPSHOT and snap_dir(meta.id) or nil,
    }
  end

  local function not_found(kind, id, operation)
    return common.error("NOT_FOUND", ("no %s %s"):format(kind, tostring(id)),
      { operation = operation, resource = kind .. ":" .. tostring(id) })
  end

  local function must_instance(id, operation)
    if not valid_id(id) then error(not_found("instance", id, operation), 0) end
    local meta = load_meta(inst_dir(id))
    if not meta then error(not_found("instance", id, operation), 0) end
    return meta
  end

  -- Processes ------------------------------------------------------------------------------
  local function cgroup_dir(meta)
    return meta.cgroup
  end

  local function write_control(path, value)
    local ok, err = write_raw(path, value)
    if not ok then
      common.raise("PROCESS_ERROR", ("cannot write %s: %s"):format(path, tostring(err)), {})
    end
  end

  local function wait_for(cond, limit_ms, what)
    local start = runtime.now_ms()
    while not cond() do
      if runtime.now_ms() - start > limit_ms then
        common.raise("TIMEOUT", what .. " did not happen in time", { details = { waited_ms = limit_ms } })
      end
      local ok, err = runtime.sleep_ms(10)
      if not ok then error(err, 0) end
    end
  end

  local function cgroup_events(dir)
    local text = read_all(dir .. "/cgroup.events") or ""
    return {
      populated = text:match("populated (%d)") == "1",
      frozen = text:match("frozen (%d)") == "1",
    }
  end

  -- Pids whose environment says they belong to instance `id` (the fallback tracking).
  local function environ_pids(id)
    local needle = "\0GALLEY_INSTANCE_ID=" .. id .. "\0"
    local self_pid = runtime.getpid()
    local pids = {}
    for _, name in ipairs(list_names("/proc")) do
      local pid = tonumber(name)
      if pid and pid ~= self_pid then
        local env = read_all("/proc/" .. name .. "/environ")
        if env and ("\0" .. env):find(needle, 1, true) then pids[#pids + 1] = name end
      end
    end
    return pids
  end

  local function signal_pids(pids, sig)
    if #pids == 0 then return end
    local argv = { "kill", "-s", sig, "--" }
    for _, p in ipairs(pids) do argv[#argv + 1] = p end
    proc.run({ argv = argv, timeout_ms = 10000 }) -- some may have exited already: not an error
  end

  local function ensure_cgroup(meta)
    local dir = cgroup_dir(meta)
    if dir and not fs.exists(dir) then tool({ "mkdir", "-p", dir }, "mkdir cgroup") end
  end

  local function freeze(meta, on)
    local dir = cgroup_dir(meta)
    if dir then
      ensure_cgroup(meta)
      write_control(dir .. "/cgroup.freeze", on and "1" or "0")
      wait_for(function() return cgroup_events(dir).frozen == on end, FREEZE_WAIT_MS,
        on and "freezing the instance" or "thawing the instance")
    else
      signal_pids(environ_pids(meta.id), on and "STOP" or "CONT")
    end
  end

  local function kill_all(meta)
    local dir = cgroup_dir(meta)
    if dir then
      if fs.exists(dir) then
        write_control(dir .. "/cgroup.kill", "1")
        wait_for(function()
          local procs = read_all(dir .. "/cgroup.procs")
          return procs == nil or procs == ""
        end, KILL_WAIT_MS, "killing the instance's processes")
        -- Killed processes stay "populated" until their parent (often init) reaps them.
        pcall(wait_for, function() return not cgroup_events(dir).populated end, REAP_WAIT_MS, "reaping")
        local ok, err = remove_cgroup(dir)
        if not ok and fs.exists(dir) then
          log.warn("could not remove the cgroup (removed later)", { cgroup = dir, error = tostring(err) })
        end
      end
      -- Anything that left the cgroup but kept the marker goes too.
      signal_pids(environ_pids(meta.id), "KILL")
    else
      for _ = 1, 50 do
        local pids = environ_pids(meta.id)
        if #pids == 0 then return end
        signal_pids(pids, "CONT")
        signal_pids(pids, "KILL")
        runtime.sleep_ms(20)
      end
      if #environ_pids(meta.id) > 0 then
        common.raise("PROCESS_ERROR", "some processes of instance " .. meta.id .. " would not die", {})
      end
    end
  end

  -- Lifecycle internals (no TTL pass) -------------------------------------------------------
  local function destroy(meta)
    meta.status = "stopping"
    pcall(save_meta, inst_dir(meta.id), meta)
    kill_all(meta)
    tool({ "rm", "-rf", "--", inst_dir(meta.id) }, "remove the instance directory")
    provider.files.forget_instance(meta.id)
  end

  local function do_pause(meta)
    if meta.paused then return meta end
    freeze(meta, true)
    meta.paused = true
    meta.status = "stopped"
    save_meta(inst_dir(meta.id), meta)
    return meta
  end

  local function do_resume(meta)
    if meta.paused then
      freeze(meta, false)
      meta.paused = false
    end
    meta.status = "ready"
    if meta.ttl_seconds then meta.expires_at = now() + meta.ttl_seconds end
    save_meta(inst_dir(meta.id), meta)
    return meta
  end

  -- Applies TTLs: every public entry point calls this first.
  local function expire()
    local t = now()
    for _, id in ipairs(list_names(instances_dir)) do
      local meta = load_meta(inst_dir(id))
      local due = meta and meta.expires_at and meta.expires_at <= t and meta.status ~= "stopping"
      if due and not (meta.ttl_action == "pause" and meta.paused) then
        local ok, err = pcall(meta.ttl_action == "pause" and do_pause or destroy, meta)
        if ok then
          log.info("instance TTL expired", { instance = id, action = meta.ttl_action })
        else
          log.warn("could not apply an instance's TTL", { instance = id, error = tostring(err) })
        end
      end
    end
  end

  -- Copies the home and tmp trees of `src` (an instance or snapshot dir) into `dst`.
  local function copy_trees(src, dst)
    for _, sub in ipairs({ "home", "tmp" }) do
      tool({ "mkdir", "-p", dst .. "/" .. sub }, "create " .. sub)
      if fs.exists(src .. "/" .. sub) then
        tool({ "cp", "-a", "--", src .. "/" .. sub .. "/.", dst .. "/" .. sub .. "/" }, "copy " .. sub)
      end
    end
  end

  -- Runs fn with the instance frozen (when it is running), so copies are consistent.
  local function with_frozen(meta, fn)
    local was_running = not meta.paused and meta.status == "ready"
    if was_running then freeze(meta, true) end
    local ok, err = pcall(fn)
    if was_running then freeze(meta, false) end
    if not ok then error(err, 0) end
  end

  local function new_id(prefix, parent)
    for _ = 1, 20 do
      local id = prefix .. codec.random_hex(4)
      if not fs.exists(parent .. "/" .. id) then return id end
    end
    common.raise("PROVIDER_ERROR", "could not pick a free id", {})
  end

  -- Creates an instance, filled by populate(dir) (nil: empty home and tmp); returns its meta.
  local function create_instance(snapshot_id, populate, bopts, extra)
    local ttl_seconds, ttl_action = common.check_ttl(bopts)
    local metadata = common.check_metadata(bopts.metadata)
    local id = new_id("localvm_", instances_dir)
    local dir = inst_dir(id)
    tool({ "mkdir", "-m", "0700", dir }, "create the instance directory")
    local t = now()
    local meta = {
      id = id,
      status = "booting",
      snapshot_id = snapshot_id,
      created_at = t,
      metadata = metadata,
      ttl_seconds = ttl_seconds,
      ttl_action = ttl_seconds and ttl_action or nil,
      expires_at = ttl_seconds and (t + ttl_seconds) or nil,
      sandbox = sandbox,
      cgroup = cgroup_base and (cgroup_base .. "/" .. cgroup_tag .. "_" .. id) or nil,
      paused = false,
    }
    for k, v in pairs(extra or {}) do meta[k] = v end
    local ok, err = pcall(function()
      save_meta(dir, meta)
      if populate then
        populate(dir)
      else
        tool({ "mkdir", "-m", "0700", dir .. "/home" }, "create home")
        tool({ "mkdir", "-m", "1777", dir .. "/tmp" }, "create tmp")
      end
      if meta.cgroup then tool({ "mkdir", "-p", meta.cgroup }, "create the instance cgroup") end
      meta.status = "ready"
      save_meta(dir, meta)
    end)
    if not ok then
      if meta.cgroup then os.remove(meta.cgroup) end
      pcall(tool, { "rm", "-rf", "--", dir })
      error(err, 0)
    end
    run.track_instance(provider, id)
    log.debug("instance ready", { instance = id, snapshot = snapshot_id })
    return meta
  end

  -- Exec -----------------------------------------------------------------------------------
  local function home_of(meta)
    if sandbox then return home_dir end
    return inst_dir(meta.id) .. "/home"
  end

  local base_path = os.getenv("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

  -- Runs argv in the instance: {stdout, stderr, exit_code}. `env` adds variables, `cwd` is the
  -- directory as the instance sees it (default: its home).
  -- The process options (argv wrapped in the sandbox and the cgroup, environment) that run
  -- argv in the instance. `env` adds variables; `cwd` is the directory as the instance sees it
  -- (default: its home).
  local function process_options(meta, argv, env, cwd, operation)
    if meta.status ~= "ready" or meta.paused then
      common.raise("CONFLICT", ("instance %s is %s, not ready"):format(meta.id, meta.status),
        { operation = operation, resource = "instance:" .. meta.id, hint = "resume it first" })
    end
    local home = home_of(meta)
    local full_env = {
      PATH = base_path, HOME = home, USER = os.getenv("USER") or "root", LOGNAME = os.getenv("USER") or "root",
      SHELL = "/bin/bash", LANG = os.getenv("LANG") or "C.UTF-8", TERM = "dumb", GALLEY_INSTANCE_ID = meta.id,
    }
    for k, v in pairs(env or {}) do full_env[k] = v end
    cwd = cwd and common.expand_home(cwd, home) or home
    -- One small sh (ENTER) joins the instance's cgroup, changes directory and execs the
    -- command. In the sandbox it runs inside bwrap, with the instance's own cgroup directory bound
    -- writable (the rest of the cgroup tree stays read-only, so nothing can leave it).
    if meta.cgroup then ensure_cgroup(meta) end
    local cmd = {}
    if sandbox then
      local dir = inst_dir(meta.id)
      cmd = { bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--bind", dir .. "/home", home_dir, "--bind", dir .. "/tmp", "/tmp" }
      if meta.cgroup then
        for _, a in ipairs({ "--bind", meta.cgroup, meta.cgroup }) do cmd[#cmd + 1] = a end
      end
      for _, a in ipairs({ "--chdir", "/", "--" }) do cmd[#cmd + 1] = a end
    end
    for _, a in ipairs({ "/bin/sh", "-c", ENTER, "sh", meta.cgroup or "", cwd }) do cmd[#cmd + 1] = a end
    for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
    return { argv = cmd, env = full_env, env_mode = "replace" }
  end

  local function run_in(meta, argv, env, cwd, operation)
    local popts = process_options(meta, argv, env, cwd, operation)
    popts.timeout_ms, popts.max_output = opts.exec_timeout_ms, opts.max_output
    local r, err = proc.run(popts)
    if not r then
      if errors.is(err, "INTERRUPTED") then error(err, 0) end
      common.raise("PROCESS_ERROR", ("could not run a command in %s: %s"):format(meta.id, tostring(err)),
        { operation = operation, resource = "instance:" .. meta.id, cause = err })
    end
    if r.timed_out then
      common.raise("TIMEOUT", ("command in %s timed out"):format(meta.id),
        { operation = operation, resource = "instance:" .. meta.id })
    end
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code, truncated = r.truncated or nil }
  end

  local function exec_argv(id, argv)
    expire()
    local meta = must_instance(id, "exec")
    return run_in(meta, argv, nil, nil, "exec")
  end

  provider.files = execfiles.new({
    exec_argv = exec_argv,
    home_dir = sandbox and home_dir or function(id) return inst_dir(id) .. "/home" end,
    size_limit = opts.size_limit,
    log = log,
  })

  --- Runs a CommandSpec in an instance. Non-zero exits are results.
  ---@param instance_id string
  ---@param spec galley.CommandSpec
  ---@return {stdout: string, stderr: string, exit_code: integer}
  ---@raise NOT_FOUND | VALIDATION_ERROR | CONFLICT (paused) | PROCESS_ERROR | TIMEOUT
  function provider.exec(instance_id, spec)
    expire()
    local meta = must_instance(instance_id, "exec")
    spec = contracts.check_command(spec)
    if spec.kind == "argv" then
      local argv = { spec.command }
      for _, a in ipairs(spec.args) do argv[#argv + 1] = a end
      return run_in(meta, argv, spec.env, spec.cwd, "exec")
    end
    -- Shell form: a temporary script in the instance's /tmp, run as `/bin/bash <path>`.
    local name = ".galley-script-" .. codec.random_hex(8) .. ".sh"
    local host_path = inst_dir(meta.id) .. "/tmp/" .. name
    local ok, err = fs.write(host_path, spec.script, { mode = tonumber("600", 8) })
    if not ok then
      common.raise("FILE_IO_ERROR", "cannot write the script file: " .. tostring(err),
        { operation = "exec", resource = "instance:" .. meta.id })
    end
    local script_path = sandbox and ("/tmp/" .. name) or host_path
    local rok, res = pcall(run_in, meta, { "/bin/bash", script_path }, spec.env, spec.cwd, "exec")
    os.remove(host_path)
    if not rok then error(res, 0) end
    return res
  end

  --- Starts a command in an instance without waiting: a galley.core.proc Process handle
  --- (`read`, `write`, `kill`, `wait`, `close`), for streaming output. Takes a CommandSpec (argv
  --- form) or a plain argv array; the process joins the instance (sandbox, cgroup) like exec.
  ---@param instance_id string
  ---@param command galley.CommandSpec|string[]
  ---@param sopts? {stdin?: "null"|"pipe"|string}
  ---@return table process
  ---@raise NOT_FOUND | VALIDATION_ERROR | CONFLICT (paused) | PROCESS_ERROR (could not start)
  function provider.spawn(instance_id, command, sopts)
    expire()
    local meta = must_instance(instance_id, "spawn")
    local argv, env, cwd = command, nil, nil
    if type(command) == "table" and command.kind ~= nil then
      local spec = contracts.check_command(command)
      if spec.kind ~= "argv" then
        common.raise("VALIDATION_ERROR", "spawn takes the argv form (or a plain argv array)",
          { field = "command.kind" })
      end
      argv = { spec.command, table.unpack(spec.args) }
      env, cwd = spec.env, spec.cwd
    elseif type(command) ~= "table" or #command == 0 then
      common.raise("VALIDATION_ERROR", "spawn needs a CommandSpec or a non-empty argv array", { field = "command" })
    end
    for i, a in ipairs(argv) do
      if type(a) ~= "string" or a:find("\0", 1, true) then
        common.raise("VALIDATION_ERROR", ("command[%d] must be a string without NUL bytes"):format(i),
          { field = ("command[%d]"):format(i) })
      end
    end
    local popts = process_options(meta, argv, env, cwd, "spawn")
    popts.stdin = sopts and sopts.stdin or "null"
    local h, err = proc.spawn(popts)
    if not h then
      common.raise("PROCESS_ERROR", ("could not start a command in %s: %s"):format(meta.id, tostring(err)),
        { operation = "spawn", resource = "instance:" .. meta.id, cause = err })
    end
    return h
  end

  -- instances ------------------------------------------------------------------------------
  local I = provider.instances
  I.exec = provider.exec

  --- Boots an instance from a snapshot; returns when it is ready.
  ---@param snapshot_id? string default M.DEFAULT_SNAPSHOT
  ---@param bopts? {ttl_seconds?: integer, ttl_action?: "stop"|"terminate"|"pause", metadata?: table<string, string>}
  ---@return table instance
  ---@raise NOT_FOUND (snapshot) | VALIDATION_ERROR
  function I.boot(snapshot_id, bopts)
    expire()
    snapshot_id = snapshot_id or M.DEFAULT_SNAPSHOT
    bopts = run.boot_options(bopts)
    local source
    if snapshot_id ~= M.DEFAULT_SNAPSHOT then
      if not valid_id(snapshot_id, "snapshot_id") or not load_meta(snap_dir(snapshot_id)) then
        error(not_found("snapshot", snapshot_id, "instances.boot"), 0)
      end
      source = snap_dir(snapshot_id)
    end
    local populate = source and function(dir) copy_trees(source, dir) end
    return public_instance(create_instance(snapshot_id, populate, bopts))
  end

  --- The instance, or NOT_FOUND.
  ---@param instance_id string
  ---@return table instance
  function I.get(instance_id)
    expire()
    return public_instance(must_instance(instance_id, "instances.get"))
  end

  --- Instances whose metadata matches every key of the filter (`{metadata = {...}}` or a plain map).
  ---@param filter? table
  ---@return table[] instances, oldest first
  function I.list(filter)
    expire()
    local want = common.metadata_filter(filter)
    if want then want = common.check_metadata(want, "filter") end -- the same checks as Morph's list
    local out = {}
    for _, id in ipairs(list_names(instances_dir)) do
      local meta = load_meta(inst_dir(id))
      if meta and common.match_metadata(meta.metadata, want) then out[#out + 1] = public_instance(meta) end
    end
    table.sort(out, function(a, b)
      if a.created_at ~= b.created_at then return (a.created_at or 0) < (b.created_at or 0) end
      return a.id < b.id
    end)
    return out
  end

  --- Deletes the instance: kills every process in it and removes its files.
  ---@param instance_id string
  ---@return true
  ---@raise NOT_FOUND
  function I.terminate(instance_id)
    expire()
    destroy(must_instance(instance_id, "instances.terminate"))
    return true
  end

  --- Kills every process of the instance and keeps its files; status "ready" (a paused
  --- instance is thawed first). Re-arms the TTL like resume.
  ---@param instance_id string
  ---@return table instance
  ---@raise NOT_FOUND
  function I.reboot(instance_id)
    expire()
    local meta = must_instance(instance_id, "instances.reboot")
    kill_all(meta)
    if meta.paused then
      meta.paused = false
      if meta.cgroup then ensure_cgroup(meta) end
    end
    return public_instance(do_resume(meta))
  end

  --- Same as terminate (Morph's "stop" deletes the instance).
  I.stop = I.terminate

  --- Freezes every process of the instance; status "stopped".
  ---@param instance_id string
  ---@return table instance
  function I.pause(instance_id)
    expire()
    return public_instance(do_pause(must_instance(instance_id, "instances.pause")))
  end

  --- Thaws a paused instance; status "ready"; re-arms its TTL.
  ---@param instance_id string
  ---@return table instance
  function I.resume(instance_id)
    expire()
    return public_instance(do_resume(must_instance(instance_id, "instances.resume")))
  end

  -- Digests, as on Morph: a snapshot taken with a digest that a snapshot has returns that one.
  -- digests/<sha256 of digest>/id names the snapshot; the claim is made by renaming a directory
  -- into place (which fails when it exists) before the snapshot's meta.json is written, so
  -- concurrent builders agree on one snapshot and nobody lists the loser's copy.
  local digests_dir = state_dir .. "/digests"
  local function claim_path(digest) return digests_dir .. "/" .. codec.sha256(digest) end

  -- The claimed snapshot's meta; "pending" while its meta.json is being written; nil: none.
  local function digest_owner(digest)
    local id = read_all(claim_path(digest) .. "/id")
    if not id or not pcall(valid_id, id) then return nil end
    local m = load_meta(snap_dir(id))
    if m then return m end
    return fs.exists(snap_dir(id)) and "pending" or nil
  end

  local function claim_digest(digest, id)
    paths.private_dir(digests_dir)
    for _ = 1, 3 do
      local tmp = digests_dir .. "/.tmp-" .. codec.random_hex(8)
      tool({ "mkdir", "-m", "0700", tmp }, "create a digest claim")
      write_raw(tmp .. "/id", id)
      local ok = os.rename(tmp, claim_path(digest))
      pcall(tool, { "rm", "-rf", "--", tmp })
      if ok then return nil end
      local owner
      pcall(wait_for, function()
        owner = digest_owner(digest)
        return owner ~= "pending"
      end, KILL_WAIT_MS, "the digest's snapshot")
      if type(owner) == "table" then return owner end
      pcall(tool, { "rm", "-rf", "--", claim_path(digest) }) -- its snapshot is gone: a stale claim
    end
    return nil
  end

  local function take_snapshot(instance_id, sopts, operation)
    sopts = sopts or {}
    local meta = must_instance(instance_id, operation)
    local metadata = common.check_metadata(sopts.metadata)
    local existing = sopts.digest and digest_owner(sopts.digest)
    if type(existing) == "table" then return public_snapshot(existing) end
    local id = new_id("snapshot_", snapshots_dir)
    local dir = snap_dir(id)
    tool({ "mkdir", "-m", "0700", dir }, "create the snapshot directory")
    local smeta = { id = id, status = "ready", created_at = now(), metadata = metadata, instance_id = instance_id,
      digest = sopts.digest }
    local owner
    local ok, err = pcall(function()
      with_frozen(meta, function() copy_trees(inst_dir(instance_id), dir) end)
      owner = sopts.digest and claim_digest(sopts.digest, id)
      if not owner then save_meta(dir, smeta) end
    end)
    if not ok or owner then pcall(tool, { "rm", "-rf", "--", dir }) end
    if not ok then error(err, 0) end
    return public_snapshot(owner or smeta)
  end

  --- Snapshots the instance's home and /tmp (frozen meanwhile if it is running).
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string}
  ---@return table snapshot
  ---@raise NOT_FOUND
  function I.snapshot(instance_id, sopts)
    expire()
    return take_snapshot(instance_id, sopts, "instances.snapshot")
  end

  --- Makes `count` copies of a running instance (files copied while it is frozen).
  ---@param instance_id string
  ---@param count? integer default 1
  ---@param fopts? {metadata?: table<string, string>, ttl_seconds?: integer, ttl_action?: string}
  ---@return table[] instances (metadata defaults to the parent's)
  ---@raise NOT_FOUND | VALIDATION_ERROR
  function I.fork(instance_id, count, fopts)
    expire()
    count = count or 1
    if math.type(count) ~= "integer" or count < 1 then
      common.raise("VALIDATION_ERROR", "count must be a positive integer", { field = "count" })
    end
    local parent = must_instance(instance_id, "instances.fork")
    fopts = fopts or {}
    local bopts = { ttl_seconds = fopts.ttl_seconds, ttl_action = fopts.ttl_action, metadata = fopts.metadata }
    if bopts.metadata == nil then bopts.metadata = parent.metadata end
    bopts = run.boot_options(bopts)
    local out = {}
    local function populate(dir)
      with_frozen(parent, function() copy_trees(inst_dir(instance_id), dir) end)
    end
    for _ = 1, count do
      local meta = create_instance(parent.snapshot_id, populate, bopts, { forked_from = instance_id })
      out[#out + 1] = public_instance(meta)
    end
    return out
  end

  --- Alias of fork (Morph calls it branch).
  I.branch = I.fork

  -- snapshots ------------------------------------------------------------------------------
  local S = provider.snapshots
  local default_snapshot = { id = M.DEFAULT_SNAPSHOT, status = "ready", created_at = 0,
    metadata = { description = "empty home and /tmp" } }

  --- The snapshot, or NOT_FOUND.
  ---@param snapshot_id string
  ---@return table snapshot
  function S.get(snapshot_id)
    expire()
    if snapshot_id == M.DEFAULT_SNAPSHOT then return public_snapshot(default_snapshot) end
    local meta = valid_id(snapshot_id, "snapshot_id") and load_meta(snap_dir(snapshot_id))
    if not meta then error(not_found("snapshot", snapshot_id, "snapshots.get"), 0) end
    return public_snapshot(meta)
  end

  --- Snapshots matching a metadata filter (the default snapshot included when it matches).
  ---@param filter? table
  ---@return table[]
  function S.list(filter)
    expire()
    local want = common.metadata_filter(filter)
    if want then want = common.check_metadata(want, "filter") end -- the same checks as Morph's list
    local out = {}
    if common.match_metadata(default_snapshot.metadata, want) then out[1] = public_snapshot(default_snapshot) end
    for _, id in ipairs(list_names(snapshots_dir)) do
      local meta = load_meta(snap_dir(id))
      if meta and common.match_metadata(meta.metadata, want) then out[#out + 1] = public_snapshot(meta) end
    end
    return out
  end

  --- Same as instances.snapshot.
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string}
  ---@return table snapshot
  function S.create(instance_id, sopts)
    expire()
    return take_snapshot(instance_id, sopts, "snapshots.create")
  end

  --- Deletes a snapshot (instances booted from it are independent copies).
  ---@param snapshot_id string
  ---@return true
  ---@raise NOT_FOUND | VALIDATION_ERROR (the default snapshot)
  function S.delete(snapshot_id)
    expire()
    if snapshot_id == M.DEFAULT_SNAPSHOT then
      common.raise("VALIDATION_ERROR", "the default snapshot cannot be deleted", { field = "snapshot_id" })
    end
    if not valid_id(snapshot_id, "snapshot_id") or not load_meta(snap_dir(snapshot_id)) then
      error(not_found("snapshot", snapshot_id, "snapshots.delete"), 0)
    end
    local meta = load_meta(snap_dir(snapshot_id))
    if meta.digest and read_all(claim_path(meta.digest) .. "/id") == snapshot_id then
      tool({ "rm", "-rf", "--", claim_path(meta.digest) }, "remove the digest claim")
    end
    tool({ "rm", "-rf", "--", snap_dir(snapshot_id) }, "remove the snapshot")
    return true
  end

  --- Builds (or finds) an image from recipe steps, each cached by digest (galley.images).
  function S.build(...) return require("galley.images").build(provider, ...) end

  -- images ---------------------------------------------------------------------------------
  --- The one image: this machine's filesystem.
  ---@return table[]
  function provider.images.list()
    expire()
    return { {
      object = "image", id = M.IMAGE_ID, name = "host",
      description = sandbox and "this machine's filesystem, read-only in bubblewrap" or "this machine (no sandbox)",
      created_at = 0,
    } }
  end

  --- Nothing to release (instances live on in the state directory); here for parity with Morph.
  function provider.close() end

  run.register_provider(provider)
  return provider
end

return M
