-- galley.credentials: profile checks, the Claude profile, the one-exec plan, and real installs on
-- an instance of the local provider (bubblewrap sandbox when available), read by the real Claude
-- Code CLI (which talks to the loopback FAKE Anthropic API).
local credentials = require("galley.credentials")
local codec = require("galley.core.codec")
local cjson = require("cjson")
local errors = require("galley.errors")
local log = require("galley.log")
local proc = require("galley.core.proc")
local cli = require("support.claude_cli")
local fake_api = require("support.fake_anthropic")
local support = require("support")
local emulator = require("support.emulator")

local shell_q = support.q
local api_env = {}

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function fake_token(prefix)
  return (prefix .. codec.base64_encode(codec.random_bytes(80), "urlsafe")):sub(1, 108)
end

local function claude_input(extra)
  local t = { access_token = fake_token("sk-ant-oat01-"), refresh_token = fake_token("sk-ant-ort01-"),
    expires_at_ms = 1767225600000 }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

-- Every string that would show a token: the token, and its base64 forms at each alignment.
local function token_forms(token)
  local forms = { token }
  for skip = 0, 2 do
    local core = token:sub(1 + skip)
    core = core:sub(1, #core - #core % 3)
    forms[#forms + 1] = codec.base64_encode(core, "standard"):gsub("=+$", "")
    forms[#forms + 1] = codec.base64_encode(core, "urlsafe"):gsub("=+$", "")
  end
  return forms
end

describe("galley.credentials #credentials", function()
  describe("claude_profile", function()
    it("builds ~/.claude (0700), the credentials file (0600, shallow merge) and a deep merge of .claude.json",
      function()
        local input = claude_input({ trust_dirs = { "/root/operator/sw-compose", "~/work/" },
          subscription_type = "max", scopes = "user:inference user:profile user:sessions:claude_code" })
        local p = credentials.claude_profile(input)
        assert.are.equal("claude", p.name)
        assert.are.same({ { path = "~/.claude", mode = "700" } }, p.directories)
        local cred, state = p.files[1], p.files[2]
        assert.are.equal("~/.claude/.credentials.json", cred.path)
        assert.are.equal("600", cred.mode)
        assert.is_true(cred.secret)
        assert.are.equal("shallow", cred.merge)
        assert.are.same({ claudeAiOauth = {
          accessToken = input.access_token, refreshToken = input.refresh_token, expiresAt = 1767225600000,
          scopes = { "user:inference", "user:profile", "user:sessions:claude_code" }, subscriptionType = "max",
        } }, cred.json)
        assert.are.equal("~/.claude.json", state.path)
        assert.are.equal("deep", state.merge)
        assert.are.equal("600", state.mode)
        assert.are.same({ hasCompletedOnboarding = true, projects = {
          ["/root/operator/sw-compose"] = { hasTrustDialogAccepted = true },
          ["~/work"] = { hasTrustDialogAccepted = true } } }, state.json)
      end)

    it("puts both files in config_dir when given", function()
      local p = credentials.claude_profile(claude_input({ config_dir = "/srv/claude/" }))
      assert.are.equal("/srv/claude", p.directories[1].path)
      assert.are.equal("/srv/claude/.credentials.json", p.files[1].path)
      assert.are.equal("/srv/claude/.claude.json", p.files[2].path)
    end)

    it("takes galley.oauth.claude credentials as they are", function()
      local input = claude_input({ expires_in = 28800, token_type = "Bearer", scopes = { "user:inference" },
        account = { uuid = "u" }, organization = { uuid = "o" }, obtained_at_ms = 1 })
      assert.are.equal("claude", credentials.claude_profile(input).name)
    end)

    it("rejects a missing token, an expiry in seconds and unknown fields #failure", function()
      local err = raised(credentials.claude_profile, { expires_at_ms = 1767225600000 })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("claude_profile.access_token", err.field)
      err = raised(credentials.claude_profile, claude_input({ expires_at_ms = 1767225600 }))
      assert.are.equal("claude_profile.expires_at_ms", err.field)
      err = raised(credentials.claude_profile, claude_input({ acces_token = "typo" }))
      assert.are.equal("claude_profile.acces_token", err.field)
      err = raised(credentials.claude_profile, claude_input({ trust_dirs = { "relative/dir" } }))
      assert.are.equal("claude_profile.trust_dirs[1]", err.field)
    end)

    it("never puts a token into an error message", function()
      local input = claude_input({ scopes = {} })
      local err = raised(credentials.claude_profile, input)
      assert.is_nil(tostring(err):find(input.access_token, 1, true))
    end)
  end)

  describe("check_profile", function()
    it("names the offending entry #failure", function()
      local err = raised(credentials.check_profile, { name = "x", files = { { path = "~/a", content = "x" },
        { path = "~/b", content = "y", mode = 600 } } })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("profile.files[2].mode", err.field)
      err = raised(credentials.check_profile, { name = "x", files = { { path = "~/a", content = "x", json = {} } } })
      assert.are.equal("profile.files[1]", err.field)
      err = raised(credentials.check_profile, { name = "x", directories = { { path = "rel" } } })
      assert.are.equal("profile.directories[1].path", err.field)
      err = raised(credentials.check_profile, { name = "x", post_install = { kind = "argv" } })
      assert.are.equal("profile.post_install.command", err.field)
    end)

    it("gives secret files mode 600 by default", function()
      local p = credentials.check_profile({ name = "x",
        files = { { path = "~/k", content = "s3cret", secret = true } } })
      assert.are.equal("600", p.files[1].mode)
    end)
  end)

  describe("plan", function()
    local provider = { exec = function() error("not used") end, capabilities = { home_dir = "/root" } }

    it("puts two small profiles in one exec whose argv holds no secret", function()
      local input = claude_input()
      local installer = credentials.new({ provider = provider, log = log.silent() })
      local plan = installer.plan({ credentials.claude_profile(input),
        { name = "gh", files = { { path = "~/.config/gh/hosts.yml", content = "token: ghp_x\n", secret = true } } } })
      assert.are.equal(1, #plan.steps)
      local spec = plan.steps[1].spec
      assert.are.equal("argv", spec.kind)
      assert.are.equal("python3", spec.command)
      local argv = table.concat(spec.args, "\0")
      for _, t in ipairs({ input.access_token, input.refresh_token }) do
        for _, form in ipairs(token_forms(t)) do
          assert.is_nil(argv:find(form, 1, true), "a token form is in argv")
        end
      end
      assert.is_string(spec.env.GALLEY_CREDS_0)
    end)

    it("splits big payloads over several execs and sends huge files through the files API", function()
      local installer = credentials.new({ provider = provider, log = log.silent(), max_exec_bytes = 8192,
        env_chunk_bytes = 1000 })
      local plan = installer.plan({
        { name = "a", files = { { path = "~/a", content = ("a"):rep(3000) },
          { path = "~/b", content = ("b"):rep(3000) } } },
        { name = "big", files = { { path = "~/big", content = ("c"):rep(20000) } } },
      })
      local kinds = {}
      for i, s in ipairs(plan.steps) do kinds[i] = s.kind end
      assert.are.same({ "exec", "exec", "large_file" }, kinds)
      assert.is_string(plan.steps[1].spec.env.GALLEY_CREDS_5)
    end)

    it("sizes payloads to one exec line on a provider that sends each exec as one line", function()
      local line = { exec = provider.exec, capabilities = { home_dir = "/root", max_command_bytes = 120 * 1024 } }
      local installer = credentials.new({ provider = line, log = log.silent() })
      local files = {}
      for i = 1, 6 do files[i] = { path = "~/f" .. i, content = ("x"):rep(30000) } end
      local plan = installer.plan({ { name = "many", files = files } })
      assert.is_true(#plan.steps > 1)
      for _, step in ipairs(plan.steps) do
        assert.are.equal("exec", step.kind)
        assert.is_true(step.bytes <= 120 * 1024 - credentials.LINE_OVERHEAD_BYTES, step.bytes)
      end
      -- Without the capability, one exec carries it all.
      assert.are.equal(1, #credentials.new({ provider = provider, log = log.silent() }).plan({
        { name = "many", files = files } }).steps)
    end)
  end)

  describe("on a local instance", function()
    local provider, state, inst, installer, records

    local function sh(script)
      local r = provider.exec(inst.id, { kind = "argv", command = "sh", args = { "-c", script } })
      assert.are.equal(0, r.exit_code, r.stderr)
      return r.stdout
    end

    local function read_json(path)
      return cjson.decode(provider.files.read_file(inst.id, path))
    end

    setup(function()
      state = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-creds-XXXXXX" } })).stdout:gsub("%s+$", "")
      provider = require("galley.providers.local").new({ state_dir = state, log = log.silent() })
      inst = provider.instances.boot(provider.DEFAULT_SNAPSHOT, { ttl_seconds = 900 })
    end)

    teardown(function()
      if inst then pcall(provider.instances.terminate, inst.id) end
      proc.run({ argv = { "rm", "-rf", "--", state } })
    end)

    before_each(function()
      local logger
      logger, records = log.capture()
      installer = credentials.new({ provider = provider, log = logger })
    end)

    it("installs the Claude profile in one exec, keeping what the files already hold", function()
      provider.files.write_file_atomic(inst.id, "~/.claude.json", cjson.encode({
        numStartups = 7, projects = { ["/srv/app"] = { allowedTools = { "Bash" } } } }), {})
      provider.files.write_file_atomic(inst.id, "~/.claude/.credentials.json", cjson.encode({
        mcpOAuth = { server = { accessToken = "old-mcp-token" } },
        claudeAiOauth = { accessToken = "old", rateLimitTier = "stale" } }), { create_dirs = true })
      local input = claude_input({ trust_dirs = { "~/work", "/srv/app" } })
      local home = sh("printf %s \"$HOME\"")
      local res = installer.install(inst.id, credentials.claude_profile(input))
      assert.are.equal(1, res.execs)

      local creds = read_json("~/.claude/.credentials.json")
      assert.are.same({ server = { accessToken = "old-mcp-token" } }, creds.mcpOAuth)
      assert.are.equal(input.access_token, creds.claudeAiOauth.accessToken)
      assert.are.equal(input.refresh_token, creds.claudeAiOauth.refreshToken)
      assert.are.equal(1767225600000, math.tointeger(creds.claudeAiOauth.expiresAt))
      assert.are.same({ "user:inference", "user:profile" }, creds.claudeAiOauth.scopes)
      assert.is_nil(creds.claudeAiOauth.rateLimitTier)

      local st = read_json("~/.claude.json")
      assert.are.equal(7, math.tointeger(st.numStartups))
      assert.is_true(st.hasCompletedOnboarding)
      assert.are.same({ allowedTools = { "Bash" }, hasTrustDialogAccepted = true }, st.projects["/srv/app"])
      assert.are.same({ hasTrustDialogAccepted = true }, st.projects[home .. "/work"])

      assert.are.equal("700\n600\n600\n", sh("stat -c %a ~/.claude ~/.claude/.credentials.json ~/.claude.json"))
      assert.are.equal("", sh("ls -A ~/.claude | grep galley-tmp || true"))

      -- Logs name paths and sizes, and never needed redaction.
      local paths = {}
      for _, r in ipairs(records) do
        assert.is_nil(r.line:find("REDACTED", 1, true), r.line)
        assert.is_nil(r.line:find(input.access_token:sub(14, 40), 1, true))
        if r.fields.path then paths[#paths + 1] = r.fields.path end
        if r.msg == "credential file written" then assert.is_number(r.fields.bytes) end
      end
      assert.is_truthy(table.concat(paths, " "):find(home .. "/.claude/.credentials.json", 1, true))
    end)

    -- The REAL Claude Code CLI (support.claude_cli) reads what was installed, and a turn against
    -- the loopback FAKE Anthropic API carries the installed token or key.
    local it_real = cli.real() and it or pending
    if not cli.real() then cli.warn("credentials_spec") end

    local function claude_in_instance(args, stdin_text)
      local env = { IS_SANDBOX = "1" }
      for k, v in pairs(api_env) do env[k] = v end
      local script = ("printf %%s %s | claude %s"):format(shell_q(stdin_text or ""), args)
      return provider.exec(inst.id, { kind = "shell", script = script, env = env })
    end

    it_real("is accepted by the real claude CLI: the OAuth profile and the apiKeyHelper profile", function()
      local api = fake_api.start({ reply = "FAKE reply for credentials_spec" })
      api_env = api.env
      local ok, err = pcall(function()
        sh("rm -rf ~/.claude ~/.claude.json")
        local input = claude_input({ expires_at_ms = (os.time() + 3600) * 1000, scopes = { "user:inference" },
          subscription_type = "max" })
        installer.install(inst.id, credentials.claude_profile(input))
        local r = claude_in_instance("auth status")
        assert.are.equal(0, r.exit_code, r.stdout .. r.stderr)
        local status = cjson.decode(r.stdout)
        assert.is_true(status.loggedIn)
        assert.are.equal("claude.ai", status.authMethod)
        assert.are.equal("max", status.subscriptionType)
        r = claude_in_instance("-p --dangerously-skip-permissions", "hello from credentials_spec")
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal("FAKE reply for credentials_spec\n", r.stdout)
        local req = assert(api.find_prompt("hello from credentials_spec"))
        assert.are.same({ "bearer", input.access_token }, { fake_api.credential(req) })

        sh("rm -rf ~/.claude ~/.claude.json")
        local key = fake_token("sk-ant-api03-")
        installer.install(inst.id, { name = "claude-api-key", directories = { { path = "~/.claude", mode = "700" } },
          files = {
            { path = "~/.claude/anthropic-api-key", content = key, mode = "600", secret = true },
            { path = "~/.claude/settings.json", json = { apiKeyHelper = "cat ~/.claude/anthropic-api-key" },
              merge = "shallow", mode = "600" },
            { path = "~/.claude.json", json = { hasCompletedOnboarding = true }, merge = "deep", mode = "600" },
          } })
        r = claude_in_instance("auth status")
        assert.are.equal(0, r.exit_code, r.stdout .. r.stderr)
        assert.are.equal("api_key_helper", cjson.decode(r.stdout).authMethod)
        r = claude_in_instance("-p --dangerously-skip-permissions", "key from credentials_spec")
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal(key, assert(api.find_prompt("key from credentials_spec")).headers["x-api-key"])
        assert.are.same({}, api.outside())
      end)
      api.stop()
      if not ok then error(err, 0) end
    end)

    it("writes plain files with their modes and runs post_install", function()
      local res = installer.install_all(inst.id, {
        { name = "one", directories = { { path = "~/one", mode = "750" } },
          files = { { path = "~/one/key", content = "k1\n", secret = true } } },
        { name = "two", files = { { path = "~/two/cfg", content = "plain\n", mode = "644" } },
          post_install = { kind = "shell", script = "test -s ~/one/key" } },
      })
      assert.are.equal(2, res.execs) -- one batch + one post-install
      assert.are.equal("750\n600\n644\n", sh("stat -c %a ~/one ~/one/key ~/two/cfg"))
      assert.are.equal("k1\n", provider.files.read_file(inst.id, "~/one/key"))
    end)

    it("reads a file back with its tokens masked", function()
      local input = claude_input()
      installer.install(inst.id, credentials.claude_profile(input))
      local text = credentials.read_back_masked(provider, inst.id, "~/.claude/.credentials.json")
      assert.is_nil(text:find(input.access_token, 1, true))
      assert.is_nil(text:find(input.refresh_token, 1, true))
      assert.is_truthy(text:find('"accessToken": "sk-ant-oat01-…(108 chars)"', 1, true))
      assert.is_truthy(text:find('"expiresAt": 1767225600000', 1, true))
      local decoded = cjson.decode(text)
      assert.are.equal("sk-ant-ort01-…(108 chars)", decoded.claudeAiOauth.refreshToken)
    end)

    it("sends big payloads over several execs and the files API", function()
      local small = credentials.new({ provider = provider, log = log.silent(), max_exec_bytes = 8192 })
      local big = codec.random_bytes(30000)
      local res = small.install_all(inst.id, {
        { name = "a", files = { { path = "~/many/a", content = ("a"):rep(3000) },
          { path = "~/many/b", content = ("b"):rep(3000) } } },
        { name = "big", files = { { path = "~/many/big.bin", content = big, mode = "600" } } },
      })
      assert.are.equal(3, res.execs)
      assert.are.equal(big, provider.files.read_file(inst.id, "~/many/big.bin"))
      assert.are.equal(("b"):rep(3000), provider.files.read_file(inst.id, "~/many/b"))
    end)

    it("ends a hung post_install in CREDENTIALS_ERROR caused by TIMEOUT: every exec has a time limit #failure",
      function()
      assert.are.equal(120000, credentials.DEFAULT_EXEC_TIMEOUT_MS)
      local quick = credentials.new({ provider = provider, log = log.silent(), exec_timeout_ms = 1500 })
      local t0 = require("galley.core.runtime").now_ms()
      local err = raised(quick.install, inst.id, { name = "hangs", files = { { path = "~/hang/ok", content = "x" } },
        post_install = { kind = "argv", command = "sleep", args = { "600" } } })
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("TIMEOUT", err.details.cause.code)
      assert.is_true(require("galley.core.runtime").now_ms() - t0 < 60000)
      assert.are.equal("VALIDATION_ERROR", raised(credentials.new, { provider = provider, exec_timeout_ms = 0 }).code)
    end)

    it("fails with CREDENTIALS_ERROR and the path when a write fails #failure", function()
      sh("printf x > ~/blocker")
      local err = raised(installer.install, inst.id, { name = "p", files = {
        { path = "~/ok.txt", content = "fine" }, { path = "~/blocker/inside", content = "nope", secret = true } } })
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("CredentialsError", err.kind)
      assert.is_truthy(err.details.path:find("/blocker/inside$"))
      assert.are.equal("p", err.details.profile)
      assert.are.equal("io", err.details.reason)
      assert.is_truthy(err.resource:find("^file:"))
      assert.are.equal(1, #err.details.written)
    end)

    it("leaves a .claude.json that is not JSON alone #failure", function()
      sh("printf 'not json{' > ~/.claude.json")
      local err = raised(installer.install, inst.id, credentials.claude_profile(claude_input()))
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("invalid_json", err.details.reason)
      assert.are.equal("not json{", provider.files.read_file(inst.id, "~/.claude.json"))
      sh("rm -f ~/.claude.json")
    end)

    it("reports a failing post_install with its exit code #failure", function()
      local err = raised(installer.install, inst.id, { name = "chk", files = { { path = "~/x", content = "x" } },
        post_install = { kind = "argv", command = "sh", args = { "-c", "exit 4" } } })
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("post_install", err.details.step)
      assert.are.equal(4, err.details.exit_code)
    end)

    it("wraps a provider failure with the path, keeping its class as err.cause #failure", function()
      local err = raised(installer.install, "localvm_doesnotexist",
        { name = "p", files = { { path = "~/x", content = "x" } } })
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("NOT_FOUND", err.details.cause.code)
      assert.are.equal("NOT_FOUND", err.cause.code)
      assert.are.equal("~/x", err.details.path)
      assert.is_false(errors.is_retryable(err))
      assert.are.equal(1, err.attempt) -- not transient: not retried
    end)

    -- A 503 cannot happen on the local provider: a FAKE transient failure, raised by a wrapper
    -- around the real provider for the first `n` execs.
    local function flaky(n)
      local calls = 0
      local wrapped = setmetatable({}, { __index = provider })
      function wrapped.exec(...)
        calls = calls + 1
        if calls <= n then
          error(errors.ProviderError("SERVER_ERROR", "FAKE 503 from the wrapper", { operation = "exec" }), 0)
        end
        return provider.exec(...)
      end
      return wrapped, function() return calls end
    end

    it("retries a transient provider failure before wrapping it #failure", function()
      local p, calls = flaky(2)
      local res = credentials.new({ provider = p, log = log.silent(), retry = { base_delay_ms = 1 } }).install(inst.id,
        { name = "retried", files = { { path = "~/retried.txt", content = "after 503s" } } })
      assert.are.equal(1, res.execs)
      assert.are.equal(3, calls())
      assert.are.equal("after 503s", provider.files.read_file(inst.id, "~/retried.txt"))
      p, calls = flaky(5)
      local err = raised(credentials.new({ provider = p, log = log.silent(), retry = { base_delay_ms = 1 } }).install,
        inst.id, { name = "p", files = { { path = "~/gave-up.txt", content = "x" } } })
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("SERVER_ERROR", err.cause.code)
      assert.is_true(errors.is_retryable(err))
      assert.are.same({ 3, 3 }, { err.attempt, calls() })
    end)
  end)
  describe("on galley emulate with injected faults", function()
    local em, provider, inst

    setup(function()
      em = emulator.start({ boot_delay_ms = 0 })
      provider = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url,
        log = log.silent() })
      inst = provider.instances.boot(emulator.SNAPSHOT, { ttl_seconds = 900 })
    end)

    teardown(function()
      if provider then provider.close() end
      if em then em:stop() end
    end)

    local function exec_statuses()
      local out = {}
      for _, r in ipairs(em:log()) do
        if r.path:match("^/instance/[^/]+/exec$") then out[#out + 1] = r.status end
      end
      return out
    end

    it("retries an exec answered 503 and installs", function()
      em:clear_log()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 503, count = 1 })
      local installer = credentials.new({ provider = provider, log = log.silent(), retry = { base_delay_ms = 10 } })
      local res = installer.install(inst.id, { name = "p", files = { { path = "~/after-503.txt", content = "ok" } } })
      assert.are.equal(1, res.execs)
      assert.are.same({ 503, 200 }, exec_statuses())
      assert.are.equal("ok", provider.files.read_file(inst.id, "~/after-503.txt"))
    end)

    it("keeps SERVER_ERROR reachable as err.cause when every attempt meets a 503 #failure", function()
      em:clear_log()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 503, count = 3 })
      local installer = credentials.new({ provider = provider, log = log.silent(), retry = { base_delay_ms = 10 } })
      local ok, err = pcall(installer.install, inst.id, { name = "p", files = { { path = "~/never.txt", content = "x" } } })
      assert.is_false(ok)
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("SERVER_ERROR", err.cause.code)
      assert.are.equal("SERVER_ERROR", err.details.cause.code)
      assert.is_true(errors.is_retryable(err))
      assert.are.equal(3, err.attempt)
      assert.are.same({ 503, 503, 503 }, exec_statuses())
      assert.is_false(provider.files.file_exists(inst.id, "~/never.txt"))
    end)

    it("does not retry what is not transient (NOT_FOUND) #failure", function()
      em:clear_log()
      local installer = credentials.new({ provider = provider, log = log.silent(), retry = { base_delay_ms = 10 } })
      local ok, err = pcall(installer.install, "morphvm_nosuch0000", { name = "p", files = { { path = "~/x", content = "x" } } })
      assert.is_false(ok)
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("NOT_FOUND", err.cause.code)
      assert.is_false(errors.is_retryable(err))
      assert.are.same({ 404 }, exec_statuses())
    end)
  end)
end)
