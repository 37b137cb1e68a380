-- galley emulate proxmox: the PVE REST API (auth, envelope, errors, tasks, containers, templates)
-- driven with galley.core.http, and a real ssh client into a container's and a node's real sshd.
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local spawn = require("galley.emulator.proxmox_spawn")

local TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"

local function eventually(check, what, ms)
  local deadline = runtime.now_ms() + (ms or 60000)
  while runtime.now_ms() < deadline do
    local v = check()
    if v then return v end
    runtime.sleep_ms(25)
  end
  error("timed out waiting for " .. what)
end

--- Waits for a task to stop; returns its status record.
local function wait_task(pve, upid)
  local node = upid:match("^UPID:([^:]+):")
  return eventually(function()
    local r = assert(pve.request("GET", "/nodes/" .. node .. "/tasks/" .. upid .. "/status"))
    assert.are.equal(200, r.status, r.body)
    return r.json.data.status == "stopped" and r.json.data or nil
  end, "task " .. upid)
end

local function create(pve, params, node)
  local r = assert(pve.request("POST", "/nodes/" .. (node or "pve1") .. "/lxc", params))
  assert.are.equal(200, r.status, r.body)
  return r.json.data
end

--- A fresh ed25519 key pair in dir: private path, public line.
local function keygen(dir, name)
  local path = dir .. "/" .. name
  local r = proc.run({ argv = { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path }, stdin = "null" })
  assert.are.equal(0, r.exit_code, r.stderr)
  local f = assert(io.open(path .. ".pub"))
  local pub = f:read("a"):gsub("%s+$", "")
  f:close()
  return path, pub
end

--- Runs the real ssh client: {exit_code, stdout, stderr}.
local function ssh(home, key, port, addr, command, stdin)
  return proc.run({ argv = { "ssh", "-i", key, "-p", tostring(port), "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10", "root@" .. addr, command }, env = { HOME = home }, env_mode = "extend",
    stdin = stdin or "null", timeout_ms = 60000 })
end

local function address(pve, vmid, node)
  local r = assert(pve.request("GET", ("/nodes/%s/lxc/%d/interfaces"):format(node or "pve1", vmid)))
  assert.are.equal(200, r.status, r.body)
  for _, i in ipairs(r.json.data) do
    if i.name == "eth0" and i.inet then return (i.inet:gsub("/%d+$", "")) end
  end
  return nil
end

--- The status line of a request made with curl (galley's client keeps no reason phrase); the
--- headers go through a file (`-H @FILE`), never argv.
local function status_line(url, headers)
  local dir = assert(fs.mkdtemp("/tmp/galley-pve-curl."))
  assert(fs.write(dir .. "/h", table.concat(headers or {}, "\n") .. "\n", { mode = "600" }))
  local r = proc.run({ argv = { "curl", "-s", "-i", "--max-time", "30", "-H", "@" .. dir .. "/h", url },
    timeout_ms = 40000 })
  fs.remove_tree(dir)
  return (r.stdout:match("^(HTTP/1%.1 [^\r\n]*)"))
end

describe("galley emulate proxmox #emulator", function()
  local pve, tmp, key, pub

  lazy_setup(function()
    tmp = assert(fs.mkdtemp("/tmp/galley-pve-spec."))
    key, pub = keygen(tmp, "id")
    local pubfile = key .. ".pub"
    pve = spawn.start({ task_ms = 50, auth_delay_ms = 20, node_keys = { pubfile } })
  end)

  lazy_teardown(function()
    if pve then pve.stop() end
    if tmp then fs.remove_tree(tmp) end
  end)

  describe("auth", function()
    it("refuses requests without credentials or with a wrong token (401, PVE's message)", function()
      local r = assert(pve.request("GET", "/nodes", nil, { Authorization = false }))
      assert.are.equal(401, r.status)
      assert.are.equal("No ticket\n", r.json.message)
      r = assert(pve.request("GET", "/nodes", nil, { Authorization = "PVEAPIToken=" .. pve.token_id .. "=wrong" }))
      assert.are.equal(401, r.status)
      assert.are.equal("HTTP/1.1 401 invalid token value!", status_line(pve.base_url .. "/nodes",
        { "Authorization: PVEAPIToken=" .. pve.token_id .. "=wrong" }))
    end)

    it("issues tickets: cookie on every request, CSRFPreventionToken on changes", function()
      local r = assert(pve.request("POST", "/access/ticket", { username = "root@pam", password = "nope" },
        { Authorization = false }))
      assert.are.equal(401, r.status)
      r = assert(pve.request("POST", "/access/ticket", { username = "root@pam", password = pve.password },
        { Authorization = false }))
      assert.are.equal(200, r.status, r.body)
      local t = r.json.data
      assert.matches("^PVE:root@pam:%x+::", t.ticket)
      local cookie = "PVEAuthCookie=" .. t.ticket
      r = assert(pve.request("GET", "/cluster/nextid", nil, { Authorization = false, Cookie = cookie }))
      assert.are.equal(200, r.status)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 190, ostemplate = TEMPLATE },
        { Authorization = false, Cookie = cookie }))
      assert.are.equal(401, r.status)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 190, ostemplate = "local:vztmpl/none.tar.zst" },
        { Authorization = false, Cookie = cookie, CSRFPreventionToken = t.CSRFPreventionToken }))
      assert.are.equal(500, r.status) -- authenticated: the volume check answers
      -- renewal: the ticket as the password
      r = assert(pve.request("POST", "/access/ticket", { username = "root@pam", password = t.ticket },
        { Authorization = false }))
      assert.are.equal(200, r.status)
    end)

    it("a privilege-separated token without ACLs reads but may not change anything (403)", function()
      local auth = { Authorization = "PVEAPIToken=" .. pve.privsep_token_id .. "=" .. pve.privsep_secret }
      local r = assert(pve.request("GET", "/nodes", nil, auth))
      assert.are.equal(200, r.status)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 191, ostemplate = TEMPLATE }, auth))
      assert.are.equal(403, r.status)
      assert.matches("^Permission check failed %(/vms/191, VM%.Allocate%)", r.json.message)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/191/status/current"))
      assert.are.equal(500, r.status) -- nothing was created
    end)
  end)

  describe("wire", function()
    it("wraps answers in data; nextid is a string; two nodes; 501 for unknown routes", function()
      local r = assert(pve.request("GET", "/cluster/nextid"))
      assert.are.equal(200, r.status)
      assert.is_string(r.json.data)
      assert.matches("^%d+$", r.json.data)
      r = assert(pve.request("GET", "/nodes"))
      assert.are.equal(2, #r.json.data)
      assert.are.same({ "pve1", "pve2" }, { r.json.data[1].node, r.json.data[2].node })
      r = assert(pve.request("GET", "/nodes/pve1/qemu/100/frobnicate"))
      assert.are.equal(501, r.status)
      r = assert(pve.request("PUT", "/nodes/pve1/lxc"))
      assert.are.equal(501, r.status)
      r = assert(pve.request("GET", "/cluster/status"))
      local ips = {}
      for _, e in ipairs(r.json.data) do if e.type == "node" then ips[e.name] = e.ip end end
      assert.are.same(pve.nodes, ips)
    end)

    it("answers 400 with per-parameter errors, 500 with PVE's messages", function()
      local r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = "abc", ostemplate = TEMPLATE, bogus = 1 }))
      assert.are.equal(400, r.status)
      assert.are.equal("Parameter verification failed.\n", r.json.message)
      assert.is_string(r.json.errors.vmid)
      assert.is_string(r.json.errors.bogus)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 150 }))
      assert.are.equal(400, r.status)
      assert.is_string(r.json.errors.ostemplate)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 150, ostemplate = "local:vztmpl/missing.tar.zst" }))
      assert.are.equal(500, r.status)
      assert.matches("does not exist", r.json.message)
      r = assert(pve.request("GET", "/nodes/pve9/lxc"))
      assert.are.equal(500, r.status)
      assert.are.equal("no such cluster node 'pve9'\n", r.json.message)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/4242/status/current"))
      assert.are.equal(500, r.status)
      assert.matches("does not exist", r.json.message)
      local storage = assert(pve.request("GET", "/nodes/pve1/storage/local/content", { content = "vztmpl" }))
      local volids = {}
      for _, v in ipairs(storage.json.data) do volids[v.volid] = v.content end
      assert.are.equal("vztmpl", volids[TEMPLATE])
    end)
  end)

  describe("containers", function()
    it("creates with a UPID task (lock: create meanwhile), refuses a used id and the wrong node", function()
      local upid = create(pve, { vmid = 120, ostemplate = TEMPLATE, hostname = "alpha", tags = "galley;run-x",
        description = "meta: {\"a\": 1}" })
      assert.matches("^UPID:pve1:%x%x%x%x%x%x%x%x:%x%x%x%x%x%x%x%x:%x%x%x%x%x%x%x%x:vzcreate:120:root@pam!galley:$", upid)
      local r = assert(pve.request("GET", "/nodes/pve1/lxc/120/status/current"))
      assert.are.equal("create", r.json.data.lock)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 120, ostemplate = TEMPLATE }))
      assert.are.equal(500, r.status)
      assert.matches("already exists", r.json.message)
      local st = wait_task(pve, upid)
      assert.are.equal("OK", st.exitstatus)
      local log = assert(pve.request("GET", "/nodes/pve1/tasks/" .. upid .. "/log", { start = 0, limit = 50 }))
      assert.are.equal("TASK OK", log.json.data[#log.json.data].t)
      assert.are.equal(#log.json.data, log.json.total)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/120/config"))
      assert.are.equal(200, r.status)
      assert.is_nil(r.json.data.lock)
      assert.are.equal("alpha", r.json.data.hostname)
      assert.are.equal("galley;run-x", r.json.data.tags)
      assert.are.equal("meta: {\"a\": 1}", r.json.data.description)
      assert.matches("^local%-lvm:vm%-120%-disk%-0", r.json.data.rootfs)
      assert.matches("name=eth0", r.json.data.net0)
      r = assert(pve.request("GET", "/nodes/pve2/lxc/120/config"))
      assert.are.equal(500, r.status)
      assert.matches("does not exist", r.json.message)
      r = assert(pve.request("PUT", "/nodes/pve1/lxc/120/config", { description = "changed", tags = "galley" }))
      assert.are.equal(200, r.status, r.body)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/120/config"))
      assert.are.equal("changed", r.json.data.description)
      r = assert(pve.request("GET", "/nodes/pve1/lxc"))
      assert.are.equal("120", r.json.data[1].vmid)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/120", { purge = 1, ["destroy-unreferenced-disks"] = 1 }))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/120/status/current"))
      assert.are.equal(500, r.status)
    end)

    it("runs sshd in a started container: real ssh, exit codes, quoting, stdin; pct on the node", function()
      local upid = create(pve, { vmid = 121, ostemplate = TEMPLATE, ["ssh-public-keys"] = pub, start = 1 })
      assert.are.equal("OK", wait_task(pve, upid).exitstatus)
      local addr = address(pve, 121)
      assert.matches("^127%.%d+%.%d+%.%d+$", addr)
      local r = ssh(tmp, key, pve.ssh_port, addr, "id -un; echo \"$HOME\"; exit 7")
      assert.are.equal(7, r.exit_code, r.stderr)
      assert.are.equal("root\n/root\n", r.stdout)
      r = ssh(tmp, key, pve.ssh_port, addr, "printf '%s|' 'a b' \"c'd\" '$HOME'")
      assert.are.equal("a b|c'd|$HOME|", r.stdout)
      r = ssh(tmp, key, pve.ssh_port, addr, "cat > /root/in.txt && wc -c < /root/in.txt", "hello from stdin\n")
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("17", r.stdout:gsub("%s", ""))
      -- the node: pct exec runs an argv in the container, its exit code comes back
      local node = pve.nodes.pve1
      r = ssh(tmp, key, pve.ssh_port, node, "pct exec 121 -- sh -c 'cat /root/in.txt; exit 5'")
      assert.are.equal(5, r.exit_code, r.stderr)
      assert.are.equal("hello from stdin\n", r.stdout)
      r = ssh(tmp, key, pve.ssh_port, node, "pct exec 121 -- printf '%s|' 'x y' '$(id)'")
      assert.are.equal("x y|$(id)|", r.stdout)
      r = ssh(tmp, key, pve.ssh_port, node, "echo pushed > /tmp/f && pct push 121 /tmp/f /root/f --perms 600"
        .. " && pct pull 121 /root/f /tmp/g && cat /tmp/g")
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("pushed\n", r.stdout)
      r = ssh(tmp, key, pve.ssh_port, pve.nodes.pve2, "pct exec 121 -- true")
      assert.are.equal(2, r.exit_code) -- not on that node
      -- stop: sshd goes away with every other process; files stay
      r = assert(pve.request("POST", "/nodes/pve1/lxc/121/status/stop"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/121/interfaces"))
      assert.are.equal(500, r.status)
      assert.are_not.equal(0, ssh(tmp, key, pve.ssh_port, addr, "true").exit_code)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/121/status/start"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = ssh(tmp, key, pve.ssh_port, address(pve, 121), "cat /root/in.txt")
      assert.are.equal("hello from stdin\n", r.stdout)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/121", { purge = 1 }))
      assert.are.equal(500, r.status) -- running
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/121", { purge = 1, force = 1 }))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
    end)

    it("converts to a template and clones it (files and keys come along)", function()
      local upid = create(pve, { vmid = 130, ostemplate = TEMPLATE, ["ssh-public-keys"] = pub, start = 1 })
      assert.are.equal("OK", wait_task(pve, upid).exitstatus)
      assert.are.equal(0, ssh(tmp, key, pve.ssh_port, address(pve, 130), "echo base > /root/base.txt").exit_code)
      local r = assert(pve.request("POST", "/nodes/pve1/lxc/130/template"))
      assert.are.equal(500, r.status) -- running
      r = assert(pve.request("POST", "/nodes/pve1/lxc/130/status/stop"))
      wait_task(pve, r.json.data)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/130/template"))
      assert.are.equal(200, r.status, r.body)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/130/status/current"))
      assert.are.equal(1, r.json.data.template)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/130/status/start"))
      assert.are.equal(500, r.status)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/130/clone", { newid = 131, hostname = "clone1" }))
      assert.are.equal(200, r.status, r.body)
      assert.matches(":vzclone:130:", r.json.data)
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/131/status/start"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = ssh(tmp, key, pve.ssh_port, address(pve, 131), "cat /root/base.txt")
      assert.are.equal("base\n", r.stdout)
      for _, id in ipairs({ 131, 130 }) do
        r = assert(pve.request("DELETE", "/nodes/pve1/lxc/" .. id, { purge = 1, force = 1 }))
        assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      end
    end)
  end)

  describe("snapshots", function()
    it("snapshots a container and rolls it back", function()
      local upid = create(pve, { vmid = 135, ostemplate = TEMPLATE, ["ssh-public-keys"] = pub, start = 1 })
      assert.are.equal("OK", wait_task(pve, upid).exitstatus)
      assert.are.equal(0, ssh(tmp, key, pve.ssh_port, address(pve, 135), "echo one > /root/v").exit_code)
      local r = assert(pve.request("POST", "/nodes/pve1/lxc/135/snapshot", { snapname = "s1", description = "first" }))
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/135/snapshot"))
      assert.are.same({ "s1", "current" }, { r.json.data[1].name, r.json.data[2].name })
      assert.are.equal(0, ssh(tmp, key, pve.ssh_port, address(pve, 135), "echo two > /root/v").exit_code)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/135/snapshot/s1/rollback"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/135/status/start"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      assert.are.equal("one\n", ssh(tmp, key, pve.ssh_port, address(pve, 135), "cat /root/v").stdout)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/135/snapshot/s1"))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/135", { purge = 1, force = 1 }))
      assert.are.equal("OK", wait_task(pve, r.json.data).exitstatus)
    end)
  end)

  describe("faults", function()
    it("task_fail removes the created CT; task_warn succeeds with WARNINGS: 1", function()
      pve.control("POST", "/faults", { method = "POST", path = "/nodes/*/lxc", action = "task_fail" })
      local st = wait_task(pve, create(pve, { vmid = 140, ostemplate = TEMPLATE }))
      assert.are.equal("injected failure", st.exitstatus)
      local r = assert(pve.request("GET", "/nodes/pve1/lxc/140/status/current"))
      assert.are.equal(500, r.status)
      pve.control("POST", "/faults", { method = "POST", path = "/nodes/*/lxc", action = "task_warn" })
      st = wait_task(pve, create(pve, { vmid = 140, ostemplate = TEMPLATE }))
      assert.are.equal("WARNINGS: 1", st.exitstatus)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/140", { purge = 1 }))
      wait_task(pve, r.json.data)
    end)

    it("lock_timeout, 503 and reset answer without doing anything; a lost answer still creates", function()
      pve.control("POST", "/faults", { { method = "POST", path = "/nodes/*/lxc", action = "lock_timeout" },
        { method = "POST", path = "/nodes/*/lxc", action = "status", status = 503 },
        { method = "POST", path = "/nodes/*/lxc", action = "reset" },
        { method = "POST", path = "/nodes/*/lxc", action = "lose" } })
      local r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 141, ostemplate = TEMPLATE }))
      assert.are.equal(500, r.status)
      assert.matches("got timeout", r.json.message)
      r = assert(pve.request("POST", "/nodes/pve1/lxc", { vmid = 141, ostemplate = TEMPLATE }))
      assert.are.equal(503, r.status)
      local ok = pve.request("POST", "/nodes/pve1/lxc", { vmid = 141, ostemplate = TEMPLATE })
      assert.is_nil(ok)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/141/status/current"))
      assert.are.equal(500, r.status)
      ok = pve.request("POST", "/nodes/pve1/lxc", { vmid = 141, ostemplate = TEMPLATE })
      assert.is_nil(ok) -- lost answer
      local t = eventually(function()
        local c = assert(pve.request("GET", "/nodes/pve1/lxc/141/status/current"))
        return c.status == 200 and c.json.data.lock == nil
      end, "the lost create")
      assert.is_true(t)
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/141", { purge = 1 }))
      wait_task(pve, r.json.data)
    end)

    it("late address and a refusing sshd recover; stopping a task undoes the create", function()
      pve.control("POST", "/faults", { { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "late_address",
        delay_ms = 3000 } })
      wait_task(pve, create(pve, { vmid = 142, ostemplate = TEMPLATE, ["ssh-public-keys"] = pub }))
      local r = assert(pve.request("POST", "/nodes/pve1/lxc/142/status/start"))
      wait_task(pve, r.json.data)
      assert.is_nil(address(pve, 142))
      local addr = eventually(function() return address(pve, 142) end, "the address")
      assert.are.equal(0, ssh(tmp, key, pve.ssh_port, addr, "true").exit_code)
      r = assert(pve.request("POST", "/nodes/pve1/lxc/142/status/stop"))
      wait_task(pve, r.json.data)
      pve.control("POST", "/faults", { { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "ssh_refuse",
        delay_ms = 3000 } })
      r = assert(pve.request("POST", "/nodes/pve1/lxc/142/status/start"))
      wait_task(pve, r.json.data)
      assert.are.equal(255, ssh(tmp, key, pve.ssh_port, addr, "true").exit_code)
      eventually(function() return ssh(tmp, key, pve.ssh_port, addr, "true").exit_code == 0 end, "sshd")
      -- sshd refusing while the CT runs (a control route), then back
      pve.control("POST", "/sshd", { vmid = 142, down_ms = 3000 })
      assert.are.equal(255, ssh(tmp, key, pve.ssh_port, addr, "true").exit_code)
      eventually(function() return ssh(tmp, key, pve.ssh_port, addr, "true").exit_code == 0 end, "sshd again")
      r = assert(pve.request("DELETE", "/nodes/pve1/lxc/142", { purge = 1, force = 1 }))
      wait_task(pve, r.json.data)
      -- a slow create stopped through DELETE on its task
      pve.control("POST", "/faults", { method = "POST", path = "/nodes/*/lxc", action = "slow_task", delay_ms = 30000 })
      local upid = create(pve, { vmid = 143, ostemplate = TEMPLATE })
      r = assert(pve.request("DELETE", "/nodes/pve1/tasks/" .. upid))
      assert.are.equal(200, r.status)
      assert.are.equal("interrupted by signal", wait_task(pve, upid).exitstatus)
      r = assert(pve.request("GET", "/nodes/pve1/lxc/143/status/current"))
      assert.are.equal(500, r.status)
      local state = pve.control("GET", "/state")
      assert.are.equal(0, #state.containers)
    end)
  end)
end)

describe("galley emulate proxmox command line #emulator", function()
  it("refuses bad options with exit 2 before starting anything", function()
    local bin = runtime.executable()
    for _, args in ipairs({ { "--ssh-port", "22" }, { "--bogus" }, { "--fault", "path=/x,action=nope" },
      { "--task-ms", "-1" }, { "--address-base", "300" }, { "--node-key", "/nonexistent/key.pub" } }) do
      local argv = { bin, "emulate", "proxmox" }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      local r = proc.run({ argv = argv, stdin = "null", timeout_ms = 30000 })
      assert.are.equal(2, r.exit_code, table.concat(args, " ") .. ": " .. r.stderr)
    end
  end)
end)

describe("galley emulate proxmox --old-errors #emulator", function()
  it("puts the message only in the status line", function()
    local pve = spawn.start({ task_ms = 10, old_errors = true, auth_delay_ms = 0 })
    local ok, err = pcall(function()
      local r = assert(pve.request("GET", "/nodes/pve1/lxc/999/config"))
      assert.are.equal(500, r.status)
      assert.is_nil(r.json.message)
      assert.are.equal("HTTP/1.1 500 Configuration file 'nodes/pve1/lxc/999.conf' does not exist",
        status_line(pve.base_url .. "/nodes/pve1/lxc/999/config",
          { "Authorization: PVEAPIToken=" .. pve.token_id .. "=" .. pve.token_secret }))
    end)
    pve.stop()
    assert(ok, err)
  end)
end)
