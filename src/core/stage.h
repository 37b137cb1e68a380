/* `galley __stage STAGE INSTANCE_DIR UID GID [READ_ONLY_DIR...] -- COMMAND...`: what a
 * root-started local sandbox needs before bubblewrap runs, done in this one process instead of
 * a shell, a `mount` per step, setsid and setpriv (about 18 processes an instance): a private
 * mount namespace; each READ_ONLY_DIR bound over itself read-only (keeping
 * nosuid/nodev/noexec), so the flag is locked inside the sandbox's user namespace; a 1 MiB tmpfs
 * at STAGE with INSTANCE_DIR/home and INSTANCE_DIR/tmp bound at STAGE/home and STAGE/tmp; a
 * session of its own; no supplementary groups, real, effective and saved ids UID and GID (the
 * subordinate ids); then exec of COMMAND (bwrap).
 * Called by lua/galley/providers/local.lua (LAUNCH) through the galley binary itself, before
 * any Lua state exists. Exit 1 with a message naming the step on failure, 127 when COMMAND
 * cannot run, 2 on bad usage. */
#ifndef GALLEY_STAGE_H
#define GALLEY_STAGE_H

int galley_stage_main(int argc, char **argv);

/* `galley __userns-off PID`: enters the user namespace of PID and writes 0 to
 * user.max_user_namespaces there, so no process in the sandbox can make a nested one (what
 * `nsenter --user ... sh -c 'echo 0 > ...'` did in two processes). Exit 1 with a message on
 * failure, 2 on bad usage. */
int galley_userns_off_main(int argc, char **argv);

#endif
