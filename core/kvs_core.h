/* kvs_core.h - the lowest layer of kvstash: errors, logging, the KV layout
 * descriptor, the 128-bit model fingerprint, chunk keys and checksums.
 *
 * Every component depends on this header and on nothing above it. Pure C11,
 * no global state except the log level. */
#ifndef KVS_CORE_H
#define KVS_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs_err.h"
#include "kvs_half.h"

#ifdef __cplusplus
extern "C" {
#endif
KVS_API_BEGIN

/* ---------------------------------------------------------------- version */
/* The library's version, "MAJOR.MINOR.PATCH" (the CMake project version;
 * kvs_version.h has it as KVS_VERSION_STRING for compile time). Static. */
const char *kvs_version(void);

/* ---------------------------------------------------------------- logging */
/* One line per event on stderr: `ts=... level=info comp=codec msg="..." k=v`.
 * The level starts from $KVS_LOG (error|warn|info|debug|trace, default warn
 * so that tests and tools stay quiet). Thread-safe: a line is one write(2). */
typedef enum {
  KVS_LOG_ERROR = 0,
  KVS_LOG_WARN = 1,
  KVS_LOG_INFO = 2,
  KVS_LOG_DEBUG = 3,
  KVS_LOG_TRACE = 4
} kvs_log_level;

void kvs_log_set_level(int level);
int kvs_log_get_level(void);
/* Parses "error".."trace" or a digit; returns -1 when unknown. */
int kvs_log_parse_level(const char *s);
/* fmt produces the key=value tail after msg; msg is quoted for the caller. */
void kvs_log(int level, const char *comp, const char *msg, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
void kvs_logv(int level, const char *comp, const char *msg, const char *fmt, va_list ap);
#define KVS_LOG_ON(level)        ((level) <= kvs_log_get_level())
#define KVS_LOGE(comp, msg, ...) kvs_log(KVS_LOG_ERROR, comp, msg, __VA_ARGS__)
#define KVS_LOGW(comp, msg, ...)                                                                   \
  do {                                                                                             \
    if (KVS_LOG_ON(KVS_LOG_WARN)) kvs_log(KVS_LOG_WARN, comp, msg, __VA_ARGS__);                   \
  } while (0)
#define KVS_LOGI(comp, msg, ...)                                                                   \
  do {                                                                                             \
    if (KVS_LOG_ON(KVS_LOG_INFO)) kvs_log(KVS_LOG_INFO, comp, msg, __VA_ARGS__);                   \
  } while (0)
#define KVS_LOGD(comp, msg, ...)                                                                   \
  do {                                                                                             \
    if (KVS_LOG_ON(KVS_LOG_DEBUG)) kvs_log(KVS_LOG_DEBUG, comp, msg, __VA_ARGS__);                 \
  } while (0)

/* ------------------------------------------------------------- KV layout */
typedef enum { KVS_DTYPE_F16 = 1, KVS_DTYPE_BF16 = 2, KVS_DTYPE_F32 = 3 } kvs_dtype;

/* RoPE pair convention. NORM rotates adjacent pairs (x[2i], x[2i+1]) as
 * llama.cpp does for the llama architecture; NEOX rotates (x[i], x[i+d/2]). */
typedef enum { KVS_ROPE_NORM = 0, KVS_ROPE_NEOX = 2 } kvs_rope_type;

/* RoPE frequency scaling. Each gives frequency i (i < rope_dims/2) of base
 * b_i = theta^(-2i/rope_dims) an effective frequency f_i (blend/rope.c):
 *   NONE (linear): f_i = rope_freq_scale * b_i
 *   YARN (llama.cpp's, ext_factor 1, attn_factor 1): f_i = b_i * ((1 - r_i) * rope_freq_scale +
 * r_i), r_i the ramp between the correction dims of beta_fast = rope_scale_a and beta_slow =
 * rope_scale_b over rope_orig_ctx; K and Q are also multiplied by mscale = 1 + 0.1 ln(1 /
 * rope_freq_scale) LLAMA3 (Llama 3.1 "llama3"): factor = 1 / rope_freq_scale, low_freq_factor =
 * rope_scale_a, high_freq_factor = rope_scale_b, original_max_position_embeddings = rope_orig_ctx;
 *        wavelengths below orig/high keep b_i, above orig/low get b_i / factor, between
 *        a smooth mix.
 * Position p is rotated by p * f_i in every case, so moving K by delta is a
 * rotation by delta * f_i. The codec header and the wire metadata carry only
 * NONE layouts so far (their encoders refuse others with KVS_ENOTSUP; their
 * readers set the fields to NONE / 0). */
typedef enum {
  KVS_ROPE_SCALING_NONE = 0,
  KVS_ROPE_SCALING_YARN = 1,
  KVS_ROPE_SCALING_LLAMA3 = 2
} kvs_rope_scaling;

/* What one token's KV looks like. The canonical chunk layout, for a chunk of
 * T tokens, is layer-major with K before V:
 *   for l in layers: K_l (T, n_kv_heads, head_dim), then V_l (same shape)
 * each element of `dtype`. Byte offset of K_l = 2*l*T*H*D*esize, of V_l =
 * (2*l+1)*T*H*D*esize. K is stored post-RoPE at the positions the key kind
 * says (prefix: absolute; content: as if the chunk started at 0). */
typedef struct kvs_layout {
  uint32_t n_layers;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  uint32_t dtype;        /* kvs_dtype */
  uint32_t rope_type;    /* kvs_rope_type */
  uint32_t rope_dims;    /* rotated dims per head, even, <= head_dim */
  float rope_theta;      /* base frequency, e.g. 10000 or 100000 */
  float rope_freq_scale; /* linear position scale, 1.0 when unscaled */
  uint32_t rope_scaling; /* kvs_rope_scaling; 0 (NONE) unless a model says otherwise */
  float rope_orig_ctx;   /* YARN / LLAMA3: the original training context */
  float rope_scale_a;    /* YARN: beta_fast (32); LLAMA3: low_freq_factor (1) */
  float rope_scale_b;    /* YARN: beta_slow (1); LLAMA3: high_freq_factor (4) */
} kvs_layout;

#define KVS_MAX_LAYERS   1024u
#define KVS_MAX_KV_HEADS 1024u
#define KVS_MAX_HEAD_DIM 1024u

/* KVS_OK when every field is in range; KVS_ELAYOUT (with a logged reason) otherwise. */
kvs_err kvs_layout_validate(const kvs_layout *l);
size_t kvs_dtype_size(uint32_t dtype); /* 0 when unknown */
const char *kvs_dtype_name(uint32_t dtype);
/* Bytes of K+V of one token over all layers. */
uint64_t kvs_layout_token_bytes(const kvs_layout *l);
/* Elements of one layer's K (or V) for n tokens: n * heads * head_dim. */
uint64_t kvs_layout_plane_elems(const kvs_layout *l, uint64_t n_tokens);
/* 1 when both describe the same KV (every field equal). */
int kvs_layout_equal(const kvs_layout *a, const kvs_layout *b);

/* ------------------------------------------------------ 128-bit hashing */
typedef struct kvs_hash128 {
  uint8_t b[16];
} kvs_hash128;

/* XXH3-128 of a buffer, and a streaming form for large inputs (a model file). */
kvs_hash128 kvs_hash128_buf(const void *p, size_t n);
typedef struct kvs_hasher kvs_hasher;
kvs_hasher *kvs_hasher_create(void); /* NULL on out of memory */
void kvs_hasher_update(kvs_hasher *h, const void *p, size_t n);
kvs_hash128 kvs_hasher_digest(const kvs_hasher *h);
void kvs_hasher_free(kvs_hasher *h);
int kvs_hash128_equal(const kvs_hash128 *a, const kvs_hash128 *b);
/* Lower-case hex, 32 chars + NUL into out[33]. */
void kvs_hash128_hex(const kvs_hash128 *h, char out[33]);
kvs_err kvs_hash128_from_hex(const char *hex, kvs_hash128 *out);

/* Checksum of encoded bytes (XXH3-64). */
uint64_t kvs_checksum64(const void *p, size_t n);
/* Copies src to dst in pieces of `piece` bytes (0: 256 KiB) and returns
 * kvs_checksum64 of the bytes as written to dst (each piece is hashed from
 * dst while it is still in cache); after each piece, on_piece (may be NULL)
 * is told its offset and length, e.g. to start a DMA of it. */
uint64_t kvs_checksum64_copy(void *dst, const void *src, size_t n, size_t piece,
                             void (*on_piece)(void *arg, size_t off, size_t len), void *arg);

/* ---------------------------------------------------- model fingerprint */
/* A KV cache is valid only for the exact model that made it. The model id
 * hashes the architecture name, the layout (which carries RoPE settings), the
 * shape numbers that change KV without showing in the layout, and the content
 * hash of the weights file (which covers the tokenizer in a GGUF). */
typedef kvs_hash128 kvs_model_id;

typedef struct kvs_model_desc {
  const char *arch;  /* "llama" */
  kvs_layout layout; /* of the KV it produces */
  uint32_t n_embd, n_heads, n_ff, n_vocab;
  float norm_eps;
  kvs_hash128 weights; /* content hash of the weights (and tokenizer) */
} kvs_model_desc;

kvs_err kvs_model_id_compute(const kvs_model_desc *d, kvs_model_id *out);

/* ------------------------------------------------------------ chunk keys */
/* Keys are computed the same way by clients and the server (which then salts
 * them with a per-tenant secret before they reach storage).
 *   content key = H("C", model id, tokens)           position-independent
 *   prefix key  = H("P", model id, parent key, tokens) hash chain; the first
 *                 chunk's parent is all zeros
 * Tokens are hashed as little-endian uint32. */
typedef kvs_hash128 kvs_key;
kvs_key kvs_key_content(const kvs_model_id *model, const int32_t *tokens, size_t n);
kvs_key kvs_key_prefix(const kvs_model_id *model, const kvs_key *parent, const int32_t *tokens,
                       size_t n);

/* ------------------------------------------------------------- misc */
/* Monotonic clock in nanoseconds. */
uint64_t kvs_now_ns(void);
/* Real-time clock in milliseconds since the epoch. */
uint64_t kvs_wall_ms(void);

KVS_API_END
#ifdef __cplusplus
}
#endif
#endif
