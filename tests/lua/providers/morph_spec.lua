-- galley.providers.morph against `galley emulate` (support.emulator): status mapping, request
-- counts from the emulator's request log, exec forms, TTL and metadata pass-through, run
-- tagging through the galley binary, boot/fork failure cleanup, and the API key staying out of
-- logs and errors. Two emulators: one answers boots `ready` at once, one keeps instances
-- `pending` for a while so readiness polling runs.
local support = require("support")
local emulator = require("support.emulator")
local codec = require("galley.core.codec")
local cjson = require("cjson")
local logmod = require("galley.log")
local morphp = require("galley.providers.morph")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local run = require("galley.run")

local FAST = { max_attempts = 2, base_delay_ms = 5, max_delay_ms = 20, max_elapsed_ms = 10000 }
local SNAP = emulator.SNAPSHOT

local function raises(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_table(err, tostring(err))
  assert.are.equal(code, err.code, tostring(err))
  return err
end

--- Requests in the emulator's log with this method and a path matching the anchored pattern.
local function count(em, method, pattern)
  local n = 0
  for _, r in ipairs(em:log()) do
    if (method == "*" or r.method == method) and r.path:match("^" .. pattern .. "$") then n = n + 1 end
  end
  return n
end

--- Every string in a value (keys included).
local function strings_of(v, out, seen)
  out, seen = out or {}, seen or {}
  if type(v) == "string" then
    out[#out + 1] = v
  elseif type(v) == "table" and not seen[v] then
    seen[v] = true
    for k, x in pairs(v) do
      strings_of(k, out, seen)
      strings_of(x, out, seen)
    end
  end
  return out
end

local function mentions(v, needle)
  for _, s in ipairs(strings_of(v)) do
    if s:find(needle, 1, true) then return true end
  end
  return false
end

local function provider_on(em, opts)
  local o = { api_key = em.api_key, base_url = em.base_url, retry = FAST,
    boot_timeout_ms = 30000, log = logmod.silent() }
  for k, v in pairs(opts or {}) do o[k] = v end
  return morphp.new(o)
end

--- The emulator's own view of an instance (raw JSON), or nil when it is gone.
local function raw_instance(em, id)
  local r = assert(em:request("GET", "/instance/" .. id))
  if r.status == 404 then return nil end
  assert.are.equal(200, r.status, r.body)
  return r.json
end

local function argv(command, ...)
  return { kind = "argv", command = command, args = { ... } }
end

describe("galley.providers.morph #morph", function()
  local em, em0, p, p0
  local tag = codec.random_hex(6)

  setup(function()
    em0 = emulator.start({ boot_delay_ms = 0 })
    em = emulator.start({ boot_delay_ms = 200 })
    p0 = provider_on(em0)
    p = provider_on(em)
  end)

  teardown(function()
    for _, x in ipairs({ { p0, em0 }, { p, em } }) do
      local prov, e = x[1], x[2]
      if prov then
        for _, i in ipairs(prov.instances.list({ spec = tag })) do pcall(prov.instances.terminate, i.id) end
        prov.close()
      end
      if e then e:stop() end
    end
  end)

  before_each(function()
    for _, e in ipairs({ em0, em }) do
      e:clear_faults()
      e:clear_log()
    end
  end)

  local function boot(prov, opts)
    opts = opts or {}
    opts.metadata = opts.metadata or {}
    opts.metadata.spec = tag
    return prov.instances.boot(SNAP, opts)
  end

  describe("status mapping", function()
    it("maps every Morph instance status, and unknown ones to error", function()
      local want = { pending = "booting", ready = "ready", paused = "stopped", saving = "stopping", error = "error" }
      for raw, mapped in pairs(want) do assert.are.equal(mapped, morphp.map_status(raw)) end
      assert.are.equal("error", morphp.map_status("exploded"))
      assert.are.equal("error", morphp.map_status(nil))
    end)

    it("normalises a real instance body, hiding the request token", function()
      local inst = boot(p0, { ttl_seconds = 90, metadata = { role = "x" } })
      local raw = raw_instance(em0, inst.id)
      assert.is_string(raw.metadata.galley_request_token)
      local n = morphp.instance(raw)
      assert.are.same({ "ready", "x", tag, 90, "stop", SNAP }, { n.status, n.metadata.role, n.metadata.spec,
        n.ttl.seconds, n.ttl.action, n.snapshot_id })
      assert.is_nil(n.metadata.galley_request_token)
      assert.are.equal(math.type(n.created_at), "integer")
      assert.are.equal(raw.ttl.ttl_expire_at, n.ttl.expires_at)
      assert.are.equal(raw, n.raw)
      p0.instances.terminate(inst.id)
    end)
  end)

  describe("boot", function()
    it("takes one request when the service answers ready", function()
      local inst = boot(p0)
      assert.are.equal("ready", inst.status)
      assert.are.equal(1, #em0:log())
      assert.are.equal(1, count(em0, "POST", "/snapshot/" .. SNAP .. "/boot"))
      p0.instances.terminate(inst.id)
    end)

    it("polls until ready when the service answers pending", function()
      local inst = boot(p)
      assert.are.equal("ready", inst.status)
      assert.are.equal("ready", raw_instance(em, inst.id).status)
      assert.are.equal(1, count(em, "POST", "/snapshot/" .. SNAP .. "/boot"))
      assert.is_true(count(em, "GET", "/instance/" .. inst.id) >= 1)
      p.instances.terminate(inst.id)
    end)

    it("passes TTL and metadata through to the service", function()
      local inst = boot(p0, { ttl_seconds = 120, ttl_action = "pause", metadata = { team = "core", n = 7 } })
      local raw = raw_instance(em0, inst.id)
      assert.are.same({ 120, "pause" }, { raw.ttl.ttl_seconds, raw.ttl.ttl_action })
      assert.are.same({ "core", "7", tag }, { raw.metadata.team, raw.metadata.n, raw.metadata.spec })
      assert.are.same({ 120, "pause" }, { inst.ttl.seconds, inst.ttl.action })
      -- "terminate" is Morph's "stop" (delete at expiry); no TTL means none is sent
      local t = boot(p0, { ttl_seconds = 60, ttl_action = "terminate" })
      assert.are.equal("stop", raw_instance(em0, t.id).ttl.ttl_action)
      local none = boot(p0)
      assert.are.equal(cjson.null, raw_instance(em0, none.id).ttl.ttl_seconds)
      assert.are.same({}, none.ttl)
      for _, x in ipairs({ inst, t, none }) do p0.instances.terminate(x.id) end
    end)

    it("lists by metadata on the service side", function()
      local a = boot(p0, { metadata = { pick = "a" } })
      local b = boot(p0, { metadata = { pick = "b" } })
      em0:clear_log()
      local got = p0.instances.list({ metadata = { spec = tag, pick = "b" } })
      assert.are.same({ b.id }, { got[1] and got[1].id })
      assert.are.equal(1, #got)
      assert.are.equal(1, count(em0, "GET", "/instance"))
      for _, x in ipairs({ a, b }) do p0.instances.terminate(x.id) end
    end)

    it("rejects bad options with VALIDATION_ERROR before any request", function()
      local err = raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { ttl_seconds = 0 })
      assert.are.equal("ttl_seconds", err.field)
      err = raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { ttl_action = "explode" })
      assert.are.equal("ttl_action", err.field)
      err = raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { metadata = { k = {} } })
      assert.are.equal("metadata.k", err.field)
      raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { vcpus = 1.5 })
      raises("VALIDATION_ERROR", p0.instances.boot, nil)
      raises("VALIDATION_ERROR", p0.instances.get, "a/b")
      raises("VALIDATION_ERROR", p0.instances.terminate, 42)
      assert.are.same({}, em0:log())
    end)

    it("names the snapshot in NOT_FOUND", function()
      local err = raises("NOT_FOUND", p0.instances.boot, "snapshot_nosuch00")
      assert.are.same({ "instances.boot", "snapshot:snapshot_nosuch00", "ProviderError", "snapshots.boot" },
        { err.operation, err.resource, err.kind, err.endpoint })
    end)
  end)

  describe("boot failures", function()
    local function assert_deleted(e, err)
      assert.is_string(err.instance_id)
      assert.are.equal("instance:" .. err.instance_id, err.resource)
      assert.truthy(err.message:find(err.instance_id, 1, true))
      assert.is_true(err.terminated)
      assert.are.equal(1, count(e, "DELETE", "/instance/" .. err.instance_id))
      e:clear_faults()
      assert.is_nil(raw_instance(e, err.instance_id))
    end

    it("deletes an instance that is not ready in time and raises TIMEOUT naming it", function()
      local slow = emulator.start({ boot_delay_ms = 600000 })
      local ok, err = pcall(function()
        local sp = provider_on(slow, { boot_timeout_ms = 300 })
        local e = raises("TIMEOUT", boot, sp)
        assert.are.equal("instances.boot", e.operation)
        assert.is_true(count(slow, "GET", "/instance/" .. e.instance_id) >= 1)
        assert_deleted(slow, e)
        sp.close()
      end)
      slow:stop()
      assert(ok, err)
    end)

    it("deletes an instance whose status cannot be read until the limit and raises SERVER_ERROR naming it", function()
      em:fault({ method = "GET", path = "/instance/*", action = "status", status = 500, count = 1000 })
      local err = raises("SERVER_ERROR", boot, p, { timeout_ms = 1200 })
      assert_deleted(em, err)
    end)

    it("deletes every clone when a fork does not become ready", function()
      local parent = boot(p)
      em:clear_log()
      em:fault({ method = "GET", path = "/instance/*", action = "status", status = 500, count = 1000 })
      local err = raises("SERVER_ERROR", p.instances.fork, parent.id, 2, { metadata = { spec = tag }, timeout_ms = 1200 })
      assert.is_true(err.terminated)
      assert.are.equal("instances.fork", err.operation)
      assert.are.equal(2, count(em, "DELETE", "/instance/[^/]+"))
      em:clear_faults()
      local left = p.instances.list({ spec = tag })
      assert.are.same({ parent.id }, { left[1] and left[1].id, left[2] and left[2].id })
      p.instances.terminate(parent.id)
    end)
  end)

  describe("fork", function()
    it("inherits the parent's metadata, applies TTLs and waits for every clone", function()
      local parent = boot(p, { metadata = { owner = "me" } })
      local forks = p.instances.fork(parent.id, 2, { ttl_seconds = 300 })
      assert.are.equal(2, #forks)
      for _, f in ipairs(forks) do
        assert.are.same({ "ready", "me", tag, parent.id },
          { f.status, f.metadata.owner, f.metadata.spec, f.forked_from })
        assert.is_nil(f.metadata.galley_request_token)
        local raw = raw_instance(em, f.id)
        assert.are.same({ 300, "ready" }, { raw.ttl.ttl_seconds, raw.status })
        local parent_token = raw_instance(em, parent.id).metadata.galley_request_token
        assert.are_not.equal(parent_token, raw.metadata.galley_request_token)
        p.instances.terminate(f.id)
      end
      assert.is_string(forks[1].fork_snapshot_id)
      assert.are.equal(1, count(em, "POST", "/instance/" .. parent.id .. "/branch"))
      assert.are.equal(2, count(em, "POST", "/instance/[^/]+/ttl"))
      p.snapshots.delete(forks[1].fork_snapshot_id)
      p.instances.terminate(parent.id)
      raises("VALIDATION_ERROR", p.instances.fork, parent.id, 0)
    end)
  end)

  describe("exec", function()
    local inst

    setup(function() inst = boot(p0) end)
    teardown(function() if inst then pcall(p0.instances.terminate, inst.id) end end)

    it("runs an argv in one request, a one-element argv included", function()
      local dir = "/tmp/galley morph spec " .. tag
      p0.files.write_file_atomic(inst.id, dir .. "/my prog", "#!/bin/sh\necho \"ran $# $1\"\n",
        { mode = "755", create_dirs = true })
      em0:clear_log()
      local r = p0.exec(inst.id, argv(dir .. "/my prog"))
      assert.are.same({ 0, "ran 0 \n" }, { r.exit_code, r.stdout })
      r = p0.exec(inst.id, argv(dir .. "/my prog", "a b"))
      assert.are.same({ 0, "ran 1 a b\n" }, { r.exit_code, r.stdout })
      assert.are.equal(127, p0.exec(inst.id, argv("galley-no-such-program")).exit_code)
      assert.are.equal(3, #em0:log())
      assert.are.equal(3, count(em0, "POST", "/instance/" .. inst.id .. "/exec"))
      p0.files.delete_directory(inst.id, dir)
    end)

    it("runs the shell form as /bin/bash <temp file> in one request and removes the file", function()
      em0:clear_log()
      local r = p0.exec(inst.id, { kind = "shell", script = 'printf "%s|%s|%s" "$0" "$BASH_VERSION" "$X"; exit 5',
        env = { X = "it's" } })
      assert.are.equal(5, r.exit_code)
      local path, version, x = r.stdout:match("^([^|]*)|([^|]*)|(.*)$")
      assert.matches("^/tmp/%.galley%-script%-%x+%.sh$", path)
      assert.is_true(#version > 0)
      assert.are.equal("it's", x)
      assert.are.equal(1, #em0:log())
      assert.is_false(p0.files.file_exists(inst.id, path))
    end)

    it("runs an argv with cwd and env through a script, in one request", function()
      em0:clear_log()
      local r = p0.exec(inst.id, { kind = "argv", command = "/bin/sh", args = { "-c", 'printf "%s %s" "$PWD" "$V"' },
        cwd = "/tmp", env = { V = "$HOME `x`" } })
      assert.are.same({ 0, "/tmp $HOME `x`" }, { r.exit_code, r.stdout })
      assert.are.equal(1, #em0:log())
      r = p0.exec(inst.id, { kind = "argv", command = "true", cwd = "/no/such/dir" })
      assert.are.equal(127, r.exit_code)
    end)

    it("carries long scripts: inline when the exec line fits, uploaded first when not (exec_form string)", function()
      local as_string = provider_on(em0, { exec_form = "string" })
      local small = ("# " .. ("x"):rep(1000) .. "\n"):rep(100) .. "echo tail\n"
      em0:clear_log()
      local r = as_string.exec(inst.id, { kind = "shell", script = small })
      assert.are.same({ 0, "tail\n" }, { r.exit_code, r.stdout })
      assert.are.equal(1, #em0:log())
      -- 300 KB does not fit one line: uploaded first (several requests), then run and removed.
      local body = ("# " .. ("x"):rep(1000) .. "\n"):rep(300) .. 'printf %s "$0"\n'
      em0:clear_log()
      r = as_string.exec(inst.id, { kind = "shell", script = body })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.is_true(#em0:log() > 2)
      assert.is_false(as_string.files.file_exists(inst.id, r.stdout))
      -- An argv too long for one line runs from an uploaded script too.
      local long = ("z"):rep(100 * 1024)
      r = as_string.exec(inst.id, argv("/bin/sh", "-c", 'printf %s "$1" | wc -c', "sh", long, long))
      assert.are.same({ 0, tostring(100 * 1024) }, { r.exit_code, (r.stdout:gsub("%s", "")) })
      as_string.close()
      -- exec_form "argv": inline in several argv pieces up to 1 MiB, one request.
      local as_argv = provider_on(em0, { exec_form = "argv" })
      em0:clear_log()
      r = as_argv.exec(inst.id, { kind = "shell", script = body })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal(1, #em0:log())
      local huge = ("# " .. ("y"):rep(1000) .. "\n"):rep(1200) .. 'printf %s "$0"\n'
      r = as_argv.exec(inst.id, { kind = "shell", script = huge })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.is_false(as_argv.files.file_exists(inst.id, r.stdout))
      as_argv.close()
    end)

    it("streams output to callbacks over SSE when asked", function()
      local seen = {}
      em0:clear_log()
      local r = p0.exec(inst.id, argv("/bin/sh", "-c", "echo one; echo two >&2"), {
        on_stdout = function(s) seen[#seen + 1] = "out:" .. s end,
        on_stderr = function(s) seen[#seen + 1] = "err:" .. s end,
      })
      assert.are.same({ 0, "one\n", "two\n" }, { r.exit_code, r.stdout, r.stderr })
      table.sort(seen)
      assert.are.same({ "err:two\n", "out:one\n" }, seen)
      assert.are.equal(1, count(em0, "POST", "/instance/" .. inst.id .. "/exec/sse"))
    end)

    it("rejects bad specs before any request, and says CONFLICT on a paused instance", function()
      em0:clear_log()
      local err = raises("VALIDATION_ERROR", p0.exec, inst.id, { kind = "argv", command = "ls", args = { "a", 2 } })
      assert.are.equal("command.args[2]", err.field)
      raises("VALIDATION_ERROR", p0.exec, inst.id, { kind = "shell" })
      raises("VALIDATION_ERROR", p0.exec, "", argv("true"))
      assert.are.same({}, em0:log())
      local other = boot(p0)
      p0.instances.pause(other.id)
      err = raises("CONFLICT", p0.exec, other.id, argv("true"))
      assert.are.same({ "exec", "instance:" .. other.id, 409 }, { err.operation, err.resource, err.status })
      p0.instances.terminate(other.id)
    end)
  end)

  describe("files", function()
    -- A write of <= 1 MiB with mode and create_dirs on a fresh instance is ONE request.
    local function one_request_write(prov, size, requests)
      local inst = boot(prov)
      local data = codec.random_bytes(size or 1024 * 1024)
      local dir = "/tmp/galley-morph-spec-" .. codec.random_hex(6)
      local path = dir .. "/a/b/one.bin"
      em0:clear_log()
      prov.files.write_file_atomic(inst.id, path, data, { mode = "640", create_dirs = true })
      local log = em0:log()
      local r = prov.exec(inst.id, argv("/bin/sh", "-c", 'stat -c %a "$1" && sha256sum < "$1"', "sh", path))
      prov.files.delete_directory(inst.id, dir)
      prov.instances.terminate(inst.id)
      assert.are.equal("640\n" .. codec.sha256(data) .. "  -\n", r.stdout)
      if type(requests) == "table" then -- {least, most}
        assert.is_true(#log >= requests[1] and #log <= requests[2], "requests: " .. cjson.encode(log))
      else
        assert.are.equal(requests or 1, #log, "requests: " .. cjson.encode(log))
      end
      assert.are.equal("/instance/" .. inst.id .. "/exec", log[1].path)
    end

    it("writes a file of up to 1 MiB with mode and create_dirs in one request with exec_form argv (tools named)",
      function()
        local named = provider_on(em0, { decoder = "coreutils", exec_form = "argv" })
        one_request_write(named)
        named.close()
      end)

    it("writes a file of up to 1 MiB with mode and create_dirs in exactly one request with exec_form argv", function()
      local as_argv = provider_on(em0, { exec_form = "argv" })
      one_request_write(as_argv)
      as_argv.close()
    end)

    it("sends one-element exec lines under max_command_bytes: 64 KiB in one request, 1 MiB in chunks", function()
      -- A client in front of the real one, recording every exec command it is given.
      local real = require("galley.morph_client").new({ api_key = em0.api_key, base_url = em0.base_url, retry = FAST })
      local commands = {}
      local client = setmetatable({}, { __index = function(_, name)
        return function(_, ...)
          if name == "instances_exec" then commands[#commands + 1] = select(2, ...) end
          return real[name](real, ...)
        end
      end })
      local prov = morphp.new({ client = client, log = logmod.silent(), exec_form = "string" })
      assert.are.equal(morphp.MAX_COMMAND_BYTES, prov.capabilities.max_command_bytes)
      one_request_write(prov, 64 * 1024, 1)
      -- 1 MiB is 1.33 MiB of base64: at least 12 lines of 120 KiB; the scripts take some of each
      -- line, so one more at most
      one_request_write(prov, 1024 * 1024, { 12, 13 })
      assert.is_true(#commands >= 13)
      for _, c in ipairs(commands) do
        assert.are.equal(1, #c)
        assert.is_true(#c[1] <= morphp.MAX_COMMAND_BYTES, #c[1])
      end
      for _, c in ipairs({ "string", "argv" }) do
        assert.are.equal(c, provider_on(em0, { exec_form = c }).exec_form())
      end
      assert.is_nil(provider_on(em0).exec_form()) -- "auto", not probed yet (morph_exec_form_spec)
      assert.are.equal("exec_form", raises("VALIDATION_ERROR", provider_on, em0, { exec_form = "ssh" }).field)
      raises("VALIDATION_ERROR", provider_on, em0, { max_command_bytes = 128 * 1024 })
      real:close()
    end)

    it("expands ~ to the instance's $HOME (asked once) or to a fixed home_dir", function()
      local asking = provider_on(em0, { home_dir = false })
      local inst = boot(asking)
      local home = asking.exec(inst.id, argv("/bin/sh", "-c", 'printf %s "$HOME"')).stdout
      asking.files.write_file_atomic(inst.id, "~/h.txt", "h")
      em0:clear_log()
      asking.files.write_file_atomic(inst.id, "~/h2.txt", "h2")
      assert.are.equal(1, #em0:log()) -- the home is known now: no second probe
      assert.are.equal("h", asking.files.read_file(inst.id, home .. "/h.txt"))
      local fixed = provider_on(em0, { home_dir = home })
      assert.are.equal(home, fixed.capabilities.home_dir)
      assert.is_nil(asking.capabilities.home_dir)
      assert.are.equal("h2", fixed.files.read_file(inst.id, "~/h2.txt"))
      fixed.close()
      assert.are.equal("/root", morphp.DEFAULT_HOME)
      raises("VALIDATION_ERROR", provider_on, em0, { home_dir = "relative" })
      asking.instances.terminate(inst.id)
      asking.close()
    end)
  end)

  describe("runs", function()
    local state

    setup(function()
      state = assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-morph-run-XXXXXX" } })).stdout:gsub("%s+$", "")
    end)
    teardown(function() if state then proc.run({ argv = { "rm", "-rf", "--", state } }) end end)

    local function run_recipe(source, ...)
      local path = support.script(source)
      local cmd = { support.bin, "run", path, ... }
      local r = assert(proc.run({ argv = cmd, timeout_ms = 120000, env_mode = "extend",
        env = { MORPH_API_KEY = em0.api_key, MORPH_BASE_URL = em0.base_url, GALLEY_STATE_DIR = state } }))
      os.remove(path)
      return r
    end

    local RECIPE = [[
local p = require("galley.providers.morph").new({})
local inst = p.instances.boot(arg[1], { metadata = { spec = arg[2] } })
io.write(require("cjson").encode({ id = inst.id, metadata = inst.metadata, ttl = inst.ttl }), "\n")
io.stdout:flush()
if arg[3] == "fail" then error("recipe failed on purpose") end
]]

    it("ends a run at once when its boot was refused before reaching the service (no pending wait)", function()
      -- Nothing listens on port 1: the create provably never reached a server, so the run has no
      -- instance to look for (it used to wait its whole 15 s pending window).
      local path = support.script(RECIPE)
      local t0 = runtime.now_ms()
      local r = assert(proc.run({ argv = { support.bin, "run", path, SNAP, tag }, timeout_ms = 120000,
        env_mode = "extend", env = { MORPH_API_KEY = em0.api_key, MORPH_BASE_URL = "http://127.0.0.1:1/api",
          GALLEY_STATE_DIR = state } }))
      os.remove(path)
      assert.are.equal(1, r.exit_code, r.stderr)
      assert.truthy(r.stderr:find("NETWORK_ERROR", 1, true), r.stderr)
      assert.is_true(runtime.now_ms() - t0 < 12000, "the run waited for a create that never happened")
    end)

    it("tags the instances a recipe boots and stops them when the run ends", function()
      local r = run_recipe(RECIPE, SNAP, tag)
      assert.are.equal(0, r.exit_code, r.stderr)
      local got = cjson.decode(r.stdout:match("^[^\n]+"))
      assert.matches("^run%-%x+$", got.metadata[run.TAG_RUN])
      assert.is_string(got.metadata[run.TAG_RECIPE])
      assert.are.equal(run.hostname(), got.metadata[run.TAG_HOST])
      assert.are.equal(tag, got.metadata.spec)
      assert.are.same({ run.DEFAULT_TTL_SECONDS, "stop" }, { got.ttl.seconds, got.ttl.action })
      assert.truthy(r.stderr:find("stopped instance " .. got.id, 1, true), r.stderr)
      assert.is_nil(raw_instance(em0, got.id))
      assert.are.equal(1, count(em0, "DELETE", "/instance/" .. got.id))
      assert.is_false(mentions({ r.stdout, r.stderr }, em0.api_key))
    end)

    it("stops them when the recipe fails too", function()
      local r = run_recipe(RECIPE, SNAP, tag, "fail")
      assert.are.equal(1, r.exit_code, r.stderr)
      local got = cjson.decode(r.stdout:match("^[^\n]+"))
      assert.is_nil(raw_instance(em0, got.id))
    end)

    it("leaves instances untagged and without a TTL outside a run", function()
      local inst = boot(p0)
      assert.is_nil(inst.metadata[run.TAG_RUN])
      assert.are.same({}, inst.ttl)
      p0.instances.terminate(inst.id)
    end)
  end)

  describe("input checks #hardening", function()
    it("refuses ids that are not safe before any request (no DELETE /api/ for '..')", function()
      for _, id in ipairs({ "..", ".", "", "a/b", "morphvm_x?y", ".hidden", "id\xff", ("i"):rep(129) }) do
        local err = raises("VALIDATION_ERROR", p0.instances.terminate, id)
        assert.are.equal("instance_id", err.field)
        err = raises("VALIDATION_ERROR", p0.snapshots.get, id)
        assert.are.equal("snapshot_id", err.field)
      end
      raises("VALIDATION_ERROR", p0.exec, "..", argv("true"))
      raises("VALIDATION_ERROR", p0.files.read_file, "..", "/etc/hostname")
      assert.are.equal(0, #em0:log())
    end)

    it("refuses metadata with NUL, invalid UTF-8 or too long for a list URL, naming the key", function()
      local cases = {
        { "metadata.k", { k = "a\0b" } },
        { "metadata.k", { ["k"] = "caf\xe9" } },
        { "metadata", { [""] = "v" } },
        { "metadata", { big = ("v"):rep(5000) } },
      }
      for _, case in ipairs(cases) do
        local err = raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { metadata = case[2] })
        assert.are.equal(case[1], err.field, tostring(err))
      end
      local err = raises("VALIDATION_ERROR", p0.instances.boot, SNAP, { metadata = { ["k\0"] = "v" } })
      assert.is_nil(err.field:find("\0", 1, true))
      err = raises("VALIDATION_ERROR", p0.instances.list, { metadata = { spec = "x\0y" } })
      assert.are.equal("filter.spec", err.field)
      raises("VALIDATION_ERROR", p0.instances.list, { spec = ("%"):rep(2000) }) -- 6000 bytes encoded
      assert.are.equal(0, #em0:log())
      -- Within the bound: accepted.
      assert.are.same({}, p0.instances.list({ spec = ("x"):rep(3000) }))
    end)

    it("refuses invalid UTF-8 and oversized arguments in exec before any request", function()
      local inst = boot(p0)
      em0:clear_log()
      local err = raises("VALIDATION_ERROR", p0.exec, inst.id, argv("echo", "ok", "\xff\xfe"))
      assert.are.equal("command.args[2]", err.field)
      err = raises("VALIDATION_ERROR", p0.exec, inst.id, argv("echo", ("a"):rep(128 * 1024)))
      assert.are.equal("command.args[1]", err.field)
      err = raises("VALIDATION_ERROR", p0.exec, inst.id,
        { kind = "shell", script = "true", env = { BIG = ("e"):rep(128 * 1024) } })
      assert.are.equal("command.env.BIG", err.field)
      err = raises("VALIDATION_ERROR", p0.files.write_file, inst.id, "~/caf\xe9", "x")
      assert.are.equal("path", err.field)
      assert.are.equal(0, #em0:log())
      p0.instances.terminate(inst.id)
    end)
  end)

  describe("secrets", function()
    it("keeps the API key out of logs, errors and the client's string form", function()
      local logger, records = logmod.capture({ level = "trace" })
      local lp = provider_on(em0, { log = logger })
      local inst = boot(lp)
      lp.exec(inst.id, { kind = "shell", script = "echo hi" })
      local errs = {}
      errs[#errs + 1] = select(2, pcall(lp.instances.get, "morphvm_nosuch00"))
      errs[#errs + 1] = select(2, pcall(lp.exec, inst.id, { kind = "nope" }))
      em0:fault({ method = "GET", path = "/instance/*", action = "status", status = 500, count = 10 })
      errs[#errs + 1] = select(2, pcall(lp.instances.get, inst.id))
      em0:clear_faults()
      lp.instances.terminate(inst.id)
      local wrong = "morph_wrong_" .. codec.random_hex(8)
      local bad = provider_on(em0, { api_key = wrong, log = logger })
      local auth = raises("AUTHENTICATION_ERROR", bad.instances.list)
      assert.are.same({ "instances.list", "ProviderError" }, { auth.operation, auth.kind })
      errs[#errs + 1] = auth
      bad.close()
      lp.close()
      assert.is_true(#records > 0)
      local lines = {}
      for _, rec in ipairs(records) do lines[#lines + 1] = rec.line end
      for _, key in ipairs({ em0.api_key, wrong }) do
        assert.is_false(mentions(lines, key))
        assert.is_false(mentions(errs, key))
        for _, e in ipairs(errs) do assert.is_nil(tostring(e):find(key, 1, true)) end
        assert.is_nil(tostring(lp.client):find(key, 1, true))
      end
    end)

    it("redacts a key the server echoes into err.details and err.fields #hardening", function()
      local httpd = require("galley.core.httpd")
      local key = "morph_echo_" .. codec.random_hex(12)
      local server = assert(httpd.serve({ port = 0, handler = function(req)
        local auth = ""
        for k, v in pairs(req.headers or {}) do
          if tostring(k):lower() == "authorization" then auth = v end
        end
        return { status = 422, headers = { ["Content-Type"] = "application/json" }, body = cjson.encode({
          detail = { { loc = { "header", "Authorization", auth }, msg = "bad key " .. auth, type = "value_error" } } }) }
      end }))
      local hp = provider_on({ api_key = key, base_url = ("http://127.0.0.1:%d/api"):format(server:port()) })
      local err = raises("VALIDATION_ERROR", hp.instances.get, "morphvm_echo0001")
      hp.close()
      server:stop()
      assert.is_table(err.fields, tostring(err))
      assert.is_table(err.details, tostring(err))
      assert.is_false(mentions(err, key))
      assert.is_false(mentions(err, key:sub(7)), "no part of the key survives")
    end)

    it("needs a key: AUTHENTICATION_ERROR without one", function()
      local err = raises("AUTHENTICATION_ERROR", morphp.new, { api_key = "", base_url = em0.base_url })
      assert.are.equal("morph.new", err.operation)
    end)
  end)

  describe("spawn", function()
    it("starts a command at once and hands its output over as it arrives, then the exit", function()
      local inst = boot(p)
      local h = p.spawn(inst.id, { "/bin/sh", "-c", "echo one; sleep 0.3; echo two >&2; exit 3" })
      local seen = {}
      while true do
        local kind, data = h:read(20000)
        assert.is_not_nil(kind)
        seen[#seen + 1] = kind .. ":" .. tostring(data)
        if kind == "exit" then break end
      end
      assert.are.same({ "stdout:one\n", "stderr:two\n", "exit:3" }, seen)
      assert.is_nil(h:read())
      h:close()
      h:close()
      p.instances.terminate(inst.id)
    end)

    it("runs the commands of several handles at once, like the local provider", function()
      local insts = { boot(p), boot(p), boot(p) }
      local hs, spans = {}, {}
      -- Each command says when it started and ended (the instances share this machine's clock).
      for i, inst in ipairs(insts) do
        hs[i] = p.spawn(inst.id, { kind = "argv", command = "sh",
          args = { "-c", 's=$(date +%s%N); sleep 1; echo "ok $s $(date +%s%N)"' } })
      end
      for i, h in ipairs(hs) do
        local r = assert(h:wait())
        assert.are.equal(0, r.exit_code)
        local s, e = r.stdout:match("^ok (%d+) (%d+)\n$")
        assert.is_truthy(s, r.stdout)
        spans[i] = { tonumber(s), tonumber(e) }
        h:close()
      end
      -- one after the other, each would end before the next started
      assert.is_true(require("support.overlap").all(spans), "the commands ran one after the other")
      for _, inst in ipairs(insts) do p.instances.terminate(inst.id) end
    end)

    it("kills a running command, times out a wait, and refuses bad commands before any request", function()
      local inst = boot(p)
      local h = p.spawn(inst.id, { "sleep", "30" })
      assert.is_nil(h:wait(300))
      assert.is_true(h:kill("TERM"))
      local r = assert(h:wait(20000))
      assert.are_not.equal(0, r.exit_code)
      h:close()
      assert.are.equal("VALIDATION_ERROR", raises("VALIDATION_ERROR", p.spawn, inst.id, {}).code)
      assert.are.equal("VALIDATION_ERROR",
        raises("VALIDATION_ERROR", p.spawn, inst.id, { kind = "shell", script = "true" }).code)
      p.instances.terminate(inst.id)
    end)
  end)

  describe("faults #fault", function()
    it("boots through a 500 and a malformed answer during the readiness poll, deleting nothing", function()
      local slowish = emulator.start({ boot_delay_ms = 1500 })
      local ok, err = pcall(function()
        local sp = provider_on(slowish)
        slowish:fault({ method = "GET", path = "/instance/*", action = "status", status = 500, count = 4 })
        slowish:fault({ method = "GET", path = "/instance/*", action = "malformed", count = 1 })
        local inst = boot(sp)
        assert.are.equal("ready", inst.status)
        assert.are.equal(0, count(slowish, "DELETE", "/instance/[^/]+"))
        sp.instances.terminate(inst.id)
        sp.close()
      end)
      slowish:stop()
      assert(ok, err)
    end)

    it("exits 143 when SIGTERM lands in an HTTP call of a run, leaving no instance", function()
      local slow = emulator.start({ boot_delay_ms = 0, faults = {
        { method = "POST", path = "/snapshot/*/boot", action = "stall", delay_ms = 1500 } } })
      finally(function() slow:stop() end)
      local path = support.script([[
local p = require("galley.providers.morph").new({})
p.instances.boot("]] .. SNAP .. [[")
]])
      local h = assert(proc.spawn({ argv = { support.bin, "-q", "run", path }, stdin = "null", env_mode = "extend",
        env = { MORPH_API_KEY = slow.api_key, MORPH_BASE_URL = slow.base_url, GALLEY_LOG = "error" } }))
      assert.is_nil(h:wait(400))
      h:kill("TERM")
      local r = h:wait(60000)
      h:close()
      os.remove(path)
      assert.are.equal(143, r.exit_code, r.stderr)
      local left = 0
      for _, inst in ipairs(slow:state().instances or {}) do
        if inst.status ~= "deleted" then left = left + 1 end
      end
      assert.are.equal(0, left)
    end)

    it("carries on with the instance a boot made when its answer was lost, booting nothing twice", function()
      local sp = provider_on(em, { timeout_ms = 3000 })
      for _, f in ipairs({ { action = "reset_after" }, { action = "malformed" }, { action = "delay", delay_ms = 5000 } }) do
        em:clear_log()
        em:fault({ method = "POST", path = "/snapshot/*/boot", action = f.action, delay_ms = f.delay_ms })
        local inst = boot(sp, { metadata = { case = "lost-boot" } })
        assert.are.equal("ready", inst.status, f.action)
        -- a delayed answer is logged once the server sends it (after the client gave up)
        local deadline = runtime.now_ms() + 15000
        while count(em, "POST", "/snapshot/[^/]+/boot") == 0 and runtime.now_ms() < deadline do runtime.sleep_ms(50) end
        assert.are.equal(1, count(em, "POST", "/snapshot/[^/]+/boot"), f.action)
        sp.instances.terminate(inst.id)
      end
      assert.are.same({}, sp.instances.list({ case = "lost-boot" }))
      sp.close()
    end)

    it("deletes the clones of a fork whose answer was lost, leaving none behind", function()
      local sp = provider_on(em)
      local parent = boot(sp, { metadata = { case = "lost-fork" } })
      em:fault({ method = "POST", path = "/instance/*/branch", action = "reset_after" })
      local err = raises("NETWORK_ERROR", sp.instances.fork, parent.id, 2)
      assert.is_true(err.terminated)
      assert.are.equal(1, count(em, "POST", "/instance/[^/]+/branch"))
      local left = {}
      for _, inst in ipairs(sp.instances.list({ case = "lost-fork" })) do left[#left + 1] = inst.id end
      assert.are.same({ parent.id }, left)
      sp.instances.terminate(parent.id)
      sp.close()
    end)

    it("stops and terminates idempotently: a retried DELETE that meets 404 succeeded", function()
      -- booted with the shared provider: only the DELETEs meet the short time limit
      local sp = provider_on(em, { timeout_ms = 2000, retry = { max_attempts = 4, base_delay_ms = 5, max_delay_ms = 20 } })
      local inst = boot(p)
      em:fault({ method = "DELETE", path = "/instance/*", action = "delay", delay_ms = 5000 })
      assert.is_true(sp.instances.stop(inst.id))
      em:fault({ method = "DELETE", path = "/instance/*", action = "malformed" })
      local other = boot(p)
      assert.is_true(sp.instances.terminate(other.id))
      assert.is_nil(raw_instance(em, other.id))
      sp.close()
    end)
  end)
end)
