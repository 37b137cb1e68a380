-- The provider conformance suite against the Morph provider on `galley emulate` (loopback),
-- started with a boot delay so that boot, fork and resume go through readiness polling.
-- Emulated instances are sandboxes whose home is /root, as on a Morph VM, so the provider's
-- default home_dir applies. It runs once per emulator argv mode: `exec` (a multi-element
-- command runs as an argv) and `join` (space-joined and run by /bin/sh -c, like an SSH-style
-- server); the provider's default one-element exec form must pass both.
local conformance = require("providers.conformance")
local emulator = require("support.emulator")

local SIZE_LIMIT = 64 * 1024 * 1024

for _, mode in ipairs(emulator.ARGV_MODES) do
  conformance.run("morph (galley emulate --argv-mode " .. mode .. ")", function()
    local em = emulator.start({ boot_delay_ms = 40, argv_mode = mode })
    local ok, provider = pcall(require("galley.providers.morph").new, {
      api_key = em.api_key,
      base_url = em.base_url,
      size_limit = SIZE_LIMIT,
      retry = { max_attempts = 3, base_delay_ms = 10, max_delay_ms = 100 },
      boot_timeout_ms = 30000,
    })
    if not ok then
      em:stop()
      error(provider, 0)
    end
    return {
      provider = provider,
      snapshot_id = emulator.SNAPSHOT,
      size_limit = SIZE_LIMIT,
      -- one-line execs carry ~88 KiB each: 10 MiB is still 116 of them (50 MiB took 30 s)
      big_file_mib = mode == "join" and 10 or nil,
      cleanup = function()
        provider.close()
        em:stop()
      end,
    }
  end)
end
