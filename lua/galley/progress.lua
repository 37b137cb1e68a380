--- galley.progress: what people see on stderr while a recipe works.
-- On a terminal a spinner with elapsed time runs during each step (drawn by a C thread, so it
-- moves during blocking calls); when stderr is not a terminal, one plain line per step. Nothing
-- at all with -q or --json. Colour only on a terminal and never with NO_COLOR.
local runtime = require("galley.core.runtime")
local term = require("galley.core.term")

local M = {}

local function opts() return runtime.options() end

--- Whether progress output is shown at all (not -q, not --json).
---@return boolean
function M.enabled()
  local o = opts()
  return (o.quiet or 0) == 0 and (o.json or 0) == 0
end

--- Whether --json is on: galley's own messages on stderr are then JSON lines.
---@return boolean
function M.json()
  return (opts().json or 0) > 0
end

local LEVELS = { info = 1, warn = 2, error = 3 }

--- A message of galley's own on stderr, by level: "info" (a notice: not with -q), "warn" (a
-- warning that is not an error: not with -q) or "error" (always). `text` is the whole human line
-- ("galley: warning: ..."); under --json the line is one JSON object instead:
-- {"ts", "level", "msg", ...fields} with `msg` = fields.msg or text. Secrets are redacted.
---@param level "info"|"warn"|"error"
---@param text string
---@param fields? table extra JSON fields (code, hint, id, ...)
function M.message(level, text, fields)
  assert(LEVELS[level], "progress.message: level must be info, warn or error")
  if level ~= "error" and (opts().quiet or 0) > 0 then return end
  local secrets = require("galley.secrets")
  if M.json() then
    local rec = { ts = os.date("!%Y-%m-%dT%H:%M:%SZ"), level = level }
    for k, v in pairs(fields or {}) do rec[k] = v end
    rec.msg = rec.msg or text
    rec = secrets.redact(rec)
    local ok, line = pcall(require("cjson").encode, rec)
    if not ok then line = require("cjson").encode({ level = level, msg = secrets.redact_text(text) }) end
    pcall(term.write_err, line:gsub("\\/", "/") .. "\n")
  else
    pcall(term.write_err, secrets.redact_text(text) .. "\n")
  end
end

--- A warning that is not an error (`message("warn", text)`): silenced by -q, a JSON line with --json.
---@param text string
---@param fields? table
function M.warn(text, fields)
  M.message("warn", text, fields)
end

local function paint(code, text)
  if (opts().color or 0) == 1 then return ("\27[%sm%s\27[0m"):format(code, text) end
  return text
end

--- Writes a line to stderr without garbling a running spinner.
---@param text string
function M.say(text)
  if not M.enabled() then return end
  term.write_err(text .. "\n")
end

--- Runs fn(...) as a named step: a spinner meanwhile, then a ✓/✗ line with the elapsed time.
-- Errors propagate unchanged after the ✗ line.
---@param label string
---@param fn function
---@return any ... whatever fn returns
local current_label -- the label of the step whose spinner runs, if any

function M.step(label, fn, ...)
  local show = M.enabled()
  local tty = show and term.stderr_is_tty()
  local t0 = runtime.now_ms()
  local outer = current_label
  if tty then current_label = label end
  if tty then
    term.spinner_start(label)
  elseif show then
    io.stderr:write("- ", label, " ...\n")
  end
  local res = table.pack(pcall(fn, ...))
  local secs = (runtime.now_ms() - t0) / 1000
  if tty then
    current_label = outer
    if outer then term.spinner_start(outer) else term.spinner_stop() end
  end
  -- recipe.exit(0) inside a step ends the recipe successfully: not a failed step.
  local ended_ok = not res[1] and type(res[2]) == "table" and res[2].code == "RECIPE_EXIT"
    and (res[2].exit_code or 0) == 0
  if show then
    local good = res[1] or ended_ok
    -- Ctrl-C/SIGTERM is not the step's failure: the run says "interrupted" once it has cleaned up.
    local interrupted = not res[1] and type(res[2]) == "table" and res[2].code == "INTERRUPTED"
    local mark = good and paint("32", tty and "✓" or "ok")
      or interrupted and paint("33", "interrupted")
      or paint("31", tty and "✗" or "FAILED")
    io.stderr:write(("%s %s (%.1fs)\n"):format(mark, label, secs))
  end
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

--- Shows how far a step has got (e.g. "7/16 done") next to its spinner label on a terminal;
-- elsewhere nothing (the step's own lines say when it starts and ends).
---@param detail string|nil nil clears it
function M.detail(detail)
  if not current_label or not M.enabled() then return end
  term.spinner_label(detail and (current_label .. " · " .. detail) or current_label)
end

return M
