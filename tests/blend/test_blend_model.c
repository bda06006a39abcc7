/* kvs_blend_run on the real SmolLM2 engine: a prompt of a prefix chunk, two
 * content chunks computed elsewhere (at position 0) and a question. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_engine.h"
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_test.h"

static kvs_model *g_model;
static kvs_engine *g_eng;
static kvs_engine_info g_info;
enum { NSEG = 4 };
static int32_t g_tok[NSEG][256];
static uint32_t g_n[NSEG];
static kvs_f16 *g_kv[NSEG]; /* per segment: [layer][K|V][n][W], computed alone at position 0 */
static float *g_full;       /* logits of the full prefill */

static const char *texts[NSEG] = {
    "<|im_start|>system\nAnswer the question from the passages.<|im_end|>\n<|im_start|>user\n",
    "Exeter College is one of the constituent colleges of the University of Oxford in England, "
    "founded in 1314 by Walter de Stapledon, Bishop of Exeter.",
    "Hannibal and Scipio is a play written by Thomas Nabbes, an English dramatist who was educated "
    "at Exeter College, Oxford, and who wrote for the stage in the 1630s.",
    "Question: Where was the author of Hannibal and Scipio educated?<|im_end|>\n"
    "<|im_start|>assistant\n"};

static size_t W(void) { return (size_t)g_info.layout.n_kv_heads * g_info.layout.head_dim; }

static int load_cb(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  (void)ctx;
  size_t plane = (size_t)g_n[seg] * W();
  memcpy(k, g_kv[seg] + 2 * layer * plane, plane * 2);
  memcpy(v, g_kv[seg] + (2 * layer + 1) * plane, plane * 2);
  return KVS_OK;
}

static int init(void) {
  const char *path = kvs_test_model_path();
  if (!path) return 1;
  if (kvs_model_load(path, &g_model) || kvs_model_engine(g_model, &g_eng)) return 1;
  g_eng->ops->info(g_eng, &g_info);
  const kvs_tok *tk = kvs_model_tok(g_model);
  for (int i = 0; i < NSEG; i++) {
    size_t n = 0;
    if (kvs_tok_encode(tk, texts[i], strlen(texts[i]), 1, 0, g_tok[i], 256, &n)) return 1;
    g_n[i] = (uint32_t)n;
  }
  /* each reused chunk alone, at position 0: what kvstash would have stored */
  for (int i = 0; i < NSEG - 1; i++) {
    kvs_engine_seq *s;
    if (g_eng->ops->seq_create(g_eng, 512, &s)) return 1;
    if (g_eng->ops->prefill(g_eng, s, g_tok[i], g_n[i], 0, NULL)) return 1;
    size_t plane = (size_t)g_n[i] * W();
    g_kv[i] = malloc(2 * g_info.layout.n_layers * plane * 2);
    for (uint32_t l = 0; l < g_info.layout.n_layers; l++)
      g_eng->ops->kv_read(g_eng, s, l, 0, g_n[i], g_kv[i] + 2 * l * plane,
                          g_kv[i] + (2 * l + 1) * plane);
    g_eng->ops->seq_free(g_eng, s);
  }
  /* the full prefill of the whole prompt */
  int32_t all[1024];
  uint32_t n = 0;
  for (int i = 0; i < NSEG; i++)
    memcpy(all + n, g_tok[i], g_n[i] * 4), n += g_n[i];
  g_full = malloc(g_info.n_vocab * sizeof(float));
  kvs_engine_seq *s;
  if (g_eng->ops->seq_create(g_eng, 1024, &s)) return 1;
  if (g_eng->ops->prefill(g_eng, s, all, n, 0, g_full)) return 1;
  g_eng->ops->seq_free(g_eng, s);
  return 0;
}

static int clean(void) {
  for (int i = 0; i < NSEG; i++)
    free(g_kv[i]);
  free(g_full);
  kvs_engine_free(g_eng);
  kvs_model_free(g_model);
  return 0;
}

/* run with a strategy; returns max |logit - full| and the stats */
static double run_with(kvs_sel_params sel, int no_overlap, const int *cached, float *logits,
                       kvs_blend_stats *st) {
  kvs_blend_segment segs[NSEG];
  for (int i = 0; i < NSEG; i++) {
    segs[i].kind = i == 0 ? KVS_SEG_PREFIX : i == NSEG - 1 ? KVS_SEG_NEW : KVS_SEG_CONTENT;
    segs[i].tokens = g_tok[i], segs[i].n_tokens = g_n[i];
    segs[i].stored_pos0 = 0;
    segs[i].cached = i < NSEG - 1 && (!cached || cached[i]);
  }
  kvs_blend_opts o = {.sel = sel, .check_layer = 1, .no_overlap = no_overlap};
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  kvs_err e = kvs_blend_run(g_eng, s, segs, NSEG, load_cb, NULL, &o, logits, st);
  CU_ASSERT_EQUAL(e, KVS_OK);
  g_eng->ops->seq_free(g_eng, s);
  double worst = 0;
  for (uint32_t i = 0; i < g_info.n_vocab; i++)
    worst = fmax(worst, fabs(logits[i] - g_full[i]));
  return worst;
}

static void test_strategies(void) {
  float *lg = malloc(g_info.n_vocab * sizeof(float));
  kvs_blend_stats st;
  int32_t top_full = kvs_argmax(g_full, g_info.n_vocab);
  double e_full = run_with(kvs_sel_defaults(KVS_SEL_FULL), 0, NULL, lg, &st);
  printf("\n  full recompute: max |dlogit| %.4f, recomputed %u/%u\n", e_full, st.n_recomputed,
         st.n_candidates);
  CU_ASSERT(e_full < 0.05); /* only fp16 rounding of the cache separates them */
  CU_ASSERT_EQUAL(kvs_argmax(lg, g_info.n_vocab), top_full);
  CU_ASSERT_EQUAL(st.n_recomputed, st.n_candidates);
  CU_ASSERT_EQUAL(st.n_candidates, g_n[1] + g_n[2]);
  CU_ASSERT_EQUAL(st.n_prefilled, g_n[3]);

  double e_none = run_with(kvs_sel_defaults(KVS_SEL_NONE), 0, NULL, lg, &st);
  printf("  naive reuse: max |dlogit| %.4f, recomputed %u\n", e_none, st.n_recomputed);
  CU_ASSERT_EQUAL(st.n_recomputed, 0);
  CU_ASSERT(e_none > 10 * e_full); /* cross-attention is missing: visibly off */

  kvs_sel_params cb = kvs_sel_defaults(KVS_SEL_CACHEBLEND);
  cb.ratio = 0.3f;
  double e_cb = run_with(cb, 0, NULL, lg, &st);
  printf("  cacheblend 30%%: max |dlogit| %.4f, recomputed %u/%u\n", e_cb, st.n_recomputed,
         st.n_candidates);
  CU_ASSERT_EQUAL(st.n_recomputed, (uint32_t)ceil(0.3 * st.n_candidates - 1e-4));
  CU_ASSERT(e_cb < e_none);

  /* the loader thread changes timing, never results */
  float *lg2 = malloc(g_info.n_vocab * sizeof(float));
  run_with(cb, 0, NULL, lg, &st);
  run_with(cb, 1, NULL, lg2, &st);
  CU_ASSERT(memcmp(lg, lg2, g_info.n_vocab * sizeof(float)) == 0);
  free(lg2);
  free(lg);
}

/* Oracle chunks: each reused chunk's KV taken from a prefill of everything
 * before it (the KV a full prefill has there), stored as if at position 0 (K
 * rotated back by its start). Naive reuse of those must give the full
 * prefill's logits: position correction, loading and the layer schedule add
 * nothing but fp16 rounding; what naive reuse loses is only cross-attention. */
static void test_oracle_chunks(void) {
  kvs_f16 *saved[NSEG - 1];
  uint32_t start = 0;
  int32_t all[1024];
  for (int i = 0; i < NSEG - 1; i++) {
    memcpy(all + start, g_tok[i], g_n[i] * 4);
    kvs_engine_seq *s;
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(g_eng->ops->prefill(g_eng, s, all, start + g_n[i], 0, NULL), KVS_OK);
    size_t plane = (size_t)g_n[i] * W();
    saved[i] = g_kv[i];
    g_kv[i] = malloc(2 * g_info.layout.n_layers * plane * 2);
    for (uint32_t l = 0; l < g_info.layout.n_layers; l++)
      CU_ASSERT_EQUAL(g_eng->ops->kv_read(g_eng, s, l, start, g_n[i], g_kv[i] + 2 * l * plane,
                                          g_kv[i] + (2 * l + 1) * plane),
                      KVS_OK);
    g_eng->ops->seq_free(g_eng, s);
    CU_ASSERT_EQUAL(kvs_rope_shift_chunk(&g_info.layout, g_kv[i], g_n[i], -(int64_t)start), KVS_OK);
    start += g_n[i];
  }
  float *lg = malloc(g_info.n_vocab * sizeof(float));
  kvs_blend_stats st;
  double e = run_with(kvs_sel_defaults(KVS_SEL_NONE), 0, NULL, lg, &st);
  printf("\n  naive reuse of oracle chunks: max |dlogit| %.4f, recomputed %u\n", e,
         st.n_recomputed);
  CU_ASSERT_EQUAL(st.n_recomputed, 0);
  CU_ASSERT(e < 0.05);
  CU_ASSERT_EQUAL(kvs_argmax(lg, g_info.n_vocab), kvs_argmax(g_full, g_info.n_vocab));
  for (int i = 0; i < NSEG - 1; i++)
    free(g_kv[i]), g_kv[i] = saved[i];
  free(lg);
}

static void test_missing_chunks(void) {
  float *lg = malloc(g_info.n_vocab * sizeof(float));
  kvs_blend_stats st;
  /* both content chunks missing: they are recomputed in full, so even the
   * naive strategy reproduces the full prefill */
  int cached[NSEG] = {1, 0, 0, 0};
  double e = run_with(kvs_sel_defaults(KVS_SEL_NONE), 0, cached, lg, &st);
  CU_ASSERT_EQUAL(st.n_forced, g_n[1] + g_n[2]);
  CU_ASSERT_EQUAL(st.n_recomputed, g_n[1] + g_n[2]);
  CU_ASSERT(e < 0.05);
  /* one missing: forced tokens plus the strategy's picks */
  int cached2[NSEG] = {1, 1, 0, 0};
  kvs_sel_params cb = kvs_sel_defaults(KVS_SEL_CACHEBLEND);
  cb.ratio = 0.1f;
  run_with(cb, 0, cached2, lg, &st);
  CU_ASSERT_EQUAL(st.n_forced, g_n[2]);
  CU_ASSERT(st.n_recomputed >= g_n[2]);
  CU_ASSERT(st.n_recomputed <= g_n[2] + (uint32_t)ceil(0.1 * (g_n[1] + g_n[2])));
  free(lg);
}

static void test_bad_calls(void) {
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(g_eng->ops->seq_create(g_eng, 1024, &s), KVS_OK);
  kvs_blend_segment segs[2] = {
      {.kind = KVS_SEG_NEW, .tokens = g_tok[3], .n_tokens = g_n[3]},
      {.kind = KVS_SEG_CONTENT, .tokens = g_tok[1], .n_tokens = g_n[1], .cached = 1}};
  kvs_blend_opts o = {.sel = kvs_sel_defaults(KVS_SEL_NONE)};
  CU_ASSERT_EQUAL(kvs_blend_run(g_eng, s, segs, 2, load_cb, NULL, &o, NULL, NULL), KVS_EINVAL);
  segs[0] = segs[1];
  CU_ASSERT_EQUAL(kvs_blend_run(g_eng, s, segs, 1, NULL, NULL, &o, NULL, NULL), KVS_EINVAL);
  CU_ASSERT_EQUAL(g_eng->ops->prefill(g_eng, s, g_tok[3], 2, 0, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_blend_run(g_eng, s, segs, 1, load_cb, NULL, &o, NULL, NULL), KVS_EINVAL);
  g_eng->ops->seq_free(g_eng, s);
}

int main(void) {
  if (!kvs_test_model_path()) {
    printf("model not fetched (tools/fetch-model): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"strategies vs full prefill", test_strategies},
      {"oracle chunks: naive reuse = full prefill", test_oracle_chunks},
      {"missing chunks are recomputed", test_missing_chunks},
      {"bad calls", test_bad_calls},
      {NULL, NULL}};
  return kvs_test_run_fixture("blend_model", cases, init, clean);
}
