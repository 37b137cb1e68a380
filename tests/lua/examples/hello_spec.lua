-- examples/hello.lua, run as its header says.
local h = require("examples.helpers")

describe("examples/hello.lua #examples", function()
  local sb
  setup(function() sb = h.sandbox() end)
  teardown(function() sb:cleanup() end)

  it("greets the name given as an argument", function()
    local r = sb:galley({ "run", h.example("hello.lua"), "docs" })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.is_truthy(r.stdout:match("^hello, docs, from galley %d+%.%d+%.%d+\n$"), r.stdout)
  end)

  it("greets the world without one", function()
    local r = sb:galley({ "run", h.example("hello.lua") })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.is_truthy(r.stdout:match("^hello, world, from galley "), r.stdout)
  end)
end)
