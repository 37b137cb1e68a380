--- support.toolbin: a PATH of its own for a spec, to run remote programs with some tools missing
--- or replaced.
--
--   local bin = toolbin.make({ without = { "dd" }, python = true, wrappers = { openssl = "exit 1" } })
--   proc.run({ argv = ..., env = { PATH = bin }, env_mode = "extend" })
--
-- `tools` (default toolbin.TOOLS) are symlinked from this machine's PATH, minus `without`;
-- python3 when asked (the system /usr/bin/python3: a version manager's shim needs a PATH of its
-- own); `wrappers` maps a name to a sh body, where REAL is the real tool and LOG the file
-- `bin .. "/log"` the wrappers may append to. The directory is removed with the spec's other
-- temporary files (support.tmpname).
local proc = require("galley.core.proc")
local support = require("support")

local M = {}

M.TOOLS = { "sh", "base64", "sha256sum", "wc", "mkdir", "mv", "rm", "chmod", "chown", "sync", "cat", "tail", "tee",
  "head", "cut", "find", "cp", "ls", "stat", "dd" }

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... } }))
  assert(r.exit_code == 0, r.stderr)
end

---@param o {tools?: string[], without?: string[], python?: boolean, wrappers?: table<string, string>}
---@return string bin the directory
function M.make(o)
  local bin = support.tmpname()
  sh('rm -f "$1" && mkdir "$1"', bin)
  local skip = {}
  for _, t in ipairs(o.without or {}) do skip[t] = true end
  for _, t in ipairs(o.tools or M.TOOLS) do
    local path = proc.which(t)
    if path and not skip[t] and not (o.wrappers or {})[t] then sh('ln -s "$1" "$2"', path, bin .. "/" .. t) end
  end
  if o.python then
    local system = io.open("/usr/bin/python3")
    if system then system:close() end
    sh('ln -s "$1" "$2"', system and "/usr/bin/python3" or proc.which("python3"), bin .. "/python3")
  end
  for name, body in pairs(o.wrappers or {}) do
    support.spit(bin .. "/" .. name, "#!/bin/sh\n" .. body:gsub("REAL", proc.which(name) or "false")
      :gsub("LOG", bin .. "/log") .. "\n")
    sh('chmod 755 "$1"', bin .. "/" .. name)
  end
  return bin
end

return M
