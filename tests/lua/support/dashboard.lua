--- support.dashboard: runs `galley dashboard` for a spec and talks to it with galley.core.http.
--
--   local dash = require("support.dashboard").start(env, {"--provider", "local"})
--   -- dash.url ("http://127.0.0.1:PORT/?token=..."), dash.port, dash.token, dash.root
--   local r = dash:request("GET", "/api/state")            -- with the cookie
--   local r = dash:request("GET", "/api/state", {cookie = false})
--   local r = dash:request("POST", "/api/instance/stop", {body = {...}, csrf = dash:csrf()})
--   dash:stop()
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local runtime = require("galley.core.runtime")
local cjson = require("cjson")
local support = require("support")

local M = {}

local Dash = {}
Dash.__index = Dash

--- Starts the dashboard with `env` (HOME, GALLEY_STATE_DIR, MORPH_*) and extra arguments.
function M.start(env, args)
  local argv = { support.bin, "dashboard" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local h, err = proc.spawn({ argv = argv, env = env, env_mode = "extend" })
  if not h then error("cannot start the dashboard: " .. tostring(err)) end
  local self = setmetatable({ handle = h, stdout = "", stderr = "" }, Dash)
  local deadline = runtime.now_ms() + 20000
  while not self.stdout:find("\n", 1, true) do
    local left = deadline - runtime.now_ms()
    local kind, data = nil, nil
    if left > 0 then kind, data = h:read(left) end
    if kind == "stdout" then
      self.stdout = self.stdout .. data
    elseif kind == "stderr" then
      self.stderr = self.stderr .. data
    else
      self:stop()
      error("dashboard did not start: " .. tostring(kind) .. " " .. tostring(data) .. " " .. self.stderr)
    end
  end
  local url = self.stdout:match("^(http://127%.0%.0%.1:%d+/%?token=%x+)\n")
  if not url then
    self:stop()
    error("unexpected first line from the dashboard: " .. self.stdout)
  end
  self.url = url
  self.port = math.tointeger(tonumber(url:match(":(%d+)/")))
  self.token = url:match("token=(%x+)")
  self.root = "http://127.0.0.1:" .. self.port
  return self
end

--- Drains the process's output so its pipes never fill.
function Dash:drain()
  while self.handle do
    local kind, data = self.handle:read(0)
    if kind == "stdout" then self.stdout = self.stdout .. data
    elseif kind == "stderr" then self.stderr = self.stderr .. data
    else break end
  end
  return self.stderr
end

--- A request: opts.cookie (default true) sends the access cookie; opts.csrf the X-CSRF-Token;
--- opts.host overrides Host; opts.body (table: JSON). Returns resp with .json.
function Dash:request(method, path, opts)
  opts = opts or {}
  self:drain()
  local h = {}
  if opts.cookie ~= false then h.Cookie = "galley_dashboard_" .. self.port .. "=" .. self.token end
  if opts.csrf then h["X-CSRF-Token"] = opts.csrf end
  if opts.host then h.Host = opts.host end
  if opts.origin then h.Origin = opts.origin end
  for k, v in pairs(opts.headers or {}) do h[k] = v end
  local body = opts.body
  if type(body) == "table" then
    body = cjson.encode(body)
    h["Content-Type"] = "application/json"
  end
  local resp = assert(http.request({ method = method, url = self.root .. path, headers = h, body = body,
    timeout_ms = opts.timeout_ms or 60000, stream = opts.stream }))
  if opts.stream then return resp end
  local ok, decoded = pcall(cjson.decode, resp.body)
  resp.json = ok and decoded or nil
  return resp
end

--- The CSRF token the page gets from /api/state.
function Dash:csrf()
  local r = self:request("GET", "/api/state")
  assert(r.status == 200, r.body)
  return r.json.csrf
end

function Dash:stop()
  local h = self.handle
  if not h then return end
  self.handle = nil
  pcall(h.kill, h, "TERM")
  if not h:wait(10000) then
    pcall(h.kill, h, "KILL")
    h:wait(10000)
  end
  pcall(h.close, h)
end

return M
