--- examples.helpers: running examples/ and doc snippets through the real galley binary, each
-- with its own local-provider state directory, and proving nothing was left behind.
--
--   local h = require("examples.helpers")
--   local sb = h.sandbox()                       -- a fresh GALLEY_STATE_DIR
--   local r = sb:galley({"run", h.example("fan-out.lua")}, {stdin = "..."})
--   -- r.exit_code, r.stdout, r.stderr
--   assert.are.same({}, sb:leftovers())          -- instances still in that state dir
--   sb:cleanup()                                  -- terminate anything left, remove the dir
--
-- The binary runs with MORPH_API_KEY and MORPH_BASE_URL emptied (so the examples pick the local
-- provider) unless the caller's env table sets them, and with GALLEY_LOG=error.
local proc = require("galley.core.proc")
local support = require("support")

local M = {}

local TIMEOUT_MS = 300000

--- Absolute path of a file under examples/.
---@param name string
---@return string
function M.example(name)
  return support.source_dir .. "/examples/" .. name
end

--- Absolute path of a file in the source tree.
---@param rel string
---@return string
function M.source(rel)
  return support.source_dir .. "/" .. rel
end

--- Reads a whole file (error when missing).
---@param path string
---@return string
M.read = support.slurp

--- Lines of a text, without the empty one after a final newline.
---@param s string
---@return string[]
function M.lines(s)
  local out = {}
  for line in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = line end
  if out[#out] == "" then out[#out] = nil end
  return out
end

--- A fresh temporary directory.
---@param tag string
---@return string
function M.tempdir(tag)
  local r = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-" .. tag .. "-XXXXXX" }, timeout_ms = 10000 }))
  assert(r.exit_code == 0, r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

local Sandbox = {}
Sandbox.__index = Sandbox

--- A state directory for the local provider, used by every command run through it.
---@return table
function M.sandbox()
  return setmetatable({ state_dir = M.tempdir("examples") }, Sandbox)
end

--- Runs the galley binary with this state dir: {exit_code, stdout, stderr}.
---@param args string[]
---@param opts? {stdin?: string, env?: table<string, string>}
---@return table
function Sandbox:galley(args, opts)
  opts = opts or {}
  local env = { GALLEY_STATE_DIR = self.state_dir, MORPH_API_KEY = "", MORPH_BASE_URL = "", GALLEY_LOG = "error",
    NO_COLOR = "1" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local argv = { support.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r, err = proc.run({ argv = argv, env = env, env_mode = "extend", stdin = opts.stdin or "",
    timeout_ms = TIMEOUT_MS, cwd = support.source_dir })
  assert(r, tostring(err))
  assert(not r.timed_out, "galley " .. table.concat(args, " ") .. " timed out")
  return r
end

--- The local provider on this state dir.
---@return table
function Sandbox:provider()
  self.p = self.p or require("galley.providers.local").new({ state_dir = self.state_dir,
    log = require("galley.log").silent() })
  return self.p
end

--- Ids of the instances that still exist in this state dir.
---@return string[]
function Sandbox:leftovers()
  local ids = {}
  for _, inst in ipairs(self:provider().instances.list()) do ids[#ids + 1] = inst.id end
  return ids
end

--- Terminates whatever is left and removes the state dir. Safe to call twice.
function Sandbox:cleanup()
  if not self.state_dir then return end
  local ok, p = pcall(self.provider, self)
  if ok then
    for _, inst in ipairs(p.instances.list()) do pcall(p.instances.terminate, inst.id) end
  end
  proc.run({ argv = { "rm", "-rf", "--", self.state_dir }, timeout_ms = 60000 })
  self.state_dir = nil
end

--- Asserts that every pattern matches `text`, in this order (plain text).
---@param text string
---@param list string[]
function M.in_order(text, list)
  local pos = 1
  for _, s in ipairs(list) do
    local i, j = text:find(s, pos, true)
    assert(i, ("expected %q after position %d in:\n%s"):format(s, pos, text))
    pos = j + 1
  end
end

return M
