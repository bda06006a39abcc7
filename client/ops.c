/* ops.c - the calls of libkvstash on the kvstash wire protocol (kvs_wire.h,
 * docs/protocol.md): frames, simple key ops, stats, batched lookup, put, and
 * the layer-streamed get with its asynchronous and batch forms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "codec_seam.h"
#include "kvs_gpu.h"
#include "kvs_wire.h"

_Static_assert(KVS_CHUNK_PREFIX == KVS_KEY_KIND_PREFIX, "key kinds match the wire");
_Static_assert(KVS_CHUNK_CONTENT == KVS_KEY_KIND_CONTENT, "key kinds match the wire");

/* ------------------------------------------------------------- frames */
/* A request frame: 128 header bytes (sealed by frame_seal) + payload bytes
 * (written in place by the payload encoders). */
int kvs__frame_new(size_t payload, nng_msg **m) {
  if (nng_msg_alloc(m, KVS_WIRE_HDR_SIZE + payload)) return KVS_ENOMEM;
  memset(nng_msg_body(*m), 0, KVS_WIRE_HDR_SIZE);
  return KVS_OK;
}

uint8_t *kvs__frame_payload(nng_msg *m) { return (uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE; }

static int frame_seal(kvs_client *c, nng_msg *m, uint16_t op) {
  kvs_wire_hdr h;
  int rv = kvs_wire_hdr_init(&h, op, atomic_fetch_add(&c->next_id, 1), c->tenant, c->token,
                             strlen(c->token));
  if (rv) return rv;
  h.payload_len = (uint32_t)(nng_msg_len(m) - KVS_WIRE_HDR_SIZE);
  return kvs_wire_hdr_encode(&h, nng_msg_body(m));
}

/* Accepts a response to call->req: right op, RESPONSE flag, status 0. A
 * server error comes back as its kvs_err with the server's message. */
static int check_reply(kvs__call *call, nng_msg *rep) {
  const uint8_t *b = nng_msg_body(rep);
  size_t n = nng_msg_len(rep);
  kvs_wire_hdr h;
  int rv = kvs_wire_hdr_decode(b, n, &h);
  if (rv) {
    snprintf(call->errmsg, sizeof call->errmsg, "malformed reply from %s (%s)", call->c->url,
             kvs_errname(rv));
    return KVS_EPROTO;
  }
  const uint8_t *q = nng_msg_body(call->req);
  uint16_t op = kvs_wire_hdr_op(q);
  if (!(h.flags & KVS_WIRE_F_RESPONSE) || h.op != op) {
    snprintf(call->errmsg, sizeof call->errmsg, "reply from %s is not an answer to %s",
             call->c->url, kvs_wire_op_name(op));
    return KVS_EPROTO;
  }
  if (h.status < 0) {
    size_t ml = h.payload_len < KVS_WIRE_MAX_ERRMSG ? h.payload_len : KVS_WIRE_MAX_ERRMSG;
    snprintf(call->errmsg, sizeof call->errmsg, "kvstashd %s: %s: %.*s", kvs_wire_op_name(op),
             kvs_errname(h.status), (int)ml, (const char *)b + KVS_WIRE_HDR_SIZE);
    return h.status;
  }
  return KVS_OK;
}

static const uint8_t *reply_payload(nng_msg *rep, size_t *n) {
  *n = nng_msg_len(rep) - KVS_WIRE_HDR_SIZE;
  return (const uint8_t *)nng_msg_body(rep) + KVS_WIRE_HDR_SIZE;
}

/* Seals req and does one round trip; *rep (may be NULL) gets the reply. */
int kvs__frame_roundtrip(kvs_client *c, nng_msg *req, uint16_t op, int idempotent, nng_msg **rep) {
  if (c->cluster) {
    nng_msg_free(req);
    return KVS__NOT_ON_CLUSTER(c);
  }
  int rv = frame_seal(c, req, op);
  if (rv) {
    nng_msg_free(req);
    return kvs__seterr(c, rv, "bad request header (tenant \"%s\"?)", c->tenant);
  }
  nng_msg *r = NULL;
  rv = kvs__roundtrip(c, req, idempotent, check_reply, &r);
  if (rv == KVS_OK && rep)
    *rep = r;
  else if (r)
    nng_msg_free(r);
  return rv;
}

int kvs__ping_quiet(kvs_client *c, uint32_t timeout_ms, nng_msg **rep) {
  *rep = NULL;
  nng_msg *m;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  int rv = frame_seal(c, m, KVS_OP_PING);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  kvs__call *call = kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_PING),
                                  timeout_ms ? timeout_ms : 1, check_reply, NULL, NULL);
  if (!call) return KVS_ENOMEM;
  kvs__call_start(call);
  rv = kvs__call_wait(call);
  if (rv == KVS_OK) {
    *rep = call->rep;
    call->rep = NULL;
  }
  kvs__call_free(call);
  return rv;
}

/* --------------------------------------------------------- simple ops */
kvs_err kvs_ping(kvs_client *c) {
  if (!c) return KVS_EINVAL;
  if (c->cluster) return kvs__cluster_ping(c);
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

kvs_err kvs_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                   kvs_entry_info *info) {
  if (!model || !info) return KVS_EINVAL;
  if (c && c->cluster) return kvs__cluster_exists(c, model, key, info);
  nng_msg *rep = NULL;
  KVS_TRY(key_op(c, KVS_OP_EXISTS, model, key, 0, kvs_wire_op_idempotent(KVS_OP_EXISTS), &rep));
  size_t n;
  const uint8_t *p = reply_payload(rep, &n);
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

kvs_err kvs_delete(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 0, key, 0);
  return key_op(c, KVS_OP_DELETE, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_DELETE), NULL);
}
kvs_err kvs_pin(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 1, key, 0);
  return key_op(c, KVS_OP_PIN, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_PIN), NULL);
}
kvs_err kvs_unpin(kvs_client *c, const kvs_key *key) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 2, key, 0);
  return key_op(c, KVS_OP_UNPIN, NULL, key, 0, kvs_wire_op_idempotent(KVS_OP_UNPIN), NULL);
}
kvs_err kvs_ttl(kvs_client *c, const kvs_key *key, uint32_t ttl_s) {
  if (c && c->cluster) return kvs__cluster_keyop(c, 3, key, ttl_s);
  return key_op(c, KVS_OP_TTL, NULL, key, ttl_s, kvs_wire_op_idempotent(KVS_OP_TTL), NULL);
}

const char *kvs_stat_name(uint32_t i) { return kvs_wire_stat_name(i); }

kvs_err kvs_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n) {
  if (!c || !n || (cap && !v)) return KVS_EINVAL;
  if (c->cluster) return kvs__cluster_stats(c, v, cap, n);
  nng_msg *m, *rep = NULL;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  KVS_TRY(kvs__frame_roundtrip(c, m, KVS_OP_STATS, kvs_wire_op_idempotent(KVS_OP_STATS), &rep));
  size_t pn;
  const uint8_t *p = reply_payload(rep, &pn);
  kvs_wire_stats_resp r;
  int rv = kvs_wire_stats_resp_decode(p, pn, &r);
  nng_msg_free(rep);
  if (rv) return kvs__seterr(c, KVS_EPROTO, "bad STATS answer (%s)", kvs_errname(rv));
  *n = r.n < cap ? r.n : cap;
  if (*n) memcpy(v, r.v, *n * sizeof *v);
  return KVS_OK;
}

/* ------------------------------------------------------------- lookup */
kvs_err kvs_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                   const kvs_chunk *chunks, size_t n_chunks, uint32_t mode, uint8_t *status,
                   size_t *n_prefix) {
  if (!c || !model || !tokens || (n_chunks && (!chunks || !status))) return KVS_EINVAL;
  if (mode != KVS_LOOKUP_EACH && mode != KVS_LOOKUP_PREFIX) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_lookup(c, model, tokens, n_tokens, chunks, n_chunks, mode, status,
                               n_prefix);
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
    const uint8_t *p = reply_payload(rep, &pn);
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

/* ---------------------------------------------------------------- ops */
enum { KVS__OP_GET = 1, KVS__OP_PUT = 2 };

struct kvs_op {
  int kind;
  kvs_client *c;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;  /* references held by calls and callbacks still running */
  int inflight; /* group requests issued and not yet answered (<= window) */
  int failed;
  int finished;
  int rv;
  char errmsg[KVS__ERRMSG_LEN];
  /* get */
  kvs_model_id model;
  kvs_key key;
  int32_t *tokens;
  uint32_t T;
  kvs_layout layout;
  uint8_t *out;         /* host output (or the staging buffer of a device get) */
  void *dev_out;        /* KVS_GET_DEVICE: the caller's device buffer */
  int gpu_decode;       /* device get decoded by the GPU codec kernels */
  uint64_t max_seg;     /* largest group segment: the device staging it needs */
  void *copy_stream;    /* device get decoded on the host: its copies */
  uint64_t deadline_ns; /* of the whole get: every group request shares it */
  uint64_t out_bytes;
  uint32_t dtype, hb, he, window;
  kvs_group_fn on_group;
  void *user;
  int sync;          /* on_group is called by kvs_get on its thread */
  kvs__decoder *dec; /* set once the first answer is in */
  uint32_t G, next_g, n_ready;
  uint8_t *ready; /* [G] */
  uint8_t *ws;    /* window x ws_each */
  size_t ws_each;
  uint8_t *ws_busy; /* [window] */
  /* same-host fast path: the value read in place under a lease */
  int lease_state;     /* 0 none, 1 held, 2 released (or being released) */
  atomic_int shm_dead; /* the lease ran out: the remaining groups go by socket */
  int whole_failed;    /* the all-groups decode failed: group by group from now on */
  uint64_t lease_id, lease_expires_ms;
  const uint8_t *shm_val; /* the value's bytes in the mapped segment */
  uint64_t *seg_end;      /* [n_segs] end offsets of the wire segments in the value */
  uint32_t n_segs;
};

/* A lease is used only while this much of it is left when a group starts;
 * a group whose read outlived the lease is re-fetched through the socket. */
#define KVS__LEASE_MARGIN_MS 50u

typedef struct kvs__sub {
  kvs_op *op;
  uint32_t g, seg_first, seg_count, idx;
} kvs__sub;

static kvs_op *op_new(kvs_client *c, int kind) {
  kvs_op *op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->c = c;
  pthread_mutex_init(&op->mu, NULL);
  pthread_cond_init(&op->cv, NULL);
  return op;
}

/* Under op->mu: the op is finished when no call is outstanding and it either
 * failed or has every group. */
static void op_update_locked(kvs_op *op) {
  if (op->pending == 0 &&
      (op->failed || op->kind == KVS__OP_PUT || (op->dec && op->n_ready == op->G)))
    op->finished = 1;
  pthread_cond_broadcast(&op->cv);
}

static void op_fail_locked(kvs_op *op, int rv, const char *msg) {
  if (!op->failed) {
    op->failed = 1;
    op->rv = rv;
    snprintf(op->errmsg, sizeof op->errmsg, "%s", msg);
  }
}

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
  if (!rv) rv = frame_seal(op->c, *m, KVS_OP_GET);
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
  kvs__get_call(op->c, m, (uint32_t)((op->deadline_ns - now) / 1000000), check_reply, group_done,
                sub);
}

static void shm_value_job(void *arg);

/* A device get of a value leased whole in shared memory, with no caller
 * waiting on single groups (no on_group), decodes every group at once: one
 * DMA and one launch sequence instead of one per group, whose small grids
 * left the GPU idle between them (bench/RESULTS.md, client).
 * $KVS_CLIENT_BATCH=0 turns it off. Under op->mu. */
static int whole_value_locked(const kvs_op *op) {
  static atomic_int mode = -1;
  int m = atomic_load(&mode);
  if (m < 0) {
    const char *e = getenv("KVS_CLIENT_BATCH");
    m = !(e && !strcmp(e, "0"));
    atomic_store(&mode, m);
  }
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
      op_fail_locked(op, KVS_ENOMEM, "no memory for a group request");
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
  pthread_mutex_lock(&c->shm_mu);
  for (struct kvs__devnode **pp = &c->devpool; *pp; pp = &(*pp)->next) {
    struct kvs__devnode *n = *pp;
    if (kvs__devslot_fits(&n->s, dec, (size_t)max_seg)) {
      *pp = n->next;
      c->n_devpool--;
      pthread_mutex_unlock(&c->shm_mu);
      *s = n->s;
      free(n);
      return KVS_OK;
    }
  }
  /* none fits: a full pool gives up one set that is too small */
  struct kvs__devnode *drop = NULL;
  if (c->n_devpool >= KVS__DEVPOOL_MAX && c->devpool) {
    drop = c->devpool;
    c->devpool = drop->next;
    c->n_devpool--;
  }
  pthread_mutex_unlock(&c->shm_mu);
  if (drop) {
    kvs__devslot_free(&drop->s);
    free(drop);
  }
  return kvs__devslot_init(s, dec, (size_t)max_seg);
}

static void devslot_give(kvs_client *c, kvs__devslot *s) {
  if (!s->d_seg) return;
  struct kvs__devnode *n = NULL;
  pthread_mutex_lock(&c->shm_mu);
  if (c->n_devpool < KVS__DEVPOOL_MAX && (n = malloc(sizeof *n))) {
    n->s = *s;
    n->next = c->devpool;
    c->devpool = n;
    c->n_devpool++;
  }
  pthread_mutex_unlock(&c->shm_mu);
  if (!n) kvs__devslot_free(s);
  memset(s, 0, sizeof *s);
}

void kvs__devpool_free(kvs_client *c) {
  while (c->devpool) {
    struct kvs__devnode *n = c->devpool;
    c->devpool = n->next;
    kvs__devslot_free(&n->s);
    free(n);
  }
  c->n_devpool = 0;
}

/* Decodes group sub->g from its encoded bytes (on the host, or on the GPU for
 * a device get of a lossy profile). */
static int decode_group(kvs_op *op, const kvs__sub *sub, const uint8_t *bytes, size_t len) {
  if (op->gpu_decode) {
    kvs__devslot s;
    int rv = devslot_take(op->c, &s, op->dec, op->max_seg);
    if (rv) return rv;
    rv = kvs__decoder_decode_device(op->dec, sub->g, bytes, len, op->dev_out, op->out_bytes,
                                    op->dtype, op->hb, op->he, &s);
    devslot_give(op->c, &s);
    return rv;
  }
  return kvs__decoder_decode(op->dec, sub->g, bytes, len, op->out, op->out_bytes, op->dtype, op->hb,
                             op->he, op->ws + sub->idx * op->ws_each, op->ws_each);
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
  atomic_fetch_add(call->rv == KVS_OK ? &c->n_releases : &c->n_release_lost, 1);
  kvs__call_free(call);
  atomic_fetch_sub(&c->bg_calls, 1); /* the last touch of c */
}

/* Gives a lease back without waiting for the answer. */
static void send_release(kvs_client *c, uint64_t lease_id) {
  nng_msg *m = NULL;
  if (kvs__frame_new(8, &m) == KVS_OK) {
    uint8_t *p = kvs__frame_payload(m);
    for (int i = 0; i < 8; i++)
      p[i] = (uint8_t)(lease_id >> (8 * i));
    if (frame_seal(c, m, KVS_OP_RELEASE)) {
      nng_msg_free(m);
      m = NULL;
    }
  }
  atomic_fetch_add(&c->bg_calls, 1);
  kvs__call *call = m ? kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_RELEASE), 0, check_reply,
                                      release_done, c)
                      : NULL;
  if (!call) { /* the server frees it at expiry */
    atomic_fetch_add(&c->n_release_lost, 1);
    atomic_fetch_sub(&c->bg_calls, 1);
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
    atomic_fetch_add(&c->n_shm_bytes, len);
    group_finish(sub, KVS_OK, "");
    return;
  }
  /* never trust those bytes: the same group through the socket */
  KVS_LOGD("client", "group re-fetched by socket", "group=%u why=%s", sub->g, kvs_errname(rv));
  if (rv == KVS_ETIMEDOUT) atomic_store(&op->shm_dead, 1);
  atomic_fetch_add(&c->n_shm_regroups, 1);
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
                                          op->out_bytes, op->dtype, op->hb, op->he, &s);
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
    atomic_fetch_add(&c->n_shm_bytes, len);
    if (release) send_release(c, op->lease_id);
  } else {
    KVS_LOGD("client", "whole value re-done group by group", "why=%s", kvs_errname(rv));
    if (rv == KVS_ETIMEDOUT) atomic_store(&op->shm_dead, 1);
    issue_more(op);
  }
  pthread_mutex_lock(&op->mu);
  op->pending--;
  op_update_locked(op);
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
  if (rv == KVS_OK && op->dev_out && !op->gpu_decode) {
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
    op_fail_locked(op, rv, msg);
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
  op_update_locked(op);
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
  if (op->dev_out && kvs__decoder_gpu_ok(dec)) {
    /* one device buffer set is taken per group decode, from the client's
       pool; make sure the first can be had, else decode on the host */
    kvs__devslot s;
    op->max_seg = max_seg;
    op->gpu_decode = devslot_take(op->c, &s, dec, max_seg) == KVS_OK;
    if (op->gpu_decode) devslot_give(op->c, &s);
  }
  if (op->dev_out && !op->gpu_decode) {
    op->out = malloc(op->out_bytes);
    if (kvs_gpu_stream_create(&op->copy_stream)) op->copy_stream = NULL; /* default stream */
  }
  if (!op->ready || !op->ws_busy || (op->ws_each && !op->ws) ||
      (op->dev_out && !op->gpu_decode && !op->out)) {
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
    op_fail_locked(op, rv, "no memory for the decoder");
    pthread_mutex_unlock(&op->mu);
    return;
  }
  issue_more(op);
}

/* Drops the reference of the first call; the op may finish. */
static void op_first_over(kvs_op *op, int rv, const char *msg) {
  pthread_mutex_lock(&op->mu);
  if (rv) op_fail_locked(op, rv, msg);
  int release = op->lease_state == 1 && op->failed && op->inflight == 0;
  if (release) op->lease_state = 2;
  pthread_mutex_unlock(&op->mu);
  if (release) send_release(op->c, op->lease_id);
  pthread_mutex_lock(&op->mu);
  op->pending--;
  op_update_locked(op);
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
  kvs__get_call(op->c, m, timeout_ms, check_reply, first_done, op); /* stream or REQ/REP */
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
    atomic_store(&c->shm_on, 0);
    fallback = 1;
  } else if (rv == KVS_ENOENT || rv == KVS_ETOKENS || rv == KVS_EMODEL || rv == KVS_EAUTH ||
             rv == KVS_EQUARANTINE || rv == KVS_ECLOSED) {
    /* the answer of a GET as well */
  } else if (rv != KVS_OK) {
    fallback = 1; /* not in shared memory (EAGAIN), too many leases, a lost answer... */
  } else {
    size_t pn;
    const uint8_t *p = reply_payload(call->rep, &pn);
    kvs_wire_lease_resp r;
    rv = kvs_wire_lease_resp_decode(p, pn, &r);
    if (rv == KVS_OK && r.meta_len == 0) rv = KVS_EPROTO;
    if (rv) {
      snprintf(msg, sizeof msg, "bad LEASE answer (%s)", kvs_errname(rv));
      rv = KVS_EPROTO;
      fallback = 1;
    } else {
      atomic_fetch_add(&c->n_leases, 1);
      op->lease_id = r.lease_id;
      op->lease_expires_ms = r.expires_ms;
      op->lease_state = 1;
      rv = check_meta(op, &r.meta, msg, sizeof msg);
    }
    kvs__shmmap *map = NULL;
    if (rv == KVS_OK) {
      /* direct DMA from the segment needs it registered; staged copies do not */
      rv = kvs__shm_map(c, r.shm_name, op->dev_out != NULL && !kvs__dma_staged(), &map, msg,
                        sizeof msg);
      if (rv == KVS_EPERM || rv == KVS_ENOENT) { /* another user or another host: stop trying */
        KVS_LOGI("client", "shared memory not usable, gets go through the socket", "why=\"%s\"",
                 msg);
        atomic_store(&c->shm_on, 0);
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
    atomic_fetch_add(&c->n_shm_fallbacks, 1);
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
    atomic_fetch_add(&c->n_shm_gets, 1);
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
  if (!rv) rv = frame_seal(op->c, m, KVS_OP_LEASE);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  uint64_t now = kvs_now_ns();
  uint32_t ms = op->deadline_ns > now ? (uint32_t)((op->deadline_ns - now) / 1000000) : 0;
  kvs__call *call = kvs__call_new(op->c, m, kvs_wire_op_idempotent(KVS_OP_LEASE), ms ? ms : 1,
                                  check_reply, lease_done, op);
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

static kvs_err get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, void *out,
                         uint64_t out_cap, const kvs_get_opts *o, int sync, kvs_op **opp) {
  if (!opp) return KVS_EINVAL;
  *opp = NULL;
  if (!c || !model || !tokens || !chunk || !layout || !out) return KVS_EINVAL;
  if (kvs_layout_validate(layout)) return kvs__seterr(c, KVS_ELAYOUT, "invalid layout");
  if (!chunk->n_tokens || chunk->n_tokens > KVS_WIRE_MAX_TOKENS)
    return kvs__seterr(c, KVS_ERANGE, "a chunk has 1..%u tokens", KVS_WIRE_MAX_TOKENS);
  kvs_get_opts d = {0};
  if (!o) o = &d;
  uint64_t need = kvs_get_bound(layout, chunk->n_tokens, o);
  if (!need) return kvs__seterr(c, KVS_EINVAL, "bad head range or dtype");
  if (o->dtype && o->dtype != layout->dtype && o->dtype != KVS_DTYPE_F32)
    return kvs__seterr(c, KVS_ENOTSUP, "output dtype must be the stored one or f32");
  if (out_cap < need)
    return kvs__seterr(c, KVS_ERANGE, "output holds %llu bytes, the chunk needs %llu",
                       (unsigned long long)out_cap, (unsigned long long)need);
  if ((o->flags & KVS_GET_DEVICE) && kvs_gpu_device_count() < 1)
    return kvs__seterr(c, KVS_ENODEV, "KVS_GET_DEVICE without a CUDA device");
  /* the get's deadline starts now; the stream question takes a part of it */
  uint64_t deadline = kvs_now_ns() + (uint64_t)c->o.request_timeout_ms * 1000000ull;
  kvs__stream_default(c, c->o.request_timeout_ms / 4 < 1000 ? c->o.request_timeout_ms / 4 : 1000);
  kvs_op *op = op_new(c, KVS__OP_GET);
  if (!op) return KVS_ENOMEM;
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
  if (o->flags & KVS_GET_DEVICE) {
    op->dev_out = out; /* the host staging buffer, if needed, comes with the decoder */
  } else {
    op->out = out;
  }
  atomic_fetch_add(&c->n_gets, 1);
  op->pending = 1;
  int rv = op->tokens ? KVS_OK : KVS_ENOMEM;
  if (!rv) {
    uint64_t now = kvs_now_ns();
    uint32_t ms = deadline > now ? (uint32_t)((deadline - now) / 1000000) : 0;
    rv = atomic_load(&c->shm_on) ? start_lease(op) : start_first_get(op, ms ? ms : 1);
  }
  if (rv) {
    op->finished = 1;
    kvs_op_free(op);
    return kvs__seterr(c, rv, "cannot build the GET request");
  }
  *opp = op;
  return KVS_OK;
}

kvs_err kvs_get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                      const kvs_get_opts *o, kvs_op **opp) {
  if (c && c->cluster) return KVS__NOT_ON_CLUSTER(c);
  return get_start(c, model, tokens, chunk, layout, out, out_cap, o, 0, opp);
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

kvs_err kvs_op_wait(kvs_op *op) {
  if (!op) return KVS_EINVAL;
  pthread_mutex_lock(&op->mu);
  while (!op->finished)
    pthread_cond_wait(&op->cv, &op->mu);
  int rv = op->rv;
  pthread_mutex_unlock(&op->mu);
  if (rv) kvs__seterr(op->c, rv, "%s", op->errmsg);
  return rv;
}

int kvs_op_done(kvs_op *op) {
  if (!op) return 1;
  pthread_mutex_lock(&op->mu);
  int f = op->finished;
  pthread_mutex_unlock(&op->mu);
  return f;
}

void kvs_op_free(kvs_op *op) {
  if (!op) return;
  pthread_mutex_lock(&op->mu);
  while (!op->finished)
    pthread_cond_wait(&op->cv, &op->mu);
  pthread_mutex_unlock(&op->mu);
  if (op->copy_stream) kvs_gpu_stream_free(op->copy_stream);
  kvs__decoder_free(op->dec);
  if (op->dev_out) free(op->out);
  free(op->tokens);
  free(op->ready);
  free(op->ws);
  free(op->ws_busy);
  free(op->seg_end);
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cv);
  free(op);
}

kvs_err kvs_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                const kvs_get_opts *o) {
  kvs_op *op;
  kvs_get_opts d = {0};
  if (!o) o = &d;
  if (c && c->cluster) return kvs__cluster_get(c, model, tokens, chunk, layout, out, out_cap, o);
  KVS_TRY(get_start(c, model, tokens, chunk, layout, out, out_cap, o, 1, &op));
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

/* ---------------------------------------------------------------- put */
static void put_done(kvs__call *call, void *arg) {
  kvs_op *op = arg;
  int rv = call->rv;
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", call->errmsg);
  kvs__call_free(call);
  pthread_mutex_lock(&op->mu);
  if (rv) op_fail_locked(op, rv, msg);
  op->pending--;
  op_update_locked(op);
  pthread_mutex_unlock(&op->mu);
}

kvs_err kvs_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                      const kvs_put_opts *o, kvs_op **opp) {
  if (!opp) return KVS_EINVAL;
  *opp = NULL;
  if (!c || !model || !tokens || !chunk || !layout || !kv) return KVS_EINVAL;
  if (c->cluster) return KVS__NOT_ON_CLUSTER(c);
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
  int rv = KVS_ENOTSUP;
  if (o->flags & KVS_PUT_DEVICE) /* a profile with a GPU encoder: only its bytes cross PCIe */
    rv = kvs__encode_device(o->profile, o->layers_per_group, o->codec, layout, chunk->n_tokens, kv,
                            &e);
  if (rv != KVS_ENOTSUP && rv != KVS_OK)
    return kvs__seterr(c, rv, "encoding on the GPU with profile %u failed", o->profile);
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
  nng_msg *m = NULL;
  rv = ms ? kvs__frame_new(ms + e.len, &m) : KVS_ETOOBIG;
  if (!rv) rv = kvs_wire_meta_encode(&meta, kvs__frame_payload(m), ms, &w);
  if (!rv) memcpy(kvs__frame_payload(m) + ms, e.bytes, e.len);
  kvs__encoded_free(&e);
  if (!rv) rv = frame_seal(c, m, KVS_OP_PUT);
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
  kvs_op *op = op_new(c, KVS__OP_PUT);
  kvs__call *call =
      op ? kvs__call_new(c, m, kvs_wire_op_idempotent(KVS_OP_PUT) && !(o->flags & KVS_PUT_NX), 0,
                         check_reply, put_done, op)
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

/* -------------------------------------------------------------- batches */
kvs_err kvs_get_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      void *const *outs, const uint64_t *out_caps, const kvs_get_opts *o,
                      kvs_err *rvs) {
  if (!c || (n && (!chunks || !outs || !out_caps))) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_batch(c, 0, model, tokens, chunks, n, layout, outs, out_caps, NULL, o, NULL,
                              rvs);
  kvs_op **ops = calloc(n ? n : 1, sizeof *ops);
  if (!ops) return KVS_ENOMEM;
  int first = KVS_OK;
  for (size_t i = 0; i < n; i++) {
    int rv = kvs_get_start(c, model, tokens, &chunks[i], layout, outs[i], out_caps[i], o, &ops[i]);
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

kvs_err kvs_put_batch(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                      const void *const *kvs, const kvs_put_opts *o, kvs_err *rvs) {
  if (!c || (n && (!chunks || !kvs))) return KVS_EINVAL;
  if (c->cluster)
    return kvs__cluster_batch(c, 1, model, tokens, chunks, n, layout, NULL, NULL, kvs, NULL, o,
                              rvs);
  kvs_op **ops = calloc(n ? n : 1, sizeof *ops);
  if (!ops) return KVS_ENOMEM;
  int first = KVS_OK;
  for (size_t i = 0; i < n; i++) {
    int rv = kvs_put_start(c, model, tokens, &chunks[i], layout, kvs[i], o, &ops[i]);
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
