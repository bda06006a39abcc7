/* get.c - the layer-streamed get of a node client: the first answer (meta +
 * segment 0) by GET, or by LEASE when the value can be read in place from
 * the server's shared memory; then the groups, a window of them in flight,
 * each decoded (on the host, or on the GPU for a device get) as it arrives;
 * the lease given back after the last. Also the pool of device decode
 * buffers. Above stream.c (the GETs' transport) and shm.c (mappings,
 * workers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
#include "kvs_wire.h"
#include "op_int.h"

/* A lease is used only while this much of it is left when a group starts;
 * a group whose read outlived the lease is re-fetched through the socket. */
#define KVS__LEASE_MARGIN_MS 50u

typedef struct kvs__sub {
  kvs_op *op;
  uint32_t g, seg_first, seg_count, idx;
} kvs__sub;

static int get_request(kvs_op *op, uint32_t flags, uint32_t seg_first, uint32_t seg_count,
                       nng_msg **m) {
  kvs_wire_get_req r = {.key = op->key,
                        .model = op->model,
                        .flags = flags,
                        .seg_first = seg_first,
                        .seg_count = seg_count,
                        .n_tokens = op->T,
                        .tokens_le = (const uint8_t *)op->tokens};
  size_t sz = kvs_wire_get_req_size(&r), w;
  if (!sz || kvs__frame_new(sz, m)) return KVS_ENOMEM;
  int rv = kvs_wire_get_req_encode(&r, kvs__frame_payload(*m), sz, &w);
  if (!rv) rv = kvs__frame_seal(op->c, *m, KVS_OP_GET);
  if (rv) nng_msg_free(*m);
  return rv;
}

static void group_done(void *arg, int rv, const char *errmsg, const uint8_t *p, size_t pn);
static void group_finish(kvs__sub *sub, int rv, const char *msg);
static void shm_group_job(void *arg);

/* Sends group sub->g's GET through the socket (group_done finishes it). */
static void start_group_get(kvs__sub *sub) {
  kvs_op *op = sub->op;
  nng_msg *m = NULL;
  int rv = get_request(op, 0, sub->seg_first, sub->seg_count, &m);
  uint64_t now = kvs_now_ns();
  if (!rv && now + 1000000 >= op->deadline_ns) {
    nng_msg_free(m);
    rv = KVS_ETIMEDOUT;
  }
  if (rv) {
    group_finish(sub, rv,
                 rv == KVS_ETIMEDOUT ? "the get's deadline passed between groups"
                                     : "cannot build a GET request");
    return;
  }
  /* by the byte stream when the client has one, else REQ/REP */
  kvs__get_call(op->c, m, (uint32_t)((op->deadline_ns - now) / 1000000), kvs__check_reply,
                group_done, sub);
}

static void shm_value_job(void *arg);

/* A device get of a value leased whole in shared memory, with no caller
 * waiting on single groups (no on_group), decodes every group at once: one
 * DMA and one launch sequence instead of one per group, whose small grids
 * left the GPU idle between them (bench/RESULTS.md, client).
 * KVS_CLIENT_NO_WHOLE_DECODE turns it off. Under op->mu. */
static int whole_value_locked(const kvs_op *op) {
  int m = !(op->c->o.flags & KVS_CLIENT_NO_WHOLE_DECODE);
  return m && op->gpu_decode && !op->on_group && !op->whole_failed && op->lease_state == 1 &&
         !atomic_load(&op->shm_dead) && op->next_g == 0 && op->inflight == 0 && op->G > 1 &&
         op->n_segs == op->G + 1;
}

/* Starts group requests until the window is full: a job reading shared
 * memory while the lease holds, a GET through the socket otherwise. The
 * caller holds one pending reference (its own call, not yet counted off),
 * so the op cannot finish (and be freed by a waiter) while this runs; the
 * caller drops it. */
static void issue_more(kvs_op *op) {
  pthread_mutex_lock(&op->mu);
  if (!op->failed && whole_value_locked(op)) {
    op->next_g = op->G;
    op->inflight++;
    op->pending++;
    pthread_mutex_unlock(&op->mu);
    if (kvs__work_submit(op->c, shm_value_job, op) == KVS_OK) return;
    pthread_mutex_lock(&op->mu); /* no worker: group by group after all */
    op->whole_failed = 1;
    op->next_g = 0;
    op->inflight--;
    op->pending--;
  }
  pthread_mutex_unlock(&op->mu);
  for (;;) {
    pthread_mutex_lock(&op->mu);
    if (op->failed || op->next_g >= op->G || op->inflight >= (int)op->window) {
      pthread_mutex_unlock(&op->mu);
      return;
    }
    uint32_t g = op->next_g++, idx = 0;
    while (op->ws_busy[idx])
      idx++;
    op->ws_busy[idx] = 1;
    op->inflight++;
    op->pending++;
    int shm = op->lease_state == 1 && !atomic_load(&op->shm_dead);
    pthread_mutex_unlock(&op->mu);
    kvs__sub *sub = malloc(sizeof *sub);
    if (!sub) {
      pthread_mutex_lock(&op->mu);
      kvs__op_fail_locked(op, KVS_ENOMEM, "no memory for a group request");
      op->pending--;
      op->inflight--;
      op->ws_busy[idx] = 0;
      pthread_mutex_unlock(&op->mu);
      return;
    }
    *sub = (kvs__sub){op, g, 0, 0, idx};
    kvs__decoder_group_segs(op->dec, g, op->hb, op->he, &sub->seg_first, &sub->seg_count);
    if (shm && kvs__work_submit(op->c, shm_group_job, sub) == KVS_OK) continue;
    start_group_get(sub);
  }
}

/* Device decode buffers (segment staging, workspace, stream): one set per
 * group decode in progress, taken from a per-client pool and given back, so
 * the pool holds about as many as threads decode at once. */
struct kvs__devnode {
  kvs__devslot s;
  struct kvs__devnode *next;
};
#define KVS__DEVPOOL_MAX 64

static kvs_err devslot_take(kvs_client *c, kvs__devslot *s, const kvs__decoder *dec,
                            uint64_t max_seg) {
  int staged = (c->o.flags & KVS_CLIENT_DMA_STAGED) != 0;
  pthread_mutex_lock(&c->shm.mu);
  for (struct kvs__devnode **pp = &c->shm.devpool; *pp; pp = &(*pp)->next) {
    struct kvs__devnode *n = *pp;
    if (kvs__devslot_fits(&n->s, dec, (size_t)max_seg, staged)) {
      *pp = n->next;
      c->shm.n_devpool--;
      pthread_mutex_unlock(&c->shm.mu);
      *s = n->s;
      free(n);
      return KVS_OK;
    }
  }
  /* none fits: a full pool gives up one set that is too small */
  struct kvs__devnode *drop = NULL;
  if (c->shm.n_devpool >= KVS__DEVPOOL_MAX && c->shm.devpool) {
    drop = c->shm.devpool;
    c->shm.devpool = drop->next;
    c->shm.n_devpool--;
  }
  pthread_mutex_unlock(&c->shm.mu);
  if (drop) {
    kvs__devslot_free(&drop->s);
    free(drop);
  }
  return kvs__devslot_init(s, dec, (size_t)max_seg, staged);
}

static void devslot_give(kvs_client *c, kvs__devslot *s) {
  if (!s->d_seg) return;
  struct kvs__devnode *n = NULL;
  pthread_mutex_lock(&c->shm.mu);
  if (c->shm.n_devpool < KVS__DEVPOOL_MAX && (n = malloc(sizeof *n))) {
    n->s = *s;
    n->next = c->shm.devpool;
    c->shm.devpool = n;
    c->shm.n_devpool++;
  }
  pthread_mutex_unlock(&c->shm.mu);
  if (!n) kvs__devslot_free(s);
  memset(s, 0, sizeof *s);
}

void kvs__devpool_free(kvs_client *c) {
  while (c->shm.devpool) {
    struct kvs__devnode *n = c->shm.devpool;
    c->shm.devpool = n->next;
    kvs__devslot_free(&n->s);
    free(n);
  }
  c->shm.n_devpool = 0;
}

/* Decodes group sub->g from its encoded bytes (on the host, or on the GPU for
 * a device get of a lossy profile). */
static int decode_group(kvs_op *op, const kvs__sub *sub, const uint8_t *bytes, size_t len) {
  if (op->gpu_decode) {
    kvs__devslot s;
    int rv = devslot_take(op->c, &s, op->dec, op->max_seg);
    if (rv) return rv;
    rv = kvs__decoder_decode_device(op->dec, sub->g, bytes, len, op->dev_out, op->out_bytes,
                                    op->paged, op->dtype, op->hb, op->he, &s);
    devslot_give(op->c, &s);
    return rv;
  }
  const kvs_paged_kv *paged = op->stage_paged ? NULL : op->paged; /* host blocks, in place */
  return kvs__decoder_decode(op->dec, sub->g, bytes, len, op->out, op->out_bytes, paged, op->dtype,
                             op->hb, op->he, op->ws + sub->idx * op->ws_each, op->ws_each);
}

/* Layers [lb, le) of the staging buffer (canonical layout) into the paged
 * blocks, a run of tokens per block: host copies, or copies to the device on
 * the op's stream. */
static kvs_err scatter_paged(const kvs_op *op, uint32_t lb, uint32_t le) {
  const kvs_paged_kv *pg = op->paged;
  size_t row = (size_t)(op->he - op->hb) * op->layout.head_dim * kvs_dtype_size(op->dtype);
  size_t plane = (size_t)op->T * row;
  kvs_err rv = KVS_OK;
  for (uint32_t l = lb; l < le && rv == KVS_OK; l++)
    for (uint32_t kv = 0; kv < 2 && rv == KVS_OK; kv++) {
      const uint8_t *src = op->out + (2 * (size_t)l + kv) * plane;
      uint8_t *cache = kv ? pg->v_cache[l] : pg->k_cache[l];
      for (uint32_t t = 0, run; t < op->T && rv == KVS_OK; t += run) {
        uint32_t slot = t % pg->block_size;
        run = pg->block_size - slot < op->T - t ? pg->block_size - slot : op->T - t;
        uint8_t *dst =
            cache + ((size_t)op->bt_host[t / pg->block_size] * pg->block_size + slot) * row;
        if (op->device)
          rv = kvs_gpu_copy_h2d(dst, src + (size_t)t * row, (size_t)run * row, op->copy_stream);
        else
          memcpy(dst, src + (size_t)t * row, (size_t)run * row);
      }
    }
  if (rv == KVS_OK && op->device) rv = kvs_gpu_sync(op->copy_stream);
  return rv;
}

static void group_done(void *arg, int rv, const char *errmsg, const uint8_t *p, size_t pn) {
  kvs__sub *sub = arg;
  kvs_op *op = sub->op;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", errmsg);
  if (rv == KVS_OK) {
    kvs_wire_get_resp r;
    rv = kvs_wire_get_resp_decode(p, pn, &r);
    if (rv == KVS_OK && (r.seg_first != sub->seg_first || r.seg_count != sub->seg_count))
      rv = KVS_EPROTO;
    if (rv) {
      snprintf(msg, sizeof msg, "bad GET answer for group %u (%s)", sub->g, kvs_errname(rv));
      rv = KVS_EPROTO;
    } else {
      rv = decode_group(op, sub, r.bytes, r.byte_len);
      if (rv) snprintf(msg, sizeof msg, "decoding group %u failed (%s)", sub->g, kvs_errname(rv));
    }
  }
  group_finish(sub, rv, msg);
}

static void release_done(kvs__call *call, void *arg) {
  kvs_client *c = arg;
  atomic_fetch_add(call->rv == KVS_OK ? &c->ctr.releases : &c->ctr.release_lost, 1);
  kvs__call_free(call);
  atomic_fetch_sub(&c->pool.bg_calls, 1); /* the last touch of c */
}

/* Gives a lease back without waiting for the answer. */
static void send_release(kvs_client *c, uint64_t lease_id) {
  nng_msg *m = NULL;
  if (kvs__frame_new(8, &m) == KVS_OK) {
    uint8_t *p = kvs__frame_payload(m);
    for (int i = 0; i < 8; i++)
      p[i] = (uint8_t)(lease_id >> (8 * i));
    if (kvs__frame_seal(c, m, KVS_OP_RELEASE)) {
      nng_msg_free(m);
      m = NULL;
    }
  }
  atomic_fetch_add(&c->pool.bg_calls, 1);
  kvs__call *call = m ? kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_RELEASE), 0,
                                      kvs__check_reply, release_done, c)
                      : NULL;
  if (!call) { /* the server frees it at expiry */
    atomic_fetch_add(&c->ctr.release_lost, 1);
    atomic_fetch_sub(&c->pool.bg_calls, 1);
    return;
  }
  kvs__call_start(call);
}

/* A group read in place: checked-then-decoded straight from the mapped
 * segment, on a worker thread. The lease must hold from before the read
 * starts until the decode is over; otherwise (or when the bytes do not pass
 * the codec's checksums) the group is fetched through the socket. */
static void shm_group_job(void *arg) {
  kvs__sub *sub = arg;
  kvs_op *op = sub->op;
  kvs_client *c = op->c;
  uint64_t off = sub->seg_first ? op->seg_end[sub->seg_first - 1] : 0;
  uint64_t len = op->seg_end[sub->seg_first + sub->seg_count - 1] - off;
  int rv = KVS_ETIMEDOUT;
  if (!atomic_load(&op->shm_dead) && kvs__wall_ms() + KVS__LEASE_MARGIN_MS < op->lease_expires_ms) {
    rv = decode_group(op, sub, op->shm_val + off, (size_t)len);
    if (rv == KVS_OK && kvs__wall_ms() >= op->lease_expires_ms) rv = KVS_ETIMEDOUT;
  }
  if (rv == KVS_OK) {
    atomic_fetch_add(&c->ctr.shm_bytes, len);
    group_finish(sub, KVS_OK, "");
    return;
  }
  /* never trust those bytes: the same group through the socket */
  KVS_LOGD("client", "group re-fetched by socket", "group=%u why=%s", sub->g, kvs_errname(rv));
  if (rv == KVS_ETIMEDOUT) atomic_store(&op->shm_dead, 1);
  atomic_fetch_add(&c->ctr.shm_regroups, 1);
  start_group_get(sub);
}

/* Every group of a leased value at once (whole_value_locked). On any failure
 * the groups start over one by one (in place while the lease holds, else
 * through the socket), so bad bytes are never kept. */
static void shm_value_job(void *arg) {
  kvs_op *op = arg;
  kvs_client *c = op->c;
  uint64_t len = op->seg_end[op->n_segs - 1];
  int rv = KVS_ETIMEDOUT;
  if (!atomic_load(&op->shm_dead) && kvs__wall_ms() + KVS__LEASE_MARGIN_MS < op->lease_expires_ms) {
    kvs__devslot s;
    rv = devslot_take(c, &s, op->dec, len);
    if (rv == KVS_OK) {
      rv = kvs__decoder_decode_device_all(op->dec, op->shm_val, (size_t)len, op->dev_out,
                                          op->out_bytes, op->paged, op->dtype, op->hb, op->he, &s);
      devslot_give(c, &s);
    }
    if (rv == KVS_OK && kvs__wall_ms() >= op->lease_expires_ms) rv = KVS_ETIMEDOUT;
  }
  int release = 0;
  pthread_mutex_lock(&op->mu);
  op->inflight--;
  if (rv == KVS_OK) {
    memset(op->ready, 1, op->G);
    op->n_ready = op->G;
    release = op->lease_state == 1 && op->inflight == 0;
    if (release) op->lease_state = 2;
  } else {
    op->whole_failed = 1;
    op->next_g = 0;
  }
  pthread_cond_broadcast(&op->cv);
  pthread_mutex_unlock(&op->mu);
  if (rv == KVS_OK) {
    atomic_fetch_add(&c->ctr.shm_bytes, len);
    if (release) send_release(c, op->lease_id);
  } else {
    KVS_LOGD("client", "whole value re-done group by group", "why=%s", kvs_errname(rv));
    if (rv == KVS_ETIMEDOUT) atomic_store(&op->shm_dead, 1);
    issue_more(op);
  }
  pthread_mutex_lock(&op->mu);
  op->pending--;
  kvs__op_update_locked(op);
  pthread_mutex_unlock(&op->mu);
}

/* The end of one group, from whichever path: output copied to the device
 * when it was decoded on the host, on_group, bookkeeping, the lease given
 * back after the last group, more requests. */
static void group_finish(kvs__sub *sub, int rv, const char *why) {
  kvs_op *op = sub->op;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", why);
  uint32_t lb, le;
  kvs__decoder_group_layers(op->dec, sub->g, &lb, &le);
  if (rv == KVS_OK && op->stage_paged) {
    rv = scatter_paged(op, lb, le);
    if (rv) snprintf(msg, sizeof msg, "copy of group %u into the blocks failed", sub->g);
  } else if (rv == KVS_OK && op->dev_out && !op->gpu_decode) {
    uint64_t plane = op->out_bytes / (2 * (uint64_t)op->layout.n_layers);
    /* on the op's own stream: syncing the whole device would also wait for the engine */
    rv = kvs_gpu_copy_h2d((uint8_t *)op->dev_out + 2 * lb * plane, op->out + 2 * lb * plane,
                          2 * (le - lb) * plane, op->copy_stream);
    if (rv == KVS_OK) rv = kvs_gpu_sync(op->copy_stream);
    if (rv) snprintf(msg, sizeof msg, "copy of group %u to the device failed", sub->g);
  }
  if (rv == KVS_OK && !op->sync && op->on_group) op->on_group(op->user, lb, le);
  pthread_mutex_lock(&op->mu);
  op->ws_busy[sub->idx] = 0;
  op->inflight--;
  if (rv == KVS_OK) {
    op->ready[sub->g] = 1;
    op->n_ready++;
  } else {
    kvs__op_fail_locked(op, rv, msg);
  }
  int release = op->lease_state == 1 && op->inflight == 0 && (op->failed || op->n_ready == op->G);
  if (release) op->lease_state = 2;
  pthread_cond_broadcast(&op->cv);
  pthread_mutex_unlock(&op->mu);
  free(sub);
  if (release) send_release(op->c, op->lease_id);
  issue_more(op);
  /* the last touch of op: a waiter may free it as soon as this unlocks */
  pthread_mutex_lock(&op->mu);
  op->pending--;
  kvs__op_update_locked(op);
  pthread_mutex_unlock(&op->mu);
}

/* The stored entry's meta against what the caller expects. */
static int check_meta(const kvs_op *op, const kvs_wire_meta *m, char *msg, size_t cap) {
  if (!kvs_layout_equal(&m->layout, &op->layout)) {
    snprintf(msg, cap, "stored layout (%u layers, %u heads, %u dim, %s) differs from the caller's",
             m->layout.n_layers, m->layout.n_kv_heads, m->layout.head_dim,
             kvs_dtype_name(m->layout.dtype));
    return KVS_ELAYOUT;
  }
  if (m->n_tokens != op->T) {
    snprintf(msg, cap, "stored entry has %u tokens, not %u", m->n_tokens, op->T);
    return KVS_ETOKENS;
  }
  return KVS_OK;
}

/* Buffers of the decode once the decoder is known; then the first groups go
 * out. Consumes dec; on failure the op fails. */
static void op_begin_groups(kvs_op *op, kvs__decoder *dec, uint64_t max_seg) {
  int rv = KVS_OK;
  uint32_t G = kvs__decoder_groups(dec);
  op->ws_each = (kvs__decoder_ws_bytes(dec) + 63) & ~(size_t)63;
  op->ready = calloc(G ? G : 1, 1);
  op->ws_busy = calloc(op->window, 1);
  op->ws = op->ws_each ? malloc(op->ws_each * op->window) : NULL;
  if (op->device && kvs__decoder_gpu_ok(dec)) {
    /* one device buffer set is taken per group decode, from the client's
       pool; make sure the first can be had, else decode on the host */
    kvs__devslot s;
    op->max_seg = max_seg;
    op->gpu_decode = devslot_take(op->c, &s, dec, max_seg) == KVS_OK;
    if (op->gpu_decode) devslot_give(op->c, &s);
  }
  /* decoded on the host into a staging buffer: a device get the GPU does
     not decode, or a paged one the decoder cannot write in place (raw) */
  int stage =
      (op->device && !op->gpu_decode) || (op->paged && !op->device && !kvs__decoder_paged_ok(dec));
  if (stage) {
    op->out = malloc(op->out_bytes);
    op->own_out = 1;
    op->stage_paged = op->paged != NULL;
    if (op->device && kvs_gpu_stream_create(&op->copy_stream))
      op->copy_stream = NULL; /* default stream */
  }
  if (!op->ready || !op->ws_busy || (op->ws_each && !op->ws) || (stage && !op->out)) {
    rv = KVS_ENOMEM;
    kvs__decoder_free(dec);
  } else {
    pthread_mutex_lock(&op->mu);
    op->G = G;
    op->dec = dec;
    pthread_mutex_unlock(&op->mu);
  }
  if (rv) {
    pthread_mutex_lock(&op->mu);
    kvs__op_fail_locked(op, rv, "no memory for the decoder");
    pthread_mutex_unlock(&op->mu);
    return;
  }
  issue_more(op);
}

/* Drops the reference of the first call; the op may finish. */
static void op_first_over(kvs_op *op, int rv, const char *msg) {
  pthread_mutex_lock(&op->mu);
  if (rv) kvs__op_fail_locked(op, rv, msg);
  int release = op->lease_state == 1 && op->failed && op->inflight == 0;
  if (release) op->lease_state = 2;
  pthread_mutex_unlock(&op->mu);
  if (release) send_release(op->c, op->lease_id);
  pthread_mutex_lock(&op->mu);
  op->pending--;
  kvs__op_update_locked(op);
  pthread_mutex_unlock(&op->mu);
}

/* The first answer: the meta (checked against what the caller expects) and
 * segment 0, the prefix that says how to decode the rest. */
static void first_done(void *arg, int rv, const char *errmsg, const uint8_t *p, size_t pn) {
  kvs_op *op = arg;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", errmsg);
  kvs__decoder *dec = NULL;
  uint64_t max_seg = 0;
  if (rv == KVS_OK) {
    kvs_wire_get_resp r;
    rv = kvs_wire_get_resp_decode(p, pn, &r);
    if (rv == KVS_OK && (r.meta_len == 0 || r.seg_first != 0 || r.seg_count != 1)) rv = KVS_EPROTO;
    if (rv) {
      snprintf(msg, sizeof msg, "bad GET answer (%s)", kvs_errname(rv));
      rv = KVS_EPROTO;
    } else if ((rv = check_meta(op, &r.meta, msg, sizeof msg)) == KVS_OK) {
      rv = kvs__decoder_open(r.meta.codec_profile, &op->layout, op->T, r.bytes, r.byte_len, &dec);
      for (uint32_t i = 1; i < r.meta.n_segments; i++) {
        uint64_t off, len;
        kvs_wire_meta_seg_range(&r.meta, i, &off, &len);
        if (len > max_seg) max_seg = len;
      }
      if (rv)
        snprintf(msg, sizeof msg, "cannot decode profile %u stored for this key (%s)",
                 r.meta.codec_profile, kvs_errname(rv));
    }
  }
  if (rv == KVS_OK) op_begin_groups(op, dec, max_seg);
  op_first_over(op, rv, msg);
}

/* The get through the socket: META + segment 0 first. The op's pending
 * reference goes to that call. */
static int start_first_get(kvs_op *op, uint32_t timeout_ms) {
  nng_msg *m = NULL;
  int rv = get_request(op, KVS_WIRE_GET_META, 0, 1, &m);
  if (rv) return rv;
  kvs__get_call(op->c, m, timeout_ms, kvs__check_reply, first_done, op); /* stream or REQ/REP */
  return KVS_OK;
}

/* The answer to a LEASE: map the segment, check what lies there, decode the
 * groups in place. Whatever stands in the way of reading in place sends the
 * get through the socket instead; only the answers a GET would give too
 * (miss, wrong tokens or model, auth) end the get here. */
static void lease_done(kvs__call *call, void *arg) {
  kvs_op *op = arg;
  kvs_client *c = op->c;
  int rv = call->rv, fallback = 0;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", call->errmsg);
  kvs__decoder *dec = NULL;
  uint64_t max_seg = 0;
  if (rv == KVS_ENOTSUP) { /* the server runs with shm off: stop asking */
    atomic_store(&c->shm.on, 0);
    fallback = 1;
  } else if (rv == KVS_ENOENT || rv == KVS_ETOKENS || rv == KVS_EMODEL || rv == KVS_EAUTH ||
             rv == KVS_EQUARANTINE || rv == KVS_ECLOSED) {
    /* the answer of a GET as well */
  } else if (rv != KVS_OK) {
    fallback = 1; /* not in shared memory (EAGAIN), too many leases, a lost answer... */
  } else {
    size_t pn;
    const uint8_t *p = kvs__reply_payload(call->rep, &pn);
    kvs_wire_lease_resp r;
    rv = kvs_wire_lease_resp_decode(p, pn, &r);
    if (rv == KVS_OK && r.meta_len == 0) rv = KVS_EPROTO;
    if (rv) {
      snprintf(msg, sizeof msg, "bad LEASE answer (%s)", kvs_errname(rv));
      rv = KVS_EPROTO;
      fallback = 1;
    } else {
      atomic_fetch_add(&c->ctr.leases, 1);
      op->lease_id = r.lease_id;
      op->lease_expires_ms = r.expires_ms;
      op->lease_state = 1;
      rv = check_meta(op, &r.meta, msg, sizeof msg);
    }
    kvs__shmmap *map = NULL;
    if (rv == KVS_OK) {
      /* direct DMA from the segment needs it registered; staged copies do not */
      rv = kvs__shm_map(c, r.shm_name, op->device && !(c->o.flags & KVS_CLIENT_DMA_STAGED), &map,
                        msg, sizeof msg);
      if (rv == KVS_EPERM || rv == KVS_ENOENT) { /* another user or another host: stop trying */
        KVS_LOGI("client", "shared memory not usable, gets go through the socket", "why=\"%s\"",
                 msg);
        atomic_store(&c->shm.on, 0);
      }
      fallback = rv != KVS_OK;
    }
    uint32_t ns = rv == KVS_OK ? r.meta.n_segments : 0;
    if (rv == KVS_OK) {
      /* where the value lies, and that it is what the meta describes */
      uint64_t last_off = 0, last_len = 0;
      if (ns) kvs_wire_meta_seg_range(&r.meta, ns - 1, &last_off, &last_len);
      if (!ns || r.value_bytes != r.meta.value_bytes || r.checksum != r.meta.checksum ||
          last_off + last_len != r.value_bytes || r.offset > map->size ||
          r.value_bytes > map->size - r.offset) {
        rv = KVS_EPROTO;
        snprintf(msg, sizeof msg, "leased range does not fit segment %s", r.shm_name);
        fallback = 1;
      }
    }
    if (rv == KVS_OK) {
      op->shm_val = map->base + r.offset;
      op->seg_end = malloc(ns * sizeof *op->seg_end);
      op->n_segs = ns;
      for (uint32_t i = 0; op->seg_end && i < ns; i++) {
        uint64_t off, len;
        kvs_wire_meta_seg_range(&r.meta, i, &off, &len);
        op->seg_end[i] = off + len;
        if (i && len > max_seg) max_seg = len;
      }
      if (!op->seg_end) rv = KVS_ENOMEM, fallback = 1;
    }
    if (rv == KVS_OK && r.meta.codec_profile == KVS_PROFILE_RAW) {
      /* raw segments carry no checksum of their own: the whole value is
       * checked against the one the server stored, before any decode.
       * (Codec entries are checked piece by piece by the decoder: header
       * and directory at open, each segment right before it is decoded.) */
      if (kvs_checksum64(op->shm_val, r.value_bytes) != r.checksum) {
        rv = KVS_ECHECKSUM;
        snprintf(msg, sizeof msg, "leased bytes fail their checksum");
        fallback = 1;
      }
    }
    if (rv == KVS_OK) {
      rv = kvs__decoder_open(r.meta.codec_profile, &op->layout, op->T, op->shm_val,
                             (size_t)op->seg_end[0], &dec);
      if (rv) {
        snprintf(msg, sizeof msg, "cannot decode profile %u stored for this key (%s)",
                 r.meta.codec_profile, kvs_errname(rv));
        fallback = 1; /* a bad prefix in place: the socket's copy decides */
      }
    }
  }
  kvs__call_free(call);
  if (fallback) {
    KVS_LOGD("client", "get falls back to the socket", "why=\"%s\"", msg);
    atomic_fetch_add(&c->ctr.shm_fallbacks, 1);
    if (op->lease_state == 1) {
      op->lease_state = 2;
      send_release(c, op->lease_id);
    }
    uint64_t now = kvs_now_ns();
    rv = now + 1000000 < op->deadline_ns
             ? start_first_get(op, (uint32_t)((op->deadline_ns - now) / 1000000))
             : KVS_ETIMEDOUT;
    if (rv == KVS_OK) return; /* the op's reference went to the GET */
    snprintf(msg, sizeof msg, "cannot fall back to a GET (%s)", kvs_errname(rv));
  } else if (rv == KVS_OK) {
    atomic_fetch_add(&c->ctr.shm_gets, 1);
    op_begin_groups(op, dec, max_seg);
  }
  op_first_over(op, rv, msg);
}

/* The LEASE that starts a same-host get: a GET request (META) behind the id
 * of a lease to release (none). Not retried after it left: a refusal goes
 * straight to the socket path. */
static int start_lease(kvs_op *op) {
  kvs_wire_get_req r = {.key = op->key,
                        .model = op->model,
                        .flags = KVS_WIRE_GET_META,
                        .n_tokens = op->T,
                        .tokens_le = (const uint8_t *)op->tokens};
  size_t sz = kvs_wire_get_req_size(&r), w;
  nng_msg *m;
  if (!sz || kvs__frame_new(8 + sz, &m)) return KVS_ENOMEM;
  memset(kvs__frame_payload(m), 0, 8);
  int rv = kvs_wire_get_req_encode(&r, kvs__frame_payload(m) + 8, sz, &w);
  if (!rv) rv = kvs__frame_seal(op->c, m, KVS_OP_LEASE);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  uint64_t now = kvs_now_ns();
  uint32_t ms = op->deadline_ns > now ? (uint32_t)((op->deadline_ns - now) / 1000000) : 0;
  kvs__call *call = kvs__call_new(op->c, m, kvs_wire_op_idempotent(KVS_OP_LEASE), ms ? ms : 1,
                                  kvs__check_reply, lease_done, op);
  if (!call) return KVS_ENOMEM;
  kvs__call_start(call);
  return KVS_OK;
}

uint64_t kvs_get_bound(const kvs_layout *l, uint32_t n_tokens, const kvs_get_opts *o) {
  if (!l || kvs_layout_validate(l)) return 0;
  uint32_t dt = o && o->dtype ? o->dtype : l->dtype;
  uint32_t hb = o ? o->head_begin : 0, he = o && o->head_end ? o->head_end : l->n_kv_heads;
  if (hb >= he || he > l->n_kv_heads || !kvs_dtype_size(dt)) return 0;
  return 2ull * l->n_layers * n_tokens * (he - hb) * l->head_dim * kvs_dtype_size(dt);
}

/* A paged destination against the layout: its block table read (copied to
 * the host first when it is device memory) and every entry the chunk uses
 * checked against num_blocks. *bt gets the host copy (caller frees). */
static kvs_err paged_check(kvs_client *c, const kvs_paged_kv *pg, const kvs_layout *layout,
                           uint32_t T, uint32_t flags, int32_t **bt) {
  *bt = NULL;
  if (!pg->k_cache || !pg->v_cache || !pg->block_table || !pg->block_size || !pg->num_blocks)
    return kvs__seterr(c, KVS_EINVAL, "paged output needs caches, a block table and sizes");
  if (pg->n_layers != layout->n_layers)
    return kvs__seterr(c, KVS_ELAYOUT, "paged output has %u layers, the layout %u", pg->n_layers,
                       layout->n_layers);
  uint32_t nb = (T + pg->block_size - 1) / pg->block_size;
  int32_t *h = malloc((size_t)nb * sizeof *h);
  if (!h) return KVS_ENOMEM;
  kvs_err rv = KVS_OK;
  if (flags & KVS_GET_DEVICE) {
    rv = kvs_gpu_copy_d2h(h, pg->block_table, (size_t)nb * sizeof *h, NULL);
    if (rv == KVS_OK) rv = kvs_gpu_sync(NULL);
    if (rv) {
      free(h);
      return kvs__seterr(c, rv, "cannot read the device block table");
    }
  } else {
    memcpy(h, pg->block_table, (size_t)nb * sizeof *h);
  }
  for (uint32_t i = 0; i < nb; i++)
    if (h[i] < 0 || (uint32_t)h[i] >= pg->num_blocks) {
      int e = h[i];
      free(h);
      return kvs__seterr(c, KVS_EINVAL, "block table entry %u (%d) outside 0..%u", i, e,
                         pg->num_blocks - 1);
    }
  *bt = h;
  return rv;
}

kvs_err kvs__node_get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            const kvs_chunk *chunk, const kvs_layout *layout, void *out,
                            uint64_t out_cap, const kvs_get_opts *o, int sync, kvs_op **opp) {
  if (!opp) return KVS_EINVAL;
  *opp = NULL;
  if (!c || !model || !tokens || !chunk || !layout) return KVS_EINVAL;
  if (kvs_layout_validate(layout)) return kvs__seterr(c, KVS_ELAYOUT, "invalid layout");
  if (!chunk->n_tokens || chunk->n_tokens > KVS_WIRE_MAX_TOKENS)
    return kvs__seterr(c, KVS_ERANGE, "a chunk has 1..%u tokens", KVS_WIRE_MAX_TOKENS);
  kvs_get_opts d = {0};
  if (!o) o = &d;
  uint64_t need = kvs_get_bound(layout, chunk->n_tokens, o);
  if (!need) return kvs__seterr(c, KVS_EINVAL, "bad head range or dtype");
  if (o->dtype && o->dtype != layout->dtype && o->dtype != KVS_DTYPE_F32)
    return kvs__seterr(c, KVS_ENOTSUP, "output dtype must be the stored one or f32");
  if (o->paged ? out != NULL || out_cap : !out) return KVS_EINVAL; /* one destination */
  if (!o->paged && out_cap < need)
    return kvs__seterr(c, KVS_ERANGE, "output holds %llu bytes, the chunk needs %llu",
                       (unsigned long long)out_cap, (unsigned long long)need);
  if ((o->flags & KVS_GET_DEVICE) && kvs_gpu_device_count() < 1)
    return kvs__seterr(c, KVS_ENODEV, "KVS_GET_DEVICE without a CUDA device");
  int32_t *bt = NULL;
  if (o->paged) KVS_TRY(paged_check(c, o->paged, layout, chunk->n_tokens, o->flags, &bt));
  /* the get's deadline starts now; the stream question takes a part of it */
  uint64_t deadline = kvs_now_ns() + (uint64_t)c->o.request_timeout_ms * 1000000ull;
  kvs__stream_default(c, c->o.request_timeout_ms / 4 < 1000 ? c->o.request_timeout_ms / 4 : 1000);
  kvs_op *op = kvs__op_new(c, KVS__OP_GET);
  if (!op) {
    free(bt);
    return KVS_ENOMEM;
  }
  op->bt_host = bt;
  if (o->paged) {
    op->paged_copy = *o->paged;
    op->paged = &op->paged_copy;
  }
  op->model = *model;
  op->key = chunk->key;
  op->T = chunk->n_tokens;
  op->layout = *layout;
  op->out_bytes = need;
  op->dtype = o->dtype ? o->dtype : layout->dtype;
  op->hb = o->head_begin;
  op->he = o->head_end ? o->head_end : layout->n_kv_heads;
  op->window = o->window ? o->window : 4;
  op->deadline_ns = deadline;
  if (op->window > 64) op->window = 64;
  op->on_group = o->on_group;
  op->user = o->user;
  op->sync = sync;
  op->tokens = malloc(op->T * sizeof *op->tokens);
  if (op->tokens) memcpy(op->tokens, tokens + chunk->start, op->T * sizeof *op->tokens);
  op->device = (o->flags & KVS_GET_DEVICE) != 0;
  if (op->device)
    op->dev_out = out; /* NULL when paged; a host staging buffer, if needed, comes later */
  else
    op->out = out; /* NULL when paged */
  atomic_fetch_add(&c->ctr.gets, 1);
  op->pending = 1;
  int rv = op->tokens ? KVS_OK : KVS_ENOMEM;
  if (!rv) {
    uint64_t now = kvs_now_ns();
    uint32_t ms = deadline > now ? (uint32_t)((deadline - now) / 1000000) : 0;
    rv = atomic_load(&c->shm.on) ? start_lease(op) : start_first_get(op, ms ? ms : 1);
  }
  if (rv) {
    op->finished = 1;
    kvs_op_free(op);
    return kvs__seterr(c, rv, "cannot build the GET request");
  }
  *opp = op;
  return KVS_OK;
}

/* Waits until op->dec is known and group g is in (or the op failed). */
static int wait_group_locked(kvs_op *op, uint32_t g) {
  while (!op->finished && !op->failed && (!op->dec || !op->ready[g]))
    pthread_cond_wait(&op->cv, &op->mu);
  return op->failed ? op->rv : KVS_OK;
}

kvs_err kvs_op_wait_layers(kvs_op *op, uint32_t layer_end) {
  if (!op) return KVS_EINVAL;
  if (op->kind != KVS__OP_GET || layer_end == 0) return kvs_op_wait(op);
  pthread_mutex_lock(&op->mu);
  while (!op->finished && !op->failed && !op->dec)
    pthread_cond_wait(&op->cv, &op->mu);
  int rv = op->failed ? op->rv : KVS_OK;
  for (uint32_t g = 0; rv == KVS_OK && op->dec && g < op->G; g++) {
    uint32_t lb, le;
    kvs__decoder_group_layers(op->dec, g, &lb, &le);
    if (lb >= layer_end) break;
    rv = wait_group_locked(op, g);
  }
  pthread_mutex_unlock(&op->mu);
  if (rv) kvs__seterr(op->c, rv, "%s", op->errmsg);
  return rv;
}

kvs_err kvs__node_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                      const kvs_get_opts *o) {
  kvs_op *op;
  kvs_get_opts d = {0};
  if (!o) o = &d;
  KVS_TRY(kvs__node_get_start(c, model, tokens, chunk, layout, out, out_cap, o, 1, &op));
  pthread_mutex_lock(&op->mu);
  while (!op->finished && !op->failed && !op->dec)
    pthread_cond_wait(&op->cv, &op->mu);
  int rv = op->failed ? op->rv : KVS_OK;
  for (uint32_t g = 0; rv == KVS_OK && op->dec && g < op->G; g++) {
    rv = wait_group_locked(op, g);
    if (rv == KVS_OK && o->on_group) {
      uint32_t lb, le;
      kvs__decoder_group_layers(op->dec, g, &lb, &le);
      pthread_mutex_unlock(&op->mu);
      o->on_group(o->user, lb, le);
      pthread_mutex_lock(&op->mu);
    }
  }
  pthread_mutex_unlock(&op->mu);
  rv = kvs_op_wait(op);
  kvs_op_free(op);
  return rv;
}
