-- The Morph provider's file transfers through the SSH gateway (galley.providers.morph_gateway):
-- real OpenSSH against the emulator's gateway, in the argv mode where one exec carries least
-- (`join`). Contents over one exec's worth go raw in one SSH command each way; the API key, part
-- of the gateway's user name, is never in a process's argv, a message or the log; a gateway
-- that cannot be used is said once and exec carries everything.
local codec = require("galley.core.codec")
local fs = require("galley.core.fs")
local gateway = require("galley.providers.morph_gateway")
local logmod = require("galley.log")
local morph = require("galley.providers.morph")
local proc = require("galley.core.proc")
local support = require("support")
local emulator = require("support.emulator")
local task = require("galley.task")

local slurp = support.slurp

-- Every process's argv on this machine, joined.
local function all_cmdlines()
  local r = assert(proc.run({ argv = { "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '" } }))
  return r.stdout
end

describe("morph_gateway.resolve", function()
  local function env(t) return function(k) return t[k] end end

  it("takes the option first, then MORPH_SSH_HOSTNAME/PORT, then ssh.<host> of an https API", function()
    assert.are.same({ host = "gw.example", port = 2222 },
      gateway.resolve({ host = "gw.example", port = 2222 }, "http://127.0.0.1:1/api", env({})))
    assert.are.same({ host = "h", port = 2200 },
      gateway.resolve(nil, "https://cloud.morph.so/api", env({ MORPH_SSH_HOSTNAME = "h", MORPH_SSH_PORT = "2200" })))
    assert.are.same({ host = "ssh.cloud.morph.so", port = 22 }, gateway.resolve(nil, "https://cloud.morph.so/api", env({})))
    assert.are.same({ host = "ssh.morph.internal", port = 22 },
      gateway.resolve(nil, "https://morph.internal/api", env({})))
  end)

  it("has none for a plain-http or IP API unless told, and none with ssh = false", function()
    assert.is_nil(gateway.resolve(nil, "http://127.0.0.1:8080/api", env({})))
    assert.is_nil(gateway.resolve(nil, "https://127.0.0.1/api", env({})))
    assert.is_nil(gateway.resolve(false, "https://cloud.morph.so/api", env({ MORPH_SSH_HOSTNAME = "h" })))
  end)

  it("refuses a bad option with VALIDATION_ERROR naming the field", function()
    for _, case in ipairs({ { "yes", "ssh" }, { { host = "a b" }, "ssh.host" }, { { host = "h", port = 0 }, "ssh.port" },
      { { host = "h", port = 1.5 }, "ssh.port" } }) do
      local ok, err = pcall(gateway.resolve, case[1], "https://cloud.morph.so/api", env({}))
      assert.is_false(ok)
      assert.are.same({ "VALIDATION_ERROR", case[2] }, { err.code, err.field })
    end
  end)
end)

describe("the Morph provider through the emulator's SSH gateway #ssh", function()
  local em, p, id, logger, records

  lazy_setup(function()
    em = emulator.start({ argv_mode = "join" })
    assert.is_number(em.ssh_port, "the emulator started no SSH gateway (is libssh installed?)")
    logger, records = logmod.capture({ level = "debug" })
    p = morph.new({ api_key = em.api_key, base_url = em.base_url, ssh = { host = "127.0.0.1", port = em.ssh_port },
      log = logger })
    id = p.instances.boot(emulator.SNAPSHOT).id
  end)

  lazy_teardown(function()
    if p then
      if id then pcall(p.instances.terminate, id) end
      p.close()
    end
    if em then em:stop() end
  end)

  it("says it has a gateway", function()
    assert.are.equal("127.0.0.1:" .. em.ssh_port, p.capabilities.ssh_gateway)
  end)

  it("moves contents over one exec's worth raw in one SSH command each way", function()
    local data = codec.random_bytes(6 * 1024 * 1024 + 3)
    local before = p.files.stats()
    local execs = #em:log()
    p.files.write_file_atomic(id, "~/big.bin", data, { mode = "640" })
    assert.are.equal(data, p.files.read_file(id, "~/big.bin"))
    local after = p.files.stats()
    assert.are.equal(before.streams + 2, after.streams)
    -- the read's head (+ probes), and the emulator logged the two SSH commands
    local api, ssh = 0, 0
    for k, rec in ipairs(em:log()) do
      if k > execs then
        if rec.method == "SSH" then ssh = ssh + 1 else api = api + 1 end
      end
    end
    assert.is_true(api <= 3, "requests: " .. api)
    assert.are.equal(2, ssh)
    local r = p.exec(id, { kind = "shell", script = "stat -c %a ~/big.bin; sha256sum < ~/big.bin" })
    assert.are.equal("640\n" .. codec.sha256(data) .. "  -\n", r.stdout)
    local src, dst = support.tmpname(), support.tmpname() .. ".copy"
    assert(fs.write_atomic(src, data))
    p.files.write_file_atomic(id, "/tmp/from-file.bin", { from_file = src })
    local got = p.files.read_file(id, "/tmp/from-file.bin", { to_file = dst })
    assert.are.same({ #data, codec.sha256(data) }, { got.size, got.sha256 })
    assert.are.equal(data, slurp(dst))
  end)

  it("sends writes over ssh_min_bytes (512 KiB) through the gateway, smaller ones as one exec", function()
    assert.are.equal(512 * 1024, morph.SSH_MIN_BYTES)
    -- {streams the client counted, API requests, SSH commands}: the emulator logs the gateway's
    -- commands as method "SSH"
    local function counts(size)
      local before, n = p.files.stats(), #em:log()
      p.files.write_file_atomic(id, "~/sized.bin", codec.random_bytes(size))
      local after = p.files.stats()
      local api, ssh = 0, 0
      for k, rec in ipairs(em:log()) do
        if k > n and rec.method == "SSH" then
          assert.are.same({ "/instance/" .. id .. "/ssh", 200 }, { rec.path, rec.status })
          ssh = ssh + 1
        elseif k > n then
          api = api + 1
        end
      end
      return { after.streams - before.streams, api, ssh }
    end
    assert.are.same({ 0, 1, 0 }, counts(40 * 1024)) -- (one-line execs here carry ~88 KiB)
    assert.are.same({ 1, 0, 1 }, counts(600 * 1024))
    local q = morph.new({ api_key = em.api_key, base_url = em.base_url, ssh_min_bytes = 16 * 1024,
      ssh = { host = "127.0.0.1", port = em.ssh_port } })
    local before = q.files.stats().streams
    q.files.write_file_atomic(id, "~/sized2.bin", codec.random_bytes(40 * 1024))
    assert.are.equal(before + 1, q.files.stats().streams)
    q.close()
  end)

  it("stops an instance that sends more than the reader's limit (ssh's output file is bounded)", function()
    local out = support.tmpname()
    local r = p.files.stream(id, { "/bin/sh", "-c", "head -c 8388608 /dev/zero" },
      { stdout_file = out, max_stdout_bytes = 1024 * 1024 })
    assert.is_table(r) -- (ssh sees EFBIG and may still exit 0: the readers' size and sha256 checks fail)
    assert.is_true(fs.stat(out).size <= 1024 * 1024 + 512, fs.stat(out).size)
  end)

  it("never puts the API key in a process's argv, and keeps its files private", function()
    local data = codec.random_bytes(4 * 1024 * 1024)
    local seen = {}
    local writer = task.spawn(function() p.files.write_file_atomic(id, "~/watched.bin", data) end)
    while not writer.done do
      seen[#seen + 1] = all_cmdlines()
      task.sleep(5)
    end
    writer:wait()
    local text = table.concat(seen)
    assert.is_truthy(text:find("ssh", 1, true), "no ssh process was seen")
    assert.is_nil(text:find(em.api_key, 1, true))
    -- the gateway's user is in a config file of a private directory
    local dirs = assert(proc.run({ argv = { "sh", "-c", 'ls -d "${TMPDIR:-/tmp}"/galley-morph-ssh-*' } })).stdout
    local found = false
    for d in dirs:gmatch("[^\n]+") do
      local cfg = d .. "/config.d/" .. id
      if fs.exists(cfg) then
        found = true
        assert.are.equal(tonumber("700", 8), fs.stat(d).mode)
        assert.are.equal(tonumber("600", 8), fs.stat(cfg).mode)
      end
    end
    assert.is_true(found, "no config file for " .. id)
    for _, rec in ipairs(records) do assert.is_nil(rec.line:find(em.api_key, 1, true)) end
  end)

  it("says once that a gateway it cannot use is skipped, and exec carries everything", function()
    -- a port where nothing listens
    local dead = morph.new({ api_key = em.api_key, base_url = em.base_url, ssh = { host = "127.0.0.1", port = 1 },
      log = logger })
    local n = #records
    local data = codec.random_bytes(2 * 1024 * 1024)
    dead.files.write_file_atomic(id, "~/via-exec.bin", data)
    assert.are.equal(data, dead.files.read_file(id, "~/via-exec.bin"))
    dead.files.write_file_atomic(id, "~/via-exec2.bin", data)
    local warnings = 0
    for i = n + 1, #records do
      if records[i].level == "warn" then
        warnings = warnings + 1
        assert.is_nil(records[i].line:find(em.api_key, 1, true))
      end
    end
    assert.are.equal(1, warnings)
    dead.close()
  end)

  it("takes a refused login (a wrong key) as STREAM_UNAVAILABLE, never showing the key", function()
    local key = "wrongkey" .. codec.random_hex(8) -- (not token-shaped: nothing may hide it but the gateway code)
    local gw = gateway.new({ host = "127.0.0.1", port = em.ssh_port, api_key = key })
    local res, err = gw:stream(id, { "true" }, {})
    assert.is_nil(res)
    assert.are.same({ "STREAM_UNAVAILABLE", "TRANSPORT" }, { err.code, err.cause.code })
    assert.is_nil(tostring(err.message):find(key, 1, true))
    assert.is_nil(tostring(err.cause.message):find(key, 1, true))
    assert.is_nil(tostring(err.cause.details.stderr):find(key, 1, true))
    assert.is_truthy(tostring(err.cause.message):find(id .. ":***", 1, true))
    -- a refusal may be the instance's (paused, not ready): that transfer only, until it is the
    -- third with no login ever accepted; then the gateway is given up and not tried again
    assert.are.equal("login_refused", err.details.reason)
    local _, err2 = gw:stream(id, { "true" }, {})
    assert.are.equal("login_refused", err2.details.reason)
    local _, err3 = gw:stream(id, { "true" }, {})
    assert.are.same({ "STREAM_UNAVAILABLE", "TRANSPORT" }, { err3.code, err3.cause.code })
    assert.is_nil(err3.details and err3.details.reason)
    local res4, err4 = gw:stream(id, { "true" }, {})
    assert.is_nil(res4)
    assert.are.equal(err3, err4)
    gw:close()
  end)

  it("keeps the gateway for every other instance when one instance's login is refused (paused)", function()
    local q = morph.new({ api_key = em.api_key, base_url = em.base_url,
      ssh = { host = "127.0.0.1", port = em.ssh_port } })
    local other = q.instances.boot(emulator.SNAPSHOT).id
    local data = codec.random_bytes(2 * 1024 * 1024)
    local function ssh_commands(fn)
      local n = #em:log()
      fn()
      local c = 0
      for k, rec in ipairs(em:log()) do if k > n and rec.method == "SSH" then c = c + 1 end end
      return c
    end
    assert.are.equal(1, ssh_commands(function() q.files.write_file_atomic(id, "~/before.bin", data) end))
    q.instances.pause(other)
    for _ = 1, 4 do -- more than REFUSALS_BEFORE_GIVING_UP: a login has worked before
      local ok, err = pcall(q.files.write_file_atomic, other, "~/refused.bin", data)
      assert.is_false(ok)
      assert.are.equal("CONFLICT", err.code) -- exec's answer: the instance is paused
    end
    assert.are.equal(1, ssh_commands(function() q.files.write_file_atomic(id, "~/after.bin", data) end))
    assert.are.equal(data, q.files.read_file(id, "~/after.bin"))
    q.instances.terminate(other)
    q.close()
  end)

  it("leaves no private directory behind when a script ends in an error without close()", function()
    local script = support.script([[
local p = require("galley.providers.morph").new({ ssh = { host = "127.0.0.1", port = tonumber(os.getenv("GW_PORT")) } })
local id = p.instances.boot(os.getenv("GW_SNAPSHOT")).id
io.stdout:write(id, "\n")
io.stdout:flush()
p.files.write_file_atomic(id, "~/x.bin", require("galley.core.codec").random_bytes(2 * 1024 * 1024))
local r = io.popen('ls -d "${TMPDIR:-/tmp}"/galley-morph-ssh-*/config.d/' .. id)
io.stdout:write(r:read("a"))
r:close()
p.instances.terminate(id)
error("the script fails here, without p.close()")
]])
    local code, out, err = support.galley(support.q(script), nil, { MORPH_API_KEY = em.api_key,
      MORPH_BASE_URL = em.base_url, GW_PORT = tostring(em.ssh_port), GW_SNAPSHOT = emulator.SNAPSHOT })
    assert.are.equal(1, code, err)
    local cfg = out:match("\n(/[^\n]+/config%.d/[^\n]+)")
    assert.is_string(cfg, out .. err)
    local dir = cfg:gsub("/config%.d/[^/]+$", "")
    assert.is_false(fs.exists(dir), dir .. " is still there")
    -- and its multiplexed connection ended with it (not ControlPersist seconds later)
    local ps = assert(proc.run({ argv = { "sh", "-c", 'pgrep -f -- "$1" | grep -vx "$$" || true', "sh", dir } }))
    assert.are.equal("", ps.stdout)
  end)

  it("removes its private directory on close", function()
    local q = morph.new({ api_key = em.api_key, base_url = em.base_url, ssh = { host = "127.0.0.1", port = em.ssh_port } })
    local id2 = q.instances.boot(emulator.SNAPSHOT).id -- an instance of its own: its config names the directory
    q.files.write_file_atomic(id2, "~/c.bin", codec.random_bytes(2 * 1024 * 1024))
    local r = assert(proc.run({ argv = { "sh", "-c", 'ls -d "${TMPDIR:-/tmp}"/galley-morph-ssh-*/config.d/"$1"',
      "sh", id2 } }))
    local cfg = r.stdout:match("[^\n]+")
    assert.is_string(cfg, "no config file for " .. id2)
    local dir = cfg:gsub("/config%.d/[^/]+$", "")
    assert.is_true(fs.exists(dir))
    q.instances.terminate(id2)
    q.close()
    assert.is_false(fs.exists(dir))
  end)
end)
