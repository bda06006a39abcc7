/* Fuzz target: what a (hostile or broken) server could hand the client's
 * decoder seam. Input: byte 0 = profile (0 raw, else a codec id), bytes
 * 1..2 = prefix length (LE), then the prefix (wire segment 0), then the
 * bytes of group 0, 1, ... each preceded by a LE u32 length. The layout and
 * token count are fixed (what the caller expects); nothing may crash, and an
 * accepted prefix must bound every later write. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec_seam.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const kvs_layout lay = {.n_layers = 3,
                                 .n_kv_heads = 2,
                                 .head_dim = 8,
                                 .dtype = KVS_DTYPE_F16,
                                 .rope_type = KVS_ROPE_NORM,
                                 .rope_dims = 8,
                                 .rope_theta = 10000.0f,
                                 .rope_freq_scale = 1.0f};
  const uint32_t T = 5;
  if (size < 3) return 0;
  uint32_t profile = data[0] % 8, plen = (uint32_t)data[1] | (uint32_t)data[2] << 8;
  data += 3, size -= 3;
  if (plen > size) return 0;
  kvs__decoder *d = NULL;
  if (kvs__decoder_open(profile, &lay, T, data, plen, &d)) return 0;
  data += plen, size -= plen;
  const size_t out_bytes = kvs_layout_token_bytes(&lay) * T * 2; /* room for f32 */
  uint8_t *out = malloc(out_bytes);
  size_t wsn = kvs__decoder_ws_bytes(d);
  void *ws = wsn ? malloc(wsn) : NULL;
  for (uint32_t g = 0; g < kvs__decoder_groups(d) && size >= 4; g++) {
    uint32_t n = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                 (uint32_t)data[3] << 24;
    data += 4, size -= 4;
    if (n > size) n = (uint32_t)size;
    uint32_t hb = g % 2, he = 2;
    kvs__decoder_decode(d, g, data, n, out, out_bytes / 2, NULL, KVS_DTYPE_F16, 0, 2, ws, wsn);
    kvs__decoder_decode(d, g, data, n, out, out_bytes, NULL, KVS_DTYPE_F32, hb, he, ws, wsn);
    data += n, size -= n;
  }
  free(ws);
  free(out);
  kvs__decoder_free(d);
  return 0;
}
