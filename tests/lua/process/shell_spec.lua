-- galley.process.shell on every provider support.host_provider.providers() lists.
local host = require("support.host_provider")
local logmod = require("galley.log")
local shellmod = require("galley.process.shell")

local raises_code = host.raises_code

describe("the shell process manager #shell", function()
  it("needs a provider", function()
    raises_code("VALIDATION_ERROR", shellmod.new, {})
    raises_code("VALIDATION_ERROR", shellmod.new)
  end)

  it("keeps the tail of a string", function()
    assert.are.equal("abc", shellmod.tail("abc", 5))
    assert.are.equal("bc", shellmod.tail("abc", 2))
    assert.are.equal("", shellmod.tail(nil, 2))
  end)
end)

for _, target in ipairs(host.providers()) do
  describe(("the shell process manager on the %s provider #shell #%s"):format(target.label, target.label), function()
    local t, p, inst, pm

    setup(function()
      t = target.new()
      p = t.provider
      inst = t.boot()
      pm = shellmod.new(host.manager_opts(t, { provider = p, log = logmod.silent() }))
    end)

    teardown(function()
      if inst then p.instances.terminate(inst.id) end
      if t then t.cleanup() end
    end)

    it("runs the command once with its cwd and env and returns its output", function()
      local r = pm.start(inst.id, {
        command = { kind = "shell", script = 'pwd; printf "%s\\n" "$GREETING"; cat data.txt; echo warn >&2',
          cwd = "~/job dir", env = { GREETING = "it's \"here\" $HOME" }, name = "job" },
        files = { { path = "~/job dir/data.txt", content = "uploaded\n", mode = "640" } },
        restart = { max_restarts = 3 }, -- ignored: not a daemon
      })
      local home = p.exec(inst.id, { kind = "argv", command = "sh", args = { "-c", 'printf %s "$HOME"' } }).stdout
      assert.are.same({ name = "job", status = "exited", exit_code = 0,
        stdout = home .. "/job dir\nit's \"here\" $HOME\nuploaded\n", stderr = "warn\n" }, r)
      assert.are.equal("640\n", p.exec(inst.id, { kind = "argv", command = "stat",
        args = { "-c", "%a", home .. "/job dir/data.txt" } }).stdout)
    end)

    it("runs argv commands with hostile arguments unchanged", function()
      local args = { "", "two words", "it's", "$HOME", "`x`", "a\nb", "-n" }
      local r = pm.start(inst.id, { command = { kind = "argv", command = "printf",
        args = { "[%s]", table.unpack(args) } } })
      assert.are.equal("[][two words][it's][$HOME][`x`][a\nb][-n]", r.stdout)
      assert.are.equal("shell", r.name)
    end)

    it("raises PROCESS_ERROR with the exit code and the tail of stderr", function()
      local err = raises_code("PROCESS_ERROR", pm.start, inst.id, { command = { kind = "shell", name = "failing",
        script = "head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last words >&2; exit 7" } })
      assert.are.equal("ProcessError", err.kind)
      assert.are.equal("shell.start", err.operation)
      assert.are.equal("process:failing", err.resource)
      assert.are.equal(7, err.details.exit_code)
      assert.are.equal(shellmod.STDERR_TAIL, #err.details.stderr)
      assert.truthy(err.details.stderr:find("\nlast words\n$"))
      assert.truthy(err.message:find("last words", 1, true))
    end)

    it("fails before running when an upload fails, naming the path", function()
      local err = raises_code("PROCESS_ERROR", pm.start, inst.id, {
        command = { kind = "shell", script = "touch ~/ran" },
        files = { { path = "/proc/galley-no/x.txt", content = "x" } } })
      assert.are.equal("/proc/galley-no/x.txt", err.details.path)
      assert.are_not.equal(0, p.exec(inst.id, { kind = "argv", command = "sh", args = { "-c", "test -e ~/ran" } })
        .exit_code)
    end)

    it("has nothing to list, read, stop or delete: it is not a daemon", function()
      assert.are.same({}, pm.list(inst.id))
      assert.are.same({ out = "", err = "" }, pm.logs(inst.id, "job", 10))
      assert.is_false(pm.stop(inst.id, "job"))
      assert.is_false(pm.restart(inst.id, "job"))
      assert.is_false(pm.delete(inst.id, "job"))
      assert.is_false(pm.stop_all(inst.id))
      assert.is_false(pm.delete_all(inst.id))
    end)

    it("rejects a bad spec", function()
      raises_code("VALIDATION_ERROR", pm.start, inst.id, { command = { kind = "shell" } })
    end)
  end)
end
