-- galley.workspace on the local provider without its byte channel: everything through exec.
local W = assert(loadfile(require("support").source_dir .. "/tests/lua/support/workspace_suite.lua", "t", _ENV))()

W.suite("the local provider without a byte channel (everything through exec)", W.local_setup(false))
