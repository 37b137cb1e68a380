-- The pm2-recon recipe through the galley binary: the JSON report on the local provider has the
-- findings the reference documents for pm2 7 (claude-and-pm2.md §4-§5), and the text report
-- on `galley emulate` (the Morph provider, both argv modes) says the same in short lines.
local cjson = require("cjson")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local emulator = require("support.emulator")

local recipes = require("support.recipes")
local mktemp_dir = recipes.mktemp_dir

local state, home

local galley = recipes.runner(function() return state, home end)

describe("recipe pm2-recon #recipes", function()
  before_each(function()
    state, home = mktemp_dir("recon-state"), mktemp_dir("recon-home")
  end)

  after_each(function()
    galley({ "gc", "--include-kept", "--all-hosts", "--provider", "local" })
    proc.run({ argv = { "rm", "-rf", "--", state, home }, timeout_ms = 60000 })
  end)

  it("reports the expected findings as JSON on the local provider", function()
    local code, out, err = galley({ "run", "pm2-recon", "--json" })
    assert.are.equal(0, code, err)
    local r = cjson.decode(out)
    local f = r.findings
    assert.are.equal("local", r.provider)
    assert.matches("^%d+%.%d+%.%d+$", r.pm2_version)
    -- cd and export inside the payload work; without a cd the app starts in the caller's cwd.
    assert.is_true(f.payload.cd_and_export_work)
    assert.are.equal("with  spaces", f.payload.var)
    assert.is_true(f.payload.no_cd_starts_in_caller_cwd)
    -- The caller's environment is copied and shown by jlist, unless pm2 start runs under env -i.
    assert.is_true(f.env.copied_from_caller)
    assert.is_true(f.env.shown_in_jlist)
    assert.is_false(f.env.env_i_start_copies)
    -- jlist: banner and [PM2] lines before the JSON on a fresh home and after a kill; pure with the daemon up.
    assert.is_false(f.jlist_fresh.pure_json)
    assert.is_true(f.jlist_fresh.banner)
    assert.is_true(f.jlist_fresh.parses_last_bracket_line)
    assert.is_false(f.jlist_after_kill.pure_json)
    assert.is_true(f.jlist_after_kill.parses_last_bracket_line)
    assert.is_true(f.jlist_running.pure_json)
    assert.is_false(f.jlist_running.trailing_newline)
    assert.are.equal(127, f.jlist_without_pm2.exit_code)
    -- logs --nostream: [TAILING] first, two file headers, names cut to 10 characters; --raw is bare.
    assert.is_true(f.logs.tailing_first)
    assert.are.equal(2, f.logs.file_headers)
    assert.is_true(f.logs.prefix_truncated)
    assert.matches("^%d+|recon%-a%-? *| $", f.logs.prefix_example)
    assert.is_true(f.logs.raw_out_lines_bare)
    assert.is_true(f.logs.raw_keeps_tailing_and_headers)
    assert.are.equal("stderr", f.logs.raw_err_lines_on)
    assert.are.equal(0, f.logs.unknown_name_exit_code)
    -- Duplicate names are allowed; delete removes them all.
    assert.is_true(f.names.duplicates_allowed)
    assert.are.equal(2, f.names.same_name_processes)
    assert.are.equal(0, f.names.left_after_delete)
    -- stdin is an open pipe/socket that never reaches EOF.
    assert.is_false(f.stdin.tty)
    assert.is_false(f.stdin.eof)
    -- --no-autorestart records the exit.
    assert.are.equal("stopped", f.exit.status)
    assert.are.equal(3, f.exit.exit_code)
    assert.are.same({}, fs.list(state .. "/instances") or {})
  end)

  for _, mode in ipairs(emulator.ARGV_MODES) do
    it("prints a short text report on galley emulate --argv-mode " .. mode, function()
      local em = emulator.start({ boot_delay_ms = 0, argv_mode = mode })
      local ok, code, out, err = pcall(galley, { "run", "pm2-recon", "--provider", "morph", "--snapshot",
        emulator.SNAPSHOT }, { MORPH_BASE_URL = em.base_url, MORPH_API_KEY = em.api_key })
      local left = em:state().instances
      em:stop()
      assert(ok, code)
      assert.are.equal(0, code, err)
      assert.matches("^pm2 recon on morphvm_%S+ %(morph%), pm2 %d+%.%d+%.%d+", out)
      for _, want in ipairs({
        "payload cd + export:   work (pwd /tmp",
        "no cd:                 the app starts in the pm2 caller's cwd",
        "caller env:            copied into the app: yes; shown by jlist: yes; with env -i before pm2 start: not copied",
        "jlist, fresh home:     NOT pure JSON",
        "jlist, daemon up:      pure JSON",
        "duplicate names:       allowed: 2 processes named recon-dup",
        "app stdin:             tty: no;",
        "exit code:             --no-autorestart app exiting 3: status stopped, exit_code 3",
      }) do
        assert.truthy(out:find(want, 1, true), want .. "\n" .. out)
      end
      assert.are.equal(0, #left)
    end)
  end
end)
