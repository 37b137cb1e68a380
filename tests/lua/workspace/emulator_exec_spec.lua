-- galley.workspace on the Morph provider against `galley emulate` in argv mode exec (argv
-- arrays: exec_form "auto" carries 1.75 MiB a request).
local W = assert(loadfile(require("support").source_dir .. "/tests/lua/support/workspace_suite.lua", "t", _ENV))()

W.suite("galley emulate (argv mode exec)", W.emulator_setup("exec"))
