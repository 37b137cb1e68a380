--- agents.headless_cli: what the codex and gemini agent specs share: the real CLI from npm (when
-- installed: scripts/setup), a host-provider instance (a scratch HOME on this machine) with a
-- credential profile installed by galley.credentials, and the agent's ProcessSpec run there.
local credentials = require("galley.credentials")
local host = require("support.host_provider")
local logmod = require("galley.log")
local proc = require("galley.core.proc")

local M = {}

--- Prompt text with everything a shell could mangle (valid UTF-8: the APIs carry JSON text).
M.NASTY = "-p 'single' \"double\" $HOME ${X:-y} $(echo no) `echo no` \\n \\ \n\ttab\r\n"
  .. "ünïcödé 日本語 🚀 %s %% !! \n\nend 'q'\n"

--- The CLI's path when it is installed and starts (`<bin> --version` in a scratch HOME), else nil.
function M.real(bin)
  local path = proc.which(bin)
  if not path then return nil end
  local tmp = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-cli-probe.XXXXXX" } })).stdout:gsub("%s+$", "")
  local r = proc.run({ argv = { path, "--version" }, env = { PATH = os.getenv("PATH"), HOME = tmp },
    env_mode = "replace", timeout_ms = 60000, cwd = tmp })
  proc.run({ argv = { "rm", "-rf", "--", tmp } })
  if r and r.exit_code == 0 then return path end
  io.stderr:write(("\n*** WARNING: the real %s CLI is not installed here (run scripts/setup); its specs are "
    .. "pending.\n\n"):format(bin))
  return nil
end

--- Runs `argv` in a scratch HOME (so nothing lands in the machine's home).
function M.run_scratch(argv)
  local tmp = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-cli.XXXXXX" } })).stdout:gsub("%s+$", "")
  local r = assert(proc.run({ argv = argv, env = { PATH = os.getenv("PATH"), HOME = tmp, NO_COLOR = "1" },
    env_mode = "replace", timeout_ms = 60000, cwd = tmp }))
  proc.run({ argv = { "rm", "-rf", "--", tmp } })
  return r
end

--- A host instance with `~/work`, and a function installing a profile there.
function M.instance()
  local p = host.new()
  local inst = p.instances.boot()
  p.exec(inst.id, { kind = "argv", command = "mkdir", args = { "-p", inst.home .. "/work" } })
  local installer = credentials.new({ provider = p, log = logmod.silent() })
  return p, inst, function(profile) return installer.install(inst.id, profile) end
end

--- Runs a ProcessSpec on the instance as a process manager does: files first, then the script.
function M.run_spec(p, inst, spec, env)
  for _, f in ipairs(spec.files or {}) do
    p.files.write_file_atomic(inst.id, f.path, f.content, { mode = f.mode, create_dirs = true })
  end
  local all = {}
  for k, v in pairs(env or {}) do all[k] = v end
  for k, v in pairs(spec.command.env or {}) do all[k] = v end
  return p.exec(inst.id, { kind = "shell", script = spec.command.script, cwd = spec.command.cwd,
    env = next(all) and all or nil })
end

--- The long flags on the script's CLI line (the one the prompt is piped or redirected into).
function M.flags_of(script)
  local flags = {}
  local line = script:match("[^\n]*base64 %-d | ([^\n]*)") or script:match("\n([^\n]* < [^\n]*)\n?$") or ""
  for flag in (" " .. line):gmatch("%s'?(%-%-[%w%-]+)") do flags[#flags + 1] = flag end
  return flags
end

return M
