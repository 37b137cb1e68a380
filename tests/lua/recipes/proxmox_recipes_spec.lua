-- The recipes and CLI commands with --provider proxmox, through the galley binary, against
-- `galley emulate proxmox` (loopback; containers are sandboxes with a real sshd): boot-and-run
-- (command agent), file-io-smoke, examples/fan-out.lua, e2e-smoke (the real claude CLI talking to
-- the loopback FAKE Anthropic API when the CLI is installed), `galley gc` enforcing the TTL
-- recorded on a container, and `galley shell` through a real terminal (a private tmux server on
-- this machine) into the container's tmux; boot-and-run with the REAL claude CLI (the stand-in
-- when it is absent) on a template whose ~/.profile points it at the loopback FAKE Anthropic API;
-- the templates a run makes tagged, named at exit and deleted by `galley gc` unless kept. Nothing
-- is left behind.
local cjson = require("cjson")
local cli = require("support.claude_cli")
local codec = require("galley.core.codec")
local dashboard = require("support.dashboard")
local fake_api = require("support.fake_anthropic")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local recipes = require("support.recipes")
local spawn = require("galley.emulator.proxmox_spawn")
local support = require("support")
local task = require("galley.task")

describe("recipes with --provider proxmox on galley emulate proxmox #recipes #proxmox #slow", function()
  local em, state, home
  local galley = recipes.runner(function() return state, home end)

  local function pve_env(extra)
    local e = { PVE_URL = em.url, PVE_TOKEN_ID = em.token_id, PVE_TOKEN_SECRET = em.token_secret,
      PVE_SSH_PORT = tostring(em.ssh_port), PM2_HOME = home .. "/.pm2" }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  local function containers()
    local n = 0
    for _, c in ipairs(em.control("GET", "/state").containers or {}) do
      if not c.template then n = n + 1 end
    end
    return n
  end

  -- A provider in this process (outside any run: what it makes is not tagged).
  local function provider()
    return require("galley.providers.proxmox").new({ url = em.url, token_id = em.token_id,
      token_secret = em.token_secret, ssh_port = em.ssh_port, state_dir = state })
  end

  local function gone(fn, id)
    local ok, e = pcall(fn, id)
    return not ok and type(e) == "table" and e.code == "NOT_FOUND"
  end

  setup(function()
    em = spawn.start({ task_ms = 30 })
    state = recipes.mktemp_dir("pve-state")
    home = recipes.mktemp_dir("pve-home")
  end)

  teardown(function()
    if em then em.stop() end
    for _, d in ipairs({ state, home }) do
      if d then fs.remove_tree(d) end
    end
  end)

  it("runs boot-and-run with the command agent and cleans up", function()
    local code, out, err = galley({ "run", "boot-and-run", "--provider", "proxmox", "--agent", "command",
      "--prompt", "count these four words" }, pve_env())
    assert.are.equal(0, code, err)
    assert.truthy(err:find("provider proxmox (chosen)", 1, true), err)
    assert.truthy(out:find("words in the prompt: 4", 1, true), out)
    assert.truthy(out:find('"provider":"proxmox"', 1, true), out)
    assert.are.equal(0, containers())
  end)

  it("passes file-io-smoke and examples/fan-out.lua", function()
    local code, out, err = galley({ "run", "file-io-smoke", "--provider", "proxmox" }, pve_env())
    assert.are.equal(0, code, out .. err)
    assert.is_nil(out:find("not ok", 1, true), out)
    code, out, err = galley({ "run", support.source_dir .. "/examples/fan-out.lua", "--provider", "proxmox",
      "--count", "4" }, pve_env())
    assert.are.equal(0, code, err)
    assert.truthy(out:find("total: 23 words, 13 distinct", 1, true), out)
    assert.are.equal(0, containers())
  end)

  it("passes e2e-smoke --provider proxmox (the real claude CLI on the FAKE API when installed)", function()
    local args = { "run", "e2e-smoke", "--provider", "proxmox" }
    local api
    if cli.real() then
      api = fake_api.start({ reply = "FAKE reply: hi from proxmox" })
      for _, a in ipairs({ "--anthropic-base-url", api.base_url, "--model", "claude-galley-pve" }) do args[#args + 1] = a end
    else
      cli.warn("proxmox_recipes_spec")
    end
    local ok, code, out, err = pcall(galley, args, { PM2_HOME = home .. "/.pm2" })
    if api then api.stop() end
    assert.is_true(ok, tostring(code))
    assert.are.equal(0, code, out .. err)
    assert.truthy(err:find("all 15 checks passed", 1, true), err)
    if api then
      assert.truthy(out:find("# out| FAKE reply: hi from proxmox", 1, true), out)
      local req = assert(api.find_prompt("Say hi"), "the FAKE API never saw the prompt")
      assert.are.equal("claude-galley-pve", req.json.model)
    end
  end)

  it("galley gc stops a container past the TTL recorded on it", function()
    local p = provider()
    local old = p.instances.boot(nil, { ttl_seconds = 1, metadata = { galley_run = "run-0ld0ld0ld0ld",
      galley_host = "elsewhere" } })
    local young = p.instances.boot(nil, { ttl_seconds = 3600, metadata = { galley_run = "run-y0y0y0y0y0y0",
      galley_host = "elsewhere" } })
    assert.is_number(old.ttl.expires_at)
    while os.time() <= old.ttl.expires_at do task.sleep(200) end
    local code, out, err = galley({ "--json", "gc", "--provider", "proxmox" }, pve_env())
    assert.are.equal(0, code, out .. err)
    assert.truthy(out:find(old.id, 1, true), out)
    assert.falsy(out:find(young.id, 1, true), out)
    local ok, e = pcall(p.instances.get, old.id)
    assert.is_false(ok)
    assert.are.equal("NOT_FOUND", e.code)
    assert.are.equal("ready", p.instances.get(young.id).status)
    p.instances.terminate(young.id)
    p.close()
  end)

  it("galley dashboard lists the containers by default when PVE_URL is set, with health, and stops one", function()
    local code, out, err = galley({ "boot", "--provider", "proxmox" }, pve_env())
    assert.are.equal(0, code, err)
    local id = out:match("(%d+)%s*$")
    local dash = dashboard.start(pve_env({ HOME = home, GALLEY_STATE_DIR = state, GALLEY_LOG = "error",
      MORPH_API_KEY = "" }), {})
    local ok, e = pcall(function()
      local names, found = {}, nil
      -- a health sample may arrive on a later listing (dashboard.HEALTH_WAIT_MS)
      for _ = 1, 20 do
        local r = dash:request("GET", "/api/instances")
        assert.are.equal(200, r.status, r.body)
        names, found = {}, nil
        for _, entry in ipairs(r.json) do
          names[#names + 1] = entry.provider
          assert.is_nil(entry.error, r.body)
          for _, inst in ipairs(entry.instances) do
            if entry.provider == "proxmox" and tostring(inst.id) == id then found = inst end
          end
        end
        if found and found.health and found.health.mem_percent then break end
        task.sleep(500)
      end
      assert.are.same({ "local", "proxmox" }, names)
      assert.truthy(found, "container " .. id .. " not listed")
      assert.are.equal("ready", found.status)
      assert.is_number(found.health and found.health.mem_percent)
      local r = dash:request("POST", "/api/instance/stop", { body = { provider = "proxmox", id = id },
        csrf = dash:csrf() })
      assert.are.equal(200, r.status, r.body)
    end)
    dash:stop()
    if not ok then
      galley({ "stop", "--provider", "proxmox", id }, pve_env())
      error(e, 0)
    end
    assert.are.equal(0, containers())
  end)

  it("galley shell opens the container's tmux through ssh -t on a real terminal", function()
    local code, out, err = galley({ "boot", "--provider", "proxmox" }, pve_env())
    assert.are.equal(0, code, err)
    local id = out:match("(%d+)%s*$")
    local sock = home .. "/tmux.sock"
    local envs = {}
    for k, v in pairs(pve_env({ HOME = home, GALLEY_STATE_DIR = state, GALLEY_LOG = "error" })) do
      envs[#envs + 1] = k .. "=" .. support.q(v)
    end
    local line = "env " .. table.concat(envs, " ") .. " " .. support.q(support.bin) .. " shell --provider proxmox "
      .. id .. "; echo SHELL-EXIT=$?; sleep 60"
    local function tmux(...)
      return assert(proc.run({ argv = { "tmux", "-S", sock, ... }, timeout_ms = 10000 }))
    end
    tmux("new-session", "-d", "-x", "100", "-y", "30", line)
    local function screen_has(text)
      for _ = 1, 150 do
        local s = tmux("capture-pane", "-p").stdout
        if s:find(text, 1, true) then return s end
        task.sleep(100)
      end
      error("never saw " .. text .. " on the terminal:\n" .. tmux("capture-pane", "-p").stdout)
    end
    local ok, e = pcall(function()
      screen_has("#")
      tmux("send-keys", "echo hello-$((6*7)) in-tmux=${TMUX:+yes}", "Enter")
      screen_has("hello-42 in-tmux=yes")
      tmux("send-keys", "exit", "Enter")
      screen_has("SHELL-EXIT=0")
    end)
    tmux("kill-server")
    galley({ "stop", "--provider", "proxmox", id }, pve_env())
    if not ok then error(e, 0) end
    assert.are.equal(0, containers())
  end)

  it("runs boot-and-run --agent claude on a template pointing the " .. (cli.real() and "real" or "stand-in")
    .. " claude at the FAKE API, never showing the token", function()
    local real = cli.real()
    if not real then cli.warn("proxmox_recipes_spec") end
    local api = fake_api.start({ reply = "FAKE reply: hi from a proxmox template" })
    local p = provider()
    local tmpl
    local ok, e = pcall(function()
      -- The template: a container whose home has the ~/.profile and claude wrapper, snapshotted.
      local inst = p.instances.boot(nil, {})
      for _, f in ipairs(cli.home_files(api)) do
        p.files.write_file_atomic(inst.id, "~/" .. f.path, f.content, { mode = f.mode, create_dirs = true })
      end
      tmpl = p.instances.snapshot(inst.id)
      p.instances.terminate(inst.id)
      local token = "sk-ant-oat01-" .. codec.base64_encode(codec.random_bytes(60), "urlsafe"):gsub("=", "")
      local prompt = [[Say "hi" to $HOME and `whoami` on proxmox]]
      local code, out, err = galley({ "run", "boot-and-run", "--provider", "proxmox", "--snapshot", tmpl.id,
        "--agent", "claude", "--prompt", prompt, "--model", "claude-galley-pve", "--poll-ms", "200" },
        pve_env({ CLAUDE_ACCESS_TOKEN = token }))
      assert.are.equal(0, code, out .. err)
      assert.truthy(err:find("provider proxmox (chosen)", 1, true), err)
      assert.truthy(err:find("agent claude", 1, true), err)
      if real then
        local req = assert(api.find_prompt(prompt), "the FAKE API never saw the prompt byte for byte")
        assert.are.equal("claude-galley-pve", req.json.model)
        assert.are.same({ "bearer", token }, { fake_api.credential(req) })
        assert.truthy(out:find("FAKE reply: hi from a proxmox template\n", 1, true), out)
      else
        assert.truthy(out:find("prompt received: " .. prompt .. "\n", 1, true), out)
        assert.truthy(out:find("argv: -p --model claude-galley-pve", 1, true), out)
      end
      assert.truthy(out:find("token sha256: " .. codec.sha256(token) .. "\n", 1, true), out)
      assert.truthy(out:find("credentials mode: 600\n", 1, true), out)
      assert.truthy(out:find("token in argv: no\n", 1, true), out)
      assert.truthy(out:find("token in instance environments: no\n", 1, true), out)
      assert.truthy(out:find("token in pm2 jlist: no\n", 1, true), out)
      assert.falsy((out .. err):find(token, 1, true))
      assert.falsy(cjson.encode(em.control("GET", "/state")):find(token, 1, true))
      assert.are.equal(0, containers())
    end)
    if tmpl then pcall(p.snapshots.delete, tmpl.id) end
    api.stop()
    p.close()
    if not ok then error(e, 0) end
  end)

  it("tags the templates a run makes, names them at exit, and galley gc deletes the unkept ones only", function()
    local path = state .. "/snap-run.lua"
    assert(fs.write_atomic(path, [[
local contracts = require("galley.contracts")
local p = require("galley.providers").new("proxmox", {})
local inst = p.instances.boot()
local left = p.instances.snapshot(inst.id)
local kept = p.instances.snapshot(inst.id, { keep = true })
local image = p.snapshots.build(p.default_snapshot(), { contracts.shell("echo built > ~/built") },
  { salt = tostring(os.time()) })
print(left.id, kept.id, image.id)
]], { mode = "644" }))
    local code, out, err = galley({ "run", path }, pve_env())
    assert.are.equal(0, code, out .. err)
    local left, kept, image = out:match("^(%S+)\t(%S+)\t(%S+)\n$")
    assert.truthy(left, out)
    local p = provider()
    local ok, e = pcall(function()
      assert.truthy(err:find("snapshot " .. left .. " made by this run is left", 1, true), err)
      assert.truthy(err:find("kept snapshot " .. kept, 1, true), err)
      assert.falsy(err:find(image, 1, true), err) -- an image is not the run's
      local run_id = p.snapshots.get(left).metadata.galley_run
      assert.truthy(run_id)
      assert.are.equal(run_id, p.snapshots.get(kept).metadata.galley_run)
      assert.are.equal("1", p.snapshots.get(kept).metadata.galley_keep)
      assert.is_nil(p.snapshots.get(image).metadata.galley_run)
      assert.are.equal(0, containers())
      local gcode, gout, gerr = galley({ "--json", "gc", "--provider", "proxmox" }, pve_env())
      assert.are.equal(0, gcode, gout .. gerr)
      local found = {}
      for _, c in ipairs(cjson.decode(gout)) do found[c.id] = c end
      assert.are.same({ kind = "snapshot", action = "deleted" }, { kind = found[left].kind, action = found[left].action })
      assert.is_nil(found[kept])
      assert.is_nil(found[image])
      assert.truthy(gerr:find("skipped proxmox snapshot " .. kept, 1, true), gerr)
      assert.is_true(gone(p.snapshots.get, left))
      assert.are.equal(kept, p.snapshots.get(kept).id)
      assert.are.equal(image, p.snapshots.get(image).id)
    end)
    for _, id in ipairs({ kept, image }) do pcall(p.snapshots.delete, id) end
    p.close()
    if not ok then error(e, 0) end
  end)
end)
