-- The provider conformance suite against the local provider (bubblewrap + cgroups when this
-- machine has them), on a state directory of its own.
local conformance = require("providers.conformance")
local proc = require("galley.core.proc")

conformance.run("local", function()
  local state = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-conf-XXXXXX" } })).stdout:gsub("%s+$", "")
  local provider = require("galley.providers.local").new({ state_dir = state, size_limit = 64 * 1024 * 1024 })
  return {
    provider = provider,
    snapshot_id = provider.DEFAULT_SNAPSHOT,
    size_limit = 64 * 1024 * 1024,
    cleanup = function()
      proc.run({ argv = { "rm", "-rf", "--", state } })
    end,
  }
end)
