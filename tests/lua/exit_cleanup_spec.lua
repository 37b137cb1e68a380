-- os.exit() inside a recipe or a REPL line no longer skips the run's cleanup: the recipe's
-- instances are stopped, the REPL's exit report still runs, and the exit code is kept.
local support = require("support")
local recipes = require("support.recipes")

local function instances_in(state)
  local f = io.popen("ls " .. support.q(state .. "/instances") .. " 2>/dev/null")
  local out = f:read("a")
  f:close()
  return out
end

describe("os.exit and cleanup #run", function()
  local state
  before_each(function() state = recipes.mktemp_dir("exit") end)
  after_each(function()
    support.galley("-e " .. support.q([[
      local p = require("galley.providers.local").new()
      for _, i in ipairs(p.instances.list()) do p.instances.terminate(i.id) end]]), nil,
      { GALLEY_STATE_DIR = state, HOME = state })
    os.execute("rm -rf " .. support.q(state))
  end)

  it("stops a recipe's instances when the recipe calls os.exit, and keeps its code", function()
    local path = support.script([[
local p = require("galley.providers").default("local")
local inst = p.instances.boot(p.DEFAULT_SNAPSHOT)
print("booted " .. inst.id)
os.exit(3)
print("never")
]])
    finally(function() os.remove(path) end)
    local code, out, err = support.galley("run " .. support.q(path), nil,
      { GALLEY_STATE_DIR = state, HOME = state, GALLEY_LOG = "error" })
    assert.are.equal(3, code, err)
    assert.is_truthy(out:find("booted localvm_", 1, true))
    assert.is_falsy(out:find("never", 1, true))
    assert.are.equal("", instances_in(state))
  end)

  it("maps os.exit(true/false) to 0/1", function()
    for value, want in pairs({ ["true"] = 0, ["false"] = 1 }) do
      local path = support.script("os.exit(" .. value .. ")")
      local code = support.galley("run " .. support.q(path), nil, { GALLEY_STATE_DIR = state, HOME = state })
      os.remove(path)
      assert.are.equal(want, code)
    end
  end)

  it("runs the REPL's exit report on os.exit and exits with its code", function()
    local code, out, err = support.galley("repl", table.concat({
      'p = galley.providers.default("local")',
      "i = p.instances.boot(p.DEFAULT_SNAPSHOT)",
      "os.exit(4)",
      'print("not here")',
    }, "\n") .. "\n", { GALLEY_STATE_DIR = state, HOME = state, GALLEY_LOG = "error" })
    assert.are.equal(4, code)
    -- the exit report goes to stderr: stdout carries values only
    assert.is_truthy(err:find("1 instance(s) booted in this session still exist", 1, true), err)
    assert.is_falsy(out:find("not here", 1, true))
  end)
end)
