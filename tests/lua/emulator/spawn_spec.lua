-- galley.emulator.spawn outside a run: a script's emulator child, its instances and its state
-- directory never outlive the galley that started them, even when the script fails.
local support = require("support")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

-- Processes whose command line mentions `path` (the [/] keeps the pgrep's own shell out).
local function users_of(path)
  local r = assert(proc.run({ argv = { "sh", "-c", 'pgrep -f -- "[/]$1" || true', "sh", path:sub(2) } }))
  return (r.stdout:gsub("%s+$", ""))
end

describe("galley.emulator.spawn #emulator", function()
  local state

  before_each(function()
    state = support.tmpname(".state")
    os.remove(state)
    assert(fs.mkdir_p(state))
  end)

  after_each(function() fs.remove_tree(state) end)

  for _, case in ipairs({ { "fails", 'error("the script fails")', false }, { "ends", "", true } }) do
    it("stops a script's emulator and removes its state when the script " .. case[1], function()
      local script = support.script([[
local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0 })
local p = require("galley.providers.morph").new({ api_key = emu.api_key, base_url = emu.base_url })
p.instances.boot("snapshot_galleydev")
io.stdout:write(emu.state_dir, "\n")
io.stdout:flush()
]] .. case[2] .. "\n")
      local r = assert(proc.run({ argv = { support.bin, script }, env = { GALLEY_STATE_DIR = state,
        GALLEY_LOG = "error" }, env_mode = "extend", timeout_ms = 60000 }))
      assert.are.equal(case[3], r.exit_code == 0, r.stderr)
      local dir = r.stdout:match("^(/%S+)\n")
      assert.truthy(dir, r.stdout)
      assert.is_nil(fs.stat(dir))
      -- the emulator at once; the instance's holder within its 5 s poll
      local deadline = runtime.now_ms() + 15000
      while users_of(dir) ~= "" and runtime.now_ms() < deadline do runtime.sleep_ms(200) end
      assert.are.equal("", users_of(dir))
    end)
  end
end)
