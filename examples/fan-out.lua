-- fan-out.lua: boot N instances, give each a share of the work, run them at the same time,
-- collect the results and clean up. The work is a word count: the text is split into N shards,
-- each instance counts the words of its shard, and the counts are added up here.
--
--   galley run examples/fan-out.lua                          # 3 local sandboxes, a built-in text
--   galley run examples/fan-out.lua --count 5 --top 10 FILE  # your own text
--   MORPH_API_KEY=... galley run examples/fan-out.lua --provider morph --snapshot snapshot_abc
--   PVE_URL=... PVE_TOKEN_ID=... PVE_TOKEN_SECRET=... galley run examples/fan-out.lua --provider proxmox
--
-- The shards run in parallel on every provider: recipe.parallel runs one task per instance, and
-- every wait (boot, upload, exec) lets the others go on, so N instances take about the time of
-- one.
local recipe = require("galley.recipe")
local providers = require("galley.providers")

local opts = recipe.options({
  name = "fan-out",
  usage = "[options] [FILE]",
  summary = "Word count over N instances: one shard each, run in parallel, results merged here.",
  options = {
    { "count", type = "integer", default = 3, help = "how many instances" },
    { "top", type = "integer", default = 5, help = "how many words to print" },
    { "provider", choices = providers.names, help = "default: morph with MORPH_API_KEY, else local" },
    { "snapshot", metavar = "ID", help = "snapshot to boot (default: the provider's own, if it has one)" },
  },
}, arg)
if opts.count < 1 or opts.count > 20 then recipe.usage_error("--count must be 1..20") end

local TEXT = [[
the quick brown fox jumps over the lazy dog
the dog sleeps and the fox runs
a fox a dog and the end
]]

local text = TEXT
if opts[1] then
  local f = io.open(opts[1], "rb")
  if not f then recipe.usage_error("cannot read " .. opts[1]) end
  text = f:read("a")
  f:close()
end

-- Shard i gets every N-th line, so the shards are about the same size.
local shards = {}
for i = 1, opts.count do shards[i] = {} end
local n = 0
for line in text:gmatch("[^\n]+") do
  n = n + 1
  table.insert(shards[(n - 1) % opts.count + 1], line)
end

local provider, why = providers.default(opts.provider)
recipe.say(why)
local snapshot = opts.snapshot or provider.DEFAULT_SNAPSHOT
if not snapshot then recipe.usage_error("--snapshot is required for provider " .. provider.name) end

-- Each instance is one item of recipe.parallel: boot, upload its shard, count, all at the same
-- time. Every instance the run boots is tagged with it, so a failure (or Ctrl-C) halfway through
-- still stops all of them at the end (concurrently); the run's leak check reports any survivor.
-- Lower-case words, one per line, counted: "   3 fox".
local COUNT = [[tr -cs 'A-Za-z' '\n' < "$HOME/shard.txt" | tr 'A-Z' 'a-z' | grep . | sort | uniq -c]]

local shard_ids = {}
for i = 1, opts.count do shard_ids[i] = i end

local outputs = {}
recipe.step(("count the words on %d instances"):format(opts.count), function()
  local results = recipe.parallel(shard_ids, function(i)
    local inst = provider.instances.boot(snapshot, { ttl_seconds = 900, metadata = { shard = tostring(i) } })
    provider.files.write_file_atomic(inst.id, "~/shard.txt", table.concat(shards[i], "\n") .. "\n", { mode = "600" })
    local r = provider.exec(inst.id, { kind = "shell", script = COUNT })
    provider.instances.terminate(inst.id)
    if r.exit_code ~= 0 then error(("shard %d failed: %s"):format(i, r.stderr)) end
    return r.stdout
  end, { fail_fast = true })
  for i, rec in ipairs(results) do outputs[i] = rec.value end
end)

-- Merge.
local total, words = {}, 0
for i, out in ipairs(outputs) do
  local shard_words = 0
  for c, word in out:gmatch("(%d+) (%S+)") do
    total[word] = (total[word] or 0) + tonumber(c)
    shard_words = shard_words + tonumber(c)
  end
  print(("shard %d: %d lines, %d words"):format(i, #shards[i], shard_words))
  words = words + shard_words
end
local list = {}
for word, c in pairs(total) do list[#list + 1] = { word = word, count = c } end
table.sort(list, function(a, b)
  if a.count ~= b.count then return a.count > b.count end
  return a.word < b.word
end)
print(("total: %d words, %d distinct"):format(words, #list))
for i = 1, math.min(opts.top, #list) do print(("%6d %s"):format(list[i].count, list[i].word)) end
