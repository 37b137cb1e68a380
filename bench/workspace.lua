-- The measurements of bench/workspace: workspace.lua WORK FORMS PARALLEL TREE_KIND FILE_MIB STATE_PARENT ROUNDS
-- FORMS: comma-separated FORM[:MODE], FORM the provider's exec_form (auto, string, argv), MODE the
-- emulator's --argv-mode (exec, join; default exec, join for string).
local workspace = require("galley.workspace")
local runtime = require("galley.core.runtime")
local proc = require("galley.core.proc")
local work, forms, parallel, kind = arg[1], arg[2], tonumber(arg[3]), arg[4]
local file_mib, state_parent = math.tointeger(tonumber(arg[5] or "0")), arg[6] or "/tmp"
local rounds = math.tointeger(tonumber(arg[7] or "3"))

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... }, timeout_ms = 3600000 }))
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
local function mbs(bytes, ms) return bytes / 1e6 / (ms / 1000) end

local tree = work .. "/tree"
local nfiles = tonumber((sh('find "$1" -type f | wc -l', tree)))
local total = tonumber((sh('du -sb "$1" | cut -f1', tree):match("%d+")))
print(("tree: %d files, %.1f MB (%s), %d chunk execs in flight, instances in %s"):format(nfiles, total / 1e6, kind,
  parallel, state_parent))
-- the file to compare with: file_mib distinct MiB blocks
local big = work .. "/big.bin"
if file_mib > 0 then
  local codec = require("galley.core.codec")
  local block = codec.random_bytes(1048576)
  local f = assert(io.open(big, "wb"))
  for i = 1, file_mib do f:write(("%015d\n"):format(i), block:sub(17)) end
  f:close()
end
sh('cd "$1" && git init -q . && git add -A && git -c user.name=b -c user.email=b@b commit -qm tree', tree)
-- A tree changed in the last workspace.RECENT_NS is also hashed here and checked there (see
-- docs/api/workspace.md): the bench measures a tree as it usually is, older than that.
local recent_s = workspace.RECENT_NS / 1e9 + 1.5
print(("(waiting %.1f s: files changed in the last %.0f s would be hashed on both sides, see bench/README)")
  :format(recent_s, workspace.RECENT_NS / 1e9))
runtime.sleep_ms(math.floor(recent_s * 1000))

local per_file_done = false
for spec in forms:gmatch("[^,]+") do
  local form, mode, ssh = spec:match("^(%a+):?(%a*)(%+?s?s?h?)$")
  assert(ssh == "" or ssh == "+ssh", "bad transport in " .. spec)
  ssh = ssh == "+ssh"
  local label = form .. "-" .. mode .. (ssh and "-ssh" or "") -- branch and directory names
  assert(form == "auto" or form == "string" or form == "argv", "bad form " .. spec)
  if mode == "" then mode = form == "string" and "join" or "exec" end
  assert(mode == "exec" or mode == "join", "bad argv mode in " .. spec)
  local emu = require("galley.emulator.spawn").start({ boot_delay_ms = 0, argv_mode = mode,
    state_parent = state_parent })
  assert(not ssh or emu.ssh_port, "the emulator started no SSH gateway (libssh missing?)")
  local p = require("galley.providers.morph").new({ api_key = emu.api_key, base_url = emu.base_url, exec_form = form,
    size_limit = math.max(file_mib, 1) * 1048576, ssh = ssh and { host = emu.ssh_host, port = emu.ssh_port } or false })
  local id = p.instances.boot("snapshot_galleydev").id
  local o = { parallel = parallel }
  local r, ms = timed(function() return workspace.push(p, id, tree, "~/tree", o) end)
  -- "auto" probes the service during the first push that needs more than one line: one request
  local probed = form == "auto" and p.exec_form() ~= nil
  print(("-- exec form %s%s (emulator argv mode %s)%s%s"):format(form, form == "auto" and (" -> " .. tostring(
    p.exec_form())) or "", mode, p.exec_form() ~= "argv" and (", one line <= " .. p.capabilities.max_command_bytes
    .. " bytes") or "", ssh and ", transfers over one exec through the SSH gateway" or ""))
  local function streams(x) return (x.streams or 0) > 0 and (" + %d SSH stream(s)"):format(x.streams) or "" end
  print(("push      %6.1f MB/s  %4d requests%s%s (%.1f s), %d files, %.1f MB as %.1f MB of %s"):format(mbs(r.bytes, ms),
    r.execs, probed and " + 1 probe" or "", streams(r), ms / 1000, r.sent, r.bytes / 1e6, (r.wire_bytes or 0) / 1e6,
    r.compress or "-"))
  if file_mib > 0 then
    -- The file and the push alternate, `rounds` times (each push into a fresh directory), and
    -- the medians count: on a shared 2-core machine one upload of the file varied 2x between
    -- runs, and a single pair made the share swing with it.
    local files_r, pushes_r, shares = {}, {}, {}
    for k = 1, rounds do
      local _, fms = timed(function() return p.files.write_file_atomic(id, "~/big.bin", { from_file = big }) end)
      p.exec(id, { kind = "argv", command = "rm", args = { "-f", "--", "big.bin" } })
      local pr, pms = r, ms
      if k > 1 then pr, pms = timed(function() return workspace.push(p, id, tree, "~/tree-round" .. k, o) end) end
      files_r[k], pushes_r[k] = mbs(file_mib * 1048576, fms), mbs(pr.bytes, pms)
      shares[k] = 100 * pushes_r[k] / files_r[k]
    end
    local function median(t)
      local c = table.move(t, 1, #t, 1, {})
      table.sort(c)
      return c[(#c + 1) // 2]
    end
    local function range(t, fmt)
      local c = table.move(t, 1, #t, 1, {})
      table.sort(c)
      return (fmt .. "-" .. fmt):format(c[1], c[#c])
    end
    print(("file      %6.1f MB/s  one %d MiB file, median of %d (%s MB/s); pushes alongside: %.1f MB/s (%s)")
      :format(median(files_r), file_mib, rounds, range(files_r, "%.0f"), median(pushes_r), range(pushes_r, "%.0f")))
    print(("share     the push is %.0f %% of the file, ratio of the medians (each round: %s %%; target >= 50 %%)")
      :format(100 * median(pushes_r) / median(files_r), range(shares, "%.0f")))
  end
  if ssh then -- every file changed just now (touch): hashed here and checked there too
    sh('cd "$1" && git ls-files -z | xargs -0 touch -c --', tree)
    local f, fms = timed(function() return workspace.push(p, id, tree, "~/tree-fresh", o) end)
    print(("fresh     %6.1f MB/s  %4d requests%s (%.1f s): the same tree touched just now (sha256 both sides)")
      :format(mbs(f.bytes, fms), f.execs, streams(f), fms / 1000))
  end
  local again
  again, ms = timed(function() return workspace.push(p, id, tree, "~/tree", o) end)
  print(("re-push unchanged: %d request(s), %d sent (%.2f s)"):format(again.execs, again.sent, ms / 1000))
  local back
  back, ms = timed(function() return workspace.pull(p, id, "~/tree", work .. "/back-" .. label, o) end)
  print(("pull      %6.1f MB/s  %4d requests%s (%.1f s), %d files, %.1f MB as %.1f MB"):format(mbs(back.bytes, ms),
    back.execs, streams(back), ms / 1000, back.sent, back.bytes / 1e6, (back.wire_bytes or 0) / 1e6))
  sh('diff -r "$1" "$2" -x .git >/dev/null', tree, work .. "/back-" .. label)
  sh('rm -rf -- "$1"', work .. "/back-" .. label)
  local nc = workspace.push(p, id, tree, "~/tree-nc", { parallel = parallel, compress = false })
  print(("push without compression: %d requests%s"):format(nc.execs, streams(nc)))
  -- repo round trip
  local pr, pl
  pr, ms = timed(function()
    return workspace.push_repo(p, id, tree, "~/repo", { branch = "galley/bench-" .. label,
      parallel = parallel })
  end)
  p.exec(id, { kind = "argv", command = "sh", args = { "-c",
    "cd ~/repo && f=$(git ls-files | head -n 1) && echo change >> \"$f\" && "
      .. "git -c user.name=a -c user.email=a@a commit -qam agent" } })
  local ms2
  pl, ms2 = timed(function()
    return workspace.pull_repo(p, id, "~/repo", tree, { branch = "galley/bench-" .. label })
  end)
  print(("repo round trip: push_repo %d requests%s (%.1f s), pull_repo %d requests%s (%.1f s), %d commit(s) back: %s")
    :format(pr.execs, streams(pr), ms / 1000, pl.execs, streams(pl), ms2 / 1000, #pl.commits,
      (pl.log:gsub("\n", " "))))
  if not per_file_done then
    -- one exec per file, as examples/push-dir.lua does (the first 300 files, extrapolated)
    per_file_done = true
    local names = {}
    for line in sh('cd "$1" && find . -path ./.git -prune -o -type f -print | head -n 300', tree):gmatch("[^\n]+") do
      names[#names + 1] = line:sub(3)
    end
    local t0 = runtime.now_ms()
    for _, rel in ipairs(names) do
      p.files.write_file_atomic(id, "~/perfile/" .. rel, { from_file = tree .. "/" .. rel }, { create_dirs = true })
    end
    local per = (runtime.now_ms() - t0) / #names
    print(("one exec per file: %.1f ms per file -> about %.0f s and %d requests for the tree"):format(per,
      per * nfiles / 1000, nfiles))
    -- An agent's node_modules on the instance, ignored by the tree's .gitignore: the instance's
    -- manifest (one exec) listing and hashing it (mode "git", what every push and pull did
    -- before) and leaving it out (mode "ignored", what a push from a work tree and a pull do).
    local n_ignored = 20000
    p.exec(id, { kind = "argv", command = "sh", args = { "-c", [[mkdir -p ~/agent/node_modules/pkg && cd ~/agent &&
      echo node_modules/ > .gitignore && echo src > main.c && head -c $(($1 * 2048)) /dev/urandom |
      split -b 2048 -a 5 - node_modules/pkg/f]], "sh", tostring(n_ignored) } })
    local function manifest(prune)
      local res, mms = timed(function()
        return p.exec(id, { kind = "argv", command = "/bin/sh", args = { "-c", workspace._SH_MANIFEST, "sh",
          "~/agent", prune, "" } })
      end)
      assert(res.exit_code == 0, res.stderr)
      return mms, #res.stdout
    end
    local gms, gbytes = manifest("git")
    local ims, ibytes = manifest("ignored")
    print(("an agent's node_modules on the instance (%d files, ignored): the manifest %d ms, %.2f MB; listing"
      .. " and hashing it %d ms, %.1f MB (%.0fx the time)"):format(n_ignored, ims, ibytes / 1e6, gms, gbytes / 1e6,
      gms / ims))
  end
  local ok, err = pcall(p.instances.terminate, id)
  if not ok then print("(terminate: " .. tostring(err):sub(1, 120) .. ")") end
  p.close()
  emu.stop()
end
print(("peak RSS %d MiB"):format(hwm()))
