--- galley.emulator.proxmox_wire: Proxmox VE's wire forms for the emulator (galley emulate proxmox):
-- the `{"data": ...}` envelope, errors (message in the status line and the body), form bodies,
-- parameter checks with PVE's messages, UPIDs. No state here.
local json = require("galley.json")

local M = {}

M.null = json.null

--- A PVE error raised by route code and turned into an answer by the dispatcher.
---@param status integer
---@param message string
---@param errs? table<string, string> per-parameter problems (400)
function M.fail(status, message, errs)
  error({ pve_error = true, status = status, message = message, errors = errs }, 0)
end

--- 400 Parameter verification failed, with one problem per parameter.
---@param errs table<string, string>
function M.param_fail(errs)
  M.fail(400, "Parameter verification failed.", errs)
end

--- The answer `{"data": data}` (extra top-level fields in `extra`, such as a task log's total).
function M.ok(data, extra)
  local body = { data = data == nil and json.null or data }
  for k, v in pairs(extra or {}) do body[k] = v end
  return { status = 200, headers = { ["Content-Type"] = "application/json;charset=UTF-8" }, body = json.encode(body) }
end

--- An error answer: the message is the status line's reason phrase and, unless `old_errors`,
-- the body's `message` (with PVE's trailing newline); 400s carry `errors`.
function M.error_response(status, message, errs, old_errors)
  local body = { data = json.null }
  if not old_errors then body.message = message .. "\n" end
  if errs then body.errors = errs end
  return { status = status, reason = message:gsub("[%c]", " "):sub(1, 500),
    headers = { ["Content-Type"] = "application/json;charset=UTF-8" }, body = json.encode(body) }
end

--- Decodes %XX and `+` (form encoding).
---@param s string
---@return string
function M.unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Decodes one path segment (%XX only: `+` stays).
function M.unescape_segment(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parses `a=1&b=2` (form or query); a repeated key keeps its last value.
---@param s string|nil
---@return table<string, string>
function M.parse_form(s)
  local out = {}
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    k = M.unescape(k)
    if k ~= "" then out[k] = M.unescape(v) end
  end
  return out
end

--- The parameters of a request: the query merged with a form (or JSON object) body.
---@param req table
---@return table<string, string>
function M.params(req)
  local p = M.parse_form(req.raw_query)
  local body = req.body or ""
  if body ~= "" then
    local ctype = (req.headers["content-type"] or ""):lower()
    local from
    if ctype:find("json", 1, true) then
      local ok, decoded = pcall(json.decode, body)
      if not ok or type(decoded) ~= "table" then M.fail(400, "malformed JSON body") end
      from = {}
      for k, v in pairs(decoded) do
        if type(v) == "boolean" then v = v and "1" or "0" end
        if type(v) == "number" then v = math.tointeger(v) and tostring(math.tointeger(v)) or tostring(v) end
        if type(v) == "string" then from[k] = v end
      end
    else
      from = M.parse_form(body)
    end
    for k, v in pairs(from) do p[k] = v end
  end
  return p
end

-- parameter checks ------------------------------------------------------------------------

local MISSING = "property is missing and it is not optional"
local UNKNOWN = "property is not defined in schema and the schema does not allow additional properties"

local FORMAT = "invalid format - format error\n"

local function integer_check(min, max)
  return function(v)
    if not v:match("^%s*[+-]?%d+%s*$") then return nil, ("type check ('integer') failed - got '%s'"):format(v) end
    local n = math.tointeger(tonumber(v))
    if not n then return nil, ("type check ('integer') failed - got '%s'"):format(v) end
    if min and n < min then return nil, ("value must have a minimum value of %d"):format(min) end
    if max and n > max then return nil, ("value must have a maximum value of %d"):format(max) end
    return n
  end
end

local BOOLEANS = { ["1"] = 1, ["0"] = 0, yes = 1, no = 0, on = 1, off = 0, ["true"] = 1, ["false"] = 0 }

local function boolean_check(v)
  local b = BOOLEANS[v:lower()]
  if b == nil then return nil, ("type check ('boolean') failed - got '%s'"):format(v) end
  return b
end

local function string_check(maxlen, pattern, problem)
  return function(v)
    if maxlen and #v > maxlen then return nil, ("value may only be %d characters long"):format(maxlen) end
    if pattern and not v:match(pattern) then return nil, problem or "value does not match the regex pattern" end
    return v
  end
end

local function dns_name(v)
  if #v > 255 then return nil, "invalid format - value does not look like a valid DNS name" end
  for label in (v .. "."):gmatch("([^.]*)%.") do
    if not label:match("^[%w]$") and not label:match("^[%w][%w%-]*[%w]$") or #label > 63 then
      return nil, "invalid format - value does not look like a valid DNS name"
    end
  end
  return v
end

local function node_name(v)
  if not v:match("^[%w]$") and not v:match("^[%w][%w%-]*[%w]$") then
    return nil, "invalid format - value does not look like a valid node name"
  end
  return v
end

local function storage_id(v)
  if not v:match("^[%a][%w%-_%.]*$") then
    return nil, ("invalid format - storage ID '%s' contains illegal characters"):format(v)
  end
  return v
end

--- Tags: separated by `;`, `,` or spaces; each `[a-z0-9_][a-z0-9_+.-]*` (any case). Returns the
-- `;`-joined list, duplicates dropped, order kept.
local function tags_check(v)
  local out, seen = {}, {}
  for t in v:gmatch("[^;,%s]+") do
    if not t:match("^[%w_][%w_%+%.%-]*$") then
      return nil, ("invalid format - invalid characters in tag '%s'"):format(t)
    end
    if not seen[t] then
      seen[t] = true
      out[#out + 1] = t
    end
  end
  return table.concat(out, ";")
end

--- net0: `name=eth0,bridge=vmbr0,ip=dhcp|manual|A.B.C.D/N,...`; a static IPv4 must be in
-- 127.0.0.0/8 here (the emulator's containers live on loopback).
local NET_KEYS = { name = true, bridge = true, ip = true, gw = true, hwaddr = true, firewall = true, type = true,
  tag = true, mtu = true, rate = true, ip6 = true, gw6 = true, link_down = true, trunks = true }

function M.parse_net(v)
  local t = {}
  for item in v:gmatch("[^,]+") do
    local k, val = item:match("^%s*([%w_]+)=(.*)$")
    if not k or not NET_KEYS[k] then
      return nil, ("invalid format - format error\nnet0.%s: property is not defined in schema"):format(k or item)
    end
    t[k] = val
  end
  if not t.name then return nil, FORMAT .. "net0.name: property is missing and it is not optional" end
  if not t.name:match("^[%w_%-%.]+$") then return nil, FORMAT .. "net0.name: invalid interface name" end
  if t.ip and t.ip ~= "dhcp" and t.ip ~= "manual" then
    local a, b, c, d, n = t.ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)/(%d+)$")
    local valid = a and tonumber(n) <= 32
    for _, x in ipairs({ a, b, c, d }) do if valid and tonumber(x) > 255 then valid = false end end
    if not valid then
      return nil, FORMAT .. "net0.ip: invalid format - value does not look like a valid CIDR network"
    end
    if a ~= "127" then
      return nil, "invalid format - the galley emulator's containers need a static ip in 127.0.0.0/8 (or ip=dhcp)"
    end
  end
  if t.hwaddr and not t.hwaddr:match("^%x%x:%x%x:%x%x:%x%x:%x%x:%x%x$") then
    return nil, "invalid format - format error\nnet0.hwaddr: value does not look like a valid MAC address"
  end
  return t
end

--- The config string of a parsed net0, in PVE's order.
function M.format_net(t)
  local out = {}
  for _, k in ipairs({ "name", "bridge", "firewall", "gw", "gw6", "hwaddr", "ip", "ip6", "link_down", "mtu",
    "rate", "tag", "trunks", "type" }) do
    if t[k] then out[#out + 1] = k .. "=" .. t[k] end
  end
  return table.concat(out, ",")
end

local function net_check(v)
  local t, problem = M.parse_net(v)
  if not t then return nil, problem end
  return t
end

--- `STORAGE:VOLNAME` (a volume id).
local function volume_check(v)
  local s, vol = v:match("^([%a][%w%-_%.]*):(.+)$")
  if not s then return nil, ("unable to parse volume ID '%s'"):format(v) end
  return { storage = s, volname = vol, volid = v }
end

--- rootfs: `STORAGE:SIZE_GB` or `volume=STORAGE:SIZE_GB[,size=..]`.
local function rootfs_check(v)
  local first = v:match("^([^,]+)")
  first = first and first:gsub("^volume=", "")
  local s, size = (first or ""):match("^([%a][%w%-_%.]*):(%d+%.?%d*)$")
  if not s then return nil, "invalid format - format error\nrootfs.volume: expected STORAGE:SIZE_GB" end
  return { storage = s, size = tonumber(size) }
end

M.types = {
  vmid = integer_check(100, 999999999),
  node = node_name,
  integer = integer_check(),
  memory = integer_check(16),
  swap = integer_check(0),
  cores = integer_check(1, 8192),
  boolean = boolean_check,
  text = string_check(8192),
  hostname = dns_name,
  storage = storage_id,
  tags = tags_check,
  net = net_check,
  volume = volume_check,
  rootfs = rootfs_check,
  keys = string_check(64 * 1024),
  word = string_check(128, "^[%w_%-%.:@!]+$", "invalid format - value does not match the regex pattern"),
  snapname = string_check(40, "^[%a][%w_%-]*$", "invalid format - invalid configuration ID"),
  password = string_check(1024),
  any = string_check(64 * 1024),
}

--- Checks `params` against `schema` ({name = {type, required?}}): the converted values, or a 400.
---@param params table<string, string>
---@param schema table<string, {[1]: string, required?: boolean}>
---@param fixed? table<string, boolean> names that come from the path (never "unknown")
---@return table
function M.check(params, schema, fixed)
  local out, errs = {}, {}
  for k, v in pairs(params) do
    local spec = schema[k]
    if not spec then
      if not (fixed and fixed[k]) then errs[k] = UNKNOWN end
    else
      local val, problem = M.types[spec[1]](v)
      if val == nil then errs[k] = problem else out[k] = val end
    end
  end
  for k, spec in pairs(schema) do
    if spec.required and params[k] == nil and not errs[k] then errs[k] = MISSING end
  end
  if next(errs) then M.param_fail(errs) end
  return out
end

--- A UPID: `UPID:node:PID:PSTART:STARTTIME:type:id:user:` (hex fields 8 digits, upper case).
function M.upid(node, pid, pstart, starttime, kind, id, user)
  return ("UPID:%s:%08X:%08X:%08X:%s:%s:%s:"):format(node, pid, pstart, starttime, kind, id or "", user)
end

--- The fields of a UPID, or nil.
function M.parse_upid(s)
  local node, pid, pstart, st, kind, id, user =
    s:match("^UPID:([^:]+):(%x+):(%x+):(%x+):([^:]*):([^:]*):([^:]*):$")
  if not node then return nil end
  return { node = node, pid = tonumber(pid, 16), pstart = tonumber(pstart, 16), starttime = tonumber(st, 16),
    type = kind, id = id, user = user }
end

return M
