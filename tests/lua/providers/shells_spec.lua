-- Where an instance's /bin/sh is not dash: bash (Fedora, RHEL, Arch; bash then runs in POSIX
-- mode), which joins an unquoted $* in a here-document with spaces even when IFS is empty (base64
-- -d refuses them), and busybox ash (Alpine). galley's remote scripts run under each here (a
-- symlink named sh) for file writes of every shape (galley.providers.execfiles) and for a
-- workspace push and pull (galley.workspace).
local support = require("support")
local codec = require("galley.core.codec")
local execfiles = require("galley.providers.execfiles")
local proc = require("galley.core.proc")
local workspace = require("galley.workspace")
local host = require("support.host_provider")

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... } }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

for _, shell in ipairs({ { "bash", "/bin/bash" }, { "busybox ash", "/usr/bin/busybox" } }) do
  describe("remote scripts where /bin/sh is " .. shell[1], function()
    local dir, bash_sh
    setup(function()
      dir = support.tmpname()
      sh('rm -f "$1" && mkdir -p "$1/home" "$1/bin" && ln -s "$2" "$1/bin/sh"', dir, shell[2])
      bash_sh = dir .. "/bin/sh"
    end)
    teardown(function() sh('rm -rf -- "$1"', dir) end)

    -- exec_argv on this machine with bash in place of /bin/sh; counts the execs bash ran
    local function files_under_bash(fopts)
      local ran = { n = 0 }
      local o = { home_dir = dir .. "/home", exec_argv = function(_, argv)
        local a = { table.unpack(argv) }
        if a[1] == "/bin/sh" then
          a[1] = bash_sh
          ran.n = ran.n + 1
        end
        local r = assert(proc.run({ argv = a }))
        return { stdout = r.stdout, stderr = r.stderr, exit_code = r.exit_code }
      end }
      for k, v in pairs(fopts or {}) do o[k] = v end
      return execfiles.new(o), ran
    end

    it("writes and reads files of every shape", function()
      local small, mid, big = "hello", codec.random_bytes(100 * 1024), codec.random_bytes(400 * 1024 + 3)
      local shapes = {
        { "defaults", {} },
        { "chunks at their offsets", { max_request_bytes = 256 * 1024, max_arg_bytes = 16 * 1024 } },
        { "appended chunks", { max_request_bytes = 256 * 1024, max_arg_bytes = 16 * 1024, parallel = 1 } },
        { "python3 writes", { decoder = "python", max_request_bytes = 256 * 1024, max_arg_bytes = 16 * 1024 } },
      }
      for _, shape in ipairs(shapes) do
        local f, ran = files_under_bash(shape[2])
        for _, content in ipairs({ small, mid, big }) do
          f.write_file_atomic("i", "~/f", content)
          assert.are.equal(content, support.slurp(dir .. "/home/f"), shape[1] .. " " .. #content)
          assert.are.equal(content, f.read_file("i", "~/f"), shape[1] .. " " .. #content)
        end
        assert.is_true(ran.n > 0, shape[1])
      end
    end)

    it("pushes and pulls a workspace through exec", function()
      local p = host.new({})
      local inst = p.instances.boot()
      local bash_p = setmetatable({ exec = function(id, spec, eopts)
        if type(spec) == "table" and spec.command == "/bin/sh" then
          local copy = {}
          for k, v in pairs(spec) do copy[k] = v end
          copy.command = bash_sh
          spec = copy
        end
        return p.exec(id, spec, eopts)
      end, files = false }, { __index = p })
      local src, back = dir .. "/src", dir .. "/back"
      sh('mkdir -p "$1/sub" && printf one > "$1/a.txt" && head -c 600000 /dev/urandom > "$1/sub/big.bin"', src)
      local ok, err = pcall(function()
        workspace.push(bash_p, inst.id, src, "~/w", { all = true, chunk_bytes = 256 * 1024 })
        assert.are.equal("", sh('diff -r "$1" "$2/w" && echo -n', src, inst.home))
        workspace.pull(bash_p, inst.id, "~/w", back, { all = true })
        assert.are.equal("", sh('diff -r "$1" "$2" && echo -n', src, back))
      end)
      p.instances.terminate(inst.id)
      assert(ok, err)
    end)
  end)
end
