/* Unit tests of core/kvs_wire.h: every op round-trips, every malformed frame
 * is refused with the documented error. `test_wire --write-corpus DIR` writes
 * the seed corpus of fuzz_wire (valid frames of every op, and broken ones). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_test.h"
#include "kvs_wire.h"

static int g_cunit = 1; /* 0 while writing the corpus (no suite running) */
#define MCHK(x)                                                                                    \
  do {                                                                                             \
    int ok_ = (x);                                                                                 \
    if (g_cunit) CU_ASSERT(ok_);                                                                   \
  } while (0)

static kvs_layout sample_layout(void) {
  kvs_layout l = {4, 2, 64, KVS_DTYPE_F16, KVS_ROPE_NORM, 64, 10000.f, 1.f, 0, 0, 0, 0};
  return l;
}

/* A PUT frame: header + meta (n_tok tokens, n_seg segments) + value. Caller frees. */
static uint8_t *make_put(uint32_t n_tok, uint32_t n_seg, size_t vbytes, size_t *len,
                         kvs_wire_meta *out_meta) {
  int32_t *tok = malloc(4u * n_tok);
  uint64_t *seg = malloc(8u * n_seg);
  uint8_t *val = malloc(vbytes ? vbytes : 1);
  unsigned long long st = 42;
  for (uint32_t i = 0; i < n_tok; i++)
    tok[i] = (int32_t)(kvs_test_rand(&st) % 50000);
  for (size_t i = 0; i < vbytes; i++)
    val[i] = (uint8_t)kvs_test_rand(&st);
  for (uint32_t g = 0; g < n_seg; g++)
    seg[g] = (uint64_t)vbytes * (g + 1) / n_seg;
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  kvs_model_id model = kvs_hash128_buf("model", 5);
  m.model = model;
  m.key = kvs_key_content(&model, tok, n_tok);
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = n_tok;
  m.layout = sample_layout();
  m.codec_profile = 7;
  static const uint8_t params[5] = {1, 2, 3, 4, 5};
  m.codec_params = params;
  m.codec_params_len = 5;
  m.n_segments = n_seg;
  m.ttl_s = 60;
  m.value_bytes = vbytes;
  m.checksum = kvs_checksum64(val, vbytes);
  m.tokens_le = (const uint8_t *)tok;
  m.seg_end_le = (const uint8_t *)seg;
  size_t ml = kvs_wire_meta_size(&m);
  size_t total = KVS_WIRE_HDR_SIZE + ml + vbytes;
  uint8_t *f = calloc(1, total);
  kvs_wire_hdr h;
  MCHK(kvs_wire_hdr_init(&h, KVS_OP_PUT, 9, "tenant-a", "secret", 6) == KVS_OK);
  h.payload_len = (uint32_t)(ml + vbytes);
  MCHK(kvs_wire_hdr_encode(&h, f) == KVS_OK);
  size_t w = 0;
  MCHK(kvs_wire_meta_encode(&m, f + KVS_WIRE_HDR_SIZE, ml, &w) == KVS_OK);
  MCHK(w == ml);
  memcpy(f + KVS_WIRE_HDR_SIZE + ml, val, vbytes);
  if (out_meta) *out_meta = m; /* pointers die below: only scalars are used */
  free(tok);
  free(seg);
  free(val);
  *len = total;
  return f;
}

static void test_header_roundtrip(void) {
  kvs_wire_hdr h, d;
  CU_ASSERT_EQUAL(kvs_wire_hdr_init(&h, KVS_OP_PING, 0x1122334455667788ull, "t1", "tok", 3),
                  KVS_OK);
  uint8_t b[KVS_WIRE_HDR_SIZE];
  CU_ASSERT_EQUAL(kvs_wire_hdr_encode(&h, b), KVS_OK);
  CU_ASSERT_EQUAL(b[0], 'K');
  CU_ASSERT_EQUAL(b[3], 'W');
  CU_ASSERT_EQUAL(kvs_wire_hdr_decode(b, sizeof b, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.op, KVS_OP_PING);
  CU_ASSERT_EQUAL(d.req_id, 0x1122334455667788ull);
  CU_ASSERT_EQUAL(d.token_len, 3);
  CU_ASSERT_EQUAL(memcmp(d.token, "tok", 3), 0);
  char t[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(&d, t);
  CU_ASSERT_STRING_EQUAL(t, "t1");
  /* bad tenants are refused at init */
  CU_ASSERT_EQUAL(kvs_wire_hdr_init(&h, KVS_OP_PING, 1, "", NULL, 0), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_wire_hdr_init(&h, KVS_OP_PING, 1, "a b", NULL, 0), KVS_EINVAL);
  CU_ASSERT_EQUAL(
      kvs_wire_hdr_init(&h, KVS_OP_PING, 1, "0123456789012345678901234567890123", NULL, 0),
      KVS_EINVAL);
}

static void test_header_rejects(void) {
  kvs_wire_hdr h, d;
  uint8_t b[KVS_WIRE_HDR_SIZE + 4];
  kvs_wire_hdr_init(&h, KVS_OP_PING, 1, "t", NULL, 0);
  kvs_wire_hdr_encode(&h, b);
  uint8_t c[sizeof b];
#define MUT(off, val, err)                                                                         \
  do {                                                                                             \
    memcpy(c, b, KVS_WIRE_HDR_SIZE);                                                               \
    c[off] = (uint8_t)(val);                                                                       \
    CU_ASSERT_EQUAL(kvs_wire_hdr_decode(c, KVS_WIRE_HDR_SIZE, &d), err);                           \
  } while (0)
  MUT(0, 'X', KVS_EMAGIC);
  MUT(4, KVS_WIRE_VERSION + 1, KVS_EVERSION);
  MUT(4, KVS_WIRE_VERSION - 1, KVS_EVERSION); /* an older peer: refused, not half-read */
  MUT(6, 0, KVS_ENOTSUP);
  MUT(6, 99, KVS_ENOTSUP);
  MUT(8, 0x80, KVS_EPROTO); /* unknown flag */
  MUT(12, 1, KVS_EPROTO);   /* status in a request */
  MUT(24, 1, KVS_ETRUNC);   /* payload_len says 1, none there */
  MUT(28, 0, KVS_EPROTO);   /* no tenant */
  MUT(28, 33, KVS_EPROTO);  /* tenant too long */
  MUT(29, 65, KVS_EPROTO);  /* token too long */
  MUT(30, 1, KVS_EPROTO);   /* reserved */
  MUT(32, ' ', KVS_EPROTO); /* tenant char */
  MUT(40, 'x', KVS_EPROTO); /* tenant padding */
  MUT(100, 1, KVS_EPROTO);  /* token padding */
#undef MUT
  for (size_t n = 0; n < KVS_WIRE_HDR_SIZE; n++)
    CU_ASSERT_EQUAL(kvs_wire_hdr_decode(b, n, &d), KVS_ETRUNC);
  /* trailing bytes that payload_len does not announce */
  memset(b + KVS_WIRE_HDR_SIZE, 0, 4);
  CU_ASSERT_EQUAL(kvs_wire_hdr_decode(b, sizeof b, &d), KVS_ETRUNC);
}

static void test_put_roundtrip(void) {
  size_t n;
  kvs_wire_meta src;
  uint8_t *f = make_put(256, 4, 10000, &n, &src);
  kvs_wire_req r;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(f, n, &r), KVS_OK);
  CU_ASSERT_EQUAL(r.hdr.op, KVS_OP_PUT);
  kvs_wire_meta *m = &r.u.put.meta;
  CU_ASSERT_EQUAL(m->n_tokens, 256);
  CU_ASSERT_EQUAL(m->n_segments, 4);
  CU_ASSERT_EQUAL(m->value_bytes, 10000);
  CU_ASSERT_EQUAL(m->codec_profile, 7);
  CU_ASSERT_EQUAL(m->codec_params_len, 5);
  CU_ASSERT_EQUAL(m->codec_params[4], 5);
  CU_ASSERT_EQUAL(m->ttl_s, 60);
  CU_ASSERT(kvs_layout_equal(&m->layout, &src.layout));
  CU_ASSERT(kvs_hash128_equal(&m->key, &src.key));
  CU_ASSERT_EQUAL(kvs_checksum64(r.u.put.value, 10000), src.checksum);
  CU_ASSERT_EQUAL(m->checksum, src.checksum);
  uint64_t off, len;
  kvs_wire_meta_seg_range(m, 0, &off, &len);
  CU_ASSERT_EQUAL(off, 0);
  CU_ASSERT_EQUAL(len, 2500);
  kvs_wire_meta_seg_range(m, 3, &off, &len);
  CU_ASSERT_EQUAL(off, 7500);
  CU_ASSERT_EQUAL(len, 2500);
  /* the key of the decoded tokens is the key that was sent */
  int32_t *tok = malloc(256 * 4);
  for (uint32_t i = 0; i < 256; i++)
    tok[i] = (int32_t)kvs_wire_rd32(m->tokens_le, i);
  kvs_key k = kvs_key_content(&m->model, tok, 256);
  CU_ASSERT(kvs_hash128_equal(&k, &m->key));
  CU_ASSERT(kvs_wire_tokens_equal(m->tokens_le, tok, 256));
  tok[7] ^= 1;
  CU_ASSERT(!kvs_wire_tokens_equal(m->tokens_le, tok, 256));
  free(tok);
  /* every truncation is refused */
  for (size_t cut = 0; cut < n; cut += (cut < 600 ? 1 : 997)) {
    uint8_t *t = malloc(cut ? cut : 1);
    memcpy(t, f, cut);
    if (cut >= KVS_WIRE_HDR_SIZE) { /* keep payload_len consistent: the payload is short */
      uint32_t pl = (uint32_t)(cut - KVS_WIRE_HDR_SIZE);
      memcpy(t + 24, &pl, 4);
    }
    CU_ASSERT_NOT_EQUAL(kvs_wire_req_decode(t, cut, &r), KVS_OK);
    free(t);
  }
  free(f);
}

static void test_put_rejects(void) {
  size_t n;
  uint8_t *f = make_put(16, 2, 100, &n, NULL);
  uint8_t *c = malloc(n);
  kvs_wire_req r;
  const size_t M = KVS_WIRE_HDR_SIZE;
#define MUT32(off, val, err)                                                                       \
  do {                                                                                             \
    memcpy(c, f, n);                                                                               \
    uint32_t v_ = (val);                                                                           \
    memcpy(c + M + (off), &v_, 4);                                                                 \
    CU_ASSERT_EQUAL(kvs_wire_req_decode(c, n, &r), err);                                           \
  } while (0)
  MUT32(32, 3, KVS_EPROTO);        /* key kind 3 */
  MUT32(36, 0, KVS_ERANGE);        /* zero tokens */
  MUT32(36, 1u << 30, KVS_ERANGE); /* absurd token count, before any allocation */
  MUT32(36, 1000, KVS_ETRUNC);     /* more tokens than bytes */
  MUT32(76, 1u << 20, KVS_ERANGE); /* codec params too long */
  MUT32(80, 0, KVS_ERANGE);        /* zero segments */
  MUT32(80, 100000, KVS_ERANGE);   /* too many segments */
  MUT32(88, 101, KVS_ECORRUPT);    /* value_bytes != last segment end */
  /* segments decreasing */
  memcpy(c, f, n);
  uint64_t bad = 90;
  memcpy(c + M + 128, &bad, 8);
  uint64_t bad2 = 80;
  memcpy(c + M + 128, &bad, 8);
  memcpy(c + M + 136, &bad2, 8);
  CU_ASSERT_EQUAL(kvs_wire_req_decode(c, n, &r), KVS_ECORRUPT);
  /* value shorter than announced: cut one byte and fix payload_len */
  memcpy(c, f, n);
  uint32_t pl = (uint32_t)(n - 1 - M);
  memcpy(c + 24, &pl, 4);
  CU_ASSERT_EQUAL(kvs_wire_req_decode(c, n - 1, &r), KVS_ETRUNC);
#undef MUT32
  free(c);
  free(f);
}

static void test_get_roundtrip(void) {
  int32_t tok[3] = {1, -2, 300000};
  kvs_wire_get_req q = {0};
  q.key = kvs_hash128_buf("k", 1);
  q.model = kvs_hash128_buf("m", 1);
  q.flags = KVS_WIRE_GET_META;
  q.seg_first = 2;
  q.seg_count = 1;
  q.n_tokens = 3;
  q.tokens_le = (const uint8_t *)tok;
  uint8_t b[128];
  size_t w;
  CU_ASSERT_EQUAL(kvs_wire_get_req_encode(&q, b, sizeof b, &w), KVS_OK);
  CU_ASSERT_EQUAL(w, 60);
  kvs_wire_get_req d;
  CU_ASSERT_EQUAL(kvs_wire_get_req_decode(b, w, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.seg_first, 2);
  CU_ASSERT(kvs_wire_tokens_equal(d.tokens_le, tok, 3));
  CU_ASSERT_EQUAL((int32_t)kvs_wire_rd32(d.tokens_le, 1), -2);
  CU_ASSERT_EQUAL(kvs_wire_get_req_decode(b, w - 1, &d), KVS_ETRUNC);
  CU_ASSERT_EQUAL(kvs_wire_get_req_encode(&q, b, 59, &w), KVS_ETOOBIG);
  /* answer with meta and a byte range */
  size_t n;
  kvs_wire_meta src;
  uint8_t *f = make_put(8, 4, 400, &n, &src);
  kvs_wire_req r;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(f, n, &r), KVS_OK);
  kvs_wire_get_resp a = {0};
  a.seg_first = 1;
  a.seg_count = 2;
  a.byte_off = 100;
  a.byte_len = 200;
  a.value_bytes = 400;
  a.checksum = r.u.put.meta.checksum;
  uint8_t out[4096];
  CU_ASSERT_EQUAL(kvs_wire_get_resp_encode_head(&a, &r.u.put.meta, out, sizeof out, &w), KVS_OK);
  memcpy(out + w, r.u.put.value + 100, 200);
  kvs_wire_get_resp ad;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_get_resp_decode(out, w + 200, &ad), KVS_OK);
  CU_ASSERT_EQUAL(ad.meta.n_tokens, 8);
  CU_ASSERT_EQUAL(ad.byte_len, 200);
  CU_ASSERT_EQUAL(memcmp(ad.bytes, r.u.put.value + 100, 200), 0);
  CU_ASSERT_EQUAL(kvs_wire_get_resp_decode(out, w + 199, &ad), KVS_ETRUNC);
  /* byte range outside the value */
  a.byte_off = 300;
  CU_ASSERT_EQUAL(kvs_wire_get_resp_encode_head(&a, NULL, out, sizeof out, &w), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_get_resp_decode(out, w + 200, &ad), KVS_ERANGE);
  free(f);
}

static void test_lookup_roundtrip(void) {
  int32_t tok[10];
  for (int i = 0; i < 10; i++)
    tok[i] = i * 3;
  kvs_model_id model = kvs_hash128_buf("m", 1);
  kvs_wire_lookup_chunk ch[2];
  ch[0].key = kvs_key_prefix(&model, &(kvs_key){{0}}, tok, 5);
  ch[0].tok_off = 0;
  ch[0].tok_len = 5;
  ch[1].key = kvs_key_prefix(&model, &ch[0].key, tok + 5, 5);
  ch[1].tok_off = 5;
  ch[1].tok_len = 5;
  uint8_t b[256];
  size_t w;
  CU_ASSERT_EQUAL(
      kvs_wire_lookup_req_encode(&model, KVS_WIRE_LOOKUP_PREFIX, ch, 2, tok, 10, b, sizeof b, &w),
      KVS_OK);
  CU_ASSERT_EQUAL(w, 32 + 48 + 40);
  kvs_wire_lookup_req d;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_lookup_req_decode(b, w, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.n_chunks, 2);
  kvs_wire_lookup_chunk c;
  kvs_wire_lookup_chunk_at(&d, 1, &c);
  CU_ASSERT(kvs_hash128_equal(&c.key, &ch[1].key));
  CU_ASSERT_EQUAL(c.tok_off, 5);
  CU_ASSERT(kvs_wire_tokens_equal(d.tokens_le + 4 * c.tok_off, tok + 5, 5));
  /* chunk range past the tokens */
  uint32_t v = 6;
  memcpy(b + 32 + 24 + 20, &v, 4);
  CU_ASSERT_EQUAL(kvs_wire_lookup_req_decode(b, w, &d), KVS_ERANGE);
  v = 0xFFFFFFFF; /* overflow attempt: off + len wraps */
  memcpy(b + 32 + 24 + 16, &v, 4);
  CU_ASSERT_EQUAL(kvs_wire_lookup_req_decode(b, w, &d), KVS_ERANGE);
  uint8_t st[3] = {1, 2, 0}, ob[32];
  CU_ASSERT_EQUAL(kvs_wire_lookup_resp_encode(2, st, 3, ob, sizeof ob, &w), KVS_OK);
  kvs_wire_lookup_resp lr;
  CU_ASSERT_EQUAL(kvs_wire_lookup_resp_decode(ob, w, &lr), KVS_OK);
  CU_ASSERT_EQUAL(lr.n_prefix, 2);
  CU_ASSERT_EQUAL(lr.status[1], 2);
  ob[8] = 0; /* prefix claims a miss was cached */
  CU_ASSERT_EQUAL(kvs_wire_lookup_resp_decode(ob, w, &lr), KVS_EPROTO);
}

static void test_small_ops(void) {
  kvs_wire_key_req k = {.key = kvs_hash128_buf("x", 1), .arg = 77};
  uint8_t b[256];
  size_t w;
  CU_ASSERT_EQUAL(kvs_wire_key_req_encode(&k, b, sizeof b, &w), KVS_OK);
  kvs_wire_key_req kd;
  CU_ASSERT_EQUAL(kvs_wire_key_req_decode(b, w, &kd), KVS_OK);
  CU_ASSERT_EQUAL(kd.arg, 77);
  CU_ASSERT_EQUAL(kvs_wire_key_req_decode(b, w + 1, &kd), KVS_ETRUNC);
  kvs_wire_exists_resp e = {1, 2, 1, 12345}, ed;
  CU_ASSERT_EQUAL(kvs_wire_exists_resp_encode(&e, b, sizeof b, &w), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_exists_resp_decode(b, w, &ed), KVS_OK);
  CU_ASSERT_EQUAL(ed.value_bytes, 12345);
  uint64_t sv[KVS__STAT_COUNT];
  for (int i = 0; i < KVS__STAT_COUNT; i++)
    sv[i] = (uint64_t)i * 1000003u;
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_encode(sv, KVS__STAT_COUNT, b, sizeof b, &w), KVS_OK);
  kvs_wire_stats_resp sd;
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w, &sd), KVS_OK);
  CU_ASSERT_EQUAL(sd.n, KVS__STAT_COUNT);
  CU_ASSERT_EQUAL(sd.v[KVS_STAT_HITS], sv[KVS_STAT_HITS]);
  CU_ASSERT_STRING_EQUAL(kvs_wire_stat_name(KVS_STAT_QUARANTINES), "quarantines");
  CU_ASSERT_EQUAL(sd.n_tiers, 0);
  /* version 2: tier rows after the counters */
  kvs_wire_tier_row tr[2] = {{.name = "ram", .tier = 0, .present = 1, .used = 5, .capacity = 9},
                             {.name = "cold", .tier = 2, .used = 7, .capacity = 11, .entries = 3}};
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_encode_tiers(sv, 4, tr, 2, b, sizeof b, &w), KVS_OK);
  CU_ASSERT_EQUAL(w, kvs_wire_stats_resp_size(4, 2));
  CU_ASSERT_EQUAL(w, 8u + 32u + 2u * KVS_WIRE_TIER_ROW_SIZE);
  CU_ASSERT_EQUAL(b[4], 2);                                              /* n_tiers */
  CU_ASSERT(!memcmp(b + 40 + 48 + KVS_WIRE_TIER_OFF_NAME, "cold\0", 5)); /* second row */
  CU_ASSERT_EQUAL(b[40 + 48 + KVS_WIRE_TIER_OFF_TIER], 2);
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w, &sd), KVS_OK);
  CU_ASSERT_EQUAL(sd.n, 4);
  CU_ASSERT_EQUAL(sd.n_tiers, 2);
  CU_ASSERT_STRING_EQUAL(sd.tiers[1].name, "cold");
  CU_ASSERT_EQUAL(sd.tiers[1].tier, 2);
  CU_ASSERT_EQUAL(sd.tiers[1].present, 0);
  CU_ASSERT_EQUAL(sd.tiers[1].used, 7);
  CU_ASSERT_EQUAL(sd.tiers[1].capacity, 11);
  CU_ASSERT_EQUAL(sd.tiers[1].entries, 3);
  CU_ASSERT_EQUAL(sd.tiers[0].present, 1);
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w - 1, &sd), KVS_ETRUNC);
  b[40 + 48 + 1] = 'O'; /* "cOld": not a tier name */
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w, &sd), KVS_EPROTO);
  b[40 + 48 + 1] = 'o';
  b[40 + 48 + KVS_WIRE_TIER_OFF_PAD] = 1; /* padding must be zero */
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w, &sd), KVS_EPROTO);
  b[40 + 48 + KVS_WIRE_TIER_OFF_PAD] = 0;
  b[4] = KVS_WIRE_MAX_TIER_ROWS + 1;
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_decode(b, w, &sd), KVS_ERANGE);
  kvs_wire_tier_row bad = {.name = ""};
  CU_ASSERT_EQUAL(kvs_wire_stats_resp_encode_tiers(sv, 4, &bad, 1, b, sizeof b, &w), KVS_EINVAL);
  kvs_wire_page_req pq = {.has_cursor = 1, .limit = 10}, pd;
  memset(pq.cursor, 0xAB, 16);
  CU_ASSERT_EQUAL(kvs_wire_page_req_encode(&pq, b, sizeof b, &w), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_page_req_decode(b, w, &pd), KVS_OK);
  CU_ASSERT_EQUAL(pd.cursor[15], 0xAB);
  pq.limit = KVS_WIRE_MAX_LIST + 1;
  CU_ASSERT_EQUAL(kvs_wire_page_req_encode(&pq, b, sizeof b, &w), KVS_ERANGE);
  /* LIST page */
  kvs_wire_list_item it = {.n_tokens = 256, .key_kind = 1, .tier = 1, .value_bytes = 99, .hits = 5};
  CU_ASSERT_EQUAL(kvs_wire_page_resp_encode_head(1, 0, NULL, b, sizeof b, &w), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_list_item_encode(&it, b + w, sizeof b - w), KVS_OK);
  kvs_wire_page_resp pr;
  CU_ASSERT_EQUAL(kvs_wire_page_resp_decode(KVS_OP_LIST, b, w + 80, &pr), KVS_OK);
  kvs_wire_list_item itd;
  kvs_wire_list_item_decode(pr.items, &itd);
  CU_ASSERT_EQUAL(itd.hits, 5);
  CU_ASSERT_EQUAL(itd.value_bytes, 99);
  CU_ASSERT_EQUAL(kvs_wire_page_resp_decode(KVS_OP_LIST, b, w + 79, &pr), KVS_ETRUNC);
}

static void test_records(void) {
  size_t n;
  uint8_t *f = make_put(5, 1, 13, &n, NULL);
  kvs_wire_req r;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(f, n, &r), KVS_OK);
  size_t rs = kvs_wire_record_size(&r.u.put.meta);
  CU_ASSERT_EQUAL(rs % 8, 0);
  uint8_t *imp = calloc(1, KVS_WIRE_HDR_SIZE + 8 + 2 * rs);
  uint8_t *p = imp + KVS_WIRE_HDR_SIZE;
  uint32_t two = 2;
  memcpy(p, &two, 4);
  for (int i = 0; i < 2; i++) {
    uint8_t *q = p + 8 + (size_t)i * rs;
    size_t w;
    CU_ASSERT_EQUAL(kvs_wire_record_encode_head(&r.u.put.meta, q, rs, &w), KVS_OK);
    memcpy(q + w, r.u.put.value, 13);
  }
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_IMPORT, 3, "t", NULL, 0);
  h.payload_len = (uint32_t)(8 + 2 * rs);
  kvs_wire_hdr_encode(&h, imp);
  kvs_wire_req d;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(imp, KVS_WIRE_HDR_SIZE + 8 + 2 * rs, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.u.import.count, 2);
  const uint8_t *q = d.u.import.records;
  size_t left = d.u.import.records_len;
  kvs_wire_meta m;
  const uint8_t *v;
  int k = 0;
  while (kvs_wire_record_next(&q, &left, &m, &v) == KVS_OK) {
    CU_ASSERT_EQUAL(kvs_checksum64(v, 13), m.checksum);
    k++;
  }
  CU_ASSERT_EQUAL(k, 2);
  /* count says 3: refused */
  uint32_t three = 3;
  memcpy(p, &three, 4);
  CU_ASSERT_EQUAL(kvs_wire_req_decode(imp, KVS_WIRE_HDR_SIZE + 8 + 2 * rs, &d), KVS_ETRUNC);
  free(imp);
  free(f);
}

static void test_lease(void) {
  size_t n;
  uint8_t *f = make_put(6, 2, 77, &n, NULL);
  kvs_wire_req r;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(f, n, &r), KVS_OK);
  kvs_wire_lease_resp a;
  memset(&a, 0, sizeof a);
  a.lease_id = 99;
  a.expires_ms = 123456789;
  a.offset = 4096;
  a.value_bytes = 77;
  a.checksum = r.u.put.meta.checksum;
  snprintf(a.shm_name, sizeof a.shm_name, "/kvstash-abc-0011");
  uint8_t out[2048];
  size_t w;
  CU_ASSERT_EQUAL(kvs_wire_lease_resp_encode(&a, &r.u.put.meta, out, sizeof out, &w), KVS_OK);
  kvs_wire_lease_resp d;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_lease_resp_decode(out, w, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.lease_id, 99);
  CU_ASSERT_EQUAL(d.offset, 4096);
  CU_ASSERT_STRING_EQUAL(d.shm_name, "/kvstash-abc-0011");
  CU_ASSERT_EQUAL(d.meta.n_tokens, 6);
  CU_ASSERT_EQUAL(kvs_wire_lease_resp_decode(out, w - 1, &d), KVS_ETRUNC);
  out[40] = 'x'; /* a name that is not a shm name */
  CU_ASSERT_EQUAL(kvs_wire_lease_resp_decode(out, w, &d), KVS_EPROTO);
  out[40] = '/';
  uint64_t big = ~0ull; /* offset + size wraps */
  memcpy(out + 16, &big, 8);
  CU_ASSERT_EQUAL(kvs_wire_lease_resp_decode(out, w, &d), KVS_ERANGE);
  /* requests: LEASE = release id + GET; RELEASE = 8 bytes */
  uint8_t req[KVS_WIRE_HDR_SIZE + 8 + 48 + 24];
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_LEASE, 1, "t", NULL, 0);
  h.payload_len = 8 + 48 + 24;
  kvs_wire_hdr_encode(&h, req);
  uint64_t rel = 5;
  memcpy(req + KVS_WIRE_HDR_SIZE, &rel, 8);
  int32_t tok[6] = {1, 2, 3, 4, 5, 6};
  kvs_wire_get_req g = {.n_tokens = 6, .tokens_le = (const uint8_t *)tok};
  kvs_wire_get_req_encode(&g, req + KVS_WIRE_HDR_SIZE + 8, 72, NULL);
  CU_ASSERT_EQUAL_FATAL(kvs_wire_req_decode(req, sizeof req, &r), KVS_OK);
  CU_ASSERT_EQUAL(r.u.lease.release_id, 5);
  CU_ASSERT_EQUAL(r.u.lease.get.n_tokens, 6);
  kvs_wire_hdr_init(&h, KVS_OP_RELEASE, 2, "t", NULL, 0);
  h.payload_len = 8;
  kvs_wire_hdr_encode(&h, req);
  CU_ASSERT_EQUAL(kvs_wire_req_decode(req, KVS_WIRE_HDR_SIZE + 8, &r), KVS_OK);
  CU_ASSERT_EQUAL(r.u.release_id, 5);
  CU_ASSERT_EQUAL(kvs_wire_req_decode(req, KVS_WIRE_HDR_SIZE + 7, &r), KVS_ETRUNC);
  CU_ASSERT_STRING_EQUAL(kvs_wire_op_name(KVS_OP_RELEASE), "RELEASE");
  free(f);
}

/* A deterministic mutation sweep: flip each byte of valid frames; the decoder
 * must never crash and never accept a frame whose view escapes the buffer. */
static void test_mutation_sweep(void) {
  size_t n;
  uint8_t *f = make_put(4, 2, 64, &n, NULL);
  kvs_wire_req r;
  int accepted = 0;
  for (size_t i = 0; i < n; i++) {
    for (int bit = 0; bit < 8; bit += 3) {
      f[i] ^= (uint8_t)(1u << bit);
      if (kvs_wire_req_decode(f, n, &r) == KVS_OK) {
        accepted++;
        CU_ASSERT(r.u.put.value + r.u.put.meta.value_bytes == f + n);
      }
      f[i] ^= (uint8_t)(1u << bit);
    }
  }
  /* flips in the value bytes, token ids, key, checksum etc. stay well-formed */
  CU_ASSERT(accepted > 0);
  free(f);
}

/* ------------------------------------------------------ corpus writer */
static void write_file(const char *dir, const char *name, const uint8_t *p, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *fp = fopen(path, "wb");
  if (!fp) return;
  fwrite(p, 1, n, fp);
  fclose(fp);
}

static size_t frame(uint8_t *out, uint16_t op, const uint8_t *pl, size_t pn) {
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, op, 1, "tenant", "tok", 3);
  h.payload_len = (uint32_t)pn;
  kvs_wire_hdr_encode(&h, out);
  if (pn) memcpy(out + KVS_WIRE_HDR_SIZE, pl, pn);
  return KVS_WIRE_HDR_SIZE + pn;
}

static int write_corpus(const char *dir) {
  g_cunit = 0;
  size_t n;
  uint8_t *f = make_put(6, 3, 48, &n, NULL);
  write_file(dir, "put", f, n);
  write_file(dir, "put_trunc", f, n - 5);
  kvs_wire_req r;
  kvs_wire_req_decode(f, n, &r);
  uint8_t buf[8192], pl[4096];
  size_t w;
  write_file(dir, "ping", buf, frame(buf, KVS_OP_PING, NULL, 0));
  write_file(dir, "stats", buf, frame(buf, KVS_OP_STATS, NULL, 0));
  int32_t tok[6] = {1, 2, 3, 4, 5, 6};
  kvs_wire_get_req g = {.key = r.u.put.meta.key,
                        .model = r.u.put.meta.model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = 6,
                        .tokens_le = (const uint8_t *)tok};
  kvs_wire_get_req_encode(&g, pl, sizeof pl, &w);
  write_file(dir, "get", buf, frame(buf, KVS_OP_GET, pl, w));
  kvs_wire_lookup_chunk ch[2] = {{r.u.put.meta.key, 0, 3}, {r.u.put.meta.key, 3, 3}};
  kvs_wire_lookup_req_encode(&r.u.put.meta.model, 1, ch, 2, tok, 6, pl, sizeof pl, &w);
  write_file(dir, "lookup", buf, frame(buf, KVS_OP_LOOKUP, pl, w));
  kvs_wire_key_req k = {.key = r.u.put.meta.key, .arg = 5};
  kvs_wire_key_req_encode(&k, pl, sizeof pl, &w);
  write_file(dir, "ttl", buf, frame(buf, KVS_OP_TTL, pl, w));
  write_file(dir, "delete", buf, frame(buf, KVS_OP_DELETE, pl, w));
  kvs_wire_page_req pq = {.has_cursor = 0, .limit = 50};
  kvs_wire_page_req_encode(&pq, pl, sizeof pl, &w);
  write_file(dir, "list", buf, frame(buf, KVS_OP_LIST, pl, w));
  size_t rs = kvs_wire_record_size(&r.u.put.meta);
  memset(pl, 0, sizeof pl);
  pl[0] = 1;
  kvs_wire_record_encode_head(&r.u.put.meta, pl + 8, rs, &w);
  memcpy(pl + 8 + w, r.u.put.value, 48);
  write_file(dir, "import", buf, frame(buf, KVS_OP_IMPORT, pl, 8 + rs));
  /* a GET answer with meta */
  kvs_wire_get_resp a = {.seg_first = 0,
                         .seg_count = 3,
                         .byte_len = 48,
                         .value_bytes = 48,
                         .checksum = r.u.put.meta.checksum};
  kvs_wire_get_resp_encode_head(&a, &r.u.put.meta, pl, sizeof pl, &w);
  memcpy(pl + w, r.u.put.value, 48);
  write_file(dir, "get_resp", pl, w + 48);
  /* LEASE request and answer */
  uint64_t rel = 3;
  memcpy(pl, &rel, 8);
  kvs_wire_get_req_encode(&g, pl + 8, sizeof pl - 8, &w);
  write_file(dir, "lease", buf, frame(buf, KVS_OP_LEASE, pl, 8 + w));
  write_file(dir, "release", buf, frame(buf, KVS_OP_RELEASE, pl, 8));
  kvs_wire_lease_resp lr;
  memset(&lr, 0, sizeof lr);
  lr.lease_id = 1;
  lr.offset = 64;
  lr.value_bytes = 48;
  lr.checksum = r.u.put.meta.checksum;
  snprintf(lr.shm_name, sizeof lr.shm_name, "/kvstash-0-1");
  kvs_wire_lease_resp_encode(&lr, &r.u.put.meta, pl, sizeof pl, &w);
  write_file(dir, "lease_resp", pl, w);
  free(f);
  printf("corpus written to %s\n", dir);
  return 0;
}

static const kvs_test_case cases[] = {{"header_roundtrip", test_header_roundtrip},
                                      {"header_rejects", test_header_rejects},
                                      {"put_roundtrip", test_put_roundtrip},
                                      {"put_rejects", test_put_rejects},
                                      {"get_roundtrip", test_get_roundtrip},
                                      {"lookup_roundtrip", test_lookup_roundtrip},
                                      {"small_ops", test_small_ops},
                                      {"records", test_records},
                                      {"mutation_sweep", test_mutation_sweep},
                                      {"lease", test_lease},
                                      {NULL, NULL}};

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2]);
  return kvs_test_run("cachesvc_wire", cases);
}
