/* libFuzzer target for the codec decoder. Each input is decoded twice: as
 * given (exercising the header and checksum checks), and with its header and
 * segment checksums recomputed, so that mutations reach the profile parsers
 * and the rANS decoder behind them. Output sizes are capped so a mutated
 * header cannot ask for gigabytes. */
#include <stdlib.h>
#include <string.h>

#include "kvs_codec.h"

#define CAP_OUT (64u << 20)

static void fix_checksums(uint8_t *b, size_t n) {
  size_t need;
  if (kvs_codec_prefix_bytes(b, n, &need) != KVS_OK || need > n) return;
  uint32_t nseg = kvs__rd32(b + KVS_CH_N_SEGMENTS);
  uint8_t tmp[KVS_CODEC_HEADER_BYTES + 8 * KVS_CODEC_MAX_SEGMENTS];
  memcpy(tmp, b, KVS_CH_CHECKSUM);
  memcpy(tmp + KVS_CH_CHECKSUM, b + KVS_CODEC_HEADER_BYTES, 8u * nseg);
  kvs__wr64(b + KVS_CH_CHECKSUM, kvs_checksum64(tmp, KVS_CH_CHECKSUM + 8u * nseg));
  uint64_t off = need;
  for (uint32_t g = 0; g < nseg; g++) {
    uint64_t s = kvs__rd64(b + KVS_CODEC_HEADER_BYTES + 8u * g);
    if (s < KVS_CODEC_SEG_HEADER_BYTES || s > n || off + s > n) return;
    kvs__wr64(b + off + KVS_SH_CHECKSUM,
              kvs_checksum64(b + off + KVS_CODEC_SEG_HEADER_BYTES, s - KVS_CODEC_SEG_HEADER_BYTES));
    off += s;
  }
}

static void decode_all(const uint8_t *b, size_t n) {
  kvs_codec_info info;
  if (kvs_codec_parse_header(b, n, &info) != KVS_OK) {
    uint8_t out[64];
    kvs_codec_out o = kvs_codec_out_contiguous(out, sizeof out, KVS_DTYPE_F16);
    (void)kvs_codec_decode(b, n, &o, NULL, 0);
    return;
  }
  kvs_codec_out o = kvs_codec_out_contiguous(NULL, 0, KVS_DTYPE_F16);
  uint64_t ob = kvs_codec_out_bytes(&info, &o);
  size_t wsn = kvs_codec_decode_workspace_bound(&info);
  if (ob == 0 || ob > CAP_OUT || wsn > CAP_OUT) return;
  void *out = malloc(ob), *ws = malloc(wsn);
  o.base = out, o.base_bytes = ob;
  (void)kvs_codec_decode(b, n, &o, ws, wsn);
  /* one head of it, and segment by segment in f32 */
  if (info.layout.n_kv_heads > 1) {
    kvs_codec_out oh = o;
    oh.head_begin = info.layout.n_kv_heads - 1;
    (void)kvs_codec_decode(b, n, &oh, ws, wsn);
  }
  if (ob * 2 <= CAP_OUT) {
    void *o32 = malloc(ob * 2);
    kvs_codec_out of = kvs_codec_out_contiguous(o32, ob * 2, KVS_DTYPE_F32);
    for (uint32_t g = 0; g < info.n_segments; g++)
      if (info.seg_offset[g + 1] <= n)
        (void)kvs_codec_decode_segment(&info, g, b + info.seg_offset[g],
                                       info.seg_offset[g + 1] - info.seg_offset[g], &of, ws, wsn);
    free(o32);
  }
  free(out);
  free(ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  decode_all(data, size);
  if (size >= KVS_CODEC_HEADER_BYTES && size <= (16u << 20)) {
    uint8_t *c = malloc(size);
    memcpy(c, data, size);
    fix_checksums(c, size);
    decode_all(c, size);
    free(c);
  }
  return 0;
}
