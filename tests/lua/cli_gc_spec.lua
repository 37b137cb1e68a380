-- galley gc says what it skipped (kept instances, providers it could not use or reach), exits 1
-- when a provider asked for is unavailable, and removes the run files of finished runs; on the
-- local provider and on the emulator.
local cjson = require("cjson")
local cli = require("support.cli")
local support = require("support")
local q = support.q

for _, target in ipairs(cli.TARGETS) do
  describe("galley gc on " .. target .. " #cli", function()
    local t
    setup(function() t = cli.start(target) end)
    teardown(function() if t then t:stop() end end)

    local function runs()
      local p = io.popen("ls " .. q(t.env.GALLEY_STATE_DIR .. "/runs") .. " 2>/dev/null")
      local out = p:read("a")
      p:close()
      return out
    end

    it("names the kept instances it skipped and removes the finished runs' files", function()
      local boot = target == "local" and 'require("galley.providers.local").new().instances.boot()'
        or 'require("galley.providers.morph").new().instances.boot("snapshot_galleydev")'
      local path = support.script("print(" .. boot .. ".id)\n")
      local code, out, err = t:galley("run --keep " .. q(path))
      assert.are.equal(0, code, err)
      local id = out:gsub("%s+$", "")
      -- a run that died without finishing (SIGKILL) leaves its file: pid of a process that is gone
      local h = require("galley.core.proc").spawn({ argv = { "true" } })
      local dead = h:pid()
      h:wait()
      h:close()
      local f = assert(io.open(t.env.GALLEY_STATE_DIR .. "/runs/run-0badc0ffee00", "w"))
      f:write(("pid=%d\nrecipe=crashed\nstarted=0\n"):format(dead))
      f:close()
      assert.truthy(runs():find("run-0badc0ffee00", 1, true))
      local gcode, gout, gerr = t:galley("--json gc --provider " .. t.provider_name)
      assert.are.equal(0, gcode, gerr)
      assert.are.same({}, cjson.decode(gout))
      assert.truthy(gerr:find("skipped " .. t.provider_name .. " " .. id, 1, true), gerr)
      assert.are.equal("", runs())
      assert.are.equal(0, (t:galley("stop " .. q(id))))
    end)

    it("exits 1 naming the provider it could not use", function()
      local env = {}
      for k, v in pairs(t.env) do env[k] = v end
      if target == "local" then
        env.MORPH_API_KEY = ""
      else
        env.MORPH_BASE_URL = "http://127.0.0.1:9/api" -- nothing listens there
      end
      local code, _, err = support.galley("gc --provider morph", nil, env)
      assert.are.equal(1, code)
      assert.truthy(err:find("skipped: morph provider", 1, true), err)
    end)
  end)
end
