--- galley.json: JSON encode/decode for galley code and recipes (lua-cjson underneath), with an
-- explicit array marker so an empty list encodes as `[]`, and UTF-8 repair for text from processes.
-- lua-cjson cannot tell `[]` from `{}` when encoding, and the Morph shapes need both, so
-- encoding is done here: tables marked with `json.array` (or non-empty sequences) become arrays,
-- other tables objects with sorted keys. Strings that are not valid UTF-8 (raw process output)
-- get U+FFFD for each bad byte so the document stays valid JSON. Decoding uses cjson.safe.
local cjson = require("cjson.safe")

local M = {}

local array_mt = { __name = "galley.emulator.json.array" }

--- JSON null (what cjson decodes `null` to).
M.null = cjson.null

--- Marks `t` (or a new table) as a JSON array, so an empty one encodes as `[]`.
---@param t? table
---@return table
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

local function escape_char(c)
  return escapes[c] or ("\\u%04x"):format(c:byte())
end

--- Replaces every byte that is not part of a valid UTF-8 sequence with U+FFFD.
---@param s string
---@return string
function M.valid_utf8(s)
  if utf8.len(s) then return s end
  local parts, i = {}, 1
  while i <= #s do
    local n, bad = utf8.len(s, i)
    if n then
      parts[#parts + 1] = s:sub(i)
      break
    end
    parts[#parts + 1] = s:sub(i, bad - 1)
    parts[#parts + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(parts)
end

local encode_value

local function encode_string(s, out)
  if not s:find('[%c"\\\128-\255]') then -- plain ASCII: nothing to repair or escape
    out[#out + 1] = '"' .. s .. '"'
    return
  end
  out[#out + 1] = '"' .. M.valid_utf8(s):gsub('[%c"\\]', escape_char) .. '"'
end

local function is_array(t)
  return getmetatable(t) == array_mt or (next(t) ~= nil and t[1] ~= nil)
end

function encode_value(v, out, depth)
  local t = type(v)
  if v == nil or v == M.null then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif math.type(v) == "integer" then
      out[#out + 1] = tostring(v)
    elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      out[#out + 1] = ("%d"):format(v)
    else
      out[#out + 1] = ("%.17g"):format(v)
    end
  elseif t == "string" then
    encode_string(v, out)
  elseif t == "table" then
    assert(depth < 100, "json.encode: nesting too deep")
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode_value(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        encode_string(k, out)
        out[#out + 1] = ":"
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        encode_value(val, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("json.encode: cannot encode a " .. t)
  end
end

--- Encodes a value as compact JSON.
---@param v any
---@return string
function M.encode(v)
  local out = {}
  encode_value(v, out, 0)
  return table.concat(out)
end

--- Decodes JSON text.
---@param s string
---@return any|nil value
---@return string|nil err
function M.decode(s)
  return cjson.decode(s)
end

return M
