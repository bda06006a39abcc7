/* kvs_gpu_model.h - the reference model's forward pass on a CUDA GPU.
 *
 * Weights live on the device in fp16 (the GEMMs are cuBLAS, fp16 inputs with
 * f32 accumulation); the residual stream stays f32; RMSNorm, RoPE, SwiGLU and
 * a tiled flash-style causal attention (tensor cores through WMMA, online
 * softmax, never a T x T score matrix) are our kernels. The KV cache is the
 * canonical layout in fp16: per layer K (cap, kv_heads, head_dim), then V.
 *
 * CPU twins (model/model_int.h): kvs_model_rmsnorm_cpu, kvs_model_rope_cpu,
 * kvs_model_swiglu_cpu, kvs_model_attn_cpu; the whole pass is checked against
 * kvs_model_prefill (tests/model/test_gpu_model.c, label gpu).
 *
 * Without CUDA or a device every function returns KVS_ENODEV. */
#ifndef KVS_GPU_MODEL_H
#define KVS_GPU_MODEL_H

#include "kvs_gpu.h"
#include "model_int.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvs_gpu_model kvs_gpu_model;

/* Uploads w (host f32 weights converted to fp16) or, for a random model
 * without host weights, generates the same seeded weights on the device.
 * max_tokens bounds the KV cache and the activations of one prefill call. */
kvs_err kvs_gpu_model_create(const kvs__model_weights *w, uint32_t max_tokens,
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

/* Single kernels over host buffers (for the twin tests).
 * y (n, E) fp16 = rmsnorm(x (n, E) f32) * w (E) */
kvs_err kvs_gpu_rmsnorm_host(const float *x, const float *w, kvs_f16 *y, uint32_t n, uint32_t E,
                             float eps);
/* q (n, H, D) f32 rotated in place at positions pos[n] (NORM pairs) */
kvs_err kvs_gpu_rope_host(float *q, uint32_t n, uint32_t H, uint32_t D, const uint32_t *pos,
                          float theta);
/* out (n, F) fp16 = silu(gu[:, :F]) * gu[:, F:], gu (n, 2F) fp16 */
kvs_err kvs_gpu_swiglu_host(const kvs_f16 *gu, kvs_f16 *out, uint32_t n, uint32_t F);
/* out (n, H, D) fp16: causal attention of q (n, H, D) fp16 at slots past..past+n-1
 * over k, v (kv_len, G, D) fp16 (kv_len >= past + n), D = 64 or 128. */
kvs_err kvs_gpu_flash_attn_host(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v,
                                kvs_f16 *out, uint32_t n, uint32_t H, uint32_t G, uint32_t D,
                                uint32_t past, uint32_t kv_len);

#ifdef __cplusplus
}
#endif
#endif
