/* kvs_gpu_model.h - the reference model's forward pass on a CUDA GPU.
 *
 * Weights live on the device in fp16 (the GEMMs are cuBLAS, fp16 inputs with
 * f32 accumulation); the residual stream stays f32; RMSNorm, RoPE, SwiGLU and
 * a tiled flash-style causal attention (tensor cores through mma.sync m16n8k16,
 * online softmax in registers, never a T x T score matrix) are our kernels. The KV cache is the
 * canonical layout in fp16: per layer K (cap, kv_heads, head_dim), then V.
 *
 * CPU twins (model/model_int.h, private to model/): kvs_model_rmsnorm_cpu, kvs_model_rope_cpu,
 * kvs_model_swiglu_cpu, kvs_model_attn_cpu; the whole pass is checked against
 * kvs_model_prefill (tests/model/test_gpu_model.c, label gpu).
 *
 * Without CUDA or a device every function returns KVS_ENODEV. */
#ifndef KVS_GPU_MODEL_H
#define KVS_GPU_MODEL_H

#include "kvs_gpu.h"
#include "kvs_model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvs_gpu_model kvs_gpu_model;
/* The host weights of a kvs_model (model/model_int.h, kvs__model_weights_get). */
struct kvs__model_weights;

/* Uploads w (host f32 weights converted to fp16) or, for a random model
 * without host weights, generates the same seeded weights on the device.
 * max_tokens bounds the KV cache and the activations of one prefill call. */
kvs_err kvs_gpu_model_create(const struct kvs__model_weights *w, uint32_t max_tokens,
                             kvs_gpu_model **out);
void kvs_gpu_model_free(kvs_gpu_model *g);
/* Empties the KV cache. */
kvs_err kvs_gpu_model_reset(kvs_gpu_model *g);
uint32_t kvs_gpu_model_len(const kvs_gpu_model *g);
/* Appends n tokens (host ids) at positions len..len+n-1 and runs every layer;
 * logits (host, f32) of the last token, or of all n with all_logits
 * (n, n_vocab); logits may be NULL (then no output head is run). Blocks until
 * done; *ms (optional) gets the GPU time of the call measured with events. */
kvs_err kvs_gpu_model_prefill(kvs_gpu_model *g, const int32_t *tokens, uint32_t n, int all_logits,
                              float *logits, double *ms);
/* Copies KV of `layer`, slots [start, start+n), to host k/v (n, G, D) fp16. */
kvs_err kvs_gpu_model_kv_read(kvs_gpu_model *g, uint32_t layer, uint32_t start, uint32_t n,
                              kvs_f16 *k, kvs_f16 *v);
const kvs_model_cfg *kvs_gpu_model_config(const kvs_gpu_model *g);
/* Largest n of one embed/layer/layer_kv call (prefill slices longer inputs). */
uint32_t kvs_gpu_model_max_tokens(const kvs_gpu_model *g);
/* Measured GPU seconds per prefilled token so far (0 before any prefill). */
double kvs_gpu_model_prefill_sec_per_token(const kvs_gpu_model *g);

/* ---- sequences and layer-wise calls (what the GPU engine ops run on).
 * A kvs_gpu_seq is a KV cache on the device, (L, 2, cap, G, D) fp16, owned
 * by the caller and freed before its model. Hidden states, logits and the
 * k/v buffers of layer_kv are device memory; token ids, idx and pos arrays
 * are host memory. Every call returns when its work is done. */
typedef struct kvs_gpu_seq kvs_gpu_seq;
kvs_err kvs_gpu_seq_create(kvs_gpu_model *g, uint32_t capacity, kvs_gpu_seq **out);
void kvs_gpu_seq_free(kvs_gpu_seq *s);
uint32_t kvs_gpu_seq_len(const kvs_gpu_seq *s);
uint32_t kvs_gpu_seq_capacity(const kvs_gpu_seq *s);
kvs_err kvs_gpu_seq_truncate(kvs_gpu_seq *s, uint32_t n);
/* As kvs_gpu_model_prefill on sequence s; logits_dev (device) may be NULL. */
kvs_err kvs_gpu_seq_prefill(kvs_gpu_model *g, kvs_gpu_seq *s, const int32_t *tokens, uint32_t n,
                            int all_logits, float *logits_dev, double *ms);
/* KV of slots [start, start+n) of `layer` to/from k, v (n, G, D) fp16 in
 * host or device memory (the copy direction is inferred). */
kvs_err kvs_gpu_seq_kv_read(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n, void *k,
                            void *v);
kvs_err kvs_gpu_seq_kv_write(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                             const void *k, const void *v);
/* hidden_dev (n, E) f32 = embeddings of tokens[n]; n <= max_tokens */
kvs_err kvs_gpu_embed(kvs_gpu_model *g, const int32_t *tokens, uint32_t n, float *hidden_dev);
/* kvs_model_layer on the GPU: tokens in slots idx[n] at positions pos[n]
 * (NULL: idx) write their K/V, attend slots 0..idx[i], hidden_dev updated. */
kvs_err kvs_gpu_layer(kvs_gpu_model *g, kvs_gpu_seq *s, uint32_t layer, uint32_t n,
                      const uint32_t *idx, const uint32_t *pos, float *hidden_dev);
/* kvs_model_layer_kv on the GPU: fresh K/V into k_dev/v_dev (n, G, D) fp16. */
kvs_err kvs_gpu_layer_kv(kvs_gpu_model *g, uint32_t layer, uint32_t n, const uint32_t *pos,
                         const float *hidden_dev, void *k_dev, void *v_dev);
/* logits_dev (n, V) from hidden_dev (n, E). */
kvs_err kvs_gpu_logits(kvs_gpu_model *g, uint32_t n, const float *hidden_dev, float *logits_dev);

/* Device buffers for callers that have no CUDA headers (tests, blend):
 * allocate, free (NULL is fine), copy between any host/device memory. */
kvs_err kvs_gpu_buffer_alloc(size_t bytes, void **out);
void kvs_gpu_buffer_free(void *p);
kvs_err kvs_gpu_copy(void *dst, const void *src, size_t bytes);

/* The engine ops over this model: kvs_gpu_model_engine in engines/kvs_engines.h. */

/* Single kernels over host buffers (for the twin tests).
 * y (n, E) fp16 = rmsnorm(x (n, E) f32) * w (E) */
kvs_err kvs_gpu_rmsnorm_host(const float *x, const float *w, kvs_f16 *y, uint32_t n, uint32_t E,
                             float eps);
/* q (n, H, D) f32 rotated in place at positions pos[n] (NORM pairs, or
 * NEOX ones with neox) */
kvs_err kvs_gpu_rope_host(float *q, uint32_t n, uint32_t H, uint32_t D, const uint32_t *pos,
                          float theta, int neox);
/* out (n, F) fp16 = silu(gu[:, :F]) * gu[:, F:], gu (n, 2F) fp16 */
kvs_err kvs_gpu_swiglu_host(const kvs_f16 *gu, kvs_f16 *out, uint32_t n, uint32_t F);
/* out (n, H, D) fp16: causal attention of q (n, H, D) fp16 at slots past..past+n-1
 * over k, v (kv_len, G, D) fp16 (kv_len >= past + n), D = 64 or 128. split: 0 = one
 * grid, 1 = split over the keys where the grid is small (as the engine does). */
kvs_err kvs_gpu_flash_attn_host(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v, kvs_f16 *out,
                                uint32_t n, uint32_t H, uint32_t G, uint32_t D, uint32_t past,
                                uint32_t kv_len, int split);

#ifdef __cplusplus
}
#endif
#endif
