-- hello.lua: the smallest recipe. Run it with `galley run examples/hello.lua [name]`.
local runtime = require("galley.core.runtime")
local who = ... or "world"
print(("hello, %s, from galley %s"):format(who, runtime.versions().galley))
