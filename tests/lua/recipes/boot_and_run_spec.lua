-- The boot-and-run recipe through the galley binary: the plain run on the local provider (real
-- bubblewrap sandbox, real PM2), a failing session, --json, --help and usage errors, and a run
-- against `galley emulate` with the REAL Claude Code CLI (support.claude_cli) talking to the
-- loopback FAKE Anthropic API (support.fake_anthropic; the stand-in fixture only where the CLI is
-- absent, with a warning), and a fake token that must never show in output, argv, environments or
-- PM2's process list.
local cjson = require("cjson")
local codec = require("galley.core.codec")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local cli = require("support.claude_cli")
local emulator = require("support.emulator")
local fake_api = require("support.fake_anthropic")

local recipes = require("support.recipes")
local mktemp_dir = recipes.mktemp_dir

local state, home

local galley = recipes.runner(function() return state, home end)

-- Live processes on this machine whose cgroup names the instance (the local provider's cgroups);
-- a zombie waiting for init to reap it is dead.
local function processes_of(instance_id)
  local r = assert(proc.run({ argv = { "sh", "-c", [=[
for f in $(grep -l -- "$1" /proc/[0-9]*/cgroup 2>/dev/null); do
  d=${f%/cgroup}
  grep -q '^State:[[:space:]]*Z' "$d/status" 2>/dev/null || [ ! -e "$d/status" ] || echo "${d#/proc/}"
done]=], "sh", instance_id } }))
  return r.stdout
end

-- Nothing of the run is left: gc finds nothing, no instance directory, no process.
local function assert_nothing_left(stderr)
  local code, out = galley({ "--json", "gc", "--dry-run", "--provider", "local" })
  assert.are.equal(0, code)
  assert.are.same({}, cjson.decode(out))
  assert.are.same({}, fs.list(state .. "/instances") or {})
  local id = stderr:match("boot%-and%-run: instance (%S+)")
  assert.truthy(id, stderr)
  assert.are.equal("", processes_of(id))
end

describe("recipe boot-and-run #recipes", function()
  before_each(function()
    state, home = mktemp_dir("bar-state"), mktemp_dir("bar-home")
  end)

  after_each(function()
    galley({ "gc", "--include-kept", "--all-hosts", "--provider", "local" })
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  it("prints its options with --help and exits 0", function()
    local code, out = galley({ "run", "boot-and-run", "--help" })
    assert.are.equal(0, code)
    for _, opt in ipairs({ "--provider", "--snapshot", "--agent", "--prompt", "--command", "--model", "--ttl",
      "--timeout", "--keep", "--json" }) do
      assert.truthy(out:find(opt, 1, true), opt)
    end
  end)

  it("exits 2 on a bad option value, booting nothing", function()
    local code, _, err = galley({ "run", "boot-and-run", "--agent", "robot" })
    assert.are.equal(2, code)
    assert.truthy(err:find("RECIPE_USAGE", 1, true), err)
    assert.are.same({}, fs.list(state .. "/instances") or {})
  end)

  it("refuses a relative --cwd and two prompts as usage errors, booting nothing", function()
    for _, args in ipairs({ { "--cwd", "work" }, { "--prompt", "one", "two" }, { "--session", "!!!" } }) do
      local code, _, err = galley({ "run", "boot-and-run", table.unpack(args) })
      assert.are.equal(2, code, err)
      assert.truthy(err:find("RECIPE_USAGE", 1, true), err)
      assert.are.same({}, fs.list(state .. "/instances") or {})
    end
    local code, out = galley({ "--json", "gc", "--dry-run", "--provider", "local" })
    assert.are.equal(0, code)
    assert.are.same({}, cjson.decode(out))
  end)

  it("takes the words after the options as the prompt", function()
    local code, out, err = galley({ "run", "boot-and-run", "--command", 'printf "[%s]\\n" "$GALLEY_PROMPT"',
      "--poll-ms", "200", "Fix", "the tests" })
    assert.are.equal(0, code, err)
    assert.truthy(out:find("[Fix the tests]\n", 1, true), out)
    assert_nothing_left(err)
  end)

  it("runs the demo on the local provider with no options and cleans up", function()
    local code, out, err = galley({ "run", "boot-and-run" })
    assert.are.equal(0, code, err)
    assert.truthy(err:find("provider local", 1, true), err)
    assert.truthy(err:find("agent command", 1, true), err)
    assert.truthy(out:find("== galley demo agent ==", 1, true), out)
    assert.truthy(out:find("prompt:  Say hi in one short sentence.", 1, true), out)
    assert.truthy(out:find("working: step 3/3", 1, true), out)
    assert.truthy(out:find('"purpose":"galley boot-and-run"', 1, true), out) -- ~/.machine.json was written
    assert.truthy(out:find("\ndone.\n", 1, true), out)
    assert_nothing_left(err)
  end)

  it("with --repo pushes the repo, and brings the command agent's commit back as a branch", function()
    local repo = mktemp_dir("bar-repo")
    local function git(script)
      local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", repo } }))
      assert.are.equal(0, r.exit_code, r.stderr)
      return r.stdout
    end
    git('cd "$1" && git init -q . && echo one > f && git add f && git -c user.name=u -c user.email=u@x commit -qm one'
      .. ' && echo dirty >> f')
    local before = git('cd "$1" && git status --porcelain && git rev-parse HEAD && git branch --show-current')
    local code, out, err = galley({ "run", "boot-and-run", "--repo", repo, "--branch", "galley/spec", "--command",
      'pwd; cat f; echo fix > fix.txt && git add fix.txt && git -c user.name=a -c user.email=a@x commit -qm "agent fix"' })
    assert.are.equal(0, code, err)
    assert.truthy(out:find("\none\ndirty\n", 1, true) == nil and out:find("one\n", 1, true), out)
    assert.truthy(out:find("galley: branch galley/spec (1 new commits)", 1, true), out)
    assert.truthy(out:find("agent fix", 1, true), out)
    assert.are.equal("agent fix\n", git('cd "$1" && git log --format=%s HEAD..galley/spec'))
    assert.are.equal("fix.txt\n", git('cd "$1" && git diff --name-only HEAD galley/spec'))
    assert.are.equal(before, git('cd "$1" && git status --porcelain && git rev-parse HEAD && git branch --show-current'))
    proc.run({ argv = { "rm", "-rf", "--", repo } })
    assert_nothing_left(err)
  end)

  it("shows the agent's control characters (and its commit messages') instead of sending them; --raw sends", function()
    -- an agent could otherwise set the terminal's title, write its clipboard (OSC 52) or clear it
    local repo = mktemp_dir("bar-esc")
    local r = assert(proc.run({ argv = { "sh", "-c", 'cd "$1" && git init -q . && echo one > f && git add f && '
      .. 'git -c user.name=u -c user.email=u@x commit -qm one', "sh", repo } }))
    assert.are.equal(0, r.exit_code, r.stderr)
    local script = [[printf 'out \033]52;c;cHduZWQ=\007 \033[1;32mgreen\033[0m \033[2J\n'; ]]
      .. [[printf 'err \033]0;t\007\n' >&2; echo x > x && git add x && ]]
      .. [[git -c user.name=a -c user.email=a@x commit -qm "$(printf 'subj \033]0;t\007')"]]
    local code, out, err = galley({ "run", "boot-and-run", "--repo", repo, "--branch", "galley/esc", "--command",
      script, "--poll-ms", "200" })
    assert.are.equal(0, code, err)
    assert.truthy(out:find("out ^[]52;c;cHduZWQ=^G \27[1;32mgreen\27[0m ^[[2J\n", 1, true), out)
    assert.truthy(err:find("err ^[]0;t^G\n", 1, true), err)
    assert.truthy(out:find("subj ^[]0;t^G", 1, true), out)
    assert.is_nil(out:find("\27]", 1, true), out)
    assert.is_nil(err:find("\27]", 1, true), err)
    code, out = galley({ "run", "boot-and-run", "--raw", "--command", script:match("^(.-); printf 'err"),
      "--poll-ms", "200" })
    assert.are.equal(0, code)
    assert.truthy(out:find("out \27]52;c;cHduZWQ=\7", 1, true), out)
    proc.run({ argv = { "rm", "-rf", "--", repo } })
  end)

  it("exits with the session's exit code when it fails, after printing its output, and cleans up", function()
    local code, out, err = galley({ "run", "boot-and-run", "--command", "echo before-failing; echo to-stderr >&2; exit 3",
      "--poll-ms", "200" })
    assert.are.equal(3, code)
    assert.truthy(out:find("before-failing", 1, true), out)
    assert.truthy(err:find("to-stderr", 1, true), err)
    assert.truthy(err:find("session cmd-demo failed: status stopped, exit code 3", 1, true), err)
    assert_nothing_left(err)
  end)

  it("stops a session that outlives --timeout and exits 1", function()
    local code, _, err = galley({ "run", "boot-and-run", "--command", "echo started; sleep 60", "--timeout", "1",
      "--poll-ms", "200" })
    assert.are.equal(1, code)
    assert.truthy(err:find("still running after 1 s (--timeout); stopped it", 1, true), err)
    assert_nothing_left(err)
  end)

  it("writes JSON lines with --json: events, output lines and the result", function()
    local code, out, err = galley({ "run", "boot-and-run", "--json", "--session", "js", "--prompt", "P r o m p t",
      "--command", 'printf "%s\\n" "$GALLEY_PROMPT"', "--poll-ms", "200" })
    assert.are.equal(0, code, err)
    local events, lines, result = {}, {}, nil
    for line in out:gmatch("[^\n]+") do
      local ev = cjson.decode(line)
      events[#events + 1] = ev.event
      if ev.event == "output" then lines[#lines + 1] = ev.line end
      if ev.event == "result" then result = ev end
    end
    for _, want in ipairs({ "boot_started", "boot_ready", "creds_installed", "session_started", "session_exited" }) do
      assert.truthy(table.concat(events, " "):find(want, 1, true), want)
    end
    assert.are.same({ "P r o m p t" }, lines)
    assert.are.equal("cmd-js", result.process_name)
    assert.are.equal(0, result.exit_code)
    assert.is_true(result.ok)
    assert_nothing_left(err)
  end)

  for _, mode in ipairs(emulator.ARGV_MODES) do
  describe("against galley emulate --argv-mode " .. mode .. " with the " .. (cli.real() and "real" or "stand-in")
    .. " claude", function()
    local em, snapdir, api
    local real = cli.real()
    if not real then cli.warn("boot_and_run_spec") end


    setup(function()
      api = fake_api.start({ reply = "FAKE reply: hi from boot-and-run" })
      -- The snapshot's home: ~/.profile points claude at the FAKE API; ~/.local/bin/claude wraps
      -- the real CLI (or the stand-in) and reports where the token shows (support.claude_cli).
      snapdir = mktemp_dir("bar-snap")
      assert(fs.mkdir_p(snapdir .. "/.local/bin", "755"))
      for _, f in ipairs(cli.home_files(api)) do
        assert(fs.write_atomic(snapdir .. "/" .. f.path, f.content, { mode = f.mode }))
      end
      em = emulator.start({ boot_delay_ms = 0, argv_mode = mode, snapshots = { "snapshot_fakeclaude=" .. snapdir } })
    end)

    teardown(function()
      if em then em:stop() end
      if api then api.stop() end
      proc.run({ argv = { "rm", "-rf", "--", snapdir } })
    end)

    it("installs the token, pipes the prompt to claude, and never shows the token", function()
      local token = "sk-ant-oat01-" .. codec.base64_encode(codec.random_bytes(60), "urlsafe"):gsub("=", "")
      local prompt = [[Say "hi" to $HOME and `whoami` it's ünïcödé]]
      api.reset()
      local code, out, err = galley({ "run", "boot-and-run", "--provider", "morph", "--snapshot", "snapshot_fakeclaude",
        "--prompt", prompt, "--model", "claude-galley-bar", "--poll-ms", "200" },
        { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key, CLAUDE_ACCESS_TOKEN = token })
      assert.are.equal(0, code, err)
      assert.truthy(err:find("provider morph (chosen)", 1, true), err)
      assert.truthy(err:find("agent claude", 1, true), err)
      if real then
        -- The real CLI: the FAKE saw the prompt byte for byte, the model and the installed token;
        -- its reply is the session's output. With galley's default scopes (user:profile) the CLI
        -- also tries api.anthropic.com for the account profile: trapped and refused.
        local req = assert(api.find_prompt(prompt), "the FAKE API never saw the prompt byte for byte")
        assert.are.equal("claude-galley-bar", req.json.model)
        assert.are.same({ "bearer", token }, { fake_api.credential(req) })
        assert.truthy(out:find("FAKE reply: hi from boot-and-run\n", 1, true), out)
        assert.are.same({ "CONNECT api.anthropic.com:443" }, api.outside())
      else
        assert.truthy(out:find("prompt received: " .. prompt .. "\n", 1, true), out)
        assert.truthy(out:find("argv: -p --model claude-galley-bar --output-format text --dangerously-skip-permissions",
          1, true), out)
      end
      assert.truthy(out:find("token sha256: " .. codec.sha256(token) .. "\n", 1, true), out)
      assert.truthy(out:find("credentials mode: 600\n", 1, true), out)
      assert.truthy(out:find("token in argv: no\n", 1, true), out)
      assert.truthy(out:find("token in instance environments: no\n", 1, true), out)
      assert.truthy(out:find("token in pm2 jlist: no\n", 1, true), out)
      assert.falsy(out:find(token, 1, true))
      assert.falsy(err:find(token, 1, true))
      assert.falsy(em:drain():find(token, 1, true))
      -- The instance is gone from the emulator.
      local id = err:match("boot%-and%-run: instance (%S+)")
      for _, inst in ipairs(em:state().instances or {}) do assert.are_not.equal(id, inst.id) end
    end)

    it("gives claude an Anthropic API key through apiKeyHelper and a 0600 file, never its environment", function()
      local key = "sk-ant-api03-" .. codec.base64_encode(codec.random_bytes(60), "urlsafe"):gsub("=", "")
      api.reset()
      local code, out, err = galley({ "run", "boot-and-run", "--provider", "morph", "--snapshot", "snapshot_fakeclaude",
        "--poll-ms", "200" }, { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key, CLAUDE_ACCESS_TOKEN = key })
      assert.are.equal(0, code, err)
      if real then
        local req = assert(api.find_prompt("Say hi in one short sentence."))
        assert.are.equal(key, req.headers["x-api-key"])
        assert.truthy(out:find("FAKE reply: hi from boot-and-run\n", 1, true), out)
        assert.are.same({}, api.outside())
      end
      assert.truthy(out:find("token source: apiKeyHelper\n", 1, true), out)
      assert.truthy(out:find("token sha256: " .. codec.sha256(key) .. "\n", 1, true), out)
      assert.truthy(out:find("credentials mode: 600\n", 1, true), out)
      assert.truthy(out:find("token in argv: no\n", 1, true), out)
      assert.truthy(out:find("token in instance environments: no\n", 1, true), out)
      assert.truthy(out:find("token in pm2 jlist: no\n", 1, true), out)
      assert.falsy((out .. err):find(key, 1, true))
    end)

    it("refuses a relative --cwd before booting anything (exit 2, no instance)", function()
      local before = #(em:state().instances or {})
      local code, _, err = galley({ "run", "boot-and-run", "--provider", "morph", "--snapshot", emulator.SNAPSHOT,
        "--cwd", "work", "--no-credentials" }, { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key })
      assert.are.equal(2, code, err)
      assert.truthy(err:find("RECIPE_USAGE", 1, true), err)
      assert.truthy(err:find("--cwd", 1, true), err)
      assert.are.equal(before, #(em:state().instances or {}))
    end)

    it("takes the words after the options as the prompt", function()
      local code, out, err = galley({ "run", "boot-and-run", "--provider", "morph", "--snapshot", emulator.SNAPSHOT,
        "--agent", "command", "--command", 'printf "[%s]\\n" "$GALLEY_PROMPT"', "--poll-ms", "200", "Fix the tests" },
        { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key })
      assert.are.equal(0, code, err)
      assert.truthy(out:find("[Fix the tests]\n", 1, true), out)
    end)

    -- (the exit code's way back does not depend on how the service runs argv: once, in join mode)
    if mode == "join" then
      it("exits with claude's exit code (127) when claude fails, and deletes the instance", function()
        local code, _, err = galley({ "run", "boot-and-run", "--provider", "morph", "--snapshot", "snapshot_fakeclaude",
          "--claude-bin", "/nonexistent/claude", "--no-credentials", "--poll-ms", "200" },
          { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key })
        assert.are.equal(127, code)
        assert.truthy(err:find("session cc-session failed: status stopped, exit code 127", 1, true), err)
        assert.truthy(err:find("is `/nonexistent/claude` installed there?", 1, true), err)
        local id = err:match("boot%-and%-run: instance (%S+)")
        assert.truthy(id, err)
        for _, inst in ipairs(em:state().instances or {}) do assert.are_not.equal(id, inst.id) end
      end)
    end
  end)
  end
end)
