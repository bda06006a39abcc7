/* kvs_codec.h - the KV codec: encode one chunk's KV into self-describing
 * bytes, parse them, and decode them (whole, or one layer group at a time as
 * segments arrive) into caller memory.
 *
 * Input KV is in the canonical layout (kvs_core.h): per layer K then V, each
 * (tokens, kv_heads, head_dim), fp16 or bf16. Output is the same layout in
 * fp16, bf16 or f32, optionally only a range of KV heads (a tensor-parallel
 * rank's slice), or scattered into paged blocks given a block table.
 *
 * Pure: no I/O, no threads, no global state. The byte format is in
 * kvs_codec_format.h and docs/codec-format.md.
 *
 * Typical use:
 *   size_t cap = kvs_codec_encode_bound(&p, &layout, T);       // caller allocs cap
 *   kvs_codec_encode(&p, &layout, T, kv, buf, cap, &len);
 *   ...
 *   kvs_codec_info info; kvs_codec_parse_header(buf, len, &info);
 *   kvs_codec_out o = kvs_codec_out_contiguous(dst, dst_bytes, KVS_DTYPE_F16);
 *   size_t wsn = kvs_codec_decode_workspace_bound(&info);     // reuse across calls
 *   kvs_codec_decode(buf, len, &o, ws, wsn);
 */
#ifndef KVS_CODEC_H
#define KVS_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvs_codec_format.h"
#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  KVS_PROFILE_LOSSLESS = KVS_CODEC_LOSSLESS,
  KVS_PROFILE_INT8 = KVS_CODEC_INT8,
  KVS_PROFILE_KIVI2 = KVS_CODEC_KIVI2,
  KVS_PROFILE_KIVI4 = KVS_CODEC_KIVI4,
  KVS_PROFILE_FP4 = KVS_CODEC_FP4,
  KVS_PROFILE_CACHEGEN = KVS_CODEC_CACHEGEN,
  KVS_PROFILE_DENSE = KVS_CODEC_DENSE
} kvs_codec_profile;

/* "lossless", "int8", "kivi2", "kivi4", "fp4", "cachegen-ref", "dense";
 * NULL for an unknown id. Static strings. */
const char *kvs_codec_profile_name(int profile);
/* Id for a name above, or -1. */
int kvs_codec_profile_from_name(const char *name);

/* Encoder settings. Start from kvs_codec_params_default() and change what
 * you need; every field is written to the header, so a decoder needs nothing
 * but the bytes. */
typedef struct kvs_codec_params {
  uint32_t profile;          /* kvs_codec_profile */
  uint32_t layers_per_group; /* layers per segment (0: default 1); raised so
                                that there are at most KVS_CODEC_MAX_SEGMENTS */
  uint32_t k_bits, v_bits;   /* kivi: 2 or 4 */
  uint32_t group;            /* kivi group (default 32); dense/cachegen rANS steps
                                per lane (default 256 / unused) */
  float k_step, v_step;      /* dense: quantizer step / RMS of the plane (default K 0.25,
                                V 0.5: ~3.7 bits/element, KL 0.009 on SmolLM2; K = V = 0.1:
                                ~5.6 bits, KL < 0.001, top-1 0.991 on MuSiQue items 0-19 but
                                0.983 on 20-39, where int8 is 0.985: near-tied positions, see
                                bench/RESULTS.md; K = V = 0.05, ~6.6 bits, was >= 0.99 on both) */
  uint32_t fine_layers;      /* dense: first layers with step * fine_scale */
  float fine_scale;          /* dense: (default 0.5) */
  uint32_t k_flags, v_flags; /* dense: KVS_DENSE_ROTATED | _CHAN | _TOKEN | _SINK for K and
                                V planes (default K: SINK, V: TOKEN | SINK) */
  /* dense, encoder only (never stored: the decoder needs nothing of it): per-channel
     error weights, [n_layers][2 (K, V)][kv_heads * head_dim] floats > 0, or NULL. On a
     plane with KVS_DENSE_CHAN the channel scales become w^-1/2 (normalized to a
     geometric mean of 1) instead of the channels' RMS, so the step of channel c is
     proportional to 1/sqrt(w_c): the allocation that minimizes sum_c w_c * err_c^2.
     A model's calibration table (kvs_codec_calib_*) gives w = E[q_c^2] for K and the
     output projection's column energy for V. Borrowed for the encode call only. */
  const float *chan_weight;
  int zstd_level; /* lossless (default 3) */
  /* cachegen-ref (defaults scale LMCache's Llama-7B table to n_layers):
     K layers [0,kf) get bins[0], [kf,km) bins[1], the rest bins[2];
     V layers [0,vf) get bins[3], the rest bins[4]. */
  uint32_t cg_key_first_layers, cg_key_second_layers, cg_value_first_layers;
  uint32_t cg_bins[5];
} kvs_codec_params;

/* Defaults of `profile` for a model of n_layers layers (n_layers only
 * matters for cachegen-ref). KVS_EINVAL for an unknown profile. */
kvs_err kvs_codec_params_default(int profile, uint32_t n_layers, kvs_codec_params *p);

/* Most bytes kvs_codec_encode can write for this input; 0 when the
 * arguments are invalid. */
size_t kvs_codec_encode_bound(const kvs_codec_params *p, const kvs_layout *layout,
                              uint32_t n_tokens);

/* Encodes one chunk: kv is the canonical layout of `layout` (dtype F16 or
 * BF16) for n_tokens tokens. Writes *out_len bytes into out[0, cap).
 * Allocates and frees its own scratch (encode is not on the fetch path).
 * KVS_ENOSPC when cap is too small, KVS_ELAYOUT / KVS_EINVAL for bad args. */
kvs_err kvs_codec_encode(const kvs_codec_params *p, const kvs_layout *layout, uint32_t n_tokens,
                         const void *kv, void *out, size_t cap, size_t *out_len);

/* A plane made elsewhere (the GPU encoder, gpu/codec): writes the body of
 * layer `layer`'s K (kv = 0) or V (kv = 1) plane, exactly as the CPU
 * encoder of the profile would, into out[0, cap) and its size into *len
 * (its leading u32 plane_bytes included). KVS_ENOSPC when cap is short. */
typedef kvs_err (*kvs_codec_plane_fn)(void *ctx, uint32_t layer, uint32_t kv, uint8_t *out,
                                      size_t cap, size_t *len);

/* kvs_codec_encode for a lossy profile with the planes from fn, called in
 * order (layer 0 K, layer 0 V, layer 1 K, ...): the header, directory,
 * segment headers and checksums around them. Same bound, same errors;
 * KVS_EINTERNAL when fn returns a body whose plane_bytes is not its size. */
kvs_err kvs_codec_encode_planes(const kvs_codec_params *p, const kvs_layout *layout,
                                uint32_t n_tokens, kvs_codec_plane_fn fn, void *ctx, void *out,
                                size_t cap, size_t *out_len);

/* What the header says. Plain value: owns nothing, points into nothing. */
typedef struct kvs_codec_info {
  kvs_layout layout; /* of the encoded KV (dtype = the encoder's input) */
  uint32_t n_tokens;
  uint32_t profile;
  kvs_codec_params params; /* as decoded from the header */
  uint32_t layers_per_group;
  uint32_t n_segments;
  uint32_t prefix_bytes;                           /* header + directory: where segment 0 starts */
  uint64_t total_bytes;                            /* of the whole encoding */
  uint64_t seg_offset[KVS_CODEC_MAX_SEGMENTS + 1]; /* from byte 0; [n_segments] = total */
} kvs_codec_info;

/* Bytes needed before kvs_codec_parse_header can succeed (header +
 * directory), given at least the first KVS_CODEC_HEADER_BYTES bytes: lets a
 * streaming reader know when to parse. KVS_ETRUNC / KVS_EMAGIC /
 * KVS_EVERSION when those bytes are not a header. */
kvs_err kvs_codec_prefix_bytes(const void *bytes, size_t n, size_t *need);

/* Parses and verifies the header and segment directory (its checksum, the
 * layout, the profile and its parameters, every size). n may be smaller than
 * the whole encoding (streaming): only info->prefix_bytes are needed. */
kvs_err kvs_codec_parse_header(const void *bytes, size_t n, kvs_codec_info *info);

/* Where decoded KV goes. */
typedef struct kvs_codec_out {
  uint32_t dtype;      /* KVS_DTYPE_F16, BF16 or F32 */
  uint32_t head_begin; /* decode only KV heads [head_begin, head_end); */
  uint32_t head_end;   /* head_end == 0 means all heads */
  /* contiguous: canonical layout with kv_heads = head_end - head_begin;
     base is the start of layer 0 K even when decoding one segment */
  void *base;
  uint64_t base_bytes; /* size of base: decode refuses (KVS_ELAYOUT) an
                          encoding whose output would not fit */
  /* paged (base == NULL): per layer, K and V caches each
     (num_blocks, block_size, heads, head_dim) with heads = head_end-head_begin;
     token t lands in block block_table[t / block_size], slot t % block_size */
  void *const *k_cache;       /* [n_layers] */
  void *const *v_cache;       /* [n_layers] */
  const int32_t *block_table; /* [ceil(n_tokens / block_size)] */
  uint32_t block_size, num_blocks;
  uint32_t n_layers; /* entries in k_cache / v_cache */
} kvs_codec_out;

static inline kvs_codec_out kvs_codec_out_contiguous(void *base, uint64_t bytes, uint32_t dtype) {
  kvs_codec_out o;
  memset(&o, 0, sizeof o);
  o.dtype = dtype;
  o.base = base;
  o.base_bytes = bytes;
  return o;
}
/* Bytes of a contiguous output for this info and out (dtype, head range). */
uint64_t kvs_codec_out_bytes(const kvs_codec_info *info, const kvs_codec_out *out);

/* Scratch bytes kvs_codec_decode / _decode_segment need for this chunk.
 * The caller allocates it once and reuses it: decode does not malloc. */
size_t kvs_codec_decode_workspace_bound(const kvs_codec_info *info);

/* Decodes the whole chunk (bytes[0,n) = the full encoding) into `out`.
 * ws/ws_len: scratch of at least the bound above; ws == NULL makes decode
 * allocate (and free) it itself. On any error the layers not decoded are
 * filled with NaN (all-ones bytes), so a failure never looks like KV. */
kvs_err kvs_codec_decode(const void *bytes, size_t n, const kvs_codec_out *out, void *ws,
                         size_t ws_len);

/* Decodes segment g (layers [g*lpg, ...)) from seg[0, seg_len) = bytes
 * [info->seg_offset[g], info->seg_offset[g+1]) of the encoding. Verifies the
 * segment header against info and the payload checksum. On error, that
 * segment's layers of `out` are filled with NaN. */
kvs_err kvs_codec_decode_segment(const kvs_codec_info *info, uint32_t g, const void *seg,
                                 size_t seg_len, const kvs_codec_out *out, void *ws, size_t ws_len);

/* Checks every checksum of a full encoding without decoding (what a GPU
 * decode path runs on the host bytes first). */
kvs_err kvs_codec_verify(const void *bytes, size_t n, kvs_codec_info *info);

/* Encoded bits per KV element (8 * total bytes / (2 * L * T * H * D)). */
double kvs_codec_bits_per_elem(const kvs_codec_info *info);

/* ------------------------------------------------------ the raw profile */
/* KVS_CODEC_RAW (kvs_codec_format.h): uncompressed KV in per-(layer group,
 * KV head) segments behind a 40-byte descriptor (docs/codec-format.md, "Raw
 * profile"). Lossless; a decode may widen f16/bf16 to f32. */
typedef struct kvs_codec_raw_info {
  uint32_t n_layers, n_kv_heads, head_dim, dtype, n_tokens;
  uint32_t layers_per_group, n_groups;
  int legacy_magic; /* 1: the descriptor carried the old "KVSR" magic */
} kvs_codec_raw_info;

/* Layers per group: want (0 = 1) raised until 1 + groups * heads segments
 * fit in max_segments (or every layer is in one group). */
uint32_t kvs_codec_raw_lpg(const kvs_layout *layout, uint32_t want, uint32_t max_segments);
/* Bytes of the raw encoding of n_tokens (descriptor included); 0 when the
 * layout is invalid or the size overflows. */
size_t kvs_codec_raw_bytes(const kvs_layout *layout, uint32_t n_tokens);
/* Encodes kv (canonical layout [L][2][T][H][D], n_tokens) into out
 * (kvs_codec_raw_bytes() bytes) with lpg layers per group, and writes the end
 * offset of every segment into seg_end: [0] = the descriptor's end, then
 * 1 + g*H + h for segment (g, h); *n_segs = 1 + groups * heads <= seg_cap. */
kvs_err kvs_codec_raw_encode(const kvs_layout *layout, uint32_t n_tokens, uint32_t lpg,
                             const void *kv, uint8_t *out, size_t cap, uint64_t *seg_end,
                             uint32_t seg_cap, uint32_t *n_segs);
/* Checks a descriptor (len must be KVS_RAW_DESC_BYTES) against the layout
 * and token count the caller expects: KVS_EMAGIC, KVS_EVERSION, KVS_ELAYOUT
 * or KVS_ECORRUPT with a message. Descriptors with the old magic "KVSR" are
 * read as before (legacy_magic = 1). */
kvs_err kvs_codec_raw_parse(const uint8_t *desc, size_t len, const kvs_layout *layout,
                            uint32_t n_tokens, kvs_codec_raw_info *info);
/* Decodes heads [hb, he) of group g from bytes (exactly those segments, len
 * bytes) into out: [L][2][T][he-hb][D] in dtype (the descriptor's, or F32),
 * only group g's layers written; out_bytes must hold all L layers. */
kvs_err kvs_codec_raw_decode_group(const kvs_codec_raw_info *info, uint32_t g, uint32_t hb,
                                   uint32_t he, const uint8_t *bytes, size_t len, void *out,
                                   uint64_t out_bytes, uint32_t dtype);

#ifdef __cplusplus
}
#endif
#endif
