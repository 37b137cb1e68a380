--- galley.commands.shared: what the instance and snapshot commands (ls, exec, boot, ...) share.
-- Each command declares its arguments on a lua-argparse parser made here (the same parsers give
-- `galley completion`), picks its provider like recipes do and prints errors one way.
local argparse = require("argparse")
local errors = require("galley.errors")
local runtime = require("galley.core.runtime")
local util = require("galley.util")

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = 0, 1, 2

--- A parser for `galley NAME` with the options every command takes: --provider, --json and the
-- global -v/-q (accepted after the command too).
---@param name string
---@param description string
---@return table parser (lua-argparse)
function M.parser(name, description, mod)
  local p = argparse("galley " .. name, description):add_help(false)
  p._galley_module = mod
  M.common_options(p)
  if mod and mod.configure then mod.configure(p) end
  return p
end

--- Adds --provider, --json, -v, -q and -h to an argparse parser or command.
---@param p table
function M.common_options(p)
  p:option("--provider", "local, morph or proxmox (default: morph when MORPH_API_KEY is set, else local)")
    :choices({ "local", "morph", "proxmox" })
  p:flag("--json", "print data only, as JSON")
  p:flag("-v --verbose", "more output; tracebacks on failure"):count("*")
  p:flag("-q --quiet", "only errors")
  p:flag("-h --help", "show this help")
end

--- The help text of a command: argparse's usage and options, then the module's own help.
---@param p table
---@param mod? table
---@return string
function M.help(p, mod)
  local text = p:get_help()
  if mod and mod.help then text = text .. "\n\n" .. mod.help end
  return text
end

--- Parses `args` with `p`. Returns the result table, or nil and the exit code (help printed: 0,
-- usage error printed: 2). Global flags given after the command apply as if given before it.
---@param p table
---@param args string[]
---@return table|nil result
---@return integer|nil code
function M.parse(p, args)
  local ok, res = p:pparse(args)
  if not ok then
    local msg = tostring(res)
    local opt = msg:match("unknown option '([^']+)'")
    local hint = "see `" .. p._name .. " --help`"
    if opt and not msg:find("Did you mean", 1, true) then
      local names = {}
      for _, o in ipairs(p._options) do
        for _, alias in ipairs(o._aliases) do names[#names + 1] = alias end
      end
      hint = (util.did_you_mean(opt, names) or "") .. " " .. hint
    end
    io.stderr:write(p._name, ": ", (msg:gsub("\n", " ")), "\n  hint: ", util.trim(hint), "\n")
    return nil, M.EXIT_USAGE
  end
  if res.help then
    io.stdout:write(M.help(p, p._galley_module), "\n")
    return nil, M.EXIT_OK
  end
  local o = runtime.options()
  if res.json then o.json = 1 end
  if (res.verbose or 0) > 0 then o.verbose = (o.verbose or 0) + res.verbose end
  if res.quiet then o.quiet = 1 end
  res.json = (o.json or 0) > 0
  return res
end

--- The provider the command works on: --provider, else morph with MORPH_API_KEY, else local.
-- MORPH_BASE_URL without a key is said (a likely mistake), not silently ignored.
---@param name? "local"|"morph"
---@return table provider
function M.provider(name)
  if not name and (os.getenv("MORPH_BASE_URL") or "") ~= "" and (os.getenv("MORPH_API_KEY") or "") == "" then
    require("galley.progress").warn("galley: warning: MORPH_BASE_URL is set but MORPH_API_KEY is not: using the "
      .. "local provider\n  hint: export MORPH_API_KEY too (`galley emulate` prints both), or pass --provider local",
      { msg = "MORPH_BASE_URL is set but MORPH_API_KEY is not: using the local provider",
        hint = "export MORPH_API_KEY too (`galley emulate` prints both), or pass --provider local" })
  end
  local level = (runtime.options().verbose or 0) > 0 and "debug" or "error"
  local log = require("galley.log").new({ level = level, prefix = name or "provider" })
  return (require("galley.providers").default(name, { log = log }))
end

--- The base URL a Morph provider talks to (for error messages), or nil for other providers.
---@param provider table
---@return string|nil
function M.base_url(provider)
  if provider.name ~= "morph" then return nil end
  local u = os.getenv("MORPH_BASE_URL")
  return (u and u ~= "") and u or "https://cloud.morph.so/api"
end

local NETWORK = { AUTHENTICATION_ERROR = true, NETWORK_ERROR = true, HTTP_CONNECT = true, HTTP_TIMEOUT = true,
  TIMEOUT = true, PROTOCOL_ERROR = true, SERVER_ERROR = true }

--- Prints an error the way every command does ("galley NAME: CODE: message", context, hint; the
-- base URL for network and auth errors; a traceback under -v) and returns the exit code.
---@param cmd string
---@param err any
---@param provider? table
---@return integer
function M.fail(cmd, err, provider)
  if errors.is(err, "INTERRUPTED") then
    io.stderr:write("galley ", cmd, ": interrupted\n")
    return err.signal == 15 and 143 or 130
  end
  if type(err) == "table" and err.code and getmetatable(err) == nil then setmetatable(err, errors.metatable) end
  local url = provider and M.base_url(provider)
  local progress = require("galley.progress")
  if progress.json() then
    -- --json: the error is one JSON line on stderr too (stdout keeps the data only).
    local e = type(err) == "table" and err or {}
    progress.message("error", "galley " .. cmd .. ": " .. errors.format(err), { command = cmd,
      code = e.code or "ERROR", msg = e.message ~= nil and tostring(e.message) or tostring(err), hint = e.hint,
      resource = e.resource, base_url = (url and NETWORK[e.code]) and url or e.base_url,
      suggested_base_url = e.suggested_base_url })
    return M.EXIT_FAILED
  end
  io.stderr:write("galley ", cmd, ": ", errors.format(err), "\n")
  if url and type(err) == "table" and NETWORK[err.code] then
    io.stderr:write("  base URL: ", url, "\n")
    if err.code == "AUTHENTICATION_ERROR" then
      io.stderr:write("  hint: check MORPH_API_KEY (it must be the key of that service)\n")
    end
  end
  if (runtime.options().verbose or 0) > 0 and type(err) == "table" and err.traceback then
    io.stderr:write(err.traceback, "\n")
  end
  return M.EXIT_FAILED
end

--- Runs fn(provider) with the command's provider; errors are printed with M.fail.
---@param cmd string
---@param res table parsed arguments (res.provider)
---@param fn fun(provider: table): integer|nil
---@return integer
function M.with_provider(cmd, res, fn)
  local provider
  local ok, code = xpcall(function()
    provider = M.provider(res.provider)
    -- cleanups deferred outside a run (a write's temporary file after Ctrl-C) run as it ends
    return require("galley.tracker").scope(fn, provider)
  end, function(e)
    if type(e) == "table" then
      if (runtime.options().verbose or 0) > 0 then e.traceback = debug.traceback("", 2) end
      return e
    end
    return errors.new("INTERNAL_ERROR", tostring(e), { traceback = debug.traceback("", 2) })
  end)
  if provider and provider.close then pcall(provider.close) end
  if not ok then
    if type(code) == "table" and code.code == "NOT_FOUND" and res.instance_id then
      code.hint = code.hint or "see `galley ls --all` for the instances that exist (one stopped by its TTL is gone)"
    end
    return M.fail(cmd, code, provider)
  end
  return code or M.EXIT_OK
end

--- Prints a value as one JSON document on stdout.
---@param v any
function M.json(v)
  io.stdout:write(require("galley.json").encode(v), "\n")
end

--- Prints rows as aligned columns (the first row is the header).
---@param rows string[][]
function M.table(rows)
  local widths = {}
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i] or 0, utf8.len(c) or #c) end
  end
  for _, r in ipairs(rows) do
    local cells = {}
    for i, c in ipairs(r) do
      cells[i] = i == #r and c or (c .. string.rep(" ", widths[i] - (utf8.len(c) or #c)))
    end
    io.stdout:write((table.concat(cells, "  "):gsub("%s+$", "")), "\n")
  end
end

--- "3m" for a Unix time in the past (age), "-" when unknown.
---@param t? number
---@return string
function M.age(t)
  if type(t) ~= "number" or t <= 0 then return "-" end
  return util.format_duration(math.max(0, os.time() - t))
end

--- A duration option's value in seconds (usage error text when bad).
---@param raw string|nil
---@param name string
---@return integer|nil seconds
function M.duration(raw, name)
  if raw == nil then return nil end
  local secs, why = util.parse_duration(raw)
  if not secs then
    io.stderr:write("galley: --", name, ": ", why, "\n")
    return nil
  end
  return secs
end

return M
