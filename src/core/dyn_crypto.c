/* Loads libcrypto's SHA-256 on first use; see dyn_crypto.h. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "dyn_crypto.h"

static struct galley_crypto_api api;
static const struct galley_crypto_api *loaded;
static pthread_once_t once = PTHREAD_ONCE_INIT;


static void load(void) {
  const char *pick = getenv("GALLEY_SHA256");
  if (pick && strcmp(pick, "libsodium") == 0) return;
  void *lib = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return;
  /* Object pointers from dlsym are converted to function pointers: POSIX guarantees this works. */
  *(void **)(&api.sha256_init) = dlsym(lib, "SHA256_Init");
  *(void **)(&api.sha256_update) = dlsym(lib, "SHA256_Update");
  *(void **)(&api.sha256_final) = dlsym(lib, "SHA256_Final");
  if (api.sha256_init && api.sha256_update && api.sha256_final) loaded = &api;
  /* lib stays loaded for the process's life, like libcurl */
}


const struct galley_crypto_api *galley_crypto(void) {
  pthread_once(&once, load);
  return loaded;
}
