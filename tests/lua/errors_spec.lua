local errors = require("galley.errors")
local log = require("galley.log")
local runtime = require("galley.core.runtime")

describe("galley.errors #errors", function()
  describe("the code list", function()
    it("enumerates the seeds' codes in order and by name", function()
      local want = { "AUTHENTICATION_ERROR", "VALIDATION_ERROR", "NOT_FOUND", "RATE_LIMIT", "SERVER_ERROR",
        "NETWORK_ERROR", "TIMEOUT", "PROTOCOL_ERROR", "PROCESS_ERROR", "FILE_IO_ERROR", "ORCHESTRATION_ERROR",
        "CREDENTIALS_ERROR", "AGENT_ERROR" }
      for _, code in ipairs(want) do
        assert.are.equal(code, errors.codes[code])
      end
      local n = 0
      for i, code in ipairs(errors.codes) do
        n = i
        assert.are.equal(errors.code_list[i].code, code)
        assert.matches("^[A-Z][A-Z_]+$", code)
        assert.is_string(errors.describe(code).description)
      end
      assert.are.equal(#errors.code_list, n)
      assert.is_nil(errors.describe("NO_SUCH_CODE"))
    end)

    it("marks only transient codes as retryable", function()
      for _, code in ipairs({ "RATE_LIMIT", "SERVER_ERROR", "NETWORK_ERROR", "TIMEOUT", "HTTP_TIMEOUT" }) do
        assert.is_true(errors.is_retryable(errors.new(code, "x")), code)
      end
      for _, code in ipairs({ "NOT_FOUND", "VALIDATION_ERROR", "AUTHENTICATION_ERROR", "B64_INVALID" }) do
        assert.is_false(errors.is_retryable(errors.new(code, "x")), code)
      end
      assert.is_true(errors.is_retryable(errors.new("PROCESS_ERROR", "x", { retryable = true })))
      assert.is_false(errors.is_retryable("TIMEOUT"))
    end)

    it("maps HTTP statuses to codes", function()
      local cases = { [200] = nil, [302] = nil, [400] = "VALIDATION_ERROR", [401] = "AUTHENTICATION_ERROR",
        [403] = "AUTHENTICATION_ERROR", [404] = "NOT_FOUND", [408] = "TIMEOUT", [409] = "CONFLICT",
        [418] = "VALIDATION_ERROR", [422] = "VALIDATION_ERROR", [429] = "RATE_LIMIT", [500] = "SERVER_ERROR",
        [503] = "SERVER_ERROR" }
      for status, code in pairs(cases) do assert.are.equal(code, errors.code_for_http_status(status)) end
      for status = 100, 399 do assert.is_nil(errors.code_for_http_status(status)) end
      for status = 500, 599 do assert.are.equal("SERVER_ERROR", errors.code_for_http_status(status)) end
      for status = 400, 499 do assert.is_string(errors.describe(errors.code_for_http_status(status)).code) end
    end)
  end)

  describe("constructors", function()
    it("share their metatable with errors made in C", function()
      assert.are.equal(runtime.error_metatable(), errors.metatable)
      local err = errors.new("NOT_FOUND", "no instance", { resource = "instance:x" })
      assert.is_true(errors.is(err))
      assert.is_true(errors.is(err, "NOT_FOUND"))
      assert.is_false(errors.is(err, "TIMEOUT"))
      assert.is_false(errors.is({ code = "NOT_FOUND" }))
      assert.are.equal("NOT_FOUND: no instance", tostring(err))
    end)

    it("build each kind with its default code and context fields", function()
      local defaults = { ProviderError = "PROVIDER_ERROR", ProcessError = "PROCESS_ERROR", AgentError = "AGENT_ERROR",
        CredentialsError = "CREDENTIALS_ERROR", OrchestrationError = "ORCHESTRATION_ERROR" }
      for _, kind in ipairs(errors.kinds) do
        local err = errors[kind](nil, "failed", { operation = "op", resource = "r", attempt = 2, hint = "h",
          details = { exit_code = 3 } })
        assert.is_true(errors.is(err))
        assert.are.equal(defaults[kind], err.code)
        assert.are.equal(kind, err.kind)
        assert.are.same({ "op", "r", 2, "h", 3 }, { err.operation, err.resource, err.attempt, err.hint,
          err.details.exit_code })
        assert.are.equal("TIMEOUT", errors[kind]("TIMEOUT", "slow").code)
      end
    end)

    it("raise tables that pcall returns intact", function()
      local ok, err = pcall(errors.raise, "PROCESS_ERROR", "exit 3", { details = { exit_code = 3 } })
      assert.is_false(ok)
      assert.are.equal("PROCESS_ERROR", err.code)
      assert.are.equal(3, err.details.exit_code)
    end)
  end)

  describe("wrap", function()
    it("turns strings into INTERNAL_ERROR or the given default code, adding context", function()
      local _, e = pcall(error, "boom")
      local err = errors.wrap(e, { operation = "x" })
      assert.are.equal("INTERNAL_ERROR", err.code)
      assert.are.equal("x", err.operation)
      assert.are.equal("NETWORK_ERROR", errors.wrap("refused", nil, "NETWORK_ERROR").code)
    end)

    it("keeps existing errors and their context, filling only what is missing", function()
      local inner = errors.new("TIMEOUT", "slow", { operation = "inner" })
      local err = errors.wrap(inner, { operation = "outer", resource = "instance:a" })
      assert.are.equal(inner, err)
      assert.are.equal("inner", err.operation)
      assert.are.equal("instance:a", err.resource)
    end)

    it("keeps the code of a foreign error table", function()
      assert.are.equal("ENOENT", errors.wrap({ code = "ENOENT", message = "gone" }).code)
    end)
  end)

  describe("format", function()
    it("prints the code line and the context lines", function()
      local err = errors.new("RATE_LIMIT", "slow down", { operation = "instances.boot", resource = "snapshot:s",
        attempt = 2, max_attempts = 5, hint = "wait" })
      local text = errors.format(err)
      assert.truthy(text:find("^RATE_LIMIT: "))
      assert.truthy(text:find("\n  operation: instances.boot", 1, true))
      assert.truthy(text:find("\n  resource: snapshot:s", 1, true))
      assert.truthy(text:find("\n  attempt: 2/5", 1, true))
      assert.truthy(text:find("\n  hint: wait", 1, true))
      assert.are.equal("plain", errors.format("plain"))
    end)
  end)

  describe("redaction #secrets", function()
    it("removes registered secrets from messages, context and details", function()
      local secret = "errsecret-" .. tostring(os.time()) .. "-Zq81"
      assert.is_true(log.register_secret(secret))
      local err = errors.ProviderError("AUTHENTICATION_ERROR", "key " .. secret .. " rejected",
        { hint = "check " .. secret, details = { body = "echo " .. secret, headers = { Authorization = "Bearer x" } } })
      local all = errors.format(err) .. err.details.body .. err.details.headers.Authorization
      assert.falsy(all:find(secret, 1, true))
      assert.truthy(err.message:find("[REDACTED]", 1, true))
      assert.are.equal("AUTHENTICATION_ERROR", err.code)
    end)

    it("removes token-looking text even when nothing was registered", function()
      local token = "sk-ant-oat01-" .. ("Ab9_"):rep(10)
      local err = errors.new("AUTHENTICATION_ERROR", "token " .. token .. " expired")
      assert.falsy(tostring(err):find(token, 1, true))
      local wrapped = errors.wrap("header Authorization: Bearer abcdef0123456789abcdef")
      assert.falsy(wrapped.message:find("abcdef0123456789abcdef", 1, true))
    end)

    it("redacts an error made elsewhere all through when wrapped: details, fields, causes #hardening", function()
      local key = "morph_" .. ("Zk7"):rep(8)
      local raw = setmetatable({ code = "VALIDATION_ERROR", message = "rejected",
        fields = { "header.Authorization.Bearer " .. key },
        details = { { loc = { "header", "Authorization", "Bearer " .. key }, msg = "bad" } },
        cause = setmetatable({ code = "X", message = "inner", details = { body = "api_key=" .. key } },
          errors.metatable) }, errors.metatable)
      local err = errors.wrap(raw, { operation = "instances.get" })
      assert.are.equal(raw, err) -- the same table, redacted in place
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.is_nil(err.fields[1]:find(key, 1, true), err.fields[1])
      assert.is_nil(err.details[1].loc[3]:find(key, 1, true))
      assert.is_nil(err.cause.details.body:find(key, 1, true))
      assert.is_true(errors.is(err.cause))
    end)

    it("redacts nested tables and cause chains given to new", function()
      local token = "sk-ant-oat01-" .. ("Qw3_"):rep(10)
      local cause = errors.new("X", "inner")
      cause.details = { stderr = "DB_PASSWORD=" .. token }
      local err = errors.new("PROCESS_ERROR", "failed", { cause = cause, details = { a = { b = { c = token } } } })
      assert.is_nil(err.cause.details.stderr:find(token, 1, true))
      assert.is_nil(err.details.a.b.c:find(token, 1, true))
      assert.is_nil(errors.format(err):find(token, 1, true))
    end)

    it("raises promptly on a huge message and quotes values by a short prefix #hardening", function()
      local ok, err = pcall(errors.raise, "VALIDATION_ERROR", "bad " .. ("Q"):rep(1024 * 1024) .. " password=x")
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.is_true(#err.message <= errors.MAX_MESSAGE + 30, #err.message)
      assert.is_truthy(err.message:find("…%(%d+ bytes%)$"), err.message:sub(-40))
      local wrapped = errors.wrap(setmetatable({ code = "X", message = ("é"):rep(10000) }, errors.metatable))
      assert.is_true(#wrapped.message <= errors.MAX_MESSAGE + 30)
      assert.is_truthy(utf8.len(wrapped.message), "cut at a character boundary")
      assert.are.equal('"abc"', errors.quote("abc"))
      local q = errors.quote(("é"):rep(100))
      assert.is_truthy(q:find("…(200 bytes)", 1, true), q)
      assert.is_truthy(#q < 64 + 30)
      assert.is_truthy(utf8.len(q), "cut at a character boundary")
      assert.are.equal("12", errors.quote(12))
    end)

    it("redacts errors made elsewhere when they are formatted", function()
      local secret = "fmtsecret-" .. tostring(os.clock()):gsub("%D", "") .. "-Yy"
      log.register_secret(secret)
      local raw = setmetatable({ code = "HTTP_STATUS", message = "echoed " .. secret }, errors.metatable)
      assert.falsy(errors.format(raw):find(secret, 1, true))
    end)
  end)
end)
