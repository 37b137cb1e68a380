local command = require("galley.agents.command")
local shell = require("galley.core.shell")
local support = require("support")
local q = support.q

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function assert_invalid(path, f, ...)
  local err = raised(f, ...)
  assert.are.equal("VALIDATION_ERROR", err.code, tostring(err))
  assert.are.equal("AgentError", err.kind, tostring(err))
  assert.are.equal(path, err.details.path, tostring(err))
end

-- Runs the spec's command as a process manager would (shell.plan, then bash or exec); returns
-- exit status and stdout.
local function run(spec, home)
  local plan = shell.plan(spec.command, { home = home or "/tmp" })
  local out = support.tmpname()
  local cmd
  if plan.script then
    cmd = ("bash -c %s >%s 2>&1 </dev/null"):format(q(plan.script), out)
  else
    cmd = shell.join(plan.argv) .. " >" .. out .. " 2>&1 </dev/null"
  end
  local _, _, status = os.execute(cmd)
  local f = assert(io.open(out, "rb"))
  local text = f:read("a")
  f:close()
  os.remove(out)
  return status, text
end

describe("the command agent #agents", function()
  it("accepts an argv array", function()
    local agent = command.new()
    assert.are.equal("command", agent.name)
    local spec = agent.to_process_spec({ session_name = "web server", command = { "python3", "-m", "http.server" } })
    assert.are.same({ kind = "argv", command = "python3", args = { "-m", "http.server" }, name = "cmd-web-server" },
      spec.command)
    assert.are.equal("never", spec.restart)
  end)

  it("accepts a script string and a CommandSpec", function()
    local agent = command.new({ prefix = "" })
    local spec = agent.to_process_spec({ session_name = "tick", command = "date; sleep 1" })
    assert.are.same({ kind = "shell", script = "date; sleep 1", name = "tick" }, spec.command)
    spec = agent.to_process_spec({ session_name = "ls", command = { kind = "argv", command = "ls", args = { "-la" },
      cwd = "/var", env = { A = "1" }, name = "ignored" } })
    assert.are.same({ kind = "argv", command = "ls", args = { "-la" }, cwd = "/var", env = { A = "1" }, name = "ls" },
      spec.command)
  end)

  it("layers cwd and env: options, then the CommandSpec, then the input", function()
    local agent = command.new({ cwd = "~", env = { A = "opt", B = "opt", C = "opt" }, restart = { max_restarts = 2 } })
    local spec = agent.to_process_spec({ session_name = "s", env = { C = "input" },
      command = { kind = "shell", script = "true", env = { B = "spec" } } })
    assert.are.same({ A = "opt", B = "spec", C = "input" }, spec.command.env)
    assert.are.equal("~", spec.command.cwd)
    assert.are.same({ max_restarts = 2 }, spec.restart)
    spec = agent.to_process_spec({ session_name = "s", command = { kind = "shell", script = "true", cwd = "/srv" } })
    assert.are.equal("/srv", spec.command.cwd)
    spec = agent.to_process_spec({ session_name = "s", cwd = "/opt", command = { kind = "shell", script = "true",
      cwd = "/srv" } })
    assert.are.equal("/opt", spec.command.cwd)
  end)

  it("produces specs that run through real bash", function()
    local dir = support.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. q(dir))
    local agent = command.new({ env = { GREETING = "it's $HOME" } })
    local status, out = run(agent.to_process_spec({ session_name = "s", cwd = dir,
      command = 'printf "%s|%s|%s\\n" "$GREETING" "$(pwd)" "$1"; exit 4' }))
    assert.are.equal(4, status)
    assert.are.equal("it's $HOME|" .. dir .. "|\n", out)
    status, out = run(agent.to_process_spec({ session_name = "a", command = { "printf", "%s\\n", "a b", "$X" } }))
    assert.are.equal(0, status)
    assert.are.equal("a b\n$X\n", out)
    os.execute("rm -rf " .. q(dir))
  end)

  it("rejects bad options and input, naming the field", function()
    assert_invalid("opts.prefx", command.new, { prefx = "x" })
    assert_invalid("opts.prefix", command.new, { prefix = 1 })
    assert_invalid("opts.cwd", command.new, { cwd = "relative" })
    assert_invalid("opts.restart", command.new, { restart = "always" })
    assert_invalid('opts.env["A-B"]', command.new, { env = { ["A-B"] = "x" } })
    local agent = command.new()
    assert_invalid("input", agent.to_process_spec, "ls")
    assert_invalid("input.session_name", agent.to_process_spec, { command = "ls" })
    assert_invalid("input.session_name", agent.to_process_spec, { session_name = "--", command = "ls" })
    assert_invalid("input.command", agent.to_process_spec, { session_name = "s" })
    assert_invalid("input.command", agent.to_process_spec, { session_name = "s", command = "" })
    assert_invalid("input.command", agent.to_process_spec, { session_name = "s", command = {} })
    assert_invalid("input.command[2]", agent.to_process_spec, { session_name = "s", command = { "ls", 3 } })
    assert_invalid("input.command[1]", agent.to_process_spec, { session_name = "s", command = { "" } })
    assert_invalid("input.command.script", agent.to_process_spec, { session_name = "s",
      command = { kind = "shell" } })
    assert_invalid("input.command.scirpt", agent.to_process_spec, { session_name = "s",
      command = { kind = "shell", script = "x", scirpt = "y" } })
    assert_invalid("input.cwd", agent.to_process_spec, { session_name = "s", command = "ls", cwd = "rel" })
    assert_invalid("input.env.A", agent.to_process_spec, { session_name = "s", command = "ls", env = { A = {} } })
    assert_invalid("input.files", agent.to_process_spec, { session_name = "s", command = "ls", files = {} })
  end)
end)
