/* The client's calls end to end: put, layer-streamed get (sync, async,
 * batch, head range, f32), lookup, exists/pin/ttl/delete, stats, tenants and
 * errors. `test_client_ops real` runs them against the kvstashd binary
 * (skipped when it is not built); `test_client_ops fake` against the in-test
 * stand-in (fake_kvstashd.c). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_test.h"
#include "kvstash.h"
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

static kvs_client *connect_as(const char *t) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = srv.url;
  o.tenant = t;
  o.request_timeout_ms = 20000;
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c)) {
    fprintf(stderr, "connect: %s\n", kvs_client_errmsg(c));
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

/* (L, 2, T, H, D) f16 */
static uint16_t *make_kv(uint32_t T) {
  size_t n = kvs_layout_token_bytes(&lay) * T / 2;
  uint16_t *kv = malloc(n * 2);
  for (size_t i = 0; i < n; i++)
    kv[i] = kvs_f32_to_f16(kvs_test_randf(&seed) * 4.0f);
  return kv;
}

static int32_t *make_tokens(size_t n) {
  int32_t *t = malloc(n * sizeof *t);
  for (size_t i = 0; i < n; i++)
    t[i] = (int32_t)(kvs_test_rand(&seed) % 49152);
  return t;
}

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
  CU_ASSERT(v[6] >= 1); /* puts */
  CU_ASSERT_STRING_NOT_EQUAL(kvs_stat_name(0), "?");
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
  if (!srv.real) {
    fprintf(stderr, "(stand-in cannot restart: test not run)\n");
    return;
  }
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
  if (!srv.real) {
    fprintf(stderr, "(stand-in has no auth: test not run)\n");
    return;
  }
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

static int init(void) {
  model = kvs_hash128_buf("client-ops-test", 15);
  snprintf(tenant, sizeof tenant, "t-%d", (int)getpid());
  cl = connect_as(tenant);
  return cl ? 0 : 1;
}

static int clean(void) {
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
                                      {"auth", test_auth},
                                      {"lookup_many", test_lookup_many},
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
