/* prof_entropy.c - the entropy-coded profiles:
 *
 * dense (ours): per plane, subtract the per-channel mean over the chunk's
 *   tokens (keys carry large channel biases), rotate each head's row with an
 *   orthonormal Walsh-Hadamard transform (spreads outlier channels, so one
 *   small frequency table fits every channel), quantize with one uniform step
 *   = k_step|v_step x the plane's RMS (finer in the first fine_layers), and
 *   code the symbols with warp-interleaved rANS, one table per plane (a few
 *   dozen bytes), blocks per head so a tensor-parallel rank decodes its heads
 *   only.
 *
 * cachegen-ref (CacheGen / LMCache as published): per-token max-abs scale
 *   over all channels of the layer, 32 or 16 bins by layer group, one
 *   frequency table per (layer, K|V, channel) stored with the chunk. The
 *   arithmetic coder is replaced by rANS on the same static per-channel model
 *   (same size to within the coder's rounding; and it lets the GPU twin share
 *   the dense decoder's stream format): lane j of a block codes channel 32b+j
 *   over the tokens. */
#include <stdlib.h>

#include "codec_int.h"

static inline int qclamp(float r, int lo, int hi) {
  if (!(r == r)) return 0;
  if (r <= (float)lo) return lo;
  if (r >= (float)hi) return hi;
  return (int)lrintf(r);
}

static inline int is_pow2(uint32_t x) { return x && !(x & (x - 1)); }

/* ---------------------------------------------------------------- dense */
static uint32_t dense_steps(const kvs__plane *pl) { return pl->p->group; }

/* the plane's options: the header's, less rotation where head_dim forbids it */
static uint32_t dense_pflags(const kvs__plane *pl) {
  uint32_t f = pl->kv ? pl->p->v_flags : pl->p->k_flags;
  if (!(is_pow2(pl->D) && pl->D >= 2)) f &= ~KVS_DENSE_ROTATED;
  return f;
}

static uint32_t dense_nbh(const kvs__plane *pl) {
  uint64_t per_head = (uint64_t)pl->T * pl->D, blk = 32ull * dense_steps(pl);
  return (uint32_t)((per_head + blk - 1) / blk);
}

/* Elements whose value would be clipped at +-127 steps (massive activations)
 * are kept exact as exceptions, at most one per KVS_DENSE_EXC_RATIO. */
#define KVS_DENSE_EXC_RATIO 16u

static uint32_t dense_max_exc(const kvs__plane *pl) {
  return (uint32_t)((uint64_t)pl->T * pl->H * pl->D / KVS_DENSE_EXC_RATIO);
}

static size_t dense_fixed(const kvs__plane *pl, uint32_t n_sym, uint32_t n_exc) {
  uint32_t f = dense_pflags(pl);
  size_t hd = KVS__PAD4(2ull * pl->H * pl->D);
  return 12 + KVS__PAD4(2ull * n_sym) + hd + ((f & KVS_DENSE_CHAN) ? hd : 0) +
         ((f & KVS_DENSE_TOKEN) ? KVS__PAD4(2ull * pl->T) : 0) + ((f & KVS_DENSE_SINK) ? hd : 0) +
         4 + 4ull * n_exc + KVS__PAD4(2ull * n_exc) + 4 + 4ull * pl->H * dense_nbh(pl);
}

static size_t dense_bound(const kvs__plane *pl) {
  uint64_t per_head = (uint64_t)pl->T * pl->D, blk = 32ull * dense_steps(pl);
  size_t s = dense_fixed(pl, 255, dense_max_exc(pl));
  for (uint64_t i = 0; i < per_head; i += blk)
    s += pl->H * kvs__rans_block_bound((uint32_t)(per_head - i < blk ? per_head - i : blk));
  return s;
}

static float dense_step(const kvs__plane *pl, double rms) {
  float rel = pl->kv ? pl->p->v_step : pl->p->k_step;
  if (pl->layer < pl->p->fine_layers) rel *= pl->p->fine_scale;
  float s = (float)(rel * rms);
  return s > 1e-30f && s < 1e30f ? s : 1.0f;
}

/* a scale as stored (f16), never 0, Inf or subnormal */
static float f16_scale(double v) {
  if (!(v >= 6.2e-5)) return 1.0f;
  if (v > 65504.0) return 65504.0f;
  return kvs__f16r((float)v);
}

static kvs_err dense_enc(const kvs__plane *pl, const float *x, uint8_t *out, size_t cap,
                         size_t *len) {
  uint32_t T = pl->T, H = pl->H, D = pl->D, HD = H * D, S = dense_steps(pl);
  uint32_t pf = dense_pflags(pl);
  uint64_t n = (uint64_t)T * HD;
  int rot = (pf & KVS_DENSE_ROTATED) != 0;
  float *y = malloc(n * sizeof(float));
  uint8_t *sym = malloc(n);
  uint16_t *words = malloc(32ull * S * sizeof(uint16_t));
  float *mean = malloc((size_t)(3 * HD + T) * sizeof(float));
  if (!y || !sym || !words || !mean) {
    free(y), free(sym), free(words), free(mean);
    return KVS_ENOMEM;
  }
  float *cs = mean + HD, *acc = cs + HD, *ts = acc + HD;
  /* token 0 kept exact: out of every statistic, coded as zeros */
  uint32_t t0 = (pf & KVS_DENSE_SINK) && T > 1 ? 1 : 0, Ts = T - t0;
  /* per-channel mean over tokens, rounded to the stored f16 */
  for (uint32_t c = 0; c < HD; c++) {
    double m = 0;
    for (uint32_t t = t0; t < T; t++) {
      float v = x[(uint64_t)t * HD + c];
      if (isfinite(v)) m += v;
    }
    m /= Ts;
    mean[c] = kvs__f16r((float)(m > 65504 ? 65504 : m < -65504 ? -65504 : m));
    cs[c] = 1.0f, acc[c] = 0;
  }
  for (uint64_t i = 0; i < n; i++) {
    float v = x[i] - mean[i % HD];
    y[i] = isfinite(v) && i >= (uint64_t)t0 * HD ? v : 0.0f;
  }
  const float *cw =
      pl->p->chan_weight ? pl->p->chan_weight + ((uint64_t)pl->layer * 2 + pl->kv) * HD : NULL;
  if ((pf & KVS_DENSE_CHAN) && cw) {
    /* calibrated: scale w^-1/2, geometric mean 1 (non-finite or <= 0 weights: 1) */
    double lg = 0;
    for (uint32_t c = 0; c < HD; c++) {
      double wc = cw[c] > 0 && isfinite(cw[c]) ? cw[c] : 1.0;
      acc[c] = (float)(-0.5 * log(wc));
      lg += acc[c];
    }
    lg /= HD;
    for (uint32_t c = 0; c < HD; c++)
      cs[c] = f16_scale(exp(acc[c] - lg));
    for (uint64_t i = 0; i < n; i++)
      y[i] /= cs[i % HD];
  } else if (pf & KVS_DENSE_CHAN) {
    for (uint64_t i = 0; i < n; i++)
      acc[i % HD] += y[i] * y[i];
    for (uint32_t c = 0; c < HD; c++)
      cs[c] = f16_scale(sqrt(acc[c] / Ts));
    for (uint64_t i = 0; i < n; i++)
      y[i] /= cs[i % HD];
  }
  for (uint32_t t = 0; t < T; t++) {
    float *r = y + (uint64_t)t * HD;
    ts[t] = 1.0f;
    if (pf & KVS_DENSE_TOKEN) {
      double ss = 0;
      for (uint32_t c = 0; c < HD; c++)
        ss += (double)r[c] * r[c];
      ts[t] = f16_scale(sqrt(ss / HD));
      for (uint32_t c = 0; c < HD; c++)
        r[c] /= ts[t];
    }
    if (rot)
      for (uint32_t h = 0; h < H; h++)
        kvs__fwht(r + h * D, D);
  }
  /* sum of per-token sums, each over the row in order: a GPU encoder
     (gpu/codec) reproduces it bit for bit with one thread per token */
  double ss = 0;
  for (uint32_t t = 0; t < T; t++) {
    const float *r = y + (uint64_t)t * HD;
    double st = 0;
    for (uint32_t c = 0; c < HD; c++)
      st += (double)r[c] * r[c];
    ss += st;
  }
  float step = dense_step(pl, sqrt(ss / ((double)Ts * HD)));
  int qmin = 127, qmax = -127;
  uint32_t n_exc = 0, max_exc = dense_max_exc(pl);
  uint32_t *exc = malloc(sizeof(uint32_t) * (max_exc ? max_exc : 1));
  if (!exc) {
    free(y), free(sym), free(words), free(mean);
    return KVS_ENOMEM;
  }
  /* symbols per head in (t, d) order; clipped elements become exceptions
     (in that order too), their symbols stay clipped */
  for (uint32_t h = 0; h < H; h++)
    for (uint32_t t = 0; t < T; t++)
      for (uint32_t d = 0; d < D; d++) {
        uint64_t xi = ((uint64_t)t * H + h) * D + d, si = ((uint64_t)h * T + t) * D + d;
        float r = y[xi] / step;
        int q = qclamp(r, -127, 127);
        if (!(fabsf(r) <= 127.5f) && n_exc < max_exc && isfinite(x[xi]))
          exc[n_exc++] = (uint32_t)si;
        sym[si] = (uint8_t)(int8_t)q;
        if (q < qmin) qmin = q;
        if (q > qmax) qmax = q;
      }
  uint32_t n_sym = (uint32_t)(qmax - qmin + 1), counts[256] = {0};
  for (uint64_t i = 0; i < n; i++) {
    sym[i] = (uint8_t)((int8_t)sym[i] - qmin);
    counts[sym[i]]++;
  }
  kvs__rans_table tab;
  uint16_t freq[256];
  kvs_err rc = kvs__rans_normalize(counts, n_sym, freq);
  if (rc == KVS_OK) rc = kvs__rans_table_init(&tab, freq, n_sym);
  size_t fixed = dense_fixed(pl, n_sym, n_exc);
  if (rc == KVS_OK && cap < fixed) rc = KVS_ENOSPC;
  if (rc != KVS_OK) {
    free(y), free(sym), free(words), free(mean), free(exc);
    return rc;
  }
  memset(out, 0, fixed);
  out[4] = (uint8_t)n_sym; /* 256 symbols cannot happen: |q| <= 127 */
  out[5] = (uint8_t)(int8_t)qmin;
  out[6] = (uint8_t)pf;
  uint32_t u;
  memcpy(&u, &step, 4);
  kvs__wr32(out + 8, u);
  uint8_t *q = out + 12;
  for (uint32_t s2 = 0; s2 < n_sym; s2++)
    kvs__wr16(q + 2 * s2, freq[s2]);
  q += KVS__PAD4(2ull * n_sym);
  for (uint32_t c = 0; c < HD; c++)
    kvs__wr16(q + 2 * c, kvs_f32_to_f16(mean[c]));
  q += KVS__PAD4(2ull * HD);
  if (pf & KVS_DENSE_CHAN) {
    for (uint32_t c = 0; c < HD; c++)
      kvs__wr16(q + 2 * c, kvs_f32_to_f16(cs[c]));
    q += KVS__PAD4(2ull * HD);
  }
  if (pf & KVS_DENSE_TOKEN) {
    for (uint32_t t = 0; t < T; t++)
      kvs__wr16(q + 2 * t, kvs_f32_to_f16(ts[t]));
    q += KVS__PAD4(2ull * T);
  }
  if (pf & KVS_DENSE_SINK) { /* exact: x came from this dtype */
    for (uint32_t c = 0; c < HD; c++)
      kvs__wr16(q + 2 * c,
                pl->dtype == KVS_DTYPE_BF16 ? kvs_f32_to_bf16(x[c]) : kvs_f32_to_f16(x[c]));
    q += KVS__PAD4(2ull * HD);
  }
  kvs__wr32(q, n_exc);
  q += 4;
  for (uint32_t i = 0; i < n_exc; i++) {
    uint32_t si = exc[i], h = si / (T * D), t = (si / D) % T, d = si % D;
    float v = x[((uint64_t)t * H + h) * D + d]; /* exact: x came from this dtype */
    kvs__wr32(q + 4ull * i, si);
    kvs__wr16(q + 4ull * n_exc + 2ull * i,
              pl->dtype == KVS_DTYPE_BF16 ? kvs_f32_to_bf16(v) : kvs_f32_to_f16(v));
  }
  q += 4ull * n_exc + KVS__PAD4(2ull * n_exc);
  free(exc);
  uint32_t nbh = dense_nbh(pl);
  kvs__wr32(q, nbh);
  uint8_t *offs = q + 4;
  size_t pos = fixed;
  const kvs__rans_table *tp = &tab;
  uint64_t per_head = (uint64_t)T * D, blk = 32ull * S;
  for (uint32_t h = 0; h < H && rc == KVS_OK; h++)
    for (uint32_t b = 0; b < nbh && rc == KVS_OK; b++) {
      uint64_t i0 = b * blk, cnt = per_head - i0 < blk ? per_head - i0 : blk;
      size_t bl = 0;
      kvs__wr32(offs + 4ull * (h * nbh + b), (uint32_t)pos);
      rc = kvs__rans_enc_block(sym + h * per_head + i0, (uint32_t)cnt, &tp, 0, out + pos, cap - pos,
                               &bl, words);
      pos += bl;
    }
  free(y), free(sym), free(words), free(mean);
  if (rc != KVS_OK) return rc;
  KVS_RETURN_ERROR_IF(pos > UINT32_MAX, KVS_ETOOBIG, "plane over 4 GiB");
  kvs__wr32(out, (uint32_t)pos);
  *len = pos;
  return KVS_OK;
}

static size_t dense_ws(const kvs__plane *pl) {
  return 4 * KVS_RANS_PROB_SCALE + (size_t)pl->T * pl->D + 4ull * pl->T + 64;
}

static kvs_err dense_dec(const kvs__plane *pl, const uint8_t *b, size_t n, const kvs__writer *w,
                         uint8_t *ws, size_t ws_len) {
  uint32_t T = pl->T, H = pl->H, D = pl->D, HD = H * D, S = dense_steps(pl);
  KVS_RETURN_ERROR_IF(n < 12, KVS_ECORRUPT, "dense plane truncated");
  uint32_t n_sym = b[4], flags = b[6];
  int qmin = (int8_t)b[5];
  KVS_RETURN_ERROR_IF(n_sym == 0 || b[7] || flags != dense_pflags(pl), KVS_ECORRUPT,
                      "dense plane header");
  int rot = (flags & KVS_DENSE_ROTATED) != 0;
  float step;
  uint32_t u = kvs__rd32(b + 8);
  memcpy(&step, &u, 4);
  KVS_RETURN_ERROR_IF(!(step > 0 && step < 1e30f), KVS_ECORRUPT, "dense step");
  size_t fixed0 = dense_fixed(pl, n_sym, 0);
  KVS_RETURN_ERROR_IF(n < fixed0, KVS_ECORRUPT, "dense plane truncated");
  uint16_t freq[256];
  for (uint32_t s2 = 0; s2 < n_sym; s2++)
    freq[s2] = kvs__rd16(b + 12 + 2 * s2);
  kvs__rans_table tab;
  KVS_TRY(kvs__rans_table_init(&tab, freq, n_sym));
  const uint8_t *mean = b + 12 + KVS__PAD4(2ull * n_sym);
  const uint8_t *q = mean + KVS__PAD4(2ull * HD), *chan = NULL, *tokp = NULL, *sink = NULL;
  if (flags & KVS_DENSE_CHAN) chan = q, q += KVS__PAD4(2ull * HD);
  if (flags & KVS_DENSE_TOKEN) tokp = q, q += KVS__PAD4(2ull * T);
  if (flags & KVS_DENSE_SINK) sink = q, q += KVS__PAD4(2ull * HD);
  uint32_t n_exc = kvs__rd32(q);
  KVS_RETURN_ERROR_IF(n_exc > dense_max_exc(pl), KVS_ECORRUPT, "dense exception count");
  size_t fixed = dense_fixed(pl, n_sym, n_exc);
  KVS_RETURN_ERROR_IF(n < fixed, KVS_ECORRUPT, "dense plane truncated");
  const uint8_t *exc_i = q + 4, *exc_v = exc_i + 4ull * n_exc;
  q = exc_v + KVS__PAD4(2ull * n_exc);
  uint32_t xi = 0; /* exception cursor: sorted in (h, t, d) order */
  for (uint32_t i = 1; i < n_exc; i++)
    KVS_RETURN_ERROR_IF(kvs__rd32(exc_i + 4ull * i) <= kvs__rd32(exc_i + 4ull * (i - 1)),
                        KVS_ECORRUPT, "dense exceptions out of order");
  KVS_RETURN_ERROR_IF(n_exc && kvs__rd32(exc_i + 4ull * (n_exc - 1)) >= (uint64_t)T * HD,
                      KVS_ECORRUPT, "dense exception index");
  uint32_t nbh = dense_nbh(pl);
  KVS_RETURN_ERROR_IF(kvs__rd32(q) != nbh, KVS_ECORRUPT, "dense block count");
  const uint8_t *offs = q + 4;
  uint32_t *lut = (uint32_t *)(void *)(((uintptr_t)ws + 15) & ~(uintptr_t)15);
  float *ts = (float *)(void *)((uint8_t *)lut + 4 * KVS_RANS_PROB_SCALE);
  uint8_t *sym = (uint8_t *)(ts + T);
  kvs__rans_build_lut(&tab, lut);
  for (uint32_t t = 0; t < T; t++) {
    ts[t] = tokp ? kvs_f16_to_f32(kvs__rd16(tokp + 2 * t)) : 1.0f;
    KVS_RETURN_ERROR_IF(!(ts[t] > 0 && ts[t] < INFINITY), KVS_ECORRUPT, "dense token scale");
  }
  float deq[256] = {0}, row[KVS_MAX_HEAD_DIM], mf[KVS_MAX_HEAD_DIM], cf[KVS_MAX_HEAD_DIM];
  for (uint32_t s2 = 0; s2 < n_sym; s2++)
    deq[s2] = (float)(qmin + (int)s2) * step;
  const kvs__rans_table *tp = &tab;
  uint64_t per_head = (uint64_t)T * D, blk = 32ull * S;
  size_t expect_next = fixed;
  const int simd = kvs__codec_simd();
  for (uint32_t h = 0; h < H; h++) {
    int want = h >= w->h0 && h < w->h1;
    for (uint32_t bi = 0; bi < nbh; bi++) {
      uint32_t off = kvs__rd32(offs + 4ull * (h * nbh + bi));
      /* blocks are contiguous and in order: each decoded block must start
         where the previous decoded one ended */
      KVS_RETURN_ERROR_IF(off < fixed || off >= n, KVS_ECORRUPT, "dense block offset");
      if (!want) continue;
      KVS_RETURN_ERROR_IF(off != expect_next && expect_next != 0, KVS_ECORRUPT,
                          "dense block offset");
      uint64_t i0 = bi * blk, cnt = per_head - i0 < blk ? per_head - i0 : blk;
      size_t used = 0;
      /* two full blocks at once where the next one starts where this one's
         header says it ends (else one by one, which reports the error) */
      if (simd && bi + 1 < nbh && per_head - i0 >= 2 * blk && n - off >= KVS_RANS_BLOCK_HDR) {
        uint32_t off2 = kvs__rd32(offs + 4ull * (h * nbh + bi + 1));
        if (off2 < n && off2 == off + KVS__PAD4(KVS_RANS_BLOCK_HDR + 2ull * kvs__rd32(b + off))) {
          size_t used2 = 0;
          KVS_TRY(kvs__rans_dec_block2(b + off, n - off, b + off2, n - off2, (uint32_t)blk, lut,
                                       sym + i0, sym + i0 + blk, &used, &used2));
          expect_next = off2 + used2;
          bi++;
          continue;
        }
      }
      KVS_TRY(kvs__rans_dec_block(b + off, n - off, (uint32_t)cnt, &tp, 0, lut, sym + i0, &used));
      expect_next = off + used;
    }
    if (!want) {
      expect_next = 0; /* skipped head: the next decoded block is checked by range only */
      continue;
    }
    for (uint32_t d = 0; d < D; d++) {
      mf[d] = kvs_f16_to_f32(kvs__rd16(mean + 2ull * (h * D + d)));
      cf[d] = chan ? kvs_f16_to_f32(kvs__rd16(chan + 2ull * (h * D + d))) : 1.0f;
      KVS_RETURN_ERROR_IF(!(cf[d] > 0 && cf[d] < INFINITY) || !isfinite(mf[d]), KVS_ECORRUPT,
                          "dense channel mean or scale");
    }
    for (uint32_t t = 0; t < T; t++) {
      const uint8_t *sr = sym + (uint64_t)t * D;
      uint32_t bad = 0;
#if KVS__HAVE_AVX2_PATH
      /* the common row (no rotation, f16 out, not the sink, no exception):
         symbols to f16 in one pass */
      if (simd && !rot && w->o->dtype == KVS_DTYPE_F16 && !(t == 0 && sink)) {
        uint64_t r0 = ((uint64_t)h * T + t) * D;
        while (xi < n_exc && kvs__rd32(exc_i + 4ull * xi) < r0)
          xi++;
        if (!(xi < n_exc && kvs__rd32(exc_i + 4ull * xi) < r0 + D)) {
          bad = kvs__dense_row_f16_avx2(sr, D, n_sym, qmin, step, ts[t], cf, mf,
                                        kvs__row_ptr(w, t, h));
          KVS_RETURN_ERROR_IF(bad, KVS_ECORRUPT, "dense symbol");
          continue;
        }
      }
#endif
      if (simd) {
#if KVS__HAVE_AVX2_PATH
        bad = kvs__dense_deq_avx2(sr, D, n_sym, qmin, step, row);
#endif
      } else {
        for (uint32_t d = 0; d < D; d++) {
          bad |= sr[d] >= n_sym;
          row[d] = deq[sr[d]];
        }
      }
      KVS_RETURN_ERROR_IF(bad, KVS_ECORRUPT, "dense symbol");
      if (t == 0 && sink) {
        for (uint32_t d = 0; d < D; d++) {
          uint16_t hb = kvs__rd16(sink + 2ull * (h * D + d));
          row[d] = pl->dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(hb) : kvs_f16_to_f32(hb);
        }
        kvs__store_row(w, t, h, row);
        continue;
      }
      if (rot) kvs__fwht(row, D);
      float g = ts[t];
      if (simd) {
#if KVS__HAVE_AVX2_PATH
        kvs__dense_affine_avx2(row, D, g, cf, mf);
#endif
      } else {
        for (uint32_t d = 0; d < D; d++)
          row[d] = row[d] * g * cf[d] + mf[d];
      }
      uint64_t r0 = ((uint64_t)h * T + t) * D;
      while (xi < n_exc && kvs__rd32(exc_i + 4ull * xi) < r0)
        xi++;
      for (; xi < n_exc && kvs__rd32(exc_i + 4ull * xi) < r0 + D; xi++) {
        uint16_t hb = kvs__rd16(exc_v + 2ull * xi);
        row[kvs__rd32(exc_i + 4ull * xi) - r0] =
            pl->dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(hb) : kvs_f16_to_f32(hb);
      }
      kvs__store_row(w, t, h, row);
    }
  }
  /* the last block of the last head must end the plane */
  if (w->h1 == H) KVS_RETURN_ERROR_IF(expect_next != n, KVS_ECORRUPT, "dense plane size");
  return KVS_OK;
}

const kvs__profile_ops kvs__ops_dense = {dense_bound, dense_enc, dense_dec, dense_ws};

/* ------------------------------------------------------- cachegen-ref */
static uint32_t cg_bins(const kvs__plane *pl) {
  const kvs_codec_params *p = pl->p;
  if (pl->kv == 0)
    return pl->layer < p->cg_key_first_layers    ? p->cg_bins[0]
           : pl->layer < p->cg_key_second_layers ? p->cg_bins[1]
                                                 : p->cg_bins[2];
  return pl->layer < p->cg_value_first_layers ? p->cg_bins[3] : p->cg_bins[4];
}

static uint32_t cg_nb(const kvs__plane *pl) { return KVS__CDIV(pl->H * pl->D, 32u); }

static size_t cg_fixed(const kvs__plane *pl) {
  uint32_t n_sym = cg_bins(pl) - 1;
  return 8 + KVS__PAD4(2ull * pl->T) + KVS__PAD4(2ull * pl->H * pl->D * n_sym) + 4ull * cg_nb(pl);
}

static size_t cg_bound(const kvs__plane *pl) {
  return cg_fixed(pl) + cg_nb(pl) * kvs__rans_block_bound(32u * pl->T);
}

static kvs_err cg_enc(const kvs__plane *pl, const float *x, uint8_t *out, size_t cap, size_t *len) {
  uint32_t T = pl->T, HD = pl->H * pl->D, B = cg_bins(pl), n_sym = B - 1, half = B / 2 - 1;
  uint32_t nb = cg_nb(pl);
  size_t fixed = cg_fixed(pl);
  KVS_RETURN_ERROR_IF(cap < fixed, KVS_ENOSPC, "output too small");
  memset(out, 0, fixed);
  kvs__wr16(out + 4, (uint16_t)n_sym);
  uint8_t *tm = out + 8, *fr = tm + KVS__PAD4(2ull * T), *offs = fr + KVS__PAD4(2ull * HD * n_sym);
  /* sym laid out per block: [b][t][32] */
  uint8_t *sym = calloc((size_t)nb * 32 * T, 1);
  uint16_t *words = malloc(32ull * T * 2);
  kvs__rans_table *tabs = malloc(sizeof(kvs__rans_table) * (nb * 32 + 1));
  uint32_t *counts = calloc((size_t)HD * n_sym, sizeof(uint32_t));
  kvs_err rc = (sym && words && tabs && counts) ? KVS_OK : KVS_ENOMEM;
  for (uint32_t t = 0; t < T && rc == KVS_OK; t++) {
    const float *r = x + (uint64_t)t * HD;
    float m = 0;
    for (uint32_t c = 0; c < HD; c++)
      if (fabsf(r[c]) > m && isfinite(r[c])) m = fabsf(r[c]);
    kvs_f16 hm = kvs_f32_to_f16(m);
    kvs__wr16(tm + 2 * t, hm);
    float mx = kvs_f16_to_f32(hm);
    for (uint32_t c = 0; c < HD; c++) {
      int q = mx > 0 ? qclamp(r[c] / mx * (float)half, -(int)half, (int)half) : 0;
      uint32_t s = (uint32_t)(q + (int)half);
      sym[((size_t)(c / 32) * T + t) * 32 + c % 32] = (uint8_t)s;
      counts[(size_t)c * n_sym + s]++;
    }
  }
  for (uint32_t c = 0; c < HD && rc == KVS_OK; c++) {
    uint16_t f[256];
    rc = kvs__rans_normalize(counts + (size_t)c * n_sym, n_sym, f);
    if (rc == KVS_OK) rc = kvs__rans_table_init(&tabs[c], f, n_sym);
    for (uint32_t s = 0; s < n_sym && rc == KVS_OK; s++)
      kvs__wr16(fr + 2 * ((size_t)c * n_sym + s), f[s]);
  }
  /* lanes past the last channel code symbol 0 of a one-symbol table: free */
  const kvs__rans_table *lane_tabs[32];
  kvs__rans_table *pad = &tabs[nb * 32];
  if (rc == KVS_OK) {
    uint16_t one = KVS_RANS_PROB_SCALE;
    kvs__rans_table_init(pad, &one, 1);
  }
  size_t pos = fixed;
  for (uint32_t b = 0; b < nb && rc == KVS_OK; b++) {
    for (uint32_t j = 0; j < 32; j++)
      lane_tabs[j] = 32 * b + j < HD ? &tabs[32 * b + j] : pad;
    size_t bl = 0;
    kvs__wr32(offs + 4ull * b, (uint32_t)pos);
    rc = kvs__rans_enc_block(sym + (size_t)b * 32 * T, 32 * T, lane_tabs, 1, out + pos, cap - pos,
                             &bl, words);
    pos += bl;
  }
  free(sym), free(words), free(tabs), free(counts);
  if (rc != KVS_OK) return rc;
  KVS_RETURN_ERROR_IF(pos > UINT32_MAX, KVS_ETOOBIG, "plane over 4 GiB");
  kvs__wr32(out, (uint32_t)pos);
  *len = pos;
  return KVS_OK;
}

static size_t cg_ws(const kvs__plane *pl) {
  return (size_t)32 * pl->T + sizeof(kvs__rans_table) * 33 + 64;
}

static kvs_err cg_dec(const kvs__plane *pl, const uint8_t *b, size_t n, const kvs__writer *w,
                      uint8_t *ws, size_t ws_len) {
  uint32_t T = pl->T, H = pl->H, D = pl->D, HD = H * D, B = cg_bins(pl), n_sym = B - 1;
  float half = (float)(B / 2 - 1);
  uint32_t nb = cg_nb(pl);
  size_t fixed = cg_fixed(pl);
  KVS_RETURN_ERROR_IF(n < fixed, KVS_ECORRUPT, "cachegen plane truncated");
  KVS_RETURN_ERROR_IF(kvs__rd16(b + 4) != n_sym || kvs__rd16(b + 6), KVS_ECORRUPT,
                      "cachegen bins differ from the header's");
  const uint8_t *tm = b + 8, *fr = tm + KVS__PAD4(2ull * T),
                *offs = fr + KVS__PAD4(2ull * HD * n_sym);
  kvs__rans_table *tabs = (kvs__rans_table *)(void *)(((uintptr_t)ws + 15) & ~(uintptr_t)15);
  uint8_t *sym = (uint8_t *)(tabs + 33);
  const kvs__rans_table *lane_tabs[32];
  uint16_t one = KVS_RANS_PROB_SCALE;
  KVS_TRY(kvs__rans_table_init(&tabs[32], &one, 1));
  uint32_t c0 = w->h0 * D, c1 = w->h1 * D;
  size_t expect = fixed;
  for (uint32_t bi = c0 / 32; bi < nb && bi * 32 < c1; bi++) {
    uint32_t off = kvs__rd32(offs + 4ull * bi);
    KVS_RETURN_ERROR_IF(off < fixed || off >= n || (bi > c0 / 32 && off != expect), KVS_ECORRUPT,
                        "cachegen block offset");
    for (uint32_t j = 0; j < 32; j++) {
      uint32_t c = bi * 32 + j;
      if (c < HD) {
        uint16_t f[256];
        for (uint32_t s = 0; s < n_sym; s++)
          f[s] = kvs__rd16(fr + 2 * ((size_t)c * n_sym + s));
        KVS_TRY(kvs__rans_table_init(&tabs[j], f, n_sym));
        lane_tabs[j] = &tabs[j];
      } else {
        lane_tabs[j] = &tabs[32];
      }
    }
    size_t used = 0;
    KVS_TRY(kvs__rans_dec_block(b + off, n - off, 32 * T, lane_tabs, 1, NULL, sym, &used));
    expect = off + used;
    /* scatter this block's channels into output rows, one element at a time */
    for (uint32_t j = 0; j < 32; j++) {
      uint32_t c = bi * 32 + j;
      if (c < c0 || c >= c1 || c >= HD) continue;
      uint32_t h = c / D, d = c % D;
      for (uint32_t t = 0; t < T; t++) {
        float v =
            ((float)sym[(size_t)t * 32 + j] - half) / half * kvs_f16_to_f32(kvs__rd16(tm + 2 * t));
        uint8_t *dst = kvs__row_ptr(w, t, h);
        kvs__store_f32(dst + (size_t)d * w->esize, w->o->dtype, &v, 1);
      }
    }
  }
  if (c0 == 0 && c1 == HD) KVS_RETURN_ERROR_IF(expect != n, KVS_ECORRUPT, "cachegen plane size");
  return KVS_OK;
}

const kvs__profile_ops kvs__ops_cachegen = {cg_bound, cg_enc, cg_dec, cg_ws};
