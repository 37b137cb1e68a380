--- galley.workspace: trees in and out of an instance, and the agent's commits back as a git branch.
--
--   local workspace = require("galley.workspace")
--   local r = workspace.push(provider, id, "./app", "~/app")             -- honours .gitignore
--   -- r = {sent = 12, bytes = 34567, unchanged = 980, deleted = 0, execs = 3, files = {...}}
--   workspace.pull(provider, id, "~/app/out", "./out", { delete = true })
--   workspace.push_repo(provider, id, ".", "~/work", { branch = "galley/fix-tests", dirty = true })
--   -- ... the agent works and commits (or not) in ~/work ...
--   local b = workspace.pull_repo(provider, id, "~/work", ".", { branch = "galley/fix-tests" })
--   -- b = {branch = "galley/fix-tests", base = sha, head = sha, commits = {sha, ...}}
--
-- How trees travel (only provider.exec of an argv is used, so it works on every provider):
-- - One exec returns the remote manifest (type, mode, size, sha256 or symlink target of every
--   file and symlink below the remote directory, base64 so any byte survives). The local one
--   comes from the same program run here, over the files git would see
--   (`git ls-files --cached --others --exclude-standard`) when the tree is in a repository.
-- - What differs travels as ONE tar stream, written here in Lua while the files are read (so a
--   file that changes while it is sent is noticed: its sha256 no longer matches the manifest).
--   The stream is cut into chunks of what one exec can carry (base64 in argv, sized to
--   `capabilities.max_command_bytes` when the provider sends each exec as one line; a Morph
--   provider with exec_form "auto" is asked first, see provider.exec_form), and up to
--   `parallel` chunk execs are in flight at once (galley.task), each writing at its offset of a
--   temporary file on the instance. The last exec checks the size and sha256 of the whole
--   stream, unpacks it into a staging directory beside the files and renames each file into
--   place: every file lands whole or not at all. A stream that fits one exec is one exec.
-- - Over a provider's byte channel (files.stream), a push of NATIVE_MIN_BYTES or more is ONE
--   command instead (push_native): the real tar packs the files here, compressed, into a FIFO
--   that is the channel's stdin, and tar -x unpacks it there while it arrives; changes made
--   while tar reads are found by stat (and sha256 for recently changed files) and dropped there
--   before anything is renamed into place.
-- - Pull is the mirror image: one exec packs what differs into a temporary tar on the instance,
--   chunk reads run in parallel and are written at their offsets of a local temporary file,
--   whose sha256 is checked; it is unpacked (GNU tar) into a staging directory and each file is
--   renamed into place after its type, size, sha256 and symlink target were checked against
--   the remote manifest.
-- - Paths leaving the destination (`..`, absolute paths, an absolute symlink target or one that
--   climbs out, on pull) are VALIDATION_ERROR before anything is written.
-- Remote needs: sh, find, xargs, sha256sum, base64, dd, tar (GNU coreutils/findutils/tar);
-- python3 makes the final renames fast (without it a shell loop does them). Git for *_repo.
-- Every exec has a time limit (opts.exec_timeout_ms of each call, default
-- M.DEFAULT_EXEC_TIMEOUT_MS): a wedged instance fails the call with the provider's TIMEOUT.
local codec = require("galley.core.codec")
local fs = require("galley.core.fs")
local proc = require("galley.core.proc")
local errors = require("galley.errors")
local pool = require("galley.pool")
local task = require("galley.task")
local tracker = require("galley.tracker")
local util = require("galley.util")

local M = {}

--- Time limit of each exec a workspace call makes on the instance (opts.exec_timeout_ms).
M.DEFAULT_EXEC_TIMEOUT_MS = 600000

M.DEFAULT_PARALLEL = 4
M.DEFAULT_REQUEST_BYTES = 1792 * 1024 -- base64 per exec without max_command_bytes (argv + env < 2 MiB)
M.DEFAULT_RESPONSE_BYTES = 4096 * 1024 -- base64 per chunk read
M.MAX_ARG_BYTES = 120 * 1024
M.DEFAULT_AUTHOR = { name = "galley agent", email = "agent@galley.invalid" }

local TMP = ".galley-tmp-"
local EXIT_NO_GIT, EXIT_NOT_EMPTY, EXIT_NOT_PUSHED = 44, 45, 46

-- ---------------------------------------------------------------------------------------------
-- Remote (and local) programs
-- ---------------------------------------------------------------------------------------------

-- $1 is a directory that may start with ~ (expanded with $HOME); sets d.
local PRELUDE = [[
d=$1; shift
case $d in "~") d=$HOME ;; "~/"*) d=$HOME/${d#"~/"} ;; esac
PY=python3; [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
]]

-- Shell lines that decode the base64 in "$@" into `file` (a variable of the script, e.g. "$f")
-- at byte offset $off, or exit 1. The base64 reaches base64 -d through a here-document of "$*" with an
-- empty IFS (dash's printf goes byte by byte; see galley.providers.execfiles).
-- (bash joins an unquoted $* in a here-document with spaces even when IFS is empty: under bash
-- the arguments are joined first; see galley.providers.execfiles, BASH_JOIN.)
local function sh_decode_at(file)
  return "IFS=\n[ -n \"${BASH_VERSION-}\" ] && b64p=\"$*\"\n"
    .. "base64 -d <<EOF | dd of=\"" .. file .. "\" bs=65536 seek=\"$off\" oflag=seek_bytes conv=notrunc"
    .. " iflag=fullblock status=none || exit 1\n${b64p-$*}\nEOF\nunset IFS\n"
end

-- Manifest of $d: a line "tools <names>" (which of zstd, gzip, python3 are installed), then
-- base64 of NUL-separated records "<f|l> <mode> <size> ./path", "<symlink target>" (and
-- "g 0 0 ./path", "" for each .git left out; dd passes the base64 text on and ends stderr with
-- its length, "N bytes ... copied", so a service that cuts an exec's output short is caught), then
-- "SUMS" (after "ERR" when find failed: a directory it could not read, so a tree with holes),
-- then sha256sum -z lines (hashed by python3 where there is one: its hashlib uses the
-- CPU's SHA instructions, twice sha256sum's speed on 10,000 files). $1 = "all", "git" (prune
-- .git) or "ignored" (a pull's: prune .git, and where git is installed leave out what the
-- tree's .gitignore files ignore, unhashed; records "i 0 0 ./path", "<base64>" give the
-- .gitignore files listed, so that galley reads the same rules whether or not git is there;
-- the ./paths after $2 are listed whatever the rules say: a push's files tracked in a repository
-- here that the rules ignore), $2 = a list file of NUL-separated ./paths (local use) or "".
-- Prints NONE when $d does not exist.
local SH_MANIFEST = PRELUDE .. [[
prune=$1 list=$2; shift 2
printf tools; for t in zstd gzip python3; do command -v $t >/dev/null 2>&1 && printf ' %s' $t; done; echo
if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo NONE; exit 0; fi
[ -d "$d" ] || { echo "not a directory: $d" >&2; exit 43; }
cd -- "$d" || exit 1
find . -maxdepth 1 -name "]] .. TMP .. [[*" -mmin +60 -exec rm -rf -- {} + 2>/dev/null
if command -v python3 >/dev/null 2>&1; then
  sums() { "$PY" -I -S -c '
import sys, hashlib
o = sys.stdout.buffer
for p in sys.stdin.buffer.read().split(b"\0"):
    if p:
        h = hashlib.sha256()
        try:
            with open(p, "rb", buffering=0) as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
        except OSError as e:
            sys.stderr.write("%s\n" % e)
            continue
        o.write(h.hexdigest().encode() + b"  " + p + b"\0")
'; }
else
  sums() { xargs -0 -r sha256sum -z --; }
fi
{
  t=
  if [ -z "$list" ] && [ "$prune" = ignored ]; then
    # the list: every file but what the tree's .gitignore files ignore (where git is here),
    # and the paths given (files tracked in galley's repository that its rules ignore)
    t=$(mktemp -d) || { printf 'ERR\0\0'; t=/nonexistent; }
    for p; do if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\0' "$p"; fi; done >"$t/extra"
    set -- -name .git
    find . -mindepth 1 -name "]] .. TMP .. [[*" -prune -o "$@" -prune -printf 'g 0 0 %p\0\0' \
      -o \( -type f -o -type l \) -fprint0 "$t/all" || printf 'ERR\0\0'
    : >"$t/ign"
    if command -v git >/dev/null 2>&1 && git init -q --template= "$t/g" >/dev/null 2>&1; then
      git -c core.excludesFile=/dev/null --git-dir="$t/g/.git" --work-tree=. check-ignore --no-index -z \
        --stdin <"$t/all" >"$t/ign" 2>/dev/null
      [ $? -le 1 ] || : >"$t/ign"
    fi
    LC_ALL=C sort -z -u "$t/all" >"$t/a" && LC_ALL=C sort -z -u "$t/ign" >"$t/i" &&
      LC_ALL=C comm -z -23 "$t/a" "$t/i" | cat - "$t/extra" | LC_ALL=C sort -z -u >"$t/keep" || printf 'ERR\0\0'
    list=$t/keep
  fi
  if [ -n "$list" ]; then
    xargs -0 -r -a "$list" sh -c 'find "$@" -maxdepth 0 \( -type f -o -type l \) -printf "%y %m %s %p\0%l\0"' sh
    if [ -n "$t" ]; then
      # the rules themselves, for galley to read again (the same answer where git is not here)
      xargs -0 -r -a "$list" sh -c 'find "$@" -maxdepth 0 -name .gitignore -type f -print0' sh |
        xargs -0 -r sh -c 'for p; do printf "i 0 0 %s\0" "$p"; base64 -w0 <"$p"; printf "\0"; done' sh
    fi
    printf 'SUMS\0'
    xargs -0 -r -a "$list" sh -c 'find "$@" -maxdepth 0 -type f -print0' sh | sums
    [ -z "$t" ] || rm -rf -- "$t"
  else
    if [ "$prune" = all ]; then set -- -false; else set -- -name .git; fi
    find . -mindepth 1 -name "]] .. TMP .. [[*" -prune -o "$@" -prune -printf 'g 0 0 %p\0\0' \
      -o \( -type f -o -type l \) -printf '%y %m %s %p\0%l\0' || printf 'ERR\0\0'
    printf 'SUMS\0'
    find . -mindepth 1 \( -name "]] .. TMP .. [[*" -o "$@" \) -prune -o -type f -print0 | sums
  fi
} | base64 -w0 | { dd bs=65536 2>&1 >&3 | tail -n 1 >&2; } 3>&1
]]

-- Writes base64 chunk ($3...) at byte offset $2 of file $1 (relative to $d, created with $d).
local SH_CHUNK = PRELUDE .. [[
f=$1 off=$2; shift 2
mkdir -p -- "$d" && cd -- "$d" || exit 1
]] .. sh_decode_at("$f")

-- Python: renames every staged file into place (a staged directory missing in dest in one
-- rename; .galley-tmp-ctl/skip entries are dropped first), then deletes what
-- .galley-tmp-ctl/delete lists. argv: dest stage [expect].
-- With "expect" (a stream packed by tar here, see push_native): .galley-tmp-ctl/expect lists
-- every staged path with the sha256 it must have ("L" + the target for a symlink), and ends
-- with an END record (else the stream arrived incomplete: exit 42, nothing applied). What does
-- not match (changed here while tar read it) is dropped; stdout: base64 of those paths, each
-- followed by a NUL.
local PY_APPLY = [[
import os, sys, shutil, hashlib, base64
dest, stage = sys.argv[1], sys.argv[2]
ctl = os.path.join(stage, ".galley-tmp-ctl")
def raw(p):
    try:
        with open(os.path.join(ctl, p), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
def names(p):
    return [x.decode("utf-8", "surrogateescape") for x in raw(p).split(b"\0") if x]
def drop(s):
    if os.path.isdir(s) and not os.path.islink(s):
        shutil.rmtree(s)
    elif os.path.lexists(s):
        os.unlink(s)
bad = []
if len(sys.argv) > 3:
    recs = raw("expect").split(b"\0")
    if len(recs) < 2 or recs[-2] != b"END" or len(recs) % 2:
        sys.stderr.write("the stream arrived incomplete\n")
        sys.exit(42)
    for i in range(0, len(recs) - 2, 2):
        r, want = recs[i].decode("utf-8", "surrogateescape"), recs[i + 1]
        s = os.path.join(stage, r)
        if want[:1] == b"L":
            ok = os.path.islink(s) and os.fsencode(os.readlink(s)) == want[1:]
        elif os.path.isfile(s) and not os.path.islink(s):
            h = hashlib.sha256()
            with open(s, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            ok = h.hexdigest().encode() == want
        else:
            ok = False
        if not ok:
            bad.append(recs[i])
            drop(s)
for r in names("skip"):
    drop(os.path.join(stage, r))
for root, dirs, files in os.walk(stage):
    rel = os.path.relpath(root, stage)
    if rel == ".galley-tmp-ctl":
        dirs[:] = []
        continue
    keep = []
    for n in dirs:
        s, t = os.path.join(root, n), os.path.normpath(os.path.join(dest, rel, n))
        if os.path.islink(s):
            files.append(n)
        elif rel == "." and n == ".galley-tmp-ctl":
            keep.append(n)
        elif os.path.isdir(t) and not os.path.islink(t):
            keep.append(n)
        else:
            # a directory new here, or where a file or a symlink was (never followed): all of
            # it in one rename
            if os.path.lexists(t):
                os.unlink(t)
            os.makedirs(os.path.dirname(t), exist_ok=True)
            os.rename(s, t)
    dirs[:] = keep
    for n in files:
        t = os.path.normpath(os.path.join(dest, rel, n))
        os.makedirs(os.path.dirname(t), exist_ok=True)
        if os.path.isdir(t) and not os.path.islink(t):
            shutil.rmtree(t)
        os.replace(os.path.join(root, n), t)
for r in names("delete"):
    t = os.path.join(dest, r)
    if os.path.islink(t) or os.path.isfile(t):
        os.unlink(t)
if bad:
    sys.stdout.write(base64.b64encode(b"".join(x + b"\0" for x in bad)).decode())
]]

-- Unpacks the uploaded stream $1 (size $2, sha256 $3, compressed with $6 = zstd|gzip|none;
-- base64 data may follow to write at $4 first) into a staging directory and renames the files
-- into place.
local SH_APPLY = PRELUDE .. [[
blob=$1 size=$2 sum=$3 off=$4 py=$5 z=$6; shift 6
mkdir -p -- "$d" && cd -- "$d" || exit 1
if [ $# -gt 0 ]; then
]] .. sh_decode_at("$blob") .. [[
fi
stage=]] .. TMP .. [[stage-$$
fail() { rm -rf -- "$blob" "$stage"; echo "$2" >&2; exit "$1"; }
n=$(wc -c < "$blob") || fail 1 "the stream is missing"
h=$(sha256sum < "$blob")
[ "$n" = "$size" ] && [ "${h%% *}" = "$sum" ] || fail 42 "the stream arrived damaged ($n bytes, $size expected)"
mkdir -- "$stage" || fail 1 "cannot create $stage"
case $z in
  zstd) zstd -d -q -c -- "$blob" | tar -x -p --no-same-owner -f - -C "$stage" ;;
  gzip) gzip -d -c -- "$blob" | tar -x -p --no-same-owner -f - -C "$stage" ;;
  *) tar -x -p --no-same-owner -f "$blob" -C "$stage" ;;
esac || fail 1 "tar -x failed"
rm -f -- "$blob"
if command -v python3 >/dev/null 2>&1; then
  "$PY" -I -S -c "$py" "$PWD" "$stage" || fail 1 "renaming into place failed"
else
  ctl=$stage/.galley-tmp-ctl
  if [ -s "$ctl/skip" ]; then (cd -- "$stage" && xargs -0 -r -a "$ctl/skip" rm -f --); fi
  dirs() { (cd -- "$stage" && find . -mindepth 1 -path ./.galley-tmp-ctl -prune -o -type d -print0); }
  dirs | xargs -0 -r sh -c 'for f; do [ -L "$f" ] || { [ -e "$f" ] && [ ! -d "$f" ]; } || continue
    rm -f -- "$f" || exit 1; done' sh || fail 1 "rm failed"
  dirs | xargs -0 -r mkdir -p -- || fail 1 "mkdir failed"
  (cd -- "$stage" && find . -mindepth 1 -path ./.galley-tmp-ctl -prune -o ! -type d -print0) |
    xargs -0 -r sh -c 'for f; do if [ -d "$f" ] && [ ! -L "$f" ]; then rm -rf -- "$f" || exit 1; fi
    mv -f -T -- "$0/$f" "$f" || exit 1; done' "$stage" || fail 1 "mv failed"
  if [ -s "$ctl/delete" ]; then xargs -0 -r -a "$ctl/delete" rm -f --; fi
fi
rm -rf -- "$stage"
]]

-- Packs the ./paths listed (NUL-separated) in file $1 (base64 data may follow to write at $2
-- first; with $4 = all|git every file, as the manifest sees them, instead) into a temporary
-- tar, compressed with $3 (zstd|gzip|none); prints "size sha256 name".
local SH_PACK = PRELUDE .. [[
lst=$1 off=$2 z=$3 prune=$4; shift 4
cd -- "$d" || exit 40
if [ "$prune" != list ]; then
  lst=]] .. TMP .. [[list-$$
  if [ "$prune" = all ]; then set -- -name "]] .. TMP .. [[*"; else set -- \( -name "]] .. TMP
  .. [[*" -o -name .git \); fi
  find . -mindepth 1 "$@" -prune -o \( -type f -o -type l \) -print0 > "$lst" || exit 1
  set --
elif [ $# -gt 0 ]; then
]] .. sh_decode_at("$lst") .. [[
fi
t=]] .. TMP .. [[pack-$$.tar
tar -c -f "$t" --null --no-recursion -T "$lst" || { rm -f -- "$t" "$lst"; exit 1; }
rm -f -- "$lst"
case $z in
  zstd) zstd -q -3 -T0 --rm -- "$t" && t=$t.zst ;;
  gzip) gzip -1 -- "$t" && t=$t.gz ;;
esac || { rm -f -- "$t" "$t.zst" "$t.gz"; exit 1; }
h=$(sha256sum < "$t")
printf '%s %s %s\n' "$(wc -c < "$t")" "${h%% *}" "$t"
]]

-- Prints base64 of [off, off + len) of file $1 under $d; removes it when $4 = 1.
local SH_RANGE = PRELUDE .. [[
cd -- "$d" || exit 40
tail -c +"$(($2 + 1))" -- "$1" | head -c "$3" | base64 -w0 || exit 1
if [ "$4" = 1 ]; then rm -f -- "$1"; fi
]]

-- Over a byte channel (provider.files.stream: SSH): the whole upload raw on stdin into $d/$1,
-- and a download raw on stdout: its first $2 bytes (the size the manifest said), the file removed
-- afterwards when $3 = 1.
local SH_STREAM_IN = PRELUDE .. [[
mkdir -p -- "$d" && cd -- "$d" || exit 1
cat > "$1" || exit 1
]]

-- Over a byte channel, a push packed by tar here (push_native): the stream compressed with $1
-- (zstd|gzip|none) on stdin is unpacked while it arrives into a staging directory beside the
-- files (tar -i: the control files follow as a second archive), checked against its expect
-- list and renamed into place by $2 (PY_APPLY); $3 names the staging directory.
local SH_STREAM_APPLY = PRELUDE .. [[
z=$1 py=$2 stage=$3
mkdir -p -- "$d" && cd -- "$d" || exit 1
mkdir -- "$stage" || exit 1
case $z in
  zstd) zstd -d -q -c | tar -x -i -p --no-same-owner -f - -C "$stage" ;;
  gzip) gzip -d -c | tar -x -i -p --no-same-owner -f - -C "$stage" ;;
  *) tar -x -i -p --no-same-owner -f - -C "$stage" ;;
esac || { rm -rf -- "$stage"; echo "tar -x failed" >&2; exit 1; }
"$PY" -I -S -c "$py" "$PWD" "$stage" expect || { s=$?; rm -rf -- "$stage"; exit "$s"; }
rm -rf -- "$stage"
]]

-- Here, the producer of push_native's stream: stdout to the FIFO $1 (the byte channel's
-- stdin), tar of the ./paths listed in $3 (NUL-separated) below $2, then what arrives on stdin
-- (the control files, a second archive), compressed with $4; tar's messages into file $5, the
-- compressed size (dd's count) into $5.count. Once tar has read every file it
-- says so on stderr ("galley-packed STATUS"); the control files come after that. A file gone
-- meanwhile is left out (--ignore-failed-read); tar's 1 ("file changed as we read it") is not a
-- failure: push_native finds such files itself.
local SH_PRODUCE = [[
exec > "$1" || exit 1
d=$2 list=$3 z=$4 err=$5
{ tar -c -f - --null --no-recursion --verbatim-files-from --ignore-failed-read -C "$d" -T "$list" 2>"$err"
  s=$?; echo "galley-packed $s" >&2
  [ "$s" -le 1 ] && exec cat; } | case $z in
  zstd) zstd -q -1 -T0 -c ;;
  gzip) gzip -1 -c ;;
  *) cat ;;
esac | LC_ALL=C dd bs=65536 2>"$err.count"
]]

-- Over a byte channel, a pull packed by the real tar there (pull_native): the ./paths on
-- stdin (NUL-separated), packed and compressed with $1 onto stdout.
local SH_STREAM_PACK = PRELUDE .. [[
z=$1
cd -- "$d" || exit 40
tar -c -f - --null --no-recursion --verbatim-files-from -T - | case $z in
  zstd) zstd -q -1 -T0 -c ;;
  gzip) gzip -1 -c ;;
  *) cat ;;
esac
]]

-- Here, pull_native's unpacker: the compressed stream from the FIFO $1 (the channel's stdout),
-- its size counted into file $5, decompressed with $3, at most $4 bytes of tar (what the
-- manifest's sizes allow: an instance that sends more cannot fill this disk) unpacked into the
-- staging directory $2.
local SH_UNPACK = [[
s=$2 z=$3 max=$4 cnt=$5
LC_ALL=C dd bs=65536 < "$1" 2>"$cnt" | case $z in
  zstd) zstd -d -q -c ;;
  gzip) gzip -d -c ;;
  *) cat ;;
esac | head -c "$max" | tar -x -p --no-same-owner -f - -C "$s"
]]

local SH_STREAM_OUT = PRELUDE .. [[
cd -- "$d" || exit 40
head -c "$2" < "$1" || exit 1
if [ "$3" = 1 ]; then rm -f -- "$1"; fi
]]

local SH_RM = PRELUDE .. [[
cd -- "$d" 2>/dev/null || exit 0
rm -rf -- "$@"
]]

-- push_repo, on the instance: $d is the parent of the target; argv: the uploaded bundle (size,
-- sha256), its ref, branch, base commit, target (a name in $d, missing or an empty directory).
local SH_CLONE = PRELUDE .. [[
blob=$1 size=$2 sum=$3 ref=$4 branch=$5 base=$6 target=$7
cd -- "$d" || exit 1
tmp=
cleanup() { rm -rf -- "$blob" ${tmp:+"$tmp"}; }
command -v git >/dev/null 2>&1 || { cleanup; exit 44; }
if [ -L "$target" ] || { [ -e "$target" ] && { [ ! -d "$target" ] || [ -n "$(ls -A -- "$target")" ]; }; }; then
  cleanup; exit 45
fi
n=$(wc -c < "$blob"); h=$(sha256sum < "$blob")
[ "$n" = "$size" ] && [ "${h%% *}" = "$sum" ] || { cleanup; echo "the bundle arrived damaged" >&2; exit 42; }
tmp=]] .. TMP .. [[clone-$$
{ git init -q -- "$tmp" &&
  git -C "$tmp" fetch -q --no-tags "$PWD/$blob" "$ref:refs/heads/$branch" &&
  git -C "$tmp" symbolic-ref HEAD "refs/heads/$branch" &&
  git -C "$tmp" reset -q --hard &&
  git -C "$tmp" update-ref refs/galley/base "$base"; } >&2 || { cleanup; echo "git failed" >&2; exit 1; }
rm -f -- "$blob"
if [ -d "$target" ]; then rmdir -- "$target" || { cleanup; exit 45; }; fi
mv -T -- "$tmp" "$target" || { cleanup; exit 1; }
]]

-- pull_repo, on the instance: commits uncommitted work on the branch, bundles base..branch.
-- argv after $d: branch name email message. Prints "base head [size sha file]".
local SH_BUNDLE = PRELUDE .. [[
branch=$1 name=$2 email=$3 msg=$4
command -v git >/dev/null 2>&1 || exit 44
cd -- "$d" 2>/dev/null || exit 40
base=$(git rev-parse -q --verify refs/galley/base) || exit 46
cur=$(git symbolic-ref -q --short HEAD || true)
if [ "$cur" != "$branch" ]; then
  git checkout -q -B "$branch" >&2 || exit 1
fi
git add -A >&2 || exit 1
if ! git diff --cached --quiet; then
  GIT_AUTHOR_NAME=$name GIT_AUTHOR_EMAIL=$email GIT_COMMITTER_NAME=$name GIT_COMMITTER_EMAIL=$email \
    git -c commit.gpgsign=false commit -q --no-verify -m "$msg" >&2 || exit 1
fi
head=$(git rev-parse HEAD) || exit 1
if [ "$head" = "$base" ]; then echo "$base $head"; exit 0; fi
t=]] .. TMP .. [[bundle-$$
git bundle create -q "$t" "refs/heads/$branch" "^$base" >&2 || exit 1
h=$(sha256sum < "$t")
printf '%s %s %s %s %s\n' "$base" "$head" "$(wc -c < "$t")" "${h%% *}" "$t"
]]

-- ---------------------------------------------------------------------------------------------
-- Small helpers
-- ---------------------------------------------------------------------------------------------

local function raise(code, message, fields)
  errors.raise(code, message, fields, 3)
end


-- A private (0700) temporary directory here, in $TMPDIR else /tmp; `what` names its use.
local function make_tmpdir(what, operation)
  local dir, err = fs.mkdtemp("galley-" .. what .. "-")
  if not dir then
    raise("FILE_IO_ERROR", ("cannot create a local temporary directory: %s"):format(err and err.message or "?"),
      { operation = operation or "workspace", hint = "set TMPDIR to a writable directory with free space" })
  end
  return dir
end


local function check_opts(opts, name)
  if opts == nil then return {} end
  if type(opts) ~= "table" then raise("VALIDATION_ERROR", name .. ": options must be a table", { field = "opts" }) end
  if opts.gitignore ~= nil and type(opts.gitignore) ~= "boolean" then
    raise("VALIDATION_ERROR", name .. ": gitignore must be true or false", { field = "gitignore",
      hint = "gitignore = false takes what git ignores too (.git directories still stay)" })
  end
  return opts
end


-- Whether a push or pull honours git's ignore rules (opts.all and opts.gitignore = false do not).
local function honours_gitignore(opts)
  return not opts.all and opts.gitignore ~= false
end


-- opts[field], when given, is a positive integer.
local function check_count(opts, field)
  local v = opts and opts[field]
  if v ~= nil and (math.type(v) ~= "integer" or v < 1) then
    raise("VALIDATION_ERROR", field .. " must be a positive integer", { field = field })
  end
  return v
end


local function check_string(v, field)
  if type(v) ~= "string" or v == "" then
    raise("VALIDATION_ERROR", ("%s must be a non-empty string"):format(field), { field = field })
  end
  return v
end


local function sh_argv(script, ...)
  return { "-c", script, "sh", ... }
end


-- Runs a local program; returns the result table (exit codes are results).
local function run_local(argv, o)
  o = o or {}
  local res, err = proc.run({ argv = argv, cwd = o.cwd, stdin = o.stdin, env = o.env, timeout_ms = o.timeout_ms })
  if not res then error(err, 0) end
  return res
end


local function git(repo, args, o)
  local argv = { "git", "-C", repo }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return run_local(argv, o)
end


local function git_ok(repo, args, what, o)
  local res = git(repo, args, o)
  if res.exit_code ~= 0 then
    local why = (res.stderr or ""):gsub("%s+$", "")
    raise("PROCESS_ERROR", ("git %s in %s failed: %s"):format(what or args[1], repo, why),
      { operation = "workspace.git", resource = "file:" .. repo,
        details = { exit_code = res.exit_code, stderr = (res.stderr or ""):sub(-2000) } })
  end
  return (res.stdout:gsub("%s+$", ""))
end


local function random_name() return codec.random_hex(6) end


-- A remote session: counts execs, raises on transport failures.
local function remote(provider, id, stats, opts)
  local limit = check_count(opts, "exec_timeout_ms")
  local eopts = { timeout_ms = limit or M.DEFAULT_EXEC_TIMEOUT_MS }
  local r = { id = id }
  function r.run(script, ...)
    stats.execs = stats.execs + 1
    return provider.exec(id, { kind = "argv", command = "/bin/sh", args = sh_argv(script, ...) }, eopts)
  end
  -- True when payload execs may be argv arrays beyond one exec line: a provider whose
  -- exec_form is "auto" probes once (exec_form(id)) the first time a payload needs it.
  function r.argv_payloads()
    local caps = provider.capabilities or {}
    if caps.exec_form ~= "auto" or type(provider.exec_form) ~= "function" then return false end
    return provider.exec_form(id) == "argv"
  end
  -- The provider's byte channel, if any: script with stdin/stdout redirected (sopts). nil,
  -- STREAM_UNAVAILABLE when it cannot be used (exec it is, from then on).
  local files = provider.files
  if type(files) == "table" and type(files.stream) == "function" and not (opts and opts.stream == false) then
    function r.stream(script, sopts, ...)
      stats.streams = (stats.streams or 0) + 1
      local argv = { "/bin/sh" }
      for _, a in ipairs(sh_argv(script, ...)) do argv[#argv + 1] = a end
      local res, err = files.stream(id, argv, sopts)
      if not res and errors.is(err, "STREAM_UNAVAILABLE") then r.stream = nil end
      return res, err
    end
  end
  function r.fail(res, op, path, fields)
    local code = res.exit_code == 40 and "NOT_FOUND" or "FILE_IO_ERROR"
    local detail = (res.stderr or ""):gsub("%s+$", ""):sub(-300)
    fields = fields or {}
    if res.exit_code == 43 and not fields.hint then -- (the manifest's "not a directory")
      fields.hint = ("%s is a file on the instance: give the directory that holds (or will hold) the tree")
        :format(path)
      fields.details = { exit_code = 43, reason = "not_a_directory", stderr = (res.stderr or ""):sub(-2000) }
    end
    fields.operation = fields.operation or ("workspace." .. op)
    fields.resource = fields.resource or ("file:" .. path)
    fields.details = fields.details or { exit_code = res.exit_code, stderr = (res.stderr or ""):sub(-2000) }
    raise(code, ("%s %s on %s: %s"):format(op, path, id, detail ~= "" and detail or ("exit code " .. res.exit_code)),
      fields)
  end
  return r
end


-- ---------------------------------------------------------------------------------------------
-- Paths and ignore patterns
-- ---------------------------------------------------------------------------------------------

-- A relative path that stays inside its root: no "..", no absolute path, no empty components.
local function safe_rel(p)
  if p == "" or p:find("%z") then return false end
  local s = "/" .. p .. "/" -- (an absolute path, or an empty, "." or ".." component)
  return not (s:find("//", 1, true) or s:find("/./", 1, true) or s:find("/../", 1, true))
end
M.safe_rel = safe_rel


-- A symlink target that resolves inside the root from the link at rel.
-- Where the symlink `rel` -> `target` points, as a path relative to the root ("" for the root
-- itself), read lexically; nil when it leaves the root or is absolute.
local function link_path(rel, target)
  if target == "" or target:sub(1, 1) == "/" then return nil end
  local parts = {}
  for part in rel:gmatch("([^/]*)/") do parts[#parts + 1] = part end
  for part in (target .. "/"):gmatch("([^/]*)/") do
    if part == ".." then
      if #parts == 0 then return nil end
      parts[#parts] = nil
    elseif part ~= "" and part ~= "." then
      parts[#parts + 1] = part
    end
  end
  return table.concat(parts, "/")
end

local function safe_link(rel, target) return link_path(rel, target) ~= nil end
M.safe_link = safe_link


-- The part of the relative path `rel` up to its first .git component ("a/.git" of
-- "a/.git/hooks/x"), or nil when it has none.
local function git_part(rel)
  local _, e = ("/" .. rel .. "/"):find("/.git/", 1, true)
  return e and rel:sub(1, e - 2) or nil
end


-- The local .git directory (under root) that `rel` would write into, if it is here already.
local function existing_git_dir(root, rel)
  local part = git_part(rel)
  local dir = part and root .. "/" .. part
  return dir and fs.stat(dir) and dir or nil
end


-- gitignore-like glob: * and ? stay within a component, ** crosses them.
local function glob(p, s)
  local function m(pi, si)
    while pi <= #p do
      local c = p:sub(pi, pi)
      if c == "*" then
        if p:sub(pi + 1, pi + 1) == "*" then
          local rest = pi + 2
          if p:sub(rest, rest) == "/" then
            for k = si, #s + 1 do
              if (k == si or s:sub(k - 1, k - 1) == "/") and m(rest + 1, k) then return true end
            end
            return false
          end
          for k = si, #s + 1 do if m(rest, k) then return true end end
          return false
        end
        for k = si, #s + 1 do
          if m(pi + 1, k) then return true end
          if s:sub(k, k) == "/" then return false end
        end
        return false
      elseif c == "?" then
        if si > #s or s:sub(si, si) == "/" then return false end
      elseif c ~= s:sub(si, si) then
        return false
      end
      pi, si = pi + 1, si + 1
    end
    return si == #s + 1
  end
  return m(1, 1)
end


-- Compiles opts.ignore (a list of gitignore-style patterns; no "!") into a predicate on
-- relative paths: a pattern without "/" matches any component, one with "/" the path from the
-- root, a trailing "/" only directories.
local function ignore_matcher(patterns)
  if patterns == nil then return function() return false end end
  if type(patterns) == "string" then patterns = { patterns } end
  if type(patterns) ~= "table" then
    raise("VALIDATION_ERROR", "ignore must be a list of patterns", { field = "ignore" })
  end
  local compiled = {}
  for i, pat in ipairs(patterns) do
    if type(pat) ~= "string" or pat == "" or pat:sub(1, 1) == "!" then
      raise("VALIDATION_ERROR", ("ignore[%d]: expected a pattern (negation with ! is not supported)"):format(i),
        { field = ("ignore[%d]"):format(i) })
    end
    local dir_only = pat:sub(-1) == "/"
    if dir_only then pat = pat:sub(1, -2) end
    local anchored = pat:find("/", 1, true) ~= nil
    compiled[#compiled + 1] = { pat = pat:gsub("^/", ""), dir_only = dir_only, anchored = anchored }
  end
  return function(rel)
    local prefix, parts = nil, {}
    for part in rel:gmatch("[^/]+") do parts[#parts + 1] = part end
    for i, part in ipairs(parts) do
      prefix = prefix and (prefix .. "/" .. part) or part
      local is_dir = i < #parts
      for _, c in ipairs(compiled) do
        if (is_dir or not c.dir_only) and glob(c.pat, c.anchored and prefix or part) then return true end
      end
    end
    return false
  end
end
M.ignore_matcher = ignore_matcher


-- ---------------------------------------------------------------------------------------------
-- Manifests
-- ---------------------------------------------------------------------------------------------

-- A listing with holes (find could not read a directory) is an error: a copy would silently
-- leave files out, and a delete would remove what the source still has (rsync's rule: no
-- deletion after an I/O error).
local function incomplete_listing(stderr, where)
  local detail = (stderr or ""):gsub("\n?%d+ bytes[^\n]*%s*$", ""):gsub("%s+$", "")
  raise("FILE_IO_ERROR", ("cannot list all of %s: %s"):format(where, detail ~= "" and detail:sub(-300)
    or "find failed"), { operation = "workspace.manifest", resource = "file:" .. where,
    details = { reason = "incomplete_listing", stderr = detail:sub(-2000) },
    hint = "make every directory below it readable (to the user galley runs as there), then copy again" })
end


-- Parses SH_MANIFEST's output (`err`: its stderr) for the tree `where`: nil when the directory
-- is missing, else {rel = entry}; then the set of tools the other side has ({zstd = true, ...}),
-- the .git directories it left out and its .gitignore files ({path, content}; "ignored" only).
-- A listing cut short or with holes raises.
local function parse_manifest(out, where, err)
  local tools = {}
  local line, rest = out:match("^tools([^\n]*)\n(.*)$")
  if line then
    for t in line:gmatch("%S+") do tools[t] = true end
    out = rest
  end
  if out:gsub("%s+$", "") == "NONE" then return nil, tools end
  -- the length the program wrote (dd's count, the last line of its stderr) against what came
  local sent = math.tointeger(tonumber((err or ""):match("(%d+) bytes[^\n]*%s*$") or ""))
  if sent and sent ~= #out then
    raise("PROTOCOL_ERROR", ("the manifest of %s came cut short: %d of %d bytes"):format(where, #out, sent), {
      operation = "workspace.manifest", resource = "file:" .. where,
      details = { reason = "output_truncated", got = #out, sent = sent },
      hint = "the service returns less of one exec's output than the tree's listing needs: copy a smaller "
        .. "directory (or several), or use a provider with a byte channel" })
  end
  out = out:gsub("%s+$", "")
  local raw = codec.base64_decode(out)
  if not raw then
    raise("PROTOCOL_ERROR", "unreadable manifest from " .. where, { operation = "workspace.manifest" })
  end
  local entries, gits, rules = {}, {}, {}
  local pos = 1
  while pos <= #raw do
    local z = raw:find("\0", pos, true)
    if not z then break end
    local rec = raw:sub(pos, z - 1)
    pos = z + 1
    if rec == "SUMS" then break end
    local z2 = raw:find("\0", pos, true)
    if not z2 then break end
    local target = raw:sub(pos, z2 - 1)
    pos = z2 + 1
    if rec == "ERR" then incomplete_listing(err, where) end
    local y, mode, size, path = rec:match("^([fgil]) (%d+) (%d+) %./(.*)$")
    if y == "g" then
      gits[#gits + 1] = path
    elseif y == "i" then
      rules[#rules + 1] = { path = path, content = codec.base64_decode(target) or "" }
    elseif y then
      entries[path] = { type = y == "f" and "file" or "symlink", mode = tonumber(mode, 8) & 4095,
        size = tonumber(size), target = y == "l" and target or nil }
    end
  end
  while pos <= #raw do
    local z = raw:find("\0", pos, true) or (#raw + 1)
    local rec = raw:sub(pos, z - 1)
    pos = z + 1
    local sum, path = rec:match("^(%x+)  %./(.*)$")
    if sum and entries[path] then entries[path].sha256 = sum end
  end
  table.sort(gits)
  return entries, tools, gits, rules
end


local function remote_manifest(rem, dir, prune, extra)
  local res = rem.run(SH_MANIFEST, dir, prune, "", table.unpack(extra or {}))
  if res.exit_code ~= 0 then rem.fail(res, "manifest", dir) end
  return parse_manifest(res.stdout, rem.id .. ":" .. dir, res.stderr)
end


local function write_list(paths)
  local dir = make_tmpdir("ws")
  local f = assert(io.open(dir .. "/list", "wb"))
  for _, p in ipairs(paths) do f:write("./", p, "\0") end
  f:close()
  return dir, dir .. "/list"
end


-- The local manifest of `dir` over `paths` (a list of relative paths) or the whole tree.
local function local_manifest(dir, paths, prune)
  local tmpdir, list = nil, ""
  if paths then tmpdir, list = write_list(paths) end
  local res = run_local({ "/bin/sh", "-c", SH_MANIFEST, "sh", dir, prune or "git", list })
  if tmpdir then fs.remove_tree(tmpdir) end
  if res.exit_code ~= 0 then
    raise("FILE_IO_ERROR", ("cannot list %s: %s"):format(dir, (res.stderr or ""):gsub("%s+$", "")),
      { operation = "workspace.manifest", resource = "file:" .. dir })
  end
  return (parse_manifest(res.stdout, dir, res.stderr)) or {}
end


-- The entries of the paths `rels` below the local directory `dir`: regular files as
-- {type, mode, size, st} (their sha256 only where needed, see hash_missing: libcrypto, several
-- times sha256sum's speed), symlinks, rare, through SH_MANIFEST for their target; anything
-- else, or gone, is left out. The event loop turns every 1,024 paths (a remote exec goes on).
local function stat_entries(dir, rels)
  local files, links = {}, {}
  for k, p in ipairs(rels) do
    if k % 1024 == 0 then task.sleep(0) end
    local st = fs.stat(dir .. "/" .. p)
    if st and st.type == "link" then
      links[#links + 1] = p
    elseif st and st.type == "file" then
      files[p] = { type = "file", mode = st.mode, size = st.size, st = st }
    end
  end
  local entries = #links > 0 and local_manifest(dir, links) or {}
  for p, e in pairs(files) do entries[p] = e end
  return entries
end


-- The git work tree containing dir, or nil.
local function git_toplevel(dir)
  local ok, res = pcall(git, dir, { "rev-parse", "--show-toplevel" })
  if ok and res.exit_code == 0 then return (res.stdout:gsub("%s+$", "")) end
  return nil
end


-- Whether git's ignore rules apply to the local tree `dir`: it is inside a work tree, and not
-- in a part of it that git ignores (a build directory named on purpose is taken whole, as a
-- directory outside any repository is: inside it git would list nothing at all).
local function rules_apply(dir)
  if not git_toplevel(dir) then return false end
  local ok, res = pcall(git, dir, { "check-ignore", "-q", "--", "." })
  return not (ok and res.exit_code == 0)
end


-- The files to consider below local `dir`: {rel = entry}; `git_rules`: git's ignore rules apply
-- there (honours_gitignore and rules_apply).
local function local_tree(dir, opts, git_rules)
  local ignored = ignore_matcher(opts.ignore)
  local entries
  if git_rules then
    local res = git(dir, { "ls-files", "--cached", "--others", "--exclude-standard", "-z" })
    if res.exit_code ~= 0 then
      raise("PROCESS_ERROR", "git ls-files failed in " .. dir, { resource = "file:" .. dir })
    end
    local rels, seen = {}, {}
    for p in res.stdout:gmatch("([^%z]+)%z") do
      if not seen[p] and not ignored(p) then
        seen[p] = true
        rels[#rels + 1] = p
      end
    end
    entries = stat_entries(dir, rels)
  else
    entries = local_manifest(dir, nil, opts.all and "all" or "git")
    for p in pairs(entries) do if ignored(p) then entries[p] = nil end end
  end
  return entries
end


-- Fills in the sha256 of the regular files `rels` of `entries` (a local tree below `dir`) that
-- have none yet; a file gone meanwhile leaves the tree (as find does).
local function hash_missing(dir, entries, rels, operation)
  for k, p in ipairs(rels) do
    local e = entries[p]
    if e and e.type == "file" and not e.sha256 then
      local sum, err = util.sha256_file(dir .. "/" .. p)
      if sum then
        e.sha256 = sum
      elseif err and err.code == "FS_NOT_FOUND" then
        entries[p] = nil
      else
        raise("FILE_IO_ERROR", ("cannot read %s: %s"):format(p, err and err.message or "?"),
          { operation = operation or "workspace.push", resource = "file:" .. dir .. "/" .. p })
      end
    end
    if k % 256 == 0 and task.current() then task.yield() end -- other tasks run meanwhile
  end
end


-- The mode bits a pull keeps: rwx for user, group and others (07000 never lands here).
local SAFE_MODE_BITS = 511

local function same(a, b)
  return a and b and a.type == b.type and a.mode == b.mode and a.size == b.size and a.sha256 == b.sha256
    and a.target == b.target
end


local function sorted(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end


-- The set of `rels` (paths relative to the work tree `repo_dir`) that git ignores there:
-- `git check-ignore [extra]` (without --no-index a file tracked there is never ignored).
local function git_ignored(repo_dir, rels, extra)
  local set = {}
  if #rels == 0 then return set end
  local argv = { "check-ignore", "--stdin", "-z" }
  if extra then table.insert(argv, 2, extra) end
  local res = git(repo_dir, argv, { stdin = table.concat(rels, "\0") .. "\0" })
  if res.exit_code > 1 then -- 1: nothing ignored
    raise("PROCESS_ERROR", ("git check-ignore in %s failed: %s"):format(repo_dir, (res.stderr or ""):gsub("%s+$", "")),
      { operation = "workspace.git", resource = "file:" .. repo_dir,
        details = { exit_code = res.exit_code, stderr = (res.stderr or ""):sub(-2000) } })
  end
  for p in (res.stdout or ""):gmatch("([^%z]+)%z") do set[p] = true end
  return set
end


-- The set of `rels` that a tree's own .gitignore files ignore (`rules`: {path, content}, as its
-- manifest gave them): git check-ignore in a scratch repository holding only those files, and
-- no global excludes, so a tree's rules mean the same whether or not the instance has git.
local function tree_ignored(rules, rels)
  if #rules == 0 or #rels == 0 then return {} end
  local dir = make_tmpdir("ws")
  local ok, set = pcall(function()
    git_ok(dir, { "init", "-q", "--template=" }, "init")
    git_ok(dir, { "config", "core.excludesFile", "/dev/null" }, "config")
    for _, r in ipairs(rules) do
      local parent = r.path:match("^(.*)/[^/]*$")
      -- only a .gitignore inside the tree is written (an instance that lies about its rules
      -- gets no file elsewhere, nor in the scratch repository's .git); one whose place is
      -- taken, by a directory of the same name, is left out
      if r.path:match("[^/]*$") == ".gitignore" and safe_rel(r.path) and not git_part(r.path)
        and (not parent or fs.mkdir_p(dir .. "/" .. parent)) then
        local f = io.open(dir .. "/" .. r.path, "wb")
        if f then
          f:write(r.content)
          f:close()
        end
      end
    end
    return git_ignored(dir, rels, "--no-index")
  end)
  fs.remove_tree(dir)
  if not ok then error(set, 0) end
  return set
end


-- What opts.delete removes on the destination: its entries that the source lacks, sorted, except
-- those ignored (`ignored`; `kept_by_git(candidates)`, the set of them that git's rules keep)
-- and those in a .git directory the source does not have. (all = true lists .git directories:
-- mirroring a tree without one must not empty the repository there.)
local function deletions(source, dest, ignored, kept_by_git)
  local source_git = {}
  for rel in pairs(source) do
    local part = git_part(rel)
    if part then source_git[part] = true end
  end
  local deletes = {}
  for _, rel in ipairs(sorted(dest)) do
    local part = git_part(rel)
    if not source[rel] and not ignored(rel) and not (part and not source_git[part]) then
      deletes[#deletes + 1] = rel
    end
  end
  local skip = #deletes > 0 and kept_by_git and kept_by_git(deletes) or {}
  local kept = {}
  for _, rel in ipairs(deletes) do if not skip[rel] then kept[#kept + 1] = rel end end
  return kept
end


-- ---------------------------------------------------------------------------------------------
-- Tar, written here (ustar + GNU long names)
-- ---------------------------------------------------------------------------------------------

local function octal(n, width)
  return ("%0" .. (width - 1) .. "o"):format(n) .. "\0"
end


local NULS = setmetatable({}, { __index = function(t, n)
  local z = ("\0"):rep(n)
  t[n] = z
  return z
end })

-- The sum of the bytes of s.
local function byte_sum(s)
  local b, n = { s:byte(1, -1) }, 0
  for i = 1, #b do n = n + b[i] end
  return n
end

-- The header's constant bytes: magic, owner and group names, the checksum field as spaces.
local HEADER_SUM = byte_sum("ustar  \0") + 2 * byte_sum("root") + 8 * 32

local function tar_header(name, size, mode, typeflag, linkname, mtime)
  name, linkname = name:sub(1, 100), (linkname or ""):sub(1, 100)
  local m, zero, sz, mt = octal(mode, 8), octal(0, 8), octal(size, 12), octal(mtime, 12)
  -- the checksum sums every byte of the header; NULs add nothing, so only the fields count
  local sum = HEADER_SUM + byte_sum(name) + byte_sum(m) + 2 * byte_sum(zero) + byte_sum(sz) + byte_sum(mt)
    + typeflag:byte() + byte_sum(linkname)
  return name .. NULS[100 - #name] .. m .. zero .. zero .. sz .. mt .. ("%06o\0 "):format(sum) .. typeflag
    .. linkname .. NULS[100 - #linkname] .. "ustar  \0root" .. NULS[28] .. "root" .. NULS[28] .. NULS[183]
end


local function pad(n) return ("\0"):rep((512 - n % 512) % 512) end


-- Header blocks for one entry (a GNU 'L'/'K' record first when a name is over 100 bytes).
local function tar_entry(name, size, mode, typeflag, linkname)
  local out = {}
  if #name > 100 then
    out[#out + 1] = tar_header("././@LongLink", #name + 1, 0, "L", nil, 0) .. name .. "\0" .. pad(#name + 1)
  end
  if linkname and #linkname > 100 then
    out[#out + 1] = tar_header("././@LongLink", #linkname + 1, 0, "K", nil, 0) .. linkname .. "\0" .. pad(#linkname + 1)
  end
  out[#out + 1] = tar_header(name, size, mode, typeflag, linkname, os.time())
  return table.concat(out)
end


-- A tar stream of `items` ({rel, entry}) read from `root`, with control files appended:
-- returns next(n) -> up to n bytes ("" at the end) and changed() -> the rels whose content
-- differed from their entry while read.
local function tar_stream(root, items, control)
  local i, buf, cur, cur_left, hasher, cur_item = 0, {}, nil, 0, nil, nil
  local buffered = 0
  local changed, done = {}, false
  local function push(s)
    if #s > 0 then buf[#buf + 1] = s; buffered = buffered + #s end
  end
  local function finish_file()
    local extra = cur:read(1)
    cur:close()
    cur = nil
    if extra or hasher:hex() ~= cur_item.entry.sha256 then changed[#changed + 1] = cur_item.rel end
  end
  local function refill(n)
    while buffered < n and not done do
      if cur then
        local want = math.min(cur_left, math.max(n - buffered, 65536))
        local s = cur:read(want) or ""
        if #s < want then s = s .. ("\0"):rep(want - #s); hasher:update("\1") end -- shrank: sha differs
        hasher:update(s)
        push(s)
        cur_left = cur_left - want
        if cur_left == 0 then
          push(pad(cur_item.entry.size))
          finish_file()
        end
      else
        i = i + 1
        local it = items[i]
        if it then
          local e = it.entry
          if e.type == "symlink" then
            push(tar_entry(it.rel, 0, e.mode, "2", e.target))
          else
            local f, ferr = io.open(root .. "/" .. it.rel, "rb")
            if not f then
              raise("FILE_IO_ERROR", ("cannot read %s: %s"):format(it.rel, ferr),
                { operation = "workspace.push", resource = "file:" .. root .. "/" .. it.rel })
            end
            push(tar_entry(it.rel, e.size, e.mode, "0"))
            cur, cur_left, hasher, cur_item = f, e.size, codec.sha256_hasher(), it
            if e.size == 0 then finish_file() end
          end
        else
          for _, c in ipairs(control or {}) do
            local body = c.body()
            push(tar_entry(c.name, #body, 420, "0") .. body .. pad(#body))
          end
          push(("\0"):rep(1024))
          done = true
        end
      end
    end
  end
  local function next_bytes(n)
    refill(n)
    local all = table.concat(buf)
    buf, buffered = {}, 0
    if #all > n then
      push(all:sub(n + 1))
      all = all:sub(1, n)
    end
    return all
  end
  return next_bytes, function() return changed end
end


-- ---------------------------------------------------------------------------------------------
-- Moving bytes: chunks in parallel
-- ---------------------------------------------------------------------------------------------

-- How many raw bytes one upload exec carries next to `overhead` bytes of script and arguments
-- (`wide`: the provider's one-line limit does not apply, see remote's argv_payloads).
local function upload_raw_per_exec(provider, overhead, opts, wide)
  if opts.chunk_bytes then return opts.chunk_bytes end
  local caps = provider.capabilities or {}
  local room = M.DEFAULT_REQUEST_BYTES
  if caps.max_command_bytes and not wide then
    room = caps.max_command_bytes - overhead - 512
    room = room - 3 * ((room + M.MAX_ARG_BYTES - 1) // M.MAX_ARG_BYTES)
  end
  return 3 * (room // 4)
end


local function pieces(b64, argv)
  local step = M.MAX_ARG_BYTES
  for i = 1, #b64, step do argv[#argv + 1] = b64:sub(i, i + step - 1) end
  return argv
end


-- Quoted size of arguments, as a one-line exec would send them (single quotes around each,
-- '\'' for a quote inside).
local function quoted_size(list)
  local n = 0
  for _, a in ipairs(list) do
    local _, q = a:gsub("'", "")
    n = n + #a + 3 + 3 * q
  end
  return n
end


-- Uploads the stream next_bytes into `name` under remote dir `dir`; the last exec runs
-- `final(args_so_far)` (see SH_APPLY / SH_CLONE). Returns {size, sha256, execs}.
-- `final` is {script = S, args = fun(size, sha, off) -> list, inline = bool}.
local function upload(provider, rem, dir, name, next_bytes, final, opts)
  local chunk_overhead = quoted_size({ SH_CHUNK, dir, name, "18446744073709551615" })
  local final_overhead = quoted_size({ final.script, dir, name, ("0"):rep(20), ("0"):rep(64), ("0"):rep(20),
    table.unpack(final.extra or {}) })
  local per = upload_raw_per_exec(provider, chunk_overhead, opts)
  local per_final = upload_raw_per_exec(provider, final_overhead, opts)
  local hasher = codec.sha256_hasher()
  local offset = 0
  local p = pool.new(opts.parallel or M.DEFAULT_PARALLEL)
  local spool, spool_in -- the local copy of a stream sent over the byte channel, and its reader
  local ok, err = pcall(function()
    local chunk = next_bytes(per)
    -- More than one exec's worth and a byte channel: the whole stream goes raw in one command
    -- (gathered in a local file first: memory stays flat, and exec can still take it from
    -- there if the channel turns out unusable).
    if #chunk == per and rem.stream and not opts.chunk_bytes then
      spool = os.tmpname()
      local f = assert(io.open(spool, "wb"))
      repeat
        hasher:update(chunk)
        assert(f:write(chunk))
        offset = offset + #chunk
        chunk = next_bytes(1024 * 1024)
      until chunk == ""
      f:close()
      local res, serr = rem.stream(SH_STREAM_IN, { stdin_file = spool }, dir, name)
      if res then
        if res.exit_code ~= 0 then rem.fail(res, "upload", name) end
        local fres = rem.run(final.script, dir, table.unpack(final.args(offset, hasher:hex(), offset)))
        return fres, offset
      elseif not errors.is(serr, "STREAM_UNAVAILABLE") then
        error(serr, 0)
      end
      -- No channel after all: the spool feeds the chunk execs below.
      hasher = codec.sha256_hasher()
      offset = 0
      spool_in = assert(io.open(spool, "rb"))
      next_bytes = function(n) return spool_in:read(n) or "" end
      chunk = next_bytes(per)
    end
    -- More than one exec line of payload: larger chunks if the provider sends argv arrays.
    if not opts.chunk_bytes and (#chunk == per or (final.inline and #chunk > per_final)) and rem.argv_payloads() then
      per = upload_raw_per_exec(provider, chunk_overhead, opts, true)
      per_final = upload_raw_per_exec(provider, final_overhead, opts, true)
      if #chunk < per then chunk = chunk .. next_bytes(per - #chunk) end
    end
    while true do
      hasher:update(chunk)
      local nxt = #chunk == per and next_bytes(per) or ""
      if nxt == "" and final.inline and #chunk <= per_final then
        -- the last chunk rides with the final exec
        p:finish()
        local size = offset + #chunk
        local args = final.args(size, hasher:hex(), offset)
        local res = rem.run(final.script, dir, table.unpack(pieces(codec.base64_encode(chunk), args)))
        return res, size
      end
      if #chunk > 0 then
        local off, data = offset, chunk
        p:add(function()
          local res = rem.run(SH_CHUNK, dir, name, tostring(off), table.unpack(pieces(codec.base64_encode(data), {})))
          if res.exit_code ~= 0 then rem.fail(res, "upload", name) end
        end)
        offset = offset + #chunk
      end
      chunk = nxt
      if chunk == "" then break end
    end
    p:finish()
    local args = final.args(offset, hasher:hex(), offset)
    return rem.run(final.script, dir, table.unpack(args)), offset
  end)
  if spool_in then spool_in:close() end
  if spool then os.remove(spool) end
  if not ok then
    p:abort()
    pcall(rem.run, SH_RM, dir, name)
    error(err, 0)
  end
  return err, hasher:hex()
end


-- Downloads remote file `name` under `dir` (size, sha256) into local path `to`, chunks in
-- parallel; the remote file is removed by the last read.
local function download(rem, dir, name, size, sha, to, opts)
  local per = opts.read_chunk_bytes or 3 * (M.DEFAULT_RESPONSE_BYTES // 4)
  -- More than one exec's worth and a byte channel: raw in one command, checked here.
  if size > per and rem.stream and not opts.read_chunk_bytes then
    local res, serr = rem.stream(SH_STREAM_OUT, { stdout_file = to, max_stdout_bytes = size }, dir, name,
      tostring(size), "1")
    if res then
      if res.exit_code ~= 0 then
        os.remove(to)
        pcall(rem.run, SH_RM, dir, name)
        rem.fail(res, "download", name)
      end
      local st = fs.stat(to)
      if not st or st.size ~= size or util.sha256_file(to) ~= sha then
        os.remove(to)
        raise("FILE_IO_ERROR", ("download %s: it came back damaged"):format(name),
          { operation = "workspace.pull", resource = "file:" .. name })
      end
      return
    elseif not errors.is(serr, "STREAM_UNAVAILABLE") then
      os.remove(to)
      pcall(rem.run, SH_RM, dir, name)
      error(serr, 0)
    end
  end
  local f = assert(io.open(to, "wb"))
  local p = pool.new(opts.parallel or M.DEFAULT_PARALLEL)
  local ok, err = pcall(function()
    local n = math.max(1, (size + per - 1) // per)
    for k = 0, n - 1 do
      local off = k * per
      local len = math.min(per, size - off)
      p:add(function()
        local res = rem.run(SH_RANGE, dir, name, tostring(off), tostring(len), n == 1 and "1" or "0")
        if res.exit_code ~= 0 then rem.fail(res, "download", name) end
        local raw = codec.base64_decode((res.stdout:gsub("%s", "")))
        if not raw or #raw ~= len then
          raise("FILE_IO_ERROR", ("download %s: chunk at %d came back damaged"):format(name, off),
            { operation = "workspace.pull", resource = "file:" .. name })
        end
        f:seek("set", off)
        assert(f:write(raw))
      end)
    end
    p:finish()
  end)
  f:close()
  if not ok or size > per then pcall(rem.run, SH_RM, dir, name) end
  if not ok then
    p:abort()
    os.remove(to)
    error(err, 0)
  end
  local got = require("galley.util").sha256_file(to)
  if got ~= sha then
    os.remove(to)
    raise("FILE_IO_ERROR", ("download %s: content does not match the remote sha256"):format(name),
      { operation = "workspace.pull", resource = "file:" .. name })
  end
end


-- ---------------------------------------------------------------------------------------------
-- push / pull
-- ---------------------------------------------------------------------------------------------

-- Runs remote_fn in a task while local_fn runs here; returns remote_fn's first result, then a
-- list {local_fn's result, remote_fn's second result}. A failure of either cancels the other.
local function both(remote_fn, local_fn)
  local t = task.spawn(remote_fn)
  local ok, mine = pcall(local_fn)
  if not ok then
    t:cancel()
    pcall(t.wait, t)
    error(mine, 0)
  end
  local a, b, c, d = t:wait()
  return a, { mine, b, c, d }
end


-- Runs fn(dir) with a fresh local temporary directory, removed afterwards (also on errors).
local function with_tmpdir(fn)
  local dir = make_tmpdir("ws")
  local r = table.pack(pcall(fn, dir))
  fs.remove_tree(dir)
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end


M.CODECS = { zstd = true, gzip = true, none = true }

--- The largest bundle pull_repo downloads (opts.max_bundle_bytes overrides): the instance says
--- its size, and an agent's commits are far below this.
M.MAX_BUNDLE_BYTES = 2 * 1024 * 1024 * 1024

--- The most a pull fetches (the sum of the sizes in the instance's manifest of what differs;
--- opts.max_bytes overrides).
M.MAX_PULL_BYTES = 8 * 1024 * 1024 * 1024


-- Free bytes on the file system of `dir` (or of its nearest existing parent), or nil when df
-- cannot say.
local function free_bytes(dir)
  local d = dir
  while d ~= "" and not fs.stat(d) do d = d:match("^(.*)/[^/]*$") or "" end
  if d == "" then d = "." end
  local res = run_local({ "df", "-P", "-B1", "--", d })
  local avail = res.exit_code == 0 and (res.stdout or ""):match("\n%S+%s+%d+%s+%d+%s+(%d+)")
  return avail and tonumber(avail) or nil
end

-- The compressor of the streams: opts.compress (false, "none", "zstd" or "gzip"), by default
-- zstd when both sides have it, else gzip when both have it, else none.
local function pick_codec(opts, remote_tools)
  local want = opts.compress
  if want == false then return "none" end
  if want ~= nil and want ~= true and not M.CODECS[want] then
    raise("VALIDATION_ERROR", "compress must be false, \"none\", \"zstd\" or \"gzip\"", { field = "compress" })
  end
  if want == "none" then return "none" end
  for _, c in ipairs({ "zstd", "gzip" }) do
    if (want == nil or want == true or want == c) and remote_tools[c] and proc.which(c) then return c end
  end
  if type(want) == "string" then
    raise("VALIDATION_ERROR", ("compress: %s is not installed on both sides"):format(want),
      { field = "compress", hint = "install it (apt-get install " .. want .. ") or leave compress unset" })
  end
  return "none"
end


-- Starts compressing the local file `path` with codec z (replacing it by path.zst / path.gz).
-- Returns wait() -> the result's path, and abort() (kills and reaps the compressor).
local function compress_start(path, z)
  local argv = z == "zstd" and { "zstd", "-q", "-3", "-T0", "--rm", "--", path } or { "gzip", "-1", "--", path }
  local h, err = proc.spawn({ argv = argv, stdin = "null" })
  if not h then error(err, 0) end
  local function wait()
    local res, werr = h:wait()
    if not res then error(werr, 0) end
    h:close()
    if res.exit_code ~= 0 then
      raise("FILE_IO_ERROR", ("%s failed on %s: %s"):format(z, path, (res.stderr or ""):sub(1, 300)),
        { operation = "workspace.push", resource = "file:" .. path })
    end
    return path .. (z == "zstd" and ".zst" or ".gz")
  end
  return wait, function() pcall(h.close, h) end
end


-- The stream next_bytes, compressed with codec z, read while it is made. A task writes the
-- stream in segments of M.SEGMENT_BYTES, each compressed by a process of its own (zstd and gzip
-- read a concatenation of their frames as one stream), and appends each compressed segment, in
-- order, to dir/stream once ready (with z = "none", the stream itself as it comes); it yields
-- after every MiB so the uploads in flight go on.
-- Returns read(n) -> n bytes as soon as they are there (fewer only at the end, then "") and
-- close() -> the compressed size (stops the task and its compressors if still running).
-- (Building the whole stream, then compressing it, then sending it took 1.3 s of the 1.9 s
-- push of 10,000 files.)
M.SEGMENT_BYTES = 8 * 1048576

M._SH_MANIFEST = SH_MANIFEST -- (for specs: the manifest program, run with and without python3)
local function compressed_stream(dir, next_bytes, z)
  local out_path = dir .. "/stream"
  local out = assert(io.open(out_path, "wb"))
  local input = assert(io.open(out_path, "rb"))
  local st = { written = 0, taken = 0, done = false }
  local pending = {} -- {wait, abort} of compressors not yet appended, oldest first
  local function notify()
    local t = st.waiter
    st.waiter = nil
    if t then task.wake(t) end
  end
  local function append(s)
    assert(out:write(s))
    assert(out:flush())
    st.written = st.written + #s
    notify()
  end
  local function append_oldest()
    local path = pending[1][1]()
    table.remove(pending, 1)
    for piece in assert(fs.chunks(path, 1048576)) do append(piece) end
    os.remove(path)
  end
  local producer = task.spawn(function()
    local f, n, k = nil, 0, 0
    local ok, err = pcall(function()
      local function close_segment()
        f:close()
        f = nil
        local wait, abort = compress_start(dir .. "/segment" .. k, z)
        pending[#pending + 1] = { wait, abort }
        k = k + 1
        -- two compressors at most: the one just started and the one before it
        while #pending > 1 do append_oldest() end
      end
      repeat
        local s = next_bytes(math.min(1048576, M.SEGMENT_BYTES))
        if s ~= "" then
          if z == "none" then
            append(s) -- nothing to compress: straight into the stream
          else
            if not f then f, n = assert(io.open(dir .. "/segment" .. k, "wb")), 0 end
            assert(f:write(s))
            n = n + #s
            if n >= M.SEGMENT_BYTES then close_segment() end
          end
          task.yield()
          if st.stop then error(st.stop, 0) end -- the reader gave up: stop here
        end
      until s == ""
      if f or (k == 0 and z ~= "none") then
        f = f or assert(io.open(dir .. "/segment" .. k, "wb"))
        close_segment()
      end
      while #pending > 0 do append_oldest() end
    end)
    if f then f:close() end
    for _, c in ipairs(pending) do c[2]() end -- after a failure: no compressor is left running
    pending = {}
    out:close()
    st.done, st.failure = true, not ok and err or nil
    notify()
  end)
  local function read(n)
    while st.written - st.taken < n and not st.done do
      st.waiter = task.token()
      local ok, err = task.await(st.waiter)
      if not ok then error(err, 0) end
    end
    if st.failure then error(st.failure, 0) end
    local want = math.min(n, st.written - st.taken)
    if want == 0 then return "" end
    input:seek("set", st.taken) -- (and clears a sticky end-of-file: the file grows)
    local s = assert(input:read(want))
    st.taken = st.taken + #s
    return s
  end
  local function close()
    if not st.done then
      st.stop = errors.new("INTERRUPTED", "the upload stopped", { operation = "workspace.push" })
      producer:cancel()
      pcall(producer.wait, producer)
      -- a Ctrl-C ends that wait at once, before the producer has run its cleanup: its
      -- compressors go here, or they would still write into `dir` while the caller removes it
      for _, c in ipairs(pending) do c[2]() end
    end
    input:close()
    return st.written
  end
  return read, close
end


-- GNU tar here (push_native needs --verbatim-files-from, --ignore-failed-read)?
local gnu_tar
local function gnu_tar_here()
  if gnu_tar == nil then
    local r = proc.run({ argv = { "tar", "--version" }, timeout_ms = 10000 })
    gnu_tar = (r and r.exit_code == 0 and r.stdout:find("GNU tar", 1, true)) and true or false
  end
  return gnu_tar
end


-- A FIFO `name` in the private temporary directory tmp (for `op`, in errors).
local function make_fifo(tmp, name, op)
  local path = tmp .. "/" .. name
  local ok, err = fs.mkfifo(path, "600")
  if not ok then
    raise("FILE_IO_ERROR", "cannot create a FIFO in " .. tmp .. ": " .. tostring(err and err.message),
      { operation = "workspace." .. op, resource = "file:" .. tmp })
  end
  return path
end


-- Did the local file below `dir` change since `e.st` was taken (its size, inode, mtime or
-- ctime: a write, chmod, or a rename over it, changes the ctime, which no one can set back)?
local function stat_changed(dir, rel, e)
  local st, a = fs.stat(dir .. "/" .. rel), e.st
  return not st or st.type ~= a.type or st.size ~= a.size or st.ino ~= a.ino or st.mtime_ns ~= a.mtime_ns
    or st.ctime_ns ~= a.ctime_ns or st.mode ~= a.mode
end


-- How close to now (ns) a file's ctime makes it "recent": a change then may not move its
-- ctime again (coarse clocks tick in milliseconds, some filesystems in seconds).
M.RECENT_NS = 3 * 1000000000

-- A push of fewer raw bytes does not take the byte channel's tar (push_native).
M.NATIVE_MIN_BYTES = 1048576

-- Pushes the paths `rels` of the local tree `mine` (below local_dir) into remote_dir over the
-- provider's byte channel in ONE command: packed by the real tar and compressed with z here
-- while it is sent, unpacked on the instance while it arrives (SH_PRODUCE into a FIFO,
-- SH_STREAM_APPLY). What changed while tar read it is found the way tar and rsync find it, and
-- never lands: every file is stat'ed before and once tar has read them all (size, inode, mtime,
-- ctime); changed ones are listed in the "skip" control file that follows. A file changed in
-- the last RECENT_NS before the push (its next change might not move its ctime) is also hashed
-- here, and the instance checks what it got against that (the "expect" control file).
-- Returns the rels skipped or dropped so, or nil when the channel cannot be used.
local function push_native(rem, local_dir, remote_dir, mine, rels, deletes, z)
  return with_tmpdir(function(tmp)
    local list = tmp .. "/list"
    local recent_ns = (os.time() - 1) * 1000000000 - M.RECENT_NS
    local f = assert(io.open(list, "wb"))
    local recent = {}
    for k, r in ipairs(rels) do
      local e = mine[r]
      if e then
        if not e.st then e.st = fs.stat(local_dir .. "/" .. r) or { type = "gone" } end
        if e.st.ctime_ns and e.st.ctime_ns >= recent_ns then
          e.sha256 = nil -- hashed again below, after the stat
          recent[#recent + 1] = r
        end
        f:write("./", r, "\0")
      end
      if k % 1024 == 0 and task.current() then task.yield() end
    end
    f:close()
    local fifo = make_fifo(tmp, "fifo", "push")
    local producer, perr = proc.spawn({ argv = { "/bin/sh", "-c", SH_PRODUCE, "galley-pack", fifo, local_dir, list, z,
      tmp .. "/tar-errors" },
      stdin = "pipe" })
    if not producer then error(perr, 0) end
    local packed -- tar's exit status, once it has read every file
    local stage = TMP .. "stage-" .. random_name()
    local sender = task.spawn(function()
      local res, err = rem.stream(SH_STREAM_APPLY, { stdin_file = fifo }, remote_dir, z, PY_APPLY, stage)
      if not packed then producer:kill("KILL") end -- never opened, or gone: the producer stops too
      return res, err
    end)
    local skip, errbuf = {}, ""
    local ok, res, serr = pcall(function()
      hash_missing(local_dir, mine, recent)
      while not packed do
        local ev, data = producer:read()
        if ev == "stderr" then
          errbuf = errbuf .. data
          packed = tonumber(errbuf:match("galley%-packed (%d+)\n"))
        elseif ev == "exit" or ev == nil then
          break
        end
      end
      if packed and packed <= 1 then
        local expect = {}
        for k, r in ipairs(rels) do
          local e = mine[r]
          if e and stat_changed(local_dir, r, e) then skip[#skip + 1] = r end
          if k % 1024 == 0 and task.current() then task.yield() end
        end
        for _, r in ipairs(recent) do
          local e = mine[r]
          expect[#expect + 1] = r .. "\0" .. (not e and "-" or e.type == "symlink" and ("L" .. e.target) or e.sha256)
            .. "\0"
        end
        expect[#expect + 1] = "END\0"
        local ctl = {}
        for _, c in ipairs({ { "expect", table.concat(expect) }, { "skip", table.concat(skip, "\0") },
          { "delete", table.concat(deletes, "\0") } }) do
          local body = c[2]
          ctl[#ctl + 1] = tar_entry(TMP .. "ctl/" .. c[1], #body, 420, "0") .. body .. pad(#body)
        end
        ctl[#ctl + 1] = NULS[1024]
        producer:write(table.concat(ctl)) -- (a producer that stopped already: dropped, and seen below)
      end
      producer:close_stdin()
      return sender:wait()
    end)
    if not ok or not res then
      sender:cancel()
      pcall(sender.wait, sender)
      producer:close()
      if ok and errors.is(serr, "STREAM_UNAVAILABLE") then return nil end
      local err = ok and serr or res
      -- The instance's command stops with its channel; its staging directory goes here, or (a
      -- pending Ctrl-C fails this exec too) at the run's end.
      local function remove()
        local rok, r = pcall(rem.run, SH_RM, remote_dir, stage)
        return rok and type(r) == "table" and r.exit_code == 0
      end
      if not remove() and errors.is(err, "INTERRUPTED") then
        tracker.defer(function() remove() end, ("remove %s/%s on %s"):format(remote_dir, stage, rem.id))
      end
      error(err, 0)
    end
    local pres = producer:wait()
    producer:close()
    local function pack_failed()
      local detail = (((fs.read(tmp .. "/tar-errors") or "") .. (pres and pres.stderr or "") .. errbuf)
        :gsub("galley%-packed %d+\n", ""):gsub("%s+$", "")):sub(-300)
      raise("FILE_IO_ERROR", ("cannot pack %s: %s"):format(local_dir, detail ~= "" and detail
        or ("tar exited with " .. tostring(packed))), { operation = "workspace.push", resource = "file:" .. local_dir,
          details = { exit_code = pres and pres.exit_code, tar_status = packed } })
    end
    if packed and packed > 1 then pack_failed() end
    if res.exit_code ~= 0 then rem.fail(res, "push", remote_dir) end
    if not packed or not pres or pres.exit_code ~= 0 then pack_failed() end
    local raw = codec.base64_decode(((res.stdout or ""):gsub("%s", "")))
    if not raw then
      raise("PROTOCOL_ERROR", "unreadable answer from the push on " .. remote_dir, { operation = "workspace.push" })
    end
    -- (only paths this push sent: a hostile instance naming others cannot make the second
    -- round read files outside the tree)
    local sent, skipped = {}, {}
    for _, r in ipairs(rels) do sent[r] = true end
    for _, r in ipairs(skip) do skipped[r] = true end
    for p in raw:gmatch("([^%z]+)%z") do
      if sent[p] and not skipped[p] then skip[#skip + 1] = p; skipped[p] = true end
    end
    local count = fs.read(tmp .. "/tar-errors.count") or ""
    return skip, tonumber(count:match("(%d+) bytes")) or 0
  end)
end


-- The size of the tar of `rels` (entries of `theirs`) at most, with GNU long-name records.
local function tar_bound(rels, theirs)
  local n = 20480
  for _, r in ipairs(rels) do
    local e = theirs[r]
    n = n + 512 + ((e.size or 0) + 511) // 512 * 512
    for _, name in ipairs({ "./" .. r, e.target or "" }) do
      if #name >= 100 then n = n + 512 + (#name + 512) // 512 * 512 end
    end
  end
  return n
end


-- Fetches `rels` (entries of the remote manifest `theirs`) of remote_dir into the local
-- staging directory `stage` over the provider's byte channel in ONE command: the real tar packs
-- them there, compressed with z, onto the channel's stdout, a FIFO that tar -x here unpacks
-- while it arrives (SH_STREAM_PACK, SH_UNPACK). The caller checks every file against the
-- manifest. Returns the compressed size, or nil when the channel cannot be used.
local function pull_native(rem, remote_dir, stage, rels, theirs, z)
  return with_tmpdir(function(tmp)
    local list, count = tmp .. "/list", tmp .. "/count"
    local f = assert(io.open(list, "wb"))
    for _, r in ipairs(rels) do f:write("./", r, "\0") end
    f:close()
    local fifo = make_fifo(tmp, "fifo", "pull")
    local unpacker, uerr = proc.spawn({ argv = { "/bin/sh", "-c", SH_UNPACK, "galley-unpack", fifo, stage, z,
      tostring(tar_bound(rels, theirs)), count } })
    if not unpacker then error(uerr, 0) end
    local ok, res, serr = pcall(rem.stream, SH_STREAM_PACK, { stdin_file = list, stdout_file = fifo }, remote_dir, z)
    if not ok or not res then
      unpacker:close() -- (never opened, or half-fed: killed)
      if ok and errors.is(serr, "STREAM_UNAVAILABLE") then return nil end
      error(ok and serr or res, 0)
    end
    local ures, werr = unpacker:wait()
    unpacker:close()
    if not ures then error(werr, 0) end
    if res.exit_code ~= 0 then rem.fail(res, "pull", remote_dir) end
    if ures.exit_code ~= 0 then
      raise("FILE_IO_ERROR", ("pull: unpacking what %s sent failed: %s"):format(rem.id,
        ((ures.stderr or ""):gsub("%s+$", "")):sub(-300)), { operation = "workspace.pull", resource = "file:" .. stage,
        details = { exit_code = ures.exit_code, remote_stderr = (res.stderr or ""):sub(-2000) } })
    end
    return tonumber((fs.read(count) or ""):match("(%d+) bytes")) or 0
  end)
end


local function check_local_dir(dir, field)
  check_string(dir, field)
  local st = fs.stat(dir)
  if not st or st.type ~= "directory" then
    raise(st and "VALIDATION_ERROR" or "NOT_FOUND", ("%s: %s is not a directory"):format(field, dir),
      { field = field, resource = "file:" .. dir, hint = st and "give the directory that holds the tree"
        or "check the path (relative paths are from the current directory)" })
  end
  return (dir:gsub("(.)/+$", "%1"))
end


local function check_remote_dir(dir, field)
  check_string(dir, field)
  if dir:sub(1, 1) ~= "/" and dir ~= "~" and dir:sub(1, 2) ~= "~/" then
    raise("VALIDATION_ERROR", ("%s must be absolute or start with ~/, got %s"):format(field, errors.quote(dir)),
      { field = field })
  end
  if dir:find("%z") then raise("VALIDATION_ERROR", field .. " contains a NUL byte", { field = field }) end
  return (dir:gsub("(.)/+$", "%1"))
end


-- How a push lists the instance's tree: "ignored" where the tree here is a git work tree (its
-- ignored files are not sent, so the instance need not hash its own: an agent's node_modules),
-- with the files tracked here that the rules ignore (force-added) listed by name, so that
-- they are compared too; "git" when those names would not fit one exec (64 KiB) or there is
-- no work tree here (then everything is sent, and compared); "all" with opts.all. `git_rules`:
-- as for local_tree. Also returns the force-added names (a pull takes them too).
local function push_prune(local_dir, opts, git_rules)
  if opts.all then return "all" end
  if not git_rules then return "git" end
  local res = git(local_dir, { "ls-files", "-z", "--cached", "--ignored", "--exclude-standard" })
  if res.exit_code ~= 0 then return "git" end
  local names, extra, n = {}, {}, 0
  for p in res.stdout:gmatch("([^%z]+)%z") do names[#names + 1] = p end
  for i, p in ipairs(names) do
    extra[i] = "./" .. p
    n = n + #p + 8
    if n > 65536 then return "git", nil, names end
  end
  return "ignored", extra, names
end


---@class galley.WorkspaceResult
---@field sent integer files sent (pull: fetched)
---@field bytes integer their size
---@field unchanged integer files already the same on the other side
---@field deleted integer files removed (opts.delete)
---@field execs integer provider execs used (one request each on Morph)
---@field wire_bytes? integer size of the (compressed) tar stream that travelled
---@field compress? string its compression: "zstd", "gzip" or "none"
---@field files string[] the paths sent
---@field deletes string[] the paths deleted
---@field git_dirs_left? string[] pull: the instance's .git directories (and files) left out (all unset)

local function list_control(name, rels)
  return { name = TMP .. "ctl/" .. name, body = function()
    local t = {}
    for _, r in ipairs(rels()) do t[#t + 1] = r .. "\0" end
    return table.concat(t)
  end }
end


--- Pushes the local tree `local_dir` into `remote_dir` on the instance (created if missing).
---@param provider table
---@param id string instance id
---@param local_dir string
---@param remote_dir string absolute or ~/...
---@param opts? {ignore?: string[], all?: boolean, gitignore?: boolean, delete?: boolean, dry_run?: boolean,
---  parallel?: integer, compress?: boolean|string, chunk_bytes?: integer, exec_timeout_ms?: integer}
---@return galley.WorkspaceResult
function M.push(provider, id, local_dir, remote_dir, opts)
  opts = check_opts(opts, "workspace.push")
  local_dir = check_local_dir(local_dir, "local_dir")
  remote_dir = check_remote_dir(remote_dir, "remote_dir")
  local stats = { execs = 0 }
  local rem = remote(provider, id, stats, opts)
  local ignored = ignore_matcher(opts.ignore)
  -- (asked once: two git commands)
  local git_rules = honours_gitignore(opts) and rules_apply(local_dir)
  local prune, extra = push_prune(local_dir, opts, git_rules)
  -- both manifests at once: the remote one in a task while this one is computed here
  local remote_done = false
  local theirs, tools = both(function()
    local a, b = remote_manifest(rem, remote_dir, prune, extra)
    remote_done = true
    return a, b
  end, function()
    local m = local_tree(local_dir, opts, git_rules)
    -- While the instance still hashes its side (a re-push's wait), the files here are hashed
    -- too, a batch between two turns of the event loop; the rest only where needed, below.
    local batch = {}
    for rel, e in pairs(m) do
      if remote_done then break end
      if e.type == "file" and not e.sha256 then batch[#batch + 1] = rel end
      if #batch == 64 then
        hash_missing(local_dir, m, batch)
        batch = {}
        task.sleep(0)
      end
    end
    return m
  end)
  local mine = table.remove(tools, 1)
  tools = tools[1]
  for rel in pairs(mine) do
    if not safe_rel(rel) then
      raise("VALIDATION_ERROR", "a local path leaves the tree: " .. rel,
        { field = "local_dir", resource = "file:" .. rel })
    end
  end
  theirs = theirs or {}
  local z = pick_codec(opts, tools)
  -- only a file whose twin there has its size needs its sha256 to decide (the rest is hashed
  -- while it is sent, or before, below)
  local candidates = {}
  for rel, e in pairs(mine) do
    local t = theirs[rel]
    if e.type == "file" and t and t.type == "file" and t.size == e.size then candidates[#candidates + 1] = rel end
  end
  hash_missing(local_dir, mine, candidates)
  local send, unchanged, deletes = {}, 0, {}
  for _, rel in ipairs(sorted(mine)) do
    if same(mine[rel], theirs[rel]) then unchanged = unchanged + 1 else send[#send + 1] = rel end
  end
  if opts.delete then
    -- files git would ignore here stay on the instance
    deletes = deletions(mine, theirs, ignored,
      git_rules and function(rels) return git_ignored(local_dir, rels, "--no-index") end)
  end
  local bytes = 0
  for _, rel in ipairs(send) do bytes = bytes + (mine[rel].size or 0) end
  local result = { sent = #send, bytes = bytes, unchanged = unchanged, deleted = #deletes, execs = stats.execs,
    streams = 0,
    files = send, deletes = deletes, dry_run = opts.dry_run or nil }
  if opts.dry_run or (#send == 0 and #deletes == 0) then return result end
  result.compress = z

  -- Through exec (or one raw upload over a byte channel): the tar written here in Lua, sent in
  -- parallel chunks while it is made and compressed; what changed while read is listed at its
  -- end (the "skip" control file), so the instance drops those files. Returns those rels.
  local function push_exec(todo, attempt)
    hash_missing(local_dir, mine, todo)
    local items = {}
    for _, rel in ipairs(todo) do if mine[rel] then items[#items + 1] = { rel = rel, entry = mine[rel] } end end
    local next_bytes, changed
    next_bytes, changed = tar_stream(local_dir, items, {
      list_control("skip", function() return changed() end),
      list_control("delete", function() return attempt == 1 and deletes or {} end),
    })
    local name = TMP .. "push-" .. random_name() .. ".tar"
    local res = with_tmpdir(function(tmp)
      local read, close = compressed_stream(tmp, next_bytes, z)
      local ok, r = pcall(upload, provider, rem, remote_dir, name, read, {
        script = SH_APPLY, inline = true, extra = { PY_APPLY, z },
        args = function(size, sha, off) return { name, tostring(size), sha, tostring(off), PY_APPLY, z } end,
      }, opts)
      result.wire_bytes = (result.wire_bytes or 0) + close()
      if not ok then error(r, 0) end
      return r
    end)
    if res.exit_code ~= 0 then rem.fail(res, "push", remote_dir) end
    return changed()
  end

  -- Over a byte channel, with python3 there and GNU tar here: the real tar, in one command.
  -- (Over NATIVE_MIN_BYTES only: below, one exec carries it, compressed, and no SSH connection
  -- is made for it.)
  local native = rem.stream and tools.python3 and not opts.chunk_bytes and bytes >= M.NATIVE_MIN_BYTES
    and gnu_tar_here()
  local todo = send
  for attempt = 1, 2 do
    local again, wire
    if native then
      again, wire = push_native(rem, local_dir, remote_dir, mine, todo, attempt == 1 and deletes or {}, z)
    end
    if again then
      result.wire_bytes = (result.wire_bytes or 0) + wire
    else
      again = push_exec(todo, attempt)
    end
    if #again == 0 then break end
    if attempt == 2 then
      raise("FILE_IO_ERROR", ("%s changed while it was sent (twice)"):format(local_dir .. "/" .. again[1]), {
        operation = "workspace.push", resource = "file:" .. local_dir .. "/" .. again[1],
        details = { paths = again }, hint = "stop whatever writes to it, then push again",
      })
    end
    local fresh = local_manifest(local_dir, again)
    todo = {}
    for _, rel in ipairs(again) do
      mine[rel] = fresh[rel]
      if fresh[rel] then todo[#todo + 1] = rel end
    end
    if #todo == 0 then break end
  end
  result.execs, result.streams = stats.execs, stats.streams or 0
  return result
end


--- Pulls `remote_dir` on the instance into the local `local_dir` (created if missing).
---@param provider table
---@param id string
---@param remote_dir string
---@param local_dir string
---@param opts? {ignore?: string[], all?: boolean, gitignore?: boolean, delete?: boolean, dry_run?: boolean,
---  parallel?: integer, compress?: boolean|string, exec_timeout_ms?: integer, max_bytes?: integer}
---@return galley.WorkspaceResult
function M.pull(provider, id, remote_dir, local_dir, opts)
  opts = check_opts(opts, "workspace.pull")
  check_count(opts, "max_bytes")
  remote_dir = check_remote_dir(remote_dir, "remote_dir")
  check_string(local_dir, "local_dir")
  local_dir = local_dir:gsub("(.)/+$", "%1")
  local stats = { execs = 0 }
  local rem = remote(provider, id, stats, opts)
  local ignored = ignore_matcher(opts.ignore)
  local st = fs.stat(local_dir)
  if st and st.type ~= "directory" then
    raise("VALIDATION_ERROR", ("local_dir: %s is not a directory"):format(local_dir), { field = "local_dir",
      resource = "file:" .. local_dir, hint = "give a directory, or a path that does not exist yet (it is created)" })
  end
  local repo_here = st and honours_gitignore(opts) and rules_apply(local_dir) and local_dir
  -- The files tracked here that the rules ignore (force-added) are pulled like any other, as a
  -- push sends them: the instance lists them by name (past 64 KiB of names it lists everything).
  local prune = opts.all and "all" or honours_gitignore(opts) and "ignored" or "git"
  local extra, names
  if prune == "ignored" and repo_here then prune, extra, names = push_prune(local_dir, opts, true) end
  local forced = {}
  for _, p in ipairs(names or {}) do forced[p] = true end
  -- both manifests at once: the remote one in a task while this one is computed here
  local theirs, rest = both(function() return remote_manifest(rem, remote_dir, prune, extra) end,
    function() return st and local_manifest(local_dir, nil, opts.all and "all" or "git") or {} end)
  local mine, tools, gits, rules = rest[1], rest[2], rest[3], rest[4]
  local z = pick_codec(opts, tools)
  local total = 0
  for _ in pairs(theirs or {}) do total = total + 1 end
  if not theirs then
    raise("NOT_FOUND", ("pull: %s does not exist on %s"):format(remote_dir, id),
      { operation = "workspace.pull", resource = "file:" .. remote_dir })
  end
  local drop -- the set of paths (both sides') that git's rules keep where they are
  if honours_gitignore(opts) then
    -- What git ignores stays there: what the tree's .gitignore files ignore (the instance left
    -- it out where it has git; read here again, so that it is the same where it has not), and
    -- what git ignores here (a file tracked here is never ignored by this side's rules). (A
    -- path that leaves the tree is not asked about: the checks below refuse it.)
    -- With delete, the files here that the instance lacks are asked about in the same two
    -- commands: what either side's rules ignore is never deleted here.
    local rels = {}
    for _, rel in ipairs(sorted(theirs)) do if safe_rel(rel) then rels[#rels + 1] = rel end end
    if opts.delete then
      for _, rel in ipairs(sorted(mine)) do if not theirs[rel] then rels[#rels + 1] = rel end end
    end
    drop = tree_ignored(rules, rels)
    for p in pairs(forced) do drop[p] = nil end
    if repo_here then
      for p in pairs(git_ignored(repo_here, rels)) do drop[p] = true end
    end
    for p in pairs(drop) do theirs[p] = nil end
  end
  for rel, e in pairs(theirs) do
    if ignored(rel) then
      theirs[rel] = nil
    elseif not safe_rel(rel) then
      raise("VALIDATION_ERROR", "a remote path leaves the destination: " .. rel,
        { field = "remote_dir", resource = "file:" .. rel })
    elseif not opts.all and (git_part(rel) or e.type == "symlink" and git_part(link_path(rel, e.target) or "")) then
      -- the manifest program prunes .git: only an instance that lies lists one, and a file in a
      -- .git directory here (a hook, the config) runs code on this machine at the next git command
      raise("VALIDATION_ERROR", ("pull: %s listed %s, in or into a .git directory"):format(id, rel), {
        field = "remote_dir", resource = "file:" .. rel, details = { reason = "git_dir" },
        hint = "a pull writes into .git directories only with all = true (from an instance you trust)" })
    elseif opts.all and st and existing_git_dir(local_dir, rel) then
      -- all = true brings the instance's .git too, but never into a repository that is here
      raise("VALIDATION_ERROR", ("pull: %s would write %s into the git repository at %s/%s"):format(id, rel,
        local_dir, git_part(rel)), { field = "local_dir", resource = "file:" .. rel,
        details = { reason = "git_dir" },
        hint = "pull into a new or empty directory (its hooks and config would run code here), or leave all unset" })
    elseif e.type == "symlink" and not safe_link(rel, e.target) then
      raise("VALIDATION_ERROR", ("the remote symlink %s points outside the destination (%s)"):format(rel, e.target),
        { field = "remote_dir", resource = "file:" .. rel, hint = "pass ignore = {\"" .. rel .. "\"} to leave it" })
    elseif e.type == "file" and not e.sha256 then
      raise("FILE_IO_ERROR", ("pull: cannot read %s on %s"):format(rel, id), { resource = "file:" .. rel })
    end
    -- setuid, setgid and sticky bits never come here: an instance (an agent) could otherwise
    -- plant a setuid-root program on this machine when galley runs as root
    if e.mode then e.mode = e.mode & SAFE_MODE_BITS end
  end
  local fetch, unchanged, deletes, bytes = {}, 0, {}, 0
  for _, rel in ipairs(sorted(theirs)) do
    if same(theirs[rel], mine[rel]) then
      unchanged = unchanged + 1
    else
      fetch[#fetch + 1] = rel
      bytes = bytes + (theirs[rel].size or 0)
    end
  end
  if opts.delete then
    deletes = deletions(theirs, mine, ignored, drop and function() return drop end)
  end
  -- The sizes are the instance's word: they bound what is unpacked here, and are bounded first
  -- by max_bytes and by the room on this side.
  local limit = opts.max_bytes or M.MAX_PULL_BYTES
  if bytes > limit then
    raise("FILE_TOO_LARGE", ("pull: %s's files to fetch on %s come to %.0f bytes, over the limit of %d"):format(
      remote_dir, id, bytes, limit), { operation = "workspace.pull", resource = "file:" .. remote_dir,
      details = { size = bytes, limit = limit }, hint = "pass max_bytes to take more, or ignore what is not needed" })
  end
  local avail = #fetch > 0 and free_bytes(local_dir)
  if avail and bytes > avail then
    raise("FILE_IO_ERROR", ("pull: %.0f bytes to fetch, %d free at %s"):format(bytes, avail, local_dir), {
      operation = "workspace.pull", resource = "file:" .. local_dir, details = { reason = "no_space", size = bytes,
      free = avail }, hint = "free space there, or pull into another directory" })
  end
  local result = { sent = #fetch, bytes = bytes, unchanged = unchanged, deleted = #deletes, execs = stats.execs,
    streams = 0,
    files = fetch, deletes = deletes, dry_run = opts.dry_run or nil, git_dirs_left = gits or {} }
  if opts.dry_run then return result end
  if #fetch > 0 then
    assert(fs.mkdir_p(local_dir))
    local stage = local_dir .. "/" .. TMP .. "stage-" .. random_name()
    assert(fs.mkdir_p(stage, "700"))
    -- Through exec: one exec packs the files into a temporary tar there, read back in chunks.
    local function fetch_exec()
      local lname = TMP .. "list-" .. random_name()
      local res
      if opts.all and #fetch == total then
        -- everything: the instance lists it again itself (what appeared since is left in staging)
        res = rem.run(SH_PACK, remote_dir, lname, "0", z, "all")
      else
        local list = {}
        for _, rel in ipairs(fetch) do list[#list + 1] = "./" .. rel .. "\0" end
        list = table.concat(list)
        local pos = 1
        res = upload(provider, rem, remote_dir, lname, function(n)
          local s = list:sub(pos, pos + n - 1)
          pos = pos + n
          return s
        end, { script = SH_PACK, inline = true, extra = { z, "list" },
          args = function(_, _, off) return { lname, tostring(off), z, "list" } end }, opts)
      end
      if res.exit_code ~= 0 then rem.fail(res, "pull", remote_dir) end
      local size, sha, name = res.stdout:match("^(%d+) (%x+) (%S+)")
      if not size then
        raise("PROTOCOL_ERROR", "pull: unexpected answer from " .. id, { operation = "workspace.pull" })
      end
      result.wire_bytes = tonumber(size)
      -- what the manifest's sizes allow, as a tar and compressed (a compressor adds well under
      -- 1 % to what it cannot shrink): a hostile instance can neither send more nor unpack more
      local bound = tar_bound(fetch, theirs)
      if tonumber(size) > bound + bound // 64 + 65536 then
        pcall(rem.run, SH_RM, remote_dir, name)
        raise("FILE_IO_ERROR", ("pull: %s offers %s bytes for files the manifest sizes at %d"):format(id, size, bound),
          { operation = "workspace.pull", resource = "file:" .. remote_dir, details = { reason = "oversized" } })
      end
      local tarfile = stage .. ".tar"
      download(rem, remote_dir, name, tonumber(size), sha, tarfile, opts)
      local x = run_local({ "/bin/sh", "-c", SH_UNPACK, "galley-unpack", tarfile, stage, z, tostring(bound),
        "/dev/null" })
      os.remove(tarfile)
      if x.exit_code ~= 0 then
        raise("FILE_IO_ERROR", "pull: tar -x failed: " .. (x.stderr or ""):sub(1, 300), { resource = "file:" .. stage,
          operation = "workspace.pull", details = { exit_code = x.exit_code, stderr = (x.stderr or ""):sub(-2000) },
          hint = "if files were being written on the instance meanwhile, pull again (no more than the manifest's"
            .. " sizes is unpacked)" })
      end
    end
    result.compress = z
    local ok, err = pcall(function()
      -- Over a byte channel (NATIVE_MIN_BYTES or more): one command, unpacked while it arrives.
      local wire = rem.stream and bytes >= M.NATIVE_MIN_BYTES and not opts.read_chunk_bytes
        and pull_native(rem, remote_dir, stage, fetch, theirs, z)
      if wire then result.wire_bytes = wire else fetch_exec() end
      -- tar -p kept every mode bit: the special ones go before anything is checked or moved
      local x = run_local({ "find", stage, "-mindepth", "1", "!", "-type", "l", "-perm", "/7000", "-exec",
        "chmod", "ug-s,o-t", "--", "{}", "+" })
      if x.exit_code ~= 0 then
        raise("FILE_IO_ERROR", "pull: cannot clear setuid/setgid/sticky bits: " .. (x.stderr or ""):sub(1, 300),
          { operation = "workspace.pull", resource = "file:" .. stage })
      end
      -- (a file whose size is not the manifest's is not read at all)
      local got = stat_entries(stage, fetch)
      local same_size = {}
      for _, rel in ipairs(fetch) do
        if got[rel] and got[rel].size == theirs[rel].size then same_size[#same_size + 1] = rel end
      end
      hash_missing(stage, got, same_size, "workspace.pull")
      for _, rel in ipairs(fetch) do
        local want, have = theirs[rel], got[rel]
        if not same(want, have) and not (have and want.type == "symlink" and have.target == want.target) then
          raise("FILE_IO_ERROR", ("pull: %s changed on %s while it was read"):format(rel, id),
            { operation = "workspace.pull", resource = "file:" .. remote_dir .. "/" .. rel,
              hint = "pull again once the instance stops writing it" })
        end
      end
      -- what the instance packed beyond the list goes, so that a directory missing here can
      -- move in one rename
      local wanted = {}
      for _, rel in ipairs(fetch) do wanted[rel] = true end
      local listing = run_local({ "find", stage, "-mindepth", "1", "!", "-type", "d", "-printf", "%P\\0" })
      for rel in listing.stdout:gmatch("([^%z]+)%z") do
        if not wanted[rel] then os.remove(stage .. "/" .. rel) end
      end
      local moved, exists = {}, {}
      local function move(rel, target)
        local renamed, rerr = os.rename(stage .. "/" .. rel, target)
        if not renamed then
          raise("FILE_IO_ERROR", ("pull: cannot rename into %s: %s"):format(target, rerr),
            { operation = "workspace.pull", resource = "file:" .. target })
        end
      end
      for _, rel in ipairs(fetch) do
        local target = local_dir .. "/" .. rel
        local done, prefix = false, nil
        for part in rel:gmatch("([^/]+)/") do
          prefix = prefix and (prefix .. "/" .. part) or part
          if moved[prefix] then done = true; break end
          if exists[prefix] == nil then
            local pst = fs.stat(local_dir .. "/" .. prefix)
            if pst and pst.type ~= "directory" then
              -- a file or a symlink here where the instance has a directory: the directory
              -- replaces it (a symlink is never followed)
              local removed, rerr = os.remove(local_dir .. "/" .. prefix)
              if not removed then
                raise("FILE_IO_ERROR", ("pull: cannot replace %s by a directory: %s"):format(prefix, rerr),
                  { operation = "workspace.pull", resource = "file:" .. local_dir .. "/" .. prefix })
              end
              pst = nil
            end
            exists[prefix] = pst ~= nil
          end
          if not exists[prefix] then
            move(prefix, local_dir .. "/" .. prefix)
            moved[prefix], exists[prefix], done = true, true, true
            break
          end
        end
        if not done then
          local tst = fs.stat(target)
          if tst and tst.type == "directory" then assert(fs.remove_tree(target)) end
          move(rel, target)
        end
      end
    end)
    fs.remove_tree(stage)
    os.remove(stage .. ".tar")
    if not ok then error(err, 0) end
  end
  for _, rel in ipairs(deletes) do os.remove(local_dir .. "/" .. rel) end
  result.execs, result.streams = stats.execs, stats.streams or 0
  return result
end


-- ---------------------------------------------------------------------------------------------
-- Repositories
-- ---------------------------------------------------------------------------------------------

local function check_branch(branch, repo)
  check_string(branch, "branch")
  local res = run_local({ "git", "check-ref-format", "--branch", branch }, { cwd = repo })
  if res.exit_code ~= 0 then
    raise("VALIDATION_ERROR", ("branch: %s is not a valid branch name"):format(errors.quote(branch)),
      { field = "branch" })
  end
  return branch
end


local function default_branch(opts)
  return "galley/" .. (opts.name or os.date("!work-%Y%m%d-%H%M%S"))
end


local function no_git(id, op)
  raise("PROCESS_ERROR", ("%s: git is not installed on instance %s"):format(op, id), {
    operation = "workspace." .. op, resource = "instance:" .. id, details = { reason = "no_git" },
    hint = "install git in the instance's image (apt-get install git), then try again",
  })
end


local function repo_root(repo_dir)
  local top = check_string(repo_dir, "repo_dir") and git_toplevel(repo_dir)
  if not top then
    raise("VALIDATION_ERROR", ("repo_dir: %s is not in a git repository"):format(repo_dir),
      { field = "repo_dir", resource = "file:" .. repo_dir })
  end
  return top
end


--- Sends a commit of the local repository (a git bundle) and clones it into remote_dir, on a
--- new branch. remote_dir must be missing or empty.
---@param provider table
---@param id string
---@param repo_dir string
---@param remote_dir string
---@param opts? {ref?: string, dirty?: boolean, branch?: string, name?: string, parallel?: integer,
---  exec_timeout_ms?: integer}
---@return {branch: string, base: string, bytes: integer, execs: integer}
function M.push_repo(provider, id, repo_dir, remote_dir, opts)
  opts = check_opts(opts, "workspace.push_repo")
  remote_dir = check_remote_dir(remote_dir, "remote_dir")
  local top = repo_root(repo_dir)
  local branch = check_branch(opts.branch or default_branch(opts), top)
  local ref = opts.ref or "HEAD"
  local base = git_ok(top, { "rev-parse", "--verify", "--end-of-options", ref .. "^{commit}" }, "rev-parse " .. ref)
  local tmpdir = make_tmpdir("repo")
  local tmpref = "refs/galley/push-" .. random_name()
  local stats = { execs = 0 }
  local ok, res = pcall(function()
    if opts.dirty then
      -- a commit of the work tree as it is, through a temporary index: the user's index,
      -- work tree and branches are not touched
      local env = { GIT_INDEX_FILE = tmpdir .. "/index" }
      git_ok(top, { "read-tree", base }, "read-tree", { env = env })
      git_ok(top, { "add", "-A" }, "add -A", { env = env })
      local tree = git_ok(top, { "write-tree" }, "write-tree", { env = env })
      local base_tree = git_ok(top, { "rev-parse", base .. "^{tree}" })
      if tree ~= base_tree then
        base = git_ok(top, { "-c", "user.name=galley", "-c", "user.email=galley@galley.invalid", "commit-tree", tree,
          "-p", base, "-m", "galley: uncommitted changes" }, "commit-tree")
      end
    end
    git_ok(top, { "update-ref", tmpref, base }, "update-ref")
    local bundle = tmpdir .. "/repo.bundle"
    git_ok(top, { "bundle", "create", "-q", bundle, tmpref }, "bundle create")
    local f = assert(io.open(bundle, "rb"))
    local rem = remote(provider, id, stats, opts)
    local parent = remote_dir:match("^(.*)/[^/]*$")
    if parent == "" then parent = "/" end
    if remote_dir == "~" then raise("VALIDATION_ERROR", "remote_dir: not ~ itself", { field = "remote_dir" }) end
    local name = TMP .. "repo-" .. random_name() .. ".bundle"
    local target = remote_dir:match("([^/]*)$")
    local r = upload(provider, rem, parent, name, function(n) return f:read(n) or "" end, {
      script = SH_CLONE, inline = false,
      args = function(size, sha) return { name, tostring(size), sha, tmpref, branch, base, target } end,
      extra = { tmpref, branch, base, target },
    }, { parallel = opts.parallel, chunk_bytes = opts.chunk_bytes })
    f:close()
    return r
  end)
  git(top, { "update-ref", "-d", tmpref })
  fs.remove_tree(tmpdir)
  if not ok then error(res, 0) end
  if res.exit_code == EXIT_NO_GIT then no_git(id, "push_repo") end
  if res.exit_code == EXIT_NOT_EMPTY then
    raise("CONFLICT", ("push_repo: %s on %s exists and is not empty"):format(remote_dir, id), {
      operation = "workspace.push_repo", resource = "file:" .. remote_dir,
      hint = "push into a new directory, or delete it first",
    })
  end
  if res.exit_code ~= 0 then remote(provider, id, stats, opts).fail(res, "push_repo", remote_dir) end
  return { branch = branch, base = base, execs = stats.execs, streams = stats.streams or 0 }
end


--- Brings the agent's work in remote_dir back as branch `branch` of the local repository:
--- uncommitted changes there are committed first; the local work tree, index and checked-out
--- branch are never touched.
---@param provider table
---@param id string
---@param remote_dir string
---@param repo_dir string
---@param opts? {branch?: string, name?: string, force?: boolean, author?: {name: string, email: string},
---  message?: string, parallel?: integer, exec_timeout_ms?: integer, max_bundle_bytes?: integer}
---@return {branch: string, base: string, head: string, commits: string[], log: string, execs: integer}
function M.pull_repo(provider, id, remote_dir, repo_dir, opts)
  opts = check_opts(opts, "workspace.pull_repo")
  check_count(opts, "max_bundle_bytes")
  remote_dir = check_remote_dir(remote_dir, "remote_dir")
  local top = repo_root(repo_dir)
  local branch = check_branch(opts.branch or default_branch(opts), top)
  local author = opts.author or M.DEFAULT_AUTHOR
  if type(author) ~= "table" or type(author.name) ~= "string" or type(author.email) ~= "string" then
    raise("VALIDATION_ERROR", "author must be {name = ..., email = ...}", { field = "author" })
  end
  local current = git(top, { "symbolic-ref", "-q", "--short", "HEAD" }).stdout:gsub("%s+$", "")
  if current == branch then
    raise("CONFLICT", ("pull_repo: %s is the branch checked out in %s"):format(branch, top), {
      operation = "workspace.pull_repo", resource = "file:" .. top,
      hint = "pull into another branch name (opts.branch), or check out another branch first" })
  end
  local exists = git(top, { "rev-parse", "-q", "--verify", "refs/heads/" .. branch }).exit_code == 0
  if exists and not opts.force then
    raise("CONFLICT", ("pull_repo: branch %s already exists in %s"):format(branch, top), {
      operation = "workspace.pull_repo", resource = "file:" .. top, field = "branch",
      hint = "pass force = true to replace it, or another branch name" })
  end
  local stats = { execs = 0 }
  local rem = remote(provider, id, stats, opts)
  local res = rem.run(SH_BUNDLE, remote_dir, branch, author.name, author.email,
    opts.message or "galley: the agent's uncommitted work")
  if res.exit_code == EXIT_NO_GIT then no_git(id, "pull_repo") end
  if res.exit_code == EXIT_NOT_PUSHED then
    raise("VALIDATION_ERROR", ("pull_repo: %s on %s was not made by push_repo"):format(remote_dir, id),
      { field = "remote_dir", resource = "file:" .. remote_dir, hint = "push_repo it first" })
  end
  if res.exit_code ~= 0 then rem.fail(res, "pull_repo", remote_dir) end
  local base, head, size, sha, name = res.stdout:match("^(%x+) (%x+) ?(%d*) ?(%x*) ?(%S*)")
  if not base then raise("PROTOCOL_ERROR", "pull_repo: unexpected answer from " .. id, {}) end
  -- the instance says how large its bundle is: more than the limit is not downloaded at all
  local limit = opts.max_bundle_bytes or M.MAX_BUNDLE_BYTES
  if size ~= "" and tonumber(size) > limit then
    pcall(rem.run, SH_RM, remote_dir, name)
    raise("FILE_TOO_LARGE", ("pull_repo: the bundle of %s's new commits on %s is %s bytes, over the limit of %d")
      :format(remote_dir, id, size, limit), { operation = "workspace.pull_repo", resource = "file:" .. remote_dir,
      details = { size = tonumber(size), limit = limit }, hint = "pass max_bundle_bytes to take a larger one" })
  end
  local function set_branch(target)
    local args = { "update-ref", "refs/heads/" .. branch, target }
    git_ok(top, args, "update-ref")
  end
  if size ~= "" then
    local tmpdir = make_tmpdir("repo")
    local ok, err = pcall(function()
      local bundle = tmpdir .. "/back.bundle"
      download(rem, remote_dir, name, tonumber(size), sha, bundle, opts)
      git_ok(top, { "bundle", "verify", "-q", bundle }, "bundle verify")
      local tmpref = "refs/galley/pull-" .. random_name()
      -- the instance made these objects: git checks them as it takes them, where it can (a
      -- bundle's objects are fsck'ed by git 2.41 and later; checkouts refuse bad paths anyway)
      git_ok(top, { "-c", "transfer.fsckObjects=true", "fetch", "-q", "--no-tags", bundle,
        "refs/heads/" .. branch .. ":" .. tmpref }, "fetch")
      local got = git_ok(top, { "rev-parse", tmpref })
      git(top, { "update-ref", "-d", tmpref })
      if got ~= head then raise("FILE_IO_ERROR", "pull_repo: the bundle's head is not the instance's", {}) end
      set_branch(head)
    end)
    fs.remove_tree(tmpdir)
    if not ok then error(err, 0) end
  else
    git_ok(top, { "cat-file", "-e", base .. "^{commit}" }, "cat-file")
    set_branch(head)
  end
  local commits = {}
  local list = git_ok(top, { "rev-list", "--reverse", base .. ".." .. head })
  for c in list:gmatch("%x+") do commits[#commits + 1] = c end
  local log = #commits > 0 and git_ok(top, { "log", "--oneline", base .. ".." .. head }) .. "\n" or ""
  return { branch = branch, base = base, head = head, commits = commits, log = log, execs = stats.execs,
    streams = stats.streams or 0 }
end

return M
