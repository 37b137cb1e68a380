--- galley.runner: loads and runs recipes in their own strict environment.
-- Exit codes: 0 success; 1 the recipe failed; 2 usage error, missing file or syntax error;
-- 130 interrupted by Ctrl-C; 143 terminated by SIGTERM.
local errors = require("galley.errors")
local progress = require("galley.progress")
local run = require("galley.run")
local runtime = require("galley.core.runtime")

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = 0, 1, 2

--- A fresh environment whose reads fall through to `_G` and where assigning an undeclared
-- global is an error naming the variable and line. `declare(name, value)` makes a real one.
---@return table env
function M.new_env()
  local env = {}
  env.declare = function(name, value) rawset(env, name, value) end
  return setmetatable(env, {
    __index = _G,
    __newindex = function(_, name, _)
      local info = debug.getinfo(2, "Sl")
      local where = info and info.currentline and info.currentline > 0
        and (" at %s:%d"):format(info.short_src, info.currentline) or ""
      errors.raise("RECIPE_GLOBAL", ("assignment to undeclared global '%s'%s"):format(tostring(name), where), {
        hint = ("write `local %s = ...`, or `declare(%q, value)` for a global"):format(tostring(name), tostring(name)),
      }, 2)
    end,
  })
end

--- Finds a recipe: a file path, or the name of a recipe shipped inside galley ("boot-and-run").
---@param name string
---@param env table the environment the chunk gets (see new_env)
---@return function|nil chunk, string|table source_or_err, "file"|"embedded"|nil kind
function M.load(name, env)
  if name == "-" then
    -- `galley run -`: the recipe comes from stdin.
    local src = io.stdin:read("a") or ""
    local chunk, err = load(src, "=stdin", "t", env)
    if not chunk then return nil, errors.new("RECIPE_SYNTAX", err) end
    return chunk, "-", "stdin"
  end
  local st = require("galley.core.fs").stat(name)
  if st and st.type == "file" then
    local chunk, err = loadfile(name, "t", env)
    if not chunk then return nil, errors.new("RECIPE_SYNTAX", err) end
    return chunk, name, "file"
  end
  for _, candidate in ipairs({ name, "recipes/" .. name, "recipes/" .. name .. ".lua" }) do
    local src = runtime.resource(candidate)
    if src then
      local chunk, err = load(src, "@" .. candidate, "t", env)
      if not chunk then return nil, errors.new("RECIPE_SYNTAX", err) end
      return chunk, candidate, "embedded"
    end
  end
  if st and st.type == "directory" then
    -- A directory (that names no shipped recipe) is not a recipe: say so, and name a recipe file in it.
    local found = {}
    local ok, entries = pcall(require("galley.core.fs").list, name)
    for _, e in ipairs(ok and type(entries) == "table" and entries or {}) do
      local n = type(e) == "table" and e.name or e
      if type(n) == "string" and n:match("%.lua$") then found[#found + 1] = n end
    end
    table.sort(found)
    local dir = name:gsub("/+$", "")
    return nil, errors.new("RECIPE_NOT_FOUND", ("'%s' is a directory, not a recipe file"):format(name), {
      resource = "file:" .. name,
      hint = #found > 0 and ("run one of its files, e.g. galley run %s/%s"):format(dir, found[1])
        or "give the path of a .lua file, or the name of a shipped recipe (see `galley run` for the list)",
    })
  end
  local names = {}
  for _, r in ipairs(M.shipped()) do names[#names + 1] = r.name end
  local near = require("galley.util").did_you_mean(name:gsub("%.lua$", ""), names)
  return nil, errors.new("RECIPE_NOT_FOUND", ("no recipe file '%s'"):format(name), {
    hint = (near and (near .. " ") or "") .. "give a path to a .lua file, or the name of a shipped recipe "
      .. "(see `galley run` for the list)",
  })
end

--- The recipes shipped inside the binary, by name, with the one-line summary each carries (the
-- `summary = "..."` of its recipe.options spec, else its first comment line). Read, never run.
---@return {name: string, summary: string}[]
function M.shipped()
  local out = {}
  for _, path in ipairs(runtime.resources()) do
    local name = path:match("^recipes/([^/]+)%.lua$")
    if name then
      local src = runtime.resource(path) or ""
      local summary = src:match('\n%s*summary%s*=%s*"(.-)",?%s*\n') or src:match("^%-%-%s*[^:\n]+:%s*([^\n]*)") or ""
      out[#out + 1] = { name = name, summary = summary }
    end
  end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

--- The list `galley run` and `galley help run` print: one line per shipped recipe.
---@return string
function M.shipped_text()
  local lines = { "shipped recipes (galley run NAME --help for one's options):" }
  for _, r in ipairs(M.shipped()) do
    lines[#lines + 1] = ("  %-14s %s"):format(r.name, r.summary)
  end
  return table.concat(lines, "\n")
end

local function recipe_location(source)
  for level = 3, 200 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source == source and info.currentline and info.currentline > 0 then
      return ("%s:%d"):format(info.short_src, info.currentline)
    end
  end
end

local NETWORK_CODES = { AUTHENTICATION_ERROR = true, NETWORK_ERROR = true, TIMEOUT = true, SERVER_ERROR = true,
  PROTOCOL_ERROR = true, RATE_LIMIT = true }

--- The Morph base URL to name beside a network or authentication error of the run's Morph
-- provider, or nil.
---@param err table
---@return string|nil
function M.base_url_for(err)
  if type(err) ~= "table" or not NETWORK_CODES[err.code] then return nil end
  local ctx = run.current()
  for _, p in ipairs(ctx and ctx.providers or {}) do
    if p.name == "morph" and p.client then
      local ok, url = pcall(function() return p.client:base_url() end)
      if ok and type(url) == "string" then return url end
    end
  end
  return nil
end

--- For a snapshot NOT_FOUND: up to five snapshots that exist on the run's providers (and the
-- emulator's ready one), or nil.
---@param err table
---@return string|nil
function M.snapshot_hint(err)
  if type(err) ~= "table" or err.code ~= "NOT_FOUND" then return nil end
  local details = type(err.details) == "table" and err.details or {}
  local cause = type(err.cause) == "table" and err.cause or (type(details.cause) == "table" and details.cause) or {}
  local about_snapshot = tostring(err.resource or ""):match("^snapshot:") or tostring(cause.resource or ""):match(
    "^snapshot:") or details.snapshot_id
  if not about_snapshot then return nil end
  local ctx = run.current()
  for _, p in ipairs(ctx and ctx.providers or {}) do
    local ok, hint = pcall(require("galley.commands.boot").snapshot_hint, p)
    if ok and hint then return "hint: " .. hint end
  end
  return nil
end

--- Runs a loaded chunk; returns the exit code and prints failures to stderr.
---@param chunk function
---@param path string  the recipe's path (for locations)
---@param args string[]
---@return integer exit_code
--- os.exit(code) as a recipe sees it while it runs: it ends the recipe like recipe.exit, so the
-- run's cleanup still stops its instances (the real os.exit would skip it and leak them).
---@param code? boolean|integer
function M.exit_code(code)
  if code == nil or code == true then return 0 end
  if code == false then return 1 end
  return math.tointeger(code) or 1
end

local function guarded_exit(code)
  error(errors.new("RECIPE_EXIT", "os.exit", { exit_code = M.exit_code(code) }), 0)
end

function M.call(chunk, path, args)
  local verbose = (runtime.options().verbose or 0) > 0
  local source = "@" .. path
  local failure
  local real_exit = os.exit
  os.exit = guarded_exit -- luacheck: ignore 122
  local ok, herr = xpcall(chunk, function(e)
    local err = e
    if not errors.is(err) then
      -- A plain table with a code (made without galley.errors) keeps its code and message.
      local msg = type(e) == "table" and (e.message ~= nil and tostring(e.message) or (e.code and "") or tostring(e))
        or tostring(e)
      -- "file:line: text" from error("text") gets its location from the stack walk instead.
      local stripped = type(e) == "string" and msg:match("^[^\n]-:%d+: (.*)$") or msg
      err = errors.new(type(e) == "table" and e.code or "RECIPE_ERROR", stripped)
    end
    failure = { err = err, where = recipe_location(source), traceback = debug.traceback("", 2) }
    return err
  end, table.unpack(args, 1, args.n or #args))
  os.exit = real_exit -- luacheck: ignore 122
  local code = M.EXIT_OK
  if not ok and not failure then
    -- The message handler itself failed (e.g. a broken module): report what we have.
    failure = { err = setmetatable({ code = "INTERNAL_ERROR", message = tostring(herr) }, errors.metatable),
      traceback = "" }
  end
  if not ok then
    local err = failure.err
    if err.code == "RECIPE_EXIT" then
      code = err.exit_code or 0 -- recipe.exit(): --help and friends, nothing to print
    else
      local text = errors.format(err)
      -- An embedded (shipped) recipe's own line means nothing to its user: shown under -v only.
      local where = failure.where
      if where and not verbose and runtime.resource(path) then where = nil end
      -- An interruption is said once, after cleanup (finish_run), not as a failure with a line.
      if err.code ~= "INTERRUPTED" then
        local cause = type(err.cause) == "table" and err.cause or err
        local expired = run.expired_note(err) or run.expired_note(cause)
        if expired then text = text .. "\n  expired: " .. expired end
        local snaps = M.snapshot_hint(err)
        if snaps then text = text .. "\n  " .. snaps end
        local url = M.base_url_for(cause.code and cause or err)
        if url then text = text .. "\n  base URL: " .. url end
        progress.message("error", "galley: " .. (where and (where .. ": ") or "") .. text, {
          code = err.code, msg = err.message ~= nil and tostring(err.message) or nil, where = where, hint = err.hint,
          base_url = url, detail = text })
      end
      if verbose and err.code ~= "RECIPE_USAGE" then io.stderr:write(failure.traceback:gsub("^\n", ""), "\n") end
      if err.code == "INTERRUPTED" then
        -- The pending signal decides when a layer re-wrapped the error without its number.
        local sig = err.signal or runtime.pending_signal()
        code = sig == 15 and 143 or 130
      elseif err.code == "RECIPE_USAGE" then
        code = M.EXIT_USAGE
      else
        code = M.EXIT_FAILED
      end
    end
  end
  return M.finish_run(code)
end

-- galley's own line on stderr (a JSON line with --json); level "error" unless said (-q keeps those).
local function say(msg, level, fields)
  local f = { msg = msg }
  for k, v in pairs(fields or {}) do f[k] = v end
  progress.message(level or "error", "galley: " .. msg, f)
end

--- When an instance's TTL ends, as people read it: "until 15:04 CET (2026-12-06T14:04:05Z)"
-- (the date too when it is not today), or "with no TTL (it runs until stopped)".
---@param at integer|false|nil Unix seconds
---@return string
function M.until_text(at)
  if not at then return "with no TTL (it runs until stopped)" end
  local today = os.date("%Y-%m-%d") == os.date("%Y-%m-%d", at)
  return ("until %s (%s)"):format(os.date(today and "%H:%M %Z" or "%Y-%m-%d %H:%M %Z", at),
    os.date("!%Y-%m-%dT%H:%M:%SZ", at))
end

-- What the cleanup is doing, for the line each counted Ctrl-C prints.
local function progress_text(p)
  if not p then return "cleaning up" end
  if p.phase == "hooks" then
    return ("cleaning up: running cleanup hook '%s'"):format(p.hook or "?")
  elseif p.phase == "instances" then
    return ("cleaning up: stopped %d of %d instance(s)"):format(p.stopped, p.total)
  elseif p.phase == "pending" then
    return ("cleaning up: stopped %d of %d instance(s), waiting for %d boot(s) cut off in flight"):format(p.stopped,
      p.total, p.waiting or 0)
  end
  return "cleaning up: checking that nothing is left"
end

-- A task that answers each Ctrl-C counted during the cleanup with its progress and how many more
-- presses abort it (the SIGNAL_ABORT_AT-th makes the signal pending: see galley.run.finish).
local function watch_cleanup(ctx)
  local task = require("galley.task")
  return task.spawn(function()
    local seen = 0
    while true do
      local n = runtime.deferred_signals()
      if n > seen and n < runtime.SIGNAL_ABORT_AT then
        seen = n
        local more = runtime.SIGNAL_ABORT_AT - n
        say(("%s; Ctrl-C %d more time%s aborts the cleanup"):format(progress_text(ctx.cleanup), more,
          more == 1 and "" or "s"))
      end
      task.sleep(50)
    end
  end)
end

-- After an aborted cleanup: every instance (and unkept snapshot) the run may have left, and the
-- command that collects them.
local function report_abort(ctx)
  local p = ctx.cleanup or { phase = "hooks", left = {} }
  local left, seen = {}, {}
  local function add(id)
    if not seen[id] then
      seen[id] = true
      left[#left + 1] = id
    end
  end
  if p.phase == "hooks" or ctx.script then
    -- not listed yet (or a script's, which are never stopped): whatever it booted
    for _, t in ipairs(ctx.instances) do add(t.id) end
  end
  local rest = {}
  for id in pairs(p.left or {}) do rest[#rest + 1] = id end
  table.sort(rest)
  for _, id in ipairs(rest) do add(id) end
  say(("cleanup aborted (%s)"):format(progress_text(p):gsub("^cleaning up: ", "")))
  for _, id in ipairs(left) do say("left instance " .. id .. "; stop it with: galley stop " .. id) end
  for _, snap in ipairs(ctx.snapshots or {}) do
    if not snap.keep then say("left snapshot " .. snap.id) end
  end
  if #left > 0 or #(ctx.snapshots or {}) > 0 or #(ctx.pending or {}) > 0 then
    say("to collect everything this run left, run: galley gc")
  end
  return left
end

--- Says what a finished run's report holds (kept instances until when, snapshots left or kept).
---@param report table from galley.run.finish
---@param why string why instances were kept ("--keep", "kept")
---@param who? string what made them (default "this run")
function M.say_kept(report, why, who)
  for _, id in ipairs(report.kept) do
    say(("kept instance %s (%s) %s; stop it with: galley stop %s"):format(id, why,
      M.until_text(report.kept_until and report.kept_until[id]), id), "info",
      { event = "kept", id = id, stop = "galley stop " .. id })
  end
  for _, id in ipairs(report.snapshots_kept or {}) do
    say(("kept snapshot %s (keep = true); `galley gc --include-kept` deletes it"):format(id), "info",
      { event = "kept_snapshot", id = id })
  end
  for _, id in ipairs(report.snapshots_left or {}) do
    say(("snapshot %s made by %s is left; `galley gc` deletes it (snapshot(id, {keep = true}) keeps one)")
      :format(id, who or "this run"), "warn", { event = "snapshot_left", id = id })
  end
end

--- Ends the active run: cleanup hooks, stop what it left, leak report. Ctrl-C is deferred
-- meanwhile: each press says the cleanup's progress; the third aborts it, naming every instance
-- left and the `galley gc` line to run (a fourth exits at once). Returns the final exit code.
---@param code integer the recipe's own exit code
---@return integer
function M.finish_run(code)
  local interrupted = code == 130 or code == 143
  local ctx = run.current()
  if not ctx then
    if interrupted then say("interrupted", "error", { code = "INTERRUPTED", exit_code = code }) end
    return code
  end
  runtime.clear_signal()
  runtime.defer_signals(true)
  local watcher = watch_cleanup(ctx)
  local ok, report = pcall(run.finish, { log = say, ctx = ctx })
  watcher:cancel()
  if not ok then
    -- Aborted (or the cleanup itself failed): name what may be left; signals stay deferred
    -- meanwhile, so one more Ctrl-C exits at once.
    if not errors.is(report, "INTERRUPTED") then say("the cleanup failed: " .. tostring(report)) end
    local left = report_abort(ctx)
    run.abandon(ctx)
    runtime.defer_signals(false)
    local final = errors.is(report, "INTERRUPTED") and (report.signal == 15 and 143 or 130)
      or (code == M.EXIT_OK and M.EXIT_FAILED or code)
    -- the history shows it too, with what it left (as leaks) and why
    run.record_history(ctx, { stopped = {}, kept = {}, leaks = left }, final,
      errors.is(report, "INTERRUPTED") and "aborted" or "failed")
    return final
  end
  runtime.defer_signals(false)
  for _, id in ipairs(report.stopped) do
    say("stopped instance " .. id .. " left by this run", "info", { event = "stopped", id = id })
  end
  M.say_kept(report, ctx.keep and "--keep" or "kept")
  if interrupted then
    say(("interrupted%s; cleaned up %d instance(s)"):format(code == 143 and " (SIGTERM)" or "", #report.stopped),
      "error", { code = "INTERRUPTED", exit_code = code, cleaned_up = #report.stopped })
  end
  if #report.leaks > 0 then
    say("RUN_LEAK: instances of this run are still there: " .. table.concat(report.leaks, ", ")
      .. "\n  hint: stop them with `galley gc` or your provider's console", "error",
      { code = "RUN_LEAK", msg = "instances of this run are still there", ids = report.leaks,
        hint = "stop them with `galley gc` or your provider's console" })
    if code == M.EXIT_OK then code = M.EXIT_FAILED end
  end
  if #report.hook_errors > 0 and code == M.EXIT_OK then code = M.EXIT_FAILED end
  run.record_history(ctx, report, code) -- what `galley dashboard` lists as finished runs
  return code
end

--- After `galley -e CODE` or `galley SCRIPT.lua` (main.c calls this): when it booted or
-- snapshotted anything (galley.run's script context), names each instance still live with its
-- TTL end and the exact `galley stop ID`, and the snapshots it made; the context's run file goes,
-- so `galley gc` collects them once this process is gone. Returns the exit code.
---@param code integer the script's own exit code
---@return integer
function M.finish_script(code)
  local ctx = run.script_context()
  if not ctx then return code end
  runtime.clear_signal()
  runtime.defer_signals(true)
  local watcher = watch_cleanup(ctx)
  local ok, report = pcall(run.finish, { log = say, ctx = ctx, stop_instances = false })
  watcher:cancel()
  if not ok then
    report_abort(ctx)
    run.abandon(ctx)
    runtime.defer_signals(false)
    return code
  end
  runtime.defer_signals(false)
  local live = {}
  for _, id in ipairs(report.leaks) do live[#live + 1] = id end
  local where = ctx.recipe == "-e" and "galley -e" or ctx.recipe
  for _, id in ipairs(live) do
    say(("instance %s booted by %s is still running %s; stop it with: galley stop %s"):format(id, where,
      M.until_text(report.until_of and report.until_of[id]), id))
  end
  M.say_kept(report, "kept", where)
  if #live > 0 or #report.snapshots_left > 0 then
    say("`galley gc` collects what this process left once it has exited")
  end
  return code
end

--- Loads and runs a recipe by path or name.
---@param name string
---@param args string[]
---@param ropts? {keep?: boolean, keep_seconds?: integer, ttl_seconds?: integer|false} run-level options
--- (`galley run --keep 4h --ttl 10m`)
---@return integer exit_code
function M.run(name, args, ropts)
  ropts = ropts or {}
  local env = M.new_env()
  local chunk, path_or_err, kind = M.load(name, env)
  if not chunk then
    progress.message("error", "galley: " .. errors.format(path_or_err), { code = path_or_err.code,
      msg = path_or_err.message, hint = path_or_err.hint })
    return M.EXIT_USAGE
  end
  if kind == "file" then
    -- A recipe file's own directory comes first on the module path: recipes can be split into
    -- files (`require("helper")` loads helper.lua beside it). Embedded recipes have none.
    local dir = path_or_err:match("^(.*)/[^/]*$") or "."
    if dir == "" then dir = "/" end
    package.path = ("%s/?.lua;%s/?/init.lua;%s"):format(dir, dir, package.path)
  end
  local argt = { [0] = path_or_err }
  for i, a in ipairs(args) do argt[i] = a end
  rawset(env, "arg", argt)
  local recipe_name = kind == "stdin" and "stdin" or (path_or_err:match("([^/]+)%.lua$") or path_or_err)
  local ok, err = pcall(run.begin, { recipe = recipe_name, keep = ropts.keep, keep_seconds = ropts.keep_seconds,
    ttl_seconds = ropts.ttl_seconds })
  if not ok then
    if errors.is(err, "INTERRUPTED") then return err.signal == 15 and 143 or 130 end -- nothing began yet
    io.stderr:write("galley: ", errors.format(err), "\n")
    return M.EXIT_FAILED
  end
  return M.call(chunk, path_or_err, args)
end

return M
