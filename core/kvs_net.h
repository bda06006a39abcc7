/* kvs_net.h - the one "HOST:PORT" splitter of kvstash (kvstashd's listeners
 * and advertised URLs, its HTTP address, the CLI, the benches). Pure string
 * work, no name lookup: callers hand host and port to getaddrinfo or nng.
 *
 * Accepted: "HOST:PORT", "[V6]:PORT" (the brackets are taken off), ":PORT"
 * (empty host = any). HOST has no ':' unless bracketed; PORT is decimal
 * digits only, 1..65535. */
#ifndef KVS_NET_H
#define KVS_NET_H

#include <stddef.h>

#include "kvs_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Splits s. host (host_cap bytes; may be NULL to only check) gets HOST
 * NUL-terminated, port (may be NULL) the port. KVS_EINVAL: no ":PORT", a
 * non-digit port, unbalanced brackets or an unbracketed ':' in HOST;
 * KVS_ERANGE: port 0 or over 65535, or HOST longer than host_cap - 1. On
 * error host and port are untouched. */
kvs_err kvs_hostport_split(const char *s, char *host, size_t host_cap, int *port);
/* The same for "SCHEME://HOST:PORT[/...]": the part after "://" up to the
 * first '/' is split as above. KVS_EINVAL when url has no "://". */
kvs_err kvs_url_hostport(const char *url, char *host, size_t host_cap, int *port);

#ifdef __cplusplus
}
#endif
#endif
