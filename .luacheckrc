-- luacheck configuration (Lua 5.4).
std = "lua54"
max_line_length = 120
codes = true
exclude_files = { "build*/**" }
-- Specs hold long literal strings (hostile inputs, expected output): allow longer lines there.
files["tests/**"] = { std = "+busted", max_line_length = 140 }
files["recipes/**"] = { globals = {}, read_globals = { "declare" } }
files["examples/**"] = { read_globals = { "declare" } }
