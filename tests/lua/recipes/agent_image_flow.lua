-- Shared by agent_image_flow_local_spec.lua and agent_image_flow_emulator_spec.lua (one file per
-- target, so ctest runs them side by side and each stays well under a minute):
-- `galley run agent-image` then `galley run boot-and-run --image ID`, with small steps (--steps: a
-- FAKE claude stand-in instead of npm installs), on the local provider and on galley emulate:
-- the second build is all cache hits (no boot, no exec; on the emulator only digest look-ups), and
-- boot-and-run boots the image and runs the image's own claude. When the image's claude cannot
-- connect to its API, boot-and-run says so at once instead of waiting out claude's retries (about
-- three minutes: the run that took 178 s).
local busted = require("busted")
local assert = require("luassert")
local cjson = require("cjson")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local util = require("galley.util")
local emulator = require("support.emulator")
local fake_api = require("support.fake_anthropic")
local recipes = require("support.recipes")

-- The FAKE claude: answers --version, else echoes its arguments and what arrived on stdin.
local FAKE_CLAUDE = [[#!/bin/sh
# FAKE claude: a stand-in for the spec (no model, no API)
if [ "$1" = "--version" ]; then echo "0.0.1 (FAKE Claude Code)"; exit 0; fi
echo "FAKE claude args: $*"
echo "FAKE claude read: $(cat)"
]]

-- The steps file: the stand-in and a ~/.profile (read by PM2's bash -lc) that points claude at
-- `api_url`, a marker step, a check.
local function steps_file(dir, api_env)
  local profile = { 'PATH="$HOME/.local/bin:$PATH"' }
  for _, k in ipairs(util.sorted_keys(api_env)) do profile[#profile + 1] = ("export %s=%s"):format(k, api_env[k]) end
  local path = dir .. "/steps.lua"
  assert(fs.write_atomic(path, ([[
local contracts = require("galley.contracts")
return {
  { files = {
    { path = "~/.local/bin/claude", content = %q, mode = "755" },
    { path = "~/.profile", content = %q, mode = "644" },
  }, key = "FAKE claude and profile" },
  contracts.shell("mkdir -p ~/.cache/galley-spec && echo two > ~/.cache/galley-spec/step2"),
  { command = contracts.shell("~/.local/bin/claude --version"), key = "check claude" },
}
]]):format(FAKE_CLAUDE, table.concat(profile, "\n") .. "\n")))
  return path
end

local describe, it, setup, teardown = busted.describe, busted.it, busted.setup, busted.teardown

local M = {}

--- Defines the spec for one target: "local" or "emulator".
---@param target "local"|"emulator"
function M.define(target)
  describe("agent-image then boot-and-run --image, small steps, on " .. target .. " #recipes #images", function()
    local state, home, em, api, steps, dead_steps
    local galley = recipes.runner(function() return state, home end)
    local env, base_args = {}, {}

    setup(function()
      state, home = recipes.mktemp_dir("aif-state"), recipes.mktemp_dir("aif-home")
      api = fake_api.start({ reply = "unused" })
      steps = steps_file(state, api.env)
      -- A profile whose API is a loopback port nothing listens on (never an outside address).
      local dead_dir = state .. "/dead"
      assert(fs.mkdir_p(dead_dir, "700"))
      dead_steps = steps_file(dead_dir, { ANTHROPIC_BASE_URL = "http://127.0.0.1:1" })
      if target == "emulator" then
        em = emulator.start({ boot_delay_ms = 0 })
        env = { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key }
        base_args = { "--provider", "morph", "--base", emulator.SNAPSHOT }
      else
        base_args = { "--provider", "local" }
      end
    end)

    teardown(function()
      if em then em:stop() end
      if api then api.stop() end
      if target == "local" then galley({ "gc", "--include-kept", "--all-hosts", "--provider", "local" }) end
      proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
    end)

    -- `galley [pre...] run agent-image --json --steps FILE <base_args>`: the result and the
    -- JSON lines galley wrote on stderr.
    local function build(file, pre)
      local args = {}
      for _, a in ipairs(pre or {}) do args[#args + 1] = a end
      for _, a in ipairs({ "run", "agent-image", "--json", "--steps", file }) do args[#args + 1] = a end
      for _, a in ipairs(base_args) do args[#args + 1] = a end
      -- GALLEY_LOG (error, in the runner) would override -vv.
      local e = { GALLEY_LOG = "" }
      for k, v in pairs(env) do e[k] = v end
      local code, out, err = galley(args, e)
      assert.are.equal(0, code, err)
      return cjson.decode(out), err
    end

    local image

    it("builds the image; a second build is all cache hits: no boot, no exec", function()
      local t0 = runtime.now_ms()
      -- -vv --json: the local provider's trace records (one per exec, one per boot) as JSON lines.
      local first, ferr = build(steps, { "-vv", "--json" })
      assert.are.equal(3, first.built)
      local function count(err)
        local execs, boots = 0, 0
        for line in err:gmatch("[^\n]+") do
          local ok, rec = pcall(cjson.decode, line)
          if ok and type(rec) == "table" and rec.prefix == "local" then
            if rec.msg == "exec" then execs = execs + 1 end
            if rec.msg == "instance ready" then boots = boots + 1 end
          end
        end
        return execs, boots
      end
      if target == "local" then
        local execs, boots = count(ferr)
        assert.is_true(execs >= 3 and boots == 3, ("first build: %d execs, %d boots\n%s"):format(execs, boots, ferr))
      end
      if em then em:clear_log() end
      local again, aerr = build(steps, { "-vv", "--json" })
      assert.are.equal(first.id, again.id)
      assert.are.same({ 3, 0 }, { again.cached, again.built })
      if target == "local" then
        assert.are.same({ 0, 0 }, { count(aerr) }, aerr)
      else
        -- Only digest look-ups (at most one per step) besides the run's own bookkeeping (GET
        -- /instance of its tag): every request a GET, no boot, no exec, no snapshot.
        local lookups, lines = 0, {}
        for _, r in ipairs(em:log()) do
          lines[#lines + 1] = r.method .. " " .. r.path
          assert.are.equal("GET", r.method, table.concat(lines, "\n"))
          if r.path:find("^/snapshot") then lookups = lookups + 1 end
        end
        assert.is_true(lookups <= 3, table.concat(lines, "\n"))
      end
      image = first.id
      assert.is_true(runtime.now_ms() - t0 < 60000, "the two builds took over a minute")
    end)

    it("boot-and-run --image boots it and runs the image's claude", function()
      assert.truthy(image, "the image of the previous test")
      local token = "sk-ant-oat01-galley-agent-image-flow-" .. ("F"):rep(60)
      local e = { CLAUDE_ACCESS_TOKEN = token }
      for k, v in pairs(env) do e[k] = v end
      local t0 = runtime.now_ms()
      local code, out, err = galley({ "run", "boot-and-run", base_args[1], base_args[2], "--agent", "claude",
        "--image", image, "--prompt", "hello image", "--model", "claude-galley-flow", "--poll-ms", "200" }, e)
      assert.are.equal(0, code, err)
      assert.truthy(out:find("FAKE claude read: hello image\n", 1, true), out)
      assert.truthy(out:find("--model claude-galley-flow", 1, true), out)
      assert.falsy((out .. err):find(token, 1, true))
      assert.is_true(runtime.now_ms() - t0 < 120000, "boot-and-run --image took over two minutes")
    end)

    it("says at once when the image's claude cannot connect to its API", function()
      local dead = build(dead_steps)
      local e = { CLAUDE_ACCESS_TOKEN = "sk-ant-oat01-galley-dead-api-" .. ("D"):rep(60) }
      for k, v in pairs(env) do e[k] = v end
      local t0 = runtime.now_ms()
      local code, out, err = galley({ "--json", "run", "boot-and-run", base_args[1], base_args[2], "--agent", "claude",
        "--image", dead.id, "--prompt", "hello", "--poll-ms", "200" }, e)
      assert.are.equal(1, code, err)
      local codes = {}
      for line in err:gmatch("[^\n]+") do
        local ok, rec = pcall(cjson.decode, line)
        if ok and type(rec) == "table" and rec.code then codes[rec.code] = rec end
      end
      assert.truthy(codes.NETWORK_ERROR, err)
      assert.truthy(codes.NETWORK_ERROR.msg:find("127.0.0.1:1", 1, true), codes.NETWORK_ERROR.msg)
      assert.is_nil(out:find("FAKE claude read", 1, true), "claude must not have started")
      -- claude's own retries take about 190 s; the check answers in well under a second.
      assert.is_true(runtime.now_ms() - t0 < 120000, "it waited instead of saying so")
      -- --no-api-check starts claude anyway (the stand-in needs no API); on one target only, to
      -- keep the spec under a minute.
      if target ~= "emulator" then return end
      code, out, err = galley({ "run", "boot-and-run", base_args[1], base_args[2], "--agent", "claude",
        "--image", dead.id, "--prompt", "anyway", "--no-api-check", "--poll-ms", "200" }, e)
      assert.are.equal(0, code, err)
      assert.truthy(out:find("FAKE claude read: anyway\n", 1, true), out)
    end)
  end)
end

return M
