--- galley.errors: the one error shape used everywhere.
-- An error is a table `{code, message, details?, operation?, resource?, attempt?, max_attempts?,
-- hint?, kind?}` sharing one metatable with the C core, whose `__tostring` gives "CODE: message".
-- Compare `err.code`, never the message text.
local runtime = require("galley.core.runtime")

local M = {}

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

--- Creates an error table.
---@param code string
---@param message string
---@param fields? table extra fields copied into the error
---@return galley.Error
function M.new(code, message, fields)
  assert(type(code) == "string", "errors.new: code must be a string")
  local err = { code = code, message = tostring(message or code) }
  if fields then
    for k, v in pairs(fields) do
      if err[k] == nil then err[k] = v end
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
-- Strings become `{code = default_code or "INTERNAL_ERROR"}`.
---@param err any
---@param fields? table context: operation, resource, hint, kind, ...
---@param default_code? string
---@return galley.Error
function M.wrap(err, fields, default_code)
  if not M.is(err) then
    local msg = type(err) == "table" and (err.message or tostring(err)) or tostring(err)
    err = M.new(type(err) == "table" and err.code or default_code or "INTERNAL_ERROR", msg)
  end
  if fields then
    for k, v in pairs(fields) do
      if err[k] == nil then err[k] = v end
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

--- Multi-line description for people: "CODE: message" then context lines.
---@param err any
---@return string
function M.format(err)
  if not M.is(err) then return tostring(err) end
  local lines = { tostring(err) }
  for _, k in ipairs({ "operation", "resource" }) do
    if err[k] then lines[#lines + 1] = ("  %s: %s"):format(k, tostring(err[k])) end
  end
  if err.attempt then
    lines[#lines + 1] = ("  attempt: %s%s"):format(err.attempt, err.max_attempts and ("/" .. err.max_attempts) or "")
  end
  if err.hint then lines[#lines + 1] = "  hint: " .. tostring(err.hint) end
  return table.concat(lines, "\n")
end

return M
