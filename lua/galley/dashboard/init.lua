--- galley.dashboard: a local web page of runs, instances and live sessions (`galley dashboard`).
-- Served by galley.httpd on the event loop, on 127.0.0.1 only. Security (docs/dashboard.md):
--   * an access token (random, 32 bytes) is printed once in the URL `/?token=…`; that request
--     sets it as an HttpOnly SameSite=Strict cookie and redirects to `/`; every other request
--     without the cookie is 403;
--   * a request whose Host is not 127.0.0.1/localhost (with this port) is 403 (DNS rebinding);
--   * every POST needs the CSRF token (`X-CSRF-Token`, given by GET /api/state) and, when the
--     browser sends an Origin, this origin; --read-only refuses every POST (403);
--   * tokens are compared in constant time (galley.core.codec.equal);
--   * every string sent passes galley.log's redaction; environment values are never sent.
--
--   local d = dashboard.new{providers = {{name = "local", provider = p}}, read_only = false}
--   local port, err = d:start(0); print(d:url()); ...; d:stop()
local codec = require("galley.core.codec")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local httpd = require("galley.httpd")
local json = require("galley.json")
local log = require("galley.log")
local paths = require("galley.paths")
local runtime = require("galley.core.runtime")
local task = require("galley.task")
local ansi = require("galley.dashboard.ansi")

local M = {}

--- The cookie's name is M.COOKIE .. "_" .. port: cookies are shared by every port of a host, and
--- two dashboards must not sign each other out.
M.COOKIE = "galley_dashboard"
--- How often a followed log or a tmux screen is read (ms).
M.POLL_MS = 500
--- A health sample older than this is taken again (ms).
M.HEALTH_TTL_MS = 10000
--- How long a listing waits for fresh health samples (ms); later ones show on the next refresh.
M.HEALTH_WAIT_MS = 3000
--- Health samples taken at once.
M.HEALTH_PARALLEL = 8
--- An SSE stream silent this long sends a keep-alive comment (ms).
M.KEEPALIVE_MS = 15000
--- How long a PM2 process list is reused (ms).
M.PM2_LIST_TTL_MS = 3000
--- Largest log chunk sent in one event.
M.LOG_CHUNK = 64 * 1024

local ASSETS = {
  ["/"] = { "assets/dashboard/index.html", "text/html; charset=utf-8" },
  ["/app.js"] = { "assets/dashboard/app.js", "text/javascript; charset=utf-8" },
  ["/app.css"] = { "assets/dashboard/app.css", "text/css; charset=utf-8" },
}

local SECURITY_HEADERS = {
  ["Cache-Control"] = "no-store",
  ["X-Content-Type-Options"] = "nosniff",
  ["X-Frame-Options"] = "DENY",
  ["Referrer-Policy"] = "no-referrer",
  ["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    .. " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}

local Dashboard = {}
Dashboard.__index = Dashboard


local function headers(extra)
  local h = {}
  for k, v in pairs(SECURITY_HEADERS) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end


local function respond(status, body, ctype, extra)
  local h = headers(extra)
  h["Content-Type"] = ctype or "text/plain; charset=utf-8"
  return { status = status, headers = h, body = body }
end


local function send_json(status, value)
  return respond(status, json.encode(log.redact(value)), "application/json")
end


local function fail(status, code, message, hint)
  return send_json(status, { error = { code = code, message = message, hint = hint } })
end


--- An asset's text: embedded in the binary (assets/dashboard/*), else read beside the Lua tree
--- when galley runs with --lua-dir from a checkout.
local function asset(path)
  local text = runtime.resource(path)
  if text then return text end
  local where = package.searchpath("galley.dashboard", package.path)
  if where then
    local root = where:gsub("lua/galley/dashboard/init%.lua$", "")
    return (fs.read(root .. path))
  end
  return nil
end


local function cookie_value(req, name)
  local c = req.headers.cookie
  if not c then return nil end
  for pair in (c .. ";"):gmatch("([^;]*);") do
    local k, v = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k == name then return v end
  end
  return nil
end


--- Creates a dashboard (not yet listening).
---@param opts {providers: {name: string, provider: table}[], read_only?: boolean, token?: string,
---  health?: fun(provider: table, id: string): table}
---@return table dashboard
function M.new(opts)
  assert(type(opts) == "table" and type(opts.providers) == "table", "dashboard.new: providers required")
  local self = setmetatable({
    providers = opts.providers,
    by_name = {},
    read_only = opts.read_only and true or false,
    token = opts.token or codec.random_hex(32),
    csrf = codec.random_hex(32),
    health_fn = opts.health or function(p, id) return require("galley.health").sample(p, id) end,
    health_cache = {},
    pm2 = {},
    tmux = {},
    state_dir = opts.state_dir,
  }, Dashboard)
  for _, e in ipairs(opts.providers) do self.by_name[e.name] = e.provider end
  log.register_secret(self.token) -- never in a log line (the CSRF token is sent to the page: not registered)
  return self
end


--- The URL to print (carries the access token).
function Dashboard:url()
  return ("http://127.0.0.1:%d/?token=%s"):format(self.port, self.token)
end


--- Listens on 127.0.0.1:port (0: a free one).
---@param port? integer
---@return integer|nil port
---@return galley.Error|nil err
function Dashboard:start(port)
  local server, err = httpd.serve({ port = port or 0, handler = function(req) return self:handle(req) end,
    max_body_bytes = 1024 * 1024 })
  if not server then return nil, err end
  self.server = server
  self.port = server:port()
  self.cookie = M.COOKIE .. "_" .. self.port
  return self.port
end


function Dashboard:stop()
  if self.server then
    self.server:stop()
    self.server = nil
  end
end


-- --- security ------------------------------------------------------------------------------

local function host_ok(self, req)
  local host = req.headers.host
  if type(host) ~= "string" then return false end
  local name, port = host:lower():match("^([%w%.]+):(%d+)$")
  if not name then name = host:lower() end
  if name ~= "127.0.0.1" and name ~= "localhost" then return false end
  return port == nil or tonumber(port) == self.port
end


local function origin_ok(self, req)
  local o = req.headers.origin
  if o == nil then return true end
  o = o:lower()
  return o == ("http://127.0.0.1:%d"):format(self.port) or o == ("http://localhost:%d"):format(self.port)
end


--- Checks a request; nil when it may proceed, else the 403 response. Also handles the login.
function Dashboard:guard(req)
  if not host_ok(self, req) then
    return fail(403, "DASHBOARD_FORBIDDEN_HOST", "this dashboard answers only to 127.0.0.1 and localhost")
  end
  local given = cookie_value(req, self.cookie)
  if given and codec.equal(given, self.token) then
    if req.method ~= "GET" and req.method ~= "HEAD" then
      local csrf = req.headers["x-csrf-token"] or ""
      if not codec.equal(csrf, self.csrf) or not origin_ok(self, req) then
        return fail(403, "DASHBOARD_CSRF", "missing or wrong CSRF token", "reload the page")
      end
      if self.read_only then
        return fail(403, "DASHBOARD_READ_ONLY", "the dashboard runs with --read-only")
      end
    end
    return nil
  end
  local q = req.query or {}
  if req.method == "GET" and req.path == "/" and type(q.token) == "string" and codec.equal(q.token, self.token) then
    return { status = 303, headers = headers({
      ["Set-Cookie"] = ("%s=%s; Path=/; HttpOnly; SameSite=Strict"):format(self.cookie, self.token),
      Location = "/",
    }), body = "" }
  end
  return fail(403, "DASHBOARD_TOKEN", "no valid access token",
    "open the URL `galley dashboard` printed (it carries ?token=...)")
end


-- --- data ----------------------------------------------------------------------------------

--- The runs of this machine: live ones from galley.run's run files (`<state>/runs/<id>`), then
--- finished ones from its history (`<state>/run-history/`), newest first.
function Dashboard:runs()
  local run = require("galley.run")
  local dir = (self.state_dir or paths.state_dir()) .. "/runs"
  local out, seen = json.array(), {}
  local ok, exists = pcall(run.check_runs_dir)
  if not ok then return out, exists end
  for _, name in ipairs(exists and fs.list(dir) or {}) do
    if name:match("^[%w%-_]+$") then
      local text = fs.read(dir .. "/" .. name) or ""
      local pid = tonumber(text:match("pid=(%d+)"))
      seen[name] = true
      out[#out + 1] = {
        id = name, recipe = text:match("recipe=([^\n]*)"), started = tonumber(text:match("started=(%d+)")),
        pid = pid, state = pid and fs.exists("/proc/" .. pid .. "/stat") and "running" or "dead",
      }
    end
  end
  table.sort(out, function(a, b) return (a.started or 0) > (b.started or 0) end)
  for _, rec in ipairs(run.history()) do
    if not seen[rec.id] then
      out[#out + 1] = { id = rec.id, recipe = rec.recipe, started = rec.started, finished = rec.finished,
        state = "finished", exit_code = rec.exit_code, stopped = #(rec.stopped or {}), kept = #(rec.kept or {}),
        leaks = #(rec.leaks or {}), cleanup = rec.cleanup }
    end
  end
  return out
end


local function ttl_left(inst)
  local ttl = inst.ttl or {}
  if type(ttl.expires_at) == "number" then return math.max(0, math.floor(ttl.expires_at - os.time())) end
  if type(ttl.seconds) == "number" and type(inst.created_at) == "number" then
    return math.max(0, math.floor(inst.created_at + ttl.seconds - os.time()))
  end
  return nil
end


-- Takes the stale health samples again, M.HEALTH_PARALLEL at a time, in one background task (one
-- at a time); the caller waits for it at most M.HEALTH_WAIT_MS, so a page with many instances
-- stays quick and shows the newer samples on its next refresh.
function Dashboard:refresh_health(items)
  if self.health_task and not self.health_task.done then return self.health_task end
  local now = runtime.now_ms()
  local todo = {}
  for _, it in ipairs(items) do
    local c = self.health_cache[it.key]
    if not c or now - c.at > M.HEALTH_TTL_MS then todo[#todo + 1] = it end
  end
  if #todo == 0 then return nil end
  self.health_task = task.spawn(function()
    for i = 1, #todo, M.HEALTH_PARALLEL do
      local batch = {}
      for j = i, math.min(i + M.HEALTH_PARALLEL - 1, #todo) do
        local it = todo[j]
        batch[#batch + 1] = task.spawn(function()
          local ok, h = pcall(self.health_fn, it.provider, it.id)
          self.health_cache[it.key] = { at = runtime.now_ms(),
            value = ok and h or { error = { code = type(h) == "table" and h.code or "INTERNAL_ERROR" } } }
        end)
      end
      task.join(batch)
    end
  end)
  return self.health_task
end


function Dashboard:instances()
  local out, want = json.array(), {}
  for _, e in ipairs(self.providers) do
    local ok, list = pcall(e.provider.instances.list)
    local entry = { provider = e.name, instances = json.array() }
    if not ok then
      entry.error = { code = type(list) == "table" and list.code or "INTERNAL_ERROR",
        message = type(list) == "table" and list.message or tostring(list) }
    else
      table.sort(list, function(a, b) return (a.created_at or 0) < (b.created_at or 0) end)
      for _, inst in ipairs(list) do
        local md = inst.metadata or {}
        local row = { id = inst.id, status = inst.status, created_at = inst.created_at, ttl_left = ttl_left(inst),
          run = md.galley_run, recipe = md.galley_recipe, kept = md.galley_keep == "1", snapshot = inst.snapshot_id }
        entry.instances[#entry.instances + 1] = row
        if inst.status == "ready" then
          want[#want + 1] = { key = e.name .. "/" .. inst.id, provider = e.provider, id = inst.id, row = row }
        end
      end
    end
    out[#out + 1] = entry
  end
  local live = {}
  for _, it in ipairs(want) do live[it.key] = true end
  for k in pairs(self.health_cache) do if not live[k] then self.health_cache[k] = nil end end
  local t = self:refresh_health(want)
  if t then pcall(task.with_timeout, M.HEALTH_WAIT_MS, function() t:wait() end) end
  for _, it in ipairs(want) do
    local c = self.health_cache[it.key]
    it.row.health = c and c.value
  end
  return out
end


function Dashboard:managers(pname)
  local p = self.by_name[pname]
  if not p then return nil end
  if not self.pm2[pname] then
    self.pm2[pname] = require("galley.process.pm2").new({ provider = p, log = log.silent() })
    self.tmux[pname] = require("galley.process.tmux").new({ provider = p, log = log.silent() })
  end
  return p, self.pm2[pname], self.tmux[pname]
end


--- PM2's list on an instance (`pm2 jlist`: a Node.js start, the costly part), shared by the
--- requests of the next M.PM2_LIST_TTL_MS: opening 8 logs of one instance runs it once.
--- `fresh`: not an answer that was started before this call (a session just started is in it).
function Dashboard:pm2_list(pname, id, fresh)
  local _, pm2 = self:managers(pname)
  local key = pname .. "/" .. id
  self.pm2_lists = self.pm2_lists or {}
  local c = self.pm2_lists[key]
  if not c or (c.task.done and (fresh or runtime.now_ms() - c.at > M.PM2_LIST_TTL_MS)) then
    c = { at = runtime.now_ms() }
    c.task = task.spawn(function() return pm2.list(id) end)
    self.pm2_lists[key] = c
  end
  local ok, list = c.task:result()
  if not ok then
    if self.pm2_lists[key] == c then self.pm2_lists[key] = nil end
    error(list, 0)
  end
  return list
end


function Dashboard:sessions(pname, id)
  local _, _, tmux = self:managers(pname)
  local out = { pm2 = json.array(), tmux = json.array() }
  local ok, list = pcall(self.pm2_list, self, pname, id)
  if ok then
    for _, s in ipairs(list) do
      out.pm2[#out.pm2 + 1] = { name = s.name, status = s.status, restarts = s.restarts, uptime_ms = s.uptime_ms,
        memory = s.memory, cpu = s.cpu, exit_code = s.exit_code, pid = s.pid }
    end
  else
    out.pm2_error = { code = type(list) == "table" and list.code or "INTERNAL_ERROR" }
  end
  ok, list = pcall(tmux.list, id)
  if ok then
    for _, s in ipairs(list) do
      out.tmux[#out.tmux + 1] = { name = s.name, status = s.status, created_at = s.created_at,
        exit_code = s.exit_code, width = s.width, height = s.height }
    end
  else
    out.tmux_error = { code = type(list) == "table" and list.code or "INTERNAL_ERROR" }
  end
  return out
end


-- --- live streams ---------------------------------------------------------------------------

-- $1 max bytes, then per followed log: out file, err file, out offset, err offset. Prints, per
-- log, "<out from> <out len> <err from> <err len>\n" then those bytes; an offset past a file's
-- end (truncated by a restart) reads from 0.
local READ_MANY = [[
max=$1; shift
NL='
'
# Few forks (the cost on a busy instance): one stat for every file, then tail|head only where
# there is something new. stat prints "<size> <name>" for the files that exist (the offsets among
# the arguments are looked up too, harmlessly: only the log paths are matched).
sizes=$(stat -L -c '%s %n' -- "$@" 2>/dev/null)
size_of() {
  S=0; rest=$sizes
  while [ -n "$rest" ]; do
    line=${rest%%"$NL"*}
    if [ "$line" = "$rest" ]; then rest=; else rest=${rest#*"$NL"}; fi
    if [ "${line#* }" = "$1" ]; then S=${line%% *}; return; fi
  done
}
part() { # $1 file, $2 offset -> O N
  size_of "$1"; O=$2
  [ "$O" -gt "$S" ] && O=0
  N=$((S - O)); [ "$N" -gt "$max" ] && N=$max
}
while [ $# -ge 4 ]; do
  part "$1" "$3"; ao=$O; an=$N
  part "$2" "$4"; bo=$O; bn=$N
  echo "$ao $an $bo $bn"
  [ "$an" -gt 0 ] && tail -c +"$((ao + 1))" -- "$1" | head -c "$an"
  [ "$bn" -gt 0 ] && tail -c +"$((bo + 1))" -- "$2" | head -c "$bn"
  shift 4
done
exit 0
]]


-- Keeps whole lines only (unless a line is longer than LOG_CHUNK): returns text, bytes used.
local function whole_lines(s)
  if #s == 0 then return "", 0 end
  local last = s:match(".*()\n")
  if last then return s:sub(1, last), last end
  if #s >= M.LOG_CHUNK then return s, #s end
  return "", 0
end


local function sse(id, event, data)
  local parts = {}
  if id then parts[#parts + 1] = "id: " .. id end
  parts[#parts + 1] = "event: " .. event
  parts[#parts + 1] = "data: " .. json.encode(log.redact(data))
  return table.concat(parts, "\n") .. "\n\n"
end


local SSE_HEADERS = { ["Content-Type"] = "text/event-stream; charset=utf-8", ["X-Accel-Buffering"] = "no" }


-- Wakes a follower whose stream waits for its queue.
local function push(f, item)
  f.queue[#f.queue + 1] = item
  if f.token then
    local tok = f.token
    f.token = nil
    task.wake(tok)
  end
end


-- One exec reads every log followed on the instance: results go to each follower's queue.
local function poll_once(p, id, followers)
  local list, args = {}, { "-c", READ_MANY, "galley-dashboard", tostring(M.LOG_CHUNK) }
  for f in pairs(followers) do
    list[#list + 1] = f
    for _, v in ipairs({ f.out_log, f.err_log, tostring(f.offs.out), tostring(f.offs.err) }) do args[#args + 1] = v end
  end
  local r = p.exec(id, { kind = "argv", command = "sh", args = args }, { timeout_ms = 15000 })
  local s, pos = r.stdout or "", 1
  local now = runtime.now_ms()
  for _, f in ipairs(list) do
    local a, b, c, d, rest = s:match("^(%d+) (%d+) (%d+) (%d+)\n()", pos)
    if not a then error(require("galley.errors").new("PROCESS_ERROR", "cannot read the logs"), 0) end
    a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    local out = s:sub(rest, rest + b - 1)
    local err = s:sub(rest + b, rest + b + d - 1)
    pos = rest + b + d
    if followers[f] then
      local ot, on = whole_lines(out)
      local et, en = whole_lines(err)
      local reset = a < f.offs.out or c < f.offs.err
      f.offs.out, f.offs.err = a + on, c + en
      if ot ~= "" or et ~= "" or reset then
        f.last = now
        push(f, sse(("%d.%d"):format(f.offs.out, f.offs.err), "log", { out = ot, err = et, reset = reset or nil }))
      elseif now - f.last > M.KEEPALIVE_MS then
        f.last = now -- a comment: a client that went away is noticed when it fails to arrive
        push(f, ": keep-alive\n\n")
      end
    end
  end
end


-- The followers of an instance's logs share one poller task: one exec per M.POLL_MS for all.
function Dashboard:follow(pname, id, f)
  local key = pname .. "/" .. id
  self.pollers = self.pollers or {}
  local poller = self.pollers[key]
  if not poller then
    poller = { followers = {} }
    self.pollers[key] = poller
    local p = self.by_name[pname]
    poller.task = task.spawn(function()
      while next(poller.followers) do
        local ok, err = pcall(poll_once, p, id, poller.followers)
        if not ok then
          if errors.is(err, "INTERRUPTED") then break end
          for g in pairs(poller.followers) do
            push(g, sse(nil, "error", { code = type(err) == "table" and err.code or "INTERNAL_ERROR" }))
            push(g, false) -- the stream ends; the browser reconnects later
          end
          break
        end
        if not pcall(task.sleep, M.POLL_MS) then break end
      end
      if self.pollers[key] == poller then self.pollers[key] = nil end
      for g in pairs(poller.followers) do push(g, false) end
    end)
    poller.task.name = "dashboard logs " .. key
  end
  poller.followers[f] = true
  return function() poller.followers[f] = nil end
end


--- GET /api/log: a PM2 session's out and err logs as server-sent events. Each event's id is
--- "<out offset>.<err offset>"; Last-Event-ID (or ?from=) resumes there, so nothing is sent twice.
function Dashboard:log_stream(req, pname, id, name)
  local ok, list = pcall(self.pm2_list, self, pname, id)
  if not ok then return fail(404, type(list) == "table" and list.code or "NOT_FOUND", "cannot list PM2 processes") end
  local function find()
    for _, s in ipairs(list) do if s.name == name then return s end end
  end
  local info = find()
  if not info then -- started since the shared list was made? Ask once more.
    ok, list = pcall(self.pm2_list, self, pname, id, true)
    info = ok and find()
  end
  if not info then return fail(404, "NOT_FOUND", "no PM2 process " .. name) end
  local from = req.headers["last-event-id"] or (req.query or {}).from or ""
  local oo, eo = from:match("^(%d+)%.(%d+)$")
  local f = { out_log = info.out_log or "/dev/null", err_log = info.err_log or "/dev/null", queue = {},
    offs = { out = math.tointeger(tonumber(oo or "0")) or 0, err = math.tointeger(tonumber(eo or "0")) or 0 },
    last = runtime.now_ms() }
  push(f, sse(nil, "hello", { name = name, manager = "pm2" })) -- the page knows it is live
  local unfollow = self:follow(pname, id, f)
  local function stream()
    while #f.queue == 0 do
      f.token = task.token()
      local woke = task.await(f.token)
      if not woke then
        f.token = nil
        return false -- cancelled (Ctrl-C, the server stopping)
      end
    end
    local item = table.remove(f.queue, 1)
    if item == false then return nil end
    return item
  end
  return { status = 200, headers = headers(SSE_HEADERS), stream = stream, close = unfollow }
end


--- GET /api/screen: a tmux session's screen (colours as HTML) as server-sent events, sent when
--- it changes.
function Dashboard:screen_stream(pname, id, name)
  local _, _, tmux = self:managers(pname)
  local last, last_sent = nil, runtime.now_ms()
  local function stream()
    while true do
      local ok, text = pcall(tmux.capture, id, name, { escapes = true })
      if not ok then
        if last == false then return nil end
        last = false
        return sse(nil, "error", { code = type(text) == "table" and text.code or "INTERNAL_ERROR" })
      end
      text = log.redact(text)
      if text ~= last then
        last, last_sent = text, runtime.now_ms()
        return "event: screen\ndata: " .. json.encode({ html = ansi.to_html(text) }) .. "\n\n"
      end
      if runtime.now_ms() - last_sent > M.KEEPALIVE_MS then
        last_sent = runtime.now_ms()
        return ": keep-alive\n\n"
      end
      if not pcall(task.sleep, M.POLL_MS) then return false end
    end
  end
  return { status = 200, headers = headers(SSE_HEADERS), stream = stream }
end


-- --- routes ---------------------------------------------------------------------------------

local function body_json(req)
  local v = json.decode(req.body or "")
  if type(v) ~= "table" then return nil end
  return v
end


local function error_response(err)
  local code = type(err) == "table" and err.code or "INTERNAL_ERROR"
  local status = code == "NOT_FOUND" and 404 or (code == "VALIDATION_ERROR" and 400) or 500
  return fail(status, code, type(err) == "table" and err.message or tostring(err), type(err) == "table" and err.hint)
end


function Dashboard:action(path, b)
  local p, pm2, tmux = self:managers(b.provider or "")
  if not p then return fail(400, "VALIDATION_ERROR", "unknown provider " .. tostring(b.provider)) end
  if type(b.id) ~= "string" then return fail(400, "VALIDATION_ERROR", "id must be a string") end
  local ok, err
  if path == "/api/instance/stop" then
    ok, err = pcall(p.instances.stop, b.id)
    self.health_cache[b.provider .. "/" .. b.id] = nil
  else
    if type(b.name) ~= "string" then return fail(400, "VALIDATION_ERROR", "name must be a string") end
    local mgr = b.manager == "tmux" and tmux or pm2
    if path == "/api/session/stop" then
      ok, err = pcall(mgr.stop, b.id, b.name)
    elseif path == "/api/session/restart" then
      if b.manager == "tmux" then
        return fail(400, "VALIDATION_ERROR", "a tmux session cannot be restarted", "stop it, or restart a PM2 one")
      end
      ok, err = pcall(pm2.restart, b.id, b.name)
    elseif path == "/api/session/keys" then
      if b.manager ~= "tmux" or type(b.text) ~= "string" then
        return fail(400, "VALIDATION_ERROR", "keys go to a tmux session: {manager = \"tmux\", text}")
      end
      ok, err = pcall(tmux.send_keys, b.id, b.name, b.text, { enter = b.enter and true or false })
    else
      return fail(404, "NOT_FOUND", "no such action")
    end
  end
  if self.pm2_lists then self.pm2_lists[b.provider .. "/" .. b.id] = nil end
  if not ok then return error_response(err) end
  return send_json(200, { ok = true })
end


--- The request handler.
function Dashboard:handle(req)
  local denied = self:guard(req)
  if denied then return denied end
  local path, q = req.path, req.query or {}
  if req.method == "GET" then
    local a = ASSETS[path]
    if a then
      local text = asset(a[1])
      if not text then return fail(500, "DASHBOARD_ASSET", "asset missing: " .. a[1]) end
      return respond(200, text, a[2])
    elseif path == "/api/state" then
      local runs, err = self:runs()
      local names = json.array()
      for _, e in ipairs(self.providers) do names[#names + 1] = e.name end
      local body = log.redact({ read_only = self.read_only, providers = names, runs = runs,
        runs_error = err and { code = err.code } or nil })
      body.csrf = self.csrf -- after redaction: it looks like a token, and the page needs it
      return respond(200, json.encode(body), "application/json")
    elseif path == "/api/instances" then
      return send_json(200, self:instances())
    end
    if not self.by_name[q.provider or ""] or type(q.id) ~= "string" then
      return fail(400, "VALIDATION_ERROR", "provider and id are required")
    end
    if path == "/api/sessions" then
      return send_json(200, self:sessions(q.provider, q.id))
    elseif path == "/api/log" and type(q.name) == "string" then
      return self:log_stream(req, q.provider, q.id, q.name)
    elseif path == "/api/screen" and type(q.name) == "string" then
      return self:screen_stream(q.provider, q.id, q.name)
    end
    return fail(404, "NOT_FOUND", "no such page")
  elseif req.method == "POST" then
    local b = body_json(req)
    if not b then return fail(400, "VALIDATION_ERROR", "the body must be a JSON object") end
    return self:action(path, b)
  end
  return fail(405, "DASHBOARD_METHOD", "method not allowed")
end


--- The providers to show: names given (default every configured one: local, morph when
--- MORPH_API_KEY is set, proxmox when PVE_URL is set, as `galley gc` sweeps them).
---@param names string[]|nil
---@return {name: string, provider: table}[]
function M.providers(names)
  if not names or #names == 0 then
    names = require("galley.providers").configured()
  end
  local out = {}
  for _, n in ipairs(names) do
    out[#out + 1] = { name = n, provider = require("galley.providers").new(n, { log = log.silent() }) }
  end
  return out
end


return M
