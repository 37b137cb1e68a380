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
  return setmetatable({ max = max, running = {}, failed = nil }, Pool)
end


local function reap(self, t)
  local ok, err = t:result()
  if not ok and not self.failed then self.failed = err end
end


local function check(self)
  if self.failed then
    self:abort()
    error(self.failed, 0)
  end
end


--- Starts fn in a task once fewer than `max` run (waiting for the oldest); raises the first
--- failure seen so far.
---@param fn function
function Pool:add(fn)
  check(self)
  if #self.running >= self.max then
    reap(self, table.remove(self.running, 1))
    check(self)
  end
  self.running[#self.running + 1] = task.spawn(fn)
end


--- Waits for every task; raises the first failure (the others are cancelled).
function Pool:finish()
  while #self.running > 0 do
    reap(self, table.remove(self.running, 1))
    check(self)
  end
end


--- Cancels every task still running and waits for them to end; never raises.
function Pool:abort()
  local list = self.running
  self.running = {}
  for _, t in ipairs(list) do t:cancel() end
  for _, t in ipairs(list) do pcall(t.wait, t) end
end

return M
