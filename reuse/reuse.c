/* reuse.c - kvs_reuse: plan (LOOKUP + kvs_blend_plan on measured figures),
 * run (kvs_blend_run with a loader over kvs_get_start), store (store.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvs_gpu.h"
#include "reuse_int.h"

void kvs_reuse_opts_init(kvs_reuse_opts *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->blend.sel = kvs_sel_defaults(KVS_SEL_ADAPTIVE);
  o->blend.check_layer = 1;
}

static const double PRIOR_LAT[KVS_REUSE_TIERS] = {0.3e-3, 2e-3, 10e-3};
static const double PRIOR_BPS[KVS_REUSE_TIERS] = {2e9, 0.5e9, 0.2e9};

kvs_err kvs_reuse_create(kvs_client *c, kvs_engine *e, const kvs_reuse_opts *o, kvs_reuse **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  if (!c || !e || !e->ops || e->ops->abi != KVS_ENGINE_ABI) return KVS_EINVAL;
  kvs_reuse *r = calloc(1, sizeof *r);
  if (!r) return KVS_ENOMEM;
  r->c = c, r->e = e;
  pthread_mutex_init(&r->mu, NULL);
  if (o)
    r->o = *o;
  else
    kvs_reuse_opts_init(&r->o);
  if (!r->o.prefix_chunk_tokens) r->o.prefix_chunk_tokens = KVS_DEFAULT_CHUNK_TOKENS;
  if (!r->o.layers_per_group) r->o.layers_per_group = 2;
  if (!r->o.store_queue) r->o.store_queue = 8;
  if (!(r->o.ewma_alpha > 0 && r->o.ewma_alpha <= 1)) r->o.ewma_alpha = 0.3;
  if (!r->o.explore_every) r->o.explore_every = 16;
  if (!(r->o.explore_factor > 0)) r->o.explore_factor = 1.5;
  r->rng = r->o.explore_seed ? r->o.explore_seed : 0x9e3779b97f4a7c15ull;
  kvs_err err = e->ops->info(e, &r->info);
  if (!err && r->info.mem != KVS_ENGINE_MEM_HOST && r->info.mem != KVS_ENGINE_MEM_DEVICE)
    err = KVS_ENOTSUP;
  r->dev = r->info.mem == KVS_ENGINE_MEM_DEVICE;
  /* a state-restore engine recomputes nothing inside a reused run: strategy
   * none, and everything after the first chunk not loaded is prefilled */
  r->stateful = !(e->ops->embed && e->ops->layer && e->ops->layer_kv);
  if (r->stateful) r->o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  for (int t = 0; t < KVS_REUSE_TIERS; t++) {
    r->lat[t] = r->o.prior_latency_s[t] > 0 ? r->o.prior_latency_s[t] : PRIOR_LAT[t];
    r->bps[t] = r->o.prior_bytes_per_s[t] > 0 ? r->o.prior_bytes_per_s[t] : PRIOR_BPS[t];
  }
  /* until measured: the strategy's nominal share (none recomputes nothing) */
  uint32_t st = r->o.blend.sel.strategy;
  r->rr = st == KVS_SEL_NONE         ? 0
          : st == KVS_SEL_FULL       ? 1
          : r->o.blend.sel.ratio > 0 ? r->o.blend.sel.ratio
                                     : 0.15;
  /* the engine's prefill cost, measured now (a probe when it has none yet) so
   * that the first request does not pay for it */
  if (!err && r->o.prefill_s_per_token > 0)
    r->spt = r->o.prefill_s_per_token;
  else if (!err)
    err = e->ops->prefill_cost(e, 0, &r->spt);
  if (!err && r->dev) err = kvs_gpu_stream_create(&r->stream);
  if (!err) err = kvs__store_start(r);
  if (err) {
    if (r->stream) kvs_gpu_stream_free(r->stream);
    pthread_mutex_destroy(&r->mu);
    free(r);
    return err;
  }
  *out = r;
  return KVS_OK;
}

void kvs_reuse_free(kvs_reuse *r) {
  if (!r) return;
  kvs__store_stop(r);
  for (uint32_t i = 0; i < r->n_gpool; i++)
    kvs_gpu_free(r->gpool[i].p);
  if (r->stream) kvs_gpu_stream_free(r->stream);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

/* ------------------------------------------------------------ chunks */
/* Validates the segments and cuts the chunks: PREFIX segments (leading)
 * into a chain of chunk_tokens-token chunks (the tail included), one chunk
 * per CONTENT segment; NEW segments (trailing) have none. mid NULL: only the
 * boundaries (no keys). *out owned by the caller (free). */
kvs_err kvs__cut(const kvs_reuse_request *req, const kvs_model_id *mid, uint32_t chunk_tokens,
                 kvs__rchunk **out, uint32_t *n_out, uint32_t *n_ctx) {
  *out = NULL, *n_out = 0;
  if (!req || !req->tokens || !req->segs || !req->n_segs || !req->n_tokens) return KVS_EINVAL;
  if (!chunk_tokens) chunk_tokens = KVS_DEFAULT_CHUNK_TOKENS;
  uint64_t sum = 0;
  uint32_t prefix = 0, n_content = 0, phase = 0; /* 0 prefix, 1 content, 2 new */
  for (uint32_t i = 0; i < req->n_segs; i++) {
    const kvs_reuse_segment *sg = &req->segs[i];
    if (!sg->n_tokens || sg->kind > KVS_SEG_NEW) return KVS_EINVAL;
    uint32_t ph = sg->kind == KVS_SEG_PREFIX ? 0 : sg->kind == KVS_SEG_CONTENT ? 1 : 2;
    if (ph < phase) return KVS_EINVAL; /* PREFIX first, NEW last */
    phase = ph;
    if (ph == 0) prefix += sg->n_tokens;
    if (ph == 1) n_content++;
    sum += sg->n_tokens;
  }
  if (sum != req->n_tokens) return KVS_EINVAL;
  size_t n_pre = prefix ? kvs_chunk_prefix_count(prefix, chunk_tokens, KVS_CHUNK_TAIL) : 0;
  kvs__rchunk *ch = calloc(n_pre + n_content + 1, sizeof *ch);
  if (!ch) return KVS_ENOMEM;
  kvs_err err = KVS_OK;
  if (n_pre && mid) {
    kvs_chunk *tmp = calloc(n_pre, sizeof *tmp);
    size_t got = 0;
    err = tmp ? kvs_chunk_prefix(mid, req->tokens, prefix, chunk_tokens, KVS_CHUNK_TAIL, tmp, n_pre,
                                 &got)
              : KVS_ENOMEM;
    for (size_t i = 0; !err && i < got; i++)
      ch[i].ch = tmp[i];
    free(tmp);
  } else {
    for (size_t i = 0; i < n_pre; i++) {
      ch[i].ch.start = (uint32_t)(i * chunk_tokens);
      ch[i].ch.n_tokens = (uint32_t)(i + 1 < n_pre ? chunk_tokens : prefix - i * chunk_tokens);
      ch[i].ch.kind = KVS_CHUNK_PREFIX;
    }
  }
  for (size_t i = 0; i < n_pre; i++)
    ch[i].kind = KVS_SEG_PREFIX;
  uint32_t pos = prefix, k = (uint32_t)n_pre;
  for (uint32_t i = 0; !err && i < req->n_segs; i++) {
    const kvs_reuse_segment *sg = &req->segs[i];
    if (sg->kind != KVS_SEG_CONTENT) continue;
    kvs_span sp = {.start = pos, .n_tokens = sg->n_tokens};
    if (mid) {
      err = kvs_chunk_spans(mid, req->tokens, req->n_tokens, &sp, 1, &ch[k].ch);
    } else {
      ch[k].ch.start = pos, ch[k].ch.n_tokens = sg->n_tokens, ch[k].ch.kind = KVS_CHUNK_CONTENT;
    }
    ch[k].kind = KVS_SEG_CONTENT;
    pos += sg->n_tokens, k++;
  }
  if (err) {
    free(ch);
    return err;
  }
  *out = ch, *n_out = k;
  if (n_ctx) *n_ctx = pos;
  return KVS_OK;
}

kvs_err kvs_reuse_count_chunks(const kvs_reuse *r, const kvs_reuse_request *req, uint32_t *n) {
  if (!r || !n) return KVS_EINVAL;
  kvs__rchunk *ch;
  KVS_TRY(kvs__cut(req, NULL, r->o.prefix_chunk_tokens, &ch, n, NULL));
  free(ch);
  return KVS_OK;
}

/* blend segments: one per chunk (in order), then the NEW segments;
 * stateful: chunks not cached are NEW (prefilled; callers cut them to a
 * tail). Chunks after the last cached one are NEW too: nothing loaded
 * follows them, so recomputing them is a prefill, and the engine's prefill
 * costs less per token than blend's layer-by-layer path on a device engine
 * (H100, session 7: 8B shape 1.3x, SmolLM2 shape 2.6x). A conversation's
 * last, partial history chunk misses on every turn. With nothing cached at
 * all, the chunks stay (the blend path recomputes them: ALWAYS_RECOMPUTE
 * measures that path). */
static kvs_err blend_segs(const kvs_reuse_request *req, const kvs__rchunk *ch, uint32_t nch,
                          const int *cached, int stateful, kvs_blend_segment **out,
                          uint32_t *n_out) {
  uint32_t n_new = 0;
  for (uint32_t i = 0; i < req->n_segs; i++)
    n_new += req->segs[i].kind == KVS_SEG_NEW;
  kvs_blend_segment *b = calloc(nch + n_new + 1, sizeof *b);
  if (!b) return KVS_ENOMEM;
  uint32_t k = 0, pos = 0, after = nch; /* chunks from `after` on: prefilled */
  for (uint32_t i = nch; i-- > 0;)
    if (cached[i]) {
      after = i + 1;
      break;
    }
  for (uint32_t i = 0; i < nch; i++, k++) {
    b[k].kind = ch[i].kind;
    b[k].tokens = req->tokens + ch[i].ch.start;
    b[k].n_tokens = ch[i].ch.n_tokens;
    b[k].stored_pos0 = ch[i].kind == KVS_SEG_PREFIX ? ch[i].ch.start : 0;
    b[k].cached = cached[i] != 0;
    if ((stateful || i >= after) && !cached[i]) b[k].kind = KVS_SEG_NEW, b[k].stored_pos0 = 0;
    pos = ch[i].ch.start + ch[i].ch.n_tokens;
  }
  for (uint32_t i = 0; i < req->n_segs; i++) {
    if (req->segs[i].kind != KVS_SEG_NEW) continue;
    b[k].kind = KVS_SEG_NEW, b[k].tokens = req->tokens + pos, b[k].n_tokens = req->segs[i].n_tokens;
    pos += req->segs[i].n_tokens, k++;
  }
  *out = b, *n_out = k;
  return KVS_OK;
}

kvs_err kvs_reuse_run_loader(kvs_engine *e, kvs_engine_seq *s, const kvs_reuse_request *req,
                             uint32_t prefix_chunk_tokens, const int *cached,
                             kvs_blend_load_fn load, void *ctx, const kvs_blend_opts *o,
                             float *logits, kvs_blend_stats *stats) {
  if (!e || !s || !req || !o) return KVS_EINVAL;
  kvs__rchunk *ch;
  uint32_t nch;
  KVS_TRY(kvs__cut(req, NULL, prefix_chunk_tokens, &ch, &nch, NULL));
  int *cz = calloc(nch + 1, sizeof *cz);
  kvs_err err = cz ? KVS_OK : KVS_ENOMEM;
  for (uint32_t i = 0; !err && cached && i < nch; i++)
    cz[i] = cached[i];
  kvs_blend_segment *b = NULL;
  uint32_t nb = 0;
  int stateful = !(e->ops->embed && e->ops->layer && e->ops->layer_kv);
  for (uint32_t i = 0, cut = 0; !err && stateful && i < nch; i++) /* a cached prefix only */
    cut |= !cz[i], cz[i] = cz[i] && !cut;
  if (!err) err = blend_segs(req, ch, nch, cz, stateful, &b, &nb);
  if (!err) err = kvs_blend_run(e, s, b, nb, load, ctx, o, logits, stats);
  free(b), free(cz), free(ch);
  return err;
}

/* ------------------------------------------------------------ the loader */
typedef struct ldctx {
  kvs_reuse *r;
  kvs__rchunk *ch;
  uint32_t nch;
  /* bench_tier_bytes_per_s: per tier, the bytes handed over and since when */
  uint64_t given[KVS_REUSE_TIERS], t0[KVS_REUSE_TIERS];
} ldctx;

static void sleep_until(uint64_t t_ns) {
  for (uint64_t now = kvs_now_ns(); now < t_ns; now = kvs_now_ns()) {
    uint64_t d = t_ns - now;
    struct timespec ts = {.tv_sec = (time_t)(d / 1000000000u), .tv_nsec = (long)(d % 1000000000u)};
    nanosleep(&ts, NULL);
  }
}

/* blend's loader thread: wait for layer `layer` of chunk `seg`, copy its K
 * and V planes into blend's stage (host memcpy, or device to device) */
static kvs_err load_layer(void *vctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  ldctx *x = vctx;
  if (seg >= x->nch || !x->ch[seg].op) return KVS_EINTERNAL;
  kvs__rchunk *c = &x->ch[seg];
  uint64_t t0 = kvs_now_ns();
  kvs_err err = kvs_op_wait_layers(c->op, layer + 1);
  size_t plane = (size_t)kvs_layout_plane_elems(&x->r->info.layout, c->ch.n_tokens) *
                 kvs_dtype_size(x->r->info.layout.dtype);
  double cap = x->r->o.bench_tier_bytes_per_s[c->tier];
  if (!err && cap > 0) { /* bench only: a slowed tier */
    x->given[c->tier] += 2 * plane;
    sleep_until(x->t0[c->tier] + (uint64_t)(x->given[c->tier] / cap * 1e9));
  }
  uint64_t now = kvs_now_ns();
  /* waited: the data arrived now (fetch-bound, an exact sample); else it was
   * there before (the sample only bounds the time from above) */
  int waited = now - t0 > 50000;
  if (layer == 0) c->t_first = now, c->waited_first = waited;
  if (layer + 1 == x->r->info.layout.n_layers) c->t_last = now, c->waited_last = waited;
  if (err) {
    c->failed = 1;
    return err;
  }
  const char *src = (const char *)c->buf + 2 * (size_t)layer * plane;
  if (!x->r->dev) {
    memcpy(k, src, plane);
    memcpy(v, src + plane, plane);
    return KVS_OK;
  }
  KVS_TRY(kvs_gpu_copy_d2d(k, src, plane, x->r->stream));
  KVS_TRY(kvs_gpu_copy_d2d(v, src + plane, plane, x->r->stream));
  return kvs_gpu_sync(x->r->stream);
}

static void ewma(double *x, double v, double a) { *x = *x * (1 - a) + v * a; }

/* A get's device output buffer of at least n bytes: the smallest kept one
 * that fits, else a new one (*cap: its size). */
static kvs_err gbuf_take(kvs_reuse *r, size_t n, void **p, size_t *cap) {
  pthread_mutex_lock(&r->mu);
  uint32_t best = r->n_gpool;
  int found = 0;
  for (uint32_t i = 0; i < r->n_gpool; i++)
    if (r->gpool[i].bytes >= n && (best == r->n_gpool || r->gpool[i].bytes < r->gpool[best].bytes))
      best = i;
  if (best < r->n_gpool) {
    *p = r->gpool[best].p, *cap = r->gpool[best].bytes, found = 1;
    r->gpool[best] = r->gpool[--r->n_gpool];
    r->ct.get_pool_hits++;
  }
  pthread_mutex_unlock(&r->mu);
  if (found) return KVS_OK;
  *cap = n;
  return kvs_gpu_alloc(p, n);
}

static void gbuf_give(kvs_reuse *r, void *p, size_t cap) {
  if (!p) return;
  pthread_mutex_lock(&r->mu);
  int kept = r->n_gpool < KVS__GPOOL;
  if (kept) r->gpool[r->n_gpool].p = p, r->gpool[r->n_gpool++].bytes = cap;
  pthread_mutex_unlock(&r->mu);
  if (!kept) kvs_gpu_free(p);
}

static void drop_gets(kvs_reuse *r, kvs__rchunk *ch, uint32_t nch) {
  for (uint32_t i = 0; i < nch; i++) {
    kvs_op_free(ch[i].op), ch[i].op = NULL;
    if (r->dev)
      gbuf_give(r, ch[i].buf, ch[i].buf_cap);
    else
      free(ch[i].buf);
    ch[i].buf = NULL, ch[i].buf_cap = 0;
  }
}

static kvs_err start_gets(kvs_reuse *r, const kvs_reuse_request *req, kvs__rchunk *ch, uint32_t nch,
                          ldctx *x) {
  kvs_get_opts go = {.flags = r->dev ? KVS_GET_DEVICE : 0};
  memset(x->given, 0, sizeof x->given);
  uint64_t now = kvs_now_ns();
  for (int t = 0; t < KVS_REUSE_TIERS; t++)
    x->t0[t] = now;
  for (uint32_t i = 0; i < nch; i++) {
    kvs__rchunk *c = &ch[i];
    c->t_first = c->t_last = 0, c->failed = 0, c->waited_first = c->waited_last = 0;
    if (c->decision != KVS_REUSE_LOAD) continue;
    uint64_t cap = kvs_get_bound(&r->info.layout, c->ch.n_tokens, &go);
    kvs_err err = KVS_OK;
    c->buf = NULL, c->buf_cap = 0;
    if (r->dev)
      err = gbuf_take(r, cap, &c->buf, &c->buf_cap);
    else
      c->buf = malloc(cap), c->buf_cap = cap, err = c->buf ? KVS_OK : KVS_ENOMEM;
    c->t_start = kvs_now_ns();
    if (!err)
      err = kvs_get_start(r->c, &r->info.model_id, req->tokens, &c->ch, &r->info.layout, c->buf,
                          cap, &go, &c->op);
    if (err) { /* this one is recomputed instead */
      if (r->dev)
        gbuf_give(r, c->buf, c->buf_cap);
      else
        free(c->buf);
      c->buf = NULL, c->buf_cap = 0, c->op = NULL;
      c->decision = KVS_REUSE_MISS, c->failed = 1;
    }
  }
  return KVS_OK;
}

/* ------------------------------------------------------------ the plan */
/* A state-restore engine loads a leading run of chunks only: after the first
 * chunk not loaded, hits are recomputed (prefilled) too. */
static void cut_tail(kvs__rchunk *ch, uint32_t nch) {
  int cut = 0;
  for (uint32_t i = 0; i < nch; i++) {
    if (cut && ch[i].decision == KVS_REUSE_LOAD) ch[i].decision = KVS_REUSE_RECOMPUTE;
    cut |= ch[i].decision != KVS_REUSE_LOAD;
  }
}

/* xorshift64*: exploration's coin (seeded: the same decisions every run) */
static double coin(kvs_reuse *r) {
  uint64_t x = r->rng;
  x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
  r->rng = x;
  return (double)((x * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

/* Per chunk LOAD / RECOMPUTE / MISS. The estimates come from the tier's
 * figures: its gets run at once, so the latency is paid once per tier and
 * request (shared by its hits) and bytes/s is the tier's, not one get's. A
 * tier never measured is loaded (the first request warms it up, the second
 * measures it). When every hit of a measured tier is recomputed, one is
 * loaded anyway if the tier's figures are old (exploration: a plan that only
 * recomputes never learns that the tier became fast). Under r->mu. */
static int plan(kvs_reuse *r, kvs__rchunk *ch, uint32_t nch, const uint8_t *status, double spt,
                kvs_reuse_result *rz) {
  uint64_t tb = kvs_layout_token_bytes(&r->info.layout);
  uint32_t hits[KVS_REUSE_TIERS] = {0}, loads[KVS_REUSE_TIERS] = {0};
  double el[KVS_REUSE_TIERS] = {0}, er[KVS_REUSE_TIERS] = {0};
  for (uint32_t i = 0; i < nch; i++) {
    kvs__rchunk *c = &ch[i];
    c->tier = status[i] ? (uint8_t)(status[i] - 1) : 0;
    if (c->tier >= KVS_REUSE_TIERS) c->tier = KVS_REUSE_TIERS - 1;
    c->decision = KVS_REUSE_MISS;
    if (status[i]) hits[c->tier]++;
  }
  for (uint32_t i = 0; i < nch; i++) {
    kvs__rchunk *c = &ch[i];
    if (!status[i]) continue;
    int t = c->tier;
    uint64_t dec = tb * c->ch.n_tokens;
    kvs_cost_model cm = {.fetch_bytes_per_s = r->bps[t],
                         .fetch_latency_s = r->lat[t] / hits[t],
                         .decode_bytes_per_s =
                             r->o.decode_bytes_per_s > 0 ? r->o.decode_bytes_per_s : INFINITY,
                         .prefill_s_per_token = spt,
                         .recompute_ratio = c->kind == KVS_SEG_CONTENT ? r->rr : 0};
    kvs_load_plan pl = kvs_blend_plan(&cm, dec, dec, c->ch.n_tokens);
    c->est_load_s = pl.load_s, c->est_recompute_s = pl.recompute_s;
    rz->est_load_s += pl.load_s, rz->est_recompute_s += pl.recompute_s;
    el[t] += pl.load_s, er[t] += pl.recompute_s;
    int load = r->o.policy == KVS_REUSE_PLAN_ALWAYS_LOAD || !r->samples[t] ? 1 : pl.load;
    c->decision = load ? KVS_REUSE_LOAD : KVS_REUSE_RECOMPUTE;
    loads[t] += load;
  }
  if (r->o.policy != KVS_REUSE_PLAN_AUTO) return 0;
  int eps = r->o.explore_epsilon > 0 && coin(r) < r->o.explore_epsilon;
  for (int t = 0; t < KVS_REUSE_TIERS; t++) {
    if (!hits[t] || loads[t]) continue;
    uint64_t age = r->req_no - r->last_sample[t], every = r->o.explore_every;
    int close = el[t] < r->o.explore_factor * er[t];
    if (!(eps || age >= every || (close && age >= (every + 3) / 4))) continue;
    for (uint32_t i = 0; i < nch; i++)
      if (ch[i].decision == KVS_REUSE_RECOMPUTE && ch[i].tier == t) {
        ch[i].decision = KVS_REUSE_LOAD, rz->n_explore++;
        break;
      }
  }
  return eps;
}

/* The plan's cost (s/token): the calibrated one once sampled, else the
 * engine's prefill cost. Under r->mu. */
static double cost_of(const kvs_reuse *r, int what, double spt) {
  return r->cost_samples[what] ? r->cost[what] : spt;
}

/* Request level: run a plain full prefill instead of the plan? Yes when the
 * plan loads nothing (the blend path would only recompute, slower than the
 * engine's own prefill), or when its estimate (loads + recomputes at the
 * calibrated blend-path cost + the NEW tail) exceeds a full prefill's -
 * unless the plan explores, loads a tier never measured, or a loaded tier's
 * last sample is explore_every requests old (or the epsilon coin fell): then
 * the plan runs so that the tier's figures stay current. Under r->mu. */
static int want_full(kvs_reuse *r, const kvs__rchunk *ch, uint32_t nch, uint32_t n_tokens,
                     uint32_t n_ctx, double spt, int eps, kvs_reuse_result *rz) {
  double rc = cost_of(r, KVS_REUSE_COST_RECOMPUTE, spt),
         full = cost_of(r, KVS_REUSE_COST_FULL, spt);
  double est = (double)(n_tokens - n_ctx) * full;
  uint32_t n_load = 0, after = 0; /* chunks after the last loaded one are prefilled */
  int due = 0;
  for (uint32_t i = 0; i < nch; i++)
    if (ch[i].decision == KVS_REUSE_LOAD) after = i + 1;
  for (uint32_t i = 0; i < nch; i++) {
    const kvs__rchunk *c = &ch[i];
    if (c->decision != KVS_REUSE_LOAD) {
      est += (double)c->ch.n_tokens * (i >= after ? full : rc);
      continue;
    }
    est += c->est_load_s, n_load++;
    uint64_t age = r->req_no - r->last_sample[c->tier];
    if (!r->samples[c->tier] || age >= r->o.explore_every || eps) due = 1;
  }
  rz->est_plan_s = est, rz->est_full_s = (double)n_tokens * full;
  if (r->o.policy == KVS_REUSE_PLAN_ALWAYS_RECOMPUTE) return 0;
  if (!n_load) return 1;
  if (r->o.policy != KVS_REUSE_PLAN_AUTO || rz->n_explore || due) return 0;
  /* a full prefill never measured here is tried once when the prior says it
   * is within 4x of the plan: the engine's prefill cost averages all its
   * prefills (short ones cost more per token), a poor prior for a long one */
  int clock = !(r->o.prefill_s_per_token > 0) || r->o.cost_fn;
  if (clock && !r->cost_samples[KVS_REUSE_COST_FULL] && rz->est_full_s < 4 * rz->est_plan_s)
    return 1;
  return rz->est_plan_s > rz->est_full_s;
}

/* One cost sample into its estimate: the first replaces the prior, one 4x
 * lower replaces the estimate (a path estimated too slow is not chosen, so
 * not measured again), else an EWMA. Under r->mu. */
static void cost_update(kvs_reuse *r, int what, double v) {
  if (!r->cost_samples[what]++ || v * 4 < r->cost[what])
    r->cost[what] = v;
  else
    ewma(&r->cost[what], v, r->o.ewma_alpha);
}

/* One measured cost into its EWMA (the first sample replaces the prior);
 * cost_fn may replace it. Under r->mu. */
static void feed_cost_locked(kvs_reuse *r, int what, uint32_t n, double v) {
  if (r->o.cost_fn)
    r->o.cost_fn(r->o.cost_ctx, (uint32_t)what, n, &v);
  else if (r->o.prefill_s_per_token > 0)
    return; /* a fixed cost: decisions independent of the clock */
  if (!(v > 0) || !isfinite(v)) return;
  cost_update(r, what, v);
}

kvs_err kvs_reuse_feed_cost(kvs_reuse *r, uint32_t what, double s_per_token) {
  if (!r || what > KVS_REUSE_COST_FULL || !(s_per_token > 0) || !isfinite(s_per_token))
    return KVS_EINVAL;
  pthread_mutex_lock(&r->mu);
  cost_update(r, (int)what, s_per_token);
  pthread_mutex_unlock(&r->mu);
  return KVS_OK;
}

/* One sample into an estimate: an exact one moves it (the mean of the first
 * samples, then an EWMA), a bound only towards `better`; one 4x better than
 * the estimate replaces it (an estimate made too slow by a set-up or an old
 * state; a too-fast one corrects itself: the tier is loaded, so measured). */
static void update(double *est, double v, double a, int exact, int better_is_lower) {
  if (!(v > 0) || !isfinite(v)) return;
  int better = better_is_lower ? v < *est : v > *est;
  int much = better_is_lower ? v * 4 < *est : v > *est * 4;
  if (much)
    *est = v;
  else if (exact || better)
    ewma(est, v, a);
}

static void feed_locked(kvs_reuse *r, int t, double lat, int lat_exact, double bps, int bps_exact) {
  double a = r->o.ewma_alpha, n = (double)r->samples[t] + 1;
  if (1 / n > a) a = 1 / n; /* the first sample replaces the prior */
  update(&r->lat[t], lat > 1e-9 ? lat : 1e-9, a, lat_exact, 1);
  update(&r->bps[t], bps, a, bps_exact, 0);
  r->samples[t]++;
  r->last_sample[t] = r->req_no;
}

kvs_err kvs_reuse_feed(kvs_reuse *r, uint32_t tier, double latency_s, double bytes_per_s,
                       int exact) {
  if (!r || tier >= KVS_REUSE_TIERS || !(latency_s >= 0) || !(bytes_per_s > 0) ||
      !isfinite(latency_s) || !isfinite(bytes_per_s))
    return KVS_EINVAL;
  pthread_mutex_lock(&r->mu);
  feed_locked(r, (int)tier, latency_s, exact, bytes_per_s, exact);
  pthread_mutex_unlock(&r->mu);
  return KVS_OK;
}

/* This request's gets, per tier, as one sample: latency from the first get's
 * start to the first layer the loader had, bytes/s over the layers after it.
 * Exact where the loader waited for that data (fetch-bound), else a bound.
 * A tier's first request in this kvs_reuse is not sampled: it paid the
 * set-up (connection, shared-memory lease and mapping, device buffers).
 * Under r->mu. */
static void measure(kvs_reuse *r, const kvs__rchunk *ch, uint32_t nch, uint64_t tb,
                    kvs_reuse_result *rz) {
  uint32_t L = r->info.layout.n_layers;
  for (int t = 0; t < KVS_REUSE_TIERS; t++) {
    uint64_t bytes = 0, t0 = UINT64_MAX, first = UINT64_MAX, last = 0, done = 0;
    int wf = 0, wl = 0;
    for (uint32_t i = 0; i < nch; i++) {
      const kvs__rchunk *c = &ch[i];
      if (c->tier != t || c->decision != KVS_REUSE_LOAD || !c->t_first || !c->t_last) continue;
      bytes += tb * c->ch.n_tokens;
      if (c->t_start < t0) t0 = c->t_start;
      if (c->t_first < first) first = c->t_first, wf = c->waited_first;
      if (c->t_last >= last) last = c->t_last, wl = c->waited_last;
      uint64_t d = kvs_op_finished_ns(c->op);
      if (d > done) done = d;
    }
    if (!bytes) continue;
    if (!r->warm[t]) {
      r->warm[t] = 1, rz->n_warmup++;
      continue;
    }
    double lat = first > t0 ? (first - t0) / 1e9 : 0;
    double bps = L > 1 && last > first ? bytes * (double)(L - 1) / L / ((last - first) / 1e9)
                 : last > t0           ? bytes / ((last - t0) / 1e9)
                                       : 0;
    /* The loader did not wait for the last layer (the data was there before:
     * the usual case when the fetch outruns the engine): its span measures
     * the engine, a bound only. The gets' own span, from the first start to
     * the last get finishing (every group decoded), is the tier's exact
     * rate; without it the estimate could stay at a slow prior forever
     * (kvs-serve on the H100: 2 GB/s prior, hundreds of hits recomputed). */
    if (!wl && done > t0) bps = bytes / ((done - t0) / 1e9), wl = 1;
    if (r->o.sample_fn) {
      int exact = wf && wl;
      r->o.sample_fn(r->o.sample_ctx, (uint32_t)t, bytes, &lat, &bps, &exact);
      wf = wl = exact;
    }
    feed_locked(r, t, lat, wf, bps, wl);
  }
}

kvs_err kvs_reuse_run(kvs_reuse *r, kvs_engine_seq *s, const kvs_reuse_request *req, float *logits,
                      kvs_reuse_result *res, uint8_t *decisions, uint32_t cap_decisions) {
  if (!r || !s) return KVS_EINVAL;
  const kvs_engine_ops *ops = r->e->ops;
  uint64_t t0 = kvs_now_ns();
  kvs_reuse_result rz;
  memset(&rz, 0, sizeof rz);
  kvs__rchunk *ch;
  uint32_t nch, n_ctx;
  KVS_TRY(kvs__cut(req, &r->info.model_id, r->o.prefix_chunk_tokens, &ch, &nch, &n_ctx));
  if (ops->seq_len(r->e, s) != 0) {
    free(ch);
    return KVS_EINVAL;
  }
  kvs_chunk *lk = calloc(nch + 1, sizeof *lk);
  uint8_t *status = calloc(nch + 1, 1);
  int *cached = calloc(nch + 1, sizeof *cached);
  kvs_err err = lk && status && cached ? KVS_OK : KVS_ENOMEM;

  /* 1. plan: one LOOKUP for every chunk */
  for (uint32_t i = 0; i < nch; i++)
    lk[i] = ch[i].ch;
  if (!err && nch && r->o.policy != KVS_REUSE_PLAN_ALWAYS_RECOMPUTE)
    err = kvs_lookup(r->c, &r->info.model_id, req->tokens, req->n_tokens, lk, nch, KVS_LOOKUP_EACH,
                     status, NULL);
  rz.t_lookup_s = (kvs_now_ns() - t0) / 1e9;
  double spt = r->spt;
  if (!err && !(r->o.prefill_s_per_token > 0))
    ops->prefill_cost(r->e, 0, &spt); /* measured over the prefills so far */
  pthread_mutex_lock(&r->mu);
  if (r->o.prefill_s_per_token > 0)
    spt = r->o.prefill_s_per_token;
  else
    r->spt = spt;
  r->req_no++;
  int eps = plan(r, ch, nch, status, cost_of(r, KVS_REUSE_COST_RECOMPUTE, spt), &rz);
  if (!err && want_full(r, ch, nch, req->n_tokens, n_ctx, spt, eps, &rz)) {
    rz.full_prefill = 1;
    for (uint32_t i = 0; i < nch; i++)
      if (ch[i].decision == KVS_REUSE_LOAD) ch[i].decision = KVS_REUSE_RECOMPUTE;
  }
  pthread_mutex_unlock(&r->mu);
  rz.stages.lookup_s = rz.t_lookup_s;
  rz.stages.plan_s = (kvs_now_ns() - t0) / 1e9 - rz.t_lookup_s;

  /* 2. run: gets in flight, blend layer by layer; a failed get -> run again
   * with that chunk recomputed */
  ldctx x = {.r = r, .ch = ch, .nch = nch};
  kvs_blend_opts bo = r->o.blend;
  bo.load_device = r->dev;
  if (!err && rz.full_prefill) { /* the engine's own prefill: nothing fetched */
    uint64_t tp = kvs_now_ns();
    err = ops->prefill(r->e, s, req->tokens, req->n_tokens, 0, logits);
    rz.blend.n_prefilled = req->n_tokens;
    rz.blend.t_prefill_s = rz.blend.t_total_s = (kvs_now_ns() - tp) / 1e9;
    rz.stages.run_s = rz.blend.t_total_s;
  }
  for (int attempt = 0; !err && !rz.full_prefill && attempt < 2; attempt++) {
    if (r->stateful) cut_tail(ch, nch);
    uint64_t tg = kvs_now_ns();
    err = start_gets(r, req, ch, nch, &x);
    rz.stages.gets_s += (kvs_now_ns() - tg) / 1e9;
    for (uint32_t i = 0; i < nch; i++)
      cached[i] = ch[i].decision == KVS_REUSE_LOAD;
    kvs_blend_segment *b = NULL;
    uint32_t nb = 0;
    if (!err) err = blend_segs(req, ch, nch, cached, r->stateful, &b, &nb);
    uint64_t tb = kvs_now_ns();
    if (!err) err = kvs_blend_run(r->e, s, b, nb, load_layer, &x, &bo, logits, &rz.blend);
    rz.stages.run_s += (kvs_now_ns() - tb) / 1e9;
    free(b);
    int failed = 0;
    for (uint32_t i = 0; i < nch; i++) {
      kvs__rchunk *c = &ch[i];
      if (c->decision != KVS_REUSE_LOAD && !c->failed) continue;
      if (c->op && !c->failed && kvs_op_wait(c->op) != KVS_OK) c->failed = 1;
      if (c->failed) c->decision = KVS_REUSE_MISS, failed = 1;
    }
    if (!err || !failed || attempt == 1) break;
    /* a get failed (evicted after the lookup, a timeout): recompute it */
    drop_gets(r, ch, nch);
    rz.n_retry++;
    err = ops->seq_truncate(r->e, s, 0);
  }
  rz.t_total_s = (kvs_now_ns() - t0) / 1e9;

  /* measurements: per tier, fetch latency and bytes/s of this request's gets
   * together (they are in flight at once); the recompute share */
  pthread_mutex_lock(&r->mu);
  double a = r->o.ewma_alpha;
  for (uint32_t i = 0; !err && i < nch; i++) {
    kvs__rchunk *c = &ch[i];
    rz.n_chunks++;
    rz.n_load += c->decision == KVS_REUSE_LOAD;
    rz.n_recompute += c->decision == KVS_REUSE_RECOMPUTE;
    rz.n_miss += c->decision == KVS_REUSE_MISS;
    if (c->decision != KVS_REUSE_MISS) r->ct.hits_by_tier[c->tier]++;
    if (c->decision == KVS_REUSE_LOAD && c->t_first && c->t_last)
      rz.bytes_loaded += kvs_layout_token_bytes(&r->info.layout) * c->ch.n_tokens;
  }
  if (!err) measure(r, ch, nch, kvs_layout_token_bytes(&r->info.layout), &rz);
  /* the costs the plan compares: a full prefill's, or the blend path's per
   * token run through the layers (its load waits and NEW tail excluded) */
  if (!err && rz.full_prefill) {
    feed_cost_locked(r, KVS_REUSE_COST_FULL, req->n_tokens, rz.blend.t_prefill_s / req->n_tokens);
  } else if (!err && rz.blend.n_recomputed) {
    double t = rz.blend.t_total_s - rz.blend.t_prefill_s - rz.blend.t_load_wait_s;
    feed_cost_locked(r, KVS_REUSE_COST_RECOMPUTE, rz.blend.n_recomputed, t / rz.blend.n_recomputed);
  }
  if (!err && rz.blend.n_candidates && r->o.blend.sel.strategy != KVS_SEL_NONE) {
    uint32_t cand = rz.blend.n_candidates - rz.blend.n_forced;
    uint32_t rec =
        rz.blend.n_recomputed > rz.blend.n_forced ? rz.blend.n_recomputed - rz.blend.n_forced : 0;
    if (cand) ewma(&r->rr, (double)rec / cand, a);
  }
  if (!err) {
    r->ct.requests++, r->ct.chunks += nch, r->ct.retries += rz.n_retry;
    r->ct.loads += rz.n_load, r->ct.recomputes += rz.n_recompute, r->ct.misses += rz.n_miss;
    r->ct.hits += rz.n_load + rz.n_recompute;
    r->ct.bytes_loaded += rz.bytes_loaded;
  }
  if (!err) r->ct.explores += rz.n_explore, r->ct.warmups += rz.n_warmup;
  if (!err) r->ct.full_prefills += rz.full_prefill;
  double c_rc = cost_of(r, KVS_REUSE_COST_RECOMPUTE, spt),
         c_full = cost_of(r, KVS_REUSE_COST_FULL, spt);
  double l0 = r->lat[0], b0 = r->bps[0], l1 = r->lat[1], b1 = r->bps[1], rr = r->rr;
  unsigned long long n0 = r->samples[0], n1 = r->samples[1];
  unsigned long long a0 = r->req_no - r->last_sample[0], a1 = r->req_no - r->last_sample[1];
  pthread_mutex_unlock(&r->mu);
  drop_gets(r, ch, nch);
  rz.stages.finish_s = (kvs_now_ns() - t0) / 1e9 - rz.stages.lookup_s - rz.stages.plan_s -
                       rz.stages.gets_s - rz.stages.run_s;
  if (rz.stages.finish_s < 0) rz.stages.finish_s = 0;
  if (!err)
    KVS_LOGD("reuse", "request",
             "tokens=%u chunks=%u load=%u recompute=%u miss=%u retry=%u explore=%u warmup=%u "
             "full_prefill=%u lookup_ms=%.3f est_load_ms=%.3f est_recompute_ms=%.3f "
             "est_plan_ms=%.3f est_full_ms=%.3f prefill_us_per_tok=%.3f "
             "recompute_us_per_tok=%.3f full_us_per_tok=%.3f recompute_ratio=%.3f "
             "ram_latency_ms=%.3f ram_gbps=%.3f ram_samples=%llu "
             "ram_age=%llu disk_latency_ms=%.3f disk_gbps=%.3f disk_samples=%llu disk_age=%llu "
             "bytes_loaded=%llu plan_ms=%.3f gets_ms=%.3f run_ms=%.3f load_wait_ms=%.3f "
             "finish_ms=%.3f ttft_ms=%.3f",
             req->n_tokens, rz.n_chunks, rz.n_load, rz.n_recompute, rz.n_miss, rz.n_retry,
             rz.n_explore, rz.n_warmup, rz.full_prefill, rz.t_lookup_s * 1e3, rz.est_load_s * 1e3,
             rz.est_recompute_s * 1e3, rz.est_plan_s * 1e3, rz.est_full_s * 1e3, spt * 1e6,
             c_rc * 1e6, c_full * 1e6, rr, l0 * 1e3, b0 / 1e9, n0, a0, l1 * 1e3, b1 / 1e9, n1, a1,
             (unsigned long long)rz.bytes_loaded, rz.stages.plan_s * 1e3, rz.stages.gets_s * 1e3,
             rz.stages.run_s * 1e3, rz.blend.t_load_wait_s * 1e3, rz.stages.finish_s * 1e3,
             rz.t_total_s * 1e3);

  /* 3. store what was computed here (off the critical path: the logits are
   * out); a RECOMPUTE chunk is stored already (the lookup found it) */
  if (!err && r->o.store)
    for (uint32_t i = 0; i < nch; i++) {
      if (ch[i].decision != KVS_REUSE_MISS) continue;
      kvs_err se = kvs__store_from_seq(r, s, req, &ch[i]);
      if (se == KVS_EAGAIN)
        rz.n_store_dropped++;
      else if (se == KVS_OK)
        rz.n_store_queued++;
    }
  for (uint32_t i = 0; decisions && i < nch && i < cap_decisions; i++)
    decisions[i] = (uint8_t)ch[i].decision;
  if (res) *res = rz;
  free(lk), free(status), free(cached), free(ch);
  return err;
}

kvs_err kvs_reuse_store_backlog(kvs_reuse *r, uint32_t *queued, uint32_t *active) {
  if (!r) return KVS_EINVAL;
  pthread_mutex_lock(&r->qmu);
  if (queued) *queued = r->n_q;
  if (active) *active = r->n_active;
  pthread_mutex_unlock(&r->qmu);
  return KVS_OK;
}

kvs_err kvs_reuse_get_counters(kvs_reuse *r, kvs_reuse_counters *out) {
  if (!r || !out) return KVS_EINVAL;
  pthread_mutex_lock(&r->mu);
  *out = r->ct;
  for (int t = 0; t < KVS_REUSE_TIERS; t++)
    out->latency_s[t] = r->lat[t], out->bytes_per_s[t] = r->bps[t], out->samples[t] = r->samples[t],
    out->sample_age[t] = r->req_no - r->last_sample[t];
  out->prefill_s_per_token = r->spt, out->recompute_ratio = r->rr;
  out->recompute_s_per_token = cost_of(r, KVS_REUSE_COST_RECOMPUTE, r->spt);
  out->full_s_per_token = cost_of(r, KVS_REUSE_COST_FULL, r->spt);
  out->recompute_samples = r->cost_samples[0], out->full_samples = r->cost_samples[1];
  pthread_mutex_unlock(&r->mu);
  kvs__store_counters(r, out);
  return KVS_OK;
}
