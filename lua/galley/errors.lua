--- galley.errors: the one error shape used everywhere.
-- An error is a table `{code, message, details?, operation?, resource?, attempt?, max_attempts?,
-- hint?, kind?}` sharing one metatable with the C core, whose `__tostring` gives "CODE: message".
-- Compare `err.code`, never the message text.
--
-- Messages and context built here pass through galley.secrets (the rules `galley.log.redact`
-- applies), all through: message, hint, details, fields, nested tables and causes. `errors.wrap`
-- redacts an error made elsewhere (the C core's) in place, and `errors.format` redacts again.
-- Redaction is linear, so an error about a huge value costs milliseconds; still, messages should
-- quote a bad value with `errors.quote` (a short prefix and the size), never whole.
local runtime = require("galley.core.runtime")

local M = {}

--- The seeds' error codes (Lua layers above the C core). `retryable` marks the transient ones.
---@type {code: string, description: string, retryable: boolean}[]
M.code_list = {
  { code = "AUTHENTICATION_ERROR", description = "credentials missing or rejected (HTTP 401/403)", retryable = false },
  { code = "VALIDATION_ERROR", description = "bad input: a spec, an option or HTTP 400/422", retryable = false },
  { code = "NOT_FOUND", description = "the resource does not exist (HTTP 404/410)", retryable = false },
  { code = "CONFLICT", description = "the resource is in a state that forbids this (HTTP 409)", retryable = false },
  { code = "RATE_LIMIT", description = "too many requests (HTTP 429); see retry_after_ms", retryable = true },
  { code = "SERVER_ERROR", description = "the remote side failed (HTTP 5xx)", retryable = true },
  { code = "NETWORK_ERROR", description = "could not connect, or the connection broke", retryable = true },
  { code = "TIMEOUT", description = "no answer in time", retryable = true },
  { code = "PROTOCOL_ERROR", description = "an answer we cannot parse (bad JSON, missing field)", retryable = false },
  { code = "PROCESS_ERROR", description = "a remote or local process failed to start, stop or run", retryable = false },
  { code = "FILE_IO_ERROR", description = "reading or writing a file failed", retryable = false },
  { code = "UNSAFE_PATH", description = "a directory for galley's state or secrets is a symlink, not yours,"
    .. " or writable by others", retryable = false },
  { code = "PROVIDER_ERROR", description = "a VM provider failure with no more specific code", retryable = false },
  { code = "CREDENTIALS_ERROR", description = "installing or reading credentials failed", retryable = false },
  { code = "AGENT_ERROR", description = "an agent could not build its process", retryable = false },
  { code = "ORCHESTRATION_ERROR", description = "a step of boot/prepare/start failed", retryable = false },
  { code = "INTERRUPTED", description = "stopped by Ctrl-C or SIGTERM", retryable = false },
  { code = "PARALLEL_FAILED", description = "recipe.parallel: every item failed, or one did with fail_fast",
    retryable = false },
  { code = "IMAGE_STEP_FAILED", description = "a step of snapshots.build failed (details.step, details.key)",
    retryable = false },
  { code = "INTERNAL_ERROR", description = "a bug in galley (an unexpected Lua error)", retryable = false },
}

--- The same codes by name: `errors.codes.NOT_FOUND == "NOT_FOUND"`; `errors.codes[1]` is the first
-- code in `code_list` order, so `ipairs(errors.codes)` enumerates them.
---@type table<string|integer, string>
M.codes = {}
local code_info = {}
for i, c in ipairs(M.code_list) do
  M.codes[i] = c.code
  M.codes[c.code] = c.code
  code_info[c.code] = c
end

--- The error kinds (the seeds' error classes), each with a constructor of the same name below.
M.kinds = { "ProviderError", "ProcessError", "AgentError", "CredentialsError", "OrchestrationError" }

local secrets = require("galley.secrets")

local function redact(v)
  return secrets.redact(v)
end

--- How long a quoted value may get in a message before it is cut (`errors.quote`).
M.QUOTE_MAX = 64

--- A value for a message: a string quoted with %q, cut after `max` bytes (default 64, at a UTF-8
-- character boundary) with the full size appended, `"aaaa…"…(200000 bytes)`; other values
-- through tostring (cut the same way).
---@param v any
---@param max? integer
---@return string
function M.quote(v, max)
  max = max or M.QUOTE_MAX
  local s = type(v) == "string" and v or tostring(v)
  if #s <= max then return type(v) == "string" and ("%q"):format(s) or s end
  local cut = max
  while cut > 0 and ((s:byte(cut + 1) or 0) & 0xC0) == 0x80 do cut = cut - 1 end
  local head = s:sub(1, cut)
  if type(v) == "string" then head = ("%q"):format(head) end
  return ("%s…(%d bytes)"):format(head, #s)
end

--- Longest message an error keeps: a longer one is cut (after redaction, so no half secret is
-- left behind) with its size appended. The full text belongs in `details`.
M.MAX_MESSAGE = 8192

local function bounded(message)
  if #message <= M.MAX_MESSAGE then return message end
  local cut = M.MAX_MESSAGE
  while cut > 0 and ((message:byte(cut + 1) or 0) & 0xC0) == 0x80 do cut = cut - 1 end
  return ("%s…(%d bytes)"):format(message:sub(1, cut), #message)
end

-- Redacts every field of an error but its code, in place (nested tables are redacted copies).
local function redact_fields(err)
  for k, v in pairs(err) do
    if k ~= "code" then err[k] = redact(v) end
  end
  if type(err.message) == "string" then err.message = bounded(err.message) end
  return err
end

---@class galley.Error
---@field code string UPPER_SNAKE code, e.g. "NOT_FOUND", "PROCESS_ERROR"
---@field message string human-readable sentence
---@field kind? string "ProviderError" | "ProcessError" | "AgentError" | "CredentialsError" | "OrchestrationError" | ...
---@field details? table extra data (exit codes, field lists, ...)
---@field operation? string e.g. "instances.boot", "files.write_file_atomic", "pm2.start"
---@field resource? string e.g. "instance:morphvm_abc", "file:/root/x", "process:cc-demo"
---@field attempt? integer
---@field max_attempts? integer
---@field hint? string what to do about it

M.metatable = runtime.error_metatable()

--- Creates an error table. The message and every field are redacted (galley.secrets); a message
-- over `MAX_MESSAGE` bytes is cut.
---@param code string
---@param message string
---@param fields? table extra fields copied into the error
---@return galley.Error
function M.new(code, message, fields)
  assert(type(code) == "string", "errors.new: code must be a string")
  local err = { code = code, message = bounded(redact(tostring(message or code))) }
  if fields then
    for k, v in pairs(fields) do
      if err[k] == nil then err[k] = redact(v) end
    end
  end
  return setmetatable(err, M.metatable)
end

--- True when `v` is a galley error (optionally with the given code).
---@param v any
---@param code? string
---@return boolean
function M.is(v, code)
  return type(v) == "table" and getmetatable(v) == M.metatable and (code == nil or v.code == code)
end

--- Raises a new error. `level` works as in `error` (default 2: the caller of raise's caller).
---@param code string
---@param message string
---@param fields? table
---@param level? integer
function M.raise(code, message, fields, level)
  error(M.new(code, message, fields), level or 2)
end

--- Turns anything thrown into a galley error, adding context fields that are not already set.
-- Strings become `{code = default_code or "INTERNAL_ERROR"}`. An error made elsewhere (the C
-- core's, with server-echoed `details`/`fields`) is kept and redacted all through, in place.
---@param err any
---@param fields? table context: operation, resource, hint, kind, ...
---@param default_code? string
---@return galley.Error
function M.wrap(err, fields, default_code)
  if not M.is(err) then
    local msg = type(err) == "table" and (err.message or tostring(err)) or tostring(err)
    local code = type(err) == "table" and type(err.code) == "string" and err.code
    err = M.new(code or default_code or "INTERNAL_ERROR", msg)
  else
    redact_fields(err)
  end
  if fields then
    for k, v in pairs(fields) do
      if err[k] == nil then err[k] = redact(v) end
    end
  end
  return err
end

local function kind(name, default_code)
  return function(code, message, fields)
    local f = { kind = name }
    if fields then
      for k, v in pairs(fields) do f[k] = v end
    end
    return M.new(code or default_code, message, f)
  end
end

--- Constructors for the seeds' error classes: `errors.ProviderError("NOT_FOUND", "msg", {...})`.
M.ProviderError = kind("ProviderError", "PROVIDER_ERROR")
M.ProcessError = kind("ProcessError", "PROCESS_ERROR")
M.AgentError = kind("AgentError", "AGENT_ERROR")
M.CredentialsError = kind("CredentialsError", "CREDENTIALS_ERROR")
M.OrchestrationError = kind("OrchestrationError", "ORCHESTRATION_ERROR")

--- Multi-line description for people: "CODE: message" then context lines, redacted, and with
-- control characters shown rather than sent to a terminal (galley.util.visible: an error can
-- quote what an instance printed, escape sequences and all).
---@param err any
---@return string
function M.format(err)
  if not M.is(err) then return require("galley.util").visible(tostring(err)) end
  local lines = { tostring(err) }
  for _, k in ipairs({ "operation", "resource" }) do
    if err[k] then lines[#lines + 1] = ("  %s: %s"):format(k, tostring(err[k])) end
  end
  -- The attempt count only matters when galley retried (a 401 is not retried: no "attempt: 1/4").
  if err.attempt and (tonumber(err.attempt) or 0) > 1 then
    lines[#lines + 1] = ("  attempt: %s%s"):format(err.attempt, err.max_attempts and ("/" .. err.max_attempts) or "")
  end
  if err.hint then lines[#lines + 1] = "  hint: " .. tostring(err.hint) end
  return require("galley.util").visible(redact(table.concat(lines, "\n")))
end


--- What a code means and whether retrying can help; nil for codes not in `code_list`.
---@param code string
---@return {code: string, description: string, retryable: boolean}|nil
function M.describe(code)
  return code_info[code]
end


--- True when `err` carries a transient code (RATE_LIMIT, SERVER_ERROR, NETWORK_ERROR, TIMEOUT,
-- and the C core's HTTP_TIMEOUT/HTTP_CONNECT), or sets `retryable = true` itself.
---@param err any
---@return boolean
function M.is_retryable(err)
  if type(err) ~= "table" then return false end
  if err.retryable ~= nil then return err.retryable == true end
  local info = code_info[err.code]
  if info then return info.retryable end
  return err.code == "HTTP_TIMEOUT" or err.code == "HTTP_CONNECT"
end


--- The seeds' code for an HTTP status: 400/422 VALIDATION_ERROR, 401/403 AUTHENTICATION_ERROR,
-- 404/410 NOT_FOUND, 408 TIMEOUT, 409 CONFLICT, 429 RATE_LIMIT, other 4xx VALIDATION_ERROR,
-- 5xx SERVER_ERROR; nil below 400 (not an error).
---@param status integer
---@return string|nil code
function M.code_for_http_status(status)
  if type(status) ~= "number" or status < 400 then return nil end
  if status == 401 or status == 403 then return "AUTHENTICATION_ERROR" end
  if status == 404 or status == 410 then return "NOT_FOUND" end
  if status == 408 then return "TIMEOUT" end
  if status == 409 then return "CONFLICT" end
  if status == 429 then return "RATE_LIMIT" end
  if status >= 500 then return "SERVER_ERROR" end
  return "VALIDATION_ERROR"
end

return M
