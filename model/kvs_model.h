/* kvs_model.h - the reference engine of kvstash: a GGUF v3 reader, the
 * dequantizers, the GPT-2-style byte-level BPE tokenizer of the GGUF's own
 * vocabulary, and a Llama-family forward pass (CPU, OpenBLAS) whose KV cache
 * is kept in kvstash's canonical layout (fp16, per layer K then V, each
 * (tokens, kv_heads, head_dim), K post-RoPE). It implements the engine ops of
 * blend/kvs_engine.h (kvs_model_engine() in engines/kvs_engines.h).
 *
 * Threading: a kvs_gguf and a kvs_tok are read-only after creation and may be
 * shared between threads; a kvs_model and its sequences are used by one
 * thread at a time (scratch buffers live in the model). */
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================= GGUF */
/* GGUF value types (gguf.h, GGUF_TYPE_*). */
typedef enum {
  KVS_GGUF_U8 = 0,
  KVS_GGUF_I8 = 1,
  KVS_GGUF_U16 = 2,
  KVS_GGUF_I16 = 3,
  KVS_GGUF_U32 = 4,
  KVS_GGUF_I32 = 5,
  KVS_GGUF_F32 = 6,
  KVS_GGUF_BOOL = 7,
  KVS_GGUF_STRING = 8,
  KVS_GGUF_ARRAY = 9,
  KVS_GGUF_U64 = 10,
  KVS_GGUF_I64 = 11,
  KVS_GGUF_F64 = 12
} kvs_gguf_type;

/* ggml tensor types we can read (ggml.h, GGML_TYPE_*). Others are listed in
 * the tensor table but kvs_dequant refuses them with KVS_ENOTSUP. */
typedef enum {
  KVS_GGML_F32 = 0,
  KVS_GGML_F16 = 1,
  KVS_GGML_Q4_0 = 2,
  KVS_GGML_Q4_1 = 3,
  KVS_GGML_Q5_0 = 6,
  KVS_GGML_Q5_1 = 7,
  KVS_GGML_Q8_0 = 8,
  KVS_GGML_Q4_K = 12, /* super-blocks of 256 */
  KVS_GGML_Q5_K = 13,
  KVS_GGML_Q6_K = 14,
  KVS_GGML_BF16 = 30
} kvs_ggml_type;

#define KVS_GGUF_MAX_DIMS 4
/* Limits that keep a hostile header from making us allocate without bound. */
#define KVS_GGUF_MAX_TENSORS (1u << 16)
#define KVS_GGUF_MAX_KV      (1u << 16)

typedef struct kvs_gguf kvs_gguf;

typedef struct kvs_gguf_tensor {
  const char *name; /* NOT NUL-terminated: name_len bytes inside the file map */
  uint32_t name_len;
  uint32_t type; /* ggml type number */
  uint32_t n_dims;
  uint64_t ne[KVS_GGUF_MAX_DIMS]; /* ne[0] is the contiguous dim; unused dims are 1 */
  uint64_t n_elems;
  uint64_t n_bytes; /* 0 when the type is unknown to us (then data is NULL) */
  const void *data; /* inside the map, valid until kvs_gguf_free */
} kvs_gguf_tensor;

/* Opens and validates a GGUF (v2 or v3, little-endian) by mmap. Every string,
 * array, tensor shape and data range is checked against the file size;
 * failures return KVS_EMAGIC, KVS_EVERSION, KVS_ETRUNC, KVS_ECORRUPT or
 * KVS_ETOOBIG, never crash. *out is owned by the caller (kvs_gguf_free). */
kvs_err kvs_gguf_open(const char *path, kvs_gguf **out);
/* Same over caller memory, which must outlive the handle (not copied). */
kvs_err kvs_gguf_open_mem(const void *data, size_t size, kvs_gguf **out);
void kvs_gguf_free(kvs_gguf *g);
/* The whole file as mapped (for hashing). */
const void *kvs_gguf_bytes(const kvs_gguf *g, size_t *size);
uint32_t kvs_gguf_version(const kvs_gguf *g);

/* Metadata. Keys are looked up by exact name; -1 when absent. */
int64_t kvs_gguf_find_kv(const kvs_gguf *g, const char *key);
uint64_t kvs_gguf_kv_count(const kvs_gguf *g);
/* Key i as a pointer into the map (not NUL-terminated) and its length. */
const char *kvs_gguf_kv_key(const kvs_gguf *g, uint64_t i, uint32_t *len);
uint32_t kvs_gguf_kv_type(const kvs_gguf *g, uint64_t i);
/* Typed getters: KVS_ENOENT when absent, KVS_EINVAL on a type mismatch.
 * Integers of any integer type convert when the value fits. */
kvs_err kvs_gguf_get_u64(const kvs_gguf *g, const char *key, uint64_t *out);
kvs_err kvs_gguf_get_u32(const kvs_gguf *g, const char *key, uint32_t *out);
kvs_err kvs_gguf_get_f32(const kvs_gguf *g, const char *key, float *out);
kvs_err kvs_gguf_get_bool(const kvs_gguf *g, const char *key, int *out);
/* String value: pointer into the map (not NUL-terminated) + length. */
kvs_err kvs_gguf_get_str(const kvs_gguf *g, const char *key, const char **s, uint64_t *len);
/* Array metadata: element type and count. */
kvs_err kvs_gguf_get_arr(const kvs_gguf *g, const char *key, uint32_t *elem_type, uint64_t *n);
/* Copy up to cap elements: _f32 from an f32 array, _i32 from any integer
 * array (converted). KVS_EINVAL on another element type. */
kvs_err kvs_gguf_get_arr_f32(const kvs_gguf *g, const char *key, float *out, uint64_t cap);
kvs_err kvs_gguf_get_arr_i32(const kvs_gguf *g, const char *key, int32_t *out, uint64_t cap);
/* String array: ptrs[i]/lens[i] point into the map; caller gives cap slots. */
kvs_err kvs_gguf_get_arr_str(const kvs_gguf *g, const char *key, const char **ptrs, uint32_t *lens,
                             uint64_t cap);

uint64_t kvs_gguf_tensor_count(const kvs_gguf *g);
const kvs_gguf_tensor *kvs_gguf_tensor_at(const kvs_gguf *g, uint64_t i);
/* NULL when absent. Valid until kvs_gguf_free. */
const kvs_gguf_tensor *kvs_gguf_find_tensor(const kvs_gguf *g, const char *name);

/* ============================================================ dequant */
/* Elements per block and bytes per block of a ggml type; 0 when unsupported. */
uint32_t kvs_ggml_block_elems(uint32_t type);
uint32_t kvs_ggml_block_bytes(uint32_t type);
const char *kvs_ggml_type_name(uint32_t type);
/* Bytes of n elements of `type` (n a multiple of the block size), 0 otherwise. */
uint64_t kvs_ggml_row_bytes(uint32_t type, uint64_t n);
/* Dequantizes n elements (a multiple of the block size) from src (exactly
 * kvs_ggml_row_bytes(type, n) bytes) into dst[n]. KVS_ENOTSUP for other
 * types, KVS_EINVAL when n is not a whole number of blocks. */
kvs_err kvs_dequant(uint32_t type, const void *src, float *dst, uint64_t n);

/* ========================================================== tokenizer */
typedef struct kvs_tok kvs_tok;
typedef int32_t kvs_token;

/* Builds the tokenizer from tokenizer.ggml.* (model "gpt2": byte-level BPE;
 * pre-tokenizers "smollm", "gpt2", "starcoder", "refact" share one split;
 * "qwen2" has its own, llama.cpp's).
 * Copies what it needs: the GGUF may be freed afterwards. */
kvs_err kvs_tok_create(const kvs_gguf *g, kvs_tok **out);
void kvs_tok_free(kvs_tok *t);
uint32_t kvs_tok_n_vocab(const kvs_tok *t);
kvs_token kvs_tok_bos(const kvs_tok *t); /* -1 when none */
kvs_token kvs_tok_eos(const kvs_tok *t);
/* Token id of a special token's exact text (e.g. "<|im_end|>"), -1 if none. */
kvs_token kvs_tok_find(const kvs_tok *t, const char *text);

/* Tokenizes text[len]. With parse_special, control tokens written in the text
 * (e.g. "<|im_start|>") become their ids; otherwise they are plain text.
 * With add_bos, the BOS token leads when the vocabulary says to add it.
 * Writes at most cap ids into out; *n_out gets the full count, and
 * KVS_ERANGE is returned when cap was too small (call again with *n_out).
 * Never more than kvs_tok_bound(len) ids (BOS included). */
kvs_err kvs_tok_encode(const kvs_tok *t, const char *text, size_t len, int parse_special,
                       int add_bos, kvs_token *out, size_t cap, size_t *n_out);
size_t kvs_tok_bound(size_t text_len);
/* Text of ids (special tokens as their text). Writes at most cap bytes + NUL;
 * *n_out gets the full byte count (KVS_ERANGE when cap was short). */
kvs_err kvs_tok_decode(const kvs_tok *t, const kvs_token *ids, size_t n, char *out, size_t cap,
                       size_t *n_out);
/* Bytes of one token (pointer into the tokenizer, valid until _free). */
const char *kvs_tok_piece(const kvs_tok *t, kvs_token id, size_t *len);

/* ChatML: "<|im_start|>role\ncontent<|im_end|>\n" per message, then
 * "<|im_start|>assistant\n" when add_generation_prompt. Writes into out[cap]
 * with NUL; *n_out is the full length (KVS_ERANGE when short). */
typedef struct kvs_chat_msg {
  const char *role;
  const char *content;
} kvs_chat_msg;
kvs_err kvs_chat_format(const kvs_chat_msg *msgs, size_t n, int add_generation_prompt, char *out,
                        size_t cap, size_t *n_out);

/* ============================================================== model */
typedef struct kvs_model_cfg {
  uint32_t n_vocab, n_embd, n_layers, n_heads, n_kv_heads, head_dim, n_ff, n_ctx_train;
  float rope_theta, norm_eps;
  uint32_t rope_type; /* kvs_rope_type: KVS_ROPE_NORM (llama), KVS_ROPE_NEOX (qwen2) */
  uint32_t qkv_bias;  /* 1: Q, K and V projections add a bias (qwen2) */
} kvs_model_cfg;

typedef struct kvs_model kvs_model;
typedef struct kvs_seq kvs_seq;

/* Loads a GGUF of architecture "llama" (NORM RoPE) or "qwen2" (Llama plus
 * biases on Q, K and V, NEOX RoPE; output tied or not): weights dequantized
 * to f32 (the CPU path runs f32 sgemm), the tokenizer, and the model id
 * (kvs_model_id_compute over the config and kvs_hash128 of the whole file).
 * Host memory: about 6 bytes per parameter (f32 + fp16 copies).
 * *out owned by the caller. */
kvs_err kvs_model_load(const char *gguf_path, kvs_model **out);
/* Fills *out with the Llama-3-8B shape (4096 embd, 32 layers, 32 heads, 8 KV
 * heads, head_dim 128, 14336 ff, vocab 128256, ctx 8192, theta 500000, eps
 * 1e-5): the one definition of it. */
void kvs_model_cfg_llama3_8b(kvs_model_cfg *out);
/* A Llama-3-8B-shaped model (4096 embd, 32 layers, 32 heads, 8 KV heads,
 * 14336 ff, vocab 128256, theta 500000) with seeded random weights, or any
 * cfg given (NULL = the 8B shape). No tokenizer. With host_weights = 0 no f32
 * weight copy is made on the host (for GPU-only speed runs: 8B in f32 would
 * be 32 GB); CPU forward calls then return KVS_ENOTSUP. */
kvs_err kvs_model_create_random(const kvs_model_cfg *cfg, uint64_t seed, int host_weights,
                                kvs_model **out);
void kvs_model_free(kvs_model *m);
const kvs_model_cfg *kvs_model_config(const kvs_model *m);
/* Layout of the KV this model produces (fp16 canonical). */
kvs_layout kvs_model_layout(const kvs_model *m);
const kvs_model_id *kvs_model_get_id(const kvs_model *m);
/* NULL for random models. Owned by the model. */
const kvs_tok *kvs_model_tok(const kvs_model *m);
/* The GGUF this model was loaded from (NULL for random models). */
const kvs_gguf *kvs_model_gguf(const kvs_model *m);

/* A sequence: a KV cache of up to `capacity` tokens in the canonical layout.
 * Owned by the caller; free it before its model. */
kvs_err kvs_seq_create(kvs_model *m, uint32_t capacity, kvs_seq **out);
void kvs_seq_free(kvs_seq *s);
uint32_t kvs_seq_len(const kvs_seq *s);
uint32_t kvs_seq_capacity(const kvs_seq *s);
/* Forgets tokens >= n (n <= len). */
kvs_err kvs_seq_truncate(kvs_seq *s, uint32_t n);
/* K (or V) plane of `layer`: (capacity, kv_heads, head_dim) fp16, valid
 * until kvs_seq_free. Tokens >= len hold garbage. */
kvs_f16 *kvs_seq_k(kvs_seq *s, uint32_t layer);
kvs_f16 *kvs_seq_v(kvs_seq *s, uint32_t layer);

/* Runs n new tokens at positions len..len+n-1 through every layer on top of
 * whatever KV the sequence holds (computed or injected), appends their KV,
 * and writes logits: of the last token into logits[n_vocab] or, with
 * all_logits, of every token into logits[n][n_vocab] (logits may be NULL). */
kvs_err kvs_model_prefill(kvs_model *m, kvs_seq *s, const kvs_token *tokens, uint32_t n,
                          int all_logits, float *logits);
/* Greedy: argmax of logits[n_vocab] (first maximum). */
kvs_token kvs_argmax(const float *logits, uint32_t n);
/* Prefills prompt, then greedily generates up to max_new tokens (stopping
 * after EOS or <|im_end|>) into out; *n_out gets the count. */
kvs_err kvs_model_generate(kvs_model *m, kvs_seq *s, const kvs_token *prompt, uint32_t n_prompt,
                           uint32_t max_new, kvs_token *out, uint32_t *n_out);

/* Building blocks (the engine ops, f32 hidden states (n, n_embd)): */
kvs_err kvs_model_embed(kvs_model *m, const kvs_token *tokens, uint32_t n, float *hidden);
/* One layer for n tokens at cache slots idx[n] (strictly increasing not
 * required, distinct required) with RoPE positions pos[n] (NULL: pos = idx):
 * computes their K/V, writes them into the cache at idx, attends each token i
 * over slots 0..idx[i] and replaces hidden (n, n_embd) with the layer output.
 * Slots <= max idx must hold valid KV (len grows to max idx + 1). */
kvs_err kvs_model_layer(kvs_model *m, kvs_seq *s, uint32_t layer, uint32_t n, const uint32_t *idx,
                        const uint32_t *pos, float *hidden);
/* Fresh K/V of `layer` for hidden states entering it, at positions pos[n],
 * into k_out/v_out (n, kv_heads, head_dim) fp16; no cache is touched. */
kvs_err kvs_model_layer_kv(kvs_model *m, uint32_t layer, uint32_t n, const uint32_t *pos,
                           const float *hidden, kvs_f16 *k_out, kvs_f16 *v_out);
/* Final RMSNorm + output head: logits (n, n_vocab) from hidden (n, n_embd). */
kvs_err kvs_model_logits(kvs_model *m, uint32_t n, const float *hidden, float *logits);

/* Measured prefill cost: seconds per token over the prefills run so far
 * (0 when none ran yet). */
double kvs_model_prefill_sec_per_token(const kvs_model *m);

/* Sets a sequence's length (n <= capacity) after its KV was written through
 * kvs_seq_k/kvs_seq_v (the engine adapter's kv_write). */
kvs_err kvs_seq_set_len(kvs_seq *s, uint32_t n);
/* The engine ops over this model: kvs_model_engine in engines/kvs_engines.h. */

#ifdef __cplusplus
}
#endif
#endif
