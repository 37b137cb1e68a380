-- gc.lua: stop instances left by finished or expired galley runs.
-- Same as `galley gc`; run it as `galley run gc [--dry-run] [--provider morph|local|all]`.
local args = { ... }
local code = require("galley.commands.gc").run(args)
if code ~= 0 then require("galley.recipe").exit(code) end
