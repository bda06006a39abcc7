/* Live reload of kvstashd (issue 19, item 8): SIGHUP swaps tenants and tokens
 * while requests admitted before finish; a broken config is rejected and the
 * old one kept. The real daemon on loopback with a config file in a temp dir;
 * every wait bounded, no timed assertion (5 s is only "it did happen"). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "kvs_test.h"
#include "svc_helper.h"

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int write_file(const char *path, const char *text) {
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.new", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  int ok = fputs(text, f) >= 0;
  ok &= fclose(f) == 0;
  return ok && rename(tmp, path) == 0 ? 0 : -1; /* whole, as an editor or a deploy writes it */
}

/* A PING as tenant t with token tok on a fresh connection. */
static int ping_as(const th_daemon *d, const char *tok) {
  th_conn c;
  if (th_connect(&c, d->url, "t", tok, 5000) != 0) return KVS_ECONN;
  int rc = th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL);
  th_close(&c);
  return rc;
}

/* Whether /metrics (or /v1/info) holds `needle`. */
static int http_has(const th_daemon *d, const char *path, const char *needle) {
  char *body = NULL;
  int st = th_http(d->http_port, "GET", path, &body);
  int has = st == 200 && body && strstr(body, needle) != NULL;
  free(body);
  return has;
}

static void test_sighup_tokens(void) {
  char cdir[] = "/tmp/kvs-reload-XXXXXX";
  CU_ASSERT_FATAL(mkdtemp(cdir) != NULL);
  char conf[300], arg[320];
  snprintf(conf, sizeof conf, "%s/kvstashd.conf", cdir);
  snprintf(arg, sizeof arg, "--config=%s", conf);
  CU_ASSERT_FATAL(write_file(conf, "tenant = t:token-A\nhalf_life_s = 3600\n") == 0);
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *args[] = {arg, NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);

  /* token A works; a 24 MiB entry for the request in flight across the reload */
  CU_ASSERT_EQUAL(ping_as(&d, "token-A"), KVS_OK);
  CU_ASSERT_EQUAL(ping_as(&d, "token-B"), KVS_EAUTH);
  th_conn a;
  CU_ASSERT_FATAL(th_connect(&a, d.url, "t", "token-A", 20000) == 0);
  th_chunk ch;
  th_chunk_make(&ch, 7, 64, 24u << 20, 4);
  CU_ASSERT_EQUAL_FATAL(th_put(&a, &ch, 0), KVS_OK);
  th_close(&a);

  /* a GET admitted under token A: its answer's header is read (auth passed),
   * the 24 MiB value not yet: it is still being sent when the reload runs */
  th_sconn sc;
  CU_ASSERT_FATAL(th_sconnect(&sc, d.surl, "t", "token-A", 20000) == 0);
  uint64_t id = 0;
  CU_ASSERT_EQUAL_FATAL(th_sget_send(&sc, &ch, 0, KVS_WIRE_SEG_ALL, &id), KVS_OK);
  uint8_t hb[KVS_WIRE_HDR_SIZE];
  CU_ASSERT_EQUAL_FATAL(th_sread(&sc, hb, sizeof hb), KVS_OK);

  /* token B instead of A (and an option that needs a restart), SIGHUP */
  CU_ASSERT_FATAL(write_file(conf, "tenant = t:token-B\nhalf_life_s = 60\n") == 0);
  CU_ASSERT_FATAL(kill(d.pid, SIGHUP) == 0);
  int refused = 0;
  for (int i = 0; i < 50 && !refused; i++) { /* at most ~5 s */
    refused = ping_as(&d, "token-A") == KVS_EAUTH;
    if (!refused) sleep_ms(100);
  }
  CU_ASSERT(refused);
  CU_ASSERT_EQUAL(ping_as(&d, "token-B"), KVS_OK);
  th_conn b;
  CU_ASSERT_FATAL(th_connect(&b, d.url, "t", "token-B", 20000) == 0);
  uint8_t *v = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL(th_get(&b, &ch, &v, &n), KVS_OK); /* same tenant, same entries */
  CU_ASSERT(n == ch.vbytes && v && memcmp(v, ch.value, n) == 0);
  free(v);

  /* the request admitted before the reload finishes, every byte right */
  v = NULL;
  CU_ASSERT_EQUAL(th_sget_recv(&sc, id, hb, &v, &n), KVS_OK);
  CU_ASSERT(v && n == ch.vbytes && memcmp(v, ch.value, n) == 0);
  free(v);
  th_sclose(&sc);
  /* the stream plane sees the new table too */
  CU_ASSERT_FATAL(th_sconnect(&sc, d.surl, "t", "token-A", 20000) == 0);
  CU_ASSERT_EQUAL(th_sget(&sc, &ch, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_EAUTH);
  th_sclose(&sc);

  CU_ASSERT(http_has(&d, "/metrics", "kvstash_config_reloads_total{result=\"ok\"} 1\n"));
  CU_ASSERT(http_has(&d, "/metrics", "kvstash_config_reloads_total{result=\"error\"} 0\n"));

  /* a broken config: rejected, counted, shown; B still in force, C never */
  CU_ASSERT_FATAL(write_file(conf, "tenant = t:token-C\nworkerz = 3\n") == 0);
  CU_ASSERT_FATAL(kill(d.pid, SIGHUP) == 0);
  int seen = 0;
  for (int i = 0; i < 50 && !seen; i++) {
    seen = http_has(&d, "/metrics", "kvstash_config_reloads_total{result=\"error\"} 1\n");
    if (!seen) sleep_ms(100);
  }
  CU_ASSERT(seen);
  CU_ASSERT(http_has(&d, "/v1/info", "workerz"));
  CU_ASSERT(kill(d.pid, 0) == 0);
  CU_ASSERT_EQUAL(th_get(&b, &ch, &v, &n), KVS_OK);
  free(v);
  CU_ASSERT_EQUAL(ping_as(&d, "token-B"), KVS_OK);
  CU_ASSERT_EQUAL(ping_as(&d, "token-C"), KVS_EAUTH);
  CU_ASSERT_EQUAL(ping_as(&d, "token-A"), KVS_EAUTH);
  th_close(&b);

  int st = th_daemon_stop(&d);
  CU_ASSERT_EQUAL(st, 0);
  /* the log says what needs a restart and why the bad one was rejected */
  char cmd[700];
  snprintf(cmd, sizeof cmd, "grep -q 'needs restart.*half_life_s' %s", d.log);
  CU_ASSERT(system(cmd) == 0);
  snprintf(cmd, sizeof cmd, "grep -q 'reload rejected.*workerz' %s", d.log);
  CU_ASSERT(system(cmd) == 0);
  th_chunk_free(&ch);
  th_daemon_cleanup(&d);
  snprintf(cmd, sizeof cmd, "rm -rf %s", cdir);
  CU_ASSERT(system(cmd) == 0);
}

static const kvs_test_case cases[] = {
    {"sighup_tokens", test_sighup_tokens},
    {NULL, NULL},
};

int main(void) { return kvs_test_run("cachesvc_reload", cases); }
