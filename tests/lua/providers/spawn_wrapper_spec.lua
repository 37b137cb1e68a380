-- The spawn wrapper of the providers that reach instances only through exec (Morph, Proxmox:
-- galley.providers.common.spawn_argv and spawn_signal_argv), run here by the real /bin/sh: the
-- command leads a session of its own and writes its pid, a signal reaches its process group and
-- its traps, and the wrapper reports a death by signal as 128 + N (an SSH client says 255).
-- The conformance suite checks the same through each provider.
local common = require("galley.providers.common")
local proc = require("galley.core.proc")
local fs = require("galley.core.fs")
local runtime = require("galley.core.runtime")

local support = require("support")

-- A file's bytes, or nil where it cannot be read (a process that has gone).
local function read_file(path)
  local ok, s = pcall(support.slurp, path)
  return ok and s or nil
end

-- The fields of /proc/PID/stat after the command name: {state, ppid, pgrp, session, ...}.
local function stat_of(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local fields = {}
  for f in s:match("%)%s+(.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
  return fields
end

describe("the spawn wrapper of exec-only providers", function()
  local dir

  setup(function() dir = assert(fs.mkdtemp("/tmp/galley-spawn-wrapper-XXXXXX")) end)
  teardown(function() fs.remove_tree(dir) end)

  -- Starts script (sh -c) through the wrapper, with PATH `path`; returns the handle once the
  -- command said "up", and the pid it wrote.
  local function start(script, path)
    local pid_file = dir .. "/" .. require("galley.core.codec").random_hex(4) .. ".pid"
    local h = assert(proc.spawn({ argv = common.spawn_argv(pid_file, { "/bin/sh", "-c", script }),
      env = { PATH = path or os.getenv("PATH") }, env_mode = "replace" }))
    assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
    local pid = (read_file(pid_file) or ""):match("^(%d+)\n$")
    assert.is_truthy(pid, "the wrapper wrote no pid")
    return h, pid_file, pid
  end

  local function signal(pid_file, sig)
    local r = proc.run({ argv = common.spawn_signal_argv(pid_file, sig), timeout_ms = 10000 })
    assert.are.equal(0, r.exit_code, r.stderr)
  end

  -- Signals the command of `h`, waits for its end and closes the handle: the result.
  local function ended_by(h, pid_file, sig)
    signal(pid_file, sig)
    local res = assert(h:wait(10000), sig .. ": wait() came back")
    h:close()
    return res
  end

  it("runs the command in a session of its own, under the pid it writes, and signals its group", function()
    local h, pid_file, pid = start("trap 'echo got-TERM; exit 7' TERM; echo up; while :; do sleep 0.1; done")
    local st = stat_of(pid)
    assert.are.same({ pid, pid }, { st[3], st[4] }) -- its own process group and session
    assert.are_not.equal(tostring(h:pid()), pid)   -- the wrapper waits for it
    local res = ended_by(h, pid_file, "TERM")
    assert.are.same({ 7, "got-TERM\n" }, { res.exit_code, res.stdout })
  end)

  it("ends what the command started in its group too, and reports a death by signal as 128 + N", function()
    local mark = dir .. "/bg"
    local h, pid_file = start('sleep 600 & echo $! > "' .. mark .. '"; echo up; wait')
    local bg = read_file(mark):match("%d+")
    assert.is_table(stat_of(bg), "the background sleep runs")
    local res = ended_by(h, pid_file, "TERM")
    assert.are.equal(143, res.exit_code)
    local deadline = runtime.now_ms() + 5000
    while stat_of(bg) and stat_of(bg)[1] ~= "Z" and runtime.now_ms() < deadline do runtime.sleep_ms(20) end
    local st = stat_of(bg)
    assert.is_true(st == nil or st[1] == "Z", "the background sleep outlived the signal")
  end)

  it("sends a signal its kill() passed on to what the command made while holding it back", function()
    -- (a shell holds signals back while it forks; see conformance's held_back_argv)
    local held = require("providers.conformance").held_back_argv()
    local pid_file = dir .. "/held.pid"
    local h = assert(proc.spawn({ argv = common.spawn_argv(pid_file, held) }))
    assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
    local res = ended_by(h, pid_file, "TERM")
    assert.are.same({ 143, "forked\nleft-alone\n" }, { res.exit_code, res.stdout })
    assert.are.equal("directory", (fs.stat(pid_file .. ".sig.TERM") or {}).type, "kill() left its mark")
    local r = proc.run({ argv = common.spawn_cleanup_argv(pid_file), timeout_ms = 10000 })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.is_false(fs.exists(pid_file) or fs.exists(pid_file .. ".sig.TERM"), "the cleanup left files")
  end)

  it("leaves the group alone when the command died of a signal no kill() of its own sent", function()
    -- (the mark is a directory of the wrapper's user: a file of that name is not one)
    local held = require("providers.conformance").held_back_argv()
    local pid_file = dir .. "/other.pid"
    local h = assert(proc.spawn({ argv = common.spawn_argv(pid_file, held) }))
    assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
    local f = assert(io.open(pid_file .. ".sig.TERM", "wb"))
    f:close()
    local pgid = read_file(pid_file):match("%d+")
    assert.are.equal(0, proc.run({ argv = { "kill", "-s", "TERM", "--", "-" .. pgid } }).exit_code)
    assert.is_nil(h:wait(1500), "the straggler got the signal")
    h:close() -- (kills the wrapper's group; the straggler lives in the command's)
    proc.run({ argv = { "kill", "-s", "KILL", "--", "-" .. pgid } })
  end)

  it("passes INT and QUIT on too (a background job would ignore them for good)", function()
    for _, sig in ipairs({ "INT", "QUIT" }) do
      local h, pid_file = start("trap 'echo got-" .. sig .. "; exit 5' " .. sig .. "; echo up; while :; do sleep 0.1; done")
      local res = ended_by(h, pid_file, sig)
      assert.are.same({ 5, "got-" .. sig .. "\n" }, { res.exit_code, res.stdout })
    end
  end)

  it("without setsid signals the command alone, which still decides how it ends", function()
    local h, pid_file, pid = start("trap 'echo got-HUP; exit 9' HUP; echo up; while :; do sleep 0.1; done",
      "/nonexistent")
    assert.are_not.equal(pid, stat_of(pid)[3]) -- no group of its own
    local res = ended_by(h, pid_file, "HUP")
    assert.are.same({ 9, "got-HUP\n" }, { res.exit_code, res.stdout })
  end)

  it("says nothing and succeeds for a pid file that is missing, empty or not a number", function()
    signal(dir .. "/missing.pid", "TERM")
    for _, content in ipairs({ "", "abc\n", "1 2\n" }) do
      local f = assert(io.open(dir .. "/odd.pid", "wb"))
      f:write(content)
      f:close()
      signal(dir .. "/odd.pid", "KILL")
    end
  end)

  -- (run inside a local sandbox with a pid namespace of its own: were the check broken, `kill
  -- -- -1` would reach only the sandbox's processes, not this machine's)
  it("never signals pid 1's group, which would be every process: a pid file of 1, 01 or 0", function()
    local lp = require("galley.providers.local")
    local p = lp.new({ state_dir = dir .. "/state", log = require("galley.log").silent() })
    if p.capabilities.isolation ~= "userns" then return pending("no sandbox with a pid namespace here") end
    local i = p.instances.boot()
    local cleanup = require("support").cleanups(finally)
    cleanup(function() p.instances.terminate(i.id) end)
    local h = p.spawn(i.id, { "/bin/sh", "-c", "echo up; exec sleep 600" })
    cleanup(function() h:close() end)
    assert.are.same({ "stdout", "up\n" }, { h:read(10000) })
    for _, content in ipairs({ "1", "01", "0", "001" }) do
      local r = p.exec(i.id, { kind = "argv", command = "/bin/sh", args = { "-c",
        'printf "%s\\n" "$1" > /tmp/odd.pid; shift; exec "$@"', "sh", content,
        table.unpack(common.spawn_signal_argv("/tmp/odd.pid", "KILL")) } })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.is_nil(h:wait(100), content .. ": the instance's command was killed")
    end
  end)
end)
