-- galley.task and recipe.parallel: tasks overlap on the event loop, errors stay in their task
-- unless asked, cancellation and timeouts abort waits.
local task = require("galley.task")
local recipe = require("galley.recipe")
local runtime = require("galley.core.runtime")
local overlap = require("support.overlap")

describe("galley.task", function()
  it("returns what a task returned and raises what it raised", function()
    local a = task.spawn(function(x, y) return x + y, "two" end, 1, 2)
    local s, two = a:wait()
    assert.are.equal(3, s)
    assert.are.equal("two", two)
    local b = task.spawn(function() error({ code = "X_FAILED" }, 0) end)
    local ok, err = pcall(b.wait, b)
    assert.is_false(ok)
    assert.are.equal("X_FAILED", err.code)
    assert.is_true(b.done)
    assert.is_false(b.ok)
  end)

  it("runs sleeping tasks at the same time", function()
    local list, spans = {}, {}
    for i = 1, 20 do
      list[i] = task.spawn(function()
        local s = runtime.now_ms()
        task.sleep(300)
        spans[i] = { s, runtime.now_ms() }
      end)
    end
    local res = task.join(list)
    for i = 1, 20 do assert.is_true(res[i].ok) end
    -- Every span overlaps every other: the latest start is before the earliest end.
    assert.is_true(overlap.all(spans))
  end)

  it("lets a failing task leave its siblings running", function()
    local list = {
      task.spawn(function() task.sleep(50); error("boom") end),
      task.spawn(function() task.sleep(150); return "fine" end),
    }
    local res = task.join(list)
    assert.is_false(res[1].ok)
    assert.is_true(res[2].ok)
    assert.are.equal("fine", res[2].value)
  end)

  it("cancels a waiting task: its wait fails with INTERRUPTED and the rest of it does not run", function()
    local reached = false
    local t = task.spawn(function()
      task.sleep(10000)
      reached = true
    end)
    local waiter = task.spawn(function() task.sleep(50); t:cancel() end)
    local t0 = runtime.now_ms()
    local ok, err = t:result()
    waiter:wait()
    assert.is_false(ok)
    assert.are.equal("INTERRUPTED", err.code)
    assert.is_false(reached)
    assert.is_true(runtime.now_ms() - t0 < 5000)
  end)

  it("never runs a task cancelled before it started", function()
    local ran = false
    local t = task.spawn(function() ran = true end)
    t:cancel()
    local ok, err = t:result()
    assert.is_false(ok)
    assert.are.equal("INTERRUPTED", err.code)
    assert.is_false(ran)
  end)

  it("bounds a task with with_timeout: TIMEOUT, the inner wait aborted", function()
    local after = false
    local ok, err = pcall(task.with_timeout, 100, function()
      task.sleep(10000)
      after = true
    end)
    assert.is_false(ok)
    assert.are.equal("TIMEOUT", err.code)
    assert.is_false(after)
    assert.are.equal(42, task.with_timeout(1000, function() task.sleep(10); return 42 end))
  end)

  it("refuses a task waiting for itself, and reports a wait that nothing can end", function()
    local t
    t = task.spawn(function() return t:wait() end)
    local ok, err = t:result()
    assert.is_false(ok)
    assert.are.equal("VALIDATION_ERROR", err.code)
    local ok2, err2 = task.await(task.token())
    assert.is_false(ok2)
    assert.are.equal("INTERNAL_ERROR", err2.code)
  end)

  it("wakes a Lua-side wait with task.wake", function()
    local token = task.token()
    local got
    local t = task.spawn(function() got = { task.await(token) } end)
    task.spawn(function() task.sleep(20); task.wake(token) end)
    t:wait()
    assert.are.same({ true }, got)
  end)

  it("ends a sleep whose timer fires before the loop polls, while other handles stay open", function()
    -- A silent child keeps pipes open on the loop: a turn whose timer fired must not go on to
    -- poll forever (libuv runs due timers before it polls).
    local proc = require("galley.core.proc")
    local h = assert(proc.spawn({ argv = { "sleep", "30" } }))
    local t0 = runtime.now_ms()
    for _ = 1, 50 do assert.is_true(runtime.sleep_ms(1)) end
    h:close()
    assert.is_true(runtime.now_ms() - t0 < 5000)
  end)

  it("keeps blocking calls working outside tasks while tasks run", function()
    local done = false
    task.spawn(function() task.sleep(30); done = true end)
    assert.is_true(runtime.sleep_ms(100)) -- the main program's wait runs the task meanwhile
    assert.is_true(done)
  end)
end)

describe("recipe.parallel", function()
  local function seq(n)
    local t = {}
    for i = 1, n do t[i] = i end
    return t
  end

  it("gives one record per item, in order, and runs them together", function()
    local spans = {}
    local res = recipe.parallel(seq(16), function(x)
      local s = runtime.now_ms()
      recipe.sleep(200)
      spans[x] = { s, runtime.now_ms() }
      if x % 5 == 0 then error({ code = "ODD_ONE" }, 0) end
      return x * 10
    end)
    assert.is_true(overlap.all(spans), "the items ran one after the other")
    for i = 1, 16 do
      if i % 5 == 0 then
        assert.is_false(res[i].ok)
        assert.are.equal("ODD_ONE", res[i].err.code)
      else
        assert.are.same({ ok = true, value = i * 10 }, res[i])
      end
    end
  end)

  it("runs at most `max` items at once", function()
    local now, peak = 0, 0
    recipe.parallel(seq(12), function()
      now = now + 1
      peak = math.max(peak, now)
      recipe.sleep(30)
      now = now - 1
    end, { max = 3 })
    assert.are.equal(3, peak)
  end)

  it("raises PARALLEL_FAILED when every item failed", function()
    local ok, err = pcall(recipe.parallel, seq(3), function(x) error({ code = "E" .. x }, 0) end)
    assert.is_false(ok)
    assert.are.equal("PARALLEL_FAILED", err.code)
    assert.are.equal(3, #err.failures)
    assert.are.equal("E2", err.failures[2].err.code)
  end)

  it("with fail_fast cancels the others at the first failure and raises", function()
    local finished = {}
    local ok, err = pcall(recipe.parallel, seq(6), function(x)
      recipe.sleep(x == 2 and 20 or 5000)
      if x == 2 then error({ code = "BROKEN" }, 0) end
      finished[#finished + 1] = x
    end, { fail_fast = true })
    assert.is_false(ok)
    assert.are.equal("PARALLEL_FAILED", err.code)
    assert.are.equal(1, #err.failures)
    assert.are.equal(2, err.failures[1].index)
    assert.are.same({}, finished)
    assert.are.equal("INTERRUPTED", err.results[1].err.code)
  end)

  it("checks its arguments", function()
    local ok, err = pcall(recipe.parallel, {}, function() end, { max = 0 })
    assert.is_false(ok)
    assert.are.equal("VALIDATION_ERROR", err.code)
    assert.are.same({}, recipe.parallel({}, function() end))
  end)
end)
