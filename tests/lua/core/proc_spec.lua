local proc = require("galley.core.proc")
local loop = require("galley.core.loop")
local task = require("galley.task")
local support = require("support")
local overlap = require("support.overlap")

--- Whether pid no longer runs: gone from /proc, or a zombie waiting for its (new) parent.
local function pid_gone(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat")
  if not f then return true end
  local stat = f:read("a") or ""
  f:close()
  return stat:match("%) (%a)") == "Z" or stat == ""
end

--- pid_gone, allowing init a moment to reap an orphan.
local function gone_soon(pid)
  for _ = 1, 100 do
    if pid_gone(pid) then return true end
    task.sleep(20)
  end
  return false
end

--- The lines of a file (empty when it does not exist yet).
local function lines_of(path)
  local f = io.open(path)
  if not f then return {} end
  local out = {}
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

--- Sleeps in 20 ms steps until path has n lines (a child's handshake); false after 10 s.
local function await_lines(path, n)
  for _ = 1, 500 do
    if #lines_of(path) >= n then return true end
    task.sleep(20)
  end
  return false
end

--- "1\n2\n...n\n" as seq prints it.
local function seq_text(n)
  local t = {}
  for i = 1, n do t[i] = tostring(i) end
  return table.concat(t, "\n") .. "\n"
end

--- Collects :read events until "exit"; returns the events as "O:data" / "E:data" strings.
local function read_all(p, on_event)
  local events = {}
  while true do
    local kind, a, b = p:read(10000)
    assert.is_not_nil(kind, "read timed out")
    if kind == "exit" then return events, a, b end
    events[#events + 1] = (kind == "stdout" and "O:" or "E:") .. a
    if on_event then on_event(kind, a) end
  end
end

describe("galley.core.proc #proc", function()
  describe("run", function()
    it("returns exit codes of true, false and sh -c as results", function()
      assert.are.equal(0, proc.run{ argv = { "true" } }.exit_code)
      assert.are.equal(1, proc.run{ argv = { "false" } }.exit_code)
      assert.are.equal(42, proc.run{ argv = { "sh", "-c", "exit 42" } }.exit_code)
    end)

    it("returns the whole result table for echo", function()
      local r = assert(proc.run{ argv = { "echo", "hello", "two words" } })
      assert.are.same({
        exit_code = 0, stdout = "hello two words\n", stderr = "", timed_out = false, truncated = false,
        stdout_dropped = 0, stderr_dropped = 0,
      }, r)
    end)

    it("keeps stdout and stderr apart and passes argv without a shell", function()
      local r = assert(proc.run{ argv = { "sh", "-c", 'printf "%s" "$1"; printf err >&2', "sh", "$HOME; `x` 'q'" } })
      assert.are.equal("$HOME; `x` 'q'", r.stdout)
      assert.are.equal("err", r.stderr)
    end)

    it("reports the signal that killed the child", function()
      local r = assert(proc.run{ argv = { "sh", "-c", "kill -KILL $$" } })
      assert.are.equal(9, r.signal)
      assert.are.equal(128 + 9, r.exit_code)
      assert.is_false(r.timed_out)
    end)

    it("terminates the group after timeout_ms and says so", function()
      local r = assert(proc.run{ argv = { "sh", "-c", "echo started; sleep 30" }, timeout_ms = 100 })
      assert.is_true(r.timed_out)
      assert.are.equal(15, r.signal)
      assert.are.equal("started\n", r.stdout)
    end)

    it("escalates to SIGKILL after kill_grace_ms when SIGTERM is ignored", function()
      local r = assert(proc.run{ argv = { "sh", "-c", "trap '' TERM; sleep 30" }, timeout_ms = 50, kill_grace_ms = 50 })
      assert.is_true(r.timed_out)
      assert.are.equal(9, r.signal)
    end)

    it("keeps the head and the tail of output beyond max_output", function()
      local full = seq_text(50000)
      local r = assert(proc.run{ argv = { "seq", "50000" }, max_output = 100 })
      assert.is_true(r.truncated)
      assert.are.equal(100, #r.stdout)
      assert.are.equal(#full - 100, r.stdout_dropped)
      assert.are.equal(full:sub(1, 50), r.stdout:sub(1, 50))
      assert.are.equal(full:sub(-50), r.stdout:sub(51))
      assert.are.equal(0, r.stderr_dropped)
    end)

    it("extends the environment by default and replaces it on request", function()
      local home = os.getenv("HOME")
      local r = assert(proc.run{ argv = { "env" }, env = { GALLEY_SPEC_VAR = "x y" } })
      assert.truthy(r.stdout:find("\nGALLEY_SPEC_VAR=x y\n", 1, true) or r.stdout:find("^GALLEY_SPEC_VAR=x y\n"))
      if home then assert.truthy(r.stdout:find("HOME=" .. home, 1, true)) end
      r = assert(proc.run{ argv = { "env" }, env = { ONLY = "1" }, env_mode = "replace" })
      assert.are.equal("ONLY=1\n", r.stdout)
      r = assert(proc.run{ argv = { "env" }, env = {}, env_mode = "replace" })
      assert.are.equal("", r.stdout)
    end)

    it("runs in cwd", function()
      local r = assert(proc.run{ argv = { "pwd", "-P" }, cwd = "/" })
      assert.are.equal("/\n", r.stdout)
    end)

    it("feeds binary stdin and returns binary output unchanged", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local data = table.concat(bytes):rep(4096) -- 1 MiB with NULs
      local r = assert(proc.run{ argv = { "cat" }, stdin = data })
      assert.are.equal(#data, #r.stdout)
      assert.is_true(r.stdout == data)
    end)

    it("fails with PROC_SPAWN for a missing program or directory, naming the program", function()
      local r, err = proc.run{ argv = { "galley-no-such-program" } }
      assert.is_nil(r)
      assert.are.equal("PROC_SPAWN", err.code)
      assert.are.equal("galley-no-such-program", err.argv0)
      r, err = proc.run{ argv = { "true" }, cwd = "/nonexistent/dir" }
      assert.is_nil(r)
      assert.are.equal("PROC_SPAWN", err.code)
      assert.are.equal("true", err.argv0)
      assert.are.equal("PROC_SPAWN: ", tostring(err):sub(1, 12))
    end)

    it("raises on misuse", function()
      assert.has_error(function() proc.run() end)
      assert.has_error(function() proc.run{} end)
      assert.has_error(function() proc.run{ argv = {} } end)
      assert.has_error(function() proc.run{ argv = { "echo", {} } } end)
      assert.has_error(function() proc.run{ argv = { "echo", "a\0b" } } end)
      assert.has_error(function() proc.run{ argv = { "true" }, env_mode = "merge" } end)
      assert.has_error(function() proc.run{ argv = { "true" }, env = { ["A=B"] = "1" } } end)
      assert.has_error(function() proc.run{ argv = { "true" }, stdin = {} } end)
      assert.has_error(function() proc.run{ argv = { "true" }, timeout_ms = -5 } end)
      assert.has_error(function() proc.run{ argv = { "true" }, max_output = "big" } end)
    end)

    it("gives up with INTERRUPTED and kills the child on Ctrl-C", function()
      local pidfile = support.tmpname()
      local script = ([[
local proc = require("galley.core.proc")
local ok, r, err = pcall(proc.run, { argv = { "sh", "-c", "echo $$ > %s; kill -INT $PPID; exec sleep 60" } })
io.stdout:write(ok and (err and err.code or "no error") or (type(r) == "table" and r.code or tostring(r)))
]]):format(pidfile)
      local r = assert(proc.run{ argv = { support.bin, "-e", script }, timeout_ms = 30000 })
      assert.is_false(r.timed_out)
      assert.are.equal("INTERRUPTED", r.stdout)
      local f = assert(io.open(pidfile))
      local pid = f:read("l")
      f:close()
      os.remove(pidfile)
      assert.are.equal(1, proc.run{ argv = { "kill", "-0", pid } }.exit_code)
    end)
  end)

  describe("spawn", function()
    it("streams stdout and stderr in the order they are written, then the exit", function()
      local p = assert(proc.spawn{
        argv = { "sh", "-c", "read a; echo one; read a; echo two >&2; read a; echo three; exit 5" },
        stdin = "pipe",
      })
      assert.is_true(p:write("go\n"))
      local events, code, sig = read_all(p, function() p:write("go\n") end)
      assert.are.same({ "O:one\n", "E:two\n", "O:three\n" }, events)
      assert.are.equal(5, code)
      assert.is_nil(sig)
      assert.are.equal("exit", p:read(0))
      p:close()
    end)

    it("feeds stdin bytes and collects the rest on wait", function()
      local p = assert(proc.spawn{ argv = { "cat" }, stdin = "abc\0def" })
      local r = assert(p:wait())
      assert.are.equal("abc\0def", r.stdout)
      assert.are.equal(0, r.exit_code)
      assert.is_false(r.timed_out)
      p:close()
    end)

    it("reports the exit of a child that another signal source killed (runtime.kill by pid)", function()
      local runtime = require("galley.core.runtime")
      local p <close> = assert(proc.spawn{ argv = { "sleep", "30" } })
      assert.is_true(runtime.kill(p:pid(), "KILL"))
      local r = assert(p:wait())
      assert.are.equal(9, r.signal)
      assert.are.equal(137, r.exit_code)
      local ok, why = runtime.kill(p:pid(), 0)
      assert.is_nil(ok)
      assert.are.equal("ESRCH", why)
      assert.has_error(function() runtime.kill(0, "KILL") end)
      assert.has_error(function() runtime.kill(-1, "KILL") end)
      assert.has_error(function() runtime.kill(p:pid(), "NOSUCH") end)
      -- every name proc's kill knows (USR1 and QUIT among them), "SIG" prefix or not
      for _, name in ipairs({ "USR1", "SIGQUIT" }) do
        local q <close> = assert(proc.spawn{ argv = { "sleep", "30" } })
        assert.is_true(runtime.kill(q:pid(), name))
        assert.are.equal(name == "USR1" and 10 or 3, assert(q:wait(5000)).signal)
      end
    end)

    it("starts every child with default signal handling and in a session of its own", function()
      -- galley ignores SIGPIPE; its children must not (sh pipelines rely on it)
      local r = assert(proc.run{ argv = { "sh", "-c", "grep -E '^(SigIgn|SigBlk)' /proc/self/status; ps -o sid= -p $$; echo $$" } })
      local sid, pid = r.stdout:match("(%d+)%s*\n(%d+)%s*$")
      assert.are.equal(pid, sid)
      -- the standard signals (1..31): glibc keeps its own two real-time ones (32, 33) as they are
      local ign = tonumber(r.stdout:match("SigIgn:%s*(%x+)"), 16)
      local blk = tonumber(r.stdout:match("SigBlk:%s*(%x+)"), 16)
      assert.are.equal(0, ign & 0x7fffffff)
      assert.are.equal(0, blk & 0x7fffffff)
    end)

    it("returns nil from read and wait on timeout, and a signal after kill", function()
      local p <close> = assert(proc.spawn{ argv = { "sleep", "30" } })
      assert.is_nil(p:read(10))
      assert.is_nil(p:wait(10))
      -- 0 polls: it came back while the child still runs (it waited for the exit before)
      assert.is_nil(p:wait(0))
      assert.is_nil(p:read(0))
      assert.is_true(p:running())
      assert.is_true(p:kill())
      local r = assert(p:wait())
      assert.are.equal(15, r.signal)
      assert.has_error(function() p:kill("NOSUCHSIG") end)
    end)

    it("sends the named signal to the group", function()
      local p <close> = assert(proc.spawn{ argv = { "sh", "-c", "sleep 30; sleep 30" } })
      assert.is_true(p:kill("KILL"))
      local _, code, sig = read_all(p)
      assert.are.equal(9, sig)
      assert.are.equal(137, code)
    end)

    it("reports a closed stdin as PROC_STDIN_CLOSED", function()
      local p <close> = assert(proc.spawn{ argv = { "cat" }, stdin = "pipe" })
      assert.is_true(p:write("x"))
      p:close_stdin()
      local ok, err = p:write("y")
      assert.is_nil(ok)
      assert.are.equal("PROC_STDIN_CLOSED", err.code)
      local events = read_all(p)
      assert.are.same({ "O:x" }, events)
      local q <close> = assert(proc.spawn{ argv = { "true" } }) -- stdin is /dev/null
      assert.are.equal("PROC_STDIN_CLOSED", select(2, q:write("z")).code)
    end)

    it("kills the child when the handle is closed, and closes idempotently", function()
      local pid
      do
        local p <close> = assert(proc.spawn{ argv = { "sleep", "30" } })
        pid = p:pid()
        assert.matches("^galley%.proc%.Process %(pid %d+%)$", tostring(p))
      end
      assert.are.equal(1, proc.run{ argv = { "kill", "-0", tostring(pid) } }.exit_code)
      local p = assert(proc.spawn{ argv = { "true" } })
      p:close()
      p:close()
      assert.matches("closed", tostring(p))
      assert.has_error(function() p:read(0) end)
      assert.has_error(function() p:pid() end)
    end)

    it("kills the child's cgroup first on close, so a supervisor outside it reaps its command and ends",
      function()
      -- a supervisor (sh, outside the cgroup) and its command (moved into the cgroup); closed
      -- while both run, the cgroup dies first and the supervisor sees its command end
      local mount = proc.run{ argv = { "sh", "-c", "awk '$3 == \"cgroup2\" {print $2; exit}' /proc/self/mounts" } }
        .stdout:gsub("%s+$", "")
      local fs = require("galley.core.fs")
      local cg = mount ~= "" and mount .. "/galley-proc-spec-" .. require("galley.core.codec").random_hex(4)
      if not (cg and fs.mkdir(cg, "0755")) then return pending("no cgroup v2 directory can be made here") end
      finally(function() os.remove(cg) end)
      local function procs_of(dir) return table.concat(lines_of(dir .. "/cgroup.procs"), " ") end
      local out = support.tmpname()
      for _, with in ipairs({ true, false }) do
        os.remove(out)
        local p = assert(proc.spawn{ argv = { "sh", "-c", [[
sh -c 'echo $$ > "$1/cgroup.procs" && exec sleep 300' sh "$1" & c=$!
echo started > "$2"; wait "$c"; echo "reaped $?" > "$2"]], "sh", cg, out }, cgroup = with and cg or nil })
        assert.is_true(await_lines(out, 1), "the supervisor never started")
        -- the command is in the cgroup before close
        local deadline = loop.now_ms() + 5000
        while procs_of(cg) == "" and loop.now_ms() < deadline do task.sleep(20) end
        p:close()
        if with then
          assert.are.same({ "reaped 137" }, lines_of(out))
        else -- without it, the group's SIGKILL ends the supervisor before it sees its command end
          assert.are.same({ "started" }, lines_of(out))
        end
        deadline = loop.now_ms() + 5000
        while procs_of(cg) ~= "" and loop.now_ms() < deadline do task.sleep(20) end
        assert.are.equal("", procs_of(cg))
      end
      os.remove(out)
    end)

    it("says whether the child still runs without waiting for it or reading its output", function()
      local runtime = require("galley.core.runtime")
      local p = assert(proc.spawn{ argv = { "sh", "-c", "echo out; sleep 0.3; exit 3" } })
      assert.are.same({ true }, { p:running() })
      local deadline = runtime.now_ms() + 10000
      while p:running() and runtime.now_ms() < deadline do runtime.sleep_ms(20) end
      assert.are.same({ false, 3 }, { p:running() }) -- and how it ended
      -- what it printed is still there, and wait reports the exit
      local r = p:wait()
      assert.are.same({ 3, "out\n" }, { r.exit_code, r.stdout })
      assert.are.same({ false, 3 }, { p:running() })
      p:close()
      assert.has_error(function() p:running() end)
      local k = assert(proc.spawn{ argv = { "sleep", "600" } })
      assert.is_true(k:kill("TERM"))
      deadline = runtime.now_ms() + 10000
      while k:running() and runtime.now_ms() < deadline do runtime.sleep_ms(20) end
      assert.are.same({ false, 143 }, { k:running() })
      k:close()
    end)

    it("sends kill()'s signal to what the child made while holding it back, once the child died of it", function()
      -- (a shell blocks signals while it forks: see src/core/sweep.h and conformance's held_back_argv)
      local p = assert(proc.spawn{ argv = require("providers.conformance").held_back_argv() })
      assert.are.same({ "stdout", "up\n" }, { p:read(10000) })
      assert.is_true(p:kill("TERM"))
      local r = p:wait(10000)
      p:close()
      assert.is_table(r, "wait() came back")
      assert.are.same({ 143, "forked\nleft-alone\n" }, { r.exit_code, r.stdout })
    end)

    it("at a time limit, sends its TERM to what the child made while holding it back, before the KILL", function()
      local runtime = require("galley.core.runtime")
      local t = task.spawn(function()
        return proc.run{ argv = require("providers.conformance").held_back_argv(), timeout_ms = 300,
          kill_grace_ms = 60000 }
      end)
      local deadline = runtime.now_ms() + 15000
      while not t.done and runtime.now_ms() < deadline do runtime.sleep_ms(50) end
      if not t.done then t:cancel() end
      assert.is_true(t.done, "the run waited for the KILL, 60 s after the TERM")
      local r = t:wait()
      assert.are.same({ true, 143, "up\nforked\nleft-alone\n" }, { r.timed_out, r.exit_code, r.stdout })
    end)

    it("fails with PROC_SPAWN like run", function()
      local p, err = proc.spawn{ argv = { "/nonexistent/program" } }
      assert.is_nil(p)
      assert.are.equal("PROC_SPAWN", err.code)
      assert.are.equal("/nonexistent/program", err.argv0)
    end)
  end)

  describe("on the event loop #loop", function()
    it("runs 8 children of proc.run in 8 tasks at the same time", function()
      local spans = {}
      local tasks = {}
      for i = 1, 8 do
        tasks[i] = task.spawn(function()
          local start = loop.now_ms()
          local r = assert(proc.run{ argv = { "sleep", "1" }, timeout_ms = 30000 })
          spans[i] = { start, loop.now_ms() }
          return r.exit_code
        end)
      end
      for i, rec in ipairs(task.join(tasks)) do
        assert.is_true(rec.ok, tostring(rec.err))
        assert.are.equal(0, rec.value, "task " .. i)
      end
      -- They overlap: every child started before any of them ended.
      assert.is_true(overlap.all(spans), "the children ran one after the other")
    end)

    it("lets other tasks run while a task waits in Process:read", function()
      local p <close> = assert(proc.spawn{ argv = { "sh", "-c", "sleep 0.5; echo late" } })
      local read_at, ticks_done_at
      local reader = task.spawn(function()
        local kind, data = p:read(10000)
        read_at = loop.now_ms()
        return kind, data
      end)
      local ticker = task.spawn(function()
        for _ = 1, 5 do task.sleep(20) end
        ticks_done_at = loop.now_ms()
      end)
      local kind, data = reader:wait()
      ticker:wait()
      assert.are.equal("stdout", kind)
      assert.are.equal("late\n", data)
      assert.is_true(ticks_done_at < read_at, "the sleeping task waited for the read")
    end)

    it("kills and reaps the child's whole group when a task in proc.run is cancelled", function()
      local pidfile = support.tmpname()
      local t = task.spawn(function()
        return proc.run{
          argv = { "sh", "-c", 'sleep 30 & echo $$ >> "$1"; echo $! >> "$1"; wait', "sh", pidfile },
          timeout_ms = 60000,
        }
      end)
      assert.is_true(await_lines(pidfile, 2), "the child never started")
      local pids = lines_of(pidfile)
      os.remove(pidfile)
      local t0 = loop.now_ms()
      t:cancel()
      local ok, r, err = t:result()
      assert.is_true(ok)
      assert.is_nil(r)
      assert.are.equal("INTERRUPTED", err.code)
      assert.is_true(loop.now_ms() - t0 < 5000)
      assert.is_true(pid_gone(pids[1]), "the child outlived the cancel")   -- reaped before returning
      assert.is_true(gone_soon(pids[2]), "the grandchild outlived the cancel")
    end)

    it("returns nil, INTERRUPTED from Process:wait of a cancelled task and keeps the process", function()
      local p <close> = assert(proc.spawn{ argv = { "sh", "-c", "echo before; sleep 30" } })
      local t = task.spawn(function() return p:wait(20000) end)
      task.spawn(function()
        task.sleep(50)
        t:cancel()
      end)
      local t0 = loop.now_ms()
      local ok, r, err = t:result()
      assert.is_true(loop.now_ms() - t0 < 5000, "the cancel waited for the process")
      assert.is_true(ok)
      assert.is_nil(r)
      assert.are.equal("INTERRUPTED", err.code)
      assert.is_false(pid_gone(p:pid()))
      assert.is_true(p:kill("KILL"))
      local res = assert(p:wait(10000))
      assert.are.equal(9, res.signal)
      assert.are.equal("before\n", res.stdout)
    end)

    it("wakes a task waiting in Process:read with PROC_CLOSED when another task closes it", function()
      local p = assert(proc.spawn{ argv = { "sleep", "30" } })
      local pid = p:pid()
      local reader = task.spawn(function() return p:read(20000) end)
      task.spawn(function()
        task.sleep(50)
        p:close()
      end)
      local kind, err = reader:wait()
      assert.is_nil(kind)
      assert.are.equal("PROC_CLOSED", err.code)
      assert.is_true(pid_gone(pid))
      assert.has_error(function() p:read(0) end)
    end)

    it("kills every child group of tasks in proc.run on Ctrl-C", function()
      local pidfile = support.tmpname()
      local script = ([[
local proc = require("galley.core.proc")
local task = require("galley.task")
local ts = {}
for i = 1, 3 do
  ts[i] = task.spawn(function()
    return proc.run({ argv = { "sh", "-c", 'sleep 60 & echo $$ >> %s; echo $! >> %s; wait' } })
  end)
end
task.join(ts)
]]):format(pidfile, pidfile)
      local g = assert(proc.spawn{ argv = { support.bin, "-e", script } })
      local started = await_lines(pidfile, 6)
      local pids = lines_of(pidfile)
      os.remove(pidfile)
      assert.is_true(started, "the children never started")
      assert.is_true(g:kill("INT"))
      local r = assert(g:wait(20000), "galley did not exit on Ctrl-C")
      g:close()
      assert.are_not.equal(0, r.exit_code)
      assert.is_false(r.timed_out)
      for _, pid in ipairs(pids) do
        assert.is_true(gone_soon(pid), "pid " .. pid .. " outlived Ctrl-C")
      end
    end)
  end)

  describe("which", function()
    it("finds programs in PATH as absolute paths", function()
      assert.matches("^/.*/sh$", proc.which("sh"))
      assert.is_nil(proc.which("galley-no-such-program"))
    end)
  end)
end)
