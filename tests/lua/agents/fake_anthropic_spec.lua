-- support.fake_anthropic, the loopback FAKE of the Anthropic Messages API the real Claude CLI
-- talks to in the agent specs: the answers have the real API's shapes (one JSON message, or the
-- server-sent events in the documented order), requests are recorded, a request without
-- credentials is refused, and the egress trap records and refuses proxy requests.
local cjson = require("cjson")
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local fake_api = require("support.fake_anthropic")

local REPLY = "Héllo ünïcödé 日本語 🚀 — a reply long enough to come in several deltas."

describe("the FAKE Anthropic API #agents #fake_anthropic", function()
  local api

  setup(function() api = fake_api.start({ reply = REPLY }) end)
  teardown(function() api.stop() end)
  before_each(function()
    api.reset()
    api.fail = nil
  end)

  local function post(path, body, headers)
    local h = { ["Content-Type"] = "application/json", ["anthropic-version"] = "2023-06-01" }
    for k, v in pairs(headers or {}) do h[k] = v end
    return assert(http.request({ method = "POST", url = api.base_url .. path, headers = h,
      body = type(body) == "string" and body or cjson.encode(body), timeout_ms = 10000 }))
  end

  local MSG = { model = "claude-galley-x", max_tokens = 16,
    messages = { { role = "user", content = { { type = "text", text = "first" }, { type = "text", text = "the prompt" } } } } }

  it("answers a message as one JSON object and records the request", function()
    local r = post("/v1/messages", MSG, { ["x-api-key"] = "sk-ant-api03-k" })
    assert.are.equal(200, r.status)
    local m = cjson.decode(r.body)
    assert.are.equal("message", m.type)
    assert.are.equal("assistant", m.role)
    assert.are.equal("claude-galley-x", m.model)
    assert.are.same({ { type = "text", text = REPLY } }, m.content)
    assert.are.equal("end_turn", m.stop_reason)
    assert.is_number(m.usage.input_tokens)
    assert.is_number(m.usage.output_tokens)
    assert.truthy(m.id:find("^msg_"))
    local req = assert(api.find_prompt("the prompt"))
    assert.are.same({ "x-api-key", "sk-ant-api03-k" }, { fake_api.credential(req) })
    assert.are.equal("2023-06-01", req.headers["anthropic-version"])
    assert.is_nil(api.find_prompt("first "))
  end)

  it("streams the documented server-sent events, the deltas making up the reply", function()
    local body = {}
    for k, v in pairs(MSG) do body[k] = v end
    body.stream = true
    local r = post("/v1/messages", body, { Authorization = "Bearer sk-ant-oat01-t" })
    assert.are.equal(200, r.status)
    assert.truthy(r.headers["content-type"]:find("text/event-stream", 1, true))
    local names, text = {}, {}
    for event, data in r.body:gmatch("event: ([%w_]+)\ndata: ([^\n]*)\n\n") do
      local d = cjson.decode(data)
      assert.are.equal(event, d.type)
      if names[#names] ~= event then names[#names + 1] = event end
      if event == "message_start" then assert.are.equal("claude-galley-x", d.message.model) end
      if event == "content_block_delta" then
        assert.are.equal("text_delta", d.delta.type)
        text[#text + 1] = d.delta.text
      end
      if event == "message_delta" then assert.are.equal("end_turn", d.delta.stop_reason) end
    end
    assert.are.same({ "message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
      "message_delta", "message_stop" }, names)
    assert.is_true(#text > 3)
    assert.are.equal(REPLY, table.concat(text))
    assert.are.same({ "bearer", "sk-ant-oat01-t" }, { fake_api.credential(assert(api.find_prompt("the prompt"))) })
  end)

  it("refuses a request without credentials, counts tokens, and fails on demand", function()
    local r = post("/v1/messages", MSG)
    assert.are.equal(401, r.status)
    assert.are.equal("authentication_error", cjson.decode(r.body).error.type)
    r = post("/v1/messages/count_tokens", MSG, { ["x-api-key"] = "k" })
    assert.are.equal(200, r.status)
    assert.is_number(cjson.decode(r.body).input_tokens)
    assert.are.equal(1, #api.messages()) -- the refused one is recorded too; count_tokens is not a message
    api.fail = { status = 400 }
    r = post("/v1/messages", MSG, { ["x-api-key"] = "k" })
    assert.are.equal(400, r.status)
    assert.are.equal("invalid_request_error", cjson.decode(r.body).error.type)
  end)

  it("records and refuses proxy requests for other hosts (the egress trap)", function()
    assert.are.equal(api.base_url, api.env.ANTHROPIC_BASE_URL)
    assert.are.equal(api.base_url, api.env.HTTPS_PROXY)
    for _, url in ipairs({ "https://api.anthropic.com/api/oauth/profile", "http://example.invalid/x" }) do
      local r = assert(proc.run({ argv = { "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_connect}",
        "-m", "10", "-x", api.base_url, url }, timeout_ms = 20000 }))
      assert.truthy(r.stdout:find("403", 1, true), r.stdout)
    end
    assert.are.same({ "CONNECT api.anthropic.com:443", "GET http://example.invalid/x" }, api.outside())
  end)
end)
