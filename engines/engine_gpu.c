/* engine_gpu.c - blend/kvs_engine.h ops over the GPU model. Hidden states,
 * logits and KV buffers are device memory (info.mem = KVS_ENGINE_MEM_DEVICE);
 * kv_read/kv_write also accept host memory (CUDA infers the direction). A
 * kvs_engine_seq is a kvs_gpu_seq. Built with or without CUDA: without it
 * no kvs_gpu_model exists, so no engine can be made. */
#include <stdlib.h>
#include <string.h>

#include "kvs_engine.h"
#include "kvs_engines.h"
#include "kvs_gpu_model.h"

typedef struct gpu_engine {
  kvs_engine base; /* first */
  kvs_gpu_model *g;
  kvs_model_id id;
} gpu_engine;

#define GE(e)  ((gpu_engine *)(e))
#define G(e)   (GE(e)->g)
#define SEQ(s) ((kvs_gpu_seq *)(s))

static kvs_err e_info(kvs_engine *e, kvs_engine_info *out) {
  if (!out) return KVS_EINVAL;
  const kvs_model_cfg *c = kvs_gpu_model_config(G(e));
  memset(out, 0, sizeof *out);
  out->layout.n_layers = c->n_layers;
  out->layout.n_kv_heads = c->n_kv_heads;
  out->layout.head_dim = c->head_dim;
  out->layout.dtype = KVS_DTYPE_F16;
  out->layout.rope_type = c->rope_type; /* NORM (llama) or NEOX (qwen2) */
  out->layout.rope_dims = c->head_dim;
  out->layout.rope_theta = c->rope_theta;
  out->layout.rope_freq_scale = 1.0f;
  out->model_id = GE(e)->id;
  out->n_embd = c->n_embd;
  out->n_vocab = c->n_vocab;
  out->max_tokens = 1u << 20;
  out->mem = KVS_ENGINE_MEM_DEVICE;
  out->name = "kvs-model-cuda";
  return KVS_OK;
}

static kvs_err e_seq_create(kvs_engine *e, uint32_t cap, kvs_engine_seq **out) {
  if (!out) return KVS_EINVAL;
  return kvs_gpu_seq_create(G(e), cap, (kvs_gpu_seq **)out);
}
static void e_seq_free(kvs_engine *e, kvs_engine_seq *s) { kvs_gpu_seq_free(SEQ(s)); }
static uint32_t e_seq_len(kvs_engine *e, const kvs_engine_seq *s) {
  return kvs_gpu_seq_len((const kvs_gpu_seq *)s);
}
static kvs_err e_seq_truncate(kvs_engine *e, kvs_engine_seq *s, uint32_t n) {
  return kvs_gpu_seq_truncate(SEQ(s), n);
}
static kvs_err e_kv_read(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                         uint32_t n, void *k, void *v) {
  return kvs_gpu_seq_kv_read(SEQ(s), layer, start, n, k, v);
}
static kvs_err e_kv_write(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                          uint32_t n, const void *k, const void *v) {
  return kvs_gpu_seq_kv_write(SEQ(s), layer, start, n, k, v);
}
static kvs_err e_embed(kvs_engine *e, const int32_t *tokens, uint32_t n, float *hidden) {
  return kvs_gpu_embed(G(e), tokens, n, hidden);
}
static kvs_err e_layer(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t n,
                       const uint32_t *idx, const uint32_t *pos, float *hidden) {
  return kvs_gpu_layer(G(e), SEQ(s), layer, n, idx, pos, hidden);
}
static kvs_err e_layer_kv(kvs_engine *e, uint32_t layer, uint32_t n, const uint32_t *pos,
                          const float *hidden, void *k, void *v) {
  return kvs_gpu_layer_kv(G(e), layer, n, pos, hidden, k, v);
}
static kvs_err e_logits(kvs_engine *e, uint32_t n, const float *hidden, float *logits) {
  return kvs_gpu_logits(G(e), n, hidden, logits);
}
static kvs_err e_prefill(kvs_engine *e, kvs_engine_seq *s, const int32_t *tokens, uint32_t n,
                         int all_logits, float *logits) {
  return kvs_gpu_seq_prefill(G(e), SEQ(s), tokens, n, all_logits, logits, NULL);
}
static kvs_err e_prefill_cost(kvs_engine *e, uint32_t n_probe, double *spt) {
  if (!spt) return KVS_EINVAL;
  double v = kvs_gpu_model_prefill_sec_per_token(G(e));
  if (v <= 0) {
    if (!n_probe) n_probe = 512;
    kvs_gpu_seq *s;
    KVS_TRY(kvs_gpu_seq_create(G(e), n_probe, &s));
    int32_t *tok = calloc(n_probe, sizeof *tok);
    kvs_err err = tok ? KVS_OK : KVS_ENOMEM;
    uint32_t V = kvs_gpu_model_config(G(e))->n_vocab;
    for (uint32_t i = 0; !err && i < n_probe; i++)
      tok[i] = (int32_t)((i * 7919u) % V);
    if (!err) err = kvs_gpu_seq_prefill(G(e), s, tok, n_probe, 0, NULL, NULL);
    free(tok);
    kvs_gpu_seq_free(s);
    KVS_TRY(err);
    v = kvs_gpu_model_prefill_sec_per_token(G(e));
  }
  *spt = v;
  return KVS_OK;
}
static void e_destroy(kvs_engine *e) { free(e); }

static const kvs_engine_ops gpu_ops = {
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

kvs_err kvs_gpu_model_engine(kvs_gpu_model *g, const kvs_model_id *id, kvs_engine **out) {
  if (!g || !id || !out) return KVS_EINVAL;
  gpu_engine *e = calloc(1, sizeof *e);
  if (!e) return KVS_ENOMEM;
  e->base.ops = &gpu_ops;
  e->g = g;
  e->id = *id;
  *out = &e->base;
  return KVS_OK;
}
