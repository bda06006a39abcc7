#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_test.h"

static kvs_layout mk(uint32_t rope_type, uint32_t rope_dims, uint32_t dtype) {
  kvs_layout l = {.n_layers = 3,
                  .n_kv_heads = 3,
                  .head_dim = 64,
                  .dtype = dtype,
                  .rope_type = rope_type,
                  .rope_dims = rope_dims,
                  .rope_theta = 100000.0f,
                  .rope_freq_scale = 1.0f};
  return l;
}

static float load(const void *p, size_t i, uint32_t dt) {
  return dt == KVS_DTYPE_F16 ? kvs_f16_to_f32(((const kvs_f16 *)p)[i])
                             : kvs_bf16_to_f32(((const kvs_bf16 *)p)[i]);
}
static void store(void *p, size_t i, uint32_t dt, float v) {
  if (dt == KVS_DTYPE_F16)
    ((kvs_f16 *)p)[i] = kvs_f32_to_f16(v);
  else
    ((kvs_bf16 *)p)[i] = kvs_f32_to_bf16(v);
}

/* K rotated at p then shifted by delta equals K rotated at p + delta, within
 * the rounding of the storage type (one extra rounding step). */
static double shift_error(kvs_layout l, int64_t p0, int64_t delta, uint32_t n) {
  unsigned long long s = 11;
  size_t w = (size_t)l.n_kv_heads * l.head_dim;
  float *raw = malloc(n * w * 4), *a = malloc(n * w * 4), *b = malloc(n * w * 4);
  void *k = malloc(n * w * 2);
  int64_t *pa = malloc(n * 8), *pb = malloc(n * 8);
  for (size_t i = 0; i < n * w; i++)
    raw[i] = 4.0f * kvs_test_randf(&s);
  for (uint32_t t = 0; t < n; t++)
    pa[t] = p0 + t, pb[t] = p0 + delta + t;
  memcpy(a, raw, n * w * 4), memcpy(b, raw, n * w * 4);
  CU_ASSERT_EQUAL(kvs_rope_apply_f32(&l, a, n, l.n_kv_heads, pa), KVS_OK);
  CU_ASSERT_EQUAL(kvs_rope_apply_f32(&l, b, n, l.n_kv_heads, pb), KVS_OK);
  for (size_t i = 0; i < n * w; i++)
    store(k, i, l.dtype, a[i]);
  float table[KVS_MAX_HEAD_DIM];
  CU_ASSERT_EQUAL(kvs_rope_shift_table(&l, delta, table), KVS_OK);
  CU_ASSERT_EQUAL(kvs_rope_shift(&l, k, n, w, table), KVS_OK);
  double err = 0, norm = 0;
  for (size_t i = 0; i < n * w; i++) {
    double d = load(k, i, l.dtype) - b[i];
    err = fmax(err, fabs(d));
    norm = fmax(norm, fabs(b[i]));
  }
  free(raw), free(a), free(b), free(k), free(pa), free(pb);
  return err / norm;
}

static void test_rope_shift_exact(void) {
  /* fp16 has 11 significant bits: two roundings stay within ~2^-10 of the max */
  CU_ASSERT(shift_error(mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16), 0, 517, 64) < 2e-3);
  CU_ASSERT(shift_error(mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16), 0, 31000, 16) < 2e-3);
  CU_ASSERT(shift_error(mk(KVS_ROPE_NEOX, 64, KVS_DTYPE_F16), 100, 4000, 32) < 2e-3);
  CU_ASSERT(shift_error(mk(KVS_ROPE_NORM, 32, KVS_DTYPE_F16), 7, 300, 16) < 2e-3);
  CU_ASSERT(shift_error(mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16), 5000, -4000, 16) < 2e-3);
  /* bf16 has 8 significant bits */
  CU_ASSERT(shift_error(mk(KVS_ROPE_NORM, 64, KVS_DTYPE_BF16), 0, 2048, 32) < 1.6e-2);
  /* a shift that would be wrong (off by one position) is detected by the same measure */
  kvs_layout l = mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16);
  CU_ASSERT(shift_error(l, 0, 0, 4) < 1e-3);
}

static void test_rope_shift_off_by_one_detected(void) {
  /* rotating by delta+1 instead of delta must be visibly wrong */
  kvs_layout l = mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16);
  size_t w = (size_t)l.n_kv_heads * l.head_dim;
  unsigned long long s = 3;
  float x[192], y[192];
  int64_t p0 = 10, p1 = 110;
  for (size_t i = 0; i < w; i++)
    x[i] = y[i] = kvs_test_randf(&s);
  kvs_rope_apply_f32(&l, x, 1, l.n_kv_heads, &p0);
  kvs_rope_apply_f32(&l, y, 1, l.n_kv_heads, &p1);
  kvs_f16 k[192];
  for (size_t i = 0; i < w; i++)
    k[i] = kvs_f32_to_f16(x[i]);
  float table[64];
  kvs_rope_shift_table(&l, 101, table);
  kvs_rope_shift(&l, k, 1, w, table);
  double err = 0;
  for (size_t i = 0; i < w; i++)
    err = fmax(err, fabs(kvs_f16_to_f32(k[i]) - y[i]));
  CU_ASSERT(err > 0.05);
}

static void test_shift_chunk_layout(void) {
  kvs_layout l = mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16);
  uint32_t n = 8;
  size_t plane = kvs_layout_plane_elems(&l, n), total = 2 * plane * l.n_layers;
  kvs_f16 *kv = malloc(total * 2), *orig = malloc(total * 2);
  unsigned long long s = 5;
  for (size_t i = 0; i < total; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&s));
  memcpy(orig, kv, total * 2);
  CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&l, kv, n, 1234), KVS_OK);
  for (uint32_t layer = 0; layer < l.n_layers; layer++) {
    /* K changed, V untouched */
    CU_ASSERT(memcmp(kv + 2 * layer * plane, orig + 2 * layer * plane, plane * 2) != 0);
    CU_ASSERT(memcmp(kv + (2 * layer + 1) * plane, orig + (2 * layer + 1) * plane, plane * 2) == 0);
  }
  /* and back: within fp16 rounding of the original */
  CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&l, kv, n, -1234), KVS_OK);
  double err = 0;
  for (size_t i = 0; i < total; i++)
    err = fmax(err, fabs(kvs_f16_to_f32(kv[i]) - kvs_f16_to_f32(orig[i])));
  CU_ASSERT(err < 4e-3);
  CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&l, kv, n, 0), KVS_OK);
  l.rope_dims = 0;
  CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&l, kv, n, 5), KVS_ELAYOUT);
  free(kv), free(orig);
}

static void test_select(void) {
  enum { N = 100 };
  float dev[N];
  uint8_t cs[N] = {0}, sel[N];
  uint32_t cnt;
  for (int i = 0; i < N; i++)
    dev[i] = (float)((i * 37) % 100); /* a permutation of 0..99 */
  cs[0] = cs[40] = cs[70] = 1;
  kvs_sel_params p = kvs_sel_defaults(KVS_SEL_NONE);
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, NULL, cs, sel, &cnt, NULL), KVS_OK);
  CU_ASSERT_EQUAL(cnt, 0);
  p = kvs_sel_defaults(KVS_SEL_FULL);
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, NULL, cs, sel, &cnt, NULL), KVS_OK);
  CU_ASSERT_EQUAL(cnt, N);
  p = kvs_sel_defaults(KVS_SEL_EPIC);
  p.epic_first = 5;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, NULL, cs, sel, &cnt, NULL), KVS_OK);
  CU_ASSERT_EQUAL(cnt, 15);
  CU_ASSERT(sel[0] && sel[4] && !sel[5] && sel[40] && sel[44] && !sel[45] && sel[74] && !sel[75]);
  p = kvs_sel_defaults(KVS_SEL_CACHEBLEND);
  p.ratio = 0.1f;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, NULL), KVS_OK);
  CU_ASSERT_EQUAL(cnt, 10);
  for (int i = 0; i < N; i++)
    CU_ASSERT_EQUAL(sel[i], dev[i] >= 90.0f);
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, NULL, cs, sel, &cnt, NULL), KVS_EINVAL);
  p.ratio = 1.5f;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, NULL), KVS_EINVAL);
  /* NaN deviation: that token is recomputed first */
  p.ratio = 0.01f;
  dev[50] = NAN;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, NULL), KVS_OK);
  CU_ASSERT(cnt == 1 && sel[50]);
  dev[50] = 0;
}

static void test_select_adaptive(void) {
  enum { N = 200 };
  float dev[N];
  uint8_t cs[N] = {0}, sel[N];
  uint32_t cnt, scratch[N];
  /* a few tokens carry most of the deviation */
  for (int i = 0; i < N; i++)
    dev[i] = 0.01f;
  dev[30] = dev[90] = dev[150] = 100.0f;
  cs[0] = cs[100] = 1;
  kvs_sel_params p = kvs_sel_defaults(KVS_SEL_ADAPTIVE);
  p.ratio = 0.5f, p.min_ratio = 0.0f, p.epic_first = 2, p.sink_tokens = 3, p.adaptive_mass = 0.05f;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, scratch), KVS_OK);
  CU_ASSERT(sel[0] && sel[1] && sel[2] && sel[100] && sel[101]);
  CU_ASSERT(sel[30] && sel[90] && sel[150]);
  CU_ASSERT_EQUAL(cnt, 3 + 2 + 3); /* stops once the deviation left is below 5% */
  /* flat deviation: runs to the cap */
  for (int i = 0; i < N; i++)
    dev[i] = 1.0f;
  p.ratio = 0.25f;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, scratch), KVS_OK);
  CU_ASSERT_EQUAL(cnt, 50);
  /* min_ratio forces a floor even when deviation is concentrated */
  for (int i = 0; i < N; i++)
    dev[i] = i == 7 ? 1e6f : 0.0f;
  p.min_ratio = 0.1f;
  CU_ASSERT_EQUAL(kvs_blend_select(&p, N, dev, cs, sel, &cnt, scratch), KVS_OK);
  CU_ASSERT_EQUAL(cnt, 20);
  CU_ASSERT_EQUAL(kvs_sel_parse("adaptive"), KVS_SEL_ADAPTIVE);
  CU_ASSERT_EQUAL(kvs_sel_parse("bogus"), -1);
  CU_ASSERT_STRING_EQUAL(kvs_sel_name(KVS_SEL_EPIC), "epic");
}

static void test_deviation(void) {
  kvs_layout l = mk(KVS_ROPE_NORM, 64, KVS_DTYPE_F16);
  size_t w = 192;
  kvs_f16 ka[2 * 192], va[2 * 192], kb[2 * 192], vb[2 * 192];
  for (size_t i = 0; i < 2 * w; i++)
    ka[i] = va[i] = kb[i] = vb[i] = kvs_f32_to_f16(0.5f);
  kb[3] = kvs_f32_to_f16(1.5f);       /* token 0: +1 */
  vb[w + 10] = kvs_f32_to_f16(-1.5f); /* token 1: +4 */
  float dev[2];
  CU_ASSERT_EQUAL(kvs_blend_deviation_f16(&l, 2, ka, va, kb, vb, dev), KVS_OK);
  CU_ASSERT_DOUBLE_EQUAL(dev[0], 1.0, 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(dev[1], 4.0, 1e-6);
}

static void test_plan(void) {
  kvs_cost_model m = {.fetch_bytes_per_s = 2e9,
                      .fetch_latency_s = 1e-4,
                      .decode_bytes_per_s = 1e9,
                      .prefill_s_per_token = 1e-3,
                      .recompute_ratio = 0.15};
  /* 256 tokens of SmolLM2: 5.9 MB fp16, ~0.6 MB encoded */
  kvs_load_plan p = kvs_blend_plan(&m, 600000, 5898240, 256);
  CU_ASSERT(p.load);
  CU_ASSERT(p.load_s < p.recompute_s);
  /* a slow tier (50 MB/s disk) and a fast engine: recompute wins */
  m.fetch_bytes_per_s = 5e7, m.prefill_s_per_token = 1e-5;
  p = kvs_blend_plan(&m, 600000, 5898240, 256);
  CU_ASSERT(!p.load);
  m.fetch_bytes_per_s = 0;
  p = kvs_blend_plan(&m, 1, 1, 1);
  CU_ASSERT(!p.load);
}

int main(void) {
  static const kvs_test_case cases[] = {
      {"rope shift == rope at new position", test_rope_shift_exact},
      {"wrong shift is detected", test_rope_shift_off_by_one_detected},
      {"shift chunk: K only, reversible", test_shift_chunk_layout},
      {"select: none/full/epic/cacheblend", test_select},
      {"select: adaptive", test_select_adaptive},
      {"deviation", test_deviation},
      {"load-or-recompute plan", test_plan},
      {NULL, NULL}};
  return kvs_test_run("blend", cases);
}
