-- claude-login.lua: log in to Claude (Pro/Max, or Console with --console) with OAuth PKCE and
-- save the credentials on this machine, or refresh saved ones with --refresh.
--
--   galley run claude-login                     # prints a URL; paste the code#state shown after approving
--   galley run claude-login --refresh           # new access token; the refresh token rotates
--   galley run claude-login --refresh --if-needed --min-valid-minutes 30
--   galley run claude-login --if-needed          # nothing while valid; else refresh; else log in (it says which)
--
-- The file (default ~/.config/galley/claude-credentials.json, mode 600, written atomically) holds
-- {access_token, refresh_token, expires_at_ms, scopes, ...}; galley.credentials.claude_profile
-- takes it as is. Tokens are never printed: only lengths and the expiry.
-- stdout carries the sign-in URL only; instructions and results go to stderr.
local recipe = require("galley.recipe")
local oauth = require("galley.oauth.claude")

local opts = recipe.options({
  name = "claude-login",
  summary = "Log in to Claude with OAuth (PKCE, paste flow) and save the credentials, or refresh them.",
  options = {
    { "output", metavar = "PATH", default = oauth.DEFAULT_CREDENTIALS_PATH, env = "GALLEY_CLAUDE_CREDENTIALS",
      help = "credentials file (mode 600)" },
    { "refresh", type = "flag", help = "refresh the saved credentials instead of logging in" },
    { "if-needed", type = "flag", help = "only what is needed: nothing while valid beyond --min-valid-minutes, "
      .. "else refresh (or, without saved credentials that can be refreshed and without --refresh, log in)" },
    { "min-valid-minutes", type = "integer", default = 10, help = "margin for --if-needed" },
    { "console", type = "flag", help = "log in on the Console (API billing) instead of claude.ai" },
    { "authorize-url", metavar = "URL", env = "GALLEY_CLAUDE_AUTHORIZE_URL", help = "authorize page" },
    { "token-urls", metavar = "URL[,URL...]", env = "GALLEY_CLAUDE_TOKEN_URLS",
      help = "token endpoints, tried in order (default: platform.claude.com, api.anthropic.com, console)" },
    { "scopes", metavar = "'A B ...'", help = "scopes to ask for (space-separated)" },
    { "user-agent", metavar = "UA", env = "GALLEY_CLAUDE_USER_AGENT", help = "User-Agent for token requests" },
  },
}, { ... })

local client = oauth.new({
  authorize_url = opts.authorize_url or (opts.console and oauth.CONSOLE_AUTHORIZE_URL or nil),
  token_urls = opts.token_urls,
  scopes = opts.scopes,
  user_agent = opts.user_agent,
})

local function err(text) io.stderr:write("claude-login: ", text, "\n") end

local function describe(creds, path)
  local scopes = type(creds.scopes) == "table" and table.concat(creds.scopes, " ") or "?"
  return ("saved %s: access token %d chars, refresh token %s, expires %s UTC, scopes: %s"):format(path,
    #creds.access_token, creds.refresh_token and (#creds.refresh_token .. " chars") or "none",
    os.date("!%Y-%m-%d %H:%M:%S", creds.expires_at_ms // 1000), scopes)
end

local function utc(ms) return os.date("!%Y-%m-%d %H:%M:%S", ms // 1000) end
local margin = opts.min_valid_minutes * 60 * 1000

-- --if-needed without --refresh: do the least that leaves valid credentials, and say which.
-- Valid beyond the margin: nothing. Expiring with a refresh token: refresh. Else: a login.
if opts.if_needed and not opts.refresh then
  local ok, creds = pcall(oauth.load_credentials, opts.output)
  local where = require("galley.paths").expand(opts.output)
  if ok and not client.is_expired(creds, margin) then
    err(("credentials in %s still valid until %s UTC; nothing to do (--if-needed)"):format(where,
      utc(creds.expires_at_ms)))
    recipe.exit(0)
  elseif ok and type(creds.refresh_token) == "string" and creds.refresh_token ~= "" then
    err(("credentials in %s expire within %d minutes: refreshing them (--if-needed)"):format(where,
      opts.min_valid_minutes))
    opts.refresh = true
  else
    local why = ok and "they have no refresh token" or (type(creds) == "table" and creds.code == "NOT_FOUND"
      and "there are none" or ("they cannot be read: " .. tostring(creds)))
    err(("no usable credentials in %s (%s): starting a login (--if-needed)"):format(where, why))
  end
end

if opts.refresh then
  local creds = oauth.load_credentials(opts.output)
  if opts.if_needed and not client.is_expired(creds, margin) then
    err(("still valid until %s UTC; not refreshed"):format(utc(creds.expires_at_ms)))
    recipe.exit(0)
  end
  local fresh = recipe.step("refresh", client.refresh, creds)
  -- The old refresh token is spent now: save before anything else can fail.
  local path = oauth.save_credentials(opts.output, fresh)
  err(describe(fresh, path))
  return
end

local login = client.begin()
err("Open this URL in a browser, sign in and approve:")
io.stdout:write(login.url, "\n")
io.stdout:flush()
err("Then paste the code shown (code#state) and press Enter:")
local pasted = io.stdin:read("l")
if not pasted or pasted:match("^%s*$") then recipe.usage_error("no code was pasted on stdin") end
local creds = recipe.step("exchange the code", client.finish, login, pasted)
local path = oauth.save_credentials(opts.output, creds)
err(describe(creds, path))
