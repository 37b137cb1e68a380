-- galley.morph_client (over the transport galley.core.morph) against `galley emulate` (support.emulator): every endpoint, every error
-- code, every retry rule, with request counts taken from the emulator's request log.
local support = require("support")
local emulator = require("support.emulator")
local morph = require("galley.morph_client")
local runtime = require("galley.core.runtime")

local FAST = { max_attempts = 3, base_delay_ms = 10, max_delay_ms = 50, max_elapsed_ms = 20000 }

--- A client on the emulator that records its log hook calls.
local function client(em, opts)
  opts = opts or {}
  local records = {}
  local c, err = morph.new{
    api_key = opts.api_key or em.api_key,
    base_url = opts.base_url or em.base_url,
    timeout_ms = opts.timeout_ms or 20000,
    retry = opts.retry or FAST,
    log = function(r) records[#records + 1] = r end,
  }
  assert(c, tostring(err))
  return c, records
end

--- How many logged requests have this method and a path matching the (anchored) Lua pattern.
local function count(em, method, pattern)
  local n = 0
  for _, r in ipairs(em:log()) do
    if r.method == method and r.path:match("^" .. pattern .. "$") then n = n + 1 end
  end
  return n
end

--- count(), once the emulator has logged at least `want` such requests (it logs a request when
-- it has answered it, so a delayed answer shows up late), or after 10 s.
local function count_settled(em, method, pattern, want)
  local deadline = runtime.now_ms() + 10000
  local n = count(em, method, pattern)
  while n < want and runtime.now_ms() < deadline do
    runtime.sleep_ms(50)
    n = count(em, method, pattern)
  end
  return n
end

--- Every string in a value (keys too), for "the key never appears" checks.
local function strings_of(v, out, seen)
  out, seen = out or {}, seen or {}
  if type(v) == "string" then
    out[#out + 1] = v
  elseif type(v) == "table" and not seen[v] then
    seen[v] = true
    for k, x in pairs(v) do
      strings_of(k, out, seen)
      strings_of(x, out, seen)
    end
  end
  return out
end

local function mentions(v, needle)
  for _, s in ipairs(strings_of(v)) do
    if s:find(needle, 1, true) then return true end
  end
  return false
end

local function ready_instance(c, metadata)
  local inst = assert(c:instances_start(emulator.SNAPSHOT, { metadata = metadata }))
  return assert(c:wait_ready(inst.id, { timeout_ms = 20000 }))
end

describe("galley.morph_client over galley.core.morph #morph", function()
  local em

  setup(function() em = emulator.start{ boot_delay_ms = 30 } end)
  teardown(function() if em then em:stop() end end)
  before_each(function()
    em:clear_faults()
    em:clear_log()
  end)

  describe("the endpoint table", function()
    it("lists every SDK endpoint once, with a convenience method for each", function()
      local c = client(em)
      local names = {
        "images.list", "snapshots.list", "snapshots.list_page", "snapshots.create", "snapshots.get",
        "snapshots.delete", "snapshots.metadata", "snapshots.ttl", "snapshots.boot", "instances.list",
        "instances.list_page", "instances.start", "instances.get", "instances.stop", "instances.pause",
        "instances.resume", "instances.reboot", "instances.snapshot", "instances.branch", "instances.exec",
        "instances.exec_sse", "instances.metadata", "instances.ttl", "instances.wake_on",
        "instances.http_expose", "instances.http_hide", "instances.ssh_key", "instances.ssh_key_rotate",
      }
      local n = 0
      for _ in pairs(morph.endpoints) do n = n + 1 end
      assert.are.equal(#names, n)
      for _, name in ipairs(names) do
        local e = morph.endpoints[name]
        assert.is_table(e, name)
        assert.are.equal(name, e.name)
        assert.is_function(c[(name:gsub("%.", "_", 1))], name)
      end
      for _, name in ipairs{ "instances.start", "snapshots.boot", "instances.branch", "instances.snapshot",
                             "instances.exec", "instances.exec_sse", "snapshots.create" } do
        assert.is_false(morph.endpoints[name].idempotent, name)
      end
      assert.is_true(morph.endpoints["instances.get"].idempotent)
      assert.are.equal("GET", morph.endpoints["instances.get"].method)
      assert.are.equal("/instance/{instance_id}", morph.endpoints["instances.get"].path)
      c:close()
    end)

    it("raises on misuse: unknown endpoint, missing path parameter, bad body", function()
      local c = client(em)
      assert.has_error(function() c:call("instances.nope", {}) end)
      assert.has_error(function() c:call("instances.get", {}) end)
      assert.has_error(function() c:instances_get() end)
      assert.has_error(function() c:instances_metadata("x", 42) end)
      assert.has_error(function() c:instances_list{ metadata = { k = {} } } end)
      c:close()
      assert.has_error(function() c:images_list() end)
      assert.matches("closed", tostring(c))
      assert.are.equal(0, #em:log())
    end)
  end)

  describe("endpoints", function()
    it("lists images and snapshots, paginated too", function()
      local c = client(em)
      local images = assert(c:images_list())
      assert.are.equal("list", images.object)
      assert.are.equal("morphvm-minimal", images.data[1].id)
      local snaps = assert(c:snapshots_list())
      assert.are.equal(emulator.SNAPSHOT, snaps.data[1].id)
      local page = assert(c:snapshots_list_page{ page = 1, limit = 10 })
      assert.is_table(page.snapshots)
      assert.are.equal(1, page.page)
      page = assert(c:instances_list_page{ page = 1, limit = 5 })
      assert.is_table(page.instances)
      c:close()
    end)

    it("creates, reads, labels, times and deletes a snapshot, and boots from it", function()
      local c = client(em)
      local snap = assert(c:snapshots_create{ image_id = "morphvm-minimal", vcpus = 1, memory = 128,
                                              disk_size = 700, metadata = { purpose = "spec" } })
      assert.are.equal("snapshot", snap.object)
      local deadline = runtime.now_ms() + 20000
      while snap.status ~= "ready" and runtime.now_ms() < deadline do
        runtime.sleep_ms(20)
        snap = assert(c:snapshots_get(snap.id))
      end
      assert.are.equal("ready", snap.status)
      snap = assert(c:snapshots_metadata(snap.id, { purpose = "relabelled" }))
      assert.are.equal("relabelled", snap.metadata.purpose)
      snap = assert(c:snapshots_ttl(snap.id, { ttl_seconds = 3600 }))
      assert.are.equal(3600, snap.ttl.ttl_seconds)
      local inst = assert(c:snapshots_boot(snap.id, { vcpus = 1, metadata = { from = "boot" } }))
      assert.are.equal("boot", inst.metadata.from)
      assert.matches("^%x+$", inst.metadata.galley_request_token)
      assert.are.equal("ready", assert(c:wait_ready(inst.id)).status)
      assert.is_true(assert(c:instances_stop(inst.id)))
      assert.is_true(assert(c:snapshots_delete(snap.id)))
      c:close()
    end)

    it("drives an instance through its whole life", function()
      local c = client(em)
      local inst = assert(c:instances_start(emulator.SNAPSHOT, { metadata = { role = "life" }, ttl_seconds = 600 }))
      assert.are.equal("instance", inst.object)
      assert.matches("^%x+$", inst.metadata.galley_request_token)
      inst = assert(c:wait_ready(inst.id))
      local id = inst.id
      assert.are.equal(id, assert(c:instances_get(id)).id)
      local listed = assert(c:instances_list{ metadata = { role = "life" } })
      assert.are.equal(1, #listed.data)
      assert.are.equal(id, listed.data[1].id)

      local r = assert(c:instances_exec(id, { "sh", "-c", "echo out; echo err >&2; exit 3" }))
      assert.are.same({ exit_code = 3, stdout = "out\n", stderr = "err\n" }, r)
      r = assert(c:instances_exec(id, "echo one-string"))
      assert.are.equal("one-string\n", r.stdout)

      inst = assert(c:instances_metadata(id, { role = "life", extra = "yes" }))
      assert.are.equal("yes", inst.metadata.extra)
      inst = assert(c:instances_ttl(id, { ttl_seconds = 900, ttl_action = "pause" }))
      assert.are.equal("pause", inst.ttl.ttl_action)
      inst = assert(c:instances_wake_on(id, { wake_on_ssh = true, wake_on_http = false }))
      assert.is_true(inst.wake_on.wake_on_ssh)
      inst = assert(c:instances_http_expose(id, { name = "web", port = 8000 }))
      assert.are.equal("web", inst.networking.http_services[1].name)
      inst = assert(c:instances_http_hide(id, "web"))
      assert.are.equal(0, #inst.networking.http_services)
      local key = assert(c:instances_ssh_key(id))
      assert.are.equal("instance_ssh_key", key.object)
      local rotated = assert(c:instances_ssh_key_rotate(id))
      assert.are_not.equal(key.private_key, rotated.private_key)

      local snap = assert(c:instances_snapshot(id, { metadata = { kind = "save" } }, { digest = "spec-digest-1" }))
      assert.are.equal("snapshot", snap.object)
      assert.are.equal("spec-digest-1", snap.digest)
      local branch = assert(c:instances_branch(id, { instance_metadata = { clone = "yes" } }, { count = 2 }))
      assert.are.equal(2, #branch.instances)
      local token = branch.instances[1].metadata.galley_request_token
      assert.matches("^%x+$", token)
      assert.are.equal(token, branch.instances[2].metadata.galley_request_token)
      assert.are.equal(2, #assert(c:instances_list{ metadata = { galley_request_token = token } }).data)
      for _, clone in ipairs(branch.instances) do assert.is_true(assert(c:instances_stop(clone.id))) end

      assert.are.equal("paused", assert(c:instances_pause(id)).status)
      assert.is_table(assert(c:instances_resume(id)))
      assert.are.equal("ready", assert(c:wait_ready(id)).status)
      assert.is_table(assert(c:instances_reboot(id)))
      assert.are.equal("ready", assert(c:wait_ready(id)).status)
      assert.is_true(assert(c:instances_stop(id)))
      local _, err = c:instances_get(id)
      assert.are.equal("NOT_FOUND", err.code)
      c:close()
    end)

    it("streams exec output to callbacks as it arrives and ends with the exit code", function()
      local c = client(em)
      local inst = ready_instance(c)
      local out, err = {}, {}
      local r = assert(c:instances_exec(inst.id, { "sh", "-c", "echo a; sleep 0.2; echo b >&2; echo c; exit 7" }, {
        on_stdout = function(s) out[#out + 1] = s end,
        on_stderr = function(s) err[#err + 1] = s end,
      }))
      assert.are.equal(7, r.exit_code)
      assert.are.equal("a\nc\n", table.concat(out))
      assert.are.equal("b\n", table.concat(err))
      assert.are.equal("a\nc\n", r.stdout)
      assert.are.equal("b\n", r.stderr)
      assert.is_true(#out >= 2)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/exec/sse"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("re-raises an error from a stream callback, lets callbacks use the client, and stays usable", function()
      local c = client(em)
      local inst = ready_instance(c)
      local ok, e = pcall(c.instances_exec, c, inst.id, "echo x", { on_stdout = function() error("callback broke") end })
      assert.is_false(ok)
      assert.matches("callback broke", tostring(e))
      -- callbacks run in Lua between reads of the stream, not inside libcurl: they may call out
      local images
      local r = assert(c:instances_exec(inst.id, "echo x", { on_stdout = function() images = c:images_list() end }))
      assert.are.equal(0, r.exit_code)
      assert.is_table(images.data)
      assert.are.equal("x\n", assert(c:instances_exec(inst.id, "echo x")).stdout)
      c:instances_stop(inst.id)
      c:close()
    end)

    it("works through the generic call with path parameters, query and body", function()
      local c = client(em)
      local inst = assert(c:call("instances.start", { snapshot_id = emulator.SNAPSHOT, body = { metadata = { via = "call" } } }))
      assert.are.equal("call", inst.metadata.via)
      assert.are.equal(inst.id, assert(c:call("instances_get", { instance_id = inst.id })).id)
      local listed = assert(c:call("instances.list", { query = { metadata = { via = "call" } } }))
      assert.are.equal(1, #listed.data)
      assert.is_true(assert(c:call("instances.stop", { instance_id = inst.id })))
      c:close()
    end)

    it("URL-encodes metadata filters so keys and values with spaces and & match exactly", function()
      local c = client(em)
      local a = assert(c:instances_start(emulator.SNAPSHOT, { metadata = { ["a b"] = "x&y=z" } }))
      local b = assert(c:instances_start(emulator.SNAPSHOT, { metadata = { ["a b"] = "x" } }))
      local listed = assert(c:instances_list{ metadata = { ["a b"] = "x&y=z" } })
      assert.are.equal(1, #listed.data)
      assert.are.equal(a.id, listed.data[1].id)
      c:instances_stop(a.id)
      c:instances_stop(b.id)
      c:close()
    end)

    it("sends a run of sequential calls over one TCP connection", function()
      local c = client(em)
      for _ = 1, 20 do assert(c:images_list()) end
      local conns = {}
      for _, r in ipairs(em:log()) do conns[r.conn] = true end
      local n = 0
      for _ in pairs(conns) do n = n + 1 end
      assert.are.equal(1, n)
      c:close()
    end)

    it("logs one record per attempt without query string or key", function()
      local c, records = client(em)
      em:fault{ method = "GET", path = "/instance", action = "status", status = 503, count = 1 }
      assert(c:instances_list{ metadata = { secret = "hidden-value" } })
      assert.are.equal(2, #records)
      assert.are.same({ "GET", "/instance", 503, 1 }, { records[1].method, records[1].path, records[1].status, records[1].attempt })
      assert.are.same({ "GET", "/instance", 200, 2 }, { records[2].method, records[2].path, records[2].status, records[2].attempt })
      assert.is_number(records[1].ms)
      assert.is_false(mentions(records, em.api_key))
      assert.is_false(mentions(records, "hidden-value"))
      c:close()
    end)
  end)

  describe("errors #error", function()
    it("fails with AUTHENTICATION_ERROR before any request when there is no key", function()
      local c, err = morph.new{ api_key = "", base_url = em.base_url }
      assert.is_nil(c)
      assert.are.equal("AUTHENTICATION_ERROR", err.code)
      assert.are.equal(0, #em:log())
    end)

    it("turns a 401 into AUTHENTICATION_ERROR, and the key is in neither the error nor the log", function()
      local wrong = "morph_wrong_key_" .. em.api_key:sub(-8)
      local c, records = client(em, { api_key = wrong })
      local r, err = c:instances_list()
      assert.is_nil(r)
      assert.are.equal("AUTHENTICATION_ERROR", err.code)
      assert.are.equal(401, err.status)
      assert.are.equal("instances.list", err.operation)
      assert.is_string(err.hint)
      assert.are.equal(1, count(em, "GET", "/instance"))
      assert.is_false(mentions(err, wrong))
      assert.is_false(mentions(err, em.api_key))
      assert.is_false(mentions(records, wrong))
      assert.is_false(mentions(tostring(err), wrong))
      assert.is_false(mentions(tostring(c), wrong))
      c:close()
    end)

    it("turns a 404 into NOT_FOUND naming the operation and resource", function()
      local c = client(em)
      local _, err = c:instances_get("morphvm_nothere")
      assert.are.equal("NOT_FOUND", err.code)
      assert.are.equal(404, err.status)
      assert.are.equal("instances.get", err.operation)
      assert.are.equal("instance:morphvm_nothere", err.resource)
      assert.are.equal(1, err.attempt)
      assert.are.equal(1, count(em, "GET", "/instance/morphvm_nothere"))
      c:close()
    end)

    it("turns a 422 into VALIDATION_ERROR with FastAPI's field list", function()
      local c = client(em)
      local inst = ready_instance(c)
      local _, err = c:instances_http_expose(inst.id, { name = "Bad Name!", port = 70000 })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal(422, err.status)
      assert.is_table(err.fields)
      local seen = {}
      for _, f in ipairs(err.fields) do seen[f] = true end
      assert.is_true(seen["body.port"], table.concat(err.fields, ","))
      assert.matches("body%.port", err.message)
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/ttl", action = "status", status = 400 }
      _, err = c:instances_ttl(inst.id, { ttl_seconds = 1 })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal(400, err.status)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/ttl"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("turns a 500 into SERVER_ERROR, retrying it only for idempotent GETs and DELETEs", function()
      local c = client(em)
      em:fault{ method = "GET", path = "/image", action = "status", status = 500, count = 5 }
      local _, err = c:images_list()
      assert.are.equal("SERVER_ERROR", err.code)
      assert.are.equal(500, err.status)
      assert.are.equal(3, count(em, "GET", "/image"))
      assert.are.equal(3, err.attempt)
      em:fault{ method = "POST", path = "/snapshot/*/metadata", action = "status", status = 500, count = 5 }
      _, err = c:snapshots_metadata(emulator.SNAPSHOT, { a = "b" })
      assert.are.equal("SERVER_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/snapshot/[^/]+/metadata"))
      -- a DELETE is retried too (gone is success)
      local inst = assert(c:instances_start(emulator.SNAPSHOT, {}))
      em:fault{ method = "DELETE", path = "/instance/*", action = "status", status = 500, count = 1 }
      assert.is_true((c:instances_stop(inst.id)))
      assert.are.equal(2, count(em, "DELETE", "/instance/[^/]+"))
      c:close()
    end)

    it("asks a GET again when its body is not JSON, and turns it into PROTOCOL_ERROR in the end", function()
      local c = client(em)
      em:fault{ method = "GET", path = "/image", action = "malformed" }
      assert.is_table((c:images_list()))
      assert.are.equal(2, count(em, "GET", "/image"))
      em:clear_log()
      em:fault{ method = "GET", path = "/image", action = "malformed", count = 10 }
      local _, err = c:images_list()
      assert.are.equal("PROTOCOL_ERROR", err.code)
      assert.are.equal(200, err.status)
      assert.are.equal(FAST.max_attempts, count(em, "GET", "/image"))
      em:clear_faults()
      c:close()
    end)

    it("never sends a POST again whose answer was not JSON (it acted): PROTOCOL_ERROR", function()
      local c = client(em)
      em:fault{ method = "POST", path = "/snapshot/*/metadata", action = "malformed" }
      local _, err = c:snapshots_metadata(emulator.SNAPSHOT, { a = "b" })
      assert.are.equal("PROTOCOL_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/snapshot/[^/]+/metadata"))
      c:close()
    end)

    it("fails with NETWORK_ERROR after retrying a refused connection, for creating calls too", function()
      local c, records = client(em, { base_url = "http://127.0.0.1:1/api" })
      local _, err = c:instances_start(emulator.SNAPSHOT, {})
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are.equal(FAST.max_attempts, err.attempt)
      assert.are.equal(FAST.max_attempts, err.max_attempts)
      assert.are.equal(FAST.max_attempts, #records)
      assert.matches("^%x+$", err.request_token)
      c:close()
    end)

    it("fails with NETWORK_ERROR without retrying when TLS fails", function()
      local c, records = client(em, { base_url = em.base_url:gsub("^http:", "https:") })
      local _, err = c:images_list()
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are.equal(1, err.attempt)
      assert.are.equal(1, #records)
      assert.are.equal("HTTP_TLS", records[1].error)
      c:close()
    end)

    it("refuses a plain-http remote base URL unless insecure=true #offline", function()
      local c, err = morph.new{ api_key = "k", base_url = "http://192.0.2.1/api" }
      assert.is_nil(c)
      assert.are.equal("VALIDATION_ERROR", err.code)
    end)

    it("warns on stderr at every use when insecure=true", function()
      local script = support.script(string.format([[
        local morph = require("galley.morph_client")
        local c = assert(morph.new{ api_key = %q, base_url = %q, insecure = true })
        assert(c:images_list())
        assert(c:images_list())
      ]], em.api_key, em.base_url))
      local code, _, err = support.galley("run " .. support.q(script))
      assert.are.equal(0, code, err)
      local n = 0
      for _ in err:gmatch("insecure=true") do n = n + 1 end
      assert.are.equal(3, n)
      assert.is_nil(err:find(em.api_key, 1, true))
    end)

    it("gives up with INTERRUPTED carrying the signal when SIGTERM arrives during a call", function()
      em:fault{ method = "GET", path = "/image", action = "delay", delay_ms = 8000 }
      local script = support.script(string.format([[
        local morph = require("galley.morph_client")
        local c = assert(morph.new{ api_key = %q, base_url = %q })
        local ok, a, b = pcall(c.images_list, c)
        local err = ok and b or a
        io.write("code=", tostring(type(err) == "table" and err.code), " signal=",
          tostring(type(err) == "table" and err.signal), "\n")
        os.exit(0)
      ]], em.api_key, em.base_url))
      local sh = string.format("%s run %s & p=$!; sleep 0.7; kill -TERM $p; wait $p",
        support.q(support.bin), support.q(script))
      local f = assert(io.popen("(" .. sh .. ") 2>&1"))
      local out = f:read("a")
      f:close()
      assert.truthy(out:find("code=INTERRUPTED signal=15", 1, true), out)
    end)
  end)

  describe("retries #retry", function()
    it("retries an idempotent call after a 503: two requests, success", function()
      local c, records = client(em)
      local inst = ready_instance(c)
      em:clear_log()
      em:fault{ method = "GET", path = "/instance/*", action = "status", status = 503, count = 1 }
      local got = assert(c:instances_get(inst.id))
      assert.are.equal(inst.id, got.id)
      assert.are.equal(2, count(em, "GET", "/instance/" .. inst.id))
      assert.are.equal(2, records[#records].attempt)
      c:instances_stop(inst.id)
      c:close()
    end)

    it("retries 502 and 504 on idempotent calls", function()
      local c = client(em)
      em:fault{ method = "GET", path = "/image", action = "status", status = 502, count = 1 }
      em:fault{ method = "GET", path = "/image", action = "status", status = 504, count = 1 }
      assert(c:images_list())
      assert.are.equal(3, count(em, "GET", "/image"))
      c:close()
    end)

    it("stops at max_attempts with SERVER_ERROR and the attempt count", function()
      local c = client(em)
      em:fault{ method = "GET", path = "/image", action = "status", status = 503, count = 10 }
      local _, err = c:images_list()
      assert.are.equal("SERVER_ERROR", err.code)
      assert.are.equal(503, err.status)
      assert.are.equal(3, err.attempt)
      assert.are.equal(3, err.max_attempts)
      assert.are.equal(3, count(em, "GET", "/image"))
      c:close()
    end)

    it("does not retry a 503 on a call that runs something", function()
      local c = client(em)
      local inst = ready_instance(c)
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/exec", action = "status", status = 503, count = 1 }
      local _, err = c:instances_exec(inst.id, "echo hi")
      assert.are.equal("SERVER_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/exec"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("honours Retry-After: 1 on a 429, waiting at least a second, even for exec", function()
      local c = client(em)
      local inst = ready_instance(c)
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/exec", action = "status", status = 429, retry_after = 1, count = 1 }
      local t0 = runtime.now_ms()
      local r = assert(c:instances_exec(inst.id, "echo after-429"))
      assert.is_true(runtime.now_ms() - t0 >= 1000)
      assert.are.equal("after-429\n", r.stdout)
      assert.are.equal(2, count(em, "POST", "/instance/[^/]+/exec"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("fails with RATE_LIMIT and retry_after when the limit outlasts the retries", function()
      local c = client(em, { retry = { max_attempts = 2, base_delay_ms = 10, max_delay_ms = 20, max_elapsed_ms = 500 } })
      em:fault{ method = "GET", path = "/image", action = "status", status = 429, retry_after = 30, count = 5 }
      local _, err = c:images_list()
      assert.are.equal("RATE_LIMIT", err.code)
      assert.are.equal(429, err.status)
      assert.are.equal(30, err.retry_after)
      assert.are.equal(1, count(em, "GET", "/image"))
      c:close()
    end)

    it("retries an idempotent call whose connection was reset or whose reply was cut off", function()
      local c = client(em)
      assert(c:images_list())
      em:clear_log()
      em:fault{ method = "GET", path = "/image", action = "truncate", count = 1 }
      assert(c:images_list())
      assert.are.equal(2, count(em, "GET", "/image"))
      em:clear_log()
      em:fault{ method = "GET", path = "/snapshot", action = "reset", count = 1 }
      assert(c:snapshots_list())
      assert.is_true(count(em, "GET", "/snapshot") >= 2)
      c:close()
    end)

    it("sends an exec whose response is cut off exactly once and fails with NETWORK_ERROR", function()
      local c = client(em)
      local inst = ready_instance(c)
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/exec", action = "truncate", count = 5 }
      local _, err = c:instances_exec(inst.id, "echo once")
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/exec"))
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/exec/sse", action = "truncate", count = 5 }
      _, err = c:instances_exec(inst.id, { "sh", "-c", "echo a; sleep 0.1; echo b" }, { on_stdout = function() end })
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/exec/sse"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("sends an exec exactly once when a reused connection is reset without a reply", function()
      local c = client(em)
      local inst = ready_instance(c)
      assert(c:instances_get(inst.id))  -- the connection is now warm and will be reused
      em:clear_log()
      em:fault{ method = "POST", path = "/instance/*/exec", action = "reset", count = 5 }
      local _, err = c:instances_exec(inst.id, "echo once")
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/exec"))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("retries an idempotent call that timed out", function()
      local c = client(em, { timeout_ms = 400 })
      em:fault{ method = "GET", path = "/image", action = "delay", delay_ms = 1500, count = 1 }
      assert(c:images_list())
      assert.are.equal(2, count_settled(em, "GET", "/image", 2))
      c:close()
    end)

    it("sends a start that times out once; its request token finds the instance", function()
      local c = client(em, { timeout_ms = 400 })
      em:fault{ method = "POST", path = "/instance", action = "delay", delay_ms = 1500, count = 5 }
      local inst, err = c:instances_start(emulator.SNAPSHOT, { metadata = { who = "lost-reply" } })
      assert.is_nil(inst)
      assert.are.equal("TIMEOUT", err.code)
      assert.are.equal("instances.start", err.operation)
      assert.matches("^%x+$", err.request_token)
      assert.are.equal(1, count_settled(em, "POST", "/instance", 1))
      em:clear_faults()
      local found
      local deadline = runtime.now_ms() + 10000
      repeat
        found = assert(c:instances_list{ metadata = { galley_request_token = err.request_token } })
        if #found.data == 0 then runtime.sleep_ms(50) end
      until #found.data > 0 or runtime.now_ms() > deadline
      assert.are.equal(1, #found.data)
      assert.are.equal("lost-reply", found.data[1].metadata.who)
      c:instances_stop(found.data[1].id)
      c:close()
    end)

    it("keeps a caller's own request token", function()
      local c = client(em)
      local inst = assert(c:instances_start(emulator.SNAPSHOT, { metadata = { galley_request_token = "cafe01" } }))
      assert.are.equal("cafe01", inst.metadata.galley_request_token)
      c:instances_stop(inst.id)
      c:close()
    end)
  end)

  describe("wait_ready", function()
    it("fails with TIMEOUT naming the instance when it never becomes ready", function()
      local c = client(em)
      local inst = ready_instance(c)
      assert(c:instances_pause(inst.id))
      em:clear_log()
      local t0 = runtime.now_ms()
      local _, err = c:wait_ready(inst.id, { timeout_ms = 700 })
      assert.is_true(runtime.now_ms() - t0 >= 700)
      assert.are.equal("TIMEOUT", err.code)
      assert.are.equal("instance:" .. inst.id, err.resource)
      assert.are.equal("instances.wait_ready", err.operation)
      assert.are.equal("paused", err.instance_status)
      -- backoff: 0.25 s, 0.5 s, then the limit: a handful of polls, not a busy loop
      local polls = count(em, "GET", "/instance/" .. inst.id)
      assert.is_true(polls >= 2 and polls <= 5, tostring(polls))
      c:instances_stop(inst.id)
      c:close()
    end)

    it("stops with NOT_FOUND naming the instance when it disappears", function()
      local c = client(em)
      local inst = ready_instance(c)
      c:instances_stop(inst.id)
      local _, err = c:wait_ready(inst.id, { timeout_ms = 2000 })
      assert.are.equal("NOT_FOUND", err.code)
      assert.are.equal("instance:" .. inst.id, err.resource)
      assert.are.equal("instances.wait_ready", err.operation)
      c:close()
    end)

    it("fails with SERVER_ERROR naming the instance when its status is error", function()
      -- The emulator never reports `error`: a one-route loopback server does.
      local pipe = assert(io.popen([[exec python3 -c '
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        b = json.dumps({"id": "morphvm_broken", "object": "instance", "status": "error"}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], os.getpid(), flush=True)
s.serve_forever()']], "r"))
      local port, pid = pipe:read("n", "n")
      local ok, e = pcall(function()
        local c = assert(morph.new{ api_key = "k", base_url = "http://127.0.0.1:" .. math.tointeger(port) .. "/api" })
        local _, err = c:wait_ready("morphvm_broken")
        assert.are.equal("SERVER_ERROR", err.code)
        assert.are.equal("instance:morphvm_broken", err.resource)
        assert.are.equal("error", err.instance_status)
        c:close()
      end)
      os.execute("kill " .. math.tointeger(pid))
      pipe:close()
      assert(ok, e)
    end)
  end)

  describe("faults #fault", function()
    it("takes a retried DELETE whose first answer was lost and then meets 404 as success", function()
      local c = client(em, { timeout_ms = 800 })
      local inst = ready_instance(c)
      em:clear_log()
      -- the first DELETE does the work, then its answer comes too late: the retry finds nothing
      em:fault{ method = "DELETE", path = "/instance/*", action = "delay", delay_ms = 2500 }
      assert.is_true(assert(c:instances_stop(inst.id)))
      assert.are.equal(2, count_settled(em, "DELETE", "/instance/" .. inst.id, 2))
      local _, err = c:instances_get(inst.id)
      assert.are.equal("NOT_FOUND", err.code)
      -- a 404 on the first try is still NOT_FOUND
      _, err = c:instances_stop(inst.id)
      assert.are.equal("NOT_FOUND", err.code)
      c:close()
    end)

    it("takes a DELETE answered with a malformed body after it happened as success", function()
      local c = client(em)
      local inst = ready_instance(c)
      em:fault{ method = "DELETE", path = "/instance/*", action = "malformed" }
      assert.is_true(assert(c:instances_stop(inst.id)))
      local _, err = c:instances_get(inst.id)
      assert.are.equal("NOT_FOUND", err.code)
      c:close()
    end)

    it("tolerates a 500 and a malformed answer while polling for readiness", function()
      local c = client(em, { retry = { max_attempts = 1 } })
      local inst = assert(c:instances_start(emulator.SNAPSHOT, {}))
      em:fault{ method = "GET", path = "/instance/" .. inst.id, action = "status", status = 500 }
      em:fault{ method = "GET", path = "/instance/" .. inst.id, action = "malformed" }
      local ready = assert(c:wait_ready(inst.id, { timeout_ms = 20000 }))
      assert.are.equal("ready", ready.status)
      c:instances_stop(inst.id)
      c:close()
    end)

    it("marks a create refused before reaching the server as never sent", function()
      local c = assert(morph.new{ api_key = "k", base_url = "http://127.0.0.1:1/api", retry = { max_attempts = 1 } })
      local _, err = c:instances_start(emulator.SNAPSHOT, {})
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.is_false(err.sent)
      assert.is_string(err.request_token)
      c:close()
    end)
  end)

  describe("on the event loop #loop", function()
    it("keeps the calls of several tasks in flight together", function()
      local task = require("galley.task")
      local c = client(em)
      em:fault{ method = "GET", path = "/image", action = "delay", delay_ms = 700, count = 4 }
      em:clear_log()
      local list = {}
      for i = 1, 4 do list[i] = task.spawn(function() return assert(c:images_list()) end) end
      for _, r in ipairs(task.join(list)) do assert.is_true(r.ok, tostring(r.err)) end
      -- The emulator saw the 4 requests in flight at once (one after the other: 1 at a time).
      local log = em:log()
      assert.are.equal(4, #log)
      assert.is_true(require("support.overlap").all(require("support.overlap").of_log(log)))
      c:close()
    end)

    it("retries under parallel load: each task's 503 is retried, every call succeeds once", function()
      local task = require("galley.task")
      local c = client(em)
      local insts = {}
      for i = 1, 4 do insts[i] = ready_instance(c) end
      em:clear_log()
      em:fault{ method = "GET", path = "/instance/*", action = "status", status = 503, count = 4 }
      local list = {}
      for i = 1, 4 do list[i] = task.spawn(function() return assert(c:instances_get(insts[i].id)).id end) end
      for i, r in ipairs(task.join(list)) do
        assert.is_true(r.ok, tostring(r.err))
        assert.are.equal(insts[i].id, r.value)
      end
      local statuses = {}
      for _, rec in ipairs(em:log()) do statuses[rec.status] = (statuses[rec.status] or 0) + 1 end
      assert.are.equal(4, statuses[503])
      assert.are.equal(4, statuses[200])
      for _, inst in ipairs(insts) do c:instances_stop(inst.id) end
      c:close()
    end)

    it("uses no more TCP connections than calls in flight, and reuses them", function()
      local task = require("galley.task")
      local c = client(em)
      for _ = 1, 3 do
        em:fault{ method = "GET", path = "/image", action = "delay", delay_ms = 300, count = 4 }
        local list = {}
        for i = 1, 4 do list[i] = task.spawn(function() return assert(c:images_list()) end) end
        for _, r in ipairs(task.join(list)) do assert.is_true(r.ok, tostring(r.err)) end
      end
      local conns, n = {}, 0
      for _, r in ipairs(em:log()) do
        if not conns[r.conn] then conns[r.conn], n = true, n + 1 end
      end
      assert.are.equal(12, #em:log())
      assert.is_true(n <= 4, tostring(n) .. " connections for 4 calls in flight")
      c:close()
    end)
  end)
end)
