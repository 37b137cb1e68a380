--- galley cp: copies one file between this machine and an instance (the provider's files API).
local shared = require("galley.commands.shared")

local M = {
  summary = "copy a file: galley cp LOCAL ID:PATH | ID:PATH LOCAL",
  usage = "galley cp LOCAL ID:PATH | ID:PATH LOCAL [--mode 644] [--json]",
  help = "Copies one file to an instance (written atomically, parent directories created) or from one.\n"
    .. "PATH is absolute or starts with ~/ (the instance's home). --mode sets the remote file's mode.\n"
    .. "--json prints {direction, instance_id, path, local, bytes}.",
}

function M.configure(p)
  p:argument("source", "LOCAL file or ID:PATH")
  p:argument("dest", "ID:PATH or LOCAL file")
  p:option("--mode", "mode of a file written to the instance (octal, e.g. 600)")
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
  if res.mode and not res.mode:match("^[0-7][0-7][0-7][0-7]?$") then
    io.stderr:write("galley cp: --mode: expected an octal mode such as 644, got '", res.mode:sub(1, 20), "'\n")
    return shared.EXIT_USAGE
  end
  return shared.with_provider("cp", res, function(provider)
    local out
    if did then
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
      io.stderr:write(("galley cp: %d bytes %s %s:%s\n"):format(out.bytes or 0,
        out.direction == "to" and "to" or "from", out.instance_id, out.path))
    end
    return 0
  end)
end

return M
