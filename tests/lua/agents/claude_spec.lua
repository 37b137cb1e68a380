local claude = require("galley.agents.claude")
local codec = require("galley.core.codec")
local shell = require("galley.core.shell")
local support = require("support")
local q = support.q

local FAKE = support.source_dir .. "/tests/lua/fixtures/fake-claude"

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function assert_invalid(path, f, ...)
  local err = raised(f, ...)
  assert.are.equal("VALIDATION_ERROR", err.code, tostring(err))
  assert.are.equal("AgentError", err.kind, tostring(err))
  assert.are.equal(path, err.details.path, tostring(err))
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return (out:gsub("\n$", ""))
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

-- A scratch area: home/ (the remote $HOME), work/ (cwd), bin/ (claude = fake-claude), rec/.
local function sandbox()
  local root = sh("mktemp -d")
  for _, d in ipairs({ "home", "work", "bin", "rec" }) do os.execute("mkdir -p " .. q(root .. "/" .. d)) end
  os.execute(("ln -s \"$(realpath %s)\" %s"):format(q(FAKE), q(root .. "/bin/claude")))
  return {
    root = root, home = root .. "/home", cwd = root .. "/work", bin = root .. "/bin", rec = root .. "/rec",
    cleanup = function() os.execute("rm -rf " .. q(root)) end,
  }
end

-- Runs a ProcessSpec the way a process manager does: writes spec.files first (mode as given),
-- turns the command into one bash payload with galley.core.shell.plan, and runs `bash -c <payload>`
-- with the fake claude first on PATH, CLAUDECODE and ANTHROPIC_API_KEY set in the caller's env.
local function run(box, spec, env)
  os.execute("rm -f " .. q(box.rec) .. "/*")
  for _, f in ipairs(spec.files or {}) do
    local path = shell.expand_home(f.path, box.home)
    os.execute("mkdir -p " .. q(path:match("^(.*)/[^/]*$")))
    write(path, f.content)
    os.execute(("chmod %s %s"):format(f.mode, q(path)))
  end
  local plan = shell.plan(spec.command, { home = box.home })
  local payload = assert(plan.script, "expected a script plan")
  assert.is_true(#payload < 128 * 1024, "the payload must fit in one argv element")
  local vars = {
    ("PATH=%s:%s"):format(box.bin, os.getenv("PATH")), "HOME=" .. box.home, "FAKE_CLAUDE_DIR=" .. box.rec,
    "CLAUDECODE=1", "ANTHROPIC_API_KEY=sk-ant-from-the-callers-env",
  }
  for _, v in ipairs(env or {}) do vars[#vars + 1] = v end
  local words = {}
  for i, v in ipairs(vars) do words[i] = q(v) end
  local cmd = ("env -u IS_SANDBOX -u FAKE_CLAUDE_EXIT %s bash -c %s </dev/null >%s 2>%s"):format(
    table.concat(words, " "), q(payload), q(box.root .. "/out"), q(box.root .. "/err"))
  local _, _, status = os.execute(cmd)
  local argv = {}
  for a in (read(box.rec .. "/argv") or ""):gmatch("([^%z]*)%z") do argv[#argv + 1] = a end
  local envs = {}
  for line in (read(box.rec .. "/env") or ""):gmatch("[^\n]+") do
    local name, value = line:match("^([%w_]+)=(.*)$")
    if name then envs[name] = value else envs[line:match("^[%w_]+")] = false end
  end
  return {
    status = status, argv = argv, stdin = read(box.rec .. "/stdin"), env = envs,
    cwd = read(box.rec .. "/cwd"), stderr = read(box.root .. "/err"), stdout = read(box.root .. "/out"),
    system_prompt_file = read(box.rec .. "/system_prompt_file"),
  }
end

local function index_of(list, value)
  for i, v in ipairs(list) do
    if v == value then return i end
  end
end

local function flag_value(argv, flag)
  local i = index_of(argv, flag)
  return i and argv[i + 1]
end

-- Every byte value, quotes, $, backticks, backslashes, newlines, non-ASCII and a leading dash.
local NASTY = "-p 'single' \"double\" $HOME ${X:-y} $(echo no) `echo no` \\n \\ \n\ttab\r\n"
  .. "ünïcödé 日本語 🚀 %s %% !! \n\n"
local ALL_BYTES = {}
for b = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(b) end
ALL_BYTES = table.concat(ALL_BYTES)

describe("the Claude agent #agents", function()
  describe("builds a ProcessSpec", function()
    it("with the documented defaults", function()
      local agent = claude.new()
      assert.are.equal("claude", agent.name)
      local spec = agent.to_process_spec({ session_name = "Fix bug #12!", prompt = "Say hi" })
      assert.are.equal("shell", spec.command.kind)
      assert.are.equal("cc-Fix-bug-12", spec.command.name)
      assert.are.equal("never", spec.restart)
      assert.are.equal("/root/operator/sw-compose", spec.command.cwd)
      assert.are.same({ IS_SANDBOX = "1" }, spec.command.env)
      assert.is_nil(spec.files)
      local script = spec.command.script
      assert.truthy(script:find("^set %-o pipefail\n"))
      assert.truthy(script:find("unset CLAUDECODE ANTHROPIC_API_KEY\n", 1, true))
      assert.truthy(script:find("printf %s '" .. codec.base64_encode("Say hi") .. "' | base64 -d | claude -p", 1, true))
      assert.truthy(script:find("--model sonnet --output-format text --dangerously-skip-permissions", 1, true))
      assert.falsy(script:find("Say hi", 1, true))
      assert.falsy(script:find("--verbose", 1, true))
    end)

    it("takes model, format and cwd from the options, and the input over them", function()
      local agent = claude.new({ model = "opus", output_format = "json", cwd = "~/proj", claude_bin = "/opt/claude" })
      local spec = agent.to_process_spec({ session_name = "a", prompt = "x" })
      assert.truthy(spec.command.script:find("/opt/claude -p --model opus --output-format json", 1, true))
      assert.are.equal("~/proj", spec.command.cwd)
      spec = agent.to_process_spec({ session_name = "a", prompt = "x", model = "haiku", output_format = "stream-json",
        cwd = "/srv" })
      assert.truthy(spec.command.script:find("--model haiku --output-format stream-json --verbose", 1, true))
      assert.are.equal("/srv", spec.command.cwd)
    end)

    it("sets IS_SANDBOX only for root with skipped permissions", function()
      local spec = claude.new({ skip_permissions = false }).to_process_spec({ session_name = "a", prompt = "x" })
      assert.is_nil(spec.command.env)
      assert.falsy(spec.command.script:find("--dangerously-skip-permissions", 1, true))
      spec = claude.new({ run_as_root = false }).to_process_spec({ session_name = "a", prompt = "x" })
      assert.is_nil(spec.command.env)
      assert.truthy(spec.command.script:find("--dangerously-skip-permissions", 1, true))
    end)

    it("puts no secret in the spec unless the caller passes it in input.env", function()
      local spec = claude.new().to_process_spec({ session_name = "a", prompt = "x", system_prompt = "y" })
      local text = require("cjson").encode(spec)
      assert.falsy(text:find("sk-ant", 1, true))
      assert.falsy(text:find("TOKEN", 1, true))
      spec = claude.new().to_process_spec({ session_name = "a", prompt = "x",
        env = { ANTHROPIC_API_KEY = "sk-ant-given", CLAUDECODE = "1" } })
      assert.are.equal("sk-ant-given", spec.command.env.ANTHROPIC_API_KEY)
      assert.falsy(spec.command.script:find("unset", 1, true))
    end)

    it("rejects bad options and input, naming the field", function()
      assert_invalid("opts.modle", claude.new, { modle = "opus" })
      assert_invalid("opts.output_format", claude.new, { output_format = "yaml" })
      assert_invalid("opts.skip_permissions", claude.new, { skip_permissions = "yes" })
      assert_invalid("opts.cwd", claude.new, { cwd = "relative" })
      local agent = claude.new()
      assert_invalid("input", agent.to_process_spec, "prompt")
      assert_invalid("input.session_name", agent.to_process_spec, { prompt = "x" })
      assert_invalid("input.session_name", agent.to_process_spec, { session_name = "#!", prompt = "x" })
      assert_invalid("input.prompt", agent.to_process_spec, { session_name = "a" })
      assert_invalid("input.prompt", agent.to_process_spec, { session_name = "a", prompt = "" })
      assert_invalid("input.prompt", agent.to_process_spec, { session_name = "a", prompt = ("x"):rep(10000001) })
      assert_invalid("input.promt", agent.to_process_spec, { session_name = "a", prompt = "x", promt = "y" })
      assert_invalid("input.system_prompt", agent.to_process_spec, { session_name = "a", prompt = "x",
        system_prompt = "a\0b" })
      assert_invalid("input.output_format", agent.to_process_spec, { session_name = "a", prompt = "x",
        output_format = "xml" })
      assert_invalid("input.extra_args", agent.to_process_spec, { session_name = "a", prompt = "x",
        extra_args = "--max-turns 3" })
      assert_invalid("input.extra_args", agent.to_process_spec, { session_name = "a", prompt = "x",
        extra_args = { max_turns = 3 } })
      assert_invalid("input.extra_args[2]", agent.to_process_spec, { session_name = "a", prompt = "x",
        extra_args = { "--max-turns", 3 } })
      assert_invalid("input.cwd", agent.to_process_spec, { session_name = "a", prompt = "x", cwd = "rel" })
      assert_invalid('input.env["BAD NAME"]', agent.to_process_spec, { session_name = "a", prompt = "x",
        env = { ["BAD NAME"] = "1" } })
    end)
  end)

  describe("run through real bash with a stand-in claude #bash", function()
    local box
    before_each(function() box = sandbox() end)
    after_each(function() box.cleanup() end)

    it("delivers prompt, system prompt and extra args byte for byte", function()
      local system_prompt = "Be terse.\n" .. NASTY .. "'\n\n"
      local extra = { "--max-turns", "3", "--allowedTools", "Bash(git diff *) Read", "it's $HOME `x`" }
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "nasty", prompt = NASTY .. ALL_BYTES,
        system_prompt = system_prompt, extra_args = extra })
      local r = run(box, spec)
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal(NASTY .. ALL_BYTES, r.stdin)
      assert.are.equal(system_prompt, flag_value(r.argv, "--append-system-prompt"))
      assert.are.equal("sonnet", flag_value(r.argv, "--model"))
      assert.are.equal("text", flag_value(r.argv, "--output-format"))
      assert.are.equal("-p", r.argv[1])
      local first = index_of(r.argv, "--max-turns")
      assert.are.same(extra, { table.unpack(r.argv, first, first + #extra - 1) })
      assert.are.equal(box.cwd, (r.cwd:gsub("\n$", "")))
    end)

    it("unsets CLAUDECODE and ANTHROPIC_API_KEY and sets IS_SANDBOX", function()
      local r = run(box, claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "env", prompt = "hi" }))
      assert.are.equal(0, r.status, r.stderr)
      assert.is_false(r.env.CLAUDECODE)
      assert.is_false(r.env.ANTHROPIC_API_KEY)
      assert.are.equal("1", r.env.IS_SANDBOX)
      assert.is_nil(index_of(r.argv, "--verbose"))
    end)

    it("passes ANTHROPIC_API_KEY when the caller gives it explicitly", function()
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "key", prompt = "hi",
        env = { ANTHROPIC_API_KEY = "sk-ant-explicit" } })
      local r = run(box, spec)
      assert.are.equal("sk-ant-explicit", r.env.ANTHROPIC_API_KEY)
      assert.is_false(r.env.CLAUDECODE)
    end)

    it("adds --verbose for stream-json and drops the skip flag when asked", function()
      local spec = claude.new({ cwd = box.cwd, skip_permissions = false }).to_process_spec({ session_name = "s",
        prompt = "hi", output_format = "stream-json" })
      local r = run(box, spec)
      assert.are.equal("stream-json", flag_value(r.argv, "--output-format"))
      assert.truthy(index_of(r.argv, "--verbose"))
      assert.is_nil(index_of(r.argv, "--dangerously-skip-permissions"))
      assert.is_false(r.env.IS_SANDBOX)
    end)

    it("ends with claude's exit status", function()
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "fail", prompt = "hi",
        system_prompt = "s" })
      assert.are.equal(3, run(box, spec, { "FAKE_CLAUDE_EXIT=3" }).status)
      assert.are.equal(0, run(box, spec, { "FAKE_CLAUDE_EXIT=0" }).status)
    end)

    it("fails when decoding fails even though claude succeeds (pipefail)", function()
      write(box.bin .. "/base64", "#!/bin/sh\ncat >/dev/null\nexit 1\n")
      os.execute("chmod +x " .. q(box.bin .. "/base64"))
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "dec", prompt = "hi" })
      assert.are_not.equal(0, run(box, spec).status)
      spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "dec", prompt = "hi", system_prompt = "s" })
      local r = run(box, spec)
      assert.are_not.equal(0, r.status)
      assert.is_nil(r.stdin, "claude must not run without its system prompt")
    end)

    it("moves a 200 KiB prompt into an uploaded file and reads it from there", function()
      local chunk = NASTY .. ALL_BYTES
      local prompt = chunk:rep(math.ceil(200 * 1024 / #chunk))
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "big", prompt = prompt,
        system_prompt = "small" })
      assert.are.equal(1, #spec.files)
      assert.are.same({ path = "~/.galley/sessions/cc-big/prompt.txt", content = prompt, mode = "600" }, spec.files[1])
      assert.is_true(#spec.command.script < 4096)
      local r = run(box, spec)
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal(prompt, r.stdin)
      assert.are.equal("small", flag_value(r.argv, "--append-system-prompt"))
      assert.are.equal("600", sh("stat -c %a " .. q(box.home .. "/.galley/sessions/cc-big/prompt.txt")))
    end)

    it("moves a large system prompt into a file passed with --append-system-prompt-file", function()
      local system_prompt = (NASTY .. "rules\n"):rep(3000)
      local spec = claude.new({ cwd = box.cwd }).to_process_spec({ session_name = "bigsys", prompt = "short",
        system_prompt = system_prompt })
      assert.are.equal(1, #spec.files)
      assert.are.equal("~/.galley/sessions/cc-bigsys/system-prompt.txt", spec.files[1].path)
      local r = run(box, spec)
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("short", r.stdin)
      assert.is_nil(index_of(r.argv, "--append-system-prompt"))
      assert.are.equal(system_prompt, r.system_prompt_file)
    end)

    it("moves the larger payload first, then both, under a custom limit and directory", function()
      local agent = claude.new({ cwd = box.cwd, inline_limit = 200, prompt_dir = box.root .. "/prompts/" })
      local spec = agent.to_process_spec({ session_name = "mix", prompt = ("p"):rep(60),
        system_prompt = ("s"):rep(120) })
      assert.are.equal(1, #spec.files)
      assert.are.equal(box.root .. "/prompts/cc-mix/system-prompt.txt", spec.files[1].path)
      spec = agent.to_process_spec({ session_name = "mix", prompt = ("p"):rep(180), system_prompt = ("s"):rep(160) })
      assert.are.equal(2, #spec.files)
      assert.are.equal(box.root .. "/prompts/cc-mix/prompt.txt", spec.files[1].path)
      local r = run(box, spec)
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal(("p"):rep(180), r.stdin)
      assert.are.equal(("s"):rep(160), r.system_prompt_file)
    end)
  end)

  -- The REAL Claude Code CLI (support.claude_cli) against the loopback FAKE Anthropic API, on the
  -- host provider double (an instance is a scratch HOME on this machine), with credentials put
  -- there by galley.credentials. Falls back to nothing: the stand-in runs above.
  local cli = require("support.claude_cli")
  local describe_real = cli.real() and describe or pending
  if not cli.real() then cli.warn("claude_spec") end
  describe_real("run by the real Claude Code CLI against the FAKE Anthropic API #claude_cli", function()
    local credentials = require("galley.credentials")
    local fake_api = require("support.fake_anthropic")
    local host = require("support.host_provider")
    local logmod = require("galley.log")
    local fake, p, inst, installer
    local TOKEN = "sk-ant-oat01-galley-spec-" .. ("A"):rep(70)
    local KEY = "sk-ant-api03-galley-spec-" .. ("B"):rep(70)
    -- Valid UTF-8 (the API carries JSON text): quotes, $, backticks, backslashes, CR, newlines.
    local PROMPT = NASTY .. "end 'q'\n"

    setup(function()
      fake = fake_api.start({ reply = "FAKE reply: hi from the loopback API" })
      p = host.new()
      inst = p.instances.boot()
      installer = credentials.new({ provider = p, log = logmod.silent() })
    end)

    teardown(function()
      if inst then p.instances.terminate(inst.id) end
      if fake then fake.stop() end
    end)

    local function install_oauth(scopes)
      p.exec(inst.id, { kind = "argv", command = "rm", args = { "-rf", inst.home .. "/.claude", inst.home .. "/.claude.json" } })
      installer.install(inst.id, credentials.claude_profile({ access_token = TOKEN, refresh_token = "sk-ant-ort01-r",
        expires_at_ms = (os.time() + 3600) * 1000, scopes = scopes, trust_dirs = { "~/work" } }))
    end

    -- The profile boot-and-run installs for an API key: the key in a 0600 file, read by apiKeyHelper.
    local function install_api_key()
      p.exec(inst.id, { kind = "argv", command = "rm", args = { "-rf", inst.home .. "/.claude", inst.home .. "/.claude.json" } })
      installer.install(inst.id, { name = "claude-api-key", directories = { { path = "~/.claude", mode = "700" } },
        files = {
          { path = "~/.claude/anthropic-api-key", content = KEY, mode = "600", secret = true },
          { path = "~/.claude/settings.json", json = { apiKeyHelper = "cat ~/.claude/anthropic-api-key" },
            merge = "shallow", mode = "600" },
          { path = "~/.claude.json", json = { hasCompletedOnboarding = true }, merge = "deep", mode = "600" },
        } })
    end

    -- Runs the agent's ProcessSpec on the instance (files first), claude pointed at the FAKE.
    local function run_real(spec)
      fake.reset()
      for _, f in ipairs(spec.files or {}) do
        p.files.write_file_atomic(inst.id, f.path, f.content, { mode = f.mode, create_dirs = true })
      end
      local env = {}
      for k, v in pairs(fake.env) do env[k] = v end
      for k, v in pairs(spec.command.env or {}) do env[k] = v end
      p.exec(inst.id, { kind = "argv", command = "mkdir", args = { "-p", inst.home .. "/work" } })
      return p.exec(inst.id, { kind = "shell", script = spec.command.script, cwd = spec.command.cwd, env = env })
    end

    local function agent(opts)
      opts = opts or {}
      opts.cwd = "~/work"
      return claude.new(opts)
    end

    local function last_system_text(req)
      local sys = req.json.system
      if type(sys) == "string" then return sys end
      return sys[#sys].text
    end

    it("accepts galley's .credentials.json: the prompt, model, system prompt and token reach the API", function()
      install_oauth({ "user:inference" })
      local spec = agent().to_process_spec({ session_name = "real", prompt = PROMPT, model = "claude-galley-test-1",
        system_prompt = "Be terse. 'sys' $HOME\n" })
      local r = run_real(spec)
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("FAKE reply: hi from the loopback API\n", r.stdout)
      local req = fake.find_prompt(PROMPT)
      assert.truthy(req, "the FAKE never saw the prompt byte for byte")
      assert.are.equal("claude-galley-test-1", req.json.model)
      assert.are.same({ "bearer", TOKEN }, { fake_api.credential(req) })
      assert.are.equal("Be terse. 'sys' $HOME\n", last_system_text(req):sub(-#"Be terse. 'sys' $HOME\n"))
      assert.are.same({}, fake.outside(), "the CLI tried to reach another host")
    end)

    it("with the user:profile scope also asks api.anthropic.com for the OAuth profile (trapped, refused)", function()
      install_oauth(nil) -- galley's default scopes: user:inference user:profile
      local r = run_real(agent().to_process_spec({ session_name = "profile", prompt = "hi there" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.same({ "bearer", TOKEN }, { fake_api.credential(assert(fake.find_prompt("hi there"))) })
      assert.are.same({ "CONNECT api.anthropic.com:443" }, fake.outside())
    end)

    it("accepts the apiKeyHelper profile: the key from the 0600 file reaches the API", function()
      install_api_key()
      local r = run_real(agent().to_process_spec({ session_name = "key", prompt = "with a key", output_format = "json" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      local out = require("cjson").decode(r.stdout)
      assert.are.equal("FAKE reply: hi from the loopback API", out.result)
      local req = assert(fake.find_prompt("with a key"))
      assert.are.equal(KEY, req.headers["x-api-key"])
      assert.are.same({}, fake.outside())
    end)

    it("streams JSON lines with stream-json (--verbose added), extra args passed", function()
      install_oauth({ "user:inference" })
      local r = run_real(agent().to_process_spec({ session_name = "stream", prompt = "stream it",
        output_format = "stream-json", extra_args = { "--max-turns", "3" } }))
      assert.are.equal(0, r.exit_code, r.stderr)
      local last
      for line in r.stdout:gmatch("[^\n]+") do last = require("cjson").decode(line) end
      assert.are.equal("result", last.type)
      assert.are.equal("FAKE reply: hi from the loopback API", last.result)
      assert.truthy(fake.find_prompt("stream it"))
    end)

    it("runs --dangerously-skip-permissions as root only with IS_SANDBOX=1", function()
      install_oauth({ "user:inference" })
      local r = run_real(agent({ run_as_root = false }).to_process_spec({ session_name = "root", prompt = "refused" }))
      assert.are.equal(1, r.exit_code)
      assert.are.same({}, fake.messages())
      r = run_real(agent().to_process_spec({ session_name = "root", prompt = "allowed" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.truthy(fake.find_prompt("allowed"))
    end)

    it("feeds a 200 KiB prompt from the uploaded file byte for byte", function()
      install_oauth({ "user:inference" })
      local prompt = (PROMPT .. "ünïcödé 日本語\n"):rep(math.ceil(200 * 1024 / #PROMPT))
      local spec = agent().to_process_spec({ session_name = "big", prompt = prompt, system_prompt = ("rules\n"):rep(20000) })
      assert.are.equal(2, #spec.files)
      local r = run_real(spec)
      assert.are.equal(0, r.exit_code, r.stderr)
      local req = assert(fake.find_prompt(prompt), "the FAKE never saw the big prompt")
      assert.are.equal(("rules\n"):rep(20000), last_system_text(req):sub(-120000))
    end)

    -- No proxy here: the raw network. strace records every connect() of the CLI and its children.
    local it_strace = require("galley.core.proc").which("strace") and it or pending
    it_strace("connects to nothing but the loopback FAKE: no other address, no DNS (strace)", function()
      local raw = {}
      for k, v in pairs(fake.env) do
        if not k:lower():find("proxy", 1, true) then raw[k] = v end
      end
      local trace = inst.root .. "/connect.trace"
      p.exec(inst.id, { kind = "argv", command = "mkdir", args = { "-p", inst.home .. "/work" } })
      for _, install in ipairs({ function() install_oauth({ "user:inference" }) end, install_api_key }) do
        install()
        fake.reset()
        local spec = agent().to_process_spec({ session_name = "net", prompt = "network check" })
        local env = { IS_SANDBOX = "1" }
        for k, v in pairs(raw) do env[k] = v end
        local r = p.exec(inst.id, { kind = "argv", command = "strace", cwd = "~/work", env = env,
          args = { "-f", "-qq", "-e", "trace=connect", "-o", trace, "/bin/bash", "-c", spec.command.script } })
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.truthy(fake.find_prompt("network check"))
        local f = assert(io.open(trace, "rb"))
        local text = f:read("a")
        f:close()
        local inet = 0
        for line in text:gmatch("[^\n]+") do
          if line:find("AF_INET", 1, true) then
            inet = inet + 1
            local port = tonumber(line:match("htons%((%d+)%)"))
            assert.truthy(line:find('inet_addr("127.0.0.1")', 1, true) and port == fake.port, line)
          end
        end
        assert.is_true(inet > 0, "strace saw no connection at all")
      end
    end)

    it("exits non-zero when the API refuses the request", function()
      install_oauth({ "user:inference" })
      fake.fail = { status = 400 }
      local ok, r = pcall(run_real, agent().to_process_spec({ session_name = "fail", prompt = "fails" }))
      fake.fail = nil
      assert.is_true(ok, tostring(r))
      assert.are_not.equal(0, r.exit_code)
      assert.truthy(fake.find_prompt("fails"))
    end)
  end)
end)
