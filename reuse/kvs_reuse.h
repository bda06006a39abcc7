/* kvs_reuse.h - stored KV reused inside a live inference engine, as a
 * library: plan, fetch + decode into the engine, RoPE, recompute, store back.
 *
 * An inference server that drives an engine through blend/kvs_engine.h
 * (engines/: the CPU and CUDA reference engines, or its own) hands each
 * request's prompt to kvs_reuse_run as segments:
 *   - PREFIX segments first (system prompt, earlier turns): cut into a hash
 *     chain of chunks (KVS_CHUNK_PREFIX keys, exact where they land);
 *   - CONTENT segments (RAG passages): one content-keyed chunk each, stored
 *     as if at position 0, re-rotated to where they land and blended;
 *   - NEW segments last (the question): always prefilled.
 * kvs_reuse_run then
 *   1. plans: one LOOKUP round trip for every chunk; per chunk LOAD,
 *      RECOMPUTE or MISS, chosen by kvs_blend_plan from measured figures: per
 *      tier an EWMA of this client's own fetch latency and bytes/s (one
 *      sample per request and tier, fetch and decode together; a tier's
 *      first request is a warm-up, not sampled), the engine's prefill_cost,
 *      and the recompute share of the blend strategy (EWMA of past requests);
 *      a tier whose hits are all recomputed gets one loaded now and then
 *      (exploration) so that its figures stay current;
 *      request level: when the plan loads nothing, or its estimate exceeds
 *      a full prefill's (calibrated costs: recompute through the blend path
 *      and full prefill, s/token, measured), the request is the engine's
 *      plain prefill of the whole prompt (res.full_prefill);
 *   2. runs kvs_blend_run: LOAD chunks fetched with kvs_get_start, layer l+1
 *      decoded while layer l recomputes (a device engine gets KVS_GET_DEVICE:
 *      lossy profiles decoded by the GPU codec kernels into device memory,
 *      then one device-to-device copy per layer into blend's stage); RoPE
 *      correction; selective recompute; the NEW tokens' prefill; logits;
 *   3. stores, off the critical path: the chunks computed here (RECOMPUTE
 *      and MISS) are read from the sequence (K of content chunks re-rotated
 *      to position 0) and put by a worker thread through a bounded queue;
 *      when the queue is full a store is dropped and counted, the request
 *      never waits. Device KV with the dense profile is encoded on the GPU
 *      (only encoded bytes cross PCIe).
 * A chunk whose get fails after the lookup (evicted in between) is
 * recomputed: the request runs again with it marked MISS.
 *
 * Counters (kvs_reuse_get_counters) and one debug log line per request
 * (KVS_LOG=debug, comp=reuse) show the decisions and their inputs.
 *
 * Threads: one kvs_reuse serves one request at a time (its engine is not
 * concurrent); the store worker is internal. Ownership: client and engine are
 * borrowed and must outlive the kvs_reuse; kvs_reuse_free drains the queue. */
#ifndef KVS_REUSE_H
#define KVS_REUSE_H

#include <stdint.h>

#include "kvs_blend.h"
#include "kvs_engine.h"
#include "kvstash.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvs_reuse kvs_reuse;

/* How a hit chunk is used. */
typedef enum {
  KVS_REUSE_PLAN_AUTO = 0,            /* kvs_blend_plan on the measured figures */
  KVS_REUSE_PLAN_ALWAYS_LOAD = 1,     /* every hit is loaded */
  KVS_REUSE_PLAN_ALWAYS_RECOMPUTE = 2 /* nothing is fetched (hits are recomputed) */
} kvs_reuse_policy;

/* Per-chunk decision. */
typedef enum {
  KVS_REUSE_MISS = 0,     /* not stored: recomputed */
  KVS_REUSE_LOAD = 1,     /* fetched and decoded into the engine */
  KVS_REUSE_RECOMPUTE = 2 /* stored, but recomputing was estimated faster */
} kvs_reuse_decision;

#define KVS_REUSE_TIERS 3 /* 0 RAM, 1 disk, 2 cold (kvs_entry_info.tier) */

typedef struct kvs_reuse_opts {
  kvs_blend_opts blend;         /* strategy, check layer (load_device is set by reuse) */
  uint32_t policy;              /* kvs_reuse_policy */
  uint32_t prefix_chunk_tokens; /* chain chunk size of PREFIX segments (0 = 256) */
  int store;                    /* 1: store what a request computed (default 0) */
  uint32_t store_profile;       /* codec profile of stores (KVS_PROFILE_RAW = 0) */
  uint32_t layers_per_group;    /* of stores (0 = 2) */
  uint32_t store_queue;         /* stores waiting at most (0 = 8); more are dropped */
  uint32_t store_inflight;      /* puts sent and not yet answered at most (0 = 4, max 64) */
  double ewma_alpha;            /* weight of a new measurement (0 = 0.3) */
  /* Figures used until this client has measured its own (0 = built-in:
   * RAM 0.3 ms + 2 GB/s, disk 2 ms + 0.5 GB/s, cold 10 ms + 0.2 GB/s of
   * decoded KV). */
  double prior_latency_s[KVS_REUSE_TIERS];
  double prior_bytes_per_s[KVS_REUSE_TIERS];
  /* Decode rate in decoded bytes/s when decoding does not overlap the fetch;
   * 0 (default): the measured bytes/s already include it. */
  double decode_bytes_per_s;
  /* Exploration: when the plan recomputes every hit of a tier, one hit chunk
   * of it is loaded anyway (and so measured) when the tier's last sample is
   * explore_every requests old (0 = 16; UINT32_MAX = never), every
   * explore_every / 4 while the estimates are within explore_factor of each
   * other (load < factor x recompute; 0 = 1.5), and with probability
   * explore_epsilon per request (0 = never; a PRNG seeded by explore_seed).
   * At most one chunk per tier and request. */
  uint32_t explore_every;
  double explore_factor;
  double explore_epsilon;
  uint64_t explore_seed;
  /* > 0: the engine's prefill cost (s/token) used as is instead of measured
   * (tests: decisions independent of the clock). */
  double prefill_s_per_token;
  /* Test seam: called once per tier and request with the figures measured
   * over that request's gets from the tier (latency to the first layer,
   * decoded bytes/s; *exact 0 when the loader did not wait, i.e. a bound);
   * may replace them. NULL: the clock's figures. */
  void (*sample_fn)(void *ctx, uint32_t tier, uint64_t bytes, double *latency_s,
                    double *bytes_per_s, int *exact);
  void *sample_ctx;
  /* BENCH ONLY (off = 0): the loader sees at most this many decoded bytes/s
   * from a tier, per request (it sleeps before handing a layer over): a
   * slowed tier the plan measures like a real one. Never set in serving. */
  double bench_tier_bytes_per_s[KVS_REUSE_TIERS];
  /* Test seam: called after each request with the seconds per token it
   * measured, what = KVS_REUSE_COST_RECOMPUTE (the blend path: its time less
   * the NEW tail's prefill and the load waits, per token run through the
   * layers) or KVS_REUSE_COST_FULL (a plain full prefill); may replace it
   * (0: no sample). NULL: the clock's figure, sampled only when
   * prefill_s_per_token is 0 (measured). */
  void (*cost_fn)(void *ctx, uint32_t what, uint32_t n_tokens, double *s_per_token);
  void *cost_ctx;
} kvs_reuse_opts;
void kvs_reuse_opts_init(kvs_reuse_opts *o);

/* Creates a reuse context over client c and engine e for model `model`
 * (the id that stored KV must carry: usually the engine's info.model_id). */
kvs_err kvs_reuse_create(kvs_client *c, kvs_engine *e, const kvs_reuse_opts *o, kvs_reuse **out);
/* Waits for the queued stores, then frees. NULL is fine. */
void kvs_reuse_free(kvs_reuse *r);

/* One piece of the prompt; segments cover tokens in order. */
typedef struct kvs_reuse_segment {
  uint32_t kind;     /* kvs_seg_kind: KVS_SEG_PREFIX, KVS_SEG_CONTENT, KVS_SEG_NEW */
  uint32_t n_tokens; /* > 0 */
} kvs_reuse_segment;

typedef struct kvs_reuse_request {
  const int32_t *tokens; /* [n_tokens] the whole prompt */
  uint32_t n_tokens;
  const kvs_reuse_segment *segs; /* PREFIX*, then CONTENT/PREFIX-free middle, NEW last */
  uint32_t n_segs;
} kvs_reuse_request;

/* Where one kvs_reuse_run's time went (s), in order: the LOOKUP round trip,
 * the plan (figures, decisions), starting the gets (output buffers and
 * requests sent), the run (kvs_blend_run, or the plain full prefill; blend's
 * own t_load_wait_s / t_recompute_s / t_prefill_s split it), then waiting for
 * the gets' ends and giving their buffers back (after the logits, inside
 * t_total_s). */
typedef struct kvs_reuse_stages {
  double lookup_s, plan_s, gets_s, run_s, finish_s;
} kvs_reuse_stages;

typedef struct kvs_reuse_result {
  uint32_t n_chunks, n_load, n_recompute, n_miss, n_retry; /* n_retry: gets failed, re-run */
  uint64_t bytes_loaded;                                   /* decoded KV bytes fetched */
  double t_lookup_s;                                       /* the LOOKUP round trip */
  double t_total_s;       /* kvs_reuse_run until the logits are ready (TTFT) */
  double est_load_s;      /* plan: sum of the estimates of the chunks it could load */
  double est_recompute_s; /*       and of recomputing them */
  uint32_t n_store_queued, n_store_dropped; /* this request's stores */
  kvs_blend_stats blend;
  uint32_t n_explore; /* hits loaded to measure a tier the plan would recompute */
  uint32_t n_warmup;  /* tiers whose first gets were not sampled (set-up) */
  /* request level: 1 when the whole prompt was prefilled plainly (no blend
   * path; hits count as recomputed, nothing fetched) because the plan's
   * estimate (est_plan_s: its loads + its recomputes at the calibrated
   * recompute cost + the NEW tail) exceeded a full prefill's (est_full_s),
   * or because the plan loads nothing */
  uint32_t full_prefill;
  double est_plan_s, est_full_s;
  kvs_reuse_stages stages; /* where t_total_s went */
} kvs_reuse_result;

/* Runs one request on an empty sequence s (capacity >= n_tokens); writes the
 * last token's logits into logits[n_vocab] (engine memory, may be NULL). The
 * sequence then holds the prompt's KV, ready for decoding. decisions (may be
 * NULL) gets one kvs_reuse_decision per chunk, in prompt order, at most
 * cap_decisions. */
kvs_err kvs_reuse_run(kvs_reuse *r, kvs_engine_seq *s, const kvs_reuse_request *req, float *logits,
                      kvs_reuse_result *res, uint8_t *decisions, uint32_t cap_decisions);

/* Number of chunks a request is cut into (PREFIX chain + one per CONTENT). */
kvs_err kvs_reuse_count_chunks(const kvs_reuse *r, const kvs_reuse_request *req, uint32_t *n);

/* Stores KV computed outside kvs_reuse_run (pre-warming): chunk `chunk` of
 * req (as kvs_reuse_run cuts it: the PREFIX chain's chunks, then one per
 * CONTENT segment). kv: that chunk's canonical layout (n_layers, 2, n,
 * heads, head_dim) in engine memory, K at stored positions (CONTENT: as if
 * from position 0; PREFIX: where it lies), copied before this returns. Goes
 * through the store queue: KVS_EAGAIN when full (dropped, counted); wait = 1
 * queues regardless of the bound and returns the put's result. */
kvs_err kvs_reuse_store(kvs_reuse *r, const kvs_reuse_request *req, uint32_t chunk, const void *kv,
                        int wait);
/* Blocks until every queued store is done. */
kvs_err kvs_reuse_flush(kvs_reuse *r);
/* The store queue now: stores waiting (*queued, bounded by store_queue) and
 * waiting or in flight (*active). A caller that copies KV out of its engine
 * before kvs_reuse_store checks this first, so that a store that would be
 * dropped costs no copy. Either pointer may be NULL. */
kvs_err kvs_reuse_store_backlog(kvs_reuse *r, uint32_t *queued, uint32_t *active);

typedef struct kvs_reuse_counters {
  uint64_t requests, chunks, hits, loads, recomputes, misses, retries;
  uint64_t hits_by_tier[KVS_REUSE_TIERS]; /* hits (loaded or recomputed) by the tier found in */
  uint64_t bytes_loaded;
  uint64_t stores_queued, stores_done, stores_failed, stores_dropped;
  uint64_t store_bytes; /* KV bytes handed to puts */
  /* where the stores' time went, summed over stores: copying the KV out of
   * the engine into the queue (the request's thread), encoding and building
   * the request (kvs_put_start on the worker), and from the request sent to
   * its answer (socket and daemon; with puts in flight these overlap) */
  double store_copy_s, store_encode_s, store_ack_s;
  uint64_t store_pool_hits; /* device staging buffers reused instead of allocated */
  /* the figures the plan uses now */
  double latency_s[KVS_REUSE_TIERS], bytes_per_s[KVS_REUSE_TIERS];
  uint64_t samples[KVS_REUSE_TIERS];    /* requests that measured the tier */
  uint64_t sample_age[KVS_REUSE_TIERS]; /* requests since its last sample */
  double prefill_s_per_token, recompute_ratio;
  uint64_t explores, warmups; /* explored chunks; tiers' unsampled first requests */
  uint64_t full_prefills;     /* requests run as a plain full prefill */
  uint64_t get_pool_hits;     /* gets' device buffers reused instead of allocated */
  /* calibrated costs (s/token): recomputing through the blend path and a
   * plain full prefill; the engine's prefill_s_per_token until sampled */
  double recompute_s_per_token, full_s_per_token;
  uint64_t recompute_samples, full_samples;
} kvs_reuse_counters;
kvs_err kvs_reuse_get_counters(kvs_reuse *r, kvs_reuse_counters *out);

/* Feeds one measurement of tier `tier` (0 RAM, 1 disk, 2 cold) into the
 * plan's figures as if a request's gets had measured it: latency to the
 * first layer (s), decoded bytes/s; exact 0: a bound (latency at most,
 * bytes/s at least). Tests and engines that fetch on their own. */
kvs_err kvs_reuse_feed(kvs_reuse *r, uint32_t tier, double latency_s, double bytes_per_s,
                       int exact);

/* Feeds one measured cost (s/token) into the plan's calibration, as a
 * request would: what KVS_REUSE_COST_RECOMPUTE (through the blend path) or
 * KVS_REUSE_COST_FULL (a plain full prefill). */
#define KVS_REUSE_COST_RECOMPUTE 0u
#define KVS_REUSE_COST_FULL      1u
kvs_err kvs_reuse_feed_cost(kvs_reuse *r, uint32_t what, double s_per_token);

/* ---- the segment driver without a client (benchmarks, tests, engines that
 * fetch on their own): kvs_blend_run over request segments, one blend segment
 * per chunk as kvs_reuse_run cuts them, chunk i taken from load() when
 * cached[i] (load's seg argument is the chunk index). */
kvs_err kvs_reuse_run_loader(kvs_engine *e, kvs_engine_seq *s, const kvs_reuse_request *req,
                             uint32_t prefix_chunk_tokens, const int *cached,
                             kvs_blend_load_fn load, void *ctx, const kvs_blend_opts *o,
                             float *logits, kvs_blend_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
