/* Built instead of codec_enc.cu without CUDA: no device, callers encode on
 * the CPU (kvs_codec_encode). */
#include <string.h>

#include "kvs_gpu_codec.h"

size_t kvs_gpu_codec_encode_workspace_bound(const kvs_codec_params *p, const kvs_layout *layout,
                                            uint32_t n_tokens) {
  (void)p, (void)layout, (void)n_tokens;
  return 0;
}

kvs_err kvs_gpu_codec_encode(const kvs_codec_params *p, const kvs_layout *layout, uint32_t n_tokens,
                             const void *d_kv, void *out, size_t cap, size_t *out_len, void *d_ws,
                             size_t ws_len, void *stream) {
  (void)p, (void)layout, (void)n_tokens, (void)d_kv, (void)out, (void)cap, (void)out_len;
  (void)d_ws, (void)ws_len, (void)stream;
  return KVS_ENODEV;
}

void kvs_gpu_codec_encode_timing(kvs_gpu_codec_enc_timing *out) {
  if (out) memset(out, 0, sizeof *out);
}
