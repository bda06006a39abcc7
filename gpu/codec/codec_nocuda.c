/* Built instead of codec.cu without CUDA: every entry point says there is
 * no device, and callers decode on the CPU (kvs_codec_decode). */
#include "kvs_gpu_codec.h"

size_t kvs_gpu_codec_workspace_bound(const kvs_codec_info *info) {
  (void)info;
  return 0;
}

kvs_err kvs_gpu_codec_decode(const kvs_codec_info *info, const void *d_bytes,
                             const kvs_codec_out *out, void *d_ws, size_t ws_len, void *stream) {
  (void)info, (void)d_bytes, (void)out, (void)d_ws, (void)ws_len, (void)stream;
  return KVS_ENODEV;
}

kvs_err kvs_gpu_codec_decode_segment(const kvs_codec_info *info, uint32_t g, const void *d_seg,
                                     const kvs_codec_out *out, void *d_ws, size_t ws_len,
                                     void *stream) {
  (void)info, (void)g, (void)d_seg, (void)out, (void)d_ws, (void)ws_len, (void)stream;
  return KVS_ENODEV;
}

kvs_err kvs_gpu_codec_workspace_init(void *d_ws, void *stream) {
  (void)d_ws, (void)stream;
  return KVS_ENODEV;
}

kvs_err kvs_gpu_codec_status(void *d_ws, void *stream) {
  (void)d_ws, (void)stream;
  return KVS_ENODEV;
}
