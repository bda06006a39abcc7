/* fake_kvstashd.c - a STAND-IN for kvstashd, for the client tests only: an
 * in-memory map speaking the data-plane frames of kvs_wire.h (PING, PUT, GET,
 * LOOKUP, EXISTS, DELETE, PIN, UNPIN, TTL, STATS) on one nng REP socket.
 * No tenants' salting, tiers, eviction or persistence: it checks the client's
 * side of the protocol. The suites that need the real server run it instead
 * (tests/client/test_client_ops.c, mode "real"). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "fake_kvstashd.h"
#include "kvs_wire.h"

typedef struct fent {
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_meta meta; /* views point into the copies below */
  uint8_t *tokens, *params, *seg_end, *value;
} fent;

struct fake_kvstashd {
  nng_socket s;
  pthread_t th;
  fent *e;
  size_t n, cap;
  uint64_t puts, gets, hits, misses, requests, bytes_out;
};

static fent *find(fake_kvstashd *f, const char *tenant, const kvs_key *k) {
  for (size_t i = 0; i < f->n; i++)
    if (!strcmp(f->e[i].tenant, tenant) && kvs_hash128_equal(&f->e[i].meta.key, k)) return &f->e[i];
  return NULL;
}

static void drop(fake_kvstashd *f, fent *e) {
  free(e->tokens), free(e->params), free(e->seg_end), free(e->value);
  *e = f->e[--f->n];
}

static uint8_t *dup(const uint8_t *p, size_t n) {
  uint8_t *q = malloc(n ? n : 1);
  if (n) memcpy(q, p, n);
  return q;
}

static void answer(nng_socket s, const kvs_wire_hdr *rq, int status, const void *p, size_t n,
                   const void *p2, size_t n2) {
  nng_msg *m;
  nng_msg_alloc(&m, KVS_WIRE_HDR_SIZE);
  kvs_wire_hdr h = *rq;
  h.flags = KVS_WIRE_F_RESPONSE;
  h.status = status;
  h.payload_len = (uint32_t)(n + n2);
  h.token_len = 0;
  memset(h.token, 0, sizeof h.token);
  kvs_wire_hdr_encode(&h, nng_msg_body(m));
  if (n) nng_msg_append(m, p, n);
  if (n2) nng_msg_append(m, p2, n2);
  if (nng_sendmsg(s, m, 0)) nng_msg_free(m);
}

static void err(nng_socket s, const kvs_wire_hdr *rq, int status, const char *msg) {
  answer(s, rq, status, msg, strlen(msg), NULL, 0);
}

static int matches(const fent *e, const kvs_model_id *model, const uint8_t *tok_le, uint32_t n) {
  return kvs_hash128_equal(&e->meta.model, model) && e->meta.n_tokens == n &&
         !memcmp(e->tokens, tok_le, 4 * (size_t)n);
}

static void serve(fake_kvstashd *f, nng_msg *m) {
  kvs_wire_req r;
  const uint8_t *b = nng_msg_body(m);
  if (kvs_wire_req_decode(b, nng_msg_len(m), &r)) {
    kvs_wire_hdr h;
    memset(&h, 0, sizeof h);
    h.magic = KVS_WIRE_MAGIC, h.version = KVS_WIRE_VERSION, h.op = KVS_OP_PING;
    err(f->s, &h, KVS_EPROTO, "bad frame");
    return;
  }
  f->requests++;
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(&r.hdr, tenant);
  uint8_t buf[1024];
  size_t w = 0;
  switch (r.hdr.op) {
  case KVS_OP_PING: answer(f->s, &r.hdr, 0, NULL, 0, NULL, 0); return;
  case KVS_OP_PUT: {
    const kvs_wire_meta *mt = &r.u.put.meta;
    fent *e = find(f, tenant, &mt->key);
    if (e && (r.hdr.flags & KVS_WIRE_F_NX)) {
      err(f->s, &r.hdr, KVS_EEXIST, "key exists");
      return;
    }
    if (kvs_checksum64(r.u.put.value, mt->value_bytes) != mt->checksum) {
      err(f->s, &r.hdr, KVS_ECHECKSUM, "value checksum");
      return;
    }
    if (e) drop(f, e);
    if (f->n == f->cap) {
      f->cap = f->cap ? 2 * f->cap : 16;
      f->e = realloc(f->e, f->cap * sizeof *f->e);
    }
    e = &f->e[f->n++];
    memset(e, 0, sizeof *e);
    strcpy(e->tenant, tenant);
    e->meta = *mt;
    e->tokens = dup(mt->tokens_le, 4 * (size_t)mt->n_tokens);
    e->params = dup(mt->codec_params, mt->codec_params_len);
    e->seg_end = dup(mt->seg_end_le, 8 * (size_t)mt->n_segments);
    e->value = dup(r.u.put.value, mt->value_bytes);
    e->meta.tokens_le = e->tokens, e->meta.codec_params = e->params;
    e->meta.seg_end_le = e->seg_end;
    f->puts++;
    answer(f->s, &r.hdr, 0, NULL, 0, NULL, 0);
    return;
  }
  case KVS_OP_GET: {
    const kvs_wire_get_req *g = &r.u.get;
    fent *e = find(f, tenant, &g->key);
    f->gets++;
    if (!e) {
      f->misses++;
      err(f->s, &r.hdr, KVS_ENOENT, "no such key");
      return;
    }
    if (!kvs_hash128_equal(&e->meta.model, &g->model)) {
      err(f->s, &r.hdr, KVS_EMODEL, "model differs");
      return;
    }
    if (!matches(e, &g->model, g->tokens_le, g->n_tokens)) {
      err(f->s, &r.hdr, KVS_ETOKENS, "tokens differ");
      return;
    }
    uint32_t ns = e->meta.n_segments, first = g->seg_first;
    uint32_t cnt = g->seg_count == KVS_WIRE_SEG_ALL ? ns - (first < ns ? first : ns) : g->seg_count;
    if (first > ns || cnt > ns - first) {
      err(f->s, &r.hdr, KVS_ERANGE, "segments out of range");
      return;
    }
    uint64_t off = 0, len = 0;
    if (cnt) {
      uint64_t o2, l2;
      kvs_wire_meta_seg_range(&e->meta, first, &off, &l2);
      kvs_wire_meta_seg_range(&e->meta, first + cnt - 1, &o2, &l2);
      len = o2 + l2 - off;
    }
    kvs_wire_get_resp gr = {.seg_first = first,
                            .seg_count = cnt,
                            .byte_off = off,
                            .byte_len = len,
                            .value_bytes = e->meta.value_bytes,
                            .checksum = e->meta.checksum};
    size_t cap = KVS_WIRE_GET_RESP_FIXED + kvs_wire_meta_size(&e->meta);
    uint8_t *head = malloc(cap);
    kvs_wire_get_resp_encode_head(&gr, (g->flags & KVS_WIRE_GET_META) ? &e->meta : NULL, head, cap,
                                  &w);
    f->hits++;
    f->bytes_out += len;
    answer(f->s, &r.hdr, 0, head, w, e->value + off, len);
    free(head);
    return;
  }
  case KVS_OP_LOOKUP: {
    const kvs_wire_lookup_req *q = &r.u.lookup;
    uint8_t *st = calloc(q->n_chunks, 1);
    uint32_t np = 0;
    int run = 1;
    for (uint32_t i = 0; i < q->n_chunks; i++) {
      kvs_wire_lookup_chunk c;
      kvs_wire_lookup_chunk_at(q, i, &c);
      fent *e = find(f, tenant, &c.key);
      int hit = e && matches(e, &q->model, q->tokens_le + 4 * (size_t)c.tok_off, c.tok_len);
      st[i] = hit ? 1 : 0;
      if (!hit) run = 0;
      if (run) np++;
      if (!hit && q->mode == KVS_WIRE_LOOKUP_PREFIX) break;
    }
    size_t cap = kvs_wire_lookup_resp_size(q->n_chunks);
    uint8_t *out = malloc(cap);
    kvs_wire_lookup_resp_encode(np, st, q->n_chunks, out, cap, &w);
    answer(f->s, &r.hdr, 0, out, w, NULL, 0);
    free(out), free(st);
    return;
  }
  case KVS_OP_EXISTS: {
    fent *e = find(f, tenant, &r.u.key.key);
    kvs_wire_exists_resp x = {0};
    if (e && kvs_hash128_equal(&e->meta.model, &r.u.key.model))
      x.present = 1, x.pinned = e->meta.pinned, x.value_bytes = e->meta.value_bytes;
    kvs_wire_exists_resp_encode(&x, buf, sizeof buf, &w);
    answer(f->s, &r.hdr, 0, buf, w, NULL, 0);
    return;
  }
  case KVS_OP_DELETE:
  case KVS_OP_PIN:
  case KVS_OP_UNPIN:
  case KVS_OP_TTL: {
    fent *e = find(f, tenant, &r.u.key.key);
    if (!e) {
      err(f->s, &r.hdr, KVS_ENOENT, "no such key");
      return;
    }
    if (r.hdr.op == KVS_OP_DELETE) {
      if (e->meta.pinned) {
        err(f->s, &r.hdr, KVS_EBUSY, "pinned");
        return;
      }
      drop(f, e);
    } else if (r.hdr.op == KVS_OP_TTL) {
      e->meta.ttl_s = r.u.key.arg;
    } else {
      e->meta.pinned = r.hdr.op == KVS_OP_PIN;
    }
    answer(f->s, &r.hdr, 0, NULL, 0, NULL, 0);
    return;
  }
  case KVS_OP_STATS: {
    uint64_t v[KVS__STAT_COUNT] = {0};
    v[KVS_STAT_ENTRIES] = f->n, v[KVS_STAT_HITS] = f->hits, v[KVS_STAT_MISSES] = f->misses;
    v[KVS_STAT_PUTS] = f->puts, v[KVS_STAT_REQUESTS] = f->requests;
    v[KVS_STAT_BYTES_OUT] = f->bytes_out;
    kvs_wire_stats_resp_encode(v, KVS__STAT_COUNT, buf, sizeof buf, &w);
    answer(f->s, &r.hdr, 0, buf, w, NULL, 0);
    return;
  }
  default: err(f->s, &r.hdr, KVS_ENOTSUP, "op not in the stand-in"); return;
  }
}

static void *run(void *arg) {
  fake_kvstashd *f = arg;
  for (;;) {
    nng_msg *m;
    if (nng_recvmsg(f->s, &m, 0)) return NULL;
    serve(f, m);
    nng_msg_free(m);
  }
}

fake_kvstashd *fake_kvstashd_start(const char *url) {
  fake_kvstashd *f = calloc(1, sizeof *f);
  if (nng_rep0_open(&f->s) || nng_socket_set_size(f->s, NNG_OPT_RECVMAXSZ, 1u << 30) ||
      nng_listen(f->s, url, NULL, 0) || pthread_create(&f->th, NULL, run, f)) {
    nng_close(f->s);
    free(f);
    return NULL;
  }
  return f;
}

void fake_kvstashd_stop(fake_kvstashd *f) {
  if (!f) return;
  nng_close(f->s);
  pthread_join(f->th, NULL);
  while (f->n)
    drop(f, &f->e[0]);
  free(f->e);
  free(f);
}
