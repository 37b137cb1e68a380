--- galley.orchestrator: boot a machine, install credentials and machine info, start agent
-- sessions and follow them. It composes a provider, a process manager, an agent and a
-- credentials installer; it polls nothing itself during boot (the provider returns ready).
--
--   local orch = require("galley.orchestrator").new{provider = p, process_manager = pm,
--     agent = claude_agent, events = "/tmp/events.jsonl"}
--   local m = orch.boot_and_prepare(snapshot, {ttl_seconds = 1800, credential_profiles = {profile},
--     machine_info = {purpose = "demo"}})
--   local s = orch.start_session(m.instance_id, {session_name = "hi", prompt = "Say hi"})
--   orch.follow(m.instance_id, s.process_name, {on_line = print})   -- until the process exits
--
-- boot_and_prepare makes one provider call to boot and ONE exec for every credential profile
-- plus `~/.machine.json` (they go to the installer as one batch; post-install commands add one
-- exec each). If a step after the boot fails, the instance is terminated unless `keep` (or the
-- run's --keep) says otherwise, and the error says so: kind OrchestrationError, the underlying
-- code (CREDENTIALS_ERROR, NOT_FOUND, ...; ORCHESTRATION_ERROR for non-galley errors), and
-- `details = {instance_id, step, cleanup = "terminated"|"kept"|"failed", cause = {code, message}}`.
-- A boot failure has `details.step = "boot"` and no instance. Instances booted inside a recipe
-- run are also the run's (galley.run): the orchestrator only terminates what failed to prepare,
-- and leaves everything else to the run's own cleanup.
--
-- Events: boot_started, boot_ready, boot_error, creds_installed, machine_info_written,
-- prepare_error, cleanup, session_started, session_error, session_exited. Each is
-- `{ts, event, instance_id?, ...}` (ts: ISO 8601 UTC; fields never hold secrets, and pass
-- through galley.log.redact anyway). They go to the logger (info; errors at warn) and to
-- `events`: a function called with the event table, or a path where each event is appended as
-- one JSON line.
--
-- follow: polls `process_manager.list` and `logs` every `interval_ms` (default 1000) and calls
-- `on_line(line, stream)` for each new line ("out" or "err"). New lines are found by lining up
-- the previous answer's tail with the new answer, so it sees at most `lines` (default 1000)
-- lines per poll: output faster than that between two polls loses lines. With `until_exit`
-- (default true) it returns once the process is no longer running (any status other than
-- online/launching/running/stopping/waiting restart, or gone from the list), after a final read
-- of its logs; otherwise after one read.
local cjson = require("cjson").new()
local errors = require("galley.errors")
local logmod = require("galley.log")
local run = require("galley.tracker")
local runtime = require("galley.core.runtime")
local task = require("galley.task")
local util = require("galley.util")

local M = {}

M.MACHINE_INFO_PATH = "~/.machine.json"
M.MACHINE_INFO_MODE = "640"
M.DEFAULT_FOLLOW_INTERVAL_MS = 1000
M.DEFAULT_FOLLOW_LINES = 1000
--- The longest line follow passes on whole: a longer one (a process that never prints a newline)
-- comes in pieces of this size, so what follow holds stays bounded (claude's stream-json lines
-- are well under it).
M.MAX_LINE_BYTES = 16 * 1024 * 1024

--- Process statuses that mean "still running" (PM2's and generic ones).
M.RUNNING_STATUSES = { online = true, launching = true, running = true, starting = true, stopping = true,
  ["waiting restart"] = true, waiting = true }


local function iso_now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end


local function cause_of(err)
  if type(err) == "table" then
    return { code = err.code or "INTERNAL_ERROR", message = err.message and tostring(err.message) or tostring(err) }
  end
  return { code = "INTERNAL_ERROR", message = tostring(err) }
end


local function bad(field, message)
  error(errors.OrchestrationError("VALIDATION_ERROR", ("%s: %s"):format(field, message), { field = field }), 0)
end


-- Lines of a log text (no trailing empty line).
local function split_lines(text)
  local out = {}
  if type(text) ~= "string" or text == "" then return out end
  for line in (text:sub(-1) == "\n" and text or text .. "\n"):gmatch("(.-)\r?\n") do out[#out + 1] = line end
  return out
end


--- The lines of `cur` that are new since `prev` (both the tail of the same growing log):
-- when `cur` starts with all of `prev`, what follows; else what follows the longest suffix of
-- `prev` that `cur` starts with; else all of `cur`.
---@param prev string[]
---@param cur string[]
---@return string[]
function M.new_lines(prev, cur)
  local function matches_at(k) -- prev's last k lines == cur's first k lines
    for j = 1, k do
      if prev[#prev - k + j] ~= cur[j] then return false end
    end
    return true
  end
  for k = math.min(#prev, #cur), 1, -1 do
    if matches_at(k) then return table.move(cur, k + 1, #cur, 1, {}) end
  end
  return table.move(cur, 1, #cur, 1, {})
end


---@class galley.PrepareOptions
---@field ttl_seconds? integer
---@field ttl_action? "stop"|"terminate"|"pause"
---@field metadata? table<string, string>
---@field credential_profiles? table[] galley.credentials profiles
---@field machine_info? table written to ~/.machine.json with created_at
---@field keep? boolean keep the instance when a step after boot fails (default: the run's --keep)

---@class galley.FollowOptions
---@field until_exit? boolean default true
---@field interval_ms? integer default 1000
---@field lines? integer log lines read per poll, default 1000
---@field on_line? fun(line: string, stream: "out"|"err") default: print to stdout
---@field timeout_ms? integer give up (TIMEOUT) after this long

---@class galley.OrchestratorOptions
---@field provider table a VM provider (instances, files, exec, capabilities)
---@field process_manager? table `{start, logs, list}` (needed for sessions)
---@field agent? table `{name, to_process_spec}` (needed for sessions)
---@field installer? table `{install_all?, install}`; default galley.credentials.new{provider}
---@field log? galley.Logger
---@field events? string|fun(event: table) a JSON-lines file path or a function

--- Creates an orchestrator.
---@param opts galley.OrchestratorOptions
---@return table orchestrator `{boot_and_prepare, start_session, logs, list_processes, follow, terminate, emit}`
---@raise VALIDATION_ERROR (no provider, bad events sink)
function M.new(opts)
  opts = opts or {}
  local provider = opts.provider
  if type(provider) ~= "table" or type(provider.instances) ~= "table" then
    bad("provider", "expected a provider")
  end
  local log = opts.log or logmod.new({ prefix = "orch" })
  local sessions = {} -- "<instance>\0<process name>" -> the session name that started it
  local installer = opts.installer
    or require("galley.credentials").new({ provider = provider, log = log.child({ prefix = "credentials" }) })
  local pm, agent = opts.process_manager, opts.agent
  local sink = opts.events
  if sink ~= nil and type(sink) ~= "string" and type(sink) ~= "function" then
    bad("events", "expected a path or a function")
  end

  local orch = {}
  local sink_warned = false

  local function write_sink(ev)
    if sink == nil then return end
    local ok, err = pcall(function()
      if type(sink) == "function" then
        sink(ev)
      else
        local f = assert(io.open(sink, "a"))
        f:write((cjson.encode(ev):gsub("\\/", "/")), "\n")
        f:close()
      end
    end)
    if not ok and not sink_warned then
      sink_warned = true
      log.warn("event sink failed; further failures are not reported", { error = tostring(err) })
    end
  end

  --- Emits a structured event to the logger and the sink.
  ---@param event string
  ---@param fields? table non-secret fields (instance_id among them when there is one)
  ---@return table event the event as sent
  function orch.emit(event, fields)
    local ev = logmod.redact(util.merge(fields or {}, { ts = iso_now(), event = event }))
    setmetatable(ev, nil)
    local level = (event:match("error$") or (event == "cleanup" and ev.action == "failed")) and "warn" or "info"
    local logged = util.merge(ev)
    logged.ts, logged.event = nil, nil
    log[level](event, logged)
    write_sink(ev)
    return ev
  end

  local function need(what, v)
    if type(v) ~= "table" then
      error(errors.OrchestrationError("ORCHESTRATION_ERROR", ("this orchestrator has no %s"):format(what),
        { field = what, hint = ("pass %s to orchestrator.new"):format(what) }), 0)
    end
    return v
  end

  -- An OrchestrationError for a failed step, keeping the underlying code.
  local function step_error(step, err, fields)
    local cause = cause_of(err)
    local code = errors.is(err) and err.code or "ORCHESTRATION_ERROR"
    local details = { step = step, cause = cause }
    for k, v in pairs(fields) do details[k] = v end
    if type(err) == "table" and type(err.details) == "table" then
      details.cause.details = err.details
    end
    local where = details.instance_id and (" on " .. details.instance_id) or ""
    local tail = ""
    if details.cleanup == "terminated" then tail = "; the instance was terminated"
    elseif details.cleanup == "kept" then tail = "; the instance was kept"
    elseif details.cleanup == "failed" then tail = "; terminating the instance failed too" end
    return errors.OrchestrationError(code, ("%s failed%s: %s%s"):format(step, where, cause.message, tail), {
      operation = "orchestrator." .. (fields.operation or step),
      resource = details.instance_id and ("instance:" .. details.instance_id) or nil,
      details = details,
      hint = type(err) == "table" and err.hint or nil,
      signal = type(err) == "table" and err.signal or nil, -- Ctrl-C vs SIGTERM decides the exit code
    })
  end

  local function terminate(instance_id, reason)
    local ok, err = pcall(provider.instances.terminate, instance_id)
    if ok or errors.is(err, "NOT_FOUND") then
      orch.emit("cleanup", { instance_id = instance_id, action = "terminated", reason = reason })
      return "terminated"
    end
    orch.emit("cleanup", { instance_id = instance_id, action = "failed", reason = reason, code = cause_of(err).code })
    return "failed", err
  end

  --- Terminates an instance and emits a `cleanup` event (NOT_FOUND counts as done).
  ---@param instance_id string
  ---@return true
  ---@raise ORCHESTRATION_ERROR-kind error with the provider's code when terminate fails
  function orch.terminate(instance_id)
    local status, err = terminate(instance_id, "requested")
    if status == "failed" then
      error(step_error("terminate", err, { instance_id = instance_id, operation = "terminate" }), 0)
    end
    return true
  end

  -- The steps after boot, batched: every profile plus the machine info in one install_all.
  local function prepare(instance_id, popts)
    local profiles = {}
    for i, p in ipairs(popts.credential_profiles or {}) do profiles[i] = p end
    local info = {}
    if popts.machine_info ~= nil then
      if type(popts.machine_info) ~= "table" then bad("machine_info", "expected a table") end
      info = util.deep_copy(popts.machine_info)
    end
    info.created_at = iso_now()
    local machine = { name = "machine_info", files = {
      { path = M.MACHINE_INFO_PATH, content = cjson.encode(info):gsub("\\/", "/") .. "\n", mode = M.MACHINE_INFO_MODE },
    } }
    local all = util.merge(profiles)
    all[#all + 1] = machine
    local ok, res
    if installer.install_all then
      ok, res = pcall(installer.install_all, instance_id, all)
    else
      ok, res = pcall(function()
        for _, p in ipairs(all) do installer.install(instance_id, p) end
      end)
    end
    if not ok then
      local d = type(res) == "table" and type(res.details) == "table" and res.details or {}
      local step = d.profile == "machine_info" and "machine_info" or (d.step == "post_install" and "post_install")
        or "install"
      return nil, step, res
    end
    local names = {}
    for i, p in ipairs(profiles) do names[i] = type(p) == "table" and p.name or tostring(i) end
    orch.emit("creds_installed", { instance_id = instance_id, profiles = names, count = #names })
    orch.emit("machine_info_written",
      { instance_id = instance_id, path = M.MACHINE_INFO_PATH, mode = M.MACHINE_INFO_MODE })
    return true
  end

  --- Boots an instance (ready on return), installs every credential profile and writes
  -- `~/.machine.json` (`machine_info` plus `created_at`, mode 640) in one exec.
  ---@param snapshot_id string
  ---@param popts? galley.PrepareOptions
  ---@return {instance_id: string, capabilities: table, instance: table}
  ---@raise error of kind OrchestrationError: the underlying code (NOT_FOUND, CREDENTIALS_ERROR, ...)
  ---  with details {instance_id?, step = "boot"|"install"|"machine_info"|"post_install", cleanup?, cause}
  function orch.boot_and_prepare(snapshot_id, popts)
    popts = popts or {}
    if popts.credential_profiles ~= nil and (type(popts.credential_profiles) ~= "table"
        or not util.is_array(popts.credential_profiles)) then
      bad("credential_profiles", "expected an array of profiles")
    end
    local started = runtime.now_ms()
    orch.emit("boot_started", { snapshot_id = snapshot_id, ttl_seconds = popts.ttl_seconds })
    local ok, inst = pcall(provider.instances.boot, snapshot_id, {
      ttl_seconds = popts.ttl_seconds, ttl_action = popts.ttl_action, metadata = popts.metadata })
    if not ok then
      orch.emit("boot_error", { snapshot_id = snapshot_id, code = cause_of(inst).code })
      error(step_error("boot", inst, { snapshot_id = snapshot_id, operation = "boot_and_prepare" }), 0)
    end
    local id = inst.id
    orch.emit("boot_ready", { instance_id = id, snapshot_id = snapshot_id, boot_ms = runtime.now_ms() - started })

    local pok, done, step, err = pcall(prepare, id, popts)
    if not pok then done, step, err = nil, "install", done end
    if not done then
      local keep = popts.keep
      if keep == nil then
        local ctx = run.current()
        keep = ctx ~= nil and ctx.keep == true
      end
      orch.emit("prepare_error", { instance_id = id, step = step, code = cause_of(err).code })
      local cleanup, cerr
      if keep then
        cleanup = "kept"
        orch.emit("cleanup", { instance_id = id, action = "kept", reason = step .. " failed" })
      else
        cleanup, cerr = terminate(id, step .. " failed")
      end
      error(step_error(step, err, { instance_id = id, cleanup = cleanup, operation = "boot_and_prepare",
        cleanup_error = cerr and cause_of(cerr) or nil }), 0)
    end
    local caps = util.deep_copy(provider.capabilities or {})
    return { instance_id = id, capabilities = caps, instance = inst }
  end

  --- Starts an agent session: agent.to_process_spec(input) → process_manager.start.
  ---@param instance_id string
  ---@param input table the agent's session input (prompt, session_name, ...)
  ---@return {process_name: string, process: table} `process`: what the process manager's start returned
  ---@raise kind OrchestrationError with the underlying code (VALIDATION_ERROR, PROCESS_ERROR, ...),
  ---  details {instance_id, step = "agent"|"start", cause}
  function orch.start_session(instance_id, input)
    local a, p = need("agent", agent), need("process_manager", pm)
    local ok, spec = pcall(a.to_process_spec, input)
    if not ok then
      orch.emit("session_error", { instance_id = instance_id, step = "agent", code = cause_of(spec).code })
      error(step_error("agent", spec, { instance_id = instance_id, operation = "start_session" }), 0)
    end
    local name = spec.command and spec.command.name
    local who = input and (input.session_name or input.name) or name
    local key = tostring(instance_id) .. "\0" .. tostring(name)
    if name and sessions[key] ~= nil and sessions[key] ~= who then
      local err = errors.OrchestrationError("CONFLICT", ("session %q and session %q both map to process %s on %s")
        :format(tostring(sessions[key]), tostring(who), name, tostring(instance_id)), {
        operation = "start_session", resource = "process:" .. name, field = "session_name",
        hint = "give the sessions names that differ in letters or digits (other characters become '-')",
        details = { instance_id = instance_id, process_name = name, step = "agent" } })
      orch.emit("session_error", { instance_id = instance_id, step = "agent", code = "CONFLICT" })
      error(err, 0)
    end
    local sok, res = pcall(p.start, instance_id, spec, { name = name })
    if not sok then
      orch.emit("session_error", { instance_id = instance_id, step = "start", process_name = name,
        code = cause_of(res).code })
      error(step_error("start", res,
        { instance_id = instance_id, process_name = name, operation = "start_session" }), 0)
    end
    local process_name = type(res) == "table" and res.name or name
    if name then sessions[key] = who end
    orch.emit("session_started", { instance_id = instance_id, process_name = process_name, agent = a.name })
    return { process_name = process_name, process = res }
  end

  --- The process manager's logs of a process: `{out, err}`.
  ---@param instance_id string
  ---@param name string
  ---@param lines? integer
  ---@return {out: string, err: string}
  ---@raise the process manager's error, as kind OrchestrationError (details.step = "logs")
  function orch.logs(instance_id, name, lines)
    local p = need("process_manager", pm)
    local ok, res = pcall(p.logs, instance_id, name, lines)
    if not ok then error(step_error("logs", res, { instance_id = instance_id, process_name = name }), 0) end
    return res
  end

  --- The process manager's process list.
  ---@param instance_id string
  ---@return table[]
  ---@raise the process manager's error, as kind OrchestrationError (details.step = "list")
  function orch.list_processes(instance_id)
    local p = need("process_manager", pm)
    local ok, res = pcall(p.list, instance_id)
    if not ok then error(step_error("list", res, { instance_id = instance_id }), 0) end
    return res
  end

  local function find_process(instance_id, name)
    for _, proc in ipairs(orch.list_processes(instance_id) or {}) do
      if proc.name == name then return proc end
    end
    return nil
  end

  --- Follows a process's output (see the header): calls `on_line(line, stream)` for each new
  -- line; with `until_exit` (default true) returns once the process stopped running.
  ---@param instance_id string
  ---@param name string
  ---@param fopts? galley.FollowOptions
  ---@return {status: string, exit_code?: integer, lines: integer}
  ---@raise TIMEOUT (timeout_ms passed) | INTERRUPTED | the process manager's errors
  function orch.follow(instance_id, name, fopts)
    fopts = fopts or {}
    local until_exit = fopts.until_exit ~= false
    local interval = fopts.interval_ms or M.DEFAULT_FOLLOW_INTERVAL_MS
    local nlines = fopts.lines or M.DEFAULT_FOLLOW_LINES
    local on_line = fopts.on_line or function(line) io.stdout:write(util.visible(line, true), "\n") end
    local count = 0
    local p_mgr = need("process_manager", pm)

    -- Byte offsets when the process manager can read from one (PM2): every byte once, in
    -- order, however often a line repeats. Otherwise the last `lines` lines of each poll are
    -- matched against the previous poll's (tmux panes).
    local offsets, partial = { out = 0, err = 0 }, { out = "", err = "" }
    local seen = { out = {}, err = {} }

    -- on_line for each piece of at most MAX_LINE_BYTES of line; returns how many
    local function emit_line(line, stream)
      local max, n = M.MAX_LINE_BYTES, 0
      while #line > max do
        on_line(line:sub(1, max), stream)
        line, n = line:sub(max + 1), n + 1
      end
      on_line(line, stream)
      return n + 1
    end

    local function emit_text(stream, text, final)
      local buf = partial[stream] .. text
      local fresh, pos = 0, 1
      while true do
        local nl = buf:find("\n", pos, true)
        if not nl then break end
        fresh = fresh + emit_line((buf:sub(pos, nl - 1):gsub("\r$", "")), stream)
        pos = nl + 1
      end
      local rest = buf:sub(pos)
      -- a line with no end yet: what passed the bound goes on now (nothing held grows past it)
      while #rest > M.MAX_LINE_BYTES do
        fresh = fresh + emit_line(rest:sub(1, M.MAX_LINE_BYTES), stream)
        rest = rest:sub(M.MAX_LINE_BYTES + 1)
      end
      partial[stream] = rest
      if final and rest ~= "" then
        fresh = fresh + emit_line(rest, stream)
        partial[stream] = ""
      end
      return fresh
    end

    local function pump(missing, final)
      local fresh = 0
      if p_mgr.read_logs then
        local ok, chunk = pcall(p_mgr.read_logs, instance_id, name, offsets)
        if not ok then
          if missing and errors.is(chunk, "NOT_FOUND") then return 0 end
          error(step_error("logs", chunk, { instance_id = instance_id, process_name = name }), 0)
        end
        for _, stream in ipairs({ "out", "err" }) do
          if chunk.reset and chunk.reset[stream] then partial[stream] = "" end
          fresh = fresh + emit_text(stream, chunk[stream] or "", final)
        end
        offsets = chunk.offsets
      else
        local ok, l = pcall(orch.logs, instance_id, name, nlines)
        if not ok then
          if missing and errors.is(l, "NOT_FOUND") then return 0 end
          error(l, 0)
        end
        l = l or {}
        for _, stream in ipairs({ "out", "err" }) do
          local cur = split_lines(l[stream])
          for _, line in ipairs(M.new_lines(seen[stream], cur)) do
            on_line(line, stream)
            fresh = fresh + 1
          end
          seen[stream] = cur
        end
      end
      count = count + fresh
      return fresh
    end

    local function sleep(ms)
      local ok, err = runtime.sleep_ms(ms)
      if not ok then error(err, 0) end
    end

    if not until_exit then
      pump(false, false)
      local p = find_process(instance_id, name)
      return { status = p and p.status or "missing", exit_code = p and p.exit_code, lines = count }
    end

    local function follow_to_exit()
      while true do
        local p = find_process(instance_id, name)
        local status = p and p.status or "missing"
        pump(p == nil, false)
        if not M.RUNNING_STATUSES[status] then
          -- Log files may trail the exit a little: read until nothing new arrives (twice at most).
          for _ = 1, 2 do
            sleep(math.min(interval, 200))
            if pump(p == nil, false) == 0 then break end
          end
          pump(p == nil, true)
          local exit_code = p and math.tointeger(p.exit_code) or nil
          orch.emit("session_exited", { instance_id = instance_id, process_name = name, status = status,
            exit_code = exit_code, lines = count })
          if status == "errored" or (exit_code and exit_code ~= 0) then
            orch.emit("session_error", { instance_id = instance_id, process_name = name, step = "run",
              status = status, exit_code = exit_code })
          end
          return { status = status, exit_code = exit_code, lines = count }
        end
        sleep(interval)
      end
    end

    if not fopts.timeout_ms then return follow_to_exit() end
    -- The whole wait is bounded, not just the sleeps: a log read or list that hangs is
    -- cancelled with the rest when the time is up.
    local timed_out = false
    local worker = task.spawn(follow_to_exit)
    local timer = task.spawn(function()
      task.sleep(fopts.timeout_ms)
      timed_out = true
      worker:cancel()
    end)
    local ok, res = worker:result()
    timer:cancel()
    if timed_out then
      error(errors.OrchestrationError("TIMEOUT", ("%s still running after %d ms"):format(name, fopts.timeout_ms), {
        operation = "orchestrator.follow", resource = "process:" .. name,
        details = { instance_id = instance_id, process_name = name, step = "follow" } }), 0)
    end
    if not ok then error(res, 0) end
    return res
  end

  return orch
end

return M
