--- galley.providers.morph_check: the shape of every Morph answer galley uses, checked before use.
--
--   local check = require("galley.providers.morph_check")
--   local raw = check.answer("snapshots_boot", body, "instances.boot", "snapshot:snapshot_x")
--   -- raw is the body (an Instance with a string id and status), or this raised:
--   -- {code = "PROTOCOL_ERROR", kind = "ProviderError", operation = "instances.boot",
--   --  endpoint = "snapshots.boot", field = "id", resource = "snapshot:snapshot_x"}
--
-- What is checked (reference/morph-api.md §3-4): ids and statuses are non-empty strings;
-- metadata maps hold strings (JSON null is dropped); times, TTL seconds and exit codes are
-- integers (exit codes within EXIT_CODE_MIN..EXIT_CODE_MAX); stdout/stderr are strings (JSON
-- null or absent reads ""); a list envelope's `data` is an array; a branch answer has a snapshot
-- and an array of instances. Optional fields may be absent or null. Unknown fields are ignored.
-- `answer` knows the client methods the Morph provider calls (galley.core.morph); methods it
-- does not know (and DELETE's `true`) pass unchecked.
local cjson = require("cjson")
local errors = require("galley.errors")

local M = {}

--- Exit codes accepted from the service: a process's 0..255, and -1 (some SSH servers report a
--- command killed by a signal so).
M.EXIT_CODE_MIN = -1
M.EXIT_CODE_MAX = 255

local null = cjson.null


local function absent(v)
  return v == nil or v == null
end


-- Raises PROTOCOL_ERROR for `field` of the answer of `endpoint`.
local function bad(ctx, field, want, got)
  local shown = type(got) == "string" and ("%q"):format(got:sub(1, 40)) or tostring(got)
  if got == null then shown = "null" elseif type(got) == "table" then shown = "a JSON " ..
    (next(got) == nil and "value" or (got[1] ~= nil and "array" or "object")) end
  error(errors.ProviderError("PROTOCOL_ERROR", ("%s answered %s with %s: expected %s"):format(ctx.endpoint,
    field == "" and "a body" or ("`" .. field .. "`"), shown, want), {
    operation = ctx.operation, endpoint = ctx.endpoint, field = field ~= "" and field or "body",
    resource = ctx.resource,
    hint = "the service's answer does not have the documented shape; is MORPH_BASE_URL a Morph API?",
  }), 0)
end


local function at(prefix, name)
  if prefix == "" then return name end
  if type(name) == "number" then return ("%s[%d]"):format(prefix, name) end
  return prefix .. "." .. name
end


local function object(ctx, v, field)
  if type(v) ~= "table" or v == null then bad(ctx, field, "a JSON object", v) end
  return v
end


local function opt_object(ctx, v, field)
  if absent(v) then return nil end
  return object(ctx, v, field)
end


local function id(ctx, v, field)
  if type(v) ~= "string" or v == "" or v:find("[%c/%s?#%%]") then bad(ctx, field, "an id string", v) end
  return v
end


local function str(ctx, v, field)
  if type(v) ~= "string" or v == "" then bad(ctx, field, "a non-empty string", v) end
  return v
end


local function opt_str(ctx, v, field)
  if absent(v) then return nil end
  if type(v) ~= "string" then bad(ctx, field, "a string or null", v) end
  return v
end


local function opt_int(ctx, v, field, min, max)
  if absent(v) then return nil end
  local i = type(v) == "number" and math.tointeger(v) or nil
  if not i or (min and i < min) or (max and i > max) then
    bad(ctx, field, ("an integer%s"):format(min and (" in %d..%d"):format(min, max) or ""), v)
  end
  return i
end


local function array(ctx, v, field)
  if type(v) ~= "table" or v == null then bad(ctx, field, "a JSON array", v) end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then bad(ctx, field, "a JSON array", v) end
  return v
end


local function metadata(ctx, v, field)
  if absent(v) then return end
  object(ctx, v, field)
  for k, x in pairs(v) do
    if type(k) ~= "string" then bad(ctx, field, "a map of strings", v) end
    if not absent(x) and type(x) ~= "string" then bad(ctx, at(field, k), "a string", x) end
  end
end


local function ttl(ctx, v, field)
  v = opt_object(ctx, v, field)
  if not v then return end
  opt_int(ctx, v.ttl_seconds, at(field, "ttl_seconds"))
  opt_int(ctx, v.ttl_expire_at, at(field, "ttl_expire_at"))
  opt_str(ctx, v.ttl_action, at(field, "ttl_action"))
end


local function refs(ctx, v, field)
  v = opt_object(ctx, v, field)
  if not v then return end
  opt_str(ctx, v.snapshot_id, at(field, "snapshot_id"))
  opt_str(ctx, v.image_id, at(field, "image_id"))
end


--- Checks an Instance body (prefix: where it sits in the answer, "" for the whole body).
function M.instance(ctx, v, prefix)
  prefix = prefix or ""
  object(ctx, v, prefix)
  id(ctx, v.id, at(prefix, "id"))
  str(ctx, v.status, at(prefix, "status"))
  metadata(ctx, v.metadata, at(prefix, "metadata"))
  opt_int(ctx, v.created, at(prefix, "created"))
  ttl(ctx, v.ttl, at(prefix, "ttl"))
  refs(ctx, v.refs, at(prefix, "refs"))
  return v
end


--- Checks a Snapshot body.
function M.snapshot(ctx, v, prefix)
  prefix = prefix or ""
  object(ctx, v, prefix)
  id(ctx, v.id, at(prefix, "id"))
  str(ctx, v.status, at(prefix, "status"))
  metadata(ctx, v.metadata, at(prefix, "metadata"))
  opt_int(ctx, v.created, at(prefix, "created"))
  opt_str(ctx, v.digest, at(prefix, "digest"))
  ttl(ctx, v.ttl, at(prefix, "ttl"))
  refs(ctx, v.refs, at(prefix, "refs"))
  return v
end


--- Checks an Image body.
function M.image(ctx, v, prefix)
  prefix = prefix or ""
  object(ctx, v, prefix)
  id(ctx, v.id, at(prefix, "id"))
  opt_str(ctx, v.name, at(prefix, "name"))
  opt_str(ctx, v.description, at(prefix, "description"))
  opt_int(ctx, v.disk_size, at(prefix, "disk_size"))
  opt_int(ctx, v.created, at(prefix, "created"))
  return v
end


--- Checks a list envelope `{"data": [...]}` and each item with `item`.
function M.list(ctx, v, item)
  object(ctx, v, "")
  array(ctx, v.data, "data")
  for i, x in ipairs(v.data) do item(ctx, x, ("data[%d]"):format(i - 1)) end
  return v
end


--- Checks an exec answer (blocking or assembled from SSE) and returns it normalized:
--- `{exit_code = integer, stdout = string, stderr = string, truncated = true?}` (null or absent
--- output reads ""; `truncated` only where the service says `"truncated": true`: the documented
--- API has no such field, galley emulate sends it when it cut an output).
function M.exec(ctx, v)
  object(ctx, v, "")
  local code = opt_int(ctx, v.exit_code, "exit_code", M.EXIT_CODE_MIN, M.EXIT_CODE_MAX)
  if code == nil then bad(ctx, "exit_code", "an integer", v.exit_code) end
  local out = {}
  for _, k in ipairs({ "stdout", "stderr" }) do
    local s = v[k]
    if absent(s) then s = "" end
    if type(s) ~= "string" then bad(ctx, k, "a string or null", s) end
    out[k] = s
  end
  out.exit_code = code
  if v.truncated == true then out.truncated = true end
  return out
end


--- Checks a branch answer `{"snapshot": Snapshot, "instances": [Instance...]}`.
function M.branch(ctx, v)
  object(ctx, v, "")
  M.snapshot(ctx, v.snapshot, "snapshot")
  array(ctx, v.instances, "instances")
  for i, x in ipairs(v.instances) do M.instance(ctx, x, ("instances[%d]"):format(i - 1)) end
  return v
end


local function list_of(item)
  return function(ctx, v) return M.list(ctx, v, item) end
end


-- Client method (galley.core.morph) -> its endpoint name and the check of its answer.
local ANSWERS = {
  images_list = { "images.list", list_of(M.image) },
  snapshots_list = { "snapshots.list", list_of(M.snapshot) },
  snapshots_get = { "snapshots.get", M.snapshot },
  snapshots_create = { "snapshots.create", M.snapshot },
  snapshots_metadata = { "snapshots.metadata", M.snapshot },
  snapshots_ttl = { "snapshots.ttl", M.snapshot },
  snapshots_boot = { "snapshots.boot", M.instance },
  instances_list = { "instances.list", list_of(M.instance) },
  instances_start = { "instances.start", M.instance },
  instances_get = { "instances.get", M.instance },
  wait_ready = { "instances.get", M.instance },
  instances_pause = { "instances.pause", M.instance },
  instances_resume = { "instances.resume", M.instance },
  instances_reboot = { "instances.reboot", M.instance },
  instances_snapshot = { "instances.snapshot", M.snapshot },
  instances_branch = { "instances.branch", M.branch },
  instances_exec = { "instances.exec", M.exec },
  instances_metadata = { "instances.metadata", M.instance },
  instances_ttl = { "instances.ttl", M.instance },
}

--- Checks the answer of client method `method` (e.g. "snapshots_boot") and returns it (exec
--- answers normalized, see M.exec). Raises PROTOCOL_ERROR with `operation` (the provider call),
--- `endpoint` (the client's endpoint name), `field` and `resource`.
---@param method string
---@param v any the client's result
---@param operation string
---@param resource? string
---@param endpoint? string overrides the endpoint name (exec over SSE: "instances.exec_sse")
---@return any
function M.answer(method, v, operation, resource, endpoint)
  local a = ANSWERS[method]
  if not a then return v end
  return a[2]({ operation = operation, endpoint = endpoint or a[1], resource = resource }, v)
end

return M
