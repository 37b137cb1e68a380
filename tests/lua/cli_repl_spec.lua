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
