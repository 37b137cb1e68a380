-- The local provider beyond the conformance suite: the sandbox, process tracking (cgroups and
-- the environment fallback, with real PM2), TTLs, persistence across providers and processes.
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local support = require("support")
local conformance = require("providers.conformance")
local lp = require("galley.providers.local")

local raises_code = conformance.raises_code

local function sh(script, ...)
  return { kind = "argv", command = "/bin/sh", args = { "-c", script, "sh", ... } }
end

local function host(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... } }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local function exists(path)
  return host('[ -e "$1" ] && echo yes || echo no', path) == "yes\n"
end

-- Host pids of processes whose environment marks them as part of instance `id`.
local function instance_pids(id)
  local out = host([[
for p in /proc/[0-9]*; do
  if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "GALLEY_INSTANCE_ID=$1"; then echo "${p#/proc/}"; fi
done]], id)
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = pid end
  return pids
end

local function proc_state(pid)
  local stat = host('cat "/proc/$1/stat" 2>/dev/null || true', pid)
  return stat:match("^%d+ %b() (%a)")
end

-- Running or stopped; a zombie waiting for init to reap it is dead.
local function alive(pid)
  local st = proc_state(pid)
  return st ~= nil and st ~= "Z" and st ~= "X"
end

local function cgroup_frozen(pid)
  local rel = host('cat "/proc/$1/cgroup"', pid):match("0::(%S+)")
  local mount = host("awk '$3 == \"cgroup2\" {print $2; exit}' /proc/self/mounts"):gsub("%s+$", "")
  return host('cat "$1/cgroup.events"', mount .. rel):match("frozen (%d)") == "1"
end

-- Whether the instance's process `pid` is paused: its cgroup frozen, or, where the provider
-- tracks processes by environment (a plain user without a delegated cgroup), stopped.
local function paused(p, pid)
  if p.capabilities.process_tracking == "cgroup" then return cgroup_frozen(pid) end
  return proc_state(pid) == "T"
end

-- The host pid of the command a spawned handle's `galley __enter` runs (its only child, a
-- process of the instance's pid namespace).
local function enter_child(h)
  local child = host('cat "/proc/$1/task/$1/children"', h:pid()):match("(%d+)")
  assert.is_truthy(child, "no child of galley __enter " .. tostring(h:pid()))
  return child
end

-- Marks a test of the instances' own namespaces (a holder, galley __enter) pending where they
-- have none (isolation "none": a caller without subordinate ids, such as nobody).
local function needs_userns(p)
  if p.capabilities.isolation == "userns" then return false end
  pending("instances share this machine's namespaces here (isolation \"none\")")
  return true
end

-- Marks a test that needs cgroups pending where the provider has none (a plain user).
local function needs_cgroups(p)
  if p.capabilities.process_tracking == "cgroup" then return false end
  pending("no cgroup for local instances here (as a plain user without a delegated one)")
  return true
end

-- The host pid of the instance's process `pid` (pids inside an instance with its own pid
-- namespace are that namespace's: NSpid in /proc/PID/status ends with it).
local function host_pid(id, pid)
  pid = tostring(pid)
  for _, p in ipairs(instance_pids(id)) do
    local status = host('cat "/proc/$1/status" 2>/dev/null || true', p)
    local nspid = status:match("\nNSpid:([^\n]*)")
    if nspid and nspid:match("(%d+)%s*$") == pid then return p end
  end
  error("no host process for pid " .. pid .. " of " .. id)
end

-- Starts a detached sleeper in the instance and returns its host pid.
local function start_sleeper(p, id)
  local r = p.exec(id, sh("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"))
  assert.are.equal(0, r.exit_code, r.stderr)
  return host_pid(id, r.stdout:match("%d+"))
end

describe("the local provider #local", function()
  local state, p
  local providers = {}

  local function provider(opts)
    opts = opts or {}
    opts.state_dir = opts.state_dir or state
    local x = lp.new(opts)
    providers[#providers + 1] = x
    return x
  end

  setup(function()
    state = host("mktemp -d /tmp/galley-local-XXXXXX"):gsub("%s+$", "")
    p = provider()
  end)

  teardown(function()
    -- every instance any test booted, whatever provider flavour booted it
    for _, x in ipairs(providers) do
      for _, i in ipairs(x.instances.list()) do pcall(x.instances.terminate, i.id) end
    end
    host('rm -rf -- "$1"', state)
  end)

  describe("launch directories", function()
    it("are removed by the next galley when the galley that made one was killed", function()
      if needs_userns(p) then return end -- (only a holder's launch makes and sweeps them)
      local fs = require("galley.core.fs")
      local dead = host("echo $$"):match("%d+") -- a shell that has exited
      assert.is_nil(fs.stat("/proc/" .. dead))
      local stale = ("/dev/shm/galley-launch-%s-0123abcd"):format(dead)
      local live = ("/dev/shm/galley-launch-%d-4567abcd"):format(runtime.getpid())
      assert(fs.mkdir(stale, "0700"))
      assert(fs.write_atomic(stale .. "/log", "left by a killed galley"))
      assert(fs.mkdir(live, "0700"))
      local child = support.script(([[
local p = require("galley.providers.local").new({ state_dir = %q })
p.instances.terminate(p.instances.boot().id)
print("booted")
]]):format(state))
      local r = assert(proc.run({ argv = { support.bin, child }, timeout_ms = 60000 }))
      local live_kept = fs.stat(live) ~= nil
      fs.remove(live)
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("booted\n", r.stdout)
      assert.is_nil(fs.stat(stale))
      assert.is_true(live_kept) -- a running galley's is left alone
    end)
  end)

  describe("sandbox", function()
    it("is on, with the home at /root", function()
      assert.is_true(p.capabilities.sandbox)
      assert.are.equal("/root", p.capabilities.home_dir)
      -- cgroups where this user can make them (root, or a delegated subtree), else the environment
      assert.is_truthy(({ cgroup = true, environ = true })[p.capabilities.process_tracking])
    end)

    it("mounts the host read-only, the home at /root and a /tmp that persists", function()
      local i = p.instances.boot()
      local r = p.exec(i.id, sh("touch /usr/galley-should-fail"))
      assert.are_not.equal(0, r.exit_code)
      assert.is_false(exists("/usr/galley-should-fail"))
      r = p.exec(i.id, sh('printf %s "$HOME"; echo data > ~/in-home; echo t > /tmp/kept'))
      assert.are.equal("/root", r.stdout)
      assert.are.equal("data\n", host('cat "$1/home/in-home"', i.host_dir))
      assert.are.equal("t\n", p.exec(i.id, sh("cat /tmp/kept")).stdout)
      assert.are.equal("t\n", host('cat "$1/tmp/kept"', i.host_dir))
      assert.are.equal(i.id .. "\n", p.exec(i.id, sh('echo "$GALLEY_INSTANCE_ID"')).stdout)
      p.instances.terminate(i.id)
      assert.is_false(exists(i.host_dir))
    end)

    it("removes the script of a shell-form exec", function()
      local i = p.instances.boot()
      local r = p.exec(i.id, { kind = "shell", script = "ls -A /tmp; echo secret-ish" })
      assert.matches("%.galley%-script", r.stdout)
      assert.are.equal("", host('ls -A "$1/tmp"', i.host_dir))
      p.instances.terminate(i.id)
    end)

    it("gives exit code 127 for a missing program", function()
      local i = p.instances.boot()
      assert.are.equal(127, p.exec(i.id, { kind = "argv", command = "galley-no-such-program" }).exit_code)
      p.instances.terminate(i.id)
    end)
  end)

  describe("without the sandbox", function()
    it("runs on the host with HOME and ~ in the instance directory", function()
      local u = provider({ sandbox = false })
      assert.is_false(u.capabilities.sandbox)
      assert.is_nil(u.capabilities.home_dir)
      local i = u.instances.boot()
      local home = i.host_dir .. "/home"
      assert.are.equal(home, u.exec(i.id, sh('printf %s "$HOME"')).stdout)
      assert.are.equal(home .. "\n", u.exec(i.id, { kind = "argv", command = "pwd", cwd = "~" }).stdout)
      u.files.write_file_atomic(i.id, "~/note", "unsandboxed")
      assert.are.equal("unsandboxed", host('cat "$1/note"', home))
      assert.are.equal(127, u.exec(i.id, { kind = "argv", command = "galley-no-such-program" }).exit_code)
      u.instances.terminate(i.id)
    end)
  end)

  describe("process tracking with cgroups", function()
    it("freezes on pause, thaws on resume and kills everything on terminate", function()
      if needs_cgroups(p) then return end
      local i = p.instances.boot()
      local pid = start_sleeper(p, i.id)
      assert.is_true(alive(pid))
      assert.is_false(cgroup_frozen(pid))
      p.instances.pause(i.id)
      assert.is_true(cgroup_frozen(pid))
      raises_code("CONFLICT", p.exec, i.id, sh("true"))
      p.instances.resume(i.id)
      assert.is_false(cgroup_frozen(pid))
      p.instances.terminate(i.id)
      assert.is_false(alive(pid))
      assert.are.same({}, instance_pids(i.id))
    end)

    it("starts every exec inside the instance's cgroup and cgroup namespace", function()
      if needs_cgroups(p) then return end
      local i = p.instances.boot()
      -- from the inside: the root of its own cgroup namespace, the holder's namespace
      local r = p.exec(i.id, sh('cat /proc/self/cgroup; readlink /proc/self/ns/cgroup /proc/1/ns/cgroup'))
      assert.are.equal(0, r.exit_code)
      local own, mine, holders = r.stdout:match("\n?0::(%S*)\n(%S+)\n(%S+)\n$") -- v1 lines first on hybrid hosts
      assert.matches("^/cmd%-%x+$", own) -- the exec's own cgroup below the instance's: no host path
      assert.are.equal(holders, mine)
      -- from the host: the exec's process is in the instance's cgroup, as the holder is
      local pid = assert(start_sleeper(p, i.id))
      local cg = host('cat "/proc/$1/cgroup"', pid):match("0::(%S+)")
      assert.truthy(cg:find("/galley/", 1, true))
      assert.truthy(cg:find(i.id, 1, true))
      p.instances.terminate(i.id)
      assert.is_false(alive(pid))
    end)

    it("ends a spawned command at once on close or kill(\"KILL\"), and its galley __enter reaps it", function()
      -- close() waited for the command to end by itself (wait(0) waited); close and kill signalled
      -- galley __enter before the cgroup, which left its child (a process of the instance's pid
      -- namespace) to this machine's pid 1 to reap, and the instance's stop waited for that
      if needs_cgroups(p) then return end
      local i = p.instances.boot()
      for _, how in ipairs({ "close", "kill" }) do
        local h = p.spawn(i.id, sh("trap '' TERM INT; echo up; sleep 20; echo " .. how .. " > ~/ended-" .. how))
        assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
        local enter, child = tostring(h:pid()), enter_child(h)
        if how == "close" then
          h:close()
        else
          -- TERM is the command's to handle (it ignores it here); KILL ends it
          assert.is_true(h:kill("TERM"))
          assert.is_nil(h:wait(300), "the command ended of a TERM it ignores")
          assert.is_true(h:kill("KILL"))
          local res = assert(h:wait(5000), "wait() came back")
          assert.are.equal(137, res.exit_code) -- the cgroup's SIGKILL, relayed by __enter
          h:close()
        end
        assert.is_nil(proc_state(child), how .. ": the command is still there (state " .. tostring(proc_state(child)) .. ")")
        assert.is_nil(proc_state(enter), how .. ": galley __enter is still there")
        assert.are.equal("", p.exec(i.id, sh("cat ~/ended-" .. how .. " 2>/dev/null; true")).stdout)
      end
      p.instances.terminate(i.id)
    end)

    it("leaves nothing to this machine's pid 1 when Ctrl-C stops an exec (output streamed or not) or a transfer",
      function()
      -- proc.run killed galley __enter's process group before the command's cgroup: __enter died
      -- first and its child, a process of the instance's pid namespace, went to this machine's
      -- pid 1 to reap. Here a child galley runs under a subreaper (PR_SET_CHILD_SUBREAPER), which
      -- such orphans go to instead: it counts those that end after the child galley got SIGINT.
      if needs_cgroups(p) then return end
      local i = p.instances.boot()
      finally(function() p.instances.terminate(i.id) end)
      local home = state .. "/instances/" .. i.id .. "/home"
      local SUBREAPER = [[
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
marker = sys.argv[1]
child = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
orphans = 0  # the command (sleep) ended as an orphan; bwrap is a sandbox's, orphaned on purpose
def reap():
    global orphans
    while True:
        try:
            r = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if r is None:
            return
        with open("/proc/%d/stat" % r.si_pid) as f:
            if " (sleep) " in f.read():
                orphans += 1
        os.waitpid(r.si_pid, 0)
deadline = time.time() + 30
while not os.path.exists(marker) and time.time() < deadline:
    reap()
    time.sleep(0.02)
child.send_signal(signal.SIGINT)
code = child.wait()
end = time.time() + 1.5
while time.time() < end:
    reap()
    time.sleep(0.02)
print(code, orphans)
]]      local CALLS = {
        exec = 'p.exec(ID, { kind = "argv", command = "/bin/sh", args = { "-c", CMD } })',
        streamed = 'p.exec(ID, { kind = "argv", command = "/bin/sh", args = { "-c", CMD } }, { on_stdout = print })',
        -- the byte channel's transfer program (files.stream)
        transfer = 'p.files.stream(ID, { "/bin/sh", "-c", CMD }, { stdout_file = p.state_dir .. "/transfer-out" })',
      }
      for _, how in ipairs({ "exec", "streamed", "transfer" }) do
        local marker = home .. "/up-" .. how
        local child = support.script(([[
local p = require("galley.providers.local").new({ state_dir = %q })
local ID, CMD = %q, "echo up > ~/up-%s; exec sleep 300"
%s
]]):format(state, i.id, how, CALLS[how]))
        local r = assert(proc.run({ argv = { "/usr/bin/python3", "-c", SUBREAPER, marker, support.bin, child },
          timeout_ms = 60000 }))
        os.remove(child)
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal("130 0\n", r.stdout, how)
        assert.are.equal("", p.exec(i.id, sh("pgrep -f 'slee[p] 300' || true")).stdout)
      end
    end)

    it("kills everything a command started when it is killed, and leaves a finished command's daemon", function()
      -- a nested timeout (a process group of its own) outlived an exec over its time limit, and
      -- a spawned handle killed: the exec came back at the host's backstop, wait() never did
      if needs_cgroups(p) then return end
      local i = p.instances.boot()
      local LOOP = { "timeout", "300", "sh", "-c", "while :; do sleep 0.05; done" }
      local function left() return p.exec(i.id, sh("pgrep -f 'timeou[t] 300' || true")).stdout end
      local t0 = runtime.now_ms()
      -- (under a shell: timeout(1) at the limit signals the shell's group and the shell, not a
      -- process group the command made)
      local ok, err = pcall(p.exec, i.id, sh("timeout 300 sh -c 'while :; do sleep 0.05; done'; true"),
        { timeout_ms = 500 })
      assert.is_false(ok)
      assert.are.equal("TIMEOUT", err.code)
      assert.truthy(runtime.now_ms() - t0 < 8000, runtime.now_ms() - t0) -- the backstop is 10 s more
      assert.are.equal("", left())
      local h = p.spawn(i.id, LOOP)
      runtime.sleep_ms(200)
      h:kill("KILL")
      local res = h:wait(5000)
      assert.truthy(res, "wait() came back")
      h:close()
      assert.are.equal("", left())
      -- a daemon started by an exec that ended by itself lives on (PM2's does)
      local pid = start_sleeper(p, i.id)
      assert.is_true(alive(pid))
      p.instances.terminate(i.id)
      assert.is_false(alive(pid))
    end)

    it("answers TIMEOUT soon after a command's cgroup is killed, though a process outside holds its output",
      function()
      local i = p.instances.boot()
      finally(function() p.instances.terminate(i.id) end)
      if not p.usage(i.id) then
        return pending("no cgroup for local instances here (as a plain user without a delegated one)")
      end
      if not proc.which("tmux") then return pending("no tmux here") end
      -- a tmux server (started by an earlier exec: outside this one's cgroup), stopped: a tmux
      -- client hands it its stdout over the server's socket, and the pipe stays open as long
      -- as the stopped server does not take the message
      assert.are.equal(0, p.exec(i.id, sh("tmux -L t new-session -d -s w 'exec sleep 300'")).exit_code)
      local pid = p.exec(i.id, sh("tmux -L t display-message -p '#{pid}'")).stdout:match("%d+")
      assert.are.equal(0, p.exec(i.id, sh("kill -STOP " .. pid)).exit_code)
      local t0 = runtime.now_ms()
      local ok, err = pcall(p.exec, i.id, sh("tmux -L t has-session -t =w"), { timeout_ms = 500 })
      local took = runtime.now_ms() - t0
      p.exec(i.id, sh("kill -CONT " .. pid))
      assert.is_false(ok)
      assert.are.equal("TIMEOUT", err.code)
      -- the limit, timeout(1)'s KILL 2 s later, the cgroup's 0.5 s after, then 1 s for the
      -- output: ~4 s (before: the limit + the 10 s backstop + 2 s, 12.5 s)
      assert.truthy(took < 500 + require("galley.providers.common").EXEC_BACKSTOP_MS, took)
    end)

    it("kills a paused instance's processes on terminate", function()
      local i = p.instances.boot()
      local pid = start_sleeper(p, i.id)
      p.instances.pause(i.id)
      p.instances.stop(i.id)
      assert.is_false(alive(pid))
      raises_code("NOT_FOUND", p.instances.get, i.id)
    end)

    it("leaves no PM2 daemon behind #pm2", function()
      local i = p.instances.boot()
      local r = p.exec(i.id, { kind = "argv", command = "pm2", args = { "start", "sleep", "--name", "napper",
        "--no-autorestart", "--", "1000" } })
      assert.are.equal(0, r.exit_code, r.stderr .. r.stdout)
      local god = {}
      for _, pid in ipairs(instance_pids(i.id)) do
        local cmdline = host('tr "\\0" " " < "/proc/$1/cmdline" 2>/dev/null || true', pid)
        if cmdline:find("God Daemon", 1, true) then god[#god + 1] = pid end
      end
      assert.are.equal(1, #god)
      assert.is_true(exists(i.host_dir .. "/home/.pm2/pm2.pid"))
      p.instances.terminate(i.id)
      assert.is_false(alive(god[1]))
      assert.are.same({}, instance_pids(i.id))
    end)
  end)

  describe("byte channel", function()
    it("stops an instance that sends more than the reader's limit, before it fills this machine's disk", function()
      local i = p.instances.boot()
      local out = support.tmpname()
      -- a hostile (or lying) instance: 8 MiB where at most 1 MiB may come
      local r = p.files.stream(i.id, { "/bin/sh", "-c", "head -c 8388608 /dev/zero" },
        { stdout_file = out, max_stdout_bytes = 1024 * 1024 })
      assert.are_not.equal(0, r and r.exit_code)
      local size = require("galley.core.fs").stat(out).size
      assert.is_true(size <= 1024 * 1024 + 512, size)
      -- under the limit it all arrives
      r = p.files.stream(i.id, { "/bin/sh", "-c", "head -c 1000000 /dev/zero" },
        { stdout_file = out, max_stdout_bytes = 1024 * 1024 })
      assert.are.equal(0, r.exit_code)
      assert.are.equal(1000000, require("galley.core.fs").stat(out).size)
    end)
  end)

  describe("spawn and reboot", function()
    it("streams a spawned command's output from inside the instance", function()
      local i = p.instances.boot()
      local h = p.spawn(i.id, { "/bin/sh", "-c", 'echo "$HOME $GALLEY_INSTANCE_ID"; echo err >&2; exit 3' })
      local out, err, code = {}, {}, nil
      while code == nil do
        local kind, a = h:read(5000)
        if kind == "stdout" then out[#out + 1] = a
        elseif kind == "stderr" then err[#err + 1] = a
        elseif kind == "exit" then code = a
        else error("read failed: " .. tostring(a)) end
      end
      h:close()
      assert.are.same({ 3, "/root " .. i.id .. "\n", "err\n" }, { code, table.concat(out), table.concat(err) })
      local h2 = p.spawn(i.id, { kind = "argv", command = "pwd", cwd = "/tmp" })
      assert.are.equal("/tmp\n", h2:wait(5000).stdout)
      h2:close()
      raises_code("VALIDATION_ERROR", p.spawn, i.id, {})
      raises_code("NOT_FOUND", p.spawn, "localvm_nosuch00", { "true" })
      p.instances.terminate(i.id)
    end)

    it("reboots: every process dies, the files stay, the instance is ready", function()
      local i = p.instances.boot()
      p.files.write_file_atomic(i.id, "~/kept", "yes")
      local pid = start_sleeper(p, i.id)
      p.instances.pause(i.id)
      assert.are.equal("ready", p.instances.reboot(i.id).status)
      assert.is_false(alive(pid))
      assert.are.equal("yes", p.files.read_file(i.id, "~/kept"))
      local pid2 = start_sleeper(p, i.id)
      assert.is_false(paused(p, pid2))
      p.instances.terminate(i.id)
      assert.is_false(alive(pid2))
    end)
  end)

  describe("process tracking by environment (no cgroups)", function()
    it("stops, continues and kills processes found through /proc/*/environ", function()
      local e = provider({ cgroups = false })
      assert.are.equal("environ", e.capabilities.process_tracking)
      local i = e.instances.boot()
      local pid = start_sleeper(e, i.id)
      e.instances.pause(i.id)
      assert.are.equal("T", proc_state(pid))
      e.instances.resume(i.id)
      assert.are_not.equal("T", proc_state(pid))
      e.instances.terminate(i.id)
      assert.is_false(alive(pid))
      assert.are.same({}, instance_pids(i.id))
    end)

    it("terminates a paused instance without leaving its bwrap stopped", function()
      if needs_userns(p) then return end
      -- pause stops every process with the instance's marker, bwrap outside the namespace too:
      -- terminate killed the holder, and the stopped bwrap never reaped it (a stopped bwrap and a
      -- zombie left for good, per instance)
      local e = provider({ cgroups = false })
      local i = e.instances.boot()
      local pids = instance_pids(i.id)
      assert.is_true(#pids >= 2, "bwrap and the holder")
      e.instances.pause(i.id)
      e.instances.terminate(i.id)
      local stopped
      for _ = 1, 100 do
        stopped = {}
        for _, pid in ipairs(pids) do
          if proc_state(pid) == "T" then stopped[#stopped + 1] = pid end
        end
        if #stopped == 0 then break end
        runtime.sleep_ms(50)
      end
      assert.are.same({}, stopped)
    end)

    it("pauses the instance's processes but not its bwrap outside the instance", function()
      if needs_userns(p) then return end
      -- bwrap (the holder's parent, outside the instance's namespaces) carries the marker and was
      -- stopped with the instance's processes
      local e = provider({ cgroups = false })
      local i = e.instances.boot()
      finally(function() e.instances.terminate(i.id) end)
      local pids = instance_pids(i.id)
      local marked, outer = {}, nil
      for _, pid in ipairs(pids) do marked[pid] = true end
      for _, pid in ipairs(pids) do
        local comm, ppid = host('cat "/proc/$1/stat"', pid):match("^%d+ %((.-)%) %a (%d+)")
        if comm == "bwrap" and not marked[ppid] then outer = pid end
      end
      assert.is_truthy(outer, "no bwrap outside the instance among " .. table.concat(pids, " "))
      e.instances.pause(i.id)
      local stopped = 0
      for _, pid in ipairs(pids) do
        if pid ~= outer and proc_state(pid) == "T" then stopped = stopped + 1 end
      end
      assert.are.equal(#pids - 1, stopped)
      assert.are.equal("S", proc_state(outer))
      e.instances.resume(i.id)
      assert.are.equal("ok\n", e.exec(i.id, sh("echo ok")).stdout)
    end)

    it("passes a signal sent to a spawned command's galley __enter on to the command, which it reaps", function()
      if needs_userns(p) then return end -- (without __enter the command's code is not relayed)
      -- __enter died of the signal: its child, killed by its parent-death signal, was left to
      -- this machine's pid 1 to reap
      local e = provider({ cgroups = false })
      local i = e.instances.boot()
      for _, sig in ipairs({ "TERM", "INT", "HUP" }) do
        local h = e.spawn(i.id, sh("trap 'echo got-$1; exit 7' $1; echo up; while :; do sleep 0.1; done", sig))
        assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
        local child = enter_child(h)
        assert.is_true(h:kill(sig))
        local res = assert(h:wait(5000), "wait() came back")
        h:close()
        -- the command's own trap ran and chose the exit code: the signal reached it, not __enter
        assert.are.same({ 7, "got-" .. sig .. "\n" }, { res.exit_code, res.stdout })
        assert.is_nil(proc_state(child), sig .. ": the command is still there")
      end
      e.instances.terminate(i.id)
    end)

    it("ends what a spawned command started when it is closed or killed without a cgroup", function()
      -- galley __enter died of the KILL and its child of the parent-death signal, but what the
      -- child had started (its session, in the instance) ran on
      local e = provider({ cgroups = false })
      local i = e.instances.boot()
      for _, how in ipairs({ "close", "kill" }) do
        local h = e.spawn(i.id, sh('sleep 600 & echo $! > ~/bg; echo up; wait'))
        assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
        local bg = e.exec(i.id, sh("cat ~/bg")).stdout:match("%d+")
        assert.are.equal(0, e.exec(i.id, sh("kill -0 " .. bg)).exit_code)
        if how == "close" then
          h:close()
        else
          assert.is_true(h:kill("KILL"))
          assert.are.equal(137, assert(h:wait(5000), "wait() came back").exit_code)
          h:close()
        end
        local gone = false
        for _ = 1, 50 do
          gone = e.exec(i.id, sh("kill -0 " .. bg .. " 2>/dev/null")).exit_code ~= 0
          if gone then break end
          runtime.sleep_ms(100)
        end
        assert.is_true(gone, how .. ": the command's background sleep outlived it")
      end
      e.instances.terminate(i.id)
    end)

    it("passes a signal on to a spawned command under isolation \"none\" too, where bwrap is its parent", function()
      -- (bwrap died of the signal, the whole group got it, and the handle said 143, whatever
      -- the command's trap chose)
      if not p.capabilities.sandbox then return pending("no sandbox here") end
      for _, cgroups in ipairs({ false, true }) do
        local e = provider({ isolation = "none", cgroups = cgroups, log = require("galley.log").silent() })
        assert.are.equal("none", e.capabilities.isolation)
        local i = e.instances.boot()
        for _, sig in ipairs({ "TERM", "INT", "HUP", "USR1" }) do
          local h = e.spawn(i.id, sh("trap 'echo got-$1; exit 7' $1; echo up; while :; do sleep 0.1; done", sig))
          assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
          assert.is_true(h:kill(sig))
          local res = assert(h:wait(5000), "wait() came back")
          h:close()
          assert.are.same({ 7, "got-" .. sig .. "\n" }, { res.exit_code, res.stdout },
            sig .. (cgroups and " with cgroups" or " without cgroups"))
        end
        -- what the command made while it held the signal back gets it once the command dies of it
        local h = e.spawn(i.id, conformance.held_back_argv())
        assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
        assert.is_true(h:kill())
        local res = assert(h:wait(10000), "wait() came back")
        h:close()
        assert.are.same({ 143, "forked\nleft-alone\n" }, { res.exit_code, res.stdout })
        e.instances.terminate(i.id)
      end
    end)

    it("names its marker in capabilities.keep_env, so PM2 apps and daemons die with the instance", function()
      local e = provider({ cgroups = false })
      local i = e.instances.boot()
      local pm = require("galley.process.pm2").new({ provider = e, log = require("galley.log").silent() })
      pm.start(i.id, { command = { kind = "argv", command = "sleep", args = { "600" } } }, { name = "marked" })
      local app = pm.list(i.id)[1]
      assert.is_truthy(app and app.pid and app.pid > 0)
      local app_pid = host_pid(i.id, app.pid)
      local marked = instance_pids(i.id)
      assert.is_true(#marked >= 2) -- the PM2 daemon and the app at least
      e.instances.terminate(i.id)
      assert.is_false(alive(app_pid))
      assert.are.same({}, instance_pids(i.id))
      assert.are.same({ "GALLEY_INSTANCE_ID" }, e.capabilities.keep_env)
    end)
  end)

  describe("TTL", function()
    it("terminates an expired instance with action stop on the next call", function()
      local i = p.instances.boot(nil, { ttl_seconds = 60, ttl_action = "stop" })
      local pid = start_sleeper(p, i.id)
      local later = provider({ clock = function() return os.time() + 120 end })
      for _, x in ipairs(later.instances.list()) do assert.are_not.equal(i.id, x.id) end
      raises_code("NOT_FOUND", p.instances.get, i.id)
      assert.is_false(alive(pid))
      assert.is_false(exists(i.host_dir))
    end)

    it("pauses an expired instance with action pause, and resume re-arms it", function()
      local t = os.time()
      local i = p.instances.boot(nil, { ttl_seconds = 60, ttl_action = "pause" })
      local later = provider({ clock = function() return t + 120 end })
      local got = later.instances.get(i.id)
      assert.are.equal("stopped", got.status)
      assert.are.equal("stopped", p.instances.get(i.id).status)
      got = later.instances.resume(i.id)
      assert.are.equal("ready", got.status)
      assert.are.equal(t + 180, got.ttl.expires_at)
      p.instances.terminate(i.id)
    end)

    it("rejects a bad TTL action", function()
      raises_code("VALIDATION_ERROR", p.instances.boot, nil, { ttl_seconds = 5, ttl_action = "explode" })
    end)
  end)

  describe("the isolation probe", function()
    it("is kept on disk for the next galley while this boot, the binaries and the maps stay, for an hour at most",
      function()
      if p.capabilities.isolation ~= "userns" then
        return pending("instances get no namespaces of their own here (isolation \"none\")")
      end
      local fs = require("galley.core.fs")
      local dir = host("mktemp -d /tmp/galley-probe-XXXXXX"):gsub("%s+$", "")
      local saved = dir .. "/.isolation-probe"
      local child = support.script(([[
local p = require("galley.providers.local").new({ state_dir = %q })
io.stdout:write(p.capabilities.isolation, "\n")
]]):format(dir))
      finally(function() -- (busted keeps one finally per test: the last)
        os.remove(child)
        host('rm -rf -- "$1"', dir)
      end)
      local function new_galley()
        local r = assert(proc.run({ argv = { support.bin, child }, timeout_ms = 60000 }))
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal("userns\n", r.stdout)
      end
      local function mtime() return fs.stat(saved).mtime end
      new_galley() -- probes, and keeps the answer
      local fingerprint = support.slurp(saved)
      assert.matches("^%x+\n$", fingerprint)
      assert.are.equal(tonumber("600", 8), fs.stat(saved).mode)
      -- ten minutes old: the next galley takes it as it is (probing would write it again)
      host('touch -d "10 minutes ago" -- "$1"', saved)
      local before = mtime()
      new_galley()
      assert.are.equal(before, mtime())
      -- another fingerprint (another boot, binary or map): probed again
      support.spit(saved, "0123\n")
      host('touch -d "10 minutes ago" -- "$1"', saved)
      new_galley()
      assert.are.equal(fingerprint, support.slurp(saved))
      -- over an hour old: probed again
      host('touch -d "2 hours ago" -- "$1"', saved)
      before = mtime()
      new_galley()
      assert.is_true(mtime() > before)
    end)
  end)

  describe("persistence", function()
    it("shows the same instances to another provider and another galley process", function()
      local i = p.instances.boot(nil, { metadata = { who = "persist" } })
      local other = provider()
      assert.are.equal("persist", other.instances.get(i.id).metadata.who)
      local script = support.script(([[
local p = require("galley.providers.local").new({state_dir = %q})
for _, x in ipairs(p.instances.list({who = "persist"})) do print(x.id, x.status) end
]]):format(state))
      local code, out, err = support.galley("run " .. support.q(script))
      os.remove(script)
      assert.are.equal(0, code, err)
      assert.are.equal(i.id .. "\tready\n", out)
      other.instances.terminate(i.id)
      raises_code("NOT_FOUND", p.instances.get, i.id)
    end)
  end)

  describe("snapshots", function()
    it("has a default empty snapshot that cannot be deleted", function()
      local s = p.snapshots.get(lp.DEFAULT_SNAPSHOT)
      assert.are.equal("ready", s.status)
      local ids = {}
      for _, x in ipairs(p.snapshots.list()) do ids[x.id] = true end
      assert.is_true(ids[lp.DEFAULT_SNAPSHOT])
      raises_code("VALIDATION_ERROR", p.snapshots.delete, lp.DEFAULT_SNAPSHOT)
      local i = p.instances.boot(lp.DEFAULT_SNAPSHOT)
      assert.are.equal(lp.DEFAULT_SNAPSHOT, i.snapshot_id)
      assert.are.same({}, p.files.list_directory(i.id, "~"))
      p.instances.terminate(i.id)
    end)

    it("keeps /tmp and file owners, and copies a running instance consistently", function()
      local i = p.instances.boot()
      p.files.write_file_atomic(i.id, "/tmp/owned", "x", { owner = "nobody" })
      local pid = start_sleeper(p, i.id)
      local snap = p.snapshots.create(i.id)
      assert.is_false(paused(p, pid))
      local j = p.instances.boot(snap.id)
      assert.are.equal("nobody\n", p.exec(j.id, sh("stat -c %U /tmp/owned")).stdout)
      p.instances.terminate(i.id)
      p.instances.terminate(j.id)
      p.snapshots.delete(snap.id)
      assert.is_false(exists(snap.host_dir))
    end)
  end)

  describe("runs", function()
    it("tags instances booted during a run and stops them when it ends", function()
      local run = require("galley.run")
      run.begin({ recipe = "local-spec", ttl_seconds = 600 })
      local i = p.instances.boot()
      assert.are.equal("local-spec", i.metadata.galley_recipe)
      assert.are.equal(600, i.ttl.seconds)
      local report = run.finish()
      assert.are.same({ i.id }, report.stopped)
      assert.are.same({}, report.leaks)
      raises_code("NOT_FOUND", p.instances.get, i.id)
    end)
  end)
end)
