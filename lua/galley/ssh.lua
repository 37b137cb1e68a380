--- galley.ssh: SSH keys with expiry in an instance's ~/.ssh/authorized_keys, for every provider.
--
--   local gssh = require("galley.ssh")
--   gssh.authorize(p, inst.id, "ssh-ed25519 AAAA... me@laptop", {label = "alice", expires_at = os.time() + 3600})
--   for _, k in ipairs(gssh.list(p, inst.id)) do print(k.fingerprint, k.label, k.expires_at) end
--   gssh.revoke(p, inst.id, "alice")          -- or a fingerprint "SHA256:..."
--
-- The expiry is OpenSSH's own `expiry-time="YYYYMMDDHHMMSSZ"` key option (UTC), so sshd refuses
-- the key after that time by itself: no galley daemon runs. The label is the key's comment. Keys
-- are checked here before anything is written (type, base64, the blob's own type name): a
-- malformed key is VALIDATION_ERROR with `field = "pubkey"`. The file is replaced atomically
-- (provider.files.write_file_atomic: a temporary file, then rename; mode 600, ~/.ssh mode 700);
-- authorizing a key that is already there replaces its line. Everything goes through the
-- provider's exec/files, so it works on Morph, local and Proxmox alike.
local codec = require("galley.core.codec")
local errors = require("galley.errors")

local M = {}

M.PATH = "~/.ssh/authorized_keys"

--- Key types sshd accepts in authorized_keys.
M.KEY_TYPES = {
  ["ssh-ed25519"] = true, ["ssh-rsa"] = true, ["ecdsa-sha2-nistp256"] = true, ["ecdsa-sha2-nistp384"] = true,
  ["ecdsa-sha2-nistp521"] = true, ["sk-ssh-ed25519@openssh.com"] = true,
  ["sk-ecdsa-sha2-nistp256@openssh.com"] = true, ["ssh-dss"] = true,
}

local function invalid(field, message, hint)
  error(errors.new("VALIDATION_ERROR", message, { field = field, hint = hint, kind = "ProviderError" }), 0)
end


local function hex_to_bin(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end


--- OpenSSH's fingerprint of a key blob: "SHA256:" + unpadded base64 of its SHA-256.
---@param blob string the decoded key
---@return string
function M.fingerprint(blob)
  return "SHA256:" .. (codec.base64_encode(hex_to_bin(codec.sha256(blob))):gsub("=+$", ""))
end


--- Parses and checks a public key line "TYPE BASE64 [comment]". Raises VALIDATION_ERROR.
---@param pubkey any
---@return {type: string, base64: string, blob: string, comment: string|nil, fingerprint: string}
function M.parse_key(pubkey)
  local hint = "pass one line of an id_*.pub file: TYPE BASE64 [comment]"
  if type(pubkey) ~= "string" then invalid("pubkey", "pubkey must be a string, got " .. type(pubkey), hint) end
  local line = pubkey:gsub("^%s+", ""):gsub("%s+$", "")
  if line:find("[\r\n%z]") then invalid("pubkey", "pubkey must be one line", hint) end
  local ty, b64, comment = line:match("^(%S+)%s+(%S+)%s*(.*)$")
  if not ty then invalid("pubkey", "pubkey: expected TYPE BASE64 [comment]", hint) end
  if not M.KEY_TYPES[ty] then
    invalid("pubkey", "pubkey: unknown key type " .. errors.quote(ty), "ssh-ed25519, ssh-rsa or ecdsa-sha2-*")
  end
  local blob = b64:match("^[%w%+/]+=*$") and codec.base64_decode(b64) or nil
  if not blob or #blob < 8 then invalid("pubkey", "pubkey: the key is not valid base64", hint) end
  local n = string.unpack(">I4", blob)
  if n ~= #ty or blob:sub(5, 4 + n) ~= ty then
    invalid("pubkey", "pubkey: the key's data does not match its type " .. ty, hint)
  end
  return { type = ty, base64 = b64, blob = blob, comment = comment ~= "" and comment or nil,
    fingerprint = M.fingerprint(blob) }
end


--- OpenSSH expiry-time value (UTC) for Unix seconds.
---@param t integer
---@return string "YYYYMMDDHHMMSSZ"
function M.expiry_time(t)
  return os.date("!%Y%m%d%H%M%SZ", t)
end


-- Unix seconds of a UTC broken-down time.
local function timegm(y, mo, d, h, mi, s)
  local function days_from_civil(yy, m, dd)
    yy = m <= 2 and yy - 1 or yy
    local era = (yy >= 0 and yy or yy - 399) // 400
    local yoe = yy - era * 400
    local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + dd - 1
    local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
  end
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
end


--- Unix seconds of an expiry-time value (YYYYMMDD[HHMM[SS]][Z]); a value without Z is read as
--- UTC too (the instance's time zone is not known here). nil when malformed.
---@param v string
---@return integer|nil
function M.parse_expiry(v)
  if type(v) ~= "string" then return nil end
  local digits = v:match("^(%d+)Z?$")
  if not digits or not (#digits == 8 or #digits == 12 or #digits == 14) then return nil end
  local y, mo, d = tonumber(digits:sub(1, 4)), tonumber(digits:sub(5, 6)), tonumber(digits:sub(7, 8))
  local h, mi = tonumber(digits:sub(9, 10)) or 0, tonumber(digits:sub(11, 12)) or 0
  local s = tonumber(digits:sub(13, 14)) or 0
  return timegm(y, mo, d, h, mi, s)
end


-- Splits an authorized_keys line into options (or nil), type, base64, comment.
local function split_line(line)
  local ty = line:match("^(%S+)")
  if ty and M.KEY_TYPES[ty] then
    local t, b, c = line:match("^(%S+)%s+(%S+)%s*(.*)$")
    return nil, t, b, c
  end
  -- options: up to the first blank outside double quotes
  local i, quoted = 1, false
  while i <= #line do
    local ch = line:sub(i, i)
    if ch == "\\" and quoted then
      i = i + 1
    elseif ch == '"' then
      quoted = not quoted
    elseif (ch == " " or ch == "\t") and not quoted then
      break
    end
    i = i + 1
  end
  local opts = line:sub(1, i - 1)
  local t, b, c = line:sub(i):match("^%s+(%S+)%s+(%S+)%s*(.*)$")
  return opts, t, b, c
end


--- Parses authorized_keys text: one entry per key line (comments and blank lines skipped).
---@param text string
---@return {fingerprint: string|nil, label: string|nil, expires_at: integer|nil, type: string, options: string|nil,
---  line: string}[]
function M.parse_authorized_keys(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do
    local l = line:gsub("\r$", "")
    if not l:match("^%s*#") and not l:match("^%s*$") then
      local opts, ty, b64, comment = split_line(l)
      local entry = { type = ty, options = opts, line = l, label = comment ~= "" and comment or nil }
      local blob = b64 and b64:match("^[%w%+/]+=*$") and codec.base64_decode(b64)
      if blob then entry.fingerprint = M.fingerprint(blob) end
      if opts then
        local exp = opts:match('expiry%-time="([^"]*)"')
        entry.expires_at = M.parse_expiry(exp)
      end
      out[#out + 1] = entry
    end
  end
  return out
end


local function read_keys(provider, id)
  local ok, text = pcall(provider.files.read_file, id, M.PATH)
  if ok then return text end
  -- no file yet (NOT_FOUND for the file, not for the instance)
  if type(text) == "table" and text.code == "NOT_FOUND" and tostring(text.resource or ""):match("^file:") then
    return ""
  end
  error(text, 0)
end


-- The file's lines (without their newlines; a last line without one too).
local function lines_of(text)
  local out = {}
  for l in (text or ""):gmatch("[^\n]*") do out[#out + 1] = l end
  while #out > 0 and out[#out] == "" do out[#out] = nil end
  return out
end


local function write_keys(provider, id, lines)
  provider.files.create_directory(id, "~/.ssh", { mode = "700" })
  local text = #lines > 0 and (table.concat(lines, "\n") .. "\n") or ""
  provider.files.write_file_atomic(id, M.PATH, text, { mode = "600" })
end


--- Adds (or replaces) a key in the instance's ~/.ssh/authorized_keys.
---@param provider table
---@param id string instance id
---@param pubkey string "TYPE BASE64 [comment]"
---@param opts? {label?: string, expires_at?: integer} label: the comment (default: the key's own);
---  expires_at: Unix seconds after which sshd refuses the key
---@return {fingerprint: string, label: string|nil, expires_at: integer|nil, type: string}
---@raise VALIDATION_ERROR (bad key, label or time; nothing written) | the provider's errors
function M.authorize(provider, id, pubkey, opts)
  if opts ~= nil and type(opts) ~= "table" then invalid("options", "options must be a table") end
  opts = opts or {}
  local key = M.parse_key(pubkey)
  local label = opts.label
  if label == nil then label = key.comment end
  if label ~= nil and (type(label) ~= "string" or #label > 128 or not label:match("^[%w%._@:%+%-]+$")) then
    invalid("label", "label must be 1..128 letters, digits or . _ @ : + -", "e.g. label = \"alice@laptop\"")
  end
  local expires_at = opts.expires_at
  if expires_at ~= nil then
    if math.type(expires_at) ~= "integer"
        and not (type(expires_at) == "number" and expires_at == math.floor(expires_at)) then
      invalid("expires_at", "expires_at must be Unix seconds (an integer)")
    end
    expires_at = math.tointeger(expires_at)
    if expires_at < 0 or expires_at > 253402300799 then invalid("expires_at", "expires_at is out of range") end
  end
  local line = ("%s %s"):format(key.type, key.base64)
  if expires_at then line = ('expiry-time="%s" %s'):format(M.expiry_time(expires_at), line) end
  if label then line = line .. " " .. label end
  local kept = {}
  for _, l in ipairs(lines_of(read_keys(provider, id))) do
    local e = M.parse_authorized_keys(l)[1]
    if not e or e.fingerprint ~= key.fingerprint then kept[#kept + 1] = l end
  end
  kept[#kept + 1] = line
  write_keys(provider, id, kept)
  return { fingerprint = key.fingerprint, label = label, expires_at = expires_at, type = key.type }
end


--- Removes every key whose fingerprint ("SHA256:...") or label matches. Returns how many.
---@param provider table
---@param id string
---@param fingerprint_or_label string
---@return integer removed
function M.revoke(provider, id, fingerprint_or_label)
  if type(fingerprint_or_label) ~= "string" or fingerprint_or_label == "" then
    invalid("fingerprint_or_label", "revoke needs a fingerprint (SHA256:...) or a label")
  end
  local kept, removed = {}, 0
  for _, l in ipairs(lines_of(read_keys(provider, id))) do
    local e = M.parse_authorized_keys(l)[1] -- nil for comments and blank lines, which stay
    if e and (e.fingerprint == fingerprint_or_label or e.label == fingerprint_or_label) then
      removed = removed + 1
    else
      kept[#kept + 1] = l
    end
  end
  if removed > 0 then write_keys(provider, id, kept) end
  return removed
end


--- The keys in the instance's authorized_keys.
---@param provider table
---@param id string
---@return {fingerprint: string|nil, label: string|nil, expires_at: integer|nil, type: string, expired: boolean}[]
function M.list(provider, id)
  local out = {}
  local now = os.time()
  for _, e in ipairs(M.parse_authorized_keys(read_keys(provider, id))) do
    out[#out + 1] = { fingerprint = e.fingerprint, label = e.label, expires_at = e.expires_at, type = e.type,
      expired = e.expires_at ~= nil and e.expires_at <= now }
  end
  return out
end

return M
