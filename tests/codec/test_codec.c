/* Round trips of every profile, head ranges, paged output, streaming by
 * segment, and bad input (truncated, corrupt, mismatched bytes). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h" /* kvs__codec_set_simd */
#include "kvs_codec.h"
#include "kvs_synth.h"
#include "kvs_test.h"

static kvs_layout lay(uint32_t L, uint32_t H, uint32_t D, uint32_t dtype) {
  kvs_layout l = {.n_layers = L,
                  .n_kv_heads = H,
                  .head_dim = D,
                  .dtype = dtype,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_dims = D,
                  .rope_theta = 10000.0f,
                  .rope_freq_scale = 1.0f};
  return l;
}

static float elem(const void *p, uint32_t dtype, size_t i) {
  if (dtype == KVS_DTYPE_F32) return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(h) : kvs_f16_to_f32(h);
}

typedef struct enc_t {
  uint8_t *bytes;
  size_t len;
  void *kv;
  size_t kv_elems;
} enc_t;

static enc_t encode(int profile, const kvs_layout *l, uint32_t T, uint32_t lpg, uint64_t seed) {
  enc_t e = {0};
  e.kv_elems = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
  e.kv = malloc(e.kv_elems * 2);
  kvs_synth_kv(l, T, seed, e.kv);
  kvs_codec_params p;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_params_default(profile, l->n_layers, &p), KVS_OK);
  p.layers_per_group = lpg;
  size_t cap = kvs_codec_encode_bound(&p, l, T);
  CU_ASSERT_FATAL(cap > 0);
  e.bytes = malloc(cap);
  kvs_err rc = kvs_codec_encode(&p, l, T, e.kv, e.bytes, cap, &e.len);
  if (rc != KVS_OK) fprintf(stderr, "encode %d: %s\n", profile, kvs_errname(rc));
  CU_ASSERT_EQUAL_FATAL(rc, KVS_OK);
  CU_ASSERT(e.len <= cap);
  return e;
}

static void enc_free(enc_t *e) {
  free(e->bytes);
  free(e->kv);
}

/* relative MSE and whether any output is not finite */
static double rel_mse(const enc_t *e, uint32_t in_dtype, const void *out, uint32_t out_dtype,
                      int *nonfinite) {
  double num = 0, den = 0;
  *nonfinite = 0;
  for (size_t i = 0; i < e->kv_elems; i++) {
    double a = elem(e->kv, in_dtype, i), b = elem(out, out_dtype, i);
    if (!isfinite(b)) *nonfinite = 1;
    num += (a - b) * (a - b);
    den += a * a;
  }
  return num / (den > 0 ? den : 1);
}

/* Upper bounds of relative MSE on the synthetic KV, well above what each
 * profile measures and well below what a broken decoder produces (~1). */
static double bound_of(int profile) {
  switch (profile) {
  case KVS_PROFILE_LOSSLESS: return 0;
  case KVS_PROFILE_INT8: return 3e-4;
  case KVS_PROFILE_KIVI4: return 8e-3;
  case KVS_PROFILE_KIVI2: return 0.16;
  case KVS_PROFILE_FP4: return 0.03;
  case KVS_PROFILE_CACHEGEN: return 0.12;
  case KVS_PROFILE_DENSE: return 0.1;
  }
  return 0;
}

static const int k_profiles[] = {KVS_PROFILE_LOSSLESS, KVS_PROFILE_INT8, KVS_PROFILE_KIVI2,
                                 KVS_PROFILE_KIVI4,    KVS_PROFILE_FP4,  KVS_PROFILE_CACHEGEN,
                                 KVS_PROFILE_DENSE};
#define N_PROFILES (sizeof k_profiles / sizeof k_profiles[0])

static int built(int profile) {
  kvs_codec_params p;
  kvs_layout l = lay(2, 1, 32, KVS_DTYPE_F16);
  kvs_codec_params_default(profile, 2, &p);
  return kvs_codec_encode_bound(&p, &l, 8) > 0;
}

static void roundtrip_one(int profile, const kvs_layout *l, uint32_t T, uint32_t lpg,
                          uint32_t out_dtype) {
  enc_t e = encode(profile, l, T, lpg, 1234 + T);
  kvs_codec_info info;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(e.bytes, e.len, &info), KVS_OK);
  CU_ASSERT_EQUAL(info.profile, (uint32_t)profile);
  CU_ASSERT_EQUAL(info.n_tokens, T);
  CU_ASSERT(kvs_layout_equal(&info.layout, l));
  CU_ASSERT_EQUAL(info.total_bytes, e.len);
  CU_ASSERT_EQUAL(kvs_codec_verify(e.bytes, e.len, NULL), KVS_OK);
  kvs_codec_out o = kvs_codec_out_contiguous(NULL, 0, out_dtype);
  size_t ob = kvs_codec_out_bytes(&info, &o);
  o.base_bytes = ob;
  CU_ASSERT_EQUAL(ob, e.kv_elems * kvs_dtype_size(out_dtype));
  uint8_t *out = malloc(ob);
  memset(out, 0xab, ob);
  o.base = out;
  size_t wsn = kvs_codec_decode_workspace_bound(&info);
  void *ws = malloc(wsn);
  kvs_err rc = kvs_codec_decode(e.bytes, e.len, &o, ws, wsn);
  CU_ASSERT_EQUAL(rc, KVS_OK);
  if (rc != KVS_OK)
    fprintf(stderr, "decode %s: %s\n", kvs_codec_profile_name(profile), kvs_errname(rc));
  int nf;
  double m = rel_mse(&e, l->dtype, out, out_dtype, &nf);
  CU_ASSERT_FALSE(nf);
  CU_ASSERT(m <= bound_of(profile));
  if (m > bound_of(profile))
    fprintf(stderr, "%s T=%u rel_mse=%g > %g\n", kvs_codec_profile_name(profile), T, m,
            bound_of(profile));
  if (profile == KVS_PROFILE_LOSSLESS && out_dtype == l->dtype)
    CU_ASSERT_EQUAL(memcmp(out, e.kv, ob), 0);
  /* lossy means lossy: not a copy (one token is its own mean in dense) */
  if (profile != KVS_PROFILE_LOSSLESS && T > 1) CU_ASSERT(m > 0);
  /* a smaller workspace is refused, never overrun */
  if (wsn > 64) CU_ASSERT_EQUAL(kvs_codec_decode(e.bytes, e.len, &o, ws, 16), KVS_EINVAL);
  free(ws);
  free(out);
  enc_free(&e);
}

static void test_roundtrip(void) {
  kvs_layout a = lay(3, 2, 64, KVS_DTYPE_F16), b = lay(2, 3, 32, KVS_DTYPE_BF16);
  for (size_t i = 0; i < N_PROFILES; i++) {
    int p = k_profiles[i];
    if (!built(p)) continue;
    roundtrip_one(p, &a, 256, 1, KVS_DTYPE_F16);
    roundtrip_one(p, &a, 37, 2, KVS_DTYPE_F32);
    roundtrip_one(p, &b, 100, 1, KVS_DTYPE_BF16);
    roundtrip_one(p, &b, 1, 3, KVS_DTYPE_F16);
  }
}

static void test_names(void) {
  for (size_t i = 0; i < N_PROFILES; i++) {
    const char *n = kvs_codec_profile_name(k_profiles[i]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n);
    CU_ASSERT_EQUAL(kvs_codec_profile_from_name(n), k_profiles[i]);
  }
  CU_ASSERT_PTR_NULL(kvs_codec_profile_name(0));
  CU_ASSERT_EQUAL(kvs_codec_profile_from_name("zip"), -1);
  kvs_codec_params p;
  CU_ASSERT_EQUAL(kvs_codec_params_default(99, 30, &p), KVS_EINVAL);
}

/* Heads [h0,h1) decoded alone equal the same heads of a full decode, and
 * paged output equals contiguous output with guard bytes untouched. */
static void test_heads_paged_segments(void) {
  kvs_layout l = lay(4, 3, 64, KVS_DTYPE_F16);
  uint32_t T = 70, H = 3, D = 64;
  for (size_t pi = 0; pi < N_PROFILES; pi++) {
    int p = k_profiles[pi];
    if (!built(p)) continue;
    enc_t e = encode(p, &l, T, 3, 99);
    kvs_codec_info info;
    CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(e.bytes, e.len, &info), KVS_OK);
    CU_ASSERT_EQUAL(info.n_segments, 2u);
    size_t full_n = e.kv_elems;
    uint16_t *full = malloc(full_n * 2);
    kvs_codec_out o = kvs_codec_out_contiguous(full, full_n * 2, KVS_DTYPE_F16);
    CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(e.bytes, e.len, &o, NULL, 0), KVS_OK);
    /* heads [1,3) */
    size_t part_n = 2ull * 4 * T * 2 * D;
    uint16_t *part = malloc(part_n * 2);
    kvs_codec_out op = kvs_codec_out_contiguous(part, part_n * 2, KVS_DTYPE_F16);
    op.head_begin = 1, op.head_end = 3;
    CU_ASSERT_EQUAL(kvs_codec_out_bytes(&info, &op), part_n * 2);
    CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(e.bytes, e.len, &op, NULL, 0), KVS_OK);
    int same = 1;
    for (uint32_t pl = 0; pl < 8; pl++)
      for (uint32_t t = 0; t < T; t++)
        same &= memcmp(part + (((size_t)pl * T + t) * 2) * D,
                       full + (((size_t)pl * T + t) * H + 1) * D, 2 * D * 2) == 0;
    CU_ASSERT(same);
    /* streamed: segment by segment into a fresh buffer */
    uint16_t *seg = malloc(full_n * 2);
    kvs_codec_out os = kvs_codec_out_contiguous(seg, full_n * 2, KVS_DTYPE_F16);
    size_t wsn = kvs_codec_decode_workspace_bound(&info);
    void *ws = malloc(wsn);
    for (uint32_t g = 0; g < info.n_segments; g++)
      CU_ASSERT_EQUAL(kvs_codec_decode_segment(&info, g, e.bytes + info.seg_offset[g],
                                               info.seg_offset[g + 1] - info.seg_offset[g], &os, ws,
                                               wsn),
                      KVS_OK);
    CU_ASSERT_EQUAL(memcmp(seg, full, full_n * 2), 0);
    /* paged: block size 16, blocks in reverse order, one guard block */
    uint32_t bs = 16, nblk = (T + bs - 1) / bs, num_blocks = nblk + 2;
    int32_t table[16] = {0};
    for (uint32_t i = 0; i < nblk; i++)
      table[i] = (int32_t)(nblk - i);
    size_t cache_n = (size_t)num_blocks * bs * H * D;
    void *kc[4], *vc[4];
    for (int i = 0; i < 4; i++) {
      kc[i] = malloc(cache_n * 2), vc[i] = malloc(cache_n * 2);
      memset(kc[i], 0x5a, cache_n * 2), memset(vc[i], 0x5a, cache_n * 2);
    }
    kvs_codec_out og = {.dtype = KVS_DTYPE_F16,
                        .k_cache = kc,
                        .v_cache = vc,
                        .block_table = table,
                        .block_size = bs,
                        .num_blocks = num_blocks,
                        .n_layers = 4};
    CU_ASSERT_EQUAL(kvs_codec_decode(e.bytes, e.len, &og, ws, wsn), KVS_OK);
    same = 1;
    int guard = 1;
    for (uint32_t layer = 0; layer < 4; layer++)
      for (uint32_t kv = 0; kv < 2; kv++) {
        uint16_t *c = kv ? vc[layer] : kc[layer];
        for (uint32_t t = 0; t < T; t++) {
          size_t slot = (size_t)table[t / bs] * bs + t % bs;
          same &= memcmp(c + slot * H * D, full + (((size_t)(2 * layer + kv) * T + t) * H) * D,
                         H * D * 2) == 0;
        }
        const uint8_t *g0 = (const uint8_t *)c; /* block 0 is not in the table */
        for (size_t i = 0; i < (size_t)bs * H * D * 2; i++)
          guard &= g0[i] == 0x5a;
        /* slots past T in the last used block (table[nblk-1] = 1) stay untouched */
        const uint8_t *tail = (const uint8_t *)(c + ((size_t)1 * bs + T % bs) * H * D);
        for (size_t i = 0; i < (size_t)(bs - T % bs) * H * D * 2; i++)
          guard &= tail[i] == 0x5a;
      }
    CU_ASSERT(same);
    CU_ASSERT(guard);
    /* a block table entry out of range is refused */
    table[0] = (int32_t)num_blocks;
    CU_ASSERT_EQUAL(kvs_codec_decode(e.bytes, e.len, &og, ws, wsn), KVS_EINVAL);
    for (int i = 0; i < 4; i++)
      free(kc[i]), free(vc[i]);
    free(ws), free(seg), free(part), free(full);
    enc_free(&e);
  }
}

static int all_nan(const uint16_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isnan(kvs_f16_to_f32(p[i]))) return 0;
  return 1;
}

static void rehash_header(uint8_t *b) {
  uint32_t nseg = kvs__rd32(b + KVS_CH_N_SEGMENTS);
  if (nseg == 0 || nseg > KVS_CODEC_MAX_SEGMENTS) return;
  uint8_t buf[KVS_CODEC_HEADER_BYTES + 8 * KVS_CODEC_MAX_SEGMENTS];
  memcpy(buf, b, KVS_CH_CHECKSUM);
  memcpy(buf + KVS_CH_CHECKSUM, b + KVS_CODEC_HEADER_BYTES, 8u * nseg);
  kvs__wr64(b + KVS_CH_CHECKSUM, kvs_checksum64(buf, KVS_CH_CHECKSUM + 8u * nseg));
}

static void test_bad_input(void) {
  kvs_layout l = lay(3, 2, 32, KVS_DTYPE_F16);
  uint32_t T = 40;
  for (size_t pi = 0; pi < N_PROFILES; pi++) {
    int p = k_profiles[pi];
    if (!built(p)) continue;
    enc_t e = encode(p, &l, T, 1, 7);
    uint16_t *out = malloc(e.kv_elems * 2);
    kvs_codec_out o = kvs_codec_out_contiguous(out, e.kv_elems * 2, KVS_DTYPE_F16);
    uint8_t *c = malloc(e.len);
    /* truncation at many lengths: an error, and never output that looks valid */
    for (size_t n = 0; n < e.len; n += 1 + e.len / 97) {
      memset(out, 0, e.kv_elems * 2);
      kvs_err rc = kvs_codec_decode(e.bytes, n, &o, NULL, 0);
      CU_ASSERT(rc == KVS_ETRUNC || rc == KVS_ECORRUPT);
      if (n >= 1024) CU_ASSERT(all_nan(out, e.kv_elems));
    }
    /* one flipped bit anywhere: a checksum error (or a header error) */
    uint64_t s = 5;
    for (int k = 0; k < 60; k++) {
      memcpy(c, e.bytes, e.len);
      size_t at = kvs_synth_rand(&s) % e.len;
      c[at] ^= (uint8_t)(1u << (kvs_synth_rand(&s) % 8));
      kvs_err rc = kvs_codec_decode(c, e.len, &o, NULL, 0);
      CU_ASSERT(rc < 0);
      CU_ASSERT(all_nan(out, e.kv_elems));
    }
    /* header fields changed and re-hashed: mismatch errors, not crashes */
    struct {
      size_t off;
      uint32_t val;
      kvs_err want;
    } cases[] = {
        {KVS_CH_MAGIC, 0x12345678u, KVS_EMAGIC},    {KVS_CH_VERSION, 2, KVS_EVERSION},
        {KVS_CH_N_LAYERS, 4, KVS_ECORRUPT},         {KVS_CH_HEAD_DIM, 0, KVS_ELAYOUT},
        {KVS_CH_DTYPE, KVS_DTYPE_F32, KVS_ELAYOUT}, {KVS_CH_N_TOKENS, 0, KVS_ECORRUPT},
        {KVS_CH_N_TOKENS, 41, KVS_ELAYOUT},         {KVS_CH_N_TOKENS, 39, KVS_ECORRUPT},
        {KVS_CH_N_SEGMENTS, 2, KVS_ECHECKSUM},      {KVS_CH_TOTAL_BYTES, 8, KVS_ECORRUPT},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      memcpy(c, e.bytes, e.len);
      kvs__wr32(c + cases[k].off, cases[k].val);
      if (cases[k].want != KVS_ECHECKSUM) rehash_header(c);
      kvs_err rc = kvs_codec_decode(c, e.len, &o, NULL, 0);
      if (rc >= 0 || (cases[k].want != KVS_ECORRUPT && rc != cases[k].want))
        fprintf(stderr, "%s case %zu: got %s\n", kvs_codec_profile_name(p), k, kvs_errname(rc));
      CU_ASSERT(rc < 0);
      if (cases[k].want != KVS_ECORRUPT) CU_ASSERT_EQUAL(rc, cases[k].want);
    }
    /* unknown profile id and flags */
    memcpy(c, e.bytes, e.len);
    c[KVS_CH_PROFILE] = 42;
    rehash_header(c);
    CU_ASSERT_EQUAL(kvs_codec_decode(c, e.len, &o, NULL, 0), KVS_ENOTSUP);
    /* a segment given at the wrong index */
    kvs_codec_info info;
    CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(e.bytes, e.len, &info), KVS_OK);
    CU_ASSERT(kvs_codec_decode_segment(&info, 1, e.bytes + info.seg_offset[0],
                                       info.seg_offset[1] - info.seg_offset[0], &o, NULL, 0) < 0);
    CU_ASSERT_EQUAL(kvs_codec_decode_segment(&info, 9, e.bytes, e.len, &o, NULL, 0), KVS_EINVAL);
    /* trailing bytes after a valid encoding */
    uint8_t *longer = malloc(e.len + 8);
    memcpy(longer, e.bytes, e.len);
    memset(longer + e.len, 0, 8);
    CU_ASSERT_EQUAL(kvs_codec_decode(longer, e.len + 8, &o, NULL, 0), KVS_ECORRUPT);
    free(longer);
    /* bad output arguments */
    kvs_codec_out ob = kvs_codec_out_contiguous(out, e.kv_elems * 2, 7);
    CU_ASSERT_EQUAL(kvs_codec_decode(e.bytes, e.len, &ob, NULL, 0), KVS_EINVAL);
    ob = kvs_codec_out_contiguous(out, e.kv_elems * 2, KVS_DTYPE_F16);
    ob.head_begin = 2, ob.head_end = 2;
    CU_ASSERT_EQUAL(kvs_codec_decode(e.bytes, e.len, &ob, NULL, 0), KVS_EINVAL);
    free(c);
    free(out);
    enc_free(&e);
  }
  /* encoder argument checks */
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_INT8, 3, &p);
  kvs_layout bad = l;
  bad.dtype = KVS_DTYPE_F32;
  CU_ASSERT_EQUAL(kvs_codec_encode_bound(&p, &bad, 4), 0u);
  uint8_t small[64];
  size_t len;
  uint16_t kv[2 * 3 * 4 * 2 * 32] = {0};
  CU_ASSERT_EQUAL(kvs_codec_encode(&p, &bad, 4, kv, small, sizeof small, &len), KVS_ELAYOUT);
  CU_ASSERT_EQUAL(kvs_codec_encode(&p, &l, 4, kv, small, sizeof small, &len), KVS_ENOSPC);
  CU_ASSERT_EQUAL(kvs_codec_encode(&p, &l, 0, kv, small, sizeof small, &len), KVS_EINVAL);
}

/* Inf and NaN in the input must not crash an encoder (they are not KV a
 * model produces, but a buggy producer must get bytes that decode). */
static void test_nonfinite_input(void) {
  kvs_layout l = lay(1, 1, 32, KVS_DTYPE_F16);
  uint16_t kv[2 * 8 * 32];
  for (int i = 0; i < 2 * 8 * 32; i++)
    kv[i] = kvs_f32_to_f16((float)(i % 7) - 3.0f);
  kv[5] = 0x7c00, kv[40] = 0xfc00, kv[300] = 0x7e00;
  for (size_t pi = 0; pi < N_PROFILES; pi++) {
    if (!built(k_profiles[pi])) continue;
    kvs_codec_params p;
    kvs_codec_params_default(k_profiles[pi], 1, &p);
    size_t cap = kvs_codec_encode_bound(&p, &l, 8), len;
    uint8_t *b = malloc(cap);
    CU_ASSERT_EQUAL(kvs_codec_encode(&p, &l, 8, kv, b, cap, &len), KVS_OK);
    uint16_t out[2 * 8 * 32];
    kvs_codec_out o = kvs_codec_out_contiguous(out, sizeof out, KVS_DTYPE_F16);
    CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &o, NULL, 0), KVS_OK);
    free(b);
  }
}

/* Every dense option combination, with head_dim a power of 2 (rotation
 * possible) and not (rotation silently off), round-trips within bounds and
 * keeps the sink token exact when asked. */
static void test_dense_flags(void) {
  kvs_layout ls[2] = {lay(2, 2, 64, KVS_DTYPE_BF16), lay(2, 2, 48, KVS_DTYPE_F16)};
  for (int li = 0; li < 2; li++)
    for (uint32_t f = 0; f <= KVS_DENSE_FLAGS_ALL; f++) {
      const kvs_layout *l = &ls[li];
      uint32_t T = 90;
      size_t ne = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
      uint16_t *kv = malloc(ne * 2), *out = malloc(ne * 2);
      kvs_synth_kv(l, T, 77 + f, kv);
      kvs_codec_params p;
      kvs_codec_params_default(KVS_PROFILE_DENSE, l->n_layers, &p);
      p.k_flags = f, p.v_flags = f ^ KVS_DENSE_TOKEN, p.group = 7; /* odd block size too */
      size_t cap = kvs_codec_encode_bound(&p, l, T), len;
      uint8_t *b = malloc(cap);
      CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, l, T, kv, b, cap, &len), KVS_OK);
      kvs_codec_info info;
      CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(b, len, &info), KVS_OK);
      CU_ASSERT_EQUAL(info.params.k_flags, f);
      CU_ASSERT_EQUAL(info.params.v_flags, f ^ KVS_DENSE_TOKEN);
      kvs_codec_out o = kvs_codec_out_contiguous(out, ne * 2, l->dtype);
      CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(b, len, &o, NULL, 0), KVS_OK);
      double num = 0, den = 0;
      for (size_t i = 0; i < ne; i++) {
        double a = elem(kv, l->dtype, i), c = elem(out, l->dtype, i);
        num += (a - c) * (a - c), den += a * a;
      }
      CU_ASSERT(num / den < 0.05);
      /* the sink row (token 0 of every K plane when f has SINK) is exact */
      size_t row = (size_t)l->n_kv_heads * l->head_dim;
      if (f & KVS_DENSE_SINK)
        for (uint32_t layer = 0; layer < l->n_layers; layer++)
          CU_ASSERT_EQUAL(
              memcmp(kv + (size_t)2 * layer * T * row, out + (size_t)2 * layer * T * row, row * 2),
              0);
      free(b), free(kv), free(out);
    }
}

/* Golden vectors (written by kvs-codec-gengolden): every encoding decodes to
 * the same f16 bytes as when it was written, and every bad one fails with
 * the same error. Catches accidental format changes. */
/* dense with calibrated channel weights (kvs_codec_params.chan_weight, encoder
 * only): the stream decodes with the ordinary decoder; a channel weighted 256x
 * its neighbours (step / 16) comes back with a far smaller error (< 1/4) than without
 * weights, the others with a larger one; without KVS_DENSE_CHAN the weights are
 * ignored (the same bytes as without them). */
static double chan_err(const uint16_t *a, const uint16_t *b, const kvs_layout *l, uint32_t T,
                       uint32_t pl, uint32_t c, int others) {
  size_t HD = (size_t)l->n_kv_heads * l->head_dim;
  double e = 0;
  for (uint32_t t = 1; t < T; t++)
    for (size_t j = 0; j < HD; j++) {
      if (others ? j == c : j != c) continue;
      size_t i = ((size_t)pl * T + t) * HD + j;
      double d = elem(a, l->dtype, i) - elem(b, l->dtype, i);
      e += d * d;
    }
  return e;
}

static void test_dense_chan_weight(void) {
  kvs_layout l = lay(3, 2, 64, KVS_DTYPE_F16);
  uint32_t T = 200, HD = 128, c = 37;
  size_t ne = 2ull * l.n_layers * T * HD;
  uint16_t *kv = malloc(ne * 2), *o1 = malloc(ne * 2), *o2 = malloc(ne * 2);
  float *w = malloc(sizeof(float) * l.n_layers * 2 * HD);
  kvs_synth_kv(&l, T, 5, kv);
  for (size_t i = 0; i < (size_t)l.n_layers * 2 * HD; i++)
    w[i] = i % HD == c ? 256.0f : 1.0f;
  uint16_t *outs[2] = {o1, o2};
  size_t lens[2][2];
  for (int cw = 0; cw < 2; cw++)
    for (int chan = 0; chan < 2; chan++) {
      kvs_codec_params p;
      kvs_codec_params_default(KVS_PROFILE_DENSE, l.n_layers, &p);
      p.k_flags = KVS_DENSE_SINK | (chan ? KVS_DENSE_CHAN : 0);
      p.v_flags = KVS_DENSE_SINK | KVS_DENSE_TOKEN | (chan ? KVS_DENSE_CHAN : 0);
      p.chan_weight = cw ? w : NULL;
      size_t cap = kvs_codec_encode_bound(&p, &l, T);
      uint8_t *b = malloc(cap);
      CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, &l, T, kv, b, cap, &lens[cw][chan]), KVS_OK);
      if (chan) {
        kvs_codec_out o = kvs_codec_out_contiguous(outs[cw], ne * 2, l.dtype);
        CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(b, lens[cw][chan], &o, NULL, 0), KVS_OK);
      }
      free(b);
    }
  CU_ASSERT_EQUAL(lens[0][0], lens[1][0]); /* no CHAN flag: weights unused */
  for (uint32_t pl = 0; pl < 2 * l.n_layers; pl++) {
    double e_plain = chan_err(kv, o1, &l, T, pl, c, 0), e_w = chan_err(kv, o2, &l, T, pl, c, 0);
    CU_ASSERT(e_w * 4 < e_plain);
    CU_ASSERT(chan_err(kv, o2, &l, T, pl, c, 1) > chan_err(kv, o1, &l, T, pl, c, 1));
  }
  free(kv), free(o1), free(o2), free(w);
}

static void test_golden(void) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", kvs_test_src_path("tests/codec/golden"));
  char mp[4200];
  snprintf(mp, sizeof mp, "%s/MANIFEST", dir);
  FILE *m = fopen(mp, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  char line[512], file[256], err[64], hash[64];
  int n = 0, n_ok = 0, n_bad = 0;
  while (fgets(line, sizeof line, m)) {
    if (line[0] == '#' || sscanf(line, "%255s %63s %63s", file, err, hash) != 3) continue;
    char fp[4600];
    snprintf(fp, sizeof fp, "%s/%s", dir, file);
    FILE *f = fopen(fp, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    CU_ASSERT_EQUAL(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    size_t ne = 2ull * 2 * 24 * 2 * 32; /* the golden chunk's shape */
    uint16_t *out = malloc(ne * 2);
    kvs_codec_out o = kvs_codec_out_contiguous(out, ne * 2, KVS_DTYPE_F16);
    kvs_err rc = kvs_codec_decode(b, (size_t)sz, &o, NULL, 0);
    if (strcmp(kvs_errname(rc), err) != 0)
      fprintf(stderr, "golden %s: got %s, want %s\n", file, kvs_errname(rc), err);
    CU_ASSERT_STRING_EQUAL(kvs_errname(rc), err);
    if (rc == KVS_OK) {
      char h[32];
      snprintf(h, sizeof h, "%016llx", (unsigned long long)kvs_checksum64(out, ne * 2));
      CU_ASSERT_STRING_EQUAL(h, hash);
      n_ok++;
    } else {
      CU_ASSERT(all_nan(out, ne)); /* failed decodes never look like KV */
      n_bad++;
    }
    free(b), free(out);
    n++;
  }
  fclose(m);
  CU_ASSERT(n_ok >= 7);
  CU_ASSERT(n_bad >= 8);
}

/* Massive activations (a few elements 1000x the rest) in K planes are kept
 * exact by the dense exception list instead of being clipped at 127 steps;
 * the TP head-range path applies them too. (V planes with per-token scales
 * never clip: an outlier raises its token's scale instead.) */
static void test_dense_exceptions(void) {
  kvs_layout l = lay(2, 2, 64, KVS_DTYPE_F16);
  uint32_t T = 64;
  size_t ne = 2ull * 2 * T * 2 * 64;
  uint16_t *kv = malloc(ne * 2), *out = malloc(ne * 2);
  kvs_synth_kv(&l, T, 3, kv);
  size_t spots[] = {1000, 5000, 17000, 17001, 24575}; /* K planes: [0,8192), [16384,24576) */
  for (size_t i = 0; i < 5; i++)
    kv[spots[i]] = kvs_f32_to_f16(i % 2 ? -3000.0f : 2500.0f);
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_DENSE, 2, &p);
  size_t cap = kvs_codec_encode_bound(&p, &l, T), len;
  uint8_t *b = malloc(cap);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, &l, T, kv, b, cap, &len), KVS_OK);
  kvs_codec_out o = kvs_codec_out_contiguous(out, ne * 2, KVS_DTYPE_F16);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(b, len, &o, NULL, 0), KVS_OK);
  for (size_t i = 0; i < 5; i++)
    CU_ASSERT_EQUAL(out[spots[i]], kv[spots[i]]);
  /* head 1 alone: element 24575 is (layer 1 K, t 63, head 1, d 63) */
  uint16_t *half = malloc(ne);
  kvs_codec_out oh = kvs_codec_out_contiguous(half, ne, KVS_DTYPE_F16);
  oh.head_begin = 1;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(b, len, &oh, NULL, 0), KVS_OK);
  CU_ASSERT_EQUAL(half[2 * 64 * 64 + 63 * 64 + 63], kv[24575]);
  free(b), free(kv), free(out), free(half);
}

/* The run-time SIMD decode paths (AVX2 where the CPU has it) give the same
 * bytes as the scalar reference paths, for every dense option, head dims
 * that are and are not multiples of 8, blocks that end mid-step, head
 * ranges and every output dtype; and corrupt streams fail the same way. */
static void test_dense_simd_equal(void) {
  if (!kvs__cpu_has_avx2()) fprintf(stderr, "dense_simd_equal: no AVX2 here, scalar vs scalar\n");
  struct {
    uint32_t H, D, T, group, dtype;
  } shapes[] = {{2, 64, 90, 7, KVS_DTYPE_BF16},
                {3, 20, 33, 256, KVS_DTYPE_F16},
                {2, 128, 300, 256, KVS_DTYPE_F16},
                {1, 32, 1, 1, KVS_DTYPE_F16},
                {4, 48, 129, 5, KVS_DTYPE_BF16}};
  const uint32_t flags[] = {0, KVS_DENSE_SINK, KVS_DENSE_TOKEN | KVS_DENSE_SINK,
                            KVS_DENSE_FLAGS_ALL, KVS_DENSE_CHAN | KVS_DENSE_ROTATED};
  const uint32_t odt[] = {KVS_DTYPE_F16, KVS_DTYPE_BF16, KVS_DTYPE_F32};
  int n_cmp = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
    for (size_t fi = 0; fi < sizeof flags / sizeof flags[0]; fi++) {
      kvs_layout l = lay(2, shapes[si].H, shapes[si].D, shapes[si].dtype);
      uint32_t T = shapes[si].T;
      size_t ne = 2ull * l.n_layers * T * l.n_kv_heads * l.head_dim;
      uint16_t *kv = malloc(ne * 2);
      kvs_synth_kv(&l, T, 500 + si * 10 + fi, kv);
      kv[ne / 3] = kvs_f32_to_f16(4000.0f); /* an exception or two */
      kvs_codec_params p;
      kvs_codec_params_default(KVS_PROFILE_DENSE, l.n_layers, &p);
      p.k_flags = flags[fi], p.v_flags = flags[fi] ^ KVS_DENSE_TOKEN, p.group = shapes[si].group;
      p.k_step = 0.2f + 0.1f * (float)fi;
      size_t cap = kvs_codec_encode_bound(&p, &l, T), len;
      uint8_t *b = malloc(cap);
      CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, &l, T, kv, b, cap, &len), KVS_OK);
      uint8_t *o1 = malloc(ne * 4), *o2 = malloc(ne * 4);
      for (size_t di = 0; di < 3; di++)
        for (uint32_t h0 = 0; h0 < 2 && h0 < l.n_kv_heads; h0++) {
          size_t ob = ne * kvs_dtype_size(odt[di]) / l.n_kv_heads * (l.n_kv_heads - h0);
          kvs_codec_out o = kvs_codec_out_contiguous(o1, ob, odt[di]);
          o.head_begin = h0;
          memset(o1, 0x11, ob), memset(o2, 0x22, ob);
          kvs__codec_set_simd(0);
          CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &o, NULL, 0), KVS_OK);
          kvs__codec_set_simd(1);
          o.base = o2;
          CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &o, NULL, 0), KVS_OK);
          CU_ASSERT_EQUAL(memcmp(o1, o2, ob), 0);
          n_cmp++;
        }
      /* a flipped stream byte: same error either way (the checksum is fixed up) */
      kvs_codec_info info;
      CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(b, len, &info), KVS_OK);
      for (int k = 0; k < 4; k++) {
        uint8_t *c = malloc(len);
        memcpy(c, b, len);
        size_t seg = info.seg_offset[k % info.n_segments],
               seg_end = info.seg_offset[k % info.n_segments + 1];
        size_t at = seg_end - 1 - (size_t)(k * 37) % ((seg_end - seg) / 3);
        c[at] ^= (uint8_t)(1u << k);
        kvs__wr64(c + seg + KVS_SH_CHECKSUM,
                  kvs_checksum64(c + seg + KVS_CODEC_SEG_HEADER_BYTES,
                                 seg_end - seg - KVS_CODEC_SEG_HEADER_BYTES));
        kvs_codec_out o = kvs_codec_out_contiguous(o1, ne * 2, KVS_DTYPE_F16);
        kvs__codec_set_simd(0);
        kvs_err r0 = kvs_codec_decode(c, len, &o, NULL, 0);
        kvs__codec_set_simd(1);
        o.base = o2;
        kvs_err r1 = kvs_codec_decode(c, len, &o, NULL, 0);
        CU_ASSERT_EQUAL(r0, r1);
        if (r0 == KVS_OK) CU_ASSERT_EQUAL(memcmp(o1, o2, ne * 2), 0);
        free(c);
      }
      free(b), free(kv), free(o1), free(o2);
    }
  CU_ASSERT(n_cmp >= 100);
}

/* kvs_codec_encode_planes (the GPU encoder's container) around the CPU
 * encoder's own plane bodies gives the CPU encoder's bytes; a body whose
 * plane_bytes lies is refused. */
typedef struct planes_src {
  const uint8_t *body[64];
  uint32_t len[64];
  int lie;
} planes_src;

static kvs_err planes_fn(void *ctx, uint32_t layer, uint32_t kv, uint8_t *out, size_t cap,
                         size_t *len) {
  planes_src *ps = ctx;
  uint32_t p = 2 * layer + kv;
  if (ps->len[p] > cap) return KVS_ENOSPC;
  memcpy(out, ps->body[p], ps->len[p]);
  *len = ps->len[p] - (ps->lie ? 4 : 0);
  return KVS_OK;
}

static void test_encode_planes(void) {
  kvs_layout l = lay(5, 2, 64, KVS_DTYPE_BF16);
  enc_t e = encode(KVS_PROFILE_DENSE, &l, 70, 2, 9);
  kvs_codec_info info;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(e.bytes, e.len, &info), KVS_OK);
  planes_src ps = {{0}, {0}, 0};
  for (uint32_t g = 0; g < info.n_segments; g++) {
    const uint8_t *q = e.bytes + info.seg_offset[g] + KVS_CODEC_SEG_HEADER_BYTES;
    for (uint32_t i = 0; i < 2 * kvs__rd32(e.bytes + info.seg_offset[g] + KVS_SH_N_LAYERS); i++) {
      uint32_t p = 2 * g * info.layers_per_group + i;
      ps.body[p] = q, ps.len[p] = kvs__rd32(q);
      q += ps.len[p];
    }
  }
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_DENSE, l.n_layers, &p);
  p.layers_per_group = 2;
  size_t cap = kvs_codec_encode_bound(&p, &l, 70), len = 0;
  uint8_t *b = malloc(cap);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_encode_planes(&p, &l, 70, planes_fn, &ps, b, cap, &len), KVS_OK);
  CU_ASSERT_EQUAL(len, e.len);
  CU_ASSERT_EQUAL(memcmp(b, e.bytes, len), 0);
  ps.lie = 1;
  CU_ASSERT_EQUAL(kvs_codec_encode_planes(&p, &l, 70, planes_fn, &ps, b, cap, &len), KVS_EINTERNAL);
  CU_ASSERT_EQUAL(kvs_codec_encode_planes(&p, &l, 70, NULL, &ps, b, cap, &len), KVS_EINVAL);
  free(b);
  enc_free(&e);
}

static uint8_t *slurp_golden(const char *name, size_t *n) {
  char fp[4200];
  snprintf(fp, sizeof fp, "%s/%s", kvs_test_src_path("tests/codec/golden"), name);
  FILE *f = fopen(fp, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
  *n = b ? fread(b, 1, (size_t)sz, f) : 0;
  fclose(f);
  return b;
}

/* The raw profile (codec/raw.c): the golden vector is what the encoder
 * writes today, byte for byte; it and the pre-session-6 form (magic "KVSR")
 * decode to the input exactly, by head range and to f32; bad descriptors and
 * group sizes fail with their errors. */
static void test_raw(void) {
  kvs_layout l = {2, 2, 32, KVS_DTYPE_F16, KVS_ROPE_NORM, 32, 10000.0f, 1.0f, 0, 0, 0, 0};
  const uint32_t T = 24, H = 2, D = 32;
  const size_t ne = 2ull * 2 * T * H * D;
  uint16_t *kv = malloc(ne * 2), *out = malloc(ne * 2);
  float *o32 = malloc(ne * 4);
  kvs_synth_kv(&l, T, 2024, kv);
  size_t rn = kvs_codec_raw_bytes(&l, T);
  CU_ASSERT_EQUAL_FATAL(rn, KVS_RAW_DESC_BYTES + ne * 2);
  uint8_t *r = malloc(rn);
  uint64_t seg_end[8];
  uint32_t nseg = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_raw_encode(&l, T, 1, kv, r, rn, seg_end, 8, &nseg), KVS_OK);
  CU_ASSERT_EQUAL(nseg, 1 + 2 * H);
  CU_ASSERT_EQUAL(seg_end[0], KVS_RAW_DESC_BYTES);
  CU_ASSERT_EQUAL(seg_end[nseg - 1], rn);
  CU_ASSERT_EQUAL(kvs__rd32(r + KVS_RD_MAGIC), KVS_RAW_MAGIC);
  CU_ASSERT(memcmp(r, "KVRW", 4) == 0);
  size_t gn = 0, vn = 0;
  uint8_t *gold = slurp_golden("raw.kvr", &gn), *v0 = slurp_golden("raw_v0.kvr", &vn);
  CU_ASSERT_PTR_NOT_NULL_FATAL(gold);
  CU_ASSERT_PTR_NOT_NULL_FATAL(v0);
  CU_ASSERT(gn == rn && memcmp(gold, r, rn) == 0);
  CU_ASSERT(vn == rn && memcmp(v0, "KVSR", 4) == 0 && memcmp(v0 + 4, r + 4, rn - 4) == 0);
  for (int legacy = 0; legacy < 2; legacy++) {
    const uint8_t *b = legacy ? v0 : gold;
    kvs_codec_raw_info info;
    CU_ASSERT_EQUAL_FATAL(kvs_codec_raw_parse(b, KVS_RAW_DESC_BYTES, &l, T, &info), KVS_OK);
    CU_ASSERT_EQUAL(info.legacy_magic, legacy);
    CU_ASSERT(info.layers_per_group == 1 && info.n_groups == 2);
    memset(out, 0xFF, ne * 2);
    for (uint32_t g = 0; g < info.n_groups; g++) {
      uint64_t s0 = seg_end[g * H], s1 = seg_end[(g + 1) * H];
      CU_ASSERT_EQUAL(
          kvs_codec_raw_decode_group(&info, g, 0, H, b + s0, s1 - s0, out, ne * 2, KVS_DTYPE_F16),
          KVS_OK);
    }
    CU_ASSERT(memcmp(out, kv, ne * 2) == 0);
    /* head 1 of group 1 alone, widened to f32: [L][2][T][1][D] */
    uint64_t s0 = seg_end[1 * H + 1], s1 = seg_end[2 * H];
    CU_ASSERT_EQUAL(
        kvs_codec_raw_decode_group(&info, 1, 1, 2, b + s0, s1 - s0, o32, ne * 2, KVS_DTYPE_F32),
        KVS_OK);
    int same = 1;
    for (int kvi = 0; kvi < 2; kvi++)
      for (uint32_t t = 0; t < T; t++)
        for (uint32_t d = 0; d < D; d++) {
          float want = kvs_f16_to_f32(kv[(((size_t)(2 * 1 + kvi) * T + t) * H + 1) * D + d]);
          same &= o32[((size_t)(2 * 1 + kvi) * T + t) * D + d] == want;
        }
    CU_ASSERT(same);
    CU_ASSERT_EQUAL(kvs_codec_raw_decode_group(&info, 0, 0, H, b + seg_end[0],
                                               seg_end[H] - seg_end[0] - 1, out, ne * 2,
                                               KVS_DTYPE_F16),
                    KVS_ECORRUPT);
    CU_ASSERT_EQUAL(kvs_codec_raw_decode_group(&info, 0, 0, H, b + seg_end[0],
                                               seg_end[H] - seg_end[0], out, ne * 2 - 1,
                                               KVS_DTYPE_F16),
                    KVS_ERANGE);
    CU_ASSERT_EQUAL(kvs_codec_raw_decode_group(&info, 2, 0, H, b, 1, out, ne * 2, KVS_DTYPE_F16),
                    KVS_EINVAL);
  }
  /* bad descriptors */
  kvs_codec_raw_info info;
  uint8_t d[KVS_RAW_DESC_BYTES];
  memcpy(d, gold, sizeof d);
  d[0] = 'X';
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T, &info), KVS_EMAGIC);
  memcpy(d, gold, 4);
  kvs__wr32(d + 0, KVS_CODEC_MAGIC); /* a codec chunk's magic is not a raw descriptor */
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T, &info), KVS_EMAGIC);
  memcpy(d, gold, sizeof d);
  kvs__wr32(d + KVS_RD_VERSION, 2);
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T, &info), KVS_EVERSION);
  memcpy(d, gold, sizeof d);
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d - 1, &l, T, &info), KVS_ECORRUPT);
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T + 1, &info), KVS_ECORRUPT);
  kvs_layout l2 = l;
  l2.head_dim = 64;
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l2, T, &info), KVS_ELAYOUT);
  kvs__wr32(d + KVS_RD_N_GROUPS, 3);
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T, &info), KVS_ECORRUPT);
  kvs__wr32(d + KVS_RD_N_GROUPS, 2);
  kvs__wr32(d + KVS_RD_LAYERS_PER_GROUP, 0);
  CU_ASSERT_EQUAL(kvs_codec_raw_parse(d, sizeof d, &l, T, &info), KVS_ECORRUPT);
  /* encoder arguments */
  CU_ASSERT_EQUAL(kvs_codec_raw_encode(&l, T, 1, kv, r, rn - 1, seg_end, 8, &nseg), KVS_ENOSPC);
  CU_ASSERT_EQUAL(kvs_codec_raw_encode(&l, T, 1, kv, r, rn, seg_end, 4, &nseg), KVS_ETOOBIG);
  CU_ASSERT_EQUAL(kvs_codec_raw_encode(&l, T, 0, kv, r, rn, seg_end, 8, &nseg), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_codec_raw_lpg(&l, 0, 4096), 1);
  CU_ASSERT_EQUAL(kvs_codec_raw_lpg(&l, 1, 3), 2); /* 1 + 2 groups x 2 heads > 3 */
  CU_ASSERT_EQUAL(kvs_codec_raw_bytes(&l, 0), 0);
  free(kv), free(out), free(o32), free(r), free(gold), free(v0);
}

static const kvs_test_case cases[] = {{"encode_planes", test_encode_planes},
                                      {"dense_simd_equal", test_dense_simd_equal},
                                      {"dense_flags", test_dense_flags},
                                      {"dense_chan_weight", test_dense_chan_weight},
                                      {"dense_exceptions", test_dense_exceptions},
                                      {"golden", test_golden},
                                      {"raw", test_raw},
                                      {"names", test_names},
                                      {"roundtrip", test_roundtrip},
                                      {"heads_paged_segments", test_heads_paged_segments},
                                      {"bad_input", test_bad_input},
                                      {"nonfinite_input", test_nonfinite_input},
                                      {NULL, NULL}};

int main(void) { return kvs_test_run("codec", cases); }
