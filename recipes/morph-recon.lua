-- morph-recon.lua: what a Morph account really does where the API is not documented, as a short
-- report (reference/morph-api.md §12 lists the open questions).
--
--   MORPH_API_KEY=... galley run morph-recon            # a few lines
--   MORPH_API_KEY=... galley run morph-recon --json     # one JSON object on stdout
--   MORPH_BASE_URL=http://127.0.0.1:PORT/api galley run morph-recon    # e.g. on `galley emulate`
--
-- Boots ONE small instance (TTL 300 s, action stop) and probes it, then deletes it (and the
-- snapshot and instance the pending-snapshot probe makes); nothing is left. Findings:
--   argv_mode        how a multi-element `command` runs: "exec" (as an argv) or "join" (space-
--                    joined and run by a shell, like an SSH server); "unknown" otherwise
--   large_argv       whether a multi-element command of ~200 KiB (two 96 KiB elements: no one
--                    shell argument can hold them) runs faithfully: the Morph provider's own probe
--                    (galley.providers.morph.probe_exec_form), and `auto_exec_form`, what its
--                    default exec_form "auto" picks for payloads on this service ("argv"/"string")
--   shell            which program runs a one-element command ($0, /proc/$$/exe) and whether it
--                    is a login shell; HOME, the user and the PATH an exec sees (pm2, claude found?)
--   signal_exit_code the exit code the service reports for a command killed by TERM (`kill
--                    -TERM $$`); `setsid`, where it is (spawned commands lead a process group of
--                    their own with it); `spawn_kill`: a command spawned through the provider
--                    gets kill("TERM"), its trap runs, and the handle reports the trap's exit 7
--   file_write       a 60 KiB write through the files API: whether it arrived whole, and
--                    `argv_readback`: whether the instance read the base64 back from its own
--                    argv (/proc/PID/cmdline; else the slower here-document did it)
--   boot             whether POST /snapshot/ID/boot answers `ready` or `pending`
--   exec_on_pending  what an exec on a `pending` instance answers (when boot answered pending)
--   start_from_pending_snapshot  what POST /instance?snapshot_id= answers for a snapshot that is
--                    still `pending` (a fresh POST /snapshot from --image)
--   metadata         whether POST /instance/ID/metadata replaces or merges
--   delete_twice     the answers of DELETE /instance/ID, twice
--   not_found_body, validation_body  the shapes of a 404 and a 422 body
--   largest_command_bytes  the longest one-element command that still runs (binary search up to
--                    --max-command-bytes)
--   ssh_gateway      the SSH gateway galley would use for large transfers (MORPH_SSH_HOSTNAME/PORT,
--                    else ssh.<API host> for an https API): whether the login `<instance>:<key>`
--                    with a throwaway key works, the user and home a command sees there,
--                    whether stdin arrives byte for byte (512 KiB of random bytes, hashed there),
--                    and `sessions`: of 12 commands at once over the one multiplexed connection,
--                    how many ran with nothing from ssh on their stderr (sshd's MaxSessions is
--                    10 by default: galley sends at most proxmox_ssh.MAX_MUX_SESSIONS, 8, at once)
-- Ordinary execs of the Morph provider (one element, quoted) work whatever argv_mode says.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local errors = require("galley.errors")
local json = require("galley.json")
local logmod = require("galley.log")
local morph = require("galley.providers.morph")
local runtime = require("galley.core.runtime")

local MORPH_SNAPSHOT = "snapshot_c1p8b6c2"
local TTL = 300

local opts = recipe.options({
  name = "morph-recon",
  summary = "Probe a Morph account's undocumented behaviour on one small instance (TTL 300 s, deleted at the end).",
  options = {
    { "snapshot", metavar = "ID", env = "GALLEY_SNAPSHOT",
      help = "snapshot to boot (default: $TESTING_SNAPSHOT_ID or " .. MORPH_SNAPSHOT .. ")" },
    { "image", metavar = "ID", default = "morphvm-minimal",
      help = "image of the snapshot made for the pending-snapshot probe" },
    { "no-pending-snapshot", type = "flag", help = "skip the pending-snapshot probe (it creates a snapshot)" },
    { "max-command-bytes", type = "integer", default = 1024 * 1024,
      help = "upper bound of the largest-command search" },
    { "json", type = "flag", help = "print the report as one JSON object" },
    { "no-ssh", type = "flag", help = "skip the SSH gateway probe" },
  },
  epilog = "environment: MORPH_API_KEY (required), MORPH_BASE_URL, TESTING_SNAPSHOT_ID.",
}, arg)

local function env(name)
  local v = os.getenv(name)
  return v ~= "" and v or nil
end

if not env("MORPH_API_KEY") then
  recipe.usage_error("morph-recon needs MORPH_API_KEY (and MORPH_BASE_URL if not Morph)")
end
if opts.max_command_bytes < 4096 then recipe.usage_error("--max-command-bytes must be at least 4096") end

local function say(text) io.stderr:write("morph-recon: ", text, "\n") end

local level = logmod.default_level()
if level == "info" and not os.getenv("GALLEY_LOG") then level = "error" end
local log = logmod.new({ level = level, prefix = "morph-recon" })

local provider = providers.new("morph", { log = log })
local client = provider.client
local snapshot = opts.snapshot or env("TESTING_SNAPSHOT_ID") or MORPH_SNAPSHOT
-- The run's tags (galley_run, ...), so `galley gc` and the run's leak check see what this makes.
local TAG = require("galley.run").boot_options({ metadata = { galley_recon = "1" } }).metadata

-- Everything this recon creates, deleted at the end whatever happens (404 is fine).
local created = { instances = {}, snapshots = {} }
recipe.defer(function()
  for _, id in ipairs(created.instances) do client:call("instances.stop", { instance_id = id }) end
  for _, id in ipairs(created.snapshots) do client:call("snapshots.delete", { snapshot_id = id }) end
end, "delete what morph-recon created")

local function check(res, err, what)
  if res == nil then
    say(what .. " failed: " .. tostring(err))
    error(err, 0)
  end
  return res
end

-- {status = n, code = s, detail = "string"|"list"|"object"|"none"} for a failed call's error.
local function failure(err)
  local d = err.details
  local shape = d == nil and "none" or type(d) == "string" and "string"
    or (type(d) == "table" and d[1] ~= nil) and "list" or "object"
  return { status = err.status, code = err.code, detail = shape, message = err.message }
end

local report = { provider = "morph", base_url = env("MORPH_BASE_URL") or "https://cloud.morph.so/api",
  snapshot = snapshot }

-- ---------------------------------------------------------------------------------------------
-- Boot: the raw answer's status, and exec while it is pending
-- ---------------------------------------------------------------------------------------------

say("booting " .. snapshot .. " (ttl " .. TTL .. " s) ...")
local raw = check(client:call("snapshots.boot", { snapshot_id = snapshot,
  body = { metadata = TAG, ttl_seconds = TTL, ttl_action = "stop" } }), nil, "boot")
local id = raw.id
if type(id) ~= "string" then error(errors.new("PROTOCOL_ERROR", "boot answered without an instance id"), 0) end
created.instances[#created.instances + 1] = id
report.instance = id
report.boot = { answer_status = raw.status }
if raw.status == "pending" then
  local res, err = client:instances_exec(id, { "true" })
  report.exec_on_pending = res and { status = 200, exit_code = res.exit_code } or failure(err)
else
  report.exec_on_pending = { observed = false, why = "boot answered " .. tostring(raw.status) }
end
check(client:wait_ready(id, { timeout_ms = 240000 }), nil, "wait for ready")

-- ---------------------------------------------------------------------------------------------
-- Exec: argv mode, the shell of a one-element command, what it sees
-- ---------------------------------------------------------------------------------------------

local function exec(command)
  return check(client:instances_exec(id, command), nil, "exec")
end

local ARGV_PROBE = { "printf", "%s,", "a b" }
local probe = exec(ARGV_PROBE)
report.argv_mode = probe.stdout == "a b," and "exec" or probe.stdout == "a,b," and "join" or "unknown"
report.argv_probe = { command = ARGV_PROBE, stdout = probe.stdout, exit_code = probe.exit_code }

-- The provider's exec-form probe: one ~200 KiB multi-element command.
say("running a large multi-element command (~200 KiB) ...")
local form, why = morph.probe_exec_form(client, id)
if form then
  report.large_argv = { runs = form == "argv", exit_code = why.exit_code, output_ok = why.stdout_ok,
    status = why.status, code = why.code }
else
  report.large_argv = { runs = nil, failure = failure(why) }
end
report.auto_exec_form = form or "unknown"

local SHELL_PROBE = [[
printf 'exe=%s\n' "$(readlink /proc/$$/exe 2>/dev/null)"
printf 'arg0=%s\n' "$0"
if [ -n "$BASH_VERSION" ]; then
  if shopt -q login_shell; then echo login=yes; else echo login=no; fi
else
  case "$0" in -*) echo login=yes ;; *) echo login=no ;; esac
fi
printf 'home=%s\n' "$HOME"
printf 'user=%s\n' "$(id -un 2>/dev/null)"
printf 'path=%s\n' "$PATH"
printf 'pm2=%s\n' "$(command -v pm2)"
printf 'claude=%s\n' "$(command -v claude)"
printf 'setsid=%s\n' "$(command -v setsid)"
]]
local sh = exec({ SHELL_PROBE })
local facts = {}
for k, v in sh.stdout:gmatch("([%w_]+)=([^\n]*)") do facts[k] = v end
local function opt(v) return v ~= "" and v or nil end
report.shell = { exe = opt(facts.exe), arg0 = facts.arg0, login = facts.login == "yes" }
report.home = facts.home
report.user = opt(facts.user)
report.path = facts.path
report.pm2 = opt(facts.pm2)
report.claude = opt(facts.claude)
report.setsid = opt(facts.setsid)

-- How the service reports a command that a signal ended (galley's spawn wrapper reports 128 + N
-- itself), and a spawned command's kill through the provider: TERM reaches the command's trap,
-- whose exit code the handle reports (7).
report.signal_exit_code = math.tointeger(exec({ "kill -TERM $$" }).exit_code)
say("spawning a command and sending it TERM ...")
local sp_ok, sp = pcall(function()
  local h = provider.spawn(id, { "/bin/sh", "-c",
    "trap 'echo got-TERM; exit 7' TERM; echo up; while :; do sleep 0.1; done" })
  local got, deadline = "", runtime.now_ms() + 30000
  while not got:find("up\n", 1, true) do
    local kind, data = h:read(math.max(1, deadline - runtime.now_ms()))
    if kind == nil or kind == "exit" then break end
    if kind == "stdout" then got = got .. data end
  end
  local killed = h:kill("TERM")
  local r = h:wait(30000)
  h:close()
  return { started = got:find("up\n", 1, true) ~= nil, signalled = killed == true,
    exit_code = r and math.tointeger(r.exit_code),
    trap_ran = r ~= nil and (r.stdout or ""):find("got-TERM", 1, true) ~= nil }
end)
report.spawn_kill = sp_ok and sp or { failure = tostring(errors.is(sp) and sp.code or sp) }
report.spawn_kill.ok = sp_ok and sp.exit_code == 7 and sp.trap_ran or false

-- A file write of one exec (60 KiB: one exec line even where the service joins): whether the
-- instance could read its base64 back from its own argv (/proc/PID/cmdline: execfiles' fast
-- path; else the here-document, in the same exec).
say("writing 60 KiB through the files API ...")
local fw_ok, fw = pcall(function()
  local codec = require("galley.core.codec")
  local data = codec.random_bytes(60 * 1024)
  local before = provider.files.stats().argv_reads
  provider.files.write_file_atomic(id, "/tmp/.galley-recon-write", data)
  local back = provider.files.read_file(id, "/tmp/.galley-recon-write")
  provider.files.delete_file(id, "/tmp/.galley-recon-write")
  return { content_ok = back == data, argv_readback = provider.files.stats().argv_reads > before }
end)
report.file_write = fw_ok and fw or { failure = tostring(errors.is(fw) and fw.code or fw) }

-- ---------------------------------------------------------------------------------------------
-- Largest one-element command: "printf ok #xxx...", binary search
-- ---------------------------------------------------------------------------------------------

local function runs(n)
  local line = "printf ok #" .. ("x"):rep(n - 11)
  local res = client:instances_exec(id, { line })
  return res ~= nil and res.exit_code == 0 and res.stdout == "ok"
end

say("searching the largest one-element command (up to " .. opts.max_command_bytes .. " bytes) ...")
local lo, hi = 4096, opts.max_command_bytes
if not runs(lo) then
  report.largest_command_bytes = nil
elseif runs(hi) then
  report.largest_command_bytes = hi
else
  while hi - lo > 1 do
    local mid = (lo + hi) // 2
    if runs(mid) then lo = mid else hi = mid end
  end
  report.largest_command_bytes = lo
end
report.largest_command_bound = opts.max_command_bytes

-- ---------------------------------------------------------------------------------------------
-- Metadata, error bodies, starting from a pending snapshot, DELETE twice
-- ---------------------------------------------------------------------------------------------

-- Both bodies carry the run's tags, so a replace keeps them.
local function with_tags(t)
  for k, v in pairs(TAG) do t[k] = v end
  return t
end
check(client:call("instances.metadata", { instance_id = id, body = with_tags({ recon_a = "1" }) }), nil, "metadata")
local after = check(client:call("instances.metadata", { instance_id = id, body = with_tags({ recon_b = "2" }) }), nil,
  "metadata")
local md = check(client:call("instances.get", { instance_id = id }), nil, "get").metadata or {}
report.metadata = (md.recon_a == "1" and md.recon_b == "2") and "merge"
  or (md.recon_a == nil and md.recon_b == "2") and "replace" or "unknown"
report.metadata_answer_has_it = type(after.metadata) == "table" and after.metadata.recon_b == "2"

local _, nf = client:call("instances.get", { instance_id = "morphvm_galleyrecon404" })
report.not_found_body = nf and failure(nf) or { status = 200 }
local _, inval = client:call("instances.exec", { instance_id = id, body = { command = "not a list" } })
report.validation_body = inval and failure(inval) or { status = 200 }

if opts.no_pending_snapshot then
  report.start_from_pending_snapshot = { observed = false, why = "--no-pending-snapshot" }
else
  say("making a snapshot from " .. opts.image .. " and starting from it at once ...")
  local snap, serr = client:call("snapshots.create", { body = { image_id = opts.image, vcpus = 1, memory = 128,
    disk_size = 700, metadata = TAG, ttl_seconds = TTL } })
  if not snap then
    report.start_from_pending_snapshot = { observed = false, why = "POST /snapshot failed", create = failure(serr) }
  else
    created.snapshots[#created.snapshots + 1] = snap.id
    local r = { snapshot_status = snap.status }
    if snap.status ~= "pending" then
      r.observed, r.why = false, "POST /snapshot answered " .. tostring(snap.status)
    else
      local inst, ierr = client:call("instances.start", { snapshot_id = snap.id,
        body = { metadata = TAG, ttl_seconds = TTL, ttl_action = "stop" } })
      if inst then
        created.instances[#created.instances + 1] = inst.id
        r.status, r.instance_status = 200, inst.status
        client:call("instances.stop", { instance_id = inst.id })
      else
        local f = failure(ierr)
        r.status, r.code, r.detail = f.status, f.code, f.detail
      end
      r.observed = true
    end
    report.start_from_pending_snapshot = r
  end
end

-- ---------------------------------------------------------------------------------------------
-- The SSH gateway, on the instance (before the DELETE probes below remove it)
-- ---------------------------------------------------------------------------------------------

do
  local gateway = require("galley.providers.morph_gateway")
  local codec = require("galley.core.codec")
  local conf = (not opts.no_ssh) and gateway.resolve(nil, client:base_url()) or nil
  if not conf then
    report.ssh_gateway = { probed = false, why = opts.no_ssh and "--no-ssh"
      or "no gateway known (set MORPH_SSH_HOSTNAME and MORPH_SSH_PORT)" }
  else
    local gw = gateway.new({ host = conf.host, port = conf.port, api_key = env("MORPH_API_KEY"), log = log })
    local data = codec.random_bytes(512 * 1024)
    local res, gerr = gw:stream(id, { "/bin/sh", "-c",
      'printf "%s\n%s\n" "$(id -un)" "$HOME"; (sha256sum 2>/dev/null || openssl dgst -sha256 -r) | cut -c1-64' },
      { stdin = data })
    local r = { probed = true, host = conf.host, port = conf.port }
    if res then
      -- 12 commands at once over the connection the first one opened (galley's own cap lifted)
      local pssh = require("galley.providers.proxmox_ssh")
      local task = require("galley.task")
      local cap = pssh.MAX_MUX_SESSIONS
      pssh.MAX_MUX_SESSIONS = 1000
      local tasks = {}
      for i = 1, 12 do
        tasks[i] = task.spawn(function() return gw:stream(id, { "/bin/sh", "-c", "sleep 1; echo ok" }, {}) end)
      end
      local quiet = 0
      for _, t in ipairs(task.join(tasks)) do
        local v = t.ok and t.value
        if v and v.exit_code == 0 and v.stdout == "ok\n" and v.stderr == "" then quiet = quiet + 1 end
      end
      pssh.MAX_MUX_SESSIONS = cap
      r.sessions = { tried = 12, quiet = quiet }
    end
    gw:close()
    if res then
      local user, home, sum = res.stdout:match("^([^\n]*)\n([^\n]*)\n(%x+)")
      r.login, r.exit_code, r.user, r.home = true, res.exit_code, user, home
      r.stdin_ok = sum == codec.sha256(data)
    else
      r.login = false
      r.error = gerr and (gerr.cause and gerr.cause.message or gerr.message) or "?"
    end
    report.ssh_gateway = r
  end
end

local function delete_answer()
  local res, err = client:call("instances.stop", { instance_id = id })
  if res == true then return { status = 204 } end
  if res then return { status = 200 } end
  return failure(err)
end
report.delete_twice = { first = delete_answer(), second = delete_answer() }


-- ---------------------------------------------------------------------------------------------
-- Report
-- ---------------------------------------------------------------------------------------------

if opts.json then
  io.stdout:write(json.encode(report), "\n")
  return
end

local out = {}
local function line(label, text) out[#out + 1] = ("%-22s %s"):format(label .. ":", text) end
local function answer(a)
  if a.observed == false then return "not observed (" .. a.why .. ")" end
  if a.status == 200 or a.status == 204 then
    return tostring(a.status) .. (a.instance_status and (", status " .. a.instance_status) or "")
  end
  return ("%s %s, detail %s"):format(tostring(a.status), tostring(a.code), a.detail)
end
out[#out + 1] = ("morph recon on %s at %s (snapshot %s)"):format(id, report.base_url, snapshot)
line("argv_mode", report.argv_mode .. (" (printf %%s, 'a b' printed %q)"):format(probe.stdout))
local la = report.large_argv
line("large argv (~200 KiB)", la.runs and "runs faithfully" or la.runs == false and ("does not run (%s)"):format(
  la.status and ("HTTP %s %s"):format(tostring(la.status), tostring(la.code))
  or ("exit code %s%s"):format(tostring(la.exit_code), la.output_ok and "" or ", other output"))
  or ("unknown (%s %s)"):format(tostring(la.failure.status), tostring(la.failure.code)))
line("auto exec form", report.auto_exec_form .. (report.auto_exec_form == "argv" and " (payloads as argv arrays)"
  or report.auto_exec_form == "string" and " (every exec one line, ~88 KiB of content a request)" or ""))
line("one-element shell", ("%s ($0 %s), login shell: %s"):format(tostring(report.shell.exe),
  tostring(report.shell.arg0), report.shell.login and "yes" or "no"))
line("user, home", ("%s, %s"):format(tostring(report.user), tostring(report.home)))
line("PATH", tostring(report.path))
line("pm2, claude", ("%s, %s"):format(report.pm2 or "not found", report.claude or "not found"))
line("killed by a signal", ("exit code %s (kill -TERM $$); setsid %s"):format(tostring(report.signal_exit_code),
  report.setsid or "not found: a spawned command's kill reaches it alone, not what it started"))
line("spawn kill", report.spawn_kill.ok and "TERM reached the command's trap, exit 7"
  or ("FAILED (%s)"):format(report.spawn_kill.failure or ("exit code %s, trap %s"):format(
    tostring(report.spawn_kill.exit_code), report.spawn_kill.trap_ran and "ran" or "did not run")))
local fw_r = report.file_write
line("file write (60 KiB)", fw_r.failure and ("FAILED (%s)"):format(fw_r.failure)
  or ("%s; base64 %s"):format(fw_r.content_ok and "arrived whole" or "DAMAGED", fw_r.argv_readback
    and "read back from the instance's argv (/proc)" or "through the here-document (no argv read-back)"))
line("boot answers", tostring(report.boot.answer_status))
line("exec on pending", answer(report.exec_on_pending))
line("start from pending", answer(report.start_from_pending_snapshot))
line("instance metadata", report.metadata)
line("DELETE twice", ("%s, then %s"):format(answer(report.delete_twice.first), answer(report.delete_twice.second)))
line("404 body", "detail " .. report.not_found_body.detail)
line("422 body", "detail " .. report.validation_body.detail)
local sg = report.ssh_gateway
line("ssh gateway", not sg.probed and ("not probed (%s)"):format(sg.why)
  or sg.login and ("%s:%d: login works, %s in %s, stdin %s; %d of %d commands at once on one connection quiet")
    :format(sg.host, sg.port, tostring(sg.user), tostring(sg.home), sg.stdin_ok and "byte for byte" or "DAMAGED",
      sg.sessions and sg.sessions.quiet or 0, sg.sessions and sg.sessions.tried or 0)
  or ("%s:%d: no login (%s)"):format(sg.host, sg.port, tostring(sg.error)))
line("largest command", report.largest_command_bytes and (report.largest_command_bytes == opts.max_command_bytes
  and (">= %d bytes (the bound)"):format(report.largest_command_bytes)
  or ("%d bytes"):format(report.largest_command_bytes)) or "under 4096 bytes")
io.stdout:write(table.concat(out, "\n"), "\n")
