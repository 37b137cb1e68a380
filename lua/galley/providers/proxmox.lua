--- galley.providers.proxmox: LXC containers on a Proxmox VE node, over its REST API and real SSH.
--
--   local p = require("galley.providers").new("proxmox", {})   -- PVE_URL, PVE_TOKEN_ID, PVE_TOKEN_SECRET
--   local inst = p.instances.boot("local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst")
--   p.exec(inst.id, {kind = "argv", command = "uname", args = {"-a"}})
--   p.instances.terminate(inst.id)
--
-- Ids: an instance is a container, its id the VMID as a string ("105"). A "snapshot" is a
-- template container (its VMID) or a `vztmpl` volume ("local:vztmpl/NAME.tar.zst"); an image is a
-- `vztmpl` volume. Ids that fail the shared id check, VMIDs outside 100..999999999, and malformed
-- node, storage, bridge and volume names raise VALIDATION_ERROR before any request; a safe id that
-- cannot name a container ("morphvm_x") is NOT_FOUND without a request.
--
-- Boot: clone a template (linked clone) or create from a vztmpl volume (with the run's public key as
-- `ssh-public-keys`), then wait for the create task, set tags, start, wait for that task, find an
-- address (`/interfaces`, or the static ip of `net0`) and wait until SSH answers. VMIDs are picked
-- at random in `vmid_range` avoiding those in use (PVE cannot reserve one; `/cluster/nextid` gives
-- every parallel boot the same id) and picked again on "already exists". A create whose answer was
-- lost is never sent again: galley looks the container up by the request token kept in its
-- description. A boot that fails after the create destroys what it made.
--
-- Where PVE has no answer galley decides (docs/api/providers.md):
--   * metadata, TTL, creation time and request token live in the container's description as one
--     line `galley-meta: {json}` (tags `galley` and the run id are set too, for the PVE UI);
--   * TTL: PVE has none; the expiry is recorded there and `galley gc` enforces it;
--   * pause = stop (files kept, memory not); resume = start; snapshot = a full clone of a PVE
--     snapshot, turned into a template (inside a run tagged with it and tracked, so the run's end
--     names it and `galley gc` deletes it unless `keep = true`, as on every provider; a
--     digest's template, an image, is not); fork = snapshot + linked clones.
--
-- Exec is SSH (galley.providers.proxmox_ssh): `exec_via = "ct"` (default, `ssh root@ADDRESS`) or
-- `"host"` (`ssh root@NODE pct exec VMID -- argv`). Exit 255 is a TRANSPORT error. Files go
-- through galley.providers.execfiles over the same exec.
local cjson = require("cjson")
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local execfiles = require("galley.providers.execfiles")
local fs = require("galley.core.fs")
local logmod = require("galley.log")
local paths = require("galley.paths")
local pc = require("galley.proxmox_client")
local pssh = require("galley.providers.proxmox_ssh")
local runtime = require("galley.core.runtime")
local shell = require("galley.core.shell")
local tracker = require("galley.tracker")

local M = {}

M.NAME = "proxmox"
M.VERSION = "0.1.0"
M.DEFAULT_HOME = "/root"
M.DEFAULT_BOOT_TIMEOUT_MS = 300000
M.DEFAULT_TASK_TIMEOUT_MS = 600000
M.VMID_MIN, M.VMID_MAX = 100, 999999999
M.DEFAULT_VMID_RANGE = { 100000, 899999 }
M.META_PREFIX = "galley-meta: "
M.TOKEN_KEY = "galley_request_token"
M.MAX_COMMAND_BYTES = 120 * 1024
M.CREATE_ATTEMPTS = 5

local function value(v)
  if v == cjson.null then return nil end
  return v
end


local function fail(code, message, fields)
  fields = fields or {}
  fields.kind = fields.kind or "ProviderError"
  error(errors.new(code, message, fields), 0)
end


-- Validation ---------------------------------------------------------------------------------

--- True for a PVE node name (a DNS label sequence, at most 63 bytes a label).
function M.valid_node(s)
  if type(s) ~= "string" or #s == 0 or #s > 253 then return false end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 or not label:match("^[%w]$") and not label:match("^[%w][%w%-]*[%w]$") then
      return false
    end
  end
  return true
end


--- True for a PVE storage id (pve-storage-id: lower-case letter first, then [a-z0-9-_.]).
function M.valid_storage(s)
  return type(s) == "string" and #s <= 64
    and (s:match("^[a-z][a-z0-9%-_%.]*[a-z0-9]$") ~= nil or s:match("^[a-z]$") ~= nil)
end


--- True for a Linux bridge name (at most 15 bytes).
function M.valid_bridge(s)
  return type(s) == "string" and #s >= 1 and #s <= 15 and s:match("^[%a][%w_%.%-]*$") ~= nil
end


--- Parses a vztmpl volume id "STORAGE:vztmpl/NAME.tar.(gz|xz|zst)"; nil when malformed.
function M.parse_volid(s)
  if type(s) ~= "string" or #s > 255 then return nil end
  local storage, name = s:match("^([^:]+):vztmpl/([%w][%w%._%-]*)$")
  if not storage or not M.valid_storage(storage) then return nil end
  if not (name:match("%.tar%.[gx]z$") or name:match("%.tar%.zst$") or name:match("%.tar$")) then return nil end
  return { storage = storage, name = name, volid = s }
end


--- The VMID an id names, or nil plus why: "invalid" (VALIDATION_ERROR) or "foreign" (NOT_FOUND).
---@param id any
---@return integer|nil vmid, string|nil why
function M.vmid_of(id)
  if not common.valid_id(id) then return nil, "invalid" end
  if not id:match("^%d+$") then return nil, "foreign" end
  local n = math.tointeger(tonumber(id))
  if not n or n < M.VMID_MIN or n > M.VMID_MAX or id:sub(1, 1) == "0" then return nil, "invalid" end
  return n
end


local function check_vmid(id, field)
  local vmid, why = M.vmid_of(id)
  if vmid then return vmid end
  if why == "foreign" then
    fail("NOT_FOUND", ("%s %s: no container has this id (Proxmox ids are VMIDs %d..%d)"):format(field, id,
      M.VMID_MIN, M.VMID_MAX), { field = field, resource = "ct:" .. id })
  end
  if common.valid_id(id) then
    fail("VALIDATION_ERROR", ("%s: a VMID is an integer %d..%d without leading zeros, got %s"):format(field,
      M.VMID_MIN, M.VMID_MAX, errors.quote(id)), { field = field, hint = "pass inst.id as galley returned it" })
  end
  common.check_id(id, field) -- raises the shared error
end


--- Picks a free VMID in range (inclusive) avoiding `used` (a set of integers); `rand(lo, hi)`
--- defaults to a uniform pick from libsodium. Nil when the range is full.
---@param used table<integer, boolean>
---@param range {[1]: integer, [2]: integer}
---@param rand? fun(lo: integer, hi: integer): integer
---@return integer|nil
function M.pick_vmid(used, range, rand)
  local lo, hi = range[1], range[2]
  rand = rand or function(a, b)
    local bytes = codec.random_bytes(6)
    local n = 0
    for i = 1, #bytes do n = n * 256 + bytes:byte(i) end
    return a + n % (b - a + 1)
  end
  for _ = 1, 64 do
    local id = rand(lo, hi)
    if not used[id] then return id end
  end
  for id = lo, hi do -- a crowded range: the first free one
    if not used[id] then return id end
  end
  return nil
end


-- Description metadata -----------------------------------------------------------------------

--- The description text carrying galley's record (metadata, ttl, created_at, token, source).
---@param rec table
---@return string
function M.encode_description(rec)
  return "Managed by galley: keep the galley-meta line.\n" .. M.META_PREFIX .. cjson.encode(rec) .. "\n"
end


--- galley's record from a description, or nil.
---@param text any
---@return table|nil
function M.decode_description(text)
  if type(text) ~= "string" then return nil end
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local json = line:match("^" .. M.META_PREFIX:gsub("%-", "%%-") .. "(.*)$")
    if json then
      local ok, rec = pcall(cjson.decode, json)
      if ok and type(rec) == "table" then return rec end
    end
  end
  return nil
end


--- PVE tags for a metadata map: "galley" and the run id (lower-cased, [a-z0-9_-+.] only).
function M.tags_for(metadata)
  local tags = { "galley" }
  local runid = metadata and metadata.galley_run
  if type(runid) == "string" then
    local t = runid:lower():gsub("[^a-z0-9_%-%+%.]", "_")
    if t ~= "" then tags[#tags + 1] = t end
  end
  return table.concat(tags, ";")
end


--- The first IPv4 address of an /interfaces answer (not loopback), without its prefix length.
function M.address_from_interfaces(list)
  if type(list) ~= "table" then return nil end
  for _, nic in ipairs(list) do
    if type(nic) == "table" and value(nic.name) ~= "lo" then
      local inet = value(nic.inet)
      if type(inet) == "string" then
        local a = inet:match("^(%d+%.%d+%.%d+%.%d+)")
        if a and not a:match("^127%.0%.0%.1$") then return a end
      end
    end
  end
  return nil
end


--- The static IPv4 of a net0 string ("name=eth0,bridge=vmbr0,ip=10.0.0.5/24,..."), or nil.
function M.address_from_net0(net0)
  if type(net0) ~= "string" then return nil end
  return net0:match("ip=(%d+%.%d+%.%d+%.%d+)")
end


-- The provider ---------------------------------------------------------------------------------

local function check_count(n, field, min)
  if n == nil then return nil end
  if math.type(n) ~= "integer" and not (type(n) == "number" and n == math.floor(n)) then
    fail("VALIDATION_ERROR", field .. " must be an integer", { field = field })
  end
  n = math.tointeger(n)
  if not n or n < (min or 1) then
    fail("VALIDATION_ERROR", ("%s must be at least %d"):format(field, min or 1), { field = field })
  end
  return n
end


local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end


--- Turns the PVE certificate fingerprint or a libcurl pin into libcurl's pin, or raises.
---@param fp string
---@return string pin "sha256//BASE64"
function M.check_fingerprint(fp)
  if type(fp) == "string" and fp:match("^sha256//[%w%+/]+=*$") then return fp end
  fail("VALIDATION_ERROR", "fingerprint must be the node's public-key pin \"sha256//BASE64\"", { field = "fingerprint",
    hint = "on the node: openssl x509 -in /etc/pve/local/pveproxy-ssl.pem -pubkey -noout | openssl pkey -pubin "
      .. "-outform der | openssl dgst -sha256 -binary | base64 (the certificate's colon-hex fingerprint "
      .. "cannot be checked before the request is sent; use ca_file for that certificate instead)" })
end


---@class galley.ProxmoxProviderOptions
---@field url? string PVE_URL, e.g. https://pve:8006
---@field token_id? string PVE_TOKEN_ID (USER@REALM!NAME)
---@field token_secret? string PVE_TOKEN_SECRET
---@field username? string PVE_USER (ticket auth)
---@field password? string PVE_PASSWORD
---@field node? string PVE_NODE (default: the online node with most free memory)
---@field storage? string PVE_STORAGE, rootfs storage (default "local-lvm")
---@field template_storage? string where vztmpl volumes are (default "local")
---@field bridge? string PVE_BRIDGE (default "vmbr0")
---@field ca_file? string PVE_CA_FILE
---@field fingerprint? string PVE_FINGERPRINT: public-key pin "sha256//BASE64"
---@field insecure? boolean no TLS verification (warns)
---@field exec_via? "ct"|"host"
---@field ssh_command? string|string[] PVE_SSH_COMMAND
---@field node_address? string the node's SSH host (exec_via "host"; default: its ip in /cluster/status,
---  else the URL's host)
---@field node_host_key? string the node's SSH host key ("ssh-ed25519 AAAA..."), pinned
---@field ssh_port? integer PVE_SSH_PORT: the port of every sshd (default: ssh's, 22)
---@field state_dir? string where the run's key, known_hosts and sockets live (default galley's state dir)
---@field vmid_range? integer[] {lo, hi}
---@field memory? integer MB (default 1024)
---@field cores? integer (default 2)
---@field disk_gb? integer rootfs size (default 8)
---@field boot_timeout_ms? integer
---@field exec_timeout_ms? integer
---@field size_limit? integer
---@field log? galley.Logger

--- Creates a Proxmox provider (no request is made).
---@param opts? galley.ProxmoxProviderOptions
---@return table provider
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    fail("VALIDATION_ERROR", "options must be a table", { field = "options" })
  end
  opts = opts or {}
  local log = opts.log or logmod.new({ prefix = "proxmox" })
  local url = opts.url or env("PVE_URL")
  if type(url) ~= "string" or not url:match("^https?://[^/%s]+/?$") then
    fail("VALIDATION_ERROR", "url (PVE_URL) must be http(s)://HOST[:PORT], e.g. https://pve:8006", { field = "url",
      hint = "export PVE_URL=https://NODE:8006 (no path: galley adds /api2/json)" })
  end
  local host = url:match("^https?://%[([^/%]]+)%]") or url:match("^https?://([^:/]+)")
  local loopback = host == "localhost" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil or host == "::1"
  if url:match("^http://") and not loopback and opts.insecure ~= true then
    fail("VALIDATION_ERROR", "url: plain http:// to " .. host .. " would send the credentials in clear", {
      field = "url",
      hint = "use https://" .. host .. ":8006 (PVE serves TLS), or insecure = true for a test bench" })
  end
  local token_id = opts.token_id or env("PVE_TOKEN_ID")
  local token_secret = opts.token_secret or env("PVE_TOKEN_SECRET")
  local username = opts.username or env("PVE_USER")
  local password = opts.password or env("PVE_PASSWORD")
  if token_id then
    if type(token_id) ~= "string" or not token_id:match("^[^@%s]+@[%w%-_%.]+![%a][%w%-_]*$") then
      fail("VALIDATION_ERROR", "token_id (PVE_TOKEN_ID) must look like USER@REALM!TOKENNAME", { field = "token_id" })
    end
    if type(token_secret) ~= "string" or token_secret == "" or token_secret:find("[%s=]") then
      fail("AUTHENTICATION_ERROR", "token_secret (PVE_TOKEN_SECRET) is missing or malformed", { field = "token_secret",
        kind = "ProviderError", hint = "export PVE_TOKEN_SECRET (the UUID shown when the token was created)" })
    end
  elseif username then
    if type(password) ~= "string" or password == "" then
      fail("AUTHENTICATION_ERROR", "password (PVE_PASSWORD) is missing for user " .. tostring(username),
        { field = "password" })
    end
  else
    fail("AUTHENTICATION_ERROR", "no Proxmox credentials: set PVE_TOKEN_ID and PVE_TOKEN_SECRET (or PVE_USER and "
      .. "PVE_PASSWORD)", { field = "token_id", hint = "pveum user token add root@pam galley --privsep 0" })
  end
  local node = opts.node or env("PVE_NODE")
  if node ~= nil and not M.valid_node(node) then
    fail("VALIDATION_ERROR", "node must be a node name (letters, digits, -)", { field = "node" })
  end
  local storage = opts.storage or env("PVE_STORAGE") or "local-lvm"
  if not M.valid_storage(storage) then
    fail("VALIDATION_ERROR", "storage must be a storage id", { field = "storage" })
  end
  local template_storage = opts.template_storage or "local"
  if not M.valid_storage(template_storage) then
    fail("VALIDATION_ERROR", "template_storage must be a storage id", { field = "template_storage" })
  end
  local bridge = opts.bridge or env("PVE_BRIDGE") or "vmbr0"
  if not M.valid_bridge(bridge) then fail("VALIDATION_ERROR", "bridge must be a bridge name", { field = "bridge" }) end
  local exec_via = opts.exec_via or "ct"
  if exec_via ~= "ct" and exec_via ~= "host" then
    fail("VALIDATION_ERROR", 'exec_via must be "ct" or "host"', { field = "exec_via" })
  end
  local ca_file = opts.ca_file or env("PVE_CA_FILE")
  if ca_file ~= nil and (type(ca_file) ~= "string" or not fs.exists(ca_file)) then
    fail("VALIDATION_ERROR", "ca_file: no such file " .. tostring(ca_file), { field = "ca_file" })
  end
  local pin = opts.fingerprint or env("PVE_FINGERPRINT")
  if pin ~= nil then pin = M.check_fingerprint(pin) end
  local insecure = opts.insecure == true
  if insecure and url:match("^https://") then
    log.warn("insecure = true: the TLS certificate of " .. url .. " is NOT verified")
  end
  local range = opts.vmid_range or M.DEFAULT_VMID_RANGE
  if type(range) ~= "table" or math.type(range[1]) ~= "integer" or math.type(range[2]) ~= "integer"
      or range[1] < M.VMID_MIN or range[2] > M.VMID_MAX or range[1] > range[2] then
    fail("VALIDATION_ERROR", ("vmid_range must be {lo, hi} within %d..%d"):format(M.VMID_MIN, M.VMID_MAX),
      { field = "vmid_range" })
  end
  local memory = check_count(opts.memory, "memory", 16) or 1024
  local cores = check_count(opts.cores, "cores", 1) or 2
  local disk_gb = check_count(opts.disk_gb, "disk_gb", 1) or 8
  local boot_timeout_ms = check_count(opts.boot_timeout_ms, "boot_timeout_ms", 0) or M.DEFAULT_BOOT_TIMEOUT_MS
  local exec_timeout_ms = check_count(opts.exec_timeout_ms, "exec_timeout_ms", 1)
  local node_host_key = opts.node_host_key
  local node_address = opts.node_address
  local ssh_port = opts.ssh_port
  if ssh_port == nil and env("PVE_SSH_PORT") then
    ssh_port = math.tointeger(tonumber(env("PVE_SSH_PORT")))
    if not ssh_port then fail("VALIDATION_ERROR", "PVE_SSH_PORT must be a port number", { field = "ssh_port" }) end
  end
  ssh_port = check_count(ssh_port, "ssh_port", 1)
  if ssh_port and ssh_port > 65535 then
    fail("VALIDATION_ERROR", "ssh_port must be 1..65535", { field = "ssh_port" })
  end
  local ssh_command = pssh.command_argv(opts.ssh_command or env("PVE_SSH_COMMAND"))

  local client = pc.new({ url = url, token_id = token_id, token_secret = token_secret,
    username = not token_id and username or nil, password = not token_id and password or nil,
    ca_file = ca_file, pin = pin, insecure = insecure, timeout_ms = opts.timeout_ms,
    connect_timeout_ms = opts.connect_timeout_ms, retry = opts.retry,
    log = function(r) log.trace("request", r) end,
    warn = function(upid, n) log.warn(("task %s finished with %d warning(s)"):format(upid, n)) end })

  -- The SSH directory: <state>/proxmox/<run-id> inside a run (removed when the run ends, kept with
  -- --keep so `galley shell` still gets in), else <state>/proxmox/default (kept: containers booted
  -- outside a run, e.g. by `galley boot`, stay reachable from later galley commands).
  local base = (opts.state_dir or paths.state_dir()) .. "/proxmox"
  local ctx = tracker.current()
  local dir_name = ctx and ctx.id or "default"
  local channels = {}
  local function channel(name)
    name = name or dir_name
    if channels[name] then return channels[name] end
    local own = name == dir_name
    local dir = base .. "/" .. name
    -- "default" (outside runs; the key every template galley makes carries) is made when needed
    if not own and name ~= "default" and not fs.exists(dir .. "/id_ed25519") then return nil end
    paths.private_dir(base)
    local ch = pssh.new({ dir = dir, owned = own and ctx ~= nil, ssh_command = ssh_command })
    channels[name] = ch
    return ch
  end
  if ctx then
    tracker.defer(function()
      local c = channels[dir_name]
      if c then c:close(ctx.keep) end
      channels[dir_name] = nil
    end, "proxmox ssh key")
  end

  local provider = {
    name = M.NAME,
    version = M.VERSION,
    client = client,
    capabilities = {
      exec_form = "string",
      max_command_bytes = M.MAX_COMMAND_BYTES,
      home_dir = M.DEFAULT_HOME,
      pause = true,
      snapshots = true,
      fork = true,
      exec_stream = true,
      ttl = "recorded (galley gc enforces it)",
      max_file_bytes = opts.size_limit or execfiles.DEFAULT_SIZE_LIMIT,
    },
    instances = {},
    snapshots = {},
    images = {},
  }

  -- Calls the API: the data, or raises the error with the provider operation.
  local function call(operation, name, args)
    local data, err = client:call(name, args)
    if data == nil then
      err.endpoint = err.operation
      err.operation = operation
      error(err, 0)
    end
    return data
  end

  local function wait(operation, upid, deadline)
    if type(upid) ~= "string" then return true end -- a synchronous answer (null)
    local r, err = client:wait_task(upid, { deadline_ms = deadline, operation = operation })
    if not r then error(err, 0) end
    return r
  end

  -- Nodes ---------------------------------------------------------------------------------------
  local chosen_node = node
  local function pick_node()
    if chosen_node then return chosen_node end
    local list = call("nodes", "nodes")
    local best, free
    for _, n in ipairs(type(list) == "table" and list or {}) do
      if value(n.status) == "online" and type(n.node) == "string" then
        local f = (tonumber(value(n.maxmem)) or 0) - (tonumber(value(n.mem)) or 0)
        if not best or f > free then best, free = n.node, f end
      end
    end
    if not best then fail("SERVER_ERROR", "no Proxmox node is online", { operation = "nodes" }) end
    chosen_node = best
    return best
  end

  -- Where each container lives: vmid -> {node, address?, template?}; filled from /cluster/resources.
  local where = {}
  local function resources()
    local list = call("resources", "resources", { query = { type = "vm" } })
    local out = {}
    for _, r in ipairs(type(list) == "table" and list or {}) do
      local vmid = math.tointeger(tonumber(value(r.vmid)))
      if vmid and value(r.type) == "lxc" then
        r.vmid = vmid
        out[#out + 1] = r
        local w = where[vmid] or {}
        w.node = value(r.node)
        where[vmid] = w
      end
    end
    return out
  end

  local function locate(vmid, resource)
    if where[vmid] and where[vmid].node then return where[vmid] end
    resources()
    if not (where[vmid] and where[vmid].node) then
      fail("NOT_FOUND", ("container %d does not exist"):format(vmid), { resource = resource or ("ct:" .. vmid) })
    end
    return where[vmid]
  end

  local function config(vmid, operation)
    local w = locate(vmid)
    local ok, c = pcall(call, operation or "instances.get", "lxc.config", { node = w.node, vmid = vmid })
    if not ok then
      if errors.is(c, "NOT_FOUND") then where[vmid] = nil end
      error(c, 0)
    end
    return c, w
  end

  local function status_of(vmid, w)
    return call("instances.get", "lxc.status", { node = w.node, vmid = vmid })
  end

  -- The instance table for a container config (+status).
  local function instance(vmid, cfg, st, w)
    local rec = M.decode_description(value(cfg.description)) or {}
    local metadata = {}
    for k, v in pairs(type(rec.metadata) == "table" and rec.metadata or {}) do metadata[k] = tostring(v) end
    local status
    local lock = value(cfg.lock) or (st and value(st.lock))
    if lock == "create" or lock == "clone" or lock == "copy" then
      status = "booting"
    elseif st and value(st.status) == "running" then
      status = "ready"
    elseif st and value(st.status) == "stopped" then
      status = "stopped"
    else
      status = "error"
    end
    local ttl = type(rec.ttl) == "table" and rec.ttl or {}
    return {
      object = "instance",
      id = tostring(vmid),
      vmid = vmid,
      node = w and w.node,
      status = status,
      metadata = metadata,
      created_at = math.tointeger(rec.created_at),
      ttl = common.ttl_table(math.tointeger(ttl.seconds), ttl.action, math.tointeger(ttl.expires_at)),
      snapshot_id = rec.source,
      request_token = rec.token,
      address = w and w.address,
      raw = { config = cfg, status = st },
    }
  end

  -- SSH targets -----------------------------------------------------------------------------------
  local function address(vmid, w, deadline)
    if w.address then return w.address end
    local delay = 100
    while true do
      local list = select(2, pcall(call, "instances.boot", "lxc.interfaces", { node = w.node, vmid = vmid }))
      local a = M.address_from_interfaces(list)
      if not a then
        local ok, cfg = pcall(call, "instances.boot", "lxc.config", { node = w.node, vmid = vmid })
        if ok then a = M.address_from_net0(value(cfg.net0)) end
      end
      if a then
        w.address = a
        return a
      end
      if runtime.now_ms() >= deadline then
        fail("TIMEOUT", ("container %d has no IPv4 address yet"):format(vmid), { operation = "instances.boot",
          resource = "ct:" .. vmid, hint = "check the container's network (net0, DHCP on " .. bridge .. ")" })
      end
      local ok, perr = runtime.sleep_ms(math.min(delay, math.max(1, deadline - runtime.now_ms())))
      if not ok then error(perr, 0) end
      delay = math.min(delay * 2, 2000)
    end
  end

  -- The SSH address of a node: node_address, else its ip in /cluster/status, else the URL's host.
  local node_ips = {}
  local function node_ip(name)
    if node_address then return node_address end
    if node_ips[name] then return node_ips[name] end
    local ok, list = pcall(call, "exec", "cluster.status")
    for _, n in ipairs(ok and type(list) == "table" and list or {}) do
      if value(n.type) == "node" and type(value(n.name)) == "string" and type(value(n.ip)) == "string" then
        node_ips[n.name] = n.ip
      end
    end
    node_ips[name] = node_ips[name] or host
    return node_ips[name]
  end

  -- The channel and target for a container's exec.
  local function target(vmid, deadline)
    local w = locate(vmid)
    local ch = w.channel
    if not ch and w.key then
      ch = channel(w.key) -- a clone's first contact: the key its template carries
    elseif not ch then
      -- A container booted by another run uses that run's key when it is still here.
      if w.run == nil and not w.checked then
        w.checked = true
        local ok, cfg = pcall(call, "exec", "lxc.config", { node = w.node, vmid = vmid })
        local rec = ok and M.decode_description(value(cfg.description)) or nil
        w.run = rec and type(rec.metadata) == "table" and rec.metadata.galley_run or nil
      end
      if w.run then ch = channel(w.run) end
      ch = ch or channel()
      w.channel = ch
    end
    if exec_via == "host" then
      local na = node_ip(w.node)
      local alias = "node-" .. w.node
      if node_host_key and not (ch.pinned and ch.pinned[alias]) then ch:pin(alias, na, node_host_key) end
      return ch, { host = na, user = "root", alias = alias, port = ssh_port }, true
    end
    local a = address(vmid, w, deadline or (runtime.now_ms() + 30000))
    return ch, { host = a, user = "root", alias = "ct-" .. vmid, port = ssh_port }, false
  end

  local function exec_argv(id, argv, eopts)
    local vmid = check_vmid(id, "instance_id")
    eopts = eopts or {}
    local ch, t, via_host = target(vmid)
    -- A time limit runs inside the container (timeout(1) kills the command's process group
    -- there), as on every provider; ssh itself is given a little longer.
    local limit = eopts.timeout_ms or exec_timeout_ms
    local r, err = common.run_limited(tostring(id), argv, limit, function(remote)
      if via_host then remote = { "pct", "exec", tostring(vmid), "--", table.unpack(remote) } end
      if eopts.on_stdout or eopts.on_stderr then return ch:stream(t, remote, eopts.on_stdout, eopts.on_stderr) end
      return ch:run(t, remote, { timeout_ms = limit and (limit + common.EXEC_BACKSTOP_MS), operation = "exec" })
    end)
    if not r then
      if err.code == "TRANSPORT" then
        -- Gone meanwhile? Then it is NOT_FOUND, not a transport failure.
        where[vmid] = nil
        local ok, e2 = pcall(locate, vmid)
        if not ok and errors.is(e2, "NOT_FOUND") then error(e2, 0) end
      end
      err.resource = "ct:" .. vmid
      error(err, 0)
    end
    return { exit_code = r.exit_code, stdout = r.stdout, stderr = r.stderr }
  end

  -- SSH is a byte channel: contents over one exec line go raw on one ssh's stdin/stdout.
  local function stream(id, argv, sopts)
    local vmid = check_vmid(id, "instance_id")
    local ch, t, via_host = target(vmid)
    if via_host then argv = { "pct", "exec", tostring(vmid), "--", table.unpack(argv) } end
    local r, err = ch:transfer(t, argv, sopts)
    if not r then
      err.resource = "ct:" .. vmid
      error(err, 0)
    end
    return r
  end

  provider.files = execfiles.new({
    exec_argv = function(id, argv) return exec_argv(id, argv) end,
    stream = stream,
    home_dir = M.DEFAULT_HOME,
    max_command_bytes = M.MAX_COMMAND_BYTES,
    size_limit = opts.size_limit,
    log = log,
  })

  --- Runs a CommandSpec in the container over SSH.
  ---@param instance_id string
  ---@param spec galley.CommandSpec
  ---@param eopts? {timeout_ms?: integer, on_stdout?: fun(s: string), on_stderr?: fun(s: string)}
  ---@return {stdout: string, stderr: string, exit_code: integer}
  function provider.exec(instance_id, spec, eopts)
    check_vmid(instance_id, "instance_id")
    spec = contracts.check_command(spec)
    eopts = common.check_exec_options(eopts)
    local ok, plan = pcall(shell.plan, spec, { home = M.DEFAULT_HOME })
    if not ok then error(errors.wrap(plan, { operation = "exec", kind = "ProviderError" }, "VALIDATION_ERROR"), 0) end
    local argv = plan.argv or { "/bin/bash", "-c", plan.script, "galley-script" }
    if #shell.join(argv) > M.MAX_COMMAND_BYTES then
      local script = plan.script or ("exec -- " .. shell.join(plan.argv) .. "\n")
      local path = "/tmp/.galley-script-" .. codec.random_hex(8) .. ".sh"
      provider.files.write_file_atomic(instance_id, path, script, { mode = "600" })
      argv = { "/bin/sh", "-c", 'p=$1; trap \'rm -f -- "$p"\' EXIT; /bin/bash "$p"', "galley-script", path }
    end
    return exec_argv(instance_id, argv, eopts)
  end

  -- A spawned command's handle over its local ssh (h): read, write, close_stdin, wait, pid and
  -- running are h's. kill(sig) sends the signal inside the container, by another exec, to the
  -- command's process group (see common.spawn_argv): killing the ssh would end the connection,
  -- not the command (a command without a terminal gets no SIGHUP), and the handle would report
  -- ssh's end instead of the command's. close() of a running command kills its group, then ends
  -- the ssh.
  local function spawned_handle(instance_id, h, pid_file)
    local function kill(sig)
      if not common.SPAWN_SIGNALS[sig] then
        fail("VALIDATION_ERROR", "unknown signal " .. tostring(sig), { field = "signal" })
      end
      if not h:running() then return true end
      local ok, err = pcall(exec_argv, instance_id, common.spawn_signal_argv(pid_file, sig), { timeout_ms = 30000 })
      if not ok then return nil, err end
      return true
    end
    local function close()
      if h:running() and kill("KILL") then h:wait(5000) end
      h:close()
      pcall(exec_argv, instance_id, common.spawn_cleanup_argv(pid_file), { timeout_ms = 30000 })
    end
    return common.process_handle(h, "galley.proxmox.process", kill, close, function() h:close() end)
  end

  --- Starts a command without waiting: a handle shaped like galley.core.proc's Process (read,
  --- wait, kill, close) over the local ssh. kill(sig) signals the command's process group in
  --- the container; close() kills it while it runs.
  function provider.spawn(instance_id, command)
    local vmid = check_vmid(instance_id, "instance_id")
    local argv = common.spawn_command(command)
    local pid_file = common.spawn_pid_file()
    argv = common.spawn_argv(pid_file, argv)
    local ch, t, via_host = target(vmid)
    if via_host then argv = { "pct", "exec", tostring(vmid), "--", table.unpack(argv) } end
    local h, err = ch:spawn(t, argv)
    if not h then
      fail("PROCESS_ERROR", ("could not start ssh for %s: %s"):format(instance_id, tostring(err)),
        { operation = "spawn", resource = "ct:" .. vmid, cause = err })
    end
    return spawned_handle(instance_id, h, pid_file)
  end

  --- The argv of an interactive `ssh -t` into the container running `remote` (argv).
  function provider.ssh_argv(instance_id, remote)
    local vmid = check_vmid(instance_id, "instance_id")
    local cfg, w = config(vmid)
    local rec = M.decode_description(value(cfg.description)) or {}
    w.run = type(rec.metadata) == "table" and rec.metadata.galley_run or nil
    local ch, t, via_host = target(vmid)
    if via_host then remote = { "pct", "exec", tostring(vmid), "--", table.unpack(remote) } end
    return ch:argv(t, remote, true)
  end

  --- Ends the multiplexed SSH connection to a container (the next exec opens a new one).
  function provider.disconnect(instance_id)
    local vmid = check_vmid(instance_id, "instance_id")
    local w = where[vmid]
    if w and w.channel then w.channel:disconnect(exec_via == "host" and ("node-" .. w.node) or ("ct-" .. vmid)) end
  end

  -- instances ---------------------------------------------------------------------------------------
  local I = provider.instances
  I.exec = provider.exec
  local authorize_key
  local reserved = {}

  -- Adds a public key line to root's authorized_keys in the container (once).
  function authorize_key(vmid, pub)
    local r = exec_argv(tostring(vmid), { "/bin/sh", "-c", 'umask 077; mkdir -p "$HOME/.ssh"'
      .. ' && f="$HOME/.ssh/authorized_keys"'
      .. ' && { grep -qxF -- "$1" "$f" 2>/dev/null || printf "%s\\n" "$1" >> "$f"; }', "sh", pub })
    if r.exit_code ~= 0 then
      fail("PROVIDER_ERROR", ("container %d: cannot add galley's key: %s"):format(vmid, common.tail(r.stderr, 300)),
        { resource = "ct:" .. vmid })
    end
  end

  -- Stops (if running) and deletes a container, waiting for each task; already gone is success.
  local function destroy(vmid, operation, deadline)
    deadline = deadline or (runtime.now_ms() + M.DEFAULT_TASK_TIMEOUT_MS)
    local w = where[vmid]
    if not w or not w.node then
      local ok, e = pcall(locate, vmid)
      if not ok then
        if errors.is(e, "NOT_FOUND") then return "gone" end
        error(e, 0)
      end
      w = e
    end
    -- A container still locked by its create: wait for that task.
    local ok, cfg = pcall(call, operation, "lxc.config", { node = w.node, vmid = vmid })
    if not ok then
      if errors.is(cfg, "NOT_FOUND") then
        where[vmid] = nil
        return "gone"
      end
      error(cfg, 0)
    end
    local delay = 100
    while value(cfg.lock) == "create" or value(cfg.lock) == "clone" do
      if runtime.now_ms() >= deadline then
        fail("LOCKED", ("container %d is still locked (%s)"):format(vmid, value(cfg.lock)),
          { operation = operation, resource = "ct:" .. vmid, retryable = true })
      end
      runtime.sleep_ms(delay)
      delay = math.min(delay * 2, 2000)
      ok, cfg = pcall(call, operation, "lxc.config", { node = w.node, vmid = vmid })
      if not ok then
        if errors.is(cfg, "NOT_FOUND") then
          where[vmid] = nil
          return "gone" -- a failed create removes its container
        end
        error(cfg, 0)
      end
    end
    local sok, st = pcall(call, operation, "lxc.status", { node = w.node, vmid = vmid })
    if sok and value(st.status) == "running" then
      local upid = call(operation, "lxc.stop", { node = w.node, vmid = vmid })
      wait(operation, upid, deadline)
    end
    local dok, upid = pcall(call, operation, "lxc.delete", { node = w.node, vmid = vmid,
      query = { purge = 1, ["destroy-unreferenced-disks"] = 1 } })
    if not dok then
      if errors.is(upid, "NOT_FOUND") then
        where[vmid] = nil
        return "gone"
      end
      error(upid, 0)
    end
    wait(operation, upid, deadline)
    if w.channel then w.channel:forget("ct-" .. vmid) end
    where[vmid] = nil
    return "deleted"
  end

  local function used_vmids()
    local used = {}
    for _, r in ipairs(resources()) do used[r.vmid] = true end
    for id in pairs(reserved) do used[id] = true end
    return used
  end

  -- After a lost create answer: the container (config) if it exists and carries our token.
  local function find_created(node_name, vmid, token)
    local ok, cfg = pcall(call, "instances.boot", "lxc.config", { node = node_name, vmid = vmid })
    if not ok then return nil end
    local rec = M.decode_description(value(cfg.description))
    if rec and rec.token == token then return cfg end
    return nil
  end

  -- Waits for a created container's lock to clear (its create task lost).
  local function wait_unlocked(node_name, vmid, deadline)
    local delay = 100
    while true do
      local ok, cfg = pcall(call, "instances.boot", "lxc.config", { node = node_name, vmid = vmid })
      if not ok then error(cfg, 0) end
      if value(cfg.lock) == nil then return cfg end
      if runtime.now_ms() >= deadline then
        fail("TIMEOUT", ("container %d still locked (%s)"):format(vmid, value(cfg.lock)),
          { operation = "instances.boot", resource = "ct:" .. vmid })
      end
      local sok, perr = runtime.sleep_ms(delay)
      if not sok then error(perr, 0) end
      delay = math.min(delay * 2, 2000)
    end
  end

  -- Sends a create-like POST (create or clone); returns the upid (or nil after a lost answer whose
  -- container was found). Raises CONFLICT (id taken) for the caller to pick again.
  local function send_create(name, args, vmid, token, deadline)
    local upid, err = client:call(name, args)
    if upid ~= nil then return upid end
    if err.code == "CONFLICT" or err.code == "VALIDATION_ERROR" or err.code == "AUTHENTICATION_ERROR"
        or err.code == "PERMISSION_DENIED" or err.code == "NOT_FOUND" or err.code == "NOT_SUPPORTED"
        or err.code == "LOCKED" or err.sent == false then
      err.endpoint, err.operation = err.operation, "instances.boot"
      error(err, 0)
    end
    -- The answer was lost (reset, timeout, 5xx): never sent again; look the container up.
    local delay = 200
    while runtime.now_ms() < deadline do
      if find_created(args.node, vmid, token) then
        log.debug("create answer lost; container found", { vmid = vmid })
        return nil
      end
      local ok = runtime.sleep_ms(delay)
      if not ok then break end
      delay = math.min(delay * 2, 2000)
      if delay >= 2000 then break end
    end
    tracker.note_pending(provider, { [M.TOKEN_KEY] = token }, token)
    err.endpoint, err.operation = err.operation, "instances.boot"
    err.instance_id = tostring(vmid)
    error(err, 0)
  end

  -- Starts a container and waits until SSH answers. Returns the address.
  local function start_and_reach(vmid, w, deadline, operation)
    local st = call(operation, "lxc.status", { node = w.node, vmid = vmid })
    if value(st.status) ~= "running" then
      local upid, err = client:call("lxc.start", { node = w.node, vmid = vmid })
      if upid == nil then
        if err.sent == false or err.code == "NOT_FOUND" or err.code == "VALIDATION_ERROR" then error(err, 0) end
        -- lost answer: is it running (or starting)?
        local sok, st2 = pcall(call, operation, "lxc.status", { node = w.node, vmid = vmid })
        if not (sok and value(st2.status) == "running") then
          -- the start may still be in progress: wait for it briefly
          local d2 = math.min(deadline, runtime.now_ms() + 10000)
          repeat
            runtime.sleep_ms(250)
            sok, st2 = pcall(call, operation, "lxc.status", { node = w.node, vmid = vmid })
          until (sok and value(st2.status) == "running") or runtime.now_ms() >= d2
          if not (sok and value(st2.status) == "running") then error(err, 0) end
        end
      else
        wait(operation, upid, deadline)
      end
    end
    w.address = nil
    local ch, t = target(vmid, deadline)
    -- SSH answering: the first contact accepts the container's new host key.
    local delay = 100
    while true do
      local r, err = ch:run(t, { "true" }, { timeout_ms = 15000, operation = operation })
      if r and r.exit_code == 0 then return t.host end
      if not r and err.code ~= "TRANSPORT" and err.code ~= "TIMEOUT" then error(err, 0) end
      if runtime.now_ms() >= deadline then
        local e = err or errors.new("TRANSPORT", "ssh true exited " .. tostring(r and r.exit_code))
        fail("TIMEOUT", ("container %d: SSH does not answer at %s: %s"):format(vmid, t.host, tostring(e.message)),
          { operation = operation, resource = "ct:" .. vmid, last_error = e })
      end
      local ok, perr = runtime.sleep_ms(math.min(delay, math.max(1, deadline - runtime.now_ms())))
      if not ok then error(perr, 0) end
      delay = math.min(delay * 2, 2000)
      if exec_via == "ct" then where[vmid].address = nil end -- an address that changes (DHCP) is read again
      ch, t = target(vmid, deadline)
    end
  end

  -- What a snapshot id names: {template = vmid, node} or {volid, storage}.
  local function source_of(snapshot_id)
    if type(snapshot_id) == "string" and snapshot_id:find(":", 1, true) then
      local v = M.parse_volid(snapshot_id)
      if not v then
        fail("VALIDATION_ERROR", "snapshot_id: a template volume is STORAGE:vztmpl/NAME.tar.(gz|xz|zst), got "
          .. errors.quote(snapshot_id), { field = "snapshot_id" })
      end
      return { volid = v.volid, storage = v.storage }
    end
    local vmid = check_vmid(snapshot_id, "snapshot_id")
    local w = locate(vmid, "snapshot:" .. snapshot_id)
    return { template = vmid, node = w.node }
  end

  local function boot(snapshot_id, bopts, operation)
    if snapshot_id == nil then snapshot_id = provider.default_snapshot() end
    local src = source_of(snapshot_id)
    bopts = tracker.boot_options(bopts or {})
    local seconds, action = common.check_ttl(bopts)
    local metadata = common.check_metadata(bopts.metadata)
    local wait_ms = check_count(bopts.timeout_ms, "timeout_ms", 0) or boot_timeout_ms
    local deadline = runtime.now_ms() + wait_ms
    local node_name = src.node or pick_node()
    local token = codec.random_hex(12)
    local now = os.time()
    local rec = { v = 1, metadata = metadata, created_at = now, token = token, source = snapshot_id,
      ttl = seconds and { seconds = seconds, action = action, expires_at = now + seconds } or nil }
    local description = M.encode_description(rec)
    local tags = M.tags_for(metadata)
    local vmid, upid
    for attempt = 1, M.CREATE_ATTEMPTS do
      vmid = M.pick_vmid(used_vmids(), range)
      if not vmid then
        fail("CONFLICT", "no free VMID in vmid_range", { operation = operation, field = "vmid_range" })
      end
      reserved[vmid] = true
      local name, args
      if src.template then
        name, args = "lxc.clone", { node = node_name, vmid = src.template, body = { newid = vmid,
          hostname = "galley-" .. vmid, description = description, full = false } }
      else
        local ch = channel()
        name, args = "lxc.create", { node = node_name, body = { vmid = vmid, ostemplate = src.volid,
          hostname = "galley-" .. vmid, description = description, tags = tags, storage = storage,
          rootfs = ("%s:%d"):format(storage, disk_gb), memory = memory, cores = cores, unprivileged = true,
          net0 = ("name=eth0,bridge=%s,ip=dhcp"):format(bridge), ["ssh-public-keys"] = ch:public_key(),
          start = false } }
      end
      local ok, res = pcall(send_create, name, args, vmid, token, deadline)
      if ok then
        upid = res
        break
      end
      reserved[vmid] = nil
      if not (errors.is(res, "CONFLICT") and attempt < M.CREATE_ATTEMPTS) then error(res, 0) end
      log.debug("VMID taken; picking another", { vmid = vmid })
    end
    where[vmid] = { node = node_name, run = metadata.galley_run }
    local ok, err = pcall(function()
      if upid then
        wait(operation, upid, deadline)
      else
        wait_unlocked(node_name, vmid, deadline)
      end
      reserved[vmid] = nil
      if src.template then
        call(operation, "lxc.set_config", { node = node_name, vmid = vmid, body = { tags = tags } })
        if exec_via == "ct" and dir_name ~= "default" then where[vmid].key = "default" end
      end
      start_and_reach(vmid, where[vmid], deadline, operation)
      if where[vmid].key then
        -- A clone of a template: in with the template's (default) key; add this run's key, use it.
        authorize_key(vmid, channel():public_key())
        where[vmid].key, where[vmid].channel = nil, channel()
      end
    end)
    reserved[vmid] = nil
    if not ok then
      local dok = pcall(destroy, vmid, operation)
      if type(err) == "table" then
        err.instance_id = tostring(vmid)
        err.terminated = dok
        if err.operation == nil then err.operation = operation end
      end
      error(err, 0)
    end
    tracker.track_instance(provider, tostring(vmid), seconds)
    local cfg = call(operation, "lxc.config", { node = node_name, vmid = vmid })
    local st = call(operation, "lxc.status", { node = node_name, vmid = vmid })
    log.debug("instance ready", { instance = vmid, snapshot = snapshot_id })
    return instance(vmid, cfg, st, where[vmid])
  end

  --- Boots a container from a template (VMID) or a vztmpl volume and returns when SSH answers.
  ---@param snapshot_id? string default: provider.default_snapshot()
  ---@param bopts? {metadata?: table, ttl_seconds?: integer|false, ttl_action?: string, timeout_ms?: integer}
  ---@return table instance (status "ready")
  function I.boot(snapshot_id, bopts)
    if snapshot_id ~= nil and type(snapshot_id) ~= "string" then common.check_id(snapshot_id, "snapshot_id") end
    if bopts ~= nil and type(bopts) ~= "table" then
      fail("VALIDATION_ERROR", "options must be a table", { field = "options" })
    end
    return boot(snapshot_id, bopts, "instances.boot")
  end

  --- The instance, or NOT_FOUND (templates are snapshots, not instances).
  function I.get(instance_id)
    local vmid = check_vmid(instance_id, "instance_id")
    local cfg, w = config(vmid)
    if value(cfg.template) == 1 or value(cfg.template) == "1" then
      fail("NOT_FOUND", ("%d is a template (a snapshot), not an instance"):format(vmid), { resource = "ct:" .. vmid })
    end
    local ok, st = pcall(status_of, vmid, w)
    local inst = instance(vmid, cfg, ok and st or nil, w)
    w.run = inst.metadata.galley_run
    return inst
  end

  --- Containers (not templates) whose metadata matches the filter.
  function I.list(filter)
    local want = common.metadata_filter(filter)
    if want then want = common.check_metadata(want, "filter") end
    local out = {}
    for _, r in ipairs(resources()) do
      if value(r.template) ~= 1 and value(r.template) ~= "1" then
        local ok, cfg = pcall(call, "instances.list", "lxc.config", { node = value(r.node), vmid = r.vmid })
        if ok then
          local inst = instance(r.vmid, cfg, { status = value(r.status), lock = value(r.lock) }, where[r.vmid])
          local raw_meta = {}
          for k, v in pairs(inst.metadata) do raw_meta[k] = v end
          raw_meta[M.TOKEN_KEY] = inst.request_token
          if common.match_metadata(raw_meta, want) then out[#out + 1] = inst end
        end
      end
    end
    table.sort(out, function(a, b) return a.vmid < b.vmid end)
    return out
  end

  --- Stops (if running) and deletes the container with its disks. NOT_FOUND when it is not there.
  function I.terminate(instance_id)
    local vmid = check_vmid(instance_id, "instance_id")
    locate(vmid)
    local r = destroy(vmid, "instances.terminate")
    if r == "gone" then
      fail("NOT_FOUND", ("container %d does not exist"):format(vmid), { resource = "ct:" .. vmid,
        operation = "instances.terminate" })
    end
    return true
  end

  --- Same as terminate (galley's stop deletes, as on Morph).
  I.stop = I.terminate

  --- Stops the container (files kept; status "stopped").
  function I.pause(instance_id)
    local vmid = check_vmid(instance_id, "instance_id")
    local w = locate(vmid)
    local st = status_of(vmid, w)
    if value(st.status) == "running" then
      local deadline = runtime.now_ms() + M.DEFAULT_TASK_TIMEOUT_MS
      wait("instances.pause", call("instances.pause", "lxc.stop", { node = w.node, vmid = vmid }), deadline)
    end
    if w.channel then w.channel:disconnect("ct-" .. vmid) end
    return I.get(instance_id)
  end

  --- Starts a stopped container and returns when SSH answers.
  function I.resume(instance_id)
    local vmid = check_vmid(instance_id, "instance_id")
    local w = locate(vmid)
    start_and_reach(vmid, w, runtime.now_ms() + boot_timeout_ms, "instances.resume")
    return I.get(instance_id)
  end

  -- The snapshot table of a template container.
  local function snapshot_table(vmid, cfg)
    local rec = M.decode_description(value(cfg.description)) or {}
    local metadata = {}
    for k, v in pairs(type(rec.metadata) == "table" and rec.metadata or {}) do metadata[k] = tostring(v) end
    return { object = "snapshot", id = tostring(vmid), status = "ready", metadata = metadata,
      created_at = math.tointeger(rec.created_at), ttl = {}, raw = cfg }
  end

  local function take_snapshot(instance_id, sopts, operation)
    local vmid = check_vmid(instance_id, "instance_id")
    if sopts ~= nil and type(sopts) ~= "table" then fail("VALIDATION_ERROR", "options must be a table") end
    local tagged
    sopts, tagged = tracker.snapshot_options(sopts) -- the run's tags; an image's (galley_digest) none
    local metadata = common.check_metadata(sopts.metadata)
    local w = locate(vmid)
    -- Every template carries galley's default key (kept across runs), so later runs reach its clones.
    if exec_via == "ct" and dir_name ~= "default" then authorize_key(vmid, channel("default"):public_key()) end
    local deadline = runtime.now_ms() + M.DEFAULT_TASK_TIMEOUT_MS
    local snapname = "galley" .. codec.random_hex(4)
    wait(operation, call(operation, "lxc.snapshot", { node = w.node, vmid = vmid, body = { snapname = snapname } }),
      deadline)
    local rec = { v = 1, metadata = metadata, created_at = os.time(), source = instance_id, kind = "template" }
    local newid
    local ok, err = pcall(function()
      for attempt = 1, M.CREATE_ATTEMPTS do
        newid = M.pick_vmid(used_vmids(), range)
        reserved[newid] = true
        local upid, cerr = client:call("lxc.clone", { node = w.node, vmid = vmid, body = { newid = newid,
          snapname = snapname, full = true, hostname = "galley-tmpl-" .. newid,
          description = M.encode_description(rec) } })
        reserved[newid] = nil
        if upid ~= nil then
          wait(operation, upid, deadline)
          break
        end
        if not (cerr.code == "CONFLICT" and attempt < M.CREATE_ATTEMPTS) then
          newid = nil
          error(cerr, 0)
        end
      end
      where[newid] = { node = w.node }
      wait(operation, call(operation, "lxc.template", { node = w.node, vmid = newid }), deadline)
    end)
    pcall(function()
      wait(operation, call(operation, "lxc.snapshot_delete", { node = w.node, vmid = vmid, snapname = snapname }),
        deadline)
    end)
    if not ok then
      if newid then pcall(destroy, newid, operation) end
      error(err, 0)
    end
    if tagged then tracker.track_snapshot(provider, tostring(newid), metadata.galley_keep == "1") end
    local cfg = call(operation, "lxc.config", { node = w.node, vmid = newid })
    return snapshot_table(newid, cfg)
  end

  --- Makes a bootable template (a full clone of a PVE snapshot of the container). Inside a run
  --- (or `galley -e`/a script) it is tagged with the run and left for `galley gc` unless
  --- `keep = true`; one taken with a digest (`snapshots.build`'s steps) is an image: untagged,
  --- never collected.
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, keep?: boolean}
  ---@return table snapshot
  function I.snapshot(instance_id, sopts)
    return take_snapshot(instance_id, sopts, "instances.snapshot")
  end

  --- `count` copies of a running container (a template of it, then linked clones booted in parallel).
  function I.fork(instance_id, count, fopts)
    check_vmid(instance_id, "instance_id")
    count = check_count(count == nil and 1 or count, "count")
    if fopts ~= nil and type(fopts) ~= "table" then fail("VALIDATION_ERROR", "options must be a table") end
    fopts = fopts or {}
    local metadata = fopts.metadata
    if metadata == nil then metadata = I.get(instance_id).metadata end
    local snap = take_snapshot(instance_id, { metadata = {} }, "instances.fork")
    local task = require("galley.task")
    local results, errs = {}, {}
    local tasks = {}
    for i = 1, count do
      tasks[i] = task.spawn(function()
        local ok, r = pcall(boot, snap.id, { metadata = metadata, ttl_seconds = fopts.ttl_seconds,
          ttl_action = fopts.ttl_action, timeout_ms = fopts.timeout_ms }, "instances.fork")
        if ok then results[i] = r else errs[#errs + 1] = r end
      end)
    end
    task.join(tasks)
    if #errs > 0 then
      for _, r in pairs(results) do pcall(destroy, r.vmid, "instances.fork") end
      error(errs[1], 0)
    end
    for _, r in ipairs(results) do
      r.forked_from = instance_id
      r.fork_snapshot_id = snap.id
    end
    return results
  end
  I.branch = I.fork

  -- snapshots ----------------------------------------------------------------------------------
  local S = provider.snapshots

  --- A template container (or a vztmpl volume) as a snapshot, or NOT_FOUND.
  function S.get(snapshot_id)
    if type(snapshot_id) == "string" and snapshot_id:find(":", 1, true) then
      local v = M.parse_volid(snapshot_id)
      if not v then fail("VALIDATION_ERROR", "snapshot_id: not a template volume", { field = "snapshot_id" }) end
      for _, img in ipairs(provider.images.list(v.storage)) do
        if img.id == v.volid then
          return { object = "snapshot", id = img.id, status = "ready", metadata = {}, ttl = {}, raw = img.raw }
        end
      end
      fail("NOT_FOUND", "no template volume " .. v.volid, { resource = "snapshot:" .. v.volid })
    end
    local vmid = check_vmid(snapshot_id, "snapshot_id")
    local ok, cfg = pcall(config, vmid, "snapshots.get")
    if not ok then
      if errors.is(cfg, "NOT_FOUND") then cfg.resource = "snapshot:" .. snapshot_id end
      error(cfg, 0)
    end
    if not (value(cfg.template) == 1 or value(cfg.template) == "1") then
      fail("NOT_FOUND", ("%d is a container, not a template"):format(vmid), { resource = "snapshot:" .. snapshot_id })
    end
    return snapshot_table(vmid, cfg)
  end

  --- Template containers whose metadata matches the filter.
  function S.list(filter)
    local want = common.metadata_filter(filter)
    local out = {}
    for _, r in ipairs(resources()) do
      if value(r.template) == 1 or value(r.template) == "1" then
        local ok, cfg = pcall(call, "snapshots.list", "lxc.config", { node = value(r.node), vmid = r.vmid })
        if ok then
          local s = snapshot_table(r.vmid, cfg)
          if common.match_metadata(s.metadata, want) then out[#out + 1] = s end
        end
      end
    end
    return out
  end

  S.create = function(instance_id, sopts) return take_snapshot(instance_id, sopts, "snapshots.create") end

  --- Deletes a template container. CONFLICT (details.reason "linked_clones") while containers
  --- booted or forked from it as linked clones still live, where the storage keeps their base
  --- volume (ZFS, directories; LVM-thin lets it go).
  function S.delete(snapshot_id)
    S.get(snapshot_id)
    local vmid = check_vmid(snapshot_id, "snapshot_id")
    local ok, err = pcall(destroy, vmid, "snapshots.delete")
    if not ok then
      if errors.is(err, "CONFLICT") and type(err.details) == "table" and err.details.reason == "linked_clones" then
        fail("CONFLICT", ("snapshot %s: containers booted from it (linked clones) still use it"):format(snapshot_id), {
          operation = "snapshots.delete", resource = "snapshot:" .. snapshot_id, cause = err,
          details = { reason = "linked_clones", exitstatus = err.exitstatus },
          hint = "terminate the instances booted or forked from it first, then delete it" })
      end
      error(err, 0)
    end
    return true
  end

  function S.build(...) return require("galley.images").build(provider, ...) end

  -- images ---------------------------------------------------------------------------------------
  --- The vztmpl volumes of the template storage: `{id = volid, name, size, raw}`.
  function provider.images.list(storage_id)
    storage_id = storage_id or template_storage
    if not M.valid_storage(storage_id) then
      fail("VALIDATION_ERROR", "storage must be a storage id", { field = "storage" })
    end
    local list = call("images.list", "storage.content", { node = pick_node(), storage = storage_id,
      query = { content = "vztmpl" } })
    local out = {}
    for _, v in ipairs(type(list) == "table" and list or {}) do
      local volid = value(v.volid)
      if type(volid) == "string" then
        out[#out + 1] = { object = "image", id = volid, name = volid:match("vztmpl/(.*)$") or volid,
          disk_size = math.tointeger(tonumber(value(v.size))), raw = v }
      end
    end
    table.sort(out, function(a, b) return a.id < b.id end)
    return out
  end

  --- The snapshot a boot without one uses: PVE_TEMPLATE, else the first vztmpl volume.
  function provider.default_snapshot()
    local t = opts.template or env("PVE_TEMPLATE")
    if t then return t end
    local imgs = provider.images.list()
    for _, img in ipairs(imgs) do
      if img.name:match("^debian%-") then return img.id end -- what galley's recipes expect (bash, coreutils)
    end
    if #imgs == 0 then
      fail("NOT_FOUND", "no vztmpl volume on storage " .. template_storage, { operation = "instances.boot",
        hint = "pveam download " .. template_storage .. " debian-12-standard..., or set PVE_TEMPLATE" })
    end
    return imgs[1].id
  end

  -- `provider.DEFAULT_SNAPSHOT` (what recipes boot without --snapshot) is resolved on first use:
  -- PVE_TEMPLATE / opts.template, else a debian vztmpl volume of template_storage (one request).
  setmetatable(provider, { __index = function(t, k)
    if k ~= "DEFAULT_SNAPSHOT" then return nil end
    local v = provider.default_snapshot()
    rawset(t, k, v)
    return v
  end })

  --- Requests made so far (for figures).
  function provider.requests() return client.requests end

  --- Ends the SSH connections and closes HTTP (a run's key is removed when the run ends).
  function provider.close()
    for name, ch in pairs(channels) do
      ch:close(true)
      if name ~= dir_name then channels[name] = nil end
    end
    client:close()
  end

  tracker.register_provider(provider)
  return provider
end

return M
