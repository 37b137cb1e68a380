local fs = require("galley.core.fs")

local function all_bytes()
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  return table.concat(t)
end

--- Open descriptors of this process (listing /proc/self/fd opens one more, the same each time).
local function open_fds()
  return #assert(fs.list("/proc/self/fd"))
end

describe("galley.core.fs #fs", function()
  local root

  before_each(function()
    root = assert(fs.mkdtemp("galley-fs-spec-"))
  end)

  after_each(function()
    assert(fs.remove_tree(root))
  end)

  describe("read and write", function()
    it("round-trips binary data", function()
      local data = all_bytes():rep(4096)
      assert.is_true(fs.write(root .. "/bin", data))
      assert.is_true(fs.read(root .. "/bin") == data)
      assert.is_true(fs.write(root .. "/empty", ""))
      assert.are.equal("", fs.read(root .. "/empty"))
    end)

    it("returns FS_NOT_FOUND with the path for a missing file", function()
      local data, err = fs.read(root .. "/missing")
      assert.is_nil(data)
      assert.are.equal("FS_NOT_FOUND", err.code)
      assert.are.equal(root .. "/missing", err.path)
      assert.are.equal("FS_NOT_FOUND", select(2, fs.write(root .. "/no/dir/file", "x")).code)
      assert.are.equal("FS_IO", select(2, fs.read(root)).code)
    end)

    it("returns FS_PERMISSION when the system refuses", function()
      local ok, err = fs.remove("/proc/self")
      assert.is_nil(ok)
      assert.are.equal("FS_PERMISSION", err.code)
      local me = fs.stat(root).uid
      if me ~= 0 then
        assert(fs.mkdir_p(root .. "/ro", "500"))
        assert.are.equal("FS_PERMISSION", select(2, fs.write(root .. "/ro/x", "x")).code)
      end
    end)

    it("accepts modes as integers and octal strings", function()
      assert(fs.write(root .. "/a", "x", { mode = 384 }))
      assert.are.equal(384, fs.stat(root .. "/a").mode)
      assert(fs.write(root .. "/b", "x", { mode = "0640" }))
      assert.are.equal(416, fs.stat(root .. "/b").mode)
      assert(fs.write(root .. "/b", "y", { mode = "600" }))
      assert.are.equal(384, fs.stat(root .. "/b").mode)
      assert(fs.write(root .. "/b", "z"))
      assert.are.equal(384, fs.stat(root .. "/b").mode)
      for _, bad in ipairs{ "999", "abc", "", -1, 70000, 1.5, true } do
        assert.has_error(function() fs.write(root .. "/c", "x", { mode = bad }) end)
      end
      assert.has_error(function() fs.write(root .. "/c", "x", "600") end)
      assert.has_error(function() fs.read(root .. "/a\0b") end)
      assert.has_error(function() fs.write(root .. "/c", nil) end)
    end)
  end)

  describe("write_atomic", function()
    it("replaces the target, keeping its mode unless told otherwise", function()
      assert(fs.write(root .. "/t", "old", { mode = "640" }))
      assert.is_true(fs.write_atomic(root .. "/t", "new"))
      assert.are.equal("new", fs.read(root .. "/t"))
      assert.are.equal(416, fs.stat(root .. "/t").mode)
      assert.is_true(fs.write_atomic(root .. "/t", "secret", { mode = "600" }))
      assert.are.equal(384, fs.stat(root .. "/t").mode)
      assert.is_true(fs.write_atomic(root .. "/fresh", all_bytes()))
      assert.are.equal(all_bytes(), fs.read(root .. "/fresh"))
      assert.are.same({ "fresh", "t" }, fs.list(root))
    end)

    it("leaves the old target and no temporary file when it fails", function()
      assert(fs.mkdir_p(root .. "/target"))
      assert(fs.write(root .. "/target/keep", "kept"))
      local ok, err = fs.write_atomic(root .. "/target", "x")
      assert.is_nil(ok)
      assert.are.equal(root .. "/target", err.path)
      assert.are.equal("kept", fs.read(root .. "/target/keep"))
      assert.are.same({ "target" }, fs.list(root))
      assert.are.equal("FS_NOT_FOUND", select(2, fs.write_atomic(root .. "/nodir/x", "x")).code)
    end)

    -- A real observer (inotifywait) stats each file the moment it appears, is written or is
    -- chmodded, while another galley process with a umask of 000 writes 32 MiB.
    describe("seen by another process while it writes", function()
      local observer = require("support.host_files")
      local big = 'string.rep("s", 32 * 1024 * 1024)'

      local function observe(code)
        local dir = root .. "/watched"
        assert(fs.mkdir_p(dir, "755"))
        local events, r = observer.observe(dir, observer.galley_umask0(code), { TARGET = dir .. "/token" })
        assert.are.equal(0, r.exit_code, r.stderr)
        local created = {}
        for _, e in ipairs(events) do
          if e.event:match("CREATE") then created[#created + 1] = e end
        end
        assert.is_true(#created >= 1, "the observer saw no file created")
        return events, created, dir
      end

      it("never shows the data with more permissions than the final mode, whatever the umask", function()
        if not observer.have_inotify() then return pending("inotifywait (inotify-tools) is not installed") end
        local events, created, dir = observe(('assert(require("galley.core.fs").write_atomic(os.getenv("TARGET"), %s, '
          .. '{ mode = "600" }))'):format(big))
        assert.is_not_nil(created[1].mode, "the temporary file was gone before the observer looked")
        for _, e in ipairs(events) do
          if e.mode then
            assert.are.equal(0, e.mode & 63, ("%s %s had mode %o"):format(e.event, e.name, e.mode))
          end
        end
        assert.are.equal(384, fs.stat(dir .. "/token").mode)
      end)

      it("keeps an existing target's mode from the first moment when no mode is given", function()
        if not observer.have_inotify() then return pending("inotifywait (inotify-tools) is not installed") end
        local events, _, dir = observe(('local fs = require("galley.core.fs"); local p = os.getenv("TARGET"); '
          .. 'assert(fs.write(p, "old", { mode = "600" })); assert(fs.write_atomic(p, %s))'):format(big))
        local seen_temp = false
        for _, e in ipairs(events) do
          if e.name ~= "token" and e.mode then
            seen_temp = true
            assert.are.equal(384, e.mode, ("%s %s had mode %o"):format(e.event, e.name, e.mode))
          end
        end
        assert.is_true(seen_temp, "the observer never saw the temporary file")
        assert.are.equal(384, fs.stat(dir .. "/token").mode)
      end)

      it("uses an unpredictable temporary name beside the target", function()
        if not observer.have_inotify() then return pending("inotifywait (inotify-tools) is not installed") end
        local _, created = observe('local fs = require("galley.core.fs"); for _ = 1, 3 do '
          .. 'assert(fs.write_atomic(os.getenv("TARGET"), "x", { mode = "600" })) end')
        local names = {}
        for _, e in ipairs(created) do
          assert.matches("^%.token%.tmp%-" .. ("%x"):rep(16) .. "$", e.name)
          assert.is_nil(names[e.name], "a temporary name was used twice")
          names[e.name] = true
        end
        assert.are.equal(3, #created)
      end)
    end)
  end)

  describe("stat and exists", function()
    it("describes files, directories and links", function()
      assert(fs.write(root .. "/f", "12345", { mode = "604" }))
      local st = assert(fs.stat(root .. "/f"))
      assert.are.equal("file", st.type)
      assert.are.equal(5, st.size)
      assert.are.equal(tonumber("604", 8), st.mode)
      assert.is_true(math.type(st.mtime) == "integer" and st.mtime > 1600000000)
      assert.is_number(st.uid)
      assert.is_number(st.gid)
      assert.are.equal("directory", fs.stat(root).type)
      assert.are.equal("other", fs.stat("/dev/null").type)
      assert.is_true(os.execute(("ln -s f %s/l"):format(root)))
      assert.are.equal("link", fs.stat(root .. "/l").type)
      local none, err = fs.stat(root .. "/none")
      assert.is_nil(none)
      assert.are.equal("FS_NOT_FOUND", err.code)
      assert.is_true(fs.exists(root .. "/f"))
      assert.is_true(fs.exists(root .. "/l"))
      assert.is_false(fs.exists(root .. "/none"))
    end)

    it("gives nanosecond times and the inode, as stat(1) sees them", function()
      assert(fs.write(root .. "/g", "x"))
      assert.is_true(os.execute(("touch -d '2001-02-03 04:05:06.123456789' %s/g"):format(root)))
      local st = assert(fs.stat(root .. "/g"))
      local p = assert(io.popen(("stat -c '%%i %%Y %%Z' %s/g"):format(root)))
      local ino, mtime, ctime = p:read("a"):match("(%d+) (%d+) (%d+)")
      p:close()
      assert.are.equal(tonumber(ino), st.ino)
      assert.are.equal(tonumber(mtime), st.mtime)
      assert.are.equal(tonumber(mtime) * 1000000000 + 123456789, st.mtime_ns)
      assert.are.equal(tonumber(ctime), st.ctime_ns // 1000000000)
      -- a chmod moves the ctime, never back (the mtime stays)
      assert.is_true(os.execute(("sleep 0.02; chmod 600 %s/g"):format(root)))
      local after = assert(fs.stat(root .. "/g"))
      assert.is_true(after.ctime_ns > st.ctime_ns)
      assert.are.equal(st.mtime_ns, after.mtime_ns)
    end)
  end)

  describe("chunks", function()
    it("yields successive pieces of at most n bytes", function()
      local data = all_bytes():rep(100) .. "tail"
      assert(fs.write(root .. "/c", data))
      local pieces = {}
      for piece in assert(fs.chunks(root .. "/c", 1000)) do
        assert.is_true(#piece <= 1000 and #piece > 0)
        pieces[#pieces + 1] = piece
      end
      assert.are.equal(math.ceil(#data / 1000), #pieces)
      assert.is_true(table.concat(pieces) == data)
      local n = 0
      for _ in assert(fs.chunks(root .. "/c", 1)) do n = n + 1 end
      assert.are.equal(#data, n)
      assert(fs.write(root .. "/e", ""))
      for _ in assert(fs.chunks(root .. "/e", 10)) do error("no pieces expected") end
    end)

    it("closes the file at EOF, on break and when collected", function()
      assert(fs.write(root .. "/c", ("x"):rep(100)))
      local before = open_fds()
      for _ in assert(fs.chunks(root .. "/c", 10)) do
        assert.are.equal(before + 1, open_fds())
      end
      assert.are.equal(before, open_fds())
      for _ in assert(fs.chunks(root .. "/c", 10)) do break end -- luacheck: ignore 512
      assert.are.equal(before, open_fds())
      do
        local iter = assert(fs.chunks(root .. "/c", 10))
        assert.are.equal(("x"):rep(10), iter())
        assert.are.equal(before + 1, open_fds())
      end
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, open_fds())
    end)

    it("returns nil, err when the file cannot be opened and raises on a read error", function()
      local iter, err = fs.chunks(root .. "/missing", 10)
      assert.is_nil(iter)
      assert.are.equal("FS_NOT_FOUND", err.code)
      local before = open_fds()
      local ok, e = pcall(function()
        for _ in assert(fs.chunks(root, 10)) do end -- a directory opens but cannot be read
      end)
      assert.is_false(ok)
      assert.are.equal("FS_IO", e.code)
      assert.are.equal(root, e.path)
      assert.are.equal(before, open_fds())
      assert.has_error(function() fs.chunks(root .. "/x", 0) end)
    end)
  end)

  describe("directories", function()
    it("makes nested directories and accepts existing ones", function()
      assert.is_true(fs.mkdir_p(root .. "/a/b/c"))
      assert.is_true(fs.mkdir_p(root .. "/a/b/c"))
      assert.is_true(fs.mkdir_p(root .. "/a/m", "0750"))
      assert.are.equal("directory", fs.stat(root .. "/a/m").type)
      assert(fs.write(root .. "/a/file", "x"))
      assert.are.equal("FS_EXISTS", select(2, fs.mkdir_p(root .. "/a/file")).code)
    end)

    it("makes one directory with exactly the mode asked (sticky bit too, whatever the umask)", function()
      assert.is_true(fs.mkdir(root .. "/t", "1777"))
      assert.are.equal(tonumber("1777", 8), fs.stat(root .. "/t").mode)
      assert.is_true(fs.mkdir(root .. "/p", "0700"))
      assert.are.equal(tonumber("700", 8), fs.stat(root .. "/p").mode)
      assert.are.equal("FS_EXISTS", select(2, fs.mkdir(root .. "/p", "0700")).code)
      assert.are.equal("FS_NOT_FOUND", select(2, fs.mkdir(root .. "/no/such", "0700")).code)
    end)

    it("makes named pipes with exactly the mode asked", function()
      assert.is_true(fs.mkfifo(root .. "/pipe", "600"))
      local st = fs.stat(root .. "/pipe")
      assert.are.equal("other", st.type)
      assert.are.equal(tonumber("600", 8), st.mode)
      assert.are.equal("FS_EXISTS", select(2, fs.mkfifo(root .. "/pipe", "600")).code)
    end)

    it("changes the owner of a path, never of a symlink's target", function()
      assert(fs.write(root .. "/f", "x"))
      os.execute(("ln -s %s/f %s/link"):format(root, root))
      local uid = require("galley.core.runtime").getuid()
      if uid == 0 then
        assert.is_true(fs.chown(root .. "/link", 4242, 4343))
        local out = io.popen(("stat -c '%%u:%%g' %s/f; stat -c '%%u:%%g' %s/link"):format(root, root)):read("a")
        assert.are.equal("0:0\n4242:4343\n", out)
      else
        assert.are.equal("FS_PERMISSION", select(2, fs.chown(root .. "/f", 0, 0)).code)
      end
      assert.are.equal("FS_NOT_FOUND", select(2, fs.chown(root .. "/none", 1, 1)).code)
    end)

    it("removes files and empty directories, and says when a directory is not empty", function()
      assert(fs.mkdir_p(root .. "/d/sub"))
      assert(fs.write(root .. "/f", "x"))
      assert.is_true(fs.remove(root .. "/f"))
      assert.are.equal("FS_NOT_FOUND", select(2, fs.remove(root .. "/f")).code)
      assert.are.equal("FS_EXISTS", select(2, fs.remove(root .. "/d")).code)
      assert.is_true(fs.remove(root .. "/d/sub"))
      assert.is_true(fs.remove(root .. "/d"))
    end)

    it("removes a tree without following symlinks out of it", function()
      assert(fs.mkdir_p(root .. "/outside"))
      assert(fs.write(root .. "/outside/precious", "keep"))
      assert(fs.mkdir_p(root .. "/tree/x/y"))
      assert(fs.write(root .. "/tree/x/y/f", "1"))
      os.execute(("ln -s %s/outside %s/tree/x/escape"):format(root, root))
      assert.are.equal("link", fs.stat(root .. "/tree/x/escape").type)
      assert.is_true(fs.remove_tree(root .. "/tree"))
      assert.is_false(fs.exists(root .. "/tree"))
      assert.are.equal("keep", fs.read(root .. "/outside/precious"))
      assert.are.equal("FS_NOT_FOUND", select(2, fs.remove_tree(root .. "/tree")).code)
    end)

    it("lists names sorted", function()
      for _, name in ipairs{ "b", "a", "C", ".h" } do assert(fs.write(root .. "/" .. name, "")) end
      assert(fs.mkdir_p(root .. "/dir"))
      assert.are.same({ ".h", "C", "a", "b", "dir" }, fs.list(root))
      assert.are.equal("FS_NOT_FOUND", select(2, fs.list(root .. "/none")).code)
    end)

    it("makes distinct temporary directories", function()
      local a = assert(fs.mkdtemp(root .. "/t-"))
      local b = assert(fs.mkdtemp(root .. "/t-"))
      assert.are_not.equal(a, b)
      assert.are.equal(root .. "/t-", a:sub(1, #root + 3))
      assert.are.equal(448, fs.stat(a).mode)
    end)

    it("copies a tree keeping modes and symlinks", function()
      assert(fs.mkdir_p(root .. "/src/sub"))
      assert(fs.write(root .. "/src/run.sh", "#!/bin/sh\n", { mode = "755" }))
      assert(fs.write(root .. "/src/sub/secret", all_bytes(), { mode = "600" }))
      os.execute(("ln -s sub/secret %s/src/link"):format(root))
      assert.is_true(fs.copy_tree(root .. "/src", root .. "/dst"))
      assert.are.same({ "link", "run.sh", "sub" }, fs.list(root .. "/dst"))
      assert.are.equal(tonumber("755", 8), fs.stat(root .. "/dst/run.sh").mode)
      assert.are.equal(tonumber("600", 8), fs.stat(root .. "/dst/sub/secret").mode)
      assert.are.equal(all_bytes(), fs.read(root .. "/dst/sub/secret"))
      assert.are.equal("link", fs.stat(root .. "/dst/link").type)
      assert.are.equal(all_bytes(), fs.read(root .. "/dst/link"))
      assert.are.equal("FS_EXISTS", select(2, fs.copy_tree(root .. "/src", root .. "/dst")).code)
      assert.are.equal("FS_NOT_FOUND", select(2, fs.copy_tree(root .. "/none", root .. "/d2")).code)
    end)

    it("resolves real paths", function()
      assert(fs.mkdir_p(root .. "/r/s"))
      local real = assert(fs.realpath(root))
      assert.are.equal(real .. "/r", fs.realpath(root .. "/r/s/../."))
      assert.are.equal("FS_NOT_FOUND", select(2, fs.realpath(root .. "/none")).code)
    end)
  end)
end)
