-- The measurements of bench/workspace: workspace.lua WORK SIZES FILES KIB PARALLEL
local workspace = require("galley.workspace")
local runtime = require("galley.core.runtime")
local proc = require("galley.core.proc")
local work, sizes, nfiles, kib, parallel = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4]), tonumber(arg[5])

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... } }))
  assert(r.exit_code == 0, r.stderr)
  return r.stdout
end
local function hwm()
  return tonumber(io.open("/proc/self/status"):read("a"):match("VmHWM:%s*(%d+)")) // 1024
end
local function timed(fn)
  local t0 = runtime.now_ms()
  local r = fn()
  return r, math.max(1, runtime.now_ms() - t0)
end
local function mbs(bytes, ms) return bytes / 1048576 / (ms / 1000) end

local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0 })
local p = require("galley.providers.morph").new({ api_key = emu.api_key, base_url = emu.base_url })
local id = p.instances.boot("snapshot_galleydev").id
local o = { parallel = parallel }
print(("galley emulate, Morph provider, max_command_bytes %s, %d chunk execs in flight"):format(
  tostring(p.capabilities.max_command_bytes), parallel))

for size in sizes:gmatch("%d+") do
  local n = tonumber(size)
  local d = work .. "/f" .. n
  sh('mkdir -p "$1" && head -c "$2" /dev/urandom > "$1/blob"', d, n * 1048576)
  local up, ms = timed(function() return workspace.push(p, id, d, "~/f" .. n, o) end)
  local back, ms2 = timed(function() return workspace.pull(p, id, "~/f" .. n, d .. "-back", o) end)
  print(("%5d MiB  up %7.1f MB/s (%d execs)   down %7.1f MB/s (%d execs)   peak RSS so far %d MiB"):format(
    n, mbs(up.bytes, ms), up.execs, mbs(back.bytes, ms2), back.execs, hwm()))
  sh('rm -rf -- "$1" "$1-back"', d)
end

local tree = work .. "/tree"
sh([[mkdir -p "$1" && cd "$1" && i=0; while [ $i -lt "$2" ]; do
  d=d$((i / 100)); [ -d $d ] || mkdir $d; head -c "$3" /dev/urandom | base64 > $d/file$i.txt; i=$((i + 1)); done]],
  tree, nfiles, kib * 768)
local total = tonumber((sh('du -sb "$1" | cut -f1', tree)))
local r, ms = timed(function() return workspace.push(p, id, tree, "~/tree", o) end)
print(("tree %d files, %.1f MiB: push %.1f MB/s in %d execs (%.1f s)"):format(r.sent, r.bytes / 1048576,
  mbs(r.bytes, ms), r.execs, ms / 1000))
local again = workspace.push(p, id, tree, "~/tree", o)
print(("tree re-push unchanged: %d exec(s), %d sent"):format(again.execs, again.sent))
local back
back, ms = timed(function() return workspace.pull(p, id, "~/tree", work .. "/tree-back", o) end)
print(("tree pull %.1f MB/s in %d execs"):format(mbs(back.bytes, ms), back.execs))
-- one exec per file, as examples/push-dir.lua does (the first 300 files, extrapolated)
local names = {}
for line in sh('cd "$1" && find . -type f | head -n 300', tree):gmatch("[^\n]+") do names[#names + 1] = line:sub(3) end
local t0 = runtime.now_ms()
local sent = 0
for _, rel in ipairs(names) do
  p.files.write_file_atomic(id, "~/perfile/" .. rel, { from_file = tree .. "/" .. rel }, { create_dirs = true })
  sent = sent + 1
end
local per = (runtime.now_ms() - t0) / sent
print(("one exec per file: %.1f ms per file -> about %.0f s and %d execs for the tree (%.2f MB/s)"):format(per,
  per * r.sent / 1000, r.sent, (total / 1048576) / (per * r.sent / 1000)))

-- repo round trip
sh('cd "$1" && git init -q . && git add -A && git -c user.name=b -c user.email=b@b commit -qm tree', tree)
local pr
pr, ms = timed(function()
  return workspace.push_repo(p, id, tree, "~/repo", { branch = "galley/bench", parallel = parallel })
end)
p.exec(id, { kind = "argv", command = "sh", args = { "-c",
  "cd ~/repo && echo change >> d0/file0.txt && git -c user.name=a -c user.email=a@a commit -qam agent" } })
local pl, ms2 = timed(function() return workspace.pull_repo(p, id, "~/repo", tree, { branch = "galley/bench" }) end)
print(("repo round trip: push_repo %d execs (%.1f s), pull_repo %d execs (%.1f s), %d commit(s) back"):format(
  pr.execs, ms / 1000, pl.execs, ms2 / 1000, #pl.commits))
print(("peak RSS %d MiB"):format(hwm()))
p.instances.terminate(id)
p.close()
emu.stop()
