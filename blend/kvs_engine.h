/* kvs_engine.h - the engine ops table that blend/ drives.
 *
 * kvstash puts cached KV into a live request through these operations; any
 * inference engine that implements them can reuse chunks that are not a
 * prefix of the prompt (CacheBlend-style selective recompute). The reference
 * implementations are in engines/ (kvs_model_engine(), kvs_gpu_model_engine()
 * in engines/kvs_engines.h; llama.cpp in engines/llamacpp).
 *
 * Concepts
 *  - A *sequence* is one request's KV cache: token slots 0..capacity-1. Slot
 *    i's KV, per layer, is K and V of shape (n_kv_heads, head_dim) in the
 *    canonical layout of core/kvs_core.h (info.layout; fp16 unless the
 *    layout says bf16), K post-RoPE. `len` is one past the highest slot
 *    written; attention of a token in slot i covers slots 0..i (causal by
 *    slot order). A slot's RoPE position is chosen by whoever writes its KV
 *    (positions are usually slot indices; blend re-rotates cached K to them).
 *  - *Hidden states* are f32 (n, n_embd) in the memory info.mem says (host
 *    for a CPU engine, device for a GPU engine); they are the residual stream
 *    entering a layer. embed -> layer 0 -> ... -> layer L-1 -> logits is the
 *    forward pass.
 *  - KV buffers passed to kv_read/kv_write/layer_kv are (n, n_kv_heads,
 *    head_dim) of the layout dtype, in info.mem memory too (the reference
 *    GPU engine, model/cuda, also takes host memory in kv_read/kv_write).
 *    Token ids, idx and pos arrays are always host memory.
 *
 * How blend uses it (one request, chunks c_1..c_m fetched from kvstash):
 *    seq_create; for each chunk: kv_write every layer at its slots (K
 *    re-rotated to the slot positions); prefill the uncached prefix tokens.
 *    Choose tokens to recompute: embed the chunk tokens, run `layer` over ALL
 *    their slots for the first layers (or use layer_kv to get fresh K/V for
 *    a layer without touching the cache and compare with kv_read of what was
 *    loaded), keep the top-k deviating tokens, then for each further layer
 *    call `layer` on the chosen subset only (it overwrites their K/V and
 *    advances their hidden states). Finally `prefill` the new tokens (the
 *    question) on top, and decode.
 *
 * Errors are kvs_err (core/kvs_err.h). Calls on one sequence, and on one
 * engine, are not concurrent (an engine may serialize internally).
 * Ownership: the engine is created by its implementation (e.g.
 * kvs_model_engine) and released with kvs_engine_free; sequences are owned by
 * the caller between seq_create and seq_free, and freed before the engine. */
#ifndef KVS_ENGINE_H
#define KVS_ENGINE_H

#include <stdint.h>

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVS_ENGINE_ABI 1

typedef enum { KVS_ENGINE_MEM_HOST = 0, KVS_ENGINE_MEM_DEVICE = 1 } kvs_engine_mem;

typedef struct kvs_engine_info {
  kvs_layout layout;     /* of the KV this engine reads and writes */
  kvs_model_id model_id; /* what KV from kvstash must carry to be used here */
  uint32_t n_embd;       /* hidden state width */
  uint32_t n_vocab;      /* logits width */
  uint32_t max_tokens;   /* largest sequence capacity accepted */
  uint32_t mem;          /* kvs_engine_mem: where hidden/KV/logit buffers live */
  const char *name;      /* static, e.g. "kvs-model-cpu" */
} kvs_engine_info;

typedef struct kvs_engine_seq kvs_engine_seq; /* opaque, engine-defined */
typedef struct kvs_engine kvs_engine;

typedef struct kvs_engine_ops {
  uint32_t abi; /* KVS_ENGINE_ABI */
  kvs_err (*info)(kvs_engine *e, kvs_engine_info *out);

  /* ---- sequences */
  kvs_err (*seq_create)(kvs_engine *e, uint32_t capacity, kvs_engine_seq **out);
  void (*seq_free)(kvs_engine *e, kvs_engine_seq *s);
  uint32_t (*seq_len)(kvs_engine *e, const kvs_engine_seq *s);
  /* Forgets slots >= n (n <= len). */
  kvs_err (*seq_truncate)(kvs_engine *e, kvs_engine_seq *s, uint32_t n);

  /* ---- KV in the canonical layout
   * kv_read copies layer `layer`'s K and V of slots [start, start+n) into
   * k/v (n, n_kv_heads, head_dim); needs start+n <= len. kv_write stores
   * them (len grows to start+n when beyond it); capacity bounds it. */
  kvs_err (*kv_read)(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                     void *k, void *v);
  kvs_err (*kv_write)(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                      const void *k, const void *v);

  /* ---- layer-wise forward (selective recompute), optional
   * embed, layer, layer_kv and logits may all be NULL: an engine that can
   * only restore state and prefill (llama.cpp, engines/llamacpp) gets prefix
   * and no-recompute reuse; kvs_blend_run answers KVS_ENOTSUP for a request
   * that would recompute tokens on it (a missing segment, a strategy other
   * than none).
   * embed: hidden (n, n_embd) = token embeddings of tokens[n]. */
  kvs_err (*embed)(kvs_engine *e, const int32_t *tokens, uint32_t n, float *hidden);
  /* layer: runs layer `layer` for n tokens living in slots idx[n] (distinct)
   * with RoPE positions pos[n] (NULL: pos = idx). It computes their fresh K/V,
   * WRITES them into the cache at idx, attends each token over slots
   * 0..idx[i] (every slot there must hold valid KV, loaded or computed), and
   * replaces hidden (n, n_embd) by the layer's output. */
  kvs_err (*layer)(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t n,
                   const uint32_t *idx, const uint32_t *pos, float *hidden);
  /* layer_kv: fresh K/V of `layer` for hidden states entering it, at
   * positions pos[n], into k/v (n, n_kv_heads, head_dim); no cache is
   * touched, hidden is unchanged. This is what blend compares against the
   * loaded KV (kv_read) to measure deviation. */
  kvs_err (*layer_kv)(kvs_engine *e, uint32_t layer, uint32_t n, const uint32_t *pos,
                      const float *hidden, void *k, void *v);
  /* logits: final norm + output head, logits (n, n_vocab) from hidden (n, n_embd). */
  kvs_err (*logits)(kvs_engine *e, uint32_t n, const float *hidden, float *logits);

  /* ---- whole-model calls
   * prefill: appends tokens[n] at slots len..len+n-1 (positions = slots) on
   * top of whatever KV the sequence holds, through every layer; logits of
   * the last token into logits[n_vocab], or of all n tokens (n, n_vocab)
   * when all_logits; logits may be NULL. Decode is prefill with n = 1. */
  kvs_err (*prefill)(kvs_engine *e, kvs_engine_seq *s, const int32_t *tokens, uint32_t n,
                     int all_logits, float *logits);
  /* prefill_cost: measured seconds per prefilled token (over the prefills run
   * so far; when none has run, the engine measures one of n_probe tokens).
   * kvstash's eviction and blend's "is reuse worth it" use this. */
  kvs_err (*prefill_cost)(kvs_engine *e, uint32_t n_probe, double *sec_per_token);

  void (*destroy)(kvs_engine *e);
} kvs_engine_ops;

/* An engine is its ops table plus the implementation's state. Implementations
 * embed this struct first in their own. */
struct kvs_engine {
  const kvs_engine_ops *ops;
};

static inline void kvs_engine_free(kvs_engine *e) {
  if (e && e->ops && e->ops->destroy) e->ops->destroy(e);
}

#ifdef __cplusplus
}
#endif
#endif
