/* Placement and the formats of the cluster, without a network: etcd://
 * URLs, node records, rendezvous hashing (deterministic, proportional to
 * capacity, about 1/N of the keys move when a node joins, only the
 * leaver's keys move when one leaves). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "kvs_test.h"

static void test_url(void) {
  kvs__cl_url u;
  CU_ASSERT_EQUAL(kvs__cl_url_parse("etcd://127.0.0.1:2379/prod", &u), KVS_OK);
  CU_ASSERT_EQUAL(u.n_ep, 1);
  CU_ASSERT_STRING_EQUAL(u.ep[0], "http://127.0.0.1:2379");
  CU_ASSERT_STRING_EQUAL(u.name, "prod");
  CU_ASSERT_EQUAL(u.replicas, 0);
  CU_ASSERT_EQUAL(kvs__cl_url_parse("etcd://a:1,b.example:2379/x-1.y?r=3", &u), KVS_OK);
  CU_ASSERT_EQUAL(u.n_ep, 2);
  CU_ASSERT_STRING_EQUAL(u.ep[1], "http://b.example:2379");
  CU_ASSERT_EQUAL(u.replicas, 3);
  static const char *bad[] = {"tcp://127.0.0.1:2379/x",
                              "etcd://127.0.0.1:2379",
                              "etcd:///x",
                              "etcd://h:1/",
                              "etcd://h:1/a/b",
                              "etcd://h/x",
                              "etcd://h:1/x?r=0",
                              "etcd://h:1/x?r=99",
                              "etcd://h:1/x?q=1",
                              "etcd://h:1/x?r=2z",
                              "etcd://h:1,h:2,h:3,h:4,h:5/x",
                              "etcd://h;rm:1/x",
                              NULL};
  for (int i = 0; bad[i]; i++) {
    CU_ASSERT_EQUAL(kvs__cl_url_parse(bad[i], &u), KVS_EINVAL);
    if (kvs__cl_url_parse(bad[i], &u) != KVS_EINVAL) fprintf(stderr, "accepted %s\n", bad[i]);
  }
}

static void test_node_json(void) {
  kvs__node n = {.capacity = 123456789012ull, .replicas = 3, .draining = 1, .started_ms = 77};
  snprintf(n.id, sizeof n.id, "node-1");
  snprintf(n.data, sizeof n.data, "tcp://10.0.0.1:7878");
  snprintf(n.stream, sizeof n.stream, "tcp+stream://10.0.0.1:7880");
  snprintf(n.http, sizeof n.http, "10.0.0.1:7879");
  snprintf(n.host, sizeof n.host, "abc");
  snprintf(n.zone, sizeof n.zone, "z1");
  char *j = kvs__node_to_json(&n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(j);
  CU_ASSERT_PTR_NULL(strstr(j, "token")); /* no secret in a record */
  kvs__node m;
  CU_ASSERT_EQUAL(kvs__node_from_json(j, strlen(j), &m), KVS_OK);
  CU_ASSERT(memcmp(&n, &m, sizeof n) == 0);
  free(j);
  static const char *bad[] = {"",
                              "{",
                              "[]",
                              "{\"id\":\"a\"}",
                              "{\"id\":\"a b\",\"data\":\"tcp://h:1\",\"capacity\":\"1\"}",
                              "{\"id\":\"a\",\"data\":\"ipc:///x\",\"capacity\":\"1\"}",
                              "{\"id\":\"a\",\"data\":\"tcp://h:1\",\"capacity\":\"0\"}",
                              "{\"id\":\"a\",\"data\":\"tcp://h:1\",\"capacity\":\"12x\"}",
                              "{\"id\":\"a\",\"data\":\"tcp://h:1\",\"capacity\":12}",
                              NULL};
  for (int i = 0; bad[i]; i++)
    CU_ASSERT_EQUAL(kvs__node_from_json(bad[i], strlen(bad[i]), &m), KVS_EPROTO);
}

static kvs__node mk(const char *id, uint64_t cap) {
  kvs__node n = {.capacity = cap, .replicas = 2};
  snprintf(n.id, sizeof n.id, "%s", id);
  return n;
}

static kvs_key key_of(uint64_t i) {
  kvs_key k;
  uint64_t a = i * 0x9E3779B97F4A7C15ull, b = ~i * 0xC2B2AE3D27D4EB4Full;
  memcpy(k.b, &a, 8);
  memcpy(k.b + 8, &b, 8);
  return k;
}

static void test_hrw_deterministic(void) {
  kvs__node a[3] = {mk("n1", 100), mk("n2", 100), mk("n3", 100)};
  kvs__node b[3] = {a[2], a[0], a[1]}; /* same set, another order */
  for (uint64_t i = 0; i < 1000; i++) {
    kvs_key k = key_of(i);
    size_t oa[3], ob[3];
    kvs__hrw_order(&k, a, 3, oa, 3);
    kvs__hrw_order(&k, b, 3, ob, 3);
    for (int j = 0; j < 3; j++)
      CU_ASSERT_STRING_EQUAL(a[oa[j]].id, b[ob[j]].id);
    CU_ASSERT(oa[0] != oa[1] && oa[1] != oa[2] && oa[0] != oa[2]);
    size_t o2[2];
    kvs__hrw_order(&k, a, 3, o2, 2); /* a shorter list is a prefix */
    CU_ASSERT(o2[0] == oa[0] && o2[1] == oa[1]);
  }
}

static void test_hrw_weights(void) {
  /* capacity 1:2:5 -> first owner shares 1/8, 2/8, 5/8 */
  kvs__node n[3] = {mk("a", 1ull << 30), mk("b", 2ull << 30), mk("c", 5ull << 30)};
  const int N = 40000;
  int cnt[3] = {0};
  for (int i = 0; i < N; i++) {
    kvs_key k = key_of((uint64_t)i);
    size_t o;
    kvs__hrw_order(&k, n, 3, &o, 1);
    cnt[o]++;
  }
  double want[3] = {1.0 / 8, 2.0 / 8, 5.0 / 8};
  for (int j = 0; j < 3; j++) {
    double got = (double)cnt[j] / N;
    printf("weight share %s: %.4f (want %.4f)\n", n[j].id, got, want[j]);
    CU_ASSERT(got > want[j] - 0.015 && got < want[j] + 0.015);
  }
  /* a draining node owns nothing while others are there */
  n[2].draining = 1;
  for (int i = 0; i < 1000; i++) {
    kvs_key k = key_of((uint64_t)i);
    size_t o[3];
    kvs__hrw_order(&k, n, 3, o, 3);
    CU_ASSERT(o[0] != 2 && o[1] != 2 && o[2] == 2);
  }
}

static void test_hrw_movement(void) {
  kvs__node n[4] = {mk("n1", 1), mk("n2", 1), mk("n3", 1), mk("n4", 1)};
  const int N = 20000;
  int moved_first = 0, moved_set = 0, bad_move = 0;
  for (int i = 0; i < N; i++) {
    kvs_key k = key_of((uint64_t)i + 7777);
    size_t a[2], b[2];
    kvs__hrw_order(&k, n, 3, a, 2);
    kvs__hrw_order(&k, n, 4, b, 2);
    if (a[0] != b[0]) {
      moved_first++;
      if (b[0] != 3) bad_move++; /* a key moves only to the new node */
    }
    int same = (a[0] == b[0] || a[0] == b[1]) && (a[1] == b[0] || a[1] == b[1]);
    if (!same) moved_set++;
  }
  double f = (double)moved_first / N, s = (double)moved_set / N;
  printf(
      "join 3->4: first owner moved %.4f (want ~0.25), owner set (R=2) changed %.4f (want ~0.5)\n",
      f, s);
  CU_ASSERT(f > 0.23 && f < 0.27);
  CU_ASSERT(s > 0.47 && s < 0.53);
  CU_ASSERT_EQUAL(bad_move, 0);
  /* leave: only keys owned by the leaver change owners */
  int wrong = 0;
  for (int i = 0; i < N; i++) {
    kvs_key k = key_of((uint64_t)i + 99);
    size_t a[2], b[2];
    kvs__hrw_order(&k, n, 4, a, 2);
    kvs__hrw_order(&k, n, 3, b, 2); /* n4 left */
    if (a[0] != 3 && a[1] != 3 && !(a[0] == b[0] && a[1] == b[1])) wrong++;
  }
  CU_ASSERT_EQUAL(wrong, 0);
}

int main(void) {
  static const kvs_test_case cases[] = {{"url", test_url},
                                        {"node_json", test_node_json},
                                        {"hrw_deterministic", test_hrw_deterministic},
                                        {"hrw_weights", test_hrw_weights},
                                        {"hrw_movement", test_hrw_movement},
                                        {NULL, NULL}};
  return kvs_test_run("cluster_unit", cases);
}
