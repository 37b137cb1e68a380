--- galley.providers: pick a provider by name, or the default for this environment.
--   local providers = require("galley.providers")
--   local p = providers.new("local", { ... })       -- or "morph", "proxmox"
--   local p, why = providers.default()              -- morph with MORPH_API_KEY, else local
local M = {}

--- The provider names galley ships.
M.names = { "morph", "local", "proxmox" }

--- Creates a provider by name.
---@param name "morph"|"local"|"proxmox"
---@param opts? table passed to the provider's `new`
---@return table provider
function M.new(name, opts)
  if name ~= "morph" and name ~= "local" and name ~= "proxmox" then
    require("galley.errors").raise("VALIDATION_ERROR", ("unknown provider '%s'"):format(tostring(name)), {
      field = "provider", hint = "use morph, local or proxmox",
    })
  end
  return require("galley.providers." .. name).new(opts or {})
end

--- The provider this environment implies: `morph` when MORPH_API_KEY is set, else `local`.
-- Returns the provider and a sentence saying which and why (recipes print it).
---@param name? "morph"|"local"|"proxmox" an explicit choice wins
---@param opts? table
---@return table provider, string why
function M.default(name, opts)
  if name then return M.new(name, opts), ("provider %s (chosen)"):format(name) end
  if (os.getenv("MORPH_API_KEY") or "") ~= "" then
    return M.new("morph", opts), "provider morph (MORPH_API_KEY is set)"
  end
  return M.new("local", opts), "provider local (MORPH_API_KEY is not set)"
end

--- The providers this environment configures, in this order: `local` always, `morph` when
--- MORPH_API_KEY is set, `proxmox` when PVE_URL is set (what `galley gc` sweeps and `galley
--- dashboard` lists by default).
---@return string[]
function M.configured()
  local names = { "local" }
  if (os.getenv("MORPH_API_KEY") or "") ~= "" then names[#names + 1] = "morph" end
  if (os.getenv("PVE_URL") or "") ~= "" then names[#names + 1] = "proxmox" end
  return names
end

return M
