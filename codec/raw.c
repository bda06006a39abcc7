/* raw.c - the raw profile (KVS_CODEC_RAW): uncompressed KV in per-(layer
 * group, KV head) segments behind a 40-byte descriptor. The format is in
 * kvs_codec_format.h and docs/codec-format.md ("Raw profile"). */
#include <stdlib.h>
#include <string.h>

#include "kvs_codec.h"

uint32_t kvs_codec_raw_lpg(const kvs_layout *l, uint32_t want, uint32_t max_segments) {
  uint32_t lpg = want ? want : 1;
  if (lpg > l->n_layers) lpg = l->n_layers;
  while (1 + (uint64_t)((l->n_layers + lpg - 1) / lpg) * l->n_kv_heads > max_segments &&
         lpg < l->n_layers)
    lpg++;
  return lpg;
}

size_t kvs_codec_raw_bytes(const kvs_layout *l, uint32_t T) {
  if (!l || kvs_layout_validate(l) != KVS_OK || T == 0) return 0;
  uint64_t n = 2 * (uint64_t)l->n_layers; /* 2 x L x T x H x D x element size */
  if (__builtin_mul_overflow(n, (uint64_t)T, &n) ||
      __builtin_mul_overflow(n, (uint64_t)l->n_kv_heads, &n) ||
      __builtin_mul_overflow(n, (uint64_t)l->head_dim, &n) ||
      __builtin_mul_overflow(n, (uint64_t)kvs_dtype_size(l->dtype), &n) ||
      n > SIZE_MAX - KVS_RAW_DESC_BYTES)
    return 0;
  return KVS_RAW_DESC_BYTES + (size_t)n;
}

kvs_err kvs_codec_raw_encode(const kvs_layout *l, uint32_t T, uint32_t lpg, const void *kv,
                             uint8_t *out, size_t cap, uint64_t *seg_end, uint32_t seg_cap,
                             uint32_t *n_segs) {
  KVS_RETURN_ERROR_IF(!l || !kv || !out || !seg_end || !n_segs, KVS_EINVAL, "null");
  const size_t need = kvs_codec_raw_bytes(l, T);
  KVS_RETURN_ERROR_IF(!need, KVS_EINVAL, "raw: bad layout or token count");
  KVS_RETURN_ERROR_IF(lpg == 0 || lpg > l->n_layers, KVS_EINVAL, "raw: layers per group");
  KVS_RETURN_ERROR_IF(cap < need, KVS_ENOSPC, "raw: output buffer");
  const uint32_t L = l->n_layers, H = l->n_kv_heads, D = l->head_dim, G = (L + lpg - 1) / lpg;
  KVS_RETURN_ERROR_IF(1 + (uint64_t)G * H > seg_cap, KVS_ETOOBIG, "raw: too many segments");
  const size_t row = (size_t)D * kvs_dtype_size(l->dtype), plane = (size_t)T * H * row;
  const uint32_t desc[10] = {KVS_RAW_MAGIC, KVS_RAW_VERSION, L, H, D, l->dtype, T, lpg, G, 0};
  for (int i = 0; i < 10; i++)
    kvs__wr32(out + 4 * i, desc[i]);
  uint8_t *p = out + KVS_RAW_DESC_BYTES;
  seg_end[0] = KVS_RAW_DESC_BYTES;
  const uint8_t *src = kv;
  for (uint32_t g = 0; g < G; g++) {
    uint32_t lb = g * lpg, le = lb + lpg < L ? lb + lpg : L;
    for (uint32_t h = 0; h < H; h++) {
      for (uint32_t ly = lb; ly < le; ly++)
        for (int kvi = 0; kvi < 2; kvi++) {
          const uint8_t *pl = src + (2 * (size_t)ly + kvi) * plane + h * row;
          for (uint32_t t = 0; t < T; t++, p += row)
            memcpy(p, pl + (size_t)t * H * row, row);
        }
      seg_end[1 + g * H + h] = (uint64_t)(p - out);
    }
  }
  *n_segs = 1 + G * H;
  return KVS_OK;
}

kvs_err kvs_codec_raw_parse(const uint8_t *d, size_t len, const kvs_layout *l, uint32_t T,
                            kvs_codec_raw_info *info) {
  KVS_RETURN_ERROR_IF(!d || !l || !info, KVS_EINVAL, "null");
  KVS_RETURN_ERROR_IF(len != KVS_RAW_DESC_BYTES, KVS_ECORRUPT, "raw descriptor size");
  const uint32_t magic = kvs__rd32(d + KVS_RD_MAGIC);
  KVS_RETURN_ERROR_IF(magic != KVS_RAW_MAGIC && magic != KVS_RAW_MAGIC_V0, KVS_EMAGIC, "raw magic");
  KVS_RETURN_ERROR_IF(kvs__rd32(d + KVS_RD_VERSION) != KVS_RAW_VERSION, KVS_EVERSION,
                      "raw version");
  memset(info, 0, sizeof *info);
  info->n_layers = kvs__rd32(d + KVS_RD_N_LAYERS);
  info->n_kv_heads = kvs__rd32(d + KVS_RD_N_KV_HEADS);
  info->head_dim = kvs__rd32(d + KVS_RD_HEAD_DIM);
  info->dtype = kvs__rd32(d + KVS_RD_DTYPE);
  info->n_tokens = kvs__rd32(d + KVS_RD_N_TOKENS);
  info->layers_per_group = kvs__rd32(d + KVS_RD_LAYERS_PER_GROUP);
  info->n_groups = kvs__rd32(d + KVS_RD_N_GROUPS);
  info->legacy_magic = magic == KVS_RAW_MAGIC_V0;
  KVS_RETURN_ERROR_IF(info->n_layers != l->n_layers || info->n_kv_heads != l->n_kv_heads ||
                          info->head_dim != l->head_dim || info->dtype != l->dtype,
                      KVS_ELAYOUT, "raw descriptor layout");
  KVS_RETURN_ERROR_IF(info->n_tokens != T, KVS_ECORRUPT, "raw descriptor tokens");
  KVS_RETURN_ERROR_IF(info->layers_per_group == 0 ||
                          info->n_groups !=
                              (l->n_layers + info->layers_per_group - 1) / info->layers_per_group,
                      KVS_ECORRUPT, "raw descriptor groups");
  return KVS_OK;
}

static void raw_rows(const uint8_t *src, uint8_t *dst, uint32_t n, uint32_t D, uint32_t sdt,
                     uint32_t ddt, size_t dst_stride) {
  const size_t srow = (size_t)D * kvs_dtype_size(sdt);
  for (uint32_t t = 0; t < n; t++, src += srow, dst += dst_stride) {
    if (sdt == ddt) {
      memcpy(dst, src, srow);
    } else {
      /* bytes from the wire need not be aligned: load and store through memcpy */
      for (uint32_t i = 0; i < D; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * (size_t)i, 2);
        float f = sdt == KVS_DTYPE_F16 ? kvs_f16_to_f32(h) : kvs_bf16_to_f32(h);
        memcpy(dst + 4 * (size_t)i, &f, 4);
      }
    }
  }
}

kvs_err kvs_codec_raw_decode_group(const kvs_codec_raw_info *info, uint32_t g, uint32_t hb,
                                   uint32_t he, const uint8_t *bytes, size_t len, void *out,
                                   uint64_t out_bytes, uint32_t dtype) {
  if (!info || !bytes || !out || g >= info->n_groups || hb >= he || he > info->n_kv_heads)
    return KVS_EINVAL;
  const uint32_t lpg = info->layers_per_group, L = info->n_layers;
  const uint32_t lb = g * lpg, le = lb + lpg < L ? lb + lpg : L;
  const uint32_t D = info->head_dim, Hn = he - hb, T = info->n_tokens;
  const size_t srow = (size_t)D * kvs_dtype_size(info->dtype);
  const size_t drow = (size_t)D * kvs_dtype_size(dtype);
  const uint64_t want = (uint64_t)(he - hb) * (le - lb) * 2 * T * srow;
  KVS_RETURN_ERROR_IF(len != want, KVS_ECORRUPT, "raw group size");
  if (dtype != info->dtype && dtype != KVS_DTYPE_F32) return KVS_ENOTSUP;
  const size_t dplane = (size_t)T * Hn * drow;
  KVS_RETURN_ERROR_IF(2 * (uint64_t)L * dplane > out_bytes, KVS_ERANGE, "raw output size");
  const uint8_t *p = bytes;
  for (uint32_t h = hb; h < he; h++)
    for (uint32_t ly = lb; ly < le; ly++)
      for (int kvi = 0; kvi < 2; kvi++, p += (size_t)T * srow)
        raw_rows(p, (uint8_t *)out + (2 * (size_t)ly + kvi) * dplane + (h - hb) * drow, T, D,
                 info->dtype, dtype, (size_t)Hn * drow);
  return KVS_OK;
}
