-- galley.core.http's TLS options against a real TLS server on loopback (`openssl s_server -www`
-- with a self-signed certificate, like a Proxmox node's): verification on by default, `ca_file`,
-- `pinned_public_key` (libcurl's sha256// pin) and `insecure`.
local fs = require("galley.core.fs")
local http = require("galley.core.http")
local proc = require("galley.core.proc")
local task = require("galley.task")

local function sh(argv, stdin)
  local r = assert(proc.run({ argv = argv, stdin = stdin, timeout_ms = 30000 }))
  assert.are.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

describe("galley.core.http TLS options #tls", function()
  local dir, server, url, pin

  setup(function()
    dir = assert(fs.mkdtemp())
    sh({ "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", dir .. "/key.pem", "-out", dir .. "/cert.pem", "-days", "2", "-subj", "/CN=pve-test",
      "-addext", "subjectAltName=IP:127.0.0.1" })
    local pub = sh({ "openssl", "x509", "-in", dir .. "/cert.pem", "-pubkey", "-noout" })
    local der = sh({ "openssl", "pkey", "-pubin", "-outform", "der" }, pub)
    local digest = sh({ "openssl", "dgst", "-sha256", "-binary" }, der)
    pin = "sha256//" .. require("galley.core.codec").base64_encode(digest)
    for _ = 1, 20 do
      local port = 20000 + math.random(0, 20000)
      server = assert(proc.spawn({ argv = { "openssl", "s_server", "-accept", "127.0.0.1:" .. port, "-cert",
        dir .. "/cert.pem", "-key", dir .. "/key.pem", "-www", "-quiet" } }))
      url = ("https://127.0.0.1:%d/"):format(port)
      local up = false
      for _ = 1, 100 do
        local resp, err = http.request({ url = url, insecure = true, timeout_ms = 2000 })
        if resp then up = true break end
        if err.code ~= "HTTP_CONNECT" then break end
        if server:wait(1) then break end -- exited (the port was taken): try another
        task.sleep(50)
      end
      if up then return end
      server:close()
      server = nil
    end
    error("openssl s_server did not start")
  end)

  teardown(function()
    if server then server:close() end
    if dir then fs.remove_tree(dir) end
  end)

  it("refuses a self-signed certificate by default", function()
    local resp, err = http.request({ url = url, timeout_ms = 5000 })
    assert.is_nil(resp)
    assert.are.equal("HTTP_TLS", err.code)
  end)

  it("accepts it with ca_file", function()
    local resp = assert(http.request({ url = url, ca_file = dir .. "/cert.pem", timeout_ms = 5000 }))
    assert.are.equal(200, resp.status)
  end)

  it("accepts the pinned public key and refuses another before sending the request", function()
    local resp = assert(http.request({ url = url, pinned_public_key = pin, timeout_ms = 5000 }))
    assert.are.equal(200, resp.status)
    local wrong = "sha256//" .. ("A"):rep(43) .. "="
    local bad, err = http.request({ url = url, pinned_public_key = wrong, timeout_ms = 5000 })
    assert.is_nil(bad)
    assert.are.equal("HTTP_TLS", err.code)
  end)

  it("skips verification only with insecure", function()
    local resp = assert(http.request({ url = url, insecure = true, timeout_ms = 5000 }))
    assert.are.equal(200, resp.status)
  end)
end)
