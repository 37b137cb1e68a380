-- Messages a newcomer meets (issue #20, "Messages"): -q, --json, a base URL without /api, a
-- write to a directory, gc without its provider, help emulate, GALLEY_LUA_DIR, `galley run DIR/`;
-- on the local provider and on `galley emulate` where the behaviour involves a provider.
local cjson = require("cjson")
local cli = require("support.cli")
local support = require("support")
local q = support.q

-- Every non-empty line of `text` decoded as JSON (fails the spec on a line that is not).
local function json_lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local ok, v = pcall(cjson.decode, line)
    assert(ok and type(v) == "table", "not a JSON line: " .. line .. "\n--- all ---\n" .. text)
    out[#out + 1] = v
  end
  return out
end

-- A recipe that warns, boots an instance on the default provider, then fails with a code.
local WARN_AND_FAIL = [[
local recipe = require("galley.recipe")
local p = require("galley.providers").default()
recipe.warn("warn-recipe: warning: this is only a warning")
require("galley.log").default().warn("a log warning")
local inst = p.instances.boot(arg[1], { ttl_seconds = 600 })
print(inst.id)
error(require("galley.errors").new("X_FAILED", "the recipe failed on purpose"))
]]

for _, target in ipairs(cli.TARGETS) do
  describe("galley's messages on " .. target .. " #cli", function()
    local t, recipe_path
    setup(function()
      t = cli.start(target)
      recipe_path = support.script(WARN_AND_FAIL)
      -- The spec's own GALLEY_LOG=error would hide the log warning these tests look for.
      t.env.GALLEY_LOG = ""
    end)
    teardown(function()
      os.remove(recipe_path)
      t:stop()
    end)

    it("-q silences warnings that are not errors and keeps the error", function()
      local code, out, err = t:galley("run " .. q(recipe_path) .. " " .. q(t.snapshot))
      assert.are.equal(1, code, err)
      assert.truthy(err:find("this is only a warning", 1, true), err)
      assert.truthy(err:find("a log warning", 1, true), err)
      assert.truthy(err:find("stopped instance " .. out:match("%S+"), 1, true), err)
      for _, args in ipairs({ "-q run ", "run -q " }) do
        code, out, err = t:galley(args .. q(recipe_path) .. " " .. q(t.snapshot))
        assert.are.equal(1, code, err)
        assert.truthy(out:match("%S+"), "the recipe's data still reaches stdout")
        assert.is_nil(err:find("warning", 1, true), err)
        assert.is_nil(err:find("stopped instance", 1, true), err)
        assert.truthy(err:find("X_FAILED", 1, true), err)
      end
      -- A recipe's own warning (boot-and-run: --ttl shorter than --timeout) too.
      code, _, err = t:galley("-q run boot-and-run --ttl 1m --timeout 10m --prompt ''")
      assert.are.equal(2, code)
      assert.is_nil(err:find("shorter than", 1, true), err)
    end)

    it("--json run writes JSON lines on stderr: warnings, log records, notices and the error", function()
      local code, out, err = t:galley("--json run " .. q(recipe_path) .. " " .. q(t.snapshot))
      assert.are.equal(1, code, err)
      local id = out:match("^(%S+)\n$")
      assert.truthy(id, out)
      local lines = json_lines(err)
      local by = {}
      for _, l in ipairs(lines) do
        assert.is_string(l.level)
        assert.is_string(l.ts)
        by[l.code or l.event or l.msg] = l
      end
      assert.are.equal("warn", by["warn-recipe: warning: this is only a warning"].level)
      assert.are.equal("warn", by["a log warning"].level)
      assert.are.equal(id, by.stopped.id)
      assert.are.equal("error", by.X_FAILED.level)
      assert.are.equal("the recipe failed on purpose", by.X_FAILED.msg)
      -- A recipe that cannot be found is a JSON line too.
      code, _, err = t:galley("--json run no-such-recipe-here")
      assert.are.equal(2, code)
      assert.are.equal("RECIPE_NOT_FOUND", json_lines(err)[1].code)
    end)

    it("says the path is a directory when write_file targets one", function()
      local p = t:provider()
      local id = t:boot()
      finally(function() pcall(p.instances.stop, id) end)
      for _, path in ipairs({ "/tmp", "/tmp/", "~" }) do
        local ok, err = pcall(p.files.write_file, id, path, "data")
        assert.is_false(ok)
        assert.are.equal("FILE_IO_ERROR", err.code, tostring(err))
        assert.are.equal("is_directory", err.details.reason, tostring(err))
        assert.is_nil(tostring(err):find("galley-tmp", 1, true), tostring(err))
      end
      assert.is_true(p.files.is_directory(id, "/tmp"))
      -- A file inside it is fine.
      assert.is_true(p.files.write_file(id, "/tmp/x.txt", "data"))
      assert.are.equal("data", p.files.read_file(id, "/tmp/x.txt"))
    end)

    it("says a recipe path that is a directory is one, and names a recipe in it", function()
      local dir = support.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. q(dir) .. " && touch " .. q(dir .. "/main.lua")))
      finally(function() os.execute("rm -rf " .. q(dir)) end)
      local code, _, err = t:galley("--json run " .. q(dir .. "/"))
      assert.are.equal(2, code)
      local e = json_lines(err)[1]
      assert.are.equal("RECIPE_NOT_FOUND", e.code)
      assert.truthy(e.hint:find(dir .. "/main.lua", 1, true), e.hint)
    end)
  end)
end

describe("the Morph provider with MORPH_BASE_URL without /api #cli", function()
  local t
  setup(function() t = cli.start("emulator") end)
  teardown(function() t:stop() end)

  it("names the base URL and suggests /api", function()
    local p = require("galley.providers.morph").new({ api_key = t.em.api_key, base_url = t.em.root_url })
    for _, call in ipairs({ function() return p.instances.list() end,
      function() return p.instances.boot(t.snapshot) end }) do
      local ok, err = pcall(call)
      assert.is_false(ok)
      assert.are.equal("NOT_FOUND", err.code, tostring(err))
      assert.are.equal(t.em.root_url, err.base_url)
      assert.are.equal(t.em.base_url, err.suggested_base_url)
    end
    -- The CLI says so too.
    local code, _, err = support.galley("ls", nil, { HOME = t.env.HOME, GALLEY_STATE_DIR = t.env.GALLEY_STATE_DIR,
      MORPH_API_KEY = t.em.api_key, MORPH_BASE_URL = t.em.root_url })
    assert.are.equal(1, code)
    assert.truthy(err:find("MORPH_BASE_URL=" .. t.em.base_url, 1, true), err)
    -- With --json the same as a JSON line.
    code, _, err = support.galley("--json ls", nil, { HOME = t.env.HOME, GALLEY_STATE_DIR = t.env.GALLEY_STATE_DIR,
      MORPH_API_KEY = t.em.api_key, MORPH_BASE_URL = t.em.root_url })
    assert.are.equal(1, code)
    local line = json_lines(err)[1]
    assert.are.same({ "NOT_FOUND", t.em.root_url, t.em.base_url }, { line.code, line.base_url, line.suggested_base_url })
    -- A base URL where /api is not served either: no suggestion, but the base URL is named.
    local p2 = require("galley.providers.morph").new({ api_key = t.em.api_key, base_url = t.em.base_url .. "/v9" })
    local ok, e2 = pcall(p2.instances.list)
    assert.is_false(ok)
    assert.are.equal("NOT_FOUND", e2.code)
    assert.are.equal(t.em.base_url .. "/v9", e2.base_url)
    assert.is_nil(e2.suggested_base_url)
    -- The right base URL: a missing instance is a plain NOT_FOUND, no base URL talk.
    local p3 = require("galley.providers.morph").new({ api_key = t.em.api_key, base_url = t.em.base_url })
    ok, e2 = pcall(p3.instances.get, "morphvm_nosuch")
    assert.is_false(ok)
    assert.are.equal("NOT_FOUND", e2.code)
    assert.is_nil(e2.suggested_base_url)
  end)
end)

describe("galley gc without its provider #cli", function()
  local t
  setup(function() t = cli.start("local") end)
  teardown(function() t:stop() end)

  it("says morph was unavailable or unreachable and exits 1, never 'nothing to collect'", function()
    local cases = {
      { MORPH_API_KEY = "", MORPH_BASE_URL = "" },
      { MORPH_API_KEY = "morph_somekey_for_the_spec", MORPH_BASE_URL = "http://127.0.0.1:1/api" },
    }
    for _, env in ipairs(cases) do
      env.HOME, env.GALLEY_STATE_DIR = t.env.HOME, t.env.GALLEY_STATE_DIR
      local code, out, err = support.galley("gc --provider morph", nil, env)
      assert.are.equal(1, code, err)
      assert.are.equal("", out)
      assert.truthy(err:find("could not be swept", 1, true), err)
      assert.is_nil(err:find("nothing to collect", 1, true), err)
    end
  end)
end)

describe("galley's own help and startup messages #cli", function()
  it("lists every fault action in galley help emulate", function()
    local code, out = support.galley("help emulate")
    assert.are.equal(0, code)
    local actions = out:match("actions: ([^;]+);")
    actions = actions and actions:gsub("%s+", " ")
    assert.truthy(actions, out)
    for name in pairs(require("galley.emulator.faults").actions) do
      assert.truthy((" " .. actions .. " "):find(" " .. name .. " ", 1, true), name .. " missing from: " .. actions)
    end
  end)

  it("names GALLEY_LUA_DIR (not --lua-dir) when that directory is unusable", function()
    local code, _, err = support.galley("version", nil, { GALLEY_LUA_DIR = "/nonexistent/galley-lua" })
    assert.are.equal(2, code)
    assert.truthy(err:find("GALLEY_LUA_DIR '/nonexistent/galley-lua'", 1, true), err)
    assert.is_nil(err:find("--lua-dir", 1, true), err)
    code, _, err = support.galley("--lua-dir /etc/hostname version")
    assert.are.equal(2, code)
    assert.truthy(err:find("--lua-dir '/etc/hostname'", 1, true), err)
  end)
end)
