/* GPU forward (model/cuda) against its CPU twins and against the CPU forward
 * and llama.cpp's fixture logits. Label gpu; skips (77) without a device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_engine.h"
#include "kvs_gpu_model.h"
#include "model_int.h" /* kvs__model_weights_get */
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_test.h"
#include "top8_fixture.h"

/* same tolerances as test_forward.c (CPU vs llama.cpp) */
#define LOGIT_TOL  TOP8_LOGIT_TOL
#define MARGIN_TOL TOP8_MARGIN_TOL
/* GPU (fp16 weights and activations into the GEMMs) vs CPU (f32) */
#define GPU_CPU_LOGIT_TOL 1.0f

static kvs_model *g_m;

static void fill_f16(kvs_f16 *p, size_t n, unsigned long long *rs, float scale) {
  for (size_t i = 0; i < n; i++)
    p[i] = kvs_f32_to_f16(kvs_test_randf(rs) * scale);
}

static void test_kernel_twins(void) {
  unsigned long long rs = 42;
  /* rmsnorm */
  uint32_t n = 37, E = 576;
  float *x = malloc((size_t)n * E * 4), *w = malloc(E * 4), *y = malloc((size_t)n * E * 4);
  kvs_f16 *yg = malloc((size_t)n * E * 2);
  for (size_t i = 0; i < (size_t)n * E; i++)
    x[i] = kvs_test_randf(&rs) * 3;
  for (uint32_t i = 0; i < E; i++)
    w[i] = 1 + kvs_test_randf(&rs) * 0.5f;
  kvs_model_rmsnorm_cpu(x, w, y, n, E, 1e-5f);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_rmsnorm_host(x, w, yg, n, E, 1e-5f), KVS_OK);
  double md = 0;
  for (size_t i = 0; i < (size_t)n * E; i++)
    md = fmax(md, fabs(kvs_f16_to_f32(yg[i]) - y[i]) / (fabs(y[i]) + 1e-2));
  printf("\n  rmsnorm: max rel err %.3g\n", md);
  CU_ASSERT(md < 2e-3);
  /* rope */
  uint32_t H = 9, D = 64;
  float *q = malloc((size_t)n * H * D * 4), *qg = malloc((size_t)n * H * D * 4);
  uint32_t pos[37];
  for (uint32_t i = 0; i < n; i++)
    pos[i] = i * 997 % 32768;
  for (size_t i = 0; i < (size_t)n * H * D; i++)
    q[i] = qg[i] = kvs_test_randf(&rs);
  for (int neox = 0; neox <= 1; neox++) {
    for (size_t i = 0; i < (size_t)n * H * D; i++)
      q[i] = qg[i] = kvs_test_randf(&rs);
    kvs_model_rope_cpu(q, n, H, D, pos, 100000.0f, neox);
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_rope_host(qg, n, H, D, pos, 100000.0f, neox), KVS_OK);
    md = 0;
    for (size_t i = 0; i < (size_t)n * H * D; i++)
      md = fmax(md, fabs(q[i] - qg[i]));
    printf("  rope (%s): max abs err %.3g\n", neox ? "neox" : "norm", md);
    CU_ASSERT(md < 1e-5);
  }
  /* swiglu */
  uint32_t F = 1536;
  kvs_f16 *gu = malloc((size_t)n * 2 * F * 2), *og = malloc((size_t)n * F * 2);
  fill_f16(gu, (size_t)n * 2 * F, &rs, 4);
  float *g = malloc((size_t)n * F * 4), *u = malloc((size_t)n * F * 4);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < F; j++) {
      g[(size_t)i * F + j] = kvs_f16_to_f32(gu[(size_t)i * 2 * F + j]);
      u[(size_t)i * F + j] = kvs_f16_to_f32(gu[(size_t)i * 2 * F + F + j]);
    }
  kvs_model_swiglu_cpu(g, u, (size_t)n * F);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_swiglu_host(gu, og, n, F), KVS_OK);
  md = 0;
  for (size_t i = 0; i < (size_t)n * F; i++)
    md = fmax(md, fabs(kvs_f16_to_f32(og[i]) - g[i]) / (fabs(g[i]) + 1e-2));
  printf("  swiglu: max rel err %.3g\n", md);
  CU_ASSERT(md < 2e-3);
  free(x), free(w), free(y), free(yg), free(q), free(qg), free(gu), free(og), free(g), free(u);
}

static void attn_case(uint32_t n, uint32_t H, uint32_t G, uint32_t D, uint32_t past) {
  unsigned long long rs = n * 31 + D;
  uint32_t kv_len = past + n;
  kvs_f16 *q = malloc((size_t)n * H * D * 2), *k = malloc((size_t)kv_len * G * D * 2);
  kvs_f16 *v = malloc((size_t)kv_len * G * D * 2), *og = malloc((size_t)n * H * D * 2);
  float *o = malloc((size_t)n * H * D * 4);
  fill_f16(q, (size_t)n * H * D, &rs, 2.0f);
  fill_f16(k, (size_t)kv_len * G * D, &rs, 2.0f);
  fill_f16(v, (size_t)kv_len * G * D, &rs, 1.0f);
  kvs_model_attn_cpu(q, k, v, o, n, H, G, D, past, kv_len);
  for (int split = 0; split < 2; split++) { /* one grid, then split over the keys where it pays */
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_flash_attn_host(q, k, v, og, n, H, G, D, past, kv_len, split),
                          KVS_OK);
    double md = 0;
    size_t nan = 0;
    for (size_t i = 0; i < (size_t)n * H * D; i++) {
      float a = kvs_f16_to_f32(og[i]);
      nan += isnan(a) != isnan(o[i]);
      md = fmax(md, fabs(a - o[i]));
    }
    printf("  flash attn n=%u H=%u G=%u D=%u past=%u split=%d: max abs err %.3g\n", n, H, G, D,
           past, split, md);
    CU_ASSERT_EQUAL(nan, 0);
    CU_ASSERT(md < 5e-3);
  }
  free(q), free(k), free(v), free(og), free(o);
}

static void test_flash_attn(void) {
  printf("\n");
  attn_case(1, 9, 3, 64, 0);
  attn_case(200, 9, 3, 64, 0);
  attn_case(77, 9, 3, 64, 300);
  attn_case(1, 32, 8, 128, 511);
  attn_case(300, 32, 8, 128, 65);
  attn_case(1000, 9, 3, 64, 0);     /* many tiles, causal skips, a ragged last block */
  attn_case(129, 32, 8, 128, 2000); /* long past: queries see every key tile */
  attn_case(64, 32, 8, 128, 8192);  /* a question on 8K reused tokens: split over the keys */
  attn_case(3, 9, 3, 64, 5000);     /* decode-like, SmolLM2 heads */
  /* D = 64 runs two m16 tiles per warp (128-row blocks): rows past n inside a
   * warp's second tile, a block with one row, interior tiles with no mask */
  attn_case(17, 9, 3, 64, 0);
  attn_case(100, 9, 3, 64, 37);
  attn_case(129, 9, 3, 64, 0);
  attn_case(100, 9, 3, 64, 8000); /* split over the keys with every warp of the block busy */
  attn_case(17, 32, 8, 128, 3);
  attn_case(1000, 32, 8, 128, 0);
}

static void vs_cpu_and_llamacpp(kvs_model *mdl, const char *fixture) {
  size_t ln;
  uint8_t *l = kvs_test_read_file(kvs_test_src_path(fixture), &ln);
  CU_ASSERT_PTR_NOT_NULL_FATAL(l);
  kvs__model_weights w;
  kvs__model_weights_get(mdl, &w);
  kvs_gpu_model *gm;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_create(&w, 1024, &gm), KVS_OK);
  uint32_t V = w.cfg.n_vocab;
  size_t off = 0;
  uint32_t positions = 0, checked = 0, agree = 0, ties = 0, cpu_agree = 0, cpu_checked = 0;
  float max_err = 0, max_cpu = 0, max_k = 0;
  top8_prompt tp = {0};
  int more;
  while ((more = top8_next(l, ln, &off, &tp)) != 0) {
    CU_ASSERT_FATAL(more > 0);
    uint32_t n = tp.n;
    const kvs_token *ids = tp.ids;
    float *lg = malloc((size_t)n * V * 4), *lc = malloc((size_t)n * V * 4);
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_reset(gm), KVS_OK);
    double ms;
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_prefill(gm, ids, n, 1, lg, &ms), KVS_OK);
    kvs_seq *s;
    CU_ASSERT_EQUAL_FATAL(kvs_seq_create(mdl, n, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_model_prefill(mdl, s, ids, n, 1, lc), KVS_OK);
    /* KV: the GPU cache against the CPU cache */
    size_t row = (size_t)w.cfg.n_kv_heads * w.cfg.head_dim;
    kvs_f16 *kb = malloc(n * row * 2), *vb = malloc(n * row * 2);
    for (uint32_t layer = 0; layer < w.cfg.n_layers; layer += 7) {
      CU_ASSERT_EQUAL(kvs_gpu_model_kv_read(gm, layer, 0, n, kb, vb), KVS_OK);
      for (size_t i = 0; i < n * row; i++)
        max_k = fmaxf(max_k, fabsf(kvs_f16_to_f32(kb[i]) - kvs_f16_to_f32(kvs_seq_k(s, layer)[i])));
    }
    free(kb), free(vb);
    for (uint32_t p = 0; p < n; p++) {
      int32_t rid[8];
      float rv[8];
      top8_at(&tp, p, rid, rv);
      const float *row_g = lg + (size_t)p * V, *row_c = lc + (size_t)p * V;
      for (int k = 0; k < 8; k++)
        max_err = fmaxf(max_err, fabsf(row_g[rid[k]] - rv[k]));
      for (uint32_t v = 0; v < V; v++)
        max_cpu = fmaxf(max_cpu, fabsf(row_g[v] - row_c[v]));
      kvs_token ours = kvs_argmax(row_g, V), cpu = kvs_argmax(row_c, V);
      positions++;
      if (rv[0] - rv[1] > MARGIN_TOL) {
        checked++;
        agree += ours == rid[0];
        if (ours != rid[0])
          printf("\n  DISAGREE pos %u: gpu %d llama.cpp %d (margin %.3f)", p, ours, rid[0],
                 rv[0] - rv[1]);
      } else {
        ties++;
      }
      /* CPU's own margin decides where GPU and CPU must agree */
      float c1 = row_c[cpu], c2 = -INFINITY;
      for (uint32_t v = 0; v < V; v++)
        if (v != (uint32_t)cpu && row_c[v] > c2) c2 = row_c[v];
      if (c1 - c2 > MARGIN_TOL) {
        cpu_checked++;
        cpu_agree += ours == cpu;
      }
    }
    free(lg), free(lc);
    kvs_seq_free(s);
  }
  printf("\n  gpu: positions=%u checked(margin>%.2f)=%u agree=%u near_ties=%u "
         "max_logit_err_vs_llamacpp=%.4f"
         "\n  gpu vs cpu: max |dlogit| %.4f (tol %.2f), top-1 equal at %u/%u clear positions, max "
         "|dK| %.4f"
         "\n  top1_agreement_gpu=%.4f\n",
         positions, MARGIN_TOL, checked, agree, ties, max_err, max_cpu, GPU_CPU_LOGIT_TOL,
         cpu_agree, cpu_checked, max_k, checked ? (double)agree / checked : 0.0);
  CU_ASSERT_EQUAL(agree, checked);
  CU_ASSERT(max_err < LOGIT_TOL);
  CU_ASSERT(max_cpu < GPU_CPU_LOGIT_TOL);
  CU_ASSERT_EQUAL(cpu_agree, cpu_checked);
  kvs_gpu_model_free(gm);
  free(l);
}

static void test_vs_cpu_and_llamacpp(void) {
  vs_cpu_and_llamacpp(g_m, "tests/model/fixtures/logits_top8.dat");
}

/* Qwen2.5-Coder-1.5B (biases, NEOX RoPE, untied Q6_K output) and 0.5B (D 64,
 * Q5_0/Q8_0 weights), each when it is in the model cache (KVS_MODEL_DIR, else
 * ~/.cache/kvstash/models): the same checks against llama.cpp's logits
 * (tools/llamacpp/make_qwen2_fixtures.py: the 1.5B's weights dequantized to
 * F32, the 0.5B's GGUF as it is) and the CPU. In the Qwen-only run (no
 * SmolLM2) one of them must be there. */
static int g_qwen_required;
static void test_qwen2(void) {
  static const struct {
    const char *file, *fixture;
  } Q[] = {{"qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tests/model/fixtures/qwen2_1.5b_top8.dat"},
           {"qwen2.5-coder-0.5b-instruct.gguf", "tests/model/fixtures/qwen2_0.5b_top8.dat"}};
  const char *dir = getenv("KVS_MODEL_DIR"), *home = getenv("HOME");
  int ran = 0;
  for (size_t i = 0; i < sizeof Q / sizeof *Q; i++) {
    char path[4096];
    if (dir)
      snprintf(path, sizeof path, "%s/%s", dir, Q[i].file);
    else
      snprintf(path, sizeof path, "%s/.cache/kvstash/models/%s", home ? home : ".", Q[i].file);
    kvs_model *m;
    if (access(path, R_OK) != 0 || kvs_model_load(path, &m) != KVS_OK) {
      printf("\n  %s absent: skipped", path);
      continue;
    }
    printf("\n  %s:", Q[i].file);
    vs_cpu_and_llamacpp(m, Q[i].fixture);
    kvs_model_free(m);
    ran++;
  }
  printf("\n");
  if (g_qwen_required) CU_ASSERT(ran > 0);
}

/* Device-generated random weights == host-generated ones: a small random
 * model run on the CPU (host weights) and on the GPU (weights made on the
 * device from the seed) gives the same logits. Then the 8B shape runs. */
static void test_random_models(void) {
  for (int qwen = 0; qwen <= 1; qwen++) {
    kvs_model_cfg small = {.n_vocab = 1000,
                           .n_embd = 256,
                           .n_layers = 2,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .head_dim = 64,
                           .n_ff = 512,
                           .n_ctx_train = 512,
                           .rope_theta = 10000.0f,
                           .norm_eps = 1e-5f};
    if (qwen) { /* qwen2-shaped: Q/K/V biases, NEOX pairs */
      small.qkv_bias = 1;
      small.rope_type = KVS_ROPE_NEOX;
      small.rope_theta = 1e6f;
    }
    kvs_model *cpu, *dev;
    CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(&small, 9, 1, &cpu), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(&small, 9, 0, &dev), KVS_OK);
    kvs__model_weights w;
    kvs__model_weights_get(dev, &w);
    kvs_gpu_model *gm;
    CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_create(&w, 256, &gm), KVS_OK);
    kvs_token t[100];
    for (int i = 0; i < 100; i++)
      t[i] = (i * 37) % 1000;
    float *lg = malloc(1000 * 4), *lc = malloc(1000 * 4);
    CU_ASSERT_EQUAL(kvs_gpu_model_prefill(gm, t, 60, 0, NULL, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_gpu_model_prefill(gm, t + 60, 40, 0, lg, NULL), KVS_OK); /* on top of KV */
    kvs_seq *s;
    CU_ASSERT_EQUAL_FATAL(kvs_seq_create(cpu, 100, &s), KVS_OK);
    CU_ASSERT_EQUAL(kvs_model_prefill(cpu, s, t, 100, 0, lc), KVS_OK);
    float md = 0;
    for (int v = 0; v < 1000; v++)
      md = fmaxf(md, fabsf(lg[v] - lc[v]));
    printf("\n  random small %s model, device-made weights vs host: max |dlogit| %.4f\n",
           qwen ? "qwen2" : "llama", md);
    CU_ASSERT(md < 0.1f);
    CU_ASSERT_EQUAL(kvs_argmax(lg, 1000), kvs_argmax(lc, 1000));
    kvs_seq_free(s);
    kvs_gpu_model_free(gm);
    kvs_model_free(cpu);
    kvs_model_free(dev);
    free(lg), free(lc);
  }
  /* the Llama-3-8B shape */
  kvs__model_weights w;
  kvs_gpu_model *gm;
  kvs_model *big;
  CU_ASSERT_EQUAL_FATAL(kvs_model_create_random(NULL, 1, 0, &big), KVS_OK);
  kvs__model_weights_get(big, &w);
  if (kvs_gpu_model_create(&w, 2048, &gm) == KVS_OK) {
    kvs_token *tb = malloc(2048 * sizeof *tb);
    for (int i = 0; i < 2048; i++)
      tb[i] = (kvs_token)((i * 7919) % 128256);
    float *lb = malloc(128256 * 4);
    double ms = 0;
    CU_ASSERT_EQUAL(kvs_gpu_model_prefill(gm, tb, 2048, 0, lb, &ms), KVS_OK);
    int finite = 1;
    for (int v = 0; v < 128256; v++)
      finite &= isfinite(lb[v]);
    CU_ASSERT(finite);
    printf("  8B shape: prefill 2048 tokens in %.1f ms\n", ms);
    free(tb), free(lb);
    kvs_gpu_model_free(gm);
  } else {
    printf("  8B shape: not enough GPU memory, not run\n");
  }
  kvs_model_free(big);
}

static const char *RAG =
    "<|im_start|>system\nAnswer from the passage.<|im_end|>\n<|im_start|>user\nThe Eiffel Tower "
    "is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.\n"
    "Question: who designed the Eiffel Tower?<|im_end|>\n<|im_start|>assistant\n";

/* fp16 activations: a different GEMM shape (n rows) may round a value one
 * fp16 ulp apart, which 30 layers carry to the logits; bound for "same
 * computation, different batch shape" on the GPU */
#define GPU_RESHAPE_TOL 0.1f

/* top-1 minus top-2 of a logit row */
static float margin(const float *row, uint32_t V) {
  kvs_token b = kvs_argmax(row, V);
  float m2 = -INFINITY;
  for (uint32_t v = 0; v < V; v++)
    if (v != (uint32_t)b && row[v] > m2) m2 = row[v];
  return row[b] - m2;
}

static float max_diff(const float *a, const float *b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; i++)
    m = fmaxf(m, fabsf(a[i] - b[i]));
  return m;
}

/* The GPU engine ops (device buffers) against the CPU model: prefill, layer
 * by layer, prefill over injected KV, subset recompute with layer_kv. */
static void test_gpu_engine(void) {
  size_t cap = strlen(RAG) + 8, nn;
  kvs_token *ids = malloc(cap * sizeof *ids);
  CU_ASSERT_EQUAL_FATAL(kvs_tok_encode(kvs_model_tok(g_m), RAG, strlen(RAG), 1, 0, ids, cap, &nn),
                        KVS_OK);
  uint32_t n = (uint32_t)nn;
  kvs__model_weights w;
  kvs__model_weights_get(g_m, &w);
  uint32_t V = w.cfg.n_vocab, E = w.cfg.n_embd, L = w.cfg.n_layers;
  size_t row = (size_t)w.cfg.n_kv_heads * w.cfg.head_dim;
  kvs_gpu_model *gm;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_create(&w, 256, &gm), KVS_OK);
  kvs_engine *e;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_model_engine(gm, kvs_model_get_id(g_m), &e), KVS_OK);
  const kvs_engine_ops *o = e->ops;
  kvs_engine_info info;
  CU_ASSERT_EQUAL(o->info(e, &info), KVS_OK);
  CU_ASSERT_EQUAL(info.mem, KVS_ENGINE_MEM_DEVICE);
  CU_ASSERT_EQUAL(kvs_layout_validate(&info.layout), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(&info.model_id, kvs_model_get_id(g_m)));
  float *d_lg, *d_h;
  void *d_k, *d_v, *d_k2, *d_v2;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc((size_t)n * V * 4, (void **)&d_lg), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc((size_t)n * E * 4, (void **)&d_h), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc(n * row * 2, &d_k), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc(n * row * 2, &d_v), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc(n * row * 2, &d_k2), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_buffer_alloc(n * row * 2, &d_v2), KVS_OK);
  float *ref = malloc((size_t)n * V * 4), *lg = malloc((size_t)n * V * 4),
        *cpu = malloc((size_t)n * V * 4);
  /* full prefill, all logits, vs the CPU */
  kvs_engine_seq *a, *b, *c;
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n, &a), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n, &b), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(o->seq_create(e, n, &c), KVS_OK);
  CU_ASSERT_EQUAL(o->prefill(e, a, ids, n, 1, d_lg), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_copy(ref, d_lg, (size_t)n * V * 4), KVS_OK);
  kvs_seq *cs;
  CU_ASSERT_EQUAL_FATAL(kvs_seq_create(g_m, n, &cs), KVS_OK);
  CU_ASSERT_EQUAL(kvs_model_prefill(g_m, cs, ids, n, 1, cpu), KVS_OK);
  kvs_seq_free(cs);
  float d_cpu = max_diff(ref, cpu, (size_t)n * V);
  CU_ASSERT(d_cpu < GPU_CPU_LOGIT_TOL);
  CU_ASSERT_EQUAL(kvs_argmax(ref + (size_t)(n - 1) * V, V),
                  kvs_argmax(cpu + (size_t)(n - 1) * V, V));
  /* layer by layer over all tokens */
  uint32_t *idx = malloc(n * sizeof *idx);
  for (uint32_t i = 0; i < n; i++)
    idx[i] = i;
  CU_ASSERT_EQUAL(o->embed(e, ids, n, d_h), KVS_OK);
  for (uint32_t l = 0; l < L; l++)
    CU_ASSERT_EQUAL(o->layer(e, b, l, n, idx, NULL, d_h), KVS_OK);
  CU_ASSERT_EQUAL(o->logits(e, n, d_h, d_lg), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_copy(lg, d_lg, (size_t)n * V * 4), KVS_OK);
  float d_lw = max_diff(lg, ref, (size_t)n * V);
  CU_ASSERT(d_lw < 1e-3f);
  CU_ASSERT_EQUAL(o->seq_len(e, b), n);
  /* injected KV: copy n-11 tokens of a into c (device to device), prefill the rest */
  uint32_t k = n - 11;
  for (uint32_t l = 0; l < L; l++) {
    CU_ASSERT_EQUAL(o->kv_read(e, a, l, 0, k, d_k, d_v), KVS_OK);
    CU_ASSERT_EQUAL(o->kv_write(e, c, l, 0, k, d_k, d_v), KVS_OK);
  }
  CU_ASSERT_EQUAL(o->prefill(e, c, ids + k, n - k, 0, d_lg), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_copy(lg, d_lg, (size_t)V * 4), KVS_OK);
  float d_inj = max_diff(lg, ref + (size_t)(n - 1) * V, V);
  CU_ASSERT(d_inj < GPU_RESHAPE_TOL);
  if (margin(ref + (size_t)(n - 1) * V, V) > 2 * GPU_RESHAPE_TOL)
    CU_ASSERT_EQUAL(kvs_argmax(lg, V), kvs_argmax(ref + (size_t)(n - 1) * V, V));
  /* subset recompute on top of a's full KV: every 5th token and the last */
  uint32_t ns = 0;
  for (uint32_t i = 0; i < n; i++)
    if (i % 5 == 2 || i == n - 1) idx[ns++] = i;
  kvs_token *sub = malloc(ns * sizeof *sub);
  for (uint32_t j = 0; j < ns; j++)
    sub[j] = ids[idx[j]];
  CU_ASSERT_EQUAL(o->embed(e, sub, ns, d_h), KVS_OK);
  kvs_f16 *h1 = malloc(row * 2), *h2 = malloc(row * 2);
  size_t kv_diff = 0;
  for (uint32_t l = 0; l < L; l++) {
    CU_ASSERT_EQUAL(o->layer_kv(e, l, ns, idx, d_h, d_k2, d_v2), KVS_OK);
    CU_ASSERT_EQUAL(o->layer(e, a, l, ns, idx, NULL, d_h), KVS_OK);
    for (uint32_t j = 0; j < ns; j += 4) { /* fresh K from layer_kv == what layer wrote */
      CU_ASSERT_EQUAL(kvs_gpu_copy(h1, (char *)d_k2 + j * row * 2, row * 2), KVS_OK);
      CU_ASSERT_EQUAL(o->kv_read(e, a, l, idx[j], 1, d_k, d_v), KVS_OK);
      CU_ASSERT_EQUAL(kvs_gpu_copy(h2, d_k, row * 2), KVS_OK);
      kv_diff += memcmp(h1, h2, row * 2) != 0;
    }
  }
  CU_ASSERT_EQUAL(kv_diff, 0);
  CU_ASSERT_EQUAL(o->logits(e, ns, d_h, d_lg), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_copy(lg, d_lg, (size_t)ns * V * 4), KVS_OK);
  float d_sub = 0;
  for (uint32_t j = 0; j < ns; j++) {
    d_sub = fmaxf(d_sub, max_diff(lg + (size_t)j * V, ref + (size_t)idx[j] * V, V));
    if (margin(ref + (size_t)idx[j] * V, V) > 2 * GPU_RESHAPE_TOL)
      CU_ASSERT_EQUAL(kvs_argmax(lg + (size_t)j * V, V), kvs_argmax(ref + (size_t)idx[j] * V, V));
  }
  CU_ASSERT(d_sub < GPU_RESHAPE_TOL);
  double spt = 0;
  CU_ASSERT_EQUAL(o->prefill_cost(e, 0, &spt), KVS_OK);
  CU_ASSERT(spt > 0);
  printf("\n  gpu engine: vs cpu %.4f, layer-by-layer %.3g, injected %.3g, subset %.3g (max "
         "|dlogit|), %.3g s/token\n",
         d_cpu, d_lw, d_inj, d_sub, spt);
  free(h1), free(h2), free(sub), free(idx), free(ref), free(lg), free(cpu), free(ids);
  o->seq_free(e, a);
  o->seq_free(e, b);
  o->seq_free(e, c);
  kvs_gpu_buffer_free(d_lg), kvs_gpu_buffer_free(d_h), kvs_gpu_buffer_free(d_k);
  kvs_gpu_buffer_free(d_v), kvs_gpu_buffer_free(d_k2), kvs_gpu_buffer_free(d_v2);
  kvs_engine_free(e);
  kvs_gpu_model_free(gm);
}

static int init(void) { return kvs_model_load(kvs_test_model_path(), &g_m) != KVS_OK; }
static int clean(void) {
  kvs_model_free(g_m);
  return 0;
}

int main(void) {
  if (kvs_gpu_device_count() == 0) {
    printf("no CUDA device (compiled=%d): skipped\n", kvs_gpu_compiled());
    return KVS_TEST_SKIP;
  }
  if (!kvs_test_model_path()) {
    /* no SmolLM2 (a GPU machine that got only the Qwen file over several
     * calls): the cases that need no SmolLM2, when KVS_MODEL_DIR names the
     * directory of the Qwen2.5-Coder-1.5B file */
    if (!getenv("KVS_MODEL_DIR")) {
      printf("model not fetched: skipped\n");
      return KVS_TEST_SKIP;
    }
    g_qwen_required = 1;
    static const kvs_test_case qwen_only[] = {{"kernel twins", test_kernel_twins},
                                              {"flash attention twin", test_flash_attn},
                                              {"Qwen2.5-Coder vs CPU and llama.cpp", test_qwen2},
                                              {"random and 8B-shaped models", test_random_models},
                                              {NULL, NULL}};
    return kvs_test_run_fixture("model_gpu", qwen_only, NULL, NULL);
  }
  static const kvs_test_case cases[] = {{"kernel twins", test_kernel_twins},
                                        {"flash attention twin", test_flash_attn},
                                        {"forward vs CPU and llama.cpp", test_vs_cpu_and_llamacpp},
                                        {"Qwen2.5-Coder vs CPU and llama.cpp", test_qwen2},
                                        {"random and 8B-shaped models", test_random_models},
                                        {"GPU engine ops", test_gpu_engine},
                                        {NULL, NULL}};
  return kvs_test_run_fixture("model_gpu", cases, init, clean);
}
