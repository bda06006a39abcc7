/* RoPE re-rotation under the scalings real models use (kvs_core.h
 * kvs_rope_scaling): linear, YaRN (Qwen2.5's long-context setting: factor 4
 * over 32K, beta 32/1) and Llama 3.1's "llama3" (factor 8, low 1, high 4, 8K).
 * For each, both pair conventions and f32/f16 K: K computed at position p and
 * shifted by delta equals K computed at p + delta directly, for positions and
 * targets anywhere in [0, 32768), negative shifts included; a shift off by
 * one position is caught. Pure math, no model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_test.h"

enum { H = 2, D = 128, N = 64, MAXPOS = 32768 };

static kvs_layout mk(uint32_t scaling, uint32_t rope_type, uint32_t dtype) {
  kvs_layout l = {.n_layers = 1,
                  .n_kv_heads = H,
                  .head_dim = D,
                  .dtype = dtype,
                  .rope_type = rope_type,
                  .rope_dims = D,
                  .rope_theta = 10000.0f,
                  .rope_freq_scale = 1.0f};
  switch (scaling) {
  case 0: /* linear, factor 4 */ l.rope_freq_scale = 0.25f; break;
  case 1: /* YaRN as Qwen2.5 configures it for 128K: factor 4 over 32K */
    l.rope_theta = 1e6f;
    l.rope_freq_scale = 0.25f;
    l.rope_scaling = KVS_ROPE_SCALING_YARN;
    l.rope_orig_ctx = 32768.0f;
    l.rope_scale_a = 32.0f;
    l.rope_scale_b = 1.0f;
    break;
  case 2: /* Llama 3.1 */
    l.rope_theta = 500000.0f;
    l.rope_freq_scale = 0.125f;
    l.rope_scaling = KVS_ROPE_SCALING_LLAMA3;
    l.rope_orig_ctx = 8192.0f;
    l.rope_scale_a = 1.0f;
    l.rope_scale_b = 4.0f;
    break;
  }
  return l;
}

static const char *NAMES[] = {"linear", "yarn", "llama3"};

/* max |shift(K(p), delta) - K(p + delta)| relative to max |K|, with the
 * shift off by `extra` positions */
static double shift_error(const kvs_layout *l, int64_t extra, unsigned long long *st) {
  float *raw = malloc(sizeof(float) * N * H * D), *a = malloc(sizeof(float) * N * H * D);
  float *b = malloc(sizeof(float) * N * H * D);
  kvs_f16 *a16 = malloc(sizeof(kvs_f16) * N * H * D);
  int64_t pa[N], pb[N];
  for (int i = 0; i < N * H * D; i++)
    raw[i] = kvs_test_randf(st);
  double worst = 0;
  for (int rep = 0; rep < 8; rep++) {
    /* one delta per call of the table: tokens share it */
    int64_t delta = (int64_t)(kvs_test_rand(st) % MAXPOS) - MAXPOS / 2;
    if (rep == 0) delta = MAXPOS - 1; /* 0 -> 32767 */
    if (rep == 1) delta = -(MAXPOS - 1);
    for (int t = 0; t < N; t++) {
      int64_t lo = delta < 0 ? -delta : 0, hi = delta < 0 ? MAXPOS : MAXPOS - delta;
      pa[t] = rep == 0   ? 0
              : rep == 1 ? MAXPOS - 1
                         : lo + (int64_t)(kvs_test_rand(st) % (uint64_t)(hi - lo));
      pb[t] = pa[t] + delta;
    }
    memcpy(a, raw, sizeof(float) * N * H * D);
    memcpy(b, raw, sizeof(float) * N * H * D);
    CU_ASSERT_EQUAL(kvs_rope_apply_f32(l, a, N, H, pa), KVS_OK);
    CU_ASSERT_EQUAL(kvs_rope_apply_f32(l, b, N, H, pb), KVS_OK);
    float table[D];
    CU_ASSERT_EQUAL_FATAL(kvs_rope_shift_table(l, delta + extra, table), KVS_OK);
    double mx = 0, err = 0;
    if (l->dtype == KVS_DTYPE_F16) {
      for (int i = 0; i < N * H * D; i++)
        a16[i] = kvs_f32_to_f16(a[i]);
      CU_ASSERT_EQUAL(kvs_rope_shift(l, a16, N, H * D, table), KVS_OK);
      for (int i = 0; i < N * H * D; i++) {
        mx = fmax(mx, fabs(b[i]));
        err = fmax(err, fabs(kvs_f16_to_f32(a16[i]) - b[i]));
      }
    } else {
      CU_ASSERT_EQUAL(kvs_rope_shift(l, a, N, H * D, table), KVS_OK);
      for (int i = 0; i < N * H * D; i++) {
        mx = fmax(mx, fabs(b[i]));
        err = fmax(err, fabs(a[i] - b[i]));
      }
    }
    worst = fmax(worst, err / mx);
  }
  free(raw), free(a), free(b), free(a16);
  return worst;
}

static void test_shift_equals_direct(void) {
  unsigned long long st = 5;
  for (uint32_t sc = 0; sc < 3; sc++)
    for (int neox = 0; neox <= 1; neox++)
      for (int f16 = 0; f16 <= 1; f16++) {
        kvs_layout l =
            mk(sc, neox ? KVS_ROPE_NEOX : KVS_ROPE_NORM, f16 ? KVS_DTYPE_F16 : KVS_DTYPE_F32);
        CU_ASSERT_EQUAL_FATAL(kvs_layout_validate(&l), KVS_OK);
        double e = shift_error(&l, 0, &st), off = shift_error(&l, 1, &st);
        /* f32: angles in double, one float rotation (measured ~1e-6);
         * f16: K rounded to fp16 before and after (2^-11 relative each) */
        double tol = f16 ? 2e-3 : 1e-4;
        printf("\n  %-6s %s %s: max rel error %.2e (tol %.0e); off by one position %.2e", NAMES[sc],
               neox ? "neox" : "norm", f16 ? "f16" : "f32", e, tol, off);
        CU_ASSERT(e < tol);
        CU_ASSERT(off > 100 * tol);
      }
  printf("\n");
}

/* angle of pair i for a shift of one position */
static double freq_of(const kvs_layout *l, uint32_t i) {
  float t[D];
  CU_ASSERT_EQUAL(kvs_rope_shift_table(l, 1, t), KVS_OK);
  return atan2(t[2 * i + 1], t[2 * i]);
}

/* The frequencies themselves: each scaling's defining limits. */
static void test_frequencies(void) {
  kvs_layout y = mk(1, KVS_ROPE_NEOX, KVS_DTYPE_F32), l3 = mk(2, KVS_ROPE_NORM, KVS_DTYPE_F32);
  kvs_layout lin = mk(0, KVS_ROPE_NORM, KVS_DTYPE_F32);
  /* YaRN: fast pairs (wavelength far below the original context) keep the
   * base frequency, slow ones are interpolated (times freq_scale) */
  CU_ASSERT(fabs(freq_of(&y, 0) - 1.0) < 1e-6);
  double b_last = pow(1e6, -2.0 * (D / 2 - 1) / D);
  CU_ASSERT(fabs(freq_of(&y, D / 2 - 1) - 0.25 * b_last) < 1e-6 * b_last);
  /* llama3: pair 0 (wavelength 2 pi < 8192 / 4) unchanged; the slowest divided by 8 */
  CU_ASSERT(fabs(freq_of(&l3, 0) - 1.0) < 1e-6);
  double b3 = pow(500000.0, -2.0 * (D / 2 - 1) / D);
  CU_ASSERT(fabs(freq_of(&l3, D / 2 - 1) - b3 / 8) < 1e-6 * b3);
  /* between, llama3's smooth mix is monotone: f_i / b_i falls from 1 to 1/8 */
  double prev = 1.0;
  for (uint32_t i = 0; i < D / 2; i++) {
    double r = freq_of(&l3, i) / pow(500000.0, -2.0 * i / D);
    CU_ASSERT(r <= prev + 1e-6 && r >= 0.125 - 1e-6);
    prev = r;
  }
  /* linear: every pair times 0.25 */
  CU_ASSERT(fabs(freq_of(&lin, 0) - 0.25) < 1e-6);
  /* YaRN's mscale multiplies K: |K| grows by 1 + 0.1 ln 4 */
  float x[D], x0[D];
  for (int i = 0; i < D; i++)
    x[i] = x0[i] = (float)(i % 7) - 3.0f;
  int64_t p = 0;
  y.n_kv_heads = 1;
  CU_ASSERT_EQUAL(kvs_rope_apply_f32(&y, x, 1, 1, &p), KVS_OK);
  CU_ASSERT(fabs(x[5] - x0[5] * (1 + 0.1 * log(4.0))) < 1e-5);
}

static void test_validation(void) {
  kvs_layout l = mk(2, KVS_ROPE_NORM, KVS_DTYPE_F16);
  l.rope_scale_b = l.rope_scale_a; /* llama3 needs high > low */
  CU_ASSERT_EQUAL(kvs_layout_validate(&l), KVS_ELAYOUT);
  l = mk(1, KVS_ROPE_NORM, KVS_DTYPE_F16);
  l.rope_orig_ctx = 0;
  CU_ASSERT_EQUAL(kvs_layout_validate(&l), KVS_ELAYOUT);
  l = mk(1, KVS_ROPE_NORM, KVS_DTYPE_F16);
  l.rope_scaling = 7;
  CU_ASSERT_EQUAL(kvs_layout_validate(&l), KVS_ELAYOUT);
  l = mk(0, KVS_ROPE_NORM, KVS_DTYPE_F16);
  l.rope_scale_a = 1; /* parameters without a scaling */
  CU_ASSERT_EQUAL(kvs_layout_validate(&l), KVS_ELAYOUT);
  float t[D];
  CU_ASSERT_EQUAL(kvs_rope_shift_table(&l, 3, t), KVS_ELAYOUT);
  /* layouts that differ only in scaling are different layouts */
  kvs_layout a = mk(2, KVS_ROPE_NORM, KVS_DTYPE_F16), b = a;
  b.rope_scale_b = 8.0f;
  CU_ASSERT(!kvs_layout_equal(&a, &b));
  CU_ASSERT(kvs_layout_equal(&a, &a));
}

int main(void) {
  static const kvs_test_case cases[] = {
      {"shift == K at the new position", test_shift_equals_direct},
      {"scaled frequencies", test_frequencies},
      {"scaled layouts validated", test_validation},
      {NULL, NULL}};
  return kvs_test_run("blend_rope_scaling", cases);
}
