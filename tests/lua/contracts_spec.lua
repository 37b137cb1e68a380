local contracts = require("galley.contracts")

-- Runs f and returns the raised error (failing the test when nothing is raised).
local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function assert_invalid(path, f, ...)
  local err = raised(f, ...)
  assert.are.equal("VALIDATION_ERROR", err.code, tostring(err))
  assert.are.equal(path, err.details.path, tostring(err))
  assert.are.equal(path, err.field, tostring(err))
  return err
end

local function process(cmd, extra)
  local spec = { command = cmd }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return spec
end

describe("galley.contracts #contracts", function()
  describe("CommandSpec", function()
    it("accepts the argv form and returns a normalized copy", function()
      local input = { kind = "argv", command = "ls", args = { "-la", "" }, cwd = "~/work", env = { A = "1" },
        name = "x" }
      local spec = contracts.check_command(input)
      assert.are.same(input, spec)
      assert.are_not.equal(input, spec)
      assert.are_not.equal(input.args, spec.args)
      input.args[1] = "changed"
      assert.are.equal("-la", spec.args[1])
    end)

    it("fills in empty args and turns numeric env values into strings", function()
      local spec = contracts.check_command({ kind = "argv", command = "true", env = { PORT = 8080, RATIO = 0.5 } })
      assert.are.same({}, spec.args)
      assert.are.equal("8080", spec.env.PORT)
      assert.are.equal(0.5, tonumber(spec.env.RATIO))
    end)

    it("accepts the shell form", function()
      local spec = contracts.check_command({ kind = "shell", script = "echo hi", cwd = "/tmp" })
      assert.are.same({ kind = "shell", script = "echo hi", cwd = "/tmp" }, spec)
    end)

    it("takes a string as a shell line run by /bin/sh -c", function()
      assert.are.same({ kind = "argv", command = "/bin/sh", args = { "-c", "uname -a | cut -c1-5" } },
        contracts.check_command("uname -a | cut -c1-5"))
      local spec = contracts.check_process({ command = "npm start", restart = "never" })
      assert.are.same({ "-c", "npm start" }, spec.command.args)
    end)

    it("names the offending field in each failure", function()
      local cases = {
        { "command", 42 },
        { "command", "" },
        { "command", "a\0b" },
        { "command.kind", { command = "ls" } },
        { "command.kind", { kind = "bash", script = "x" } },
        { "command.command", { kind = "argv" } },
        { "command.command", { kind = "argv", command = "" } },
        { "command.args", { kind = "argv", command = "ls", args = "-la" } },
        { "command.args[2]", { kind = "argv", command = "ls", args = { "a", 2 } } },
        { "command.args[3]", { kind = "argv", command = "ls", args = { "a", "b", {} } } },
        { 'command.args["x"]', { kind = "argv", command = "ls", args = { "a", x = "b" } } },
        { "command.args[1]", { kind = "argv", command = "ls", args = { "a\0b" } } },
        { "command.script", { kind = "shell" } },
        { "command.script", { kind = "shell", script = 42 } },
        { "command.cwd", { kind = "shell", script = "x", cwd = "relative/dir" } },
        { "command.cwd", { kind = "shell", script = "x", cwd = "~user/dir" } },
        { "command.env", { kind = "shell", script = "x", env = "A=1" } },
        { 'command.env["BAD-NAME"]', { kind = "shell", script = "x", env = { ["BAD-NAME"] = "1" } } },
        { "command.env.A", { kind = "shell", script = "x", env = { A = true } } },
        { "command.name", { kind = "shell", script = "x", name = "" } },
        { "command.argz", { kind = "argv", command = "ls", argz = {} } },
        { "command.command", { kind = "shell", script = "x", command = "ls" } },
      }
      for _, case in ipairs(cases) do
        assert_invalid(case[1], contracts.check_command, case[2])
      end
    end)

    it("puts the field path, expected and actual type in the message and details", function()
      local err = assert_invalid("command.args[3]", contracts.check_command,
        { kind = "argv", command = "ls", args = { "a", "b", {} } })
      assert.are.equal("string", err.details.expected)
      assert.are.equal("table", err.details.got)
      assert.are.equal("command.args[3]: expected string, got table", err.message)
    end)

    it("refuses invalid UTF-8 in every text field, naming it #hardening", function()
      local bad = "caf\xe9 \xff"
      local cases = {
        { "command.command", { kind = "argv", command = bad } },
        { "command.args[2]", { kind = "argv", command = "ls", args = { "ok", bad } } },
        { "command.script", { kind = "shell", script = "echo " .. bad } },
        { "command.cwd", { kind = "shell", script = "x", cwd = "/tmp/" .. bad } },
        { "command.env.A", { kind = "shell", script = "x", env = { A = bad } } },
        { "command.name", { kind = "shell", script = "x", name = bad } },
        { "command.args[1]", { kind = "argv", command = "ls", args = { "\xed\xa0\x80" } } }, -- a surrogate
        { "command.args[1]", { kind = "argv", command = "ls", args = { "\xc0\xaf" } } },      -- overlong "/"
      }
      for _, case in ipairs(cases) do
        local err = assert_invalid(case[1], contracts.check_command, case[2])
        assert.is_string(err.hint)
      end
      assert.are.equal("é ✓ 日本", contracts.check_command({ kind = "argv", command = "echo", args = { "é ✓ 日本" } })
        .args[1])
    end)

    it("refuses an argv element or env value over 128 KiB, and a total over 2 MiB #hardening", function()
      local limit = contracts.MAX_ARG_BYTES - 1 -- bytes of one element, without its NUL
      assert.are.equal(128 * 1024, contracts.MAX_ARG_BYTES)
      local ok_arg = ("a"):rep(limit)
      contracts.check_command({ kind = "argv", command = "echo", args = { ok_arg } })
      assert_invalid("command.args[2]", contracts.check_command,
        { kind = "argv", command = "echo", args = { "x", ok_arg .. "a" } })
      -- A script is not an argv element (providers pass a long one in a file).
      contracts.check_command({ kind = "shell", script = ok_arg .. ok_arg })
      -- NAME=value is one element: "V=" takes 2 of the bytes.
      contracts.check_command({ kind = "shell", script = "x", env = { V = ("v"):rep(limit - 2) } })
      assert_invalid("command.env.V", contracts.check_command,
        { kind = "shell", script = "x", env = { V = ("v"):rep(limit - 1) } })
      local args = {}
      for i = 1, 16 do args[i] = ("b"):rep(limit) end -- 16 x 128 KiB = 2 MiB, plus the command
      local err = assert_invalid("command", contracts.check_command, { kind = "argv", command = "echo", args = args })
      assert.is_truthy(#err.message < 300, "the message names sizes, not contents")
      args[16] = nil
      contracts.check_command({ kind = "argv", command = "echo", args = args })
    end)

    it("quotes at most a short prefix of a huge bad value #hardening", function()
      local name = ("A"):rep(20 * 1024) .. "-"
      local err = raised(contracts.check_command, { kind = "shell", script = "x", env = { [name] = "1" } })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.is_truthy(#err.message < 400, #err.message)
      assert.is_truthy(#err.field < 200, #err.field)
      assert.is_truthy(err.message:find("(20481 bytes)", 1, true), err.message)
      err = raised(contracts.check_command, { kind = "shell", script = "x", cwd = ("r"):rep(100000) })
      assert.is_truthy(#err.message < 400, #err.message)
    end)

    it("uses a caller-given path prefix", function()
      assert_invalid("input.command.script", contracts.check_command, { kind = "shell" }, "input.command")
    end)
  end)

  describe("ProcessSpec", function()
    local cmd = { kind = "shell", script = "sleep 1" }

    it("accepts every documented field", function()
      local spec = contracts.check_process(process(cmd, {
        restart = { max_restarts = 3 },
        instances = 2,
        max_memory = "512m",
        logs = { out = "~/out.log", err = "/var/log/err.log" },
        files = { { path = "~/.galley/p", content = "x" }, { path = "/etc/y", content = "", mode = "0644" } },
        stdin = "inherit",
      }))
      assert.are.equal("inherit", spec.stdin)
      assert.are.same({ max_restarts = 3 }, spec.restart)
      assert.are.equal(2, spec.instances)
      assert.are.equal("512M", spec.max_memory)
      assert.are.same({ out = "~/out.log", err = "/var/log/err.log" }, spec.logs)
      assert.are.same({ { path = "~/.galley/p", content = "x", mode = "600" },
        { path = "/etc/y", content = "", mode = "0644" } }, spec.files)
    end)

    it("accepts restart never, an integral float and byte counts for max_memory", function()
      local spec = contracts.check_process(process(cmd, { restart = "never", instances = 2.0, max_memory = 1048576 }))
      assert.are.equal("never", spec.restart)
      assert.are.equal(2, spec.instances)
      assert.are.equal("integer", math.type(spec.instances))
      assert.are.equal("1048576", spec.max_memory)
    end)

    it("names the offending field in each failure", function()
      local cases = {
        { "process", 42 },
        { "command", {} },
        { "command.args[3]", { command = { kind = "argv", command = "ls", args = { "a", "b", {} } } } },
        { "restart", process(cmd, { restart = "always" }) },
        { "restart.max_restarts", process(cmd, { restart = { max_restarts = -1 } }) },
        { "restart.min_uptime_ms", process(cmd, { restart = { min_uptime_ms = 1.5 } }) },
        { "restart.min_uptime_ms", process(cmd, { restart = { min_uptime_ms = 1000 } }) }, -- no manager can
        { "command.args[1]", process({ kind = "argv", command = "ls", args = { "\xff" } }) },
        { "restart.max_restart", process(cmd, { restart = { max_restart = 1 } }) },
        { "instances", process(cmd, { instances = 0 }) },
        { "max_memory", process(cmd, { max_memory = "lots" }) },
        { "max_memory", process(cmd, { max_memory = "512MB" }) },
        { "max_memory", process(cmd, { max_memory = "0512M" }) },
        { "stdin", process(cmd, { stdin = "pipe" }) },
        { "logs.out", process(cmd, { logs = { out = "out.log" } }) },
        { "logs.stdout", process(cmd, { logs = { stdout = "/x" } }) },
        { "files", process(cmd, { files = { path = "/x", content = "y" } }) },
        { "files[1].path", process(cmd, { files = { { path = "x", content = "y" } } }) },
        { "files[1].content", process(cmd, { files = { { path = "/x" } } }) },
        { "files[1].mode", process(cmd, { files = { { path = "/x", content = "", mode = 600 } } }) },
        { "files[1].mode", process(cmd, { files = { { path = "/x", content = "", mode = "999" } } }) },
        { "files[2].path", process(cmd, { files = { { path = "/x", content = "" }, { path = "/x", content = "" } } }) },
        { "files[1].owner", process(cmd, { files = { { path = "/x", content = "", owner = "root" } } }) },
        { "restrat", process(cmd, { restrat = "never" }) },
      }
      for _, case in ipairs(cases) do
        assert_invalid(case[1], contracts.check_process, case[2])
      end
    end)
  end)

  describe("builders", function()
    it("build checked argv and shell specs", function()
      assert.are.same({ kind = "argv", command = "pm2", args = { "jlist" } }, contracts.argv("pm2", { "jlist" }))
      assert.are.same({ kind = "argv", command = "true", args = {}, cwd = "~", name = "t" },
        contracts.argv("true", nil, { cwd = "~", name = "t" }))
      assert.are.same({ kind = "shell", script = "echo $A", env = { A = "1" } },
        contracts.shell("echo $A", { env = { A = "1" } }))
    end)

    it("reject bad arguments and unknown options", function()
      assert_invalid("command.command", contracts.argv, nil)
      assert_invalid("command.args[1]", contracts.argv, "ls", { false })
      assert_invalid("command.script", contracts.shell, "")
      assert_invalid("opts.cdw", contracts.shell, "x", { cdw = "/" })
    end)
  end)

  describe("Agent", function()
    it("checks the name and the to_process_spec function", function()
      local agent = { name = "a", to_process_spec = function() end }
      assert.are.equal(agent, contracts.check_agent(agent))
      assert_invalid("agent.name", contracts.check_agent, { to_process_spec = function() end })
      assert_invalid("agent.to_process_spec", contracts.check_agent, { name = "a", toProcessSpec = function() end })
    end)
  end)
end)
