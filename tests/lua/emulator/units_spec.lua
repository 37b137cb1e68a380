-- The emulator's pure-Lua pieces: fault specs and globs, JSON encoding.
local faults = require("galley.emulator.faults")
local json = require("galley.emulator.json")
local backend = require("galley.emulator.backend")
local cjson = require("cjson")

describe("galley.emulator.faults #emulator", function()
  it("parses key=value specs with defaults", function()
    local f = assert(faults.parse("method=post,path=/instance/*/exec,action=status,retry_after=3"))
    assert.are.equal("POST", f.method)
    assert.are.equal(503, f.status)
    assert.are.equal(3, f.retry_after)
    assert.are.equal(1, f.count)
    f = assert(faults.parse("path=/x,action=delay"))
    assert.are.equal("*", f.method)
    assert.are.equal(1000, f.delay_ms)
  end)

  it("rejects bad specs", function()
    for _, spec in ipairs({
      "action=reset", "path=/x,action=explode", "path=/x,count=0", "path=/x,status=abc",
      "path=/x,colour=red", "path=/x,status=700", "nonsense",
    }) do
      assert.is_nil((faults.parse(spec)), spec)
    end
  end)

  it("matches `*` within a segment and `**` across segments", function()
    local one = faults.glob_pattern("/instance/*/exec")
    assert.truthy(("/instance/morphvm_a/exec"):match(one))
    assert.falsy(("/instance/morphvm_a/exec/sse"):match(one))
    assert.falsy(("/instance/a/b/exec"):match(one))
    local any = faults.glob_pattern("/instance/**")
    assert.truthy(("/instance/a/exec/sse"):match(any))
    assert.falsy(("/snapshot"):match(any))
    assert.truthy(("/a.b"):match(faults.glob_pattern("/a.b")))
    assert.falsy(("/aXb"):match(faults.glob_pattern("/a.b")))
  end)

  it("uses up counts in order", function()
    local list = faults.list()
    list:add(assert(faults.validate({ path = "/x", method = "GET", count = 2, action = "reset" })))
    list:add(assert(faults.validate({ path = "/x", action = "malformed" })))
    assert.is_nil(list:take("POST", "/y"))
    assert.are.equal("reset", list:take("GET", "/x").action)
    assert.are.equal("malformed", list:take("POST", "/x").action)
    assert.are.equal("reset", list:take("GET", "/x").action)
    assert.is_nil(list:take("GET", "/x"))
  end)
end)

describe("galley.emulator.json #emulator", function()
  it("encodes marked empty arrays as [] and empty tables as {}", function()
    assert.are.equal('{"a":[],"b":{}}', json.encode({ a = json.array(), b = {} }))
    assert.are.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
  end)

  it("encodes null, integers, floats and escapes", function()
    assert.are.equal('{"n":null,"x":3,"y":2.5}', json.encode({ n = json.null, x = 3.0, y = 2.5 }))
    assert.are.equal('"a\\"b\\\\c\\n\\u0001"', json.encode('a"b\\c\n\1'))
  end)

  it("keeps output valid UTF-8 by replacing stray bytes", function()
    local s = json.encode("ok\255é")
    assert.are.equal("ok\u{FFFD}é", cjson.decode(s))
  end)

  it("round-trips through cjson", function()
    local v = { list = json.array({ "a", "b" }), map = { k = "v" }, t = true, f = false, n = 42 }
    local back = cjson.decode(json.encode(v))
    assert.are.same({ list = { "a", "b" }, map = { k = "v" }, t = true, f = false, n = 42 }, back)
  end)
end)

describe("galley.emulator.backend #emulator", function()
  it("runs one-element commands through /bin/sh -c and longer argv directly", function()
    assert.are.same({ "/bin/sh", "-c", "echo hi | cat" }, backend.command_argv({ "echo hi | cat" }))
    assert.are.same({ "ls", "-la", "/" }, backend.command_argv({ "ls", "-la", "/" }))
  end)
end)
