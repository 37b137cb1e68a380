local support = require("support")
local q = support.q

local function run_recipe(text, args)
  local path = support.script(text)
  local code, out, err = support.galley("run " .. q(path) .. " " .. (args or ""))
  os.remove(path)
  return code, out, err
end

local header = [[
local recipe = require("galley.recipe")
local opts = recipe.options({
  name = "demo",
  summary = "A demo recipe.",
  options = {
    { "snapshot", metavar = "ID", help = "snapshot to boot" },
    { "count", type = "integer", default = 2, help = "how many" },
    { "mode", choices = { "fast", "slow" }, default = "fast" },
    { "keep", type = "flag", help = "keep instances" },
  },
}, arg)
]]

describe("the recipe API #recipe", function()
  it("parses options, defaults, flags, --x=y and positionals", function()
    local code, out, err = run_recipe(header .. [[
print(opts.snapshot, opts.count, opts.mode, opts.keep, opts[1], opts[2])
]], "--snapshot=snap_1 --count 5 pos1 --keep --mode slow -- --not-an-option")
    assert.are.equal(0, code, err)
    assert.are.equal("snap_1\t5\tslow\ttrue\tpos1\t--not-an-option\n", out)
  end)

  it("prints generated help and exits 0 with --help", function()
    local code, out = run_recipe(header .. 'print("not reached")\n', "--help")
    assert.are.equal(0, code)
    assert.matches("usage: galley run demo", out)
    assert.matches("%-%-snapshot ID", out)
    assert.matches("default: 2", out)
    assert.falsy(out:find("not reached", 1, true))
  end)

  it("exits 2 naming a bad option or value", function()
    local code, _, err = run_recipe(header, "--nope")
    assert.are.equal(2, code)
    assert.truthy(err:find("RECIPE_USAGE", 1, true), err)
    assert.truthy(err:find("--nope", 1, true), err)
    code, _, err = run_recipe(header, "--count many")
    assert.are.equal(2, code)
    assert.truthy(err:find("--count", 1, true), err)
    code = run_recipe(header, "--mode medium")
    assert.are.equal(2, code)
  end)

  it("runs cleanup hooks last-first after success and after failure", function()
    local body = [[
local recipe = require("galley.recipe")
recipe.defer(function() print("first registered") end, "one")
recipe.defer(function() print("second registered") end, "two")
print("body")
if ... == "fail" then error("boom") end
]]
    local code, out = run_recipe(body)
    assert.are.equal(0, code)
    assert.are.equal("body\nsecond registered\nfirst registered\n", out)
    code, out = run_recipe(body, "fail")
    assert.are.equal(1, code)
    assert.are.equal("body\nsecond registered\nfirst registered\n", out)
  end)

  it("fails the run when a cleanup hook fails", function()
    local code, _, err = run_recipe([[
require("galley.recipe").defer(function() error("cannot clean") end, "broken hook")
]])
    assert.are.equal(1, code)
    assert.truthy(err:find("broken hook", 1, true), err)
  end)

  it("runs cleanup hooks when interrupted with Ctrl-C and exits 130", function()
    local path = support.script([[
require("galley.recipe").defer(function() print("cleaned up") end)
io.stdout:write("ready\n") io.stdout:flush()
while true do end
]])
    local out = support.tmpname()
    local cmd = ("%s run %s >%s 2>/dev/null & pid=$!; for i in $(seq 1 100); do grep -q ready %s && break; "
      .. "sleep 0.05; done; kill -INT $pid; wait $pid; echo \"rc=$?\" >>%s"):format(q(support.bin), q(path), out, out, out)
    os.execute("bash -c " .. q(cmd))
    local f = assert(io.open(out))
    local text = f:read("a")
    f:close()
    assert.are.equal("ready\ncleaned up\nrc=130\n", text)
  end)

  it("shows step progress on stderr, never on stdout", function()
    local code, out, err = run_recipe([[
local recipe = require("galley.recipe")
local v = recipe.step("compute", function(a) return a * 2 end, 21)
print(v)
]])
    assert.are.equal(0, code)
    assert.are.equal("42\n", out)
    assert.matches("compute", err)
    code, out, err = support.galley("-q run " .. q(support.script([[
print(require("galley.recipe").step("quiet step", function() return "x" end))
]])))
    assert.are.equal(0, code)
    assert.are.equal("x\n", out)
    assert.are.equal("", err)
  end)

  it("tags boot options with the run id and a default TTL", function()
    local code, out, err = run_recipe([[
local run = require("galley.run")
local o = run.boot_options({ metadata = { mine = "1" } })
print(o.metadata.galley_run == run.current().id, o.metadata.galley_recipe, o.metadata.mine, o.ttl_seconds, o.ttl_action)
local none = run.boot_options({ ttl_seconds = false })
print(none.ttl_seconds)
]])
    assert.are.equal(0, code, err)
    local name = out:match("true\t(%S+)\t1\t3600\tstop\nnil\n$")
    assert.is_truthy(name, out)
  end)
end)
