--- `galley emulate proxmox`: serve an offline Proxmox VE on 127.0.0.1 until Ctrl-C, SIGTERM or
-- POST /_emulator/shutdown (docs/emulator.md, "galley emulate proxmox").
local faults = require("galley.emulator.faults")
local proxmox = require("galley.emulator.proxmox")

local M = {}

local EXIT_USAGE = 2

M.usage = "galley emulate proxmox [--port N] [--state-dir D] [--task-ms N] [--auth-delay-ms N] [--old-errors] "
  .. "[--ticket-ttl-s N] [--ssh-port N] [--address-base A.B] [--node-key FILE]... [--fault SPEC]... [--latency-ms N]"

M.help = ([[
Serves the Proxmox VE API (/api2/json, plain HTTP) on 127.0.0.1 with two nodes (pve1, pve2) and
LXC containers that are local sandboxes running a real sshd on their own 127.x address.
Prints `listening on http://127.0.0.1:PORT/api2/json` once ready.

  --port N            API port (default 0: a free one)
  --state-dir D       container files (default: a temporary directory, removed on exit)
  --task-ms N         every task runs at least N ms (default %d)
  --auth-delay-ms N   every 401 is answered after N ms (default %d)
  --old-errors        error bodies without `message` (the message is only in the status line)
  --ticket-ttl-s N    ticket lifetime (default %d)
  --ssh-port N        port of every container's and node's sshd, on its own address (default %d)
  --address-base A.B  addresses are 127.A.B.x (default: random)
  --node-key FILE     an OpenSSH public key file authorized for root on the nodes (repeatable)
  --fault SPEC        as `galley emulate`, plus actions task_fail task_warn slow_task lock_timeout
                      lose late_address ssh_refuse
  --latency-ms N      wait N ms before each API request
Credentials from the environment: PVE_TOKEN_ID, PVE_TOKEN_SECRET, PVE_PASSWORD (root@pam),
PVE_PRIVSEP_SECRET (token root@pam!privsep, no ACLs); development defaults otherwise.]]):format(
  proxmox.DEFAULT_TASK_MS, proxmox.DEFAULT_AUTH_DELAY_MS, proxmox.TICKET_TTL_S, proxmox.DEFAULT_SSH_PORT)

local function usage_error(fmt, ...)
  io.stderr:write("galley emulate proxmox: ", fmt:format(...), "\nTry 'galley help emulate' for usage.\n")
  return nil
end

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

--- Parses the command line (after `proxmox`) into emulator options; nil after a usage error.
---@param args string[]
---@return table|nil
function M.parse(args)
  local opts = { faults = {}, node_keys = {}, port = 0 }
  local ints = { ["--port"] = "port", ["--task-ms"] = "task_ms", ["--auth-delay-ms"] = "auth_delay_ms",
    ["--ticket-ttl-s"] = "ticket_ttl_s", ["--ssh-port"] = "ssh_port", ["--latency-ms"] = "latency_ms" }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    local function value()
      if inline then return inline end
      i = i + 1
      return args[i]
    end
    if ints[name] then
      local v = value()
      local n = v and v:match("^%d+$") and math.tointeger(tonumber(v))
      if not n then return usage_error("'%s' needs a non-negative integer", name) end
      if (name == "--port" or name == "--ssh-port") and n > 65535 then
        return usage_error("%s %d out of range", name, n)
      end
      if name == "--ssh-port" and n < 1024 then
        return usage_error("'--ssh-port' must be 1024 or more (sshd runs in a user namespace)")
      end
      if n > 1 << 40 then return usage_error("'%s' %d is too large", name, n) end
      opts[ints[name]] = n
    elseif name == "--state-dir" or name == "--address-base" then
      local v = value()
      if not v or v == "" then return usage_error("'%s' needs a value", name) end
      if name == "--address-base" and not v:match("^%d+%.%d+$") then
        return usage_error("'--address-base' needs A.B (addresses 127.A.B.x)")
      end
      opts[name == "--state-dir" and "state_dir" or "address_base"] = v
    elseif name == "--node-key" then
      local v = value()
      local f = v and io.open(v, "r")
      if not f then return usage_error("'--node-key' needs a readable public key file, got '%s'", tostring(v)) end
      local key = f:read("a")
      f:close()
      if not key:match("^%s*[%w%-@.]+ [%w+/=]+") then
        return usage_error("'--node-key' %s is not an OpenSSH public key", v)
      end
      opts.node_keys[#opts.node_keys + 1] = (key:gsub("%s+$", ""))
    elseif name == "--fault" then
      local v = value()
      if not v then return usage_error("'--fault' needs a spec") end
      local f, problem = faults.parse(v, proxmox.FAULT_ACTIONS)
      if not f then return usage_error("bad --fault '%s': %s", v, problem) end
      opts.faults[#opts.faults + 1] = v
    elseif name == "--old-errors" then
      if inline then return usage_error("'--old-errors' takes no value") end
      opts.old_errors = true
    else
      return usage_error("unknown option '%s'", a)
    end
    i = i + 1
  end
  opts.token_id = env("PVE_TOKEN_ID")
  opts.token_secret = env("PVE_TOKEN_SECRET")
  opts.password = env("PVE_PASSWORD")
  opts.privsep_secret = env("PVE_PRIVSEP_SECRET")
  if opts.token_id and not opts.token_id:match("^[^@!%s]+@[%w%-_.]+![%a][%w%-_.]*$") then
    return usage_error("PVE_TOKEN_ID must look like USER@REALM!TOKENID")
  end
  return opts
end

function M.run(args)
  local opts = M.parse(args)
  if not opts then return EXIT_USAGE end
  return require("galley.emulator.cli_run").run(opts, {
    name = "galley emulate proxmox", temp_prefix = "galley-pve", new = proxmox.new,
    announce = function(emu, port)
      io.stdout:write(("listening on http://127.0.0.1:%d/api2/json\n"):format(port))
      io.stdout:flush()
      local id = opts.token_id and '"$PVE_TOKEN_ID"' or ("'" .. proxmox.TOKEN_ID .. "'")
      local secret = opts.token_secret and '"$PVE_TOKEN_SECRET"' or proxmox.TOKEN_SECRET
      local st = emu:state()
      io.stderr:write(("galley emulate proxmox: state in %s; ready; in another shell:\n"
        .. "  export PVE_URL=http://127.0.0.1:%d PVE_TOKEN_ID=%s PVE_TOKEN_SECRET=%s\n"
        .. "galley emulate proxmox: nodes pve1 %s, pve2 %s; sshd port %d\n")
        :format(opts.state_dir, port, id, secret, st.nodes[1].addr, st.nodes[2].addr, emu.ssh_port))
    end,
  })
end

return M
