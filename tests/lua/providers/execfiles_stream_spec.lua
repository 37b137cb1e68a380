-- galley.providers.execfiles with a byte channel (`stream`, what the Morph provider's SSH
-- gateway gives): contents over one exec's worth go raw on the channel, checked where they land.
-- The channel here runs argv on this machine (no SSH) with a temporary directory as the
-- instance's home; tests/lua/providers/morph_ssh_spec.lua runs it through real OpenSSH.
local support = require("support")
local codec = require("galley.core.codec")
local execfiles = require("galley.providers.execfiles")
local proc = require("galley.core.proc")
local conformance = require("providers.conformance")

local raises_code = conformance.raises_code

local function sh_out(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... } }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local slurp = support.slurp

local spit = support.spit

local function random_bytes(n)
  local t = {}
  for i = 1, n // 4096 + 1 do t[i] = codec.random_bytes(4096) end
  return table.concat(t):sub(1, n)
end

local function no_temporaries(dir)
  assert.are.equal("", sh_out('ls -A -- "$1" | grep galley-tmp || true', dir))
end

-- A test instance: exec_argv and stream run argv here, with PATH = `path` when given. `tamper`
-- hooks change what travels: tamper.stdin(bytes) -> bytes, tamper.stdout(file path).
local function harness(o)
  o = o or {}
  local h = { root = support.tmpname(), calls = 0, streams = 0, tamper = {} }
  sh_out('rm -f "$1" && mkdir "$1"', h.root)
  local env = o.path and { PATH = o.path } or nil
  local function exec_argv(_, argv)
    h.calls = h.calls + 1
    local r = assert(proc.run({ argv = argv, env = env, env_mode = "extend" }))
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
  end
  local function stream(_, argv, s)
    h.streams = h.streams + 1
    if h.before_stream then h.before_stream(s) end
    local stdin = s.stdin
    if s.stdin_file then stdin = slurp(s.stdin_file) end
    if h.tamper.stdin then stdin = h.tamper.stdin(stdin) end
    local r = assert(proc.run({ argv = argv, env = env, env_mode = "extend", stdin = stdin }))
    if s.stdout_file then
      spit(s.stdout_file, r.stdout)
      if h.tamper.stdout then h.tamper.stdout(s.stdout_file) end
      r.stdout = ""
    end
    return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
  end
  local fopts = { exec_argv = exec_argv, stream = stream, home_dir = h.root, max_request_bytes = 64 * 1024,
    max_arg_bytes = 16 * 1024 }
  for k, v in pairs(o.files or {}) do fopts[k] = v end
  h.files = execfiles.new(fopts)
  return h
end

local toolbin = require("support.toolbin")
local TOOLS = { "openssl", table.unpack(toolbin.TOOLS) }
local function make_bin(o)
  o.tools = TOOLS
  return toolbin.make(o)
end

describe("execfiles over a byte channel", function()
  local variants = {
    { name = "coreutils" },
    { name = "python3 (no coreutils)", path = function()
      return make_bin({ python = true, without = { "base64", "sha256sum", "tee", "wc", "cat" } })
    end },
    { name = "a failing openssl", path = function() return make_bin({ wrappers = { openssl = "exit 1" } }) end },
    { name = "no openssl", path = function() return make_bin({ without = { "openssl" } }) end },
  }
  for _, v in ipairs(variants) do
    describe("with " .. v.name, function()
      local h
      setup(function() h = harness({ path = v.path and v.path() or nil }) end)
      before_each(function()
        h.tamper, h.before_stream = {}, nil
      end)

      it("writes more than one exec's worth as one stream, byte for byte, keeping the old mode", function()
        local data = random_bytes(3 * 1024 * 1024 + 11)
        spit(h.root .. "/big.bin", "old")
        sh_out('chmod 751 "$1"', h.root .. "/big.bin")
        local calls, streams = h.calls, h.streams
        h.files.write_file_atomic("inst-1", "~/big.bin", data)
        assert.are.equal(calls, h.calls)
        assert.are.equal(streams + 1, h.streams)
        assert.are.equal(data, slurp(h.root .. "/big.bin"))
        assert.are.equal("751\n", sh_out('stat -c %a "$1"', h.root .. "/big.bin"))
        no_temporaries(h.root)
      end)

      it("streams from a local file, into new directories, with a mode", function()
        local src = support.tmpname()
        local data = random_bytes(300 * 1024)
        spit(src, data)
        h.files.write_file_atomic("inst-1", "~/d/e/f.bin", { from_file = src }, { create_dirs = true, mode = "640" })
        assert.are.equal(data, slurp(h.root .. "/d/e/f.bin"))
        assert.are.equal("640\n", sh_out('stat -c %a "$1"', h.root .. "/d/e/f.bin"))
      end)

      it("keeps small writes to one exec, with no stream", function()
        local calls, streams = h.calls, h.streams
        h.files.write_file_atomic("inst-1", "~/small", "hello")
        assert.are.equal(calls + 1, h.calls)
        assert.are.equal(streams, h.streams)
        assert.are.equal("hello", slurp(h.root .. "/small"))
      end)

      it("reads more than one exec's worth as one stream, as a string and into a file", function()
        local data = random_bytes(2 * 1024 * 1024 + 5)
        spit(h.root .. "/r.bin", data)
        local streams = h.streams
        assert.are.equal(data, h.files.read_file("inst-1", "~/r.bin"))
        assert.are.equal(streams + 1, h.streams)
        local to = support.tmpname()
        local r = h.files.read_file("inst-1", "~/r.bin", { to_file = to })
        assert.are.equal(#data, r.size)
        assert.are.equal(codec.sha256(data), r.sha256)
        assert.are.equal(data, slurp(to))
        assert.are.equal("", sh_out('ls -A -- "$(dirname "$1")" | grep -F "$(basename "$1").part" || true', to))
      end)

      it("refuses a write damaged on the way, keeping the old file and no temporary file", function()
        spit(h.root .. "/kept", "old")
        h.tamper.stdin = function(s) return s:sub(1, 1000) .. (s:sub(1001, 1001) == "x" and "y" or "x") .. s:sub(1002) end
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", random_bytes(500000))
        assert.are.equal(42, err.details.exit_code)
        assert.are.equal("old", slurp(h.root .. "/kept"))
        no_temporaries(h.root)
        h.tamper.stdin = function(s) return s:sub(1, -2) end -- a byte short
        err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", random_bytes(500000))
        assert.are.equal(42, err.details.exit_code)
        assert.are.equal("old", slurp(h.root .. "/kept"))
        no_temporaries(h.root)
      end)

      it("refuses a read damaged on the way, leaving no file behind", function()
        spit(h.root .. "/r2.bin", random_bytes(400000))
        h.tamper.stdout = function(p)
          local f = assert(io.open(p, "r+b"))
          f:seek("set", 7)
          f:write("\0\1\2")
          f:close()
        end
        local to = support.tmpname() .. ".copy"
        raises_code("FILE_IO_ERROR", h.files.read_file, "inst-1", "~/r2.bin", { to_file = to })
        assert.is_nil(io.open(to))
        raises_code("FILE_IO_ERROR", h.files.read_file, "inst-1", "~/r2.bin")
      end)

      it("says when the local source changed while it was sent", function()
        local src = support.tmpname()
        spit(src, random_bytes(200000))
        spit(h.root .. "/kept2", "old")
        h.before_stream = function(s)
          if s.stdin_file then spit(s.stdin_file, random_bytes(200000)) end
        end
        raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept2", { from_file = src })
        assert.are.equal("old", slurp(h.root .. "/kept2"))
        no_temporaries(h.root)
      end)

      it("says is_directory, a missing directory and NOT_FOUND as exec transfers do", function()
        sh_out('mkdir -p "$1"', h.root .. "/adir")
        local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/adir", random_bytes(200000))
        assert.are.equal("is_directory", err.details.reason)
        err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/missing/x", random_bytes(200000))
        assert.is_truthy(err.hint:find("create_dirs", 1, true))
        raises_code("NOT_FOUND", h.files.read_file, "inst-1", "~/missing/x")
        no_temporaries(h.root)
      end)
    end)
  end

  it("leaves the temporary file of a write stopped by Ctrl-C to the run's end, which removes it", function()
    local errors = require("galley.errors")
    local run = require("galley.run")
    local root = support.tmpname()
    sh_out('rm -f "$1" && mkdir "$1"', root)
    spit(root .. "/kept", "old")
    -- The channel's command has made the temporary file when the user presses Ctrl-C; while the
    -- signal is pending every exec fails too, so it cannot be removed at once.
    local pending, tmp = false, nil
    local files = execfiles.new({ home_dir = root, max_request_bytes = 64 * 1024, max_arg_bytes = 16 * 1024,
      exec_argv = function(_, argv)
        if pending then return nil, errors.new("INTERRUPTED", "interrupted", { signal = 2 }) end
        local r = assert(proc.run({ argv = argv }))
        return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
      end,
      stream = function(_, argv)
        for _, a in ipairs(argv) do
          if a:find(execfiles.TMP_MARK, 1, true) then tmp = a end
        end
        spit(tmp, "partial")
        pending = true
        error(errors.new("INTERRUPTED", "interrupted by Ctrl-C (SIGINT)", { signal = 2 }), 0)
      end })
    local ctx = run.begin({ recipe = "execfiles-stream-spec", record = false })
    local ok, err = pcall(files.write_file_atomic, "inst-1", "~/kept", random_bytes(300000))
    assert.is_false(ok)
    assert.are.equal("INTERRUPTED", err.code)
    assert.are.equal("partial", slurp(tmp)) -- still there while the signal is pending
    pending = false -- (the runner clears it before the run's cleanup)
    run.finish({ ctx = ctx })
    assert.is_nil(io.open(tmp))
    assert.are.equal("old", slurp(root .. "/kept"))
  end)

  it("refuses a stream whose tee fails half-way, keeping the old file and no temporary", function()
    local h = harness({ path = make_bin({ wrappers = { tee = 'head -c 1000 > "$2"\ncat > /dev/null\nexit 1' } }) })
    spit(h.root .. "/kept", "old")
    local err = raises_code("FILE_IO_ERROR", h.files.write_file_atomic, "inst-1", "~/kept", random_bytes(300000))
    assert.are.equal(1, err.details.exit_code)
    assert.are.equal("old", slurp(h.root .. "/kept"))
    no_temporaries(h.root)
  end)

  it("says FILE_TOO_LARGE for a file that grew past the limit between the head and the stream", function()
    local h = harness({ files = { size_limit = 1024 * 1024 } })
    spit(h.root .. "/grows", random_bytes(200000))
    h.before_stream = function() spit(h.root .. "/grows", random_bytes(1024 * 1024 + 1)) end
    local err = raises_code("FILE_TOO_LARGE", h.files.read_file, "inst-1", "~/grows")
    assert.are.equal(1024 * 1024 + 1, err.details.size)
  end)
end)
