--- galley.agents.headless: what the Codex and Gemini agents share. Each turns a session into a
-- ProcessSpec whose bash script pipes the prompt into the CLI's headless mode:
--
--   set -o pipefail
--   printf %s '<b64 prompt>' | base64 -d | 'codex' exec --skip-git-repo-check ... -
--
-- The prompt travels base64-encoded (only [A-Za-z0-9+/=] inside single quotes) and reaches the
-- CLI's stdin byte for byte; past `inline_limit` bytes of base64 it goes to a file listed in
-- `spec.files` (mode 600, under `prompt_dir`/<process name>/) and the script reads it with `<`.
-- Secrets are never added: credentials live in files (credential profiles, see each agent's
-- `profile`); input.env passes through as given.
local contracts = require("galley.contracts")
local errors = require("galley.errors")
local util = require("galley.util")

local M = {}

--- Bytes of prompt a CLI gets on stdin at most (as for claude -p).
M.MAX_PROMPT_BYTES = 10 * 1000 * 1000


function M.bad(path, message)
  error(errors.AgentError("VALIDATION_ERROR", ("%s: %s"):format(path, message),
    { field = path, details = { path = path } }), 0)
end


local function typename(v)
  return math.type(v) == "integer" and "integer" or type(v)
end


--- Checks t against {field = type}; unknown fields and wrong types raise VALIDATION_ERROR.
function M.check_fields(path, t, types)
  if type(t) ~= "table" then M.bad(path, "expected a table, got " .. type(t)) end
  for _, k in ipairs(util.sorted_keys(t)) do
    local want = types[k]
    local where = path .. "." .. tostring(k)
    if not want then M.bad(where, "unknown field") end
    local got = typename(t[k])
    if got ~= want and not (want == "integer" and math.tointeger(t[k])) then
      M.bad(where, ("expected %s, got %s"):format(want, got))
    end
  end
end


function M.check_text(path, v, allow_empty, allow_nul)
  if type(v) ~= "string" then M.bad(path, "expected string, got " .. type(v)) end
  if not allow_empty and v == "" then M.bad(path, "must not be empty") end
  if not allow_nul and v:find("\0", 1, true) then M.bad(path, "must not contain a NUL byte") end
end


function M.check_strings(path, list)
  if not util.is_array(list) then M.bad(path, "expected an array of strings") end
  for i, a in ipairs(list) do M.check_text(("%s[%d]"):format(path, i), a, true) end
end


--- A path as a shell word: "~/rest" keeps its tilde expandable, anything else is quoted whole.
function M.path_word(shell, path)
  if path:sub(1, 2) == "~/" then return "~/" .. shell.quote(path:sub(3)) end
  return shell.quote(path)
end


--- The ProcessSpec of an agent's bash script, checked; a bad cwd or env is named as the input's
--- field (input.cwd, input.env.X), not the spec's.
---@param command {script: string, cwd: string, env: table, name: string}
---@param files? table[]
---@return galley.ProcessSpec
function M.checked_spec(command, files)
  local ok, spec = pcall(contracts.check_process, {
    command = { kind = "shell", script = command.script, cwd = command.cwd,
      env = next(command.env) and command.env or nil, name = command.name },
    restart = "never",
    files = files and #files > 0 and files or nil,
  })
  if not ok then
    local path = errors.is(spec) and spec.details and spec.details.path or "input"
    path = path:gsub("^command%.", "input.")
    local message = tostring(spec.message or spec):gsub("^command%.", "input.")
    error(errors.AgentError("VALIDATION_ERROR", message, { field = path, details = { path = path } }), 0)
  end
  return spec
end


--- Builds the ProcessSpec.
---@param b {name: string, argv: string[], prompt: string, cwd: string, env: table, unset?: string[],
---  inline_limit: integer, prompt_dir: string, path?: string}
--- `path` is put in front of PATH (e.g. "~/.local/bin", where install_steps may put the CLI).
--- `argv` is the CLI command line (unquoted words); the prompt goes to its stdin.
---@return galley.ProcessSpec
function M.process_spec(b)
  local codec = require("galley.core.codec")
  local shell = require("galley.core.shell")
  local words = {}
  for i, a in ipairs(b.argv) do words[i] = shell.quote(a) end
  local cli = table.concat(words, " ")
  local lines = { "set -o pipefail" }
  if b.path then
    local dir = b.path:sub(1, 2) == "~/" and ('"$HOME"/' .. shell.quote(b.path:sub(3))) or shell.quote(b.path)
    lines[#lines + 1] = "export PATH=" .. dir .. ':"$PATH"'
  end
  local unset = {}
  for _, var in ipairs(b.unset or {}) do
    if b.env[var] == nil then unset[#unset + 1] = var end
  end
  if #unset > 0 then lines[#lines + 1] = "unset " .. table.concat(unset, " ") end
  local files
  local b64 = codec.base64_encode(b.prompt)
  if #b64 > b.inline_limit then
    local path = b.prompt_dir:gsub("/+$", "") .. "/" .. b.name .. "/prompt.txt"
    files = { { path = path, content = b.prompt, mode = "600" } }
    lines[#lines + 1] = cli .. " < " .. M.path_word(shell, path)
  else
    lines[#lines + 1] = ("printf %%s '%s' | base64 -d | %s"):format(b64, cli)
  end
  return M.checked_spec({ script = table.concat(lines, "\n") .. "\n", cwd = b.cwd, env = b.env, name = b.name },
    files)
end


--- Checks the input fields every headless agent takes; returns the prompt.
function M.check_input(input, types)
  M.check_fields("input", input, types)
  M.check_text("input.session_name", input.session_name)
  if not input.session_name:find("%w") then M.bad("input.session_name", "needs at least one letter or digit") end
  M.check_text("input.prompt", input.prompt, false, true)
  if #input.prompt > M.MAX_PROMPT_BYTES then
    M.bad("input.prompt", ("%d bytes is more than the CLI takes on stdin (%d)"):format(#input.prompt,
      M.MAX_PROMPT_BYTES))
  end
  if input.model ~= nil then M.check_text("input.model", input.model) end
  if input.extra_args ~= nil then M.check_strings("input.extra_args", input.extra_args) end
  return input.prompt
end


--- Checks an option cwd like a CommandSpec cwd (absolute or ~-prefixed).
function M.check_cwd(path, cwd)
  if cwd ~= nil and not pcall(contracts.check_command, { kind = "shell", script = ":", cwd = cwd }) then
    M.bad(path, ("expected an absolute or ~-prefixed path, got %s"):format(errors.quote(cwd)))
  end
end


--- The install steps an agent adds to an image chain (galley.images): node and npm from apt when
--- node is missing (Debian/Ubuntu), PM2 and the agent's npm package, then a check.
--- Where the system directories are read-only or node is already there, packages go under
--- `~/.local` (npm --prefix) and the agent must put `~/.local/bin` on PATH (see `path_env`).
---@param o {package: string, bin: string, check_args?: string[], version?: string, prefix?: string,
---  global?: boolean, pm2?: boolean, post_install?: string}
--- `post_install` is a bash snippet run after npm (with $root, npm's node_modules directory, set).
---@return table[] steps
function M.install_steps(o)
  local pkg = o.package .. (o.version and ("@" .. o.version) or "")
  if not pkg:match("^[%w@/._~^<>=*-]+$") then
    M.bad("version", ("expected an npm version or range, got %s"):format(errors.quote(pkg)))
  end
  local prefix = o.prefix or "~/.local"
  local prefix_word = prefix:sub(1, 2) == "~/" and ('"$HOME"/' .. prefix:sub(3)) or ("'" .. prefix .. "'")
  local node = {
    key = "node and npm (apt when missing)",
    command = contracts.shell(table.concat({
      "set -e",
      "if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then node --version; exit 0; fi",
      "if ! command -v apt-get >/dev/null 2>&1; then echo 'galley: no node and no apt-get here' >&2; exit 1; fi",
      "SUDO=; [ \"$(id -u)\" = 0 ] || SUDO=sudo",
      "export DEBIAN_FRONTEND=noninteractive",
      "$SUDO apt-get update -qq",
      "$SUDO apt-get install -y -qq nodejs npm >/dev/null",
      "node --version",
    }, "\n")),
  }
  -- Global when /usr is writable and the caller did not ask for the home prefix; else ~/.local.
  local where = o.global == true and "global" or (o.global == false and "home" or "auto")
  local npm_script = table.concat({
    "set -e",
    "mode=" .. where,
    "if [ \"$mode\" = auto ]; then",
    "  root=$(npm root -g 2>/dev/null || echo /usr/lib/node_modules)",
    "  if [ -w \"$root\" ] || { [ ! -e \"$root\" ] && [ -w \"$(dirname \"$root\")\" ]; }; then mode=global; "
      .. "else mode=home; fi",
    "fi",
    "pkgs='" .. (o.pm2 == false and "" or "pm2 ") .. pkg .. "'",
    -- A throwaway cache: it would otherwise end up in the image.
    "cache=$(mktemp -d); trap 'rm -rf \"$cache\"' EXIT",
    "if [ \"$mode\" = global ]; then",
    "  npm install -g --cache \"$cache\" --no-audit --no-fund $pkgs",
    "  root=$(npm root -g)",
    "else",
    "  mkdir -p " .. prefix_word,
    -- --prefix also moves npm's global config (cafile, registry): keep the system's.
    "  gc=$(npm config get globalconfig)",
    "  npm install -g --prefix " .. prefix_word .. " --globalconfig \"$gc\" --cache \"$cache\" --no-audit "
      .. "--no-fund $pkgs",
    "  root=$(npm root -g --prefix " .. prefix_word .. ")",
    "fi",
    "export PATH=" .. prefix_word .. "/bin:$PATH",
    o.post_install or ":",
  }, "\n")
  local check = table.concat({
    "export PATH=" .. prefix_word .. "/bin:$PATH",
    o.bin .. " " .. table.concat(o.check_args or { "--version" }, " "),
  }, "\n")
  return {
    node,
    { key = "npm install " .. (o.pm2 == false and "" or "pm2 ") .. pkg, command = contracts.shell(npm_script) },
    { key = "check " .. o.bin, command = contracts.shell(check) },
  }
end


--- The PATH entry an agent prepends so CLIs installed under ~/.local are found.
M.HOME_BIN = "~/.local/bin"

return M
