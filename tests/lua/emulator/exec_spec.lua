-- galley emulate: exec really runs commands in the instance's directory; exec/sse streams them.
local emulator = require("support.emulator")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")

local function eventually(check, what)
  local deadline = runtime.now_ms() + 15000
  while runtime.now_ms() < deadline do
    local v = check()
    if v then return v end
    runtime.sleep_ms(20)
  end
  error("timed out waiting for " .. what)
end

--- Parses an SSE body into its events (decoded JSON, or the string "[DONE]").
local function sse_events(body)
  local events = {}
  for line in body:gmatch("[^\n]+") do
    local data = line:match("^data: (.*)$")
    if data == "[DONE]" then
      events[#events + 1] = "[DONE]"
    elseif data then
      events[#events + 1] = cjson.decode(data)
    end
  end
  return events
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

describe("galley emulate: exec #emulator", function()
  local em, id

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 0 })
    local r = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {}))
    id = r.json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. id)).json.status == "ready"
    end, "ready")
  end)

  lazy_teardown(function()
    if em then em:stop() end
  end)

  local function exec(command, inst)
    local r = assert(em:request("POST", "/instance/" .. (inst or id) .. "/exec", { command = command }))
    assert.are.equal(200, r.status, r.body)
    return r.json
  end

  it("runs a one-element command through /bin/sh -c", function()
    local r = exec({ "echo out; echo err >&2; echo piped | tr a-z A-Z; exit 7" })
    assert.are.equal(7, r.exit_code)
    assert.are.equal("out\nPIPED\n", r.stdout)
    assert.are.equal("err\n", r.stderr)
  end)

  it("runs a multi-element argv directly, keeping spaces, quotes and $ literal", function()
    local r = exec({ "printf", "[%s]", "two words", "it's \"quoted\"", "$HOME", "*" })
    assert.are.equal(0, r.exit_code)
    assert.are.equal("[two words][it's \"quoted\"][$HOME][*]", r.stdout)
  end)

  it("runs in the instance's sandbox with HOME at /root, and keeps files between calls", function()
    local r = exec({ 'pwd; echo "$HOME"; echo data > kept.txt' })
    assert.are.equal("/root\n/root\n", r.stdout)
    assert.are.equal("data\n", exec({ "cat", "kept.txt" }).stdout)
    assert.are.equal("data\n", exec({ "cat", "/root/kept.txt" }).stdout)
  end)

  it("keeps writes to absolute paths inside the instance, never on this machine", function()
    local name = ("galley-sandbox-probe-%d-%d"):format(os.time(), math.random(1, 1e9))
    for _, dir in ipairs({ "/root", "/tmp" }) do
      local r = exec({ "sh", "-c", 'echo inside > "$1/$2" && cat "$1/$2"', "sh", dir, name })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("inside\n", r.stdout)
      assert.is_nil(io.open(dir .. "/" .. name), dir .. " on the host was written")
    end
    -- The rest of the host is read-only.
    local r = exec({ "sh", "-c", "echo x > /etc/" .. name })
    assert.are_not.equal(0, r.exit_code)
  end)

  it("does not pass the emulator's API key into instances", function()
    local r = exec({ "env" })
    assert.falsy(r.stdout:find(em.api_key, 1, true))
    assert.falsy(r.stdout:find("MORPH_API_KEY", 1, true))
  end)

  it("keeps instances apart", function()
    local other = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. other)).json.status == "ready"
    end, "ready")
    exec({ "echo mine > only-here" })
    assert.are_not.equal(0, exec({ "test -e only-here" }, other).exit_code)
  end)

  it("reports a program that cannot be started as exit 127", function()
    local r = exec({ "/nonexistent/program", "arg" })
    assert.are.equal(127, r.exit_code)
  end)

  it("rejects bad commands with 422", function()
    for _, body in ipairs({ {}, { command = "echo hi" }, { command = { 1, 2 } } }) do
      local r = assert(em:request("POST", "/instance/" .. id .. "/exec", body))
      assert.are.equal(422, r.status, r.body)
      assert.are.equal("body", r.json.detail[1].loc[1])
    end
    local r = assert(em:request("POST", "/instance/" .. id .. "/exec", '{"command": []}'))
    assert.are.equal(422, r.status)
  end)

  it("refuses exec on a pending instance with 409", function()
    local slow = emulator.start({ boot_delay_ms = 60000 })
    local ok, err = pcall(function()
      local inst = assert(slow:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json
      assert.are.equal("pending", inst.status)
      local r = assert(slow:request("POST", "/instance/" .. inst.id .. "/exec", { command = { "true" } }))
      assert.are.equal(409, r.status)
    end)
    slow:stop()
    assert(ok, err)
  end)

  it("kills an instance's processes, daemons included, when it is stopped", function()
    local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. inst)).json.status == "ready"
    end, "ready")
    local r = exec({ "sleep 600 >/dev/null 2>&1 & echo $!" }, inst)
    -- the instance's pid namespace numbers it; watch the host's process
    local pid = assert(emulator.host_pid(assert(math.tointeger(tonumber(r.stdout))), "sleep\0" .. "600\0", em.state_dir))
    local st = em:state()
    for _, i in ipairs(st.instances) do
      if i.id == inst then assert.are.equal(0, i.processes) end
    end
    assert.is_true(alive(pid))
    assert.are.equal(204, assert(em:request("DELETE", "/instance/" .. inst)).status)
    eventually(function()
      return not alive(pid)
    end, "the daemon to be killed")
  end)

  it("ends a running exec when its instance is stopped", function()
    local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. inst)).json.status == "ready"
    end, "ready")
    local curl = assert(proc.spawn({ argv = {
      "curl", "-s", "-X", "POST", "-H", "Content-Type: application/json", "-H", "@-",
      "-d", '{"command": ["sleep 600"]}', em.base_url .. "/instance/" .. inst .. "/exec",
    }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
    eventually(function()
      for _, i in ipairs(em:state().instances) do
        if i.id == inst and i.processes > 0 then return true end
      end
    end, "the exec to start")
    -- The instance's first process is the entry wrapper: give `sleep 600` the moment it takes to
    -- be exec'd, so the stop kills the command itself (137), not its start-up.
    require("galley.core.runtime").sleep_ms(500)
    assert.are.equal(204, assert(em:request("DELETE", "/instance/" .. inst)).status)
    local res = assert(curl:wait(30000))
    local body = cjson.decode(res.stdout)
    assert.are.equal(137, body.exit_code)
  end)

  it("kills a command whose client closed its connection (Ctrl-C, a timeout), and keeps serving", function()
    local marker = "/root/after-" .. tostring(math.random(1e9))
    -- curl gives up after 1 s (closing the connection) on a command that would run 600 s
    local curl = assert(proc.spawn({ argv = {
      "curl", "-s", "-m", "1", "-X", "POST", "-H", "Content-Type: application/json", "-H", "@-",
      "-d", cjson.encode({ command = { "sh", "-c", 'sleep 600; touch "$1"', "sh", marker } }),
      em.base_url .. "/instance/" .. id .. "/exec",
    }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
    eventually(function()
      for _, i in ipairs(em:state().instances) do
        if i.id == id and i.processes > 0 then return true end
      end
    end, "the exec to start")
    assert.are.equal(28, assert(curl:wait(30000)).exit_code) -- curl's own timeout
    eventually(function()
      for _, i in ipairs(em:state().instances) do
        if i.id == id then return i.processes == 0 end
      end
    end, "the command to be killed")
    -- nothing of it ran on, and the emulator answers the next request
    assert.are.equal("gone\n", exec({ "sh", "-c", 'test -e "$1" || echo gone', "sh", marker }).stdout)
  end)

  it("pauses an instance's processes and lets them continue on resume", function()
    local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. inst)).json.status == "ready"
    end, "ready")
    -- A background counter ticks into a file every 20 ms; paused, it must stop ticking.
    exec({ "i=0; while true; do i=$((i+1)); echo $i > /root/ticks; sleep 0.02; done >/dev/null 2>&1 &" }, inst)
    local function ticks() return tonumber(exec({ "cat", "/root/ticks" }, inst).stdout) or 0 end
    eventually(function() return ticks() > 2 end, "the counter to start")
    -- While paused exec is refused, so read the counter from this side: the state dump names
    -- the instance's directory, whose home/ is the instance's /root.
    local dir
    for _, i in ipairs(assert(em:request("GET", "/_emulator/state")).json.instances) do
      if i.id == inst then dir = i.dir end
    end
    local function host_ticks()
      local f = io.open(dir .. "/home/ticks")
      local v = f and tonumber(f:read("a")) or 0
      if f then f:close() end
      return v
    end
    assert(em:request("POST", "/instance/" .. inst .. "/pause"))
    local frozen = host_ticks()
    os.execute("sleep 0.3")
    assert.are.equal(frozen, host_ticks())
    assert(em:request("POST", "/instance/" .. inst .. "/resume"))
    local after_resume = ticks()
    eventually(function() return ticks() > after_resume end, "the counter to continue")
    assert(em:request("DELETE", "/instance/" .. inst))
  end)

  describe("exec/sse", function()
    it("streams stdout and stderr events, then exit_code and [DONE]", function()
      local r = assert(em:request("POST", "/instance/" .. id .. "/exec/sse",
        { command = { "echo one; sleep 0.3; echo two >&2; exit 3" } }, { Accept = "text/event-stream" }))
      assert.are.equal(200, r.status)
      assert.matches("^text/event%-stream", r.headers["content-type"])
      local events = sse_events(r.body)
      assert.are.same({
        { type = "stdout", content = "one\n" },
        { type = "stderr", content = "two\n" },
        { type = "exit_code", content = "3" },
        "[DONE]",
      }, events)
    end)

    it("sends output as it arrives, before the command ends", function()
      -- The command prints, then waits for a file that only a second request creates: the
      -- first event must reach the client while the command is still running.
      local curl = assert(proc.spawn({ argv = {
        "curl", "-s", "-N", "-X", "POST", "-H", "Content-Type: application/json", "-H", "@-",
        "-d", '{"command": ["echo first; while [ ! -e go ]; do sleep 0.02; done; echo second"]}',
        em.base_url .. "/instance/" .. id .. "/exec/sse",
      }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
      local seen = ""
      while not seen:find("first", 1, true) do
        local kind, data = curl:read(30000)
        assert.are.equal("stdout", kind)
        seen = seen .. data
      end
      assert.falsy(seen:find("second", 1, true))
      exec({ "touch go" })
      local rest = assert(curl:wait(30000))
      local events = sse_events(seen .. rest.stdout)
      assert.are.same({ type = "stdout", content = "first\n" }, events[1])
      assert.are.same({ type = "stdout", content = "second\n" }, events[2])
      assert.are.same({ type = "exit_code", content = "0" }, events[3])
      assert.are.equal("[DONE]", events[4])
      exec({ "rm go" })
    end)

    it("keeps multi-byte characters whole across output chunks", function()
      local r = assert(em:request("POST", "/instance/" .. id .. "/exec/sse",
        { command = { "printf '\\303'; sleep 0.2; printf '\\251\\n'" } }))
      local out = ""
      for _, e in ipairs(sse_events(r.body)) do
        if type(e) == "table" and e.type == "stdout" then out = out .. e.content end
      end
      assert.are.equal("é\n", out)
    end)

    it("ends the command when the client goes away", function()
      local curl = assert(proc.spawn({ argv = {
        "curl", "-s", "-N", "-X", "POST", "-H", "Content-Type: application/json", "-H", "@-",
        "-d", '{"command": ["echo started; sleep 600"]}', em.base_url .. "/instance/" .. id .. "/exec/sse",
      }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
      local kind = curl:read(30000)
      assert.are.equal("stdout", kind)
      curl:kill("KILL")
      curl:close()
      -- noticed when writes fail: keep-alive comments go out after 5 s of silence
      local deadline = runtime.now_ms() + 40000
      local running
      repeat
        running = 0
        for _, i in ipairs(em:state().instances) do
          if i.id == id then running = i.processes end
        end
        if running > 0 then runtime.sleep_ms(100) end
      until running == 0 or runtime.now_ms() > deadline
      assert.are.equal(0, running)
    end)

    it("validates the body like exec", function()
      local r = assert(em:request("POST", "/instance/" .. id .. "/exec/sse", { command = "nope" }))
      assert.are.equal(422, r.status)
    end)
  end)
end)

describe("galley emulate --argv-mode join #emulator", function()
  local em, id

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 0, argv_mode = "join" })
    local r = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {}))
    id = r.json.id
    eventually(function()
      return assert(em:request("GET", "/instance/" .. id)).json.status == "ready"
    end, "ready")
  end)

  lazy_teardown(function()
    if em then em:stop() end
  end)

  local function exec(command, path)
    local r = assert(em:request("POST", "/instance/" .. id .. (path or "/exec"), { command = command }))
    assert.are.equal(200, r.status, r.body)
    return r
  end

  it("space-joins a multi-element command and runs it with /bin/sh -c, like an SSH-style server", function()
    assert.are.equal("a,b,", exec({ "printf", "%s,", "a b" }).json.stdout)
    exec({ "echo", "$(touch /tmp/joined)" })
    assert.are.equal(0, exec({ "test -e /tmp/joined" }).json.exit_code)
    assert.are.equal("join", em:state().options.argv_mode)
  end)

  it("joins on exec/sse too, and still runs a one-element command as a shell line", function()
    local events = sse_events(exec({ "echo", "x;", "echo", "y" }, "/exec/sse").body)
    local out = {}
    for _, e in ipairs(events) do
      if type(e) == "table" and e.type == "stdout" then out[#out + 1] = e.content end
    end
    assert.are.equal("x\ny\n", table.concat(out))
    assert.are.equal("1\n", exec({ "echo $((0 + 1))" }).json.stdout)
  end)
end)
