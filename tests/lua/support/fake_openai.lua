--- support.fake_openai: a FAKE of the OpenAI Responses API, for specs only.
-- The real Codex CLI (npm @openai/codex) runs in the specs; OpenAI's API cannot be reached from
-- tests, so this loopback server (galley.core.httpd on 127.0.0.1) plays it. Point codex at it
-- with the config keys in fake.codex_config (`-c` pairs: a model provider whose base_url is the
-- FAKE and which uses the login in ~/.codex/auth.json, requires_openai_auth).
--
--   local fake = require("support.fake_openai").start{reply = "FAKE says hi"}
--   fake.requests         -> {{method, path, headers (lower-case), body, json}, ...}
--   fake.responses()      -> the POST /v1/responses requests, oldest first
--   fake.find_prompt(p)   -> the /v1/responses request whose user input has text equal to p
--   fake.stop()
--
-- What it answers:
-- - POST /v1/responses (`"stream": true`): server-sent events response.created,
--   response.output_item.added, response.output_text.delta (the reply in pieces),
--   response.output_item.done (an assistant message with one output_text), response.completed
--   (with usage). Without a Bearer token: 401 with OpenAI's error envelope.
-- - GET /v1/models: {"object": "list", "data": []}.
-- - anything else: 404 with OpenAI's error envelope.
local cjson = require("cjson").new()
local gjson = require("galley.json") -- encodes empty arrays as []
local httpd = require("galley.core.httpd")

local M = {}

M.DEFAULT_REPLY = "Hello from the FAKE OpenAI API."

local function json(status, t)
  return { status = status, headers = { ["Content-Type"] = "application/json" }, body = gjson.encode(t) }
end

local function api_error(status, kind, message)
  return json(status, { error = { message = message, type = kind, param = gjson.null, code = gjson.null } })
end

local function sse(data)
  return ("event: %s\ndata: %s\n\n"):format(data.type, gjson.encode(data))
end

--- Starts the FAKE on a free loopback port.
---@param opts? {reply?: string}
function M.start(opts)
  opts = opts or {}
  local self = { requests = {}, count = 0 }
  local reply = opts.reply or M.DEFAULT_REPLY

  local function respond(req)
    self.count = self.count + 1
    local rid, mid = ("resp_fake%04d"):format(self.count), ("msg_fake%04d"):format(self.count)
    local usage = { input_tokens = math.max(1, #req.body // 4), input_tokens_details = { cached_tokens = 0 },
      output_tokens = math.max(1, #reply // 4), output_tokens_details = { reasoning_tokens = 0 },
      total_tokens = math.max(1, #req.body // 4) + math.max(1, #reply // 4) }
    local empty = gjson.array()
    local events = {
      sse({ type = "response.created", response = { id = rid, object = "response", status = "in_progress" } }),
      sse({ type = "response.output_item.added", output_index = 0, item = { type = "message", id = mid,
        role = "assistant", status = "in_progress", content = empty } }),
    }
    for i = 1, #reply, 8 do
      events[#events + 1] = sse({ type = "response.output_text.delta", item_id = mid, output_index = 0,
        content_index = 0, delta = reply:sub(i, i + 7) })
    end
    events[#events + 1] = sse({ type = "response.output_item.done", output_index = 0, item = { type = "message",
      id = mid, role = "assistant", status = "completed",
      content = { { type = "output_text", text = reply, annotations = empty } } } })
    events[#events + 1] = sse({ type = "response.completed", response = { id = rid, object = "response",
      status = "completed", usage = usage } })
    local i = 0
    return {
      status = 200,
      headers = { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache" },
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
    local auth = req.headers and req.headers.authorization
    if not (auth and auth:match("^[Bb]earer .+")) then
      return api_error(401, "invalid_request_error", "You didn't provide an API key.")
    end
    if req.method == "GET" and req.path == "/v1/models" then
      return json(200, { object = "list", data = gjson.array() })
    end
    if req.method == "POST" and req.path == "/v1/responses" then
      if not rec.json then return api_error(400, "invalid_request_error", "the body is not a JSON object") end
      return respond(req)
    end
    return api_error(404, "invalid_request_error", "Not found: " .. req.method .. " " .. req.path)
  end

  local server = assert(httpd.serve({ port = 0, handler = handle }))
  self.port = server:port()
  self.base_url = ("http://127.0.0.1:%d/v1"):format(self.port)
  -- `codex exec -c KEY=VALUE` pairs selecting a provider that talks to the FAKE.
  self.codex_config = {
    ("model_providers.fake={name=\"FAKE\",base_url=\"%s\",wire_api=\"responses\",requires_openai_auth=true}")
      :format(self.base_url),
    "model_provider=\"fake\"",
  }

  function self.responses()
    local out = {}
    for _, r in ipairs(self.requests) do
      if r.method == "POST" and r.path == "/v1/responses" then out[#out + 1] = r end
    end
    return out
  end

  function self.find_prompt(prompt)
    for _, r in ipairs(self.responses()) do
      for _, item in ipairs(r.json and r.json.input or {}) do
        if type(item) == "table" and item.role == "user" and type(item.content) == "table" then
          for _, c in ipairs(item.content) do
            if type(c) == "table" and c.text == prompt then return r end
          end
        end
      end
    end
  end

  function self.stop()
    if server then server:stop() end
    server = nil
  end

  return self
end

return M
