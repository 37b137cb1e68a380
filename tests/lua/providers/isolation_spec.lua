-- Local instances cannot touch the host (issue 19): tests/lua/fixtures/isolation_attack.lua
-- attacks from inside an instance, run by a separate galley process with its own HOME (so the
-- default state and config directories are the caller's), once as root and once as a throwaway
-- unprivileged user (created here when missing, with subordinate ids).
local cjson = require("cjson")
local proc = require("galley.core.proc")
local support = require("support")

local USER = "galleytest"

local function host(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... }, timeout_ms = 120000 }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local function is_root()
  return host("id -u") == "0\n"
end

-- Creates USER with subordinate ids when missing (root only).
local function ensure_user()
  local r = proc.run({ argv = { "id", "-u", USER } })
  if r.exit_code ~= 0 then host("useradd -M -d /nonexistent -s /bin/sh " .. USER) end
  for _, f in ipairs({ "/etc/subuid", "/etc/subgid" }) do
    local text = host('cat "$1" 2>/dev/null || true', f)
    if not text:find("\n" .. USER .. ":", 1, true) and text:sub(1, #USER + 1) ~= USER .. ":" then
      -- past the highest range in use
      local top = 100000
      for s, c in text:gmatch(":(%d+):(%d+)") do
        top = math.max(top, tonumber(s) + tonumber(c))
      end
      host('echo "$1:$2:65536" >> "$3"', USER, tostring(top), f)
    end
  end
end

-- Makes the throwaway user and says true, or marks the test pending when this is not root
-- (`why`: what it needs root for).
local function with_user(why)
  if not is_root() then
    pending("needs root to " .. why .. " the throwaway user " .. USER)
    return false
  end
  ensure_user()
  return true
end

-- Runs the attack as `user` (nil: this process's user) in a fresh HOME under `dir`, with a
-- canary secret in its environment, a canary file and its galley config; returns the results.
local function attack(dir, user)
  local secret = "canary-" .. host("head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
  local home = dir .. "/home"
  host([[mkdir -p "$1/home/.config/galley" "$1/canary" "$1/out" "$1/bin"
printf %s "$2" > "$1/canary/secret"; printf '{"token":"%s"}' "$2" > "$1/home/.config/galley/claude-credentials.json"
chmod 600 "$1/canary/secret" "$1/home/.config/galley/claude-credentials.json"
cp "$3" "$1/bin/galley"; cp "$4" "$1/bin/attack.lua"; chmod 755 "$1" "$1/bin"; chmod 644 "$1/bin/attack.lua"
if [ -n "$5" ]; then chown -R "$5" "$1/home" "$1/canary" "$1/out"; fi]],
    dir, secret, support.bin:sub(1, 1) == "/" and support.bin or (support.source_dir .. "/" .. support.bin),
    support.source_dir .. "/tests/lua/fixtures/isolation_attack.lua", user or "")
  -- a process of the attacked user on the host
  local prefix = user and { "runuser", "-u", user, "--" } or {}
  local sleeper_argv = { table.unpack(prefix) }
  for _, a in ipairs({ "sleep", "600" }) do sleeper_argv[#sleeper_argv + 1] = a end
  local sleeper = assert(proc.spawn({ argv = sleeper_argv }))
  local sleeper_pid = user and host("sleep 0.2; pgrep -n -u " .. user .. " -x sleep"):match("%d+")
    or tostring(sleeper:pid())
  local argv = { table.unpack(prefix) }
  for _, a in ipairs({ "env", "-i", "HOME=" .. home, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "GALLEY_CANARY=" .. secret, "GALLEY_LOG=error", dir .. "/bin/galley", "run", dir .. "/bin/attack.lua",
    dir .. "/canary/secret", sleeper_pid, dir .. "/out" }) do argv[#argv + 1] = a end
  local r = assert(proc.run({ argv = argv, cwd = "/", timeout_ms = 300000 }))
  sleeper:kill(9)
  sleeper:close()
  assert.are.equal(0, r.exit_code, r.stderr .. r.stdout)
  local ok, res = pcall(cjson.decode, r.stdout:match("[^\n]*\n?$"))
  assert(ok, "no JSON from the attack: " .. r.stdout .. r.stderr)
  return res, secret
end

local function judge(res)
  assert.are.equal("userns", res.isolation)
  assert.is_true(res.sandbox)
  -- nothing private readable
  assert.is_false(res.environ_leaks, "the caller's environment leaked")
  assert.is_false(res.canary_file_leaks, "a host file leaked")
  assert.is_false(res.config_leaks, "the galley config leaked")
  assert.is_false(res.state_leaks, "the state directory leaked")
  assert.is_false(res.other_home_leaks, "another instance's home leaked")
  assert.is_true(res.own_home_reads)
  -- no host process visible or killable
  assert.is_false(res.sees_galley, "the galley process is visible")
  assert.is_true(res.process_count < 12, "too many processes visible: " .. tostring(res.process_count))
  assert.are_not.equal(0, res.kill_host)
  assert.is_true(res.host_pid_alive)
  -- capabilities only over the instance's namespaces
  assert.is_string(res.capeff)
  assert.are_not.equal(0, res.remount_root)
  assert.are_not.equal(0, res.remount_usr)
  assert.are_not.equal(0, res.write_host)
  assert.is_false(res.host_written)
  assert.are_not.equal(0, res.nested_userns)
  assert.are_not.equal(0, res.nested_userns_root)
  assert.are_not.equal(0, res.sysctl)
  -- what agents need works
  assert.are.equal("1000\n", res.user_switch)
  assert.are.equal("65534\n", res.su)
  assert.are.equal("ok\n", res.tools)
  assert.is_true(res.pm2_seen, "PM2 daemon not seen by the next exec")
  -- cleanup cannot be escaped
  assert.are_not.equal(0, res.cgroup_write)
  assert.are.equal(1, res.escapee_before)
  assert.are.equal(0, res.escapee_after)
  -- network = false
  assert.are.equal(0, res.net_shared_connect)
  assert.is_false(res.net_capability)
  assert.are_not.equal(0, res.net_off_connect)
  assert.are.equal("lo ", res.net_off_links)
end

describe("local instances cannot touch the host #isolation", function()
  local dir

  before_each(function()
    dir = host("mktemp -d /tmp/galley-iso-XXXXXX"):gsub("%s+$", "")
  end)

  after_each(function()
    -- instances the attack left (a failed run) die with their holders; files go with the dir
    host('find "$1" -path "*/instances/*/meta.json" | while read -r m; do '
      .. 'p=$(sed -n \'s/.*"pid":\\([0-9]*\\).*/\\1/p\' "$m"); '
      .. '[ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; sleep 0.2; rm -rf -- "$1" || true', dir)
  end)

  it("as the caller running galley (root in CI)", function()
    judge((attack(dir, nil)))
  end)

  it("starts new namespaces when the holder is gone (a rebooted machine), keeping the files", function()
    local lp = require("galley.providers.local")
    local p = lp.new({ state_dir = dir .. "/state", log = require("galley.log").silent() })
    assert.are.equal("userns", p.capabilities.isolation)
    local i = p.instances.boot()
    local function holder()
      return cjson.decode(host('cat "$1/instances/$2/meta.json"', p.state_dir, i.id)).holder
    end
    local before = holder()
    assert.is_truthy(before and before.pid)
    p.files.write_file_atomic(i.id, "~/kept", "yes")
    local r = p.exec(i.id, { kind = "argv", command = "sh", args = { "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!" } })
    assert.are.equal(0, r.exit_code, r.stderr)
    host("kill -9 " .. math.tointeger(before.pid) .. "; sleep 0.3")
    -- the next exec works, in new namespaces where the old processes are gone
    r = p.exec(i.id, { kind = "argv", command = "sh", args = { "-c", "cat ~/kept; echo; ps -e -o args= | grep -c '^sleep 600'" } })
    assert.are.equal(1, r.exit_code, r.stderr) -- grep found nothing
    assert.are.equal("yes\n0\n", r.stdout)
    assert.are_not.equal(before.pid, holder().pid)
    p.instances.terminate(i.id)
  end)

  it("ends an instance whose directory was deleted (no holder outlives its state)", function()
    local lp = require("galley.providers.local")
    local p = lp.new({ state_dir = dir .. "/state", log = require("galley.log").silent() })
    local i = p.instances.boot()
    local meta = cjson.decode(host('cat "$1/instances/$2/meta.json"', p.state_dir, i.id))
    local pid = math.tointeger(meta.holder.pid)
    local r = p.exec(i.id, { kind = "argv", command = "sh", args = { "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!" } })
    assert.are.equal(0, r.exit_code, r.stderr)
    local alive = 'kill -0 "$1" 2>/dev/null && echo yes || echo no'
    assert.are.equal("yes\n", host(alive, pid))
    host('rm -rf -- "$1/instances/$2"', p.state_dir, i.id)
    local gone = false
    for _ = 1, 150 do -- the holder looks every 5 s
      if host(alive, pid) == "no\n" then gone = true break end
      require("galley.core.runtime").sleep_ms(100)
    end
    assert.is_true(gone, host('ps -eo pid,ppid,stat,args --forest | grep -A3 "^ *$1 " | cut -c1-160', pid))
    -- and with it everything in its pid namespace: no sleep 600 is left on the machine from it
    assert.are.equal("", host('ps -e -o pid=,args= | grep "[s]leep 600" | while read -r p a; do '
      .. 'grep -q "GALLEY_INSTANCE_ID=$2" "/proc/$p/environ" 2>/dev/null && echo "$p"; done; true', "x", i.id))
  end)

  it("never joins a holder whose pid now names another process (galley __enter checks its start time)", function()
    local lp = require("galley.providers.local")
    local p = lp.new({ state_dir = dir .. "/state", log = require("galley.log").silent() })
    local i = p.instances.boot()
    local meta = cjson.decode(host('cat "$1/instances/$2/meta.json"', p.state_dir, i.id))
    local function enter(start, ...)
      local argv = { support.bin, "__enter", "", tostring(math.tointeger(meta.holder.pid)), start, "", "/", "--", ... }
      return assert(proc.run({ argv = argv, cwd = "/", timeout_ms = 30000 }))
    end
    local ok = enter(meta.holder.start, "sh", "-c", "echo $$; id -u")
    assert.are.equal(0, ok.exit_code, ok.stderr)
    assert.are_not.equal("1\n0\n", ok.stdout) -- a process of the instance, uid 0 there
    assert.matches("^%d+\n0\n$", ok.stdout)
    assert.are.equal(125, enter(tostring(tonumber(meta.holder.start) + 1), "true").exit_code)
    -- what the old shell chain answered: 127 for a missing command or directory
    assert.are.equal(127, enter(meta.holder.start, "galley-no-such-command").exit_code)
    assert.are.equal(2, proc.run({ argv = { support.bin, "__enter", "x" } }).exit_code)
    p.instances.terminate(i.id)
  end)

  it("lets no other user enter an instance or change its limits (galley __enter, __userns-off)", function()
    if not with_user("run as") then return end
    local lp = require("galley.providers.local")
    local p = lp.new({ state_dir = dir .. "/state", log = require("galley.log").silent() })
    local i = p.instances.boot()
    local meta = cjson.decode(host('cat "$1/instances/$2/meta.json"', p.state_dir, i.id))
    local pid = tostring(math.tointeger(meta.holder.pid))
    -- a copy of galley the other user can run
    local bin = host('d=$(mktemp -d) && cp "$1" "$d/galley" && chmod 755 "$d" "$d/galley" && printf %s "$d"',
      support.bin:sub(1, 1) == "/" and support.bin or (support.source_dir .. "/" .. support.bin))
    local function as_user(...)
      local r = assert(proc.run({ argv = { "runuser", "-u", USER, "--", bin .. "/galley", ... }, cwd = "/" }))
      return r.exit_code, r.stderr
    end
    local code, err = as_user("__enter", "", pid, meta.holder.start, "", "/", "--", "id")
    assert.are.equal(125, code, err)
    code, err = as_user("__userns-off", pid)
    assert.are.equal(1, code, err)
    code, err = as_user("__stage", dir, dir, "100000", "100000", "--", "true")
    assert.are.equal(1, code, err)
    p.instances.terminate(i.id)
    host('rm -rf -- "$1"', bin)
  end)

  it("as an unprivileged user", function()
    if not with_user("create") then return end
    judge((attack(dir, USER)))
  end)
end)
