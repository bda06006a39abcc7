/* f16c.c - the one CPU-specific fast path of the codec: fp32 -> fp16 rows
 * with F16C (x86-64), chosen at run time. Same rounding as kvs_f32_to_f16
 * (nearest even, subnormals kept); NaN stays NaN (its payload may differ). */
#include "codec_int.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("avx,f16c"))) static void store_f16c(uint8_t *dst, const float *row,
                                                           uint32_t n) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(row + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), h);
  }
  for (; i < n; i++) {
    kvs_f16 h = kvs_f32_to_f16(row[i]);
    memcpy(dst + 2 * i, &h, 2);
  }
}

int kvs__f16c_store(uint8_t *dst, const float *row, uint32_t n) {
  static int have = -1;
  if (have < 0) { /* F16C, AVX and OS-enabled YMM state (cpuid leaf 1, xgetbv) */
    unsigned a, b, c, d;
    have = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) && (c & (1u << 28)) &&
        (c & (1u << 27))) {
      unsigned lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      have = (lo & 6u) == 6u;
    }
  }
  if (!have) return 0;
  store_f16c(dst, row, n);
  return 1;
}
#else
int kvs__f16c_store(uint8_t *dst, const float *row, uint32_t n) {
  (void)dst, (void)row, (void)n;
  return 0;
}
#endif
