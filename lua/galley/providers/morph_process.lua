--- galley.providers.morph_process: a process handle over Morph's SSE exec, shaped like
--- galley.core.proc's Process (read, wait, kill, close), so fan-out of long commands reads the
--- same on Morph as on the local provider.
--
--   local h = morph_process.spawn(client, instance_id, {"sh", "-c", "make test"})
--   while true do
--     local kind, data = h:read()            -- "stdout"|"stderr", text | "exit", code | nil
--     if kind == "exit" or kind == nil then break end
--   end
--   local r = h:wait()                       -- {exit_code, stdout, stderr} (output not yet read)
--   h:close()
--
-- The exec runs in a galley.task: its output is buffered as the stream delivers it and handed
-- over by read/wait, which yield inside a task (other work runs meanwhile) and run the loop
-- elsewhere. The command is started through galley.providers.common's spawn wrapper (it writes
-- its pid and leads a process group of its own) so that kill() can signal it and what it started
-- (one more exec); close() kills a command that is still running (KILL to its group), ends the
-- stream and removes the pid file.
local task = require("galley.task")
local common = require("galley.providers.common")
local errors = require("galley.errors")

local M = {}

---@class galley.MorphProcess
---@field instance_id string
---@field pid_file string
local Process = {}
Process.__index = Process
Process.__name = "galley.MorphProcess"



local function wake(self)
  local tokens = self.waiters
  self.waiters = {}
  for _, t in ipairs(tokens) do task.wake(t) end
end


-- Waits for the next event (or the end) for at most timeout_ms (nil: no limit): true, or
-- false when the time ran out, or nil, err when the wait was cancelled.
local function wait_event(self, timeout_ms)
  local token = task.token()
  self.waiters[#self.waiters + 1] = token
  local timer
  local timed_out = false
  if timeout_ms then
    timer = task.spawn(function()
      task.sleep(timeout_ms)
      timed_out = true
      task.wake(token)
    end)
  end
  local ok, err = task.await(token)
  if timer then timer:cancel() end
  if not ok then return nil, err end
  return not timed_out
end


--- Starts argv in the instance; returns at once. `opts.exec_argv(argv, eopts)` runs an exec and
--- returns its checked answer (raising on failure): the provider's, which sends the argv in the
--- form the service runs (one quoted line where it joins arrays); without it, the client's
--- instances_exec as given.
---@param client galley.MorphClient
---@param instance_id string
---@param argv string[]
---@param opts? {exec_argv?: fun(argv: string[], eopts: table): table, timeout_ms?: integer}
---@return galley.MorphProcess
function M.spawn(client, instance_id, argv, opts)
  opts = opts or {}
  local exec_argv = opts.exec_argv or function(a, eopts)
    local res, err = client:instances_exec(instance_id, a, eopts)
    if not res then error(err, 0) end
    return res
  end
  local self = setmetatable({
    instance_id = instance_id,
    pid_file = common.spawn_pid_file(),
    events = {}, head = 1, tail = 0, -- queued {kind, data}: events[head..tail]
    out = {}, err = {},          -- everything not yet handed over by read()
    waiters = {},
    exec_argv = exec_argv,
  }, Process)
  local cmd = common.spawn_argv(self.pid_file, argv)
  local function push(kind, data)
    self.tail = self.tail + 1
    self.events[self.tail] = { kind, data }
    wake(self)
  end
  self.task = task.spawn(function()
    local ok, res = pcall(exec_argv, cmd, {
      timeout_ms = opts.timeout_ms,
      on_stdout = function(s) push("stdout", s) end,
      on_stderr = function(s) push("stderr", s) end,
    })
    self.finished = true
    if ok then
      self.exit_code = math.tointeger(res.exit_code) or res.exit_code
    else
      self.error = errors.wrap(res, { operation = "spawn", resource = "instance:" .. instance_id })
    end
    wake(self)
  end)
  return self
end


--- Next output or the exit: "stdout", data | "stderr", data | "exit", exit_code | nil (timeout,
--- or after the exit was read) | nil, err (the exec failed, or the wait was cancelled).
---@param timeout_ms? integer
function Process:read(timeout_ms)
  while true do
    local ev = self.events[self.head]
    if ev then
      self.events[self.head] = nil
      self.head = self.head + 1
      return ev[1], ev[2]
    end
    if self.finished then
      if self.error then return nil, self.error end
      if self.exit_reported then return nil end
      self.exit_reported = true
      return "exit", self.exit_code
    end
    if self.closed then return nil end
    local ok, err = wait_event(self, timeout_ms)
    if ok == nil then return nil, err end
    if not ok then return nil end
  end
end


--- Waits for the exit: {exit_code, stdout, stderr} with the output read() has not returned |
--- nil (timeout) | nil, err.
---@param timeout_ms? integer
function Process:wait(timeout_ms)
  local deadline = timeout_ms and (require("galley.core.runtime").now_ms() + timeout_ms)
  while not self.finished do
    if self.closed then return nil, errors.new("PROCESS_ERROR", "the process handle is closed") end
    local left = deadline and (deadline - require("galley.core.runtime").now_ms())
    if left and left <= 0 then return nil end
    local ok, err = wait_event(self, left)
    if ok == nil then return nil, err end
  end
  if self.error then return nil, self.error end
  local out, errs = {}, {}
  for i = self.head, self.tail do
    local ev = self.events[i]
    if ev[1] == "stdout" then out[#out + 1] = ev[2] else errs[#errs + 1] = ev[2] end
  end
  self.events, self.head, self.tail = {}, 1, 0
  self.exit_reported = true
  return { exit_code = self.exit_code, stdout = table.concat(out), stderr = table.concat(errs) }
end


--- Sends a signal (default TERM) to the command and its process group: true | nil, err.
---@param signal? string TERM, KILL, INT, HUP, QUIT, USR1, USR2
function Process:kill(signal)
  signal = signal or "TERM"
  if not common.SPAWN_SIGNALS[signal] then
    errors.raise("VALIDATION_ERROR", "unknown signal " .. tostring(signal), { field = "signal" })
  end
  if self.finished then return true end
  local ok, err = pcall(self.exec_argv, common.spawn_signal_argv(self.pid_file, signal), { timeout_ms = 30000 })
  if not ok then return nil, err end
  return true
end


--- Kills a command still running, ends the stream, removes the pid file (safe twice).
function Process:close()
  if self.closed then return end
  if not self.finished then
    pcall(self.kill, self, "KILL")
    self.task:cancel()
  end
  self.closed = true
  wake(self)
  pcall(self.exec_argv, common.spawn_cleanup_argv(self.pid_file), { timeout_ms = 30000 })
end

Process.__close = Process.close

function Process:__tostring()
  return ("galley.MorphProcess (%s, %s)"):format(self.instance_id,
    self.finished and ("exited " .. tostring(self.exit_code)) or self.closed and "closed" or "running")
end

return M
