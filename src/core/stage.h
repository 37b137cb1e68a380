/* `galley __stage STAGE INSTANCE_DIR [READ_ONLY_DIR...] -- COMMAND...`: what a root-started
 * local sandbox needs before bubblewrap runs, done in this one process instead of a shell and
 * a `mount` per step (about 16 processes an instance): a private mount namespace; each
 * READ_ONLY_DIR bound over itself read-only (keeping nosuid/nodev/noexec), so the flag is
 * locked inside the sandbox's user namespace; a 1 MiB tmpfs at STAGE with INSTANCE_DIR/home and
 * INSTANCE_DIR/tmp bound at STAGE/home and STAGE/tmp; then exec of COMMAND (setpriv + bwrap).
 * Called by lua/galley/providers/local.lua (LAUNCH) through the galley binary itself, before
 * any Lua state exists. Exit 1 with a message naming the step on failure, 127 when COMMAND
 * cannot run, 2 on bad usage. */
#ifndef GALLEY_STAGE_H
#define GALLEY_STAGE_H

int galley_stage_main(int argc, char **argv);

#endif
