-- Interrupt trials (issue #12): 30 runs of boot-and-run on `galley emulate`, each sent SIGINT or
-- SIGTERM at a random moment. Every run must leave 0 instances and 0 PM2 daemons, and exit with
-- the code that matches its signal (130 for SIGINT, 143 for SIGTERM), or 0 when it had already
-- finished. GALLEY_TRIALS_SEED replays a seed; GALLEY_TRIALS sets the count. It counts the PM2
-- daemons of its own emulator's instances only, and its own emulator's instances, so it runs
-- beside other specs (it ran alone, one of two cores idle for its ~70 s).
local support = require("support")
local emulator = require("support.emulator")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

-- PM2 daemons running in this emulator's instances (their mounts come from its state directory),
-- so other PM2 users on the machine do not count.
local function pm2_daemons(em)
  local r = proc.run({ argv = { "/bin/sh", "-c", [[
for p in $(pgrep -f 'PM2 v[0-9.]*: God Daemon'); do
  grep -qF -- "$1" "/proc/$p/mountinfo" 2>/dev/null && echo "$p"
done; true]], "sh", em.state_dir }, timeout_ms = 10000 })
  local n = 0
  for _ in (r and r.stdout or ""):gmatch("%d+") do n = n + 1 end
  return n
end

describe("interrupt trials: boot-and-run on galley emulate #slow #run", function()
  local em, state

  setup(function()
    em = emulator.start({ boot_delay_ms = 50, latency_ms = 20 })
    state = support.tmpname()
    os.remove(state)
  end)

  teardown(function()
    em:stop()
    os.execute("rm -rf " .. support.q(state))
  end)

  it("leaves nothing behind and exits 130/143 matching the signal", function()
    local seed = tonumber(os.getenv("GALLEY_TRIALS_SEED") or "") or os.time()
    local trials = tonumber(os.getenv("GALLEY_TRIALS") or "") or 30
    math.randomseed(seed)
    local daemons_before = pm2_daemons(em)
    local env = { PATH = os.getenv("PATH"), HOME = state, GALLEY_STATE_DIR = state, GALLEY_LOG = "error",
      MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url, LANG = "C.UTF-8" }
    local table_rows = {}
    for trial = 1, trials do
      local sig = trial % 2 == 0 and "TERM" or "INT"
      local delay = math.random(0, 4000)
      local h = assert(proc.spawn({ argv = { support.bin, "-q", "run", "boot-and-run", "--provider", "morph",
        "--snapshot", emulator.SNAPSHOT, "--agent", "command", "--no-credentials", "--poll-ms", "200" },
        env = env, env_mode = "replace", stdin = "null" }))
      local r = h:wait(delay)
      local sent = false
      if not r then
        h:kill(sig)
        sent = true
        r = h:wait(90000)
      end
      h:close()
      local where = ("trial %d (seed %d, %s after %d ms)"):format(trial, seed, sig, delay)
      assert.is_not_nil(r, where .. ": did not exit")
      local want = sig == "TERM" and 143 or 130
      if sent then
        assert.is_true(r.exit_code == want or r.exit_code == 0,
          ("%s: exit %d, expected %d (or 0 when it had finished)\n%s"):format(where, r.exit_code, want, r.stderr))
      else
        assert.are.equal(0, r.exit_code, where .. "\n" .. r.stderr)
      end
      local alive = 0
      for _, inst in ipairs(em:state().instances or {}) do
        if inst.status ~= "deleted" then alive = alive + 1 end
      end
      assert.are.equal(0, alive, where .. ": instances left\n" .. r.stderr)
      -- A PM2 daemon inside an instance dies with it; give the kernel a moment to reap.
      local daemons = pm2_daemons(em)
      for _ = 1, 50 do
        if daemons <= daemons_before then break end
        runtime.sleep_ms(100)
        daemons = pm2_daemons(em)
      end
      assert.is_true(daemons <= daemons_before, where .. ": PM2 daemons left: " .. daemons)
      table_rows[#table_rows + 1] = ("%2d %-4s %5d ms exit %3d"):format(trial, sig, delay, r.exit_code)
    end
    print("\n" .. table.concat(table_rows, "\n"))
  end)
end)
