--- support.fake_claude: puts the stand-in `claude` (tests/lua/fixtures/fake-claude) on an
-- instance and reads back what it recorded, through a provider's files and exec only.
--
--   local fake = require("support.fake_claude")
--   local f = fake.install(provider, inst.id)   -- {home, bin, record_dir, env = {FAKE_CLAUDE_DIR = ...}}
--   ... run a claude agent's ProcessSpec with input.env = f.env ...
--   local r = fake.record(provider, inst.id, f)
--   -- r.argv (array), r.stdin, r.cwd, r.env (NAME -> value, or false when unset), r.system_prompt_file
--
-- install writes the fake as ~/bin/claude (mode 755) and a ~/.bash_profile that puts ~/bin first
-- on PATH, so a login shell (`bash -lc`, as PM2 runs the payload) finds `claude` by name, the
-- way the native installer's ~/.local/bin is found on a real machine.
local codec = require("galley.core.codec")
local support = require("support")

local M = {}

--- The fixture on this machine.
M.FIXTURE = support.source_dir .. "/tests/lua/fixtures/fake-claude"


local function read_local(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end


local function exec_sh(provider, id, script, ...)
  return provider.exec(id, { kind = "argv", command = "sh", args = { "-c", script, "sh", ... } })
end


--- Installs the fake claude on an instance.
---@param provider table
---@param id string instance id
---@return {home: string, bin: string, record_dir: string, env: table<string, string>}
function M.install(provider, id)
  local home = exec_sh(provider, id, 'printf %s "$HOME"').stdout
  assert(home:sub(1, 1) == "/", "the instance has no absolute $HOME")
  local w = provider.files.write_file_atomic
  w(id, "~/bin/claude", read_local(M.FIXTURE), { mode = "755", create_dirs = true })
  w(id, "~/.bash_profile", 'PATH="$HOME/bin:$PATH"\n', { mode = "644", create_dirs = true })
  w(id, "~/fake-claude/.keep", "", { mode = "644", create_dirs = true })
  w(id, "~/work/.keep", "", { mode = "644", create_dirs = true })
  local record_dir = home .. "/fake-claude"
  return { home = home, bin = home .. "/bin/claude", record_dir = record_dir, cwd = home .. "/work",
    env = { FAKE_CLAUDE_DIR = record_dir } }
end


--- Removes what the last run recorded.
---@param provider table
---@param id string
---@param f table from install
function M.reset(provider, id, f)
  exec_sh(provider, id, 'rm -f -- "$1"/argv "$1"/stdin "$1"/cwd "$1"/env "$1"/system_prompt_file', f.record_dir)
end


--- What the fake recorded in its last run (nil fields when it did not run).
---@param provider table
---@param id string
---@param f table from install
---@return {argv: string[]|nil, stdin: string|nil, cwd: string|nil, env: table|nil, system_prompt_file: string|nil}
function M.record(provider, id, f)
  -- base64 on the way back: an exec API may carry output as text (Morph's JSON does).
  local function get(name)
    local r = exec_sh(provider, id, 'base64 -w0 -- "$1"', f.record_dir .. "/" .. name)
    return r.exit_code == 0 and assert(codec.base64_decode(r.stdout)) or nil
  end
  local out = { stdin = get("stdin"), system_prompt_file = get("system_prompt_file") }
  local argv = get("argv")
  if argv then
    out.argv = {}
    for a in argv:gmatch("([^%z]*)%z") do out.argv[#out.argv + 1] = a end
  end
  local cwd = get("cwd")
  out.cwd = cwd and cwd:gsub("\n$", "")
  local env = get("env")
  if env then
    out.env = {}
    for line in env:gmatch("[^\n]+") do
      local name, value = line:match("^([%w_]+)=(.*)$")
      if name then out.env[name] = value else out.env[line:match("^[%w_]+")] = false end
    end
  end
  return out
end


return M
