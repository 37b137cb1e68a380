--- galley logs: the output of a PM2 process or tmux session in an instance; -f follows it.
local errors = require("galley.errors")
local shared = require("galley.commands.shared")

local M = {
  summary = "a PM2 or tmux session's output: galley logs [-f] ID NAME",
  usage = "galley logs [-f] [-n LINES] [--manager pm2|tmux] [--raw] ID NAME",
  help = "Prints the last lines of NAME's output: a PM2 process (out on stdout, err on stderr) or a tmux\n"
    .. "session (its pane). -f follows it until it exits (galley.orchestrator follow; PM2 logs are read\n"
    .. "by byte offset, so nothing is shown twice). NAME is looked for under PM2 first, then tmux\n"
    .. "(--manager picks one). --json prints {manager, name, out, err} (with -f: JSON lines\n"
    .. "{stream, line}, then {status, exit_code}). What the process wrote is shown with its colours but\n"
    .. "not its other control characters (ESC, BEL, ... in caret notation: an agent's output cannot\n"
    .. "drive your terminal); --raw writes its bytes as they are.",
}

function M.configure(p)
  p:flag("-f --follow", "follow the output until the process exits")
  p:option("-n --lines", "how many lines to print first", "100"):convert(math.tointeger)
  p:option("--manager", "pm2 or tmux (default: whichever has NAME)"):choices({ "pm2", "tmux" })
  p:flag("--raw", "write the output's bytes as they are (control characters included)")
  p:argument("instance_id", "the instance")
  p:argument("name", "the PM2 process or tmux session")
end

local function has(pm, id, name)
  local ok, list = pcall(pm.list, id)
  if not ok then
    if errors.is(list, "NOT_FOUND") and (list.operation or ""):find("^instances%.") then error(list, 0) end
    return false, {}
  end
  local names = {}
  for _, item in ipairs(list) do
    if item.name == name then return true, names end
    names[#names + 1] = item.name
  end
  return false, names
end

--- The process manager that runs `name` on `id` (pm2 first, then tmux), or raises NOT_FOUND.
function M.manager(provider, id, name, which)
  local pm2 = require("galley.process.pm2").new({ provider = provider })
  local tmux = require("galley.process.tmux").new({ provider = provider })
  if which == "pm2" then return pm2, "pm2" end
  if which == "tmux" then return tmux, "tmux" end
  provider.instances.get(id) -- NOT_FOUND for the instance first
  local found, pnames = has(pm2, id, name)
  if found then return pm2, "pm2" end
  local tfound, tnames = has(tmux, id, name)
  if tfound then return tmux, "tmux" end
  local all = {}
  for _, n in ipairs(pnames) do all[#all + 1] = n .. " (pm2)" end
  for _, n in ipairs(tnames) do all[#all + 1] = n .. " (tmux)" end
  errors.raise("NOT_FOUND", ("no PM2 process or tmux session %s on %s"):format(name, id), {
    hint = #all > 0 and ("there are: " .. table.concat(all, ", ")) or "nothing runs under PM2 or tmux there",
  })
end

function M.run(args)
  local res, code = shared.parse(shared.parser("logs", M.summary, M), args)
  if not res then return code end
  if not res.lines or res.lines < 1 then
    io.stderr:write("galley logs: --lines must be a positive integer\n")
    return shared.EXIT_USAGE
  end
  local util = require("galley.util")
  local function shown(text) return res.raw and text or util.visible(text, true) end
  return shared.with_provider("logs", res, function(provider)
    local pm, which = M.manager(provider, res.instance_id, res.name, res.manager)
    if not res.follow then
      local l = pm.logs(res.instance_id, res.name, res.lines)
      if res.json then
        shared.json({ manager = which, name = res.name, out = l.out, err = l.err })
      else
        io.stdout:write(shown(l.out))
        io.stderr:write(shown(l.err))
      end
      return 0
    end
    local orch = require("galley.orchestrator").new({ provider = provider, process_manager = pm,
      log = require("galley.log").new({ level = "error" }) })
    local json = require("galley.json")
    local r = orch.follow(res.instance_id, res.name, { lines = res.lines, on_line = function(line, stream)
      if res.json then
        io.stdout:write(json.encode({ stream = stream, line = line }), "\n")
      elseif stream == "err" then
        io.stderr:write(shown(line), "\n")
      else
        io.stdout:write(shown(line), "\n")
      end
      io.stdout:flush()
    end })
    if res.json then shared.json({ status = r.status, exit_code = r.exit_code, lines = r.lines }) end
    return 0
  end)
end

return M
