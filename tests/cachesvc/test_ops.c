/* What an operator sees of a running kvstashd: --version, /v1/info, the
 * metrics (names, HELP, the exposition format, lookup counters) and the
 * systemd readiness notification. The real daemon, on loopback. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_test.h"
#include "kvs_version.h"
#include "svc_helper.h"

static const char *daemon_bin(void) { return kvs_test_build_path("cachesvc/kvstashd"); }

/* Runs a shell command; its stdout (malloc'd) and exit status. */
static char *run(const char *cmd, int *status) {
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *out = calloc(1, cap);
  while (out && n + 1 < cap) {
    size_t k = fread(out + n, 1, cap - 1 - n, p);
    if (k == 0) break;
    n += k;
  }
  int st = pclose(p);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

static void test_version(void) {
  char cmd[600];
  int st = -1;
  snprintf(cmd, sizeof cmd, "%s --version", daemon_bin());
  char *out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(out);
  CU_ASSERT_STRING_EQUAL(out, "kvstashd " KVS_VERSION_STRING "\n");
  CU_ASSERT_STRING_EQUAL(kvs_version(), KVS_VERSION_STRING);
  free(out);
  /* -V too, and --version wins over anything else on the line */
  snprintf(cmd, sizeof cmd, "%s --workers=0 -V", daemon_bin());
  out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 0);
  CU_ASSERT(out && strncmp(out, "kvstashd ", 9) == 0);
  free(out);
}

static cJSON *get_json(int port, const char *path) {
  char *body = NULL;
  int code = th_http(port, "GET", path, &body);
  cJSON *j = code == 200 && body ? cJSON_Parse(body) : NULL;
  free(body);
  return j;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* connected_clients in /v1/info, waited for (pipes close asynchronously). */
static int clients_become(int port, int want) {
  int got = -1;
  for (int i = 0; i < 100; i++) {
    cJSON *j = get_json(port, "/v1/info");
    got = j ? (int)num(j, "connected_clients") : -1;
    cJSON_Delete(j);
    if (got == want) break;
    usleep(50000);
  }
  return got;
}

static void test_info(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  CU_ASSERT_FATAL(th_daemon_start(&d, NULL) == 0);
  time_t now = time(NULL);
  cJSON *j = get_json(d.http_port, "/v1/info");
  CU_ASSERT_PTR_NOT_NULL(j);
  if (j) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
    CU_ASSERT(cJSON_IsString(v) && strcmp(v->valuestring, KVS_VERSION_STRING) == 0);
    CU_ASSERT_EQUAL((long)num(j, "pid"), (long)d.pid);
    CU_ASSERT(num(j, "uptime_s") >= 0 && num(j, "uptime_s") < 600);
    CU_ASSERT(num(j, "start_time_s") > (double)now - 600 && num(j, "start_time_s") <= (double)now);
    CU_ASSERT(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "listen")));
    CU_ASSERT(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(j, "auth")));
    cJSON_Delete(j);
  }
  CU_ASSERT_EQUAL(clients_become(d.http_port, 0), 0);
  th_conn c;
  th_sconn s;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_OK);
  CU_ASSERT_FATAL(th_sconnect(&s, d.surl, "t", NULL, 10000) == 0);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(clients_become(d.http_port, 2), 2);
  j = get_json(d.http_port, "/v1/info");
  const cJSON *cc = j ? cJSON_GetObjectItemCaseSensitive(j, "connections") : NULL;
  CU_ASSERT_EQUAL(num(cc, "message"), 1);
  CU_ASSERT_EQUAL(num(cc, "stream"), 1);
  cJSON_Delete(j);
  th_close(&c);
  th_sclose(&s);
  CU_ASSERT_EQUAL(clients_become(d.http_port, 0), 0);
  int st = th_daemon_stop(&d);
  CU_ASSERT_EQUAL(st, 0);
  th_daemon_cleanup(&d);
}

/* The value of the sample line that starts with `series ` (name and labels). */
static double metric(const char *body, const char *series) {
  size_t n = strlen(series);
  for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (!strncmp(p, series, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
  return -1;
}

/* promlint.py (the exposition rules `promtool check metrics` applies) over
 * text; its exit status, its output printed. */
static int promlint(const char *dir, const char *text, int expect) {
  char path[400], cmd[1200];
  snprintf(path, sizeof path, "%s/metrics.prom", dir);
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  fclose(f);
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s 2>&1",
           kvs_test_src_path("tests/cachesvc/promlint.py"), path);
  int st = -1;
  char *out = run(cmd, &st);
  if (st != expect)
    fprintf(stderr, "promlint (exit %d, expected %d):\n%s\n", st, expect, out ? out : "");
  free(out);
  return st;
}

static void test_metrics(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  CU_ASSERT_FATAL(th_daemon_start(&d, NULL) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  /* 8 passages of 16 tokens, 3 of them cached: what the issue saw as "100%" */
  enum { CH = 8, T = 16 };
  int32_t tok[CH * T];
  for (int i = 0; i < CH * T; i++)
    tok[i] = 500 + i;
  kvs_model_id model = kvs_hash128_buf("ops-model", 9);
  kvs_wire_lookup_chunk chunks[CH];
  th_chunk ch[CH];
  for (int i = 0; i < CH; i++) {
    chunks[i].key = kvs_key_content(&model, tok + i * T, T);
    chunks[i].tok_off = (uint32_t)(i * T);
    chunks[i].tok_len = T;
    th_chunk_make(&ch[i], 700 + (uint64_t)i, T, 2000, 2);
    ch[i].model = model;
    memcpy(ch[i].tokens, tok + i * T, sizeof(int32_t) * T);
    ch[i].key = chunks[i].key;
  }
  CU_ASSERT_EQUAL(th_put(&c, &ch[1], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&c, &ch[4], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&c, &ch[6], 0), KVS_OK);
  uint8_t req[8192];
  size_t rn = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_lookup_req_encode(&model, KVS_WIRE_LOOKUP_EACH, chunks, CH, tok,
                                                   CH * T, req, sizeof req, &rn),
                        KVS_OK);
  uint8_t *rep = NULL;
  size_t rl = 0;
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_LOOKUP, 0, req, rn, &rep, &rl), KVS_OK);
  free(rep);
  /* PREFIX mode stops at the first miss (chunk 0): all 8 count as missed */
  CU_ASSERT_EQUAL_FATAL(kvs_wire_lookup_req_encode(&model, KVS_WIRE_LOOKUP_PREFIX, chunks, CH, tok,
                                                   CH * T, req, sizeof req, &rn),
                        KVS_OK);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_LOOKUP, 0, req, rn, &rep, &rl), KVS_OK);
  free(rep);
  /* GETs: two of a cached 2-segment value, one of an absent one */
  CU_ASSERT_EQUAL(th_get(&c, &ch[4], NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&c, &ch[4], NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&c, &ch[0], NULL, NULL), KVS_ENOENT);
  /* the start-up probe's connection is gone (pipes close asynchronously) */
  CU_ASSERT_EQUAL(clients_become(d.http_port, 1), 1);
  char *body = NULL;
  CU_ASSERT_EQUAL_FATAL(th_http(d.http_port, "GET", "/metrics", &body), 200);
  CU_ASSERT_PTR_NOT_NULL_FATAL(body);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_requests_total"), 2);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_chunks_total"), 2 * CH);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_chunks_hit_total"), 3);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_chunks_missed_total"), 2 * CH - 3);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_tokens_total"), 2 * CH * T);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_tokens_hit_total"), 3 * T);
  CU_ASSERT_EQUAL(metric(body, "kvstash_lookup_tokens_missed_total"), (2 * CH - 3) * T);
  CU_ASSERT_EQUAL(metric(body, "kvstash_get_hits_total"), 2);
  CU_ASSERT_EQUAL(metric(body, "kvstash_get_misses_total"), 1);
  CU_ASSERT_EQUAL(metric(body, "kvstash_puts_total"), 3);
  char bi[128];
  snprintf(bi, sizeof bi, "kvstash_build_info{version=\"%s\",wire_version=\"%u\"}",
           KVS_VERSION_STRING, (unsigned)KVS_WIRE_VERSION);
  CU_ASSERT_EQUAL(metric(body, bi), 1);
  double start = metric(body, "kvstash_start_time_seconds");
  CU_ASSERT(start > (double)time(NULL) - 600 && start <= (double)time(NULL) + 1);
  CU_ASSERT_EQUAL(metric(body, "kvstash_connected_clients{plane=\"message\"}"), 1);
  CU_ASSERT_EQUAL(metric(body, "kvstash_connected_clients{plane=\"stream\"}"), 0);
  CU_ASSERT(metric(body, "kvstash_tier_bytes{tier=\"ram\"}") >= 3 * 2000);
  CU_ASSERT(metric(body, "kvstash_tier_bytes{tier=\"disk\"}") >= 0);
  CU_ASSERT_EQUAL(metric(body, "kvstash_tier_bytes{tier=\"cold\"}"), 0);
  CU_ASSERT(metric(body, "kvstash_rocksdb{tier=\"disk\",property=\"estimate-num-keys\"}") >= 0);
  CU_ASSERT(!strstr(body, "tier=\"0\"") && !strstr(body, "tier=\"1\""));
  CU_ASSERT(!strstr(body, "kvstash_hits_total")); /* GETs are under their own name now */
  /* every family has HELP and TYPE, one each */
  int helps = 0, types = 0;
  for (const char *p = body; (p = strstr(p, "\n# ")) != NULL; p++) {
    helps += !strncmp(p, "\n# HELP ", 8);
    types += !strncmp(p, "\n# TYPE ", 8);
  }
  helps += !strncmp(body, "# HELP ", 7);
  CU_ASSERT(types >= 20);
  CU_ASSERT_EQUAL(helps, types);
  /* the exposition rules: clean here, and the checker does catch a break */
  CU_ASSERT_EQUAL(promlint(d.dir, body, 0), 0);
  CU_ASSERT_EQUAL(promlint(d.dir, "# TYPE kvstash_x counter\nkvstash_x 1\nkvstash_x 2\n", 1), 1);
  free(body);
  /* /v1/stats has the lookup counters too (the CLI reads them) */
  cJSON *j = get_json(d.http_port, "/v1/stats");
  CU_ASSERT_EQUAL(num(j, "lookup_chunks"), 2 * CH);
  CU_ASSERT_EQUAL(num(j, "lookup_tokens_hit"), 3 * T);
  cJSON_Delete(j);
  /* and the STATS frame */
  uint64_t v[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, v), KVS_OK);
  CU_ASSERT_EQUAL(v[KVS_STAT_LOOKUP_CHUNKS_HIT], 3);
  CU_ASSERT_EQUAL(v[KVS_STAT_LOOKUPS], 2);
  for (int i = 0; i < CH; i++)
    th_chunk_free(&ch[i]);
  th_close(&c);
  int st = th_daemon_stop(&d);
  CU_ASSERT_EQUAL(st, 0);
  th_daemon_cleanup(&d);
}

/* A config error: exit status 2 (the unit's RestartPreventExitStatus) and
 * one line on stderr, no usage dump. */
static void test_config_errors(void) {
  char cmd[800];
  int st = -1;
  snprintf(cmd, sizeof cmd, "%s --lissten=tcp://127.0.0.1:7000 2>&1", daemon_bin());
  char *out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 2);
  CU_ASSERT(out &&
            strcmp(out, "kvstashd: unknown option --lissten (did you mean --listen?)\n") == 0);
  free(out);
  char path[] = "/tmp/kvs-ops-conf-XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  const char *text = "# ports are checked\nlisten = tcp://127.0.0.1:78790\n";
  CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  snprintf(cmd, sizeof cmd, "%s -c %s 2>&1", daemon_bin(), path);
  out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 2);
  char want[300];
  snprintf(want, sizeof want,
           "kvstashd: %s:2: listen = \"tcp://127.0.0.1:78790\": HOST:PORT with a port of "
           "1..65535 (or ipc://PATH)\n",
           path);
  CU_ASSERT(out && strcmp(out, want) == 0);
  if (out && strcmp(out, want)) fprintf(stderr, "got: %s", out);
  free(out);
  snprintf(cmd, sizeof cmd, "%s -c %s --check-config 2>&1", daemon_bin(), path);
  out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 2);
  CU_ASSERT(out && strcmp(out, want) == 0);
  free(out);
  unlink(path);
  /* --check-config: the example config is OK (and nothing is started) */
  char bin[512]; /* kvs_test_*_path share one buffer */
  snprintf(bin, sizeof bin, "%s", daemon_bin());
  snprintf(cmd, sizeof cmd, "%s --check-config -c %s --workers=3 2>&1", bin,
           kvs_test_src_path("cachesvc/kvstashd.conf.example"));
  out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 0);
  CU_ASSERT(out && strcmp(out, "kvstashd: config OK\n") == 0);
  free(out);
  snprintf(cmd, sizeof cmd, "%s -c /nonexistent/kvstashd.conf --check-config 2>&1", daemon_bin());
  out = run(cmd, &st);
  CU_ASSERT_EQUAL(st, 2);
  CU_ASSERT(out &&
            strcmp(out, "kvstashd: /nonexistent/kvstashd.conf: No such file or directory\n") == 0);
  free(out);
}

/* Waits (bounded) for a datagram on fd containing want; 1 when one came. */
static int notified(int fd, const char *want, const char *also) {
  for (int i = 0; i < 100; i++) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 200) != 1) continue;
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) continue;
    buf[n] = 0;
    if (strstr(buf, want) && (!also || strstr(buf, also))) return 1;
  }
  return 0;
}

/* systemd's Type=notify: READY=1 (with the daemon's pid) once it serves,
 * STOPPING=1 on SIGTERM, on the datagram socket $NOTIFY_SOCKET names. */
static void test_notify(void) {
  char dir[] = "/tmp/kvs-notify-XXXXXX";
  CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s/notify", dir);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
  setenv("NOTIFY_SOCKET", sa.sun_path, 1);
  th_daemon d;
  memset(&d, 0, sizeof d);
  int started = th_daemon_start(&d, NULL) == 0;
  unsetenv("NOTIFY_SOCKET");
  CU_ASSERT(started);
  if (started) {
    char pid[32];
    snprintf(pid, sizeof pid, "MAINPID=%ld", (long)d.pid);
    CU_ASSERT(notified(fd, "READY=1", pid));
    int st = th_daemon_stop(&d);
    CU_ASSERT_EQUAL(st, 0);
    CU_ASSERT(notified(fd, "STOPPING=1", NULL));
  }
  th_daemon_cleanup(&d);
  close(fd);
  unlink(sa.sun_path);
  rmdir(dir);
}

static const kvs_test_case cases[] = {
    {"version", test_version}, {"info", test_info},
    {"metrics", test_metrics}, {"config_errors", test_config_errors},
    {"notify", test_notify},   {NULL, NULL},
};

int main(void) { return kvs_test_run("cachesvc_ops", cases); }
