-- galley.providers.execfiles against real local processes: exec_argv runs each argv on this
-- machine (no sandbox), with a temporary directory as the "instance" home.
local support = require("support")
local codec = require("galley.core.codec")
local execfiles = require("galley.providers.execfiles")
local proc = require("galley.core.proc")
local task = require("galley.task")
local conformance = require("providers.conformance")

local raises_code = conformance.raises_code

local function mktemp_dir()
  return (assert(proc.run({ argv = { "mktemp", "-d", "/tmp/galley-xf-XXXXXX" } })).stdout:gsub("%s+$", ""))
end

local function sh_out(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... } }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function ls(dir)
  return sh_out('ls -A -- "$1"', dir)
end

-- A test "instance": exec_argv runs argv locally with PATH = path (nil: ours) and records calls.
local function harness(opts)
  opts = opts or {}
  local h = { calls = {}, root = mktemp_dir() }
  h.exec_argv = function(id, argv)
    if id ~= "inst-1" then
      error(setmetatable({ code = "NOT_FOUND", message = "no instance " .. id }, require("galley.errors").metatable), 0)
    end
    h.calls[#h.calls + 1] = argv
    if h.before then h.before(#h.calls, argv) end
    local env = opts.path and { PATH = opts.path } or nil
    local r = assert(proc.run({ argv = argv, env = env, env_mode = "extend" }))
    if h.after then h.after(#h.calls, argv, r) end
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
  end
  local fopts = { exec_argv = h.exec_argv, home_dir = h.root }
  for k, v in pairs(opts.files or {}) do fopts[k] = v end
  h.files = execfiles.new(fopts)
  h.cleanup = function() proc.run({ argv = { "rm", "-rf", "--", h.root } }) end
  return h
end

-- True for the last exec of a write whose chunks were checked where they landed: it carries a
-- "tail:N" scope (base64 has no colon).
local function checks_tail(argv)
  for _, a in ipairs(argv) do
    if a:match("^tail:%d+$") then return true end
  end
  return false
end

-- The scope argument of a write exec: two before the base64 marker (after it, the pieces).
local function scope_of(argv)
  for i, a in ipairs(argv) do
    if a:match("^@galley%-b64\n?$") then return argv[i - 2] end
  end
end

local function binary(n)
  local t = {}
  for i = 0, 255 do t[#t + 1] = string.char(i) end
  local s = table.concat(t):rep(n // 256 + 1)
  return s:sub(1, n)
end

describe("execfiles #files", function()
  local cleanups = {}
  local function new_harness(opts)
    local h = harness(opts)
    cleanups[#cleanups + 1] = h.cleanup
    return h
  end
  teardown(function()
    for _, c in ipairs(cleanups) do c() end
  end)

  for _, decoder in ipairs({ "python", "python-only", "coreutils" }) do
    describe("with the " .. decoder .. " decoder", function()
      local h
      setup(function()
        h = new_harness({ files = { decoder = decoder, max_request_bytes = 64 * 1024, max_arg_bytes = 16 * 1024 } })
      end)
      before_each(function()
        h.before, h.after = nil, nil
      end)

      it("writes a small file in exactly one exec", function()
        h.calls = {}
        h.files.write_file_atomic("inst-1", "~/a/b/small.txt", "hello", { create_dirs = true, mode = "640" })
        assert.are.equal(1, #h.calls)
        assert.are.equal("hello", slurp(h.root .. "/a/b/small.txt"))
        assert.are.equal("640\n", sh_out('stat -c %a "$1"', h.root .. "/a/b/small.txt"))
      end)

      it("splits big contents into argv elements and execs below the limits", function()
        local data = binary(300 * 1024 + 7)
        h.calls = {}
        h.files.write_file_atomic("inst-1", "~/big.bin", data)
        local expected_execs = math.ceil(#data / (3 * (64 * 1024 // 4)))
        assert.are.equal(expected_execs, #h.calls)
        for _, argv in ipairs(h.calls) do
          local payload = 0
          for _, a in ipairs(argv) do
            assert.is_true(#a <= 16 * 1024, "element too long")
            if a:match("^[A-Za-z0-9+/=]+$") and #a > 100 then payload = payload + #a end
          end
          assert.is_true(payload <= 64 * 1024)
        end
        assert.are.equal(data, slurp(h.root .. "/big.bin"))
        h.calls = {}
        assert.are.equal(data, h.files.read_file("inst-1", "~/big.bin"))
        assert.are.equal(math.ceil(#data / (3 * (64 * 1024 // 4))), #h.calls)
      end)

      it("reads a small file in one exec and checks every byte value", function()
        local data = binary(512) .. "\0\r\n"
        spit(h.root .. "/bytes", data)
        h.calls = {}
        assert.are.equal(data, h.files.read_file("inst-1", h.root .. "/bytes"))
        assert.are.equal(1, #h.calls)
      end)

      it("fails verification when the content is damaged on the way, keeping the old file", function()
        spit(h.root .. "/victim", "old")
        h.before = function(_, argv)
          local last = argv[#argv]
          argv[#argv] = (last:sub(1, 1) == "A" and "B" or "A") .. last:sub(2)
        end
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/victim", binary(200 * 1024))
        h.before = nil
        assert.are.equal(42, err.details.exit_code)
        assert.are.equal("file:" .. h.root .. "/victim", err.resource)
        assert.are.equal("old", slurp(h.root .. "/victim"))
        assert.is_nil(ls(h.root):find("galley-tmp", 1, true))
      end)

      it("fails when one chunk is damaged on the way, before the last exec runs", function()
        spit(h.root .. "/victim2", "old")
        -- 200 KiB in chunks of 48 KiB: 5 execs; only the 2nd one's base64 is damaged (one character)
        h.calls = {}
        h.before = function(n, argv)
          if n == 2 then
            local last = argv[#argv]
            local i = #last // 2
            argv[#argv] = last:sub(1, i - 1) .. (last:sub(i, i) == "A" and "B" or "A") .. last:sub(i + 1)
          end
        end
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/victim2", binary(200 * 1024))
        h.before = nil
        assert.are.equal(42, err.details.exit_code)
        assert.is_string(err.hint)
        assert.are.equal("old", slurp(h.root .. "/victim2"))
        assert.is_nil(ls(h.root):find("galley-tmp", 1, true))
        if decoder ~= "python-only" then
          -- the damaged chunk said so itself: the last exec (the write program, with its scope
          -- argument) never ran
          for _, argv in ipairs(h.calls) do assert.is_false(checks_tail(argv)) end
        end
      end)

      for _, change in ipairs({ "grown", "truncated" }) do
        it("fails when the temporary file was " .. change .. " between the chunks and the last exec", function()
          spit(h.root .. "/sized", "old")
          local data = binary(200 * 1024)
          h.calls = {}
          h.before = function(n)
            if n ~= 5 then return end -- the last of 5 execs: every other chunk is in
            local tmp = h.root .. "/" .. sh_out('ls -A -- "$1" | grep "^.sized.galley-tmp-"', h.root):gsub("%s+$", "")
            if change == "grown" then
              sh_out('printf x >> "$1"', tmp)
            else
              sh_out('truncate -s 1000 -- "$1"', tmp)
            end
          end
          local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/sized", data)
          h.before = nil
          assert.are.equal(5, #h.calls)
          assert.are.equal(42, err.details.exit_code)
          assert.are.equal("old", slurp(h.root .. "/sized"))
          assert.is_nil(ls(h.root):find("galley-tmp", 1, true))
          -- the same write, left alone, lands byte for byte
          h.files.write_file_atomic("inst-1", "~/sized", data)
          assert.are.equal(codec.sha256(data), codec.sha256(slurp(h.root .. "/sized")))
        end)
      end

      it("checks the whole file at the end only where chunks were appended, else the last piece", function()
        local data = binary(200 * 1024 + 3)
        h.calls = {}
        h.files.write_file_atomic("inst-1", "~/scoped", data)
        assert.are.equal(5, #h.calls)
        local final = h.calls[5]
        local piece = #data - 4 * 3 * (64 * 1024 // 4)
        if decoder == "python-only" then
          assert.are.equal("all", scope_of(final))
        else
          assert.are.equal("tail:" .. piece, scope_of(final))
          -- each chunk exec carried its length and sha256
          for i = 1, 4 do
            local raw = data:sub((i - 1) * 49152 + 1, i * 49152)
            local argv = h.calls[i]
            assert.are.same({ tostring((i - 1) * 49152), tostring(#raw), codec.sha256(raw) },
              { argv[8], argv[9], argv[10] })
          end
        end
        assert.are.equal(codec.sha256(data), codec.sha256(slurp(h.root .. "/scoped")))
      end)

      it("removes the temporary file when an exec fails half-way", function()
        spit(h.root .. "/half", "old")
        local n = 0
        h.before = function()
          n = n + 1
          if n == 2 then
            error(setmetatable({ code = "NETWORK_ERROR", message = "connection reset" },
              require("galley.errors").metatable), 0)
          end
        end
        raises_code("NETWORK_ERROR", h.files.write_file_atomic, "inst-1", "~/half", binary(200 * 1024))
        h.before = nil
        assert.are.equal("old", slurp(h.root .. "/half"))
        assert.is_nil(ls(h.root):find("galley-tmp", 1, true))
      end)

      it("notices a file that changes while it is read", function()
        spit(h.root .. "/moving", binary(200 * 1024))
        h.calls = {}
        h.after = function(n)
          if n == 1 then spit(h.root .. "/moving", ("x"):rep(200 * 1024)) end
        end
        raises_code("FILE_IO_ERROR", h.files.read_file, "inst-1", "~/moving")
        h.after = nil
      end)

      it("keeps several chunk execs in flight at once, both ways, and the bytes in order", function()
        -- every exec waits 150 ms first (on the loop), so chunks overlap only when sent together
        local inflight, most = 0, 0
        local real = h.exec_argv
        local files = execfiles.new({ decoder = decoder, max_request_bytes = 64 * 1024, max_arg_bytes = 16 * 1024,
          parallel = 3, home_dir = h.root, exec_argv = function(id, argv)
            inflight = inflight + 1
            most = math.max(most, inflight)
            require("galley.core.runtime").sleep_ms(150)
            local ok, r = pcall(real, id, argv)
            inflight = inflight - 1
            if not ok then error(r, 0) end
            return r
          end })
        local data = binary(600 * 1024 + 11)
        files.write_file_atomic("inst-1", "~/par.bin", data, { mode = "604" })
        assert.are.equal(data, slurp(h.root .. "/par.bin"))
        assert.are.equal("604\n", sh_out('stat -c %a "$1"', h.root .. "/par.bin"))
        assert.are.equal(decoder == "python-only" and 1 or 3, most)
        most = 0
        assert.are.equal(data, files.read_file("inst-1", "~/par.bin"))
        assert.are.equal(3, most)
        assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
      end)

      it("streams from and to local files", function()
        local src, dst = support.tmpname(), support.tmpname()
        local data = binary(250 * 1024)
        spit(src, data)
        h.files.write_file_atomic("inst-1", "/" .. h.root:sub(2) .. "/streamed", { from_file = src })
        assert.are.equal(data, slurp(h.root .. "/streamed"))
        local info = h.files.read_file("inst-1", "~/streamed", { to_file = dst })
        assert.are.same({ dst, #data, codec.sha256(data) }, { info.path, info.size, info.sha256 })
        assert.are.equal(data, slurp(dst))
        os.remove(src)
        os.remove(dst)
      end)
    end)
  end

  describe("decoder detection", function()
    local make_bin = require("support.toolbin").make

    local function log_lines(bin)
      local f = io.open(bin .. "/log", "rb")
      if not f then return 0 end
      local n = select(2, f:read("a"):gsub("\n", ""))
      f:close()
      return n
    end

    -- sha256sum that says it ran: the coreutils paths run it once per write and per read head,
    -- the python paths never.
    local RECORDING_SHA256SUM = 'echo sha256sum >> "LOG"\nexec "REAL" "$@"'

    it("uses coreutils when python3 is missing, once per instance", function()
      local h = new_harness({ path = make_bin({}) })
      -- A write picks its tools on the instance: one exec, no probe.
      h.files.write_file_atomic("inst-1", "~/x", "via coreutils")
      assert.are.equal(1, #h.calls)
      assert.are.equal("/bin/sh", h.calls[1][1])
      assert.are.equal("via coreutils", slurp(h.root .. "/x"))
      -- A read probes once per instance, then reads with coreutils.
      assert.are.equal("via coreutils", h.files.read_file("inst-1", "~/x"))
      local first_read = #h.calls - 1
      assert.are.equal("via coreutils", h.files.read_file("inst-1", "~/x"))
      assert.are.equal(first_read - 1, #h.calls - 1 - first_read) -- no second probe
    end)

    it("prefers coreutils when the instance has python3 too, for writes and reads", function()
      local bin = make_bin({ python = true, wrappers = { sha256sum = RECORDING_SHA256SUM } })
      local h = new_harness({ path = bin, files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
      -- fresh instance: one exec, and the tool choice happened inside it (sha256sum ran)
      h.files.write_file_atomic("inst-1", "~/x", "via coreutils", { mode = "640" })
      assert.are.equal(1, #h.calls)
      assert.are.equal(1, log_lines(bin))
      assert.are.equal("via coreutils", slurp(h.root .. "/x"))
      assert.are.equal("640\n", sh_out('stat -c %a "$1"', h.root .. "/x"))
      -- the first read probes (1 exec), then hashes with sha256sum (head) and brings chunks
      local data = binary(10000)
      spit(h.root .. "/y", data)
      h.calls = {}
      assert.are.equal(data, h.files.read_file("inst-1", "~/y"))
      assert.are.equal(1 + 4, #h.calls)
      assert.are.equal(2, log_lines(bin))
      -- later writes use the probe's answer: coreutils, several chunks, each verified where it
      -- lands (3 SH_CHUNK execs), then the last chunk and the size (1)
      h.calls = {}
      h.files.write_file_atomic("inst-1", "~/z", data)
      assert.are.equal(4, #h.calls)
      assert.are.equal(6, log_lines(bin))
      assert.are.equal(data, slurp(h.root .. "/z"))
      -- decoder = "python" still means python3 for writes and read heads: sha256sum never runs
      local files = execfiles.new({ exec_argv = h.exec_argv, home_dir = h.root, decoder = "python" })
      files.write_file_atomic("inst-1", "~/p", data)
      assert.are.equal(data, files.read_file("inst-1", "~/p"))
      assert.are.equal(6, log_lines(bin))
    end)

    -- How many lines of the wrappers' log say `word`.
    local function log_count(bin, word)
      local f = io.open(bin .. "/log", "rb")
      if not f then return 0 end
      local n = 0
      for line in f:read("a"):gmatch("[^\n]+") do n = n + (line == word and 1 or 0) end
      f:close()
      return n
    end

    -- sha256sum below 2 MiB (it starts in 1-4.5 ms, openssl in 3-11 ms), openssl for more (6x
    -- faster with SHA extensions) or where sha256sum is missing; a failing openssl falls back.
    it("hashes with sha256sum below 2 MiB and openssl above or without sha256sum, never passing a wrong file",
      function()
      if not proc.which("openssl") then pending("no openssl on this machine") return end
      local small = binary(10000)
      local big = binary(2 * 1024 * 1024 + 1)
      local opts = { max_request_bytes = 4096, max_arg_bytes = 1024 }
      -- (small contents in many small execs; a big file's read in the default ones)
      local function counting(wrappers, files_opts)
        local bin = make_bin({ wrappers = wrappers })
        support.spit(bin .. "/log", "")
        return bin, new_harness({ path = bin, files = files_opts or opts })
      end
      local OPENSSL = 'echo openssl >> "LOG"\nexec "REAL" "$@"'
      -- both work: every hash of a small write and read (each chunk where it landed, the last
      -- piece, a read's head) is sha256sum's; a read of a 2 MiB file is hashed by openssl
      local bin, h = counting({ sha256sum = RECORDING_SHA256SUM, openssl = OPENSSL })
      h.files.write_file_atomic("inst-1", "~/z", small)
      assert.are.equal(small, slurp(h.root .. "/z"))
      assert.are.equal(small, h.files.read_file("inst-1", "~/z"))
      assert.is_true(log_count(bin, "sha256sum") >= 4)
      assert.are.equal(0, log_count(bin, "openssl"))
      bin, h = counting({ sha256sum = RECORDING_SHA256SUM, openssl = OPENSSL }, {})
      spit(h.root .. "/big", big)
      assert.are.equal(big, h.files.read_file("inst-1", "~/big"))
      assert.are.equal(1, log_count(bin, "openssl"))
      -- an openssl that fails (or prints what is no digest): sha256sum hashes the big file
      for _, body in ipairs({ 'echo openssl >> "LOG"\necho "no such digest" >&2\nexit 1',
        'echo openssl >> "LOG"\ncat > /dev/null\necho "SHA2-256(stdin)= 0"' }) do
        bin, h = counting({ sha256sum = RECORDING_SHA256SUM, openssl = body }, {})
        spit(h.root .. "/big", big)
        assert.are.equal(big, h.files.read_file("inst-1", "~/big"))
        assert.are.equal(1, log_count(bin, "openssl"))
        assert.are.equal(1, log_count(bin, "sha256sum"))
      end
      -- no sha256sum: a read's head (SH_READ runs without it) is hashed by openssl, small or not
      bin = make_bin({ tools = { "sh", "base64", "wc", "cat", "tail", "head", "ls", "stat" },
        wrappers = { openssl = OPENSSL } })
      support.spit(bin .. "/log", "")
      h = new_harness({ path = bin, files = opts })
      spit(h.root .. "/z", small)
      assert.are.equal(small, h.files.read_file("inst-1", "~/z"))
      assert.is_true(log_count(bin, "openssl") >= 1)
      -- a hash that prints a well-formed wrong digest: the write is refused, the old file kept,
      -- chunked or in one exec; the read of a big file is refused
      local zeros = 'cat > /dev/null\necho "' .. ("0"):rep(64) .. ' *stdin"'
      h = select(2, counting({ sha256sum = zeros, openssl = zeros }))
      spit(h.root .. "/kept", "old")
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", small)
      assert.are.equal(42, err.details.exit_code)
      err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", "small")
      assert.are.equal(42, err.details.exit_code)
      assert.are.equal("old", slurp(h.root .. "/kept"))
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
      h = select(2, counting({ openssl = zeros }, {}))
      spit(h.root .. "/big", big)
      raises_code("FILE_IO_ERROR", h.files.read_file, "inst-1", "~/big")
    end)

    it("refuses a one-exec write whose base64 -d fails, keeping the old file", function()
      local opts = { max_request_bytes = 4096, max_arg_bytes = 1024 }
      for _, body in ipairs({ 'if [ "$1" = -d ]; then cat > /dev/null; exit 1; fi\nexec "REAL" "$@"',
        'if [ "$1" = -d ]; then "REAL" -d | head -c 3; exit 1; fi\nexec "REAL" "$@"' }) do
        local bin = make_bin({ wrappers = { base64 = body } })
        local h = new_harness({ path = bin, files = opts })
        spit(h.root .. "/kept", "old")
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", "new content")
        assert.are.equal(1, err.details.exit_code)
        assert.are.equal("old", slurp(h.root .. "/kept"))
        assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
      end
    end)

    -- Every program a write runs on the instance costs a fork and an exec (1-4 ms each on a
    -- small VM): a file written whole runs base64, sync, the hash and mv, and chmod only where
    -- the mode cannot be given at creation.
    it("writes a file whole with four programs, chmod only where the mode needs it, modes exact", function()
      local names = { "base64", "sync", "sha256sum", "mv", "chmod", "tee", "cat", "wc", "stat" }
      local wrappers = {}
      for _, n in ipairs(names) do wrappers[n] = 'echo ' .. n .. ' >> "LOG"\nexec "REAL" "$@"' end
      local bin = make_bin({ wrappers = wrappers })
      local h = new_harness({ path = bin })
      local umask = tonumber(sh_out("umask"), 8)
      local function ran(fn)
        support.spit(bin .. "/log", "") -- (made here: a plain user's wrappers append to it)
        fn()
        local f = io.open(bin .. "/log", "rb")
        local out = f and f:read("a") or ""
        if f then f:close() end
        return (out:gsub("\n", " "))
      end
      local function mode_of(name) return sh_out('stat -c %a "$1"', h.root .. "/" .. name) end
      local cases = {
        -- path, mode, expected mode, programs
        { "new-644", "644", "644\n", "base64 sync sha256sum mv " },
        { "new-0400", "0400", "400\n", "base64 sync sha256sum mv " },
        { "new-plain", nil, ("%o\n"):format(0x1b6 & ~umask), "base64 sync sha256sum mv " },
        { "new-755", "755", "755\n", "base64 sync chmod sha256sum mv " },
        { "new-200", "200", "200\n", "base64 sync chmod sha256sum mv " },
        { "new-4644", "4644", "4644\n", "base64 sync chmod sha256sum mv " },
      }
      for _, c in ipairs(cases) do
        local log = ran(function() h.files.write_file_atomic("inst-1", "~/" .. c[1], "content " .. c[1], { mode = c[2] }) end)
        -- sync runs in the background: its place in the log varies
        local sorted = function(s)
          local t = {}
          for w in s:gmatch("%S+") do t[#t + 1] = w end
          table.sort(t)
          return table.concat(t, " ")
        end
        assert.are.equal(sorted(c[4]), sorted(log), c[1])
        assert.are.equal(c[3], mode_of(c[1]), c[1])
        sh_out('chmod u+r "$1"', h.root .. "/" .. c[1]) -- (200: a plain user reads it back too)
        assert.are.equal("content " .. c[1], slurp(h.root .. "/" .. c[1]))
      end
      -- a replaced file without a mode keeps its mode (chmod --reference), with one: the new mode
      sh_out('chmod 751 "$1"', h.root .. "/new-644")
      local log = ran(function() h.files.write_file_atomic("inst-1", "~/new-644", "again") end)
      assert.truthy(log:find("chmod", 1, true))
      assert.are.equal("751\n", mode_of("new-644"))
      log = ran(function() h.files.write_file_atomic("inst-1", "~/new-644", "again 2", { mode = "640" }) end)
      assert.is_nil(log:find("chmod", 1, true))
      assert.are.equal("640\n", mode_of("new-644"))
      assert.are.equal("again 2", slurp(h.root .. "/new-644"))
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
    end)

    it("falls back to python3 when coreutils are missing, writes and reads included", function()
      local h = new_harness({ path = make_bin({ python = true, without = { "base64", "sha256sum", "dd" } }),
        files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
      h.files.write_file_atomic("inst-1", "~/new", "via python", { create_dirs = true })
      assert.are.equal(1, #h.calls)
      assert.are.equal("via python", slurp(h.root .. "/new"))
      spit(h.root .. "/kept", "old")
      sh_out('chmod 751 "$1"', h.root .. "/kept")
      local data = binary(10000)
      h.files.write_file_atomic("inst-1", "~/kept", data)
      assert.are.equal(data, slurp(h.root .. "/kept"))
      assert.are.equal("751\n", sh_out('stat -c %a "$1"', h.root .. "/kept"))
      assert.are.equal(data, h.files.read_file("inst-1", "~/kept"))
      raises_code("NOT_FOUND", h.files.read_file, "inst-1", "~/missing")
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", h.root, "x")
      assert.are.equal("is_directory", err.details.reason)
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
    end)

    -- One character of the 2nd exec's base64, in the middle.
    local function damage_second(n, argv)
      if n ~= 2 then return end
      local last = argv[#argv]
      local i = #last // 2
      argv[#argv] = last:sub(1, i - 1) .. (last:sub(i, i) == "A" and "B" or "A") .. last:sub(i + 1)
    end

    it("checks each chunk with python3 where dd, base64 or sha256sum are missing", function()
      local h = new_harness({ path = make_bin({ python = true, without = { "base64", "sha256sum", "dd" } }),
        files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
      spit(h.root .. "/kept", "old")
      h.before = damage_second
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", binary(10000))
      h.before = nil
      assert.are.equal(42, err.details.exit_code)
      for _, argv in ipairs(h.calls) do assert.is_false(checks_tail(argv)) end -- the chunk said so itself
      assert.are.equal("old", slurp(h.root .. "/kept"))
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
      local data = binary(10000)
      h.files.write_file_atomic("inst-1", "~/kept", data)
      assert.are.equal(data, slurp(h.root .. "/kept"))
    end)

    -- A damaged 2nd chunk removes the temporary file; chunks 3 and 4 (in flight) then find none.
    -- Their answers are made to arrive first: the error is still the damaged chunk's.
    for _, variant in ipairs({ { "coreutils", {} }, { "python3", { python = true, without = { "base64", "sha256sum", "dd" } } } }) do
      it("reports the chunk that failed, not the chunks it left without a file, whichever answers first ("
        .. variant[1] .. ")", function()
        local h = new_harness({ path = make_bin(variant[2]), files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
        spit(h.root .. "/kept", "old")
        local second -- (h.after's n is the count of calls by then, not the call's own)
        h.before = function(n, argv)
          damage_second(n, argv)
          if n == 2 then second = argv end
          if n == 3 then task.sleep(300) end -- chunk 2 has removed the file by then
        end
        h.after = function(_, argv)
          if argv == second then task.sleep(900) end
        end
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", binary(10000))
        h.before, h.after = nil, nil
        assert.are.equal(42, err.details.exit_code)
        assert.are.equal("old", slurp(h.root .. "/kept"))
        assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
      end)

      it("says FILE_IO_ERROR temporary_file_gone when something else removes the temporary file ("
        .. variant[1] .. ")", function()
        local h = new_harness({ path = make_bin(variant[2]), files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
        spit(h.root .. "/kept", "old")
        h.before = function(n)
          if n == 3 then sh_out('rm -f -- "$1"/.*galley-tmp*', h.root) end
        end
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", binary(10000))
        h.before = nil
        assert.are.equal(44, err.details.exit_code)
        assert.are.equal("temporary_file_gone", err.details.reason)
        assert.are.equal("old", slurp(h.root .. "/kept"))
        assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
        -- and the next write goes through
        local data = binary(10000)
        h.files.write_file_atomic("inst-1", "~/kept", data)
        assert.are.equal(data, slurp(h.root .. "/kept"))
      end)
    end

    it("catches a chunk that base64 -d damages on the instance, keeping the old file", function()
      -- every `base64 -d` after the first (the first chunk, sent alone) flips the bits of its
      -- first output byte
      local bin = make_bin({ wrappers = { base64 = [[
if [ "$1" != -d ] || [ ! -e "LOG" ]; then echo first >> "LOG"; exec "REAL" "$@"; fi
"REAL" "$@" > "LOG.out" || exit 1
head -c 1 "LOG.out" | tr '\000-\377' '\001-\377\000'
tail -c +2 "LOG.out"]] } })
      local h = new_harness({ path = bin, files = { max_request_bytes = 4096, max_arg_bytes = 1024 } })
      spit(h.root .. "/kept", "old")
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", binary(10000))
      assert.are.equal(42, err.details.exit_code)
      assert.is_string(err.hint)
      for _, argv in ipairs(h.calls) do assert.is_false(checks_tail(argv)) end
      assert.are.equal("old", slurp(h.root .. "/kept"))
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
    end)

    it("keeps every guarantee with tools that lack GNU options (busybox-like), never a wrong file", function()
      -- chmod without --reference, mv without -T, sync without file arguments, base64 without -w;
      -- and no python3: the coreutils path runs alone, on its POSIX fallbacks.
      local reject = 'for a; do case $a in %s) echo "%s: unrecognized option $a" >&2; exit 1;; esac; done\nexec "REAL" "$@"'
      local bin = make_bin({ wrappers = {
        chmod = reject:format("--reference*", "chmod"),
        mv = reject:format("-T", "mv"),
        sync = '[ $# -eq 0 ] || { echo "sync: no arguments" >&2; exit 1; }\necho sync >> "LOG"\nexec "REAL"',
        base64 = reject:format("-w", "base64"),
      } })
      local h = new_harness({ path = bin, files = { parallel = 1, max_request_bytes = 4096, max_arg_bytes = 1024 } })
      h.files.write_file_atomic("inst-1", "~/new", "posix", { create_dirs = true })
      assert.are.equal("posix", slurp(h.root .. "/new"))
      assert.are.equal(1, log_lines(bin)) -- the global sync ran
      spit(h.root .. "/kept", "old")
      sh_out('chmod 4751 "$1"', h.root .. "/kept")
      local data = binary(10000)
      h.files.write_file_atomic("inst-1", "~/kept", data)
      assert.are.equal(data, slurp(h.root .. "/kept"))
      assert.are.equal("4751\n", sh_out('stat -c %a "$1"', h.root .. "/kept"))
      -- reads: base64 without -w sends lines, stripped on arrival
      assert.are.equal(data, h.files.read_file("inst-1", "~/kept"))
      -- a directory at the target is refused, a damaged transfer leaves the old file
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", h.root, "x")
      assert.are.equal("is_directory", err.details.reason)
      h.before = function(_, argv)
        local last = argv[#argv]
        argv[#argv] = (last:sub(1, 1) == "A" and "B" or "A") .. last:sub(2)
      end
      err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", binary(2000))
      h.before = nil
      assert.are.equal(42, err.details.exit_code)
      assert.are.equal(data, slurp(h.root .. "/kept"))
      assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root))
    end)

    -- A one-exec write from 64 KiB of base64 on: the instance reads the pieces back from its own
    -- /proc/PID/cmdline (execfiles' set_skip) instead of expanding "$*" into a here-document.
    describe("reading a write's base64 back from the instance's argv", function()
      local data = binary(100 * 1024 + 5)
      local plain -- one PATH of the usual tools for the tests that need nothing else
      setup(function() plain = make_bin({}) end)

      local function skip_index(argv)
        for i, a in ipairs(argv) do
          if a:match("^@galley%-b64\n?$") then return i - 1 end
        end
      end

      it("is how a large one-exec write travels, whatever argv[0] the service runs sh by", function()
        local h = new_harness({ path = plain })
        h.files.write_file_atomic("inst-1", "~/big", data, { mode = "640" })
        assert.are.equal(1, #h.calls)
        assert.are.equal(data, slurp(h.root .. "/big"))
        assert.are.equal("640\n", sh_out('stat -c %a "$1"', h.root .. "/big"))
        assert.are.equal(1, h.files.stats().argv_reads)
        local argv = h.calls[1]
        assert.are.equal("@galley-b64\n", argv[skip_index(argv) + 1])
        -- the service gives sh another argv[0], and an option before -c: the line break that
        -- opens the script still finds where the script starts
        h.before = function(_, a)
          a[1] = "/bin/../bin/sh"
          table.insert(a, 2, "-u")
        end
        local other = binary(90 * 1024)
        h.files.write_file_atomic("inst-1", "~/big", other)
        h.before = nil
        assert.are.equal(other, slurp(h.root .. "/big"))
        assert.are.equal("640\n", sh_out('stat -c %a "$1"', h.root .. "/big"))
        assert.are.equal(2, h.files.stats().argv_reads)
        -- a small write keeps the here-document (a dd costs more than it saves)
        h.files.write_file_atomic("inst-1", "~/small", "small")
        assert.are.equal("0", h.calls[#h.calls][skip_index(h.calls[#h.calls])])
        assert.are.equal(2, h.files.stats().argv_reads)
      end)

      it("is how the chunks of a large write travel too, checked where they land", function()
        local h = new_harness({ path = plain,
          files = { max_request_bytes = 128 * 1024, max_arg_bytes = 16 * 1024 } })
        local big = binary(400 * 1024 + 11)
        h.files.write_file_atomic("inst-1", "~/chunked", big)
        assert.are.equal(big, slurp(h.root .. "/chunked"))
        -- every chunk exec but the last (which appends the rest, checked by size and its sha256)
        assert.are.equal(#h.calls - 1, h.files.stats().argv_reads)
        assert.is_true(#h.calls >= 4)
      end)

      it("falls back to the here-document in the same exec when the read-back cannot work", function()
        local variants = {
          { "no dd", { without = { "dd" } } },
          { "a dd that fails", { wrappers = { dd = "exit 1" } } },
          { "a base64 without -i (busybox-like)",
            { wrappers = { base64 = 'for a; do [ "$a" = -i ] && { echo "base64: invalid option" >&2; exit 1; }; done\n'
              .. 'exec "REAL" "$@"' } } },
          -- decodes wrong without a word: the sha256 catches it, the here-document writes it again
          { "a base64 whose -i output is wrong",
            { wrappers = { base64 = 'for a; do [ "$a" = -i ] && { "REAL" "$@" | tail -c +2; exit 0; }; done\n'
              .. 'exec "REAL" "$@"' } } },
        }
        for _, v in ipairs(variants) do
          -- chunks first (GNU dd writes them, python3 where there is no dd: a dd that fails
          -- fails a chunked write whatever the base64's way)
          local bin = make_bin(v[1] == "no dd" and { without = { "dd" }, python = true } or v[2])
          if v[1] ~= "a dd that fails" then
            local c = new_harness({ path = bin,
              files = { max_request_bytes = 128 * 1024, max_arg_bytes = 16 * 1024 } })
            local big = binary(300 * 1024 + 1)
            c.files.write_file_atomic("inst-1", "~/chunked", big)
            assert.are.equal(big, slurp(c.root .. "/chunked"), v[1])
            assert.are.equal(0, c.files.stats().argv_reads, v[1])
          end
          local h = new_harness({ path = bin })
          spit(h.root .. "/kept", "old")
          sh_out('chmod 604 "$1"', h.root .. "/kept")
          h.files.write_file_atomic("inst-1", "~/kept", data)
          assert.are.equal(1, #h.calls, v[1])
          assert.are.equal(data, slurp(h.root .. "/kept"), v[1])
          assert.are.equal("604\n", sh_out('stat -c %a "$1"', h.root .. "/kept"), v[1])
          assert.are.equal(0, h.files.stats().argv_reads, v[1])
          assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', h.root), v[1])
        end
      end)

      it("checks the marker: a skip count off either way falls back, never a wrong file", function()
        -- (-1 lands on the NUL before the marker, which read drops: that one reads back fine)
        for _, delta in ipairs({ -2, 1, 7 }) do
          local h = new_harness({ path = plain })
          h.before = function(_, a)
            local i = skip_index(a)
            a[i] = tostring(tonumber(a[i]) + delta)
          end
          h.files.write_file_atomic("inst-1", "~/f", data)
          assert.are.equal(data, slurp(h.root .. "/f"), delta)
          assert.are.equal(0, h.files.stats().argv_reads, delta)
          local c = new_harness({ path = plain,
            files = { max_request_bytes = 128 * 1024, max_arg_bytes = 16 * 1024 } })
          c.before = h.before
          local big = binary(300 * 1024 + 1)
          c.files.write_file_atomic("inst-1", "~/chunked", big)
          assert.are.equal(big, slurp(c.root .. "/chunked"), delta)
          assert.are.equal(0, c.files.stats().argv_reads, delta)
        end
      end)

      it("is off with argv_readback = false, and for odd paths the count still lands on the marker", function()
        local h = new_harness({ path = plain, files = { argv_readback = false } })
        h.files.write_file_atomic("inst-1", "~/f", data)
        assert.are.equal("0", h.calls[1][skip_index(h.calls[1])])
        assert.are.equal(0, h.files.stats().argv_reads)
        assert.are.equal(data, slurp(h.root .. "/f"))
        -- multibyte UTF-8, a line break and quotes in the name: the count is in bytes
        local g = new_harness({ path = plain })
        local name = "~/ünï\ncode 'q' \"d\" $x"
        g.files.write_file_atomic("inst-1", name, data)
        assert.are.equal(data, slurp(g.root .. "/ünï\ncode 'q' \"d\" $x"))
        assert.are.equal(1, g.files.stats().argv_reads)
      end)
    end)

    it("says where a missing parent directory is, with the create_dirs hint", function()
      local h = new_harness({ path = make_bin({}) })
      local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/no/such/f", "x")
      assert.is_string(err.hint)
      assert.is_truthy(err.hint:find("create_dirs", 1, true))
    end)
  end)

  describe("limits and errors", function()
    local h
    setup(function() h = new_harness({ files = { size_limit = 1000 } }) end)

    it("refuses contents over the size limit before any exec", function()
      h.calls = {}
      local err = raises_code("FILE_TOO_LARGE", h.files.write_file_atomic, "inst-1", "~/big", ("x"):rep(1001))
      assert.are.equal(0, #h.calls)
      assert.are.equal(1001, err.details.size)
      spit(h.root .. "/remote-big", ("y"):rep(1001))
      raises_code("FILE_TOO_LARGE", h.files.read_file, "inst-1", "~/remote-big")
      h.files.write_file_atomic("inst-1", "~/fits", ("x"):rep(1000))
    end)

    it("says NOT_FOUND with the path and the stderr tail", function()
      local err = raises_code("NOT_FOUND", h.files.read_file, "inst-1", "~/missing")
      assert.are.equal("file:" .. h.root .. "/missing", err.resource)
      assert.are.equal("files.read_file", err.operation)
      assert.is_table(err.details)
      raises_code("NOT_FOUND", h.files.list_directory, "inst-1", "~/missing")
    end)

    it("passes exec errors through unchanged", function()
      raises_code("NOT_FOUND", h.files.read_file, "other-instance", "/etc/hostname")
    end)

    it("rejects relative paths, NUL bytes, ~user and bad modes", function()
      raises_code("VALIDATION_ERROR", h.files.read_file, "inst-1", "relative")
      raises_code("VALIDATION_ERROR", h.files.read_file, "inst-1", "/a\0b")
      raises_code("VALIDATION_ERROR", h.files.read_file, "inst-1", "~root/x")
      raises_code("VALIDATION_ERROR", h.files.write_file_atomic, "inst-1", "~/m", "x", { mode = "999" })
      raises_code("VALIDATION_ERROR", h.files.write_file_atomic, "inst-1", "~/m", "x", { owner = "a b" })
      raises_code("VALIDATION_ERROR", h.files.delete_directory, "inst-1", "/")
    end)

    it("expands ~ through a per-instance home function", function()
      local root = h.root
      local files = execfiles.new({ exec_argv = h.exec_argv, home_dir = function(id) return root .. "/" .. id end })
      files.write_file_atomic("inst-1", "~/f", "per instance", { create_dirs = true })
      assert.are.equal("per instance", slurp(root .. "/inst-1/f"))
    end)
  end)
end)
