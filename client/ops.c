/* ops.c - the simple calls of a node client (one kvstashd) on the wire
 * (kvs_wire.h, docs/protocol.md): ping, key ops, stats and the batched
 * lookup. The public entry points (api.c) send etcd:// clients to cluster.c
 * and the others here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "kvs_wire.h"

_Static_assert(KVS_CHUNK_PREFIX == KVS_KEY_KIND_PREFIX, "key kinds match the wire");
_Static_assert(KVS_CHUNK_CONTENT == KVS_KEY_KIND_CONTENT, "key kinds match the wire");

kvs_err kvs__node_ping(kvs_client *c) {
  if (!c) return KVS_EINVAL;
  nng_msg *m;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  return kvs__frame_roundtrip(c, m, KVS_OP_PING, kvs_wire_op_idempotent(KVS_OP_PING), NULL);
}

static int key_op(kvs_client *c, uint16_t op, const kvs_model_id *model, const kvs_key *key,
                  uint32_t arg, int idempotent, nng_msg **rep) {
  if (!c || !key) return KVS_EINVAL;
  kvs_wire_key_req r = {.key = *key, .arg = arg};
  if (model) r.model = *model;
  nng_msg *m;
  if (kvs__frame_new(KVS_WIRE_KEY_REQ_SIZE, &m)) return KVS_ENOMEM;
  size_t w;
  int rv = kvs_wire_key_req_encode(&r, kvs__frame_payload(m), KVS_WIRE_KEY_REQ_SIZE, &w);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  return kvs__frame_roundtrip(c, m, op, idempotent, rep);
}

kvs_err kvs__node_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                         kvs_entry_info *info) {
  if (!model || !info) return KVS_EINVAL;
  nng_msg *rep = NULL;
  KVS_TRY(key_op(c, KVS_OP_EXISTS, model, key, 0, kvs_wire_op_idempotent(KVS_OP_EXISTS), &rep));
  size_t n;
  const uint8_t *p = kvs__reply_payload(rep, &n);
  kvs_wire_exists_resp r;
  int rv = kvs_wire_exists_resp_decode(p, n, &r);
  nng_msg_free(rep);
  if (rv) return kvs__seterr(c, KVS_EPROTO, "bad EXISTS answer (%s)", kvs_errname(rv));
  info->present = r.present;
  info->tier = r.tier;
  info->pinned = r.pinned;
  info->value_bytes = r.value_bytes;
  return KVS_OK;
}

kvs_err kvs__node_delete(kvs_client *c, const kvs_key *key) {
  return key_op(c, KVS_OP_DELETE, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_DELETE), NULL);
}
kvs_err kvs__node_pin(kvs_client *c, const kvs_key *key) {
  return key_op(c, KVS_OP_PIN, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_PIN), NULL);
}
kvs_err kvs__node_unpin(kvs_client *c, const kvs_key *key) {
  return key_op(c, KVS_OP_UNPIN, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_UNPIN), NULL);
}
kvs_err kvs__node_ttl(kvs_client *c, const kvs_key *key, uint32_t ttl_s) {
  return key_op(c, KVS_OP_TTL, NULL, key, ttl_s, kvs_wire_op_idempotent(KVS_OP_TTL), NULL);
}

const char *kvs_stat_name(uint32_t i) { return kvs_wire_stat_name(i); }

kvs_err kvs__node_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n) {
  if (!c || !n || (cap && !v)) return KVS_EINVAL;
  nng_msg *m, *rep = NULL;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  KVS_TRY(kvs__frame_roundtrip(c, m, KVS_OP_STATS, kvs_wire_op_idempotent(KVS_OP_STATS), &rep));
  size_t pn;
  const uint8_t *p = kvs__reply_payload(rep, &pn);
  kvs_wire_stats_resp r;
  int rv = kvs_wire_stats_resp_decode(p, pn, &r);
  nng_msg_free(rep);
  if (rv) return kvs__seterr(c, KVS_EPROTO, "bad STATS answer (%s)", kvs_errname(rv));
  *n = r.n < cap ? r.n : cap;
  if (*n) memcpy(v, r.v, *n * sizeof *v);
  return KVS_OK;
}

/* ------------------------------------------------------------- lookup */
kvs_err kvs__node_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks, uint32_t mode,
                         uint8_t *status, size_t *n_prefix) {
  if (!c || !model || !tokens || (n_chunks && (!chunks || !status))) return KVS_EINVAL;
  if (mode != KVS_LOOKUP_EACH && mode != KVS_LOOKUP_PREFIX) return KVS_EINVAL;
  for (size_t i = 0; i < n_chunks; i++) {
    if (!chunks[i].n_tokens || (uint64_t)chunks[i].start + chunks[i].n_tokens > n_tokens ||
        chunks[i].n_tokens > KVS_WIRE_MAX_TOKENS)
      return kvs__seterr(c, KVS_ERANGE, "chunk %zu lies outside the %zu tokens", i, n_tokens);
  }
  if (n_chunks == 0) {
    if (n_prefix) *n_prefix = 0;
    return KVS_OK;
  }
  memset(status, 0, n_chunks);
  kvs_wire_lookup_chunk *wc = malloc((n_chunks ? n_chunks : 1) * sizeof *wc);
  if (!wc) return KVS_ENOMEM;
  int rv = KVS_OK, stop = 0;
  size_t i = 0;
  while (i < n_chunks && !stop) {
    /* a batch: as many chunks as fit, with the token span they cover */
    uint32_t lo = chunks[i].start, hi = chunks[i].start + chunks[i].n_tokens;
    size_t j = i + 1;
    while (j < n_chunks && j - i < KVS_WIRE_MAX_LOOKUP) {
      uint32_t nlo = chunks[j].start < lo ? chunks[j].start : lo;
      uint32_t e = chunks[j].start + chunks[j].n_tokens, nhi = e > hi ? e : hi;
      if (nhi - nlo > KVS_WIRE_LOOKUP_MAX_TOKENS) break;
      lo = nlo, hi = nhi, j++;
    }
    uint32_t nb = (uint32_t)(j - i);
    for (uint32_t k = 0; k < nb; k++) {
      wc[k].key = chunks[i + k].key;
      wc[k].tok_off = chunks[i + k].start - lo;
      wc[k].tok_len = chunks[i + k].n_tokens;
    }
    size_t sz = kvs_wire_lookup_req_size(nb, hi - lo), w;
    nng_msg *m, *rep = NULL;
    if (kvs__frame_new(sz, &m)) {
      rv = KVS_ENOMEM;
      break;
    }
    rv = kvs_wire_lookup_req_encode(model, mode, wc, nb, tokens + lo, hi - lo,
                                    kvs__frame_payload(m), sz, &w);
    if (rv) {
      nng_msg_free(m);
      kvs__seterr(c, rv, "cannot encode a LOOKUP of %u chunks", nb);
      break;
    }
    rv = kvs__frame_roundtrip(c, m, KVS_OP_LOOKUP, kvs_wire_op_idempotent(KVS_OP_LOOKUP), &rep);
    if (rv) break;
    size_t pn;
    const uint8_t *p = kvs__reply_payload(rep, &pn);
    kvs_wire_lookup_resp r;
    rv = kvs_wire_lookup_resp_decode(p, pn, &r);
    if (rv == KVS_OK && r.n_chunks != nb) rv = KVS_EPROTO;
    if (rv == KVS_OK) {
      memcpy(status + i, r.status, nb);
      if (mode == KVS_LOOKUP_PREFIX && r.n_prefix < nb) {
        memset(status + i + r.n_prefix, 0, nb - r.n_prefix);
        stop = 1;
      }
    } else {
      kvs__seterr(c, KVS_EPROTO, "bad LOOKUP answer (%s)", kvs_errname(rv));
      rv = KVS_EPROTO;
    }
    nng_msg_free(rep);
    if (rv) break;
    i = j;
  }
  free(wc);
  if (rv == KVS_OK && n_prefix) {
    size_t k = 0;
    while (k < n_chunks && status[k])
      k++;
    *n_prefix = k;
  }
  return rv;
}
