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
local runtime = require("galley.core.runtime")
local task = require("galley.task")

local M = {}

---@class galley.RecipeOption
---@field [1] string option name without dashes ("snapshot" → --snapshot)
---@field type? "string"|"integer"|"number"|"flag"|"choice"|"duration" default "string" ("choice" when
--- choices given); "duration" takes 90, 90s, 10m or 2h and gives whole seconds
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
      left = left .. " " .. (o.metavar or (t == "choice" and table.concat(o.choices, "|"))
      or (t == "duration" and "DURATION") or t:upper())
    end
    local help = o.help or ""
    if o.default ~= nil and t ~= "flag" then help = help .. (" (default: %s)"):format(tostring(o.default)) end
    if o.env then help = help .. (" [env %s]"):format(o.env) end
    lines[#lines + 1] = ("  %-28s %s"):format(left, help)
  end
  lines[#lines + 1] = ("  %-28s %s"):format("-h, --help", "show this help")
  local declared = {}
  for _, o in ipairs(spec.options or {}) do declared[o[1]] = true end
  if not declared.keep then
    lines[#lines + 1] = ("  %-28s %s"):format("--keep [DURATION]",
      "keep this run's instances at exit, for DURATION (4h) if given (run option)")
  end
  if not declared.ttl then
    lines[#lines + 1] = ("  %-28s %s"):format("--ttl DURATION",
      "TTL of the instances it boots: 90, 10m, 2h (run option)")
  end
  if spec.epilog then lines[#lines + 1] = "\n" .. spec.epilog end
  return table.concat(lines, "\n")
end

local RUN_LEVEL, run_level, unknown_option -- run-level options (defined above M.options)

local TYPES = { string = true, integer = true, number = true, flag = true, choice = true, duration = true }

-- Decimal only: "0x10", "1e1" and " 7" are not integers here (tonumber would take them).
local function parse_integer(raw)
  if type(raw) ~= "string" or not raw:match("^[+-]?%d+$") then return nil end
  return math.tointeger(tonumber(raw))
end

local function parse_number(raw)
  if type(raw) ~= "string" or not (raw:match("^[+-]?%d+%.?%d*$") or raw:match("^[+-]?%.%d+$")) then return nil end
  return tonumber(raw)
end

local function short(v)
  local s = tostring(v)
  if #s > 40 then s = s:sub(1, 40) .. "…" end
  return s
end

local function convert(o, raw)
  local t = opt_type(o)
  if t == "integer" then
    local n = parse_integer(raw)
    if not n then M.usage_error(("--%s: expected a decimal integer, got '%s'"):format(o[1], short(raw))) end
    return n
  elseif t == "duration" then
    local n, why = require("galley.util").parse_duration(raw)
    if not n then M.usage_error(("--%s: %s"):format(o[1], why)) end
    return n
  elseif t == "number" then
    local n = parse_number(raw)
    if not n then M.usage_error(("--%s: expected a decimal number, got '%s'"):format(o[1], short(raw))) end
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
-- The option spec is the recipe author's code: a mistake there is reported as such
-- (VALIDATION_ERROR naming options[i] and the field), before any argument is looked at.
local function check_spec(spec)
  local function bad(i, field, message)
    errors.raise("VALIDATION_ERROR", ("recipe.options: options[%d]%s %s"):format(i, field and ("." .. field) or "",
      message), { field = ("options[%d]%s"):format(i, field and ("." .. field) or ""),
      hint = "fix the option table given to recipe.options" }, 3)
  end
  if type(spec) ~= "table" then
    errors.raise("VALIDATION_ERROR", "recipe.options: spec must be a table", { field = "spec" }, 3)
  end
  local seen = {}
  for i, o in ipairs(spec.options or {}) do
    if type(o) ~= "table" or type(o[1]) ~= "string" or not o[1]:match("^[%w][%w%-]*$") then
      bad(i, nil, "needs a name like \"count\" as its first element")
    end
    local name = o[1]
    if name == "help" or name == "h" then bad(i, nil, "is named --" .. name .. ", which every recipe has already") end
    if seen[name] then bad(i, nil, ("repeats the name --%s (options[%d])"):format(name, seen[name])) end
    seen[name] = i
    if o.type ~= nil and not TYPES[o.type] then
      bad(i, "type", ("is %q: expected string, integer, number, flag, choice or duration"):format(tostring(o.type)))
    end
    local t = opt_type(o)
    if t == "choice" and (type(o.choices) ~= "table" or #o.choices == 0) then
      bad(i, "choices", "must be a non-empty list for a choice option")
    end
    local d = o.default
    if d ~= nil then
      local ok = (t == "string" and type(d) == "string")
        or ((t == "integer" or t == "duration") and math.type(d) == "integer")
        or (t == "number" and type(d) == "number") or (t == "flag" and type(d) == "boolean")
      if t == "choice" then
        for _, c in ipairs(o.choices) do
          if c == d then ok = true end
        end
      end
      if not ok then
        bad(i, "default", ("%s does not fit a %s option%s"):format(short(d), t,
          t == "choice" and (" (choices: " .. table.concat(o.choices, ", ") .. ")") or ""))
      end
    end
  end
end

-- Run-level options every recipe accepts unless it declares its own of the same name.
RUN_LEVEL = { keep = true, ttl = true, ["no-keep"] = true }

-- Applies a run-level option at args[i]; returns the index of its last argument.
function run_level(name, inline, args, i)
  if name == "keep" then
    local secs, taken = require("galley.util").keep_duration(inline, args[i + 1])
    if not secs and taken then M.usage_error(taken) end
    run.set_keep(true, secs)
    return taken == true and i + 1 or i
  end
  if name == "no-keep" then
    if inline then M.usage_error(("--%s takes no value"):format(name)) end
    run.set_keep(false)
    return i
  end
  local raw = inline
  if raw == nil then
    i = i + 1
    raw = args[i]
    if raw == nil then M.usage_error("--ttl needs a value") end
  end
  local secs, why = require("galley.util").parse_duration(raw)
  if not secs then M.usage_error("--ttl: " .. why) end
  M.ttl(secs > 0 and secs or false)
  return i
end

function unknown_option(name, byname)
  local names = {}
  for oname, o in pairs(byname) do
    names[#names + 1] = oname
    if opt_type(o) == "flag" then names[#names + 1] = "no-" .. oname end
  end
  names[#names + 1] = "help"
  local near = require("galley.util").did_you_mean(name, names, "--")
  error(errors.new("RECIPE_USAGE", ("unknown option '--%s'"):format(short(name)),
    { hint = near and (near .. " (see --help)") or "see --help", suggestions = near }), 0)
end

function M.options(spec, args)
  check_spec(spec)
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
      if not o and RUN_LEVEL[name] then
        -- --keep and --ttl work for every recipe: when it does not declare them, they are the run's.
        i = run_level(name, inline, args, i)
        goto continue
      end
      if not o then unknown_option(name, byname) end
      local key = o[1]:gsub("-", "_")
      if opt_type(o) == "flag" and name == "keep" then
        -- A declared keep flag takes a DURATION too (`--keep 4h`): the run keeps its instances
        -- with that TTL from the end of the run.
        local secs, taken = require("galley.util").keep_duration(inline, args[i + 1])
        if not secs and taken then M.usage_error(taken) end
        if secs then run.set_keep(true, secs) end
        if taken == true then i = i + 1 end
        values[key] = true
      elseif opt_type(o) == "flag" then
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
    elseif a:match("^%-[^%-%d.]") then
      -- `-c 2` is not a file named "-c": single-dash options are not ours.
      local near = {}
      for oname in pairs(byname) do
        if oname:sub(1, 1) == a:sub(2, 2) then near[#near + 1] = "--" .. oname end
      end
      table.sort(near)
      local hint = #near > 0 and ("did you mean %s? (see --help)"):format(table.concat(near, " or ")) or "see --help"
      error(errors.new("RECIPE_USAGE", ("unknown option '%s'"):format(short(a)), { hint = hint }), 0)
    else
      values[#values + 1] = a
    end
    ::continue::
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

--- Waits `ms` milliseconds; other tasks (recipe.parallel items) go on meanwhile. Raises
-- INTERRUPTED on Ctrl-C/SIGTERM.
---@param ms integer
function M.sleep(ms)
  if math.type(ms) ~= "integer" or ms < 0 then
    errors.raise("VALIDATION_ERROR", "recipe.sleep: ms must be a non-negative integer", { field = "ms" })
  end
  task.sleep(ms)
end

local function interrupted_by_signal(err)
  return errors.is(err, "INTERRUPTED") and err.signal ~= nil
end

--- Runs fn(item, index) for every item at the same time, each in a task of its own, at most
-- `max` at once (default: all). Every wait inside fn (boots, execs, HTTP, sleeps) lets the
-- others run, so N instances take about the time of one.
--
-- Returns one record per item, in order: `{ok = true, value = v}` (v: fn's first result) or
-- `{ok = false, err = e}`. A failing item does not stop the others. It raises PARALLEL_FAILED
-- (with `failures = {{index, err}...}` and `results`, the records) when every item failed, or —
-- with `fail_fast = true` — at the first failure, after cancelling the items still running
-- (their records hold INTERRUPTED) and skipping those not started. Ctrl-C/SIGTERM cancels every
-- item and raises INTERRUPTED; the run's cleanup then stops the instances they booted.
-- On a terminal the enclosing recipe.step's spinner shows "done/total".
---@param items any[]
---@param fn fun(item: any, index: integer): any
---@param popts? {max?: integer, fail_fast?: boolean}
---@return {ok: boolean, value?: any, err?: any}[]
function M.parallel(items, fn, popts)
  popts = popts or {}
  if type(items) ~= "table" then
    errors.raise("VALIDATION_ERROR", "recipe.parallel: items must be a list", { field = "items" })
  end
  if type(fn) ~= "function" then
    errors.raise("VALIDATION_ERROR", "recipe.parallel: fn must be a function", { field = "fn" })
  end
  local n = #items
  local max = popts.max or math.max(n, 1)
  if math.type(max) ~= "integer" or max < 1 then
    errors.raise("VALIDATION_ERROR", "recipe.parallel: max must be a positive integer", { field = "max" })
  end
  local results, failures = {}, {}
  local next_index, finished, stopped, cancelled = 1, 0, nil, nil
  local running = {} -- index -> task

  local function note_progress()
    progress.detail(("%d/%d done%s"):format(finished, n, #failures > 0 and (", %d failed"):format(#failures) or ""))
  end

  local function worker()
    while not stopped and next_index <= n and runtime.pending_signal() == 0 do
      local i = next_index
      next_index = i + 1
      local t = task.spawn(fn, items[i], i)
      running[i] = t
      local ok, err = pcall(t.wait, t)
      running[i] = nil
      if not t.done then error(err, 0) end -- this worker's own wait was interrupted
      finished = finished + 1
      if t.ok then
        results[i] = { ok = true, value = t.results[1] }
      else
        results[i] = { ok = false, err = t.err }
        if t.err ~= cancelled then failures[#failures + 1] = { index = i, err = t.err } end
        if t.err == cancelled then
          local _ = cancelled -- cancelled by fail_fast: recorded, not a failure of its own
        elseif interrupted_by_signal(t.err) then
          stopped = stopped or t.err
        elseif popts.fail_fast and not stopped then
          stopped = t.err
          cancelled = errors.new("INTERRUPTED", ("cancelled: item %d failed (fail_fast)"):format(i),
            { hint = "see the failure of item " .. i })
          for _, other in pairs(running) do other:cancel(cancelled) end
        end
      end
      note_progress()
      local _ = ok
    end
  end

  local workers = {}
  for w = 1, math.min(max, n) do workers[w] = task.spawn(worker) end
  local joined = task.join(workers)
  for _, rec in ipairs(joined) do
    if not rec.ok then error(rec.err, 0) end -- a worker broke: a signal or a bug
  end
  progress.detail(nil)
  if interrupted_by_signal(stopped) then error(stopped, 0) end
  local sig = runtime.pending_signal()
  if sig ~= 0 then
    error(errors.new("INTERRUPTED", "interrupted during recipe.parallel", { signal = sig }), 0)
  end
  for i = 1, n do
    if not results[i] then
      results[i] = { ok = false, err = errors.new("INTERRUPTED", "not started: an earlier item failed (fail_fast)") }
    end
  end
  if n > 0 and (#failures == n or (popts.fail_fast and #failures > 0)) then
    table.sort(failures, function(a, b) return a.index < b.index end)
    local parts = {}
    for k, f in ipairs(failures) do
      if k > 5 then
        parts[#parts + 1] = ("... %d more"):format(#failures - 5)
        break
      end
      parts[#parts + 1] = ("item %d: %s"):format(f.index, tostring(f.err))
    end
    local err = errors.new("PARALLEL_FAILED",
      ("%d of %d items failed: %s"):format(#failures, n, table.concat(parts, "; ")),
      { hint = "err.failures lists each failure; err.results has every item's record" })
    err.failures, err.results = failures, results -- already redacted errors: kept as they are
    error(err, 0)
  end
  return results
end

--- Prints a progress line on stderr (nothing with -q/--json).
---@param text string
function M.say(text)
  progress.say(text)
end

--- Prints a warning that is not an error on stderr: nothing with -q, a JSON line
-- ({"level":"warn","msg":...}) with --json. Failures are raised, not warned.
---@param text string
---@param fields? table extra fields for the JSON line
function M.warn(text, fields)
  progress.warn(text, fields)
end

return M
