--- support.cli: the two places the instance commands are specified on — the local provider and
-- `galley emulate` (the Morph provider) — each with its own temporary HOME and state directory.
--
--   local cli = require("support.cli")
--   for _, target in ipairs(cli.TARGETS) do
--     describe("... on " .. target, function()
--       local t
--       setup(function() t = cli.start(target) end)      -- one emulator per spec file and target
--       teardown(function() t:stop() end)
--       it("...", function() local code, out, err = t:galley("ls --json") end)
--     end)
--   end
local support = require("support")
local q = support.q

local M = {}

M.TARGETS = { "local", "emulator" }

local Target = {}
Target.__index = Target

--- Starts a target: a temporary HOME/GALLEY_STATE_DIR, plus an emulator for "emulator".
---@param name "local"|"emulator"
function M.start(name)
  local dir = support.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir .. "/home") .. " " .. q(dir .. "/state")))
  local t = setmetatable({ name = name, dir = dir }, Target)
  t.env = { HOME = dir .. "/home", GALLEY_STATE_DIR = dir .. "/state", MORPH_API_KEY = "", MORPH_BASE_URL = "",
    GALLEY_LOG = "error" }
  if name == "emulator" then
    t.em = require("support.emulator").start({ boot_delay_ms = 20 })
    t.env.MORPH_API_KEY, t.env.MORPH_BASE_URL = t.em.api_key, t.em.base_url
    t.snapshot = t.em.SNAPSHOT or "snapshot_galleydev"
    t.provider_name = "morph"
  else
    t.snapshot = "snapshot_empty"
    t.provider_name = "local"
  end
  return t
end

--- Runs `galley ARGS` with the target's environment: exit code, stdout, stderr.
---@param args string already quoted
---@param stdin? string
function Target:galley(args, stdin)
  return support.galley(args, stdin, self.env)
end

--- A provider object for the target, made inside the spec process (to check what the CLI did).
function Target:provider()
  if self.name == "emulator" then
    return require("galley.providers.morph").new({ api_key = self.em.api_key, base_url = self.em.base_url })
  end
  return require("galley.providers.local").new({ state_dir = self.env.GALLEY_STATE_DIR })
end

--- Boots an instance through `galley boot` and returns its id.
function Target:boot(extra)
  local code, out, err = self:galley("boot " .. q(self.snapshot) .. " --ttl 10m " .. (extra or ""))
  assert(code == 0, err)
  return (out:gsub("%s+$", ""))
end

function Target:stop()
  if self.em then
    self.em:stop()
    self.em = nil
  end
  if self.dir then
    -- local instances: stop every one left (their processes die with them), then remove the files
    local code, out = support.galley("ls --all --json --provider local", nil, self.env)
    if code == 0 then
      for id in out:gmatch('"id":"([%w_%-%.]+)"') do
        support.galley("stop --provider local " .. q(id), nil, self.env)
      end
    end
    os.execute("rm -rf " .. q(self.dir))
    self.dir = nil
  end
end

return M
