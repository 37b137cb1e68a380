--- Requests served concurrently from the event loop (issue #11): handlers run as tasks, so
-- requests that wait (emulator latency, a handler's sleep, a slow stream) overlap instead of
-- queueing. Clients are curl processes; the bound is generous (a quarter of the serial time).
local emulator = require("support.emulator")
local httpd = require("galley.core.httpd")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local N, SLEEP_MS = 32, 300

-- Waits for every process while the loop runs (so an in-process server is served meanwhile).
local function wait_all(handles)
  local results, left, outs = {}, #handles, {}
  for i = 1, #handles do outs[i] = {} end
  local deadline = runtime.now_ms() + 60000
  while left > 0 and runtime.now_ms() < deadline do
    for i, h in ipairs(handles) do
      local out = outs[i]
      while not results[i] do
        local kind, data = h:read(0)
        if kind == "stdout" then
          out[#out + 1] = data
        elseif kind == "exit" then
          results[i] = { stdout = table.concat(out), exit_code = data }
          left = left - 1
          h:close()
        elseif kind == nil then
          break
        end
      end
    end
    if left > 0 then runtime.sleep_ms(10) end
  end
  return results
end

local function curl(url, key)
  local argv = { "curl", "-s", "-w", " %{http_code}", url }
  if key then
    table.insert(argv, 2, "-H")
    table.insert(argv, 3, "@-")
  end
  return assert(proc.spawn({ argv = argv, stdin = key and ("Authorization: Bearer " .. key .. "\n") or "null" }))
end

describe("httpd concurrency #emulator", function()
  it("galley emulate answers 32 requests with --latency-ms 300 together, not one after the other", function()
    local em = emulator.start({ latency_ms = SLEEP_MS })
    local ok, err = pcall(function()
      local handles = {}
      local t0 = runtime.now_ms()
      for i = 1, N do handles[i] = curl(em.base_url .. "/image", em.api_key) end
      local results = wait_all(handles)
      local elapsed = runtime.now_ms() - t0
      io.stderr:write(("# concurrency: %d requests of %d ms on galley emulate: %d ms (serial: %d ms)\n")
        :format(N, SLEEP_MS, elapsed, N * SLEEP_MS))
      for i = 1, N do assert.are.equal("200", results[i].stdout:match("(%d+)$")) end
      assert.is_true(elapsed < N * SLEEP_MS / 4)
      local log = em:log()
      assert.are.equal(N, #log)
      for _, rec in ipairs(log) do assert.is_true(rec.ms >= SLEEP_MS) end
    end)
    em:stop()
    assert(ok, err)
  end)

  it("galley emulate runs 32 execs of a 300 ms command together: a running command holds up no one", function()
    local em = emulator.start({ boot_delay_ms = 0 })
    local ok, err = pcall(function()
      local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
      local handles = {}
      local t0 = runtime.now_ms()
      for i = 1, N do
        handles[i] = assert(proc.spawn({ argv = {
          "curl", "-s", "-H", "@-", "-H", "Content-Type: application/json",
          "-d", '{"command": ["sleep 0.3; echo ok' .. i .. '"]}', em.base_url .. "/instance/" .. inst .. "/exec",
        }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
      end
      local results = wait_all(handles)
      local elapsed = runtime.now_ms() - t0
      io.stderr:write(("# concurrency: %d execs of sleep 0.3 on galley emulate: %d ms (serial: %d ms)\n")
        :format(N, elapsed, N * SLEEP_MS))
      for i = 1, N do
        local body = require("cjson").decode(results[i].stdout)
        assert.are.equal("ok" .. i .. "\n", body.stdout)
      end
      assert.is_true(elapsed < N * SLEEP_MS / 4)
    end)
    em:stop()
    assert(ok, err)
  end)

  it("serves an in-process server while the main program waits, each handler in a task of its own", function()
    local running, peak = 0, 0
    local server = assert(httpd.serve({ port = 0, handler = function(req)
      running = running + 1
      peak = math.max(peak, running)
      runtime.sleep_ms(SLEEP_MS)
      running = running - 1
      return { status = 200, headers = { ["Content-Type"] = "text/plain" }, body = "slept " .. req.path }
    end }))
    local url = ("http://127.0.0.1:%d"):format(server:port())
    local handles = {}
    local t0 = runtime.now_ms()
    for i = 1, N do handles[i] = curl(url .. "/r" .. i) end
    local results = wait_all(handles)
    local elapsed = runtime.now_ms() - t0
    local stats = server:stats()
    server:stop()
    assert.are.equal(N, stats.requests)
    assert.are.equal(N, stats.connections)
    io.stderr:write(("# concurrency: %d in-process handlers sleeping %d ms: %d ms, %d at once at most\n")
      :format(N, SLEEP_MS, elapsed, peak))
    for i = 1, N do assert.are.equal("slept /r" .. i .. " 200", results[i].stdout) end
    assert.is_true(elapsed < N * SLEEP_MS / 4)
    assert.is_true(peak > N / 2)
  end)

  it("streams chunks produced by a task that sleeps between them, and runs close", function()
    local closed = 0
    local server = assert(httpd.serve({ port = 0, handler = function()
      local n = 0
      return { status = 200, stream = function()
        n = n + 1
        if n > 3 then return nil end
        runtime.sleep_ms(50)
        return "chunk" .. n .. ";"
      end, close = function() closed = closed + 1 end }
    end }))
    local handles = {}
    for i = 1, 8 do handles[i] = curl(("http://127.0.0.1:%d/s"):format(server:port())) end
    local results = wait_all(handles)
    -- A stream's close runs once its task has finished writing: give the last ones a moment.
    for _ = 1, 100 do
      if closed == 8 then break end
      runtime.sleep_ms(20)
    end
    server:stop()
    for i = 1, 8 do assert.are.equal("chunk1;chunk2;chunk3; 200", results[i].stdout) end
    assert.are.equal(8, closed)
  end)

  it("answers 500 when a handler raises, and keeps serving", function()
    local server = assert(httpd.serve({ port = 0, handler = function(req)
      if req.path == "/boom" then error("boom") end
      return { status = 204 }
    end }))
    local url = ("http://127.0.0.1:%d"):format(server:port())
    local results = wait_all({ curl(url .. "/boom"), curl(url .. "/fine") })
    server:close()
    assert.are.equal("500", results[1].stdout:match("(%d+)$"))
    assert.are.equal(" 204", results[2].stdout)
  end)
end)
