-- The Proxmox provider on `galley emulate proxmox`: bad input refused before any request, the
-- fault cells (each emulator fault during boot, exec and terminate: recovered or a coded error,
-- no create sent twice, no container left), exec via the node (`pct exec` over the node's sshd),
-- ticket auth, a privilege-separated token, and galley.ssh keys that the container's sshd honours.
local fs = require("galley.core.fs")
local gssh = require("galley.ssh")
local proc = require("galley.core.proc")
local spawn = require("galley.emulator.proxmox_spawn")

local TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"

local function raises(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_table(err, tostring(err))
  assert.are.equal(code, err.code, tostring(err.message))
  return err
end

describe("proxmox provider on galley emulate proxmox #proxmox #slow", function()
  local em, state, p

  local function provider(extra)
    local o = { url = em.url, token_id = em.token_id, token_secret = em.token_secret, ssh_port = em.ssh_port,
      state_dir = state, boot_timeout_ms = 60000, template = TEMPLATE, retry = { base_delay_ms = 20 } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return require("galley.providers.proxmox").new(o)
  end

  local function log() return em.control("GET", "/log").data end

  local function count(method, pattern)
    local n = 0
    for _, r in ipairs(log()) do
      if r.method == method and r.path:match(pattern) then n = n + 1 end
    end
    return n
  end

  local function containers()
    local n = 0
    for _, c in ipairs(em.control("GET", "/state").containers or {}) do
      if not c.template then n = n + 1 end
    end
    return n
  end

  setup(function()
    em = spawn.start({ task_ms = 30 })
    state = assert(fs.mkdtemp())
    p = provider()
  end)

  teardown(function()
    if p then
      for _, i in ipairs(p.instances.list()) do pcall(p.instances.terminate, i.id) end
      p.close()
    end
    if em then em.stop() end
    if state then fs.remove_tree(state) end
  end)

  it("refuses invalid ids, nodes, storages and template volumes before any request #hardening", function()
    em.control("DELETE", "/log")
    for _, id in ipairs({ "99", "0101", "1000000000", "../x", "", "a b" }) do
      assert.are.equal("instance_id", raises("VALIDATION_ERROR", p.instances.get, id).field)
      raises("VALIDATION_ERROR", p.exec, id, { kind = "argv", command = "true" })
      raises("VALIDATION_ERROR", p.instances.terminate, id)
    end
    for _, v in ipairs({ "local:vztmpl/../etc.tar.gz", "Local:vztmpl/x.tar.zst", "local:iso/x.iso", "x:y:z" }) do
      assert.are.equal("snapshot_id", raises("VALIDATION_ERROR", p.instances.boot, v).field)
    end
    assert.are.equal("node", raises("VALIDATION_ERROR", provider, { node = "pve 1" }).field)
    assert.are.equal("storage", raises("VALIDATION_ERROR", provider, { storage = "Local" }).field)
    assert.are.equal("storage", raises("VALIDATION_ERROR", p.images.list, "a/b").field)
    raises("NOT_FOUND", p.instances.get, "morphvm_nosuch00")
    assert.are.equal(0, #log())
    assert.are.equal(0, p.requests())
  end)

  it("recovers from each fault during boot, or fails with a code; no duplicate creates, nothing left #faults", function()
    local cells = {
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "task_fail" }, want = "SERVER_ERROR" },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "task_warn" } },
      { fault = { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "slow_task", delay_ms = 300 } },
      { fault = { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "lock_timeout", count = 2 } },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "lose" } },
      { fault = { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "lose" } },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "status", status = 503 }, want = "SERVER_ERROR" },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "reset" }, want = "NETWORK_ERROR" },
      { fault = { method = "GET", path = "/nodes/*/tasks/**", action = "status", status = 502, count = 3 } },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "late_address", delay_ms = 600 } },
      { fault = { method = "POST", path = "/nodes/*/lxc", action = "ssh_refuse", delay_ms = 600 } },
      { fault = { method = "POST", path = "/nodes/*/lxc/*/status/start", action = "task_fail" }, want = "SERVER_ERROR" },
    }
    for i, cell in ipairs(cells) do
      em.control("DELETE", "/faults")
      em.control("DELETE", "/log")
      em.control("POST", "/faults", cell.fault)
      local ok, inst = pcall(p.instances.boot, TEMPLATE, { metadata = { cell = tostring(i) } })
      local label = ("cell %d (%s %s)"):format(i, cell.fault.action, cell.fault.path)
      if cell.want then
        assert.is_false(ok, label .. ": expected " .. cell.want)
        assert.are.equal(cell.want, inst.code, label .. ": " .. tostring(inst))
      else
        assert.is_true(ok, label .. ": " .. tostring(inst))
        assert.are.equal("ready", inst.status, label)
        assert.are.equal(0, p.exec(inst.id, { kind = "argv", command = "true" }).exit_code, label)
        p.instances.terminate(inst.id)
      end
      assert.are.equal(1, count("POST", "^/nodes/[^/]+/lxc$"), label .. ": creates sent")
      assert.are.equal(0, containers(), label .. ": containers left")
    end
    em.control("DELETE", "/faults")
  end)

  it("keeps the multiplexed connection, says TRANSPORT for a refused new one, retries or codes terminate faults #faults",
    function()
    local inst = p.instances.boot(TEMPLATE)
    em.control("POST", "/sshd", { vmid = tonumber(inst.id), down_ms = 1500 })
    -- the multiplexed connection outlives the listener: commands still run over it
    assert.are.equal(0, p.exec(inst.id, { kind = "argv", command = "true" }).exit_code)
    p.disconnect(inst.id)
    local err = raises("TRANSPORT", p.exec, inst.id, { kind = "argv", command = "true" })
    assert.are.equal("ct:" .. inst.id, err.resource)
    local r
    for _ = 1, 50 do
      local ok, res = pcall(p.exec, inst.id, { kind = "argv", command = "echo", args = { "back" } })
      if ok then r = res break end
      require("galley.task").sleep(100)
    end
    assert.are.equal("back\n", r and r.stdout)
    em.control("POST", "/faults", { method = "DELETE", path = "/nodes/*/lxc/*", action = "lock_timeout" })
    em.control("POST", "/faults", { method = "POST", path = "/nodes/*/lxc/*/status/stop", action = "task_warn" })
    p.instances.terminate(inst.id)
    raises("NOT_FOUND", p.instances.get, inst.id)
    inst = p.instances.boot(TEMPLATE)
    em.control("POST", "/faults", { method = "DELETE", path = "/nodes/*/lxc/*", action = "task_fail" })
    raises("SERVER_ERROR", p.instances.terminate, inst.id)
    p.instances.terminate(inst.id) -- again: it works now
    assert.are.equal(0, containers())
    raises("NOT_FOUND", p.instances.terminate, inst.id)
  end)

  it("opens one multiplexed connection for commands started at once, past sshd's MaxSessions too, quietly",
    function()
    local inst = p.instances.boot(TEMPLATE)
    finally(function() pcall(p.instances.terminate, inst.id) end)
    local task = require("galley.task")
    for round = 1, 3 do
      p.disconnect(inst.id) -- no connection: the 12 commands below start together on a cold target
      local ts = {}
      for i = 1, 12 do
        ts[i] = task.spawn(function()
          return p.exec(inst.id, { kind = "argv", command = "echo", args = { ("r%d-%d"):format(round, i) } })
        end)
      end
      for i, r in ipairs(task.join(ts)) do
        assert.is_true(r.ok, tostring(r.err))
        -- before: 11 of 12 said "ControlSocket ... already exists, disabling multiplexing" on stderr
        assert.are.same({ 0, ("r%d-%d\n"):format(round, i), "" },
          { r.value.exit_code, r.value.stdout, r.value.stderr })
      end
    end
    -- more at once than sshd's MaxSessions (10) allows on one connection: the ones past
    -- MAX_MUX_SESSIONS wait for a session to end, and none sees "Session open refused" (nor
    -- meets sshd's MaxStartups, as 16 new connections at once did)
    local ts = {}
    for i = 1, 24 do
      ts[i] = task.spawn(function()
        return p.exec(inst.id, { kind = "argv", command = "sh", args = { "-c", "sleep 0.5; echo many-" .. i } })
      end)
    end
    for i, r in ipairs(task.join(ts)) do
      assert.is_true(r.ok, tostring(r.err))
      assert.are.same({ 0, "many-" .. i .. "\n", "" }, { r.value.exit_code, r.value.stdout, r.value.stderr })
    end
  end)

  it("counts spawned commands among the connection's sessions until they end", function()
    local inst = p.instances.boot(TEMPLATE)
    local pssh = require("galley.providers.proxmox_ssh")
    local saved = pssh.MAX_MUX_SESSIONS
    pssh.MAX_MUX_SESSIONS = 2
    local handles = {}
    finally(function()
      pssh.MAX_MUX_SESSIONS = saved
      for _, h in ipairs(handles) do pcall(h.close, h) end
      pcall(p.instances.terminate, inst.id)
    end)
    assert.are.equal(0, p.exec(inst.id, { kind = "argv", command = "true" }).exit_code) -- connected
    for i = 1, 2 do handles[i] = assert(p.spawn(inst.id, { "sleep", "1.5" })) end
    assert.is_true(handles[1]:running() and handles[2]:running())
    -- both sessions held by spawned commands nobody waits for: a command waits for one to end
    -- (before: it ran at once, a third session; past sshd's MaxSessions "Session open refused")
    local r = p.exec(inst.id, { kind = "argv", command = "echo", args = { "after" } })
    assert.are.same({ 0, "after\n", "" }, { r.exit_code, r.stdout, r.stderr })
    assert.is_true(not handles[1]:running() or not handles[2]:running())
    -- a spawned command closed (killed) frees its session at once; a third spawn then starts
    -- while the other two sessions are taken by one running spawn and one free
    for _, h in ipairs(handles) do h:close() end
    handles[3] = assert(p.spawn(inst.id, { "sleep", "30" }))
    local t0 = require("galley.core.runtime").now_ms()
    r = p.exec(inst.id, { kind = "argv", command = "echo", args = { "beside" } })
    assert.are.equal("beside\n", r.stdout)
    assert.is_true(handles[3]:running())
    assert.is_true(require("galley.core.runtime").now_ms() - t0 < 10000) -- did not wait for the sleep
  end)

  it("leaves connection sharing to an ssh_command that sets it (commands still run together)", function()
    local inst = p.instances.boot(TEMPLATE)
    p.disconnect(inst.id) -- no socket where galley would look for one
    local fresh = provider({ ssh_command = { "ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none" } })
    finally(function() -- (one finally a test: busted keeps the last one given)
      pcall(fresh.close)
      pcall(p.instances.terminate, inst.id)
    end)
    local task = require("galley.task")
    local ts = {}
    for i = 1, 4 do
      ts[i] = task.spawn(function()
        return fresh.exec(inst.id, { kind = "argv", command = "sh", args = { "-c",
          'date +%s%N; sleep 1; date +%s%N' } })
      end)
    end
    local starts, ends = {}, {}
    for i, r in ipairs(task.join(ts)) do
      assert.is_true(r.ok, tostring(r.err))
      assert.are.same({ 0, "" }, { r.value.exit_code, r.value.stderr })
      starts[i], ends[i] = r.value.stdout:match("^(%d+)\n(%d+)\n$")
      starts[i], ends[i] = tonumber(starts[i]), tonumber(ends[i])
    end
    -- all four were running at once: each started before any ended (none waited for a gate)
    table.sort(starts)
    table.sort(ends)
    assert.is_true(starts[4] < ends[1], "the commands ran one after another")
  end)

  it("boots a template made by one run in the next run, whose key is a new one", function()
    local run = require("galley.run")
    local ctx = run.begin({ recipe = "pve-spec-a", record = false })
    local pa = provider()
    local src = pa.instances.boot(TEMPLATE)
    local key = state .. "/proxmox/" .. ctx.id .. "/id_ed25519"
    assert.are.equal(tonumber("600", 8), fs.stat(key).mode)
    pa.files.write_file_atomic(src.id, "~/from-a.txt", "a")
    local tmpl = pa.instances.snapshot(src.id)
    pa.close()
    run.finish() -- stops src, removes run a's key
    assert.are.equal(0, containers())
    assert.is_false(fs.exists(key))
    run.begin({ recipe = "pve-spec-b", record = false })
    local pb = provider()
    local ok, err = pcall(function()
      local clone = pb.instances.boot(tmpl.id)
      assert.are.equal("a", pb.files.read_file(clone.id, "~/from-a.txt"))
    end)
    pb.close()
    run.finish()
    p.snapshots.delete(tmpl.id)
    if not ok then error(err, 0) end
    assert.are.equal(0, containers())
  end)

  it("says CONFLICT with a hint for a snapshot whose linked clones live on ZFS, and deletes it after them", function()
    -- the destroy task's failure was a SERVER_ERROR with PVE's words only
    local z = provider({ storage = "local-zfs" })
    local src = z.instances.boot(TEMPLATE)
    local tmpl = z.instances.snapshot(src.id)
    z.instances.terminate(src.id)
    local clone = z.instances.boot(tmpl.id)
    local err = raises("CONFLICT", z.snapshots.delete, tmpl.id)
    assert.are.same({ "linked_clones", "snapshot:" .. tmpl.id }, { err.details.reason, err.resource })
    assert.is_string(err.hint)
    assert.are.equal(tmpl.id, z.snapshots.get(tmpl.id).id) -- still there, unlocked
    -- galley gc: the snapshot of a finished run is "in use" (not a failure) while a clone gc does
    -- not collect (no run tag) still uses it, and deleted by the gc after
    local gc = require("galley.gc")
    local run = require("galley.run")
    local tagged = z.instances.snapshot(clone.id, { metadata = { galley_run = "run-0badc0de",
      galley_host = run.hostname() } })
    local clone_b = z.instances.boot(tagged.id)
    local function collected()
      for _, c in ipairs(gc.collect(z, {})) do
        if c.id == tagged.id then return c end
      end
    end
    local c = collected()
    assert.are.equal("in use", c and c.action, c and c.error)
    z.instances.terminate(clone_b.id)
    assert.are.equal("deleted", collected().action)
    z.instances.terminate(clone.id)
    assert.is_true(z.snapshots.delete(tmpl.id))
    raises("NOT_FOUND", z.snapshots.get, tmpl.id)
    z.close()
  end)

  it("runs commands through the node with exec_via = host (pct exec over the node's sshd)", function()
    local key = state .. "/nodekey"
    assert(proc.run({ argv = { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key } }))
    em.control("POST", "/node-keys", assert(fs.read(key .. ".pub")))
    local inst = p.instances.boot(TEMPLATE)
    local hp = provider({ exec_via = "host", ssh_command = { "ssh", "-i", key } })
    local r = hp.exec(inst.id, { kind = "argv", command = "/bin/sh", args = { "-c", 'printf "%s|" "$@"; exit 4', "sh",
      "it's", "$HOME", "a b" } })
    assert.are.same({ 4, "it's|$HOME|a b|" }, { r.exit_code, r.stdout })
    hp.files.write_file_atomic(inst.id, "~/via-host.txt", "node")
    assert.are.equal("node", p.files.read_file(inst.id, "~/via-host.txt"))
    local big = require("galley.core.codec").random_bytes(2 * 1024 * 1024) -- over one exec: streams via the node
    local streams = hp.files.stats().streams
    hp.files.write_file_atomic(inst.id, "~/via-host.bin", big)
    assert.are.equal(big, hp.files.read_file(inst.id, "~/via-host.bin"))
    assert.are.equal(streams + 2, hp.files.stats().streams)
    hp.close()
    p.instances.terminate(inst.id)
  end)

  it("moves files over one exec line raw through ssh (one stream each way), byte for byte", function()
    local codec = require("galley.core.codec")
    local inst = p.instances.boot(TEMPLATE)
    local data = codec.random_bytes(3 * 1024 * 1024 + 17)
    local before = p.files.stats()
    p.files.write_file_atomic(inst.id, "~/big.bin", data, { mode = "640" })
    assert.are.equal(data, p.files.read_file(inst.id, "~/big.bin"))
    local after = p.files.stats()
    assert.are.equal(before.streams + 2, after.streams)
    assert.is_true(after.execs - before.execs <= 2) -- the read's head (and a probe), no chunk execs
    local r = p.exec(inst.id, { kind = "shell", script = "stat -c %a ~/big.bin; sha256sum < ~/big.bin" })
    assert.are.equal("640\n" .. codec.sha256(data) .. "  -\n", r.stdout)
    -- from and to local files
    local src, dst = state .. "/src.bin", state .. "/dst.bin"
    assert(fs.write_atomic(src, data))
    p.files.write_file_atomic(inst.id, "/tmp/from-file.bin", { from_file = src })
    local got = p.files.read_file(inst.id, "/tmp/from-file.bin", { to_file = dst })
    assert.are.same({ #data, codec.sha256(data) }, { got.size, got.sha256 })
    assert.are.equal(data, assert(fs.read(dst)))
    p.instances.terminate(inst.id)
  end)

  it("authenticates with a ticket, and says PERMISSION_DENIED for a privilege-separated token", function()
    local tp = provider({ token_id = false, token_secret = false, username = "root@pam", password = em.password })
    assert.is_true(#tp.images.list() > 0)
    tp.close()
    local sp = provider({ token_id = em.privsep_token_id, token_secret = em.privsep_secret })
    local err = raises("PERMISSION_DENIED", sp.instances.boot, TEMPLATE)
    assert.matches("privsep", err.hint)
    sp.close()
    local bp = provider({ token_secret = "00000000-0000-4000-8000-000000000000" })
    raises("AUTHENTICATION_ERROR", bp.images.list)
    bp.close()
    assert.are.equal(0, containers())
  end)

  it("authorizes keys with expiry that the container's sshd honours (galley.ssh)", function()
    local inst = p.instances.boot(TEMPLATE)
    local function key(name)
      local path = state .. "/" .. name
      assert(proc.run({ argv = { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path } }))
      return path, assert(fs.read(path .. ".pub"))
    end
    local old, old_pub = key("old")
    local cur, cur_pub = key("cur")
    gssh.authorize(p, inst.id, old_pub, { label = "old", expires_at = os.time() - 60 })
    gssh.authorize(p, inst.id, cur_pub, { label = "cur", expires_at = os.time() + 600 })
    local labels = {}
    for _, k in ipairs(gssh.list(p, inst.id)) do labels[#labels + 1] = k.label or "?" end
    table.sort(labels)
    assert.are.same({ "cur", "galley", "old" }, labels) -- galley: the run's own key
    local function login(path)
      return assert(proc.run({ argv = { "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-i", path, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-p", tostring(em.ssh_port), "root@" .. inst.address, "echo in" }, env = { SSH_AUTH_SOCK = "" },
        timeout_ms = 30000 }))
    end
    assert.are.equal("in\n", login(cur).stdout)
    assert.are.equal(255, login(old).exit_code)
    assert.are.equal(1, gssh.revoke(p, inst.id, "cur"))
    assert.are.equal(255, login(cur).exit_code)
    p.instances.terminate(inst.id)
  end)
end)
