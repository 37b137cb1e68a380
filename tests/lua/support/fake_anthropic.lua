--- support.fake_anthropic: a FAKE of the Anthropic Messages API, for specs only.
-- The real Claude Code CLI runs in the specs; Anthropic's API cannot be reached from tests, so
-- this loopback server (galley.core.httpd on 127.0.0.1, in the spec's own process) plays it.
-- Point the CLI at it with ANTHROPIC_BASE_URL=fake.base_url.
--
--   local fake = require("support.fake_anthropic").start{reply = "FAKE says hi"}
--   -- ... run `claude -p` with ANTHROPIC_BASE_URL = fake.base_url ...
--   fake.requests        -> {{method, path, query, headers (lower-case names), body, json}, ...}
--   fake.messages()      -> the POST /v1/messages requests (not count_tokens), oldest first
--   fake.find_prompt(p)  -> the /v1/messages request whose last user message has a text block
--                           equal to p byte for byte (nil if none)
--   fake.credential(req) -> "bearer", token | "x-api-key", key | nil
--   fake.env             -> the environment the CLI needs (below)
--   fake.outside()       -> {"CONNECT api.anthropic.com:443", "GET http://host/x", ...}: every
--                           attempt to reach a host other than the FAKE (see "egress trap")
--   fake.stop()
--
-- Egress trap: fake.env sets ANTHROPIC_BASE_URL to the FAKE and also HTTPS_PROXY / HTTP_PROXY to
-- it, with NO_PROXY=127.0.0.1,localhost. The CLI's requests to the FAKE go direct; anything it
-- sends elsewhere (a hard-coded https://api.anthropic.com endpoint such as the OAuth profile
-- fetch made when the token has the user:profile scope) arrives here as a proxy request, is
-- recorded by fake.outside() and refused with 403, so nothing leaves this machine and specs can
-- assert exactly what the CLI tried. fake.env also sets CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
-- and DISABLE_AUTOUPDATER=1.
--
-- What it answers (the shapes the real API uses):
-- - POST /v1/messages: the canned reply as one text block. With `"stream": true` in the body,
--   server-sent events one per chunk: message_start, content_block_start, ping,
--   content_block_delta (the reply in a few text_delta pieces), content_block_stop,
--   message_delta (stop_reason end_turn, usage), message_stop. Otherwise one JSON message. The
--   model in the answer is the model of the request.
-- - POST /v1/messages/count_tokens: {"input_tokens": <body bytes / 4>}.
-- - HEAD / GET on any path: 200 {} (connectivity and metadata checks; harmless).
-- - a proxy request (CONNECT host:port, or an absolute URI): 403, recorded (egress trap).
-- - anything else: 404 with the API's error envelope ({"type":"error","error":{...}}).
-- A request without credentials (no `Authorization: Bearer …`, no `x-api-key`) gets 401
-- authentication_error, as from the real API. Setting fake.fail = {status = 400, type =
-- "invalid_request_error"} makes /v1/messages answer that error (the CLI does not retry a 400).
-- opts.reply_fn(req) may return the reply text for a request (default: opts.reply).
-- fake.on_message(req), when set, is called before each /v1/messages answer: the CLI is then
-- alive and waiting, so a spec can look at the running session (e.g. every process's argv).
local cjson = require("cjson").new()
local httpd = require("galley.core.httpd")

local M = {}

M.DEFAULT_REPLY = "Hello from the FAKE Anthropic API."

local function json(status, t)
  return { status = status, headers = { ["Content-Type"] = "application/json", ["request-id"] = "req_fake" },
    body = cjson.encode(t) }
end

local function api_error(status, kind, message)
  return json(status, { type = "error", error = { type = kind, message = message } })
end

local function sse(event, data)
  return ("event: %s\ndata: %s\n\n"):format(event, cjson.encode(data))
end

-- The reply in pieces of at most 8 bytes, cut only before an ASCII byte (UTF-8 stays whole).
local function pieces(text)
  local out, i = {}, 1
  while i <= #text do
    local j = math.min(i + 7, #text)
    while j < #text and text:byte(j + 1) >= 0x80 and text:byte(j + 1) < 0xC0 do j = j + 1 end
    out[#out + 1] = text:sub(i, j)
    i = j + 1
  end
  return out
end

--- "bearer", token or "x-api-key", key from a recorded request; nil when it carried neither.
---@param req table
---@return string|nil kind
---@return string|nil secret
function M.credential(req)
  local h = req.headers or {}
  local bearer = h.authorization and h.authorization:match("^[Bb]earer (.+)$")
  if bearer then return "bearer", bearer end
  if h["x-api-key"] then return "x-api-key", h["x-api-key"] end
  return nil
end

--- Starts the FAKE on a free loopback port.
---@param opts? {reply?: string, reply_fn?: fun(req: table): string}
function M.start(opts)
  opts = opts or {}
  local self = { requests = {}, count = 0 }
  local reply = opts.reply or M.DEFAULT_REPLY

  local function message(req, body)
    local text = opts.reply_fn and opts.reply_fn(req) or reply
    self.count = self.count + 1
    local id = ("msg_fake%06d"):format(self.count)
    local model = type(body.model) == "string" and body.model or "claude-fake"
    local usage_in = math.max(1, #req.body // 4)
    local usage_out = math.max(1, #text // 4)
    if body.stream ~= true then
      return json(200, { id = id, type = "message", role = "assistant", model = model,
        content = { { type = "text", text = text } }, stop_reason = "end_turn", stop_sequence = cjson.null,
        usage = { input_tokens = usage_in, output_tokens = usage_out } })
    end
    local events = {
      sse("message_start", { type = "message_start", message = { id = id, type = "message", role = "assistant",
        model = model, content = setmetatable({}, cjson.array_mt), stop_reason = cjson.null,
        stop_sequence = cjson.null, usage = { input_tokens = usage_in, output_tokens = 1 } } }),
      sse("content_block_start", { type = "content_block_start", index = 0,
        content_block = { type = "text", text = "" } }),
      sse("ping", { type = "ping" }),
    }
    for _, piece in ipairs(pieces(text)) do
      events[#events + 1] = sse("content_block_delta", { type = "content_block_delta", index = 0,
        delta = { type = "text_delta", text = piece } })
    end
    events[#events + 1] = sse("content_block_stop", { type = "content_block_stop", index = 0 })
    events[#events + 1] = sse("message_delta", { type = "message_delta",
      delta = { stop_reason = "end_turn", stop_sequence = cjson.null }, usage = { output_tokens = usage_out } })
    events[#events + 1] = sse("message_stop", { type = "message_stop" })
    local i = 0
    return {
      status = 200,
      headers = { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache", ["request-id"] = "req_fake" },
      stream = function()
        i = i + 1
        return events[i]
      end,
    }
  end

  local function handle(req)
    local ok, body = pcall(cjson.decode, req.body or "")
    local rec = { method = req.method, path = req.path, query = req.query, headers = req.headers, body = req.body,
      json = ok and type(body) == "table" and body or nil }
    self.requests[#self.requests + 1] = rec
    if req.method == "CONNECT" or req.path:match("^%a+://") then
      rec.outside = true
      return { status = 403, headers = { ["Content-Type"] = "text/plain" }, body = "FAKE egress trap: refused\n" }
    end
    if req.method == "HEAD" or req.method == "GET" then return json(200, {}) end
    if req.method ~= "POST" then return api_error(404, "not_found_error", "Not Found") end
    if req.path ~= "/v1/messages" and req.path ~= "/v1/messages/count_tokens" then
      return api_error(404, "not_found_error", "Not Found")
    end
    if not M.credential(req) then
      return api_error(401, "authentication_error", "x-api-key or Authorization header is required")
    end
    if not rec.json then return api_error(400, "invalid_request_error", "the body is not a JSON object") end
    if req.path == "/v1/messages/count_tokens" then return json(200, { input_tokens = math.max(1, #req.body // 4) }) end
    if req.path == "/v1/messages" and self.on_message then self.on_message(rec) end
    if self.fail then
      return api_error(self.fail.status or 400, self.fail.type or "invalid_request_error", "FAKE failure")
    end
    return message(req, rec.json)
  end

  local server = assert(httpd.serve({ port = 0, handler = handle }))
  self.port = server:port()
  self.base_url = ("http://127.0.0.1:%d"):format(self.port)

  self.env = {
    ANTHROPIC_BASE_URL = self.base_url,
    HTTPS_PROXY = self.base_url, HTTP_PROXY = self.base_url, https_proxy = self.base_url, http_proxy = self.base_url,
    NO_PROXY = "127.0.0.1,localhost", no_proxy = "127.0.0.1,localhost",
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1", DISABLE_AUTOUPDATER = "1",
  }

  function self.outside()
    local out = {}
    for _, r in ipairs(self.requests) do
      if r.outside then out[#out + 1] = r.method .. " " .. r.path end
    end
    return out
  end

  function self.messages()
    local out = {}
    for _, r in ipairs(self.requests) do
      if r.method == "POST" and r.path == "/v1/messages" then out[#out + 1] = r end
    end
    return out
  end

  function self.find_prompt(prompt)
    for _, r in ipairs(self.messages()) do
      local msgs = r.json and r.json.messages or {}
      local last
      for _, m in ipairs(msgs) do
        if m.role == "user" then last = m end
      end
      local content = last and last.content
      if content == prompt then return r end
      if type(content) == "table" then
        for _, block in ipairs(content) do
          if type(block) == "table" and block.type == "text" and block.text == prompt then return r end
        end
      end
    end
  end

  function self.reset() self.requests = {} end

  function self.stop()
    if server then server:stop() end
    server = nil
  end

  return self
end

return M
