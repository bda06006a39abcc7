/* prof_quant.c - the fixed-rate profiles: int8, kivi2/kivi4 and fp4 (MXFP4).
 * Scales are rounded to their stored precision before quantizing, so the
 * decoder reconstructs exactly what the encoder measured its error against. */
#include <stdlib.h>

#include "codec_int.h"

/* round(r) clamped to [lo, hi]; NaN becomes 0 (never a float->int UB). */
static inline int qclamp(float r, int lo, int hi) {
  if (!(r == r)) return 0;
  if (r <= (float)lo) return lo;
  if (r >= (float)hi) return hi;
  return (int)lrintf(r);
}

static inline float rd_f16(const uint8_t *p) { return kvs_f16_to_f32(kvs__rd16(p)); }

/* ----------------------------------------------------------------- int8 */
static size_t int8_body(const kvs__plane *pl) {
  uint64_t rows = (uint64_t)pl->T * pl->H;
  return KVS__PAD4(4 + rows * 2 + rows * pl->D);
}

static kvs_err int8_enc(const kvs__plane *pl, const float *x, uint8_t *out, size_t cap,
                        size_t *len) {
  size_t n = int8_body(pl);
  KVS_RETURN_ERROR_IF(cap < n, KVS_ENOSPC, "output too small");
  memset(out, 0, n);
  kvs__wr32(out, (uint32_t)n);
  uint64_t rows = (uint64_t)pl->T * pl->H;
  uint8_t *sc = out + 4, *codes = sc + rows * 2;
  for (uint64_t r = 0; r < rows; r++) {
    const float *row = x + r * pl->D;
    float amax = 0;
    for (uint32_t d = 0; d < pl->D; d++)
      amax = fmaxf(amax, fabsf(row[d]));
    kvs_f16 hs = kvs_f32_to_f16(amax / 127.0f);
    float s = kvs_f16_to_f32(hs);
    kvs__wr16(sc + 2 * r, hs);
    for (uint32_t d = 0; d < pl->D; d++)
      codes[r * pl->D + d] = (uint8_t)(int8_t)(s > 0 ? qclamp(row[d] / s, -127, 127) : 0);
  }
  *len = n;
  return KVS_OK;
}

static kvs_err int8_dec(const kvs__plane *pl, const uint8_t *b, size_t n, const kvs__writer *w,
                        uint8_t *ws, size_t ws_len) {
  KVS_RETURN_ERROR_IF(n != int8_body(pl), KVS_ECORRUPT, "int8 plane size");
  uint64_t rows = (uint64_t)pl->T * pl->H;
  const uint8_t *sc = b + 4, *codes = sc + rows * 2;
  float row[KVS_MAX_HEAD_DIM];
  for (uint32_t t = 0; t < pl->T; t++)
    for (uint32_t h = w->h0; h < w->h1; h++) {
      uint64_t r = (uint64_t)t * pl->H + h;
      float s = rd_f16(sc + 2 * r);
      const int8_t *c = (const int8_t *)codes + r * pl->D;
      for (uint32_t d = 0; d < pl->D; d++)
        row[d] = (float)c[d] * s;
      kvs__store_row(w, t, h, row);
    }
  return KVS_OK;
}

static size_t small_ws(const kvs__plane *pl) { return 64; }

const kvs__profile_ops kvs__ops_int8 = {int8_body, int8_enc, int8_dec, small_ws};

/* ----------------------------------------------------------------- kivi */
/* K: one (scale, min) per channel per group of G tokens (KIVI's per-channel
 * key quantization); V: one per group of G channels of each token's head. */
static uint64_t kivi_groups(const kvs__plane *pl) {
  uint32_t G = pl->p->group;
  if (pl->kv == 0) return (uint64_t)KVS__CDIV(pl->T, G) * pl->H * pl->D;
  return (uint64_t)pl->T * pl->H * KVS__CDIV(pl->D, G);
}

static size_t kivi_body(const kvs__plane *pl) {
  uint64_t e = (uint64_t)pl->T * pl->H * pl->D;
  uint32_t b = pl->p->k_bits;
  return KVS__PAD4(4 + kivi_groups(pl) * 4 + (e * b + 7) / 8);
}

/* index of the (scale, min) pair of element (t, h, d) */
static inline uint64_t kivi_gi(const kvs__plane *pl, uint32_t t, uint32_t h, uint32_t d) {
  uint32_t G = pl->p->group;
  if (pl->kv == 0) return ((uint64_t)(t / G) * pl->H + h) * pl->D + d;
  return ((uint64_t)t * pl->H + h) * KVS__CDIV(pl->D, G) + d / G;
}

static kvs_err kivi_enc(const kvs__plane *pl, const float *x, uint8_t *out, size_t cap,
                        size_t *len) {
  size_t n = kivi_body(pl);
  KVS_RETURN_ERROR_IF(cap < n, KVS_ENOSPC, "output too small");
  memset(out, 0, n);
  kvs__wr32(out, (uint32_t)n);
  uint32_t T = pl->T, H = pl->H, D = pl->D, b = pl->p->k_bits, qmax = (1u << b) - 1;
  uint64_t ng = kivi_groups(pl);
  uint8_t *gp = out + 4, *codes = gp + ng * 4;
  float *mn = malloc(ng * 2 * sizeof(float));
  if (!mn) return KVS_ENOMEM;
  float *mx = mn + ng;
  for (uint64_t i = 0; i < ng; i++)
    mn[i] = INFINITY, mx[i] = -INFINITY;
  for (uint32_t t = 0; t < T; t++)
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t d = 0; d < D; d++) {
        float v = x[((uint64_t)t * H + h) * D + d];
        uint64_t g = kivi_gi(pl, t, h, d);
        if (v < mn[g]) mn[g] = v;
        if (v > mx[g]) mx[g] = v;
      }
  for (uint64_t g = 0; g < ng; g++) {
    if (!(mn[g] <= mx[g])) mn[g] = mx[g] = 0; /* NaN-only group */
    kvs_f16 hm = kvs_f32_to_f16(mn[g]);
    kvs_f16 hs = kvs_f32_to_f16((mx[g] - kvs_f16_to_f32(hm)) / (float)qmax);
    kvs__wr16(gp + 4 * g, hs);
    kvs__wr16(gp + 4 * g + 2, hm);
    mx[g] = kvs_f16_to_f32(hs); /* reuse: stored scale */
    mn[g] = kvs_f16_to_f32(hm);
  }
  uint64_t e = 0;
  for (uint32_t t = 0; t < T; t++)
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t d = 0; d < D; d++, e++) {
        uint64_t g = kivi_gi(pl, t, h, d);
        float s = mx[g];
        uint32_t q = s > 0 ? (uint32_t)qclamp((x[e] - mn[g]) / s, 0, (int)qmax) : 0;
        uint64_t bit = e * b;
        codes[bit >> 3] |= (uint8_t)(q << (bit & 7));
      }
  free(mn);
  *len = n;
  return KVS_OK;
}

static kvs_err kivi_dec(const kvs__plane *pl, const uint8_t *bb, size_t n, const kvs__writer *w,
                        uint8_t *ws, size_t ws_len) {
  KVS_RETURN_ERROR_IF(n != kivi_body(pl), KVS_ECORRUPT, "kivi plane size");
  uint32_t H = pl->H, D = pl->D, b = pl->p->k_bits, qmask = (1u << b) - 1;
  const uint8_t *gp = bb + 4, *codes = gp + kivi_groups(pl) * 4;
  float row[KVS_MAX_HEAD_DIM];
  for (uint32_t t = 0; t < pl->T; t++)
    for (uint32_t h = w->h0; h < w->h1; h++) {
      uint64_t e0 = ((uint64_t)t * H + h) * D;
      for (uint32_t d = 0; d < D; d++) {
        uint64_t g = kivi_gi(pl, t, h, d), bit = (e0 + d) * b;
        uint32_t q = (codes[bit >> 3] >> (bit & 7)) & qmask;
        row[d] = (float)q * rd_f16(gp + 4 * g) + rd_f16(gp + 4 * g + 2);
      }
      kvs__store_row(w, t, h, row);
    }
  return KVS_OK;
}

const kvs__profile_ops kvs__ops_kivi = {kivi_body, kivi_enc, kivi_dec, small_ws};

/* ------------------------------------------------------------------ fp4 */
/* MXFP4 (OCP Microscaling): blocks of 32 along head_dim, E8M0 shared scale
 * 2^(floor(log2(amax)) - 2), E2M1 elements (max 6). */
static size_t fp4_body(const kvs__plane *pl) {
  uint64_t rows = (uint64_t)pl->T * pl->H, e = rows * pl->D;
  return KVS__PAD4(4 + rows * KVS__CDIV(pl->D, KVS_FP4_BLOCK) + (e + 1) / 2);
}

static kvs_err fp4_enc(const kvs__plane *pl, const float *x, uint8_t *out, size_t cap,
                       size_t *len) {
  size_t n = fp4_body(pl);
  KVS_RETURN_ERROR_IF(cap < n, KVS_ENOSPC, "output too small");
  memset(out, 0, n);
  kvs__wr32(out, (uint32_t)n);
  uint64_t rows = (uint64_t)pl->T * pl->H;
  uint32_t D = pl->D, nb = KVS__CDIV(D, KVS_FP4_BLOCK);
  uint8_t *sc = out + 4, *codes = sc + rows * nb;
  static const float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  for (uint64_t r = 0; r < rows; r++)
    for (uint32_t bl = 0; bl < nb; bl++) {
      uint32_t d0 = bl * KVS_FP4_BLOCK, d1 = d0 + KVS_FP4_BLOCK < D ? d0 + KVS_FP4_BLOCK : D;
      float amax = 0;
      for (uint32_t d = d0; d < d1; d++) {
        float a = fabsf(x[r * D + d]);
        if (a > amax && a < INFINITY) amax = a;
      }
      int e = 0;
      if (amax > 0) {
        int ex;
        frexpf(amax, &ex); /* amax = m * 2^ex, m in [0.5, 1) */
        e = ex - 1 - 2 + 127;
        e = e < 0 ? 0 : e > 254 ? 254 : e;
      }
      sc[r * nb + bl] = (uint8_t)e;
      float inv = ldexpf(1.0f, 127 - e);
      for (uint32_t d = d0; d < d1; d++) {
        float v = x[r * D + d] * inv;
        uint32_t sign = v < 0 ? 8u : 0u, m = 0;
        float a = fabsf(v);
        if (a == a)
          while (m < 7 && a >= mid[m])
            m++;
        uint64_t i = r * D + d;
        codes[i >> 1] |= (uint8_t)((sign | m) << ((i & 1) * 4));
      }
    }
  *len = n;
  return KVS_OK;
}

static kvs_err fp4_dec(const kvs__plane *pl, const uint8_t *b, size_t n, const kvs__writer *w,
                       uint8_t *ws, size_t ws_len) {
  KVS_RETURN_ERROR_IF(n != fp4_body(pl), KVS_ECORRUPT, "fp4 plane size");
  static const float val[8] = KVS_FP4_VALUES;
  uint64_t rows = (uint64_t)pl->T * pl->H;
  uint32_t D = pl->D, nb = KVS__CDIV(D, KVS_FP4_BLOCK);
  const uint8_t *sc = b + 4, *codes = sc + rows * nb;
  float row[KVS_MAX_HEAD_DIM];
  for (uint32_t t = 0; t < pl->T; t++)
    for (uint32_t h = w->h0; h < w->h1; h++) {
      uint64_t r = (uint64_t)t * pl->H + h;
      for (uint32_t d = 0; d < D; d++) {
        uint8_t e = sc[r * nb + d / KVS_FP4_BLOCK];
        KVS_RETURN_ERROR_IF(e == 255, KVS_ECORRUPT, "fp4 scale");
        uint64_t i = r * D + d;
        uint32_t c = (codes[i >> 1] >> ((i & 1) * 4)) & 15u;
        float v = ldexpf(val[c & 7], (int)e - 127);
        row[d] = (c & 8) ? -v : v;
      }
      kvs__store_row(w, t, h, row);
    }
  return KVS_OK;
}

const kvs__profile_ops kvs__ops_fp4 = {fp4_body, fp4_enc, fp4_dec, small_ws};
