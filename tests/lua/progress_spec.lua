-- Progress output on a real terminal (tmux on a private socket): a step shows a spinner with the
-- elapsed time while it runs (drawn by a C thread, so it moves during blocking calls), then a
-- ✓ line with the time taken.
local support = require("support")
local q = support.q

local socket = "galley-progress-spec-" .. tostring(os.time()) .. "-" .. tostring(math.random(1000, 9999))

local function tmux(args)
  local p = io.popen("tmux -L " .. socket .. " " .. args .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

describe("progress on a terminal #progress", function()
  teardown(function() tmux("kill-server") end)

  it("shows a spinner with elapsed time during a step, then a check mark", function()
    local path = support.script([[
local recipe = require("galley.recipe")
recipe.step("waiting for the answer", function()
  require("galley.core.runtime").sleep_ms(2500)
end)
io.stderr:write("finished\n")
]])
    local cmd = ("%s run %s; sleep 30"):format(q(support.bin), q(path))
    tmux(("new-session -d -s p -x 100 -y 10 %s"):format(q(cmd)))
    local seen_spinner
    for _ = 1, 100 do
      local screen = tmux("capture-pane -p -t p")
      local secs = screen:match("[|/\\%-] waiting for the answer (%d+%.%d)s")
      if secs and tonumber(secs) >= 0.5 then
        seen_spinner = screen
        break
      end
      os.execute("sleep 0.05")
    end
    assert.truthy(seen_spinner, "no spinner with elapsed time seen")
    local done
    for _ = 1, 100 do
      done = tmux("capture-pane -p -t p")
      if done:find("finished", 1, true) then break end
      os.execute("sleep 0.05")
    end
    assert.matches("✓ waiting for the answer %(2%.%d+s%)", done)
    os.remove(path)
  end)
end)
