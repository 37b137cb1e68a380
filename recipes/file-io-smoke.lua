-- file-io-smoke.lua: the provider files API on a real instance, as TAP on stdout.
--
--   galley run file-io-smoke                       # local sandbox (morph when MORPH_API_KEY is set)
--   galley run file-io-smoke --provider morph --large-mib 32
--
-- Writes and reads JSON and binary files in ~, /tmp, new nested directories and names with
-- spaces, quotes and non-ASCII characters; checks every content by sha256 (here and on the
-- instance), the modes 600/640/755 (and the owner when the instance runs as root), a large file
-- streamed from and to local files, and atomic replace (a new inode, the mode kept, no temporary
-- file left, and a failed replace leaving the old content). Exit status 1 when a check failed.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local errors = require("galley.errors")
local json = require("galley.json")
local util = require("galley.util")
local logmod = require("galley.log")

local MORPH_SNAPSHOT = "snapshot_c1p8b6c2"

local opts = recipe.options({
  name = "file-io-smoke",
  summary = "File IO smoke test: JSON and binary round trips, modes, odd names, a large file, atomic replace (TAP).",
  options = {
    { "provider", choices = providers.names, help = "where to boot (default: morph with MORPH_API_KEY, else local)" },
    { "snapshot", metavar = "ID", env = "GALLEY_SNAPSHOT",
      help = "snapshot (default: $TESTING_SNAPSHOT_ID or " .. MORPH_SNAPSHOT .. " on morph, an empty one on local)" },
    { "large-mib", type = "integer", default = 8, help = "size of the large file in MiB (0: skip)" },
    { "keep", type = "flag", help = "keep the instance afterwards" },
  },
}, arg)
if opts.large_mib < 0 then recipe.usage_error("--large-mib must be 0 or more") end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function say(text) io.stderr:write(text, "\n") end

local level = logmod.default_level()
if level == "info" and not os.getenv("GALLEY_LOG") then level = "error" end
local log = logmod.new({ level = level, prefix = "file-io-smoke" })

-- ---------------------------------------------------------------------------------------------
-- TAP
-- ---------------------------------------------------------------------------------------------

local CHECKS = {
  { "boot", "boot an instance" },
  { "json_home", "JSON in ~ (mode 600): content, sha256, mode" },
  { "json_tmp", "JSON in /tmp (mode 640): content, sha256, mode" },
  { "binary", "binary with every byte value in a new nested directory (mode 600): content, sha256" },
  { "script", "executable script (mode 755) runs" },
  { "spaces", "names with spaces" },
  { "quotes", "names with single and double quotes" },
  { "unicode", "non-ASCII names" },
  { "owner", "owner and group (when root)" },
  { "no_parent", "a write into a missing directory without create_dirs fails and leaves nothing" },
  { "large", "large file streamed from and to local files: sha256 here and there" },
  { "replace", "atomic replace: new content, new inode, mode kept, no temporary file left" },
  { "failed_replace", "a failed replace leaves the old content" },
  { "delete", "delete_file, file_exists, delete_directory" },
}

local tap = require("galley.tap").new(CHECKS)
local check = tap.check
tap.plan()

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

local function random_bytes(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local s = f:read(n)
  f:close()
  return s
end

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

local tmpfiles = {}
local function local_tmp()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end
recipe.defer(function()
  for _, p in ipairs(tmpfiles) do os.remove(p) end
end, "remove local temporary files")

local function sha256_file(path) return (util.sha256_file(path)) end

local function sha256(data) return util.sha256(data) end

local provider, why = providers.default(opts.provider, { log = log })
local provider_name = provider.name or opts.provider
say("file-io-smoke: " .. why)
local snapshot = opts.snapshot
if not snapshot and provider_name == "morph" then
  local env = os.getenv("TESTING_SNAPSHOT_ID")
  snapshot = (env and env ~= "") and env or MORPH_SNAPSHOT
end

local id, home, uid
local files = provider.files

local function exec(argv)
  return provider.exec(id, { kind = "argv", command = argv[1], args = table.move(argv, 2, #argv, 1, {}) })
end

-- {mode, user, group, size, inode} of a remote path, or nil.
local function stat(path)
  local r = exec({ "stat", "-c", "%a %U %G %s %i", "--", path })
  if r.exit_code ~= 0 then return nil end
  local mode, user, group, size, inode = r.stdout:match("^(%d+) (%S+) (%S+) (%d+) (%d+)")
  return { mode = mode, user = user, group = group, size = tonumber(size), inode = inode }
end

local function remote_sha256(path)
  local r = exec({ "sha256sum", "--", path })
  return r.exit_code == 0 and r.stdout:match("^\\?(%x+)") or nil
end

-- Writes, reads back, compares content and sha256 (here and there), checks the mode.
local function round_trip(path, content, mode, create_dirs)
  files.write_file_atomic(id, path, content, { mode = mode, create_dirs = create_dirs })
  local back = files.read_file(id, path)
  if back ~= content then return false, ("%s: read %d bytes back, wrote %d (or the bytes differ)"):format(path, #back,
    #content) end
  local here, there = sha256(content), remote_sha256(path)
  if here ~= there then return false, ("%s: sha256 here %s, on the instance %s"):format(path, here, tostring(there)) end
  local st = stat(path)
  if mode and (not st or st.mode ~= mode) then
    return false, ("%s: mode %s, want %s"):format(path, st and st.mode or "?", mode)
  end
  return ("%d bytes, sha256 %s…%s"):format(#content, here:sub(1, 12), mode and (", mode " .. mode) or "")
end

local base, tmpbase

-- ---------------------------------------------------------------------------------------------
-- The checks
-- ---------------------------------------------------------------------------------------------

check("boot", nil, function()
  say("file-io-smoke: booting " .. (snapshot or "an empty instance") .. " ...")
  local inst = provider.instances.boot(snapshot, {})
  id = inst.id
  if not opts.keep then
    recipe.defer(function()
      local ok, err = pcall(provider.instances.terminate, id)
      if not ok and not errors.is(err, "NOT_FOUND") then error(err, 0) end
    end, "terminate " .. id)
  else
    recipe.keep()
  end
  local r = exec({ "sh", "-c", 'printf "%s\\n%s\\n" "$HOME" "$(id -u)"' })
  home, uid = r.stdout:match("^([^\n]*)\n(%d+)")
  if not home then return false, "cannot read $HOME and the uid: " .. r.stderr end
  base = home .. "/galley-io"
  tmpbase = "/tmp/galley-io-" .. hex(random_bytes(4))
  return ("%s on %s, home %s, uid %s"):format(id, provider_name, home, uid)
end)

local doc = { name = "galley file-io smoke", n = 42, nested = { list = { 1, 2, 3 }, ok = true },
  text = "quotes \" ' \\ tabs\t newlines\n ünïcödé 日本 🚀" }
local doc_text = json.encode(doc) .. "\n"

check("json_home", { "boot" }, function()
  local res, why_ = round_trip(base .. "/config.json", doc_text, "600", true)
  if not res then return false, why_ end
  local decoded = json.decode(files.read_file(id, "~/galley-io/config.json"))
  if type(decoded) ~= "table" or decoded.text ~= doc.text then return false, "~ path reads back differently" end
  return res
end)

check("json_tmp", { "boot" }, function()
  return round_trip(tmpbase .. "/data.json", doc_text, "640", true)
end)

local all_bytes = {}
for i = 0, 255 do all_bytes[#all_bytes + 1] = string.char(i) end
all_bytes = table.concat(all_bytes)

check("binary", { "boot" }, function()
  local data = all_bytes .. random_bytes(64 * 1024) .. "\0\r\n\26" .. all_bytes:reverse()
  return round_trip(base .. "/new/nested/dirs/deep/blob.bin", data, "600", true)
end)

check("script", { "boot" }, function()
  local path = base .. "/bin/hello.sh"
  local res, why_ = round_trip(path, "#!/bin/sh\necho \"hello from $0\"\n", "755", true)
  if not res then return false, why_ end
  local r = exec({ path })
  if r.exit_code ~= 0 or not r.stdout:find("hello from", 1, true) then
    return false, ("running it: exit %d, %s"):format(r.exit_code, r.stderr)
  end
  return res
end)

check("spaces", { "boot" }, function()
  return round_trip(base .. "/dir with spaces/file name with  two spaces.json", doc_text, "640", true)
end)

check("quotes", { "boot" }, function()
  return round_trip(base .. [[/it's "quoted"/a 'b' "c" $HOME `x`.bin]], all_bytes, "600", true)
end)

check("unicode", { "boot" }, function()
  return round_trip(base .. "/ünïcödé 日本/файл 🚀.json", doc_text, "640", true)
end)

check("owner", { "boot" }, function()
  if uid ~= "0" then return "skip", "the instance does not run as root (uid " .. tostring(uid) .. ")" end
  local path = base .. "/owned.txt"
  local who = exec({ "sh", "-c", "id -un nobody && id -gn nobody" })
  local user, group = who.stdout:match("^(%S+)\n(%S+)")
  if who.exit_code ~= 0 or not user then return "skip", "no user 'nobody' on the instance" end
  files.write_file_atomic(id, path, "owned\n", { mode = "640", owner = user, group = group })
  local st = stat(path)
  if not st or st.user ~= user or st.group ~= group or st.mode ~= "640" then
    return false, ("got %s:%s mode %s, want %s:%s 640"):format(st and st.user, st and st.group, st and st.mode,
      user, group)
  end
  return ("%s:%s, mode 640"):format(user, group)
end)

check("no_parent", { "boot" }, function()
  local dir = base .. "/missing-" .. hex(random_bytes(3))
  local ok, err = pcall(files.write_file_atomic, id, dir .. "/x.json", "{}", {})
  if ok then return false, "the write succeeded" end
  if not errors.is(err) or (err.code ~= "FILE_IO_ERROR" and err.code ~= "NOT_FOUND") then
    return false, "unexpected error: " .. tostring(err)
  end
  if files.file_exists(id, dir) then return false, dir .. " exists now" end
  return err.code
end)

check("large", { "boot" }, function()
  if opts.large_mib == 0 then return "skip", "--large-mib 0" end
  local src, dst = local_tmp(), local_tmp()
  local bytes = opts.large_mib * 1024 * 1024
  os.execute(("head -c %d /dev/urandom > %s"):format(bytes, q(src)))
  local path = tmpbase .. "/large/big.bin"
  say(("file-io-smoke: moving %d MiB each way ..."):format(opts.large_mib))
  files.write_file_atomic(id, path, { from_file = src }, { mode = "600", create_dirs = true })
  local got = files.read_file(id, path, { to_file = dst })
  local a, b, c = sha256_file(src), remote_sha256(path), sha256_file(dst)
  if a ~= b or a ~= c then return false, ("sha256 source %s, instance %s, read back %s"):format(a, tostring(b), c) end
  local st = stat(path)
  if not st or st.size ~= bytes or st.mode ~= "600" then return false, "size or mode differ on the instance" end
  if got.size ~= bytes then return false, "read_file reported " .. tostring(got.size) .. " bytes" end
  return ("%d MiB, sha256 %s…"):format(opts.large_mib, a:sub(1, 12))
end)

local replace_path
check("replace", { "boot" }, function()
  replace_path = base .. "/replace/state.json"
  files.write_file_atomic(id, replace_path, '{"version":1}\n', { mode = "640", create_dirs = true })
  local before = stat(replace_path)
  files.write_file_atomic(id, replace_path, '{"version":2}\n') -- no mode: keeps 640
  local after = stat(replace_path)
  if files.read_file(id, replace_path) ~= '{"version":2}\n' then return false, "the new content is not there" end
  if not before or not after or before.inode == after.inode then return false, "same inode: not replaced by rename" end
  if after.mode ~= "640" then return false, "mode " .. after.mode .. " after the replace, want 640 kept" end
  local ls = exec({ "ls", "-A", base .. "/replace" })
  if ls.stdout ~= "state.json\n" then return false, "the directory holds: " .. ls.stdout:gsub("\n", " ") end
  return ("inode %s -> %s, mode 640 kept"):format(before.inode, after.inode)
end)

check("failed_replace", { "replace" }, function()
  local ok, err = pcall(files.write_file_atomic, id, replace_path, '{"version":3}\n',
    { owner = "galley-no-such-user-" .. hex(random_bytes(2)) })
  if ok then return false, "a write with an unknown owner succeeded" end
  local back = files.read_file(id, replace_path)
  if back ~= '{"version":2}\n' then return false, "the old content is gone: " .. back end
  local ls = exec({ "ls", "-A", base .. "/replace" })
  if ls.stdout ~= "state.json\n" then return false, "left behind: " .. ls.stdout:gsub("\n", " ") end
  return "failed with " .. tostring(errors.is(err) and err.code or err) .. ", old content intact"
end)

check("delete", { "boot" }, function()
  local path = base .. "/config.json"
  if not files.file_exists(id, path) then return false, path .. " does not exist before the delete" end
  files.delete_file(id, path)
  if files.file_exists(id, path) then return false, path .. " still exists" end
  files.delete_directory(id, base)
  files.delete_directory(id, tmpbase)
  if files.file_exists(id, base) or files.file_exists(id, tmpbase) then return false, "a directory is still there" end
  return "all gone"
end)

if tap.failures() > 0 then
  say(("file-io-smoke: %d of %d checks failed"):format(tap.failures(), #CHECKS))
  recipe.exit(1)
end
say(("file-io-smoke: all %d checks passed"):format(#CHECKS))
