#include "kvs_gpu_blend.h"

kvs_err kvs_gpu_rope_shift(const kvs_layout *l, void *d_k, uint32_t n_tokens, size_t stride,
                           const float *table, void *stream) {
  (void)l, (void)d_k, (void)n_tokens, (void)stride, (void)table, (void)stream;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_blend_deviation_f16(const kvs_layout *l, uint32_t n, const kvs_f16 *ka,
                                    const kvs_f16 *va, const kvs_f16 *kb, const kvs_f16 *vb,
                                    float *dev, void *stream) {
  (void)l, (void)n, (void)ka, (void)va, (void)kb, (void)vb, (void)dev, (void)stream;
  return KVS_ENODEV;
}
kvs_err kvs_gpu_gather_rows_f32(float *dst, const float *src, const uint32_t *rows, uint32_t n,
                                size_t width, void *stream) {
  (void)dst, (void)src, (void)rows, (void)n, (void)width, (void)stream;
  return KVS_ENODEV;
}
