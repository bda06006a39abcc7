/* A cluster on a real etcd and three real kvstashd nodes, all on loopback
 * (docs/cluster.md): registration and the view, put/get through the
 * etcd:// URL with R = 2, kill -9 of a node during reads (0 wrong bytes,
 * every get served), the node's return and a rebalance, a graceful leave,
 * an etcd restart (reads never stop, nodes register again), a drain.
 * Skipped (77) only when no etcd binary is installed. Every wait is bounded. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster_int.h"
#include "etcd_helper.h"
#include "kvs_test.h"
#include "kvstash.h"
#include "kvstash_cluster.h"
#include "svc_helper.h"

#define NN   3
#define NKEY 48
#define T    64

static th_etcd etcd;
static th_daemon nd[NN + 1];
static char curl_[256];
static kvs_client *cl;
static kvs_model_id model;
static const kvs_layout lay = {.n_layers = 4,
                               .n_kv_heads = 2,
                               .head_dim = 32,
                               .dtype = KVS_DTYPE_F16,
                               .rope_type = KVS_ROPE_NORM,
                               .rope_dims = 32,
                               .rope_theta = 10000.0f,
                               .rope_freq_scale = 1.0f};
static int32_t tok[NKEY][T];
static uint16_t *kv[NKEY];
static kvs_chunk ch[NKEY];
static size_t kv_bytes;

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int start_node(int i) {
  char a_cl[300], a_id[64];
  snprintf(a_cl, sizeof a_cl, "--cluster=etcd://127.0.0.1:%d/tc", etcd.port);
  snprintf(a_id, sizeof a_id, "--cluster_node_id=n%d", i);
  const char *extra[] = {a_cl, a_id, "--cluster_lease_ttl_s=2", "--durability=async", NULL};
  return th_daemon_start(&nd[i], extra);
}

/* Nodes in the client's view (ids as a bitmask of n0..n3, draining ignored). */
static int view_mask(int *count) {
  kvs_cluster_node nodes[8];
  size_t n = 0;
  int mask = 0;
  if (kvs_cluster_nodes(cl, nodes, 8, &n) != KVS_OK) return -1;
  for (size_t i = 0; i < n && i < 8; i++)
    if (nodes[i].id[0] == 'n') mask |= 1 << atoi(nodes[i].id + 1);
  if (count) *count = (int)n;
  return mask;
}

/* Waits (at most ms) until the view is exactly `mask`. */
static int wait_view(int mask, int ms) {
  for (int t = 0; t < ms; t += 50) {
    if (view_mask(NULL) == mask) return 1;
    sleep_ms(50);
  }
  fprintf(stderr, "view is 0x%x, wanted 0x%x\n", view_mask(NULL), mask);
  return 0;
}

static int init(void) {
  if (!th_etcd_binary()) return 0; /* main skips */
  if (th_etcd_start(&etcd)) return 1;
  for (int i = 0; i < NN; i++)
    if (start_node(i)) return 1;
  snprintf(curl_, sizeof curl_, "etcd://127.0.0.1:%d/tc", etcd.port);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = curl_;
  o.tenant = "t1";
  o.request_timeout_ms = 5000;
  if (kvs_client_create(&o, &cl) != KVS_OK) {
    fprintf(stderr, "cluster client: %s\n", kvs_client_errmsg(cl));
    return 1;
  }
  unsigned long long seed = 7;
  model = kvs_hash128_buf("cluster-test-model", 18);
  kv_bytes = kvs_layout_token_bytes(&lay) * T;
  for (int k = 0; k < NKEY; k++) {
    for (int j = 0; j < T; j++)
      tok[k][j] = (int32_t)(kvs_test_rand(&seed) % 32000);
    kvs_span sp = {0, T};
    if (kvs_chunk_spans(&model, tok[k], T, &sp, 1, &ch[k])) return 1;
    kv[k] = malloc(kv_bytes);
    for (size_t j = 0; j < kv_bytes / 2; j++)
      kv[k][j] = kvs_f32_to_f16(kvs_test_randf(&seed));
  }
  return 0;
}

static int clean(void) {
  kvs_client_free(cl);
  for (int i = 0; i <= NN; i++) {
    th_daemon_stop(&nd[i]);
    th_daemon_cleanup(&nd[i]);
  }
  th_etcd_cleanup(&etcd);
  for (int k = 0; k < NKEY; k++)
    free(kv[k]);
  kvs_client_lib_fini();
  return 0;
}

static void test_view(void) {
  CU_ASSERT_TRUE(wait_view(0x7, 10000));
  kvs_cluster_node nodes[8];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_cluster_nodes(cl, nodes, 8, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, 3);
  for (size_t i = 0; i < n && i < 8; i++) {
    CU_ASSERT_STRING_EQUAL(nodes[i].data, nd[i].url); /* sorted by id: n0, n1, n2 */
    CU_ASSERT_EQUAL(nodes[i].replicas, 2);
    CU_ASSERT_FALSE(nodes[i].draining);
  }
  CU_ASSERT_EQUAL(kvs_cluster_replicas(cl), 2);
  CU_ASSERT_EQUAL(kvs_ping(cl), KVS_OK);
}

/* Every key back, bytes compared; returns wrong byte count (+1 per failed get). */
static size_t get_all(int *failed) {
  uint16_t *out = malloc(kv_bytes);
  size_t wrong = 0;
  *failed = 0;
  for (int k = 0; k < NKEY; k++) {
    memset(out, 0xEE, kv_bytes);
    int rv = kvs_get(cl, &model, tok[k], &ch[k], &lay, out, kv_bytes, NULL);
    if (rv != KVS_OK) {
      fprintf(stderr, "get %d: %s (%s)\n", k, kvs_errname(rv), kvs_client_errmsg(cl));
      (*failed)++;
      continue;
    }
    const uint8_t *a = (const uint8_t *)out, *b = (const uint8_t *)kv[k];
    for (size_t j = 0; j < kv_bytes; j++)
      wrong += a[j] != b[j];
  }
  free(out);
  return wrong;
}

/* Holders of every key from the cluster lookup: each key on exactly its R
 * owners (as HRW computes them from the view). */
static int placement_ok(void) {
  kvs_cluster_where w[NKEY * 2];
  int32_t all[NKEY * T];
  kvs_chunk c2[NKEY];
  for (int k = 0; k < NKEY; k++) {
    memcpy(all + k * T, tok[k], sizeof tok[k]);
    c2[k] = ch[k];
    c2[k].start = (uint32_t)(k * T);
  }
  if (kvs_cluster_lookup(cl, &model, all, NKEY * T, c2, NKEY, w) != KVS_OK) {
    fprintf(stderr, "cluster lookup: %s\n", kvs_client_errmsg(cl));
    return 0;
  }
  int ok = 1;
  for (int k = 0; k < NKEY; k++)
    if (!w[k * 2].node[0] || !w[k * 2 + 1].node[0] || !strcmp(w[k * 2].node, w[k * 2 + 1].node)) {
      fprintf(stderr, "key %d held by [%s] [%s]\n", k, w[k * 2].node, w[k * 2 + 1].node);
      ok = 0;
    }
  return ok;
}

static void test_put_get(void) {
  for (int k = 0; k < NKEY; k++) {
    int rv = kvs_put(cl, &model, tok[k], &ch[k], &lay, kv[k], NULL);
    CU_ASSERT_EQUAL(rv, KVS_OK);
    if (rv) fprintf(stderr, "put %d: %s\n", k, kvs_client_errmsg(cl));
  }
  int failed;
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
  CU_ASSERT_TRUE(placement_ok());
  /* lookup through the cluster: all cached; a foreign chunk is not */
  uint8_t st[2];
  kvs_chunk two[2] = {ch[0], ch[1]};
  size_t np = 0;
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok[0], T, two, 1, KVS_LOOKUP_EACH, st, &np), KVS_OK);
  CU_ASSERT(st[0] >= 1);
  CU_ASSERT_EQUAL(np, 1);
  kvs_entry_info info;
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch[3].key, &info), KVS_OK);
  CU_ASSERT_EQUAL(info.present, 1);
  /* the sum of entries over the nodes: R copies of each key */
  uint64_t v[16];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(cl, v, 16, &n), KVS_OK);
  CU_ASSERT_EQUAL(v[0], (uint64_t)NKEY * 2);
  /* calls a cluster client does not carry say so */
  kvs_op *op = NULL;
  CU_ASSERT_EQUAL(kvs_put_start(cl, &model, tok[0], &ch[0], &lay, kv[0], NULL, &op), KVS_ENOTSUP);
}

/* Events of one node (GET /v1/events): counts of BlockStored / BlockRemoved
 * whose block hash is one of the test's keys; -1 on failure. */
static int node_events(int i, int *stored, int *removed) {
  char url[128], *body = NULL;
  long code = 0;
  *stored = *removed = 0;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/events?limit=10000", nd[i].http_port);
  if (kvs__http_get(url, NULL, 2000, &body, &code) != KVS_OK || code != 200) {
    free(body);
    return -1;
  }
  for (int k = 0; k < NKEY; k++) {
    char hx[33], pat[80];
    kvs_hash128_hex(&ch[k].key, hx);
    for (int type = 0; type < 2; type++) {
      snprintf(pat, sizeof pat, "\"type\":\"%s\"", type ? "BlockRemoved" : "BlockStored");
      /* each event is one object: count objects holding both the type and the key */
      for (const char *p = strstr(body, hx); p; p = strstr(p + 1, hx)) {
        const char *open = p;
        while (open > body && *open != '{')
          open--;
        const char *t = strstr(open, pat);
        if (t && t < p) (type ? (*removed)++ : (*stored)++);
      }
    }
  }
  free(body);
  return 0;
}

static void test_events(void) {
  int stored = 0, removed = 0, all_stored = 0;
  for (int i = 0; i < NN; i++) {
    CU_ASSERT_EQUAL(node_events(i, &stored, &removed), 0);
    all_stored += stored;
    CU_ASSERT_EQUAL(removed, 0);
  }
  CU_ASSERT_EQUAL(all_stored, NKEY * 2); /* one BlockStored per copy */
  /* a delete is a BlockRemoved on both owners; the key is put back */
  CU_ASSERT_EQUAL(kvs_delete(cl, &ch[5].key), KVS_OK);
  int all_removed = 0;
  for (int i = 0; i < NN; i++) {
    node_events(i, &stored, &removed);
    all_removed += removed;
  }
  CU_ASSERT_EQUAL(all_removed, 2);
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok[5], &ch[5], &lay, kv[5], NULL), KVS_OK);
  /* a page after the last seq is empty; a bad number reads as 0 */
  char url[128], *body = NULL;
  long code = 0;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/events?after=999999999", nd[0].http_port);
  CU_ASSERT_EQUAL(kvs__http_get(url, NULL, 2000, &body, &code), KVS_OK);
  CU_ASSERT_EQUAL(code, 200);
  CU_ASSERT_PTR_NOT_NULL(body && strstr(body, "\"events\":[]"));
  free(body);
}

/* A get that misses on the preferred owner and hits the other one copies
 * the entry back to the preferred owner in the background. */
static void test_read_repair(void) {
  kvs_cluster_where w[2];
  CU_ASSERT_EQUAL_FATAL(kvs_cluster_lookup(cl, &model, tok[7], T, &ch[7], 1, w), KVS_OK);
  CU_ASSERT_FATAL(w[0].node[0] == 'n');
  int pref = atoi(w[0].node + 1);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = nd[pref].url;
  o.tenant = "t1";
  kvs_client *direct = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &direct), KVS_OK);
  CU_ASSERT_EQUAL(kvs_delete(direct, &ch[7].key), KVS_OK);
  kvs_cluster_counters c0, c1;
  CU_ASSERT_EQUAL(kvs_cluster_get_counters(cl, &c0), KVS_OK);
  uint16_t *out = malloc(kv_bytes);
  CU_ASSERT_EQUAL(kvs_get(cl, &model, tok[7], &ch[7], &lay, out, kv_bytes, NULL), KVS_OK);
  CU_ASSERT(memcmp(out, kv[7], kv_bytes) == 0);
  free(out);
  kvs_entry_info info = {0};
  for (int t = 0; t < 200 && !info.present; t++) { /* 10 s at most */
    sleep_ms(50);
    kvs_exists(direct, &model, &ch[7].key, &info);
  }
  CU_ASSERT_EQUAL(info.present, 1);
  CU_ASSERT_EQUAL(kvs_cluster_get_counters(cl, &c1), KVS_OK);
  CU_ASSERT_EQUAL(c1.get_fallbacks, c0.get_fallbacks + 1);
  CU_ASSERT_EQUAL(c1.repairs, c0.repairs + 1);
  kvs_client_free(direct);
}

static void test_kill9(void) {
  th_daemon_kill9(&nd[1]);
  /* right away (the node is still in the view) and after its lease ran out */
  int failed;
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
  CU_ASSERT_TRUE(wait_view(0x5, 15000));
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
  /* puts go on: two live nodes hold each new copy */
  kvs_chunk c = ch[0];
  CU_ASSERT_EQUAL(kvs_put(cl, &model, tok[0], &c, &lay, kv[0], NULL), KVS_OK);
}

static void test_return_rebalance(void) {
  CU_ASSERT_EQUAL_FATAL(start_node(1), 0); /* same data dir, new ports */
  CU_ASSERT_TRUE(wait_view(0x7, 15000));
  kvs_cluster_rebalance_stats st;
  CU_ASSERT_EQUAL(kvs_cluster_rebalance(cl, 0, &st), KVS_OK);
  printf("rebalance after return: scanned %llu copied %llu dropped %llu failed %llu\n",
         (unsigned long long)st.scanned, (unsigned long long)st.copied,
         (unsigned long long)st.dropped, (unsigned long long)st.failed);
  CU_ASSERT_EQUAL(st.failed, 0);
  CU_ASSERT_TRUE(placement_ok());
  uint64_t v[16];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(cl, v, 16, &n), KVS_OK);
  CU_ASSERT_EQUAL(v[0], (uint64_t)NKEY * 2); /* exactly R copies again */
  int failed;
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
}

/* 16 callers put and get their own keys for 6 s; n0 is killed (-9) after
 * 2 s and started again after 4 s. Every acknowledged put must read back
 * with its bytes, no get may return wrong bytes, and at least 99.9% of
 * the gets must be answered (within the client's 5 s deadline). */
#define STORM_T 16
#define STORM_K 8
typedef struct storm {
  int id;
  double end;
  int acked[STORM_K];
  uint64_t gets, get_ok, get_fail, wrong, puts_ok, put_fail;
} storm;

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *storm_main(void *arg) {
  storm *s = arg;
  uint16_t *out = malloc(kv_bytes);
  for (uint64_t i = 0; mono_s() < s->end && i < 1000000; i++) {
    int k = (int)(i % STORM_K), key = (s->id * STORM_K + k) % NKEY;
    /* a key of this thread: its own token ids (key differs from ch[]) */
    int32_t tk[T];
    memcpy(tk, tok[key], sizeof tk);
    tk[0] = 100000 + s->id * STORM_K + k;
    kvs_span sp = {0, T};
    kvs_chunk c1;
    kvs_chunk_spans(&model, tk, T, &sp, 1, &c1);
    if (!s->acked[k] || i % 5 == 0) {
      int rv = kvs_put(cl, &model, tk, &c1, &lay, kv[key], NULL);
      if (rv == KVS_OK)
        s->acked[k] = 1, s->puts_ok++;
      else
        s->put_fail++;
      continue;
    }
    s->gets++;
    int rv = kvs_get(cl, &model, tk, &c1, &lay, out, kv_bytes, NULL);
    if (rv != KVS_OK) {
      s->get_fail++;
      continue;
    }
    s->get_ok++;
    if (memcmp(out, kv[key], kv_bytes)) s->wrong++;
  }
  free(out);
  return NULL;
}

static void test_storm_kill9(void) {
  storm st[STORM_T];
  pthread_t th[STORM_T];
  double t0 = mono_s();
  for (int i = 0; i < STORM_T; i++) {
    memset(&st[i], 0, sizeof st[i]);
    st[i].id = i;
    st[i].end = t0 + 6.0;
    pthread_create(&th[i], NULL, storm_main, &st[i]);
  }
  sleep_ms(2000);
  th_daemon_kill9(&nd[0]);
  sleep_ms(2000);
  int restarted = start_node(0) == 0;
  uint64_t gets = 0, ok = 0, fail = 0, wrong = 0, puts = 0, pfail = 0;
  for (int i = 0; i < STORM_T; i++) {
    pthread_join(th[i], NULL);
    gets += st[i].gets, ok += st[i].get_ok, fail += st[i].get_fail, wrong += st[i].wrong;
    puts += st[i].puts_ok, pfail += st[i].put_fail;
  }
  printf("storm: %llu gets, %llu answered, %llu failed, %llu wrong; %llu puts acked, %llu "
         "refused\n",
         (unsigned long long)gets, (unsigned long long)ok, (unsigned long long)fail,
         (unsigned long long)wrong, (unsigned long long)puts, (unsigned long long)pfail);
  CU_ASSERT_TRUE(restarted);
  CU_ASSERT_EQUAL(wrong, 0);
  CU_ASSERT(gets > 0 && (double)ok >= 0.999 * (double)gets);
  /* 0 acknowledged puts lost: each acked key reads back, right bytes */
  CU_ASSERT_TRUE(wait_view(0x7, 15000));
  uint16_t *out = malloc(kv_bytes);
  int lost = 0, bad = 0, acked = 0;
  for (int i = 0; i < STORM_T; i++)
    for (int k = 0; k < STORM_K; k++) {
      if (!st[i].acked[k]) continue;
      acked++;
      int key = (i * STORM_K + k) % NKEY;
      int32_t tk[T];
      memcpy(tk, tok[key], sizeof tk);
      tk[0] = 100000 + i * STORM_K + k;
      kvs_span sp = {0, T};
      kvs_chunk c1;
      kvs_chunk_spans(&model, tk, T, &sp, 1, &c1);
      int rv = kvs_get(cl, &model, tk, &c1, &lay, out, kv_bytes, NULL);
      if (rv != KVS_OK)
        lost++;
      else if (memcmp(out, kv[key], kv_bytes))
        bad++;
    }
  free(out);
  CU_ASSERT_EQUAL(acked, STORM_T * STORM_K);
  CU_ASSERT_EQUAL(lost, 0);
  CU_ASSERT_EQUAL(bad, 0);
  /* the node is back: a rebalance catches it up */
  kvs_cluster_rebalance_stats rs;
  CU_ASSERT_EQUAL(kvs_cluster_rebalance(cl, 0, &rs), KVS_OK);
  CU_ASSERT_EQUAL(rs.failed, 0);
  uint64_t v[4];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(cl, v, 4, &n), KVS_OK);
  CU_ASSERT_EQUAL(v[0], (uint64_t)(NKEY + STORM_T * STORM_K) * 2);
  /* the storm keys go, so that the next cases count the 48 again */
  for (int i = 0; i < STORM_T * STORM_K; i++) {
    int32_t tk[T];
    int key = i % NKEY;
    memcpy(tk, tok[key], sizeof tk);
    tk[0] = 100000 + i;
    kvs_span sp = {0, T};
    kvs_chunk c1;
    kvs_chunk_spans(&model, tk, T, &sp, 1, &c1);
    CU_ASSERT_EQUAL(kvs_delete(cl, &c1.key), KVS_OK);
  }
}

static void test_join_fourth(void) {
  CU_ASSERT_EQUAL_FATAL(start_node(3), 0);
  CU_ASSERT_TRUE(wait_view(0xF, 15000));
  kvs_cluster_rebalance_stats st;
  CU_ASSERT_EQUAL(kvs_cluster_rebalance(cl, 0, &st), KVS_OK);
  double share = (double)st.copied / (double)(NKEY * 2);
  printf("4th node joins: %llu of %d copies moved (%.3f; HRW expects ~0.25)\n",
         (unsigned long long)st.copied, NKEY * 2, share);
  CU_ASSERT(st.copied > 0 && st.copied < (uint64_t)NKEY); /* < half of the copies */
  CU_ASSERT_EQUAL(st.copied, st.dropped);
  CU_ASSERT_TRUE(placement_ok());
}

static void test_graceful_leave(void) {
  CU_ASSERT_EQUAL(th_daemon_stop(&nd[3]), 0);
  /* deregistered at stop: gone from the view well before its lease */
  CU_ASSERT_TRUE(wait_view(0x7, 15000));
  int failed;
  get_all(&failed);
  CU_ASSERT_EQUAL(failed, 0); /* R = 2: the other owner answers */
}

static void test_etcd_restart(void) {
  th_etcd_stop(&etcd);
  int failed;
  CU_ASSERT_EQUAL(get_all(&failed), 0); /* cached reads go on without etcd */
  CU_ASSERT_EQUAL(failed, 0);
  CU_ASSERT_EQUAL(view_mask(NULL), 0x7); /* the last view stays */
  sleep_ms(2500);                        /* longer than the lease TTL */
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
  CU_ASSERT_EQUAL_FATAL(th_etcd_start(&etcd), 0);
  /* every node is registered in etcd again (read from etcd itself) */
  char url[128];
  snprintf(url, sizeof url, "etcd://127.0.0.1:%d/tc", etcd.port);
  kvs__cl_url u;
  CU_ASSERT_EQUAL_FATAL(kvs__cl_url_parse(url, &u), KVS_OK);
  kvs__etcd *e = kvs__etcd_new(&u, 1000);
  int all = 0;
  for (int t = 0; t < 300 && !all; t++) { /* 15 s */
    all = 1;
    for (int i = 0; i < NN; i++) {
      char key[64], *val = NULL;
      snprintf(key, sizeof key, "/kvstash/tc/nodes/n%d", i);
      if (kvs__etcd_get(e, key, &val, NULL) != KVS_OK) all = 0;
      free(val);
    }
    if (!all) sleep_ms(50);
  }
  kvs__etcd_free(e);
  CU_ASSERT_TRUE(all);
  CU_ASSERT_TRUE(wait_view(0x7, 15000));
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
}

static void test_drain(void) {
  kvs_cluster_rebalance_stats st;
  CU_ASSERT_EQUAL(kvs_cluster_drain(cl, "n2", 0, &st), KVS_OK);
  printf("drain n2: copied %llu dropped %llu failed %llu\n", (unsigned long long)st.copied,
         (unsigned long long)st.dropped, (unsigned long long)st.failed);
  CU_ASSERT_EQUAL(st.failed, 0);
  /* n2 holds nothing now; each key on n0 and n1 */
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = nd[2].url;
  o.tenant = "t1";
  kvs_client *c2 = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &c2), KVS_OK);
  uint64_t v[4];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(c2, v, 4, &n), KVS_OK);
  CU_ASSERT_EQUAL(v[0], 0);
  kvs_client_free(c2);
  int failed;
  CU_ASSERT_EQUAL(get_all(&failed), 0);
  CU_ASSERT_EQUAL(failed, 0);
  CU_ASSERT_EQUAL(kvs_cluster_drain(cl, "nope", 0, NULL), KVS_ENOENT);
}

int main(void) {
  if (!th_etcd_binary()) {
    fprintf(stderr, "no etcd binary (apt-get install etcd-server): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {{"view", test_view},
                                        {"put_get", test_put_get},
                                        {"events", test_events},
                                        {"read_repair", test_read_repair},
                                        {"kill9", test_kill9},
                                        {"return_rebalance", test_return_rebalance},
                                        {"storm_kill9", test_storm_kill9},
                                        {"join_fourth", test_join_fourth},
                                        {"graceful_leave", test_graceful_leave},
                                        {"etcd_restart", test_etcd_restart},
                                        {"drain", test_drain},
                                        {NULL, NULL}};
  return kvs_test_run_fixture("cluster_etcd", cases, init, clean);
}
