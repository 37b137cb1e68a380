--- galley.agents.codex: turns a session into a ProcessSpec that runs the OpenAI Codex CLI headless
-- (`codex exec`). Knows nothing of providers or PM2.
--
--   local agent = require("galley.agents.codex").new{model = "gpt-5"}
--   local spec = agent.to_process_spec{session_name = "fix bug 12", prompt = "..."}
--   -- spec.command.name == "cx-fix-bug-12", spec.restart == "never"
--
-- The script (bash):
--   set -o pipefail
--   export PATH="$HOME/.local/bin:$PATH"           # CLIs installed under ~/.local (install_steps)
--   unset OPENAI_API_KEY                           # unless input.env sets it: the login file rules
--   printf %s '<b64>' | base64 -d | 'codex' 'exec' '--skip-git-repo-check' \
--     '--dangerously-bypass-approvals-and-sandbox' '--model' 'gpt-5' '--cd' '<cwd>' <-c k=v...> <extra> '-'
-- The prompt reaches codex's stdin (`-`) byte for byte (see galley.agents.headless; large prompts
-- go to a 600 file). No secrets in the spec: codex reads its login from ~/.codex/auth.json, which
-- `M.profile` installs (an API key, or the auth.json `codex login` wrote).
local headless = require("galley.agents.headless")
local util = require("galley.util")

local M = {}

M.PACKAGE = "@openai/codex"

M.DEFAULTS = {
  cwd = "~",
  codex_bin = "codex",
  bypass_sandbox = true,
  json = false,
  inline_limit = 64 * 1024,
  prompt_dir = "~/.galley/sessions",
}

local OPTION_TYPES = {
  model = "string", cwd = "string", codex_bin = "string", bypass_sandbox = "boolean", json = "boolean",
  inline_limit = "integer", prompt_dir = "string", config = "table",
}

local INPUT_TYPES = {
  session_name = "string", prompt = "string", model = "string", cwd = "string", env = "table",
  extra_args = "table", config = "table", json = "boolean",
}

--- Creates a Codex agent.
---@param opts? {model?: string, cwd?: string, codex_bin?: string, bypass_sandbox?: boolean, json?: boolean,
---  inline_limit?: integer, prompt_dir?: string, config?: string[]}
--- Defaults: the CLI's own model, cwd "~", codex_bin "codex", bypass_sandbox true
--- (`--dangerously-bypass-approvals-and-sandbox`: the instance is the sandbox), json false (`--json`
--- prints JSONL events), config {} (`-c key=value` overrides, e.g. a model provider).
---@return galley.Agent agent `{name = "codex", to_process_spec = function(input) ... end}`
---@raise VALIDATION_ERROR (kind AgentError)
function M.new(opts)
  opts = opts or {}
  headless.check_fields("opts", opts, OPTION_TYPES)
  local cfg = util.merge(M.DEFAULTS, opts)
  if cfg.model ~= nil then headless.check_text("opts.model", cfg.model) end
  headless.check_text("opts.codex_bin", cfg.codex_bin)
  headless.check_text("opts.prompt_dir", cfg.prompt_dir)
  headless.check_cwd("opts.cwd", opts.cwd)
  if opts.config ~= nil then headless.check_strings("opts.config", opts.config) end
  cfg.inline_limit = math.tointeger(cfg.inline_limit)
  if cfg.inline_limit < 0 then headless.bad("opts.inline_limit", "must not be negative") end

  local agent = { name = "codex" }

  --- Builds the ProcessSpec for one session.
  ---@param input {session_name: string, prompt: string, model?: string, cwd?: string, env?: table<string, string>,
  ---  extra_args?: string[], config?: string[], json?: boolean}
  ---@return galley.ProcessSpec spec shell form, name "cx-<sanitized session name>", restart "never"
  ---@raise VALIDATION_ERROR (kind AgentError) naming the bad input field
  function agent.to_process_spec(input)
    local pm2 = require("galley.core.pm2")
    local prompt = headless.check_input(input, INPUT_TYPES)
    if input.config ~= nil then headless.check_strings("input.config", input.config) end
    local cwd = input.cwd or cfg.cwd
    local argv = { cfg.codex_bin, "exec", "--skip-git-repo-check" }
    if cfg.bypass_sandbox then argv[#argv + 1] = "--dangerously-bypass-approvals-and-sandbox" end
    local model = input.model or cfg.model
    if model then
      argv[#argv + 1] = "--model"
      argv[#argv + 1] = model
    end
    local json = input.json
    if json == nil then json = cfg.json end
    if json then argv[#argv + 1] = "--json" end
    for _, list in ipairs({ cfg.config or {}, input.config or {} }) do
      for _, kv in ipairs(list) do
        argv[#argv + 1] = "-c"
        argv[#argv + 1] = kv
      end
    end
    for _, a in ipairs(input.extra_args or {}) do argv[#argv + 1] = a end
    argv[#argv + 1] = "-" -- the prompt is stdin
    local env = {}
    for k, v in pairs(input.env or {}) do env[k] = v end
    return headless.process_spec({
      name = pm2.sanitize_name("cx-" .. input.session_name), argv = argv, prompt = prompt, cwd = cwd, env = env,
      unset = { "OPENAI_API_KEY", "CODEX_API_KEY" }, path = headless.HOME_BIN,
      inline_limit = cfg.inline_limit, prompt_dir = cfg.prompt_dir,
    })
  end

  return agent
end


--- A credential profile that logs Codex in on an instance: `~/.codex` (0700) and
--- `~/.codex/auth.json` (0600), from an API key or from the auth.json `codex login` wrote.
---@param o {api_key?: string, auth_json?: table, codex_home?: string, name?: string}
---@return table profile (galley.credentials)
---@raise VALIDATION_ERROR
function M.profile(o)
  local credentials = require("galley.credentials")
  headless.check_fields("codex_profile", o, { api_key = "string", auth_json = "table", codex_home = "string",
    name = "string" })
  if (o.api_key == nil) == (o.auth_json == nil) then
    headless.bad("codex_profile", "give exactly one of api_key and auth_json")
  end
  if o.api_key ~= nil then headless.check_text("codex_profile.api_key", o.api_key) end
  local home = (o.codex_home or "~/.codex"):gsub("/+$", "")
  local auth = o.auth_json or { auth_mode = "apikey", OPENAI_API_KEY = o.api_key }
  local profile = {
    name = o.name or "codex",
    directories = { { path = home, mode = "700" } },
    files = { { path = home .. "/auth.json", json = auth, secret = true, mode = "600" } },
  }
  credentials.check_profile(profile, "codex_profile")
  return profile
end


--- Steps that install the Codex CLI (and PM2) on an image (galley.images): node and npm from apt
--- when missing, `npm install` of @openai/codex (globally, or under ~/.local where /usr is
--- read-only), then `codex --version`.
---@param o? {version?: string, global?: boolean}
---@return table[] steps
function M.install_steps(o)
  o = o or {}
  return headless.install_steps({ package = M.PACKAGE, bin = "codex", version = o.version, global = o.global })
end

return M
