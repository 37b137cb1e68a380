-- `galley emulate` as a command: flags, the ready line, loopback only, and clean shutdown.
local support = require("support")
local emulator = require("support.emulator")
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

--- Starts `galley emulate ARGS...` and reads its first two stdout lines (ready, SSH gateway).
local function launch(args, env)
  local argv = { support.bin, "emulate" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local h = assert(proc.spawn({ argv = argv, env = env or { MORPH_API_KEY = "morph_cmdspec_key" } }))
  local out = ""
  while not out:find("\n[^\n]*\n") do
    local kind, data = h:read(20000)
    if kind ~= "stdout" and kind ~= "stderr" then
      h:close()
      error("emulate did not print its ready line: " .. tostring(kind))
    end
    if kind == "stdout" then out = out .. data end
  end
  return h, out
end

--- Whether a directory exists.
local function is_dir(path)
  return proc.run({ argv = { "test", "-d", path } }).exit_code == 0
end

--- Whether a process runs (a zombie, killed but not yet reaped by init, does not count).
local function alive(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat", "r")
  if not f then return false end
  local st = f:read("a")
  f:close()
  local state = st:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z"
end

describe("the galley emulate command #emulator", function()
  it("prints exactly the ready line and the SSH gateway's, and exits 0 on SIGTERM, removing its temporary state dir", function()
    local h, line = launch({ "--port", "0" })
    local ok, err = pcall(function()
      local port = line:match("^listening on http://127%.0%.0%.1:(%d+)/api\nssh gateway on 127%.0%.0%.1:%d+\n$")
      assert.is_string(port, line)
      local r = assert(http.request({
        method = "GET", url = "http://127.0.0.1:" .. port .. "/_emulator/state",
        headers = { Authorization = "Bearer morph_cmdspec_key" },
      }))
      assert.are.equal(200, r.status)
      local dir = require("cjson").decode(r.body).options.state_dir
      assert.is_true(is_dir(dir))
      assert(h:kill("TERM"))
      local res = assert(h:wait(20000))
      assert.are.equal(0, res.exit_code)
      assert.is_false(is_dir(dir))
    end)
    h:close()
    assert(ok, err)
  end)

  it("listens on 127.0.0.1 only", function()
    local h, line = launch({})
    local ok, err = pcall(function()
      local port = math.tointeger(tonumber(line:match(":(%d+)/api")))
      local f = assert(io.open("/proc/net/tcp", "r"))
      local tcp = f:read("a")
      f:close()
      local addr = tcp:match("%s(%x+):" .. ("%04X"):format(port) .. " 00000000:0000 0A ")
      assert.are.equal("0100007F", addr)
      local f6 = io.open("/proc/net/tcp6", "r")
      if f6 then
        assert.falsy(f6:read("a"):find(":" .. ("%04X"):format(port) .. " 0+:0000 0A ", 1))
        f6:close()
      end
    end)
    h:kill("TERM")
    h:wait(20000)
    h:close()
    assert(ok, err)
  end)

  it("stops on POST /_emulator/shutdown and kills the instances' processes", function()
    local em = emulator.start({ boot_delay_ms = 0 })
    local ok, err = pcall(function()
      local id = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
      local deadline = runtime.now_ms() + 15000
      while assert(em:request("GET", "/instance/" .. id)).json.status ~= "ready" do
        assert(runtime.now_ms() < deadline, "ready")
        runtime.sleep_ms(20)
      end
      local r = assert(em:request("POST", "/instance/" .. id .. "/exec",
        { command = { "sleep 600 >/dev/null 2>&1 & echo $!" } }))
      -- the instance's pid namespace numbers it; watch the host's process
      local pid = assert(emulator.host_pid(r.json.stdout:match("%d+"), "sleep\0" .. "600\0", em.state_dir))
      assert.are.equal(200, assert(em:request("POST", "/_emulator/shutdown")).status)
      local res = assert(em.handle:wait(20000))
      assert.are.equal(0, res.exit_code)
      deadline = runtime.now_ms() + 15000
      while alive(pid) do
        assert(runtime.now_ms() < deadline, "the daemon is still running")
        runtime.sleep_ms(20)
      end
    end)
    em:stop()
    assert(ok, err)
  end)

  it("uses the given --state-dir and keeps it; seeds --snapshot ID=DIR with DIR's files", function()
    local tmp = proc.run({ argv = { "mktemp", "-d" } }).stdout:gsub("%s+$", "")
    local seed = tmp .. "/seed"
    local mk = proc.run({ argv = { "sh", "-c", 'mkdir -p "$1" && echo seeded > "$1/hello"', "sh", seed } })
    assert.are.equal(0, mk.exit_code)
    local h, line = launch({ "--state-dir", tmp .. "/state", "--snapshot", "snapshot_seeded=" .. seed,
      "--snapshot", "snapshot_empty", "--boot-delay-ms", "0" })
    local ok, err = pcall(function()
      local base = line:match("(http://%S+/api)")
      local auth = { Authorization = "Bearer morph_cmdspec_key", ["Content-Type"] = "application/json" }
      local r = assert(http.request({ method = "GET", url = base .. "/snapshot/snapshot_empty", headers = auth }))
      assert.are.equal(200, r.status)
      r = assert(http.request({
        method = "POST", url = base .. "/instance?snapshot_id=snapshot_seeded", headers = auth, body = "{}",
      }))
      local id = require("cjson").decode(r.body).id
      r = assert(http.request({
        method = "POST", url = base .. "/instance/" .. id .. "/exec", headers = auth,
        body = '{"command": ["cat hello"]}',
      }))
      assert.are.equal("seeded\n", require("cjson").decode(r.body).stdout)
    end)
    h:kill("TERM")
    h:wait(20000)
    h:close()
    -- sandboxed instances live under the local provider's part of the state dir
    local kept = is_dir(tmp .. "/state/local/instances") or is_dir(tmp .. "/state/instances")
    proc.run({ argv = { "rm", "-rf", "--", tmp } })
    assert(ok, err)
    assert.is_true(kept)
  end)

  it("falls back to the development key without MORPH_API_KEY", function()
    local h, line = launch({}, { MORPH_API_KEY = "" })
    local ok, err = pcall(function()
      local base = line:match("(http://%S+/api)")
      local r = assert(http.request({
        method = "GET", url = base .. "/image",
        headers = { Authorization = "Bearer " .. require("galley.emulator").DEV_API_KEY },
      }))
      assert.are.equal(200, r.status)
    end)
    h:kill("TERM")
    h:wait(20000)
    h:close()
    assert(ok, err)
  end)

  it("exits 2 on bad flags and bad fault specs", function()
    for _, args in ipairs({
      "--port nope", "--port 70000", "--bogus", "--fault action=reset",
      "--fault 'path=/x,action=explode'", "--latency-ms", "--snapshot 'bad id'", "--argv-mode ssh", "--argv-mode",
    }) do
      local code = support.galley("emulate " .. args)
      assert.are.equal(2, code, args)
    end
  end)

  it("has help", function()
    local code, out = support.galley("help emulate")
    assert.are.equal(0, code)
    assert.truthy(out:find("--fault", 1, true))
    assert.truthy(out:find("--argv-mode M", 1, true))
  end)
end)

describe("galley.emulator.new options #emulator", function()
  it("refuses an unknown argv_mode with EMULATOR_BAD_OPTION naming the field", function()
    local emu, err = require("galley.emulator").new({ state_dir = "/nonexistent/never-created", api_key = "k",
      argv_mode = "ssh" })
    assert.is_nil(emu)
    assert.are.same({ "EMULATOR_BAD_OPTION", "argv_mode" }, { err.code, err.field })
  end)
end)
