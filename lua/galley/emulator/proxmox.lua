--- galley.emulator.proxmox: an offline Proxmox VE (`galley emulate proxmox`), docs/emulator.md.
-- The REST API under /api2/json on 127.0.0.1 (two nodes, pve1 and pve2; LXC containers,
-- templates, snapshots, tasks with UPIDs; token and ticket auth), each container a
-- local-provider sandbox running a real sshd on its own loopback address (galley.emulator.
-- proxmox_ct). Shares the HTTP server (galley.httpd), the fault grammar and the request log's
-- form with the Morph emulator (galley.emulator), nothing else. Wire forms:
-- galley.emulator.proxmox_wire.
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local faults_mod = require("galley.emulator.faults")
local httpd = require("galley.core.httpd")
local json = require("galley.json")
local paths = require("galley.paths")
local runtime = require("galley.core.runtime")
local task = require("galley.task")
local wire = require("galley.emulator.proxmox_wire")
local ct_mod = require("galley.emulator.proxmox_ct")

local M = {}

M.USER = "root@pam"
M.TOKEN_ID = "root@pam!galley"
M.TOKEN_SECRET = "11111111-2222-4333-8444-555555555555"
M.PRIVSEP_TOKEN_ID = "root@pam!privsep"
M.PRIVSEP_SECRET = "99999999-2222-4333-8444-555555555555"
M.PASSWORD = "galley-dev-password"
M.VERSION = { version = "8.2.4", release = "8.2", repoid = "faa83925c9641325" }
M.DEFAULT_SSH_PORT = 2222
M.DEFAULT_TASK_MS = 200
M.DEFAULT_AUTH_DELAY_MS = 100
M.TICKET_TTL_S = 7200
M.LOG_LIMIT = 10000
M.LOG_PATH_LIMIT = 256
M.TASK_LIMIT = 2000

--- The vztmpl volumes of storage `local` on every node.
M.TEMPLATES = {
  { volid = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst", format = "tzst", size = 126049023,
    ostype = "debian" },
  { volid = "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst", format = "tzst", size = 141381554,
    ostype = "ubuntu" },
  { volid = "local:vztmpl/alpine-3.20-default_20240908_amd64.tar.xz", format = "txz", size = 3239884,
    ostype = "alpine" },
}

M.STORAGES = {
  { storage = "local", type = "dir", content = "vztmpl,iso,backup", total = 100 * 2 ^ 30, used = 12 * 2 ^ 30 },
  { storage = "local-lvm", type = "lvmthin", content = "rootdir,images", total = 400 * 2 ^ 30, used = 40 * 2 ^ 30 },
  -- (ZFS refuses to delete a base volume that linked clones still use; LVM-thin lets it go)
  { storage = "local-zfs", type = "zfspool", content = "rootdir,images", total = 200 * 2 ^ 30, used = 10 * 2 ^ 30 },
}

M.NODES = {
  { node = "pve1", maxmem = 32 * 2 ^ 30, mem = 8 * 2 ^ 30, maxcpu = 8 },
  { node = "pve2", maxmem = 16 * 2 ^ 30, mem = 12 * 2 ^ 30, maxcpu = 4 },
}

--- The Proxmox emulator's own fault actions (on top of the Morph emulator's).
M.FAULT_ACTIONS = {
  task_fail = {}, task_warn = {}, slow_task = { delay_ms = 1000 }, lock_timeout = { delay_ms = 0 }, lose = {},
  late_address = { delay_ms = 1000 }, ssh_refuse = { delay_ms = 1000 },
}

local fail, ok_reply = wire.fail, wire.ok
local null = json.null

local function storage_by_name(name)
  for _, s in ipairs(M.STORAGES) do if s.storage == name then return s end end
  return nil
end

local function template_by_volid(volid)
  for _, t in ipairs(M.TEMPLATES) do if t.volid == volid then return t end end
  return nil
end

---@class galley.emulator.Proxmox
local Emu = {}
Emu.__index = Emu

--- Creates the emulator (not yet listening).
---@param opts {state_dir: string, port?: integer, task_ms?: integer, auth_delay_ms?: integer, old_errors?: boolean,
---  ticket_ttl_s?: integer, ssh_port?: integer, address_base?: string, node_keys?: string[], faults?: (string|table)[],
---  latency_ms?: integer, verbose?: boolean, token_id?: string, token_secret?: string, password?: string,
---  privsep_secret?: string, runtime?: boolean}
---@return galley.emulator.Proxmox|nil
---@return galley.Error|nil err
function M.new(opts)
  assert(type(opts.state_dir) == "string", "proxmox.new: state_dir required")
  local dir_ok, dir_err = pcall(paths.private_dir, opts.state_dir)
  if not dir_ok then return nil, errors.wrap(dir_err, nil, "FILE_IO_ERROR") end
  local a, b
  if opts.address_base then
    a, b = tostring(opts.address_base):match("^(%d+)%.(%d+)$")
    a, b = tonumber(a), tonumber(b)
    if not a or a < 1 or a > 254 or b > 255 then
      return nil, errors.new("EMULATOR_BAD_OPTION", "address_base must be A.B (127.A.B.x; A 1..254, B 0..255)",
        { field = "address_base", hint = "e.g. --address-base 77.3" })
    end
  else
    a = math.random(64, 250)
    b = math.random(0, 255)
  end
  local self = setmetatable({
    opts = opts,
    task_ms = opts.task_ms or M.DEFAULT_TASK_MS,
    auth_delay_ms = opts.auth_delay_ms or M.DEFAULT_AUTH_DELAY_MS,
    ssh_port = opts.ssh_port or M.DEFAULT_SSH_PORT,
    prefix = { a, b },
    next_host = 0,
    cts = {},
    tasks = {},
    task_order = {},
    tickets = {},
    log = {},
    rejected = 0,
    faults = faults_mod.list(),
    nodes = {},
    next_pid = math.random(0x10000, 0x7ffff),
    stop_requested = false,
    tokens = {
      [opts.token_id or M.TOKEN_ID] = { secret = opts.token_secret or M.TOKEN_SECRET, privsep = false },
      [M.PRIVSEP_TOKEN_ID] = { secret = opts.privsep_secret or M.PRIVSEP_SECRET, privsep = true },
    },
    password = opts.password or M.PASSWORD,
  }, Emu)
  for i, n in ipairs(M.NODES) do
    self.nodes[n.node] = { node = n.node, index = i, maxmem = n.maxmem, mem = n.mem, maxcpu = n.maxcpu,
      addr = ("127.%d.%d.%d"):format(a, b, i) }
  end
  for _, spec in ipairs(opts.faults or {}) do
    local f, problem
    if type(spec) == "string" then f, problem = faults_mod.parse(spec, M.FAULT_ACTIONS)
    else f, problem = faults_mod.validate(spec, M.FAULT_ACTIONS) end
    if not f then return nil, errors.new("EMULATOR_BAD_FAULT", "bad fault: " .. problem) end
    self.faults:add(f)
  end
  if opts.runtime ~= false then
    local rt, err = ct_mod.new({ root = opts.state_dir, ssh_port = self.ssh_port })
    if not rt then return nil, err end
    self.rt = rt
  end
  return self
end

-- helpers ---------------------------------------------------------------------------------

function Emu:alloc_addr()
  local idx = self.next_host
  self.next_host = idx + 1
  local a, b = self.prefix[1], self.prefix[2]
  return ("127.%d.%d.%d"):format(a, (b + idx // 250) % 256, 5 + idx % 250)
end

local function hwaddr()
  local bytes = codec.random_bytes(3)
  return ("BC:24:11:%02X:%02X:%02X"):format(bytes:byte(1, 3))
end

--- The node named in a path: checked (400) and known (500).
function Emu:node_of(raw)
  local name = wire.unescape_segment(raw)
  local v, problem = wire.types.node(name)
  if not v then wire.param_fail({ node = problem }) end
  local n = self.nodes[name]
  if not n then fail(500, ("no such cluster node '%s'"):format(name)) end
  return n
end

--- The vmid in a path, checked (400).
local function vmid_of(raw)
  local v, problem = wire.types.vmid(wire.unescape_segment(raw))
  if not v then wire.param_fail({ vmid = problem }) end
  return v
end

--- The container `vmid` on `node`, or 500 "does not exist".
function Emu:ct_on(node, vmid)
  local ct = self.cts[vmid]
  if not ct or ct.node ~= node.node then
    fail(500, ("Configuration file 'nodes/%s/lxc/%d.conf' does not exist"):format(node.node, vmid))
  end
  return ct
end

local function check_lock(ct)
  if ct.lock then fail(500, ("CT %d is locked (%s)"):format(ct.vmid, ct.lock)) end
end

local function user_string(ident)
  return ident.tokenid and (ident.user .. "!" .. ident.tokenid) or ident.user
end

--- Tells the node's pct which containers it has.
function Emu:sync_node(node_name)
  if not self.rt then return end
  local list = {}
  for _, ct in pairs(self.cts) do
    if ct.node == node_name and not ct.lock_create then
      list[#list + 1] = { vmid = ct.vmid, addr = ct.addr, status = ct.status, name = ct.conf.hostname }
    end
  end
  table.sort(list, function(x, y) return x.vmid < y.vmid end)
  pcall(self.rt.node_map, self.rt, node_name, list)
end

-- tasks -----------------------------------------------------------------------------------

local function task_log(t, line)
  t.log[#t.log + 1] = line
end

--- Starts a PVE task: `work(t)` runs after --task-ms (plus a slow_task fault's delay); its error,
-- a task_fail fault or a DELETE of the task fails it (then `on_fail(t)` undoes what must be).
function Emu:new_task(ctx, node_name, kind, id, work, on_fail)
  self.next_pid = self.next_pid + 1
  local now = os.time()
  local upid = wire.upid(node_name, self.next_pid, self.next_pid * 7 % 0xffffff, now, kind, id, user_string(ctx.ident))
  local t = { upid = upid, node = node_name, pid = self.next_pid, pstart = self.next_pid * 7 % 0xffffff,
    starttime = now, type = kind, id = tostring(id or ""), user = ctx.ident.user, tokenid = ctx.ident.tokenid,
    status = "running", log = {}, token = task.token() }
  self.tasks[upid] = t
  self.task_order[#self.task_order + 1] = t
  if #self.task_order > M.TASK_LIMIT then
    local old = table.remove(self.task_order, 1)
    if old.status ~= "running" then self.tasks[old.upid] = nil end
  end
  local fault = ctx.fault
  local delay = self.task_ms + ((fault and fault.action == "slow_task") and fault.delay_ms or 0)
  task.spawn(function()
    local timer = task.spawn(function()
      task.sleep(delay)
      task.wake(t.token)
    end)
    task.await(t.token)
    timer:cancel()
    local ok, res
    if t.stop_requested then
      ok, res = false, "interrupted by signal"
    elseif fault and fault.action == "task_fail" then
      ok, res = false, "injected failure"
    else
      ok, res = pcall(work, t)
    end
    if not ok then
      local msg = type(res) == "table" and (res.message or tostring(res)) or tostring(res)
      msg = msg:gsub("\n.*", "")
      if on_fail then
        local uok, uerr = pcall(on_fail, t)
        if not uok then task_log(t, "cleanup failed: " .. tostring(uerr)) end
      end
      task_log(t, "TASK ERROR: " .. msg)
      t.exitstatus = msg
    elseif fault and fault.action == "task_warn" then
      task_log(t, "WARN: injected warning")
      task_log(t, "TASK WARNINGS: 1")
      t.exitstatus = "WARNINGS: 1"
    else
      task_log(t, "TASK OK")
      t.exitstatus = "OK"
    end
    t.status = "stopped"
    t.endtime = os.time()
  end)
  return t
end

local function task_status(t)
  local s = { upid = t.upid, node = t.node, pid = t.pid, pstart = t.pstart, starttime = t.starttime, type = t.type,
    id = t.id, user = t.user, tokenid = t.tokenid, status = t.status }
  if t.status == "stopped" then s.exitstatus = t.exitstatus end
  return s
end

-- containers ------------------------------------------------------------------------------

local function disk_size(rootfs)
  local g = rootfs and rootfs:match("size=(%d+)G")
  return (tonumber(g) or 8) * 2 ^ 30
end

local function ct_summary(ct, vmid_as_string)
  local conf = ct.conf
  local s = {
    vmid = vmid_as_string and tostring(ct.vmid) or ct.vmid, name = conf.hostname, status = ct.status, type = "lxc",
    maxmem = conf.memory * 1024 * 1024, maxswap = conf.swap * 1024 * 1024, maxdisk = disk_size(conf.rootfs),
    cpus = conf.cores, cpu = 0, disk = 0, diskread = 0, diskwrite = 0, netin = 0, netout = 0, swap = 0,
    mem = ct.status == "running" and 64 * 1024 * 1024 or 0,
    uptime = ct.status == "running" and math.max(0, os.time() - (ct.started_at or os.time())) or 0,
    tags = conf.tags, lock = ct.lock,
  }
  if ct.template then s.template = 1 end
  if ct.status == "running" then s.pid = ct.vmid * 100 + 1 end
  return s
end

local function ct_config(ct)
  local c = ct.conf
  local out = {}
  for k, v in pairs(c) do out[k] = v end
  if ct.lock then out.lock = ct.lock end
  if ct.template then out.template = 1 end
  local keys = {}
  for k in pairs(out) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(out[k]) end
  out.digest = codec.sha256(table.concat(parts, "\n")):sub(1, 40)
  return out
end

--- Starts the container's processes (its sshd); faults late_address / ssh_refuse apply.
function Emu:do_start(ct, fault)
  local now = runtime.now_ms()
  ct.addr_at = (fault and fault.action == "late_address") and (now + fault.delay_ms) or 0
  local ssh_delay = (fault and fault.action == "ssh_refuse") and fault.delay_ms or 0
  if self.rt then self.rt:start(ct.key, ct.addr, ct.host_key.private, ssh_delay) end
  ct.status = "running"
  ct.started_at = os.time()
  self:sync_node(ct.node)
end

function Emu:do_stop(ct)
  if self.rt then self.rt:stop(ct.key) end
  ct.status = "stopped"
  ct.started_at = nil
  self:sync_node(ct.node)
end

function Emu:remove_ct(ct)
  if self.rt then
    self.rt:remove(ct.key)
    for _, s in ipairs(ct.snapshots) do self.rt:drop_snapshot(s.key) end
    if ct.template then self.rt:drop_snapshot(ct.tpl_snap) end
  end
  if self.cts[ct.vmid] == ct then self.cts[ct.vmid] = nil end
  self:sync_node(ct.node)
end

function Emu:check_unused(vmid)
  local other = self.cts[vmid]
  if other then fail(500, ("CT %d already exists on node '%s'"):format(vmid, other.node)) end
end

--- Address and MAC from a parsed net0 (a static 127.x ip is used as the address).
function Emu:apply_net(ct, net)
  net.hwaddr = net.hwaddr or ct.hwaddr or hwaddr()
  net.type = net.type or "veth"
  ct.hwaddr = net.hwaddr
  local static = net.ip and net.ip:match("^(127%.%d+%.%d+%.%d+)/")
  if static then
    for _, other in pairs(self.cts) do
      if other ~= ct and other.addr == static then
        fail(500, ("address %s is used by CT %d"):format(static, other.vmid))
      end
    end
    ct.addr = static
  elseif not ct.addr or ct.static_addr then
    ct.addr = self:alloc_addr()
  end
  ct.static_addr = static ~= nil
  ct.conf.net0 = wire.format_net(net)
end

local function new_ct(vmid, node)
  return { vmid = vmid, node = node, status = "stopped", key = "ct-" .. vmid .. "-" .. codec.random_hex(3),
    snapshots = {}, conf = {} }
end

-- routes ----------------------------------------------------------------------------------

local R = {}

local CREATE_SCHEMA = {
  vmid = { "vmid", required = true }, ostemplate = { "volume", required = true }, hostname = { "hostname" },
  storage = { "storage" }, rootfs = { "rootfs" }, memory = { "memory" }, swap = { "swap" }, cores = { "cores" },
  net0 = { "net" }, ["ssh-public-keys"] = { "keys" }, password = { "password" }, description = { "text" },
  tags = { "tags" }, unprivileged = { "boolean" }, features = { "any" }, onboot = { "boolean" },
  start = { "boolean" }, arch = { "word" }, ostype = { "word" }, nameserver = { "any" }, searchdomain = { "any" },
  pool = { "word" }, force = { "boolean" }, ["ignore-unpack-errors"] = { "boolean" },
}

function R.create(self, ctx, node)
  local p = wire.check(ctx.params, CREATE_SCHEMA, { node = true })
  local vmid = p.vmid
  local tpl_store = storage_by_name(p.ostemplate.storage)
  if not tpl_store then fail(500, ("storage '%s' does not exist"):format(p.ostemplate.storage)) end
  local tpl = template_by_volid(p.ostemplate.volid)
  if not tpl then fail(500, ("volume '%s' does not exist"):format(p.ostemplate.volid)) end
  local storage = p.storage or (p.rootfs and p.rootfs.storage) or "local-lvm"
  local st = storage_by_name(storage)
  if not st then fail(500, ("storage '%s' does not exist"):format(storage)) end
  if not st.content:find("rootdir", 1, true) then
    fail(500, ("storage '%s' does not support container directories"):format(storage))
  end
  self:check_unused(vmid)
  local ct = new_ct(vmid, node.node)
  ct.conf = {
    arch = p.arch or "amd64", hostname = p.hostname or ("CT" .. vmid), memory = p.memory or 512,
    swap = p.swap or 512, cores = p.cores or 1, ostype = p.ostype or tpl.ostype,
    rootfs = ("%s:vm-%d-disk-0,size=%dG"):format(storage, vmid, math.floor(p.rootfs and p.rootfs.size or 8)),
    unprivileged = p.unprivileged or 0, description = p.description, tags = p.tags,
    features = p.features, onboot = p.onboot, nameserver = p.nameserver, searchdomain = p.searchdomain,
  }
  if p.tags == "" then ct.conf.tags = nil end
  self:apply_net(ct, p.net0 or assert(wire.parse_net("name=eth0,bridge=vmbr0,ip=dhcp")))
  ct.lock = "create"
  ct.lock_create = true
  self.cts[vmid] = ct
  local keys = ctx.params["ssh-public-keys"]
  local fault = ctx.fault
  local t = self:new_task(ctx, node.node, "vzcreate", vmid, function(t)
    task_log(t, ("extracting archive '/var/lib/vz/template/cache/%s'"):format(tpl.volid:match("[^/]+$")))
    if self.rt then
      ct.host_key = assert(self.rt:keygen("host-" .. ct.key))
      self.rt:create(ct.key, nil)
      if keys and keys ~= "" then self.rt:authorize(ct.key, keys) end
    else
      ct.host_key = { private = "", public = "" }
    end
    task_log(t, "Total bytes written: " .. tpl.size)
    ct.lock, ct.lock_create = nil, nil
    self:sync_node(ct.node)
    if p.start == 1 then self:do_start(ct, fault) end
  end, function()
    ct.lock, ct.lock_create = nil, nil
    if self.cts[vmid] == ct then pcall(self.remove_ct, self, ct) end
  end)
  return ok_reply(t.upid)
end

function R.list(self, _, node)
  local out = {}
  for _, ct in pairs(self.cts) do
    if ct.node == node.node then out[#out + 1] = ct_summary(ct, true) end
  end
  table.sort(out, function(x, y) return tonumber(x.vmid) < tonumber(y.vmid) end)
  return ok_reply(json.array(out))
end

function R.ct_index(self, _, node, vmid)
  self:ct_on(node, vmid)
  local dirs = {}
  for _, d in ipairs({ "config", "status", "snapshot", "interfaces", "clone", "template", "pending", "rrd" }) do
    dirs[#dirs + 1] = { subdir = d }
  end
  return ok_reply(json.array(dirs))
end

function R.current(self, _, node, vmid)
  local ct = self:ct_on(node, vmid)
  local s = ct_summary(ct, false)
  s.ha = { managed = 0 }
  return ok_reply(s)
end

function R.start(self, ctx, node, vmid)
  wire.check(ctx.params, { skiplock = { "boolean" }, debug = { "boolean" } }, { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if ct.template then fail(500, "you can't start a CT if it's a template") end
  if ct.status == "running" then fail(500, ("CT %d already running"):format(vmid)) end
  local fault = ctx.fault
  local t = self:new_task(ctx, node.node, "vzstart", vmid, function()
    if self.cts[vmid] ~= ct then error("CT " .. vmid .. " does not exist", 0) end
    if ct.status == "running" then return end
    self:do_start(ct, fault)
  end, function()
    if ct.status == "running" and self.cts[vmid] == ct then pcall(self.do_stop, self, ct) end
  end)
  return ok_reply(t.upid)
end

function R.stop(self, ctx, node, vmid, kind)
  wire.check(ctx.params, { skiplock = { "boolean" }, timeout = { "integer" }, forceStop = { "boolean" },
    ["overrule-shutdown"] = { "boolean" } }, { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if ct.status ~= "running" then fail(500, ("CT %d not running"):format(vmid)) end
  local t = self:new_task(ctx, node.node, kind == "shutdown" and "vzshutdown" or "vzstop", vmid, function()
    if self.cts[vmid] == ct and ct.status == "running" then self:do_stop(ct) end
  end)
  return ok_reply(t.upid)
end

function R.destroy(self, ctx, node, vmid)
  local p = wire.check(ctx.params, { purge = { "boolean" }, ["destroy-unreferenced-disks"] = { "boolean" },
    force = { "boolean" } }, { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if ct.status == "running" and p.force ~= 1 then fail(500, ("CT %d is running - destroy failed"):format(vmid)) end
  ct.lock = "destroyed"
  local t = self:new_task(ctx, node.node, "vzdestroy", vmid, function(t)
    -- PVE::Storage::vdisk_free refuses a base volume that linked clones still use, where the
    -- storage can tell (ZFS, directories; not LVM-thin)
    local base = ct.template and ct.conf.rootfs:match("^([^,]+)")
    local st = base and storage_by_name(base:match("^([^:]+)"))
    if st and st.type ~= "lvmthin" then
      for _, other in pairs(self.cts) do
        if other.linked_base == ct then error(("base volume '%s' is still in use by linked clones"):format(base), 0) end
      end
    end
    if ct.status == "running" then self:do_stop(ct) end
    self:remove_ct(ct)
    task_log(t, ("Logical volume \"vm-%d-disk-0\" successfully removed."):format(vmid))
    if p.purge == 1 then task_log(t, ("purging CT %d from related configurations.."):format(vmid)) end
  end, function()
    if self.cts[vmid] == ct then ct.lock = nil end
  end)
  return ok_reply(t.upid)
end

function R.get_config(self, ctx, node, vmid)
  wire.check(ctx.params, { current = { "boolean" }, snapshot = { "snapname" } }, { node = true, vmid = true })
  return ok_reply(ct_config(self:ct_on(node, vmid)))
end

local PUT_SCHEMA = {
  description = { "text" }, tags = { "tags" }, net0 = { "net" }, hostname = { "hostname" }, memory = { "memory" },
  swap = { "swap" }, cores = { "cores" }, onboot = { "boolean" }, delete = { "any" }, digest = { "word" },
  nameserver = { "any" }, searchdomain = { "any" }, features = { "any" }, revert = { "any" },
}
local DELETABLE = { description = true, tags = true, onboot = true, nameserver = true, searchdomain = true,
  features = true, net0 = true }

function R.put_config(self, ctx, node, vmid)
  local p = wire.check(ctx.params, PUT_SCHEMA, { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if p.digest and p.digest ~= ct_config(ct).digest then
    fail(500, "detected modified configuration - file changed by other user? Try again.")
  end
  local errs = {}
  for key in (p.delete or ""):gmatch("[^,;%s]+") do
    if not DELETABLE[key] then errs.delete = ("unable to delete '%s'"):format(key) end
  end
  if next(errs) then wire.param_fail(errs) end
  for key in (p.delete or ""):gmatch("[^,;%s]+") do ct.conf[key] = nil end
  for _, k in ipairs({ "description", "hostname", "memory", "swap", "cores", "onboot", "nameserver", "searchdomain",
    "features" }) do
    if p[k] ~= nil then ct.conf[k] = p[k] end
  end
  if p.tags ~= nil then ct.conf.tags = p.tags ~= "" and p.tags or nil end
  if p.net0 then
    if ct.status == "running" then
      local old = wire.parse_net(ct.conf.net0 or "name=eth0")
      if old and (old.ip or "dhcp") ~= (p.net0.ip or "dhcp") then
        fail(500, "the galley emulator cannot change the address of a running CT: stop it first")
      end
    end
    self:apply_net(ct, p.net0)
    self:sync_node(ct.node)
  end
  return ok_reply(null)
end

function R.interfaces(self, _, node, vmid)
  local ct = self:ct_on(node, vmid)
  if ct.status ~= "running" then fail(500, ("CT %d not running"):format(vmid)) end
  local eth = { name = "eth0", hwaddr = ct.hwaddr }
  if runtime.now_ms() >= (ct.addr_at or 0) then
    eth.inet = ct.addr .. "/8"
    eth["inet6"] = "fe80::be24:11ff:fe00:" .. ("%x"):format(ct.vmid % 0x10000) .. "/64"
  end
  return ok_reply(json.array({
    { name = "lo", hwaddr = "00:00:00:00:00:00", inet = "127.0.0.1/8", inet6 = "::1/128" },
    eth,
  }))
end

function R.template(self, ctx, node, vmid)
  wire.check(ctx.params, {}, { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if ct.template then fail(500, ("CT %d is already a template"):format(vmid)) end
  if ct.status == "running" then fail(500, ("CT %d is running - convert to template failed"):format(vmid)) end
  local snap = ct.key .. "-tpl"
  if self.rt then
    local ok, err = pcall(self.rt.snapshot, self.rt, ct.key, snap)
    if not ok then fail(500, "converting to a template failed: " .. tostring(err)) end
  end
  ct.tpl_snap = snap
  ct.template = true
  ct.conf.rootfs = ct.conf.rootfs:gsub("vm%-(%d+)%-disk", "base-%1-disk")
  return ok_reply(null)
end

local CLONE_SCHEMA = {
  newid = { "vmid", required = true }, hostname = { "hostname" }, description = { "text" }, full = { "boolean" },
  storage = { "storage" }, target = { "node" }, pool = { "word" }, snapname = { "snapname" }, bwlimit = { "integer" },
}

function R.clone(self, ctx, node, vmid)
  local p = wire.check(ctx.params, CLONE_SCHEMA, { node = true, vmid = true })
  local src = self:ct_on(node, vmid)
  check_lock(src)
  local target = p.target and self.nodes[p.target]
  if p.target and not target then fail(500, ("no such cluster node '%s'"):format(p.target)) end
  target = target or node
  if not src.template and p.full ~= 1 then
    wire.param_fail({ full = "linked clones need a template: set full=1 to clone a container" })
  end
  if p.storage then
    local st = storage_by_name(p.storage)
    if not st then fail(500, ("storage '%s' does not exist"):format(p.storage)) end
  end
  if target ~= node and not src.template and src.status == "running" then
    fail(500, "cannot clone a running CT to another node")
  end
  local newid = p.newid
  self:check_unused(newid)
  local ct = new_ct(newid, target.node)
  for k, v in pairs(src.conf) do ct.conf[k] = v end
  ct.conf.hostname = p.hostname or ("CT" .. newid)
  if p.description then ct.conf.description = p.description end
  ct.conf.rootfs = ("%s:vm-%d-disk-0,size=%dG"):format(p.storage or (src.conf.rootfs:match("^([^:]+)")), newid,
    disk_size(src.conf.rootfs) // 2 ^ 30)
  local net = wire.parse_net(src.conf.net0 or "name=eth0,bridge=vmbr0,ip=dhcp") or {}
  net.hwaddr = nil
  if net.ip and net.ip ~= "dhcp" and net.ip ~= "manual" then net.ip = "dhcp" end
  self:apply_net(ct, net)
  ct.lock = "create"
  ct.lock_create = true
  if src.template and p.full ~= 1 then ct.linked_base = src end
  self.cts[newid] = ct
  local t = self:new_task(ctx, node.node, "vzclone", vmid, function(t)
    task_log(t, ("create %s clone of CT %d"):format(src.template and p.full ~= 1 and "linked" or "full", vmid))
    if self.rt then
      ct.host_key = assert(self.rt:keygen("host-" .. ct.key))
      if src.template then
        self.rt:create(ct.key, src.tpl_snap)
      else
        local snap = ct.key .. "-src"
        self.rt:snapshot(src.key, snap)
        local ok, err = pcall(self.rt.create, self.rt, ct.key, snap)
        self.rt:drop_snapshot(snap)
        if not ok then error(err, 0) end
      end
    else
      ct.host_key = { private = "", public = "" }
    end
    ct.lock, ct.lock_create = nil, nil
    self:sync_node(ct.node)
  end, function()
    ct.lock, ct.lock_create = nil, nil
    if self.cts[newid] == ct then pcall(self.remove_ct, self, ct) end
  end)
  return ok_reply(t.upid)
end

function R.snapshots(self, _, node, vmid)
  local ct = self:ct_on(node, vmid)
  local out, parent = {}, nil
  for _, s in ipairs(ct.snapshots) do
    out[#out + 1] = { name = s.name, description = s.description or "", snaptime = s.snaptime, parent = parent }
    parent = s.name
  end
  out[#out + 1] = { name = "current", description = "You are here!", parent = parent,
    running = ct.status == "running" and 1 or 0 }
  return ok_reply(json.array(out))
end

local function find_snap(ct, name)
  for i, s in ipairs(ct.snapshots) do if s.name == name then return s, i end end
  return nil
end

function R.snapshot_create(self, ctx, node, vmid)
  local p = wire.check(ctx.params, { snapname = { "snapname", required = true }, description = { "text" } },
    { node = true, vmid = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  if p.snapname == "current" or find_snap(ct, p.snapname) then
    fail(500, ("snapshot name '%s' already used"):format(p.snapname))
  end
  ct.lock = "snapshot"
  local t = self:new_task(ctx, node.node, "vzsnapshot", vmid, function()
    local key = ct.key .. "-snap-" .. p.snapname
    if self.rt then self.rt:snapshot(ct.key, key) end
    ct.snapshots[#ct.snapshots + 1] = { name = p.snapname, description = p.description, snaptime = os.time(),
      key = key }
    ct.lock = nil
  end, function() ct.lock = nil end)
  return ok_reply(t.upid)
end

function R.snapshot_index(self, _, node, vmid, name)
  local ct = self:ct_on(node, vmid)
  if not find_snap(ct, name) then fail(500, ("snapshot '%s' does not exist"):format(name)) end
  return ok_reply(json.array({ { rel = "rollback" }, { rel = "config" } }))
end

function R.snapshot_delete(self, ctx, node, vmid, name)
  wire.check(ctx.params, { force = { "boolean" } }, { node = true, vmid = true, snapname = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  local s = find_snap(ct, name)
  if not s then fail(500, ("snapshot '%s' does not exist"):format(name)) end
  ct.lock = "snapshot-delete"
  local t = self:new_task(ctx, node.node, "vzdelsnapshot", vmid, function()
    local _, i = find_snap(ct, name)
    if i then table.remove(ct.snapshots, i) end
    if self.rt then self.rt:drop_snapshot(s.key) end
    ct.lock = nil
  end, function() ct.lock = nil end)
  return ok_reply(t.upid)
end

function R.rollback(self, ctx, node, vmid, name)
  wire.check(ctx.params, { start = { "boolean" } }, { node = true, vmid = true, snapname = true })
  local ct = self:ct_on(node, vmid)
  check_lock(ct)
  local s = find_snap(ct, name)
  if not s then fail(500, ("snapshot '%s' does not exist"):format(name)) end
  ct.lock = "rollback"
  local t = self:new_task(ctx, node.node, "vzrollback", vmid, function()
    if ct.status == "running" then self:do_stop(ct) end
    if self.rt then
      self.rt:remove(ct.key)
      self.rt:create(ct.key, s.key)
    end
    ct.lock = nil
  end, function() ct.lock = nil end)
  return ok_reply(t.upid)
end

-- nodes, cluster, storage, tasks

function R.version()
  return ok_reply(M.VERSION)
end

function R.nodes()
  local out = {}
  for _, n in ipairs(M.NODES) do
    out[#out + 1] = { node = n.node, status = "online", type = "node", id = "node/" .. n.node, level = "",
      maxmem = n.maxmem, mem = n.mem, maxcpu = n.maxcpu, cpu = 0.02, maxdisk = 100 * 2 ^ 30, disk = 12 * 2 ^ 30,
      uptime = 86400 }
  end
  return ok_reply(json.array(out))
end

function R.node_index()
  local dirs = {}
  for _, d in ipairs({ "lxc", "status", "storage", "tasks", "version" }) do dirs[#dirs + 1] = { name = d } end
  return ok_reply(json.array(dirs))
end

function R.node_status(_, _, node)
  local n = M.NODES[node.index]
  return ok_reply({ memory = { total = n.maxmem, used = n.mem, free = n.maxmem - n.mem }, cpu = 0.02, uptime = 86400,
    cpuinfo = { cpus = n.maxcpu, sockets = 1, model = "galley emulator" },
    pveversion = "pve-manager/8.2.4/faa83925c9641325",
    kversion = "Linux 6.8.12-1-pve" })
end

function R.cluster_status(self)
  local out = { { type = "cluster", id = "cluster", name = "galley", nodes = #M.NODES, quorate = 1, version = 2 } }
  for i, n in ipairs(M.NODES) do
    out[#out + 1] = { type = "node", id = "node/" .. n.node, name = n.node, ip = self.nodes[n.node].addr, nodeid = i,
      online = 1, ["local"] = i == 1 and 1 or 0, level = "" }
  end
  return ok_reply(json.array(out))
end

function R.nextid(self, ctx)
  local p = wire.check(ctx.params, { vmid = { "vmid" } })
  if p.vmid then
    if self.cts[p.vmid] then wire.param_fail({ vmid = ("VM %d already exists"):format(p.vmid) }) end
    return ok_reply(tostring(p.vmid))
  end
  local id = 100
  while self.cts[id] do id = id + 1 end
  return ok_reply(tostring(id))
end

function R.resources(self, ctx)
  local p = wire.check(ctx.params, { type = { "word" } })
  local out = {}
  if not p.type or p.type == "vm" then
    for _, ct in pairs(self.cts) do
      local s = ct_summary(ct, false)
      s.id = "lxc/" .. ct.vmid
      s.node = ct.node
      s.template = ct.template and 1 or 0
      out[#out + 1] = s
    end
    table.sort(out, function(x, y) return x.vmid < y.vmid end)
  end
  if not p.type or p.type == "node" then
    for _, n in ipairs(M.NODES) do
      out[#out + 1] = { id = "node/" .. n.node, type = "node", node = n.node, status = "online", maxmem = n.maxmem,
        mem = n.mem, maxcpu = n.maxcpu }
    end
  end
  if not p.type or p.type == "storage" then
    for _, n in ipairs(M.NODES) do
      for _, s in ipairs(M.STORAGES) do
        out[#out + 1] = { id = "storage/" .. n.node .. "/" .. s.storage, type = "storage", node = n.node,
          storage = s.storage, status = "available", content = s.content, maxdisk = s.total, disk = s.used }
      end
    end
  end
  return ok_reply(json.array(out))
end

function R.storages(_, ctx)
  local p = wire.check(ctx.params, { content = { "word" }, enabled = { "boolean" } }, { node = true })
  local out = {}
  for _, s in ipairs(M.STORAGES) do
    if not p.content or s.content:find(p.content, 1, true) then
      out[#out + 1] = { storage = s.storage, type = s.type, content = s.content, active = 1, enabled = 1, shared = 0,
        total = s.total, used = s.used, avail = s.total - s.used, used_fraction = s.used / s.total }
    end
  end
  return ok_reply(json.array(out))
end

function R.storage_content(self, ctx, node, storage)
  local p = wire.check(ctx.params, { content = { "word" }, vmid = { "vmid" } }, { node = true, storage = true })
  local st = storage_by_name(storage)
  if not st then fail(500, ("storage '%s' does not exist"):format(storage)) end
  local out = {}
  if st.storage == "local" and (not p.content or p.content == "vztmpl") then
    for _, t in ipairs(M.TEMPLATES) do
      out[#out + 1] = { volid = t.volid, content = "vztmpl", format = t.format, size = t.size, ctime = 1725800000 }
    end
  end
  if st.storage ~= "local" and (not p.content or p.content == "rootdir") then
    for _, ct in pairs(self.cts) do
      local vol = ct.conf.rootfs:match("^([^,]+)")
      if ct.node == node.node and vol:match("^([^:]+)") == st.storage and (not p.vmid or p.vmid == ct.vmid) then
        out[#out + 1] = { volid = vol, content = "rootdir", format = "raw", size = disk_size(ct.conf.rootfs),
          vmid = ct.vmid }
      end
    end
  end
  return ok_reply(json.array(out))
end

function R.tasks(self, ctx, node)
  local p = wire.check(ctx.params, { start = { "integer" }, limit = { "integer" }, vmid = { "vmid" },
    source = { "word" }, typefilter = { "word" }, errors = { "boolean" } }, { node = true })
  local out = {}
  for i = #self.task_order, 1, -1 do
    local t = self.task_order[i]
    if t.node == node.node and (not p.vmid or t.id == tostring(p.vmid))
      and (not p.typefilter or t.type == p.typefilter) then
      out[#out + 1] = { upid = t.upid, node = t.node, pid = t.pid, pstart = t.pstart, starttime = t.starttime,
        type = t.type, id = t.id, user = t.user, tokenid = t.tokenid, endtime = t.endtime,
        status = t.status == "stopped" and t.exitstatus or nil }
    end
  end
  local start, limit = p.start or 0, p.limit or 50
  local page = {}
  for i = start + 1, math.min(#out, start + limit) do page[#page + 1] = out[i] end
  return ok_reply(json.array(page), { total = #out })
end

function Emu:task_of(node, raw)
  local upid = wire.unescape_segment(raw)
  local u = wire.parse_upid(upid)
  if not u then wire.param_fail({ upid = "unable to parse worker upid '" .. upid .. "'" }) end
  local t = self.tasks[upid]
  if not t or t.node ~= node.node then fail(500, ("no such task '%s'"):format(upid)) end
  return t
end

function R.task_index(self, _, node, upid)
  self:task_of(node, upid)
  return ok_reply(json.array({ { name = "log" }, { name = "status" } }))
end

function R.task_status(self, _, node, upid)
  return ok_reply(task_status(self:task_of(node, upid)))
end

function R.task_log(self, ctx, node, upid)
  local p = wire.check(ctx.params, { start = { "integer" }, limit = { "integer" }, download = { "boolean" } },
    { node = true, upid = true })
  local t = self:task_of(node, upid)
  local start, limit = p.start or 0, p.limit or 50
  local out = {}
  for i = start + 1, math.min(#t.log, start + limit) do out[#out + 1] = { n = i, t = t.log[i] } end
  if #t.log == 0 and t.status == "running" then out[1] = { n = 1, t = "no content" } end
  return ok_reply(json.array(out), { total = math.max(#t.log, 1) })
end

function R.task_stop(self, _, node, upid)
  local t = self:task_of(node, upid)
  if t.status == "running" and not t.stop_requested then
    t.stop_requested = true
    task.wake(t.token)
  end
  return ok_reply(null)
end

function R.ticket(self, ctx)
  local p = wire.check(ctx.params, { username = { "any", required = true }, password = { "any", required = true },
    realm = { "word" }, otp = { "any" }, path = { "any" }, privs = { "any" }, ["new-format"] = { "boolean" } })
  local user = p.username
  if p.realm and not user:find("@", 1, true) then user = user .. "@" .. p.realm end
  local renewing = self.tickets[p.password]
  local valid = user == M.USER and (codec.equal(p.password, self.password)
    or (renewing and renewing.user == user and renewing.expires > os.time()))
  if not valid then
    runtime.sleep_ms(self.auth_delay_ms)
    fail(401, "authentication failure")
  end
  local now = os.time()
  for k, t in pairs(self.tickets) do
    if t.expires <= now then self.tickets[k] = nil end
  end
  local ticket = ("PVE:%s:%08X::%s"):format(user, now, codec.base64_encode(codec.random_bytes(48)))
  local csrf = ("%08X:%s"):format(now, codec.base64_encode(codec.random_bytes(32)):gsub("=+$", ""))
  self.tickets[ticket] = { user = user, csrf = csrf, expires = now + (self.opts.ticket_ttl_s or M.TICKET_TTL_S) }
  return ok_reply({ username = user, ticket = ticket, CSRFPreventionToken = csrf,
    cap = { vms = { ["VM.Allocate"] = 1, ["VM.PowerMgmt"] = 1 }, nodes = { ["Sys.Audit"] = 1 } } })
end

-- The route table: method, pattern over the path below /api2/json, handler, privilege (for
-- changes; a privilege-separated token without ACLs is refused them), ACL path builder.
local VM = "^/nodes/([^/]+)/lxc/([^/]+)"
local ROUTES = {
  { "GET", "^/version$", R.version },
  { "POST", "^/access/ticket$", R.ticket, public = true },
  { "GET", "^/nodes$", R.nodes },
  { "GET", "^/cluster/status$", R.cluster_status },
  { "GET", "^/cluster/nextid$", R.nextid },
  { "GET", "^/cluster/resources$", R.resources },
  { "GET", "^/nodes/([^/]+)$", R.node_index, node = true },
  { "GET", "^/nodes/([^/]+)/status$", R.node_status, node = true },
  { "GET", "^/nodes/([^/]+)/storage$", R.storages, node = true },
  { "GET", "^/nodes/([^/]+)/storage/([^/]+)/content$", R.storage_content, node = true },
  { "GET", "^/nodes/([^/]+)/lxc$", R.list, node = true },
  { "POST", "^/nodes/([^/]+)/lxc$", R.create, node = true, priv = "VM.Allocate", acl = "vmid" },
  { "GET", VM .. "$", R.ct_index, vm = true },
  { "DELETE", VM .. "$", R.destroy, vm = true, priv = "VM.Allocate" },
  { "GET", VM .. "/status/current$", R.current, vm = true },
  { "POST", VM .. "/status/start$", R.start, vm = true, priv = "VM.PowerMgmt" },
  { "POST", VM .. "/status/stop$", function(s, c, n, v) return R.stop(s, c, n, v, "stop") end, vm = true,
    priv = "VM.PowerMgmt" },
  { "POST", VM .. "/status/shutdown$", function(s, c, n, v) return R.stop(s, c, n, v, "shutdown") end, vm = true,
    priv = "VM.PowerMgmt" },
  { "GET", VM .. "/config$", R.get_config, vm = true },
  { "PUT", VM .. "/config$", R.put_config, vm = true, priv = "VM.Config.Options" },
  { "GET", VM .. "/interfaces$", R.interfaces, vm = true },
  { "POST", VM .. "/template$", R.template, vm = true, priv = "VM.Allocate" },
  { "POST", VM .. "/clone$", R.clone, vm = true, priv = "VM.Clone" },
  { "GET", VM .. "/snapshot$", R.snapshots, vm = true },
  { "POST", VM .. "/snapshot$", R.snapshot_create, vm = true, priv = "VM.Snapshot" },
  { "GET", VM .. "/snapshot/([^/]+)$", R.snapshot_index, vm = true },
  { "DELETE", VM .. "/snapshot/([^/]+)$", R.snapshot_delete, vm = true, priv = "VM.Snapshot" },
  { "POST", VM .. "/snapshot/([^/]+)/rollback$", R.rollback, vm = true, priv = "VM.Snapshot.Rollback" },
  { "GET", "^/nodes/([^/]+)/tasks$", R.tasks, node = true },
  { "GET", "^/nodes/([^/]+)/tasks/([^/]+)$", R.task_index, node = true },
  { "DELETE", "^/nodes/([^/]+)/tasks/([^/]+)$", R.task_stop, node = true, priv = "Sys.Modify" },
  { "GET", "^/nodes/([^/]+)/tasks/([^/]+)/status$", R.task_status, node = true },
  { "GET", "^/nodes/([^/]+)/tasks/([^/]+)/log$", R.task_log, node = true },
}

-- dispatch --------------------------------------------------------------------------------

--- Who sent the request: an identity, or nil and PVE's 401 message.
function Emu:authenticate(req)
  local h = req.headers.authorization
  if h then
    local id, secret = h:match("^PVEAPIToken[=:](.-)=(%S+)%s*$")
    local tok = id and self.tokens[id]
    if not tok or not codec.equal(tok.secret, secret) then return nil, "invalid token value!" end
    local user, tokname = id:match("^(.-)!(.+)$")
    return { user = user, tokenid = tokname, privsep = tok.privsep }
  end
  local cookie = req.headers.cookie
  local ticket = cookie and cookie:match("PVEAuthCookie=([^;%s]+)")
  if not ticket then return nil, "No ticket" end
  ticket = wire.unescape_segment(ticket)
  local t = self.tickets[ticket]
  if not t or t.expires <= os.time() then return nil, "permission denied - invalid PVE ticket" end
  if req.method ~= "GET" and req.headers.csrfpreventiontoken ~= t.csrf then
    return nil, "Permission denied - invalid csrf token"
  end
  return { user = t.user }
end

local function find_route(method, path)
  local path_known = false
  for _, r in ipairs(ROUTES) do
    local caps = table.pack(path:match(r[2]))
    if caps[1] ~= nil or path:match(r[2]) then
      path_known = true
      if r[1] == method then return r, caps end
    end
  end
  return nil, path_known
end

function Emu:serve(req, rel, fault)
  local ok, resp = pcall(function()
    local route, caps = find_route(req.method, rel)
    local ident
    if not (route and route.public) then
      local why
      ident, why = self:authenticate(req)
      if not ident then
        if self.auth_delay_ms > 0 then runtime.sleep_ms(self.auth_delay_ms) end
        fail(401, why)
      end
    end
    if not route then fail(501, ("Method '%s %s' not implemented"):format(req.method, rel)) end
    local params = wire.params(req)
    local args = {}
    if route.node or route.vm then
      args[1] = self:node_of(caps[1])
      for i = 2, caps.n do args[i] = wire.unescape_segment(caps[i]) end
      if route.vm then args[2] = vmid_of(caps[2]) end
    end
    if route.priv and ident and ident.privsep then
      local acl
      if route.vm then acl = "/vms/" .. args[2]
      elseif route.acl == "vmid" then acl = "/vms/" .. (params.vmid or "")
      else acl = "/nodes/" .. args[1].node end
      fail(403, ("Permission check failed (%s, %s)"):format(acl, route.priv))
    end
    return route[3](self, { req = req, params = params, ident = ident, fault = fault }, table.unpack(args))
  end)
  if ok then return resp end
  if type(resp) == "table" and resp.pve_error then
    return wire.error_response(resp.status, resp.message, resp.errors, self.opts.old_errors)
  end
  -- A failure of the emulator itself (a sandbox that would not start...): PVE's 500 shape, and
  -- the details on stderr.
  io.stderr:write("galley emulate proxmox: ", req.method, " ", rel, ": ", tostring(resp), "\n")
  local msg = type(resp) == "table" and resp.message or tostring(resp)
  return wire.error_response(500, "emulator failure: " .. tostring(msg):gsub("\n.*", ""), nil, self.opts.old_errors)
end

function Emu:record(entry)
  if #entry.path > M.LOG_PATH_LIMIT then entry.path = entry.path:sub(1, M.LOG_PATH_LIMIT) end
  if entry.status == 401 then self.rejected = self.rejected + 1 end
  local log = self.log
  log[#log + 1] = entry
  if #log > M.LOG_LIMIT then table.remove(log, 1) end
  if self.opts.verbose then
    io.stderr:write(("emulate proxmox: %s %s -> %d (%d ms, conn %d%s)\n"):format(entry.method, entry.path,
      entry.status, entry.ms, entry.conn, entry.fault and (", fault " .. entry.fault) or ""))
  end
end

local TASK_FAULTS = { task_fail = true, task_warn = true, slow_task = true, late_address = true, ssh_refuse = true }

--- Answers one request below /api2/json (`rel` starts with "/").
function Emu:handle_api(req, rel)
  local t0 = runtime.now_ms()
  if (self.opts.latency_ms or 0) > 0 then runtime.sleep_ms(self.opts.latency_ms) end
  local fault = self.faults:take(req.method, rel)
  local action = fault and fault.action
  local resp
  if action == "stall" then runtime.sleep_ms(fault.delay_ms) end
  if action == "status" then
    resp = wire.error_response(fault.status, "injected fault: status " .. fault.status, nil, self.opts.old_errors)
    if fault.retry_after then resp.headers["Retry-After"] = tostring(fault.retry_after) end
  elseif action == "reset" then
    resp = { reset = true }
  elseif action == "lock_timeout" then
    if fault.delay_ms > 0 then runtime.sleep_ms(fault.delay_ms) end
    local p = wire.parse_form(req.raw_query)
    for k, v in pairs(wire.parse_form(req.body)) do p[k] = v end
    local vmid = rel:match("/lxc/(%d+)") or p.vmid or p.newid or "0"
    resp = wire.error_response(500, ("can't lock file '/run/lock/lxc/pve-config-%s.lock' - got timeout"):format(vmid),
      nil, self.opts.old_errors)
  else
    resp = self:serve(req, rel, (fault and TASK_FAULTS[action]) and fault or nil)
    if action == "lose" or action == "reset_after" then
      resp = { reset = true }
    elseif action == "delay" then
      runtime.sleep_ms(fault.delay_ms)
    elseif action == "malformed" then
      resp.status, resp.reason = 200, nil
      resp.body = "{malformed" .. (resp.body or "")
    elseif action == "truncate" then
      resp.truncate = fault.bytes or #(resp.body or "") // 2
    end
  end
  self:record({ method = req.method, path = rel, status = resp.reset and 0 or resp.status,
    ms = runtime.now_ms() - t0, conn = req.conn, fault = action })
  return resp
end

function Emu:state()
  local cts = {}
  for _, ct in pairs(self.cts) do
    cts[#cts + 1] = { vmid = ct.vmid, node = ct.node, status = ct.status, lock = ct.lock, template = ct.template,
      addr = ct.addr, hostname = ct.conf.hostname, sandbox = ct.key,
      host_key = ct.host_key and ct.host_key.public or nil,
      dir = self.rt and self.rt.sb.instances[ct.key] and self.rt.sb:instance_dir(ct.key) or nil,
      sshd_log = self.rt and json.array(self.rt:sshd_log(ct.key)) or nil,
      snapshots = json.array((function()
        local names = {}
        for _, s in ipairs(ct.snapshots) do names[#names + 1] = s.name end
        return names
      end)()) }
  end
  table.sort(cts, function(x, y) return x.vmid < y.vmid end)
  local nodes = {}
  for _, n in ipairs(M.NODES) do
    local node = self.nodes[n.node]
    nodes[#nodes + 1] = { node = n.node, addr = node.addr, host_key = node.host_key and node.host_key.public or nil,
      sshd_log = self.rt and json.array(self.rt:sshd_log("node-" .. n.node)) or nil }
  end
  local running = 0
  for _, t in pairs(self.tasks) do if t.status == "running" then running = running + 1 end end
  return {
    containers = json.array(cts), nodes = json.array(nodes), tasks = { running = running, total = #self.task_order },
    faults = json.array(self.faults:describe()),
    options = { port = self.server and self.server:port() or self.opts.port or 0, state_dir = self.opts.state_dir,
      task_ms = self.task_ms, auth_delay_ms = self.auth_delay_ms, ssh_port = self.ssh_port,
      address_base = ("%d.%d"):format(self.prefix[1], self.prefix[2]), old_errors = self.opts.old_errors == true },
  }
end

local function control_reply(status, body)
  return { status = status, headers = { ["Content-Type"] = "application/json" }, body = json.encode(body) }
end

--- Control routes under /_emulator (a full-privilege token or ticket; never logged or faulted).
function Emu:handle_control(req, path)
  local ident, why = self:authenticate(req)
  if not ident or ident.privsep then
    return control_reply(401, { message = why or "a privilege-separated token cannot use control routes" })
  end
  local m = req.method
  if path == "/log" then
    if m == "GET" then
      return control_reply(200, { object = "list", data = json.array(table.move(self.log, 1, #self.log, 1, {})),
        rejected = self.rejected + (self.server and self.server:stats().unauthorized or 0),
        server = self.server and self.server:stats() or nil })
    elseif m == "DELETE" then
      self.log = {}
      return { status = 204, headers = {}, body = "" }
    end
  elseif path == "/state" and m == "GET" then
    return control_reply(200, self:state())
  elseif path == "/faults" then
    if m == "GET" then return control_reply(200, { object = "list", data = json.array(self.faults:describe()) }) end
    if m == "DELETE" then
      self.faults:clear()
      return { status = 204, headers = {}, body = "" }
    end
    if m == "POST" then
      local okd, body = pcall(json.decode, req.body)
      if not okd or type(body) ~= "table" then
        return control_reply(422, { message = "body must be a fault or an array" })
      end
      local list = body[1] ~= nil and body or { body }
      local valid = {}
      for _, spec in ipairs(list) do
        local f, problem = faults_mod.validate(spec, M.FAULT_ACTIONS)
        if not f then return control_reply(422, { message = problem }) end
        valid[#valid + 1] = f
      end
      for _, f in ipairs(valid) do self.faults:add(f) end
      return control_reply(200, { object = "list", data = json.array(self.faults:describe()) })
    end
  elseif path == "/node-keys" and m == "POST" then
    local keys = req.body or ""
    if not keys:match("^ssh%-") and not keys:match("^ecdsa%-") then
      return control_reply(422, { message = "body must be OpenSSH public key lines" })
    end
    if self.rt then
      for _, n in ipairs(M.NODES) do self.rt:node_authorize(n.node, keys) end
    end
    return control_reply(200, { message = "authorized" })
  elseif path == "/sshd" and m == "POST" then
    local okd, body = pcall(json.decode, req.body)
    local ct = okd and type(body) == "table" and self.cts[math.tointeger(body.vmid) or -1]
    local ms = okd and type(body) == "table" and math.tointeger(body.down_ms)
    if not ct or not ms or ms < 0 then
      return control_reply(422, { message = "body must be {\"vmid\": N, \"down_ms\": MS} naming a container" })
    end
    if ct.status ~= "running" then return control_reply(409, { message = "CT " .. ct.vmid .. " is not running" }) end
    if self.rt then self.rt:sshd_down(ct.key, ct.addr, ct.host_key.private, ms) end
    return control_reply(200, { message = "sshd down" })
  elseif path == "/shutdown" and m == "POST" then
    self.stop_requested = true
    return control_reply(200, { message = "shutting down" })
  else
    return control_reply(404, { message = "Not Found" })
  end
  return control_reply(405, { message = "Method Not Allowed" })
end

function Emu:handle(req)
  local path = req.path
  if path:sub(1, 11) == "/_emulator/" then return self:handle_control(req, path:sub(11)) end
  if path == "/api2/json" or path:sub(1, 11) == "/api2/json/" then
    local rel = path:sub(11)
    if #rel > 1 then rel = rel:gsub("/+$", "") end
    if rel == "" then rel = "/" end
    return self:handle_api(req, rel)
  end
  return wire.error_response(501, ("Method '%s %s' not implemented"):format(req.method, path), nil,
    self.opts.old_errors)
end

--- Starts the nodes' sshd and listens on 127.0.0.1: the port, or nil, err.
function Emu:start()
  if self.rt then
    for _, n in ipairs(M.NODES) do
      local node = self.nodes[n.node]
      local key, err = self.rt:keygen("host-node-" .. n.node)
      if not key then return nil, err end
      node.host_key = key
      local ok, serr = pcall(self.rt.start_node, self.rt, n.node, node.addr, key.private,
        table.concat(self.opts.node_keys or {}, "\n"))
      if not ok then return nil, errors.wrap(serr, nil, "EMULATOR_BACKEND") end
    end
  end
  local server, err = httpd.serve({ port = self.opts.port or 0, handler = function(req) return self:handle(req) end })
  if not server then return nil, err end
  self.server = server
  return server:port()
end

--- Serves until shutdown is requested or a signal arrives.
function Emu:wait()
  while not self.stop_requested do
    local ok, err = runtime.sleep_ms(100)
    if not ok then return nil, err end
  end
  return true
end

--- Kills every container and node, stops the server.
function Emu:stop()
  self.stop_requested = true
  if self.server then
    self.server:stop()
    self.server = nil
  end
  if self.rt then pcall(self.rt.shutdown, self.rt) end
end

return M
