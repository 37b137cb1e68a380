--- galley.tap: Test Anything Protocol output for smoke recipes.
--   local tap = require("galley.tap").new({ { "boot", "boot an instance" }, { "exec", "run echo" } })
--   tap.plan()                                   -- "1..2"
--   tap.check("boot", nil, function() ... end)   -- ok 1 - boot an instance
--   tap.check("exec", { "boot" }, function() return false, "why" end)
--   if tap.failures() > 0 then recipe.exit(1) end
-- A check function returns true/nil (ok, or a string shown in parentheses), false + why
-- (not ok, with a diagnostic), or "skip" + reason. A raised error is a failure whose diagnostic
-- is "CODE: message" plus the hint. A check whose `needs` did not pass is skipped.
local M = {}

---@class galley.Tap
---@field plan fun()
---@field check fun(key: string, needs: string[]|nil, fn: fun(): any, string?)
---@field diag fun(text: any)
---@field failures fun(): integer
---@field passed fun(key: string): boolean|string|nil true, "skipped" or nil

--- A TAP writer for a fixed, ordered list of checks `{ {key, description}, ... }`.
---@param checks {[1]: string, [2]: string}[]
---@param out? file* default io.stdout
---@return galley.Tap
function M.new(checks, out)
  out = out or io.stdout
  local passed, failures, number = {}, 0, 0
  local t = {}

  local function write(s)
    out:write(s)
    out:flush()
  end

  function t.plan() write(("1..%d\n"):format(#checks)) end

  function t.diag(text)
    for line in (tostring(text) .. "\n"):gmatch("(.-)\n") do out:write("# ", line, "\n") end
    out:flush()
  end

  local function describe(err)
    if type(err) ~= "table" then return tostring(err) end
    local text = tostring(err.code or "ERROR") .. ": " .. tostring(err.message or err)
    if err.hint then text = text .. "\nhint: " .. tostring(err.hint) end
    return text
  end

  function t.check(key, needs, fn)
    number = number + 1
    local desc = assert(checks[number], "more checks run than planned")[2]
    assert(checks[number][1] == key, ("check %d is '%s', not '%s'"):format(number, checks[number][1], key))
    for _, n in ipairs(needs or {}) do
      if not passed[n] then
        write(("ok %d - %s # SKIP needs '%s', which did not pass\n"):format(number, desc, n))
        return
      end
    end
    local ok, res, why = pcall(fn)
    if ok and res == "skip" then
      write(("ok %d - %s # SKIP %s\n"):format(number, desc, why))
      passed[key] = "skipped"
    elseif ok and res ~= false then
      write(("ok %d - %s%s\n"):format(number, desc, type(res) == "string" and (" (" .. res .. ")") or ""))
      passed[key] = true
    else
      failures = failures + 1
      write(("not ok %d - %s\n"):format(number, desc))
      t.diag(ok and (why or "check failed") or describe(res))
    end
  end

  function t.failures() return failures end

  function t.passed(key) return passed[key] end

  return t
end

return M
