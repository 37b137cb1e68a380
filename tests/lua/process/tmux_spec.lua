-- galley.process.tmux against the real tmux, on every provider support.host_provider.providers()
-- lists. The host double gives each instance its own TMUX_TMPDIR (a private server); the local
-- provider gives each instance its own /tmp. terminate ends the server and anything left.
local host = require("support.host_provider")
local logmod = require("galley.log")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local support = require("support")
local tmuxmod = require("galley.process.tmux")

local wait_for, raises_code = host.wait_for, host.raises_code

-- What a terminal passes through unchanged (no control characters, no tabs: the pane shows
-- those differently).
local TYPED = "it's \"dq\" $HOME ${X:-y} $(echo no) `echo no` a\\b ünï 日本 🚀 %s %% -n -- ; && | * ~ !!"
local HOSTILE = { "", " ", "two words", "it's", '"dq"', "$HOME", "$(echo no)", "`echo no`", "a\\b", "line1\nline2",
  "-n", "--", "*", "~", "ünï 日本 🚀", "%s %%", "\t" }

local function find(list, name)
  for _, item in ipairs(list) do
    if item.name == name then return item end
  end
end

describe("the tmux session manager #tmux", function()
  it("needs a provider and a plain socket name", function()
    raises_code("VALIDATION_ERROR", tmuxmod.new, {})
    raises_code("VALIDATION_ERROR", tmuxmod.new, { provider = {}, socket = "a b" })
  end)

  it("gives every exec a time limit, 120 s unless exec_timeout_ms says otherwise", function()
    assert.are.equal(120000, tmuxmod.DEFAULT_EXEC_TIMEOUT_MS)
    local seen = {}
    local p = { exec = function(_, _, eopts)
      seen[#seen + 1] = eopts and eopts.timeout_ms
      return { exit_code = 0, stdout = "", stderr = "" }
    end }
    tmuxmod.new({ provider = p, log = logmod.silent() }).list("vm")
    tmuxmod.new({ provider = p, log = logmod.silent(), exec_timeout_ms = 5000 }).list("vm")
    assert.are.same({ 120000, 5000 }, seen)
    local err = raises_code("VALIDATION_ERROR", tmuxmod.new, { provider = p, exec_timeout_ms = 0 })
    assert.are.equal("exec_timeout_ms", err.field)
  end)

  it("reports a missing tmux with an install hint #host", function()
    local bin = assert(proc.run({ argv = { "mktemp", "-d" } })).stdout:gsub("%s+$", "")
    assert(proc.run({ argv = { "ln", "-s", "/bin/sh", bin .. "/sh" } }))
    local p = host.new({ env = { PATH = bin } })
    local inst = p.instances.boot()
    finally(function()
      p.instances.terminate(inst.id)
      proc.run({ argv = { "rm", "-rf", "--", bin } })
    end)
    local tm = tmuxmod.new({ provider = p, log = logmod.silent() })
    local spec = { command = { kind = "shell", script = "true", name = "x" } }
    local err = raises_code("PROCESS_ERROR", tm.start, inst.id, spec)
    assert.are.equal("install tmux (apt-get install tmux)", err.hint)
    assert.are.equal("tmux.start", err.operation)
    assert.are.equal("process:x", err.resource)
    err = raises_code("PROCESS_ERROR", tm.list, inst.id)
    assert.are.equal(tmuxmod.INSTALL_HINT, err.hint)
  end)
end)

for _, target in ipairs(host.providers()) do
  describe(("the tmux session manager on the %s provider #tmux #%s"):format(target.label, target.label), function()
    local t, p, inst, tm

    setup(function() t, p, inst, tm = host.start_target(target, tmuxmod) end)
    teardown(function() host.stop_target(t, inst) end)

    local function sh(script)
      return p.exec(inst.id, { kind = "argv", command = "bash", args = { "-c", script } })
    end

    -- A file under the instance's home.
    local function read(rel)
      local r = sh('cat -- "$HOME"/' .. support.q(rel))
      return r.exit_code == 0 and r.stdout or nil
    end

    local function wait_screen(name, needle)
      local text
      pcall(wait_for, function()
        text = tm.logs(inst.id, name, 200).out
        return text:find(needle, 1, true)
      end, name .. " to show " .. needle, 15000)
      assert.truthy(text:find(needle, 1, true), ("%q not on the screen:\n%s"):format(needle, text))
      return text
    end

    local function wait_exited(name)
      return wait_for(function()
        local s = find(tm.list(inst.id), name)
        return s and s.status == "exited" and s
      end, name .. " to exit")
    end

    it("starts a session, lists it, takes input, captures, resizes, stops and deletes it", function()
      local info = tm.start(inst.id, { command = { kind = "shell", name = "echo loop",
        script = 'echo ready; while IFS= read -r line; do printf "got:%s\\n" "$line"; done' } },
        { width = 120, height = 40 })
      assert.are.equal("echo-loop", info.name)
      assert.is_true(info.pid > 0)
      local s = find(tm.list(inst.id), "echo-loop")
      assert.are.equal("online", s.status)
      assert.are.equal(120, s.width)
      assert.are.equal(40, s.height)
      wait_screen("echo-loop", "ready")
      assert.is_true(tm.send_keys(inst.id, "echo loop", "hello there", { enter = true }))
      wait_screen("echo-loop", "got:hello there")
      tm.send_keys(inst.id, "echo-loop", "partial")
      tm.send_keys(inst.id, "echo-loop", "", { enter = true })
      wait_screen("echo-loop", "got:partial")
      local screen = tm.capture(inst.id, "echo-loop")
      assert.truthy(screen:find("ready\n", 1, true))
      assert.is_nil(screen:find("\n%s*\n$"), "no trailing blank lines")
      -- The terminal echoes what was typed.
      local logs = tm.logs(inst.id, "echo-loop", 4)
      assert.are.same({ out = "hello there\ngot:hello there\npartial\ngot:partial\n", err = "" }, logs)
      assert.is_true(tm.resize(inst.id, "echo-loop", 90, 30))
      s = find(tm.list(inst.id), "echo-loop")
      assert.are.equal(90, s.width)
      assert.are.equal(30, s.height)
      local stopped = tm.stop(inst.id, "echo-loop")
      assert.are.equal("graceful", stopped.ended)
      assert.are.equal("exited", find(tm.list(inst.id), "echo-loop").status)
      assert.truthy(tm.logs(inst.id, "echo-loop").out:find("got:partial", 1, true), "the dead pane stays readable")
      assert.are.equal("exited", tm.delete(inst.id, "echo-loop").ended)
      assert.is_nil(find(tm.list(inst.id), "echo-loop"))
    end)

    it("types text byte for byte, in chunks split on character boundaries", function()
      tm.start(inst.id, { command = { kind = "shell", name = "typist",
        script = 'while IFS= read -r line; do printf "%s\\n" "$line" >> ~/typed.txt; echo stored; done' } })
      tm.send_keys(inst.id, "typist", TYPED, { enter = true })
      wait_for(function() return read("typed.txt") == TYPED .. "\n" end, "the typed line")
      local saved = tmuxmod.SEND_CHUNK
      tmuxmod.SEND_CHUNK = 5 -- splits inside multi-byte characters unless chunking respects them
      local ok, err = pcall(function()
        local small = tmuxmod.new(host.manager_opts(t, { provider = p, log = logmod.silent() }))
        small.send_keys(inst.id, "typist", TYPED, { enter = true })
      end)
      tmuxmod.SEND_CHUNK = saved
      assert(ok, err)
      local two = TYPED .. "\n" .. TYPED .. "\n"
      pcall(wait_for, function() return read("typed.txt") == two end, "the chunked line", 15000)
      assert.are.equal(two, read("typed.txt"))
      tm.send_keys(inst.id, "typist", "C-d", { literal = false })
      wait_exited("typist")
      tm.delete(inst.id, "typist")
    end)

    it("passes cwd, env and hostile arguments through, and keeps the caller's environment out", function()
      local dir = "~/work dir 'q' $x"
      local env = { SPEC_VAR = "from-the-spec" }
      for i, a in ipairs(HOSTILE) do env["V" .. i] = a end
      tm.start(inst.id, {
        command = { kind = "argv", command = "bash", name = "args",
          args = { "-c", 'pwd > out.txt; printf "[%s]\\n" "$@" >> out.txt; env > env.txt; cat marker >> out.txt',
            "bash",
            table.unpack(HOSTILE) },
          cwd = dir, env = env },
        files = { { path = dir .. "/marker", content = "marker-ok\n" } },
      })
      wait_exited("args")
      local home = sh('printf %s "$HOME"').stdout
      local expected = { home .. "/work dir 'q' $x\n" }
      for _, a in ipairs(HOSTILE) do expected[#expected + 1] = "[" .. a .. "]\n" end
      expected[#expected + 1] = "marker-ok\n"
      assert.are.equal(table.concat(expected), read("work dir 'q' $x/out.txt"))
      local envs = read("work dir 'q' $x/env.txt")
      assert.truthy(envs:find("\nSPEC_VAR=from-the-spec\n", 1, true) or envs:find("^SPEC_VAR=from%-the%-spec\n"))
      for i, a in ipairs(HOSTILE) do
        if not a:find("\n", 1, true) then
          assert.truthy(envs:find("V" .. i .. "=" .. a .. "\n", 1, true), "V" .. i)
        end
      end
      -- (what the provider names in capabilities.keep_env is kept on purpose: the local provider
      -- without cgroups marks an instance's processes with GALLEY_INSTANCE_ID)
      local kept = {}
      for _, name in ipairs(p.capabilities and p.capabilities.keep_env or {}) do kept[name] = true end
      for _, name in ipairs({ "GALLEY_TEST_SECRET", "GALLEY_HOST_INSTANCE", "GALLEY_INSTANCE_ID", "TMUX_TMPDIR" }) do
        local found = envs:find("\n" .. name .. "=", 1, true) or envs:find("^" .. name .. "=")
        if kept[name] then
          assert.truthy(found, name .. " (the provider's keep_env) did not reach the command")
        else
          assert.falsy(found, name .. " reached the command")
        end
      end
      for _, value in pairs(target.secret_env or {}) do assert.falsy(envs:find(value, 1, true)) end
      tm.delete(inst.id, "args")
    end)

    it("ends a command that ignores C-c and SIGHUP by force", function()
      tm.start(inst.id, { command = { kind = "shell", name = "stubborn",
        script = "trap '' INT HUP TERM; echo $$ > ~/stubborn.pid; echo trapped; while :; do sleep 0.2; done" } })
      wait_screen("stubborn", "trapped")
      local pid = read("stubborn.pid"):gsub("%s+$", "")
      tm.send_keys(inst.id, "stubborn", "C-c", { literal = false })
      assert.are.equal("online", find(tm.list(inst.id), "stubborn").status)
      local r = tm.stop(inst.id, "stubborn")
      assert.are.equal("forced", r.ended)
      assert.are.equal(9, r.signal)
      assert.are.equal("exited", find(tm.list(inst.id), "stubborn").status)
      assert.are_not.equal(0, sh("kill -0 " .. pid .. " 2>/dev/null").exit_code, "the command survived")
      tm.delete(inst.id, "stubborn")
      assert.is_nil(find(tm.list(inst.id), "stubborn"))
    end)

    it("reports the exit status of a command that ended by itself", function()
      -- tmux drops what a pane printed but had not yet read when its process exits, so the
      -- command ends on a key sent once "bye" is on the screen (an immediate exit lost it on a
      -- loaded CI machine).
      tm.start(inst.id, { command = { kind = "shell", name = "quick", script = "echo bye; read -r _; exit 3" } })
      wait_screen("quick", "bye")
      tm.send_keys(inst.id, "quick", "Enter", { literal = false })
      local s = wait_exited("quick")
      assert.are.equal(3, s.exit_code)
      assert.are.equal("bye\n", tm.logs(inst.id, "quick").out)
      assert.are.same({ name = "quick", ended = "exited", exit_code = 3 }, tm.stop(inst.id, "quick"))
      tm.delete(inst.id, "quick")
    end)

    it("replaces a same-named session", function()
      tm.start(inst.id, { command = { kind = "shell", name = "dup", script = "echo first; exec sleep 300" } })
      wait_screen("dup", "first")
      tm.start(inst.id, { command = { kind = "shell", name = "dup", script = "echo second; exec sleep 300" } })
      local text = wait_screen("dup", "second")
      assert.falsy(text:find("first", 1, true))
      local n = 0
      for _, s in ipairs(tm.list(inst.id)) do
        if s.name == "dup" then n = n + 1 end
      end
      assert.are.equal(1, n)
      assert.are.equal("graceful", tm.delete(inst.id, "dup").ended)
    end)

    it("runs a command too long for tmux from a file", function()
      local script = "# " .. ("x"):rep(20 * 1024) .. "\necho long-ok; exec sleep 300\n"
      tm.start(inst.id, { command = { kind = "shell", name = "long", script = script } })
      wait_screen("long", "long-ok")
      assert.are.equal("700", sh("stat -c %a ~/.galley/tmux/long.sh").stdout:gsub("%s+$", ""))
      tm.delete(inst.id, "long")
    end)

    it("answers NOT_FOUND for sessions that do not exist", function()
      for op, args in pairs({ send_keys = { "x" }, capture = {}, logs = {}, resize = { 80, 24 }, stop = {},
        delete = {} }) do
        local err = raises_code("NOT_FOUND", tm[op], inst.id, "no such", table.unpack(args))
        assert.are.equal("tmux." .. op, err.operation)
        assert.are.equal("process:no-such", err.resource)
        assert.are.equal("ProcessError", err.kind)
      end
      raises_code("VALIDATION_ERROR", tm.start, inst.id, { command = { kind = "shell", script = "true" } })
      raises_code("VALIDATION_ERROR", tm.start, inst.id, { command = { kind = "shell", script = "true", name = "x" } },
        { width = 0 })
    end)

    it("stops and deletes every session", function()
      tm.start(inst.id, { command = { kind = "shell", name = "all-a", script = "exec sleep 300" } })
      tm.start(inst.id, { command = { kind = "shell", name = "all-b", script = "exec sleep 300" } })
      local stopped = {}
      for _, r in ipairs(tm.stop_all(inst.id)) do stopped[r.name] = r.ended end
      assert.are.equal("graceful", stopped["all-a"])
      assert.are.equal("graceful", stopped["all-b"])
      for _, s in ipairs(tm.list(inst.id)) do assert.are.equal("exited", s.status) end
      tm.delete_all(inst.id)
      assert.are.same({}, tm.list(inst.id))
      assert.are.same({}, tm.delete_all(inst.id))
    end)

    it("ends a call to a hung tmux server in TIMEOUT: every exec has a time limit", function()
      tm.start(inst.id, { command = { kind = "shell", name = "wedged", script = "exec sleep 300" } })
      local socket = t.manager_opts and t.manager_opts.socket
      local tmux = socket and ("tmux -L " .. support.q(socket)) or "tmux"
      local pid = sh(tmux .. " display-message -p -t =wedged '#{pid}'").stdout:match("^(%d+)")
      assert.is_string(pid, "the tmux server's pid")
      assert.are.equal(0, sh("kill -STOP " .. pid).exit_code) -- the server stops answering
      -- (a tmux client that gets TERM waits for the stopped server: KILL ends it, sooner here)
      local common = require("galley.providers.common")
      local kill_after = common.EXEC_KILL_AFTER_S
      common.EXEC_KILL_AFTER_S = 0.5
      finally(function()
        common.EXEC_KILL_AFTER_S = kill_after
        sh("kill -CONT " .. pid)
        tm.delete(inst.id, "wedged")
      end)
      local quick = tmuxmod.new(host.manager_opts(t, { provider = p, log = logmod.silent(), exec_timeout_ms = 1500 }))
      local t0 = runtime.now_ms()
      local err = raises_code("TIMEOUT", quick.list, inst.id)
      assert.is_true(runtime.now_ms() - t0 < 60000, "the time limit held")
      assert.is_table(err)
      raises_code("TIMEOUT", quick.capture, inst.id, "wedged")
    end)
  end)
end
