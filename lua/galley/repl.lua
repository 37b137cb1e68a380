--- galley.repl: the interactive prompt (`galley repl`).
-- Bare expressions print their values (tables pretty-printed, instances and snapshots one line
-- each); `=expr` works; incomplete input continues on the next line; `_` holds the last result;
-- history is saved; Tab completes globals and the fields and methods of live values; Ctrl-C
-- cancels the current line or call without leaving. `x = 1` defines a session variable (kept
-- in the session's own table, not in _G). Globals ready to use: `galley` (every
-- galley module, loaded on first use), `morph` (a Morph provider from MORPH_API_KEY /
-- MORPH_BASE_URL), `sandbox` (the local provider), `pretty`. On exit, instances booted during
-- the session that still exist are listed, with an offer to stop them.
local errors = require("galley.errors")
local paths = require("galley.paths")
local pretty = require("galley.pretty")
local run = require("galley.run")
local runner = require("galley.runner")
local runtime = require("galley.core.runtime")

local M = {}

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

--- A lazily loading view of the galley.* modules: `galley.providers.morph` requires on use.
local namespace

-- A module that is also a folder of modules (galley.providers: init.lua plus local.lua, morph.lua)
-- reaches its children too: galley.providers["local"], galley.providers.morph.
local function with_children(mod, name)
  if type(mod) ~= "table" or getmetatable(mod) ~= nil then return mod end
  local has = false
  for pre in pairs(package.preload) do
    if pre:sub(1, #name + 1) == name .. "." then has = true break end
  end
  if not has then return mod end
  return setmetatable(mod, { __index = function(_, k)
    if type(k) ~= "string" then return nil end
    local ok, sub = pcall(require, name .. "." .. k)
    if ok then return with_children(sub, name .. "." .. k) end
    return nil
  end, __galley_module = name })
end

function namespace(prefix)
  return setmetatable({}, {
    __index = function(self, k)
      local name = prefix .. "." .. k
      local ok, mod = pcall(require, name)
      if not ok then
        if type(mod) == "string" and not mod:find("module '" .. name .. "' not found", 1, true) then error(mod, 2) end
        mod = namespace(name) -- a folder of modules
      else
        mod = with_children(mod, name)
      end
      rawset(self, k, mod)
      return mod
    end,
    __tostring = function() return "<modules " .. prefix .. ".*>" end,
  })
end

local function module_children(prefix)
  local out = {}
  for name in pairs(package.preload) do
    local rest = name:sub(#prefix + 2)
    if name:sub(1, #prefix + 1) == prefix .. "." and rest ~= "" then out[rest:match("^[^.]+")] = true end
  end
  return out
end

--- Gives the instance records a provider returns methods (REPL conveniences): `inst:exec{...}`
-- (a CommandSpec, or a shell command string), `inst:stop()`, `inst:pause()`, `inst:resume()`,
-- `inst:snapshot(opts)`, `inst:read_file(path)`, `inst:write_file(path, content, opts)`,
-- `inst:refresh()`. The provider itself is changed in place and returned.
---@param provider table
---@return table provider
function M.with_methods(provider)
  local I = provider.instances
  local methods = {}
  local mt = { __index = methods }
  local function attach(inst)
    if type(inst) == "table" and inst.id and getmetatable(inst) == nil then setmetatable(inst, mt) end
    return inst
  end
  function methods.exec(self, spec, opts)
    if type(spec) == "string" then spec = { kind = "shell", script = spec } end
    return provider.exec(self.id, spec, opts)
  end
  function methods.stop(self) return I.stop(self.id) end
  function methods.terminate(self) return I.terminate(self.id) end
  function methods.pause(self) return attach(I.pause(self.id)) end
  function methods.resume(self) return attach(I.resume(self.id)) end
  function methods.snapshot(self, opts) return I.snapshot(self.id, opts) end
  function methods.refresh(self) return attach(I.get(self.id)) end
  function methods.read_file(self, path, opts) return provider.files.read_file(self.id, path, opts) end
  function methods.write_file(self, path, content, opts)
    return provider.files.write_file(self.id, path, content, opts)
  end
  for _, name in ipairs({ "boot", "get", "pause", "resume" }) do
    local f = I[name]
    if f then I[name] = function(...) return attach(f(...)) end end
  end
  for _, name in ipairs({ "list", "fork", "branch" }) do
    local f = I[name]
    if f then
      I[name] = function(...)
        local list = f(...)
        for _, inst in ipairs(type(list) == "table" and list or {}) do attach(inst) end
        return list
      end
    end
  end
  return provider
end

--- Builds the REPL's environment: a recipe environment plus conveniences.
---@return table env
function M.new_env()
  local env = runner.new_env()
  rawset(env, "galley", namespace("galley"))
  rawset(env, "pretty", pretty)
  local lazy = {
    morph = function() return M.with_methods(require("galley.providers.morph").new()) end,
    sandbox = function() return M.with_methods(require("galley.providers.local").new()) end,
  }
  local mt = getmetatable(env)
  local base_index = mt.__index
  mt.__index = function(t, k)
    local make = lazy[k]
    if make then
      local ok, v = pcall(make)
      if not ok then error(v, 2) end
      rawset(t, k, v)
      return v
    end
    return base_index[k]
  end
  mt.__lazy = lazy
  -- Unlike a recipe, the REPL lets `x = 1` define a session variable (each line is its own
  -- chunk, so locals do not outlive it); it lands in the session table, never in _G.
  mt.__newindex = rawset
  return env
end

local function keys_of(v, methods_only)
  local out, seen = {}, {}
  local function add(k, val)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] then
      if not methods_only or type(val) == "function" then
        seen[k] = true
        out[#out + 1] = k
      end
    end
  end
  local depth = 0
  while v ~= nil and depth < 5 do
    depth = depth + 1
    if type(v) == "table" then
      for k, val in pairs(v) do add(k, val) end
      local mt = getmetatable(v)
      if mt and mt.__lazy then
        for k in pairs(mt.__lazy) do add(k, function() end) end
      end
      if mt and type(mt.__index) == "table" then
        v = mt.__index
      else
        break
      end
    else
      local mt = getmetatable(v)
      v = mt and type(mt.__index) == "table" and mt.__index or nil
    end
  end
  return out
end

--- Completion candidates for `word` (e.g. "string.fo", "client:ins", "pri").
---@param env table
---@param word string
---@return string[]
function M.complete(env, word)
  local path, sep, partial = word:match("^(.*)([.:])([%w_]*)$")
  local candidates = {}
  if not path then
    partial = word
    for _, k in ipairs(keys_of(env)) do candidates[#candidates + 1] = k end
    for _, k in ipairs(keys_of(_G)) do candidates[#candidates + 1] = k end -- print, string, ...
    for _, k in ipairs(KEYWORDS) do candidates[#candidates + 1] = k end
  else
    local v = env
    -- `galley.providers["local"].` walks like `galley.providers.local.` would (a keyword field)
    for name in path:gsub('%["([%a_][%w_]*)"%]', ".%1"):gmatch("[^.]+") do
      if not name:match("^[%a_][%w_]*$") then return {} end
      local ok, nv = pcall(function() return v[name] end)
      if not ok or nv == nil then return {} end
      v = nv
    end
    local names = keys_of(v, sep == ":")
    if type(v) == "table" and getmetatable(v) and getmetatable(v).__tostring
      and tostring(v):match("^<modules ") then
      local prefix = tostring(v):match("^<modules (.-)%.%*>$")
      for k in pairs(module_children(prefix)) do names[#names + 1] = k end
    elseif type(v) == "table" and getmetatable(v) and getmetatable(v).__galley_module then
      for k in pairs(module_children(getmetatable(v).__galley_module)) do names[#names + 1] = k end
    end
    local keyword = {}
    for _, k in ipairs(KEYWORDS) do keyword[k] = true end
    for _, k in ipairs(names) do
      if k:sub(1, #partial) == partial then
        -- A field named like a keyword (galley.providers.local) is only reachable as ["local"].
        candidates[#candidates + 1] = (keyword[k] and sep == ".") and (path .. '["' .. k .. '"]') or (path .. sep .. k)
      end
    end
  end
  local out, seen = {}, {}
  local full_prefix = path and "" or partial
  for _, c in ipairs(candidates) do
    if c:sub(1, #full_prefix) == full_prefix and not seen[c] then
      seen[c] = true
      out[#out + 1] = c
    end
  end
  table.sort(out)
  return out
end

--- Compiles one input: `return <text>` first (so expressions print), then the text itself.
-- Returns chunk, or nil + "incomplete" when more lines are needed, or nil + error message.
---@param text string
---@param env table
---@return function|nil chunk, string|nil err
function M.compile(text, env)
  local src = text:gsub("^%s*=", "return ")
  local chunk = load("return " .. src, "=stdin", "t", env)
  if chunk then return chunk end
  local err
  chunk, err = load(src, "=stdin", "t", env)
  if chunk then return chunk end
  if err:match("<eof>$") then return nil, "incomplete" end
  return nil, err
end

local function history_path()
  return paths.history_file()
end


--- The form of a line the history keeps: recognisable secrets (API keys, OAuth tokens, values
-- registered with galley.log, `name=value` with a secret-sounding name) masked by galley.secrets.
---@param text string
---@return string
function M.history_entry(text)
  return require("galley.secrets").redact_text(text)
end

local function report_instances(out, tty, readline)
  runtime.clear_signal() -- a Ctrl-C typed at the prompt is not an abort of this report
  local items = run.tagged_instances()
  local snaps = {}
  for _, item in ipairs(run.tagged_snapshots()) do
    if (item.snapshot.metadata or {})[run.TAG_KEEP] ~= "1" then snaps[#snaps + 1] = item.snapshot end
  end
  if #items == 0 and #snaps == 0 then
    local report = run.finish({ stop_instances = false })
    for _, id in ipairs(report.snapshots_kept) do
      out:write(("kept snapshot %s (keep = true); `galley gc --include-kept` deletes it\n"):format(id))
    end
    return
  end
  if #items > 0 then
    out:write(("%d instance(s) booted in this session still exist:\n"):format(#items))
    for _, item in ipairs(items) do
      local id = item.instance.id
      out:write("  ", pretty.record_line(item.instance), "\n    ",
        require("galley.runner").until_text(run.ttl_end(item.instance)), "; stop it with: galley stop ", id, "\n")
    end
  end
  if #snaps > 0 then
    out:write(("%d snapshot(s) made in this session (keep = true keeps one):\n"):format(#snaps))
    for _, snap in ipairs(snaps) do out:write("  ", snap.id, "\n") end
  end
  local answer = "n"
  local question = #items > 0 and #snaps > 0 and "Stop the instances and delete the snapshots now? [y/N] "
    or #items > 0 and "Stop them now? [y/N] " or "Delete them now? [y/N] "
  if tty then answer = readline(question) or "n" end
  if answer:match("^%s*[yY]") then
    local report = run.finish({ delete_snapshots = true })
    if #items > 0 then out:write(("stopped %d instance(s)\n"):format(#report.stopped)) end
    if #snaps > 0 then out:write(("deleted %d snapshot(s)\n"):format(#report.snapshots_deleted)) end
  else
    run.finish({ stop_instances = false })
    out:write("left as they are: instances stop when their TTL runs out; `galley gc` collects them (and the "
      .. "snapshots) once this session has exited\n")
  end
end

--- Words the REPL takes as commands when typed alone on a line (not Lua).
M.COMMANDS = { exit = "exit", quit = "exit", ["exit()"] = "exit", ["quit()"] = "exit", help = "help",
  ["help()"] = "help", ["?"] = "help" }

M.HELP = [[galley REPL: type Lua; bare expressions print their values (`=expr` too), `_` is the last one.
  galley     every galley module (galley.providers, galley.recipe, galley.errors, ...)
  sandbox    the local provider: inst = sandbox.instances.boot(); inst:exec("uname -a"); inst:stop()
  morph      a Morph provider (MORPH_API_KEY, MORPH_BASE_URL): morph.instances.boot("snapshot_galleydev")
  pretty     pretty.format(v)
Tab completes names and fields; Ctrl-C cancels the line or call; exit, quit or Ctrl-D leaves
(instances booted here are listed then). More: docs/repl.md]]

--- Runs the REPL until end of input; returns an exit code.
---@param opts? {input?: file*, output?: file*}
---@return integer
function M.run(opts)
  opts = opts or {}
  local env = M.new_env()
  local tty = runtime.isatty(0) and not opts.input
  local line = tty and require("galley.core.line") or nil
  local input = opts.input or io.stdin
  local out = opts.output or io.stdout
  local hist
  local began, begin_err = pcall(function()
    hist = history_path()
    -- The history holds whatever was typed (tokens too): a directory of this user's alone.
    if tty then paths.private_dir(hist:match("^(.*)/[^/]*$")) end
    run.begin({ recipe = "repl" })
  end)
  if not began then
    if errors.is(begin_err, "INTERRUPTED") then return begin_err.signal == 15 and 143 or 130 end
    io.stderr:write("galley: ", errors.format(begin_err), "\n")
    return 1
  end
  local function readline(prompt)
    if tty then return line.readline(prompt) end
    return input:read("l")
  end
  if tty then
    line.load_history(hist)
    line.set_completer(function(word) return M.complete(env, word) end)
    out:write(("galley %s (%s) - Tab completes, Ctrl-C cancels, Ctrl-D leaves\n"):format(
      runtime.versions().galley, _VERSION))
  end
  local buffer
  -- os.exit() on a line ends the session like Ctrl-D, so the exit report below still runs (and
  -- asks about the instances still running) before galley exits with that code.
  local exit_code
  local real_exit = os.exit
  os.exit = function(code) -- luacheck: ignore 122
    error(setmetatable({ code = "REPL_EXIT", message = "os.exit",
      exit_code = require("galley.runner").exit_code(code) }, errors.metatable), 0)
  end
  while true do
    local text, why = readline(buffer and ">> " or "> ")
    if why == "interrupted" then
      buffer = nil
      out:write("^C\n")
      goto continue
    end
    if not text then break end
    if not buffer and M.COMMANDS[text:match("^%s*(.-)%s*$")] then
      local word = M.COMMANDS[text:match("^%s*(.-)%s*$")]
      if word == "exit" then break end
      out:write(M.HELP, "\n")
      goto continue
    end
    buffer = buffer and (buffer .. "\n" .. text) or text
    do
      local chunk, err = M.compile(buffer, env)
      if err == "incomplete" then goto continue end
      if tty and buffer:match("%S") then line.add_history(M.history_entry(buffer)) end
      buffer = nil
      if not chunk then
        io.stderr:write(err, "\n")
        goto continue
      end
      local res = table.pack(xpcall(chunk, function(e)
        if errors.is(e, "REPL_EXIT") then return e end
        if errors.is(e) then return errors.format(e) end
        return debug.traceback(tostring(e), 2)
      end))
      runtime.clear_signal()
      if not res[1] and errors.is(res[2], "REPL_EXIT") then
        exit_code = res[2].exit_code
        break
      elseif not res[1] then
        io.stderr:write(tostring(res[2]), "\n")
      elseif res.n > 1 then
        local parts = {}
        for i = 2, res.n do parts[#parts + 1] = pretty.format(res[i]) end
        out:write(table.concat(parts, "\t"), "\n")
        rawset(env, "_", res[2])
      end
    end
    ::continue::
  end
  if tty then
    out:write("\n")
    -- libedit truncates and rewrites the file in place: write a temporary one and rename it, so
    -- a reader (or a second REPL starting) never sees a half-written history.
    local tmp = ("%s.%d.tmp"):format(hist, runtime.getpid())
    if line.save_history(tmp) then
      os.rename(tmp, hist)
    else
      os.remove(tmp)
    end
  end
  os.exit = real_exit -- luacheck: ignore 122
  -- The exit report is not a value: it goes to stderr (stdout carries values only).
  report_instances(opts.output or io.stderr, tty, readline)
  return exit_code or 0
end

return M
