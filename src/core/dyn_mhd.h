/* libmicrohttpd, loaded on first use: only `galley emulate` serves HTTP, and linking it (with
 * GnuTLS behind it) would cost every start-up. Include this instead of <microhttpd.h>. */
#ifndef GALLEY_DYN_MHD_H
#define GALLEY_DYN_MHD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <microhttpd.h>

struct galley_mhd_api {
  struct MHD_Daemon *(*start_daemon)(unsigned int, uint16_t, MHD_AcceptPolicyCallback, void *,
                                     MHD_AccessHandlerCallback, void *, ...);
  void (*stop_daemon)(struct MHD_Daemon *);
  enum MHD_Result (*add_response_header)(struct MHD_Response *, const char *, const char *);
  struct MHD_Response *(*create_response_from_buffer)(size_t, void *, enum MHD_ResponseMemoryMode);
  struct MHD_Response *(*create_response_from_callback)(uint64_t, size_t, MHD_ContentReaderCallback, void *,
                                                        MHD_ContentReaderFreeCallback);
  void (*destroy_response)(struct MHD_Response *);
  const union MHD_ConnectionInfo *(*get_connection_info)(struct MHD_Connection *, enum MHD_ConnectionInfoType, ...);
  int (*get_connection_values)(struct MHD_Connection *, enum MHD_ValueKind, MHD_KeyValueIterator, void *);
  const char *(*lookup_connection_value)(struct MHD_Connection *, enum MHD_ValueKind, const char *);
  enum MHD_Result (*queue_response)(struct MHD_Connection *, unsigned int, struct MHD_Response *);
};

/* The loaded table, or NULL (with a reason in err) when libmicrohttpd cannot be loaded. */
const struct galley_mhd_api *galley_mhd(char *err, size_t errlen);

#ifndef GALLEY_DYN_MHD_IMPL
#define MHD_start_daemon (galley_mhd(NULL, 0)->start_daemon)
#define MHD_stop_daemon (galley_mhd(NULL, 0)->stop_daemon)
#define MHD_add_response_header (galley_mhd(NULL, 0)->add_response_header)
#define MHD_create_response_from_buffer (galley_mhd(NULL, 0)->create_response_from_buffer)
#define MHD_create_response_from_callback (galley_mhd(NULL, 0)->create_response_from_callback)
#define MHD_destroy_response (galley_mhd(NULL, 0)->destroy_response)
#define MHD_get_connection_info (galley_mhd(NULL, 0)->get_connection_info)
#define MHD_get_connection_values (galley_mhd(NULL, 0)->get_connection_values)
#define MHD_lookup_connection_value (galley_mhd(NULL, 0)->lookup_connection_value)
#define MHD_queue_response (galley_mhd(NULL, 0)->queue_response)
#endif

#endif
