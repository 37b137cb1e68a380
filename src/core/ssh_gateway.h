/* `galley __ssh-gateway --port N --host-key FILE --api URL`: the Morph emulator's SSH gateway
 * (docs/emulator.md, "SSH gateway"), an imitation of ssh.cloud.morph.so. Runs before any Lua
 * state exists (src/main.c); libssh is loaded with dlopen (dyn_ssh.h).
 *   - reads the emulator's API key as the first line of stdin, then keeps stdin open: its end
 *     (the emulator gone) stops the gateway;
 *   - makes FILE an ed25519 host key when it does not exist, listens on 127.0.0.1:N (0: a free
 *     port) and prints the port as the first stdout line;
 *   - forks one child per connection; SIGTERM (or stdin's end) ends every child, which kills
 *     its commands' process trees first;
 *   - a user is `<instance_id>:<api_key>`: publickey with any key, the key compared in constant
 *     time, the instance checked with POST URL/_emulator/ssh/<instance_id> (Bearer key; with
 *     /run appended before each command, which the emulator logs), whose 200 answer is how to
 *     run a command there: NUL-terminated records `A<argv element>`,
 *     `E<NAME=value>`, `C<working directory>`; the command line follows the A records as
 *     `/bin/sh -c LINE` (exec) or /usr/lib/openssh/sftp-server (subsystem sftp);
 *   - session channels, several per connection: exec, subsystem sftp, env (LANG, LC_*); stdin,
 *     stdout and extended-data stderr flow-controlled both ways; exit-status or exit-signal.
 * Exit codes: 0 after a stop, 2 bad usage, 3 libssh cannot be loaded, 1 other failures. */
#ifndef GALLEY_SSH_GATEWAY_H
#define GALLEY_SSH_GATEWAY_H

int galley_ssh_gateway_main(int argc, char **argv);

#endif
