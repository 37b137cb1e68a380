--- galley.pretty: readable values for the REPL and `--json`-less command output.
-- Tables print sorted and indented; instances and snapshots print as one line each.
local errors = require("galley.errors")
local util = require("galley.util")

local M = {}

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil
end

local function age(created)
  if type(created) ~= "number" then return nil end
  if created > 1e12 then created = created / 1000 end -- milliseconds
  local d = os.time() - created
  if d < 0 then return "just now" end
  if d < 90 then return ("%ds ago"):format(d) end
  if d < 5400 then return ("%dm ago"):format(d // 60) end
  if d < 172800 then return ("%dh ago"):format(d // 3600) end
  return ("%dd ago"):format(d // 86400)
end

local function meta_text(meta)
  if type(meta) ~= "table" then return nil end
  local keys = {}
  for k in pairs(meta) do keys[#keys + 1] = tostring(k) end
  if #keys == 0 then return nil end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(meta[k]) end
  return "{" .. table.concat(parts, " ") .. "}"
end

--- "instance", "snapshot" or nil: what kind of provider record a table is.
---@param v any
---@return string|nil
function M.record_kind(v)
  if type(v) ~= "table" or type(v.id) ~= "string" then return nil end
  if v.object == "instance" or v.id:match("^morphvm_") or (v.status and v.snapshot_id ~= nil) then
    return "instance"
  end
  if v.object == "snapshot" or v.id:match("^snapshot_") then return "snapshot" end
  return nil
end

--- One readable line for an instance or snapshot record.
---@param v table
---@return string
function M.record_line(v)
  local kind = M.record_kind(v)
  local parts = { kind, v.id, v.status or "?" }
  local snap = v.snapshot_id or (type(v.refs) == "table" and v.refs.snapshot_id)
  if kind == "instance" and snap then parts[#parts + 1] = "from " .. tostring(snap) end
  local created = age(v.created_at or v.created)
  if created then parts[#parts + 1] = created end
  local ttl = type(v.ttl) == "table" and (v.ttl.seconds or v.ttl.ttl_seconds)
  if ttl then parts[#parts + 1] = ("ttl %ss"):format(ttl) end
  local m = meta_text(v.metadata)
  if m then parts[#parts + 1] = m end
  return table.concat(parts, "  ")
end

local sorted_keys = util.sorted_keys

local function is_array(t)
  local n = #t
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n, n
end

local format_value

local function format_table(t, indent, depth, seen, opts)
  if seen[t] then return "<cycle>" end
  if depth > opts.max_depth then return "{...}" end
  if errors.is(t) then return errors.format(t) end
  local mt = getmetatable(t)
  if mt and mt.__tostring then return tostring(t) end
  local kind = M.record_kind(t)
  if kind then return M.record_line(t) end
  local array, n = is_array(t)
  if next(t) == nil then return "{}" end
  seen[t] = true
  -- A list of records: one line each.
  if array and n > 0 and M.record_kind(t[1]) then
    local lines = {}
    for i = 1, math.min(n, opts.max_items) do
      local item = M.record_kind(t[i]) and M.record_line(t[i])
        or format_value(t[i], indent .. "  ", depth + 1, seen, opts)
      lines[#lines + 1] = indent .. "  " .. item
    end
    if n > opts.max_items then lines[#lines + 1] = indent .. ("  ... %d more"):format(n - opts.max_items) end
    seen[t] = nil
    return "{\n" .. table.concat(lines, ",\n") .. "\n" .. indent .. "}"
  end
  local items, short = {}, true
  local keys = sorted_keys(t)
  for i, k in ipairs(keys) do
    if i > opts.max_items then
      items[#items + 1] = ("... %d more"):format(#keys - opts.max_items)
      break
    end
    local v = format_value(t[k], indent .. "  ", depth + 1, seen, opts)
    if v:find("\n") then short = false end
    if array then
      items[#items + 1] = v
    elseif is_identifier(k) then
      items[#items + 1] = k .. " = " .. v
    else
      items[#items + 1] = "[" .. format_value(k, indent, depth + 1, seen, opts) .. "] = " .. v
    end
  end
  seen[t] = nil
  local one = "{ " .. table.concat(items, ", ") .. " }"
  if short and #one + #indent <= 100 then return one end
  return "{\n" .. indent .. "  " .. table.concat(items, ",\n" .. indent .. "  ") .. "\n" .. indent .. "}"
end

function format_value(v, indent, depth, seen, opts)
  local t = type(v)
  if t == "string" then
    if #v > opts.max_string then
      return ("%q"):format(v:sub(1, opts.max_string)):gsub("\\\n", "\\n") .. ("..(%d bytes)"):format(#v)
    end
    return (("%q"):format(v):gsub("\\\n", "\\n"))
  elseif t == "table" then
    return format_table(v, indent, depth, seen, opts)
  elseif t == "number" or t == "boolean" or t == "nil" then
    return tostring(v)
  end
  return tostring(v)
end

--- Formats any value for people.
---@param v any
---@param opts? {max_depth?: integer, max_items?: integer, max_string?: integer}
---@return string
function M.format(v, opts)
  opts = opts or {}
  opts.max_depth = opts.max_depth or 6
  opts.max_items = opts.max_items or 100
  opts.max_string = opts.max_string or 2000
  return format_value(v, "", 1, {}, opts)
end

return M
