-- examples/fan-out.lua: N local sandboxes counting words in parallel (spawn), and the same run
-- against `galley emulate` through the Morph provider (spawn over SSE exec).
local h = require("examples.helpers")
local emulator = require("support.emulator")

-- 8 lines over 4 instances: shard i gets lines i and i + 4.
local TEXT = table.concat({
  "one two three", "two three", "three", "Four four four FOUR",
  "one", "two", "three three", "", "five!",
}, "\n") .. "\n"

local EXPECTED = {
  "shard 1: 2 lines, 4 words",
  "shard 2: 2 lines, 3 words",
  "shard 3: 2 lines, 3 words",
  "shard 4: 2 lines, 5 words",
  "total: 15 words, 5 distinct",
  "     5 three",
  "     4 four",
  "     3 two",
}

describe("examples/fan-out.lua #examples", function()
  local sb, input
  setup(function()
    sb = h.sandbox()
    input = sb.state_dir .. "/input.txt"
    local f = assert(io.open(input, "wb"))
    f:write(TEXT)
    f:close()
  end)
  teardown(function() sb:cleanup() end)

  it("splits the work over 4 local instances and merges the counts", function()
    local r = sb:galley({ "run", h.example("fan-out.lua"), "--count", "4", "--top", "3", input })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.same(EXPECTED, h.lines(r.stdout))
    assert.is_truthy(r.stderr:find("provider local (MORPH_API_KEY is not set)", 1, true), r.stderr)
    assert.are.same({}, sb:leftovers())
  end)

  it("counts the built-in text by default", function()
    local r = sb:galley({ "run", h.example("fan-out.lua"), "--top", "1" })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.same({ "shard 1: 1 lines, 9 words", "shard 2: 1 lines, 7 words", "shard 3: 1 lines, 7 words",
      "total: 23 words, 13 distinct", "     5 the" }, h.lines(r.stdout))
    assert.are.same({}, sb:leftovers())
  end)

  it("gives the same answer on the Morph provider against galley emulate #morph", function()
    local em = emulator.start({ boot_delay_ms = 20 })
    finally(function() em:stop() end)
    local r = sb:galley({ "run", h.example("fan-out.lua"), "--count", "4", "--top", "3",
      "--provider", "morph", "--snapshot", emulator.SNAPSHOT, input },
      { env = { MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url } })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.same(EXPECTED, h.lines(r.stdout))
    assert.are.same({}, em:state().instances)
    local boots = 0
    for _, rec in ipairs(em:log()) do
      if rec.method == "POST" and rec.path:match("^/snapshot/[^/]+/boot$") then boots = boots + 1 end
    end
    assert.are.equal(4, boots)
  end)

  it("refuses a bad --count with exit code 2 and boots nothing #failure", function()
    local r = sb:galley({ "run", h.example("fan-out.lua"), "--count", "0" })
    assert.are.equal(2, r.exit_code)
    assert.is_truthy(r.stderr:find("RECIPE_USAGE: --count must be 1..20", 1, true), r.stderr)
    assert.are.same({}, sb:leftovers())
  end)
end)
