--- galley emulate under abuse (issue #19): unauthenticated large bodies, a flood of half-sent
-- requests and a huge exec output leave a concurrent well-formed request answered promptly
-- and the emulator's memory bounded. Clients are real: curl processes and a perl script that
-- holds 1,100 sockets. The figures (peak RSS of the emulator, request times) are printed.
local emulator = require("support.emulator")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")

local PROMPT_MS = 3000          -- a well-formed request during the abuse answers within this
-- Peak RSS of the emulator through every test below. AddressSanitizer keeps freed memory in
-- quarantine (the CI's sanitizer run sets ASAN_OPTIONS), so there the bound is the sanitizer's.
local RSS_LIMIT_KIB = (os.getenv("ASAN_OPTIONS") and 4096 or 640) * 1024

local function status_kib(pid, field)
  local f = assert(io.open("/proc/" .. pid .. "/status"))
  local s = f:read("a")
  f:close()
  return math.tointeger(tonumber(s:match(field .. ":%s*(%d+) kB")))
end

local function figure(fmt, ...)
  io.stderr:write("# limits: ", fmt:format(...), "\n")
end

-- Times one authenticated request on a fresh connection.
local function timed_get(em)
  local t0 = runtime.now_ms()
  local r, err = require("galley.core.http").request({
    method = "GET", url = em.base_url .. "/instance", timeout_ms = 30000,
    headers = { Authorization = "Bearer " .. em.api_key },
  })
  return runtime.now_ms() - t0, r, err
end

-- Waits for spawned processes; returns their results in order.
local function wait_all(handles)
  local out = {}
  for i, h in ipairs(handles) do
    out[i] = assert(h:wait(120000))
    h:close()
  end
  return out
end

describe("galley emulate limits #emulator", function()
  local em, dir, pid

  lazy_setup(function()
    em = emulator.start({ boot_delay_ms = 0, args = { "--header-timeout-ms", "1500" } })
    pid = em.handle:pid()
    local mk = assert(proc.run({ argv = { "mktemp", "-d", "-t", "galley-limits.XXXXXX" } }))
    dir = mk.stdout:gsub("%s+$", "")
    figure("emulator pid %d, VmRSS at start %d KiB", pid, status_kib(pid, "VmRSS"))
  end)

  lazy_teardown(function()
    if em then
      figure("emulator VmHWM at the end %d KiB", status_kib(pid, "VmHWM"))
      em:stop()
    end
    if dir then proc.run({ argv = { "rm", "-rf", "--", dir } }) end
  end)

  it("answers 401 to unauthenticated 64 MiB bodies before reading them, and serves others meanwhile", function()
    local file = dir .. "/body"
    assert.are.equal(0, assert(proc.run({ argv = { "sh", "-c", "head -c 67108864 /dev/zero > " .. file } })).exit_code)
    local curls = {}
    for i = 1, 30 do
      curls[i] = assert(proc.spawn({ argv = {
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-H", "Content-Type: application/json",
        "--data-binary", "@" .. file, em.base_url .. "/instance?snapshot_id=" .. emulator.SNAPSHOT,
      } }))
    end
    runtime.sleep_ms(100)
    local ms, r = timed_get(em)
    figure("well-formed request during 30 unauthenticated 64 MiB uploads: %d ms", ms)
    local results = wait_all(curls)
    assert.are.equal(200, r.status)
    assert.is_true(ms < PROMPT_MS)
    local n401 = 0
    for _, res in ipairs(results) do
      if res.stdout == "401" then n401 = n401 + 1 end
    end
    assert.is_true(n401 >= 1)
    local log = assert(em:request("GET", "/_emulator/log")).json
    assert.is_true(log.server.unauthorized >= 30)
    assert.is_true(log.rejected >= 30)
    for _, rec in ipairs(log.data) do assert.are_not.equal(401, rec.status) end -- counted, not stored
    local hwm = status_kib(pid, "VmHWM")
    figure("VmHWM after the uploads: %d KiB", hwm)
    assert.is_true(hwm < RSS_LIMIT_KIB)
  end)

  it("answers 413 to a body over the cap before reading it, even with the key", function()
    local file = dir .. "/big"
    assert.are.equal(0, assert(proc.run({ argv = { "sh", "-c", "head -c 67108865 /dev/zero > " .. file } })).exit_code)
    local r = assert(proc.run({ argv = {
      "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "@-", "-H", "Content-Type: application/json",
      "--data-binary", "@" .. file, em.base_url .. "/instance?snapshot_id=" .. emulator.SNAPSHOT,
    }, stdin = "Authorization: Bearer " .. em.api_key .. "\n", timeout_ms = 60000 }))
    assert.are.equal("413", r.stdout)
  end)

  it("keeps serving through a flood of 1,100 half-sent requests, and times them out", function()
    local flood = assert(proc.spawn({ argv = { "perl", "-e", [[
      use IO::Socket::INET; $SIG{PIPE} = 'IGNORE'; $| = 1; my @s;
      for (1..1100) {
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $ARGV[0], Proto => 'tcp') or next;
        print $c "POST /api/instance HTTP/1.1\r\nHost: x\r\nAuthorization: Bear";
        push @s, $c;
      }
      print scalar(@s), "\n"; <STDIN>;
    ]], tostring(em.port) }, stdin = "pipe" }))
    local kind, opened = flood:read(60000)
    assert.are.equal("stdout", kind)
    figure("flood: %s sockets opened", opened:gsub("%s+$", ""))
    local ms, r = timed_get(em)
    figure("well-formed request during the flood: %d ms", ms)
    assert.are.equal(200, r.status)
    assert.is_true(ms < PROMPT_MS)
    local stats = assert(em:request("GET", "/_emulator/log")).json.server
    figure("server after the flood: open %d, evicted %d, refused %d", stats.open, stats.evicted, stats.refused)
    assert.is_true(stats.open <= 512)
    assert.is_true(stats.evicted > 0)
    runtime.sleep_ms(2500) -- past --header-timeout-ms 1500 (swept every 250 ms)
    stats = assert(em:request("GET", "/_emulator/log")).json.server
    figure("server 2.5 s later: open %d, timed out %d", stats.open, stats.timed_out)
    assert.is_true(stats.timed_out > 0)
    assert.is_true(stats.open < 10)
    flood:close()
  end)

  it("caps a huge exec output at 64 MiB per stream, marked truncated, and serves others meanwhile", function()
    local inst = assert(em:request("POST", "/instance?snapshot_id=" .. emulator.SNAPSHOT, {})).json.id
    local out = dir .. "/exec.json"
    local body = cjson.encode({ command = { "head -c 209715200 /dev/zero | tr '\\0' a; echo done >&2" } })
    local curl = assert(proc.spawn({ argv = {
      "curl", "-s", "-o", out, "-w", "%{http_code}", "-H", "@-", "-H", "Content-Type: application/json",
      "-d", body, em.base_url .. "/instance/" .. inst .. "/exec",
    }, stdin = "Authorization: Bearer " .. em.api_key .. "\n" }))
    runtime.sleep_ms(300)
    local ms, r = timed_get(em)
    figure("well-formed request during a 200 MiB exec output: %d ms", ms)
    local res = assert(curl:wait(120000))
    curl:close()
    assert.are.equal(200, r.status)
    assert.is_true(ms < PROMPT_MS)
    assert.are.equal("200", res.stdout, em:drain())
    local f = assert(io.open(out, "rb"))
    local answer = cjson.decode(f:read("a"))
    f:close()
    assert.is_true(answer.truncated)
    assert.are.equal(64 * 1024 * 1024, #answer.stdout)
    assert.are.equal(("a"):rep(16), answer.stdout:sub(1, 16))
    assert.are.equal("done\n", answer.stderr)
    assert.are.equal(0, answer.exit_code)
    local hwm = status_kib(pid, "VmHWM")
    figure("VmHWM after the huge exec: %d KiB", hwm)
    assert.is_true(hwm < RSS_LIMIT_KIB)
  end)
end)
