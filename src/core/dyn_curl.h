/* libcurl, loaded on first use. galley links no libcurl at build time: libcurl and its ~30
 * dependencies would cost every start-up (even `galley -e ''`) several milliseconds. Include
 * this header instead of <curl/curl.h>; calls such as curl_easy_init() go through a table that
 * is filled with dlopen/dlsym the first time any of them runs (curl_global_init included). */
#ifndef GALLEY_DYN_CURL_H
#define GALLEY_DYN_CURL_H

#define CURL_DISABLE_TYPECHECK 1
#include <time.h>
#include <curl/curl.h>

struct galley_curl_api {
  CURL *(*easy_init)(void);
  CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
  CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
  void (*easy_cleanup)(CURL *);
  CURLcode (*easy_perform)(CURL *);
  void (*easy_reset)(CURL *);
  const char *(*easy_strerror)(CURLcode);
  time_t (*getdate)(const char *, const time_t *);
  CURLM *(*multi_init)(void);
  CURLMcode (*multi_add_handle)(CURLM *, CURL *);
  CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
  CURLMcode (*multi_perform)(CURLM *, int *);
  CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd[], unsigned int, int, int *);
  CURLMsg *(*multi_info_read)(CURLM *, int *);
  CURLMcode (*multi_cleanup)(CURLM *);
  CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
  CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
  CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
  struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
  void (*slist_free_all)(struct curl_slist *);
  curl_version_info_data *(*version_info)(CURLversion);
};

/* The loaded table. On the first call it dlopens libcurl and runs curl_global_init; if libcurl
 * cannot be loaded it prints why and exits 1 (it is a package dependency, like libc). */
const struct galley_curl_api *galley_curl(void);

#ifndef GALLEY_DYN_CURL_IMPL
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_easy_init (galley_curl()->easy_init)
#define curl_easy_setopt (galley_curl()->easy_setopt)
#define curl_easy_getinfo (galley_curl()->easy_getinfo)
#define curl_easy_cleanup (galley_curl()->easy_cleanup)
#define curl_easy_perform (galley_curl()->easy_perform)
#define curl_easy_reset (galley_curl()->easy_reset)
#define curl_easy_strerror (galley_curl()->easy_strerror)
#define curl_getdate (galley_curl()->getdate)
#define curl_multi_init (galley_curl()->multi_init)
#define curl_multi_add_handle (galley_curl()->multi_add_handle)
#define curl_multi_remove_handle (galley_curl()->multi_remove_handle)
#define curl_multi_perform (galley_curl()->multi_perform)
#define curl_multi_poll (galley_curl()->multi_poll)
#define curl_multi_info_read (galley_curl()->multi_info_read)
#define curl_multi_cleanup (galley_curl()->multi_cleanup)
#define curl_multi_setopt (galley_curl()->multi_setopt)
#define curl_multi_socket_action (galley_curl()->multi_socket_action)
#define curl_multi_assign (galley_curl()->multi_assign)
#define curl_slist_append (galley_curl()->slist_append)
#define curl_slist_free_all (galley_curl()->slist_free_all)
#define curl_version_info (galley_curl()->version_info)
/* Initialisation and cleanup belong to the loader. */
#define curl_global_init(flags) ((void)(flags), galley_curl(), CURLE_OK)
#define curl_global_cleanup() ((void)0)
#endif

#endif
