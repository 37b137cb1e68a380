/* POSIX shell quoting and CommandSpec -> bash script text. Plain C: no Lua here.
 *
 * Every builder follows the snprintf-style two-pass contract: called with out == NULL it only
 * returns the number of bytes it would write; called with a buffer of at least that many bytes it
 * writes them (no terminating NUL) and returns the same count. Callers size first, allocate, then
 * write, so the builders never allocate and never fail.
 *
 * Strings are (pointer, length) pairs and may hold any byte except NUL; callers reject NUL. */
#ifndef GALLEY_SHELL_H
#define GALLEY_SHELL_H

#include <stdbool.h>
#include <stddef.h>

/* Exit status of a generated script/payload whose `cd` or `export` prelude failed: nothing of the
 * user's command ran. Same number bash uses for "command not found", so 127 always means "the
 * requested command never started". */
#define GALLEY_SHELL_PRELUDE_EXIT 127

/* A byte string; ptr == NULL means "absent" (distinct from the empty string). */
struct galley_str {
  const char *ptr;
  size_t len;
};

enum galley_shell_kind {
  GALLEY_SHELL_ARGV,    /* command + args, exec'd directly */
  GALLEY_SHELL_SCRIPT   /* bash script text, used verbatim */
};

struct galley_shell_env {
  struct galley_str name;   /* must satisfy galley_shell_is_env_name */
  struct galley_str value;
};

/* A validated CommandSpec. Arrays are borrowed; nothing here is owned. */
struct galley_shell_spec {
  enum galley_shell_kind kind;
  struct galley_str command;            /* argv form */
  const struct galley_str *args;        /* argv form, nargs entries */
  size_t nargs;
  struct galley_str script;             /* shell form */
  struct galley_str cwd;                /* optional */
  const struct galley_shell_env *env;   /* optional, written in this order */
  size_t nenv;
  struct galley_str home;               /* optional: what a leading ~ becomes */
};

/* One shell word that bash reads back byte-identical: bare when it only holds
 * [A-Za-z0-9_./:@%+=,-] and cannot be mistaken for an assignment or a reserved word, otherwise
 * single-quoted with each ' written as '\''. The empty string becomes ''. */
size_t galley_shell_quote(char *out, const char *s, size_t n);

/* Like galley_shell_quote, but a leading "~" or "~/" means the home directory: replaced by `home`
 * when home.ptr is set, otherwise left unquoted so bash expands it to $HOME at run time. */
size_t galley_shell_quote_path(char *out, const char *s, size_t n, struct galley_str home);

/* True for [A-Za-z_][A-Za-z0-9_]*. */
bool galley_shell_is_env_name(const char *s, size_t n);

/* True when s is "~" or starts with "~/" ("~user" is not expanded). */
bool galley_shell_has_home_prefix(const char *s, size_t n);

/* path with a leading "~" / "~/" replaced by home; any other path is copied unchanged. */
size_t galley_shell_expand_home(char *out, const char *path, size_t n, const char *home, size_t hn);

/* True when the spec needs a script (shell form, a cwd, env, or a ~ command bash must expand);
 * false when it can run as a plain argv. */
bool galley_shell_needs_script(const struct galley_shell_spec *spec);

/* The script text for `/bin/bash <file>`:
 *   cd -- <cwd> || exit 127            (when cwd is set)
 *   export K=<value> || exit 127       (one line per env entry, in order)
 *   <script verbatim>                  (shell form)
 *   exec -- <command> <args...>        (argv form; `--` so a command may start with '-') */
size_t galley_shell_script(char *out, const struct galley_shell_spec *spec);

/* Like galley_shell_script, but the user's command gets /dev/null as stdin unless
 * stdin_inherit: the argv form ends in `exec ... </dev/null`, the shell form has an
 * `exec </dev/null` line before the script. Used for `bash -lc <payload>` under PM2. */
size_t galley_shell_payload(char *out, const struct galley_shell_spec *spec, bool stdin_inherit);

#endif
