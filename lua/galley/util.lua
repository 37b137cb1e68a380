--- galley.util: small table and string helpers shared by the Lua modules.
-- Pure functions, no I/O; nothing here raises except on misuse noted per function.
local M = {}

--- A deep copy of plain data: tables are copied recursively (cycles and shared subtables are kept
-- as one copy), metatables are kept by reference, everything else is returned as is.
---@generic T
---@param value T
---@return T
function M.deep_copy(value)
  local seen = {}
  local function copy(v)
    if type(v) ~= "table" then return v end
    if seen[v] then return seen[v] end
    local out = {}
    seen[v] = out
    for k, x in pairs(v) do out[copy(k)] = copy(x) end
    return setmetatable(out, getmetatable(v))
  end
  return copy(value)
end


--- A new table with the fields of each argument in turn (later ones win); nil arguments are skipped.
---@param ... table|nil
---@return table
function M.merge(...)
  local out = {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    if t ~= nil then
      for k, v in pairs(t) do out[k] = v end
    end
  end
  return out
end


--- True when `t` is a table whose keys are exactly 1..n (an empty table counts as an array).
---@param t any
---@return boolean
function M.is_array(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do
    if t[i] == nil then return false end
  end
  return true
end


--- The table's keys, sorted (numbers before strings, then by value).
---@param t table
---@return any[]
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end


--- True when `s` starts with `prefix` (plain comparison, no patterns).
---@param s string
---@param prefix string
---@return boolean
function M.starts_with(s, prefix)
  return s:sub(1, #prefix) == prefix
end


--- True when `s` ends with `suffix` (plain comparison, no patterns).
---@param s string
---@param suffix string
---@return boolean
function M.ends_with(s, suffix)
  return suffix == "" or s:sub(-#suffix) == suffix
end


--- `s` without leading and trailing whitespace.
---@param s string
---@return string
function M.trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end


--- Splits `s` on a plain separator; `split("a,,b", ",")` is `{"a", "", "b"}`.
---@param s string
---@param sep string non-empty
---@return string[]
function M.split(s, sep)
  assert(type(sep) == "string" and sep ~= "", "util.split: separator must be a non-empty string")
  local out, pos = {}, 1
  while true do
    local i, j = s:find(sep, pos, true)
    if not i then break end
    out[#out + 1] = s:sub(pos, i - 1)
    pos = j + 1
  end
  out[#out + 1] = s:sub(pos)
  return out
end


--- Replaces every occurrence of `needle` in `s` (plain text, no patterns).
---@param s string
---@param needle string non-empty
---@param replacement string
---@return string result, integer count
function M.replace_plain(s, needle, replacement)
  assert(needle ~= "", "util.replace_plain: needle must be non-empty")
  local parts, pos, n = {}, 1, 0
  while true do
    local i, j = s:find(needle, pos, true)
    if not i then break end
    parts[#parts + 1] = s:sub(pos, i - 1)
    parts[#parts + 1] = replacement
    pos, n = j + 1, n + 1
  end
  if n == 0 then return s, 0 end
  parts[#parts + 1] = s:sub(pos)
  return table.concat(parts), n
end


--- SHA-256 of a string, as lowercase hex.
---@param s string
---@return string
function M.sha256(s)
  return require("galley.core.codec").sha256(s)
end

--- SHA-256 of a local file, read in 1 MiB pieces (memory stays bounded), as lowercase hex.
---@param path string
---@return string|nil hex
---@return table|nil err FS_NOT_FOUND and friends
function M.sha256_file(path)
  local chunks, err = require("galley.core.fs").chunks(path, 1024 * 1024)
  if not chunks then return nil, err end
  local h = require("galley.core.codec").sha256_hasher()
  for piece in chunks do h:update(piece) end
  return h:hex()
end

return M
