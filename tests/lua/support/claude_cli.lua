--- support.claude_cli: which `claude` the agent specs run.
-- By default the REAL Claude Code CLI (npm @anthropic-ai/claude-code, installed by scripts/setup),
-- talking to the loopback FAKE of the Anthropic API (support.fake_anthropic). Only when the CLI
-- is not on PATH, or does not start, do specs fall back to the stand-in script
-- tests/lua/fixtures/fake-claude, and say so loudly on stderr. GALLEY_TEST_CLAUDE=stand-in forces
-- the stand-in (to exercise that path).
--
--   local cli = require("support.claude_cli")
--   if cli.real() then ... cli.path, cli.version ... else cli.warn("claude_pm2_spec") ... end
--   cli.leaks(secret)   -> {"ps"} when some process's argv holds the secret, else {}
local proc = require("galley.core.proc")

local M = {}

local checked, real

--- Whether the real CLI is there and starts (`claude --version` in a scratch HOME).
---@return boolean
function M.real()
  if checked then return real end
  checked, real = true, false
  if os.getenv("GALLEY_TEST_CLAUDE") == "stand-in" then return false end
  local path = proc.which("claude")
  if not path then return false end
  local tmp = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-claude-probe.XXXXXX" } })).stdout:gsub("%s+$", "")
  local r = proc.run({ argv = { path, "--version" }, env = { PATH = os.getenv("PATH"), HOME = tmp,
    DISABLE_AUTOUPDATER = "1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1" }, env_mode = "replace",
    timeout_ms = 60000 })
  proc.run({ argv = { "rm", "-rf", "--", tmp } })
  if r and r.exit_code == 0 and r.stdout:find("Claude Code", 1, true) then
    real = true
    M.path = path
    M.version = r.stdout:match("^%s*(%S+)")
  end
  return real
end

--- Prints the loud warning a spec gives when it falls back to the stand-in.
---@param who string the spec
function M.warn(who)
  io.stderr:write(("\n*** WARNING (%s): the real Claude Code CLI is not installed here (run scripts/setup);\n"
    .. "*** these specs run the STAND-IN tests/lua/fixtures/fake-claude instead of the real `claude`.\n\n")
    :format(who))
end

--- Where `secret` shows in this machine's process table: {"ps"} when any process's argv
-- (/proc/*/cmdline, what `ps` prints) holds it, else {}.
---@param secret string
---@return string[]
function M.leaks(secret)
  local r = assert(proc.run({ argv = { "ls", "/proc" } }))
  for pid in r.stdout:gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/cmdline", "rb")
    local cmdline = f and f:read("a")
    if f then f:close() end
    if cmdline and cmdline:find(secret, 1, true) then return { "ps" } end
  end
  return {}
end

return M
