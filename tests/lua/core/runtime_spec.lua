-- galley.core.runtime: what the other specs do not cover.
local runtime = require("galley.core.runtime")

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

-- AddressSanitizer replaces malloc: its allocator keeps freed memory in quarantine, and
-- malloc_trim has nothing to act on.
local function under_asan()
  local f = assert(io.open("/proc/self/maps"))
  local maps = f:read("a")
  f:close()
  return maps:find("libasan", 1, true) ~= nil or os.getenv("ASAN_OPTIONS") ~= nil
end

describe("galley.core.runtime", function()
  it("trim_memory gives the pages of freed heap memory back to the system", function()
    if under_asan() then
      runtime.trim_memory() -- still callable
      pending("under AddressSanitizer: its allocator, not glibc's, holds freed memory")
      return
    end
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
