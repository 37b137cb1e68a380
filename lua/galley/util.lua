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


-- C0 controls but tab and newline, DEL, and the lead byte of UTF-8's C1 range (U+0080-U+009F).
local CONTROL = "[%z\1-\8\11-\31\127\194]"

--- `s` safe to show on a terminal: text an instance wrote (an agent's output, a remote error)
-- could otherwise move the cursor, rewrite what is on screen, set the title, write the clipboard
-- (OSC 52) or make the terminal answer as if typed. Control characters become visible in caret
-- notation (ESC `^[`, BEL `^G`, DEL `^?`), C1 characters as `\u009b`; tab and newline stay, a
-- carriage return only before a newline or at the end (dropped there: CRLF lines). With
-- `keep_colors`, SGR sequences (`ESC [ 1;31 m`: colours and bold) stay too. Text without any
-- control character is returned as is.
---@param s string
---@param keep_colors? boolean
---@return string
function M.visible(s, keep_colors)
  if not s:find(CONTROL) then return s end
  local out, i, n = {}, 1, #s
  while true do
    local j = s:find(CONTROL, i)
    if not j then
      out[#out + 1] = s:sub(i)
      break
    end
    out[#out + 1] = s:sub(i, j - 1)
    local b, nxt = s:byte(j), j + 1
    if b == 27 and keep_colors and s:match("^%[[%d;:]*m", j + 1) then
      nxt = s:match("^%[[%d;:]*m()", j + 1)
      out[#out + 1] = s:sub(j, nxt - 1)
    elseif b == 13 and (j == n or s:byte(j + 1) == 10) then
      out[#out + 1] = "" -- CRLF, or a line's last CR
    elseif b == 194 then
      local c = s:byte(j + 1)
      if c and c >= 0x80 and c <= 0x9f then
        out[#out + 1], nxt = ("\\u%04x"):format(c), j + 2
      else
        out[#out + 1] = "\194"
      end
    elseif b == 127 then
      out[#out + 1] = "^?"
    else
      out[#out + 1] = "^" .. string.char(b + 64)
    end
    i = nxt
  end
  return table.concat(out)
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


local DURATION_UNITS = { [""] = 1, s = 1, m = 60, h = 3600, d = 86400 }

--- Parses a duration: `90` or `90s` (seconds), `10m`, `2h`, `1d`. The one parser behind every
-- `--ttl` and `--timeout` on the command line. Returns whole seconds, or nil and a sentence.
---@param raw string|integer
---@return integer|nil seconds
---@return string|nil why
function M.parse_duration(raw)
  if math.type(raw) == "integer" then
    if raw < 0 then return nil, "a duration cannot be negative" end
    return raw
  end
  if type(raw) ~= "string" then return nil, "expected a duration such as 90, 90s, 10m or 2h" end
  local n, unit = raw:match("^(%d+)([smhd]?)$")
  if not n or #n > 12 then
    local shown = #raw > 40 and raw:sub(1, 40) .. "…" or raw
    return nil, ("expected a duration such as 90, 90s, 10m or 2h, got '%s'"):format(shown)
  end
  return math.tointeger(tonumber(n)) * DURATION_UNITS[unit]
end


--- The DURATION of `--keep DURATION` / `--keep=DURATION`: `inline` (the text after `=`, any
--- duration) or `next_arg` when it is a number with its unit (`4h`, `30m`: a bare number is left
--- alone, it may be a positional argument). Returns seconds and whether next_arg was taken, or
--- nil and a message; (nil, nil) when there is none (a plain `--keep`).
---@param inline? string
---@param next_arg? string
---@return integer|nil seconds, boolean|string taken_or_message
function M.keep_duration(inline, next_arg)
  local raw, taken = inline, false
  if raw == nil and type(next_arg) == "string" and next_arg:match("^%d+[smhd]$") then raw, taken = next_arg, true end
  if raw == nil then return nil, nil end
  local secs, why = M.parse_duration(raw)
  if not secs then return nil, "--keep: " .. why end
  if secs <= 0 then return nil, "--keep: the duration must be positive (plain --keep keeps for the TTL)" end
  return secs, taken
end


--- A duration in seconds as people read it: `45s`, `12m`, `3h5m`, `2d`.
---@param seconds integer
---@return string
function M.format_duration(seconds)
  seconds = math.floor(seconds)
  if seconds < 0 then return "-" .. M.format_duration(-seconds) end
  if seconds < 120 then return seconds .. "s" end
  if seconds < 3600 then return (seconds // 60) .. "m" .. (seconds % 60 > 0 and ((seconds % 60) .. "s") or "") end
  if seconds < 7200 then return (seconds // 60) .. "m" end
  if seconds < 172800 then
    local m = (seconds % 3600) // 60
    return (seconds // 3600) .. "h" .. (m > 0 and (m .. "m") or "")
  end
  return (seconds // 86400) .. "d"
end


-- Edit distance (insertions, deletions, substitutions, adjacent swaps) between two strings.
local function distance(a, b)
  local prev2, prev = nil, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if prev2 and i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
        cur[j] = math.min(cur[j], prev2[j - 2] + 1)
      end
    end
    prev2, prev = prev, cur
  end
  return prev[#b]
end
M.edit_distance = distance


--- The candidates closest to `word` (did-you-mean): those within an edit distance of a third of
-- the word's length (at least 1, at most 3), or that start with it; best first, at most 3.
---@param word string
---@param candidates string[]
---@return string[]
function M.suggest(word, candidates)
  local limit = math.max(1, math.min(3, #word // 3))
  local scored = {}
  for _, c in ipairs(candidates) do
    local d = distance(word, c)
    if d <= limit or (#word >= 3 and c:sub(1, #word) == word) then scored[#scored + 1] = { c = c, d = d } end
  end
  table.sort(scored, function(x, y) if x.d ~= y.d then return x.d < y.d end return x.c < y.c end)
  local out = {}
  for i = 1, math.min(3, #scored) do out[i] = scored[i].c end
  return out
end


--- "did you mean X?" / "did you mean X or Y?" for `word`, or nil when nothing is close.
---@param word string
---@param candidates string[]
---@param prefix? string put before each candidate ("--")
---@return string|nil
function M.did_you_mean(word, candidates, prefix)
  local near = M.suggest(word, candidates)
  if #near == 0 then return nil end
  for i, c in ipairs(near) do near[i] = (prefix or "") .. c end
  return ("did you mean %s?"):format(table.concat(near, " or "))
end

return M
