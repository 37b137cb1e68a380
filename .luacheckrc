-- luacheck configuration (Lua 5.4).
std = "lua54"
max_line_length = 120
codes = true
exclude_files = { "build*/**" }
files["tests/**"] = { std = "+busted" }
files["recipes/**"] = { globals = {}, read_globals = { "declare" } }
files["examples/**"] = { read_globals = { "declare" } }
