-- examples/push-dir.lua: a real directory tree (modes, a binary file, spaces, an empty
-- directory, a symlink) pushed into a local sandbox and verified there by the example itself.
local h = require("examples.helpers")
local proc = require("galley.core.proc")
local codec = require("galley.core.codec")

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... }, timeout_ms = 30000 }))
  assert(r.exit_code == 0, r.stderr)
end

describe("examples/push-dir.lua #examples", function()
  local sb, tree
  setup(function()
    sb = h.sandbox()
    tree = h.tempdir("push-tree")
    sh([[cd "$1" && mkdir -p bin data empty "with space" && printf '#!/bin/sh\necho hi\n' > bin/run.sh &&
      chmod 755 bin/run.sh && printf 'secret\n' > data/key && chmod 600 data/key &&
      printf 'x\n' > "with space/a b.txt" && chmod 700 empty && ln -s bin/run.sh link]], tree)
    local f = assert(io.open(tree .. "/data/blob.bin", "wb"))
    f:write(codec.random_bytes(200000))
    f:close()
  end)
  teardown(function()
    sb:cleanup()
    proc.run({ argv = { "rm", "-rf", "--", tree } })
  end)

  it("copies the tree with its modes and verifies every file", function()
    local r = sb:galley({ "run", h.example("push-dir.lua"), tree })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.are.same({
      "d 755 - bin",
      "f 755 18 bin/run.sh",
      "d 755 - data",
      "f 644 200000 data/blob.bin",
      "f 600 7 data/key",
      "d 700 - empty",
      "d 755 - with space",
      "f 644 2 with space/a b.txt",
      "skipped link (link)",
      "pushed 4 files and 4 directories (200027 bytes) to ~/pushed; modes, sizes and sha256 verified",
    }, h.lines(r.stdout))
    assert.are.same({}, sb:leftovers())
  end)

  it("takes another destination", function()
    local r = sb:galley({ "run", h.example("push-dir.lua"), tree, "--dest", "/tmp/app" })
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.is_truthy(r.stdout:find("\npushed 4 files and 4 directories (200027 bytes) to /tmp/app;", 1, true))
    assert.are.same({}, sb:leftovers())
  end)

  it("needs a directory #failure", function()
    local r = sb:galley({ "run", h.example("push-dir.lua"), tree .. "/data/key" })
    assert.are.equal(2, r.exit_code)
    assert.is_truthy(r.stderr:find("RECIPE_USAGE", 1, true), r.stderr)
    assert.are.same({}, sb:leftovers())
  end)
end)
