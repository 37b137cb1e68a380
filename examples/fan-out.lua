-- fan-out.lua: boot N instances, give each a share of the work, run them at the same time,
-- collect the results and clean up. The work is a word count: the text is split into N shards,
-- each instance counts the words of its shard, and the counts are added up here.
--
--   galley run examples/fan-out.lua                          # 3 local sandboxes, a built-in text
--   galley run examples/fan-out.lua --count 5 --top 10 FILE  # your own text
--   MORPH_API_KEY=... galley run examples/fan-out.lua --provider morph --snapshot snapshot_abc
--
-- The commands really run in parallel: `provider.spawn` starts each one and returns a process
-- handle at once (a sandboxed process on local, an SSE exec stream on Morph), and the handles
-- are waited for afterwards. A provider without `spawn` runs them one after the other through
-- `provider.exec`; the results are the same.
-- Every instance gets a cleanup hook as soon as it exists, so a failure (or Ctrl-C) halfway
-- through still terminates all of them; the run's leak check would report any survivor.
local recipe = require("galley.recipe")
local providers = require("galley.providers")

local opts = recipe.options({
  name = "fan-out",
  usage = "[options] [FILE]",
  summary = "Word count over N instances: one shard each, run in parallel, results merged here.",
  options = {
    { "count", type = "integer", default = 3, help = "how many instances" },
    { "top", type = "integer", default = 5, help = "how many words to print" },
    { "provider", choices = { "local", "morph" }, help = "default: morph with MORPH_API_KEY, else local" },
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

local instances = {}
recipe.step(("boot %d instances"):format(opts.count), function()
  for i = 1, opts.count do
    local inst = provider.instances.boot(snapshot, { ttl_seconds = 900, metadata = { shard = tostring(i) } })
    recipe.defer(function() provider.instances.terminate(inst.id) end, "terminate " .. inst.id)
    instances[i] = inst
  end
end)

recipe.step("upload the shards", function()
  for i, inst in ipairs(instances) do
    provider.files.write_file_atomic(inst.id, "~/shard.txt", table.concat(shards[i], "\n") .. "\n", { mode = "600" })
  end
end)

-- Lower-case words, one per line, counted: "   3 fox".
local COUNT = [[tr -cs 'A-Za-z' '\n' < "$HOME/shard.txt" | tr 'A-Z' 'a-z' | grep . | sort | uniq -c]]

local outputs = {}
recipe.step("count the words", function()
  if provider.spawn then
    local handles = {}
    for i, inst in ipairs(instances) do handles[i] = provider.spawn(inst.id, { "/bin/sh", "-c", COUNT }) end
    for i, h in ipairs(handles) do
      local r, err = h:wait()
      h:close()
      if not r or r.exit_code ~= 0 then error(("shard %d failed: %s"):format(i, r and r.stderr or tostring(err))) end
      outputs[i] = r.stdout
    end
  else
    for i, inst in ipairs(instances) do
      local r = provider.exec(inst.id, { kind = "shell", script = COUNT })
      if r.exit_code ~= 0 then error(("shard %d failed: %s"):format(i, r.stderr)) end
      outputs[i] = r.stdout
    end
  end
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
