/* kvs_blend.h - putting fetched chunks into a live request.
 *
 * Three pieces, usable separately:
 *  - position correction: K of a content chunk is stored as if the chunk
 *    started at position 0; where it lands at position p0 in a new prompt,
 *    every K vector is rotated by the RoPE angle of the shift (p0 - stored).
 *    RoPE angles add, so rotating K(p) by delta equals K(p + delta) up to
 *    float rounding; V is position-free and untouched.
 *  - token selection for recompute, one interface over the strategies so
 *    they compare on one harness (none, CacheBlend, EPIC, adaptive);
 *  - the load-or-recompute controller (CacheGen-style): per chunk, is it
 *    faster to fetch and decode its KV or to prefill its tokens?
 * The layer-by-layer pipeline that drives an engine is in kvs_blend_run
 * (see kvs_engine.h for the engine side).
 *
 * Every function here is the CPU twin of a kernel in gpu/blend/. */
#ifndef KVS_BLEND_H
#define KVS_BLEND_H

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------- position correction */
/* cos/sin of the rotation for a shift of `delta` positions, one pair per
 * rotated frequency: table[2*i] = cos(delta * f_i), table[2*i+1] = sin(..),
 * f_i the effective frequency of pair i under l->rope_scaling (kvs_core.h:
 * freq_scale * theta^(-2i/rope_dims) when NONE; YaRN and llama3 change it per
 * pair), i < rope_dims/2. Computed in double and rounded once, so CPU and GPU
 * share the exact same table. YaRN's magnitude scale is already in K and a
 * shift does not change it.
 * table holds rope_dims floats. */
kvs_err kvs_rope_shift_table(const kvs_layout *l, int64_t delta, float *table);

/* Rotate K in place by a shift table.
 *   k: (n_tokens, n_kv_heads, head_dim) of l->dtype (f16 or bf16 or f32),
 *      tokens `token_stride` elements apart (n_kv_heads*head_dim when packed).
 * Pairs follow l->rope_type (NORM: (2i, 2i+1); NEOX: (i, i + rope_dims/2)). */
kvs_err kvs_rope_shift(const kvs_layout *l, void *k, uint32_t n_tokens, size_t token_stride,
                       const float *table);

/* Shift the K planes of every layer of a chunk in the canonical layout
 * (kvs_core.h) by delta positions. kv holds the whole chunk. */
kvs_err kvs_rope_shift_chunk(const kvs_layout *l, void *kv, uint32_t n_tokens, int64_t delta);

/* Reference RoPE (for tests and engines without their own): rotate
 * x: (n_tokens, n_heads, head_dim) f32 in place, token t at positions[t]
 * (with YaRN, also times its mscale, as llama.cpp does). */
kvs_err kvs_rope_apply_f32(const kvs_layout *l, float *x, uint32_t n_tokens, uint32_t n_heads,
                           const int64_t *positions);

/* ------------------------------------------------------- selection */
typedef enum {
  KVS_SEL_NONE = 0,       /* naive reuse: recompute nothing (the floor) */
  KVS_SEL_CACHEBLEND = 1, /* top `ratio` of tokens by KV deviation at the check layer */
  KVS_SEL_EPIC = 2,       /* the first `epic_first` tokens of every chunk */
  KVS_SEL_ADAPTIVE = 3,   /* ours: sinks + chunk starts + deviation until little is left */
  KVS_SEL_FULL = 4        /* recompute everything (the ceiling, for checks) */
} kvs_sel_strategy;

typedef struct kvs_sel_params {
  uint32_t strategy;    /* kvs_sel_strategy */
  float ratio;          /* CACHEBLEND: fraction to recompute; ADAPTIVE: upper bound */
  uint32_t epic_first;  /* EPIC / ADAPTIVE: tokens at each chunk start */
  uint32_t sink_tokens; /* ADAPTIVE: always keep the first tokens of the prompt */
  float adaptive_mass;  /* ADAPTIVE: stop once the deviation left is below this share */
  float min_ratio;      /* ADAPTIVE: never recompute fewer than this fraction */
} kvs_sel_params;

const char *kvs_sel_name(uint32_t strategy);
/* Parses "none", "cacheblend", "epic", "adaptive", "full". -1 when unknown. */
int kvs_sel_parse(const char *s);
/* Default parameters of a strategy (the values tuned on MuSiQue items 0-99). */
kvs_sel_params kvs_sel_defaults(uint32_t strategy);

/* Choose tokens to recompute among n reused tokens.
 *   deviation: [n] per-token KV deviation at the check layer (may be NULL
 *              for strategies that do not need it: NONE, EPIC, FULL)
 *   chunk_start: [n] 1 where a reused chunk starts, else 0 (may be NULL)
 *   selected: [n] out, 1 = recompute
 * Returns the number selected in *n_selected. Deterministic: ties break
 * towards the earlier token. No allocation beyond a scratch of n indices
 * (caller-provided `scratch` of n uint32, or NULL to allocate). */
kvs_err kvs_blend_select(const kvs_sel_params *p, uint32_t n, const float *deviation,
                         const uint8_t *chunk_start, uint8_t *selected, uint32_t *n_selected,
                         uint32_t *scratch);

/* Per-token deviation between two versions of one layer's KV:
 *   sum over heads and dims of (k_a-k_b)^2 + (v_a-v_b)^2, in f32.
 * k_a..v_b: (n, n_kv_heads, head_dim) f16. dev: [n] out. */
kvs_err kvs_blend_deviation_f16(const kvs_layout *l, uint32_t n, const kvs_f16 *k_a,
                                const kvs_f16 *v_a, const kvs_f16 *k_b, const kvs_f16 *v_b,
                                float *dev);

/* ------------------------------------------------------ controller */
/* What loading or recomputing a chunk costs, from measured rates. */
typedef struct kvs_cost_model {
  double fetch_bytes_per_s;   /* tier/network bandwidth for encoded bytes */
  double fetch_latency_s;     /* per request round trip */
  double decode_bytes_per_s;  /* codec decode, in decoded (fp16) bytes per second */
  double prefill_s_per_token; /* the engine's prefill cost at this context length */
  double recompute_ratio;     /* share of a loaded chunk's tokens that blending recomputes */
} kvs_cost_model;

typedef struct kvs_load_plan {
  int load;                   /* 1: fetch + decode, 0: recompute from text */
  double load_s, recompute_s; /* the two estimates behind the choice */
} kvs_load_plan;

/* encoded/decoded bytes and token count of one chunk -> decision. */
kvs_load_plan kvs_blend_plan(const kvs_cost_model *m, uint64_t encoded_bytes,
                             uint64_t decoded_bytes, uint32_t n_tokens);

/* ------------------------------------------------------- the pipeline */
struct kvs_engine;
struct kvs_engine_seq;

typedef enum {
  KVS_SEG_PREFIX = 0,  /* reused as a prefix: its KV is exact where it lands */
  KVS_SEG_CONTENT = 1, /* reused out of place: K re-rotated, tokens blended */
  KVS_SEG_NEW = 2      /* new text (the question): prefilled on top, at the tail */
} kvs_seg_kind;

/* One piece of the prompt, in prompt order. Slots are assigned in order from
 * the sequence's current length; a token's slot is its RoPE position. */
typedef struct kvs_blend_segment {
  uint32_t kind;         /* kvs_seg_kind */
  const int32_t *tokens; /* [n_tokens] */
  uint32_t n_tokens;
  int64_t stored_pos0; /* position of tokens[0] when its KV was computed */
  int cached;          /* PREFIX/CONTENT: 1 = KV comes from load(), 0 = missing:
                        * its tokens are recomputed in full, layer by layer */
} kvs_blend_segment;

/* Supplies one cached segment's KV for one layer at its stored positions:
 * k, v (n_tokens, n_kv_heads, head_dim) of the engine's KV dtype, host memory
 * (device memory when kvs_blend_opts.load_device is set for a device engine).
 * Called on blend's loader thread, one call at a time, layers in order; it
 * must not call the engine. This is where a client decodes layer group g+1
 * of a fetched chunk while layer g recomputes. */
typedef kvs_err (*kvs_blend_load_fn)(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v);

typedef struct kvs_blend_opts {
  kvs_sel_params sel;
  uint32_t check_layer; /* layer whose KV deviation picks the tokens (default 1) */
  int no_overlap;       /* 1: load each layer on the calling thread (for comparison) */
  int load_device;      /* device engines: 1 = load() writes k, v straight into device
                         * memory (an H2D copy from pinned or shared memory, or the
                         * codec's GPU decode of encoded bytes) and has finished when it
                         * returns; saves the host staging copy and the second copy to
                         * the device. Ignored for host engines. */
} kvs_blend_opts;

typedef struct kvs_blend_stats {
  uint32_t n_ctx;        /* slots before the new tokens */
  uint32_t n_candidates; /* tokens of CONTENT segments */
  uint32_t n_recomputed; /* tokens run through the layers after the check layer */
  uint32_t n_forced;     /* tokens of missing segments (always recomputed) */
  uint32_t n_prefilled;  /* NEW tokens */
  double t_load_wait_s;  /* time the engine waited for the loader */
  double t_recompute_s;  /* embed + layers + selection */
  double t_prefill_s;    /* the NEW tokens */
  double t_total_s;
} kvs_blend_stats;

/* Runs one request: injects the cached segments' KV layer by layer (loaded
 * one layer ahead on a worker thread), recomputes the tokens the strategy
 * picks (CacheBlend-style: all candidates up to the check layer, then only
 * the chosen ones), then prefills the NEW tail and writes the last token's
 * logits into logits[n_vocab] (may be NULL), in the engine's memory (host, or
 * device for a GPU engine: then hidden states, the check-layer deviation and
 * the row compaction stay on the GPU). The sequence must be empty. */
kvs_err kvs_blend_run(struct kvs_engine *e, struct kvs_engine_seq *s, const kvs_blend_segment *segs,
                      uint32_t n_segs, kvs_blend_load_fn load, void *load_ctx,
                      const kvs_blend_opts *opts, float *logits, kvs_blend_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
