-- The Morph provider's exec_form "auto" (the default) against `galley emulate` in both argv
-- modes: ordinary execs stay one line and never probe; the first payload too long for one line
-- probes the service once per provider (tasks asking at once share that probe); in argv mode
-- "exec" payloads then go as argv arrays (a multi-chunk write in a few requests, counted from the
-- emulator's request log), in "join" mode as lines; a probe answered with a server error means
-- "string", one cut off by the connection, the instance or the key decides nothing. Round trips
-- are checked by sha256 on both sides.
local emulator = require("support.emulator")
local codec = require("galley.core.codec")
local logmod = require("galley.log")
local morphp = require("galley.providers.morph")
local task = require("galley.task")
local workspace = require("galley.workspace")
local proc = require("galley.core.proc")

local FAST = { max_attempts = 2, base_delay_ms = 5, max_delay_ms = 20, max_elapsed_ms = 10000 }

local function raises(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_table(err, tostring(err))
  assert.are.equal(code, err.code, tostring(err))
  return err
end

-- A provider over a client that records every exec command it is given (the probe is the one
-- whose 4th element is "galley-probe").
local function recording_provider(em, opts)
  local real = require("galley.morph_client").new({ api_key = em.api_key, base_url = em.base_url, retry = FAST })
  local rec = { commands = {} }
  local client = setmetatable({}, { __index = function(_, name)
    return function(_, ...)
      if name == "instances_exec" then rec.commands[#rec.commands + 1] = select(2, ...) end
      return real[name](real, ...)
    end
  end })
  local o = { client = client, log = logmod.silent(), boot_timeout_ms = 30000 }
  for k, v in pairs(opts or {}) do o[k] = v end
  rec.provider = morphp.new(o)
  function rec.probes()
    local n = 0
    for _, c in ipairs(rec.commands) do
      if c[4] == "galley-probe" then n = n + 1 end
    end
    return n
  end
  function rec.close()
    rec.provider.close()
    real:close()
  end
  return rec
end

local function remote_sha(p, id, path)
  local r = p.exec(id, { kind = "argv", command = "/bin/sh", args = { "-c", 'sha256sum < "$1"', "sh", path } })
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout:match("^(%x+)")
end

for _, mode in ipairs(emulator.ARGV_MODES) do
  local want = mode == "exec" and "argv" or "string"

  describe("Morph exec_form auto on galley emulate --argv-mode " .. mode .. " #morph", function()
    local em, rec, p, id

    setup(function()
      em = emulator.start({ boot_delay_ms = 0, argv_mode = mode })
      rec = recording_provider(em)
      p = rec.provider
      id = p.instances.boot(emulator.SNAPSHOT).id
    end)

    teardown(function()
      if p and id then pcall(p.instances.terminate, id) end
      if rec then rec.close() end
      if em then em:stop() end
    end)

    before_each(function()
      em:clear_faults()
      em:clear_log()
    end)

    it("is the default, and sends ordinary execs and a small write as one line each without probing", function()
      assert.are.equal("auto", p.capabilities.exec_form)
      assert.are.equal(morphp.MAX_COMMAND_BYTES, p.capabilities.max_command_bytes)
      assert.is_nil(p.exec_form())
      local r = p.exec(id, { kind = "argv", command = "printf", args = { "%s,", "a b" } })
      assert.are.same({ 0, "a b," }, { r.exit_code, r.stdout })
      local data = codec.random_bytes(48 * 1024)
      p.files.write_file_atomic(id, "/tmp/small.bin", data)
      assert.are.equal(data, p.files.read_file(id, "/tmp/small.bin"))
      assert.are.equal(0, rec.probes())
      for _, c in ipairs(rec.commands) do assert.are.equal(1, #c) end
      assert.is_nil(p.exec_form())
    end)

    it("probes once when a write needs more than one line, then picks " .. want .. " (sha256 equal)", function()
      local data = codec.random_bytes(3 * 1024 * 1024 + 12345)
      local before = p.files.stats().execs
      em:clear_log()
      p.files.write_file_atomic(id, "/tmp/big.bin", data, { mode = "640" })
      local execs = p.files.stats().execs - before
      local requests = #em:log()
      assert.are.equal(want, p.exec_form())
      assert.are.equal(1, rec.probes())
      assert.are.equal(execs + 1, requests) -- the writes' execs and the probe
      if want == "argv" then
        -- 1.5 MiB of base64 a request: 3 MiB in 3 execs (a line carries ~88 KiB: 36 of them)
        assert.is_true(requests <= 5, requests .. " requests")
      else
        assert.is_true(requests >= 30, requests .. " requests")
        for _, c in ipairs(rec.commands) do
          if c[4] ~= "galley-probe" then
            assert.are.equal(1, #c)
            assert.is_true(#c[1] <= morphp.MAX_COMMAND_BYTES, #c[1])
          end
        end
      end
      assert.are.equal(codec.sha256(data), remote_sha(p, id, "/tmp/big.bin"))
      assert.are.equal(codec.sha256(data), codec.sha256(p.files.read_file(id, "/tmp/big.bin")))
      -- decided: the next payload sends no probe
      before = p.files.stats().execs
      em:clear_log()
      p.files.write_file_atomic(id, "/tmp/big2.bin", data)
      assert.are.equal(p.files.stats().execs - before, #em:log())
      assert.are.equal(1, rec.probes())
      assert.are.equal(codec.sha256(data), remote_sha(p, id, "/tmp/big2.bin"))
    end)

    it("runs an argv too long for one line " .. (want == "argv" and "in one request" or "from an uploaded script"),
      function()
        local a, b = ("z"):rep(100 * 1024), ("y"):rep(100 * 1024)
        em:clear_log()
        local r = p.exec(id, { kind = "argv", command = "/bin/sh", args = { "-c", 'printf %s "$1$2" | sha256sum',
          "sh", a, b } })
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal(codec.sha256(a .. b), r.stdout:match("^(%x+)"))
        if want == "argv" then assert.are.equal(1, #em:log()) else assert.is_true(#em:log() > 1) end
      end)

    it("pushes and pulls a multi-MiB tree with workspace (" .. want .. " chunks)", function()
      local src = (assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-af-spec.XXXXXX" } })).stdout:gsub("%s+$", ""))
      finally(function() proc.run({ argv = { "rm", "-rf", "--", src } }) end)
      local blobs = {}
      for i = 1, 3 do
        blobs[i] = codec.random_bytes(1024 * 1024 + i)
        local f = assert(io.open(("%s/blob%d.bin"):format(src, i), "wb"))
        f:write(blobs[i])
        f:close()
      end
      em:clear_log()
      local r = workspace.push(p, id, src, "~/tree", { all = true, compress = false })
      assert.are.equal(3, r.sent)
      if want == "argv" then
        assert.is_true(r.execs <= 5, r.execs .. " requests")
      else
        assert.is_true(r.execs >= 30, r.execs .. " requests")
      end
      assert.are.equal(r.execs, #em:log()) -- the probe ran before (the write above)
      for i = 1, 3 do
        assert.are.equal(codec.sha256(blobs[i]), remote_sha(p, id, ("/root/tree/blob%d.bin"):format(i)))
      end
      local back = src .. "/back"
      workspace.pull(p, id, "~/tree", back)
      for i = 1, 3 do
        local f = assert(io.open(("%s/blob%d.bin"):format(back, i), "rb"))
        assert.are.equal(codec.sha256(blobs[i]), codec.sha256(f:read("a")))
        f:close()
      end
      assert.are.equal(1, rec.probes())
    end)

    it("shares one probe among tasks writing at once", function()
      local fresh = recording_provider(em)
      finally(fresh.close)
      local q = fresh.provider
      local datas, tasks = {}, {}
      for i = 1, 4 do
        datas[i] = codec.random_bytes(400 * 1024 + i)
        tasks[i] = task.spawn(function()
          q.files.write_file_atomic(id, ("/tmp/par%d.bin"):format(i), datas[i])
          return q.exec_form()
        end)
      end
      local records = task.join(tasks)
      for i = 1, 4 do
        assert.is_true(records[i].ok, tostring(records[i].err))
        assert.are.equal(want, records[i].value)
        assert.are.equal(codec.sha256(datas[i]), remote_sha(q, id, ("/tmp/par%d.bin"):format(i)))
      end
      assert.are.equal(1, fresh.probes())
    end)
  end)
end

describe("Morph exec_form auto: how the probe's answer is taken #morph", function()
  local em, p0, id

  setup(function()
    em = emulator.start({ boot_delay_ms = 0, argv_mode = "exec" })
    p0 = morphp.new({ api_key = em.api_key, base_url = em.base_url, retry = FAST, log = logmod.silent(),
      exec_form = "argv" })
    id = p0.instances.boot(emulator.SNAPSHOT).id
  end)

  teardown(function()
    if p0 and id then pcall(p0.instances.terminate, id) end
    if p0 then p0.close() end
    if em then em:stop() end
  end)

  before_each(function()
    em:clear_faults()
    em:clear_log()
  end)

  it("takes a server error as \"string\" and remembers it (payloads then go as lines)", function()
    local rec = recording_provider(em)
    finally(rec.close)
    em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 500, count = 1 })
    assert.are.equal("string", rec.provider.exec_form(id))
    assert.are.equal("string", rec.provider.exec_form())
    local data = codec.random_bytes(300 * 1024)
    rec.provider.files.write_file_atomic(id, "/tmp/after500.bin", data)
    assert.are.equal(codec.sha256(data), remote_sha(p0, id, "/tmp/after500.bin"))
    assert.are.equal(1, rec.probes())
    for _, c in ipairs(rec.commands) do
      if c[4] ~= "galley-probe" then assert.are.equal(1, #c) end
    end
  end)

  it("takes a 413 as \"string\" too", function()
    local q = morphp.new({ api_key = em.api_key, base_url = em.base_url, retry = FAST, log = logmod.silent() })
    finally(q.close)
    em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 413, count = 1 })
    assert.are.equal("string", q.exec_form(id))
  end)

  it("raises errors that decide nothing (connection reset, 401, unknown instance) and probes again later", function()
    local rec = recording_provider(em)
    finally(rec.close)
    local q = rec.provider
    em:fault({ method = "POST", path = "/instance/*/exec", action = "reset", count = 1 })
    local err = raises("NETWORK_ERROR", q.exec_form, id)
    assert.are.same({ "exec", "instance:" .. id }, { err.operation, err.resource })
    assert.is_nil(q.exec_form())
    em:fault({ method = "POST", path = "/instance/*/exec", action = "status", status = 401, count = 1 })
    raises("AUTHENTICATION_ERROR", q.exec_form, id)
    assert.is_nil(q.exec_form())
    raises("NOT_FOUND", q.exec_form, "morphvm_nosuchinstance")
    assert.is_nil(q.exec_form())
    -- a write that needs the answer raises the probe's error, and nothing is left half-written
    em:fault({ method = "POST", path = "/instance/*/exec", action = "reset", count = 1 })
    raises("NETWORK_ERROR", q.files.write_file_atomic, id, "/tmp/cut.bin", codec.random_bytes(300 * 1024))
    assert.is_false(p0.files.file_exists(id, "/tmp/cut.bin"))
    assert.are.equal("argv", q.exec_form(id))
    assert.are.equal(5, rec.probes())
  end)

  it("never probes with an explicit form, and validates exec_form", function()
    for _, form in ipairs({ "string", "argv" }) do
      local rec = recording_provider(em, { exec_form = form })
      assert.are.equal(form, rec.provider.exec_form())
      assert.are.equal(form, rec.provider.exec_form(id))
      assert.are.equal(form, rec.provider.capabilities.exec_form)
      local data = codec.random_bytes(400 * 1024)
      rec.provider.files.write_file_atomic(id, "/tmp/explicit-" .. form .. ".bin", data)
      assert.are.equal(codec.sha256(data), remote_sha(p0, id, "/tmp/explicit-" .. form .. ".bin"))
      assert.are.equal(0, rec.probes())
      rec.close()
    end
    local err = raises("VALIDATION_ERROR", morphp.new, { api_key = em.api_key, base_url = em.base_url,
      exec_form = "ssh" })
    assert.are.equal("exec_form", err.field)
    raises("VALIDATION_ERROR", morphp.new, { api_key = em.api_key, base_url = em.base_url, exec_form = 1 })
  end)

  it("exposes the probe for morph-recon: argv on exec mode, with evidence and no payload", function()
    local client = p0.client
    local form, ev = morphp.probe_exec_form(client, id)
    assert.are.equal("argv", form)
    assert.are.same({ exit_code = 0, stdout_ok = true }, ev)
    local _, err = morphp.probe_exec_form(client, "morphvm_nosuchinstance")
    assert.are.equal("NOT_FOUND", err.code)
  end)
end)
