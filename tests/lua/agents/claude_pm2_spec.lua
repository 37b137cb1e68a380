-- The Claude agent's ProcessSpec run under real PM2 (galley.process.pm2) with a stand-in
-- `claude` on the instance (support.fake_claude), on every provider
-- support.host_provider.providers() lists. Proves what reaches claude is byte for byte what the
-- caller gave: prompt on stdin, system prompt and extra args as arguments, a prompt over 128 KiB
-- through spec.files.
local claude = require("galley.agents.claude")
local fake = require("support.fake_claude")
local host = require("support.host_provider")
local logmod = require("galley.log")
local pm2mod = require("galley.process.pm2")

local wait_for = host.wait_for

-- Quotes, $, backticks, backslashes, newlines, CR, non-ASCII and a leading dash.
local NASTY = "-p 'single' \"double\" $HOME ${X:-y} $(echo no) `echo no` \\n \\ \n\ttab\r\n"
  .. "ünïcödé 日本語 🚀 %s %% !! \n\n"
local ALL_BYTES = {}
for b = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(b) end
ALL_BYTES = table.concat(ALL_BYTES)

local function index_of(list, value)
  for i, v in ipairs(list or {}) do
    if v == value then return i end
  end
end

local function flag_value(argv, flag)
  local i = index_of(argv, flag)
  return i and argv[i + 1]
end

for _, target in ipairs(host.providers()) do
  describe(("the Claude agent under PM2 on the %s provider #agents #pm2 #%s"):format(target.label, target.label),
    function()
      local t, p, inst, pm, f

      setup(function()
        t = target.new()
        p = t.provider
        inst = t.boot()
        pm = pm2mod.new(host.manager_opts(t, { provider = p, log = logmod.silent() }))
        f = fake.install(p, inst.id)
      end)

      teardown(function()
        if inst then p.instances.terminate(inst.id) end
        if t then t.cleanup() end
      end)

      -- Starts the spec under PM2 and waits for claude (the fake) to finish.
      local function run(spec)
        fake.reset(p, inst.id, f)
        local info = pm.start(inst.id, spec)
        local done = wait_for(function()
          for _, item in ipairs(pm.list(inst.id)) do
            if item.name == info.name and item.status == "stopped" then return item end
          end
        end, info.name .. " to finish")
        local r = fake.record(p, inst.id, f)
        r.exit_code = done.exit_code
        r.name = info.name
        return r
      end

      local function agent(opts)
        opts = opts or {}
        opts.cwd = opts.cwd or f.cwd
        return claude.new(opts)
      end

      it("delivers prompt, system prompt and extra args byte for byte, found by name on a login PATH", function()
        local system_prompt = "Be terse.\n" .. NASTY .. "'\n\n"
        local extra = { "--max-turns", "3", "--allowedTools", "Bash(git diff *) Read", "it's $HOME `x`", "" }
        local spec = agent().to_process_spec({ session_name = "nasty quotes", prompt = NASTY .. ALL_BYTES,
          system_prompt = system_prompt, extra_args = extra, env = f.env })
        assert.is_nil(spec.files)
        local r = run(spec)
        assert.are.equal("cc-nasty-quotes", r.name)
        assert.are.equal(0, r.exit_code)
        assert.are.equal(NASTY .. ALL_BYTES, r.stdin)
        assert.are.equal(system_prompt, flag_value(r.argv, "--append-system-prompt"))
        assert.are.equal("-p", r.argv[1])
        assert.are.equal("sonnet", flag_value(r.argv, "--model"))
        local first = index_of(r.argv, "--max-turns")
        assert.are.same(extra, { table.unpack(r.argv, first, first + #extra - 1) })
        assert.are.equal(f.cwd, r.cwd)
        assert.are.same({ CLAUDECODE = false, ANTHROPIC_API_KEY = false, IS_SANDBOX = "1" }, r.env)
        -- PM2 writes the log a moment after the exit it reports.
        local logs
        pcall(wait_for, function()
          logs = pm.logs(inst.id, r.name)
          return logs.out:find("fake claude: ", 1, true)
        end, "claude's output", 15000)
        assert.truthy(logs.out:find("fake claude: ", 1, true), logs.out .. logs.err)
        pm.delete(inst.id, r.name)
      end)

      it("ends with claude's exit status, which PM2 records", function()
        local env = { FAKE_CLAUDE_EXIT = "3" }
        for k, v in pairs(f.env) do env[k] = v end
        local r = run(agent().to_process_spec({ session_name = "exit", prompt = "hi", env = env }))
        assert.are.equal("hi", r.stdin)
        assert.are.equal(3, r.exit_code)
        pm.delete(inst.id, r.name)
      end)

      it("uploads a prompt over 128 KiB through spec.files and feeds it on stdin", function()
        local chunk = NASTY .. ALL_BYTES
        local prompt = chunk:rep(math.ceil(200 * 1024 / #chunk))
        assert.is_true(#prompt > 128 * 1024)
        local spec = agent().to_process_spec({ session_name = "big", prompt = prompt, system_prompt = "small\n",
          env = f.env })
        assert.are.equal(1, #spec.files)
        assert.are.equal("~/.galley/sessions/cc-big/prompt.txt", spec.files[1].path)
        local r = run(spec)
        assert.are.equal(0, r.exit_code)
        assert.are.equal(#prompt, #r.stdin)
        assert.are.equal(prompt, r.stdin)
        assert.are.equal("small\n", flag_value(r.argv, "--append-system-prompt"))
        local mode = p.exec(inst.id, { kind = "argv", command = "stat",
          args = { "-c", "%a", f.home .. "/.galley/sessions/cc-big/prompt.txt" } }).stdout
        assert.are.equal("600\n", mode)
        pm.delete(inst.id, r.name)
      end)

      it("uploads a large system prompt and passes it with --append-system-prompt-file", function()
        local system_prompt = (NASTY .. "rules\n"):rep(3000)
        local spec = agent().to_process_spec({ session_name = "bigsys", prompt = "short 'q'\n",
          system_prompt = system_prompt, env = f.env })
        assert.are.equal(1, #spec.files)
        local r = run(spec)
        assert.are.equal(0, r.exit_code)
        assert.are.equal("short 'q'\n", r.stdin)
        assert.is_nil(index_of(r.argv, "--append-system-prompt"))
        assert.are.equal(system_prompt, r.system_prompt_file)
        pm.delete(inst.id, r.name)
      end)
    end)
end
