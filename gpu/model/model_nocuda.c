/* model_nocuda.c - kvs_gpu_model.h without CUDA: every entry point says
 * KVS_ENODEV so that callers take the CPU path. */
#include "kvs_gpu_model.h"

kvs_err kvs_gpu_model_create(const kvs__model_weights *w, uint32_t max_tokens, kvs_gpu_model **out) {
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
                          float theta) {
  (void)q, (void)n, (void)H, (void)D, (void)pos, (void)theta;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_swiglu_host(const kvs_f16 *gu, kvs_f16 *out, uint32_t n, uint32_t F) {
  (void)gu, (void)out, (void)n, (void)F;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_flash_attn_host(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v,
                                kvs_f16 *out, uint32_t n, uint32_t H, uint32_t G, uint32_t D,
                                uint32_t past, uint32_t kv_len) {
  (void)q, (void)k, (void)v, (void)out, (void)n, (void)H, (void)G, (void)D, (void)past, (void)kv_len;
  return KVS_ENODEV;
}
