--- galley.providers.local: a VM provider whose instances are sandboxes on this machine.
--
--   local provider = require("galley.providers.local").new()
--   local inst = provider.instances.boot(provider.DEFAULT_SNAPSHOT)     -- "snapshot_empty"
--   provider.exec(inst.id, {kind = "argv", command = "uname", args = {"-a"}})
--   provider.files.write_file_atomic(inst.id, "~/.config/app.json", "{}", {create_dirs = true})
--   provider.instances.terminate(inst.id)
--
-- Layout (state dir: opts.state_dir, else GALLEY_STATE_DIR, else ~/.local/state/galley; mode 0700,
-- refused when it is a symlink, another user's or writable by others; see galley.paths):
--   instances/<id>/meta.json   id, status, metadata, TTL, snapshot, cgroup (written atomically,
--                              so every galley process sees the same instances)
--   instances/<id>/home/       the instance's home directory
--   instances/<id>/tmp/        its /tmp (kept across execs, removed with the instance)
--   snapshots/<id>/{meta.json,home/,tmp/}
-- The snapshot "snapshot_empty" (M.DEFAULT_SNAPSHOT) always exists: an empty home and /tmp.
--
-- Sandbox (bubblewrap, when installed and opts.sandbox ~= false), isolation "userns" (the
-- default where user namespaces and subordinate ids work; see docs/api/providers.md, Isolation):
-- every instance has one set of namespaces for its whole life, held by a holder process (a
-- bubblewrap init, pid 1 of the instance's pid namespace, recorded with its start time in
-- meta.json as `holder`): its own user namespace with a full id range (root inside is the
-- caller's subordinate id 100000.. for a root caller, the caller's own uid otherwise; ids
-- 1..65535 are subordinate ids, mapped with newuidmap/newgidmap), no nested user namespaces
-- (user.max_user_namespaces = 0 in it, and no CAP_SYS_RESOURCE to raise it; no CAP_SYS_ADMIN
-- either, so no mounts), pid, ipc, uts, cgroup (and net with network = false) namespaces and a
-- mount namespace, all entered by every exec (`galley __enter`). The holder's filesystem shows only:
-- the system directories read-only (/usr, /bin, /sbin, /lib*, /etc, /opt, /var with its own
-- /var/tmp), a /proc of the instance's pid namespace, a minimal /dev, /sys read-only, a tmpfs
-- /run, the instance's home at `home_dir` (default /root)
-- and its tmp at /tmp. PATH is the system's plus the directories of node, npm, pm2 and the agent
-- CLIs when they live elsewhere (mounted read-only where the holder can enter them, else left
-- out with a warning). The holder outlives
-- the galley process; when it is gone (host reboot) the next exec starts new namespaces (logged).
-- Isolation "none" (no subordinate ids or user namespaces): the same mounts but the host's
-- namespaces (a warning is logged). Without bubblewrap (or sandbox = false), commands run on the
-- host with the caller's rights and HOME (and `~`) at instances/<id>/home, and
-- capabilities.sandbox is false (a warning is logged): absolute paths then touch the host.
--
-- Processes: every exec joins the instance's cgroup v2 (a cgroup2 mount found in
-- /proc/self/mounts that we can write to). pause/resume write cgroup.freeze; terminate writes
-- cgroup.kill and waits until the cgroup is empty, so nothing started in the instance survives,
-- PM2 daemons included. Without cgroups, processes carry GALLEY_INSTANCE_ID=<id> in their
-- environment and are found by scanning /proc/*/environ (SIGSTOP/SIGCONT/SIGKILL). Limitation:
-- a process that replaces its environment (env -i, exec -c) escapes that scan.
--
-- Vocabulary follows Morph: `stop` deletes the instance like `terminate`; `pause` leaves it in
-- status "stopped" until `resume`. TTL actions: "stop"/"terminate" delete at expiry, "pause"
-- pauses; expiry is applied at the start of every provider call; resume re-arms the TTL.
-- Files go through galley.providers.execfiles (exec of argv, like the Morph provider).
local cjson = require("cjson")
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local execfiles = require("galley.providers.execfiles")
local fs = require("galley.core.fs")
local logmod = require("galley.log")
local paths = require("galley.paths")
local proc = require("galley.core.proc")
local run = require("galley.tracker")
local runtime = require("galley.core.runtime")
local task = require("galley.task")

local M = {}

M.NAME = "local"
M.VERSION = "0.1.0"
M.DEFAULT_SNAPSHOT = "snapshot_empty"
M.IMAGE_ID = "local-host"
--- After an exec's cgroup was killed at its time limit, how long the host still reads its output
--- before answering TIMEOUT (a process outside the cgroup may hold its pipes open).
M.CGROUP_PIPE_GRACE_MS = 1000

local TOOL_TIMEOUT_MS = 10 * 60 * 1000
local KILL_WAIT_MS = 15000
-- How long a spawned command's `galley __enter` may take to end once its cgroup is killed.
local ENTER_EXIT_MS = 2000
local FREEZE_WAIT_MS = 5000
local REAP_WAIT_MS = 5000

-- The host-side sh that starts every command: joins the instance's cgroup ($1, "" for none)
-- and execs the rest (the sandbox, or the command itself without one).
local ENTER = 'if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 125; fi; shift; exec "$@"'

-- Inside the sandbox (isolation "none"): change to the working directory ($1; 127 when it is
-- missing, as galley.core.shell's scripts do) and exec the command (127 when it does not exist).
local INNER = 'cd -- "$1" || exit 127; shift; exec "$@"'

-- Starts an instance's holder: $1 instance dir, $2 cgroup ("" for none), $3 "write" (root: the
-- maps are written directly) or "newuidmap", $4 uid map, $5 gid map, $6 a staging directory
-- or "" (root: the holder runs as the subordinate ids $8:$9, which cannot enter the state
-- directory, so `galley __stage` ($7, this galley binary; src/core/stage.h) first binds the
-- instance's home and tmp at STAGE/home and STAGE/tmp, on a tmpfs over STAGE in a private mount
-- namespace, where the directories listed next are also made read-only, so that inside the
-- instance their read-only flag is locked, and then takes those ids), the read-only
-- directories (paths without spaces), "--", then the holder's argv (bwrap with
-- --userns-block-fd 3 --info-fd 4; its command writes "ready" to fd 6 once the sandbox is set
-- up). The holder runs in a session of its own, and waits until its user namespace is mapped
-- and nested user namespaces are disabled in it (`galley __userns-off`); prints the holder's
-- pid once ready. ${10} is a private directory (see launch_dir) with the named pipes block,
-- info and ready, made and removed by launch_holder, and the holder's stderr (log). Only shell
-- builtins besides galley, setsid and the sandbox itself: every process costs a boot time.
local LAUNCH = [[
d=$1 cg=$2 mode=$3 um=$4 gm=$5 stage=$6 exe=$7 uid=$8 gid=$9 l=${10}; shift 10
ro=""
while [ "$1" != -- ]; do ro="$ro $1"; shift; done
shift
if [ -n "$cg" ]; then echo $$ > "$cg/cgroup.procs" || exit 125; fi
b="$l/block" i="$l/info" r="$l/ready"
if [ -n "$stage" ]; then
  set -- "$exe" __stage "$stage" "$d" "$uid" "$gid" $ro -- "$@"
else
  set -- setsid "$@"
fi
exec 7<>"$r"
"$@" 3<"$b" 4>"$i" 6>"$r" 7<&- </dev/null >/dev/null 2>"$l/log" &
exec 5>"$b"
pid=
while IFS= read -r line; do
  case $line in *'"child-pid":'*) pid=${line#*'"child-pid":'}; pid=${pid%%,*}; pid=${pid#"${pid%%[! ]*}"} ;; esac
done < "$i"
case $pid in ''|*[!0-9]*) pid= ;; esac
if [ -z "$pid" ]; then cat "$l/log" >&2; exit 126; fi
fail() { echo "$1" >&2; kill -9 "$pid"; exit 126; }
if [ "$mode" = write ]; then
  printf '%s\n' "$um" > "/proc/$pid/uid_map" || fail "cannot write uid_map"
  printf '%s\n' "$gm" > "/proc/$pid/gid_map" || fail "cannot write gid_map"
else
  newuidmap "$pid" $um || fail "newuidmap failed"
  newgidmap "$pid" $gm || fail "newgidmap failed"
fi
"$exe" __userns-off "$pid" || fail "cannot disable nested user namespaces"
exec 8<"$r" 7>&-
exec 5>&-
read -r ready <&8 || ready=
[ "$ready" = ready ] || fail "the holder did not start: $(cat "$l/log")"
echo "$pid"]]

-- The holder's command inside the sandbox ($1: the instance's home there): see launch_holder.
local HOLDER = [[
echo ready >&6
exec 6>&-; sleep 5
while [ "$(stat -c %h -- "$1" 2>/dev/null)" != 0 ]; do sleep 5; done
kill -KILL -1]]

local SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
-- Programs agents need that may live outside the system directories (their prefix is mounted).
local AGENT_TOOLS = { "node", "npm", "npx", "pm2", "claude", "codex", "gemini" }


local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end


local function write_raw(path, data)
  local f, err = io.open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(data)
  f:close()
  if not ok then return nil, werr end
  return true
end


-- Runs a host tool (mkdir, cp, rm, kill); raises PROCESS_ERROR when it fails.
local function tool(argv, what)
  local r, err = proc.run({ argv = argv, timeout_ms = TOOL_TIMEOUT_MS })
  if not r then
    if errors.is(err, "INTERRUPTED") then error(err, 0) end
    common.raise("PROCESS_ERROR", ("%s: %s"):format(what or argv[1], tostring(err)), { cause = err })
  end
  if r.exit_code ~= 0 then
    common.raise("PROCESS_ERROR", ("%s failed (exit %d): %s"):format(what or argv[1], r.exit_code,
      common.tail(r.stderr, 500)), { details = { exit_code = r.exit_code, stderr = common.tail(r.stderr) } })
  end
  return r
end


-- Directory operations done in this process (a process each would cost every boot its time);
-- failures raise PROCESS_ERROR like `tool`. op: "mkdir" (path, mode), "mkdir_p" (path) or
-- "chown" (path, uid, gid).
local function fs_op(op, what, ...)
  local ok, err = fs[op](...)
  if not ok then common.raise("PROCESS_ERROR", ("%s: %s"):format(what, tostring(err)), { cause = err }) end
end


-- The running galley binary, whose __stage and __enter modes set up and enter sandboxes (read
-- once: every exec needs it).
local exe_path
local function galley_exe()
  if not exe_path then
    local path, err = runtime.executable()
    if not path then
      common.raise("PROCESS_ERROR", "cannot find the galley binary: " .. tostring(err), { cause = err })
    end
    exe_path = path
  end
  return exe_path
end


-- An instance directory's home/ (0700) and tmp/ (tmp_mode), owned by the instance's root when
-- galley runs as root (they are bound into the sandbox).
local function make_home_and_tmp(dir, ident, tmp_mode)
  fs_op("mkdir", "create home", dir .. "/home", "0700")
  fs_op("mkdir", "create tmp", dir .. "/tmp", tmp_mode)
  if ident and ident.root then
    fs_op("chown", "chown home", dir .. "/home", ident.uid, ident.gid)
    fs_op("chown", "chown tmp", dir .. "/tmp", ident.uid, ident.gid)
  end
end


-- Names in a directory ({} when it does not exist).
local function list_names(dir)
  local names = fs.list(dir)
  return names or {}
end


-- rmdir of a cgroup and of the child cgroups an instance may have made inside it (bottom-up).
local function remove_cgroup(dir)
  for _, name in ipairs(list_names(dir)) do
    local st = fs.stat(dir .. "/" .. name)
    if st and st.type == "directory" then remove_cgroup(dir .. "/" .. name) end
  end
  return os.remove(dir)
end


-- The mount point of a writable cgroup2 hierarchy where instance cgroups can be made, or nil.
local function detect_cgroup_root(explicit)
  local mount = explicit
  if not mount then
    local mounts = read_all("/proc/self/mounts") or ""
    for line in mounts:gmatch("[^\n]+") do
      local _, dir, fstype, options = line:match("^(%S+) (%S+) (%S+) (%S+)")
      if fstype == "cgroup2" and options:match("^rw") then
        mount = dir:gsub("\\040", " ")
        break
      end
    end
  end
  if not mount then return nil, "no cgroup2 mount in /proc/self/mounts" end
  local base = mount .. "/galley"
  local ok = pcall(tool, { "mkdir", "-p", base }, "mkdir cgroup")
  if not ok then return nil, "cannot create " .. base end
  local probe = base .. "/probe-" .. codec.random_hex(4)
  if not pcall(tool, { "mkdir", probe }, "mkdir cgroup") then return nil, "cannot create cgroups under " .. base end
  local usable = fs.exists(probe .. "/cgroup.freeze") and fs.exists(probe .. "/cgroup.kill")
  os.remove(probe)
  if not usable then return nil, "cgroup.freeze or cgroup.kill missing (kernel older than 5.14?)" end
  return base
end


-- The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses):
-- [1] state, [2] ppid, [3] pgrp, ... [20] start time; nil when the process is gone or a zombie.
local function proc_stat(pid)
  local stat = pid and read_all("/proc/" .. tostring(math.tointeger(pid) or pid) .. "/stat")
  if not stat then return nil end
  local rest = stat:match("^.*%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
  if fields[1] == "Z" or fields[1] == "X" then return nil end
  return fields
end

-- The start time of process `pid` (field 22 of /proc/PID/stat, as a string), or nil when it
-- is gone or a zombie: with the pid, it names one process (pids are reused). Also its parent's
-- pid (field 4), from the same read.
local function proc_start(pid)
  local fields = proc_stat(pid)
  if not fields then return nil end
  return fields[20], math.tointeger(tonumber(fields[2]))
end


-- The caller's effective uid and gid and user name.
local function caller_ids()
  local status = read_all("/proc/self/status") or ""
  local uid = tonumber(status:match("\nUid:%s+%d+%s+(%d+)"))
  local gid = tonumber(status:match("\nGid:%s+%d+%s+(%d+)"))
  local name
  for line in (read_all("/etc/passwd") or ""):gmatch("[^\n]+") do
    local n, u = line:match("^([^:]*):[^:]*:(%d+):")
    if n and tonumber(u) == uid then
      name = n
      break
    end
  end
  return uid, gid, name
end


-- The first subordinate id range of the user (by name or uid) in /etc/subuid or /etc/subgid
-- with at least `need` ids: start, count.
local function subid_range(file, name, id, need)
  for line in (read_all(file) or ""):gmatch("[^\n]+") do
    local who, start, count = line:match("^%s*([^:#%s]+):(%d+):(%d+)")
    if who and (who == name or who == tostring(id)) and tonumber(count) >= need then
      return math.tointeger(tonumber(start)), math.tointeger(tonumber(count))
    end
  end
  return nil
end


-- How instances get their user namespace here (isolation "userns"), or nil and why not.
-- Root: root inside is the first subordinate id (a user that owns nothing on the host), the
-- holder and every exec run as it, and the maps are written directly. Others: root inside is
-- the caller, ids 1..65535 come from the caller's subordinate range through newuidmap/newgidmap.
local function detect_identity()
  local uid, gid, name = caller_ids()
  if not uid or not gid then return nil, "cannot read the caller's ids from /proc/self/status" end
  for _, t in ipairs({ "setsid", "unshare" }) do
    if not proc.which(t) then return nil, t .. " not found" end
  end
  local need = uid == 0 and 65536 or 65535
  local su = subid_range("/etc/subuid", name, uid, need)
  local sg = subid_range("/etc/subgid", name, uid, need)
  if not su or not sg then
    return nil, ("no range of %d subordinate ids for %s in /etc/subuid and /etc/subgid"):format(need,
      name or tostring(uid))
  end
  if uid == 0 then
    return {
      root = true, uid = su, gid = sg, map_mode = "write",
      uid_map = ("0 %d 65536"):format(su), gid_map = ("0 %d 65536"):format(sg),
    }
  end
  if not proc.which("newuidmap") or not proc.which("newgidmap") then
    return nil, "newuidmap/newgidmap not found (Debian package uidmap)"
  end
  return {
    root = false, uid = uid, gid = gid, map_mode = "newuidmap",
    uid_map = ("0 %d 1 1 %d 65535"):format(uid, su), gid_map = ("0 %d 1 1 %d 65535"):format(gid, sg),
  }
end


-- Whether `path` is `root` or below it.
local function under(path, root)
  return path == root or path:sub(1, #root + 1) == root .. "/"
end


-- The read-only host part of every sandbox: bwrap arguments, the PATH inside and the agent
-- programs left out (installed where the holder cannot enter).
-- `private` lists host directories that must never show (state, config, the caller's home):
-- any of them below a mounted directory is covered by an empty tmpfs.
local function system_mounts(private, reachable)
  local args, skipped = {}, {}
  local function add(...)
    for _, a in ipairs({ ... }) do args[#args + 1] = a end
  end
  local roots = { "/usr" }
  add("--ro-bind", "/usr", "/usr")
  for _, d in ipairs({ "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32" }) do
    local st = fs.stat(d)
    if st and st.type == "link" then
      local target = fs.realpath(d)
      if target then add("--symlink", target, d) end
    elseif st and st.type == "directory" then
      add("--ro-bind", d, d)
      roots[#roots + 1] = d
    end
  end
  for _, d in ipairs({ "/etc", "/opt", "/var" }) do
    if fs.exists(d) then
      add("--ro-bind", d, d)
      roots[#roots + 1] = d
    end
  end
  if fs.exists("/var/tmp") then add("--tmpfs", "/var/tmp") end
  add("--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--ro-bind", "/sys", "/sys", "--tmpfs", "/run")
  -- DNS: resolv.conf may point into the host's /run (systemd-resolved).
  local resolv = fs.realpath("/etc/resolv.conf")
  if resolv and under(resolv, "/run") then add("--ro-bind", resolv, resolv) end
  local path = SYSTEM_PATH
  -- node, npm, pm2 and agent CLIs installed elsewhere (nvm, ~/.local): read-only, their npm
  -- prefix (bin/ and lib/node_modules/) when the program lives there, else its directory and
  -- the file it links to. `reachable(path)` says whether the holder can enter it (a root
  -- caller's holder runs as a subordinate id: not below /root, for instance).
  local extra = {}
  local function mount_ro(src)
    if not extra[src] and reachable(src) then
      extra[src] = true
      add("--ro-bind", src, src)
      roots[#roots + 1] = src
      return true
    end
    return extra[src] == true
  end
  for _, tool_name in ipairs(AGENT_TOOLS) do
    local found = proc.which(tool_name)
    local bin = found and found:match("^(.*)/[^/]+$")
    local in_system = false
    if bin then
      for _, r in ipairs(roots) do
        if under(bin, r) then in_system = true end
      end
    end
    if bin and not in_system then
      local prefix = bin:match("^(.*)/[^/]+$") or ""
      local real = fs.realpath(found) or found
      local ok
      if prefix ~= "" and under(real, prefix .. "/lib/node_modules") then
        ok = mount_ro(prefix)
      else
        ok = mount_ro(bin)
        if ok and not under(real, bin) then ok = mount_ro(real) end
      end
      if ok and not path:find(":" .. bin, 1, true) then path = path .. ":" .. bin end
      if not ok then skipped[#skipped + 1] = found end
    end
  end
  for _, dir in ipairs(private) do
    local st = fs.stat(dir)
    if st and st.type == "directory" then
      for _, r in ipairs(roots) do
        if under(dir, r) and dir ~= r then
          add("--tmpfs", dir)
          break
        end
      end
    end
  end
  return args, path, skipped
end


-- A fresh private directory for one launch's named pipes and the holder's stderr: in /dev/shm
-- (a tmpfs: a boot then creates and deletes no inodes on the state directory's disk for them,
-- which on ext4 cost more than the rest of a boot's own work) when it can be used, else in the
-- instance directory `dir`. Returns its path, or nil, err. The name carries this process's
-- pid: the first launch of a process removes the ones of processes that are gone (killed in the
-- few milliseconds of a launch), if they are this user's.
local shm_ok = nil
local function sweep_launch_dirs()
  local uid = select(2, runtime.getuid())
  for _, name in ipairs(fs.list("/dev/shm") or {}) do
    local pid = name:match("^galley%-launch%-(%d+)%-%x+$")
    local path = "/dev/shm/" .. name
    local st = pid and fs.stat(path)
    if st and st.type == "directory" and st.uid == uid and not fs.stat("/proc/" .. pid) then
      fs.remove_tree(path)
    end
  end
end

local function launch_dir(dir)
  if shm_ok == nil then
    local st = fs.stat("/dev/shm")
    shm_ok = st ~= nil and st.type == "directory"
    if shm_ok then pcall(sweep_launch_dirs) end
  end
  if shm_ok then
    for _ = 1, 3 do
      local l = ("/dev/shm/galley-launch-%d-%s"):format(runtime.getpid(), codec.random_hex(8))
      if fs.mkdir(l, "0700") then return l end
    end
    shm_ok = false
  end
  local l = dir .. "/.launch-" .. codec.random_hex(4)
  local ok, err = fs.mkdir(l, "0700")
  if not ok then return nil, err end
  return l
end


-- Starts the holder of an instance's namespaces (see LAUNCH): {pid, start} or nil, err.
-- `dir` is the instance directory (home/ and tmp/); `cgroup` (or nil) is joined first. The
-- holder's mount namespace is the instance's filesystem.
local function launch_holder(bwrap, ident, dir, cgroup, network, mounts, home_dir, env)
  local l, lerr = launch_dir(dir)
  if not l then return nil, tostring(lerr) end
  local argv = { "/bin/sh", "-c", LAUNCH, "launch", dir, cgroup or "", ident.map_mode, ident.uid_map, ident.gid_map,
    ident.stage or "", galley_exe(), tostring(ident.uid), tostring(ident.gid), l }
  for i = 1, #mounts - 2 do
    if mounts[i] == "--ro-bind" and not mounts[i + 1]:find("%s") then argv[#argv + 1] = mounts[i + 1] end
  end
  argv[#argv + 1] = "--"
  for _, a in ipairs({ bwrap, "--unshare-user", "--userns-block-fd", "3", "--info-fd", "4", "--unshare-pid",
    "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--new-session" }) do argv[#argv + 1] = a end
  if not network then argv[#argv + 1] = "--unshare-net" end
  for _, a in ipairs(mounts) do argv[#argv + 1] = a end
  local home_src = ident.stage and (ident.stage .. "/home") or (dir .. "/home")
  local tmp_src = ident.stage and (ident.stage .. "/tmp") or (dir .. "/tmp")
  -- The holder tells LAUNCH (on fd 6) that its filesystem is complete, then sleeps. It outlives
  -- galley on purpose (an instance lives until terminated), but not its instance directory:
  -- once that is deleted (the state directory removed by hand, an emulator's temporary state
  -- gone with a killed emulator) the home it binds has no links left, and the holder exits,
  -- which ends everything in its pid namespace.
  for _, a in ipairs({ "--bind", home_src, home_dir, "--bind", tmp_src, "/tmp", "--chdir", "/", "--",
    "/bin/sh", "-c", HOLDER, "galley-holder", home_dir }) do argv[#argv + 1] = a end
  local function remove_launch_dir()
    for _, f in ipairs({ "block", "info", "ready", "log" }) do fs.remove(l .. "/" .. f) end
    fs.remove(l)
  end
  for _, f in ipairs({ "block", "info", "ready" }) do
    local ok, ferr = fs.mkfifo(l .. "/" .. f, "600")
    if not ok then
      remove_launch_dir()
      return nil, tostring(ferr)
    end
  end
  local r, err = proc.run({ argv = argv, env = env, env_mode = "replace", timeout_ms = 60000, cwd = "/" })
  remove_launch_dir() -- the holder keeps its stderr open, unlinked
  if not r then return nil, err end
  local pid = r.exit_code == 0 and math.tointeger(tonumber(r.stdout:match("(%d+)%s*$")))
  local start = pid and proc_start(pid)
  if not start then
    return nil, ("could not start the instance's namespaces (exit %d): %s"):format(r.exit_code,
      common.tail(r.stderr, 500))
  end
  return { pid = pid, start = start }
end


-- Whether `holder` still runs (its pid names the same process), and then its parent's pid when
-- that is bwrap, outside the instance's namespaces (it carries the instance's marker too).
local function holder_bwrap(holder)
  local start, parent = proc_start(holder and holder.pid)
  if not holder or start ~= holder.start then return false end
  if parent and parent > 1 and (read_all("/proc/" .. parent .. "/comm") or ""):match("^bwrap") then
    return true, parent
  end
  return true
end


-- SIGKILLs a holder (pid 1 of the instance's pid namespace: the kernel then kills every process
-- in it) unless its pid now names another process; waits until it is gone. Its parent, bwrap
-- outside the namespace, reaps it; an instance paused without cgroups by an earlier galley had
-- bwrap stopped too (SIGSTOP to every process with the instance's marker; pause now leaves it
-- out), so it is continued: stopped, it never reaped the holder and stayed for good, a stopped
-- bwrap and a zombie per terminated instance.
local function kill_holder(holder)
  local live, bwrap_pid = holder_bwrap(holder)
  if not live then return end
  runtime.kill(holder.pid, "KILL")
  if bwrap_pid then pcall(runtime.kill, bwrap_pid, "CONT") end
  local deadline = runtime.now_ms() + 10000
  while proc_start(holder.pid) == holder.start and runtime.now_ms() < deadline do
    local ok, err = runtime.sleep_ms(10)
    if not ok then error(err, 0) end
  end
end


-- The argv of an exec in the instance's namespaces (isolation "userns"), to which the command
-- is appended: `galley __enter` (src/core/enter.h) checks that the holder is still the process
-- that started at holder.start (125 otherwise: a reused pid is never joined), enters its
-- namespaces and makes the command's process directly inside the instance's cgroup (clone3
-- CLONE_INTO_CGROUP: writing cgroup.procs would wait 10-20 ms for an RCU grace period), as uid
-- 0; the command runs with no new
-- privileges, without CAP_SYS_RESOURCE (so user.max_user_namespaces stays 0) and CAP_SYS_ADMIN
-- (no mounts: the read-only system directories stay read-only even where the flag is not
-- locked, as for a caller other than root), in a session of its own (galley's terminal, if
-- any, is not its controlling terminal, so it cannot inject input there), in `cwd` (127 when
-- missing), and dies with the host-side process (parent-death signal), which a timeout or
-- kill of the exec reaches.
local function ns_exec_argv(holder, cgroup, network, cwd)
  return { galley_exe(), "__enter", cgroup or "", tostring(holder.pid), holder.start,
    network and "" or "net", cwd, "--" }
end


local probe_cache = {}

--- Whether instances can get their own namespaces here: boots a holder in a scratch directory
--- under `state_dir`, runs a check in it and kills it (once per process, state dir and id map).
---@return boolean ok
---@return string|nil why
-- What the probe's answer depends on, as one string: this boot (the kernel, and its settings
-- as they were: a setting changed since is seen after PROBE_KEEP_S), the bwrap and galley
-- binaries, the id maps, the staging directory and the mounts.
local function probe_fingerprint(bwrap, ident, mounts)
  local parts = { "galley isolation probe 1", read_all("/proc/sys/kernel/random/boot_id") or "no boot id",
    ident.uid_map, ident.gid_map or "", ident.stage or "", table.concat(mounts, "\0") }
  for _, file in ipairs({ bwrap, galley_exe() }) do
    local st = fs.stat(file)
    parts[#parts + 1] = file .. (st and (" %d %d %d"):format(st.size, st.mtime_ns or st.mtime, st.ino or 0) or " gone")
  end
  return codec.sha256(table.concat(parts, "\n")) .. "\n"
end

M.PROBE_KEEP_S = 3600

function M.probe_isolation(bwrap, ident, state_dir, mounts)
  local key = state_dir .. "\0" .. ident.uid_map
  if probe_cache[key] ~= nil then return probe_cache[key][1], probe_cache[key][2] end
  -- A success is also kept on disk for PROBE_KEEP_S, so that every galley command does not pay a
  -- sandbox launch (~60 ms here) to learn it again: valid for this boot, these binaries
  -- (size, mtime, inode), these id maps and mounts only. (The state directory is the caller's
  -- own and no one else's to write: checked before this.)
  local saved, fingerprint = state_dir .. "/.isolation-probe", probe_fingerprint(bwrap, ident, mounts)
  local st = fs.stat(saved)
  local age = st and os.time() - st.mtime
  if age and age >= 0 and age < M.PROBE_KEEP_S and read_all(saved) == fingerprint then
    probe_cache[key] = { true }
    return true
  end
  local dir = state_dir .. "/.probe-" .. codec.random_hex(4)
  local ok, why = pcall(function()
    fs_op("mkdir", "create the probe directory", dir, "0700")
    make_home_and_tmp(dir, ident, "0700")
    local env = { PATH = SYSTEM_PATH }
    local holder, err = launch_holder(bwrap, ident, dir, nil, true, mounts, "/root", env)
    if not holder then error(tostring(err), 0) end
    local argv = ns_exec_argv(holder, nil, true, "/")
    for _, a in ipairs({ "/bin/sh", "-c",
      "touch /root/.probe || exit 4; unshare -U true 2>/dev/null && exit 3; exit 0" }) do argv[#argv + 1] = a end
    local r = proc.run({ argv = argv, env = env, env_mode = "replace", timeout_ms = 30000, cwd = "/" })
    kill_holder(holder)
    if not r then error(tostring(err), 0) end
    if r.exit_code ~= 0 then
      error(("an exec in the instance's namespaces failed (exit %d): %s"):format(r.exit_code,
        common.tail(r.stderr, 300)), 0)
    end
  end)
  pcall(tool, { "rm", "-rf", "--", dir })
  if ok then fs.write_atomic(saved, fingerprint, { mode = "600" }) else os.remove(saved) end
  probe_cache[key] = { ok, not ok and tostring(why) or nil }
  return probe_cache[key][1], probe_cache[key][2]
end


---@class galley.LocalProviderOptions
---@field state_dir? string default GALLEY_STATE_DIR, else ~/.local/state/galley
---@field sandbox? boolean false: never use bubblewrap; true: fail when it does not work
---@field home_dir? string the home directory inside the sandbox (default /root)
---@field isolation? "userns"|"none" default: "userns" where it works (else "none", with a warning)
---@field network? boolean false: instances have no network (loopback only); default: the host's
---@field cgroups? boolean false: track processes by environment even when cgroup v2 works
---@field cgroup_root? string a cgroup2 mount point to use instead of the detected one
---@field size_limit? integer largest file the files API moves (default 256 MiB)
---@field file_parallel? integer chunk execs in flight for one large file transfer (default 4)
---@field max_output? integer per-stream output cap of one exec (default: galley.core.proc's)
---@field exec_timeout_ms? integer time limit of one exec (default none)
---@field log? galley.Logger
---@field clock? fun(): integer Unix seconds for TTLs (default os.time; tests move time forward)

--- Creates a local provider.
---@param opts? galley.LocalProviderOptions
---@return table provider `{name, version, capabilities, instances, snapshots, images, files, exec}`
---@raise VALIDATION_ERROR (home_dir missing on the host) | UNSAFE_PATH (state dir a symlink, another user's or
--- writable by others) | FILE_IO_ERROR (state dir cannot be created)
function M.new(opts)
  opts = opts or {}
  local log = opts.log or logmod.new({ prefix = "local" })
  local now = opts.clock or os.time
  local expired_at -- the clock's second of the last TTL sweep (expire)
  -- The state directory and its instances/ and snapshots/ are this user's alone (0700; a
  -- symlink, another user's or a group/other-writable directory is refused with UNSAFE_PATH).
  local state_dir = paths.private_dir(opts.state_dir or paths.state_dir())
  paths.private_dir(state_dir .. "/instances")
  paths.private_dir(state_dir .. "/snapshots")
  state_dir = fs.realpath(state_dir) or state_dir:gsub("/+$", "")
  local instances_dir, snapshots_dir = state_dir .. "/instances", state_dir .. "/snapshots"

  -- Sandbox.
  local bwrap = opts.sandbox ~= false and proc.which("bwrap") or nil
  local home_dir = opts.home_dir or "/root"
  local bad_home = type(home_dir) ~= "string" or home_dir:sub(1, 1) ~= "/" or home_dir == "/"
    or (home_dir .. "/"):find("/%.%.?/") ~= nil
  if bad_home then
    common.raise("VALIDATION_ERROR", "home_dir must be an absolute path below /, got " .. tostring(home_dir),
      { field = "home_dir", hint = "e.g. /root or /home/agent" })
  end
  if opts.isolation ~= nil and opts.isolation ~= "userns" and opts.isolation ~= "none" then
    common.raise("VALIDATION_ERROR", "isolation must be \"userns\" or \"none\", got " .. tostring(opts.isolation),
      { field = "isolation" })
  end
  local network = opts.network ~= false
  local host_home = paths.home()
  local private = { state_dir, host_home }
  local config_home = os.getenv("XDG_CONFIG_HOME")
  config_home = (config_home and config_home ~= "") and config_home or (host_home .. "/.config")
  private[#private + 1] = config_home .. "/galley"
  private[#private + 1] = paths.config_dir()
  local mounts, sandbox_path = {}, SYSTEM_PATH
  local sandbox, isolation, ident = false, "none", nil
  if bwrap then
    local why
    if opts.isolation ~= "none" then ident, why = detect_identity() end
    -- A root caller's holder runs as a subordinate id: it enters only world-searchable paths.
    -- Nor can a program be shown below /tmp or the home: those are the instance's own.
    local function reachable(path)
      if under(path, "/tmp") or under(path, home_dir) then return false end
      if not (ident and ident.root) then return true end
      local dir = ""
      for part in path:gmatch("[^/]+") do
        local st = fs.stat(dir == "" and "/" or dir)
        if not st or st.mode & 1 == 0 then return false end
        dir = dir .. "/" .. part
      end
      return true
    end
    local skipped
    mounts, sandbox_path, skipped = system_mounts(private, reachable)
    if ident and ident.root then
      -- The staging mount point (hidden in the holder's private mount namespace only): an
      -- existing directory that holds none of what the holder binds.
      local sources = { state_dir }
      for i = 1, #mounts - 2 do
        if mounts[i] == "--ro-bind" then sources[#sources + 1] = mounts[i + 1] end
      end
      for _, c in ipairs({ "/mnt", "/media", "/srv", "/boot", "/home", "/tmp" }) do
        local st = fs.stat(c)
        local clear = st and st.type == "directory"
        for _, src in ipairs(sources) do
          if clear and under(src, c) then clear = false end
        end
        if clear then
          ident.stage = c
          break
        end
      end
      if not ident.stage then ident, why = nil, "no directory to stage the instances' files in" end
    end
    if #skipped > 0 then
      log.warn("programs installed where instances cannot see them (install them system-wide)",
        { programs = table.concat(skipped, " ") })
    end
    if opts.isolation ~= "none" then
      if ident then
        local ok, perr = M.probe_isolation(bwrap, ident, state_dir, mounts)
        if ok then isolation = "userns" else ident, why = nil, perr end
      end
      if not ident then
        if opts.isolation == "userns" then
          common.raise("PROCESS_ERROR", "instances cannot get their own user namespace here: " .. tostring(why),
            { hint = "run scripts/setup (uidmap and subordinate ids in /etc/subuid and /etc/subgid)" })
        end
        log.warn("instances share this machine's pid namespace and get no id range of their own "
          .. "(isolation \"none\")", { reason = why })
      end
    end
    if isolation == "none" then
      local argv = { bwrap, table.unpack(mounts) }
      argv[#argv + 1] = "--"
      argv[#argv + 1] = "/bin/true"
      local r = proc.run({ argv = argv, timeout_ms = 30000 })
      if r and r.exit_code == 0 then
        sandbox = true
      elseif opts.sandbox == true then
        common.raise("PROCESS_ERROR", "bubblewrap cannot create a sandbox here: "
          .. (r and common.tail(r.stderr, 300) or "bwrap could not be started"), {})
      else
        log.warn("bubblewrap does not work here; instances run unsandboxed with the caller's rights",
          { reason = r and common.tail(r.stderr, 300) })
      end
    else
      sandbox = true
    end
  elseif opts.sandbox == true then
    common.raise("VALIDATION_ERROR", "sandbox = true but bwrap is not installed", { field = "sandbox" })
  end
  if not sandbox and not network then
    common.raise("VALIDATION_ERROR", "network = false needs the sandbox (bubblewrap)", { field = "network" })
  end
  if not sandbox and not bwrap then
    log.warn(opts.sandbox == false
      and "sandbox = false: instance commands run on this machine with the caller's rights (HOME in their directory)"
      or "bubblewrap (bwrap) not found; instance commands run on this machine with the caller's rights")
  end

  -- Process tracking.
  local cgroup_base, cg_why
  if opts.cgroups ~= false then
    cgroup_base, cg_why = detect_cgroup_root(opts.cgroup_root)
    if not cgroup_base then
      log.warn("cgroup v2 unavailable; tracking instance processes by environment", { reason = cg_why })
    end
  end

  local provider = {
    name = M.NAME,
    version = M.VERSION,
    DEFAULT_SNAPSHOT = M.DEFAULT_SNAPSHOT,
    state_dir = state_dir,
    capabilities = {
      home_dir = sandbox and home_dir or nil,
      home_dir_per_instance = not sandbox,
      sandbox = sandbox,
      -- "userns": own user (full id range), pid, ipc and uts namespaces; "none": the host's.
      isolation = sandbox and isolation or "none",
      network = network,
      process_tracking = cgroup_base and "cgroup" or "environ",
      -- Without cgroups the instance's processes are found by this variable: process managers
      -- that clean an environment (PM2's app env) must keep it, or their daemons escape terminate.
      keep_env = (not cgroup_base) and { "GALLEY_INSTANCE_ID" } or nil,
      pause = true,
      snapshots = true,
      fork = true,
      -- exec streams output to opts.on_stdout/on_stderr as it arrives
      exec_stream = true,
      max_file_bytes = opts.size_limit or execfiles.DEFAULT_SIZE_LIMIT,
    },
    instances = {},
    snapshots = {},
    images = {},
  }

  local function inst_dir(id) return instances_dir .. "/" .. id end
  -- Host tools that touch files made inside instances: for a caller other than root those
  -- files may belong to its subordinate ids, so the tool runs in a user namespace with the
  -- instances' id map (unshare --map-root-user --map-auto).
  local owner_prefix = (ident and not ident.root) and { "unshare", "--map-root-user", "--map-auto", "--" } or {}
  local function owner_tool(argv, what)
    local full = {}
    for _, a in ipairs(owner_prefix) do full[#full + 1] = a end
    for _, a in ipairs(argv) do full[#full + 1] = a end
    return tool(full, what or argv[1])
  end
  -- Instance cgroups are <base>/<state tag>_<id>: the tag keeps state dirs apart.
  local cgroup_tag = codec.sha256(state_dir):sub(1, 8)
  if cgroup_base then
    -- Empty cgroups left behind when killed processes were slow to be reaped (rmdir fails on a
    -- cgroup that still has processes), for instances of this state dir that no longer exist.
    for _, name in ipairs(list_names(cgroup_base)) do
      local id = name:match("^" .. cgroup_tag .. "_(.+)$")
      if id and not fs.exists(inst_dir(id)) then remove_cgroup(cgroup_base .. "/" .. name) end
    end
  end
  local function snap_dir(id) return snapshots_dir .. "/" .. id end

  -- Ids name directories: common.check_id refuses anything else (".", "..", "/") up front.
  local function valid_id(id, field)
    common.check_id(id, field or "instance_id")
    return true
  end

  -- meta.json ------------------------------------------------------------------------------
  local function load_meta(dir)
    local text = read_all(dir .. "/meta.json")
    if not text then return nil end
    local ok, meta = pcall(cjson.decode, text)
    if not ok or type(meta) ~= "table" then return nil end
    for _, k in ipairs({ "created_at", "ttl_seconds", "expires_at" }) do
      if type(meta[k]) == "number" then meta[k] = math.tointeger(meta[k]) or meta[k] end
    end
    if type(meta.metadata) ~= "table" then meta.metadata = {} end
    local h = meta.holder
    if type(h) ~= "table" or not math.tointeger(h.pid) or type(h.start) ~= "string" then
      meta.holder = nil
    else
      h.pid = math.tointeger(h.pid)
    end
    return meta
  end

  local function save_meta(dir, meta)
    local tmp = dir .. "/.meta.json." .. codec.random_hex(4)
    local ok, err = write_raw(tmp, cjson.encode(meta))
    if ok then ok, err = os.rename(tmp, dir .. "/meta.json") end
    if not ok then
      os.remove(tmp)
      common.raise("FILE_IO_ERROR", "cannot write " .. dir .. "/meta.json: " .. tostring(err),
        { resource = "file:" .. dir .. "/meta.json" })
    end
  end

  local function public_instance(meta)
    local md = {}
    for k, v in pairs(meta.metadata or {}) do md[k] = v end
    return {
      object = "instance",
      id = meta.id,
      status = meta.status,
      metadata = md,
      created_at = meta.created_at,
      snapshot_id = meta.snapshot_id,
      ttl = common.ttl_table(meta.ttl_seconds, meta.ttl_action, meta.expires_at),
      forked_from = meta.forked_from,
      host_dir = inst_dir(meta.id),
    }
  end

  local function public_snapshot(meta)
    local md = {}
    for k, v in pairs(meta.metadata or {}) do md[k] = v end
    return {
      object = "snapshot",
      id = meta.id,
      status = meta.status or "ready",
      metadata = md,
      created_at = meta.created_at,
      instance_id = meta.instance_id,
      digest = meta.digest,
      host_dir = meta.id ~= M.DEFAULT_SNAPSHOT and snap_dir(meta.id) or nil,
    }
  end

  local function not_found(kind, id, operation)
    return common.error("NOT_FOUND", ("no %s %s"):format(kind, tostring(id)),
      { operation = operation, resource = kind .. ":" .. tostring(id) })
  end

  local function must_instance(id, operation)
    if not valid_id(id) then error(not_found("instance", id, operation), 0) end
    local meta = load_meta(inst_dir(id))
    if not meta then error(not_found("instance", id, operation), 0) end
    return meta
  end

  -- Processes ------------------------------------------------------------------------------
  local function cgroup_dir(meta)
    return meta.cgroup
  end

  local function write_control(path, value)
    local ok, err = write_raw(path, value)
    if not ok then
      common.raise("PROCESS_ERROR", ("cannot write %s: %s"):format(path, tostring(err)), {})
    end
  end

  local function wait_for(cond, limit_ms, what)
    local start = runtime.now_ms()
    while not cond() do
      if runtime.now_ms() - start > limit_ms then
        common.raise("TIMEOUT", what .. " did not happen in time", { details = { waited_ms = limit_ms } })
      end
      local ok, err = runtime.sleep_ms(10)
      if not ok then error(err, 0) end
    end
  end

  local function cgroup_events(dir)
    local text = read_all(dir .. "/cgroup.events") or ""
    return {
      populated = text:match("populated (%d)") == "1",
      frozen = text:match("frozen (%d)") == "1",
    }
  end

  -- Pids whose environment says they belong to instance `id` (the fallback tracking).
  local function environ_pids(id)
    local needle = "\0GALLEY_INSTANCE_ID=" .. id .. "\0"
    local self_pid = runtime.getpid()
    local pids = {}
    for _, name in ipairs(list_names("/proc")) do
      local pid = tonumber(name)
      if pid and pid ~= self_pid then
        local env = read_all("/proc/" .. name .. "/environ")
        if env and ("\0" .. env):find(needle, 1, true) then pids[#pids + 1] = name end
      end
    end
    return pids
  end

  local function signal_pids(pids, sig)
    if #pids == 0 then return end
    local argv = { "kill", "-s", sig, "--" }
    for _, p in ipairs(pids) do argv[#argv + 1] = p end
    proc.run({ argv = argv, timeout_ms = 10000 }) -- some may have exited already: not an error
  end

  local function ensure_cgroup(meta)
    local dir = cgroup_dir(meta)
    if dir and not fs.exists(dir) then fs_op("mkdir_p", "mkdir cgroup", dir) end
  end

  -- Every exec and spawn runs in a cgroup of its own below the instance's (where it has one), so
  -- that a command killed (its time limit, Ctrl-C, a spawned handle's kill or close while it runs)
  -- takes everything it started with it: before, only its process group died, and what had left
  -- it (a nested `timeout`, setsid) ran on in the instance, holding the command's pipes (its
  -- exec waited for the backstop, a spawned handle's wait forever). What a command that ended by
  -- itself leaves running (a daemon: PM2's) is left alone; its cgroup goes with the instance's.
  local function command_cgroup(meta)
    local parent = cgroup_dir(meta)
    if not parent then return nil end
    local dir = parent .. "/cmd-" .. codec.random_hex(6)
    if not fs.mkdir_p(dir) then return nil end -- (then the instance's, as before)
    return dir
  end

  local function kill_cgroup(dir) return write_raw(dir .. "/cgroup.kill", "1") end

  -- Kills what runs in a command's cgroup (`kill`), then removes it once empty; a cgroup that
  -- still holds a daemon stays.
  local function end_command_cgroup(dir, kill)
    if not dir then return end
    if kill and kill_cgroup(dir) then
      pcall(wait_for, function() return not cgroup_events(dir).populated end, 2000, "emptying " .. dir)
    end
    os.remove(dir)
  end

  -- Sends `sig` to every process of process group `pgid` (as this machine sees it) but `except`;
  -- true when one got it.
  local function signal_group(pgid, sig, except)
    local sent = false
    for _, name in ipairs(list_names("/proc")) do
      local pid = math.tointeger(tonumber(name))
      local fields = pid and pid ~= except and proc_stat(pid)
      if fields and math.tointeger(tonumber(fields[3])) == pgid and runtime.kill(pid, sig) then sent = true end
    end
    return sent
  end

  -- The Linux numbers of the signals a spawned command's kill() passes on.
  local SIGNUM = { HUP = 1, INT = 2, QUIT = 3, USR1 = 10, USR2 = 12, TERM = 15 }

  -- True when the hex mask after `key` in a /proc/PID/status text holds signal n.
  local function mask_has(status, key, n)
    local hex = status:match("\n" .. key .. ":%s*(%x+)")
    local low = hex and tonumber(hex:sub(-4), 16) -- signals 1-16
    return low ~= nil and (low >> (n - 1)) & 1 == 1
  end

  -- The members of process group `pgid` still alive that neither catch, ignore nor have signal
  -- `sig` (name; number n) pending get it: what galley __enter and galley.core.proc do in C
  -- (src/core/sweep.h; a shell holds signals back while it forks, and a child made then was
  -- never sent it). The group's leader (pid `pgid`) is gone and reaped, and once the group is
  -- empty its number may be a new process's: a member must not be that number, and its
  -- environment must carry instance `id`'s marker, unless it reads empty (a process in the
  -- middle of an exec shows none: the straggler often is one). A few passes, for what they made
  -- in turn.
  local function sweep_group(pgid, sig, n, id)
    local needle = "\0GALLEY_INSTANCE_ID=" .. id .. "\0"
    for _ = 1, 3 do
      local sent = false
      for _, name in ipairs(list_names("/proc")) do
        local pid = math.tointeger(tonumber(name))
        local fields = pid and pid ~= pgid and proc_stat(pid)
        local member = fields and math.tointeger(tonumber(fields[3])) == pgid
        local env = member and (read_all("/proc/" .. name .. "/environ") or "")
        local ours = env and (env == "" or ("\0" .. env):find(needle, 1, true) ~= nil)
        local status = ours and read_all("/proc/" .. name .. "/status")
        if status and not (mask_has(status, "SigCgt", n) or mask_has(status, "SigIgn", n)
            or mask_has(status, "SigPnd", n) or mask_has(status, "ShdPnd", n)) and runtime.kill(pid, sig) then
          sent = true
        end
      end
      if not sent then return end
    end
  end

  -- How long after passing a signal on (isolation "none") the command may take to die of it for
  -- the rest of its group to be swept: past that, it caught the signal and decides.
  local SWEEP_WATCH_MS = 60000

  -- With isolation "none": once bwrap (h) ends with 128 + the signal passed on (its command
  -- died of it), sweeps h's process group, where the command ran.
  local function sweep_after(h, sig, id)
    local name = type(sig) == "string" and sig:upper():gsub("^SIG", "") or nil
    local n = name and SIGNUM[name]
    if not n then return end
    local pgid = h:pid()
    task.spawn(function()
      local deadline, pause = runtime.now_ms() + SWEEP_WATCH_MS, 10
      while true do
        local ok, running, code = pcall(h.running, h)
        if not ok then return end -- closed
        if not running then
          if code == 128 + n then sweep_group(pgid, name, n, id) end
          return
        end
        if runtime.now_ms() > deadline or not runtime.sleep_ms(pause) then return end
        pause = math.min(pause * 2, 500)
      end
    end)
  end

  -- Sends `sig` to a spawned command. With isolation "userns" (or without the sandbox) h is the
  -- command's `galley __enter` (or the command itself), which passes it on to the command's
  -- process group. With isolation "none" h is bwrap, the command's parent, which would die of
  -- it and report 128 + N whatever the command did: the signal goes to the rest of h's process
  -- group (the command and what it started) instead, and bwrap ends as its command does.
  local function signal_command(h, sig, id)
    if sandbox and isolation ~= "userns" and signal_group(h:pid(), sig, h:pid()) then
      sweep_after(h, sig, id)
      return true
    end
    return h:kill(sig)
  end

  -- KILL for a spawned command without a cgroup of its own, isolation "userns": `galley __enter`
  -- cannot pass KILL on, and dying of it leaves only its child to the parent-death signal, not
  -- what the child started: so the child's process group (a session of its own, in the
  -- instance) gets it first, then __enter, which would die of it anyway.
  local function kill_command(h)
    if sandbox and isolation == "userns" and h:running() then
      local child = math.tointeger(tonumber((read_all(("/proc/%d/task/%d/children"):format(h:pid(), h:pid())) or "")
        :match("%d+") or ""))
      if child then signal_group(child, "KILL") end
    end
    return h:kill("KILL")
  end

  local function is_kill(sig)
    return sig == 9 or (type(sig) == "string" and sig:upper():gsub("^SIG", "") == "KILL")
  end

  -- A spawned command's handle: the methods of galley.core.proc's, with kill passing signals on
  -- as signal_command does. With a cgroup of its own (dir), KILL (and close while it runs) ends
  -- everything in that cgroup too. The cgroup goes first: its command dies, and
  -- `galley __enter` (h, outside the cgroup) reaps it and ends by itself. Killed first, __enter
  -- would leave its child, a process of the instance's pid namespace, to this machine's pid 1,
  -- and the instance's stop would wait until pid 1 reaped it (a second or more here; never where
  -- pid 1 does not reap).
  local function command_handle(h, dir, id)
    local function ended_by_cgroup()
      return kill_cgroup(dir) and pcall(wait_for, function() return not h:running() end, ENTER_EXIT_MS,
        "galley __enter ending")
    end
    local function kill(sig)
      if not h:running() then return h:kill(sig) end
      if not is_kill(sig) then return signal_command(h, sig, id) end
      if dir and ended_by_cgroup() then return true end
      local ok, err = kill_command(h)
      if dir then kill_cgroup(dir) end
      return ok, err
    end
    local function close()
      local running = h:running()
      if running and dir then
        ended_by_cgroup()
      elseif running then
        kill_command(h)
        pcall(wait_for, function() return not h:running() end, ENTER_EXIT_MS, "the command ending")
      end
      h:close()
      end_command_cgroup(dir, running)
    end
    return common.process_handle(h, "galley.local.process", kill, close)
  end

  -- The instance's holder (isolation "userns"): the recorded one while it lives, else a new
  -- one (after a reboot of the instance or of this machine: the namespaces, and every process
  -- in them, were gone). Saves it in meta.json. Two galley processes that find the holder gone
  -- at the same moment may each start one; the one not recorded dies with the instance's cgroup
  -- (or lives on as an idle sleep without cgroups).
  local function ensure_holder(meta, no_save)
    local h = meta.holder
    if h and proc_start(h.pid) == h.start then return h end
    if h then
      log.warn("the instance's namespaces were gone (rebooted?); starting new ones", { instance = meta.id })
    end
    local env = { PATH = SYSTEM_PATH, GALLEY_INSTANCE_ID = meta.id }
    local holder, err = launch_holder(bwrap, ident, inst_dir(meta.id), meta.cgroup, network, mounts, home_dir, env)
    if not holder then
      os.remove(state_dir .. "/.isolation-probe") -- the next galley probes again
      common.raise("PROCESS_ERROR", ("instance %s: %s"):format(meta.id, tostring(err)),
        { resource = "instance:" .. meta.id, cause = err })
    end
    meta.holder = holder
    if not no_save then save_meta(inst_dir(meta.id), meta) end
    return holder
  end

  local function freeze(meta, on)
    local dir = cgroup_dir(meta)
    if dir then
      ensure_cgroup(meta)
      write_control(dir .. "/cgroup.freeze", on and "1" or "0")
      wait_for(function() return cgroup_events(dir).frozen == on end, FREEZE_WAIT_MS,
        on and "freezing the instance" or "thawing the instance")
    else
      -- The holder's parent, bwrap outside the instance's namespaces, carries the marker too: it
      -- is not the instance's and is left running (stopped, it never reaps a killed holder).
      local pids, bwrap_pid = environ_pids(meta.id), select(2, holder_bwrap(meta.holder))
      if bwrap_pid then
        local kept = {}
        for _, pid in ipairs(pids) do
          if pid ~= tostring(bwrap_pid) then kept[#kept + 1] = pid end
        end
        pids = kept
      end
      signal_pids(pids, on and "STOP" or "CONT")
      -- A signal takes effect when its process next runs: pause returns once every process is
      -- stopped (resume once none is), as the cgroup freezer's "frozen" event says there.
      wait_for(function()
        for _, pid in ipairs(pids) do
          local st = (read_all("/proc/" .. pid .. "/stat") or ""):match("^%d+ %b() (%a)")
          -- (a process stopped by its tracer, "t", counts as stopped and is no one's to continue)
          if st and st ~= "Z" and st ~= "X" and (on and st ~= "T" and st ~= "t" or not on and st == "T") then
            return false
          end
        end
        return true
      end, FREEZE_WAIT_MS, on and "stopping the instance's processes" or "continuing the instance's processes")
    end
  end

  local function kill_all(meta)
    -- pid 1 of the instance's pid namespace first: the kernel kills every process in it,
    -- including any that left the cgroup or cleaned its environment. No process of an
    -- instance with a holder can be outside it, so the scan of every process's environment
    -- (below, for instances without one) is skipped: in a fan-out it read N processes N times.
    local namespaced = meta.holder ~= nil
    if meta.holder then
      kill_holder(meta.holder)
      meta.holder = nil
    end
    local dir = cgroup_dir(meta)
    if dir then
      if fs.exists(dir) then
        write_control(dir .. "/cgroup.kill", "1")
        wait_for(function()
          local procs = read_all(dir .. "/cgroup.procs")
          return procs == nil or procs == ""
        end, KILL_WAIT_MS, "killing the instance's processes")
        -- Killed processes stay "populated" until their parent (often init) reaps them.
        pcall(wait_for, function() return not cgroup_events(dir).populated end, REAP_WAIT_MS, "reaping")
        local ok, err = remove_cgroup(dir)
        if not ok and fs.exists(dir) then
          log.warn("could not remove the cgroup (removed later)", { cgroup = dir, error = tostring(err) })
        end
      end
      -- Anything that left the cgroup but kept the marker goes too.
      if not namespaced then signal_pids(environ_pids(meta.id), "KILL") end
    elseif not namespaced then
      for _ = 1, 50 do
        local pids = environ_pids(meta.id)
        if #pids == 0 then return end
        signal_pids(pids, "CONT")
        signal_pids(pids, "KILL")
        runtime.sleep_ms(20)
      end
      if #environ_pids(meta.id) > 0 then
        common.raise("PROCESS_ERROR", "some processes of instance " .. meta.id .. " would not die", {})
      end
    end
  end

  -- Lifecycle internals (no TTL pass) -------------------------------------------------------
  local function destroy(meta)
    meta.status = "stopping"
    pcall(save_meta, inst_dir(meta.id), meta)
    kill_all(meta)
    owner_tool({ "rm", "-rf", "--", inst_dir(meta.id) }, "remove the instance directory")
    provider.files.forget_instance(meta.id)
  end

  local function do_pause(meta)
    if meta.paused then return meta end
    freeze(meta, true)
    meta.paused = true
    meta.status = "stopped"
    save_meta(inst_dir(meta.id), meta)
    return meta
  end

  local function do_resume(meta)
    if meta.paused then
      freeze(meta, false)
      meta.paused = false
    end
    meta.status = "ready"
    if meta.ttl_seconds then
      meta.expires_at = now() + meta.ttl_seconds
      expired_at = nil
    end
    save_meta(inst_dir(meta.id), meta)
    return meta
  end

  -- Applies TTLs: every public entry point calls this first. Expiry times are whole seconds, so
  -- one look per second of the clock is enough (reading every instance's meta.json on every
  -- call made a fan-out over N instances cost N² reads); a TTL set meanwhile forces a new look.
  local function expire()
    local t = now()
    if expired_at == t then return end
    expired_at = t
    for _, id in ipairs(list_names(instances_dir)) do
      local meta = load_meta(inst_dir(id))
      local due = meta and meta.expires_at and meta.expires_at <= t and meta.status ~= "stopping"
      if due and not (meta.ttl_action == "pause" and meta.paused) then
        local ok, err = pcall(meta.ttl_action == "pause" and do_pause or destroy, meta)
        if ok then
          log.info("instance TTL expired", { instance = id, action = meta.ttl_action })
        else
          log.warn("could not apply an instance's TTL", { instance = id, error = tostring(err) })
        end
      end
    end
  end

  -- Copies the home and tmp trees of `src` (an instance or snapshot dir) into `dst`.
  local function copy_trees(src, dst)
    for _, sub in ipairs({ "home", "tmp" }) do
      tool({ "mkdir", "-p", dst .. "/" .. sub }, "create " .. sub)
      if fs.exists(src .. "/" .. sub) then
        owner_tool({ "cp", "-a", "--", src .. "/" .. sub .. "/.", dst .. "/" .. sub .. "/" }, "copy " .. sub)
      end
    end
  end

  -- Runs fn with the instance frozen (when it is running), so copies are consistent.
  local function with_frozen(meta, fn)
    local was_running = not meta.paused and meta.status == "ready"
    if was_running then freeze(meta, true) end
    local ok, err = pcall(fn)
    if was_running then freeze(meta, false) end
    if not ok then error(err, 0) end
  end

  local function new_id(prefix, parent)
    for _ = 1, 20 do
      local id = prefix .. codec.random_hex(4)
      if not fs.exists(parent .. "/" .. id) then return id end
    end
    common.raise("PROVIDER_ERROR", "could not pick a free id", {})
  end

  -- Creates an instance, filled by populate(dir) (nil: empty home and tmp); returns its meta.
  local function create_instance(snapshot_id, populate, bopts, extra)
    local ttl_seconds, ttl_action = common.check_ttl(bopts)
    local metadata = common.check_metadata(bopts.metadata)
    local id = new_id("localvm_", instances_dir)
    local dir = inst_dir(id)
    fs_op("mkdir", "create the instance directory", dir, "0700")
    local t = now()
    local meta = {
      id = id,
      status = "booting",
      snapshot_id = snapshot_id,
      created_at = t,
      metadata = metadata,
      ttl_seconds = ttl_seconds,
      ttl_action = ttl_seconds and ttl_action or nil,
      expires_at = ttl_seconds and (t + ttl_seconds) or nil,
      sandbox = sandbox,
      cgroup = cgroup_base and (cgroup_base .. "/" .. cgroup_tag .. "_" .. id) or nil,
      paused = false,
    }
    for k, v in pairs(extra or {}) do meta[k] = v end
    local ok, err = pcall(function()
      save_meta(dir, meta)
      if populate then
        populate(dir)
      else
        make_home_and_tmp(dir, ident, "1777")
      end
      if meta.cgroup then fs_op("mkdir_p", "create the instance cgroup", meta.cgroup) end
      if sandbox and isolation == "userns" then ensure_holder(meta, true) end -- saved just below
      meta.status = "ready"
      save_meta(dir, meta)
    end)
    if not ok then
      if meta.holder then kill_holder(meta.holder) end
      if meta.cgroup then os.remove(meta.cgroup) end
      pcall(owner_tool, { "rm", "-rf", "--", dir })
      error(err, 0)
    end
    run.track_instance(provider, id, ttl_seconds)
    log.debug("instance ready", { instance = id, snapshot = snapshot_id })
    return meta
  end

  -- Exec -----------------------------------------------------------------------------------
  local function home_of(meta)
    if sandbox then return home_dir end
    return inst_dir(meta.id) .. "/home"
  end

  local base_path = sandbox and sandbox_path or os.getenv("PATH") or SYSTEM_PATH

  -- The process options (argv wrapped in the sandbox and the cgroup, environment) that run
  -- argv in the instance. `env` adds variables; `cwd` is the directory as the instance sees it
  -- (default: its home). `cgroup`: the command's own (command_cgroup), also given to
  -- galley.core.proc: closed while it runs (Ctrl-C, a cancelled task), the command dies before
  -- its galley __enter, which reaps it instead of leaving it to this machine's pid 1.
  local function process_options(meta, argv, env, cwd, operation, cgroup)
    if meta.status ~= "ready" or meta.paused then
      common.raise("CONFLICT", ("instance %s is %s, not ready"):format(meta.id, meta.status),
        { operation = operation, resource = "instance:" .. meta.id, hint = "resume it first" })
    end
    local home = home_of(meta)
    local user = isolation == "userns" and "root" or (os.getenv("USER") or "root")
    local full_env = {
      PATH = base_path, HOME = home, USER = user, LOGNAME = user,
      SHELL = "/bin/bash", LANG = os.getenv("LANG") or "C.UTF-8", TERM = "dumb", GALLEY_INSTANCE_ID = meta.id,
    }
    for k, v in pairs(env or {}) do full_env[k] = v end
    cwd = cwd and common.expand_home(cwd, home) or home
    -- `galley __enter` joins the instance's cgroup and namespaces and changes directory
    -- (isolation "userns"); otherwise a host-side sh joins the cgroup (ENTER), then the
    -- sandbox starts, where a second sh (INNER) changes directory and execs the command.
    if meta.cgroup then ensure_cgroup(meta) end
    local own_cgroup = cgroup
    cgroup = cgroup or meta.cgroup
    local dir = inst_dir(meta.id)
    local cmd
    if sandbox and isolation == "userns" then
      cmd = ns_exec_argv(ensure_holder(meta), cgroup, network, cwd)
      for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
      return { argv = cmd, env = full_env, env_mode = "replace", cwd = "/", cgroup = own_cgroup }
    elseif sandbox then
      cmd = { "/bin/sh", "-c", ENTER, "sh", cgroup or "", bwrap }
      if not network then cmd[#cmd + 1] = "--unshare-net" end
      for _, a in ipairs(mounts) do cmd[#cmd + 1] = a end
      for _, a in ipairs({ "--bind", dir .. "/home", home_dir, "--bind", dir .. "/tmp", "/tmp" }) do
        cmd[#cmd + 1] = a
      end
    else
      cmd = { "/bin/sh", "-c", ENTER, "sh", cgroup or "" }
    end
    if sandbox and isolation ~= "userns" then
      for _, a in ipairs({ "--chdir", "/", "--" }) do cmd[#cmd + 1] = a end
    end
    for _, a in ipairs({ "/bin/sh", "-c", INNER, "sh", cwd }) do cmd[#cmd + 1] = a end
    for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
    return { argv = cmd, env = full_env, env_mode = "replace", cwd = sandbox and "/" or nil, cgroup = own_cgroup }
  end

  local function could_not_run(meta, err, operation)
    if errors.is(err, "INTERRUPTED") then error(err, 0) end
    common.raise("PROCESS_ERROR", ("could not run a command in %s: %s"):format(meta.id, tostring(err)),
      { operation = operation, resource = "instance:" .. meta.id, cause = err })
  end

  -- Runs popts (process_options) reading its output as it arrives: each piece goes to
  -- on_stdout/on_stderr, and is kept (up to max_output per stream). nil when `wait_ms` passed first.
  local function run_streaming(meta, popts, wait_ms, max_output, eopts, operation)
    popts.stdin = "null"
    local h, err = proc.spawn(popts)
    if not h then could_not_run(meta, err, operation) end
    local kept = { stdout = {}, stderr = {} }
    local sizes = { stdout = 0, stderr = 0 }
    local truncated = false
    local deadline = wait_ms and runtime.now_ms() + wait_ms
    local ok, res = pcall(function()
      while true do
        local kind, a = h:read(deadline and math.max(0, deadline - runtime.now_ms()) or nil)
        if kind == "stdout" or kind == "stderr" then
          local fn = kind == "stdout" and eopts.on_stdout or eopts.on_stderr
          if fn then fn(a) end
          if max_output and sizes[kind] + #a > max_output then
            a, truncated = a:sub(1, max_output - sizes[kind]), true
          end
          kept[kind][#kept[kind] + 1] = a
          sizes[kind] = sizes[kind] + #a
        elseif kind == "exit" then
          return { exit_code = a, stdout = table.concat(kept.stdout), stderr = table.concat(kept.stderr),
            truncated = truncated }
        elseif a ~= nil then
          error(a, 0) -- interrupted (or closed)
        else
          return nil -- the wait passed
        end
      end
    end)
    h:close() -- kills the process group unless it finished
    if not ok then
      if errors.is(res, "INTERRUPTED") or not errors.is(res) or not tostring(res.code):match("^PROC_") then
        error(res, 0) -- INTERRUPTED, or what a callback raised, passes through
      end
      could_not_run(meta, res, operation)
    end
    return res or { timed_out = true }
  end

  -- Runs argv in the instance: {stdout, stderr, exit_code, truncated?}. eopts (exec's options):
  -- timeout_ms is enforced inside the instance (common.time_limited; the host waits
  -- EXEC_BACKSTOP_MS longer), on_stdout/on_stderr stream. Without eopts (file operations) the
  -- provider's exec_timeout_ms is a host-side limit.
  local function run_in(meta, argv, env, cwd, operation, eopts)
    -- One trace record per command run in an instance (-vv), as the Morph client logs each request.
    log.trace("exec", { instance = meta.id, operation = operation })
    local limit = eopts and (eopts.timeout_ms or opts.exec_timeout_ms)
    local wait_ms = limit and (limit + common.EXEC_BACKSTOP_MS) or opts.exec_timeout_ms
    local cg = command_cgroup(meta)
    -- past the limit and timeout(1)'s KILL, what left its process group dies with the cgroup
    local cg_kill_ms = limit and limit + common.EXEC_KILL_AFTER_S * 1000 + 500
    local watchdog = cg and limit and task.spawn(function()
      task.sleep(cg_kill_ms)
      kill_cgroup(cg)
    end)
    -- Once the cgroup is killed nothing of the command runs, yet its pipes can stay open: a
    -- process outside it holds them (a tmux client hands its stdout to the tmux server over the
    -- server's socket; a stopped server never takes it, and the pipe never ends). The host
    -- then waits CGROUP_PIPE_GRACE_MS for the output, not the whole backstop (TIMEOUT at the
    -- limit + ~4 s instead of + 12 s).
    local kill_grace_ms
    if watchdog then wait_ms, kill_grace_ms = cg_kill_ms + M.CGROUP_PIPE_GRACE_MS, 200 end
    local ok, r = pcall(common.run_limited, meta.id, argv, limit, function(a)
      local popts = process_options(meta, a, env, cwd, operation, cg)
      if eopts and (eopts.on_stdout or eopts.on_stderr) then
        return run_streaming(meta, popts, wait_ms, opts.max_output, eopts, operation)
      end
      popts.timeout_ms, popts.max_output, popts.kill_grace_ms = wait_ms, opts.max_output, kill_grace_ms
      local res, err = proc.run(popts)
      if not res then could_not_run(meta, err, operation) end
      return res
    end)
    if watchdog then watchdog:cancel() end
    -- killed when it did not end by itself (over its limit: TIMEOUT; interrupted; the host gave
    -- up waiting): nothing it started may run on
    end_command_cgroup(cg, not ok or r.timed_out or false)
    if not ok then error(r, 0) end
    if r.timed_out then
      common.raise("TIMEOUT", ("command in %s timed out"):format(meta.id),
        { operation = operation, resource = "instance:" .. meta.id })
    end
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code, truncated = r.truncated or nil }
  end

  local function exec_argv(id, argv)
    expire()
    local meta = must_instance(id, "exec")
    return run_in(meta, argv, nil, nil, "exec")
  end

  -- The byte channel: a transfer's program runs in the instance like any exec, with its stdin
  -- and stdout opened on local files by a host-side sh (contents never pass through Lua or
  -- base64). `stream = false` leaves every transfer to exec.
  local function stream(id, argv, sopts)
    expire()
    local meta = must_instance(id, "exec")
    log.trace("exec", { instance = meta.id, operation = "files.stream" })
    local cg = command_cgroup(meta) -- (as an exec's)
    local popts = process_options(meta, argv, nil, nil, "files.stream", cg)
    popts.argv = common.redirected(popts.argv, sopts.stdin_file, sopts.stdout_file, sopts.max_stdout_bytes)
    popts.stdin, popts.timeout_ms, popts.max_output = sopts.stdin, opts.exec_timeout_ms, opts.max_output
    local res, err = proc.run(popts)
    end_command_cgroup(cg, not res or res.timed_out or false)
    if not res then could_not_run(meta, err, "files.stream") end
    if res.timed_out then
      common.raise("TIMEOUT", ("transfer in %s timed out"):format(meta.id),
        { operation = "files.stream", resource = "instance:" .. meta.id })
    end
    return { stdout = res.stdout, stderr = res.stderr, exit_code = res.exit_code }
  end

  provider.files = execfiles.new({
    exec_argv = exec_argv,
    stream = opts.stream ~= false and stream or nil,
    home_dir = sandbox and home_dir or function(id) return inst_dir(id) .. "/home" end,
    size_limit = opts.size_limit,
    parallel = opts.file_parallel,
    log = log,
  })

  --- Hands files copied into an instance's directory on the host (host_dir/home, host_dir/tmp)
  --- to the instance: with isolation "userns" and a root caller they become its root's, so the
  --- instance can change them. Nothing to do otherwise.
  ---@param instance_id string
  ---@raise NOT_FOUND | PROCESS_ERROR
  function provider.adopt_files(instance_id)
    local meta = must_instance(instance_id, "adopt_files")
    if ident and ident.root and isolation == "userns" then
      local dir = inst_dir(meta.id)
      tool({ "chown", "-R", ident.uid .. ":" .. ident.gid, dir .. "/home", dir .. "/tmp" }, "chown the files")
    end
  end

  --- Runs a CommandSpec in an instance. Non-zero exits are results.
  ---@param instance_id string
  ---@param spec galley.CommandSpec|string a string is a shell line (sh -c)
  ---@param eopts? {timeout_ms?: integer, on_stdout?: fun(s: string), on_stderr?: fun(s: string)}
  ---@return {stdout: string, stderr: string, exit_code: integer}
  ---@raise NOT_FOUND | VALIDATION_ERROR | CONFLICT (paused) | PROCESS_ERROR | TIMEOUT (the command ran past
  --- timeout_ms and was killed)
  function provider.exec(instance_id, spec, eopts)
    expire()
    local meta = must_instance(instance_id, "exec")
    spec = contracts.check_command(spec)
    eopts = common.check_exec_options(eopts)
    if spec.kind == "argv" then
      local argv = { spec.command }
      for _, a in ipairs(spec.args) do argv[#argv + 1] = a end
      return run_in(meta, argv, spec.env, spec.cwd, "exec", eopts)
    end
    -- Shell form: a temporary script in the instance's /tmp, run as `/bin/bash <path>`.
    local name = ".galley-script-" .. codec.random_hex(8) .. ".sh"
    local host_path = inst_dir(meta.id) .. "/tmp/" .. name
    local ok, err = fs.write(host_path, spec.script, { mode = tonumber("600", 8) })
    if not ok then
      common.raise("FILE_IO_ERROR", "cannot write the script file: " .. tostring(err),
        { operation = "exec", resource = "instance:" .. meta.id })
    end
    if ident and ident.root and isolation == "userns" then
      tool({ "chown", ident.uid .. ":" .. ident.gid, host_path }, "chown the script")
    end
    local script_path = sandbox and ("/tmp/" .. name) or host_path
    local rok, res = pcall(run_in, meta, { "/bin/bash", script_path }, spec.env, spec.cwd, "exec", eopts)
    os.remove(host_path)
    if not rok then error(res, 0) end
    return res
  end

  --- What the instance's own processes use, read here from its cgroup (a sandbox's /proc shows
  --- the host's CPU and memory): {cpu_usec, mem_bytes?, mem_limit?, pids?, started_at?}; nil when
  --- the instance has no cgroup (no writable cgroup2 hierarchy here). galley.health uses it.
  ---@param instance_id string
  ---@return table|nil
  ---@raise NOT_FOUND
  function provider.usage(instance_id)
    local meta = must_instance(instance_id, "usage")
    local cg = cgroup_dir(meta)
    if not cg then return nil end
    local function int(name, pattern)
      return math.tointeger(tonumber((read_all(cg .. "/" .. name) or ""):match(pattern) or ""))
    end
    local usec = int("cpu.stat", "usage_usec (%d+)")
    if not usec then return nil end
    return { cpu_usec = usec, mem_bytes = int("memory.current", "^(%d+)"), mem_limit = int("memory.max", "^(%d+)"),
      pids = int("pids.current", "^(%d+)"), started_at = meta.created_at }
  end

  --- Starts a command in an instance without waiting: a galley.core.proc Process handle
  --- (`read`, `write`, `kill`, `wait`, `close`), for streaming output. Takes a CommandSpec (argv
  --- form) or a plain argv array; the process joins the instance (sandbox, cgroup) like exec.
  ---@param instance_id string
  ---@param command galley.CommandSpec|string[]
  ---@param sopts? {stdin?: "null"|"pipe"|string}
  ---@return table process
  ---@raise NOT_FOUND | VALIDATION_ERROR | CONFLICT (paused) | PROCESS_ERROR (could not start)
  function provider.spawn(instance_id, command, sopts)
    expire()
    local meta = must_instance(instance_id, "spawn")
    local argv, env, cwd = common.spawn_command(command, true)
    local cg = command_cgroup(meta)
    local popts = process_options(meta, argv, env, cwd, "spawn", cg)
    popts.stdin = sopts and sopts.stdin or "null"
    local h, err = proc.spawn(popts)
    if not h then
      end_command_cgroup(cg, true)
      common.raise("PROCESS_ERROR", ("could not start a command in %s: %s"):format(meta.id, tostring(err)),
        { operation = "spawn", resource = "instance:" .. meta.id, cause = err })
    end
    return command_handle(h, cg, meta.id)
  end

  --- How `spawn` would start argv in an instance, without starting it: `{argv, env, env_mode,
  --- cwd}` for galley.core.proc (the emulator's SSH gateway starts commands itself: it appends
  --- its command to `argv`).
  ---@param instance_id string
  ---@param argv string[] may be empty (the prefix alone)
  ---@return table popts
  ---@raise NOT_FOUND | CONFLICT (not ready or paused)
  function provider.spawn_options(instance_id, argv)
    expire()
    local meta = must_instance(instance_id, "spawn")
    return process_options(meta, argv, nil, nil, "spawn")
  end

  -- instances ------------------------------------------------------------------------------
  local I = provider.instances
  I.exec = provider.exec

  --- Boots an instance from a snapshot; returns when it is ready.
  ---@param snapshot_id? string default M.DEFAULT_SNAPSHOT
  ---@param bopts? {ttl_seconds?: integer, ttl_action?: "stop"|"terminate"|"pause", metadata?: table<string, string>}
  ---@return table instance
  ---@raise NOT_FOUND (snapshot) | VALIDATION_ERROR
  function I.boot(snapshot_id, bopts)
    expire()
    snapshot_id = snapshot_id or M.DEFAULT_SNAPSHOT
    bopts = run.boot_options(bopts)
    local source
    if snapshot_id ~= M.DEFAULT_SNAPSHOT then
      if not valid_id(snapshot_id, "snapshot_id") or not load_meta(snap_dir(snapshot_id)) then
        error(not_found("snapshot", snapshot_id, "instances.boot"), 0)
      end
      source = snap_dir(snapshot_id)
    end
    local populate = source and function(dir) copy_trees(source, dir) end
    return public_instance(create_instance(snapshot_id, populate, bopts))
  end

  --- The instance, or NOT_FOUND.
  ---@param instance_id string
  ---@return table instance
  function I.get(instance_id)
    expire()
    return public_instance(must_instance(instance_id, "instances.get"))
  end

  --- Instances whose metadata matches every key of the filter (`{metadata = {...}}` or a plain map).
  ---@param filter? table
  ---@return table[] instances, oldest first
  function I.list(filter)
    expire()
    local want = common.metadata_filter(filter)
    if want then want = common.check_metadata(want, "filter") end -- the same checks as Morph's list
    local out = {}
    for _, id in ipairs(list_names(instances_dir)) do
      local meta = load_meta(inst_dir(id))
      if meta and common.match_metadata(meta.metadata, want) then out[#out + 1] = public_instance(meta) end
    end
    table.sort(out, function(a, b)
      if a.created_at ~= b.created_at then return (a.created_at or 0) < (b.created_at or 0) end
      return a.id < b.id
    end)
    return out
  end

  --- Deletes the instance: kills every process in it and removes its files.
  ---@param instance_id string
  ---@return true
  ---@raise NOT_FOUND
  function I.terminate(instance_id)
    expire()
    destroy(must_instance(instance_id, "instances.terminate"))
    return true
  end

  --- Sets the instance's TTL to `seconds` from now (`--keep 4h` at the end of a run).
  ---@param instance_id string
  ---@param seconds integer
  ---@param action? "stop"|"terminate"|"pause" default: the instance's own, else "stop"
  ---@return table instance
  ---@raise NOT_FOUND | VALIDATION_ERROR
  function I.set_ttl(instance_id, seconds, action)
    expire()
    local meta = must_instance(instance_id, "instances.set_ttl")
    local secs, act = common.check_ttl({ ttl_seconds = seconds, ttl_action = action or meta.ttl_action })
    if not secs then
      common.raise("VALIDATION_ERROR", "ttl_seconds must be a positive integer", { field = "ttl_seconds" })
    end
    meta.ttl_seconds, meta.ttl_action, meta.expires_at = secs, act, now() + secs
    expired_at = nil
    save_meta(inst_dir(instance_id), meta)
    return public_instance(meta)
  end

  --- Kills every process of the instance and keeps its files; status "ready" (a paused
  --- instance is thawed first). Re-arms the TTL like resume.
  ---@param instance_id string
  ---@return table instance
  ---@raise NOT_FOUND
  function I.reboot(instance_id)
    expire()
    local meta = must_instance(instance_id, "instances.reboot")
    kill_all(meta)
    if meta.paused then
      meta.paused = false
      if meta.cgroup then ensure_cgroup(meta) end
    end
    return public_instance(do_resume(meta))
  end

  --- Same as terminate (Morph's "stop" deletes the instance).
  I.stop = I.terminate

  --- Freezes every process of the instance; status "stopped".
  ---@param instance_id string
  ---@return table instance
  function I.pause(instance_id)
    expire()
    return public_instance(do_pause(must_instance(instance_id, "instances.pause")))
  end

  --- Thaws a paused instance; status "ready"; re-arms its TTL.
  ---@param instance_id string
  ---@return table instance
  function I.resume(instance_id)
    expire()
    return public_instance(do_resume(must_instance(instance_id, "instances.resume")))
  end

  -- Digests, as on Morph: a snapshot taken with a digest that a snapshot has returns that one.
  -- digests/<sha256 of digest>/id names the snapshot; the claim is made by renaming a directory
  -- into place (which fails when it exists) before the snapshot's meta.json is written, so
  -- concurrent builders agree on one snapshot and nobody lists the loser's copy.
  local digests_dir = state_dir .. "/digests"
  local function claim_path(digest) return digests_dir .. "/" .. codec.sha256(digest) end

  -- The claimed snapshot's meta; "pending" while its meta.json is being written; nil: none.
  local function digest_owner(digest)
    local id = read_all(claim_path(digest) .. "/id")
    if not id or not pcall(valid_id, id) then return nil end
    local m = load_meta(snap_dir(id))
    if m then return m end
    return fs.exists(snap_dir(id)) and "pending" or nil
  end

  local function claim_digest(digest, id)
    paths.private_dir(digests_dir)
    for _ = 1, 3 do
      local tmp = digests_dir .. "/.tmp-" .. codec.random_hex(8)
      tool({ "mkdir", "-m", "0700", tmp }, "create a digest claim")
      write_raw(tmp .. "/id", id)
      local ok = os.rename(tmp, claim_path(digest))
      pcall(tool, { "rm", "-rf", "--", tmp })
      if ok then return nil end
      local owner
      pcall(wait_for, function()
        owner = digest_owner(digest)
        return owner ~= "pending"
      end, KILL_WAIT_MS, "the digest's snapshot")
      if type(owner) == "table" then return owner end
      pcall(tool, { "rm", "-rf", "--", claim_path(digest) }) -- its snapshot is gone: a stale claim
    end
    return nil
  end

  local function take_snapshot(instance_id, sopts, operation)
    local tagged
    sopts, tagged = run.snapshot_options(sopts) -- the run's tags; a digest's (an image's) none
    local meta = must_instance(instance_id, operation)
    local metadata = common.check_metadata(sopts.metadata)
    local existing = sopts.digest and digest_owner(sopts.digest)
    if type(existing) == "table" then return public_snapshot(existing) end
    local id = new_id("snapshot_", snapshots_dir)
    local dir = snap_dir(id)
    tool({ "mkdir", "-m", "0700", dir }, "create the snapshot directory")
    local smeta = { id = id, status = "ready", created_at = now(), metadata = metadata, instance_id = instance_id,
      digest = sopts.digest }
    local owner
    local ok, err = pcall(function()
      with_frozen(meta, function() copy_trees(inst_dir(instance_id), dir) end)
      owner = sopts.digest and claim_digest(sopts.digest, id)
      if not owner then save_meta(dir, smeta) end
    end)
    if not ok or owner then pcall(owner_tool, { "rm", "-rf", "--", dir }) end
    if not ok then error(err, 0) end
    if tagged and not owner then run.track_snapshot(provider, id, metadata.galley_keep == "1") end
    return public_snapshot(owner or smeta)
  end

  --- Snapshots the instance's home and /tmp (frozen meanwhile if it is running). Inside a run
  --- (or `galley -e`/a script) it is tagged with the run and left for `galley gc` unless
  --- `keep = true`; one taken with a `digest` is an image: untagged, never collected.
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string, keep?: boolean}
  ---@return table snapshot
  ---@raise NOT_FOUND
  function I.snapshot(instance_id, sopts)
    expire()
    return take_snapshot(instance_id, sopts, "instances.snapshot")
  end

  --- Makes `count` copies of a running instance (files copied while it is frozen).
  ---@param instance_id string
  ---@param count? integer default 1
  ---@param fopts? {metadata?: table<string, string>, ttl_seconds?: integer, ttl_action?: string}
  ---@return table[] instances (metadata defaults to the parent's)
  ---@raise NOT_FOUND | VALIDATION_ERROR
  function I.fork(instance_id, count, fopts)
    expire()
    count = count or 1
    if math.type(count) ~= "integer" or count < 1 then
      common.raise("VALIDATION_ERROR", "count must be a positive integer", { field = "count" })
    end
    local parent = must_instance(instance_id, "instances.fork")
    fopts = fopts or {}
    local bopts = { ttl_seconds = fopts.ttl_seconds, ttl_action = fopts.ttl_action, metadata = fopts.metadata }
    if bopts.metadata == nil then bopts.metadata = parent.metadata end
    bopts = run.boot_options(bopts)
    local out = {}
    local function populate(dir)
      with_frozen(parent, function() copy_trees(inst_dir(instance_id), dir) end)
    end
    for _ = 1, count do
      local meta = create_instance(parent.snapshot_id, populate, bopts, { forked_from = instance_id })
      out[#out + 1] = public_instance(meta)
    end
    return out
  end

  --- Alias of fork (Morph calls it branch).
  I.branch = I.fork

  -- snapshots ------------------------------------------------------------------------------
  local S = provider.snapshots
  local default_snapshot = { id = M.DEFAULT_SNAPSHOT, status = "ready", created_at = 0,
    metadata = { description = "empty home and /tmp" } }

  --- The snapshot, or NOT_FOUND.
  ---@param snapshot_id string
  ---@return table snapshot
  function S.get(snapshot_id)
    expire()
    if snapshot_id == M.DEFAULT_SNAPSHOT then return public_snapshot(default_snapshot) end
    local meta = valid_id(snapshot_id, "snapshot_id") and load_meta(snap_dir(snapshot_id))
    if not meta then error(not_found("snapshot", snapshot_id, "snapshots.get"), 0) end
    return public_snapshot(meta)
  end

  --- Snapshots matching a metadata filter (the default snapshot included when it matches).
  ---@param filter? table
  ---@return table[]
  function S.list(filter)
    expire()
    local want = common.metadata_filter(filter)
    if want then want = common.check_metadata(want, "filter") end -- the same checks as Morph's list
    local out = {}
    if common.match_metadata(default_snapshot.metadata, want) then out[1] = public_snapshot(default_snapshot) end
    for _, id in ipairs(list_names(snapshots_dir)) do
      local meta = load_meta(snap_dir(id))
      if meta and common.match_metadata(meta.metadata, want) then out[#out + 1] = public_snapshot(meta) end
    end
    return out
  end

  --- Same as instances.snapshot.
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string}
  ---@return table snapshot
  function S.create(instance_id, sopts)
    expire()
    return take_snapshot(instance_id, sopts, "snapshots.create")
  end

  --- Deletes a snapshot (instances booted from it are independent copies).
  ---@param snapshot_id string
  ---@return true
  ---@raise NOT_FOUND | VALIDATION_ERROR (the default snapshot)
  function S.delete(snapshot_id)
    expire()
    if snapshot_id == M.DEFAULT_SNAPSHOT then
      common.raise("VALIDATION_ERROR", "the default snapshot cannot be deleted", { field = "snapshot_id" })
    end
    if not valid_id(snapshot_id, "snapshot_id") or not load_meta(snap_dir(snapshot_id)) then
      error(not_found("snapshot", snapshot_id, "snapshots.delete"), 0)
    end
    local meta = load_meta(snap_dir(snapshot_id))
    if meta.digest and read_all(claim_path(meta.digest) .. "/id") == snapshot_id then
      tool({ "rm", "-rf", "--", claim_path(meta.digest) }, "remove the digest claim")
    end
    owner_tool({ "rm", "-rf", "--", snap_dir(snapshot_id) }, "remove the snapshot")
    return true
  end

  --- Builds (or finds) an image from recipe steps, each cached by digest (galley.images).
  function S.build(...) return require("galley.images").build(provider, ...) end

  -- images ---------------------------------------------------------------------------------
  --- The one image: this machine's filesystem.
  ---@return table[]
  function provider.images.list()
    expire()
    return { {
      object = "image", id = M.IMAGE_ID, name = "host",
      description = sandbox and "this machine's filesystem, read-only in bubblewrap" or "this machine (no sandbox)",
      created_at = 0,
    } }
  end

  --- Nothing to release (instances live on in the state directory); here for parity with Morph.
  function provider.close() end

  run.register_provider(provider)
  return provider
end

return M
