--- support.host_provider: a TEST DOUBLE of a VM provider that runs commands on this machine,
-- for the process-manager specs. It is not a sandbox: an "instance" is a scratch directory
-- whose home/ becomes $HOME (so PM2_HOME defaults to a private ~/.pm2) and whose tmux/ becomes
-- TMUX_TMPDIR (a private tmux server). Absolute paths touch the host.
--
--   local host = require("support.host_provider")
--   local p = host.new{env = {SOME_SECRET = "..."}}   -- extra variables in every exec's environment
--   local inst = p.instances.boot()                     -- {id, home, root}
--   p.exec(inst.id, {kind = "argv", command = "pm2", args = {"jlist"}})  -> {stdout, stderr, exit_code}
--   p.files.write_file_atomic(inst.id, "~/x/y.txt", "data", {mode = "600", create_dirs = true})
--   p.instances.terminate(inst.id)    -- pm2 kill, tmux kill-server, SIGKILL leftovers, rm -rf
--
-- Exec follows the provider contract: a CommandSpec goes through galley.core.shell.plan (with
-- `~` as the instance home) and runs as its argv, or as `/bin/bash <script file>`, with a
-- replaced environment: PATH (the host's), HOME, USER, LOGNAME, SHELL, LANG, TMUX_TMPDIR,
-- GALLEY_HOST_INSTANCE=<id> and opts.env. Non-zero exits are results.
--
-- M.providers() lists the providers the process specs run on (see there).
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local proc = require("galley.core.proc")
local shell = require("galley.core.shell")

local M = {}

local TIMEOUT_MS = 120000


local function sh(argv)
  local r = assert(proc.run({ argv = argv, timeout_ms = TIMEOUT_MS }))
  return r
end


local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end


--- Pids of processes (other than us) whose environment holds `needle` ("NAME=value").
---@param needle string
---@return string[]
function M.pids_with_env(needle)
  local self = tostring(require("galley.core.runtime").getpid())
  local out = {}
  local r = sh({ "ls", "/proc" })
  for name in r.stdout:gmatch("%d+") do
    if name ~= self then
      local env = read_all("/proc/" .. name .. "/environ")
      if env and ("\0" .. env):find("\0" .. needle .. "\0", 1, true) then out[#out + 1] = name end
    end
  end
  return out
end


--- Calls fn every 100 ms until it returns a truthy value (returned), failing the spec with
-- `what` after timeout_ms (default 30 s). A deadline, not a timing assertion.
---@param fn fun(): any
---@param what string
---@param timeout_ms? integer
---@return any
function M.wait_for(fn, what, timeout_ms)
  local runtime = require("galley.core.runtime")
  local deadline = runtime.now_ms() + (timeout_ms or 30000)
  while true do
    local v = fn()
    if v then return v end
    if runtime.now_ms() > deadline then error("timed out waiting for " .. what, 2) end
    runtime.sleep_ms(100)
  end
end


--- Calls fn and returns the error table it raises; fails unless its code is `code`.
---@param code string
---@param fn function
---@return table err
function M.raises_code(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error with code " .. code)
  if type(err) ~= "table" or err.code ~= code then
    local got = type(err) == "table" and (tostring(err.code) .. ": " .. tostring(err.message)) or tostring(err)
    error(("expected code %s, got %s"):format(code, got), 2)
  end
  return err
end


--- Creates the host provider double.
---@param opts? {env?: table<string, string>}
---@return table provider `{name, exec, files = {write_file_atomic}, instances = {boot, terminate}}`
function M.new(opts)
  opts = opts or {}
  local instances = {}
  local p = { name = "host", instances = {}, files = {} }

  local function get(id)
    local inst = instances[id]
    if not inst then
      error(errors.ProviderError("NOT_FOUND", "no instance " .. tostring(id),
        { resource = "instance:" .. tostring(id) }), 0)
    end
    return inst
  end

  local function environment(inst, extra)
    local env = {
      PATH = os.getenv("PATH"), HOME = inst.home, USER = "root", LOGNAME = "root", SHELL = "/bin/bash",
      LANG = "C.UTF-8", TMUX_TMPDIR = inst.root .. "/tmux", GALLEY_HOST_INSTANCE = inst.id,
    }
    for k, v in pairs(opts.env or {}) do env[k] = v end
    for k, v in pairs(extra or {}) do env[k] = v end
    return env
  end

  --- Boots an "instance" (a scratch directory).
  ---@return {id: string, home: string, root: string}
  function p.instances.boot()
    local root = sh({ "mktemp", "-d", "/tmp/galley-host-XXXXXX" }).stdout:gsub("%s+$", "")
    sh({ "mkdir", "-p", root .. "/home", root .. "/tmux" })
    local id = "hostvm_" .. root:match("galley%-host%-(.+)$")
    local inst = { id = id, root = root, home = root .. "/home" }
    instances[id] = inst
    return { id = id, home = inst.home, root = root }
  end

  --- Runs a CommandSpec; `{stdout, stderr, exit_code}` (TIMEOUT past eopts.timeout_ms).
  ---@param id string
  ---@param spec galley.CommandSpec
  ---@param eopts? {timeout_ms?: integer}
  function p.exec(id, spec, eopts)
    local inst = get(id)
    spec = contracts.check_command(spec)
    local plan = shell.plan(spec, { home = inst.home })
    local argv, script_path = plan.argv, nil
    if not argv then
      script_path = inst.root .. "/script-" .. tostring(math.random(1 << 30)) .. ".sh"
      local f = assert(io.open(script_path, "wb"))
      f:write(plan.script)
      f:close()
      argv = { "/bin/bash", script_path }
    end
    local r, err = proc.run({ argv = argv, cwd = inst.home, env = environment(inst), env_mode = "replace",
      timeout_ms = eopts and eopts.timeout_ms or TIMEOUT_MS })
    if script_path then os.remove(script_path) end
    if not r then error(errors.ProviderError("PROCESS_ERROR", tostring(err), { cause = err }), 0) end
    if r.timed_out then
      error(errors.ProviderError("TIMEOUT", "command timed out", { operation = "exec", resource = "instance:" .. id }), 0)
    end
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
  end
  p.instances.exec = p.exec

  --- Writes a file atomically (temporary file, chmod, rename).
  ---@param id string
  ---@param path string absolute or "~"-prefixed
  ---@param content string
  ---@param wopts? {mode?: string, create_dirs?: boolean}
  ---@return true
  ---@raise FILE_IO_ERROR
  function p.files.write_file_atomic(id, path, content, wopts)
    local inst = get(id)
    wopts = wopts or {}
    path = shell.expand_home(path, inst.home)
    local dir = path:match("^(.*)/[^/]*$")
    local function fail(what)
      error(errors.ProviderError("FILE_IO_ERROR", ("%s: %s"):format(path, what), { resource = "file:" .. path,
        operation = "files.write_file_atomic" }), 0)
    end
    if wopts.create_dirs and dir ~= "" and sh({ "mkdir", "-p", "--", dir }).exit_code ~= 0 then
      fail("cannot create the directory")
    end
    local tmp = path .. ".tmp-" .. tostring(math.random(1 << 30))
    local f = io.open(tmp, "wb")
    if not f then fail("cannot open for writing") end
    f:write(content)
    f:close()
    if sh({ "chmod", wopts.mode or "600", "--", tmp }).exit_code ~= 0 or not os.rename(tmp, path) then
      os.remove(tmp)
      fail("cannot finish the write")
    end
    return true
  end

  --- Ends everything the instance started and removes its directory.
  ---@param id string
  ---@return true
  function p.instances.terminate(id)
    local inst = get(id)
    local env = environment(inst)
    if proc.which("pm2") then
      proc.run({ argv = { "pm2", "kill" }, env = env, env_mode = "replace", timeout_ms = TIMEOUT_MS })
    end
    if proc.which("tmux") then
      proc.run({ argv = { "tmux", "kill-server" }, env = env, env_mode = "replace", timeout_ms = TIMEOUT_MS })
    end
    -- Anything left (a PM2 app or pane that ignored its signals) carries HOME=<home>.
    for _ = 1, 50 do
      local pids = M.pids_with_env("HOME=" .. inst.home)
      if #pids == 0 then break end
      local argv = { "kill", "-KILL", "--" }
      for _, pid in ipairs(pids) do argv[#argv + 1] = pid end
      proc.run({ argv = argv })
      require("galley.core.runtime").sleep_ms(20)
    end
    sh({ "rm", "-rf", "--", inst.root })
    instances[id] = nil
    return true
  end

  --- Processes still alive in the instance (their environment holds HOME=<home>).
  ---@param id string
  ---@return string[] pids
  function p.leftovers(id)
    return M.pids_with_env("HOME=" .. get(id).home)
  end

  return p
end


--- opts for a manager's new() on a target: `base` plus the target's manager_opts.
---@param target table from providers()[i].new()
---@param base table
---@return table
function M.manager_opts(target, base)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(target.manager_opts or {}) do out[k] = v end
  return out
end


--- The providers the process-manager specs run on: `{{label, secret_env?, new = fun(): target}, ...}`
-- where a target is `{provider, boot = fun(): instance, cleanup = fun(), manager_opts = table}`;
-- specs pass manager_opts to the managers' new() (keep_env for providers that find an
-- instance's processes by an environment marker, a private tmux socket where instances share
-- the machine's /tmp).
-- - "host": this double, always (every exec's environment carries GALLEY_TEST_SECRET, a secret in
--   the caller's environment).
-- - "local": galley.providers.local (bubblewrap sandboxes) when bwrap is installed.
-- - "emulator": galley.providers.morph on `galley emulate` (support.emulator), when the morph
--   provider loads: the whole Morph path (HTTP exec, execfiles over exec).
-- GALLEY_PROCESS_PROVIDERS="host,local" restricts the list (ctest runs some specs once per
-- provider that way, CMakeLists.txt's GALLEY_PER_PROVIDER_SPECS).
---@return table[]
function M.providers()
  local want = M.wants
  local list = {}
  local secret = { GALLEY_TEST_SECRET = "sk-ant-host-secret-0123456789" }
  if want("host") then
    list[#list + 1] = {
      label = "host",
      secret_env = secret,
      new = function()
        local p = M.new({ env = secret })
        return { provider = p, boot = function() return p.instances.boot() end, cleanup = function() end,
          manager_opts = {} }
      end,
    }
  end
  local ok_local, local_mod = pcall(require, "galley.providers.local")
  if want("local") and ok_local and proc.which("bwrap") then
    list[#list + 1] = {
      label = "local",
      new = function()
        local state = sh({ "mktemp", "-d", "/tmp/galley-pm-local-XXXXXX" }).stdout:gsub("%s+$", "")
        local p = local_mod.new({ state_dir = state, sandbox = true })
        local environ = p.capabilities.process_tracking == "environ"
        return {
          provider = p,
          boot = function() return p.instances.boot(p.DEFAULT_SNAPSHOT) end,
          cleanup = function() sh({ "rm", "-rf", "--", state }) end,
          manager_opts = { keep_env = environ and { "GALLEY_INSTANCE_ID" } or nil },
        }
      end,
    }
  end
  local ok_morph, morph_mod = pcall(require, "galley.providers.morph")
  if want("emulator") and ok_morph then
    list[#list + 1] = {
      label = "emulator",
      new = function()
        local emulator = require("support.emulator")
        local em = emulator.start({ boot_delay_ms = 0 })
        -- (exec_backstop_ms: the emulator on loopback answers at once; a command whose output a
        -- process outside it holds open, as a stopped tmux server does, is given up sooner)
        local ok, p = pcall(morph_mod.new, { api_key = em.api_key, base_url = em.base_url, home_dir = false,
          retry = { max_attempts = 3, base_delay_ms = 10, max_delay_ms = 100 }, boot_timeout_ms = 30000,
          exec_backstop_ms = 4000 })
        if not ok then
          em:stop()
          error(p, 0)
        end
        return {
          provider = p,
          boot = function() return p.instances.boot(emulator.SNAPSHOT) end,
          cleanup = function()
            p.close()
            em:stop()
          end,
          -- A tmux server of its own in case the emulator's instances share this machine's /tmp.
          manager_opts = { socket = "galley-test-" .. tostring(require("galley.core.runtime").getpid()) },
        }
      end,
    }
  end
  return list
end


--- Whether GALLEY_PROCESS_PROVIDERS (unset: all) names the provider `label`. A spec's checks that
-- need no provider of the list run with "host" (once, where ctest splits the spec by provider).
---@param label string
---@return boolean
function M.wants(label)
  local wanted = os.getenv("GALLEY_PROCESS_PROVIDERS")
  return not wanted or ("," .. wanted .. ","):find("," .. label .. ",", 1, true) ~= nil
end


--- Starts a target for a process-manager spec: its provider, one booted instance and a manager
-- made by `manager_mod.new` (silent log). Returns target, provider, instance, manager.
function M.start_target(target, manager_mod)
  local t = target.new()
  local p = t.provider
  local inst = t.boot()
  local mgr = manager_mod.new(M.manager_opts(t, { provider = p, log = require("galley.log").silent() }))
  return t, p, inst, mgr
end

--- Terminates the instance, checks that none of its processes survived, cleans the target up.
function M.stop_target(t, inst)
  if inst then
    local home = inst.home
    t.provider.instances.terminate(inst.id)
    if home then require("luassert").are.same({}, M.pids_with_env("HOME=" .. home), "processes left behind") end
  end
  if t then t.cleanup() end
end

return M
