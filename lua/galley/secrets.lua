--- galley.secrets: the one place that decides what a secret looks like, and hides it.
-- galley.log (every record, `log.redact`), galley.errors (every error, all through) and
-- galley.credentials (masked read-back) all use these rules:
--   - registered values (`secrets.register`) and their base64 forms;
--   - token-looking text: sk-ant-..., sk-..., morph_..., Bearer ..., JWTs, GitHub tokens,
--     `Authorization: ...` headers;
--   - `name=value` (and `name: value`, `"name": "value"`) pairs with a secret-sounding name,
--     wherever they stand in a text (`stderr: DB_PASSWORD=s3cr3t` hides `s3cr3t`);
--   - in tables, values under secret-sounding keys (password, secret, authorization, cookie,
--     credential(s), api_key, private_key, *token*; *key*, *auth*, *signature* when the value
--     looks like a random blob), whatever the nesting.
-- Redaction is linear in the size of the text (no pattern here backtracks more than once over a
-- word), so a 1 MiB message or a 200 KiB unbroken word costs milliseconds.
local M = {}

--- Values shorter than this are not registered (they would hide ordinary words).
M.MIN_LEN = 4

local MAX_DEPTH = 12

local registered = {} -- longest first
local registered_set = {}

local function add(s)
  if #s < M.MIN_LEN or registered_set[s] then return end
  registered_set[s] = true
  registered[#registered + 1] = s
  table.sort(registered, function(a, b) return #a > #b end)
end


--- Registers a secret for the whole process, together with its base64 forms (inside a longer
-- base64 text a secret starts at one of three alignments: the characters that depend on the
-- secret alone are the encoding of a 3-byte-aligned core of it).
---@param value any
---@return boolean registered false for nil, non-strings and values shorter than `MIN_LEN`
function M.register(value)
  if type(value) ~= "string" or #value < M.MIN_LEN then return false end
  add(value)
  local ok, codec = pcall(require, "galley.core.codec")
  if ok and type(codec) == "table" and codec.base64_encode then
    for skip = 0, 2 do
      local core = value:sub(1 + skip)
      core = core:sub(1, #core - #core % 3)
      if #core >= 9 then
        for _, variant in ipairs({ "standard", "urlsafe" }) do
          add((codec.base64_encode(core, variant):gsub("=+$", "")))
        end
      end
    end
  end
  return true
end

-- ---------------------------------------------------------------------------------------------
-- Names and values
-- ---------------------------------------------------------------------------------------------

local ALWAYS = { "password", "passwd", "secret", "authorization", "cookie", "credential", "apikey",
  "privatekey", "token" }
local BLOB = { "key", "auth", "signature" }
local EXEMPT_SUFFIX = { "path", "file", "filename", "dir", "name", "id", "count", "length", "len", "size",
  "type", "mode", "expiresat", "expires", "expiry", "url", "ttl", "format", "kind", "bytes", "ms" }
-- Of a longer name only its tail counts ("<200 KiB of junk>password" is still a password).
local MAX_NAME = 256

--- How secret a key (a field or variable name) sounds: "always" when any string under it is a
-- secret, "blob" when only random-looking strings are (`looks_like_blob`), nil for ordinary
-- names. Case, "_", "-" and "." do not matter; `*_path`, `*_id`, `*_count` ... are ordinary.
---@param key any
---@return "always"|"blob"|nil
function M.sensitivity(key)
  if type(key) ~= "string" then return nil end
  if #key > MAX_NAME then key = key:sub(-MAX_NAME) end
  local n = key:lower():gsub("[_%-%.]", "")
  local found
  for _, w in ipairs(ALWAYS) do
    if n:find(w, 1, true) then found = "always" break end
  end
  if not found then
    for _, w in ipairs(BLOB) do
      if n:find(w, 1, true) then found = "blob" break end
    end
  end
  if not found then return nil end
  for _, suffix in ipairs(EXEMPT_SUFFIX) do
    if #n > #suffix and n:sub(-#suffix) == suffix then return nil end
  end
  return found
end


--- A random-looking string: 16+ characters of the base64/hex/URL alphabet, with letters and digits.
---@param s string
---@return boolean
function M.looks_like_blob(s)
  return #s >= 16 and s:find("^[%w%+/=_%-%.~]+$") ~= nil and s:find("%d") ~= nil and s:find("%a") ~= nil
end


--- A string that is a token on its own: a known token prefix (sk-, morph_, ghp_..., github_pat_,
-- a JWT) or a random-looking string of 32+ characters.
---@param s string
---@return boolean
function M.looks_like_token(s)
  if s:find("^sk%-") or s:find("^morph_") or s:find("^gh[pousr]_") or s:find("^github_pat_")
    or s:find("^eyJ[%w%-_]+%.eyJ") then
    return true
  end
  return #s >= 32 and M.looks_like_blob(s)
end


--- Whether a string value stored under `key` is a secret (by the key's sensitivity or because
-- the value looks like a token).
---@param key any
---@param value string
---@return boolean
function M.is_secret_value(key, value)
  local mode = M.sensitivity(key)
  if mode == "always" then return value ~= "" end
  if mode == "blob" and M.looks_like_blob(value) then return true end
  return M.looks_like_token(value)
end

-- ---------------------------------------------------------------------------------------------
-- Text
-- ---------------------------------------------------------------------------------------------

local REDACTED = "[REDACTED]"

local function ci(word) -- a case-insensitive Lua pattern for a plain word
  return (word:gsub("%a", function(c) return "[" .. c:upper() .. c:lower() .. "]" end))
end

-- Every pattern starts with a literal or a frontier, and each of its repeated classes stops at
-- a character the next item needs: a failed attempt costs O(1) or consumes a word once.
local AUTH_PAT = "(" .. ci("authorization") .. "[\"']?%s*[:=]%s*[\"']?)([^\"'\r\n]+)"
local BEARER_PAT = "(" .. ci("bearer") .. "%s+)([%w%-%._~%+/]+=*)"
local JWT_PAT = "%f[%w%-_]eyJ[%w%-_]+%.eyJ[%w%-_]+%.[%w%-_]*"
-- `name<sep>` where name is a whole word; its value runs to the next TERM_PAT character.
local PAIR_PAT = "%f[%w_%-%.]([%w_%-%.]+)([\"']?%s*[:=]%s*[\"']?)"
local TERM_PAT = "[%s\"',;&}%]%)]"


local function replace_plain(s, needle)
  local parts, pos = {}, 1
  while true do
    local i, j = s:find(needle, pos, true)
    if not i then break end
    parts[#parts + 1] = s:sub(pos, i - 1)
    parts[#parts + 1] = REDACTED
    pos = j + 1
  end
  if pos == 1 then return s end
  parts[#parts + 1] = s:sub(pos)
  return table.concat(parts)
end


-- Names seen in texts and their sensitivity (bounded: cleared when full).
local name_cache, name_cache_size = {}, 0

local function name_sensitivity(name)
  local m = name_cache[name]
  if m == nil then
    m = M.sensitivity(name) or false
    if name_cache_size >= 4096 then name_cache, name_cache_size = {}, 0 end
    name_cache[name], name_cache_size = m, name_cache_size + 1
  end
  return m
end


-- `name=value` pairs: one left-to-right scan. A pair that is not redacted is stepped over by its
-- name only, so its value can itself hold a pair (`stderr: password=x`, `key: token=x`). The end
-- of a value (the next terminator) is searched once for all the names inside it, and a value
-- longer than VALUE_PEEK that is kept is stepped over whole: no byte is read more than a bounded
-- number of times.
local VALUE_PEEK = 256

local function redact_pairs(s)
  local parts, pos, copied, term = {}, 1, 1, 0
  while true do
    local ns, se, name, sep = s:find(PAIR_PAT, pos)
    if not ns then break end
    pos = se + 1
    local mode = name_sensitivity(name)
    if mode then
      if term <= se then term = s:find(TERM_PAT, se + 1) or (#s + 1) end
      local vs, ve = se + 1, term - 1
      if ve >= vs then
        -- "name: text" is often prose ("field token: expected string"): only `name=value` and
        -- quoted JSON-style keys get the full rules; a bare "name:" only hides blob-looking values.
        if mode == "always" and not (sep:find("=", 1, true) or sep:find("^[\"']")) then mode = "blob" end
        local long = ve - vs + 1 > VALUE_PEEK
        local value = s:sub(vs, long and vs + VALUE_PEEK or ve)
        if value:find("^%[REDACTED") then
          pos = ve + 1
        elseif mode == "always" or M.looks_like_blob(long and s:sub(vs, ve) or value) then
          -- A value already partly redacted ("sk-ant-[REDACTED]") goes whole, bracket included.
          if s:byte(ve + 1) == 93 and s:sub(vs, ve):find("[REDACTED", 1, true) then ve = ve + 1 end
          parts[#parts + 1] = s:sub(copied, vs - 1)
          parts[#parts + 1] = REDACTED
          copied, pos = ve + 1, ve + 1
        elseif long then
          pos = ve + 1
        end
      end
    end
  end
  if copied == 1 then return s end
  parts[#parts + 1] = s:sub(copied)
  return table.concat(parts)
end


local NAME_WORDS = { "pass", "secret", "auth", "cookie", "credential", "key", "token", "signature" }

--- Redacts secrets from a text (see the module header); other values come back unchanged.
---@param s string
---@return string
function M.redact_text(s)
  if type(s) ~= "string" then return s end
  for _, secret in ipairs(registered) do
    if s:find(secret, 1, true) then s = replace_plain(s, secret) end
  end
  -- Each pass runs only when its literal part occurs at all (most texts have none).
  local low = s:lower()
  local function has(word) return low:find(word, 1, true) ~= nil end
  if has("authorization") then s = s:gsub(AUTH_PAT, "%1" .. REDACTED) end
  if has("bearer") then
    s = s:gsub(BEARER_PAT, function(lead, tok)
      if #tok >= 20 or (#tok >= 8 and tok:find("%d")) then return lead .. REDACTED end
    end)
  end
  if s:find("sk-", 1, true) then
    s = s:gsub("sk%-ant%-[%w%-_]+", "sk-ant-" .. REDACTED)
    s = s:gsub("%f[%w]sk%-[%w%-_]+", function(tok)
      if #tok >= 23 then return "sk-" .. REDACTED end
    end)
  end
  if s:find("morph_", 1, true) then
    s = s:gsub("%f[%w]morph_([%w%-_]+)", function(rest)
      if #rest >= 16 then return "morph_" .. REDACTED end
    end)
  end
  if s:find("gh", 1, true) then
    s = s:gsub("%f[%w]gh[pousr]_[%w]+", function(tok)
      if #tok >= 24 then return tok:sub(1, 4) .. REDACTED end
    end)
    s = s:gsub("%f[%w]github_pat_[%w_]+", "github_pat_" .. REDACTED)
  end
  if s:find("eyJ", 1, true) then s = s:gsub(JWT_PAT, REDACTED) end
  -- Names are compared without "_", "-" and "." (sensitivity's rule): "TO_KEN=x" is a token.
  for _, w in ipairs(NAME_WORDS) do
    if has(w) then return redact_pairs(s) end
  end
  local squeezed = low:gsub("[_%-%.]", "")
  for _, w in ipairs(NAME_WORDS) do
    if squeezed:find(w, 1, true) then return redact_pairs(s) end
  end
  return s
end


--- The masked form of a secret value in a table: "[REDACTED len=N]".
---@param value string
---@return string
function M.mask(value)
  return ("[REDACTED len=%d]"):format(#value)
end


local function redact_value(v, mode, seen, depth)
  local t = type(v)
  if t == "string" then
    if v ~= "" and (mode == "always" or (mode == "blob" and M.looks_like_blob(v))) then return M.mask(v) end
    return M.redact_text(v)
  elseif t ~= "table" then
    return v
  end
  if seen[v] then return seen[v] end
  if depth > MAX_DEPTH then return "[...]" end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do
    local child_mode = mode == "always" and "always" or M.sensitivity(k)
    out[k] = redact_value(x, child_mode, seen, depth + 1)
  end
  return setmetatable(out, getmetatable(v))
end


--- Redacts secrets from a value. Strings: as `redact_text`. Tables: a deep copy (metatables
-- kept, so galley errors stay errors; cycles kept) where, in addition, values under
-- secret-sounding keys are masked (`mask`). `key`, when given, is the name the value is stored
-- under (so `redact("x", "password")` masks). Other values come back unchanged.
---@generic T
---@param value T
---@param key? string
---@return T
function M.redact(value, key)
  local t = type(value)
  if t ~= "string" and t ~= "table" then return value end
  return redact_value(value, M.sensitivity(key), {}, 0)
end


return M
