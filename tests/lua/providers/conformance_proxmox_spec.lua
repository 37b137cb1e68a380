-- The provider conformance suite against the Proxmox provider on `galley emulate proxmox`
-- (loopback): containers are local sandboxes running a real sshd, and every exec and file
-- transfer goes through the real OpenSSH client over one multiplexed connection per container.
local conformance = require("providers.conformance")
local fs = require("galley.core.fs")
local spawn = require("galley.emulator.proxmox_spawn")

local SIZE_LIMIT = 64 * 1024 * 1024

conformance.run("proxmox (galley emulate proxmox) #slow", function()
  local em = spawn.start({ task_ms = 40 })
  local state = assert(fs.mkdtemp())
  local ok, provider = pcall(require("galley.providers.proxmox").new, {
    url = em.url, token_id = em.token_id, token_secret = em.token_secret, ssh_port = em.ssh_port,
    state_dir = state, size_limit = SIZE_LIMIT, boot_timeout_ms = 60000,
    template = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
  })
  if not ok then
    em.stop()
    fs.remove_tree(state)
    error(provider, 0)
  end
  return {
    provider = provider,
    snapshot_id = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
    size_limit = SIZE_LIMIT,
    big_file_mib = 20,
    cleanup = function()
      provider.close()
      em.stop()
      fs.remove_tree(state)
    end,
  }
end)
