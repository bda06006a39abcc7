/* admin.c - LIST, EXPORT and IMPORT for operators (kvstash_admin.h), on the
 * same transport as every other call (kvs__roundtrip of conn.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "kvs_wire.h"
#include "kvstash_admin.h"

void kvs_admin_cursor_init(kvs_admin_cursor *cur) { memset(cur, 0, sizeof *cur); }

/* One LIST or EXPORT page request; *rep holds the checked answer, *r its
 * decoded head (views into *rep). */
static int page_call(kvs_client *c, uint16_t op, kvs_admin_cursor *cur, uint32_t limit,
                     nng_msg **rep, kvs_wire_page_resp *r) {
  if (!c || !cur || limit == 0 || limit > KVS_WIRE_MAX_LIST) return KVS_EINVAL;
  kvs_wire_page_req q = {.has_cursor = cur->has, .limit = limit};
  memcpy(q.cursor, cur->next, 16);
  nng_msg *m;
  if (kvs__frame_new(KVS_WIRE_PAGE_REQ_SIZE, &m)) return KVS_ENOMEM;
  int rv = kvs_wire_page_req_encode(&q, kvs__frame_payload(m), KVS_WIRE_PAGE_REQ_SIZE, NULL);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  KVS_TRY(kvs__frame_roundtrip(c, m, op, kvs_wire_op_idempotent(op), rep));
  size_t n = nng_msg_len(*rep) - KVS_WIRE_HDR_SIZE;
  rv = kvs_wire_page_resp_decode(op, kvs__frame_payload(*rep), n, r);
  if (rv) {
    nng_msg_free(*rep);
    *rep = NULL;
    return kvs__seterr(c, KVS_EPROTO, "bad %s answer (%s)", kvs_wire_op_name(op), kvs_errname(rv));
  }
  if (r->more && r->n == 0) { /* no progress: would loop forever */
    nng_msg_free(*rep);
    *rep = NULL;
    return kvs__seterr(c, KVS_EPROTO, "%s page with no item but more to come",
                       kvs_wire_op_name(op));
  }
  cur->has = 1;
  cur->done = !r->more;
  memcpy(cur->next, r->next_cursor, 16);
  return KVS_OK;
}

kvs_err kvs_admin_list(kvs_client *c, kvs_admin_cursor *cur, uint32_t limit, kvs_admin_item *out,
                       size_t *n) {
  if (!out || !n) return KVS_EINVAL;
  *n = 0;
  nng_msg *rep = NULL;
  kvs_wire_page_resp r;
  KVS_TRY(page_call(c, KVS_OP_LIST, cur, limit, &rep, &r));
  if (r.n > limit) {
    nng_msg_free(rep);
    return kvs__seterr(c, KVS_EPROTO, "LIST answer of %u items for a limit of %u", r.n, limit);
  }
  for (uint32_t i = 0; i < r.n; i++) {
    kvs_wire_list_item it;
    kvs_wire_list_item_decode(r.items + (size_t)i * KVS_WIRE_LIST_ITEM_SIZE, &it);
    kvs_admin_item *o = &out[i];
    o->key = it.key;
    o->model = it.model;
    o->n_tokens = it.n_tokens;
    o->kind = it.key_kind;
    o->tier = it.tier;
    o->pinned = it.pinned;
    o->value_bytes = it.value_bytes;
    o->hits = it.hits;
    o->last_used_ms = it.last_used_ms;
    o->created_ms = it.created_ms;
    o->ttl_s = it.ttl_s;
  }
  *n = r.n;
  nng_msg_free(rep);
  return KVS_OK;
}

struct kvs_admin_page {
  nng_msg *rep; /* the records point into it */
  size_t n;
  kvs_admin_record *rec;
};

kvs_err kvs_admin_export(kvs_client *c, kvs_admin_cursor *cur, uint32_t limit,
                         kvs_admin_page **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  nng_msg *rep = NULL;
  kvs_wire_page_resp r;
  KVS_TRY(page_call(c, KVS_OP_EXPORT, cur, limit, &rep, &r));
  kvs_admin_page *p = calloc(1, sizeof *p);
  if (p) p->rec = calloc(r.n ? r.n : 1, sizeof *p->rec);
  if (!p || !p->rec) {
    if (p) free(p);
    nng_msg_free(rep);
    return KVS_ENOMEM;
  }
  p->rep = rep;
  const uint8_t *q = r.items;
  size_t left = r.items_len;
  for (uint32_t i = 0; i < r.n; i++) {
    const uint8_t *head = q;
    kvs_wire_meta m;
    const uint8_t *v;
    int rv = kvs_wire_record_next(&q, &left, &m, &v); /* checked by the page decode */
    if (rv) {
      kvs_admin_page_free(p);
      return kvs__seterr(c, KVS_EPROTO, "bad EXPORT record %u (%s)", i, kvs_errname(rv));
    }
    kvs_admin_record *o = &p->rec[i];
    o->key = m.key;
    o->meta = head + 8;
    o->meta_len = kvs_wire_meta_size(&m);
    o->value = v;
    o->value_bytes = m.value_bytes;
    o->checksum = m.checksum;
  }
  p->n = r.n;
  *out = p;
  return KVS_OK;
}

size_t kvs_admin_page_count(const kvs_admin_page *p) { return p ? p->n : 0; }

const kvs_admin_record *kvs_admin_page_record(const kvs_admin_page *p, size_t i) {
  return p && i < p->n ? &p->rec[i] : NULL;
}

void kvs_admin_page_free(kvs_admin_page *p) {
  if (!p) return;
  if (p->rep) nng_msg_free(p->rep);
  free(p->rec);
  free(p);
}

kvs_err kvs_admin_import(kvs_client *c, const uint8_t *meta, size_t meta_len, const void *value,
                         uint64_t value_bytes) {
  if (!c || !meta || (value_bytes && !value)) return KVS_EINVAL;
  kvs_wire_meta m;
  size_t used = 0;
  int rv = kvs_wire_meta_decode(meta, meta_len, &m, &used);
  if (rv || used != meta_len)
    return kvs__seterr(c, KVS_ECORRUPT, "entry metadata does not decode (%s)",
                       kvs_errname(rv ? rv : KVS_ETRUNC));
  if (m.value_bytes != value_bytes)
    return kvs__seterr(c, KVS_ECORRUPT, "metadata says %llu value bytes, %llu given",
                       (unsigned long long)m.value_bytes, (unsigned long long)value_bytes);
  if (kvs_checksum64(value, (size_t)value_bytes) != m.checksum)
    return kvs__seterr(c, KVS_ECORRUPT, "value does not match the checksum in its metadata");
  size_t rs = kvs_wire_record_size(&m);
  if (rs == 0 || rs > KVS_WIRE_MAX_PAYLOAD - KVS_WIRE_IMPORT_FIXED)
    return kvs__seterr(c, KVS_ETOOBIG, "entry of %llu bytes is too large for one frame",
                       (unsigned long long)value_bytes);
  nng_msg *f;
  if (kvs__frame_new(KVS_WIRE_IMPORT_FIXED + rs, &f)) return KVS_ENOMEM;
  uint8_t *p = kvs__frame_payload(f);
  memset(p, 0, KVS_WIRE_IMPORT_FIXED + rs);
  p[0] = 1; /* u32 count = 1, u32 reserved = 0 */
  size_t w = 0;
  rv = kvs_wire_record_encode_head(&m, p + KVS_WIRE_IMPORT_FIXED, rs, &w);
  if (rv) {
    nng_msg_free(f);
    return rv;
  }
  if (value_bytes) memcpy(p + KVS_WIRE_IMPORT_FIXED + w, value, (size_t)value_bytes);
  nng_msg *rep = NULL;
  /* an import of the same bytes under the same key is the same entry */
  KVS_TRY(kvs__frame_roundtrip(c, f, KVS_OP_IMPORT, kvs_wire_op_idempotent(KVS_OP_IMPORT), &rep));
  kvs_wire_import_resp a;
  rv = kvs_wire_import_resp_decode(kvs__frame_payload(rep), nng_msg_len(rep) - KVS_WIRE_HDR_SIZE,
                                   &a);
  nng_msg_free(rep);
  if (rv) return kvs__seterr(c, KVS_EPROTO, "bad IMPORT answer (%s)", kvs_errname(rv));
  if (a.n_ok != 1)
    return kvs__seterr(c, KVS_EIO, "kvstashd refused the entry (full, too big or invalid)");
  return KVS_OK;
}

/* ------------------------------------------------------------- STATS */
kvs_err kvs_stats_tiers(kvs_client *c, kvs_tier_stat *rows, size_t cap, size_t *n) {
  if (!c || !n || (cap && !rows)) return KVS_EINVAL;
  *n = 0;
  if (c->cluster) return KVS__NOT_ON_CLUSTER(c);
  nng_msg *m, *rep = NULL;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  KVS_TRY(kvs__frame_roundtrip(c, m, KVS_OP_STATS, kvs_wire_op_idempotent(KVS_OP_STATS), &rep));
  kvs_wire_stats_resp *r = malloc(sizeof *r);
  if (!r) {
    nng_msg_free(rep);
    return KVS_ENOMEM;
  }
  int rv =
      kvs_wire_stats_resp_decode(kvs__frame_payload(rep), nng_msg_len(rep) - KVS_WIRE_HDR_SIZE, r);
  nng_msg_free(rep);
  if (rv) {
    free(r);
    return kvs__seterr(c, KVS_EPROTO, "bad STATS answer (%s)", kvs_errname(rv));
  }
  size_t k = r->n_tiers < cap ? r->n_tiers : cap;
  for (size_t i = 0; i < k; i++) {
    memset(&rows[i], 0, sizeof rows[i]);
    memcpy(rows[i].name, r->tiers[i].name, sizeof rows[i].name);
    rows[i].tier = r->tiers[i].tier;
    rows[i].present = r->tiers[i].present;
    rows[i].used = r->tiers[i].used;
    rows[i].capacity = r->tiers[i].capacity;
    rows[i].entries = r->tiers[i].entries;
  }
  free(r);
  *n = k;
  return KVS_OK;
}
