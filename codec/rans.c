/* rans.c - warp-interleaved rANS (the layout is in kvs_codec_format.h).
 *
 * 32-bit states in [2^16, 2^32), 16-bit renormalisation words, 12-bit
 * probabilities: each symbol moves at most one word, which is what lets 32
 * GPU lanes decode one stream in lock step (a ballot + prefix count gives
 * each lane its word). The CPU twin below walks the lanes in the same order. */
#include "codec_int.h"

kvs_err kvs__rans_normalize(const uint32_t *counts, uint32_t n, uint16_t *freq) {
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++)
    total += counts[i];
  if (total == 0 || n > 256) return KVS_EINVAL;
  int32_t sum = 0, best = -1;
  for (uint32_t i = 0; i < n; i++) {
    if (!counts[i]) {
      freq[i] = 0;
      continue;
    }
    uint64_t f = (counts[i] * (uint64_t)KVS_RANS_PROB_SCALE + total / 2) / total;
    freq[i] = (uint16_t)(f ? f : 1);
    sum += freq[i];
    if (best < 0 || freq[i] > freq[best]) best = (int32_t)i;
  }
  /* fix the total on the largest entries, never dropping one to zero */
  while (sum != (int32_t)KVS_RANS_PROB_SCALE) {
    if (sum < (int32_t)KVS_RANS_PROB_SCALE) {
      freq[best] += (uint16_t)(KVS_RANS_PROB_SCALE - sum);
      sum = KVS_RANS_PROB_SCALE;
    } else {
      int32_t big = -1;
      for (uint32_t i = 0; i < n; i++)
        if (freq[i] > 1 && (big < 0 || freq[i] > freq[big])) big = (int32_t)i;
      if (big < 0) return KVS_EINTERNAL; /* n > 4096 symbols: impossible here */
      int32_t take = sum - (int32_t)KVS_RANS_PROB_SCALE;
      if (take > freq[big] - 1) take = freq[big] - 1;
      if (take > (freq[big] + 7) / 8) take = (freq[big] + 7) / 8; /* spread the cut */
      if (take < 1) take = 1;
      freq[big] = (uint16_t)(freq[big] - take);
      sum -= take;
    }
  }
  return KVS_OK;
}

kvs_err kvs__rans_table_init(kvs__rans_table *t, const uint16_t *freq, uint32_t n_sym) {
  KVS_RETURN_ERROR_IF(n_sym == 0 || n_sym > 256, KVS_ECORRUPT, "rANS alphabet size");
  uint32_t c = 0;
  t->n_sym = n_sym;
  for (uint32_t i = 0; i < n_sym; i++) {
    t->freq[i] = freq[i];
    t->cum[i] = (uint16_t)c;
    c += freq[i];
    KVS_RETURN_ERROR_IF(c > KVS_RANS_PROB_SCALE, KVS_ECORRUPT, "rANS frequencies");
  }
  KVS_RETURN_ERROR_IF(c != KVS_RANS_PROB_SCALE, KVS_ECORRUPT, "rANS frequencies sum");
  t->cum[n_sym] = (uint16_t)c;
  return KVS_OK;
}

void kvs__rans_build_lut(const kvs__rans_table *t, uint32_t *lut) {
  for (uint32_t s = 0; s < t->n_sym; s++)
    for (uint32_t k = 0; k < t->freq[s]; k++)
      lut[t->cum[s] + k] = KVS_RANS_LUT_ENTRY(s, t->freq[s], k);
}

size_t kvs__rans_block_bound(uint32_t n) { return KVS__PAD4(KVS_RANS_BLOCK_HDR + 2ull * n); }

kvs_err kvs__rans_enc_block(const uint8_t *sym, uint32_t n, const kvs__rans_table *const *tabs,
                            int per_lane, uint8_t *out, size_t cap, size_t *len, uint16_t *words) {
  uint32_t x[KVS_RANS_LANES];
  for (uint32_t j = 0; j < KVS_RANS_LANES; j++)
    x[j] = KVS_RANS_L;
  uint32_t nw = 0;
  /* reverse of the decoder's order: last step first, lanes 31..0 */
  for (uint32_t i = n; i-- > 0;) {
    uint32_t j = i % KVS_RANS_LANES;
    const kvs__rans_table *t = tabs[per_lane ? j : 0];
    uint32_t s = sym[i];
    KVS_RETURN_ERROR_IF(s >= t->n_sym || t->freq[s] == 0, KVS_EINTERNAL, "symbol not in table");
    uint32_t f = t->freq[s], xs = x[j];
    if ((uint64_t)xs >= ((uint64_t)f << 20)) { /* x_max = (L >> 12) << 16 * f */
      words[nw++] = (uint16_t)xs;
      xs >>= 16;
    }
    x[j] = ((xs / f) << KVS_RANS_PROB_BITS) + (xs % f) + t->cum[s];
  }
  size_t need = KVS__PAD4(KVS_RANS_BLOCK_HDR + 2ull * nw);
  KVS_RETURN_ERROR_IF(cap < need, KVS_ENOSPC, "output too small");
  kvs__wr32(out, nw);
  for (uint32_t j = 0; j < KVS_RANS_LANES; j++)
    kvs__wr32(out + 4 + 4 * j, x[j]);
  uint8_t *w = out + KVS_RANS_BLOCK_HDR;
  for (uint32_t k = 0; k < nw; k++)
    kvs__wr16(w + 2 * k, words[nw - 1 - k]);
  memset(w + 2ull * nw, 0, need - KVS_RANS_BLOCK_HDR - 2ull * nw);
  *len = need;
  return KVS_OK;
}

static inline uint32_t find_sym(const kvs__rans_table *t, uint32_t slot) {
  uint32_t lo = 0, hi = t->n_sym; /* largest s with cum[s] <= slot */
  while (hi - lo > 1) {
    uint32_t mid = (lo + hi) / 2;
    if (t->cum[mid] <= slot)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* A block being decoded: its words, states and word position. */
typedef struct dec_state {
  const uint8_t *w;
  uint32_t nw, pos;
  uint32_t x[KVS_RANS_LANES];
} dec_state;

static kvs_err dec_open(dec_state *d, const uint8_t *blk, size_t avail, uint32_t n) {
  KVS_RETURN_ERROR_IF(avail < KVS_RANS_BLOCK_HDR, KVS_ECORRUPT, "rANS block truncated");
  d->nw = kvs__rd32(blk);
  KVS_RETURN_ERROR_IF(d->nw > n || KVS__PAD4(KVS_RANS_BLOCK_HDR + 2ull * d->nw) > avail,
                      KVS_ECORRUPT, "rANS word count");
  for (uint32_t j = 0; j < KVS_RANS_LANES; j++) {
    d->x[j] = kvs__rd32(blk + 4 + 4 * j);
    KVS_RETURN_ERROR_IF(d->x[j] < KVS_RANS_L, KVS_ECORRUPT, "rANS state");
  }
  d->w = blk + KVS_RANS_BLOCK_HDR;
  d->pos = 0;
  return KVS_OK;
}

/* symbols [i, n) with a shared table. Branchless: a lane past the end of
   the stream reads a harmless word and the count check of dec_close
   catches it. */
static void dec_shared(dec_state *d, uint32_t i, uint32_t n, const uint32_t *lut, uint8_t *sym) {
  static const uint8_t zero2[2] = {0, 0};
  const uint8_t *wp = d->nw ? d->w : zero2;
  uint32_t last = d->nw ? d->nw - 1 : 0, pos = d->pos;
  const uint32_t mask = KVS_RANS_PROB_SCALE - 1;
  for (; i < n; i++) {
    uint32_t j = i % KVS_RANS_LANES, xs = d->x[j];
    uint32_t e = lut[xs & mask];
    xs = KVS_RANS_LUT_FREQ(e) * (xs >> KVS_RANS_PROB_BITS) + KVS_RANS_LUT_BIAS(e);
    uint32_t need = xs < KVS_RANS_L, m = 0u - need;
    uint32_t word = kvs__rd16(wp + 2 * (pos < last ? pos : last));
    xs = (((xs << 16) | word) & m) | (xs & ~m);
    pos += need;
    d->x[j] = xs;
    sym[i] = (uint8_t)KVS_RANS_LUT_SYM(e);
  }
  d->pos = pos;
}

static kvs_err dec_close(const dec_state *d, size_t *used) {
  KVS_RETURN_ERROR_IF(d->pos > d->nw, KVS_ECORRUPT, "rANS stream overrun");
  KVS_RETURN_ERROR_IF(d->pos != d->nw, KVS_ECORRUPT, "rANS stream not used exactly");
  for (uint32_t j = 0; j < KVS_RANS_LANES; j++)
    KVS_RETURN_ERROR_IF(d->x[j] != KVS_RANS_L, KVS_ECORRUPT, "rANS final state");
  *used = KVS__PAD4(KVS_RANS_BLOCK_HDR + 2ull * d->nw);
  return KVS_OK;
}

kvs_err kvs__rans_dec_block(const uint8_t *blk, size_t avail, uint32_t n,
                            const kvs__rans_table *const *tabs, int per_lane, const uint32_t *lut,
                            uint8_t *sym, size_t *used) {
  dec_state d;
  KVS_TRY(dec_open(&d, blk, avail, n));
  const uint32_t mask = KVS_RANS_PROB_SCALE - 1;
  if (!per_lane) {
    uint32_t i = 0;
#if KVS__HAVE_AVX2_PATH
    if (kvs__codec_simd() && n >= KVS_RANS_LANES) {
      uint32_t steps = n / KVS_RANS_LANES;
      d.pos = kvs__rans_dec_steps_avx2(d.x, d.w, d.nw, 0, steps, lut, sym);
      i = steps * KVS_RANS_LANES; /* the last partial step, below */
    }
#endif
    dec_shared(&d, i, n, lut, sym);
  } else {
    uint32_t pos = 0;
    for (uint32_t i = 0; i < n; i++) {
      uint32_t j = i % KVS_RANS_LANES;
      const kvs__rans_table *t = tabs[j];
      uint32_t xs = d.x[j], slot = xs & mask, s = find_sym(t, slot);
      xs = t->freq[s] * (xs >> KVS_RANS_PROB_BITS) + slot - t->cum[s];
      if (xs < KVS_RANS_L) {
        KVS_RETURN_ERROR_IF(pos >= d.nw, KVS_ECORRUPT, "rANS stream overrun");
        xs = (xs << 16) | kvs__rd16(d.w + 2 * pos++);
      }
      d.x[j] = xs;
      sym[i] = (uint8_t)s;
    }
    d.pos = pos;
  }
  return dec_close(&d, used);
}

kvs_err kvs__rans_dec_block2(const uint8_t *blk_a, size_t avail_a, const uint8_t *blk_b,
                             size_t avail_b, uint32_t n, const uint32_t *lut, uint8_t *sym_a,
                             uint8_t *sym_b, size_t *used_a, size_t *used_b) {
#if KVS__HAVE_AVX2_PATH
  if (kvs__codec_simd() && n >= KVS_RANS_LANES) {
    dec_state a, b;
    KVS_TRY(dec_open(&a, blk_a, avail_a, n));
    KVS_TRY(dec_open(&b, blk_b, avail_b, n));
    uint32_t steps = n / KVS_RANS_LANES;
    kvs__rans_dec_steps2_avx2(a.x, a.w, a.nw, &a.pos, sym_a, b.x, b.w, b.nw, &b.pos, sym_b, steps,
                              lut);
    dec_shared(&a, steps * KVS_RANS_LANES, n, lut, sym_a);
    dec_shared(&b, steps * KVS_RANS_LANES, n, lut, sym_b);
    KVS_TRY(dec_close(&a, used_a));
    return dec_close(&b, used_b);
  }
#endif
  KVS_TRY(kvs__rans_dec_block(blk_a, avail_a, n, NULL, 0, lut, sym_a, used_a));
  return kvs__rans_dec_block(blk_b, avail_b, n, NULL, 0, lut, sym_b, used_b);
}
