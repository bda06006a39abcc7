/* engine.c - blend/kvs_engine.h ops over the CPU model. Buffers are host
 * memory; KV is fp16 canonical. A kvs_engine_seq is a kvs_seq. */
#include <stdlib.h>
#include <string.h>

#include "kvs_engine.h"
#include "kvs_engines.h"
#include "kvs_model.h"

typedef struct cpu_engine {
  kvs_engine base; /* first */
  kvs_model *m;
} cpu_engine;

#define M(e)   (((cpu_engine *)(e))->m)
#define SEQ(s) ((kvs_seq *)(s))

static kvs_err e_info(kvs_engine *e, kvs_engine_info *out) {
  if (!out) return KVS_EINVAL;
  const kvs_model_cfg *c = kvs_model_config(M(e));
  memset(out, 0, sizeof *out);
  out->layout = kvs_model_layout(M(e));
  out->model_id = *kvs_model_get_id(M(e));
  out->n_embd = c->n_embd;
  out->n_vocab = c->n_vocab;
  out->max_tokens = 1u << 20;
  out->mem = KVS_ENGINE_MEM_HOST;
  out->name = "kvs-model-cpu";
  return KVS_OK;
}

static kvs_err e_seq_create(kvs_engine *e, uint32_t cap, kvs_engine_seq **out) {
  if (!out) return KVS_EINVAL;
  return kvs_seq_create(M(e), cap, (kvs_seq **)out);
}
static void e_seq_free(kvs_engine *e, kvs_engine_seq *s) { kvs_seq_free(SEQ(s)); }
static uint32_t e_seq_len(kvs_engine *e, const kvs_engine_seq *s) {
  return kvs_seq_len((const kvs_seq *)s);
}
static kvs_err e_seq_truncate(kvs_engine *e, kvs_engine_seq *s, uint32_t n) {
  return kvs_seq_truncate(SEQ(s), n);
}

static kvs_err e_kv_read(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                         uint32_t n, void *k, void *v) {
  const kvs_model_cfg *c = kvs_model_config(M(e));
  if (!s || layer >= c->n_layers || (n && (!k || !v))) return KVS_EINVAL;
  if (start > kvs_seq_len(SEQ(s)) || n > kvs_seq_len(SEQ(s)) - start) return KVS_ERANGE;
  size_t row = (size_t)c->n_kv_heads * c->head_dim;
  memcpy(k, kvs_seq_k(SEQ(s), layer) + start * row, n * row * sizeof(kvs_f16));
  memcpy(v, kvs_seq_v(SEQ(s), layer) + start * row, n * row * sizeof(kvs_f16));
  return KVS_OK;
}

static kvs_err e_kv_write(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                          uint32_t n, const void *k, const void *v) {
  const kvs_model_cfg *c = kvs_model_config(M(e));
  if (!s || layer >= c->n_layers || (n && (!k || !v))) return KVS_EINVAL;
  uint32_t cap = kvs_seq_capacity(SEQ(s));
  if (start > cap || n > cap - start) return KVS_ERANGE;
  size_t row = (size_t)c->n_kv_heads * c->head_dim;
  memcpy(kvs_seq_k(SEQ(s), layer) + start * row, k, n * row * sizeof(kvs_f16));
  memcpy(kvs_seq_v(SEQ(s), layer) + start * row, v, n * row * sizeof(kvs_f16));
  if (start + n > kvs_seq_len(SEQ(s))) KVS_TRY(kvs_seq_set_len(SEQ(s), start + n));
  return KVS_OK;
}

static kvs_err e_embed(kvs_engine *e, const int32_t *tokens, uint32_t n, float *hidden) {
  return kvs_model_embed(M(e), tokens, n, hidden);
}
static kvs_err e_layer(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t n,
                       const uint32_t *idx, const uint32_t *pos, float *hidden) {
  return kvs_model_layer(M(e), SEQ(s), layer, n, idx, pos, hidden);
}
static kvs_err e_layer_kv(kvs_engine *e, uint32_t layer, uint32_t n, const uint32_t *pos,
                          const float *hidden, void *k, void *v) {
  return kvs_model_layer_kv(M(e), layer, n, pos, hidden, k, v);
}
static kvs_err e_logits(kvs_engine *e, uint32_t n, const float *hidden, float *logits) {
  return kvs_model_logits(M(e), n, hidden, logits);
}
static kvs_err e_prefill(kvs_engine *e, kvs_engine_seq *s, const int32_t *tokens, uint32_t n,
                         int all_logits, float *logits) {
  return kvs_model_prefill(M(e), SEQ(s), tokens, n, all_logits, logits);
}

static kvs_err e_prefill_cost(kvs_engine *e, uint32_t n_probe, double *spt) {
  if (!spt) return KVS_EINVAL;
  double v = kvs_model_prefill_sec_per_token(M(e));
  if (v <= 0) {
    if (!n_probe) n_probe = 128;
    kvs_seq *s;
    KVS_TRY(kvs_seq_create(M(e), n_probe, &s));
    int32_t *tok = calloc(n_probe, sizeof *tok);
    kvs_err err = tok ? KVS_OK : KVS_ENOMEM;
    for (uint32_t i = 0; !err && i < n_probe; i++)
      tok[i] = (int32_t)((i * 7919u) % kvs_model_config(M(e))->n_vocab);
    if (!err) err = kvs_model_prefill(M(e), s, tok, n_probe, 0, NULL);
    free(tok);
    kvs_seq_free(s);
    KVS_TRY(err);
    v = kvs_model_prefill_sec_per_token(M(e));
  }
  *spt = v;
  return KVS_OK;
}

static void e_destroy(kvs_engine *e) { free(e); }

static const kvs_engine_ops cpu_ops = {
    .abi = KVS_ENGINE_ABI,
    .info = e_info,
    .seq_create = e_seq_create,
    .seq_free = e_seq_free,
    .seq_len = e_seq_len,
    .seq_truncate = e_seq_truncate,
    .kv_read = e_kv_read,
    .kv_write = e_kv_write,
    .embed = e_embed,
    .layer = e_layer,
    .layer_kv = e_layer_kv,
    .logits = e_logits,
    .prefill = e_prefill,
    .prefill_cost = e_prefill_cost,
    .destroy = e_destroy,
};

kvs_err kvs_model_engine(kvs_model *m, kvs_engine **out) {
  if (!m || !out) return KVS_EINVAL;
  cpu_engine *e = calloc(1, sizeof *e);
  if (!e) return KVS_ENOMEM;
  e->base.ops = &cpu_ops;
  e->m = m;
  *out = &e->base;
  return KVS_OK;
}
