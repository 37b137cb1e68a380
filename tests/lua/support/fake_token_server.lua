--- support.fake_token_server: a FAKE of Anthropic's OAuth token service, for specs only.
-- Anthropic's token endpoint cannot be reached from tests, so this loopback server (galley.core.httpd
-- on 127.0.0.1, in the spec's own process) plays it. It follows the reference (§1.5–§1.8): JSON
-- bodies, single-use authorization codes bound to a PKCE challenge, single-use rotating refresh
-- tokens, `invalid_grant` for anything unknown or reused.
--
--   local fake = require("support.fake_token_server").start()
--   fake.add_code("the-code", challenge)       -- what the authorize page would have issued
--   local rt = fake.add_refresh_token()        -- a live refresh token
--   fake.url("ok")   -> "http://127.0.0.1:PORT/ok/v1/oauth/token"   (a working host)
--   fake.url("cf")   -> answers 403 with a Cloudflare-style HTML page
--   fake.url("gone") -> answers 404 {"type":"error","error":{"type":"not_found_error"}}
--   fake.url("html200") -> answers 200 with HTML
--   fake.url("norotate") -> works, but refresh answers carry no refresh_token
--   fake.url("dead") -> a closed port (connection refused)
--   fake.requests    -> {{host, path, headers, json}, ...} every request seen
--   fake.stop()
-- Issued tokens look like the real ones (`sk-ant-oat01-…`, `sk-ant-ort01-…`, 108 chars).
local cjson = require("cjson").new()
local codec = require("galley.core.codec")
local httpd = require("galley.core.httpd")

local M = {}

M.CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"

local function token(prefix)
  local body = codec.base64_encode(codec.random_bytes(72), "urlsafe"):gsub("=", "")
  return (prefix .. body):sub(1, 108)
end


local function json(status, t)
  return { status = status, headers = { ["Content-Type"] = "application/json" }, body = cjson.encode(t) }
end


local function invalid_grant(desc)
  return json(400, { error = "invalid_grant", error_description = desc })
end


local function challenge_of(verifier)
  local raw = codec.sha256(verifier):gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  return (codec.base64_encode(raw, "urlsafe"):gsub("=+$", ""))
end


--- Starts the fake on a free loopback port.
---@param opts? {expires_in?: integer, redirect_uri?: string}
function M.start(opts)
  opts = opts or {}
  local self = { requests = {}, codes = {}, refresh_tokens = {}, issued = {} }
  local expires_in = opts.expires_in or 28800
  local redirect_uri = opts.redirect_uri or "https://platform.claude.com/oauth/code/callback"

  local function issue(rotate)
    local t = {
      access_token = token("sk-ant-oat01-"),
      token_type = "Bearer",
      expires_in = expires_in,
      scope = "user:inference user:profile user:sessions:claude_code",
      account = { uuid = "acc-uuid-0001", email_address = "dev@example.test" },
      organization = { uuid = "org-uuid-0001", name = "Example Org" },
    }
    if rotate then
      t.refresh_token = token("sk-ant-ort01-")
      self.refresh_tokens[t.refresh_token] = true
    end
    self.issued[#self.issued + 1] = t
    return t
  end

  local function token_endpoint(host, body)
    if type(body) ~= "table" then
      return json(400, { error = "invalid_request", error_description = "JSON body expected" })
    end
    if body.client_id ~= M.CLIENT_ID then return json(401, { error = "invalid_client" }) end
    if body.grant_type == "authorization_code" then
      local entry = self.codes[body.code]
      if not entry then return invalid_grant("Invalid 'code' in request.") end
      self.codes[body.code] = nil -- single use
      if body.redirect_uri ~= redirect_uri then return invalid_grant("redirect_uri mismatch") end
      if type(body.state) ~= "string" or body.state == "" then
        return json(400, { error = "invalid_request", error_description = "state missing" })
      end
      if type(body.code_verifier) ~= "string" or challenge_of(body.code_verifier) ~= entry.challenge then
        return invalid_grant("code_verifier does not match the challenge")
      end
      return json(200, issue(true))
    elseif body.grant_type == "refresh_token" then
      if not self.refresh_tokens[body.refresh_token] then
        return invalid_grant("Refresh token not found or invalid")
      end
      self.refresh_tokens[body.refresh_token] = nil -- single use
      return json(200, issue(host ~= "norotate"))
    end
    return json(400, { error = "unsupported_grant_type" })
  end

  local function handle(req)
    local host, rest = req.path:match("^/([^/]+)(/.*)$")
    local ok, body = pcall(cjson.decode, req.body or "")
    self.requests[#self.requests + 1] = { host = host, path = rest, headers = req.headers, json = ok and body or nil,
      method = req.method }
    if rest ~= "/v1/oauth/token" or req.method ~= "POST" then
      return json(404, { type = "error", error = { type = "not_found_error", message = "Not Found" } })
    end
    if host == "cf" then
      return { status = 403, headers = { ["Content-Type"] = "text/html; charset=UTF-8" },
        body = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body></body></html>" }
    elseif host == "html200" then
      return { status = 200, headers = { ["Content-Type"] = "text/html" }, body = "<html>hello</html>" }
    elseif host == "gone" then
      return json(404, { type = "error", error = { type = "not_found_error", message = "Not Found" } })
    elseif host == "ok" or host == "norotate" or host == "ok2" then
      return token_endpoint(host, ok and body or nil)
    end
    return json(404, { type = "error", error = { type = "not_found_error" } })
  end

  local server = assert(httpd.serve({ port = 0, handler = handle }))
  self.port = server:port()

  -- A port nobody listens on: bind one, note it, stop it.
  local dead = assert(httpd.serve({ port = 0, handler = function() return { status = 500 } end }))
  local dead_port = dead:port()
  dead:stop()

  function self.url(host)
    if host == "dead" then return ("http://127.0.0.1:%d/dead/v1/oauth/token"):format(dead_port) end
    return ("http://127.0.0.1:%d/%s/v1/oauth/token"):format(self.port, host)
  end

  function self.add_code(code, challenge)
    self.codes[code] = { challenge = challenge }
  end

  function self.add_refresh_token(t)
    t = t or token("sk-ant-ort01-")
    self.refresh_tokens[t] = true
    return t
  end

  function self.is_live_refresh_token(t) return self.refresh_tokens[t] == true end

  function self.stop()
    if server then server:stop() end
    server = nil
  end

  return self
end

M.challenge_of = challenge_of

return M
