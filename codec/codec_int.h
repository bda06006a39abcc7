/* codec_int.h - private to codec/: the per-plane profile interface, the
 * output writer, the rANS coder and the Hadamard transform. */
#ifndef KVS_CODEC_INT_H
#define KVS_CODEC_INT_H

#include <math.h>
#include <string.h>

#include "kvs_codec.h"

#define KVS__PAD4(n)    (((n) + 3u) & ~(size_t)3u)
#define KVS__PAD8(n)    (((n) + 7u) & ~(size_t)7u)
#define KVS__CDIV(a, b) (((a) + (b)-1u) / (b))

/* One plane: layer `layer`'s K (kv = 0) or V (kv = 1), (T, H, D). */
typedef struct kvs__plane {
  uint32_t T, H, D;
  uint32_t layer, kv, n_layers;
  const kvs_codec_params *p;
  uint32_t dtype; /* of the encoded input (F16 or BF16) */
} kvs__plane;

/* Where decoded rows go: contiguous or paged, heads [h0, h1). */
typedef struct kvs__writer {
  const kvs_codec_out *o;
  uint32_t T, H, D, h0, h1;
  uint32_t layer, kv;
  size_t esize;
} kvs__writer;

/* Address of output row (t, h), or NULL when h is outside [h0, h1). */
static inline uint8_t *kvs__row_ptr(const kvs__writer *w, uint32_t t, uint32_t h) {
  if (h < w->h0 || h >= w->h1) return NULL;
  uint32_t hs = w->h1 - w->h0;
  const kvs_codec_out *o = w->o;
  if (o->base) {
    uint64_t plane = (uint64_t)(2u * w->layer + w->kv) * w->T * hs;
    uint64_t row = plane + (uint64_t)t * hs + (h - w->h0);
    return (uint8_t *)o->base + row * w->D * w->esize;
  }
  uint8_t *cache = (uint8_t *)(w->kv ? o->v_cache[w->layer] : o->k_cache[w->layer]);
  uint64_t slot =
      (uint64_t)(uint32_t)o->block_table[t / o->block_size] * o->block_size + t % o->block_size;
  return cache + (slot * hs + (h - w->h0)) * w->D * w->esize;
}

/* f32 -> f16 of n floats with the F16C instruction when the CPU has it
 * (round to nearest even, like kvs_f32_to_f16); returns 0 when it did not. */
int kvs__f16c_store(uint8_t *dst, const float *row, uint32_t n);

static inline void kvs__store_f32(uint8_t *dst, uint32_t dtype, const float *row, uint32_t n) {
  if (dtype == KVS_DTYPE_F32) {
    memcpy(dst, row, (size_t)n * 4);
  } else if (dtype == KVS_DTYPE_F16) {
    if (n >= 8 && kvs__f16c_store(dst, row, n)) return;
    for (uint32_t i = 0; i < n; i++) {
      kvs_f16 h = kvs_f32_to_f16(row[i]);
      memcpy(dst + 2 * i, &h, 2);
    }
  } else {
    for (uint32_t i = 0; i < n; i++) {
      kvs_bf16 h = kvs_f32_to_bf16(row[i]);
      memcpy(dst + 2 * i, &h, 2);
    }
  }
}

static inline void kvs__store_row(const kvs__writer *w, uint32_t t, uint32_t h, const float *row) {
  uint8_t *dst = kvs__row_ptr(w, t, h);
  if (dst) kvs__store_f32(dst, w->o->dtype, row, w->D);
}

static inline float kvs__load_elem(const void *src, uint32_t dtype, size_t i) {
  uint16_t h;
  memcpy(&h, (const uint8_t *)src + 2 * i, 2);
  return dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(h) : kvs_f16_to_f32(h);
}

static inline float kvs__f16r(float x) { return kvs_f16_to_f32(kvs_f32_to_f16(x)); }

/* A lossy profile, plane by plane. enc returns body bytes (multiple of 4,
 * including the leading u32 plane_bytes) through *len. */
typedef struct kvs__profile_ops {
  size_t (*bound)(const kvs__plane *pl);
  kvs_err (*enc)(const kvs__plane *pl, const float *x /* (T,H,D) */, uint8_t *out, size_t cap,
                 size_t *len);
  kvs_err (*dec)(const kvs__plane *pl, const uint8_t *body, size_t n, const kvs__writer *w,
                 uint8_t *ws, size_t ws_len);
  size_t (*ws_bound)(const kvs__plane *pl);
} kvs__profile_ops;

extern const kvs__profile_ops kvs__ops_int8, kvs__ops_kivi, kvs__ops_fp4, kvs__ops_dense,
    kvs__ops_cachegen;

/* ------------------------------------------------------------------ rANS */
typedef struct kvs__rans_table {
  uint32_t n_sym;
  uint16_t freq[256];
  uint16_t cum[257];
} kvs__rans_table;

/* Normalises counts[0,n) (n <= 256) to frequencies summing to 2^12, every
 * nonzero count keeping a nonzero frequency. KVS_EINVAL when all are 0. */
kvs_err kvs__rans_normalize(const uint32_t *counts, uint32_t n, uint16_t *freq);
/* Builds cum from freq; KVS_ECORRUPT unless they sum to 2^12 exactly. */
kvs_err kvs__rans_table_init(kvs__rans_table *t, const uint16_t *freq, uint32_t n_sym);

/* Encodes one block: sym[i] for i < n (n <= 32*steps), symbol i at step
 * i/32 of lane i%32, with table tabs[lane] (tabs[0] for all when
 * per_lane == 0). Writes the block (header + words, padded to 4) into out
 * and its size into *len. words_tmp: scratch of 32*steps u16. */
kvs_err kvs__rans_enc_block(const uint8_t *sym, uint32_t n, const kvs__rans_table *const *tabs,
                            int per_lane, uint8_t *out, size_t cap, size_t *len,
                            uint16_t *words_tmp);
/* Decodes a block of n symbols into sym; lut (2^12 packed entries, see
 * KVS_RANS_LUT_ENTRY) maps a slot to its symbol for a shared table (per_lane == 0); per-lane tables
 * search cum. Verifies the stream is used exactly and every lane ends at 2^16. */
kvs_err kvs__rans_dec_block(const uint8_t *blk, size_t avail, uint32_t n,
                            const kvs__rans_table *const *tabs, int per_lane, const uint32_t *lut,
                            uint8_t *sym, size_t *used);
/* Two shared-table blocks of n symbols each (a, then b: same checks and
 * results as two kvs__rans_dec_block calls), decoded together where the
 * SIMD path runs. */
kvs_err kvs__rans_dec_block2(const uint8_t *blk_a, size_t avail_a, const uint8_t *blk_b,
                             size_t avail_b, uint32_t n, const uint32_t *lut, uint8_t *sym_a,
                             uint8_t *sym_b, size_t *used_a, size_t *used_b);
size_t kvs__rans_block_bound(uint32_t n);
void kvs__rans_build_lut(const kvs__rans_table *t, uint32_t *lut /* [4096] */);

/* ------------------------------------------------------ run-time SIMD */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVS__HAVE_AVX2_PATH 1
#else
#define KVS__HAVE_AVX2_PATH 0
#endif
/* 1 when the AVX2 decode paths run: the CPU has AVX2 (+ F16C, OS YMM
 * state) and kvs__codec_set_simd(0) was not called. Detected once. */
int kvs__codec_simd(void);
int kvs__cpu_has_avx2(void);
/* Tests and benchmarks only (process-wide, not thread-safe): 0 forces the
 * scalar reference paths, 1 restores the automatic choice. */
void kvs__codec_set_simd(int on);
#if KVS__HAVE_AVX2_PATH
/* `steps` full steps (32 symbols each) of a shared-table rANS block from
 * states x[32] (updated) and word position pos (returned); words past nw
 * read as 0 (the caller's count check fails such a block). */
uint32_t kvs__rans_dec_steps_avx2(uint32_t *x, const uint8_t *w, uint32_t nw, uint32_t pos,
                                  uint32_t steps, const uint32_t *lut, uint8_t *sym);
/* The same for two blocks a and b at once (equal step counts). */
void kvs__rans_dec_steps2_avx2(uint32_t *xa, const uint8_t *wa, uint32_t nwa, uint32_t *posa,
                               uint8_t *syma, uint32_t *xb, const uint8_t *wb, uint32_t nwb,
                               uint32_t *posb, uint8_t *symb, uint32_t steps, const uint32_t *lut);
/* row[d] = (qmin + sr[d]) * step; nonzero when some sr[d] >= n_sym. */
uint32_t kvs__dense_deq_avx2(const uint8_t *sr, uint32_t D, uint32_t n_sym, int qmin, float step,
                             float *row);
/* row[d] = row[d] * g * cf[d] + mf[d], in that order. */
void kvs__dense_affine_avx2(float *row, uint32_t D, float g, const float *cf, const float *mf);
/* Both of the above for an unrotated row, then to f16 at dst (F16C, nearest
 * even, as kvs__store_f32); nonzero when some sr[d] >= n_sym. */
uint32_t kvs__dense_row_f16_avx2(const uint8_t *sr, uint32_t D, uint32_t n_sym, int qmin,
                                 float step, float g, const float *cf, const float *mf,
                                 uint8_t *dst);
#endif

/* In-place orthonormal Walsh-Hadamard transform of x[n], n a power of 2.
 * The first two stages are done four at a time so the rest vectorizes. */
static inline void kvs__fwht(float *x, uint32_t n) {
  if (n >= 4) {
    for (uint32_t i = 0; i < n; i += 4) {
      float a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
      float s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
      x[i] = s0 + s2, x[i + 1] = s1 + s3, x[i + 2] = s0 - s2, x[i + 3] = s1 - s3;
    }
  } else if (n == 2) {
    float a = x[0], b = x[1];
    x[0] = a + b, x[1] = a - b;
  }
  for (uint32_t len = 4; len < n; len <<= 1)
    for (uint32_t i = 0; i < n; i += len << 1) {
      float *lo = x + i, *hi = x + i + len;
      for (uint32_t j = 0; j < len; j++) {
        float a = lo[j], b = hi[j];
        lo[j] = a + b;
        hi[j] = a - b;
      }
    }
  float s = 1.0f / sqrtf((float)n);
  for (uint32_t i = 0; i < n; i++)
    x[i] *= s;
}

#endif
