/* kvs_codec_format.h - the byte format of an encoded KV chunk, defined once.
 *
 * Plain C, also included by the CUDA kernels in gpu/codec/. Everything on
 * the wire is little-endian and read with explicit byte loads (kvs__rd*), so
 * the parser never depends on host alignment or byte order. docs/codec-format.md
 * is the prose version of this file with byte-offset tables; keep them in step.
 *
 *   chunk   = header (128 B) | directory (n_segments x u64) | segment 0 | segment 1 ...
 *   segment = segment header (32 B) | payload (payload_bytes, multiple of 8)
 *   payload = plane 0 | plane 1 | ...   planes of the group's layers, K before V:
 *             (first_layer K, first_layer V, first_layer+1 K, ...)
 *   plane   = u32 plane_bytes (incl. itself, multiple of 4) | profile-specific body
 * (lossless is the exception: its payload is one zstd frame, see below.)
 */
#ifndef KVS_CODEC_FORMAT_H
#define KVS_CODEC_FORMAT_H

#include <stdint.h>

#include "kvs_le.h"

#if defined(__CUDACC__)
#define KVS_FMT_FN __host__ __device__ __forceinline__
#else
#define KVS_FMT_FN static inline
#endif

#if defined(__cplusplus)
#define KVS_FMT_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define KVS_FMT_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* "KVSC" and "KVSG" read as little-endian u32. */
#define KVS_CODEC_MAGIC            0x4353564Bu
#define KVS_CODEC_SEG_MAGIC        0x4753564Bu
#define KVS_CODEC_VERSION          1u
#define KVS_CODEC_HEADER_BYTES     128u
#define KVS_CODEC_SEG_HEADER_BYTES 32u
#define KVS_CODEC_MAX_SEGMENTS     128u
/* Largest token count one chunk may carry (keeps every size in 64 bits and
 * every per-plane element count in 32 bits for the kernels). */
#define KVS_CODEC_MAX_TOKENS (1u << 20)

/* Profile ids on the wire (u8 at offset 8). Never renumbered. */
enum {
  KVS_CODEC_LOSSLESS = 1, /* byte-plane shuffle + zstd, bit-exact */
  KVS_CODEC_INT8 = 2,     /* symmetric int8, one f16 scale per (token, head) */
  KVS_CODEC_KIVI2 = 3,    /* KIVI 2-bit: K per-channel over token groups, V per-token groups */
  KVS_CODEC_KIVI4 = 4,    /* KIVI 4-bit, same layout */
  KVS_CODEC_FP4 = 5,      /* MXFP4: E2M1 codes, one E8M0 scale per 32 elements */
  KVS_CODEC_CACHEGEN = 6, /* CacheGen as published (per-token max, per-channel entropy tables) */
  KVS_CODEC_DENSE = 7,    /* ours: mean removal + Hadamard + uniform step + warp-interleaved rANS */
  KVS_CODEC_PROFILE_MAX = 7
};

/* -------------------------------------------------------- raw profile */
/* The raw profile (id 0; libkvstash's KVS_PROFILE_RAW): the KV uncompressed,
 * cut into one segment per (layer group g, KV head h) so that a head range
 * of a group is one contiguous run of segments. It is not a chunk (no chunk
 * header): a value is a 40-byte descriptor | segment (0,0) | (0,1) | ... |
 * (G-1,H-1); segment (g,h) holds, for each layer l of group g in order,
 * K_l[:, h, :] then V_l[:, h, :], each n_tokens x head_dim in the descriptor's
 * dtype. The reader knows the segment boundaries from elsewhere (the wire's
 * seg_end list); every size follows from the descriptor. */
#define KVS_CODEC_RAW 0u
#define KVS_RAW_MAGIC 0x5752564Bu /* "KVRW" as bytes 4B 56 52 57 */
/* "KVSR": descriptors written before session 6 (read, never written) */
#define KVS_RAW_MAGIC_V0   0x5253564Bu
#define KVS_RAW_VERSION    1u
#define KVS_RAW_DESC_BYTES 40u
enum {
  KVS_RD_MAGIC = 0,             /* u32 KVS_RAW_MAGIC */
  KVS_RD_VERSION = 4,           /* u32 KVS_RAW_VERSION */
  KVS_RD_N_LAYERS = 8,          /* u32 */
  KVS_RD_N_KV_HEADS = 12,       /* u32 */
  KVS_RD_HEAD_DIM = 16,         /* u32 */
  KVS_RD_DTYPE = 20,            /* u32 kvs_dtype (f16, bf16 or f32) */
  KVS_RD_N_TOKENS = 24,         /* u32 */
  KVS_RD_LAYERS_PER_GROUP = 28, /* u32 >= 1 */
  KVS_RD_N_GROUPS = 32,         /* u32 = ceil(n_layers / layers_per_group) */
  KVS_RD_RESERVED = 36          /* u32, 0 */
};

/* ---------------------------------------------------------- chunk header */
/* Byte offsets of the 128-byte chunk header. */
enum {
  KVS_CH_MAGIC = 0,             /* u32 KVS_CODEC_MAGIC */
  KVS_CH_VERSION = 4,           /* u16 */
  KVS_CH_HEADER_BYTES = 6,      /* u16, 128 */
  KVS_CH_PROFILE = 8,           /* u8 */
  KVS_CH_RESERVED0 = 9,         /* u8, 0 */
  KVS_CH_FLAGS = 10,            /* u16, 0 (no flag defined in version 1) */
  KVS_CH_N_LAYERS = 12,         /* u32  -- kvs_layout, field by field */
  KVS_CH_N_KV_HEADS = 16,       /* u32 */
  KVS_CH_HEAD_DIM = 20,         /* u32 */
  KVS_CH_DTYPE = 24,            /* u32 kvs_dtype of the encoder's input */
  KVS_CH_ROPE_TYPE = 28,        /* u32 */
  KVS_CH_ROPE_DIMS = 32,        /* u32 */
  KVS_CH_ROPE_THETA = 36,       /* f32 bits */
  KVS_CH_ROPE_SCALE = 40,       /* f32 bits */
  KVS_CH_N_TOKENS = 44,         /* u32 */
  KVS_CH_LAYERS_PER_GROUP = 48, /* u32 */
  KVS_CH_N_SEGMENTS = 52,       /* u32 = ceil(n_layers / layers_per_group) */
  KVS_CH_PARAMS = 56,           /* 32 bytes of profile parameters, see below */
  KVS_CH_TOTAL_BYTES = 88,      /* u64: header + directory + all segments */
  KVS_CH_RESERVED1 = 96,        /* 24 bytes, 0 */
  KVS_CH_CHECKSUM = 120         /* u64 XXH3-64 of bytes [0,120) followed by the directory */
};

/* Profile parameters, 32 bytes at KVS_CH_PARAMS (offsets relative to it). */
enum {
  KVS_CP_K_BITS = 0, /* u8: kivi 2|4; fp4 4; int8 8; others 0 */
  KVS_CP_V_BITS = 1, /* u8 */
  KVS_CP_GROUP = 2,  /* u16: kivi group size; fp4 block (32); dense/cachegen: rANS steps per lane */
  KVS_CP_K_STEP = 4, /* f32: dense K step relative to the plane's RMS */
  KVS_CP_V_STEP = 8, /* f32: dense V step relative to the plane's RMS */
  KVS_CP_FINE_LAYERS =
      12, /* u16: dense: layers [0,n) use step*fine_scale; cachegen: key_first_layers */
  KVS_CP_MID_LAYERS = 14,    /* u16: cachegen: key_second_layers */
  KVS_CP_FINE_SCALE = 16,    /* f32: dense */
  KVS_CP_V_FINE_LAYERS = 20, /* u16: cachegen: value_first_layers */
  KVS_CP_ZSTD_LEVEL = 22,    /* i16: lossless */
  KVS_CP_BINS = 24,          /* 4 x u8: cachegen key_first, key_second, key_third, value_first bins;
                                value_second bins at KVS_CP_BINS+4 */
  KVS_CP_V_BINS2 = 28,       /* u8 */
  KVS_CP_K_FLAGS = 29,       /* u8: dense K plane options (KVS_DENSE_*) */
  KVS_CP_V_FLAGS = 30,       /* u8: dense V plane options */
  KVS_CP_RESERVED = 31       /* 1 byte, 0 */
};

/* -------------------------------------------------------- segment header */
enum {
  KVS_SH_MAGIC = 0,       /* u32 KVS_CODEC_SEG_MAGIC */
  KVS_SH_INDEX = 4,       /* u32 segment index g */
  KVS_SH_FIRST_LAYER = 8, /* u32 = g * layers_per_group */
  KVS_SH_N_LAYERS = 12,   /* u32 */
  KVS_SH_PAYLOAD = 16,    /* u64 payload bytes (multiple of 8) */
  KVS_SH_CHECKSUM = 24    /* u64 XXH3-64 of the payload */
};

/* ------------------------------------------------------ rANS parameters */
/* Warp-interleaved rANS (dense and cachegen-ref): 32 lanes share one stream
 * of u16 words; at step k lane j codes symbol k*32+j of its block; after
 * decoding, lanes whose state fell below 2^16 read one word each, in lane
 * order. Frequencies are normalised to 2^12. A block is
 *   u32 n_words | u32 state[32] | u16 word[n_words] | pad to 4 bytes
 * and every lane ends (decoder side) in state 2^16 exactly: a check. */
#define KVS_RANS_LANES      32u
#define KVS_RANS_PROB_BITS  12u
#define KVS_RANS_PROB_SCALE (1u << KVS_RANS_PROB_BITS)
#define KVS_RANS_L          (1u << 16)
#define KVS_RANS_BLOCK_HDR  (4u + 4u * KVS_RANS_LANES)
/* Decoder lookup entry of slot cum[s]+k (not on the wire; shared by the CPU
 * and GPU decoders): symbol | (freq-1) << 8 | k << 20. */
#define KVS_RANS_LUT_ENTRY(s, f, k)                                                                \
  ((uint32_t)(s) | ((uint32_t)((f)-1u) << 8) | ((uint32_t)(k) << 20))
#define KVS_RANS_LUT_SYM(e)  ((e)&0xffu)
#define KVS_RANS_LUT_FREQ(e) ((((e) >> 8) & 0xfffu) + 1u)
#define KVS_RANS_LUT_BIAS(e) ((e) >> 20)

/* ---------------------------------------------------- plane bodies (v1) */
/* int8:  f16 scale[T][H] | i8 code[T][H][D] | pad4
 * kivi:  K: (f16 scale, f16 min)[ceil(T/G)][H][D] ; V: (f16 scale, f16 min)[T][H][ceil(D/G)]
 *        | codes, b bits each, canonical order [T][H][D], LSB-first | pad4
 * fp4:   u8 e8m0[T][H][ceil(D/32)] | u8 nibbles[ceil(T*H*D/2)] (element 2i low nibble) | pad4
 * cachegen: u16 n_sym | u16 0 | f16 tokmax[T] (pad4) | u16 freq[H*D][n_sym] (pad4)
 *        | u32 block_off[ceil(H*D/32)] (from plane start) | rANS blocks; lane j of block b
 *        codes channel c = 32b+j over tokens t = 0..T-1 (steps = T).
 * dense: u8 n_sym | i8 qmin | u8 flags (KVS_DENSE_*) | u8 0 | f32 step
 *        | u16 freq[n_sym] (pad4) | f16 mean[H][D] (pad4)
 *        | f16 chan_scale[H][D] (pad4, when KVS_DENSE_CHAN)
 *        | f16 tok_scale[T] (pad4, when KVS_DENSE_TOKEN)
 *        | sink[H][D] token 0 verbatim in the input dtype (pad4, when KVS_DENSE_SINK)
 *        | u32 n_exc | u32 exc_index[n_exc] | exc_value[n_exc] in the input dtype (pad4)
 *          (elements clipped at +-127 steps, kept exact; index = (h*T + t)*D + d,
 *          strictly increasing, n_exc <= T*H*D/16)
 *        | u32 nblk_per_head
 *        | u32 block_off[H][nblk_per_head] (from plane start) | rANS blocks.
 *        Head h's symbols are its rows in order [T][D]; block i covers symbols
 *        [i*32*S, (i+1)*32*S) of that head, S = KVS_CP_GROUP steps.
 *        value = inverse_hadamard(q * step) * tok_scale[t] * chan_scale[h][d] + mean[h][d],
 *        q = symbol + qmin (absent scales are 1); with KVS_DENSE_SINK token 0 is the
 *        stored row (its symbols are coded as 0 and ignored). */
#define KVS_DENSE_ROTATED   1u /* rows rotated by the Walsh-Hadamard transform */
#define KVS_DENSE_CHAN      2u /* channels divided by their RMS over the tokens */
#define KVS_DENSE_TOKEN     4u /* tokens divided by their RMS over heads x head_dim */
#define KVS_DENSE_SINK      8u /* token 0 (the attention sink) kept exact, out of the statistics */
#define KVS_DENSE_FLAGS_ALL 15u
#define KVS_FP4_BLOCK       32u

/* Explicit LE byte loads/stores (kvs__rd16/32/64, kvs__wr16/32/64): core/kvs_le.h. */

/* E2M1 magnitudes of fp4 codes 0..7 (bit 3 is the sign). */
#define KVS_FP4_VALUES                                                                             \
  { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f }

/* Sizes the format relies on (the offsets above are the layout). */
KVS_FMT_STATIC_ASSERT(KVS_CH_CHECKSUM + 8 == KVS_CODEC_HEADER_BYTES, "chunk header is 128 bytes");
KVS_FMT_STATIC_ASSERT(KVS_CH_PARAMS + 32 == KVS_CH_TOTAL_BYTES, "params are 32 bytes");
KVS_FMT_STATIC_ASSERT(KVS_SH_CHECKSUM + 8 == KVS_CODEC_SEG_HEADER_BYTES,
                      "segment header is 32 bytes");
KVS_FMT_STATIC_ASSERT(KVS_RANS_BLOCK_HDR == 132, "rANS block header is 132 bytes");
KVS_FMT_STATIC_ASSERT(KVS_RD_RESERVED + 4 == KVS_RAW_DESC_BYTES, "raw descriptor is 40 bytes");
KVS_FMT_STATIC_ASSERT(sizeof(uint16_t) == 2 && sizeof(float) == 4, "wire scalar sizes");

#endif
