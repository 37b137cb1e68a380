--- galley dashboard: a local web page of runs, instances and live sessions (galley.dashboard).
local argparse = require("argparse")
local shared = require("galley.commands.shared")

local M = {
  summary = "a local web page of runs, instances and live sessions: galley dashboard [--port N]",
  usage = "galley dashboard [--port N] [--provider NAME]... [--read-only] [--open]",
  help = "Serves the dashboard on 127.0.0.1 until Ctrl-C and prints its URL, which carries a random\n"
    .. "access token (open it once: the token becomes a cookie). Requests without the token, from a\n"
    .. "Host other than 127.0.0.1/localhost, or POSTs without the page's CSRF token are refused (403).\n"
    .. "--provider (repeatable; default: local, morph when MORPH_API_KEY is set, proxmox when PVE_URL\n"
    .. "is set) picks what is listed; --read-only hides and refuses every action (stop, restart, send\n"
    .. "keys); --open starts your browser (xdg-open). See docs/dashboard.md.",
}

--- Options for `galley completion` (the parser below has the same ones).
function M.options(p)
  p:option("--port", "port to listen on (default 0: a free one)", "0"):convert(math.tointeger)
  p:option("--provider", "a provider to show (repeatable)"):choices({ "local", "morph", "proxmox" }):count("*")
  p:flag("--read-only", "no actions: nothing can be stopped, restarted or typed")
  p:flag("--open", "open the page in the browser (xdg-open)")
end

--- Opens the page in the user's browser without putting the token in any process's argv (other
-- users can read those): like Jupyter, xdg-open gets a private file that redirects to the URL.
function M.open(url)
  local proc = require("galley.core.proc")
  if not proc.which("xdg-open") then
    io.stderr:write("galley dashboard: --open: no xdg-open here; open the URL above yourself\n")
    return
  end
  local paths = require("galley.paths")
  local ok, err = pcall(function()
    local dir = paths.private_dir(paths.state_dir() .. "/dashboard")
    local file = dir .. "/open.html"
    local escaped = url:gsub("&", "&amp;"):gsub('"', "&quot;")
    assert(require("galley.core.fs").write_atomic(file, ('<!doctype html><meta http-equiv="refresh" content="0;url=%s">'
      .. '<a href="%s">galley dashboard</a>\n'):format(escaped, escaped), { mode = "600" }))
    -- setsid -f: the browser lives on in its own session after galley exits
    proc.run({ argv = { "setsid", "-f", "xdg-open", file }, stdin = "null", timeout_ms = 10000 })
  end)
  if not ok then io.stderr:write("galley dashboard: --open failed: ", tostring(err), "\n") end
end


local function parser()
  local p = argparse("galley dashboard", M.summary):add_help(false)
  p._galley_module = M
  M.options(p)
  p:flag("-v --verbose", "more output; tracebacks on failure"):count("*")
  p:flag("-q --quiet", "only errors")
  p:flag("-h --help", "show this help")
  return p
end

function M.run(args)
  local res, code = shared.parse(parser(), args)
  if not res then return code end
  if not res.port or res.port < 0 or res.port > 65535 then
    io.stderr:write("galley dashboard: --port must be an integer 0..65535\n  hint: 0 picks a free port\n")
    return shared.EXIT_USAGE
  end
  local dashboard = require("galley.dashboard")
  local ok, providers = pcall(dashboard.providers, res.provider)
  if not ok then return shared.fail("dashboard", providers) end
  local d = dashboard.new({ providers = providers, read_only = res.read_only })
  local port, err = d:start(res.port)
  if not port then return shared.fail("dashboard", err) end
  io.stdout:write(d:url(), "\n")
  io.stdout:flush()
  local names = {}
  for _, e in ipairs(providers) do names[#names + 1] = e.name end
  io.stderr:write("galley dashboard: serving ", table.concat(names, ", "), res.read_only and " (read-only)" or "",
    " on 127.0.0.1:", port, "; Ctrl-C stops it\n")
  if res.open then M.open(d:url()) end
  local runtime = require("galley.core.runtime")
  -- Ctrl-C/SIGTERM ends the sleep (or raises INTERRUPTED through the signal hook).
  pcall(function() while runtime.sleep_ms(1000) do end end)
  runtime.clear_signal()
  d:stop()
  for _, e in ipairs(providers) do if e.provider.close then pcall(e.provider.close) end end
  return 0
end

return M
