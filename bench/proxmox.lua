-- bench/proxmox.lua (run by bench/proxmox): figures of the Proxmox provider on `galley emulate
-- proxmox` (loopback): requests per boot, exec latency over the multiplexed SSH connection vs a
-- fresh `ssh` per exec, and 16 boots in parallel ÷ one boot. Prints figures, asserts nothing.
local fs = require("galley.core.fs")
local runtime = require("galley.core.runtime")
local spawn = require("galley.emulator.proxmox_spawn")
local task = require("galley.task")

local TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
local EXECS = tonumber(os.getenv("BENCH_EXECS") or "") or 30
local PARALLEL = tonumber(os.getenv("BENCH_PARALLEL") or "") or 16

local em = spawn.start({ task_ms = tonumber(os.getenv("BENCH_TASK_MS") or "") or 50 })
local state = assert(fs.mkdtemp())
local function provider(extra)
  local o = { url = em.url, token_id = em.token_id, token_secret = em.token_secret, ssh_port = em.ssh_port,
    state_dir = state, template = TEMPLATE, boot_timeout_ms = 120000 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return require("galley.providers.proxmox").new(o)
end

local ok, err = pcall(function()
  local p = provider()
  p.images.list() -- the node is picked once; not counted below
  em.control("DELETE", "/log")
  local before = p.requests()
  local t0 = runtime.now_ms()
  local inst = p.instances.boot(TEMPLATE)
  local one_ms = runtime.now_ms() - t0
  local log = em.control("GET", "/log").data
  local polls = 0
  for _, r in ipairs(log) do
    if r.path:match("/tasks/") then polls = polls + 1 end
  end
  print(("requests per boot: %d (task polls %d; client count %d); one boot %.0f ms"):format(#log, polls,
    p.requests() - before, one_ms))

  local spec = { kind = "argv", command = "true" }
  p.exec(inst.id, spec) -- the master connection is up
  t0 = runtime.now_ms()
  for _ = 1, EXECS do p.exec(inst.id, spec) end
  local mux = (runtime.now_ms() - t0) / EXECS
  local fresh_p = provider({ ssh_command = { "ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none" } })
  fresh_p.exec(inst.id, spec)
  t0 = runtime.now_ms()
  for _ = 1, EXECS do fresh_p.exec(inst.id, spec) end
  local fresh = (runtime.now_ms() - t0) / EXECS
  print(("exec `true` (%d runs): multiplexed %.1f ms, fresh ssh %.1f ms; fresh/multiplexed %.1f"):format(EXECS,
    mux, fresh, fresh / mux))
  fresh_p.close()
  p.instances.terminate(inst.id)

  t0 = runtime.now_ms()
  local ids = {}
  local tasks = {}
  for i = 1, PARALLEL do
    tasks[i] = task.spawn(function() ids[i] = p.instances.boot(TEMPLATE).id end)
  end
  task.join(tasks)
  local par_ms = runtime.now_ms() - t0
  print(("%d boots in parallel: %.0f ms; ÷ one boot (%.0f ms) = %.2f"):format(PARALLEL, par_ms, one_ms,
    par_ms / one_ms))
  local stops = {}
  for i, id in pairs(ids) do stops[i] = task.spawn(function() p.instances.terminate(id) end) end
  task.join(stops)
  p.close()
end)
em.stop()
fs.remove_tree(state)
if not ok then error(err, 0) end
