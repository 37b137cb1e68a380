--- galley.emulator.proxmox_ct: what runs behind the Proxmox emulator's containers and nodes.
-- Every container and every node is a local-provider sandbox (galley.emulator.sandbox: own
-- user/pid/ipc/uts namespaces, the host's filesystem read-only, its own /root and /tmp). A
-- running container runs a real `sshd` (Debian openssh-server) inside its sandbox, listening on
-- the container's own loopback address and the emulator's ssh port; a node runs one too, whose
-- sessions find `pct` on their PATH (a bash script in the node's /root/.pve-node/bin) that
-- reaches the node's containers over ssh with a key only the nodes have.
-- Files inside a sandbox:
--   container: /root/.ssh/authorized_keys (the create's ssh-public-keys), /run/pve-ct/ (sshd's
--              config, host key, the nodes' key; a tmpfs, rewritten at every start)
--   node:      /root/.ssh/authorized_keys (--node-key), /root/.pve-node/{bin/pct, id_ed25519, cts,
--              name, port}, /run/pve-node/ (sshd's config and host key)
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local sandbox_mod = require("galley.emulator.sandbox")
local task = require("galley.task")

local M = {}

local SSHD = "/usr/sbin/sshd"

--- How long an sshd may take to say it listens.
local SSHD_START_MS = 20000

--- Lines of an sshd's stderr kept (for /_emulator/state).
local SSHD_LOG_LINES = 40

-- Inside the sandbox: $1 run dir, $2 ListenAddress, $3 extra AuthorizedKeysFile (or ""),
-- $4 ForceCommand (or ""); stdin: the private host key. Writes the config and execs sshd.
local SSHD_LAUNCH = [[
set -e
umask 077
d=$1
mkdir -p "$d" /run/sshd
cat > "$d/host_key"
{
  echo "ListenAddress $2"
  echo "HostKey $d/host_key"
  echo "PidFile none"
  echo "UsePAM no"
  echo "PermitRootLogin prohibit-password"
  echo "PasswordAuthentication no"
  echo "KbdInteractiveAuthentication no"
  echo "AuthorizedKeysFile /root/.ssh/authorized_keys $3"
  echo "StrictModes no"
  echo "PrintMotd no"
  echo "PrintLastLog no"
  echo "AcceptEnv LANG LC_*"
  echo "Subsystem sftp internal-sftp"
  echo "LogLevel INFO"
  if [ -n "$4" ]; then echo "ForceCommand $4"; fi
} > "$d/sshd_config"
# nss-systemd would make up a locked shadow entry for root (the real /etc/shadow is unreadable
# here): sshd would refuse root as "account is locked".
export SYSTEMD_NSS_BYPASS_SYNTHETIC=1
exec ]] .. SSHD .. [[ -D -e -f "$d/sshd_config"
]]

-- `pct` on a node (bash): exec, push, pull, status, list over ssh to the container.
local PCT = [[
#!/bin/bash
# pct for the galley Proxmox emulator: reaches this node's containers over ssh.
set -u
base=/root/.pve-node
node=$(cat "$base/name")
port=$(cat "$base/port")
die() { echo "$*" >&2; exit 2; }
usage() { die "USAGE: pct <exec|push|pull|status|list> ..."; }
ct_addr() {
  local line
  line=$(awk -v v="$1" '$1 == v { print $2 " " $3 }' "$base/cts")
  [ -n "$line" ] || die "Configuration file 'nodes/$node/lxc/$1.conf' does not exist"
  set -- $line
  [ "$2" = running ] || die "CT $vmid not running"
  addr=$1
}
ctssh() {
  ssh -q -i "$base/id_ed25519" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "root@$addr" "$@"
}
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  exec)
    vmid=${1:-}; [ -n "$vmid" ] || usage; shift
    [ "${1:-}" = "--" ] && shift
    ct_addr "$vmid"
    if [ $# -eq 0 ]; then exec ssh -t -q -i "$base/id_ed25519" -p "$port" -o BatchMode=yes \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "root@$addr"; fi
    line=$(printf '%q ' "$@")
    ctssh -- "exec $line"
    exit $? ;;
  push)
    vmid=${1:-}; src=${2:-}; dest=${3:-}; [ -n "$dest" ] || usage; shift 3
    perms=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --perms) perms=$2; shift 2 ;;
        --user|--group) shift 2 ;;
        *) die "pct push: unknown option '$1'" ;;
      esac
    done
    ct_addr "$vmid"
    [ -f "$src" ] || die "can't open '$src' - No such file or directory"
    qd=$(printf '%q' "$dest")
    if [ -n "$perms" ]; then qp=$(printf '%q' "$perms"); ctssh -- "cat > $qd && chmod $qp $qd" < "$src"
    else ctssh -- "cat > $qd" < "$src"; fi
    exit $? ;;
  pull)
    vmid=${1:-}; src=${2:-}; dest=${3:-}; [ -n "$dest" ] || usage
    ct_addr "$vmid"
    qs=$(printf '%q' "$src")
    ctssh -- "cat $qs" < /dev/null > "$dest"
    exit $? ;;
  status)
    vmid=${1:-}; [ -n "$vmid" ] || usage
    line=$(awk -v v="$vmid" '$1 == v { print $3 }' "$base/cts")
    [ -n "$line" ] || die "Configuration file 'nodes/$node/lxc/$vmid.conf' does not exist"
    echo "status: $line" ;;
  list)
    echo "VMID       Status     Lock         Name"
    awk '{ printf "%-10s %-10s %-12s %s\n", $1, $3, "", $4 }' "$base/cts" ;;
  *) usage ;;
esac
]]

---@class galley.emulator.ProxmoxRuntime
local Rt = {}
Rt.__index = Rt

--- A runtime keeping its sandboxes under `root`.
---@param opts {root: string, ssh_port: integer, log?: fun(msg: string)}
---@return galley.emulator.ProxmoxRuntime|nil
---@return galley.Error|nil err
function M.new(opts)
  local sb, err = sandbox_mod.new({ root = opts.root })
  if not sb then return nil, err end
  if not sandbox_mod.available(sb.provider) then
    return nil, errors.new("EMULATOR_BACKEND", "galley emulate proxmox needs bubblewrap: containers are sandboxes",
      { hint = "run scripts/setup (bubblewrap, uidmap)" })
  end
  if not fs.exists(SSHD) then
    return nil, errors.new("EMULATOR_BACKEND", "galley emulate proxmox needs " .. SSHD,
      { hint = "apt-get install openssh-server (scripts/setup)" })
  end
  local self = setmetatable({ sb = sb, root = opts.root, ssh_port = opts.ssh_port, sshd = {},
    keys_dir = opts.root .. "/keys",
    log = opts.log or function() end }, Rt)
  local ok, perr = fs.mkdir_p(self.keys_dir, tonumber("700", 8))
  if not ok then
    return nil, errors.new("FILE_IO_ERROR", "cannot create " .. self.keys_dir .. ": " .. tostring(perr))
  end
  -- The key the nodes use to reach containers (pct).
  local key, kerr = self:keygen("nodes")
  if not key then return nil, kerr end
  self.node_key = key
  return self
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- A fresh ed25519 key pair (ssh-keygen) named `name`: {private, public}.
function Rt:keygen(name)
  local path = self.keys_dir .. "/" .. name
  os.remove(path)
  os.remove(path .. ".pub")
  local r, err = proc.run({ argv = { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pve-emulator-" .. name,
    "-f", path }, timeout_ms = 30000, stdin = "null" })
  if not r or r.exit_code ~= 0 then
    return nil, errors.new("EMULATOR_BACKEND", "ssh-keygen failed: " .. tostring(err or r.stderr))
  end
  local key = { private = read_file(path), public = (read_file(path .. ".pub") or ""):gsub("%s+$", "") }
  os.remove(path)
  return key
end

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Runs a shell script in sandbox `key`, raising on a failure.
function Rt:script(key, script, what)
  local lid = self.sb.instances[key]
  if not lid then errors.raise("EMULATOR_BACKEND", "no sandbox " .. key) end
  local r = self.sb.provider.exec(lid, { kind = "shell", script = script })
  if r.exit_code ~= 0 then
    errors.raise("EMULATOR_BACKEND", ("%s failed (exit %d): %s"):format(what, r.exit_code, r.stderr))
  end
  return r
end

--- Creates the sandbox of a container: empty (a vztmpl volume) or a copy of snapshot `from`.
function Rt:create(key, from)
  local ok, err = self.sb:create_instance(key, from)
  if not ok then error(err, 0) end
end

--- Writes root's authorized_keys in a container (replacing them).
function Rt:authorize(key, keys_text)
  local eof = "PVE_KEYS_" .. codec.random_hex(8)
  self:script(key, "set -e\numask 077\nmkdir -p /root/.ssh\ncat > /root/.ssh/authorized_keys <<'" .. eof .. "'\n"
    .. keys_text .. "\n" .. eof .. "\n", "writing authorized_keys")
end

--- Copies a sandbox into a new snapshot `snap` (templates, clones, PVE snapshots).
function Rt:snapshot(key, snap)
  local ok, err = self.sb:snapshot_instance(key, snap)
  if not ok then error(err, 0) end
end

function Rt:drop_snapshot(snap)
  self.sb:remove_snapshot(snap)
end

--- Starts sshd in sandbox `key` on addr:port; returns when it listens. `force` is a ForceCommand.
function Rt:start_sshd(key, addr, host_key, opts)
  opts = opts or {}
  self:stop_sshd(key)
  local lid = self.sb.instances[key]
  if not lid then errors.raise("EMULATOR_BACKEND", "no sandbox " .. key) end
  -- Started the way spawn would, but as a plain process: stopping the listener (stop_sshd, the
  -- /sshd fault) must leave its connections' processes alone, as a real sshd's restart does
  -- (a spawned handle's kill ends everything the command started).
  local popts = self.sb.provider.spawn_options(lid, { "/bin/sh", "-c", SSHD_LAUNCH, "sshd-launch",
    opts.run_dir or "/run/pve-ct", addr .. ":" .. self.ssh_port, opts.extra_keys_file or "", opts.force or "" })
  popts.stdin = "pipe"
  local h, serr = proc.spawn(popts)
  if not h then errors.raise("EMULATOR_BACKEND", "cannot start sshd in " .. key .. ": " .. tostring(serr)) end
  h:write(host_key)
  h:close_stdin()
  local rec = { handle = h, lines = {}, listening = false, token = task.token(), addr = addr }
  self.sshd[key] = rec
  rec.reader = task.spawn(function()
    local buf = ""
    while true do
      local kind, data = h:read(60000)
      if kind == "stdout" or kind == "stderr" then
        buf = buf .. data
        for line in buf:gmatch("([^\n]*)\n") do
          rec.lines[#rec.lines + 1] = line
          if #rec.lines > SSHD_LOG_LINES then table.remove(rec.lines, 1) end
          if line:find("Server listening on", 1, true) and not rec.listening then
            rec.listening = true
            task.wake(rec.token)
          end
        end
        buf = buf:match("[^\n]*$")
      elseif kind == "exit" then
        rec.exited = data
        task.wake(rec.token)
        return
      elseif kind == nil and data ~= nil then
        return
      end
    end
  end)
  local ok = pcall(task.with_timeout, SSHD_START_MS, task.await, rec.token)
  if not rec.listening then
    local why = rec.exited and ("exited " .. tostring(rec.exited)) or (ok and "no answer" or "timed out")
    errors.raise("EMULATOR_BACKEND", ("sshd did not start in %s (%s): %s"):format(key, why,
      table.concat(rec.lines, " | ")))
  end
end

--- Stops the sshd of sandbox `key` (if any).
function Rt:stop_sshd(key)
  local rec = self.sshd[key]
  if not rec then return end
  self.sshd[key] = nil
  pcall(rec.handle.kill, rec.handle, "KILL")
  pcall(rec.handle.close, rec.handle)
end

--- sshd's recent log lines in sandbox `key`.
function Rt:sshd_log(key)
  local rec = self.sshd[key]
  return rec and rec.lines or {}
end

--- Starts a container: its sshd on addr (after `ssh_delay_ms` when asked, in the background).
function Rt:start(key, addr, host_key, ssh_delay_ms)
  local function go()
    self:start_sshd(key, addr, host_key, { extra_keys_file = "/run/pve-ct/node_keys_file" })
  end
  -- The nodes' key: written into the tmpfs run dir before sshd starts.
  self:script(key, "set -e\numask 077\nmkdir -p /run/pve-ct\nprintf '%s\\n' " .. sh_quote(self.node_key.public)
    .. " > /run/pve-ct/node_keys_file\n", "writing the nodes' key")
  if ssh_delay_ms and ssh_delay_ms > 0 then
    self.sshd[key] = nil
    task.spawn(function()
      task.sleep(ssh_delay_ms)
      if self.started and self.started[key] then pcall(go) end
    end)
  else
    go()
  end
  self.started = self.started or {}
  self.started[key] = true
end

-- The sandbox goes first, then sshd's handle. sshd runs in a session of its own, so killing the
-- handle (the `galley __enter` that started it, outside the container) first left sshd to the
-- host's pid 1, and the container's end waited until pid 1 reaped it: 1-2 s a stop on a
-- machine whose init reaps late. Killed with the sandbox, sshd is reaped by its __enter.

--- Stops a container: kills every process (sshd included), keeps the files.
function Rt:stop(key)
  if self.started then self.started[key] = nil end
  self.sb:kill(key)
  self:stop_sshd(key)
end

--- Removes a container's sandbox and files.
function Rt:remove(key)
  if self.started then self.started[key] = nil end
  local ok, err = self.sb:remove_instance(key)
  self:stop_sshd(key)
  if not ok then error(err, 0) end
end

--- Boots a node's sandbox and its sshd (with `pct`).
function Rt:start_node(name, addr, host_key, authorized)
  local key = "node-" .. name
  self:create(key, nil)
  local eof = "PVE_NODE_" .. codec.random_hex(8)
  self:script(key, table.concat({
    "set -e", "umask 077", "mkdir -p /root/.ssh /root/.pve-node/bin",
    "cat > /root/.pve-node/id_ed25519 <<'" .. eof .. "'", self.node_key.private:gsub("\n$", ""), eof,
    "cat > /root/.pve-node/bin/pct <<'" .. eof .. "'", PCT, eof,
    "chmod 755 /root/.pve-node /root/.pve-node/bin /root/.pve-node/bin/pct",
    "printf '%s\\n' " .. sh_quote(name) .. " > /root/.pve-node/name",
    "printf '%s\\n' " .. sh_quote(tostring(self.ssh_port)) .. " > /root/.pve-node/port",
    "chmod 644 /root/.pve-node/name /root/.pve-node/port",
    ": > /root/.ssh/authorized_keys",
  }, "\n") .. "\n", "preparing node " .. name)
  self:node_authorize(name, authorized or "")
  self:node_map(name, {})
  self:start_sshd(key, addr, host_key, { run_dir = "/run/pve-node",
    force = 'PATH=/root/.pve-node/bin:$PATH; exec /bin/bash -c "${SSH_ORIGINAL_COMMAND:-exec /bin/bash -l}"' })
end

--- Adds public keys (lines) to root's authorized_keys on a node.
function Rt:node_authorize(name, keys_text)
  if keys_text == "" then return end
  local eof = "PVE_KEYS_" .. codec.random_hex(8)
  self:script("node-" .. name, "set -e\numask 077\ncat >> /root/.ssh/authorized_keys <<'" .. eof .. "'\n"
    .. keys_text:gsub("\n$", "") .. "\n" .. eof .. "\n", "authorizing a key on " .. name)
end

--- Tells a node's pct its containers: {vmid, addr, status, name} records.
function Rt:node_map(name, cts)
  local lid = self.sb.instances["node-" .. name]
  if not lid then return end
  local lines = {}
  for _, c in ipairs(cts) do
    lines[#lines + 1] = ("%d %s %s %s"):format(c.vmid, c.addr, c.status, c.name)
  end
  local path = self.sb:instance_dir("node-" .. name) .. "/home/.pve-node/cts"
  fs.write_atomic(path, table.concat(lines, "\n") .. (#lines > 0 and "\n" or ""), { mode = "644" })
end

--- Takes a running container's sshd down for `ms` (connections refused), then starts it again.
function Rt:sshd_down(key, addr, host_key, ms)
  self:stop_sshd(key)
  task.spawn(function()
    task.sleep(ms)
    if self.started and self.started[key] and not self.sshd[key] then
      pcall(self.start_sshd, self, key, addr, host_key, { extra_keys_file = "/run/pve-ct/node_keys_file" })
    end
  end)
end

--- Kills every sandbox.
function Rt:shutdown()
  for key in pairs(self.sshd) do self:stop_sshd(key) end
  self.sb:shutdown()
end

return M
