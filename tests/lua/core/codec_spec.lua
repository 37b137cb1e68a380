local support = require("support")
local codec = require("galley.core.codec")

local rfc4648 = {
  { "", "", "" },
  { "f", "Zg==", "Zg" },
  { "fo", "Zm8=", "Zm8" },
  { "foo", "Zm9v", "Zm9v" },
  { "foob", "Zm9vYg==", "Zm9vYg" },
  { "fooba", "Zm9vYmE=", "Zm9vYmE" },
  { "foobar", "Zm9vYmFy", "Zm9vYmFy" },
}

local function all_bytes()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  return table.concat(t)
end

describe("galley.core.codec #codec", function()
  describe("base64", function()
    it("encodes and decodes the RFC 4648 test strings in both variants", function()
      for _, v in ipairs(rfc4648) do
        assert.are.equal(v[2], codec.base64_encode(v[1]))
        assert.are.equal(v[2], codec.base64_encode(v[1], "standard"))
        assert.are.equal(v[3], codec.base64_encode(v[1], "urlsafe"))
        assert.are.equal(v[1], codec.base64_decode(v[2]))
        assert.are.equal(v[1], codec.base64_decode(v[3], "urlsafe"))
      end
    end)

    it("uses + and / for standard and - and _ for urlsafe", function()
      assert.are.equal("+/+/", codec.base64_encode("\251\255\191"))
      assert.are.equal("-_-_", codec.base64_encode("\251\255\191", "urlsafe"))
    end)

    it("round-trips all 256 byte values at every length", function()
      local bytes = all_bytes()
      for n = 0, 256 do
        local s = bytes:sub(257 - n)
        assert.are.equal(s, codec.base64_decode(codec.base64_encode(s)))
        assert.are.equal(s, codec.base64_decode(codec.base64_encode(s, "urlsafe"), "urlsafe"))
      end
    end)

    it("rejects invalid input with B64_INVALID instead of returning garbage", function()
      local bad = {
        standard = { "Zg", "Zg=", "Zg===", "Z", "Zm9vY", "Zm9v\n", " Zm9v", "Zh==", "-_8=", "Zg==Zg==", "Zm9v\0",
          "Zm9\xbd", "\x80\x80\x80\x80" },
        urlsafe = { "Zg==", "+/8", "Zh", "Z", "Zm9v\n", "Zm9v=", "s\xbd\xbd-", "\xff\xff\xff\xff" },
      }
      for variant, inputs in pairs(bad) do
        for _, s in ipairs(inputs) do
          local r, err = codec.base64_decode(s, variant)
          assert.is_nil(r, ("%s accepted %q"):format(variant, s))
          assert.are.equal("B64_INVALID", err.code)
        end
      end
    end)

    it("raises on an unknown variant or a non-string", function()
      assert.has_error(function() codec.base64_encode("x", "mime") end)
      assert.has_error(function() codec.base64_decode("eA==", "url") end)
      assert.has_error(function() codec.base64_encode({}) end)
    end)
  end)

  describe("json_string", function()
    local cjson = require("cjson")

    it("quotes every byte so that a JSON parser reads back the same bytes", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      assert.are.equal(all, cjson.decode(codec.json_string(all)))
      for i = 0, 255 do
        local c = string.char(i)
        assert.are.equal(c, cjson.decode(codec.json_string(c)))
      end
      assert.are.equal('""', codec.json_string(""))
    end)

    it("escapes only quotes, backslashes and control characters", function()
      assert.are.equal([["a/b+c=\\\"\n\t\u0001\u001f"]], codec.json_string('a/b+c=\\"\n\t\1\31'))
      assert.are.equal('"\127\200"', codec.json_string("\127\200"))
    end)
  end)

  describe("sha256", function()
    it("matches the known digests of '' and 'abc'", function()
      assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", codec.sha256(""))
      assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", codec.sha256("abc"))
    end)

    it("streams through a hasher with chainable updates", function()
      local h = codec.sha256_hasher()
      assert.are.equal(h, h:update("a"):update("b"))
      assert.are.equal(codec.sha256("ab"), h:hex())
      h:update("c")
      assert.are.equal(codec.sha256("abc"), h:hex())
      local big = codec.sha256_hasher()
      local piece = ("a"):rep(1000)
      for _ = 1, 1000 do big:update(piece) end
      assert.are.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", big:hex())
      assert.has_error(function() h:update(nil) end)
    end)

    it("hashes with libcrypto where it loads and with libsodium when told, alike and as sha256sum does", function()
      local proc = require("galley.core.proc")
      assert.are.equal("openssl", codec.sha256_backend()) -- libcurl's libcrypto is on this machine
      local data = codec.random_bytes(300000)
      local path = support.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write(data)
      f:close()
      local r = assert(proc.run({ argv = { "sha256sum", path } }))
      local want = r.stdout:match("^(%x+)")
      -- one shot (large: libcrypto), and streamed in odd pieces
      assert.are.equal(want, codec.sha256(data))
      local h = codec.sha256_hasher()
      local at = 1
      while at <= #data do
        local n = math.random(1, 9000)
        h:update(data:sub(at, at + n - 1))
        at = at + n
      end
      assert.are.equal(want, h:hex())
      -- the same through libsodium (GALLEY_SHA256=libsodium), in a galley of its own
      local script = 'local c = require("galley.core.codec") local f = io.open(arg[1], "rb")'
        .. ' local h = c.sha256_hasher():update(f:read("a")) print(c.sha256_backend(), h:hex())'
      local lua = support.tmpname()
      f = assert(io.open(lua, "wb"))
      f:write(script)
      f:close()
      r = assert(proc.run({ argv = { os.getenv("GALLEY_BIN") or "build/galley", "run", lua, path },
        env = { GALLEY_SHA256 = "libsodium" } }))
      os.remove(path)
      os.remove(lua)
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("libsodium\t" .. want .. "\n", r.stdout)
    end)
  end)

  describe("random", function()
    it("returns n random bytes and 2n hex digits", function()
      assert.are.equal(0, #codec.random_bytes(0))
      assert.are.equal(1000, #codec.random_bytes(1000))
      assert.are_not.equal(codec.random_bytes(32), codec.random_bytes(32))
      local hex = codec.random_hex(300)
      assert.are.equal(600, #hex)
      assert.matches("^[0-9a-f]+$", hex)
      assert.are.equal("", codec.random_hex(0))
      assert.has_error(function() codec.random_bytes(-1) end)
    end)
  end)

  describe("equal", function()
    it("compares by value and is false for different lengths", function()
      assert.is_true(codec.equal("token", "token"))
      assert.is_false(codec.equal("token", "tokeN"))
      assert.is_false(codec.equal("token", "token2"))
      assert.is_true(codec.equal("", ""))
      assert.is_true(codec.equal("a\0b", "a\0b"))
      assert.is_false(codec.equal("a\0b", "a\0c"))
    end)
  end)
end)
