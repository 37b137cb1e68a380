--- galley.agents.command: any command as a session, for demos and tests.
--
--   local agent = require("galley.agents.command").new{cwd = "~"}
--   agent.to_process_spec{session_name = "web", command = {"python3", "-m", "http.server", "8000"}}
--   agent.to_process_spec{session_name = "tick", command = "while sleep 1; do date; done"}
--   agent.to_process_spec{session_name = "ls", command = {kind = "argv", command = "ls", args = {"-la"}}}
--
-- `command` is a CommandSpec, an argv array (first element the program) or a shell script string.
-- The process name is pm2.sanitize_name("<prefix>-<session_name>") (prefix "cmd"; "" for none).
-- cwd: input.cwd, else the CommandSpec's, else opts.cwd. env: opts.env, then the CommandSpec's,
-- then input.env (later wins). Restart: opts.restart (default "never").
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local util = require("galley.util")

local M = {}

local OPTION_KEYS = { prefix = true, cwd = true, env = true, restart = true }
local INPUT_KEYS = { session_name = true, command = true, cwd = true, env = true }


local function bad(path, message)
  error(errors.AgentError("VALIDATION_ERROR", ("%s: %s"):format(path, message),
    { field = path, details = { path = path } }), 0)
end


local function check_keys(path, t, allowed)
  if type(t) ~= "table" then bad(path, "expected a table, got " .. type(t)) end
  for _, k in ipairs(util.sorted_keys(t)) do
    if not allowed[k] then bad(path .. "." .. tostring(k), "unknown field") end
  end
end


-- Runs a contracts check, re-raising its VALIDATION_ERROR as an AgentError whose field path is
-- rewritten by `rename` (message included).
local function checked(fn, rename, ...)
  local ok, res = pcall(fn, ...)
  if ok then return res end
  if not errors.is(res) then error(res, 0) end
  local old = res.details and res.details.path or ""
  local path = rename(old)
  local message = res.message
  if old ~= "" and message:sub(1, #old) == old then message = path .. message:sub(#old + 1) end
  error(errors.AgentError(res.code, message, { field = path, details = { path = path } }), 0)
end


local function keep(path) return path end

-- "command.cwd" -> "<root>.cwd", "restart" -> "<root>.restart"
local function under(root)
  return function(path)
    return root .. "." .. path:gsub("^command%.", "")
  end
end


local function to_command(path, c)
  if type(c) == "string" then
    if c == "" then bad(path, "must not be an empty script") end
    return { kind = "shell", script = c }
  elseif type(c) == "table" and c.kind ~= nil then
    return checked(contracts.check_command, keep, c, path)
  elseif type(c) == "table" and util.is_array(c) and #c > 0 then
    for i, a in ipairs(c) do
      if type(a) ~= "string" then bad(("%s[%d]"):format(path, i), "expected string, got " .. type(a)) end
    end
    if c[1] == "" then bad(path .. "[1]", "the program must not be empty") end
    local args = table.move(c, 2, #c, 1, {})
    return { kind = "argv", command = c[1], args = args }
  end
  bad(path, "expected a CommandSpec, an argv array or a script string, got " .. type(c))
end


--- Creates a command agent.
---@param opts? {prefix?: string, cwd?: string, env?: table<string, string>, restart?: "never"|table}
---@return galley.Agent agent `{name = "command", to_process_spec = function(input) ... end}`
---@raise VALIDATION_ERROR (kind AgentError) for unknown or bad options
function M.new(opts)
  opts = opts or {}
  check_keys("opts", opts, OPTION_KEYS)
  local prefix = opts.prefix == nil and "cmd" or opts.prefix
  if type(prefix) ~= "string" then bad("opts.prefix", "expected string, got " .. type(prefix)) end
  -- Check cwd/env/restart once now, so a bad option fails at construction.
  checked(contracts.check_process, under("opts"),
    { command = { kind = "shell", script = ":", cwd = opts.cwd, env = opts.env }, restart = opts.restart })
  local restart = opts.restart == nil and "never" or opts.restart

  local agent = { name = "command" }

  --- Builds the ProcessSpec for one session.
  ---@param input {session_name: string, command: galley.CommandSpec|string[]|string, cwd?: string,
  ---  env?: table<string, string>}
  ---@return galley.ProcessSpec
  ---@raise VALIDATION_ERROR (kind AgentError) naming the bad input field
  function agent.to_process_spec(input)
    local pm2 = require("galley.core.pm2")
    check_keys("input", input, INPUT_KEYS)
    local session = input.session_name
    if type(session) ~= "string" or not session:find("%w") then
      bad("input.session_name", "expected a string with at least one letter or digit")
    end
    local cmd = to_command("input.command", input.command)
    cmd.cwd = input.cwd or cmd.cwd or opts.cwd
    cmd.env = util.merge(opts.env, cmd.env, input.env)
    if next(cmd.env) == nil then cmd.env = nil end
    cmd.name = pm2.sanitize_name(prefix ~= "" and (prefix .. "-" .. session) or session)
    return checked(contracts.check_process, under("input"), { command = cmd, restart = restart })
  end

  return agent
end


return M
