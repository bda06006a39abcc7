/* codec.c - the container: header, directory, segments, checksums, the
 * lossless profile, and dispatch of lossy profiles plane by plane. */
#include <stdlib.h>
#define ZSTD_STATIC_LINKING_ONLY /* static DCtx in the caller's workspace */
#include <zstd.h>

#include "codec_int.h"

static const char *const k_names[] = {NULL,    "lossless", "int8",         "kivi2",
                                      "kivi4", "fp4",      "cachegen-ref", "dense"};

const char *kvs_codec_profile_name(int profile) {
  if (profile < 1 || profile > KVS_CODEC_PROFILE_MAX) return NULL;
  return k_names[profile];
}

int kvs_codec_profile_from_name(const char *name) {
  if (!name) return -1;
  for (int i = 1; i <= KVS_CODEC_PROFILE_MAX; i++)
    if (strcmp(name, k_names[i]) == 0) return i;
  if (strcmp(name, "cachegen") == 0) return KVS_CODEC_CACHEGEN;
  return -1;
}

kvs_err kvs_codec_params_default(int profile, uint32_t n_layers, kvs_codec_params *p) {
  if (!p || profile < 1 || profile > KVS_CODEC_PROFILE_MAX) return KVS_EINVAL;
  memset(p, 0, sizeof *p);
  p->profile = (uint32_t)profile;
  p->layers_per_group = 1;
  switch (profile) {
  case KVS_CODEC_LOSSLESS: p->zstd_level = 3; break;
  case KVS_CODEC_INT8: p->k_bits = p->v_bits = 8; break;
  case KVS_CODEC_KIVI2: p->k_bits = p->v_bits = 2, p->group = 32; break;
  case KVS_CODEC_KIVI4: p->k_bits = p->v_bits = 4, p->group = 32; break;
  case KVS_CODEC_FP4: p->k_bits = p->v_bits = 4, p->group = KVS_FP4_BLOCK; break;
  case KVS_CODEC_CACHEGEN: {
    /* LMCache's table for 32-layer Llama-7B models: K 32 bins for layers
       [0,10), 16 for [10,20) and the rest; V 32 bins for [0,2), 16 after.
       Scaled to n_layers. */
    uint32_t L = n_layers ? n_layers : 32;
    p->cg_key_first_layers = (10 * L + 16) / 32;
    p->cg_key_second_layers = (20 * L + 16) / 32;
    p->cg_value_first_layers = (2 * L + 16) / 32 ? (2 * L + 16) / 32 : 1;
    p->cg_bins[0] = 32, p->cg_bins[1] = 16, p->cg_bins[2] = 16;
    p->cg_bins[3] = 32, p->cg_bins[4] = 16;
    break;
  }
  case KVS_CODEC_DENSE:
    /* chosen on real SmolLM2 KV of MuSiQue items 0-19 (bench_real.c): an
       exact sink token and per-token V scales cut KL 3x at equal size, K
       needs a finer step than V (KL 0.009 vs 0.015 at the same 3.74
       bits/element), the rotation did not pay on real KV */
    p->group = 256;
    p->k_step = 0.25f, p->v_step = 0.5f;
    p->fine_layers = 0, p->fine_scale = 0.5f;
    p->k_flags = KVS_DENSE_SINK, p->v_flags = KVS_DENSE_TOKEN | KVS_DENSE_SINK;
    break;
  }
  return KVS_OK;
}

static const kvs__profile_ops *ops_of(uint32_t profile) {
  switch (profile) {
  case KVS_CODEC_INT8: return &kvs__ops_int8;
  case KVS_CODEC_KIVI2:
  case KVS_CODEC_KIVI4: return &kvs__ops_kivi;
  case KVS_CODEC_FP4: return &kvs__ops_fp4;
#ifdef KVS_CODEC_HAVE_RANS
  case KVS_CODEC_CACHEGEN: return &kvs__ops_cachegen;
  case KVS_CODEC_DENSE: return &kvs__ops_dense;
#endif
  default: return NULL;
  }
}

/* Parameters a decoder can trust: every field in the range the profile's
 * code relies on. Used on both sides so an encoder never writes what a
 * decoder refuses. */
static kvs_err params_check(const kvs_codec_params *p, const kvs_layout *l) {
  switch (p->profile) {
  case KVS_CODEC_LOSSLESS:
    KVS_RETURN_ERROR_IF(p->zstd_level < -7 || p->zstd_level > 22, KVS_EINVAL, "zstd level");
    break;
  case KVS_CODEC_INT8: break;
  case KVS_CODEC_KIVI2:
  case KVS_CODEC_KIVI4:
    KVS_RETURN_ERROR_IF(p->k_bits != (p->profile == KVS_CODEC_KIVI2 ? 2u : 4u) ||
                            p->v_bits != p->k_bits,
                        KVS_EINVAL, "kivi bits");
    KVS_RETURN_ERROR_IF(p->group < 1 || p->group > 4096, KVS_EINVAL, "kivi group");
    break;
  case KVS_CODEC_FP4:
    KVS_RETURN_ERROR_IF(p->group != KVS_FP4_BLOCK, KVS_EINVAL, "fp4 block");
    break;
  case KVS_CODEC_CACHEGEN:
    for (int i = 0; i < 5; i++)
      KVS_RETURN_ERROR_IF(p->cg_bins[i] < 4 || p->cg_bins[i] > 256 || (p->cg_bins[i] & 1),
                          KVS_EINVAL, "cachegen bins");
    KVS_RETURN_ERROR_IF(p->cg_key_first_layers > p->cg_key_second_layers, KVS_EINVAL,
                        "cachegen layer split");
    break;
  case KVS_CODEC_DENSE:
    KVS_RETURN_ERROR_IF(p->group < 1 || p->group > 1024, KVS_EINVAL, "dense steps per lane");
    KVS_RETURN_ERROR_IF(!(p->k_step > 1e-4f && p->k_step < 1e4f) ||
                            !(p->v_step > 1e-4f && p->v_step < 1e4f) ||
                            !(p->fine_scale > 1e-3f && p->fine_scale <= 1e3f),
                        KVS_EINVAL, "dense steps");
    KVS_RETURN_ERROR_IF((p->k_flags | p->v_flags) & ~KVS_DENSE_FLAGS_ALL, KVS_EINVAL,
                        "dense flags");
    break;
  default: return KVS_ERR_AT(KVS_ENOTSUP, "unknown profile");
  }
  (void)l;
  return KVS_OK;
}

static uint32_t eff_lpg(const kvs_codec_params *p, uint32_t n_layers) {
  uint32_t lpg = p->layers_per_group ? p->layers_per_group : 1;
  if (lpg > n_layers) lpg = n_layers;
  uint32_t min_lpg = KVS__CDIV(n_layers, KVS_CODEC_MAX_SEGMENTS);
  return lpg < min_lpg ? min_lpg : lpg;
}

static kvs_err check_inputs(const kvs_codec_params *p, const kvs_layout *l, uint32_t T) {
  KVS_RETURN_ERROR_IF(!p || !l, KVS_EINVAL, "null argument");
  KVS_RETURN_ERROR_IF(p->profile != KVS_CODEC_LOSSLESS && !ops_of(p->profile), KVS_ENOTSUP,
                      "profile not built");
  KVS_TRY(kvs_layout_validate(l));
  KVS_RETURN_ERROR_IF(l->rope_scaling != KVS_ROPE_SCALING_NONE, KVS_ENOTSUP,
                      "the header does not carry RoPE scaling yet");
  KVS_RETURN_ERROR_IF(l->dtype != KVS_DTYPE_F16 && l->dtype != KVS_DTYPE_BF16, KVS_ELAYOUT,
                      "input dtype must be f16 or bf16");
  KVS_RETURN_ERROR_IF(T == 0 || T > KVS_CODEC_MAX_TOKENS, KVS_EINVAL, "token count");
  return params_check(p, l);
}

static uint64_t plane_elems(const kvs_layout *l, uint32_t T) {
  return (uint64_t)T * l->n_kv_heads * l->head_dim;
}

static size_t seg_payload_bound(const kvs_codec_params *p, const kvs_layout *l, uint32_t T,
                                uint32_t first, uint32_t nl) {
  if (p->profile == KVS_CODEC_LOSSLESS)
    return KVS__PAD8(ZSTD_compressBound(2 * nl * plane_elems(l, T) * 2));
  const kvs__profile_ops *ops = ops_of(p->profile);
  size_t s = 0;
  for (uint32_t i = 0; i < nl; i++)
    for (uint32_t kv = 0; kv < 2; kv++) {
      kvs__plane pl = {T, l->n_kv_heads, l->head_dim, first + i, kv, l->n_layers, p, l->dtype};
      s += ops->bound(&pl);
    }
  return KVS__PAD8(s);
}

size_t kvs_codec_encode_bound(const kvs_codec_params *p, const kvs_layout *l, uint32_t T) {
  if (check_inputs(p, l, T) != KVS_OK) return 0;
  uint32_t lpg = eff_lpg(p, l->n_layers), nseg = KVS__CDIV(l->n_layers, lpg);
  size_t s = KVS_CODEC_HEADER_BYTES + 8u * nseg;
  for (uint32_t g = 0; g < nseg; g++) {
    uint32_t first = g * lpg, nl = l->n_layers - first < lpg ? l->n_layers - first : lpg;
    s += KVS_CODEC_SEG_HEADER_BYTES + seg_payload_bound(p, l, T, first, nl);
  }
  return s;
}

static void put_params(uint8_t *q, const kvs_codec_params *p) {
  uint32_t u;
  q[KVS_CP_K_BITS] = (uint8_t)p->k_bits;
  q[KVS_CP_V_BITS] = (uint8_t)p->v_bits;
  kvs__wr16(q + KVS_CP_GROUP, (uint16_t)p->group);
  memcpy(&u, &p->k_step, 4), kvs__wr32(q + KVS_CP_K_STEP, u);
  memcpy(&u, &p->v_step, 4), kvs__wr32(q + KVS_CP_V_STEP, u);
  if (p->profile == KVS_CODEC_CACHEGEN) {
    kvs__wr16(q + KVS_CP_FINE_LAYERS, (uint16_t)p->cg_key_first_layers);
    kvs__wr16(q + KVS_CP_MID_LAYERS, (uint16_t)p->cg_key_second_layers);
    kvs__wr16(q + KVS_CP_V_FINE_LAYERS, (uint16_t)p->cg_value_first_layers);
    for (int i = 0; i < 4; i++)
      q[KVS_CP_BINS + i] = (uint8_t)(p->cg_bins[i] - 1);
    q[KVS_CP_V_BINS2] = (uint8_t)(p->cg_bins[4] - 1);
  } else {
    kvs__wr16(q + KVS_CP_FINE_LAYERS, (uint16_t)p->fine_layers);
    q[KVS_CP_K_FLAGS] = (uint8_t)p->k_flags;
    q[KVS_CP_V_FLAGS] = (uint8_t)p->v_flags;
  }
  memcpy(&u, &p->fine_scale, 4), kvs__wr32(q + KVS_CP_FINE_SCALE, u);
  kvs__wr16(q + KVS_CP_ZSTD_LEVEL, (uint16_t)(int16_t)p->zstd_level);
}

static void get_params(const uint8_t *q, uint32_t profile, kvs_codec_params *p) {
  uint32_t u;
  memset(p, 0, sizeof *p);
  p->profile = profile;
  p->k_bits = q[KVS_CP_K_BITS];
  p->v_bits = q[KVS_CP_V_BITS];
  p->group = kvs__rd16(q + KVS_CP_GROUP);
  u = kvs__rd32(q + KVS_CP_K_STEP), memcpy(&p->k_step, &u, 4);
  u = kvs__rd32(q + KVS_CP_V_STEP), memcpy(&p->v_step, &u, 4);
  if (profile == KVS_CODEC_CACHEGEN) {
    p->cg_key_first_layers = kvs__rd16(q + KVS_CP_FINE_LAYERS);
    p->cg_key_second_layers = kvs__rd16(q + KVS_CP_MID_LAYERS);
    p->cg_value_first_layers = kvs__rd16(q + KVS_CP_V_FINE_LAYERS);
    for (int i = 0; i < 4; i++)
      p->cg_bins[i] = q[KVS_CP_BINS + i] + 1u;
    p->cg_bins[4] = q[KVS_CP_V_BINS2] + 1u;
  } else {
    p->fine_layers = kvs__rd16(q + KVS_CP_FINE_LAYERS);
    p->k_flags = q[KVS_CP_K_FLAGS];
    p->v_flags = q[KVS_CP_V_FLAGS];
  }
  u = kvs__rd32(q + KVS_CP_FINE_SCALE), memcpy(&p->fine_scale, &u, 4);
  p->zstd_level = (int16_t)kvs__rd16(q + KVS_CP_ZSTD_LEVEL);
}

/* Byte-plane shuffle of a layer group: all low bytes, then all high bytes,
 * which lets zstd see the (compressible) exponent bytes together. */
static kvs_err enc_lossless(const kvs_codec_params *p, const uint8_t *src, size_t raw, uint8_t *out,
                            size_t cap, size_t *len) {
  uint8_t *tmp = malloc(raw ? raw : 1);
  if (!tmp) return KVS_ENOMEM;
  size_t half = raw / 2;
  for (size_t i = 0; i < half; i++)
    tmp[i] = src[2 * i], tmp[half + i] = src[2 * i + 1];
  size_t r = ZSTD_compress(out, cap, tmp, raw, p->zstd_level);
  free(tmp);
  if (ZSTD_isError(r)) return KVS_ENOSPC;
  *len = r;
  return KVS_OK;
}

static kvs_err encode_with(const kvs_codec_params *p, const kvs_layout *l, uint32_t T,
                           const void *kv, kvs_codec_plane_fn fn, void *ctx, void *out, size_t cap,
                           size_t *out_len);

kvs_err kvs_codec_encode(const kvs_codec_params *p, const kvs_layout *l, uint32_t T, const void *kv,
                         void *out, size_t cap, size_t *out_len) {
  KVS_RETURN_ERROR_IF(!kv, KVS_EINVAL, "null buffer");
  return encode_with(p, l, T, kv, NULL, NULL, out, cap, out_len);
}

kvs_err kvs_codec_encode_planes(const kvs_codec_params *p, const kvs_layout *l, uint32_t T,
                                kvs_codec_plane_fn fn, void *ctx, void *out, size_t cap,
                                size_t *out_len) {
  KVS_RETURN_ERROR_IF(!fn, KVS_EINVAL, "null plane function");
  KVS_RETURN_ERROR_IF(p && p->profile == KVS_CODEC_LOSSLESS, KVS_ENOTSUP, "lossless has no planes");
  return encode_with(p, l, T, NULL, fn, ctx, out, cap, out_len);
}

/* The container around planes made by ops->enc from kv, or by fn. */
static kvs_err encode_with(const kvs_codec_params *p, const kvs_layout *l, uint32_t T,
                           const void *kv, kvs_codec_plane_fn fn, void *ctx, void *out, size_t cap,
                           size_t *out_len) {
  KVS_TRY(check_inputs(p, l, T));
  KVS_RETURN_ERROR_IF(!out || !out_len, KVS_EINVAL, "null buffer");
  uint32_t lpg = eff_lpg(p, l->n_layers), nseg = KVS__CDIV(l->n_layers, lpg);
  size_t prefix = KVS_CODEC_HEADER_BYTES + 8u * nseg;
  KVS_RETURN_ERROR_IF(cap < prefix, KVS_ENOSPC, "output too small");
  uint8_t *o = out;
  memset(o, 0, prefix);
  kvs__wr32(o + KVS_CH_MAGIC, KVS_CODEC_MAGIC);
  kvs__wr16(o + KVS_CH_VERSION, KVS_CODEC_VERSION);
  kvs__wr16(o + KVS_CH_HEADER_BYTES, KVS_CODEC_HEADER_BYTES);
  o[KVS_CH_PROFILE] = (uint8_t)p->profile;
  kvs__wr32(o + KVS_CH_N_LAYERS, l->n_layers);
  kvs__wr32(o + KVS_CH_N_KV_HEADS, l->n_kv_heads);
  kvs__wr32(o + KVS_CH_HEAD_DIM, l->head_dim);
  kvs__wr32(o + KVS_CH_DTYPE, l->dtype);
  kvs__wr32(o + KVS_CH_ROPE_TYPE, l->rope_type);
  kvs__wr32(o + KVS_CH_ROPE_DIMS, l->rope_dims);
  uint32_t u;
  memcpy(&u, &l->rope_theta, 4), kvs__wr32(o + KVS_CH_ROPE_THETA, u);
  memcpy(&u, &l->rope_freq_scale, 4), kvs__wr32(o + KVS_CH_ROPE_SCALE, u);
  kvs__wr32(o + KVS_CH_N_TOKENS, T);
  kvs__wr32(o + KVS_CH_LAYERS_PER_GROUP, lpg);
  kvs__wr32(o + KVS_CH_N_SEGMENTS, nseg);
  put_params(o + KVS_CH_PARAMS, p);

  const kvs__profile_ops *ops = ops_of(p->profile);
  uint64_t pe = plane_elems(l, T);
  float *x = NULL;
  if (ops && !fn && !(x = malloc(pe * sizeof(float)))) return KVS_ENOMEM;
  size_t pos = prefix;
  kvs_err rc = KVS_OK;
  for (uint32_t g = 0; g < nseg && rc == KVS_OK; g++) {
    uint32_t first = g * lpg, nl = l->n_layers - first < lpg ? l->n_layers - first : lpg;
    if (cap - pos < KVS_CODEC_SEG_HEADER_BYTES) {
      rc = KVS_ENOSPC;
      break;
    }
    uint8_t *sh = o + pos, *pay = sh + KVS_CODEC_SEG_HEADER_BYTES;
    size_t room = cap - pos - KVS_CODEC_SEG_HEADER_BYTES, plen = 0;
    const uint8_t *src = kv ? (const uint8_t *)kv + (uint64_t)2 * first * pe * 2 : NULL;
    if (!ops) {
      rc = enc_lossless(p, src, (size_t)(2 * nl * pe * 2), pay, room, &plen);
    } else {
      for (uint32_t i = 0; i < nl * 2 && rc == KVS_OK; i++) {
        kvs__plane pl = {T,     l->n_kv_heads, l->head_dim, first + i / 2,
                         i % 2, l->n_layers,   p,           l->dtype};
        size_t n = 0;
        if (fn) {
          rc = fn(ctx, first + i / 2, i % 2, pay + plen, room - plen, &n);
          if (rc == KVS_OK && (n < 4 || (n & 3) || n > room - plen || kvs__rd32(pay + plen) != n))
            rc = KVS_EINTERNAL;
        } else {
          const uint8_t *ps = src + (uint64_t)i * pe * 2;
          for (uint64_t e = 0; e < pe; e++)
            x[e] = kvs__load_elem(ps, l->dtype, e);
          rc = ops->enc(&pl, x, pay + plen, room - plen, &n);
        }
        plen += n;
      }
    }
    if (rc != KVS_OK) break;
    size_t padded = KVS__PAD8(plen);
    if (padded > room) {
      rc = KVS_ENOSPC;
      break;
    }
    memset(pay + plen, 0, padded - plen);
    kvs__wr32(sh + KVS_SH_MAGIC, KVS_CODEC_SEG_MAGIC);
    kvs__wr32(sh + KVS_SH_INDEX, g);
    kvs__wr32(sh + KVS_SH_FIRST_LAYER, first);
    kvs__wr32(sh + KVS_SH_N_LAYERS, nl);
    kvs__wr64(sh + KVS_SH_PAYLOAD, padded);
    kvs__wr64(sh + KVS_SH_CHECKSUM, kvs_checksum64(pay, padded));
    kvs__wr64(o + KVS_CODEC_HEADER_BYTES + 8u * g, KVS_CODEC_SEG_HEADER_BYTES + padded);
    pos += KVS_CODEC_SEG_HEADER_BYTES + padded;
  }
  free(x);
  if (rc != KVS_OK) return rc;
  kvs__wr64(o + KVS_CH_TOTAL_BYTES, pos);
  /* the checksum covers [0,120) and the directory: hash them as one run */
  uint8_t stackbuf[KVS_CODEC_HEADER_BYTES + 8 * KVS_CODEC_MAX_SEGMENTS];
  memcpy(stackbuf, o, KVS_CH_CHECKSUM);
  memcpy(stackbuf + KVS_CH_CHECKSUM, o + KVS_CODEC_HEADER_BYTES, 8u * nseg);
  kvs__wr64(o + KVS_CH_CHECKSUM, kvs_checksum64(stackbuf, KVS_CH_CHECKSUM + 8u * nseg));
  *out_len = pos;
  return KVS_OK;
}

/* -------------------------------------------------------------- parsing */
kvs_err kvs_codec_prefix_bytes(const void *bytes, size_t n, size_t *need) {
  const uint8_t *b = bytes;
  KVS_RETURN_ERROR_IF(!b || !need, KVS_EINVAL, "null argument");
  KVS_RETURN_ERROR_IF(n < KVS_CODEC_HEADER_BYTES, KVS_ETRUNC, "header truncated");
  KVS_RETURN_ERROR_IF(kvs__rd32(b + KVS_CH_MAGIC) != KVS_CODEC_MAGIC, KVS_EMAGIC, "chunk magic");
  KVS_RETURN_ERROR_IF(kvs__rd16(b + KVS_CH_VERSION) != KVS_CODEC_VERSION, KVS_EVERSION,
                      "codec version");
  KVS_RETURN_ERROR_IF(kvs__rd16(b + KVS_CH_HEADER_BYTES) != KVS_CODEC_HEADER_BYTES, KVS_ECORRUPT,
                      "header size");
  uint32_t nseg = kvs__rd32(b + KVS_CH_N_SEGMENTS);
  KVS_RETURN_ERROR_IF(nseg == 0 || nseg > KVS_CODEC_MAX_SEGMENTS, KVS_ECORRUPT, "segment count");
  *need = KVS_CODEC_HEADER_BYTES + 8u * nseg;
  return KVS_OK;
}

kvs_err kvs_codec_parse_header(const void *bytes, size_t n, kvs_codec_info *info) {
  const uint8_t *b = bytes;
  size_t need;
  KVS_RETURN_ERROR_IF(!info, KVS_EINVAL, "null info");
  KVS_TRY(kvs_codec_prefix_bytes(bytes, n, &need));
  KVS_RETURN_ERROR_IF(n < need, KVS_ETRUNC, "directory truncated");
  uint32_t nseg = kvs__rd32(b + KVS_CH_N_SEGMENTS);
  uint8_t buf[KVS_CODEC_HEADER_BYTES + 8 * KVS_CODEC_MAX_SEGMENTS];
  memcpy(buf, b, KVS_CH_CHECKSUM);
  memcpy(buf + KVS_CH_CHECKSUM, b + KVS_CODEC_HEADER_BYTES, 8u * nseg);
  KVS_RETURN_ERROR_IF(kvs_checksum64(buf, KVS_CH_CHECKSUM + 8u * nseg) !=
                          kvs__rd64(b + KVS_CH_CHECKSUM),
                      KVS_ECHECKSUM, "header checksum");
  memset(info, 0, sizeof *info);
  kvs_layout *l = &info->layout;
  l->n_layers = kvs__rd32(b + KVS_CH_N_LAYERS);
  l->n_kv_heads = kvs__rd32(b + KVS_CH_N_KV_HEADS);
  l->head_dim = kvs__rd32(b + KVS_CH_HEAD_DIM);
  l->dtype = kvs__rd32(b + KVS_CH_DTYPE);
  l->rope_type = kvs__rd32(b + KVS_CH_ROPE_TYPE);
  l->rope_dims = kvs__rd32(b + KVS_CH_ROPE_DIMS);
  uint32_t u = kvs__rd32(b + KVS_CH_ROPE_THETA);
  memcpy(&l->rope_theta, &u, 4);
  u = kvs__rd32(b + KVS_CH_ROPE_SCALE);
  memcpy(&l->rope_freq_scale, &u, 4);
  KVS_RETURN_ERROR_IF(kvs_layout_validate(l) != KVS_OK, KVS_ELAYOUT, "layout in header");
  KVS_RETURN_ERROR_IF(l->dtype != KVS_DTYPE_F16 && l->dtype != KVS_DTYPE_BF16, KVS_ELAYOUT,
                      "encoded dtype");
  info->n_tokens = kvs__rd32(b + KVS_CH_N_TOKENS);
  KVS_RETURN_ERROR_IF(info->n_tokens == 0 || info->n_tokens > KVS_CODEC_MAX_TOKENS, KVS_ECORRUPT,
                      "token count");
  info->profile = b[KVS_CH_PROFILE];
  KVS_RETURN_ERROR_IF(info->profile < 1 || info->profile > KVS_CODEC_PROFILE_MAX, KVS_ENOTSUP,
                      "unknown profile");
  KVS_RETURN_ERROR_IF(b[KVS_CH_RESERVED0] || kvs__rd16(b + KVS_CH_FLAGS), KVS_ENOTSUP,
                      "unknown flags");
  get_params(b + KVS_CH_PARAMS, info->profile, &info->params);
  kvs_err rc = params_check(&info->params, l);
  KVS_RETURN_ERROR_IF(rc != KVS_OK, KVS_ECORRUPT, "profile parameters");
  info->layers_per_group = kvs__rd32(b + KVS_CH_LAYERS_PER_GROUP);
  info->params.layers_per_group = info->layers_per_group;
  KVS_RETURN_ERROR_IF(info->layers_per_group == 0 || info->layers_per_group > l->n_layers ||
                          KVS__CDIV(l->n_layers, info->layers_per_group) != nseg,
                      KVS_ECORRUPT, "layer groups");
  info->n_segments = nseg;
  info->prefix_bytes = (uint32_t)need;
  info->total_bytes = kvs__rd64(b + KVS_CH_TOTAL_BYTES);
  uint64_t off = need;
  for (uint32_t g = 0; g < nseg; g++) {
    uint64_t s = kvs__rd64(b + KVS_CODEC_HEADER_BYTES + 8u * g);
    KVS_RETURN_ERROR_IF(s < KVS_CODEC_SEG_HEADER_BYTES || s > (1ull << 48) || (s & 7), KVS_ECORRUPT,
                        "segment size");
    info->seg_offset[g] = off;
    off += s;
  }
  info->seg_offset[nseg] = off;
  KVS_RETURN_ERROR_IF(off != info->total_bytes, KVS_ECORRUPT, "total size");
  return KVS_OK;
}

uint64_t kvs_codec_out_bytes(const kvs_codec_info *info, const kvs_codec_out *out) {
  if (!info || !out) return 0;
  uint32_t h0 = out->head_begin, h1 = out->head_end ? out->head_end : info->layout.n_kv_heads;
  if (h1 <= h0) return 0;
  return 2ull * info->layout.n_layers * info->n_tokens * (h1 - h0) * info->layout.head_dim *
         kvs_dtype_size(out->dtype);
}

double kvs_codec_bits_per_elem(const kvs_codec_info *info) {
  double elems = 2.0 * info->layout.n_layers * info->n_tokens * info->layout.n_kv_heads *
                 info->layout.head_dim;
  return 8.0 * (double)info->total_bytes / elems;
}

static size_t lossless_ws(const kvs_codec_info *info) {
  size_t raw = 2ull * info->layers_per_group * plane_elems(&info->layout, info->n_tokens) * 2;
  return KVS__PAD8(ZSTD_estimateDCtxSize()) + raw + 16;
}

size_t kvs_codec_decode_workspace_bound(const kvs_codec_info *info) {
  if (!info) return 0;
  if (info->profile == KVS_CODEC_LOSSLESS) return lossless_ws(info);
  const kvs__profile_ops *ops = ops_of(info->profile);
  if (!ops) return 0;
  size_t m = 64;
  for (uint32_t l = 0; l < info->layout.n_layers; l++)
    for (uint32_t kv = 0; kv < 2; kv++) {
      kvs__plane pl = {info->n_tokens,        info->layout.n_kv_heads, info->layout.head_dim, l, kv,
                       info->layout.n_layers, &info->params,           info->layout.dtype};
      size_t s = ops->ws_bound(&pl);
      if (s > m) m = s;
    }
  return m;
}

static kvs_err check_out(const kvs_codec_info *info, const kvs_codec_out *o) {
  KVS_RETURN_ERROR_IF(!o, KVS_EINVAL, "null out");
  KVS_RETURN_ERROR_IF(o->dtype != KVS_DTYPE_F16 && o->dtype != KVS_DTYPE_BF16 &&
                          o->dtype != KVS_DTYPE_F32,
                      KVS_EINVAL, "output dtype");
  uint32_t h1 = o->head_end ? o->head_end : info->layout.n_kv_heads;
  KVS_RETURN_ERROR_IF(o->head_begin >= h1 || h1 > info->layout.n_kv_heads, KVS_EINVAL,
                      "head range");
  if (o->base) {
    KVS_RETURN_ERROR_IF(!o->base_bytes || kvs_codec_out_bytes(info, o) > o->base_bytes, KVS_ELAYOUT,
                        "output buffer smaller than the encoded KV");
  } else {
    KVS_RETURN_ERROR_IF(o->n_layers != info->layout.n_layers, KVS_ELAYOUT,
                        "paged output has a different layer count");
    KVS_RETURN_ERROR_IF(!o->k_cache || !o->v_cache || !o->block_table || !o->block_size, KVS_EINVAL,
                        "paged output needs caches, block table and block size");
    uint32_t nb = KVS__CDIV(info->n_tokens, o->block_size);
    for (uint32_t i = 0; i < nb; i++)
      KVS_RETURN_ERROR_IF(o->block_table[i] < 0 || (uint32_t)o->block_table[i] >= o->num_blocks,
                          KVS_EINVAL, "block table entry out of range");
  }
  return KVS_OK;
}

/* Every byte of layers [first, first+nl) of the output becomes 0xff: NaN in
 * f16, bf16 and f32, so a failed decode never passes for KV. */
static void poison(const kvs_codec_info *info, const kvs_codec_out *o, uint32_t first,
                   uint32_t nl) {
  if (check_out(info, o) != KVS_OK) return;
  uint32_t h0 = o->head_begin, h1 = o->head_end ? o->head_end : info->layout.n_kv_heads;
  uint32_t T = info->n_tokens, D = info->layout.head_dim;
  size_t es = kvs_dtype_size(o->dtype), row = (size_t)D * es;
  for (uint32_t l = first; l < first + nl && l < info->layout.n_layers; l++)
    for (uint32_t kv = 0; kv < 2; kv++) {
      kvs__writer w = {o, T, info->layout.n_kv_heads, D, h0, h1, l, kv, es};
      if (o->base) {
        memset(kvs__row_ptr(&w, 0, h0), 0xff, row * T * (h1 - h0));
      } else {
        for (uint32_t t = 0; t < T; t++)
          for (uint32_t h = h0; h < h1; h++)
            memset(kvs__row_ptr(&w, t, h), 0xff, row);
      }
    }
}

static kvs_err dec_lossless(const kvs_codec_info *info, uint32_t first, uint32_t nl,
                            const uint8_t *pay, size_t n, const kvs_codec_out *o, uint8_t *ws,
                            size_t ws_len) {
  size_t dsz = KVS__PAD8(ZSTD_estimateDCtxSize());
  uint64_t pe = plane_elems(&info->layout, info->n_tokens);
  size_t raw = 2ull * nl * pe * 2;
  uint8_t *aligned = (uint8_t *)(((uintptr_t)ws + 15) & ~(uintptr_t)15);
  KVS_RETURN_ERROR_IF(ws_len < dsz + raw + (size_t)(aligned - ws), KVS_EINVAL,
                      "workspace too small");
  ws = aligned; /* zstd wants its static context 8-byte aligned */
  ZSTD_DCtx *dctx = ZSTD_initStaticDCtx(ws, dsz);
  KVS_RETURN_ERROR_IF(!dctx, KVS_EINTERNAL, "zstd static context");
  uint8_t *tmp = ws + dsz;
  /* the payload is one frame followed by zero padding to 8 bytes */
  size_t fsz = ZSTD_findFrameCompressedSize(pay, n);
  KVS_RETURN_ERROR_IF(ZSTD_isError(fsz) || n - fsz >= 8, KVS_ECORRUPT, "zstd frame size");
  for (size_t i = fsz; i < n; i++)
    KVS_RETURN_ERROR_IF(pay[i], KVS_ECORRUPT, "padding");
  unsigned long long content = ZSTD_getFrameContentSize(pay, fsz);
  KVS_RETURN_ERROR_IF(content != raw, KVS_ECORRUPT, "zstd content size");
  size_t r = ZSTD_decompressDCtx(dctx, tmp, raw, pay, fsz);
  KVS_RETURN_ERROR_IF(ZSTD_isError(r) || r != raw, KVS_ECORRUPT, "zstd frame");
  size_t half = raw / 2;
  uint32_t T = info->n_tokens, H = info->layout.n_kv_heads, D = info->layout.head_dim;
  uint32_t h0 = o->head_begin, h1 = o->head_end ? o->head_end : H;
  size_t es = kvs_dtype_size(o->dtype);
  float rowf[KVS_MAX_HEAD_DIM];
  uint16_t rowh[KVS_MAX_HEAD_DIM];
  for (uint32_t i = 0; i < 2 * nl; i++) {
    kvs__writer w = {o, T, H, D, h0, h1, first + i / 2, i % 2, es};
    for (uint32_t t = 0; t < T; t++)
      for (uint32_t h = h0; h < h1; h++) {
        size_t e0 = (size_t)i * pe + ((size_t)t * H + h) * D;
        for (uint32_t d = 0; d < D; d++)
          rowh[d] = (uint16_t)(tmp[e0 + d] | (tmp[half + e0 + d] << 8));
        uint8_t *dst = kvs__row_ptr(&w, t, h);
        if (o->dtype == info->layout.dtype) {
          memcpy(dst, rowh, (size_t)D * 2); /* bit-exact, NaN payloads included */
        } else {
          for (uint32_t d = 0; d < D; d++)
            rowf[d] = info->layout.dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(rowh[d])
                                                           : kvs_f16_to_f32(rowh[d]);
          kvs__store_f32(dst, o->dtype, rowf, D);
        }
      }
  }
  return KVS_OK;
}

static kvs_err decode_segment(const kvs_codec_info *info, uint32_t g, const uint8_t *seg,
                              size_t seg_len, const kvs_codec_out *o, uint8_t *ws, size_t ws_len) {
  uint64_t want = info->seg_offset[g + 1] - info->seg_offset[g];
  KVS_RETURN_ERROR_IF(seg_len < want, KVS_ETRUNC, "segment truncated");
  KVS_RETURN_ERROR_IF(seg_len != want, KVS_ECORRUPT, "segment size differs from directory");
  KVS_RETURN_ERROR_IF(kvs__rd32(seg + KVS_SH_MAGIC) != KVS_CODEC_SEG_MAGIC, KVS_EMAGIC,
                      "segment magic");
  uint32_t lpg = info->layers_per_group, first = g * lpg;
  uint32_t nl = info->layout.n_layers - first < lpg ? info->layout.n_layers - first : lpg;
  KVS_RETURN_ERROR_IF(kvs__rd32(seg + KVS_SH_INDEX) != g ||
                          kvs__rd32(seg + KVS_SH_FIRST_LAYER) != first ||
                          kvs__rd32(seg + KVS_SH_N_LAYERS) != nl,
                      KVS_ECORRUPT, "segment header fields");
  uint64_t pn = kvs__rd64(seg + KVS_SH_PAYLOAD);
  KVS_RETURN_ERROR_IF(pn != want - KVS_CODEC_SEG_HEADER_BYTES, KVS_ECORRUPT, "payload size");
  const uint8_t *pay = seg + KVS_CODEC_SEG_HEADER_BYTES;
  KVS_RETURN_ERROR_IF(kvs_checksum64(pay, pn) != kvs__rd64(seg + KVS_SH_CHECKSUM), KVS_ECHECKSUM,
                      "segment checksum");
  if (info->profile == KVS_CODEC_LOSSLESS)
    return dec_lossless(info, first, nl, pay, pn, o, ws, ws_len);
  const kvs__profile_ops *ops = ops_of(info->profile);
  uint32_t T = info->n_tokens, H = info->layout.n_kv_heads, D = info->layout.head_dim;
  uint32_t h0 = o->head_begin, h1 = o->head_end ? o->head_end : H;
  size_t es = kvs_dtype_size(o->dtype), pos = 0;
  for (uint32_t i = 0; i < 2 * nl; i++) {
    kvs__plane pl = {
        T, H, D, first + i / 2, i % 2, info->layout.n_layers, &info->params, info->layout.dtype};
    kvs__writer w = {o, T, H, D, h0, h1, first + i / 2, i % 2, es};
    KVS_RETURN_ERROR_IF(pn - pos < 4, KVS_ECORRUPT, "plane truncated");
    uint32_t pb = kvs__rd32(pay + pos);
    KVS_RETURN_ERROR_IF(pb < 4 || (pb & 3) || pb > pn - pos, KVS_ECORRUPT, "plane size");
    KVS_RETURN_ERROR_IF(ws_len < ops->ws_bound(&pl), KVS_EINVAL, "workspace too small");
    KVS_TRY(ops->dec(&pl, pay + pos, pb, &w, ws, ws_len));
    pos += pb;
  }
  KVS_RETURN_ERROR_IF(pn - pos >= 8, KVS_ECORRUPT, "trailing bytes in segment");
  for (; pos < pn; pos++)
    KVS_RETURN_ERROR_IF(pay[pos], KVS_ECORRUPT, "padding");
  return KVS_OK;
}

kvs_err kvs_codec_decode_segment(const kvs_codec_info *info, uint32_t g, const void *seg,
                                 size_t seg_len, const kvs_codec_out *o, void *ws, size_t ws_len) {
  KVS_RETURN_ERROR_IF(!info || !seg, KVS_EINVAL, "null argument");
  KVS_RETURN_ERROR_IF(g >= info->n_segments || info->n_segments > KVS_CODEC_MAX_SEGMENTS,
                      KVS_EINVAL, "segment index");
  KVS_TRY(check_out(info, o));
  uint32_t lpg = info->layers_per_group;
  void *own = NULL;
  if (!ws) {
    ws_len = kvs_codec_decode_workspace_bound(info);
    if (!(ws = own = malloc(ws_len))) return KVS_ENOMEM;
  }
  kvs_err rc = decode_segment(info, g, seg, seg_len, o, ws, ws_len);
  free(own);
  if (rc != KVS_OK) poison(info, o, g * lpg, lpg);
  return rc;
}

kvs_err kvs_codec_verify(const void *bytes, size_t n, kvs_codec_info *info) {
  kvs_codec_info tmp;
  if (!info) info = &tmp;
  KVS_TRY(kvs_codec_parse_header(bytes, n, info));
  KVS_RETURN_ERROR_IF(n < info->total_bytes, KVS_ETRUNC, "encoding truncated");
  KVS_RETURN_ERROR_IF(n != info->total_bytes, KVS_ECORRUPT, "trailing bytes");
  const uint8_t *b = bytes;
  for (uint32_t g = 0; g < info->n_segments; g++) {
    const uint8_t *s = b + info->seg_offset[g];
    uint64_t len = info->seg_offset[g + 1] - info->seg_offset[g];
    KVS_RETURN_ERROR_IF(kvs__rd32(s) != KVS_CODEC_SEG_MAGIC, KVS_EMAGIC, "segment magic");
    KVS_RETURN_ERROR_IF(kvs__rd64(s + KVS_SH_PAYLOAD) != len - KVS_CODEC_SEG_HEADER_BYTES,
                        KVS_ECORRUPT, "payload size");
    KVS_RETURN_ERROR_IF(
        kvs_checksum64(s + KVS_CODEC_SEG_HEADER_BYTES, len - KVS_CODEC_SEG_HEADER_BYTES) !=
            kvs__rd64(s + KVS_SH_CHECKSUM),
        KVS_ECHECKSUM, "segment checksum");
  }
  return KVS_OK;
}

kvs_err kvs_codec_decode(const void *bytes, size_t n, const kvs_codec_out *o, void *ws,
                         size_t ws_len) {
  kvs_codec_info info;
  kvs_err rc = kvs_codec_parse_header(bytes, n, &info);
  if (rc == KVS_OK) rc = check_out(&info, o);
  if (rc != KVS_OK) {
    /* the header cannot be trusted: poison what the caller says it owns */
    if (o && o->base && o->base_bytes) memset(o->base, 0xff, o->base_bytes);
    return rc;
  }
  if (n < info.total_bytes || n != info.total_bytes) {
    poison(&info, o, 0, info.layout.n_layers);
    return n < info.total_bytes ? KVS_ERR_AT(KVS_ETRUNC, "encoding truncated")
                                : KVS_ERR_AT(KVS_ECORRUPT, "trailing bytes");
  }
  void *own = NULL;
  if (!ws) {
    ws_len = kvs_codec_decode_workspace_bound(&info);
    if (!(ws = own = malloc(ws_len))) return KVS_ENOMEM;
  }
  const uint8_t *b = bytes;
  for (uint32_t g = 0; g < info.n_segments; g++) {
    rc = decode_segment(&info, g, b + info.seg_offset[g],
                        info.seg_offset[g + 1] - info.seg_offset[g], o, ws, ws_len);
    if (rc != KVS_OK) {
      poison(&info, o, 0, info.layout.n_layers); /* the chunk failed: all of it */
      break;
    }
  }
  free(own);
  return rc;
}
