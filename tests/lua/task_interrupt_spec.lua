-- Ctrl-C/SIGTERM during recipe.parallel leaves no instance (local provider and galley emulate)
-- and exits 130/143, while every item is waiting in an exec.
local runtime = require("galley.core.runtime")
local proc = require("galley.core.proc")
local support = require("support")
local emulator = require("support.emulator")
local recipes = require("support.recipes")

-- A recipe that boots 4 instances in parallel; each sleeps in the instance, so the run is
-- interrupted while they are all alive.
local RECIPE = [[
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local p = providers.default()
recipe.parallel({ 1, 2, 3, 4 }, function(i)
  local inst = p.instances.boot(p.DEFAULT_SNAPSHOT or "snapshot_galleydev")
  io.stdout:write("booted ", i, "\n")
  io.stdout:flush()
  p.exec(inst.id, { kind = "argv", command = "sleep", args = { "30" } })
end)
]]

describe("Ctrl-C during recipe.parallel #run", function()
  local path
  setup(function() path = support.script(RECIPE) end)
  teardown(function() os.remove(path) end)

  -- Starts the recipe, waits until all four instances booted, sends sig; returns the result.
  local function interrupt(env, sig)
    local h = assert(proc.spawn({ argv = { support.bin, "-q", "run", path }, env = env, env_mode = "replace",
      stdin = "null" }))
    local seen, out = 0, ""
    local deadline = runtime.now_ms() + 60000
    while seen < 4 and runtime.now_ms() < deadline do
      local what, data = h:read(1000)
      if what == "stdout" then
        out = out .. data
        local _, n = out:gsub("booted", "")
        seen = n
      elseif what == "exit" then
        break
      end
    end
    assert.are.equal(4, seen, "the recipe did not boot 4 instances: " .. out)
    runtime.sleep_ms(300)
    h:kill(sig)
    local r = h:wait(60000)
    h:close()
    return r
  end

  it("on local: exits 130 and leaves no instance", function()
    local state = recipes.mktemp_dir("task-local")
    finally(function() os.execute("rm -rf " .. support.q(state)) end)
    local env = { PATH = os.getenv("PATH"), HOME = state, GALLEY_STATE_DIR = state, GALLEY_LOG = "error" }
    local r = interrupt(env, "INT")
    assert.are.equal(130, r.exit_code, r.stderr)
    local left = io.popen("ls " .. support.q(state .. "/instances") .. " 2>/dev/null"):read("a")
    assert.are.equal("", left)
  end)

  it("on galley emulate: SIGTERM exits 143 and leaves no instance", function()
    local em = emulator.start({ boot_delay_ms = 30 })
    local cleanup = support.cleanups(finally)
    cleanup(function() em:stop() end)
    local state = recipes.mktemp_dir("task-emu")
    cleanup(function() os.execute("rm -rf " .. support.q(state)) end)
    local env = { PATH = os.getenv("PATH"), HOME = state, GALLEY_STATE_DIR = state, GALLEY_LOG = "error",
      MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url }
    local r = interrupt(env, "TERM")
    assert.are.equal(143, r.exit_code, r.stderr)
    local alive = 0
    for _, inst in ipairs(em:state().instances or {}) do
      if inst.status ~= "deleted" then alive = alive + 1 end
    end
    assert.are.equal(0, alive)
  end)
end)
