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
-- elsewhere. The command is started through `/bin/sh -c 'echo $$ > PIDFILE; exec "$@"'` so that
-- kill() can signal it (one more exec: `kill -s SIG <pid>`); close() kills a command that is
-- still running, ends the stream and removes the pid file.
local task = require("galley.task")
local codec = require("galley.core.codec")
local errors = require("galley.errors")

local M = {}

local WRAPPER = 'echo $$ > "$0"; exec "$@"'

---@class galley.MorphProcess
---@field instance_id string
---@field pid_file string
local Process = {}
Process.__index = Process
Process.__name = "galley.MorphProcess"

local SIGNALS = { TERM = true, KILL = true, INT = true, HUP = true, QUIT = true, USR1 = true, USR2 = true }


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


--- Starts argv in the instance; returns at once.
---@param client galley.MorphClient
---@param instance_id string
---@param argv string[]
---@param opts? {exec?: fun(id: string, spec: table): table, timeout_ms?: integer}
---@return galley.MorphProcess
function M.spawn(client, instance_id, argv, opts)
  opts = opts or {}
  local self = setmetatable({
    instance_id = instance_id,
    pid_file = "/tmp/.galley-spawn-" .. codec.random_hex(8) .. ".pid",
    events = {}, head = 1, tail = 0, -- queued {kind, data}: events[head..tail]
    out = {}, err = {},          -- everything not yet handed over by read()
    waiters = {},
    exec = opts.exec,
    client = client,
  }, Process)
  local cmd = { "/bin/sh", "-c", WRAPPER, self.pid_file }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  local function push(kind, data)
    self.tail = self.tail + 1
    self.events[self.tail] = { kind, data }
    wake(self)
  end
  self.task = task.spawn(function()
    local ok, res, err = pcall(client.instances_exec, client, instance_id, cmd, {
      timeout_ms = opts.timeout_ms,
      on_stdout = function(s) push("stdout", s) end,
      on_stderr = function(s) push("stderr", s) end,
    })
    if not ok then res, err = nil, errors.wrap(res, { operation = "spawn", resource = "instance:" .. instance_id }) end
    self.finished = true
    if res then
      self.exit_code = math.tointeger(res.exit_code) or res.exit_code
    else
      self.error = err
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


--- Sends a signal (default TERM) to the command: true | nil, err.
---@param signal? string TERM, KILL, INT, HUP, QUIT, USR1, USR2
function Process:kill(signal)
  signal = signal or "TERM"
  if not SIGNALS[signal] then
    errors.raise("VALIDATION_ERROR", "unknown signal " .. tostring(signal), { field = "signal" })
  end
  if self.finished then return true end
  local argv = { "/bin/sh", "-c", 'p=$(cat "$1" 2>/dev/null) && kill -s "$2" "$p" 2>/dev/null; true', "kill",
    self.pid_file, signal }
  local res, err = self.client:instances_exec(self.instance_id, argv, { timeout_ms = 30000 })
  if not res then return nil, err end
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
  pcall(self.client.instances_exec, self.client, self.instance_id, { "rm", "-f", "--", self.pid_file },
    { timeout_ms = 30000 })
end

Process.__close = Process.close

function Process:__tostring()
  return ("galley.MorphProcess (%s, %s)"):format(self.instance_id,
    self.finished and ("exited " .. tostring(self.exit_code)) or self.closed and "closed" or "running")
end

return M
