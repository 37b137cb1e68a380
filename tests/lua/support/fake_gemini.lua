--- support.fake_gemini: a FAKE of the Gemini API (generativelanguage v1beta), for specs only.
-- The real Gemini CLI (npm @google/gemini-cli) runs in the specs; Google's API cannot be reached
-- from tests, so this loopback server (galley.core.httpd on 127.0.0.1) plays it. Point the CLI
-- at it with GOOGLE_GEMINI_BASE_URL=fake.base_url (read by gemini-cli for the "gemini-api-key"
-- auth type, which ~/.gemini/settings.json must select: see galley.agents.gemini).
--
--   local fake = require("support.fake_gemini").start{reply = "FAKE says hi"}
--   fake.requests        -> {{method, path, query, headers (lower-case), body, json}, ...}
--   fake.generations()   -> the generateContent/streamGenerateContent requests, oldest first
--   fake.find_prompt(p)  -> the request whose last user turn has a text part equal to p
--   fake.stop()
--
-- What it answers:
-- - POST /v1beta/models/<model>:streamGenerateContent?alt=sse: server-sent `data:` events, the
--   reply in a few text parts, the last with finishReason STOP and usageMetadata.
-- - POST /v1beta/models/<model>:generateContent: one candidate with the reply (JSON).
-- - POST /v1beta/models/<model>:countTokens: {"totalTokens": <body bytes / 4>}.
-- - a request without `x-goog-api-key`: 403 PERMISSION_DENIED; anything else: 404 NOT_FOUND,
--   both in Google's error envelope.
local cjson = require("cjson").new()
local gjson = require("galley.json") -- encodes empty arrays as []
local httpd = require("galley.core.httpd")

local M = {}

M.DEFAULT_REPLY = "Hello from the FAKE Gemini API."

local function json(status, t)
  return { status = status, headers = { ["Content-Type"] = "application/json" }, body = gjson.encode(t) }
end

local function api_error(status, kind, message)
  return json(status, { error = { code = status, message = message, status = kind } })
end

--- Starts the FAKE on a free loopback port.
---@param opts? {reply?: string}
function M.start(opts)
  opts = opts or {}
  local self = { requests = {} }
  local reply = opts.reply or M.DEFAULT_REPLY

  local function candidate(text, last, req)
    local c = { content = { parts = { { text = text } }, role = "model" }, index = 0 }
    local out = { candidates = { c }, modelVersion = "gemini-fake" }
    if last then
      c.finishReason = "STOP"
      out.usageMetadata = { promptTokenCount = math.max(1, #req.body // 4),
        candidatesTokenCount = math.max(1, #reply // 4),
        totalTokenCount = math.max(1, #req.body // 4) + math.max(1, #reply // 4) }
    end
    return out
  end

  local function handle(req)
    local ok, body = pcall(cjson.decode, req.body or "")
    local rec = { method = req.method, path = req.path, query = req.query, headers = req.headers, body = req.body,
      json = ok and type(body) == "table" and body or nil }
    self.requests[#self.requests + 1] = rec
    if not (req.headers and (req.headers["x-goog-api-key"] or "") ~= "") then
      return api_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
    end
    local method = req.method == "POST" and req.path:match("^/v1beta/models/[^/:]+:(%a+)$")
    if method == "countTokens" then return json(200, { totalTokens = math.max(1, #req.body // 4) }) end
    if method == "generateContent" then return json(200, candidate(reply, true, req)) end
    if method == "streamGenerateContent" then
      local events = {}
      local n = math.max(1, math.ceil(#reply / 8))
      for i = 1, n do
        local piece = reply:sub((i - 1) * 8 + 1, i * 8)
        events[i] = "data: " .. gjson.encode(candidate(piece, i == n, req)) .. "\r\n\r\n"
      end
      local i = 0
      return {
        status = 200,
        headers = { ["Content-Type"] = "text/event-stream" },
        stream = function()
          i = i + 1
          return events[i]
        end,
      }
    end
    return api_error(404, "NOT_FOUND", "Not found: " .. req.method .. " " .. req.path)
  end

  local server = assert(httpd.serve({ port = 0, handler = handle }))
  self.port = server:port()
  self.base_url = ("http://127.0.0.1:%d"):format(self.port)

  function self.generations()
    local out = {}
    for _, r in ipairs(self.requests) do
      if r.method == "POST" and r.path:match(":%a*[gG]enerateContent$") then out[#out + 1] = r end
    end
    return out
  end

  function self.find_prompt(prompt)
    for _, r in ipairs(self.generations()) do
      local contents = r.json and r.json.contents or {}
      for _, turn in ipairs(contents) do
        if turn.role == "user" then
          for _, part in ipairs(turn.parts or {}) do
            if part.text == prompt then return r end
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
