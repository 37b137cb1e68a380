local log = require("galley.log")
local errors = require("galley.errors")
local cjson = require("cjson")
local support = require("support")
local q = support.q

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

-- Runs `galley <opts> -e <code>` with the given environment prefix; returns code, stdout, stderr.
local function galley_e(env, opts, code)
  local out, err = support.tmpname(), support.tmpname()
  local cmd = ("env -u GALLEY_LOG -u GALLEY_LOG_FORMAT %s %s %s -e %s >%s 2>%s </dev/null"):format(
    env, q(support.bin), opts, q(code), out, err)
  local _, _, status = os.execute(cmd)
  local function slurp(p)
    local f = assert(io.open(p, "rb"))
    local s = f:read("a")
    f:close()
    os.remove(p)
    return s
  end
  return status, slurp(out), slurp(err)
end

local function unique(tag)
  return ("%s-%d-%s"):format(tag, os.time(), tostring({}):match("0x(%x+)") or "x")
end

describe("galley.log #log", function()
  describe("levels", function()
    it("writes records at or above the logger's level only", function()
      local logger, records = log.capture({ level = "warn" })
      for _, level in ipairs(log.level_names) do logger[level]("at " .. level) end
      local got = {}
      for _, r in ipairs(records) do got[#got + 1] = r.level end
      assert.are.same({ "warn", "error", "fatal" }, got)
      assert.is_true(logger.enabled("error"))
      assert.is_false(logger.enabled("info"))
      assert.are.equal("warn", logger.level())
    end)

    it("can change level and accepts off", function()
      local logger, records = log.capture({ level = "off" })
      logger.fatal("hidden")
      logger.set_level("debug")
      logger.trace("hidden")
      logger.debug("shown")
      assert.are.equal(1, #records)
      assert.are.equal("shown", records[1].msg)
    end)

    it("takes its default from GALLEY_LOG, then -v/-q, then info", function()
      assert.are.equal("debug", log.default_level("debug", { verbose = 0 }))
      assert.are.equal("trace", log.default_level("TRACE", { quiet = 1 }))
      assert.are.equal("off", log.default_level("off", {}))
      assert.are.equal("error", log.default_level("", { quiet = 1 }))
      assert.are.equal("debug", log.default_level("nonsense", { verbose = 1 }))
      assert.are.equal("trace", log.default_level("", { verbose = 2 }))
      assert.are.equal("info", log.default_level("", { verbose = 0, quiet = 0 }))
    end)

    it("rejects unknown levels, formats and options", function()
      assert.are.equal("VALIDATION_ERROR", raised(log.new, { level = "loud" }).code)
      assert.are.equal("VALIDATION_ERROR", raised(log.new, { format = "xml" }).code)
      assert.are.equal("VALIDATION_ERROR", raised(log.new, { levle = "info" }).code)
      assert.are.equal("VALIDATION_ERROR", raised(log.new, { sink = 42 }).code)
      assert.are.equal("VALIDATION_ERROR", raised(log.silent().child, { prefx = "x" }).code)
      assert.are.equal("VALIDATION_ERROR", raised(log.silent().set_level, "chatty").code)
    end)
  end)

  describe("structure", function()
    it("joins child prefixes and merges context, call fields winning", function()
      local root, records = log.capture({ prefix = "orch", context = { instance = "vm1", step = "boot" } })
      local child = root.child({ prefix = "pm2", context = { process = "cc-a" } })
      child.with({ attempt = 2 }).info("starting", { step = "start" })
      root.info("root")
      assert.are.equal("orch.pm2", records[1].prefix)
      assert.are.same({ instance = "vm1", process = "cc-a", attempt = 2, step = "start" }, records[1].fields)
      assert.are.equal("orch", records[2].prefix)
      assert.are.same({ instance = "vm1", step = "boot" }, records[2].fields)
    end)

    it("tolerates colon calls and non-table fields", function()
      local logger, records = log.capture()
      logger:info("colon", { a = 1 })
      logger.info("scalar", 42)
      assert.are.equal("colon", records[1].msg)
      assert.are.same({ a = 1 }, records[1].fields)
      assert.are.same({ value = 42 }, records[2].fields)
    end)

    it("writes one JSON object per record", function()
      local logger, records = log.capture({ format = "json", prefix = "morph", clock = function() return 86400.25 end })
      logger.warn("retrying", { attempt = 2, list = { 1, 2 }, err = errors.new("TIMEOUT", "slow"),
        fn = print, nested = { deep = { x = "y" } } })
      local line = records[1].line
      assert.falsy(line:find("\n", 1, true))
      local obj = cjson.decode(line)
      assert.are.equal("1970-01-02T00:00:00.250Z", obj.ts)
      assert.are.equal("warn", obj.level)
      assert.are.equal("morph", obj.prefix)
      assert.are.equal("retrying", obj.msg)
      assert.are.equal(2, obj.fields.attempt)
      assert.are.same({ 1, 2 }, obj.fields.list)
      assert.are.equal("TIMEOUT", obj.fields.err.code)
      assert.are.equal("y", obj.fields.nested.deep.x)
      assert.is_string(obj.fields.fn)
    end)

    it("writes null prefix, empty fields and survives cycles in JSON", function()
      local logger, records = log.capture({ format = "json", clock = function() return 0 end })
      local cyc = { name = "c" }
      cyc.self = cyc
      logger.info("a")
      logger.info("b", { cyc = cyc, inf = math.huge, mixed = { 1, x = 2 } })
      local a = cjson.decode(records[1].line)
      assert.are.equal(cjson.null, a.prefix)
      assert.are.same({}, a.fields)
      assert.are.equal("1970-01-01T00:00:00Z", a.ts)
      local b = cjson.decode(records[2].line)
      assert.are.equal("[cycle]", b.fields.cyc.self)
      assert.are.equal("inf", b.fields.inf)
      assert.are.equal(2, b.fields.mixed.x)
    end)

    it("formats human lines with sorted fields and quotes only where needed", function()
      local logger, records = log.capture({ prefix = "agent" })
      logger.info("built spec", { name = "cc-a", cwd = "/root/x y", n = 3, err = errors.new("NOT_FOUND", "gone") })
      local line = records[1].line
      assert.matches("^%d%d:%d%d:%d%d INFO  %[agent%] built spec ", line)
      assert.truthy(line:find('cwd="/root/x y" err="NOT_FOUND: gone" n=3 name=cc-a', 1, true), line)
      assert.falsy(line:find("\27", 1, true))
    end)

    it("shows a message's control characters instead of sending them to the terminal", function()
      -- a message can carry an instance's text (an agent's line, a remote error)
      local logger, records = log.capture()
      logger.info("agent said \27]52;c;cHduZWQ=\7 then \27[2J\r\n", { out = "x\27[1my" })
      local line = records[1].line
      assert.is_nil(line:find("\27", 1, true), line)
      assert.truthy(line:find("agent said ^[]52;c;cHduZWQ=^G then ^[[2J\n", 1, true), line)
      local util = require("galley.util")
      assert.are.equal("plain\ttext\n", util.visible("plain\ttext\n"))
      assert.are.equal("\27[1;31mred\27[0m ^[[2J", util.visible("\27[1;31mred\27[0m \27[2J", true))
      assert.are.equal("^[[1;31mred", util.visible("\27[1;31mred"))
      assert.are.equal("x\ny^Mz", util.visible("x\r\ny\rz\r"))
      assert.are.equal("\\u009b \194\169 ^@^A^?", util.visible("\194\155 \194\169 \0\1\127"))
    end)

    it("colours human lines only when asked", function()
      local logger, records = log.capture({})
      local colored = log.new({ color = true, level = "info", sink = function(line) records[#records + 1] = line end })
      logger.error("plain")
      colored.error("red")
      assert.falsy(records[1].line:find("\27", 1, true))
      assert.truthy(records[2]:find("\27[31m", 1, true))
    end)

    it("appends to a file given by path and to an open file", function()
      local path = support.tmpname()
      local logger = log.new({ sink = path, level = "info", format = "json" })
      logger.info("one")
      logger.info("two")
      local f = assert(io.open(support.tmpname(), "w+"))
      local to_file = log.new({ sink = f, level = "info" })
      to_file.info("three")
      f:seek("set")
      assert.truthy(f:read("a"):find("three", 1, true))
      f:close()
      local lines = {}
      for l in io.lines(path) do lines[#lines + 1] = cjson.decode(l).msg end
      os.remove(path)
      assert.are.same({ "one", "two" }, lines)
      assert.are.equal("FILE_IO_ERROR", raised(log.new, { sink = "/nonexistent-dir/x/log" }).code)
    end)

    it("has a silent logger whose children are silent too", function()
      local s = log.silent()
      s.fatal("nothing")
      s.child({ prefix = "x" }).with({ a = 1 }).error("nothing")
      assert.is_false(s.enabled("fatal"))
      assert.are.equal(log.default(), log.default())
    end)
  end)

  describe("the process #cli", function()
    it("writes human lines to stderr at the GALLEY_LOG level, without colour by default", function()
      local code, out, err = galley_e("GALLEY_LOG=debug", "--no-color",
        'local l = require("galley.log").new({prefix="p"}) l.debug("dbg", {k="v"}) l.trace("hidden")')
      assert.are.equal(0, code, err)
      assert.are.equal("", out)
      assert.matches("^%d%d:%d%d:%d%d DEBUG %[p%] dbg k=v\n$", err)
    end)

    it("follows -v and -q when GALLEY_LOG is unset", function()
      local code_text = 'local l = require("galley.log").new() l.debug("D") l.info("I") l.error("E")'
      local _, _, v = galley_e("", "-v", code_text)
      local _, _, plain = galley_e("", "", code_text)
      local _, _, quiet = galley_e("", "-q", code_text)
      assert.truthy(v:find(" D\n", 1, true) and v:find(" I\n", 1, true))
      assert.falsy(plain:find(" D\n", 1, true))
      assert.truthy(plain:find(" I\n", 1, true))
      assert.falsy(quiet:find(" I\n", 1, true))
      assert.truthy(quiet:find(" E\n", 1, true))
    end)

    it("colours only when the command line says colour", function()
      local code_text = 'require("galley.log").new().warn("W")'
      local _, _, colored = galley_e("", "--color", code_text)
      local _, _, plain = galley_e("", "--no-color", code_text)
      assert.truthy(colored:find("\27[33m", 1, true), colored)
      assert.falsy(plain:find("\27", 1, true), plain)
    end)

    it("writes JSON lines with GALLEY_LOG_FORMAT=json", function()
      local _, _, err = galley_e("GALLEY_LOG_FORMAT=json", "", 'require("galley.log").new().info("J", {a = 1})')
      local obj = cjson.decode((err:gsub("\n$", "")))
      assert.are.equal("J", obj.msg)
      assert.are.equal(1, obj.fields.a)
    end)
  end)

  describe("redaction #secrets", function()
    it("hides registered secrets in messages and nested fields", function()
      local secret = unique("hunter2-reg")
      assert.is_true(log.register_secret(secret))
      local logger, records = log.capture({ format = "json" })
      logger.info("using " .. secret .. " now", { outer = { inner = { "x", "value=" .. secret } }, plain = secret })
      local line = records[1].line
      assert.falsy(line:find(secret, 1, true), line)
      assert.truthy(line:find("using [REDACTED] now", 1, true))
    end)

    it("ignores values too short to register", function()
      assert.is_false(log.register_secret("abc"))
      assert.is_false(log.register_secret(nil))
      assert.is_false(log.register_secret(12345))
      assert.are.equal("abc abc", log.redact("abc abc"))
    end)

    it("hides base64 forms of a registered secret at any alignment", function()
      local ok, codec = pcall(require, "galley.core.codec")
      if not ok then
        pending("galley.core.codec is not built yet")
        return
      end
      local secret = unique("b64-secret-value")
      log.register_secret(secret)
      for _, prefix in ipairs({ "", "a", "ab", '{"accessToken":"' }) do
        for _, variant in ipairs({ "standard", "urlsafe" }) do
          local encoded = codec.base64_encode(prefix .. secret .. '"}', variant)
          local out = log.redact("printf %s '" .. encoded .. "' | base64 -d")
          assert.truthy(out:find("[REDACTED]", 1, true), prefix .. " " .. variant)
        end
      end
    end)

    it("hides token-looking text", function()
      local samples = {
        "sk-ant-oat01-" .. ("aB3_"):rep(20),
        "sk-ant-api03-" .. ("Zz9-"):rep(20),
        "morph_" .. ("k3Y"):rep(10),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "ghp_" .. ("A1b2"):rep(9),
        "sk-proj-" .. ("x7Y"):rep(10),
      }
      for _, token in ipairs(samples) do
        local out = log.redact("a " .. token .. " b")
        assert.falsy(out:find(token, 1, true), out)
        assert.truthy(out:find("[REDACTED]", 1, true), out)
        assert.truthy(out:find("^a "), out)
        assert.truthy(out:find(" b$"), out)
      end
      local bearer = log.redact("curl -H 'Authorization: Bearer 0123456789abcdefXYZ' https://x")
      assert.falsy(bearer:find("0123456789abcdefXYZ", 1, true), bearer)
      assert.falsy(log.redact("Bearer abcdefgh12345678"):find("abcdefgh12345678", 1, true))
    end)

    it("hides name=value pairs with secret-sounding names", function()
      local out = log.redact('password=hunter22 api_key=abc123 "refresh_token": "rt-1" secret=s3 user=bob '
        .. "Authorization: Basic dXNlcjpwYXNzd29yZA==")
      for _, s in ipairs({ "hunter22", "abc123", "rt-1", "s3 ", "dXNlcjpwYXNzd29yZA" }) do
        assert.falsy(out:find(s, 1, true), s .. " in " .. out)
      end
      assert.truthy(out:find("user=bob", 1, true))
    end)

    it("leaves prose and ordinary values alone", function()
      local texts = {
        "command.env.ANTHROPIC_API_KEY: expected string, got table",
        "token: expected string, got nil",
        "wrote /root/.claude/.credentials.json (mode 600, 412 bytes)",
        "instance morphvm_abc123 ready in 5120 ms",
        "uses a Bearer token",
        "the key is missing",
      }
      for _, t in ipairs(texts) do assert.are.equal(t, log.redact(t)) end
    end)

    it("masks field values under secret-sounding keys, keeping lengths", function()
      local logger, records = log.capture()
      logger.info("install", {
        password = "pw",
        accessToken = "short",
        headers = { Authorization = "Bearer x", ["Content-Type"] = "application/json" },
        credentials = { claudeAiOauth = { accessToken = "a", refreshToken = "r", expiresAt = 17,
          scopes = { "user" } } },
        api_key = "k",
        cache_key = "plain-name",
        signing_key = "0123456789abcdefABCDEF",
        token_path = "/root/.token",
        token_count = 12,
        key_id = "abc",
        path = "/root/.claude/.credentials.json",
      })
      local f = records[1].fields
      assert.are.equal("[REDACTED len=2]", f.password)
      assert.are.equal("[REDACTED len=5]", f.accessToken)
      assert.are.equal("[REDACTED len=8]", f.headers.Authorization)
      assert.are.equal("application/json", f.headers["Content-Type"])
      assert.are.equal("[REDACTED len=1]", f.credentials.claudeAiOauth.accessToken)
      assert.are.equal("[REDACTED len=1]", f.credentials.claudeAiOauth.refreshToken)
      assert.are.equal(17, f.credentials.claudeAiOauth.expiresAt)
      assert.are.equal("[REDACTED len=1]", f.api_key)
      assert.are.equal("plain-name", f.cache_key)
      assert.are.equal("[REDACTED len=22]", f.signing_key)
      assert.are.equal("/root/.token", f.token_path)
      assert.are.equal(12, f.token_count)
      assert.are.equal("abc", f.key_id)
      assert.are.equal("/root/.claude/.credentials.json", f.path)
    end)

    it("hides KEY=value after a word and a colon, and leaves no stray bracket #hardening", function()
      assert.are.equal("stderr: password=[REDACTED]", log.redact("stderr: password=hunter2hunter2"))
      local out = log.redact("shell exited with status 1: DB_PASSWORD=s3cr3tvalue")
      assert.are.equal("shell exited with status 1: DB_PASSWORD=[REDACTED]", out)
      assert.are.equal("token=[REDACTED]", log.redact("token=sk-ant-oat01-" .. ("aB3_"):rep(20)))
      assert.are.equal("x token=[REDACTED] y", log.redact("x token=sk-ant-oat01-" .. ("aB3_"):rep(20) .. " y"))
      assert.are.equal("key: token=[REDACTED]", log.redact("key: token=abc"))
      assert.are.equal("TO_KEN=[REDACTED]", log.redact("TO_KEN=abc"))
      assert.are.equal('{"cfg": "a", "password": "[REDACTED]"}', log.redact('{"cfg": "a", "password": "pw1"}'))
    end)

    it("redacts a 1 MiB text and 200 KiB unbroken words (linear time) #hardening", function()
      -- No timing here (bench/redact measures it): on a quadratic redactor these take hours.
      local mib = ("A"):rep(1024 * 1024)
      assert.are.equal(mib, log.redact(mib))
      local word = ("k3Y_"):rep(50 * 1024)
      assert.are.equal(word, log.redact(word))
      assert.are.equal(word .. "=x", log.redact(word .. "=x"))
      local hidden = log.redact(("x"):rep(200 * 1024) .. "password=hunter2 " .. ("key:"):rep(50000))
      assert.is_nil(hidden:find("hunter2", 1, true))
      local jwtish = ("eyJ"):rep(100000)
      assert.are.equal(jwtish, log.redact(jwtish))
      local errors_mod = require("galley.errors")
      local err = errors_mod.new("VALIDATION_ERROR", ("B"):rep(1024 * 1024) .. " password=hunter2")
      assert.is_nil(err.message:find("hunter2", 1, true))
    end)

    it("is the same detector galley.credentials masks with (galley.secrets)", function()
      local secrets = require("galley.secrets")
      local text = "DB_PASSWORD=s3cr3t Bearer abcdefgh12345678 ok"
      assert.are.equal(secrets.redact_text(text), log.redact(text))
      assert.are.equal("always", secrets.sensitivity("ANTHROPIC_API_KEY"))
      assert.are.equal("blob", secrets.sensitivity("signing_key"))
      assert.is_nil(secrets.sensitivity("token_path"))
      assert.is_true(secrets.is_secret_value("refreshToken", "x"))
      assert.is_true(secrets.is_secret_value("note", "sk-ant-oat01-abc"))
      assert.is_false(secrets.is_secret_value("note", "hello"))
    end)

    it("redacts a copy, keeping the input and error metatables intact", function()
      local input = { password = "pw", err = errors.new("X", "y"), list = { "a" } }
      input.list.back = input
      local out = log.redact(input)
      assert.are.equal("pw", input.password)
      assert.are.equal("[REDACTED len=2]", out.password)
      assert.is_true(errors.is(out.err))
      assert.are.equal(out, out.list.back)
      assert.are.equal(7, log.redact(7))
    end)
  end)
end)
