/* kvs_blend_run on the GPU engine (a small random Llama with SmolLM2's head
 * shape): the pipeline with every token recomputed equals a full prefill, and
 * loading straight into device memory (kvs_blend_opts.load_device) gives
 * exactly what the pinned host stage gives, for every strategy. Skips (77)
 * without a device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_engine.h"
#include "kvs_gpu.h"
#include "kvs_gpu_model.h"
#include "model_int.h" /* kvs__model_weights_get */
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_test.h"

enum { NSEG = 5, SEGN = 70 };
static kvs_model *g_m;
static kvs_gpu_model *g_gm;
static kvs_engine *g_e;
static kvs_engine_info g_in;
static int32_t g_tok[NSEG * SEGN];
static kvs_f16 *g_kv[NSEG]; /* host: per segment [layer][K|V][n][W] at position 0 */
static float *g_full;       /* logits of the full prefill (device) */
static float *g_full_h;
static void *g_stream;

static size_t W(void) { return (size_t)g_in.layout.n_kv_heads * g_in.layout.head_dim; }

static kvs_err load_host(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  (void)ctx;
  size_t plane = (size_t)SEGN * W();
  memcpy(k, g_kv[seg] + 2 * layer * plane, plane * 2);
  memcpy(v, g_kv[seg] + (2 * layer + 1) * plane, plane * 2);
  return KVS_OK;
}
static kvs_err load_dev(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  (void)ctx;
  size_t plane = (size_t)SEGN * W();
  KVS_TRY(kvs_gpu_copy_h2d(k, g_kv[seg] + 2 * layer * plane, plane * 2, g_stream));
  KVS_TRY(kvs_gpu_copy_h2d(v, g_kv[seg] + (2 * layer + 1) * plane, plane * 2, g_stream));
  return kvs_gpu_sync(g_stream);
}

static int init(void) {
  kvs_model_cfg c = {.n_vocab = 512,
                     .n_embd = 192,
                     .n_layers = 4,
                     .n_heads = 3,
                     .n_kv_heads = 1,
                     .head_dim = 64,
                     .n_ff = 512,
                     .n_ctx_train = 4096,
                     .rope_theta = 100000.f,
                     .norm_eps = 1e-5f};
  if (kvs_model_create_random(&c, 11, 1, &g_m)) return 1;
  kvs__model_weights w;
  kvs__model_weights_get(g_m, &w);
  if (kvs_gpu_model_create(&w, 1024, &g_gm)) return 1;
  if (kvs_gpu_model_engine(g_gm, kvs_model_get_id(g_m), &g_e)) return 1;
  g_e->ops->info(g_e, &g_in);
  unsigned long long r = 5;
  for (int i = 0; i < NSEG * SEGN; i++)
    g_tok[i] = (int32_t)(kvs_test_rand(&r) % c.n_vocab);
  size_t plane = (size_t)SEGN * W();
  for (int i = 0; i < NSEG - 1; i++) {
    if (kvs_gpu_alloc_host((void **)&g_kv[i], 2 * c.n_layers * plane * 2)) return 1;
    kvs_engine_seq *s;
    if (g_e->ops->seq_create(g_e, 512, &s)) return 1;
    if (g_e->ops->prefill(g_e, s, g_tok + i * SEGN, SEGN, 0, NULL)) return 1;
    for (uint32_t l = 0; l < c.n_layers; l++)
      if (g_e->ops->kv_read(g_e, s, l, 0, SEGN, g_kv[i] + 2 * l * plane,
                            g_kv[i] + (2 * l + 1) * plane))
        return 1;
    g_e->ops->seq_free(g_e, s);
  }
  if (kvs_gpu_alloc((void **)&g_full, c.n_vocab * sizeof(float))) return 1;
  g_full_h = malloc(c.n_vocab * sizeof(float));
  kvs_engine_seq *s;
  if (g_e->ops->seq_create(g_e, 1024, &s)) return 1;
  if (g_e->ops->prefill(g_e, s, g_tok, NSEG * SEGN, 0, g_full)) return 1;
  g_e->ops->seq_free(g_e, s);
  if (kvs_gpu_copy_d2h(g_full_h, g_full, c.n_vocab * sizeof(float), NULL)) return 1;
  return kvs_gpu_stream_create(&g_stream) != KVS_OK;
}

static int clean(void) {
  for (int i = 0; i < NSEG; i++)
    kvs_gpu_free_host(g_kv[i]);
  kvs_gpu_free(g_full);
  free(g_full_h);
  kvs_gpu_stream_free(g_stream);
  kvs_engine_free(g_e);
  kvs_gpu_model_free(g_gm);
  kvs_model_free(g_m);
  return 0;
}

static void run(uint32_t strategy, int dev, float *out) {
  kvs_blend_segment segs[NSEG];
  for (int i = 0; i < NSEG; i++) {
    segs[i].kind = i == 0 ? KVS_SEG_PREFIX : i == NSEG - 1 ? KVS_SEG_NEW : KVS_SEG_CONTENT;
    segs[i].tokens = g_tok + i * SEGN, segs[i].n_tokens = SEGN;
    segs[i].stored_pos0 = 0;
    segs[i].cached = i < NSEG - 1;
  }
  kvs_blend_opts o = {.sel = kvs_sel_defaults(strategy), .check_layer = 1, .load_device = dev};
  kvs_engine_seq *s;
  float *d_logits;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc((void **)&d_logits, g_in.n_vocab * sizeof(float)), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(g_e->ops->seq_create(g_e, 1024, &s), KVS_OK);
  kvs_blend_stats st;
  CU_ASSERT_EQUAL(
      kvs_blend_run(g_e, s, segs, NSEG, dev ? load_dev : load_host, NULL, &o, d_logits, &st),
      KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_copy_d2h(out, d_logits, g_in.n_vocab * sizeof(float), NULL), KVS_OK);
  g_e->ops->seq_free(g_e, s);
  kvs_gpu_free(d_logits);
}

static void test_full_equals_prefill(void) {
  float *a = malloc(g_in.n_vocab * sizeof(float)), *b = malloc(g_in.n_vocab * sizeof(float));
  run(KVS_SEL_FULL, 0, a);
  run(KVS_SEL_FULL, 1, b);
  double da = 0, db = 0;
  for (uint32_t i = 0; i < g_in.n_vocab; i++) {
    da = fmax(da, fabs(a[i] - g_full_h[i]));
    db = fmax(db, fabs(b[i] - g_full_h[i]));
  }
  printf("\n  full recompute vs prefill: max |dlogit| host stage %.4g, device load %.4g\n", da, db);
  CU_ASSERT(da < 0.05);
  CU_ASSERT(db < 0.05);
  free(a), free(b);
}

static void test_device_load_same(void) {
  uint32_t strats[] = {KVS_SEL_NONE, KVS_SEL_EPIC, KVS_SEL_CACHEBLEND, KVS_SEL_ADAPTIVE};
  float *a = malloc(g_in.n_vocab * sizeof(float)), *b = malloc(g_in.n_vocab * sizeof(float));
  for (size_t k = 0; k < sizeof strats / sizeof strats[0]; k++) {
    run(strats[k], 0, a);
    run(strats[k], 1, b);
    CU_ASSERT_EQUAL(memcmp(a, b, g_in.n_vocab * sizeof(float)), 0);
    double d = 0;
    for (uint32_t i = 0; i < g_in.n_vocab; i++)
      d = fmax(d, fabs(a[i] - g_full_h[i]));
    printf("  strategy %u: device load == host stage; max |dlogit| vs full %.4g\n", strats[k], d);
    CU_ASSERT(isfinite(d));
  }
  free(a), free(b);
}

int main(void) {
  if (kvs_gpu_device_count() <= 0) {
    printf("no CUDA device: skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"full recompute through the pipeline = prefill", test_full_equals_prefill},
      {"device load = host stage, every strategy", test_device_load_same},
      {NULL, NULL}};
  return kvs_test_run_fixture("gpu_blend_engine", cases, init, clean);
}
