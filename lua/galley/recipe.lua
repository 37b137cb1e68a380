--- galley.recipe: the small API that keeps recipes short.
--   local recipe = require("galley.recipe")
--   local opts = recipe.options({ name = "demo", summary = "...", options = {
--     { "snapshot", metavar = "ID", help = "snapshot to boot" },
--     { "ttl", type = "integer", default = 1800, help = "instance TTL in seconds" },
--     { "keep", type = "flag", help = "keep the instance after the run" },
--   } }, arg)
--   local inst = recipe.step("boot", function() return provider.instances.boot(opts.snapshot) end)
--   recipe.defer(function() provider.instances.terminate(inst.id) end, "terminate instance")
-- `--help` prints the generated help and exits 0; a bad option exits 2 with a hint.
local errors = require("galley.errors")
local progress = require("galley.progress")
local run = require("galley.run")

local M = {}

---@class galley.RecipeOption
---@field [1] string option name without dashes ("snapshot" → --snapshot)
---@field type? "string"|"integer"|"number"|"flag"|"choice" default "string" ("choice" when choices given)
---@field choices? string[]
---@field default? any
---@field metavar? string
---@field help? string
---@field env? string environment variable that supplies a default

--- Ends the recipe now with an exit code, running cleanup as usual (`recipe.exit(0)`).
---@param code? integer
function M.exit(code)
  error(errors.new("RECIPE_EXIT", "exit", { exit_code = code or 0 }), 0)
end

--- Raises a usage error (exit 2) with a hint pointing at --help.
---@param message string
function M.usage_error(message)
  error(errors.new("RECIPE_USAGE", message, { hint = "see --help" }), 0)
end

local function opt_type(o)
  return o.type or (o.choices and "choice") or "string"
end

--- The generated --help text.
---@param spec {name: string, summary?: string, usage?: string, options?: galley.RecipeOption[], epilog?: string}
---@return string
function M.help_text(spec)
  local lines = { ("usage: galley run %s %s"):format(spec.name, spec.usage or "[options]") }
  if spec.summary then lines[#lines + 1] = "\n" .. spec.summary end
  lines[#lines + 1] = "\noptions:"
  for _, o in ipairs(spec.options or {}) do
    local t = opt_type(o)
    local left = "--" .. o[1]
    if t ~= "flag" then
      left = left .. " " .. (o.metavar or (t == "choice" and table.concat(o.choices, "|")) or t:upper())
    end
    local help = o.help or ""
    if o.default ~= nil and t ~= "flag" then help = help .. (" (default: %s)"):format(tostring(o.default)) end
    if o.env then help = help .. (" [env %s]"):format(o.env) end
    lines[#lines + 1] = ("  %-28s %s"):format(left, help)
  end
  lines[#lines + 1] = ("  %-28s %s"):format("-h, --help", "show this help")
  if spec.epilog then lines[#lines + 1] = "\n" .. spec.epilog end
  return table.concat(lines, "\n")
end

local function convert(o, raw)
  local t = opt_type(o)
  if t == "integer" then
    local n = math.tointeger(tonumber(raw))
    if not n then M.usage_error(("--%s: expected an integer, got '%s'"):format(o[1], raw)) end
    return n
  elseif t == "number" then
    local n = tonumber(raw)
    if not n then M.usage_error(("--%s: expected a number, got '%s'"):format(o[1], raw)) end
    return n
  elseif t == "choice" then
    for _, c in ipairs(o.choices) do
      if c == raw then return raw end
    end
    M.usage_error(("--%s: expected one of %s, got '%s'"):format(o[1], table.concat(o.choices, ", "), raw))
  end
  return raw
end

--- Parses the recipe's arguments. Returns a table of option values (by name, with `-` turned
-- into `_`) and the remaining positional arguments in `[1..n]`.
-- A `keep` flag, when declared and set, keeps the run's instances (no cleanup at exit).
---@param spec {name: string, summary?: string, usage?: string, options?: galley.RecipeOption[], epilog?: string}
---@param args? table the recipe's `arg`
---@return table values
function M.options(spec, args)
  args = args or {}
  local byname, values = {}, {}
  for _, o in ipairs(spec.options or {}) do
    byname[o[1]] = o
    local key = o[1]:gsub("-", "_")
    local envv = o.env and os.getenv(o.env)
    if envv and envv ~= "" then
      values[key] = opt_type(o) == "flag" and envv ~= "0" or convert(o, envv)
    elseif o.default ~= nil then
      values[key] = o.default
    elseif opt_type(o) == "flag" then
      values[key] = false
    end
  end
  local i, n = 1, #args
  while i <= n do
    local a = args[i]
    if a == "--" then
      for j = i + 1, n do values[#values + 1] = args[j] end
      break
    elseif a == "-h" or a == "--help" then
      io.stdout:write(M.help_text(spec), "\n")
      M.exit(0)
    elseif a:sub(1, 2) == "--" then
      local name, inline = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      local negated = false
      local o = byname[name]
      if not o and name:sub(1, 3) == "no-" and byname[name:sub(4)] and opt_type(byname[name:sub(4)]) == "flag" then
        o, negated = byname[name:sub(4)], true
      end
      if not o then M.usage_error(("unknown option '--%s'"):format(name)) end
      local key = o[1]:gsub("-", "_")
      if opt_type(o) == "flag" then
        if inline then M.usage_error(("--%s takes no value"):format(name)) end
        values[key] = not negated
      else
        local raw = inline
        if raw == nil then
          i = i + 1
          raw = args[i]
          if raw == nil then M.usage_error(("--%s needs a value"):format(name)) end
        end
        values[key] = convert(o, raw)
      end
    else
      values[#values + 1] = a
    end
    i = i + 1
  end
  if byname.keep and values.keep then run.set_keep(true) end
  return values
end

--- Runs a named step with progress output (spinner on a terminal, ✓/✗ and elapsed time).
---@param label string
---@param fn function
---@return any ...
function M.step(label, fn, ...)
  return progress.step(label, fn, ...)
end

--- Registers a cleanup hook that runs when the recipe ends, whatever the outcome (last
-- registered first). Outside a run (plain scripts) it returns false and does nothing.
---@param fn fun()
---@param label? string
---@return boolean registered
function M.defer(fn, label)
  return run.defer(fn, label)
end

--- Sets the default TTL for instances booted from now on (false: no TTL).
---@param seconds integer|false
function M.ttl(seconds)
  local ctx = run.current()
  if ctx then ctx.ttl_seconds = seconds end
end

--- Keeps the run's instances when it ends (same as a `--keep` flag).
---@param on? boolean
function M.keep(on)
  run.set_keep(on ~= false)
end

--- The active run's id (instances it boots carry it in metadata `galley_run`), or nil.
---@return string|nil
function M.run_id()
  local ctx = run.current()
  return ctx and ctx.id
end

--- Prints a progress line on stderr (nothing with -q/--json).
---@param text string
function M.say(text)
  progress.say(text)
end

return M
