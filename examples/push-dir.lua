-- push-dir.lua: copy a local directory tree onto an instance, keeping file modes, and check
-- that what arrived is what was sent (mode, size and SHA-256 of every file).
--
--   galley run examples/push-dir.lua DIR                      # into ~/pushed on a local sandbox
--   galley run examples/push-dir.lua DIR --dest /tmp/app      # somewhere else (a local sandbox
--                                                             # writes only ~ and /tmp; on Morph, /srv/app too)
--   MORPH_API_KEY=... galley run examples/push-dir.lua DIR --provider morph --snapshot snapshot_abc
--
-- How: the tree is walked with galley.core.fs (list, stat); directories are created with their
-- modes (files.create_directory), each file goes through files.write_file_atomic with its mode
-- and `{from_file = path}`, so it is streamed from disk in chunks instead of read into memory.
-- Each write is atomic on the instance (temporary file, verify, rename). Then ONE exec lists the
-- destination (`find -printf`, `sha256sum`) and the listing is compared with the local one.
-- Symbolic links and special files are skipped (and said so). Prints one line per entry:
-- `<type> <mode> <size> <path>`, then a summary. The instance is terminated at the end.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local fs = require("galley.core.fs")
local util = require("galley.util")

local opts = recipe.options({
  name = "push-dir",
  usage = "[options] DIR",
  summary = "Copy a directory onto an instance with its file modes, then verify every file.",
  options = {
    { "dest", metavar = "PATH", default = "~/pushed", help = "destination directory (absolute or ~/...)" },
    { "provider", choices = providers.names, help = "default: morph with MORPH_API_KEY, else local" },
    { "snapshot", metavar = "ID", help = "snapshot to boot (default: the provider's own, if it has one)" },
  },
}, arg)
local root = opts[1]
if not root then recipe.usage_error("give the directory to push") end
local st = fs.stat(root)
if not st or st.type ~= "directory" then recipe.usage_error(root .. " is not a directory") end

-- Walk the tree: entries in a stable order, parents before children.
local entries, skipped = {}, {}
local function walk(dir, rel)
  for _, name in ipairs(assert(fs.list(dir))) do
    local path, rpath = dir .. "/" .. name, rel == "" and name or (rel .. "/" .. name)
    local s = assert(fs.stat(path))
    local mode = ("%03o"):format(s.mode & 511)
    if s.type == "directory" then
      entries[#entries + 1] = { type = "d", rel = rpath, mode = mode }
      walk(path, rpath)
    elseif s.type == "file" then
      entries[#entries + 1] = { type = "f", rel = rpath, mode = mode, size = s.size, path = path }
    else
      skipped[#skipped + 1] = rpath .. " (" .. s.type .. ")"
    end
  end
end
walk(root, "")

local provider, why = providers.default(opts.provider)
recipe.say(why)
local snapshot = opts.snapshot or provider.DEFAULT_SNAPSHOT
if not snapshot then recipe.usage_error("--snapshot is required for provider " .. provider.name) end

local inst = recipe.step("boot", provider.instances.boot, snapshot, { ttl_seconds = 900 })
recipe.defer(function() provider.instances.terminate(inst.id) end, "terminate " .. inst.id)

local files = provider.files
local dest = opts.dest:gsub("/+$", "")
local bytes = 0
recipe.step(("push %d entries"):format(#entries), function()
  files.create_directory(inst.id, dest, { recursive = true })
  for _, e in ipairs(entries) do
    local target = dest .. "/" .. e.rel
    if e.type == "d" then
      files.create_directory(inst.id, target, { recursive = true, mode = e.mode })
    else
      files.write_file_atomic(inst.id, target, { from_file = e.path }, { mode = e.mode, create_dirs = true })
      bytes = bytes + e.size
    end
  end
end)

-- One exec lists what arrived: "<type> <mode> <size> <path>" per entry, then "<sha256>  ./<path>"
-- per file. The destination is the spec's `cwd`: providers expand a leading `~` in `cwd` (and in
-- file paths), never in `args`, where "~/pushed" would reach `find` as a literal name.
local listing = recipe.step("verify", provider.exec, inst.id, {
  kind = "argv", command = "sh", cwd = dest,
  args = { "-c", [[find . -mindepth 1 -printf '%y %m %s %P\n' && find . -type f -exec sha256sum {} +]] },
})
if listing.exit_code ~= 0 then error("listing the destination failed: " .. listing.stderr) end
local remote, sums = {}, {}
for line in listing.stdout:gmatch("[^\n]+") do
  local t, mode, size, path = line:match("^([df]) (%d+) (%d+) (.+)$")
  if t then
    remote[path] = { type = t, mode = ("%03d"):format(tonumber(mode)), size = tonumber(size) }
  else
    local sum, p = line:match("^(%x+)  %./(.+)$")
    if sum then sums[p] = sum end
  end
end

local problems = {}
for _, e in ipairs(entries) do
  local r = remote[e.rel]
  if not r then
    problems[#problems + 1] = e.rel .. ": missing"
  elseif r.type ~= e.type or r.mode ~= e.mode then
    problems[#problems + 1] = ("%s: %s %s, expected %s %s"):format(e.rel, r.type, r.mode, e.type, e.mode)
  elseif e.type == "f" then
    local sum = assert(util.sha256_file(e.path))       -- read in pieces, like the upload
    if r.size ~= e.size or sums[e.rel] ~= sum then problems[#problems + 1] = e.rel .. ": content differs" end
  end
  print(("%s %s %s %s"):format(e.type, e.mode, e.type == "f" and tostring(e.size) or "-", e.rel))
end
for _, s in ipairs(skipped) do print("skipped " .. s) end
if #problems > 0 then
  error(("%d entries differ:\n  %s"):format(#problems, table.concat(problems, "\n  ")))
end
local nfiles = 0
for _, e in ipairs(entries) do if e.type == "f" then nfiles = nfiles + 1 end end
print(("pushed %d files and %d directories (%d bytes) to %s; modes, sizes and sha256 verified"):format(
  nfiles, #entries - nfiles, bytes, opts.dest))
