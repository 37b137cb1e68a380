-- galley.core.shell: quoting, ~ expansion and CommandSpec plans. Scripts run through real bash
-- the way callers run them: the text in a file, then `/bin/bash <file>`.
local shell = require("galley.core.shell")
local proc = require("galley.core.proc")
local support = require("support")
local q = support.q

local function tmpdir()
  return (assert(proc.run { argv = { "mktemp", "-d", "/tmp/galley-shell.XXXXXX" } }).stdout:gsub("\n$", ""))
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes text to a file and runs `/bin/bash file` with HOME set; returns exit code, stdout.
local function run_script(dir, text, home)
  local path = dir .. "/script.sh"
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  local r = assert(proc.run { argv = { "/bin/bash", path }, env = { HOME = home or dir }, timeout_ms = 60000 })
  return r.exit_code, r.stdout
end

local function mkdir(path)
  assert.are.equal(0, proc.run({ argv = { "mkdir", "-p", path } }).exit_code)
end

local function raises(code, field, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.are.equal("table", type(err), tostring(err))
  assert.are.equal(code, err.code)
  if field then assert.are.equal(field, err.field) end
end

describe("galley.core.shell #shell", function()
  local dir

  before_each(function() dir = tmpdir() end)
  after_each(function() proc.run { argv = { "rm", "-rf", dir } } end)

  describe("quote", function()
    it("leaves safe words bare and single-quotes the rest", function()
      assert.are.equal("abc", shell.quote("abc"))
      assert.are.equal("--name=x,y:z@1%/.+", shell.quote("--name=x,y:z@1%/.+"))
      assert.are.equal("''", shell.quote(""))
      assert.are.equal("'a b'", shell.quote("a b"))
      assert.are.equal("'it'\\''s'", shell.quote("it's"))
      assert.are.equal("'~/x'", shell.quote("~/x"))
    end)

    it("quotes words bash would read as assignments or keywords", function()
      assert.are.equal("'A=1'", shell.quote("A=1"))
      assert.are.equal("'time'", shell.quote("time"))
      -- Bare, `A=1 true` would be an assignment and succeed; quoted, A=1 is a command name.
      assert.are.equal(127, (run_script(dir, shell.join({ "A=1", "true" }) .. "\n")))
    end)

    it("gives hostile words back byte-identical through bash", function()
      local words = { "", " ", "'", "\"", "$HOME", "`id`", "$(id)", "\\", "a\nb", "\t", "-n", "~", "*",
        "!!", "#", "a;b", "\195\169", "\255\254", "\1\127", "${x:-y}", "'\\''" }
      local quoted = {}
      for i, w in ipairs(words) do quoted[i] = shell.quote(w) end
      local code, out = run_script(dir, "printf '%s\\0' " .. table.concat(quoted, " ") .. "\n")
      assert.are.equal(0, code)
      assert.are.equal(table.concat(words, "\0") .. "\0", out)
      code, out = run_script(dir, "printf '%s\\0' " .. shell.join(words) .. "\n")
      assert.are.equal(0, code)
      assert.are.equal(table.concat(words, "\0") .. "\0", out)
    end)

    it("rejects non-strings and NUL bytes", function()
      raises("SHELL_BAD_SPEC", "s", shell.quote, 5)
      raises("SHELL_BAD_SPEC", "s", shell.quote, "a\0b")
      raises("SHELL_BAD_SPEC", "argv[2]", shell.join, { "a", 2 })
      raises("SHELL_BAD_SPEC", "argv", shell.join, "a b")
    end)
  end)

  describe("expand_home", function()
    it("expands only a leading ~ or ~/", function()
      assert.are.equal("/root", shell.expand_home("~", "/root"))
      assert.are.equal("/root/a b", shell.expand_home("~/a b", "/root"))
      assert.are.equal("/root/x", shell.expand_home("~/x", "/root/"))
      assert.are.equal("~user/x", shell.expand_home("~user/x", "/root"))
      assert.are.equal("/x/~", shell.expand_home("/x/~", "/root"))
      raises("SHELL_BAD_SPEC", "home", shell.expand_home, "~", nil)
    end)
  end)

  describe("plan", function()
    it("keeps a plain argv as an argv, never joined", function()
      local plan = shell.plan { kind = "argv", command = "printf", args = { "%s\n", "a b", "$HOME", "" } }
      assert.are.same({ argv = { "printf", "%s\n", "a b", "$HOME", "" } }, plan)
      assert.are.same({ argv = { "ls" } }, shell.plan { kind = "argv", command = "ls", name = "x" })
    end)

    it("expands a ~ command with a home and leaves args alone", function()
      local plan = shell.plan({ kind = "argv", command = "~/bin/x", args = { "~" } }, { home = "/h" })
      assert.are.same({ argv = { "/h/bin/x", "~" } }, plan)
    end)

    it("writes cd, exports and exec for an argv spec with cwd and env", function()
      local plan = shell.plan { kind = "argv", command = "printf", args = { "%s|" , "a'b", "-x" },
        cwd = "/tmp/my dir", env = { B = "2", A = "x y" } }
      assert.is_nil(plan.argv)
      assert.are.equal("cd -- '/tmp/my dir' || exit 127\n"
        .. "export A='x y' || exit 127\n"
        .. "export B=2 || exit 127\n"
        .. "exec -- printf '%s|' 'a'\\''b' -x\n", plan.script)
    end)

    it("runs an argv spec in its cwd with its env, values kept exactly", function()
      local value = "it's $HOME `x` \\n\n\t\255"
      mkdir(dir .. "/a b")
      local plan = shell.plan { kind = "argv", command = "bash",
        args = { "-c", 'printf "%s|%s" "$PWD" "$V"' }, cwd = dir .. "/a b", env = { V = value } }
      local code, out = run_script(dir, plan.script)
      assert.are.equal(0, code)
      assert.are.equal(dir .. "/a b|" .. value, out)
    end)

    it("puts a shell script verbatim after the prelude", function()
      local script = 'echo "$GREETING"\nfor i in 1 2; do echo $i; done # done'
      local plan = shell.plan { kind = "shell", script = script, cwd = dir, env = { GREETING = "hi there" } }
      assert.are.equal(("cd -- %s || exit 127\nexport GREETING='hi there' || exit 127\n"):format(dir) .. script,
        plan.script)
      local code, out = run_script(dir, plan.script)
      assert.are.equal(0, code)
      assert.are.equal("hi there\n1\n2\n", out)
    end)

    it("exits PRELUDE_EXIT without running anything when the cwd is missing", function()
      assert.are.equal(127, shell.PRELUDE_EXIT)
      local marker = dir .. "/ran"
      local plan = shell.plan { kind = "shell", script = "touch " .. q(marker), cwd = dir .. "/missing" }
      local code = run_script(dir, plan.script)
      assert.are.equal(shell.PRELUDE_EXIT, code)
      assert.is_nil(slurp(marker))
      plan = shell.plan { kind = "argv", command = "touch", args = { marker }, cwd = dir .. "/missing" }
      assert.are.equal(shell.PRELUDE_EXIT, (run_script(dir, plan.script)))
      assert.is_nil(slurp(marker))
    end)

    it("passes the exit status of the command through", function()
      local plan = shell.plan { kind = "shell", script = "exit 3", cwd = dir }
      assert.are.equal(3, (run_script(dir, plan.script)))
      plan = shell.plan { kind = "argv", command = "false", env = { A = "1" } }
      assert.are.equal(1, (run_script(dir, plan.script)))
    end)

    it("expands ~ in cwd to the given home, or leaves it to bash's $HOME", function()
      mkdir(dir .. "/h/p q")
      local with = shell.plan({ kind = "shell", script = 'printf %s "$PWD"', cwd = "~/p q" }, { home = dir .. "/h" })
      assert.truthy(with.script:find(q(dir .. "/h/p q"), 1, true))
      local code, out = run_script(dir, with.script, "/nonexistent")
      assert.are.equal(0, code)
      assert.are.equal(dir .. "/h/p q", out)
      local without = shell.plan { kind = "shell", script = 'printf %s "$PWD"', cwd = "~/p q" }
      assert.are.equal(1, without.script:find("cd -- ~/'p q' || exit 127\n", 1, true))
      code, out = run_script(dir, without.script, dir .. "/h")
      assert.are.equal(0, code)
      assert.are.equal(dir .. "/h/p q", out)
    end)

    it("needs a script for a ~ command when no home is given", function()
      mkdir(dir .. "/bin")
      local f = assert(io.open(dir .. "/bin/tool", "wb"))
      f:write('#!/bin/sh\necho tool "$1"\n')
      f:close()
      assert.are.equal(0, proc.run({ argv = { "chmod", "+x", dir .. "/bin/tool" } }).exit_code)
      local plan = shell.plan { kind = "argv", command = "~/bin/tool", args = { "a b" } }
      assert.is_nil(plan.argv)
      local code, out = run_script(dir, plan.script, dir)
      assert.are.equal(0, code)
      assert.are.equal("tool a b\n", out)
    end)

    it("raises SHELL_BAD_SPEC naming the field", function()
      raises("SHELL_BAD_SPEC", "spec", shell.plan, "ls")
      raises("SHELL_BAD_SPEC", "kind", shell.plan, { command = "ls" })
      raises("SHELL_BAD_SPEC", "kind", shell.plan, { kind = "exec", command = "ls" })
      raises("SHELL_BAD_SPEC", "command", shell.plan, { kind = "argv" })
      raises("SHELL_BAD_SPEC", "command", shell.plan, { kind = "argv", command = "" })
      raises("SHELL_BAD_SPEC", "args", shell.plan, { kind = "argv", command = "ls", args = "-l" })
      raises("SHELL_BAD_SPEC", "args[2]", shell.plan, { kind = "argv", command = "ls", args = { "-l", 2 } })
      raises("SHELL_BAD_SPEC", "args[3]", shell.plan, { kind = "argv", command = "ls", args = { "a", "b", {} } })
      raises("SHELL_BAD_SPEC", "args[1]", shell.plan, { kind = "argv", command = "ls", args = { "a\0b" } })
      raises("SHELL_BAD_SPEC", "args", shell.plan, { kind = "argv", command = "ls", args = { "a", x = "b" } })
      raises("SHELL_BAD_SPEC", "script", shell.plan, { kind = "argv", command = "ls", script = "ls" })
      raises("SHELL_BAD_SPEC", "script", shell.plan, { kind = "shell" })
      raises("SHELL_BAD_SPEC", "command", shell.plan, { kind = "shell", script = "ls", command = "ls" })
      raises("SHELL_BAD_SPEC", "cwd", shell.plan, { kind = "shell", script = "ls", cwd = 1 })
      raises("SHELL_BAD_SPEC", "cwd", shell.plan, { kind = "shell", script = "ls", cwd = "" })
      raises("SHELL_BAD_SPEC", "env", shell.plan, { kind = "shell", script = "ls", env = "A=1" })
      raises("SHELL_BAD_SPEC", "env.1A", shell.plan, { kind = "shell", script = "ls", env = { ["1A"] = "x" } })
      raises("SHELL_BAD_SPEC", "env.A-B", shell.plan, { kind = "shell", script = "ls", env = { ["A-B"] = "x" } })
      raises("SHELL_BAD_SPEC", "env", shell.plan, { kind = "shell", script = "ls", env = { "x" } })
      raises("SHELL_BAD_SPEC", "env.A", shell.plan, { kind = "shell", script = "ls", env = { A = 1 } })
      raises("SHELL_BAD_SPEC", "name", shell.plan, { kind = "shell", script = "ls", name = {} })
      raises("SHELL_BAD_SPEC", "opts.home", shell.plan, { kind = "shell", script = "ls" }, { home = 1 })
      raises("SHELL_BAD_SPEC", "opts", shell.plan, { kind = "shell", script = "ls" }, "home")
    end)
  end)
end)
