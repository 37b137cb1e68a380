/* Loads libcurl on first use; see dyn_curl.h. */
#define GALLEY_DYN_CURL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "dyn_curl.h"

static struct galley_curl_api api;
static pthread_once_t once = PTHREAD_ONCE_INIT;


static void *need(void *lib, const char *name) {
  void *p = dlsym(lib, name);
  if (!p) {
    fprintf(stderr, "galley: libcurl lacks %s: %s\n", name, dlerror());
    exit(1);
  }
  return p;
}


static void load(void) {
  void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) lib = dlopen("libcurl.so", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    fprintf(stderr, "galley: cannot load libcurl (%s)\n  hint: apt-get install libcurl4\n", dlerror());
    exit(1);
  }
  /* Object pointers from dlsym are converted to function pointers: POSIX guarantees this works. */
#define LOAD(field, sym) *(void **)(&api.field) = need(lib, sym)
  LOAD(easy_init, "curl_easy_init");
  LOAD(easy_setopt, "curl_easy_setopt");
  LOAD(easy_getinfo, "curl_easy_getinfo");
  LOAD(easy_cleanup, "curl_easy_cleanup");
  LOAD(easy_perform, "curl_easy_perform");
  LOAD(easy_reset, "curl_easy_reset");
  LOAD(easy_strerror, "curl_easy_strerror");
  LOAD(getdate, "curl_getdate");
  LOAD(multi_init, "curl_multi_init");
  LOAD(multi_add_handle, "curl_multi_add_handle");
  LOAD(multi_remove_handle, "curl_multi_remove_handle");
  LOAD(multi_perform, "curl_multi_perform");
  LOAD(multi_poll, "curl_multi_poll");
  LOAD(multi_info_read, "curl_multi_info_read");
  LOAD(multi_cleanup, "curl_multi_cleanup");
  LOAD(multi_setopt, "curl_multi_setopt");
  LOAD(multi_socket_action, "curl_multi_socket_action");
  LOAD(multi_assign, "curl_multi_assign");
  LOAD(slist_append, "curl_slist_append");
  LOAD(slist_free_all, "curl_slist_free_all");
  LOAD(version_info, "curl_version_info");
#undef LOAD
  CURLcode (*global_init)(long);
  *(void **)(&global_init) = need(lib, "curl_global_init");
  if (global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "galley: curl_global_init failed\n");
    exit(1);
  }
}


const struct galley_curl_api *galley_curl(void) {
  pthread_once(&once, load);
  return &api;
}
