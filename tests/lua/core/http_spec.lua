-- galley.core.http against a tiny loopback server (python3) started for this spec.
local support = require("support")
local http = require("galley.core.http")
local task = require("galley.task")
local cjson = require("cjson")

-- Serves fixed responses on 127.0.0.1; prints "PORT PID" once listening.
--   /echo        JSON {method, path, body, headers, port}  (port = the client's TCP port)
--   /status/N    status N, body "status N"
--   /slow?ms=N&tag=T  waits N ms, then 200 (/peak?tag=T: most of tag T in flight at once)
--   /chunks?n=N  a chunked 200 body of N pieces "piece I\n", 50 ms apart
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
            q = urllib.parse.parse_qs(u.query); tag = q.get("tag", [""])[0]
            with H.lock: H.active[tag] = H.active.get(tag, 0) + 1; H.peak[tag] = max(H.peak.get(tag, 0), H.active[tag])
            try:
                time.sleep(int(q["ms"][0]) / 1000); self.reply(200, "slow")
            finally:
                with H.lock: H.active[tag] -= 1
        elif u.path == "/peak":
            with H.lock: p = H.peak.get(urllib.parse.parse_qs(u.query)["tag"][0], 0)
            self.reply(200, str(p))
        elif u.path == "/chunks":
            n = int(urllib.parse.parse_qs(u.query)["n"][0])
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            for i in range(n):
                piece = ("piece %d\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece)); self.wfile.flush(); time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
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
    active = {}; peak = {}
    lock = __import__("threading").Lock()
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
  local path = support.tmpname() .. ".py"
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

  it("gives up with INTERRUPTED carrying the signal (SIGTERM: 15) during a transfer #error", function()
    -- The signal hook may also raise INTERRUPTED right after the call returns: pcall sees either.
    local script = support.script(string.format([[
      local http = require("galley.core.http")
local task = require("galley.task")
      local ok, a, b = pcall(http.request, { url = %q, timeout_ms = 20000 })
      local err = ok and b or a
      io.write("code=", tostring(type(err) == "table" and err.code), " signal=",
        tostring(type(err) == "table" and err.signal), "\n")
      os.exit(0)
    ]], server.base .. "/slow?ms=10000"))
    local sh = string.format("%s run %s & p=$!; sleep 0.5; kill -TERM $p; wait $p",
      support.q(support.bin), support.q(script))
    local f = assert(io.popen("(" .. sh .. ") 2>&1; echo \"rc=$?\""))
    local out = f:read("a")
    f:close()
    assert.truthy(out:find("code=INTERRUPTED signal=15", 1, true), out)
  end)

  describe("on the event loop #loop", function()
    it("keeps the transfers of several tasks in flight together", function()
      local n = 6
      local tasks = {}
      for i = 1, n do
        tasks[i] = task.spawn(function()
          return assert(http.request{ url = server.base .. "/slow?ms=600&tag=overlap", timeout_ms = 10000 }).status
        end)
      end
      for i, r in ipairs(task.join(tasks)) do assert.is_true(r.ok, tostring(r.err)); assert.are.equal(200, r.value, i) end
      -- the server saw all of them at once: none waited for another to finish
      assert.are.equal(tostring(n), assert(http.request{ url = server.base .. "/peak?tag=overlap" }).body)
      assert.are.equal(0, http.inflight())
    end)

    it("removes the transfer of a cancelled task: nil, INTERRUPTED #error", function()
      local got = {}
      local t = task.spawn(function()
        got.resp, got.err = http.request{ url = server.base .. "/slow?ms=5000", timeout_ms = 10000 }
        got.returned = true
      end)
      task.sleep(200)
      assert.are.equal(1, http.inflight())
      t:cancel()
      t:result()
      assert.is_true(got.returned)
      assert.is_nil(got.resp)
      assert.are.equal("INTERRUPTED", got.err.code)
      assert.are.equal(0, http.inflight())
      -- the connection pool still works afterwards
      assert.are.equal(200, assert(http.request{ url = server.base .. "/echo" }).status)
    end)

    it("streams a body piece by piece while another task runs", function()
      local s = assert(http.request{ url = server.base .. "/chunks?n=5", stream = true, timeout_ms = 10000 })
      local ticks = 0
      local ticker = task.spawn(function()
        while true do task.sleep(20); ticks = ticks + 1 end
      end)
      local pieces = {}
      while true do
        local piece, err = s:read()
        assert.is_nil(err)
        if not piece then break end
        pieces[#pieces + 1] = piece
      end
      ticker:cancel()
      assert.are.equal("piece 0\npiece 1\npiece 2\npiece 3\npiece 4\n", table.concat(pieces))
      assert.is_true(#pieces >= 3, "pieces arrive as they are sent")
      assert.is_true(ticks >= 3, "the other task ran meanwhile")
      local resp = assert(s:result())
      assert.are.equal(200, resp.status)
      assert.are.equal("", resp.body)
      s:close()
      assert.has_error(function() s:result() end)
    end)

    it("hands a non-2xx streamed body over in the result, not to read()", function()
      local s = assert(http.request{ url = server.base .. "/status/503", stream = true })
      assert.is_nil(s:read())
      local resp = assert(s:result())
      assert.are.equal(503, resp.status)
      assert.are.equal("status 503", resp.body)
    end)
  end)
end)
