-- galley's own files on this machine: the Claude token file is never readable by others at any
-- moment (a real inotify observer looks at it while it is written), the home comes from the
-- password database when HOME is unset (a throwaway user whose home is a temp dir), and state,
-- config and run-file directories that are symlinks, another user's or writable by others are
-- refused with UNSAFE_PATH. Never touches /root: every HOME here is a temp dir.
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local support = require("support")
local host = require("support.host_files")

local uid = runtime.getuid()

local function sh(cmd)
  local r = assert(proc.run({ argv = { "sh", "-c", cmd }, timeout_ms = 30000 }))
  assert(r.exit_code == 0, cmd .. ": " .. r.stderr)
  return r.stdout
end

local function octal(path)
  local st = fs.stat(path)
  return st and ("%o"):format(st.mode) or "missing"
end

-- Runs fn and returns the error it raises.
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end

describe("galley's files on this machine #host_files", function()
  local tmp

  before_each(function()
    tmp = assert(fs.mkdtemp("galley-host-files-"))
  end)

  after_each(function()
    if tmp then assert(fs.remove_tree(tmp)) end
  end)

  describe("the Claude credentials file", function()
    local save = 'require("galley.oauth.claude").save_credentials("~/.config/galley/claude-credentials.json", '
      .. '{ access_token = string.rep("t", 16 * 1024 * 1024), refresh_token = "r" })'

    it("is never readable by others at any moment, even with a umask of 000", function()
      if not host.have_inotify() then return pending("inotifywait (inotify-tools) is not installed") end
      local dir = tmp .. "/home/.config/galley"
      sh("mkdir -p -m 700 " .. support.q(dir))
      local events, r = host.observe(dir, host.galley_umask0(save), { HOME = tmp .. "/home" })
      assert.are.equal(0, r.exit_code, r.stderr)
      local looked = 0
      for _, e in ipairs(events) do
        if e.mode then
          looked = looked + 1
          assert.are.equal(0, e.mode & 63, ("%s %s had mode %o"):format(e.event, e.name, e.mode))
        end
      end
      assert.is_true(looked >= 1, "the observer never saw the file")
      assert.are.equal("600", octal(dir .. "/claude-credentials.json"))
    end)

    it("is created in directories of mode 0700, whatever the umask", function()
      local home = tmp .. "/home"
      assert(fs.mkdir_p(home, "700"))
      local r = assert(proc.run({ argv = host.galley_umask0(save), env = { HOME = home }, timeout_ms = 60000 }))
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("700", octal(home .. "/.config"))
      assert.are.equal("700", octal(home .. "/.config/galley"))
      assert.are.equal("600", octal(home .. "/.config/galley/claude-credentials.json"))
    end)

    it("is not written into a directory others can write", function()
      local dir = tmp .. "/shared"
      sh("mkdir -m 777 " .. support.q(dir))
      local err = raised(require("galley.oauth.claude").save_credentials, dir .. "/c.json", { access_token = "a" })
      assert.are.equal("UNSAFE_PATH", err.code)
      assert.are.equal("writable", err.details.reason)
      assert.are.same({}, fs.list(dir))
    end)

    it("may go in a sticky shared directory such as /tmp, but not into a shared galley config directory", function()
      local sticky = tmp .. "/sticky"
      sh("mkdir -m 1777 " .. support.q(sticky))
      local oauth = require("galley.oauth.claude")
      assert.are.equal(sticky .. "/c.json", oauth.save_credentials(sticky .. "/c.json", { access_token = "a" }))
      assert.are.equal("600", octal(sticky .. "/c.json"))
      local home = tmp .. "/home"
      sh(("mkdir -p -m 700 %s && mkdir -m 1777 %s"):format(support.q(home .. "/.config"),
        support.q(home .. "/.config/galley")))
      local r = assert(proc.run({ argv = { host.bin, "-e", [[
local ok, err = pcall(require("galley.oauth.claude").save_credentials, "~/.config/galley/c.json", { access_token = "a" })
io.write(tostring(ok), " ", tostring(err and err.code))
]] }, env = { HOME = home }, timeout_ms = 60000 }))
      assert.are.equal("false UNSAFE_PATH", r.stdout, r.stderr)
      assert.are.same({}, fs.list(home .. "/.config/galley"))
    end)
  end)

  describe("with HOME unset #root", function()
    local user

    after_each(function()
      if user then host.remove_user(user) end
      user = nil
    end)

    it("keeps state under the password database's home, never under /tmp", function()
      if uid ~= 0 then return pending("needs root to create a throwaway user") end
      sh("chmod 711 " .. support.q(tmp))
      local home = tmp .. "/home"
      local name = host.throwaway_user(home)
      user = name
      local probe = tmp .. "/probe.lua"
      assert(fs.write(probe, [[
local run = require("galley.run")
local fs = require("galley.core.fs")
local state = run.state_dir()
require("galley.providers.local").new({ sandbox = false, cgroups = false, log = require("galley.log").silent() })
local file = fs.stat(state .. "/runs/" .. run.current().id)
io.write(require("galley.paths").home(), "\n", state, "\n", file and file.type or "none", "\n")
for _, d in ipairs({ state, state .. "/runs", state .. "/instances" }) do
  io.write(("%o"):format(fs.stat(d).mode), "\n")
end
]], { mode = "644" }))
      local env = { PATH = os.getenv("PATH"), GALLEY_LOG = "error" }
      local r = host.galley_as(name, { "run", probe }, env)
      assert.are.equal(0, r.exit_code, r.stderr)
      local lines = {}
      for l in r.stdout:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.same({ home, home .. "/.local/state/galley", "file", "700", "700", "700" }, lines)
      -- A relative HOME is not a home either.
      env.HOME = "relative/home"
      r = host.galley_as(name, { "-e", 'io.write(require("galley.paths").state_dir())' }, env)
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal(home .. "/.local/state/galley", r.stdout)
    end)

    it("writes that user's token file at mode 0600 from its first moment, with a umask of 000", function()
      if uid ~= 0 then return pending("needs root to create a throwaway user") end
      if not host.have_inotify() then return pending("inotifywait (inotify-tools) is not installed") end
      sh("chmod 711 " .. support.q(tmp))
      local home = tmp .. "/home"
      local name = host.throwaway_user(home)
      user = name
      local dir = home .. "/.config/galley"
      sh(("mkdir -p -m 700 %s && chown -R %s %s"):format(support.q(dir), name, support.q(home .. "/.config")))
      local events, r = host.observe(dir, { "runuser", "-u", name, "--", "env", "-i", "PATH=" .. os.getenv("PATH"),
        "bash", "-c", 'umask 000; exec "$0" -e "$1"', host.bin, 'require("galley.oauth.claude").save_credentials('
          .. '"~/.config/galley/claude-credentials.json", { access_token = string.rep("t", 16 * 1024 * 1024) })' })
      assert.are.equal(0, r.exit_code, r.stderr)
      local looked = 0
      for _, e in ipairs(events) do
        if e.mode then
          looked = looked + 1
          assert.are.equal(0, e.mode & 63, ("%s %s had mode %o"):format(e.event, e.name, e.mode))
        end
      end
      assert.is_true(looked >= 1, "the observer never saw the file")
      local st = fs.stat(dir .. "/claude-credentials.json")
      assert.are.equal("600", ("%o"):format(st.mode))
      assert.are_not.equal(0, st.uid)
    end)

    it("refuses, as that user, a state directory that belongs to someone else", function()
      if uid ~= 0 then return pending("needs root to create a throwaway user") end
      sh("chmod 711 " .. support.q(tmp))
      local name = host.throwaway_user(tmp .. "/home")
      user = name
      sh("mkdir -m 755 " .. support.q(tmp .. "/roots"))
      local r = host.galley_as(name, { "-e", [[
local ok, err = pcall(require("galley.providers.local").new, { sandbox = false, cgroups = false,
  state_dir = os.getenv("STATE") })
io.write(tostring(ok), " ", tostring(err and err.code), " ", tostring(err and err.details and err.details.reason))
]] }, { PATH = os.getenv("PATH"), GALLEY_LOG = "error", STATE = tmp .. "/roots" })
      assert.are.equal(0, r.exit_code, r.stderr)
      assert.are.equal("false UNSAFE_PATH owner", r.stdout)
    end)
  end)

  describe("state and config directories", function()
    local paths = require("galley.paths")
    local provider = require("galley.providers.local")

    local function new_provider(state_dir)
      return provider.new({ state_dir = state_dir, sandbox = false, cgroups = false,
        log = require("galley.log").silent() })
    end

    it("are created with mode 0700, parents included", function()
      local dir = paths.private_dir(tmp .. "/a/b/galley")
      assert.are.equal(tmp .. "/a/b/galley", dir)
      for _, d in ipairs({ "/a", "/a/b", "/a/b/galley" }) do assert.are.equal("700", octal(tmp .. d)) end
      new_provider(tmp .. "/state")
      for _, d in ipairs({ "/state", "/state/instances", "/state/snapshots" }) do
        assert.are.equal("700", octal(tmp .. d))
      end
    end)

    it("refuse a symlink, even to a directory of one's own", function()
      sh(("mkdir -m 700 %s && ln -s real %s"):format(support.q(tmp .. "/real"), support.q(tmp .. "/link")))
      local err = raised(new_provider, tmp .. "/link")
      assert.are.equal("UNSAFE_PATH", err.code)
      assert.are.equal("symlink", err.details.reason)
      assert.is_string(err.hint)
      assert.are.same({}, fs.list(tmp .. "/real"))
    end)

    it("refuse one writable by group or others", function()
      for _, mode in ipairs({ "777", "770", "1777" }) do
        local dir = tmp .. "/w" .. mode
        sh(("mkdir %s && chmod %s %s"):format(support.q(dir), mode, support.q(dir)))
        local err = raised(new_provider, dir)
        assert.are.equal("UNSAFE_PATH", err.code, mode)
        assert.are.equal("writable", err.details.reason, mode)
        assert.are.same({}, fs.list(dir))
      end
    end)

    it("refuse one owned by another user, and one below another user's directory", function()
      if uid ~= 0 then return pending("needs root to hand a directory to nobody") end
      sh(("mkdir -m 700 %s && chown nobody %s"):format(support.q(tmp .. "/theirs"), support.q(tmp .. "/theirs")))
      local err = raised(new_provider, tmp .. "/theirs")
      assert.are.equal("UNSAFE_PATH", err.code)
      assert.are.equal("owner", err.details.reason)
      -- A planted ~/.local (someone else's) under which galley would create its state.
      sh(("mkdir -m 755 %s && chown nobody %s"):format(support.q(tmp .. "/home"), support.q(tmp .. "/home")))
      err = raised(paths.private_dir, tmp .. "/home/.local/state/galley")
      assert.are.equal("UNSAFE_PATH", err.code)
      assert.are.equal("owner", err.details.reason)
      assert.is_false(fs.exists(tmp .. "/home/.local"))
      -- A symlink of someone else's on the way.
      sh(("mkdir -m 700 %s && ln -s mine %s && chown -h nobody %s"):format(support.q(tmp .. "/mine"),
        support.q(tmp .. "/their-link"), support.q(tmp .. "/their-link")))
      err = raised(paths.private_dir, tmp .. "/their-link/galley")
      assert.are.equal("UNSAFE_PATH", err.code)
      assert.are.same({}, fs.list(tmp .. "/mine"))
    end)

    it("accept an existing directory of mode 0755 of one's own and leave its mode alone", function()
      sh("mkdir -m 755 " .. support.q(tmp .. "/open"))
      assert.are.equal(tmp .. "/open", paths.private_dir(tmp .. "/open/"))
      assert.are.equal("755", octal(tmp .. "/open"))
      assert.is_true(paths.check_private_dir(tmp .. "/open"))
      assert.is_false(paths.check_private_dir(tmp .. "/none"))
    end)
  end)

  describe("the commands", function()
    local probe

    before_each(function()
      probe = tmp .. "/probe.lua"
      assert(fs.write(probe, 'print("ran")\n'))
    end)

    it("galley run refuses a symlinked state directory and writes nothing through it", function()
      sh(("mkdir -m 700 %s && ln -s real %s"):format(support.q(tmp .. "/real"), support.q(tmp .. "/link")))
      local code, out, err = support.galley("run " .. support.q(probe), nil,
        { GALLEY_STATE_DIR = tmp .. "/link", HOME = tmp })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.matches("UNSAFE_PATH", err, 1, true)
      assert.are.same({}, fs.list(tmp .. "/real"))
    end)

    it("galley repl refuses a state directory others can write", function()
      sh(("mkdir -m 777 %s"):format(support.q(tmp .. "/open")))
      local code, _, err = support.galley("repl", "print(1)\n", { GALLEY_STATE_DIR = tmp .. "/open", HOME = tmp })
      assert.are.equal(1, code)
      assert.matches("UNSAFE_PATH", err, 1, true)
      assert.are.same({}, fs.list(tmp .. "/open"))
    end)

    it("galley gc does not believe run files in a directory another user controls", function()
      if uid ~= 0 then return pending("needs root to hand a directory to nobody") end
      local state = tmp .. "/state"
      sh(("mkdir -m 700 %s && mkdir -m 755 %s && chown nobody %s"):format(support.q(state),
        support.q(state .. "/runs"), support.q(state .. "/runs")))
      local code, _, err = support.galley("gc --dry-run --provider local", nil, { GALLEY_STATE_DIR = state, HOME = tmp })
      assert.are_not.equal(0, code)
      assert.matches("UNSAFE_PATH", err, 1, true)
    end)

    it("a run records itself in a 0700 runs directory, in a file of mode 0600", function()
      local code, out, err = support.galley("-e " .. support.q([[
local run = require("galley.run")
run.begin({ recipe = "probe" })
local fs = require("galley.core.fs")
local st = fs.stat(run.state_dir() .. "/runs/" .. run.current().id)
io.write(("%o %o %o"):format(fs.stat(run.state_dir()).mode, fs.stat(run.state_dir() .. "/runs").mode, st.mode))
run.finish({})
]]), nil, { GALLEY_STATE_DIR = tmp .. "/fresh/galley", HOME = tmp })
      assert.are.equal(0, code, err)
      assert.are.equal("700 700 600", out)
    end)
  end)
end)
