/* Loads libmicrohttpd on first use; see dyn_mhd.h. Callers check galley_mhd() != NULL once
 * (httpd_start does) before any MHD_* call. */
#define GALLEY_DYN_MHD_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include "dyn_mhd.h"

static struct galley_mhd_api api;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];
static int loaded;


static void load(void) {
  void *lib = dlopen("libmicrohttpd.so.12", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) lib = dlopen("libmicrohttpd.so", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    snprintf(load_error, sizeof load_error, "cannot load libmicrohttpd: %s", dlerror());
    return;
  }
  struct { void **slot; const char *name; } syms[] = {
    {(void **)&api.start_daemon, "MHD_start_daemon"},
    {(void **)&api.stop_daemon, "MHD_stop_daemon"},
    {(void **)&api.add_response_header, "MHD_add_response_header"},
    {(void **)&api.create_response_from_buffer, "MHD_create_response_from_buffer"},
    {(void **)&api.create_response_from_callback, "MHD_create_response_from_callback"},
    {(void **)&api.destroy_response, "MHD_destroy_response"},
    {(void **)&api.get_connection_info, "MHD_get_connection_info"},
    {(void **)&api.get_connection_values, "MHD_get_connection_values"},
    {(void **)&api.lookup_connection_value, "MHD_lookup_connection_value"},
    {(void **)&api.queue_response, "MHD_queue_response"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    *syms[i].slot = dlsym(lib, syms[i].name);
    if (!*syms[i].slot) {
      snprintf(load_error, sizeof load_error, "libmicrohttpd lacks %s", syms[i].name);
      return;
    }
  }
  loaded = 1;
}


const struct galley_mhd_api *galley_mhd(char *err, size_t errlen) {
  pthread_once(&once, load);
  if (!loaded && err) snprintf(err, errlen, "%s", load_error);
  return loaded ? &api : NULL;
}
