--- The command-line life of an emulator (`galley emulate`, `galley emulate proxmox`): a
-- temporary state directory where none was given (removed at the end, after Ctrl-C too), start,
-- announce, serve until Ctrl-C, SIGTERM or a shutdown request, stop.
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local M = {}

---@class galley.EmulatorCliRun
---@field name string the command, for messages ("galley emulate")
---@field temp_prefix string the temporary state directory's name before its random part
---@field new fun(opts: table): (table|nil, any) makes the emulator (start, wait, stop)
---@field announce fun(emu: table, port: integer, opts: table) says where it listens

--- Runs the emulator `how` makes from the parsed `opts` (opts.state_dir and opts.verbose are
--- set here); returns the exit code.
---@param opts table
---@param how galley.EmulatorCliRun
---@return integer
function M.run(opts, how)
  local function fail(err)
    io.stderr:write(how.name, ": ", tostring(err), "\n")
    return 1
  end
  local temp_dir
  if not opts.state_dir then
    local r, err = proc.run({ argv = { "mktemp", "-d", "-t", how.temp_prefix .. ".XXXXXX" }, timeout_ms = 10000 })
    if not r or r.exit_code ~= 0 then return fail(err or r.stderr) end
    temp_dir = r.stdout:gsub("%s+$", "")
    opts.state_dir = temp_dir
  end
  opts.verbose = (runtime.options().verbose or 0) > 0
  local function cleanup()
    runtime.clear_signal() -- a pending Ctrl-C would cut the removal short
    if temp_dir then proc.run({ argv = { "rm", "-rf", "--", temp_dir }, timeout_ms = 60000 }) end
  end

  local emu, err = how.new(opts)
  if not emu then
    cleanup()
    return fail(err)
  end
  local port
  port, err = emu:start()
  if not port then
    pcall(emu.stop, emu)
    cleanup()
    return fail(err)
  end
  how.announce(emu, port, opts)
  -- Ctrl-C raises INTERRUPTED through the signal hook, or ends the sleep: both stop the loop.
  pcall(emu.wait, emu)
  runtime.clear_signal()
  emu:stop()
  cleanup()
  return 0
end

return M
