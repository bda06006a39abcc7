/* put.c - the put of a node client: the KV encoded (on the GPU when the
 * profile has a GPU encoder and the KV lies in device memory; else on the
 * host) and sent one of two ways:
 * - shared memory (same host, kvstashd `shm = on`): PUT_RESERVE asks for a
 *   range of the tenant's segment, the encoder writes the value straight
 *   into it (the GPU encoder's one device-to-host copy lands there), and
 *   PUT_COMMIT sends only the meta; the daemon checks the bytes in place;
 * - the socket: one PUT frame of meta + encoded bytes (the GPU encoder's
 *   copy lands in the frame), sent as one call.
 * Whatever stands in the way of the first (no such ops, no room, the
 * segment cannot be mapped) sends the put the second way. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
#include "kvs_le.h"
#include "kvs_wire.h"
#include "op_int.h"

static void put_done(kvs__call *call, void *arg) {
  kvs_op *op = arg;
  int rv = call->rv;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", call->errmsg);
  kvs__call_free(call);
  pthread_mutex_lock(&op->mu);
  if (rv) kvs__op_fail_locked(op, rv, msg);
  op->pending--;
  kvs__op_update_locked(op);
  pthread_mutex_unlock(&op->mu);
}

/* KVS_CLIENT_HOST_ENCODE, or $KVS_CLIENT_GPU_ENCODE=0 as a fallback read at
 * each put (benches and tests switch it between puts of one client). */
static int host_encode(const kvs_client *c) {
  if (c->o.flags & KVS_CLIENT_HOST_ENCODE) return 1;
  const char *e = getenv("KVS_CLIENT_GPU_ENCODE");
  return e && !strcmp(e, "0");
}

/* Shared-memory puts unless opted out: KVS_CLIENT_NO_SHM_PUT, or
 * $KVS_CLIENT_SHM_PUT=0 read at each put (benches switch it between puts). */
static int shm_put_wanted(kvs_client *c) {
  if ((c->o.flags & KVS_CLIENT_NO_SHM_PUT) || !atomic_load(&c->shm.on) ||
      atomic_load(&c->shm.put_off))
    return 0;
  const char *e = getenv("KVS_CLIENT_SHM_PUT");
  return !(e && !strcmp(e, "0"));
}

/* Gives a reservation back (best effort: unanswered, it expires). */
static void shm_put_abort(kvs_client *c, uint64_t resv_id) {
  nng_msg *m = NULL;
  if (kvs__frame_new(8, &m)) return;
  kvs__wr64(kvs__frame_payload(m), resv_id);
  nng_msg *rep = NULL;
  if (kvs__frame_roundtrip(c, m, KVS_OP_PUT_ABORT, 1, &rep) == KVS_OK) nng_msg_free(rep);
}

/* A device encode into the range dst when its mapping is not registered:
 * through a pinned bounce buffer (the client's, grown as needed), then one
 * host copy into the range. */
static kvs_err encode_device_bounced(kvs_client *c, const kvs_put_opts *o, const kvs_layout *l,
                                     uint32_t T, const void *kv, uint8_t *dst, size_t cap,
                                     kvs__encoded *e) {
  pthread_mutex_lock(&c->shm.bounce_mu);
  kvs_err rv = KVS_OK;
  if (c->shm.bounce_len < cap) {
    if (c->shm.bounce) kvs_gpu_free_host(c->shm.bounce);
    c->shm.bounce = NULL;
    c->shm.bounce_len = 0;
    rv = kvs_gpu_alloc_host(&c->shm.bounce, cap);
    if (rv == KVS_OK) c->shm.bounce_len = cap;
  }
  if (rv == KVS_OK)
    rv = kvs__encode_device(o->profile, o->layers_per_group, o->codec, l, T, kv, c->shm.bounce, cap,
                            e);
  if (rv == KVS_OK) {
    memcpy(dst, e->bytes, e->len);
    e->bytes = dst; /* borrowed either way */
  }
  pthread_mutex_unlock(&c->shm.bounce_mu);
  return rv;
}

/* The put through shared memory. Returns KVS__PUT_SOCKET when the put
 * should go through the socket instead (nothing was sent that stays). */
#define KVS__PUT_SOCKET 1
static int shm_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                         const kvs_put_opts *o, kvs_op **opp) {
  const int device = (o->flags & KVS_PUT_DEVICE) != 0;
  const uint32_t T = chunk->n_tokens;
  size_t dbound =
      device && !host_encode(c)
          ? kvs__encode_device_bound(o->profile, o->layers_per_group, o->codec, layout, T)
          : 0;
  size_t bound =
      dbound ? dbound : kvs__encode_bound(o->profile, o->layers_per_group, o->codec, layout, T);
  if (!bound || (device && !dbound && kvs_gpu_device_count() < 1))
    return KVS__PUT_SOCKET; /* the socket path says what is wrong */
  /* PUT_RESERVE */
  nng_msg *m = NULL, *rep = NULL;
  kvs_wire_put_reserve_req q = {.key = chunk->key, .model = *model, .bytes = bound};
  if (kvs__frame_new(KVS_WIRE_PUT_RESERVE_REQ_SIZE, &m)) return KVS__PUT_SOCKET;
  if (kvs_wire_put_reserve_req_encode(&q, kvs__frame_payload(m), KVS_WIRE_PUT_RESERVE_REQ_SIZE,
                                      NULL) != KVS_OK) {
    nng_msg_free(m);
    return KVS__PUT_SOCKET;
  }
  int rv = kvs__frame_roundtrip(c, m, KVS_OP_PUT_RESERVE, 0, &rep);
  if (rv == KVS_ENOTSUP || rv == KVS_EPROTO || rv == KVS_EVERSION) {
    /* shm off, or a kvstashd without shared-memory puts: stop asking */
    atomic_store(&c->shm.put_off, 1);
    KVS_LOGI("client", "shared-memory puts not offered, puts go through the socket", "err=%s",
             kvs_errname(rv));
  }
  if (rv) return KVS__PUT_SOCKET;
  size_t pn;
  const uint8_t *pp = kvs__reply_payload(rep, &pn);
  kvs_wire_put_reserve_resp r;
  rv = kvs_wire_put_reserve_resp_decode(pp, pn, &r);
  nng_msg_free(rep);
  if (rv) return KVS__PUT_SOCKET; /* the range expires */
  char msg[KVS__ERRMSG_LEN];
  kvs__shmmap *map = NULL;
  rv = kvs__shm_map_rw(c, r.shm_name, dbound != 0, &map, msg, sizeof msg);
  if (rv == KVS_EPERM || rv == KVS_ENOENT) { /* another user or another host */
    KVS_LOGI("client", "shared memory not writable, puts go through the socket", "why=\"%s\"", msg);
    atomic_store(&c->shm.put_off, 1);
  }
  if (rv || r.offset > map->size || r.bytes > map->size - r.offset || r.bytes < bound) {
    shm_put_abort(c, r.resv_id);
    return KVS__PUT_SOCKET;
  }
  uint8_t *dst = map->wbase + r.offset;
  kvs__encoded e;
  memset(&e, 0, sizeof e);
  if (dbound) { /* the GPU encoder's one device-to-host copy lands in the range */
    rv = map->wregistered == 1 ? kvs__encode_device(o->profile, o->layers_per_group, o->codec,
                                                    layout, T, kv, dst, bound, &e)
                               : encode_device_bounced(c, o, layout, T, kv, dst, bound, &e);
  } else {
    const void *host = kv;
    void *staged = NULL;
    if (device) { /* no GPU encoder for the profile: the KV comes to the host first */
      size_t bytes = kvs_layout_token_bytes(layout) * T;
      staged = malloc(bytes);
      rv = staged ? kvs_gpu_copy_d2h(staged, kv, bytes, NULL) : KVS_ENOMEM;
      if (rv == KVS_OK) rv = kvs_gpu_sync(NULL);
      host = staged;
    }
    if (rv == KVS_OK)
      rv = kvs__encode_to(o->profile, o->layers_per_group, o->codec, layout, T, host, dst, bound,
                          &e);
    free(staged);
  }
  if (rv) {
    shm_put_abort(c, r.resv_id);
    return kvs__seterr(c, rv, "encoding with profile %u into shared memory failed", o->profile);
  }
  kvs_wire_meta meta = {.key = chunk->key,
                        .model = *model,
                        .key_kind = (uint8_t)chunk->kind,
                        .n_tokens = T,
                        .layout = *layout,
                        .codec_profile = o->profile,
                        .n_segments = e.n_segs,
                        .ttl_s = o->ttl_s,
                        .value_bytes = e.len,
                        .checksum = kvs_checksum64(dst, e.len),
                        .tokens_le = (const uint8_t *)(tokens + chunk->start),
                        .seg_end_le = (const uint8_t *)e.seg_end};
  /* PUT_COMMIT: the meta only */
  size_t cs = kvs_wire_put_commit_req_size(&meta);
  m = NULL;
  rv = cs ? kvs__frame_new(cs, &m) : KVS_ETOOBIG;
  if (!rv) rv = kvs_wire_put_commit_req_encode(r.resv_id, &meta, kvs__frame_payload(m), cs, NULL);
  kvs__encoded_free(&e);
  if (!rv) rv = kvs__frame_seal(c, m, KVS_OP_PUT_COMMIT);
  if (!rv && (o->flags & KVS_PUT_SYNC)) kvs_wire_hdr_add_flags(nng_msg_body(m), KVS_WIRE_F_SYNC);
  if (!rv && (o->flags & KVS_PUT_NX)) kvs_wire_hdr_add_flags(nng_msg_body(m), KVS_WIRE_F_NX);
  if (rv) {
    if (m) nng_msg_free(m);
    shm_put_abort(c, r.resv_id);
    return kvs__seterr(c, rv, "cannot build the PUT_COMMIT request");
  }
  kvs_op *op = kvs__op_new(c, KVS__OP_PUT);
  /* not resent: a commit that arrived consumed the reservation */
  kvs__call *call = op ? kvs__call_new(c, m, 0, 0, kvs__check_reply, put_done, op) : NULL;
  if (!call) {
    if (!op) nng_msg_free(m);
    free(op);
    shm_put_abort(c, r.resv_id);
    return KVS_ENOMEM;
  }
  op->pending = 1;
  *opp = op;
  atomic_fetch_add(&c->ctr.shm_puts, 1);
  kvs__call_start(call);
  return KVS_OK;
}

kvs_err kvs__node_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                            const kvs_put_opts *o, kvs_op **opp) {
  if (!opp) return KVS_EINVAL;
  *opp = NULL;
  if (!c || !model || !tokens || !chunk || !layout || !kv) return KVS_EINVAL;
  if (kvs_layout_validate(layout)) return kvs__seterr(c, KVS_ELAYOUT, "invalid layout");
  if (layout->dtype != KVS_DTYPE_F16 && layout->dtype != KVS_DTYPE_BF16)
    return kvs__seterr(c, KVS_ENOTSUP, "stored KV is f16 or bf16");
  if (!chunk->n_tokens || chunk->n_tokens > KVS_WIRE_MAX_TOKENS)
    return kvs__seterr(c, KVS_ERANGE, "a chunk has 1..%u tokens", KVS_WIRE_MAX_TOKENS);
  kvs_put_opts d = {0};
  if (!o) o = &d;
  if (shm_put_wanted(c)) {
    int sr = shm_put_start(c, model, tokens, chunk, layout, kv, o, opp);
    if (sr != KVS__PUT_SOCKET) return sr;
    atomic_fetch_add(&c->ctr.shm_put_fallbacks, 1);
  }
  const void *host = kv;
  void *staged = NULL;
  kvs__encoded e;
  nng_msg *m = NULL;
  size_t ms_max = 0;
  int rv = KVS_ENOTSUP;
  size_t dbound = (o->flags & KVS_PUT_DEVICE) && !host_encode(c)
                      ? kvs__encode_device_bound(o->profile, o->layers_per_group, o->codec, layout,
                                                 chunk->n_tokens)
                      : 0;
  if (dbound) {
    /* a profile with a GPU encoder: only its bytes cross PCIe, straight into
     * the frame after room for the largest meta (trimmed below) */
    kvs_wire_meta mx = {.n_tokens = chunk->n_tokens, .n_segments = KVS_WIRE_MAX_SEGMENTS};
    ms_max = kvs_wire_meta_size(&mx);
    rv = ms_max ? kvs__frame_new(ms_max + dbound, &m) : KVS_ETOOBIG;
    if (!rv)
      rv = kvs__encode_device(o->profile, o->layers_per_group, o->codec, layout, chunk->n_tokens,
                              kv, kvs__frame_payload(m) + ms_max, dbound, &e);
    if (rv && m) nng_msg_free(m), m = NULL;
    if (rv && rv != KVS_ENOTSUP)
      return kvs__seterr(c, rv, "encoding on the GPU with profile %u failed", o->profile);
  }
  if (rv == KVS_ENOTSUP && (o->flags & KVS_PUT_DEVICE)) {
    if (kvs_gpu_device_count() < 1)
      return kvs__seterr(c, KVS_ENODEV, "KVS_PUT_DEVICE without a CUDA device");
    size_t bytes = kvs_layout_token_bytes(layout) * chunk->n_tokens;
    staged = malloc(bytes);
    if (!staged) return KVS_ENOMEM;
    int cr = kvs_gpu_copy_d2h(staged, kv, bytes, NULL);
    if (cr == KVS_OK) cr = kvs_gpu_sync(NULL);
    if (cr) {
      free(staged);
      return kvs__seterr(c, cr, "copying the KV from the device failed");
    }
    host = staged;
  }
  if (rv == KVS_ENOTSUP)
    rv = kvs__encode(o->profile, o->layers_per_group, o->codec, layout, chunk->n_tokens, host, &e);
  free(staged);
  if (rv)
    return kvs__seterr(c, rv, "encoding with profile %u failed%s", o->profile,
                       rv == KVS_ENOTSUP ? " (codec not built in)" : "");
  kvs_wire_meta meta = {.key = chunk->key,
                        .model = *model,
                        .key_kind = (uint8_t)chunk->kind,
                        .n_tokens = chunk->n_tokens,
                        .layout = *layout,
                        .codec_profile = o->profile,
                        .n_segments = e.n_segs,
                        .ttl_s = o->ttl_s,
                        .value_bytes = e.len,
                        .checksum = kvs_checksum64(e.bytes, e.len),
                        .tokens_le = (const uint8_t *)(tokens + chunk->start),
                        .seg_end_le = (const uint8_t *)e.seg_end};
  size_t ms = kvs_wire_meta_size(&meta), w;
  if (!m) {
    rv = ms ? kvs__frame_new(ms + e.len, &m) : KVS_ETOOBIG;
    if (!rv) memcpy(kvs__frame_payload(m) + ms, e.bytes, e.len);
  } else if (!ms || ms > ms_max) {
    rv = KVS_ETOOBIG;
  } else { /* the value lies at ms_max: the frame now starts ms_max - ms later */
    nng_msg_chop(m, dbound - e.len);
    nng_msg_trim(m, ms_max - ms);
    memset(nng_msg_body(m), 0, KVS_WIRE_HDR_SIZE);
  }
  if (!rv) rv = kvs_wire_meta_encode(&meta, kvs__frame_payload(m), ms, &w);
  kvs__encoded_free(&e);
  if (!rv) rv = kvs__frame_seal(c, m, KVS_OP_PUT);
  if (!rv && (o->flags & KVS_PUT_SYNC)) {
    kvs_wire_hdr_add_flags(nng_msg_body(m), KVS_WIRE_F_SYNC);
  }
  if (!rv && (o->flags & KVS_PUT_NX)) {
    kvs_wire_hdr_add_flags(nng_msg_body(m), KVS_WIRE_F_NX);
  }
  if (rv) {
    if (m) nng_msg_free(m);
    return kvs__seterr(c, rv, "cannot build the PUT request");
  }
  kvs_op *op = kvs__op_new(c, KVS__OP_PUT);
  kvs__call *call =
      op ? kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_PUT) && !(o->flags & KVS_PUT_NX), 0,
                         kvs__check_reply, put_done, op)
         : NULL;
  if (!call) {
    if (!op) nng_msg_free(m);
    free(op);
    return KVS_ENOMEM;
  }
  op->pending = 1;
  *opp = op;
  atomic_fetch_add(&c->ctr.sock_puts, 1);
  kvs__call_start(call);
  return KVS_OK;
}
