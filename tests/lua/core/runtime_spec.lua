-- galley.core.runtime: what the other specs do not cover.
local runtime = require("galley.core.runtime")

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

describe("galley.core.runtime", function()
  it("trim_memory gives the pages of freed heap memory back to the system", function()
    -- 40 MB of small strings on the heap, then a survivor above them: freeing them cannot
    -- shrink the heap from its top, so only malloc_trim returns their pages.
    local junk = {}
    for i = 1, 200000 do junk[i] = ("%99d"):format(i):rep(2) end
    local survivor = { ("x"):rep(100), #junk }
    junk = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    local before = rss_kib()
    runtime.trim_memory()
    local after = rss_kib()
    assert.is_true(before - after > 20 * 1024, ("RSS %d KiB -> %d KiB"):format(before, after))
    assert.are.equal(100, #survivor[1])
  end)
end)
