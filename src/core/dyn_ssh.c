/* Loads libssh on first use; see dyn_ssh.h. */
#define GALLEY_DYN_SSH_IMPL 1
#include <dlfcn.h>
#include <stdio.h>
#include "dyn_ssh.h"

static struct galley_ssh_api api;
static int loaded;


int galley_ssh_load(char *why, size_t cap) {
  if (loaded) return 0;
  void *lib = dlopen("libssh.so.4", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(why, cap, "cannot load libssh.so.4 (%s)", dlerror());
    return -1;
  }
  /* Object pointers from dlsym are converted to function pointers: POSIX guarantees this works. */
#define LOAD(field, sym)                                              \
  do {                                                                \
    void *p = dlsym(lib, sym);                                        \
    if (!p) {                                                         \
      snprintf(why, cap, "libssh.so.4 lacks %s", sym);                \
      dlclose(lib);                                                   \
      return -1;                                                      \
    }                                                                 \
    *(void **)(&api.field) = p;                                       \
  } while (0)
  LOAD(bind_new, "ssh_bind_new");
  LOAD(bind_options_set, "ssh_bind_options_set");
  LOAD(bind_accept_fd, "ssh_bind_accept_fd");
  LOAD(bind_free, "ssh_bind_free");
  LOAD(new_, "ssh_new");
  LOAD(free_, "ssh_free");
  LOAD(options_set, "ssh_options_set");
  LOAD(handle_key_exchange, "ssh_handle_key_exchange");
  LOAD(get_error, "ssh_get_error");
  LOAD(disconnect, "ssh_disconnect");
  LOAD(is_connected, "ssh_is_connected");
  LOAD(set_auth_methods, "ssh_set_auth_methods");
  LOAD(set_blocking, "ssh_set_blocking");
  LOAD(get_status, "ssh_get_status");
  LOAD(set_server_callbacks, "ssh_set_server_callbacks");
  LOAD(event_new, "ssh_event_new");
  LOAD(event_add_fd, "ssh_event_add_fd");
  LOAD(event_add_session, "ssh_event_add_session");
  LOAD(event_dopoll, "ssh_event_dopoll");
  LOAD(event_remove_fd, "ssh_event_remove_fd");
  LOAD(event_remove_session, "ssh_event_remove_session");
  LOAD(event_free, "ssh_event_free");
  LOAD(channel_new, "ssh_channel_new");
  LOAD(set_channel_callbacks, "ssh_set_channel_callbacks");
  LOAD(remove_channel_callbacks, "ssh_remove_channel_callbacks");
  LOAD(channel_write, "ssh_channel_write");
  LOAD(channel_write_stderr, "ssh_channel_write_stderr");
  LOAD(channel_window_size, "ssh_channel_window_size");
  LOAD(channel_read, "ssh_channel_read");
  LOAD(channel_send_eof, "ssh_channel_send_eof");
  LOAD(channel_request_send_exit_status, "ssh_channel_request_send_exit_status");
  LOAD(channel_request_send_exit_signal, "ssh_channel_request_send_exit_signal");
  LOAD(channel_close, "ssh_channel_close");
  LOAD(channel_free, "ssh_channel_free");
  LOAD(channel_is_closed, "ssh_channel_is_closed");
  LOAD(pki_generate, "ssh_pki_generate");
  LOAD(pki_export_privkey_file, "ssh_pki_export_privkey_file");
  LOAD(key_free, "ssh_key_free");
#undef LOAD
  loaded = 1;
  return 0;
}


const struct galley_ssh_api *galley_ssh(void) {
  return &api;
}
