--- galley.task: many things at once on one event loop.
--
--   local task = require("galley.task")
--   local a = task.spawn(function() return provider.instances.boot(snap) end)
--   local b = task.spawn(function() return provider.instances.boot(snap) end)
--   local ia, ib = a:wait(), b:wait()          -- both boots were in flight together
--   task.sleep(500)                            -- other tasks run meanwhile
--
-- A task is a coroutine run by this scheduler. Every blocking call galley makes (HTTP, child
-- processes, sleeps, readiness polls) waits on a token of the event loop (src/core/loop.h):
-- inside a task it yields, so other tasks run; outside a task (the main program, a REPL line,
-- a C callback that cannot yield) it runs the loop, and every runnable task, until its token is
-- ready. So code written for one instance works unchanged, and many of them run at once when
-- started as tasks.
--
-- Cancellation: t:cancel(err) makes the task's current (or next) wait fail with err (default
-- INTERRUPTED); the operation it waited for is aborted. Ctrl-C/SIGTERM cancels every waiting
-- task and the main program's wait with INTERRUPTED {signal = N}; a run's cleanup then works
-- with signals deferred. Lua code that never waits is interrupted by the signal hook of the
-- coroutine actually running.
local loop = require("galley.core.loop")
local runtime = require("galley.core.runtime")

local M = {}

local AWAIT = setmetatable({}, { __name = "galley.task.AWAIT" })

---@class galley.Task
---@field id integer
---@field done boolean
---@field ok boolean|nil true when it returned, false when it raised (nil while running)
---@field err any the error it raised
---@field name string|nil
local Task = {}
Task.__index = Task
Task.__name = "galley.Task"

local tasks = setmetatable({}, { __mode = "k" }) -- coroutine -> Task
local waiting = {}                               -- token -> coroutine
local ready = {}                                 -- token -> true: ready, nobody waiting yet
local abandoned = {}                             -- token -> true: its waiter went away
local queue, qhead, qtail = {}, 1, 0             -- runnable: {co, ok, err}
local next_id = 0
local signal_seen = 0                            -- the signal already turned into cancellations


local function errors()
  return require("galley.errors")
end


local function push(co, ok, err)
  qtail = qtail + 1
  queue[qtail] = { co, ok, err }
end


local function has_runnable()
  return qhead <= qtail
end


local function make_ready(token)
  if abandoned[token] then
    abandoned[token] = nil
    return
  end
  local co = waiting[token]
  if co then
    waiting[token] = nil
    local t = tasks[co]
    if t then t.token = nil end
    push(co, true)
  else
    ready[token] = true
  end
end


local function finish(t, ok, a)
  t.done, t.ok = true, ok
  if ok then t.results = a else t.err = a end
  local waiters = t.waiters
  t.waiters = {}
  for _, token in ipairs(waiters) do make_ready(token) end
end


local function step(co, ok, err)
  local t = tasks[co]
  if not t or t.done then return end
  t.started = true
  local res = table.pack(loop.resume(co, ok, err))
  if not res[1] then
    finish(t, false, res[2])
  elseif coroutine.status(co) == "dead" then
    finish(t, true, table.pack(table.unpack(res, 2, res.n)))
  elseif res[2] == AWAIT then
    local token = res[3]
    if t.cancel_err then
      abandoned[token] = true
      push(co, false, t.cancel_err)
    elseif ready[token] then
      ready[token] = nil
      push(co, true)
    else
      waiting[token], t.token = co, token
    end
  else
    push(co) -- a plain coroutine.yield() inside a task: let the others run, then go on
  end
end


-- Runs the tasks that are runnable now (not the ones they make runnable: those go next turn).
local function run_round()
  local last = qtail
  while qhead <= last do
    local item = queue[qhead]
    queue[qhead] = nil
    qhead = qhead + 1
    step(item[1], item[2], item[3])
  end
  if qhead > qtail then queue, qhead, qtail = {}, 1, 0 end
end


local function interrupted(sig)
  return errors().new("INTERRUPTED",
    "interrupted by " .. (sig == 2 and "Ctrl-C (SIGINT)" or sig == 15 and "SIGTERM" or ("signal " .. sig)),
    { signal = sig })
end


-- A pending Ctrl-C/SIGTERM cancels every task waiting at that moment, once per signal.
local function check_signal()
  local sig = runtime.pending_signal()
  if sig == 0 then
    signal_seen = 0
    return nil
  end
  local err = interrupted(sig)
  if signal_seen ~= sig then
    signal_seen = sig
    for token, co in pairs(waiting) do
      waiting[token] = nil
      abandoned[token] = true
      local t = tasks[co]
      if t then t.token = nil end
      push(co, false, err)
    end
  end
  return err
end


-- One scheduler turn: the runnable tasks, then one loop turn (blocking when `block`, nothing is
-- runnable and `want`, the token run_until waits for, did not become ready meanwhile). Returns
-- whether anything could still make progress.
local function turn(block, want)
  loop.scheduling(true)
  local ok, a, b = pcall(function()
    run_round()
    check_signal()
    local tokens, alive = loop.turn(not block or has_runnable() or (want ~= nil and ready[want] == true))
    for _, token in ipairs(tokens) do make_ready(token) end
    check_signal()
    return alive
  end)
  loop.scheduling(false)
  if not ok then error(a, 0) end
  return a or has_runnable(), b
end


-- Runs the loop and the tasks until `token` is ready: true, or false, err when a signal came
-- or nothing can ever make the token ready.
local function run_until(token)
  while true do
    if ready[token] then
      ready[token] = nil
      return true
    end
    local sig = runtime.pending_signal()
    if sig ~= 0 then
      abandoned[token] = true
      check_signal()
      return false, interrupted(sig)
    end
    local alive = turn(true, token)
    if not alive and not ready[token] then
      abandoned[token] = true
      return false, errors().new("INTERNAL_ERROR", "a wait can never end: nothing left to wake it (deadlock)",
        { hint = "a task waits for something that waits for it" })
    end
  end
end


--- Waits until a loop token is ready. Inside a task it yields; elsewhere it runs the loop.
--- Called by every C binding that waits (src/bind/await.h).
---@param token integer
---@return boolean ok
---@return galley.Error|nil err why the wait was cancelled
function M.await(token)
  local co, main = coroutine.running()
  local t = not main and tasks[co] or nil
  if t and coroutine.isyieldable() then
    if t.cancel_err then
      abandoned[token] = true
      return false, t.cancel_err
    end
    return coroutine.yield(AWAIT, token)
  end
  return run_until(token)
end

debug.getregistry()["galley.await"] = M.await


--- Marks a token (from loop.token()) ready: wakes whoever waits for it.
---@param token integer
function M.wake(token)
  make_ready(token)
end


--- A new token for a Lua-side wait (see M.await and M.wake).
---@return integer
function M.token()
  return loop.token()
end


--- Starts fn(...) as a task; it first runs at the next wait of anyone (or t:wait()).
---@param fn function
---@return galley.Task
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    errors().raise("VALIDATION_ERROR", "task.spawn: expected a function, got " .. type(fn), { field = "fn" })
  end
  local args = table.pack(...)
  local co = coroutine.create(function(...)
    local _ = ...
    return fn(table.unpack(args, 1, args.n))
  end)
  next_id = next_id + 1
  local t = setmetatable({ id = next_id, co = co, done = false, waiters = {} }, Task)
  tasks[co] = t
  push(co)
  return t
end


--- The running task, or nil outside a task.
---@return galley.Task|nil
function M.current()
  local co, main = coroutine.running()
  if main then return nil end
  return tasks[co]
end


--- Waits for the task and returns what it returned; raises what it raised.
---@return any ...
function Task:wait()
  if not self.done then
    if M.current() == self then
      errors().raise("VALIDATION_ERROR", "a task cannot wait for itself", { field = "task" })
    end
    local token = loop.token()
    self.waiters[#self.waiters + 1] = token
    local ok, err = M.await(token)
    if not ok then error(err, 0) end
  end
  if not self.ok then error(self.err, 0) end
  return table.unpack(self.results, 1, self.results.n)
end


--- ok, ... when it returned; false, err when it raised. Waits first.
function Task:result()
  local ok, err = pcall(Task.wait, self)
  if not ok and self.done and not self.ok then return false, self.err end
  if not ok then return false, err end
  return true, table.unpack(self.results, 1, self.results.n)
end


--- Cancels the task: its current or next wait fails with err (default INTERRUPTED), and the
--- operation it waited for is aborted. A task that has not started yet never runs.
---@param err? galley.Error
function Task:cancel(err)
  if self.done then return end
  err = err or errors().new("INTERRUPTED", "task cancelled", { hint = "cancelled by its caller" })
  self.cancel_err = err
  if not self.started then
    finish(self, false, err)
    return
  end
  local token = self.token
  if token and waiting[token] == self.co then
    waiting[token] = nil
    abandoned[token] = true
    self.token = nil
    push(self.co, false, err)
  end
end


function Task:__tostring()
  return ("galley.Task %d (%s)"):format(self.id,
    not self.done and "running" or self.ok and "done" or "failed")
end


--- Waits for every task; one record per task, in order: {ok = true, value = v, values = {...}}
--- or {ok = false, err = e}. Never raises for a task's failure (a signal still raises).
---@param list galley.Task[]
---@return table[]
function M.join(list)
  local out = {}
  for i, t in ipairs(list) do
    local ok, err = pcall(Task.wait, t)
    if not t.done then error(err, 0) end -- our own wait was interrupted
    if t.ok then
      out[i] = { ok = true, value = t.results[1], values = t.results }
    else
      out[i] = { ok = false, err = t.err }
    end
    local _ = ok
  end
  return out
end


--- Sleeps without blocking other tasks; raises INTERRUPTED when cancelled.
---@param ms integer
function M.sleep(ms)
  local ok, err = loop.sleep(ms)
  if not ok then error(err, 0) end
end


--- Lets the other runnable tasks run once (a no-op outside a task).
function M.yield()
  local t = M.current()
  if t and coroutine.isyieldable() then coroutine.yield() end
end


--- Runs fn(...) as a task bounded by ms: its result, or TIMEOUT after cancelling it.
---@param ms integer
---@param fn function
function M.with_timeout(ms, fn, ...)
  local t = M.spawn(fn, ...)
  local timer = M.spawn(function()
    M.sleep(ms)
    t:cancel(errors().new("TIMEOUT", ("timed out after %d ms"):format(ms), { details = { timeout_ms = ms } }))
  end)
  local res = table.pack(pcall(Task.wait, t))
  timer:cancel()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end


--- Runs the scheduler until no task is runnable or waiting (what the runner does at the end).
function M.drain()
  while has_runnable() or next(waiting) ~= nil do
    local alive = turn(true)
    if runtime.pending_signal() ~= 0 then return end
    if not alive and not has_runnable() then return end
  end
end


--- Counts for tests and progress: {runnable, waiting}.
function M.stats()
  local n = 0
  for _ in pairs(waiting) do n = n + 1 end
  return { runnable = qtail - qhead + 1, waiting = n }
end

return M
