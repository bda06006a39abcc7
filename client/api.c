/* api.c - the public calls of kvstash.h that depend on the kind of client:
 * an etcd:// client goes to cluster.c, a client of one kvstashd to the node
 * layer (node.c, ops.c, get.c, put.c). The top of the client's call graph:
 * nothing in client/ calls back up here (cluster.c's members are node
 * clients and call the node layer directly). Also the batches, one driver
 * for gets and puts. */
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

kvs_err kvs_client_create(const kvs_client_opts *o, kvs_client **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  if (!o || !o->url || !*o->url) return KVS_EINVAL;
  if (!strncmp(o->url, "etcd://", 7)) return kvs__cluster_create(o, out);
  return kvs__node_create(o, out);
}

void kvs_client_free(kvs_client *c) {
  if (!c) return;
  if (c->cluster)
    kvs__cluster_free(c);
  else
    kvs__node_free(c);
}

kvs_err kvs_ping(kvs_client *c) {
  if (!c) return KVS_EINVAL;
  return c->cluster ? kvs__cluster_ping(c) : kvs__node_ping(c);
}

kvs_err kvs_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                   kvs_entry_info *info) {
  if (!model || !info) return KVS_EINVAL;
  if (c && c->cluster) return kvs__cluster_exists(c, model, key, info);
  return kvs__node_exists(c, model, key, info);
}

kvs_err kvs_delete(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 0, key, 0);
  return kvs__node_delete(c, key);
}

kvs_err kvs_pin(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 1, key, 0);
  return kvs__node_pin(c, key);
}

kvs_err kvs_unpin(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 2, key, 0);
  return kvs__node_unpin(c, key);
}

kvs_err kvs_ttl(kvs_client *c, const kvs_key *key, uint32_t ttl_s) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 3, key, ttl_s);
  return kvs__node_ttl(c, key, ttl_s);
}

kvs_err kvs_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n) {
  if (!c || !n || (cap && !v)) return KVS_EINVAL;
  if (c->cluster) return kvs__cluster_stats(c, v, cap, n);
  return kvs__node_stats(c, v, cap, n);
}

kvs_err kvs_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                   const kvs_chunk *chunks, size_t n_chunks, uint32_t mode, uint8_t *status,
                   size_t *n_prefix) {
  if (!c || !model || !tokens || (n_chunks && (!chunks || !status))) return KVS_EINVAL;
  if (mode != KVS_LOOKUP_EACH && mode != KVS_LOOKUP_PREFIX) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_lookup(c, model, tokens, n_tokens, chunks, n_chunks, mode, status,
                               n_prefix);
  return kvs__node_lookup(c, model, tokens, n_tokens, chunks, n_chunks, mode, status, n_prefix);
}

kvs_err kvs_get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                      const kvs_get_opts *o, kvs_op **opp) {
  if (c && c->cluster) return KVS__NOT_ON_CLUSTER(c);
  return kvs__node_get_start(c, model, tokens, chunk, layout, out, out_cap, o, 0, opp);
}

kvs_err kvs_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                const kvs_get_opts *o) {
  kvs_get_opts d = {0};
  if (!o) o = &d;
  if (c && c->cluster) return kvs__cluster_get(c, model, tokens, chunk, layout, out, out_cap, o);
  return kvs__node_get(c, model, tokens, chunk, layout, out, out_cap, o);
}

kvs_err kvs_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                      const kvs_put_opts *o, kvs_op **opp) {
  if (!opp) return KVS_EINVAL;
  *opp = NULL;
  if (!c || !model || !tokens || !chunk || !layout || !kv) return KVS_EINVAL;
  if (c->cluster) return KVS__NOT_ON_CLUSTER(c);
  return kvs__node_put_start(c, model, tokens, chunk, layout, kv, o, opp);
}

kvs_err kvs_put(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                const kvs_put_opts *o) {
  kvs_op *op;
  if (c && c->cluster) return kvs__cluster_put(c, model, tokens, chunk, layout, kv, o);
  KVS_TRY(kvs_put_start(c, model, tokens, chunk, layout, kv, o, &op));
  int rv = kvs_op_wait(op);
  kvs_op_free(op);
  return rv;
}

/* ------------------------------------------------------------- batches */
/* One batch of a node client: every op started, then every op waited for;
 * rvs[i] (may be NULL) gets each one's result, the first error is returned.
 * start(i) starts the i-th get or put. */
typedef struct batch_args {
  kvs_client *c;
  const kvs_model_id *model;
  const int32_t *tokens;
  const kvs_chunk *chunks;
  const kvs_layout *layout;
  void *const *outs;        /* get */
  const uint64_t *out_caps; /* get */
  const kvs_get_opts *go;   /* get */
  const void *const *kvs;   /* put */
  const kvs_put_opts *po;   /* put */
} batch_args;

static kvs_err start_get(const batch_args *a, size_t i, kvs_op **op) {
  return kvs_get_start(a->c, a->model, a->tokens, &a->chunks[i], a->layout, a->outs[i],
                       a->out_caps[i], a->go, op);
}

static kvs_err start_put(const batch_args *a, size_t i, kvs_op **op) {
  return kvs_put_start(a->c, a->model, a->tokens, &a->chunks[i], a->layout, a->kvs[i], a->po, op);
}

static kvs_err run_batch(const batch_args *a, size_t n,
                         kvs_err (*start)(const batch_args *, size_t, kvs_op **), kvs_err *rvs) {
  kvs_op **ops = calloc(n ? n : 1, sizeof *ops);
  if (!ops) return KVS_ENOMEM;
  int first = KVS_OK;
  for (size_t i = 0; i < n; i++) {
    int rv = start(a, i, &ops[i]);
    if (rvs) rvs[i] = rv;
    if (rv && !first) first = rv;
  }
  for (size_t i = 0; i < n; i++) {
    if (!ops[i]) continue;
    int rv = kvs_op_wait(ops[i]);
    if (rvs) rvs[i] = rv;
    if (rv && !first) first = rv;
    kvs_op_free(ops[i]);
  }
  free(ops);
  return first;
}

kvs_err kvs_get_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      void *const *outs, const uint64_t *out_caps, const kvs_get_opts *o,
                      kvs_err *rvs) {
  if (!c || (n && (!chunks || !outs || !out_caps))) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_batch(c, 0, model, tokens, chunks, n, layout, outs, out_caps, NULL, o, NULL,
                              rvs);
  batch_args a = {.c = c,
                  .model = model,
                  .tokens = tokens,
                  .chunks = chunks,
                  .layout = layout,
                  .outs = outs,
                  .out_caps = out_caps,
                  .go = o};
  return run_batch(&a, n, start_get, rvs);
}

kvs_err kvs_put_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      const void *const *kvs, const kvs_put_opts *o, kvs_err *rvs) {
  if (!c || (n && (!chunks || !kvs))) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_batch(c, 1, model, tokens, chunks, n, layout, NULL, NULL, kvs, NULL, o,
                              rvs);
  batch_args a = {.c = c,
                  .model = model,
                  .tokens = tokens,
                  .chunks = chunks,
                  .layout = layout,
                  .kvs = kvs,
                  .po = o};
  return run_batch(&a, n, start_put, rvs);
}
