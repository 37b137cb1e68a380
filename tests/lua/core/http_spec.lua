-- galley.core.http against a tiny loopback server (python3) started for this spec.
local support = require("support")
local http = require("galley.core.http")
local cjson = require("cjson")

-- Serves fixed responses on 127.0.0.1; prints "PORT PID" once listening.
--   /echo        JSON {method, path, body, headers, port}  (port = the client's TCP port)
--   /status/N    status N, body "status N"
--   /slow?ms=N   waits N ms, then 200
--   /truncate    promises 100 bytes, sends 10, closes
--   /reset       closes the connection without answering (/resets: how many times so far)
--   /multi       two X-Multi headers
local SERVER = [[
import http.server, json, os, socket, sys, time, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, status, body, extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra: self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(data)
    def handle_any(self):
        u = urllib.parse.urlparse(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode() if n else ""
        if u.path == "/echo":
            hs = {k.lower(): v for k, v in self.headers.items()}
            self.reply(200, json.dumps({"method": self.command, "path": self.path, "body": body,
                                        "headers": hs, "port": self.client_address[1]}))
        elif u.path.startswith("/status/"):
            s = int(u.path.split("/")[2]); self.reply(s, "status %d" % s)
        elif u.path == "/slow":
            time.sleep(int(urllib.parse.parse_qs(u.query)["ms"][0]) / 1000); self.reply(200, "slow")
        elif u.path == "/truncate":
            self.send_response(200); self.send_header("Content-Length", "100"); self.end_headers()
            self.wfile.write(b"0123456789"); self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR); self.close_connection = True
        elif u.path == "/reset":
            H.resets += 1
            self.connection.shutdown(socket.SHUT_RDWR); self.close_connection = True
        elif u.path == "/resets":
            self.reply(200, str(H.resets))
        elif u.path == "/multi":
            self.reply(200, "multi", [("X-Multi", "a"), ("X-Multi", "b")])
        else:
            self.reply(404, "no such path")
    resets = 0
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
s.daemon_threads = True
if len(sys.argv) == 3:  # certificate and key: serve HTTPS
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], os.getpid(), flush=True)
s.serve_forever()
]]

--- Starts the server; with `tls`, over HTTPS with a fresh self-signed certificate.
local function start_server(tls)
  local path = os.tmpname() .. ".py"
  local f = assert(io.open(path, "w"))
  f:write(SERVER)
  f:close()
  local args = ""
  if tls then
    local cert, key = path .. ".crt", path .. ".key"
    assert(os.execute("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout "
      .. support.q(key) .. " -out " .. support.q(cert) .. " >/dev/null 2>&1"))
    args = " " .. support.q(cert) .. " " .. support.q(key)
  end
  local pipe = assert(io.popen("exec python3 " .. support.q(path) .. args, "r"))
  local port, pid = pipe:read("n", "n")
  assert(port and pid, "test server did not start")
  return {
    port = math.tointeger(port),
    base = (tls and "https" or "http") .. "://127.0.0.1:" .. math.tointeger(port),
    stop = function()
      os.execute("kill " .. math.tointeger(pid))
      pipe:close()
      os.remove(path)
      os.remove(path .. ".crt")
      os.remove(path .. ".key")
    end,
  }
end

describe("galley.core.http #http", function()
  local server

  setup(function() server = start_server() end)
  teardown(function() server.stop() end)

  it("sends method, headers and body and returns status, lowercased headers and body", function()
    local resp, err = http.request{
      method = "POST", url = server.base .. "/echo?x=1",
      headers = { ["X-Test"] = "yes", ["Content-Type"] = "application/json", ["X-Num"] = 5 },
      body = '{"a":1}', timeout_ms = 5000,
    }
    assert.is_nil(err)
    assert.are.equal(200, resp.status)
    assert.are.equal("text/plain", resp.headers["content-type"])
    local echo = cjson.decode(resp.body)
    assert.are.equal("POST", echo.method)
    assert.are.equal("/echo?x=1", echo.path)
    assert.are.equal('{"a":1}', echo.body)
    assert.are.equal("yes", echo.headers["x-test"])
    assert.are.equal("5", echo.headers["x-num"])
    assert.is_nil(echo.headers["expect"])
  end)

  it("sends PUT, PATCH and DELETE with their method names, and HEAD without a body", function()
    for _, m in ipairs{ "PUT", "PATCH", "DELETE" } do
      local resp = assert(http.request{ method = m, url = server.base .. "/echo", body = "b" })
      assert.are.equal(m, cjson.decode(resp.body).method)
    end
    local resp = assert(http.request{ method = "DELETE", url = server.base .. "/echo" })
    assert.are.equal("", cjson.decode(resp.body).body)
    resp = assert(http.request{ method = "HEAD", url = server.base .. "/status/200" })
    assert.are.equal(200, resp.status)
    assert.are.equal("", resp.body)
  end)

  it("returns a 404 as a result, not an error", function()
    local resp, err = http.request{ url = server.base .. "/status/404" }
    assert.is_nil(err)
    assert.are.equal(404, resp.status)
    assert.are.equal("status 404", resp.body)
  end)

  it("joins repeated response headers", function()
    local resp = assert(http.request{ url = server.base .. "/multi" })
    assert.are.equal("a, b", resp.headers["x-multi"])
  end)

  it("fails with HTTP_CONNECT when nothing listens, marking the request as never sent #error", function()
    local resp, err = http.request{ url = "http://127.0.0.1:1/", connect_timeout_ms = 2000 }
    assert.is_nil(resp)
    assert.are.equal("HTTP_CONNECT", err.code)
    assert.is_false(err.sent)
    assert.are.equal("HTTP_CONNECT: " .. err.message, tostring(err))
  end)

  it("fails with HTTP_TIMEOUT after the server got the request #error", function()
    local resp, err = http.request{ url = server.base .. "/slow?ms=3000", timeout_ms = 200 }
    assert.is_nil(resp)
    assert.are.equal("HTTP_TIMEOUT", err.code)
    assert.is_true(err.sent)
  end)

  it("fails with HTTP_NETWORK on a truncated body and on a connection closed without a reply #error", function()
    local _, err = http.request{ url = server.base .. "/truncate", timeout_ms = 5000 }
    assert.are.equal("HTTP_NETWORK", err.code)
    assert.is_true(err.sent)
    _, err = http.request{ url = server.base .. "/reset", timeout_ms = 5000 }
    assert.are.equal("HTTP_NETWORK", err.code)
  end)

  it("fails with HTTP_CONNECT for a scheme other than http and https #error", function()
    local _, err = http.request{ url = "file:///etc/passwd" }
    assert.are.equal("HTTP_CONNECT", err.code)
    assert.is_false(err.sent)
  end)

  it("fails with HTTP_TLS when https meets a plain HTTP server #error", function()
    local _, err = http.request{ url = "https://127.0.0.1:" .. server.port .. "/echo", timeout_ms = 5000 }
    assert.are.equal("HTTP_TLS", err.code)
  end)

  it("verifies certificates: a self-signed one fails with HTTP_TLS #error", function()
    local tls = start_server(true)
    local ok, e = pcall(function()
      local _, err = http.request{ url = tls.base .. "/echo", timeout_ms = 5000 }
      assert.are.equal("HTTP_TLS", err.code)
    end)
    tls.stop()
    assert(ok, e)
  end)

  it("raises on misuse: missing url, bad header text, wrong types", function()
    assert.has_error(function() http.request{} end)
    assert.has_error(function() http.request{ url = server.base, headers = { ["X"] = "a\r\nY: b" } } end)
    assert.has_error(function() http.request{ url = server.base, timeout_ms = "soon" } end)
    assert.has_error(function() http.request("http://x") end)
  end)

  it("keeps one connection alive across the calls of a session", function()
    local s = http.session{ timeout_ms = 5000 }
    local ports = {}
    for i = 1, 5 do
      local resp = assert(s:request{ url = server.base .. "/echo" })
      ports[cjson.decode(resp.body).port] = true
      if i > 1 then assert.is_true(resp.reused) end
      assert.are.equal("1.1", resp.http_version)
    end
    local n = 0
    for _ in pairs(ports) do n = n + 1 end
    assert.are.equal(1, n)
    s:close()
    s:close()
    assert.has_error(function() s:request{ url = server.base .. "/echo" } end)
    assert.matches("closed", tostring(s))
  end)

  it("recovers on a session after the server dropped the connection", function()
    local s <close> = http.session()
    assert.are.equal(200, assert(s:request{ url = server.base .. "/echo" }).status)
    local _, err = s:request{ url = server.base .. "/reset" }
    assert.are.equal("HTTP_NETWORK", err.code)
    assert.are.equal(200, assert(s:request{ url = server.base .. "/echo" }).status)
  end)

  it("does not let libcurl resend a no_resend request when a reused connection dies", function()
    local s <close> = http.session()
    local function resets() return tonumber(assert(s:request{ url = server.base .. "/resets" }).body) end
    local before = resets()
    local _, err = s:request{ method = "POST", url = server.base .. "/reset", body = "x", no_resend = true }
    assert.are.equal("HTTP_NETWORK", err.code)
    assert.is_true(err.sent)
    assert.are.equal(before + 1, resets())
  end)

  it("gives up with INTERRUPTED when a signal arrives during a transfer #error", function()
    -- The signal hook may also raise INTERRUPTED right after the call returns: pcall sees either.
    local script = support.script(string.format([[
      local http = require("galley.core.http")
      local ok, a, b = pcall(http.request, { url = %q, timeout_ms = 20000 })
      local err = ok and b or a
      io.write("code=", tostring(type(err) == "table" and err.code), "\n")
      os.exit(0)
    ]], server.base .. "/slow?ms=10000"))
    local sh = string.format("%s run %s & p=$!; sleep 0.5; kill -INT $p; wait $p",
      support.q(support.bin), support.q(script))
    local f = assert(io.popen("(" .. sh .. ") 2>&1; echo \"rc=$?\""))
    local out = f:read("a")
    f:close()
    assert.truthy(out:find("code=INTERRUPTED", 1, true), out)
  end)
end)
