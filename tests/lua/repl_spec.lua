-- The REPL on a real terminal: tmux runs `galley repl`, send-keys types, capture-pane reads.
local support = require("support")
local q = support.q

local session = "galley-repl-spec-" .. tostring(os.time()) .. tostring(math.random(1000, 9999))
local state_dir

-- A private tmux server (its own socket): never touches the user's sessions.
local socket = "galley-repl-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1000, 9999))

local function tmux(args)
  local p = io.popen("tmux -L " .. socket .. " " .. args .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

local function screen()
  return tmux("capture-pane -p -t " .. session)
end

local function wait_for(pattern, plain)
  for _ = 1, 100 do
    local s = screen()
    if s:find(pattern, 1, plain) then return s end
    os.execute("sleep 0.05")
  end
  error("timed out waiting for " .. pattern .. "\n--- screen ---\n" .. screen())
end

local function type_line(text)
  tmux("send-keys -t " .. session .. " -l " .. q(text))
  tmux("send-keys -t " .. session .. " Enter")
end

describe("galley repl on a terminal #repl", function()
  setup(function()
    state_dir = support.tmpname()
    os.remove(state_dir)
    os.execute("mkdir -p " .. q(state_dir))
    local cmd = ("env XDG_STATE_HOME=%s GALLEY_STATE_DIR=%s/galley-state %s repl"):format(q(state_dir), q(state_dir),
      q(support.bin))
    tmux(("new-session -d -s %s -x 120 -y 40 %s"):format(session, q(cmd)))
    wait_for("Ctrl-D leaves", true)
  end)

  teardown(function()
    tmux("kill-server")
    os.execute("rm -rf " .. q(state_dir))
  end)

  it("prints bare expressions, =expr, _ and pretty tables", function()
    type_line("40 + 2")
    wait_for("\n42\n", true)
    type_line("=_ * 2")
    wait_for("\n84\n", true)
    type_line("{ name = 'x', list = { 1, 2 } }")
    wait_for('{ list = { 1, 2 }, name = "x" }', true)
  end)

  it("continues incomplete input on the next line", function()
    type_line("local function sq(x)")
    wait_for(">>", true)
    type_line("return x * x end print(sq(12))")
    wait_for("\n144\n", true)
  end)

  it("completes globals and fields with Tab", function()
    tmux("send-keys -t " .. session .. " -l " .. q("string.for"))
    tmux("send-keys -t " .. session .. " Tab")
    wait_for("string.format", true)
    tmux("send-keys -t " .. session .. " -l " .. q('("%03d", 7)'))
    tmux("send-keys -t " .. session .. " Enter")
    wait_for('"007"', true)
  end)

  it("cancels the current line with Ctrl-C and stays alive", function()
    tmux("send-keys -t " .. session .. " -l " .. q("this is not lua"))
    tmux("send-keys -t " .. session .. " C-c")
    wait_for("^C", true)
    type_line("1 + 2")
    wait_for("\n3\n", true)
  end)

  it("interrupts a running call with Ctrl-C and stays alive", function()
    type_line("while true do end")
    os.execute("sleep 0.3")
    tmux("send-keys -t " .. session .. " C-c")
    wait_for("INTERRUPTED", true)
    type_line("'still here'")
    wait_for('"still here"', true)
  end)

  it("saves history on exit in GALLEY_STATE_DIR, a secret masked", function()
    local secret = "sk-ant-api03-" .. ("Zq7"):rep(20)
    type_line(("tok = %q"):format(secret))
    type_line("'remember me'")
    wait_for('"remember me"', true)
    tmux("send-keys -t " .. session .. " C-d")
    local hist
    for _ = 1, 100 do
      -- GALLEY_STATE_DIR wins over XDG_STATE_HOME, as for the rest of galley's state.
      local f = io.open(state_dir .. "/galley-state/repl_history")
      if f then
        hist = f:read("a")
        f:close()
        if hist:find("remember", 1, true) then break end
      end
      os.execute("sleep 0.05")
    end
    -- libedit stores spaces as \040
    assert.truthy(hist and hist:find("remember", 1, true), hist)
    assert.truthy(hist:find("tok", 1, true), hist)
    assert.is_nil(hist:find(secret, 1, true), hist)
    assert.is_nil(io.open(state_dir .. "/galley/repl_history"), "no second history under XDG_STATE_HOME")
  end)

  it("lists instances booted in the session on exit and stops them when asked", function()
    -- Its own tmux server: the previous test's Ctrl-D may be shutting the shared one down.
    local socket2 = socket .. "-exit"
    local function tmux2(args)
      local p = io.popen("tmux -L " .. socket2 .. " " .. args .. " 2>&1")
      local out = p:read("a")
      p:close()
      return out
    end
    local s2 = session .. "-exit"
    local cmd = ("env XDG_STATE_HOME=%s GALLEY_STATE_DIR=%s/galley-state %s repl; sleep 30"):format(
      q(state_dir), q(state_dir), q(support.bin))
    tmux2(("new-session -d -s %s -x 160 -y 40 %s"):format(s2, q(cmd)))
    local function screen2() return tmux2("capture-pane -p -t " .. s2) end
    local function wait2(pattern)
      for _ = 1, 300 do
        if screen2():find(pattern, 1, true) then return end
        os.execute("sleep 0.05")
      end
      error("timed out waiting for " .. pattern .. "\n" .. screen2())
    end
    wait2("Ctrl-D leaves")
    tmux2("send-keys -t " .. s2 .. " -l " .. q("inst = sandbox.instances.boot()"))
    tmux2("send-keys -t " .. s2 .. " Enter")
    tmux2("send-keys -t " .. s2 .. " -l " .. q("inst.id"))
    tmux2("send-keys -t " .. s2 .. " Enter")
    wait2('"localvm_')
    local id = screen2():match('"(localvm_%x+)"')
    tmux2("send-keys -t " .. s2 .. " C-d")
    wait2("Stop them now?")
    assert.truthy(screen2():find(id, 1, true))
    tmux2("send-keys -t " .. s2 .. " y Enter")
    wait2("stopped 1 instance")
    tmux2("kill-session -t " .. s2)
    local f = io.open(state_dir .. "/galley-state/instances/" .. id .. "/meta.json")
    if f then f:close() end
    assert.is_nil(f, "the instance is still there")
  end)
end)
