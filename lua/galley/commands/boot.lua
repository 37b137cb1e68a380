--- galley boot: boots an instance from a snapshot and prints its id.
local shared = require("galley.commands.shared")

local M = {
  summary = "boot an instance from a snapshot, print its id: galley boot SNAPSHOT [--ttl 30m]",
  usage = "galley boot [SNAPSHOT] [--ttl DURATION] [--json] [--provider local|morph|proxmox]",
  help = "Boots an instance and prints its id on stdout once it is ready (--json: the instance record).\n"
    .. "Every instance galley boots has a TTL: --ttl (90, 90s, 10m, 2h; default 30m; 0: none).\n"
    .. "SNAPSHOT defaults to the local provider's empty snapshot; on Morph it is required.\n"
    .. "Stop it with `galley stop ID`.",
}

M.DEFAULT_TTL = 1800

function M.configure(p)
  p:argument("snapshot", "the snapshot to boot"):args("?")
  p:option("--ttl", "time to live: 90, 90s, 10m, 2h (0: none)", "30m")
end

--- Lists up to five snapshots that exist, for a NOT_FOUND (and names the emulator's).
function M.snapshot_hint(provider)
  local ok, list = pcall(provider.snapshots.list)
  if not ok or #list == 0 then return nil end
  local ids = {}
  for i = 1, math.min(5, #list) do ids[i] = list[i].id end
  local hint = "snapshots that exist: " .. table.concat(ids, ", ") .. (#list > 5 and ", …" or "")
  local url = shared.base_url(provider)
  if url and url:match("^https?://127%.0%.0%.1[:/]") or url and url:match("^https?://localhost[:/]") then
    hint = hint .. " (the emulator's ready snapshot is snapshot_galleydev)"
  end
  return hint .. "; `galley snapshots` lists them"
end

function M.run(args)
  local res, code = shared.parse(shared.parser("boot", M.summary, M), args)
  if not res then return code end
  local ttl = shared.duration(res.ttl, "ttl")
  if not ttl then return shared.EXIT_USAGE end
  return shared.with_provider("boot", res, function(provider)
    local snapshot = res.snapshot or provider.DEFAULT_SNAPSHOT
    if not snapshot then
      io.stderr:write("galley boot: a SNAPSHOT is needed on ", provider.name, "\n",
        "  hint: `galley snapshots` lists them\n")
      return shared.EXIT_USAGE
    end
    local run = require("galley.run")
    local ok, inst = pcall(provider.instances.boot, snapshot, {
      ttl_seconds = ttl > 0 and ttl or nil, ttl_action = ttl > 0 and "stop" or nil,
      metadata = { galley_cli = "boot", [run.TAG_HOST] = run.hostname() },
    })
    if not ok then
      if type(inst) == "table" and inst.code == "NOT_FOUND" then
        inst.hint = M.snapshot_hint(provider) or inst.hint
      end
      error(inst, 0)
    end
    if res.json then
      shared.json({ id = inst.id, status = inst.status, provider = provider.name, snapshot_id = snapshot,
        created_at = inst.created_at, ttl_seconds = ttl > 0 and ttl or nil, metadata = inst.metadata })
    else
      io.stdout:write(inst.id, "\n")
      io.stderr:write(("galley boot: %s is ready on %s%s; stop it with: galley stop %s\n"):format(inst.id,
        provider.name, ttl > 0 and (", TTL " .. require("galley.util").format_duration(ttl)) or ", no TTL", inst.id))
    end
    return 0
  end)
end

return M
