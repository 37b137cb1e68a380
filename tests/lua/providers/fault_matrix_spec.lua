-- The fault matrix: every Morph operation galley makes, against `galley emulate` (a real server
-- on loopback), under every fault the emulator injects. Each cell must end recovered (the
-- operation's result is right) or with an error whose code is one of the few allowed for it;
-- the server's request log must show no create or exec done twice; and no instance may be left
-- on the server that the caller was not told about. The table (op x fault -> ok / CODE, and the
-- number of /api requests the cell made) is printed at the end.
--
-- Faults hit the first request of the operation that matches (count 1): POST
-- /snapshot/*/boot for boot, GET /instance/* for get, GET /instance for list, POST
-- /instance/*/exec for exec and the files API (the first exec of a 3 MiB write or read: several
-- execs in every exec form, so a failed write leaves nothing; the provider's default exec_form
-- "auto" has probed the service while the spec set up), POST
-- /instance/*/exec/sse for spawn, DELETE /instance/* for stop and terminate.
local emulator = require("support.emulator")
local codec = require("galley.core.codec")
local runtime = require("galley.core.runtime")

-- Client time limits (per request and per exec) and the injected delay that outlasts them.
local TIMEOUT_MS = 2500
local DELAY_MS = 4000
local FILE_BYTES = 3 * 1024 * 1024

local FAULTS = {
  { name = "none" },
  { name = "429", action = "status", status = 429, retry_after = 1 },
  { name = "500", action = "status", status = 500 },
  { name = "502", action = "status", status = 502 },
  { name = "503", action = "status", status = 503 },
  { name = "504", action = "status", status = 504 },
  { name = "reset", action = "reset" },             -- before the server acted
  { name = "lost", action = "reset_after" },        -- the server acted, its answer is lost
  { name = "timeout", action = "delay", delay_ms = DELAY_MS },
  { name = "garbled", action = "malformed" },
}

-- What each kind of operation may end in, per fault ("ok": recovered, else an error code).
local READ = { default = "ok" }                                   -- GETs: retried through all
local DELETE = { default = "ok" }                                 -- gone is success
local CREATE = { default = "ok", ["500"] = "SERVER_ERROR", ["502"] = "SERVER_ERROR", ["503"] = "SERVER_ERROR",
  ["504"] = "SERVER_ERROR", reset = "NETWORK_ERROR" }             -- a lost answer: found by its token
local RUN = { default = "ok", ["500"] = "SERVER_ERROR", ["502"] = "SERVER_ERROR", ["503"] = "SERVER_ERROR",
  ["504"] = "SERVER_ERROR", reset = "NETWORK_ERROR", lost = "NETWORK_ERROR", timeout = "TIMEOUT",
  garbled = "PROTOCOL_ERROR" }                                    -- never sent twice
local STREAM = { default = "ok", ["500"] = "SERVER_ERROR", ["502"] = "SERVER_ERROR", ["503"] = "SERVER_ERROR",
  ["504"] = "SERVER_ERROR", reset = "NETWORK_ERROR", lost = "NETWORK_ERROR", timeout = "TIMEOUT" }
                                                                  -- a garbled event is skipped

local function allowed(expect, fault)
  return expect[fault] or expect.default
end

describe("the Morph fault matrix on galley emulate #slow #emulator", function()
  local em, p, shared
  local content = codec.random_bytes(FILE_BYTES)
  local known = {}       -- instance ids the spec was told about and still holds
  local results = {}     -- op -> fault -> {outcome, requests}
  local baseline = {}    -- op -> handled execs of the fault-free run

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 100 })
    p = require("galley.providers.morph").new({
      api_key = em.api_key, base_url = em.base_url,
      timeout_ms = TIMEOUT_MS, exec_timeout_ms = TIMEOUT_MS, boot_timeout_ms = 30000,
      -- an exec's answer is waited for its command's limit plus this: the delay cell passes both
      exec_backstop_ms = DELAY_MS - TIMEOUT_MS - 1000,
      retry = { max_attempts = 4, base_delay_ms = 50, max_delay_ms = 400 },
    })
    shared = p.instances.boot(emulator.SNAPSHOT).id
    known[shared] = true
    p.files.write_file_atomic(shared, "/root/matrix-read.bin", content)
  end)

  lazy_teardown(function()
    if p then
      for id in pairs(known) do pcall(p.instances.terminate, id) end
      p.close()
    end
    if em then em:stop() end
  end)

  local function boot_one()
    local id = p.instances.boot(emulator.SNAPSHOT).id
    known[id] = true
    return id
  end

  local function sh(id, script)
    return p.exec(id, { kind = "argv", command = "sh", args = { "-c", script } })
  end

  -- Each op: path/method the fault targets, what counts as one request done twice, setup,
  -- run (returns a value check() accepts), and the outcomes allowed.
  local OPS = {
    { name = "boot", method = "POST", path = "/snapshot/*/boot", expect = CREATE, once = "boot",
      run = function()
        local inst = p.instances.boot(emulator.SNAPSHOT)
        known[inst.id] = true
        return inst
      end,
      check = function(inst) return inst.status == "ready" end },
    { name = "get", method = "GET", path = "/instance/*", expect = READ,
      run = function() return p.instances.get(shared) end,
      check = function(inst) return inst.id == shared and inst.status == "ready" end },
    { name = "list", method = "GET", path = "/instance", expect = READ,
      run = function() return p.instances.list() end,
      check = function(list)
        for _, inst in ipairs(list) do if inst.id == shared then return true end end
        return false
      end },
    { name = "exec", method = "POST", path = "/instance/*/exec", expect = RUN, once = "exec",
      run = function() return sh(shared, "echo ran >> /root/matrix-exec.log; echo hello") end,
      check = function(r) return r.exit_code == 0 and r.stdout == "hello\n" end },
    { name = "spawn", method = "POST", path = "/instance/*/exec/sse", expect = STREAM, once = "sse",
      run = function()
        local h = p.spawn(shared, { "sh", "-c", "echo streamed; echo oops >&2" })
        local r, err = h:wait(3 * TIMEOUT_MS)
        h:close()
        if not r then error(err or { code = "SPEC_WAIT_TIMEOUT" }, 0) end
        return r
      end,
      check = function(r) return r.exit_code == 0 and r.stdout == "streamed\n" and r.stderr == "oops\n" end },
    { name = "stop", method = "DELETE", path = "/instance/*", expect = DELETE,
      setup = boot_one,
      run = function(id)
        p.instances.stop(id)
        known[id] = nil
        return id
      end,
      check = function(id)
        local ok, err = pcall(p.instances.get, id)
        return not ok and err.code == "NOT_FOUND"
      end },
    { name = "terminate", method = "DELETE", path = "/instance/*", expect = DELETE,
      setup = boot_one,
      run = function(id)
        p.instances.terminate(id)
        known[id] = nil
        return id
      end,
      check = function(id)
        local ok, err = pcall(p.instances.get, id)
        return not ok and err.code == "NOT_FOUND"
      end },
    { name = "write 3M", method = "POST", path = "/instance/*/exec", expect = RUN, files = true,
      setup = function() sh(shared, "rm -f /root/matrix-write.bin") end,
      run = function() return p.files.write_file_atomic(shared, "/root/matrix-write.bin", content) end,
      check = function()
        local r = sh(shared, "sha256sum /root/matrix-write.bin")
        return r.stdout:sub(1, 64) == codec.sha256(content)
      end,
      -- a failed atomic write leaves no file behind
      check_failed = function()
        return sh(shared, "ls -A /root | grep -c matrix-write || true").stdout == "0\n"
      end },
    { name = "read 3M", method = "POST", path = "/instance/*/exec", expect = RUN, files = true,
      run = function() return p.files.read_file(shared, "/root/matrix-read.bin") end,
      check = function(s) return s == content end },
  }

  -- Log records of the cell; waits for the faulted request's record (a delayed answer is
  -- logged when the server finally answers it, after the client gave up).
  local function cell_log(faulted)
    local deadline = runtime.now_ms() + DELAY_MS + 15000
    while true do
      local log = em:log()
      if not faulted then return log end
      for _, r in ipairs(log) do if r.fault then return log end end
      assert(runtime.now_ms() < deadline, "the faulted request never reached the log")
      runtime.sleep_ms(50)
    end
  end

  local function handled(log, kind)
    local n = 0
    for _, r in ipairs(log) do
      if r.handled and r.method == "POST" then
        local hit = (kind == "boot" and r.path:match("^/snapshot/[^/]+/boot$"))
          or (kind == "exec" and r.path:match("^/instance/[^/]+/exec$"))
          or (kind == "sse" and r.path:match("^/instance/[^/]+/exec/sse$"))
        if hit then n = n + 1 end
      end
    end
    return n
  end

  for _, op in ipairs(OPS) do
    for _, fault in ipairs(FAULTS) do
      it(("%s under fault %s: recovers or fails with the allowed code, nothing done twice, nothing leaked")
          :format(op.name, fault.name), function()
        em:clear_faults()
        local arg = op.setup and op.setup() or nil
        em:clear_log()
        if fault.action then
          em:fault({ method = op.method, path = op.path, action = fault.action, status = fault.status,
            retry_after = fault.retry_after, delay_ms = fault.delay_ms, count = 1 })
        end
        local ok, res = pcall(op.run, arg)
        em:clear_faults()
        local log = cell_log(fault.action ~= nil)
        local outcome
        if ok then
          outcome = "ok"
        elseif type(res) == "table" and type(res.code) == "string" then
          outcome = res.code
        else
          outcome = "LUA: " .. tostring(res)
        end
        results[op.name] = results[op.name] or {}
        results[op.name][fault.name] = { outcome = outcome, requests = #log }

        local want = allowed(op.expect, fault.name)
        assert.are.equal(want, outcome, ("%s x %s: %s"):format(op.name, fault.name,
          ok and "recovered" or tostring(res)))
        if ok then
          assert.is_true(op.check(res), op.name .. ": wrong result after recovering")
        elseif op.check_failed then
          assert.is_true(op.check_failed(), op.name .. ": a failed operation left a trace")
        end

        -- nothing done twice, as the server saw it
        if op.once then
          assert.is_true(handled(log, op.once) <= 1, op.name .. ": the server did it twice")
          if ok then assert.are.equal(1, handled(log, op.once)) end
        end
        if op.files then
          local n = handled(log, "exec")
          if not fault.action then
            baseline[op.name] = n
          else
            -- a failed transfer may add one exec (removing its temporary file)
            assert.is_true(n <= baseline[op.name] + 1, op.name .. ": more execs than a clean transfer")
          end
        end
        if op.name == "exec" then
          local r = sh(shared, "cat /root/matrix-exec.log 2>/dev/null | wc -l; rm -f /root/matrix-exec.log")
          local runs = tonumber(r.stdout)
          assert.is_true(runs <= 1, "the command ran twice")
          if ok then assert.are.equal(1, runs) end
        end
        if op.setup and not ok and arg and known[arg] then
          pcall(p.instances.terminate, arg) -- the caller holds it: not a leak
          known[arg] = nil
        end

        -- nothing leaked: every instance on the server is one the caller holds
        for _, inst in ipairs(em:state().instances) do
          assert.is_true(known[inst.id] == true, ("%s x %s: instance %s leaked"):format(op.name, fault.name, inst.id))
        end
        for id in pairs(known) do
          if id ~= shared then
            p.instances.terminate(id)
            known[id] = nil
          end
        end
      end)
    end
  end

  it("prints the table", function()
    local widths = { 10 }
    local header = { ("%-10s"):format("op \\ fault") }
    for i, f in ipairs(FAULTS) do
      widths[i + 1] = math.max(#f.name, 16)
      header[#header + 1] = ("%-" .. widths[i + 1] .. "s"):format(f.name)
    end
    local lines = { table.concat(header, " ") }
    local cells = 0
    for _, op in ipairs(OPS) do
      local row = { ("%-10s"):format(op.name) }
      for i, f in ipairs(FAULTS) do
        local r = (results[op.name] or {})[f.name]
        if r then cells = cells + 1 end
        local text = r and ("%s (%d)"):format(r.outcome == "ok" and "recovered" or r.outcome, r.requests) or "-"
        row[#row + 1] = ("%-" .. widths[i + 1] .. "s"):format(text)
      end
      lines[#lines + 1] = table.concat(row, " ")
    end
    io.stdout:write("\n# fault matrix (outcome, /api requests)\n# ", table.concat(lines, "\n# "), "\n")
    assert.are.equal(#OPS * #FAULTS, cells)
  end)
end)
