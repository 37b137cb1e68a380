--- galley.emulator.faults: injected failures for the next N matching requests.
-- A fault is `{method, path, count, action, status?, retry_after?, delay_ms?, bytes?}`:
--   method       HTTP method or "*" (default "*")
--   path         glob over the API path without "/api" and without the query: `*` matches
--                within one segment, `**` across segments (`/instance/*/exec`)
--   count        how many matching requests it affects (default 1)
--   action       "status"    answer `status` (default 503) at once, nothing is done;
--                             `retry_after` (seconds) adds a Retry-After header
--                "delay"     handle the request, then wait `delay_ms` before answering
--                "stall"     wait `delay_ms`, then handle the request and answer (the work
--                             happens late: a client that gave up meanwhile never sees it)
--                "reset"     close the connection without an answer; nothing is done
--                "reset_after" handle it (a stream runs to its end), then close the connection
--                             without an answer: the work is done, the answer is lost
--                "malformed" handle it, answer its status with a body that is not JSON
--                "truncate"  handle it, announce the full Content-Length, send only `bytes`
--                             (default half the body; for a stream, the first chunk) and close
-- On the command line a fault is written as comma-separated key=value pairs:
--   --fault method=POST,path=/instance/*/exec,action=status,status=503,retry_after=1,count=2
local M = {}

M.actions = { status = true, delay = true, stall = true, reset = true, reset_after = true, malformed = true,
  truncate = true }

local INTEGER_FIELDS = { count = true, status = true, retry_after = true, delay_ms = true, bytes = true }

--- Lua pattern for a path glob.
---@param glob string
---@return string
function M.glob_pattern(glob)
  local out = { "^" }
  local i = 1
  while i <= #glob do
    local c = glob:sub(i, i)
    if glob:sub(i, i + 1) == "**" then
      out[#out + 1] = ".*"
      i = i + 2
    else
      if c == "*" then
        out[#out + 1] = "[^/]*"
      elseif c == "?" then
        out[#out + 1] = "[^/]"
      elseif c:match("%W") then
        out[#out + 1] = "%" .. c
      else
        out[#out + 1] = c
      end
      i = i + 1
    end
  end
  out[#out + 1] = "$"
  return table.concat(out)
end

local function as_integer(v)
  if math.type(v) == "integer" then return v end
  if type(v) == "number" and v == math.floor(v) then return math.tointeger(v) end
  if type(v) == "string" and v:match("^%-?%d+$") then return math.tointeger(tonumber(v)) end
  return nil
end

--- Checks a fault description and fills in defaults.
-- `extra` (optional) allows more actions: `{name = {delay_ms = default}}` (another emulator's
-- own faults, such as the Proxmox emulator's task_fail; delay_ms given or defaulted for them).
---@param t table
---@param extra? table<string, {delay_ms?: integer}>
---@return table|nil fault
---@return string|nil problem  (names the bad field)
function M.validate(t, extra)
  if type(t) ~= "table" then return nil, "fault must be an object" end
  local f = {}
  for k in pairs(t) do
    if not (INTEGER_FIELDS[k] or k == "method" or k == "path" or k == "action") then
      return nil, "unknown field '" .. tostring(k) .. "'"
    end
  end
  for k in pairs(INTEGER_FIELDS) do
    if t[k] ~= nil then
      f[k] = as_integer(t[k])
      if not f[k] then return nil, "field '" .. k .. "' must be an integer" end
    end
  end
  f.method = t.method and tostring(t.method):upper() or "*"
  if type(t.path) ~= "string" or t.path == "" then return nil, "field 'path' is required" end
  f.path = t.path
  f.action = t.action or "status"
  if not M.actions[f.action] and not (extra and extra[f.action]) then
    local names = { "status", "delay", "stall", "reset", "reset_after", "malformed", "truncate" }
    local more = {}
    for k in pairs(extra or {}) do more[#more + 1] = k end
    table.sort(more)
    table.move(more, 1, #more, #names + 1, names)
    return nil, "field 'action' must be " .. table.concat(names, "|")
  end
  if extra and extra[f.action] and extra[f.action].delay_ms then
    f.delay_ms = f.delay_ms or extra[f.action].delay_ms
    if f.delay_ms < 0 then return nil, "field 'delay_ms' must not be negative" end
  end
  f.count = f.count or 1
  if f.count < 1 then return nil, "field 'count' must be at least 1" end
  if f.action == "status" then
    f.status = f.status or 503
    if f.status < 100 or f.status > 599 then return nil, "field 'status' must be 100..599" end
  end
  if f.action == "delay" or f.action == "stall" then
    f.delay_ms = f.delay_ms or 1000
    if f.delay_ms < 0 then return nil, "field 'delay_ms' must not be negative" end
  end
  if f.bytes and f.bytes < 0 then return nil, "field 'bytes' must not be negative" end
  f.pattern = M.glob_pattern(f.path)
  return f
end

--- Parses the command-line form `key=value,key=value`.
---@param spec string
---@param extra? table more actions (see validate)
---@return table|nil fault
---@return string|nil problem
function M.parse(spec, extra)
  local t = {}
  for item in tostring(spec):gmatch("[^,]+") do
    local k, v = item:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
    if not k then return nil, "expected key=value, got '" .. item .. "'" end
    t[k] = v
  end
  return M.validate(t, extra)
end

--- Public view of a fault (what the control routes show).
---@param f table
---@return table
function M.describe(f)
  return {
    method = f.method, path = f.path, count = f.count, action = f.action, status = f.status,
    retry_after = f.retry_after, delay_ms = f.delay_ms, bytes = f.bytes,
  }
end

---@class galley.emulator.FaultList
---@field items table[]
local FaultList = {}
FaultList.__index = FaultList

--- A new, empty fault list.
---@return galley.emulator.FaultList
function M.list()
  return setmetatable({ items = {} }, FaultList)
end

--- Adds a validated fault at the end (earlier faults match first).
---@param f table
function FaultList:add(f)
  self.items[#self.items + 1] = f
end

function FaultList:clear()
  self.items = {}
end

--- Finds the first fault matching the request and uses up one of its count.
---@param method string
---@param path string API path without "/api"
---@return table|nil fault
function FaultList:take(method, path)
  for i, f in ipairs(self.items) do
    if (f.method == "*" or f.method == method) and path:match(f.pattern) then
      f.count = f.count - 1
      if f.count <= 0 then table.remove(self.items, i) end
      return f
    end
  end
  return nil
end

--- Public views of the remaining faults.
---@return table[]
function FaultList:describe()
  local out = {}
  for i, f in ipairs(self.items) do out[i] = M.describe(f) end
  return out
end

return M
