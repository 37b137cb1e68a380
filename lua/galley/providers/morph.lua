--- galley.providers.morph: the VM provider for Morph Cloud, over galley.morph_client.
--
--   local provider = require("galley.providers.morph").new{}      -- MORPH_API_KEY, MORPH_BASE_URL
--   local inst = provider.instances.boot("snapshot_abc", {ttl_seconds = 1800})  -- returns when ready
--   provider.exec(inst.id, {kind = "argv", command = "uname", args = {"-a"}})
--   provider.files.write_file_atomic(inst.id, "~/.config/app.json", "{}", {mode = "600", create_dirs = true})
--   provider.instances.terminate(inst.id)
--
-- Instances: boot is POST /snapshot/{id}/boot; when its answer is lost (reset after sending,
-- timeout, garbled body) the provider looks for the instance by the create's request token and
-- carries on with it (it never sends the create again). The provider owns readiness: a `ready` answer
-- returns at once (one request); otherwise it polls GET /instance/{id} (client:wait_ready) up to
-- `boot_timeout_ms`, and if the instance fails or the wait ends, it deletes the instance before
-- raising (the error names it: resource "instance:<id>", instance_id). fork is POST .../branch
-- (its snapshot is kept and reported as `fork_snapshot_id`), then TTLs, then a wait for each
-- clone (all clones are deleted if one fails, or when the branch's answer was lost: they are
-- found by its request token). stop and terminate are both DELETE: Morph has no stopped state
-- besides pause. pause/resume keep the files; status "paused" reads "stopped".
--
-- Exec: the service runs a one-element `command` through a shell; what it does with several
-- elements is not documented (an SSH-style server space-joins them and runs the line with sh -c).
-- So an ordinary exec is sent as ONE element: the exact argv, each word quoted by
-- galley.core.shell.join, which sh -c and bash -c (login or not) read back byte-identical. That
-- line is one argument of the service's shell: it must stay under `max_command_bytes` (default
-- 120 KiB; Linux refuses one argument of 128 KiB). `exec_form` says what happens to payloads
-- too long for one line (execfiles' chunked writes, workspace's tar chunks, long scripts/argv):
-- - "auto" (the default): the first time a payload needs more than one line, ONE probe exec per
--   provider (M.probe_exec_form: `/bin/sh -c <print ${#1}:${#2}:$3> galley-probe <96 KiB>
--   <96 KiB> "a b"`, one ~200 KiB request; tasks asking at once share it) tells whether the
--   service runs a large multi-element command as an argv. Yes: payloads go as argv arrays with
--   the large limits (max_request_bytes, INLINE_SCRIPT_BYTES). Anything else (other output, a
--   non-zero exit, an HTTP answer about the request such as 413/500/503): "string", remembered;
--   on a service that joins commands the floor is then ~88 KiB of content per request (the
--   Linux limit on one argument). Errors that decide nothing (network, TIMEOUT, INTERRUPTED,
--   AUTHENTICATION_ERROR, NOT_FOUND, CONFLICT, RATE_LIMIT, PROTOCOL_ERROR) are raised and
--   forgotten. provider.exec_form() gives the outcome ("string"|"argv"; nil before the probe).
-- - "string": payloads stay lines too, never asking (always correct, whatever the service does).
-- - "argv": every multi-element argv goes as the command array, for services known to run it
--   directly (no probe).
-- A shell-form spec, or an argv spec with cwd/env, becomes a bash script (galley.core.shell.plan)
-- that ONE exec writes to /tmp/.galley-script-<random>.sh, runs as `/bin/bash <path>` and removes;
-- a script whose exec would not fit is uploaded first (files API), and so is an argv too long
-- for one line. There is no stdin: every payload is in the argv of a process on the instance
-- while it runs (visible in /proc/<pid>/cmdline there).
-- Files: galley.providers.execfiles over the same exec (no file API exists on Morph), and over
-- Morph's SSH gateway (galley.providers.morph_gateway, real OpenSSH) for contents larger than one
-- exec carries: raw bytes on one SSH channel instead of base64 in many execs. A gateway that
-- cannot be reached or refuses the login is reported once and exec carries everything.
--
-- Home directory: `home_dir` (default "/root") is what `~` means. `home_dir = false` asks each
-- instance for its $HOME the first time a `~` path is used (one exec, cached), for images whose
-- user is not root (and for `galley emulate --no-sandbox`, whose instances are plain directories).
--
-- Errors are the client's error tables (code NOT_FOUND, VALIDATION_ERROR, AUTHENTICATION_ERROR,
-- RATE_LIMIT, SERVER_ERROR, NETWORK_ERROR, TIMEOUT, PROTOCOL_ERROR, INTERRUPTED) with
-- kind = "ProviderError", operation = the provider call ("instances.boot"; the endpoint in
-- `endpoint`) and resource; HTTP 409 (not ready, paused) is CONFLICT. Every answer used is
-- checked first (galley.providers.morph_check): a wrong shape is PROTOCOL_ERROR naming the
-- endpoint and the field (err.endpoint, err.field). Bad arguments raise
-- VALIDATION_ERROR (with `field`) before any request. The API key is registered with galley.log
-- as a secret and never appears in logs or errors.
local cjson = require("cjson")
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local execfiles = require("galley.providers.execfiles")
local logmod = require("galley.log")
local morph_check = require("galley.providers.morph_check")
local morph_client = require("galley.morph_client")
local morph_gateway = require("galley.providers.morph_gateway")
local morph_core = require("galley.core.morph")
local morph_process = require("galley.providers.morph_process")
local run = require("galley.tracker")
local runtime = require("galley.core.runtime")
local shell = require("galley.core.shell")
local task = require("galley.task")

local M = {}

M.NAME = "morph"
M.VERSION = "0.1.0"
M.DEFAULT_HOME = "/root"
M.DEFAULT_BOOT_TIMEOUT_MS = 300000
M.DEFAULT_SNAPSHOT_TIMEOUT_MS = 600000

--- Morph instance status → provider status.
M.STATUS = common.MORPH_STATUS

--- Morph snapshot status → provider snapshot status (creating|ready|deleting|error).
M.SNAPSHOT_STATUS = { pending = "creating", ready = "ready", failed = "error", deleting = "deleting",
  deleted = "deleting" }

--- The metadata key galley.morph_client stamps on created instances (hidden from `metadata`).
M.TOKEN_KEY = morph_client.TOKEN_KEY

--- Largest script sent inside the exec that runs it with exec_form "argv"; longer ones are
--- uploaded first. (With exec_form "string" the whole line must fit `max_command_bytes`.)
M.INLINE_SCRIPT_BYTES = 1024 * 1024

--- Default largest exec line (exec_form "string"): the one argument of the service's shell.
M.MAX_COMMAND_BYTES = 120 * 1024

--- Linux's limit on one argument (MAX_ARG_STRLEN, with its NUL).
M.ARG_LIMIT = 128 * 1024

--- The exec forms: "string" sends one element (the argv quoted), "argv" the argv itself, "auto"
--- (the default) one element for ordinary execs and argv arrays for payloads once
--- probe_exec_form proved the service runs them faithfully.
M.EXEC_FORMS = { auto = true, string = true, argv = true }

--- The default exec form.
M.DEFAULT_EXEC_FORM = "auto"

--- Bytes of each of the probe's two large elements (together over 128 KiB: no single argument
--- of a shell line can carry them).
M.PROBE_PIECE_BYTES = 96 * 1024

--- Time limit of the probe's request (the command itself is instant).
M.PROBE_TIMEOUT_MS = 120000

-- What the probe runs; it prints the lengths of $1 and $2 and $3 as given.
local PROBE_SCRIPT = 'printf "%s:%s:%s" "${#1}" "${#2}" "$3"'

-- Errors of the probe that say nothing about how the service runs a command (the connection,
-- the instance, the account, a cancel): raised, and the question stays open.
local PROBE_UNDECIDED = { NETWORK_ERROR = true, TIMEOUT = true, INTERRUPTED = true, AUTHENTICATION_ERROR = true,
  NOT_FOUND = true, CONFLICT = true, RATE_LIMIT = true, PROTOCOL_ERROR = true }

local SCRIPT_PIECE_BYTES = 120 * 1024

-- argv after it: path write piece...; write = 1: the pieces are the script, written to path
-- (mode 600, never over an existing file); 0: path already holds it. Runs it with bash and
-- removes it whatever happens.
local RUNNER = [[
p=$1 w=$2
shift 2
trap 'rm -f -- "$p"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$w" = 1 ]; then
  (umask 077 && set -C && printf %s "$@" > "$p") || { echo "galley: cannot write the script $p" >&2; exit 127; }
fi
/bin/bash "$p"
]]

local HOME_PROBE = 'printf %s "$HOME"'

-- Paths (argument positions) of the files API, for `~` with a per-instance home.
local PATH_ARGS = {
  write_file_atomic = { 2 }, write_file = { 2 }, read_file = { 2 }, file_exists = { 2 }, is_directory = { 2 },
  create_directory = { 2 }, list_directory = { 2 }, delete_file = { 2 }, delete_directory = { 2 },
  copy_file = { 2, 3 }, move_file = { 2, 3 },
}


local function value(v)
  if v == cjson.null then return nil end
  return v
end


local function int(v)
  v = value(v)
  if type(v) == "number" then return math.tointeger(v) or v end
  return v
end


local function fail(code, message, fields)
  error(common.error(code, message, fields), 0)
end


---@class galley.MorphInstance
---@field id string
---@field status "booting"|"ready"|"stopping"|"stopped"|"error"
---@field metadata table<string, string> (without galley.morph_client's request token)
---@field created_at integer Unix seconds
---@field ttl {seconds?: integer, action?: "stop"|"pause", expires_at?: integer}
---@field snapshot_id string
---@field image_id string
---@field raw table the Morph body

---@class galley.MorphBootOptions
---@field metadata? table<string, string>
---@field ttl_seconds? integer|false false: no TTL even inside a run
---@field ttl_action? "stop"|"terminate"|"pause" stop and terminate both delete at expiry
---@field vcpus? integer
---@field memory? integer MB
---@field disk_size? integer MB
---@field timeout_ms? integer how long to wait for `ready` (default: the provider's boot_timeout_ms)

--- Maps a Morph instance status to the provider's (unknown → "error").
---@param raw string|nil
---@return string status booting|ready|stopping|stopped|error
function M.map_status(raw)
  return common.map_status(M.STATUS, raw)
end


--- The provider's instance table for a Morph instance body.
---@param raw table the decoded Instance
---@return galley.MorphInstance
function M.instance(raw)
  local ttl = type(raw.ttl) == "table" and raw.ttl or {}
  local refs = type(raw.refs) == "table" and raw.refs or {}
  local metadata = {}
  for k, v in pairs(type(raw.metadata) == "table" and raw.metadata or {}) do
    if k ~= M.TOKEN_KEY then metadata[k] = value(v) end
  end
  return {
    object = "instance",
    id = raw.id,
    status = M.map_status(value(raw.status)),
    metadata = metadata,
    created_at = int(raw.created),
    ttl = common.ttl_table(int(ttl.ttl_seconds), value(ttl.ttl_action), int(ttl.ttl_expire_at)),
    snapshot_id = value(refs.snapshot_id),
    image_id = value(refs.image_id),
    -- The client's request token for the create that made it (hidden from `metadata`).
    request_token = type(raw.metadata) == "table" and value(raw.metadata[M.TOKEN_KEY]) or nil,
    raw = raw,
  }
end


--- The provider's snapshot table for a Morph snapshot body.
---@param raw table the decoded Snapshot
---@return table `{id, status, metadata, created_at, digest, image_id, ttl, raw}`
function M.snapshot(raw)
  local ttl = type(raw.ttl) == "table" and raw.ttl or {}
  local metadata = {}
  for k, v in pairs(type(raw.metadata) == "table" and raw.metadata or {}) do metadata[k] = value(v) end
  local seconds = int(ttl.ttl_seconds)
  return {
    object = "snapshot",
    id = raw.id,
    status = M.SNAPSHOT_STATUS[value(raw.status) or ""] or "error",
    metadata = metadata,
    created_at = int(raw.created),
    digest = value(raw.digest),
    image_id = type(raw.refs) == "table" and value(raw.refs.image_id) or nil,
    ttl = seconds and { seconds = seconds, expires_at = int(ttl.ttl_expire_at) } or {},
    raw = raw,
  }
end


--- Turns a client error into the provider's: kind ProviderError, the provider operation (the
-- endpoint kept in `endpoint`) and a resource.
---@param err any
---@param operation string
---@param resource? string
---@return galley.Error
function M.wrap_error(err, operation, resource)
  err = errors.wrap(err, nil, "PROVIDER_ERROR") -- redacts an error's details/fields all through
  if err.operation and err.operation ~= operation and err.endpoint == nil then err.endpoint = err.operation end
  err.operation = operation
  if err.resource == nil then err.resource = resource end
  if err.kind == nil then err.kind = "ProviderError" end
  return err
end


--- Asks the service, with ONE exec on an instance, whether it runs a large multi-element
--- command as an argv: `/bin/sh -c <print the lengths of $1, $2 and $3> galley-probe <96 KiB>
--- <96 KiB> "a b"` (~200 KiB in one request). Exactly "98304:98304:a b" and exit 0 → "argv". A
--- service that space-joins the elements into one shell line, or quotes them into one `sh -c`
--- argument, cannot run it (one argument over Linux's 128 KiB) or prints something else →
--- "string"; so does an HTTP answer about the request itself (400, 413, 422, 5xx...).
--- galley.providers.morph's exec_form "auto" and `galley run morph-recon` use it.
---@param client galley.MorphClient
---@param instance_id string a ready instance
---@param opts? {timeout_ms?: integer} the request's time limit (default PROBE_TIMEOUT_MS)
---@return "argv"|"string"|nil form nil: undecided, see err
---@return table|galley.Error evidence `{exit_code?, stdout_ok, status?, code?}` (no payload); or the
---  client's error when the answer says nothing about the command: NETWORK_ERROR, TIMEOUT,
---  INTERRUPTED, AUTHENTICATION_ERROR, NOT_FOUND, CONFLICT, RATE_LIMIT, PROTOCOL_ERROR
function M.probe_exec_form(client, instance_id, opts)
  opts = opts or {}
  local piece = ("x"):rep(M.PROBE_PIECE_BYTES)
  local want = ("%d:%d:a b"):format(M.PROBE_PIECE_BYTES, M.PROBE_PIECE_BYTES)
  local res, err = client:instances_exec(instance_id, { "/bin/sh", "-c", PROBE_SCRIPT, "galley-probe", piece, piece,
    "a b" }, { timeout_ms = opts.timeout_ms or M.PROBE_TIMEOUT_MS })
  if res == nil then
    local code = type(err) == "table" and err.code or nil
    if PROBE_UNDECIDED[code] or type(err) ~= "table" or type(err.status) ~= "number" then return nil, err end
    return "string", { status = err.status, code = code, stdout_ok = false }
  end
  local ok = res.exit_code == 0 and res.stdout == want
  return ok and "argv" or "string", { exit_code = res.exit_code, stdout_ok = res.stdout == want }
end


local check_id = common.check_id


local function check_table(t, field)
  if t ~= nil and type(t) ~= "table" then
    fail("VALIDATION_ERROR", field .. " must be a table", { field = field })
  end
  return t or {}
end


local function check_count(n, field, min)
  if n == nil then return nil end
  if math.type(n) ~= "integer" and not (type(n) == "number" and n == math.floor(n)) then
    fail("VALIDATION_ERROR", field .. " must be an integer", { field = field })
  end
  n = math.tointeger(n)
  if not n or n < (min or 1) then
    fail("VALIDATION_ERROR", ("%s must be at least %d"):format(field, min or 1), { field = field })
  end
  return n
end


---@class galley.MorphProviderOptions
---@field api_key? string default MORPH_API_KEY
---@field base_url? string default MORPH_BASE_URL, else https://cloud.morph.so/api
---@field client? galley.MorphClient an existing galley.morph_client client (api_key/base_url/timeouts ignored)
---@field home_dir? string|false what `~` expands to (default "/root"); false: each instance's $HOME
---@field log? galley.Logger
---@field timeout_ms? integer per request (client default 120 s); exec has none unless exec_timeout_ms
---@field connect_timeout_ms? integer
---@field retry? {max_attempts?: integer, base_delay_ms?: integer, max_delay_ms?: integer, max_elapsed_ms?: integer}
---@field boot_timeout_ms? integer how long boot/fork/resume wait for `ready` (default 300 s)
---@field snapshot_timeout_ms? integer how long snapshot waits for `ready` (default 600 s)
---@field exec_timeout_ms? integer time limit of one exec (default none)
---@field size_limit? integer largest file the files API moves (default 256 MiB)
---@field file_parallel? integer chunk execs in flight for one large file transfer (default 4)
---@field max_request_bytes? integer base64 bytes per file-transfer exec (execfiles default 1.5 MiB)
---@field max_arg_bytes? integer bytes per argv element of a transfer (execfiles default 120 KiB)
---@field decoder? "python"|"coreutils" skip execfiles' decoder detection
---@field file_argv_readback? boolean false: writes never read their base64 back from the
---  instance's /proc (execfiles' argv_readback; default true, with a fallback in the same exec)
---@field exec_form? "auto"|"string"|"argv" how an exec's argv is sent (default "auto": one element, and argv
---  arrays for payloads once the service proved it runs them; see the header)
---@field max_command_bytes? integer largest exec line with exec_form "string"/"auto" (default 120 KiB, < 128 KiB)
---@field ssh_min_bytes? integer writes over this size take the SSH gateway (default M.SSH_MIN_BYTES, 512 KiB)
---@field ssh? false|{host?: string, port?: integer, host_key?: string, ssh_command?: string|string[]} Morph's
---  SSH gateway for file transfers over one exec's worth (default: MORPH_SSH_HOSTNAME/MORPH_SSH_PORT, else
---  ssh.<API host> for an https API; none for a plain-http one such as the emulator's); false: exec only

--- Writes over this size go through the SSH gateway (when there is one) even when one exec would
--- carry them: on the emulator a write through the gateway costs ~5 ms more to start and saves
--- the base64 and the JSON (4 KiB: exec 10 ms, SSH 15; 256 KiB: 15 / 18; 1 MiB: 32 / 24).
M.SSH_MIN_BYTES = 512 * 1024

--- Creates a Morph provider.
---@param opts? galley.MorphProviderOptions
---@return table provider `{name, version, capabilities, client, instances, snapshots, images, files, exec, close}`
---@raise AUTHENTICATION_ERROR (no API key) | VALIDATION_ERROR (bad option or base URL)
function M.new(opts)
  opts = check_table(opts, "options")
  local log = opts.log or logmod.new({ prefix = "morph" })
  local home_fixed = opts.home_dir
  if home_fixed == nil then home_fixed = M.DEFAULT_HOME end
  if home_fixed ~= false and (type(home_fixed) ~= "string" or home_fixed:sub(1, 1) ~= "/") then
    fail("VALIDATION_ERROR", "home_dir must be an absolute path or false", { field = "home_dir" })
  end
  local boot_timeout_ms = check_count(opts.boot_timeout_ms, "boot_timeout_ms", 0) or M.DEFAULT_BOOT_TIMEOUT_MS
  local snapshot_timeout_ms = check_count(opts.snapshot_timeout_ms, "snapshot_timeout_ms", 0)
    or M.DEFAULT_SNAPSHOT_TIMEOUT_MS
  local exec_timeout_ms = check_count(opts.exec_timeout_ms, "exec_timeout_ms", 1)
  local exec_backstop_ms = check_count(opts.exec_backstop_ms, "exec_backstop_ms", 0) or common.EXEC_BACKSTOP_MS
  local exec_form = opts.exec_form or M.DEFAULT_EXEC_FORM
  if not M.EXEC_FORMS[exec_form] then
    fail("VALIDATION_ERROR", 'exec_form must be "auto", "string" or "argv"', { field = "exec_form",
      hint = '"auto" (the default) probes the service once; "string" works whatever it does with a '
        .. "multi-element command" })
  end
  local max_command = check_count(opts.max_command_bytes, "max_command_bytes", 4096) or M.MAX_COMMAND_BYTES
  if max_command >= M.ARG_LIMIT then
    fail("VALIDATION_ERROR", "max_command_bytes must be below 128 KiB", { field = "max_command_bytes" })
  end
  -- Ordinary execs are one line in "string" and "auto"; payloads too long for a line go as argv
  -- arrays with "argv", and with "auto" once the probe said so (payload_form).
  local one_line = exec_form ~= "argv"

  local client = opts.client
  local own_client = false
  if client == nil then
    local key = opts.api_key or os.getenv("MORPH_API_KEY")
    if type(key) == "string" and key ~= "" then logmod.register_secret(key) end
    local err
    client, err = morph_client.new({
      api_key = opts.api_key,
      base_url = opts.base_url,
      timeout_ms = opts.timeout_ms,
      connect_timeout_ms = opts.connect_timeout_ms,
      retry = opts.retry,
      log = function(r)
        log.trace("request", { method = r.method, path = r.path, status = r.status, ms = r.ms, attempt = r.attempt,
          error = r.error })
      end,
    })
    if not client then error(M.wrap_error(err, "morph.new"), 0) end
    own_client = true
  end

  local provider = {
    name = M.NAME,
    version = M.VERSION,
    client = client,
    capabilities = {
      exec_form = exec_form,
      max_command_bytes = one_line and max_command or nil,
      home_dir = home_fixed or nil,
      home_dir_per_instance = home_fixed == false,
      pause = true,
      snapshots = true,
      fork = true,
      exec_stream = true,
      max_file_bytes = opts.size_limit or execfiles.DEFAULT_SIZE_LIMIT,
    },
    instances = {},
    snapshots = {},
    images = {},
  }

  -- Calls client:<method>(...) and returns its result, checked (morph_check), or raises the
  -- provider's error.
  local function call(operation, resource, method, ...)
    local res, err = client[method](client, ...)
    if res == nil then error(M.wrap_error(err, operation, resource), 0) end
    return morph_check.answer(method, res, operation, resource)
  end

  -- Deletes an instance, best effort (boot/fork cleanup); true when it is gone.
  local function discard(id, why)
    local ok, err = client:instances_stop(id)
    if ok or errors.is(err, "NOT_FOUND") then
      log.warn("deleted an instance that did not become ready", { instance = id, reason = why })
      return true
    end
    log.error("could not delete an instance that did not become ready", { instance = id, error = tostring(err) })
    return false
  end

  -- Waits until `raw` (a just-created instance) is ready; on failure deletes it and raises an
  -- error naming it.
  local function await_new(raw, timeout_ms, operation)
    if value(raw.status) == "ready" then return raw end
    local id = raw.id
    local res, err
    if value(raw.status) == "error" then
      err = common.error("SERVER_ERROR", ("instance %s entered status 'error'"):format(id),
        { instance_status = "error" })
    else
      res, err = client:wait_ready(id, { timeout_ms = timeout_ms })
      if res then return morph_check.answer("wait_ready", res, operation, "instance:" .. id) end
    end
    err = M.wrap_error(err, operation, "instance:" .. id)
    err.resource = "instance:" .. id
    err.instance_id = id
    err.terminated = discard(id, err.code)
    err.message = ("instance %s did not become ready (%s)%s"):format(id, tostring(err.message),
      err.terminated and "; it was deleted" or "; deleting it failed too")
    error(err, 0)
  end

  -- Polls a snapshot until it is ready (failed → PROVIDER_ERROR, too long → TIMEOUT).
  local function await_snapshot(raw, operation)
    local start = runtime.now_ms()
    local delay = 250
    while value(raw.status) ~= "ready" do
      local status = value(raw.status)
      if status == "failed" or status == "deleting" or status == "deleted" then
        fail("PROVIDER_ERROR", ("snapshot %s is %s"):format(raw.id, tostring(status)),
          { operation = operation, resource = "snapshot:" .. raw.id })
      end
      if runtime.now_ms() - start >= snapshot_timeout_ms then
        fail("TIMEOUT", ("snapshot %s not ready after %d ms"):format(raw.id, snapshot_timeout_ms),
          { operation = operation, resource = "snapshot:" .. raw.id })
      end
      local ok, err = runtime.sleep_ms(delay)
      if not ok then error(err, 0) end
      delay = math.min(delay * 2, 2000)
      raw = call(operation, "snapshot:" .. raw.id, "snapshots_get", raw.id)
    end
    return raw
  end

  -- Exec -----------------------------------------------------------------------------------
  local homes = {}

  -- The form of payload execs (those too long for one line): exec_form itself, or with "auto"
  -- what the probe found, asked once per provider the first time a payload needs it. Tasks that
  -- ask while the probe runs wait for the same probe (a task of its own); an error that leaves
  -- the question open (see PROBE_UNDECIDED) is raised to every one of them and forgotten.
  local decided = exec_form ~= "auto" and exec_form or nil
  local probing

  local function payload_form(id)
    if decided then return decided end
    if not probing then
      local t
      t = task.spawn(function()
        local ok, form, why = pcall(M.probe_exec_form, client, id, { timeout_ms = exec_timeout_ms })
        if probing == t then probing = nil end -- decided, or the next payload asks again
        if not ok then error(form, 0) end
        if not form then error(M.wrap_error(why, "exec", "instance:" .. id), 0) end
        decided = form
        log.debug("exec form", { form = form, instance = id, exit_code = math.tointeger(why.exit_code),
          status = why.status, code = why.code, output_ok = why.stdout_ok })
        return form
      end)
      probing = t
    end
    return probing:wait()
  end

  -- Runs an argv as given: {stdout, stderr, exit_code}. One element, the quoted words, with
  -- exec_form "string", and with "auto" unless the line is too long and the service runs argv
  -- arrays (a one-element argv is quoted in every form: the service runs it in a shell).
  local function exec_argv(id, argv, eopts, operation)
    -- A payload (several elements, already longer than a line before any quoting) goes as an
    -- argv array when the service runs them: quoting megabytes only to measure them cost ~10 ms
    -- an exec.
    local payload = false
    if one_line and #argv > 1 then
      local raw = 0
      for _, a in ipairs(argv) do raw = raw + #a + 1 end
      payload = raw > max_command and payload_form(id) == "argv"
    end
    if (one_line or #argv == 1) and not payload then
      local line = shell.join(argv)
      if one_line and #line > max_command and (#argv == 1 or payload_form(id) ~= "argv") then
        fail("VALIDATION_ERROR", ("the exec line is %d bytes, over max_command_bytes (%d)"):format(#line, max_command),
          { field = "command", operation = operation or "exec", resource = "instance:" .. id,
            hint = "pass large data as a file (files.write_file) or a shell-form script" })
      end
      if #line <= max_command or #argv == 1 then argv = { line } end
    end
    eopts = eopts or {}
    local operation_name, resource = operation or "exec", "instance:" .. id
    local res, err = client:instances_exec(id, argv, {
      timeout_ms = eopts.timeout_ms or exec_timeout_ms, on_stdout = eopts.on_stdout, on_stderr = eopts.on_stderr,
    })
    if res == nil then error(M.wrap_error(err, operation_name, resource), 0) end
    local sse = eopts.on_stdout ~= nil or eopts.on_stderr ~= nil
    return morph_check.answer("instances_exec", res, operation_name, resource, sse and "instances.exec_sse" or nil)
  end

  -- The home directory of an instance (asked once per instance with home_dir = false).
  local function home_of(id)
    if home_fixed then return home_fixed end
    local h = homes[id]
    if h then return h end
    local r = exec_argv(id, { "/bin/sh", "-c", HOME_PROBE }, nil, "exec")
    if r.exit_code ~= 0 or r.stdout:sub(1, 1) ~= "/" then
      fail("PROVIDER_ERROR", ("cannot tell the home directory of instance %s"):format(id),
        { operation = "exec", resource = "instance:" .. id, details = { exit_code = r.exit_code } })
    end
    homes[id] = r.stdout
    return r.stdout
  end

  -- Morph's SSH gateway carries transfers over one exec's worth (morph_gateway), where known.
  local gw = morph_gateway.resolve(opts.ssh, client:base_url())
  local gateway
  if gw then
    local key = opts.api_key or os.getenv("MORPH_API_KEY")
    if type(key) == "string" and key ~= "" then
      gateway = morph_gateway.new({ host = gw.host, port = gw.port, api_key = key, host_key = gw.host_key,
        ssh_command = gw.ssh_command, log = log })
      provider.capabilities.ssh_gateway = ("%s:%d"):format(gw.host, gw.port)
    elseif type(opts.ssh) == "table" then
      fail("VALIDATION_ERROR", "ssh needs the API key (the gateway's user is <instance>:<key>)", { field = "ssh",
        hint = "pass api_key (or set MORPH_API_KEY) with ssh, or ssh = false" })
    end
  end

  local inner_files = execfiles.new({
    exec_argv = function(id, argv) return exec_argv(id, argv, nil, "exec") end,
    stream = gateway and function(id, argv, sopts) return gateway:stream(id, argv, sopts) end or nil,
    stream_min_bytes = opts.ssh_min_bytes or M.SSH_MIN_BYTES,
    home_dir = home_fixed or function(id) return homes[id] end,
    size_limit = opts.size_limit,
    parallel = opts.file_parallel,
    max_request_bytes = opts.max_request_bytes,
    max_arg_bytes = opts.max_arg_bytes,
    max_command_bytes = one_line and max_command or nil,
    argv_payloads = exec_form == "auto" and function(id) return payload_form(id) == "argv" end or nil,
    decoder = opts.decoder,
    argv_readback = opts.file_argv_readback,
    log = log,
  })
  if home_fixed then
    provider.files = inner_files
  else
    -- Learn the instance's home before execfiles expands a `~` path.
    provider.files = {}
    for name, fn in pairs(inner_files) do
      local positions = PATH_ARGS[name]
      provider.files[name] = positions and function(...)
        local args = table.pack(...)
        for _, i in ipairs(positions) do
          if type(args[i]) == "string" and args[i]:sub(1, 1) == "~" then
            home_of(check_id(args[1], "instance_id"))
            break
          end
        end
        return fn(table.unpack(args, 1, args.n))
      end or fn
    end
  end

  local function forget(id)
    homes[id] = nil
    inner_files.forget_instance(id)
  end

  --- Runs a CommandSpec in an instance. Non-zero exits are results. With `eopts.on_stdout` /
  --- `on_stderr`, output also streams to those functions as it arrives (SSE).
  ---@param instance_id string
  ---@param spec galley.CommandSpec
  ---@param eopts? {timeout_ms?: integer, on_stdout?: fun(s: string), on_stderr?: fun(s: string)}
  ---@return {stdout: string, stderr: string, exit_code: integer}
  ---@raise VALIDATION_ERROR (bad spec or option, before any request) | NOT_FOUND | CONFLICT (not ready) | TIMEOUT
  --- (the command ran past timeout_ms and was killed) | ...
  function provider.exec(instance_id, spec, eopts)
    check_id(instance_id, "instance_id")
    spec = contracts.check_command(spec)
    eopts = common.check_exec_options(eopts)
    local ok, plan = pcall(shell.plan, spec, { home = home_fixed or nil })
    if not ok then
      error(errors.wrap(plan, { operation = "exec", kind = "ProviderError" }, "VALIDATION_ERROR"), 0)
    end
    -- A time limit runs inside the instance (timeout(1) kills the command's process group there);
    -- the request itself waits a little longer, in case the service never answers.
    local limit = eopts.timeout_ms or exec_timeout_ms
    local function limited(argv) return limit and common.time_limited(argv, limit) or argv end
    local req = { timeout_ms = limit and (limit + exec_backstop_ms), on_stdout = eopts.on_stdout,
      on_stderr = eopts.on_stderr }
    local function run_limited(argv)
      return common.run_limited(instance_id, argv, limit, function(a) return exec_argv(instance_id, a, req) end)
    end
    local script = plan.script
    if plan.argv then
      if not one_line or #shell.join(limited(plan.argv)) <= max_command or payload_form(instance_id) == "argv" then
        return run_limited(plan.argv)
      end
      script = "exec -- " .. shell.join(plan.argv) .. "\n" -- too long for one line: run from a file
    end
    local path = "/tmp/.galley-script-" .. codec.random_hex(8) .. ".sh"
    local argv = { "/bin/sh", "-c", RUNNER, "galley-script", path, "1" }
    for i = 1, #script, SCRIPT_PIECE_BYTES do argv[#argv + 1] = script:sub(i, i + SCRIPT_PIECE_BYTES - 1) end
    local fits = one_line and #shell.join(limited(argv)) <= max_command
    if not fits and payload_form(instance_id) == "argv" then fits = #script <= M.INLINE_SCRIPT_BYTES end
    if not fits then
      provider.files.write_file_atomic(instance_id, path, script, { mode = "600" })
      argv = { "/bin/sh", "-c", RUNNER, "galley-script", path, "0" }
    end
    local r = run_limited(argv)
    log.trace("exec", { instance = instance_id, kind = spec.kind, exit_code = r.exit_code, stderr_bytes = #r.stderr })
    return r
  end

  --- How payload execs (too long for one exec line) are sent: "string" (one line each, under
  --- max_command_bytes) or "argv" (argv arrays). Explicit forms answer at once. With exec_form
  --- "auto": what the probe found (probe_exec_form: one ~200 KiB exec, once per provider), nil
  --- while it has not run; with an instance id, an undecided provider probes on that instance
  --- now. Ordinary execs are one line with "string" and "auto" whatever this says.
  ---@param instance_id? string
  ---@return "string"|"argv"|nil
  ---@raise (with instance_id) NETWORK_ERROR | TIMEOUT | INTERRUPTED | NOT_FOUND | CONFLICT | ... (not remembered)
  function provider.exec_form(instance_id)
    if decided or instance_id == nil then return decided end
    check_id(instance_id, "instance_id")
    return payload_form(instance_id)
  end

  --- Starts a command without waiting: a process handle over SSE exec (`read`, `wait`, `kill`,
  --- `close`, as galley.core.proc's Process; see galley.providers.morph_process). Takes a
  --- CommandSpec (argv form, no cwd/env) or a plain argv array.
  ---@param instance_id string
  ---@param command galley.CommandSpec|string[]
  ---@return galley.MorphProcess
  ---@raise VALIDATION_ERROR (bad command, before any request)
  function provider.spawn(instance_id, command)
    check_id(instance_id, "instance_id")
    local argv = common.spawn_command(command)
    return morph_process.spawn(client, instance_id, argv, { timeout_ms = exec_timeout_ms,
      exec_argv = function(a, eopts) return exec_argv(instance_id, a, eopts, "spawn") end })
  end

  -- A create whose answer was lost may still have created an instance: tell the run, which
  -- finds it by the request token at its end and stops it. A create that provably never
  -- reached the server (err.sent == false: connect refused) left nothing to wait for.
  -- A create's request token, chosen here (the client keeps it): an interrupt raised outside
  -- the HTTP wait (a signal caught between two Lua calls) carries no token of its own, and
  -- without one the create could not be found again. Returns the body with it, and the token.
  local function with_token(map)
    local copy = {}
    for k, v in pairs(map or {}) do copy[k] = v end
    copy[M.TOKEN_KEY] = copy[M.TOKEN_KEY] or morph_core.request_token()
    return copy, copy[M.TOKEN_KEY]
  end

  -- `token` is the create's own (see with_token), for an error that carries none.
  local function note_cut_off(err, token)
    if type(err) == "table" and err.sent ~= false and (err.code == "INTERRUPTED"
        or err.code == "TIMEOUT" or err.code == "NETWORK_ERROR" or err.code == "PROTOCOL_ERROR") then
      local t = err.request_token or token
      run.note_pending(provider, { [M.TOKEN_KEY] = t }, t)
    end
  end

  -- A create whose answer was lost (reset after it was sent, timeout, garbled answer) may have
  -- done its work: the instances carrying the create's request token (never create again).
  -- {} when it did not happen, has not yet (note_cut_off then leaves it to the run's end), or
  -- the lookup failed.
  local function find_created(err)
    if type(err) ~= "table" or type(err.request_token) ~= "string" or err.sent == false then return {} end
    if err.code ~= "TIMEOUT" and err.code ~= "NETWORK_ERROR" and err.code ~= "PROTOCOL_ERROR" then return {} end
    local ok, res = pcall(call, err.operation, nil, "instances_list",
      { metadata = { [M.TOKEN_KEY] = err.request_token } })
    if not ok then return {} end
    local hits = {}
    for _, raw in ipairs(type(res.data) == "table" and res.data or {}) do
      if type(raw.metadata) == "table" and raw.metadata[M.TOKEN_KEY] == err.request_token then hits[#hits + 1] = raw end
    end
    if #hits > 0 then
      log.warn("a create's answer was lost; found what it made", { instances = #hits, error = err.code })
    end
    return hits
  end

  -- instances ------------------------------------------------------------------------------
  local I = provider.instances
  I.exec = provider.exec

  --- Boots an instance from a snapshot and returns when it is ready. Inside a recipe run the
  --- instance is tagged with the run and gets its default TTL (galley.run).
  ---@param snapshot_id string
  ---@param bopts? galley.MorphBootOptions
  ---@return table instance (status "ready")
  ---@raise VALIDATION_ERROR | NOT_FOUND (snapshot) | TIMEOUT | SERVER_ERROR (not ready: deleted, err.instance_id)
  function I.boot(snapshot_id, bopts)
    check_id(snapshot_id, "snapshot_id")
    bopts = run.boot_options(check_table(bopts, "options"))
    local seconds, action = common.check_ttl(bopts)
    local metadata, token = with_token(common.check_metadata(bopts.metadata))
    local body = { metadata = metadata }
    if seconds then
      body.ttl_seconds, body.ttl_action = seconds, action
    end
    for _, k in ipairs({ "vcpus", "memory", "disk_size" }) do body[k] = check_count(bopts[k], k) end
    local wait_ms = check_count(bopts.timeout_ms, "timeout_ms", 0) or boot_timeout_ms
    local ok, raw = pcall(call, "instances.boot", "snapshot:" .. snapshot_id, "snapshots_boot", snapshot_id, body)
    if not ok then
      local found = find_created(raw)
      if #found ~= 1 then
        note_cut_off(raw, token)
        error(raw, 0)
      end
      raw = found[1] -- carry on with the instance the lost answer was about
    end
    raw = await_new(raw, wait_ms, "instances.boot")
    run.track_instance(provider, raw.id, seconds)
    log.debug("instance ready", { instance = raw.id, snapshot = snapshot_id })
    return M.instance(raw)
  end

  --- The instance, or NOT_FOUND.
  ---@param instance_id string
  ---@return table instance
  ---@raise NOT_FOUND | VALIDATION_ERROR | ...
  function I.get(instance_id)
    check_id(instance_id, "instance_id")
    return M.instance(call("instances.get", "instance:" .. instance_id, "instances_get", instance_id))
  end

  --- Instances whose metadata matches every key of the filter (`{metadata = {...}}` or a plain map).
  ---@param filter? table
  ---@return table[] instances
  ---@raise VALIDATION_ERROR | ...
  function I.list(filter)
    local want = common.metadata_filter(filter)
    local query = want and { metadata = common.check_metadata(want, "filter") } or nil
    local res = call("instances.list", nil, "instances_list", query)
    local out = {}
    for _, raw in ipairs(type(res.data) == "table" and res.data or {}) do
      local inst = M.instance(raw)
      -- Match the raw metadata: the public copy hides the request token, which is a valid filter.
      if common.match_metadata(type(raw.metadata) == "table" and raw.metadata or {}, want) then
        out[#out + 1] = inst
      end
    end
    return out
  end

  --- Deletes the instance (Morph's DELETE /instance/{id}; nothing of it is kept).
  ---@param instance_id string
  ---@return true
  ---@raise NOT_FOUND | VALIDATION_ERROR | ...
  function I.terminate(instance_id)
    check_id(instance_id, "instance_id")
    call("instances.terminate", "instance:" .. instance_id, "instances_stop", instance_id)
    forget(instance_id)
    return true
  end

  --- Sets the instance's TTL to `seconds` from now (`--keep 4h` at the end of a run).
  ---@param instance_id string
  ---@param seconds integer
  ---@param action? "stop"|"terminate"|"pause" default "stop"
  ---@return table instance
  ---@raise NOT_FOUND | VALIDATION_ERROR | ...
  function I.set_ttl(instance_id, seconds, action)
    check_id(instance_id, "instance_id")
    local secs, act = common.check_ttl({ ttl_seconds = seconds, ttl_action = action })
    if not secs then fail("VALIDATION_ERROR", "ttl_seconds must be a positive integer", { field = "ttl_seconds" }) end
    return M.instance(call("instances.set_ttl", "instance:" .. instance_id, "instances_ttl", instance_id,
      { ttl_seconds = secs, ttl_action = act }))
  end

  --- Same as terminate: Morph's stop deletes the instance (pause keeps it).
  ---@param instance_id string
  ---@return true
  function I.stop(instance_id)
    check_id(instance_id, "instance_id")
    call("instances.stop", "instance:" .. instance_id, "instances_stop", instance_id)
    forget(instance_id)
    return true
  end

  --- Pauses the instance (memory and files kept); status "stopped".
  ---@param instance_id string
  ---@return table instance
  ---@raise NOT_FOUND | CONFLICT (still booting) | ...
  function I.pause(instance_id)
    check_id(instance_id, "instance_id")
    return M.instance(call("instances.pause", "instance:" .. instance_id, "instances_pause", instance_id))
  end

  --- Resumes a paused instance and returns when it is ready (its TTL restarts).
  ---@param instance_id string
  ---@return table instance
  ---@raise NOT_FOUND | CONFLICT | TIMEOUT | ...
  function I.resume(instance_id)
    check_id(instance_id, "instance_id")
    local raw = call("instances.resume", "instance:" .. instance_id, "instances_resume", instance_id)
    if value(raw.status) ~= "ready" then
      raw = call("instances.resume", "instance:" .. instance_id, "wait_ready", instance_id,
        { timeout_ms = boot_timeout_ms })
    end
    return M.instance(raw)
  end

  local function take_snapshot(instance_id, sopts, operation)
    check_id(instance_id, "instance_id")
    local tagged
    sopts, tagged = run.snapshot_options(check_table(sopts, "options")) -- the run's tags; an image's none
    local body = { metadata = common.check_metadata(sopts.metadata), ttl_seconds = check_count(sopts.ttl_seconds,
      "ttl_seconds") }
    local query
    if sopts.digest ~= nil then
      if type(sopts.digest) ~= "string" then
        fail("VALIDATION_ERROR", "digest must be a string", { field = "digest" })
      end
      query = { digest = sopts.digest }
    end
    local raw = call(operation, "instance:" .. instance_id, "instances_snapshot", instance_id, body, query)
    if tagged and type(raw) == "table" and raw.id then
      run.track_snapshot(provider, raw.id, body.metadata.galley_keep == "1")
    end
    return M.snapshot(await_snapshot(raw, operation))
  end

  --- Snapshots a running instance; returns when the snapshot is ready. Inside a run (or
  --- `galley -e`/a script) it is tagged with the run and left for `galley gc` unless
  --- `keep = true`; one taken with a `digest` is an image: untagged, never collected.
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string, ttl_seconds?: integer, keep?: boolean}
  ---@return table snapshot
  ---@raise NOT_FOUND | CONFLICT | TIMEOUT | ...
  function I.snapshot(instance_id, sopts)
    return take_snapshot(instance_id, sopts, "instances.snapshot")
  end

  --- Makes `count` copies of a running instance (Morph's branch) and returns when all are
  --- ready. Metadata defaults to the parent's; run tags and TTL as in boot.
  ---@param instance_id string
  ---@param count? integer default 1
  ---@param fopts? galley.MorphBootOptions metadata, ttl_seconds, ttl_action, timeout_ms
  ---@return table[] instances (with forked_from and fork_snapshot_id)
  ---@raise VALIDATION_ERROR | NOT_FOUND | CONFLICT | TIMEOUT (every clone deleted) | ...
  function I.fork(instance_id, count, fopts)
    check_id(instance_id, "instance_id")
    count = check_count(count == nil and 1 or count, "count")
    fopts = check_table(fopts, "options")
    local metadata = fopts.metadata
    if metadata == nil then metadata = I.get(instance_id).metadata end
    local bopts = run.boot_options({ metadata = metadata, ttl_seconds = fopts.ttl_seconds,
      ttl_action = fopts.ttl_action })
    local seconds, action = common.check_ttl(bopts)
    local md = common.check_metadata(bopts.metadata)
    local stamped, token = with_token(md)
    local wait_ms = check_count(fopts.timeout_ms, "timeout_ms", 0) or boot_timeout_ms
    local called, res = pcall(call, "instances.fork", "instance:" .. instance_id, "instances_branch", instance_id,
      { instance_metadata = stamped, snapshot_metadata = md }, { count = count })
    if not called then
      -- The clones of a branch whose answer was lost are deleted (its snapshot is unknown).
      local all = true
      for _, raw in ipairs(find_created(res)) do all = discard(raw.id, "the fork's answer was lost") and all end
      if type(res) == "table" then res.terminated = all end
      note_cut_off(res, token)
      error(res, 0)
    end
    local raws = type(res.instances) == "table" and res.instances or {}
    local snap_id = type(res.snapshot) == "table" and res.snapshot.id or nil
    local ok, err = pcall(function()
      if #raws ~= count then
        fail("PROTOCOL_ERROR", ("branch returned %d instances, %d asked"):format(#raws, count),
          { operation = "instances.fork", resource = "instance:" .. instance_id })
      end
      if seconds then
        for i, raw in ipairs(raws) do
          raws[i] = call("instances.fork", "instance:" .. raw.id, "instances_ttl", raw.id,
            { ttl_seconds = seconds, ttl_action = action })
        end
      end
      for i, raw in ipairs(raws) do
        if value(raw.status) ~= "ready" then
          local r, werr = client:wait_ready(raw.id, { timeout_ms = wait_ms })
          if not r then
            werr = M.wrap_error(werr, "instances.fork", "instance:" .. raw.id)
            werr.instance_id = raw.id
            error(werr, 0)
          end
          raws[i] = morph_check.answer("wait_ready", r, "instances.fork", "instance:" .. raw.id)
        end
      end
    end)
    if not ok then
      local all = true
      for _, raw in ipairs(raws) do all = discard(raw.id, "fork failed") and all end
      if type(err) == "table" then err.terminated = all end
      error(err, 0)
    end
    local out = {}
    for i, raw in ipairs(raws) do
      run.track_instance(provider, raw.id)
      out[i] = M.instance(raw)
      out[i].forked_from = instance_id
      out[i].fork_snapshot_id = snap_id
    end
    return out
  end

  --- Alias of fork (Morph calls it branch).
  I.branch = I.fork

  -- snapshots ------------------------------------------------------------------------------
  local S = provider.snapshots

  --- The snapshot, or NOT_FOUND.
  ---@param snapshot_id string
  ---@return table snapshot
  ---@raise NOT_FOUND | VALIDATION_ERROR | ...
  function S.get(snapshot_id)
    check_id(snapshot_id, "snapshot_id")
    return M.snapshot(call("snapshots.get", "snapshot:" .. snapshot_id, "snapshots_get", snapshot_id))
  end

  --- Snapshots matching a metadata filter (`{metadata = {...}, digest = ?}` or a plain map).
  ---@param filter? table
  ---@return table[]
  function S.list(filter)
    local want = common.metadata_filter(filter)
    local query = {}
    if type(filter) == "table" and type(filter.metadata) == "table" and type(filter.digest) == "string" then
      query.digest = filter.digest
    end
    if want then query.metadata = common.check_metadata(want, "filter") end
    local res = call("snapshots.list", nil, "snapshots_list", query)
    local out = {}
    for _, raw in ipairs(type(res.data) == "table" and res.data or {}) do
      local s = M.snapshot(raw)
      if common.match_metadata(s.metadata, want) then out[#out + 1] = s end
    end
    return out
  end

  --- Same as instances.snapshot (a snapshot of an instance).
  ---@param instance_id string
  ---@param sopts? {metadata?: table<string, string>, digest?: string, ttl_seconds?: integer}
  ---@return table snapshot
  function S.create(instance_id, sopts)
    return take_snapshot(instance_id, sopts, "snapshots.create")
  end

  --- Deletes a snapshot.
  ---@param snapshot_id string
  ---@return true
  ---@raise NOT_FOUND | VALIDATION_ERROR | ...
  function S.delete(snapshot_id)
    check_id(snapshot_id, "snapshot_id")
    call("snapshots.delete", "snapshot:" .. snapshot_id, "snapshots_delete", snapshot_id)
    return true
  end

  --- Builds (or finds) an image from recipe steps, each cached by digest (galley.images).
  function S.build(...) return require("galley.images").build(provider, ...) end

  -- images ---------------------------------------------------------------------------------
  --- The base images.
  ---@return table[] `{id, name, description, disk_size, created_at, raw}`
  function provider.images.list()
    local res = call("images.list", nil, "images_list")
    local out = {}
    for _, raw in ipairs(type(res.data) == "table" and res.data or {}) do
      out[#out + 1] = { object = "image", id = raw.id, name = value(raw.name), description = value(raw.description),
        disk_size = int(raw.disk_size), created_at = int(raw.created), raw = raw }
    end
    return out
  end

  --- Closes the HTTP connection of a client this provider created (safe twice).
  function provider.close()
    if gateway then gateway:close() end
    if own_client then client:close() end
  end

  run.register_provider(provider)
  return provider
end

return M
