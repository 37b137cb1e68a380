--- support.claude_cli: which `claude` the agent specs run.
-- By default the REAL Claude Code CLI (npm @anthropic-ai/claude-code, installed by scripts/setup),
-- talking to the loopback FAKE of the Anthropic API (support.fake_anthropic). Only when the CLI
-- is not on PATH, or does not start, do specs fall back to the stand-in script
-- tests/lua/fixtures/fake-claude, and say so loudly on stderr. GALLEY_TEST_CLAUDE=stand-in forces
-- the stand-in (to exercise that path).
--
--   local cli = require("support.claude_cli")
--   if cli.real() then ... cli.path, cli.version ... else cli.warn("claude_pm2_spec") ... end
--   cli.leaks(secret, {pm2_home = ...})  -> {"ps", "pm2 jlist", ...}: where a secret shows
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

--- Where `secret` shows on this machine: "ps" (any process's argv), "environ" (any process's
-- environment, except those listed in opts.skip_pids), the files in opts.files, "pm2 jlist"
-- (with opts.pm2_env: the environment to run `pm2 jlist` in).
---@param secret string
---@param opts? {files?: string[], pm2_env?: table<string, string>}
---@return string[]
function M.leaks(secret, opts)
  opts = opts or {}
  local out = {}
  local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
  end
  local r = assert(proc.run({ argv = { "ls", "/proc" } }))
  for pid in r.stdout:gmatch("%d+") do
    local cmdline = read("/proc/" .. pid .. "/cmdline")
    if cmdline and cmdline:find(secret, 1, true) then
      out[#out + 1] = "ps"
      break
    end
  end
  for _, path in ipairs(opts.files or {}) do
    local s = read(path)
    if s and s:find(secret, 1, true) then out[#out + 1] = path end
  end
  if opts.pm2_env then
    local j = assert(proc.run({ argv = { "pm2", "jlist" }, env = opts.pm2_env, env_mode = "replace",
      timeout_ms = 60000 }))
    if (j.stdout .. j.stderr):find(secret, 1, true) then out[#out + 1] = "pm2 jlist" end
  end
  return out
end

return M
