-- galley shell on a real terminal: a private tmux server runs `galley shell ID` in a pane,
-- send-keys types into it and capture-pane reads it; on the local provider and on the emulator.
local cli = require("support.cli")
local support = require("support")
local q = support.q

local socket = "galley-shell-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1000, 9999))

local function tmux(args)
  local p = io.popen("tmux -L " .. socket .. " " .. args .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

local function screen(s) return tmux("capture-pane -p -t " .. s) end

local function wait_for(s, text)
  for _ = 1, 300 do
    local got = screen(s)
    if got:find(text, 1, true) then return got end
    os.execute("sleep 0.05")
  end
  error("timed out waiting for " .. text .. "\n--- screen ---\n" .. screen(s))
end

local function type_line(s, text)
  tmux("send-keys -t " .. s .. " -l " .. q(text))
  tmux("send-keys -t " .. s .. " Enter")
end

-- The command the pane runs: galley shell, then its exit code (so the spec can read it).
local function shell_cmd(t, id)
  local env = {}
  for k, v in pairs(t.env) do env[#env + 1] = k .. "=" .. q(v) end
  return ("env %s %s shell %s; echo SHELL-EXIT=$?; sleep 60"):format(table.concat(env, " "), q(support.bin), q(id))
end

for _, target in ipairs(cli.TARGETS) do
  describe("galley shell on " .. target .. " through a terminal #cli", function()
    local t, id
    setup(function()
      t = cli.start(target)
      id = t:boot()
    end)
    teardown(function()
      tmux("kill-server")
      if t then t:stop() end
    end)

    it("runs what is typed in the instance and ends with exit", function()
      local s = "sh-" .. target
      tmux(("new-session -d -s %s -x 100 -y 30 %s"):format(s, q(shell_cmd(t, id))))
      wait_for(s, "root@")
      type_line(s, "echo hi-$((40+2)) from $GALLEY_INSTANCE_ID$(hostname)")
      wait_for(s, "hi-42 from")
      type_line(s, "touch ~/made-in-shell; exit")
      local final = wait_for(s, "SHELL-EXIT=")
      assert.truthy(final:find("SHELL-EXIT=0", 1, true), final)
      local code = t:galley("exec " .. q(id) .. " -- test -f /root/made-in-shell")
      assert.are.equal(0, code)
    end)

    it("detaches with Ctrl-] and attaches again to the same session", function()
      local s = "sh2-" .. target
      tmux(("new-session -d -s %s -x 100 -y 30 %s"):format(s, q(shell_cmd(t, id))))
      wait_for(s, "root@")
      type_line(s, "export MARK=kept-$((6*7))")
      os.execute("sleep 0.5")
      tmux("send-keys -t " .. s .. " C-]")
      local after = wait_for(s, "SHELL-EXIT=")
      assert.truthy(after:find("detached", 1, true), after)
      tmux("kill-session -t " .. s)
      local s3 = "sh3-" .. target
      tmux(("new-session -d -s %s -x 100 -y 30 %s"):format(s3, q(shell_cmd(t, id))))
      wait_for(s3, "root@")
      type_line(s3, "echo $MARK")
      wait_for(s3, "kept-42")
      type_line(s3, "exit")
      wait_for(s3, "SHELL-EXIT=0")
    end)

    it("says it needs a terminal when stdin is not one", function()
      local code, _, err = t:galley("shell " .. q(id))
      assert.are.equal(2, code, err)
    end)
  end)
end
