/* reuse/ through the CPU reference engine (SmolLM2) and a real kvstashd:
 * the same logits as kvs_blend_run fed from memory (the path it replaces),
 * oracle chunks through kvstashd still give the full prefill, what a request
 * computed is stored and hit next time, and a full store queue drops
 * (counted) without blocking the request. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_reuse.h"
#include "kvs_test.h"
#include "kvstash.h"
#include "svc_helper.h"

static th_daemon g_d;
static int g_up;
static kvs_model *g_model;
static kvs_engine *g_eng;
static kvs_engine_info g_info;
enum { NSEG = 4 };
static int32_t g_all[1024];
static uint32_t g_n[NSEG], g_start[NSEG], g_total;
static kvs_f16 *g_kv[NSEG]; /* segments 0..2 computed alone at position 0 */
static float *g_full;       /* logits of the full prefill */

static const char *texts[NSEG] = {
    "<|im_start|>system\nAnswer the question from the passages.<|im_end|>\n<|im_start|>user\n",
    "Exeter College is one of the constituent colleges of the University of Oxford in England, "
    "founded in 1314 by Walter de Stapledon, Bishop of Exeter.",
    "Hannibal and Scipio is a play written by Thomas Nabbes, an English dramatist who was educated "
    "at Exeter College, Oxford, and who wrote for the stage in the 1630s.",
    "Question: Where was the author of Hannibal and Scipio educated?<|im_end|>\n"
    "<|im_start|>assistant\n"};
static const kvs_reuse_segment g_segs[NSEG] = {
    {KVS_SEG_PREFIX, 0}, {KVS_SEG_CONTENT, 0}, {KVS_SEG_CONTENT, 0}, {KVS_SEG_NEW, 0}};
static kvs_reuse_segment g_rs[NSEG];
static kvs_reuse_request g_req;

static size_t W(void) { return (size_t)g_info.layout.n_kv_heads * g_info.layout.head_dim; }
static size_t chunk_bytes(int i) { return 2 * g_info.layout.n_layers * (size_t)g_n[i] * W() * 2; }

static kvs_err load_mem(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  kvs_f16 **kv = ctx;
  size_t plane = (size_t)g_n[seg] * W();
  memcpy(k, kv[seg] + 2 * layer * plane, plane * 2);
  memcpy(v, kv[seg] + (2 * layer + 1) * plane, plane * 2);
  return KVS_OK;
}

static kvs_client *client_flags(const char *tenant, uint32_t timeout_ms, uint32_t flags) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = g_d.url, o.tenant = tenant, o.connect_timeout_ms = 10000, o.flags = flags;
  if (timeout_ms) o.request_timeout_ms = timeout_ms, o.max_retries = 0;
  kvs_client *c = NULL;
  return kvs_client_create(&o, &c) == KVS_OK ? c : NULL;
}
static kvs_client *client(const char *tenant, uint32_t timeout_ms) {
  return client_flags(tenant, timeout_ms, 0);
}

static double max_diff(const float *a, const float *b) {
  double m = 0;
  for (uint32_t i = 0; i < g_info.n_vocab; i++)
    m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

static int init(void) {
  const char *path = kvs_test_model_path();
  if (!path) return 1;
  if (kvs_model_load(path, &g_model) || kvs_model_engine(g_model, &g_eng)) return 1;
  g_eng->ops->info(g_eng, &g_info);
  const kvs_tok *tk = kvs_model_tok(g_model);
  for (int i = 0; i < NSEG; i++) {
    size_t n = 0;
    if (kvs_tok_encode(tk, texts[i], strlen(texts[i]), 1, 0, g_all + g_total, 256, &n)) return 1;
    g_start[i] = g_total, g_n[i] = (uint32_t)n, g_total += (uint32_t)n;
    g_rs[i] = g_segs[i], g_rs[i].n_tokens = (uint32_t)n;
  }
  g_req = (kvs_reuse_request){.tokens = g_all, .n_tokens = g_total, .segs = g_rs, .n_segs = NSEG};
  for (int i = 0; i < NSEG - 1; i++) { /* alone, at position 0: what a pre-warm stores */
    kvs_engine_seq *s;
    if (g_eng->ops->seq_create(g_eng, 512, &s)) return 1;
    if (g_eng->ops->prefill(g_eng, s, g_all + g_start[i], g_n[i], 0, NULL)) return 1;
    size_t plane = (size_t)g_n[i] * W();
    g_kv[i] = malloc(chunk_bytes(i));
    for (uint32_t l = 0; l < g_info.layout.n_layers; l++)
      g_eng->ops->kv_read(g_eng, s, l, 0, g_n[i], g_kv[i] + 2 * l * plane,
                          g_kv[i] + (2 * l + 1) * plane);
    g_eng->ops->seq_free(g_eng, s);
  }
  g_full = malloc(g_info.n_vocab * sizeof(float));
  kvs_engine_seq *s;
  if (g_eng->ops->seq_create(g_eng, 1024, &s)) return 1;
  if (g_eng->ops->prefill(g_eng, s, g_all, g_total, 0, g_full)) return 1;
  g_eng->ops->seq_free(g_eng, s);
  memset(&g_d, 0, sizeof g_d);
  if (th_daemon_start(&g_d, NULL) != 0) {
    th_daemon_cleanup(&g_d);
    return 1;
  }
  g_up = 1;
  return 0;
}

static int clean(void) {
  int rc = 0;
  if (g_up) {
    rc = th_daemon_stop(&g_d); /* the log on stderr when it did not exit 0 */
    th_daemon_cleanup(&g_d);
  }
  for (int i = 0; i < NSEG; i++)
    free(g_kv[i]);
  free(g_full);
  kvs_engine_free(g_eng);
  kvs_model_free(g_model);
  kvs_client_lib_fini();
  return rc == 0 ? 0 : 1;
}

/* pre-warmed chunks fetched from kvstashd = the same chunks from memory */
static void test_same_logits(void) {
  kvs_client *c = client("same", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_CACHEBLEND);
  o.policy = KVS_REUSE_PLAN_ALWAYS_LOAD;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  uint32_t nch = 0;
  CU_ASSERT_EQUAL(kvs_reuse_count_chunks(r, &g_req, &nch), KVS_OK);
  CU_ASSERT_EQUAL(nch, 3);
  for (uint32_t i = 0; i < 3; i++)
    CU_ASSERT_EQUAL(kvs_reuse_store(r, &g_req, i, g_kv[i], 1), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_store(r, &g_req, 3, g_kv[0], 1), KVS_ERANGE);
  float *a = malloc(g_info.n_vocab * 4), *b = malloc(g_info.n_vocab * 4);
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  kvs_reuse_result res;
  uint8_t dec[4] = {9, 9, 9, 9};
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, a, &res, dec, 4), KVS_OK);
  CU_ASSERT_EQUAL(res.n_chunks, 3);
  CU_ASSERT_EQUAL(res.n_load, 3);
  CU_ASSERT_EQUAL(dec[0], KVS_REUSE_LOAD);
  CU_ASSERT_EQUAL(dec[2], KVS_REUSE_LOAD);
  CU_ASSERT_EQUAL(dec[3], 9);
  CU_ASSERT_EQUAL(res.bytes_loaded, chunk_bytes(0) + chunk_bytes(1) + chunk_bytes(2));
  CU_ASSERT_EQUAL(g_eng->ops->seq_len(g_eng, s), g_total);
  g_eng->ops->seq_free(g_eng, s);
  /* the path it replaces: kvs_blend_run fed from memory */
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  int cached[3] = {1, 1, 1};
  kvs_blend_stats st;
  CU_ASSERT_EQUAL_FATAL(
      kvs_reuse_run_loader(g_eng, s, &g_req, 0, cached, load_mem, g_kv, &o.blend, b, &st), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  CU_ASSERT_EQUAL(st.n_recomputed, res.blend.n_recomputed);
  CU_ASSERT(st.n_recomputed > 0);
  CU_ASSERT_EQUAL(memcmp(a, b, g_info.n_vocab * 4), 0); /* bit for bit */
  printf("\n  reuse/ vs memory loader: max |dlogit| %.6f, recomputed %u of %u\n", max_diff(a, b),
         st.n_recomputed, st.n_candidates);
  kvs_reuse_counters ct;
  CU_ASSERT_EQUAL(kvs_reuse_get_counters(r, &ct), KVS_OK);
  CU_ASSERT_EQUAL(ct.requests, 1);
  CU_ASSERT_EQUAL(ct.loads, 3);
  CU_ASSERT_EQUAL(ct.hits, 3);
  CU_ASSERT_EQUAL(ct.samples[0], 0); /* the first request warms the tier up: not sampled */
  CU_ASSERT_EQUAL(ct.warmups, 1);
  CU_ASSERT_EQUAL(res.n_warmup, 1);
  CU_ASSERT(ct.bytes_per_s[0] > 0 && ct.latency_s[0] >= 0);
  CU_ASSERT_EQUAL(ct.stores_done, 3);
  CU_ASSERT(ct.prefill_s_per_token > 0);
  /* always-recompute: no fetch, the same prompt computed in full */
  kvs_reuse_free(r);
  o.policy = KVS_REUSE_PLAN_ALWAYS_RECOMPUTE;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, a, &res, NULL, 0), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  CU_ASSERT_EQUAL(res.n_load, 0);
  CU_ASSERT_EQUAL(res.n_miss, 3);
  CU_ASSERT_EQUAL(res.full_prefill, 0); /* the policy recomputes through the blend path */
  CU_ASSERT_EQUAL(kvs_reuse_get_counters(r, &ct), KVS_OK);
  CU_ASSERT_EQUAL(ct.recompute_samples, 1); /* its cost measured (clock: no figure asserted) */
  CU_ASSERT(ct.recompute_s_per_token > 0);
  CU_ASSERT_EQUAL(ct.full_prefills, 0);
  CU_ASSERT(max_diff(a, g_full) < 0.05);
  kvs_reuse_free(r);
  kvs_client_free(c);
  free(a), free(b);
}

/* Oracle chunks (each chunk's KV from a prefill of everything before it,
 * rotated back to position 0) stored in kvstashd and reused naively through
 * reuse/ give the full prefill's logits: fetch, position correction and the
 * layer schedule add only fp16 rounding. */
static void test_oracle(void) {
  kvs_client *c = client("oracle", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.policy = KVS_REUSE_PLAN_ALWAYS_LOAD;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  kvs_engine_seq *s;
  for (int i = 0; i < NSEG - 1; i++) {
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->prefill(g_eng, s, g_all, g_start[i] + g_n[i], 0, NULL),
                          KVS_OK);
    size_t plane = (size_t)g_n[i] * W();
    kvs_f16 *kv = malloc(chunk_bytes(i));
    for (uint32_t l = 0; l < g_info.layout.n_layers; l++)
      CU_ASSERT_EQUAL(g_eng->ops->kv_read(g_eng, s, l, g_start[i], g_n[i], kv + 2 * l * plane,
                                          kv + (2 * l + 1) * plane),
                      KVS_OK);
    g_eng->ops->seq_free(g_eng, s);
    if (i > 0) /* content chunks are stored as if at 0; the prefix where it lies (0) */
      CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&g_info.layout, kv, g_n[i], -(int64_t)g_start[i]),
                      KVS_OK);
    CU_ASSERT_EQUAL(kvs_reuse_store(r, &g_req, (uint32_t)i, kv, 1), KVS_OK);
    free(kv);
  }
  float *lg = malloc(g_info.n_vocab * 4);
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  kvs_reuse_result res;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  double e = max_diff(lg, g_full);
  printf("\n  oracle chunks through kvstashd: max |dlogit| %.4f, loaded %u\n", e, res.n_load);
  CU_ASSERT_EQUAL(res.n_load, 3);
  CU_ASSERT_EQUAL(res.blend.n_recomputed, 0);
  CU_ASSERT(e < 0.05);
  CU_ASSERT_EQUAL(kvs_argmax(lg, g_info.n_vocab), kvs_argmax(g_full, g_info.n_vocab));
  free(lg);
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* A cold request computes everything and stores it; the next one hits */
static void test_store_back(void) {
  kvs_client *c = client("store", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.store = 1;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  float *lg = malloc(g_info.n_vocab * 4);
  kvs_engine_seq *s;
  kvs_reuse_result res;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  CU_ASSERT_EQUAL(res.n_miss, 3);
  CU_ASSERT_EQUAL(res.n_store_queued + res.n_store_dropped, 3);
  CU_ASSERT_EQUAL(kvs_reuse_flush(r), KVS_OK);
  kvs_reuse_counters ct;
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_EQUAL(ct.stores_done, res.n_store_queued);
  CU_ASSERT_EQUAL(ct.stores_failed, 0);
  CU_ASSERT_EQUAL(ct.stores_dropped, res.n_store_dropped);
  /* the plan on a tier this client never fetched from: it loads (and so
   * measures) instead of trusting the priors; the first request warms up
   * (not sampled), the second one measures */
  kvs_reuse_free(r);
  o.store = 0;
  o.prior_bytes_per_s[0] = 1.0; /* priors that say: never load */
  o.prior_latency_s[0] = 100.0;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  kvs_reuse_counters c2;
  for (int rep = 0; rep < 2; rep++) {
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
    g_eng->ops->seq_free(g_eng, s);
    CU_ASSERT_EQUAL(res.n_load, ct.stores_done);
    CU_ASSERT(res.est_load_s > res.est_recompute_s); /* the priors alone would have recomputed */
    kvs_reuse_get_counters(r, &c2);
    CU_ASSERT_EQUAL(c2.samples[0], (uint64_t)rep);
    CU_ASSERT_EQUAL(c2.warmups, 1);
  }
  CU_ASSERT(c2.latency_s[0] < 100.0 && c2.bytes_per_s[0] > 1.0); /* replaced by the measurement */
  kvs_reuse_free(r);
  /* a prior far too fast is replaced too: the gets' own span is an exact
   * sample even when the loader never waited (the fetch outran the engine) */
  o.prior_bytes_per_s[0] = 1e15, o.prior_latency_s[0] = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  for (int rep = 0; rep < 2; rep++) {
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
    g_eng->ops->seq_free(g_eng, s);
    CU_ASSERT_EQUAL(res.n_load, ct.stores_done);
  }
  kvs_reuse_get_counters(r, &c2);
  CU_ASSERT_EQUAL(c2.samples[0], 1);
  CU_ASSERT(c2.bytes_per_s[0] > 0 && c2.bytes_per_s[0] < 1e14);
  kvs_reuse_free(r);
  /* the stored chunks are the in-context KV: loading them is the oracle case */
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  o.prior_bytes_per_s[0] = 0, o.prior_latency_s[0] = 0;
  o.policy = KVS_REUSE_PLAN_ALWAYS_LOAD;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  CU_ASSERT_EQUAL(res.n_load, ct.stores_done);
  if (res.n_load == 3) {
    printf("\n  stored then reused: max |dlogit| vs full %.4f\n", max_diff(lg, g_full));
    CU_ASSERT(max_diff(lg, g_full) < 0.05);
  }
  CU_ASSERT_EQUAL(kvs_argmax(lg, g_info.n_vocab), kvs_argmax(g_full, g_info.n_vocab));
  free(lg);
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* The daemon stopped (SIGSTOP): the store worker's puts hang (up to
 * store_inflight of them sent), the queue (1) fills, further stores are
 * dropped and counted, the requests complete; once the daemon runs again
 * every queued store is answered. */
static void backpressure(uint32_t inflight) {
  /* the stopped daemon holds the put. With several in flight, puts through
   * the socket: a shared-memory put's PUT_RESERVE is a round trip before the
   * encode, so against a stopped daemon the worker waits there with one put
   * started (inflight 1 runs that way) */
  kvs_client *c = client_flags("bp", 60000, inflight > 1 ? KVS_CLIENT_NO_SHM_PUT : 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.policy = KVS_REUSE_PLAN_ALWAYS_RECOMPUTE; /* no LOOKUP: the request needs no daemon */
  o.store = 1, o.store_queue = 1, o.store_inflight = inflight;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kill(g_d.pid, SIGSTOP), 0);
  float *lg = malloc(g_info.n_vocab * 4);
  kvs_engine_seq *s;
  kvs_reuse_result res;
  uint32_t queued = 0, dropped = 0;
  const int reps = 4; /* 12 stores: more than inflight + queue */
  for (int rep = 0; rep < reps; rep++) {
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
    CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
    g_eng->ops->seq_free(g_eng, s);
    CU_ASSERT_EQUAL(res.n_store_queued + res.n_store_dropped, 3);
    queued += res.n_store_queued, dropped += res.n_store_dropped;
  }
  kvs_reuse_counters ct;
  kvs_reuse_get_counters(r, &ct);
  /* at most `inflight` puts sent and one in the queue: the rest dropped */
  CU_ASSERT(queued <= inflight + 1);
  CU_ASSERT(dropped >= 3 * reps - (inflight + 1));
  CU_ASSERT(queued >= 1 && dropped >= 1);
  /* the worker keeps sending while earlier puts are unanswered (each request
   * takes far longer than a put of its small chunks to start) */
  if (inflight > 1) CU_ASSERT(queued >= 3);
  CU_ASSERT_EQUAL(ct.stores_dropped, dropped);
  CU_ASSERT_EQUAL(ct.stores_queued, queued);
  CU_ASSERT_EQUAL(ct.stores_done + ct.stores_failed, 0); /* nothing answered yet */
  printf("\n  daemon stopped, %u in flight at most: %d stores, %u queued, %u dropped, requests "
         "completed\n",
         inflight, 3 * reps, queued, dropped);
  CU_ASSERT_EQUAL(kill(g_d.pid, SIGCONT), 0);
  CU_ASSERT_EQUAL(kvs_reuse_flush(r), KVS_OK);
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_EQUAL(ct.stores_done + ct.stores_failed, queued);
  /* where the time went is counted: each put encoded on the worker and answered */
  CU_ASSERT(ct.store_encode_s > 0 && ct.store_ack_s > 0 && ct.store_copy_s > 0);
  CU_ASSERT_EQUAL(ct.store_pool_hits, 0); /* host engine: no device staging */
  free(lg);
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* ---- the controller: decisions from injected figures (no clock involved) */
typedef struct figs {
  double lat, bps; /* what the tier "measures" */
  int calls;
} figs;

static void fig_sample(void *ctx, uint32_t tier, uint64_t bytes, double *lat, double *bps,
                       int *exact) {
  figs *f = ctx;
  (void)tier, (void)bytes;
  *lat = f->lat, *bps = f->bps, *exact = 1;
  f->calls++;
}

static const figs FAST = {1e-4, 1e10, 0}, SLOW = {1.0, 1e6, 0};

/* controller options: recompute costs 1 ms per token (fixed), strategy none
 * (nothing of a loaded chunk is recomputed), exploration every 4 requests */
static kvs_reuse_opts ctl_opts(figs *f) {
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.prefill_s_per_token = 1e-3;
  o.explore_every = 4;
  o.sample_fn = fig_sample, o.sample_ctx = f;
  return o;
}

/* one request; its decisions as a string: L load, R recompute, M miss */
static void ctl_run(kvs_reuse *r, char out[4], kvs_reuse_result *res) {
  float *lg = malloc(g_info.n_vocab * 4);
  kvs_engine_seq *s;
  uint8_t d[3] = {9, 9, 9};
  memset(out, 0, 4);
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &g_req, lg, res, d, 3), KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  for (int i = 0; i < 3; i++)
    out[i] = d[i] == KVS_REUSE_LOAD ? 'L' : d[i] == KVS_REUSE_RECOMPUTE ? 'R' : 'M';
  free(lg);
}

static void ctl_store(kvs_client *c) {
  kvs_reuse *r;
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  for (uint32_t i = 0; i < 3; i++)
    CU_ASSERT_EQUAL(kvs_reuse_store(r, &g_req, i, g_kv[i], 1), KVS_OK);
  kvs_reuse_free(r);
}

/* A first sample that included the set-up (10 s, 1 KB/s) makes the plan
 * recompute; exploration loads one hit when the sample is 4 requests old
 * (the first explored get warms the tier up and is not sampled, the next
 * one is), the fast sample replaces the estimate, and every hit is loaded
 * from then on. Then the tier is made slow: one request loads and samples
 * it, the plan recomputes, and exploration keeps sampling one chunk every
 * 4 requests. */
static void test_ctl_recovers(void) {
  kvs_client *c = client("ctl", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  ctl_store(c);
  figs f = FAST;
  kvs_reuse_opts o = ctl_opts(&f);
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, 10.0, 1e3, 1), KVS_OK);           /* the bad first sample */
  const char *want[] = {"RRR", "RRR", "RRR", "LRR", "LRR", "LLL", "LLL", /* fast */
                        "LLL", "RRR", "RRR", "RRR", "LRR", "RRR"};       /* slow from the 8th */
  const uint32_t explore[] = {0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0};
  char got[4];
  kvs_reuse_result res;
  kvs_reuse_counters ct;
  for (int i = 0; i < 13; i++) {
    if (i == 7) f = SLOW;
    ctl_run(r, got, &res);
    kvs_reuse_get_counters(r, &ct);
    printf("\n  request %2d: %s explore %u warmup %u ram %.4f ms %.3g B/s (%llu samples)", i + 1,
           got, res.n_explore, res.n_warmup, ct.latency_s[0] * 1e3, ct.bytes_per_s[0],
           (unsigned long long)ct.samples[0]);
    CU_ASSERT_STRING_EQUAL(got, want[i]);
    CU_ASSERT_EQUAL(res.n_explore, explore[i]);
    CU_ASSERT_EQUAL(res.n_warmup, i == 3);
    if (i == 4) { /* the explored sample replaced the set-up one */
      CU_ASSERT_DOUBLE_EQUAL(ct.latency_s[0], FAST.lat, 1e-12);
      CU_ASSERT_DOUBLE_EQUAL(ct.bytes_per_s[0], FAST.bps, 1);
    }
    if (i == 7) CU_ASSERT(res.est_load_s < res.est_recompute_s); /* planned on the fast figure */
    if (i == 8) CU_ASSERT(res.est_load_s > res.est_recompute_s);
  }
  CU_ASSERT_EQUAL(ct.requests, 13);
  CU_ASSERT_EQUAL(ct.explores, 3);
  CU_ASSERT_EQUAL(ct.warmups, 1);
  /* fed, explored (5), fast loads (6, 7), slow load (8), explored (12) */
  CU_ASSERT_EQUAL(ct.samples[0], 6);
  CU_ASSERT_EQUAL(ct.sample_age[0], 1);
  CU_ASSERT_EQUAL(f.calls, 2); /* since f = SLOW: requests 8 and 12 */
  kvs_reuse_free(r);

  /* a fresh controller with priors that say "never load": the tier is
   * loaded while unmeasured, the first request's figures (set-up) are
   * dropped, the second is sampled, then the plan follows the figures */
  f = FAST;
  o = ctl_opts(&f);
  o.prior_latency_s[0] = 100, o.prior_bytes_per_s[0] = 1;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  for (int i = 0; i < 3; i++) {
    ctl_run(r, got, &res);
    CU_ASSERT_STRING_EQUAL(got, "LLL");
    CU_ASSERT_EQUAL(res.n_warmup, i == 0);
  }
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_EQUAL(ct.samples[0], 2);
  CU_ASSERT_EQUAL(f.calls, 2);
  CU_ASSERT_DOUBLE_EQUAL(ct.latency_s[0], FAST.lat, 1e-12);
  kvs_reuse_free(r);
  /* the same with a slow tier: two loads to measure it, then recompute */
  f = SLOW;
  o = ctl_opts(&f);
  o.explore_every = 100;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  const char *want2[] = {"LLL", "LLL", "RRR", "RRR"};
  for (int i = 0; i < 4; i++) {
    ctl_run(r, got, &res);
    CU_ASSERT_STRING_EQUAL(got, want2[i]);
  }
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* what a cost sample measured (cost_fn), replaced by a fixed figure */
typedef struct costs {
  double v[2]; /* per KVS_REUSE_COST_*: the figure handed back (0: kept) */
  uint32_t calls[2], n_tokens[2];
} costs;

static void fig_cost(void *ctx, uint32_t what, uint32_t n_tokens, double *s_per_token) {
  costs *k = ctx;
  if (what > KVS_REUSE_COST_FULL) return;
  k->calls[what]++, k->n_tokens[what] = n_tokens;
  if (k->v[what] > 0) *s_per_token = k->v[what];
}

/* Request level: a full prefill estimated faster than the plan (a fast
 * engine, a small model) is run as a plain prefill (nothing fetched, the
 * full prefill's logits bit for bit, counted); exploration still runs the
 * plan when the tier's sample is explore_every requests old; a slow prefill
 * makes the plan load again. */
static void test_ctl_full_prefill(void) {
  kvs_client *c = client("ctl", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  ctl_store(c);
  figs f = FAST;
  costs k = {{0, 0}, {0, 0}, {0, 0}};
  kvs_reuse_opts o = ctl_opts(&f);
  o.cost_fn = fig_cost, o.cost_ctx = &k;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, FAST.lat, FAST.bps, 1), KVS_OK); /* last sample: request 0 */
  /* the full prefill measured once at the engine's cost (no trial of it) */
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, 1e-3), KVS_OK);
  float *lg = malloc(g_info.n_vocab * 4);
  char got[4];
  kvs_reuse_result res;
  kvs_reuse_counters ct;
  /* 1 warms the tier up, 2 samples it (request 2), the full prefill is fed
   * fast (what a small model measures: 4x lower, it replaces); 3-5 run it, 6 explores (the sample
   * is 4 requests old), 7 runs it again */
  const char *want[] = {"LLL", "LLL", "RRR", "RRR", "RRR", "LLL", "RRR"};
  const uint32_t full[] = {0, 0, 1, 1, 1, 0, 1};
  for (int i = 0; i < 7; i++) {
    if (i == 2) {
      CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, 1e-9), KVS_OK);
      k.v[KVS_REUSE_COST_FULL] = 1e-9; /* the full prefills' own samples say the same */
    }
    ctl_run(r, got, &res);
    printf("\n  request %d: %s full %u est plan %.3f ms full %.6f ms", i + 1, got, res.full_prefill,
           res.est_plan_s * 1e3, res.est_full_s * 1e3);
    CU_ASSERT_STRING_EQUAL(got, want[i]);
    CU_ASSERT_EQUAL(res.full_prefill, full[i]);
    if (full[i]) {
      CU_ASSERT_EQUAL(res.n_load, 0);
      CU_ASSERT_EQUAL(res.bytes_loaded, 0);
      CU_ASSERT_EQUAL(res.blend.n_prefilled, g_total);
      CU_ASSERT(res.est_full_s < res.est_plan_s);
    } else {
      CU_ASSERT_EQUAL(res.n_load, 3);
    }
  }
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_EQUAL(ct.full_prefills, 4);
  CU_ASSERT_EQUAL(ct.requests, 7);
  CU_ASSERT_EQUAL(ct.loads, 9);
  CU_ASSERT_EQUAL(ct.samples[0], 3);                /* fed, request 2, the explored request 6 */
  CU_ASSERT_EQUAL(k.calls[KVS_REUSE_COST_FULL], 4); /* one sample per full prefill */
  CU_ASSERT_EQUAL(k.n_tokens[KVS_REUSE_COST_FULL], g_total);
  CU_ASSERT_EQUAL(ct.full_samples, 6);
  CU_ASSERT_DOUBLE_EQUAL(ct.full_s_per_token, 1e-9, 1e-15);
  /* the plain prefill is the engine's: the full prefill's logits exactly */
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &g_req, lg, &res, NULL, 0), KVS_OK);
  CU_ASSERT_EQUAL(res.full_prefill, 1);
  CU_ASSERT_EQUAL(g_eng->ops->seq_len(g_eng, s), g_total);
  CU_ASSERT_EQUAL(memcmp(lg, g_full, g_info.n_vocab * 4), 0);
  g_eng->ops->seq_free(g_eng, s);
  /* the prefill turns slow (a big model): the plan loads */
  k.v[KVS_REUSE_COST_FULL] = 0;
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, 1.0), KVS_OK);
  for (int i = 0; i < 2; i++) {
    ctl_run(r, got, &res);
    CU_ASSERT_STRING_EQUAL(got, "LLL");
    CU_ASSERT_EQUAL(res.full_prefill, 0);
    CU_ASSERT(res.est_plan_s < res.est_full_s);
  }
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, 2, 1.0), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, 0), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, INFINITY), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(NULL, KVS_REUSE_COST_FULL, 1.0), KVS_EINVAL);
  kvs_reuse_free(r);
  /* no hit at all (another tenant's store, nothing here): a plain prefill */
  kvs_client *c2 = client("ctl-empty", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c2);
  o = ctl_opts(&f);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c2, g_eng, &o, &r), KVS_OK);
  ctl_run(r, got, &res);
  CU_ASSERT_STRING_EQUAL(got, "MMM");
  CU_ASSERT_EQUAL(res.full_prefill, 1);
  kvs_reuse_free(r);
  kvs_client_free(c2);
  free(lg);
  kvs_client_free(c);
}

/* The recompute cost the plan uses is calibrated: a tier whose loads cost
 * 2 ms per token is recomputed while recomputing is thought to cost 1 ms
 * per token (the engine's prefill), and loaded once the blend path's
 * measured cost (4 ms per token) is fed; the full prefill is slow (1 s per
 * token), so the plan runs. */
static void test_ctl_calibrated(void) {
  kvs_client *c = client("ctl", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  ctl_store(c);
  uint64_t tb = chunk_bytes(0) / g_n[0]; /* decoded bytes per token */
  figs f = {1e-6, (double)tb / 2e-3, 0};
  kvs_reuse_opts o = ctl_opts(&f);
  o.explore_every = UINT32_MAX; /* decisions from the figures alone */
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, f.lat, f.bps, 1), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_FULL, 1.0), KVS_OK);
  char got[4];
  kvs_reuse_result res;
  ctl_run(r, got, &res);
  CU_ASSERT_STRING_EQUAL(got, "RRR");
  CU_ASSERT(res.est_load_s > res.est_recompute_s);
  CU_ASSERT_EQUAL(res.full_prefill, 1); /* nothing to load: the engine's prefill */
  kvs_reuse_counters ct;
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_DOUBLE_EQUAL(ct.recompute_s_per_token, 1e-3, 1e-12); /* the prior: prefill cost */
  CU_ASSERT_EQUAL(ct.recompute_samples, 0);
  CU_ASSERT_EQUAL(kvs_reuse_feed_cost(r, KVS_REUSE_COST_RECOMPUTE, 4e-3), KVS_OK);
  for (int i = 0; i < 2; i++) {
    ctl_run(r, got, &res);
    CU_ASSERT_STRING_EQUAL(got, "LLL");
    CU_ASSERT(res.est_load_s < res.est_recompute_s);
    CU_ASSERT_EQUAL(res.full_prefill, 0);
  }
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_DOUBLE_EQUAL(ct.recompute_s_per_token, 4e-3, 1e-12);
  CU_ASSERT_EQUAL(ct.recompute_samples, 1);
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* Exploration by chance: seeded, so two controllers decide alike; the
 * policies ALWAYS_* never explore; bad feeds are refused */
static void test_ctl_epsilon(void) {
  kvs_client *c = client("ctl", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  figs f = SLOW;
  char seq[2][8][4];
  uint32_t n_explore[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    kvs_reuse_opts o = ctl_opts(&f);
    o.explore_every = UINT32_MAX, o.explore_epsilon = 0.5, o.explore_seed = 12345;
    kvs_reuse *r;
    CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
    CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, 1.0, 1e6, 1), KVS_OK); /* measured: slow */
    kvs_reuse_result res;
    for (int i = 0; i < 8; i++) {
      ctl_run(r, seq[k][i], &res);
      n_explore[k] += res.n_explore;
      CU_ASSERT(res.n_load == res.n_explore && res.n_explore <= 1);
    }
    kvs_reuse_free(r);
  }
  CU_ASSERT_EQUAL(memcmp(seq[0], seq[1], sizeof seq[0]), 0);
  CU_ASSERT_EQUAL(n_explore[0], n_explore[1]);
  CU_ASSERT(n_explore[0] > 0 && n_explore[0] < 8);
  printf("\n  epsilon 0.5, seed 12345: %u of 8 requests explored", n_explore[0]);
  kvs_reuse_opts o = ctl_opts(&f);
  o.policy = KVS_REUSE_PLAN_ALWAYS_LOAD, o.explore_every = 1;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, 1.0, 1e6, 1), KVS_OK);
  char got[4];
  kvs_reuse_result res;
  ctl_run(r, got, &res);
  CU_ASSERT_STRING_EQUAL(got, "LLL");
  CU_ASSERT_EQUAL(res.n_explore, 0);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 3, 1.0, 1e6, 1), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, -1.0, 1e6, 1), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, 1.0, 0, 1), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed(r, 0, NAN, 1e6, 1), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_feed(NULL, 0, 1.0, 1e6, 1), KVS_EINVAL);
  kvs_reuse_free(r);
  kvs_client_free(c);
}

/* what the clock measured on the slowed tier (kept as measured) */
typedef struct slowed {
  double cap, span_s, need_s;
  int calls;
} slowed;

static void slowed_sample(void *ctx, uint32_t tier, uint64_t bytes, double *lat, double *bps,
                          int *exact) {
  slowed *w = ctx;
  uint32_t L = g_info.layout.n_layers;
  (void)tier, (void)exact;
  w->calls++;
  /* first get's start to the last layer handed over, as the sample implies */
  w->span_s = *lat + (*bps > 0 ? (double)bytes * (L - 1) / L / *bps : 0);
  w->need_s = (double)bytes / w->cap;
}

/* The bench-only slowed tier: the loader hands over at most the set bytes/s,
 * and the plan's sample sees that like a real slow tier (the clock's
 * figures: asserted only as bounds the sleep guarantees) */
static void test_ctl_slowed_tier(void) {
  kvs_client *c = client("ctl", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.policy = KVS_REUSE_PLAN_ALWAYS_LOAD;
  const double cap = 8e6; /* 8 MB/s: ~1 s per request here, ~30 ms per layer */
  o.bench_tier_bytes_per_s[0] = cap;
  slowed w = {.cap = cap};
  o.sample_fn = slowed_sample, o.sample_ctx = &w;
  kvs_reuse *r;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, &o, &r), KVS_OK);
  char got[4];
  kvs_reuse_result res;
  for (int i = 0; i < 2; i++) {
    ctl_run(r, got, &res);
    CU_ASSERT_STRING_EQUAL(got, "LLL");
    /* the loader handed the last layer over no sooner than bytes / cap */
    CU_ASSERT(res.t_total_s >= (double)res.bytes_loaded / cap);
  }
  kvs_reuse_counters ct;
  kvs_reuse_get_counters(r, &ct);
  printf("\n  tier slowed to %.0f MB/s: estimate %.2f MB/s, latency %.3f ms; sample spans %.0f ms "
         "(>= %.0f), TTFT %.0f ms",
         cap / 1e6, ct.bytes_per_s[0] / 1e6, ct.latency_s[0] * 1e3, w.span_s * 1e3, w.need_s * 1e3,
         res.t_total_s * 1e3);
  CU_ASSERT_EQUAL(ct.samples[0], 1);
  CU_ASSERT_EQUAL(w.calls, 1); /* the second request: the first one warmed up */
  CU_ASSERT_EQUAL(res.bytes_loaded, chunk_bytes(0) + chunk_bytes(1) + chunk_bytes(2));
  CU_ASSERT(w.span_s >= 0.999 * w.need_s); /* the sample says: bytes / cap at least */
  kvs_reuse_free(r);
  kvs_client_free(c);
}
static void test_backpressure(void) { backpressure(1); }
static void test_backpressure_inflight(void) { backpressure(3); }

static void test_bad_calls(void) {
  kvs_client *c = client("bad", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  kvs_reuse *r = NULL;
  CU_ASSERT_EQUAL(kvs_reuse_create(NULL, g_eng, NULL, &r), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_create(c, NULL, NULL, &r), KVS_EINVAL);
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, g_eng, NULL, &r), KVS_OK);
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  kvs_reuse_segment bad[3] = {
      {KVS_SEG_CONTENT, g_rs[0].n_tokens}, {KVS_SEG_PREFIX, 1}, {KVS_SEG_NEW, 1}};
  kvs_reuse_request q = {
      .tokens = g_all, .n_tokens = g_rs[0].n_tokens + 2, .segs = bad, .n_segs = 3};
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &q, NULL, NULL, NULL, 0),
                  KVS_EINVAL); /* PREFIX after CONTENT */
  bad[0].kind = KVS_SEG_PREFIX, bad[1].kind = KVS_SEG_NEW, bad[2].kind = KVS_SEG_CONTENT;
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &q, NULL, NULL, NULL, 0), KVS_EINVAL); /* CONTENT after NEW */
  bad[2].kind = KVS_SEG_NEW;
  q.n_tokens++;
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &q, NULL, NULL, NULL, 0), KVS_EINVAL); /* counts differ */
  q.n_tokens--;
  bad[1].n_tokens = 0;
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &q, NULL, NULL, NULL, 0), KVS_EINVAL); /* empty segment */
  CU_ASSERT_EQUAL(g_eng->ops->seq_len(g_eng, s), 0);
  CU_ASSERT_EQUAL(g_eng->ops->prefill(g_eng, s, g_all, 2, 0, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &g_req, NULL, NULL, NULL, 0), KVS_EINVAL); /* not empty */
  g_eng->ops->seq_free(g_eng, s);
  CU_ASSERT_EQUAL(kvs_reuse_store(r, &g_req, 0, NULL, 1), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_reuse_flush(NULL), KVS_EINVAL);
  kvs_reuse_free(r);
  kvs_reuse_free(NULL);
  kvs_client_free(c);
}

int main(void) {
  if (!kvs_test_model_path()) {
    printf("model not fetched (tools/fetch-model): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"reuse/ = kvs_blend_run from memory, bit for bit", test_same_logits},
      {"oracle chunks through kvstashd = full prefill", test_oracle},
      {"a cold request stores, the next one loads", test_store_back},
      {"full store queue drops, never blocks", test_backpressure},
      {"controller: a bad first sample recovers, a slowed tier is dropped", test_ctl_recovers},
      {"controller: seeded exploration, feeds checked", test_ctl_epsilon},
      {"controller: the bench-only slowed tier is measured", test_ctl_slowed_tier},
      {"controller: a faster full prefill is run instead of the plan", test_ctl_full_prefill},
      {"controller: the calibrated recompute cost decides", test_ctl_calibrated},
      {"full store queue drops, puts in flight", test_backpressure_inflight},
      {"bad calls", test_bad_calls},
      {NULL, NULL}};
  return kvs_test_run_fixture("reuse", cases, init, clean);
}
