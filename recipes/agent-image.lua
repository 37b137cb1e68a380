-- agent-image.lua: build (or find) a snapshot with node, PM2 and an agent CLI installed, and print
-- its id. Each install step is cached as a snapshot keyed by a digest (provider.snapshots.build),
-- so a second run only looks the steps up and prints the same id.
--
--   galley run agent-image --agent claude                 # local sandbox (or morph with MORPH_API_KEY)
--   galley run agent-image --agent codex --base snapshot_abc
--   galley run boot-and-run --image "$(galley run agent-image -q --agent claude)" --agent claude
--
-- On Debian/Ubuntu images node and npm come from apt when missing; the CLI is installed with npm
-- globally, or under ~/.local where the system directories are read-only (local sandboxes) —
-- the agents put ~/.local/bin on their PATH.
local recipe = require("galley.recipe")
local providers = require("galley.providers")
local images = require("galley.images")
local json = require("galley.json")

local opts = recipe.options({
  name = "agent-image",
  summary = "Build (or find) a snapshot with node, PM2 and an agent CLI; print its id.",
  options = {
    { "provider", choices = providers.names, help = "where to build (default: morph with MORPH_API_KEY, else local)" },
    { "agent", choices = { "claude", "codex", "gemini" }, default = "claude", help = "which CLI to install" },
    { "base", metavar = "ID", env = "GALLEY_SNAPSHOT",
      help = "the snapshot to start from (default: $TESTING_SNAPSHOT_ID on morph, the empty one on local)" },
    { "version", metavar = "VERSION", help = "the npm version of the agent's package (default: the newest that fits)" },
    { "salt", metavar = "TEXT", help = "mixed into every step's digest (a new salt builds afresh)" },
    { "rebuild-from", type = "integer", help = "ignore cached snapshots from step N on" },
    { "steps", metavar = "FILE", help = "a Lua file returning the steps to build instead of the agent's install "
      .. "steps (CommandSpecs, {files = ...}, {command = ..., key = ...}: provider.snapshots.build's)" },
    { "json", type = "flag", help = "stdout: one JSON object (id, steps, cached, built) instead of the id" },
  },
  epilog = [[
environment: MORPH_API_KEY (and MORPH_BASE_URL) for morph; TESTING_SNAPSHOT_ID, GALLEY_SNAPSHOT.
exit status: 0 with the image id on stdout; 1 when a step failed (stderr names it).]],
}, arg)

if opts.rebuild_from and opts.rebuild_from < 1 then recipe.usage_error("--rebuild-from must be 1 or more") end

local provider, why = providers.default(opts.provider)
recipe.say(("galley: %s; agent %s"):format(why, opts.agent))
local base = opts.base
if not base then
  if provider.name == "morph" then
    base = os.getenv("TESTING_SNAPSHOT_ID")
    if not base or base == "" then recipe.usage_error("on morph, give the base snapshot: --base ID") end
  else
    base = provider.DEFAULT_SNAPSHOT
  end
end

local snap
if opts.steps then
  -- Steps of the caller's own (a custom image, or small steps in a spec): a Lua file returning them.
  local chunk, lerr = loadfile(opts.steps, "t", setmetatable({}, { __index = _G }))
  if not chunk then recipe.usage_error(("--steps: %s"):format(lerr)) end
  local steps = chunk()
  if type(steps) ~= "table" then recipe.usage_error(("--steps: %s must return a list of steps"):format(opts.steps)) end
  snap = provider.snapshots.build(base, steps, { salt = opts.salt, rebuild_from = opts.rebuild_from, progress = true,
    name = "agent-" .. opts.agent })
else
  snap = images.agent_image(provider, opts.agent, base, { version = opts.version, salt = opts.salt,
    rebuild_from = opts.rebuild_from, progress = true })
end
recipe.say(("galley: image %s (%d steps cached, %d built)"):format(snap.id, snap.build.cached, snap.build.built))
if opts.json then
  io.stdout:write(json.encode({ id = snap.id, agent = opts.agent, base = base, cached = snap.build.cached,
    built = snap.build.built, steps = snap.build.steps }), "\n")
else
  io.stdout:write(snap.id, "\n")
end
