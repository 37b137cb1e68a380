--- galley.process.tmux: interactive sessions (an agent's TUI, a shell) in detached tmux
-- sessions on an instance, through the provider's exec. Every call is one exec of a fixed
-- `sh -c` helper script that takes user data only as positional arguments.
--
--   local tmux = require("galley.process.tmux").new{provider = p}
--   tmux.start(inst.id, {command = {kind = "argv", command = "claude", cwd = "~/repo", name = "cc"}},
--              {width = 160, height = 48})
--   tmux.send_keys(inst.id, "cc", "fix the failing test", {enter = true})
--   tmux.capture(inst.id, "cc")              -- the visible pane as text
--   tmux.logs(inst.id, "cc", 500)            -- {out = last 500 lines incl. scrollback, err = ""}
--   tmux.resize(inst.id, "cc", 200, 50)
--   tmux.stop(inst.id, "cc")                 -- C-c, wait up to 3 s, then SIGKILL
--   tmux.delete(inst.id, "cc")               -- stop if needed, then remove the session
--
-- start: the session runs `exec env -i <KEEP_ENV> bash -lc '<script>'`, where the script is
-- galley.core.shell.plan's (cd + export + the command; "~" is the remote $HOME). The command's
-- environment is therefore only what the spec exports, a login shell's profile, and KEEP_ENV
-- taken from the tmux server (TERM, HOME, PATH, locale, user and shell names, TMUX) plus
-- opts.keep_env and the provider's capabilities.keep_env: nothing else of the caller's. A
-- command string over INLINE_MAX bytes (tmux limits one command's size) is written to
-- ~/.galley/tmux/<name>.sh (mode 700) and run from there. spec.files are written first.
-- remain-on-exit is on, so when the command exits the session stays with its last screen
-- (status "exited" with exit_code or signal; briefly "exiting" while tmux reaps it) until stop
-- or delete. A same-named session is killed first (start always gives a fresh session).
-- The PM2-only fields (restart, instances, max_memory, logs, stdin) are ignored: the pane is the
-- terminal.
--
-- stop (graceful, then force): when the command is running, send C-c, poll every 500 ms for up
-- to 3 s (on the instance, one exec) for the pane to die; if it still runs, SIGKILL its process
-- group. Returns {name, ended = "graceful"|"forced"|"exited", exit_code?, signal?} ("exited":
-- it had already ended). The dead pane stays readable; delete removes the session.
--
-- Names go through galley.core.pm2.sanitize_name (letters, digits, '-'), so a session is
-- addressed exactly (tmux's "=name" targets; no prefix matching). opts.socket selects a tmux
-- server by name (`tmux -L <socket>`); the default server lets people `tmux attach -t <name>`.
--
-- Every exec the manager makes has a time limit (opts.exec_timeout_ms, default 120 s, as the PM2
-- manager's): a hung tmux server fails the call with the provider's TIMEOUT.
--
-- Errors are ProcessError tables with operation "tmux.<op>" and resource "process:<name>":
-- NOT_FOUND for a session that does not exist; PROCESS_ERROR otherwise, with
-- hint = M.INSTALL_HINT when tmux is not installed and details = {exit_code, stderr}.
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local logmod = require("galley.log")
local pm2core = require("galley.core.pm2")
local shellcore = require("galley.core.shell")
local shell_pm = require("galley.process.shell")

local M = {}

M.NAME = "tmux"
M.INSTALL_HINT = "install tmux (apt-get install tmux)"
M.DEFAULT_WIDTH = 200
M.DEFAULT_HEIGHT = 50
M.DEFAULT_LOG_LINES = 100
--- Time limit of every command the manager runs on an instance (opts.exec_timeout_ms): a tmux
--- server that hangs (stopped, or wedged) must not hang a run: the call fails with TIMEOUT.
M.DEFAULT_EXEC_TIMEOUT_MS = 120000
M.STDERR_TAIL = 2000
--- Largest command string passed to tmux inline (tmux messages are limited to ~16 KiB).
M.INLINE_MAX = 8 * 1024
--- Bytes of text per send-keys call.
M.SEND_CHUNK = 4 * 1024
--- Variables the command keeps from the tmux server's environment.
M.KEEP_ENV = { "TERM", "COLORTERM", "LANG", "LC_ALL", "HOME", "PATH", "USER", "LOGNAME", "SHELL", "TMUX",
  "TMUX_PANE" }
--- Graceful stop: polls and their interval (500 ms, up to 3 s).
M.STOP_POLLS = 6
M.STOP_POLL_SECONDS = "0.5"

local MISSING_EXIT, MISSING_LINE = 127, "galley: tmux is not on PATH"
local NO_SESSION_EXIT, NO_SESSION_LINE = 44, "galley: no such tmux session"


local function prelude(socket)
  local tmux = socket and ("tmux -L " .. shellcore.quote(socket)) or "tmux"
  return table.concat({
    "command -v tmux >/dev/null 2>&1 || { echo '" .. MISSING_LINE .. "' >&2; exit 127; }",
    "t() { " .. tmux .. ' "$@"; }',
    -- exists NAME: exit 44 unless the session exists.
    'exists() { t has-session -t "=$1" 2>/dev/null || { echo \'' .. NO_SESSION_LINE .. "' >&2; exit 44; }; }",
    -- pane FMT NAME: a format of the session's active pane.
    'pane() { t display-message -p -t "=$2:" "$1" 2>/dev/null; }',
    -- reap: tmux 3.3a now and then misses the SIGCHLD of a pane's command (seen about once in ten
    -- starts here), leaving the command a zombie and its exit status unknown; a SIGCHLD to the
    -- server makes it call waitpid again. Harmless otherwise.
    "reap() { s=$(t display-message -p '#{pid}' 2>/dev/null) && [ -n \"$s\" ] && kill -CHLD \"$s\" 2>/dev/null;"
      .. " return 0; }",
    -- kill_group NAME: SIGKILL the running pane's process group (its command and children).
    'kill_group() { [ "$(pane "#{pane_dead}" "$1")" = 0 ] || return 0; p=$(pane "#{pane_pid}" "$1");'
      .. ' [ -n "$p" ] && { kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; }; return 0; }',
    "",
  }, "\n")
end

-- $1 name, $2 width, $3 height, $4 command string. A same-named session is renamed away and
-- killed after the new one exists: killing the last session first would make the server exit
-- under our new-session ("server exited unexpectedly"), which is also why new-session is
-- retried a few times (a server that a previous call left empty may still be exiting).
local START = [[
old=
if t has-session -t "=$1" 2>/dev/null; then
  kill_group "$1"
  old=galley-old-$$
  t rename-session -t "=$1" "$old" 2>/dev/null || old=
fi
tries=0
until t new-session -d -s "$1" -x "$2" -y "$3" "$4" \; set-window-option -t "=$1:" remain-on-exit on >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -lt 5 ] || exit 1
  sleep 0.2
done
if [ -n "$old" ]; then t kill-session -t "=$old" 2>/dev/null; fi
pane '#{pane_pid}' "$1"
]]

-- $1 name, $2 polls, $3 interval, $4 "delete" to remove the session afterwards.
local STOP = [[
exists "$1"
ended=exited
if [ "$(pane '#{pane_dead}' "$1")" = 0 ]; then
  t send-keys -t "=$1:" C-c
  ended=forced
  i=0
  while [ "$i" -lt "$2" ]; do
    sleep "$3"
    case $(pane '#{pane_dead}' "$1") in
      0) ;;
      *) ended=graceful; break ;;
    esac
    i=$((i + 1))
  done
  if [ "$ended" = forced ]; then
    kill_group "$1"
    i=0
    while [ "$i" -lt 50 ] && [ "$(pane '#{pane_dead}' "$1")" = 0 ]; do sleep 0.1; i=$((i + 1)); done
  fi
fi
# The pane can read as dead (its terminal closed) a moment before tmux has reaped the command.
i=0
while [ "$i" -lt 50 ] && [ -z "$(pane '#{pane_dead_status}#{pane_dead_signal}' "$1")" ]; do
  reap
  sleep 0.1
  i=$((i + 1))
done
printf '%s\t%s\n' "$ended" "$(pane '#{pane_dead_status}	#{pane_dead_signal}' "$1")"
if [ "$4" = delete ]; then t kill-session -t "=$1" 2>/dev/null; fi
exit 0
]]

local LIST_FORMAT = table.concat({ "#{session_name}", "#{pane_pid}", "#{pane_dead}", "#{pane_dead_status}",
  "#{pane_dead_signal}", "#{session_created}", "#{window_width}", "#{window_height}", "#{session_attached}" }, "\t")
local LIST = "reap\nt list-sessions -F '" .. LIST_FORMAT .. "' 2>/dev/null\nexit 0\n"

-- $1 name, $2 "literal"|"keys", $3 "enter"|"", then chunks of text.
local SEND = [[
exists "$1"
name=$1 mode=$2 enter=$3
shift 3
for chunk in "$@"; do
  if [ "$mode" = literal ]; then t send-keys -t "=$name:" -l -- "$chunk" || exit $?
  else t send-keys -t "=$name:" -- "$chunk" || exit $?; fi
done
if [ "$enter" = enter ]; then t send-keys -t "=$name:" Enter || exit $?; fi
exit 0
]]

-- $1 name, $2 start line ("" = the visible pane only), $3 "escapes"|"".
local CAPTURE = [[
exists "$1"
if [ "$3" = escapes ]; then e=-e; else e=; fi
if [ -n "$2" ]; then t capture-pane -p -J -t "=$1:" -S "$2" $e; else t capture-pane -p -J -t "=$1:" $e; fi
]]

-- $1 name, $2 width, $3 height.
local RESIZE = [[
exists "$1"
t resize-window -t "=$1:" -x "$2" -y "$3"
]]


local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end


local function to_int(s)
  return s and s ~= "" and math.tointeger(tonumber(s)) or nil
end


-- Text as tmux shows it: no trailing blank lines, no "Pane is dead" notice.
local function clean_capture(text)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  while #lines > 0 and lines[#lines]:match("^%s*$") do lines[#lines] = nil end
  if #lines > 0 and lines[#lines]:match("^Pane is dead") then lines[#lines] = nil end
  while #lines > 0 and lines[#lines]:match("^%s*$") do lines[#lines] = nil end
  return lines
end


-- Splits text into chunks of at most n bytes, never inside a UTF-8 sequence.
local function chunks(text, n)
  local out, i = {}, 1
  while i <= #text do
    local j = math.min(i + n - 1, #text)
    if j < #text then
      while j > i and (text:byte(j + 1) or 0) >= 0x80 and (text:byte(j + 1) or 0) < 0xC0 do j = j - 1 end
    end
    out[#out + 1] = text:sub(i, j)
    i = j + 1
  end
  return out
end


--- Creates a tmux session manager.
---@param opts {provider: table, log?: galley.Logger, socket?: string, keep_env?: string[], exec_timeout_ms?: integer}
--- keep_env: more variables the command keeps besides KEEP_ENV (see galley.process.pm2.keep_env);
--- exec_timeout_ms: time limit of each exec the manager makes (default M.DEFAULT_EXEC_TIMEOUT_MS)
---@return table manager `{name, start, send_keys, capture, resize, stop, delete, list, logs, stop_all, delete_all}`
---@raise VALIDATION_ERROR when opts.provider is missing or socket is not [A-Za-z0-9_-]+
function M.new(opts)
  if type(opts) ~= "table" or type(opts.provider) ~= "table" then
    errors.raise("VALIDATION_ERROR", "galley.process.tmux.new: opts.provider is required", { field = "provider" })
  end
  if opts.socket ~= nil and (type(opts.socket) ~= "string" or not opts.socket:match("^[%w_%-]+$")) then
    errors.raise("VALIDATION_ERROR", "galley.process.tmux.new: socket must match [A-Za-z0-9_-]+", { field = "socket" })
  end
  if opts.exec_timeout_ms ~= nil and (math.type(opts.exec_timeout_ms) ~= "integer" or opts.exec_timeout_ms < 1) then
    errors.raise("VALIDATION_ERROR", "galley.process.tmux.new: exec_timeout_ms must be a positive integer",
      { field = "exec_timeout_ms" })
  end
  local provider = opts.provider
  local exec_opts = { timeout_ms = opts.exec_timeout_ms or M.DEFAULT_EXEC_TIMEOUT_MS }
  local log = opts.log or logmod.default().child({ prefix = "tmux" })
  local pre = prelude(opts.socket)
  local keep_names = {}
  for _, n in ipairs(M.KEEP_ENV) do keep_names[#keep_names + 1] = n end
  for _, n in ipairs(require("galley.process.pm2").keep_env(opts)) do keep_names[#keep_names + 1] = n end
  local pm = { name = M.NAME, sanitize_name = pm2core.sanitize_name }

  local function fail(code, message, context, fields)
    local f = copy(fields)
    f.operation, f.resource = context.operation, context.resource
    error(errors.ProcessError(code, message, f), 0)
  end

  local function sh(instance_id, context, script, args)
    local argv = { "-c", pre .. script, "sh" }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local r = provider.exec(instance_id, { kind = "argv", command = "sh", args = argv }, exec_opts)
    r.stdout, r.stderr = r.stdout or "", r.stderr or ""
    if r.exit_code == MISSING_EXIT and r.stderr:find(MISSING_LINE, 1, true) then
      fail("PROCESS_ERROR", "tmux is not installed on instance " .. tostring(instance_id), context,
        { hint = M.INSTALL_HINT, details = { exit_code = r.exit_code } })
    end
    if r.exit_code == NO_SESSION_EXIT and r.stderr:find(NO_SESSION_LINE, 1, true) then
      fail("NOT_FOUND", ("no tmux session %s on %s"):format(context.name or "?", tostring(instance_id)), context, {})
    end
    if r.exit_code ~= 0 then
      local tail = shell_pm.tail(r.stderr, M.STDERR_TAIL)
      local last = tail:gsub("%s+$", ""):match("([^\n]*)$")
      fail("PROCESS_ERROR", ("%s failed (exit %d)%s"):format(context.operation, r.exit_code,
        last ~= "" and (": " .. shell_pm.tail(last, 300)) or ""), context,
        { details = { exit_code = r.exit_code, stderr = tail } })
    end
    return r
  end

  local function context_for(op, name)
    if type(name) ~= "string" or name == "" then
      error(errors.ProcessError("VALIDATION_ERROR", "expected a session name", { field = "name",
        operation = "tmux." .. op }), 0)
    end
    local n = pm2core.sanitize_name(name)
    return { operation = "tmux." .. op, resource = "process:" .. n, name = n }, n
  end

  local function check_size(context, field, v)
    if math.type(v) ~= "integer" or v < 1 or v > 10000 then
      fail("VALIDATION_ERROR", field .. " must be an integer between 1 and 10000", context, { field = field })
    end
    return v
  end

  --- Starts a command in a new detached session (replacing a same-named one).
  ---@param instance_id string
  ---@param spec galley.ProcessSpec
  ---@param sopts? {name?: string, width?: integer, height?: integer} name overrides spec.command.name
  ---@return {name: string, pid: integer, status: "online", width: integer, height: integer}
  ---@raise VALIDATION_ERROR (bad spec, no name, bad size) | PROCESS_ERROR (tmux missing: hint; upload
  --- failed: details.path; tmux failed) | the provider's errors
  function pm.start(instance_id, spec, sopts)
    sopts = sopts or {}
    spec = contracts.check_process(spec)
    local raw = sopts.name or spec.command.name
    if type(raw) ~= "string" or raw == "" then
      error(errors.ProcessError("VALIDATION_ERROR", "a tmux session needs a name (spec.command.name or opts.name)", {
        field = "name", operation = "tmux.start" }), 0)
    end
    local context, name = context_for("start", raw)
    local width = check_size(context, "width", sopts.width or M.DEFAULT_WIDTH)
    local height = check_size(context, "height", sopts.height or M.DEFAULT_HEIGHT)

    shell_pm.upload_files(provider, instance_id, spec.files, context)

    local plan = shellcore.plan(spec.command)
    local script = plan.script or ("exec -- " .. shellcore.join(plan.argv) .. "\n")
    local keep = {}
    for _, var in ipairs(keep_names) do keep[#keep + 1] = ('${%s+"%s=$%s"}'):format(var, var, var) end
    local env = "exec env -i " .. table.concat(keep, " ") .. " bash -l"
    local command = env .. "c " .. shellcore.quote(script)
    if #command > M.INLINE_MAX then
      local file = ".galley/tmux/" .. name .. ".sh"
      shell_pm.upload_files(provider, instance_id, { { path = "~/" .. file, content = script, mode = "700" } },
        context)
      command = env .. ' "$HOME"/' .. shellcore.quote(file)
      log.debug("command moved to a file", { process = name, bytes = #script })
    end

    local r = sh(instance_id, context, START, { name, tostring(width), tostring(height), command })
    local pid = to_int(r.stdout:match("%d+"))
    log.info("session started", { process = name, instance = instance_id, pid = pid })
    return { name = name, pid = pid, status = "online", width = width, height = height }
  end

  --- Types text into the session (literally, unless opts.literal == false: then `text` is one tmux
  -- key name such as "C-c" or "Up"), then Enter when opts.enter.
  ---@param instance_id string
  ---@param name string
  ---@param text string may be "" (with enter: just Enter)
  ---@param kopts? {enter?: boolean, literal?: boolean}
  ---@return true
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.send_keys(instance_id, name, text, kopts)
    kopts = kopts or {}
    local context, n = context_for("send_keys", name)
    if type(text) ~= "string" or text:find("\0", 1, true) then
      fail("VALIDATION_ERROR", "text must be a string without NUL bytes", context, { field = "text" })
    end
    local literal = kopts.literal ~= false
    local args = { n, literal and "literal" or "keys", kopts.enter and "enter" or "" }
    if literal then
      for _, c in ipairs(chunks(text, M.SEND_CHUNK)) do args[#args + 1] = c end
    elseif text ~= "" then
      args[#args + 1] = text
    end
    sh(instance_id, context, SEND, args)
    return true
  end

  --- The pane as text (trailing blank lines removed), optionally with scrollback.
  ---@param instance_id string
  ---@param name string
  ---@param copts? {history?: integer|"all", escapes?: boolean} history: scrollback lines to include
  ---@return string text
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.capture(instance_id, name, copts)
    copts = copts or {}
    local context, n = context_for("capture", name)
    local start = ""
    if copts.history == "all" then
      start = "-"
    elseif copts.history ~= nil then
      if math.type(copts.history) ~= "integer" or copts.history < 0 then
        fail("VALIDATION_ERROR", 'history must be a non-negative integer or "all"', context, { field = "history" })
      end
      start = tostring(-copts.history)
    end
    local r = sh(instance_id, context, CAPTURE, { n, start, copts.escapes and "escapes" or "" })
    local lines = clean_capture(r.stdout)
    return #lines > 0 and (table.concat(lines, "\n") .. "\n") or ""
  end

  --- The last `lines` lines of the pane and its scrollback, as {out, err} like the other managers
  -- (a terminal merges stdout and stderr, so err is always "").
  ---@param instance_id string
  ---@param name string
  ---@param lines? integer default M.DEFAULT_LOG_LINES
  ---@return {out: string, err: string}
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.logs(instance_id, name, lines)
    lines = lines or M.DEFAULT_LOG_LINES
    if math.type(lines) ~= "integer" or lines < 1 then
      local context = context_for("logs", name)
      fail("VALIDATION_ERROR", "lines must be a positive integer", context, { field = "lines" })
    end
    local context, n = context_for("logs", name)
    local r = sh(instance_id, context, CAPTURE, { n, tostring(-lines), "" })
    local all = clean_capture(r.stdout)
    local first = math.max(1, #all - lines + 1)
    local out = table.concat(all, "\n", first, #all)
    return { out = #all > 0 and (out .. "\n") or "", err = "" }
  end

  --- Resizes the session's window.
  ---@param instance_id string
  ---@param name string
  ---@param width integer columns
  ---@param height integer rows
  ---@return true
  ---@raise NOT_FOUND | PROCESS_ERROR | VALIDATION_ERROR
  function pm.resize(instance_id, name, width, height)
    local context, n = context_for("resize", name)
    check_size(context, "width", width)
    check_size(context, "height", height)
    sh(instance_id, context, RESIZE, { n, tostring(width), tostring(height) })
    return true
  end

  local function finish(instance_id, name, op)
    local context, n = context_for(op, name)
    local r = sh(instance_id, context, STOP, { n, tostring(M.STOP_POLLS), M.STOP_POLL_SECONDS,
      op == "delete" and "delete" or "" })
    local ended, status, signal = r.stdout:match("^(%a+)\t([^\t\n]*)\t?([^\t\n]*)")
    local result = { name = n, ended = ended or "exited", exit_code = to_int(status), signal = to_int(signal) }
    log.debug(op, { process = n, instance = instance_id, ended = result.ended })
    return result
  end

  --- Ends the command: C-c, up to 3 s for it to exit, then SIGKILL. The session stays (dead).
  ---@param instance_id string
  ---@param name string
  ---@return {name: string, ended: "graceful"|"forced"|"exited", exit_code?: integer, signal?: integer}
  ---@raise NOT_FOUND | PROCESS_ERROR
  function pm.stop(instance_id, name)
    return finish(instance_id, name, "stop")
  end

  --- Ends the command like stop when it still runs, then removes the session.
  ---@param instance_id string
  ---@param name string
  ---@return {name: string, ended: "graceful"|"forced"|"exited", exit_code?: integer, signal?: integer}
  ---@raise NOT_FOUND | PROCESS_ERROR
  function pm.delete(instance_id, name)
    return finish(instance_id, name, "delete")
  end

  --- The sessions of the tmux server ({} when no server runs).
  ---@param instance_id string
  ---@return {name: string, pid: integer, status: "online"|"exiting"|"exited", exit_code?: integer, signal?: integer,
  ---  created_at: integer, width: integer, height: integer, attached: integer}[]
  ---@raise PROCESS_ERROR (tmux missing)
  function pm.list(instance_id)
    local r = sh(instance_id, { operation = "tmux.list", resource = "process:all" }, LIST)
    local out = {}
    for line in r.stdout:gmatch("[^\n]+") do
      local f = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
      if #f >= 9 then
        out[#out + 1] = {
          name = f[1], pid = to_int(f[2]), status = f[3] ~= "1" and "online"
            or ((f[4] ~= "" or f[5] ~= "") and "exited" or "exiting"),
          exit_code = to_int(f[4]), signal = to_int(f[5]), created_at = to_int(f[6]),
          width = to_int(f[7]), height = to_int(f[8]), attached = to_int(f[9]),
        }
      end
    end
    return out
  end

  local function each(instance_id, op)
    local results = {}
    for _, s in ipairs(pm.list(instance_id)) do
      local ok, res = pcall(finish, instance_id, s.name, op)
      if ok then
        results[#results + 1] = res
      elseif not errors.is(res, "NOT_FOUND") then
        error(res, 0)
      end
    end
    return results
  end

  --- stop for every session.
  ---@param instance_id string
  ---@return table[] results of stop
  function pm.stop_all(instance_id)
    return each(instance_id, "stop")
  end

  --- delete for every session.
  ---@param instance_id string
  ---@return table[] results of delete
  function pm.delete_all(instance_id)
    return each(instance_id, "delete")
  end

  return pm
end


return M
