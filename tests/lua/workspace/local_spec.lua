-- galley.workspace on the local provider (a real bubblewrap sandbox) with its byte channel, and
-- the checks that need no instance (the path check, the manifest program run here).
local codec = require("galley.core.codec")
local proc = require("galley.core.proc")
local workspace = require("galley.workspace")
local W = assert(loadfile(require("support").source_dir .. "/tests/lua/support/workspace_suite.lua", "t", _ENV))()

W.suite("the local provider", W.local_setup(true), { logic = true })

describe("galley.workspace's path check", function()
  it("takes relative paths that stay inside, and nothing else", function()
    for _, ok in ipairs({ "a", "a/b", "...", "a/..b", "..a/b.", " /x", "a b/c", "ü/✓" }) do
      assert.is_true(workspace.safe_rel(ok), ok)
    end
    for _, bad in ipairs({ "", "/a", "a/", "a//b", ".", "..", "./a", "a/.", "a/..", "../a", "a/../b", "a/./b",
      "a\0b", "//a" }) do
      assert.is_false(workspace.safe_rel(bad), bad)
    end
  end)

  it("takes symlinks whose target stays inside the root, and nothing else", function()
    for _, c in ipairs({ { "l", "a" }, { "l", "." }, { "d/l", "../a" }, { "d/e/l", "../../a/b" }, { "d/l", "x/../../y" },
      { "l", "a/./b//c" } }) do
      assert.is_true(workspace.safe_link(c[1], c[2]), c[1] .. " -> " .. c[2])
    end
    for _, c in ipairs({ { "l", "" }, { "l", "/etc" }, { "l", ".." }, { "d/l", "../.." }, { "l", "a/../../b" },
      { "d/e/l", "../../../x" } }) do
      assert.is_false(workspace.safe_link(c[1], c[2]), c[1] .. " -> " .. c[2])
    end
  end)
end)

describe("galley.workspace's manifest program", function()
  it("gives the same answer with python3 and with sha256sum alone", function()
    local dir = W.mktemp()
    W.make_tree(dir)
    W.sh('cd "$1" && head -c 3000000 /dev/urandom > "big two.bin" && : > empty && chmod 000 empty', dir)
    local toolbin = require("support.toolbin")
    local tools = { "xargs" }
    for _, t in ipairs(toolbin.TOOLS) do tools[#tools + 1] = t end
    local out = {}
    for _, py in ipairs({ true, false }) do
      local bin = toolbin.make({ tools = tools, python = py })
      local r = assert(proc.run({ argv = { bin .. "/sh", "-c", workspace._SH_MANIFEST, "sh", dir, "git", "" },
        env = { PATH = bin }, env_mode = "extend" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      local tools_line, rest = r.stdout:match("^(tools[^\n]*)\n(.*)$")
      assert.are.equal(py, tools_line:find("python3", 1, true) ~= nil, tools_line)
      local raw = codec.base64_decode((rest:gsub("%s", "")))
      assert.is_truthy(raw:find("SUMS", 1, true))
      out[#out + 1] = raw
    end
    W.sh('rm -rf -- "$1"', dir)
    assert.are.equal(out[1], out[2])
  end)

  -- A python3 first on PATH may be a version manager's shim (pyenv's: a chain of bash scripts,
  -- ~300 ms a start against ~25 ms): python3 on PATH says python is there, /usr/bin/python3 runs.
  it("runs the system python3, not a python3 first on PATH", function()
    if not io.open("/usr/bin/python3") then pending("no /usr/bin/python3 here") return end
    local dir = W.mktemp()
    W.make_tree(dir)
    local toolbin = require("support.toolbin")
    local tools = { "xargs" }
    for _, t in ipairs(toolbin.TOOLS) do tools[#tools + 1] = t end
    local bin = toolbin.make({ tools = tools, wrappers = { python3 = 'echo python3 >> "LOG"\nexec "REAL" "$@"' } })
    local r = assert(proc.run({ argv = { bin .. "/sh", "-c", workspace._SH_MANIFEST, "sh", dir, "git", "" },
      env = { PATH = bin }, env_mode = "extend" }))
    assert.are.equal(0, r.exit_code, r.stderr)
    assert.is_truthy(r.stdout:match("^tools[^\n]* python3"), r.stdout:sub(1, 80))
    local raw = codec.base64_decode((r.stdout:match("^tools[^\n]*\n(.*)$"):gsub("%s", "")))
    assert.is_truthy(raw:find("  ./a.txt\0", 1, true))
    local log = io.open(bin .. "/log")
    assert.is_nil(log and log:read("a"):find("python3", 1, true))
    if log then log:close() end
    W.sh('rm -rf -- "$1"', dir)
  end)

  it("for a pull, leaves out unhashed what the tree's .gitignore files ignore where git is there", function()
    local dir = W.mktemp()
    W.make_tree(dir)
    W.sh('cd "$1" && mkdir d && printf "x*\\n" > d/.gitignore && echo 1 > d/x1 && echo 2 > d/y2', dir)
    local toolbin = require("support.toolbin")
    local tools = { "xargs", "mktemp", "sort", "comm", "git" }
    for _, t in ipairs(toolbin.TOOLS) do tools[#tools + 1] = t end
    for _, with_git in ipairs({ true, false }) do
      local bin = toolbin.make({ tools = tools, without = { with_git and "none" or "git" } })
      local r = assert(proc.run({ argv = { bin .. "/sh", "-c", workspace._SH_MANIFEST, "sh", dir, "ignored", "" },
        env = { PATH = bin }, env_mode = "extend" }))
      assert.are.equal(0, r.exit_code, r.stderr)
      local raw = codec.base64_decode((r.stdout:match("^tools[^\n]*\n(.*)$"):gsub("%s", "")))
      local listing, sums = raw:match("^(.-)SUMS%z(.*)$")
      for _, f in ipairs({ "./d/y2", "./a.txt" }) do
        assert.is_truthy(listing:find(" " .. f .. "\0", 1, true), f)
        assert.is_truthy(sums:find("  " .. f .. "\0", 1, true), f)
      end
      for _, f in ipairs({ "./d/x1", "./node_modules/pkg/index.js", "./build.log" }) do
        assert.are.equal(not with_git, listing:find(" " .. f .. "\0", 1, true) ~= nil, f)
        assert.are.equal(not with_git, sums:find("  " .. f .. "\0", 1, true) ~= nil, f)
      end
      -- the rules themselves, for galley to read here
      assert.is_truthy(listing:find("i 0 0 ./d/.gitignore\0" .. codec.base64_encode("x*\n") .. "\0", 1, true))
      assert.is_truthy(listing:find("i 0 0 ./.gitignore\0", 1, true))
    end
    W.sh('rm -rf -- "$1"', dir)
  end)
end)
