-- pm2-recon.lua: the seeds' "PM2 Recon Scripts" on a real instance, as a short report.
--
--   galley run pm2-recon                 # local sandbox (morph when MORPH_API_KEY is set)
--   galley run pm2-recon --json          # machine-readable report on stdout
--
-- Finds out, with the pm2 CLI itself (no galley.process.pm2 in between), in private PM2_HOMEs
-- under ~ so the instance's own daemon is left alone:
--   payload   how `cd` and `export` behave inside a `bash -lc` payload, PM2's --cwd flag, and
--             where an app starts without a cd
--   env       whether the caller's environment is copied into the app and shown by `pm2 jlist`
--             (and whether `env -i` in front of `pm2 start` stops that)
--   jlist     whether `pm2 jlist` prints pure JSON on a fresh PM2_HOME, with the daemon up, after
--             `pm2 kill`, and what happens without pm2 on PATH
--   logs      the shape of `pm2 logs NAME --nostream` (first line, headers, prefixes cut to 10
--             characters), `--raw`, and an unknown name
--   names     duplicate names (a second start with the same name) and `pm2 delete`
--   stdin     what an app's stdin is (tty, pipe, EOF or not)
--   exit      what jlist records when a --no-autorestart app exits 3
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local errors = require("galley.errors")
local json = require("galley.json")
local logmod = require("galley.log")

local MORPH_SNAPSHOT = "snapshot_c1p8b6c2"

local opts = recipe.options({
  name = "pm2-recon",
  summary = "PM2 diagnostics on an instance: payload cd/env, jlist output, log shape, names, stdin, env copying.",
  options = {
    { "provider", choices = providers.names, help = "where to boot (default: morph with MORPH_API_KEY, else local)" },
    { "snapshot", metavar = "ID", env = "GALLEY_SNAPSHOT",
      help = "snapshot (default: $TESTING_SNAPSHOT_ID or " .. MORPH_SNAPSHOT .. " on morph, an empty one on local)" },
    { "json", type = "flag", help = "print the report as JSON" },
    { "keep", type = "flag", help = "keep the instance afterwards" },
  },
}, arg)

local function say(text) io.stderr:write(text, "\n") end

local level = logmod.default_level()
if level == "info" and not os.getenv("GALLEY_LOG") then level = "error" end
local log = logmod.new({ level = level, prefix = "pm2-recon" })

local provider, why = providers.default(opts.provider, { log = log })
local provider_name = provider.name or opts.provider
say("pm2-recon: " .. why)
local snapshot = opts.snapshot
if not snapshot and provider_name == "morph" then
  local env = os.getenv("TESTING_SNAPSHOT_ID")
  snapshot = (env and env ~= "") and env or MORPH_SNAPSHOT
end

say("pm2-recon: booting " .. (snapshot or "an empty instance") .. " ...")
local inst = provider.instances.boot(snapshot, {})
local id = inst.id
if opts.keep then
  recipe.keep()
else
  recipe.defer(function()
    local ok, err = pcall(provider.instances.terminate, id)
    if not ok and not errors.is(err, "NOT_FOUND") then error(err, 0) end
  end, "terminate " .. id)
end

-- Every script runs as `bash -c` with these helpers; PM2_HOME is private to the recon.
local PRELUDE = [=[
export PM2_HOME="$HOME/.pm2-recon"
command -v pm2 >/dev/null 2>&1 || { echo "pm2 is not on PATH" >&2; exit 127; }
# Waits until no app of this PM2_HOME is online or launching (at most about 15 s).
# Until PM2 lists the probe apps and none of them is still running (a failed or empty jlist, as
# from a daemon still starting on a busy machine, is not "idle").
wait_idle() {
  i=0
  while [ $i -lt 300 ]; do
    case $(pm2 jlist 2>/dev/null) in
      *'"status":"online"'*|*'"status":"launching"'*) ;;
      *'"name":"recon-'*) return 0 ;;
    esac
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}
]=]

local function run(script)
  local r = provider.exec(id, { kind = "argv", command = "bash", args = { "-c", PRELUDE .. script } })
  return r
end

local function must(r, what)
  if r.exit_code ~= 0 then
    errors.raise("PROCESS_ERROR", ("%s: exit %d: %s"):format(what, r.exit_code, (r.stderr or ""):sub(-500)),
      { hint = r.exit_code == 127 and "install pm2 (npm install -g pm2)" or nil })
  end
  return r
end

-- "app.key=value" lines (values may hold spaces) -> {app = {key = value}}.
local function app_values(text)
  local t = {}
  for app, k, v in (text or ""):gmatch("(recon%-[%w%-]+)%.([%w_]+)=([^\n]*)") do
    t[app] = t[app] or {}
    t[app][k] = v
  end
  return t
end

-- key=value lines -> table.
local function kv(text)
  local t = {}
  for k, v in (text or ""):gmatch("([%w_]+)=([^\n]*)") do t[k] = v end
  return t
end

local function int(v)
  return type(v) == "number" and (math.tointeger(v) or v) or v
end

-- The JSON array in pm2 jlist output: the whole text, else the last line starting with '['.
local function parse_jlist(stdout)
  local whole = json.decode(stdout)
  if type(whole) == "table" then return whole, true end
  local last
  for line in (stdout .. "\n"):gmatch("(.-)\n") do
    if line:sub(1, 1) == "[" then
      local t = json.decode(line)
      if type(t) == "table" then last = t end
    end
  end
  return last, false
end

local function lines_of(s)
  local out = {}
  for line in ((s or "") .. (s and s:sub(-1) ~= "\n" and "\n" or "")):gmatch("(.-)\n") do out[#out + 1] = line end
  return out
end

-- What a `pm2 jlist` answer looks like.
local function jlist_info(r)
  local stdout = r.stdout or ""
  local list, pure = parse_jlist(stdout)
  local before = 0
  for _, line in ipairs(lines_of(stdout)) do
    if line:sub(1, 1) == "[" and json.decode(line) then break end
    before = before + 1
  end
  return {
    exit_code = r.exit_code,
    pure_json = pure,
    parses_last_bracket_line = list ~= nil,
    lines_before_json = pure and 0 or before,
    banner = stdout:find("____", 1, true) ~= nil or stdout:find("Runtime Edition", 1, true) ~= nil,
    pm2_lines = select(2, stdout:gsub("%[PM2%]", "")),
    ansi = stdout:find("\27[", 1, true) ~= nil,
    trailing_newline = stdout:sub(-1) == "\n",
  }
end

local report = { instance_id = id, provider = provider_name, pm2_home = "~/.pm2-recon", findings = {} }
local F = report.findings

say("pm2-recon: probing (this takes a few seconds) ...")

-- jlist on a fresh PM2_HOME first (it also starts the recon's daemon).
local fresh = run([=[
export PM2_HOME="$HOME/.pm2-recon-fresh"
pm2 jlist
]=])
F.jlist_fresh = jlist_info(fresh)

local version = must(run("pm2 -v | tail -n 1"), "pm2 -v").stdout:match("(%d+%.%d+%.%d+)")
report.pm2_version = version

-- Start every probe app at once, then wait for them. The apps that report a value (cwd, env,
-- stdin) also write it to a file of their own (tee): PM2 loses the output of an app that exits
-- at once now and then (seen for the first app started, on a busy machine), and a lost log
-- line must not read as "cd does not work". The log-shape app lives a moment longer for the
-- same reason.
must(run([=[
pm2 ping >/dev/null 2>&1
mkdir -p /tmp/recon-caller "$PM2_HOME/vals"
start() { pm2 start bash --no-autorestart "$@" >/dev/null 2>&1; }
# payload: cd and export inside the payload
start --name recon-payload -- -lc 'cd /tmp && export RECON_VAR="with  spaces" &&
  { echo "pwd=$(pwd)" && echo "var=$RECON_VAR"; } | tee "$HOME/.pm2-recon/vals/recon-payload"'
# PM2's own --cwd flag
start --name recon-cwdflag --cwd /tmp -- -lc 'echo "pwd=$(pwd)" | tee "$HOME/.pm2-recon/vals/recon-cwdflag"'
# no cd: where does the app start?
(cd /tmp/recon-caller && start --name recon-nocd -- -lc 'echo "pwd=$(pwd)" | tee "$HOME/.pm2-recon/vals/recon-nocd"')
# the caller's environment
RECON_CALLER_VAR=from-the-caller start --name recon-env -- -lc \
  'echo "caller=${RECON_CALLER_VAR-unset}" | tee "$HOME/.pm2-recon/vals/recon-env"'
RECON_CALLER_VAR2=from-the-caller env -i PATH="$PATH" HOME="$HOME" PM2_HOME="$PM2_HOME" \
  pm2 start bash --no-autorestart --name recon-envclean -- -lc \
  'echo "caller=${RECON_CALLER_VAR2-unset}" | tee "$HOME/.pm2-recon/vals/recon-envclean"' >/dev/null 2>&1
# log shape: a long name, stdout and stderr lines
start --name recon-a-very-long-name -- -lc 'echo "out line 1"; echo "out line 2"; echo "err line 1" >&2; sleep 1'
# stdin
start --name recon-stdin -- -lc '{ if [ -t 0 ]; then echo "tty=yes"; else echo "tty=no"; fi
  echo "fd0=$(readlink /proc/self/fd/0)"; timeout 2 cat >/dev/null; echo "cat_rc=$?"; } |
  tee "$HOME/.pm2-recon/vals/recon-stdin"'
# exit code
start --name recon-exit -- -lc 'echo bye; exit 3'
# duplicate names
start --name recon-dup -- -lc 'echo first; sleep 1'
start --name recon-dup -- -lc 'echo second; sleep 1'
pm2 jlist > "$PM2_HOME/dup.json"
wait_idle || echo "apps still running after the wait" >&2
exit 0
]=]), "start the probe apps")

-- Out logs of the apps, and what pm2 shows.
local logs = must(run([=[
apps="recon-payload recon-cwdflag recon-nocd recon-env recon-envclean recon-stdin"
# Each app's own file (its out log where there is none).
i=0
while [ $i -lt 50 ]; do
  all=1
  for n in $apps; do [ -s "$PM2_HOME/vals/$n" ] || all=0; done
  [ $all = 1 ] && break
  sleep 0.1
  i=$((i + 1))
done
for n in $apps; do
  f=$PM2_HOME/vals/$n; [ -s "$f" ] || f=$PM2_HOME/logs/$n-out.log
  printf '%s\n' "$(cat "$f" 2>/dev/null | sed "s/^/$n./")"
done
]=]), "read the logs").stdout
local apps = app_values(logs)
local function got(app, key) return (apps[app] or {})[key] end

F.payload = {
  cd_and_export_work = got("recon-payload", "pwd") == "/tmp" and got("recon-payload", "var") == "with  spaces",
  pwd = got("recon-payload", "pwd"), var = got("recon-payload", "var"),
  cwd_flag_pwd = got("recon-cwdflag", "pwd"), cwd_flag_honoured = got("recon-cwdflag", "pwd") == "/tmp",
  no_cd_pwd = got("recon-nocd", "pwd"), no_cd_starts_in_caller_cwd = got("recon-nocd", "pwd") == "/tmp/recon-caller",
}

local jl = must(run("pm2 jlist"), "pm2 jlist")
local list = parse_jlist(jl.stdout) or {}
local by_name = {}
for _, p in ipairs(list) do
  by_name[p.name] = by_name[p.name] or {}
  table.insert(by_name[p.name], p)
end
F.jlist_running = jlist_info(jl)
F.jlist_running.processes = #list

F.env = {
  copied_from_caller = got("recon-env", "caller") == "from-the-caller",
  shown_in_jlist = jl.stdout:find("RECON_CALLER_VAR", 1, true) ~= nil,
  env_i_start_copies = got("recon-envclean", "caller") == "from-the-caller",
}

local fd0 = got("recon-stdin", "fd0")
F.stdin = { tty = got("recon-stdin", "tty") == "yes", fd0 = fd0 and (fd0:gsub(":%[%d+%]", "")) or nil,
  cat_exit = tonumber(got("recon-stdin", "cat_rc") or "") }
F.stdin.eof = F.stdin.cat_exit == 0
F.stdin.note = F.stdin.cat_exit == 124 and "open and never at EOF: `cat` waits forever (timeout 124)" or nil

local exit_app = (by_name["recon-exit"] or {})[1] or {}
local env_ = exit_app.pm2_env or {}
F.exit = { status = env_.status, exit_code = int(env_.exit_code), restarts = int(env_.restart_time) }

local dups = json.decode(must(run('cat "$PM2_HOME/dup.json"'), "read dup.json").stdout)
local dup_ids = {}
if type(dups) ~= "table" then
  dups = select(1, parse_jlist(must(run('cat "$PM2_HOME/dup.json"'), "read dup.json").stdout)) or {}
end
for _, p in ipairs(dups) do
  if p.name == "recon-dup" then dup_ids[#dup_ids + 1] = int(p.pm_id) end
end
local del = run("pm2 delete recon-dup >/dev/null 2>&1; echo rc=$?; pm2 jlist")
local after_list = parse_jlist(del.stdout:gsub("^rc=%d+\n", "")) or {}
local left = 0
for _, p in ipairs(after_list) do if p.name == "recon-dup" then left = left + 1 end end
F.names = { duplicates_allowed = #dup_ids > 1, same_name_processes = #dup_ids, pm_ids = dup_ids,
  delete_rc = tonumber(del.stdout:match("^rc=(%d+)")), left_after_delete = left }

-- Log shape.
local shape = run([=[
pm2 logs recon-a-very-long-name --nostream --lines 5 --no-color > "$PM2_HOME/l1.out" 2> "$PM2_HOME/l1.err"
echo "rc=$?"
pm2 logs recon-a-very-long-name --nostream --lines 5 --raw --no-color > "$PM2_HOME/l2.out" 2> "$PM2_HOME/l2.err"
pm2 logs recon-no-such-app --nostream --no-color > "$PM2_HOME/l3.out" 2>&1
echo "unknown_rc=$?"
]=])
local function rfile(name) return run('cat "$PM2_HOME/' .. name .. '"').stdout end
local l1, l1e, l2, l2e, l3 = rfile("l1.out"), rfile("l1.err"), rfile("l2.out"), rfile("l2.err"), rfile("l3.out")
do
  local first = lines_of(l1)[1]
  local headers, prefix_example, prefix_name = 0, nil, nil
  for _, line in ipairs(lines_of(l1)) do
    if line:match(" last %d+ lines:$") then headers = headers + 1 end
    local p = line:match("^(%d+|.-| )out line 1$")
    if p then prefix_example, prefix_name = p, p:match("^%d+|(.-)%s*| $") end
  end
  local function where(text_out, text_err)
    if text_out:find("err line 1", 1, true) then return "stdout" end
    return text_err:find("err line 1", 1, true) and "stderr" or "missing"
  end
  local raw_out_bare = false
  for _, line in ipairs(lines_of(l2)) do if line == "out line 1" then raw_out_bare = true end end
  local k = kv(shape.stdout)
  F.logs = {
    exit_code = tonumber(k.rc),
    first_line = first,
    tailing_first = first ~= nil and first:find("^%[TAILING%]") ~= nil,
    file_headers = headers,
    prefix_example = prefix_example,
    prefix_name = prefix_name,
    prefix_truncated = prefix_name ~= nil and #prefix_name < #"recon-a-very-long-name",
    err_lines_on = where(l1, l1e),
    raw_out_lines_bare = raw_out_bare,
    raw_keeps_tailing_and_headers = l2:find("[TAILING]", 1, true) ~= nil and l2:find(" last %d+ lines:") ~= nil,
    raw_err_lines_on = where(l2, l2e),
    unknown_name_exit_code = tonumber(k.unknown_rc),
    unknown_name_output = (l3:gsub("%s+$", "")),
  }
end

-- jlist after `pm2 kill` (the next command respawns the daemon), and without pm2 on PATH.
local killed = run("pm2 kill >/dev/null 2>&1; pm2 jlist")
F.jlist_after_kill = jlist_info(killed)
local nopm2 = provider.exec(id, { kind = "argv", command = "bash", args = { "-c", "PATH=/nonexistent; pm2 jlist" } })
F.jlist_without_pm2 = { exit_code = nopm2.exit_code, stderr = (nopm2.stderr or ""):gsub("%s+$", "") }

-- Stop the daemons we started (terminate would too).
run('pm2 kill >/dev/null 2>&1; PM2_HOME="$HOME/.pm2-recon-fresh" pm2 kill >/dev/null 2>&1; '
  .. 'rm -rf "$HOME/.pm2-recon" "$HOME/.pm2-recon-fresh" /tmp/recon-caller')

-- ---------------------------------------------------------------------------------------------
-- Report
-- ---------------------------------------------------------------------------------------------

if opts.json then
  io.stdout:write(json.encode(report), "\n")
  return
end

local function yn(b) return b and "yes" or "no" end
local out = {}
local function line(label, text) out[#out + 1] = ("%-22s %s"):format(label .. ":", text) end

local function jlist_text(j)
  if j.pure_json then return ("pure JSON (exit %d)"):format(j.exit_code) end
  return ("NOT pure JSON (exit %d): %d line(s) before it, %d [PM2] line(s)%s%s; the last '[' line %s"):format(
    j.exit_code, j.lines_before_json or 0, j.pm2_lines or 0, j.banner and ", ASCII banner" or "",
    j.ansi and ", ANSI colour" or "", j.parses_last_bracket_line and "parses" or "does not parse either")
end

out[#out + 1] = ("pm2 recon on %s (%s), pm2 %s, PM2_HOME %s"):format(id, provider_name, tostring(version),
  report.pm2_home)
local P = F.payload
line("payload cd + export", P.cd_and_export_work and ("work (pwd %s, var %q)"):format(P.pwd, P.var)
  or (P.pwd == nil and P.var == nil and "unknown: the probe app's output never arrived")
  or ("DO NOT work as expected (pwd %s, var %s)"):format(tostring(P.pwd), tostring(P.var)))
line("--cwd flag", P.cwd_flag_honoured and "honoured here (pwd /tmp); galley still cds in the payload"
  or ("not honoured (pwd %s)"):format(tostring(P.cwd_flag_pwd)))
line("no cd", P.no_cd_starts_in_caller_cwd and "the app starts in the pm2 caller's cwd"
  or ("the app starts in %s"):format(tostring(P.no_cd_pwd)))
line("caller env", ("copied into the app: %s; shown by jlist: %s; with env -i before pm2 start: %s"):format(
  yn(F.env.copied_from_caller), yn(F.env.shown_in_jlist), F.env.env_i_start_copies and "still copied" or "not copied"))
line("jlist, fresh home", jlist_text(F.jlist_fresh))
line("jlist, daemon up",
  jlist_text(F.jlist_running) .. (F.jlist_running.trailing_newline and "" or ", no trailing newline"))
line("jlist, after kill", jlist_text(F.jlist_after_kill))
line("jlist, no pm2", ("exit %d (%s)"):format(F.jlist_without_pm2.exit_code, F.jlist_without_pm2.stderr))
local L = F.logs
line("logs --nostream", ("first line %q; %d file header(s); prefix %q%s; err lines on %s"):format(
  L.tailing_first and "[TAILING] Tailing last N lines for [NAME] process ..." or tostring(L.first_line),
  L.file_headers, tostring(L.prefix_example),
  L.prefix_truncated and " (name cut to 10 characters)" or "", L.err_lines_on))
line("logs --raw", ("bare lines: %s; [TAILING] and headers still printed: %s; err lines on %s"):format(
  yn(L.raw_out_lines_bare), yn(L.raw_keeps_tailing_and_headers), L.raw_err_lines_on))
line("logs, unknown name", ("exit %s, output %q"):format(tostring(L.unknown_name_exit_code), L.unknown_name_output))
local N = F.names
line("duplicate names", N.duplicates_allowed
  and ("allowed: %d processes named recon-dup (pm_id %s); pm2 delete removed %s"):format(N.same_name_processes,
    table.concat(N.pm_ids, ", "), N.left_after_delete == 0 and "all of them" or ("all but " .. N.left_after_delete))
  or ("not allowed (%d process)"):format(N.same_name_processes))
local S = F.stdin
line("app stdin", ("tty: %s; fd 0: %s; %s"):format(yn(S.tty), tostring(S.fd0), S.eof and "reads EOF at once"
  or (S.note or ("`cat` exit " .. tostring(S.cat_exit)))))
line("exit code", ("--no-autorestart app exiting 3: status %s, exit_code %s, restarts %s"):format(
  tostring(F.exit.status), tostring(F.exit.exit_code), tostring(F.exit.restarts)))
io.stdout:write(table.concat(out, "\n"), "\n")
