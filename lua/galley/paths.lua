--- galley.paths: where galley keeps its own files on this machine, and the one check that every
-- directory of galley's own goes through (state, config, run files, REPL history).
--
--   home()          $HOME when it is set and absolute, else the password database's home of the
--                   real user id (never a guess such as /tmp: with HOME unset, /tmp/.local/state
--                   would be a directory any user can plant)
--   state_dir()     GALLEY_STATE_DIR, else <state_home()>/galley
--   history_file()  the REPL history: <state_dir()>/repl_history
--   state_home()    XDG_STATE_HOME (when absolute), else <home>/.local/state
--   config_dir()    <home>/.config/galley (the Claude credentials file lives there)
--   private_dir(p)  creates p (and missing parents) with mode 0700 and refuses, with UNSAFE_PATH,
--                   a directory that is a symlink, not owned by this user, or writable by group or
--                   others, as OpenSSH does for ~/.ssh
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local runtime = require("galley.core.runtime")

local M = {}

--- The hint every UNSAFE_PATH error carries.
M.UNSAFE_HINT = "galley keeps state and credentials only in directories that are yours alone (like ~/.ssh): "
  .. "remove a symlink, or `chown \"$(id -u)\" DIR && chmod 700 DIR`, or point GALLEY_STATE_DIR/HOME elsewhere"

local function unsafe(path, reason, message, extra)
  local details = { path = path, reason = reason }
  for k, v in pairs(extra or {}) do details[k] = v end
  errors.raise("UNSAFE_PATH", message, { resource = "file:" .. path, details = details, hint = M.UNSAFE_HINT,
    operation = "paths.private_dir" }, 3)
end

--- Removes trailing slashes (keeping "/") and doubled slashes.
local function clean(path)
  path = path:gsub("//+", "/")
  if #path > 1 then path = path:gsub("/+$", "") end
  return path
end

--- The user's home directory: $HOME when set and absolute, else the password database's entry
-- for the real user id.
---@return string
---@raise UNSAFE_PATH (neither gives an absolute directory)
function M.home()
  local h = os.getenv("HOME")
  if h and h:sub(1, 1) == "/" then return clean(h) end
  local home, err = runtime.home()
  if not home then
    errors.raise("UNSAFE_PATH", "HOME is not set to an absolute path and " .. tostring(err and err.message),
      { details = { reason = "no_home" }, hint = "set HOME to your home directory" }, 2)
  end
  return clean(home)
end

--- galley's state directory: GALLEY_STATE_DIR when set, else <state_home()>/galley
-- ($XDG_STATE_HOME/galley, else <home>/.local/state/galley). Run files, local instances and the
-- REPL history all live below it.
---@return string
function M.state_dir()
  local d = os.getenv("GALLEY_STATE_DIR")
  if d and d ~= "" then return clean(d) end
  return M.state_home() .. "/galley"
end


--- The REPL's history file: <state_dir()>/repl_history.
---@return string
function M.history_file()
  return M.state_dir() .. "/repl_history"
end

--- The XDG state home: XDG_STATE_HOME when set and absolute, else <home>/.local/state.
---@return string
function M.state_home()
  local d = os.getenv("XDG_STATE_HOME")
  if d and d:sub(1, 1) == "/" then return clean(d) end
  return M.home() .. "/.local/state"
end

--- galley's config directory: <home>/.config/galley.
---@return string
function M.config_dir()
  return M.home() .. "/.config/galley"
end

--- Expands a leading "~" or "~/" with home(); other paths are returned unchanged.
---@param path string
---@return string
function M.expand(path)
  if path == "~" or path:sub(1, 2) == "~/" then
    local home = M.home()
    return (home == "/" and "" or home) .. path:sub(2)
  end
  return path
end

-- The strict check for a directory galley owns: lstat says a real directory, owned by the
-- effective user, not writable by group or others.
local function check_own(path, euid)
  local st, err = fs.stat(path)
  if not st then return nil, err end
  if st.type == "link" then
    unsafe(path, "symlink", ("%s is a symbolic link, not a directory of yours"):format(path))
  elseif st.type ~= "directory" then
    unsafe(path, "not_directory", ("%s is not a directory"):format(path))
  elseif st.uid ~= euid then
    unsafe(path, "owner", ("%s belongs to uid %d, not to you (uid %d)"):format(path, st.uid, euid),
      { uid = st.uid })
  elseif st.mode & 18 ~= 0 then
    unsafe(path, "writable", ("%s is writable by group or others (mode %o)"):format(path, st.mode),
      { mode = ("%o"):format(st.mode) })
  end
  return true
end

-- An ancestor that existed already: after resolving symlinks, each directory up to / must belong
-- to root or to the user and, when group or others may write it, be sticky (as /tmp is), so
-- nobody else can swap what lies below.
local function check_ancestors(dir, euid)
  -- A symlink on the way must be the user's or root's too (its owner could re-point it).
  local acc = dir:sub(1, 1) == "/" and "" or nil
  for part in dir:gmatch("[^/]+") do
    acc = acc and (acc .. "/" .. part) or part
    local st = fs.stat(acc)
    if st and st.type == "link" and st.uid ~= 0 and st.uid ~= euid then
      unsafe(acc, "owner", ("%s (a symbolic link on the way) belongs to uid %d, neither you nor root")
        :format(acc, st.uid), { uid = st.uid })
    end
  end
  local real = fs.realpath(dir)
  if not real then return end
  while true do
    local st = fs.stat(real)
    if st then
      if st.uid ~= 0 and st.uid ~= euid then
        unsafe(real, "owner", ("%s (a parent directory) belongs to uid %d, neither you nor root"):format(real, st.uid),
          { uid = st.uid })
      end
      if st.mode & 18 ~= 0 and st.mode & 512 == 0 then
        unsafe(real, "writable", ("%s (a parent directory) is writable by group or others and not sticky (mode %o)")
          :format(real, st.mode), { mode = ("%o"):format(st.mode) })
      end
    end
    if real == "/" then return end
    real = real:match("^(.*)/[^/]*$")
    if real == "" then real = "/" end
  end
end

--- Makes sure `path` is a directory private to this user, creating it and any missing parents
-- with mode 0700. Refuses (UNSAFE_PATH, `details.reason` = "symlink" | "not_directory" |
-- "owner" | "writable") when the directory, or a parent galley had to create, is a symlink,
-- not owned by the effective user or writable by group/others; or when an existing parent
-- belongs to another user (not root) or is writable by others without the sticky bit.
-- An existing directory of mode 0755 is accepted (not widened, not narrowed).
-- `opts.shared_ok`: an existing `path` (not one galley creates) only needs what a parent needs:
-- root's or the user's, and sticky when others may write it (a file of one's own in /tmp).
---@param path string
---@param opts? {shared_ok?: boolean}
---@return string path the cleaned path
---@raise UNSAFE_PATH | FILE_IO_ERROR (cannot create)
function M.private_dir(path, opts)
  assert(type(path) == "string" and path ~= "", "paths.private_dir: path must be a non-empty string")
  path = clean(path)
  local _, euid = runtime.getuid()
  -- Which components are missing now: those galley creates and then checks strictly.
  local prefixes = {}
  local absolute = path:sub(1, 1) == "/"
  local acc = absolute and "" or nil
  for part in path:gmatch("[^/]+") do
    acc = acc and (acc .. "/" .. part) or part
    prefixes[#prefixes + 1] = acc
  end
  local first_missing = #prefixes + 1
  for i = #prefixes, 1, -1 do
    if fs.stat(prefixes[i]) then break end
    first_missing = i
  end
  -- Existing parents (above the first directory galley creates, or above path): nobody else
  -- may control them.
  local first = math.min(first_missing, #prefixes)
  check_ancestors(first > 1 and prefixes[first - 1] or (absolute and "/" or "."), euid)
  for i = first_missing, #prefixes do
    local ok, err = fs.mkdir_p(prefixes[i], "700")
    if not ok and not fs.stat(prefixes[i]) then
      errors.raise("FILE_IO_ERROR", ("cannot create %s: %s"):format(prefixes[i], tostring(err and err.message)),
        { resource = "file:" .. prefixes[i], operation = "paths.private_dir" }, 2)
    end
    assert(check_own(prefixes[i], euid))
  end
  if first_missing > #prefixes and opts and opts.shared_ok then
    check_ancestors(path, euid)
    return path
  end
  local ok, err = check_own(path, euid)
  if not ok then
    errors.raise("FILE_IO_ERROR", ("cannot use %s: %s"):format(path, tostring(err and err.message)),
      { resource = "file:" .. path, operation = "paths.private_dir" }, 2)
  end
  return path
end

--- The same checks as private_dir without creating anything: true when `path` does not exist
-- or is safe; raises UNSAFE_PATH otherwise.
---@param path string
---@return boolean exists
---@raise UNSAFE_PATH
function M.check_private_dir(path)
  path = clean(path)
  if not fs.stat(path) then return false end
  local _, euid = runtime.getuid()
  local parent = path:match("^(.*)/[^/]*$") or "."
  check_ancestors(parent == "" and "/" or parent, euid)
  check_own(path, euid)
  return true
end

return M
