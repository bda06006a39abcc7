/* Fuzz target: what a node or a client reads from etcd or from a user - a
 * node record (JSON, client/cluster_etcd.c) and an etcd:// URL. A record
 * that parses must survive a round trip through kvs__node_to_json; a URL
 * that parses must name 1..4 endpoints and a valid cluster name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvs__node n, m;
  if (kvs__node_from_json((const char *)data, size, &n) == KVS_OK) {
    char *j = kvs__node_to_json(&n);
    if (!j || kvs__node_from_json(j, strlen(j), &m) != KVS_OK || memcmp(&n, &m, sizeof n) != 0)
      abort();
    free(j);
  }
  char *s = malloc(size + 1);
  if (!s) return 0;
  memcpy(s, data, size);
  s[size] = 0;
  kvs__cl_url u;
  if (kvs__cl_url_parse(s, &u) == KVS_OK && (u.n_ep < 1 || u.n_ep > KVS__CL_EP_MAX || !u.name[0] ||
                                             strchr(u.name, '/') || u.replicas > KVS__CL_MAX_R))
    abort();
  free(s);
  return 0;
}
