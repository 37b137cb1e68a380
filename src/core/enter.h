/* `galley __enter CGROUP HOLDER_PID HOLDER_START NET CWD -- COMMAND...`: runs COMMAND inside a
 * local sandbox's namespaces (lua/galley/providers/local.lua), in one process where a shell,
 * nsenter, setpriv, setsid and a second shell used to take five.
 *   1. opens CGROUP (a cgroup v2 directory; "" for none);
 *   2. opens the holder's user, pid, mount, ipc, uts and cgroup namespaces (and net when NET is
 *      "net"), then checks that HOLDER_PID still started at HOLDER_START (field 22 of its
 *      /proc stat), so a reused pid is never joined;
 *   3. enters them as nsenter does (every namespace it may enter first, the user namespace, then
 *      the rest), all but the cgroup namespace;
 *   4. makes the child directly inside CGROUP (clone3 with CLONE_INTO_CGROUP; on kernels before
 *      5.7 it joins CGROUP itself through cgroup.procs, then forks): moving a running process
 *      costs an RCU grace period, 10-20 ms per exec here. A pid namespace applies to children.
 *      The parent waits and ends as the child ended (same exit code, or the same signal),
 *      stopping when it stops; SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to it
 *      go on to the child's process group (dying of them first would leave the child to this
 *      machine's pid 1); when the child dies of one, the members of its group still alive that
 *      neither catch, ignore nor have it pending get it too (they were made while a shell held
 *      it back: see sweep.h);
 *   5. the child enters the cgroup namespace, becomes uid and gid 0 with no supplementary groups,
 *      sets no_new_privs, drops CAP_SYS_RESOURCE and CAP_SYS_ADMIN from its bounding set (so
 *      nested user namespaces stay disabled and the read-only mounts stay read-only), asks for
 *      SIGKILL when the parent dies, starts a session of its own, changes to CWD and execs
 *      COMMAND (searched in PATH).
 * Exit codes: 125 when the sandbox cannot be entered (steps 1-5 before the exec, the holder gone or reused),
 * 127 when CWD or COMMAND does not exist, 126 when COMMAND cannot be executed, 2 on bad usage;
 * otherwise COMMAND's. Runs before any Lua state exists (src/main.c). */
#ifndef GALLEY_ENTER_H
#define GALLEY_ENTER_H

int galley_enter_main(int argc, char **argv);

#endif
