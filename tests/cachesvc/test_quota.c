/* Per-tenant quotas of kvstashd (issue 19, item 7; docs/kvstashd.md, "Tenant
 * quotas"): the real daemon with two auth tenants on loopback. A tenant
 * writing far past its quota is refused KVS_EQUOTA and never evicts another
 * tenant's entries; a tenant past its request rate is refused while another
 * is served. Every loop bounded in count; no timed assertion. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_svc.h"
#include "kvs_test.h"
#include "svc_helper.h"

/* The value of one series in the /metrics text (-1 when absent). */
static long long metric(int http_port, const char *series) {
  char *body = NULL;
  long long v = -1;
  if (th_http(http_port, "GET", "/metrics", &body) == 200 && body) {
    size_t n = strlen(series);
    for (const char *p = body; (p = strstr(p, series)) != NULL; p += n)
      if ((p == body || p[-1] == '\n') && p[n] == ' ') {
        v = strtoll(p + n + 1, NULL, 10);
        break;
      }
  }
  free(body);
  return v;
}

/* Tenant b stores 16 entries (2 MiB). Tenant a, with a 1 MiB disk quota on
 * an 8 MiB disk tier, then tries 96 puts of 128 KiB (12 MiB: 12x its quota,
 * more than the whole tier, so without the quota the tier would evict b's
 * entries). a is refused KVS_EQUOTA past its quota; every entry of b reads
 * back exactly; the metrics show a's usage within its quota. */
static void test_fill_past_quota(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--tenant=a:tok-a-quota",
                              "--tenant=b:tok-b-quota",
                              "--quota=a:disk=1M,ram=512K,entries=1000",
                              "--disk_bytes=8M",
                              "--ram_bytes=4M",
                              "--durability=async",
                              NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn a, b;
  CU_ASSERT_FATAL(th_connect(&a, d.url, "a", "tok-a-quota", 30000) == 0);
  CU_ASSERT_FATAL(th_connect(&b, d.url, "b", "tok-b-quota", 30000) == 0);
  enum { NB = 16, NA = 96, VB = 128 * 1024 };
  th_chunk *bc = calloc(NB, sizeof *bc);
  CU_ASSERT_FATAL(bc != NULL);
  int b_ok = 0;
  for (int i = 0; i < NB; i++) {
    th_chunk_make(&bc[i], 1000 + (uint64_t)i, 32, VB, 1);
    b_ok += th_put(&b, &bc[i], 0) == KVS_OK;
  }
  CU_ASSERT_EQUAL(b_ok, NB);
  int a_ok = 0, a_quota = 0, a_other = 0;
  for (int i = 0; i < NA; i++) {
    th_chunk ch;
    th_chunk_make(&ch, 5000 + (uint64_t)i, 32, VB, 1);
    int rc = th_put(&a, &ch, 0);
    if (rc == KVS_OK)
      a_ok++;
    else if (rc == KVS_EQUOTA)
      a_quota++;
    else
      a_other++;
    if (rc == KVS_OK) (void)th_get(&a, &ch, NULL, NULL); /* RAM-tier copies too */
    th_chunk_free(&ch);
  }
  fprintf(stderr, "fill_past_quota: a stored %d, refused KVS_EQUOTA %d, other %d of %d puts\n",
          a_ok, a_quota, a_other, NA);
  CU_ASSERT(a_ok >= 1 && a_ok <= 8); /* 1 MiB / (128 KiB + record) */
  CU_ASSERT_EQUAL(a_quota, NA - a_ok);
  CU_ASSERT_EQUAL(a_other, 0);
  int b_back = 0;
  for (int i = 0; i < NB; i++) {
    uint8_t *v = NULL;
    size_t n = 0;
    if (th_get(&b, &bc[i], &v, &n) == KVS_OK && n == bc[i].vbytes && memcmp(v, bc[i].value, n) == 0)
      b_back++;
    free(v);
  }
  CU_ASSERT_EQUAL(b_back, NB);
  long long used = metric(d.http_port, "kvstash_quota_used{tenant=\"a\",kind=\"disk\"}");
  long long ram = metric(d.http_port, "kvstash_quota_used{tenant=\"a\",kind=\"ram\"}");
  long long ents = metric(d.http_port, "kvstash_quota_used{tenant=\"a\",kind=\"entries\"}");
  long long lim = metric(d.http_port, "kvstash_quota_limit{tenant=\"a\",kind=\"disk\"}");
  long long ref = metric(d.http_port, "kvstash_quota_refused_total{tenant=\"a\",kind=\"disk\"}");
  long long ev = metric(d.http_port, "kvstash_evictions_total");
  fprintf(stderr,
          "fill_past_quota: a uses %lld of %lld disk bytes, %lld RAM bytes, %lld entries; "
          "%lld refused; evictions %lld\n",
          used, lim, ram, ents, ref, ev);
  CU_ASSERT_EQUAL(lim, 1024 * 1024);
  CU_ASSERT(used > 0 && used <= 1024 * 1024);
  CU_ASSERT(ram > 0 && ram <= 512 * 1024);
  CU_ASSERT_EQUAL(ents, a_ok);
  CU_ASSERT_EQUAL(ref, a_quota);
  CU_ASSERT_EQUAL(ev, 0);
  for (int i = 0; i < NB; i++)
    th_chunk_free(&bc[i]);
  free(bc);
  th_close(&a);
  th_close(&b);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* entries=4: the fifth new key is refused, a replacement of a stored key is
 * not (it frees what it adds), a delete makes room again. */
static void test_entries_quota(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--tenant=a:tok-a-quota", "--quota=a:entries=4", "--durability=async",
                              NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn a;
  CU_ASSERT_FATAL(th_connect(&a, d.url, "a", "tok-a-quota", 30000) == 0);
  th_chunk ch[6];
  for (int i = 0; i < 6; i++)
    th_chunk_make(&ch[i], 70 + (uint64_t)i, 16, 4096, 1);
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(th_put(&a, &ch[i], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&a, &ch[4], 0), KVS_EQUOTA);
  CU_ASSERT_EQUAL(th_put(&a, &ch[1], 0), KVS_OK); /* replaces: no new entry */
  CU_ASSERT_EQUAL(th_key_op(&a, KVS_OP_DELETE, &ch[0], 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&a, &ch[4], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&a, &ch[5], 0), KVS_EQUOTA);
  CU_ASSERT_EQUAL(metric(d.http_port, "kvstash_quota_refused_total{tenant=\"a\",kind=\"entries\"}"),
                  2);
  CU_ASSERT_EQUAL(metric(d.http_port, "kvstash_quota_used{tenant=\"a\",kind=\"entries\"}"), 4);
  for (int i = 0; i < 6; i++)
    th_chunk_free(&ch[i]);
  th_close(&a);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* rate=1,burst=3: of 60 back-to-back PINGs of a (on the message plane and
 * on the byte stream), all past the bucket are refused KVS_EQUOTA unless a
 * minute passes; b, with no rate quota, is served all 60 in between. */
static void test_rate_quota(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--tenant=a:tok-a-quota", "--tenant=b:tok-b-quota",
                              "--quota=a:rate=1,burst=3", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn a, b;
  CU_ASSERT_FATAL(th_connect(&a, d.url, "a", "tok-a-quota", 30000) == 0);
  CU_ASSERT_FATAL(th_connect(&b, d.url, "b", "tok-b-quota", 30000) == 0);
  enum { N = 60 };
  int a_ok = 0, a_quota = 0, b_ok = 0;
  for (int i = 0; i < N; i++) {
    int rc = th_call(&a, KVS_OP_PING, 0, NULL, 0, NULL, NULL);
    a_ok += rc == KVS_OK;
    a_quota += rc == KVS_EQUOTA;
    b_ok += th_call(&b, KVS_OP_PING, 0, NULL, 0, NULL, NULL) == KVS_OK;
  }
  th_sconn s;
  int s_quota = 0;
  if (th_sconnect(&s, d.surl, "a", "tok-a-quota", 30000) == 0) {
    for (int i = 0; i < 10; i++)
      s_quota += th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL) == KVS_EQUOTA;
    th_sclose(&s);
  }
  long long ref = metric(d.http_port, "kvstash_quota_refused_total{tenant=\"a\",kind=\"rate\"}");
  fprintf(stderr,
          "rate_quota: a served %d, refused %d of %d (stream: %d of 10 refused); b served "
          "%d; metric %lld\n",
          a_ok, a_quota, N, s_quota, b_ok, ref);
  CU_ASSERT(a_ok >= 3);
  CU_ASSERT(a_quota >= 1);
  CU_ASSERT_EQUAL(a_ok + a_quota, N);
  CU_ASSERT(s_quota >= 1);
  CU_ASSERT_EQUAL(b_ok, N);
  CU_ASSERT_EQUAL(ref, a_quota + s_quota);
  th_close(&a);
  th_close(&b);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* The option: every kind parsed, bad ones refused with a reason, a second
 * line for the same tenant replaces the first. */
static void test_quota_config(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "quota", "rag:ram=1G,disk=10G,entries=100000,rate=5000"),
                  KVS_OK);
  CU_ASSERT_EQUAL_FATAL(c.n_quotas, 1);
  CU_ASSERT_STRING_EQUAL(c.quotas[0].tenant, "rag");
  CU_ASSERT_EQUAL(c.quotas[0].ram_bytes, 1ull << 30);
  CU_ASSERT_EQUAL(c.quotas[0].disk_bytes, 10ull << 30);
  CU_ASSERT_EQUAL(c.quotas[0].entries, 100000);
  CU_ASSERT(c.quotas[0].rate == 5000 && c.quotas[0].burst == 5000);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "quota", "rag:entries=7,rate=0.5"), KVS_OK);
  CU_ASSERT_EQUAL(c.n_quotas, 1);
  CU_ASSERT(c.quotas[0].entries == 7 && c.quotas[0].disk_bytes == 0 && c.quotas[0].burst == 1);
  const char *bad[] = {"rag",           "rag:",           ":disk=1G",        "rag:disk=1X",
                       "rag:foo=1",     "rag:entries=-1", "rag:rate=x",      "rag:disk",
                       "rag:burst=0.5", "r a:disk=1G",    "rag:entries=1.5", "rag:disk=1G,,"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "quota", bad[i]), KVS_EINVAL);
    CU_ASSERT(strstr(kvs_svc_config_error(), "quota") != NULL);
  }
  CU_ASSERT_EQUAL(c.n_quotas, 1);
}

static const kvs_test_case cases[] = {
    {"quota_config", test_quota_config},
    {"fill_past_quota", test_fill_past_quota},
    {"entries_quota", test_entries_quota},
    {"rate_quota", test_rate_quota},
    {NULL, NULL},
};

int main(void) { return kvs_test_run("cachesvc_quota", cases); }
