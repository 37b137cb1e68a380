-- The instance and snapshot commands (ls, boot, exec, cp, logs, stop, snapshots, images) on the
-- local provider and on `galley emulate` (the Morph provider), through the real binary.
local cjson = require("cjson")
local cli = require("support.cli")
local support = require("support")
local q = support.q

for _, target in ipairs(cli.TARGETS) do
  describe("galley instance commands on " .. target .. " #cli", function()
    local t, id

    setup(function()
      t = cli.start(target)
      id = t:boot()
    end)

    teardown(function()
      if t then t:stop() end
    end)

    it("boot prints the id on stdout and --json prints the record", function()
      assert.matches("^[%w_%-%.]+$", id)
      local code, out, err = t:galley("boot " .. q(t.snapshot) .. " --ttl 90s --json")
      assert.are.equal(0, code, err)
      local rec = cjson.decode(out)
      assert.are.equal(t.provider_name, rec.provider)
      assert.are.equal(90, rec.ttl_seconds)
      assert.are.equal(0, (t:galley("stop " .. q(rec.id))))
    end)

    it("boot takes durations and rejects a bad one with exit 2", function()
      local code, _, err = t:galley("boot " .. q(t.snapshot) .. " --ttl 10x")
      assert.are.equal(2, code, err)
    end)

    it("boot of a missing snapshot lists the snapshots that exist", function()
      local code, _, err = t:galley("boot no_such_snapshot")
      assert.are.equal(1, code)
      assert.truthy(err:find("NOT_FOUND", 1, true), err)
      assert.truthy(err:find(t.snapshot, 1, true), err)
    end)

    it("ls lists the instance with its TTL left; --json prints data only", function()
      local code, out, err = t:galley("ls --json")
      assert.are.equal(0, code, err)
      local found
      for _, inst in ipairs(cjson.decode(out)) do
        if inst.id == id then found = inst end
      end
      assert.truthy(found, out)
      assert.are.equal("ready", found.status)
      assert.truthy(found.ttl_left > 500 and found.ttl_left <= 600, out)
      code, out = t:galley("ls")
      assert.are.equal(0, code)
      assert.truthy(out:find("TTL LEFT", 1, true) and out:find(id, 1, true), out)
    end)

    it("exec passes stdout, stderr and the exit code on", function()
      local code, out, err = t:galley("exec " .. q(id) .. " -- sh -c 'echo out; echo err >&2; exit 7'")
      assert.are.equal(7, code)
      assert.are.equal("out\n", out)
      assert.truthy(err:find("err\n", 1, true), err)
    end)

    it("exec --stream passes output on and the exit code too", function()
      local code, out = t:galley("exec --stream " .. q(id) .. " -- sh -c 'echo one; sleep 0.2; echo two; exit 3'")
      assert.are.equal(3, code)
      assert.are.equal("one\ntwo\n", out)
    end)

    it("exec --json prints {exit_code, stdout, stderr}; a global -v after the command is accepted", function()
      local code, out, err = t:galley("exec -v --json " .. q(id) .. " -- printf 'a b'")
      assert.are.equal(0, code, err)
      local r = cjson.decode(out)
      assert.are.equal(0, r.exit_code)
      assert.are.equal("a b", r.stdout)
    end)

    it("exec on a missing instance exits 1 with NOT_FOUND", function()
      local code, out, err = t:galley("exec no_such_instance -- true")
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.truthy(err:find("NOT_FOUND", 1, true), err)
    end)

    it("cp copies a file to the instance and back", function()
      local src = support.script("payload \0 with a NUL\n")
      local code, _, err = t:galley("cp " .. q(src) .. " " .. q(id .. ":~/dir/copied.txt") .. " --mode 600")
      assert.are.equal(0, code, err)
      local code2, out = t:galley("exec " .. q(id) .. " -- stat -c %a /root/dir/copied.txt")
      assert.are.equal(0, code2)
      assert.are.equal("600\n", out)
      local back = support.tmpname()
      code, _, err = t:galley("cp " .. q(id .. ":/root/dir/copied.txt") .. " " .. q(back))
      assert.are.equal(0, code, err)
      local f = assert(io.open(back, "rb"))
      assert.are.equal("payload \0 with a NUL\n", f:read("a"))
      f:close()
      os.remove(back)
      os.remove(src)
    end)

    if target == "emulator" then
      it("cp interrupted mid-write leaves the old file and no temporary one (Ctrl-C)", function()
        local proc = require("galley.core.proc")
        local runtime = require("galley.core.runtime")
        local src = support.tmpname()
        assert(os.execute("head -c 9000000 /dev/urandom > " .. q(src)))
        -- every exec is done at once and answered 1.5 s late: the first chunk makes the
        -- temporary file, then Ctrl-C lands while the others are in flight
        t.em:fault({ method = "POST", path = "/instance/*/exec", action = "delay", delay_ms = 1500, count = 40 })
        local function temps()
          local r = assert(proc.run({ argv = { "find", t.em.state_dir, "-name", ".big.bin.galley-tmp-*" } }))
          return r.stdout
        end
        local argv = { support.bin, "cp", src, id .. ":/tmp/big.bin" }
        local h = assert(proc.spawn({ argv = argv, env = t.env, env_mode = "extend", stdin = "null" }))
        local deadline = runtime.now_ms() + 30000
        while temps() == "" and runtime.now_ms() < deadline do runtime.sleep_ms(50) end
        assert.are_not.equal("", temps(), "no temporary file appeared")
        h:kill("INT")
        local r = assert(h:wait(60000))
        h:close()
        t.em:clear_faults()
        assert.are.equal(130, r.exit_code, r.stderr)
        assert.are.equal("", temps()) -- before: the write's own removal failed (Ctrl-C pending)
        local code = t:galley("exec " .. q(id) .. " -- test -e /tmp/big.bin")
        assert.are.equal(1, code)
        os.remove(src)
      end)
    end

    it("cp -r copies a tree with modes and symlinks to the instance and back", function()
      local dir = support.script("")
      os.remove(dir)
      local function sh(script)
        local r = assert(require("galley.core.proc").run({ argv = { "sh", "-c", script, "sh", dir } }))
        assert.are.equal(0, r.exit_code, r.stderr)
        return r.stdout
      end
      sh([[mkdir -p "$1/src/sub dir" && cd "$1/src" && echo one > a.txt && printf 'two\n' > "sub dir/b c.txt" &&
        chmod 751 a.txt && ln -s a.txt link && mkdir -p .git && echo x > .git/kept]])
      local code, out, err = t:galley("cp -r " .. q(dir .. "/src") .. " " .. q(id .. ":~/tree") .. " --json")
      assert.are.equal(0, code, err)
      local rec = cjson.decode(out)
      assert.are.same({ "to", 4, 0 }, { rec.direction, rec.files, rec.deleted })
      assert.is_true(rec.execs <= 2, out)
      local code2, out2 = t:galley("exec " .. q(id) .. " -- sh -c 'cd ~/tree && stat -c %a a.txt && readlink link && "
        .. "cat \"sub dir/b c.txt\"'")
      assert.are.equal(0, code2)
      assert.are.equal("751\na.txt\ntwo\n", out2)
      -- unchanged: one request; back with --delete removes what the instance lacks
      code, out = t:galley("cp -r " .. q(dir .. "/src") .. " " .. q(id .. ":~/tree") .. " --json")
      assert.are.equal(0, code)
      assert.are.same({ 0, 1 }, { cjson.decode(out).files, cjson.decode(out).execs })
      sh([[mkdir -p "$1/back" && echo stale > "$1/back/stale.txt"]])
      -- everything comes back, what git ignores too (workspace.pull leaves that by default)
      assert.are.equal(0, (t:galley("exec " .. q(id) .. " -- sh -c 'printf \"*.log\\n\" > ~/tree/.gitignore &&"
        .. " echo l > ~/tree/x.log'")))
      code, out, err = t:galley("cp -r --delete " .. q(id .. ":~/tree") .. " " .. q(dir .. "/back") .. " --json")
      assert.are.equal(0, code, err)
      rec = cjson.decode(out)
      -- from an instance, its .git stays there unless --git-dirs (a hook in it would run here)
      assert.are.same({ "from", 5, 1, { ".git" } }, { rec.direction, rec.files, rec.deleted, rec.git_dirs_left })
      assert.are.equal("l\n", sh([[cat "$1/back/x.log"]]))
      assert.are.equal("751\na.txt\ntwo\nno\nno\n", sh([[cd "$1/back" && stat -c %a a.txt && readlink link &&
        cat "sub dir/b c.txt" && { [ -e .git ] && echo yes || echo no; } &&
        { [ -e stale.txt ] && echo yes || echo no; }]]))
      code, _, err = t:galley("cp -r " .. q(id .. ":~/tree") .. " " .. q(dir .. "/back4"))
      assert.are.equal(0, code, err)
      assert.truthy(err:find("--git-dirs", 1, true), err) -- says what it left out, and how to have it
      code, out, err = t:galley("cp -r --git-dirs " .. q(id .. ":~/tree") .. " " .. q(dir .. "/back5") .. " --json")
      assert.are.equal(0, code, err)
      rec = cjson.decode(out)
      assert.are.same({ 6, {} }, { rec.files, rec.git_dirs_left })
      assert.are.equal("x\n", sh([[cat "$1/back5/.git/kept"]]))
      assert.are.equal(2, (t:galley("cp -r --git-dirs " .. q(dir .. "/src") .. " " .. q(id .. ":~/tree"))))
      -- --max-bytes bounds what a tree from an instance brings
      code, _, err = t:galley("cp -r --max-bytes 3 " .. q(id .. ":~/tree") .. " " .. q(dir .. "/back2"))
      assert.are.equal(1, code)
      assert.truthy(err:find("FILE_TOO_LARGE", 1, true), err)
      assert.are.equal("no\n", sh([[[ -e "$1/back2" ] && echo yes || echo no]]))
      for _, bad in ipairs({ "--max-bytes 0", "--max-bytes x" }) do
        assert.are.equal(2, (t:galley("cp -r " .. bad .. " " .. q(id .. ":~/tree") .. " " .. q(dir .. "/back3"))))
      end
      assert.are.equal(2, (t:galley("cp -r --max-bytes 9 " .. q(dir .. "/src") .. " " .. q(id .. ":~/tree"))))
      -- a directory without -r, and --delete without -r, are usage errors
      assert.are.equal(2, (t:galley("cp " .. q(dir .. "/src") .. " " .. q(id .. ":~/tree2"))))
      assert.are.equal(2, (t:galley("cp --delete " .. q(dir .. "/src/a.txt") .. " " .. q(id .. ":~/x"))))
      sh('rm -rf -- "$1"')
    end)

    it("cp without an ID:PATH side is a usage error", function()
      assert.are.equal(2, (t:galley("cp a b")))
    end)

    it("logs prints a tmux session's output and -f follows it to its end", function()
      local p = t:provider()
      local tmux = require("galley.process.tmux").new({ provider = p,
        log = require("galley.log").new({ level = "error" }) })
      tmux.start(id, { command = { name = "ticker", kind = "shell",
        script = "for i in 1 2 3; do echo tick-$i; sleep 0.3; done" } })
      local code, out, err = t:galley("logs -f " .. q(id) .. " ticker")
      assert.are.equal(0, code, err)
      assert.truthy(out:find("tick-1\ntick-2\ntick-3\n", 1, true), out)
      code, out = t:galley("logs " .. q(id) .. " ticker")
      assert.are.equal(0, code)
      assert.truthy(out:find("tick-3", 1, true), out)
      code, _, err = t:galley("logs " .. q(id) .. " no-such-session")
      assert.are.equal(1, code)
      assert.truthy(err:find("NOT_FOUND", 1, true) and err:find("ticker", 1, true), err)
      if p.close then p.close() end
    end)

    it("logs shows a process's colours but not its other control characters (--raw: its bytes)", function()
      -- an agent's output could otherwise set the title, write the clipboard (OSC 52), clear the
      -- screen or rewrite a line on the user's terminal
      local p = t:provider()
      local pm2 = require("galley.process.pm2").new({ provider = p,
        log = require("galley.log").new({ level = "error" }) })
      pm2.start(id, { command = { name = "hostile", kind = "shell",
        script = [[printf 'a\033]52;c;cHduZWQ=\007b \033[1;31mred\033[0m \033[2J\302\233c\r\n'; ]]
          .. [[printf 'e\033]0;title\007\n' >&2]] }, restart = "never" })
      local code, out, err = t:galley("logs -f " .. q(id) .. " hostile")
      assert.are.equal(0, code, err)
      assert.truthy(out:find("a^[]52;c;cHduZWQ=^Gb \27[1;31mred\27[0m ^[[2J\\u009bc\n", 1, true), out)
      assert.truthy(err:find("e^[]0;title^G\n", 1, true), err)
      assert.is_nil(out:find("\27]", 1, true))
      code, out = t:galley("logs " .. q(id) .. " hostile")
      assert.are.equal(0, code)
      assert.truthy(out:find("a^[]52;c;", 1, true), out)
      assert.is_nil(out:find("\27[2J", 1, true))
      code, out = t:galley("logs --raw " .. q(id) .. " hostile")
      assert.are.equal(0, code)
      assert.truthy(out:find("a\27]52;c;cHduZWQ=\7b", 1, true), out)
      pm2.delete(id, "hostile")
      if p.close then p.close() end
    end)

    it("prints an error's control characters visibly (a remote path or message can carry them)", function()
      local code, _, err = t:galley("cp " .. q(id .. ":/no/such/\27]0;x\7file") .. " " .. q(support.tmpname()))
      assert.are.equal(1, code)
      assert.is_nil(err:find("\27", 1, true), err)
      assert.truthy(err:find("^[]0;x^Gfile", 1, true), err)
    end)

    it("snapshots and images print JSON arrays", function()
      local code, out, err = t:galley("snapshots --json")
      assert.are.equal(0, code, err)
      local ids = {}
      for _, s in ipairs(cjson.decode(out)) do ids[s.id] = true end
      assert.truthy(ids[t.snapshot], out)
      code, out, err = t:galley("images --json")
      assert.are.equal(0, code, err)
      assert.truthy(#cjson.decode(out) >= 1, out)
    end)

    it("stop stops instances and exits 1 for one that is gone", function()
      local other = t:boot()
      local code, out, err = t:galley("stop " .. q(other))
      assert.are.equal(0, code, err)
      assert.truthy(out:find(other, 1, true))
      code, _, err = t:galley("stop " .. q(other))
      assert.are.equal(1, code)
      assert.truthy(err:find("NOT_FOUND", 1, true), err)
      code, out = t:galley("stop --json " .. q(other))
      assert.are.equal(1, code)
      assert.are.equal("NOT_FOUND", cjson.decode(out)[1].error.code)
    end)
  end)
end
