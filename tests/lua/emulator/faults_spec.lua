-- galley emulate: injected faults, the request log, keep-alive connections and the state dump.
local emulator = require("support.emulator")
local http = require("galley.core.http")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")

local function eventually(check, what)
  local deadline = runtime.now_ms() + 15000
  while runtime.now_ms() < deadline do
    local v = check()
    if v then return v end
    runtime.sleep_ms(20)
  end
  error("timed out waiting for " .. what)
end

describe("galley emulate: faults and control routes #emulator", function()
  local em, id
  local startup_statuses = {}

  lazy_setup(function()
    em = emulator.start({
      boot_delay_ms = 0,
      faults = { { method = "GET", path = "/image", action = "status", status = 500, count = 1 } },
    })
    for i = 1, 2 do startup_statuses[i] = assert(em:request("GET", "/image")).status end
    id = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. id)).json.status == "ready"
    end, "ready")
  end)

  lazy_teardown(function()
    if em then em:stop() end
  end)

  before_each(function()
    em:clear_faults()
    em:clear_log()
  end)

  local function exec(command)
    return em:request("POST", "/instance/" .. id .. "/exec", { command = command })
  end

  local function exists(name)
    return assert(exec({ "test -e " .. name })).json.exit_code == 0
  end

  local function raw(method, path, body, timeout_ms)
    return http.request({
      method = method, url = em.base_url .. path, body = body and cjson.encode(body),
      headers = { Authorization = "Bearer " .. em.api_key, ["Content-Type"] = "application/json" },
      timeout_ms = timeout_ms,
    })
  end

  describe("fault actions", function()
    it("installs faults given at start (--fault)", function()
      -- lazy_setup made the first two calls: only the first one got the fault
      assert.are.same({ 500, 200 }, startup_statuses)
    end)

    it("status: answers the status with Retry-After, does no work, for `count` requests", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 503, retry_after = 2,
        count = 2 })
      for _ = 1, 2 do
        local r = assert(exec({ "touch status-fault" }))
        assert.are.equal(503, r.status)
        assert.are.equal("2", r.headers["retry-after"])
        assert.is_string(r.json.detail)
      end
      assert.is_false(exists("status-fault"))
      assert.are.equal(200, assert(exec({ "true" })).status)
    end)

    it("delay: does the work, then waits before answering", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "delay", delay_ms = 3000 })
      local r, err = raw("POST", "/instance/" .. id .. "/exec", { command = { "touch delayed" } }, 500)
      assert.is_nil(r)
      assert.are.equal("HTTP_TIMEOUT", err.code)
      assert.is_true(exists("delayed"))
    end)

    it("reset: closes the connection without an answer and does no work", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "reset" })
      local r, err = raw("POST", "/instance/" .. id .. "/exec", { command = { "touch was-reset" } })
      assert.is_nil(r)
      assert.is_string(err.code)
      assert.is_false(exists("was-reset"))
      local log = em:log()
      assert.are.equal(0, log[1].status)
      assert.are.equal("reset", log[1].fault)
    end)

    it("reset_after: does the work, then closes the connection without an answer", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "reset_after" })
      local r, err = raw("POST", "/instance/" .. id .. "/exec", { command = { "touch answer-lost" } })
      assert.is_nil(r)
      assert.is_string(err.code)
      assert.is_true(exists("answer-lost"))
      local log = em:log()
      assert.are.equal(0, log[1].status)
      assert.are.equal("reset_after", log[1].fault)
      assert.is_true(log[1].handled)
      assert.is_true(log[2].handled) -- the exists() check
    end)

    it("reset_after: runs a stream to its end before dropping it", function()
      em:fault({ method = "POST", path = "/instance/*/exec/sse", action = "reset_after" })
      local r = raw("POST", "/instance/" .. id .. "/exec/sse", { command = { "sleep 0.2; touch stream-lost" } })
      assert.is_nil(r)
      assert.is_true(exists("stream-lost"))
    end)

    it("logs whether the request was handled: a status or reset fault does no work", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 502 })
      assert.are.equal(502, assert(exec({ "true" })).status)
      assert.are.equal(200, assert(exec({ "true" })).status)
      local log = em:log()
      assert.is_false(log[1].handled)
      assert.is_true(log[2].handled)
    end)

    it("malformed: does the work and answers 200 with a body that is not JSON", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "malformed" })
      local r = assert(raw("POST", "/instance/" .. id .. "/exec", { command = { "touch malformed" } }))
      assert.are.equal(200, r.status)
      assert.is_false((pcall(cjson.decode, r.body)))
      assert.is_true(exists("malformed"))
    end)

    it("truncate: does the work, promises the whole body and sends only part of it", function()
      em:fault({ method = "POST", path = "/instance/*/exec", action = "truncate", bytes = 5 })
      local r, err = raw("POST", "/instance/" .. id .. "/exec", { command = { "touch truncated" } })
      assert.is_nil(r)
      assert.is_string(err.code)
      assert.is_true(exists("truncated"))
    end)

    it("truncate: cuts an SSE stream short", function()
      em:fault({ method = "POST", path = "/instance/*/exec/sse", action = "truncate" })
      local r, err = raw("POST", "/instance/" .. id .. "/exec/sse", { command = { "echo a; sleep 0.2; echo b" } })
      assert.is_nil(r)
      assert.is_string(err.code)
    end)

    it("matches method and a one-segment glob only", function()
      em:fault({ method = "GET", path = "/instance/*", action = "status", status = 429, count = 5 })
      assert.are.equal(200, assert(em:request("GET", "/instance")).status)
      assert.are.equal(200, assert(exec({ "true" })).status)
      assert.are.equal(429, assert(em:request("GET", "/instance/" .. id)).status)
      em:clear_faults()
      em:fault({ path = "/instance/**", action = "status", status = 502 })
      assert.are.equal(502, assert(exec({ "true" })).status)
    end)

    it("lists, clears and validates faults through the control routes", function()
      local list = em:fault({ path = "/snapshot", action = "delay", delay_ms = 1 })
      assert.are.equal(1, #list)
      assert.are.equal("delay", list[1].action)
      assert.are.equal("*", list[1].method)
      assert.are.equal(1, list[1].count)
      assert.are.equal(1, #em:state().faults)
      em:clear_faults()
      assert.are.equal(0, #em:state().faults)
      local r = assert(em:request("POST", "/_emulator/faults", { path = "/x", action = "explode" }))
      assert.are.equal(422, r.status)
      r = assert(em:request("POST", "/_emulator/faults", { action = "reset" }))
      assert.are.equal(422, r.status)
    end)

    it("checks faults before the key, so a fault answers even unauthenticated calls", function()
      em:fault({ method = "GET", path = "/instance", action = "status", status = 503 })
      local r = assert(http.request({ method = "GET", url = em.base_url .. "/instance" }))
      assert.are.equal(503, r.status)
    end)
  end)

  describe("request log", function()
    it("records method, path, status, ms and connection, without control routes", function()
      assert(em:request("GET", "/instance/" .. id))
      assert(em:request("GET", "/instance/morphvm_nothere"))
      em:state()
      local log = em:log()
      assert.are.equal(2, #log)
      assert.are.same({ "GET", "/instance/" .. id, 200 }, { log[1].method, log[1].path, log[1].status })
      assert.are.same({ "GET", "/instance/morphvm_nothere", 404 }, { log[2].method, log[2].path, log[2].status })
      assert.is_number(log[1].ms)
      assert.is_number(log[1].conn)
      em:clear_log()
      assert.are.equal(0, #em:log())
    end)

    it("shows keep-alive reuse: one connection id per TCP connection", function()
      local s = http.session({ timeout_ms = 30000 })
      local auth = { Authorization = "Bearer " .. em.api_key }
      for _ = 1, 3 do assert(s:request({ method = "GET", url = em.base_url .. "/image", headers = auth })) end
      s:close()
      assert(http.request({ method = "GET", url = em.base_url .. "/image", headers = auth }))
      assert(http.request({ method = "GET", url = em.base_url .. "/image", headers = auth }))
      local log = em:log()
      assert.are.equal(5, #log)
      assert.are.equal(log[1].conn, log[2].conn)
      assert.are.equal(log[1].conn, log[3].conn)
      assert.are_not.equal(log[1].conn, log[4].conn)
      assert.are_not.equal(log[4].conn, log[5].conn)
    end)

    it("logs 401s and never the key", function()
      assert(http.request({
        method = "GET", url = em.base_url .. "/instance", headers = { Authorization = "Bearer nope" },
      }))
      local r = assert(em:request("GET", "/_emulator/log"))
      assert.are.equal(401, r.json.data[1].status)
      assert.falsy(r.body:find(em.api_key, 1, true))
    end)
  end)

  describe("state dump", function()
    it("lists instances (with dir and process count), snapshots, images and options, never the key", function()
      local r = assert(em:request("GET", "/_emulator/state"))
      assert.are.equal(200, r.status)
      local st = r.json
      local found
      for _, i in ipairs(st.instances) do
        if i.id == id then found = i end
      end
      assert.is_table(found)
      assert.are.equal("ready", found.status)
      assert.is_string(found.dir)
      assert.are.equal(0, found.processes)
      assert.are.equal(emulator.SNAPSHOT, st.snapshots[1].id)
      assert.are.equal("morphvm-minimal", st.images[1].id)
      assert.are.equal(em.port, st.options.port)
      assert.are.equal(em.state_dir, st.options.state_dir)
      assert.falsy(r.body:find(em.api_key, 1, true))
    end)
  end)

  describe("latency", function()
    it("still answers correctly with --latency-ms", function()
      local slow = emulator.start({ latency_ms = 20 })
      local ok, err = pcall(function()
        assert.are.equal(200, assert(slow:request("GET", "/image")).status)
        assert.are.equal(1, #slow:log())
      end)
      slow:stop()
      assert(ok, err)
    end)
  end)
end)
