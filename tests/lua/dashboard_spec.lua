-- galley dashboard without a browser: the ANSI converter, galley.health, and the security checks
-- and the live log stream of the real `galley dashboard` through galley.core.http.
local ansi = require("galley.dashboard.ansi")
local health = require("galley.health")
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")
local cli = require("support.cli")
local dashboard = require("support.dashboard")
local support = require("support")

local function raises_code(code, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.are.equal(code, type(err) == "table" and err.code or err)
end

describe("galley.dashboard.ansi #dashboard", function()
  it("turns SGR colours into spans and escapes the text", function()
    local html = ansi.to_html("\27[31mred\27[0m <b>&\27[1;38;5;21mX\27[m")
    assert.are.equal('<span style="color:#cd3131">red</span> &lt;b&gt;&amp;'
      .. '<span style="color:#0000ff;font-weight:bold">X</span>', html)
  end)

  it("drops other escape sequences (cursor moves, titles)", function()
    assert.are.equal("ab", ansi.to_html("a\27[2K\27]0;title\7b"))
  end)

  it("handles 24-bit colours and inverse", function()
    assert.are.equal('<span style="color:#0a141e">x</span>', ansi.to_html("\27[38;2;10;20;30mx"))
    assert.truthy(ansi.to_html("\27[7mx"):find("background:var(--term-fg)", 1, true))
  end)
end)

describe("galley.health #dashboard", function()
  it("parses the probe's output", function()
    local h = health.parse(table.concat({
      "cpu 1000 800 1100 850", "load 0.50 0.25 0.10 1/100 42", "uptime 3600.12 100.0",
      "mem MemTotal: 2048000 kB MemAvailable: 1024000 kB ", "ncpu 2",
      "disk /root /dev/sda1 1000 250 750 25% /", }, "\n"))
    assert.are.equal(50.0, h.cpu_percent)
    assert.are.same({ 0.5, 0.25, 0.1 }, h.load)
    assert.are.equal(3600, h.uptime_seconds)
    assert.are.equal(2048000 * 1024, h.mem_total)
    assert.are.equal(50.0, h.mem_percent)
    assert.are.equal(2, h.cpus)
    assert.are.equal(25.0, h.disk_percent)
    assert.are.equal("/root", h.disk_path)
  end)

  it("leaves out what the probe could not read", function()
    local h = health.parse("cpu  \nload \nmem \n")
    assert.is_nil(h.cpu_percent)
    assert.is_nil(h.mem_total)
  end)

  it("rejects a bad provider or id with VALIDATION_ERROR", function()
    raises_code("VALIDATION_ERROR", health.sample, {}, "x")
    raises_code("VALIDATION_ERROR", health.sample, { exec = function() end }, "")
    raises_code("VALIDATION_ERROR", health.sample, { exec = function() end }, "x", { sample_ms = -1 })
  end)
end)

describe("galley dashboard on local #dashboard", function()
  local t, id, dash, provider

  setup(function()
    t = cli.start("local")
    id = t:boot()
    provider = t:provider()
    dash = dashboard.start(t.env, { "--provider", "local" })
  end)

  teardown(function()
    if dash then dash:stop() end
    if t then t:stop() end
  end)

  it("health.sample reads one instance with one exec", function()
    local calls = 0
    local counting = setmetatable({ exec = function(...)
      calls = calls + 1
      return provider.exec(...)
    end }, { __index = provider })
    local h = health.sample(counting, id)
    assert.are.equal(1, calls)
    assert.truthy(h.cpu_percent and h.cpu_percent >= 0 and h.cpu_percent <= 100, cjson.encode(h))
    assert.truthy(h.mem_total > 0 and h.mem_used > 0)
    assert.truthy(h.disk_total > 0 and h.disk_percent >= 0)
    assert.truthy(h.uptime_seconds >= 0) -- (the instance's age: 0 s just after its boot)
    assert.are.equal(3, #h.load)
  end)

  it("health.sample on local counts the instance's own CPU (its cgroup), not the machine's", function()
    -- a sandbox's /proc is the host's: every local instance showed the machine's CPU and memory
    if not provider.usage(id) then return pending("no cgroup for local instances here") end
    local task = require("galley.task")
    local BUSY = "timeout 3 sh -c 'while :; do :; done'; true"
    -- a core busy here, outside the instance, while it is sampled
    local hog = task.spawn(function() return proc.run({ argv = { "sh", "-c", BUSY } }) end)
    task.sleep(300)
    local idle = health.sample(provider, id, { sample_ms = 1000 })
    hog:wait()
    assert.are.same({ cpu = "cgroup", uptime = "instance" }, { cpu = idle.sources.cpu, uptime = idle.sources.uptime })
    assert.truthy(idle.cpu_percent < 10, cjson.encode(idle))
    -- and inside it
    local inside = task.spawn(function() return provider.exec(id, BUSY) end)
    task.sleep(300)
    local busy = health.sample(provider, id, { sample_ms = 1000 })
    inside:wait()
    assert.truthy(busy.cpu_percent >= 10, cjson.encode(busy))
    -- the arithmetic: 0.5 s of CPU in 1 s on 2 CPUs, 100 of 1000 bytes, 3 processes, 10 s old
    local h = health.apply_usage({ cpus = 2, mem_total = 5000 }, { cpu_usec = 0 },
      { cpu_usec = 500000, mem_bytes = 100, mem_limit = 1000, pids = 3, started_at = os.time() - 10 }, 1000)
    assert.are.same({ 25.0, 100, 1000, 10.0, 3, "cgroup" }, { h.cpu_percent, h.mem_used, h.mem_total, h.mem_percent,
      h.pids, h.sources.mem })
    assert.truthy(h.uptime_seconds >= 10 and h.uptime_seconds <= 12)
  end)

  it("answers 403 to every request without the access token", function()
    for _, path in ipairs({ "/", "/app.js", "/api/state", "/api/instances", "/?token=" .. ("0"):rep(64) }) do
      local r = dash:request("GET", path, { cookie = false })
      assert.are.equal(403, r.status, path)
      assert.are.equal("DASHBOARD_TOKEN", r.json.error.code)
    end
    local r = dash:request("GET", "/api/state", { cookie = false, headers = { Cookie = "galley_dashboard_" .. dash.port .. "=nope" } })
    assert.are.equal(403, r.status)
  end)

  it("turns the printed URL's token into an HttpOnly SameSite=Strict cookie", function()
    local r = dash:request("GET", "/?token=" .. dash.token, { cookie = false })
    assert.are.equal(303, r.status)
    assert.are.equal("/", r.headers.location)
    local c = r.headers["set-cookie"]
    assert.truthy(c:find("galley_dashboard_" .. dash.port .. "=" .. dash.token, 1, true))
    assert.truthy(c:find("HttpOnly", 1, true) and c:find("SameSite=Strict", 1, true), c)
    r = dash:request("GET", "/")
    assert.are.equal(200, r.status)
    assert.truthy(r.body:find("<title>galley dashboard</title>", 1, true))
    assert.truthy(r.headers["content-security-policy"]:find("default-src 'self'", 1, true))
  end)

  it("refuses a foreign Host (DNS rebinding) even with the cookie", function()
    for _, host in ipairs({ "evil.example", "evil.example:" .. dash.port, "127.0.0.1.evil.example",
      "127.0.0.1:" .. (dash.port + 1) }) do
      local r = dash:request("GET", "/api/state", { host = host })
      assert.are.equal(403, r.status, host)
      assert.are.equal("DASHBOARD_FORBIDDEN_HOST", r.json.error.code)
    end
    assert.are.equal(200, dash:request("GET", "/api/state", { host = "localhost:" .. dash.port }).status)
  end)

  it("needs the CSRF token (and this origin) on every POST", function()
    local body = { provider = "local", id = "no_such_instance" }
    local r = dash:request("POST", "/api/instance/stop", { body = body })
    assert.are.equal(403, r.status)
    assert.are.equal("DASHBOARD_CSRF", r.json.error.code)
    r = dash:request("POST", "/api/instance/stop", { body = body, csrf = ("a"):rep(64) })
    assert.are.equal(403, r.status)
    local csrf = dash:csrf()
    r = dash:request("POST", "/api/instance/stop", { body = body, csrf = csrf, origin = "http://evil.example" })
    assert.are.equal(403, r.status)
    r = dash:request("POST", "/api/instance/stop", { body = body, csrf = csrf, cookie = false })
    assert.are.equal(403, r.status)
    -- with the token, the cookie and this origin the action runs (the instance does not exist)
    r = dash:request("POST", "/api/instance/stop", { body = body, csrf = csrf,
      origin = "http://127.0.0.1:" .. dash.port })
    assert.are.equal(404, r.status)
    assert.are.equal("NOT_FOUND", r.json.error.code)
  end)

  it("listens on 127.0.0.1 only", function()
    local r, err = http.request({ method = "GET", url = ("http://127.0.0.2:%d/"):format(dash.port), timeout_ms = 5000 })
    assert.is_nil(r)
    assert.are.equal("HTTP_CONNECT", err.code)
  end)

  it("lists live runs from their run files and finished ones with exit code and clean-up", function()
    local ok_recipe = support.script("print('done')\n")
    local bad_recipe = support.script("error('boom')\n")
    local live_recipe = support.script("require('galley.task').sleep(120000)\n")
    local cleanup = support.cleanups(finally)
    cleanup(function()
      os.remove(ok_recipe)
      os.remove(bad_recipe)
      os.remove(live_recipe)
    end)
    assert.are.equal(0, (support.galley("run " .. support.q(ok_recipe), nil, t.env)))
    assert.are.equal(1, (support.galley("run " .. support.q(bad_recipe), nil, t.env)))
    local live = assert(require("galley.core.proc").spawn({ argv = { support.bin, "run", live_recipe },
      env = t.env, env_mode = "extend" }))
    cleanup(function()
      pcall(live.kill, live, "TERM")
      live:wait(10000)
      live:close()
    end)
    local running
    local deadline = runtime.now_ms() + 30000
    repeat
      local r = dash:request("GET", "/api/state")
      for _, run in ipairs(r.json.runs) do if run.state == "running" then running = run end end
      if not running then require("galley.task").sleep(200) end
    until running or runtime.now_ms() > deadline
    assert.truthy(running, "the live run is listed")
    local r = dash:request("GET", "/api/state")
    local codes = {}
    for _, run in ipairs(r.json.runs) do
      if run.state == "finished" then codes[#codes + 1] = run.exit_code end
    end
    table.sort(codes)
    assert.are.same({ 0, 1 }, codes)
  end)

  it("lists the instance with its health", function()
    local r = dash:request("GET", "/api/instances")
    assert.are.equal(200, r.status, r.body)
    local found
    for _, inst in ipairs(r.json[1].instances) do if inst.id == id then found = inst end end
    assert.truthy(found, r.body)
    assert.are.equal("ready", found.status)
    assert.truthy(found.health and found.health.mem_percent, r.body)
    assert.truthy(found.ttl_left and found.ttl_left > 0)
  end)

  it("follows a PM2 log by byte offset and resumes from Last-Event-ID without duplicates", function()
    local pm2 = require("galley.process.pm2").new({ provider = provider, log = require("galley.log").silent() })
    pm2.start(id, pm2.process("ticker").command("sh", { "-c",
      'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done' }).build())
    local function collect(headers, want)
      local s = dash:request("GET", ("/api/log?provider=local&id=%s&name=ticker"):format(id),
        { stream = true, headers = headers })
      local buf, lines, last_id = "", {}, nil
      local deadline = runtime.now_ms() + 60000
      while #lines < want and runtime.now_ms() < deadline do
        local piece = s:read()
        if not piece then break end
        buf = buf .. piece
        while true do
          local ev, rest = buf:match("^(.-)\n\n(.*)$")
          if not ev then break end
          buf = rest
          local eid = ev:match("id: ([%d%.]+)")
          local data = ev:match("data: ([^\n]*)")
          if ev:find("event: log", 1, true) then
            last_id = eid
            local d = cjson.decode(data)
            for l in d.out:gmatch("[^\n]+") do lines[#lines + 1] = l end
          end
        end
      end
      s:close()
      return lines, last_id
    end
    local first, last_id = collect({}, 3)
    assert.truthy(#first >= 3, "got " .. #first .. " lines")
    assert.are.equal("tick 1", first[1])
    local second = collect({ ["Last-Event-ID"] = last_id }, 2)
    assert.truthy(#second >= 2)
    -- the resumed stream starts right after the last line received: nothing twice, nothing lost
    local n1 = tonumber(first[#first]:match("%d+"))
    assert.are.equal("tick " .. (n1 + 1), second[1])
    for i = 2, #second do
      assert.are.equal(tonumber(second[i - 1]:match("%d+")) + 1, tonumber(second[i]:match("%d+")))
    end
    pm2.delete(id, "ticker")
  end)

  it("redacts secrets in what it sends", function()
    local pm2 = require("galley.process.pm2").new({ provider = provider, log = require("galley.log").silent() })
    local secret = "sk-ant-api03-" .. ("Q"):rep(40)
    pm2.start(id, pm2.process("leaky").command("sh", { "-c", "echo 'key " .. secret .. " here'; sleep 60" }).build())
    finally(function() pm2.delete(id, "leaky") end)
    local s = dash:request("GET", ("/api/log?provider=local&id=%s&name=leaky"):format(id), { stream = true })
    local buf = ""
    local deadline = runtime.now_ms() + 60000
    while not buf:find("here", 1, true) and runtime.now_ms() < deadline do
      local piece = s:read()
      if not piece then break end
      buf = buf .. piece
    end
    s:close()
    assert.truthy(buf:find("here", 1, true), buf)
    assert.is_nil(buf:find(secret, 1, true))
    assert.truthy(buf:find("REDACTED", 1, true), buf)
  end)

  it("--open hands xdg-open a private file that redirects to the URL (no token in any argv)", function()
    local bin = support.tmpname()
    os.remove(bin)
    assert(os.execute("mkdir -p " .. support.q(bin)))
    local seen = bin .. "/seen"
    local f = assert(io.open(bin .. "/xdg-open", "w"))
    f:write('#!/bin/sh\nprintf "%s\\n" "$*" > "$0.args"; cat "$1" > "' .. seen .. '"\n')
    f:close()
    assert(os.execute("chmod +x " .. support.q(bin .. "/xdg-open")))
    local cleanup = support.cleanups(finally)
    cleanup(function() os.execute("rm -rf " .. support.q(bin)) end)
    local env = {}
    for k, v in pairs(t.env) do env[k] = v end
    env.PATH = bin .. ":" .. os.getenv("PATH")
    local d2 = dashboard.start(env, { "--provider", "local", "--open" })
    cleanup(function() d2:stop() end)
    local deadline = runtime.now_ms() + 20000
    local page
    repeat
      local g = io.open(seen)
      page = g and g:read("a")
      if g then g:close() end
      if not (page and page:find("token=", 1, true)) then require("galley.task").sleep(100) end
    until (page and page:find("token=", 1, true)) or runtime.now_ms() > deadline
    assert.truthy(page and page:find(d2.url, 1, true), page)
    local a = assert(io.open(bin .. "/xdg-open.args"))
    local args = a:read("a")
    a:close()
    assert.is_nil(args:find(d2.token, 1, true), args)
  end)
end)

describe("galley dashboard --read-only #dashboard", function()
  local t, dash

  setup(function()
    t = cli.start("local")
    dash = dashboard.start(t.env, { "--provider", "local", "--read-only" })
  end)

  teardown(function()
    if dash then dash:stop() end
    if t then t:stop() end
  end)

  it("refuses every action with 403", function()
    local csrf = dash:csrf()
    local state = dash:request("GET", "/api/state")
    assert.is_true(state.json.read_only)
    for _, path in ipairs({ "/api/instance/stop", "/api/session/stop", "/api/session/restart", "/api/session/keys" }) do
      local r = dash:request("POST", path, { body = { provider = "local", id = "x", name = "y" }, csrf = csrf })
      assert.are.equal(403, r.status, path)
      assert.are.equal("DASHBOARD_READ_ONLY", r.json.error.code)
    end
  end)

  it("rejects a bad --port with exit 2", function()
    local code = support.galley("dashboard --port nope", nil, t.env)
    assert.are.equal(2, code)
    code = support.galley("dashboard --provider nowhere", nil, t.env)
    assert.are.equal(2, code)
  end)
end)

describe("galley.dashboard with 100 instances #dashboard", function()
  -- A FAKE provider: 100 instance records without machines behind them, and a health probe that
  -- takes 300 ms, to check that the listing stays quick while samples are taken in the background.
  local dashmod = require("galley.dashboard")
  local task = require("galley.task")
  local list = {}
  for i = 1, 100 do list[i] = { id = ("fake_%03d"):format(i), status = "ready", created_at = os.time() } end
  local FAKE = { name = "fake", instances = { list = function() return list end } }
  local probes = 0
  local d, ttl

  setup(function()
    ttl = dashmod.HEALTH_TTL_MS
    dashmod.HEALTH_TTL_MS = 600000 -- no second sample however slow this machine is
    d = dashmod.new({ providers = { { name = "fake", provider = FAKE } }, health = function(_, id)
      probes = probes + 1
      task.sleep(300)
      return { cpu_percent = 1.0, id = id }
    end })
    assert(d:start(0))
  end)

  teardown(function()
    dashmod.HEALTH_TTL_MS = ttl
    if d then d:stop() end
  end)

  local function instances()
    local t0 = runtime.now_ms()
    local r = assert(http.request({ method = "GET", url = ("http://127.0.0.1:%d/api/instances"):format(d.port),
      headers = { Cookie = d.cookie .. "=" .. d.token }, timeout_ms = 60000 }))
    assert.are.equal(200, r.status, r.body)
    local with = 0
    for _, inst in ipairs(cjson.decode(r.body)[1].instances) do if inst.health then with = with + 1 end end
    return runtime.now_ms() - t0, with
  end

  it("answers within the health wait and fills in the rest on later listings", function()
    local ms, with = instances()
    assert.truthy(ms < dashmod.HEALTH_WAIT_MS + 2000, ms .. " ms")
    assert.truthy(with > 0 and with < 100, with .. " instances with health")
    local deadline = runtime.now_ms() + 30000
    repeat
      task.sleep(200)
      with = select(2, instances())
    until with == 100 or runtime.now_ms() > deadline
    assert.are.equal(100, with)
    assert.are.equal(100, probes) -- each instance sampled once (then cached)
  end)
end)
