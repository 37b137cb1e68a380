--- galley.contracts: the shapes passed between agents, process managers and providers, and their
-- checks. A check returns a normalized copy of a valid spec, or raises VALIDATION_ERROR whose
-- message starts with the field path (`command.args[3]: expected string, got table`), with
-- `field = path` (as galley.core.shell/pm2 errors have) and `details = {path=, expected=, got=}`.
-- Unknown fields are errors, so typos never pass silently.
--
-- CommandSpec, two forms (no other fields):
--   argv:  {kind="argv", command=string, args?=string[], cwd?=path, env?={NAME=string}, name?=string}
--   shell: {kind="shell", script=string, cwd?=path, env?={NAME=string}, name?=string}
--   - a plain string is a shell command line, as in the Morph SDKs (`exec(id, "uname -a")`): it is
--     normalized to {kind="argv", command="/bin/sh", args={"-c", line}} (M.SHELL_LINE), so every
--     provider runs it with `sh -c`, and wherever a CommandSpec is accepted (provider exec and
--     spawn, ProcessSpec.command, image steps, credentials post_install).
--   - `cwd` and file paths are absolute or start with "~" (providers expand "~" to their home dir).
--   - env names are shell identifiers; numbers as env values are turned into strings.
--   - no string may contain a NUL byte (it cannot cross argv), and every string is valid UTF-8
--     (it travels as JSON; binary data belongs in files, which carry any bytes).
--   - one argv element (command, each arg, each `NAME=value`; not the shell script, which
--     providers pass in a file when it is long) is at most
--     `MAX_ARG_BYTES` (128 KiB with its terminating NUL, Linux's MAX_ARG_STRLEN), and all of them
--     together at most `MAX_ARGV_ENV_BYTES` (2 MiB, Linux's ARG_MAX with an 8 MiB stack; the
--     provider's own environment comes on top, so keep well below).
--   - normalized: argv specs always have `args` (possibly empty).
--
-- ProcessSpec:
--   {command=CommandSpec, restart?="never"|{max_restarts?=int>=0},
--    instances?=int>=1, max_memory?="<n>[K|M|G]" (an integer is taken as bytes), logs?={out?=path, err?=path},
--    files?={{path=path, content=string, mode?="600"}, ...}, stdin?="null"|"inherit"}
--   - restart nil is the same as "never" (galley.core.pm2 only auto-restarts given a table).
--   - restart.min_uptime_ms is refused: no process manager can honour it (PM2 7's CLI has no
--     --min-uptime; PM2 then uses 1000 ms).
--   - stdin: what the command reads; "null" (/dev/null, the default: PM2's own stdin pipe never
--     reaches EOF) or "inherit".
--   - `files`: files the process needs before it starts. Whoever starts the process (a process
--     manager, or any caller) MUST write every entry first, atomically, creating parent
--     directories, with the given octal mode (default "600"), and fail the start if a write fails.
--     Agents use it for payloads too large for one argv element (a long prompt). Contents are
--     data, not secrets, unless the caller put secrets there.
local errors = require("galley.errors")
local util = require("galley.util")

local M = {}

--- Most bytes of one argv element, its terminating NUL included (Linux MAX_ARG_STRLEN).
M.MAX_ARG_BYTES = 128 * 1024

--- Most bytes of all argv elements and `NAME=value` strings of a command together, NULs included
-- (Linux ARG_MAX is a quarter of the 8 MiB stack limit).
M.MAX_ARGV_ENV_BYTES = 2 * 1024 * 1024

--- How a one-string command runs: `/bin/sh -c LINE`.
M.SHELL_LINE = { "/bin/sh", "-c" }

---@class galley.CommandSpec
---@field kind "argv"|"shell"
---@field command? string argv form: the program
---@field args? string[] argv form: its arguments
---@field script? string shell form: a bash script
---@field cwd? string absolute or "~"-prefixed directory
---@field env? table<string, string> exported before the command runs
---@field name? string a label (process managers use it as the process name)

---@class galley.FileSpec
---@field path string absolute or "~"-prefixed
---@field content string raw bytes
---@field mode string octal, e.g. "600"

---@class galley.ProcessSpec
---@field command galley.CommandSpec
---@field restart? "never"|{max_restarts?: integer}
---@field instances? integer
---@field max_memory? string e.g. "512M"
---@field logs? {out?: string, err?: string}
---@field files? galley.FileSpec[] to be written before the process starts (see the header)
---@field stdin? "null"|"inherit"

---@class galley.Agent
---@field name string
---@field to_process_spec fun(input: table): galley.ProcessSpec raises VALIDATION_ERROR on bad input


local function describe(v)
  if v == nil then return "nil" end
  if math.type(v) == "float" then return "number" end
  return type(v)
end


local function fail(path, message, expected, got)
  errors.raise("VALIDATION_ERROR", ("%s: %s"):format(path, message),
    { field = path, details = { path = path, expected = expected, got = got } }, 0)
end


local function expect(path, value, expected)
  fail(path, ("expected %s, got %s"):format(expected, describe(value)), expected, describe(value))
end


local function join(path, key)
  if type(key) == "number" then return ("%s[%d]"):format(path, key) end
  if path == "" then return key end
  return path .. "." .. key
end


local function check_string(path, v, opts)
  opts = opts or {}
  if type(v) ~= "string" then expect(path, v, "string") end
  if not opts.allow_empty and v == "" then fail(path, "must not be empty", "non-empty string", "empty string") end
  if v:find("\0", 1, true) then fail(path, "must not contain a NUL byte", "string without NUL", "NUL byte") end
  if not opts.binary then
    local n, bad = utf8.len(v)
    if not n then
      errors.raise("VALIDATION_ERROR", ("%s: not valid UTF-8 (bad byte at offset %d)"):format(path, bad),
        { field = path, details = { path = path, expected = "UTF-8 text", got = "invalid UTF-8", offset = bad },
          hint = "binary data belongs in files (spec.files or files.write_file), which carry any bytes" }, 0)
    end
  end
  return v
end


-- One argv element of `bytes` bytes (without its NUL).
local function check_arg_size(path, bytes)
  if bytes + 1 > M.MAX_ARG_BYTES then
    errors.raise("VALIDATION_ERROR", ("%s: %d bytes is over the %d-byte limit of one argv element"):format(
      path, bytes, M.MAX_ARG_BYTES - 1),
      { field = path, details = { path = path, expected = "at most " .. (M.MAX_ARG_BYTES - 1) .. " bytes",
        got = bytes .. " bytes" }, hint = "put large data in a file (spec.files) and pass its path" }, 0)
  end
  return bytes + 1
end


local function check_path(path, v)
  check_string(path, v)
  if not (v:sub(1, 1) == "/" or v == "~" or v:sub(1, 2) == "~/") then
    fail(path, ("expected an absolute or ~-prefixed path, got %s"):format(errors.quote(v)), "absolute path",
      "relative path")
  end
  return v
end


local function check_table(path, v, allowed)
  if type(v) ~= "table" then expect(path, v, "table") end
  if allowed then
    for _, k in ipairs(util.sorted_keys(v)) do
      if not allowed[k] then
        local where = type(k) == "string" and #k <= errors.QUOTE_MAX and join(path, k)
          or ("%s[%s]"):format(path, errors.quote(k))
        fail(where, "unknown field", "no such field", describe(v[k]))
      end
    end
  end
  return v
end


local function check_array(path, v)
  check_table(path, v)
  if #v == 0 and next(v) ~= nil then
    fail(path, "expected an array, got a table with named fields", "array", "table")
  end
  if not util.is_array(v) then
    for _, k in ipairs(util.sorted_keys(v)) do
      if math.type(k) ~= "integer" or k < 1 or k > #v then
        fail(("%s[%s]"):format(path, errors.quote(k)), "unexpected key in an array", "array index 1.." .. #v,
          describe(k))
      end
    end
  end
  return v
end


local function check_integer(path, v, min)
  local i = math.type(v) == "integer" and v or (type(v) == "number" and math.tointeger(v))
  if not i then expect(path, v, "integer") end
  if i < min then fail(path, ("must be at least %d, got %d"):format(min, i), ">= " .. min, tostring(i)) end
  return i
end


-- Returns the checked env and the argv bytes its NAME=value strings take.
local function check_env(path, env)
  check_table(path, env)
  local out, bytes = {}, 0
  for _, k in ipairs(util.sorted_keys(env)) do
    local v = env[k]
    if type(k) ~= "string" or not k:match("^[A-Za-z_][A-Za-z0-9_]*$") then
      fail(("%s[%s]"):format(path, errors.quote(k)),
        "env names must be shell identifiers ([A-Za-z_][A-Za-z0-9_]*)", "identifier", describe(k))
    end
    local p = join(path, k)
    if type(v) == "number" then
      v = math.type(v) == "integer" and tostring(v) or ("%.17g"):format(v)
    end
    out[k] = check_string(p, v, { allow_empty = true })
    bytes = bytes + check_arg_size(p, #k + 1 + #v)
  end
  return out, bytes
end


local COMMAND_FIELDS = {
  argv = { kind = true, command = true, args = true, cwd = true, env = true, name = true },
  shell = { kind = true, script = true, cwd = true, env = true, name = true },
}

local function command(path, spec)
  if type(spec) == "string" then
    check_string(path, spec)
    check_arg_size(path, #spec)
    return { kind = "argv", command = M.SHELL_LINE[1], args = { M.SHELL_LINE[2], spec } }
  end
  if type(spec) ~= "table" then
    errors.raise("VALIDATION_ERROR", ("%s: expected a CommandSpec table or a shell command string, got %s"):format(
      path, describe(spec)), { field = path,
      details = { path = path, expected = "table or string", got = describe(spec) },
      hint = 'write "uname -a" (run by sh -c), {kind = "argv", command = "uname", args = {"-a"}} or '
        .. '{kind = "shell", script = "..."}' }, 0)
  end
  local kind = spec.kind
  if kind ~= "argv" and kind ~= "shell" then
    fail(join(path, "kind"), ('expected "argv" or "shell", got %s'):format(
      type(kind) == "string" and errors.quote(kind) or describe(kind)), '"argv" or "shell"', describe(kind))
  end
  check_table(path, spec, COMMAND_FIELDS[kind])
  local out = { kind = kind }
  local bytes
  if kind == "argv" then
    out.command = check_string(join(path, "command"), spec.command)
    bytes = check_arg_size(join(path, "command"), #out.command)
    out.args = {}
    if spec.args ~= nil then
      local args_path = join(path, "args")
      check_array(args_path, spec.args)
      for i = 1, #spec.args do
        out.args[i] = check_string(join(args_path, i), spec.args[i], { allow_empty = true })
        bytes = bytes + check_arg_size(join(args_path, i), #out.args[i])
      end
    end
  else
    out.script = check_string(join(path, "script"), spec.script)
    bytes = 0 -- providers and managers pass a long script in a file, not in argv
  end
  if spec.cwd ~= nil then out.cwd = check_path(join(path, "cwd"), spec.cwd) end
  if spec.env ~= nil then
    local env_bytes
    out.env, env_bytes = check_env(join(path, "env"), spec.env)
    bytes = bytes + env_bytes
  end
  if spec.name ~= nil then out.name = check_string(join(path, "name"), spec.name) end
  if bytes > M.MAX_ARGV_ENV_BYTES then
    errors.raise("VALIDATION_ERROR", ("%s: arguments and environment take %d bytes, over the %d-byte limit "
      .. "of one exec"):format(path, bytes, M.MAX_ARGV_ENV_BYTES),
      { field = path, details = { path = path, expected = "at most " .. M.MAX_ARGV_ENV_BYTES .. " bytes",
        got = bytes .. " bytes" }, hint = "put large data in files (spec.files) and pass their paths" }, 0)
  end
  return out
end


local function restart(path, r)
  if r == "never" then return r end
  if type(r) ~= "table" then
    fail(path, ('expected "never" or a table {max_restarts, min_uptime_ms}, got %s'):format(
      type(r) == "string" and errors.quote(r) or describe(r)), '"never" or table', describe(r))
  end
  check_table(path, r, { max_restarts = true, min_uptime_ms = true })
  local out = {}
  if r.max_restarts ~= nil then out.max_restarts = check_integer(join(path, "max_restarts"), r.max_restarts, 0) end
  if r.min_uptime_ms ~= nil then
    local p = join(path, "min_uptime_ms")
    errors.raise("VALIDATION_ERROR", p .. ": not supported by any process manager (PM2 7 has no --min-uptime)",
      { field = p, details = { path = p, expected = "no min_uptime_ms", got = describe(r.min_uptime_ms) },
        hint = "leave min_uptime_ms out: PM2 counts a restart within 1000 ms as unstable" }, 0)
  end
  return out
end


local function max_memory(path, v)
  if math.type(v) == "integer" then
    if v < 1 then fail(path, "must be positive", "positive size", tostring(v)) end
    return tostring(v)
  end
  if type(v) ~= "string" then expect(path, v, 'string like "512M"') end
  local n, unit = v:match("^([1-9]%d*)([KMGkmg]?)$")
  if not n then
    fail(path, ('expected a size like "512M" (digits, then K, M or G), got %s'):format(errors.quote(v)), "size",
      "string")
  end
  return n .. unit:upper()
end


local function files(path, list)
  check_array(path, list)
  local out, seen = {}, {}
  for i, f in ipairs(list) do
    local p = join(path, i)
    check_table(p, f, { path = true, content = true, mode = true })
    local fp = check_path(join(p, "path"), f.path)
    if seen[fp] then
      fail(join(p, "path"), ("duplicate file path %s"):format(errors.quote(fp)), "unique path", "duplicate")
    end
    seen[fp] = true
    local content = f.content
    if type(content) ~= "string" then expect(join(p, "content"), content, "string") end
    local mode = f.mode == nil and "600" or f.mode
    if type(mode) ~= "string" or not mode:match("^[0-7]?[0-7][0-7][0-7]$") then
      fail(join(p, "mode"), ('expected an octal mode string like "600", got %s'):format(
        type(mode) == "string" and errors.quote(mode) or describe(mode)), "octal string", describe(mode))
    end
    out[i] = { path = fp, content = content, mode = mode }
  end
  return out
end


local PROCESS_FIELDS = { command = true, restart = true, instances = true, max_memory = true, logs = true,
  files = true, stdin = true }

--- Checks a CommandSpec (a string is a shell line: `{kind="argv", command="/bin/sh", args={"-c", s}}`).
---@param spec any
---@param path? string field path prefix for messages (default "command")
---@return galley.CommandSpec normalized copy
---@raise VALIDATION_ERROR naming the offending field
function M.check_command(spec, path)
  return command(path or "command", spec)
end


--- Checks a ProcessSpec (its command included).
---@param spec any
---@return galley.ProcessSpec normalized copy
---@raise VALIDATION_ERROR naming the offending field
function M.check_process(spec)
  if type(spec) ~= "table" then expect("process", spec, "table") end
  check_table("", spec, PROCESS_FIELDS)
  if spec.command == nil then expect("command", nil, "CommandSpec table") end
  local out = { command = command("command", spec.command) }
  if spec.restart ~= nil then out.restart = restart("restart", spec.restart) end
  if spec.instances ~= nil then out.instances = check_integer("instances", spec.instances, 1) end
  if spec.max_memory ~= nil then out.max_memory = max_memory("max_memory", spec.max_memory) end
  if spec.logs ~= nil then
    check_table("logs", spec.logs, { out = true, err = true })
    out.logs = {}
    if spec.logs.out ~= nil then out.logs.out = check_path("logs.out", spec.logs.out) end
    if spec.logs.err ~= nil then out.logs.err = check_path("logs.err", spec.logs.err) end
  end
  if spec.files ~= nil then out.files = files("files", spec.files) end
  if spec.stdin ~= nil then
    if spec.stdin ~= "null" and spec.stdin ~= "inherit" then
      fail("stdin", ('expected "null" or "inherit", got %s'):format(
        type(spec.stdin) == "string" and errors.quote(spec.stdin) or describe(spec.stdin)), '"null" or "inherit"',
        describe(spec.stdin))
    end
    out.stdin = spec.stdin
  end
  return out
end


--- Checks an Agent: `{name = string, to_process_spec = function}`.
---@param agent any
---@return galley.Agent agent the same table
---@raise VALIDATION_ERROR
function M.check_agent(agent)
  if type(agent) ~= "table" then expect("agent", agent, "table") end
  check_string("agent.name", agent.name)
  if type(agent.to_process_spec) ~= "function" then
    expect("agent.to_process_spec", agent.to_process_spec, "function")
  end
  return agent
end


local OPTS = { cwd = true, env = true, name = true }

--- Builds a checked argv CommandSpec: `contracts.argv("ls", {"-la"}, {cwd = "~"})`.
---@param command_name string the program
---@param args? string[]
---@param opts? {cwd?: string, env?: table<string, string>, name?: string}
---@return galley.CommandSpec
---@raise VALIDATION_ERROR
function M.argv(command_name, args, opts)
  if opts ~= nil then check_table("opts", opts, OPTS) end
  opts = opts or {}
  return command("command", { kind = "argv", command = command_name, args = args, cwd = opts.cwd, env = opts.env,
    name = opts.name })
end


--- Builds a checked shell CommandSpec: `contracts.shell("echo hi >&2", {env = {A = "1"}})`.
---@param script string
---@param opts? {cwd?: string, env?: table<string, string>, name?: string}
---@return galley.CommandSpec
---@raise VALIDATION_ERROR
function M.shell(script, opts)
  if opts ~= nil then check_table("opts", opts, OPTS) end
  opts = opts or {}
  return command("command", { kind = "shell", script = script, cwd = opts.cwd, env = opts.env, name = opts.name })
end


return M
