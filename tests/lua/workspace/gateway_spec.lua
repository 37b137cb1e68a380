-- galley.workspace on the Morph provider against `galley emulate` (argv mode join) through the
-- emulator's SSH gateway.
local W = assert(loadfile(require("support").source_dir .. "/tests/lua/support/workspace_suite.lua", "t", _ENV))()

W.suite("galley emulate (argv mode join) through its SSH gateway", W.gateway_setup)
