-- The REPL's `morph` global: a Morph provider built from MORPH_API_KEY / MORPH_BASE_URL, here
-- pointed at `galley emulate`; instances print as one readable line each.
local support = require("support")
local emulator = require("support.emulator")

describe("galley repl with morph from the environment #repl", function()
  it("lists and boots through `morph`, printing instances one per line", function()
    local em = emulator.start({ boot_delay_ms = 0 })
    finally(function() em:stop() end)
    local input = table.concat({
      "#morph.instances.list()",
      "inst = morph.instances.boot('snapshot_galleydev', { metadata = { who = 'repl' } })",
      "morph.instances.list()",
      "morph.instances.terminate(inst.id)",
      "#morph.instances.list()",
    }, "\n") .. "\n"
    local code, out, err = support.galley("repl", input, {
      MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url, GALLEY_STATE_DIR = support.tmpname() .. ".d",
    })
    assert.are.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal("0", lines[1])
    local line
    for _, l in ipairs(lines) do
      if l:find("morphvm_", 1, true) then line = l end
    end
    assert.matches("^%s*instance%s+morphvm_%w+%s+ready%s+from snapshot_galleydev", line or "")
    assert.truthy(out:find("who=repl", 1, true), out)
    assert.are.equal("0", lines[#lines])
  end)
end)
