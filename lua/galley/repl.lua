--- galley.repl: the interactive prompt (`galley repl`).
-- Runs each input in one recipe environment: bare expressions print their values, `=expr`
-- works, incomplete input continues on the next line.
local errors = require("galley.errors")
local runner = require("galley.runner")
local runtime = require("galley.core.runtime")

local M = {}


--- Compiles one input: `return <text>` first (so expressions print), then the text itself.
-- Returns chunk, or nil + "incomplete" when more lines are needed, or nil + error message.
---@param text string
---@param env table
function M.compile(text, env)
  local src = text:gsub("^=", "return ")
  local chunk = load("return " .. src, "=stdin", "t", env)
  if chunk then return chunk end
  local err
  chunk, err = load(src, "=stdin", "t", env)
  if chunk then return chunk end
  if err:match("<eof>$") then return nil, "incomplete" end
  return nil, err
end

--- Runs the REPL until end of input; returns an exit code.
---@param opts? {input?: file*, output?: file*}
---@return integer
function M.run(opts)
  opts = opts or {}
  local env = runner.new_env()
  local tty = runtime.isatty(0) and not opts.input
  local line = tty and require("galley.core.line") or nil
  local input = opts.input or io.stdin
  local out = opts.output or io.stdout
  local function readline(prompt)
    if tty then return line.readline(prompt) end
    return input:read("l")
  end
  if tty then out:write(("galley %s (Lua %s) - Ctrl-D to leave\n"):format(
    runtime.versions().galley, _VERSION:match("%d.%d"))) end
  local buffer
  while true do
    local text = readline(buffer and ">> " or "> ")
    if not text then break end
    buffer = buffer and (buffer .. "\n" .. text) or text
    local chunk, err = M.compile(buffer, env)
    if err == "incomplete" then goto continue end
    if tty and buffer:match("%S") then line.add_history(buffer) end
    if not chunk then
      io.stderr:write(err, "\n")
    else
      local res = table.pack(xpcall(chunk, function(e)
        return errors.is(e) and errors.format(e) or debug.traceback(tostring(e), 2)
      end))
      if not res[1] then
        io.stderr:write(tostring(res[2]), "\n")
        runtime.clear_signal()
      elseif res.n > 1 then
        local parts = {}
        for i = 2, res.n do parts[#parts + 1] = tostring(res[i]) end
        out:write(table.concat(parts, "\t"), "\n")
        rawset(env, "_", res[2])
      end
    end
    buffer = nil
    ::continue::
  end
  if tty then out:write("\n") end
  return 0
end

return M
