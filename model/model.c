/* model.c - Llama-family forward pass on the CPU (f32 weights, OpenBLAS).
 *
 * Shapes (E = n_embd, H = heads, G = kv heads, D = head_dim, F = n_ff, V = vocab):
 *   tok_embd (V, E); per layer: attn_norm (E), wq (H*D, E), wk (G*D, E), wv (G*D, E),
 *   wo (E, H*D), ffn_norm (E), w_gate (F, E), w_up (F, E), w_down (E, F);
 *   qwen2 adds biases bq (H*D), bk (G*D), bv (G*D) after the Q/K/V products;
 *   out_norm (E); output (V, E) (tied to tok_embd when the GGUF has no output.weight).
 * Weights are row-major (out, in) as GGUF stores them (ne[0] = in), so y = x W^T.
 * KV cache per sequence: for each layer K (cap, G, D) then V (cap, G, D), fp16;
 * attention always reads K/V back from the fp16 cache, so a prefill and a
 * prefill over injected KV compute with the very same numbers. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "model_int.h"

typedef kvs__layer_weights layer_w;

struct kvs_model {
  kvs_model_cfg cfg;
  kvs_gguf *g;
  kvs_tok *tok;
  kvs_model_id id;
  int host_weights;
  uint64_t seed; /* random models */
  float *tok_embd, *output, *out_norm;
  layer_w *layers;
  /* fp16 copies of the matrices for single-token calls (decode streams half
   * the bytes); the f32 matrices hold exactly these fp16 values, so every
   * path multiplies with the same weights (as the GPU does) */
  struct layer16 {
    kvs_f16 *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
  } * l16;
  kvs_f16 *embd16, *out16;
  float **owned; /* every weight allocation, freed at the end */
  uint32_t n_owned;
  /* scratch, grown on demand */
  float *sc[12];
  size_t sc_cap[12];
  double pf_sec, pf_tokens;
};

struct kvs_seq {
  kvs_model *m;
  uint32_t cap, len;
  kvs_f16 *kv; /* (layers, 2, cap, G, D) */
};

enum { S_X, S_XN, S_Q, S_K, S_V, S_ATT, S_G, S_U, S_SCORE, S_KF, S_VF, S_TMP };

static float *scratch(kvs_model *m, int i, size_t n) {
  if (m->sc_cap[i] < n) {
    free(m->sc[i]);
    m->sc[i] = malloc(n * sizeof(float));
    m->sc_cap[i] = m->sc[i] ? n : 0;
  }
  return m->sc[i];
}

static float *own(kvs_model *m, size_t n) {
  float *p = malloc(n * sizeof(float));
  if (!p) return NULL;
  m->owned[m->n_owned++] = p;
  return p;
}

void kvs_model_free(kvs_model *m) {
  if (!m) return;
  for (uint32_t i = 0; i < m->n_owned; i++)
    free(m->owned[i]);
  free(m->owned);
  free(m->layers);
  if (m->l16) {
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
      free(m->l16[l].wq), free(m->l16[l].wk), free(m->l16[l].wv), free(m->l16[l].wo);
      free(m->l16[l].w_gate), free(m->l16[l].w_up), free(m->l16[l].w_down);
    }
    free(m->l16);
  }
  if (m->out16 != m->embd16) free(m->out16);
  free(m->embd16);
  for (int i = 0; i < 12; i++)
    free(m->sc[i]);
  kvs_tok_free(m->tok);
  kvs_gguf_free(m->g);
  free(m);
}

const kvs_model_cfg *kvs_model_config(const kvs_model *m) { return &m->cfg; }
const kvs_model_id *kvs_model_get_id(const kvs_model *m) { return &m->id; }
const kvs_tok *kvs_model_tok(const kvs_model *m) { return m->tok; }
const kvs_gguf *kvs_model_gguf(const kvs_model *m) { return m->g; }

kvs_layout kvs_model_layout(const kvs_model *m) {
  kvs_layout l = {.n_layers = m->cfg.n_layers,
                  .n_kv_heads = m->cfg.n_kv_heads,
                  .head_dim = m->cfg.head_dim,
                  .dtype = KVS_DTYPE_F16,
                  .rope_type = m->cfg.rope_type,
                  .rope_dims = m->cfg.head_dim,
                  .rope_theta = m->cfg.rope_theta,
                  .rope_freq_scale = 1.0f};
  return l;
}

static kvs_err compute_id(kvs_model *m, kvs_hash128 weights) {
  kvs_model_desc d = {.arch = m->cfg.qkv_bias ? "qwen2" : "llama",
                      .layout = kvs_model_layout(m),
                      .n_embd = m->cfg.n_embd,
                      .n_heads = m->cfg.n_heads,
                      .n_ff = m->cfg.n_ff,
                      .n_vocab = m->cfg.n_vocab,
                      .norm_eps = m->cfg.norm_eps,
                      .weights = weights};
  return kvs_model_id_compute(&d, &m->id);
}

static kvs_err check_cfg(const kvs_model_cfg *c) {
  KVS_RETURN_ERROR_IF(!c->n_vocab || !c->n_embd || !c->n_layers || !c->n_heads || !c->n_kv_heads ||
                          !c->n_ff || !c->head_dim,
                      KVS_ECORRUPT, "model: zero dimension");
  KVS_RETURN_ERROR_IF(c->n_heads % c->n_kv_heads, KVS_ECORRUPT, "model: heads % kv_heads");
  KVS_RETURN_ERROR_IF(c->head_dim & 1 || c->head_dim > KVS_MAX_HEAD_DIM, KVS_ECORRUPT,
                      "model: head_dim");
  KVS_RETURN_ERROR_IF(c->n_layers > KVS_MAX_LAYERS || c->n_kv_heads > KVS_MAX_KV_HEADS,
                      KVS_ECORRUPT, "model: layers/heads");
  KVS_RETURN_ERROR_IF(c->n_embd > 65536 || c->n_ff > 1 << 20 || c->n_vocab > 1 << 24, KVS_ECORRUPT,
                      "model: size");
  KVS_RETURN_ERROR_IF(!(c->rope_theta > 0) || !(c->norm_eps > 0), KVS_ECORRUPT, "model: theta/eps");
  KVS_RETURN_ERROR_IF(c->rope_type != KVS_ROPE_NORM && c->rope_type != KVS_ROPE_NEOX, KVS_ECORRUPT,
                      "model: rope type");
  return KVS_OK;
}

/* Dequantizes tensor `name` of shape (rows, cols) (ne = [cols, rows]) into
 * a new f32 buffer owned by the model. */
static kvs_err load_w(kvs_model *m, const char *name, uint64_t cols, uint64_t rows, float **out) {
  const kvs_gguf_tensor *t = kvs_gguf_find_tensor(m->g, name);
  if (!t) {
    KVS_LOGW("model", "missing tensor", "name=%s", name);
    return KVS_ERR_AT(KVS_ECORRUPT, "model: missing tensor");
  }
  KVS_RETURN_ERROR_IF(t->ne[0] != cols || t->n_elems != cols * rows, KVS_ECORRUPT,
                      "model: tensor shape");
  KVS_RETURN_ERROR_IF(!t->data, KVS_ENOTSUP, "model: tensor type");
  float *p = own(m, cols * rows);
  if (!p) return KVS_ENOMEM;
  KVS_TRY(kvs_dequant(t->type, t->data, p, cols * rows));
  *out = p;
  return KVS_OK;
}

static kvs_err load(kvs_model *m) {
  const kvs_gguf *g = m->g;
  const char *arch;
  uint64_t alen;
  KVS_TRY(kvs_gguf_get_str(g, "general.architecture", &arch, &alen));
  kvs_model_cfg *c = &m->cfg;
  const char *ak; /* metadata keys are "<arch>.<key>" */
  if (alen == 5 && !memcmp(arch, "llama", 5)) {
    ak = "llama";
    c->rope_type = KVS_ROPE_NORM;
  } else if (alen == 5 && !memcmp(arch, "qwen2", 5)) {
    ak = "qwen2";
    c->rope_type = KVS_ROPE_NEOX; /* llama.cpp: LLM_ARCH_QWEN2 -> LLAMA_ROPE_TYPE_NEOX */
    c->qkv_bias = 1;
  } else {
    return KVS_ERR_AT(KVS_ENOTSUP, "model: architecture not llama or qwen2");
  }
  char key[64];
#define AK(k) (snprintf(key, sizeof key, "%s." k, ak), key)
  KVS_TRY(kvs_gguf_get_u32(g, AK("embedding_length"), &c->n_embd));
  KVS_TRY(kvs_gguf_get_u32(g, AK("block_count"), &c->n_layers));
  KVS_TRY(kvs_gguf_get_u32(g, AK("feed_forward_length"), &c->n_ff));
  KVS_TRY(kvs_gguf_get_u32(g, AK("attention.head_count"), &c->n_heads));
  c->n_kv_heads = c->n_heads;
  kvs_gguf_get_u32(g, AK("attention.head_count_kv"), &c->n_kv_heads);
  c->n_ctx_train = 2048;
  kvs_gguf_get_u32(g, AK("context_length"), &c->n_ctx_train);
  c->rope_theta = 10000.0f;
  kvs_gguf_get_f32(g, AK("rope.freq_base"), &c->rope_theta);
  c->norm_eps = 1e-5f;
  kvs_gguf_get_f32(g, AK("attention.layer_norm_rms_epsilon"), &c->norm_eps);
  KVS_RETURN_ERROR_IF(!c->n_heads || c->n_embd % c->n_heads, KVS_ECORRUPT, "model: head dim");
  c->head_dim = c->n_embd / c->n_heads;
  uint32_t rd;
  if (kvs_gguf_get_u32(g, AK("rope.dimension_count"), &rd) == KVS_OK)
    KVS_RETURN_ERROR_IF(rd != c->head_dim, KVS_ENOTSUP, "model: partial rope");
  /* scaled RoPE (linear, YaRN, llama3) in the forward pass is not implemented */
  const char *st;
  uint64_t stl;
  if (kvs_gguf_get_str(g, AK("rope.scaling.type"), &st, &stl) == KVS_OK)
    KVS_RETURN_ERROR_IF(!(stl == 4 && !memcmp(st, "none", 4)), KVS_ENOTSUP,
                        "model: rope scaling in the forward pass");
#undef AK
  KVS_TRY(kvs_tok_create(g, &m->tok));
  c->n_vocab = kvs_tok_n_vocab(m->tok);
  KVS_TRY(check_cfg(c));
  uint32_t E = c->n_embd, HD = c->n_heads * c->head_dim, GD = c->n_kv_heads * c->head_dim;
  m->owned = calloc(16 + 12 * (size_t)c->n_layers, sizeof *m->owned);
  m->layers = calloc(c->n_layers, sizeof *m->layers);
  if (!m->owned || !m->layers) return KVS_ENOMEM;
  KVS_TRY(load_w(m, "token_embd.weight", E, c->n_vocab, &m->tok_embd));
  KVS_TRY(load_w(m, "output_norm.weight", E, 1, &m->out_norm));
  if (kvs_gguf_find_tensor(g, "output.weight"))
    KVS_TRY(load_w(m, "output.weight", E, c->n_vocab, &m->output));
  else
    m->output = m->tok_embd;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    layer_w *L = &m->layers[l];
    char nm[96];
#define LW(field, suffix, cols, rows)                                                              \
  snprintf(nm, sizeof nm, "blk.%u." suffix ".weight", l);                                          \
  KVS_TRY(load_w(m, nm, cols, rows, &L->field))
    LW(attn_norm, "attn_norm", E, 1);
    LW(wq, "attn_q", E, HD);
    LW(wk, "attn_k", E, GD);
    LW(wv, "attn_v", E, GD);
    LW(wo, "attn_output", HD, E);
    LW(ffn_norm, "ffn_norm", E, 1);
    LW(w_gate, "ffn_gate", E, c->n_ff);
    LW(w_up, "ffn_up", E, c->n_ff);
    LW(w_down, "ffn_down", c->n_ff, E);
#undef LW
    if (c->qkv_bias) {
#define LB(field, suffix, n)                                                                       \
  snprintf(nm, sizeof nm, "blk.%u." suffix ".bias", l);                                            \
  KVS_TRY(load_w(m, nm, n, 1, &L->field))
      LB(bq, "attn_q", HD);
      LB(bk, "attn_k", GD);
      LB(bv, "attn_v", GD);
#undef LB
    }
  }
  size_t sz;
  const void *bytes = kvs_gguf_bytes(g, &sz);
  return compute_id(m, kvs_hash128_buf(bytes, sz));
}

/* Rounds a matrix to fp16 values in place and returns its fp16 copy. */
static kvs_f16 *to_f16(float *w, size_t n) {
  kvs_f16 *h = malloc(n * sizeof *h);
  if (!h) return NULL;
  for (size_t i = 0; i < n; i++) {
    h[i] = kvs_f32_to_f16(w[i]);
    w[i] = kvs_f16_to_f32(h[i]);
  }
  return h;
}

static kvs_err make_f16(kvs_model *m) {
  const kvs_model_cfg *c = &m->cfg;
  size_t E = c->n_embd, HD = (size_t)c->n_heads * c->head_dim;
  size_t GD = (size_t)c->n_kv_heads * c->head_dim, F = c->n_ff;
  m->l16 = calloc(c->n_layers, sizeof *m->l16);
  if (!m->l16 || !(m->embd16 = to_f16(m->tok_embd, (size_t)c->n_vocab * E))) return KVS_ENOMEM;
  m->out16 = m->output == m->tok_embd ? m->embd16 : to_f16(m->output, (size_t)c->n_vocab * E);
  if (!m->out16) return KVS_ENOMEM;
  for (uint32_t l = 0; l < c->n_layers; l++) {
    layer_w *L = &m->layers[l];
    struct layer16 *h = &m->l16[l];
    if (!(h->wq = to_f16(L->wq, HD * E)) || !(h->wk = to_f16(L->wk, GD * E)) ||
        !(h->wv = to_f16(L->wv, GD * E)) || !(h->wo = to_f16(L->wo, E * HD)) ||
        !(h->w_gate = to_f16(L->w_gate, F * E)) || !(h->w_up = to_f16(L->w_up, F * E)) ||
        !(h->w_down = to_f16(L->w_down, E * F)))
      return KVS_ENOMEM;
  }
  return KVS_OK;
}

kvs_err kvs_model_load(const char *path, kvs_model **out) {
  if (!path || !out) return KVS_EINVAL;
  *out = NULL;
  kvs_model *m = calloc(1, sizeof *m);
  if (!m) return KVS_ENOMEM;
  m->host_weights = 1;
  kvs_err e = kvs_gguf_open(path, &m->g);
  if (!e) e = load(m);
  if (!e) e = make_f16(m);
  if (e) {
    KVS_LOGW("model", "load failed", "path=\"%s\" err=%s", path, kvs_errname(e));
    kvs_model_free(m);
    return e;
  }
  KVS_LOGI("model", "loaded", "layers=%u embd=%u heads=%u kv_heads=%u vocab=%u", m->cfg.n_layers,
           m->cfg.n_embd, m->cfg.n_heads, m->cfg.n_kv_heads, m->cfg.n_vocab);
  *out = m;
  return KVS_OK;
}

/* ---------------------------------------------------- random weights */
/* Value of element i of tensor t of a random model: a hash of (seed, t, i)
 * mapped to uniform [-1, 1) times the tensor's scale. The GPU builds the same
 * weights from the same function (kvs__rand_weight in model_rand.h). */
#include "model_rand.h"

void kvs_model_cfg_llama3_8b(kvs_model_cfg *out) {
  *out = (kvs_model_cfg){.n_vocab = 128256,
                         .n_embd = 4096,
                         .n_layers = 32,
                         .n_heads = 32,
                         .n_kv_heads = 8,
                         .head_dim = 128,
                         .n_ff = 14336,
                         .n_ctx_train = 8192,
                         .rope_theta = 500000.0f,
                         .norm_eps = 1e-5f};
}

kvs_err kvs_model_create_random(const kvs_model_cfg *cfg, uint64_t seed, int host_weights,
                                kvs_model **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  kvs_model *m = calloc(1, sizeof *m);
  if (!m) return KVS_ENOMEM;
  if (cfg)
    m->cfg = *cfg;
  else
    kvs_model_cfg_llama3_8b(&m->cfg);
  m->seed = seed;
  m->host_weights = host_weights;
  kvs_err e = check_cfg(&m->cfg);
  if (e) goto fail;
  kvs_model_cfg *c = &m->cfg;
  uint32_t E = c->n_embd, HD = c->n_heads * c->head_dim, GD = c->n_kv_heads * c->head_dim;
  e = KVS_ENOMEM;
  m->owned = calloc(16 + 12 * (size_t)c->n_layers, sizeof *m->owned);
  m->layers = calloc(c->n_layers, sizeof *m->layers);
  if (!m->owned || !m->layers) goto fail;
  if (host_weights) {
#define RW(dst, tid, n)                                                                            \
  do {                                                                                             \
    if (!((dst) = own(m, (size_t)(n)))) goto fail;                                                 \
    kvs__rand_fill(dst, seed, tid, (size_t)(n), kvs__rand_scale(c, tid));                          \
  } while (0)
    RW(m->tok_embd, KVS__RT_EMBD, (size_t)c->n_vocab * E);
    RW(m->out_norm, KVS__RT_OUT_NORM, E);
    RW(m->output, KVS__RT_OUTPUT, (size_t)c->n_vocab * E);
    for (uint32_t l = 0; l < c->n_layers; l++) {
      layer_w *L = &m->layers[l];
      uint32_t b = KVS__RT_LAYER(l);
      RW(L->attn_norm, b + 0, E);
      RW(L->wq, b + 1, (size_t)HD * E);
      RW(L->wk, b + 2, (size_t)GD * E);
      RW(L->wv, b + 3, (size_t)GD * E);
      RW(L->wo, b + 4, (size_t)E * HD);
      RW(L->ffn_norm, b + 5, E);
      RW(L->w_gate, b + 6, (size_t)c->n_ff * E);
      RW(L->w_up, b + 7, (size_t)c->n_ff * E);
      RW(L->w_down, b + 8, (size_t)E * c->n_ff);
      if (c->qkv_bias) {
        RW(L->bq, b + 9, HD);
        RW(L->bk, b + 10, GD);
        RW(L->bv, b + 11, GD);
      }
    }
#undef RW
    if ((e = make_f16(m))) goto fail;
  }
  /* the "weights hash" of a random model: its generator and seed */
  uint8_t idb[16] = {'k', 'v', 's', '-', 'r', 'a', 'n', 'd'};
  memcpy(idb + 8, &seed, 8);
  e = compute_id(m, kvs_hash128_buf(idb, sizeof idb));
  if (e) goto fail;
  *out = m;
  return KVS_OK;
fail:
  kvs_model_free(m);
  return e;
}

uint64_t kvs__model_seed(const kvs_model *m) { return m->seed; }

void kvs__model_weights_get(const kvs_model *m, kvs__model_weights *w) {
  memset(w, 0, sizeof *w);
  w->cfg = m->cfg;
  w->host = m->host_weights;
  w->random = m->g == NULL;
  w->seed = m->seed;
  if (m->host_weights) {
    w->tok_embd = m->tok_embd;
    w->output = m->output;
    w->out_norm = m->out_norm;
    w->layers = m->layers;
  }
}

/* ---------------------------------------------------------- sequences */
kvs_err kvs_seq_create(kvs_model *m, uint32_t capacity, kvs_seq **out) {
  if (!m || !out || !capacity) return KVS_EINVAL;
  *out = NULL;
  kvs_seq *s = calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  size_t n = (size_t)m->cfg.n_layers * 2 * capacity * m->cfg.n_kv_heads * m->cfg.head_dim;
  s->kv = malloc(n * sizeof(kvs_f16));
  if (!s->kv) {
    free(s);
    return KVS_ENOMEM;
  }
  s->m = m;
  s->cap = capacity;
  *out = s;
  return KVS_OK;
}
void kvs_seq_free(kvs_seq *s) {
  if (!s) return;
  free(s->kv);
  free(s);
}
uint32_t kvs_seq_len(const kvs_seq *s) { return s->len; }
uint32_t kvs_seq_capacity(const kvs_seq *s) { return s->cap; }
kvs_err kvs_seq_truncate(kvs_seq *s, uint32_t n) {
  if (!s || n > s->len) return KVS_EINVAL;
  s->len = n;
  return KVS_OK;
}
static size_t plane(const kvs_seq *s) {
  return (size_t)s->cap * s->m->cfg.n_kv_heads * s->m->cfg.head_dim;
}
kvs_f16 *kvs_seq_k(kvs_seq *s, uint32_t layer) { return s->kv + (size_t)2 * layer * plane(s); }
kvs_f16 *kvs_seq_v(kvs_seq *s, uint32_t layer) {
  return s->kv + (size_t)(2 * layer + 1) * plane(s);
}
kvs_err kvs_seq_set_len(kvs_seq *s, uint32_t n) {
  if (!s) return KVS_EINVAL;
  if (n > s->cap) return KVS_ERANGE;
  s->len = n;
  return KVS_OK;
}

/* ------------------------------------------------------------ kernels */
/* CPU twins of the model/cuda kernels: the GPU path must match these. */
void kvs_model_rmsnorm_cpu(const float *x, const float *w, float *y, uint32_t n, uint32_t E,
                           float eps) {
  for (uint32_t i = 0; i < n; i++) {
    const float *xi = x + (size_t)i * E;
    double ss = 0;
    for (uint32_t j = 0; j < E; j++)
      ss += (double)xi[j] * xi[j];
    float r = (float)(1.0 / sqrt(ss / E + eps));
    for (uint32_t j = 0; j < E; j++)
      y[(size_t)i * E + j] = xi[j] * r * w[j];
  }
}

/* x (n, heads, D): pairs (2i, 2i+1) (NORM) or (i, i + D/2) (NEOX) rotated by
 * pos * theta^(-2i/D). */
void kvs_model_rope_cpu(float *x, uint32_t n, uint32_t heads, uint32_t D, const uint32_t *pos,
                        float theta, int neox) {
  uint32_t step = neox ? 1 : 2, off = neox ? D / 2 : 1;
  for (uint32_t i = 0; i < D / 2; i++) {
    double inv = pow((double)theta, -2.0 * i / D);
    for (uint32_t t = 0; t < n; t++) {
      double a = (double)pos[t] * inv;
      float c = (float)cos(a), s = (float)sin(a);
      for (uint32_t h = 0; h < heads; h++) {
        float *p = x + ((size_t)t * heads + h) * D + step * i;
        float x0 = p[0], x1 = p[off];
        p[0] = x0 * c - x1 * s;
        p[off] = x0 * s + x1 * c;
      }
    }
  }
}

void kvs_model_swiglu_cpu(float *g, const float *u, size_t n) {
  for (size_t i = 0; i < n; i++)
    g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void kvs_model_attn_cpu(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v, float *out,
                        uint32_t n, uint32_t H, uint32_t G, uint32_t D, uint32_t past,
                        uint32_t kv_len) {
  float *sc = malloc((size_t)(kv_len ? kv_len : 1) * sizeof *sc);
  if (!sc) return;
  float scale = 1.0f / sqrtf((float)D);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t h = 0; h < H; h++) {
      uint32_t g = h / (H / G), lim = past + i + 1 < kv_len ? past + i + 1 : kv_len;
      const kvs_f16 *qi = q + ((size_t)i * H + h) * D;
      float mx = -INFINITY, sum = 0;
      for (uint32_t j = 0; j < lim; j++) {
        const kvs_f16 *kj = k + ((size_t)j * G + g) * D;
        float d = 0;
        for (uint32_t c = 0; c < D; c++)
          d += kvs_f16_to_f32(qi[c]) * kvs_f16_to_f32(kj[c]);
        sc[j] = d * scale;
        mx = sc[j] > mx ? sc[j] : mx;
      }
      for (uint32_t j = 0; j < lim; j++)
        sum += (sc[j] = expf(sc[j] - mx));
      float *o = out + ((size_t)i * H + h) * D;
      for (uint32_t c = 0; c < D; c++)
        o[c] = 0;
      for (uint32_t j = 0; j < lim; j++) {
        const kvs_f16 *vj = v + ((size_t)j * G + g) * D;
        float p = sc[j] / sum;
        for (uint32_t c = 0; c < D; c++)
          o[c] += p * kvs_f16_to_f32(vj[c]);
      }
    }
  free(sc);
}

/* y[o] (+)= W16[o] . x for one token: fp16 weights, f32 math. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
__attribute__((target("avx2,fma,f16c"))) static void
matvec16_avx2(const kvs_f16 *W, const float *x, float *y, uint32_t in, uint32_t out, int acc) {
  for (uint32_t o = 0; o < out; o++) {
    const kvs_f16 *w = W + (size_t)o * in;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 16 <= in; i += 16) {
      __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
      __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8)));
      a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
      a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    float sum = _mm_cvtss_f32(h);
    for (; i < in; i++)
      sum += kvs_f16_to_f32(w[i]) * x[i];
    y[o] = acc ? y[o] + sum : sum;
  }
}
static int have_avx2(void) {
  static int v = -1;
  if (v < 0) {
    unsigned a, b, c = 0, d;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    v = f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return v;
}
#else
static void matvec16_avx2(const kvs_f16 *W, const float *x, float *y, uint32_t in, uint32_t out,
                          int acc) {
  (void)W, (void)x, (void)y, (void)in, (void)out, (void)acc;
}
static int have_avx2(void) { return 0; }
#endif

static void matvec16(const kvs_f16 *W, const float *x, float *y, uint32_t in, uint32_t out,
                     int acc) {
  if (have_avx2()) {
    matvec16_avx2(W, x, y, in, out, acc);
    return;
  }
  for (uint32_t o = 0; o < out; o++) {
    const kvs_f16 *w = W + (size_t)o * in;
    float sum = 0;
    for (uint32_t i = 0; i < in; i++)
      sum += kvs_f16_to_f32(w[i]) * x[i];
    y[o] = acc ? y[o] + sum : sum;
  }
}

/* y (n, out) = x (n, in) W^T, W (out, in); one token goes through the fp16
 * copy W16 (same values, half the bytes to stream) */
static void matmul(const float *x, const float *W, const kvs_f16 *W16, float *y, uint32_t n,
                   uint32_t in, uint32_t out) {
  if (n == 1 && W16) {
    matvec16(W16, x, y, in, out, 0);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x, (int)in,
              W, (int)in, 0.0f, y, (int)out);
}
/* y += x W^T */
static void matmul_acc(const float *x, const float *W, const kvs_f16 *W16, float *y, uint32_t n,
                       uint32_t in, uint32_t out) {
  if (n == 1 && W16) {
    matvec16(W16, x, y, in, out, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x, (int)in,
              W, (int)in, 1.0f, y, (int)out);
}

static kvs_err need_weights(const kvs_model *m) {
  return m->host_weights ? KVS_OK : KVS_ERR_AT(KVS_ENOTSUP, "model: no host weights");
}

kvs_err kvs_model_embed(kvs_model *m, const kvs_token *tokens, uint32_t n, float *hidden) {
  if (!m || (!tokens && n) || (!hidden && n)) return KVS_EINVAL;
  KVS_TRY(need_weights(m));
  uint32_t E = m->cfg.n_embd;
  for (uint32_t i = 0; i < n; i++) {
    if (tokens[i] < 0 || (uint32_t)tokens[i] >= m->cfg.n_vocab) return KVS_EINVAL;
    memcpy(hidden + (size_t)i * E, m->tok_embd + (size_t)tokens[i] * E, E * sizeof(float));
  }
  return KVS_OK;
}

/* y (n, w) += b (w); y may be NULL (K/V only) */
static void add_bias(float *y, const float *b, uint32_t n, uint32_t w) {
  if (!y) return;
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < w; j++)
      y[(size_t)i * w + j] += b[j];
}

static void qkv(kvs_model *m, uint32_t layer, uint32_t n, const uint32_t *pos, const float *hidden,
                float *xn, float *q, float *k, float *v) {
  const kvs_model_cfg *c = &m->cfg;
  const layer_w *L = &m->layers[layer];
  uint32_t E = c->n_embd, HD = c->n_heads * c->head_dim, GD = c->n_kv_heads * c->head_dim;
  kvs_model_rmsnorm_cpu(hidden, L->attn_norm, xn, n, E, c->norm_eps);
  const struct layer16 *h = &m->l16[layer];
  if (q) matmul(xn, L->wq, h->wq, q, n, E, HD);
  matmul(xn, L->wk, h->wk, k, n, E, GD);
  matmul(xn, L->wv, h->wv, v, n, E, GD);
  if (c->qkv_bias) {
    add_bias(q, L->bq, n, HD);
    add_bias(k, L->bk, n, GD);
    add_bias(v, L->bv, n, GD);
  }
  int neox = c->rope_type == KVS_ROPE_NEOX;
  if (q) kvs_model_rope_cpu(q, n, c->n_heads, c->head_dim, pos, c->rope_theta, neox);
  kvs_model_rope_cpu(k, n, c->n_kv_heads, c->head_dim, pos, c->rope_theta, neox);
}

kvs_err kvs_model_layer_kv(kvs_model *m, uint32_t layer, uint32_t n, const uint32_t *pos,
                           const float *hidden, kvs_f16 *k_out, kvs_f16 *v_out) {
  if (!m || layer >= m->cfg.n_layers || !pos || (n && (!hidden || !k_out || !v_out)))
    return KVS_EINVAL;
  KVS_TRY(need_weights(m));
  if (!n) return KVS_OK;
  uint32_t GD = m->cfg.n_kv_heads * m->cfg.head_dim;
  float *xn = scratch(m, S_XN, (size_t)n * m->cfg.n_embd);
  float *k = scratch(m, S_K, (size_t)n * GD), *v = scratch(m, S_V, (size_t)n * GD);
  if (!xn || !k || !v) return KVS_ENOMEM;
  qkv(m, layer, n, pos, hidden, xn, NULL, k, v);
  for (size_t i = 0; i < (size_t)n * GD; i++) {
    k_out[i] = kvs_f32_to_f16(k[i]);
    v_out[i] = kvs_f32_to_f16(v[i]);
  }
  return KVS_OK;
}

/* fp16 -> f32 by table: attention converts the whole context per call */
static float f16_lut[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_init(void) {
  for (uint32_t i = 0; i < 65536; i++)
    f16_lut[i] = kvs_f16_to_f32((kvs_f16)i);
}

/* Causal attention of n queries q (n, H, D) at slots idx over cache slots
 * 0..idx[i] of `layer`, into att (n, H, D). Queries are taken in blocks of
 * QB rows so the score block (QB, ctx) stays small. */
#define QB 256
static kvs_err attend(kvs_model *m, kvs_seq *s, uint32_t layer, uint32_t n, const uint32_t *idx,
                      const float *q, float *att) {
  const kvs_model_cfg *c = &m->cfg;
  uint32_t H = c->n_heads, G = c->n_kv_heads, D = c->head_dim, grp = H / G;
  uint32_t ctx = 0;
  for (uint32_t i = 0; i < n; i++)
    ctx = idx[i] + 1 > ctx ? idx[i] + 1 : ctx;
  size_t kvn = (size_t)ctx * G * D;
  float *kf = scratch(m, S_KF, kvn), *vf = scratch(m, S_VF, kvn);
  float *sc = scratch(m, S_SCORE, (size_t)QB * ctx);
  if (!kf || !vf || !sc) return KVS_ENOMEM;
  const kvs_f16 *K = kvs_seq_k(s, layer), *V = kvs_seq_v(s, layer);
  pthread_once(&f16_once, f16_init);
  for (size_t i = 0; i < kvn; i++) {
    kf[i] = f16_lut[K[i]];
    vf[i] = f16_lut[V[i]];
  }
  float scale = 1.0f / sqrtf((float)D);
  for (uint32_t r0 = 0; r0 < n; r0 += QB) {
    uint32_t nb = n - r0 < QB ? n - r0 : QB;
    uint32_t kmax = 0;
    for (uint32_t i = r0; i < r0 + nb; i++)
      kmax = idx[i] + 1 > kmax ? idx[i] + 1 : kmax;
    for (uint32_t h = 0; h < H; h++) {
      uint32_t g = h / grp;
      /* sc (nb, kmax) = q_h (nb, D) K_g^T; rows of q_h are H*D apart, of K_g G*D */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)kmax, (int)D, scale,
                  q + (size_t)r0 * H * D + (size_t)h * D, (int)(H * D), kf + (size_t)g * D,
                  (int)(G * D), 0.0f, sc, (int)kmax);
      for (uint32_t i = 0; i < nb; i++) {
        float *row = sc + (size_t)i * kmax;
        uint32_t lim = idx[r0 + i] + 1;
        float mx = -INFINITY;
        for (uint32_t j = 0; j < lim; j++)
          mx = row[j] > mx ? row[j] : mx;
        float sum = 0;
        for (uint32_t j = 0; j < lim; j++) {
          row[j] = expf(row[j] - mx);
          sum += row[j];
        }
        float inv = 1.0f / sum;
        for (uint32_t j = 0; j < lim; j++)
          row[j] *= inv;
        for (uint32_t j = lim; j < kmax; j++)
          row[j] = 0.0f;
      }
      /* att_h (nb, D) = sc (nb, kmax) V_g (kmax, D) */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, (int)D, (int)kmax, 1.0f, sc,
                  (int)kmax, vf + (size_t)g * D, (int)(G * D), 0.0f,
                  att + (size_t)r0 * H * D + (size_t)h * D, (int)(H * D));
    }
  }
  return KVS_OK;
}

kvs_err kvs_model_layer(kvs_model *m, kvs_seq *s, uint32_t layer, uint32_t n, const uint32_t *idx,
                        const uint32_t *pos, float *hidden) {
  if (!m || !s || s->m != m || layer >= m->cfg.n_layers || (n && (!idx || !hidden)))
    return KVS_EINVAL;
  KVS_TRY(need_weights(m));
  if (!n) return KVS_OK;
  const kvs_model_cfg *c = &m->cfg;
  uint32_t E = c->n_embd, HD = c->n_heads * c->head_dim, GD = c->n_kv_heads * c->head_dim;
  uint32_t maxi = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (idx[i] >= s->cap) return KVS_ERANGE;
    maxi = idx[i] > maxi ? idx[i] : maxi;
  }
  if (!pos) pos = idx;
  float *xn = scratch(m, S_XN, (size_t)n * E), *q = scratch(m, S_Q, (size_t)n * HD);
  float *k = scratch(m, S_K, (size_t)n * GD), *v = scratch(m, S_V, (size_t)n * GD);
  float *att = scratch(m, S_ATT, (size_t)n * HD);
  float *gt = scratch(m, S_G, (size_t)n * c->n_ff), *up = scratch(m, S_U, (size_t)n * c->n_ff);
  if (!xn || !q || !k || !v || !att || !gt || !up) return KVS_ENOMEM;
  const layer_w *L = &m->layers[layer];
  qkv(m, layer, n, pos, hidden, xn, q, k, v);
  kvs_f16 *K = kvs_seq_k(s, layer), *V = kvs_seq_v(s, layer);
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < GD; j++) {
      K[(size_t)idx[i] * GD + j] = kvs_f32_to_f16(k[(size_t)i * GD + j]);
      V[(size_t)idx[i] * GD + j] = kvs_f32_to_f16(v[(size_t)i * GD + j]);
    }
  if (maxi + 1 > s->len) s->len = maxi + 1;
  KVS_TRY(attend(m, s, layer, n, idx, q, att));
  const struct layer16 *h = &m->l16[layer];
  matmul_acc(att, L->wo, h->wo, hidden, n, HD, E);
  kvs_model_rmsnorm_cpu(hidden, L->ffn_norm, xn, n, E, c->norm_eps);
  matmul(xn, L->w_gate, h->w_gate, gt, n, E, c->n_ff);
  matmul(xn, L->w_up, h->w_up, up, n, E, c->n_ff);
  kvs_model_swiglu_cpu(gt, up, (size_t)n * c->n_ff);
  matmul_acc(gt, L->w_down, h->w_down, hidden, n, c->n_ff, E);
  return KVS_OK;
}

kvs_err kvs_model_logits(kvs_model *m, uint32_t n, const float *hidden, float *logits) {
  if (!m || (n && (!hidden || !logits))) return KVS_EINVAL;
  KVS_TRY(need_weights(m));
  if (!n) return KVS_OK;
  uint32_t E = m->cfg.n_embd;
  float *xn = scratch(m, S_TMP, (size_t)n * E);
  if (!xn) return KVS_ENOMEM;
  kvs_model_rmsnorm_cpu(hidden, m->out_norm, xn, n, E, m->cfg.norm_eps);
  matmul(xn, m->output, m->out16, logits, n, E, m->cfg.n_vocab);
  return KVS_OK;
}

/* Prefill in slices of PF tokens keeps the scratch buffers bounded. */
#define PF 512
kvs_err kvs_model_prefill(kvs_model *m, kvs_seq *s, const kvs_token *tokens, uint32_t n,
                          int all_logits, float *logits) {
  if (!m || !s || s->m != m || (!tokens && n)) return KVS_EINVAL;
  KVS_TRY(need_weights(m));
  if (n > s->cap - s->len) return KVS_ERANGE;
  uint64_t t0 = kvs_now_ns();
  uint32_t E = m->cfg.n_embd;
  for (uint32_t a = 0; a < n; a += PF) {
    uint32_t nb = n - a < PF ? n - a : PF;
    float *x = scratch(m, S_X, (size_t)nb * E);
    uint32_t *idx = malloc(nb * sizeof *idx);
    if (!x || !idx) {
      free(idx);
      return KVS_ENOMEM;
    }
    uint32_t base = s->len;
    for (uint32_t i = 0; i < nb; i++)
      idx[i] = base + i;
    kvs_err e = kvs_model_embed(m, tokens + a, nb, x);
    for (uint32_t l = 0; !e && l < m->cfg.n_layers; l++)
      e = kvs_model_layer(m, s, l, nb, idx, NULL, x);
    free(idx);
    if (e) return e;
    if (logits && all_logits) {
      KVS_TRY(kvs_model_logits(m, nb, x, logits + (size_t)a * m->cfg.n_vocab));
    } else if (logits && a + nb == n) {
      KVS_TRY(kvs_model_logits(m, 1, x + (size_t)(nb - 1) * E, logits));
    }
  }
  m->pf_sec += (double)(kvs_now_ns() - t0) * 1e-9;
  m->pf_tokens += n;
  return KVS_OK;
}

double kvs_model_prefill_sec_per_token(const kvs_model *m) {
  return m->pf_tokens > 0 ? m->pf_sec / m->pf_tokens : 0.0;
}

kvs_token kvs_argmax(const float *logits, uint32_t n) {
  uint32_t b = 0;
  for (uint32_t i = 1; i < n; i++)
    if (logits[i] > logits[b]) b = i;
  return (kvs_token)b;
}

kvs_err kvs_model_generate(kvs_model *m, kvs_seq *s, const kvs_token *prompt, uint32_t n_prompt,
                           uint32_t max_new, kvs_token *out, uint32_t *n_out) {
  if (!m || !s || !n_out || (!out && max_new)) return KVS_EINVAL;
  *n_out = 0;
  float *lg = malloc((size_t)m->cfg.n_vocab * sizeof(float));
  if (!lg) return KVS_ENOMEM;
  kvs_err e = kvs_model_prefill(m, s, prompt, n_prompt, 0, lg);
  kvs_token im_end = m->tok ? kvs_tok_find(m->tok, "<|im_end|>") : -1;
  kvs_token eos = m->tok ? kvs_tok_eos(m->tok) : -1;
  for (uint32_t i = 0; !e && i < max_new; i++) {
    kvs_token t = kvs_argmax(lg, m->cfg.n_vocab);
    out[(*n_out)++] = t;
    if (t == eos || t == im_end || i + 1 == max_new) break;
    e = kvs_model_prefill(m, s, &t, 1, 0, lg);
  }
  free(lg);
  return e;
}
