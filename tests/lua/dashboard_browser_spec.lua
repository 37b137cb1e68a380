-- galley dashboard in a real browser: Debian's chromium, headless, driven by puppeteer-core from
-- npm (tests/browser, installed by scripts/setup; nothing downloads a browser). On the local
-- provider and on `galley emulate`: two instances, a PM2 session printing a line a second and a
-- tmux session. Screenshots go to <build dir>/artifacts/dashboard/ (looked at, never compared).
local cjson = require("cjson")
local proc = require("galley.core.proc")
local cli = require("support.cli")
local dashboard = require("support.dashboard")
local support = require("support")
local logmod = require("galley.log")

local source = support.source_dir
local browser_dir = source .. "/tests/browser"
local bin = support.bin:sub(1, 1) == "/" and support.bin or (source .. "/" .. support.bin)
local artifacts = bin:gsub("/[^/]+$", "") .. "/artifacts/dashboard"

local function have(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

for _, target in ipairs(cli.TARGETS) do
  describe("galley dashboard in headless chromium on " .. target .. " #slow #dashboard #browser", function()
    local t, ids, dash, seen

    setup(function()
      assert(have("/usr/bin/chromium"), "chromium is missing: run scripts/setup")
      assert(have(browser_dir .. "/node_modules/puppeteer-core/package.json"),
        "puppeteer-core is missing: run scripts/setup (npm install --prefix tests/browser)")
      assert(proc.run({ argv = { "mkdir", "-p", artifacts } }).exit_code == 0)
      t = cli.start(target)
      ids = { t:boot(), t:boot() }
      local p = t:provider()
      local pm2 = require("galley.process.pm2").new({ provider = p, log = logmod.silent() })
      pm2.start(ids[1], pm2.process("ticker").command("sh", { "-c",
        'i=0; while true; do i=$((i+1)); echo "line $i"; sleep 1; done' }).build())
      local tmux = require("galley.process.tmux").new({ provider = p, log = logmod.silent() })
      tmux.start(ids[1], { command = { kind = "argv", command = "bash", args = { "--norc", "-i" }, name = "shell" } },
        { width = 120, height = 30 })
      dash = dashboard.start(t.env, { "--provider", t.provider_name })
      local r = proc.run({ argv = { "node", browser_dir .. "/dashboard.mjs", cjson.encode({
        url = dash.url, provider = t.provider_name, instances = ids, pm2 = "ticker", tmux = "shell",
        artifacts = artifacts }) }, cwd = browser_dir, timeout_ms = 600000,
        env = { HOME = t.env.HOME }, env_mode = "extend" }) -- chromium's files go to the temporary home
      local ok, decoded = pcall(cjson.decode, r.stdout:match("[^\n]*\n?$") or "")
      seen = ok and decoded or { error = "no JSON from the driver: " .. r.stdout .. r.stderr }
    end)

    teardown(function()
      if dash then dash:stop() end
      if t then t:stop() end
    end)

    it("the driver ran every step", function()
      assert.is_nil(seen.error, seen.error)
      assert.are.same({ "no-token", "foreign-host", "signed-in", "overview", "sessions", "pm2-log", "tmux", "stop" },
        seen.steps)
    end)

    it("answers 403 without the token and to a foreign Host; the cookie is HttpOnly and SameSite=Strict", function()
      assert.are.equal(403, seen.no_token_status)
      assert.are.equal(403, seen.foreign_host_status)
      assert.are.equal(200, seen.signed_in_status)
      assert.is_nil(seen.url_after:find("token=", 1, true), "the token stays out of the address bar")
      assert.is_true(seen.cookie_http_only)
      assert.is_false(seen.cookie_visible_to_js)
    end)

    it("lists both instances with their health", function()
      for _, id in ipairs(ids) do
        local h = seen.health and seen.health[id]
        assert.truthy(h, cjson.encode(seen.health or {}))
        assert.truthy(h.cpu:find("%", 1, true) and h.mem:find("%", 1, true) and h.disk:find("%", 1, true), cjson.encode(h))
        assert.truthy(h.uptime ~= "-" and h.load ~= "-", cjson.encode(h))
      end
    end)

    it("shows new log lines as they are printed, none twice, and resumes after a reload", function()
      assert.truthy(seen.three_new_lines_ms < 30000, "3 new lines took " .. tostring(seen.three_new_lines_ms) .. " ms")
      local prev
      for _, l in ipairs(seen.log_lines) do
        local n = tonumber(l:match("^line (%d+)$"))
        assert.truthy(n, l)
        if prev then assert.are.equal(prev + 1, n, "after line " .. prev) end
        prev = n
      end
      local last = tonumber(seen.log_before_reload_last:match("%d+"))
      local after = seen.log_after_reload
      assert.truthy(#after >= 1)
      assert.are.equal("line " .. (last + 1), after[1])
    end)

    it("types keys into the tmux session and shows its screen with colours", function()
      assert.truthy(seen.keys_shown_ms < 30000)
      assert.truthy(seen.screen_text:find(seen.marker, 1, true))
      assert.truthy(seen.dialogs >= 2, "actions ask for confirmation")
    end)

    it("refuses a POST without the CSRF token", function()
      assert.are.equal(403, seen.post_without_csrf)
      assert.is_false(seen.screen_has_should_not_run)
    end)

    it("stop removes the instance", function()
      assert.is_true(seen.stopped_row_gone)
      assert.is_true(seen.first_still_listed)
      local code, out = t:galley("ls --json --all")
      assert.are.equal(0, code)
      assert.is_nil(out:find(ids[2], 1, true), out)
    end)
  end)
end

describe("galley dashboard shows a live recipe.parallel fan-out of 8 agents on the emulator #slow #dashboard #browser",
  function()
  local t, dash, run_h, seen, run_id

  setup(function()
    t = cli.start("emulator")
    local argv = { bin, "run", source .. "/examples/dashboard-fanout.lua", "--count", "8", "--seconds", "300" }
    run_h = assert(proc.spawn({ argv = argv, env = t.env, env_mode = "extend" }))
    dash = dashboard.start(t.env, { "--provider", "morph" })
    -- the run's id, from its run file
    local deadline = require("galley.core.runtime").now_ms() + 60000
    repeat
      local r = dash:request("GET", "/api/state")
      for _, run in ipairs(r.json.runs or {}) do if run.state == "running" then run_id = run.id end end
      if not run_id then require("galley.task").sleep(200) end
    until run_id or require("galley.core.runtime").now_ms() > deadline
    assert(run_id, "the run did not start")
    local r = proc.run({ argv = { "node", browser_dir .. "/dashboard.mjs", cjson.encode({ mode = "fanout",
      url = dash.url, provider = "morph", run = run_id, count = 8, artifacts = artifacts }) },
      cwd = browser_dir, timeout_ms = 600000, env = { HOME = t.env.HOME }, env_mode = "extend" })
    local ok, decoded = pcall(cjson.decode, r.stdout:match("[^\n]*\n?$") or "")
    seen = ok and decoded or { error = "no JSON from the driver: " .. r.stdout .. r.stderr }
  end)

  teardown(function()
    if run_h then
      pcall(run_h.kill, run_h, "TERM") -- the run stops its instances
      run_h:wait(120000)
      run_h:close()
    end
    if dash then dash:stop() end
    if t then t:stop() end
  end)

  it("lists the run as running with its 8 instances and their health", function()
    assert.is_nil(seen.error, seen.error)
    assert.are.same({ "fanout" }, seen.steps)
    assert.are.equal(8, seen.fanout_rows)
  end)
end)
