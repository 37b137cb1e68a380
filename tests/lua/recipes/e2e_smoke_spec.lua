-- The e2e-smoke recipe through the galley binary, against the `galley emulate` it starts itself
-- (no RUN_E2E): with the REAL Claude Code CLI (support.claude_cli) talking to the loopback FAKE
-- Anthropic API (--anthropic-base-url), TAP with every check ok; without an API for its FAKE
-- token (or without the CLI), the FAKE claude stand-in, labelled; the emulator gone afterwards;
-- and a failing boot: not ok, the rest skipped, exit 1.
local cli = require("support.claude_cli")
local fake_api = require("support.fake_anthropic")
local http = require("galley.core.http")
local proc = require("galley.core.proc")

local recipes = require("support.recipes")
local mktemp_dir = recipes.mktemp_dir

local state, home

local galley = recipes.runner(function() return state, home end)

-- {plan = n, ok = {...}, not_ok = {...}, skip = {...}} from TAP text.
local function parse_tap(text)
  local t = { ok = {}, not_ok = {}, skip = {}, lines = {} }
  for line in text:gmatch("[^\n]+") do
    local n = line:match("^1%.%.(%d+)$")
    if n then t.plan = tonumber(n) end
    local num, desc = line:match("^ok (%d+) %- (.*)$")
    if num then
      t.ok[#t.ok + 1] = tonumber(num)
      if desc:find("# SKIP", 1, true) then t.skip[#t.skip + 1] = desc end
      t.lines[tonumber(num)] = line
    end
    num = line:match("^not ok (%d+) %- ")
    if num then
      t.not_ok[#t.not_ok + 1] = tonumber(num)
      t.lines[tonumber(num)] = line
    end
  end
  return t
end

-- The emulator the smoke started no longer answers.
local function assert_emulator_gone(out)
  local url = out:match("# target: galley emulate at (http://127%.0%.0%.1:%d+/api)")
  assert.truthy(url, out)
  local s = http.session({ timeout_ms = 5000 })
  local resp, err = s:request({ method = "GET", url = url .. "/instance" })
  s:close()
  assert.is_nil(resp)
  assert.truthy(err and err.code, "expected a transport error")
end

describe("recipe e2e-smoke #recipes", function()
  before_each(function()
    state, home = mktemp_dir("e2e-state"), mktemp_dir("e2e-home")
  end)

  after_each(function()
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  for _, mode in ipairs({ "exec", "join" }) do
  it("passes every check on the emulator it starts (--argv-mode " .. mode .. "), with a FAKE claude stand-in, "
    .. "and stops it", function()
    local code, out, err = galley({ "run", "e2e-smoke", "--argv-mode", mode })
    assert.are.equal(0, code, out .. err)
    local tap = parse_tap(out)
    assert.are.equal(15, tap.plan)
    assert.are.equal(15, #tap.ok, out)
    assert.are.same({}, tap.not_ok)
    assert.truthy(out:find("^1%.%.15\n"), "the plan comes first")
    -- No API accepts the generated FAKE token (or claude is missing): skipped with a warning, and
    -- the stand-in says FAKE.
    if proc.which("claude") then -- the instances see this machine's /usr
      assert.matches("^ok 5 %- preflight: claude %-%-version # SKIP .* no API accepts the generated FAKE token",
        tap.lines[5])
      assert.truthy(err:find("WARNING: the real claude would send a generated FAKE token", 1, true), err)
    else
      assert.matches("^ok 5 %- preflight: claude %-%-version # SKIP claude is not installed", tap.lines[5])
      assert.truthy(err:find("WARNING: claude is not installed", 1, true), err)
    end
    assert.matches("FAKE", tap.lines[6])
    assert.matches("FAKE", tap.lines[11])
    assert.truthy(out:find("# out| FAKE claude stand-in: prompt (6 bytes): Say hi", 1, true), out)
    assert.truthy(out:find('"accessToken": "sk-ant-oat01-…', 1, true), out) -- masked read-back
    assert.truthy(err:find("all 15 checks passed", 1, true), err)
    assert.truthy(out:find("# emulator argv mode: " .. mode .. "\n", 1, true), out)
    assert_emulator_gone(out)
  end)
  end

  local it_real = cli.real() and it or pending
  if not cli.real() then cli.warn("e2e_smoke_spec") end
  it_real("passes every check with the real claude CLI talking to the FAKE Anthropic API", function()
    local api = fake_api.start({ reply = "FAKE reply: hi from e2e-smoke" })
    local ok, code, out, err = pcall(galley, { "run", "e2e-smoke", "--anthropic-base-url", api.base_url,
      "--model", "claude-galley-e2e" })
    api.stop()
    assert.is_true(ok, tostring(code))
    assert.are.equal(0, code, out .. err)
    local tap = parse_tap(out)
    assert.are.equal(15, #tap.ok, out)
    assert.are.same({ 6 }, (function()
      local skipped = {}
      for n, line in pairs(tap.lines) do
        if line:find("# SKIP", 1, true) then skipped[#skipped + 1] = n end
      end
      return skipped
    end)())
    assert.matches("^ok 5 %- preflight: claude %-%-version %(.*Claude Code", tap.lines[5])
    assert.falsy(tap.lines[11]:find("FAKE", 1, true))
    local req = assert(api.find_prompt("Say hi"), "the FAKE API never saw the prompt")
    assert.are.equal("claude-galley-e2e", req.json.model)
    local kind, token = fake_api.credential(req)
    assert.are.equal("bearer", kind)
    assert.truthy(token:find("^sk%-ant%-oat01%-FAKE%-"), token)
    assert.falsy((out .. err):find(token, 1, true), "the token shows in the smoke's output")
    assert.truthy(out:find("# out| FAKE reply: hi from e2e-smoke", 1, true), out)
    assert.truthy(err:find("all 15 checks passed\n", 1, true), err)
    assert_emulator_gone(out)
  end)

  it("reports a failed boot as not ok, skips what needs it, exits 1 and stops the emulator", function()
    local code, out = galley({ "run", "e2e-smoke", "--snapshot", "snapshot_does_not_exist" })
    assert.are.equal(1, code)
    local tap = parse_tap(out)
    assert.are.equal(15, tap.plan)
    assert.are.same({ 1 }, tap.not_ok)
    assert.are.equal(14, #tap.skip)
    assert.truthy(out:find("\n# NOT_FOUND: ", 1, true), out)
    assert_emulator_gone(out)
  end)

  it("exits 2 when --target morph has no MORPH_API_KEY", function()
    local code, _, err = galley({ "run", "e2e-smoke", "--target", "morph" })
    assert.are.equal(2, code)
    assert.truthy(err:find("MORPH_API_KEY", 1, true), err)
  end)
end)
