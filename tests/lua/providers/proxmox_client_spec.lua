-- galley.proxmox_client and the pure parts of galley.providers.proxmox: UPIDs, form bodies, error
-- mapping, task results, id picking, validation; the client's auth, retries and task waits against
-- a scripted PVE-shaped server on loopback (galley.core.httpd).
local support = require("support")
local cjson = require("cjson")
local httpd = require("galley.core.httpd")
local pc = require("galley.proxmox_client")
local pve = require("galley.providers.proxmox")
local runtime = require("galley.core.runtime")

local function raises(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_table(err, tostring(err))
  assert.are.equal(code, err.code, tostring(err.message))
  return err
end

local TOKEN_ID, SECRET = "root@pam!galley", "11111111-2222-4333-8444-555555555555"

-- A scripted server: routes["METHOD /path"] = function(req) -> status, data|body-table, end.
local function server(routes)
  local log = {}
  local srv = assert(httpd.serve({ port = 0, handler = function(req)
    local path = req.path:gsub("^/api2/json", "")
    log[#log + 1] = { method = req.method, path = path, headers = req.headers, body = req.body, query = req.query }
    local h = routes[req.method .. " " .. path] or routes[req.method .. " *"]
    if not h then
      return { status = 501, body = cjson.encode({ data = cjson.null, message = "not implemented\n" }) }
    end
    local r = h(req, #log)
    if r.reset then return r end
    return { status = r.status or 200, headers = { ["Content-Type"] = "application/json" },
      body = r.raw or cjson.encode(r.body or { data = r.data == nil and cjson.null or r.data }) }
  end }))
  return srv, log, ("http://127.0.0.1:%d"):format(srv:port())
end

local function header(req, name)
  for k, v in pairs(req.headers or {}) do
    if k:lower() == name:lower() then return v end
  end
  return nil
end

describe("galley.proxmox_client #proxmox", function()
  describe("pure parts", function()
    it("parses UPIDs, tokens included, and refuses malformed ones", function()
      local u = pc.parse_upid("UPID:pve1:0001A2B3:0045C6D7:6570D3F1:vzcreate:101:root@pam!galley:")
      assert.are.same({ node = "pve1", pid = 0x1A2B3, pstart = 0x45C6D7, starttime = 0x6570D3F1, type = "vzcreate",
        id = "101", user = "root@pam!galley" }, u)
      assert.are.equal("", pc.parse_upid("UPID:n:00000001:00000002:00000003:vzdump::root@pam:").id)
      for _, bad in ipairs({ "UPID:pve1:1:2:3:vzstart:101:root@pam", "upid:pve1:1:2:3:a:b:c:", "", 42, "UPID:-x:1:2:3:a:b:c:",
        "UPID:pve1:zz:2:3:a:b:c:" }) do
        assert.is_nil(pc.parse_upid(bad), tostring(bad))
      end
    end)

    it("form-encodes bodies with 0/1 booleans, sorted keys and every unsafe byte escaped", function()
      assert.are.equal("a=x%20y&b=1&c=0&d=3&k=ssh-ed25519%20AAA%2B%2F%3D%20c%0A%26x%3Dy",
        pc.form_encode({ d = 3, c = false, b = true, a = "x y", k = "ssh-ed25519 AAA+/= c\n&x=y" }))
      assert.are.equal("", pc.form_encode({}))
      assert.are.equal("n=2", pc.form_encode({ n = 2.0 }))
    end)

    it("maps error answers to codes, naming the parameter of a 400", function()
      local code, msg, f = pc.map_error(400, cjson.encode({ data = cjson.null, message = "Parameter verification failed.\n",
        errors = { vmid = "invalid format", net0 = "bad bridge" } }), "Parameter verification failed.")
      assert.are.equal("VALIDATION_ERROR", code)
      assert.are.equal("net0", f.field)
      assert.matches("vmid: invalid format", msg, 1, true)
      assert.are.equal("AUTHENTICATION_ERROR", (pc.map_error(401, "{}", "authentication failure")))
      assert.are.equal("PERMISSION_DENIED", (pc.map_error(403, "{}", "Permission check failed")))
      assert.are.equal("NOT_SUPPORTED", (pc.map_error(501, "{}", "Method not implemented")))
      local c2, m2 = pc.map_error(500, '{"data":null}', "Configuration file 'nodes/pve1/lxc/123.conf' does not exist")
      assert.are.same({ "NOT_FOUND", "Configuration file 'nodes/pve1/lxc/123.conf' does not exist" }, { c2, m2 })
      assert.are.equal("CONFLICT", (pc.map_error(500, '{"message":"CT 101 already exists on node \'pve1\'\\n"}', "x")))
      assert.are.equal("LOCKED", (pc.map_error(500, '{"data":null}',
        "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout")))
      assert.are.equal("LOCKED", (pc.map_error(500, '{"message":"CT 101 is locked (create)"}', "")))
      assert.are.equal("SERVER_ERROR", (pc.map_error(500, "<html>", "Internal Server Error")))
      local _, m3 = pc.map_error(500, "", "")
      assert.are.equal("HTTP 500", m3)
    end)

    it("reads task exit statuses", function()
      assert.are.same({ true, 0 }, { pc.task_result("OK") })
      assert.are.same({ true, 3 }, { pc.task_result("WARNINGS: 3") })
      assert.are.same({ false, nil, "SERVER_ERROR" }, { pc.task_result("injected failure") })
      assert.are.same({ false, nil, "CONFLICT" }, { pc.task_result("CT 101 already exists on node 'pve1'") })
      assert.are.same({ false, nil, "SERVER_ERROR" }, { pc.task_result(nil) })
      -- a template that linked clones still use, in the words of pve-storage, qemu-server and ZFS
      for _, msg in ipairs({ "base volume 'local-zfs:base-100-disk-0' is still in use by linked clones",
        "base volume 'local:100/base-100-disk-0.qcow2' is still in use by linked cloned",
        "zfs error: cannot destroy 'rpool/data/base-100-disk-0': filesystem has dependent clones" }) do
        assert.are.same({ false, nil, "CONFLICT" }, { pc.task_result(msg) }, msg)
      end
    end)
  end)

  describe("the client on loopback", function()
    it("sends the API token header and decodes the data envelope", function()
      local srv, log, url = server({ ["GET /version"] = function() return { data = { version = "8.2.4" } } end })
      local c = pc.new({ url = url, token_id = TOKEN_ID, token_secret = SECRET })
      assert.are.equal("8.2.4", c:call("version").version)
      assert.are.equal("PVEAPIToken=" .. TOKEN_ID .. "=" .. SECRET, header(log[1], "authorization"))
      c:close()
      srv:stop()
    end)

    it("logs in with a ticket, sends CSRFPreventionToken on changes only, and renews after a 401", function()
      local tickets, expire = 0, false
      local srv, log, url = server({
        ["POST /access/ticket"] = function(req)
          tickets = tickets + 1
          assert.is_truthy(req.body:find("username=root%40pam", 1, true))
          return { data = { ticket = "PVE:root@pam:T" .. tickets, CSRFPreventionToken = "C" .. tickets, username = "root@pam" } }
        end,
        ["GET /nodes"] = function(req)
          if header(req, "cookie") ~= "PVEAuthCookie=PVE:root@pam:T" .. tickets or expire then
            expire = false
            return { status = 401, body = { data = cjson.null } }
          end
          return { data = { { node = "pve1" } } }
        end,
        ["POST /nodes/pve1/lxc/101/status/start"] = function(req)
          if header(req, "csrfpreventiontoken") ~= "C" .. tickets then return { status = 401, body = { data = cjson.null } } end
          return { data = "UPID:pve1:00000001:00000002:00000003:vzstart:101:root@pam:" }
        end,
      })
      local c = pc.new({ url = url, username = "root@pam", password = "pw" })
      assert.are.equal("pve1", c:call("nodes")[1].node)
      assert.is_nil(header(log[2], "csrfpreventiontoken"))
      assert.matches("^UPID:", c:call("lxc.start", { node = "pve1", vmid = 101 }))
      assert.are.equal("C1", header(log[3], "csrfpreventiontoken"))
      -- the next GET gets a 401: the client logs in again once and repeats it
      expire = true
      assert.are.equal("pve1", c:call("nodes")[1].node)
      assert.are.equal(2, tickets)
      c:close()
      srv:stop()
    end)

    it("names the parameter of a 400, hints at privilege separation on 403, and says NOT_SUPPORTED on 501", function()
      local srv, _, url = server({
        ["POST /nodes/pve1/lxc"] = function()
          return { status = 400, body = { data = cjson.null, message = "Parameter verification failed.\n",
            errors = { ostemplate = "property is missing and it is not optional" } } }
        end,
        ["POST /nodes/pve1/lxc/101/status/stop"] = function()
          return { status = 403, body = { data = cjson.null, message = "Permission check failed (/vms/101, VM.PowerMgmt)\n" } }
        end,
      })
      local c = pc.new({ url = url, token_id = TOKEN_ID, token_secret = SECRET })
      local _, err = c:call("lxc.create", { node = "pve1", body = { vmid = 101 } })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("ostemplate", err.field)
      _, err = c:call("lxc.stop", { node = "pve1", vmid = 101 })
      assert.are.equal("PERMISSION_DENIED", err.code)
      assert.matches("privsep", err.hint)
      _, err = c:call("lxc.interfaces", { node = "pve1", vmid = 101 })
      assert.are.equal("NOT_SUPPORTED", err.code)
      c:close()
      srv:stop()
    end)

    it("retries a lock timeout, and never resends a change whose answer was lost", function()
      local starts, creates = 0, 0
      local srv, _, url = server({
        ["POST /nodes/pve1/lxc/101/status/start"] = function()
          starts = starts + 1
          if starts < 3 then
            return { status = 500, body = { data = cjson.null,
              message = "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\n" } }
          end
          return { data = "UPID:pve1:00000001:00000002:00000003:vzstart:101:root@pam:" }
        end,
        ["POST /nodes/pve1/lxc"] = function()
          creates = creates + 1
          return { reset = true }
        end,
      })
      local c = pc.new({ url = url, token_id = TOKEN_ID, token_secret = SECRET, retry = { base_delay_ms = 5 } })
      assert.matches("vzstart", c:call("lxc.start", { node = "pve1", vmid = 101 }))
      assert.are.equal(3, starts)
      local res, err = c:call("lxc.create", { node = "pve1", body = { vmid = 102 } })
      assert.is_nil(res)
      assert.are.equal(1, creates)
      assert.are.equal("NETWORK_ERROR", err.code)
      assert.are_not.equal(false, err.sent)
      c:close()
      srv:stop()
    end)

    it("waits for tasks: OK, warnings, failures with the log's last lines, and the deadline", function()
      local polls = {}
      local upid = function(ty) return ("UPID:pve2:00000001:00000002:00000003:%s:101:root@pam:"):format(ty) end
      local srv, log, url = server({
        ["GET *"] = function(req)
          local u = req.path:match("/tasks/([^/]+)/status$")
          local l = req.path:match("/tasks/([^/]+)/log$")
          if u then
            u = u:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
            polls[u] = (polls[u] or 0) + 1
            local ty = u:match("^UPID:[^:]+:[^:]+:[^:]+:[^:]+:([^:]+)")
            if ty == "slow" or polls[u] < 3 then return { data = { status = "running", upid = u } } end
            local exit = ({ ok = "OK", warn = "WARNINGS: 1", bad = "injected failure" })[ty]
            return { data = { status = "stopped", exitstatus = exit, upid = u } }
          elseif l then
            local lines = {}
            for i = 1, 30 do lines[i] = { n = i, t = "line " .. i } end
            lines[31] = { n = 31, t = "TASK ERROR: injected failure" }
            return { data = lines }
          end
          return { status = 501, body = { data = cjson.null } }
        end,
      })
      local warned
      local c = pc.new({ url = url, token_id = TOKEN_ID, token_secret = SECRET,
        warn = function(u, n) warned = { u, n } end })
      local r = assert(c:wait_task(upid("ok")))
      assert.are.same({ "OK", 0 }, { r.exitstatus, r.warnings })
      assert.matches("/nodes/pve2/tasks/", log[1].path, 1, true) -- the node comes from the UPID
      r = assert(c:wait_task(upid("warn")))
      assert.are.equal(1, r.warnings)
      assert.are.same({ upid("warn"), 1 }, warned)
      local _, err = c:wait_task(upid("bad"), { operation = "instances.boot" })
      assert.are.equal("SERVER_ERROR", err.code)
      assert.are.equal("injected failure", err.exitstatus)
      assert.are.equal(pc.TASK_LOG_LINES, #err.log)
      assert.are.equal("TASK ERROR: injected failure", err.log[#err.log])
      local t0 = runtime.now_ms()
      _, err = c:wait_task(upid("slow"), { deadline_ms = t0 + 400 })
      assert.are.equal("TIMEOUT", err.code)
      assert.are.equal(upid("slow"), err.upid)
      assert.is_true(runtime.now_ms() - t0 < 3000)
      _, err = c:wait_task("not-a-upid")
      assert.are.equal("PROTOCOL_ERROR", err.code)
      c:close()
      srv:stop()
    end)
  end)
end)

describe("galley.providers.proxmox pure parts #proxmox", function()
  it("validates node, storage, bridge and template volume names", function()
    for _, n in ipairs({ "pve", "pve1", "node-a.example.org", "a" }) do assert.is_true(pve.valid_node(n), n) end
    for _, n in ipairs({ "", "-x", "x-", "a b", "a/b", "ä", ("a"):rep(64) }) do assert.is_false(pve.valid_node(n), n) end
    for _, s in ipairs({ "local", "local-lvm", "nfs_1.x", "a" }) do assert.is_true(pve.valid_storage(s), s) end
    for _, s in ipairs({ "Local", "1st", "x-", "a:b", "" }) do assert.is_false(pve.valid_storage(s), s) end
    assert.is_true(pve.valid_bridge("vmbr0"))
    assert.is_false(pve.valid_bridge("a-bridge-name-too-long"))
    assert.are.equal("debian-12-standard_12.7-1_amd64.tar.zst",
      pve.parse_volid("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst").name)
    for _, v in ipairs({ "local:iso/x.iso", "local:vztmpl/../x.tar.gz", "Local:vztmpl/x.tar.gz", "local:vztmpl/x.zip",
      "vztmpl/x.tar.gz" }) do
      assert.is_nil(pve.parse_volid(v), v)
    end
  end)

  it("reads VMIDs: safe foreign ids are not found, out-of-range ones invalid", function()
    assert.are.equal(105, pve.vmid_of("105"))
    assert.are.same({ nil, "foreign" }, { pve.vmid_of("morphvm_nosuch00") })
    for _, id in ipairs({ "99", "0105", "1000000000", "../x", "", "a b" }) do
      assert.are.same({ nil, "invalid" }, { pve.vmid_of(id) }, id)
    end
  end)

  it("picks VMIDs that are not in use, also in a crowded range", function()
    local used = { [100] = true, [101] = true }
    local seq = { 100, 101, 100, 102 }
    local i = 0
    assert.are.equal(102, pve.pick_vmid(used, { 100, 200 }, function() i = i + 1 return seq[i] end))
    assert.are.equal(103, pve.pick_vmid({ [100] = true, [101] = true, [102] = true }, { 100, 103 },
      function() return 100 end))
    assert.is_nil(pve.pick_vmid({ [100] = true }, { 100, 100 }))
    local seen = {}
    for _ = 1, 200 do
      local id = pve.pick_vmid({}, { 100000, 899999 })
      assert.is_true(id >= 100000 and id <= 899999)
      seen[id] = true
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.is_true(n > 190) -- random, not the lowest free id parallel boots would share
  end)

  it("keeps metadata and TTL in the description and reads them back", function()
    local text = pve.encode_description({ metadata = { galley_run = "run-ab12", k = "v w" }, ttl = { seconds = 60,
      expires_at = 1700000060 } })
    local rec = pve.decode_description("user notes\n" .. text .. "more notes")
    assert.are.same({ galley_run = "run-ab12", k = "v w" }, rec.metadata)
    assert.are.equal(1700000060, rec.ttl.expires_at)
    assert.is_nil(pve.decode_description("no galley here"))
    assert.are.equal("galley;run-ab12", pve.tags_for({ galley_run = "Run-AB12" }))
  end)

  it("finds addresses in /interfaces and net0", function()
    assert.are.equal("127.80.3.7", pve.address_from_interfaces({ { name = "lo", inet = "127.0.0.1/8" },
      { name = "eth0", inet = "127.80.3.7/8", hwaddr = "x" } }))
    assert.is_nil(pve.address_from_interfaces({ { name = "lo", inet = "127.0.0.1/8" }, { name = "eth0" } }))
    assert.are.equal("10.0.0.5", pve.address_from_net0("name=eth0,bridge=vmbr0,ip=10.0.0.5/24,gw=10.0.0.1"))
    assert.is_nil(pve.address_from_net0("name=eth0,bridge=vmbr0,ip=dhcp"))
  end)

  it("refuses bad options before any request", function()
    local base = { url = "http://127.0.0.1:1", token_id = TOKEN_ID, token_secret = SECRET, state_dir = support.tmpname() }
    local function with(k, v)
      local o = {}
      for a, b in pairs(base) do o[a] = b end
      o[k] = v
      return o
    end
    os.remove(base.state_dir)
    raises("AUTHENTICATION_ERROR", pve.new, { url = "http://127.0.0.1:1" })
    assert.are.equal("token_id", raises("VALIDATION_ERROR", pve.new, with("token_id", "root")).field)
    assert.are.equal("node", raises("VALIDATION_ERROR", pve.new, with("node", "bad node")).field)
    assert.are.equal("storage", raises("VALIDATION_ERROR", pve.new, with("storage", "Bad")).field)
    assert.are.equal("bridge", raises("VALIDATION_ERROR", pve.new, with("bridge", "a;b")).field)
    assert.are.equal("exec_via", raises("VALIDATION_ERROR", pve.new, with("exec_via", "api")).field)
    assert.are.equal("url", raises("VALIDATION_ERROR", pve.new, with("url", "http://pve.example:8006")).field)
    assert.are.equal("url", raises("VALIDATION_ERROR", pve.new, with("url", "https://pve:8006/api2/json")).field)
    assert.are.equal("fingerprint", raises("VALIDATION_ERROR", pve.new, with("fingerprint", "AB:CD:EF")).field)
    assert.are.equal("ca_file", raises("VALIDATION_ERROR", pve.new, with("ca_file", "/nonexistent/ca.pem")).field)
    local p = pve.new(base)
    assert.are.equal("snapshot_id", raises("VALIDATION_ERROR", p.instances.boot, "local:vztmpl/../x.tar.gz").field)
    assert.are.equal("instance_id", raises("VALIDATION_ERROR", p.instances.get, "99").field)
    raises("NOT_FOUND", p.instances.get, "morphvm_nosuch00")
    assert.are.equal(0, p.requests())
    p.close()
    os.execute("rm -rf " .. base.state_dir)
  end)
end)
