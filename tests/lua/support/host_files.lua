--- Helpers for the specs of galley's files on this machine (secret files, state directories):
-- an inotify observer (inotify-tools' inotifywait, a real process) that stats every file the
-- moment it is created, modified or chmodded in a directory, and throwaway users.
local support = require("support")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")

local M = {}

local q = support.q

--- The galley binary under test, as an absolute path (other users and other directories run it).
M.bin = fs.realpath(support.bin) or fs.realpath(support.source_dir .. "/" .. support.bin) or support.bin

-- Watches $1 (log to $2, inotifywait's stderr to $3) while the command after them runs; each
-- event becomes "EVENT|name|mode" (mode "gone" when the file had already disappeared).
local OBSERVER = [[
set -u
dir=$1 log=$2 err=$3
shift 3
fifo=$log.fifo
mkfifo "$fifo"
inotifywait -m -e create -e attrib -e modify -e moved_to --format '%e|%f' "$dir" >"$fifo" 2>"$err" &
ipid=$!
while IFS='|' read -r ev f; do
  m=$(stat -c %a -- "$dir/$f" 2>/dev/null) || m=gone
  printf '%s|%s|%s\n' "$ev" "$f" "$m"
done <"$fifo" >"$log" &
rpid=$!
i=0
until grep -q 'Watches established' "$err" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -gt 1000 ]; then echo "inotifywait did not start" >&2; kill "$ipid"; exit 99; fi
  sleep 0.01
done
"$@"
rc=$?
sleep 0.3
kill "$ipid"
wait "$rpid"
rm -f "$fifo"
exit "$rc"
]]

--- True when inotifywait is installed (scripts/setup installs inotify-tools).
function M.have_inotify()
  return proc.which("inotifywait") ~= nil
end

--- Runs `argv` while an observer watches `dir`. Returns the events ({event, name, mode} with
-- mode an integer, or nil when the file was gone by the time it was looked at) and the run
-- result {exit_code, stdout, stderr} of the observed command.
---@param dir string
---@param argv string[]
---@param env? table<string,string> the command's environment (default: this one's)
function M.observe(dir, argv, env)
  local work = assert(fs.mkdtemp("galley-observer-"))
  local cmd = { "bash", "-c", OBSERVER, "observer", dir, work .. "/log", work .. "/err" }
  for _, a in ipairs(argv) do cmd[#cmd + 1] = a end
  local r = assert(proc.run({ argv = cmd, env = env, timeout_ms = 120000 }))
  local events = {}
  for line in (fs.read(work .. "/log") or ""):gmatch("[^\n]+") do
    local ev, name, mode = line:match("^([^|]*)|([^|]*)|(.*)$")
    if ev then events[#events + 1] = { event = ev, name = name, mode = tonumber(mode, 8) } end
  end
  assert(fs.remove_tree(work))
  return events, r
end

--- `galley -e CODE` with a umask of 000, as an argv for observe.
---@param code string
function M.galley_umask0(code)
  return { "bash", "-c", 'umask 000; exec "$0" -e "$1"', M.bin, code }
end

--- Creates a throwaway system user whose password-database home is `home` (which this
-- function creates, owned by the user, mode 0700). Returns the user's name and uid; call
-- M.remove_user(name) when done. Needs root.
---@param home string
---@return string name, integer uid
function M.throwaway_user(home)
  local name = ("galley-t%d%03d"):format(os.time() % 1000000, math.random(0, 999))
  local r = assert(proc.run({ argv = { "useradd", "--system", "-M", "-d", home, "-s", "/bin/sh", "-U", name },
    timeout_ms = 30000 }))
  assert(r.exit_code == 0, "useradd failed: " .. r.stderr)
  local id = assert(proc.run({ argv = { "id", "-u", name }, timeout_ms = 10000 }))
  assert(fs.mkdir_p(home, "700"))
  assert(proc.run({ argv = { "chown", name .. ":" .. name, home }, timeout_ms = 10000 }).exit_code == 0)
  return name, tonumber(id.stdout)
end

function M.remove_user(name)
  proc.run({ argv = { "userdel", name }, timeout_ms = 30000 })
end

--- Runs `galley ARGS...` as `user` with exactly the environment `env` (HOME only when given).
---@param user string
---@param args string[]
---@param env table<string,string>
function M.galley_as(user, args, env)
  local argv = { "runuser", "-u", user, "--", "env", "-i" }
  for k, v in pairs(env) do argv[#argv + 1] = k .. "=" .. v end
  argv[#argv + 1] = M.bin
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(proc.run({ argv = argv, timeout_ms = 60000 }))
end

M.q = q

return M
