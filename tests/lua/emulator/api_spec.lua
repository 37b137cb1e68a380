-- galley emulate: the Morph API's endpoints, shapes and status codes, against a real emulator.
local emulator = require("support.emulator")
local http = require("galley.core.http")
local runtime = require("galley.core.runtime")

local SNAP = emulator.SNAPSHOT

--- Polls until check() returns a truthy value (or gives up after a generous deadline).
local function eventually(check, what)
  local deadline = runtime.now_ms() + 15000
  while runtime.now_ms() < deadline do
    local v = check()
    if v then return v end
    runtime.sleep_ms(20)
  end
  error("timed out waiting for " .. what)
end

local function assert_instance_shape(j)
  assert.is_string(j.id)
  assert.matches("^morphvm_[a-z0-9]+$", j.id)
  assert.are.equal("instance", j.object)
  assert.is_number(j.created)
  assert.is_string(j.status)
  assert.is_number(j.spec.vcpus)
  assert.is_number(j.spec.memory)
  assert.is_number(j.spec.disk_size)
  assert.is_string(j.refs.snapshot_id)
  assert.is_string(j.refs.image_id)
  assert.is_table(j.networking)
  assert.is_table(j.networking.http_services)
  assert.is_table(j.metadata)
  assert.is_table(j.ttl)
  assert.is_boolean(j.wake_on.wake_on_ssh)
  assert.is_boolean(j.wake_on.wake_on_http)
end

local function assert_snapshot_shape(j)
  assert.matches("^snapshot_[a-z0-9]+$", j.id)
  assert.are.equal("snapshot", j.object)
  assert.is_number(j.created)
  assert.is_string(j.status)
  assert.is_number(j.spec.vcpus)
  assert.is_string(j.refs.image_id)
  assert.is_table(j.metadata)
  assert.is_table(j.ttl)
end

describe("galley emulate: the Morph API #emulator", function()
  local em

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 100 })
  end)

  lazy_teardown(function()
    if em then em:stop() end
  end)

  local function start(body, query)
    local r = assert(em:request("POST", "/instance?snapshot_id=" .. (query or SNAP), body or {}))
    assert.are.equal(200, r.status, r.body)
    return r.json
  end

  local function status(method, path, body)
    return assert(em:request(method, path, body)).status
  end

  local function wait_ready(id)
    return eventually(function()
      local r = assert(em:request("GET", "/instance/" .. id))
      return r.json.status == "ready" and r.json
    end, id .. " to become ready")
  end

  describe("auth", function()
    it("answers 401 with a detail when the key is missing or wrong", function()
      local r = assert(http.request({ method = "GET", url = em.base_url .. "/instance" }))
      assert.are.equal(401, r.status)
      assert.is_string(require("cjson").decode(r.body).detail)
      r = assert(http.request({
        method = "GET", url = em.base_url .. "/instance", headers = { Authorization = "Bearer wrong" },
      }))
      assert.are.equal(401, r.status)
    end)

    it("guards the control routes with the same key", function()
      local r = assert(http.request({ method = "GET", url = em.root_url .. "/_emulator/state" }))
      assert.are.equal(401, r.status)
    end)

    it("answers 404 outside /api", function()
      local r = assert(em:request("GET", "/_emulator/nothing"))
      assert.are.equal(404, r.status)
      r = assert(http.request({ method = "GET", url = em.root_url .. "/v1/instance" }))
      assert.are.equal(404, r.status)
    end)
  end)

  describe("images and snapshots", function()
    it("lists the seeded image", function()
      local r = assert(em:request("GET", "/image"))
      assert.are.equal(200, r.status)
      assert.are.equal("list", r.json.object)
      local img = r.json.data[1]
      assert.are.equal("morphvm-minimal", img.id)
      assert.are.equal("image", img.object)
      assert.is_string(img.name)
      assert.is_number(img.disk_size)
      assert.is_number(img.created)
    end)

    it("has the default snapshot ready", function()
      local r = assert(em:request("GET", "/snapshot/" .. SNAP))
      assert.are.equal(200, r.status)
      assert_snapshot_shape(r.json)
      assert.are.equal("ready", r.json.status)
      assert.are.equal("morphvm-minimal", r.json.refs.image_id)
    end)

    it("creates a snapshot pending, then ready, with defaults and digest dedup", function()
      local r = assert(em:request("POST", "/snapshot", { digest = "d-create", metadata = { k = "v" } }))
      assert.are.equal(200, r.status, r.body)
      assert_snapshot_shape(r.json)
      assert.are.equal("pending", r.json.status)
      assert.are.same({ vcpus = 1, memory = 128, disk_size = 700 }, r.json.spec)
      local id = r.json.id
      eventually(function()
        return assert(em:request("GET", "/snapshot/" .. id)).json.status == "ready"
      end, "snapshot ready")
      local again = assert(em:request("POST", "/snapshot", { digest = "d-create" }))
      assert.are.equal(id, again.json.id)
    end)

    it("filters snapshots by digest and metadata (all keys must match)", function()
      local a = assert(em:request("POST", "/snapshot", { metadata = { team = "x", env = "dev" } })).json
      local b = assert(em:request("POST", "/snapshot", { metadata = { team = "x", env = "prod" } })).json
      local r = assert(em:request("GET", "/snapshot?metadata%5Bteam%5D=x&metadata%5Benv%5D=dev"))
      assert.are.equal(200, r.status)
      assert.are.equal(1, #r.json.data)
      assert.are.equal(a.id, r.json.data[1].id)
      r = assert(em:request("GET", "/snapshot?metadata[team]=x"))
      assert.are.equal(2, #r.json.data)
      r = assert(em:request("GET", "/snapshot?digest=d-create"))
      assert.are.equal(1, #r.json.data)
      assert.are.equal(204, assert(em:request("DELETE", "/snapshot/" .. b.id)).status)
    end)

    it("pages snapshots with the paginated envelope", function()
      local r = assert(em:request("GET", "/snapshot/list?page=1&limit=1"))
      assert.are.equal(200, r.status)
      assert.are.equal(1, #r.json.snapshots)
      assert.is_true(r.json.total >= 2)
      assert.are.equal(1, r.json.page)
      assert.are.equal(1, r.json.size)
      assert.are.equal(r.json.total, r.json.total_pages)
      assert.is_true(r.json.has_next)
      assert.is_false(r.json.has_prev)
      assert.are.equal(422, assert(em:request("GET", "/snapshot/list?page=0")).status)
      assert.are.equal(422, assert(em:request("GET", "/snapshot/list?limit=x")).status)
    end)

    it("replaces snapshot metadata and sets/clears its TTL", function()
      local s = assert(em:request("POST", "/snapshot", { metadata = { a = "1" } })).json
      local r = assert(em:request("POST", "/snapshot/" .. s.id .. "/metadata", { b = "2" }))
      assert.are.equal(200, r.status)
      assert.are.same({ b = "2" }, r.json.metadata)
      r = assert(em:request("POST", "/snapshot/" .. s.id .. "/ttl", { ttl_seconds = 3600 }))
      assert.are.equal(3600, r.json.ttl.ttl_seconds)
      assert.is_number(r.json.ttl.ttl_expire_at)
      r = assert(em:request("POST", "/snapshot/" .. s.id .. "/ttl", '{"ttl_seconds": null}'))
      assert.are.equal(200, r.status)
      assert.is_nil(r.json.ttl.ttl_seconds ~= require("cjson").null and r.json.ttl.ttl_seconds or nil)
      assert.are.equal(422, assert(em:request("POST", "/snapshot/" .. s.id .. "/ttl", { ttl_seconds = 0 })).status)
      assert.are.equal(422, assert(em:request("POST", "/snapshot/" .. s.id .. "/metadata", { a = 1 })).status)
    end)

    it("deletes snapshots with 204, then 404", function()
      local s = assert(em:request("POST", "/snapshot", {})).json
      assert.are.equal(204, assert(em:request("DELETE", "/snapshot/" .. s.id)).status)
      assert.are.equal(404, assert(em:request("GET", "/snapshot/" .. s.id)).status)
      assert.are.equal(404, assert(em:request("DELETE", "/snapshot/" .. s.id)).status)
    end)

    it("answers 404 for an unknown image and 422 for bad fields", function()
      assert.are.equal(404, assert(em:request("POST", "/snapshot", { image_id = "nope" })).status)
      local r = assert(em:request("POST", "/snapshot", { vcpus = "many" }))
      assert.are.equal(422, r.status)
      assert.are.same({ "body", "vcpus" }, r.json.detail[1].loc)
    end)

    it("answers 422 naming the path parameter for ids the shared id check refuses #hardening", function()
      for _, id in ipairs({ ".hidden", "-x", "a%20b", ("i"):rep(129) }) do
        local r = assert(em:request("GET", "/instance/" .. id))
        assert.are.equal(422, r.status, id)
        assert.are.same({ "path", "instance_id" }, r.json.detail[1].loc)
        r = assert(em:request("DELETE", "/snapshot/" .. id))
        assert.are.equal(422, r.status, id)
        assert.are.same({ "path", "snapshot_id" }, r.json.detail[1].loc)
      end
      assert.are.equal(404, assert(em:request("GET", "/instance/morphvm_nosuch00")).status)
    end)
  end)

  describe("instance lifecycle", function()
    it("starts pending and becomes ready after the boot delay", function()
      local j = start()
      assert_instance_shape(j)
      assert.are.equal("pending", j.status)
      assert.are.same({ snapshot_id = SNAP, image_id = "morphvm-minimal" }, j.refs)
      local ready = wait_ready(j.id)
      assert_instance_shape(ready)
    end)

    it("accepts a missing body and explicit nulls on start", function()
      local r = assert(em:request("POST", "/instance?snapshot_id=" .. SNAP))
      assert.are.equal(200, r.status)
      r = assert(em:request("POST", "/instance?snapshot_id=" .. SNAP,
        '{"metadata": null, "ttl_seconds": null, "ttl_action": null}'))
      assert.are.equal(200, r.status)
      assert.are.equal("stop", r.json.ttl.ttl_action)
    end)

    it("rejects start without snapshot_id (422 query loc), unknown snapshots (404), bad bodies (422)", function()
      local r = assert(em:request("POST", "/instance", {}))
      assert.are.equal(422, r.status)
      assert.are.same({ "query", "snapshot_id" }, r.json.detail[1].loc)
      assert.are.equal(404, assert(em:request("POST", "/instance?snapshot_id=snapshot_nope", {})).status)
      r = assert(em:request("POST", "/instance?snapshot_id=" .. SNAP, { ttl_action = "explode" }))
      assert.are.equal(422, r.status)
      assert.are.same({ "body", "ttl_action" }, r.json.detail[1].loc)
      assert.are.equal(422, assert(em:request("POST", "/instance?snapshot_id=" .. SNAP, "{not json")).status)
    end)

    it("boots from a snapshot with resource overrides", function()
      local r = assert(em:request("POST", "/snapshot/" .. SNAP .. "/boot",
        { vcpus = 4, memory = 2048, metadata = { b = "1" } }))
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(4, r.json.spec.vcpus)
      assert.are.equal(2048, r.json.spec.memory)
      assert.are.same({ b = "1" }, r.json.metadata)
    end)

    it("gets, lists, filters by metadata and pages instances", function()
      local a = start({ metadata = { role = "list-a", env = "t" } })
      local b = start({ metadata = { role = "list-b", env = "t" } })
      local r = assert(em:request("GET", "/instance/" .. a.id))
      assert.are.equal(200, r.status)
      assert.are.equal(a.id, r.json.id)
      r = assert(em:request("GET", "/instance?metadata%5Benv%5D=t"))
      assert.are.equal("list", r.json.object)
      local ids = {}
      for _, i in ipairs(r.json.data) do ids[i.id] = true end
      assert.is_true(ids[a.id])
      assert.is_true(ids[b.id])
      r = assert(em:request("GET", "/instance?metadata%5Benv%5D=t&metadata%5Brole%5D=list-b"))
      assert.are.equal(1, #r.json.data)
      assert.are.equal(b.id, r.json.data[1].id)
      r = assert(em:request("GET", "/instance/list?page=2&limit=1&metadata%5Benv%5D=t"))
      assert.are.equal(200, r.status)
      assert.are.equal(1, #r.json.instances)
      assert.are.equal(b.id, r.json.instances[1].id)
      assert.are.equal(2, r.json.total)
      assert.is_true(r.json.has_prev)
      assert.is_false(r.json.has_next)
    end)

    it("stops (DELETE) with 204; the instance is gone afterwards", function()
      local j = start()
      assert.are.equal(204, assert(em:request("DELETE", "/instance/" .. j.id)).status)
      assert.are.equal(404, assert(em:request("GET", "/instance/" .. j.id)).status)
      assert.are.equal(404, assert(em:request("DELETE", "/instance/" .. j.id)).status)
    end)

    it("answers 404 for unknown instances on every instance route", function()
      local id = "morphvm_missing0"
      for _, call in ipairs({
        { "GET", "" }, { "POST", "/pause" }, { "POST", "/resume" }, { "POST", "/reboot" },
        { "POST", "/snapshot" }, { "POST", "/branch" }, { "POST", "/exec" }, { "POST", "/exec/sse" },
        { "POST", "/metadata" }, { "POST", "/ttl" }, { "POST", "/wake-on" }, { "POST", "/http" },
        { "DELETE", "/http/web" }, { "GET", "/ssh/key" }, { "POST", "/ssh/key" },
      }) do
        local body = call[1] == "POST" and { command = { "true" } } or nil
        local r = assert(em:request(call[1], "/instance/" .. id .. call[2], body))
        assert.are.equal(404, r.status, call[1] .. " " .. call[2])
        assert.is_string(r.json.detail)
      end
    end)

    it("answers 405 for a known path with the wrong method", function()
      assert.are.equal(405, assert(em:request("PUT", "/instance")).status)
    end)

    it("pauses and resumes; exec on a paused instance is refused with 409", function()
      local j = start()
      wait_ready(j.id)
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/pause"))
      assert.are.equal(200, r.status)
      assert.are.equal("paused", r.json.status)
      assert.are.equal(409, status("POST", "/instance/" .. j.id .. "/exec", { command = { "true" } }))
      r = assert(em:request("POST", "/instance/" .. j.id .. "/resume"))
      assert.are.equal(200, r.status)
      assert.are.equal("ready", r.json.status)
      r = assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "true" } }))
      assert.are.equal(200, r.status)
    end)

    it("reboots back through pending, keeping files", function()
      local j = start()
      wait_ready(j.id)
      assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "echo kept > f" } }))
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/reboot", { vcpus = 2 }))
      assert.are.equal(200, r.status)
      assert.are.equal("pending", r.json.status)
      assert.are.equal(2, r.json.spec.vcpus)
      wait_ready(j.id)
      r = assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "cat f" } }))
      assert.are.equal("kept\n", r.json.stdout)
    end)

    it("replaces instance metadata", function()
      local j = start({ metadata = { a = "1" } })
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/metadata", { b = "2" }))
      assert.are.equal(200, r.status)
      assert.are.same({ b = "2" }, r.json.metadata)
      assert.are.equal(422, assert(em:request("POST", "/instance/" .. j.id .. "/metadata", { b = true })).status)
      assert.are.equal(422, assert(em:request("POST", "/instance/" .. j.id .. "/metadata")).status)
    end)

    it("sets wake-on flags", function()
      local j = start()
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/wake-on", { wake_on_ssh = true }))
      assert.are.equal(200, r.status)
      assert.is_true(r.json.wake_on.wake_on_ssh)
      assert.is_false(r.json.wake_on.wake_on_http)
      assert.are.equal(422, status("POST", "/instance/" .. j.id .. "/wake-on", { wake_on_http = "yes" }))
    end)

    it("exposes and hides HTTP services", function()
      local j = start()
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/http", { name = "web", port = 8000 }))
      assert.are.equal(200, r.status, r.body)
      local svc = r.json.networking.http_services[1]
      assert.are.equal("web", svc.name)
      assert.are.equal(8000, svc.port)
      assert.are.equal("none", svc.auth_mode)
      assert.is_string(svc.url)
      r = assert(em:request("POST", "/instance/" .. j.id .. "/http", { name = "Bad Name", port = 1 }))
      assert.are.equal(422, r.status)
      assert.are.same({ "body", "name" }, r.json.detail[1].loc)
      assert.are.equal(422, status("POST", "/instance/" .. j.id .. "/http", { name = "x", port = 70000 }))
      r = assert(em:request("DELETE", "/instance/" .. j.id .. "/http/web"))
      assert.are.equal(200, r.status)
      assert.are.equal(0, #r.json.networking.http_services)
      assert.are.equal(404, assert(em:request("DELETE", "/instance/" .. j.id .. "/http/web")).status)
    end)

    it("returns and rotates the instance SSH key", function()
      local j = start()
      local r = assert(em:request("GET", "/instance/" .. j.id .. "/ssh/key"))
      assert.are.equal(200, r.status)
      assert.are.equal("instance_ssh_key", r.json.object)
      for _, k in ipairs({ "private_key", "public_key", "password", "access_token" }) do assert.is_string(r.json[k]) end
      local rotated = assert(em:request("POST", "/instance/" .. j.id .. "/ssh/key"))
      assert.are.equal(200, rotated.status)
      assert.are_not.equal(r.json.public_key, rotated.json.public_key)
    end)
  end)

  describe("TTL", function()
    it("deletes an instance when a stop TTL expires", function()
      local j = start({ ttl_seconds = 1, ttl_action = "stop" })
      assert.are.equal(1, j.ttl.ttl_seconds)
      assert.is_number(j.ttl.ttl_expire_at)
      eventually(function()
        return assert(em:request("GET", "/instance/" .. j.id)).status == 404
      end, "the instance to expire")
    end)

    it("pauses an instance when a pause TTL expires; resume re-arms it", function()
      local j = start()
      wait_ready(j.id)
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/ttl", { ttl_seconds = 1, ttl_action = "pause" }))
      assert.are.equal(200, r.status)
      assert.are.equal("pause", r.json.ttl.ttl_action)
      eventually(function()
        return assert(em:request("GET", "/instance/" .. j.id)).json.status == "paused"
      end, "the instance to pause")
      r = assert(em:request("POST", "/instance/" .. j.id .. "/resume"))
      assert.are.equal("ready", r.json.status)
      assert.is_number(r.json.ttl.ttl_expire_at)
      eventually(function()
        return assert(em:request("GET", "/instance/" .. j.id)).json.status == "paused"
      end, "the instance to pause again")
    end)

    it("clears a TTL with null seconds and keeps the action when it is omitted", function()
      local j = start({ ttl_seconds = 600, ttl_action = "pause" })
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/ttl", '{"ttl_seconds": null}'))
      assert.are.equal(200, r.status)
      assert.are.equal(require("cjson").null, r.json.ttl.ttl_seconds)
      assert.are.equal("pause", r.json.ttl.ttl_action)
      assert.are.equal(422, assert(em:request("POST", "/instance/" .. j.id .. "/ttl", { ttl_seconds = -5 })).status)
    end)

    it("deletes a snapshot whose TTL expires", function()
      local s = assert(em:request("POST", "/snapshot", { ttl_seconds = 1 })).json
      eventually(function()
        return assert(em:request("GET", "/snapshot/" .. s.id)).status == 404
      end, "the snapshot to expire")
    end)
  end)

  describe("snapshot and branch", function()
    it("snapshots an instance's files and starts new instances with them", function()
      local j = start()
      wait_ready(j.id)
      assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "mkdir -p d; echo payload > d/file" } }))
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/snapshot?digest=snap-digest",
        { metadata = { s = "1" } }))
      assert.are.equal(200, r.status, r.body)
      assert_snapshot_shape(r.json)
      assert.are.equal("ready", r.json.status)
      assert.are.equal("snap-digest", r.json.digest)
      assert.are.same({ s = "1" }, r.json.metadata)
      local again = assert(em:request("POST", "/instance/" .. j.id .. "/snapshot?digest=snap-digest"))
      assert.are.equal(r.json.id, again.json.id)
      -- a later change in the source does not leak into the snapshot
      assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "echo changed > d/file" } }))
      local k = start(nil, r.json.id)
      wait_ready(k.id)
      local out = assert(em:request("POST", "/instance/" .. k.id .. "/exec", { command = { "cat d/file" } }))
      assert.are.equal("payload\n", out.json.stdout)
    end)

    it("branches into N clones with per-clone metadata", function()
      local j = start()
      wait_ready(j.id)
      assert(em:request("POST", "/instance/" .. j.id .. "/exec", { command = { "echo branch > b.txt" } }))
      local r = assert(em:request("POST", "/instance/" .. j.id .. "/branch?count=2", {
        snapshot_metadata = { kind = "branch" },
        instance_metadata = { { n = "0" }, { n = "1" } },
      }))
      assert.are.equal(200, r.status, r.body)
      assert_snapshot_shape(r.json.snapshot)
      assert.are.same({ kind = "branch" }, r.json.snapshot.metadata)
      assert.are.equal(2, #r.json.instances)
      for i, clone in ipairs(r.json.instances) do
        assert_instance_shape(clone)
        assert.are.equal(r.json.snapshot.id, clone.refs.snapshot_id)
        assert.are.same({ n = tostring(i - 1) }, clone.metadata)
        wait_ready(clone.id)
        local out = assert(em:request("POST", "/instance/" .. clone.id .. "/exec", { command = { "cat b.txt" } }))
        assert.are.equal("branch\n", out.json.stdout)
      end
      assert.are.equal(422, assert(em:request("POST", "/instance/" .. j.id .. "/branch?count=zero")).status)
    end)
  end)
end)
