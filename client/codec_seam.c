/* codec_seam.c - encode/decode behind one small interface: the raw profile
 * (codec/raw.c) and the KV codec's profiles (codec/). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "codec_seam.h"
#include "kvs_wire.h"

#include "kvs_codec.h"
#include "kvs_gpu.h"
#include "kvs_gpu_codec.h"

_Static_assert(KVS_PROFILE_RAW == KVS_CODEC_RAW, "the raw profile is the codec's KVS_CODEC_RAW");

void kvs__encoded_free(kvs__encoded *e) {
  if (!e) return;
  if (!e->borrowed) free(e->bytes);
  free(e->seg_end);
  memset(e, 0, sizeof *e);
}

/* The raw profile lives in codec/raw.c (KVS_CODEC_RAW). dst (cap bytes) or
 * NULL: allocated. */
static kvs_err raw_encode(uint32_t lpg_want, const kvs_layout *l, uint32_t T, const void *kv,
                          void *dst, size_t cap, kvs__encoded *e) {
  const uint32_t lpg = kvs_codec_raw_lpg(l, lpg_want, KVS_WIRE_MAX_SEGMENTS);
  e->len = kvs_codec_raw_bytes(l, T);
  if (!e->len || (dst && cap < e->len)) return KVS_EINVAL;
  e->bytes = dst ? dst : malloc(e->len);
  e->borrowed = dst != NULL;
  e->seg_end = malloc(KVS_WIRE_MAX_SEGMENTS * sizeof *e->seg_end);
  uint32_t n = 0;
  kvs_err rv = e->bytes && e->seg_end ? kvs_codec_raw_encode(l, T, lpg, kv, e->bytes, e->len,
                                                             e->seg_end, KVS_WIRE_MAX_SEGMENTS, &n)
                                      : KVS_ENOMEM;
  if (rv != KVS_OK) {
    kvs__encoded_free(e);
    return rv;
  }
  e->n_segs = n;
  return KVS_OK;
}

static kvs_err seg_table(kvs_err rv, kvs__encoded *out);

/* The codec parameters of a host encode (profile != raw, or params given). */
static kvs_err host_params(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                           const kvs_layout *layout, kvs_codec_params *p) {
  if (params) {
    KVS_RETURN_ERROR_IF(params->profile != profile, KVS_EINVAL,
                        "codec parameters of another profile than the put's");
    *p = *params;
    if (!p->layers_per_group) p->layers_per_group = lpg;
    return KVS_OK;
  }
  KVS_TRY(kvs_codec_params_default((int)profile, layout->n_layers, p));
  p->layers_per_group = lpg;
  return KVS_OK;
}

size_t kvs__encode_bound(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                         const kvs_layout *layout, uint32_t n_tokens) {
  if (kvs_layout_validate(layout) || !n_tokens) return 0;
  if (profile == KVS_PROFILE_RAW && !params) return kvs_codec_raw_bytes(layout, n_tokens);
  kvs_codec_params p;
  if (host_params(profile, lpg, params, layout, &p) != KVS_OK) return 0;
  return kvs_codec_encode_bound(&p, layout, n_tokens);
}

kvs_err kvs__encode_to(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                       const kvs_layout *layout, uint32_t n_tokens, const void *kv, void *dst,
                       size_t dst_cap, kvs__encoded *out) {
  memset(out, 0, sizeof *out);
  KVS_TRY(kvs_layout_validate(layout));
  if (n_tokens == 0 || !kv) return KVS_EINVAL;
  if (profile == KVS_PROFILE_RAW && !params)
    return raw_encode(lpg, layout, n_tokens, kv, dst, dst_cap, out);
  kvs_codec_params p;
  KVS_TRY(host_params(profile, lpg, params, layout, &p));
  size_t cap = kvs_codec_encode_bound(&p, layout, n_tokens);
  if (!cap || (dst && dst_cap < cap)) return KVS_EINVAL;
  out->bytes = dst ? dst : malloc(cap);
  out->borrowed = dst != NULL;
  if (!out->bytes) return KVS_ENOMEM;
  kvs_err rv = kvs_codec_encode(&p, layout, n_tokens, kv, out->bytes, cap, &out->len);
  return seg_table(rv, out);
}

kvs_err kvs__encode(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                    const kvs_layout *layout, uint32_t n_tokens, const void *kv,
                    kvs__encoded *out) {
  return kvs__encode_to(profile, lpg, params, layout, n_tokens, kv, NULL, 0, out);
}

/* The segment table of an encoding (from its header); frees out on error. */
static kvs_err seg_table(kvs_err rv, kvs__encoded *out) {
  kvs_codec_info *info = malloc(sizeof *info);
  if (rv == KVS_OK && !info) rv = KVS_ENOMEM;
  if (rv == KVS_OK) rv = kvs_codec_parse_header(out->bytes, out->len, info);
  if (rv == KVS_OK) {
    out->n_segs = 1 + info->n_segments;
    out->seg_end = malloc(out->n_segs * sizeof *out->seg_end);
    if (!out->seg_end)
      rv = KVS_ENOMEM;
    else
      for (uint32_t g = 0; g < out->n_segs; g++)
        out->seg_end[g] = info->seg_offset[g];
    /* seg_offset[0] is where segment 0 starts = the end of the prefix */
  }
  free(info);
  if (rv != KVS_OK) kvs__encoded_free(out);
  return rv;
}

/* The GPU encoder's workspace and stream, kept across puts (cudaMalloc and
 * cudaFree synchronize the device); one GPU encode at a time. */
static pthread_mutex_t g_enc_mu = PTHREAD_MUTEX_INITIALIZER;
static void *g_enc_ws, *g_enc_stream;
static size_t g_enc_ws_len;

/* The dense parameters of a device encode, or KVS_ENOTSUP (no GPU encoder
 * for the profile, no CUDA or device, KVS_CLIENT_GPU_ENCODE=0). */
static kvs_err device_params(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                             const kvs_layout *layout, uint32_t n_tokens, kvs_codec_params *p) {
  KVS_TRY(kvs_layout_validate(layout));
  if (n_tokens == 0) return KVS_EINVAL;
  if (profile != KVS_CODEC_DENSE || !kvs_gpu_compiled() || kvs_gpu_device_count() < 1)
    return KVS_ENOTSUP;
  if (params) {
    KVS_RETURN_ERROR_IF(params->profile != profile, KVS_EINVAL,
                        "codec parameters of another profile than the put's");
    *p = *params;
    if (!p->layers_per_group) p->layers_per_group = lpg;
  } else {
    KVS_TRY(kvs_codec_params_default((int)profile, layout->n_layers, p));
    p->layers_per_group = lpg;
  }
  return KVS_OK;
}

size_t kvs__encode_device_bound(uint32_t profile, uint32_t lpg,
                                const struct kvs_codec_params *params, const kvs_layout *layout,
                                uint32_t n_tokens) {
  kvs_codec_params p;
  if (device_params(profile, lpg, params, layout, n_tokens, &p) != KVS_OK) return 0;
  return kvs_codec_encode_bound(&p, layout, n_tokens);
}

kvs_err kvs__encode_device(uint32_t profile, uint32_t lpg, const struct kvs_codec_params *params,
                           const kvs_layout *layout, uint32_t n_tokens, const void *d_kv, void *dst,
                           size_t dst_cap, kvs__encoded *out) {
  memset(out, 0, sizeof *out);
  if (!d_kv) return KVS_EINVAL;
  kvs_codec_params p;
  KVS_TRY(device_params(profile, lpg, params, layout, n_tokens, &p));
  size_t cap = kvs_codec_encode_bound(&p, layout, n_tokens);
  size_t ws = kvs_gpu_codec_encode_workspace_bound(&p, layout, n_tokens);
  if (!cap || !ws || (dst && dst_cap < cap)) return KVS_EINVAL;
  out->bytes = dst ? dst : malloc(cap);
  out->borrowed = dst != NULL;
  if (!out->bytes) return KVS_ENOMEM;
  pthread_mutex_lock(&g_enc_mu);
  kvs_err rv = KVS_OK;
  if (!g_enc_stream) rv = kvs_gpu_stream_create(&g_enc_stream);
  if (!rv && g_enc_ws_len < ws) {
    kvs_gpu_free(g_enc_ws);
    g_enc_ws = NULL, g_enc_ws_len = 0;
    rv = kvs_gpu_alloc(&g_enc_ws, ws);
    if (!rv) g_enc_ws_len = ws;
  }
  if (!rv)
    rv = kvs_gpu_codec_encode(&p, layout, n_tokens, d_kv, out->bytes, cap, &out->len, g_enc_ws,
                              g_enc_ws_len, g_enc_stream);
  pthread_mutex_unlock(&g_enc_mu);
  return seg_table(rv, out);
}

struct kvs__decoder {
  uint32_t profile;
  kvs_layout layout;
  uint32_t T, lpg, G;
  kvs_codec_raw_info raw;
  kvs_codec_info info;
};

kvs_err kvs__decoder_open(uint32_t profile, const kvs_layout *layout, uint32_t T,
                          const uint8_t *prefix, size_t len, kvs__decoder **out) {
  *out = NULL;
  kvs__decoder *d = calloc(1, sizeof *d);
  if (!d) return KVS_ENOMEM;
  d->profile = profile;
  d->layout = *layout;
  d->T = T;
  kvs_err rv = KVS_OK;
  if (profile == KVS_PROFILE_RAW) {
    rv = kvs_codec_raw_parse(prefix, len, layout, T, &d->raw);
    d->lpg = d->raw.layers_per_group;
    d->G = d->raw.n_groups;
  } else {
    rv = kvs_codec_parse_header(prefix, len, &d->info);
    if (rv == KVS_OK && !kvs_layout_equal(&d->info.layout, layout))
      rv = KVS_ERR_AT(KVS_ELAYOUT, "codec header layout");
    if (rv == KVS_OK && (d->info.n_tokens != T || d->info.prefix_bytes != len))
      rv = KVS_ERR_AT(KVS_ECORRUPT, "codec header tokens/prefix");
    d->lpg = d->info.layers_per_group;
    d->G = d->info.n_segments;
  }
  if (rv != KVS_OK) {
    free(d);
    return rv;
  }
  *out = d;
  return KVS_OK;
}

void kvs__decoder_free(kvs__decoder *d) { free(d); }
uint32_t kvs__decoder_groups(const kvs__decoder *d) { return d->G; }

void kvs__decoder_group_layers(const kvs__decoder *d, uint32_t g, uint32_t *lb, uint32_t *le) {
  *lb = g * d->lpg;
  *le = *lb + d->lpg < d->layout.n_layers ? *lb + d->lpg : d->layout.n_layers;
}

void kvs__decoder_group_segs(const kvs__decoder *d, uint32_t g, uint32_t hb, uint32_t he,
                             uint32_t *seg_first, uint32_t *seg_count) {
  if (d->profile == KVS_PROFILE_RAW) {
    *seg_first = 1 + g * d->layout.n_kv_heads + hb;
    *seg_count = he - hb;
  } else {
    *seg_first = 1 + g; /* the codec's segments carry every head */
    *seg_count = 1;
  }
}

size_t kvs__decoder_ws_bytes(const kvs__decoder *d) {
  if (d->profile != KVS_PROFILE_RAW) return kvs_codec_decode_workspace_bound(&d->info);
  return 0;
}

/* The codec's output: out[out_bytes] (canonical layout), or paged blocks. */
static kvs_codec_out dest(void *out, uint64_t out_bytes, const kvs_paged_kv *paged, uint32_t dtype,
                          uint32_t hb, uint32_t he) {
  kvs_codec_out o = kvs_codec_out_contiguous(paged ? NULL : out, paged ? 0 : out_bytes, dtype);
  o.head_begin = hb;
  o.head_end = he;
  if (paged) {
    o.k_cache = paged->k_cache;
    o.v_cache = paged->v_cache;
    o.block_table = paged->block_table;
    o.block_size = paged->block_size;
    o.num_blocks = paged->num_blocks;
    o.n_layers = paged->n_layers;
  }
  return o;
}

int kvs__decoder_paged_ok(const kvs__decoder *d) { return d->profile != KVS_PROFILE_RAW; }

kvs_err kvs__decoder_decode(const kvs__decoder *d, uint32_t g, const uint8_t *bytes, size_t len,
                            void *out, uint64_t out_bytes, const kvs_paged_kv *paged,
                            uint32_t dtype, uint32_t hb, uint32_t he, void *ws, size_t ws_len) {
  const kvs_layout *l = &d->layout;
  if (g >= d->G || hb >= he || he > l->n_kv_heads) return KVS_EINVAL;
  if (d->profile == KVS_PROFILE_RAW) {
    if (paged) return KVS_ENOTSUP; /* the caller stages and scatters */
    return kvs_codec_raw_decode_group(&d->raw, g, hb, he, bytes, len, out, out_bytes, dtype);
  }
  kvs_codec_out o = dest(out, out_bytes, paged, dtype, hb, he);
  return kvs_codec_decode_segment(&d->info, g, bytes, len, &o, ws, ws_len);
}

/* ------------------------------------------------------ device decode */
int kvs__decoder_gpu_ok(const kvs__decoder *d) {
  if (d->profile == KVS_PROFILE_RAW || d->profile == KVS_CODEC_LOSSLESS) return 0;
  if (kvs_gpu_device_count() < 1) return 0;
  /* dense needs a head_dim the Hadamard kernel covers */
  if (d->profile == KVS_CODEC_DENSE && d->layout.head_dim != 32 && d->layout.head_dim != 64 &&
      d->layout.head_dim != 128)
    return 0;
  return 1;
}

void kvs__devslot_free(kvs__devslot *s) {
  if (!s) return;
  if (s->h_stage) kvs_gpu_free_host(s->h_stage);
  kvs_gpu_free(s->d_seg);
  kvs_gpu_free(s->d_ws);
  if (s->stream) kvs_gpu_stream_free(s->stream);
  memset(s, 0, sizeof *s);
}

int kvs__devslot_fits(const kvs__devslot *s, const kvs__decoder *d, size_t max_seg, int staged) {
  return s->d_seg && s->seg_cap >= max_seg && (s->h_stage != NULL) == (staged != 0) &&
         s->ws_len >= kvs_gpu_codec_workspace_bound(&d->info);
}

kvs_err kvs__devslot_init(kvs__devslot *s, const kvs__decoder *d, size_t max_seg, int staged) {
  memset(s, 0, sizeof *s);
  /* rounded up so that entries of nearby sizes share pooled buffers */
  size_t cap = 4096;
  while (cap < max_seg && cap < ((size_t)1 << 40))
    cap <<= 1;
  s->seg_cap = cap;
  s->ws_len = kvs_gpu_codec_workspace_bound(&d->info);
  kvs_err rv = kvs_gpu_alloc(&s->d_seg, s->seg_cap);
  if (!rv && staged) rv = kvs_gpu_alloc_host(&s->h_stage, s->seg_cap);
  if (!rv) rv = kvs_gpu_alloc(&s->d_ws, s->ws_len ? s->ws_len : 1);
  if (!rv) rv = kvs_gpu_stream_create(&s->stream);
  if (rv) kvs__devslot_free(s);
  return rv;
}

/* Staged copies: pieces of this size, each DMA'd as soon as it is copied. */
#define KVS__STAGE_PIECE ((size_t)256 << 10)
typedef struct stage_ctx {
  kvs__devslot *s;
  kvs_err rv;
} stage_ctx;
static void stage_piece(void *arg, size_t off, size_t len) {
  stage_ctx *sc = arg;
  size_t at = KVS_CODEC_SEG_HEADER_BYTES + off;
  if (sc->rv == KVS_OK)
    sc->rv = kvs_gpu_copy_h2d((uint8_t *)sc->s->d_seg + at, (uint8_t *)sc->s->h_stage + at, len,
                              sc->s->stream);
}

/* Segment g's own header against its len bytes: magic, index, payload size. */
static kvs_err seg_head(const uint8_t *bytes, uint64_t len, uint32_t g, uint64_t *pay) {
  KVS_RETURN_ERROR_IF(len < KVS_CODEC_SEG_HEADER_BYTES, KVS_ECORRUPT, "segment size");
  KVS_RETURN_ERROR_IF(kvs_wire_rd32(bytes + KVS_SH_MAGIC, 0) != KVS_CODEC_SEG_MAGIC ||
                          kvs_wire_rd32(bytes + KVS_SH_INDEX, 0) != g,
                      KVS_ECORRUPT, "segment header");
  *pay = kvs_wire_rd64(bytes + KVS_SH_PAYLOAD, 0);
  KVS_RETURN_ERROR_IF(*pay != len - KVS_CODEC_SEG_HEADER_BYTES, KVS_ECORRUPT, "segment payload");
  return KVS_OK;
}

kvs_err kvs__decoder_decode_device(const kvs__decoder *d, uint32_t g, const uint8_t *bytes,
                                   size_t len, void *d_out, uint64_t out_bytes,
                                   const kvs_paged_kv *paged, uint32_t dtype, uint32_t hb,
                                   uint32_t he, kvs__devslot *s) {
  const kvs_codec_info *info = &d->info;
  if (g >= d->G || hb >= he || he > d->layout.n_kv_heads) return KVS_EINVAL;
  /* the kernels bound their reads but do not check checksums: the host does,
     while the copy and the decode run (a group whose bytes fail is reported
     failed, and its output, already written, must not be used: the caller
     re-fetches or fails the get) */
  KVS_RETURN_ERROR_IF(len != info->seg_offset[g + 1] - info->seg_offset[g] || len > s->seg_cap,
                      KVS_ECORRUPT, "segment size");
  uint64_t pay;
  KVS_TRY(seg_head(bytes, len, g, &pay));
  kvs_codec_out o = dest(d_out, out_bytes, paged, dtype, hb, he);
  kvs_err rv = KVS_OK;
  uint64_t sum;
  if (s->h_stage) { /* header, then the payload piece by piece, each DMA'd once staged */
    stage_ctx sc = {s, KVS_OK};
    memcpy(s->h_stage, bytes, KVS_CODEC_SEG_HEADER_BYTES);
    rv = kvs_gpu_copy_h2d(s->d_seg, s->h_stage, KVS_CODEC_SEG_HEADER_BYTES, s->stream);
    sum = kvs_checksum64_copy((uint8_t *)s->h_stage + KVS_CODEC_SEG_HEADER_BYTES,
                              bytes + KVS_CODEC_SEG_HEADER_BYTES, pay, KVS__STAGE_PIECE,
                              stage_piece, &sc);
    if (rv == KVS_OK) rv = sc.rv;
    if (rv == KVS_OK)
      rv = kvs_gpu_codec_decode_segment(info, g, s->d_seg, &o, s->d_ws, s->ws_len, s->stream);
  } else {
    rv = kvs_gpu_copy_h2d(s->d_seg, bytes, len, s->stream);
    if (rv == KVS_OK)
      rv = kvs_gpu_codec_decode_segment(info, g, s->d_seg, &o, s->d_ws, s->ws_len, s->stream);
    sum = kvs_checksum64(bytes + KVS_CODEC_SEG_HEADER_BYTES, pay);
  }
  int sum_ok = sum == kvs_wire_rd64(bytes + KVS_SH_CHECKSUM, 0);
  /* always wait for the stream: the slot's buffers are reused after this */
  kvs_err st = kvs_gpu_codec_status(s->d_ws, s->stream);
  if (rv == KVS_OK) rv = st;
  KVS_RETURN_ERROR_IF(rv == KVS_OK && !sum_ok, KVS_ECHECKSUM, "segment checksum");
  return rv;
}

/* Segment g's header and checksum, from the encoding's own bytes. */
static kvs_err check_segment(uint32_t g, const uint8_t *bytes, uint64_t len) {
  uint64_t pay;
  KVS_TRY(seg_head(bytes, len, g, &pay));
  KVS_RETURN_ERROR_IF(kvs_checksum64(bytes + KVS_CODEC_SEG_HEADER_BYTES, pay) !=
                          kvs_wire_rd64(bytes + KVS_SH_CHECKSUM, 0),
                      KVS_ECHECKSUM, "segment checksum");
  return KVS_OK;
}

kvs_err kvs__decoder_decode_device_all(const kvs__decoder *d, const uint8_t *value, size_t len,
                                       void *d_out, uint64_t out_bytes, const kvs_paged_kv *paged,
                                       uint32_t dtype, uint32_t hb, uint32_t he, kvs__devslot *s) {
  const kvs_codec_info *info = &d->info;
  if (hb >= he || he > d->layout.n_kv_heads || !info->n_segments) return KVS_EINVAL;
  KVS_RETURN_ERROR_IF(len != info->seg_offset[info->n_segments] ||
                          info->seg_offset[0] != info->prefix_bytes || len > s->seg_cap,
                      KVS_ECORRUPT, "value size");
  kvs_codec_out o = dest(d_out, out_bytes, paged, dtype, hb, he);
  kvs_err rv;
  if (s->h_stage) { /* staged mode: one host copy into pinned memory, then the DMA */
    memcpy(s->h_stage, value, len);
    rv = kvs_gpu_copy_h2d(s->d_seg, s->h_stage, len, s->stream);
  } else {
    rv = kvs_gpu_copy_h2d(s->d_seg, value, len, s->stream);
  }
  if (rv == KVS_OK) rv = kvs_gpu_codec_decode(info, s->d_seg, &o, s->d_ws, s->ws_len, s->stream);
  /* while the copy and the kernels run: every segment's header and checksum */
  kvs_err chk = KVS_OK;
  for (uint32_t g = 0; chk == KVS_OK && g < info->n_segments; g++)
    chk = check_segment(g, value + info->seg_offset[g],
                        info->seg_offset[g + 1] - info->seg_offset[g]);
  /* always wait for the stream: the slot's buffers are reused after this */
  kvs_err st = kvs_gpu_codec_status(s->d_ws, s->stream);
  if (rv == KVS_OK) rv = st;
  if (rv == KVS_OK) rv = chk;
  return rv;
}

int kvs_profile_from_name(const char *name) {
  if (!name) return -1;
  if (!strcmp(name, "raw")) return (int)KVS_PROFILE_RAW;
  return kvs_codec_profile_from_name(name);
}

int kvs_client_has_codec(void) { return 1; } /* the codec is always built in */
