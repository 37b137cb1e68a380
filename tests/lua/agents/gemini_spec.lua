-- galley.agents.gemini: the ProcessSpec, its checks and credential profile, then the REAL Gemini
-- CLI (npm @google/gemini-cli): its --help accepts every flag the agent uses, and a full
-- `gemini -p` run against the loopback FAKE of the Gemini API (support.fake_gemini, reached
-- through GOOGLE_GEMINI_BASE_URL) with the key installed as ~/.gemini/.env.
local gemini = require("galley.agents.gemini")
local cjson = require("cjson")
local cli = require("agents.headless_cli")

local function invalid(path, f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal("VALIDATION_ERROR", err.code, tostring(err))
  assert.are.equal(path, err.details.path, tostring(err))
end

describe("galley.agents.gemini #agents #gemini", function()
  it("builds a gemini -p script: prompt on stdin, model, cwd, yolo, nothing secret", function()
    local spec = gemini.new({ model = "gemini-2.5-pro" }).to_process_spec({ session_name = "fix bug 12",
      prompt = "hi", cwd = "~/work", output_format = "json" })
    assert.are.equal("gm-fix-bug-12", spec.command.name)
    assert.are.equal("never", spec.restart)
    assert.are.equal("~/work", spec.command.cwd)
    local s = spec.command.script
    assert.truthy(s:find("^set %-o pipefail\n"))
    assert.truthy(s:find("| base64 -d | gemini --prompt '' --skip-trust --approval-mode yolo", 1, true))
    assert.truthy(s:find("--output-format json", 1, true))
    assert.truthy(s:find("--model gemini-2.5-pro", 1, true))
    assert.truthy(s:find("unset GEMINI_API_KEY GOOGLE_API_KEY", 1, true))
    assert.is_nil(spec.command.env)
  end)

  it("moves a large prompt into a 600 file read on stdin", function()
    local prompt = ("y"):rep(100 * 1024)
    local spec = gemini.new().to_process_spec({ session_name = "big", prompt = prompt })
    assert.are.equal(prompt, spec.files[1].content)
    assert.are.equal("600", spec.files[1].mode)
    assert.truthy(spec.command.script:find(" < ~/.galley/sessions/gm-big/prompt.txt", 1, true))
  end)

  it("refuses bad options and input naming the field", function()
    invalid("opts.output_format", gemini.new, { output_format = "xml" })
    invalid("opts.approval_mode", gemini.new, { approval_mode = "always" })
    local a = gemini.new()
    invalid("input.prompt", a.to_process_spec, { session_name = "x", prompt = 5 })
    invalid("input.output_format", a.to_process_spec, { session_name = "x", prompt = "p", output_format = "xml" })
    invalid("input.bogus", a.to_process_spec, { session_name = "x", prompt = "p", bogus = true })
  end)

  it("makes a credential profile: settings.json selects the API key, the key in a secret 0600 .env", function()
    local p = gemini.profile({ api_key = "AIza-test" })
    assert.are.same({ { path = "~/.gemini", mode = "700" } }, p.directories)
    assert.are.equal("~/.gemini/settings.json", p.files[1].path)
    assert.are.equal("gemini-api-key", p.files[1].json.security.auth.selectedType)
    assert.are.equal("deep", p.files[1].merge)
    assert.are.equal("~/.gemini/.env", p.files[2].path)
    assert.are.equal("GEMINI_API_KEY=AIza-test\n", p.files[2].content)
    assert.is_true(p.files[2].secret)
    local o = gemini.profile({ oauth_creds = { refresh_token = "r" } })
    assert.are.equal("oauth-personal", o.files[1].json.security.auth.selectedType)
    assert.are.equal("~/.gemini/oauth_creds.json", o.files[2].path)
    invalid("gemini_profile", gemini.profile, {})
    invalid("gemini_profile.api_key", gemini.profile, { api_key = "a b" })
  end)

  it("offers install steps: node, npm install of pm2 and @google/gemini-cli, gemini --version", function()
    local steps = gemini.install_steps({ version = "0.61.0" })
    assert.truthy(steps[2].command.script:find("pkgs='pm2 @google/gemini-cli@0.61.0'", 1, true))
    assert.truthy(steps[3].command.script:find("gemini --version", 1, true))
  end)

  local bin = cli.real("gemini")
  local describe_real = bin and describe or pending
  describe_real("with the real Gemini CLI #gemini_cli", function()
    local fake_gemini = require("support.fake_gemini")
    local fake, p, inst, install
    local KEY = "AIza-galley-gemini-spec-" .. ("G"):rep(30)

    setup(function()
      fake = fake_gemini.start({ reply = "FAKE gemini reply" })
      p, inst, install = cli.instance()
    end)

    teardown(function()
      if inst then p.instances.terminate(inst.id) end
      if fake then fake.stop() end
    end)

    it("accepts every flag the agent passes (gemini --help)", function()
      local r = cli.run_scratch({ bin, "--help" })
      assert.are.equal(0, r.exit_code, r.stderr)
      local spec = gemini.new({ model = "m" }).to_process_spec({ session_name = "x", prompt = "p" })
      local flags = cli.flags_of(spec.command.script)
      assert.is_true(#flags >= 4)
      for _, flag in ipairs(flags) do
        assert.truthy(r.stdout:find(flag, 1, true), flag .. " is not in gemini --help")
      end
    end)

    it("runs gemini -p against the FAKE: the prompt byte for byte, the model and the key from ~/.gemini/.env", function()
      install(gemini.profile({ api_key = KEY }))
      local spec = gemini.new({ cwd = "~/work" }).to_process_spec({ session_name = "real", prompt = cli.NASTY,
        model = "gemini-galley-test" })
      assert.is_nil(cjson.encode(spec):find(KEY, 1, true), "the key is in the spec")
      local r = cli.run_spec(p, inst, spec, { GOOGLE_GEMINI_BASE_URL = fake.base_url })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("FAKE gemini reply\n", r.stdout)
      local req = fake.find_prompt(cli.NASTY)
      assert.truthy(req, "the FAKE never saw the prompt byte for byte")
      assert.truthy(req.path:find("/models/gemini-galley-test:", 1, true), req.path)
      assert.are.equal(KEY, req.headers["x-goog-api-key"])
    end)

    it("with --output-format json prints one JSON document whose response is the reply", function()
      local spec = gemini.new({ cwd = "~/work", output_format = "json" }).to_process_spec({ session_name = "json",
        prompt = "json please", model = "gemini-galley-test" })
      local r = cli.run_spec(p, inst, spec, { GOOGLE_GEMINI_BASE_URL = fake.base_url })
      assert.are.equal(0, r.exit_code, r.stderr)
      local doc = cjson.decode(r.stdout)
      assert.are.equal("FAKE gemini reply", doc.response)
    end)
  end)
end)
