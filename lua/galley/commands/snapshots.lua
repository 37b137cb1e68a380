--- galley snapshots: the snapshots of a provider.
local shared = require("galley.commands.shared")

local M = {
  summary = "list snapshots: galley snapshots [--json]",
  usage = "galley snapshots [--json] [--provider local|morph|proxmox]",
  help = "Lists the snapshots instances can boot from (id, status, age, tags). --json prints an array.",
}

function M.configure() end

function M.run(args)
  local res, code = shared.parse(shared.parser("snapshots", M.summary, M), args)
  if not res then return code end
  return shared.with_provider("snapshots", res, function(provider)
    local list = provider.snapshots.list()
    table.sort(list, function(a, b) return (a.created_at or 0) < (b.created_at or 0) end)
    if res.json then
      local out = {}
      for i, s in ipairs(list) do
        out[i] = { id = s.id, status = s.status, provider = provider.name, created_at = s.created_at,
          digest = s.digest, metadata = s.metadata or {} }
      end
      shared.json(require("galley.json").array(out))
      return 0
    end
    if #list == 0 then
      io.stderr:write("galley snapshots: no snapshots on ", provider.name, "\n")
      return 0
    end
    local rows = { { "ID", "STATUS", "AGE", "RUN" } }
    for _, s in ipairs(list) do
      rows[#rows + 1] = { s.id, s.status or "?", shared.age(s.created_at), (s.metadata or {}).galley_run or "-" }
    end
    shared.table(rows)
    return 0
  end)
end

return M
