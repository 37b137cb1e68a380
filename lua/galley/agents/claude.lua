--- galley.agents.claude: turns a session (prompt, model, ...) into a ProcessSpec that runs the
-- Claude Code CLI headless. Knows nothing of providers or PM2.
--
--   local agent = require("galley.agents.claude").new{model = "opus"}
--   local spec = agent.to_process_spec{session_name = "fix bug 12", prompt = "..."}
--   -- spec.command.kind == "shell", spec.command.name == "cc-fix-bug-12", spec.restart == "never"
--
-- The script (run by bash; reference §5):
--   set -o pipefail
--   export PATH="$HOME"/.local/bin:"$PATH"     # where install_steps puts the CLI on read-only systems
--   unset CLAUDECODE ANTHROPIC_API_KEY          # unless the caller passes them in input.env
--   galley_sp=$(printf %s '<b64>' | base64 -d && printf x) || exit 1; galley_sp=${galley_sp%x}
--   printf %s '<b64>' | base64 -d | 'claude' -p --model 'sonnet' --output-format 'text' \
--     --dangerously-skip-permissions --append-system-prompt "$galley_sp" <extra args>
-- Prompt and system prompt travel base64-encoded (only [A-Za-z0-9+/=] inside single quotes) and
-- reach claude byte for byte: the prompt on stdin (a definite stdin, so `claude -p` never waits),
-- the system prompt as one argument (the trailing "x" keeps trailing newlines). The script's
-- status is claude's, or non-zero when decoding failed (pipefail).
--
-- Large prompts: a PM2 payload is one argv element (at most 128 KiB). When the base64 of prompt
-- plus system prompt exceeds `inline_limit` (64 KiB), the larger one (then, if still needed, the
-- other) moves into a file listed in `spec.files` (see galley.contracts: whoever starts the process
-- writes those files first, mode 600). The script then runs `claude -p ... < <prompt file>` and
-- `--append-system-prompt-file <file>`. Files live under `prompt_dir` (default
-- "~/.galley/sessions/<process name>/"); "~" there is the remote user's $HOME, so the uploader must
-- expand "~" to the same home directory.
--
-- Secrets: none are added. IS_SANDBOX=1 (not a secret) is set when running as root with
-- skipped permissions, which claude requires as root. Anything in input.env is passed as given.
local errors = require("galley.errors")
local headless = require("galley.agents.headless")
local util = require("galley.util")

local M = {}

M.PACKAGE = "@anthropic-ai/claude-code"

M.DEFAULTS = {
  model = "sonnet",
  cwd = "/root/operator/sw-compose",
  output_format = "text",
  claude_bin = "claude",
  skip_permissions = true,
  run_as_root = true,
  inline_limit = 64 * 1024,
  prompt_dir = "~/.galley/sessions",
}

--- claude -p caps piped stdin at 10 MB (reference §3).
M.MAX_PROMPT_BYTES = headless.MAX_PROMPT_BYTES

M.OUTPUT_FORMATS = { text = true, json = true, ["stream-json"] = true }

local OPTION_TYPES = {
  model = "string", cwd = "string", output_format = "string", claude_bin = "string",
  skip_permissions = "boolean", run_as_root = "boolean", inline_limit = "integer", prompt_dir = "string",
}

local INPUT_TYPES = {
  session_name = "string", prompt = "string", system_prompt = "string", model = "string", cwd = "string",
  env = "table", output_format = "string", extra_args = "table",
}

-- Variables we unset unless the caller sets them (reference §5.7): the nesting guard, and an API
-- key that would silently outrank the installed OAuth credentials.
local UNSET = { "CLAUDECODE", "ANTHROPIC_API_KEY" }


local bad, check_fields, check_text = headless.bad, headless.check_fields, headless.check_text


--- Creates a Claude Code agent.
---@param opts? {model?: string, cwd?: string, output_format?: "text"|"json"|"stream-json", claude_bin?: string,
---  skip_permissions?: boolean, run_as_root?: boolean, inline_limit?: integer, prompt_dir?: string}
--- Defaults: model "sonnet", cwd "/root/operator/sw-compose", output_format "text", claude_bin "claude",
--- skip_permissions true (`--dangerously-skip-permissions`), run_as_root true (adds IS_SANDBOX=1
--- when permissions are skipped), inline_limit 65536 (bytes of base64 carried in the script),
--- prompt_dir "~/.galley/sessions".
---@return galley.Agent agent `{name = "claude", to_process_spec = function(input) ... end}`
---@raise VALIDATION_ERROR (kind AgentError) for unknown or ill-typed options
function M.new(opts)
  opts = opts or {}
  check_fields("opts", opts, OPTION_TYPES)
  local cfg = util.merge(M.DEFAULTS, opts)
  if not M.OUTPUT_FORMATS[cfg.output_format] then
    bad("opts.output_format",
      ('expected "text", "json" or "stream-json", got %s'):format(errors.quote(cfg.output_format)))
  end
  check_text("opts.model", cfg.model)
  check_text("opts.claude_bin", cfg.claude_bin)
  check_text("opts.prompt_dir", cfg.prompt_dir)
  cfg.inline_limit = math.tointeger(cfg.inline_limit)
  if cfg.inline_limit < 0 then bad("opts.inline_limit", "must not be negative") end
  headless.check_cwd("opts.cwd", opts.cwd)

  local agent = { name = "claude" }

  --- Builds the ProcessSpec for one session.
  ---@param input {session_name: string, prompt: string, system_prompt?: string, model?: string, cwd?: string,
  ---  env?: table<string, string>, output_format?: string, extra_args?: string[]}
  ---@return galley.ProcessSpec spec shell form, name "cc-<sanitized session name>", restart "never"
  ---@raise VALIDATION_ERROR (kind AgentError) naming the bad input field
  function agent.to_process_spec(input)
    local codec = require("galley.core.codec")
    local shell = require("galley.core.shell")
    local pm2 = require("galley.core.pm2")

    headless.check_input(input, INPUT_TYPES) -- the prompt may hold any byte: stdin is binary-safe
    if input.system_prompt ~= nil then check_text("input.system_prompt", input.system_prompt, true) end
    local model = input.model or cfg.model
    local format = input.output_format or cfg.output_format
    if not M.OUTPUT_FORMATS[format] then
      bad("input.output_format", ('expected "text", "json" or "stream-json", got %s'):format(errors.quote(format)))
    end
    local extra = input.extra_args or {}

    local name = pm2.sanitize_name("cc-" .. input.session_name)
    local env = {}
    if cfg.skip_permissions and cfg.run_as_root then env.IS_SANDBOX = "1" end
    for k, v in pairs(input.env or {}) do env[k] = v end

    -- Decide what travels inline and what goes to files.
    local prompt_b64 = codec.base64_encode(input.prompt)
    local sp = input.system_prompt
    local sp_b64 = sp and sp ~= "" and codec.base64_encode(sp) or nil
    local prompt_file, sp_file = false, false
    local function inline_size()
      return (prompt_file and 0 or #prompt_b64) + ((sp_file or not sp_b64) and 0 or #sp_b64)
    end
    if inline_size() > cfg.inline_limit then
      if sp_b64 and #sp_b64 > #prompt_b64 then sp_file = true else prompt_file = true end
      if inline_size() > cfg.inline_limit then prompt_file, sp_file = true, sp_b64 ~= nil end
    end
    local dir = cfg.prompt_dir:gsub("/+$", "") .. "/" .. name
    local files = {}

    local lines = { "set -o pipefail", 'export PATH="$HOME"/.local/bin:"$PATH"' } -- install_steps' home prefix
    local unset = {}
    for _, var in ipairs(UNSET) do
      if env[var] == nil then unset[#unset + 1] = var end
    end
    if #unset > 0 then lines[#lines + 1] = "unset " .. table.concat(unset, " ") end

    local argv = { shell.quote(cfg.claude_bin), "-p", "--model", shell.quote(model), "--output-format",
      shell.quote(format) }
    if format == "stream-json" then argv[#argv + 1] = "--verbose" end
    if cfg.skip_permissions then argv[#argv + 1] = "--dangerously-skip-permissions" end
    if sp_file then
      local path = dir .. "/system-prompt.txt"
      files[#files + 1] = { path = path, content = sp, mode = "600" }
      argv[#argv + 1] = "--append-system-prompt-file " .. headless.path_word(shell, path)
    elseif sp_b64 then
      lines[#lines + 1] = ("galley_sp=$(printf %%s '%s' | base64 -d && printf x) || "
        .. "{ echo 'galley: cannot decode the system prompt' >&2; exit 1; }"):format(sp_b64)
      lines[#lines + 1] = "galley_sp=${galley_sp%x}"
      argv[#argv + 1] = '--append-system-prompt "$galley_sp"'
    end
    for _, a in ipairs(extra) do argv[#argv + 1] = shell.quote(a) end
    local claude = table.concat(argv, " ")

    if prompt_file then
      local path = dir .. "/prompt.txt"
      table.insert(files, 1, { path = path, content = input.prompt, mode = "600" })
      lines[#lines + 1] = claude .. " < " .. headless.path_word(shell, path)
    else
      lines[#lines + 1] = ("printf %%s '%s' | base64 -d | %s"):format(prompt_b64, claude)
    end

    return headless.checked_spec({ script = table.concat(lines, "\n") .. "\n", cwd = input.cwd or cfg.cwd,
      env = env, name = name }, files)
  end

  return agent
end


--- Steps that install Claude Code (and PM2) on an image (galley.images): node and npm from apt when
--- missing, `npm install` of @anthropic-ai/claude-code (globally, or under ~/.local where /usr is
--- read-only), its native binary put in place when npm held back the install script, then
--- `claude --version`.
---@param o? {version?: string, global?: boolean}
---@return table[] steps
function M.install_steps(o)
  o = o or {}
  return headless.install_steps({
    package = M.PACKAGE, bin = "claude", version = o.version, global = o.global,
    post_install = 'claude --version >/dev/null 2>&1 || (cd "$root/@anthropic-ai/claude-code" && node install.cjs)',
  })
end

return M
