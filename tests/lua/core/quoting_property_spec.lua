-- Property: every builder that turns strings into shell text hands them back byte-identical when
-- real bash runs the text. 10,000 random strings (quotes, $, backticks, backslashes, newlines,
-- tabs, UTF-8, invalid bytes, leading dashes, ~, spaces; never NUL) go through shell.quote,
-- shell.join, shell.plan (script form: cwd and env values; argv form with cwd/env) and the PM2
-- payload (run as `bash -lc PAYLOAD` directly, not via pm2); a one-element exec line (shell.join
-- of an argv, as the Morph provider sends it) under sh -c (dash), bash -c and bash -lc.
--
-- Reproduce a failure with GALLEY_QUOTING_SEED=<seed printed below>; GALLEY_QUOTING_COUNT changes
-- how many strings are drawn. Failures print the offending string in hex.
local shell = require("galley.core.shell")
local pm2 = require("galley.core.pm2")
local proc = require("galley.core.proc")

local SEED = tonumber(os.getenv("GALLEY_QUOTING_SEED") or "") or 20261121
local COUNT = tonumber(os.getenv("GALLEY_QUOTING_COUNT") or "") or 10000
local CHUNK = 50   -- strings per generated script / payload

local PIECES = {
  "'", "'", "\"", "$", "`", "\\", "\n", "\t", " ", " ", "~", "-", "!", "*", "?", "[", "]", "{",
  "}", "(", ")", ";", "&", "|", "<", ">", "#", "%", "=", "^", ",", ":", "@", "+", "/", ".", "\r",
  "\1", "\127", "\27", "$(", "${", "'\\''", "\\'", "$'", "!!", "-- ", "\n\n", "$HOME", "`id`",
  "\195\169", "\230\151\165\230\156\172", "\240\159\152\128", "\226\128\168",    -- é 日本 😀 U+2028
  "\128", "\255", "\195", "\237\160\128", "\192\175", "\254\255",                -- invalid UTF-8
}
local ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

local function random_string()
  local r = math.random()
  if r < 0.03 then return "" end
  local parts = {}
  if r < 0.13 then parts[1] = "-" elseif r < 0.20 then parts[1] = "--" elseif r < 0.30 then parts[1] = "~" end
  for _ = 1, math.random(0, 16) do
    if math.random() < 0.35 then
      local i = math.random(#ALNUM)
      parts[#parts + 1] = ALNUM:sub(i, i)
    else
      parts[#parts + 1] = PIECES[math.random(#PIECES)]
    end
  end
  return table.concat(parts)
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function spit(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function split_nul(s)
  local out, pos = {}, 1
  while pos <= #s do
    local z = s:find("\0", pos, true)
    if not z then
      out[#out + 1] = s:sub(pos) .. "<missing NUL>"
      break
    end
    out[#out + 1] = s:sub(pos, z - 1)
    pos = z + 1
  end
  return out
end

-- Runs a driver script with /bin/bash (HOME=root so `bash -l` reads no personal profile and a
-- bare ~ means root); returns exit code and stdout.
local root
local function bash(argv)
  local r = assert(proc.run { argv = argv, cwd = root, env = { HOME = root, LC_ALL = "C.UTF-8" },
    timeout_ms = 300000 })
  return r.exit_code, r.stdout, r.stderr
end

local function run_driver(text)
  local path = root .. "/driver.sh"
  spit(path, text)
  return bash { "/bin/bash", path }
end

-- Compares what bash printed with what went in; names the builder and the string on failure.
local function expect_same(builder, expected, stdout)
  local got = split_nul(stdout)
  for i = 1, math.max(#expected, #got) do
    if expected[i] ~= got[i] then
      error(("%s: seed %d, item %d differs\n  want hex %s\n  got  hex %s"):format(
        builder, SEED, i, expected[i] and hex(expected[i]) or "(nothing)", got[i] and hex(got[i]) or "(nothing)"), 0)
    end
  end
end

-- A directory name made from s: no '/', not "." or "..", at most 200 bytes.
local function dir_name(s)
  local d = s:gsub("/", "_"):sub(1, 200)
  if d == "" or d == "." or d == ".." then d = "d" .. d end
  return d
end

local function chunks(list, size)
  local out = {}
  for i = 1, #list, size do
    out[#out + 1] = table.move(list, i, math.min(i + size - 1, #list), 1, {})
  end
  return out
end

-- Writes each text to its own file; returns a driver that runs them one by one with /bin/bash,
-- the way shell.plan's callers do.
local function file_runner(texts, tag)
  local lines = {}
  for i, text in ipairs(texts) do
    local path = ("%s-%d.sh"):format(tag, i)
    spit(root .. "/" .. path, text)
    lines[#lines + 1] = "/bin/bash " .. path
  end
  return table.concat(lines, "\n") .. "\n"
end

describe("quoting through real bash #property", function()
  local strings, dirs

  setup(function()
    root = assert(proc.run { argv = { "mktemp", "-d", "/tmp/galley-quoting.XXXXXX" } }).stdout:gsub("\n$", "")
    math.randomseed(SEED)
    strings, dirs = {}, {}
    for i = 1, COUNT do strings[i] = random_string() end
    for i = 1, COUNT do dirs[i] = dir_name(strings[(i * 7919) % COUNT + 1]) end
    print(("# quoting property: seed %d, %d strings (GALLEY_QUOTING_SEED to reproduce)"):format(SEED, COUNT))
    -- Directories for the cwd cases, created from an argv (no quoting of ours involved).
    local mkdir = { "mkdir", "-p", "--", root .. "/w" }
    for i, d in ipairs(dirs) do mkdir[i + 4] = root .. "/w/" .. d end
    assert.are.equal(0, (bash(mkdir)))
  end)

  teardown(function()
    if root and root:match("^/tmp/galley%-quoting%.") then proc.run { argv = { "rm", "-rf", root } } end
  end)

  it("shell.quote and shell.join give back every string", function()
    local driver = {}
    for _, chunk in ipairs(chunks(strings, 1000)) do
      local words = {}
      for i, s in ipairs(chunk) do words[i] = shell.quote(s) end
      driver[#driver + 1] = "printf '%s\\0' " .. table.concat(words, " ")
      driver[#driver + 1] = "printf '%s\\0' " .. shell.join(chunk)
    end
    local expected = {}
    for _, chunk in ipairs(chunks(strings, 1000)) do
      for _ = 1, 2 do table.move(chunk, 1, #chunk, #expected + 1, expected) end
    end
    local code, out = run_driver(table.concat(driver, "\n") .. "\n")
    assert.are.equal(0, code)
    expect_same("shell.quote/join", expected, out)
  end)

  it("a one-element exec line (shell.join of an argv) means the same under sh -c, bash -c and bash -lc", function()
    -- What the Morph provider sends: the exact argv as ONE line, run by whatever shell the
    -- service uses (dash as /bin/sh here, bash, a login bash).
    local expected, lines = {}, {}
    for _, chunk in ipairs(chunks(strings, 500)) do
      table.move(chunk, 1, #chunk, #expected + 1, expected)
      local argv = { "/usr/bin/printf", "%s\\0" }
      table.move(chunk, 1, #chunk, 3, argv)
      lines[#lines + 1] = shell.join(argv)
      assert.is_true(#lines[#lines] < 128 * 1024)
    end
    for _, sh in ipairs({ { "/bin/sh", "-c" }, { "/bin/bash", "-c" }, { "/bin/bash", "-lc" } }) do
      local out = {}
      for _, line in ipairs(lines) do
        local code, stdout, stderr = bash({ sh[1], sh[2], line })
        assert.are.equal(0, code, stderr)
        out[#out + 1] = stdout
      end
      expect_same(table.concat(sh, " ") .. " <shell.join line>", expected, table.concat(out))
    end
  end)

  it("shell.plan scripts keep env values, args and the cwd", function()
    local shell_scripts, argv_scripts, expected = {}, {}, {}
    for c, chunk in ipairs(chunks(strings, CHUNK)) do
      local env, refs = {}, { '"$PWD"' }
      for i, s in ipairs(chunk) do
        env["V" .. i] = s
        refs[#refs + 1] = '"$V' .. i .. '"'
      end
      local dir = dirs[c]
      local plan = shell.plan { kind = "shell", script = "printf '%s\\0' " .. table.concat(refs, " "),
        cwd = root .. "/w/" .. dir, env = env }
      shell_scripts[c] = assert(plan.script)
      expected[#expected + 1] = root .. "/w/" .. dir
      table.move(chunk, 1, #chunk, #expected + 1, expected)
    end
    for c, chunk in ipairs(chunks(strings, CHUNK)) do
      local args = { "%s\\0" }
      table.move(chunk, 1, #chunk, 2, args)
      local plan = shell.plan({ kind = "argv", command = "printf", args = args, cwd = "~/w/" .. dirs[c],
        env = { X = chunk[1] } }, { home = root })
      argv_scripts[c] = assert(plan.script)
      table.move(chunk, 1, #chunk, #expected + 1, expected)
    end
    local code, out = run_driver(file_runner(shell_scripts, "plan-shell") .. file_runner(argv_scripts, "plan-argv"))
    assert.are.equal(0, code)
    expect_same("shell.plan", expected, out)
  end)

  it("shell.plan cds into every directory name, with and without a home", function()
    local parts, expected = {}, {}
    for i, dir in ipairs(dirs) do
      local cwd, opts = root .. "/w/" .. dir, nil
      if i % 3 == 1 then cwd, opts = "~/w/" .. dir, { home = root }   -- substituted by us
      elseif i % 3 == 2 then cwd = "~/w/" .. dir end                   -- expanded by bash ($HOME)
      local plan = shell.plan({ kind = "shell", script = "printf '%s\\0' \"$PWD\"", cwd = cwd }, opts)
      parts[#parts + 1] = plan.script   -- one shell, one cd after another: every cd is absolute
      expected[i] = root .. "/w/" .. dir
    end
    local code, out = run_driver(table.concat(parts, "\n") .. "\n")
    assert.are.equal(0, code)
    expect_same("shell.plan cwd", expected, out)
  end)

  it("PM2 payloads give back args, env values and the cwd under bash -lc", function()
    local payloads, expected = {}, {}
    for c, chunk in ipairs(chunks(strings, CHUNK)) do
      local args = { "%s\\0" }
      table.move(chunk, 1, #chunk, 2, args)
      local argv = assert(pm2.start_argv({ command = { kind = "argv", command = "printf", args = args,
        cwd = root .. "/w/" .. dirs[c], env = { X = chunk[#chunk] } } }))
      assert.are.same({ "--", "-lc" }, { argv[#argv - 2], argv[#argv - 1] })
      payloads[#payloads + 1] = argv[#argv]
      table.move(chunk, 1, #chunk, #expected + 1, expected)
    end
    for c, chunk in ipairs(chunks(strings, CHUNK)) do
      local env, refs = {}, { '"$PWD"' }
      for i, s in ipairs(chunk) do
        env["V" .. i] = s
        refs[#refs + 1] = '"$V' .. i .. '"'
      end
      local argv = assert(pm2.start_argv({ command = { kind = "shell", cwd = "~/w/" .. dirs[c], env = env,
        script = "printf '%s\\0' " .. table.concat(refs, " ") } }, { home = root }))
      payloads[#payloads + 1] = argv[#argv]
      expected[#expected + 1] = root .. "/w/" .. dirs[c]
      table.move(chunk, 1, #chunk, #expected + 1, expected)
    end
    -- Each payload is one argv element of `bash -lc`, as pm2 passes it: nothing in between.
    local outs = {}
    for i, payload in ipairs(payloads) do
      local code, out, err = bash { "bash", "-lc", payload }
      assert.are.equal(0, code, err)
      outs[i] = out
    end
    expect_same("pm2 payload", expected, table.concat(outs))
  end)
end)
