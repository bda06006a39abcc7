/* model_int.h - private to model/: shared helpers and the model struct. */
#ifndef KVS_MODEL_INT_H
#define KVS_MODEL_INT_H

#include <stdint.h>

#include "kvs_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- string -> int32 hash table (open addressing, keys copied) */
typedef struct kvs__strmap {
  uint64_t cap; /* power of two */
  uint64_t n;
  int32_t *slot; /* index into keys, -1 = empty */
  const char **key;
  uint32_t *klen;
  int32_t *val;
  char *arena;
  uint64_t arena_used, arena_cap;
  uint64_t n_keys_cap;
} kvs__strmap;
kvs_err kvs__strmap_init(kvs__strmap *m, uint64_t n_keys, uint64_t total_bytes);
/* Adds key -> val; an existing key keeps its first value. */
kvs_err kvs__strmap_put(kvs__strmap *m, const char *k, uint32_t len, int32_t val);
int32_t kvs__strmap_get(const kvs__strmap *m, const char *k, uint32_t len); /* -1 if absent */
void kvs__strmap_free(kvs__strmap *m);

/* ---- model internals shared with the engine and the GPU path */
uint64_t kvs__model_seed(const kvs_model *m);

/* CPU twins of the model/cuda kernels.
 * x, y (n, E); w (E): y = x / sqrt(mean(x^2) + eps) * w */
void kvs_model_rmsnorm_cpu(const float *x, const float *w, float *y, uint32_t n, uint32_t E,
                           float eps);
/* x (n, heads, D) rotated in place by angle pos[t] * theta^(-2i/D), pair i
 * = (2i, 2i+1) (NORM, llama) or, with neox, (i, i + D/2) (NEOX, qwen2) */
void kvs_model_rope_cpu(float *x, uint32_t n, uint32_t heads, uint32_t D, const uint32_t *pos,
                        float theta, int neox);
/* g[i] = silu(g[i]) * u[i] */
void kvs_model_swiglu_cpu(float *g, const float *u, size_t n);
/* Twin of the flash attention kernel: out (n, H, D) f32 = causal softmax
 * attention of q (n, H, D) at slots past..past+n-1 over k, v (kv_len, G, D),
 * all fp16 inputs, f32 math, scale 1/sqrt(D). */
void kvs_model_attn_cpu(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v, float *out,
                        uint32_t n, uint32_t H, uint32_t G, uint32_t D, uint32_t past,
                        uint32_t kv_len);
/* The weights of a model, for the GPU path to upload. Shapes as in model.c;
 * all NULL when the model has no host weights (random GPU-only models: the
 * GPU generates them from seed with model_rand.h). Valid while the model lives. */
typedef struct kvs__layer_weights {
  float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
  float *bq, *bk, *bv; /* (H*D), (G*D), (G*D) when cfg.qkv_bias, else NULL */
} kvs__layer_weights;
typedef struct kvs__model_weights {
  kvs_model_cfg cfg;
  const float *tok_embd, *output, *out_norm; /* output == tok_embd when tied */
  const kvs__layer_weights *layers;          /* [n_layers] */
  int host;                                  /* 1 when the pointers are set */
  int random;                                /* 1 for kvs_model_create_random models */
  uint64_t seed;
} kvs__model_weights;
void kvs__model_weights_get(const kvs_model *m, kvs__model_weights *w);

#ifdef __cplusplus
}
#endif
#endif
