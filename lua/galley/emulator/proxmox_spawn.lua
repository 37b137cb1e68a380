--- galley.emulator.proxmox_spawn: start `galley emulate proxmox` as a child process and talk to it.
--   local pve = require("galley.emulator.proxmox_spawn").start({ task_ms = 50 })
--   -- pve.url ("http://127.0.0.1:PORT", what PVE_URL would be), pve.base_url (.../api2/json),
--   -- pve.token_id, pve.token_secret (random, passed through the child's environment, never
--   -- argv), pve.password, pve.privsep_token_id, pve.privsep_secret, pve.ssh_port,
--   -- pve.nodes = {pve1 = "127.A.B.1", pve2 = "127.A.B.2"}, pve.state_dir
--   local r = pve.request("POST", "/nodes/pve1/lxc", {vmid = 101, ostemplate = "local:vztmpl/..."})
--   -- r.status, r.reason, r.body, r.json; form-encoded body, token auth
--   pve.control("GET", "/state")   -- /_emulator/... (decoded JSON or error)
--   pve.stop()                     -- SIGTERM, wait, remove the state directory (also at the run's end)
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local http = require("galley.core.http")
local json = require("galley.json")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")

local M = {}

local START_TIMEOUT_MS = 60000 -- more than the Morph emulator's: its nodes' sshd start with it

local function uuid()
  local h = codec.random_hex(16)
  return ("%s-%s-4%s-8%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(14, 16), h:sub(18, 20), h:sub(21, 32))
end

local function escape(s)
  return (tostring(s):gsub("[^%w%-_%.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- Form-encodes a table (booleans as 0/1; keys sorted).
---@param t table|nil
---@return string
function M.form(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "boolean" then v = v and 1 or 0 end
    out[#out + 1] = escape(k) .. "=" .. escape(v)
  end
  return table.concat(out, "&")
end

--- Starts `galley emulate proxmox` on free ports and waits until it listens.
---@param opts? {task_ms?: integer, auth_delay_ms?: integer, old_errors?: boolean, ticket_ttl_s?: integer,
---  ssh_port?: integer, faults?: string[], node_keys?: string[] (public key files), latency_ms?: integer}
---@return table child
---@raise EMULATOR_START
function M.start(opts)
  opts = opts or {}
  local exe = assert(runtime.executable())
  local dir = assert(fs.mkdtemp("/tmp/galley-pve-emulator."))
  local child = { token_id = "root@pam!galley", token_secret = uuid(), password = "pw-" .. codec.random_hex(12),
    privsep_token_id = "root@pam!privsep", privsep_secret = uuid(), state_dir = dir .. "/state" }
  local argv = { exe, "-q", "emulate", "proxmox", "--port", "0", "--state-dir", child.state_dir }
  local function add(flag, v)
    argv[#argv + 1] = flag
    argv[#argv + 1] = tostring(v)
  end
  if opts.task_ms then add("--task-ms", opts.task_ms) end
  if opts.auth_delay_ms then add("--auth-delay-ms", opts.auth_delay_ms) end
  if opts.ticket_ttl_s then add("--ticket-ttl-s", opts.ticket_ttl_s) end
  if opts.ssh_port then add("--ssh-port", opts.ssh_port) end
  if opts.latency_ms then add("--latency-ms", opts.latency_ms) end
  if opts.old_errors then argv[#argv + 1] = "--old-errors" end
  for _, f in ipairs(opts.faults or {}) do add("--fault", f) end
  for _, k in ipairs(opts.node_keys or {}) do add("--node-key", k) end
  local h, err = proc.spawn({ argv = argv, env_mode = "extend", stdin = "null", env = {
    PVE_TOKEN_ID = child.token_id, PVE_TOKEN_SECRET = child.token_secret, PVE_PASSWORD = child.password,
    PVE_PRIVSEP_SECRET = child.privsep_secret } })
  if not h then
    fs.remove_tree(dir)
    errors.raise("EMULATOR_START", "cannot start galley emulate proxmox: " .. tostring(err))
  end
  local stopped = false
  function child.stop()
    if stopped then return end
    stopped = true
    pcall(h.kill, h, "TERM")
    pcall(h.wait, h, 30000)
    pcall(h.close, h)
    fs.remove_tree(dir)
  end
  local port = require("galley.emulator.spawn").listening_port(h, child.stop, "galley emulate proxmox", "/api2/json",
    START_TIMEOUT_MS)
  child.port = math.tointeger(tonumber(port))
  child.url = "http://127.0.0.1:" .. port
  child.base_url = child.url .. "/api2/json"
  --- An API call with the token: {status, reason, headers, body, json}. `params` go in the query
  --- for GET and DELETE, form-encoded in the body otherwise. `auth` overrides the headers' auth.
  function child.request(method, path, params, headers)
    local url = child.base_url .. path
    local body
    if method == "GET" or method == "DELETE" then
      local q = M.form(params)
      if q ~= "" then url = url .. "?" .. q end
    else
      body = M.form(params)
    end
    local hdrs = { Authorization = "PVEAPIToken=" .. child.token_id .. "=" .. child.token_secret }
    if body then hdrs["Content-Type"] = "application/x-www-form-urlencoded" end
    for k, v in pairs(headers or {}) do hdrs[k] = v or nil end
    if headers and headers.Authorization == false then hdrs.Authorization = nil end
    local r, rerr = http.request({ method = method, url = url, headers = hdrs, body = body, timeout_ms = 60000 })
    if not r then return nil, rerr end
    local ok, decoded = pcall(json.decode, r.body)
    r.json = ok and decoded or nil
    return r
  end

  --- A control call (/_emulator/PATH): the decoded answer; raises on a non-2xx.
  function child.control(method, path, body)
    local r, rerr = http.request({ method = method, url = child.url .. "/_emulator" .. path, timeout_ms = 60000,
      headers = { Authorization = "PVEAPIToken=" .. child.token_id .. "=" .. child.token_secret },
      body = type(body) == "table" and json.encode(body) or body })
    if not r then errors.raise("EMULATOR_CONTROL", "control call failed: " .. tostring(rerr)) end
    if r.status >= 300 then
      errors.raise("EMULATOR_CONTROL", ("control %s %s: %d %s"):format(method, path, r.status, r.body))
    end
    if r.body == "" then return true end
    return json.decode(r.body)
  end

  local st = child.control("GET", "/state")
  child.ssh_port = math.tointeger(st.options.ssh_port)
  child.nodes = {}
  for _, n in ipairs(st.nodes) do child.nodes[n.node] = n.addr end
  require("galley.emulator.spawn").stop_at_exit(child.stop, "stop the Proxmox emulator")
  return child
end

return M
