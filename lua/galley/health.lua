--- galley.health: a health sample of an instance (CPU, memory, disk, load, uptime) from ONE exec
-- that reads /proc and runs df there: what `galley dashboard` shows per instance, usable by
-- recipes too.
--
--   local health = require("galley.health")
--   local h = health.sample(provider, inst.id)
--   -- {cpu_percent = 3.5, cpus = 2, mem_total = <bytes>, mem_used = <bytes>, mem_percent = 41.2,
--   --  disk_total = <bytes>, disk_used = <bytes>, disk_percent = 12.0, disk_path = "/root",
--   --  load = {0.1, 0.2, 0.3}, uptime_seconds = 5123, sampled_at = <unix time>}
--
-- CPU is the share of all CPUs busy over SAMPLE_MS (two reads of /proc/stat, `cpu` line); memory
-- is MemTotal - MemAvailable; disk is `df -Pk` of the instance's $HOME (its /, when HOME is
-- unset). Inside a container or sandbox these are what its /proc shows (often the host's CPU and
-- memory: a local sandbox shares the kernel), so where the provider can say what the instance
-- itself uses (`provider.usage(id)`: the local provider reads the instance's cgroup), CPU is its
-- processes' CPU time over the exec, memory their memory (of memory.max when it is set), uptime
-- the instance's age and `pids` its process count; `sources` says where each came from
-- ({cpu = "cgroup"|"proc", mem = "cgroup"|"proc", uptime = "instance"|"proc"}: a cgroup without
-- the memory controller gives CPU only).
-- A value the instance cannot give is nil.
local errors = require("galley.errors")
local runtime = require("galley.core.runtime")

local M = {}

-- Where each figure came from: the instance's /proc, until provider.usage says better.
local function proc_sources() return { cpu = "proc", mem = "proc", uptime = "proc" } end

--- Milliseconds between the two reads of /proc/stat.
M.SAMPLE_MS = 200

--- Time limit of the exec.
M.TIMEOUT_MS = 15000

-- Prints tagged lines; never fails as a whole (a missing piece is a missing line).
local SCRIPT = [[
cpu() { read -r _ u n s i w q sq st _ < /proc/stat && echo "$((u+n+s+i+w+q+sq+st)) $((i+w))"; }
a=$(cpu 2>/dev/null)
sleep "$1"
b=$(cpu 2>/dev/null)
echo "cpu $a $b"
echo "load $(cat /proc/loadavg 2>/dev/null)"
echo "uptime $(cat /proc/uptime 2>/dev/null)"
echo "mem $(grep -E '^(MemTotal|MemAvailable):' /proc/meminfo 2>/dev/null | tr -s ' ' | tr '\n' ' ')"
echo "ncpu $(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
d=${HOME:-/}
echo "disk $d $(df -Pk -- "$d" 2>/dev/null | tail -n 1)"
exit 0
]]


local function num(s) return s and tonumber(s) or nil end


local function percent(part, whole)
  if not part or not whole or whole <= 0 then return nil end
  return math.floor(part * 1000 / whole + 0.5) / 10
end


--- Parses the script's output (exposed for specs).
---@param text string
---@return table sample
function M.parse(text)
  local h = { load = {} }
  for line in (text or ""):gmatch("[^\n]+") do
    local tag, rest = line:match("^(%a+) ?(.*)$")
    if tag == "cpu" then
      local t1, i1, t2, i2 = rest:match("^(%d+) (%d+) (%d+) (%d+)")
      t1, i1, t2, i2 = num(t1), num(i1), num(t2), num(i2)
      if t1 and t2 and t2 > t1 then
        h.cpu_percent = math.max(0, math.min(100, percent((t2 - t1) - (i2 - i1), t2 - t1)))
      end
    elseif tag == "load" then
      local a, b, c = rest:match("^(%S+) (%S+) (%S+)")
      h.load = { num(a), num(b), num(c) }
    elseif tag == "uptime" then
      local up = num(rest:match("^(%S+)"))
      h.uptime_seconds = up and math.floor(up) or nil
    elseif tag == "mem" then
      local total = num(rest:match("MemTotal: (%d+)"))
      local avail = num(rest:match("MemAvailable: (%d+)"))
      if total then
        h.mem_total = total * 1024
        if avail then
          h.mem_used = (total - avail) * 1024
          h.mem_percent = percent(total - avail, total)
        end
      end
    elseif tag == "ncpu" then
      h.cpus = math.tointeger(num(rest))
      if h.cpus == 0 then h.cpus = nil end
    elseif tag == "disk" then
      local path, blocks, used = rest:match("^(%S+) %S+%s+(%d+)%s+(%d+)")
      if blocks then
        h.disk_path = path
        h.disk_total = num(blocks) * 1024
        h.disk_used = num(used) * 1024
        h.disk_percent = percent(num(used), num(blocks))
      end
    end
  end
  h.sampled_at = os.time()
  return h
end


--- One health sample of an instance: a single exec through the provider (any provider).
---@param provider table a galley provider (local, morph, ...)
---@param instance_id string
---@param opts? {sample_ms?: integer, timeout_ms?: integer}
---@return table sample see the module header; fields the instance cannot give are nil
---@raise VALIDATION_ERROR (bad arguments) | NOT_FOUND | PROCESS_ERROR | TIMEOUT (the provider's exec errors)
function M.sample(provider, instance_id, opts)
  if type(provider) ~= "table" or type(provider.exec) ~= "function" then
    errors.raise("VALIDATION_ERROR", "health.sample: provider must be a galley provider (with exec)",
      { field = "provider", hint = "pass the provider the instance belongs to" })
  end
  if type(instance_id) ~= "string" or instance_id == "" then
    errors.raise("VALIDATION_ERROR", "health.sample: instance_id must be a non-empty string",
      { field = "instance_id", hint = "pass an instance id such as inst.id" })
  end
  opts = opts or {}
  local ms = opts.sample_ms or M.SAMPLE_MS
  if math.type(ms) ~= "integer" or ms < 0 or ms > 10000 then
    errors.raise("VALIDATION_ERROR", "health.sample: sample_ms must be an integer 0..10000",
      { field = "sample_ms", hint = "the default is " .. M.SAMPLE_MS })
  end
  local usage = type(provider.usage) == "function" and provider.usage or nil
  local u1 = usage and usage(instance_id)
  local t0 = runtime.now_ms()
  local r = provider.exec(instance_id, { kind = "argv", command = "sh",
    args = { "-c", SCRIPT, "galley-health", ("%d.%03d"):format(ms // 1000, ms % 1000) } },
    { timeout_ms = opts.timeout_ms or M.TIMEOUT_MS })
  local wall_ms = runtime.now_ms() - t0
  local u2 = u1 and usage(instance_id)
  if type(r) ~= "table" or (r.exit_code ~= 0 and (r.stdout or "") == "") then
    errors.raise("PROCESS_ERROR", "health.sample: the probe failed on " .. instance_id, {
      operation = "health.sample", resource = "instance:" .. instance_id,
      details = { exit_code = r and r.exit_code, stderr = r and (r.stderr or ""):sub(1, 500) },
      hint = "the instance needs sh, /proc and df",
    })
  end
  local h = M.parse(r.stdout or "")
  h.sources = proc_sources()
  if u1 and u2 then M.apply_usage(h, u1, u2, wall_ms) end
  return h
end


--- Puts what the instance's own processes used between two `provider.usage` readings `wall_ms`
-- apart over the /proc figures of sample `h` (exposed for specs).
function M.apply_usage(h, u1, u2, wall_ms)
  h.sources = h.sources or proc_sources()
  if wall_ms > 0 and u2.cpu_usec >= u1.cpu_usec then
    local busy = (u2.cpu_usec - u1.cpu_usec) / (wall_ms * 1000 * (h.cpus or 1))
    h.cpu_percent, h.sources.cpu = math.min(100, percent(busy, 1)), "cgroup"
  end
  if u2.mem_bytes then
    h.mem_used, h.sources.mem = u2.mem_bytes, "cgroup"
    if u2.mem_limit then h.mem_total = u2.mem_limit end
    h.mem_percent = percent(h.mem_used, h.mem_total)
  end
  h.pids = u2.pids
  if u2.started_at then
    h.uptime_seconds, h.sources.uptime = math.max(0, os.time() - math.floor(u2.started_at)), "instance"
  end
  return h
end


return M
