--- galley.log: leveled, structured logging with redaction built in.
--
--   local log = require("galley.log")
--   local logger = log.new{prefix = "morph", context = {instance = id}}
--   logger.info("booted", {ms = 5120})           -- 12:00:01 INFO  [morph] booted instance=... ms=5120
--   local pm2 = logger.child{prefix = "pm2"}      -- prefix "morph.pm2", same context
--   pm2.with{process = "cc-demo"}.debug("start")  -- extra context for one call chain
--
-- Levels: trace < debug < info < warn < error < fatal (and "off"). The default level comes from
-- GALLEY_LOG (e.g. GALLEY_LOG=debug), else from -v (debug), -vv (trace), -q (error), else info.
-- Human output goes to stderr (coloured only when `runtime.options().color == 1`); format "json"
-- (or GALLEY_LOG_FORMAT=json, or the global --json for loggers writing to stderr) writes one object
-- per line: {ts, level, prefix, msg, fields}. GALLEY_LOG_FORMAT=human keeps text under --json.
--
-- Redaction happens here, for every record, so no caller can forget it, with galley.secrets' rules:
-- values registered with `log.register_secret`, token-looking text (sk-ant-..., morph_..., Bearer
-- ..., JWTs, GitHub tokens), `name=value` pairs with a secret-sounding name anywhere in a text, and
-- field values under secret-sounding keys (password, secret, authorization, cookie, credential(s),
-- api_key, *token*; *key* when the value looks like a random blob) become "[REDACTED]" /
-- "[REDACTED len=N]". `log.redact` exposes the same rules to other modules.
local runtime = require("galley.core.runtime")
local util = require("galley.util")
local cjson = require("cjson").new()
local secrets = require("galley.secrets")

local M = {}

--- Level numbers by name.
M.levels = { trace = 10, debug = 20, info = 30, warn = 40, error = 50, fatal = 60, off = 1000 }

--- The level names in order (without "off").
M.level_names = { "trace", "debug", "info", "warn", "error", "fatal" }

local COLORS = {
  trace = "\27[90m", debug = "\27[36m", info = "\27[32m", warn = "\27[33m", error = "\27[31m",
  fatal = "\27[1;31m",
}
local RESET, DIM = "\27[0m", "\27[2m"

local MAX_DEPTH = 12

-- ---------------------------------------------------------------------------------------------
-- Redaction (the rules live in galley.secrets)
-- ---------------------------------------------------------------------------------------------

--- Registers a secret for the whole process: from now on it is redacted from every log record,
-- error message and `log.redact` result, together with its base64 forms (so an encoded upload
-- of a file holding it is covered too). Values shorter than 4 bytes are ignored.
---@param value string|nil
---@return boolean registered false for nil, non-strings and too-short values
function M.register_secret(value)
  return secrets.register(value)
end


--- The masked form of a secret value: "[REDACTED len=N]".
---@param value string
---@return string
function M.mask(value)
  return secrets.mask(value)
end


local redact_text = secrets.redact_text

--- Redacts secrets from a value (galley.secrets.redact). Strings: registered secrets and
-- token-looking text are replaced. Tables: a deep copy (metatables kept, so galley errors stay
-- errors) where, in addition, values under secret-sounding keys are masked. Other values are
-- returned unchanged. Linear in the size of the input.
---@generic T
---@param value T
---@return T
function M.redact(value)
  return secrets.redact(value)
end

-- ---------------------------------------------------------------------------------------------
-- Formatting
-- ---------------------------------------------------------------------------------------------

local errors_mt -- the shared error metatable, looked up lazily

local function is_error(v)
  errors_mt = errors_mt or runtime.error_metatable()
  return type(v) == "table" and getmetatable(v) == errors_mt
end


-- JSON-safe plain data: no metatables, functions or cycles; keys of non-arrays become strings.
local function to_plain(v, seen, depth)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return tostring(v) end
    return v
  elseif t == "string" or t == "boolean" then
    return v
  elseif t ~= "table" then
    return tostring(v)
  end
  if seen[v] then return "[cycle]" end
  if depth > MAX_DEPTH then return "[...]" end
  seen[v] = true
  local out = {}
  if next(v) ~= nil and util.is_array(v) then
    for i = 1, #v do out[i] = to_plain(v[i], seen, depth + 1) end
  else
    for k, x in pairs(v) do out[tostring(k)] = to_plain(x, seen, depth + 1) end
  end
  seen[v] = nil
  return out
end


local function json_encode(v)
  local ok, s = pcall(cjson.encode, v)
  if not ok then s = cjson.encode(tostring(v)) end
  return (s:gsub("\\/", "/"))
end


local function render_value(v)
  if type(v) == "string" then
    if v ~= "" and v:match("^[%w%._/:@%+%-,%[%]=]+$") then return v end
    return json_encode(v)
  elseif is_error(v) then
    return json_encode(tostring(v))
  elseif type(v) == "table" then
    return json_encode(to_plain(v, {}, 0))
  end
  return tostring(v)
end


local function iso_ts(t)
  local secs = math.floor(t)
  local ms = math.floor((t - secs) * 1000 + 0.5)
  if ms >= 1000 then secs, ms = secs + 1, 0 end
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. (ms > 0 and (".%03d"):format(ms) or "") .. "Z"
end


local function format_json(rec)
  local fields = to_plain(rec.fields, {}, 0)
  return ('{"ts":%s,"level":%s,"prefix":%s,"msg":%s,"fields":%s}'):format(
    json_encode(iso_ts(rec.time)), json_encode(rec.level),
    rec.prefix and json_encode(rec.prefix) or "null", json_encode(rec.msg),
    next(fields) == nil and "{}" or json_encode(fields))
end


local function format_human(rec, color)
  local parts = {}
  local lvl = ("%-5s"):format(rec.level:upper())
  if color then lvl = COLORS[rec.level] .. lvl .. RESET end
  parts[1] = os.date("%H:%M:%S", math.floor(rec.time))
  parts[2] = lvl
  if rec.prefix then
    parts[#parts + 1] = color and (DIM .. "[" .. rec.prefix .. "]" .. RESET) or ("[" .. rec.prefix .. "]")
  end
  parts[#parts + 1] = util.visible(rec.msg) -- (a message can carry an instance's text)
  for _, k in ipairs(util.sorted_keys(rec.fields)) do
    local key = tostring(k)
    if color then key = DIM .. key .. "=" .. RESET else key = key .. "=" end
    parts[#parts + 1] = key .. render_value(rec.fields[k])
  end
  return table.concat(parts, " ")
end

-- ---------------------------------------------------------------------------------------------
-- Loggers
-- ---------------------------------------------------------------------------------------------

local function validation_error(message, path)
  local errors = require("galley.errors")
  errors.raise("VALIDATION_ERROR", message, { details = { path = path } }, 3)
end


local function parse_level(name)
  if type(name) ~= "string" then return nil end
  name = name:lower()
  if name == "silent" or name == "none" then name = "off" end
  if name == "warning" then name = "warn" end
  return M.levels[name] and name or nil
end


--- The default level name: GALLEY_LOG when it names a level (trace..fatal, off), else -vv
-- "trace", -v "debug", -q "error", else "info". Both inputs can be given for tests.
---@param env_value? string defaults to os.getenv("GALLEY_LOG")
---@param options? {verbose?: integer, quiet?: integer} defaults to runtime.options()
---@return string level
function M.default_level(env_value, options)
  if env_value == nil then env_value = os.getenv("GALLEY_LOG") end
  local from_env = parse_level(env_value)
  if from_env then return from_env end
  options = options or runtime.options()
  if (options.quiet or 0) > 0 then return "error" end
  local v = options.verbose or 0
  if v >= 2 then return "trace" end
  if v == 1 then return "debug" end
  return "info"
end


local function make_writer(sink)
  if sink == nil then
    -- stderr through the spinner's writer: a running spinner line is cleared first, so a log
    -- line never lands in the middle of it.
    local term = require("galley.core.term")
    return function(line) pcall(term.write_err, line .. "\n") end
  end
  if type(sink) == "function" then return sink end
  if type(sink) == "string" then
    local f, why = io.open(sink, "a")
    if not f then
      require("galley.errors").raise("FILE_IO_ERROR", "cannot open log file: " .. tostring(why),
        { resource = "file:" .. sink, operation = "log.new" }, 3)
    end
    f:setvbuf("line")
    sink = f
  end
  if io.type(sink) == "file" or (type(sink) == "table" and sink.write) then
    return function(line)
      pcall(function()
        sink:write(line, "\n")
        if sink.flush then sink:flush() end
      end)
    end
  end
  validation_error("log sink: expected a function, a file or a path, got " .. type(sink), "sink")
end


local OPTION_KEYS = { level = true, format = true, sink = true, prefix = true, context = true, color = true,
  clock = true }

---@class galley.Logger
---@field trace fun(msg: any, fields?: table)
---@field debug fun(msg: any, fields?: table)
---@field info fun(msg: any, fields?: table)
---@field warn fun(msg: any, fields?: table)
---@field error fun(msg: any, fields?: table)
---@field fatal fun(msg: any, fields?: table) logs at fatal level; does not exit
---@field child fun(opts: {prefix?: string, context?: table, level?: string}): galley.Logger
---@field with fun(fields: table): galley.Logger same prefix, more context
---@field enabled fun(level: string): boolean whether a record at `level` would be written
---@field level fun(): string the current level name
---@field set_level fun(level: string) changes this logger's level (not its children's)

---@class galley.LogRecord
---@field time number epoch seconds
---@field level string
---@field prefix string|nil
---@field msg string redacted
---@field fields table redacted; context merged with the call's fields

local function build(state)
  local logger = {}

  local function emit(level, msg, fields)
    if M.levels[level] < state.level then return end
    if fields ~= nil and type(fields) ~= "table" then fields = { value = fields } end
    local merged = util.merge(state.context, fields)
    local text = is_error(msg) and tostring(msg) or (type(msg) == "string" and msg or tostring(msg))
    local rec = {
      time = state.clock(),
      level = level,
      prefix = state.prefix,
      msg = redact_text(text),
      fields = secrets.redact(merged),
    }
    local line = state.format == "json" and format_json(rec) or format_human(rec, state.color)
    state.write(line, rec)
  end

  for _, level in ipairs(M.level_names) do
    logger[level] = function(msg, fields, extra)
      if msg == logger then return emit(level, fields, extra) end -- tolerate logger:info("x")
      return emit(level, msg, fields)
    end
  end

  function logger.child(opts)
    if opts == logger then error("logger.child: call it with a dot, logger.child{...}", 2) end
    opts = opts or {}
    for k in pairs(opts) do
      if k ~= "prefix" and k ~= "context" and k ~= "level" then
        validation_error(("logger.child: unknown option '%s'"):format(tostring(k)), tostring(k))
      end
    end
    local s = util.merge(state)
    if opts.prefix then s.prefix = state.prefix and (state.prefix .. "." .. opts.prefix) or opts.prefix end
    if opts.context then s.context = util.merge(state.context, opts.context) end
    if opts.level then
      local l = parse_level(opts.level)
      if not l then validation_error("unknown log level: " .. tostring(opts.level), "level") end
      s.level = M.levels[l]
    end
    return build(s)
  end

  function logger.with(fields)
    if fields == logger then error("logger.with: call it with a dot, logger.with{...}", 2) end
    return logger.child({ context = fields })
  end

  function logger.enabled(level)
    local l = parse_level(level)
    return l ~= nil and M.levels[l] >= state.level and state.level < M.levels.off
  end

  function logger.level()
    for name, n in pairs(M.levels) do
      if n == state.level then return name end
    end
  end

  function logger.set_level(level)
    local l = parse_level(level)
    if not l then validation_error("unknown log level: " .. tostring(level), "level") end
    state.level = M.levels[l]
  end

  return logger
end


--- Creates a logger.
---@param opts? {level?: string, format?: "human"|"json", sink?: function|file*|string, prefix?: string,
---  context?: table, color?: boolean, clock?: fun(): number}
--- `sink` is a function `(line, record)` (line without newline, record redacted), an open file
--- (default io.stderr) or a path opened for appending. `color` defaults to
--- `runtime.options().color == 1` for human output; `clock` returns epoch seconds (default os.time).
---@return galley.Logger
---@raise VALIDATION_ERROR for an unknown option, level or format; FILE_IO_ERROR when a sink path cannot be opened
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then validation_error("log.new: expected an options table, got " .. type(opts)) end
  for k in pairs(opts) do
    if not OPTION_KEYS[k] then
      validation_error(("log.new: unknown option '%s'"):format(tostring(k)), tostring(k))
    end
  end
  local level = parse_level(opts.level or M.default_level())
  if not level then
    validation_error("unknown log level: " .. tostring(opts.level), "level")
  end
  local env_format = os.getenv("GALLEY_LOG_FORMAT")
  local format = opts.format or (env_format == "json" and "json") or (env_format == "human" and "human")
    or ((runtime.options().json or 0) > 0 and opts.sink == nil and "json") or "human"
  if format ~= "human" and format ~= "json" then
    validation_error("log format: expected \"human\" or \"json\", got " .. tostring(format), "format")
  end
  local color = opts.color
  if color == nil then color = format == "human" and opts.sink == nil and runtime.options().color == 1 end
  if opts.context ~= nil and type(opts.context) ~= "table" then
    validation_error("log context: expected a table, got " .. type(opts.context), "context")
  end
  return build({
    level = M.levels[level],
    format = format,
    write = make_writer(opts.sink),
    prefix = opts.prefix,
    context = opts.context and util.merge(opts.context) or {},
    color = color and true or false,
    clock = opts.clock or os.time,
  })
end


--- A logger that writes nothing (level "off"); `child`, `with` and the level methods all work.
---@return galley.Logger
function M.silent()
  return M.new({ level = "off", sink = function() end, color = false })
end


--- A logger that keeps its records in memory, for tests: returns the logger and the list that
-- receives each written record (with `line` set to its formatted text).
---@param opts? {level?: string, format?: "human"|"json", prefix?: string, context?: table, clock?: fun(): number}
---@return galley.Logger logger, galley.LogRecord[] records
function M.capture(opts)
  local records = {}
  local o = util.merge({ level = "trace", color = false }, opts)
  o.sink = function(line, rec)
    rec.line = line
    records[#records + 1] = rec
  end
  return M.new(o), records
end


local default_logger

--- The process-wide logger (created on first use with the default level and format).
---@return galley.Logger
function M.default()
  default_logger = default_logger or M.new()
  return default_logger
end


return M
