--- galley exec: runs a command in an instance; its stdout/stderr pass through, its exit code is ours.
local shared = require("galley.commands.shared")

local M = {
  summary = "run a command in an instance: galley exec ID -- CMD [ARGS...]",
  usage = "galley exec [--stream] ID -- CMD [ARGS...]",
  help = "Runs CMD with ARGS in the instance (an argv: no shell, no globbing) and exits with its exit\n"
    .. "code; its stdout and stderr go to ours. One CMD word containing spaces runs as a bash script\n"
    .. "(`galley exec ID 'cd /tmp && ls'`). --stream passes output on as it arrives instead of at the\n"
    .. "end. --json prints {exit_code, stdout, stderr} instead. Exit 1 (with the error) when the command\n"
    .. "could not be run at all (no such instance, paused instance).",
}

function M.configure(p)
  p:flag("--stream", "pass output on as it arrives")
  p:option("--cwd", "working directory in the instance (default: ~)")
  p:argument("instance_id", "the instance")
  p:argument("command", "the command and its arguments (after --)"):args("+")
end

local function spec_of(res)
  local cmd = res.command
  if #cmd == 1 and cmd[1]:find("%s") then return { kind = "shell", script = cmd[1], cwd = res.cwd } end
  return { kind = "argv", command = cmd[1], args = { table.unpack(cmd, 2) }, cwd = res.cwd }
end

-- Streams through the provider: Morph's exec streams (SSE); the local provider spawns.
local function stream(provider, id, spec)
  local function out(s) io.stdout:write(s) io.stdout:flush() end
  local function err(s) io.stderr:write(s) io.stderr:flush() end
  if provider.capabilities and provider.capabilities.exec_stream then
    local r = provider.exec(id, spec, { on_stdout = out, on_stderr = err })
    return r.exit_code
  end
  if spec.kind ~= "argv" or not provider.spawn then
    local r = provider.exec(id, spec)
    out(r.stdout or "")
    err(r.stderr or "")
    return r.exit_code
  end
  local h = provider.spawn(id, spec)
  local ok, code = pcall(function()
    while true do
      local kind, data, extra = h:read(1000)
      if kind == "stdout" then
        out(data)
      elseif kind == "stderr" then
        err(data)
      elseif kind == "exit" then
        if math.tointeger(extra) and extra > 0 then return 128 + extra end -- killed by a signal
        return math.tointeger(data) or 1
      end
    end
  end)
  if not ok then
    pcall(h.kill, h, "KILL")
    pcall(h.close, h)
    error(code, 0)
  end
  pcall(h.close, h)
  return code
end

function M.run(args)
  local res, code = shared.parse(shared.parser("exec", M.summary, M), args)
  if not res then return code end
  return shared.with_provider("exec", res, function(provider)
    local spec = spec_of(res)
    if res.stream and not res.json then
      local c = stream(provider, res.instance_id, spec)
      return math.tointeger(c) or 1
    end
    local r = provider.exec(res.instance_id, spec)
    if res.json then
      shared.json({ exit_code = r.exit_code, stdout = r.stdout, stderr = r.stderr, truncated = r.truncated })
    else
      io.stdout:write(r.stdout or "")
      io.stderr:write(r.stderr or "")
    end
    return math.tointeger(r.exit_code) or 1
  end)
end

return M
