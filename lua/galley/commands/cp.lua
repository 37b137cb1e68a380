--- galley cp: copies one file between this machine and an instance (the provider's files API),
--- or with -r a directory tree (galley.workspace push/pull: one compressed tar stream).
local shared = require("galley.commands.shared")

local M = {
  summary = "copy a file or (-r) a tree: galley cp [-r] LOCAL ID:PATH | ID:PATH LOCAL",
  usage = "galley cp [-r [--delete] [--git-dirs]] LOCAL ID:PATH | ID:PATH LOCAL [--mode 644] [--json]",
  help = "Copies one file to an instance (written atomically, parent directories created) or from one.\n"
    .. "PATH is absolute or starts with ~/ (the instance's home). --mode sets the remote file's mode.\n"
    .. "-r copies a directory tree (everything below it, modes and symlinks kept, only what differs\n"
    .. "travels; every file lands whole or not at all); --delete also removes files on the other\n"
    .. "side that are missing here; --max-bytes N bounds what a tree from an instance may bring\n"
    .. "(default 8 GiB: the sizes are the instance's word). A tree from an instance comes without\n"
    .. "its .git directories (their hooks and config would run code here at your next git command\n"
    .. "there) unless --git-dirs is given; for an agent's commits use pull_repo or run --repo.\n"
    .. "--json prints {direction, instance_id, path, local, bytes} (-r adds files, unchanged,\n"
    .. "deleted, execs, and from an instance git_dirs_left).",
}

function M.configure(p)
  p:argument("source", "LOCAL file or ID:PATH")
  p:argument("dest", "ID:PATH or LOCAL file")
  p:option("--mode", "mode of a file written to the instance (octal, e.g. 600)")
  p:flag("-r --recursive", "copy a directory tree (galley.workspace)")
  p:flag("--delete", "with -r: remove files on the other side that are missing here")
  p:option("--max-bytes", "with -r from an instance: fetch at most this many bytes (default 8 GiB)")
  p:flag("--git-dirs", "with -r from an instance: bring its .git directories too (only from one you trust)")
end


local function copy_tree(provider, res, sid, spath, did, dpath)
  local workspace = require("galley.workspace")
  -- to an instance everything goes; from one everything too (what git ignores included), but
  -- .git only when asked (a hook there runs code here)
  local o = { all = did and true or res.git_dirs or nil, gitignore = false, delete = res.delete or nil,
    max_bytes = res.max_bytes and math.tointeger(tonumber(res.max_bytes)) or nil }
  local r
  if did then
    r = workspace.push(provider, did, res.source, dpath, o)
  else
    r = workspace.pull(provider, sid, spath, res.dest, o)
  end
  return { direction = did and "to" or "from", instance_id = did or sid, path = dpath or spath,
    ["local"] = did and res.source or res.dest, bytes = r.bytes, files = r.sent, unchanged = r.unchanged,
    deleted = r.deleted, execs = r.execs,
    git_dirs_left = r.git_dirs_left and require("galley.json").array(r.git_dirs_left) or nil }
end

local function remote(s)
  local id, path = s:match("^([%w][%w_%-%.]*):(.+)$")
  if id and (path:sub(1, 1) == "/" or path:sub(1, 1) == "~") then return id, path end
  return nil
end

function M.run(args)
  local res, code = shared.parse(shared.parser("cp", M.summary, M), args)
  if not res then return code end
  local sid, spath = remote(res.source)
  local did, dpath = remote(res.dest)
  if (sid and did) or (not sid and not did) then
    io.stderr:write("galley cp: one of SOURCE and DEST must be ID:PATH (PATH absolute or ~/...), the other a local ",
      "file\n  hint: galley cp ./notes.txt localvm_1a2b3c4d:~/notes.txt\n")
    return shared.EXIT_USAGE
  end
  if res.delete and not res.recursive then
    io.stderr:write("galley cp: --delete needs -r (it applies to trees)\n")
    return shared.EXIT_USAGE
  end
  if res.git_dirs and (not res.recursive or did) then
    io.stderr:write("galley cp: --git-dirs is for -r from an instance (ID:PATH first); to one, .git always goes\n")
    return shared.EXIT_USAGE
  end
  if res.recursive and res.mode then
    io.stderr:write("galley cp: --mode applies to one file; with -r modes are copied from the source\n")
    return shared.EXIT_USAGE
  end
  if did and not res.recursive then
    local fs = require("galley.core.fs")
    local st = fs.stat(res.source)
    if st and st.type == "directory" then
      io.stderr:write("galley cp: ", res.source, " is a directory\n  hint: galley cp -r ", res.source, " ", res.dest,
        "\n")
      return shared.EXIT_USAGE
    end
  end
  local max_bytes = res.max_bytes and math.tointeger(tonumber(res.max_bytes))
  if res.max_bytes and (not res.recursive or did or not max_bytes or max_bytes < 1) then
    io.stderr:write("galley cp: --max-bytes: a positive number of bytes, for -r from an instance (ID:PATH first)\n")
    return shared.EXIT_USAGE
  end
  if res.mode and not res.mode:match("^[0-7][0-7][0-7][0-7]?$") then
    io.stderr:write("galley cp: --mode: expected an octal mode such as 644, got '", res.mode:sub(1, 20), "'\n")
    return shared.EXIT_USAGE
  end
  return shared.with_provider("cp", res, function(provider)
    local out
    if res.recursive then
      out = copy_tree(provider, res, sid, spath, did, dpath)
    elseif did then
      local f, ferr = io.open(res.source, "rb")
      if not f then
        io.stderr:write("galley cp: cannot read ", res.source, ": ", tostring(ferr), "\n")
        return 1
      end
      local size = f:seek("end")
      f:close()
      provider.files.write_file(did, dpath, { from_file = res.source }, { mode = res.mode, create_dirs = true })
      out = { direction = "to", instance_id = did, path = dpath, ["local"] = res.source, bytes = size }
    else
      local r = provider.files.read_file(sid, spath, { to_file = res.dest })
      out = { direction = "from", instance_id = sid, path = spath, ["local"] = res.dest, bytes = r.size }
    end
    if res.json then
      shared.json(out)
    elseif (require("galley.core.runtime").options().quiet or 0) == 0 then
      local what = out.files and ("%d files, %d bytes (%d unchanged, %d deleted, %d requests)"):format(out.files,
        out.bytes or 0, out.unchanged, out.deleted, out.execs) or ("%d bytes"):format(out.bytes or 0)
      io.stderr:write(("galley cp: %s %s %s:%s\n"):format(what, out.direction == "to" and "to" or "from",
        out.instance_id, out.path))
    end
    local left = out.git_dirs_left or {}
    if #left > 0 and not res.json then
      io.stderr:write(("galley cp: left out %s%s (a .git from an instance runs its hooks and config here at your"
        .. " next git command there)\n  hint: --git-dirs copies them from an instance you trust; for the agent's"
        .. " commits as a branch use workspace.pull_repo or galley run boot-and-run --repo\n"):format(left[1],
        #left > 1 and (" and %d more"):format(#left - 1) or ""))
    end
    return 0
  end)
end

return M
