--- galley images: the base images of a provider.
local shared = require("galley.commands.shared")

local M = {
  summary = "list base images: galley images [--json]",
  usage = "galley images [--json] [--provider local|morph|proxmox]",
  help = "Lists the base images of the provider (id, name, description). --json prints an array.",
}

function M.configure() end

function M.run(args)
  local res, code = shared.parse(shared.parser("images", M.summary, M), args)
  if not res then return code end
  return shared.with_provider("images", res, function(provider)
    local list = provider.images.list()
    if res.json then
      local out = {}
      for i, im in ipairs(list) do
        out[i] = { id = im.id, name = im.name, description = im.description, provider = provider.name }
      end
      shared.json(require("galley.json").array(out))
      return 0
    end
    local rows = { { "ID", "NAME", "DESCRIPTION" } }
    for _, im in ipairs(list) do
      rows[#rows + 1] = { tostring(im.id), tostring(im.name or "-"), tostring(im.description or "") }
    end
    shared.table(rows)
    return 0
  end)
end

return M
