/* kvs_synth.h - synthetic KV with the statistics that matter to a codec:
 * keys with per-channel bias and a few outlier channels (10-20x), values
 * correlated along tokens (AR(1)), magnitudes that vary by layer. Shared by
 * the codec tests and kvs-bench-codec. Deterministic for a given seed. */
#ifndef KVS_SYNTH_H
#define KVS_SYNTH_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kvs_core.h"

static inline uint64_t kvs_synth_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline float kvs_synth_gauss(uint64_t *s) {
  double u1 = ((kvs_synth_rand(s) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
  double u2 = (kvs_synth_rand(s) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Fills kv (canonical layout of l, T tokens, l->dtype f16 or bf16). */
static inline void kvs_synth_kv(const kvs_layout *l, uint32_t T, uint64_t seed, void *kv) {
  uint32_t H = l->n_kv_heads, D = l->head_dim;
  uint16_t *o = (uint16_t *)kv;
  uint64_t s = seed * 0x2545f4914f6cdd1dull + 1;
  float *bias = (float *)malloc(sizeof(float) * H * D * 2);
  float *gain = bias + H * D;
  float *prev = (float *)malloc(sizeof(float) * H * D);
  for (uint32_t layer = 0; layer < l->n_layers; layer++) {
    float lscale = 0.5f + 1.5f * (float)layer / (float)(l->n_layers > 1 ? l->n_layers - 1 : 1);
    for (uint32_t kv2 = 0; kv2 < 2; kv2++) {
      for (uint32_t c = 0; c < H * D; c++) {
        int outlier = (kvs_synth_rand(&s) % 16) == 0;
        bias[c] = kv2 == 0 ? kvs_synth_gauss(&s) * 1.5f : kvs_synth_gauss(&s) * 0.1f;
        gain[c] = (0.5f + (float)(kvs_synth_rand(&s) % 1000) / 1000.0f) *
                  (kv2 == 0 && outlier ? 10.0f + (float)(kvs_synth_rand(&s) % 10) : 1.0f);
        prev[c] = kvs_synth_gauss(&s);
      }
      float rho = kv2 == 0 ? 0.5f : 0.8f, inn = sqrtf(1 - rho * rho);
      for (uint32_t t = 0; t < T; t++)
        for (uint32_t c = 0; c < H * D; c++) {
          prev[c] = rho * prev[c] + inn * kvs_synth_gauss(&s);
          float v = lscale * (bias[c] + gain[c] * prev[c]);
          size_t i = ((size_t)(2 * layer + kv2) * T + t) * H * D + c;
          o[i] = l->dtype == KVS_DTYPE_BF16 ? kvs_f32_to_bf16(v) : kvs_f32_to_f16(v);
        }
    }
  }
  free(bias);
  free(prev);
}
#endif
