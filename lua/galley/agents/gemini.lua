--- galley.agents.gemini: turns a session into a ProcessSpec that runs the Gemini CLI headless
-- (`gemini -p`). Knows nothing of providers or PM2.
--
--   local agent = require("galley.agents.gemini").new{model = "gemini-2.5-pro"}
--   local spec = agent.to_process_spec{session_name = "fix bug 12", prompt = "..."}
--   -- spec.command.name == "gm-fix-bug-12", spec.restart == "never"
--
-- The script (bash):
--   set -o pipefail
--   export PATH="$HOME/.local/bin:$PATH"           # CLIs installed under ~/.local (install_steps)
--   printf %s '<b64>' | base64 -d | 'gemini' '--prompt' '' '--skip-trust' '--approval-mode' 'yolo' \
--     '--output-format' 'text' '--model' '<model>' <extra>
-- `-p ''` selects the headless mode and adds nothing: the prompt is stdin, byte for byte (see
-- galley.agents.headless; large prompts go to a 600 file). `--skip-trust` trusts the working
-- directory for this session only. No secrets in the spec: the CLI reads GEMINI_API_KEY from
-- ~/.gemini/.env and the auth type from ~/.gemini/settings.json, which `M.profile` installs (or
-- ~/.gemini/oauth_creds.json from a Google login).
local headless = require("galley.agents.headless")
local util = require("galley.util")

local M = {}

M.PACKAGE = "@google/gemini-cli"

M.DEFAULTS = {
  cwd = "~",
  gemini_bin = "gemini",
  approval_mode = "yolo",
  output_format = "text",
  inline_limit = 64 * 1024,
  prompt_dir = "~/.galley/sessions",
}

M.OUTPUT_FORMATS = { text = true, json = true, ["stream-json"] = true }
M.APPROVAL_MODES = { default = true, auto_edit = true, yolo = true, plan = true }

local OPTION_TYPES = {
  model = "string", cwd = "string", gemini_bin = "string", approval_mode = "string", output_format = "string",
  inline_limit = "integer", prompt_dir = "string",
}

local INPUT_TYPES = {
  session_name = "string", prompt = "string", model = "string", cwd = "string", env = "table",
  extra_args = "table", output_format = "string",
}

local function check_choice(path, v, set, what)
  if not set[v] then
    local names = util.sorted_keys(set)
    headless.bad(path, ("expected %s (%s), got %s"):format(what, table.concat(names, ", "),
      require("galley.errors").quote(v)))
  end
end

--- Creates a Gemini agent.
---@param opts? {model?: string, cwd?: string, gemini_bin?: string, approval_mode?: string,
---  output_format?: "text"|"json"|"stream-json", inline_limit?: integer, prompt_dir?: string}
--- Defaults: the CLI's own model, cwd "~", gemini_bin "gemini", approval_mode "yolo" (the instance
--- is the sandbox), output_format "text".
---@return galley.Agent agent `{name = "gemini", to_process_spec = function(input) ... end}`
---@raise VALIDATION_ERROR (kind AgentError)
function M.new(opts)
  opts = opts or {}
  headless.check_fields("opts", opts, OPTION_TYPES)
  local cfg = util.merge(M.DEFAULTS, opts)
  if cfg.model ~= nil then headless.check_text("opts.model", cfg.model) end
  headless.check_text("opts.gemini_bin", cfg.gemini_bin)
  headless.check_text("opts.prompt_dir", cfg.prompt_dir)
  headless.check_cwd("opts.cwd", opts.cwd)
  check_choice("opts.output_format", cfg.output_format, M.OUTPUT_FORMATS, "an output format")
  check_choice("opts.approval_mode", cfg.approval_mode, M.APPROVAL_MODES, "an approval mode")
  cfg.inline_limit = math.tointeger(cfg.inline_limit)
  if cfg.inline_limit < 0 then headless.bad("opts.inline_limit", "must not be negative") end

  local agent = { name = "gemini" }

  --- Builds the ProcessSpec for one session.
  ---@param input {session_name: string, prompt: string, model?: string, cwd?: string, env?: table<string, string>,
  ---  extra_args?: string[], output_format?: string}
  ---@return galley.ProcessSpec spec shell form, name "gm-<sanitized session name>", restart "never"
  ---@raise VALIDATION_ERROR (kind AgentError) naming the bad input field
  function agent.to_process_spec(input)
    local pm2 = require("galley.core.pm2")
    local prompt = headless.check_input(input, INPUT_TYPES)
    local format = input.output_format or cfg.output_format
    check_choice("input.output_format", format, M.OUTPUT_FORMATS, "an output format")
    local argv = { cfg.gemini_bin, "--prompt", "", "--skip-trust", "--approval-mode", cfg.approval_mode,
      "--output-format", format }
    local model = input.model or cfg.model
    if model then
      argv[#argv + 1] = "--model"
      argv[#argv + 1] = model
    end
    for _, a in ipairs(input.extra_args or {}) do argv[#argv + 1] = a end
    local env = {}
    for k, v in pairs(input.env or {}) do env[k] = v end
    return headless.process_spec({
      name = pm2.sanitize_name("gm-" .. input.session_name), argv = argv, prompt = prompt,
      cwd = input.cwd or cfg.cwd, env = env, unset = { "GEMINI_API_KEY", "GOOGLE_API_KEY" },
      path = headless.HOME_BIN, inline_limit = cfg.inline_limit, prompt_dir = cfg.prompt_dir,
    })
  end

  return agent
end


--- A credential profile that logs the Gemini CLI in on an instance: `~/.gemini` (0700),
--- `~/.gemini/settings.json` merged deeply with the auth type, and either `~/.gemini/.env` (0600,
--- `GEMINI_API_KEY=...`) for an API key or `~/.gemini/oauth_creds.json` (0600) from a Google login.
---@param o {api_key?: string, oauth_creds?: table, gemini_dir?: string, name?: string}
---@return table profile (galley.credentials)
---@raise VALIDATION_ERROR
function M.profile(o)
  local credentials = require("galley.credentials")
  headless.check_fields("gemini_profile", o, { api_key = "string", oauth_creds = "table", gemini_dir = "string",
    name = "string" })
  if (o.api_key == nil) == (o.oauth_creds == nil) then
    headless.bad("gemini_profile", "give exactly one of api_key and oauth_creds")
  end
  if o.api_key ~= nil then
    headless.check_text("gemini_profile.api_key", o.api_key)
    if o.api_key:find("[%s\"'\\$`]") then
      headless.bad("gemini_profile.api_key", "must not contain spaces or quotes")
    end
  end
  local dir = (o.gemini_dir or "~/.gemini"):gsub("/+$", "")
  local auth_type = o.api_key and "gemini-api-key" or "oauth-personal"
  local files = {
    { path = dir .. "/settings.json", json = { security = { auth = { selectedType = auth_type } } }, merge = "deep",
      mode = "600" },
  }
  if o.api_key then
    files[#files + 1] = { path = dir .. "/.env", content = "GEMINI_API_KEY=" .. o.api_key .. "\n", secret = true,
      mode = "600" }
  else
    files[#files + 1] = { path = dir .. "/oauth_creds.json", json = o.oauth_creds, secret = true, mode = "600" }
  end
  local profile = { name = o.name or "gemini", directories = { { path = dir, mode = "700" } }, files = files }
  credentials.check_profile(profile, "gemini_profile")
  return profile
end


--- Steps that install the Gemini CLI (and PM2) on an image (galley.images): node and npm from apt
--- when missing, `npm install` of @google/gemini-cli (globally, or under ~/.local where /usr is
--- read-only), then `gemini --version`. The CLI needs node 20 or newer.
---@param o? {version?: string, global?: boolean}
---@return table[] steps
function M.install_steps(o)
  o = o or {}
  return headless.install_steps({ package = M.PACKAGE, bin = "gemini", version = o.version, global = o.global })
end

return M
