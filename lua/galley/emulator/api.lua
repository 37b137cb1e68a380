--- galley.emulator.api: the Morph Cloud VM API (paths relative to `/api`) over a backend.
-- Shapes follow the reference (docs ../shared/reference/morph-api.md §3-4). Where the service's
-- behaviour is not documented, the emulator decides (see `galley help emulate`):
--   * instance metadata, like snapshot metadata, is replaced by POST .../metadata;
--   * exec on an instance that is not `ready` answers 409; so do pause/resume/snapshot on a
--     `pending` one and boot/start from a `pending` snapshot;
--   * a TTL keeps running while an instance is paused (action "stop" still deletes it);
--     resume re-arms it; TTL action "pause" pauses a running instance;
--   * POST /snapshot answers `pending`, ready after the boot delay; snapshots of instances are
--     `ready` at once (their files are copied before the answer);
--   * a `digest` that an existing snapshot has returns that snapshot instead of a new one.
local errors = require("galley.errors")
local common = require("galley.providers.common")
local json = require("galley.emulator.json")
local runtime = require("galley.core.runtime")

local M = {}

local null = json.null

---@class galley.emulator.Api
---@field backend galley.emulator.Backend
---@field boot_delay_ms integer
---@field images table[]
---@field snapshots table<string, table>
---@field instances table<string, table>
---@field reserved table<string, boolean>  ids being created (files still copying)
local Api = {}
Api.__index = Api

-- ---------------------------------------------------------------------------------------
-- responses and validation

local function reply(status, body)
  return { status = status, headers = { ["Content-Type"] = "application/json" }, body = json.encode(body) }
end

local function detail(status, message)
  return reply(status, { detail = message })
end

local function no_content()
  return { status = 204, headers = {}, body = "" }
end

local function verr(loc, msg, kind)
  return { loc = json.array(loc), msg = msg, type = kind }
end

local function invalid(errs)
  return reply(422, { detail = json.array(errs) })
end

--- Collects FastAPI-style validation errors for one request.
local Check = {}
Check.__index = Check

local function check()
  return setmetatable({ errs = {} }, Check)
end

function Check:fail(loc, msg, kind)
  self.errs[#self.errs + 1] = verr(loc, msg, kind)
end

function Check:response()
  if #self.errs > 0 then return invalid(self.errs) end
end

local function absent(v)
  return v == nil or v == null
end

function Check:int(v, loc, min, max)
  if absent(v) then return nil end
  local i = type(v) == "number" and math.tointeger(v) or nil
  if type(v) == "string" and loc[1] == "query" and v:match("^%-?%d+$") then i = math.tointeger(tonumber(v)) end
  if not i then
    self:fail(loc, "Input should be a valid integer", loc[1] == "query" and "int_parsing" or "int_type")
    return nil
  end
  if min and i < min then
    self:fail(loc, "Input should be greater than or equal to " .. min, "greater_than_equal")
    return nil
  end
  if max and i > max then
    self:fail(loc, "Input should be less than or equal to " .. max, "less_than_equal")
    return nil
  end
  return i
end

function Check:str(v, loc)
  if absent(v) then return nil end
  if type(v) ~= "string" then
    self:fail(loc, "Input should be a valid string", "string_type")
    return nil
  end
  return v
end

function Check:bool(v, loc)
  if absent(v) then return nil end
  if type(v) ~= "boolean" then
    self:fail(loc, "Input should be a valid boolean", "bool_type")
    return nil
  end
  return v
end

function Check:enum(v, loc, allowed)
  if absent(v) then return nil end
  for _, a in ipairs(allowed) do
    if v == a then return v end
  end
  self:fail(loc, "Input should be " .. table.concat(allowed, " or "), "enum")
  return nil
end

--- A flat string -> string map (a copy), or nil when absent.
function Check:map(v, loc)
  if absent(v) then return nil end
  if type(v) ~= "table" then
    self:fail(loc, "Input should be a valid dictionary", "dict_type")
    return nil
  end
  local out = {}
  for k, val in pairs(v) do
    local at = table.move(loc, 1, #loc, 1, {})
    at[#at + 1] = k
    if type(k) ~= "string" then
      self:fail(loc, "Input should be a valid dictionary", "dict_type")
      return nil
    elseif type(val) ~= "string" then
      self:fail(at, "Input should be a valid string", "string_type")
    else
      out[k] = val
    end
  end
  return out
end

--- The request body as a table: `{}` when empty (and allowed) or JSON null.
local function body_of(req, required)
  if req.body == "" or req.body:match("^%s*$") then
    if required then return nil, invalid({ verr({ "body" }, "Field required", "missing") }) end
    return {}
  end
  local v = json.decode(req.body)
  if v == nil then return nil, invalid({ verr({ "body", 0 }, "JSON decode error", "json_invalid") }) end
  if v == null then
    if required then return nil, invalid({ verr({ "body" }, "Field required", "missing") }) end
    return {}
  end
  if type(v) ~= "table" then
    return nil, invalid({ verr({ "body" }, "Input should be a valid dictionary or object", "model_attributes_type") })
  end
  return v
end

local function copy(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k] = v end
  return out
end

local ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"

local function random_string(n, chars)
  chars = chars or ID_CHARS
  local out = {}
  for i = 1, n do
    local k = math.random(#chars)
    out[i] = chars:sub(k, k)
  end
  return table.concat(out)
end

local function now_s()
  return os.time()
end

local function now_ms()
  return runtime.now_ms()
end

--- metadata[k]=v pairs from a query table.
local function metadata_filter(query)
  local f = {}
  for k, v in pairs(query) do
    local key = k:match("^metadata%[(.*)%]$")
    if key then f[key] = v end
  end
  return f
end

local function matches(metadata, filter)
  for k, v in pairs(filter) do
    if metadata[k] ~= v then return false end
  end
  return true
end

local function sorted(by_id)
  local list = {}
  for _, v in pairs(by_id) do list[#list + 1] = v end
  table.sort(list, function(a, b) return a.seq < b.seq end)
  return list
end

-- ---------------------------------------------------------------------------------------
-- state

--- A new API model over `backend`.
---@param opts {backend: galley.emulator.Backend, boot_delay_ms?: integer}
---@return galley.emulator.Api
function M.new(opts)
  local self = setmetatable({
    backend = opts.backend,
    boot_delay_ms = opts.boot_delay_ms or 50,
    max_output = opts.max_output,
    images = {
      { id = "morphvm-minimal", object = "image", name = "morphvm-minimal",
        description = "Minimal image (emulated: a directory on this machine)", disk_size = 734003200,
        created = now_s() },
    },
    snapshots = {},
    instances = {},
    reserved = {},
    seq = 0,
    ip = 1,
  }, Api)
  return self
end

function Api:next_seq()
  self.seq = self.seq + 1
  return self.seq
end

function Api:new_id(prefix)
  local id
  repeat
    id = prefix .. random_string(8)
  until not (self.instances[id] or self.snapshots[id] or self.reserved[id])
  self.reserved[id] = true
  return id
end

function Api:image(id)
  for _, img in ipairs(self.images) do
    if img.id == id then return img end
  end
end

--- Adds a ready snapshot (the seeds). Its files come from `from_dir` or start empty.
---@param id string
---@param from_dir? string
---@return table|nil snapshot
---@return galley.Error|nil err
function Api:seed_snapshot(id, from_dir)
  local ok, err = self.backend:create_snapshot(id, from_dir)
  if not ok then return nil, err end
  local snap = {
    id = id, seq = self:next_seq(), created = now_s(), status = "ready",
    spec = { vcpus = 1, memory = 4096, disk_size = 8192 }, image_id = "morphvm-minimal",
    metadata = {}, ttl = {}, last_used_ms = now_ms(),
  }
  self.snapshots[id] = snap
  return snap
end

function Api.snapshot_json(_, s)
  return {
    id = s.id, object = "snapshot", created = s.created, status = s.status,
    spec = copy(s.spec), refs = { image_id = s.image_id }, digest = s.digest or null,
    metadata = copy(s.metadata),
    ttl = { ttl_seconds = s.ttl.seconds or null, ttl_expire_at = s.ttl.expire_at or null },
  }
end

function Api.instance_json(_, inst)
  local services = json.array()
  for _, svc in ipairs(inst.http_services) do
    services[#services + 1] = { name = svc.name, port = svc.port, url = svc.url, auth_mode = svc.auth_mode }
  end
  return {
    id = inst.id, object = "instance", created = inst.created, status = inst.status,
    spec = copy(inst.spec), refs = { snapshot_id = inst.snapshot_id, image_id = inst.image_id },
    networking = { internal_ip = inst.internal_ip, http_services = services },
    metadata = copy(inst.metadata),
    ttl = {
      ttl_seconds = inst.ttl.seconds or null, ttl_expire_at = inst.ttl.expire_at or null,
      ttl_action = inst.ttl.action,
    },
    wake_on = { wake_on_ssh = inst.wake_on.ssh, wake_on_http = inst.wake_on.http },
  }
end

local function arm_ttl(ttl)
  if ttl.seconds then
    ttl.expire_ms = now_ms() + ttl.seconds * 1000
    ttl.expire_at = now_s() + ttl.seconds
  else
    ttl.expire_ms, ttl.expire_at = nil, nil
  end
end

local function new_ssh_key(id)
  local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return {
    object = "instance_ssh_key",
    private_key = "-----BEGIN OPENSSH PRIVATE KEY-----\n" .. random_string(70, b64) .. "\n"
      .. random_string(70, b64) .. "\n-----END OPENSSH PRIVATE KEY-----\n",
    public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" .. random_string(43, b64) .. " " .. id,
    password = random_string(24),
    access_token = random_string(40),
  }
end

--- Creates an instance from a snapshot (files copied before it is listed).
-- opts: spec overrides (vcpus, memory, disk_size), metadata, ttl_seconds, ttl_action.
function Api:start_instance(snap, opts)
  local id = self:new_id("morphvm_")
  local ok, err = self.backend:create_instance(id, snap.id)
  self.reserved[id] = nil
  if not ok then return nil, err end
  snap.last_used_ms = now_ms()
  if snap.ttl.seconds then arm_ttl(snap.ttl) end
  self.ip = self.ip % 65000 + 1
  local inst = {
    id = id, seq = self:next_seq(), created = now_s(), status = "pending",
    ready_at = now_ms() + self.boot_delay_ms,
    spec = {
      vcpus = opts.vcpus or snap.spec.vcpus, memory = opts.memory or snap.spec.memory,
      disk_size = opts.disk_size or snap.spec.disk_size,
    },
    snapshot_id = snap.id, image_id = snap.image_id,
    internal_ip = ("10.%d.%d.%d"):format(self.ip // 65536 % 256, self.ip // 256 % 256, self.ip % 256),
    http_services = {}, metadata = opts.metadata or {},
    ttl = { seconds = opts.ttl_seconds, action = opts.ttl_action or "stop" },
    wake_on = { ssh = false, http = false },
  }
  -- its SSH key is made when first asked for (GET /instance/{id}/ssh/key)
  arm_ttl(inst.ttl)
  if self.boot_delay_ms <= 0 then inst.status = "ready" end
  self.instances[id] = inst
  return inst
end

--- Removes an instance at once (from the listing first, so it is deleted only once), then
-- kills its processes and deletes its files.
function Api:delete_instance(inst)
  if self.instances[inst.id] ~= inst then return end
  self.instances[inst.id] = nil
  inst.status = "deleted"
  return self.backend:remove_instance(inst.id)
end

function Api:delete_snapshot(snap)
  if self.snapshots[snap.id] ~= snap then return end
  self.snapshots[snap.id] = nil
  snap.status = "deleted"
  return self.backend:remove_snapshot(snap.id)
end

function Api:pause_instance(inst)
  inst.status = "paused"
  self.backend:pause(inst.id)
end

--- Applies boot delays and TTLs as of now. Called before each request and periodically.
function Api:tick()
  local now = now_ms()
  local expired_instances, expired_snapshots = {}, {}
  for _, inst in pairs(self.instances) do
    if inst.status == "pending" and now >= inst.ready_at then inst.status = "ready" end
    if inst.ttl.expire_ms and now >= inst.ttl.expire_ms then expired_instances[#expired_instances + 1] = inst end
  end
  for _, snap in pairs(self.snapshots) do
    if snap.status == "pending" and now >= snap.ready_at then snap.status = "ready" end
    if snap.ttl.expire_ms and now >= snap.ttl.expire_ms then expired_snapshots[#expired_snapshots + 1] = snap end
  end
  -- Acting may wait on the backend (and let other requests run): work on the lists above.
  for _, inst in ipairs(expired_instances) do
    if inst.ttl.action == "pause" then
      inst.ttl.expire_ms, inst.ttl.expire_at = nil, nil
      if inst.status ~= "paused" then self:pause_instance(inst) end
    else
      self:delete_instance(inst)
    end
  end
  for _, snap in ipairs(expired_snapshots) do self:delete_snapshot(snap) end
end

-- ---------------------------------------------------------------------------------------
-- handlers: fn(self, req, params) -> response

local H = {}

-- Ids that common.check_id would refuse (".", "..", "a/b", invalid UTF-8 ...) never reach the
-- model: 422 naming the path parameter, as FastAPI answers for a path that fails its pattern.
local function bad_id(name, where)
  return invalid({ verr({ where or "path", name }, "String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'",
    "string_pattern_mismatch") })
end

local function find_instance(self, id)
  if not common.valid_id(id) then return nil, bad_id("instance_id") end
  local inst = self.instances[id]
  if not inst then return nil, detail(404, "Instance " .. id .. " not found") end
  return inst
end

local function find_snapshot(self, id, where)
  if not common.valid_id(id) then return nil, bad_id("snapshot_id", where) end
  local snap = self.snapshots[id]
  if not snap then return nil, detail(404, "Snapshot " .. id .. " not found") end
  return snap
end

local function paginate(items, query, key)
  local c = check()
  local page = c:int(query.page, { "query", "page" }, 1) or 1
  local limit = c:int(query.limit, { "query", "limit" }, 1, 1000) or 50
  local bad = c:response()
  if bad then return bad end
  local slice = json.array()
  for i = (page - 1) * limit + 1, math.min(#items, page * limit) do slice[#slice + 1] = items[i] end
  local pages = (#items + limit - 1) // limit
  return reply(200, {
    [key] = slice, total = #items, page = page, size = limit, total_pages = pages,
    has_next = page < pages, has_prev = page > 1,
  })
end

function H.list_images(self)
  local data = json.array()
  for i, img in ipairs(self.images) do data[i] = copy(img) end
  return reply(200, { object = "list", data = data })
end

function Api:filtered_snapshots(query)
  local filter = metadata_filter(query)
  local digest = query.digest
  local out = json.array()
  for _, s in ipairs(sorted(self.snapshots)) do
    if matches(s.metadata, filter) and (digest == nil or s.digest == digest) then
      out[#out + 1] = self:snapshot_json(s)
    end
  end
  return out
end

function H.list_snapshots(self, req)
  return reply(200, { object = "list", data = self:filtered_snapshots(req.query) })
end

function H.page_snapshots(self, req)
  return paginate(self:filtered_snapshots(req.query), req.query, "snapshots")
end

function Api:by_digest(digest)
  if not digest or digest == "undefined" then return nil end
  for _, s in pairs(self.snapshots) do
    if s.digest == digest then return s end
  end
end

--- The snapshot or instance a handler acts on (`find` of the path's id) and the request's body
--- (`required` or not): obj, body; or nil and the error response (a missing object first).
local function target_and_body(self, find, req, p, required)
  local obj, bad = find(self, p.id)
  if not obj then return nil, bad end
  local body
  body, bad = body_of(req, required)
  if not body then return nil, bad end
  return obj, body
end

function H.create_snapshot(self, req)
  local body, bad = body_of(req, false)
  if not body then return bad end
  local c = check()
  local image_id = c:str(body.image_id, { "body", "image_id" }) or "morphvm-minimal"
  local vcpus = c:int(body.vcpus, { "body", "vcpus" }, 1) or 1
  local memory = c:int(body.memory, { "body", "memory" }, 1) or 128
  local disk_size = c:int(body.disk_size, { "body", "disk_size" }, 1) or 700
  local digest = c:str(body.digest, { "body", "digest" })
  local metadata = c:map(body.metadata, { "body", "metadata" }) or {}
  local ttl_seconds = c:int(body.ttl_seconds, { "body", "ttl_seconds" }, 1)
  if not absent(body.readiness_check) and type(body.readiness_check) ~= "table" then
    c:fail({ "body", "readiness_check" }, "Input should be a valid dictionary", "dict_type")
  end
  bad = c:response()
  if bad then return bad end
  if not self:image(image_id) then return detail(404, "Image " .. image_id .. " not found") end
  local existing = self:by_digest(digest)
  if existing then return reply(200, self:snapshot_json(existing)) end
  local id = self:new_id("snapshot_")
  local ok, err = self.backend:create_snapshot(id)
  self.reserved[id] = nil
  if not ok then return detail(500, "cannot create snapshot: " .. tostring(err)) end
  local snap = {
    id = id, seq = self:next_seq(), created = now_s(), status = "pending",
    ready_at = now_ms() + self.boot_delay_ms,
    spec = { vcpus = vcpus, memory = memory, disk_size = disk_size }, image_id = image_id,
    digest = digest, metadata = metadata, ttl = { seconds = ttl_seconds }, last_used_ms = now_ms(),
  }
  if self.boot_delay_ms <= 0 then snap.status = "ready" end
  arm_ttl(snap.ttl)
  self.snapshots[id] = snap
  return reply(200, self:snapshot_json(snap))
end

function H.get_snapshot(self, _, p)
  local snap, bad = find_snapshot(self, p.id)
  if not snap then return bad end
  return reply(200, self:snapshot_json(snap))
end

function H.delete_snapshot(self, _, p)
  local snap, bad = find_snapshot(self, p.id)
  if not snap then return bad end
  self:delete_snapshot(snap)
  return no_content()
end

--- The handler replacing the metadata of the snapshot or instance `find` names, answering
--- `to_json` of it.
local function set_metadata(find, to_json)
  return function(self, req, p)
    local obj, body = target_and_body(self, find, req, p, true)
    if not obj then return body end
    local c = check()
    local metadata = c:map(body, { "body" })
    local bad = c:response()
    if bad then return bad end
    obj.metadata = metadata
    return reply(200, to_json(self, obj))
  end
end

H.snapshot_metadata = set_metadata(find_snapshot, function(self, snap) return self:snapshot_json(snap) end)

function H.snapshot_ttl(self, req, p)
  local snap, body = target_and_body(self, find_snapshot, req, p, true)
  if not snap then return body end
  local c = check()
  local seconds = c:int(body.ttl_seconds, { "body", "ttl_seconds" }, 1)
  local bad = c:response()
  if bad then return bad end
  snap.ttl.seconds = seconds
  arm_ttl(snap.ttl)
  return reply(200, self:snapshot_json(snap))
end

--- Reads the boot/start options shared by several endpoints.
local function boot_options(c, body, with_spec)
  local o = {
    metadata = c:map(body.metadata, { "body", "metadata" }),
    ttl_seconds = c:int(body.ttl_seconds, { "body", "ttl_seconds" }, 1),
    ttl_action = c:enum(body.ttl_action, { "body", "ttl_action" }, { "stop", "pause" }),
  }
  if with_spec then
    o.vcpus = c:int(body.vcpus, { "body", "vcpus" }, 1)
    o.memory = c:int(body.memory, { "body", "memory" }, 1)
    o.disk_size = c:int(body.disk_size, { "body", "disk_size" }, 1)
  end
  return o
end

local function start_from(self, snap, opts)
  if snap.status ~= "ready" then
    return detail(409, "Snapshot " .. snap.id .. " is not ready (" .. snap.status .. ")")
  end
  local inst, err = self:start_instance(snap, opts)
  if not inst then return detail(500, "cannot start instance: " .. tostring(err)) end
  return reply(200, self:instance_json(inst))
end

function H.boot_snapshot(self, req, p)
  local snap, body = target_and_body(self, find_snapshot, req, p, false)
  if not snap then return body end
  local c = check()
  local opts = boot_options(c, body, true)
  local bad = c:response()
  if bad then return bad end
  return start_from(self, snap, opts)
end

function H.start_instance(self, req)
  local c = check()
  local snapshot_id = req.query.snapshot_id
  if not snapshot_id or snapshot_id == "" then c:fail({ "query", "snapshot_id" }, "Field required", "missing") end
  local body, bad = body_of(req, false)
  if not body then return bad end
  local opts = boot_options(c, body, false)
  bad = c:response()
  if bad then return bad end
  local snap
  snap, bad = find_snapshot(self, snapshot_id, "query")
  if not snap then return bad end
  return start_from(self, snap, opts)
end

function Api:filtered_instances(query)
  local filter = metadata_filter(query)
  local out = json.array()
  for _, inst in ipairs(sorted(self.instances)) do
    if matches(inst.metadata, filter) then out[#out + 1] = self:instance_json(inst) end
  end
  return out
end

function H.list_instances(self, req)
  return reply(200, { object = "list", data = self:filtered_instances(req.query) })
end

function H.page_instances(self, req)
  return paginate(self:filtered_instances(req.query), req.query, "instances")
end

function H.get_instance(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  return reply(200, self:instance_json(inst))
end

function H.delete_instance(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  self:delete_instance(inst)
  return no_content()
end

local function not_ready(inst)
  return detail(409, "Instance " .. inst.id .. " is not ready (" .. inst.status .. ")")
end

function H.pause_instance(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  if inst.status == "pending" then return not_ready(inst) end
  if inst.status ~= "paused" then self:pause_instance(inst) end
  return reply(200, self:instance_json(inst))
end

function H.resume_instance(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  if inst.status == "pending" then return not_ready(inst) end
  if inst.status == "paused" then
    inst.status = "ready"
    self.backend:resume(inst.id)
    arm_ttl(inst.ttl)
  end
  return reply(200, self:instance_json(inst))
end

--- How the SSH gateway runs a command in instance `id` (galley.emulator, POST
--- /_emulator/ssh/ID): the backend's spawn plan `{argv, env, cwd}`, or an error response: 404
--- unknown, 409 not ready. A paused instance is woken when its `wake_on.wake_on_ssh` is set
--- (as Morph does), refused (409) otherwise.
---@param id string
---@return table|nil plan
---@return table|nil response
function Api:ssh_plan(id)
  local inst, bad = find_instance(self, id)
  if not inst then return nil, bad end
  if inst.status == "paused" and inst.wake_on.ssh then
    inst.status = "ready"
    self.backend:resume(inst.id)
    arm_ttl(inst.ttl)
  end
  if inst.status ~= "ready" then return nil, not_ready(inst) end
  local plan, err = self.backend:spawn_plan(inst.id)
  if not plan then return nil, detail(503, "cannot run commands in " .. inst.id .. ": " .. tostring(err)) end
  return plan
end

function H.reboot_instance(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, false)
  if not inst then return body end
  local c = check()
  local o = boot_options(c, body, true)
  local bad = c:response()
  if bad then return bad end
  self.backend:resume(inst.id)
  self.backend:kill(inst.id)
  for _, k in ipairs({ "vcpus", "memory", "disk_size" }) do
    if o[k] then inst.spec[k] = o[k] end
  end
  if o.metadata then inst.metadata = o.metadata end
  if o.ttl_action then inst.ttl.action = o.ttl_action end
  if o.ttl_seconds then inst.ttl.seconds = o.ttl_seconds end
  arm_ttl(inst.ttl)
  inst.status = "pending"
  inst.ready_at = now_ms() + self.boot_delay_ms
  if self.boot_delay_ms <= 0 then inst.status = "ready" end
  return reply(200, self:instance_json(inst))
end

--- Copies an instance into a new ready snapshot (or returns the one with `digest`).
function Api:snapshot_of(inst, digest, metadata, ttl_seconds)
  local existing = self:by_digest(digest)
  if existing then return existing end
  local id = self:new_id("snapshot_")
  local ok, err = self.backend:snapshot_instance(inst.id, id)
  self.reserved[id] = nil
  if not ok then return nil, err end
  -- Another request with the same digest may have finished while this one copied: one wins.
  existing = self:by_digest(digest)
  if existing then
    self.backend:remove_snapshot(id)
    return existing
  end
  local snap = {
    id = id, seq = self:next_seq(), created = now_s(), status = "ready",
    spec = copy(inst.spec), image_id = inst.image_id,
    digest = (digest ~= "undefined" and digest ~= "") and digest or nil,
    metadata = metadata or {}, ttl = { seconds = ttl_seconds }, last_used_ms = now_ms(),
  }
  arm_ttl(snap.ttl)
  self.snapshots[id] = snap
  return snap
end

function H.snapshot_instance(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, false)
  if not inst then return body end
  local c = check()
  local metadata = c:map(body.metadata, { "body", "metadata" })
  local ttl_seconds = c:int(body.ttl_seconds, { "body", "ttl_seconds" }, 1)
  local bad = c:response()
  if bad then return bad end
  if inst.status == "pending" then return not_ready(inst) end
  local snap, err = self:snapshot_of(inst, req.query.digest, metadata, ttl_seconds)
  if not snap then return detail(500, "cannot snapshot: " .. tostring(err)) end
  return reply(200, self:snapshot_json(snap))
end

function H.branch_instance(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, false)
  if not inst then return body end
  local c = check()
  local count = c:int(req.query.count, { "query", "count" }, 1, 64) or 1
  local snap_meta = c:map(body.snapshot_metadata, { "body", "snapshot_metadata" })
  local inst_meta = {}
  local im = body.instance_metadata
  if not absent(im) then
    if type(im) == "table" and im[1] ~= nil then
      for i, m in ipairs(im) do inst_meta[i] = c:map(m, { "body", "instance_metadata", i - 1 }) end
    else
      local m = c:map(im, { "body", "instance_metadata" })
      for i = 1, count do inst_meta[i] = copy(m) end
    end
  end
  local bad = c:response()
  if bad then return bad end
  if inst.status == "pending" then return not_ready(inst) end
  local snap, err = self:snapshot_of(inst, req.query.digest, snap_meta, nil)
  if not snap then return detail(500, "cannot snapshot: " .. tostring(err)) end
  local instances = json.array()
  for i = 1, count do
    local clone
    clone, err = self:start_instance(snap, { metadata = inst_meta[i] })
    if not clone then return detail(500, "cannot start clone: " .. tostring(err)) end
    instances[#instances + 1] = self:instance_json(clone)
  end
  return reply(200, { snapshot = self:snapshot_json(snap), instances = instances })
end

--- Validates an exec body; returns the command or nil, response.
local function exec_command(req)
  local body, bad = body_of(req, true)
  if not body then return nil, bad end
  local cmd = body.command
  if absent(cmd) then return nil, invalid({ verr({ "body", "command" }, "Field required", "missing") }) end
  if type(cmd) ~= "table" then
    return nil, invalid({ verr({ "body", "command" }, "Input should be a valid list", "list_type") })
  end
  local n = 0
  for _ in pairs(cmd) do n = n + 1 end
  if n == 0 then
    return nil, invalid({ verr({ "body", "command" }, "List should have at least 1 item", "too_short") })
  end
  if n ~= #cmd then
    return nil, invalid({ verr({ "body", "command" }, "Input should be a valid list", "list_type") })
  end
  for i, a in ipairs(cmd) do
    if type(a) ~= "string" then
      return nil, invalid({ verr({ "body", "command", i - 1 }, "Input should be a valid string", "string_type") })
    end
  end
  return cmd
end

function H.exec(self, req, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  local cmd
  cmd, bad = exec_command(req)
  if not cmd then return bad end
  if inst.status ~= "ready" then return not_ready(inst) end
  local r, err = self.backend:exec(inst.id, cmd, self.max_output, req.peer_gone)
  if not r and errors.is(err, "CLIENT_GONE") then return { reset = true } end -- nobody reads an answer
  if not r then return detail(503, "exec failed: " .. tostring(err)) end
  return reply(200, { exit_code = r.exit_code, stdout = r.stdout, stderr = r.stderr, truncated = r.truncated })
end

--- Splits off an incomplete UTF-8 sequence at the end of s (kept for the next chunk).
local function split_utf8(s)
  local n = #s
  for back = 1, math.min(3, n) do
    local b = s:byte(n - back + 1)
    if b < 0x80 then return s, "" end
    if b >= 0xC0 then
      local need = b >= 0xF0 and 4 or b >= 0xE0 and 3 or 2
      if back < need then return s:sub(1, n - back), s:sub(n - back + 1) end
      return s, ""
    end
  end
  return s, ""
end

--- How long an SSE stream may stay silent before a keep-alive comment is sent.
local SSE_KEEPALIVE_MS = 5000

local function sse(event)
  return "data: " .. json.encode(event) .. "\n\n"
end

function H.exec_sse(self, req, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  local cmd
  cmd, bad = exec_command(req)
  if not cmd then return bad end
  if inst.status ~= "ready" then return not_ready(inst) end
  local backend, id = self.backend, inst.id
  local h, err = backend:spawn(id, cmd)
  local headers = { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache" }
  if not h then
    if not (type(err) == "table" and err.code == "PROC_SPAWN") then
      return detail(503, "exec failed: " .. tostring(err))
    end
    local body = sse({ type = "stderr", content = tostring(cmd[1]) .. ": command not found\n" })
      .. sse({ type = "exit_code", content = "127" }) .. "data: [DONE]\n\n"
    local sent = false
    return { status = 200, headers = headers, stream = function()
      if sent then return nil end
      sent = true
      return body
    end }
  end
  local carry = { stdout = "", stderr = "" }
  local finished = false
  local function stream()
    if finished then return nil end
    while true do
      local kind, a = h:read(SSE_KEEPALIVE_MS)
      if kind == nil and a == nil then
        -- Silence: a comment line (clients skip it) finds out whether the client is still
        -- there; if it is gone, the write fails and close() ends the command.
        return ": keep-alive\n\n"
      elseif kind == "stdout" or kind == "stderr" then
        local text
        text, carry[kind] = split_utf8(carry[kind] .. a)
        if text ~= "" then return sse({ type = kind, content = text }) end
      elseif kind == "exit" then
        finished = true
        backend:release(id, h)
        local out = {}
        for _, k in ipairs({ "stdout", "stderr" }) do
          if carry[k] ~= "" then out[#out + 1] = sse({ type = k, content = carry[k] }) end
        end
        out[#out + 1] = sse({ type = "exit_code", content = tostring(a) })
        out[#out + 1] = "data: [DONE]\n\n"
        return table.concat(out)
      elseif kind == nil and a ~= nil then
        return false -- interrupted: cut the stream
      end
    end
  end
  local function close() -- the response is done with (or the client went away)
    if not finished then
      finished = true
      backend:release(id, h)
    end
  end
  return { status = 200, headers = headers, stream = stream, close = close }
end

H.instance_metadata = set_metadata(find_instance, function(self, inst) return self:instance_json(inst) end)

function H.instance_ttl(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, true)
  if not inst then return body end
  local c = check()
  local seconds = c:int(body.ttl_seconds, { "body", "ttl_seconds" }, 1)
  local action = c:enum(body.ttl_action, { "body", "ttl_action" }, { "stop", "pause" })
  local bad = c:response()
  if bad then return bad end
  inst.ttl.seconds = seconds
  if action then inst.ttl.action = action end
  arm_ttl(inst.ttl)
  return reply(200, self:instance_json(inst))
end

function H.wake_on(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, false)
  if not inst then return body end
  local c = check()
  local ssh = c:bool(body.wake_on_ssh, { "body", "wake_on_ssh" })
  local http = c:bool(body.wake_on_http, { "body", "wake_on_http" })
  local bad = c:response()
  if bad then return bad end
  if ssh ~= nil then inst.wake_on.ssh = ssh end
  if http ~= nil then inst.wake_on.http = http end
  return reply(200, self:instance_json(inst))
end

local function valid_service_name(name)
  if #name < 1 or #name > 40 then return false end
  if #name == 1 then return name:match("^[a-z0-9]$") ~= nil end
  return name:match("^[a-z0-9][a-z0-9_-]*[a-z0-9]$") ~= nil
end

function H.expose_http(self, req, p)
  local inst, body = target_and_body(self, find_instance, req, p, true)
  if not inst then return body end
  local c = check()
  local name = c:str(body.name, { "body", "name" })
  if absent(body.name) then c:fail({ "body", "name" }, "Field required", "missing") end
  if name and not valid_service_name(name) then
    c:fail({ "body", "name" }, "String should match pattern '^[a-z0-9]([a-z0-9-_]*[a-z0-9])?$'",
      "string_pattern_mismatch")
  end
  local port = c:int(body.port, { "body", "port" }, 1, 65535)
  if absent(body.port) then c:fail({ "body", "port" }, "Field required", "missing") end
  local auth_mode = c:enum(body.auth_mode, { "body", "auth_mode" }, { "none", "api_key" }) or "none"
  local bad = c:response()
  if bad then return bad end
  local svc = {
    name = name, port = port, auth_mode = auth_mode,
    url = ("https://%s-%s.http.localhost"):format(name, (inst.id:gsub("_", "-"))),
  }
  local replaced = false
  for i, s in ipairs(inst.http_services) do
    if s.name == name then
      inst.http_services[i] = svc
      replaced = true
    end
  end
  if not replaced then inst.http_services[#inst.http_services + 1] = svc end
  return reply(200, self:instance_json(inst))
end

function H.hide_http(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  for i, s in ipairs(inst.http_services) do
    if s.name == p.name then
      table.remove(inst.http_services, i)
      return reply(200, self:instance_json(inst))
    end
  end
  return detail(404, "HTTP service " .. p.name .. " not found")
end

function H.get_ssh_key(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  inst.ssh_key = inst.ssh_key or new_ssh_key(inst.id)
  return reply(200, inst.ssh_key)
end

function H.rotate_ssh_key(self, _, p)
  local inst, bad = find_instance(self, p.id)
  if not inst then return bad end
  inst.ssh_key = new_ssh_key(inst.id)
  return reply(200, inst.ssh_key)
end

-- ---------------------------------------------------------------------------------------
-- routing

local ROUTES = {
  { "GET", "/image", H.list_images },
  { "GET", "/snapshot", H.list_snapshots },
  { "POST", "/snapshot", H.create_snapshot },
  { "GET", "/snapshot/list", H.page_snapshots },
  { "GET", "/snapshot/{id}", H.get_snapshot },
  { "DELETE", "/snapshot/{id}", H.delete_snapshot },
  { "POST", "/snapshot/{id}/metadata", H.snapshot_metadata },
  { "POST", "/snapshot/{id}/ttl", H.snapshot_ttl },
  { "POST", "/snapshot/{id}/boot", H.boot_snapshot },
  { "GET", "/instance", H.list_instances },
  { "POST", "/instance", H.start_instance },
  { "GET", "/instance/list", H.page_instances },
  { "GET", "/instance/{id}", H.get_instance },
  { "DELETE", "/instance/{id}", H.delete_instance },
  { "POST", "/instance/{id}/pause", H.pause_instance },
  { "POST", "/instance/{id}/resume", H.resume_instance },
  { "POST", "/instance/{id}/reboot", H.reboot_instance },
  { "POST", "/instance/{id}/snapshot", H.snapshot_instance },
  { "POST", "/instance/{id}/branch", H.branch_instance },
  { "POST", "/instance/{id}/exec", H.exec },
  { "POST", "/instance/{id}/exec/sse", H.exec_sse },
  { "POST", "/instance/{id}/metadata", H.instance_metadata },
  { "POST", "/instance/{id}/ttl", H.instance_ttl },
  { "POST", "/instance/{id}/wake-on", H.wake_on },
  { "POST", "/instance/{id}/http", H.expose_http },
  { "DELETE", "/instance/{id}/http/{name}", H.hide_http },
  { "GET", "/instance/{id}/ssh/key", H.get_ssh_key },
  { "POST", "/instance/{id}/ssh/key", H.rotate_ssh_key },
}

local function segments(path)
  local out = {}
  for s in path:gmatch("[^/]+") do out[#out + 1] = s end
  return out
end

for _, r in ipairs(ROUTES) do r.segments = segments(r[2]) end

local function match_route(route, segs)
  if #route.segments ~= #segs then return nil end
  local params = {}
  for i, s in ipairs(route.segments) do
    local name = s:match("^{(.+)}$")
    if name then
      params[name] = segs[i]
    elseif s ~= segs[i] then
      return nil
    end
  end
  return params
end

--- Answers one API request. `path` is relative to /api ("/instance/x").
---@param req table  request from galley.core.httpd
---@param path string
---@return table response
function Api:handle(req, path)
  local segs = segments(path)
  local path_matched = false
  for _, r in ipairs(ROUTES) do
    local params = match_route(r, segs)
    if params then
      if r[1] == req.method then return r[3](self, req, params) end
      path_matched = true
    end
  end
  if path_matched then return detail(405, "Method Not Allowed") end
  return detail(404, "Not Found")
end

--- Snapshot of the whole model for GET /_emulator/state.
---@return table
function Api:dump()
  local instances, snapshots = json.array(), json.array()
  for _, inst in ipairs(sorted(self.instances)) do
    local j = self:instance_json(inst)
    j.dir = self.backend:instance_dir(inst.id)
    local n = 0
    for _ in pairs(self.backend.running[inst.id] or {}) do n = n + 1 end
    j.processes = n
    instances[#instances + 1] = j
  end
  for _, s in ipairs(sorted(self.snapshots)) do
    local j = self:snapshot_json(s)
    j.dir = self.backend:snapshot_dir(s.id)
    snapshots[#snapshots + 1] = j
  end
  local images = json.array()
  for i, img in ipairs(self.images) do images[i] = copy(img) end
  return { instances = instances, snapshots = snapshots, images = images }
end

--- Kills every process and forgets nothing else (the emulator is stopping).
function Api:shutdown()
  self.backend:shutdown()
end

M.reply = reply
M.detail = detail

return M
