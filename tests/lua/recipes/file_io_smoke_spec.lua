-- The file-io-smoke recipe through the galley binary on the local provider (real bubblewrap
-- sandbox) and on the Morph provider against `galley emulate` in both argv modes (HOME=/root in
-- its instances): every check ok, nothing left; usage errors exit 2.
local cjson = require("cjson")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local emulator = require("support.emulator")

local recipes = require("support.recipes")
local mktemp_dir = recipes.mktemp_dir

local state, home

local galley = recipes.runner(function() return state, home end)

describe("recipe file-io-smoke #recipes", function()
  before_each(function()
    state, home = mktemp_dir("fio-state"), mktemp_dir("fio-home")
  end)

  after_each(function()
    galley({ "gc", "--include-kept", "--all-hosts", "--provider", "local" })
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  it("passes every check on the local provider and leaves no instance", function()
    local code, out, err = galley({ "run", "file-io-smoke", "--large-mib", "4" })
    assert.are.equal(0, code, out .. err)
    assert.truthy(out:find("^1%.%.14\n"), out)
    local oks, not_oks = 0, 0
    for line in out:gmatch("[^\n]+") do
      if line:match("^ok %d+ ") then oks = oks + 1 end
      if line:match("^not ok ") then not_oks = not_oks + 1 end
    end
    assert.are.equal(14, oks, out)
    assert.are.equal(0, not_oks, out)
    assert.truthy(out:find("on local, home /root, uid ", 1, true), out)
    assert.truthy(out:find("(4 MiB, sha256 ", 1, true), out)
    assert.truthy(out:find("mode 640 kept", 1, true), out)
    assert.truthy(out:find("old content intact", 1, true), out)
    local gc_code, gc_out = galley({ "--json", "gc", "--dry-run", "--provider", "local" })
    assert.are.equal(0, gc_code)
    assert.are.same({}, cjson.decode(gc_out))
    assert.are.same({}, fs.list(state .. "/instances") or {})
  end)

  for _, mode in ipairs(emulator.ARGV_MODES) do
    it("passes every check on galley emulate --argv-mode " .. mode .. " and leaves no instance", function()
      local em = emulator.start({ boot_delay_ms = 0, argv_mode = mode })
      local ok, code, out, err = pcall(galley, { "run", "file-io-smoke", "--provider", "morph", "--snapshot",
        emulator.SNAPSHOT, "--large-mib", "2" }, { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key })
      local left = ok and em:state().instances
      em:stop()
      assert(ok, code)
      assert.are.equal(0, code, out .. err)
      local oks = 0
      for _ in out:gmatch("\nok %d+ ") do oks = oks + 1 end
      assert.are.equal(14, oks, out)
      assert.falsy(out:find("\nnot ok ", 1, true), out)
      assert.truthy(out:find(" on morph, home /root, uid 0", 1, true), out)
      assert.are.equal(0, #left)
    end)
  end

  it("reports a failed boot as not ok, skips the rest and exits 1", function()
    local code, out = galley({ "run", "file-io-smoke", "--snapshot", "snapshot_does_not_exist" })
    assert.are.equal(1, code)
    assert.truthy(out:find("\nnot ok 1 - boot an instance\n# NOT_FOUND: ", 1, true), out)
    local skips = 0
    for _ in out:gmatch("\nok %d+ %- [^\n]*# SKIP needs '") do skips = skips + 1 end
    assert.are.equal(13, skips, out)
  end)

  it("exits 2 on a negative --large-mib and on an unknown provider, booting nothing", function()
    assert.are.equal(2, (galley({ "run", "file-io-smoke", "--large-mib", "-1" })))
    assert.are.equal(2, (galley({ "run", "file-io-smoke", "--provider", "docker" })))
    assert.are.same({}, fs.list(state .. "/instances") or {})
  end)
end)
