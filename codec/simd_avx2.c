/* simd_avx2.c - AVX2 paths of the dense decoder, chosen at run time
 * (kvs__codec_simd). Users and CI build without -march, so every function
 * here carries its own target attribute and is only called after the CPU
 * was checked. Each one computes exactly what its scalar twin in rans.c /
 * prof_entropy.c computes (same integer steps, same float operations in the
 * same order, no FMA): test_codec decodes with both and compares bytes.
 *
 * rANS: the 32 lanes of a step are four groups of eight in lane order; per
 * group one gather reads the packed table entries, and the lanes that
 * renormalise take the next words of the stream in lane order through a
 * permutation looked up from their 8-bit mask. */
#include "codec_int.h"

#if KVS__HAVE_AVX2_PATH
#include <cpuid.h>
#include <immintrin.h>

/* bit i of m counted below lane l: entry m, byte l = popcount(m & ((1 << l) - 1)) */
#define PC8(v)                                                                                     \
  (((v)&1) + (((v) >> 1) & 1) + (((v) >> 2) & 1) + (((v) >> 3) & 1) + (((v) >> 4) & 1) +           \
   (((v) >> 5) & 1) + (((v) >> 6) & 1) + (((v) >> 7) & 1))
#define PERM(m)                                                                                    \
  {                                                                                                \
    PC8((m)&0), PC8((m)&1), PC8((m)&3), PC8((m)&7), PC8((m)&15), PC8((m)&31), PC8((m)&63),         \
        PC8((m)&127)                                                                               \
  }
#define PERM4(m)   PERM(m), PERM((m) + 1), PERM((m) + 2), PERM((m) + 3)
#define PERM16(m)  PERM4(m), PERM4((m) + 4), PERM4((m) + 8), PERM4((m) + 12)
#define PERM64(m)  PERM16(m), PERM16((m) + 16), PERM16((m) + 32), PERM16((m) + 48)
#define PERM256(m) PERM64(m), PERM64((m) + 64), PERM64((m) + 128), PERM64((m) + 192)
static const uint8_t k_perm[256][8] __attribute__((aligned(64))) = {PERM256(0)};

int kvs__cpu_has_avx2(void) {
  static int have = -1; /* racy but idempotent: every thread computes the same value */
  if (have < 0) {
    int h = 0;
    unsigned a, b, c, d;
    /* AVX + F16C + OS-saved YMM state (leaf 1, xgetbv), then AVX2 (leaf 7) */
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) && (c & (1u << 28)) &&
        (c & (1u << 27)) && (c & (1u << 23))) {
      unsigned lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      if ((lo & 6u) == 6u && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 5))) h = 1;
    }
    have = h;
  }
  return have;
}

/* Words for one group of eight lanes, starting at word `pos`. Near the end
 * of the stream (or past it, in a corrupt block) the load comes from a
 * zero-padded copy: never a byte past the block. */
__attribute__((target("avx2"))) static inline __m128i words8(const uint8_t *w, uint32_t nw,
                                                             uint32_t pos) {
  if (pos + 8 <= nw) return _mm_loadu_si128((const __m128i *)(const void *)(w + 2ull * pos));
  uint8_t tmp[16] = {0};
  if (pos < nw) memcpy(tmp, w + 2ull * pos, 2ull * (nw - pos));
  return _mm_loadu_si128((const __m128i *)(void *)tmp);
}

/* One group of eight lanes of one step: table lookup, state update, and
 * renormalisation from the stream at *pos; returns the 8 symbols (as i32). */
__attribute__((target("avx2,popcnt"))) static inline __m256i
group_step(__m256i *X, const uint8_t *w, uint32_t nw, uint32_t *pos, const uint32_t *lut) {
  const __m256i mask = _mm256_set1_epi32((int)(KVS_RANS_PROB_SCALE - 1));
  const __m256i m12 = _mm256_set1_epi32(0xfff), one = _mm256_set1_epi32(1);
  __m256i xv = *X;
  __m256i e = _mm256_i32gather_epi32((const int *)(const void *)lut, _mm256_and_si256(xv, mask), 4);
  __m256i f = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(e, 8), m12), one);
  xv = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32(xv, KVS_RANS_PROB_BITS)),
                        _mm256_srli_epi32(e, 20));
  __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(xv, 16), _mm256_setzero_si256());
  unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
  __m256i wv = _mm256_cvtepu16_epi32(words8(w, nw, *pos));
  __m256i pv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)k_perm[m]));
  wv = _mm256_permutevar8x32_epi32(wv, pv);
  *X = _mm256_blendv_epi8(xv, _mm256_or_si256(_mm256_slli_epi32(xv, 16), wv), need);
  *pos += (uint32_t)__builtin_popcount(m);
  return _mm256_and_si256(e, _mm256_set1_epi32(0xff));
}

/* 32 symbols of one step in lane order from the four groups' symbols */
__attribute__((target("avx2"))) static inline void store_sym32(uint8_t *dst, __m256i e0, __m256i e1,
                                                               __m256i e2, __m256i e3) {
  __m256i s = _mm256_packus_epi16(_mm256_packus_epi32(e0, e1), _mm256_packus_epi32(e2, e3));
  _mm256_storeu_si256((__m256i *)(void *)dst,
                      _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

__attribute__((target("avx2,popcnt"))) uint32_t
kvs__rans_dec_steps_avx2(uint32_t *x, const uint8_t *w, uint32_t nw, uint32_t pos, uint32_t steps,
                         const uint32_t *lut, uint8_t *sym) {
  __m256i X[4];
  for (int g = 0; g < 4; g++)
    X[g] = _mm256_loadu_si256((const __m256i *)(const void *)(x + 8 * g));
  for (uint32_t k = 0; k < steps; k++) {
    __m256i e0 = group_step(&X[0], w, nw, &pos, lut);
    __m256i e1 = group_step(&X[1], w, nw, &pos, lut);
    __m256i e2 = group_step(&X[2], w, nw, &pos, lut);
    __m256i e3 = group_step(&X[3], w, nw, &pos, lut);
    store_sym32(sym + 32ull * k, e0, e1, e2, e3);
  }
  for (int g = 0; g < 4; g++)
    _mm256_storeu_si256((__m256i *)(void *)(x + 8 * g), X[g]);
  return pos;
}

/* Two independent blocks in one loop: the table gathers of one hide the
 * latency of the other's (a single block waits on its own gathers). */
__attribute__((target("avx2,popcnt"))) void
kvs__rans_dec_steps2_avx2(uint32_t *xa, const uint8_t *wa, uint32_t nwa, uint32_t *posa,
                          uint8_t *syma, uint32_t *xb, const uint8_t *wb, uint32_t nwb,
                          uint32_t *posb, uint8_t *symb, uint32_t steps, const uint32_t *lut) {
  __m256i A[4], B[4];
  uint32_t pa = *posa, pb = *posb;
  for (int g = 0; g < 4; g++) {
    A[g] = _mm256_loadu_si256((const __m256i *)(const void *)(xa + 8 * g));
    B[g] = _mm256_loadu_si256((const __m256i *)(const void *)(xb + 8 * g));
  }
  for (uint32_t k = 0; k < steps; k++) {
    __m256i a0 = group_step(&A[0], wa, nwa, &pa, lut);
    __m256i b0 = group_step(&B[0], wb, nwb, &pb, lut);
    __m256i a1 = group_step(&A[1], wa, nwa, &pa, lut);
    __m256i b1 = group_step(&B[1], wb, nwb, &pb, lut);
    __m256i a2 = group_step(&A[2], wa, nwa, &pa, lut);
    __m256i b2 = group_step(&B[2], wb, nwb, &pb, lut);
    __m256i a3 = group_step(&A[3], wa, nwa, &pa, lut);
    __m256i b3 = group_step(&B[3], wb, nwb, &pb, lut);
    store_sym32(syma + 32ull * k, a0, a1, a2, a3);
    store_sym32(symb + 32ull * k, b0, b1, b2, b3);
  }
  for (int g = 0; g < 4; g++) {
    _mm256_storeu_si256((__m256i *)(void *)(xa + 8 * g), A[g]);
    _mm256_storeu_si256((__m256i *)(void *)(xb + 8 * g), B[g]);
  }
  *posa = pa, *posb = pb;
}

__attribute__((target("avx2"))) uint32_t kvs__dense_deq_avx2(const uint8_t *sr, uint32_t D,
                                                             uint32_t n_sym, int qmin, float step,
                                                             float *row) {
  const __m256i qv = _mm256_set1_epi32(qmin), lim = _mm256_set1_epi32((int)n_sym - 1);
  const __m256 sv = _mm256_set1_ps(step);
  __m256i bad = _mm256_setzero_si256();
  uint32_t d = 0, badn = 0;
  for (; d + 8 <= D; d += 8) {
    __m256i s = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(sr + d)));
    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(s, lim));
    /* (float)(qmin + s) * step: the scalar decoder's deq[s] */
    _mm256_storeu_ps(row + d, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s, qv)), sv));
  }
  for (; d < D; d++) {
    badn |= sr[d] >= n_sym;
    row[d] = (float)(qmin + (int)sr[d]) * step;
  }
  return badn | !_mm256_testz_si256(bad, bad);
}

__attribute__((target("avx2"))) void kvs__dense_affine_avx2(float *row, uint32_t D, float g,
                                                            const float *cf, const float *mf) {
  const __m256 gv = _mm256_set1_ps(g);
  uint32_t d = 0;
  for (; d + 8 <= D; d += 8) {
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(row + d), gv), _mm256_loadu_ps(cf + d));
    _mm256_storeu_ps(row + d, _mm256_add_ps(v, _mm256_loadu_ps(mf + d)));
  }
  for (; d < D; d++)
    row[d] = row[d] * g * cf[d] + mf[d];
}
__attribute__((target("avx2,f16c"))) uint32_t
kvs__dense_row_f16_avx2(const uint8_t *sr, uint32_t D, uint32_t n_sym, int qmin, float step,
                        float g, const float *cf, const float *mf, uint8_t *dst) {
  const __m256i qv = _mm256_set1_epi32(qmin), lim = _mm256_set1_epi32((int)n_sym - 1);
  const __m256 sv = _mm256_set1_ps(step), gv = _mm256_set1_ps(g);
  __m256i bad = _mm256_setzero_si256();
  uint32_t d = 0, badn = 0;
  for (; d + 8 <= D; d += 8) {
    __m256i s = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(sr + d)));
    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(s, lim));
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s, qv)), sv);
    v = _mm256_mul_ps(_mm256_mul_ps(v, gv), _mm256_loadu_ps(cf + d));
    v = _mm256_add_ps(v, _mm256_loadu_ps(mf + d));
    _mm_storeu_si128((__m128i *)(void *)(dst + 2ull * d),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; d < D; d++) {
    badn |= sr[d] >= n_sym;
    float v = (float)(qmin + (int)sr[d]) * step * g * cf[d] + mf[d];
    kvs_f16 h = kvs_f32_to_f16(v);
    memcpy(dst + 2ull * d, &h, 2);
  }
  return badn | !_mm256_testz_si256(bad, bad);
}
#else
int kvs__cpu_has_avx2(void) { return 0; }
#endif

/* 1: automatic (AVX2 where the CPU has it), 0: scalar only. */
static int g_simd = 1;

void kvs__codec_set_simd(int on) { g_simd = on ? 1 : 0; }

int kvs__codec_simd(void) { return g_simd && kvs__cpu_has_avx2(); }
