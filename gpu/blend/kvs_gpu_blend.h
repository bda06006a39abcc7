/* kvs_gpu_blend.h - CUDA kernels of blend/: RoPE re-rotation of stored K and
 * the per-token KV deviation used to pick tokens for recompute. CPU twins:
 * kvs_rope_shift and kvs_blend_deviation_f16 in blend/kvs_blend.h. */
#ifndef KVS_GPU_BLEND_H
#define KVS_GPU_BLEND_H
#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif
/* Rotate d_k in place: (n_tokens, n_kv_heads, head_dim) of l->dtype (f16 or
 * bf16), tokens token_stride elements apart. table: host memory, rope_dims
 * floats from kvs_rope_shift_table (so GPU and CPU use the same angles). */
kvs_err kvs_gpu_rope_shift(const kvs_layout *l, void *d_k, uint32_t n_tokens, size_t token_stride,
                           const float *table, void *stream);
/* d_dev[t] = sum (ka-kb)^2 + (va-vb)^2 over one token's heads and dims, f16 in. */
kvs_err kvs_gpu_blend_deviation_f16(const kvs_layout *l, uint32_t n, const kvs_f16 *d_ka,
                                    const kvs_f16 *d_va, const kvs_f16 *d_kb, const kvs_f16 *d_vb,
                                    float *d_dev, void *stream);
/* dst row i = src row rows[i] (rows: host array of n indices), rows of
 * `width` floats, device memory. dst and src must not overlap. */
kvs_err kvs_gpu_gather_rows_f32(float *d_dst, const float *d_src, const uint32_t *rows, uint32_t n,
                                size_t width, void *stream);
#ifdef __cplusplus
}
#endif
#endif
