-- boot-and-run.lua: boot an instance, prepare it, run one agent session under PM2, print the
-- agent's output as it arrives, clean up.
--
--   galley run boot-and-run                                   # local sandbox + a small demo command
--   galley run boot-and-run "Fix the tests"                   # the words after the options are the prompt
--   galley run boot-and-run --prompt "Say hi"                 # morph + claude when MORPH_API_KEY is set
--   galley run boot-and-run --agent command --command 'make test' --timeout 900
--   galley run boot-and-run --json > events.jsonl             # machine-readable events on stdout
--
-- Defaults: provider morph when MORPH_API_KEY is set, else local (stderr says which); agent
-- claude on morph, command on local (a demo that prints facts about the sandbox, the prompt and
-- a few progress lines over about three seconds). Claude credentials, when given, are installed
-- before the session: the CLAUDE_ACCESS_TOKEN environment variable (an OAuth access token, an
-- Anthropic API key `sk-ant-api…`, or the path of a credentials JSON file), or --credentials FILE
-- (default: the file `galley run claude-login` writes, when it exists). Tokens never reach the
-- PM2 environment or payload, a long-lived process's arguments, or any output: they travel in
-- the installer's one exec and land in 0600 files. On Morph that exec has no stdin: for its
-- duration the token, base64-encoded twice, is in the argv of processes on the VM
-- (/proc/*/cmdline there); locally it is in the installer's environment only. The instance is
-- terminated at the end unless --keep; the exit status is the session's (a session that fails
-- makes the recipe exit with its exit code, or 1 without one). Every option is checked before
-- anything boots: a bad one is a usage error (exit 2) with nothing booted.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local orchestrator = require("galley.orchestrator")
local contracts = require("galley.contracts")
local credentials = require("galley.credentials")
local errors = require("galley.errors")
local json = require("galley.json")
local logmod = require("galley.log")
local oauth = require("galley.oauth.claude")
local paths = require("galley.paths")
local pm2 = require("galley.process.pm2")

local MORPH_SNAPSHOT = "snapshot_c1p8b6c2"
local DEFAULT_PROMPT = "Say hi in one short sentence."
local API_KEY_FILE = "~/.claude/anthropic-api-key"
local ONE_YEAR_MS = 365 * 24 * 3600 * 1000

local opts = recipe.options({
  name = "boot-and-run",
  usage = "[options] [PROMPT...]",
  summary = "Boot an instance, install credentials, run an agent session under PM2, follow its output, clean up.\n"
    .. "PROMPT: the words after the options, joined by spaces (the same as --prompt).",
  options = {
    { "provider", choices = providers.names, help = "where to boot (default: morph with MORPH_API_KEY, else local)" },
    { "snapshot", metavar = "ID", env = "GALLEY_SNAPSHOT",
      help = "snapshot to boot (default: $TESTING_SNAPSHOT_ID or " .. MORPH_SNAPSHOT
        .. " on morph, an empty one on local)" },
    { "image", metavar = "ID|auto", help = "boot an agent image: an id from `galley run agent-image`, or auto: "
      .. "build (or find) the one for --agent on --snapshot" },
    { "agent", choices = { "claude", "command" }, help = "what runs (default: claude on morph, command on local)" },
    { "prompt", metavar = "TEXT",
      help = "the prompt, also given as the words after the options ($GALLEY_PROMPT for the command agent; "
        .. "default: " .. DEFAULT_PROMPT .. ")" },
    { "prompt-file", metavar = "PATH", help = "read the prompt from a local file instead" },
    { "system-prompt", metavar = "TEXT", help = "claude: text appended to the system prompt" },
    { "model", metavar = "NAME", default = "sonnet", help = "claude: model alias or name" },
    { "output-format", choices = { "text", "json", "stream-json" }, default = "text", help = "claude: output format" },
    { "claude-bin", metavar = "PATH", default = "claude", help = "claude: the CLI on the instance" },
    { "command", metavar = "SCRIPT", help = "command agent: a bash script to run (default: the demo)" },
    { "cwd", metavar = "DIR", help = "working directory, created if missing (default: ~, or the claude agent's)" },
    { "session", metavar = "NAME", help = "session name (PM2 process cmd-NAME / cc-NAME; default demo or session)" },
    { "credentials", metavar = "PATH", env = "GALLEY_CLAUDE_CREDENTIALS",
      help = "Claude credentials JSON from `galley run claude-login` (default: " .. oauth.DEFAULT_CREDENTIALS_PATH
        .. " when it exists)" },
    { "no-credentials", type = "flag", help = "install no Claude credentials even when some are available" },
    { "no-api-check", type = "flag", help = "claude: start it without first checking that the instance can connect "
      .. "to its API" },
    { "ttl", type = "duration", default = 1800, help = "instance TTL: 90, 90s, 10m, 2h (0: none)" },
    { "timeout", type = "duration", default = 900,
      help = "give up on the session after this long: 90, 10m, 2h (0: never)" },
    { "poll-ms", type = "integer", default = 1000, help = "how often to read the session's log" },
    { "events", metavar = "PATH", help = "append orchestrator events to this JSON-lines file" },
    { "json", type = "flag", help = "stdout: JSON lines (events, output lines, the result) instead of plain output" },
    { "raw", type = "flag", help = "print the agent's output as its bytes: control characters other than colours "
      .. "are otherwise shown (^[, ^G), not sent to your terminal" },
    { "keep", type = "flag", help = "keep the instance afterwards (stop it later with `galley gc --include-kept`)" },
    { "repo", metavar = "PATH", help = "push this git repository (HEAD) into the working directory (default ~/NAME) "
      .. "first; afterwards bring the agent's commits back as a branch of it" },
    { "branch", metavar = "NAME", help = "--repo: the branch made on the instance and brought back "
      .. "(default galley/SESSION)" },
  },
  epilog = [[
environment: MORPH_API_KEY (and MORPH_BASE_URL) for morph; TESTING_SNAPSHOT_ID; CLAUDE_ACCESS_TOKEN
(a token, or a credentials file path) and CLAUDE_TOKEN_EXPIRES_AT_MS (default: a year from now).
credentials: installed by one exec before the session, into 0600 files; never in the PM2
environment or payload, a long-lived process's arguments or any output. On morph that exec has
no stdin: while it runs, the token (base64-encoded twice) is in the argv of processes on the VM
(/proc/*/cmdline there). Locally it is only in the installer's environment.
exit status: the session's own exit code (0 when it exited 0; 1 when it failed without one, timed out
or anything else went wrong).]],
}, arg)
-- The global `galley --json run boot-and-run` means --json too.
if (require("galley.core.runtime").options().json or 0) > 0 then opts.json = true end

-- Failures always reach stderr (a JSON line with --json); warnings (recipe.warn) and information
-- lines follow -q like progress.
local function say(text) require("galley.progress").message("error", text) end
local function info(text) recipe.say(text) end

local function usage(msg) recipe.usage_error(msg) end

if opts.ttl < 0 then usage("--ttl must be 0 or more") end
if opts.timeout < 0 then usage("--timeout must be 0 or more") end
if opts.poll_ms < 50 then usage("--poll-ms must be at least 50") end
if opts.ttl > 0 and opts.timeout > 0 and opts.ttl < opts.timeout then
  recipe.warn(("boot-and-run: warning: --ttl %ds is shorter than --timeout %ds: the instance may expire first")
    :format(opts.ttl, opts.timeout))
end

-- ---------------------------------------------------------------------------------------------
-- Output: plain text, or JSON lines with --json
-- ---------------------------------------------------------------------------------------------

local function now_iso() return os.date("!%Y-%m-%dT%H:%M:%SZ") end

local function emit_json(t)
  io.stdout:write(json.encode(t), "\n")
  io.stdout:flush()
end

-- What an agent prints (and its commit messages) reaches the terminal with its colours but no
-- other control character (galley.util.visible): it cannot set the title, write the clipboard
-- (OSC 52) or clear the screen. --raw: the bytes.
local util = require("galley.util")
local function shown(text) return opts.raw and text or util.visible(text, true) end

local function on_line(line, stream)
  if opts.json then
    emit_json({ ts = now_iso(), event = "output", stream = stream, line = line })
  elseif stream == "err" then
    io.stderr:write(shown(line), "\n")
  else
    io.stdout:write(shown(line), "\n")
    io.stdout:flush()
  end
end

local events_sink
if opts.json or opts.events then
  events_sink = function(ev)
    if opts.json then emit_json(ev) end
    if opts.events then
      local f = io.open(opts.events, "a")
      if f then
        f:write(json.encode(ev), "\n")
        f:close()
      end
    end
  end
end

-- Orchestrator and provider chatter stays at warn unless asked for (GALLEY_LOG, -v).
local level = logmod.default_level()
if level == "info" and not os.getenv("GALLEY_LOG") then level = "warn" end
local log = logmod.new({ level = level, prefix = "boot-and-run" })

-- ---------------------------------------------------------------------------------------------
-- Provider, agent, snapshot
-- ---------------------------------------------------------------------------------------------

if not opts.provider and (os.getenv("MORPH_BASE_URL") or "") ~= "" and (os.getenv("MORPH_API_KEY") or "") == "" then
  recipe.warn(("boot-and-run: warning: MORPH_BASE_URL is set (%s) but MORPH_API_KEY is not: using the local provider"
    .. "\nboot-and-run: hint: export MORPH_API_KEY too (`galley emulate` prints both), or pass --provider local")
    :format(os.getenv("MORPH_BASE_URL")), { hint = "export MORPH_API_KEY too, or pass --provider local" })
end
local provider, why = providers.default(opts.provider, { log = log.child({ prefix = opts.provider }) })
local provider_name = provider.name or opts.provider or (why:match("provider (%S+)"))
local agent_name = opts.agent or ((opts.command or provider_name ~= "morph") and "command" or "claude")
if opts.command and agent_name ~= "command" then usage("--command needs --agent command") end
info(("boot-and-run: %s; agent %s%s"):format(why, agent_name,
  opts.agent and "" or " (default for " .. provider_name .. ")"))

local snapshot = opts.snapshot
if not snapshot and provider_name == "morph" then
  local env = os.getenv("TESTING_SNAPSHOT_ID")
  snapshot = (env and env ~= "") and env or MORPH_SNAPSHOT
end

if opts.image == "auto" and agent_name ~= "claude" then
  usage("--image auto builds an agent image: use it with --agent claude")
end
if #opts > 0 and (opts.prompt or opts.prompt_file) then
  usage("give the prompt once: as words after the options, --prompt or --prompt-file")
end
if opts.prompt and opts.prompt_file then usage("--prompt and --prompt-file: give one of them") end
local prompt = #opts > 0 and table.concat(opts, " ") or opts.prompt or DEFAULT_PROMPT
if opts.prompt_file then
  local f, ferr = io.open(opts.prompt_file, "rb")
  if not f then usage("--prompt-file: " .. tostring(ferr)) end
  prompt = f:read("a") or ""
  f:close()
end
if prompt == "" then usage("the prompt is empty") end
if opts.cwd then
  -- The rules every CommandSpec's cwd follows: absolute or ~-prefixed, UTF-8, no NUL.
  local ok_cwd, cwd_err = pcall(contracts.check_command, { kind = "shell", script = ":", cwd = opts.cwd })
  if not ok_cwd then
    local reason = tostring(type(cwd_err) == "table" and cwd_err.message or cwd_err):gsub("^command%.cwd: ", "")
    local c = opts.cwd
    if c:sub(1, 1) ~= "/" and c:sub(1, 1) ~= "~" then
      reason = reason .. (" (write ~/%s for a directory in the instance's home)"):format(c)
    end
    usage("--cwd: " .. reason)
  end
end
if opts.branch and not opts.repo then usage("--branch needs --repo") end

-- ---------------------------------------------------------------------------------------------
-- Claude credentials (never printed: lengths and expiry only)
-- ---------------------------------------------------------------------------------------------

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function expand_local(path)
  return paths.expand(path)
end

-- Loads credentials saved by claude-login; refreshes (and saves) them when they are about to expire.
local function load_file(path)
  local creds = oauth.load_credentials(path)
  if creds.refresh_token and creds.expires_at_ms then
    local client = oauth.new({})
    if client.is_expired(creds, 10 * 60 * 1000) then
      local fresh = recipe.step("refresh the Claude credentials", client.refresh, creds)
      oauth.save_credentials(path, fresh)
      creds = fresh
    end
  end
  return creds, "file " .. path
end

-- {kind = "oauth", creds} | {kind = "api_key", key} | nil, and a description for stderr.
local function find_claude_secret()
  if opts.no_credentials then return nil, "none (--no-credentials)" end
  if opts.credentials then
    return { kind = "oauth", creds = (load_file(opts.credentials)) }, "file " .. opts.credentials
  end
  local token = os.getenv("CLAUDE_ACCESS_TOKEN")
  if token and token ~= "" then
    token = token:gsub("^%s+", ""):gsub("%s+$", "")
    if token:sub(1, 1) == "/" or token:sub(1, 2) == "~/" then
      if not file_exists(expand_local(token)) then
        errors.raise("VALIDATION_ERROR", "CLAUDE_ACCESS_TOKEN names a file that does not exist",
          { field = "CLAUDE_ACCESS_TOKEN" })
      end
      return { kind = "oauth", creds = (load_file(token)) }, "file named by CLAUDE_ACCESS_TOKEN"
    end
    logmod.register_secret(token)
    if token:match("^sk%-ant%-api") then return { kind = "api_key", key = token }, "API key in CLAUDE_ACCESS_TOKEN" end
    local exp = tonumber(os.getenv("CLAUDE_TOKEN_EXPIRES_AT_MS") or "")
    exp = exp and math.tointeger(exp) or (os.time() * 1000 + ONE_YEAR_MS)
    return { kind = "oauth", creds = { access_token = token, expires_at_ms = exp } }, "CLAUDE_ACCESS_TOKEN"
  end
  if file_exists(expand_local(oauth.DEFAULT_CREDENTIALS_PATH)) then
    return { kind = "oauth", creds = (load_file(oauth.DEFAULT_CREDENTIALS_PATH)) }, oauth.DEFAULT_CREDENTIALS_PATH
  end
  return nil, "none"
end

local secret, secret_from = find_claude_secret()

-- ---------------------------------------------------------------------------------------------
-- The session's process spec
-- ---------------------------------------------------------------------------------------------

-- The demo the command agent runs by default: facts about where it runs, the prompt, progress.
local DEMO = [=[
echo "== galley demo agent =="
echo "host:    $(hostname 2>/dev/null || cat /proc/sys/kernel/hostname) ($(uname -srm))"
echo "user:    $(id -un 2>/dev/null || echo "?") (uid $(id -u)), home $HOME, cwd $(pwd)"
if [ -w / ]; then echo "root fs: writable"
else echo "root fs: read-only (a sandbox: only ~ and /tmp are the instance's)"; fi
echo "tools:   pm2 $(pm2 -v 2>/dev/null | tail -n 1 || echo missing), $(python3 --version 2>&1 || echo 'no python3')"
if [ -r "$HOME/.machine.json" ]; then echo "machine: $(cat "$HOME/.machine.json")"; fi
echo "prompt:  $GALLEY_PROMPT"
for i in 1 2 3; do
  sleep 1
  echo "working: step $i/3 ($(date -u +%H:%M:%S) UTC)"
done
echo "words in the prompt: $(printf '%s' "$GALLEY_PROMPT" | wc -w | tr -d ' ')"
echo "done."
]=]

-- In the login environment PM2's `bash -lc` gives the session (/etc/profile, then the first of
-- ~/.bash_profile, ~/.bash_login, ~/.profile), prints "target HOST:PORT" (where claude's requests
-- go first: the proxy, unless NO_PROXY names the API's host) and exits 0 when a TCP connection
-- opens within 5 s, 3 when it does not (POSIX sh; bash only for /dev/tcp).
local API_PROBE = [=[
[ -r /etc/profile ] && . /etc/profile >/dev/null 2>&1
for f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do
  if [ -r "$f" ]; then . "$f" >/dev/null 2>&1; break; fi
done
url=${ANTHROPIC_BASE_URL:-https://api.anthropic.com}
case "$url" in https://*) port=443; proxy=${HTTPS_PROXY:-${https_proxy:-}};;
  *) port=80; proxy=${HTTP_PROXY:-${http_proxy:-}};; esac
hp=${url#*://}; hp=${hp%%/*}; hp=${hp##*@}; host=${hp%:*}
[ "$host" != "$hp" ] && port=${hp##*:}
np=",$(printf %s "${NO_PROXY:-${no_proxy:-}}" | tr -d ' '),"
if [ -n "$proxy" ] && [ "${np#*,"$host",}" = "$np" ]; then
  hp=${proxy#*://}; hp=${hp%%/*}; hp=${hp##*@}; host=${hp%:*}; port=80
  [ "$host" != "$hp" ] && port=${hp##*:}
fi
echo "target $host:$port"
command -v timeout >/dev/null 2>&1 || exit 0
timeout 5 bash -c ': <"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null || exit 3
]=]

local session = opts.session or (agent_name == "command" and "demo" or "session")
local cwd = opts.cwd or (opts.repo and ("~/" .. (paths.expand(opts.repo):gsub("/+$", ""):match("[^/]+$") or "repo")))
local workspace = require("galley.workspace")
local agent, input
if agent_name == "command" then
  cwd = cwd or "~"
  agent = require("galley.agents.command").new({})
  input = { session_name = session, command = opts.command or DEMO, cwd = cwd, env = { GALLEY_PROMPT = prompt } }
else
  local claude = require("galley.agents.claude")
  cwd = cwd or claude.DEFAULTS.cwd
  agent = claude.new({ model = opts.model, output_format = opts.output_format, claude_bin = opts.claude_bin })
  input = { session_name = session, prompt = prompt, system_prompt = opts.system_prompt, cwd = cwd }
end

-- ---------------------------------------------------------------------------------------------
-- Run
-- ---------------------------------------------------------------------------------------------

local pm = pm2.new({ provider = provider, log = log.child({ prefix = "pm2" }) })
-- The orchestrator's session_error warning would repeat what this recipe says at the end.
local orch_log = logmod.new({ level = level == "warn" and "error" or level, prefix = "boot-and-run.orch" })
local orch = orchestrator.new({ provider = provider, process_manager = pm, agent = agent, log = orch_log,
  events = events_sink })

local profiles = { { name = "workspace", directories = { { path = cwd } }, files = {} } }
if secret and secret.kind == "oauth" then
  local c = secret.creds
  profiles[#profiles + 1] = credentials.claude_profile({ access_token = c.access_token, refresh_token = c.refresh_token,
    expires_at_ms = c.expires_at_ms, scopes = c.scopes, subscription_type = c.subscription_type, trust_dirs = { cwd } })
elseif secret and secret.kind == "api_key" then
  -- claude asks apiKeyHelper for the key: the key itself stays in a 0600 file, out of every environment.
  profiles[#profiles + 1] = { name = "claude-api-key", directories = { { path = "~/.claude", mode = "700" } }, files = {
    { path = API_KEY_FILE, content = secret.key, mode = "600", secret = true },
    { path = "~/.claude/settings.json", json = { apiKeyHelper = "cat " .. API_KEY_FILE }, merge = "shallow",
      mode = "600" },
    { path = "~/.claude.json", json = { hasCompletedOnboarding = true }, merge = "deep", mode = "600" },
  } }
end
-- Everything the session and the install will be given is checked now, before anything boots.
local ok_spec, spec_err = pcall(agent.to_process_spec, input)
if not ok_spec then usage(tostring(type(spec_err) == "table" and spec_err.message or spec_err)) end
for i, prof in ipairs(profiles) do
  local ok_prof, prof_err = pcall(credentials.check_profile, prof, ("profiles[%d]"):format(i))
  if not ok_prof then usage(tostring(type(prof_err) == "table" and prof_err.message or prof_err)) end
end

if opts.image == "auto" then
  local base = snapshot or provider.DEFAULT_SNAPSHOT
  snapshot = recipe.step("find or build the claude image on " .. tostring(base), require("galley.images").agent_image,
    provider, agent_name, base, { progress = true }).id
elseif opts.image then
  snapshot = opts.image
end

if secret then info("boot-and-run: Claude credentials from " .. secret_from) end
if agent_name == "claude" and not secret then
  recipe.warn("boot-and-run: warning: no Claude credentials given (CLAUDE_ACCESS_TOKEN, --credentials); "
    .. "claude uses what the snapshot has")
end

local function main()
if opts.ttl == 0 then recipe.ttl(false) end
local machine = recipe.step("boot " .. (snapshot or "an empty instance") .. " and prepare", orch.boot_and_prepare,
  snapshot, {
    ttl_seconds = opts.ttl > 0 and opts.ttl or nil,
    ttl_action = opts.ttl > 0 and "stop" or nil,
    credential_profiles = profiles,
    machine_info = { purpose = "galley boot-and-run", provider = provider_name, agent = agent_name,
      session = session, run_id = recipe.run_id() },
  })
local id = machine.instance_id
-- `galley run --keep boot-and-run` keeps it too (the run-level option).
if opts.keep or (require("galley.run").current() or {}).keep then
  info(("boot-and-run: keeping instance %s (stop it with `galley stop %s`)"):format(id, id))
else
  recipe.defer(function()
    local ok, err = pcall(provider.instances.terminate, id)
    if not ok and not errors.is(err, "NOT_FOUND") then error(err, 0) end
  end, "terminate " .. id)
end
info("boot-and-run: instance " .. id)

local branch = opts.branch or ("galley/" .. session)
if opts.repo then
  recipe.step(("push %s into %s"):format(opts.repo, cwd), workspace.push_repo, provider, id, paths.expand(opts.repo),
    cwd, { branch = branch })
end
-- claude retries an API it cannot connect to for about three minutes, printing nothing, before it
-- fails (190 s measured: a run that looked hung). Check from the instance first, in the login
-- environment PM2 gives the session (~/.profile: ANTHROPIC_BASE_URL, proxies): a few ms when the
-- API answers, a clear failure at once when it cannot.
if agent_name == "claude" and not opts.no_api_check then
  recipe.step("check that claude can connect to its API", function()
    local r = provider.exec(id, require("galley.contracts").shell(API_PROBE))
    local target = (r.stdout or ""):match("target (%S+)") or "its API"
    if r.exit_code == 3 then
      errors.raise("NETWORK_ERROR", ("claude on %s cannot connect to %s (ANTHROPIC_BASE_URL, else "
        .. "api.anthropic.com; through HTTPS_PROXY when set)"):format(id, target), {
        resource = "instance:" .. id,
        hint = "give the instance an API it can reach (ANTHROPIC_BASE_URL or a proxy in its ~/.profile); "
          .. "claude would retry for about 3 minutes, then fail. --no-api-check skips this check" })
    end
    -- Other exits (no bash or no timeout on the image): nothing known, claude goes ahead.
  end)
end
local started = recipe.step("start the " .. agent_name .. " session", orch.start_session, id, input)
local name = started.process_name
info(("boot-and-run: following %s (PM2 process on %s)"):format(name, id))

local t0 = os.time()
local ok, res = pcall(orch.follow, id, name, { interval_ms = opts.poll_ms, on_line = on_line,
  timeout_ms = opts.timeout > 0 and opts.timeout * 1000 or nil })
if not ok then
  if errors.is(res, "TIMEOUT") then
    pcall(pm.stop, id, name)
    if opts.json then emit_json({ ts = now_iso(), event = "result", instance_id = id, process_name = name,
      status = "timeout", ok = false }) end
    say(("boot-and-run: session %s still running after %d s (--timeout); stopped it"):format(name, opts.timeout))
    recipe.exit(1)
  end
  error(res, 0)
end
if opts.repo then
  local back = recipe.step("bring " .. branch .. " back", workspace.pull_repo, provider, id, cwd,
    paths.expand(opts.repo), { branch = branch })
  if opts.json then
    emit_json({ ts = now_iso(), event = "branch", branch = branch, base = back.base, head = back.head,
      commits = back.commits })
  else
    io.stdout:write(("galley: branch %s (%d new commits)\n%s"):format(branch, #back.commits, shown(back.log)))
  end
end

local failed = res.status == "errored" or res.exit_code ~= 0
if opts.json then
  emit_json({ ts = now_iso(), event = "result", instance_id = id, process_name = name, status = res.status,
    exit_code = res.exit_code, lines = res.lines, ok = not failed })
end
if failed then
  say(("boot-and-run: session %s failed: status %s, exit code %s (%d lines of output)"):format(name,
    tostring(res.status),
    res.exit_code and tostring(res.exit_code) or "unknown", res.lines or 0))
  if res.exit_code == 127 then
    say(("boot-and-run: hint: exit 127 means a command was not found on the instance%s"):format(agent_name == "claude"
      and (" (is `%s` installed there? see --claude-bin)"):format(opts.claude_bin) or ""))
  end
  local code = math.tointeger(res.exit_code)
  recipe.exit((code and code > 0 and code < 256) and code or 1)
end
info(("boot-and-run: session %s exited 0 after about %d s"):format(name, os.time() - t0))
end

-- A failed run with --json ends with a result event too (ok = false, the error's code and message).
local ok_main, main_err = pcall(main)
if not ok_main then
  if opts.json and not errors.is(main_err, "RECIPE_EXIT") then
    emit_json({ ts = now_iso(), event = "result", ok = false,
      code = type(main_err) == "table" and main_err.code or "RECIPE_ERROR",
      message = type(main_err) == "table" and tostring(main_err.message) or tostring(main_err) })
  end
  error(main_err, 0)
end
