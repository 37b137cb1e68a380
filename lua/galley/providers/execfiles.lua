--- galley.providers.execfiles: the provider `files` API over nothing but exec of an argv.
-- Morph has no file channel, and the local provider runs its instances in a sandbox, so both
-- move file contents as base64 in argv elements and run small remote programs (POSIX sh with
-- coreutils when the instance has them, else python3) that decode, verify and rename.
--
--   local files = execfiles.new{exec_argv = function(id, argv) ... return {stdout=, stderr=, exit_code=} end,
--                               home_dir = "/root"}
--   files.write_file_atomic(id, "~/.config/x.json", json, {mode = "600", create_dirs = true})
--   files.write_file_atomic(id, "/root/big.tar", {from_file = "/tmp/big.tar"})   -- streamed from disk
--   local text = files.read_file(id, "~/.config/x.json")
--   files.read_file(id, "/root/big.tar", {to_file = "/tmp/copy.tar"})            -- streamed to disk
--
-- Transfer rules:
-- - Each exec carries at most `max_request_bytes` of base64 (default 1.5 MiB), split into argv
--   elements of at most `max_arg_bytes` (default 120 KiB; Linux refuses elements over 128 KiB).
--   With `max_command_bytes` (a provider that sends each exec as ONE shell line, the argv quoted
--   by galley.core.shell.join), the whole quoted line of every exec stays within it instead,
--   unless `argv_payloads(id)` (asked once per write that needs more than one line) says the
--   provider sends such execs as argv arrays (the Morph provider's exec_form "auto").
-- - A write whose content fits one exec is ONE exec: create the parent directories (create_dirs),
--   write a temporary file beside the target (with its final mode where no chmod is needed for
--   it, else mode 600 while it is written), fsync, chmod/chown where needed,
--   check its sha256 (the digest of exactly `size` bytes: a match checks the size too), rename
--   over the target. Larger contents go one chunk per exec, each verified where it lands: a
--   chunk exec writes its bytes at their offset of the temporary file, reads exactly that
--   region back and compares its sha256 with the one computed here (exit 42 on a mismatch);
--   the last exec, once every other chunk is in, appends the final chunk, checks the last N
--   bytes of the file against that chunk's sha256 and the file's size against `size` exactly
--   (so a temporary file truncated or extended by anyone between the chunks and the end is
--   caught), then syncs, sets the mode and owner and renames; the whole file is not hashed
--   again (so a byte changed in place, after its chunk was checked, by something else on the
--   instance is not seen: the checks are against damage on the way). Where chunks are
--   appended in order (python-only instances, parallel = 1) the last exec checks the sha256 of
--   the whole file instead. On any failure the old target is
--   untouched and the temporary file is removed; chunk execs never create the temporary file
--   (only the first, alone, does), so one still running after a failure cannot bring it back.
-- - Reads fetch `size sha256` first, then the content in chunks of the same size, and check the
--   sha256 of what arrived.
-- - Contents are strings or `{from_file = "/local/path"}`; `read_file(..., {to_file = path})`
--   writes to a local file instead of returning a string. With these, memory is bounded by the
--   chunk size, not the file size.
-- - Files above `size_limit` (default 256 MiB) fail with FILE_TOO_LARGE before anything moves.
-- - Tools: coreutils first, python3 the fallback. coreutils start in a few ms each where python3
--   takes 20-70 ms to start and import (a one-exec write with coreutils: sh, base64 -d, sync,
--   the hash, mv, and chmod only where the mode needs it). Writes choose on the instance inside
--   the same exec (coreutils when all of base64, sha256sum, chmod, chown, mv, mkdir, rm, sync,
--   tail, tee and wc are on PATH, else python3),
--   so a small write is one exec even on a fresh instance; the first read asks once per
--   instance (SH_PROBE), and later writes and reads use its answer. GNU-only options have POSIX
--   fallbacks (busybox): `sync FILE` -> `sync`, `chmod --reference` -> `stat -c %a`, `mv -T` ->
--   a directory check and `mv`, `base64 -w 0` -> wrapped lines stripped here; whatever the
--   tools, a file that does not hash right is never renamed into place. python3 is the system
--   /usr/bin/python3 when it exists (PATH shims such as pyenv's cost 100+ ms a start). Large
--   writes send their chunks (`parallel` at once) with `base64 -d | dd` at their offsets, read
--   back with `dd | sha256sum` (python when GNU dd or sha256sum is missing); reads bring
--   chunks with `tail | head | base64`. The base64 reaches the decoder through a here-document,
--   not `printf %s "$@"` (dash's printf costs ~13 ms per MiB), or, in a one-exec write or a
--   chunk of 64 KiB of base64 or more, read back from the remote sh's own /proc/$$/cmdline (see
--   set_skip).
--   Pass `decoder = "coreutils"`, "python" (python3 writes and read heads, coreutils for chunks)
--   or "python-only" to skip detection.
-- - Without a mode, a replaced file keeps the old file's mode; a new file gets 0666 & ~umask.
--   Owner and group change only when asked (a replaced file otherwise belongs to the exec user).
--
-- Errors (ProviderError tables): VALIDATION_ERROR (bad path or option), NOT_FOUND (missing
-- file or directory), FILE_TOO_LARGE, FILE_IO_ERROR (`resource = "file:<path>"`,
-- `details = {exit_code, stderr}` with the tail of the remote stderr). Errors raised by
-- `exec_argv` itself (a missing instance, a network failure) pass through unchanged.
local codec = require("galley.core.codec")
local common = require("galley.providers.common")
local pool = require("galley.pool")
local tracker = require("galley.tracker")
local util = require("galley.util")
local runtime = require("galley.core.runtime")
local errors = require("galley.errors")
local fs = require("galley.core.fs")
local shell = require("galley.core.shell")

local M = {}

M.DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
M.DEFAULT_MAX_ARG_BYTES = 120 * 1024
M.DEFAULT_SIZE_LIMIT = 256 * 1024 * 1024
M.DEFAULT_PARALLEL = 4

-- Exit codes the remote programs use to say what went wrong.
-- (43: the path is of the wrong kind, a directory where a file was expected or the reverse.)
local EXIT_NOT_FOUND, EXIT_TOO_LARGE, EXIT_VERIFY, EXIT_WRONG_KIND, EXIT_GONE = 40, 41, 42, 43, 44

local TMP_MARK = ".galley-tmp-"
M.TMP_MARK = TMP_MARK

-- argv after the script: target tmp dir create_dirs first last mode owner group size sha256
-- scope; the base64 content arrives on stdin. scope "all": sha256 is the digest of the whole
-- file; "tail:N": of its last N bytes (what this exec appended; the chunks before it were
-- checked where they landed), and the file must hold exactly `size` bytes.
local PY_WRITE = [[
import os, sys, stat, shutil, hashlib, base64
target, tmp, d, mkdirs, first, last, mode, owner, group, size, digest, scope = sys.argv[1:13]
def fail(code, msg):
    try:
        os.unlink(tmp)
    except OSError:
        pass
    sys.stderr.write(msg + "\n")
    sys.exit(code)
raw = scope == "stdin"
try:
    data = b"" if raw else base64.b64decode(sys.stdin.buffer.read().rstrip(b"\n"), validate=True)
    if (first == "1" or last == "1") and os.path.isdir(target):
        fail(43, "the path is a directory")
    if first == "1":
        if mkdirs == "1":
            os.makedirs(d, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if raw:
            rh, rn = hashlib.sha256(), 0
            for block in iter(lambda: sys.stdin.buffer.read1(1 << 20), b""):
                rh.update(block)
                rn += len(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
        if last == "1":
            os.fsync(fd)
    finally:
        os.close(fd)
    if last == "1":
        if mode:
            m = int(mode, 8)
        else:
            try:
                m = stat.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                u = os.umask(0)
                os.umask(u)
                m = 0o666 & ~u
        os.chmod(tmp, m)
        if owner or group:
            shutil.chown(tmp, owner or None, group or None)
        h, n, tail = hashlib.sha256(), 0, scope.startswith("tail:")
        if raw:
            h, n = rh, rn
        else:
          with open(tmp, "rb") as f:
            if tail:
                n = os.fstat(f.fileno()).st_size
                f.seek(max(0, n - int(scope[5:])))
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                if not tail:
                    n += len(block)
        if n != int(size) or h.hexdigest() != digest:
            fail(42, "verification failed: %d bytes written, %s expected" % (n, size))
        os.rename(tmp, target)
except Exception as e:
    fail(1, "%s: %s" % (type(e).__name__, e))
]]

-- The base64 arguments reach a decoder's stdin through a here-document of "$*" joined with an
-- empty IFS: dash and bash write it in one piece, where `printf %s "$@"` (dash's printf goes
-- byte by byte) costs ~13 ms per MiB of base64, more than the decoding. The trailing newline
-- is ignored by `base64 -d` and stripped by PY_WRITE.
--
-- bash (what /bin/sh is on Fedora, RHEL, Arch) joins an unquoted $* in a here-document with
-- spaces even when IFS is empty (dash, busybox ash: no separator, as "$*" does), and base64 -d
-- refuses the spaces: under bash the arguments are joined first (`p="$*"`, one more copy, bash
-- only) and the here-documents expand ${b64p-$*}. (IFS is empty wherever this runs.)
local BASH_JOIN = '[ -n "${BASH_VERSION-}" ] && b64p="$*"\n'

-- The base64 read back from the remote sh's own argv (see set_skip, below): a command group for
-- a redirection or a pipe; what a write exec says on stderr when its base64 came that way.
local B64_MARK = "@galley-b64"
local VIA_ARGV = "@galley-via-argv"
local ARGV_B64 = '{ read -r _ && dd bs="$skip" skip=1 count=0 && IFS= read -r m && [ "$m" = ' .. B64_MARK
  .. ' ] &&\n  exec base64 -d -i; } < /proc/$$/cmdline'

-- $P for every python program here: the system python (/usr/bin/python3) when there is one,
-- else python3 from PATH. Version-manager shims on PATH (pyenv's) cost 100-300 ms a start, and
-- the programs need nothing but the standard library. (Whether there is a python at all is
-- `command -v python3`'s answer.)
local SH_PICK_PY = "P=python3; [ -x /usr/bin/python3 ] && P=/usr/bin/python3\n"

-- PY_WRITE under sh: the write arguments, then the chunks, under $P (SH_PICK_PY).
local SH_PY_BODY = SH_PICK_PY .. [[
t=$1 tmp=$2 d=$3 mk=$4 first=$5 last=$6 mode=$7 owner=$8 group=$9 size=${10} digest=${11} scope=${12}
shift 14
if [ "$scope" = stdin ]; then
  exec "$P" -I -S -c "$py" "$t" "$tmp" "$d" "$mk" "$first" "$last" "$mode" "$owner" "$group" "$size" "$digest" "$scope"
fi
IFS=; ]] .. BASH_JOIN .. [[
"$P" -I -S -c "$py" "$t" "$tmp" "$d" "$mk" "$first" "$last" "$mode" "$owner" "$group" "$size" "$digest" "$scope" <<EOF
${b64p-$*}
EOF
]]

local SH_PIPE_PY_WRITE = "py=$1; shift\n" .. SH_PY_BODY

-- sha256 in POSIX sh, put in $h as sha256sum prints it ("<hex> ..."). What it costs is mostly
-- the program's start for what a write hashes (at most one exec's worth, ~1.1 MiB): sha256sum
-- starts in 1-4.5 ms and hashes ~300 MB/s; `openssl dgst -sha256` uses the CPU's SHA extensions
-- (1.6 GB/s) but loads libcrypto first (2.8 ms on one machine kind, 10.6 ms on a Firecracker VM
-- like Morph's). So sha256sum below SHA_BIG bytes ($hb, set by the caller), openssl from there
-- on (a read of a large file) or where sha256sum is missing; sha256sum again where openssl fails.
-- sha_of FILE hashes a file; sha_run CMD... what CMD prints (run a second time when openssl
-- fails, so nothing is verified against a half-read stream). sha_big says which to use.
local SHA_BIG = 2 * 1024 * 1024
local SH_SHA = ([[
sha_ok() { x=${h%% *}; [ ${#x} -eq 64 ]; }
sha_big() { { [ "$hb" -ge BIG ] || ! command -v sha256sum; } >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; }
sha_of() {
  if sha_big; then h=$(openssl dgst -sha256 -r < "$1" 2>/dev/null) && sha_ok && return 0; fi
  h=$(sha256sum < "$1")
}
sha_run() {
  if sha_big; then h=$("$@" | openssl dgst -sha256 -r 2>/dev/null) && sha_ok && return 0; fi
  h=$("$@" | sha256sum)
}
]]):gsub("BIG", tostring(SHA_BIG))

-- Scope "stdin" (a byte channel: SSH, the local provider's redirect): the content comes raw on
-- stdin, read once, written (tee) and hashed in one pipeline (sha256sum or openssl, see sha_big; an
-- openssl that fails is drained by cat so tee sees no broken pipe, and the file written is then
-- hashed).
-- (Comments stay out of the scripts: every byte of them travels in each one-line exec.)
--
-- The same with POSIX sh and coreutils: sh, base64 -d into the temporary file, sync (the
-- fsync, in the background while the hash runs; waited for before the rename), sha256sum (or
-- openssl, see sha_big) over the file as written, mv: four programs for a write that fits one exec. With
-- scope "all" the sha256 alone is checked: it is the digest of exactly `size` bytes, so a match
-- means the size matches too (wc runs only to say how much arrived when it does not). With
-- "tail:N" (the last exec of a write whose other chunks SH_CHUNK checked where they landed) wc
-- checks the size first, then `tail -c N | sha256sum` what this exec appended.
--
-- The mode: a file this exec creates whole gets its final mode at creation where no chmod is
-- needed for it (fork + exec is 1-4 ms a program): the umask is set to the mode's complement
-- when the mode asks no bit outside 0666 and lets the owner read (0644 -> umask 133; the file
-- is read back to hash it), and left as it is for a new
-- file without a mode (what `chmod =rw` would give: 0666 & ~umask). Otherwise (an x bit, a
-- replaced file keeping its old mode, a chunked write) the temporary file is 600 while it is
-- written and chmod sets the mode after the hash (a mode such as 200 would keep a plain user
-- from reading it back) and before the rename.
--
-- GNU options have a POSIX fallback that keeps the same guarantees, so busybox never leaves a
-- wrong file: `sync FILE` falls back to a global sync, `chmod --reference` to `stat -c %a`,
-- `mv -T` to a plain mv after checking the target is no directory.
local SH_WRITE = "\n" .. SH_SHA .. [[
target=$1 tmp=$2 d=$3 mkdirs=$4 first=$5 last=$6 mode=$7 owner=$8 group=$9 size=${10} digest=${11} scope=${12}
skip=${13}
shift 14
hb=$size
fail() { rm -f -- "$tmp"; printf '%s\n' "$2" >&2; exit "$1"; }
put_new() {
  ]] .. BASH_JOIN .. [[
  (set -C; if [ -n "$cm" ]; then umask "$cm"; fi; exec base64 -d > "$tmp") <<EOF
${b64p-$*}
EOF
}
put_proc() {
  (set -C; if [ -n "$cm" ]; then umask "$cm"; fi; exec > "$tmp" || exit 1
    ]] .. ARGV_B64 .. [[) 2>/dev/null && return 0
  rm -f -- "$tmp"; return 1
}
if { [ "$first" = 1 ] || [ "$last" = 1 ]; } && [ -d "$target" ]; then fail 43 "the path is a directory"; fi
IFS=
cm=077 moded=
if [ "$first" = 1 ]; then
  if [ "$mkdirs" = 1 ]; then mkdir -p -- "$d" || fail 1 "cannot create the directory"
  elif [ ! -d "$d" ]; then fail 1 "$d: No such file or directory"; fi
  if [ "$last" = 1 ]; then
    case $mode in
    0[46][0246][0246]|[46][0246][0246])
      r=${mode#"${mode%???}"}; a=${r%??}; b=${r#?}; b=${b%?}; c=${r#??}
      cm=$((7 - a))$((7 - b))$((7 - c)) moded=1 ;;
    '') if [ ! -e "$target" ]; then cm= moded=1; fi ;;
    esac
  fi
fi
if [ "$scope" = stdin ]; then
  (set -C; if [ -n "$cm" ]; then umask "$cm"; fi; : > "$tmp") || fail 1 "cannot create the temporary file"
  h=$( { { tee -- "$tmp" || echo @fail >&3; } | {
    if sha_big; then openssl dgst -sha256 -r 2>/dev/null || cat > /dev/null
    else sha256sum; fi; }; } 3>&1)
  case $h in *@fail*) fail 1 "the temporary file could not be written" ;; esac
  sha_ok || sha_of "$tmp" || fail 1 "sha256sum failed"
elif [ "$first" = 1 ]; then
  via=
  if [ "$last" = 1 ] && [ "$skip" -gt 0 ] 2>/dev/null && put_proc; then via=proc
  else put_new "$@" || fail 1 "cannot create the temporary file, or base64 -d failed"; fi
elif [ $# -gt 0 ]; then
  ]] .. BASH_JOIN .. [[
  base64 -d >> "$tmp" <<EOF || fail 1 "base64 -d failed"
${b64p-$*}
EOF
fi
unset IFS
if [ "$last" = 1 ]; then
  sync -- "$tmp" 2>/dev/null & s=$!
  case $scope in
  stdin) ;; # hashed in the pipe above
  tail:*)
    n=$(wc -c < "$tmp") || fail 1 "wc failed"
    [ "$n" -eq "$size" ] 2>/dev/null ||
      fail 42 "verification failed: ${n:-?} bytes in the temporary file, $size expected"
    hb=${scope#tail:}; sha_run tail -c "$hb" -- "$tmp" || fail 1 "sha256sum failed" ;;
  *) sha_of "$tmp" || fail 1 "sha256sum failed"
    if [ "$via" = proc ] && [ "${h%% *}" != "$digest" ]; then
      wait "$s"; rm -f -- "$tmp"; IFS= via=
      put_new "$@" || fail 1 "cannot create the temporary file, or base64 -d failed"
      unset IFS; sync -- "$tmp" 2>/dev/null & s=$!
      sha_of "$tmp" || fail 1 "sha256sum failed"
    fi ;;
  esac
  if [ -n "$moded" ]; then :
  elif [ -n "$mode" ]; then chmod -- "$mode" "$tmp" || fail 1 "chmod failed"
  elif [ -e "$target" ]; then
    chmod --reference="$target" -- "$tmp" 2>/dev/null ||
      { m=$(stat -c %a -- "$target") && chmod -- "$m" "$tmp"; } || fail 1 "chmod failed"
  else chmod =rw -- "$tmp" || fail 1 "chmod failed"; fi
  if [ -n "$owner$group" ]; then chown -- "$owner${group:+:$group}" "$tmp" || fail 1 "chown failed"; fi
  wait "$s" || sync || fail 1 "sync failed"
  if [ "${h%% *}" != "$digest" ]; then
    n=$(wc -c < "$tmp" 2>/dev/null)
    fail 42 "verification failed: ${n:-?} bytes written, $size expected, sha256 differs"
  fi
  mv -f -T -- "$tmp" "$target" 2>/dev/null ||
    { [ ! -d "$target" ] && mv -f -- "$tmp" "$target"; } || fail 1 "rename failed"
  if [ "$via" = proc ]; then echo ]] .. VIA_ARGV .. [[ >&2; fi
fi
exit 0
]]

-- Writes pick their tools on the instance, in the same exec (no probe round trip): coreutils
-- when every tool SH_WRITE runs is on PATH (`command -v` is a builtin: this costs no process),
-- else python3, else SH_WRITE again (it fails naming what is missing). argv: py_program, then
-- SH_WRITE's arguments.
local SH_AUTO_WRITE = "\npy=$1; shift\n"
  .. "cu=1; for t in base64 sha256sum chmod chown mv mkdir rm sync tail tee wc; do\n"
  .. "  command -v $t >/dev/null 2>&1 || cu=\ndone\n"
  .. "if [ -z \"$cu\" ] && command -v python3 >/dev/null 2>&1; then\n" .. SH_PY_BODY .. "exit\nfi\n"
  .. SH_WRITE

-- argv after the script: path what offset length limit. what = "head" prints "size sha256\n" and
-- base64 of the first `length` bytes; "range" prints base64 of [offset, offset + length).

local PY_READ = [[
import os, sys, stat, hashlib, base64
p, what, off, length, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out = sys.stdout.buffer
try:
    fd = os.open(p, os.O_RDONLY)
except FileNotFoundError:
    sys.exit(40)
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(1)
try:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        sys.stderr.write("is a directory\n")
        sys.exit(43)
    with os.fdopen(fd, "rb", closefd=False) as f:
        if what == "head":
            if st.st_size > limit:
                out.write(b"%d\n" % st.st_size)
                sys.exit(41)
            h, n, keep = hashlib.sha256(), 0, []
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                n += len(block)
                if n - len(block) < length:
                    keep.append(block)
            if n > limit:
                out.write(b"%d\n" % n)
                sys.exit(41)
            out.write(b"%d %s\n" % (n, h.hexdigest().encode()))
            out.write(base64.b64encode(b"".join(keep)[:length]))
        else:
            f.seek(off)
            out.write(base64.b64encode(f.read(length)))
    out.flush()
except SystemExit:
    raise
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(1)
]]

local SH_READ = SH_SHA .. [[
p=$1 what=$2 off=$3 len=$4 limit=$5
[ -e "$p" ] || exit 40
if [ -d "$p" ]; then echo "is a directory" >&2; exit 43; fi
[ -r "$p" ] || { echo "permission denied" >&2; exit 1; }
if [ "$what" = head ]; then
  n=$(wc -c < "$p") || exit 1
  if [ "$n" -gt "$limit" ]; then echo "$n"; exit 41; fi
  hb=$n; sha_of "$p" || exit 1
  printf '%s %s\n' "$n" "${h%% *}"
  if [ "$n" -le "$len" ]; then base64 -w 0 < "$p" 2>/dev/null || base64 < "$p" || exit 1
  else { head -c "$len" < "$p" | base64 -w 0; } 2>/dev/null || head -c "$len" < "$p" | base64 || exit 1; fi
else
  { tail -c +"$((off + 1))" -- "$p" | head -c "$len" | base64 -w 0; } 2>/dev/null ||
    tail -c +"$((off + 1))" -- "$p" | head -c "$len" | base64 || exit 1
fi
]]

-- A read over a byte channel (SSH): the checks SH_READ makes, the sha256 of the file, then the
-- file raw on stdout (exactly the SIZE bytes hashed: a file that grows meanwhile sends no more),
-- then "@galley-read SIZE SHA256" as stderr's last line (too large: exit 41
-- with "@galley-size SIZE" on stderr). python3 where wc or head is missing.
local SH_STREAM_READ = SH_SHA .. [[
p=$1 limit=$2
if ! command -v wc >/dev/null 2>&1 || ! command -v head >/dev/null 2>&1; then
]] .. SH_PICK_PY .. [[
  exec "$P" -I -S -c 'import os, sys, stat, hashlib
p, limit = sys.argv[1], int(sys.argv[2])
try:
    f = open(p, "rb")
except FileNotFoundError:
    sys.exit(40)
except IsADirectoryError:
    sys.exit(43)
except Exception as e:
    sys.stderr.write("%s: %s\n" % (type(e).__name__, e))
    sys.exit(1)
st = os.fstat(f.fileno())
if stat.S_ISDIR(st.st_mode):
    sys.exit(43)
if st.st_size > limit:
    sys.stderr.write("@galley-size %d\n" % st.st_size)
    sys.exit(41)
h, n = hashlib.sha256(), 0
for block in iter(lambda: f.read(1 << 20), b""):
    h.update(block)
    n += len(block)
f.seek(0)
out, left = sys.stdout.buffer, n
for block in iter(lambda: f.read(min(1 << 20, left)), b""):
    out.write(block)
    left -= len(block)
out.flush()
sys.stderr.write("\n@galley-read %d %s\n" % (n, h.hexdigest()))' "$p" "$limit"
fi
[ -e "$p" ] || exit 40
if [ -d "$p" ]; then echo "is a directory" >&2; exit 43; fi
[ -r "$p" ] || { echo "permission denied" >&2; exit 1; }
n=$(wc -c < "$p") || exit 1
if [ "$n" -gt "$limit" ]; then echo "@galley-size $n" >&2; exit 41; fi
hb=$n; sha_of "$p" || exit 1
head -c "$n" < "$p" || exit 1
printf '\n@galley-read %s %s\n' "$n" "${h%% *}" >&2
]]

-- A chunk of a large write: $6 is the sha256 of its $5 raw bytes, to land at byte offset $4 of
-- the temporary file $1; the base64 follows. The chunk at offset 0 creates the file (mode 600,
-- never an existing one; directory $2 first when $3 = 1); the others write into it and never
-- create it. Each reads back exactly its region once written and checks its sha256; when it
-- differs it removes the temporary file and exits 42. The chunks still in flight then find no
-- file (they never create it) and exit 44: a consequence, which the caller reports only when
-- no chunk failed for a reason of its own. The last exec then checks only what it appends and
-- the size. coreutils (GNU dd) when present, else python3.
local SH_CHUNK = "\n" .. SH_SHA .. [[
tmp=$1 d=$2 mk=$3 off=$4 len=$5 digest=$6 hb=$5 skip=$7; shift 8
umask 077
gone() {
  [ -e "$tmp" ] && return 0
  echo "the temporary file is gone: another chunk of this write failed, or something removed it" >&2
  exit 44
}
if [ "$off" = 0 ]; then
  if [ "$mk" = 1 ]; then mkdir -p -- "$d" || exit 1; fi
  (set -C; : > "$tmp") || exit 1
fi
IFS=
if command -v dd >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1 && command -v sha256sum >/dev/null 2>&1; then
  via=
  if [ "$skip" -gt 0 ] 2>/dev/null; then via=proc; fi
  sink() {
    dd of="$tmp" bs=65536 seek="$off" oflag=seek_bytes conv=notrunc,nocreat iflag=fullblock,count_bytes \
      count="$len" status=none
  }
  region() { dd if="$tmp" bs=65536 skip="$off" count="$len" iflag=skip_bytes,count_bytes status=none; }
  while :; do
    if [ -n "$via" ]; then
      ]] .. ARGV_B64 .. [[ 2>/dev/null | sink || { gone; exit 1; }
    else
      ]] .. BASH_JOIN .. [[
      base64 -d <<EOF | sink || { gone; exit 1; }
${b64p-$*}
EOF
    fi
    sha_run region || { gone; exit 1; }
    [ "${h%% *}" = "$digest" ] && break
    if [ -n "$via" ]; then via=; continue; fi
    gone # (the region read found no file: its digest is that of nothing)
    rm -f -- "$tmp"
    echo "verification failed: the $len bytes at offset $off differ once written" >&2
    exit 42
  done
  if [ -n "$via" ]; then echo ]] .. VIA_ARGV .. [[ >&2; fi
else
]] .. SH_PICK_PY .. BASH_JOIN .. [[
  "$P" -I -S -c 'import os, sys, base64, hashlib
data = base64.b64decode(sys.stdin.buffer.read().rstrip(b"\n"), validate=True)
off, n = int(sys.argv[2]), int(sys.argv[3])
try:
    fd = os.open(sys.argv[1], os.O_RDWR)
except FileNotFoundError:
    sys.stderr.write("the temporary file is gone: another chunk of this write failed, or something removed it\n")
    sys.exit(44)
try:
    view, at = memoryview(data), off
    while view:
        view = view[os.pwrite(fd, view, at):]
        at = off + len(data) - len(view)
    h, at = hashlib.sha256(), off
    while at < off + n:
        block = os.pread(fd, min(1 << 20, off + n - at), at)
        if not block:
            break
        h.update(block)
        at += len(block)
finally:
    os.close(fd)
if h.hexdigest() != sys.argv[4]:
    try:
        os.unlink(sys.argv[1])
    except OSError:
        pass
    sys.stderr.write("verification failed: the %d bytes at offset %d differ once written\n" % (n, off))
    sys.exit(42)' "$tmp" "$off" "$len" "$digest" <<EOF
${b64p-$*}
EOF
fi
]]

-- What an instance has, asked once by the first read: coreutils when every tool SH_READ and
-- SH_WRITE run is on PATH, else python3. (A base64 without -w, busybox's, is fine: SH_READ then
-- sends lines, which are stripped here.)
local SH_PROBE = [[
p=no c=yes
]] .. SH_PICK_PY .. [[
if command -v python3 >/dev/null 2>&1 && "$P" -I -S -c 'import base64, hashlib, shutil' >/dev/null 2>&1; then
  p=yes
fi
for t in base64 sha256sum head tail wc chmod chown mv mkdir rm sync tee; do command -v $t >/dev/null 2>&1 || c=no; done
echo "python=$p coreutils=$c"
]]

local PROFILES = { python = true, ["python-only"] = true, coreutils = true }

local SH_TEST = [[if [ "$1" "$2" ] || { [ "$1" = -e ] && [ -L "$2" ]; }; then echo yes; else echo no; fi]]

local SH_MKDIR = [[
p=$1 rec=$2 mode=$3 parent=$4
if [ "$rec" = 1 ]; then
  mkdir -p -- "$p" || exit 1
else
  [ -d "$parent" ] || exit 40
  mkdir -- "$p" || exit 1
fi
if [ -n "$mode" ]; then chmod -- "$mode" "$p" || exit 1; fi
]]

local SH_LIST = [[
[ -e "$1" ] || exit 40
if [ ! -d "$1" ]; then echo "not a directory" >&2; exit 43; fi
find "$1" -mindepth 1 -maxdepth 1 -printf '%y%Y/%s/%T@/%f\0'
]]

-- copy/move: src dst dst_dir create_dirs
local SH_COPY = [[
s=$1 t=$2 d=$3 mk=$4
[ -e "$s" ] || exit 40
if [ -d "$s" ]; then echo "source is a directory" >&2; exit 43; fi
if [ "$mk" = 1 ]; then mkdir -p -- "$d" || exit 1; fi
cp -p -T -- "$s" "$t"
]]

local SH_MOVE = [[
s=$1 t=$2 d=$3 mk=$4
[ -e "$s" ] || [ -L "$s" ] || exit 40
if [ "$mk" = 1 ]; then mkdir -p -- "$d" || exit 1; fi
mv -f -T -- "$s" "$t"
]]

local SH_DELETE_FILE = [[
if [ -d "$1" ] && [ ! -L "$1" ]; then echo "is a directory (use delete_directory)" >&2; exit 43; fi
rm -f -- "$1"
]]

local SH_DELETE_DIR = [[
[ -e "$1" ] || [ -L "$1" ] || exit 0
if [ ! -d "$1" ] || [ -L "$1" ]; then echo "not a directory (use delete_file)" >&2; exit 43; fi
rm -rf -- "$1"
]]


local function sh(script, ...)
  return { "/bin/sh", "-c", script, "sh", ... }
end

-- A write's base64 reaches base64 -d through the here-document of "$*" (put_new in SH_WRITE) or,
-- from PROC_MIN_B64 bytes of it in a write of one exec or a chunk (SH_CHUNK's loop), straight
-- from the argv the kernel keeps (put_proc): /proc/$$/cmdline holds the remote sh's argv,
-- NUL-separated. The script starts with a line break, so `read` takes argv[0] and "-c" up to it
-- (a few bytes, whatever argv[0] the service gave); `dd skip` passes the rest of the script and
-- the arguments (the count set_skip puts in `skip`, the 13th argument of SH_WRITE, the 7th of
-- SH_CHUNK); `read` checks the marker (the next argument: B64_MARK and a line break); and
-- `base64 -d -i` reads the pieces, skipping the NULs between them. dash's expansion of a large
-- "$*" and the here-document's pipe cost ~15 ms per MiB of base64 on this machine kind; this
-- costs one dd. Anything unexpected (no /proc, no dd, a base64 without -i, a marker not where
-- it should be, a content that does not hash right) falls back to the here-document in the
-- same exec: the content is checked either way.
local PROC_MIN_B64 = 64 * 1024

-- Sets the skip argument of a write argv (argv[#argv - 1], before the marker, before the pieces
-- are added): the bytes of the cmdline from the script's second byte through the skip argument's
-- NUL. The number's own digits count, so it is settled by iteration.
local function set_skip(argv)
  argv[#argv] = B64_MARK .. "\n"
  local n = #argv[3]
  for i = 4, #argv - 2 do n = n + #argv[i] + 1 end
  local digits = 1
  while true do
    local s = tostring(n + digits + 1)
    if #s == digits then
      argv[#argv - 1] = s
      return argv
    end
    digits = #s
  end
end


-- A python program under $P (SH_PICK_PY).
local SH_PY_RUN = SH_PICK_PY .. [[exec "$P" -I -S -c "$0" "$@"]]

local function py(script, ...)
  return { "/bin/sh", "-c", SH_PY_RUN, script, ... }
end


local function random_suffix()
  return codec.random_hex(6)
end


-- Without line breaks (the remote programs send none: no copy then). Plain finds (memchr): a
-- character class costs ~10 ms per MiB in Lua's matcher.
local function strip_b64(s)
  if not s:find("\n", 1, true) and not s:find("\r", 1, true) then return s end
  return (s:gsub("[\r\n]", ""))
end


---@class galley.ExecFilesOptions
---@field exec_argv fun(instance_id: string, argv: string[]): {stdout: string, stderr: string, exit_code: integer}
---@field home_dir? string|fun(instance_id: string): string what `~` expands to
---@field max_request_bytes? integer base64 bytes per exec (default 1.5 MiB)
---@field max_arg_bytes? integer bytes per argv element (default 120 KiB, must be < 128 KiB)
---@field max_command_bytes? integer the exec is sent as one line (shell.join of the argv): its
---  largest size (< 128 KiB); writes size their chunks so each line fits
---@field argv_payloads? fun(instance_id: string): boolean with max_command_bytes: asked when a write needs
---  more than one exec line; true lifts the line limit for it (chunks of max_request_bytes in argv elements)
---@field max_response_bytes? integer base64 bytes per read exec (default max_request_bytes)
---@field size_limit? integer largest file moved (default 256 MiB)
---@field decoder? "python"|"python-only"|"coreutils" skip detection (see the header)
---@field parallel? integer chunk execs in flight at once for a large file (default 4)
---@field stream? fun(instance_id: string, argv: string[], sopts: table): table|nil, table|nil a byte channel
---@field stream_min_bytes? integer with `stream`: writes over this size take it even when one exec would do
---@field argv_readback? boolean false: a write's base64 always goes through the here-document (see
---  set_skip); default true
---@field log? galley.Logger

--- Creates a files API bound to one exec function. The table has read_file, write_file,
--- write_file_atomic, file_exists, is_directory, create_directory, list_directory, copy_file,
--- move_file, delete_file, delete_directory (all `(instance_id, path, ...)`), plus
--- forget_instance(id) and stats().
---@param opts galley.ExecFilesOptions
---@return table files
function M.new(opts)
  assert(type(opts) == "table" and type(opts.exec_argv) == "function", "execfiles.new: exec_argv is required")
  local exec_argv = opts.exec_argv
  local max_request = opts.max_request_bytes or M.DEFAULT_MAX_REQUEST_BYTES
  local max_arg = opts.max_arg_bytes or M.DEFAULT_MAX_ARG_BYTES
  local max_response = opts.max_response_bytes or max_request
  local size_limit = opts.size_limit or M.DEFAULT_SIZE_LIMIT
  assert(max_arg >= 4 and max_arg < 128 * 1024, "execfiles.new: max_arg_bytes must be below 128 KiB")
  assert(max_request >= max_arg, "execfiles.new: max_request_bytes must be at least max_arg_bytes")
  assert(opts.decoder == nil or PROFILES[opts.decoder],
    "execfiles.new: decoder must be \"python\", \"python-only\" or \"coreutils\"")
  local max_command = opts.max_command_bytes
  assert(max_command == nil or (max_command >= 4096 and max_command < 128 * 1024),
    "execfiles.new: max_command_bytes must be at least 4096 and below 128 KiB")
  local raw_per_exec = 3 * (max_request // 4)
  local raw_per_read = 3 * (max_response // 4)
  local log = opts.log
  local parallel = opts.parallel or M.DEFAULT_PARALLEL
  assert(math.type(parallel) == "integer" and parallel >= 1, "execfiles.new: parallel must be a positive integer")
  local decoders = {}
  local counters = { execs = 0, streams = 0, argv_reads = 0 }
  local readback = opts.argv_readback ~= false
  -- A write exec that succeeded: counts it when its base64 came back from the instance's argv.
  local function count_readback(res)
    if (res.stderr or ""):find(VIA_ARGV, 1, true) then counters.argv_reads = counters.argv_reads + 1 end
  end
  -- Writes over this many bytes take the byte channel even when one exec could carry them.
  local stream_min = opts.stream_min_bytes or math.huge

  local files = {}
  local stream_read

  local function home_of(id)
    local h = opts.home_dir
    if type(h) == "function" then return h(id) end
    return h
  end

  local function check_id(id)
    common.check_id(id, "instance_id")
  end

  local function path_of(id, path, field)
    check_id(id)
    return common.remote_path(path, home_of(id), field)
  end

  local function run(id, argv)
    counters.execs = counters.execs + 1
    local res, err = exec_argv(id, argv)
    if not res then error(err, 0) end
    return res
  end

  local function io_error(res, operation, path, message, extra)
    local code = "FILE_IO_ERROR"
    if res.exit_code == EXIT_NOT_FOUND then
      code = "NOT_FOUND"
      message = message or "no such file or directory"
    end
    local fields = {
      operation = "files." .. operation,
      resource = "file:" .. path,
      details = { exit_code = res.exit_code, stderr = common.tail(res.stderr) },
    }
    for k, v in pairs(extra or {}) do fields[k] = v end
    local detail = common.tail((res.stderr or ""):gsub("%s+$", ""), 200)
    message = message or (detail ~= "" and detail or ("exit code " .. tostring(res.exit_code)))
    return common.error(code, ("%s %s: %s"):format(operation, path, message), fields)
  end

  local function decoder_for(id)
    if opts.decoder then return opts.decoder end
    local d = decoders[id]
    if d then return d end
    local res = run(id, sh(SH_PROBE))
    local has_py = res.exit_code == 0 and res.stdout:find("python=yes", 1, true) ~= nil
    local has_cu = res.exit_code == 0 and res.stdout:find("coreutils=yes", 1, true) ~= nil
    d = (has_cu or not has_py) and "coreutils" or "python-only"
    decoders[id] = d
    if log then log.debug("file transfer decoder", { instance = id, decoder = d }) end
    return d
  end

  -- Splits base64 text into argv elements of at most max_arg bytes.
  local function pieces(b64, into)
    for i = 1, #b64, max_arg do into[#into + 1] = b64:sub(i, i + max_arg - 1) end
    return into
  end

  local function too_large(operation, path, size)
    return common.error("FILE_TOO_LARGE", ("%s %s: %d bytes is over the limit of %d bytes"):format(
      operation, path, size, size_limit), {
      operation = "files." .. operation, resource = "file:" .. path,
      details = { size = size, limit = size_limit },
      hint = "raise size_limit when creating the provider, or move the file another way",
    })
  end

  -- A source of content: a string, or {from_file = path}. Returns size and next_chunk(n).
  local function open_source(content, operation, path)
    if type(content) == "string" then
      local pos = 1
      return #content, function(n)
        local s = content:sub(pos, pos + n - 1)
        pos = pos + n
        return s
      end, function() end
    end
    if type(content) == "table" and type(content.from_file) == "string" then
      local f, ferr = io.open(content.from_file, "rb")
      if not f then
        common.raise("FILE_IO_ERROR", ("%s %s: cannot open the local source: %s"):format(operation, path, ferr),
          { operation = "files." .. operation, resource = "file:" .. content.from_file })
      end
      local size = f:seek("end")
      f:seek("set", 0)
      return size, function(n) return f:read(n) or "" end, function() f:close() end
    end
    common.raise("VALIDATION_ERROR", "content must be a string or {from_file = \"/local/path\"}", { field = "content" })
  end

  --- Writes `content` to `path` atomically: the target has the old content or the new, never a mix.
  ---@param instance_id string
  ---@param path string absolute or ~-prefixed
  ---@param content string|{from_file: string}
  ---@param wopts? {mode?: string, create_dirs?: boolean, owner?: string, group?: string}
  ---@return true
  ---@raise VALIDATION_ERROR | FILE_TOO_LARGE | FILE_IO_ERROR | NOT_FOUND (instance)
  function files.write_file_atomic(instance_id, path, content, wopts)
    local op = "write_file_atomic"
    path = path_of(instance_id, path)
    wopts = wopts or {}
    if type(wopts) ~= "table" then
      common.raise("VALIDATION_ERROR", "options must be a table", { field = "options" })
    end
    local mode = common.check_mode(wopts.mode) or ""
    local owner = common.check_account(wopts.owner, "owner") or ""
    local group = common.check_account(wopts.group, "group") or ""
    if path == "/" then common.raise("VALIDATION_ERROR", "cannot write to /", { field = "path" }) end
    local size, next_chunk, close = open_source(content, op, path)
    if size > size_limit then
      close()
      error(too_large(op, path, size), 0)
    end
    local dir, base = common.split_path(path)
    local tmp = (dir == "/" and "" or dir) .. "/." .. base:sub(1, 120) .. TMP_MARK .. random_suffix()
    local remote_cleaned = false
    local ok, err = pcall(function()
      -- Writes need no probe: unless told, the remote program picks python3 or coreutils itself.
      local decoder = opts.decoder or decoders[instance_id] or "auto"
      local function argv_of(args)
        if decoder == "coreutils" then return sh(SH_WRITE, table.unpack(args)) end
        if decoder == "auto" then return sh(SH_AUTO_WRITE, PY_WRITE, table.unpack(args)) end
        return sh(SH_PIPE_PY_WRITE, PY_WRITE, table.unpack(args))
      end
      local per_exec = raw_per_exec
      if max_command then
        -- The longest line without content (the largest arguments: a sha256, flags set, a
        -- scope; or a chunk's), then the base64 that fits beside it (each piece costs a space
        -- and maybe two quotes).
        local bare = math.max(#shell.join(argv_of({ path, tmp, dir, "1", "1", "1", mode, owner, group,
          tostring(size), ("0"):rep(64), "tail:" .. size, "99999999", B64_MARK })),
          #shell.join(sh(SH_CHUNK, tmp, dir, "1", tostring(size), tostring(size), ("0"):rep(64), "99999999",
            B64_MARK)))
        local room = max_command - bare - 16
        room = room - 3 * ((room + max_arg - 1) // max_arg)
        if room < 1024 then
          common.raise("VALIDATION_ERROR", ("%s %s: the path leaves no room for content in one exec line"):format(
            op, path), { field = "path", operation = "files." .. op })
        end
        per_exec = math.min(raw_per_exec, 3 * (room // 4))
        if size > per_exec and opts.argv_payloads and opts.argv_payloads(instance_id) then per_exec = raw_per_exec end
      end
      local hasher = codec.sha256_hasher()
      local sent, first = 0, true
      local function failed(res)
        local extra
        if res.exit_code == EXIT_WRONG_KIND then
          local derr = io_error(res, op, path, "the path is a directory", {
            hint = ("write to a file inside it (%s/NAME)"):format(path == "/" and "" or path) })
          derr.details.reason = "is_directory"
          return derr
        end
        if res.exit_code == EXIT_VERIFY then extra = { hint = "the content arrived damaged; try again" } end
        if not wopts.create_dirs and (res.stderr or ""):find("No such file", 1, true) then
          extra = { hint = "pass create_dirs = true to create the parent directories" }
        end
        return io_error(res, op, path, nil, extra)
      end
      -- More than one exec's worth, and a byte channel (SSH): the content goes raw on the
      -- channel's stdin to the same program (scope "stdin"), in one command, checked as it is
      -- written. The digest is taken here first; a local file that changed while it was sent
      -- no longer has it.
      if opts.stream and size > math.min(per_exec, stream_min) then
        local from = type(content) == "table" and content.from_file or nil
        local digest = from and util.sha256_file(from) or codec.sha256(content)
        if not digest then
          common.raise("FILE_IO_ERROR", ("%s %s: cannot read the local source %s"):format(op, path, from),
            { operation = "files." .. op, resource = "file:" .. from })
        end
        counters.streams = counters.streams + 1
        local res, serr = opts.stream(instance_id, argv_of({ path, tmp, dir, wopts.create_dirs and "1" or "0", "1",
          "1", mode, owner, group, tostring(size), digest, "stdin", "0", B64_MARK }),
          { stdin = not from and content or nil, stdin_file = from })
        if not res and errors.is(serr, "STREAM_UNAVAILABLE") then
          -- No channel after all: the chunked execs below do it (what a broken channel may have
          -- left under the temporary name goes first).
          run(instance_id, { "rm", "-f", "--", tmp })
        elseif not res then
          error(serr, 0)
        elseif res.exit_code ~= 0 then
          remote_cleaned = true
          if res.exit_code == EXIT_VERIFY and from and util.sha256_file(from) ~= digest then
            common.raise("FILE_IO_ERROR", ("%s %s: the local source changed while it was read"):format(op, path),
              { operation = "files." .. op, resource = "file:" .. path })
          end
          error(failed(res), 0)
        else
          return
        end
      end
      -- Every chunk but the last is written at its offset by SH_CHUNK, `parallel` execs in
      -- flight, each checking its own bytes there (its length and sha256, hashed here); the last
      -- one appends the final chunk once all others are in, checks that chunk and the size, and
      -- renames. Python-only instances (and parallel = 1) append the chunks in order instead, and
      -- the last exec checks the sha256 of the whole file.
      local chunks = decoder ~= "python-only" and parallel > 1 and size > per_exec and pool.new(parallel)
      local gone -- the answer of a chunk that found no temporary file (SH_CHUNK's exit 44)
      -- Waits for every chunk in flight: a failure of their own is raised first, then a "gone".
      local function finish_chunks()
        chunks:finish()
        if gone then
          local gerr = failed(gone)
          gerr.details.reason = "temporary_file_gone"
          error(gerr, 0)
        end
      end
      local ok, err = pcall(function()
        repeat
          local raw = next_chunk(per_exec)
          local off = sent
          sent = sent + #raw
          if not chunks then hasher:update(raw) end
          local last = sent >= size or #raw == 0
          if last and sent ~= size then
            common.raise("FILE_IO_ERROR", ("%s %s: the local source changed while it was read"):format(op, path),
              { operation = "files." .. op, resource = "file:" .. path })
          end
          if chunks and not last then
            local argv = sh(SH_CHUNK, tmp, dir, wopts.create_dirs and "1" or "0", tostring(off), tostring(#raw),
              codec.sha256(raw), "0", B64_MARK)
            local b64 = codec.base64_encode(raw)
            if readback and #b64 >= PROC_MIN_B64 then set_skip(argv) end
            pieces(b64, argv)
            raw, b64 = nil, nil -- luacheck: ignore
            local function send()
              local res = run(instance_id, argv)
              -- No temporary file: the effect of another chunk's failure (whose answer may come
              -- later), so it is kept aside and raised only when no chunk fails of its own.
              if res.exit_code == EXIT_GONE then
                gone = gone or res
              elseif res.exit_code ~= 0 then
                error(failed(res), 0)
              else
                count_readback(res)
              end
            end
            -- The first chunk creates the temporary file, alone; the others never create it, so
            -- one still running on the instance after a failed write was cleaned up cannot
            -- bring the file back.
            if off == 0 then send() else chunks:add(send) end
            if gone then finish_chunks() end
          else
            if chunks then finish_chunks() end
            -- After SH_CHUNK execs (each checked its own bytes where they landed) the last exec
            -- checks what it appends and the size; appended chunks are checked whole at the end.
            local digest, scope = "", "all"
            if last and chunks then
              digest, scope = codec.sha256(raw), "tail:" .. #raw
            elseif last then
              digest = hasher:hex()
            end
            local args = { path, tmp, dir, wopts.create_dirs and "1" or "0", first and "1" or "0",
              last and "1" or "0", mode, owner, group, tostring(size), digest, scope, "0", B64_MARK }
            local argv = argv_of(args)
            local b64 = codec.base64_encode(raw)
            local sh_tools = decoder == "auto" or decoder == "coreutils"
            if readback and first and last and #b64 >= PROC_MIN_B64 and sh_tools then set_skip(argv) end
            pieces(b64, argv)
            local res = run(instance_id, argv)
            if res.exit_code ~= 0 then
              remote_cleaned = true
              error(failed(res), 0)
            end
            count_readback(res)
          end
          first = false
          -- Chunks are megabytes each: collect them now so memory stays near the chunks in
          -- flight (a full cycle costs little next to an exec; strings are not traversed).
          if not last then collectgarbage() end
        until last
      end)
      if not ok then
        if chunks then chunks:abort() end
        error(err, 0)
      end
    end)
    close()
    if not ok then
      -- The remote programs remove the temporary file when they fail; if the exec itself failed
      -- (or the local side did), remove it here, best effort.
      if not remote_cleaned then
        local function remove()
          local rok, res = pcall(exec_argv, instance_id, { "rm", "-f", "--", tmp })
          return rok and type(res) == "table" and res.exit_code == 0
        end
        -- A pending Ctrl-C fails this exec too: the run removes the file at its end, once the
        -- signal is cleared (outside a run, a later write's name never meets it; it stays).
        if not remove() and errors.is(err, "INTERRUPTED") then
          tracker.defer(function() remove() end, ("remove %s on %s"):format(tmp, instance_id))
        end
      end
      error(err, 0)
    end
    if log then log.debug("wrote file", { instance = instance_id, path = path, bytes = size }) end
    return true
  end

  --- Same as write_file_atomic (every write is atomic and verified).
  ---@param instance_id string
  ---@param path string
  ---@param content string|{from_file: string}
  ---@param wopts? {mode?: string, create_dirs?: boolean, owner?: string, group?: string}
  ---@return true
  function files.write_file(instance_id, path, content, wopts)
    return files.write_file_atomic(instance_id, path, content, wopts)
  end

  -- A read of more than one exec's worth over the byte channel: the file raw on the channel's
  -- stdout, into a local file beside `to_file` (renamed once checked) or a private temporary one
  -- (string mode); SH_STREAM_READ's last stderr line gives the size and sha256 it hashed first,
  -- which what arrived must match (else the file changed while it was read, or was damaged).
  function stream_read(instance_id, path, to_file)
    local op = "read_file"
    local part = to_file and (to_file .. ".part-" .. random_suffix()) or os.tmpname()
    local ok, res, serr = pcall(function()
      counters.streams = counters.streams + 1
      -- (the channel stops an instance that sends more than the limit: see common.redirected)
      return opts.stream(instance_id, sh(SH_STREAM_READ, path, tostring(size_limit)),
        { stdout_file = part, max_stdout_bytes = size_limit })
    end)
    local function fail(e)
      os.remove(part)
      error(e, 0)
    end
    if not ok then fail(res) end
    if not res then
      os.remove(part)
      if errors.is(serr, "STREAM_UNAVAILABLE") then return nil end -- exec it is
      error(serr, 0)
    end
    local stderr = res.stderr or ""
    if res.exit_code == EXIT_TOO_LARGE then
      fail(too_large(op, path, tonumber(stderr:match("@galley%-size (%d+)")) or -1))
    elseif res.exit_code ~= 0 then
      fail(io_error(res, op, path))
    end
    local n, digest = stderr:match("@galley%-read (%d+) (%x+)%s*$")
    local st = fs.stat(part)
    if not n or not st or st.size ~= tonumber(n) or util.sha256_file(part) ~= digest then
      fail(common.error("FILE_IO_ERROR", ("%s %s: content does not match the remote sha256"):format(op, path), {
        operation = "files." .. op, resource = "file:" .. path, hint = "the file may have changed while it was read" }))
    end
    if to_file then
      local rok, rerr = os.rename(part, to_file)
      if not rok then
        fail(common.error("FILE_IO_ERROR", ("%s: cannot rename to %s: %s"):format(op, to_file, rerr),
          { operation = "files." .. op, resource = "file:" .. to_file }))
      end
      return { path = to_file, size = tonumber(n), sha256 = digest }
    end
    runtime.trim_memory()
    local f = assert(io.open(part, "rb"))
    local data = f:read(tonumber(n)) or ""
    f:close()
    os.remove(part)
    return data
  end

  --- Reads a file. Returns its content, or with `{to_file = p}` streams it into the local file p
  --- (written beside p, then renamed) and returns `{path, size, sha256}`.
  ---@param instance_id string
  ---@param path string
  ---@param ropts? {to_file?: string}
  ---@return string|{path: string, size: integer, sha256: string}
  ---@raise NOT_FOUND | FILE_TOO_LARGE | FILE_IO_ERROR | VALIDATION_ERROR
  function files.read_file(instance_id, path, ropts)
    local op = "read_file"
    path = path_of(instance_id, path)
    ropts = ropts or {}
    local decoder = decoder_for(instance_id)
    local function fetch(what, off)
      local args = { path, what, tostring(off), tostring(raw_per_read), tostring(size_limit) }
      local python = decoder == "python-only" or (decoder == "python" and what == "head")
      local argv = python and py(PY_READ, table.unpack(args)) or sh(SH_READ, table.unpack(args))
      local res = run(instance_id, argv)
      if res.exit_code == EXIT_TOO_LARGE then
        error(too_large(op, path, tonumber(res.stdout:match("^(%d+)")) or -1), 0)
      elseif res.exit_code ~= 0 then
        error(io_error(res, op, path), 0)
      end
      return res.stdout
    end
    local function decode(b64)
      local raw, derr = codec.base64_decode(strip_b64(b64))
      if not raw then
        common.raise("FILE_IO_ERROR", ("%s %s: bad base64 from the instance"):format(op, path),
          { operation = "files." .. op, resource = "file:" .. path, details = { cause = derr and derr.code } })
      end
      return raw
    end
    -- "size sha256\n" then the base64: the line is split off without running a pattern over
    -- the megabytes after it.
    local head = fetch("head", 0)
    local nl = head:find("\n", 1, true)
    local size, digest = (nl and head:sub(1, nl - 1) or ""):match("^(%d+) (%x+)$")
    local first_b64 = size and head:sub(nl + 1)
    head = nil -- luacheck: ignore
    if not size then
      common.raise("FILE_IO_ERROR", ("%s %s: unexpected answer from the instance"):format(op, path),
        { operation = "files." .. op, resource = "file:" .. path })
    end
    size = tonumber(size)
    -- (A smaller file came whole with the head: streaming it would only add a round trip.)
    if opts.stream and size > raw_per_read then
      local got = stream_read(instance_id, path, ropts.to_file)
      if got ~= nil then return got end
    end
    local sink, finish, parts
    local part_path
    if ropts.to_file then
      part_path = ropts.to_file .. ".part-" .. random_suffix()
      local f, ferr = io.open(part_path, "wb")
      if not f then
        common.raise("FILE_IO_ERROR", ("%s: cannot create %s: %s"):format(op, ropts.to_file, ferr),
          { operation = "files." .. op, resource = "file:" .. ropts.to_file })
      end
      sink = function(s) assert(f:write(s)) end
      finish = function(good)
        f:close()
        if good then
          local ok, rerr = os.rename(part_path, ropts.to_file)
          if not ok then
            os.remove(part_path)
            common.raise("FILE_IO_ERROR", ("%s: cannot rename to %s: %s"):format(op, ropts.to_file, rerr),
              { operation = "files." .. op, resource = "file:" .. ropts.to_file })
          end
        else
          os.remove(part_path)
        end
      end
    elseif size > raw_per_read then
      -- A large string: gathered in a temporary local file and read in one piece at the end
      -- (once what was in flight is collected), so the peak is twice the content (the read and
      -- its copy into a Lua string), not the pieces plus their concatenation plus the chunks.
      part_path = os.tmpname()
      local f = assert(io.open(part_path, "wb"))
      sink = function(s) assert(f:write(s)) end
      finish = function(good)
        f:close()
        if good then
          runtime.trim_memory() -- the chunks' pages back to the system before the 2x peak
          local g = assert(io.open(part_path, "rb"))
          parts = { g:read(size) or "" }
          g:close()
        end
        os.remove(part_path)
      end
    else
      parts = {}
      sink = function(s) parts[#parts + 1] = s end
      finish = function() end
    end
    local hasher = codec.sha256_hasher()
    local chunks = parallel > 1 and pool.new(parallel)
    local ok, err = pcall(function()
      -- Range reads run `parallel` at once; what they bring is hashed and written in order
      -- (pieces that arrive early wait in `early`: at most `parallel` of them).
      local got, early = 0, {}
      local function check(raw, off)
        if #raw ~= math.min(raw_per_read, size - off) then
          common.raise("FILE_IO_ERROR", ("%s %s: the file changed while it was read"):format(op, path),
            { operation = "files." .. op, resource = "file:" .. path })
        end
      end
      local function consume(raw)
        hasher:update(raw)
        sink(raw)
        got = got + #raw
        while early[got] do
          local nxt = early[got]
          early[got] = nil
          hasher:update(nxt)
          sink(nxt)
          got = got + #nxt
        end
      end
      local first = decode(first_b64)
      first_b64 = nil
      check(first, 0)
      consume(first)
      first = nil -- luacheck: ignore
      local off = got
      while off < size do
        collectgarbage() -- keep memory near the chunks in flight (see write_file_atomic)
        local at = off
        local function one()
          local raw = decode(fetch("range", at))
          check(raw, at)
          if at == got then consume(raw) else early[at] = raw end
          raw = nil -- luacheck: ignore
          collectgarbage() -- the response's strings: keep the heap near the chunks in flight
        end
        if chunks then chunks:add(one) else one() end
        off = off + raw_per_read
      end
      if chunks then chunks:finish() end
      if got ~= size or hasher:hex() ~= digest then
        common.raise("FILE_IO_ERROR", ("%s %s: content does not match the remote sha256"):format(op, path), {
          operation = "files." .. op, resource = "file:" .. path, hint = "the file may have changed while it was read",
        })
      end
    end)
    if not ok then
      if chunks then chunks:abort() end
      pcall(finish, false)
      error(err, 0)
    end
    finish(true)
    if ropts.to_file then return { path = ropts.to_file, size = size, sha256 = digest } end
    if #parts == 1 then return parts[1] end
    return table.concat(parts)
  end

  local function test(instance_id, path, flag)
    path = path_of(instance_id, path)
    local res = run(instance_id, sh(SH_TEST, flag, path))
    if res.exit_code ~= 0 then error(io_error(res, flag == "-d" and "is_directory" or "file_exists", path), 0) end
    return res.stdout:sub(1, 3) == "yes"
  end

  --- True when something exists at path (file, directory or symlink).
  ---@param instance_id string
  ---@param path string
  ---@return boolean
  function files.file_exists(instance_id, path) return test(instance_id, path, "-e") end

  --- True when path is a directory (or a symlink to one).
  ---@param instance_id string
  ---@param path string
  ---@return boolean
  function files.is_directory(instance_id, path) return test(instance_id, path, "-d") end

  local function simple(op, instance_id, path, argv_of)
    local res = run(instance_id, argv_of(path))
    if res.exit_code ~= 0 then error(io_error(res, op, path), 0) end
    return res
  end

  --- Creates a directory. `recursive` (default true) works like `mkdir -p`.
  ---@param instance_id string
  ---@param path string
  ---@param dopts? boolean|{recursive?: boolean, mode?: string} a boolean is `recursive`
  ---@return true
  ---@raise NOT_FOUND (parent missing, not recursive) | FILE_IO_ERROR | VALIDATION_ERROR
  function files.create_directory(instance_id, path, dopts)
    path = path_of(instance_id, path)
    if type(dopts) == "boolean" then dopts = { recursive = dopts } end
    dopts = dopts or {}
    local mode = common.check_mode(dopts.mode) or ""
    local parent = common.split_path(path)
    simple("create_directory", instance_id, path, function(p)
      return sh(SH_MKDIR, p, dopts.recursive == false and "0" or "1", mode, parent)
    end)
    return true
  end

  --- Lists a directory, sorted by name: `{name, path, type, is_directory, size, modified}`
  --- (`type` is "file", "directory", "symlink" or "other"; `modified` in Unix seconds).
  ---@param instance_id string
  ---@param path string
  ---@return {name: string, path: string, type: string, is_directory: boolean, size: integer, modified: integer}[]
  ---@raise NOT_FOUND | FILE_IO_ERROR (not a directory)
  function files.list_directory(instance_id, path)
    path = path_of(instance_id, path)
    local res = simple("list_directory", instance_id, path, function(p) return sh(SH_LIST, p) end)
    local kinds = { f = "file", d = "directory", l = "symlink" }
    local entries = {}
    for rec in res.stdout:gmatch("([^%z]+)%z") do
      local y, yy, size, mtime, name = rec:match("^(.)(.)/(%d+)/([%d.]+)/(.*)$")
      if y then
        entries[#entries + 1] = {
          name = name,
          path = (path == "/" and "" or path) .. "/" .. name,
          type = kinds[y] or "other",
          is_directory = yy == "d",
          size = tonumber(size),
          modified = math.floor(tonumber(mtime)),
        }
      end
    end
    table.sort(entries, function(a, b) return a.name < b.name end)
    return entries
  end

  local function two_paths(op, script, instance_id, src, dst, copts)
    src = path_of(instance_id, src, "source")
    dst = path_of(instance_id, dst, "destination")
    copts = copts or {}
    local res = run(instance_id, sh(script, src, dst, (common.split_path(dst)), copts.create_dirs and "1" or "0"))
    if res.exit_code ~= 0 then
      error(io_error(res, op, res.exit_code == EXIT_NOT_FOUND and src or dst), 0)
    end
    return true
  end

  --- Copies a file (mode, owner and times kept), replacing dst.
  ---@param instance_id string
  ---@param src string
  ---@param dst string
  ---@param copts? {create_dirs?: boolean}
  ---@return true
  ---@raise NOT_FOUND (src) | FILE_IO_ERROR
  function files.copy_file(instance_id, src, dst, copts)
    return two_paths("copy_file", SH_COPY, instance_id, src, dst, copts)
  end

  --- Renames src to dst (a file or directory), replacing a file at dst.
  ---@param instance_id string
  ---@param src string
  ---@param dst string
  ---@param mopts? {create_dirs?: boolean}
  ---@return true
  ---@raise NOT_FOUND (src) | FILE_IO_ERROR
  function files.move_file(instance_id, src, dst, mopts)
    return two_paths("move_file", SH_MOVE, instance_id, src, dst, mopts)
  end

  --- Deletes a file or symlink; a missing path is not an error.
  ---@param instance_id string
  ---@param path string
  ---@return true
  ---@raise FILE_IO_ERROR (a directory, or rm failed)
  function files.delete_file(instance_id, path)
    path = path_of(instance_id, path)
    simple("delete_file", instance_id, path, function(p) return sh(SH_DELETE_FILE, p) end)
    return true
  end

  --- Deletes a directory and everything in it; a missing path is not an error.
  ---@param instance_id string
  ---@param path string
  ---@return true
  ---@raise FILE_IO_ERROR (not a directory) | VALIDATION_ERROR ("/")
  function files.delete_directory(instance_id, path)
    path = path_of(instance_id, path)
    if path == "/" then common.raise("VALIDATION_ERROR", "refusing to delete /", { field = "path" }) end
    simple("delete_directory", instance_id, path, function(p) return sh(SH_DELETE_DIR, p) end)
    return true
  end

  --- Forgets what was learnt about an instance (its decoder); providers call it on terminate.
  ---@param instance_id string
  function files.forget_instance(instance_id) decoders[instance_id] = nil end

  --- Counters for tests and benchmarks: exec_argv calls so far, writes over the byte channel, and
  --- write execs (one-exec writes, chunks) whose base64 the instance read back from its own argv
  --- (set_skip).
  ---@return {execs: integer, streams: integer, argv_reads: integer}
  function files.stats()
    return { execs = counters.execs, streams = counters.streams, argv_reads = counters.argv_reads }
  end

  --- The byte channel, when the provider has one (see `stream` in the options): runs argv with
  --- stdin from `stdin_file`/`stdin` and stdout into `stdout_file`; nil, STREAM_UNAVAILABLE when
  --- it cannot be used (then exec it is). nil when there is no channel at all.
  files.stream = opts.stream and function(instance_id, argv, sopts)
    check_id(instance_id)
    counters.streams = counters.streams + 1
    return opts.stream(instance_id, argv, sopts or {})
  end or nil

  return files
end

return M
