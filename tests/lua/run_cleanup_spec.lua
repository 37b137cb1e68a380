-- Self-cleaning runs on the emulator: recipes interrupted at random points (Ctrl-C, SIGTERM)
-- leave no instance behind; a recipe killed outright leaves tagged instances that `galley gc`
-- collects.
local support = require("support")
local emulator = require("support.emulator")
local proc = require("galley.core.proc")

local RECIPE = [[
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local p = providers.default()
local ids = {}
for i = 1, 3 do
  local inst = recipe.step("boot " .. i, function() return p.instances.boot("snapshot_galleydev") end)
  ids[#ids + 1] = inst.id
  p.exec(inst.id, { kind = "argv", command = "true" })
end
recipe.defer(function()
  for _, id in ipairs(ids) do pcall(p.instances.terminate, id) end
end, "terminate")
print("booted " .. #ids)
]]

local function alive(em)
  local n = 0
  for _, inst in ipairs(em:state().instances or {}) do
    if inst.status ~= "deleted" then n = n + 1 end
  end
  return n
end

describe("self-cleaning runs on the emulator #run", function()
  local em, path, env

  setup(function()
    em = emulator.start({ boot_delay_ms = 30, latency_ms = 40 })
    path = support.script(RECIPE)
    env = { MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url, GALLEY_LOG = "error" }
  end)

  teardown(function()
    os.remove(path)
    em:stop()
  end)

  local function spawn_run()
    local full = {}
    for k, v in pairs(env) do full[k] = v end
    return assert(proc.spawn({ argv = { support.bin, "-q", "run", path }, env = full, stdin = "null" }))
  end

  it("finishes cleanly and leaves nothing when not interrupted", function()
    local h = spawn_run()
    local r = h:wait(60000)
    h:close()
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.equal("booted 3\n", r.stdout)
    assert.are.equal(0, alive(em))
  end)

  it("leaves no instance when interrupted at random points by Ctrl-C or SIGTERM", function()
    local seed = tonumber(os.getenv("GALLEY_CLEANUP_SEED") or "") or os.time()
    math.randomseed(seed)
    for round = 1, 10 do
      local h = spawn_run()
      local delay = math.random(0, 900)
      local sig = round % 2 == 0 and "TERM" or "INT"
      local r = h:wait(delay)
      if not r then
        h:kill(sig)
        r = h:wait(60000)
      end
      h:close()
      local expected = { [0] = true, [130] = true, [143] = true }
      assert.is_true(expected[r.exit_code] == true,
        ("round %d (seed %d, %s after %d ms): exit %s\n%s"):format(round, seed, sig, delay, r.exit_code, r.stderr))
      assert.are.equal(0, alive(em), ("round %d (seed %d, %s after %d ms) left instances\n%s"):format(
        round, seed, sig, delay, r.stderr))
    end
  end)

  it("leaves tagged instances when killed outright, and galley gc collects them", function()
    local state = support.tmpname()
    os.remove(state)
    env.GALLEY_STATE_DIR = state
    local h = spawn_run()
    for _ = 1, 400 do
      if alive(em) >= 1 then break end
      os.execute("sleep 0.05")
    end
    h:kill("KILL")
    h:wait(10000)
    h:close()
    for _ = 1, 40 do os.execute("sleep 0.05") end -- let an in-flight boot land
    assert.is_true(alive(em) >= 1)
    local code, out = support.galley("--json gc --provider morph", nil, env)
    assert.are.equal(0, code)
    assert.truthy(out:find('"stopped"', 1, true), out)
    assert.are.equal(0, alive(em))
    os.execute("rm -rf '" .. state .. "'")
    env.GALLEY_STATE_DIR = nil
  end)

  it("stops an instance whose boot was cut off in flight and lands after the run's first list", function()
    -- The boot stalls 2 s before the service handles it: Ctrl-C arrives while it is in flight,
    -- the run's first list finds nothing, and the instance appears afterwards; the run finds it
    -- by its request token and stops it.
    local slow = emulator.start({ boot_delay_ms = 0, faults = {
      { method = "POST", path = "/snapshot/*/boot", action = "stall", delay_ms = 2000 } } })
    finally(function() slow:stop() end)
    local full = { MORPH_API_KEY = slow.api_key, MORPH_BASE_URL = slow.base_url, GALLEY_LOG = "error" }
    local h = assert(proc.spawn({ argv = { support.bin, "-q", "run", path }, env = full, stdin = "null" }))
    assert.is_nil(h:wait(300))
    h:kill("INT")
    local r = h:wait(60000)
    h:close()
    assert.are.equal(130, r.exit_code, r.stderr)
    assert.are.equal(0, alive(slow), r.stderr)
    local booted = 0
    for _, rec in ipairs(slow:log()) do
      if rec.method == "POST" and rec.path:find("/boot", 1, true) then booted = booted + 1 end
    end
    assert.are.equal(1, booted) -- the cut-off boot did reach the service
  end)
end)
