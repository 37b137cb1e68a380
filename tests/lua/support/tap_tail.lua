-- busted output for ctest (`galley test --output=tests/lua/support/tap_tail.lua SPEC`): busted's
-- TAP, and after its plan the names and first lines of what failed again, so that a log that
-- keeps only its head and tail (CI's summary of a long spec) still says which test failed.
return function(options)
  local busted = require("busted")
  local handler = require("busted.outputHandlers.TAP")(options)
  busted.subscribe({ "suite", "end" }, function()
    local bad = {}
    for _, kind in ipairs({ "failures", "errors" }) do
      for _, t in ipairs(handler[kind] or {}) do bad[#bad + 1] = t end
    end
    if #bad > 0 then
      io.write(("# %d failed (repeated from above):\n"):format(#bad))
      for _, t in ipairs(bad) do
        local message = t.message
        if type(message) ~= "string" then message = require("pl.pretty").write(message) or tostring(message) end
        local where = t.element and t.element.trace and t.element.trace.short_src
        io.write(("# not ok - %s%s\n#   %s\n"):format(t.name or "?",
          where and (" (" .. where .. " @ " .. tostring(t.element.trace.currentline) .. ")") or "",
          message:gsub("%s*\n%s*", " "):sub(1, 400)))
      end
      io.flush()
    end
    return nil, true
  end)
  return handler
end
