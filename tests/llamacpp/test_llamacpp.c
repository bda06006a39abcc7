/* test_llamacpp.c - the llama.cpp adapter against libllama (SmolLM2) and a
 * real kvstashd on loopback. Skips (77) without the model.
 *
 * Exactness: the adapter restores whole chunks of chunk_tokens (32 here) and
 * the context's n_ubatch (32) divides it, so "restore + decode the rest" runs
 * the remaining tokens in the same ubatches as one llama_decode of the whole
 * prompt in a fresh context; the logits must then be bitwise equal. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_engine.h"
#include "kvs_llama.h"
#include "kvs_reuse.h"
#include "kvs_test.h"
#include "llama.h"
#include "svc_helper.h"

#define CHUNK 32u

static th_daemon g_d;
static int g_daemon_up;
static struct llama_model *g_model;
static const char *g_path;
static int32_t g_vocab;
static int32_t g_t1[160], g_t2[200]; /* turn 1, turn 2 (= turn 1 + more) */
static size_t g_n1, g_n2;

static const char *TEXT1 =
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThe Nile is "
    "a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea. "
    "The Nile is among the longest rivers in the world; its drainage basin covers eleven "
    "countries, from Tanzania and Uganda in the south to Egypt in the north, where most of the "
    "people of the country live along its banks. The White Nile and the Blue Nile meet at "
    "Khartoum, the capital of Sudan. Which "
    "sea does the Nile flow into?<|im_end|>\n<|im_start|>assistant\nThe Mediterranean Sea.";
static const char *TEXT2 =
    "<|im_end|>\n<|im_start|>user\nAnd where do its two main branches meet? Answer in one "
    "word.<|im_end|>\n<|im_start|>assistant\n";

static size_t tokenize(const char *text, int32_t *out, size_t cap) {
  int32_t n = llama_tokenize(llama_model_get_vocab(g_model), text, (int32_t)strlen(text), out,
                             (int32_t)cap, false, true);
  return n < 0 ? 0 : (size_t)n;
}

static struct llama_context *new_ctx(uint32_t n_seq, int fa) {
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.n_ubatch = CHUNK;
  cp.n_seq_max = n_seq;
  cp.kv_unified = true;
  cp.flash_attn = fa != 0;
  cp.n_threads = cp.n_threads_batch = 1;
  cp.no_perf = true;
  return llama_init_from_model(g_model, cp);
}

static kvs_client *new_client(const char *url) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.flags = KVS_CLIENT_LAZY;
  o.request_timeout_ms = 1500;
  o.connect_timeout_ms = 500;
  o.max_retries = 1;
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c) != KVS_OK) {
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

static kvs_llama *attach(struct llama_context *ctx, kvs_client *c, const char *salt, int fa) {
  kvs_llama_opts o;
  kvs_llama_opts_init(&o);
  o.client = c;
  o.gguf_path = g_path;
  o.chunk_tokens = CHUNK;
  o.flash_attn = fa;
  o.id_salt = salt;
  kvs_llama *a = NULL;
  CU_ASSERT_EQUAL(kvs_llama_create(g_model, ctx, &o, &a), KVS_OK);
  return a;
}

/* Logits of the last token of tokens[n], decoded in one call in a fresh context. */
static float *plain_logits(const int32_t *tokens, size_t n) {
  struct llama_context *ctx = new_ctx(1, 0);
  float *out = malloc((size_t)g_vocab * sizeof *out);
  struct llama_batch b = llama_batch_init((int32_t)n, 0, 1);
  for (size_t i = 0; i < n; i++) {
    b.token[i] = tokens[i];
    b.pos[i] = (int32_t)i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = i == n - 1;
  }
  b.n_tokens = (int32_t)n;
  CU_ASSERT_EQUAL_FATAL(llama_decode(ctx, b), 0);
  memcpy(out, llama_get_logits_ith(ctx, -1), (size_t)g_vocab * sizeof *out);
  llama_batch_free(b);
  llama_free(ctx);
  return out;
}

static int same_logits(struct llama_context *ctx, const float *ref) {
  return memcmp(llama_get_logits_ith(ctx, -1), ref, (size_t)g_vocab * sizeof *ref) == 0;
}

/* llama.cpp's own log: errors only (it says why it refused a state). */
static void quiet(enum ggml_log_level level, const char *text, void *user) {
  (void)user;
  if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int suite_init(void) {
  g_path = kvs_test_model_path();
  if (!g_path) return 0;
  llama_backend_init();
  llama_log_set(quiet, NULL);
  struct llama_model_params mp = llama_model_default_params();
  g_model = llama_model_load_from_file(g_path, mp);
  if (!g_model) return 1;
  g_vocab = llama_vocab_n_tokens(llama_model_get_vocab(g_model));
  g_n1 = tokenize(TEXT1, g_t1, 160);
  memcpy(g_t2, g_t1, g_n1 * sizeof *g_t1);
  g_n2 = g_n1 + tokenize(TEXT2, g_t2 + g_n1, 200 - g_n1);
  if (g_n1 < 3 * CHUNK + 1 || g_n2 <= g_n1) {
    fprintf(stderr, "prompt too short: %zu %zu\n", g_n1, g_n2);
    return 1;
  }
  memset(&g_d, 0, sizeof g_d);
  if (th_daemon_start(&g_d, NULL) != 0) {
    th_daemon_cleanup(&g_d);
    return 1;
  }
  g_daemon_up = 1;
  return 0;
}

static int suite_clean(void) {
  int rc = 0;
  if (g_daemon_up) {
    rc = th_daemon_stop(&g_d); /* the log on stderr when it did not exit 0 */
    th_daemon_cleanup(&g_d);
  }
  if (g_model) llama_model_free(g_model);
  if (g_path) llama_backend_free();
  kvs_client_lib_fini();
  return rc == 0 ? 0 : 1;
}

/* The sequence state of a decoded prompt -> canonical -> state: the same bytes
 * (V transposed: flash attention off; plain: on), and back. */
static void roundtrip(int fa) {
  struct llama_context *ctx = new_ctx(1, fa);
  kvs_llama *a = attach(ctx, NULL, NULL, fa);
  CU_ASSERT_EQUAL_FATAL(kvs_llama_prefill(a, 0, g_t1, g_n1, NULL), KVS_OK);
  const kvs_layout *l = kvs_llama_layout(a);
  size_t sz = llama_state_seq_get_size(ctx, 0);
  uint8_t *st = malloc(sz), *back = malloc(sz);
  CU_ASSERT_EQUAL_FATAL(llama_state_seq_get_data(ctx, st, sz, 0), sz);
  kvs_llama_state_info in;
  CU_ASSERT_EQUAL_FATAL(kvs_llama_state_parse(l, st, sz, &in), KVS_OK);
  CU_ASSERT_EQUAL(in.n_tokens, g_n1);
  CU_ASSERT_EQUAL(in.v_trans, fa ? 0u : 1u);
  CU_ASSERT_EQUAL(in.pos0, 0);
  CU_ASSERT(in.ordered);
  size_t cb = (size_t)kvs_layout_token_bytes(l) * g_n1, got = 0;
  uint8_t *kv = malloc(cb), *kv2 = malloc(cb);
  CU_ASSERT_EQUAL_FATAL(kvs_llama_state_to_canonical(l, st, sz, 0, in.n_tokens, kv, cb), KVS_OK);
  const void *parts[1] = {kv};
  CU_ASSERT_EQUAL(kvs_llama_state_bound(l, &in), sz);
  CU_ASSERT_EQUAL_FATAL(
      kvs_llama_state_from_canonical(l, &in, parts, &in.n_tokens, 1, back, sz, &got), KVS_OK);
  CU_ASSERT_EQUAL(got, sz);
  CU_ASSERT(memcmp(st, back, sz) == 0);
  /* and canonical -> state -> canonical, in two parts (as chunks are) */
  uint32_t pt[2] = {CHUNK, in.n_tokens - CHUNK};
  size_t plane = (size_t)kvs_layout_token_bytes(l) * CHUNK;
  uint8_t *p0 = malloc(plane), *p1 = malloc(cb - plane);
  CU_ASSERT_EQUAL(kvs_llama_state_to_canonical(l, st, sz, 0, CHUNK, p0, plane), KVS_OK);
  CU_ASSERT_EQUAL(kvs_llama_state_to_canonical(l, st, sz, CHUNK, in.n_tokens, p1, cb - plane),
                  KVS_OK);
  const void *parts2[2] = {p0, p1};
  memset(back, 0, sz);
  CU_ASSERT_EQUAL(kvs_llama_state_from_canonical(l, &in, parts2, pt, 2, back, sz, &got), KVS_OK);
  CU_ASSERT(memcmp(st, back, sz) == 0);
  CU_ASSERT_EQUAL(kvs_llama_state_to_canonical(l, back, sz, 0, in.n_tokens, kv2, cb), KVS_OK);
  CU_ASSERT(memcmp(kv, kv2, cb) == 0);
  /* llama.cpp takes the rebuilt state back */
  llama_memory_clear(llama_get_memory(ctx), true);
  CU_ASSERT_EQUAL(llama_state_seq_set_data(ctx, back, sz, 0), sz);
  CU_ASSERT_EQUAL(llama_memory_seq_pos_max(llama_get_memory(ctx), 0), (int32_t)g_n1 - 1);
  free(p0), free(p1), free(kv), free(kv2), free(st), free(back);
  kvs_llama_free(a);
  llama_free(ctx);
}
static void test_roundtrip_vtrans(void) {
  if (g_path) roundtrip(0);
}
static void test_roundtrip_flash(void) {
  if (g_path) roundtrip(1);
}

/* Bad blobs: each a clear error, never a conversion. */
static void test_format_checks(void) {
  if (!g_path) return;
  struct llama_context *ctx = new_ctx(1, 0);
  kvs_llama *a = attach(ctx, NULL, NULL, 0);
  CU_ASSERT_EQUAL_FATAL(kvs_llama_prefill(a, 0, g_t1, 40, NULL), KVS_OK);
  kvs_layout l = *kvs_llama_layout(a);
  size_t sz = llama_state_seq_get_size(ctx, 0);
  uint8_t *st = malloc(sz), *bad = malloc(sz + 4);
  CU_ASSERT_EQUAL_FATAL(llama_state_seq_get_data(ctx, st, sz, 0), sz);
  kvs_llama_state_info in;
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, st, sz, &in), KVS_OK);
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, st, sz - 1, &in), KVS_EVERSION);
  memcpy(bad, st, sz);
  bad[sz] = 0;
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, bad, sz + 1, &in), KVS_EVERSION);
  /* K type of layer 0: after n_stream, cell_count, 40 cells, v_trans, n_layer */
  size_t kt = 8 + 40 * 12 + 8;
  memcpy(bad, st, sz);
  bad[kt] = 0; /* F32 */
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, bad, sz, &in), KVS_ENOTSUP);
  memcpy(bad, st, sz);
  bad[8 + 12 + 4] = 2; /* n_seq_id of cell 1 */
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, bad, sz, &in), KVS_EVERSION);
  memcpy(bad, st, sz);
  bad[8 + 12] = 7; /* cell 1 at position 7: not contiguous with the others */
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l, bad, sz, &in), KVS_ECORRUPT);
  kvs_layout l2 = l;
  l2.n_layers++;
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l2, st, sz, &in), KVS_ELAYOUT);
  l2 = l;
  l2.head_dim /= 2;
  CU_ASSERT_EQUAL(kvs_llama_state_parse(&l2, st, sz, &in), KVS_ELAYOUT);
  free(st), free(bad);
  kvs_llama_free(a);
  llama_free(ctx);
}

/* Turn 1 stored by one context; turn 2 in a fresh one restores 3 chunks and
 * must give exactly the logits of a plain decode of the whole turn-2 prompt. */
static void test_prefix_exact(void) {
  if (!g_path) return;
  kvs_client *c = new_client(g_d.url);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  struct llama_context *ctx1 = new_ctx(1, 0), *ctx2 = new_ctx(1, 0);
  kvs_llama *a1 = attach(ctx1, c, "exact", 0), *a2 = attach(ctx2, c, "exact", 0);
  kvs_llama_stats st;
  CU_ASSERT_EQUAL(kvs_llama_prefill(a1, 0, g_t1, g_n1, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, 0u);
  CU_ASSERT_EQUAL(kvs_llama_store(a1, 0, g_t1, g_n1, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_put, g_n1 / CHUNK);
  CU_ASSERT_EQUAL(st.n_failed, 0u);
  float *ref = plain_logits(g_t2, g_n2);
  CU_ASSERT_EQUAL(kvs_llama_prefill(a2, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, (g_n1 / CHUNK) * CHUNK);
  CU_ASSERT_EQUAL(st.n_failed, 0u);
  CU_ASSERT(same_logits(ctx2, ref));
  /* a second prefill in the same context (cache cleared first) too */
  CU_ASSERT_EQUAL(kvs_llama_prefill(a2, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT(st.n_restored > 0);
  CU_ASSERT(same_logits(ctx2, ref));
  /* and without kvstash: the plain path gives the same numbers */
  kvs_llama *a0 = attach(ctx1, NULL, "exact", 0);
  CU_ASSERT_EQUAL(kvs_llama_prefill(a0, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT(same_logits(ctx1, ref));
  free(ref);
  kvs_llama_free(a0), kvs_llama_free(a1), kvs_llama_free(a2);
  llama_free(ctx1), llama_free(ctx2);
  kvs_client_free(c);
}

/* kvstashd unreachable: the engine goes on, no reuse, same logits. */
static void test_daemon_down(void) {
  if (!g_path) return;
  char url[64];
  snprintf(url, sizeof url, "tcp://127.0.0.1:%d", th_free_port());
  kvs_client *c = new_client(url);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  struct llama_context *ctx = new_ctx(1, 0);
  kvs_llama *a = attach(ctx, c, "down", 0);
  kvs_llama_stats st;
  float *ref = plain_logits(g_t2, g_n2);
  CU_ASSERT_EQUAL(kvs_llama_prefill(a, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, 0u);
  CU_ASSERT(st.n_failed > 0);
  CU_ASSERT(same_logits(ctx, ref));
  CU_ASSERT_EQUAL(kvs_llama_store(a, 0, g_t2, g_n2, &st), KVS_OK); /* logged, not fatal */
  free(ref);
  kvs_llama_free(a);
  llama_free(ctx);
  kvs_client_free(c);
}

/* Chunks stored under one model id are never served to another. */
static void test_wrong_model(void) {
  if (!g_path) return;
  kvs_client *c = new_client(g_d.url);
  struct llama_context *ctx = new_ctx(1, 0);
  kvs_llama *a = attach(ctx, c, "model-a", 0), *b = attach(ctx, c, "model-b", 0);
  CU_ASSERT(!kvs_hash128_equal(kvs_llama_model_id(a), kvs_llama_model_id(b)));
  kvs_llama_stats st;
  CU_ASSERT_EQUAL(kvs_llama_prefill(a, 0, g_t1, g_n1, &st), KVS_OK);
  CU_ASSERT_EQUAL(kvs_llama_store(a, 0, g_t1, g_n1, &st), KVS_OK);
  CU_ASSERT(st.n_put > 0);
  CU_ASSERT_EQUAL(kvs_llama_prefill(b, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, 0u);
  /* the server itself refuses model-a's key asked for with model-b's id */
  kvs_chunk ch[1];
  size_t got = 0;
  CU_ASSERT_EQUAL(kvs_chunk_prefix(kvs_llama_model_id(a), g_t1, CHUNK, CHUNK, 0, ch, 1, &got),
                  KVS_OK);
  uint64_t cb = kvs_get_bound(kvs_llama_layout(a), CHUNK, NULL);
  void *kv = malloc(cb);
  kvs_err e = kvs_get(c, kvs_llama_model_id(b), g_t1, ch, kvs_llama_layout(b), kv, cb, NULL);
  CU_ASSERT(e == KVS_EMODEL || e == KVS_ENOENT);
  free(kv);
  kvs_llama_free(a), kvs_llama_free(b);
  llama_free(ctx);
  kvs_client_free(c);
}

/* An entry whose stored KV does not fit (another layout under the key) is
 * refused by the server on get: no reuse, the prompt decoded, same logits. */
static void test_corrupt_entry(void) {
  if (!g_path) return;
  kvs_client *c = new_client(g_d.url);
  struct llama_context *ctx = new_ctx(1, 0);
  kvs_llama *a = attach(ctx, c, "corrupt", 0);
  kvs_chunk ch[1];
  size_t got = 0;
  CU_ASSERT_EQUAL(kvs_chunk_prefix(kvs_llama_model_id(a), g_t1, CHUNK, CHUNK, 0, ch, 1, &got),
                  KVS_OK);
  kvs_layout bad = *kvs_llama_layout(a);
  bad.head_dim = bad.rope_dims = 32; /* half the real rows */
  size_t nb = (size_t)kvs_layout_token_bytes(&bad) * CHUNK;
  uint8_t *junk = malloc(nb);
  for (size_t i = 0; i < nb; i++)
    junk[i] = (uint8_t)(i * 131u);
  kvs_err pe = kvs_put(c, kvs_llama_model_id(a), g_t1, ch, &bad, junk, NULL);
  if (pe) fprintf(stderr, "put: %s %s\n", kvs_errname(pe), kvs_client_errmsg(c));
  CU_ASSERT_EQUAL(pe, KVS_OK);
  free(junk);
  float *ref = plain_logits(g_t2, g_n2);
  kvs_llama_stats st;
  CU_ASSERT_EQUAL(kvs_llama_prefill(a, 0, g_t2, g_n2, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, 0u);
  CU_ASSERT(st.n_failed > 0);
  CU_ASSERT(same_logits(ctx, ref));
  free(ref);
  kvs_llama_free(a);
  llama_free(ctx);
  kvs_client_free(c);
}

/* RAG: content chunks computed alone, put, then restored at new offsets with
 * llama.cpp's K shift; the second run reuses every chunk. */
static void test_rag(void) {
  if (!g_path) return;
  kvs_client *c = new_client(g_d.url);
  struct llama_context *ctx = new_ctx(2, 0);
  kvs_llama *a = attach(ctx, c, "rag", 0);
  /* spans: the instruction (0..19) and two "passages" */
  kvs_span sp[3] = {{0, 20}, {20, 40}, {60, 30}};
  kvs_llama_rag_opts ro = {4, -1};
  kvs_llama_stats st;
  CU_ASSERT_EQUAL(kvs_llama_prefill_rag(a, 0, g_t1, g_n1, sp, 3, &ro, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_put, 3u);
  CU_ASSERT_EQUAL(st.n_restored, 0u);
  int32_t first = 0;
  const float *lg = llama_get_logits_ith(ctx, -1);
  for (int32_t j = 1; j < g_vocab; j++)
    if (lg[j] > lg[first]) first = j;
  CU_ASSERT_EQUAL(kvs_llama_prefill_rag(a, 0, g_t1, g_n1, sp, 3, &ro, &st), KVS_OK);
  CU_ASSERT_EQUAL(st.n_restored, 90u);
  CU_ASSERT_EQUAL(st.n_put, 0u);
  CU_ASSERT_EQUAL(st.n_failed, 0u);
  CU_ASSERT_EQUAL(llama_memory_seq_pos_max(llama_get_memory(ctx), 0), (int32_t)g_n1 - 1);
  /* restored chunks equal the computed ones: the same logits */
  lg = llama_get_logits_ith(ctx, -1);
  int32_t again = 0;
  for (int32_t j = 1; j < g_vocab; j++) {
    CU_ASSERT_FATAL(isfinite(lg[j]));
    if (lg[j] > lg[again]) again = j;
  }
  CU_ASSERT_EQUAL(again, first);
  kvs_llama_free(a);
  llama_free(ctx);
  kvs_client_free(c);
}

/* The engine (kvs_llama_engine) through reuse/: a cold request prefills and
 * stores its prefix chunks; the next one loads them (a state restore) and
 * decodes the rest, and its logits are the plain decode's bit for bit (the
 * prefix is a whole number of n_ubatch). A request whose middle chunk is new
 * loads the leading chunks only: the hit after the miss is prefilled. */
static float *reuse_req(kvs_reuse *r, kvs_engine *e, const int32_t *tok,
                        const kvs_reuse_segment *sg, uint32_t n_sg, kvs_reuse_result *res,
                        uint8_t *dec) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < n_sg; i++)
    n += sg[i].n_tokens;
  kvs_reuse_request q = {.tokens = tok, .n_tokens = n, .segs = sg, .n_segs = n_sg};
  float *lg = malloc((size_t)g_vocab * sizeof *lg);
  kvs_engine_seq *s;
  CU_ASSERT_EQUAL_FATAL(e->ops->seq_create(e, n + 8, &s), KVS_OK);
  CU_ASSERT_EQUAL(kvs_reuse_run(r, s, &q, lg, res, dec, 8), KVS_OK);
  CU_ASSERT_EQUAL(e->ops->seq_len(e, s), n);
  e->ops->seq_free(e, s);
  return lg;
}

static void test_reuse_engine(void) {
  if (!g_path) return;
  kvs_client_opts co;
  kvs_client_opts_init(&co);
  co.url = g_d.url;
  kvs_client *c = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&co, &c), KVS_OK);
  struct llama_context *ctx = new_ctx(1, 0);
  kvs_llama *a = attach(ctx, c, "engine", 0);
  kvs_engine *e = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_llama_engine(a, &e), KVS_OK);
  kvs_engine_info in;
  CU_ASSERT_EQUAL(e->ops->info(e, &in), KVS_OK);
  CU_ASSERT_PTR_NULL(e->ops->layer);
  kvs_reuse_opts ro;
  kvs_reuse_opts_init(&ro); /* adaptive: a state-restore engine is held to none */
  ro.prefix_chunk_tokens = CHUNK;
  ro.store = 1;
  kvs_reuse *r = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_reuse_create(c, e, &ro, &r), KVS_OK);
  /* turn 2's prompt: a 4-chunk PREFIX, the rest NEW */
  const uint32_t P = 4 * CHUNK;
  CU_ASSERT_FATAL(g_n2 > P + 1);
  kvs_reuse_segment sg[2] = {{KVS_SEG_PREFIX, P}, {KVS_SEG_NEW, (uint32_t)g_n2 - P}};
  float *ref = plain_logits(g_t2, g_n2);
  kvs_reuse_result res;
  uint8_t dec[8];
  float *l1 = reuse_req(r, e, g_t2, sg, 2, &res, dec);
  CU_ASSERT_EQUAL(res.n_chunks, 4);
  CU_ASSERT_EQUAL(res.n_miss, 4);
  CU_ASSERT_EQUAL(res.n_store_queued, 4);
  CU_ASSERT(memcmp(l1, ref, (size_t)g_vocab * 4) == 0);
  CU_ASSERT_EQUAL(kvs_reuse_flush(r), KVS_OK);
  kvs_reuse_counters ct;
  kvs_reuse_get_counters(r, &ct);
  CU_ASSERT_EQUAL(ct.stores_done, 4);
  float *l2 = reuse_req(r, e, g_t2, sg, 2, &res, dec);
  CU_ASSERT_EQUAL(res.n_load, 4); /* an unmeasured tier is loaded */
  CU_ASSERT_EQUAL(res.blend.n_recomputed, 0);
  CU_ASSERT(memcmp(l2, ref, (size_t)g_vocab * 4) == 0);
  printf("\n  llama.cpp engine through reuse/: %u of %u prefix chunks loaded, logits bit for bit",
         res.n_load, res.n_chunks);
  free(l1), free(l2);
  /* PREFIX (2 chunks) + two passages: cold, then with the first passage
   * replaced: prefix loaded, new passage missed, the second passage (a hit)
   * prefilled after it */
  const uint32_t A0 = 2 * CHUNK, NA = 24, NB = 20;
  int32_t t3[200];
  memcpy(t3, g_t2, g_n2 * sizeof *t3);
  kvs_reuse_segment s3[4] = {{KVS_SEG_PREFIX, A0},
                             {KVS_SEG_CONTENT, NA},
                             {KVS_SEG_CONTENT, NB},
                             {KVS_SEG_NEW, (uint32_t)g_n2 - A0 - NA - NB}};
  free(reuse_req(r, e, t3, s3, 4, &res, dec));
  CU_ASSERT_EQUAL(kvs_reuse_flush(r), KVS_OK);
  for (uint32_t i = A0; i < A0 + NA; i++) /* another first passage */
    t3[i] = g_t2[(i * 7) % g_n2];
  float *l3 = reuse_req(r, e, t3, s3, 4, &res, dec);
  CU_ASSERT_EQUAL(res.n_chunks, 4);
  CU_ASSERT_EQUAL(dec[0], KVS_REUSE_LOAD);
  CU_ASSERT_EQUAL(dec[1], KVS_REUSE_LOAD);
  CU_ASSERT_EQUAL(dec[2], KVS_REUSE_MISS);
  CU_ASSERT_EQUAL(dec[3], KVS_REUSE_RECOMPUTE);
  float *ref3 = plain_logits(t3, g_n2);
  CU_ASSERT(memcmp(l3, ref3, (size_t)g_vocab * 4) == 0); /* the loaded part is a 64-token prefix */
  free(l3), free(ref3), free(ref);
  kvs_reuse_free(r);
  kvs_engine_free(e);
  kvs_llama_free(a);
  llama_free(ctx);
  kvs_client_free(c);
}

int main(void) {
  if (!kvs_test_model_path()) {
    fprintf(stderr, "llamacpp: model not found (KVS_MODEL_PATH or tools/fetch-model): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"roundtrip_vtrans", test_roundtrip_vtrans}, {"roundtrip_flash", test_roundtrip_flash},
      {"format_checks", test_format_checks},       {"prefix_exact", test_prefix_exact},
      {"daemon_down", test_daemon_down},           {"wrong_model", test_wrong_model},
      {"corrupt_entry", test_corrupt_entry},       {"rag", test_rag},
      {"reuse_engine", test_reuse_engine},         {NULL, NULL}};
  return kvs_test_run_fixture("llamacpp", cases, suite_init, suite_clean);
}
