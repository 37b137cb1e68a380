--- Whether things ran together, from when each started and ended (no durations asserted: CI
-- machines are noisy, and "together" is what a concurrency test means).
--   local overlap = require("support.overlap")
--   assert.is_true(overlap.all(spans))     -- spans: { {start, end}, ... } in one clock
--   assert.is_true(overlap.peak(spans) > 8)
local M = {}

--- True when every span overlaps every other: the latest start comes before the earliest end.
---@param spans number[][]
---@return boolean, number, number latest start, earliest end
function M.all(spans)
  local last_start, first_end = -math.huge, math.huge
  for _, sp in ipairs(spans) do
    last_start = math.max(last_start, sp[1])
    first_end = math.min(first_end, sp[2])
  end
  return last_start < first_end, last_start, first_end
end

--- The most spans in progress at one instant (an end at the instant of a start does not count).
---@param spans number[][]
---@return integer
function M.peak(spans)
  local edges = {}
  for _, sp in ipairs(spans) do
    edges[#edges + 1] = { sp[1], 1 }
    edges[#edges + 1] = { sp[2], -1 }
  end
  table.sort(edges, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local now, top = 0, 0
  for _, e in ipairs(edges) do
    now = now + e[2]
    top = math.max(top, now)
  end
  return top
end

--- Spans from the emulator's request log (`at` and `ms` of each record).
---@param log table[]
---@return number[][]
function M.of_log(log)
  local spans = {}
  for i, rec in ipairs(log) do spans[i] = { rec.at, rec.at + rec.ms } end
  return spans
end

return M
