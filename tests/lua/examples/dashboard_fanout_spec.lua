-- examples/dashboard-fanout.lua: N FAKE agents in parallel, one local sandbox each, each a PM2
-- session that prints its steps and exits; the run stops every instance at the end.
local h = require("examples.helpers")

describe("examples/dashboard-fanout.lua #examples", function()
  local sb
  setup(function() sb = h.sandbox() end)
  teardown(function() sb:cleanup() end)

  it("runs 2 agents to the end and leaves nothing behind", function()
    local r = sb:galley({ "run", h.example("dashboard-fanout.lua"), "--count", "2", "--seconds", "2" })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.truthy(r.stderr:find("agent 1: exited", 1, true) or r.stderr:find("agent 1: stopped", 1, true), r.stderr)
    assert.truthy(r.stderr:find("agent 2: ", 1, true), r.stderr)
    assert.are.same({}, sb:leftovers())
  end)

  it("rejects a bad --count with exit 2", function()
    local r = sb:galley({ "run", h.example("dashboard-fanout.lua"), "--count", "0" })
    assert.are.equal(2, r.exit_code, r.stderr)
  end)
end)
