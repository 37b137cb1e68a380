--- Helpers shared by the specs (on busted's lpath via .busted: `require("support")`).
local M = {}

--- Absolute path of the galley binary under test (ctest sets GALLEY_BIN).
M.bin = os.getenv("GALLEY_BIN") or "build/galley"
M.source_dir = os.getenv("GALLEY_SOURCE_DIR") or "."

--- POSIX single-quoting for the few places a spec builds a shell line itself.
function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs the galley binary with a shell redirect; returns exit code, stdout, stderr.
---@param args string   already-quoted argument string
---@param stdin? string
---@param env? table<string,string> extra environment variables
---@param cwd? string directory to run in
function M.galley(args, stdin, env, cwd)
  local tmp = M.tmpname()
  local errf = M.tmpname()
  local inf
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. M.q(v) .. " " end
  local bin = M.bin:sub(1, 1) == "/" and M.bin or (M.source_dir .. "/" .. M.bin)
  local cmd = prefix .. M.q(bin) .. " " .. args .. " >" .. tmp .. " 2>" .. errf
  if cwd then cmd = "cd " .. M.q(cwd) .. " && " .. cmd end
  if stdin then
    inf = M.tmpname()
    local f = assert(io.open(inf, "wb"))
    f:write(stdin)
    f:close()
    cmd = cmd .. " <" .. inf
  else
    cmd = cmd .. " </dev/null"
  end
  local _, _, code = os.execute(cmd)
  local function slurp(p)
    local f = io.open(p, "rb")
    local s = f and f:read("a") or ""
    if f then f:close() end
    os.remove(p)
    return s
  end
  if inf then os.remove(inf) end
  return code, slurp(tmp), slurp(errf)
end

-- One private directory per spec process for temporary files, removed when the Lua state closes
-- (busted ends with os.exit(code, true) or returns to galley's lua_close): os.tmpname() would
-- leave its /tmp/lua_XXXXXX files behind.
local tmp_root, tmp_count, tmp_guard = nil, 0, nil

--- A fresh temporary path (the empty file is created, as os.tmpname does) in this process's
--- private directory; `suffix` is appended ("" by default).
---@param suffix? string
function M.tmpname(suffix)
  if not tmp_root then
    local fs = require("galley.core.fs")
    tmp_root = assert(fs.mkdtemp("/tmp/galley-spec-XXXXXX"))
    tmp_guard = setmetatable({}, { __gc = function() fs.remove_tree(tmp_root) end })
    M._tmp_guard = tmp_guard
  end
  tmp_count = tmp_count + 1
  local path = ("%s/t%d%s"):format(tmp_root, tmp_count, suffix or "")
  assert(io.open(path, "wb")):close()
  return path
end

--- busted runs only the last function a test gives `finally`: `local cleanup =
--- support.cleanups(finally)` registers one that runs every function later given to
--- `cleanup(fn)`, the last added first, all of them even when one raises (the first error is
--- raised after).
---@param finally_fn fun(fn: function) the test's `finally`
---@return fun(fn: function) cleanup
function M.cleanups(finally_fn)
  local fns = {}
  finally_fn(function()
    local first
    for i = #fns, 1, -1 do
      local ok, err = pcall(fns[i])
      if not ok and first == nil then first = err end
    end
    if first ~= nil then error(first, 0) end
  end)
  return function(fn) fns[#fns + 1] = fn end
end

--- A local file's bytes (the spec fails when it cannot be read).
---@param path string
---@return string
function M.slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- Writes bytes to a local file.
---@param path string
---@param s string
function M.spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

--- Writes `text` to a fresh temporary .lua file and returns its path.
function M.script(text)
  local path = M.tmpname(".lua")
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

return M
