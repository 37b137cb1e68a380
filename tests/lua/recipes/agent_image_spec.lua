-- The agent-image recipe through the galley binary: real npm installs (PM2 and the agent's CLI
-- from the npm registry) inside local sandboxes and emulated instances, a second run that is all
-- cache hits, and boot-and-run --image booting the result: the image's own claude (under
-- ~/.local, the sandbox's /usr being read-only) talks to the loopback FAKE Anthropic API.
-- Needs the npm registry (the sandbox shares the host's network); each build takes ~15 s.
local cjson = require("cjson")
local contracts = require("galley.contracts")
local proc = require("galley.core.proc")
local util = require("galley.util")
local emulator = require("support.emulator")
local fake_api = require("support.fake_anthropic")
local recipes = require("support.recipes")

local state, home
local galley = recipes.runner(function() return state, home end)

local function build(args, env)
  local all = { "run", "agent-image", "--json" }
  for _, a in ipairs(args) do all[#all + 1] = a end
  local code, out, err = galley(all, env)
  assert.are.equal(0, code, err)
  return cjson.decode(out), err
end

describe("recipe agent-image #recipes #images", function()
  setup(function()
    state, home = recipes.mktemp_dir("ai-state"), recipes.mktemp_dir("ai-home")
  end)

  teardown(function()
    galley({ "gc", "--include-kept", "--all-hosts", "--provider", "local" })
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  it("prints its options with --help; exits 2 on an unknown agent, building nothing", function()
    local code, out = galley({ "run", "agent-image", "--help" })
    assert.are.equal(0, code)
    for _, opt in ipairs({ "--agent", "--base", "--provider", "--rebuild-from", "--salt", "--json" }) do
      assert.truthy(out:find(opt, 1, true), opt)
    end
    local code2, _, err = galley({ "run", "agent-image", "--agent", "robot" })
    assert.are.equal(2, code2)
    assert.truthy(err:find("RECIPE_USAGE", 1, true), err)
  end)

  describe("on the local provider", function()
    local image

    it("builds the claude image with npm under ~/.local; a second run is all cache hits", function()
      local first, err = build({ "--agent", "claude", "--provider", "local" })
      assert.are.equal(3, first.built + first.cached)
      assert.truthy(err:find("step 3/3", 1, true), err)
      local again, err2 = build({ "--agent", "claude", "--provider", "local" })
      assert.are.equal(first.id, again.id)
      assert.are.equal(3, again.cached)
      assert.are.equal(0, again.built)
      assert.truthy(err2:find("step 2/3 cached: npm install pm2 @anthropic-ai/claude-code", 1, true), err2)
      image = first.id

      -- The chain shows in the snapshots' metadata.
      local p = require("galley.providers.local").new({ state_dir = state })
      local snap = p.snapshots.get(image)
      assert.truthy(snap.metadata.galley_step:find("^3/3 check claude"))
      assert.are.equal(first.steps[2].snapshot_id, snap.metadata.galley_parent)
      assert.are.equal("agent-claude", snap.metadata.galley_image)
      local inst = p.instances.boot(image)
      finally(function() p.instances.terminate(inst.id) end)
      local r = p.exec(inst.id, contracts.shell("~/.local/bin/claude --version && ~/.local/bin/pm2 --version"))
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.truthy(r.stdout:find("Claude Code", 1, true), r.stdout)
    end)

    it("boot-and-run --image boots it: the image's claude answers through the FAKE Anthropic API", function()
      assert.truthy(image, "the image of the previous test")
      local api = fake_api.start({ reply = "FAKE reply: from the agent image" })
      finally(function() api.stop() end)
      -- A derived image whose ~/.profile (read by PM2's bash -lc) points claude at the FAKE.
      local profile = {}
      for _, k in ipairs(util.sorted_keys(api.env)) do profile[#profile + 1] = ("export %s=%s"):format(k, api.env[k]) end
      local p = require("galley.providers.local").new({ state_dir = state })
      local derived = p.snapshots.build(image, { { files = { { path = "~/.profile",
        content = table.concat(profile, "\n") .. "\n", mode = "644" } } } })
      local token = "sk-ant-oat01-galley-agent-image-" .. ("T"):rep(60)
      local code, out, err = galley({ "run", "boot-and-run", "--provider", "local", "--agent", "claude", "--image",
        derived.id, "--prompt", "hello image", "--model", "claude-galley-image", "--poll-ms", "200" },
        { CLAUDE_ACCESS_TOKEN = token })
      assert.are.equal(0, code, err)
      assert.truthy(out:find("FAKE reply: from the agent image", 1, true), out)
      local req = assert(api.find_prompt("hello image"), "the FAKE never saw the prompt")
      assert.are.equal("claude-galley-image", req.json.model)
      assert.falsy((out .. err):find(token, 1, true))
    end)
  end)

  describe("on galley emulate", function()
    local em

    setup(function() em = emulator.start({ boot_delay_ms = 0 }) end)
    teardown(function() if em then em:stop() end end)

    it("builds the codex image; the second run only looks digests up and execs nothing", function()
      local env = { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key }
      local args = { "--agent", "codex", "--provider", "morph", "--base", emulator.SNAPSHOT }
      local first = build(args, env)
      assert.are.equal(3, first.built)
      em:clear_log()
      local again = build(args, env)
      assert.are.equal(first.id, again.id)
      assert.are.equal(3, again.cached)
      -- One digest look-up per step; the rest is the run's own bookkeeping (GET /instance of
      -- its tag, at start and end). No boot, no exec, no snapshot.
      local lookups, lines = 0, {}
      for _, r in ipairs(em:log()) do
        lines[#lines + 1] = r.method .. " " .. r.path
        assert.are.equal("GET", r.method, table.concat(lines, "\n"))
        if r.path:find("^/snapshot") then lookups = lookups + 1 end
      end
      assert.is_true(lookups <= 3, table.concat(lines, "\n"))
    end)
  end)
end)
