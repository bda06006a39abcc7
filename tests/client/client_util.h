/* client_util.h - what several client tests build the same way: a client of
 * one tenant, seeded random f16 KV of a layout, seeded token ids. Header only
 * (static inline), so no test target changes its sources. */
#ifndef KVS_TEST_CLIENT_UTIL_H
#define KVS_TEST_CLIENT_UTIL_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvs_test.h"
#include "kvstash.h"

/* A client of `tenant` at `url` with `flags` (20 s per request); NULL, with
 * the reason on stderr, when it cannot be created. The caller frees it. */
static inline kvs_client *test_client_connect(const char *url, const char *tenant, uint32_t flags) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.tenant = tenant;
  o.flags = flags;
  o.request_timeout_ms = 20000;
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c)) {
    fprintf(stderr, "connect: %s\n", kvs_client_errmsg(c));
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

/* T tokens of (L, 2, T, H, D) f16 KV of `lay`, uniform in [-4, 4); malloc'd. */
static inline uint16_t *test_make_kv(const kvs_layout *lay, uint32_t T, unsigned long long *seed) {
  size_t n = kvs_layout_token_bytes(lay) * T / 2;
  uint16_t *kv = malloc(n * 2);
  for (size_t i = 0; kv && i < n; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(seed) * 4.0f);
  return kv;
}

/* n token ids below 49152; malloc'd. */
static inline int32_t *test_make_tokens(size_t n, unsigned long long *seed) {
  int32_t *t = malloc(n * sizeof *t);
  for (size_t i = 0; t && i < n; i++)
    t[i] = (int32_t)(kvs_test_rand(seed) % 49152);
  return t;
}
#endif
