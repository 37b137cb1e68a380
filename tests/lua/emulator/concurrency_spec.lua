--- Requests served concurrently from the event loop (issue #11): handlers run as tasks, so
-- requests that wait (emulator latency, a handler's sleep, a slow stream) overlap instead of
-- queueing. Clients are curl processes. No test asserts a duration (CI machines are noisy): the
-- overlap is shown by a barrier (each command or handler waits until all N have arrived, which
-- a server taking one at a time never lets happen) or by the emulator's own log (when each
-- request arrived and how long it took).
local cjson = require("cjson")
local emulator = require("support.emulator")
local overlap = require("support.overlap")
local httpd = require("galley.core.httpd")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local shell = require("galley.core.shell")

local N = 32
-- Long enough that 32 curl processes started on a loaded 2-core machine are all in flight
-- before the first answer, short of the 60 s a one-at-a-time server would need to fail.
local LATENCY_MS = 1500
local BARRIER_S = 30

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
  it("galley emulate answers 32 requests with --latency-ms together, not one after the other", function()
    local em = emulator.start({ latency_ms = LATENCY_MS })
    local ok, err = pcall(function()
      local handles = {}
      local t0 = runtime.now_ms()
      for i = 1, N do handles[i] = curl(em.base_url .. "/image", em.api_key) end
      local results = wait_all(handles)
      local elapsed = runtime.now_ms() - t0
      local log = em:log()
      local peak = overlap.peak(overlap.of_log(log))
      io.stderr:write(("# concurrency: %d requests of %d ms on galley emulate: %d ms (serial: %d ms), %d at once\n")
        :format(N, LATENCY_MS, elapsed, N * LATENCY_MS, peak))
      for i = 1, N do assert.are.equal("200", results[i].stdout:match("(%d+)$")) end
      assert.are.equal(N, #log)
      for _, rec in ipairs(log) do assert.is_true(rec.ms >= LATENCY_MS) end
      -- One at a time would be 1 at once; the clients all start within the latency here.
      assert.is_true(peak > N / 2, ("%d requests in flight at most"):format(peak))
    end)
    em:stop()
    assert(ok, err)
  end)

  it("galley emulate runs 32 execs together: a running command holds up no one", function()
    local em = emulator.start({ boot_delay_ms = 0 })
    local ok, err = pcall(function()
      local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
      local handles = {}
      local t0 = runtime.now_ms()
      -- Each command marks its arrival, then waits (up to BARRIER_S) until all N have arrived and
      -- says how many it saw: an exec that holds up the next one leaves the first waiting alone.
      local script = table.concat({
        'd="$HOME/barrier"; mkdir -p "$d"; : > "$d/$1"; n=0',
        ("while set -- \"$d\"/*; [ $# -lt %d ] && [ $n -lt %d ]; do sleep 0.25; n=$((n+1)); done"):format(N, BARRIER_S * 4),
        'set -- "$d"/*; echo "saw $#"',
      }, "\n")
      for i = 1, N do
        local cmd = ("sh -c %s barrier %d; echo ok%d"):format(shell.quote(script), i, i)
        handles[i] = assert(proc.spawn({ argv = {
          "curl", "-s", "-H", "@-", "-H", "Content-Type: application/json",
          "-d", cjson.encode({ command = { cmd } }), em.base_url .. "/instance/" .. inst .. "/exec",
        }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
      end
      local results = wait_all(handles)
      local elapsed = runtime.now_ms() - t0
      io.stderr:write(("# concurrency: %d execs waiting for each other on galley emulate: %d ms\n"):format(N, elapsed))
      for i = 1, N do
        local body = cjson.decode(results[i].stdout)
        assert.are.equal(("saw %d\nok%d\n"):format(N, i), body.stdout)
      end
    end)
    em:stop()
    assert(ok, err)
  end)

  it("serves an in-process server while the main program waits, each handler in a task of its own", function()
    -- Each handler waits until all N are running at once (up to BARRIER_S): a server that ran
    -- one handler at a time would never get there.
    local running, peak, arrived = 0, 0, 0
    local server = assert(httpd.serve({ port = 0, handler = function(req)
      running = running + 1
      arrived = arrived + 1
      peak = math.max(peak, running)
      local deadline = runtime.now_ms() + BARRIER_S * 1000
      while arrived < N and runtime.now_ms() < deadline do runtime.sleep_ms(20) end
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
    io.stderr:write(("# concurrency: %d in-process handlers waiting for each other: %d ms, %d at once at most\n")
      :format(N, elapsed, peak))
    for i = 1, N do assert.are.equal("slept /r" .. i .. " 200", results[i].stdout) end
    assert.are.equal(N, peak)
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
