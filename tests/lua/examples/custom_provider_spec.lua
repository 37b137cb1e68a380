-- examples/custom-provider.lua: a wrapper provider driven by the orchestrator, with real PM2
-- inside local sandboxes. Checks its printed report and that no instance survives, on success
-- and when the wrapper's deny list makes the preparation fail.
local h = require("examples.helpers")

describe("examples/custom-provider.lua #examples #pm2", function()
  local sb
  before_each(function() sb = h.sandbox() end)
  after_each(function() sb:cleanup() end)

  it("tags, denies, follows a PM2 session and audits every exec", function()
    local r = sb:galley({ "run", h.example("custom-provider.lua") }, { env = { USER = "docs-tester" } })
    assert.are.equal(0, r.exit_code, r.stderr)
    h.in_order(r.stdout, {
      "instance owner: docs-tester\n",
      'machine info: "purpose":"custom-provider example"\n',
      "denied: VALIDATION_ERROR\n",
      "[out] tick-1\n", "[out] tick-2\n", "[out] tick-3\n", "[out] done\n",
      "session cmd-count: stopped, exit code 0, 4 lines\n",
    })
    local n, list, failed = r.stdout:match("\naudit: (%d+) execs %(([^)]*)%), (%d+) non%-zero\n$")
    assert.is_truthy(n, r.stdout)
    -- machine info is one python3 exec; PM2 start, list and logs are several more.
    assert.is_true(tonumber(n) >= 4, n)
    assert.is_truthy(list:find("python3 x1", 1, true), list)
    assert.are.equal("0", failed)
    assert.is_falsy(r.stdout:find("shutdown", 1, true))
    assert.are.same({}, sb:leftovers())
  end)

  it("fails cleanly when the deny list refuses what the preparation needs #failure", function()
    local r = sb:galley({ "run", h.example("custom-provider.lua"), "--deny", "python3" })
    assert.are.equal(1, r.exit_code)
    assert.is_truthy(r.stderr:find("CREDENTIALS_ERROR", 1, true), r.stderr)
    assert.is_truthy(r.stderr:find("program 'python3' is not allowed", 1, true), r.stderr)
    assert.is_truthy(r.stderr:find("the instance was terminated", 1, true), r.stderr)
    assert.are.equal("", r.stdout)
    assert.are.same({}, sb:leftovers())
  end)
end)
