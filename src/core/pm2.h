/* PM2 helpers that need no Lua: process names that PM2 cannot misread, the payload size limit,
 * and cleaning `pm2 logs --raw --nostream` output. The argv arrays themselves are assembled by
 * the binding (src/bind/l_pm2.c); the bash payload comes from galley_shell_payload (shell.h). */
#ifndef GALLEY_PM2_H
#define GALLEY_PM2_H

#include <stdbool.h>
#include <stddef.h>

/* Longest name galley_pm2_sanitize_name produces ("under 50 characters"). */
#define GALLEY_PM2_NAME_MAX 49

/* Largest `bash -lc` payload we hand to PM2. Linux caps one argv string at 128 KiB
 * (MAX_ARG_STRLEN); the rest is headroom. Larger commands must go through a file. */
#define GALLEY_PM2_PAYLOAD_MAX (120 * 1024)

/* Writes a name made of [A-Za-z0-9-] only into out (GALLEY_PM2_NAME_MAX + 1 bytes, NUL-terminated)
 * and returns its length. Other bytes become '-', runs of '-' collapse, leading and trailing '-'
 * go. Never empty ("proc"), never starts with a digit (PM2 reads "123", "1e5" or "0x1f" as a
 * pm_id), never "all", "default" (a namespace) or "Infinity": those get a "p-" prefix. */
size_t galley_pm2_sanitize_name(char *out, const char *s, size_t n);

/* True when s is already what galley_pm2_sanitize_name would make of it. */
bool galley_pm2_name_is_safe(const char *s, size_t n);

/* Cleans the stdout of `pm2 logs NAME --nostream --lines N --raw` into the log text: drops the
 * "[TAILING] ..." line, the "<path> last N lines:" file headers (ANSI colour ignored) and the one
 * blank line PM2 prints after each non-empty file. `lines` is the N that was asked for (0: any).
 * out must have room for n + 1 bytes (a last line without '\n' gets one); returns the length
 * written. With --raw the err file's lines
 * arrive on stderr unchanged, so stderr needs no cleaning. */
size_t galley_pm2_logs_text(char *out, const char *s, size_t n, long lines);

#endif
