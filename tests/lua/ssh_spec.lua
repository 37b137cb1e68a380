-- galley.ssh on the local provider: keys with expiry in ~/.ssh/authorized_keys, written atomically,
-- listed and revoked; malformed keys refused before anything is written. The lines it writes are
-- then given to a real sshd (OpenSSH, in a bubblewrap sandbox with its own /run, on 127.0.0.1): a
-- key past its expiry-time is refused by sshd itself, a current one accepted.
local fs = require("galley.core.fs")
local gssh = require("galley.ssh")
local proc = require("galley.core.proc")
local task = require("galley.task")

local function run(argv, opts)
  opts = opts or {}
  opts.argv = argv
  opts.timeout_ms = opts.timeout_ms or 30000
  return assert(proc.run(opts))
end

local function raises(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.are.equal(code, err.code, tostring(err))
  return err
end

describe("galley.ssh #ssh", function()
  local dir, p, inst, keys

  local function keygen(name)
    local path = dir .. "/" .. name
    run({ "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name .. "@test", "-f", path })
    local pub = assert(fs.read(path .. ".pub")):gsub("%s+$", "")
    local fp = run({ "ssh-keygen", "-l", "-E", "sha256", "-f", path .. ".pub" }).stdout:match("(SHA256:%S+)")
    return { path = path, pub = pub, fingerprint = fp }
  end

  local function sh(script)
    return p.exec(inst.id, { kind = "argv", command = "/bin/sh", args = { "-c", script } })
  end

  setup(function()
    dir = assert(fs.mkdtemp())
    p = require("galley.providers.local").new({ state_dir = dir .. "/state" })
    inst = p.instances.boot(p.DEFAULT_SNAPSHOT)
    keys = { a = keygen("a"), b = keygen("b"), c = keygen("c") }
  end)

  teardown(function()
    if inst then pcall(p.instances.terminate, inst.id) end
    if dir then fs.remove_tree(dir) end
  end)

  it("parses keys and computes OpenSSH's fingerprints", function()
    local k = gssh.parse_key(keys.a.pub)
    assert.are.equal("ssh-ed25519", k.type)
    assert.are.equal(keys.a.fingerprint, k.fingerprint)
    assert.are.equal("a@test", k.comment)
    assert.are.equal("20261206120000Z", gssh.expiry_time(1796558400))
    assert.are.equal(1796558400, gssh.parse_expiry("20261206120000Z"))
    assert.are.equal(1796515200, gssh.parse_expiry("20261206"))
    assert.is_nil(gssh.parse_expiry("2026-12-06"))
  end)

  it("refuses malformed keys, labels and times before writing anything", function()
    local b64 = keys.a.pub:match("^%S+ (%S+)")
    for _, bad in ipairs({ 42, "", "ssh-ed25519", "ssh-foo " .. b64, "ssh-ed25519 not*base64", "ssh-rsa " .. b64,
      "ssh-ed25519 " .. b64 .. "\nssh-ed25519 " .. b64, "ssh-ed25519 QUFBQQ==" }) do
      local err = raises("VALIDATION_ERROR", gssh.authorize, p, inst.id, bad)
      assert.are.equal("pubkey", err.field)
    end
    assert.are.equal("label", raises("VALIDATION_ERROR", gssh.authorize, p, inst.id, keys.a.pub,
      { label = "has space" }).field)
    assert.are.equal("expires_at", raises("VALIDATION_ERROR", gssh.authorize, p, inst.id, keys.a.pub,
      { expires_at = "tomorrow" }).field)
    assert.is_false(p.files.file_exists(inst.id, "~/.ssh/authorized_keys"))
  end)

  it("authorizes with expiry and label, lists, replaces, and revokes by label or fingerprint", function()
    local exp = os.time() + 3600
    local r = gssh.authorize(p, inst.id, keys.a.pub, { label = "alice", expires_at = exp })
    assert.are.same({ fingerprint = keys.a.fingerprint, label = "alice", expires_at = exp, type = "ssh-ed25519" }, r)
    gssh.authorize(p, inst.id, keys.b.pub) -- its own comment is the label
    assert.are.equal("600\n", sh("stat -c %a ~/.ssh/authorized_keys").stdout)
    assert.are.equal("700\n", sh("stat -c %a ~/.ssh").stdout)
    local text = p.files.read_file(inst.id, "~/.ssh/authorized_keys")
    assert.truthy(text:find('expiry-time="' .. gssh.expiry_time(exp) .. '" ssh-ed25519 ', 1, true))
    local list = gssh.list(p, inst.id)
    assert.are.equal(2, #list)
    assert.are.same({ keys.a.fingerprint, "alice", exp, "ssh-ed25519", false },
      { list[1].fingerprint, list[1].label, list[1].expires_at, list[1].type, list[1].expired })
    assert.are.same({ keys.b.fingerprint, "b@test" }, { list[2].fingerprint, list[2].label })
    assert.is_nil(list[2].expires_at)
    -- the same key again replaces its line
    gssh.authorize(p, inst.id, keys.a.pub, { label = "alice2", expires_at = exp - 7200 })
    list = gssh.list(p, inst.id)
    assert.are.equal(2, #list)
    assert.are.same({ "alice2", true }, { list[2].label, list[2].expired })
    -- lines galley did not write survive
    p.files.write_file_atomic(inst.id, "~/.ssh/authorized_keys",
      "# a comment\n" .. p.files.read_file(inst.id, "~/.ssh/authorized_keys"), { mode = "600" })
    assert.are.equal(1, gssh.revoke(p, inst.id, "alice2"))
    assert.are.equal(0, gssh.revoke(p, inst.id, "alice2"))
    assert.are.equal(1, gssh.revoke(p, inst.id, keys.b.fingerprint))
    assert.are.same({}, gssh.list(p, inst.id))
    assert.are.equal("# a comment\n", p.files.read_file(inst.id, "~/.ssh/authorized_keys"))
    raises("NOT_FOUND", gssh.list, p, "nosuchinstance0")
  end)

  it("writes lines a real sshd honours: an expired key is refused, a current one accepted", function()
    if not proc.which("sshd") or not proc.which("bwrap") then
      pending("needs sshd and bwrap")
      return
    end
    gssh.authorize(p, inst.id, keys.a.pub, { label = "expired", expires_at = os.time() - 60 })
    gssh.authorize(p, inst.id, keys.c.pub, { label = "current", expires_at = os.time() + 3600 })
    local ak = dir .. "/authorized_keys"
    assert(fs.write(ak, p.files.read_file(inst.id, "~/.ssh/authorized_keys"), { mode = "600" }))
    run({ "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir .. "/host_key" })
    local sshd
    local port
    for _ = 1, 10 do
      port = 30000 + math.random(0, 20000)
      assert(fs.write(dir .. "/sshd_config", table.concat({ "ListenAddress 127.0.0.1:" .. port, "HostKey " .. dir
        .. "/host_key", "AuthorizedKeysFile " .. ak, "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "PidFile none", "" }, "\n")))
      sshd = assert(proc.spawn({ argv = { "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/run", "--dir", "/run/sshd", "--bind", dir, dir, "--die-with-parent",
        "/usr/sbin/sshd", "-D", "-e", "-f", dir .. "/sshd_config" } }))
      local up = false
      for _ = 1, 100 do
        local r = run({ "bash", "-c", 'exec 3<>/dev/tcp/127.0.0.1/"$1"', "bash", tostring(port) })
        if r.exit_code == 0 then up = true break end
        if sshd:wait(1) then break end
        task.sleep(50)
      end
      if up then break end
      sshd:close()
      sshd = nil
    end
    assert(sshd, "sshd did not start")
    local function login(key)
      return run({ "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", key,
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-p", tostring(port), "root@127.0.0.1", "echo in" }, { env = { SSH_AUTH_SOCK = "" } })
    end
    local ok, err = pcall(function()
      local good = login(keys.c.path)
      assert.are.same({ 0, "in\n" }, { good.exit_code, good.stdout })
      assert.are.equal(255, login(keys.a.path).exit_code)
    end)
    sshd:close()
    if not ok then error(err, 0) end
  end)
end)
