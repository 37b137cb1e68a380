--- `galley gc`: stop instances left by finished or expired galley runs (see galley.gc).
local gc = require("galley.gc")
local runtime = require("galley.core.runtime")

local HELP = [[
Finds instances that galley runs created (metadata galley_run) and stops those whose run has
finished on this machine or whose TTL has passed; deletes the snapshots such runs made (unless
made with keep = true; images built by snapshots.build are never touched). Runs include
`galley -e` and `galley SCRIPT.lua`. Sweeps the local provider, and Morph when MORPH_API_KEY is
set.

options:
  --dry-run            list what would be stopped; stop nothing
  --provider NAME      morph, local, proxmox or all (default: local, plus morph with MORPH_API_KEY,
                       plus proxmox with PVE_URL: Proxmox has no TTL, gc enforces the recorded one)
  --all-hosts          also judge runs started on other machines as finished
  --include-kept       also stop instances booted with --keep (and snapshots made with keep = true)
  --json               print the result as JSON on stdout (global option, also accepted here)

It says what it skipped on stderr: kept instances, providers it could not use or reach. Once
everything was swept, it removes the run files of finished runs ($GALLEY_STATE_DIR/runs).

A snapshot that instances gc leaves alone still use (Proxmox linked clones on ZFS or directory
storage) is reported "in use" and left for a later gc.

exit status: 0 when everything found was stopped (or --dry-run), 1 when a stop failed or a
provider asked for (--provider) is unavailable or unreachable, 2 on a usage error.]]

local function usage(msg)
  io.stderr:write("galley gc: ", msg, "\nTry 'galley gc --help'.\n")
  return 2
end

return {
  summary = "stop instances (and delete snapshots) left by finished or expired galley runs",
  usage = "galley gc [--dry-run] [--provider morph|local|proxmox|all] [--all-hosts] [--include-kept] [--json]",
  help = HELP,
  run = function(args)
    local opts = { json = (runtime.options().json or 0) > 0 }
    local i = 1
    while args[i] do
      local a = args[i]
      if a == "--dry-run" then
        opts.dry_run = true
      elseif a == "--all-hosts" then
        opts.all_hosts = true
      elseif a == "--include-kept" then
        opts.include_kept = true
      elseif a == "--json" then
        opts.json = true
      elseif a == "--provider" or a:match("^%-%-provider=") then
        local v = a:match("^%-%-provider=(.*)$")
        if not v then
          i = i + 1
          v = args[i]
        end
        if v ~= "morph" and v ~= "local" and v ~= "proxmox" and v ~= "all" then
          return usage("--provider takes morph, local, proxmox or all")
        end
        opts.provider = v
      elseif a == "--help" or a == "-h" then
        io.stdout:write(HELP, "\n")
        return 0
      else
        return usage(("unknown argument '%s'"):format(a))
      end
      i = i + 1
    end
    local providers, notes = gc.default_providers(opts.provider)
    -- A provider asked for by name (or with all) that cannot be used makes the exit code 1.
    local failed = opts.provider ~= nil and (notes.unavailable or 0) > 0
    local unswept = notes.unavailable or 0 -- providers that could not be used or reached
    for _, n in ipairs(notes) do io.stderr:write("galley gc: skipped: ", n, "\n") end
    local all, skipped = {}, {}
    for _, p in ipairs(providers) do
      local ok, found, kept = pcall(gc.collect, p, opts)
      if not ok then
        local url = p.name == "morph" and (os.getenv("MORPH_BASE_URL") or "https://cloud.morph.so/api") or nil
        io.stderr:write(("galley gc: skipped: %s provider unreachable%s: %s\n"):format(p.name,
          url and (" at " .. url) or "", tostring(found)))
        failed = true
        unswept = unswept + 1
      else
        for _, c in ipairs(found) do
          all[#all + 1] = c
          if c.action == "failed" then failed = true end
        end
        for _, k in ipairs(kept or {}) do skipped[#skipped + 1] = k end
      end
    end
    for _, k in ipairs(skipped) do
      io.stderr:write(("galley gc: skipped %s %s%s (run %s): %s\n"):format(k.provider,
        k.kind == "snapshot" and "snapshot " or "", k.id, k.run or "?", k.reason))
    end
    if not opts.dry_run and not failed then
      local removed = gc.prune_runs()
      if #removed > 0 and not opts.json then
        io.stderr:write(("galley gc: removed %d run file(s) of finished runs\n"):format(#removed))
      end
    end
    if opts.json then
      -- lua-cjson 2.1.0 encodes an empty table as {}; the result is always a list.
      io.stdout:write(#all == 0 and "[]" or require("cjson").encode(all), "\n")
    elseif #all == 0 and unswept > 0 then
      -- Not "nothing to collect": what the skipped providers hold is unknown.
      io.stderr:write(("galley gc: nothing collected; %d provider(s) could not be swept (see above)\n"):format(unswept))
    elseif #all == 0 then
      io.stderr:write("galley gc: nothing to collect\n")
    else
      for _, c in ipairs(all) do
        io.stdout:write(("%-12s %-8s %-22s %-12s %s (run %s, %s)%s\n"):format(c.action, c.provider, c.id,
          c.status or "?", c.reason, c.run or "?", c.recipe or "?", c.error and (": " .. c.error) or ""))
      end
    end
    return failed and 1 or 0
  end,
}
