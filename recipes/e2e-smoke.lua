-- e2e-smoke.lua: the seeds' "E2E Smoke: Morph + PM2 + Claude", as TAP on stdout.
--
--   galley run e2e-smoke                          # against a `galley emulate` it starts (and stops)
--   RUN_E2E=1 MORPH_API_KEY=... galley run e2e-smoke    # against real Morph ($TESTING_SNAPSHOT_ID)
--
-- Checks: boot (TTL 1800 s, action stop), exec, preflight (`which pm2`, `pm2 -v`; `claude
-- --version`, skipped with a warning when claude is missing), Claude credentials install and
-- masked read-back (mode 600, no plaintext token), JSON and binary file round trips with modes,
-- an agent session under PM2 (`claude -p`, prompt "Say hi") followed to its exit, `pm2 logs
-- --nostream` showing the CLI's output, no token in PM2's process list, cleanup (pm2 delete,
-- terminate, instance gone).
-- When the instance has no `claude`, a FAKE stand-in (a bash script that echoes the prompt) is
-- installed at ~/.local/bin/claude so the PM2 + agent path still runs; TAP says so plainly. On
-- the emulator without CLAUDE_ACCESS_TOKEN a generated FAKE token is installed (inference scope
-- only, like a `claude setup-token` token). The real CLI given that FAKE token needs an API that
-- accepts it: --anthropic-base-url (tests pass a loopback FAKE of the Anthropic API; the session
-- then gets ANTHROPIC_BASE_URL, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 and
-- DISABLE_AUTOUPDATER=1). Without it the stand-in runs instead, with a warning, rather than
-- sending a FAKE token to Anthropic.
-- Exit status 1 when any check failed. stdout is TAP only; progress goes to stderr.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local orchestrator = require("galley.orchestrator")
local credentials = require("galley.credentials")
local errors = require("galley.errors")
local json = require("galley.json")
local util = require("galley.util")
local logmod = require("galley.log")
local oauth = require("galley.oauth.claude")
local pm2 = require("galley.process.pm2")

local MORPH_SNAPSHOT = "snapshot_c1p8b6c2"
local EMULATOR_SNAPSHOT = "snapshot_galleydev"

local opts = recipe.options({
  name = "e2e-smoke",
  summary = "End-to-end smoke test: boot, preflight, credentials, file IO, a Claude session under PM2, cleanup (TAP).",
  options = {
    { "target", choices = { "morph", "emulator" },
      help = "real Morph, or a `galley emulate` started here (default: morph when RUN_E2E=1 and MORPH_API_KEY "
        .. "are set)" },
    { "snapshot", metavar = "ID", help = "snapshot (default: $TESTING_SNAPSHOT_ID or " .. MORPH_SNAPSHOT
      .. " on morph, " .. EMULATOR_SNAPSHOT .. " on the emulator)" },
    { "prompt", metavar = "TEXT", default = "Say hi", help = "the agent's prompt" },
    { "model", metavar = "NAME", default = "sonnet", help = "claude model" },
    { "credentials", metavar = "PATH", env = "GALLEY_CLAUDE_CREDENTIALS",
      help = "Claude credentials JSON (claude-login)" },
    { "anthropic-base-url", metavar = "URL",
      help = "claude talks to this Anthropic API (tests: a loopback FAKE); also disables its nonessential traffic" },
    { "session-timeout", type = "integer", default = 300, help = "seconds to wait for the agent session" },
    { "keep", type = "flag", help = "keep the instance (and the emulator's is gone anyway)" },
    { "provider", choices = { "morph", "proxmox" }, default = "morph",
      help = "morph, or proxmox: a `galley emulate proxmox` started here (real Proxmox VE from PVE_URL, "
        .. "PVE_TOKEN_ID, PVE_TOKEN_SECRET when RUN_E2E=1)" },
    { "argv-mode", choices = { "exec", "join" }, default = "exec",
      help = "the emulator's --argv-mode: run a multi-element exec command as an argv, or space-joined by "
        .. "/bin/sh -c like an SSH-style server" },
  },
  epilog = "environment: RUN_E2E, MORPH_API_KEY, MORPH_BASE_URL, TESTING_SNAPSHOT_ID, CLAUDE_ACCESS_TOKEN "
    .. "(a token or a credentials JSON file), CLAUDE_TOKEN_EXPIRES_AT_MS (default: a year from now).",
}, arg)


local function say(text) io.stderr:write(text, "\n") end

-- Progress on stderr without recipe.step's "ok LABEL" lines, which a TAP reader given 2>&1 would count.
local function step(label, fn, ...)
  say("e2e-smoke: " .. label .. " ...")
  return fn(...)
end

local level = logmod.default_level()
if level == "info" and not os.getenv("GALLEY_LOG") then level = "error" end
local log = logmod.new({ level = level, prefix = "e2e-smoke" })

-- ---------------------------------------------------------------------------------------------
-- TAP
-- ---------------------------------------------------------------------------------------------

local CHECKS = {
  { "boot", "boot the snapshot (ttl 1800 s, stop) and get a ready instance" },
  { "exec", "exec argv: echo ok" },
  { "which_pm2", "preflight: which pm2" },
  { "pm2_version", "preflight: pm2 -v" },
  { "claude_version", "preflight: claude --version" },
  { "fake_claude", "install a FAKE claude stand-in (only when the real CLI is missing)" },
  { "creds_install", "credentials: install ~/.claude/.credentials.json (claude profile)" },
  { "creds_readback", "credentials: masked read-back, mode 600, no plaintext token" },
  { "json_io", "file IO: JSON round trip in ~ with mode 640" },
  { "binary_io", "file IO: binary round trip (all byte values + 256 KiB) with mode 600 and sha256" },
  { "session_start", "agent: start a claude session under PM2" },
  { "session_exit", "agent: session runs to exit code 0" },
  { "pm2_logs", "agent: pm2 logs --nostream --lines 100 shows CLI output" },
  { "pm2_env", "agent: no token in pm2 jlist (environment, args)" },
  { "cleanup", "cleanup: pm2 delete, terminate, instance gone" },
}
local tap = require("galley.tap").new(CHECKS)
local check, diag = tap.check, tap.diag

-- ---------------------------------------------------------------------------------------------
-- Target: real Morph, or an emulator we start as a child process
-- ---------------------------------------------------------------------------------------------

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

local target
if opts.provider == "proxmox" then
  target = (opts.target ~= "emulator" and env("RUN_E2E") == "1" and env("PVE_URL")) and "proxmox" or "emulator"
else
  target = opts.target or ((env("RUN_E2E") == "1" and env("MORPH_API_KEY")) and "morph" or "emulator")
  if target == "morph" and not env("MORPH_API_KEY") then recipe.usage_error("--target morph needs MORPH_API_KEY") end
end
tap.plan()

-- Starts `galley emulate` (this same binary) with a random API key passed through the
-- environment (never argv); returns {base_url, api_key, stop}.
local function start_emulator()
  local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0, argv_mode = opts.argv_mode })
  logmod.register_secret(emu.api_key)
  return emu
end

local provider, snapshot
if opts.provider == "proxmox" and target == "emulator" then
  local ok, pve = pcall(require("galley.emulator.proxmox_spawn").start, { task_ms = 50 })
  if not ok then
    io.stdout:write("Bail out! ", tostring(pve):gsub("\n", " "), "\n")
    recipe.exit(1)
  end
  recipe.defer(pve.stop, "stop the Proxmox emulator")
  diag("target: galley emulate proxmox at " .. pve.url .. " (started by this smoke; set RUN_E2E=1 and PVE_URL "
    .. "for a real Proxmox VE)")
  provider = providers.new("proxmox", { url = pve.url, token_id = pve.token_id, token_secret = pve.token_secret,
    ssh_port = pve.ssh_port, log = log })
  snapshot = opts.snapshot or provider.default_snapshot()
elseif opts.provider == "proxmox" then
  provider = providers.new("proxmox", { log = log })
  snapshot = opts.snapshot or provider.default_snapshot()
  diag("target: Proxmox VE at " .. env("PVE_URL"))
elseif target == "emulator" then
  local ok, emu = pcall(start_emulator)
  if not ok then
    io.stdout:write("Bail out! ", tostring(emu):gsub("\n", " "), "\n")
    recipe.exit(1)
  end
  recipe.defer(emu.stop, "stop the emulator")
  diag("target: galley emulate at " .. emu.base_url .. " (started by this smoke; set RUN_E2E=1 and MORPH_API_KEY "
    .. "for real Morph)")
  diag("emulator argv mode: " .. opts.argv_mode)
  -- the emulator's SSH gateway (when it has one) carries what one exec cannot, as Morph's would
  provider = providers.new("morph", { base_url = emu.base_url, api_key = emu.api_key, log = log,
    ssh = emu.ssh_port and { host = emu.ssh_host, port = emu.ssh_port } or false })
  snapshot = opts.snapshot or EMULATOR_SNAPSHOT
  diag("emulator SSH gateway: " .. (emu.ssh_port and ("127.0.0.1:" .. emu.ssh_port) or "none"))
else
  provider = providers.new("morph", { log = log })
  snapshot = opts.snapshot or env("TESTING_SNAPSHOT_ID") or MORPH_SNAPSHOT
  diag("target: Morph at " .. (env("MORPH_BASE_URL") or "https://cloud.morph.so/api"))
end
diag("snapshot: " .. snapshot)

-- ---------------------------------------------------------------------------------------------
-- Claude credentials: CLAUDE_ACCESS_TOKEN (token or file), --credentials, or a FAKE one on the emulator
-- ---------------------------------------------------------------------------------------------

local creds, creds_from, fake_token
do
  local token = env("CLAUDE_ACCESS_TOKEN")
  if opts.credentials then
    creds, creds_from = oauth.load_credentials(opts.credentials), "file " .. opts.credentials
  elseif token and (token:sub(1, 1) == "/" or token:sub(1, 2) == "~/") then
    creds, creds_from = oauth.load_credentials(token), "the file named by CLAUDE_ACCESS_TOKEN"
  elseif token then
    logmod.register_secret(token)
    local exp = math.tointeger(tonumber(env("CLAUDE_TOKEN_EXPIRES_AT_MS") or "") or 0)
    if not exp or exp <= 0 then exp = (os.time() + 365 * 24 * 3600) * 1000 end
    creds, creds_from = { access_token = token, expires_at_ms = exp }, "CLAUDE_ACCESS_TOKEN"
  elseif target == "emulator" then
    local rf = assert(io.open("/dev/urandom", "rb"))
    local fake = "sk-ant-oat01-FAKE-" .. rf:read(32):gsub(".", function(c) return ("%02x"):format(c:byte()) end)
    rf:close()
    logmod.register_secret(fake)
    creds, creds_from = { access_token = fake, expires_at_ms = (os.time() + 3600) * 1000,
      scopes = { "user:inference" } }, "a generated FAKE token"
    fake_token = true
  end
end

-- ---------------------------------------------------------------------------------------------
-- The checks
-- ---------------------------------------------------------------------------------------------

local id, home, claude_bin, fake_installed, session_name
local cwd = "~/galley-smoke"

local function exec(argv, cwd_)
  return provider.exec(id, { kind = "argv", command = argv[1], args = table.move(argv, 2, #argv, 1, {}),
    cwd = cwd_ })
end

local function sh(script) return exec({ "bash", "-c", script }) end

local function first_line(s) return (tostring(s or ""):match("^%s*([^\n]*)")) end

check("boot", nil, function()
  local inst = step("boot " .. snapshot, provider.instances.boot, snapshot,
    { ttl_seconds = 1800, ttl_action = "stop" })
  id = inst.id
  if not opts.keep then
    recipe.defer(function()
      local ok, err = pcall(provider.instances.terminate, id)
      if not ok and not errors.is(err, "NOT_FOUND") then error(err, 0) end
    end, "terminate " .. id)
  end
  if inst.status ~= "ready" then return false, "status " .. tostring(inst.status) end
  return inst.id
end)

check("exec", { "boot" }, function()
  local r = exec({ "echo", "ok" })
  if r.exit_code ~= 0 or r.stdout ~= "ok\n" then return false, ("exit %d, stdout %q"):format(r.exit_code, r.stdout) end
  home = sh('printf %s "$HOME"').stdout
  if home == "" then home = "/root" end
end)

check("which_pm2", { "exec" }, function()
  local r = exec({ "sh", "-c", "command -v pm2" })
  if r.exit_code ~= 0 then
    return false, "pm2 is not on PATH; " .. pm2.INSTALL_HINT .. " (or use a snapshot that has it)"
  end
  return first_line(r.stdout)
end)

check("pm2_version", { "which_pm2" }, function()
  local r = exec({ "pm2", "-v" })
  -- A fresh PM2_HOME prints a banner first: the version is the last line.
  local v = (r.stdout or ""):match("(%d+%.%d+%.%d+)%s*$")
  if r.exit_code ~= 0 or not v then return false, ("exit %d: %s"):format(r.exit_code, r.stderr) end
  return "pm2 " .. v
end)

check("claude_version", { "exec" }, function()
  local r = sh('PATH="$HOME/.local/bin:$PATH"; command -v claude >/dev/null 2>&1 || exit 127; claude --version')
  if r.exit_code == 127 then
    recipe.warn("e2e-smoke: WARNING: claude is not installed on the instance; a FAKE stand-in will be used")
    return "skip", "claude is not installed on the instance (WARNING: the agent checks use a FAKE stand-in)"
  end
  if r.exit_code ~= 0 then return false, ("claude --version: exit %d: %s"):format(r.exit_code, r.stderr) end
  if fake_token and not opts.anthropic_base_url then
    recipe.warn("e2e-smoke: WARNING: the real claude would send a generated FAKE token to Anthropic; "
      .. "the agent checks use a FAKE stand-in (give CLAUDE_ACCESS_TOKEN, or --anthropic-base-url for a FAKE API)")
    return "skip", first_line(r.stdout) .. " installed, but no API accepts the generated FAKE token "
      .. "(WARNING: the agent checks use a FAKE stand-in; see --anthropic-base-url)"
  end
  claude_bin = "claude"
  return first_line(r.stdout)
end)

local FAKE_CLAUDE = [=[#!/bin/bash
# FAKE claude: a stand-in installed by `galley run e2e-smoke` because this instance has no claude
# CLI. It is not Claude: it echoes what it got so the PM2 + agent path can be checked.
case "${1-}" in --version|-v) echo "0.0.0 (FAKE claude stand-in from galley e2e-smoke)"; exit 0;; esac
prompt=$(cat)
echo "FAKE claude stand-in (not the real CLI): args: $*"
echo "FAKE claude stand-in: prompt (${#prompt} bytes): $prompt"
if [ -s "$HOME/.claude/.credentials.json" ]; then echo "FAKE claude stand-in: credentials file present"; fi
echo "Hi! (a canned reply from the FAKE stand-in)"
]=]

check("fake_claude", { "exec" }, function()
  if claude_bin then return "skip", "the real claude CLI is installed" end
  local path = home .. "/.local/bin/claude"
  provider.files.write_file_atomic(id, path, FAKE_CLAUDE, { mode = "755", create_dirs = true })
  local r = exec({ path, "--version" })
  if r.exit_code ~= 0 or not r.stdout:find("FAKE", 1, true) then
    return false, "the stand-in does not run: " .. r.stderr
  end
  claude_bin, fake_installed = path, true
  return "FAKE: " .. path
end)

local profile_installed
check("creds_install", { "exec" }, function()
  if not creds then
    return "skip", "no CLAUDE_ACCESS_TOKEN or --credentials given (the snapshot's own login is used)"
  end
  local installer = credentials.new({ provider = provider, log = log })
  installer.install(id, credentials.claude_profile({ access_token = creds.access_token,
    refresh_token = creds.refresh_token, expires_at_ms = creds.expires_at_ms, scopes = creds.scopes,
    subscription_type = creds.subscription_type, trust_dirs = { cwd } }))
  profile_installed = true
  return "from " .. creds_from
end)

check("creds_readback", { "creds_install" }, function()
  if not profile_installed then return "skip", "no credentials were installed" end
  local path = home .. "/.claude/.credentials.json"
  local masked = credentials.read_back_masked(provider, id, path)
  diag(masked)
  if masked:find(creds.access_token, 1, true) then return false, "the read-back shows the token in plain text" end
  if not masked:find("accessToken", 1, true) or not masked:find("chars)", 1, true) then
    return false, "no masked accessToken in the read-back"
  end
  local mode = first_line(exec({ "stat", "-c", "%a", path }).stdout)
  if mode ~= "600" then return false, "mode " .. mode .. ", want 600" end
  local state = provider.files.read_file(id, home .. "/.claude.json")
  local decoded = json.decode(state)
  if type(decoded) ~= "table" or decoded.hasCompletedOnboarding ~= true then
    return false, "~/.claude.json lacks hasCompletedOnboarding"
  end
  return "mode 600"
end)

local function stat_mode(path) return first_line(exec({ "stat", "-c", "%a", path }).stdout) end

check("json_io", { "exec" }, function()
  local path = home .. "/galley-smoke/data.json"
  local doc = { name = "galley e2e smoke", n = 42, list = { 1, 2, 3 }, text = "quotes \" ' and ünïcödé ✓" }
  local text = json.encode(doc) .. "\n"
  provider.files.write_file_atomic(id, path, text, { mode = "640", create_dirs = true })
  local back = provider.files.read_file(id, path)
  if back ~= text then return false, "content differs after the round trip" end
  local decoded = json.decode(back)
  if type(decoded) ~= "table" or decoded.n ~= 42 then return false, "does not decode back" end
  local mode = stat_mode(path)
  if mode ~= "640" then return false, "mode " .. mode .. ", want 640" end
  return #text .. " bytes, mode 640"
end)

check("binary_io", { "exec" }, function()
  local path = home .. "/galley-smoke/blob.bin"
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
  local rf = assert(io.open("/dev/urandom", "rb"))
  local data = table.concat(bytes) .. rf:read(256 * 1024) .. "\r\n\0end"
  rf:close()
  provider.files.write_file_atomic(id, path, data, { mode = "600", create_dirs = true })
  local back = provider.files.read_file(id, path)
  if back ~= data then return false, ("content differs: wrote %d bytes, read %d"):format(#data, #back) end
  local remote = first_line(exec({ "sha256sum", path }).stdout):match("^(%x+)")
  local here = util.sha256(data)
  if remote ~= here then return false, ("sha256 here %s, on the instance %s"):format(here, tostring(remote)) end
  local mode = stat_mode(path)
  if mode ~= "600" then return false, "mode " .. mode .. ", want 600" end
  return ("%d bytes, sha256 %s…, mode 600"):format(#data, here:sub(1, 12))
end)

local pm = pm2.new({ provider = provider, log = log })
local orch
check("session_start", { "exec", "which_pm2" }, function()
  if not claude_bin then return false, "no claude CLI and no stand-in" end
  local agent = require("galley.agents.claude").new({ model = opts.model, claude_bin = claude_bin })
  orch = orchestrator.new({ provider = provider, process_manager = pm, agent = agent, log = log })
  provider.files.create_directory(id, home .. "/galley-smoke")
  local session_env
  if opts.anthropic_base_url then
    session_env = { ANTHROPIC_BASE_URL = opts.anthropic_base_url, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1",
      DISABLE_AUTOUPDATER = "1" }
  end
  local s = step("start the claude session", orch.start_session, id,
    { session_name = "e2e-smoke", prompt = opts.prompt, cwd = cwd, env = session_env })
  session_name = s.process_name
  return session_name .. (fake_installed and " (FAKE claude stand-in)" or "")
end)

local session_output = {}
check("session_exit", { "session_start" }, function()
  local res = step("follow " .. session_name, orch.follow, id, session_name, {
    interval_ms = 500, timeout_ms = opts.session_timeout * 1000,
    on_line = function(line, stream) session_output[#session_output + 1] = { stream = stream, line = line } end,
  })
  for _, l in ipairs(session_output) do diag(("%s| %s"):format(l.stream, l.line)) end
  if res.exit_code ~= 0 then return false, ("status %s, exit code %s"):format(res.status, tostring(res.exit_code)) end
  return ("%d lines"):format(res.lines)
end)

check("pm2_logs", { "session_start" }, function()
  local r = exec({ "pm2", "logs", session_name, "--nostream", "--lines", "100", "--no-color" })
  if r.exit_code ~= 0 then return false, ("pm2 logs: exit %d: %s"):format(r.exit_code, r.stderr) end
  -- Lines look like "0|cc-e2e-s | text" (the prefix is cut to 10 characters).
  local out_lines = 0
  local in_out = false
  for line in (r.stdout .. "\n"):gmatch("(.-)\n") do
    if line:match("%-out%.log last %d+ lines:$") then
      in_out = true
    elseif line:match("%-error%.log last %d+ lines:$") then
      in_out = false
    elseif in_out and line:match("^%d+|.-| ") then
      out_lines = out_lines + 1
    end
  end
  if out_lines == 0 then
    diag(r.stdout)
    return false, "no lines from the CLI's stdout in pm2 logs"
  end
  if fake_installed and not r.stdout:find("FAKE claude stand-in", 1, true) then
    return false, "the stand-in's output is missing"
  end
  return out_lines .. " stdout lines"
end)

check("pm2_env", { "session_start" }, function()
  local r = exec({ "pm2", "jlist" })
  if r.exit_code ~= 0 then return false, "pm2 jlist failed: " .. r.stderr end
  if creds and r.stdout:find(creds.access_token, 1, true) then return false, "the token appears in pm2 jlist" end
  local found
  for _, p in ipairs(pm.list(id)) do
    if p.name == session_name then found = p end
  end
  if not found then return false, "the session is not in pm2's list" end
  return creds and "token absent" or "no token to look for"
end)

check("cleanup", { "boot" }, function()
  if session_name then pm.delete(id, session_name) end
  if opts.keep then return "skip", "--keep: instance " .. id .. " kept" end
  provider.instances.terminate(id)
  local ok, inst = pcall(provider.instances.get, id)
  if ok and inst.status ~= "stopping" and inst.status ~= "stopped" then
    return false, "instance still " .. tostring(inst.status)
  elseif not ok and not errors.is(inst, "NOT_FOUND") then
    error(inst, 0)
  end
  return id .. " gone"
end)

if opts.keep then recipe.keep() end
if tap.failures() > 0 then
  say(("e2e-smoke: %d of %d checks failed"):format(tap.failures(), #CHECKS))
  recipe.exit(1)
end
say(("e2e-smoke: all %d checks passed%s"):format(#CHECKS, fake_installed and " (agent: FAKE claude stand-in)" or ""))
