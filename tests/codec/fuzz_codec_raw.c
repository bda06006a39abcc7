/* libFuzzer target for the raw profile's reader (codec/raw.c). The input is a
 * raw value: a 40-byte descriptor, then the segments. The layout the caller
 * expects is taken from the descriptor itself (bounded), so mutations reach
 * the group decoder; every group is decoded whole, by its last head, and to
 * f32, from the bytes that follow (whatever their length). */
#include <stdlib.h>
#include <string.h>

#include "kvs_codec.h"

#define CAP_OUT (16u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < KVS_RAW_DESC_BYTES) {
    kvs_layout l = {2, 2, 32, KVS_DTYPE_F16, KVS_ROPE_NORM, 32, 10000.0f, 1.0f, 0, 0, 0, 0};
    kvs_codec_raw_info info;
    (void)kvs_codec_raw_parse(data, size, &l, 24, &info);
    return 0;
  }
  kvs_layout l = {kvs__rd32(data + KVS_RD_N_LAYERS),
                  kvs__rd32(data + KVS_RD_N_KV_HEADS),
                  kvs__rd32(data + KVS_RD_HEAD_DIM),
                  kvs__rd32(data + KVS_RD_DTYPE),
                  KVS_ROPE_NORM,
                  0,
                  10000.0f,
                  1.0f,
                  0,
                  0,
                  0,
                  0};
  l.rope_dims = l.head_dim;
  uint32_t T = kvs__rd32(data + KVS_RD_N_TOKENS);
  kvs_codec_raw_info info;
  if (kvs_codec_raw_parse(data, KVS_RAW_DESC_BYTES, &l, T, &info) != KVS_OK) return 0;
  if (l.n_layers > 64 || l.n_kv_heads > 64 || l.head_dim > 512 || T > 4096) return 0;
  size_t all = kvs_codec_raw_bytes(&l, T);
  if (!all || all > CAP_OUT) return 0;
  const uint64_t out_bytes = 2 * (uint64_t)(all - KVS_RAW_DESC_BYTES); /* room for f32 */
  void *out = malloc(out_bytes);
  const uint8_t *p = data + KVS_RAW_DESC_BYTES;
  size_t left = size - KVS_RAW_DESC_BYTES;
  const size_t row = (size_t)l.head_dim * kvs_dtype_size(l.dtype);
  for (uint32_t g = 0; g < info.n_groups && out; g++) {
    uint32_t lb = g * info.layers_per_group;
    uint32_t nl = lb + info.layers_per_group < l.n_layers ? info.layers_per_group : l.n_layers - lb;
    size_t gb = (size_t)l.n_kv_heads * nl * 2 * T * row, hb1 = (size_t)nl * 2 * T * row;
    (void)kvs_codec_raw_decode_group(&info, g, 0, l.n_kv_heads, p, left < gb ? left : gb, out,
                                     out_bytes, l.dtype);
    if (left >= gb)
      (void)kvs_codec_raw_decode_group(&info, g, l.n_kv_heads - 1, l.n_kv_heads, p + gb - hb1, hb1,
                                       out, out_bytes, KVS_DTYPE_F32);
    if (left < gb) break;
    p += gb, left -= gb;
  }
  free(out);
  return 0;
}
