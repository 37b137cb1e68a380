-- A newcomer's command line: the shipped recipe list, did-you-mean, options after the command,
-- run-level --keep/--ttl, `galley run -`, durations, completion, honest errors, the emulator's
-- ready-to-paste line; on the local provider and on `galley emulate` where a provider is involved.
local cjson = require("cjson")
local cli = require("support.cli")
local support = require("support")
local util = require("galley.util")
local q = support.q

describe("galley's command line for a newcomer #cli", function()
  local t
  setup(function() t = cli.start("local") end)
  teardown(function() if t then t:stop() end end)

  it("lists every shipped recipe with one line for `galley run` and `galley help run`", function()
    local code, out, err = t:galley("run")
    assert.are.equal(2, code)
    assert.are.equal("", out)
    local code2, help = t:galley("help run")
    assert.are.equal(0, code2)
    for _, name in ipairs({ "boot-and-run", "claude-login", "e2e-smoke", "file-io-smoke", "gc", "pm2-recon" }) do
      assert.truthy(err:find("\n  " .. name .. " ", 1, true), err)
      assert.truthy(help:find("\n  " .. name .. " ", 1, true), help)
    end
    assert.truthy(err:find("Boot an instance", 1, true), err)
  end)

  it("suggests the command, the recipe and the recipe option meant", function()
    local code, _, err = t:galley("rn x.lua")
    assert.are.equal(2, code)
    assert.truthy(err:find("did you mean run?", 1, true), err)
    code, _, err = t:galley("run boot-and-rn")
    assert.are.equal(2, code)
    assert.truthy(err:find("did you mean boot-and-run?", 1, true), err)
    code, _, err = t:galley("run boot-and-run --promt hi")
    assert.are.equal(2, code)
    assert.truthy(err:find("did you mean --prompt?", 1, true), err)
    -- an embedded recipe's own line is not shown without -v, and is with it (-v after `run`)
    assert.falsy(err:find("boot-and-run.lua:", 1, true), err)
    code, _, err = t:galley("run -v boot-and-run --promt hi")
    assert.are.equal(2, code)
    assert.truthy(err:find("boot-and-run.lua:", 1, true), err)
  end)

  it("takes global options after `run` and reads a recipe from stdin with `run -`", function()
    local code, out, err = t:galley("run -q - a b", 'print("stdin recipe", ...)\n')
    assert.are.equal(0, code, err)
    assert.are.equal("stdin recipe\ta\tb\n", out)
    local code2, _, err2 = t:galley("run -v -", 'error("boom")\n')
    assert.are.equal(1, code2)
    assert.truthy(err2:find("stack traceback", 1, true), err2)
  end)

  it("prints error({code = 'X'}) as X", function()
    local code, _, err = t:galley("run -", 'error({ code = "MY_CODE" })\n')
    assert.are.equal(1, code)
    assert.are.equal("galley: MY_CODE\n", err)
  end)

  it("gives --keep and --ttl to every recipe and prints the galley stop command", function()
    local path = support.script('local p = require("galley.providers.local").new()\n'
      .. 'require("galley.recipe").options({ name = "k" }, arg)\n'
      .. 'local inst = p.instances.boot()\nprint(inst.id, inst.ttl.seconds)\n')
    local code, out, err = t:galley("run " .. q(path) .. " --keep --ttl 10m")
    assert.are.equal(0, code, err)
    local id, ttl = out:match("^(%S+)\t(%d+)\n$")
    assert.are.equal("600", ttl)
    assert.truthy(err:find("galley stop " .. id, 1, true), err)
    assert.are.equal(0, (t:galley("stop " .. q(id))))
    -- before the recipe, for a recipe that parses no options at all
    path = support.script('local inst = require("galley.providers.local").new().instances.boot()\n'
      .. 'print(inst.id, inst.ttl.seconds)\n')
    code, out, err = t:galley("run --keep --ttl 2h " .. q(path))
    assert.are.equal(0, code, err)
    id, ttl = out:match("^(%S+)\t(%d+)\n$")
    assert.are.equal("7200", ttl)
    assert.truthy(err:find("galley stop " .. id, 1, true), err)
    assert.are.equal(0, (t:galley("stop " .. q(id))))
    assert.are.equal(2, (t:galley("run --ttl 5y " .. q(path))))
  end)

  it("parses durations one way: 90, 90s, 10m, 2h", function()
    assert.are.equal(90, util.parse_duration("90"))
    assert.are.equal(90, util.parse_duration("90s"))
    assert.are.equal(600, util.parse_duration("10m"))
    assert.are.equal(7200, util.parse_duration("2h"))
    for _, bad in ipairs({ "", "1.5h", "-1", "10 m", "1e3", "0x10", "h" }) do
      assert.is_nil(util.parse_duration(bad), bad)
    end
  end)

  it("warns when MORPH_BASE_URL is set without a key instead of silently using local", function()
    local env = {}
    for k, v in pairs(t.env) do env[k] = v end
    env.MORPH_BASE_URL = "http://127.0.0.1:9/api"
    local code, _, err = support.galley("run boot-and-run --prompt ''", nil, env)
    assert.are.equal(2, code)
    assert.truthy(err:find("MORPH_BASE_URL is set", 1, true), err)
  end)

  it("warns when --ttl is shorter than --timeout", function()
    local code, _, err = t:galley("run boot-and-run --ttl 1m --timeout 10m --prompt ''")
    assert.are.equal(2, code)
    assert.truthy(err:find("--ttl 60s is shorter than --timeout 600s", 1, true), err)
  end)

  it("ends a failed boot-and-run --json with a result event (ok false, code)", function()
    local code, out = t:galley("--json run boot-and-run --provider local --snapshot no_such_snapshot")
    assert.are.equal(1, code)
    local last = cjson.decode(out:match("([^\n]+)\n$"))
    assert.are.equal("result", last.event)
    assert.are.equal(false, last.ok)
    assert.are.equal("NOT_FOUND", last.code)
  end)

  it("completes commands, options and shipped recipe names in bash, zsh and fish", function()
    local code, script = t:galley("completion bash")
    assert.are.equal(0, code)
    local file = support.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(script)
    f:close()
    local p = io.popen("bash -c " .. q("source " .. q(file) .. "\n" .. [[
COMP_WORDS=(galley run boot); COMP_CWORD=2; _galley; echo "run: ${COMPREPLY[*]}"
COMP_WORDS=(galley l); COMP_CWORD=1; _galley; echo "cmd: ${COMPREPLY[*]}"
COMP_WORDS=(galley exec --st); COMP_CWORD=2; _galley; echo "opt: ${COMPREPLY[*]}"]]))
    local out = p:read("a")
    p:close()
    os.remove(file)
    assert.truthy(out:find("run: boot-and-run\n", 1, true), out)
    assert.truthy(out:find("cmd: ls logs\n", 1, true), out)
    assert.truthy(out:find("opt: --stream\n", 1, true), out)
    local _, zsh = t:galley("completion zsh")
    assert.matches("^#compdef galley", zsh)
    local _, fish = t:galley("completion fish")
    assert.truthy(fish:find("complete -c galley", 1, true))
    assert.are.equal(2, (t:galley("completion tcsh")))
  end)
end)

describe("galley emulate, plug and play #cli", function()
  local em
  setup(function() em = require("support.emulator").start({ boot_delay_ms = 20 }) end)
  teardown(function() if em then em:stop() end end)

  it("prints a ready-to-paste export line and its ready snapshot", function()
    -- read the emulator's stderr on the loop (a blocking sleep would not let it arrive)
    local err = em:drain()
    for _ = 1, 100 do
      if err:find("ready snapshot", 1, true) then break end
      local kind, data = em.handle:read(100)
      if kind == "stderr" then em.stderr = em.stderr .. data end
      err = em.stderr
    end
    assert.truthy(err:find("export MORPH_BASE_URL=" .. em.base_url .. " MORPH_API_KEY=", 1, true), err)
    assert.truthy(err:find("ready snapshot: snapshot_galleydev", 1, true), err)
    -- with the gateway, the variables the Morph provider reads to use it
    assert.is_number(em.ssh_port)
    assert.truthy(err:find(" MORPH_SSH_HOSTNAME=127.0.0.1 MORPH_SSH_PORT=" .. em.ssh_port .. "\n", 1, true), err)
    -- the key came from the environment: it is referred to, never printed
    assert.falsy(err:find(em.api_key, 1, true), err)
  end)

  it("names the base URL when the key is wrong, without an attempt count", function()
    local code, _, err = support.galley("ls --provider morph", nil,
      { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = "morph_wrong_key", GALLEY_LOG = "error" })
    assert.are.equal(1, code)
    assert.truthy(err:find("AUTHENTICATION_ERROR", 1, true), err)
    assert.truthy(err:find("base URL: " .. em.base_url, 1, true), err)
    assert.falsy(err:find("attempt: 1/", 1, true), err)
  end)
end)
