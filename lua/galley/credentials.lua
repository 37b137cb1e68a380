--- galley.credentials: installs credential profiles (directories, files, JSON merges) on an
-- instance, and builds the Claude Code profile.
--
--   local credentials = require("galley.credentials")
--   local installer = credentials.new{provider = provider}
--   local profile = credentials.claude_profile{access_token = at, refresh_token = rt,
--     expires_at_ms = exp, trust_dirs = {"/root/operator/sw-compose"}}
--   installer.install(instance_id, profile)             -- or install_all(id, {p1, p2, ...})
--   print(credentials.read_back_masked(provider, instance_id, "~/.claude/.credentials.json"))
--
-- A profile: {name, directories = {{path, mode?, owner?, group?}}, files = {entry...},
-- post_install = CommandSpec?}. A file entry is one of
--   {path, content = "bytes", mode?, secret?, owner?, group?}            written as given
--   {path, json = table, merge = "shallow"|"deep"|nil, mode?, secret?, expand_home_keys?}
-- `json` without `merge` replaces the file with the encoded table. With `merge`, the table is
-- merged into the JSON object already in the file (missing or empty file: `{}`): "shallow"
-- replaces the top-level keys it names and keeps every other key; "deep" merges objects
-- recursively. `expand_home_keys = {"projects"}` expands a leading `~` in the keys of those
-- top-level objects (for path-keyed maps such as `.claude.json`'s `projects`). An existing file
-- that is not a JSON object is left alone and the install fails (reason "invalid_json").
-- Modes are octal strings ("600"); a secret file without a mode gets "600"; otherwise a replaced
-- file keeps its mode and a new one gets "644". Paths are absolute or start with `~/`, which
-- means the provider's `capabilities.home_dir`, else the remote $HOME.
--
-- How it runs (few execs; no secret in logs or long-lived process args): every operation of every profile given to one
-- `install_all` call becomes one JSON payload, base64-encoded and passed in the *environment* of
-- ONE exec, `python3 -I -c <program>` (argv holds only the program), split over GALLEY_CREDS_0,
-- GALLEY_CREDS_1, ... of at most `env_chunk_bytes` (100 000) each. The program creates the
-- directories (then chmods them), and writes each file to a temporary file beside it (0600
-- while written), chmods/chowns it, checks its size, fsyncs and renames it over the target
-- (merges read the current file first). It prints a JSON report on stdout. Payloads above
-- `max_exec_bytes` (768 KiB) are split across several execs in order; a single plain file larger
-- than that goes through `provider.files.write_file_atomic` instead. Post-install commands run
-- afterwards, one exec each. The instance needs python3 (the seeds assume it on snapshots).
-- Where the environment travels is the provider's business: the local provider hands it to the
-- process (never argv); Morph's exec API has only a command array (no stdin, no environment),
-- so the Morph provider puts the exports in the script its single exec carries: while that exec
-- runs, the payload is in the argv of processes on the VM (/proc/<pid>/cmdline there), then in
-- python's environment. Either way nothing here logs it, nothing long-lived keeps it, and no
-- token appears in plain text (it is base64 inside base64 JSON).
--
-- Logging: paths, byte counts and modes only, never contents. Secret file contents are
-- registered with galley.log so that no record can show them.
--
-- Errors: VALIDATION_ERROR (a bad profile; `field` names it), CREDENTIALS_ERROR (kind
-- CredentialsError) for every install failure, with `resource = "file:<path>"` and
-- `details = {path, profile, reason, step, written, cause?, exit_code?}`; INTERRUPTED passes through.
-- A provider error keeps its class: it is `err.cause` (the provider's error itself: `err.cause.code`
-- is SERVER_ERROR, NOT_FOUND, ...), and a transient one (errors.is_retryable: 429, 5xx, network,
-- timeout) makes the CREDENTIALS_ERROR retryable too (`err.retryable`, `err.attempt`). Install
-- steps are idempotent (atomic writes, merges of the same keys), so a transient failure (not a
-- TIMEOUT: that is the exec's own limit passing) is retried first (`retry`: 3 attempts, backoff
-- from 500 ms, honouring Retry-After); post-install commands are the profile's own and are not
-- retried.
local cjson = require("cjson").new()
local codec = require("galley.core.codec")
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local logmod = require("galley.log")
local secrets = require("galley.secrets")
local task = require("galley.task")
local util = require("galley.util")

local M = {}

-- Below the Morph provider's 1 MiB inline-script limit, so a batch stays one request there.
M.DEFAULT_MAX_EXEC_BYTES = 768 * 1024
M.DEFAULT_ENV_CHUNK_BYTES = 100000
--- Time limit of each exec the installer makes (the install program, post_install commands):
--- a wedged instance fails the install (exec_failed, cause TIMEOUT) instead of hanging a run.
M.DEFAULT_EXEC_TIMEOUT_MS = 120000

--- How a transient failure of an install step (an exec, a large file's write) is retried.
M.DEFAULT_RETRY = { max_attempts = 3, base_delay_ms = 500, max_delay_ms = 5000 }

--- Room kept for the program and the shell around the payload when the provider sends each exec
--- as one line of at most `capabilities.max_command_bytes` (Morph): payloads are sized to fit
--- that line, so the exec carries them inline and no script holding a token is uploaded.
M.LINE_OVERHEAD_BYTES = 32 * 1024
M.CLAUDE_DEFAULT_SCOPES = { "user:inference", "user:profile" }

-- Exit status of the remote program when an operation failed (its report says which).
local EXIT_OP_FAILED = 3

local PROGRAM = [[
import base64, hashlib, json, os, shutil, stat, sys

class Failure(Exception):
    def __init__(self, reason, msg):
        Exception.__init__(self, msg)
        self.reason = reason

def expand(p, home):
    if p == "~" or p.startswith("~/"):
        return home.rstrip("/") + p[1:] if p != "~" else home
    return p

def chown(p, op):
    if op.get("owner") or op.get("group"):
        shutil.chown(p, op.get("owner") or None, op.get("group") or None)

def write_atomic(path, data, mode, op):
    d = os.path.dirname(path) or "/"
    os.makedirs(d, exist_ok=True)
    if mode is None:
        try:
            m = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            m = 0o644
    else:
        m = int(mode, 8)
    tmp = os.path.join(d, ".%s.galley-tmp-%s" % (os.path.basename(path), os.urandom(6).hex()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, m)
            os.fsync(fd)
        finally:
            os.close(fd)
        chown(tmp, op)
        if os.stat(tmp).st_size != len(data):
            raise Failure("verify", "size check failed after writing")
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return m

def merge(dst, src, depth):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and (depth is None or depth > 1):
            merge(dst[k], v, None if depth is None else depth - 1)
        else:
            dst[k] = v

def run(op, home):
    path = expand(op["path"], home)
    kind = op["op"]
    if kind == "mkdir":
        os.makedirs(path, exist_ok=True)
        if not os.path.isdir(path):
            raise Failure("not_a_directory", "exists and is not a directory")
        if op.get("mode"):
            os.chmod(path, int(op["mode"], 8))
        chown(path, op)
        return {"path": path, "kind": "directory", "mode": "%o" % stat.S_IMODE(os.stat(path).st_mode)}
    if kind == "write":
        data = base64.b64decode(op["b64"], validate=True)
        if hashlib.sha256(data).hexdigest() != op["sha256"]:
            raise Failure("transport", "content damaged in transit")
        m = write_atomic(path, data, op.get("mode"), op)
        return {"path": path, "kind": "file", "bytes": len(data), "mode": "%o" % m}
    if kind == "merge":
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        if raw.strip():
            try:
                cur = json.loads(raw)
            except ValueError:
                raise Failure("invalid_json", "the existing file is not valid JSON; left unchanged")
            if not isinstance(cur, dict):
                raise Failure("invalid_json", "the existing file is not a JSON object; left unchanged")
        else:
            cur = {}
        patch = json.loads(base64.b64decode(op["b64"], validate=True))
        for key in op.get("expand_home_keys") or []:
            if isinstance(patch.get(key), dict):
                patch[key] = dict((expand(k, home), v) for k, v in patch[key].items())
        merge(cur, patch, op.get("depth"))
        data = (json.dumps(cur, indent=2) + "\n").encode("utf-8")
        m = write_atomic(path, data, op.get("mode"), op)
        return {"path": path, "kind": "file", "bytes": len(data), "mode": "%o" % m, "merged": True}
    raise Failure("bad_op", "unknown operation")

def main():
    parts, i = [], 0
    while True:
        v = os.environb.get(b"GALLEY_CREDS_%d" % i)
        if v is None:
            break
        parts.append(v)
        i += 1
    payload = json.loads(base64.b64decode(b"".join(parts), validate=True))
    home = payload.get("home") or os.path.expanduser("~")
    done = []
    for n, op in enumerate(payload["ops"], 1):
        try:
            r = run(op, home)
        except Failure as e:
            reason, msg = e.reason, str(e)
        except OSError as e:
            reason, msg = "io", "%s: %s" % (type(e).__name__, e.strerror or e)
        except Exception as e:
            reason, msg = "error", type(e).__name__
        else:
            r["i"] = n
            done.append(r)
            continue
        json.dump({"ok": False, "i": n, "path": expand(op["path"], home), "reason": reason,
                   "error": msg, "done": done}, sys.stdout)
        sys.exit(3)
    json.dump({"ok": True, "done": done}, sys.stdout)

main()
]]

--- The remote program (for people reading a debug trace): `python3 -I -c <this>`.
M.PROGRAM = PROGRAM

-- ---------------------------------------------------------------------------------------------
-- Profile checks
-- ---------------------------------------------------------------------------------------------

local function bad(field, message)
  error(errors.CredentialsError("VALIDATION_ERROR", ("%s: %s"):format(field, message),
    { field = field, details = { path = field } }), 0)
end


local function check_mode(field, v)
  if v == nil then return nil end
  if type(v) ~= "string" or not v:match("^0?[0-7][0-7][0-7]$") then
    bad(field, 'expected an octal string such as "600" or "0700"')
  end
  return v
end


local function check_path(field, v)
  if type(v) ~= "string" or v == "" then bad(field, "expected a non-empty path") end
  if v:find("\0", 1, true) then bad(field, "contains a NUL byte") end
  if not (v:sub(1, 1) == "/" or v == "~" or v:sub(1, 2) == "~/") then
    bad(field, "expected an absolute or ~/ path")
  end
  return v
end


local function check_account(field, v)
  if v == nil then return nil end
  if math.type(v) == "integer" and v >= 0 then return tostring(v) end
  if type(v) ~= "string" or not v:match("^[%w_.][%w_.%-]*$") then bad(field, "expected a user/group name or id") end
  return v
end


local function check_fields(field, t, allowed)
  if type(t) ~= "table" then bad(field, "expected a table") end
  for _, k in ipairs(util.sorted_keys(t)) do
    if not allowed[k] then bad(("%s.%s"):format(field, tostring(k)), "unknown field") end
  end
end


local function check_list(field, t)
  if t == nil then return {} end
  if type(t) ~= "table" or not util.is_array(t) then bad(field, "expected an array") end
  return t
end


local PROFILE_FIELDS = { name = true, directories = true, files = true, post_install = true }
local DIR_FIELDS = { path = true, mode = true, owner = true, group = true }
local FILE_FIELDS = { path = true, content = true, json = true, merge = true, mode = true, secret = true,
  owner = true, group = true, expand_home_keys = true }

--- Checks a profile; returns a normalised copy. Raises VALIDATION_ERROR whose `field` names the
-- offending entry (e.g. `profile.files[2].mode`).
---@param profile table
---@param field? string prefix for error fields (default "profile")
---@return table
---@raise VALIDATION_ERROR
function M.check_profile(profile, field)
  field = field or "profile"
  check_fields(field, profile, PROFILE_FIELDS)
  if type(profile.name) ~= "string" or profile.name == "" then bad(field .. ".name", "expected a non-empty string") end
  local out = { name = profile.name, directories = {}, files = {} }
  for i, d in ipairs(check_list(field .. ".directories", profile.directories)) do
    local f = ("%s.directories[%d]"):format(field, i)
    check_fields(f, d, DIR_FIELDS)
    out.directories[i] = { path = check_path(f .. ".path", d.path), mode = check_mode(f .. ".mode", d.mode),
      owner = check_account(f .. ".owner", d.owner), group = check_account(f .. ".group", d.group) }
  end
  for i, e in ipairs(check_list(field .. ".files", profile.files)) do
    local f = ("%s.files[%d]"):format(field, i)
    check_fields(f, e, FILE_FIELDS)
    local entry = { path = check_path(f .. ".path", e.path), mode = check_mode(f .. ".mode", e.mode),
      secret = e.secret == true, owner = check_account(f .. ".owner", e.owner),
      group = check_account(f .. ".group", e.group) }
    if e.secret ~= nil and type(e.secret) ~= "boolean" then bad(f .. ".secret", "expected a boolean") end
    if (e.content == nil) == (e.json == nil) then bad(f, "give exactly one of content and json") end
    if e.content ~= nil then
      if type(e.content) ~= "string" then bad(f .. ".content", "expected a string") end
      if e.merge ~= nil then bad(f .. ".merge", "only json entries can be merged") end
      entry.content = e.content
    else
      if type(e.json) ~= "table" then bad(f .. ".json", "expected a table") end
      if e.merge ~= nil and e.merge ~= "shallow" and e.merge ~= "deep" then
        bad(f .. ".merge", 'expected "shallow" or "deep"')
      end
      local ok, text = pcall(cjson.encode, e.json)
      if not ok then bad(f .. ".json", "cannot be encoded as JSON") end
      entry.json_text = text
      entry.merge = e.merge
      entry.json = e.json
      if e.merge ~= nil and text:sub(1, 1) ~= "{" then
        bad(f .. ".json", "a merged file needs a JSON object (a table with string keys)")
      end
    end
    if e.expand_home_keys ~= nil then
      for j, k in ipairs(check_list(f .. ".expand_home_keys", e.expand_home_keys)) do
        if type(k) ~= "string" then bad(("%s.expand_home_keys[%d]"):format(f, j), "expected a string") end
      end
      entry.expand_home_keys = e.expand_home_keys
    end
    if entry.secret and not entry.mode then entry.mode = "600" end
    out.files[i] = entry
  end
  if profile.post_install ~= nil then
    local ok, spec = pcall(contracts.check_command, profile.post_install)
    if not ok then
      local sub = type(spec) == "table" and type(spec.field) == "string" and spec.field:gsub("^command", "") or ""
      bad(field .. ".post_install" .. sub, type(spec) == "table" and spec.message or tostring(spec))
    end
    out.post_install = spec
  end
  return out
end

-- ---------------------------------------------------------------------------------------------
-- The Claude Code profile
-- ---------------------------------------------------------------------------------------------

local CLAUDE_FIELDS = { name = true, access_token = true, refresh_token = true, expires_at_ms = true, scopes = true,
  subscription_type = true, rate_limit_tier = true, trust_dirs = true, config_dir = true, post_install = true,
  -- Fields of galley.oauth.claude credentials, accepted and ignored so they can be passed as is.
  expires_in = true, token_type = true, account = true, organization = true, obtained_at_ms = true }

--- A profile that logs Claude Code in on an instance (reference §2): `~/.claude` (0700), then
-- `~/.claude/.credentials.json` (0600) whose `claudeAiOauth` key is replaced (other top-level
-- keys such as `mcpOAuth` are kept), then `~/.claude.json` (0600) merged deeply with
-- `hasCompletedOnboarding = true` and `projects[<dir>].hasTrustDialogAccepted = true` for each
-- trust dir (nothing else there changes). Takes galley.oauth.claude credentials as they are.
-- With `config_dir` (CLAUDE_CONFIG_DIR) both files live in that directory instead.
-- The tokens are registered with galley.log as secrets.
---@class galley.ClaudeProfileInput
---@field access_token string
---@field refresh_token? string
---@field expires_at_ms integer epoch milliseconds
---@field scopes? string[]|string default {"user:inference", "user:profile"}
---@field subscription_type? string "pro" | "max"
---@field rate_limit_tier? string
---@field trust_dirs? string[] working directories to mark trusted (absolute or ~/)
---@field config_dir? string CLAUDE_CONFIG_DIR on the instance
---@field post_install? galley.CommandSpec e.g. `claude auth status`
---@field name? string default "claude"

---@param o galley.ClaudeProfileInput
---@return table profile
---@raise VALIDATION_ERROR
function M.claude_profile(o)
  check_fields("claude_profile", o, CLAUDE_FIELDS)
  if type(o.access_token) ~= "string" or o.access_token == "" then
    bad("claude_profile.access_token", "expected a non-empty string")
  end
  if o.refresh_token ~= nil and (type(o.refresh_token) ~= "string" or o.refresh_token == "") then
    bad("claude_profile.refresh_token", "expected a non-empty string")
  end
  local expires = tonumber(o.expires_at_ms)
  expires = expires and expires == math.floor(expires) and math.tointeger(expires)
  if not expires or expires <= 0 then bad("claude_profile.expires_at_ms", "expected epoch milliseconds") end
  if expires < 100000000000 then
    bad("claude_profile.expires_at_ms", "looks like seconds; the file stores milliseconds")
  end
  local scopes = o.scopes or M.CLAUDE_DEFAULT_SCOPES
  if type(scopes) == "string" then
    local list = {}
    for s in scopes:gmatch("%S+") do list[#list + 1] = s end
    scopes = list
  end
  if type(scopes) ~= "table" or #scopes == 0 then bad("claude_profile.scopes", "expected a non-empty array") end
  for i, s in ipairs(scopes) do
    if type(s) ~= "string" then bad(("claude_profile.scopes[%d]"):format(i), "expected a string") end
  end
  for _, k in ipairs({ "subscription_type", "rate_limit_tier", "name" }) do
    if o[k] ~= nil and (type(o[k]) ~= "string" or o[k] == "") then
      bad("claude_profile." .. k, "expected a non-empty string")
    end
  end
  local oauth = {
    accessToken = o.access_token,
    refreshToken = o.refresh_token,
    expiresAt = expires,
    scopes = util.deep_copy(scopes),
    subscriptionType = o.subscription_type,
    rateLimitTier = o.rate_limit_tier,
  }
  logmod.register_secret(o.access_token)
  if o.refresh_token then logmod.register_secret(o.refresh_token) end

  local config_dir = o.config_dir and check_path("claude_profile.config_dir", o.config_dir)
  config_dir = config_dir and config_dir:gsub("/+$", "")
  local claude_dir = config_dir or "~/.claude"
  local state_file = config_dir and (config_dir .. "/.claude.json") or "~/.claude.json"

  local state = { hasCompletedOnboarding = true }
  local trust = check_list("claude_profile.trust_dirs", o.trust_dirs)
  if #trust > 0 then
    state.projects = {}
    for i, d in ipairs(trust) do
      d = check_path(("claude_profile.trust_dirs[%d]"):format(i), d)
      if #d > 1 then d = d:gsub("/+$", "") end
      state.projects[d] = { hasTrustDialogAccepted = true }
    end
  end

  local profile = {
    name = o.name or "claude",
    directories = { { path = claude_dir, mode = "700" } },
    files = {
      { path = claude_dir .. "/.credentials.json", json = { claudeAiOauth = oauth }, merge = "shallow",
        mode = "600", secret = true },
      { path = state_file, json = state, merge = "deep", mode = "600", expand_home_keys = { "projects" } },
    },
    post_install = o.post_install,
  }
  M.check_profile(profile, "claude_profile")
  return profile
end

-- ---------------------------------------------------------------------------------------------
-- Masked read-back
-- ---------------------------------------------------------------------------------------------

--- The masked form of a token: its `sk-ant-xxx01-` style prefix (when it has one), then
-- `…(N chars)`, e.g. `sk-ant-oat01-…(108 chars)`.
---@param s string
---@return string
function M.mask(s)
  local prefix = s:match("^(sk%-ant%-%w+%-)") or s:match("^(sk%-)") or s:match("^(morph_)") or ""
  return ("%s…(%d chars)"):format(prefix, #s)
end


-- Masks what galley.secrets calls a secret: values under secret-sounding keys (everything below
-- an "always" key), and values that look like tokens wherever they are.
local function mask_tree(v, key, under_secret)
  if type(v) == "string" then
    if under_secret or secrets.is_secret_value(key, v) then return M.mask(v) end
    return v
  elseif type(v) == "table" then
    local out = {}
    local below = under_secret or secrets.sensitivity(key) == "always"
    for k, x in pairs(v) do out[k] = mask_tree(x, k, below) end
    return setmetatable(out, getmetatable(v))
  end
  return v
end


-- Deterministic JSON (sorted keys, two-space indent) for people to read.
local function encode_sorted(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "table" then
    if next(v) ~= nil and util.is_array(v) then
      if #v == 0 then return "[]" end
      local parts = {}
      for i, x in ipairs(v) do parts[i] = indent .. "  " .. encode_sorted(x, indent .. "  ") end
      return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
    end
    local keys = util.sorted_keys(v)
    if #keys == 0 then return "{}" end
    local parts = {}
    for i, k in ipairs(keys) do
      parts[i] = ("%s  %s: %s"):format(indent, cjson.encode(tostring(k)), encode_sorted(v[k], indent .. "  "))
    end
    return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
  elseif t == "number" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return ("%d"):format(v)
  elseif v == cjson.null then
    return "null"
  end
  return (cjson.encode(v):gsub("\\/", "/"))
end


--- Reads a (JSON) file on the instance and returns it as JSON text with every token masked
-- (values under secret-sounding keys, and values that look like tokens): for smoke tests.
-- A file that is not JSON comes back as `{"unparsed": "…(N chars)"}`.
---@param provider table
---@param instance_id string
---@param path string
---@return string json
---@raise CREDENTIALS_ERROR (the file cannot be read; details.cause) | INTERRUPTED
function M.read_back_masked(provider, instance_id, path)
  local ok, text = pcall(provider.files.read_file, instance_id, path)
  if not ok then
    if errors.is(text, "INTERRUPTED") then error(text, 0) end
    error(errors.CredentialsError("CREDENTIALS_ERROR", ("cannot read %s back: %s"):format(path, tostring(text)), {
      operation = "credentials.read_back", resource = "file:" .. path, cause = errors.is(text) and text or nil,
      retryable = errors.is_retryable(text) or nil,
      details = { path = path, cause = { code = type(text) == "table" and text.code or nil } } }), 0)
  end
  local dok, decoded = pcall(cjson.decode, text)
  if not dok or type(decoded) ~= "table" then
    return encode_sorted({ unparsed = M.mask(text) })
  end
  return encode_sorted(mask_tree(decoded, nil, false))
end

-- ---------------------------------------------------------------------------------------------
-- The installer
-- ---------------------------------------------------------------------------------------------

local function b64(s) return codec.base64_encode(s, "standard") end


-- Registers the string values under secret-sounding keys of a JSON entry as log secrets.
local function register_leaves(v, key, under_secret)
  if type(v) == "string" then
    if under_secret or secrets.is_secret_value(key, v) then logmod.register_secret(v) end
  elseif type(v) == "table" then
    local below = under_secret or secrets.sensitivity(key) == "always"
    for k, x in pairs(v) do register_leaves(x, k, below) end
  end
end


-- The operations of the checked profiles, in order: {op, path, ..., profile, bytes}.
local function operations(profiles)
  local ops = {}
  for _, p in ipairs(profiles) do
    for _, d in ipairs(p.directories) do
      ops[#ops + 1] = { op = "mkdir", path = d.path, mode = d.mode, owner = d.owner, group = d.group,
        profile = p.name }
    end
    for _, f in ipairs(p.files) do
      local op = { path = f.path, mode = f.mode, owner = f.owner, group = f.group, profile = p.name,
        secret = f.secret }
      if f.content then
        op.op = "write"
        op.content = f.content
        op.sha256 = codec.sha256(f.content)
        if f.secret then logmod.register_secret(f.content) end
      else
        if f.secret then register_leaves(f.json, nil, false) end
        op.op = "merge"
        op.content = f.json_text
        op.depth = f.merge == "shallow" and 1 or nil
        op.replace = f.merge == nil
        op.expand_home_keys = f.expand_home_keys
      end
      ops[#ops + 1] = op
    end
  end
  return ops
end


-- The wire form of one operation (what the remote program reads).
local function wire(op)
  local w = { op = op.op, path = op.path, mode = op.mode, owner = op.owner, group = op.group }
  if op.op == "write" then
    w.b64, w.sha256 = b64(op.content), op.sha256
  elseif op.op == "merge" then
    if op.replace then
      -- A plain JSON write: encode it here and send it as a write.
      w.op, w.b64, w.sha256 = "write", b64(op.content .. "\n"), codec.sha256(op.content .. "\n")
    else
      w.b64, w.depth, w.expand_home_keys = b64(op.content), op.depth, op.expand_home_keys
    end
  end
  return w
end


--- Creates an installer bound to a provider.
---@class galley.CredentialsOptions
---@field provider table the VM provider (exec; files for very large files)
---@field log? galley.Logger
---@field home_dir? string what `~` means (default provider.capabilities.home_dir, else the remote $HOME)
---@field python? string the remote interpreter (default "python3")
---@field max_exec_bytes? integer payload per exec (default 768 KiB; less on a provider whose
---  capabilities.max_command_bytes bounds one exec line: that minus LINE_OVERHEAD_BYTES)
---@field env_chunk_bytes? integer bytes per environment variable (default 100 000)
---@field retry? {max_attempts?: integer, base_delay_ms?: integer, max_delay_ms?: integer} transient
---  failures of install steps (default M.DEFAULT_RETRY; max_attempts = 1: none)
---@field exec_timeout_ms? integer time limit of each exec (default M.DEFAULT_EXEC_TIMEOUT_MS, 120 s)

---@param opts galley.CredentialsOptions
---@return table installer `{install, install_all, plan}`
---@raise VALIDATION_ERROR (no provider)
function M.new(opts)
  opts = opts or {}
  local provider = opts.provider
  if type(provider) ~= "table" or type(provider.exec) ~= "function" then
    bad("provider", "expected a provider with exec")
  end
  local log = opts.log or logmod.new({ prefix = "credentials" })
  local python = opts.python or "python3"
  local max_exec = opts.max_exec_bytes or M.DEFAULT_MAX_EXEC_BYTES
  local line_bytes = type(provider.capabilities) == "table" and provider.capabilities.max_command_bytes
  if opts.max_exec_bytes == nil and math.type(line_bytes) == "integer" then
    max_exec = math.min(max_exec, line_bytes - M.LINE_OVERHEAD_BYTES)
  end
  local chunk = opts.env_chunk_bytes or M.DEFAULT_ENV_CHUNK_BYTES
  local retry = opts.retry or {}
  if type(retry) ~= "table" then bad("retry", "expected a table {max_attempts?, base_delay_ms?, max_delay_ms?}") end
  for _, k in ipairs({ "max_attempts", "base_delay_ms", "max_delay_ms" }) do
    if retry[k] ~= nil and not (math.type(retry[k]) == "integer" and retry[k] >= (k == "max_attempts" and 1 or 0)) then
      bad("retry." .. k, "expected a non-negative integer (max_attempts: at least 1)")
    end
  end
  local max_attempts = retry.max_attempts or M.DEFAULT_RETRY.max_attempts
  local base_delay = retry.base_delay_ms or M.DEFAULT_RETRY.base_delay_ms
  local max_delay = retry.max_delay_ms or M.DEFAULT_RETRY.max_delay_ms
  local limit = opts.exec_timeout_ms
  if limit ~= nil and (math.type(limit) ~= "integer" or limit < 1) then
    bad("exec_timeout_ms", "expected a positive integer")
  end
  local exec_opts = { timeout_ms = limit or M.DEFAULT_EXEC_TIMEOUT_MS }

  local installer = {}

  local function home()
    return opts.home_dir or (provider.capabilities or {}).home_dir
  end

  -- The CommandSpec carrying a list of wire operations.
  local function exec_spec(wires)
    local payload = b64(cjson.encode({ home = home() or cjson.null, ops = wires }))
    local env = {}
    local n = 0
    for i = 1, #payload, chunk do
      env["GALLEY_CREDS_" .. n] = payload:sub(i, i + chunk - 1)
      n = n + 1
    end
    return { kind = "argv", command = python, args = { "-I", "-c", PROGRAM }, env = env }, #payload
  end

  --- Plans an install without running it: the execs (CommandSpecs, in order), the files too
  -- large for an exec (written with provider.files.write_file_atomic) and the post-install
  -- commands. Each step is `{kind = "exec"|"large_file"|"post_install", spec?, ops, bytes?}`.
  ---@param profiles table[]
  ---@return {steps: table[], profiles: table[]}
  ---@raise VALIDATION_ERROR
  function installer.plan(profiles)
    if type(profiles) ~= "table" or not util.is_array(profiles) then
      bad("profiles", "expected an array of profiles")
    end
    local checked = {}
    for i, p in ipairs(profiles) do checked[i] = M.check_profile(p, ("profiles[%d]"):format(i)) end
    local steps = {}
    local batch, batch_bytes = {}, 0
    local function flush()
      if #batch == 0 then return end
      local wires = {}
      for i, op in ipairs(batch) do wires[i] = wire(op) end
      local spec, bytes = exec_spec(wires)
      steps[#steps + 1] = { kind = "exec", spec = spec, ops = batch, bytes = bytes }
      batch, batch_bytes = {}, 0
    end
    for _, op in ipairs(operations(checked)) do
      -- base64 grows 4/3, twice (content inside the payload), plus the JSON around it.
      local size = math.ceil((#(op.content or "") * 4 / 3 + 256) * 4 / 3)
      if size > max_exec then
        if op.op ~= "write" then
          bad("profiles", ("%s: a merged JSON file larger than one exec (%d bytes)"):format(op.path, max_exec))
        end
        flush()
        steps[#steps + 1] = { kind = "large_file", ops = { op }, bytes = #op.content }
      else
        if batch_bytes + size > max_exec then flush() end
        batch[#batch + 1] = op
        batch_bytes = batch_bytes + size
      end
    end
    flush()
    for _, p in ipairs(checked) do
      if p.post_install then
        steps[#steps + 1] = { kind = "post_install", spec = p.post_install, ops = {}, profile = p.name }
      end
    end
    return { steps = steps, profiles = checked }
  end

  local function fail(message, op, fields)
    local details = fields.details or {}
    details.path = details.path or (op and op.path)
    details.profile = details.profile or (op and op.profile)
    error(errors.CredentialsError("CREDENTIALS_ERROR", message, {
      operation = "credentials.install", resource = details.path and ("file:" .. details.path) or nil,
      details = details, hint = fields.hint or (fields.retryable and "a transient failure (see err.cause): "
        .. "running the install again may succeed" or nil),
      cause = fields.cause, retryable = fields.retryable, attempt = fields.attempt,
      max_attempts = fields.max_attempts }), 0)
  end

  local function cause_of(err)
    return { code = type(err) == "table" and err.code or "INTERNAL_ERROR",
      message = type(err) == "table" and err.message or tostring(err) }
  end

  -- The fields that keep a provider error's class on the CREDENTIALS_ERROR wrapping it.
  local function keep_class(err, attempt)
    return { cause = errors.is(err) and err or nil, retryable = errors.is_retryable(err) or nil,
      attempt = attempt, max_attempts = attempt and max_attempts or nil }
  end

  -- Calls an idempotent install step, again (after a backoff) while it fails with a transient
  -- error. Returns true, result | false, err, attempts. INTERRUPTED passes through.
  local function with_retries(what, fn, ...)
    local attempt = 1
    while true do
      local ok, res = pcall(fn, ...)
      if ok then return true, res end
      if errors.is(res, "INTERRUPTED") then error(res, 0) end
      -- A TIMEOUT is the exec's own time limit passing (the command was killed): not retried.
      if attempt >= max_attempts or not errors.is_retryable(res) or res.code == "TIMEOUT" then
        return false, res, attempt
      end
      local delay = math.min(max_delay, base_delay * (1 << (attempt - 1)))
      local after = type(res) == "table" and tonumber(res.retry_after)
      if after then delay = math.max(delay, math.floor(after * 1000)) end
      log.warn("transient failure, retrying", { step = what, code = res.code, attempt = attempt,
        max_attempts = max_attempts, delay_ms = delay })
      task.sleep(delay)
      attempt = attempt + 1
    end
  end

  local function run_exec(instance_id, step, written)
    local ok, res, attempts = with_retries("exec", provider.exec, instance_id, step.spec, exec_opts)
    local first = step.ops[1]
    if not ok then
      local f = keep_class(res, attempts)
      f.details = { step = "exec", reason = "exec_failed", cause = cause_of(res), written = written }
      fail(("installing credentials on %s failed: %s"):format(instance_id, tostring(res)), first, f)
    end
    local rok, report = pcall(cjson.decode, res.stdout or "")
    if not rok or type(report) ~= "table" then report = nil end
    if report then
      for _, d in ipairs(report.done or {}) do
        local op = step.ops[math.tointeger(d.i) or 0] or {}
        written[#written + 1] = d.path
        if d.kind == "directory" then
          log.debug("directory ready", { profile = op.profile, path = d.path, mode = d.mode })
        else
          log.info("credential file written", { profile = op.profile, path = d.path, bytes = math.tointeger(d.bytes),
            mode = d.mode, merged = d.merged or nil })
        end
      end
    end
    if res.exit_code == 0 and report and report.ok == true then return end
    if res.exit_code == EXIT_OP_FAILED and report and report.ok == false then
      local op = step.ops[math.tointeger(report.i) or 0]
      fail(("cannot install %s: %s"):format(tostring(report.path), tostring(report.error)), op, {
        details = { path = report.path, step = "write", reason = report.reason, written = written } })
    end
    local hint
    if res.exit_code == 127 then hint = python .. " is needed on the instance to install credentials" end
    fail(("installing credentials on %s failed (exit %d)"):format(instance_id, res.exit_code), first, {
      hint = hint, details = { step = "exec", reason = res.exit_code == 127 and "no_python" or "exec_failed",
        exit_code = res.exit_code, stderr = util.trim(res.stderr or ""):sub(-300), written = written } })
  end

  local function run_large(instance_id, step, written)
    local op = step.ops[1]
    if type(provider.files) ~= "table" or not provider.files.write_file_atomic then
      fail(("%s is too large for one exec and the provider has no files API"):format(op.path), op,
        { details = { step = "write", reason = "too_large", written = written } })
    end
    local ok, err, attempts = with_retries("write", provider.files.write_file_atomic, instance_id, op.path,
      op.content, { mode = op.mode or "644", create_dirs = true, owner = op.owner, group = op.group })
    if not ok then
      local f = keep_class(err, attempts)
      f.details = { step = "write", reason = "io", cause = cause_of(err), written = written }
      fail(("cannot install %s: %s"):format(op.path, tostring(err)), op, f)
    end
    written[#written + 1] = op.path
    log.info("credential file written", { profile = op.profile, path = op.path, bytes = #op.content,
      mode = op.mode or "644" })
  end

  local function run_post(instance_id, step, written)
    -- Not retried: the command is the profile's, and may not be safe to run twice.
    local ok, res = pcall(provider.exec, instance_id, step.spec, exec_opts)
    if not ok then
      if errors.is(res, "INTERRUPTED") then error(res, 0) end
      local f = keep_class(res)
      f.details = { profile = step.profile, step = "post_install", reason = "exec_failed", cause = cause_of(res),
        written = written }
      fail(("post-install of profile %s failed: %s"):format(step.profile, tostring(res)), nil, f)
    end
    if res.exit_code ~= 0 then
      fail(("post-install of profile %s exited %d"):format(step.profile, res.exit_code), nil, {
        details = { profile = step.profile, step = "post_install", reason = "post_install_failed",
          exit_code = res.exit_code, stderr = util.trim(res.stderr or ""):sub(-300), written = written } })
    end
    log.info("post-install passed", { profile = step.profile })
  end

  --- Installs several profiles in as few execs as their size allows (one for small profiles),
  -- then runs their post-install commands in order.
  ---@param instance_id string
  ---@param profiles table[]
  ---@return {profiles: string[], written: string[], execs: integer}
  ---@raise VALIDATION_ERROR (bad profile) | CREDENTIALS_ERROR (details.path, details.step) | INTERRUPTED
  function installer.install_all(instance_id, profiles)
    if type(instance_id) ~= "string" or instance_id == "" then bad("instance_id", "expected a string") end
    local plan = installer.plan(profiles)
    local written, execs = {}, 0
    for _, step in ipairs(plan.steps) do
      if step.kind == "exec" then
        log.debug("install batch", { instance = instance_id, operations = #step.ops, payload_bytes = step.bytes })
        run_exec(instance_id, step, written)
      elseif step.kind == "large_file" then
        run_large(instance_id, step, written)
      else
        run_post(instance_id, step, written)
      end
      execs = execs + 1
    end
    local names = {}
    for i, p in ipairs(plan.profiles) do names[i] = p.name end
    log.info("credentials installed", { instance = instance_id, profiles = names, paths = #written, execs = execs })
    return { profiles = names, written = written, execs = execs }
  end

  --- Installs one profile (see install_all).
  ---@param instance_id string
  ---@param profile table
  ---@return {profiles: string[], written: string[], execs: integer}
  ---@raise VALIDATION_ERROR | CREDENTIALS_ERROR | INTERRUPTED
  function installer.install(instance_id, profile)
    return installer.install_all(instance_id, { profile })
  end

  return installer
end

return M
