-- Every ```lua block of the user documentation (docs/*.md, docs/api/*.md) runs as a recipe,
-- `galley run <block>`, and must exit 0 leaving no instance behind. A block whose info string
-- says `norun` is skipped (fragments, test-only helpers); one that says `emulator` runs with
-- MORPH_API_KEY/MORPH_BASE_URL pointing at a `galley emulate` started for this spec.
local h = require("examples.helpers")
local fs = require("galley.core.fs")
local emulator = require("support.emulator")

local DIRS = { "docs", "docs/api" }

--- {file, line, info, code} for each ```lua block of a markdown file.
local function blocks(rel)
  local out, cur = {}, nil
  local n = 0
  for line in (h.read(h.source(rel)) .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if cur then
      if line:match("^```%s*$") then
        out[#out + 1] = cur
        cur = nil
      else
        cur.lines[#cur.lines + 1] = line
      end
    else
      local info = line:match("^```(lua.*)$")
      if info then cur = { file = rel, line = n, info = info, lines = {} } end
    end
  end
  assert(cur == nil, rel .. ": unterminated code block")
  return out
end

local all = {}
for _, dir in ipairs(DIRS) do
  for _, name in ipairs(assert(fs.list(h.source(dir)))) do
    if name:match("%.md$") then
      for _, b in ipairs(blocks(dir .. "/" .. name)) do all[#all + 1] = b end
    end
  end
end

describe("documentation snippets #examples #docs", function()
  local sb, em
  setup(function() sb = h.sandbox() end)
  teardown(function()
    if em then em:stop() end
    sb:cleanup()
  end)

  it("finds the snippets", function()
    local runnable = 0
    for _, b in ipairs(all) do
      if not b.info:find("norun", 1, true) then runnable = runnable + 1 end
    end
    assert.is_true(runnable >= 20, "only " .. runnable .. " runnable snippets")
  end)

  for _, b in ipairs(all) do
    if not b.info:find("norun", 1, true) then
      it(("%s:%d runs"):format(b.file, b.line), function()
        local env
        if b.info:find("emulator", 1, true) then
          em = em or emulator.start({ boot_delay_ms = 20 })
          env = { MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url }
        end
        local path = sb.state_dir .. "/snippet.lua"
        local f = assert(io.open(path, "wb"))
        f:write(table.concat(b.lines, "\n"), "\n")
        f:close()
        local r = sb:galley({ "run", path }, { env = env })
        assert(r.exit_code == 0, ("%s:%d exited %d\nstdout:\n%s\nstderr:\n%s"):format(b.file, b.line, r.exit_code,
          r.stdout, r.stderr))
        assert.are.same({}, sb:leftovers())
        if em then assert.are.same({}, em:state().instances) end
      end)
    end
  end
end)
