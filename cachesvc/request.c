/* request.c - what both data planes do with a request, below them both
 * (dataplane.c: nng REQ/REP; stream.c: byte-stream GETs): the tenants and
 * tokens in force and the check of a frame's header against them, a GET's
 * lookup and answer fields, and the drain at stop. svc.c wires the planes;
 * neither plane calls the other, nor svc.c (the layers: svc.c -> dataplane.c,
 * stream.c -> request.c -> the store). */
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc_int.h"

/* ---------------------------------------------------- the auth snapshot */
kvs__auth *kvs__auth_new(const kvs_svc_config *c) {
  kvs__auth *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  atomic_init(&a->refs, 1);
  a->n = c->n_tenants;
  memcpy(a->t, c->tenants, sizeof a->t);
  return a;
}

kvs__auth *kvs__auth_get(kvs__authref *r) {
  pthread_mutex_lock(&r->mu);
  kvs__auth *a = r->cur;
  if (a) atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&r->mu);
  return a;
}

void kvs__auth_put(kvs__auth *a) {
  if (a && atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1) {
    sodium_memzero(a, sizeof *a); /* tokens */
    free(a);
  }
}

void kvs__auth_swap(kvs__authref *r, kvs__auth *a) {
  pthread_mutex_lock(&r->mu);
  kvs__auth *old = r->cur;
  r->cur = a;
  pthread_mutex_unlock(&r->mu);
  kvs__auth_put(old);
}

/* --------------------------------------------------------------- auth */
/* Constant-time in the token; a missing tenant costs the same compare. */
int kvs__auth_ok(kvs__metrics *m, const kvs_wire_hdr *h) {
  kvs__auth *a = kvs__auth_get(&m->auth);
  if (!a || a->n == 0) {
    kvs__auth_put(a);
    return 1;
  }
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(h, tenant);
  uint8_t want[KVS_WIRE_TOKEN_MAX + 1], got[KVS_WIRE_TOKEN_MAX + 1];
  memset(want, 0xFF, sizeof want); /* no tenant: matches no token */
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->t[i].name, tenant) == 0) {
      size_t tl = strlen(a->t[i].token);
      memset(want, 0, sizeof want);
      memcpy(want, a->t[i].token, tl);
      want[KVS_WIRE_TOKEN_MAX] = (uint8_t)tl;
      break;
    }
  kvs__auth_put(a);
  memset(got, 0, sizeof got);
  memcpy(got, h->token, h->token_len);
  got[KVS_WIRE_TOKEN_MAX] = h->token_len;
  return h->token_len > 0 && sodium_memcmp(want, got, sizeof want) == 0;
}

/* --------------------------------------------------------------- GET */
kvs_err kvs__get_prepare(kvs__store *st, const char *tenant, const kvs_wire_get_req *g, int fast,
                         kvs__vref *v, kvs_wire_get_resp *a, size_t *head, const char **why) {
  if (why) *why = NULL;
  kvs__skey sk;
  kvs__store_skey(st, tenant, &g->key, &sk);
  kvs_err rc = fast ? kvs__store_get_t0(st, &sk, &g->model, g->tokens_le, g->n_tokens, v)
                    : kvs__store_get(st, &sk, &g->model, g->tokens_le, g->n_tokens, v);
  if (rc != KVS_OK) return rc;
  uint32_t nseg = v->m.n_segments;
  memset(a, 0, sizeof *a);
  if (g->seg_first > nseg ||
      (g->seg_count != KVS_WIRE_SEG_ALL && g->seg_count > nseg - g->seg_first)) {
    kvs__vref_release(v);
    if (why) *why = "segment range";
    return KVS_ERANGE;
  }
  a->seg_first = g->seg_first;
  a->seg_count = g->seg_count == KVS_WIRE_SEG_ALL ? nseg - g->seg_first : g->seg_count;
  if (a->seg_count) {
    uint64_t off, len, off2, len2;
    kvs_wire_meta_seg_range(&v->m, a->seg_first, &off, &len);
    kvs_wire_meta_seg_range(&v->m, a->seg_first + a->seg_count - 1, &off2, &len2);
    a->byte_off = off;
    a->byte_len = off2 + len2 - off;
  }
  a->value_bytes = v->m.value_bytes;
  a->checksum = v->m.checksum;
  *head = KVS_WIRE_GET_RESP_FIXED + ((g->flags & KVS_WIRE_GET_META) ? v->meta_len : 0);
  return KVS_OK;
}

/* ----------------------------------------------------- listen URLs, drain */
int kvs__stream_url(const char *url) {
  return !strncmp(url, "tcp+stream://", 13) || !strncmp(url, "ipc+stream://", 13);
}

void kvs__drain(atomic_int *draining, atomic_int *inflight) {
  atomic_store(draining, 1);
  for (int i = 0; i < 10000 && atomic_load(inflight) > 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}
