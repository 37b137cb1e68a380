-- galley.core.pm2: argv builders and parsers, then the built argv against the real pm2 with a
-- private PM2_HOME (killed at the end).
local pm2 = require("galley.core.pm2")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local function raises(code, field, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.are.equal("table", type(err), tostring(err))
  assert.are.equal(code, err.code)
  if field then assert.are.equal(field, err.field) end
end

describe("galley.core.pm2 builders #pm2", function()
  it("sanitizes names into something pm2 reads as one process name", function()
    assert.are.equal("cc-demo", pm2.sanitize_name("cc demo!"))
    assert.are.equal("p-123", pm2.sanitize_name("123"))
    assert.are.equal("p-all", pm2.sanitize_name("all"))
    assert.are.equal("proc", pm2.sanitize_name(""))
    assert.are.equal("proc", pm2.sanitize_name("\255/."))
    assert.are.equal(49, #pm2.sanitize_name(("x"):rep(80)))
    assert.are.equal(49, pm2.NAME_MAX)
    raises("PM2_BAD_OPTION", "name", pm2.sanitize_name, 12)
  end)

  it("builds pm2 start bash ... -- -lc PAYLOAD with --no-autorestart by default", function()
    assert.are.same({ "pm2", "start", "bash", "--no-autorestart", "--", "-lc", "exec -- echo hi </dev/null" },
      pm2.start_argv { command = { kind = "argv", command = "echo", args = { "hi" } } })
    assert.are.same({ "pm2", "start", "bash", "--name", "job-1", "--no-autorestart", "--", "-lc",
      "exec </dev/null\necho \"$X\"" },
      pm2.start_argv { command = { kind = "shell", script = 'echo "$X"', name = "job-1" }, restart = "never" })
  end)

  it("puts cd and exports in the payload, never --cwd or PM2 env flags", function()
    local argv = pm2.start_argv({ command = { kind = "argv", command = "printf", args = { "%s\n", "it's", "$HOME" },
      cwd = "~/my dir", env = { B = "2", A = "x y" } } }, { name = "cc-x", home = "/root" })
    assert.are.same({ "pm2", "start", "bash", "--name", "cc-x", "--no-autorestart", "--", "-lc",
      "cd -- '/root/my dir' || exit 127\nexport A='x y' || exit 127\nexport B=2 || exit 127\n"
        .. "exec -- printf '%s\n' 'it'\\''s' '$HOME' </dev/null" }, argv)
    for _, a in ipairs(argv) do
      assert.is_nil(a:match("^%-%-cwd"))
      assert.is_nil(a:match("^%-%-env"))
    end
  end)

  it("leaves stdin alone with stdin=\"inherit\"", function()
    local argv = pm2.start_argv { command = { kind = "argv", command = "cat" }, stdin = "inherit" }
    assert.are.equal("exec -- cat", argv[#argv])
    argv = pm2.start_argv { command = { kind = "shell", script = "cat" }, stdin = "inherit" }
    assert.are.equal("cat", argv[#argv])
    argv = pm2.start_argv { command = { kind = "shell", script = "cat" }, stdin = "null" }
    assert.are.equal("exec </dev/null\ncat", argv[#argv])
  end)

  it("maps restart, instances, max_memory and logs to flags", function()
    local argv = pm2.start_argv({ command = { kind = "argv", command = "true", name = "ignored" },
      restart = { max_restarts = 3 }, instances = 2, max_memory = "512m",
      logs = { out = "/tmp/o.log", err = "/tmp/e.log" } }, { name = "job" })
    assert.are.same({ "pm2", "start", "bash", "--name", "job", "--max-restarts", "3",
      "-i", "2", "--max-memory-restart", "512M", "-o", "/tmp/o.log", "-e", "/tmp/e.log",
      "--", "-lc", "exec -- true </dev/null" }, argv)
    argv = pm2.start_argv { command = { kind = "argv", command = "true" }, restart = {}, max_memory = 1048576 }
    assert.are.same({ "pm2", "start", "bash", "--max-memory-restart", "1048576", "--", "-lc",
      "exec -- true </dev/null" }, argv)
  end)

  it("prefixes env -i with the clean environment, sorted", function()
    local argv = pm2.start_argv({ command = { kind = "argv", command = "true" } },
      { env_clean = { PM2_HOME = "/p", PATH = "/usr/bin:/bin", HOME = "/root" } })
    assert.are.same({ "env", "-i", "HOME=/root", "PATH=/usr/bin:/bin", "PM2_HOME=/p", "pm2", "start", "bash" },
      table.move(argv, 1, 8, 1, {}))
  end)

  it("returns PM2_UNSUPPORTED_OPTION for min_uptime_ms (pm2 start has no --min-uptime)", function()
    local argv, err = pm2.start_argv { command = { kind = "argv", command = "true" },
      restart = { max_restarts = 3, min_uptime_ms = 1500 } }
    assert.is_nil(argv)
    assert.are.equal("PM2_UNSUPPORTED_OPTION", err.code)
    assert.are.equal("restart.min_uptime_ms", err.field)
  end)

  it("returns PM2_PAYLOAD_TOO_LARGE above the argv limit", function()
    assert.truthy(pm2.start_argv { command = { kind = "shell", script = ("x"):rep(100 * 1024) } })
    local argv, err = pm2.start_argv { command = { kind = "shell", script = ("x"):rep(130 * 1024) } }
    assert.is_nil(argv)
    assert.are.equal("PM2_PAYLOAD_TOO_LARGE", err.code)
    assert.are.equal(pm2.PAYLOAD_MAX, err.limit)
    assert.is_string(err.hint)
    argv, err = pm2.start_argv { command = { kind = "argv", command = "echo", args = { ("'"):rep(40 * 1024) } } }
    assert.is_nil(argv)
    assert.are.equal("PM2_PAYLOAD_TOO_LARGE", err.code)   -- each ' costs 4 bytes quoted
  end)

  it("raises PM2_BAD_OPTION naming the field", function()
    local cmd = { kind = "argv", command = "true" }
    raises("PM2_BAD_OPTION", "spec", pm2.start_argv, "x")
    raises("PM2_BAD_OPTION", "command", pm2.start_argv, {})
    raises("PM2_BAD_OPTION", "command.kind", pm2.start_argv, { command = { command = "x" } })
    raises("PM2_BAD_OPTION", "command.args[3]", pm2.start_argv,
      { command = { kind = "argv", command = "x", args = { "a", "b", {} } } })
    raises("PM2_BAD_OPTION", "command.env.1A", pm2.start_argv,
      { command = { kind = "shell", script = "x", env = { ["1A"] = "v" } } })
    raises("PM2_BAD_OPTION", "command.name", pm2.start_argv, { command = { kind = "argv", command = "x", name = "a b" } })
    raises("PM2_BAD_OPTION", "opts.name", pm2.start_argv, { command = cmd }, { name = "all" })
    raises("PM2_BAD_OPTION", "opts.name", pm2.start_argv, { command = cmd }, { name = "42" })
    raises("PM2_BAD_OPTION", "opts", pm2.start_argv, { command = cmd }, { nmae = "x" })
    raises("PM2_BAD_OPTION", "opts.home", pm2.start_argv, { command = cmd }, { home = 1 })
    raises("PM2_BAD_OPTION", "opts.env_clean.PATH", pm2.start_argv, { command = cmd }, { env_clean = { PATH = 1 } })
    raises("PM2_BAD_OPTION", "restart", pm2.start_argv, { command = cmd, restart = "always" })
    raises("PM2_BAD_OPTION", "restart", pm2.start_argv, { command = cmd, restart = { max_restart = 1 } })
    raises("PM2_BAD_OPTION", "restart.max_restarts", pm2.start_argv, { command = cmd, restart = { max_restarts = -1 } })
    raises("PM2_BAD_OPTION", "restart.min_uptime_ms", pm2.start_argv, { command = cmd, restart = { min_uptime_ms = 1.5 } })
    raises("PM2_BAD_OPTION", "instances", pm2.start_argv, { command = cmd, instances = 0 })
    raises("PM2_BAD_OPTION", "max_memory", pm2.start_argv, { command = cmd, max_memory = "5x" })
    raises("PM2_BAD_OPTION", "max_memory", pm2.start_argv, { command = cmd, max_memory = 0 })
    raises("PM2_BAD_OPTION", "logs", pm2.start_argv, { command = cmd, logs = "/tmp/x" })
    raises("PM2_BAD_OPTION", "logs", pm2.start_argv, { command = cmd, logs = { stdout = "/tmp/x" } })
    raises("PM2_BAD_OPTION", "logs.out", pm2.start_argv, { command = cmd, logs = { out = 1 } })
    raises("PM2_BAD_OPTION", "stdin", pm2.start_argv, { command = cmd, stdin = "pipe" })
  end)

  it("builds the other commands as argv arrays", function()
    assert.are.same({ "pm2", "stop", "cc-demo" }, pm2.argv("stop", "cc-demo"))
    assert.are.same({ "pm2", "delete", "3" }, pm2.argv("delete", 3))
    for _, action in ipairs { "restart", "flush", "describe" } do
      assert.are.same({ "pm2", action, "x" }, pm2.argv(action, "x"))
    end
    assert.are.same({ "pm2", "logs", "cc-demo", "--nostream", "--lines", "50", "--raw" }, pm2.logs_argv("cc-demo", 50))
    assert.are.same({ "pm2", "logs", "cc-demo", "--nostream", "--lines", "15", "--raw" }, pm2.logs_argv("cc-demo"))
    assert.are.same({ "pm2", "jlist" }, pm2.jlist_argv())
    assert.are.same({ "pm2", "ping" }, pm2.ping_argv())
    assert.are.same({ "pm2", "kill" }, pm2.kill_argv())
    raises("PM2_BAD_OPTION", "action", pm2.argv, "start", "x")
    raises("PM2_BAD_OPTION", "name", pm2.argv, "delete", "all")
    raises("PM2_BAD_OPTION", "name", pm2.argv, "delete", "12")
    raises("PM2_BAD_OPTION", "name", pm2.argv, "stop", -1)
    raises("PM2_BAD_OPTION", "name", pm2.argv, "stop", nil)
    raises("PM2_BAD_OPTION", "lines", pm2.logs_argv, "x", 0)
  end)
end)

describe("galley.core.pm2 parsers #pm2", function()
  local entry = '{"pid":4242,"name":"cc-demo","pm_id":0,"monit":{"memory":2048,"cpu":1.5},'
    .. '"pm2_env":{"status":"online","restart_time":2,"unstable_restarts":1,"pm_uptime":1000,'
    .. '"pm_out_log_path":"/h/logs/cc-demo-out.log","pm_err_log_path":"/h/logs/cc-demo-error.log",'
    .. '"pm_cwd":"/root","env":{"SECRET":"nope"}}}'
  local stopped = '{"pid":0,"name":"done","pm_id":1,"monit":{"memory":0,"cpu":0},'
    .. '"pm2_env":{"status":"stopped","restart_time":0,"unstable_restarts":0,"pm_uptime":500,"exit_code":3}}'

  it("maps jlist entries, skipping the banner and [PM2] lines", function()
    local out = "\n  banner -------\n\27[32m[PM2]\27[39m Spawning PM2 daemon with pm2_home=/h\n"
      .. "[PM2] PM2 Successfully daemonized\n[" .. entry .. "," .. stopped .. "]"
    local list, warning = pm2.parse_jlist(out, 6000)
    assert.is_nil(warning)
    assert.are.same({
      { name = "cc-demo", pm_id = 0, pid = 4242, status = "online", restarts = 2, unstable_restarts = 1,
        uptime_ms = 5000, memory = 2048, cpu = 1.5, out_log = "/h/logs/cc-demo-out.log",
        err_log = "/h/logs/cc-demo-error.log", cwd = "/root" },
      { name = "done", pm_id = 1, pid = 0, status = "stopped", restarts = 0, unstable_restarts = 0,
        uptime_ms = 0, memory = 0, cpu = 0, exit_code = 3 },
    }, list)
    assert.are.equal(math.type(list[1].pid), "integer")
  end)

  it("takes the last JSON array line", function()
    local list = pm2.parse_jlist("[]\n[" .. stopped .. "]\r\n", 0)
    assert.are.equal(1, #list)
    assert.are.equal("done", list[1].name)
    list = pm2.parse_jlist("[" .. stopped .. "]\n[PM2] trailing note\n", 0)
    assert.are.equal(1, #list)
  end)

  it("returns an empty list and a warning instead of failing", function()
    for _, bad in ipairs { "", "garbage", "[PM2] only\n", "[{\"name\":", "{\"a\":1}" } do
      local list, warning = pm2.parse_jlist(bad)
      assert.are.same({}, list)
      assert.is_string(warning)
    end
    local list, warning = pm2.parse_jlist("[1, " .. stopped .. "]", 0)
    assert.are.equal(1, #list)
    assert.is_string(warning)
    list, warning = pm2.parse_jlist("[]")
    assert.are.same({}, list)
    assert.is_nil(warning)
  end)

  it("never repeats jlist output (it holds every app's environment) in the warning", function()
    local _, warning = pm2.parse_jlist('[{"pm2_env":{"TOKEN":"sk-secret"}}')
    assert.is_nil(warning:find("sk-secret", 1, true))
  end)

  it("cleans pm2 logs --raw output", function()
    local stdout = "\27[1m\27[90m[TAILING] Tailing last 10 lines for [logt] process (change the value with --lines option)\27[39m\27[22m\n"
      .. "\27[90m/h/logs/logt-out.log last 10 lines:\27[39m\nout1\n\nout2\n\n"
      .. "\27[90m/h/logs/logt-error.log last 10 lines:\27[39m\n\n"
    assert.are.same({ out = "out1\n\nout2\n", err = "err1\n" }, pm2.parse_logs(stdout, "err1\n", 10))
    assert.are.same({ out = "", err = "" }, pm2.parse_logs("[TAILING] Tailing last 5 lines for [x] process\n"))
  end)
end)

describe("galley.core.pm2 against the real pm2 #pm2 #slow", function()
  local home, work, weird
  local hostile = { "it's", "$HOME", "`echo no`", "a  b", "-n", "\\t", "~", "é", "\"q\"" }

  -- In the pm2 CLI's environment; env_clean must keep it away from the apps.
  local sentinel = ("galley-sentinel-%d"):format(runtime.getpid())

  local function pm2run(argv)
    return assert(proc.run { argv = argv, env = { PM2_HOME = home, NO_COLOR = "1", GALLEY_PM2_SENTINEL = sentinel },
      timeout_ms = 60000 })
  end

  local function jlist()
    local r = pm2run(pm2.jlist_argv())
    assert.are.equal(0, r.exit_code, r.stderr)
    local list, warning = pm2.parse_jlist(r.stdout)
    assert.is_nil(warning)
    return list, r.stdout
  end

  local function find(name)
    for _, item in ipairs((jlist())) do
      if item.name == name then return item end
    end
  end

  -- Polls (not a timing assertion) until ready(item) holds.
  local function wait_for(name, ready, what)
    for _ = 1, 300 do
      local item = find(name)
      if item and ready(item) then return item end
      runtime.sleep_ms(100)
    end
    error(("process %s never got %s"):format(name, what))
  end

  -- PM2 updates an ended app's status and its pid in two steps (a jlist between them says
  -- "stopped" with the old pid): done is both.
  local function wait_done(name)
    return wait_for(name, function(item)
      return item.status ~= "online" and item.status ~= "launching" and item.status ~= "waiting restart"
        and item.pid == 0
    end, "done")
  end

  local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("a")
    f:close()
    return s
  end

  -- pm2 may mark an app stopped before its log stream reaches the file: poll until the file
  -- ends with `last` (not a timing assertion).
  local function wait_log(path, last)
    local text
    for _ = 1, 300 do
      text = slurp(path)
      if text:sub(-#last) == last then break end
      runtime.sleep_ms(100)
    end
    return text
  end

  local function start(spec, opts)
    opts.env_clean = { PATH = os.getenv("PATH"), HOME = home, PM2_HOME = home }
    local r = pm2run(assert(pm2.start_argv(spec, opts)))
    assert.are.equal(0, r.exit_code, r.stderr)
  end

  setup(function()
    local r = assert(proc.run { argv = { "mktemp", "-d", "/tmp/galley-pm2.XXXXXX" } })
    home = r.stdout:gsub("\n$", "")
    work = home .. "/work"
    weird = work .. "/dir with 'quotes' $x"
    assert(proc.run { argv = { "mkdir", "-p", weird } })
  end)

  teardown(function()
    if home then
      proc.run { argv = pm2.kill_argv(), env = { PM2_HOME = home }, timeout_ms = 60000 }
      proc.run { argv = { "rm", "-rf", home } }
    end
  end)

  it("parses jlist on a fresh PM2_HOME, banner included", function()
    local list, stdout = jlist()
    assert.are.same({}, list)
    assert.truthy(stdout:find("\n", 1, true), "expected banner/daemon lines before the JSON")
  end)

  it("starts a payload with cwd, env and hostile args, stdin at EOF, no leaked env", function()
    -- The pause before exiting: PM2 can drop the tail of a process that exits right after
    -- printing (reference: PM2 pipes output to its log files; seen under load).
    local script = 'printf "%s\\n" "$PWD" "$VALUE" "${GALLEY_PM2_SENTINEL-unset}" "$#" "$@"; cat; echo done; echo oops >&2; sleep 1'
    local args = { "-c", script, "arg0" }
    table.move(hostile, 1, #hostile, #args + 1, args)
    start({ command = { kind = "argv", command = "bash", args = args, cwd = weird,
      env = { VALUE = "x'y $z" } } }, { name = "galley-t1" })
    local item = wait_done("galley-t1")
    assert.are.equal("stopped", item.status)
    assert.are.equal(0, item.exit_code)
    assert.are.equal(0, item.pid)
    local expected = table.concat({ weird, "x'y $z", "unset", tostring(#hostile), table.concat(hostile, "\n"), "done" }, "\n") .. "\n"
    assert.are.equal(expected, wait_log(item.out_log, "done\n"))
    assert.are.equal("oops\n", wait_log(item.err_log, "oops\n"))

    local r = pm2run(pm2.logs_argv("galley-t1", 50))
    assert.are.equal(0, r.exit_code)
    assert.are.same({ out = expected, err = "oops\n" }, pm2.parse_logs(r.stdout, r.stderr, 50))

    local _, raw = jlist()
    assert.is_nil(raw:find(sentinel, 1, true))
  end)

  it("reports 127 when the cwd is missing and nothing ran", function()
    start({ command = { kind = "shell", script = "echo ran", cwd = work .. "/missing" } }, { name = "galley-t2" })
    local item = wait_done("galley-t2")
    assert.are.equal(127, item.exit_code)
    assert.is_nil(slurp(item.out_log):find("ran", 1, true))
  end)

  it("passes the restart policy to pm2", function()
    start({ command = { kind = "shell", script = "exit 1" }, restart = { max_restarts = 2 } },
      { name = "galley-t3" })
    local item = wait_done("galley-t3")
    -- pm2 gives up once the quick exits reach max_restarts (pm2 7.0.4 shows one restart), long
    -- before its default of 16.
    assert.are.equal("errored", item.status)
    assert.is_true(item.restarts >= 1 and item.restarts <= 2, tostring(item.restarts))
  end)

  it("flushes, stops, describes and deletes", function()
    local item = find("galley-t1")
    assert.are.equal(0, pm2run(pm2.argv("flush", "galley-t1")).exit_code)
    assert.are.equal("", slurp(item.out_log))

    start({ command = { kind = "argv", command = "sleep", args = { "300" } } }, { name = "galley-t4" })
    wait_for("galley-t4", function(it) return it.status == "online" end, "online")
    assert.are.equal(0, pm2run(pm2.argv("stop", "galley-t4")).exit_code)
    assert.are.equal("stopped", find("galley-t4").status)
    assert.are.equal(0, pm2run(pm2.argv("describe", "galley-t4")).exit_code)

    for _, name in ipairs { "galley-t1", "galley-t2", "galley-t3", "galley-t4" } do
      assert.are.equal(0, pm2run(pm2.argv("delete", name)).exit_code)
    end
    assert.are.same({}, (jlist()))
    assert.are.equal(1, pm2run(pm2.argv("delete", "galley-t1")).exit_code)   -- gone: a result, not an error
    assert.are.equal(0, pm2run(pm2.kill_argv()).exit_code)
  end)
end)
