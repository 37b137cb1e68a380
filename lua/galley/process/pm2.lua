--- galley.process.pm2: long-running processes under PM2 on an instance, through the provider's
-- exec (every call is an argv; fixed `sh -c` helper scripts take user data only as positional
-- arguments).
--
--   local pm2 = require("galley.process.pm2").new{provider = p}
--   local spec = pm2.process("web").command("python3", {"-m", "http.server", "8000"})
--     .cwd("~/site").env({PORT = "8000"}).restart({max_restarts = 5}).build()
--   local info = pm2.start(inst.id, spec)   -- {name = "web", pm_id, pid, status, ...}
--   pm2.logs(inst.id, "web", 50)            -- {out = "...", err = "..."}
--   pm2.stop(inst.id, "web"); pm2.delete(inst.id, "web")
--
-- start(instance_id, spec, {name?}):
--   1. writes every spec.files entry (galley.process.shell.upload_files; a failed write is a
--      PROCESS_ERROR naming the path);
--   2. `pm2 ping` where the daemon is not running (it starts it with the instance's own
--      environment; see ENSURE_DAEMON) and reads $HOME, $PATH and $PM2_HOME;
--   3. `pm2 delete NAME` (PM2 would otherwise add a second process of the same name and append
--      to its logs), truncates the log files the new process will use, then
--      `env -i PATH=.. HOME=.. [PM2_HOME=..] pm2 start bash --name NAME --no-autorestart -- -lc
--      <payload>` (galley.core.pm2.start_argv with env_clean) and `pm2 jlist`.
--   cwd and env are set inside the payload (never PM2's --cwd or env flags); the app's stdin is
--   /dev/null unless spec.stdin = "inherit". Because the CLI runs under `env -i`, the app's
--   environment holds only PATH and HOME, what the spec exports, what a login shell's profile
--   sets, PM2's own bookkeeping variables, and the variables named by opts.keep_env or the
--   provider's capabilities.keep_env (process markers): nothing else of the caller's. Do not put secrets in
--   spec.command.env (PM2 shows the payload in jlist and keeps it in dump.pm2); have the command
--   read them from a file. A payload over galley.core.pm2.PAYLOAD_MAX (one argv element) is
--   written to ~/.galley/pm2/<name>.sh (mode 700) and started as `bash <file>`.
--
-- Logs: PM2 pipes an app's output to its log files and loses the tail of a process that exits
-- quickly (seen here for 4 of 40 one-shot runs: "line 1" of 22). So by default the payload
-- starts with `exec >>'<out log>' 2>>'<err log>'` and the command writes the files itself
-- (appending, beside PM2, to the files jlist names); only a login profile's output still goes
-- through PM2. opts.direct_logs = false leaves it all to PM2.
--
-- Names: every name goes through galley.core.pm2.sanitize_name (letters, digits, '-', under 50
-- characters, never all digits or "all"); pass the same name to stop/logs as to start. A
-- ProcessSpec without a name (spec.command.name or opts.name) is a VALIDATION_ERROR.
--
-- list() runs `pm2 jlist` (`pm2 ping` first where the daemon is not running) and returns {name,
-- pm_id, pid, status, restarts, uptime_ms, memory, cpu, exit_code?, out_log?, err_log?, cwd?} per
-- process (nothing of the processes' environments); output it cannot parse gives {} and a warning in the log.
-- logs() reads the tails of the out/err files named by jlist: exact text, no prefixes.
--
-- Errors are ProcessError tables with `operation` ("pm2.start", "pm2.stop", ...) and `resource`
-- ("process:<name>"): NOT_FOUND for a name PM2 does not know (stop, restart, delete, logs);
-- PROCESS_ERROR for anything else, with `hint = M.INSTALL_HINT` when pm2 is not installed, and
-- `details = {exit_code, stderr}`; VALIDATION_ERROR for a bad spec or name.
local contracts = require("galley.contracts")
local core = require("galley.core.pm2")
local errors = require("galley.errors")
local logmod = require("galley.log")
local shellcore = require("galley.core.shell")
local shell_pm = require("galley.process.shell")

local M = {}

M.NAME = "pm2"
M.INSTALL_HINT = "install pm2 (npm install -g pm2)"
M.DEFAULT_LOG_LINES = 100
M.STDERR_TAIL = 2000

-- Exit code of the helper scripts when pm2 is not on PATH, and the line they print.
local MISSING_EXIT = 127
local MISSING_LINE = "galley: pm2 is not on PATH"

local GUARD = "command -v pm2 >/dev/null 2>&1 || { echo '" .. MISSING_LINE .. "' >&2; exit 127; }\n"

-- `pm2 ping` (which starts the daemon, with the instance's own environment, and keeps PM2's
-- spawn messages off the jlist that follows) unless the daemon is running: the pid in
-- $PM2_HOME/pm2.pid (no newline at its end) is a PM2 God Daemon (its title, cut to the length of its first argv, may
-- not hold the whole home) and its rpc.sock is there. Each pm2 command is a node start (~0.2 s
-- here); list() and every log poll paid two. (Were the pid another home's daemon, jlist would
-- start this home's and print its spawn messages first, which the parser skips.) In a subshell:
-- its variables never shadow the instance's (PROBE reads those the app keeps).
-- Several commands starting the daemon at once (a recipe starting agents on one instance from
-- several tasks) started several: all but one CLI hung until the time limit. So the start is
-- made under an flock(1) of $PM2_HOME/galley-start.lock (where flock exists), and the first to
-- hold it starts the daemon; the others find it running (after 30 s without the lock, a start
-- goes on as before: a process of the instance holding it cannot stop every start).
local ENSURE_DAEMON = [[
galley_pm2_up() {
  (pm2_dir=${PM2_HOME:-$HOME/.pm2} pm2_pid=
    read -r pm2_pid <"$pm2_dir/pm2.pid"; [ -n "$pm2_pid" ] && [ -S "$pm2_dir/rpc.sock" ] &&
    grep -q 'God Daemon' "/proc/$pm2_pid/cmdline") 2>/dev/null
}
if ! galley_pm2_up; then
  # (in a subshell: no variable of its own; a failed redirection of `exec` would end sh, so
  # another subshell tries it first; pm2 and the daemon it starts never get the lock's fd, and
  # pm2 is not the subshell's last command: sh would exec it, and the lock would go with fd 9)
  (lock=${PM2_HOME:-$HOME/.pm2}/galley-start.lock
    if command -v flock >/dev/null 2>&1 && mkdir -p -- "${lock%/*}" 2>/dev/null &&
      (: >>"$lock") 2>/dev/null; then
      exec 9>>"$lock"
      flock -w 30 9 2>/dev/null # (held longer, by a stuck start or anyone: go on without it)
    fi
    galley_pm2_up || pm2 ping 9>&- >&2 || exit $?
    exit 0) || exit $?
fi
]]

-- Starts the daemon (with the instance's own environment), then prints HOME, PATH, PM2_HOME
-- and, for each variable named in "$@" (checked identifiers), whether it is set and its value
-- (no shell variable of its own: a kept variable named like one would read its value).
local PROBE = GUARD .. ENSURE_DAEMON .. [[
printf '%s\0' "$HOME" "$PATH" "${PM2_HOME-}"
while [ $# -gt 0 ]; do eval "printf '%s\\0%s\\0' \"\${$1+1}\" \"\${$1-}\""; shift; done
]]

-- $1 name, $2 out log, $3 err log, then the `env -i ... pm2 start ...` argv.
local START = GUARD .. [[
name=$1 out=$2 err=$3
shift 3
pm2 delete "$name" >/dev/null 2>&1
mkdir -p -- "$(dirname -- "$out")" "$(dirname -- "$err")" 2>/dev/null
: >"$out" 2>/dev/null
: >"$err" 2>/dev/null
"$@" >&2 || exit $?
exec pm2 jlist
]]

local RUN = GUARD .. 'exec "$@"\n'

-- restart through a clean environment too (PM2 may take the caller's on restart); `keep` names
-- (checked identifiers) are kept as well.
local function run_clean(keep)
  local words = { 'PATH="$PATH"', 'HOME="$HOME"', '${PM2_HOME:+"PM2_HOME=$PM2_HOME"}' }
  for _, n in ipairs(keep) do words[#words + 1] = ('${%s+"%s=$%s"}'):format(n, n, n) end
  return GUARD .. "exec env -i " .. table.concat(words, " ") .. ' "$@"\n'
end

local JLIST = GUARD .. ENSURE_DAEMON .. [[
exec pm2 jlist
]]

-- $1 lines, $2 out file, $3 err file: out tail on stdout, err tail on stderr.
local TAILS = [[
tail -n "$1" -- "$2" 2>/dev/null
{ tail -n "$1" -- "$3" 2>/dev/null; } >&2
exit 0
]]


local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end


--- Time limit of every command the manager runs on an instance (pm2 ping/start/jlist, log
-- reads): a PM2 daemon that died inside an instance must not hang a run (opts.exec_timeout_ms).
M.DEFAULT_EXEC_TIMEOUT_MS = 120000

--- Largest chunk of a log that one read_logs call returns per stream.
M.READ_LOGS_MAX = 1024 * 1024

-- $1 out log, $2 err log, $3 out offset, $4 err offset, $5 max bytes: prints
-- "<out size> <err size>\n", then each file's bytes from its offset (0 when the file shrank:
-- it was truncated by a restart), at most $5 bytes each; the Lua side slices by the sizes.
local READ_FROM = [[
size() { s=$(wc -c < "$1" 2>/dev/null) || s=0; echo "${s:-0}"; }
o=$(size "$1"); e=$(size "$2")
oo=$3; eo=$4
[ "$o" -lt "$oo" ] && oo=0
[ "$e" -lt "$eo" ] && eo=0
ol=$((o - oo)); el=$((e - eo))
[ "$ol" -gt "$5" ] && ol=$5
[ "$el" -gt "$5" ] && el=$5
printf '%s %s %s %s\n' "$oo" "$ol" "$eo" "$el"
[ "$ol" -gt 0 ] && tail -c +$((oo + 1)) -- "$1" 2>/dev/null | head -c "$ol"
[ "$el" -gt 0 ] && tail -c +$((eo + 1)) -- "$2" 2>/dev/null | head -c "$el"
exit 0
]]

--- The name PM2 will use for `s` (galley.core.pm2.sanitize_name).
---@param s string
---@return string
function M.sanitize_name(s)
  return core.sanitize_name(s)
end


--- A ProcessSpec builder with dot-called, chainable setters (no `self`):
--   pm2.process("web").command("node", {"server.js"}).cwd("/srv").env({A = "1"})
--     .restart({max_restarts = 3}).instances(1).max_memory("512M")
--     .logs({out = "/var/log/web.out"}).file("~/cfg.json", "{}", "600").stdin("null").build()
-- `command(program, args?)` gives the argv form, `script(text)` the shell form (the last one
-- wins); `env` merges into earlier calls. build() checks the result (contracts.check_process)
-- and returns a normalized ProcessSpec whose command.name is the sanitized name.
---@param name string
---@return table builder
---@raise VALIDATION_ERROR from build() for a bad field
function M.process(name)
  if type(name) ~= "string" or name == "" then
    error(errors.ProcessError("VALIDATION_ERROR", "process name must be a non-empty string", { field = "name" }), 0)
  end
  local state = { env = nil, files = {} }
  local b = {}
  function b.command(program, args)
    state.kind, state.program, state.args, state.script = "argv", program, args, nil
    return b
  end
  function b.script(text)
    state.kind, state.script, state.program, state.args = "shell", text, nil, nil
    return b
  end
  function b.cwd(dir) state.cwd = dir return b end
  function b.env(vars)
    state.env = state.env or {}
    for k, v in pairs(vars) do state.env[k] = v end
    return b
  end
  function b.restart(policy) state.restart = policy return b end
  function b.instances(n) state.instances = n return b end
  function b.max_memory(size) state.max_memory = size return b end
  function b.logs(paths) state.logs = paths return b end
  function b.stdin(mode) state.stdin = mode return b end
  function b.file(path, content, mode)
    state.files[#state.files + 1] = { path = path, content = content, mode = mode }
    return b
  end
  function b.build()
    local command = { kind = state.kind or "argv", cwd = state.cwd, env = state.env, name = core.sanitize_name(name) }
    if command.kind == "argv" then
      command.command, command.args = state.program, state.args
    else
      command.script = state.script
    end
    return contracts.check_process({
      command = command, restart = state.restart, instances = state.instances, max_memory = state.max_memory,
      logs = state.logs, stdin = state.stdin, files = #state.files > 0 and state.files or nil,
    })
  end
  return b
end


--- The variable names a manager keeps when it cleans an environment: opts.keep_env plus the
-- provider's capabilities.keep_env (variables that mark an instance's processes, e.g. for a
-- provider that finds them by environment). Raises VALIDATION_ERROR for a bad name.
---@param opts table
---@return string[]
function M.keep_env(opts)
  local out, seen = {}, {}
  local caps = type(opts.provider) == "table" and type(opts.provider.capabilities) == "table"
    and opts.provider.capabilities or {}
  for _, list in ipairs({ opts.keep_env or {}, caps.keep_env or {} }) do
    for _, n in ipairs(list) do
      if type(n) ~= "string" or not n:match("^[A-Za-z_][A-Za-z0-9_]*$") then
        errors.raise("VALIDATION_ERROR", "keep_env: names must be shell identifiers", { field = "keep_env" })
      end
      if not seen[n] then
        seen[n] = true
        out[#out + 1] = n
      end
    end
  end
  return out
end


-- The command as a shell-form script that first sends its own stdout/stderr to the log files
-- (appending, like PM2 does).
local function with_direct_logs(command, home, out_log, err_log)
  local body = command.script
  if command.kind == "argv" then
    local plan = shellcore.plan({ kind = "argv", command = command.command, args = command.args }, { home = home })
    body = plan.script or ("exec -- " .. shellcore.join(plan.argv) .. "\n")
  end
  return { kind = "shell", name = command.name, cwd = command.cwd, env = command.env,
    script = ("exec >>%s 2>>%s\n%s"):format(shellcore.quote(out_log), shellcore.quote(err_log), body) }
end


--- Creates a PM2 process manager.
---@param opts {provider: table, log?: galley.Logger, keep_env?: string[], direct_logs?: boolean}
--- keep_env: variables of the caller's environment the app keeps besides PATH and HOME (see
--- M.keep_env); direct_logs (default true): the command writes its own log files (see the header)
---@return table manager `{name, process, start, stop, restart, delete, list, logs, stop_all, delete_all, kill}`
---@raise VALIDATION_ERROR when opts.provider is missing
function M.new(opts)
  if type(opts) ~= "table" or type(opts.provider) ~= "table" then
    errors.raise("VALIDATION_ERROR", "galley.process.pm2.new: opts.provider is required", { field = "provider" })
  end
  local provider = opts.provider
  local log = opts.log or logmod.default().child({ prefix = "pm2" })
  local keep = M.keep_env(opts)
  local direct_logs = opts.direct_logs ~= false
  local exec_opts = { timeout_ms = opts.exec_timeout_ms or M.DEFAULT_EXEC_TIMEOUT_MS }
  local RUN_CLEAN = run_clean(keep)
  local pm = { name = M.NAME, process = M.process, sanitize_name = M.sanitize_name }

  local function fail(code, message, context, fields)
    local f = copy(fields)
    f.operation, f.resource = context.operation, context.resource
    error(errors.ProcessError(code, message, f), 0)
  end

  -- Runs `sh -c script sh args...` on the instance; raises when pm2 is missing.
  local function sh(instance_id, context, script, args)
    local argv = { "-c", script, "sh" }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local r = provider.exec(instance_id, { kind = "argv", command = "sh", args = argv }, exec_opts)
    r.stdout, r.stderr = r.stdout or "", r.stderr or ""
    if r.exit_code == MISSING_EXIT and r.stderr:find(MISSING_LINE, 1, true) then
      fail("PROCESS_ERROR", "pm2 is not installed on instance " .. tostring(instance_id), context,
        { hint = M.INSTALL_HINT, details = { exit_code = r.exit_code } })
    end
    return r
  end

  local function failed(r, what, context)
    local tail = shell_pm.tail(r.stderr, M.STDERR_TAIL)
    local last = tail:gsub("%s+$", ""):match("([^\n]*)$")
    fail("PROCESS_ERROR", ("%s failed (exit %d)%s"):format(what, r.exit_code,
      last ~= "" and (": " .. shell_pm.tail(last, 300)) or ""), context,
      { details = { exit_code = r.exit_code, stderr = tail } })
  end

  -- A name (sanitized) or a pm_id (integer >= 0) for stop/restart/delete/logs.
  local function target(name_or_id, operation)
    if math.type(name_or_id) == "integer" and name_or_id >= 0 then return name_or_id, tostring(name_or_id) end
    if type(name_or_id) ~= "string" or name_or_id == "" then
      error(errors.ProcessError("VALIDATION_ERROR", "expected a process name or pm_id", {
        field = "name", operation = operation }), 0)
    end
    local name = core.sanitize_name(name_or_id)
    return name, name
  end

  local function parse_list(stdout, context)
    local list, warning = core.parse_jlist(stdout)
    if warning then
      log.warn("could not read all of pm2 jlist", { warning = warning, operation = context.operation })
    end
    return list
  end

  -- Runs `pm2 <action> <target>`; a name PM2 does not know is NOT_FOUND.
  local function act(action, instance_id, name_or_id, script)
    local operation = "pm2." .. action
    local t, label = target(name_or_id, operation)
    local context = { operation = operation, resource = "process:" .. label }
    local r = sh(instance_id, context, script or RUN, core.argv(action, t))
    if r.exit_code ~= 0 then
      if r.stderr:find("not found", 1, true) or r.stderr:find("id unknown", 1, true) then
        fail("NOT_FOUND", ("no PM2 process %s on %s"):format(label, tostring(instance_id)), context,
          { details = { exit_code = r.exit_code } })
      end
      failed(r, "pm2 " .. action .. " " .. label, context)
    end
    log.debug(action, { process = label, instance = instance_id })
    return true
  end

  --- Starts (or replaces) a process. See the module header for the steps.
  ---@param instance_id string
  ---@param spec galley.ProcessSpec
  ---@param sopts? {name?: string} overrides spec.command.name
  ---@return table info the process as list() shows it right after the start
  ---@raise VALIDATION_ERROR (bad spec, no name) | PROCESS_ERROR (pm2 missing: hint; upload failed:
  --- details.path; pm2 start failed: details.exit_code/stderr) | the provider's errors
  function pm.start(instance_id, spec, sopts)
    spec = contracts.check_process(spec)
    local raw = sopts and sopts.name or spec.command.name
    if type(raw) ~= "string" or raw == "" then
      error(errors.ProcessError("VALIDATION_ERROR", "a PM2 process needs a name (spec.command.name or opts.name)", {
        field = "name", operation = "pm2.start" }), 0)
    end
    local name = core.sanitize_name(raw)
    local context = { operation = "pm2.start", resource = "process:" .. name }

    shell_pm.upload_files(provider, instance_id, spec.files, context)

    local probe = sh(instance_id, context, PROBE, keep)
    if probe.exit_code ~= 0 then failed(probe, "pm2 ping", context) end
    local fields = {}
    for v in probe.stdout:gmatch("([^%z]*)%z") do fields[#fields + 1] = v end
    local home, path, pm2_home = fields[1], fields[2], fields[3]
    if not home or home == "" or path == "" or #fields ~= 3 + 2 * #keep then
      fail("PROCESS_ERROR", "could not read HOME and PATH on the instance", context, {})
    end
    local env_clean = { PATH = path, HOME = home }
    if pm2_home ~= "" then env_clean.PM2_HOME = pm2_home end
    for i, n in ipairs(keep) do
      if fields[2 + 2 * i] == "1" then env_clean[n] = fields[3 + 2 * i] end
    end
    local logs_dir = (pm2_home ~= "" and pm2_home or (home .. "/.pm2")) .. "/logs"

    local run_spec = copy(spec)
    run_spec.files = nil
    local out_log, err_log = logs_dir .. "/" .. name .. "-out.log", logs_dir .. "/" .. name .. "-error.log"
    if spec.logs then
      run_spec.logs = {}
      if spec.logs.out then
        out_log = shellcore.expand_home(spec.logs.out, home)
        run_spec.logs.out = out_log
      end
      if spec.logs.err then
        err_log = shellcore.expand_home(spec.logs.err, home)
        run_spec.logs.err = err_log
      end
    end

    if direct_logs then
      run_spec.command = with_direct_logs(spec.command, home, out_log, err_log)
      -- PM2 is told the same paths, so jlist names the files the command really writes; with
      -- several instances --merge-logs stops it from adding "-<n>" to them.
      run_spec.logs = { out = out_log, err = err_log }
    end

    local argv, err = core.start_argv(run_spec, { name = name, home = home, env_clean = env_clean })
    if not argv and errors.is(err, "PM2_PAYLOAD_TOO_LARGE") then
      -- Too big for one argv element: run the same script from a file.
      local plan = shellcore.plan(run_spec.command, { home = home })
      local script = plan.script or ("exec -- " .. shellcore.join(plan.argv) .. "\n")
      local file = home .. "/.galley/pm2/" .. name .. ".sh"
      shell_pm.upload_files(provider, instance_id, { { path = file, content = script, mode = "700" } }, context)
      run_spec.command = { kind = "argv", command = "/bin/bash", args = { file }, name = name }
      argv, err = core.start_argv(run_spec, { name = name, home = home, env_clean = env_clean })
      log.debug("payload moved to a file", { process = name, bytes = #script })
    end
    if not argv then
      fail("VALIDATION_ERROR", tostring(err and err.message or err), context, { hint = err and err.hint })
    end
    if (spec.instances or 1) > 1 then
      for i, a in ipairs(argv) do
        if a == "-o" or a == "-e" or a == "--" then
          table.insert(argv, i, "--merge-logs")
          break
        end
      end
    end

    local args = { name, out_log, err_log }
    for _, a in ipairs(argv) do args[#args + 1] = a end
    local r = sh(instance_id, context, START, args)
    if r.exit_code ~= 0 then failed(r, "pm2 start " .. name, context) end
    local function find(stdout)
      local info
      for _, item in ipairs(parse_list(stdout, context)) do
        if item.name == name and (not info or (item.pm_id or -1) > (info.pm_id or -1)) then info = item end
      end
      return info
    end
    local info = find(r.stdout)
    if not info then
      -- Seen once under load (CI, sanitizers): pm2 start exited 0 and the jlist right after it
      -- lacked the app. A second look decides; a pending Ctrl-C fails this exec as INTERRUPTED.
      log.warn("pm2 jlist after start lacks the process; asking again", { process = name,
        instance = instance_id, jlist = shell_pm.tail(r.stdout, 300) })
      local again = sh(instance_id, context, JLIST, {})
      if again.exit_code == 0 then info = find(again.stdout) end
    end
    if not info then
      fail("PROCESS_ERROR", "pm2 start did not register " .. name, context,
        { details = { jlist = shell_pm.tail(r.stdout, 2000) } })
    end
    log.info("process started", { process = name, instance = instance_id, pm_id = info.pm_id, status = info.status })
    return info
  end

  --- Stops a process (SIGINT to its tree, SIGKILL after PM2's kill timeout); it stays listed.
  ---@param instance_id string
  ---@param name string|integer a name (sanitized like start's) or a pm_id
  ---@return true
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.stop(instance_id, name)
    return act("stop", instance_id, name)
  end

  --- Restarts a process with the command and environment it was started with.
  ---@param instance_id string
  ---@param name string|integer
  ---@return true
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.restart(instance_id, name)
    return act("restart", instance_id, name, RUN_CLEAN)
  end

  --- Stops and removes a process (every process of that name). Its log files stay.
  ---@param instance_id string
  ---@param name string|integer
  ---@return true
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.delete(instance_id, name)
    return act("delete", instance_id, name)
  end

  local function all(action, instance_id)
    local context = { operation = "pm2." .. action .. "_all", resource = "process:all" }
    local r = sh(instance_id, context, RUN, { "pm2", action, "all" })
    if r.exit_code ~= 0 and not r.stderr:find("No process found", 1, true) then
      failed(r, "pm2 " .. action .. " all", context)
    end
    return true
  end

  --- Stops every process (none is fine).
  ---@param instance_id string
  ---@return true
  ---@raise PROCESS_ERROR
  function pm.stop_all(instance_id)
    return all("stop", instance_id)
  end

  --- Removes every process (none is fine).
  ---@param instance_id string
  ---@return true
  ---@raise PROCESS_ERROR
  function pm.delete_all(instance_id)
    return all("delete", instance_id)
  end

  --- Stops the PM2 daemon and every process (`pm2 kill`).
  ---@param instance_id string
  ---@return true
  ---@raise PROCESS_ERROR
  function pm.kill(instance_id)
    local context = { operation = "pm2.kill", resource = "process:all" }
    local r = sh(instance_id, context, RUN, core.kill_argv())
    if r.exit_code ~= 0 then failed(r, "pm2 kill", context) end
    return true
  end

  --- The processes PM2 knows, in pm_id order.
  ---@param instance_id string
  ---@return {name: string, pm_id: integer, pid: integer, status: string, restarts: integer, uptime_ms: integer,
  ---  memory: integer, cpu: number, exit_code?: integer, out_log?: string, err_log?: string, cwd?: string}[]
  ---@raise PROCESS_ERROR (pm2 missing or failing)
  function pm.list(instance_id)
    local context = { operation = "pm2.list", resource = "process:all" }
    local r = sh(instance_id, context, JLIST)
    if r.exit_code ~= 0 then failed(r, "pm2 jlist", context) end
    return parse_list(r.stdout, context)
  end

  local function find_info(instance_id, t, label, context)
    local r = sh(instance_id, context, JLIST)
    if r.exit_code ~= 0 then failed(r, "pm2 jlist", context) end
    local info
    for _, item in ipairs(parse_list(r.stdout, context)) do
      if (item.name == t or item.pm_id == t) and (not info or (item.pm_id or -1) > (info.pm_id or -1)) then
        info = item
      end
    end
    if not info then
      fail("NOT_FOUND", ("no PM2 process %s on %s"):format(label, tostring(instance_id)), context, {})
    end
    return info
  end

  --- The last `lines` lines of a process's out and err logs, as stored (no prefixes).
  ---@param instance_id string
  ---@param name string|integer
  ---@param lines? integer default M.DEFAULT_LOG_LINES
  ---@return {out: string, err: string}
  ---@raise NOT_FOUND (no such process) | PROCESS_ERROR | VALIDATION_ERROR (lines)
  function pm.logs(instance_id, name, lines)
    local t, label = target(name, "pm2.logs")
    local context = { operation = "pm2.logs", resource = "process:" .. label }
    lines = lines or M.DEFAULT_LOG_LINES
    if math.type(lines) ~= "integer" or lines < 1 then
      fail("VALIDATION_ERROR", "lines must be a positive integer", context, { field = "lines" })
    end
    local info = find_info(instance_id, t, label, context)
    local tails = provider.exec(instance_id, { kind = "argv", command = "sh",
      args = { "-c", TAILS, "sh", tostring(lines), info.out_log or "/dev/null", info.err_log or "/dev/null" } },
      exec_opts)
    return { out = tails.stdout or "", err = tails.stderr or "" }
  end

  --- The bytes a process wrote to its out and err logs since the byte offsets given (what
  --- orchestrator.follow uses: nothing is shown twice, repeated lines are not lost). A log that
  --- shrank (truncated by a restart) is read from 0 again, with `reset.out`/`reset.err` set.
  ---@param instance_id string
  ---@param name string|integer
  ---@param offsets? {out?: integer, err?: integer} default 0, 0
  ---@return {out: string, err: string, offsets: {out: integer, err: integer}, reset: {out: boolean, err: boolean}}
  ---@raise NOT_FOUND (no such process) | PROCESS_ERROR
  function pm.read_logs(instance_id, name, offsets)
    local t, label = target(name, "pm2.read_logs")
    local context = { operation = "pm2.read_logs", resource = "process:" .. label }
    offsets = offsets or {}
    local oo, eo = math.tointeger(offsets.out or 0), math.tointeger(offsets.err or 0)
    if not oo or oo < 0 or not eo or eo < 0 then
      fail("VALIDATION_ERROR", "offsets must be non-negative integers", context, { field = "offsets" })
    end
    local info = find_info(instance_id, t, label, context)
    local r = provider.exec(instance_id, { kind = "argv", command = "sh", args = { "-c", READ_FROM, "sh",
      info.out_log or "/dev/null", info.err_log or "/dev/null", tostring(oo), tostring(eo),
      tostring(M.READ_LOGS_MAX) } }, exec_opts)
    local stdout = r.stdout or ""
    local o_from, o_len, e_from, e_len, rest = stdout:match("^(%d+) (%d+) (%d+) (%d+)\n()")
    if not o_from then
      fail("PROCESS_ERROR", "could not read the logs of " .. label, context,
        { details = { exit_code = r.exit_code, stderr = shell_pm.tail(r.stderr or "", 500) } })
    end
    o_from, o_len, e_from, e_len = tonumber(o_from), tonumber(o_len), tonumber(e_from), tonumber(e_len)
    local out = stdout:sub(rest, rest + o_len - 1)
    local err = stdout:sub(rest + #out, rest + #out + e_len - 1)
    return {
      out = out, err = err,
      offsets = { out = o_from + #out, err = e_from + #err },
      reset = { out = o_from < oo, err = e_from < eo },
    }
  end

  return pm
end


return M
