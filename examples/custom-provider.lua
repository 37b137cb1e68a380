-- custom-provider.lua: a provider of your own, handed to the orchestrator.
--
--   galley run examples/custom-provider.lua                 # local sandboxes, PM2 inside them
--   galley run examples/custom-provider.lua --deny curl     # refuse another program
--
-- A provider is a plain table: {name, version, capabilities, instances = {boot, get, list,
-- terminate, stop, ...}, files = {...}, exec}. Anything that takes a provider (the orchestrator,
-- process managers, the credentials installer, galley.gc) only calls those fields, so a wrapper
-- can add behaviour without touching the provider it wraps. This one, around the local provider:
--   * stamps `owner=<user>` on every instance it boots (shows up in `galley gc` and listings);
--   * refuses commands whose program is on a deny list (VALIDATION_ERROR before anything runs);
--   * records every exec (program, exit code) for an audit report at the end.
-- The orchestrator then boots through it, writes ~/.machine.json, starts a session under PM2 and
-- follows its output until it exits. Needs bubblewrap for the sandbox and pm2 on this machine.
local recipe = require("galley.recipe")
local errors = require("galley.errors")
local log = require("galley.log")

local opts = recipe.options({
  name = "custom-provider",
  summary = "Wrap the local provider (owner tag, deny list, exec audit) and run a PM2 session through it.",
  options = {
    { "deny", metavar = "PROGRAM", help = "one more program to refuse (always refused: shutdown, reboot)" },
  },
}, arg)

--- Wraps `inner`: same contract, plus an owner tag, a deny list and an audit trail.
---@param inner table a galley provider
---@param wopts {owner: string, deny: string[]}
---@return table provider, table[] trail
local function audited(inner, wopts)
  local denied = {}
  for _, prog in ipairs(wopts.deny) do denied[prog] = true end
  local trail = {}

  -- Fields we do not override fall through to the wrapped provider (files, snapshots, ...).
  local p = setmetatable({ name = "audited-" .. inner.name, version = "1.0" }, { __index = inner })
  p.instances = setmetatable({}, { __index = inner.instances })

  function p.instances.boot(snapshot_id, bopts)
    bopts = bopts or {}
    local meta = { owner = wopts.owner }
    for k, v in pairs(bopts.metadata or {}) do meta[k] = v end
    local copy = {}
    for k, v in pairs(bopts) do copy[k] = v end
    copy.metadata = meta
    return inner.instances.boot(snapshot_id, copy)
  end

  function p.exec(instance_id, spec, ...)
    local program = spec.kind == "argv" and spec.command:match("[^/]*$") or "bash-script"
    if denied[program] then
      errors.raise("VALIDATION_ERROR", ("program '%s' is not allowed on these instances"):format(program),
        { field = "command.command", operation = "exec", resource = "instance:" .. tostring(instance_id) })
    end
    local res = inner.exec(instance_id, spec, ...)
    trail[#trail + 1] = { program = program, exit_code = res.exit_code }
    return res
  end

  return p, trail
end

local deny = { "shutdown", "reboot" }
if opts.deny then deny[#deny + 1] = opts.deny end
local provider, trail = audited(require("galley.providers.local").new({ log = log.silent() }),
  { owner = os.getenv("USER") or "nobody", deny = deny })

-- Everything below sees only `provider`, the wrapper.
local orchestrator = require("galley.orchestrator")
local orch = orchestrator.new({
  provider = provider,
  process_manager = require("galley.process.pm2").new({ provider = provider, log = log.silent() }),
  agent = require("galley.agents.command").new({ cwd = "~" }),
  log = log.silent(),
})

local m = recipe.step("boot and prepare", orch.boot_and_prepare, provider.DEFAULT_SNAPSHOT,
  { ttl_seconds = 900, machine_info = { purpose = "custom-provider example" } })
recipe.defer(function() orch.terminate(m.instance_id) end, "terminate the instance")

local inst = provider.instances.get(m.instance_id)
print(("instance owner: %s"):format(inst.metadata.owner))
local info = provider.files.read_file(m.instance_id, "~/.machine.json")
print(("machine info: %s"):format(info:match('"purpose":"[^"]*"')))

-- A denied program never reaches the instance.
local ok, err = pcall(provider.exec, m.instance_id, { kind = "argv", command = "/sbin/shutdown", args = { "now" } })
print(("denied: %s"):format(ok and "no!" or err.code))

local s = recipe.step("start the session", orch.start_session, m.instance_id,
  { session_name = "count", command = "for i in 1 2 3; do echo tick-$i; sleep 0.2; done; echo done" })
local res = orch.follow(m.instance_id, s.process_name, {
  interval_ms = 250, timeout_ms = 60000,
  on_line = function(line, stream) print(("[%s] %s"):format(stream, line)) end,
})
print(("session %s: %s, exit code %s, %d lines"):format(s.process_name, res.status, tostring(res.exit_code),
  res.lines))

-- The audit trail: every exec the orchestrator and PM2 made through the wrapper.
local by_program, failed = {}, 0
for _, e in ipairs(trail) do
  by_program[e.program] = (by_program[e.program] or 0) + 1
  if e.exit_code ~= 0 then failed = failed + 1 end
end
local names = {}
for name in pairs(by_program) do names[#names + 1] = name end
table.sort(names)
local parts = {}
for _, name in ipairs(names) do parts[#parts + 1] = ("%s x%d"):format(name, by_program[name]) end
print(("audit: %d execs (%s), %d non-zero"):format(#trail, table.concat(parts, ", "), failed))
