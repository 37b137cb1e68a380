-- galley gc on the local provider: instances of finished runs and expired TTLs are stopped;
-- live runs and kept instances are left alone.
local support = require("support")
local q = support.q

local state

local function galley_env(args)
  return support.galley("--json gc " .. args, nil, { GALLEY_STATE_DIR = state })
end

local function boot_in_run(extra)
  -- A recipe that boots an instance, then dies without cleaning up (SIGKILL: no cleanup runs).
  local path = support.script(([[
local p = require("galley.providers.local").new({})
local inst = p.instances.boot(nil, %s)
print(inst.id)
io.stdout:flush()
os.execute("kill -9 " .. require("galley.core.runtime").getpid())
]]):format(extra or "{}"))
  local _, out = support.galley("run " .. q(path), nil, { GALLEY_STATE_DIR = state })
  os.remove(path)
  return (out:match("(%S+)"))
end

describe("galley gc #gc", function()
  before_each(function()
    state = support.tmpname()
    os.remove(state)
    os.execute("mkdir -p " .. q(state))
  end)

  after_each(function()
    -- stop anything left, whatever the test did
    support.galley("gc --include-kept --all-hosts", nil, { GALLEY_STATE_DIR = state })
    os.execute("rm -rf " .. q(state))
  end)

  it("stops the instances of a run that died, and only reports with --dry-run", function()
    local id = boot_in_run()
    assert.truthy(id, "no instance id printed")
    local code, out = galley_env("--dry-run --provider local")
    assert.are.equal(0, code)
    local found = require("cjson").decode(out)
    assert.are.equal(1, #found)
    assert.are.equal(id, found[1].id)
    assert.are.equal("would stop", found[1].action)
    code, out = galley_env("--provider local")
    assert.are.equal(0, code)
    assert.are.equal("stopped", require("cjson").decode(out)[1].action)
    code, out = galley_env("--dry-run --provider local")
    assert.are.equal(0, code)
    assert.are.equal("[]\n", out)
  end)

  it("leaves kept instances alone unless --include-kept", function()
    local id = boot_in_run('{ metadata = { galley_keep = "1" } }')
    assert.truthy(id)
    local _, out = galley_env("--dry-run --provider local")
    assert.are.equal("[]\n", out)
    _, out = galley_env("--dry-run --provider local --include-kept")
    assert.are.equal(id, require("cjson").decode(out)[1].id)
  end)

  it("leaves a live run's instances alone", function()
    local path = support.script([[
local p = require("galley.providers.local").new({})
local inst = p.instances.boot(nil, {})
io.stdout:write(inst.id, "\n") io.stdout:flush()
io.stdin:read("l")
p.instances.terminate(inst.id)
]])
    local cmd = ("GALLEY_STATE_DIR=%s %s run %s"):format(q(state), q(support.bin), q(path))
    local proc = require("galley.core.proc").spawn({ argv = { "bash", "-c", cmd }, stdin = "pipe" })
    local id
    for _ = 1, 400 do
      local kind, data = proc:read(100)
      if kind == "stdout" then
        id = data:match("(%S+)")
        break
      end
    end
    assert.truthy(id)
    local _, out = galley_env("--dry-run --provider local")
    assert.are.equal("[]\n", out)
    proc:write("\n")
    proc:close_stdin()
    proc:wait(30000)
    os.remove(path)
  end)
end)
