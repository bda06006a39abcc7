/* put.c - the put of a node client: the KV encoded (on the GPU when the
 * profile has a GPU encoder and the KV lies in device memory, straight into
 * the request frame; else on the host), one PUT frame of meta + encoded
 * bytes, sent as one call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
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
  kvs__call_start(call);
  return KVS_OK;
}
