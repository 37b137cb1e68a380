--- galley.pool: at most N tasks at once, fed one by one (a producer that reads a stream and
--- hands each piece to a task, as chunked transfers do).
--
--   local pool = require("galley.pool")
--   local p = pool.new(4)
--   for k, piece in pieces() do p:add(function() send(k, piece) end) end  -- waits for room
--   p:finish()                                   -- waits for all; raises the first failure
--
-- The first failure cancels the tasks still running (galley.task cancel) and is raised by the
-- next add or by finish; abort() cancels everything without raising (for cleanup paths).
-- recipe.parallel is the call for a list known up front; this is for a stream of work.
local task = require("galley.task")

local M = {}

---@class galley.Pool
local Pool = {}
Pool.__index = Pool
Pool.__name = "galley.Pool"

--- A pool running at most `max` tasks at once.
---@param max integer
---@return galley.Pool
function M.new(max)
  assert(math.type(max) == "integer" and max >= 1, "pool.new: max must be a positive integer")
  return setmetatable({ max = max, running = {}, count = 0, failed = nil, waiter = nil }, Pool)
end


-- Waits until one of the tasks ends (whichever: a failure is seen as soon as it happens).
local function wait_one(self)
  local token = task.token()
  self.waiter = token
  local ok, err = task.await(token)
  self.waiter = nil
  if not ok then
    self:abort()
    error(err, 0)
  end
end


local function check(self)
  if self.failed then
    self:abort()
    error(self.failed, 0)
  end
end


--- Starts fn in a task once fewer than `max` run (waiting for one to end); raises the first
--- failure seen so far.
---@param fn function
function Pool:add(fn)
  check(self)
  while self.count >= self.max do
    wait_one(self)
    check(self)
  end
  self.count = self.count + 1
  local t
  t = task.spawn(function()
    local ok, err = pcall(fn)
    self.count = self.count - 1
    self.running[t] = nil
    if not ok and not self.failed then self.failed = err end
    if self.waiter then task.wake(self.waiter) end
  end)
  self.running[t] = true
end


--- Waits for every task; raises the first failure (the others are cancelled).
function Pool:finish()
  check(self)
  while self.count > 0 do
    wait_one(self)
    check(self)
  end
end


--- Cancels every task still running and waits for them to end; never raises.
function Pool:abort()
  local list = {}
  for t in pairs(self.running) do list[#list + 1] = t end
  for _, t in ipairs(list) do t:cancel() end
  for _, t in ipairs(list) do pcall(t.wait, t) end
end

return M
