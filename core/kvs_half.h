/* kvs_half.h - fp16 / bf16 <-> fp32 conversions, scalar and exact.
 *
 * Shared by C and CUDA (KVS_HD marks them host+device). Round to nearest even;
 * NaN stays NaN, Inf stays Inf, subnormals are handled. The codec, the model
 * and the CPU twins of GPU kernels all convert through these so that a CPU
 * twin and its kernel agree bit for bit. */
#ifndef KVS_HALF_H
#define KVS_HALF_H
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define KVS_HD __host__ __device__ __forceinline__
#else
#define KVS_HD static inline
#endif

typedef uint16_t kvs_f16;  /* IEEE 754 binary16 bits */
typedef uint16_t kvs_bf16; /* bfloat16 bits */

KVS_HD uint32_t kvs__f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
KVS_HD float kvs__bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

KVS_HD float kvs_f16_to_f32(kvs_f16 h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13); /* Inf / NaN */
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else { /* subnormal: value = man * 2^-24 */
    float f = (float)man * 5.9604644775390625e-8f;
    u = sign | kvs__f32_bits(f);
  }
  return kvs__bits_f32(u);
}

KVS_HD kvs_f16 kvs_f32_to_f16(float f) {
  uint32_t u = kvs__f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return (kvs_f16)(sign | 0x7e00u | ((absu >> 13) & 0x3ffu)); /* NaN */
  if (absu >= 0x477ff000u) return (kvs_f16)(sign | 0x7c00u); /* overflow (rounds to Inf) */
  if (absu < 0x38800000u) {                                  /* result subnormal or zero */
    if (absu < 0x33000000u) return (kvs_f16)sign;            /* < half of smallest subnormal */
    uint32_t e = absu >> 23;
    uint32_t m = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14 + (112 - e) + 1... gives mantissa >> (126 - e) */
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (kvs_f16)(sign | r);
  }
  uint32_t r = absu - 0x38000000u; /* rebias 127 -> 15 */
  uint32_t out = r >> 13;
  uint32_t rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (out & 1u))) out++;
  return (kvs_f16)(sign | out);
}

KVS_HD float kvs_bf16_to_f32(kvs_bf16 h) { return kvs__bits_f32((uint32_t)h << 16); }

KVS_HD kvs_bf16 kvs_f32_to_bf16(float f) {
  uint32_t u = kvs__f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (kvs_bf16)((u >> 16) | 0x40u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (kvs_bf16)(u >> 16);
}

#endif
