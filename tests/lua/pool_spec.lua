-- galley.pool: at most N tasks at once, the first failure cancels the rest and is raised.
local pool = require("galley.pool")
local task = require("galley.task")

describe("galley.pool", function()
  it("runs at most max tasks at once, all of them in the end", function()
    local p, running, most, done = pool.new(3), 0, 0, 0
    for _ = 1, 10 do
      p:add(function()
        running = running + 1
        most = math.max(most, running)
        task.sleep(20)
        running = running - 1
        done = done + 1
      end)
    end
    p:finish()
    assert.are.same({ 3, 10, 0 }, { most, done, running })
  end)

  it("raises the first failure and cancels the tasks still running", function()
    local p, cancelled = pool.new(4), 0
    for i = 1, 4 do
      p:add(function()
        if i == 2 then
          task.sleep(5)
          error({ code = "BOOM" }, 0)
        end
        local ok, err = pcall(task.sleep, 5000)
        if not ok and err.code == "INTERRUPTED" then cancelled = cancelled + 1 end
        if not ok then error(err, 0) end
      end)
    end
    local ok, err = pcall(p.finish, p)
    assert.is_false(ok)
    assert.are.equal("BOOM", err.code)
    assert.are.equal(3, cancelled)
    -- a pool that failed keeps raising on add
    local ok2, err2 = pcall(p.add, p, function() end)
    assert.is_false(ok2)
    assert.are.equal("BOOM", err2.code)
  end)

  it("abort cancels without raising", function()
    local p = pool.new(2)
    local t0 = require("galley.core.runtime").now_ms()
    p:add(function() task.sleep(5000) end)
    p:add(function() task.sleep(5000) end)
    p:abort()
    assert.is_true(require("galley.core.runtime").now_ms() - t0 < 4000)
  end)
end)
