-- A Ctrl-C or SIGTERM that lands while galley is still setting itself up (before any script or
-- subcommand runs under its own error handling). Found by the run-cleanup spec's random
-- interrupts (SIGINT 10 ms after the start): "galley: (null)", exit 1. Here the signal is sent
-- while the parent keeps it blocked, which the child inherits: galley unblocks it once its
-- handler is in place, so it arrives at that moment, every time.
local support = require("support")
local proc = require("galley.core.proc")

-- python3: start argv[2:] with the signal argv[1] blocked, send it at once, print the child's
-- exit code and stderr.
local STARTER = [[
import signal, subprocess, sys
sig = getattr(signal, "SIG" + sys.argv[1])
old = signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
p = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
signal.pthread_sigmask(signal.SIG_SETMASK, old)
p.send_signal(sig)
out, err = p.communicate(timeout=60)
sys.stdout.write("%d\n%s%s" % (p.returncode, out.decode(), err.decode()))
]]

describe("a signal while galley starts #run", function()
  for _, case in ipairs({ { "INT", 130, "Ctrl-C (SIGINT)" }, { "TERM", 143, "SIGTERM" } }) do
    local sig, want, words = case[1], case[2], case[3]
    for _, argv in ipairs({ { "-e", "print('ran')" }, { "version" } }) do
      it(("exits %d with INTERRUPTED for SIG%s, before `galley %s` runs"):format(want, sig, argv[1]), function()
        local r = assert(proc.run({ argv = { "/usr/bin/python3", "-c", STARTER, sig, support.bin,
          table.unpack(argv) }, timeout_ms = 90000 }))
        assert.are.equal(0, r.exit_code, r.stderr)
        local code, rest = r.stdout:match("^(%-?%d+)\n(.*)$")
        assert.are.equal(tostring(want), code, rest)
        -- (before: a signal still blocked was never seen, and `print` ran; once seen, "(null)")
        assert.is_nil(rest:find("ran", 1, true))
        assert.is_nil(rest:find("(null)", 1, true), rest)
        assert.truthy(rest:find("INTERRUPTED: interrupted by " .. words, 1, true), rest)
      end)
    end
  end
end)
