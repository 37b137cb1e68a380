-- galley.orchestrator against real parts: the local provider (bubblewrap sandbox when available),
-- the real credentials installer, PM2 and shell process managers, the command agent. Every
-- instance a test boots is terminated (by the orchestrator or in the test's `finally`).
local support = require("support")
local orchestrator = require("galley.orchestrator")
local credentials = require("galley.credentials")
local codec = require("galley.core.codec")
local cjson = require("cjson")
local log = require("galley.log")
local proc = require("galley.core.proc")

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function fake_token(prefix)
  return (prefix .. codec.base64_encode(codec.random_bytes(80), "urlsafe")):sub(1, 108)
end

local function event_names(events)
  local out = {}
  for i, e in ipairs(events) do out[i] = e.event end
  return out
end

local function exists(provider, id)
  local ok, err = pcall(provider.instances.get, id)
  if ok then return true end
  assert.are.equal("NOT_FOUND", err.code)
  return false
end

describe("galley.orchestrator #orchestrator", function()
  describe("new_lines", function()
    it("returns what follows the previous tail", function()
      assert.are.same({ "c" }, orchestrator.new_lines({ "a", "b" }, { "a", "b", "c" }))
      assert.are.same({ "d", "e" }, orchestrator.new_lines({ "a", "b", "c" }, { "b", "c", "d", "e" }))
      assert.are.same({ "x" }, orchestrator.new_lines({ "a", "a" }, { "a", "a", "x" }))
      assert.are.same({ "p", "q" }, orchestrator.new_lines({ "a" }, { "p", "q" }))
      assert.are.same({}, orchestrator.new_lines({ "a", "b" }, { "a", "b" }))
      assert.are.same({ "a" }, orchestrator.new_lines({}, { "a" }))
    end)
  end)

  describe("with the local provider", function()
    local provider, state

    setup(function()
      state = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-orch-XXXXXX" } })).stdout:gsub("%s+$", "")
      provider = require("galley.providers.local").new({ state_dir = state, log = log.silent() })
    end)

    teardown(function()
      for _, inst in ipairs(provider.instances.list()) do pcall(provider.instances.terminate, inst.id) end
      proc.run({ argv = { "rm", "-rf", "--", state } })
    end)

    -- The provider with exec calls counted (a spy: every call goes to the real provider).
    local function counting(p)
      local counter = { execs = 0 }
      local view = setmetatable({
        exec = function(...)
          counter.execs = counter.execs + 1
          return p.exec(...)
        end,
      }, { __index = p })
      return view, counter
    end

    local function orch_with(extra)
      local events = {}
      local logger, records = log.capture()
      local o = { provider = provider, log = logger, events = function(e) events[#events + 1] = e end }
      for k, v in pairs(extra or {}) do o[k] = v end
      return orchestrator.new(o), events, records
    end

    describe("boot_and_prepare", function()
      it("boots, installs two profiles and the machine info in one exec, and emits events", function()
        local spy, counter = counting(provider)
        local orch, events, records = orch_with({ provider = spy })
        local token = fake_token("sk-ant-oat01-")
        local m = orch.boot_and_prepare(provider.DEFAULT_SNAPSHOT, {
          ttl_seconds = 600,
          credential_profiles = {
            credentials.claude_profile({ access_token = token, expires_at_ms = 1767225600000 }),
            { name = "git", files = { { path = "~/.git-credentials", content = "https://x:y@example.test\n",
              secret = true } } },
          },
          machine_info = { purpose = "spec", owner = "orchestrator_spec" },
        })
        finally(function() pcall(provider.instances.terminate, m.instance_id) end)
        assert.are.equal(1, counter.execs)
        assert.is_string(m.instance_id)
        assert.is_table(m.capabilities)

        local info = cjson.decode(provider.files.read_file(m.instance_id, "~/.machine.json"))
        assert.are.equal("spec", info.purpose)
        assert.are.equal("orchestrator_spec", info.owner)
        assert.is_truthy(info.created_at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
        local modes = provider.exec(m.instance_id, { kind = "shell",
          script = "stat -c %a ~/.machine.json ~/.git-credentials ~/.claude/.credentials.json" })
        assert.are.equal("640\n600\n600\n", modes.stdout)

        assert.are.same({ "boot_started", "boot_ready", "creds_installed", "machine_info_written" },
          event_names(events))
        for i, e in ipairs(events) do
          assert.is_string(e.ts)
          if i > 1 then assert.are.equal(m.instance_id, e.instance_id) end
        end
        assert.are.same({ "claude", "git" }, events[3].profiles)
        for _, r in ipairs(records) do
          assert.is_nil(r.line:find("REDACTED", 1, true), r.line)
        end
      end)

      it("appends events to a JSON-lines file", function()
        local path = support.tmpname()
        finally(function() os.remove(path) end)
        local orch = orchestrator.new({ provider = provider, log = log.silent(), events = path })
        local m = orch.boot_and_prepare(provider.DEFAULT_SNAPSHOT, { ttl_seconds = 600 })
        orch.terminate(m.instance_id)
        local names = {}
        for line in io.lines(path) do
          local e = cjson.decode(line)
          assert.is_string(e.ts)
          names[#names + 1] = e.event
        end
        assert.are.same({ "boot_started", "boot_ready", "creds_installed", "machine_info_written", "cleanup" }, names)
      end)

      it("terminates the instance when installing fails, and says so #failure", function()
        local orch, events = orch_with()
        -- A real failure: a file where the profile has just made a directory.
        local err = raised(orch.boot_and_prepare, provider.DEFAULT_SNAPSHOT, { ttl_seconds = 600,
          credential_profiles = { { name = "clash", directories = { { path = "~/clash" } },
            files = { { path = "~/clash", content = "x" } } } } })
        assert.are.equal("CREDENTIALS_ERROR", err.code)
        assert.are.equal("OrchestrationError", err.kind)
        assert.are.equal("install", err.details.step)
        assert.are.equal("terminated", err.details.cleanup)
        assert.are.equal("CREDENTIALS_ERROR", err.details.cause.code)
        local id = err.details.instance_id
        assert.is_string(id)
        assert.is_false(exists(provider, id))
        local names = event_names(events)
        assert.are.same({ "boot_started", "boot_ready", "prepare_error", "cleanup" }, names)
        assert.are.equal("terminated", events[4].action)
      end)

      it("keeps the instance when asked #failure", function()
        local orch, events = orch_with()
        local err = raised(orch.boot_and_prepare, provider.DEFAULT_SNAPSHOT, { ttl_seconds = 600, keep = true,
          credential_profiles = { { name = "chk", files = { { path = "~/x", content = "x" } },
            post_install = { kind = "argv", command = "false" } } } })
        local id = err.details.instance_id
        finally(function() pcall(provider.instances.terminate, id) end)
        assert.are.equal("CREDENTIALS_ERROR", err.code)
        assert.are.equal("post_install", err.details.step)
        assert.are.equal("kept", err.details.cleanup)
        assert.is_true(exists(provider, id))
        assert.are.equal("kept", events[#events].action)
      end)

      it("reports a boot failure with the provider's code #failure", function()
        local orch, events = orch_with()
        local err = raised(orch.boot_and_prepare, "snapshot_missing", { ttl_seconds = 600 })
        assert.are.equal("NOT_FOUND", err.code)
        assert.are.equal("OrchestrationError", err.kind)
        assert.are.equal("boot", err.details.step)
        assert.is_nil(err.details.instance_id)
        assert.is_nil(err.details.cleanup)
        assert.are.same({ "boot_started", "boot_error" }, event_names(events))
      end)

      it("rejects a non-array profile list before booting #failure", function()
        local orch, events = orch_with()
        local err = raised(orch.boot_and_prepare, provider.DEFAULT_SNAPSHOT, { credential_profiles = { x = 1 } })
        assert.are.equal("VALIDATION_ERROR", err.code)
        assert.are.same({}, events)
      end)
    end)

    describe("sessions #pm2", function()
      local orch, events, m

      setup(function()
        local pm = require("galley.process.pm2").new({ provider = provider, log = log.silent() })
        local agent = require("galley.agents.command").new({ cwd = "~" })
        events = {}
        orch = orchestrator.new({ provider = provider, process_manager = pm, agent = agent, log = log.silent(),
          events = function(e) events[#events + 1] = e end })
        m = orch.boot_and_prepare(provider.DEFAULT_SNAPSHOT, { ttl_seconds = 900 })
      end)

      teardown(function()
        if m then pcall(provider.instances.terminate, m.instance_id) end
      end)

      before_each(function()
        for i = #events, 1, -1 do events[i] = nil end
      end)

      it("starts a session and follows its output until it exits", function()
        local s = orch.start_session(m.instance_id, { session_name = "count",
          command = "for i in 1 2 3 4 5; do echo line-$i; done; echo oops >&2; sleep 1; echo done" })
        assert.are.equal("cmd-count", s.process_name)
        local got = { out = {}, err = {} }
        local res = orch.follow(m.instance_id, s.process_name, { interval_ms = 200,
          on_line = function(line, stream) table.insert(got[stream], line) end })
        assert.are.same({ "line-1", "line-2", "line-3", "line-4", "line-5", "done" }, got.out)
        assert.are.same({ "oops" }, got.err)
        assert.are.equal(0, res.exit_code)
        assert.are.equal(7, res.lines)
        assert.are.same({ "session_started", "session_exited" }, event_names(events))
        local listed = orch.list_processes(m.instance_id)
        assert.is_true(#listed >= 1)
        assert.is_truthy(orch.logs(m.instance_id, s.process_name, 10).out:find("line-5", 1, true))
      end)

      it("emits session_error for a session that fails #failure", function()
        local s = orch.start_session(m.instance_id, { session_name = "fail", command = "echo bye; exit 3" })
        local res = orch.follow(m.instance_id, s.process_name, { interval_ms = 200, on_line = function() end })
        assert.are.equal(3, res.exit_code)
        assert.are.same({ "session_started", "session_exited", "session_error" }, event_names(events))
      end)

      it("reports bad session input as the agent's VALIDATION_ERROR #failure", function()
        local err = raised(orch.start_session, m.instance_id, { session_name = "x", comand = "typo" })
        assert.are.equal("VALIDATION_ERROR", err.code)
        assert.are.equal("agent", err.details.step)
        assert.are.same({ "session_error" }, event_names(events))
      end)

      it("follows by byte offset: a log longer than `lines` with repeated lines loses nothing", function()
        local s = orch.start_session(m.instance_id, { session_name = "repeat",
          command = "for i in $(seq 1 30); do echo same; [ $((i % 10)) = 0 ] && sleep 0.3; done; printf tail" })
        local got = {}
        local res = orch.follow(m.instance_id, s.process_name, { interval_ms = 100, lines = 5,
          on_line = function(line, stream) if stream == "out" then got[#got + 1] = line end end })
        assert.are.equal(0, res.exit_code)
        assert.are.equal(31, #got)
        for i = 1, 30 do assert.are.equal("same", got[i]) end
        assert.are.equal("tail", got[31]) -- the last line without a newline still arrives
      end)

      it("passes a line longer than MAX_LINE_BYTES on in pieces (what it holds stays bounded)", function()
        -- a process that never prints a newline made follow hold all it printed
        local s = orch.start_session(m.instance_id, { session_name = "long",
          command = "head -c 250000 /dev/zero | tr '\\0' a; sleep 1; printf 'b\\nend\\n'" })
        local saved = orchestrator.MAX_LINE_BYTES
        orchestrator.MAX_LINE_BYTES = 100000
        local sizes = {}
        local ok, res = pcall(orch.follow, m.instance_id, s.process_name, { interval_ms = 200,
          on_line = function(line, stream) if stream == "out" then sizes[#sizes + 1] = #line .. line:sub(-1) end end })
        orchestrator.MAX_LINE_BYTES = saved
        assert(ok, res)
        assert.are.equal(0, res.exit_code)
        assert.are.same({ "100000a", "100000a", "50001b", "3d" }, sizes)
      end)

      it("refuses a second session whose name maps to the same process #failure", function()
        orch.start_session(m.instance_id, { session_name = "a b", command = "sleep 1" })
        local err = raised(orch.start_session, m.instance_id, { session_name = "a-b", command = "echo other" })
        assert.are.equal("CONFLICT", err.code)
        -- The same session name again replaces its own process, as before.
        local again = orch.start_session(m.instance_id, { session_name = "a b", command = "echo again" })
        assert.are.equal("cmd-a-b", again.process_name)
      end)

      it("reads the logs of a process with 2 instances (PM2 names them -0/-1 otherwise)", function()
        local pm = require("galley.process.pm2").new({ provider = provider, log = log.silent() })
        pm.start(m.instance_id, { command = { kind = "shell", script = "echo hello-from-multi; sleep 30",
          name = "multi" }, instances = 2 })
        finally(function() pcall(pm.delete, m.instance_id, "multi") end)
        local out = ""
        for _ = 1, 50 do
          out = pm.logs(m.instance_id, "multi", 10).out
          if out:find("hello-from-multi", 1, true) then break end
          require("galley.core.runtime").sleep_ms(100)
        end
        assert.is_truthy(out:find("hello-from-multi", 1, true), out)
      end)

      it("reports an unknown process's logs as NOT_FOUND #failure", function()
        local err = raised(orch.logs, m.instance_id, "no-such-process", 10)
        assert.are.equal("NOT_FOUND", err.code)
        assert.are.equal("logs", err.details.step)
      end)
    end)

    it("works with the shell process manager: follow returns at once", function()
      local pm = require("galley.process.shell").new({ provider = provider, log = log.silent() })
      local agent = require("galley.agents.command").new({ cwd = "~" })
      local orch = orchestrator.new({ provider = provider, process_manager = pm, agent = agent, log = log.silent() })
      local m = orch.boot_and_prepare(provider.DEFAULT_SNAPSHOT, { ttl_seconds = 600 })
      finally(function() pcall(provider.instances.terminate, m.instance_id) end)
      local s = orch.start_session(m.instance_id, { session_name = "once", command = "echo hello" })
      assert.are.equal("hello\n", s.process.stdout)
      local res = orch.follow(m.instance_id, s.process_name, { interval_ms = 10, on_line = function() end })
      assert.are.equal("missing", res.status)
    end)

    it("bounds the whole follow with timeout_ms, a hanging log read included #failure", function()
      local runtime = require("galley.core.runtime")
      local hanging = {
        list = function() return { { name = "stuck", status = "online" } } end,
        read_logs = function() runtime.sleep_ms(30000); return { out = "", err = "", offsets = { out = 0, err = 0 } } end,
        logs = function() return { out = "", err = "" } end,
      }
      local orch = orchestrator.new({ provider = provider, process_manager = hanging, log = log.silent() })
      local t0 = runtime.now_ms()
      local err = raised(orch.follow, "localvm_none", "stuck", { timeout_ms = 300, on_line = function() end })
      assert.are.equal("TIMEOUT", err.code)
      assert.is_true(runtime.now_ms() - t0 < 10000)
    end)

    it("needs a process manager for sessions #failure", function()
      local orch = orchestrator.new({ provider = provider, log = log.silent() })
      assert.are.equal("ORCHESTRATION_ERROR", raised(orch.start_session, "localvm_x", {}).code)
    end)
  end)

  describe("request count on the Morph emulator #morph", function()
    local has_morph = pcall(require, "galley.providers.morph")
    if not has_morph then
      pending("boot_and_prepare makes exactly 2 Morph requests (boot + one exec): waits for galley.providers.morph")
      return
    end
    it("makes exactly 2 requests for a ready boot with two small profiles", function()
      local emulator = require("support.emulator")
      local em = emulator.start({ boot_delay_ms = 0, latency_ms = 0 })
      local cleanup = support.cleanups(finally)
      cleanup(function() em:stop() end)
      -- Emulator instances are sandboxes whose /root is their own home, as on a Morph VM.
      local provider = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url,
        log = log.silent() })
      local orch = orchestrator.new({ provider = provider, log = log.silent() })
      local before = #em:log()
      local m = orch.boot_and_prepare(emulator.SNAPSHOT, { ttl_seconds = 600,
        credential_profiles = {
          credentials.claude_profile({ access_token = fake_token("sk-ant-oat01-"), expires_at_ms = 1767225600000 }),
          { name = "git", files = { { path = "~/.git-credentials", content = "x\n", secret = true } } },
        },
        machine_info = { purpose = "count" } })
      local requests = {}
      for i = before + 1, #em:log() do requests[#requests + 1] = em:log()[i] end
      cleanup(function() pcall(provider.instances.terminate, m.instance_id) end)
      assert.are.equal(2, #requests)
      assert.are.equal("POST", requests[1].method)
      assert.is_truthy(requests[2].path:find("/exec", 1, true))
      -- The files are in the instance's home (/root inside its sandbox), not this machine's.
      local info = provider.files.read_file(m.instance_id, "/root/.machine.json")
      assert.are.equal("count", cjson.decode(info).purpose)
      local host = io.open("/root/.machine.json")
      if host then
        local text = host:read("a")
        host:close()
        assert.falsy(text:find('"count"', 1, true), "this machine's /root/.machine.json was written")
      end
    end)

    it("says cleanup = failed when terminating after a failed install fails too #failure", function()
      local emulator = require("support.emulator")
      local em = emulator.start({ boot_delay_ms = 0, latency_ms = 0 })
      local cleanup = support.cleanups(finally)
      cleanup(function() em:stop() end)
      local provider = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url,
        log = log.silent() })
      local events = {}
      local orch = orchestrator.new({ provider = provider, log = log.silent(),
        events = function(e) events[#events + 1] = e end })
      -- A real refusal of the delete (the emulator answers it 401 once).
      em:fault({ method = "DELETE", path = "/instance/*", action = "status", status = 401, count = 1 })
      local err = raised(orch.boot_and_prepare, emulator.SNAPSHOT, { ttl_seconds = 600,
        credential_profiles = { { name = "clash", directories = { { path = "~/clash" } },
          files = { { path = "~/clash", content = "x" } } } } })
      local id = err.details.instance_id
      cleanup(function() pcall(provider.instances.terminate, id) end)
      assert.are.equal("CREDENTIALS_ERROR", err.code)
      assert.are.equal("install", err.details.step)
      assert.are.equal("failed", err.details.cleanup)
      assert.are.equal("AUTHENTICATION_ERROR", err.details.cleanup_error.code)
      assert.are.equal("failed", events[#events].action)
      assert.is_true(provider.instances.get(id) ~= nil)
    end)
  end)
end)
