/* model_rand.h - the seeded random weights of kvs_model_create_random, as a
 * pure function of (seed, tensor id, element index), shared by C and CUDA so
 * that the CPU and the GPU build the same model without copying 16 GB.
 * Tensor ids: 0 embedding, 1 output norm, 2 output head, 16 + 16*l + k for
 * layer l's k-th weight (0 attn_norm, 1 wq, 2 wk, 3 wv, 4 wo, 5 ffn_norm,
 * 6 gate, 7 up, 8 down). */
#ifndef KVS_MODEL_RAND_H
#define KVS_MODEL_RAND_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs_model.h"

#define KVS__RT_EMBD     0u
#define KVS__RT_OUT_NORM 1u
#define KVS__RT_OUTPUT   2u
#define KVS__RT_LAYER(l) (16u + 16u * (uint32_t)(l))

typedef struct kvs__rscale {
  float mul, add; /* w = add + mul * u, u uniform in [-1, 1) */
} kvs__rscale;

KVS_HD float kvs__rand_weight(uint64_t seed, uint32_t tid, uint64_t i, kvs__rscale s) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + ((uint64_t)tid << 40) + i + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  float u = (float)(z >> 40) * (1.0f / 8388608.0f) - 1.0f;
  return s.add + s.mul * u;
}

/* Scale per tensor: norms near 1, matrices ~ 1/sqrt(fan-in) so activations
 * stay O(1) through 32 layers; the embedding O(1). */
static inline kvs__rscale kvs__rand_scale(const kvs_model_cfg *c, uint32_t tid) {
  kvs__rscale s = {0.0f, 0.0f};
  if (tid == KVS__RT_EMBD) {
    s.mul = 1.0f;
    return s;
  }
  if (tid == KVS__RT_OUT_NORM) {
    s.mul = 0.1f;
    s.add = 1.0f;
    return s;
  }
  if (tid == KVS__RT_OUTPUT) {
    s.mul = 1.7f / sqrtf((float)c->n_embd);
    return s;
  }
  uint32_t k = (tid - 16u) % 16u;
  float in = (float)c->n_embd;
  if (k == 0 || k == 5) {
    s.mul = 0.1f;
    s.add = 1.0f;
    return s;
  }
  if (k >= 9 && k <= 11) { /* Q, K, V biases (qwen2-shaped models) */
    s.mul = 0.5f;
    return s;
  }
  if (k == 4) in = (float)(c->n_heads * c->head_dim);
  if (k == 8) in = (float)c->n_ff;
  s.mul = 1.7f / sqrtf(in);
  return s;
}

static inline void kvs__rand_fill(float *dst, uint64_t seed, uint32_t tid, size_t n,
                                  kvs__rscale s) {
  for (size_t i = 0; i < n; i++)
    dst[i] = kvs__rand_weight(seed, tid, i, s);
}
#endif
