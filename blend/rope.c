#include <math.h>
#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#include <string.h>

#include "kvs_blend.h"

static kvs_err check_layout(const kvs_layout *l) {
  KVS_TRY(kvs_layout_validate(l));
  KVS_RETURN_ERROR_IF(l->rope_dims == 0, KVS_ELAYOUT, "layout has no rotated dims");
  return KVS_OK;
}

/* YaRN correction dim of llama.cpp (ggml_rope_yarn_corr_dim): the dim whose
 * wavelength turns n_rot times over the original context. */
static double yarn_corr_dim(const kvs_layout *l, double n_rot) {
  return l->rope_dims * log(l->rope_orig_ctx / (n_rot * 2 * M_PI)) / (2 * log(l->rope_theta));
}

/* Effective frequency f_i of pair i (kvs_core.h, kvs_rope_scaling), as a
 * double: position p is rotated by p * f_i. */
static double rope_freq(const kvs_layout *l, uint32_t i) {
  double b = pow((double)l->rope_theta, -2.0 * i / (double)l->rope_dims);
  double s = l->rope_freq_scale;
  switch (l->rope_scaling) {
  case KVS_ROPE_SCALING_YARN: {
    /* ggml rope_yarn: theta = p b (s (1 - r) + r), r = ramp over the dims
     * [floor(corr(beta_fast)), ceil(corr(beta_slow))] clamped to [0, dims-1] */
    double lo = fmax(0.0, floor(yarn_corr_dim(l, l->rope_scale_a)));
    double hi = fmin(l->rope_dims - 1.0, ceil(yarn_corr_dim(l, l->rope_scale_b)));
    double y = ((double)i - lo) / fmax(0.001, hi - lo);
    double r = 1.0 - fmin(1.0, fmax(0.0, y));
    return b * (s * (1.0 - r) + r);
  }
  case KVS_ROPE_SCALING_LLAMA3: {
    /* Llama 3.1: keep short wavelengths, divide long ones by the factor,
     * mix smoothly between (transformers' _compute_llama3_parameters) */
    double factor = 1.0 / s, lo = l->rope_scale_a, hi = l->rope_scale_b, orig = l->rope_orig_ctx;
    double wavelen = 2 * M_PI / b;
    if (wavelen < orig / hi) return b;
    if (wavelen > orig / lo) return b / factor;
    double smooth = (orig / wavelen - lo) / (hi - lo);
    return (1.0 - smooth) * b / factor + smooth * b;
  }
  default: return s * b;
  }
}

/* YaRN's magnitude scale of Q and K (1 for the other scalings). */
static double rope_mscale(const kvs_layout *l) {
  return l->rope_scaling == KVS_ROPE_SCALING_YARN ? 1.0 + 0.1 * log(1.0 / l->rope_freq_scale) : 1.0;
}

kvs_err kvs_rope_shift_table(const kvs_layout *l, int64_t delta, float *table) {
  if (!l || !table) return KVS_EINVAL;
  KVS_TRY(check_layout(l));
  for (uint32_t i = 0; i < l->rope_dims / 2; i++) {
    double a = (double)delta * rope_freq(l, i);
    table[2 * i] = (float)cos(a);
    table[2 * i + 1] = (float)sin(a);
  }
  return KVS_OK;
}

/* the pair (a, b) of frequency i inside one head vector */
static inline void pair_index(const kvs_layout *l, uint32_t i, uint32_t *a, uint32_t *b) {
  if (l->rope_type == KVS_ROPE_NEOX) {
    *a = i;
    *b = i + l->rope_dims / 2;
  } else {
    *a = 2 * i;
    *b = 2 * i + 1;
  }
}

static inline float ld(const void *p, size_t idx, uint32_t dt) {
  switch (dt) {
  case KVS_DTYPE_F16: return kvs_f16_to_f32(((const kvs_f16 *)p)[idx]);
  case KVS_DTYPE_BF16: return kvs_bf16_to_f32(((const kvs_bf16 *)p)[idx]);
  default: return ((const float *)p)[idx];
  }
}
static inline void st(void *p, size_t idx, uint32_t dt, float v) {
  switch (dt) {
  case KVS_DTYPE_F16: ((kvs_f16 *)p)[idx] = kvs_f32_to_f16(v); break;
  case KVS_DTYPE_BF16: ((kvs_bf16 *)p)[idx] = kvs_f32_to_bf16(v); break;
  default: ((float *)p)[idx] = v; break;
  }
}

kvs_err kvs_rope_shift(const kvs_layout *l, void *k, uint32_t n_tokens, size_t token_stride,
                       const float *table) {
  if (!l || (!k && n_tokens) || !table) return KVS_EINVAL;
  KVS_TRY(check_layout(l));
  const uint32_t H = l->n_kv_heads, D = l->head_dim, half = l->rope_dims / 2;
  KVS_RETURN_ERROR_IF(token_stride < (size_t)H * D, KVS_EINVAL, "token stride below one token");
  for (uint32_t t = 0; t < n_tokens; t++)
    for (uint32_t h = 0; h < H; h++) {
      size_t base = (size_t)t * token_stride + (size_t)h * D;
      for (uint32_t i = 0; i < half; i++) {
        uint32_t a, b;
        pair_index(l, i, &a, &b);
        float x0 = ld(k, base + a, l->dtype), x1 = ld(k, base + b, l->dtype);
        float c = table[2 * i], s = table[2 * i + 1];
        st(k, base + a, l->dtype, x0 * c - x1 * s);
        st(k, base + b, l->dtype, x0 * s + x1 * c);
      }
    }
  return KVS_OK;
}

kvs_err kvs_rope_shift_chunk(const kvs_layout *l, void *kv, uint32_t n_tokens, int64_t delta) {
  if (!l || (!kv && n_tokens)) return KVS_EINVAL;
  KVS_TRY(check_layout(l));
  if (delta == 0 || n_tokens == 0) return KVS_OK;
  float table[KVS_MAX_HEAD_DIM];
  KVS_TRY(kvs_rope_shift_table(l, delta, table));
  size_t plane = (size_t)kvs_layout_plane_elems(l, n_tokens) * kvs_dtype_size(l->dtype);
  for (uint32_t layer = 0; layer < l->n_layers; layer++) {
    void *k = (char *)kv + 2 * (size_t)layer * plane; /* K_l; V_l follows untouched */
    KVS_TRY(kvs_rope_shift(l, k, n_tokens, (size_t)l->n_kv_heads * l->head_dim, table));
  }
  return KVS_OK;
}

kvs_err kvs_rope_apply_f32(const kvs_layout *l, float *x, uint32_t n_tokens, uint32_t n_heads,
                           const int64_t *positions) {
  if (!l || (!x && n_tokens) || (!positions && n_tokens)) return KVS_EINVAL;
  KVS_TRY(check_layout(l));
  const uint32_t D = l->head_dim, half = l->rope_dims / 2;
  for (uint32_t t = 0; t < n_tokens; t++)
    for (uint32_t h = 0; h < n_heads; h++) {
      float *v = x + ((size_t)t * n_heads + h) * D;
      for (uint32_t i = 0; i < half; i++) {
        double ang = (double)positions[t] * rope_freq(l, i), ms = rope_mscale(l);
        float c = (float)(cos(ang) * ms), s = (float)(sin(ang) * ms);
        uint32_t a, b;
        pair_index(l, i, &a, &b);
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  return KVS_OK;
}
