--- galley ls: the instances of a provider (id, status, age, TTL left, run and recipe tags).
local shared = require("galley.commands.shared")
local util = require("galley.util")

local M = {
  summary = "list instances: galley ls [--all] [--json]",
  usage = "galley ls [--all] [--json] [--provider local|morph|proxmox]",
  help = "Lists the instances galley booted (metadata galley_*) with their status, age, TTL left and the\n"
    .. "run and recipe that booted them; --all lists every instance of the provider.\n"
    .. "--json prints an array of instance records.",
}

function M.configure(p)
  p:flag("-a --all", "every instance, not only those galley booted")
end

local function galleys(inst)
  for k in pairs(inst.metadata or {}) do
    if k:sub(1, 7) == "galley_" then return true end
  end
  return false
end

--- Seconds of TTL left, or nil when the instance has none.
function M.ttl_left(inst)
  local ttl = inst.ttl or {}
  if type(ttl.expires_at) == "number" then return math.max(0, math.floor(ttl.expires_at - os.time())) end
  if type(ttl.seconds) == "number" and type(inst.created_at) == "number" then
    return math.max(0, math.floor(inst.created_at + ttl.seconds - os.time()))
  end
  return nil
end

function M.run(args)
  local p = shared.parser("ls", M.summary, M)
  local res, code = shared.parse(p, args)
  if not res then return code end
  return shared.with_provider("ls", res, function(provider)
    local list = provider.instances.list()
    local shown = {}
    for _, inst in ipairs(list) do
      if res.all or galleys(inst) then shown[#shown + 1] = inst end
    end
    table.sort(shown, function(a, b) return (a.created_at or 0) < (b.created_at or 0) end)
    if res.json then
      local out = {}
      for i, inst in ipairs(shown) do
        local md = inst.metadata or {}
        out[i] = { id = inst.id, status = inst.status, provider = provider.name, snapshot_id = inst.snapshot_id,
          created_at = inst.created_at, ttl_left = M.ttl_left(inst), run = md.galley_run, recipe = md.galley_recipe,
          kept = md.galley_keep == "1" or nil, metadata = md }
      end
      shared.json(require("galley.json").array(out))
      return 0
    end
    if #shown == 0 then
      io.stderr:write("galley ls: no instances on ", provider.name,
        res.all and "" or " booted by galley (--all: every one)", "\n")
      return 0
    end
    local rows = { { "ID", "STATUS", "AGE", "TTL LEFT", "RUN", "RECIPE" } }
    for _, inst in ipairs(shown) do
      local md = inst.metadata or {}
      local left = M.ttl_left(inst)
      rows[#rows + 1] = { inst.id, inst.status or "?", shared.age(inst.created_at),
        left and util.format_duration(left) or "-", md.galley_run or "-",
        (md.galley_recipe or "-") .. (md.galley_keep == "1" and " (kept)" or "") }
    end
    shared.table(rows)
    return 0
  end)
end

return M
