-- examples/repl-session.txt: its input lines are piped into `galley repl` and what the REPL
-- prints is compared with the transcript, stdout and stderr separately, line by line. Then
-- `galley gc` collects the instance the session leaves running on purpose.
local h = require("examples.helpers")
local cjson = require("cjson")

--- The transcript as {input = {lines}, stdout = {matchers}, stderr = {matchers}}.
local function parse(text)
  local t = { input = {}, stdout = {}, stderr = {} }
  for _, line in ipairs(h.lines(text)) do
    local input = line:match("^>>? (.*)$") or (line == ">" and "") or nil
    if input then
      t.input[#t.input + 1] = input
    elseif line:match("^#") or line == "" then
      goto continue -- comment or spacing
    elseif line:match("^! ") then
      t.stderr[#t.stderr + 1] = line:sub(3)
    else
      t.stdout[#t.stdout + 1] = line
    end
    ::continue::
  end
  return t
end

--- A Lua pattern for an expected line: literal text, "<*>" matching anything.
local function pattern(expected)
  local parts = {}
  for _, piece in ipairs(require("galley.util").split(expected, "<*>")) do
    parts[#parts + 1] = piece:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  end
  return "^" .. table.concat(parts, ".-") .. "$"
end

local function compare(what, expected, actual_text)
  local actual = h.lines(actual_text)
  for i = 1, math.max(#expected, #actual) do
    local e, a = expected[i], actual[i]
    assert(e and a and a:match(pattern(e)),
      ("%s line %d differs:\n  expected: %s\n  actual:   %s\nwhole %s:\n%s"):format(what, i, tostring(e),
        tostring(a), what, actual_text))
  end
end

describe("examples/repl-session.txt #examples #repl", function()
  local sb, transcript
  setup(function()
    sb = h.sandbox()
    transcript = parse(h.read(h.example("repl-session.txt")))
  end)
  teardown(function() sb:cleanup() end)

  it("parses into inputs and expected output", function()
    assert.is_true(#transcript.input >= 20)
    assert.is_true(#transcript.stdout >= 20)
    assert.is_true(#transcript.stderr >= 4)
    assert.are.equal("^a%.b.-c$", pattern("a.b<*>c"))
  end)

  it("prints what the transcript says when its inputs are replayed", function()
    local r = sb:galley({ "repl" }, { stdin = table.concat(transcript.input, "\n") .. "\n" })
    assert.are.equal(0, r.exit_code, r.stderr)
    compare("stdout", transcript.stdout, r.stdout)
    compare("stderr", transcript.stderr, r.stderr)
    -- The session left exactly one instance on purpose; gc finds its run finished and stops it.
    local left = sb:leftovers()
    assert.are.equal(1, #left)
    local gc = sb:galley({ "--json", "gc" })
    assert.are.equal(0, gc.exit_code, gc.stderr)
    local found = cjson.decode(gc.stdout)
    assert.are.equal(1, #found)
    assert.are.equal(left[1], found[1].id)
    assert.are.equal("stopped", found[1].action)
    assert.are.equal("its run has finished", found[1].reason)
    assert.are.equal("repl", found[1].recipe)
    assert.are.same({}, sb:leftovers())
  end)
end)
