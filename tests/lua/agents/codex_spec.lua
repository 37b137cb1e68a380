-- galley.agents.codex: the ProcessSpec, its checks and credential profile, then the REAL Codex CLI
-- (npm @openai/codex): its --help accepts every flag the agent uses, and a full `codex exec` run
-- against the loopback FAKE of the OpenAI Responses API (support.fake_openai) with the login
-- installed as ~/.codex/auth.json.
local codex = require("galley.agents.codex")
local cjson = require("cjson")
local cli = require("agents.headless_cli")

local function invalid(path, f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("VALIDATION_ERROR", err.code, tostring(err))
  assert.are.equal(path, err.details.path, tostring(err))
end

describe("galley.agents.codex #agents #codex", function()
  it("builds a codex exec script: prompt on stdin, model, cwd, -c pairs, nothing secret", function()
    local spec = codex.new({ model = "gpt-5", config = { 'model_reasoning_effort="low"' } }).to_process_spec({
      session_name = "fix bug 12", prompt = "hi", cwd = "~/work" })
    assert.are.equal("cx-fix-bug-12", spec.command.name)
    assert.are.equal("never", spec.restart)
    assert.are.equal("~/work", spec.command.cwd)
    local s = spec.command.script
    assert.truthy(s:find("^set %-o pipefail\n"))
    assert.truthy(s:find("| base64 -d | codex exec --skip-git-repo-check", 1, true))
    assert.truthy(s:find("--model gpt-5", 1, true))
    assert.truthy(s:find("-c 'model_reasoning_effort=\"low\"'", 1, true))
    assert.truthy(s:find(" %-\n$"))
    assert.truthy(s:find("unset OPENAI_API_KEY CODEX_API_KEY", 1, true))
    assert.is_nil(spec.command.env)
  end)

  it("moves a large prompt into a 600 file read on stdin", function()
    local prompt = ("x"):rep(100 * 1024)
    local spec = codex.new().to_process_spec({ session_name = "big", prompt = prompt })
    assert.are.equal(1, #spec.files)
    assert.are.equal(prompt, spec.files[1].content)
    assert.are.equal("600", spec.files[1].mode)
    assert.truthy(spec.command.script:find(" - < ~/.galley/sessions/cx-big/prompt.txt", 1, true))
  end)

  it("refuses bad options and input naming the field", function()
    invalid("opts.nope", codex.new, { nope = 1 })
    invalid("opts.cwd", codex.new, { cwd = "relative" })
    invalid("opts.config[1]", codex.new, { config = { 1 } })
    local a = codex.new()
    invalid("input.prompt", a.to_process_spec, { session_name = "x", prompt = "" })
    invalid("input.session_name", a.to_process_spec, { session_name = "--", prompt = "p" })
    invalid("input.extra_args[1]", a.to_process_spec, { session_name = "x", prompt = "p", extra_args = { false } })
  end)

  it("makes a credential profile: ~/.codex 0700 and a secret 0600 auth.json", function()
    local p = codex.profile({ api_key = "sk-test-key" })
    assert.are.same({ { path = "~/.codex", mode = "700" } }, p.directories)
    assert.are.equal("~/.codex/auth.json", p.files[1].path)
    assert.are.equal("600", p.files[1].mode)
    assert.is_true(p.files[1].secret)
    assert.are.equal("sk-test-key", p.files[1].json.OPENAI_API_KEY)
    invalid("codex_profile", codex.profile, {})
    invalid("codex_profile", codex.profile, { api_key = "a", auth_json = {} })
  end)

  it("offers install steps: node, npm install of pm2 and @openai/codex, codex --version", function()
    local steps = codex.install_steps()
    assert.are.equal(3, #steps)
    assert.truthy(steps[2].command.script:find("pkgs='pm2 @openai/codex'", 1, true))
    assert.truthy(steps[2].command.script:find("pm2", 1, true))
    assert.truthy(steps[3].command.script:find("codex --version", 1, true))
  end)

  local bin = cli.real("codex")
  local describe_real = bin and describe or pending
  describe_real("with the real Codex CLI #codex_cli", function()
    local fake_openai = require("support.fake_openai")
    local fake, p, inst, install
    local KEY = "sk-galley-codex-spec-" .. ("K"):rep(40)

    setup(function()
      fake = fake_openai.start({ reply = "FAKE codex reply" })
      p, inst, install = cli.instance()
    end)

    teardown(function()
      if inst then p.instances.terminate(inst.id) end
      if fake then fake.stop() end
    end)

    it("accepts every flag the agent passes (codex exec --help)", function()
      local r = cli.run_scratch({ bin, "exec", "--help" })
      assert.are.equal(0, r.exit_code, r.stderr)
      local spec = codex.new({ model = "m", json = true }).to_process_spec({ session_name = "x", prompt = "p" })
      local flags = cli.flags_of(spec.command.script)
      assert.is_true(#flags >= 3)
      for _, flag in ipairs(flags) do
        assert.truthy(r.stdout:find(flag, 1, true), flag .. " is not in codex exec --help")
      end
    end)

    it("runs codex exec against the FAKE: the prompt byte for byte, the model and the key from auth.json", function()
      install(codex.profile({ api_key = KEY }))
      local agent = codex.new({ cwd = "~/work", config = fake.codex_config })
      local spec = agent.to_process_spec({ session_name = "real", prompt = cli.NASTY, model = "gpt-galley-test" })
      assert.is_nil(cjson.encode(spec):find(KEY, 1, true), "the key is in the spec")
      local r = cli.run_spec(p, inst, spec)
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("FAKE codex reply\n", r.stdout)
      local req = fake.find_prompt(cli.NASTY)
      assert.truthy(req, "the FAKE never saw the prompt byte for byte")
      assert.are.equal("gpt-galley-test", req.json.model)
      assert.are.equal("Bearer " .. KEY, req.headers.authorization)
    end)

    it("with --json prints JSONL events whose last agent message is the reply", function()
      local agent = codex.new({ cwd = "~/work", config = fake.codex_config, json = true })
      local r = cli.run_spec(p, inst, agent.to_process_spec({ session_name = "json", prompt = "events please" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      local texts = {}
      for line in r.stdout:gmatch("[^\n]+") do
        local ok, ev = pcall(cjson.decode, line)
        assert.is_true(ok, line)
        if type(ev.item) == "table" and ev.item.text then texts[#texts + 1] = ev.item.text end
      end
      assert.are.equal("FAKE codex reply", texts[#texts])
    end)
  end)
end)
