--- galley.oauth.claude: the Claude Code OAuth login (PKCE, manual paste flow) and token refresh.
--
--   local oauth = require("galley.oauth.claude").new{}          -- or {token_urls = {...}, ...}
--   local login = oauth.begin()                 -- {url, verifier, challenge, state}
--   print(login.url)                            -- the person opens it and approves
--   local creds = oauth.finish(login, pasted)   -- pasted: "code#state", a callback URL or "code=..&state=.."
--   if oauth.is_expired(creds) then creds = oauth.refresh(creds) end
--
-- Credentials (a plain table, the shape galley stores and galley.credentials.claude_profile takes):
--   {access_token, refresh_token?, expires_at_ms, expires_in, token_type, scopes = {...},
--    account? = {uuid, email_address}, organization? = {uuid, name}, obtained_at_ms}
-- Tokens are registered with galley.log as secrets the moment they arrive, so no log record or
-- error carries them.
--
-- PKCE (reference §1.2): the verifier is 32 random bytes (libsodium) in base64url (43 chars), the
-- challenge is base64url(SHA-256(verifier)), and the state is an independent random value
-- (32 hex digits) compared in constant time when the pasted answer carries one.
--
-- Token hosts: `token_urls` is tried in order. A transport failure, a 403/404/429/5xx, or an
-- answer that is not JSON (a Cloudflare HTML page) moves on to the next URL. A JSON error from
-- the token service itself (`invalid_grant`, `invalid_request`, ...) stops at once: another host
-- would say the same, and a refresh token must not be offered twice. When every URL failed the
-- error is NETWORK_ERROR if all of them were transport failures, else the first non-transport
-- failure's code; `details.attempts` lists `{url, status?, code}` for each.
--
-- Errors: AUTHENTICATION_ERROR (invalid_grant, 401), VALIDATION_ERROR (a bad paste, a state
-- mismatch, other 4xx JSON errors), NETWORK_ERROR, PROTOCOL_ERROR (HTML or non-JSON answers, a
-- success without access_token), NOT_FOUND/RATE_LIMIT/SERVER_ERROR as the last word of the host
-- list, INTERRUPTED (Ctrl-C, passed through).
local cjson = require("cjson").new()
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local http = require("galley.core.http")
local logmod = require("galley.log")
local paths = require("galley.paths")
local util = require("galley.util")

local M = {}

--- Public PKCE client id of Claude Code (no secret).
M.CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
--- Authorize page for Pro/Max subscriptions.
M.AUTHORIZE_URL = "https://claude.ai/oauth/authorize"
--- Authorize page for Console (API billing) logins.
M.CONSOLE_AUTHORIZE_URL = "https://platform.claude.com/oauth/authorize"
--- The manual-paste redirect URI (the page shows `code#state`).
M.REDIRECT_URI = "https://platform.claude.com/oauth/code/callback"
--- Token endpoints in the order tried: current, alternate (fewer Cloudflare blocks), legacy.
M.TOKEN_URLS = {
  "https://platform.claude.com/v1/oauth/token",
  "https://api.anthropic.com/v1/oauth/token",
  "https://console.anthropic.com/v1/oauth/token",
}
--- The scopes the current CLI asks for.
M.SCOPES = { "org:create_api_key", "user:profile", "user:inference", "user:sessions:claude_code",
  "user:mcp_servers", "user:file_upload" }
--- Where claude-login keeps credentials on this machine.
M.DEFAULT_CREDENTIALS_PATH = "~/.config/galley/claude-credentials.json"
--- Default margin for is_expired: refresh when less than this is left.
M.DEFAULT_MARGIN_MS = 5 * 60 * 1000
M.DEFAULT_TIMEOUT_MS = 30000

local function oauth_error(code, message, fields)
  fields = fields or {}
  fields.operation = fields.operation or "oauth.claude"
  return errors.new(code, message, fields)
end


local function raise(code, message, fields)
  error(oauth_error(code, message, fields), 0)
end


local function pct_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end


local function pct_decode(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end


local function hex_to_bytes(hex)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end


--- base64url without padding (RFC 7636 appendix A).
---@param bytes string
---@return string
function M.base64url(bytes)
  return (codec.base64_encode(bytes, "urlsafe"):gsub("=+$", ""))
end


--- The S256 challenge of a verifier: base64url(SHA-256(verifier)), always 43 characters.
---@param verifier string
---@return string
function M.challenge_of(verifier)
  return M.base64url(hex_to_bytes(codec.sha256(verifier)))
end


--- A fresh PKCE pair and state.
---@return {verifier: string, challenge: string, state: string}
function M.pkce()
  local verifier = M.base64url(codec.random_bytes(32))
  return { verifier = verifier, challenge = M.challenge_of(verifier), state = codec.random_hex(16) }
end


-- key=value pairs of a query string (later keys win).
local function parse_query(q)
  local out = {}
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if k and k ~= "" then out[pct_decode(k)] = pct_decode(v) end
  end
  return out
end


--- Splits what a person pasted into code and state (reference §1.4). Accepts `code#state`, a
-- full callback URL (`...?code=...&state=...`, state possibly after `#`), a bare
-- `code=...&state=...`, or a lone code. With no state in the paste, `expected_state` is used;
-- a state that differs from `expected_state` is rejected.
---@param text string
---@param expected_state? string
---@return string code, string|nil state
---@raise VALIDATION_ERROR (empty paste, no code; field "state" for a mismatched state)
function M.parse_pasted(text, expected_state)
  if type(text) ~= "string" then raise("VALIDATION_ERROR", "nothing was pasted", { field = "code" }) end
  text = util.trim(text)
  local code, state
  if text:match("^https?://") then
    local query = text:match("%?([^#]*)") or ""
    local params = parse_query(query)
    code, state = params.code, params.state
    if not state then state = text:match("#(.+)$") end
  elseif text:find("code=", 1, true) then
    local params = parse_query((text:gsub("^%?", "")))
    code, state = params.code, params.state
    if code and code:find("#", 1, true) and not state then code, state = code:match("^([^#]*)#(.*)$") end
  else
    code, state = text:match("^([^#]*)#(.*)$")
    if not code then code = text end
  end
  code = code and util.trim(code) or ""
  if code == "" then
    raise("VALIDATION_ERROR", "no authorization code in the pasted text", {
      field = "code", hint = "paste the whole code#state string shown after approving" })
  end
  if code:find("%s") then
    raise("VALIDATION_ERROR", "the pasted code contains spaces", { field = "code" })
  end
  if state == "" then state = nil end
  if state and expected_state and not codec.equal(state, expected_state) then
    raise("VALIDATION_ERROR", "the pasted state does not match this login attempt", {
      field = "state", hint = "paste the code from the sign-in URL printed by this run" })
  end
  return code, state or expected_state
end


local function now_ms() return os.time() * 1000 end


---@class galley.ClaudeCredentials
---@field access_token string
---@field refresh_token? string
---@field expires_at_ms integer epoch milliseconds
---@field expires_in? integer seconds, as the token service answered
---@field token_type? string
---@field scopes string[]
---@field account? {uuid?: string, email_address?: string}
---@field organization? {uuid?: string, name?: string}
---@field obtained_at_ms? integer

---@class galley.ClaudeOAuthOptions
---@field client_id? string default M.CLIENT_ID
---@field authorize_url? string default M.AUTHORIZE_URL (M.CONSOLE_AUTHORIZE_URL for Console logins)
---@field redirect_uri? string default M.REDIRECT_URI
---@field token_urls? string[] default M.TOKEN_URLS, tried in order
---@field scopes? string[]|string default M.SCOPES
---@field user_agent? string a User-Agent header for the token requests (none by default)
---@field timeout_ms? integer per request, default 30000
---@field margin_ms? integer is_expired's default margin (5 minutes)
---@field clock_ms? fun(): integer epoch milliseconds (default os.time() * 1000)
---@field log? galley.Logger

--- Creates a client. Nothing is sent until exchange/refresh.
---@param opts? galley.ClaudeOAuthOptions
---@return table client `{begin, sign_in_url, finish, exchange, refresh, is_expired, parse_pasted, options}`
---@raise VALIDATION_ERROR (bad option)
function M.new(opts)
  opts = opts or {}
  local function opt_string(name, default)
    local v = opts[name]
    if v == nil then return default end
    if type(v) ~= "string" or v == "" then
      raise("VALIDATION_ERROR", ("%s must be a non-empty string"):format(name), { field = name })
    end
    return v
  end
  local cfg = {
    client_id = opt_string("client_id", M.CLIENT_ID),
    authorize_url = opt_string("authorize_url", M.AUTHORIZE_URL),
    redirect_uri = opt_string("redirect_uri", M.REDIRECT_URI),
    user_agent = opt_string("user_agent", nil),
    timeout_ms = opts.timeout_ms or M.DEFAULT_TIMEOUT_MS,
    margin_ms = opts.margin_ms or M.DEFAULT_MARGIN_MS,
  }
  local token_urls = opts.token_urls or M.TOKEN_URLS
  if type(token_urls) == "string" then token_urls = util.split(token_urls, ",") end
  if type(token_urls) ~= "table" or #token_urls == 0 then
    raise("VALIDATION_ERROR", "token_urls must be a non-empty list of URLs", { field = "token_urls" })
  end
  cfg.token_urls = {}
  for i, u in ipairs(token_urls) do
    u = type(u) == "string" and util.trim(u) or u
    if type(u) ~= "string" or not u:match("^https?://") then
      local field = ("token_urls[%d]"):format(i)
      raise("VALIDATION_ERROR", field .. " must be an http(s) URL", { field = field })
    end
    cfg.token_urls[i] = u
  end
  local scopes = opts.scopes or M.SCOPES
  if type(scopes) == "string" then scopes = util.split(scopes, " ") end
  cfg.scopes = {}
  for _, s in ipairs(scopes) do
    if s ~= "" then cfg.scopes[#cfg.scopes + 1] = s end
  end
  local clock = opts.clock_ms or now_ms
  local log = opts.log or logmod.new({ prefix = "oauth.claude" })

  local client = { options = cfg }

  --- The sign-in URL for a PKCE pair (reference §1.3 parameters, in that order).
  ---@param p {challenge: string, state: string}
  ---@return string url
  function client.sign_in_url(p)
    local params = {
      { "code", "true" },
      { "client_id", cfg.client_id },
      { "response_type", "code" },
      { "redirect_uri", cfg.redirect_uri },
      { "scope", table.concat(cfg.scopes, " ") },
      { "code_challenge", p.challenge },
      { "code_challenge_method", "S256" },
      { "state", p.state },
    }
    local parts = {}
    for i, kv in ipairs(params) do parts[i] = kv[1] .. "=" .. pct_encode(kv[2]) end
    local sep = cfg.authorize_url:find("?", 1, true) and "&" or "?"
    return cfg.authorize_url .. sep .. table.concat(parts, "&")
  end

  --- Starts a login: a fresh PKCE pair and state, and the URL to open. Keep the table for finish.
  ---@return {url: string, verifier: string, challenge: string, state: string}
  function client.begin()
    local p = M.pkce()
    p.url = client.sign_in_url(p)
    return p
  end

  client.parse_pasted = M.parse_pasted

  -- Turns a successful token answer into credentials; `previous` supplies a refresh token the
  -- answer lacks (reference §1.8: never store an empty one).
  local function credentials_of(body, previous, url)
    local at = body.access_token
    if type(at) ~= "string" or at == "" then
      raise("PROTOCOL_ERROR", "the token answer has no access_token", { resource = "url:" .. url })
    end
    logmod.register_secret(at)
    local rt = body.refresh_token
    if type(rt) ~= "string" or rt == "" then
      rt = previous and previous.refresh_token or nil
    else
      logmod.register_secret(rt)
    end
    local n = tonumber(body.expires_in)
    local expires_in = n and n == n and n < 2 ^ 53 and math.tointeger(math.floor(n))
    if not expires_in or expires_in <= 0 then
      raise("PROTOCOL_ERROR", "the token answer has no valid expires_in", { resource = "url:" .. url })
    end
    local now = clock()
    local granted ---@type string[]
    if type(body.scope) == "string" then
      granted = {}
      for s in body.scope:gmatch("%S+") do granted[#granted + 1] = s end
    elseif previous and type(previous.scopes) == "table" then
      granted = util.deep_copy(previous.scopes)
    else
      granted = util.deep_copy(cfg.scopes)
    end
    local creds = {
      access_token = at,
      refresh_token = rt,
      expires_in = expires_in,
      expires_at_ms = now + expires_in * 1000,
      token_type = type(body.token_type) == "string" and body.token_type or "Bearer",
      scopes = granted,
      obtained_at_ms = now,
    }
    if type(body.account) == "table" then
      creds.account = { uuid = body.account.uuid, email_address = body.account.email_address }
    elseif previous and previous.account then
      creds.account = util.deep_copy(previous.account)
    end
    if type(body.organization) == "table" then
      creds.organization = { uuid = body.organization.uuid, name = body.organization.name }
    elseif previous and previous.organization then
      creds.organization = util.deep_copy(previous.organization)
    end
    if previous and previous.subscription_type then creds.subscription_type = previous.subscription_type end
    return creds
  end

  local function looks_html(resp)
    local ct = (resp.headers or {})["content-type"] or ""
    return ct:find("text/html", 1, true) ~= nil or (resp.body or ""):match("^%s*<") ~= nil
  end

  -- POSTs `body` (a table) to each token URL in turn; returns the decoded answer and the URL.
  local function post_token(grant, body)
    local payload = cjson.encode(body)
    local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
    if cfg.user_agent then headers["User-Agent"] = cfg.user_agent end
    local attempts = {}
    local first_failure
    for _, url in ipairs(cfg.token_urls) do
      log.debug("token request", { grant = grant, url = url, body_bytes = #payload })
      local resp, err = http.request({ method = "POST", url = url, headers = headers, body = payload,
        timeout_ms = cfg.timeout_ms, no_resend = true })
      if not resp then
        if errors.is(err, "INTERRUPTED") then error(err, 0) end
        attempts[#attempts + 1] = { url = url, code = err and err.code or "NETWORK_ERROR" }
        log.warn("token host unreachable; trying the next one", { url = url, code = err and err.code })
      else
        local ok, decoded = false, nil
        if not looks_html(resp) then ok, decoded = pcall(cjson.decode, resp.body or "") end
        if not ok or type(decoded) ~= "table" then decoded = nil end
        local status = resp.status
        if status >= 200 and status < 300 and decoded then
          return decoded, url
        end
        local code, stop, message
        if decoded and type(decoded.error) == "string" and status ~= 403 and status ~= 404 and status ~= 429
          and status < 500 then
          -- The token service's own verdict (RFC 6749 §5.2): final.
          stop = true
          code = decoded.error == "invalid_grant" and "AUTHENTICATION_ERROR"
            or errors.code_for_http_status(status) or "PROTOCOL_ERROR"
          local desc = type(decoded.error_description) == "string" and (": " .. decoded.error_description) or ""
          message = ("token service refused the %s grant (%s)%s"):format(grant, decoded.error, desc)
        elseif not decoded then
          code = status >= 200 and status < 300 and "PROTOCOL_ERROR"
            or (looks_html(resp) and "PROTOCOL_ERROR") or errors.code_for_http_status(status) or "PROTOCOL_ERROR"
          message = ("token host answered HTTP %d with %s"):format(status,
            looks_html(resp) and "an HTML page (a Cloudflare block?)" or "a body that is not JSON")
        else
          code = errors.code_for_http_status(status) or "PROTOCOL_ERROR"
          message = ("token host answered HTTP %d"):format(status)
        end
        attempts[#attempts + 1] = { url = url, status = status, code = code }
        local fields = { resource = "url:" .. url, details = { status = status, attempts = attempts },
          hint = code == "AUTHENTICATION_ERROR" and "log in again: the code or refresh token is used or expired"
            or nil }
        if stop then raise(code, message, fields) end
        first_failure = first_failure or { code = code, message = message, fields = fields }
        log.warn("token host failed; trying the next one", { url = url, status = status, code = code })
      end
    end
    if first_failure then
      first_failure.fields.details.attempts = attempts
      raise(first_failure.code, first_failure.message .. " (and no other token host worked)", first_failure.fields)
    end
    raise("NETWORK_ERROR", "no token host could be reached", {
      details = { attempts = attempts }, hint = "check the network, or set other token URLs" })
  end

  --- Exchanges the pasted answer of a login started with begin() for credentials.
  ---@param login {verifier: string, state: string}
  ---@param pasted string what the person pasted (see parse_pasted)
  ---@return galley.ClaudeCredentials
  ---@raise VALIDATION_ERROR | AUTHENTICATION_ERROR | NETWORK_ERROR | PROTOCOL_ERROR | ...
  function client.finish(login, pasted)
    local code, state = M.parse_pasted(pasted, login.state)
    return client.exchange(code, { verifier = login.verifier, state = state or login.state })
  end

  --- Exchanges an authorization code (reference §1.5: JSON body with grant_type, code, state,
  -- client_id, redirect_uri, code_verifier).
  ---@param code string
  ---@param p {verifier: string, state: string}
  ---@return galley.ClaudeCredentials
  ---@raise VALIDATION_ERROR | AUTHENTICATION_ERROR | NETWORK_ERROR | PROTOCOL_ERROR | ...
  function client.exchange(code, p)
    if type(code) ~= "string" or code == "" then
      raise("VALIDATION_ERROR", "code must be a non-empty string", { field = "code" })
    end
    if type(p) ~= "table" or type(p.verifier) ~= "string" or type(p.state) ~= "string" then
      raise("VALIDATION_ERROR", "exchange needs the login's verifier and state", { field = "verifier" })
    end
    logmod.register_secret(code)
    logmod.register_secret(p.verifier)
    local body, url = post_token("authorization_code", {
      grant_type = "authorization_code",
      code = code,
      state = p.state,
      client_id = cfg.client_id,
      redirect_uri = cfg.redirect_uri,
      code_verifier = p.verifier,
    })
    local creds = credentials_of(body, nil, url)
    log.info("logged in", { token_url = url, expires_in = creds.expires_in, scopes = #creds.scopes })
    return creds
  end

  --- Refreshes credentials (reference §1.8). The refresh token is single-use: the answer's new
  -- one replaces it; an answer without one keeps the old. Returns new credentials (the argument
  -- is not changed); store them before anything else uses the old refresh token.
  ---@param creds galley.ClaudeCredentials|string credentials, or a bare refresh token
  ---@return galley.ClaudeCredentials
  ---@raise VALIDATION_ERROR (no refresh token) | AUTHENTICATION_ERROR (invalid_grant) | NETWORK_ERROR | ...
  function client.refresh(creds)
    if type(creds) == "string" then creds = { refresh_token = creds } end
    local rt = type(creds) == "table" and creds.refresh_token
    if type(rt) ~= "string" or rt == "" then
      raise("VALIDATION_ERROR", "these credentials have no refresh token", {
        field = "refresh_token", hint = "log in again" })
    end
    logmod.register_secret(rt)
    local body, url = post_token("refresh_token", {
      grant_type = "refresh_token", refresh_token = rt, client_id = cfg.client_id })
    local out = credentials_of(body, creds, url)
    log.info("refreshed", { token_url = url, expires_in = out.expires_in, rotated = out.refresh_token ~= rt })
    return out
  end

  --- True when the credentials expire within `margin_ms` (default: the client's, 5 minutes) or
  -- carry no expiry.
  ---@param creds galley.ClaudeCredentials
  ---@param margin_ms? integer
  ---@return boolean
  function client.is_expired(creds, margin_ms)
    local at = type(creds) == "table" and tonumber(creds.expires_at_ms)
    if not at then return true end
    return at - clock() <= (margin_ms or cfg.margin_ms)
  end

  return client
end


local function expand_local(path)
  return paths.expand(path)
end


local STORED_FIELDS = { "access_token", "refresh_token", "expires_at_ms", "expires_in", "token_type", "scopes",
  "account", "organization", "obtained_at_ms", "subscription_type" }

--- Writes credentials to a local file, atomically (a temporary file created 0600, fsync, rename):
-- the tokens are never in a file others can read. Missing parent directories are created with
-- mode 0700; galley's config directory must be the user's alone, another existing directory must
-- belong to the user or root and be sticky if others can write it (galley.paths.private_dir).
-- `~` is galley.paths.home().
---@param path string
---@param creds galley.ClaudeCredentials
---@return string path the expanded path
---@raise VALIDATION_ERROR (no access_token) | FILE_IO_ERROR (resource "file:<path>") | UNSAFE_PATH (the directory)
function M.save_credentials(path, creds)
  if type(creds) ~= "table" or type(creds.access_token) ~= "string" then
    raise("VALIDATION_ERROR", "credentials need an access_token", { field = "access_token" })
  end
  path = expand_local(path)
  local out = {}
  for _, k in ipairs(STORED_FIELDS) do out[k] = creds[k] end
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then
    -- galley's own config directory must be the user's alone; a directory the caller chose
    -- may be shared if it is sticky (/tmp): the file itself is theirs, 0600, from its creation.
    local has_cfg, cfg = pcall(paths.config_dir)
    local own = has_cfg and (dir == cfg or dir:sub(1, #cfg + 1) == cfg .. "/")
    local ok, err = pcall(paths.private_dir, dir, { shared_ok = not own })
    if not ok then
      err = errors.wrap(err, { operation = "oauth.save_credentials" }, "FILE_IO_ERROR")
      error(err, 0)
    end
  end
  local ok, err = fs.write_atomic(path, cjson.encode(out):gsub("\\/", "/") .. "\n", { mode = "600" })
  if not ok then
    raise("FILE_IO_ERROR", ("cannot write %s: %s"):format(path, tostring(err and err.message)),
      { resource = "file:" .. path, operation = "oauth.save_credentials" })
  end
  return path
end


--- Reads credentials saved by save_credentials (or any JSON file with the same fields).
-- The tokens are registered with galley.log as secrets.
---@param path string
---@return galley.ClaudeCredentials
---@raise NOT_FOUND (no file) | FILE_IO_ERROR | PROTOCOL_ERROR (not JSON, no access_token)
function M.load_credentials(path)
  path = expand_local(path)
  local text, err = fs.read(path)
  if not text then
    local code = err and err.code == "FS_NOT_FOUND" and "NOT_FOUND" or "FILE_IO_ERROR"
    raise(code, ("cannot read %s: %s"):format(path, tostring(err and err.message)), {
      resource = "file:" .. path, operation = "oauth.load_credentials",
      hint = code == "NOT_FOUND" and "log in first: galley run claude-login" or nil })
  end
  local ok, t = pcall(cjson.decode, text)
  if not ok or type(t) ~= "table" or type(t.access_token) ~= "string" or t.access_token == "" then
    raise("PROTOCOL_ERROR", path .. " does not hold Claude credentials (JSON with access_token)",
      { resource = "file:" .. path, operation = "oauth.load_credentials" })
  end
  logmod.register_secret(t.access_token)
  if type(t.refresh_token) == "string" then logmod.register_secret(t.refresh_token) end
  for _, k in ipairs({ "expires_at_ms", "expires_in", "obtained_at_ms" }) do
    if type(t[k]) == "number" then t[k] = math.tointeger(t[k]) or math.floor(t[k]) end
  end
  if type(t.scopes) ~= "table" then t.scopes = nil end
  return t
end

return M
