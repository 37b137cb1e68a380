-- The morph-recon recipe through the galley binary on `galley emulate`, in both argv modes: the
-- report says how the emulator was started (argv_mode) and what it decides where Morph is not
-- documented (galley help emulate), and nothing is left behind.
local cjson = require("cjson")
local proc = require("galley.core.proc")
local emulator = require("support.emulator")

local recipes = require("support.recipes")
local mktemp_dir = recipes.mktemp_dir

local state, home

local galley = recipes.runner(function() return state, home end)

describe("recipe morph-recon #recipes", function()
  before_each(function()
    state, home = mktemp_dir("mrecon-state"), mktemp_dir("mrecon-home")
  end)

  after_each(function()
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  -- Runs the recon on a fresh emulator; returns exit code, stdout, stderr, and what was left.
  local function recon(mode, args, no_gateway)
    local em = emulator.start({ boot_delay_ms = 300, argv_mode = mode })
    local argv = { "run", "morph-recon", "--snapshot", emulator.SNAPSHOT, "--max-command-bytes", "262144" }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
    local env = { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key }
    if not no_gateway then env.MORPH_SSH_HOSTNAME, env.MORPH_SSH_PORT = "127.0.0.1", tostring(em.ssh_port) end
    local ok, code, out, err = pcall(galley, argv, env)
    local left = ok and em:state()
    em:stop()
    assert(ok, code)
    return code, out, err, left
  end

  for _, mode in ipairs(emulator.ARGV_MODES) do
    it("reports argv_mode " .. mode .. " on galley emulate --argv-mode " .. mode .. ", and leaves nothing", function()
      local code, out, err, left = recon(mode, { "--json" })
      assert.are.equal(0, code, err)
      local r = cjson.decode(out)
      assert.are.equal(mode, r.argv_mode)
      assert.are.equal(mode == "exec" and "a b," or "a,b,", r.argv_probe.stdout)
      -- the provider's exec-form probe: a ~200 KiB argv runs as is, or (joined) not at all
      if mode == "exec" then
        assert.are.same({ true, 0, true }, { r.large_argv.runs, r.large_argv.exit_code, r.large_argv.output_ok })
        assert.are.equal("argv", r.auto_exec_form)
      else
        assert.are.same({ false, 503, "SERVER_ERROR" }, { r.large_argv.runs, r.large_argv.status, r.large_argv.code })
        assert.are.equal("string", r.auto_exec_form)
      end
      assert.are.same({ "/usr/bin/dash", "/bin/sh", false }, { r.shell.exe, r.shell.arg0, r.shell.login })
      assert.are.same({ "/root", "root" }, { r.home, r.user })
      -- the emulator reports a death by TERM as 143; a spawned command's trap gets kill("TERM")
      assert.are.same({ 143, "/usr/bin/setsid" }, { r.signal_exit_code, r.setsid })
      assert.are.same({ true, true, 7, true, true }, { r.spawn_kill.ok, r.spawn_kill.started, r.spawn_kill.exit_code,
        r.spawn_kill.trap_ran, r.spawn_kill.signalled })
      -- a one-exec write: the instance reads its base64 back from its own argv (in join mode the
      -- line the service's shell runs execs /bin/sh with the same argv)
      assert.are.same({ true, true }, { r.file_write.content_ok, r.file_write.argv_readback })
      assert.is_string(r.path)
      assert.are.equal("pending", r.boot.answer_status)
      assert.are.same({ 409, "CONFLICT", "string" },
        { r.exec_on_pending.status, r.exec_on_pending.code, r.exec_on_pending.detail })
      local s = r.start_from_pending_snapshot
      assert.are.same({ true, "pending", 409 }, { s.observed, s.snapshot_status, s.status })
      assert.are.equal("replace", r.metadata)
      assert.are.same({ 204, 404, "NOT_FOUND" },
        { r.delete_twice.first.status, r.delete_twice.second.status, r.delete_twice.second.code })
      assert.are.same({ 404, "string" }, { r.not_found_body.status, r.not_found_body.detail })
      assert.are.same({ 422, "list" }, { r.validation_body.status, r.validation_body.detail })
      -- One argument of the shell: Linux's 128 KiB per argument, its NUL included.
      assert.are.equal(128 * 1024 - 1, r.largest_command_bytes)
      -- the emulator's SSH gateway, as MORPH_SSH_HOSTNAME/PORT name it
      assert.are.same({ true, true, 0, "root", "/root", true },
        { r.ssh_gateway.probed, r.ssh_gateway.login, r.ssh_gateway.exit_code, r.ssh_gateway.user, r.ssh_gateway.home,
          r.ssh_gateway.stdin_ok })
      assert.are.same({ tried = 12, quiet = 12 }, r.ssh_gateway.sessions) -- (the emulator has no MaxSessions)
      assert.are.equal(0, #left.instances)
      assert.are.equal(1, #left.snapshots) -- the seed only
      assert.are.equal(emulator.SNAPSHOT, left.snapshots[1].id)
    end)
  end

  it("prints a short text report", function()
    local code, out, err = recon("join")
    assert.are.equal(0, code, err)
    assert.matches("^morph recon on morphvm_%S+ at http://127%.0%.0%.1:%d+/api", out)
    for _, want in ipairs({
      "argv_mode:             join (printf %s, 'a b' printed \"a,b,\")",
      "one-element shell:     /usr/bin/dash ($0 /bin/sh), login shell: no",
      "boot answers:          pending",
      "exec on pending:       409 CONFLICT, detail string",
      "instance metadata:     replace",
      "DELETE twice:          204, then 404 NOT_FOUND, detail string",
      "largest command:       131071 bytes",
      "killed by a signal:    exit code 143 (kill -TERM $$); setsid /usr/bin/setsid",
      "spawn kill:            TERM reached the command's trap, exit 7",
      "file write (60 KiB):   arrived whole; base64 read back from the instance's argv (/proc)",
      "large argv (~200 KiB): does not run (HTTP 503 SERVER_ERROR)",
      "auto exec form:        string (every exec one line, ~88 KiB of content a request)",
      "ssh gateway:           127.0.0.1:",
      "login works, root in /root, stdin byte for byte; 12 of 12 commands at once on one connection quiet",
    }) do
      assert.truthy(out:find(want, 1, true), want .. "\n" .. out)
    end
  end)

  it("says when no gateway is known, and when its login is refused", function()
    local code, out, err = recon("exec", { "--json" }, true)
    assert.are.equal(0, code, err)
    local r = cjson.decode(out)
    assert.are.same({ false }, { r.ssh_gateway.probed })
    assert.is_string(r.ssh_gateway.why)
    local em = emulator.start({ boot_delay_ms = 0 })
    local c2, out2, err2 = galley({ "run", "morph-recon", "--snapshot", emulator.SNAPSHOT, "--max-command-bytes",
      "8192", "--no-pending-snapshot", "--json" }, { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key,
      MORPH_SSH_HOSTNAME = "127.0.0.1", MORPH_SSH_PORT = "1" })
    em:stop()
    assert.are.equal(0, c2, err2)
    local r2 = cjson.decode(out2)
    assert.are.same({ true, false }, { r2.ssh_gateway.probed, r2.ssh_gateway.login })
    assert.is_string(r2.ssh_gateway.error)
  end)

  it("exits 2 without MORPH_API_KEY, booting nothing", function()
    local code, _, err = galley({ "run", "morph-recon" })
    assert.are.equal(2, code)
    assert.truthy(err:find("MORPH_API_KEY", 1, true), err)
  end)
end)
