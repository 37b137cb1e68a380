-- galley.images (provider.snapshots.build) on the local provider and on the Morph provider
-- against `galley emulate`: small steps (files, echo commands, a function), cache hits, a failing
-- step, rebuild_from, and concurrent builds (tasks of one process, and two galley processes).
local codec = require("galley.core.codec")
local contracts = require("galley.contracts")
local emulator = require("support.emulator")
local images = require("galley.images")
local proc = require("galley.core.proc")
local support = require("support")
local task = require("galley.task")

local function mktemp()
  local r = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-images-XXXXXX" } }))
  return (r.stdout:gsub("%s+$", ""))
end

local function rm(dir) proc.run({ argv = { "rm", "-rf", "--", dir } }) end

-- A chain of small steps; `tag` makes it unique to one test.
local function chain(tag)
  return {
    { files = { { path = "~/image/a.txt", content = "alpha " .. tag .. "\n", mode = "644" } } },
    contracts.shell("echo step2 >> ~/image/log"),
    { run = function(inst, p)
        p.files.write_file_atomic(inst.id, "~/image/fn.txt", "from a function", { create_dirs = true })
      end, key = "fn step " .. tag },
    contracts.argv("/bin/sh", { "-c", "echo step4 >> ~/image/log" }),
  }
end

local function cat(p, inst, path)
  local r = p.exec(inst.id, { kind = "argv", command = "cat", args = { path } })
  return r.exit_code == 0 and r.stdout or nil
end

local function count_digest(p, digest)
  return #images.find(p, digest)
end

-- The two-process race: a script that builds the same chain and prints the final id.
local RACE_SCRIPT = [[
local contracts = require("galley.contracts")
local p
if os.getenv("RACE_STATE") then
  p = require("galley.providers.local").new({ state_dir = os.getenv("RACE_STATE") })
else
  p = require("galley.providers.morph").new({ api_key = os.getenv("RACE_KEY"), base_url = os.getenv("RACE_URL") })
end
local steps = {
  contracts.shell("sleep 0.3; echo one > ~/race1"),
  contracts.shell("sleep 0.3; echo two > ~/race2"),
  contracts.shell("echo three > ~/race3"),
}
local snap = p.snapshots.build(os.getenv("RACE_BASE"), steps, { salt = os.getenv("RACE_SALT") })
io.stdout:write(snap.id, "\n")
]]

local function suite(name, factory)
  describe("snapshots.build on " .. name .. " #images", function()
    local env

    setup(function() env = factory() end)
    teardown(function() if env then env.cleanup() end end)

    local function leftover_builders()
      local n = 0
      for _, inst in ipairs(env.provider.instances.list()) do
        if inst.metadata and inst.metadata.galley_builder then n = n + 1 end
      end
      return n
    end

    it("builds a chain of files, commands and a function; a second run is all cache hits", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local first = p.snapshots.build(env.base, chain(tag))
      assert.are.equal(4, first.build.built)
      assert.are.equal(0, first.build.cached)
      -- The chain: each snapshot's parent is the one before, with its digest in metadata.
      local parent = env.base
      for i, st in ipairs(first.build.steps) do
        local s = p.snapshots.get(st.snapshot_id)
        assert.are.equal(st.digest, s.digest)
        assert.are.equal(st.digest, s.metadata.galley_digest)
        assert.are.equal(parent, s.metadata.galley_parent)
        assert.matches("^" .. i .. "/4 ", s.metadata.galley_step)
        parent = s.id
      end
      assert.are.equal(0, leftover_builders())

      local before = env.requests and env.requests() or nil
      local second = p.snapshots.build(env.base, chain(tag))
      assert.are.equal(first.id, second.id)
      assert.are.equal(4, second.build.cached)
      assert.are.equal(0, second.build.built)
      if before then
        local reqs = env.requests(before)
        assert.is_true(#reqs <= 4, "requests on the second run: " .. #reqs)
        for _, r in ipairs(reqs) do
          assert.are.equal("GET", r.method)
          assert.is_nil(r.path:find("/exec", 1, true))
        end
      end

      local inst = p.instances.boot(second.id)
      finally(function() p.instances.terminate(inst.id) end)
      assert.are.equal("alpha " .. tag .. "\n", cat(p, inst, "image/a.txt"))
      assert.are.equal("step2\nstep4\n", cat(p, inst, "image/log"))
      assert.are.equal("from a function", cat(p, inst, "image/fn.txt"))
    end)

    it("a different salt builds a different chain", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local a = p.snapshots.build(env.base, { contracts.shell("echo " .. tag .. " > ~/s") })
      local b = p.snapshots.build(env.base, { contracts.shell("echo " .. tag .. " > ~/s") }, { salt = "v2" })
      assert.are_not.equal(a.id, b.id)
      assert.are_not.equal(a.build.steps[1].digest, b.build.steps[1].digest)
    end)

    it("takes a shell line string as a step, run by sh -c", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local snap = p.snapshots.build(env.base, { "echo $0 " .. tag .. " > ~/line.txt" })
      assert.matches("^1/1 echo ", p.snapshots.get(snap.id).metadata.galley_step)
      local inst = p.instances.boot(snap.id)
      finally(function() p.instances.terminate(inst.id) end)
      assert.are.equal("/bin/sh " .. tag .. "\n", cat(p, inst, "line.txt"))
    end)

    it("a failing step raises IMAGE_STEP_FAILED naming it and leaves no instance and no snapshot", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local steps = chain(tag)
      steps[3] = { command = contracts.shell("echo broken >&2; exit 3"), key = "broken " .. tag }
      local ok, err = pcall(p.snapshots.build, env.base, steps)
      assert.is_false(ok)
      assert.are.equal("IMAGE_STEP_FAILED", err.code, tostring(err))
      assert.are.equal(3, err.details.step)
      assert.are.equal("broken " .. tag, err.details.key)
      assert.are.equal(3, err.details.exit_code)
      assert.are.equal(0, leftover_builders())
      -- Steps 1 and 2 are cached; step 3 has no snapshot.
      local again = pcall(p.snapshots.build, env.base, { steps[1], steps[2] })
      assert.is_true(again)
      local two = p.snapshots.build(env.base, { steps[1], steps[2] })
      assert.are.equal(2, two.build.cached)
      local d3 = images.step_digest(two.build.steps[2].digest, images.normalize(steps[3], 3).encoding)
      assert.are.equal(0, count_digest(p, d3))
    end)

    it("a function step needs a key; bad steps are VALIDATION_ERROR naming the step", function()
      local p = env.provider
      local ok, err = pcall(p.snapshots.build, env.base, { { run = function() end } })
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("steps[1].key", err.field)
      ok, err = pcall(p.snapshots.build, env.base, { contracts.shell("true"), { nonsense = 1 } })
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("steps[2]", err.field)
    end)

    it("rebuild_from ignores cached steps from N on and leaves one snapshot per digest", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local first = p.snapshots.build(env.base, chain(tag))
      local again = p.snapshots.build(env.base, chain(tag), { rebuild_from = 3 })
      assert.are.equal(2, again.build.cached)
      assert.are.equal(2, again.build.built)
      assert.are.equal(first.build.steps[2].snapshot_id, again.build.steps[2].snapshot_id)
      assert.are_not.equal(first.id, again.id)
      for i, st in ipairs(again.build.steps) do
        assert.are.equal(first.build.steps[i].digest, st.digest)
        assert.are.equal(1, count_digest(p, st.digest), "step " .. i)
      end
      local third = p.snapshots.build(env.base, chain(tag))
      assert.are.equal(again.id, third.id)
      assert.are.equal(4, third.build.cached)
    end)

    it("tasks building the same chain at once share every step (one snapshot per digest)", function()
      local p = env.provider
      local tag = codec.random_hex(4)
      local common_steps = { contracts.shell("sleep 0.2; echo " .. tag .. " > ~/shared") }
      local a = task.spawn(function()
        return p.snapshots.build(env.base, { common_steps[1], contracts.shell("echo a > ~/branch") })
      end)
      local b = task.spawn(function()
        return p.snapshots.build(env.base, { common_steps[1], contracts.shell("echo b > ~/branch") })
      end)
      local sa, sb = a:wait(), b:wait()
      assert.are.equal(sa.build.steps[1].snapshot_id, sb.build.steps[1].snapshot_id)
      assert.are.equal(3, sa.build.built + sb.build.built) -- step 1 once, each branch's step 2
      assert.are.equal(1, count_digest(p, sa.build.steps[1].digest))
      assert.are_not.equal(sa.id, sb.id)
    end)

    it("two galley processes building the same chain at once leave one snapshot per digest", function()
      local p = env.provider
      local salt = codec.random_hex(4)
      local script = support.script(RACE_SCRIPT)
      local dir = mktemp()
      finally(function() rm(dir); os.remove(script) end)
      local renv = { RACE_BASE = env.base, RACE_SALT = salt, GALLEY_LOG = "error", GALLEY_STATE_DIR = dir .. "/state" }
      for k, v in pairs(env.race_env) do renv[k] = v end
      local prefix = {}
      for k, v in pairs(renv) do prefix[#prefix + 1] = k .. "=" .. support.q(v) end
      local line = table.concat(prefix, " ") .. " " .. support.q(support.bin) .. " " .. support.q(script)
      local r = assert(proc.run({ argv = { "/bin/sh", "-c", ("%s > %s/1 2>&1 & %s > %s/2 2>&1 & wait"):format(
        line, dir, line, dir) }, timeout_ms = 120000 }))
      assert.are.equal(0, r.exit_code)
      local function out(n)
        local f = assert(io.open(dir .. "/" .. n))
        local s = f:read("a")
        f:close()
        return s
      end
      local id1, id2 = out(1):match("^(%S+)\n$"), out(2):match("^(%S+)\n$")
      assert.is_string(id1, out(1))
      assert.is_string(id2, out(2))
      assert.are.equal(id1, id2)
      -- Walk the chain back: one snapshot per digest at every step.
      local s = p.snapshots.get(id1)
      local steps = 0
      while s.metadata.galley_digest do
        steps = steps + 1
        assert.are.equal(1, count_digest(p, s.metadata.galley_digest))
        s = p.snapshots.get(s.metadata.galley_parent)
      end
      assert.are.equal(3, steps)
      assert.are.equal(0, leftover_builders())
    end)
  end)
end

suite("local", function()
  local state = mktemp()
  local p = require("galley.providers.local").new({ state_dir = state })
  return { provider = p, base = p.DEFAULT_SNAPSHOT, race_env = { RACE_STATE = state },
    cleanup = function() rm(state) end }
end)

suite("morph (galley emulate)", function()
  local em = emulator.start({ boot_delay_ms = 20 })
  local p = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url,
    retry = { max_attempts = 3, base_delay_ms = 10, max_delay_ms = 100 } })
  return {
    provider = p, base = emulator.SNAPSHOT,
    race_env = { RACE_KEY = em.api_key, RACE_URL = em.base_url },
    -- requests() marks a point in the log; requests(mark) lists what came after it.
    requests = function(mark)
      local log = em:log()
      if not mark then return #log end
      local out = {}
      for i = mark + 1, #log do out[#out + 1] = log[i] end
      return out
    end,
    cleanup = function()
      p.close()
      em:stop()
    end,
  }
end)
