/* Fuzz target: the data-plane frame parsers (requests as the server decodes
 * them, and every response decoder as a client would run it). Whatever the
 * bytes, a parser must return an error or a view that stays inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_wire.h"

static volatile uint64_t sink;

static void touch(const uint8_t *p, size_t n) {
  uint64_t s = 0;
  for (size_t i = 0; i < n; i++)
    s += p[i];
  sink += s;
}

static void check_meta(const kvs_wire_meta *m) {
  touch(m->tokens_le, 4u * m->n_tokens);
  touch(m->seg_end_le, 8u * m->n_segments);
  touch(m->codec_params, m->codec_params_len);
  for (uint32_t g = 0; g < m->n_segments; g++) {
    uint64_t off, len;
    kvs_wire_meta_seg_range(m, g, &off, &len);
    if (off + len > m->value_bytes) abort();
  }
  /* a decoded meta re-encodes to the same size */
  size_t sz = kvs_wire_meta_size(m);
  uint8_t *buf = malloc(sz);
  size_t w = 0;
  if (!buf || kvs_wire_meta_encode(m, buf, sz, &w) != KVS_OK || w != sz) abort();
  kvs_wire_meta m2;
  size_t used = 0;
  if (kvs_wire_meta_decode(buf, w, &m2, &used) != KVS_OK || used != w) abort();
  free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* copy so the sanitizer sees reads past the end */
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  kvs_wire_req r;
  if (kvs_wire_req_decode(buf, size, &r) == KVS_OK) {
    switch (r.hdr.op) {
    case KVS_OP_PUT:
      check_meta(&r.u.put.meta);
      touch(r.u.put.value, (size_t)r.u.put.meta.value_bytes);
      break;
    case KVS_OP_GET: touch(r.u.get.tokens_le, 4u * r.u.get.n_tokens); break;
    case KVS_OP_LEASE: touch(r.u.lease.get.tokens_le, 4u * r.u.lease.get.n_tokens); break;
    case KVS_OP_LOOKUP:
      for (uint32_t i = 0; i < r.u.lookup.n_chunks; i++) {
        kvs_wire_lookup_chunk c;
        kvs_wire_lookup_chunk_at(&r.u.lookup, i, &c);
        touch(r.u.lookup.tokens_le + 4u * c.tok_off, 4u * c.tok_len);
      }
      break;
    case KVS_OP_IMPORT: {
      const uint8_t *q = r.u.import.records;
      size_t left = r.u.import.records_len;
      kvs_wire_meta m;
      const uint8_t *v;
      uint32_t k = 0;
      while (kvs_wire_record_next(&q, &left, &m, &v) == KVS_OK) {
        check_meta(&m);
        touch(v, (size_t)m.value_bytes);
        k++;
      }
      if (k != r.u.import.count) abort();
      break;
    }
    case KVS_OP_PUT_RESERVE:
      if (!r.u.reserve.bytes || r.u.reserve.bytes > KVS_WIRE_MAX_VALUE) abort();
      break;
    case KVS_OP_PUT_COMMIT: {
      check_meta(&r.u.commit.meta);
      /* re-encodes to the very frame payload */
      size_t cn = kvs_wire_put_commit_req_size(&r.u.commit.meta);
      if (cn != size - KVS_WIRE_HDR_SIZE) abort();
      break;
    }
    default: break;
    }
  }
  /* responses: the payload after any valid header, or the raw bytes */
  const uint8_t *p = buf;
  size_t n = size;
  kvs_wire_hdr h;
  if (kvs_wire_hdr_decode(buf, size, &h) == KVS_OK) {
    p = buf + KVS_WIRE_HDR_SIZE;
    n = size - KVS_WIRE_HDR_SIZE;
  }
  kvs_wire_get_resp g;
  if (kvs_wire_get_resp_decode(p, n, &g) == KVS_OK) {
    touch(g.bytes, (size_t)g.byte_len);
    if (g.meta_len) check_meta(&g.meta);
  }
  kvs_wire_lookup_resp l;
  if (kvs_wire_lookup_resp_decode(p, n, &l) == KVS_OK) touch(l.status, l.n_chunks);
  kvs_wire_exists_resp e;
  (void)kvs_wire_exists_resp_decode(p, n, &e);
  kvs_wire_stats_resp s;
  (void)kvs_wire_stats_resp_decode(p, n, &s);
  kvs_wire_page_resp pg;
  if (kvs_wire_page_resp_decode(KVS_OP_LIST, p, n, &pg) == KVS_OK) {
    for (uint32_t i = 0; i < pg.n; i++) {
      kvs_wire_list_item it;
      kvs_wire_list_item_decode(pg.items + (size_t)i * KVS_WIRE_LIST_ITEM_SIZE, &it);
    }
  }
  (void)kvs_wire_page_resp_decode(KVS_OP_EXPORT, p, n, &pg);
  kvs_wire_import_resp ir;
  (void)kvs_wire_import_resp_decode(p, n, &ir);
  kvs_wire_lease_resp lr;
  if (kvs_wire_lease_resp_decode(p, n, &lr) == KVS_OK && lr.meta_len) check_meta(&lr.meta);
  kvs_wire_put_reserve_resp rr;
  if (kvs_wire_put_reserve_resp_decode(p, n, &rr) == KVS_OK) {
    if (rr.shm_name[0] != '/' || rr.offset > UINT64_MAX - rr.bytes) abort();
    uint8_t out[KVS_WIRE_PUT_RESERVE_RESP_SIZE];
    if (kvs_wire_put_reserve_resp_encode(&rr, out, sizeof out, NULL) != KVS_OK ||
        memcmp(out, p, sizeof out) != 0)
      abort(); /* decoded answers re-encode to the same bytes */
  }
  free(buf);
  return 0;
}
