--- `galley emulate`: serve the Morph API on 127.0.0.1 until Ctrl-C, SIGTERM or
-- POST /_emulator/shutdown.
local emulator = require("galley.emulator")
local faults = require("galley.emulator.faults")

local M = {}

local EXIT_USAGE = 2

M.summary = "serve the Morph API (or, with `proxmox`, Proxmox VE) on 127.0.0.1 with instances that really run"
M.usage = "galley emulate [--port N] [--state-dir D] [--api-key K] [--latency-ms N] "
  .. "[--boot-delay-ms N] [--fault SPEC]... [--snapshot ID[=DIR]]... [--no-sandbox] [--argv-mode exec|join]"
  .. " [--ssh-port N | --no-ssh]"
  .. " [LIMITS]\n       " .. require("galley.emulator.proxmox_cli").usage
M.help = ([[
Prints `listening on http://127.0.0.1:PORT/api` once ready; point MORPH_BASE_URL there. The
second line is `ssh gateway on 127.0.0.1:PORT` (or `ssh gateway off`): the emulator's guess of
Morph's ssh.cloud.morph.so, user `<instance_id>:<api_key>`, any client key (docs/emulator.md).
Only 127.0.0.1 is ever bound.

  --port N           port to listen on (default 0: a free one)
  --state-dir D      instance and snapshot files (default: a temporary directory, removed on exit)
  --api-key K        bearer key clients must send (default: $MORPH_API_KEY, else the
                     development key %s). Prefer the environment: argv is visible to others.
  --latency-ms N     wait N ms before answering each /api request
  --boot-delay-ms N  instances stay `pending` this long before `ready` (default 50)
  --fault SPEC       inject a fault, e.g. method=POST,path=/instance/*/exec,action=status,status=503,
                     retry_after=1,count=2 (actions: status delay stall reset reset_after
                     malformed truncate; fields: method path count status retry_after delay_ms
                     bytes)
  --no-sandbox       run instance commands directly on this machine with your rights (HOME =
                     the instance's directory) instead of in bubblewrap sandboxes; absolute
                     paths such as /root/... then touch this machine (a warning is printed)
  --ssh-port N       the SSH gateway's port (default 0: a free one); given, a gateway that
                     cannot start (libssh missing) is an error, not a warning
  --no-ssh           no SSH gateway
  --snapshot ID[=DIR]  another ready snapshot, empty or with DIR's files; %s always exists
  --argv-mode M      how an exec `command` of several elements runs: `exec` (default) runs it
                     as an argv; `join` space-joins it and runs the line with /bin/sh -c, as an
                     SSH-style server does (a one-element command is a shell line either way).
                     `galley run morph-recon` tells which one a service does.

Limits (0 or absent: the default):
  --max-connections N             open connections at once (512); at the limit the oldest
                                  connection that is idle or still sending headers is closed
  --max-connections-per-client N  open connections from one address (256), the same way
  --header-timeout-ms N           request line and headers must arrive within N ms (10000)
  --idle-timeout-ms N             keep-alive wait and upload silence (60000)
  --max-body-bytes N              largest request body (64 MiB; more is 413)
  --max-exec-output N             bytes kept of one exec's stdout and stderr each (64 MiB; head
                                  and tail, the answer marked "truncated": true)
A request with a body but without the key is answered 401 before its body is read.

Instances are `local` provider sandboxes (bubblewrap): their own user namespace (root inside is
no one outside), pid, ipc and uts namespaces, the system directories read-only, the instance's
own /root (HOME, the working directory) and /tmp, a per-instance cgroup (see docs/api/providers.md,
Isolation). Exec runs a one-element
command through /bin/sh -c and longer argv as --argv-mode says, with a clean environment (PATH, USER,
LANG...; never the API key). Snapshots and branches copy the files. Stopping an instance or the
emulator kills its processes, daemons included; pause freezes them. Without bubblewrap (or with
--no-sandbox) instances are plain directories with HOME set to them and commands run on this
machine.

Where the Morph service is not documented, the emulator decides:
  * POST /instance/ID/metadata replaces the metadata, like the snapshot endpoint;
  * exec on an instance that is not `ready` is 409; so are pause/resume/snapshot/branch of a
    `pending` one and start/boot from a `pending` snapshot;
  * a TTL keeps running while an instance is paused; resume re-arms it;
  * POST /snapshot answers `pending` (ready after the boot delay); instance snapshots are
    ready at once; a known `digest` returns the existing snapshot;
  * HTTP service URLs are https://NAME-ID.http.localhost (nothing serves them); SSH keys are
    random placeholders;
  * a missing or wrong key is 401 {"detail": ...}.

Control routes need the same bearer key and are not logged: GET/DELETE /_emulator/log
(records {method, path, status, ms, conn, fault}; paths relative to /api, no query),
GET /_emulator/state, GET/POST/DELETE /_emulator/faults (fault = the --fault fields as JSON),
POST /_emulator/shutdown.

`galley emulate proxmox [OPTIONS]` serves an offline Proxmox VE instead:
]] .. require("galley.emulator.proxmox_cli").help .. "\n"):format(emulator.DEV_API_KEY, emulator.DEFAULT_SNAPSHOT)

local function usage_error(fmt, ...)
  io.stderr:write("galley emulate: ", fmt:format(...), "\nTry 'galley help emulate' for usage.\n")
  return nil
end

--- Parses the command line into emulator options (nil after printing a usage error).
---@param args string[]
---@return table|nil opts
function M.parse(args)
  local opts = { faults = {}, snapshots = {}, port = 0, boot_delay_ms = 50, latency_ms = 0 }
  local ints = { ["--port"] = "port", ["--latency-ms"] = "latency_ms", ["--boot-delay-ms"] = "boot_delay_ms",
    ["--max-exec-output"] = "max_output", ["--ssh-port"] = "ssh_port" }
  local limits = { ["--max-connections"] = "max_connections",
    ["--max-connections-per-client"] = "max_connections_per_client",
    ["--header-timeout-ms"] = "header_timeout_ms", ["--idle-timeout-ms"] = "idle_timeout_ms",
    ["--max-body-bytes"] = "max_body_bytes" }
  opts.limits = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    local function value()
      if inline then return inline end
      i = i + 1
      return args[i]
    end
    if ints[name] or limits[name] then
      local v = value()
      local n = v and v:match("^%d+$") and math.tointeger(tonumber(v))
      if not n then return usage_error("'%s' needs a non-negative integer", name) end
      if (name == "--port" or name == "--ssh-port") and n > 65535 then return usage_error("port %d out of range", n) end
      local is_time_or_port = name == "--port" or name == "--ssh-port" or name == "--latency-ms"
        or name == "--boot-delay-ms"
      if not is_time_or_port and n > 1 << 40 then
        return usage_error("'%s' %d is too large", name, n)
      end
      if limits[name] then
        opts.limits[limits[name]] = n > 0 and n or nil
      elseif name == "--max-exec-output" then
        opts.max_output = n > 0 and n or nil
      else
        opts[ints[name]] = n
      end
    elseif name == "--state-dir" or name == "--api-key" then
      local v = value()
      if not v or v == "" then return usage_error("'%s' needs a value", name) end
      opts[name == "--state-dir" and "state_dir" or "api_key"] = v
    elseif name == "--fault" then
      local v = value()
      if not v then return usage_error("'--fault' needs a spec") end
      local f, problem = faults.parse(v)
      if not f then return usage_error("bad --fault '%s': %s", v, problem) end
      opts.faults[#opts.faults + 1] = v
    elseif name == "--argv-mode" then
      local v = value()
      if v ~= "exec" and v ~= "join" then return usage_error("'--argv-mode' needs exec or join") end
      opts.argv_mode = v
    elseif name == "--no-ssh" then
      if inline then return usage_error("'--no-ssh' takes no value") end
      opts.ssh = false
    elseif name == "--no-sandbox" then
      if inline then return usage_error("'--no-sandbox' takes no value") end
      opts.sandbox = false
    elseif name == "--snapshot" then
      local v = value()
      local id, dir = (v or ""):match("^([%w_%-]+)=(.+)$")
      id = id or (v or ""):match("^[%w_%-]+$")
      if not id then return usage_error("'--snapshot' needs ID or ID=DIR") end
      opts.snapshots[#opts.snapshots + 1] = { id = id, dir = dir }
    else
      return usage_error("unknown option '%s'", a)
    end
    i = i + 1
  end
  if not opts.api_key then
    local env = os.getenv("MORPH_API_KEY")
    opts.api_key = (env and env ~= "") and env or emulator.DEV_API_KEY
  end
  return opts
end

--- The lines a user pastes to point galley (and Morph SDKs) at this emulator, on stderr: stdout's
-- first line stays `listening on URL`. The key is printed only when it is the public development
-- key or was given on the command line; a key from the environment is referred to, not shown.
function M.say_ready(port, opts, ssh_port)
  local env = os.getenv("MORPH_API_KEY")
  local key = (env and env ~= "" and opts.api_key == env) and '"$MORPH_API_KEY"' or opts.api_key
  -- with the gateway: MORPH_SSH_HOSTNAME/PORT, which the Morph provider (and Morph's SDKs) read
  local ssh = ssh_port and (" MORPH_SSH_HOSTNAME=127.0.0.1 MORPH_SSH_PORT=%d"):format(ssh_port) or ""
  io.stderr:write(("galley emulate: ready; in another shell:\n  export MORPH_BASE_URL=http://127.0.0.1:%d/api"
    .. " MORPH_API_KEY=%s%s\ngalley emulate: ready snapshot: %s (galley boot %s; galley run boot-and-run)\n")
    :format(port, key, ssh, emulator.DEFAULT_SNAPSHOT, emulator.DEFAULT_SNAPSHOT))
end

function M.run(args)
  if args[1] == "proxmox" then
    return require("galley.emulator.proxmox_cli").run(table.move(args, 2, #args, 1, {}))
  end
  local opts = M.parse(args)
  if not opts then return EXIT_USAGE end
  return require("galley.emulator.cli_run").run(opts, {
    name = "galley emulate", temp_prefix = "galley-emulate", new = emulator.new,
    announce = function(emu, port)
      io.stdout:write(("listening on http://127.0.0.1:%d/api\n"):format(port))
      io.stdout:write(emu.ssh_port and ("ssh gateway on 127.0.0.1:%d\n"):format(emu.ssh_port) or "ssh gateway off\n")
      io.stdout:flush()
      if not opts.verbose then io.stderr:write("galley emulate: state in ", opts.state_dir, "\n") end
      M.say_ready(port, opts, emu.ssh_port)
    end,
  })
end

return M
