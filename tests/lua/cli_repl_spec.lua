-- The REPL as a newcomer meets it: exit/quit/help, instance records with methods, the exit
-- report on stderr; on the local provider (`sandbox`) and the emulator (`morph`).
local cli = require("support.cli")

for _, target in ipairs(cli.TARGETS) do
  describe("the REPL's commands and instance methods on " .. target .. " #cli", function()
    local t
    setup(function() t = cli.start(target) end)
    teardown(function() if t then t:stop() end end)

    local p = target == "local" and "sandbox" or "morph"
    local snap = target == "local" and "" or '"snapshot_galleydev"'

    it("gives instances exec/stop methods, leaves on quit and reports on stderr", function()
      local code, out, err = t:galley("repl", table.concat({
        ("inst = %s.instances.boot(%s)"):format(p, snap),
        'inst:exec("echo hi $((40+2))").stdout',
        'inst:exec{kind = "argv", command = "sh", args = {"-c", "exit 5"}}.exit_code',
        ("#%s.instances.list()[1].id > 0"):format(p),
        "keep = inst",
        "quit",
        'print("not reached")',
      }, "\n") .. "\n")
      assert.are.equal(0, code, err)
      assert.truthy(out:find('"hi 42\\n"\n5\ntrue\n', 1, true), out)
      assert.falsy(out:find("not reached", 1, true), out)
      assert.falsy(out:find("still exist", 1, true), out)
      assert.truthy(err:find("1 instance(s) booted in this session still exist", 1, true), err)
      local id = err:match("instance%s+(%S+)%s+ready")
      assert.truthy(id, err)
      assert.are.equal(0, (t:galley("stop " .. id)))
    end)

    it("stops an instance with inst:stop() and prints help for help", function()
      local code, out, err = t:galley("repl", table.concat({
        ("inst = %s.instances.boot(%s)"):format(p, snap),
        "inst:stop()",
        "help",
        "exit",
      }, "\n") .. "\n")
      assert.are.equal(0, code, err)
      assert.truthy(out:find("true\n", 1, true), out)
      assert.truthy(out:find("exit, quit or Ctrl-D leaves", 1, true), out)
      assert.falsy(err:find("still exist", 1, true), err)
    end)
  end)
end

describe("the REPL's galley.providers #cli", function()
  it("reaches galley.providers[\"local\"] and .morph and completes the keyword one as [\"local\"]", function()
    local repl = require("galley.repl")
    local env = repl.new_env()
    assert.are.same({ 'galley.providers["local"]' }, repl.complete(env, "galley.providers.lo"))
    local all = repl.complete(env, "galley.providers.")
    local has = {}
    for _, c in ipairs(all) do has[c] = true end
    assert.truthy(has["galley.providers.morph"] and has["galley.providers.new"], table.concat(all, " "))
    assert.are.same({ 'galley.providers["local"].new' }, repl.complete(env, 'galley.providers["local"].ne'))
    local t = cli.start("local") -- a temporary HOME and state directory for the REPL's run
    local code, out = t:galley("repl", 'galley.providers["local"].NAME\ngalley.providers.morph.NAME\n')
    t:stop()
    assert.are.equal(0, code)
    assert.are.equal('"local"\n"morph"\n', out)
  end)
end)

describe("the REPL's galley global #cli", function()
  it("reaches every galley module (galley.emulator.spawn, galley.agents.codex, ...) and Tab completes each", function()
    local repl = require("galley.repl")
    local env = repl.new_env()
    local names = {}
    for name in pairs(package.preload) do
      if name:match("^galley%.") then names[#names + 1] = name end
    end
    table.sort(names)
    assert.truthy(#names > 40, "the embedded modules are in package.preload")
    for _, name in ipairs(names) do
      local v = env
      for part in name:gmatch("[^.]+") do v = type(v) == "table" and v[part] or nil end
      assert.are.equal(require(name), v, name .. " is not reachable from the REPL's galley global")
      local parent, last = name:match("^(.*)%.([^.]+)$")
      local offered = {}
      for _, c in ipairs(repl.complete(env, parent .. "." .. last:sub(1, -2))) do offered[c] = true end
      assert.truthy(offered[name] or offered[parent .. '["' .. last .. '"]'], "Tab does not complete " .. name)
    end
    assert.is_function(env.galley.emulator.spawn.start)
  end)
end)

describe("the REPL's history file #cli", function()
  local paths = require("galley.paths")
  local function with_env(vars, fn)
    -- paths reads the environment through os.getenv: run it in a child with those variables.
    local code = "io.write(require('galley.paths').history_file())"
    local env = {}
    for k, v in pairs(vars) do env[k] = v end
    local _, out = require("support").galley("-e " .. require("support").q(code), nil, env)
    return fn(out)
  end

  it("lives in GALLEY_STATE_DIR, else XDG_STATE_HOME/galley, like the rest of galley's state", function()
    with_env({ GALLEY_STATE_DIR = "/tmp/gs-a", XDG_STATE_HOME = "/tmp/xdg-a", HOME = "/tmp/h-a" }, function(out)
      assert.are.equal("/tmp/gs-a/repl_history", out)
    end)
    with_env({ GALLEY_STATE_DIR = "", XDG_STATE_HOME = "/tmp/xdg-b", HOME = "/tmp/h-b" }, function(out)
      assert.are.equal("/tmp/xdg-b/galley/repl_history", out)
    end)
    with_env({ GALLEY_STATE_DIR = "", XDG_STATE_HOME = "", HOME = "/tmp/h-c" }, function(out)
      assert.are.equal("/tmp/h-c/.local/state/galley/repl_history", out)
    end)
    assert.are.equal(paths.state_dir() .. "/repl_history", paths.history_file())
  end)

  it("keeps a line with a recognisable secret masked", function()
    local repl = require("galley.repl")
    local key = "sk-ant-api03-" .. ("Ab1"):rep(20)
    local morph_key = "morph_" .. ("x9Y"):rep(12)
    for _, line in ipairs({ ("k = %q"):format(key), ("os.setenv(%q, %q)"):format("MORPH_API_KEY", morph_key),
      ("p = galley.providers.morph.new{api_key = %q}"):format(morph_key) }) do
      local kept = repl.history_entry(line)
      assert.is_nil(kept:find(key, 1, true), kept)
      assert.is_nil(kept:find(morph_key, 1, true), kept)
      assert.truthy(kept:find("REDACTED", 1, true), kept)
    end
    assert.are.equal("40 + 2", repl.history_entry("40 + 2"))
  end)
end)
