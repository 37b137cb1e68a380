/* libssh (server side), loaded on first use like libcurl (dyn_curl.h): galley links no libssh, so
 * `galley -e ''` never pays for it and a machine without libssh still runs everything but the
 * emulator's SSH gateway. Include this header instead of <libssh/libssh.h>; call
 * galley_ssh_load() once (it says why it failed) before any ssh_* call, which then goes through
 * the table filled with dlopen/dlsym. */
#ifndef GALLEY_DYN_SSH_H
#define GALLEY_DYN_SSH_H

#include <libssh/libssh.h>
#include <libssh/server.h>
#include <libssh/callbacks.h>

struct galley_ssh_api {
  ssh_bind (*bind_new)(void);
  int (*bind_options_set)(ssh_bind, enum ssh_bind_options_e, const void *);
  int (*bind_accept_fd)(ssh_bind, ssh_session, socket_t);
  void (*bind_free)(ssh_bind);
  ssh_session (*new_)(void);
  void (*free_)(ssh_session);
  int (*options_set)(ssh_session, enum ssh_options_e, const void *);
  int (*handle_key_exchange)(ssh_session);
  const char *(*get_error)(void *);
  void (*disconnect)(ssh_session);
  int (*is_connected)(ssh_session);
  void (*set_auth_methods)(ssh_session, int);
  void (*set_blocking)(ssh_session, int);
  int (*get_status)(ssh_session);
  int (*set_server_callbacks)(ssh_session, ssh_server_callbacks);
  ssh_event (*event_new)(void);
  int (*event_add_fd)(ssh_event, socket_t, short, ssh_event_callback, void *);
  int (*event_add_session)(ssh_event, ssh_session);
  int (*event_dopoll)(ssh_event, int);
  int (*event_remove_fd)(ssh_event, socket_t);
  int (*event_remove_session)(ssh_event, ssh_session);
  void (*event_free)(ssh_event);
  ssh_channel (*channel_new)(ssh_session);
  int (*set_channel_callbacks)(ssh_channel, ssh_channel_callbacks);
  int (*remove_channel_callbacks)(ssh_channel, ssh_channel_callbacks);
  int (*channel_write)(ssh_channel, const void *, uint32_t);
  int (*channel_write_stderr)(ssh_channel, const void *, uint32_t);
  uint32_t (*channel_window_size)(ssh_channel);
  int (*channel_read)(ssh_channel, void *, uint32_t, int);
  int (*channel_send_eof)(ssh_channel);
  int (*channel_request_send_exit_status)(ssh_channel, int);
  int (*channel_request_send_exit_signal)(ssh_channel, const char *, int, const char *, const char *);
  int (*channel_close)(ssh_channel);
  void (*channel_free)(ssh_channel);
  int (*channel_is_closed)(ssh_channel);
  int (*pki_generate)(enum ssh_keytypes_e, int, ssh_key *);
  int (*pki_export_privkey_file)(const ssh_key, const char *, ssh_auth_callback, void *, const char *);
  void (*key_free)(ssh_key);
};

/* Loads libssh.so.4 (once). 0 on success; -1 with a reason in why (cap bytes) otherwise. */
int galley_ssh_load(char *why, size_t cap);

/* The loaded table (galley_ssh_load must have succeeded). */
const struct galley_ssh_api *galley_ssh(void);

#ifndef GALLEY_DYN_SSH_IMPL
#define ssh_bind_new (galley_ssh()->bind_new)
#define ssh_bind_options_set (galley_ssh()->bind_options_set)
#define ssh_bind_accept_fd (galley_ssh()->bind_accept_fd)
#define ssh_bind_free (galley_ssh()->bind_free)
#define ssh_new (galley_ssh()->new_)
#define ssh_free (galley_ssh()->free_)
#define ssh_options_set (galley_ssh()->options_set)
#define ssh_handle_key_exchange (galley_ssh()->handle_key_exchange)
#define ssh_get_error (galley_ssh()->get_error)
#define ssh_disconnect (galley_ssh()->disconnect)
#define ssh_is_connected (galley_ssh()->is_connected)
#define ssh_set_auth_methods (galley_ssh()->set_auth_methods)
#define ssh_set_blocking (galley_ssh()->set_blocking)
#define ssh_get_status (galley_ssh()->get_status)
#define ssh_set_server_callbacks (galley_ssh()->set_server_callbacks)
#define ssh_event_new (galley_ssh()->event_new)
#define ssh_event_add_fd (galley_ssh()->event_add_fd)
#define ssh_event_add_session (galley_ssh()->event_add_session)
#define ssh_event_dopoll (galley_ssh()->event_dopoll)
#define ssh_event_remove_fd (galley_ssh()->event_remove_fd)
#define ssh_event_remove_session (galley_ssh()->event_remove_session)
#define ssh_event_free (galley_ssh()->event_free)
#define ssh_channel_new (galley_ssh()->channel_new)
#define ssh_set_channel_callbacks (galley_ssh()->set_channel_callbacks)
#define ssh_remove_channel_callbacks (galley_ssh()->remove_channel_callbacks)
#define ssh_channel_write (galley_ssh()->channel_write)
#define ssh_channel_write_stderr (galley_ssh()->channel_write_stderr)
#define ssh_channel_window_size (galley_ssh()->channel_window_size)
#define ssh_channel_read (galley_ssh()->channel_read)
#define ssh_channel_send_eof (galley_ssh()->channel_send_eof)
#define ssh_channel_request_send_exit_status (galley_ssh()->channel_request_send_exit_status)
#define ssh_channel_request_send_exit_signal (galley_ssh()->channel_request_send_exit_signal)
#define ssh_channel_close (galley_ssh()->channel_close)
#define ssh_channel_free (galley_ssh()->channel_free)
#define ssh_channel_is_closed (galley_ssh()->channel_is_closed)
#define ssh_pki_generate (galley_ssh()->pki_generate)
#define ssh_pki_export_privkey_file (galley_ssh()->pki_export_privkey_file)
#define ssh_key_free (galley_ssh()->key_free)
#endif

#endif
