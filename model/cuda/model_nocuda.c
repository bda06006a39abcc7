/* model_nocuda.c - kvs_gpu_model.h without CUDA: every entry point says
 * KVS_ENODEV so that callers take the CPU path. */
#include "kvs_gpu_model.h"

kvs_err kvs_gpu_model_create(const struct kvs__model_weights *w, uint32_t max_tokens,
                             kvs_gpu_model **out) {
  (void)w;
  (void)max_tokens;
  if (out) *out = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_model_free(kvs_gpu_model *g) { (void)g; }
kvs_err kvs_gpu_model_reset(kvs_gpu_model *g) {
  (void)g;
  return KVS_ENODEV;
}
uint32_t kvs_gpu_model_len(const kvs_gpu_model *g) {
  (void)g;
  return 0;
}
kvs_err kvs_gpu_model_prefill(kvs_gpu_model *g, const int32_t *tokens, uint32_t n, int all_logits,
                              float *logits, double *ms) {
  (void)g, (void)tokens, (void)n, (void)all_logits, (void)logits, (void)ms;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_model_kv_read(kvs_gpu_model *g, uint32_t layer, uint32_t start, uint32_t n,
                              kvs_f16 *k, kvs_f16 *v) {
  (void)g, (void)layer, (void)start, (void)n, (void)k, (void)v;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_rmsnorm_host(const float *x, const float *w, kvs_f16 *y, uint32_t n, uint32_t E,
                             float eps) {
  (void)x, (void)w, (void)y, (void)n, (void)E, (void)eps;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_rope_host(float *q, uint32_t n, uint32_t H, uint32_t D, const uint32_t *pos,
                          float theta, int neox) {
  (void)q, (void)n, (void)H, (void)D, (void)pos, (void)theta, (void)neox;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_swiglu_host(const kvs_f16 *gu, kvs_f16 *out, uint32_t n, uint32_t F) {
  (void)gu, (void)out, (void)n, (void)F;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_flash_attn_host(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v, kvs_f16 *out,
                                uint32_t n, uint32_t H, uint32_t G, uint32_t D, uint32_t past,
                                uint32_t kv_len, int split) {
  (void)q, (void)k, (void)v, (void)out, (void)n, (void)H, (void)G, (void)D, (void)past,
      (void)kv_len, (void)split;
  return KVS_ENODEV;
}
const kvs_model_cfg *kvs_gpu_model_config(const kvs_gpu_model *g) {
  (void)g;
  return NULL;
}
uint32_t kvs_gpu_model_max_tokens(const kvs_gpu_model *g) {
  (void)g;
  return 0;
}
double kvs_gpu_model_prefill_sec_per_token(const kvs_gpu_model *g) {
  (void)g;
  return 0.0;
}
kvs_err kvs_gpu_seq_create(kvs_gpu_model *g, uint32_t capacity, kvs_gpu_seq **out) {
  (void)g, (void)capacity;
  if (out) *out = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_seq_free(kvs_gpu_seq *s) { (void)s; }
uint32_t kvs_gpu_seq_len(const kvs_gpu_seq *s) {
  (void)s;
  return 0;
}
uint32_t kvs_gpu_seq_capacity(const kvs_gpu_seq *s) {
  (void)s;
  return 0;
}
kvs_err kvs_gpu_seq_truncate(kvs_gpu_seq *s, uint32_t n) {
  (void)s, (void)n;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_seq_prefill(kvs_gpu_model *g, kvs_gpu_seq *s, const int32_t *tokens, uint32_t n,
                            int all_logits, float *logits_dev, double *ms) {
  (void)g, (void)s, (void)tokens, (void)n, (void)all_logits, (void)logits_dev, (void)ms;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_seq_kv_read(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n, void *k,
                            void *v) {
  (void)s, (void)layer, (void)start, (void)n, (void)k, (void)v;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_seq_kv_write(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                             const void *k, const void *v) {
  (void)s, (void)layer, (void)start, (void)n, (void)k, (void)v;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_embed(kvs_gpu_model *g, const int32_t *tokens, uint32_t n, float *hidden_dev) {
  (void)g, (void)tokens, (void)n, (void)hidden_dev;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_layer(kvs_gpu_model *g, kvs_gpu_seq *s, uint32_t layer, uint32_t n,
                      const uint32_t *idx, const uint32_t *pos, float *hidden_dev) {
  (void)g, (void)s, (void)layer, (void)n, (void)idx, (void)pos, (void)hidden_dev;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_layer_kv(kvs_gpu_model *g, uint32_t layer, uint32_t n, const uint32_t *pos,
                         const float *hidden_dev, void *k_dev, void *v_dev) {
  (void)g, (void)layer, (void)n, (void)pos, (void)hidden_dev, (void)k_dev, (void)v_dev;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_logits(kvs_gpu_model *g, uint32_t n, const float *hidden_dev, float *logits_dev) {
  (void)g, (void)n, (void)hidden_dev, (void)logits_dev;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_buffer_alloc(size_t bytes, void **out) {
  (void)bytes;
  if (out) *out = NULL;
  return KVS_ENODEV;
}
void kvs_gpu_buffer_free(void *p) { (void)p; }
kvs_err kvs_gpu_copy(void *dst, const void *src, size_t bytes) {
  (void)dst, (void)src, (void)bytes;
  return KVS_ENODEV;
}
