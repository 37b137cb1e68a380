-- dashboard-fanout.lua: something to watch in `galley dashboard`: N "agents" at once
-- (recipe.parallel), each on its own instance, each a PM2 session printing its progress for a
-- while, plus a tmux shell on the first instance. The agents are a FAKE (a bash loop), so this
-- runs anywhere, with no model API.
--
--   galley dashboard &                                      # open the URL it prints
--   galley run examples/dashboard-fanout.lua                # 8 agents on local sandboxes, 60 s
--   galley run examples/dashboard-fanout.lua --count 4 --seconds 300 --provider morph
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local orchestrator = require("galley.orchestrator")
local pm2mod = require("galley.process.pm2")
local tmuxmod = require("galley.process.tmux")

local opts = recipe.options({
  name = "dashboard-fanout",
  summary = "N fake agents in parallel, one instance each, for the dashboard to show.",
  options = {
    { "count", type = "integer", default = 8, help = "how many agents (instances)" },
    { "seconds", type = "integer", default = 60, help = "how long each agent works" },
    { "provider", choices = providers.names, help = "default: morph with MORPH_API_KEY, else local" },
    { "snapshot", metavar = "ID", help = "snapshot to boot (default: local's empty one; galley emulate's)" },
  },
}, arg)
if opts.count < 1 or opts.count > 32 then recipe.usage_error("--count must be 1..32") end
if opts.seconds < 1 then recipe.usage_error("--seconds must be positive") end

local provider, why = providers.default(opts.provider)
recipe.say(why)
-- Default: local's empty snapshot; on morph, `galley emulate`'s (give --snapshot for Morph Cloud).
local snapshot = opts.snapshot or provider.DEFAULT_SNAPSHOT
  or (provider.name == "local" and "snapshot_empty" or "snapshot_galleydev")
local pm2 = pm2mod.new({ provider = provider })
local tmux = tmuxmod.new({ provider = provider })
local orch = orchestrator.new({ provider = provider, process_manager = pm2 })

-- The FAKE agent: a line of "work" about every second, then a summary, then it exits.
local AGENT = [[
steps=${STEPS:-60}; n=0
echo "agent $AGENT_NO: starting on $(hostname)"
while [ "$n" -lt "$steps" ]; do
  n=$((n+1))
  echo "agent $AGENT_NO: step $n/$steps: $(shuf -n 1 -e reading planning editing testing 2>/dev/null || echo working)"
  sleep 1
done
echo "agent $AGENT_NO: done"
]]

local items = {}
for i = 1, opts.count do items[i] = i end

recipe.step(("run %d agents"):format(opts.count), function()
  recipe.parallel(items, function(i)
    local inst = provider.instances.boot(snapshot, { ttl_seconds = opts.seconds + 600,
      metadata = { agent = tostring(i) } })
    if i == 1 then
      tmux.start(inst.id, { command = { kind = "argv", command = "bash", args = { "--norc", "-i" }, name = "shell" } })
    end
    pm2.start(inst.id, pm2.process("agent-" .. i).script(AGENT)
      .env({ AGENT_NO = tostring(i), STEPS = tostring(opts.seconds) }).build())
    local r = orch.follow(inst.id, "agent-" .. i, { lines = 1, on_line = function() end })
    recipe.say(("agent %d: %s"):format(i, r.status))
  end)
end)
