--- galley stop: stops (deletes) instances by id.
local errors = require("galley.errors")
local shared = require("galley.commands.shared")

local M = {
  summary = "stop (delete) instances: galley stop ID...",
  usage = "galley stop ID... [--json] [--provider local|morph|proxmox]",
  help = "Stops each instance (Morph's stop deletes it; so does the local provider's). Exit code 1 when\n"
    .. "any could not be stopped (NOT_FOUND: already gone, e.g. by its TTL). --json prints\n"
    .. "[{id, stopped, error?}].",
}

function M.configure(p)
  p:argument("instance_id", "the instances to stop"):args("+")
end

function M.run(args)
  local res, code = shared.parse(shared.parser("stop", M.summary, M), args)
  if not res then return code end
  return shared.with_provider("stop", res, function(provider)
    local out, failed = {}, false
    for _, id in ipairs(res.instance_id) do
      local ok, err = pcall(provider.instances.stop, id)
      out[#out + 1] = { id = id, stopped = ok, error = not ok and { code = err.code, message = err.message } or nil }
      if ok then
        if not res.json then io.stdout:write("stopped ", id, "\n") end
      else
        failed = true
        if not res.json then
          if errors.is(err, "NOT_FOUND") then
            io.stderr:write("galley stop: NOT_FOUND: no instance ", id, " (already stopped, or expired by its TTL?)\n",
              "  hint: `galley ls --all` lists the instances that exist\n")
          else
            shared.fail("stop", err, provider)
          end
        end
      end
    end
    if res.json then shared.json(require("galley.json").array(out)) end
    return failed and 1 or 0
  end)
end

return M
