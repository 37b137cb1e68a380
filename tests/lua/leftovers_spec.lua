-- Nothing is left behind without a word (issue #20), on the local provider and on the emulator:
-- snapshots a run makes are tagged, named at exit and collected by `galley gc` unless kept;
-- `galley -e` and plain scripts tag and TTL what they boot and name it at exit with
-- `galley stop ID`; Ctrl-C during cleanup says the progress and, on the third press, aborts it
-- naming what is left and the `galley gc` line; `--keep` says until when, `--keep 4h` sets it.
local cjson = require("cjson")
local cli = require("support.cli")
local support = require("support")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local q = support.q

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- A running galley process whose output the spec reads as it comes.
local Run = {}
Run.__index = Run

local function spawn(t, args)
  local argv = { support.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local h = assert(proc.spawn({ argv = argv, env = t.env, env_mode = "extend", stdin = "null" }))
  return setmetatable({ h = h, out = "", err = "" }, Run)
end

-- Reads until `text` shows up in stdout or stderr (plain text), failing after `ms`.
function Run:expect(text, ms)
  local deadline = runtime.now_ms() + (ms or 60000)
  while not (self.err:find(text, 1, true) or self.out:find(text, 1, true)) do
    local left = deadline - runtime.now_ms()
    local kind, data = nil, nil
    if left > 0 then kind, data = self.h:read(left) end
    if kind == "stdout" then
      self.out = self.out .. data
    elseif kind == "stderr" then
      self.err = self.err .. data
    else
      error(("no %q (%s)\nstdout: %s\nstderr: %s"):format(text, kind == "exit" and ("exited " .. tostring(data))
        or "timed out", self.out, self.err), 2)
    end
  end
end

-- Waits for the exit; returns the exit code (all output read).
function Run:finish(ms)
  local r = self.h:wait(ms or 60000)
  assert(r, "still running\nstderr: " .. self.err)
  self.out, self.err = self.out .. (r.stdout or ""), self.err .. (r.stderr or "")
  self.h:close()
  return r.exit_code
end

local function gc(t)
  local code, out, err = t:galley("--json gc --provider " .. t.provider_name)
  assert.are.equal(0, code, err)
  local by_id = {}
  for _, c in ipairs(cjson.decode(out)) do by_id[c.id] = c end
  return by_id, err
end

local function gone(fn, id)
  local ok, err = pcall(fn, id)
  return not ok and type(err) == "table" and err.code == "NOT_FOUND"
end

for _, target in ipairs(cli.TARGETS) do
  describe("nothing is left behind without a word on " .. target .. " #cli", function()
    local t, boot
    setup(function()
      t = cli.start(target)
      boot = ('local p = require("galley.providers").default()\nlocal inst = p.instances.boot(%q)\n'):format(
        t.snapshot)
    end)
    teardown(function() if t then t:stop() end end)

    it("tags the snapshots a run makes, names them at exit, and galley gc deletes the unkept ones only", function()
      local path = support.script(boot .. ([[
local contracts = require("galley.contracts")
local left = p.instances.snapshot(inst.id)
local kept = p.instances.snapshot(inst.id, { keep = true })
local image = p.snapshots.build(%q, { contracts.shell("echo built > ~/built") }, { salt = tostring(os.time()) })
print(left.id, kept.id, image.id)
]]):format(t.snapshot))
      local code, out, err = t:galley("run " .. q(path))
      os.remove(path)
      assert.are.equal(0, code, err)
      local left, kept, image = out:match("^(%S+)\t(%S+)\t(%S+)\n$")
      assert.truthy(left, out)
      assert.truthy(err:find("snapshot " .. left .. " made by this run is left", 1, true), err)
      assert.truthy(err:find("kept snapshot " .. kept, 1, true), err)
      assert.falsy(err:find(image, 1, true), err) -- an image is not the run's
      local pv = t:provider()
      local run_id = pv.snapshots.get(left).metadata.galley_run
      assert.truthy(run_id)
      assert.are.equal(run_id, pv.snapshots.get(kept).metadata.galley_run)
      assert.are.equal("1", pv.snapshots.get(kept).metadata.galley_keep)
      assert.is_nil(pv.snapshots.get(image).metadata.galley_run)
      local found, gerr = gc(t)
      assert.are.same({ kind = "snapshot", action = "deleted" }, { kind = found[left].kind, action = found[left].action })
      assert.is_nil(found[kept])
      assert.is_nil(found[image])
      assert.truthy(gerr:find("skipped " .. t.provider_name .. " snapshot " .. kept, 1, true), gerr)
      assert.is_true(gone(pv.snapshots.get, left))
      assert.are.equal(kept, pv.snapshots.get(kept).id)
      assert.are.equal(image, pv.snapshots.get(image).id)
    end)

    it("names the REPL session's snapshots in its exit report", function()
      local p = target == "local" and "sandbox" or "morph"
      local snap = target == "local" and "" or ("%q"):format(t.snapshot)
      local code, out, err = t:galley("repl", table.concat({
        ("inst = %s.instances.boot(%s)"):format(p, snap),
        ("s = %s.instances.snapshot(inst.id)"):format(p),
        "s.id",
        "inst:stop()",
        "quit",
      }, "\n") .. "\n")
      assert.are.equal(0, code, err)
      local id = out:match('"(snapshot_[%w_%-]+)"')
      assert.truthy(id, out)
      assert.truthy(err:find("1 snapshot(s) made in this session", 1, true), err)
      assert.truthy(err:find("  " .. id .. "\n", 1, true), err)
      assert.are.equal("deleted", gc(t)[id].action)
    end)

    for _, mode in ipairs({ "-e", "script" }) do
      it("tags and TTLs what `galley " .. mode .. "` boots and names it at exit with galley stop", function()
        local code, out, err
        local recipe_tag = "-e"
        if mode == "-e" then
          code, out, err = t:galley("-e " .. q(boot .. "print(inst.id)"))
        else
          local path = support.script(boot .. "print(inst.id)\n")
          recipe_tag = path:match("([^/]+)$")
          code, out, err = t:galley(q(path))
          os.remove(path)
        end
        assert.are.equal(0, code, err)
        local id = out:gsub("%s+$", "")
        assert.truthy(err:find("instance " .. id .. " booted by ", 1, true), err)
        assert.truthy(err:find("; stop it with: galley stop " .. id .. "\n", 1, true), err)
        local inst = t:provider().instances.get(id)
        assert.truthy(inst.metadata.galley_run)
        assert.are.equal(recipe_tag, inst.metadata.galley_recipe)
        assert.are.equal(3600, inst.ttl.seconds)
        local iso = os.date("!%Y-%m-%dT%H:%M:%SZ", inst.ttl.expires_at)
        assert.truthy(err:find("(" .. iso .. ")", 1, true), err)
        assert.are.equal("stopped", gc(t)[id].action)
      end)
    end

    it("says the cleanup's progress at each Ctrl-C and, at the third, aborts it naming what is left", function()
      local path = support.script(boot .. [[
local task = require("galley.task")
require("galley.recipe").defer(function()
  io.stderr:write("slow hook started\n")
  task.sleep(120000)
end, "slow hook")
print(inst.id)
io.stdout:flush()
task.sleep(120000)
]])
      local r = spawn(t, { "run", path })
      r:expect("\n")
      local id = r.out:match("^(%S+)\n")
      r.h:kill("INT")
      r:expect("slow hook started")
      r.h:kill("INT")
      r:expect("running cleanup hook 'slow hook'; Ctrl-C 2 more times aborts the cleanup")
      r.h:kill("INT")
      r:expect("Ctrl-C 1 more time aborts the cleanup")
      r.h:kill("INT")
      local code = r:finish()
      os.remove(path)
      assert.are.equal(130, code, r.err)
      assert.truthy(r.err:find("cleanup aborted", 1, true), r.err)
      assert.truthy(r.err:find("left instance " .. id .. "; stop it with: galley stop " .. id, 1, true), r.err)
      assert.truthy(r.err:find("run: galley gc\n", 1, true), r.err)
      -- the run history has it too: aborted, with what it left
      local hist = t.env.GALLEY_STATE_DIR .. "/run-history"
      local found
      for name in (io.popen("ls " .. q(hist) .. " 2>/dev/null"):read("a")):gmatch("[^\n]+") do
        local rec = cjson.decode(read_file(hist .. "/" .. name))
        if rec.leaks[1] == id then found = rec end
      end
      assert.is_table(found, "no history record naming " .. id)
      assert.are.same({ "aborted", 130, { id } }, { found.cleanup, found.exit_code, found.leaks })
      assert.are.equal("stopped", gc(t)[id].action)
    end)

    if target == "emulator" then
      it("counts the instances stopped so far when Ctrl-C lands while they stop", function()
        local path = support.script(boot .. [[
print(inst.id)
io.stdout:flush()
require("galley.task").sleep(120000)
]])
        local r = spawn(t, { "run", path })
        r:expect("\n")
        local id = r.out:match("^(%S+)\n")
        t.em:fault({ method = "DELETE", path = "/instance/*", action = "stall", delay_ms = 30000, count = 1 })
        r.h:kill("INT")
        for _ = 1, 200 do -- until the stop is in flight
          local seen = false
          for _, rec in ipairs(t.em:log()) do
            if rec.method == "DELETE" and rec.fault then seen = true end
          end
          if seen then break end
          require("galley.task").sleep(50)
        end
        r.h:kill("INT")
        r:expect("stopped 0 of 1 instance(s); Ctrl-C 2 more times aborts the cleanup")
        r.h:kill("INT")
        r:expect("1 more time")
        r.h:kill("INT")
        local code = r:finish()
        os.remove(path)
        assert.are.equal(130, code, r.err)
        assert.truthy(r.err:find("left instance " .. id, 1, true), r.err)
        assert.truthy(r.err:find("run: galley gc\n", 1, true), r.err)
        assert.are.equal("stopped", gc(t)[id].action)
      end)
    end

    it("says until when --keep keeps an instance, and --keep 4h makes that 4 hours", function()
      local path = support.script(boot .. "print(inst.id)\n")
      -- a recipe that parses its options takes the run's --keep after its name too
      local with_options = support.script('require("galley.recipe").options({ name = "k" }, arg)\n' .. boot
        .. "print(inst.id)\n")
      local pv = t:provider()
      for _, case in ipairs({ { "run --keep " .. q(path), 3600, "(--keep)" },
        { "run --keep 4h " .. q(path), 4 * 3600, "(--keep)" },
        { "run " .. q(with_options) .. " --keep=2h", 2 * 3600, "(--keep)" },
        { "run " .. q(with_options) .. " --keep 30m", 1800, "(--keep)" } }) do
        local before = os.time()
        local code, out, err = t:galley(case[1])
        assert.are.equal(0, code, err)
        local id = out:gsub("%s+$", "")
        local at = pv.instances.get(id).ttl.expires_at
        assert.is_true(at >= before + case[2] - 5 and at <= os.time() + case[2] + 5, case[1] .. ": " .. tostring(at))
        local iso = os.date("!%Y-%m-%dT%H:%M:%SZ", at)
        assert.truthy(err:find(("kept instance %s %s until "):format(id, case[3]), 1, true), err)
        assert.truthy(err:find("(" .. iso .. "); stop it with: galley stop " .. id, 1, true), err)
        pv.instances.terminate(id)
      end
      assert.are.equal(2, (t:galley("run --keep 0 " .. q(path))))
      assert.are.equal(2, (t:galley("run " .. q(with_options) .. " --keep=soon")))
      os.remove(path)
      os.remove(with_options)
    end)

    it("keeps the instance of docs/recipes.md's complete example with --keep (and --keep 2h)", function()
      local doc = read_file(support.source_dir .. "/docs/recipes.md")
      local src = doc:match("## A complete recipe\n\n```lua\n(.-)```")
      assert.truthy(src)
      local path = support.script(src)
      local where = target == "local" and "--provider local"
        or ("--provider morph --snapshot %s"):format(t.snapshot)
      local pv = t:provider()
      for _, keep in ipairs({ "--keep", "--keep 2h" }) do
        local before = os.time()
        local code, _, err = t:galley("run " .. q(path) .. " " .. where .. " " .. keep)
        assert.are.equal(0, code, err)
        local id = err:match("kept instance (%S+)")
        assert.truthy(id, err)
        local inst = pv.instances.get(id)
        if keep == "--keep 2h" then
          assert.is_true(inst.ttl.expires_at >= before + 7200 - 5, tostring(inst.ttl.expires_at))
        end
        pv.instances.terminate(id)
      end
      os.remove(path)
    end)
  end)
end
