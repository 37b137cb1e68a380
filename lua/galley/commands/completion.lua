--- galley completion: a shell completion script (lua-argparse's generators) for bash, zsh or fish.
-- It completes the commands, their options and the names of the shipped recipes after `run`.
local argparse = require("argparse")
local shared = require("galley.commands.shared")

local M = {
  summary = "shell completion script: galley completion bash|zsh|fish",
  usage = "galley completion bash|zsh|fish",
  help = "Prints a completion script for the shell. Install it, for example:\n"
    .. "  galley completion bash > ~/.local/share/bash-completion/completions/galley\n"
    .. "  galley completion zsh > \"${fpath[1]}/_galley\"\n"
    .. "  galley completion fish > ~/.config/fish/completions/galley.fish\n"
    .. "or for the current bash only: source <(galley completion bash)",
}

function M.configure(p)
  p:argument("shell", "bash, zsh or fish"):choices({ "bash", "zsh", "fish" })
end

--- The whole command line as one lua-argparse parser (commands, options, recipes under `run`).
---@return table parser
function M.parser()
  local cli = require("galley.cli")
  local root = argparse("galley", "galley: recipes and instances on Morph Cloud or this machine"):add_help(false)
  root:flag("-v --verbose", "more output; tracebacks on failure")
  root:flag("-q --quiet", "only errors")
  root:flag("--json", "print data only, as JSON")
  root:flag("--color", "force colour")
  root:flag("--no-color", "no colour")
  root:option("--lua-dir", "load galley's Lua modules from DIR")
  root:option("-e", "run Lua code")
  root:flag("-i", "enter the REPL afterwards")
  root:flag("-h --help", "help")
  root:flag("--version", "versions and module source")
  for _, name in ipairs(cli.order) do
    local summary = cli.commands[name] and cli.commands[name].summary or cli.lazy[name] or ""
    local c = root:command(name, summary):add_help(false)
    local mod = cli.lazy[name] and name ~= "emulate" and name ~= "gc" and require("galley.commands." .. name)
    if mod and mod.configure then
      shared.common_options(c)
      mod.configure(c)
    elseif name == "run" then
      c:flag("--keep", "keep this run's instances")
      c:option("--ttl", "TTL of the instances the run boots")
      for _, r in ipairs(require("galley.runner").shipped()) do
        c:command(r.name, r.summary):add_help(false)
      end
    elseif name == "help" then
      c:argument("command", "a command"):args("?"):choices(cli.order)
    elseif name == "dashboard" then
      mod.options(c)
    elseif name == "gc" then
      c:flag("--dry-run", "list what would be stopped")
      c:option("--provider", "which providers"):choices({ "morph", "local", "proxmox", "all" })
      c:flag("--all-hosts", "judge runs of other machines too")
      c:flag("--include-kept", "stop kept instances too")
      c:flag("--json", "JSON output")
    end
  end
  return root
end

function M.run(args)
  local res, code = shared.parse(shared.parser("completion", M.summary, M), args)
  if not res then return code end
  local p = M.parser()
  local gen = { bash = p.get_bash_complete, zsh = p.get_zsh_complete, fish = p.get_fish_complete }
  io.stdout:write(gen[res.shell](p))
  return 0
end

return M
