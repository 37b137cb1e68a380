-- Honest errors on the local provider and the emulator: an instance gone because its TTL ran
-- out is said to have expired; Ctrl-C is "interrupted; cleaned up N instance(s)".
local cli = require("support.cli")
local support = require("support")
local q = support.q

for _, target in ipairs(cli.TARGETS) do
  describe("galley run's errors on " .. target .. " #cli", function()
    local t
    setup(function() t = cli.start(target) end)
    teardown(function() if t then t:stop() end end)

    local function provider_line()
      return target == "local" and 'local p = require("galley.providers.local").new()\n'
        or 'local p = require("galley.providers.morph").new()\n'
    end

    it("says an instance expired when its TTL ran out", function()
      local path = support.script(provider_line()
        .. "local inst = p.instances.boot(" .. q(t.snapshot) .. ", { ttl_seconds = 1 })\n"
        .. 'require("galley.recipe").sleep(2600)\n'
        .. 'p.exec(inst.id, { kind = "argv", command = "true" })\n')
      local code, _, err = t:galley("run " .. q(path))
      assert.are.equal(1, code)
      assert.truthy(err:find("NOT_FOUND", 1, true), err)
      assert.truthy(err:find("expired: its TTL of 1 s ran out", 1, true), err)
    end)

    it("shows an instance's control characters in a run's error instead of sending them", function()
      -- the error quotes what the instance printed: an OSC title and a screen clear
      local path = support.script(provider_line()
        .. "local inst = p.instances.boot(" .. q(t.snapshot) .. ", { ttl_seconds = 60 })\n"
        .. 'local r = p.exec(inst.id, "printf \'bad \\\\033]0;pwned\\\\007 \\\\033[2J\'")\n'
        .. 'p.instances.stop(inst.id)\n'
        .. 'error(require("galley.errors").new("PROCESS_ERROR", "the instance said: " .. r.stdout))\n')
      local code, _, err = t:galley("run " .. q(path))
      assert.are.equal(1, code)
      assert.is_nil(err:find("\27", 1, true), err)
      assert.truthy(err:find("the instance said: bad ^[]0;pwned^G ^[[2J", 1, true), err)
    end)

    it("lists the snapshots that exist when boot-and-run's snapshot does not", function()
      local code, _, err = t:galley("run boot-and-run --agent command --provider " .. t.provider_name
        .. " --snapshot no_such_snapshot")
      assert.are.equal(1, code)
      assert.truthy(err:find("NOT_FOUND", 1, true), err)
      assert.truthy(err:find("snapshots that exist: ", 1, true) and err:find(t.snapshot, 1, true), err)
      if target == "emulator" then
        assert.truthy(err:find("the emulator's ready snapshot is snapshot_galleydev", 1, true), err)
      end
      assert.falsy(err:find("boot-and-run.lua:", 1, true), err)
    end)

    it("names the base URL on an authentication error, without an attempt count", function()
      if target ~= "emulator" then return end -- the local provider has no URL and no key
      local path = support.script('require("galley.providers.morph").new().instances.list()\n')
      local env = {}
      for k, v in pairs(t.env) do env[k] = v end
      env.MORPH_API_KEY = "morph_wrong_key"
      local code, _, err = support.galley("run " .. q(path), nil, env)
      assert.are.equal(1, code)
      assert.truthy(err:find("AUTHENTICATION_ERROR", 1, true), err)
      assert.truthy(err:find("base URL: " .. t.env.MORPH_BASE_URL, 1, true), err)
      assert.falsy(err:find("attempt:", 1, true), err)
    end)

    it("reports Ctrl-C as interrupted with the instances cleaned up, exit 130", function()
      local path = support.script(provider_line()
        .. "local inst = p.instances.boot(" .. q(t.snapshot) .. ")\n"
        .. 'require("galley.recipe").step("wait", function()\n'
        .. '  io.stdout:write("ready\\n") io.stdout:flush()\n'
        .. '  require("galley.recipe").sleep(60000)\nend)\n')
      local out = support.tmpname()
      local env = {}
      for k, v in pairs(t.env) do env[#env + 1] = k .. "=" .. q(v) end
      local cmd = ("env %s %s run %s >%s 2>&1 & pid=$!; for i in $(seq 1 200); do grep -q ready %s && break; "
        .. "sleep 0.05; done; kill -INT $pid; wait $pid; echo \"exit=$?\" >>%s"):format(table.concat(env, " "),
        q(support.bin), q(path), out, out, out)
      os.execute("bash -c " .. q(cmd))
      local f = assert(io.open(out))
      local text = f:read("a")
      f:close()
      os.remove(out)
      assert.truthy(text:find("interrupted; cleaned up 1 instance(s)", 1, true), text)
      assert.truthy(text:find("exit=130", 1, true), text)
      assert.falsy(text:find("terminating failed", 1, true), text)
      assert.falsy(text:find(path .. ":", 1, true), text)
      assert.falsy(text:find("FAILED", 1, true), text)
    end)
  end)
end
