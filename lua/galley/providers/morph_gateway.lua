--- galley.providers.morph_gateway: Morph's SSH gateway as the Morph provider's byte channel for
--- file transfers (execfiles' `stream`).
--
--   local gw = morph_gateway.new{ host = "ssh.cloud.morph.so", port = 22, api_key = key, log = log }
--   local res, err = gw:stream(instance_id, argv, {stdin_file = "/tmp/x"})   -- or {stdout_file = ...}
--   gw:close()
--
-- Morph moves files over SSH through one gateway for every instance (reference §8): the user
-- name is `<instance_id>:<api_key>` and the key offered is a throwaway. galley uses the real
-- OpenSSH client (galley.providers.proxmox_ssh: BatchMode, its own known_hosts, one multiplexed
-- connection per instance) with the user name in a private config file (mode 600; never in
-- ssh's argv or in messages: they show `<instance_id>:***`) and a throwaway ed25519 key made
-- once per provider. The gateway's host key is accepted on first contact and then pinned for
-- the provider's life, unless `host_key` pins it from the start.
--
-- A channel that does not work (ssh exits 255 before the command runs: no route, refused, a
-- changed host key) is reported once as a warning and the provider's transfers go back to exec:
-- `stream` then answers nil, STREAM_UNAVAILABLE, which execfiles takes as "use exec". A refused
-- login ("Permission denied") may be the instance's doing (paused, not ready yet, gone): once
-- any login has worked, it sends that one transfer through exec and nothing more; until then,
-- the gateway is given up at the M.REFUSALS_BEFORE_GIVING_UP-th refusal (a key or user format
-- the gateway does not take). Everything lives in one private directory, removed
-- by close() and at the Lua state's end.
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local pssh = require("galley.providers.proxmox_ssh")

local M = {}

M.DEFAULT_HOST = "ssh.cloud.morph.so"
M.DEFAULT_PORT = 22
M.HOST_ALIAS = "morph-gateway"
--- Logins refused this many times, none accepted before: the gateway is given up.
M.REFUSALS_BEFORE_GIVING_UP = 3

local Gateway = {}
Gateway.__index = Gateway


--- The gateway a provider uses: `opts.ssh` (false: none; a table: host, port, host_key,
--- ssh_command), else MORPH_SSH_HOSTNAME / MORPH_SSH_PORT, else ssh.<host> when the API is
--- served over https from a DNS name (the official `https://cloud.morph.so/api` gives
--- ssh.cloud.morph.so). A plain-http or IP base URL (the emulator) has none unless told.
---@param ssh_opt any
---@param base_url string|nil
---@param getenv? fun(name: string): string|nil
---@return table|nil {host, port, host_key?, ssh_command?}
function M.resolve(ssh_opt, base_url, getenv)
  getenv = getenv or os.getenv
  if ssh_opt == false then return nil end
  local o = type(ssh_opt) == "table" and ssh_opt or {}
  if ssh_opt ~= nil and type(ssh_opt) ~= "table" then
    error(errors.new("VALIDATION_ERROR", "ssh must be false or a table {host, port, host_key, ssh_command}",
      { field = "ssh", kind = "ProviderError", hint = "ssh = false sends files through exec only" }), 0)
  end
  local host = o.host or getenv("MORPH_SSH_HOSTNAME")
  if not host or host == "" then
    local api_host = tostring(base_url or ""):match("^https://([%w%-%.]+)/")
    if api_host and api_host:find("%a") and api_host ~= "localhost" then host = "ssh." .. api_host end
  end
  if not host or host == "" then return nil end
  local port = o.port or tonumber(getenv("MORPH_SSH_PORT") or "") or M.DEFAULT_PORT
  if math.type(port) ~= "integer" or port < 1 or port > 65535 then
    error(errors.new("VALIDATION_ERROR", "ssh.port must be an integer 1-65535", { field = "ssh.port",
      kind = "ProviderError" }), 0)
  end
  if type(host) ~= "string" or not host:match("^[%w%-%.:%[%]]+$") then
    error(errors.new("VALIDATION_ERROR", "ssh.host must be a host name or address", { field = "ssh.host",
      kind = "ProviderError" }), 0)
  end
  return { host = host, port = port, host_key = o.host_key, ssh_command = o.ssh_command }
end


--- A gateway channel. opts: host, port, api_key, host_key?, ssh_command?, log?
function M.new(opts)
  assert(type(opts.api_key) == "string" and opts.api_key ~= "", "morph_gateway.new: api_key is required")
  return setmetatable({ host = opts.host, port = opts.port, key = opts.api_key, host_key = opts.host_key,
    ssh_command = opts.ssh_command, log = opts.log, broken = nil, chan = nil, worked = false, refusals = 0 },
    Gateway)
end


-- The OpenSSH channel, made on first use (a private directory; the throwaway key).
function Gateway:channel()
  if self.chan then return self.chan end
  local dir, err = fs.mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/galley-morph-ssh-")
  if not dir then error(errors.wrap(err, { operation = "ssh", kind = "ProviderError" }, "FILE_IO_ERROR"), 0) end
  local chan = pssh.new({ dir = dir, owned = true, remove_at_exit = true, ssh_command = self.ssh_command })
  if self.host_key then chan:pin(M.HOST_ALIAS, self.host, self.host_key) end
  self.chan = chan -- (its directory goes at the Lua state's end too, if close() is never called)
  return chan
end


function Gateway:target(id)
  return { host = self.host, port = self.port, user = id .. ":" .. self.key, secret_user = true, alias = id,
    host_alias = M.HOST_ALIAS }
end


--- Runs argv in instance `id` through the gateway with stdin/stdout redirected (see
--- proxmox_ssh transfer). Returns the result, or nil and STREAM_UNAVAILABLE when the gateway
--- cannot be used (then and from then on), or refused this instance's login (details.reason
--- "login_refused": this time only), or nil and another error.
function Gateway:stream(id, argv, sopts)
  if self.broken then return nil, self.broken end
  local chan = self:channel()
  local t = self:target(id)
  local res, err = chan:transfer(t, argv, sopts)
  local refused = not res and errors.is(err, "TRANSPORT")
    and tostring(err.details and err.details.stderr or err.message):find("Permission denied", 1, true) ~= nil
  if refused and not self.worked then self.refusals = self.refusals + 1 end
  if refused and (self.worked or self.refusals < M.REFUSALS_BEFORE_GIVING_UP) then
    -- this instance's refusal, as far as can be told: exec carries this transfer
    if self.log then
      self.log.debug("SSH gateway refused the login; this transfer goes through exec", { instance = id,
        error = err.message })
    end
    return nil, errors.new("STREAM_UNAVAILABLE", ("the SSH gateway %s:%d refused the login for %s: %s"):format(
      self.host, self.port, id, err.message), { kind = "ProviderError", cause = err, resource = "instance:" .. id,
      details = { reason = "login_refused" },
      hint = "the transfer goes through exec instead; the instance may be paused or not ready" })
  end
  if not res and errors.is(err, "TRANSPORT") then
    -- The first contact pins the host key it saw, so a later change is refused (strict).
    self.broken = errors.new("STREAM_UNAVAILABLE", ("the SSH gateway %s:%d cannot be used: %s"):format(
      self.host, self.port, err.message), { kind = "ProviderError", cause = err,
      hint = "file transfers go through exec instead; pass ssh = false to skip the gateway" })
    if self.log then
      self.log.warn("SSH gateway unusable; file transfers go through exec", { host = self.host, port = self.port,
        error = err.message })
    end
    return nil, self.broken
  end
  if res then -- the key seen first is the one checked (strictly) from now on
    chan.pinned = chan.pinned or {}
    chan.pinned[M.HOST_ALIAS] = true
    self.worked = true
  end
  return res, err
end


--- Ends the multiplexed connections and removes the private directory.
function Gateway:close()
  if self.chan then
    pcall(self.chan.close, self.chan)
    self.chan = nil
  end
end

return M
