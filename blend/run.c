/* kvs_blend_run: the layer-by-layer pipeline.
 *
 * Layer l goes: [loader thread] load + re-rotate every cached segment's
 * layer-l KV into a staging buffer (two buffers: the loader works on l+1
 * while the engine recomputes l) -> [caller thread] kv_write the staged KV,
 * then run the engine's layer l over the tokens being recomputed. At the
 * check layer the fresh K/V of every candidate (layer_kv) is compared with
 * what was loaded, and the strategy keeps its chosen tokens from then on. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_engine.h"
#include "kvs_gpu.h"
#include "kvs_gpu_blend.h"

/* Buffers the engine reads live in its memory (host, or device for a GPU
 * engine); everything blend decides on stays on the host.
 *
 * Device and pinned host buffers are kept between runs (process-wide, at
 * most BC_FREE of them and BC_BYTES in all, smallest fit first): cudaFree and
 * cudaFreeHost synchronise the whole device, so a run that freed its buffers
 * waited for everything else queued on it (a server's stores in flight), and
 * cudaMalloc of a large buffer costs milliseconds. A buffer is handed back
 * after the run, whose work on it is done by then (the logits are out). */
#define BC_LIVE  128
#define BC_FREE  32
#define BC_BYTES ((size_t)3 << 30)
typedef struct bc_ent {
  void *p;
  size_t bytes;
  int host; /* pinned host, else device */
} bc_ent;
static pthread_mutex_t bc_mu = PTHREAD_MUTEX_INITIALIZER;
static bc_ent bc_live[BC_LIVE], bc_free[BC_FREE];
static uint32_t bc_n_free;
static size_t bc_free_bytes;

static void *bc_take(int host, size_t n) {
  void *p = NULL;
  pthread_mutex_lock(&bc_mu);
  uint32_t best = BC_FREE;
  for (uint32_t i = 0; i < bc_n_free; i++)
    if (bc_free[i].host == host && bc_free[i].bytes >= n &&
        (best == BC_FREE || bc_free[i].bytes < bc_free[best].bytes))
      best = i;
  bc_ent got = {0};
  if (best < BC_FREE) {
    got = bc_free[best];
    bc_free_bytes -= got.bytes;
    bc_free[best] = bc_free[--bc_n_free];
  }
  pthread_mutex_unlock(&bc_mu);
  if (!got.p) {
    got.bytes = n, got.host = host;
    if ((host ? kvs_gpu_alloc_host(&got.p, n) : kvs_gpu_alloc(&got.p, n)) != KVS_OK) return NULL;
  }
  p = got.p;
  pthread_mutex_lock(&bc_mu);
  uint32_t i = 0;
  while (i < BC_LIVE && bc_live[i].p)
    i++;
  if (i < BC_LIVE) bc_live[i] = got; /* else not kept when given back */
  pthread_mutex_unlock(&bc_mu);
  return p;
}

static void bc_give(int host, void *p) {
  if (!p) return;
  pthread_mutex_lock(&bc_mu);
  bc_ent e = {0};
  for (uint32_t i = 0; i < BC_LIVE; i++)
    if (bc_live[i].p == p) {
      e = bc_live[i], bc_live[i].p = NULL;
      break;
    }
  int kept = e.p && bc_n_free < BC_FREE && bc_free_bytes + e.bytes <= BC_BYTES;
  if (kept) bc_free[bc_n_free++] = e, bc_free_bytes += e.bytes;
  pthread_mutex_unlock(&bc_mu);
  if (!kept && host)
    kvs_gpu_free_host(p);
  else if (!kept)
    kvs_gpu_free(p);
}

static void *emalloc(int dev, size_t n) {
  if (dev) return bc_take(0, n ? n : 1);
  return malloc(n ? n : 1);
}
static void efree(int dev, void *p) {
  if (dev)
    bc_give(0, p);
  else
    free(p);
}

typedef struct stage {
  void *k, *v;    /* per cached segment, packed in segment order */
  uint32_t layer; /* which layer the buffer holds */
  int full;       /* loader wrote it, engine has not consumed it */
  kvs_err err;
} stage;

typedef struct run {
  kvs_engine *e;
  kvs_engine_info info;
  const kvs_blend_segment *segs;
  uint32_t n_segs;
  uint32_t *slot0;    /* [n_segs] */
  size_t *off;        /* [n_segs] element offset of a segment in a stage buffer */
  size_t stage_elems; /* elements of K (or V) in one stage buffer */
  kvs_blend_load_fn load;
  void *ctx;
  stage st[2];
  int gpu_shift; /* device engine: K is re-rotated on the GPU, not here */
  int dev_stage; /* device engine + load_device: stage buffers are device memory */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
} run;

static size_t tok_elems(const kvs_engine_info *in) {
  return (size_t)in->layout.n_kv_heads * in->layout.head_dim;
}

/* Fill stage buffer b with layer `layer` (load, then shift K to the slots). */
static kvs_err fill(run *r, stage *b, uint32_t layer) {
  size_t es = kvs_dtype_size(r->info.layout.dtype);
  for (uint32_t i = 0; i < r->n_segs; i++) {
    const kvs_blend_segment *sg = &r->segs[i];
    if (sg->kind == KVS_SEG_NEW || !sg->cached) continue;
    char *k = (char *)b->k + r->off[i] * es, *v = (char *)b->v + r->off[i] * es;
    KVS_TRY(r->load(r->ctx, i, layer, k, v));
    int64_t delta = (int64_t)r->slot0[i] - sg->stored_pos0;
    if (delta && !r->gpu_shift) {
      float table[KVS_MAX_HEAD_DIM];
      KVS_TRY(kvs_rope_shift_table(&r->info.layout, delta, table));
      KVS_TRY(kvs_rope_shift(&r->info.layout, k, sg->n_tokens, tok_elems(&r->info), table));
    }
  }
  return KVS_OK;
}

static void *loader(void *arg) {
  run *r = arg;
  for (uint32_t l = 0; l < r->info.layout.n_layers; l++) {
    stage *b = &r->st[l & 1];
    pthread_mutex_lock(&r->mu);
    while (b->full && !r->stop)
      pthread_cond_wait(&r->cv, &r->mu);
    int stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    if (stop) break;
    kvs_err err = fill(r, b, l);
    pthread_mutex_lock(&r->mu);
    b->layer = l, b->err = err, b->full = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (err) break;
  }
  return NULL;
}

/* Wait for layer l's stage (threaded) or fill it here (no_overlap). */
static kvs_err take(run *r, uint32_t l, int threaded, double *waited) {
  stage *b = &r->st[l & 1];
  if (!threaded) {
    uint64_t t0 = kvs_now_ns();
    b->err = fill(r, b, l);
    *waited += (kvs_now_ns() - t0) / 1e9;
    return b->err;
  }
  uint64_t t0 = kvs_now_ns();
  pthread_mutex_lock(&r->mu);
  while (!(b->full && b->layer == l))
    pthread_cond_wait(&r->cv, &r->mu);
  kvs_err err = b->err;
  pthread_mutex_unlock(&r->mu);
  *waited += (kvs_now_ns() - t0) / 1e9;
  return err;
}

static void give_back(run *r, uint32_t l, int threaded) {
  if (!threaded) return;
  pthread_mutex_lock(&r->mu);
  r->st[l & 1].full = 0;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

/* Keep rows of hidden (n, w) whose keep[] is set, in order. */
static uint32_t compact(float *hidden, uint32_t *idx, uint32_t n, size_t w, const uint8_t *keep) {
  uint32_t m = 0;
  for (uint32_t i = 0; i < n; i++)
    if (keep[i]) {
      if (m != i) {
        memmove(hidden + (size_t)m * w, hidden + (size_t)i * w, w * sizeof(float));
        idx[m] = idx[i];
      }
      m++;
    }
  return m;
}

kvs_err kvs_blend_run(kvs_engine *e, kvs_engine_seq *s, const kvs_blend_segment *segs,
                      uint32_t n_segs, kvs_blend_load_fn load, void *load_ctx,
                      const kvs_blend_opts *opts, float *logits, kvs_blend_stats *stats) {
  if (!e || !e->ops || !s || (!segs && n_segs) || !opts) return KVS_EINVAL;
  const kvs_engine_ops *ops = e->ops;
  uint64_t t_start = kvs_now_ns();
  kvs_blend_stats stz;
  memset(&stz, 0, sizeof stz);
  run r;
  memset(&r, 0, sizeof r);
  r.e = e, r.segs = segs, r.n_segs = n_segs, r.load = load, r.ctx = load_ctx;
  KVS_TRY(ops->info(e, &r.info));
  const int dv = r.info.mem == KVS_ENGINE_MEM_DEVICE;
  if (!dv && r.info.mem != KVS_ENGINE_MEM_HOST) return KVS_ENOTSUP;
  if (ops->seq_len(e, s) != 0) return KVS_EINVAL;
  const uint32_t L = r.info.layout.n_layers;
  const size_t W = tok_elems(&r.info), es = kvs_dtype_size(r.info.layout.dtype);
  const size_t E = r.info.n_embd;
  uint32_t check = opts->check_layer ? opts->check_layer : 1;
  if (check >= L) check = L - 1;
  const uint32_t strat = opts->sel.strategy;
  const int needs_dev = strat == KVS_SEL_CACHEBLEND || strat == KVS_SEL_ADAPTIVE;

  /* slots, the tail of NEW segments, candidates */
  uint32_t n_ctx = 0, n_new = 0, tail = n_segs, n_cand = 0, n_cached_tok = 0;
  for (uint32_t i = 0; i < n_segs; i++)
    if (segs[i].kind == KVS_SEG_NEW) {
      if (tail == n_segs) tail = i;
    } else if (tail != n_segs) {
      return KVS_EINVAL; /* NEW text must come after every reused segment */
    }
  r.slot0 = calloc(n_segs ? n_segs : 1, sizeof *r.slot0);
  r.off = calloc(n_segs ? n_segs : 1, sizeof *r.off);
  kvs_err err = (r.slot0 && r.off) ? KVS_OK : KVS_ENOMEM;
  for (uint32_t i = 0; !err && i < n_segs; i++) {
    if (segs[i].kind > KVS_SEG_NEW || (!segs[i].tokens && segs[i].n_tokens)) err = KVS_EINVAL;
    r.slot0[i] = n_ctx + n_new;
    if (segs[i].kind == KVS_SEG_NEW) {
      n_new += segs[i].n_tokens;
      continue;
    }
    n_ctx += segs[i].n_tokens;
    if (segs[i].kind == KVS_SEG_CONTENT || !segs[i].cached) n_cand += segs[i].n_tokens;
    if (segs[i].cached) {
      if (!load) err = KVS_EINVAL;
      r.off[i] = (size_t)n_cached_tok * W;
      n_cached_tok += segs[i].n_tokens;
    }
  }
  if (!err && (uint64_t)n_ctx + n_new > r.info.max_tokens) err = KVS_ETOOBIG;
  stz.n_ctx = n_ctx, stz.n_candidates = n_cand, stz.n_prefilled = n_new;

  /* candidate arrays: slot, token, chunk start, forced */
  uint32_t *idx = NULL;
  int32_t *tok = NULL;
  uint8_t *cstart = NULL, *forced = NULL, *sel = NULL;
  float *hidden = NULL, *hidden2 = NULL, *dev = NULL, *d_dev = NULL, *tables = NULL;
  void *d_stk = NULL, *d_stv = NULL; /* device copy of a layer's stage (GPU engine) */
  void *kz = NULL, *kf = NULL, *vf = NULL, *kl = NULL, *vl = NULL;
  r.stage_elems = (size_t)n_cached_tok * W;
  if (!err) {
    size_t nc = n_cand ? n_cand : 1;
    idx = malloc(nc * sizeof *idx), tok = malloc(nc * sizeof *tok);
    cstart = calloc(nc, 1), forced = calloc(nc, 1), sel = calloc(nc, 1);
    hidden = emalloc(dv, nc * E * sizeof *hidden);
    if (dv) hidden2 = emalloc(dv, nc * E * sizeof *hidden);
    if (dv && !hidden2) err = KVS_ENOMEM;
    r.gpu_shift = dv;
    r.dev_stage = dv && opts->load_device;
    for (int b = 0; b < 2; b++) { /* pinned for a GPU engine: one DMA per layer */
      if (r.dev_stage) {          /* load() fills device memory itself */
        r.st[b].k = emalloc(dv, r.stage_elems * es + 1);
        r.st[b].v = emalloc(dv, r.stage_elems * es + 1);
      } else if (dv) {
        r.st[b].k = bc_take(1, r.stage_elems * es + 1);
        r.st[b].v = bc_take(1, r.stage_elems * es + 1);
      } else {
        r.st[b].k = malloc(r.stage_elems * es + 1);
        r.st[b].v = malloc(r.stage_elems * es + 1);
      }
      if (!r.st[b].k || !r.st[b].v) err = KVS_ENOMEM;
    }
    if (dv && !err && n_cached_tok) {
      if (!r.dev_stage) {
        d_stk = emalloc(dv, r.stage_elems * es), d_stv = emalloc(dv, r.stage_elems * es);
        if (!d_stk || !d_stv) err = KVS_ENOMEM;
      }
      tables = malloc((size_t)n_segs * KVS_MAX_HEAD_DIM * sizeof *tables);
      if (!tables) err = KVS_ENOMEM;
      for (uint32_t i = 0; !err && i < n_segs; i++)
        if (segs[i].kind != KVS_SEG_NEW && segs[i].cached &&
            (int64_t)r.slot0[i] != segs[i].stored_pos0)
          err = kvs_rope_shift_table(&r.info.layout, (int64_t)r.slot0[i] - segs[i].stored_pos0,
                                     tables + (size_t)i * KVS_MAX_HEAD_DIM);
    }
    if (!idx || !tok || !cstart || !forced || !sel || !hidden) err = KVS_ENOMEM;
  }
  uint32_t m = 0; /* candidates filled */
  for (uint32_t i = 0; !err && i < tail; i++) {
    const kvs_blend_segment *sg = &segs[i];
    if (sg->kind != KVS_SEG_CONTENT && sg->cached) continue;
    for (uint32_t t = 0; t < sg->n_tokens; t++, m++) {
      idx[m] = r.slot0[i] + t, tok[m] = sg->tokens[t];
      cstart[m] = t == 0;
      forced[m] = !sg->cached;
    }
  }
  uint32_t n_forced = 0;
  for (uint32_t i = 0; i < m; i++)
    n_forced += forced[i];
  stz.n_forced = n_forced;
  /* an engine without layer ops (a state-restore engine) reuses only what
   * needs no recompute: cached segments, strategy none, nothing missing */
  if (!err && m && !(ops->embed && ops->layer && ops->layer_kv) &&
      (strat != KVS_SEL_NONE || n_forced))
    err = KVS_ENOTSUP;

  /* before the first layer: the strategies that need no deviation choose now */
  uint32_t n_run = 0;
  if (!err && !needs_dev) {
    uint32_t ns = 0;
    err = kvs_blend_select(&opts->sel, m, NULL, cstart, sel, &ns, NULL);
    for (uint32_t i = 0; i < m; i++)
      sel[i] |= forced[i];
  } else if (!err) {
    memset(sel, 1, m); /* every candidate runs the layers before the check layer */
  }
  uint64_t t_rc = kvs_now_ns();
  if (!err && m) {
    for (uint32_t i = 0; i < m; i++)
      tok[n_run] = tok[i], idx[n_run] = idx[i], n_run += sel[i] != 0;
    /* keep forced[] aligned with the run set for the check layer */
    if (needs_dev) n_run = m;
    if (n_run) err = ops->embed(e, tok, n_run, hidden);
  }
  double rc_s = (kvs_now_ns() - t_rc) / 1e9;

  /* per-segment zeros for missing chunks */
  uint32_t max_seg = 0;
  for (uint32_t i = 0; i < tail; i++)
    if (segs[i].n_tokens > max_seg) max_seg = segs[i].n_tokens;
  if (!err) {
    kz = calloc((size_t)max_seg * W + 1, es);
    if (!kz) err = KVS_ENOMEM;
  }

  pthread_t th;
  int threaded = 0;
  if (!err && n_cached_tok && !opts->no_overlap) {
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    threaded = pthread_create(&th, NULL, loader, &r) == 0;
    if (!threaded) {
      pthread_mutex_destroy(&r.mu);
      pthread_cond_destroy(&r.cv);
    }
  }

  for (uint32_t l = 0; !err && l < L; l++) {
    if (n_cached_tok) {
      err = take(&r, l, threaded, &stz.t_load_wait_s);
      const char *bk = r.st[l & 1].k, *bv = r.st[l & 1].v;
      if (!err && dv && !r.dev_stage) { /* the stage to the GPU in two copies, shift there */
        err = kvs_gpu_copy_h2d(d_stk, bk, r.stage_elems * es, NULL);
        if (!err) err = kvs_gpu_copy_h2d(d_stv, bv, r.stage_elems * es, NULL);
        bk = d_stk, bv = d_stv;
      }
      for (uint32_t i = 0; !err && i < tail; i++) {
        const kvs_blend_segment *sg = &segs[i];
        if (!sg->cached) continue;
        if (dv && (int64_t)r.slot0[i] != sg->stored_pos0)
          err = kvs_gpu_rope_shift(&r.info.layout, (char *)bk + r.off[i] * es, sg->n_tokens, W,
                                   tables + (size_t)i * KVS_MAX_HEAD_DIM, NULL);
      }
      /* one kv_write per run of cached segments that sit back to back both in
       * the stage and in the slots (usually all of them): a device engine
       * pays a synchronised copy per call */
      for (uint32_t i = 0; !err && i < tail;) {
        if (!segs[i].cached) {
          i++;
          continue;
        }
        uint32_t j = i + 1, n_run_tok = segs[i].n_tokens;
        while (j < tail && segs[j].cached && r.slot0[j] == r.slot0[i] + n_run_tok &&
               r.off[j] == r.off[i] + (size_t)n_run_tok * W)
          n_run_tok += segs[j++].n_tokens;
        err = ops->kv_write(e, s, l, r.slot0[i], n_run_tok, bk + r.off[i] * es, bv + r.off[i] * es);
        i = j;
      }
      if (err) break;
      give_back(&r, l, threaded);
    }
    for (uint32_t i = 0; !err && i < tail; i++)
      if (!segs[i].cached) err = ops->kv_write(e, s, l, r.slot0[i], segs[i].n_tokens, kz, kz);
    if (err) break;
    uint64_t t0 = kvs_now_ns();
    if (needs_dev && l == check && m) {
      /* fresh K/V of every candidate vs what was loaded */
      size_t kvb = (size_t)m * W * es;
      kf = emalloc(dv, kvb), vf = emalloc(dv, kvb), kl = emalloc(dv, kvb), vl = emalloc(dv, kvb);
      dev = malloc((size_t)m * sizeof *dev);
      if (dv) d_dev = emalloc(dv, (size_t)m * sizeof *dev);
      if (!kf || !vf || !kl || !vl || !dev || (dv && !d_dev)) {
        err = KVS_ENOMEM;
        break;
      }
      err = ops->layer_kv(e, l, m, idx, hidden, kf, vf); /* positions = slots */
      for (uint32_t a = 0; !err && a < m;) {             /* read loaded KV run by run of slots */
        uint32_t b = a + 1;
        while (b < m && idx[b] == idx[b - 1] + 1)
          b++;
        err = ops->kv_read(e, s, l, idx[a], b - a, (char *)kl + (size_t)a * W * es,
                           (char *)vl + (size_t)a * W * es);
        a = b;
      }
      if (err) break;
      if (r.info.layout.dtype != KVS_DTYPE_F16) {
        err = KVS_ENOTSUP;
        break;
      }
      if (dv) {
        err = kvs_gpu_blend_deviation_f16(&r.info.layout, m, kf, vf, kl, vl, d_dev, NULL);
        if (!err) err = kvs_gpu_copy_d2h(dev, d_dev, (size_t)m * sizeof *dev, NULL);
      } else {
        err = kvs_blend_deviation_f16(&r.info.layout, m, kf, vf, kl, vl, dev);
      }
      for (uint32_t i = 0; i < m; i++)
        if (forced[i]) dev[i] = 0; /* ranked apart: added below regardless */
      uint32_t ns = 0;
      if (!err) err = kvs_blend_select(&opts->sel, m, dev, cstart, sel, &ns, NULL);
      if (err) break;
      for (uint32_t i = 0; i < m; i++)
        sel[i] |= forced[i];
      if (dv) { /* gather the kept rows into the second buffer, then swap */
        uint32_t *rows = malloc((size_t)m * sizeof *rows), k = 0;
        if (!rows) {
          err = KVS_ENOMEM;
          break;
        }
        for (uint32_t i = 0; i < m; i++)
          if (sel[i]) rows[k] = i, idx[k] = idx[i], k++;
        err = kvs_gpu_gather_rows_f32(hidden2, hidden, rows, k, E, NULL);
        free(rows);
        float *t = hidden;
        hidden = hidden2, hidden2 = t;
        n_run = k;
        if (err) break;
      } else {
        n_run = compact(hidden, idx, m, E, sel);
      }
    }
    if (n_run) err = ops->layer(e, s, l, n_run, idx, NULL, hidden);
    rc_s += (kvs_now_ns() - t0) / 1e9;
  }
  if (threaded) {
    pthread_mutex_lock(&r.mu);
    r.stop = 1;
    r.st[0].full = r.st[1].full = 0;
    pthread_cond_broadcast(&r.cv);
    pthread_mutex_unlock(&r.mu);
    pthread_join(th, NULL);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
  }
  stz.n_recomputed = n_run;
  stz.t_recompute_s = rc_s;

  /* the NEW tail on top */
  if (!err && n_new) {
    uint64_t t0 = kvs_now_ns();
    int32_t *nt = malloc((size_t)n_new * sizeof *nt);
    if (!nt) err = KVS_ENOMEM;
    uint32_t k = 0;
    for (uint32_t i = tail; !err && i < n_segs; i++) {
      memcpy(nt + k, segs[i].tokens, segs[i].n_tokens * sizeof *nt);
      k += segs[i].n_tokens;
    }
    if (!err) err = ops->prefill(e, s, nt, n_new, 0, logits);
    free(nt);
    stz.t_prefill_s = (kvs_now_ns() - t0) / 1e9;
  } else if (!err && logits) {
    err = KVS_EINVAL; /* no new token: nothing to predict from */
  }
  stz.t_total_s = (kvs_now_ns() - t_start) / 1e9;
  if (stats) *stats = stz;
  free(r.slot0), free(r.off), free(idx), free(tok), free(cstart), free(forced), free(sel);
  efree(dv, hidden), efree(dv, hidden2), efree(dv, d_dev), free(dev), free(kz);
  efree(dv, kf), efree(dv, vf), efree(dv, kl), efree(dv, vl);
  for (int b = 0; b < 2; b++) {
    if (r.dev_stage)
      efree(dv, r.st[b].k), efree(dv, r.st[b].v);
    else if (dv)
      bc_give(1, r.st[b].k), bc_give(1, r.st[b].v);
    else
      free(r.st[b].k), free(r.st[b].v);
  }
  efree(dv, d_stk), efree(dv, d_stv), free(tables);
  return err;
}
