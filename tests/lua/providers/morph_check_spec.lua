-- galley.providers.morph_check through the Morph provider, against a loopback server
-- (galley.core.httpd) that answers each call with a body the spec chooses: every wrong shape
-- is PROTOCOL_ERROR naming the provider operation, the endpoint and the field, never a raw Lua
-- error; null output reads "", the documented SSE string exit code is accepted.
local cjson = require("cjson")
local httpd = require("galley.core.httpd")
local logmod = require("galley.log")
local morphp = require("galley.providers.morph")
local check = require("galley.providers.morph_check")

local READY = { id = "morphvm_check01", object = "instance", status = "ready", created = 1730000000,
  metadata = {}, refs = { snapshot_id = "snapshot_check01", image_id = "morphvm-minimal" } }
local SNAP = { id = "snapshot_check01", object = "snapshot", status = "ready", created = 1730000000, metadata = {},
  refs = { image_id = "morphvm-minimal" } }

local function with(base, fields)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(fields) do t[k] = v end
  return t
end

describe("galley.providers.morph_check #morph", function()
  local server, provider
  local answers = {} -- "METHOD /path" -> {status?, body = string|table, sse = bool}

  setup(function()
    server = assert(httpd.serve({ port = 0, handler = function(req)
      local path = req.path:gsub("^/api", "")
      local a = answers[req.method .. " " .. path]
      if not a then return { status = 404, headers = {}, body = '{"detail": "Not Found"}' } end
      local body = type(a.body) == "table" and cjson.encode(a.body) or a.body
      return { status = a.status or 200, headers = { ["Content-Type"] = a.sse and "text/event-stream"
        or "application/json" }, body = body }
    end }))
    provider = morphp.new({ api_key = "morph_check_key", base_url = ("http://127.0.0.1:%d/api"):format(server:port()),
      retry = { max_attempts = 1 }, log = logmod.silent(), boot_timeout_ms = 2000 })
  end)

  teardown(function()
    if provider then provider.close() end
    if server then server:stop() end
  end)

  before_each(function()
    for k in pairs(answers) do answers[k] = nil end
  end)

  local function protocol_error(fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok, "expected an error")
    assert.is_table(err, "a raw Lua error: " .. tostring(err))
    assert.are.equal("PROTOCOL_ERROR", err.code, tostring(err))
    assert.are.equal("ProviderError", err.kind)
    return err
  end

  local function boot_answer(body)
    answers["POST /snapshot/snapshot_check01/boot"] = { body = body }
    return protocol_error(provider.instances.boot, "snapshot_check01", { ttl_seconds = false })
  end

  it("refuses a boot answered {} or with a numeric id or status, naming endpoint and field", function()
    local err = boot_answer("{}")
    assert.are.same({ "instances.boot", "snapshots.boot", "id" }, { err.operation, err.endpoint, err.field })
    err = boot_answer(with(READY, { id = 12345 }))
    assert.are.equal("id", err.field)
    err = boot_answer(with(READY, { status = 1 }))
    assert.are.equal("status", err.field)
    err = boot_answer("[]")
    assert.are.equal("id", err.field)
    assert.are.equal("status", boot_answer({ id = "morphvm_x" }).field)
  end)

  it("refuses metadata, times and TTLs of the wrong type in an instance", function()
    local id = READY.id
    answers["GET /instance/" .. id] = { body = with(READY, { metadata = { a = 1 } }) }
    local err = protocol_error(provider.instances.get, id)
    assert.are.same({ "instances.get", "instances.get", "metadata.a", "instance:" .. id },
      { err.operation, err.endpoint, err.field, err.resource })
    answers["GET /instance/" .. id] = { body = with(READY, { created = "yesterday" }) }
    assert.are.equal("created", protocol_error(provider.instances.get, id).field)
    answers["GET /instance/" .. id] = { body = with(READY, { ttl = { ttl_seconds = 1.5 } }) }
    assert.are.equal("ttl.ttl_seconds", protocol_error(provider.instances.get, id).field)
    answers["GET /instance/" .. id] = { body = with(READY, { refs = "snapshot_x" }) }
    assert.are.equal("refs", protocol_error(provider.instances.get, id).field)
    -- null metadata values and absent optional fields are fine.
    answers["GET /instance/" .. id] = { body = '{"id": "' .. id .. '", "status": "ready", "metadata": {"a": null},'
      .. ' "ttl": null, "created": null}' }
    local inst = provider.instances.get(id)
    assert.are.same({ id, "ready", {} }, { inst.id, inst.status, inst.metadata })
  end)

  it("refuses list envelopes whose data is not an array, and bad items in them", function()
    answers["GET /instance"] = { body = { data = "notalist" } }
    local err = protocol_error(provider.instances.list)
    assert.are.same({ "instances.list", "instances.list", "data" }, { err.operation, err.endpoint, err.field })
    answers["GET /instance"] = { body = {} }
    assert.are.equal("data", protocol_error(provider.instances.list).field)
    answers["GET /instance"] = { body = { data = { a = 1 } } }
    assert.are.equal("data", protocol_error(provider.instances.list).field)
    answers["GET /instance"] = { body = { data = { READY, 7 } } }
    assert.are.equal("data[1]", protocol_error(provider.instances.list).field)
    answers["GET /snapshot"] = { body = { data = { with(SNAP, { status = cjson.null }) } } }
    assert.are.equal("data[0].status", protocol_error(provider.snapshots.list).field)
    answers["GET /image"] = { body = { object = "list", data = { { id = 5, name = "x" } } } }
    err = protocol_error(provider.images.list)
    assert.are.same({ "images.list", "data[0].id" }, { err.endpoint, err.field })
    answers["GET /instance"] = { body = '{"object": "list", "data": []}' }
    assert.are.same({}, provider.instances.list())
  end)

  it("checks exec answers: integer exit codes in range, string output, null output read as empty", function()
    local path = "POST /instance/" .. READY.id .. "/exec"
    local spec = { kind = "argv", command = "true" }
    answers[path] = { body = '{"exit_code": 0, "stdout": null, "stderr": null}' }
    assert.are.same({ exit_code = 0, stdout = "", stderr = "" }, provider.exec(READY.id, spec))
    answers[path] = { body = '{"exit_code": -1, "stdout": "x"}' }
    assert.are.same({ exit_code = -1, stdout = "x", stderr = "" }, provider.exec(READY.id, spec))
    -- a service that says it cut the output (galley emulate does) is believed; anything else ignored
    answers[path] = { body = '{"exit_code": 0, "stdout": "x", "stderr": "", "truncated": true}' }
    assert.are.same({ exit_code = 0, stdout = "x", stderr = "", truncated = true }, provider.exec(READY.id, spec))
    answers[path] = { body = '{"exit_code": 0, "stdout": "x", "stderr": "", "truncated": "yes"}' }
    assert.are.same({ exit_code = 0, stdout = "x", stderr = "" }, provider.exec(READY.id, spec))
    for _, bad in ipairs({
      { '{"exit_code": "0", "stdout": "", "stderr": ""}', "exit_code" },
      { '{"exit_code": 1e300, "stdout": "", "stderr": ""}', "exit_code" },
      { '{"exit_code": 256, "stdout": "", "stderr": ""}', "exit_code" },
      { '{"exit_code": 0.5, "stdout": "", "stderr": ""}', "exit_code" },
      { '{"exit_code": 0, "stdout": 5, "stderr": ""}', "stdout" },
      { '{"exit_code": 0, "stdout": "", "stderr": {}}', "stderr" },
    }) do
      answers[path] = { body = bad[1] }
      local err = protocol_error(provider.exec, READY.id, spec)
      assert.are.same({ "exec", "instances.exec", bad[2], "instance:" .. READY.id },
        { err.operation, err.endpoint, err.field, err.resource }, bad[1])
    end
  end)

  it("checks SSE exit codes: the documented string \"0\" is read, 1e300 refused", function()
    local path = "POST /instance/" .. READY.id .. "/exec/sse"
    local spec = { kind = "argv", command = "true" }
    local seen = {}
    local eopts = { on_stdout = function(s) seen[#seen + 1] = s end }
    answers[path] = { sse = true, body = 'data: {"type": "stdout", "content": "hi\\n"}\n\n'
      .. 'data: {"type": "exit_code", "content": "0"}\n\ndata: [DONE]\n\n' }
    assert.are.same({ exit_code = 0, stdout = "hi\n", stderr = "" }, provider.exec(READY.id, spec, eopts))
    assert.are.same({ "hi\n" }, seen)
    answers[path] = { sse = true, body = 'data: {"type": "exit_code", "content": 1e300}\n\ndata: [DONE]\n\n' }
    local err = protocol_error(provider.exec, READY.id, spec, eopts)
    assert.are.same({ "exec", "instances.exec_sse", "exit_code" }, { err.operation, err.endpoint, err.field })
  end)

  it("checks snapshots and branch answers", function()
    answers["GET /snapshot/" .. SNAP.id] = { body = with(SNAP, { digest = 42 }) }
    local err = protocol_error(provider.snapshots.get, SNAP.id)
    assert.are.same({ "snapshots.get", "digest" }, { err.endpoint, err.field })
    answers["POST /instance/" .. READY.id .. "/branch"] = { body = { snapshot = SNAP, instances = "x" } }
    err = protocol_error(provider.instances.fork, READY.id, 1, { metadata = {}, ttl_seconds = false })
    assert.are.same({ "instances.fork", "instances.branch", "instances" }, { err.operation, err.endpoint, err.field })
    answers["POST /instance/" .. READY.id .. "/branch"] = { body = { snapshot = { id = 1 }, instances = {} } }
    assert.are.equal("snapshot.id",
      protocol_error(provider.instances.fork, READY.id, 1, { metadata = {}, ttl_seconds = false }).field)
  end)

  it("exposes the checks as functions of the module", function()
    local ctx = { operation = "op", endpoint = "ep" }
    assert.are.same({ exit_code = 3, stdout = "", stderr = "e" }, check.exec(ctx, { exit_code = 3.0, stderr = "e" }))
    assert.are.equal(255, check.EXIT_CODE_MAX)
    local ok, err = pcall(check.instance, ctx, "not an object")
    assert.is_false(ok)
    assert.are.same({ "PROTOCOL_ERROR", "op", "ep", "body" }, { err.code, err.operation, err.endpoint, err.field })
  end)
end)
