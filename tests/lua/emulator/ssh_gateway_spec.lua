-- The emulator's SSH gateway (`galley __ssh-gateway`) with the real OpenSSH client: user
-- `<instance_id>:<api_key>` in a private config file, a throwaway ed25519 key, a private HOME.
local support = require("support")
local emulator = require("support.emulator")
local codec = require("galley.core.codec")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local MiB = 1024 * 1024

describe("the emulator's SSH gateway #emulator", function()
  local em, id, dir, home, cfg

  local function write_file(path, text, mode)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    if mode then assert(proc.run({ argv = { "chmod", mode, path } }).exit_code == 0) end
  end

  local function sh_run(script, opts)
    opts = opts or {}
    return assert(proc.run({ argv = { "sh", "-c", script, "sh", table.unpack(opts.args or {}) },
      env = { HOME = home, PATH = os.getenv("PATH") or "/usr/bin:/bin" }, env_mode = "replace",
      stdin = opts.stdin, timeout_ms = opts.timeout_ms or 60000, cwd = dir }))
  end

  --- A config file for `user` (default: the instance and the emulator's key), mode 600.
  local function config(user, extra)
    local path = dir .. "/config-" .. codec.random_hex(4)
    write_file(path, table.concat({
      "Host gw",
      "  HostName 127.0.0.1",
      "  Port " .. em.ssh_port,
      "  User " .. (user or (id .. ":" .. em.api_key)),
      "  IdentityFile " .. dir .. "/id",
      "  IdentitiesOnly yes",
      "  BatchMode yes",
      "  StrictHostKeyChecking accept-new",
      "  UserKnownHostsFile " .. dir .. "/known_hosts",
      "  LogLevel ERROR",
      extra or "",
    }, "\n") .. "\n", "600")
    return path
  end

  --- ssh -F cfg gw LINE: {exit_code, stdout, stderr}.
  local function ssh(line, opts)
    opts = opts or {}
    return sh_run('exec ssh -F "$1" gw "$2"', { args = { opts.cfg or cfg, line }, stdin = opts.stdin,
      timeout_ms = opts.timeout_ms })
  end

  --- Pids whose command line contains `text` (the [x] trick keeps pgrep's shell out).
  local function pids_of(text)
    local r = assert(proc.run({ argv = { "sh", "-c", 'pgrep -f -- "[' .. text:sub(1, 1) .. ']$1" || true', "sh",
      text:sub(2) } }))
    local pids = {}
    for p in r.stdout:gmatch("%d+") do pids[#pids + 1] = p end
    return pids
  end

  local function wait_until(fn, ms, what)
    local deadline = runtime.now_ms() + ms
    while not fn() do
      assert(runtime.now_ms() < deadline, "timed out waiting: " .. what)
      runtime.sleep_ms(50)
    end
  end

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 0 })
    assert.is_number(em.ssh_port, em.stdout)
    local r = em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})
    assert.are.equal(200, r.status, r.body)
    id = r.json.id
    dir = support.tmpname(".ssh")
    os.remove(dir)
    assert(fs.mkdir_p(dir .. "/home"))
    home = dir .. "/home"
    local k = sh_run('ssh-keygen -q -t ed25519 -N "" -f "$1"', { args = { dir .. "/id" } })
    assert.are.equal(0, k.exit_code, k.stderr)
    cfg = config()
  end)

  lazy_teardown(function()
    if em then em:stop() end
    if dir then fs.remove_tree(dir) end
  end)

  it("runs a command line with its exit code, stdout and stderr kept apart", function()
    local r = ssh("echo out; echo err >&2; exit 3")
    assert.are.same({ 3, "out\n", "err\n" }, { r.exit_code, r.stdout, r.stderr })
    r = ssh("true")
    assert.are.same({ 0, "", "" }, { r.exit_code, r.stdout, r.stderr })
  end)

  it("runs commands like the exec endpoint: same home, hostname, directory and GALLEY_INSTANCE_ID", function()
    local line = 'echo "$HOME|$(hostname)|$(pwd)|$GALLEY_INSTANCE_ID|$(id -u)"'
    local r = ssh(line)
    assert.are.equal(0, r.exit_code, r.stderr)
    local e = em:request("POST", "/instance/" .. id .. "/exec", { command = { line } })
    assert.are.equal(200, e.status, e.body)
    assert.are.equal(e.json.stdout, r.stdout)
  end)

  it("takes LANG and LC_* from env requests and ignores other variables", function()
    local ecfg = config(nil, "  SetEnv LANG=xx_YY.UTF-8 LC_TIME=C GALLEY_SSH_SPEC=leak")
    local r = ssh('echo "$LANG|$LC_TIME|${GALLEY_SSH_SPEC-unset}"', { cfg = ecfg })
    assert.are.same({ 0, "xx_YY.UTF-8|C|unset\n" }, { r.exit_code, r.stdout })
  end)

  it("streams 8 MiB of binary stdin into a file and 64 MiB back out intact", function()
    local src = dir .. "/r8"
    assert.are.equal(0, sh_run('head -c 8388608 /dev/urandom > "$1"', { args = { src } }).exit_code)
    local f = assert(io.open(src, "rb"))
    local bytes = f:read("a")
    f:close()
    assert.are.equal(8 * MiB, #bytes)
    local want = sh_run('sha256sum < "$1"', { args = { src } }).stdout:match("^(%x+)")
    local r = ssh("cat > f8 && sha256sum < f8", { stdin = bytes })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.equal(want, r.stdout:match("^(%x+)"))
    r = ssh("head -c 67108864 /dev/urandom > f64 && sha256sum < f64")
    assert.are.equal(0, r.exit_code, r.stderr)
    local remote = r.stdout:match("^(%x+)")
    local back = sh_run('ssh -F "$1" gw "cat f64" | sha256sum', { args = { cfg } })
    assert.are.equal(remote, back.stdout:match("^(%x+)"))
  end)

  it("puts and gets files with the sftp client", function()
    local src = dir .. "/up.bin"
    assert.are.equal(0, sh_run('head -c 1048576 /dev/urandom > "$1"', { args = { src } }).exit_code)
    write_file(dir .. "/batch", "put " .. src .. " up.bin\nget up.bin " .. dir .. "/down.bin\n")
    local r = sh_run('sftp -q -F "$1" -b "$2" gw', { args = { cfg, dir .. "/batch" } })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.equal(0, sh_run('cmp "$1" "$2"', { args = { src, dir .. "/down.bin" } }).exit_code)
    assert.are.equal("1048576\n", ssh("wc -c < up.bin").stdout)
  end)

  it("runs 4 channels at once over one ControlMaster connection", function()
    local mcfg = config(nil, "  ControlPath " .. dir .. "/cm-%C\n  ControlPersist 60")
    local gateway = em.state_dir .. "/ssh_host_ed25519_key" -- in the gateway's and its children's argv
    wait_until(function() return #pids_of(gateway) == 1 end, 15000, "earlier connections ended")
    local m = sh_run('ssh -F "$1" -o ControlMaster=yes -fN gw >/dev/null 2>&1', { args = { mcfg } })
    assert.are.equal(0, m.exit_code)
    local before = #pids_of(gateway)
    assert.are.equal(2, before) -- the gateway and the master's connection
    local hs, spans = {}, {}
    for i = 1, 4 do
      hs[i] = assert(proc.spawn({ argv = { "ssh", "-F", mcfg, "-o", "ControlMaster=no", "gw",
        's=$(date +%s%N); sleep 2; echo "ch' .. i .. ' $s $(date +%s%N)"' },
        env = { HOME = home, PATH = os.getenv("PATH") }, env_mode = "replace" }))
    end
    runtime.sleep_ms(1000)
    assert.are.equal(before, #pids_of(gateway)) -- no new connection
    for i = 1, 4 do
      local r = assert(hs[i]:wait(30000))
      hs[i]:close()
      assert.are.equal(0, r.exit_code)
      local s, e = r.stdout:match("^ch" .. i .. " (%d+) (%d+)\n$")
      assert.is_truthy(s, r.stdout)
      spans[i] = { tonumber(s), tonumber(e) }
    end
    assert.is_true(require("support.overlap").all(spans), "the channels ran one after another")
    sh_run('ssh -F "$1" -O exit gw >/dev/null 2>&1', { args = { mcfg } })
  end)

  it("refuses a wrong key, an unknown instance and a user without a colon", function()
    for _, user in ipairs({ id .. ":wrong_key", "morphvm_nosuch:" .. em.api_key, id, ":" .. em.api_key }) do
      local r = ssh("true", { cfg = config(user) })
      assert.are.equal(255, r.exit_code, user)
      assert.truthy(r.stderr:find("Permission denied", 1, true), r.stderr)
    end
    assert.are.equal(0, ssh("true").exit_code) -- the gateway survived
  end)

  it("refuses a paused instance, and wakes it when its wake_on_ssh is set", function()
    assert.are.equal(200, em:request("POST", "/instance/" .. id .. "/pause").status)
    assert.are.equal(255, ssh("true").exit_code)
    assert.are.equal(200, em:request("POST", "/instance/" .. id .. "/wake-on", { wake_on_ssh = true }).status)
    assert.are.equal("up\n", ssh("echo up").stdout)
    assert.are.equal("ready", em:request("GET", "/instance/" .. id).json.status)
    assert.are.equal(200, em:request("POST", "/instance/" .. id .. "/wake-on", { wake_on_ssh = false }).status)
  end)

  it("refuses shells and forced pseudo-terminals", function()
    local r = sh_run('ssh -F "$1" -tt gw true', { args = { cfg } })
    assert.are.equal(255, r.exit_code)
    r = sh_run('ssh -F "$1" gw < /dev/null', { args = { cfg } })
    assert.are.equal(255, r.exit_code)
  end)

  it("kills the command when the client goes away mid-command", function()
    local tag = "sleep 100." .. tostring(math.random(100000, 999999))
    local h = assert(proc.spawn({ argv = { "ssh", "-F", cfg, "gw", tag .. "; echo after" },
      env = { HOME = home, PATH = os.getenv("PATH") }, env_mode = "replace" }))
    wait_until(function() return #pids_of(tag) >= 3 end, 20000, "the command started") -- ssh, sh, sleep
    h:kill("KILL")
    h:close()
    wait_until(function() return #pids_of(tag) == 0 end, 15000, "the command was killed")
  end)

  it("kills the command when its channel closes early on a connection that stays", function()
    local mcfg = config(nil, "  ControlPath " .. dir .. "/cmk-%C\n  ControlPersist 60")
    assert.are.equal(0, sh_run('ssh -F "$1" -o ControlMaster=yes -fN gw >/dev/null 2>&1', { args = { mcfg } }).exit_code)
    local tag = "sleep 100." .. tostring(math.random(100000, 999999))
    local h = assert(proc.spawn({ argv = { "ssh", "-F", mcfg, "-o", "ControlMaster=no", "gw", tag .. "; echo after" },
      env = { HOME = home, PATH = os.getenv("PATH") }, env_mode = "replace" }))
    wait_until(function() return #pids_of(tag) >= 3 end, 20000, "the command started") -- ssh, sh, sleep
    h:kill("KILL") -- the mux client: the master closes its channel, the connection stays
    h:close()
    wait_until(function() return #pids_of(tag) == 0 end, 15000, "the command was killed")
    assert.are.equal(0, sh_run('ssh -F "$1" -O check gw 2>/dev/null', { args = { mcfg } }).exit_code)
    assert.are.equal("still\n", ssh("echo still", { cfg = mcfg }).stdout)
    sh_run('ssh -F "$1" -O exit gw >/dev/null 2>&1', { args = { mcfg } })
  end)

  it("runs commands that die with their instance (delete kills them, the client sees the end)", function()
    local r = em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})
    assert.are.equal(200, r.status, r.body)
    local other = r.json.id
    local tag = "sleep 100." .. tostring(math.random(100000, 999999))
    local h = assert(proc.spawn({ argv = { "ssh", "-F", config(other .. ":" .. em.api_key), "gw", tag },
      env = { HOME = home, PATH = os.getenv("PATH") }, env_mode = "replace" }))
    wait_until(function() return #pids_of(tag) >= 2 end, 20000, "the command started") -- ssh, sleep
    assert.are.equal(204, em:request("DELETE", "/instance/" .. other).status)
    local res = assert(h:wait(20000))
    h:close()
    assert.are_not.equal(0, res.exit_code)
    wait_until(function() return #pids_of(tag) == 0 end, 15000, "the command was killed")
  end)

  it("survives garbage bytes, a client that never speaks and 50 connections at once", function()
    local port = tostring(em.ssh_port)
    local g = sh_run('head -c 65536 /dev/urandom | timeout 10 bash -c "cat > /dev/tcp/127.0.0.1/$1" 2>/dev/null; true',
      { args = { port } })
    assert.are.equal(0, g.exit_code)
    local idle = assert(proc.spawn({ argv = { "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/$1; sleep 60", "bash", port } }))
    runtime.sleep_ms(200)
    local t0 = runtime.now_ms()
    assert.are.equal("ok\n", ssh("echo ok").stdout)
    assert.is_true(runtime.now_ms() - t0 < 10000)
    local hs = {}
    for i = 1, 50 do
      hs[i] = assert(proc.spawn({ argv = { "ssh", "-F", cfg, "gw", "echo n" .. i },
        env = { HOME = home, PATH = os.getenv("PATH") }, env_mode = "replace" }))
    end
    for i = 1, 50 do
      local r = assert(hs[i]:wait(60000))
      hs[i]:close()
      assert.are.same({ 0, "n" .. i .. "\n" }, { r.exit_code, r.stdout }, r.stderr)
    end
    idle:kill("KILL")
    idle:close()
  end)

  it("leaves no gateway process behind when the emulator stops", function()
    local gateway = em.state_dir .. "/ssh_host_ed25519_key"
    assert.is_true(#pids_of(gateway) >= 1)
    em:stop()
    em = nil
    wait_until(function() return #pids_of(gateway) == 0 end, 15000, "the gateway stopped")
  end)
end)

describe("starting the emulator's SSH gateway #emulator", function()
  it("reports it from spawn.start(), GET /_emulator/state and the second stdout line", function()
    local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0 })
    local ok, err = pcall(function()
      assert.are.equal("127.0.0.1", emu.ssh_host)
      assert.is_number(emu.ssh_port)
      local http = require("galley.core.http")
      local r = assert(http.request({ method = "GET", url = emu.base_url:gsub("/api$", "") .. "/_emulator/state",
        headers = { Authorization = "Bearer " .. emu.api_key } }))
      assert.are.equal(emu.ssh_port, require("cjson").decode(r.body).options.ssh_port)
    end)
    emu.stop()
    assert(ok, err)
  end)

  it("starts none with --no-ssh, and fails to start on an --ssh-port in use", function()
    local em = emulator.start({ ssh = false })
    local ok, err = pcall(function()
      assert.is_nil(em.ssh_port)
      assert.truthy(em.stdout:find("\nssh gateway off\n", 1, true), em.stdout)
    end)
    local busy = emulator.start({})
    local ok2, err2 = pcall(function()
      local r = assert(proc.run({ argv = { support.bin, "-q", "emulate", "--port", "0", "--ssh-port",
        tostring(busy.ssh_port) }, env = { MORPH_API_KEY = "morph_sshspec_key" }, env_mode = "extend",
        stdin = "", timeout_ms = 30000 }))
      assert.are.equal(1, r.exit_code, r.stdout .. r.stderr)
    end)
    busy:stop()
    em:stop()
    assert(ok, err)
    assert(ok2, err2)
  end)
end)
