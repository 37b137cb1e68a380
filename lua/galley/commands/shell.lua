--- galley shell: an interactive shell in an instance.
-- On the local provider and the emulator: a PTY over tmux. A tmux session runs bash inside the
-- instance (galley.process.tmux); this terminal is put in raw mode, keys are sent with
-- `tmux send-keys` and the pane is drawn from `tmux capture-pane`, all through the provider's
-- exec, so it works wherever exec does. On Morph Cloud: `ssh` with the instance's key from the
-- SSH key endpoint (when `ssh` is installed; --tmux uses the tmux way there too).
local errors = require("galley.errors")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local shared = require("galley.commands.shared")

local M = {
  summary = "an interactive shell in an instance (tmux): galley shell ID",
  usage = "galley shell [--session NAME] [--tmux] ID",
  help = "Opens bash in the instance on this terminal. Local provider and emulator: bash runs in a tmux\n"
    .. "session inside the instance (tmux must be there); `exit` or Ctrl-D ends it, Ctrl-] detaches\n"
    .. "and leaves it running (`galley shell ID` again attaches; `galley logs ID galley-shell` reads\n"
    .. "it). Morph Cloud: ssh to ssh.cloud.morph.so with the instance's own key (needs `ssh`).",
}

M.SESSION = "galley-shell"
M.SSH_HOST = "ssh.cloud.morph.so"
local DETACH = "\29" -- Ctrl-]
local POLL_MS = 60

function M.configure(p)
  p:option("--session", "tmux session name", M.SESSION)
  p:flag("--tmux", "use the tmux way on Morph Cloud too (no ssh)")
  p:argument("instance_id", "the instance")
end

local function sh(argv)
  local r = proc.run({ argv = argv, timeout_ms = 10000 })
  return r and r.exit_code == 0 and r.stdout or nil
end

-- Key bytes from a raw terminal -> tmux send-keys calls: {literal text} or {key name}.
local NAMED = { ["\r"] = "Enter", ["\n"] = "Enter", ["\127"] = "BSpace", ["\8"] = "BSpace", ["\t"] = "Tab" }
local ARROWS = { A = "Up", B = "Down", C = "Right", D = "Left", H = "Home", F = "End" }

--- Splits raw key bytes into send-keys steps: `{text = "..."}` (literal) or `{key = "Enter"}`.
---@param bytes string
---@return table[]
function M.keys(bytes)
  local steps, i = {}, 1
  local function literal(s)
    local last = steps[#steps]
    if last and last.text then last.text = last.text .. s else steps[#steps + 1] = { text = s } end
  end
  while i <= #bytes do
    local c = bytes:sub(i, i)
    local b = c:byte()
    if NAMED[c] then
      steps[#steps + 1] = { key = NAMED[c] }
    elseif c == "\27" then
      local arrow = bytes:match("^%[([ABCDHF])", i + 1) or bytes:match("^O([ABCDHF])", i + 1)
      if arrow then
        steps[#steps + 1] = { key = ARROWS[arrow] }
        i = i + 2
      else
        steps[#steps + 1] = { key = "Escape" }
      end
    elseif b < 32 then
      steps[#steps + 1] = { key = "C-" .. string.char(b + 96) }
    else
      literal(c)
    end
    i = i + 1
  end
  return steps
end

local function ssh_shell(provider, id)
  local key = provider.client:instances_ssh_key(id)
  if type(key) ~= "table" or not key.private_key then
    errors.raise("PROTOCOL_ERROR", "the SSH key endpoint gave no private key for " .. id)
  end
  local dir = assert(sh({ "mktemp", "-d", "-t", "galley-ssh.XXXXXX" })):gsub("%s+$", "")
  local path = dir .. "/key"
  require("galley.core.fs").write(path, key.private_key, { mode = tonumber("600", 8) })
  local q = require("galley.core.shell").quote
  local cmd = table.concat({ "ssh", "-i", q(path), "-o", "StrictHostKeyChecking=accept-new",
    "-o", "UserKnownHostsFile=" .. q(dir .. "/known_hosts"), q(id .. "@" .. M.SSH_HOST) }, " ")
  -- The terminal belongs to ssh until it ends: a plain blocking wait is what a shell session is.
  local _, _, code = os.execute(cmd)
  proc.run({ argv = { "rm", "-rf", "--", dir } })
  return code or 1
end

-- The terminal's device (our stdin) and size.
local function terminal()
  if not runtime.isatty(0) then return nil end
  local tty = sh({ "readlink", "/proc/" .. runtime.getpid() .. "/fd/0" })
  tty = tty and tty:gsub("%s+$", "")
  if not tty or not tty:match("^/dev/pts/%d+$") and not tty:match("^/dev/tty[%w]*$") then return nil end
  local size = sh({ "stty", "-F", tty, "size" }) or ""
  local rows, cols = size:match("(%d+)%s+(%d+)")
  return tty, math.tointeger(tonumber(cols)) or 80, math.tointeger(tonumber(rows)) or 24
end

local function tmux_shell(provider, id, session)
  local tty, cols, rows = terminal()
  if not tty then
    io.stderr:write("galley shell: stdin is not a terminal\n  hint: run it in a terminal, or use ",
      "`galley exec ", id, " -- CMD` for one command\n")
    return shared.EXIT_USAGE
  end
  local tmux = require("galley.process.tmux").new({ provider = provider,
    log = require("galley.log").new({ level = "error" }) })
  provider.instances.get(id)
  local running = false
  for _, s in ipairs(tmux.list(id)) do
    if s.name == session and s.status == "online" then running = true end
  end
  if running then
    pcall(tmux.resize, id, session, cols, rows)
  else
    pcall(tmux.delete, id, session)
    tmux.start(id, { command = { name = session, kind = "argv", command = "bash", args = { "-i" },
      cwd = "~", env = { TERM = "xterm-256color" } } }, { width = cols, height = rows })
  end
  -- stty in a session of its own: from our (background) process group, changing the terminal
  -- would stop it with SIGTTOU.
  local function stty(...) return sh({ "setsid", "-w", "stty", "-F", tty, ... }) end
  local saved = stty("-g")
  stty("raw", "-echo")
  -- The key reader: cat of the terminal device in a session of its own (in our process group it
  -- would be a background job of this terminal and stop on SIGTTIN). It ends when its stdin, a
  -- pipe only this process holds, closes: also when galley dies.
  -- The keys land in a file read by offset, not in a pipe: output of a spawned process that
  -- arrives while a proc.run (each exec) is running can be lost on the event loop today.
  local keydir = assert(sh({ "mktemp", "-d", "-t", "galley-shell.XXXXXX" })):gsub("%s+$", "")
  local keyfile = keydir .. "/keys"
  assert(io.open(keyfile, "wb")):close()
  local reader = assert(proc.spawn({ argv = { "setsid", "-w", "sh", "-c",
    'cat -- "$1" >>"$2" & p=$!; cat >/dev/null; kill "$p" 2>/dev/null', "sh", tty, keyfile }, stdin = "pipe" }))
  local offset = 0
  local function next_keys()
    local kind = reader:read(POLL_MS) -- waits on the loop; the reader writes nothing to its pipes
    if kind == "exit" then return nil end
    local f = io.open(keyfile, "rb")
    if not f then return nil end
    f:seek("set", offset)
    local data = f:read("a") or ""
    f:close()
    offset = offset + #data
    return data
  end
  local last, detached, ended = nil, false, false
  local function draw()
    local ok, screen = pcall(tmux.capture, id, session, { escapes = true })
    if not ok then
      if errors.is(screen, "NOT_FOUND") then ended = true return end
      error(screen, 0)
    end
    if screen ~= last then
      last = screen
      io.stdout:write("\27[H\27[2J", (screen:gsub("\n$", ""):gsub("\n", "\r\n")))
      io.stdout:flush()
    end
  end
  local ok, err = pcall(function()
    draw()
    while not ended do
      local data = next_keys()
      if data == nil then break end
      if data ~= "" then
        local at = data:find(DETACH, 1, true)
        if at then
          data, detached = data:sub(1, at - 1), true
        end
        for _, step in ipairs(M.keys(data)) do
          if step.text then
            tmux.send_keys(id, session, step.text)
          else
            tmux.send_keys(id, session, step.key, { literal = false })
          end
        end
        if detached then break end
      end
      draw()
      if not ended then
        for _, s in ipairs(tmux.list(id)) do
          if s.name == session and s.status ~= "online" then ended = true end
        end
      end
    end
  end)
  pcall(reader.kill, reader, "KILL")
  pcall(reader.close, reader)
  proc.run({ argv = { "rm", "-rf", "--", keydir } })
  if saved then stty((saved:gsub("%s+$", ""))) else stty("sane") end
  io.stdout:write("\r\n")
  if not ok then error(err, 0) end
  if detached then
    io.stderr:write("galley shell: detached; session ", session, " still runs in ", id,
      " (galley shell ", id, " attaches again)\n")
  else
    pcall(tmux.delete, id, session)
    io.stderr:write("galley shell: session ended\n")
  end
  return 0
end

-- Proxmox: `ssh -t` into the container (the provider's key, known_hosts and options), attaching
-- to (or creating) a tmux session there.
local function proxmox_shell(provider, id, session)
  local argv = provider.ssh_argv(id, { "tmux", "new-session", "-A", "-s", session })
  -- The terminal belongs to ssh until it ends: a plain blocking wait is what a shell session is.
  local _, _, code = os.execute(require("galley.core.shell").join(argv))
  return code or 1
end

function M.run(args)
  local res, code = shared.parse(shared.parser("shell", M.summary, M), args)
  if not res then return code end
  return shared.with_provider("shell", res, function(provider)
    local url = shared.base_url(provider)
    local loopback = url and (url:match("^https?://127%.") or url:match("^https?://localhost[:/]"))
    if provider.name == "morph" and not loopback and not res.tmux then
      if not sh({ "sh", "-c", "command -v ssh" }) then
        io.stderr:write("galley shell: ssh is not installed here: Morph Cloud shells go through ssh\n",
          "  hint: install openssh-client, or use --tmux (needs tmux in the instance)\n")
        return 1
      end
      return ssh_shell(provider, res.instance_id)
    end
    if provider.name == "proxmox" and not res.tmux then
      return proxmox_shell(provider, res.instance_id, res.session)
    end
    return tmux_shell(provider, res.instance_id, res.session)
  end)
end

return M
