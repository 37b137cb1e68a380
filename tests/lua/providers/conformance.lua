--- The provider conformance suite: one set of specs every VM provider must pass.
--
--   require("providers.conformance").run("local", function()
--     return {provider = p, snapshot_id = "snapshot_empty", cleanup = function() ... end}
--   end)
--
-- The factory runs once (in setup). The suite boots its own instances, tags them with
-- `conformance = <random>` and terminates every one of them in teardown, then calls cleanup.
-- Optional factory fields: `size_limit` (the provider's file size limit, default
-- capabilities.max_file_bytes or 256 MiB), `big_file_mib` (default 50).
-- Instances need /bin/sh, coreutils and the user "nobody"; files are checked through the
-- provider's own exec.
local support = require("support")
local busted = require("busted")
local assert = require("luassert")
local codec = require("galley.core.codec")
local runtime = require("galley.core.runtime")

local describe, it, setup, teardown = busted.describe, busted.it, busted.setup, busted.teardown

local M = {}

local MIB = 1024 * 1024

--- Calls fn and returns the error it raises (fails the spec when it does not raise).
---@param fn function
---@return table err
function M.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  assert.is_table(err, "expected an error table, got " .. tostring(err))
  return err
end

--- `code` raised by fn.
---@param code string
---@param fn function
---@return table err
function M.raises_code(code, fn, ...)
  local err = M.raises(fn, ...)
  assert.are.equal(code, err.code, tostring(err.code) .. ": " .. tostring(err.message))
  return err
end

-- Every byte value, twice, then a tail of high bytes.
local function all_bytes()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  local s = table.concat(t)
  return s .. s .. "\255\254\0\0\r\n"
end

-- `n` MiB of binary content where each MiB is different (so reordered chunks would show).
local function binary_mib(n)
  local block = all_bytes():rep(4096):sub(1, MIB - 16)
  local parts = {}
  for i = 1, n do parts[i] = ("%015d\n"):format(i) .. block end
  return table.concat(parts)
end

local function sh(script, ...)
  return { kind = "argv", command = "/bin/sh", args = { "-c", script, "sh", ... } }
end

-- A command that holds TERM back until it is pending (as a shell does while it forks), then makes
-- a child that catches TERM (prints "left-alone" 0.3 s later unless it gets it) and one that does
-- not (sleep 600), lets TERM in and dies of it, having printed "up" and then "forked". A kill()
-- after "up" must end it with 143, "forked\nleft-alone\n" left to read, and wait() come back.
local HELD_BACK = [=[
  my $t = POSIX::SigSet->new(SIGTERM);
  sigprocmask(SIG_BLOCK, $t);
  $| = 1; print "up\n";
  my $p = POSIX::SigSet->new;
  until (sigpending($p) && $p->ismember(SIGTERM)) { select(undef, undef, undef, 0.01) }
  pipe(my $r, my $w);
  if (!fork()) {
    close $r; $SIG{TERM} = sub { print "got-term\n"; POSIX::_exit(5) };
    sigprocmask(SIG_UNBLOCK, $t); close $w; select(undef, undef, undef, 0.3); print "left-alone\n";
    POSIX::_exit(0);
  }
  close $w; sysread($r, my $x, 1);
  if (!fork()) { sigprocmask(SIG_UNBLOCK, $t); exec("sleep", "600"); POSIX::_exit(127) }
  print "forked\n";
  sigprocmask(SIG_UNBLOCK, $t);
  sleep 5; print "not-killed\n";]=]

---@return string[]
function M.held_back_argv() return { "perl", "-MPOSIX", "-e", HELD_BACK } end

--- Runs the suite against a provider.
---@param label string
---@param factory fun(): table `{provider, snapshot_id, cleanup?, size_limit?, big_file_mib?}`
function M.run(label, factory)
  describe(label .. " provider conformance #conformance", function()
    local env, p, inst, home
    local tag = codec.random_hex(6)
    local tmpfiles = {}

    local function boot(opts)
      opts = opts or {}
      opts.metadata = opts.metadata or {}
      opts.metadata.conformance = tag
      return p.instances.boot(env.snapshot_id, opts)
    end

    local function run(spec, id)
      return p.exec(id or inst.id, spec)
    end

    local function out(script, ...)
      local r = run(sh(script, ...))
      assert.are.equal(0, r.exit_code, r.stderr)
      return r.stdout
    end

    local function local_tmp()
      local path = support.tmpname()
      tmpfiles[#tmpfiles + 1] = path
      return path
    end

    local function names(dir)
      local list = {}
      for _, e in ipairs(p.files.list_directory(inst.id, dir)) do list[#list + 1] = e.name end
      table.sort(list)
      return list
    end

    setup(function()
      env = factory()
      p = env.provider
      inst = boot({ ttl_seconds = 3600, ttl_action = "stop" })
      home = p.exec(inst.id, sh('printf %s "$HOME"')).stdout
    end)

    teardown(function()
      if p then
        for _, i in ipairs(p.instances.list({ metadata = { conformance = tag } })) do
          pcall(p.instances.terminate, i.id)
        end
      end
      for _, f in ipairs(tmpfiles) do os.remove(f) end
      if env and env.cleanup then env.cleanup() end
    end)

    describe("instances", function()
      it("boots a ready instance that get and list agree on", function()
        assert.are.equal("ready", inst.status)
        assert.is_string(inst.id)
        assert.is_number(inst.created_at)
        assert.are.equal(tag, inst.metadata.conformance)
        assert.are.equal(3600, inst.ttl.seconds)
        assert.are.equal("stop", inst.ttl.action)
        assert.is_number(inst.ttl.expires_at)
        local got = p.instances.get(inst.id)
        assert.are.equal(inst.id, got.id)
        assert.are.equal("ready", got.status)
        assert.are.equal(tag, got.metadata.conformance)
      end)

      it("reports the home directory it expands ~ to", function()
        assert.matches("^/", home)
        if p.capabilities.home_dir then assert.are.equal(p.capabilities.home_dir, home) end
      end)

      it("lists instances by metadata", function()
        local found = p.instances.list({ metadata = { conformance = tag } })
        local ids = {}
        for _, i in ipairs(found) do ids[i.id] = i end
        assert.is_truthy(ids[inst.id])
        assert.are.same({}, p.instances.list({ metadata = { conformance = tag .. "-other" } }))
      end)

      it("pauses to stopped and resumes to ready, keeping files", function()
        local i = boot()
        p.files.write_file_atomic(i.id, "~/kept.txt", "still here")
        assert.are.equal("stopped", p.instances.pause(i.id).status)
        assert.are.equal("stopped", p.instances.get(i.id).status)
        assert.are.equal("ready", p.instances.resume(i.id).status)
        assert.are.equal("still here", p.exec(i.id, sh("cat ~/kept.txt")).stdout)
        p.instances.terminate(i.id)
      end)

      it("snapshots an instance and boots and forks copies with its files", function()
        local i = boot()
        p.files.write_file_atomic(i.id, "~/work/state.txt", "v1", { create_dirs = true })
        local snap = p.instances.snapshot(i.id, { metadata = { conformance = tag } })
        assert.is_string(snap.id)
        assert.are.equal(snap.id, p.snapshots.get(snap.id).id)
        local listed = false
        for _, s in ipairs(p.snapshots.list({ metadata = { conformance = tag } })) do
          listed = listed or s.id == snap.id
        end
        assert.is_true(listed)
        local from_snap = p.instances.boot(snap.id, { metadata = { conformance = tag } })
        assert.are.equal("ready", from_snap.status)
        assert.are.equal("v1", p.files.read_file(from_snap.id, "~/work/state.txt"))
        local forks = p.instances.fork(i.id, 2)
        assert.are.equal(2, #forks)
        for _, f in ipairs(forks) do
          assert.are.equal("ready", f.status)
          assert.are.equal("v1", p.files.read_file(f.id, "~/work/state.txt"))
        end
        p.files.write_file_atomic(forks[1].id, "~/work/state.txt", "fork")
        assert.are.equal("v1", p.files.read_file(i.id, "~/work/state.txt"))
        assert.are.equal("v1", p.files.read_file(forks[2].id, "~/work/state.txt"))
        for _, x in ipairs({ from_snap, forks[1], forks[2], i }) do p.instances.terminate(x.id) end
        p.snapshots.delete(snap.id)
        M.raises_code("NOT_FOUND", p.snapshots.get, snap.id)
      end)

      it("terminates an instance, after which it is NOT_FOUND", function()
        local i = boot()
        p.instances.terminate(i.id)
        M.raises_code("NOT_FOUND", p.instances.get, i.id)
        M.raises_code("NOT_FOUND", p.exec, i.id, sh("true"))
        M.raises_code("NOT_FOUND", p.files.read_file, i.id, "/etc/hostname")
        M.raises_code("NOT_FOUND", p.instances.terminate, i.id)
        for _, x in ipairs(p.instances.list()) do assert.are_not.equal(i.id, x.id) end
      end)

      it("lists at least one image", function()
        local images = p.images.list()
        assert.is_true(#images >= 1)
        assert.is_string(images[1].id)
      end)
    end)

    describe("exec", function()
      it("returns exit codes and stderr as results", function()
        local r = run(sh("echo out; echo err >&2; exit 7"))
        assert.are.same({ 7, "out\n", "err\n" }, { r.exit_code, r.stdout, r.stderr })
        assert.are.equal(0, run({ kind = "argv", command = "true" }).exit_code)
        assert.are_not.equal(0, run({ kind = "argv", command = "galley-no-such-program" }).exit_code)
      end)

      it("returns several MiB of output whole", function()
        local r = run(sh("yes 0123456789abcdef | head -c 6291456; yes e | head -c 100000 >&2"))
        assert.are.equal(0, r.exit_code)
        assert.are.equal(6291456, #r.stdout)
        assert.are.equal(("0123456789abcdef\n"):rep(4):sub(1, 68), r.stdout:sub(1, 68))
        assert.are.equal(100000, #r.stderr)
      end)

      it("sets env and cwd, with ~ expanded in cwd", function()
        local r = run({ kind = "argv", command = "/bin/sh", args = { "-c", 'printf "%s|%s" "$GREETING" "$(pwd)"' },
          env = { GREETING = "hello 'world' $HOME" }, cwd = "/tmp" })
        assert.are.equal("hello 'world' $HOME|/tmp", r.stdout)
        r = run({ kind = "argv", command = "pwd", cwd = "~" })
        assert.are.equal(home .. "\n", r.stdout)
        assert.are.equal(127, run({ kind = "argv", command = "true", cwd = "/galley/no/such/dir" }).exit_code)
        assert.are.equal(127, run({ kind = "shell", script = "true", cwd = "/galley/no/such/dir" }).exit_code)
      end)

      it("passes hostile strings through argv untouched", function()
        local args = { "it's", 'say "hi"', "$HOME", "`id`", "$(id)", "a\nb", "--leading", "-n", "-e", "ünïcødé ✓",
          "", "  spaces  ", "back\\slash", "*", "semi; colon && | pipe > out", "\t\r", "%s%d%%" }
        local r = run({ kind = "argv", command = "/bin/sh",
          args = { "-c", 'for a in "$@"; do printf "%s<END>" "$a"; done', "sh", table.unpack(args) } })
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal(table.concat(args, "<END>") .. "<END>", r.stdout)
      end)

      it("runs a one-string command as a shell line (sh -c), as the Morph SDKs do", function()
        local r = run("echo \"$0\" a b | tr a-z A-Z; echo err >&2; exit 3")
        assert.are.same({ 3, "/BIN/SH A B\n", "err\n" }, { r.exit_code, r.stdout, r.stderr })
        r = p.exec(inst.id, "printf '%s' \"$HOME\"", { timeout_ms = 20000 })
        assert.are.same({ 0, home }, { r.exit_code, r.stdout })
      end)

      it("gives the same exit codes for signals, missing and non-executable programs, and no stdin", function()
        assert.are.equal(137, run(sh("kill -9 $$")).exit_code)
        assert.are.equal(143, run(sh("kill -TERM $$")).exit_code)
        assert.are.equal(255, run(sh("exit 255")).exit_code)
        assert.are.equal(127, run({ kind = "argv", command = "galley-no-such-program" }).exit_code)
        assert.are.equal(126, run({ kind = "argv", command = "/etc/passwd" }).exit_code)
        assert.are.equal(127, run({ kind = "argv", command = "true", cwd = "/etc/passwd" }).exit_code)
        -- stdin is empty (no provider has one for exec): cat ends at once
        assert.are.same({ 0, "" }, { run(sh("cat")).exit_code, run(sh("cat")).stdout })
        local r = run({ kind = "argv", command = "/bin/sh", args = { "-c", 'printf "[%s]" "${EMPTY-unset}"' },
          env = { EMPTY = "" } })
        assert.are.equal("[]", r.stdout)
      end)

      -- True once `pid_file`'s process is gone (polled: a killed process may take a moment).
      local function gone(pid_file)
        local deadline = runtime.now_ms() + 15000
        repeat
          if run(sh('kill -0 "$(cat "$1")" 2>/dev/null', pid_file)).exit_code ~= 0 then return true end
          runtime.sleep_ms(100)
        until runtime.now_ms() > deadline
        return false
      end

      it("kills a command over timeout_ms, its process group included, and raises TIMEOUT", function()
        for _, form in ipairs({ "argv", "shell", "string", "stream" }) do
          local pid_file = "/tmp/conformance-" .. form .. ".pid"
          local script = 'sleep 30 & echo $! > ' .. pid_file .. '; sleep 30; echo "not killed"'
          local spec = (form == "shell" and { kind = "shell", script = script }) or (form == "string" and script)
            or sh(script)
          local eopts = { timeout_ms = 500 }
          local seen = {}
          if form == "stream" then eopts.on_stdout = function(s) seen[#seen + 1] = s end end
          local t0 = runtime.now_ms()
          local err = M.raises_code("TIMEOUT", p.exec, inst.id, spec, eopts)
          local elapsed = runtime.now_ms() - t0
          assert.is_true(elapsed >= 450, form .. ": returned after " .. elapsed .. " ms")
          assert.is_true(elapsed < 10000, form .. ": returned after " .. elapsed .. " ms")
          assert.are.equal(500, err.details.timeout_ms)
          assert.are.equal("instance:" .. inst.id, err.resource)
          assert.are.same({}, seen)
          assert.is_true(gone(pid_file), form .. ": the background sleep is still running")
        end
      end)

      it("returns what ends within timeout_ms as a result, exit 124 included", function()
        local r = p.exec(inst.id, sh("echo in time"), { timeout_ms = 20000 })
        assert.are.same({ 0, "in time\n" }, { r.exit_code, r.stdout })
        r = p.exec(inst.id, sh("echo own; exit 124"), { timeout_ms = 20000 })
        assert.are.same({ 124, "own\n" }, { r.exit_code, r.stdout })
        r = p.exec(inst.id, { kind = "shell", script = "echo shell; exit 5", env = { A = "1" } }, { timeout_ms = 20000 })
        assert.are.same({ 5, "shell\n" }, { r.exit_code, r.stdout })
      end)

      it("streams output to on_stdout and on_stderr, and returns all of it", function()
        local outs, errs = {}, {}
        local r = p.exec(inst.id, sh("echo one; echo e1 >&2; sleep 0.2; echo two; echo e2 >&2; exit 2"), {
          on_stdout = function(s) outs[#outs + 1] = s end, on_stderr = function(s) errs[#errs + 1] = s end })
        assert.are.same({ 2, "one\ntwo\n", "e1\ne2\n" }, { r.exit_code, r.stdout, r.stderr })
        assert.are.equal(r.stdout, table.concat(outs))
        assert.are.equal(r.stderr, table.concat(errs))
        outs = {}
        r = p.exec(inst.id, { kind = "shell", script = "echo shell", cwd = "/tmp" },
          { on_stdout = function(s) outs[#outs + 1] = s end, timeout_ms = 20000 })
        assert.are.same({ 0, "shell\n", "shell\n" }, { r.exit_code, r.stdout, table.concat(outs) })
      end)

      it("runs the shell form as a bash script with env and cwd", function()
        local r = run({ kind = "shell", cwd = "/tmp", env = { NAME = "a \"quoted\" `value`" },
          script = 'set -e\nx=$((6 * 7))\nprintf "%s %s %s\\n" "$x" "$NAME" "$(pwd)"\n'
            .. '[[ -n "$BASH_VERSION" ]] && echo bash' })
        assert.are.equal(0, r.exit_code, r.stderr)
        assert.are.equal("42 a \"quoted\" `value` /tmp\nbash\n", r.stdout)
        r = run({ kind = "shell", script = "echo before; exit 3" })
        assert.are.same({ 3, "before\n" }, { r.exit_code, r.stdout })
      end)
    end)

    describe("files", function()
      it("round-trips every byte value and an empty file", function()
        local data = all_bytes()
        p.files.write_file_atomic(inst.id, "/tmp/bytes.bin", data)
        assert.are.equal(data, p.files.read_file(inst.id, "/tmp/bytes.bin"))
        assert.are.equal(tostring(#data) .. "\n", out("wc -c < /tmp/bytes.bin"))
        p.files.write_file_atomic(inst.id, "/tmp/empty", "")
        assert.are.equal("", p.files.read_file(inst.id, "/tmp/empty"))
        assert.is_true(p.files.file_exists(inst.id, "/tmp/empty"))
      end)

      it("round-trips 5 MiB", function()
        local data = binary_mib(5)
        p.files.write_file_atomic(inst.id, "~/five.bin", data)
        assert.are.equal(codec.sha256(data) .. "\n", out("sha256sum < ~/five.bin | cut -d' ' -f1"))
        assert.are.equal(data, p.files.read_file(inst.id, "~/five.bin"))
        p.files.delete_file(inst.id, "~/five.bin")
      end)

      it("streams a big file from a local file and back to one", function()
        local mib = env.big_file_mib or 50
        local src, dst = local_tmp(), local_tmp()
        local f = assert(io.open(src, "wb"))
        local hasher = codec.sha256_hasher()
        local block = binary_mib(1)
        for i = 1, mib do
          local b = ("%015d\n"):format(i) .. block:sub(17)
          hasher:update(b)
          f:write(b)
        end
        f:close()
        local digest = hasher:hex()
        p.files.write_file_atomic(inst.id, "/tmp/big.bin", { from_file = src }, { create_dirs = true })
        assert.are.equal(digest .. "\n", out("sha256sum < /tmp/big.bin | cut -d' ' -f1"))
        local got = p.files.read_file(inst.id, "/tmp/big.bin", { to_file = dst })
        assert.are.equal(mib * MIB, got.size)
        assert.are.equal(digest, got.sha256)
        local g = assert(io.open(dst, "rb"))
        local check = codec.sha256_hasher()
        for chunk in function() return g:read(MIB) end do check:update(chunk) end
        g:close()
        assert.are.equal(digest, check:hex())
        p.files.delete_file(inst.id, "/tmp/big.bin")
      end)

      it("handles paths with spaces, quotes, newlines and non-ASCII", function()
        local dir = "~/we ird/it's \"q\" $x `y`\nline/ünï"
        local path = dir .. "/fi le ✓.txt"
        p.files.write_file_atomic(inst.id, path, "odd path", { create_dirs = true })
        assert.are.equal("odd path", p.files.read_file(inst.id, path))
        assert.is_true(p.files.is_directory(inst.id, dir))
        assert.are.same({ "fi le ✓.txt" }, names(dir))
        local abs = home .. path:sub(2)
        assert.are.equal("odd path", out('cat -- "$1"', abs))
        p.files.delete_directory(inst.id, "~/we ird")
        assert.is_false(p.files.file_exists(inst.id, path))
      end)

      it("expands ~ to the home directory", function()
        p.files.write_file_atomic(inst.id, "~/tilde.txt", "home")
        assert.are.equal("home", out('cat "$1/tilde.txt"', home))
        assert.are.equal("home", p.files.read_file(inst.id, home .. "/tilde.txt"))
        assert.is_true(p.files.is_directory(inst.id, "~"))
      end)

      it("applies modes and owners, and keeps the mode of a replaced file", function()
        p.files.write_file_atomic(inst.id, "~/.secrets/token", "s3cret", { mode = "600", create_dirs = true })
        assert.are.equal("600\n", out("stat -c %a ~/.secrets/token"))
        p.files.write_file_atomic(inst.id, "~/.secrets/token", "s3cret2")
        assert.are.equal("600\n", out("stat -c %a ~/.secrets/token"))
        p.files.write_file_atomic(inst.id, "/tmp/owned", "x", { mode = "0640", owner = "nobody" })
        assert.are.equal("640 nobody\n", out("stat -c '%a %U' /tmp/owned"))
        p.files.create_directory(inst.id, "/tmp/modedir/sub", { mode = "700" })
        assert.are.equal("700\n", out("stat -c %a /tmp/modedir/sub"))
      end)

      it("leaves the old content and no temporary file when an atomic write fails", function()
        p.files.write_file_atomic(inst.id, "~/atomic/target.txt", "old", { create_dirs = true })
        local before = names("~/atomic")
        -- chown fails after the content is written, before the rename
        local err = M.raises_code("FILE_IO_ERROR", p.files.write_file_atomic, inst.id, "~/atomic/target.txt", "new",
          { owner = "galley_no_such_user" })
        assert.matches("target%.txt", err.resource)
        assert.are.equal("old", p.files.read_file(inst.id, "~/atomic/target.txt"))
        assert.are.same(before, names("~/atomic"))
        -- the rename target is a directory, after a multi-exec upload
        p.files.create_directory(inst.id, "~/atomic/adir")
        p.files.write_file_atomic(inst.id, "~/atomic/adir/inside", "kept")
        before = names("~/atomic")
        M.raises_code("FILE_IO_ERROR", p.files.write_file_atomic, inst.id, "~/atomic/adir", binary_mib(3))
        assert.are.equal("kept", p.files.read_file(inst.id, "~/atomic/adir/inside"))
        assert.are.same(before, names("~/atomic"))
        -- a missing parent without create_dirs
        M.raises_code("FILE_IO_ERROR", p.files.write_file_atomic, inst.id, "~/atomic/missing/x", "x")
        assert.are.same(before, names("~/atomic"))
      end)

      it("refuses files over the size limit with FILE_TOO_LARGE", function()
        local limit = env.size_limit or p.capabilities.max_file_bytes or 256 * MIB
        local sparse = local_tmp()
        local f = assert(io.open(sparse, "wb"))
        f:seek("set", limit)
        f:write("x")
        f:close()
        local err = M.raises_code("FILE_TOO_LARGE", p.files.write_file_atomic, inst.id, "/tmp/huge",
          { from_file = sparse })
        assert.matches("huge", err.resource)
        assert.is_false(p.files.file_exists(inst.id, "/tmp/huge"))
        out('truncate -s "$1" /tmp/huge-remote', tostring(limit + 1))
        M.raises_code("FILE_TOO_LARGE", p.files.read_file, inst.id, "/tmp/huge-remote")
        p.files.delete_file(inst.id, "/tmp/huge-remote")
      end)

      it("creates, lists, copies, moves and deletes", function()
        p.files.create_directory(inst.id, "~/ops/a/b")
        assert.is_true(p.files.is_directory(inst.id, "~/ops/a/b"))
        assert.is_false(p.files.is_directory(inst.id, "~/ops/nope"))
        p.files.write_file_atomic(inst.id, "~/ops/a/one.txt", "1", { mode = "640" })
        p.files.copy_file(inst.id, "~/ops/a/one.txt", "~/ops/two.txt")
        assert.are.equal("1", p.files.read_file(inst.id, "~/ops/two.txt"))
        assert.are.equal("640\n", out("stat -c %a ~/ops/two.txt"))
        p.files.move_file(inst.id, "~/ops/two.txt", "~/ops/a/three.txt")
        assert.is_false(p.files.file_exists(inst.id, "~/ops/two.txt"))
        local entries = p.files.list_directory(inst.id, "~/ops/a")
        local by = {}
        for _, e in ipairs(entries) do by[e.name] = e end
        assert.are.same({ "b", "one.txt", "three.txt" }, names("~/ops/a"))
        assert.is_true(by.b.is_directory)
        assert.is_false(by["one.txt"].is_directory)
        assert.are.equal(1, by["three.txt"].size)
        p.files.delete_file(inst.id, "~/ops/a/one.txt")
        p.files.delete_file(inst.id, "~/ops/a/one.txt") -- already gone: fine
        assert.is_false(p.files.file_exists(inst.id, "~/ops/a/one.txt"))
        M.raises_code("FILE_IO_ERROR", p.files.delete_file, inst.id, "~/ops/a/b")
        M.raises_code("FILE_IO_ERROR", p.files.delete_directory, inst.id, "~/ops/a/three.txt")
        p.files.delete_directory(inst.id, "~/ops")
        assert.is_false(p.files.file_exists(inst.id, "~/ops"))
      end)

      it("says NOT_FOUND for missing files and directories", function()
        local err = M.raises_code("NOT_FOUND", p.files.read_file, inst.id, "~/no/such/file")
        assert.are.equal("file:" .. home .. "/no/such/file", err.resource)
        M.raises_code("NOT_FOUND", p.files.list_directory, inst.id, "~/no/such/dir")
        M.raises_code("NOT_FOUND", p.files.copy_file, inst.id, "~/no/such/file", "~/x")
        M.raises_code("NOT_FOUND", p.files.move_file, inst.id, "~/no/such/file", "~/x")
        M.raises_code("NOT_FOUND", p.files.create_directory, inst.id, "~/no/such/dir", { recursive = false })
        assert.is_false(p.files.file_exists(inst.id, "~/no/such/file"))
      end)
    end)

    -- spawn is an extra of the providers, not the contract: a recipe that fans long commands
    -- out over instances uses it, so where a provider has it, it behaves the same.
    describe("spawn", function()
      -- Reads a spawned handle until its stdout holds `want` (10 s at most).
      local function read_until(h, want)
        local got = ""
        local deadline = runtime.now_ms() + 10000
        while not got:find(want, 1, true) do
          local kind, data = h:read(math.max(1, deadline - runtime.now_ms()))
          assert.is_truthy(kind, ("no %q from the spawned command (got %q)"):format(want, got))
          assert.are_not.equal("exit", kind, ("the command ended before %q (got %q)"):format(want, got))
          if kind == "stdout" then got = got .. data end
        end
        return got
      end

      -- Polls the instance until `check` (a script) exits 0, 10 s at most.
      local function eventually(script, ...)
        local deadline = runtime.now_ms() + 10000
        repeat
          if run(sh(script, ...)).exit_code == 0 then return true end
          runtime.sleep_ms(100)
        until runtime.now_ms() > deadline
        return false
      end

      it("streams a spawned command's output and reports how it ended, its argv untouched", function()
        if not p.spawn then return pending("no spawn here") end
        local args = { "it's", 'say "hi"', "$HOME", "`id`", "$(id)", "a\nb", "--leading", "-n", "", "  spaces  ",
          "back\\slash", "*", "semi; colon && | pipe > out", "%s%d%%" }
        local h = p.spawn(inst.id, { "/bin/sh", "-c",
          'for a in "$@"; do printf "%s<END>" "$a"; done; echo err >&2; exit 3', "sh", table.unpack(args) })
        local res = h:wait(30000)
        h:close()
        assert.is_table(res, "wait() came back")
        assert.are.same({ 3, table.concat(args, "<END>") .. "<END>", "err\n" }, { res.exit_code, res.stdout, res.stderr })
      end)

      it("refuses NUL, invalid UTF-8 and an oversized argument with VALIDATION_ERROR before starting #hardening",
        function()
        -- (Morph and Proxmox took them: a NUL cut the command short, a 200 KiB argument went out)
        if not p.spawn then return pending("no spawn here") end
        for _, case in ipairs({ { { "/bin/echo", "a\0b" }, "command.args[1]" },
          { { "/bin/echo", "\255\254" }, "command.args[1]" },
          { { "/bin/echo", ("x"):rep(200 * 1024) }, "command.args[1]" },
          { { "/bin/ec\0ho" }, "command.command" }, { {}, "command" } }) do
          local err = M.raises_code("VALIDATION_ERROR", p.spawn, inst.id, case[1])
          assert.are.equal(case[2], err.field)
        end
      end)

      it("passes a signal to the command, whose own trap decides how it ends", function()
        if not p.spawn then return pending("no spawn here") end
        for _, sig in ipairs({ "TERM", "INT", "HUP" }) do
          local h = p.spawn(inst.id, { "/bin/sh", "-c",
            "trap 'echo got-$1; exit 7' $1; echo up; while :; do sleep 0.1; done", "sh", sig })
          read_until(h, "up\n")
          assert.is_true(h:kill(sig))
          local res = h:wait(10000)
          h:close()
          assert.is_table(res, sig .. ": wait() came back")
          assert.are.same({ 7, "got-" .. sig .. "\n" }, { res.exit_code, res.stdout }, sig)
        end
      end)

      -- Spawns argv, kill()s it (TERM) once it printed "up", and returns what wait() says.
      local function killed_after_up(argv)
        local h = p.spawn(inst.id, argv)
        read_until(h, "up\n")
        assert.is_true(h:kill())
        local res = h:wait(10000)
        h:close()
        assert.is_table(res, "wait() came back")
        return res
      end

      it("ends a command without a trap with 128 + the signal", function()
        if not p.spawn then return pending("no spawn here") end
        local res = killed_after_up({ "/bin/sh", "-c", "echo up; sleep 600; echo not-killed" })
        assert.are.same({ 143, "" }, { res.exit_code, res.stdout })
      end)

      it("ends what a dying command made while it held the signal back, and leaves catchers alone", function()
        -- A shell blocks signals while it forks (dash, around vfork): a child made then is not
        -- sent what arrived meanwhile, and ran on after the shell died of it, holding the
        -- command's output open (wait never came back). See held_back_argv.
        if not p.spawn then return pending("no spawn here") end
        local res = killed_after_up(M.held_back_argv())
        assert.are.same({ 143, "forked\nleft-alone\n" }, { res.exit_code, res.stdout })
      end)

      it("ends a running command and what it started when closed", function()
        if not p.spawn then return pending("no spawn here") end
        local mark = "/tmp/galley-spawn-" .. codec.random_hex(6)
        local h = p.spawn(inst.id, { "/bin/sh", "-c", 'sleep 600 & echo $! > "$1"; echo up; wait', "sh", mark })
        read_until(h, "up\n")
        assert.are.equal(0, run(sh('kill -0 "$(cat "$1")"', mark)).exit_code, "the background sleep runs")
        h:close()
        assert.is_true(eventually('! kill -0 "$(cat "$1")" 2>/dev/null', mark),
          "the command's background sleep outlived close()")
        run(sh('rm -f -- "$1"', mark))
      end)
    end)

    describe("errors", function()
      it("maps a missing instance to NOT_FOUND", function()
        local ghost = "morphvm_nosuch00"
        M.raises_code("NOT_FOUND", p.instances.get, ghost)
        M.raises_code("NOT_FOUND", p.exec, ghost, sh("true"))
        M.raises_code("NOT_FOUND", p.files.write_file_atomic, ghost, "/tmp/x", "x")
        M.raises_code("NOT_FOUND", p.instances.pause, ghost)
        M.raises_code("NOT_FOUND", p.instances.boot, "snapshot_nosuch00")
      end)

      it("maps bad specs and paths to VALIDATION_ERROR", function()
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, { kind = "nope" })
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, { kind = "argv" })
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, { kind = "argv", command = "ls", args = { 1, {} } })
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, { kind = "shell", script = "true", cwd = "relative" })
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, 42)
        M.raises_code("VALIDATION_ERROR", p.exec, inst.id, "")
        for _, bad in ipairs({ { timeout_ms = 0 }, { timeout_ms = "500" }, { timeout_ms = 1.5 }, { on_stdout = "x" },
          { timeout = 500 }, "500" }) do
          local err = M.raises_code("VALIDATION_ERROR", p.exec, inst.id, sh("true"), bad)
          assert.matches("^opts", err.field)
        end
        M.raises_code("VALIDATION_ERROR", p.files.read_file, inst.id, "relative/path")
        M.raises_code("VALIDATION_ERROR", p.files.write_file_atomic, inst.id, "/tmp/x", "x", { mode = 600 })
        M.raises_code("VALIDATION_ERROR", p.files.write_file_atomic, inst.id, "/tmp/x", 42)
        M.raises_code("VALIDATION_ERROR", p.instances.boot, env.snapshot_id, { ttl_seconds = -1 })
      end)

      it("refuses unsafe ids with the one shared id check #hardening", function()
        for _, id in ipairs({ ".", "..", "", "a/b", "../x", "-x", "id\xff", "a b", ("i"):rep(129) }) do
          local err = M.raises_code("VALIDATION_ERROR", p.instances.get, id)
          assert.are.equal("instance_id", err.field)
          M.raises_code("VALIDATION_ERROR", p.instances.terminate, id)
          M.raises_code("VALIDATION_ERROR", p.exec, id, sh("true"))
          M.raises_code("VALIDATION_ERROR", p.files.read_file, id, "/etc/hostname")
          err = M.raises_code("VALIDATION_ERROR", p.instances.boot, id)
          assert.are.equal("snapshot_id", err.field)
        end
        assert.are.equal("ready", p.instances.get(inst.id).status)
      end)

      it("refuses invalid UTF-8 and NUL in text fields, and oversized argv, naming the field #hardening", function()
        local err = M.raises_code("VALIDATION_ERROR", p.exec, inst.id,
          { kind = "argv", command = "echo", args = { "\xff" } })
        assert.are.equal("command.args[1]", err.field)
        err = M.raises_code("VALIDATION_ERROR", p.exec, inst.id, { kind = "shell", script = "true", cwd = "/tmp/\xc3" })
        assert.are.equal("command.cwd", err.field)
        err = M.raises_code("VALIDATION_ERROR", p.exec, inst.id,
          { kind = "argv", command = "echo", args = { ("a"):rep(128 * 1024) } })
        assert.are.equal("command.args[1]", err.field)
        err = M.raises_code("VALIDATION_ERROR", p.files.write_file_atomic, inst.id, "/tmp/\xff", "x")
        assert.are.equal("path", err.field)
        err = M.raises_code("VALIDATION_ERROR", boot, { metadata = { k = "v\0" } })
        assert.are.equal("metadata.k", err.field)
        err = M.raises_code("VALIDATION_ERROR", boot, { metadata = { k = "\xe9" } })
        assert.are.equal("metadata.k", err.field)
        M.raises_code("VALIDATION_ERROR", p.instances.list, { metadata = { k = ("v"):rep(5000) } })
      end)
    end)
  end)
end

return M
