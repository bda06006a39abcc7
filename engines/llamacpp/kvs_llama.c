/* kvs_llama.c - the llama.cpp adapter: prefix reuse and RAG chunk reuse
 * through libllama's public API (see kvs_llama.h and docs/llamacpp.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "kvs_engine.h"
#include "kvs_llama.h"
#include "llama.h"
#include "llama_int.h"

_Static_assert(GGML_TYPE_F16 == KVS_GGML_TYPE_F16, "ggml's F16 type id moved");
/* The state layout parsed in llama_state.c is that of this version. */
_Static_assert(LLAMA_STATE_SEQ_VERSION == 2, "llama.cpp sequence state version changed");

#ifndef KVS_LLAMA_VERSION
#define KVS_LLAMA_VERSION "unknown"
#endif

const char *kvs_llama_build_version(void) { return KVS_LLAMA_VERSION; }

struct kvs_llama {
  struct llama_model *model;
  struct llama_context *ctx;
  llama_memory_t mem;
  kvs_client *client;
  kvs_layout layout;
  kvs_model_id id;
  uint32_t chunk;
  uint32_t profile;
  uint32_t n_stream;
  uint32_t v_trans;
  uint32_t n_seq_max;
  int checked;  /* the state format round trip was checked once */
  int disabled; /* a format check failed: no more reuse, no more puts */
  char desc[512];
};

#define COMP "llama"

void kvs_llama_opts_init(kvs_llama_opts *o) {
  memset(o, 0, sizeof *o);
  o->chunk_tokens = KVS_DEFAULT_CHUNK_TOKENS;
  o->profile = KVS_PROFILE_RAW;
}

static kvs_err hash_file(const char *path, kvs_hash128 *out) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return KVS_EINVAL;
  kvs_hasher *h = kvs_hasher_create();
  char *buf = malloc(1 << 20);
  kvs_err err = h && buf ? KVS_OK : KVS_ENOMEM;
  size_t got;
  while (!err && (got = fread(buf, 1, 1 << 20, f)) > 0)
    kvs_hasher_update(h, buf, got);
  if (!err && ferror(f)) err = KVS_EIO;
  if (!err) *out = kvs_hasher_digest(h);
  kvs_hasher_free(h);
  free(buf);
  fclose(f);
  return err;
}

/* The context's stream count: the first u32 of any sequence state. */
static kvs_err probe_streams(kvs_llama *a) {
  size_t n = llama_state_seq_get_size(a->ctx, 0);
  uint8_t *buf = n >= 4 ? malloc(n) : NULL;
  if (!buf) return n >= 4 ? KVS_ENOMEM : KVS_EVERSION;
  kvs_err err = KVS_OK;
  if (llama_state_seq_get_data(a->ctx, buf, n, 0) != n)
    err = KVS_EVERSION;
  else
    memcpy(&a->n_stream, buf, 4);
  free(buf);
  if (!err && (a->n_stream == 0 || a->n_stream > KVS_LLAMA_MAX_STREAMS)) err = KVS_EVERSION;
  return err;
}

kvs_err kvs_llama_create(struct llama_model *model, struct llama_context *ctx,
                         const kvs_llama_opts *o, kvs_llama **out) {
  *out = NULL;
  if (!model || !ctx || !o || !o->gguf_path || !o->chunk_tokens) return KVS_EINVAL;
  kvs_llama *a = calloc(1, sizeof *a);
  if (!a) return KVS_ENOMEM;
  a->model = model, a->ctx = ctx, a->mem = llama_get_memory(ctx), a->client = o->client;
  a->chunk = o->chunk_tokens, a->profile = o->profile, a->v_trans = o->flash_attn ? 0 : 1;
  a->n_seq_max = llama_n_seq_max(ctx);
  kvs_err err = KVS_OK;
  const int32_t n_head = llama_model_n_head(model), n_embd = llama_model_n_embd(model);
  const int32_t rope = llama_model_rope_type(model);
  kvs_layout *l = &a->layout;
  l->n_layers = (uint32_t)llama_model_n_layer(model);
  l->n_kv_heads = (uint32_t)llama_model_n_head_kv(model);
  l->head_dim = n_head > 0 ? (uint32_t)(n_embd / n_head) : 0;
  l->dtype = KVS_DTYPE_F16;
  l->rope_type = rope == LLAMA_ROPE_TYPE_NEOX ? KVS_ROPE_NEOX : KVS_ROPE_NORM;
  l->rope_dims = l->head_dim;
  l->rope_freq_scale = llama_model_rope_freq_scale_train(model);
  char arch[64] = "", key[96], val[64] = "";
  llama_model_meta_val_str(model, "general.architecture", arch, sizeof arch);
  snprintf(key, sizeof key, "%s.rope.freq_base", arch);
  l->rope_theta =
      llama_model_meta_val_str(model, key, val, sizeof val) > 0 ? strtof(val, NULL) : 10000.0f;
  if (rope != LLAMA_ROPE_TYPE_NORM && rope != LLAMA_ROPE_TYPE_NEOX) {
    KVS_LOGE(COMP, "unsupported rope type", "rope=%d", rope);
    err = KVS_ENOTSUP;
  }
  if (!err) err = kvs_layout_validate(l);
  /* What makes llama.cpp's KV differ from another engine's, or another
   * llama.cpp's: its version, the devices of the build, flash attention
   * (changes V's numerics in later layers), and the weights. */
  char devs[128] = "";
  for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
    size_t u = strlen(devs);
    snprintf(devs + u, sizeof devs - u, "%s%s", u ? "," : "",
             ggml_backend_dev_name(ggml_backend_dev_get(i)));
  }
  snprintf(a->desc, sizeof a->desc, "llama.cpp|%s|%s|%s|fa=%d|%s", KVS_LLAMA_VERSION, arch, devs,
           o->flash_attn ? 1 : 0, o->id_salt ? o->id_salt : "");
  kvs_model_desc d = {0};
  d.arch = a->desc;
  d.layout = *l;
  d.n_embd = (uint32_t)n_embd, d.n_heads = (uint32_t)n_head;
  d.n_vocab = (uint32_t)llama_vocab_n_tokens(llama_model_get_vocab(model));
  if (!err && (err = hash_file(o->gguf_path, &d.weights)) != KVS_OK)
    KVS_LOGE(COMP, "cannot hash the model file", "path=\"%s\" err=%s", o->gguf_path,
             kvs_errname(err));
  if (!err) err = kvs_model_id_compute(&d, &a->id);
  if (!err && (err = probe_streams(a)) != KVS_OK)
    KVS_LOGE(COMP, "cannot read the context's sequence state", "err=%s", kvs_errname(err));
  if (err) {
    free(a);
    return err;
  }
  const uint32_t ub = llama_n_ubatch(ctx);
  if (ub == 0 || a->chunk % ub != 0)
    KVS_LOGI(COMP,
             "chunk_tokens is not a multiple of n_ubatch: restored logits may differ "
             "from a plain decode in the last bits",
             "chunk=%u n_ubatch=%u", a->chunk, ub);
  char hex[33];
  kvs_hash128_hex(&a->id, hex);
  KVS_LOGI(COMP, "attached",
           "model_id=%s desc=\"%s\" layers=%u kv_heads=%u head_dim=%u "
           "n_stream=%u v_trans=%u",
           hex, a->desc, l->n_layers, l->n_kv_heads, l->head_dim, a->n_stream, a->v_trans);
  *out = a;
  return KVS_OK;
}

void kvs_llama_free(kvs_llama *a) { free(a); }
const kvs_model_id *kvs_llama_model_id(const kvs_llama *a) { return &a->id; }
const kvs_layout *kvs_llama_layout(const kvs_llama *a) { return &a->layout; }

static double secs(uint64_t t0) { return (double)(kvs_now_ns() - t0) * 1e-9; }

static void seq_clear(kvs_llama *a, int32_t seq) {
  if (a->n_seq_max == 1)
    llama_memory_clear(a->mem, true); /* also puts the cache head back at cell 0 */
  else
    llama_memory_seq_rm(a->mem, seq, -1, -1);
}

/* Decodes tokens[0, n) at positions pos0.. into seq, in pieces of n_batch;
 * logits for the last token when `logits`. */
static kvs_err decode(kvs_llama *a, int32_t seq, const int32_t *tokens, uint32_t n, int32_t pos0,
                      int logits) {
  const uint32_t nb = llama_n_batch(a->ctx);
  struct llama_batch b = llama_batch_init((int32_t)(n < nb ? n : nb), 0, 1);
  kvs_err err = KVS_OK;
  for (uint32_t off = 0; off < n && !err; off += nb) {
    uint32_t m = n - off < nb ? n - off : nb;
    for (uint32_t i = 0; i < m; i++) {
      b.token[i] = tokens[off + i];
      b.pos[i] = pos0 + (int32_t)(off + i);
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = seq;
      b.logits[i] = logits && off + i == n - 1;
    }
    b.n_tokens = (int32_t)m;
    int rc = llama_decode(a->ctx, b);
    if (rc != 0) {
      KVS_LOGE(COMP, "llama_decode failed", "rc=%d n=%u pos=%d", rc, m, pos0 + (int32_t)off);
      err = KVS_EIO;
    }
  }
  llama_batch_free(b);
  return err;
}

static void st_init(kvs_llama_stats *st, size_t n) {
  memset(st, 0, sizeof *st);
  st->n_tokens = (uint32_t)n;
}

/* Writes canonical parts into seq as cells at positions pos0.. via
 * llama_state_seq_set_data. KVS_OK only when llama.cpp took every byte. */
static kvs_err restore(kvs_llama *a, int32_t seq, const void *const *parts,
                       const uint32_t *part_tokens, size_t n_parts, uint32_t n_tokens) {
  kvs_llama_state_info in = {0};
  in.n_stream = a->n_stream;
  in.stream = a->n_stream == 1 ? 0 : (uint32_t)seq;
  in.n_tokens = n_tokens, in.pos0 = 0, in.seq_id = seq, in.v_trans = a->v_trans;
  size_t cap = kvs_llama_state_bound(&a->layout, &in), got = 0;
  uint8_t *buf = malloc(cap);
  if (!buf) return KVS_ENOMEM;
  kvs_err err =
      kvs_llama_state_from_canonical(&a->layout, &in, parts, part_tokens, n_parts, buf, cap, &got);
  if (!err && llama_state_seq_set_data(a->ctx, buf, got, seq) != got) {
    KVS_LOGW(COMP, "llama.cpp refused the restored state (see its log)", "tokens=%u", n_tokens);
    err = KVS_EVERSION;
  }
  if (!err && llama_memory_seq_pos_max(a->mem, seq) != (llama_pos)n_tokens - 1) {
    KVS_LOGW(COMP, "restored sequence has unexpected positions", "tokens=%u", n_tokens);
    err = KVS_ECORRUPT;
  }
  free(buf);
  if (err) llama_memory_seq_rm(a->mem, seq, -1, -1);
  return err;
}

kvs_err kvs_llama_prefill(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                          kvs_llama_stats *st) {
  kvs_llama_stats dummy;
  if (!st) st = &dummy;
  st_init(st, n);
  if (!a || !tokens || n == 0 || n > INT32_MAX) return KVS_EINVAL;
  seq_clear(a, seq);
  uint32_t P = 0;
  if (a->client && !a->disabled && n > a->chunk) {
    /* only tokens[0, n-1): at least one token is decoded, for its logits */
    size_t nc = kvs_chunk_prefix_count(n - 1, a->chunk, 0), got = 0, n_prefix = 0;
    kvs_chunk *ch = malloc(nc * sizeof *ch);
    uint8_t *status = malloc(nc);
    uint64_t t0 = kvs_now_ns();
    kvs_err err = ch && status ? KVS_OK : KVS_ENOMEM;
    if (!err) err = kvs_chunk_prefix(&a->id, tokens, n - 1, a->chunk, 0, ch, nc, &got);
    if (!err)
      err = kvs_lookup(a->client, &a->id, tokens, n, ch, got, KVS_LOOKUP_PREFIX, status, &n_prefix);
    st->t_lookup_s = secs(t0);
    if (err) {
      KVS_LOGW(COMP, "kvstash lookup failed: going on without reuse", "err=%s msg=\"%s\"",
               kvs_errname(err), kvs_client_errmsg(a->client));
      st->n_failed++;
      n_prefix = 0;
    } else {
      /* a miss of every chunk is also what another model id (another
       * llama.cpp build, other weights, flash attention) looks like */
      char hex[33];
      kvs_hash128_hex(&a->id, hex);
      KVS_LOGI(COMP, "prefix lookup", "model_id=%s chunks=%zu cached=%zu", hex, got, n_prefix);
    }
    if (n_prefix) {
      const uint64_t cb = kvs_get_bound(&a->layout, a->chunk, NULL);
      uint8_t *kv = malloc(cb * n_prefix);
      void **outs = malloc(n_prefix * sizeof *outs);
      uint64_t *caps = malloc(n_prefix * sizeof *caps);
      uint32_t *pt = malloc(n_prefix * sizeof *pt);
      kvs_err *rv = malloc(n_prefix * sizeof *rv);
      size_t n_ok = 0;
      if (kv && outs && caps && pt && rv) {
        for (size_t i = 0; i < n_prefix; i++)
          outs[i] = kv + i * cb, caps[i] = cb, pt[i] = a->chunk;
        t0 = kvs_now_ns();
        err = kvs_get_batch(a->client, &a->id, tokens, ch, n_prefix, &a->layout, outs, caps, NULL,
                            rv);
        st->t_fetch_s = secs(t0);
        while (n_ok < n_prefix && rv[n_ok] == KVS_OK)
          n_ok++;
        if (n_ok < n_prefix) {
          KVS_LOGW(COMP, "kvstash get failed: restoring the chunks before it only",
                   "chunk=%zu err=%s msg=\"%s\"", n_ok, kvs_errname(rv[n_ok]),
                   kvs_client_errmsg(a->client));
          st->n_failed++;
        }
        if (n_ok) {
          t0 = kvs_now_ns();
          err = restore(a, seq, (const void *const *)outs, pt, n_ok, (uint32_t)n_ok * a->chunk);
          st->t_restore_s = secs(t0);
          if (err) {
            KVS_LOGW(COMP, "restore failed: going on without reuse", "err=%s", kvs_errname(err));
            st->n_failed++;
            seq_clear(a, seq);
          } else {
            P = (uint32_t)n_ok * a->chunk;
          }
        }
      } else {
        KVS_LOGW(COMP, "out of memory for the fetched prefix", "chunks=%zu", n_prefix);
      }
      free(kv), free(outs), free(caps), free(pt), free(rv);
    }
    free(ch);
    free(status);
  }
  st->n_restored = P;
  st->n_decoded = (uint32_t)n - P;
  uint64_t t0 = kvs_now_ns();
  kvs_err err = decode(a, seq, tokens + P, (uint32_t)n - P, (int32_t)P, 1);
  st->t_decode_s = secs(t0);
  return err;
}

/* The sequence state of seq, checked against the layout (malloc'd). */
static kvs_err read_state(kvs_llama *a, int32_t seq, uint8_t **out, size_t *n,
                          kvs_llama_state_info *info) {
  *out = NULL;
  size_t sz = llama_state_seq_get_size(a->ctx, seq);
  uint8_t *buf = malloc(sz ? sz : 1);
  if (!buf) return KVS_ENOMEM;
  kvs_err err = KVS_OK;
  if (llama_state_seq_get_data(a->ctx, buf, sz, seq) != sz) err = KVS_EVERSION;
  if (!err) err = kvs_llama_state_parse(&a->layout, buf, sz, info);
  if (!err && info->v_trans != a->v_trans) {
    KVS_LOGE(COMP, "V layout of the state disagrees with opts.flash_attn", "v_trans=%u",
             info->v_trans);
    err = KVS_ELAYOUT;
  }
  /* Once per adapter: the conversion must give back llama.cpp's own bytes. */
  if (!err && !a->checked && info->ordered && info->n_tokens) {
    size_t cb = (size_t)kvs_layout_token_bytes(&a->layout) * info->n_tokens, got = 0;
    uint8_t *kv = malloc(cb), *back = malloc(sz);
    err = kv && back ? KVS_OK : KVS_ENOMEM;
    if (!err) err = kvs_llama_state_to_canonical(&a->layout, buf, sz, 0, info->n_tokens, kv, cb);
    const void *parts[1] = {kv};
    if (!err)
      err = kvs_llama_state_from_canonical(&a->layout, info, parts, &info->n_tokens, 1, back, sz,
                                           &got);
    if (!err && (got != sz || memcmp(back, buf, sz) != 0)) err = KVS_EVERSION;
    if (!err) a->checked = 1;
    free(kv);
    free(back);
  }
  if (err) {
    KVS_LOGE(COMP, "sequence state failed the format check: kvstash reuse disabled",
             "err=%s llama=\"%s\"", kvs_errname(err), KVS_LLAMA_VERSION);
    if (err != KVS_ENOMEM) a->disabled = 1;
    free(buf);
    return err;
  }
  *out = buf, *n = sz;
  return KVS_OK;
}

kvs_err kvs_llama_store(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                        kvs_llama_stats *st) {
  kvs_llama_stats dummy;
  if (!st) st = &dummy, memset(st, 0, sizeof *st);
  if (!a || !tokens) return KVS_EINVAL;
  const size_t nfull = n / a->chunk;
  if (!a->client || a->disabled || nfull == 0) return KVS_OK;
  uint64_t t0 = kvs_now_ns();
  kvs_chunk *ch = malloc(nfull * sizeof *ch);
  uint8_t *status = malloc(nfull), *state = NULL, *kv = NULL;
  size_t got = 0, n_prefix = 0, sz = 0;
  kvs_err err = ch && status ? KVS_OK : KVS_ENOMEM;
  if (!err) err = kvs_chunk_prefix(&a->id, tokens, n, a->chunk, 0, ch, nfull, &got);
  if (!err) {
    err = kvs_lookup(a->client, &a->id, tokens, n, ch, got, KVS_LOOKUP_PREFIX, status, &n_prefix);
    if (err)
      KVS_LOGW(COMP, "kvstash lookup failed: nothing stored", "err=%s msg=\"%s\"", kvs_errname(err),
               kvs_client_errmsg(a->client));
  }
  kvs_llama_state_info in;
  if (!err && n_prefix < got) {
    err = read_state(a, seq, &state, &sz, &in);
    if (!err && (in.pos0 != 0 || in.n_tokens < got * a->chunk)) {
      KVS_LOGW(COMP, "sequence does not hold the tokens to store", "pos0=%d cells=%u need=%zu",
               in.pos0, in.n_tokens, got * a->chunk);
      err = KVS_ERANGE;
    }
  }
  const size_t cb = (size_t)kvs_layout_token_bytes(&a->layout) * a->chunk;
  if (!err && n_prefix < got && !(kv = malloc(cb))) err = KVS_ENOMEM;
  for (size_t i = n_prefix; !err && i < got; i++) {
    err = kvs_llama_state_to_canonical(&a->layout, state, sz, (uint32_t)(i * a->chunk),
                                       (uint32_t)((i + 1) * a->chunk), kv, cb);
    kvs_put_opts po = {0};
    po.profile = a->profile;
    if (!err) err = kvs_put(a->client, &a->id, tokens, &ch[i], &a->layout, kv, &po);
    if (err)
      KVS_LOGW(COMP, "kvstash put failed: the rest of this prefix is not stored",
               "chunk=%zu err=%s msg=\"%s\"", i, kvs_errname(err), kvs_client_errmsg(a->client));
    else
      st->n_put++;
  }
  if (err) st->n_failed++;
  st->t_put_s += secs(t0);
  free(kv), free(state), free(ch), free(status);
  return err == KVS_EINVAL ? KVS_EINVAL : KVS_OK;
}

/* ----------------------------------------------------------------- RAG */
/* Brings the KV of span sp (tokens computed alone at 0..len-1) into scratch:
 * fetched from kvstash (hit) or decoded there and put (miss). */
static void rag_chunk_into_scratch(kvs_llama *a, int32_t scratch, const int32_t *tokens, size_t n,
                                   const kvs_chunk *c, int hit, kvs_llama_stats *st, int *decoded) {
  const uint32_t len = c->n_tokens;
  const uint64_t cb = kvs_get_bound(&a->layout, len, NULL);
  *decoded = 0;
  llama_memory_seq_rm(a->mem, scratch, -1, -1);
  if (hit) {
    uint8_t *kv = malloc(cb);
    uint64_t t0 = kvs_now_ns();
    kvs_err err = kv ? kvs_get(a->client, &a->id, tokens, c, &a->layout, kv, cb, NULL) : KVS_ENOMEM;
    st->t_fetch_s += secs(t0);
    if (err) {
      KVS_LOGW(COMP, "kvstash get of a chunk failed: computing it", "start=%u err=%s msg=\"%s\"",
               c->start, kvs_errname(err), kvs_client_errmsg(a->client));
      st->n_failed++;
    } else {
      const void *parts[1] = {kv};
      t0 = kvs_now_ns();
      err = restore(a, scratch, parts, &len, 1, len);
      st->t_restore_s += secs(t0);
      if (err) st->n_failed++;
    }
    free(kv);
    if (!err) {
      st->n_restored += len;
      return;
    }
  }
  uint64_t t0 = kvs_now_ns();
  kvs_err err = decode(a, scratch, tokens + c->start, len, 0, 0);
  st->t_decode_s += secs(t0);
  if (err) return;
  *decoded = 1;
  if (!a->client || a->disabled) return;
  t0 = kvs_now_ns();
  uint8_t *state = NULL, *kv = malloc(cb);
  size_t sz = 0;
  kvs_llama_state_info in;
  err = kv ? read_state(a, scratch, &state, &sz, &in) : KVS_ENOMEM;
  if (!err) err = kvs_llama_state_to_canonical(&a->layout, state, sz, 0, len, kv, cb);
  kvs_put_opts po = {0};
  po.profile = a->profile;
  if (!err) err = kvs_put(a->client, &a->id, tokens, c, &a->layout, kv, &po);
  if (err) {
    KVS_LOGW(COMP, "kvstash put of a chunk failed", "start=%u err=%s msg=\"%s\"", c->start,
             kvs_errname(err), kvs_client_errmsg(a->client));
    st->n_failed++;
  } else {
    st->n_put++;
  }
  st->t_put_s += secs(t0);
  free(state);
  free(kv);
  (void)n;
}

kvs_err kvs_llama_prefill_rag(kvs_llama *a, int32_t seq, const int32_t *tokens, size_t n,
                              const kvs_span *spans, size_t n_spans, const kvs_llama_rag_opts *o,
                              kvs_llama_stats *st) {
  kvs_llama_stats dummy;
  if (!st) st = &dummy;
  st_init(st, n);
  if (!a || !tokens || n == 0 || n > INT32_MAX || (n_spans && !spans)) return KVS_EINVAL;
  for (size_t i = 0; i < n_spans; i++) {
    if (spans[i].n_tokens == 0 || (uint64_t)spans[i].start + spans[i].n_tokens >= n ||
        (i && spans[i].start < spans[i - 1].start + spans[i - 1].n_tokens))
      return KVS_ERR_AT(KVS_EINVAL, "spans: sorted, disjoint, non-empty, before the last token");
  }
  const int32_t scratch = o && o->scratch_seq >= 0 ? o->scratch_seq : (int32_t)a->n_seq_max - 1;
  const uint32_t r = o ? o->recompute_first : 0;
  int usable = !a->disabled && n_spans > 0;
  if (usable &&
      (scratch == seq || scratch < 0 || (uint32_t)scratch >= a->n_seq_max || a->n_stream != 1)) {
    KVS_LOGW(COMP,
             "RAG reuse needs a unified KV cache with a free scratch sequence "
             "(n_seq_max >= 2, kv_unified): decoding everything",
             "n_seq_max=%u n_stream=%u", a->n_seq_max, a->n_stream);
    usable = 0;
  }
  if (usable && !llama_memory_can_shift(a->mem)) {
    KVS_LOGW(COMP, "this model's KV cannot be shifted: decoding everything", "%s", "");
    usable = 0;
  }
  seq_clear(a, seq);
  if (!usable) {
    st->n_decoded = (uint32_t)n;
    uint64_t t0 = kvs_now_ns();
    kvs_err err = decode(a, seq, tokens, (uint32_t)n, 0, 1);
    st->t_decode_s = secs(t0);
    return err;
  }
  llama_memory_seq_rm(a->mem, scratch, -1, -1);
  kvs_chunk *ch = malloc(n_spans * sizeof *ch);
  uint8_t *status = calloc(n_spans, 1);
  if (!ch || !status) {
    free(ch), free(status);
    return KVS_ENOMEM;
  }
  kvs_err err = kvs_chunk_spans(&a->id, tokens, n, spans, n_spans, ch);
  if (!err && a->client) {
    uint64_t t0 = kvs_now_ns();
    kvs_err le =
        kvs_lookup(a->client, &a->id, tokens, n, ch, n_spans, KVS_LOOKUP_EACH, status, NULL);
    st->t_lookup_s = secs(t0);
    if (le) {
      KVS_LOGW(COMP, "kvstash lookup failed: computing every chunk", "err=%s msg=\"%s\"",
               kvs_errname(le), kvs_client_errmsg(a->client));
      st->n_failed++;
      memset(status, 0, n_spans);
    }
  }
  /* Left to right: positions in a batch must continue the sequence (llama.cpp
   * requires Y = X + 1), so the first r tokens of a chunk are decoded in
   * context, then the chunk's other tokens are copied in from scratch. */
  uint32_t p = 0;
  for (size_t i = 0; !err && i <= n_spans; i++) {
    const uint32_t s0 = i < n_spans ? spans[i].start : (uint32_t)n;
    uint64_t t0 = kvs_now_ns();
    if (s0 > p) { /* the tokens before this chunk, in context */
      err = decode(a, seq, tokens + p, s0 - p, (int32_t)p, i == n_spans);
      st->n_decoded += s0 - p;
    }
    st->t_decode_s += secs(t0);
    if (err || i == n_spans) break;
    const uint32_t len = spans[i].n_tokens, rr = s0 == 0 ? 0 : (r < len ? r : len);
    if (rr) {
      t0 = kvs_now_ns();
      err = decode(a, seq, tokens + s0, rr, (int32_t)s0, 0);
      st->n_decoded += rr;
      st->t_decode_s += secs(t0);
    }
    p = s0 + rr;
    if (err || rr == len) {
      p = s0 + len;
      continue;
    }
    int decoded = 0;
    rag_chunk_into_scratch(a, scratch, tokens, n, &ch[i], status[i] != 0, st, &decoded);
    if (llama_memory_seq_pos_max(a->mem, scratch) != (llama_pos)len - 1) {
      /* neither fetched nor computed: decode the chunk in place */
      err = decode(a, seq, tokens + p, s0 + len - p, (int32_t)p, 0);
      st->n_decoded += s0 + len - p;
      p = s0 + len;
      continue;
    }
    if (decoded) st->n_decoded += len;
    /* drop the recomputed head, shift the rest to its place (llama.cpp
     * re-rotates K at the next decode), share its cells with seq */
    if (rr) llama_memory_seq_rm(a->mem, scratch, 0, (llama_pos)rr);
    if (s0) llama_memory_seq_add(a->mem, scratch, 0, (llama_pos)len, (llama_pos)s0);
    llama_memory_seq_cp(a->mem, scratch, seq, -1, -1);
    llama_memory_seq_rm(a->mem, scratch, -1, -1);
    if (llama_memory_seq_pos_max(a->mem, seq) != (llama_pos)(s0 + len) - 1) {
      KVS_LOGE(COMP, "chunk placement left unexpected positions", "start=%u len=%u", s0, len);
      err = KVS_EINTERNAL;
    }
    p = s0 + len;
  }
  free(ch);
  free(status);
  return err;
}

/* ------------------------------------------------ the engine (kvs_engine.h) */
/* A state-restore engine: kv_write gathers canonical KV per layer on the
 * host; the first call that needs llama.cpp's cache (prefill, kv_read)
 * restores it as one sequence state. No layer ops. */
typedef struct lengine {
  kvs_engine base;
  kvs_llama *a;
  uint8_t used[KVS_LLAMA_MAX_SEQS];
  double dec_s; /* decode time and tokens of every prefill: prefill_cost */
  uint64_t dec_tok;
} lengine;

struct kvs_engine_seq {
  int32_t id;
  uint32_t cap, len;
  uint32_t staged;    /* slots [0, staged) written by kv_write, not restored yet */
  uint32_t stage_cap; /* tokens each per-layer buffer holds */
  uint8_t **sk, **sv; /* [n_layers] (stage_cap, H, D) f16 */
};

#define LE(e) ((lengine *)(e))

static size_t row_bytes(const kvs_llama *a) {
  return (size_t)a->layout.n_kv_heads * a->layout.head_dim * 2;
}

static kvs_err le_info(kvs_engine *e, kvs_engine_info *o) {
  kvs_llama *a = LE(e)->a;
  memset(o, 0, sizeof *o);
  o->layout = a->layout;
  o->model_id = a->id;
  o->n_embd = (uint32_t)llama_model_n_embd(a->model);
  o->n_vocab = (uint32_t)llama_vocab_n_tokens(llama_model_get_vocab(a->model));
  o->max_tokens = llama_n_ctx(a->ctx);
  o->mem = KVS_ENGINE_MEM_HOST;
  o->name = "llama.cpp";
  return KVS_OK;
}

static void stage_free(kvs_llama *a, kvs_engine_seq *s) {
  for (uint32_t l = 0; s->sk && l < a->layout.n_layers; l++)
    free(s->sk[l]), free(s->sv[l]);
  free(s->sk), free(s->sv);
  s->sk = s->sv = NULL, s->staged = s->stage_cap = 0;
}

static kvs_err le_seq_create(kvs_engine *e, uint32_t cap, kvs_engine_seq **out) {
  lengine *x = LE(e);
  if (!out || !cap) return KVS_EINVAL;
  if (cap > llama_n_ctx(x->a->ctx)) return KVS_ETOOBIG;
  int32_t id = -1;
  for (uint32_t i = 0; i < x->a->n_seq_max && i < KVS_LLAMA_MAX_SEQS && id < 0; i++)
    if (!x->used[i]) id = (int32_t)i;
  if (id < 0) return KVS_EBUSY;
  kvs_engine_seq *s = calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  s->id = id, s->cap = cap;
  x->used[id] = 1;
  seq_clear(x->a, id);
  *out = s;
  return KVS_OK;
}

static void le_seq_free(kvs_engine *e, kvs_engine_seq *s) {
  if (!s) return;
  lengine *x = LE(e);
  seq_clear(x->a, s->id);
  x->used[s->id] = 0;
  stage_free(x->a, s);
  free(s);
}

static uint32_t le_seq_len(kvs_engine *e, const kvs_engine_seq *s) {
  (void)e;
  return s ? s->len : 0;
}

/* the staged KV into llama.cpp as slots [0, staged) */
static kvs_err flush(kvs_llama *a, kvs_engine_seq *s) {
  if (!s->staged) return KVS_OK;
  const uint32_t L = a->layout.n_layers, n = s->staged;
  const size_t rb = row_bytes(a);
  uint8_t *kv = malloc((size_t)kvs_layout_token_bytes(&a->layout) * n);
  if (!kv) return KVS_ENOMEM;
  for (uint32_t l = 0; l < L; l++) {
    memcpy(kv + (2 * (size_t)l) * n * rb, s->sk[l], n * rb);
    memcpy(kv + (2 * (size_t)l + 1) * n * rb, s->sv[l], n * rb);
  }
  const void *parts[1] = {kv};
  seq_clear(a, s->id);
  kvs_err err = restore(a, s->id, parts, &n, 1, n);
  free(kv);
  stage_free(a, s);
  return err;
}

static kvs_err le_seq_truncate(kvs_engine *e, kvs_engine_seq *s, uint32_t n) {
  kvs_llama *a = LE(e)->a;
  if (!s || n > s->len) return KVS_EINVAL;
  if (s->staged) {
    if (n < s->staged) s->staged = n;
    if (!s->staged) stage_free(a, s);
  } else if (!llama_memory_seq_rm(a->mem, s->id, (llama_pos)n, -1)) {
    return KVS_ENOTSUP;
  }
  s->len = n;
  return KVS_OK;
}

static kvs_err le_kv_write(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                           uint32_t n, const void *k, const void *v) {
  kvs_llama *a = LE(e)->a;
  const uint32_t L = a->layout.n_layers;
  if (!s || layer >= L || (n && (!k || !v)) || (uint64_t)start + n > s->cap) return KVS_EINVAL;
  /* a state restore replaces the whole sequence: only before anything is
   * decoded, and only from slot 0 on without holes */
  if (s->len > s->staged || start > s->staged) return KVS_ENOTSUP;
  const size_t rb = row_bytes(a);
  if (!s->sk) {
    s->sk = calloc(L, sizeof *s->sk), s->sv = calloc(L, sizeof *s->sv);
    if (!s->sk || !s->sv) return stage_free(a, s), KVS_ENOMEM;
  }
  if (start + n > s->stage_cap) { /* every layer grows to the same size */
    uint32_t nc = s->stage_cap ? s->stage_cap : 256;
    while (nc < start + n)
      nc *= 2;
    if (nc > s->cap) nc = s->cap;
    for (uint32_t l = 0; l < L; l++) {
      uint8_t *pk = realloc(s->sk[l], nc * rb), *pv = pk ? realloc(s->sv[l], nc * rb) : NULL;
      if (pk) s->sk[l] = pk;
      if (pv) s->sv[l] = pv;
      if (!pk || !pv) return KVS_ENOMEM;
    }
    s->stage_cap = nc;
  }
  memcpy(s->sk[layer] + (size_t)start * rb, k, n * rb);
  memcpy(s->sv[layer] + (size_t)start * rb, v, n * rb);
  if (start + n > s->staged) s->staged = start + n;
  if (s->staged > s->len) s->len = s->staged;
  return KVS_OK;
}

static kvs_err le_kv_read(kvs_engine *e, kvs_engine_seq *s, uint32_t layer, uint32_t start,
                          uint32_t n, void *k, void *v) {
  kvs_llama *a = LE(e)->a;
  if (!s || layer >= a->layout.n_layers || (uint64_t)start + n > s->len) return KVS_EINVAL;
  if (!n) return KVS_OK;
  const size_t rb = row_bytes(a);
  if (s->staged >= start + n) { /* still on the host */
    memcpy(k, s->sk[layer] + (size_t)start * rb, n * rb);
    memcpy(v, s->sv[layer] + (size_t)start * rb, n * rb);
    return KVS_OK;
  }
  KVS_TRY(flush(a, s));
  uint8_t *state = NULL;
  size_t sz = 0;
  kvs_llama_state_info in;
  KVS_TRY(read_state(a, s->id, &state, &sz, &in));
  size_t cb = (size_t)kvs_layout_token_bytes(&a->layout) * n;
  uint8_t *kv = in.pos0 == 0 ? malloc(cb) : NULL;
  kvs_err err = kv ? KVS_OK : in.pos0 ? KVS_ECORRUPT : KVS_ENOMEM;
  if (!err) err = kvs_llama_state_to_canonical(&a->layout, state, sz, start, start + n, kv, cb);
  if (!err) {
    memcpy(k, kv + (2 * (size_t)layer) * n * rb, n * rb);
    memcpy(v, kv + (2 * (size_t)layer + 1) * n * rb, n * rb);
  }
  free(kv), free(state);
  return err;
}

static kvs_err le_prefill(kvs_engine *e, kvs_engine_seq *s, const int32_t *tokens, uint32_t n,
                          int all_logits, float *logits) {
  lengine *x = LE(e);
  kvs_llama *a = x->a;
  if (!s || !tokens || !n || (uint64_t)s->len + n > s->cap) return KVS_EINVAL;
  if (all_logits && logits) return KVS_ENOTSUP; /* the last token's only */
  KVS_TRY(flush(a, s));
  uint64_t t0 = kvs_now_ns();
  /* the last token's logits always: llama_get_logits_ith(ctx, -1) is then
   * ready for generating, also when the caller passed none */
  kvs_err err = decode(a, s->id, tokens, n, (int32_t)s->len, 1);
  x->dec_s += secs(t0), x->dec_tok += n;
  if (err) return err;
  s->len += n;
  if (logits) {
    const float *lg = llama_get_logits_ith(a->ctx, -1);
    if (!lg) return KVS_EINTERNAL;
    memcpy(logits, lg, (size_t)llama_vocab_n_tokens(llama_model_get_vocab(a->model)) * 4);
  }
  return KVS_OK;
}

static kvs_err le_prefill_cost(kvs_engine *e, uint32_t n_probe, double *spt) {
  lengine *x = LE(e);
  if (!spt) return KVS_EINVAL;
  if (!x->dec_tok) { /* a probe on a free sequence */
    if (!n_probe) n_probe = 64;
    uint32_t nc = llama_n_ctx(x->a->ctx);
    if (n_probe > nc) n_probe = nc;
    kvs_engine_seq *s;
    KVS_TRY(le_seq_create(e, n_probe, &s));
    int32_t *tok = calloc(n_probe, sizeof *tok);
    int32_t nv = llama_vocab_n_tokens(llama_model_get_vocab(x->a->model));
    kvs_err err = tok ? KVS_OK : KVS_ENOMEM;
    for (uint32_t i = 0; !err && i < n_probe; i++)
      tok[i] = (int32_t)((i * 7919u) % (uint32_t)nv);
    if (!err) err = le_prefill(e, s, tok, n_probe, 0, NULL);
    free(tok);
    le_seq_free(e, s);
    KVS_TRY(err);
  }
  *spt = x->dec_s / (double)x->dec_tok;
  return KVS_OK;
}

static void le_destroy(kvs_engine *e) { free(e); }

static const kvs_engine_ops llama_ops = {
    .abi = KVS_ENGINE_ABI,
    .info = le_info,
    .seq_create = le_seq_create,
    .seq_free = le_seq_free,
    .seq_len = le_seq_len,
    .seq_truncate = le_seq_truncate,
    .kv_read = le_kv_read,
    .kv_write = le_kv_write,
    .prefill = le_prefill,
    .prefill_cost = le_prefill_cost,
    .destroy = le_destroy,
};

kvs_err kvs_llama_engine(kvs_llama *a, kvs_engine **out) {
  if (!a || !out) return KVS_EINVAL;
  *out = NULL;
  if (a->disabled) return KVS_EVERSION;
  lengine *x = calloc(1, sizeof *x);
  if (!x) return KVS_ENOMEM;
  x->base.ops = &llama_ops, x->a = a;
  *out = &x->base;
  return KVS_OK;
}
