--- galley.cli: subcommand dispatch for the galley binary.
-- main.c handles `-e CODE` and plain scripts itself; everything else arrives here.
local runtime = require("galley.core.runtime")

local M = {}

local EXIT_USAGE = 2
local find -- resolves a command name, loading lazy ones (defined below)

M.commands = {}
M.order = {}

--- Registers a subcommand.
---@param name string
---@param spec {summary: string, usage: string, help?: string, run: fun(args: string[]): integer}
function M.command(name, spec)
  M.commands[name] = spec
  M.order[#M.order + 1] = name
end

local function usage_error(fmt, ...)
  io.stderr:write("galley: ", fmt:format(...), "\nTry 'galley help' for usage.\n")
  return EXIT_USAGE
end

--- The top-level usage text.
---@return string
function M.usage()
  local lines = {
    "usage: galley [options] COMMAND [args...]",
    "       galley [options] SCRIPT.lua [args...]   run a plain Lua script (like `lua`)",
    "       galley -e CODE                          run Lua code",
    "",
    "commands:",
  }
  for _, name in ipairs(M.order) do
    local cmd = M.commands[name]
    lines[#lines + 1] = ("  %-10s %s"):format(name, cmd and cmd.summary or M.lazy[name])
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "options (before the command; after it too for run and the instance commands):"
  lines[#lines + 1] = "  -v, --verbose      more output; tracebacks on failure"
  lines[#lines + 1] = "  -q, --quiet        only errors"
  lines[#lines + 1] = "  --json             subcommands print data only, as JSON"
  lines[#lines + 1] = "  --no-color         no colour (also when NO_COLOR is set)"
  lines[#lines + 1] = "  --lua-dir DIR      load galley's Lua modules from DIR (or GALLEY_LUA_DIR)"
  lines[#lines + 1] = "  -i                 enter the REPL after -e or a script"
  lines[#lines + 1] = "  -h, --help         this help;  --version  versions and module source"
  lines[#lines + 1] = ""
  lines[#lines + 1] = "exit codes: 0 ok, 1 failed, 2 usage/missing file/syntax error, 130 Ctrl-C, 143 SIGTERM;"
  lines[#lines + 1] = "  galley exec passes the command's exit code on"
  return table.concat(lines, "\n")
end

--- Options `galley run` takes before the recipe: the global ones again (`galley run -v x.lua`)
-- and the run-level --keep and --ttl, for any recipe. Returns the index of the recipe argument,
-- the run options, or nil and an error message.
---@param args string[]
---@return integer|nil index
---@return table|string run_opts_or_message
function M.run_options(args)
  local o = runtime.options()
  local ropts = {}
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "-v" or a == "--verbose" then
      o.verbose = (o.verbose or 0) + 1
    elseif a:match("^%-v+$") then
      o.verbose = (o.verbose or 0) + #a - 1
    elseif a == "-q" or a == "--quiet" then
      o.quiet = 1
    elseif a == "--json" then
      o.json = 1
    elseif a == "--no-color" then
      o.color = 0
    elseif a == "--color" then
      o.color = os.getenv("NO_COLOR") and 0 or 1
    elseif a == "-i" then
      o.interactive = 1
    elseif a == "--keep" or a:match("^%-%-keep=") then
      ropts.keep = true
      local secs, taken = require("galley.util").keep_duration(a:match("^%-%-keep=(.*)$"), args[i + 1])
      if not secs and taken then return nil, taken end
      ropts.keep_seconds = secs
      if taken == true then i = i + 1 end
    elseif a == "--ttl" or a:match("^%-%-ttl=") then
      local raw = a:match("^%-%-ttl=(.*)$")
      if not raw then
        i = i + 1
        raw = args[i]
      end
      if raw == nil then return nil, "--ttl needs a duration (90, 90s, 10m, 2h)" end
      local secs, why = require("galley.util").parse_duration(raw)
      if not secs then return nil, "--ttl: " .. why end
      ropts.ttl_seconds = secs > 0 and secs or false
    elseif a == "--" then
      i = i + 1
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, ("unknown option '%s' before the recipe (recipe options go after its name)"):format(a)
    else
      break
    end
    i = i + 1
  end
  return i, ropts
end

M.command("run", {
  summary = "run a recipe: galley run [--keep [D]] [--ttl D] FILE|NAME|- [args...]",
  usage = "galley run [-v] [-q] [--json] [--keep [DURATION]] [--ttl DURATION] FILE|NAME|- [args...]",
  help = "Runs a recipe file in its own environment (assigning an undeclared global is an error).\n"
    .. "NAME may be a recipe shipped with galley, e.g. `galley run boot-and-run --help`; `-` reads\n"
    .. "the recipe from stdin. The recipe sees its arguments in `arg` and `...`.\n"
    .. "Before the recipe: the global options (-v, -q, --json, --no-color, -i) and the run's own\n"
    .. "--keep [DURATION] (keep its instances at exit, for their TTL or, with a DURATION such as 4h,\n"
    .. "for that long from the end of the run; the end says until when) and --ttl DURATION (90, 90s,\n"
    .. "10m, 2h; 0: none), which every recipe also accepts after its name unless it declares options\n"
    .. "of those names (a declared keep flag takes the DURATION too).",
  run = function(args)
    local first, ropts = M.run_options(args)
    if not first then return usage_error("run: %s", ropts) end
    local runner = require("galley.runner")
    if not args[first] then
      io.stderr:write("galley run: which recipe? give a file, `-` (stdin) or a shipped recipe's name\n\n",
        runner.shipped_text(), "\n")
      return EXIT_USAGE
    end
    local rest = table.move(args, first + 1, #args, 1, {})
    local code = runner.run(args[first], rest, ropts)
    if code == 0 and (runtime.options().interactive or 0) > 0 then
      return require("galley.repl").run()
    end
    return code
  end,
})

M.command("repl", {
  summary = "interactive Lua prompt with galley loaded",
  usage = "galley repl",
  run = function() return require("galley.repl").run() end,
})

M.command("test", {
  summary = "run busted specs inside galley: galley test [busted args...]",
  usage = "galley test [busted args...]",
  help = "Runs busted (from the system's lua-busted package) inside this binary, so specs see\n"
    .. "exactly the modules galley ships. Arguments go to busted unchanged.",
  run = function(args)
    local argv = { [0] = "galley-test", "--ignore-lua" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    _G.arg = argv
    local ok, runner = pcall(require, "busted.runner")
    if not ok then
      io.stderr:write("galley: TEST_NO_BUSTED: busted is not installed (", tostring(runner), ")\n",
        "  hint: apt-get install lua-busted\n")
      return 1
    end
    runner({ standalone = false })
    return 0
  end,
})

M.command("version", {
  summary = "print versions and where the Lua modules come from",
  usage = "galley version [--json]",
  run = function(args)
    local v = runtime.versions()
    for _, a in ipairs(args or {}) do
      if a == "--json" then runtime.options().json = 1 end
    end
    if (runtime.options().json or 0) > 0 then
      io.stdout:write(require("cjson").encode(v), "\n")
    else
      io.stdout:write(("galley %s\nLua %s, libcurl %s, libsodium %s\nmodules: %s\n"):format(
        v.galley, v.lua:gsub("^Lua ", ""), v.curl, v.sodium, v.source))
    end
    return 0
  end,
})

M.command("help", {
  summary = "help for galley or one command: galley help [COMMAND]",
  usage = "galley help [COMMAND]",
  run = function(args)
    local name = args[1]
    if not name then
      io.stdout:write(M.usage(), "\n")
      return 0
    end
    local cmd = find(name)
    if not cmd then return usage_error("no command '%s'", name) end
    if cmd.configure then
      io.stdout:write(require("galley.commands.shared").help(
        require("galley.commands.shared").parser(name, cmd.summary, cmd), cmd), "\n")
      return 0
    end
    io.stdout:write("usage: ", cmd.usage, "\n\n", cmd.summary, "\n")
    if cmd.help then io.stdout:write("\n", cmd.help, "\n") end
    if name == "run" then io.stdout:write("\n", require("galley.runner").shipped_text(), "\n") end
    return 0
  end,
})

-- Commands that live in their own module, `galley.commands.<name>`, loaded on first use. The
-- module returns {summary, usage, help?, run = fun(args): integer}.
M.lazy = {
  emulate = "serve the Morph API on 127.0.0.1 with instances that really run",
  gc = "stop instances (and delete snapshots) left by finished or expired galley runs",
  ls = "list instances: galley ls [--all] [--json]",
  snapshots = "list snapshots: galley snapshots [--json]",
  images = "list base images: galley images [--json]",
  boot = "boot an instance from a snapshot, print its id: galley boot SNAPSHOT [--ttl 30m]",
  exec = "run a command in an instance: galley exec ID -- CMD [ARGS...]",
  shell = "an interactive shell in an instance (tmux): galley shell ID",
  logs = "a PM2 or tmux session's output: galley logs [-f] ID NAME",
  stop = "stop (delete) instances: galley stop ID...",
  cp = "copy a file or (-r) a tree: galley cp [-r] LOCAL ID:PATH | ID:PATH LOCAL",
  completion = "shell completion script: galley completion bash|zsh|fish",
  dashboard = "a local web page of runs, instances and live sessions: galley dashboard [--port N]",
}
M.LAZY_ORDER = { "ls", "boot", "exec", "shell", "logs", "cp", "stop", "snapshots", "images", "emulate", "gc",
  "dashboard", "completion" }
for _, name in ipairs(M.LAZY_ORDER) do M.order[#M.order + 1] = name end

function find(name)
  if M.commands[name] then return M.commands[name] end
  if M.lazy[name] then
    local ok, mod = pcall(require, "galley.commands." .. name)
    if not ok then
      io.stderr:write("galley: COMMAND_UNAVAILABLE: '", name, "' failed to load: ", tostring(mod), "\n")
      return nil
    end
    M.commands[name] = mod
    return mod
  end
end

--- Entry point from main.c.
---@param args string[]
---@return integer exit_code
function M.main(args)
  local name = args[1]
  if name == nil then
    if runtime.isatty(0) then return M.commands.repl.run({}) end
    io.stderr:write(M.usage(), "\n")
    return EXIT_USAGE
  end
  if name == "--help" or name == "-h" then name = "help" end
  if name == "--version" then name = "version" end
  local cmd = find(name)
  if not cmd then
    if M.lazy[name] then return 1 end
    local names = {}
    for _, n in ipairs(M.order) do names[#names + 1] = n end
    local near = require("galley.util").did_you_mean(name, names)
    if not near then
      for _, r in ipairs(require("galley.runner").shipped()) do
        if r.name == name then near = ("to run the shipped recipe: galley run %s"):format(name) end
      end
    end
    return usage_error("unknown command '%s'%s (to run a file, give its path, e.g. ./%s)", name,
      near and ("; " .. near) or "", name)
  end
  local rest = table.move(args, 2, #args, 1, {})
  if (rest[1] == "--help" or rest[1] == "-h") and name ~= "test" and name ~= "run" then
    return M.commands.help.run({ name })
  end
  return cmd.run(rest)
end

return M
