/* The client's calls end to end: put, layer-streamed get (sync, async,
 * batch, head range, f32), lookup, exists/pin/ttl/delete, stats, tenants and
 * errors, against the kvstashd binary (skipped when it is not built).
 * Replies kvstashd never sends are staged in test_client_faults.c. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_test.h"
#include "kvstash.h"
#if __has_include("kvs_codec.h")
#include "kvs_codec.h"
#define KVS_TEST_CODEC_H 1
#endif
#include "client_util.h"
#include "server.h"

static test_server srv;
static kvs_client *cl;
static kvs_model_id model;
static const kvs_layout lay = {.n_layers = 6,
                               .n_kv_heads = 4,
                               .head_dim = 32,
                               .dtype = KVS_DTYPE_F16,
                               .rope_type = KVS_ROPE_NORM,
                               .rope_dims = 32,
                               .rope_theta = 10000.0f,
                               .rope_freq_scale = 1.0f};
static unsigned long long seed = 42;
static char tenant[40];

static kvs_client *connect_as(const char *t) { return test_client_connect(srv.url, t, 0); }

static uint16_t *make_kv(uint32_t T) { return test_make_kv(&lay, T, &seed); }
static int32_t *make_tokens(size_t n) { return test_make_tokens(n, &seed); }

static void test_ping(void) { CU_ASSERT_EQUAL(kvs_ping(cl), KVS_OK); }

typedef struct groups {
  uint32_t next, calls;
  int in_order;
} groups;

static void on_group(void *user, uint32_t lb, uint32_t le) {
  groups *g = user;
  if (lb != g->next || le <= lb) g->in_order = 0;
  g->next = le;
  g->calls++;
}

static void test_put_get_raw(void) {
  const uint32_t T = 100;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_spans(&model, tok, T, &sp, 1, &ch), KVS_OK);
  kvs_put_opts po = {.profile = KVS_PROFILE_RAW, .layers_per_group = 2};
  int rv = kvs_put(cl, &model, tok, &ch, &lay, kv, &po);
  CU_ASSERT_EQUAL(rv, KVS_OK);
  if (rv) fprintf(stderr, "put: %s\n", kvs_client_errmsg(cl));
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  CU_ASSERT_EQUAL(nb, kvs_layout_token_bytes(&lay) * T);
  uint16_t *out = malloc(nb);
  memset(out, 0xAB, nb);
  groups g = {0, 0, 1};
  kvs_get_opts go = {.on_group = on_group, .user = &g, .window = 2};
  rv = kvs_get(cl, &model, tok, &ch, &lay, out, nb, &go);
  CU_ASSERT_EQUAL(rv, KVS_OK);
  if (rv) fprintf(stderr, "get: %s\n", kvs_client_errmsg(cl));
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  CU_ASSERT_EQUAL(g.calls, 3); /* 6 layers, 2 per group */
  CU_ASSERT(g.in_order);
  CU_ASSERT_EQUAL(g.next, lay.n_layers);

  /* heads [1, 3) only: (L, 2, T, 2, D) */
  kvs_get_opts ho = {.head_begin = 1, .head_end = 3};
  uint64_t hb = kvs_get_bound(&lay, T, &ho);
  CU_ASSERT_EQUAL(hb, nb / 2);
  uint16_t *hout = malloc(hb);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, hout, hb, &ho), KVS_OK);
  int same = 1;
  const uint32_t H = lay.n_kv_heads, D = lay.head_dim;
  for (uint32_t p = 0; p < 2 * lay.n_layers; p++)
    for (uint32_t t = 0; t < T; t++)
      for (uint32_t h = 1; h < 3; h++)
        if (memcmp(hout + (((size_t)p * T + t) * 2 + (h - 1)) * D,
                   kv + (((size_t)p * T + t) * H + h) * D, D * 2))
          same = 0;
  CU_ASSERT(same);

  /* f32 output */
  kvs_get_opts fo = {.dtype = KVS_DTYPE_F32};
  uint64_t fb = kvs_get_bound(&lay, T, &fo);
  float *fout = malloc(fb);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, fout, fb, &fo), KVS_OK);
  int fsame = 1;
  for (size_t i = 0; i < nb / 2; i++)
    if (fout[i] != kvs_f16_to_f32(kv[i])) fsame = 0;
  CU_ASSERT(fsame);
  /* too small a buffer is refused before anything moves */
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, out, nb - 1, NULL), KVS_ERANGE);
  free(fout), free(hout), free(out), free(kv), free(tok);
}

static void test_get_errors(void) {
  const uint32_t T = 40;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  void *out = malloc(nb);
  /* a miss */
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, out, nb, NULL), KVS_ENOENT);
  CU_ASSERT(strlen(kvs_client_errmsg(cl)) > 0);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch, &lay, kv, NULL), KVS_OK);
  /* same key, other tokens: refused, never served */
  int32_t *tok2 = malloc(T * sizeof *tok2);
  memcpy(tok2, tok, T * sizeof *tok2);
  tok2[7]++;
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok2, &ch, &lay, out, nb, NULL), KVS_ETOKENS);
  /* other model */
  kvs_model_id m2 = kvs_hash128_buf("another model", 13);
  int rv = kvs_get(cl, &m2, tok, &ch, &lay, out, nb, NULL);
  CU_ASSERT(rv == KVS_EMODEL || rv == KVS_ENOENT);
  /* the caller expects another layout */
  kvs_layout l2 = lay;
  l2.n_layers = 5;
  uint64_t nb2 = kvs_get_bound(&l2, T, NULL);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &l2, out, nb2, NULL), KVS_ELAYOUT);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(cl), "layout"));
  /* NX on a present key */
  kvs_put_opts nx = {.flags = KVS_PUT_NX};
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch, &lay, kv, &nx), KVS_EEXIST);
  free(out), free(kv), free(tok), free(tok2);
}

static void test_lookup(void) {
  const uint32_t T = 4 * 32 + 10;
  int32_t *tok = make_tokens(T);
  kvs_chunk pc[5];
  size_t n = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_prefix(&model, tok, T, 32, 0, pc, 5, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, 4);
  /* store chunks 0, 1 and 3 (not 2) */
  uint16_t *kv = make_kv(32);
  for (int i = 0; i < 4; i++)
    if (i != 2) CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &pc[i], &lay, kv, NULL), KVS_OK);
  uint8_t st[4];
  size_t np = 99;
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, T, pc, 4, KVS_LOOKUP_PREFIX, st, &np), KVS_OK);
  CU_ASSERT_EQUAL(np, 2);
  CU_ASSERT(st[0] && st[1] && !st[2] && !st[3]);
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, T, pc, 4, KVS_LOOKUP_EACH, st, &np), KVS_OK);
  CU_ASSERT(st[0] && st[1] && !st[2] && st[3]);
  CU_ASSERT_EQUAL(np, 2);
  /* RAG: passages stored alone are found inside a new prompt at other offsets */
  int32_t *prompt = make_tokens(300);
  memcpy(prompt + 50, tok, 32 * sizeof *tok); /* passage A = tok[0..32) */
  memcpy(prompt + 200, tok + 64, 20 * sizeof *tok);
  kvs_span sa = {0, 32};
  kvs_chunk ca;
  kvs_chunk_spans(&model, tok, T, &sa, 1, &ca);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ca, &lay, kv, NULL), KVS_OK);
  kvs_span sp[2] = {{50, 32}, {200, 20}};
  kvs_chunk cc[2];
  kvs_chunk_spans(&model, prompt, 300, sp, 2, cc);
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, prompt, 300, cc, 2, KVS_LOOKUP_EACH, st, &np), KVS_OK);
  CU_ASSERT(st[0] != 0);
  CU_ASSERT(st[1] == 0);
  /* and a later get of the passage from the prompt's tokens works */
  uint64_t nb = kvs_get_bound(&lay, 32, NULL);
  uint16_t *out = malloc(nb);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, prompt, &cc[0], &lay, out, nb, NULL), KVS_OK);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  /* another model sees nothing */
  kvs_model_id m2 = kvs_hash128_buf("another model", 13);
  CU_ASSERT_EQUAL(kvs_lookup(cl, &m2, tok, T, pc, 4, KVS_LOOKUP_EACH, st, &np), KVS_OK);
  CU_ASSERT(!st[0] && !st[1] && !st[3]);
  free(out), free(prompt), free(kv), free(tok);
}

static void test_key_ops_stats(void) {
  const uint32_t T = 16;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
  kvs_entry_info ei;
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch.key, &ei), KVS_OK);
  CU_ASSERT_EQUAL(ei.present, 0);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch, &lay, kv, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch.key, &ei), KVS_OK);
  CU_ASSERT_EQUAL(ei.present, 1);
  CU_ASSERT(ei.value_bytes >= kvs_layout_token_bytes(&lay) * T);
  CU_ASSERT_EQUAL(kvs_pin(cl, &ch.key), KVS_OK);
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch.key, &ei), KVS_OK);
  CU_ASSERT_EQUAL(ei.pinned, 1);
  CU_ASSERT_EQUAL(kvs_unpin(cl, &ch.key), KVS_OK);
  CU_ASSERT_EQUAL(kvs_ttl(cl, &ch.key, 3600), KVS_OK);
  CU_ASSERT_EQUAL(kvs_delete(cl, &ch.key), KVS_OK);
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch.key, &ei), KVS_OK);
  CU_ASSERT_EQUAL(ei.present, 0);
  CU_ASSERT_EQUAL(kvs_delete(cl, &ch.key), KVS_ENOENT);
  uint64_t v[64];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(cl, v, 64, &n), KVS_OK);
  CU_ASSERT(n > 6);
  size_t puts = n;
  for (size_t i = 0; i < n; i++)
    if (!strcmp(kvs_stat_name((uint32_t)i), "puts")) puts = i;
  CU_ASSERT_FATAL(puts < n);
  CU_ASSERT(v[puts] >= 1);
  CU_ASSERT_STRING_NOT_EQUAL(kvs_stat_name(0), "?");
  kvs_tier_stat ts[8]; /* the tier rows of the same answer: ram, then the server's list */
  size_t nt = 0;
  CU_ASSERT_EQUAL(kvs_stats_tiers(cl, ts, 8, &nt), KVS_OK);
  CU_ASSERT_FATAL(nt >= 2);
  CU_ASSERT_STRING_EQUAL(ts[0].name, "ram");
  CU_ASSERT_STRING_EQUAL(ts[1].name, "disk");
  CU_ASSERT(ts[1].present && ts[1].capacity > 0 && ts[1].tier == 1);
  CU_ASSERT_EQUAL(kvs_stats_tiers(cl, ts, 1, &nt), KVS_OK); /* cap honoured */
  CU_ASSERT_EQUAL(nt, 1);
  free(kv), free(tok);
}

static void test_tenants(void) {
  const uint32_t T = 24;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch, &lay, kv, NULL), KVS_OK);
  kvs_client *other = connect_as("other-tenant");
  CU_ASSERT_PTR_NOT_NULL_FATAL(other);
  uint8_t st = 9;
  CU_ASSERT_EQUAL(kvs_lookup(other, &model, tok, T, &ch, 1, KVS_LOOKUP_EACH, &st, NULL), KVS_OK);
  CU_ASSERT_EQUAL(st, 0);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  void *out = malloc(nb);
  CU_ASSERT_EQUAL(kvs_get(other, &model, tok, &ch, &lay, out, nb, NULL), KVS_ENOENT);
  kvs_client_free(other);
  free(out), free(kv), free(tok);
}

static void test_async_batch(void) {
  enum { N = 6 };
  const uint32_t T = 64;
  int32_t *tok = make_tokens(T * N);
  kvs_chunk ch[N];
  size_t n;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_prefix(&model, tok, T * N, T, 0, ch, N, &n), KVS_OK);
  uint16_t *kv[N];
  const void *kvp[N];
  for (int i = 0; i < N; i++)
    kvp[i] = kv[i] = make_kv(T);
  kvs_err rvs[N];
  CU_ASSERT_EQUAL(kvs_put_batch(cl, &model, tok, ch, N, &lay, kvp, NULL, rvs), KVS_OK);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  void *outs[N];
  uint64_t caps[N];
  for (int i = 0; i < N; i++)
    outs[i] = malloc(nb), caps[i] = nb;
  CU_ASSERT_EQUAL(kvs_get_batch(cl, &model, tok, ch, N, &lay, outs, caps, NULL, rvs), KVS_OK);
  for (int i = 0; i < N; i++) {
    CU_ASSERT_EQUAL(rvs[i], KVS_OK);
    CU_ASSERT(memcmp(outs[i], kv[i], nb) == 0);
    memset(outs[i], 0, nb);
  }
  /* async with a layer wait: the first layers are usable before the op ends */
  kvs_op *op;
  kvs_get_opts go = {.window = 1};
  CU_ASSERT_EQUAL_FATAL(kvs_get_start(cl, &model, tok, &ch[2], &lay, outs[0], nb, &go, &op),
                        KVS_OK);
  CU_ASSERT_EQUAL(kvs_op_wait_layers(op, 1), KVS_OK);
  size_t l0 = nb / lay.n_layers; /* layer 0: K and V */
  CU_ASSERT(memcmp(outs[0], kv[2], l0) == 0);
  CU_ASSERT_EQUAL(kvs_op_wait(op), KVS_OK);
  CU_ASSERT(kvs_op_done(op));
  kvs_op_free(op);
  CU_ASSERT(memcmp(outs[0], kv[2], nb) == 0);
  /* a batch with one miss reports it per chunk */
  kvs_chunk miss[2] = {ch[0], ch[1]};
  miss[1].key.b[0] ^= 1;
  CU_ASSERT_EQUAL(kvs_get_batch(cl, &model, tok, miss, 2, &lay, outs, caps, NULL, rvs), KVS_ENOENT);
  CU_ASSERT_EQUAL(rvs[0], KVS_OK);
  CU_ASSERT_EQUAL(rvs[1], KVS_ENOENT);
  for (int i = 0; i < N; i++)
    free(outs[i]), free(kv[i]);
  free(tok);
}

static void test_codec(void) {
  if (!kvs_client_has_codec()) {
    fprintf(stderr, "(codec not built in: profile test not run)\n");
    CU_ASSERT_EQUAL(kvs_profile_from_name("lossless"), -1);
    return;
  }
  CU_ASSERT_EQUAL(kvs_profile_from_name("raw"), 0);
  int lossless = kvs_profile_from_name("lossless"), int8 = kvs_profile_from_name("int8");
  CU_ASSERT(lossless > 0 && int8 > 0);
  const uint32_t T = 96;
  int32_t *tok = make_tokens(2 * T);
  uint16_t *kv = make_kv(T);
  kvs_span sp[2] = {{0, T}, {T, T}};
  kvs_chunk ch[2];
  kvs_chunk_spans(&model, tok, 2 * T, sp, 2, ch);
  kvs_put_opts po = {.profile = (uint32_t)lossless, .layers_per_group = 2};
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[0], &lay, kv, &po), KVS_OK);
  po.profile = (uint32_t)int8;
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[1], &lay, kv, &po), KVS_OK);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  groups g = {0, 0, 1};
  kvs_get_opts go = {.on_group = on_group, .user = &g};
  int rv = kvs_get(cl, &model, tok, &ch[0], &lay, out, nb, &go);
  CU_ASSERT_EQUAL(rv, KVS_OK);
  if (rv) fprintf(stderr, "codec get: %s\n", kvs_client_errmsg(cl));
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  CU_ASSERT(g.in_order && g.next == lay.n_layers);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch[1], &lay, out, nb, NULL), KVS_OK);
  double err = 0, ref = 0;
  for (size_t i = 0; i < nb / 2; i++) {
    double a = kvs_f16_to_f32(out[i]), b = kvs_f16_to_f32(kv[i]);
    err += (a - b) * (a - b), ref += b * b;
  }
  CU_ASSERT(err / ref < 1e-3); /* int8: small but nonzero error */
  CU_ASSERT(err > 0);
  /* head range through the codec */
  kvs_get_opts ho = {.head_begin = 2, .head_end = 4};
  uint64_t hb = kvs_get_bound(&lay, T, &ho);
  uint16_t *hout = malloc(hb);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch[0], &lay, hout, hb, &ho), KVS_OK);
  CU_ASSERT(memcmp(hout, kv + 2 * lay.head_dim, lay.head_dim * 2 * 2) == 0);
  free(hout), free(out), free(kv), free(tok);
}

/* Codec parameters chosen by the caller: dense at parity steps (0.1) is
 * larger and closer than the defaults; parameters of another profile are
 * refused before anything is stored. */
static void test_codec_params(void) {
#ifdef KVS_TEST_CODEC_H
  int dense = kvs_profile_from_name("dense");
  if (!kvs_client_has_codec() || dense < 0) return;
  const uint32_t T = 128;
  int32_t *tok = make_tokens(3 * T);
  uint16_t *kv = make_kv(T);
  kvs_span sp[3] = {{0, T}, {T, T}, {2 * T, T}};
  kvs_chunk ch[3];
  kvs_chunk_spans(&model, tok, 3 * T, sp, 3, ch);
  kvs_codec_params fine;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_params_default(dense, lay.n_layers, &fine), KVS_OK);
  fine.k_step = fine.v_step = 0.1f;
  kvs_put_opts po = {.profile = (uint32_t)dense};
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[0], &lay, kv, &po), KVS_OK);
  po.codec = &fine;
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[1], &lay, kv, &po), KVS_OK);
  kvs_codec_params other;
  CU_ASSERT_EQUAL_FATAL(
      kvs_codec_params_default(kvs_profile_from_name("int8"), lay.n_layers, &other), KVS_OK);
  po.codec = &other;
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[2], &lay, kv, &po), KVS_EINVAL);
  uint8_t st[3] = {9, 9, 9};
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, 3 * T, ch, 3, KVS_LOOKUP_EACH, st, NULL), KVS_OK);
  CU_ASSERT(st[0] && st[1] && st[2] == 0);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  double e[2] = {0, 0}, ref = 0;
  for (int c = 0; c < 2; c++) {
    CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch[c], &lay, out, nb, NULL), KVS_OK);
    for (size_t i = 0; i < nb / 2; i++) {
      double a = kvs_f16_to_f32(out[i]), b = kvs_f16_to_f32(kv[i]);
      e[c] += (a - b) * (a - b);
      if (c == 0) ref += b * b;
    }
  }
  CU_ASSERT(ref > 0 && e[1] > 0 && e[1] < 0.5 * e[0]);
  free(out), free(kv), free(tok);
#else
  CU_ASSERT(!kvs_client_has_codec()); /* a codec build must compile this test with it */
#endif
}

/* Many chunks in one lookup: split into protocol-sized batches. */
static void test_lookup_many(void) {
  enum { N = 5000 };
  int32_t *tok = make_tokens(N);
  kvs_chunk *ch = malloc(N * sizeof *ch);
  uint8_t *st = malloc(N);
  size_t n = 0, np = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_prefix(&model, tok, N, 1, 0, ch, N, &n), KVS_OK);
  uint16_t *kv = make_kv(1);
  for (int i = 0; i < 3; i++)
    CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[i], &lay, kv, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch[4500], &lay, kv, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, N, ch, N, KVS_LOOKUP_EACH, st, &np), KVS_OK);
  CU_ASSERT_EQUAL(np, 3);
  CU_ASSERT(st[0] && st[2] && !st[3] && st[4500] && !st[4499] && !st[4999]);
  size_t hits = 0;
  for (int i = 0; i < N; i++)
    hits += st[i] != 0;
  CU_ASSERT_EQUAL(hits, 4);
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, N, ch, N, KVS_LOOKUP_PREFIX, st, &np), KVS_OK);
  CU_ASSERT_EQUAL(np, 3);
  CU_ASSERT(!st[4500]); /* prefix mode stops at the first miss */
  free(kv), free(st), free(ch), free(tok);
}

/* The daemon goes away and comes back on the same port and data dir: calls
 * fail with KVS_ECONN (not a hang) while it is down, the same client works
 * again after, and what was stored is still there. */
static void test_restart(void) {
  const uint32_t T = 32;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
  kvs_put_opts po = {.flags = KVS_PUT_SYNC};
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok, &ch, &lay, kv, &po), KVS_OK);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = srv.url;
  o.tenant = tenant;
  o.request_timeout_ms = 300;
  kvs_client *quick = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &quick), KVS_OK);
  test_server_kill(&srv);
  CU_ASSERT_EQUAL(kvs_ping(quick), KVS_ECONN);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(quick), "no connection"));
  CU_ASSERT_EQUAL_FATAL(test_server_restart(&srv), 0);
  CU_ASSERT_EQUAL(kvs_ping(cl), KVS_OK); /* the long-deadline client redials on its own */
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, out, nb, NULL), KVS_OK);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  kvs_client_free(quick);
  free(out), free(kv), free(tok);
}

/* Auth: a second daemon with one tenant and its token. */
static void test_auth(void) {
  test_server a;
  CU_ASSERT_EQUAL_FATAL(test_server_start_flag(&a, "real", "--tenant=alice:s3cret-token"), 0);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = a.url;
  o.tenant = "alice";
  o.token = "s3cret-token";
  kvs_client *ok = NULL, *bad = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &ok), KVS_OK);
  CU_ASSERT_EQUAL(kvs_ping(ok), KVS_OK);
  o.token = "wrong";
  CU_ASSERT_EQUAL(kvs_client_create(&o, &bad), KVS_OK);
  CU_ASSERT_EQUAL(kvs_ping(bad), KVS_EAUTH);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(bad), "KVS_EAUTH"));
  uint8_t st;
  kvs_chunk ch = {.start = 0, .n_tokens = 1, .kind = KVS_CHUNK_CONTENT};
  int32_t t0 = 5;
  CU_ASSERT_EQUAL(kvs_lookup(bad, &model, &t0, 1, &ch, 1, KVS_LOOKUP_EACH, &st, NULL), KVS_EAUTH);
  kvs_client_free(ok);
  kvs_client_free(bad);
  test_server_stop(&a);
  /* a tenant name the protocol cannot carry is refused at create */
  o.tenant = "no spaces allowed";
  kvs_client *c = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_EINVAL);
  kvs_client_free(c);
}

/* ------------------------------------------------ same-host shared memory */
static void counters(kvs_client *c, kvs_client_counters *k) {
  memset(k, 0, sizeof *k);
  CU_ASSERT_EQUAL(kvs_client_get_counters(c, k), KVS_OK);
}

/* RELEASE is sent without waiting: give the answers a moment to land. */
static void wait_released(kvs_client *c, kvs_client_counters *k) {
  for (int i = 0; i < 300; i++) {
    counters(c, k);
    if (k->releases + k->release_lost >= k->leases) return;
    usleep(10000);
  }
}

/* The shared daemon runs with shm off: a loopback client tries a lease once,
 * is refused, and from then on goes straight to the socket. */
static void test_shm_off_fallback(void) {
  kvs_client *c = connect_as(tenant);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  CU_ASSERT_EQUAL(kvs_client_shm_enabled(c), 1); /* tcp://127.0.0.1, or the stand-in's ipc:// */
  const uint32_t T = 20;
  int32_t *tok = make_tokens(T);
  uint16_t *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
  CU_ASSERT_EQUAL(kvs_put(c, &model, tok, &ch, &lay, kv, NULL), KVS_OK);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  for (int i = 0; i < 2; i++) {
    memset(out, 0, nb);
    CU_ASSERT_EQUAL(kvs_get(c, &model, tok, &ch, &lay, out, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(out, kv, nb) == 0);
  }
  kvs_client_counters k;
  counters(c, &k);
  CU_ASSERT_EQUAL(k.gets, 2);
  CU_ASSERT_EQUAL(k.shm_gets, 0);
  CU_ASSERT_EQUAL(k.leases, 0);
  CU_ASSERT_EQUAL(k.shm_fallbacks, 1); /* the first get only */
  CU_ASSERT_EQUAL(kvs_client_shm_enabled(c), 0);
  kvs_client_free(c);
  /* asked not to: never tries */
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = srv.url;
  o.tenant = tenant;
  o.flags = KVS_CLIENT_NO_SHM;
  c = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &c), KVS_OK);
  CU_ASSERT_EQUAL(kvs_client_shm_enabled(c), 0);
  CU_ASSERT_EQUAL(kvs_get(c, &model, tok, &ch, &lay, out, nb, NULL), KVS_OK);
  counters(c, &k);
  CU_ASSERT_EQUAL(k.shm_fallbacks, 0);
  kvs_client_free(c);
  free(out), free(kv), free(tok);
}

/* A daemon with shm on, 4 MiB segments and 1.5 s leases. */
static test_server shm_srv;
static kvs_client *shm_cl;

static int shm_up(void) {
  if (shm_cl) return 1;
  if (test_server_start_flag(&shm_srv, "real", "--shm=on --shm_bytes=4M --lease_ms=1500")) {
    CU_FAIL("kvstashd with shm on did not start");
    return 0;
  }
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = shm_srv.url;
  o.tenant = tenant;
  o.request_timeout_ms = 20000;
  if (kvs_client_create(&o, &shm_cl)) {
    CU_FAIL("connect to the shm daemon");
    kvs_client_free(shm_cl);
    shm_cl = NULL;
    return 0;
  }
  return 1;
}

static void put_one(kvs_client *c, uint32_t T, uint32_t profile, int32_t **tok, uint16_t **kv,
                    kvs_chunk *ch) {
  *tok = make_tokens(T);
  *kv = make_kv(T);
  kvs_span sp = {0, T};
  kvs_chunk_spans(&model, *tok, T, &sp, 1, ch);
  kvs_put_opts po = {.profile = profile, .layers_per_group = 1};
  CU_ASSERT_EQUAL(kvs_put(c, &model, *tok, ch, &lay, *kv, &po), KVS_OK);
}

/* Paged destinations (kvs_get_opts.paged): the chunk decoded into an
 * engine's block table - shuffled blocks, more blocks than the chunk needs -
 * equals the contiguous get, for a raw entry (decoded to a staging buffer,
 * then copied block run by block run), a lossy and a lossless codec entry
 * (decoded into the blocks), with a head range and f32 output, over the
 * socket and (when the second daemon is up) read in place. */
static void check_paged(kvs_client *c, uint32_t profile, const char *what) {
  const uint32_t T = 100, BS = 16, NB = 12, nblk = (T + BS - 1) / BS;
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(c, T, profile, &tok, &kv, &ch);
  const kvs_get_opts variants[2] = {{0}, {.head_begin = 1, .head_end = 3, .dtype = KVS_DTYPE_F32}};
  for (int v = 0; v < 2; v++) {
    kvs_get_opts go = variants[v];
    uint64_t nb = kvs_get_bound(&lay, T, &go);
    uint8_t *ref = malloc(nb), *back = malloc(nb);
    CU_ASSERT_EQUAL_FATAL(kvs_get(c, &model, tok, &ch, &lay, ref, nb, &go), KVS_OK);
    uint32_t hs = (go.head_end ? go.head_end : lay.n_kv_heads) - go.head_begin;
    size_t row = (size_t)hs * lay.head_dim * (go.dtype == KVS_DTYPE_F32 ? 4 : 2);
    size_t cache = (size_t)NB * BS * row;
    void *kc[6], *vc[6];
    for (uint32_t l = 0; l < lay.n_layers; l++) {
      kc[l] = malloc(cache), vc[l] = malloc(cache);
      memset(kc[l], 0xEE, cache), memset(vc[l], 0xEE, cache);
    }
    int32_t perm[12], bt[12];
    for (uint32_t i = 0; i < NB; i++)
      perm[i] = (int32_t)i;
    for (uint32_t i = NB - 1; i > 0; i--) { /* Fisher-Yates, the test's seed */
      uint32_t j = (uint32_t)(kvs_test_rand(&seed) % (i + 1));
      int32_t x = perm[i];
      perm[i] = perm[j], perm[j] = x;
    }
    memcpy(bt, perm, sizeof bt);
    kvs_paged_kv pg = {kc, vc, bt, BS, NB, lay.n_layers};
    go.paged = &pg;
    int rv = kvs_get(c, &model, tok, &ch, &lay, NULL, 0, &go);
    CU_ASSERT_EQUAL(rv, KVS_OK);
    if (rv) fprintf(stderr, "paged get (%s): %s\n", what, kvs_client_errmsg(c));
    /* the blocks read back into the canonical layout */
    size_t plane = (size_t)T * row;
    for (uint32_t l = 0; l < lay.n_layers; l++)
      for (uint32_t k = 0; k < 2; k++)
        for (uint32_t t = 0; t < T; t++)
          memcpy(back + (2 * (size_t)l + k) * plane + (size_t)t * row,
                 (uint8_t *)(k ? vc[l] : kc[l]) + ((size_t)bt[t / BS] * BS + t % BS) * row, row);
    CU_ASSERT(memcmp(back, ref, nb) == 0);
    if (memcmp(back, ref, nb)) fprintf(stderr, "paged get (%s, variant %d) differs\n", what, v);
    /* a block the chunk does not use stays untouched */
    int untouched = 1;
    for (uint32_t i = nblk; i < NB; i++)
      for (size_t b = 0; b < (size_t)BS * row; b++)
        if (((uint8_t *)kc[0])[(size_t)bt[i] * BS * row + b] != 0xEE) untouched = 0;
    CU_ASSERT(untouched);
    for (uint32_t l = 0; l < lay.n_layers; l++)
      free(kc[l]), free(vc[l]);
    free(ref), free(back);
  }
  free(tok), free(kv);
}

static void test_paged(void) {
  check_paged(cl, KVS_PROFILE_RAW, "raw");
  check_paged(cl, (uint32_t)kvs_profile_from_name("int8"), "int8");
  check_paged(cl, (uint32_t)kvs_profile_from_name("lossless"), "lossless");
  if (shm_up()) { /* read in place under a lease */
    kvs_client_counters k0, k;
    counters(shm_cl, &k0);
    check_paged(shm_cl, KVS_PROFILE_RAW, "raw, shm");
    check_paged(shm_cl, (uint32_t)kvs_profile_from_name("int8"), "int8, shm");
    counters(shm_cl, &k);
    CU_ASSERT(k.shm_gets > k0.shm_gets);
  }
  /* refused before anything moves */
  const uint32_t T = 20;
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(cl, T, KVS_PROFILE_RAW, &tok, &kv, &ch);
  size_t cache = (size_t)4 * 16 * lay.n_kv_heads * lay.head_dim * 2;
  void *kc[6], *vc[6];
  for (uint32_t l = 0; l < 6; l++)
    kc[l] = calloc(1, cache), vc[l] = calloc(1, cache);
  int32_t bt[2] = {3, 4}; /* 4 is outside num_blocks */
  kvs_paged_kv pg = {kc, vc, bt, 16, 4, lay.n_layers};
  kvs_get_opts go = {.paged = &pg};
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, NULL, 0, &go), KVS_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(cl), "block table entry 1"));
  bt[1] = 0;
  uint16_t one[4];
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, one, sizeof one, &go), KVS_EINVAL);
  pg.n_layers = 5;
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, NULL, 0, &go), KVS_ELAYOUT);
  pg.n_layers = lay.n_layers;
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok, &ch, &lay, NULL, 0, &go), KVS_OK);
  CU_ASSERT(memcmp((uint8_t *)kc[0] + (size_t)3 * 16 * lay.n_kv_heads * lay.head_dim * 2, kv,
                   (size_t)lay.n_kv_heads * lay.head_dim * 2) == 0); /* token 0, layer 0 K */
  for (uint32_t l = 0; l < 6; l++)
    free(kc[l]), free(vc[l]);
  free(tok), free(kv);
}

static void test_shm_get(void) {
  if (!shm_up()) return;
  kvs_client_counters k0, k;
  counters(shm_cl, &k0);
  CU_ASSERT_EQUAL(kvs_client_shm_enabled(shm_cl), 1);
  const uint32_t T = 100;
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(shm_cl, T, KVS_PROFILE_RAW, &tok, &kv, &ch);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  memset(out, 0, nb);
  groups g = {0, 0, 1};
  kvs_get_opts go = {.on_group = on_group, .user = &g, .window = 2};
  CU_ASSERT_EQUAL(kvs_get(shm_cl, &model, tok, &ch, &lay, out, nb, &go), KVS_OK);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  CU_ASSERT_EQUAL(g.calls, lay.n_layers);
  CU_ASSERT(g.in_order);
  /* a head range and f32, in place too */
  kvs_get_opts ho = {.head_begin = 1, .head_end = 3, .dtype = KVS_DTYPE_F32};
  uint64_t hb = kvs_get_bound(&lay, T, &ho);
  float *hout = malloc(hb);
  CU_ASSERT_EQUAL(kvs_get(shm_cl, &model, tok, &ch, &lay, hout, hb, &ho), KVS_OK);
  int same = 1;
  for (uint32_t p = 0; p < 2 * lay.n_layers; p++)
    for (uint32_t t = 0; t < T; t++)
      for (uint32_t h = 1; h < 3; h++)
        for (uint32_t d = 0; d < lay.head_dim; d++)
          if (hout[(((size_t)p * T + t) * 2 + (h - 1)) * lay.head_dim + d] !=
              kvs_f16_to_f32(kv[(((size_t)p * T + t) * lay.n_kv_heads + h) * lay.head_dim + d]))
            same = 0;
  CU_ASSERT(same);
  /* a codec profile: checked segment by segment, decoded in place */
  int int8 = kvs_profile_from_name("int8");
  if (int8 > 0) {
    int32_t *tok2;
    uint16_t *kv2;
    kvs_chunk ch2;
    put_one(shm_cl, T, (uint32_t)int8, &tok2, &kv2, &ch2);
    kvs_client_opts o;
    kvs_client_opts_init(&o);
    o.url = shm_srv.url;
    o.tenant = tenant;
    o.flags = KVS_CLIENT_NO_SHM;
    kvs_client *sock = NULL;
    CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &sock), KVS_OK);
    uint16_t *viasock = malloc(nb);
    memset(out, 0, nb);
    CU_ASSERT_EQUAL(kvs_get(shm_cl, &model, tok2, &ch2, &lay, out, nb, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_get(sock, &model, tok2, &ch2, &lay, viasock, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(out, viasock, nb) == 0); /* the same decode, whichever path */
    kvs_client_free(sock);
    free(viasock), free(kv2), free(tok2);
  }
  wait_released(shm_cl, &k);
  uint64_t n = int8 > 0 ? 3 : 2;
  CU_ASSERT_EQUAL(k.gets - k0.gets, n);
  CU_ASSERT_EQUAL(k.shm_gets - k0.shm_gets, n);
  CU_ASSERT_EQUAL(k.leases - k0.leases, n);
  CU_ASSERT_EQUAL(k.releases - k0.releases, n); /* every lease given back, the server agreed */
  CU_ASSERT_EQUAL(k.shm_fallbacks - k0.shm_fallbacks, 0);
  CU_ASSERT(k.shm_bytes > k0.shm_bytes);
  CU_ASSERT_EQUAL(k.shm_maps, 1); /* one segment per tenant, mapped once */
  /* a miss is a miss, not a fallback */
  tok[3]++;
  CU_ASSERT_EQUAL(kvs_get(shm_cl, &model, tok, &ch, &lay, out, nb, NULL), KVS_ETOKENS);
  free(hout), free(out), free(kv), free(tok);
}

/* A value too large for the 4 MiB segment stays in ordinary RAM: the lease
 * is refused and the get goes through the socket. */
static void test_shm_not_in_segment(void) {
  if (!shm_up()) return;
  kvs_client_counters k0, k;
  counters(shm_cl, &k0);
  const uint32_t T = 2000; /* 6 MB raw */
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(shm_cl, T, KVS_PROFILE_RAW, &tok, &kv, &ch);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  CU_ASSERT_EQUAL(kvs_get(shm_cl, &model, tok, &ch, &lay, out, nb, NULL), KVS_OK);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  counters(shm_cl, &k);
  CU_ASSERT_EQUAL(k.shm_fallbacks - k0.shm_fallbacks, 1);
  CU_ASSERT_EQUAL(k.leases - k0.leases, 0);
  CU_ASSERT_EQUAL(kvs_client_shm_enabled(shm_cl), 1); /* still on for the next get */
  kvs_delete(shm_cl, &ch.key);
  free(out), free(kv), free(tok);
}

typedef struct reader {
  const int32_t *tok;
  const kvs_chunk *ch;
  const uint16_t *kv;
  int bad;
} reader;

static void *reader_main(void *arg) {
  reader *r = arg;
  uint64_t nb = kvs_get_bound(&lay, r->ch->n_tokens, NULL);
  uint16_t *out = malloc(nb);
  for (int i = 0; i < 10; i++) {
    memset(out, 0, nb);
    if (kvs_get(shm_cl, &model, r->tok, r->ch, &lay, out, nb, NULL) || memcmp(out, r->kv, nb))
      r->bad++;
  }
  free(out);
  return NULL;
}

static void test_shm_concurrent(void) {
  if (!shm_up()) return;
  kvs_client_counters k0, k;
  counters(shm_cl, &k0);
  int32_t *tok[2];
  uint16_t *kv[2];
  kvs_chunk ch[2];
  for (int i = 0; i < 2; i++)
    put_one(shm_cl, 64, KVS_PROFILE_RAW, &tok[i], &kv[i], &ch[i]);
  pthread_t th[6];
  reader r[6];
  for (int i = 0; i < 6; i++) {
    r[i] = (reader){tok[i % 2], &ch[i % 2], kv[i % 2], 0};
    pthread_create(&th[i], NULL, reader_main, &r[i]);
  }
  for (int i = 0; i < 6; i++) {
    pthread_join(th[i], NULL);
    CU_ASSERT_EQUAL(r[i].bad, 0);
  }
  wait_released(shm_cl, &k);
  CU_ASSERT_EQUAL(k.shm_gets - k0.shm_gets, 60);
  CU_ASSERT_EQUAL(k.releases - k0.releases, 60);
  CU_ASSERT_EQUAL(k.release_lost - k0.release_lost, 0);
  for (int i = 0; i < 2; i++)
    free(tok[i]), free(kv[i]);
}

/* An async get held after its first group (window 1, one layer per group):
 * meanwhile the test deletes or churns. */
typedef struct hold {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int at_first, go;
} hold;

static void hold_group(void *user, uint32_t lb, uint32_t le) {
  hold *h = user;
  (void)le;
  if (lb != 0) return;
  pthread_mutex_lock(&h->mu);
  h->at_first = 1;
  pthread_cond_broadcast(&h->cv);
  while (!h->go)
    pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
}

static kvs_op *start_held(hold *h, const int32_t *tok, const kvs_chunk *ch, void *out,
                          uint64_t nb) {
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  h->at_first = h->go = 0;
  kvs_get_opts go = {.window = 1, .on_group = hold_group, .user = h};
  kvs_op *op = NULL;
  CU_ASSERT_EQUAL(kvs_get_start(shm_cl, &model, tok, ch, &lay, out, nb, &go, &op), KVS_OK);
  pthread_mutex_lock(&h->mu);
  while (op && !h->at_first && !kvs_op_done(op)) {
    pthread_mutex_unlock(&h->mu);
    usleep(1000);
    pthread_mutex_lock(&h->mu);
  }
  pthread_mutex_unlock(&h->mu);
  return op;
}

static void release_held(hold *h) {
  pthread_mutex_lock(&h->mu);
  h->go = 1;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

/* The segment's other values churn through the space. */
static void churn(int n) {
  for (int i = 0; i < n; i++) {
    int32_t *t;
    uint16_t *v;
    kvs_chunk c;
    put_one(shm_cl, 100, KVS_PROFILE_RAW, &t, &v, &c);
    kvs_delete(shm_cl, &c.key);
    free(t), free(v);
  }
}

/* Deleted and its space churned while a reader holds the lease: the reader
 * still gets exactly what was stored. */
static void test_shm_evicted_while_leased(void) {
  if (!shm_up()) return;
  const uint32_t T = 100;
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(shm_cl, T, KVS_PROFILE_RAW, &tok, &kv, &ch);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  kvs_client_counters k0, k;
  counters(shm_cl, &k0);
  hold h;
  kvs_op *op = start_held(&h, tok, &ch, out, nb);
  CU_ASSERT_EQUAL(kvs_delete(shm_cl, &ch.key), KVS_OK);
  churn(6);
  release_held(&h);
  CU_ASSERT_EQUAL(kvs_op_wait(op), KVS_OK);
  kvs_op_free(op);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  wait_released(shm_cl, &k);
  CU_ASSERT_EQUAL(k.shm_gets - k0.shm_gets, 1);
  CU_ASSERT_EQUAL(k.shm_regroups - k0.shm_regroups, 0);
  CU_ASSERT_EQUAL(k.releases - k0.releases, 1);
  pthread_mutex_destroy(&h.mu);
  pthread_cond_destroy(&h.cv);
  free(out), free(kv), free(tok);
}

/* A reader that outlives its lease: the groups left are fetched through the
 * socket (the stored value), or - once the entry is gone - the get fails.
 * Never KV read from a range that may have been reused. */
static void test_shm_lease_expiry(void) {
  if (!shm_up()) return;
  const uint32_t T = 100;
  int32_t *tok;
  uint16_t *kv;
  kvs_chunk ch;
  put_one(shm_cl, T, KVS_PROFILE_RAW, &tok, &kv, &ch);
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  kvs_client_counters k0, k;
  counters(shm_cl, &k0);
  hold h;
  kvs_op *op = start_held(&h, tok, &ch, out, nb);
  usleep(1700 * 1000); /* lease_ms = 1500 */
  release_held(&h);
  CU_ASSERT_EQUAL(kvs_op_wait(op), KVS_OK);
  kvs_op_free(op);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  counters(shm_cl, &k);
  CU_ASSERT_EQUAL(k.shm_regroups - k0.shm_regroups,
                  1); /* the first to notice; the rest go by socket */
  pthread_mutex_destroy(&h.mu);
  pthread_cond_destroy(&h.cv);
  /* again, and this time the entry is deleted and its space reused after expiry */
  op = start_held(&h, tok, &ch, out, nb);
  usleep(1700 * 1000);
  CU_ASSERT_EQUAL(kvs_delete(shm_cl, &ch.key), KVS_OK);
  churn(6);
  release_held(&h);
  CU_ASSERT_EQUAL(kvs_op_wait(op), KVS_ENOENT);
  kvs_op_free(op);
  pthread_mutex_destroy(&h.mu);
  pthread_cond_destroy(&h.cv);
  free(out), free(kv), free(tok);
}

/* tls+tcp://: the server is always verified, so a CA file is required. */
static void test_tls_url(void) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = "tls+tcp://127.0.0.1:1";
  kvs_client *c = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(c), "tls_ca_file"));
  kvs_client_free(c);
  o.tls_ca_file = "/nonexistent/ca.pem";
  c = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(c), "CA file"));
  kvs_client_free(c);
  o.url = "udp://127.0.0.1:1";
  c = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_EINVAL);
  kvs_client_free(c);
}

/* A real TLS round trip: kvstashd with a self-signed certificate (openssl)
 * on a tls+tcp:// listener beside its tcp:// one. */
static void test_tls_roundtrip(void) {
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    fprintf(stderr, "(no openssl: TLS round trip not run)\n");
    return;
  }
  char dir[] = "/tmp/kvs-client-tls.XXXXXX", cmd[600];
  CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
  snprintf(
      cmd, sizeof cmd,
      "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
      "-keyout key.pem -out cert.pem -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost >/dev/null 2>&1 && cat cert.pem key.pem > both.pem",
      dir);
  CU_ASSERT_FATAL(system(cmd) == 0);
  int port = 20000 + (int)(getpid() % 20000);
  char url[80], flags[256], ca[128];
  snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", port);
  snprintf(flags, sizeof flags, "--listen=%s --tls_cert_key_file=%s/both.pem", url, dir);
  snprintf(ca, sizeof ca, "%s/cert.pem", dir);
  test_server t;
  if (test_server_start_flag(&t, "real", flags) == 0) {
    kvs_client_opts o;
    kvs_client_opts_init(&o);
    o.url = url;
    o.tenant = tenant;
    o.tls_ca_file = ca;
    o.tls_server_name = "localhost";
    o.connect_timeout_ms = 30000; /* a TLS handshake on a loaded 2-core box can take seconds */
    kvs_client *c = NULL;
    int rv = kvs_client_create(&o, &c);
    CU_ASSERT_EQUAL(rv, KVS_OK);
    if (rv) fprintf(stderr, "tls: %s\n", kvs_client_errmsg(c));
    CU_ASSERT_EQUAL(kvs_client_shm_enabled(c), 0); /* never over TLS */
    CU_ASSERT_EQUAL(kvs_ping(c), KVS_OK);
    const uint32_t T = 16;
    int32_t *tok = make_tokens(T);
    uint16_t *kv = make_kv(T);
    kvs_span sp = {0, T};
    kvs_chunk ch;
    kvs_chunk_spans(&model, tok, T, &sp, 1, &ch);
    CU_ASSERT_EQUAL(kvs_put(c, &model, tok, &ch, &lay, kv, NULL), KVS_OK);
    uint64_t nb = kvs_get_bound(&lay, T, NULL);
    uint16_t *out = malloc(nb);
    CU_ASSERT_EQUAL(kvs_get(c, &model, tok, &ch, &lay, out, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(out, kv, nb) == 0);
    kvs_client_free(c);
    /* a name the certificate does not carry: no connection */
    o.tls_server_name = "not-the-server";
    o.connect_timeout_ms = 500;
    c = NULL;
    CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_ECONN);
    kvs_client_free(c);
    free(out), free(kv), free(tok);
    test_server_stop(&t);
  } else {
    CU_FAIL("kvstashd with a TLS listener did not start");
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static int init(void) {
  model = kvs_hash128_buf("client-ops-test", 15);
  snprintf(tenant, sizeof tenant, "t-%d", (int)getpid());
  cl = connect_as(tenant);
  return cl ? 0 : 1;
}

static int clean(void) {
  kvs_client_free(shm_cl);
  if (shm_srv.pid > 0) test_server_stop(&shm_srv);
  kvs_client_free(cl);
  return 0;
}

static const kvs_test_case cases[] = {{"ping", test_ping},
                                      {"put_get_raw", test_put_get_raw},
                                      {"get_errors", test_get_errors},
                                      {"lookup", test_lookup},
                                      {"key_ops_stats", test_key_ops_stats},
                                      {"tenants", test_tenants},
                                      {"async_batch", test_async_batch},
                                      {"codec", test_codec},
                                      {"codec_params", test_codec_params},
                                      {"paged", test_paged},
                                      {"auth", test_auth},
                                      {"lookup_many", test_lookup_many},
                                      {"shm_off_fallback", test_shm_off_fallback},
                                      {"shm_get", test_shm_get},
                                      {"shm_not_in_segment", test_shm_not_in_segment},
                                      {"shm_concurrent", test_shm_concurrent},
                                      {"shm_evicted_while_leased", test_shm_evicted_while_leased},
                                      {"shm_lease_expiry", test_shm_lease_expiry},
                                      {"tls_url", test_tls_url},
                                      {"tls_roundtrip", test_tls_roundtrip},
                                      {"restart", test_restart},
                                      {NULL, NULL}};

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "real";
  int rv = test_server_start(&srv, mode);
  if (rv) return rv;
  char suite[64];
  snprintf(suite, sizeof suite, "client_ops_%s", mode);
  rv = kvs_test_run_fixture(suite, cases, init, clean);
  test_server_stop(&srv);
  kvs_client_lib_fini();
  return rv;
}
