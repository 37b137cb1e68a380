/* The stragglers of a process group killed by a signal.
 *
 * A shell blocks signals while it forks (dash, around the vfork it starts a simple command
 * with): a signal sent to its process group then is delivered to the shell once it unblocks, and
 * the child made in that moment was never sent it (the kernel holds a fork back only for a
 * signal it can deliver). `sh -c 'echo up; sleep 600'` killed right after "up" died of TERM, and
 * the sleep ran on in its group, holding the command's output open: a wait for that output never
 * came back (about 1 kill in 1500 here under load).
 *
 * galley_sweep_group(proc_fd, pgid, sig, pidns): once the group's leader died of `sig`, sends it
 * to the members of process group `pgid` still alive that neither catch, ignore nor have it
 * pending: they get it as if they had been in the group when it was sent. Members that catch it
 * are left alone (a second TERM or INT often means "force"). A few passes, for what they made in
 * turn. proc_fd: a procfs of this machine's pid namespace (where `pgid` is), or -1 to open
 * /proc; pidns: only processes of that pid namespace (its st_dev and st_ino), or NULL for any.
 * Call it while the leader is a zombie not yet reaped where possible (its number cannot be a new
 * process's then). Used by galley __enter (enter.c) and galley.core.proc (proc.c). */
#ifndef GALLEY_SWEEP_H
#define GALLEY_SWEEP_H

#include <sys/stat.h>
#include <sys/types.h>

void galley_sweep_group(int proc_fd, pid_t pgid, int sig, const struct stat *pidns);

#endif
