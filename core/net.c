/* net.c - "HOST:PORT" splitting (kvs_net.h). */
#include <string.h>

#include "kvs_net.h"

static kvs_err port_of(const char *s, size_t n, int *port) {
  if (!n) return KVS_EINVAL;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return KVS_EINVAL;
    if (i < 5) v = v * 10 + (s[i] - '0');
  }
  if (n > 5) return KVS_ERANGE;
  if (v < 1 || v > 65535) return KVS_ERANGE;
  *port = (int)v;
  return KVS_OK;
}

static kvs_err split(const char *s, size_t len, char *host, size_t host_cap, int *port) {
  const char *h = s, *colon;
  size_t hl;
  if (len && s[0] == '[') { /* [v6]:port */
    const char *rb = memchr(s, ']', len);
    if (!rb || (size_t)(rb - s) + 1 >= len || rb[1] != ':') return KVS_EINVAL;
    h = s + 1;
    hl = (size_t)(rb - h);
    colon = rb + 1;
  } else {
    colon = memchr(s, ':', len);
    if (!colon) return KVS_EINVAL;
    hl = (size_t)(colon - s);
    if (memchr(colon + 1, ':', len - hl - 1)) return KVS_EINVAL; /* v6 without brackets */
  }
  for (size_t i = 0; i < hl; i++)
    if (h[i] == '[' || h[i] == ']' || h[i] == '/' || (unsigned char)h[i] <= ' ') return KVS_EINVAL;
  int p = 0;
  kvs_err rc = port_of(colon + 1, len - (size_t)(colon + 1 - s), &p);
  if (rc != KVS_OK) return rc;
  if (host) {
    if (hl >= host_cap) return KVS_ERANGE;
    memcpy(host, h, hl);
    host[hl] = 0;
  }
  if (port) *port = p;
  return KVS_OK;
}

kvs_err kvs_hostport_split(const char *s, char *host, size_t host_cap, int *port) {
  if (!s) return KVS_EINVAL;
  return split(s, strlen(s), host, host_cap, port);
}

kvs_err kvs_url_hostport(const char *url, char *host, size_t host_cap, int *port) {
  const char *sep = url ? strstr(url, "://") : NULL;
  if (!sep) return KVS_EINVAL;
  const char *hp = sep + 3, *slash = strchr(hp, '/');
  return split(hp, slash ? (size_t)(slash - hp) : strlen(hp), host, host_cap, port);
}
