/* Forward pass on the real SmolLM2 weights: agreement with llama.cpp's
 * logits (fixtures), layer-by-layer == prefill, subset recompute, prefill on
 * injected KV == full prefill, greedy generation, the engine ops table. The
 * model is loaded once for the whole binary. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_engine.h"
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_test.h"
#include "top8_fixture.h"

/* llama.cpp multiplies the Q4_1/Q8_0 weights with activations quantized to
 * 8 bits and rounds Q and the attention weights to fp16; we keep activations
 * in f32 (only the KV cache is fp16). On the fixtures the largest |logit
 * difference| over llama.cpp's top-8 is 1.34 (logits are ~10-30), mean 0.15;
 * emulating the 8-bit activations alone brings the max to 1.05 (docs/model.md).
 * The tolerances, TOP8_LOGIT_TOL and TOP8_MARGIN_TOL, are top8_fixture.h's. */

static kvs_model *g_m;
static uint32_t V, E;

static kvs_token *prompt_ids(const char *text, int special, uint32_t *n) {
  size_t cap = strlen(text) + 8, nn;
  kvs_token *ids = malloc(cap * sizeof *ids);
  CU_ASSERT_EQUAL(kvs_tok_encode(kvs_model_tok(g_m), text, strlen(text), special, 0, ids, cap, &nn),
                  KVS_OK);
  *n = (uint32_t)nn;
  return ids;
}

static const char *RAG =
    "<|im_start|>system\nAnswer from the passage.<|im_end|>\n<|im_start|>user\nThe Eiffel Tower "
    "is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.\n"
    "Question: who designed the Eiffel Tower?<|im_end|>\n<|im_start|>assistant\n";

static void test_reference_agreement(void) {
  size_t ln;
  uint8_t *l = kvs_test_read_file(kvs_test_src_path("tests/model/fixtures/logits_top8.dat"), &ln);
  CU_ASSERT_PTR_NOT_NULL_FATAL(l);
  top8_score sc = {0};
  CU_ASSERT_EQUAL(top8_run_cpu(g_m, l, ln, &sc), KVS_OK);
  top8_print("", &sc);
  CU_ASSERT(sc.positions > 500);
  CU_ASSERT_EQUAL(sc.agree, sc.checked);
  CU_ASSERT(sc.max_err < TOP8_LOGIT_TOL);
  free(l);
}

/* Layer by layer over all tokens == prefill; then recomputing a subset of
 * tokens layer by layer over the others' cached KV reproduces their KV and
 * their logits. */
static void test_layerwise(void) {
  uint32_t n;
  kvs_token *ids = prompt_ids(RAG, 1, &n);
  const kvs_model_cfg *c = kvs_model_config(g_m);
  kvs_seq *a, *b;
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(g_m, n, &a), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(g_m, n, &b), KVS_OK);
  float *ref = malloc((size_t)n * V * sizeof *ref), *lg = malloc((size_t)n * V * sizeof *lg);
  CU_ASSERT_EQUAL_FATAL(kvs_model_prefill(g_m, a, ids, n, 1, ref), KVS_OK);
  float *h = malloc((size_t)n * E * sizeof *h);
  uint32_t *idx = malloc(n * sizeof *idx);
  for (uint32_t i = 0; i < n; i++)
    idx[i] = i;
  CU_ASSERT_EQUAL(kvs_model_embed(g_m, ids, n, h), KVS_OK);
  for (uint32_t l = 0; l < c->n_layers; l++)
    CU_ASSERT_EQUAL(kvs_model_layer(g_m, b, l, n, idx, NULL, h), KVS_OK);
  CU_ASSERT_EQUAL(kvs_model_logits(g_m, n, h, lg), KVS_OK);
  CU_ASSERT_EQUAL(kvs_seq_len(b), n);
  double md = 0;
  for (size_t i = 0; i < (size_t)n * V; i++)
    md = fmax(md, fabs(lg[i] - ref[i]));
  printf("\n  layer-by-layer vs prefill: max |dlogit| = %.3g over %u tokens\n", md, n);
  CU_ASSERT(md < 1e-4);
  size_t plane = (size_t)n * c->n_kv_heads * c->head_dim;
  for (uint32_t l = 0; l < c->n_layers; l++)
    CU_ASSERT(!memcmp(kvs_seq_k(a, l), kvs_seq_k(b, l), plane * 2) &&
              !memcmp(kvs_seq_v(a, l), kvs_seq_v(b, l), plane * 2));

  /* subset: every 5th token and the last, recomputed in b after scrambling
   * their KV in every layer; the others' KV stays as prefill left it */
  uint32_t ns = 0;
  for (uint32_t i = 0; i < n; i++)
    if (i % 5 == 2 || i == n - 1) idx[ns++] = i;
  size_t row = (size_t)c->n_kv_heads * c->head_dim;
  for (uint32_t l = 0; l < c->n_layers; l++)
    for (uint32_t j = 0; j < ns; j++)
      for (size_t d = 0; d < row; d++) {
        kvs_seq_k(b, l)[idx[j] * row + d] = kvs_f32_to_f16(3.0f);
        kvs_seq_v(b, l)[idx[j] * row + d] = kvs_f32_to_f16(-3.0f);
      }
  kvs_token *sub = malloc(ns * sizeof *sub);
  for (uint32_t j = 0; j < ns; j++)
    sub[j] = ids[idx[j]];
  CU_ASSERT_EQUAL(kvs_model_embed(g_m, sub, ns, h), KVS_OK);
  kvs_f16 *kf = malloc(ns * row * 2), *vf = malloc(ns * row * 2);
  size_t kv_diff = 0;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    /* layer_kv: fresh KV without touching the cache (which still holds the scramble) */
    CU_ASSERT_EQUAL(kvs_model_layer_kv(g_m, l, ns, idx, h, kf, vf), KVS_OK);
    CU_ASSERT_EQUAL(kvs_seq_k(b, l)[idx[0] * row], kvs_f32_to_f16(3.0f));
    CU_ASSERT_EQUAL(kvs_model_layer(g_m, b, l, ns, idx, NULL, h), KVS_OK);
    for (uint32_t j = 0; j < ns; j++) {
      kv_diff += memcmp(kf + j * row, kvs_seq_k(b, l) + idx[j] * row, row * 2) != 0;
      kv_diff += memcmp(vf + j * row, kvs_seq_v(b, l) + idx[j] * row, row * 2) != 0;
    }
  }
  CU_ASSERT_EQUAL(kv_diff, 0);
  CU_ASSERT_EQUAL(kvs_model_logits(g_m, ns, h, lg), KVS_OK);
  md = 0;
  for (uint32_t j = 0; j < ns; j++)
    for (uint32_t v = 0; v < V; v++)
      md = fmax(md, fabs(lg[(size_t)j * V + v] - ref[(size_t)idx[j] * V + v]));
  printf("  subset recompute (%u of %u tokens): max |dlogit| = %.3g\n", ns, n, md);
  /* only the sgemm batch shapes differ from the prefill: float rounding */
  CU_ASSERT(md < 2e-2);
  for (uint32_t j = 0; j < ns; j++)
    CU_ASSERT_EQUAL(kvs_argmax(lg + (size_t)j * V, V), kvs_argmax(ref + (size_t)idx[j] * V, V));
  double kd = 0;
  for (uint32_t l = 0; l < c->n_layers; l++)
    for (size_t i = 0; i < plane; i++)
      kd = fmax(kd, fabs(kvs_f16_to_f32(kvs_seq_k(a, l)[i]) - kvs_f16_to_f32(kvs_seq_k(b, l)[i])));
  printf("  subset recompute: max |dK| vs prefill = %.3g\n", kd);
  CU_ASSERT(kd < 1e-2);
  free(kf);
  free(vf);
  free(sub);
  free(idx);
  free(h);
  free(lg);
  free(ref);
  free(ids);
  kvs_seq_free(a);
  kvs_seq_free(b);
}

/* KV read out of one sequence (through the engine ops) and written into a
 * fresh one, then prefill of the rest == the full prefill. */
static void test_inject_via_engine(void) {
  kvs_engine *e;
  CU_ASSERT_EQUAL_FATAL(kvs_model_engine(g_m, &e), KVS_OK);
  const kvs_engine_ops *o = e->ops;
  kvs_engine_info info;
  CU_ASSERT_EQUAL(o->info(e, &info), KVS_OK);
  CU_ASSERT_EQUAL(info.n_vocab, V);
  CU_ASSERT_EQUAL(info.layout.n_kv_heads, 3);
  CU_ASSERT_EQUAL(info.layout.head_dim, 64);
  CU_ASSERT_EQUAL(info.layout.rope_theta, 100000.0f);
  CU_ASSERT_EQUAL(kvs_layout_validate(&info.layout), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(&info.model_id, kvs_model_get_id(g_m)));
  uint32_t n;
  kvs_token *ids = prompt_ids(RAG, 1, &n);
  kvs_engine_seq *a, *b;
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n + 8, &a), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n + 8, &b), KVS_OK);
  float *ref = malloc((size_t)V * sizeof *ref), *lg = malloc((size_t)V * sizeof *lg);
  CU_ASSERT_EQUAL(o->prefill(e, a, ids, n, 0, ref), KVS_OK);
  uint32_t k = n - 11; /* cached part; the last 11 tokens are new */
  size_t row = (size_t)info.layout.n_kv_heads * info.layout.head_dim;
  kvs_f16 *kb = malloc(k * row * 2), *vb = malloc(k * row * 2);
  for (uint32_t l = 0; l < info.layout.n_layers; l++) {
    CU_ASSERT_EQUAL(o->kv_read(e, a, l, 0, k, kb, vb), KVS_OK);
    CU_ASSERT_EQUAL(o->kv_write(e, b, l, 0, k, kb, vb), KVS_OK);
  }
  CU_ASSERT_EQUAL(o->seq_len(e, b), k);
  CU_ASSERT_EQUAL(o->kv_read(e, b, 0, 1, k, kb, vb), KVS_ERANGE);
  CU_ASSERT_EQUAL(o->prefill(e, b, ids + k, n - k, 0, lg), KVS_OK);
  double md = 0;
  for (uint32_t v = 0; v < V; v++)
    md = fmax(md, fabs(lg[v] - ref[v]));
  printf("\n  prefill over injected KV vs full prefill: max |dlogit| = %.3g\n", md);
  CU_ASSERT(md < 2e-2); /* float rounding of differently shaped sgemms */
  CU_ASSERT_EQUAL(kvs_argmax(lg, V), kvs_argmax(ref, V));
  /* the single-token path (fp16 matvec) on top of an (n-1)-token prefill */
  kvs_engine_seq *d;
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n, &d), KVS_OK);
  CU_ASSERT_EQUAL(o->prefill(e, d, ids, n - 1, 0, NULL), KVS_OK);
  CU_ASSERT_EQUAL(o->prefill(e, d, ids + n - 1, 1, 0, lg), KVS_OK);
  double mdd = 0;
  for (uint32_t v = 0; v < V; v++)
    mdd = fmax(mdd, fabs(lg[v] - ref[v]));
  printf("  decode step vs full prefill: max |dlogit| = %.3g\n", mdd);
  CU_ASSERT(mdd < 2e-2);
  CU_ASSERT_EQUAL(kvs_argmax(lg, V), kvs_argmax(ref, V));
  o->seq_free(e, d);
  double spt;
  CU_ASSERT_EQUAL(o->prefill_cost(e, 0, &spt), KVS_OK);
  printf("  prefill cost: %.3g s/token\n", spt);
  CU_ASSERT(spt > 0 && spt < 1);
  CU_ASSERT_EQUAL(o->seq_truncate(e, b, 3), KVS_OK);
  CU_ASSERT_EQUAL(o->seq_len(e, b), 3);
  CU_ASSERT_EQUAL(o->seq_truncate(e, b, 4), KVS_EINVAL);
  CU_ASSERT_EQUAL(o->kv_write(e, b, 99, 0, 1, kb, vb), KVS_EINVAL);
  free(kb);
  free(vb);
  free(lg);
  free(ref);
  free(ids);
  o->seq_free(e, a);
  o->seq_free(e, b);
  kvs_engine_free(e);
}

static void test_generate(void) {
  uint32_t n;
  kvs_token *ids = prompt_ids(RAG, 1, &n);
  kvs_seq *s;
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(g_m, n + 24, &s), KVS_OK);
  kvs_token out[24];
  uint32_t no;
  CU_ASSERT_EQUAL(kvs_model_generate(g_m, s, ids, n, 24, out, &no), KVS_OK);
  char text[512];
  size_t tl;
  CU_ASSERT_EQUAL(kvs_tok_decode(kvs_model_tok(g_m), out, no, text, sizeof text, &tl), KVS_OK);
  printf("\n  answer: \"%s\"\n", text);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "Eiffel"));
  CU_ASSERT_EQUAL(kvs_seq_len(s), n + no - 1);
  kvs_seq_free(s);
  free(ids);
}

static void test_model_id(void) {
  const kvs_model_id *id = kvs_model_get_id(g_m);
  kvs_model_id zero = {{0}};
  CU_ASSERT(!kvs_hash128_equal(id, &zero));
  kvs_model_cfg small = {.n_vocab = 256,
                         .n_embd = 64,
                         .n_layers = 2,
                         .n_heads = 4,
                         .n_kv_heads = 2,
                         .head_dim = 16,
                         .n_ff = 96,
                         .n_ctx_train = 128,
                         .rope_theta = 10000.0f,
                         .norm_eps = 1e-5f};
  kvs_model *r1, *r2, *r3;
  CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(&small, 1, 1, &r1), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(&small, 1, 1, &r2), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(&small, 2, 0, &r3), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(kvs_model_get_id(r1), kvs_model_get_id(r2)));
  CU_ASSERT(!kvs_hash128_equal(kvs_model_get_id(r1), kvs_model_get_id(r3)));
  CU_ASSERT(!kvs_hash128_equal(kvs_model_get_id(r1), id));
  kvs_seq *s1, *s2;
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(r1, 16, &s1), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(r2, 16, &s2), KVS_OK);
  kvs_token t[10] = {1, 5, 9, 200, 3, 3, 3, 17, 0, 255};
  float l1[256], l2[256];
  CU_ASSERT_EQUAL(kvs_model_prefill(r1, s1, t, 10, 0, l1), KVS_OK);
  CU_ASSERT_EQUAL(kvs_model_prefill(r2, s2, t, 10, 0, l2), KVS_OK);
  CU_ASSERT(!memcmp(l1, l2, sizeof l1));
  int finite = 1;
  for (int i = 0; i < 256; i++)
    finite &= isfinite(l1[i]);
  CU_ASSERT(finite);
  kvs_seq *s3;
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(r3, 16, &s3), KVS_OK);
  CU_ASSERT_EQUAL(kvs_model_prefill(r3, s3, t, 10, 0, l1), KVS_ENOTSUP);
  CU_ASSERT_EQUAL(kvs_model_prefill(r1, s1, t, 10, 0, l1), KVS_ERANGE); /* 20 > capacity 16 */
  kvs_seq_free(s1);
  kvs_seq_free(s2);
  kvs_seq_free(s3);
  kvs_model_free(r1);
  kvs_model_free(r2);
  kvs_model_free(r3);
  kvs_model_free(NULL);
}

static int init(void) {
  if (kvs_model_load(kvs_test_model_path(), &g_m) != KVS_OK) return 1;
  V = kvs_model_config(g_m)->n_vocab;
  E = kvs_model_config(g_m)->n_embd;
  return 0;
}
static int clean(void) {
  kvs_model_free(g_m);
  return 0;
}

int main(void) {
  if (!kvs_test_model_path()) {
    printf("model not fetched: skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"agreement with llama.cpp", test_reference_agreement},
      {"layer by layer and subsets", test_layerwise},
      {"prefill on injected KV (engine ops)", test_inject_via_engine},
      {"greedy generation", test_generate},
      {"model id and random models", test_model_id},
      {NULL, NULL}};
  return kvs_test_run_fixture("model_forward", cases, init, clean);
}
