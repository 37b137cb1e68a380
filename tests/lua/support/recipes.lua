--- Helpers for the recipe specs: temporary directories, and running the galley binary with a
-- clean environment (nothing of MORPH_*, CLAUDE_* or HOME from the caller) so that secrets
-- travel only in execve's envp, never in argv.
local proc = require("galley.core.proc")
local support = require("support")

local M = {}

--- A fresh temporary directory named after `tag`.
---@param tag string
---@return string path
function M.mktemp_dir(tag)
  local r = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-" .. tag .. ".XXXXXX" }, timeout_ms = 10000 }))
  return (r.stdout:gsub("%s+$", ""))
end

--- A function `galley(args, env)` → exit code, stdout, stderr. `dirs()` returns the state dir
-- and home to use at call time (specs make new ones per test).
---@param dirs fun(): string, string
---@return fun(args: string[], env?: table<string,string>): integer, string, string
function M.runner(dirs)
  return function(args, env)
    local state, home = dirs()
    local e = { PATH = os.getenv("PATH"), LANG = "C.UTF-8", GALLEY_LOG = "error", HOME = home,
      GALLEY_STATE_DIR = state }
    for k, v in pairs(env or {}) do e[k] = v end
    local argv = { support.bin }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = assert(proc.run({ argv = argv, env = e, env_mode = "replace", timeout_ms = 180000 }))
    return r.exit_code, r.stdout, r.stderr
  end
end

return M
