-- galley.workspace on the Morph provider against `galley emulate` in argv mode join (one-line
-- execs).
local W = assert(loadfile(require("support").source_dir .. "/tests/lua/support/workspace_suite.lua", "t", _ENV))()

W.suite("galley emulate (argv mode join)", W.emulator_setup("join"), { logic = true })
