/* dataplane.c - the nng REP data plane of kvstashd.
 *
 * One REP socket listening on every configured URL (tcp://, ipc://, tls+tcp://
 * at once) with a pool of asynchronous REP contexts. A context's callback (on
 * nng's task threads) decodes the frame, checks auth before anything else and
 * answers at once what never blocks: PING, EXISTS, LOOKUP, STATS and GETs
 * served from the RAM tier. Everything that may touch the disk (PUT, GETs from
 * T1/T2, DELETE, PIN, TTL, LIST, EXPORT, IMPORT) is queued to `workers`
 * threads. A request that waited in that queue past request_deadline_ms is
 * answered KVS_ETIMEDOUT without being run. nng bounds the frame size
 * (recv-size-max) before it is buffered; the decoders bound everything inside. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc_int.h"

typedef struct rctx {
  struct kvs__dataplane *d;
  nng_ctx ctx;
  nng_aio *aio;
  int open;
  int sending;
  nng_pipe pipe;   /* the connection the request came on */
  size_t send_len; /* bytes of the answer being sent (counted in its pipe's acct) */
  nng_msg *req;    /* while queued for a worker */
  uint64_t t0;     /* when the request arrived */
  uint16_t op;
  struct rctx *next;
} rctx;

/* Per connection (nng pipe): requests held and answers not yet taken by the
 * peer. A peer that does not read its answers makes them pile up here; past
 * KVS__PIPE_MAX_UNREAD answers or KVS__PIPE_MAX_UNREAD_BYTES bytes, or when
 * one answer is not taken within request_deadline_ms, the pipe is jammed
 * (pipe_jam): it costs its own connection, never the contexts others need. */
#define KVS__PIPE_MAX_UNREAD       32
#define KVS__PIPE_MAX_UNREAD_BYTES (64ull << 20)
#define KVS__PIPE_BUCKETS          256
typedef struct pacct {
  uint32_t id;
  uint32_t held;   /* requests received, answer not yet sent out */
  uint32_t unread; /* answers handed to nng, not yet written to the socket */
  uint64_t unread_bytes;
  int jammed; /* its answers are dropped: the peer does not read them */
  struct pacct *next;
} pacct;

struct kvs__dataplane {
  kvs_svc_config cfg;
  pthread_mutex_t pmu; /* guards pacct */
  pacct *pacct[KVS__PIPE_BUCKETS];
  kvs__store *st;
  kvs__metrics *met;
  nng_socket sock;
  int sock_open;
  nng_tls_config *tls;
  rctx *ctx;
  int nctx;
  pthread_t *workers;
  int nw;
  pthread_mutex_t qmu;
  pthread_cond_t qcv;
  rctx *qhead, *qtail;
  int qstop;
  atomic_int draining, closing;
  atomic_int inflight;
};

/* ------------------------------------------------------------ answers */
/* An answer: header written, `payload` bytes to follow. The body is reserved,
 * not zero-filled (nng_msg_alloc would memset it): callers append the
 * payload, or get it zeroed with answer_alloc. */
static nng_msg *answer_begin(uint16_t op, uint64_t req_id, int32_t status, size_t payload) {
  nng_msg *m = NULL;
  if (nng_msg_alloc(&m, 0) != 0) return NULL;
  if (nng_msg_reserve(m, KVS_WIRE_HDR_SIZE + payload) != 0) {
    nng_msg_free(m);
    return NULL;
  }
  kvs_wire_hdr h;
  memset(&h, 0, sizeof h);
  h.magic = KVS_WIRE_MAGIC;
  h.version = KVS_WIRE_VERSION;
  h.op = (op >= 1 && op <= KVS__OP_MAX) ? op : KVS_OP_PING;
  h.flags = KVS_WIRE_F_RESPONSE;
  h.status = status;
  h.req_id = req_id;
  h.payload_len = (uint32_t)payload;
  uint8_t hb[KVS_WIRE_HDR_SIZE];
  kvs_wire_hdr_encode(&h, hb);
  nng_msg_append(m, hb, sizeof hb); /* within the reserve: cannot fail */
  return m;
}

/* An answer with a small payload the caller fills in place (zeroed). */
static nng_msg *answer_alloc(uint16_t op, uint64_t req_id, int32_t status, size_t payload) {
  nng_msg *m = answer_begin(op, req_id, status, payload);
  if (m && payload && nng_msg_realloc(m, KVS_WIRE_HDR_SIZE + payload) != 0) {
    nng_msg_free(m);
    return NULL;
  }
  if (m && payload) memset((uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE, 0, payload);
  return m;
}

static nng_msg *answer_err(uint16_t op, uint64_t req_id, kvs_err err, const char *detail) {
  char msg[KVS_WIRE_MAX_ERRMSG + 1];
  int n = snprintf(msg, sizeof msg, "%s%s%s", kvs_strerror(err), detail ? ": " : "",
                   detail ? detail : "");
  size_t len = n < 0 ? 0 : (size_t)n > KVS_WIRE_MAX_ERRMSG ? KVS_WIRE_MAX_ERRMSG : (size_t)n;
  nng_msg *m = answer_alloc(op, req_id, err, len);
  if (m) memcpy((uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE, msg, len);
  return m;
}

static uint8_t *payload_of(nng_msg *m) { return (uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE; }

/* PING's answer: the +stream listen URLs, comma-separated, as configured
 * (a wildcard host is the client's to replace with the one it dialed). */
static size_t stream_adv(const kvs_svc_config *c, char *out, size_t cap) {
  size_t n = 0;
  for (int i = 0; i < c->n_listen; i++) {
    if (!kvs__stream_url(c->listen[i])) continue;
    size_t l = strlen(c->listen[i]);
    if (n + l + 1 > cap) break;
    if (n) out[n++] = ',';
    memcpy(out + n, c->listen[i], l);
    n += l;
  }
  return n;
}

/* ---------------------------------------------------------------- ops */
static nng_msg *op_get(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant, int fast,
                       int *defer) {
  const kvs_wire_get_req *g = &r->u.get;
  kvs__vref v;
  kvs_wire_get_resp a;
  size_t head = 0;
  const char *why = NULL;
  kvs_err rc = kvs__get_prepare(d->st, tenant, g, fast, &v, &a, &head, &why);
  if (rc == KVS_EAGAIN && fast) {
    *defer = 1;
    return NULL;
  }
  if (rc != KVS_OK) return answer_err(KVS_OP_GET, r->hdr.req_id, rc, why);
  int with_meta = (g->flags & KVS_WIRE_GET_META) != 0;
  /* the one copy of the value on the way out: T0 (or the disk read) -> message */
  nng_msg *m = answer_begin(KVS_OP_GET, r->hdr.req_id, KVS_OK, head + a.byte_len);
  uint8_t hb[KVS_WIRE_GET_RESP_FIXED + 2048];
  uint8_t *hp = head <= sizeof hb ? hb : malloc(head);
  size_t w = 0;
  if (m && hp &&
      kvs_wire_get_resp_encode_head(&a, with_meta ? &v.m : NULL, hp, head, &w) == KVS_OK) {
    nng_msg_append(m, hp, head);
    nng_msg_append(m, v.buf->data + a.byte_off, (size_t)a.byte_len);
    KVS__INC(d->met, KVS_STAT_BYTES_OUT, a.byte_len);
    atomic_fetch_add_explicit(&d->met->bytes_out_tier[v.tier < KVS__MAX_TIER_ROWS ? v.tier : 0],
                              a.byte_len, memory_order_relaxed);
  } else if (m) {
    nng_msg_free(m);
    m = NULL;
  }
  if (hp != hb) free(hp);
  kvs__vref_release(&v);
  return m ? m : answer_err(KVS_OP_GET, r->hdr.req_id, KVS_ENOMEM, NULL);
}

static nng_msg *op_lease(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant, int fast,
                         int *defer) {
  const kvs_wire_lease_req *q = &r->u.lease;
  uint8_t tid[8];
  kvs__store_tenant_id(d->st, tenant, tid);
  if (q->release_id) (void)kvs__store_release(d->st, tid, q->release_id); /* may be gone */
  kvs__skey sk;
  kvs__store_skey(d->st, tenant, &q->get.key, &sk);
  kvs__lease_out lo;
  kvs_err rc =
      kvs__store_lease(d->st, &sk, &q->get.model, q->get.tokens_le, q->get.n_tokens, !fast, &lo);
  if (rc == KVS_EAGAIN && fast) {
    *defer = 1;
    return NULL;
  }
  if (rc != KVS_OK)
    return answer_err(KVS_OP_LEASE, r->hdr.req_id, rc,
                      rc == KVS_EAGAIN ? "not in shared memory: use GET" : NULL);
  kvs_wire_lease_resp a;
  memset(&a, 0, sizeof a);
  a.lease_id = lo.lease_id;
  a.expires_ms = lo.expires_ms;
  a.offset = lo.offset;
  a.value_bytes = lo.v.m.value_bytes;
  a.checksum = lo.v.m.checksum;
  snprintf(a.shm_name, sizeof a.shm_name, "%s", lo.shm_name);
  int with_meta = (q->get.flags & KVS_WIRE_GET_META) != 0;
  size_t n = KVS_WIRE_LEASE_RESP_FIXED + (with_meta ? lo.v.meta_len : 0);
  nng_msg *m = answer_alloc(KVS_OP_LEASE, r->hdr.req_id, KVS_OK, n);
  if (m && kvs_wire_lease_resp_encode(&a, with_meta ? &lo.v.m : NULL, payload_of(m), n, NULL) !=
               KVS_OK) {
    nng_msg_free(m);
    m = NULL;
  }
  kvs__vref_release(&lo.v);
  if (!m) { /* no answer: give the range back now rather than at expiry */
    (void)kvs__store_release(d->st, tid, a.lease_id);
    return answer_err(KVS_OP_LEASE, r->hdr.req_id, KVS_ENOMEM, NULL);
  }
  return m;
}

static nng_msg *op_lookup(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant) {
  const kvs_wire_lookup_req *q = &r->u.lookup;
  uint8_t status[KVS_WIRE_MAX_LOOKUP];
  memset(status, 0, q->n_chunks);
  uint32_t n_prefix = 0;
  int in_prefix = 1;
  for (uint32_t i = 0; i < q->n_chunks; i++) {
    kvs_wire_lookup_chunk c;
    kvs_wire_lookup_chunk_at(q, i, &c);
    kvs__skey sk;
    kvs__store_skey(d->st, tenant, &c.key, &sk);
    status[i] =
        (uint8_t)kvs__store_probe(d->st, &sk, &q->model, q->tokens_le + 4u * c.tok_off, c.tok_len);
    if (status[i] && in_prefix) n_prefix++;
    if (!status[i]) {
      in_prefix = 0;
      if (q->mode == KVS_WIRE_LOOKUP_PREFIX) break;
    }
  }
  kvs__metrics_lookup(d->met, q, status);
  size_t n = kvs_wire_lookup_resp_size(q->n_chunks);
  nng_msg *m = answer_alloc(KVS_OP_LOOKUP, r->hdr.req_id, KVS_OK, n);
  if (m) kvs_wire_lookup_resp_encode(n_prefix, status, q->n_chunks, payload_of(m), n, NULL);
  return m;
}

static nng_msg *op_page(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant) {
  uint16_t op = r->hdr.op;
  const kvs_wire_page_req *q = &r->u.page;
  uint8_t tid[8];
  kvs__store_tenant_id(d->st, tenant, tid);
  kvs__item *items = malloc(sizeof *items * q->limit);
  if (!items) return answer_err(op, r->hdr.req_id, KVS_ENOMEM, NULL);
  uint32_t n = 0;
  int more = 0;
  kvs_err rc =
      kvs__store_list(d->st, tid, q->has_cursor ? q->cursor : NULL, q->limit, items, &n, &more);
  nng_msg *m = NULL;
  if (rc != KVS_OK) {
    m = answer_err(op, r->hdr.req_id, rc, NULL);
  } else if (op == KVS_OP_LIST) {
    m = answer_alloc(op, r->hdr.req_id, KVS_OK,
                     KVS_WIRE_PAGE_RESP_FIXED + (size_t)n * KVS_WIRE_LIST_ITEM_SIZE);
    if (m) {
      uint8_t *p = payload_of(m);
      kvs_wire_page_resp_encode_head(n, (uint8_t)more, n ? items[n - 1].sk.b + 8 : NULL, p,
                                     KVS_WIRE_PAGE_RESP_FIXED, NULL);
      for (uint32_t i = 0; i < n; i++)
        kvs_wire_list_item_encode(
            &items[i].it, p + KVS_WIRE_PAGE_RESP_FIXED + (size_t)i * KVS_WIRE_LIST_ITEM_SIZE,
            KVS_WIRE_LIST_ITEM_SIZE);
    }
  } else { /* EXPORT: records, cut at the max message size */
    if (nng_msg_alloc(&m, KVS_WIRE_HDR_SIZE + KVS_WIRE_PAGE_RESP_FIXED) == 0) {
      uint32_t k = 0;
      size_t budget = d->cfg.max_msg;
      size_t used = KVS_WIRE_HDR_SIZE + KVS_WIRE_PAGE_RESP_FIXED;
      for (uint32_t i = 0; i < n; i++) {
        kvs__vref v;
        if (kvs__store_read(d->st, &items[i].sk, &v) != KVS_OK) continue; /* gone or bad */
        size_t rs = kvs_wire_record_size(&v.m);
        if (k > 0 && used + rs > budget) {
          kvs__vref_release(&v);
          more = 1;
          n = i; /* resume from the last record sent */
          break;
        }
        size_t at = nng_msg_len(m);
        if (nng_msg_realloc(m, at + rs) != 0) {
          kvs__vref_release(&v);
          break;
        }
        uint8_t *p = (uint8_t *)nng_msg_body(m) + at;
        memset(p, 0, rs);
        size_t w = 0;
        kvs_wire_record_encode_head(&v.m, p, rs, &w);
        memcpy(p + w, v.buf->data, v.buf->len);
        used += rs;
        k++;
        KVS__INC(d->met, KVS_STAT_BYTES_OUT, v.buf->len);
        kvs__vref_release(&v);
      }
      kvs_wire_hdr h;
      memset(&h, 0, sizeof h);
      h.magic = KVS_WIRE_MAGIC;
      h.version = KVS_WIRE_VERSION;
      h.op = op;
      h.flags = KVS_WIRE_F_RESPONSE;
      h.req_id = r->hdr.req_id;
      h.payload_len = (uint32_t)(nng_msg_len(m) - KVS_WIRE_HDR_SIZE);
      kvs_wire_hdr_encode(&h, nng_msg_body(m));
      kvs_wire_page_resp_encode_head(k, (uint8_t)more, n ? items[n - 1].sk.b + 8 : NULL,
                                     payload_of(m), KVS_WIRE_PAGE_RESP_FIXED, NULL);
    }
  }
  free(items);
  return m;
}

static nng_msg *op_import(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant) {
  const uint8_t *q = r->u.import.records;
  size_t left = r->u.import.records_len;
  kvs_wire_import_resp a = {0, 0};
  kvs_wire_meta m;
  const uint8_t *v;
  while (kvs_wire_record_next(&q, &left, &m, &v) == KVS_OK) {
    kvs__skey sk;
    kvs__store_skey(d->st, tenant, &m.key, &sk);
    if (kvs__store_put(d->st, &sk, &m, v, r->hdr.flags & KVS_WIRE_F_SYNC, 1) == KVS_OK) {
      a.n_ok++;
      KVS__INC(d->met, KVS_STAT_BYTES_IN, m.value_bytes);
    } else {
      a.n_failed++;
    }
  }
  nng_msg *out = answer_alloc(KVS_OP_IMPORT, r->hdr.req_id, KVS_OK, 8);
  if (out) kvs_wire_import_resp_encode(&a, payload_of(out), 8, NULL);
  return out;
}

/* The request frame a worker is handling: a PUT takes it over (*t_frame set
 * to NULL), so the store holds the value where it arrived, no copy. */
static _Thread_local nng_msg **t_frame;
static void frame_free(void *m) { nng_msg_free(m); }

/* fast: on an nng task thread, answer only what cannot block; set *defer for
 * the rest. */
/* ------------------------------------------------ shared-memory puts */
/* PUT_RESERVE: a range of the tenant's segment, tied to connection conn
 * (freed when it closes). */
static nng_msg *op_reserve(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant,
                           uint32_t conn) {
  const kvs_wire_put_reserve_req *q = &r->u.reserve;
  uint16_t op = r->hdr.op;
  if (q->bytes + KVS_WIRE_HDR_SIZE > d->cfg.max_msg) /* the same bound as a PUT's */
    return answer_err(op, r->hdr.req_id, KVS_ETOOBIG, "value over max_msg");
  uint8_t tid[8];
  kvs__store_tenant_id(d->st, tenant, tid);
  kvs__resv_out o;
  kvs_err rc = kvs__store_reserve(d->st, tid, &q->key, &q->model, q->bytes, conn, &o);
  if (rc != KVS_OK)
    return answer_err(op, r->hdr.req_id, rc,
                      rc == KVS_EAGAIN    ? "no room in shared memory: use PUT"
                      : rc == KVS_ENOTSUP ? "shm is off: use PUT"
                                          : NULL);
  kvs_wire_put_reserve_resp a;
  memset(&a, 0, sizeof a);
  a.resv_id = o.id;
  a.expires_ms = o.expires_ms;
  a.offset = o.offset;
  a.bytes = o.bytes;
  snprintf(a.shm_name, sizeof a.shm_name, "%s", o.shm_name);
  nng_msg *m = answer_alloc(op, r->hdr.req_id, KVS_OK, KVS_WIRE_PUT_RESERVE_RESP_SIZE);
  if (m && kvs_wire_put_reserve_resp_encode(&a, payload_of(m), KVS_WIRE_PUT_RESERVE_RESP_SIZE,
                                            NULL) != KVS_OK) {
    nng_msg_free(m);
    m = NULL;
  }
  if (!m) { /* no answer: the range goes back now */
    (void)kvs__store_resv_abort(d->st, tid, o.id);
    return answer_err(op, r->hdr.req_id, KVS_ENOMEM, NULL);
  }
  return m;
}

/* PUT_COMMIT: the reservation is taken out of the table first (so expiry,
 * an abort or the connection closing cannot free it meanwhile), the meta
 * checked against it, the value's checksum checked on the bytes in place by
 * the store's put, which indexes the range itself (kvs__store_put_buf, no
 * copy); refused, the range is freed. */
static nng_msg *op_commit(kvs__dataplane *d, const kvs_wire_req *r, const char *tenant) {
  const kvs_wire_put_commit_req *q = &r->u.commit;
  uint16_t op = r->hdr.op;
  uint64_t id = r->hdr.req_id;
  uint8_t tid[8];
  kvs__store_tenant_id(d->st, tenant, tid);
  kvs_key key;
  kvs_model_id model;
  kvs__buf *b = NULL;
  kvs_err rc = kvs__store_resv_take(d->st, tid, q->resv_id, &key, &model, &b);
  if (rc != KVS_OK)
    return answer_err(op, id, rc, "no such reservation (expired, aborted or another tenant's)");
  const char *why = NULL;
  if (q->meta.value_bytes == 0 || q->meta.value_bytes > b->len) {
    rc = KVS_ERANGE;
    why = "value_bytes empty or over the reserved range";
  } else if (memcmp(key.b, q->meta.key.b, 16) || memcmp(model.b, q->meta.model.b, 16)) {
    rc = KVS_EINVAL;
    why = "key or model differs from the reservation's";
  } else {
    kvs__skey sk;
    kvs__store_skey(d->st, tenant, &q->meta.key, &sk);
    kvs__buf_shm_trim(b, (size_t)q->meta.value_bytes); /* the rest of the range is free now */
    /* no copy: the store indexes b itself (its T0 copy and the disk write
     * read these bytes), after checking the checksum on them once */
    rc = kvs__store_put_buf(d->st, &sk, &q->meta, b,
                            r->hdr.flags & (KVS_WIRE_F_NX | KVS_WIRE_F_SYNC), 0);
    if (rc == KVS_ECHECKSUM) why = "the bytes in the reserved range do not match the checksum";
    if (rc == KVS_OK) KVS__INC(d->met, KVS_STAT_BYTES_IN, q->meta.value_bytes);
  }
  kvs__buf_unref(b); /* the reservation's ref: on failure the range is free again */
  return rc == KVS_OK ? answer_alloc(op, id, KVS_OK, 0) : answer_err(op, id, rc, why);
}

static nng_msg *dispatch(kvs__dataplane *d, const kvs_wire_req *r, int fast, int *defer,
                         uint32_t conn) {
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(&r->hdr, tenant);
  uint16_t op = r->hdr.op;
  uint64_t id = r->hdr.req_id;
  kvs__skey sk;
  kvs_err rc;
  if (fast && !kvs_wire_op_fast(op)) { /* KVS_WIRE_OP_MAP's fast column */
    *defer = 1;
    return NULL;
  }
  switch (op) {
  case KVS_OP_PING: { /* the byte-stream listeners, for clients to find (protocol.md) */
    char adv[KVS_SVC_MAX_LISTEN * 257];
    size_t n = stream_adv(&d->cfg, adv, sizeof adv);
    nng_msg *m = answer_alloc(op, id, KVS_OK, n);
    if (m && n) memcpy(payload_of(m), adv, n);
    return m;
  }
  case KVS_OP_PUT: {
    if (r->u.put.meta.value_bytes + KVS_WIRE_HDR_SIZE > d->cfg.max_msg)
      return answer_err(op, id, KVS_ETOOBIG, "value over max_msg");
    kvs__store_skey(d->st, tenant, &r->u.put.meta.key, &sk);
    uint64_t vb = r->u.put.meta.value_bytes;
    uint32_t pf = r->hdr.flags & (KVS_WIRE_F_NX | KVS_WIRE_F_SYNC);
    if (t_frame && *t_frame) { /* r points into the frame: used before the last unref */
      kvs__buf *b = kvs__buf_wrap((uint8_t *)r->u.put.value, vb, frame_free, *t_frame);
      *t_frame = NULL;
      rc = b ? kvs__store_put_buf(d->st, &sk, &r->u.put.meta, b, pf, 0) : KVS_ENOMEM;
      kvs__buf_unref(b);
    } else {
      rc = kvs__store_put(d->st, &sk, &r->u.put.meta, r->u.put.value, pf, 0);
    }
    if (rc == KVS_OK) KVS__INC(d->met, KVS_STAT_BYTES_IN, vb);
    return rc == KVS_OK ? answer_alloc(op, id, KVS_OK, 0) : answer_err(op, id, rc, NULL);
  }
  case KVS_OP_GET: return op_get(d, r, tenant, fast, defer);
  case KVS_OP_LOOKUP: return op_lookup(d, r, tenant);
  case KVS_OP_EXISTS: {
    kvs__store_skey(d->st, tenant, &r->u.key.key, &sk);
    kvs_wire_exists_resp e;
    rc = kvs__store_exists(d->st, &sk, &r->u.key.model, &e);
    if (rc != KVS_OK) return answer_err(op, id, rc, NULL);
    nng_msg *m = answer_alloc(op, id, KVS_OK, KVS_WIRE_EXISTS_RESP_SIZE);
    if (m) kvs_wire_exists_resp_encode(&e, payload_of(m), KVS_WIRE_EXISTS_RESP_SIZE, NULL);
    return m;
  }
  case KVS_OP_DELETE:
  case KVS_OP_PIN:
  case KVS_OP_UNPIN:
  case KVS_OP_TTL:
    kvs__store_skey(d->st, tenant, &r->u.key.key, &sk);
    rc = op == KVS_OP_DELETE ? kvs__store_delete(d->st, &sk)
         : op == KVS_OP_TTL  ? kvs__store_ttl(d->st, &sk, r->u.key.arg)
                             : kvs__store_pin(d->st, &sk, op == KVS_OP_PIN);
    return rc == KVS_OK ? answer_alloc(op, id, KVS_OK, 0) : answer_err(op, id, rc, NULL);
  case KVS_OP_STATS: {
    uint64_t v[KVS__STAT_COUNT];
    kvs__store_stats(d->st, v);
    kvs__tier_row tr[KVS__MAX_TIER_ROWS];
    kvs_wire_tier_row wr[KVS__MAX_TIER_ROWS];
    int nt = kvs__store_tier_rows(d->st, tr, KVS__MAX_TIER_ROWS);
    for (int i = 0; i < nt; i++) {
      memset(&wr[i], 0, sizeof wr[i]);
      /* names are short (tier list); the wire field bounds them */
      snprintf(wr[i].name, sizeof wr[i].name, "%.*s", (int)sizeof wr[i].name - 1, tr[i].name);
      wr[i].tier = tr[i].wire;
      wr[i].present = tr[i].present;
      wr[i].used = tr[i].used;
      wr[i].capacity = tr[i].capacity;
      wr[i].entries = tr[i].entries;
    }
    size_t sz = kvs_wire_stats_resp_size(KVS__STAT_COUNT, (uint32_t)nt);
    nng_msg *m = answer_alloc(op, id, KVS_OK, sz);
    if (m && kvs_wire_stats_resp_encode_tiers(v, KVS__STAT_COUNT, wr, (uint32_t)nt, payload_of(m),
                                              sz, NULL) != KVS_OK) {
      nng_msg_free(m);
      return answer_err(op, id, KVS_EINTERNAL, "STATS answer");
    }
    return m;
  }
  case KVS_OP_LIST:
  case KVS_OP_EXPORT: return op_page(d, r, tenant);
  case KVS_OP_IMPORT: return op_import(d, r, tenant);
  case KVS_OP_LEASE: return op_lease(d, r, tenant, fast, defer);
  case KVS_OP_RELEASE: {
    uint8_t tid[8];
    kvs__store_tenant_id(d->st, tenant, tid);
    rc = kvs__store_release(d->st, tid, r->u.release_id);
    return rc == KVS_OK ? answer_alloc(op, id, KVS_OK, 0) : answer_err(op, id, rc, NULL);
  }
  case KVS_OP_PUT_RESERVE: return op_reserve(d, r, tenant, conn);
  case KVS_OP_PUT_COMMIT: return op_commit(d, r, tenant);
  case KVS_OP_PUT_ABORT: {
    uint8_t tid[8];
    kvs__store_tenant_id(d->st, tenant, tid);
    rc = kvs__store_resv_abort(d->st, tid, r->u.abort_id);
    return rc == KVS_OK ? answer_alloc(op, id, KVS_OK, 0) : answer_err(op, id, rc, NULL);
  }
  default: return answer_err(op, id, KVS_ENOTSUP, NULL);
  }
}

/* One frame in, one answer out (NULL only when out of memory, or with
 * *defer set when `fast` and the request needs a worker). */
static nng_msg *handle(kvs__dataplane *d, nng_msg *req, int fast, uint16_t *op_out, int *defer) {
  const uint8_t *body = nng_msg_body(req);
  size_t len = nng_msg_len(req);
  kvs_wire_hdr h;
  kvs_err rc = kvs_wire_hdr_decode(body, len, &h);
  *op_out = 0;
  *defer = 0;
  if (rc != KVS_OK) {
    uint64_t id = 0;
    if (len >= 24) memcpy(&id, body + 16, 8);
    atomic_fetch_add_explicit(&d->met->bad_frames, 1, memory_order_relaxed);
    KVS_LOGD("data", "bad frame", "len=%zu err=%s", len, kvs_errname(rc));
    return answer_err(KVS_OP_PING, id, rc, "bad frame header");
  }
  *op_out = h.op;
  if (h.flags & KVS_WIRE_F_RESPONSE) return answer_err(h.op, h.req_id, KVS_EPROTO, "not a request");
  if (!kvs__auth_ok(d->met, &h)) { /* before any other work */
    atomic_fetch_add_explicit(&d->met->auth_failures, 1, memory_order_relaxed);
    char t[KVS_WIRE_TENANT_MAX + 1];
    kvs_wire_hdr_tenant(&h, t);
    KVS_LOGW("data", "auth refused", "tenant=%s op=%s", t, kvs_wire_op_name(h.op));
    return answer_err(h.op, h.req_id, KVS_EAUTH, NULL);
  }
  if (fast && atomic_load(&d->draining)) return answer_err(h.op, h.req_id, KVS_EBUSY, "draining");
  if (fast && d->cfg.n_quotas) { /* the tenant's request rate (quota), once per request */
    char t[KVS_WIRE_TENANT_MAX + 1];
    kvs_wire_hdr_tenant(&h, t);
    if (kvs__store_admit(d->st, t) != KVS_OK)
      return answer_err(h.op, h.req_id, KVS_EQUOTA, "tenant request rate");
  }
  kvs_wire_req r;
  rc = kvs_wire_req_decode(body, len, &r);
  if (rc != KVS_OK) {
    atomic_fetch_add_explicit(&d->met->bad_frames, 1, memory_order_relaxed);
    return answer_err(h.op, h.req_id, rc, "bad payload");
  }
  int pid = nng_pipe_id(nng_msg_get_pipe(req));
  return dispatch(d, &r, fast, defer, pid > 0 ? (uint32_t)pid : 0);
}

static void rctx_recv(rctx *c);

/* ------------------------------------------------- per-pipe accounting */
static pacct **pacct_slot(kvs__dataplane *d, uint32_t id) {
  pacct **pp = &d->pacct[id % KVS__PIPE_BUCKETS];
  while (*pp && (*pp)->id != id)
    pp = &(*pp)->next;
  return pp;
}

/* Adds dheld / dunread / dbytes to the pipe's counts (pmu held); the record
 * goes once nothing is held and the pipe is not jammed (a jammed pipe's
 * record stays until nng removes the pipe: pipe_gone). NULL when there is
 * none (or no memory: the pipe goes unaccounted). */
static pacct *pacct_add(kvs__dataplane *d, uint32_t id, int dheld, int dunread, int64_t dbytes) {
  pacct **pp = pacct_slot(d, id);
  pacct *a = *pp;
  if (!a) {
    if (dheld <= 0 && dunread <= 0) return NULL;
    a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->id = id;
    *pp = a;
  }
  a->held = (uint32_t)((int64_t)a->held + dheld);
  a->unread = (uint32_t)((int64_t)a->unread + dunread);
  a->unread_bytes = (uint64_t)((int64_t)a->unread_bytes + dbytes);
  if (a->held == 0 && a->unread == 0 && !a->jammed) {
    *pp = a->next;
    free(a);
    return NULL;
  }
  return a;
}

/* nng removed a pipe: its record may go (on an nng thread; from on_pipe). */
static void pipe_gone(nng_pipe p, kvs__dataplane *d) {
  pthread_mutex_lock(&d->pmu);
  pacct **pp = pacct_slot(d, nng_pipe_id(p));
  if (*pp) {
    (*pp)->jammed = 0;
    (void)pacct_add(d, (*pp)->id, 0, 0, 0);
  }
  pthread_mutex_unlock(&d->pmu);
}

/* The peer of pipe `a` does not take its answers: every answer of it still
 * waiting for the pipe is cancelled (its context goes back to serving
 * others), and from now on its requests are dropped unanswered. The pipe is
 * not closed from here: nng 1.5.2 can deadlock its reaper when a pipe is
 * closed locally while the peer's data is still being read (upstream
 * nng#1543; gdb showed the stuck rep0_pipe_stop), so the connection stays
 * until its peer closes it, costing one idle connection. pmu held. */
static void pipe_jam(kvs__dataplane *d, pacct *a, const char *why) {
  if (!a || a->jammed) return;
  a->jammed = 1;
  atomic_fetch_add_explicit(&d->met->slow_jammed, 1, memory_order_relaxed);
  KVS_LOGW("data", "connection jammed: its answers are not read; dropping them",
           "pipe=%u why=%s unread=%u bytes=%llu", a->id, why, a->unread,
           (unsigned long long)a->unread_bytes);
  for (int i = 0; i < d->nctx; i++) {
    rctx *x = &d->ctx[i];
    /* sending is cleared under pmu before the context moves on, so this
     * cancels a send (to this pipe), never a later receive */
    if (x->sending && (uint32_t)nng_pipe_id(x->pipe) == a->id) nng_aio_cancel(x->aio);
  }
}

static void rctx_send(rctx *c, nng_msg *rep) {
  kvs__dataplane *d = c->d;
  KVS__INC(d->met, KVS_STAT_REQUESTS, 1);
  uint32_t pid = nng_pipe_id(c->pipe);
  if (rep) {
    int32_t st;
    memcpy(&st, (uint8_t *)nng_msg_body(rep) + 12, 4);
    if (st != 0) KVS__INC(d->met, KVS_STAT_ERRORS, 1);
  } else { /* out of memory: no answer (the client times out), next request */
    KVS__INC(d->met, KVS_STAT_ERRORS, 1);
  }
  pthread_mutex_lock(&d->pmu);
  pacct *a = pacct_add(d, pid, -1, 0, 0);
  if (rep && a && a->jammed) { /* its answers are not read: dropped */
    nng_msg_free(rep);
    rep = NULL;
  }
  if (rep) {
    c->send_len = nng_msg_len(rep);
    a = pacct_add(d, pid, 0, 1, (int64_t)c->send_len);
    if (a && (a->unread > KVS__PIPE_MAX_UNREAD || a->unread_bytes > KVS__PIPE_MAX_UNREAD_BYTES))
      pipe_jam(d, a, "too many answers not read");
    c->sending = 1;
  }
  pthread_mutex_unlock(&d->pmu);
  if (!rep) {
    atomic_fetch_sub(&d->inflight, 1);
    if (!atomic_load(&d->closing)) rctx_recv(c);
    return;
  }
  nng_aio_set_msg(c->aio, rep);
  /* the answer must be taken within the deadline, or the pipe is jammed */
  nng_aio_set_timeout(c->aio, (nng_duration)d->cfg.deadline_ms);
  nng_ctx_send(c->ctx, c->aio);
}

/* A REP context that receives again without having sent abandons the
 * request it held (how requests of a jammed pipe are dropped). */
static void rctx_recv(rctx *c) {
  nng_aio_set_timeout(c->aio, NNG_DURATION_INFINITE); /* waiting for a request: no limit */
  nng_ctx_recv(c->ctx, c->aio);
}

static void rctx_cb(void *arg) {
  rctx *c = arg;
  kvs__dataplane *d = c->d;
  int rv = nng_aio_result(c->aio);
  if (c->sending) {
    if (rv != 0) nng_msg_free(nng_aio_get_msg(c->aio));
    pthread_mutex_lock(&d->pmu);
    c->sending = 0;
    pacct *a = pacct_add(d, nng_pipe_id(c->pipe), 0, -1, -(int64_t)c->send_len);
    if (rv == NNG_ETIMEDOUT) {
      atomic_fetch_add_explicit(&d->met->timeouts, 1, memory_order_relaxed);
      pipe_jam(d, a, "answer not taken within the deadline");
    }
    pthread_mutex_unlock(&d->pmu);
    uint64_t dt = kvs_now_ns() - c->t0;
    if (c->op >= 1 && c->op <= KVS__OP_MAX) kvs__hist_observe(&d->met->op_latency[c->op], dt);
    atomic_fetch_sub(&d->inflight, 1);
    if (!atomic_load(&d->closing)) rctx_recv(c);
    return;
  }
  if (rv != 0) {
    if (rv != NNG_ECLOSED && rv != NNG_ECANCELED && !atomic_load(&d->closing)) rctx_recv(c);
    return;
  }
  nng_msg *req = nng_aio_get_msg(c->aio);
  pthread_mutex_lock(&d->pmu);
  c->pipe = nng_msg_get_pipe(req);
  pacct *a = pacct_add(d, nng_pipe_id(c->pipe), 1, 0, 0);
  int drop = a && a->jammed; /* its answers are not read: nothing is run for it */
  if (drop) (void)pacct_add(d, a->id, -1, 0, 0);
  pthread_mutex_unlock(&d->pmu);
  if (drop) {
    nng_msg_free(req);
    if (!atomic_load(&d->closing)) rctx_recv(c);
    return;
  }
  atomic_fetch_add(&d->inflight, 1);
  c->t0 = kvs_now_ns();
  int defer = 0;
  nng_msg *rep = handle(d, req, 1, &c->op, &defer);
  if (defer) {
    c->req = req;
    pthread_mutex_lock(&d->qmu);
    c->next = NULL;
    if (d->qtail)
      d->qtail->next = c;
    else
      d->qhead = c;
    d->qtail = c;
    pthread_cond_signal(&d->qcv);
    pthread_mutex_unlock(&d->qmu);
    return;
  }
  nng_msg_free(req);
  rctx_send(c, rep);
}

static void *worker_main(void *arg) {
  kvs__dataplane *d = arg;
  for (;;) {
    pthread_mutex_lock(&d->qmu);
    while (!d->qhead && !d->qstop)
      pthread_cond_wait(&d->qcv, &d->qmu);
    rctx *c = d->qhead;
    if (!c) { /* stopping and nothing left */
      pthread_mutex_unlock(&d->qmu);
      break;
    }
    d->qhead = c->next;
    if (!d->qhead) d->qtail = NULL;
    pthread_mutex_unlock(&d->qmu);
    nng_msg *rep;
    uint64_t waited = kvs_now_ns() - c->t0;
    if (waited > (uint64_t)d->cfg.deadline_ms * 1000000ull) {
      atomic_fetch_add_explicit(&d->met->timeouts, 1, memory_order_relaxed);
      kvs_wire_hdr h;
      uint64_t id = 0;
      if (kvs_wire_hdr_decode(nng_msg_body(c->req), nng_msg_len(c->req), &h) == KVS_OK)
        id = h.req_id;
      rep = answer_err(c->op, id, KVS_ETIMEDOUT, "queued past the request deadline");
    } else {
      int defer = 0;
      t_frame = &c->req; /* a PUT may take it over */
      rep = handle(d, c->req, 0, &c->op, &defer);
      t_frame = NULL;
    }
    if (c->req) nng_msg_free(c->req);
    c->req = NULL;
    uint64_t dt = kvs_now_ns() - c->t0;
    if (dt > (uint64_t)d->cfg.deadline_ms * 1000000ull)
      KVS_LOGW("data", "request over deadline", "op=%s ms=%llu", kvs_wire_op_name(c->op),
               (unsigned long long)(dt / 1000000));
    rctx_send(c, rep);
  }
  return NULL;
}

/* Connected clients (a gauge): nng pipes added and removed; a removed pipe's
 * accounting record goes too (pipe_gone). */
static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg) {
  kvs__dataplane *d = arg;
  atomic_fetch_add(&d->met->clients_msg, ev == NNG_PIPE_EV_ADD_POST ? 1 : -1);
  if (ev == NNG_PIPE_EV_REM_POST) {
    pipe_gone(p, d);
    kvs__store_resv_drop_conn(d->st, (uint32_t)nng_pipe_id(p)); /* its put reservations */
  }
}

kvs_err kvs__dataplane_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                             kvs__dataplane **out) {
  kvs__dataplane *d = calloc(1, sizeof *d);
  if (!d) return KVS_ENOMEM;
  d->cfg = *c;
  d->st = st;
  d->met = met;
  int rv = nng_rep0_open(&d->sock);
  if (rv != 0) {
    free(d);
    return KVS_EINTERNAL;
  }
  d->sock_open = 1;
  pthread_mutex_init(&d->pmu, NULL);
  nng_socket_set_size(d->sock, NNG_OPT_RECVMAXSZ, (size_t)c->max_msg);
  (void)nng_pipe_notify(d->sock, NNG_PIPE_EV_ADD_POST, on_pipe, d);
  (void)nng_pipe_notify(d->sock, NNG_PIPE_EV_REM_POST, on_pipe, d);
  for (int i = 0; i < c->n_listen; i++) {
    if (kvs__stream_url(c->listen[i])) continue; /* stream.c's */
    nng_listener l;
    rv = nng_listener_create(&l, d->sock, c->listen[i]);
    if (rv == 0 && strncmp(c->listen[i], "ipc://", 6) == 0)
      (void)nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
    if (rv == 0 && strncmp(c->listen[i], "tls+tcp://", 10) == 0) {
      if (!d->tls) {
        if (!c->tls_cert_key_file[0]) {
          KVS_LOGE("data", "tls+tcp:// needs tls_cert_key_file", "url=%s", c->listen[i]);
          kvs__dataplane_stop(d);
          return KVS_EINVAL;
        }
        rv = nng_tls_config_alloc(&d->tls, NNG_TLS_MODE_SERVER);
        if (rv == 0) rv = nng_tls_config_cert_key_file(d->tls, c->tls_cert_key_file, NULL);
      }
      if (rv == 0) rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, d->tls);
    }
    if (rv == 0) rv = nng_listener_start(l, 0);
    if (rv != 0) {
      KVS_LOGE("data", "cannot listen", "url=%s err=\"%s\"", c->listen[i], nng_strerror(rv));
      kvs__dataplane_stop(d);
      return rv == NNG_EADDRINUSE ? KVS_EBUSY : KVS_ECONN;
    }
    KVS_LOGI("data", "listening", "url=%s", c->listen[i]);
  }
  pthread_mutex_init(&d->qmu, NULL);
  pthread_cond_init(&d->qcv, NULL);
  d->nw = c->workers > 0 ? c->workers : 1;
  d->workers = calloc((size_t)d->nw, sizeof *d->workers);
  /* one connection holds at most KVS__PIPE_MAX_UNREAD + 1 of them in sends */
  d->nctx = d->nw * 4 > 256 ? d->nw * 4 : 256;
  d->ctx = calloc((size_t)d->nctx, sizeof *d->ctx);
  if (!d->workers || !d->ctx) {
    d->nw = 0; /* no thread started yet: none to join */
    kvs__dataplane_stop(d);
    return KVS_ENOMEM;
  }
  for (int i = 0; i < d->nw; i++) {
    if (pthread_create(&d->workers[i], NULL, worker_main, d) != 0) {
      d->nw = i;
      kvs__dataplane_stop(d);
      return KVS_EINTERNAL;
    }
  }
  for (int i = 0; i < d->nctx; i++) {
    rctx *x = &d->ctx[i];
    x->d = d;
    if (nng_aio_alloc(&x->aio, rctx_cb, x) != 0 || nng_ctx_open(&x->ctx, d->sock) != 0) {
      kvs__dataplane_stop(d);
      return KVS_EINTERNAL;
    }
    x->open = 1;
  }
  for (int i = 0; i < d->nctx; i++)
    rctx_recv(&d->ctx[i]);
  *out = d;
  return KVS_OK;
}

/* nng_close on a thread of its own, waited for at most KVS__CLOSE_WAIT_MS:
 * nng 1.5.2 can deadlock there (upstream nng#1543: a pipe closed while its
 * peer's data is being read never finishes its reap; gdb: rep0_pipe_stop
 * waiting on the pipe's receive). Past the bound the socket is left to the
 * process's exit (logged) and the stop goes on: the store is still flushed
 * and closed. The cell is the thread's: it frees it when it ever returns. */
#define KVS__CLOSE_WAIT_MS 5000
typedef struct closer {
  nng_socket s;
  atomic_int state; /* 0 closing, 1 closed, 2 abandoned by the waiter */
} closer;
static void *close_main(void *arg) {
  closer *cl = arg;
  nng_close(cl->s);
  if (atomic_exchange(&cl->state, 1) == 2) free(cl); /* nobody waits any more */
  return NULL;
}
static int close_bounded(nng_socket s) { /* 1 closed, 0 left to the process's exit */
  closer *cl = calloc(1, sizeof *cl);
  pthread_t th;
  if (!cl || (cl->s = s, pthread_create(&th, NULL, close_main, cl) != 0)) {
    free(cl);
    nng_close(s);
    return 1;
  }
  for (int i = 0; i < KVS__CLOSE_WAIT_MS && atomic_load(&cl->state) == 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  int expect = 0;
  if (atomic_compare_exchange_strong(&cl->state, &expect, 2)) {
    pthread_detach(th);
    KVS_LOGE("data", "nng_close stuck (nng 1.5.2, upstream nng#1543): socket left to exit",
             "waited_ms=%d", KVS__CLOSE_WAIT_MS);
    return 0;
  }
  pthread_join(th, NULL);
  free(cl);
  return 1;
}

void kvs__dataplane_stop(kvs__dataplane *d) {
  if (!d) return;
  kvs__drain(&d->draining, &d->inflight); /* new requests: KVS_EBUSY; those in flight finish */
  atomic_store(&d->closing, 1);
  /* Workers first (what they still send goes out), then our contexts' aios
   * (a pending receive is cancelled while its socket is alive; a callback
   * re-arms nothing once closing), and only then the socket: nng_aio_stop
   * after nng_close could call a cancel function into the freed socket
   * (seen: "panic: pthread_mutex_lock: Invalid argument" at a stop). */
  if (d->workers) {
    pthread_mutex_lock(&d->qmu);
    d->qstop = 1;
    pthread_cond_broadcast(&d->qcv);
    pthread_mutex_unlock(&d->qmu);
    for (int i = 0; i < d->nw; i++)
      pthread_join(d->workers[i], NULL);
    pthread_mutex_destroy(&d->qmu);
    pthread_cond_destroy(&d->qcv);
  }
  for (int i = 0; d->ctx && i < d->nctx; i++)
    if (d->ctx[i].aio) nng_aio_stop(d->ctx[i].aio);
  int closed = !d->sock_open || close_bounded(d->sock);
  d->sock_open = 0;
  if (!closed) return; /* nng may still call on_pipe with d: left to the process's exit */
  for (int i = 0; d->ctx && i < d->nctx; i++) {
    if (d->ctx[i].req) nng_msg_free(d->ctx[i].req);
    if (d->ctx[i].aio) nng_aio_free(d->ctx[i].aio);
  }
  if (d->tls) nng_tls_config_free(d->tls);
  for (int i = 0; i < KVS__PIPE_BUCKETS; i++)
    while (d->pacct[i]) {
      pacct *a = d->pacct[i];
      d->pacct[i] = a->next;
      free(a);
    }
  pthread_mutex_destroy(&d->pmu);
  free(d->ctx);
  free(d->workers);
  free(d);
}
