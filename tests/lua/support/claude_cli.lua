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
--   cli.home_files(api) -> the ~/.profile and ~/.local/bin/claude wrapper that point claude at the FAKE
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


-- The instance-side wrapper installed as ~/.local/bin/claude: runs @CLAUDE@ (the real CLI or the
-- stand-in), then reports whether the installed token is in any process's argv, in the
-- environment of any process of the instance, or in pm2 jlist; with the stand-in, also what
-- arrived. Specs assert on its "token in ...: no" lines.
local WRAPPER = [=[#!/bin/bash
export FAKE_CLAUDE_DIR=$HOME/.fake-claude
mkdir -p "$FAKE_CLAUDE_DIR"
@CLAUDE@ "$@"
rc=$?
if [ -f "$FAKE_CLAUDE_DIR/argv" ]; then
  echo "argv: $(tr '\0' ' ' < "$FAKE_CLAUDE_DIR/argv")"
  echo "prompt received: $(cat "$FAKE_CLAUDE_DIR/stdin")"
fi
python3 - <<'EOF'
import glob, hashlib, json, os, subprocess
path = os.path.expanduser("~/.claude/.credentials.json")
if os.path.exists(path):
    tok = json.load(open(path))["claudeAiOauth"]["accessToken"].encode()
    print("token source: credentials file")
else:
    helper = json.load(open(os.path.expanduser("~/.claude/settings.json")))["apiKeyHelper"]
    tok = subprocess.run(["bash", "-c", helper], capture_output=True).stdout
    path = os.path.expanduser("~/.claude/anthropic-api-key")
    print("token source: apiKeyHelper")
mine = open("/proc/self/cgroup").read()
argv = env = False
for p in glob.glob("/proc/[0-9]*"):
    try:
        if tok in open(p + "/cmdline", "rb").read(): argv = True
        if open(p + "/cgroup").read() == mine and tok in open(p + "/environ", "rb").read(): env = True
    except OSError:
        pass
jlist = subprocess.run(["pm2", "jlist"], capture_output=True).stdout
print("token sha256:", hashlib.sha256(tok).hexdigest())
print("credentials mode: %o" % (os.stat(path).st_mode & 0o777))
print("token in argv:", "yes" if argv else "no")
print("token in instance environments:", "yes" if env else "no")
print("token in pm2 jlist:", "yes" if tok in jlist else "no")
EOF
exit $rc
]=]

--- The files of an instance home that runs claude against the FAKE API `api`
--- (support.fake_anthropic): ~/.profile (read by PM2's bash -lc) putting ~/.local/bin first on
--- PATH and exporting api.env, the wrapper above as ~/.local/bin/claude around the real CLI
--- (when M.real()) or the stand-in ~/.local/bin/fake-claude. Paths are relative to the home.
---@param api table a started support.fake_anthropic
---@return {path: string, content: string, mode: string}[]
function M.home_files(api)
  local support = require("support")
  local keys = {}
  for k in pairs(api.env) do keys[#keys + 1] = k end
  table.sort(keys)
  local profile = { 'PATH="$HOME/.local/bin:$PATH"' }
  for _, k in ipairs(keys) do profile[#profile + 1] = ("export %s=%s"):format(k, api.env[k]) end
  local target = M.real() and support.q(M.path) or '"$HOME/.local/bin/fake-claude"'
  local fake = assert(require("galley.core.fs").read(support.source_dir .. "/tests/lua/fixtures/fake-claude"))
  return {
    { path = ".profile", content = table.concat(profile, "\n") .. "\n", mode = "644" },
    { path = ".local/bin/claude", content = (WRAPPER:gsub("@CLAUDE@", target)), mode = "755" },
    { path = ".local/bin/fake-claude", content = fake, mode = "755" },
  }
end

return M
