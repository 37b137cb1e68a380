-- galley.oauth.claude: PKCE, sign-in URL, paste parsing, and the exchange/refresh against a
-- FAKE token service on 127.0.0.1 (tests/lua/support/fake_token_server.lua): Anthropic's real
-- token endpoint cannot be reached from tests.
local oauth = require("galley.oauth.claude")
local log = require("galley.log")
local cjson = require("cjson")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local support = require("support")
local fake_server = require("support.fake_token_server")

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function query_of(url)
  local out, order = {}, {}
  for k, v in (url:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
    out[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    order[#order + 1] = k
  end
  return out, order
end

-- No record may even have needed redaction: secrets are never handed to the logger.
local function assert_no_secret_in(records, ...)
  for _, r in ipairs(records) do
    assert.is_nil(r.line:find("REDACTED", 1, true), "a log record carried a secret: " .. r.line)
    for _, s in ipairs({ ... }) do
      assert.is_nil(r.line:find(s, 1, true), "a log record carried a secret")
    end
  end
end

describe("galley.oauth.claude #oauth", function()
  describe("PKCE", function()
    it("computes the RFC 7636 appendix B challenge", function()
      assert.are.equal("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        oauth.challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"))
    end)

    it("makes a 43-char base64url verifier, its S256 challenge and an independent state", function()
      local a, b = oauth.pkce(), oauth.pkce()
      assert.are.equal(43, #a.verifier)
      assert.is_truthy(a.verifier:match("^[%w%-_]+$"))
      assert.are.equal(oauth.challenge_of(a.verifier), a.challenge)
      assert.are.equal(43, #a.challenge)
      assert.is_truthy(a.state:match("^%x+$"))
      assert.are.equal(32, #a.state)
      assert.are_not.equal(a.verifier, b.verifier)
      assert.are_not.equal(a.state, b.state)
      assert.is_nil(a.verifier:find(a.state, 1, true))
    end)
  end)

  describe("sign-in URL", function()
    it("carries the reference parameters in order on a configurable authorize host", function()
      local client = oauth.new({ authorize_url = "https://auth.example.test/oauth/authorize", log = log.silent() })
      local login = client.begin()
      assert.is_truthy(login.url:find("^https://auth%.example%.test/oauth/authorize%?"))
      local q, order = query_of(login.url)
      assert.are.same({ "code", "client_id", "response_type", "redirect_uri", "scope", "code_challenge",
        "code_challenge_method", "state" }, order)
      assert.are.equal("true", q.code)
      assert.are.equal(oauth.CLIENT_ID, q.client_id)
      assert.are.equal("code", q.response_type)
      assert.are.equal(oauth.REDIRECT_URI, q.redirect_uri)
      assert.are.equal(table.concat(oauth.SCOPES, " "), q.scope)
      assert.are.equal(login.challenge, q.code_challenge)
      assert.are.equal("S256", q.code_challenge_method)
      assert.are.equal(login.state, q.state)
      assert.is_nil(login.url:find(login.verifier, 1, true))
      assert.is_truthy(login.url:find("scope=org%3Acreate_api_key%20user%3Aprofile", 1, true))
    end)
  end)

  describe("parse_pasted", function()
    it("splits code#state at the first #", function()
      local code, state = oauth.parse_pasted("  abc123#st-1\n", "st-1")
      assert.are.equal("abc123", code)
      assert.are.equal("st-1", state)
    end)

    it("reads a full callback URL and a bare query string", function()
      assert.are.same({ "c%1", "s1" },
        { oauth.parse_pasted("https://platform.claude.com/oauth/code/callback?code=c%251&state=s1", "s1") })
      assert.are.same({ "c2", "s2" }, { oauth.parse_pasted("code=c2&state=s2", "s2") })
    end)

    it("uses the generated state when the paste has none", function()
      assert.are.same({ "lonecode", "mine" }, { oauth.parse_pasted("lonecode", "mine") })
    end)

    it("rejects a mismatched state #failure", function()
      local err = raised(oauth.parse_pasted, "abc#theirs", "mine")
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal("state", err.field)
      err = raised(oauth.parse_pasted, "https://x.test/cb?code=a&state=theirs", "mine")
      assert.are.equal("VALIDATION_ERROR", err.code)
    end)

    it("rejects an empty paste #failure", function()
      assert.are.equal("VALIDATION_ERROR", raised(oauth.parse_pasted, "  \n", "s").code)
      assert.are.equal("VALIDATION_ERROR", raised(oauth.parse_pasted, "#s", "s").code)
    end)
  end)

  describe("against the fake token service", function()
    local fake
    local clock = 1700000000000
    before_each(function() fake = fake_server.start() end)
    after_each(function() fake.stop() end)

    local function client(urls, logger)
      return oauth.new({ token_urls = urls, log = logger or log.silent(), clock_ms = function() return clock end })
    end

    local function approve(c)
      local login = c.begin()
      fake.add_code("code-" .. login.state, login.challenge)
      return login, ("code-%s#%s"):format(login.state, login.state)
    end

    it("exchanges a pasted code with a JSON body and computes expires_at_ms", function()
      local logger, records = log.capture()
      local c = client({ fake.url("ok") }, logger)
      local login, pasted = approve(c)
      local creds = c.finish(login, pasted)
      assert.is_truthy(creds.access_token:match("^sk%-ant%-oat01%-"))
      assert.is_truthy(creds.refresh_token:match("^sk%-ant%-ort01%-"))
      assert.are.equal(clock + 28800 * 1000, creds.expires_at_ms)
      assert.are.same({ "user:inference", "user:profile", "user:sessions:claude_code" }, creds.scopes)
      assert.are.equal("dev@example.test", creds.account.email_address)
      local req = fake.requests[1]
      assert.are.equal("application/json", req.headers["Content-Type"] or req.headers["content-type"])
      assert.are.same({
        grant_type = "authorization_code", code = "code-" .. login.state, state = login.state,
        client_id = oauth.CLIENT_ID, redirect_uri = oauth.REDIRECT_URI, code_verifier = login.verifier,
      }, req.json)
      assert_no_secret_in(records, creds.access_token, creds.refresh_token, login.verifier)
      assert.is_true(#records > 0)
    end)

    it("registers the tokens as secrets so no log record shows them", function()
      local c = client({ fake.url("ok") })
      local creds = c.finish(approve(c))
      local logger, records = log.capture()
      logger.info("oops " .. creds.access_token, { note = creds.refresh_token:sub(1, 60) })
      assert.is_nil(records[1].line:find(creds.access_token, 1, true))
      assert.is_nil(records[1].line:find(creds.refresh_token:sub(1, 60), 1, true))
    end)

    it("refuses a reused code with AUTHENTICATION_ERROR #failure", function()
      local c = client({ fake.url("ok") })
      local login, pasted = approve(c)
      c.finish(login, pasted)
      local err = raised(c.finish, login, pasted)
      assert.are.equal("AUTHENTICATION_ERROR", err.code)
    end)

    it("falls back from a Cloudflare page and a retired host to the next token URL", function()
      local c = client({ fake.url("dead"), fake.url("cf"), fake.url("gone"), fake.url("ok") })
      local creds = c.finish(approve(c))
      assert.is_string(creds.access_token)
      local hosts = {}
      for _, r in ipairs(fake.requests) do hosts[#hosts + 1] = r.host end
      assert.are.same({ "cf", "gone", "ok" }, hosts)
    end)

    it("does not move on after invalid_grant #failure", function()
      local c = client({ fake.url("ok"), fake.url("ok2") })
      local login = c.begin()
      local err = raised(c.finish, login, "never-issued#" .. login.state)
      assert.are.equal("AUTHENTICATION_ERROR", err.code)
      assert.are.equal(1, #fake.requests)
      assert.are.equal("ok", fake.requests[1].host)
    end)

    it("reports PROTOCOL_ERROR when every host answers HTML #failure", function()
      local c = client({ fake.url("cf"), fake.url("html200") })
      local err = raised(c.finish, approve(c))
      assert.are.equal("PROTOCOL_ERROR", err.code)
      assert.are.equal(2, #err.details.attempts)
    end)

    it("reports NETWORK_ERROR when no host can be reached #failure", function()
      local c = client({ fake.url("dead") })
      local err = raised(c.finish, approve(c))
      assert.are.equal("NETWORK_ERROR", err.code)
    end)

    it("refreshes with a rotating single-use refresh token", function()
      local rt = fake.add_refresh_token()
      local c = client({ fake.url("cf"), fake.url("ok") })
      local old = { access_token = "sk-ant-oat01-old", refresh_token = rt, expires_at_ms = clock - 1,
        scopes = { "user:inference" } }
      local creds = c.refresh(old)
      assert.are.same({ grant_type = "refresh_token", refresh_token = rt, client_id = oauth.CLIENT_ID },
        fake.requests[#fake.requests].json)
      assert.are_not.equal(rt, creds.refresh_token)
      assert.is_true(fake.is_live_refresh_token(creds.refresh_token))
      assert.is_false(fake.is_live_refresh_token(rt) == true)
      assert.are.equal(rt, old.refresh_token) -- the argument is not changed
      -- The old one is spent.
      assert.are.equal("AUTHENTICATION_ERROR", raised(c.refresh, old).code)
      -- The new one works once.
      local again = c.refresh(creds)
      assert.are_not.equal(creds.refresh_token, again.refresh_token)
    end)

    it("keeps the old refresh token when the answer lacks one", function()
      local rt = fake.add_refresh_token()
      local c = client({ fake.url("norotate") })
      local creds = c.refresh(rt)
      assert.are.equal(rt, creds.refresh_token)
      assert.are.equal(clock + 28800 * 1000, creds.expires_at_ms)
    end)

    it("needs a refresh token to refresh #failure", function()
      local err = raised(client({ fake.url("ok") }).refresh, { access_token = "x" })
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.are.equal(0, #fake.requests)
    end)
  end)

  describe("is_expired", function()
    it("applies a margin to the stored expiry", function()
      local now = 1700000000000
      local c = oauth.new({ clock_ms = function() return now end, log = log.silent() })
      assert.is_false(c.is_expired({ expires_at_ms = now + 10 * 60 * 1000 }))
      assert.is_true(c.is_expired({ expires_at_ms = now + 4 * 60 * 1000 }))
      assert.is_true(c.is_expired({ expires_at_ms = now + 4 * 60 * 1000 }, 5 * 60 * 1000))
      assert.is_false(c.is_expired({ expires_at_ms = now + 4 * 60 * 1000 }, 0))
      assert.is_true(c.is_expired({}))
    end)
  end)

  describe("recipes/claude-login.lua", function()
    local fake, dir
    before_each(function()
      fake = fake_server.start()
      dir = assert(fs.mkdtemp("galley-login-"))
    end)
    after_each(function()
      fake.stop()
      fs.remove_tree(dir)
    end)

    -- Runs the recipe; `answer(stdout_so_far)` returns what to type once the URL is printed.
    -- The spec's process serves the fake while it waits (proc releases the GIL).
    local function run_recipe(args, answer)
      local argv = { support.bin, "run", support.source_dir .. "/recipes/claude-login.lua" }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      local p = assert(proc.spawn({ argv = argv, stdin = "pipe" }))
      local out, err, sent = {}, {}, answer == nil
      if answer == nil then p:close_stdin() end
      while true do
        local what, data = p:read(30000)
        assert.is_not_nil(what, "the recipe did not finish")
        if what == "exit" then
          return data, table.concat(out), table.concat(err)
        end
        if what == "stdout" then out[#out + 1] = data else err[#err + 1] = data end
        local so_far = table.concat(out)
        if not sent and so_far:find("\n", 1, true) then
          sent = true
          p:write(answer(so_far))
          p:close_stdin()
        end
      end
    end

    it("walks through a login and saves the credentials with mode 600", function()
      local path = dir .. "/sub/creds.json"
      local code, out, err = run_recipe({ "--token-urls", fake.url("cf") .. "," .. fake.url("ok"), "--output", path },
        function(stdout)
          local url = stdout:match("^(%S+)")
          local state = url:match("[?&]state=([^&]+)")
          local challenge = url:match("[?&]code_challenge=([^&]+)")
          fake.add_code("pasted-code", challenge)
          return "pasted-code#" .. state .. "\n"
        end)
      assert.are.equal(0, code, err)
      local issued = fake.issued[1]
      local saved = cjson.decode((assert(fs.read(path))))
      assert.are.equal(issued.access_token, saved.access_token)
      assert.are.equal(issued.refresh_token, saved.refresh_token)
      assert.are.equal(tonumber("600", 8), fs.stat(path).mode & tonumber("777", 8))
      assert.are.equal(tonumber("700", 8), fs.stat(dir .. "/sub").mode & tonumber("777", 8))
      for _, text in ipairs({ out, err }) do
        assert.is_nil(text:find(issued.access_token, 1, true))
        assert.is_nil(text:find(issued.refresh_token, 1, true))
      end
      assert.is_truthy(err:find("access token 108 chars", 1, true))
    end)

    it("rejects a code pasted with another login's state #failure", function()
      local path = dir .. "/creds.json"
      local code, _, err = run_recipe({ "--token-urls", fake.url("ok"), "--output", path }, function()
        return "some-code#not-the-state\n"
      end)
      assert.are.equal(1, code)
      assert.is_truthy(err:find("VALIDATION_ERROR", 1, true))
      assert.is_false(fs.exists(path))
      assert.are.equal(0, #fake.requests)
    end)

    it("refreshes saved credentials and stores the rotated refresh token", function()
      local path = dir .. "/creds.json"
      local rt = fake.add_refresh_token()
      oauth.save_credentials(path, { access_token = "sk-ant-oat01-old", refresh_token = rt, expires_at_ms = 1,
        scopes = { "user:inference" } })
      local code, _, err = run_recipe({ "--refresh", "--token-urls", fake.url("gone") .. "," .. fake.url("ok"),
        "--output", path })
      assert.are.equal(0, code, err)
      local saved = oauth.load_credentials(path)
      assert.are.equal(fake.issued[1].access_token, saved.access_token)
      assert.are_not.equal(rt, saved.refresh_token)
      assert.is_true(fake.is_live_refresh_token(saved.refresh_token))
      assert.are.equal(tonumber("600", 8), fs.stat(path).mode & tonumber("777", 8))
      -- --if-needed leaves fresh credentials alone.
      code = run_recipe({ "--refresh", "--if-needed", "--token-urls", fake.url("ok"), "--output", path })
      assert.are.equal(0, code)
      assert.are.equal(saved.refresh_token, oauth.load_credentials(path).refresh_token)
    end)

    it("keeps the saved file when the refresh token is refused #failure", function()
      local path = dir .. "/creds.json"
      oauth.save_credentials(path, { access_token = "sk-ant-oat01-old", refresh_token = "sk-ant-ort01-spent",
        expires_at_ms = 1 })
      local before = fs.read(path)
      local code, _, err = run_recipe({ "--refresh", "--token-urls", fake.url("ok"), "--output", path })
      assert.are.equal(1, code)
      assert.is_truthy(err:find("AUTHENTICATION_ERROR", 1, true))
      assert.are.equal(before, fs.read(path))
    end)

    it("--if-needed without --refresh does nothing while the credentials are valid", function()
      local path = dir .. "/creds.json"
      oauth.save_credentials(path, { access_token = "sk-ant-oat01-valid", refresh_token = "sk-ant-ort01-keep",
        expires_at_ms = (os.time() + 3600) * 1000 })
      local before = fs.read(path)
      local code, out, err = run_recipe({ "--if-needed", "--token-urls", fake.url("ok"), "--output", path })
      assert.are.equal(0, code, err)
      assert.are.equal("", out) -- no sign-in URL: no login started
      assert.are.equal(0, #fake.requests)
      assert.are.equal(before, fs.read(path))
      assert.truthy(err:find("nothing to do", 1, true), err)
    end)

    it("--if-needed without --refresh refreshes expiring credentials instead of logging in", function()
      local path = dir .. "/creds.json"
      local rt = fake.add_refresh_token()
      oauth.save_credentials(path, { access_token = "sk-ant-oat01-old", refresh_token = rt,
        expires_at_ms = (os.time() + 60) * 1000 })
      local code, out, err = run_recipe({ "--if-needed", "--token-urls", fake.url("ok"), "--output", path })
      assert.are.equal(0, code, err)
      assert.are.equal("", out)
      assert.are.equal(fake.issued[1].access_token, oauth.load_credentials(path).access_token)
      assert.truthy(err:find("refreshing them (--if-needed)", 1, true), err)
    end)

    it("--if-needed without saved credentials says it starts a login before the URL", function()
      local path = dir .. "/none.json"
      local code, out, err = run_recipe({ "--if-needed", "--token-urls", fake.url("ok"), "--output", path },
        function(stdout)
          local url = stdout:match("^(%S+)")
          fake.add_code("pasted-code", url:match("[?&]code_challenge=([^&]+)"))
          return "pasted-code#" .. url:match("[?&]state=([^&]+)") .. "\n"
        end)
      assert.are.equal(0, code, err)
      assert.truthy(out:match("^https://"), out)
      local said = err:find("starting a login (--if-needed)", 1, true)
      assert.truthy(said and said < err:find("Open this URL", 1, true), err)
      assert.are.equal(fake.issued[1].access_token, oauth.load_credentials(path).access_token)
    end)
  end)
end)
