--- galley.providers.proxmox_ssh: the real OpenSSH client as the Proxmox provider's exec channel.
--
--   local ssh = proxmox_ssh.new{ dir = "/state/proxmox/run-ab12", ssh_command = {"ssh"} }
--   local r = ssh:run({host = "10.0.0.5", user = "root", known_hosts = "ct-105"}, {"uname", "-a"})
--   ssh:close()   -- ends the multiplexed connections (ssh -O exit); removes an owned dir
--
-- One private directory (mode 700) holds everything: the per-run ed25519 key (`ssh-keygen`, mode
-- 600), a galley-managed known_hosts per target (a container's host key is accepted on first
-- contact, `StrictHostKeyChecking=accept-new`; a pinned one, e.g. the node's, is written there
-- first and checked strictly), and the ControlMaster sockets (one multiplexed connection per host,
-- `ControlPersist`). Every ssh runs with `BatchMode=yes` (never a prompt), `-F /dev/null` (the
-- user's ~/.ssh/config is not read) and `IdentitiesOnly=yes`; `ssh_command` (an argv prefix, like
-- GIT_SSH_COMMAND) is the only seam: options given there come first and win.
-- The remote command is ONE line, the argv quoted once with galley.core.shell.join (sshd runs it
-- with the user's shell). ssh's own failures exit 255: that is a TRANSPORT error (never returned
-- as the command's exit code), with the tail of ssh's stderr.
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local shell = require("galley.core.shell")
local util = require("galley.util")

local M = {}

M.CONTROL_PERSIST_S = 120
M.CONNECT_TIMEOUT_S = 10
-- How long commands wait for another command's ssh to make a target's multiplexed connection
-- before going their own way (a connection each, as ControlMaster=no: never a second master).
M.MASTER_WAIT_MS = 10000
-- Commands in flight over one target's multiplexed connection at most: more wait (without
-- blocking other tasks) for one to end, up to MASTER_WAIT_MS, then go over a connection of their
-- own. sshd refuses sessions past its MaxSessions (10 by default), and ssh then prints "Session
-- open refused by peer" into the command's stderr before connecting alone; and many new
-- connections at once meet its MaxStartups (10), which resets them.
M.MAX_MUX_SESSIONS = 8
-- sun_path is 108 bytes: the control socket's path must fit.
local MAX_SOCKET_PATH = 100

local SSH = {}
SSH.__index = SSH


local function transport(message, fields)
  fields = fields or {}
  fields.kind = "ProviderError"
  fields.hint = fields.hint
    or "check that the instance is running and answers SSH (galley retries a boot's first contact)"
  return errors.new("TRANSPORT", message, fields)
end
M.transport_error = transport


--- Splits an `ssh_command` option: an argv array, or a string split on blanks (no quoting).
---@param v any
---@return string[]
function M.command_argv(v)
  if v == nil then return { "ssh" } end
  local out = {}
  if type(v) == "string" then
    for w in v:gmatch("%S+") do out[#out + 1] = w end
  elseif type(v) == "table" then
    for i, w in ipairs(v) do
      if type(w) ~= "string" then
        common.raise("VALIDATION_ERROR", ("ssh_command[%d] must be a string"):format(i), { field = "ssh_command" })
      end
      out[i] = w
    end
  end
  if #out == 0 then
    common.raise("VALIDATION_ERROR", "ssh_command must be a non-empty argv (or a string of words)",
      { field = "ssh_command", hint = 'e.g. ssh_command = {"ssh", "-p", "2222"}' })
  end
  return out
end


-- Strong references until the Lua state closes (see M.new).
local exit_boxes = {}

--- Creates the channel. opts: dir (created mode 700 when missing; removed by close when `owned`),
--- ssh_command, key_path (an existing private key instead of generating one), remove_at_exit
--- (dir goes when the Lua state ends, if close() did not remove it).
---@param opts {dir: string, owned?: boolean, ssh_command?: string|string[], key_path?: string,
---  remove_at_exit?: boolean}
---@return table
function M.new(opts)
  local self = setmetatable({ dir = opts.dir, owned = opts.owned, cmd = M.command_argv(opts.ssh_command),
    used = {}, key_path = opts.key_path, gates = {}, sessions = {}, spawned = {} }, SSH)
  -- ssh_command's own ControlMaster/ControlPath win over galley's: then the connection sharing is
  -- the user's, and galley neither watches a socket nor counts sessions (see gate)
  for _, w in ipairs(self.cmd) do
    if w:lower():find("control[mp]") then self.own_mux = true end
  end
  for _, d in ipairs({ self.dir, self.dir .. "/known_hosts.d" }) do
    local ok, err = fs.mkdir_p(d, "700")
    if not ok then error(errors.wrap(err, { operation = "ssh", resource = "file:" .. d }, "FILE_IO_ERROR"), 0) end
  end
  self.control_dir = self.dir
  -- ssh binds "<ControlPath>.<16 random characters>" first, then renames it.
  if #(self.dir .. "/cm-" .. ("x"):rep(40 + 17)) > MAX_SOCKET_PATH then
    self.control_dir = assert(fs.mkdtemp("/tmp/galley-ssh-"))
    self.own_control_dir = true
  end
  -- The socket directory made here (and `dir` with `remove_at_exit`) is removed at the Lua
  -- state's end too, when close() was never called (a script that failed). An owned `dir` is
  -- kept otherwise: it holds the key of containers that outlive the run.
  -- The multiplexed connections still open then end too (`ssh -O exit`, run to completion:
  -- the event loop may be gone by then), so none outlives galley by ControlPersist seconds.
  local dirs = {}
  if self.own_control_dir then dirs[#dirs + 1] = self.control_dir end
  if opts.remove_at_exit then dirs[#dirs + 1] = self.dir end
  self.exit_box = setmetatable({ dirs = dirs, chan = self }, { __gc = function(b)
    if b.chan then
      for _, t in pairs(b.chan.used) do
        pcall(os.execute, shell.join(b.chan:exit_argv(t)) .. " >/dev/null 2>&1 </dev/null")
      end
    end
    for _, d in ipairs(b.dirs or {}) do pcall(fs.remove_tree, d) end
  end })
  exit_boxes[#exit_boxes + 1] = self.exit_box
  return self
end


--- The private key's path, generating the key on first use (ssh-keygen -t ed25519, mode 600).
---@return string path
function SSH:key()
  if self.key_path then return self.key_path end
  -- Parallel boots ask at once: one generates, the others wait for it.
  while self.generating do
    local ok, err = runtime.sleep_ms(20)
    if not ok then error(err, 0) end
  end
  if self.key_path then return self.key_path end
  self.generating = true
  local ok, path = pcall(self._generate, self)
  self.generating = false
  if not ok then error(path, 0) end
  self.key_path = path
  return path
end


function SSH:_generate()
  local path = self.dir .. "/id_ed25519"
  if not fs.exists(path) then
    local r, err = proc.run({ argv = { "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "galley",
      "-f", path }, timeout_ms = 30000 })
    if not r then error(errors.wrap(err, { operation = "ssh-keygen" }, "PROCESS_ERROR"), 0) end
    if r.exit_code ~= 0 then
      error(errors.new("PROCESS_ERROR", "ssh-keygen failed: " .. common.tail(r.stderr, 500),
        { operation = "ssh-keygen", hint = "install openssh-client" }), 0)
    end
  end
  local st = fs.stat(path)
  if st and st.mode ~= tonumber("600", 8) then
    error(errors.new("UNSAFE_PATH", ("%s has mode %o, not 600"):format(path, st.mode), { operation = "ssh" }), 0)
  end
  return path
end


--- The public key line ("ssh-ed25519 AAAA... galley").
---@return string
function SSH:public_key()
  local pub = fs.read(self:key() .. ".pub")
  if not pub then error(errors.new("FILE_IO_ERROR", "cannot read " .. self:key() .. ".pub"), 0) end
  return (pub:gsub("%s+$", ""))
end


--- Pins a host key for target name `alias` (strict checking from then on).
---@param alias string
---@param host string
---@param key string "ssh-ed25519 AAAA..."
function SSH:pin(alias, host, key)
  fs.write_atomic(self.dir .. "/known_hosts.d/" .. alias, ("%s %s\n"):format(host, key), { mode = "600" })
  self.pinned = self.pinned or {}
  self.pinned[alias] = true
end


--- Forgets a target's host key (a terminated container: its address may come back with another).
---@param alias string
function SSH:forget(alias)
  os.remove(self.dir .. "/known_hosts.d/" .. alias)
  if self.pinned then self.pinned[alias] = nil end
end


-- The name a target is shown by in messages: a secret user (Morph's gateway takes
-- `<instance>:<api key>`) is shown up to its first ':' only.
local function shown_user(t)
  local u = t.user or "root"
  if t.secret_user then u = (u:match("^[^:]*") or "") .. ":***" end
  return u
end
M.shown_user = shown_user


-- The config file (mode 600) of a target whose user is a secret: `User` there keeps it out of
-- ssh's argv. Written once per alias and user.
function SSH:config_file(t)
  local user = t.user
  if type(user) ~= "string" or user == "" or user:find('[%s"\\#%c]') then
    error(errors.new("VALIDATION_ERROR", "the SSH user of " .. t.alias .. " has characters an ssh config cannot hold",
      { field = "user", kind = "ProviderError", hint = "no blanks, quotes, backslashes or '#'" }), 0)
  end
  self.configs = self.configs or {}
  local path = self.dir .. "/config.d/" .. t.alias
  if self.configs[t.alias] ~= user then
    local ok, err = fs.mkdir_p(self.dir .. "/config.d", "700")
    if not ok then error(errors.wrap(err, { operation = "ssh", resource = "file:" .. path }, "FILE_IO_ERROR"), 0) end
    fs.write_atomic(path, ("Host *\n  User %s\n"):format(user), { mode = "600" })
    self.configs[t.alias] = user
  end
  return path
end


-- Waits (without blocking other tasks: 10 ms turns) until done() is true or ms have passed;
-- returns whether done() became true. Raises INTERRUPTED.
local function poll(ms, done)
  local deadline = runtime.now_ms() + ms
  while not done() do
    if runtime.now_ms() >= deadline then return false end
    local ok, err = runtime.sleep_ms(10)
    if not ok then error(err, 0) end
  end
  return true
end


-- The control socket of target t: named here (not %C) so that its appearance can be watched; 40
-- hex characters, as long as %C.
function SSH:control_path(t)
  local key = table.concat({ t.alias, t.host_alias or "", t.host, tostring(t.port or ""),
    t.secret_user and "" or (t.user or "root") }, "\0")
  return self.control_dir .. "/cm-" .. codec.sha256(key):sub(1, 40)
end


-- Several commands starting at once on a target without a multiplexed connection would each try
-- to become its master: one wins, and every other ssh prints "ControlSocket ... already exists,
-- disabling multiplexing" into the command's stderr and makes a connection of its own. So the
-- first one opens the connection (ControlMaster=auto), and the others wait (without blocking
-- other tasks) until its socket is there, then use it. gate(t) returns the ControlMaster mode
-- for this command and, for the opener, a function to call once its ssh has ended (a spawned
-- ssh never calls it: its mark goes stale after MASTER_WAIT_MS). When the opener ends without a
-- socket, the next one opens; past MASTER_WAIT_MS a waiter goes alone (ControlMaster=no: it
-- still uses a socket that is there, and never becomes a master).
function SSH:gate(t)
  if self.own_mux then return "auto" end
  local path = self:control_path(t)
  local mode, release
  local function decided()
    local g, now = self.gates[path], runtime.now_ms()
    if fs.stat(path) then
      self.gates[path], mode = "up", "auto"
    elseif g == "up" or not g or now - g.since >= M.MASTER_WAIT_MS then
      -- no connection (or it ended: ControlPersist, -O exit; or its opener went stale): open it
      local mine = { since = now }
      self.gates[path], mode = mine, "auto"
      release = function()
        if self.gates[path] == mine then self.gates[path] = fs.stat(path) and "up" or nil end
      end
    end
    return mode ~= nil
  end
  if not poll(M.MASTER_WAIT_MS, decided) then mode = "no" end
  return mode, release
end


-- The ssh options for a target {host, user, port?, alias, secret_user?}. own_connection: true
-- (a connection of its own, no control socket), "no" (a socket that is there is used, none is
-- made), else the multiplexed connection (ControlMaster=auto).
function SSH:options(t, tty, own_connection)
  local argv = {}
  for _, w in ipairs(self.cmd) do argv[#argv + 1] = w end
  -- host_alias: the name the host key is kept under when several targets share a host (one
  -- gateway for many instances); else the target's alias.
  local hk = t.host_alias or t.alias
  local strict = (self.pinned and self.pinned[hk]) and "yes" or "accept-new"
  for _, o in ipairs({
    "-F", t.secret_user and self:config_file(t) or "/dev/null",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-i", self:key(),
    "-o", "UserKnownHostsFile=" .. self.dir .. "/known_hosts.d/" .. hk,
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "StrictHostKeyChecking=" .. strict,
    "-o", "HostKeyAlias=" .. hk,
    "-o", own_connection and "ControlMaster=no" or "ControlMaster=auto",
    "-o", own_connection == true and "ControlPath=none" or ("ControlPath=" .. self:control_path(t)),
    "-o", "ControlPersist=" .. (own_connection and "no" or M.CONTROL_PERSIST_S),
    "-o", "ConnectTimeout=" .. M.CONNECT_TIMEOUT_S,
    "-o", "ServerAliveInterval=15",
    "-o", "LogLevel=ERROR",
  }) do argv[#argv + 1] = o end
  if t.port then
    argv[#argv + 1] = "-p"
    argv[#argv + 1] = tostring(t.port)
  end
  argv[#argv + 1] = tty and "-tt" or "-T"
  if not t.secret_user then
    argv[#argv + 1] = "-l"
    argv[#argv + 1] = t.user or "root"
  end
  argv[#argv + 1] = t.host
  self.used[t.alias] = t
  return argv
end


--- The full argv of `ssh ... HOST -- LINE` where LINE is the argv quoted once.
---@param t {host: string, user?: string, port?: integer, alias: string}
---@param argv string[]
---@param tty? boolean
---@return string[]
function SSH:argv(t, argv, tty, own_connection)
  local release
  if not own_connection then own_connection, release = self:gate(t) end
  if own_connection == "auto" then own_connection = nil end
  local out = self:options(t, tty, own_connection)
  out[#out + 1] = "--"
  out[#out + 1] = shell.join(argv)
  return out, release
end


-- Sessions in use on the connection at `path`: commands in flight (self.sessions) and spawned
-- commands still running (a spawned ssh holds its session until it ends, whether or not anyone
-- waits for it; weak keys: a Process dropped and collected is closed, its session with it).
local function in_flight(self, path)
  local n = self.sessions[path] or 0
  for p in pairs(self.spawned[path] or {}) do
    local ok, running = pcall(p.running, p)
    if ok and running then n = n + 1 else self.spawned[path][p] = nil end
  end
  return n
end


-- Waits (without blocking other tasks) until t's connection has a session free, up to
-- MASTER_WAIT_MS: its control path, or nil when the command should go over a connection of its
-- own (none came free, or the connection sharing is the user's).
local function session_for(self, t)
  if self.own_mux then return nil end
  local path = self:control_path(t)
  if poll(M.MASTER_WAIT_MS, function() return in_flight(self, path) < M.MAX_MUX_SESSIONS end) then return path end
  return nil
end


-- Runs fn(local_argv) with the argv of argv on t, then lets the target's gate go (see gate).
-- With MAX_MUX_SESSIONS commands in flight on t (spawned ones included), a command waits for
-- one to end (see there).
local function gated(self, t, argv, own_connection, fn)
  local path
  if not own_connection and not self.own_mux then
    path = session_for(self, t)
    if path then
      self.sessions[path] = (self.sessions[path] or 0) + 1
    else
      own_connection, path = true, nil
    end
  end
  local r = table.pack(pcall(function()
    local local_argv, release = self:argv(t, argv, false, own_connection)
    local res = table.pack(pcall(fn, local_argv))
    if release then release() end
    if not res[1] then error(res[2], 0) end
    return table.unpack(res, 2, res.n)
  end))
  if path then self.sessions[path] = self.sessions[path] - 1 end
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end


-- ssh exits 255 for its own failures and for a remote command that exited 255 or was killed by
-- a signal. run and stream start the command under a small sh that turns a signal into 128+N (as
-- a shell does) and marks a real 255 with MARK_255 on stderr, which is removed again here.
local MARK_255 = "\n[galley: the command exited 255]\n"
local WRAP = [["$@"
rc=$?
if [ "$rc" = 255 ]; then printf '\n[galley: the command exited 255]\n' >&2; fi
exit "$rc"]]

local function wrapped(argv)
  local out = { "/bin/sh", "-c", WRAP, "galley-exec" }
  for _, a in ipairs(argv) do out[#out + 1] = a end
  return out
end

-- stderr without the mark, and whether it was there.
local function unmark(stderr)
  if stderr:sub(-#MARK_255) == MARK_255 then return stderr:sub(1, -#MARK_255 - 1), true end
  return stderr, false
end

-- run's body: the local argv (ssh, or a redirecting sh around it) is given.
local function run_argv(t, local_argv, opts)
  opts = opts or {}
  local r, err = proc.run({ argv = local_argv, timeout_ms = opts.timeout_ms, stdin = opts.stdin,
    env = { SSH_AUTH_SOCK = "" } })
  -- ssh names the user in its own messages ("USER@HOST: Permission denied"): a secret one is
  -- shown as shown_user says, wherever it appears.
  if r and t.secret_user and type(r.stderr) == "string" and t.user and t.user ~= "" then
    r.stderr = util.replace_plain(r.stderr, t.user, shown_user(t))
  end
  if not r then
    return nil, errors.wrap(err, { operation = opts.operation or "exec", kind = "ProviderError" }, "PROCESS_ERROR")
  end
  if r.timed_out then
    return nil, errors.new("TIMEOUT", ("ssh to %s: no answer within %d ms"):format(t.alias, opts.timeout_ms or 0),
      { operation = opts.operation or "exec", kind = "ProviderError" })
  end
  if r.exit_code == 255 then
    local stderr, own = unmark(r.stderr)
    if own then
      r.stderr = stderr
      return r
    end
    return nil, transport(("ssh to %s@%s (%s) failed: %s"):format(shown_user(t), t.host, t.alias,
      common.tail(r.stderr, 600):gsub("%s+$", "")), { operation = opts.operation or "exec",
      details = { stderr = common.tail(r.stderr, 2048) } })
  end
  if r.signal and not r.exit_code then r.exit_code = 128 + (tonumber(r.signal) or 0) end
  return r
end


--- Runs argv on the target. Returns {exit_code, stdout, stderr} (the remote command's) or nil,
--- err: TRANSPORT (ssh exited 255), INTERRUPTED, TIMEOUT, PROCESS_ERROR (ssh did not start).
---@param t table target
---@param argv string[]
---@param opts? {timeout_ms?: integer, stdin?: string, operation?: string}
function SSH:run(t, argv, opts)
  return gated(self, t, wrapped(argv), nil, function(a) return run_argv(t, a, opts) end)
end


-- stream's body: the local argv is given.
local function stream_argv(t, local_argv, on_stdout, on_stderr)
  local pr, err = proc.spawn({ argv = local_argv, stdin = "null", env = { SSH_AUTH_SOCK = "" } })
  if not pr then return nil, errors.wrap(err, { operation = "exec", kind = "ProviderError" }, "PROCESS_ERROR") end
  local out, errs = {}, {}
  local code, signal
  local ok, cerr = pcall(function()
    while true do
      local kind, a, b = pr:read()
      if kind == "stdout" then
        out[#out + 1] = a
        if on_stdout then on_stdout(a) end
      elseif kind == "stderr" then
        errs[#errs + 1] = a
        local shown = unmark(a) -- the mark comes last, in a piece of its own or at a piece's end
        if on_stderr and shown ~= "" then on_stderr(shown) end
      elseif kind == "exit" then
        code, signal = a, b
        return
      elseif kind == nil and a ~= nil then
        error(a, 0)
      end
    end
  end)
  pr:close()
  if not ok then return nil, errors.wrap(cerr, { operation = "exec", kind = "ProviderError" }, "INTERRUPTED") end
  local stderr, own = unmark(table.concat(errs))
  if code == 255 and not own then
    return nil, transport(("ssh to %s@%s (%s) failed: %s"):format(shown_user(t), t.host, t.alias,
      (common.tail(stderr, 600):gsub("%s+$", ""))),
      { operation = "exec", details = { stderr = common.tail(stderr, 2048) } })
  end
  if code == nil and signal then code = 128 + (tonumber(signal) or 0) end
  return { exit_code = code, stdout = table.concat(out), stderr = stderr }
end


--- Runs argv on the target as a byte channel: stdin from the local file `stdin_file` (or the
--- bytes `stdin`), stdout into the local file `stdout_file` (else returned), both raw and
--- streamed by ssh itself (memory stays flat). Returns what run returns; stdout is "" when it
--- went to a file.
---@param t table target
---@param argv string[]
---@param opts? {stdin_file?: string, stdin?: string, stdout_file?: string, max_stdout_bytes?: integer,
---  timeout_ms?: integer, operation?: string}
function SSH:transfer(t, argv, opts)
  opts = opts or {}
  -- A bounded output file needs ssh itself to write it: through a multiplexed connection the
  -- master process would, and RLIMIT_FSIZE is the writer's (so such reads cost a handshake).
  local bounded = opts.stdout_file ~= nil and opts.max_stdout_bytes ~= nil
  return gated(self, t, wrapped(argv), bounded, function(a)
    return run_argv(t, common.redirected(a, opts.stdin_file, opts.stdout_file, opts.max_stdout_bytes), opts)
  end)
end


--- Runs argv on the target, handing output to on_stdout/on_stderr as it arrives (callbacks may
--- yield). Returns what run returns.
function SSH:stream(t, argv, on_stdout, on_stderr)
  return gated(self, t, wrapped(argv), nil, function(a) return stream_argv(t, a, on_stdout, on_stderr) end)
end


--- Starts argv on the target without waiting: a galley.core.proc Process of the local ssh. Like
--- a command, it takes a session of the target's multiplexed connection (waiting for one, as
--- commands do, past MAX_MUX_SESSIONS) and holds it until it ends.
function SSH:spawn(t, argv, opts)
  opts = opts or {}
  local path = session_for(self, t)
  local p, err = proc.spawn({ argv = self:argv(t, argv, false, (not path and not self.own_mux) or nil),
    stdin = opts.stdin or "null", env = { SSH_AUTH_SOCK = "" } })
  if p and path then
    self.spawned[path] = self.spawned[path] or setmetatable({}, { __mode = "k" })
    self.spawned[path][p] = true
  end
  return p, err
end


--- Ends the multiplexed connection to target alias (ssh -O exit).
function SSH:disconnect(alias)
  local t = self.used[alias]
  if not t then return end
  self.used[alias] = nil
  proc.run({ argv = self:exit_argv(t), timeout_ms = 5000 })
  -- `ssh -O exit` returns before the master has removed its socket: commands started right
  -- after would find it, be refused, and each try to become the master (see gate)
  local path = self:control_path(t)
  pcall(poll, 1000, function() return not fs.stat(path) end)
  self.gates[path] = nil
end


-- `ssh -O exit` of target t's multiplexed connection.
function SSH:exit_argv(t)
  local argv = { table.unpack(self.cmd) }
  for _, o in ipairs({ "-F", t.secret_user and self:config_file(t) or "/dev/null", "-o",
    "ControlPath=" .. self:control_path(t), "-o", "HostKeyAlias=" .. (t.host_alias or t.alias), "-O",
    "exit" }) do
    argv[#argv + 1] = o
  end
  if not t.secret_user then
    argv[#argv + 1] = "-l"
    argv[#argv + 1] = t.user or "root"
  end
  if t.port then
    argv[#argv + 1] = "-p"
    argv[#argv + 1] = tostring(t.port)
  end
  argv[#argv + 1] = t.host
  return argv
end


--- Ends every multiplexed connection; removes the directory when owned (the run's key with it).
function SSH:close(keep_dir)
  local aliases = {}
  for a in pairs(self.used) do aliases[#aliases + 1] = a end
  for _, a in ipairs(aliases) do self:disconnect(a) end
  -- `ssh -O exit` returns before the master has gone: a directory it still touches may refuse
  -- to go at once (seen under load), so a removal is tried again for a moment.
  local function remove(dir)
    for _ = 1, 20 do
      fs.remove_tree(dir)
      if not fs.exists(dir) then return end
      runtime.sleep_ms(50)
    end
  end
  if self.own_control_dir then remove(self.control_dir) end
  if self.owned and not keep_dir then remove(self.dir) end
  if self.exit_box then self.exit_box.dirs, self.exit_box.chan = nil, nil end
end

return M
