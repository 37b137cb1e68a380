-- The workspace specs' shared suite (tests/lua/workspace/*_spec.lua, one file per provider
-- and transfer path, so ctest runs them side by side): galley.workspace on a provider, with trees
-- of odd names, modes, symlinks and an ignored directory both ways; incremental pushes; unsafe
-- remote paths; a Ctrl-C in the middle of a push; the repo round trip (push_repo, commits on the
-- instance, pull_repo) with real git.
--
-- Loaded by each spec with its own environment (busted's describe/it are not globals of a
-- required module): local W = assert(loadfile(<this file>, "t", _ENV))()
local codec = require("galley.core.codec")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local workspace = require("galley.workspace")
local support = require("support")
local emulator = require("support.emulator")

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... }, timeout_ms = 60000 }))
  assert(r.exit_code == 0, r.stderr)
  return r.stdout
end

local function mktemp()
  return (sh("mktemp -d -t galley-ws-spec.XXXXXX"):gsub("%s+$", ""))
end

local function rexec(p, id, script, ...)
  local r = p.exec(id, { kind = "argv", command = "/bin/sh", args = { "-c", script, "sh", ... } })
  assert(r.exit_code == 0, r.stderr)
  return r.stdout
end

-- "<type> <mode> <path> -> <target> <sha>" for every entry below dir, sorted (NUL-safe: names are
-- shown base64-encoded).
local LISTING = [[
cd -- "$1" && find . -mindepth 1 \( -name .git -o -name '.galley-tmp-*' \) -prune -o -printf '%y %m %P\0%l\0' |
  while IFS= read -r -d '' a && IFS= read -r -d '' l; do
    p=${a#* * }
    s=-; [ -f "$p" ] && [ ! -L "$p" ] && s=$(sha256sum < "$p" | cut -c1-16)
    m=${a#* }; m=${m%% *}
    printf '%s %s %s %s\n' "${a%% *}" "$m" "$(printf %s "$p" | base64 -w0)" "$(printf %s "$l" | base64 -w0) $s"
  done | sort
]]

-- What `pgrep -f -- pattern` finds, once it finds nothing or after 5 s: a process killed as its
-- parent ends may still be listed for a moment after the parent's wait returns (a machine
-- under load runs it late), so "nothing left" is asked until it holds.
local function left_running(pattern)
  local deadline = runtime.now_ms() + 5000
  while true do
    local out = sh('pgrep -f -- "$1" || true', pattern)
    if out == "" or runtime.now_ms() > deadline then return out end
    runtime.sleep_ms(50)
  end
end

local function local_listing(dir) return sh("bash -c " .. support.q(LISTING) .. " bash " .. support.q(dir)) end

-- dir: relative to the instance's home
local function remote_listing(p, id, dir)
  return rexec(p, id, 'cd && exec bash -c "$1" bash "$2"', LISTING, dir)
end

-- The odd tree: spaces, quotes, a newline, unicode, an executable, a symlink, an ignored dir.
local function make_tree(root)
  sh([[
cd "$1" && mkdir -p 'sub dir/deep' node_modules/pkg && git init -q .
echo hello > a.txt
printf 'with space' > 'with space.txt'
printf 'quote' > "it's \"quoted\""
printf 'newline' > 'new
line'
printf 'unicode' > 'üñí cødé ✓'
printf '#!/bin/sh\necho run\n' > 'sub dir/deep/run.sh' && chmod 750 'sub dir/deep/run.sh'
chmod 600 a.txt
ln -s a.txt link-to-a
ln -s 'sub dir/deep' link-to-dir
echo junk > node_modules/pkg/index.js
printf 'node_modules/\n*.log\n' > .gitignore
echo log > build.log
head -c 150000 /dev/urandom > big.bin
git add -A && git -c user.name=t -c user.email=t@t commit -qm init
]], root)
end

-- suite_opts.logic: also run the tests whose subject is galley's own logic rather than the transfer path
-- (git's rules here and there, a lying or hostile instance's listings, path checks, local
-- temporary files and compressors, the rename program without python3, a file that changes
-- while sent through exec). Those run on two paths, the local provider (byte channel) and the
-- emulator in join mode (one-line execs, the narrowest), not on all five: the suite's time
-- is what the whole ctest run waits for. Transfers both ways, the odd tree, re-pushes,
-- interrupted runs, the repo round trip and every byte-channel test run on every path.
local function suite(label, setup, suite_opts)
  suite_opts = suite_opts or {}
  local function logic_it(name, fn)
    if suite_opts.logic then it(name, fn) end
  end
  describe("galley.workspace on " .. label, function()
    local env, p, id, work

    lazy_setup(function()
      env = setup()
      p = env.provider
      id = p.instances.boot(env.snapshot).id
    end)

    lazy_teardown(function()
      if id then pcall(p.instances.terminate, id) end
      if env then env.cleanup() end
    end)

    before_each(function() work = mktemp() end)
    after_each(function() sh('rm -rf -- "$1"', work) end)

    -- p with its byte channel wrapped: stream(iid, argv, sopts) -> fn(iid, argv, sopts, real)
    local function hooked_stream(fn)
      return setmetatable({ files = setmetatable({ stream = function(iid, argv, sopts)
        return fn(iid, argv, sopts, p.files.stream)
      end }, { __index = p.files }) }, { __index = p })
    end
    -- p with every argv exec run under the instance's PATH `path` (to give it tools of its own)
    local function with_instance_path(path)
      return setmetatable({ exec = function(iid, spec, o)
        if spec.kind == "argv" then
          spec = { kind = "argv", command = "/usr/bin/env",
            args = { "PATH=" .. path, spec.command, table.unpack(spec.args or {}) } }
        end
        return p.exec(iid, spec, o)
      end }, { __index = p })
    end
    -- a directory on the instance (below its home) of links to every program on its PATH but
    -- those whose name matches `glob`: a PATH without them, for with_instance_path
    local function instance_bin_without(glob, name)
      local dir = rexec(p, id, 'printf %s "$HOME"') .. "/" .. name
      -- (the first of a name on PATH wins; one ln for all: a fork per program took seconds)
      rexec(p, id, [[mkdir -p "$1" && IFS=: && for d in $PATH; do for f in "$d"/*; do
        case ${f##*/} in $2) continue ;; esac
        [ ! -x "$f" ] || printf '%s\n' "$f"; done; done | awk -F/ '!seen[$NF]++' |
        xargs -r -d '\n' ln -sf -t "$1" --]], dir, glob)
      return dir
    end
    -- the suite's child environment with `bin` (if any) first on PATH, and `extra` variables
    local function child_env_with(bin, extra)
      local e = {}
      for k, v in pairs(env.child_env or {}) do e[k] = v end
      if bin then e.PATH = bin .. ":" .. os.getenv("PATH") end
      for k, v in pairs(extra or {}) do e[k] = v end
      return e
    end
    -- workspace.push(p, id, src, remote, opts) in a child galley with `bin` first on its PATH (a
    -- tool of this machine replaced): "ok", else the error's "CODE reason"
    local function push_in_child(bin, src, remote, opts_lua)
      local child = support.script(([[
local ws = require("galley.workspace")
local p = %s
local ok, err = pcall(ws.push, p, %q, %q, %q, %s)
io.stdout:write(ok and "ok" or tostring(err.code) .. " " .. tostring(err.details and err.details.reason), "\n")
]]):format(env.child_provider, id, src, remote, opts_lua or "nil"))
      local r = assert(proc.run({ argv = { support.bin, child }, env = child_env_with(bin), env_mode = "extend",
        timeout_ms = 60000 }))
      assert.are.equal(0, r.exit_code, r.stderr)
      return (r.stdout:gsub("\n$", ""))
    end

    -- Each twice over a byte channel: small pushes go through exec; with NATIVE_MIN_BYTES = 0
    -- every push is packed by the real tar here (push_native).
    for _, native in ipairs({ false, true }) do
      local function variant(name, fn, logic)
        if logic and not suite_opts.logic then return end
        it(name .. (native and " (packed by tar over the byte channel)" or ""), function()
          if native and not p.files.stream then return pending("this provider has no byte channel") end
          local saved = workspace.NATIVE_MIN_BYTES
          if native then workspace.NATIVE_MIN_BYTES = 0 end
          local ok, err = pcall(fn)
          workspace.NATIVE_MIN_BYTES = saved
          if not ok then error(err, 0) end
        end)
      end
      variant("pushes a tree with odd names, modes and symlinks, honouring .gitignore", function()
        local src = work .. "/src"
        fs.mkdir_p(src)
        make_tree(src)
        local extra = 0
        if native then -- names and a link target over tar's 100 bytes
          local long = ("l"):rep(60) .. "/" .. ("m"):rep(70) .. " ü"
          sh('cd "$1" && mkdir -p "${2%/*}" && echo long > "$2" && ln -s "$2" link-long && git add -A', src, long)
          extra = 2
        end
        local r = workspace.push(p, id, src, "~/t1" .. (native and "n" or ""))
        assert.are.equal(10 + extra, r.sent)
        assert.are.equal(0, r.unchanged)
        if native then assert.are.equal(1, r.streams) end
        local want = local_listing(src):gsub("[^\n]*\n", function(line)
          local b64 = line:match("^%S+ %S+ (%S+)")
          local name = codec.base64_decode(b64)
          if name:find("^node_modules") or name == "build.log" then return "" end
          return line
        end)
        -- directories are created by need: compare files and links
        local function no_dirs(s) return (s:gsub("d [^\n]*\n", "")) end
        assert.are.equal(no_dirs(want), no_dirs(remote_listing(p, id, "t1" .. (native and "n" or ""))))
        assert.are.equal("run\n", rexec(p, id, '"$HOME/$1/sub dir/deep/run.sh"', "t1" .. (native and "n" or "")))
      end)

      variant("re-pushes an unchanged tree in one exec and sends only what changed", function()
        local src = work .. "/src"
        fs.mkdir_p(src)
        make_tree(src)
        local t2 = "~/t2" .. (native and "n" or "")
        workspace.push(p, id, src, t2)
        local again = workspace.push(p, id, src, t2)
        assert.are.same({ 0, 10, 1 }, { again.sent, again.unchanged, again.execs })
        sh('cd "$1" && echo changed > a.txt && chmod 604 "with space.txt"', src)
        assert(os.remove(src .. "/it's \"quoted\""))
        local dry = workspace.push(p, id, src, t2, { dry_run = true, delete = true })
        assert.are.same({ "a.txt", "with space.txt" }, dry.files)
        assert.are.same({ "it's \"quoted\"" }, dry.deletes)
        assert.are.equal(1, dry.execs)
        local r = workspace.push(p, id, src, t2, { delete = true })
        assert.are.same({ 2, 1 }, { r.sent, r.deleted })
        assert.are.equal("changed\n", rexec(p, id, 'cat "$HOME/$1/a.txt"', t2:sub(3)))
        assert.are.equal("604\n", rexec(p, id, 'stat -c %a "$HOME/$1/with space.txt"', t2:sub(3)))
        assert.are.equal("no\n", rexec(p, id, '[ -e "$HOME/$2/$1" ] && echo yes || echo no', "it's \"quoted\"", t2:sub(3)))
      end)

      variant("pulls a tree back with the same names, modes, contents and symlinks", function()
        local src = work .. "/src"
        fs.mkdir_p(src)
        make_tree(src)
        local t5 = "~/t5" .. (native and "n" or "")
        workspace.push(p, id, src, t5)
        rexec(p, id, 'cd "$HOME/$1" && echo agent > "new file ✓" && chmod 700 a.txt', t5:sub(3))
        local back = work .. "/back"
        local r = workspace.pull(p, id, t5, back)
        assert.are.equal(11, r.sent)
        if native then assert.are.equal(1, r.streams) end
        local function no_dirs(s) return (s:gsub("d [^\n]*\n", "")) end
        assert.are.equal(no_dirs(remote_listing(p, id, t5:sub(3))), no_dirs(local_listing(back)))
        local again = workspace.pull(p, id, t5, back)
        assert.are.same({ 0, 1 }, { again.sent, again.execs })
        -- the remote side changes: only that comes back; delete removes what is gone there
        rexec(p, id, 'cd "$HOME/$1" && echo v2 > a.txt && rm "new file ✓"', t5:sub(3))
        local r2 = workspace.pull(p, id, t5, back, { delete = true })
        assert.are.same({ 1, 1 }, { r2.sent, r2.deleted })
        assert.are.equal("v2\n", sh('cat "$1/a.txt"', back))
      end)

      variant("pulls what git ignores there only with all = true, and never deletes it here", function()
        local src = work .. "/src"
        fs.mkdir_p(src)
        make_tree(src)
        local t = "~/ign" .. (native and "n" or "")
        workspace.push(p, id, src, t)
        -- the agent installs packages, writes logs, and a .gitignore of its own below
        rexec(p, id, [[cd "$HOME/$1" && mkdir -p node_modules/dep d/node_modules && echo dep > node_modules/dep/i.js &&
          echo log > run.log && printf '*.tmp\n!keep.tmp\n' > "sub dir/.gitignore" && echo t > "sub dir/x.tmp" &&
          echo k > "sub dir/keep.tmp" && echo n > d/node_modules/n && echo new > d/new.txt &&
          head -c 200000 /dev/urandom > d/big.bin]], t:sub(3))
        local want = { "d/big.bin", "d/new.txt", "sub dir/.gitignore", "sub dir/keep.tmp" }
        -- with git on the instance, and without it (galley reads the same rules here)
        local nogit = instance_bin_without("git*", "nogit-bin")
        for _, q in ipairs({ p, with_instance_path(nogit) }) do
          local back = work .. "/back" .. (q == p and "" or "-nogit")
          local r = workspace.pull(q, id, t, back)
          local new = {}
          for _, f in ipairs(r.files) do
            if not sh('cd "$1" && git ls-files -- "$2"', src, f):find("%S") then new[#new + 1] = f end
          end
          assert.are.same(want, new)
          assert.are.equal("", sh('cd "$1" && ls -d node_modules run.log "sub dir/x.tmp" d/node_modules 2>/dev/null || true',
            back))
          -- here, what the instance's rules ignore stays on delete; what is gone there goes
          sh('cd "$1" && mkdir -p node_modules/mine && echo m > node_modules/mine/m.js && echo x > gone.txt'
            .. ' && echo l > local.log', back)
          local d = workspace.pull(q, id, t, back, { delete = true })
          assert.are.same({ "gone.txt" }, d.deletes)
          assert.are.equal("m\n", sh('cat "$1/node_modules/mine/m.js"', back))
        end
        -- this side's rules too: a pull into a work tree leaves what git ignores here
        local repo = work .. "/repo"
        sh('git init -q "$1" && printf "*.txt\n" > "$1/.git/info/exclude"', repo)
        local r = workspace.pull(p, id, t, repo)
        for _, f in ipairs(r.files) do assert.is_nil(f:find("%.txt$"), f) end
        -- all = true takes everything, gitignore = false everything but .git
        for _, o in ipairs({ { all = true }, { gitignore = false } }) do
          rexec(p, id, 'mkdir -p "$HOME/$1/.git" && echo h > "$HOME/$1/.git/HEAD"', t:sub(3))
          local all = workspace.pull(p, id, t, work .. "/all" .. tostring(o.all), o)
          local names = {}
          for _, f in ipairs(all.files) do names[f] = true end
          for _, f in ipairs({ "node_modules/dep/i.js", "run.log", "sub dir/x.tmp", "d/node_modules/n" }) do
            assert.is_true(names[f], f)
          end
          assert.are.equal(o.all or false, names[".git/HEAD"] or false)
        end
        local err = select(2, pcall(workspace.pull, p, id, t, work .. "/x", { gitignore = "no" }))
        assert.are.same({ "VALIDATION_ERROR", "gitignore" }, { err.code, err.field })
      end, true)

      variant("pulls no setuid, setgid or sticky bit (an instance could plant a setuid-root program)", function()
        local t = "~/suid" .. (native and "n" or "")
        rexec(p, id, [[mkdir -p "$HOME/$1/d" && cd "$HOME/$1" && cp /bin/true suid && chmod 4755 suid &&
          cp /bin/true sgid && chmod 2711 sgid && echo s > sticky && chmod 1666 sticky && echo x > d/x &&
          chmod 664 d/x && chmod 2775 d && head -c 200000 /dev/urandom > big]], t:sub(3))
        local back = work .. "/back"
        local r = workspace.pull(p, id, t, back)
        assert.are.equal(5, r.sent)
        assert.are.equal("755\n711\n666\n664\n", sh('cd "$1" && stat -c %a suid sgid sticky d/x', back))
        assert.are.equal("", sh('find "$1" -perm /7000', back))
        -- and a pull again finds nothing to do
        local again = workspace.pull(p, id, t, back)
        assert.are.same({ 0, 5 }, { again.sent, again.unchanged })
      end)

      variant("replaces a file by a directory and a directory by a file, both ways", function()
        local src = work .. "/src"
        fs.mkdir_p(src)
        sh('cd "$1" && mkdir -p d1/in sub && echo a > d1/in/f && echo b > f1 && echo c > keep && echo s > sub/s'
          .. ' && ln -s sub lnk && ln -s sub lnk2', src)
        local t = "~/tt" .. (native and "n" or "")
        workspace.push(p, id, src, t)
        -- a symlink to a directory turned into a directory: its files must not land through the link
        sh('cd "$1" && rm -rf d1 f1 lnk && echo now-a-file > d1 && mkdir -p f1/sub lnk && echo now-a-dir > f1/sub/x'
          .. ' && echo y > lnk/y', src)
        local r = workspace.push(p, id, src, t, { delete = true })
        assert.are.equal(3, r.sent)
        local function no_dirs(s) return (s:gsub("d [^\n]*\n", "")) end
        assert.are.equal(no_dirs(local_listing(src)), no_dirs(remote_listing(p, id, t:sub(3))))
        -- and back: the instance turns them around again
        local back = work .. "/back"
        workspace.pull(p, id, t, back)
        rexec(p, id, 'cd "$HOME/$1" && rm -rf d1 f1 lnk2 && mkdir d1 lnk2 && echo in > d1/g && echo file > f1'
          .. ' && echo z > lnk2/z', t:sub(3))
        workspace.pull(p, id, t, back, { delete = true })
        assert.are.equal(no_dirs(remote_listing(p, id, t:sub(3))), no_dirs(local_listing(back)))
      end)
    end

    it("sends a stream compressed in several segments whole, with zstd, gzip and none", function()
      local src = work .. "/seg"
      fs.mkdir_p(src)
      make_tree(src)
      for i = 1, 6 do -- ~150 KB that compress badly: several 16 KiB segments
        local f = assert(io.open(("%s/blob%d.bin"):format(src, i), "wb"))
        f:write(codec.random_bytes(25000))
        f:close()
      end
      local saved = workspace.SEGMENT_BYTES
      workspace.SEGMENT_BYTES = 16384
      local ok, err = pcall(function()
        for _, z in ipairs({ "zstd", "gzip", false }) do
          local dest = "~/seg-" .. tostring(z)
          local r = workspace.push(p, id, src, dest, { compress = z })
          assert.are.equal(z or "none", r.compress)
          assert.is_true(r.wire_bytes > 4 * workspace.SEGMENT_BYTES, r.wire_bytes)
          local function files_only(s) return (s:gsub("d [^\n]*\n", "")) end
          local want = local_listing(src):gsub("[^\n]*\n", function(line)
            local name = codec.base64_decode(line:match("^%S+ %S+ (%S+)"))
            if name:find("^node_modules") or name == "build.log" then return "" end
            return line
          end)
          assert.are.equal(files_only(want), files_only(remote_listing(p, id, dest:sub(3))))
        end
      end)
      workspace.SEGMENT_BYTES = saved
      assert(ok, err)
    end)

    it("moves a many-file tree in a few compressed requests, both ways", function()
      -- 1,200 files, ~6 MB of source-like text: 50 MB go in <= 30 requests with argv arrays
      -- (bench/workspace), so this tree must take <= 2 + 3 = 5; one-line execs carry ~88 KiB each
      local src = work .. "/many"
      fs.mkdir_p(src)
      local words = { "local", "function", "return", "end", "if", "then", "require", "table", "string", "self" }
      for d = 0, 11 do
        fs.mkdir_p(("%s/d%02d"):format(src, d))
        for i = 0, 99 do
          local lines = {}
          for l = 1, 120 do
            lines[l] = ("%s v%d_%d = %s(%q, %d) -- %s %d"):format(words[(l + i) % 10 + 1], d, l,
              words[(l * 7 + d) % 10 + 1], words[(i + l) % 10 + 1] .. i, (l * 37 + i * 11) % 1000, words[l % 10 + 1], l)
          end
          local f = assert(io.open(("%s/d%02d/f%03d.lua"):format(src, d, i), "wb"))
          f:write(table.concat(lines, "\n"), "\n")
          f:close()
        end
      end
      local q = p
      local r = workspace.push(q, id, src, "~/many")
      assert.are.equal(1200, r.sent)
      assert.is_true(r.bytes > 5000000, r.bytes)
      assert.is_true(r.wire_bytes < r.bytes / 4, ("%d of %d"):format(r.wire_bytes, r.bytes))
      -- one-line execs unless the provider sends payloads as argv arrays (Morph's default "auto"
      -- on the emulator's exec mode: its probe request ran during the push, outside r.execs)
      local argv_payloads = type(q.exec_form) == "function" and q.exec_form() == "argv"
      if env.argv_payloads ~= nil then assert.are.equal(env.argv_payloads, argv_payloads) end
      local cap = not argv_payloads and q.capabilities.max_command_bytes or nil
      local bound = cap and 3 + math.ceil(r.wire_bytes / (3 * ((cap - 4096) // 4))) or 5
      assert.is_true(r.execs <= bound, ("%d requests, bound %d"):format(r.execs, bound))
      assert.are.equal(1, workspace.push(q, id, src, "~/many").execs)
      local back = workspace.pull(q, id, "~/many", work .. "/many-back")
      assert.are.equal(1200, back.sent)
      assert.is_true(back.execs <= 4, back.execs .. " requests")

      sh('diff -r "$1" "$2"', src, work .. "/many-back")
    end)

    it("sends what is over one exec's worth raw over the provider's byte channel, both ways", function()
      local src = work .. "/raw"
      fs.mkdir_p(src .. "/d")
      for i = 1, 4 do -- 4 MB that do not compress: more than one exec or read carries
        local f = assert(io.open(("%s/d/blob%d.bin"):format(src, i), "wb"))
        f:write(codec.random_bytes(1000000 + i))
        f:close()
      end
      local r = workspace.push(p, id, src, "~/raw")
      assert.are.equal(4, r.sent)
      if p.files.stream then
        -- the manifest, then one stream: packed by tar here, unpacked and applied there
        assert.are.same({ 1, 1 }, { r.streams, r.execs })
        assert.is_true(r.wire_bytes > 4000000, r.wire_bytes)
      else
        assert.are.equal(0, r.streams)
        assert.is_true(r.execs >= 4, r.execs)
      end
      local back = workspace.pull(p, id, "~/raw", work .. "/raw-back")
      assert.are.equal(4, back.sent)
      assert.are.equal(p.files.stream and 1 or 0, back.streams)
      sh('diff -r "$1" "$2"', src, work .. "/raw-back")
    end)

    it("goes back to exec when the byte channel turns out unusable", function()
      local src = work .. "/raw2"
      fs.mkdir_p(src)
      local f = assert(io.open(src .. "/blob.bin", "wb"))
      f:write(codec.random_bytes(4000000)) -- over one read's 3 MiB too
      f:close()
      local tried = 0
      local files = setmetatable({ stream = function()
        tried = tried + 1
        return nil, require("galley.errors").new("STREAM_UNAVAILABLE", "no channel (test)")
      end }, { __index = p.files })
      local q = setmetatable({ files = files }, { __index = p })
      local r = workspace.push(q, id, src, "~/raw2")
      assert.are.same({ 1, 1 }, { r.sent, tried })
      assert.is_true(r.execs >= 3, r.execs)
      local back = workspace.pull(q, id, "~/raw2", work .. "/raw2-back")
      assert.are.same({ 1, 2 }, { back.sent, tried })
      assert.is_true(back.execs >= 3, back.execs)
      sh('cmp "$1" "$2"', src .. "/blob.bin", work .. "/raw2-back/blob.bin")
    end)

    logic_it("lists no file the instance's rules ignore on a re-push, but compares files force-added here", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      make_tree(src)
      sh('cd "$1" && mkdir -p dist && echo k > dist/keep.js && echo "dist/" >> .gitignore && git add -A &&'
        .. ' git add -f dist/keep.js && git -c user.name=t -c user.email=t@t commit -qm dist', src)
      local seen
      local spy = setmetatable({ exec = function(iid, spec, o)
        local res = p.exec(iid, spec, o)
        if spec.kind == "argv" and spec.args and spec.args[2] == workspace._SH_MANIFEST and res.exit_code == 0 then
          seen = codec.base64_decode((res.stdout:match("^tools[^\n]*\n(.*)$"):gsub("%s", "")))
        end
        return res
      end }, { __index = p })
      workspace.push(spy, id, src, "~/ri")
      -- the agent installs packages and writes a log: a re-push neither lists nor deletes them
      rexec(p, id, 'mkdir -p ~/ri/node_modules/dep && echo d > ~/ri/node_modules/dep/i.js && echo l > ~/ri/x.log')
      local again = workspace.push(spy, id, src, "~/ri", { delete = true })
      assert.are.same({ 0, 11, 1, 0 }, { again.sent, again.unchanged, again.execs, again.deleted })
      assert.is_nil(seen:find("node_modules/dep", 1, true))
      assert.is_nil(seen:find("x.log", 1, true))
      assert.is_truthy(seen:find(" ./dist/keep.js\0", 1, true))
      assert.are.equal("d\n", rexec(p, id, 'cat ~/ri/node_modules/dep/i.js'))
      -- a plain directory here (no work tree) sends everything, so the instance lists everything
      local plain = work .. "/plain"
      sh('mkdir -p "$1/node_modules" && cd "$1" && echo "node_modules/" > .gitignore && echo n > node_modules/n.js',
        plain)
      workspace.push(spy, id, plain, "~/rp")
      local twice = workspace.push(spy, id, plain, "~/rp")
      assert.are.same({ 0, 2, 1 }, { twice.sent, twice.unchanged, twice.execs })
      assert.is_truthy(seen:find(" ./node_modules/n.js\0", 1, true))
    end)

    logic_it("pulls the files force-added here that the tree's rules ignore, as a push sends them", function()
      local src = work .. "/fa"
      sh([[mkdir -p "$1/dist" && cd "$1" && git init -q . && printf 'dist/\n' > .gitignore && echo k > dist/keep.js &&
        git add .gitignore && git add -f dist/keep.js && git -c user.name=t -c user.email=t@t commit -qm init]], src)
      assert.are.same({ ".gitignore", "dist/keep.js" }, workspace.push(p, id, src, "~/fa").files)
      -- the agent changes the tracked file and writes one the rules ignore beside it
      rexec(p, id, 'echo changed > ~/fa/dist/keep.js && echo o > ~/fa/dist/other.js')
      local back = workspace.pull(p, id, "~/fa", src)
      assert.are.same({ "dist/keep.js" }, back.files)
      assert.are.equal("changed\n", sh('cat "$1/dist/keep.js"', src))
      assert.is_nil(fs.stat(src .. "/dist/other.js"))
      -- gone there, deleted here with delete (as a push deletes there what is gone here)
      rexec(p, id, 'rm ~/fa/dist/keep.js')
      local gone = workspace.pull(p, id, "~/fa", src, { delete = true })
      assert.are.same({ {}, { "dist/keep.js" } }, { gone.files, gone.deletes })
      assert.is_nil(fs.stat(src .. "/dist/keep.js"))
    end)

    logic_it("takes a directory that git ignores here whole, both ways (a build directory named on purpose)", function()
      local repo = work .. "/repo"
      sh([[mkdir -p "$1/out/sub" && cd "$1" && git init -q . && printf 'out/\n*.log\n' > .gitignore &&
        echo a > out/a.txt && echo b > out/sub/b.log && git add .gitignore &&
        git -c user.name=t -c user.email=t@t commit -qm init]], repo)
      -- (inside it git lists nothing: before, the push sent nothing and the pull took nothing)
      local r = workspace.push(p, id, repo .. "/out", "~/whole")
      assert.are.same({ "a.txt", "sub/b.log" }, r.files)
      rexec(p, id, 'echo c > ~/whole/c.txt && rm ~/whole/a.txt')
      local back = workspace.pull(p, id, "~/whole", repo .. "/out", { delete = true })
      assert.are.same({ { "c.txt" }, { "a.txt" } }, { back.files, back.deletes })
      -- the same directory not ignored keeps the repository's rules
      sh('cd "$1" && printf "*.log\n" > .gitignore', repo)
      r = workspace.push(p, id, repo .. "/out", "~/whole2")
      assert.are.same({ "c.txt" }, r.files)
    end)

    logic_it("honours opts.ignore and sends everything with opts.all", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      make_tree(src)
      local r = workspace.push(p, id, src, "~/t3", { ignore = { "*.bin", "sub dir/" } })
      assert.are.equal(8, r.sent)
      local all = workspace.push(p, id, src, "~/t4", { all = true, dry_run = true })
      local names = {}
      for _, f in ipairs(all.files) do names[f] = true end
      assert.is_true(names["node_modules/pkg/index.js"] and names["build.log"] and names[".git/HEAD"])
      local unignored = workspace.push(p, id, src, "~/t4", { gitignore = false, dry_run = true })
      names = {}
      for _, f in ipairs(unignored.files) do names[f] = true end
      assert.is_true(names["node_modules/pkg/index.js"] and names["build.log"])
      assert.is_nil(names[".git/HEAD"])
    end)

    logic_it("refuses a .git path that a lying instance lists on pull (a hook would run here)", function()
      local home = rexec(p, id, 'printf %s "$HOME"')
      local bin, liar = home .. "/liar-bin", home .. "/liar"
      -- the instance's find ignores the manifest's `-name .git -prune`
      rexec(p, id, [[mkdir -p "$1" "$2/.git/hooks" && cat > "$1/find" <<'EOF'
#!/bin/sh
for a; do shift; if [ "$a" = .git ]; then set -- "$@" .no-such-name; else set -- "$@" "$a"; fi; done
exec /usr/bin/find "$@"
EOF
chmod 755 "$1/find" && echo ok > "$2/a" && printf '#!/bin/sh\necho pwned\n' > "$2/.git/hooks/pre-commit" &&
chmod 755 "$2/.git/hooks/pre-commit"]], bin, liar)
      local hooked = with_instance_path(bin .. ":/usr/bin:/bin")
      local repo = work .. "/repo"
      sh('mkdir -p "$1" && cd "$1" && git init -q .', repo)
      local ok, err = pcall(workspace.pull, hooked, id, "~/liar", repo)
      assert.is_false(ok)
      assert.are.same({ "VALIDATION_ERROR", "git_dir" }, { err.code, err.details.reason })
      assert.is_nil(fs.stat(repo .. "/.git/hooks/pre-commit"))
      assert.is_nil(fs.stat(repo .. "/a")) -- nothing at all was written
      -- the honest manifest never lists it: the same pull without the lying find brings `a` alone
      local r = workspace.pull(p, id, "~/liar", repo)
      assert.are.same({ "a" }, r.files)
      assert.are.same({ ".git" }, r.git_dirs_left) -- and says what it left there
      -- all = true brings the instance's .git, but never into a repository that is here
      ok, err = pcall(workspace.pull, p, id, "~/liar", repo, { all = true })
      assert.is_false(ok)
      assert.are.same({ "VALIDATION_ERROR", "git_dir", "local_dir" }, { err.code, err.details.reason, err.field })
      assert.is_nil(fs.stat(repo .. "/.git/hooks/pre-commit"))
      local fresh = work .. "/fresh"
      workspace.pull(p, id, "~/liar", fresh, { all = true })
      assert.is_table(fs.stat(fresh .. "/.git/hooks/pre-commit"))
      -- a symlink into a .git directory (honestly listed) is refused the same way
      for _, target in ipairs({ ".git/hooks", "sub/../.git", "./.git" }) do
        rexec(p, id, 'cd ~/liar && rm -f lnk && ln -s "$1" lnk', target)
        ok, err = pcall(workspace.pull, p, id, "~/liar", repo)
        assert.is_false(ok, target)
        assert.are.same({ "VALIDATION_ERROR", "git_dir" }, { err.code, err.details.reason })
        assert.is_nil(fs.stat(repo .. "/lnk"))
      end
    end)

    logic_it("writes no rule file but a .gitignore inside the tree when a lying instance forges its rules", function()
      rexec(p, id, 'mkdir -p ~/forged && cd ~/forged && echo a > a.txt && echo b > b.md')
      local mark = work .. "/pwned"
      local forged = {
        { "./.git/config", "[core]\n\tfsmonitor = touch " .. mark .. "\n\texcludesFile = " .. work .. "/star\n" },
        { "./../../../.gitignore", "*\n" },
        { "./notes.txt", "*\n" },
        { "./sub/.gitignore/.gitignore", "*\n" },
        { "./.gitignore", "*.md\n" }, -- (honest in form: the instance's own rule)
      }
      -- the manifest's answer with those "i" records added, its length fixed to match
      local liar = setmetatable({ exec = function(iid, spec, o)
        local res = p.exec(iid, spec, o)
        if spec.kind == "argv" and spec.args and spec.args[2] == workspace._SH_MANIFEST and res.exit_code == 0 then
          local tools, b64 = res.stdout:match("^(tools[^\n]*\n)(.*)$")
          local raw = codec.base64_decode((b64:gsub("%s", "")))
          local extra = {}
          for _, f in ipairs(forged) do extra[#extra + 1] = "i 0 0 " .. f[1] .. "\0" .. codec.base64_encode(f[2]) .. "\0" end
          raw = raw:gsub("SUMS%z", function() return table.concat(extra) .. "SUMS\0" end, 1)
          local out = codec.base64_encode(raw)
          res = { exit_code = 0, stdout = tools .. out, stderr = #out .. " bytes copied\n" }
        end
        return res
      end }, { __index = p })
      sh('echo "*" > "$1/star"', work) -- (what that config would make git ignore: everything)
      local back = work .. "/forged"
      local r = workspace.pull(liar, id, "~/forged", back)
      assert.are.same({ "a.txt" }, r.files) -- only the rule of the tree's own .gitignore counted
      assert.is_nil(fs.stat(mark))
      assert.is_nil(fs.stat("/.gitignore")) -- (the scratch directory's ../../..)
      -- a path that leaves the tree, pulled into a repository here: refused as such, before git
      -- here is asked whether it ignores it (it answered "outside repository", PROCESS_ERROR)
      forged = { { "./../../escape", "" } }
      local entry = liar.exec
      liar.exec = function(iid, spec, o)
        local res = entry(iid, spec, o)
        if spec.kind == "argv" and spec.args and spec.args[2] == workspace._SH_MANIFEST and res.exit_code == 0 then
          local tools, b64 = res.stdout:match("^(tools[^\n]*\n)(.*)$")
          local raw = codec.base64_decode((b64:gsub("%s", ""))):gsub("i 0 0 %./%.%./%.%./escape", "f 644 1 ./../../escape")
          local out = codec.base64_encode(raw)
          res = { exit_code = 0, stdout = tools .. out, stderr = #out .. " bytes copied\n" }
        end
        return res
      end
      local repo = work .. "/repo"
      sh('git init -q "$1"', repo)
      local ok, err = pcall(workspace.pull, liar, id, "~/forged", repo)
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.is_nil(fs.stat(repo .. "/a.txt"))
    end)

    logic_it("never empties a repository on delete with all = true when the source has no .git", function()
      -- `galley cp -r --delete ID:~/plain ./repo` deleted every file of ./repo/.git (the source
      -- lists no .git, the destination's did), and the push the same on the instance
      local repo = work .. "/del-repo"
      sh([[mkdir -p "$1" && cd "$1" && git init -q . && echo x > f && echo old > stale &&
git add f stale && git -c user.name=t -c user.email=t@t commit -qm i]], repo)
      rexec(p, id, 'rm -rf ~/plain && mkdir -p ~/plain && echo y > ~/plain/f')
      local r = workspace.pull(p, id, "~/plain", repo, { all = true, delete = true })
      assert.are.same({ "stale" }, r.deletes)
      assert.are.equal("y\n", sh('cat "$1/f"', repo))
      assert.are.equal("", sh('cd "$1" && git rev-parse -q --verify HEAD >/dev/null && git status --porcelain -- .git',
        repo))
      -- the other way: a plain tree pushed over the instance's repository
      rexec(p, id, [[rm -rf ~/irepo && mkdir -p ~/irepo && cd ~/irepo && git init -q . && echo x > f &&
echo old > stale && git add f stale && git -c user.name=t -c user.email=t@t commit -qm i]])
      local plain = work .. "/del-plain"
      sh('mkdir -p "$1" && echo z > "$1/f"', plain)
      r = workspace.push(p, id, plain, "~/irepo", { all = true, delete = true })
      assert.are.same({ "stale" }, r.deletes)
      assert.are.equal("z\n", rexec(p, id, 'cd ~/irepo && git rev-parse -q --verify HEAD >/dev/null && cat f'))
      -- a source with the .git mirrors it, deletions inside it included
      local other = work .. "/del-other"
      sh('mkdir -p "$1/.git" && echo ref > "$1/.git/HEAD" && echo w > "$1/f"', other)
      rexec(p, id, 'rm -rf ~/mirror && mkdir -p ~/mirror/.git && echo gone > ~/mirror/.git/extra')
      r = workspace.push(p, id, other, "~/mirror", { all = true, delete = true })
      assert.are.same({ ".git/extra" }, r.deletes)
    end)

    logic_it("refuses a listing with holes (find could not read a directory) and deletes nothing", function()
      -- find lists what it can, says "Permission denied" and exits 1: taken for the whole tree,
      -- a pull with delete removed here what the instance still had
      local FIND = '#!/bin/sh\n/usr/bin/find "$@"\necho "find: ./sub: Permission denied" >&2\nexit 1\n'
      local home = rexec(p, id, 'printf %s "$HOME"')
      rexec(p, id, [[mkdir -p "$1" ~/holes/sub && printf '%s' "$2" > "$1/find" && chmod 755 "$1/find" &&
echo a > ~/holes/a && echo s > ~/holes/sub/s]], home .. "/holes-bin", FIND)
      local dest = work .. "/holes"
      sh('mkdir -p "$1/sub" && echo s > "$1/sub/s" && echo mine > "$1/mine"', dest)
      local ok, err = pcall(workspace.pull, with_instance_path(home .. "/holes-bin:/usr/bin:/bin"), id, "~/holes", dest,
        { all = true, delete = true })
      assert.is_false(ok)
      assert.are.same({ "FILE_IO_ERROR", "incomplete_listing" }, { err.code, err.details.reason })
      assert.are.equal("mine\ns\n", sh('cat "$1/mine" "$1/sub/s"', dest))
      assert.is_nil(fs.stat(dest .. "/a"))
      -- the same find here, for a push (a child galley with it first on PATH)
      local bin = require("support.toolbin").make({ tools = {}, wrappers = {
        find = 'REAL "$@"\necho "find: ./sub: Permission denied" >&2\nexit 1' } })
      assert.are.equal("FILE_IO_ERROR incomplete_listing",
        push_in_child(bin, work .. "/holes", "~/holes", "{ all = true, delete = true }"))
      assert.are.equal("a\n", rexec(p, id, 'cat ~/holes/a'))
    end)

    logic_it("refuses a manifest the service cut short (PROTOCOL_ERROR output_truncated) and deletes nothing", function()
      -- a service that keeps an exec's output's head and tail (galley emulate does past 64 MiB; a
      -- tree of ~250,000 files lists that much) gave a manifest with files glued or missing
      rexec(p, id, [[rm -rf ~/cut && mkdir -p ~/cut && cd ~/cut && for i in $(seq 1 300); do echo $i > f$i; done]])
      local dest = work .. "/cut"
      sh('mkdir -p "$1" && for i in $(seq 1 300); do echo $i > "$1/f$i"; done', dest)
      local cutting = setmetatable({ exec = function(iid, spec, o)
        local r = p.exec(iid, spec, o)
        if #r.stdout > 8000 then
          r = { exit_code = r.exit_code, stderr = r.stderr, stdout = r.stdout:sub(1, 3000) .. r.stdout:sub(-3000) }
        end
        return r
      end }, { __index = p })
      local ok, err = pcall(workspace.pull, cutting, id, "~/cut", dest, { delete = true, stream = false })
      assert.is_false(ok)
      assert.are.same({ "PROTOCOL_ERROR", "output_truncated" }, { err.code, err.details.reason })
      assert.are.equal("300\n", sh('ls "$1" | wc -l', dest))
      ok, err = pcall(workspace.push, cutting, id, dest, "~/cut", { delete = true, stream = false })
      assert.is_false(ok)
      assert.are.same({ "PROTOCOL_ERROR", "output_truncated" }, { err.code, err.details.reason })
      -- whole, the same listing passes
      assert.are.equal(0, workspace.pull(p, id, "~/cut", dest, { delete = true }).deleted)
    end)

    logic_it("refuses remote paths that leave the destination (VALIDATION_ERROR)", function()
      rexec(p, id, 'mkdir -p ~/t6 && echo x > ~/t6/ok && ln -s /etc/passwd ~/t6/abs')
      local ok, err = pcall(workspace.pull, p, id, "~/t6", work .. "/b1")
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      assert.is_nil(fs.stat(work .. "/b1/ok"))
      rexec(p, id, 'rm ~/t6/abs && ln -s ../../x ~/t6/up')
      ok, err = pcall(workspace.pull, p, id, "~/t6", work .. "/b2")
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      -- the same tree minus the bad link comes back
      local r = workspace.pull(p, id, "~/t6", work .. "/b3", { ignore = { "up" } })
      assert.are.equal(1, r.sent)
      ok, err = pcall(workspace.push, p, id, work, "relative/dir")
      assert.is_false(ok)
      assert.are.equal("VALIDATION_ERROR", err.code)
      ok, err = pcall(workspace.pull, p, id, "~/no-such-dir", work .. "/b4")
      assert.is_false(ok)
      assert.are.equal("NOT_FOUND", err.code)
    end)

    logic_it("says which side's path is a file where a directory is needed, with a hint", function()
      rexec(p, id, 'echo f > ~/a-file')
      local src = work .. "/src"
      fs.mkdir_p(src)
      sh('echo x > "$1/x" && echo f > "$2/local-file"', src, work)
      for _, call in ipairs({
        function() return workspace.push(p, id, src, "~/a-file") end,
        function() return workspace.pull(p, id, "~/a-file", work .. "/b5") end,
      }) do
        local ok, err = pcall(call)
        assert.is_false(ok)
        assert.are.same({ "FILE_IO_ERROR", "not_a_directory" }, { err.code, err.details.reason })
        assert.is_string(err.hint)
      end
      assert.is_nil(fs.stat(work .. "/b5"))
      assert.are.equal("f\n", rexec(p, id, 'cat ~/a-file'))
      for _, call in ipairs({
        { "local_dir", function() return workspace.pull(p, id, "~", work .. "/local-file") end },
        { "local_dir", function() return workspace.push(p, id, work .. "/local-file", "~/b6") end },
      }) do
        local ok, err = pcall(call[2])
        assert.is_false(ok)
        assert.are.same({ "VALIDATION_ERROR", call[1] }, { err.code, err.field })
        assert.is_string(err.hint)
      end
    end)

    it("leaves old or new files only when Ctrl-C stops a push", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      sh([[cd "$1" && for i in $(seq 1 24); do head -c 60000 /dev/zero | tr '\0' a > f$i; done]], src)
      workspace.push(p, id, src, "~/t7", { all = true })
      -- random bytes: the push takes many small chunk execs; uncompressed, then compressed in
      -- 64 KiB segments (the compressors and the task that feeds them are stopped too)
      local old = "60000"
      for _, v in ipairs({ { size = "90000", compress = "false" }, { size = "70000", compress = '"gzip"' } }) do
        sh([[cd "$1" && for i in $(seq 1 24); do head -c "$2" /dev/urandom > f$i; done]], src, v.size)
        local child = support.script(([[
local ws = require("galley.workspace")
ws.SEGMENT_BYTES = 65536
local fs = require("galley.core.fs")
local mkdtemp = fs.mkdtemp
fs.mkdtemp = function(prefix) -- says where the stream and its segments go
  local d = mkdtemp(prefix)
  io.stdout:write("tmp ", d, "\n"); io.stdout:flush()
  return d
end
local p = %s
io.stdout:write("go\n"); io.stdout:flush()
ws.push(p, %q, %q, "~/t7", { all = true, chunk_bytes = 2000, parallel = 2, compress = %s })
io.stdout:write("finished\n")
]]):format(env.child_provider, id, src, v.compress))
        local h = assert(proc.spawn({ argv = { support.bin, child }, env = env.child_env, env_mode = "extend" }))
        local out = ""
        local deadline = runtime.now_ms() + 20000
        while not out:find("go\n", 1, true) and runtime.now_ms() < deadline do
          local kind, data = h:read(1000)
          if kind == "stdout" then out = out .. data elseif kind == "exit" then break end
        end
        runtime.sleep_ms(400) -- ~1,000 chunk execs: well inside the push
        h:kill("INT")
        local res = h:wait()
        h:close()
        out = out .. res.stdout
        assert.is_nil(out:find("finished", 1, true))
        -- its temporary directories are gone and nothing runs on them (the compressors)
        for dir in out:gmatch("tmp (%S+)\n") do
          assert.is_false(fs.stat(dir) ~= nil, dir)
          assert.are.equal("", left_running("[/]" .. dir:sub(2))) -- ([/]: not this sh)
        end
        local sums = rexec(p, id, 'cd ~/t7 && for f in f*; do printf "%s %s\n" "$f" "$(wc -c < "$f")"; done')
        local n = 0
        for name, size in sums:gmatch("(%S+) (%d+)\n") do
          n = n + 1
          assert.is_true(size == old or size == v.size, name .. " has " .. size .. " bytes")
        end
        assert.are.equal(24, n)
        local r = workspace.push(p, id, src, "~/t7", { all = true })
        assert.are.equal(24, r.sent)
        assert.are.equal(v.size .. "\n", rexec(p, id, 'wc -c < ~/t7/f24'))
        old = v.size
      end
    end)

    logic_it("renames into place with a shell loop where the instance has no python3", function()
      local nopy = instance_bin_without("python*", "nopy-bin")
      -- every exec of the push runs with that PATH (no byte channel: all of it through exec)
      local hooked = with_instance_path(nopy)
      assert.are.equal("none\n", rexec(hooked, id, "command -v python3 || echo none"))
      local src = work .. "/src"
      fs.mkdir_p(src)
      make_tree(src)
      sh('cd "$1" && mkdir -p d1/in && echo a > d1/in/f && echo b > f1 && ln -s d1 lnk', src)
      local function no_dirs(s) return (s:gsub("d [^\n]*\n", "")) end
      local function want()
        return (local_listing(src):gsub("[^\n]*\n", function(line)
          local name = codec.base64_decode(line:match("^%S+ %S+ (%S+)"))
          if name:find("^node_modules") or name == "build.log" then return "" end
          return line
        end))
      end
      local r = workspace.push(hooked, id, src, "~/nopy", { stream = false })
      assert.are.equal(13, r.sent)
      assert.are.equal(no_dirs(want()), no_dirs(remote_listing(p, id, "nopy")))
      -- the second push: a change, a file gone (delete), a file and a directory swapped, and a
      -- symlink turned into a directory (its files must not land through the link)
      sh('cd "$1" && echo changed > a.txt && rm "with space.txt" && rm -rf d1 f1 lnk && echo file > d1'
        .. ' && mkdir -p f1/sub lnk && echo x > f1/sub/x && echo y > lnk/y', src)
      r = workspace.push(hooked, id, src, "~/nopy", { stream = false, delete = true })
      assert.are.same({ 4, 4 }, { r.sent, r.deleted }) -- with space.txt, d1/in/f, f1, lnk
      assert.are.equal(no_dirs(want()), no_dirs(remote_listing(p, id, "nopy")))
      assert.are.equal("", rexec(p, id, 'ls -A ~/nopy | grep "^\\.galley-tmp-" || true'))
    end)

    logic_it("keeps its local temporary files in $TMPDIR, and says so when it cannot make them there", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      make_tree(src)
      local child = support.script(([[
local ws = require("galley.workspace")
local p = %s
local ok, err = pcall(ws.push, p, %q, %q, "~/tmpdir-" .. arg[1])
io.stdout:write(ok and "ok" or (tostring(err.code) .. " " .. tostring(err.hint ~= nil)), "\n")
]]):format(env.child_provider, id, src))
      local function run_with(tmpdir, name)
        local r = assert(proc.run({ argv = { support.bin, child, name }, env = child_env_with(nil, { TMPDIR = tmpdir }),
          env_mode = "extend", timeout_ms = 60000 }))
        assert.are.equal(0, r.exit_code, r.stderr)
        return r.stdout
      end
      -- a TMPDIR that does not exist: nothing is sent, and the error says where to look
      assert.are.equal("FILE_IO_ERROR true\n", run_with(work .. "/no-such-dir", "a"))
      assert.are.equal("", rexec(p, id, 'ls -A ~/tmpdir-a 2>/dev/null | grep -v "^\\.galley-tmp-" || true'))
      -- one that does: the push works, and leaves nothing behind in it
      local tmpd = work .. "/tmpd"
      fs.mkdir_p(tmpd)
      assert.are.equal("ok\n", run_with(tmpd, "b"))
      assert.are.equal("", sh('ls -A "$1"', tmpd))
      assert.are.equal("hello\n", rexec(p, id, "cat ~/tmpdir-b/a.txt"))
    end)

    logic_it("fails with FILE_IO_ERROR when the local compressor fails, leaving the destination alone", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      make_tree(src)
      local bin = require("support.toolbin").make({ tools = {}, wrappers = { zstd = "echo 'zstd: broken' >&2; exit 3" } })
      assert.are.equal("FILE_IO_ERROR", push_in_child(bin, src, "~/zfail", '{ compress = "zstd" }'):match("^%S+"))
      assert.are.equal("", rexec(p, id, 'ls -A ~/zfail 2>/dev/null | grep -v "^\\.galley-tmp-" || true'))
    end)

    logic_it("sends a file again once when it changed while sent, then FILE_IO_ERROR naming it", function()
      local src = work .. "/src"
      fs.mkdir_p(src)
      sh('cd "$1" && echo one > a.txt && echo keep > b.txt', src)
      -- the file changes right after the remote manifest is taken (before its content is read)
      local calls = 0
      local hooked = setmetatable({ exec = function(iid, spec, o)
        local r = p.exec(iid, spec, o)
        calls = calls + 1
        if calls == 1 then sh('echo "two, longer" > "$1/a.txt"', src) end
        return r
      end }, { __index = p })
      local r = workspace.push(hooked, id, src, "~/t9")
      assert.are.equal(2, r.sent)
      assert.are.equal("two, longer\n", rexec(p, id, 'cat ~/t9/a.txt'))
      -- a file that never stops changing
      sh('head -c 30000000 /dev/zero > "$1/grow.bin"', src)
      local writer = assert(proc.spawn({ argv = { "sh", "-c", 'while :; do echo x >> "$1"; done', "sh",
        src .. "/grow.bin" } }))
      local ok, err = pcall(workspace.push, p, id, src, "~/t9")
      writer:kill("KILL")
      writer:wait()
      writer:close()
      assert.is_false(ok)
      assert.are.equal("FILE_IO_ERROR", err.code)
      assert.are.equal("file:" .. src .. "/grow.bin", err.resource)
      assert.are.equal("no\n", rexec(p, id, '[ -e ~/t9/grow.bin ] && echo yes || echo no'))
    end)

    -- Over a byte channel, a push of more than NATIVE_MIN_BYTES is packed by the real tar here and
    -- unpacked there while it arrives; what changed meanwhile is found by stat (files older than
    -- RECENT_NS) or by its sha256, checked on the instance (recent ones), and never lands.
    local function native_tree(src)
      fs.mkdir_p(src)
      sh('cd "$1" && echo one > a.txt && echo keep > b.txt && head -c 2000000 /dev/urandom > big.bin', src)
    end

    it("over a byte channel, sends a file again when its stat moved while tar read it", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat1"
      native_tree(src)
      local saved = workspace.RECENT_NS
      workspace.RECENT_NS = -1e15 -- every file counts as old: only its stat tells
      local changes = 0
      local hooked = hooked_stream(function(iid, argv, sopts, real)
        changes = changes + 1
        if changes == 1 then sh('echo two > "$1/a.txt"', src) end -- same size, while tar runs
        return real(iid, argv, sopts)
      end)
      local ok, r = pcall(workspace.push, hooked, id, src, "~/nat1")
      workspace.RECENT_NS = saved
      assert(ok, r)
      assert.are.same({ 3, 2, 1 }, { r.sent, r.streams, r.execs }) -- the second stream: a.txt alone
      assert.are.equal("two\n", rexec(p, id, 'cat ~/nat1/a.txt'))
      assert.are.equal(sh('sha256sum < "$1/big.bin"', src), rexec(p, id, 'sha256sum < ~/nat1/big.bin'))
      assert.are.equal("", rexec(p, id, 'ls -A ~/nat1 | grep "^\\.galley-tmp-" || true'))
    end)

    it("over a byte channel, drops a recent file whose sha256 does not match on the instance", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat2"
      native_tree(src)
      local util = require("galley.util")
      local real = util.sha256_file
      local lies = 1
      util.sha256_file = function(path) -- what tar reads is not what was hashed here
        if path:sub(-6) == "/a.txt" and lies > 0 then lies = lies - 1; return ("0"):rep(64) end
        return real(path)
      end
      local ok, r = pcall(workspace.push, p, id, src, "~/nat2")
      assert(ok, r)
      assert.are.same({ 3, 2 }, { r.sent, r.streams })
      assert.are.equal("one\n", rexec(p, id, 'cat ~/nat2/a.txt'))
      -- never matches: FILE_IO_ERROR naming it, and it never landed
      lies = 1e9
      local err
      ok, err = pcall(workspace.push, p, id, src, "~/nat3")
      util.sha256_file = real
      assert.is_false(ok)
      assert.are.equal("FILE_IO_ERROR", err.code)
      assert.are.equal("file:" .. src .. "/a.txt", err.resource)
      assert.are.equal("no\n", rexec(p, id, '[ -e ~/nat3/a.txt ] && echo yes || echo no'))
      assert.are.equal("keep\n", rexec(p, id, 'cat ~/nat3/b.txt'))
    end)

    it("over a byte channel, sends nothing outside the tree when a hostile instance names other paths", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat6"
      native_tree(src)
      sh('echo secret > "$1/outside.txt"', work)
      -- the instance answers that "../outside.txt" (and a path never sent) arrived damaged
      local hooked = hooked_stream(function(iid, argv, sopts, real)
        local res, err = real(iid, argv, sopts)
        if res then res.stdout = codec.base64_encode("../outside.txt\0/etc/hostname\0") end
        return res, err
      end)
      local r = workspace.push(hooked, id, src, "~/nat6")
      assert.are.same({ 3, 1 }, { r.sent, r.streams })
      assert.are.equal("", rexec(p, id, 'grep -rl secret ~ 2>/dev/null || true'))
    end)

    it("over a byte channel, a pull takes no more than the manifest's sizes from a hostile instance", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat7"
      native_tree(src)
      workspace.push(p, id, src, "~/nat7")
      -- the instance answers the pull with a tar of a 200 MB a.txt (the manifest said 4 bytes)
      local hooked = hooked_stream(function(iid, argv, sopts, real)
        if sopts.stdout_file then
          argv = { "/bin/sh", "-c", 'd=$(mktemp -d) && cd "$d" && truncate -s 200M a.txt && tar -c ./a.txt | zstd -q -1 -c' }
        end
        return real(iid, argv, sopts)
      end)
      local back = work .. "/back7"
      local ok, err = pcall(workspace.pull, hooked, id, "~/nat7", back)
      assert.is_false(ok)
      assert.are.equal("FILE_IO_ERROR", err.code)
      -- stopped while unpacking (at the bound), not afterwards by the size check
      assert.is_truthy(err.details and err.details.exit_code and err.details.exit_code ~= 0)
      assert.are.equal("", sh('ls -A "$1" 2>/dev/null || true', back))
    end)

    logic_it("refuses a pull over max_bytes, or over the room here, before fetching anything", function()
      local src = work .. "/big"
      fs.mkdir_p(src)
      sh('cd "$1" && head -c 5000 /dev/urandom > a.txt && echo b > b.txt', src)
      workspace.push(p, id, src, "~/big")
      local back = work .. "/back-big"
      local ok, err = pcall(workspace.pull, p, id, "~/big", back, { max_bytes = 1000 })
      assert.is_false(ok)
      assert.are.same({ "FILE_TOO_LARGE", 1000 }, { err.code, err.details.limit })
      assert.is_nil(fs.stat(back))
      -- an instance that says a.txt is 100 TB: more than this disk has
      local hooked = setmetatable({ exec = function(iid, spec, o)
        local r = p.exec(iid, spec, o)
        local head, rest = r.stdout:match("^(tools[^\n]*\n)(.*)$")
        if head and rest:match("%S") and not rest:match("^NONE") then
          local raw = codec.base64_decode((rest:gsub("%s", "")))
          raw = raw:gsub("(f %d+ )%d+( %./a%.txt)", "%1100000000000000%2")
          -- (a consistent liar: the length it ends stderr with is that of what it sends)
          local out = codec.base64_encode(raw)
          r = { exit_code = r.exit_code, stdout = head .. out,
            stderr = r.stderr:gsub("%d+ bytes[^\n]*%s*$", #out .. " bytes copied\n") }
        end
        return r
      end }, { __index = p })
      ok, err = pcall(workspace.pull, hooked, id, "~/big", back, { max_bytes = 1000000000000000 })
      assert.is_false(ok)
      assert.are.same({ "FILE_IO_ERROR", "no_space" }, { err.code, err.details.reason })
      assert.is_nil(fs.stat(back))
      -- within both, the same pull works
      assert.are.equal(2, workspace.pull(p, id, "~/big", back).sent)
    end)

    logic_it("through exec, a pull takes no more than the manifest's sizes from a hostile instance", function()
      local src = work .. "/ex7"
      fs.mkdir_p(src)
      sh('cd "$1" && echo abc > a.txt && echo def > b.txt', src)
      workspace.push(p, id, src, "~/ex7")
      -- the instance's tar packs a 64 MB a.txt (zeros: a few KB compressed; the manifest said 4 bytes)
      local home = rexec(p, id, 'printf %s "$HOME"')
      local bin = home .. "/bomb-bin"
      rexec(p, id, [[mkdir -p "$1" && cat > "$1/tar" <<'EOF'
#!/bin/sh
case " $* " in *" -c "*) ;; *) exec /usr/bin/tar "$@" ;; esac
while [ $# -gt 0 ]; do [ "$1" = -f ] && out=$2; shift; done
case $out in /*) ;; *) out=$PWD/$out ;; esac
d=$(mktemp -d) && cd "$d" && head -c 64000000 /dev/zero > a.txt && exec /usr/bin/tar -c -f "$out" ./a.txt
EOF
chmod 755 "$1/tar"]], bin)
      local hooked = with_instance_path(bin .. ":/usr/bin:/bin")
      local back = work .. "/back-ex7"
      local ok, err = pcall(workspace.pull, hooked, id, "~/ex7", back, { stream = false })
      assert.is_false(ok)
      assert.are.equal("FILE_IO_ERROR", err.code)
      -- stopped while unpacking (at the bound), not afterwards by the size check
      assert.is_truthy(err.details and err.details.exit_code and err.details.exit_code ~= 0, err.message)
      assert.is_truthy(err.resource:find(back, 1, true), err.resource) -- (here, not on the instance)
      assert.are.equal("", sh('ls -A "$1" 2>/dev/null || true', back))
      -- an instance that says its packed tar is 100 GB is not read at all
      rexec(p, id, [[rm "$1/tar" && printf '#!/bin/sh
echo 100000000000
' > "$1/wc" && chmod 755 "$1/wc"]], bin)
      ok, err = pcall(workspace.pull, hooked, id, "~/ex7", back, { stream = false })
      assert.is_false(ok)
      assert.are.same({ "FILE_IO_ERROR", "oversized" }, { err.code, err.details and err.details.reason })
      assert.are.equal("", sh('ls -A "$1" 2>/dev/null || true', back))
    end)

    it("over a byte channel, fails with FILE_IO_ERROR when the local compressor fails, leaving nothing", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat4"
      native_tree(src)
      local bin = require("support.toolbin").make({ tools = {}, wrappers = { zstd = "echo 'zstd: broken' >&2; exit 3" } })
      assert.are.equal("FILE_IO_ERROR", push_in_child(bin, src, "~/nat4", '{ compress = "zstd" }'):match("^%S+"))
      assert.are.equal("", rexec(p, id, 'ls -A ~/nat4 2>/dev/null || true'))
    end)

    it("over a byte channel, leaves the old files and no process behind when Ctrl-C stops a push", function()
      if not p.files.stream then return pending("this provider has no byte channel") end
      local src = work .. "/nat5"
      native_tree(src)
      workspace.push(p, id, src, "~/nat5")
      sh('cd "$1" && echo new > a.txt && head -c 2000000 /dev/urandom > big.bin', src)
      -- tar here has read everything, and waits: the stream is in flight, the files staged there
      local nap = ("60.%06d"):format(math.random(0, 999999)) -- (its own: other runs may sleep 60 too)
      local bin = require("support.toolbin").make({ tools = {}, wrappers = {
        tar = '[ "$1" = -c ] || exec REAL "$@"\nREAL "$@"; s=$?; echo packed > LOG; sleep ' .. nap .. '; exit $s' } })
      local child = support.script(([[
local ws = require("galley.workspace")
local fs = require("galley.core.fs")
local mkdtemp = fs.mkdtemp
fs.mkdtemp = function(prefix) -- says where the list and the FIFO go
  local d = mkdtemp(prefix)
  io.stdout:write("tmp ", d, "\n"); io.stdout:flush()
  return d
end
local p = %s
ws.push(p, %q, %q, "~/nat5")
io.stdout:write("finished\n")
]]):format(env.child_provider, id, src))
      local child_env = child_env_with(bin)
      local h = assert(proc.spawn({ argv = { support.bin, child }, env = child_env, env_mode = "extend" }))
      local deadline = runtime.now_ms() + 30000
      while not fs.stat(bin .. "/log") and runtime.now_ms() < deadline do runtime.sleep_ms(20) end
      assert.is_truthy(fs.stat(bin .. "/log"), "tar never finished")
      h:kill("INT")
      local res = h:wait()
      h:close()
      assert.is_nil(res.stdout:find("finished", 1, true))
      local dirs = 0
      for dir in res.stdout:gmatch("tmp (%S+)\n") do
        dirs = dirs + 1
        assert.is_false(fs.stat(dir) ~= nil, dir)
        assert.are.equal("", left_running("[/]" .. dir:sub(2))) -- the producer, tar, zstd, ssh
      end
      assert.is_true(dirs >= 1)
      assert.are.equal("", left_running("[s]leep " .. nap))
      assert.are.equal("one\n", rexec(p, id, 'cat ~/nat5/a.txt'))
      local r = workspace.push(p, id, src, "~/nat5")
      assert.are.equal(2, r.sent)
      assert.are.equal("new\n", rexec(p, id, 'cat ~/nat5/a.txt'))
    end)

    it("brings the agent's commits back as a branch, leaving the user's tree alone", function()
      local repo = work .. "/repo"
      fs.mkdir_p(repo)
      make_tree(repo)
      sh('cd "$1" && echo wip >> a.txt && echo untracked > notes.txt', repo)
      local before = sh('cd "$1" && git status --porcelain && git rev-parse HEAD && git branch --show-current'
        .. ' && git diff && git ls-files -s | sha256sum', repo)
      local pushed = workspace.push_repo(p, id, repo, "~/proj", { branch = "galley/t8", dirty = true })
      assert.are.equal("galley/t8", pushed.branch)
      -- the dirty work rode along: it is on the instance, committed
      assert.are.equal("galley/t8\n", rexec(p, id, 'cd ~/proj && git branch --show-current'))
      assert.are.equal("", rexec(p, id, 'cd ~/proj && git status --porcelain'))
      assert.is_truthy(rexec(p, id, 'cat ~/proj/a.txt'):find("wip"))
      -- the agent: one commit, then uncommitted work
      rexec(p, id, [[cd ~/proj && echo fix > fix.txt && git add fix.txt &&
        git -c user.name=agent -c user.email=agent@x commit -qm "agent: fix" && echo later > later.txt]])
      -- a bundle over max_bundle_bytes is not taken at all
      local ok0, err0 = pcall(workspace.pull_repo, p, id, "~/proj", repo, { branch = "galley/t8-small",
        max_bundle_bytes = 16, author = { name = "Agent Smith", email = "smith@example.invalid" } })
      assert.is_false(ok0)
      assert.are.same({ "FILE_TOO_LARGE", 16 }, { err0.code, err0.details.limit })
      assert.are.equal("", sh('cd "$1" && git branch --list galley/t8-small', repo))
      local back = workspace.pull_repo(p, id, "~/proj", repo, { branch = "galley/t8",
        author = { name = "Agent Smith", email = "smith@example.invalid" } })
      assert.are.equal(2, #back.commits)
      assert.are.equal(pushed.base, back.base)
      assert.are.equal(before, sh('cd "$1" && git status --porcelain && git rev-parse HEAD && git branch --show-current'
        .. ' && git diff && git ls-files -s | sha256sum', repo))
      assert.are.equal("agent: fix\ngalley: the agent's uncommitted work\n",
        sh('cd "$1" && git log --reverse --format=%s "$2..galley/t8"', repo, back.base))
      assert.are.equal("fix.txt\nlater.txt\n", sh('cd "$1" && git diff --name-only "$2" galley/t8', repo, back.base))
      assert.are.equal("Agent Smith\n", sh('cd "$1" && git log -1 --format=%an galley/t8', repo))
      -- an existing branch is kept unless forced; the checked-out branch never moves
      local ok, err = pcall(workspace.pull_repo, p, id, "~/proj", repo, { branch = "galley/t8" })
      assert.is_false(ok)
      assert.are.equal("CONFLICT", err.code)
      local again = workspace.pull_repo(p, id, "~/proj", repo, { branch = "galley/t8", force = true })
      assert.are.equal(back.head, again.head)
      local current = sh('cd "$1" && git branch --show-current', repo):gsub("%s+$", "")
      ok, err = pcall(workspace.pull_repo, p, id, "~/proj", repo, { branch = current, force = true })
      assert.is_false(ok)
      assert.are.equal("CONFLICT", err.code)
      -- a second push into the same directory is refused, nothing half-made
      ok, err = pcall(workspace.push_repo, p, id, repo, "~/proj", { branch = "galley/t8b" })
      assert.is_false(ok)
      assert.are.equal("CONFLICT", err.code)
    end)

    logic_it("says which instance lacks git, and leaves nothing behind", function()
      local repo = work .. "/repo"
      fs.mkdir_p(repo)
      sh('cd "$1" && git init -q . && echo x > x && git add x && git -c user.name=t -c user.email=t@t commit -qm x',
        repo)
      local noexec = function(iid, spec, o)
        if spec.kind == "argv" and spec.args and spec.args[2] then
          spec = { kind = spec.kind, command = spec.command, cwd = spec.cwd,
            args = { spec.args[1], (spec.args[2]:gsub("command %-v git", "false")),
              table.unpack(spec.args, 3) } }
        end
        return p.exec(iid, spec, o)
      end
      local fake = setmetatable({ exec = noexec }, { __index = p })
      local ok, err = pcall(workspace.push_repo, fake, id, repo, "~/nogit", { branch = "galley/x" })
      assert.is_false(ok)
      assert.are.equal("PROCESS_ERROR", err.code)
      assert.are.equal("no_git", err.details.reason)
      assert.are.equal("instance:" .. id, err.resource)
      assert.are.equal("no\n", rexec(p, id, '[ -e ~/nogit ] && echo yes || echo no'))
      assert.are.equal("", rexec(p, id, 'ls -A ~ | grep galley-tmp || true'))
    end)
  end)
end

-- The local provider, with its byte channel (stream = true) or everything through exec.
local function local_setup(stream)
  return function()
    local state = mktemp()
    local provider = require("galley.providers.local").new({ state_dir = state, stream = stream })
    return {
      provider = provider,
      snapshot = provider.DEFAULT_SNAPSHOT,
      child_provider = ("require('galley.providers.local').new({ state_dir = %q, stream = %s })"):format(state,
        tostring(stream)),
      child_env = { GALLEY_LUA_DIR = support.source_dir .. "/lua" },
      cleanup = function() sh('rm -rf -- "$1"', state) end,
    }
  end
end

-- galley emulate in argv mode join, reached through its SSH gateway.
local function gateway_setup()
  local em = emulator.start({ argv_mode = "join" })
  assert(em.ssh_port, "the emulator started no SSH gateway (is libssh installed?)")
  local provider = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url,
    ssh = { host = "127.0.0.1", port = em.ssh_port } })
  return {
    provider = provider,
    argv_payloads = false,
    snapshot = emulator.SNAPSHOT,
    child_provider = ("require('galley.providers.morph').new({ ssh = { host = '127.0.0.1', port = %d } })")
      :format(em.ssh_port),
    child_env = { MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url },
    cleanup = function()
      provider.close()
      em:stop()
    end,
  }
end

-- galley emulate in argv mode `mode` ("exec" or "join", emulator.ARGV_MODES).
local function emulator_setup(mode)
  return function()
    local em = emulator.start({ argv_mode = mode })
    local provider = require("galley.providers.morph").new({ api_key = em.api_key, base_url = em.base_url })
    -- the emulator runs argv arrays in exec mode: the default exec_form "auto" finds it out and
    -- then carries 1.75 MiB a request; in join mode it keeps one-line execs
    return {
      provider = provider,
      argv_payloads = mode == "exec",
      snapshot = emulator.SNAPSHOT,
      child_provider = "require('galley.providers.morph').new({})",
      child_env = { MORPH_API_KEY = em.api_key, MORPH_BASE_URL = em.base_url },
      cleanup = function()
        provider.close()
        em:stop()
      end,
    }
  end
end

return {
  suite = suite,
  sh = sh,
  mktemp = mktemp,
  make_tree = make_tree,
  local_setup = local_setup,
  gateway_setup = gateway_setup,
  emulator_setup = emulator_setup,
}
