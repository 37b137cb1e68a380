--- galley.providers.common: pieces every VM provider shares.
-- Status mapping, `~` expansion and path checks, metadata filters, TTL tables, option checks and
-- the provider error constructor. Pure Lua, no IO: the Morph and local providers both use it.
local codec = require("galley.core.codec")
local contracts = require("galley.contracts")
local errors = require("galley.errors")

local M = {}

--- The provider-agnostic instance statuses.
M.STATUSES = { "booting", "ready", "stopping", "stopped", "error" }

--- Morph instance status → provider status (seeds: pending→booting, paused→stopped, saving→stopping).
M.MORPH_STATUS = { pending = "booting", ready = "ready", paused = "stopped", saving = "stopping", error = "error" }

--- TTL actions callers may ask for. "stop" and "terminate" both delete the instance at expiry
-- (Morph's "stop" is a delete); "pause" leaves it paused (status "stopped").
M.TTL_ACTIONS = { stop = "stop", terminate = "stop", pause = "pause" }

--- A ProviderError table (the seeds' error class) with the given code.
---@param code string e.g. "NOT_FOUND", "VALIDATION_ERROR", "FILE_IO_ERROR"
---@param message string
---@param fields? table operation, resource, details, hint, ...
---@return galley.Error
function M.error(code, message, fields)
  return errors.ProviderError(code, message, fields)
end

--- Raises a ProviderError (level: the caller of the function that calls raise).
---@param code string
---@param message string
---@param fields? table
function M.raise(code, message, fields)
  error(M.error(code, message, fields), 3)
end

--- Maps a raw status through `map`; anything unknown becomes "error".
---@param map table<string, string>
---@param raw string|nil
---@return string status one of M.STATUSES
function M.map_status(map, raw)
  return map[raw or ""] or "error"
end

--- Expands a leading `~` (alone or followed by `/`) to `home`; other paths come back unchanged.
-- `~user` forms are not expanded.
---@param path string
---@param home string
---@return string
function M.expand_home(path, home)
  if path == "~" then return home end
  if path:sub(1, 2) == "~/" then
    return (home:gsub("/+$", "")) .. path:sub(2)
  end
  return path
end

--- Longest id `check_id` accepts.
M.MAX_ID_BYTES = 128

--- True for a safe instance/snapshot id: 1 to 128 bytes of ASCII letters, digits, "_", "-" and
-- ".", starting with a letter or a digit (so never "", "." or "..": curl would remove dot
-- segments from the URL, and the local provider uses ids as directory names).
---@param id any
---@return boolean
function M.valid_id(id)
  return type(id) == "string" and #id <= M.MAX_ID_BYTES and id:find("^[%w][%w_%-%.]*$") ~= nil
end


--- The one id check of every provider (Morph, local) and the emulator: returns `id`, or raises
-- VALIDATION_ERROR with `field` (default "instance_id") before any request is made.
---@param id any
---@param field? string
---@return string id
function M.check_id(id, field)
  field = field or "instance_id"
  if not M.valid_id(id) then
    local got = type(id) == "string" and errors.quote(id) or type(id)
    M.raise("VALIDATION_ERROR", ("%s: expected an id (1 to %d letters, digits, _, - or ., starting with a "
      .. "letter or digit), got %s"):format(field, M.MAX_ID_BYTES, got), { field = field,
      hint = "pass the id galley returned (inst.id), not a name or a path" })
  end
  return id
end


-- Raises VALIDATION_ERROR when `s` is not valid UTF-8 (text that would become invalid JSON).
local function check_utf8(s, field)
  local n, bad = utf8.len(s)
  if not n then
    M.raise("VALIDATION_ERROR", ("%s: not valid UTF-8 (bad byte at offset %d)"):format(field, bad),
      { field = field, details = { offset = bad },
        hint = "text fields must be UTF-8; binary data belongs in files (files.write_file)" })
  end
end
M.check_utf8 = check_utf8

--- Checks and normalises a remote path: expands `~`, requires an absolute result, rejects NUL
-- bytes, collapses repeated slashes and drops a trailing slash ("/" stays "/").
-- Raises VALIDATION_ERROR (field = `field`) otherwise.
---@param path any
---@param home string|nil home directory for `~`
---@param field? string the option name reported in the error (default "path")
---@return string absolute
function M.remote_path(path, home, field)
  field = field or "path"
  if type(path) ~= "string" or path == "" then
    M.raise("VALIDATION_ERROR", ("%s must be a non-empty string"):format(field), { field = field })
  end
  if path:find("\0", 1, true) then
    M.raise("VALIDATION_ERROR", ("%s contains a NUL byte"):format(field), { field = field })
  end
  check_utf8(path, field)
  if path:sub(1, 1) == "~" then
    if path ~= "~" and path:sub(1, 2) ~= "~/" then
      M.raise("VALIDATION_ERROR", ("%s: only ~ and ~/ are expanded, not ~user"):format(field), { field = field })
    end
    if not home then
      M.raise("VALIDATION_ERROR", ("%s uses ~ but the home directory is unknown"):format(field), { field = field })
    end
    path = M.expand_home(path, home)
  end
  if path:sub(1, 1) ~= "/" then
    M.raise("VALIDATION_ERROR", ("%s must be absolute or start with ~/ (got a relative path)"):format(field),
      { field = field, hint = "write ~/" .. (#path <= errors.QUOTE_MAX and path or "<path>")
        .. " for a path in the home directory" })
  end
  path = path:gsub("//+", "/")
  if #path > 1 then path = path:gsub("/$", "") end
  return path
end

--- Parent directory and last component of a normalised absolute path.
---@param path string
---@return string dir, string base
function M.split_path(path)
  local dir, base = path:match("^(.*)/([^/]*)$")
  if dir == "" then dir = "/" end
  return dir, base
end

--- True when every key/value of `filter` is present in `metadata` (strings compared as strings).
---@param metadata table|nil
---@param filter table|nil
---@return boolean
function M.match_metadata(metadata, filter)
  if not filter then return true end
  metadata = metadata or {}
  for k, v in pairs(filter) do
    if metadata[k] == nil or tostring(metadata[k]) ~= tostring(v) then return false end
  end
  return true
end

--- The metadata filter of a list call: `list{metadata = {k = v}}` or the plain map `list{k = v}`.
---@param filter table|nil
---@return table|nil
function M.metadata_filter(filter)
  if filter == nil then return nil end
  if type(filter) ~= "table" then
    M.raise("VALIDATION_ERROR", "list filter must be a table", { field = "filter" })
  end
  if type(filter.metadata) == "table" then return filter.metadata end
  return filter
end

--- Most bytes a metadata map may take in a list URL (`metadata[key]=value` pairs joined by "&",
-- percent-encoded): Morph's list filter is a query string, galley.core.morph builds URLs of at
-- most 4 KiB (base URL and path included) and many servers refuse more than 8 KiB.
M.MAX_METADATA_URL_BYTES = 3072

-- Percent-encoded length of s (RFC 3986 unreserved characters stay as they are).
local function encoded_len(s)
  local _, kept = s:gsub("[%w%-%._~]", "")
  return kept + 3 * (#s - kept)
end


--- Checks a metadata map (string keys, string/number/boolean values) and returns a copy with
-- string values. Keys must be non-empty; keys and values valid UTF-8 without NUL bytes (the list
-- filter's query builder stops at a NUL, and JSON cannot carry invalid UTF-8); all of it at most
-- `MAX_METADATA_URL_BYTES` once encoded in a list URL. Raises VALIDATION_ERROR naming the
-- offending key.
---@param metadata table|nil
---@param field? string
---@return table
function M.check_metadata(metadata, field)
  field = field or "metadata"
  local out = {}
  if metadata == nil then return out end
  if type(metadata) ~= "table" then
    M.raise("VALIDATION_ERROR", field .. " must be a table of strings", { field = field })
  end
  local url_bytes = 0
  for k, v in pairs(metadata) do
    local tv = type(v)
    local plain = type(k) == "string" and #k <= errors.QUOTE_MAX and k:find("^[%w_%-%.:/]+$")
    local where = field .. "." .. (plain and k or errors.quote(k))
    if type(k) ~= "string" or k == "" then
      M.raise("VALIDATION_ERROR", ("%s: keys must be non-empty strings, got %s"):format(field,
        type(k) == "string" and "an empty string" or type(k)), { field = field })
    end
    if not (tv == "string" or tv == "number" or tv == "boolean") then
      M.raise("VALIDATION_ERROR", ("%s must be a string"):format(where), { field = where })
    end
    v = tostring(v)
    for _, part in ipairs({ { k, "key" }, { v, "value" } }) do
      if part[1]:find("\0", 1, true) then
        M.raise("VALIDATION_ERROR", ("%s: the %s contains a NUL byte"):format(where, part[2]), { field = where })
      end
      check_utf8(part[1], where)
    end
    url_bytes = url_bytes + encoded_len(k) + encoded_len(v) + #"&metadata%5B%5D="
    if url_bytes > M.MAX_METADATA_URL_BYTES then
      M.raise("VALIDATION_ERROR", ("%s: too long for a list URL (more than %d bytes encoded)"):format(field,
        M.MAX_METADATA_URL_BYTES), { field = field, hint = "keep metadata to a few short labels" })
    end
    out[k] = v
  end
  return out
end

--- Checks boot/fork TTL options; returns seconds (or nil) and the normalised action.
---@param opts table `{ttl_seconds?, ttl_action?}`
---@return integer|nil seconds, string action "stop"|"pause"
function M.check_ttl(opts)
  local seconds, action = opts.ttl_seconds, opts.ttl_action
  if seconds ~= nil and seconds ~= false then
    if math.type(seconds) ~= "integer" and not (type(seconds) == "number" and seconds == math.floor(seconds)) then
      M.raise("VALIDATION_ERROR", "ttl_seconds must be a positive integer", { field = "ttl_seconds" })
    end
    seconds = math.tointeger(seconds)
    if not seconds or seconds <= 0 then
      M.raise("VALIDATION_ERROR", "ttl_seconds must be a positive integer", { field = "ttl_seconds" })
    end
  else
    seconds = nil
  end
  if action ~= nil and not M.TTL_ACTIONS[action] then
    M.raise("VALIDATION_ERROR", "ttl_action must be \"stop\", \"terminate\" or \"pause\"", { field = "ttl_action" })
  end
  return seconds, M.TTL_ACTIONS[action or "stop"]
end

--- The public TTL table `{seconds, action, expires_at}` (Unix seconds); `{}` when there is none.
---@param seconds integer|nil
---@param action string|nil
---@param expires_at integer|nil
---@return table
function M.ttl_table(seconds, action, expires_at)
  if not seconds then return {} end
  return { seconds = seconds, action = action or "stop", expires_at = expires_at }
end

--- Checks a file mode option: an octal string such as "600" or "0755". Returns the string
-- without a leading 0 beyond four digits, or nil when absent. Raises VALIDATION_ERROR.
---@param mode any
---@return string|nil
function M.check_mode(mode)
  if mode == nil then return nil end
  if type(mode) ~= "string" or not mode:match("^[0-7][0-7][0-7][0-7]?$") then
    M.raise("VALIDATION_ERROR", "mode must be an octal string such as \"600\" or \"0755\"", {
      field = "mode", hint = "numbers are ambiguous in Lua (no octal literals): write mode = \"600\"" })
  end
  return mode
end

--- Checks an owner/group name or numeric id; returns it as a string or nil. Raises VALIDATION_ERROR.
---@param v any
---@param field string
---@return string|nil
function M.check_account(v, field)
  if v == nil then return nil end
  if math.type(v) == "integer" and v >= 0 then return tostring(v) end
  if type(v) ~= "string" or not v:match("^[%w_.][%w_.%-]*%$?$") then
    M.raise("VALIDATION_ERROR", field .. " must be a user/group name or a numeric id", { field = field })
  end
  return v
end

-- Spawned commands -----------------------------------------------------------------------------
-- Where galley reaches an instance only through exec (Morph's API, Proxmox over SSH), a spawned
-- command starts as `/bin/sh -c SPAWN_WRAPPER PIDFILE argv...`. The wrapper runs the command in
-- the foreground (signals at their defaults: a background job would ignore INT and QUIT, for
-- good), in a session of its own (setsid(1), where it exists), which writes its pid first; then
-- exits with the command's status, 128 + N when signal N ended it (an SSH
-- client reports a command that died of a signal as its own failure, 255, and services differ
-- in how they say it). A signal goes, by another exec (SPAWN_SIGNAL), to the command's process
-- group: the command and what it started, as Ctrl-C in a terminal, and the command's own traps
-- decide how it ends. Without setsid the command leads no group of its own and gets it alone.
-- SPAWN_SIGNAL also makes a directory PIDFILE.sig.<NAME> (mkdir: it follows no link another user
-- of the instance put there, and the wrapper believes only one of its own user): when the
-- command then dies of that signal, the wrapper sends it to the members of the group still
-- alive that neither catch, ignore nor have it pending. A shell blocks signals while it forks
-- (dash, around vfork), and a child made then never gets what arrived meanwhile: `sh -c 'echo
-- up; sleep 600'` killed right after "up" ended, and the sleep ran on, holding the spawned
-- command's output open (galley __enter does the same on the local provider: src/core/enter.c).

--- Signals a spawned handle's kill() takes (default TERM).
M.SPAWN_SIGNALS = { TERM = true, KILL = true, INT = true, HUP = true, QUIT = true, USR1 = true, USR2 = true }

local SPAWN_WRAPPER = [[
f=$0
if command -v setsid >/dev/null 2>&1; then set -- setsid -- "$@"; fi
/bin/sh -c 'echo $$ > "$0" || exit 125; exec "$@"' "$f" "$@"
s=$?
if [ $s -gt 128 ] && g=$(kill -l $s) && [ -d "$f.sig.$g" ] && [ -O "$f.sig.$g" ] && read -r p < "$f"; then
  n=$((s - 128))
  for d in /proc/[1-9]*; do
    read -r t 2>/dev/null < "$d/stat" || continue
    t=${t##*) }; set -- $t
    [ "$3" = "$p" ] || continue
    case $1 in Z|X) continue ;; esac
    m=0
    while read -r k v; do
      case $k in SigPnd:|ShdPnd:|SigIgn:|SigCgt:) v=${v#"${v%????}"}
        case $v in *[!0-9a-f]*|'') m=1 ;; *) m=$((m | (0x$v >> (n - 1) & 1))) ;; esac ;;
      esac
    done 2>/dev/null < "$d/status" || continue
    [ $m = 0 ] && kill -s "$g" "${d#/proc/}" 2>/dev/null
  done
fi
exit $s
]]

local SPAWN_SIGNAL = [[
p=$(cat -- "$1" 2>/dev/null) || exit 0
case $p in ''|*[!0-9]*|0*|1) exit 0 ;; esac
[ "$2" = KILL ] || mkdir -- "$1.sig.$2" 2>/dev/null
read -r s < "/proc/$p/stat" 2>/dev/null || exit 0
s=${s##*) }; set -- "$2" "$p" $s
if [ "$5" = "$2" ] && kill -s "$1" -- "-$2" 2>/dev/null; then exit 0; fi
kill -s "$1" "$2" 2>/dev/null
exit 0
]]

--- The command of a spawn (a CommandSpec of the argv form, a shell line, or a plain argv array),
--- checked as exec checks a CommandSpec (strings without NUL, valid UTF-8, each within one
--- argument's size), before anything starts: argv, env, cwd. VALIDATION_ERROR naming the field
--- otherwise; without `with_env` (a provider that cannot set them for a spawn) cwd and env are
--- refused too.
---@param command galley.CommandSpec|string|string[]
---@param with_env? boolean
---@return string[] argv, table|nil env, string|nil cwd
function M.spawn_command(command, with_env)
  local spec
  if type(command) == "string" or (type(command) == "table" and command.kind ~= nil) then
    spec = contracts.check_command(command)
    if spec.kind ~= "argv" or (not with_env and (spec.cwd or spec.env)) then
      M.raise("VALIDATION_ERROR", with_env and "spawn takes the argv form (or a plain argv array)"
        or "spawn takes the argv form without cwd/env (or a plain argv array)", { field = "command.kind" })
    end
  elseif type(command) == "table" and #command > 0 then
    spec = contracts.check_command({ kind = "argv", command = command[1], args = { table.unpack(command, 2) } })
  else
    M.raise("VALIDATION_ERROR", "spawn needs a CommandSpec or a non-empty argv array", { field = "command" })
  end
  return { spec.command, table.unpack(spec.args) }, spec.env, spec.cwd
end

--- The argv that starts `argv` as a spawned command writing its pid to `pid_file`.
---@param pid_file string
---@param argv string[]
---@return string[]
function M.spawn_argv(pid_file, argv)
  local cmd = { "/bin/sh", "-c", SPAWN_WRAPPER, pid_file }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  return cmd
end

--- The argv that sends `sig` (a key of SPAWN_SIGNALS) to the spawned command of `pid_file` and
--- its process group; exits 0 even when it has ended. A pid file holding anything but one
--- process id of 2 or more (no leading zero) signals nothing: pid 1 leads group 1, and
--- `kill -- -1` would reach every process of the instance.
---@param pid_file string
---@param sig string
---@return string[]
function M.spawn_signal_argv(pid_file, sig)
  return { "/bin/sh", "-c", SPAWN_SIGNAL, "galley-signal", pid_file, sig }
end

--- A spawned command's handle over galley.core.proc's Process `h` (the local ssh, galley
--- __enter, bwrap): h's read, write, close_stdin, wait, pid and running, with the provider's own
--- `kill(sig)` (sig defaults to TERM) and `close()` (run once). The garbage collector runs
--- `gc` where given (a close that must not exec there), else close. `name` shows in tostring.
---@param h userdata
---@param name string
---@param kill fun(sig: string|integer): boolean|nil, any
---@param close fun()
---@param gc? fun()
---@return table
function M.process_handle(h, name, kill, close, gc)
  local w, closed = {}, false
  for _, m in ipairs({ "read", "write", "close_stdin", "wait", "pid", "running" }) do
    w[m] = function(_, ...) return h[m](h, ...) end
  end
  function w.kill(_, sig) return kill(sig or "TERM") end
  function w.close()
    if closed then return end
    closed = true
    close()
  end
  return setmetatable(w, { __close = w.close, __gc = gc or w.close,
    __tostring = function() return name .. "(" .. tostring(h) .. ")" end })
end

--- The argv that removes a spawned command's pid file and the marks its kill() left beside it.
---@param pid_file string
---@return string[]
function M.spawn_cleanup_argv(pid_file)
  local argv = { "rm", "-rf", "--", pid_file }
  for name in pairs(M.SPAWN_SIGNALS) do
    if name ~= "KILL" then argv[#argv + 1] = pid_file .. ".sig." .. name end -- (KILL leaves none)
  end
  return argv
end

--- A fresh pid file name for a spawned command (in the instance's /tmp).
---@return string
function M.spawn_pid_file()
  return "/tmp/.galley-spawn-" .. codec.random_hex(8) .. ".pid"
end

-- Exec options ---------------------------------------------------------------------------------
-- `provider.exec(id, spec, opts)` takes the same options on every provider; a time limit is
-- enforced inside the instance by timeout(1) (coreutils), so the command's process group is
-- killed there whatever the transport: TERM at the limit, KILL EXEC_KILL_AFTER_S later.

--- Seconds between the TERM and the KILL of a command over its time limit.
M.EXEC_KILL_AFTER_S = 2

--- How much longer than a time limit the provider itself waits for the exec's answer (a
--- backstop for an instance or a service that never answers).
M.EXEC_BACKSTOP_MS = 10000

--- timeout(1)'s exit status when the time limit passed.
M.TIMEOUT_EXIT = 124

local EXEC_OPTIONS = { timeout_ms = true, on_stdout = true, on_stderr = true }

--- Checks `provider.exec`'s options `{timeout_ms?, on_stdout?, on_stderr?}`; returns them (or {}).
--- Raises VALIDATION_ERROR naming the option (`opts.<name>`) otherwise.
---@param eopts any
---@return {timeout_ms?: integer, on_stdout?: fun(s: string), on_stderr?: fun(s: string)}
function M.check_exec_options(eopts)
  if eopts == nil then return {} end
  if type(eopts) ~= "table" then
    M.raise("VALIDATION_ERROR", "exec options must be a table {timeout_ms?, on_stdout?, on_stderr?}",
      { field = "opts", operation = "exec" })
  end
  for k in pairs(eopts) do
    if not EXEC_OPTIONS[k] then
      local name = type(k) == "string" and #k <= errors.QUOTE_MAX and k or errors.quote(tostring(k))
      M.raise("VALIDATION_ERROR", ("exec options: unknown option %s"):format(name),
        { field = "opts." .. name, operation = "exec", hint = "exec takes timeout_ms, on_stdout and on_stderr" })
    end
  end
  local t = eopts.timeout_ms
  if t ~= nil and not (math.type(t) == "integer" and t >= 1) then
    M.raise("VALIDATION_ERROR", "exec options: timeout_ms must be a positive integer (milliseconds)",
      { field = "opts.timeout_ms", operation = "exec" })
  end
  for _, k in ipairs({ "on_stdout", "on_stderr" }) do
    if eopts[k] ~= nil and type(eopts[k]) ~= "function" then
      M.raise("VALIDATION_ERROR", ("exec options: %s must be a function"):format(k),
        { field = "opts." .. k, operation = "exec" })
    end
  end
  return eopts
end

--- `argv` run under a time limit inside the instance: timeout(1) runs it in a process group of
--- its own and signals that whole group at the limit (TERM, then KILL EXEC_KILL_AFTER_S later).
---@param argv string[]
---@param timeout_ms integer
---@return string[]
function M.time_limited(argv, timeout_ms)
  local seconds = ("%d.%03d"):format(timeout_ms // 1000, timeout_ms % 1000)
  local out = { "timeout", "-k", tostring(M.EXEC_KILL_AFTER_S), seconds }
  for _, a in ipairs(argv) do out[#out + 1] = a end
  return out
end

--- True when an exec run with `time_limited` hit its limit: timeout(1)'s status 124 after at
--- least the limit (a command that exits 124 by itself earlier is a result).
---@param result {exit_code: integer}
---@param timeout_ms integer
---@param elapsed_ms integer
---@return boolean
function M.hit_time_limit(result, timeout_ms, elapsed_ms)
  return result.exit_code == M.TIMEOUT_EXIT and elapsed_ms >= timeout_ms
end

--- The TIMEOUT error of an exec over its time limit (the same on every provider).
---@param instance_id string
---@param timeout_ms integer
---@return galley.Error
function M.exec_timeout_error(instance_id, timeout_ms)
  return M.error("TIMEOUT", ("the command in %s did not finish within %d ms and was killed"):format(instance_id,
    timeout_ms), { operation = "exec", resource = "instance:" .. instance_id, details = { timeout_ms = timeout_ms },
    hint = "raise timeout_ms, or start long commands with spawn or a process manager" })
end

--- Runs `argv` with `run(argv) -> result | nil, err` under a time limit of `limit_ms` (nil: none):
--- wrapped with `time_limited`, and TIMEOUT (`exec_timeout_error`) raised when the limit was hit
--- inside the instance, or when `run`'s result says the host gave up waiting (`timed_out`). The
--- one implementation of exec's `timeout_ms` for every provider.
---@param instance_id string
---@param argv string[]
---@param limit_ms integer|nil
---@param run fun(argv: string[]): table|nil, any
---@return table|nil result, any err
function M.run_limited(instance_id, argv, limit_ms, run)
  if not limit_ms then return run(argv) end
  local runtime = require("galley.core.runtime")
  local t0 = runtime.now_ms()
  local r, err = run(M.time_limited(argv, limit_ms))
  if r and (r.timed_out or M.hit_time_limit(r, limit_ms, runtime.now_ms() - t0)) then
    error(M.exec_timeout_error(instance_id, limit_ms), 0)
  end
  return r, err
end

-- $1 stdin file, $2 stdout file (empty: none), $3 the most 512-byte blocks the stdout file may
-- take (empty: no limit; past it the writer gets SIGXFSZ), then the program's argv.
local REDIRECT = [[i=$1 o=$2; [ -z "$3" ] || ulimit -f "$3" || exit 1; shift 3
if [ -n "$i" ] && [ -n "$o" ]; then exec "$@" < "$i" > "$o"
elif [ -n "$i" ]; then exec "$@" < "$i"
elif [ -n "$o" ]; then exec "$@" > "$o"
else exec "$@"; fi]]

--- argv run with stdin from the local file `stdin_file` and/or stdout into the local file
--- `stdout_file` (a byte channel's transfer: the data never passes through Lua): a small sh
--- opens them and execs argv.
---@param argv string[]
--- `max_stdout_bytes` bounds the stdout file (RLIMIT_FSIZE on the local side: an instance that
--- sends more, lying or not, cannot fill this machine's disk; the transfer then fails).
---@param stdin_file? string
---@param stdout_file? string
---@param max_stdout_bytes? integer
---@return string[]
function M.redirected(argv, stdin_file, stdout_file, max_stdout_bytes)
  -- The sh may run elsewhere (a sandbox's exec starts in /): relative paths are made absolute.
  local function abs(p)
    if not p or p:sub(1, 1) == "/" then return p or "" end
    return (require("galley.core.fs").realpath(".") or ".") .. "/" .. p
  end
  local blocks = (stdout_file and max_stdout_bytes) and tostring(max_stdout_bytes // 512 + 1) or ""
  local out = { "/bin/sh", "-c", REDIRECT, "galley-transfer", abs(stdin_file), abs(stdout_file), blocks }
  for _, a in ipairs(argv) do out[#out + 1] = a end
  return out
end


--- The last `n` bytes of `s` (for stderr tails in error details).
---@param s string|nil
---@param n? integer default 2048
---@return string
function M.tail(s, n)
  s = s or ""
  n = n or 2048
  if #s <= n then return s end
  return s:sub(-n)
end

return M
