-- Mistakes in the specs themselves that no spec's own run shows.
local support = require("support")
local proc = require("galley.core.proc")

-- Every spec file and shared suite below tests/lua.
local function spec_files()
  local r = assert(proc.run({ argv = { "find", support.source_dir .. "/tests/lua", "-name", "*.lua", "-type", "f" } }))
  assert.are.equal(0, r.exit_code, r.stderr)
  local files = {}
  for path in r.stdout:gmatch("[^\n]+") do files[#files + 1] = path end
  table.sort(files)
  return files
end

-- The tests of a file that call `finally` more than once: {"path:line", ...}. A test starts at a
-- line `<indent>it(` (or logic_it, variant) and ends at the first line `<indent>end)` after it;
-- strings and comments do not count.
local function double_finally(path)
  local lines = {}
  for line in io.lines(path) do lines[#lines + 1] = line end
  local found = {}
  for i, line in ipairs(lines) do
    local indent = line:match("^(%s*)[%w_]*it%(") or line:match("^(%s*)variant%(")
    if indent then
      local n = 0
      for j = i + 1, #lines do
        local l = lines[j]
        if l:match("^" .. indent .. "end%)") then break end
        local code = l:gsub('"[^"]*"', '""'):gsub("'[^']*'", "''"):gsub("%-%-.*$", "")
        if code:find("%f[%w_]finally%(") then n = n + 1 end
      end
      if n > 1 then found[#found + 1] = ("%s:%d"):format(path, i) end
    end
  end
  return found
end

describe("the specs", function()
  it("give finally one function per test (busted runs only the last: support.cleanups runs them all)", function()
    local sample = support.tmpname(".lua")
    support.spit(sample, table.concat({
      'it("a", function()', "  finally(function() end)", "  finally(function() end)", "end)",
      'it("b", function()', "  finally(function() end)", "end)", "" }, "\n"))
    assert.are.same({ sample .. ":1" }, double_finally(sample)) -- the check sees one
    local found = {}
    for _, path in ipairs(spec_files()) do
      for _, at in ipairs(double_finally(path)) do found[#found + 1] = at end
    end
    assert.are.same({}, found)
  end)
end)
