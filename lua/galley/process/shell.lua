--- galley.process.shell: the minimal process manager. `start` runs a ProcessSpec's command ONCE
-- through the provider's exec and waits for it to finish; there is no daemon.
--
--   local shell_pm = require("galley.process.shell").new{provider = p}
--   local r = shell_pm.start(inst.id, {command = {kind = "shell", script = "make test", cwd = "~/src"}})
--   -- r = {name, status = "exited", exit_code = 0, stdout = "...", stderr = "..."}
--
-- What it does with a ProcessSpec: writes every `spec.files` entry first (see upload_files),
-- then calls provider.exec(instance_id, spec.command): the provider applies cwd and env. The
-- PM2-only fields (restart, instances, max_memory, logs) are ignored, and stdin is whatever the
-- provider's exec gives (no input). A non-zero exit raises PROCESS_ERROR (kind ProcessError)
-- with `details = {exit_code, stderr}` (the last STDERR_TAIL bytes of stderr).
--
-- Because nothing outlives `start`, `list` always returns {} and `logs` returns empty text (the
-- output of a run is in start's result), `stop`/`delete`/`stop_all`/`delete_all` have nothing to
-- act on and return false. They exist so any manager can stand in for another.
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local logmod = require("galley.log")

local M = {}

M.NAME = "shell"

--- How many bytes of stderr a PROCESS_ERROR keeps.
M.STDERR_TAIL = 2000


--- The last `n` bytes of s (s itself when shorter).
---@param s string|nil
---@param n integer
---@return string
function M.tail(s, n)
  s = s or ""
  if #s <= n then return s end
  return s:sub(#s - n + 1)
end


--- Writes every entry of a ProcessSpec's `files` through provider.files.write_file_atomic
-- (create_dirs, the entry's mode), in order, before a process starts. Shared by all managers.
---@param provider table
---@param instance_id string
---@param files? galley.FileSpec[] already checked (contracts.check_process)
---@param context {operation: string, resource: string}
---@return integer count files written
---@raise PROCESS_ERROR (kind ProcessError) naming the path that failed, `cause` = the provider error
function M.upload_files(provider, instance_id, files, context)
  for i, f in ipairs(files or {}) do
    local ok, err = pcall(provider.files.write_file_atomic, instance_id, f.path, f.content,
      { mode = f.mode, create_dirs = true })
    if not ok then
      if errors.is(err, "INTERRUPTED") then error(err, 0) end
      error(errors.ProcessError("PROCESS_ERROR", ("cannot upload %s before starting: %s"):format(f.path,
        errors.is(err) and err.message or tostring(err)), {
        operation = context.operation, resource = context.resource, cause = err,
        details = { path = f.path, index = i, cause_code = type(err) == "table" and err.code or nil },
      }), 0)
    end
  end
  return #(files or {})
end


--- Creates a shell process manager.
---@param opts {provider: table, log?: galley.Logger}
---@return table manager `{name, start, stop, restart, delete, list, logs, stop_all, delete_all}`
---@raise VALIDATION_ERROR when opts.provider is missing
function M.new(opts)
  if type(opts) ~= "table" or type(opts.provider) ~= "table" then
    errors.raise("VALIDATION_ERROR", "galley.process.shell.new: opts.provider is required", { field = "provider" })
  end
  local provider = opts.provider
  local log = opts.log or logmod.default().child({ prefix = "shell" })
  local pm = { name = M.NAME }

  --- Runs the command once and waits for it.
  ---@param instance_id string
  ---@param spec galley.ProcessSpec
  ---@param sopts? {name?: string} a label for logs and errors (default spec.command.name or "shell")
  ---@return {name: string, status: "exited", exit_code: integer, stdout: string, stderr: string}
  ---@raise VALIDATION_ERROR (bad spec) | PROCESS_ERROR (non-zero exit: details.exit_code, details.stderr;
  --- or a failed upload) | the provider's errors (NOT_FOUND instance, TIMEOUT, ...)
  function pm.start(instance_id, spec, sopts)
    spec = contracts.check_process(spec)
    local name = sopts and sopts.name or spec.command.name or "shell"
    local context = { operation = "shell.start", resource = "process:" .. name }
    M.upload_files(provider, instance_id, spec.files, context)
    log.debug("running once", { process = name, instance = instance_id })
    local r = provider.exec(instance_id, spec.command)
    log.debug("finished", { process = name, instance = instance_id, exit_code = r.exit_code,
      stdout_bytes = #(r.stdout or ""), stderr_bytes = #(r.stderr or "") })
    if r.exit_code ~= 0 then
      local tail = M.tail(r.stderr, M.STDERR_TAIL)
      local last = tail:gsub("%s+$", ""):match("([^\n]*)$")
      error(errors.ProcessError("PROCESS_ERROR", ("%s exited with status %d%s"):format(name, r.exit_code,
        last ~= "" and (": " .. M.tail(last, 300)) or ""), {
        operation = context.operation, resource = context.resource,
        details = { exit_code = r.exit_code, stderr = tail },
      }), 0)
    end
    return { name = name, status = "exited", exit_code = 0, stdout = r.stdout or "", stderr = r.stderr or "" }
  end

  --- Nothing runs after start returns, so there is nothing to stop.
  ---@return false
  function pm.stop(_, _) return false end

  --- Not a daemon: there is nothing to restart (call start again).
  ---@return false
  function pm.restart(_, _) return false end

  --- Nothing is kept, so nothing to delete.
  ---@return false
  function pm.delete(_, _) return false end

  ---@return false
  function pm.stop_all(_) return false end

  ---@return false
  function pm.delete_all(_) return false end

  --- Always empty: no process outlives start.
  ---@return table[]
  function pm.list(_) return {} end

  --- Always empty text: a run's output is returned by start.
  ---@return {out: string, err: string}
  function pm.logs(_, _, _) return { out = "", err = "" } end

  return pm
end


return M
