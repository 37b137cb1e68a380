-- The provider conformance suite against the local provider (bubblewrap + cgroups when this
-- machine has them), on a state directory of its own.
local conformance = require("providers.conformance")
local proc = require("galley.core.proc")

local SIZE_LIMIT = 64 * 1024 * 1024

conformance.run("local", function()
  local state = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-conf-XXXXXX" } })).stdout:gsub("%s+$", "")
  local function cleanup() proc.run({ argv = { "rm", "-rf", "--", state } }) end
  local ok, provider = pcall(require("galley.providers.local").new, { state_dir = state, size_limit = SIZE_LIMIT })
  if not ok then
    cleanup()
    error(provider, 0)
  end
  return { provider = provider, snapshot_id = provider.DEFAULT_SNAPSHOT, size_limit = SIZE_LIMIT, cleanup = cleanup }
end)
