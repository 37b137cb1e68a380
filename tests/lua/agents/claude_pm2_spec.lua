-- The Claude agent's ProcessSpec run under real PM2 (galley.process.pm2) on every provider
-- support.host_provider.providers() lists.
-- By default `claude` is the REAL Claude Code CLI (support.claude_cli) talking to the loopback
-- FAKE Anthropic API (support.fake_anthropic), with credentials installed by galley.credentials:
-- the OAuth .credentials.json and the apiKeyHelper profile are accepted, the prompt reaches the
-- API byte for byte (even over 128 KiB, through spec.files), the API saw the installed token,
-- --model and the system prompt, the reply shows in the session's PM2 log, PM2 records the CLI's
-- failure, and the token never shows in ps, the logs or `pm2 jlist`.
-- Where the CLI is absent, a loud warning and the stand-in `claude` (support.fake_claude):
-- what reaches it is byte for byte what the caller gave (prompt on stdin, system prompt and
-- extra args as arguments, a prompt over 128 KiB through spec.files).
local claude = require("galley.agents.claude")
local cli = require("support.claude_cli")
local credentials = require("galley.credentials")
local fake = require("support.fake_claude")
local fake_api = require("support.fake_anthropic")
local host = require("support.host_provider")
local logmod = require("galley.log")
local pm2mod = require("galley.process.pm2")
local wait_for = host.wait_for

-- Quotes, $, backticks, backslashes, newlines, CR, non-ASCII and a leading dash.
local NASTY = "-p 'single' \"double\" $HOME ${X:-y} $(echo no) `echo no` \\n \\ \n\ttab\r\n"
  .. "ünïcödé 日本語 🚀 %s %% !! \n\n"
local ALL_BYTES = {}
for b = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(b) end
ALL_BYTES = table.concat(ALL_BYTES)

local function index_of(list, value)
  for i, v in ipairs(list or {}) do
    if v == value then return i end
  end
end

local function flag_value(argv, flag)
  local i = index_of(argv, flag)
  return i and argv[i + 1]
end


-- The API sees JSON text: valid UTF-8 with quotes, $, backticks, backslashes, CR and newlines.
local TEXT = NASTY .. "end 'q'\n"

local function real_cli_specs(target)
  describe(("the real Claude CLI under PM2 on the %s provider #agents #pm2 #claude_cli #slow #%s"):format(target.label,
    target.label), function()
    local t, p, inst, pm, api, installer
    local TOKEN = "sk-ant-oat01-galley-pm2-" .. ("T"):rep(80)
    local KEY = "sk-ant-api03-galley-pm2-" .. ("K"):rep(80)

    setup(function()
      api = fake_api.start({ reply = "FAKE reply under PM2: hello" })
      t, p, inst, pm = host.start_target(target, pm2mod)
      installer = credentials.new({ provider = p, log = logmod.silent() })
      p.files.write_file_atomic(inst.id, "~/work/.keep", "", { mode = "644", create_dirs = true })
    end)

    teardown(function()
      host.stop_target(t, inst)
      if api then api.stop() end
    end)

    local function sh(script)
      return p.exec(inst.id, { kind = "argv", command = "bash", args = { "-c", script } })
    end

    local function install_oauth()
      sh("rm -rf ~/.claude ~/.claude.json")
      -- Inference-only scopes (like a `claude setup-token` token): with user:profile the CLI also
      -- asks api.anthropic.com for the account profile (see claude_spec).
      installer.install(inst.id, credentials.claude_profile({ access_token = TOKEN,
        expires_at_ms = (os.time() + 3600) * 1000, scopes = { "user:inference" }, trust_dirs = { "~/work" } }))
    end

    local function install_api_key()
      sh("rm -rf ~/.claude ~/.claude.json")
      installer.install(inst.id, { name = "claude-api-key", directories = { { path = "~/.claude", mode = "700" } },
        files = {
          { path = "~/.claude/anthropic-api-key", content = KEY, mode = "600", secret = true },
          { path = "~/.claude/settings.json", json = { apiKeyHelper = "cat ~/.claude/anthropic-api-key" },
            merge = "shallow", mode = "600" },
          { path = "~/.claude.json", json = { hasCompletedOnboarding = true }, merge = "deep", mode = "600" },
        } })
    end

    -- Starts a session (claude pointed at the FAKE through input.env), waits for its exit and
    -- for its log; returns {name, exit_code, out, err, jlist}.
    local function run(input, opts)
      api.reset()
      input.env = input.env or {}
      for k, v in pairs(api.env) do input.env[k] = v end
      opts = opts or {}
      opts.cwd = "~/work"
      local info = pm.start(inst.id, claude.new(opts).to_process_spec(input))
      local done = wait_for(function()
        for _, item in ipairs(pm.list(inst.id)) do
          if item.name == info.name and item.status == "stopped" then return item end
        end
      end, info.name .. " to finish", 120000)
      local logs
      pcall(wait_for, function()
        logs = pm.logs(inst.id, info.name)
        return (logs.out .. logs.err) ~= ""
      end, "the session's log", 15000)
      local jlist = sh("pm2 jlist").stdout
      return { name = info.name, exit_code = done.exit_code, out = logs.out, err = logs.err, jlist = jlist }
    end

    it("accepts galley's OAuth credentials; prompt, model and token reach the API; the reply is logged", function()
      install_oauth()
      local running -- where the token shows while the CLI waits for the API's answer
      api.on_message = function() running = cli.leaks(TOKEN) end
      local ok, r = pcall(run, { session_name = "oauth", prompt = TEXT, model = "claude-galley-pm2",
        system_prompt = "sys 'x'" })
      api.on_message = nil
      assert.is_true(ok, tostring(r))
      assert.are.same({}, running, "the token is in some process's argv while the session runs")
      assert.are.equal(0, r.exit_code, r.err)
      assert.truthy(r.out:find("FAKE reply under PM2: hello", 1, true), r.out .. r.err)
      local req = assert(api.find_prompt(TEXT), "the FAKE never saw the prompt byte for byte")
      assert.are.equal("claude-galley-pm2", req.json.model)
      assert.are.same({ "bearer", TOKEN }, { fake_api.credential(req) })
      local sys = req.json.system
      assert.are.equal("sys 'x'", sys[#sys].text:sub(-7))
      assert.are.same({}, api.outside(), "the CLI tried to reach another host")
      assert.are.same({}, cli.leaks(TOKEN), "the token is in some process's argv after the session")
      assert.falsy((r.out .. r.err):find(TOKEN, 1, true), "the token is in the session's log")
      assert.falsy(r.jlist:find(TOKEN, 1, true), "the token is in pm2 jlist")
      assert.truthy(r.jlist:find("IS_SANDBOX", 1, true), "expected pm2 jlist to show the session's environment")
      pm.delete(inst.id, r.name)
    end)

    it("accepts the apiKeyHelper profile; the key never shows in ps, logs or pm2 jlist", function()
      install_api_key()
      local r = run({ session_name = "apikey", prompt = "key " .. TEXT })
      assert.are.equal(0, r.exit_code, r.err)
      assert.truthy(r.out:find("FAKE reply under PM2: hello", 1, true), r.out .. r.err)
      local req = assert(api.find_prompt("key " .. TEXT))
      assert.are.equal(KEY, req.headers["x-api-key"])
      assert.are.same({}, api.outside())
      assert.are.same({}, cli.leaks(KEY))
      assert.falsy((r.out .. r.err .. r.jlist):find(KEY, 1, true))
      pm.delete(inst.id, r.name)
    end)

    it("feeds a prompt over 128 KiB, uploaded through spec.files, byte for byte", function()
      install_oauth()
      local prompt = (TEXT .. "ünïcödé 日本語\n"):rep(math.ceil(200 * 1024 / #TEXT))
      local r = run({ session_name = "big", prompt = prompt })
      assert.are.equal(0, r.exit_code, r.err)
      assert.truthy(api.find_prompt(prompt), "the FAKE never saw the big prompt byte for byte")
      pm.delete(inst.id, r.name)
    end)

    it("ends with the CLI's failure status when the API refuses, which PM2 records", function()
      install_oauth()
      api.fail = { status = 400 }
      local ok, r = pcall(run, { session_name = "refused", prompt = "refused" })
      api.fail = nil
      assert.is_true(ok, tostring(r))
      assert.are.equal(1, r.exit_code)
      assert.truthy(api.find_prompt("refused"))
      pm.delete(inst.id, r.name)
    end)
  end)
end

if cli.real() then
  for _, target in ipairs(host.providers()) do real_cli_specs(target) end
  return
end
cli.warn("claude_pm2_spec")

for _, target in ipairs(host.providers()) do
  describe(("the Claude agent under PM2 on the %s provider #agents #pm2 #%s"):format(target.label, target.label),
    function()
      local t, p, inst, pm, f

      setup(function()
        t = target.new()
        p = t.provider
        inst = t.boot()
        pm = pm2mod.new(host.manager_opts(t, { provider = p, log = logmod.silent() }))
        f = fake.install(p, inst.id)
      end)

      teardown(function()
        if inst then p.instances.terminate(inst.id) end
        if t then t.cleanup() end
      end)

      -- Starts the spec under PM2 and waits for claude (the fake) to finish.
      local function run(spec)
        fake.reset(p, inst.id, f)
        local info = pm.start(inst.id, spec)
        local done = wait_for(function()
          for _, item in ipairs(pm.list(inst.id)) do
            if item.name == info.name and item.status == "stopped" then return item end
          end
        end, info.name .. " to finish")
        local r = fake.record(p, inst.id, f)
        r.exit_code = done.exit_code
        r.name = info.name
        return r
      end

      local function agent(opts)
        opts = opts or {}
        opts.cwd = opts.cwd or f.cwd
        return claude.new(opts)
      end

      it("delivers prompt, system prompt and extra args byte for byte, found by name on a login PATH", function()
        local system_prompt = "Be terse.\n" .. NASTY .. "'\n\n"
        local extra = { "--max-turns", "3", "--allowedTools", "Bash(git diff *) Read", "it's $HOME `x`", "" }
        local spec = agent().to_process_spec({ session_name = "nasty quotes", prompt = NASTY .. ALL_BYTES,
          system_prompt = system_prompt, extra_args = extra, env = f.env })
        assert.is_nil(spec.files)
        local r = run(spec)
        assert.are.equal("cc-nasty-quotes", r.name)
        assert.are.equal(0, r.exit_code)
        assert.are.equal(NASTY .. ALL_BYTES, r.stdin)
        assert.are.equal(system_prompt, flag_value(r.argv, "--append-system-prompt"))
        assert.are.equal("-p", r.argv[1])
        assert.are.equal("sonnet", flag_value(r.argv, "--model"))
        local first = index_of(r.argv, "--max-turns")
        assert.are.same(extra, { table.unpack(r.argv, first, first + #extra - 1) })
        assert.are.equal(f.cwd, r.cwd)
        assert.are.same({ CLAUDECODE = false, ANTHROPIC_API_KEY = false, IS_SANDBOX = "1" }, r.env)
        -- PM2 writes the log a moment after the exit it reports.
        local logs
        pcall(wait_for, function()
          logs = pm.logs(inst.id, r.name)
          return logs.out:find("fake claude: ", 1, true)
        end, "claude's output", 15000)
        assert.truthy(logs.out:find("fake claude: ", 1, true), logs.out .. logs.err)
        pm.delete(inst.id, r.name)
      end)

      it("ends with claude's exit status, which PM2 records", function()
        local env = { FAKE_CLAUDE_EXIT = "3" }
        for k, v in pairs(f.env) do env[k] = v end
        local r = run(agent().to_process_spec({ session_name = "exit", prompt = "hi", env = env }))
        assert.are.equal("hi", r.stdin)
        assert.are.equal(3, r.exit_code)
        pm.delete(inst.id, r.name)
      end)

      it("uploads a prompt over 128 KiB through spec.files and feeds it on stdin", function()
        local chunk = NASTY .. ALL_BYTES
        local prompt = chunk:rep(math.ceil(200 * 1024 / #chunk))
        assert.is_true(#prompt > 128 * 1024)
        local spec = agent().to_process_spec({ session_name = "big", prompt = prompt, system_prompt = "small\n",
          env = f.env })
        assert.are.equal(1, #spec.files)
        assert.are.equal("~/.galley/sessions/cc-big/prompt.txt", spec.files[1].path)
        local r = run(spec)
        assert.are.equal(0, r.exit_code)
        assert.are.equal(#prompt, #r.stdin)
        assert.are.equal(prompt, r.stdin)
        assert.are.equal("small\n", flag_value(r.argv, "--append-system-prompt"))
        local mode = p.exec(inst.id, { kind = "argv", command = "stat",
          args = { "-c", "%a", f.home .. "/.galley/sessions/cc-big/prompt.txt" } }).stdout
        assert.are.equal("600\n", mode)
        pm.delete(inst.id, r.name)
      end)

      it("uploads a large system prompt and passes it with --append-system-prompt-file", function()
        local system_prompt = (NASTY .. "rules\n"):rep(3000)
        local spec = agent().to_process_spec({ session_name = "bigsys", prompt = "short 'q'\n",
          system_prompt = system_prompt, env = f.env })
        assert.are.equal(1, #spec.files)
        local r = run(spec)
        assert.are.equal(0, r.exit_code)
        assert.are.equal("short 'q'\n", r.stdin)
        assert.is_nil(index_of(r.argv, "--append-system-prompt"))
        assert.are.equal(system_prompt, r.system_prompt_file)
        pm.delete(inst.id, r.name)
      end)
    end)
end
