/* kvs_llama.h - kvstash attached to llama.cpp (libllama 0.3.16, pinned by
 * tools/llamacpp/build.sh) through its public C API, without patching it.
 *
 *   kvs_llama_opts o;
 *   kvs_llama_opts_init(&o);
 *   o.client = client;            (NULL or a dead kvstashd: no reuse, no error)
 *   o.gguf_path = path;           (hashed into the model id)
 *   o.flash_attn = cparams.flash_attn;
 *   kvs_llama *a;
 *   kvs_llama_create(model, ctx, &o, &a);
 *   kvs_llama_prefill(a, 0, ids, n, &st);   -> logits of ids[n-1] are ready
 *   ...generate with llama_decode as usual...
 *   kvs_llama_store(a, 0, ids, n_all);      -> full chunks put, off the TTFT path
 *   kvs_llama_free(a);
 *
 * Two kinds of reuse:
 *  - multi-turn prefix: kvs_llama_prefill looks up the longest cached prefix
 *    (fixed-size prefix chunks, kvs_chunk_prefix keys), restores it into the
 *    sequence with llama_state_seq_set_data and decodes only the rest;
 *  - RAG: kvs_llama_prefill_rag restores content-keyed chunks (KV computed by
 *    llama.cpp for each passage alone at positions 0..n-1) at their offsets
 *    with llama.cpp's own K shift (llama_memory_seq_add), optionally
 *    re-decodes the first tokens of each chunk, then decodes the rest.
 *
 * Failures of the store (kvstashd down, wrong model, corrupt entry, a state
 * that does not parse) are logged (comp=llama) and never fatal: the adapter
 * decodes what it could not restore. Only llama.cpp's own decode failing is
 * returned as an error.
 *
 * Threads: one kvs_llama per llama_context, used by one thread at a time.
 * The KV dtype must be F16 (cparams.type_k = type_v = GGML_TYPE_F16, the
 * default); anything else is refused with KVS_ENOTSUP at the first state. */
#ifndef KVS_LLAMA_H
#define KVS_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "kvstash.h"

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;
struct llama_context;

/* The llama.cpp build this adapter was compiled against (from its CMake
 * package version and the sdist version), e.g. "llama-cpp-python 0.3.16,
 * llama.cpp 0.0.6153". Part of the model id. Static string. */
const char *kvs_llama_build_version(void);

/* ------------------------------------------------ sequence state format */
/* What llama_state_seq_get_data writes for one sequence of a unified KV cache
 * (llama-kv-cache-unified.cpp state_write, LLAMA_STATE_SEQ_VERSION 2), all
 * little-endian:
 *   u32 n_stream
 *   per stream s: u32 cell_count; when > 0:
 *     per cell: i32 pos, u32 n_seq_id (= 1), i32 seq_id
 *     u32 v_trans, u32 n_layer
 *     per layer: i32 k_type (1 = F16), u64 k_row_bytes (= H*D*2), cells x row
 *     v_trans == 0: per layer: i32 v_type, u64 v_row_bytes, cells x row
 *     v_trans == 1: per layer: i32 v_type, u32 v_el_bytes (= 2),
 *                   u32 n_embd_v (= H*D), then n_embd_v rows of cells x 2 bytes
 * Exactly one stream may hold cells. Cells may come in any position order;
 * their positions must be pos0 .. pos0+n_tokens-1, each once. */
typedef struct kvs_llama_state_info {
  uint32_t n_stream; /* streams of the context (1 when the cache is unified) */
  uint32_t stream;   /* the stream that holds the cells */
  uint32_t n_tokens; /* cells of the sequence */
  int32_t pos0;      /* lowest position */
  int32_t seq_id;    /* seq id written in the cells */
  uint32_t v_trans;  /* 1 when V is stored transposed (flash attention off) */
  uint32_t ordered;  /* 1 when cells come in position order */
} kvs_llama_state_info;

/* Parses and checks a state blob against layout (F16, n_layers, heads x
 * head_dim): KVS_EVERSION when the header does not parse exactly (a
 * different llama.cpp format), KVS_ENOTSUP for a KV type other than F16,
 * KVS_ELAYOUT for a layer count or row size that differs from layout,
 * KVS_ECORRUPT for positions that are not one contiguous run. Reads only. */
kvs_err kvs_llama_state_parse(const kvs_layout *layout, const void *state, size_t n,
                              kvs_llama_state_info *info);

/* Tokens [tok_begin, tok_end) of a state blob, counted in position order,
 * into the canonical layout (n_layers, 2 [K,V], tok_end-tok_begin, H, D) f16
 * at out (out_cap >= kvs_layout_token_bytes * count). */
kvs_err kvs_llama_state_to_canonical(const kvs_layout *layout, const void *state, size_t n,
                                     uint32_t tok_begin, uint32_t tok_end, void *out,
                                     size_t out_cap);

/* Bytes of a state blob of info->n_tokens cells. */
size_t kvs_llama_state_bound(const kvs_layout *layout, const kvs_llama_state_info *info);
/* Writes a state blob for info (n_stream, stream, n_tokens, pos0, seq_id,
 * v_trans; cells in position order) from n_parts canonical buffers that hold
 * part_tokens[i] consecutive tokens each (summing to info->n_tokens), into
 * out[cap] (cap >= kvs_llama_state_bound). *n_out = bytes written.
 * to_canonical then from_canonical gives back the same bytes for a blob whose
 * cells were in position order. */
kvs_err kvs_llama_state_from_canonical(const kvs_layout *layout, const kvs_llama_state_info *info,
                                       const void *const *parts, const uint32_t *part_tokens,
                                       size_t n_parts, void *out, size_t cap, size_t *n_out);

/* ------------------------------------------------------------ adapter */
typedef struct kvs_llama kvs_llama;

typedef struct kvs_llama_opts {
  kvs_client *client;    /* NULL: no reuse at all (the adapter only decodes) */
  const char *gguf_path; /* the model file, hashed into the model id; required */
  int flash_attn;        /* the context's cparams.flash_attn (checked against states) */
  uint32_t chunk_tokens; /* prefix chunk size (KVS_DEFAULT_CHUNK_TOKENS); a multiple
                            of the context's n_ubatch keeps logits bit-exact */
  uint32_t profile;      /* put profile (KVS_PROFILE_RAW) */
  const char *id_salt;   /* extra text hashed into the model id (NULL = none) */
} kvs_llama_opts;
void kvs_llama_opts_init(kvs_llama_opts *o);

/* model and ctx are borrowed and must outlive the adapter. KVS_EINVAL when
 * gguf_path cannot be read, KVS_ELAYOUT when the model's shape does not fit a
 * kvs_layout. *out is owned by the caller (kvs_llama_free). */
kvs_err kvs_llama_create(struct llama_model *model, struct llama_context *ctx,
                         const kvs_llama_opts *o, kvs_llama **out);
void kvs_llama_free(kvs_llama *a);
/* The model id the adapter keys chunks with (see docs/llamacpp.md) and the
 * layout of its canonical KV. Valid while a lives. */
const kvs_model_id *kvs_llama_model_id(const kvs_llama *a);
const kvs_layout *kvs_llama_layout(const kvs_llama *a);

typedef struct kvs_llama_stats {
  uint32_t n_tokens;   /* prompt tokens */
  uint32_t n_restored; /* tokens whose KV came from kvstash */
  uint32_t n_decoded;  /* tokens decoded by llama.cpp */
  uint32_t n_put;      /* chunks stored (store / rag misses) */
  uint32_t n_failed;   /* store errors met (logged, not fatal) */
  double t_lookup_s, t_fetch_s, t_restore_s, t_decode_s, t_put_s;
} kvs_llama_stats;

/* Clears sequence seq (the whole memory when the context has one sequence),
 * restores the longest cached prefix of tokens[0, n-1) in whole chunks and
 * decodes the rest, logits for the last token only (llama_get_logits_ith(ctx,
 * -1)). Returns KVS_OK unless llama_decode fails (KVS_EIO). st may be NULL. */
kvs_err kvs_llama_prefill(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                          kvs_llama_stats *st);
/* Puts the full prefix chunks of tokens[0, n) that kvstash does not hold yet,
 * read from sequence seq, which must hold exactly those tokens at positions
 * 0..n-1 (or more): the state carries no token ids, so the caller vouches
 * for them (pass what was decoded: prompt + generated tokens). Failures are logged and counted in
 * st, never returned except KVS_EINVAL for bad arguments. */
kvs_err kvs_llama_store(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                        kvs_llama_stats *st);

typedef struct kvs_llama_rag_opts {
  uint32_t recompute_first; /* re-decode the first r tokens of every chunk not at
                               position 0, in context (EPIC-style "link" tokens) */
  int32_t scratch_seq;      /* a free sequence id for the chunks computed or
                               restored alone (-1 = n_seq_max - 1; needs n_seq_max >= 2) */
} kvs_llama_rag_opts;

/* RAG prompt: tokens[n] whose spans[n_spans] are content chunks (the leading
 * instruction may be one, at position 0). Each chunk's KV is fetched (hit) or
 * computed by llama.cpp for the chunk alone and put (miss), restored at its
 * offset with llama.cpp's K shift, the first r tokens of each shifted chunk
 * re-decoded, and the tokens outside spans decoded; logits of the last token
 * are ready. tokens[n-1] must not be inside a span. */
kvs_err kvs_llama_prefill_rag(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                              const kvs_span *spans, size_t n_spans, const kvs_llama_rag_opts *o,
                              kvs_llama_stats *st);

/* ------------------------------------------------ engine (blend/kvs_engine.h) */
struct kvs_engine;
/* An engine over a's llama.cpp context for reuse/ (kvs_reuse_run): a
 * state-restore engine, no layer ops, so it gets prefix and no-recompute
 * reuse (strategy none; the chunks after the first one not loaded are
 * prefilled). kv_write gathers KV on the host, slots from 0 on, and the next
 * prefill or kv_read restores it as one sequence state
 * (llama_state_seq_set_data); kv_read reads the state back; prefill is
 * llama_decode (logits of the last token, host memory, and always in the
 * context: llama_get_logits_ith(ctx, -1) is ready to generate); prefill_cost is
 * measured over its decodes (a probe on a free sequence first). Each
 * kvs_engine_seq takes a free sequence id of the context (KVS_EBUSY when
 * none). a is borrowed and must outlive the engine (kvs_engine_free).
 * Another use of a's sequences (kvs_llama_prefill) meanwhile is the
 * caller's to keep apart. */
kvs_err kvs_llama_engine(kvs_llama *a, struct kvs_engine **out);

#ifdef __cplusplus
}
#endif
#endif
