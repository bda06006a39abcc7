/* test_cli.c - every verb of the `kvstash` CLI against a real kvstashd (auth
 * on: tenant "ten" with token "tok", admin token "adm"), JSON output parsed:
 * help and usage errors, an unreachable server (exit 3), wrong tokens (exit
 * 4), status, ls with filters, show, pin/unpin/ttl, bench, doctor, evict
 * (keys, --dry-run, --to-bytes, pinned kept), export/import round trip, and
 * a corrupt archive (the bad entry reported and skipped, the others
 * imported, nothing half-written). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_helper.h"
#include "kvs_test.h"
#include "svc_helper.h"

#define N_CHUNKS 6
static th_daemon g_d;
static th_conn g_c;
static th_chunk g_ch[N_CHUNKS];
static cli_env g_env;
static char g_http[64], g_dir[300];

static const char *hexkey(const kvs_key *k) {
  static char b[4][33];
  static int i;
  i = (i + 1) % 4;
  kvs_hash128_hex(k, b[i]);
  return b[i];
}

static int put_all(void) {
  for (int i = 0; i < N_CHUNKS; i++)
    if (th_put(&g_c, &g_ch[i], 0) != KVS_OK) return -1;
  return 0;
}

static int suite_init(void) {
  const char *extra[] = {"--tenant=ten:tok", "--admin_token=adm", NULL};
  if (th_daemon_start(&g_d, extra) != 0) return -1;
  if (th_connect(&g_c, g_d.url, "ten", "tok", 5000) != 0) return -1;
  /* sizes 8K..48K, so that size filters and byte targets can be told apart */
  for (int i = 0; i < N_CHUNKS; i++)
    th_chunk_make(&g_ch[i], 100 + (uint64_t)i, 16 + (uint32_t)i, 8192u * (uint32_t)(i + 1), 2);
  if (put_all() != 0) return -1;
  snprintf(g_http, sizeof g_http, "127.0.0.1:%d", g_d.http_port);
  snprintf(g_dir, sizeof g_dir, "%s", g_d.dir);
  g_env = (cli_env){.url = g_d.url,
                    .http = g_http,
                    .tenant = "ten",
                    .token = "tok",
                    .admin_token = "adm",
                    .model_path = "/nonexistent/model.gguf"};
  return 0;
}

static int suite_clean(void) {
  th_close(&g_c);
  th_daemon_stop(&g_d);
  th_daemon_cleanup(&g_d);
  for (int i = 0; i < N_CHUNKS; i++)
    th_chunk_free(&g_ch[i]);
  return 0;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = o ? cJSON_GetObjectItem(o, k) : NULL;
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static int count_entries(void) {
  cJSON *j;
  int rc = cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--limit", "0"));
  int n = rc == 0 ? (int)num(j, "matched") : -1;
  cJSON_Delete(j);
  return n;
}

/* ------------------------------------------------------------------ */
static void test_help_and_usage(void) {
  char *out;
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("--help")), 0);
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "exit codes") ? out : NULL);
  free(out);
  const char *verbs[] = {"status", "ls",     "show",   "evict", "pin",    "unpin", "ttl",
                         "export", "import", "warmup", "bench", "doctor", NULL};
  for (int i = 0; verbs[i]; i++) {
    CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS(verbs[i], "--help")), 0);
    CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "example") ? out : NULL);
    free(out);
  }
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("frobnicate")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ls", "--bogus")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ls", "--tier", "9")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ls", "--tier", "tape")), 2);
  /* --tier by the server's names (STATS tier rows) or numbers */
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ls", "--tier", "disk", "--limit", "1")), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ls", "--tier", "1", "--limit", "1")), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ttl", "abcd")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("show", "not-hex")), 2);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("--no-progress")), 2);
  /* --version: the CMake project version (kvs_version() of the same build) */
  char want[64];
  snprintf(want, sizeof want, "kvstash %s ", kvs_version());
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("--version")), 0);
  CU_ASSERT_PTR_NOT_NULL(out && !strncmp(out, want, strlen(want)) ? out : NULL);
  free(out);
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("-V")), 0);
  CU_ASSERT_PTR_NOT_NULL(out && !strncmp(out, want, strlen(want)) ? out : NULL);
  free(out);
}

static void test_unreachable(void) {
  char url[64];
  snprintf(url, sizeof url, "tcp://127.0.0.1:%d", th_free_port());
  cli_env e = g_env;
  e.url = url;
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&e, &j, CLI_ARGS("--timeout", "300", "status", "--json")), 3);
  CU_ASSERT_EQUAL(num(j, "exit"), 3);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("--timeout", "300", "ls")), 3);
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("--timeout", "300", "doctor")), 3);
  /* HTTP control plane down: show says so with 3 */
  e = g_env;
  char http[64];
  snprintf(http, sizeof http, "127.0.0.1:%d", th_free_port());
  e.http = http;
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("show", hexkey(&g_ch[0].key))), 3);
}

static void test_bad_url_and_config(void) {
  const char *bad[] = {"http://127.0.0.1:7878",
                       "tcp://127.0.0.1:78790",
                       "tcp://127.0.0.1",
                       "tcp://:7878",
                       "ipc://",
                       "nonsense",
                       NULL};
  for (int i = 0; bad[i]; i++) {
    cli_env e = g_env;
    e.url = bad[i];
    CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("status")), 2);
    CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("ls", "--json")), 2);
  }
  cli_env e = g_env;
  e.http = "127.0.0.1:0";
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("status")), 2);
  e = g_env;
  e.url = "tcp://127.0.0.1:1";
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("status", "--help")), 0); /* help needs no URL */
  /* -t NAME takes NAME's token from a kvstashd.conf (the file's first tenant
     is another one, with a # in its quoted token) */
  char conf[400];
  snprintf(conf, sizeof conf, "%s/kvstashd.conf", g_dir);
  FILE *f = fopen(conf, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fprintf(f,
          "listen = %s\nhttp = %s\ntenant = \"other:x#1\"\ntenant = ten:tok  # ours\n"
          "workers = 3\ncluster_zone = z1\n", /* kvstashd's keys: skipped */
          g_d.url, g_http);
  fclose(f);
  cli_env c = {.admin_token = "adm", .model_path = "/nonexistent/model.gguf"};
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&c, &j, CLI_ARGS("-c", conf, "-t", "ten", "ls", "--json")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), N_CHUNKS);
  cJSON_Delete(j);
  /* the first tenant (other, x#1) is the default: the daemon refuses it */
  CU_ASSERT_EQUAL(cli_run(&c, NULL, CLI_ARGS("-c", conf, "ls")), 4);
  /* a tenant the file does not name: no token, refused */
  CU_ASSERT_EQUAL(cli_run(&c, NULL, CLI_ARGS("-c", conf, "-t", "nobody", "ls")), 4);
  /* a token given wins over the file */
  CU_ASSERT_EQUAL(cli_run(&c, NULL, CLI_ARGS("-c", conf, "-t", "ten", "-k", "wrong", "ls")), 4);
  /* a config that does not parse: one line, exit 2 */
  f = fopen(conf, "w");
  fputs("tenant = \"unclosed\n", f);
  fclose(f);
  CU_ASSERT_EQUAL(cli_run(&c, NULL, CLI_ARGS("-c", conf, "ls")), 2);
  /* a key neither the CLI nor kvstashd knows: a typo, exit 2 with the nearest key */
  f = fopen(conf, "w");
  fputs("tenat = ten:tok\n", f);
  fclose(f);
  char *out = NULL, *err = NULL;
  CU_ASSERT_EQUAL(cli_run_err(&c, &out, &err, CLI_ARGS("-c", conf, "ls")), 2);
  CU_ASSERT(err && strstr(err, ":1: unknown key \"tenat\" (did you mean \"tenant\"?)\n") != NULL);
  free(out);
  free(err);
  unlink(conf);
}

static void test_wrong_token(void) {
  cli_env e = g_env;
  e.token = "wrong";
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&e, &j, CLI_ARGS("ls", "--json")), 4);
  const cJSON *err = j ? cJSON_GetObjectItem(j, "error") : NULL;
  CU_ASSERT(cJSON_IsString(err) && !strcmp(err->valuestring, "KVS_EAUTH"));
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("status")), 4);
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("doctor")), 4);
  e.token = NULL;
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("pin", hexkey(&g_ch[0].key))), 4);
  e = g_env;
  e.admin_token = "wrong";
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("show", hexkey(&g_ch[0].key))), 4);
}

static void test_status(void) {
  cJSON *j;
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j, CLI_ARGS("status", "--json")), 0);
  CU_ASSERT(num(j, "entries") >= N_CHUNKS);
  const cJSON *tiers = cJSON_GetObjectItem(j, "tiers");
  CU_ASSERT_EQUAL(cJSON_GetArraySize(tiers), 3);
  CU_ASSERT(num(cJSON_GetArrayItem(tiers, 1), "capacity") > 0);
  const cJSON *top = cJSON_GetObjectItem(j, "top_tenants");
  CU_ASSERT_EQUAL(cJSON_GetArraySize(top), 1);
  const cJSON *t0 = cJSON_GetArrayItem(top, 0), *nm = t0 ? cJSON_GetObjectItem(t0, "tenant") : NULL;
  CU_ASSERT(cJSON_IsString(nm) && !strcmp(nm->valuestring, "ten"));
  CU_ASSERT_EQUAL(num(t0, "entries"), N_CHUNKS);
  CU_ASSERT_EQUAL(num(cJSON_GetObjectItem(j, "tenant"), "entries"), N_CHUNKS);
  CU_ASSERT(num(j, "hit_rate") >= 0 && num(j, "hit_rate") <= 1);
  /* the server's version, pid, uptime and clients (from /v1/info) */
  const cJSON *srv = cJSON_GetObjectItem(j, "server");
  const cJSON *ver = cJSON_GetObjectItem(srv, "version");
  CU_ASSERT(cJSON_IsString(ver) && !strcmp(ver->valuestring, kvs_version()));
  CU_ASSERT_EQUAL(num(srv, "pid"), (double)g_d.pid);
  CU_ASSERT(num(srv, "uptime_s") >= 0 && num(srv, "uptime_s") < 3600);
  CU_ASSERT(num(srv, "connected_clients") >= 1); /* g_c at least */
  CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(srv, "admin_token_refused")));
  cJSON_Delete(j);
  char *out;
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("status")), 0);
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "hit rate") ? out : NULL);
  char pid[64];
  snprintf(pid, sizeof pid, "version %s, pid %d, up ", kvs_version(), (int)g_d.pid);
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, pid) ? out : NULL);
  free(out);
  /* a refused admin token is not hidden: said, and exit 4 (the data plane
     part still printed) */
  cli_env e = g_env;
  e.admin_token = "wrong";
  CU_ASSERT_EQUAL(cli_run(&e, &out, CLI_ARGS("status")), 4);
  CU_ASSERT_PTR_NOT_NULL(
      out && strstr(out, "admin token refused") && strstr(out, "entries") ? out : NULL);
  free(out);
  CU_ASSERT_EQUAL(cli_run_json(&e, &j, CLI_ARGS("status", "--json")), 4);
  srv = cJSON_GetObjectItem(j, "server");
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(srv, "admin_token_refused")));
  cJSON_Delete(j);
  e.admin_token = NULL;
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("status")), 4);
}

static void test_ls(void) {
  cJSON *j;
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), N_CHUNKS);
  const cJSON *items = cJSON_GetObjectItem(j, "items");
  CU_ASSERT_EQUAL(cJSON_GetArraySize(items), N_CHUNKS);
  int found = 0;
  for (int i = 0; i < cJSON_GetArraySize(items); i++) {
    const cJSON *k = cJSON_GetObjectItem(cJSON_GetArrayItem(items, i), "key");
    found += cJSON_IsString(k) && !strcmp(k->valuestring, hexkey(&g_ch[2].key));
  }
  CU_ASSERT_EQUAL(found, 1);
  cJSON_Delete(j);
  /* sizes are 8K * (i+1): at least 30K keeps 3 of them (32K, 40K, 48K) */
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--min-size", "30K")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), 3);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--sort", "size")), 0);
  items = cJSON_GetObjectItem(j, "items");
  CU_ASSERT_EQUAL(num(cJSON_GetArrayItem(items, 0), "bytes"), 8192.0 * N_CHUNKS);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j,
                               CLI_ARGS("ls", "--json", "--sort", "size", "--reverse", "--limit",
                                        "2", "--offset", "1")),
                  0);
  items = cJSON_GetObjectItem(j, "items");
  CU_ASSERT_EQUAL(cJSON_GetArraySize(items), 2);
  CU_ASSERT_EQUAL(num(cJSON_GetArrayItem(items, 0), "bytes"), 16384);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--model", "ffff")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), 0);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--older-than", "1d")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), 0);
  cJSON_Delete(j);
  char *out;
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("ls")), 0);
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "KEY") && strstr(out, "6 of 6") ? out : NULL);
  free(out);
}

static void test_show(void) {
  cJSON *j;
  const th_chunk *c = &g_ch[3];
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j, CLI_ARGS("show", hexkey(&c->key), "--json")), 0);
  const cJSON *k = cJSON_GetObjectItem(j, "key");
  CU_ASSERT(cJSON_IsString(k) && !strcmp(k->valuestring, hexkey(&c->key)));
  CU_ASSERT_EQUAL(num(j, "tokens"), c->n_tokens);
  CU_ASSERT_EQUAL(num(j, "bytes"), (double)c->vbytes);
  CU_ASSERT_EQUAL(num(j, "segments"), 2);
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "checksum_ok")));
  const cJSON *ids = cJSON_GetObjectItem(j, "token_ids");
  CU_ASSERT_EQUAL(cJSON_GetArraySize(ids), (int)c->n_tokens);
  CU_ASSERT_EQUAL(cJSON_GetArrayItem(ids, 0) ? cJSON_GetArrayItem(ids, 0)->valueint : -1,
                  c->tokens[0]);
  CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(j, "model_known")));
  cJSON_Delete(j);
  /* a key prefix resolves; a missing key is exit 1 */
  char prefix[9];
  memcpy(prefix, hexkey(&c->key), 8);
  prefix[8] = 0;
  char *out;
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("show", prefix)), 0);
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "ok (verified now)") ? out : NULL);
  free(out);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("show", "0123456789abcdef0123456789abcdef")), 1);
}

static int ls_field(const kvs_key *key, const char *field) {
  cJSON *j;
  int v = -1;
  if (cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--limit", "0")) == 0) {
    const cJSON *items = cJSON_GetObjectItem(j, "items");
    for (int i = 0; i < cJSON_GetArraySize(items); i++) {
      const cJSON *it = cJSON_GetArrayItem(items, i), *k = cJSON_GetObjectItem(it, "key");
      if (cJSON_IsString(k) && !strcmp(k->valuestring, hexkey(key))) {
        const cJSON *f = cJSON_GetObjectItem(it, field);
        v = cJSON_IsBool(f) ? cJSON_IsTrue(f) : cJSON_IsNumber(f) ? f->valueint : -2;
      }
    }
  }
  cJSON_Delete(j);
  return v;
}

static void test_pin_ttl(void) {
  const kvs_key *k = &g_ch[1].key;
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("pin", hexkey(k), "--json")), 0);
  CU_ASSERT_EQUAL(cJSON_GetArraySize(cJSON_GetObjectItem(j, "pinned")), 1);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(ls_field(k, "pinned"), 1);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--pinned")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), 1);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ttl", hexkey(k), "2h")), 0);
  CU_ASSERT_EQUAL(ls_field(k, "ttl_s"), 7200);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("ttl", hexkey(k), "0")), 0);
  CU_ASSERT_EQUAL(ls_field(k, "ttl_s"), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("unpin", hexkey(k))), 0);
  CU_ASSERT_EQUAL(ls_field(k, "pinned"), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("pin", "0123456789abcdef0123456789abcdef")), 1);
}

static void test_bench(void) {
  cJSON *j;
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j,
                                     CLI_ARGS("bench", "--seconds", "0.3", "--entries", "2",
                                              "--size", "16K", "--json")),
                        0);
  CU_ASSERT(num(j, "gets") > 0);
  CU_ASSERT(num(j, "put_per_s") > 0);
  CU_ASSERT(num(j, "get_p99_ms") >= num(j, "get_p50_ms"));
  cJSON_Delete(j);
  /* people's output ends with a JSON line */
  char *out;
  CU_ASSERT_EQUAL(cli_run(&g_env, &out,
                          CLI_ARGS("bench", "--seconds", "0.2", "--entries", "1", "--size", "8K")),
                  0);
  char *last = out ? strrchr(out, '{') : NULL;
  cJSON *l = last ? cJSON_Parse(last) : NULL;
  CU_ASSERT(num(l, "gets") > 0);
  cJSON_Delete(l);
  free(out);
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS); /* the bench cleaned up after itself */
}

/* The status (0 ok, 1 warn, 2 fail, -1 absent) of doctor's check NAME. */
static int check_status(const cli_env *env, const char *name) {
  cJSON *j;
  cli_run_json(env, &j, CLI_ARGS("doctor", "--json"));
  const cJSON *arr = j ? cJSON_GetObjectItem(j, "checks") : NULL;
  int st = -1;
  for (int i = 0; i < cJSON_GetArraySize(arr); i++) {
    const cJSON *c = cJSON_GetArrayItem(arr, i), *n = cJSON_GetObjectItem(c, "check"),
                *s = cJSON_GetObjectItem(c, "status");
    if (cJSON_IsString(n) && cJSON_IsString(s) && !strcmp(n->valuestring, name))
      st = !strcmp(s->valuestring, "ok") ? 0 : !strcmp(s->valuestring, "warn") ? 1 : 2;
  }
  cJSON_Delete(j);
  return st;
}

static void test_doctor(void) {
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("doctor", "--json")), 0);
  CU_ASSERT_EQUAL(num(j, "failed"), 0);
  CU_ASSERT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "checks")) >= 6);
  cJSON_Delete(j);
  /* the model file is not a GGUF: a failed check, exit 1 */
  char bad[400];
  snprintf(bad, sizeof bad, "%s/not-a-model.gguf", g_dir);
  FILE *f = fopen(bad, "w");
  if (f) fputs("not a model", f), fclose(f);
  cli_env e = g_env;
  e.model_path = bad;
  CU_ASSERT_EQUAL(cli_run_json(&e, &j, CLI_ARGS("doctor", "--json")), 1);
  CU_ASSERT_EQUAL(num(j, "failed"), 1);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(check_status(&g_env, "auth"), 0); /* on: tenant ten with a token */
  /* a kvstashd without tenants: auth off is a warning (not a failure) */
  th_daemon open;
  memset(&open, 0, sizeof open); /* th_daemon_start reads its fields (a zeroed one is fresh) */
  CU_ASSERT_EQUAL_FATAL(th_daemon_start(&open, NULL), 0);
  char http[64];
  snprintf(http, sizeof http, "127.0.0.1:%d", open.http_port);
  cli_env o = {
      .url = open.url, .http = http, .tenant = "default", .model_path = "/nonexistent/model.gguf"};
  CU_ASSERT_EQUAL(check_status(&o, "auth"), 1);
  char *out;
  cli_run(&o, &out, CLI_ARGS("doctor"));
  CU_ASSERT_PTR_NOT_NULL(out && strstr(out, "auth is off") ? out : NULL);
  free(out);
  th_daemon_stop(&open);
  th_daemon_cleanup(&open);
}

static void test_evict(void) {
  cJSON *j;
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("evict", "--all", "--dry-run", "--json")), 0);
  CU_ASSERT_EQUAL(num(j, "count"), N_CHUNKS);
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "dry_run")));
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", hexkey(&g_ch[0].key))), 0);
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS - 1);
  uint8_t *v = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL(th_get(&g_c, &g_ch[0], &v, &n), KVS_ENOENT);
  free(v);
  /* down to 60K: the tenant holds 8K*(2+..+6) = 160K; pinned chunk 5 (48K) stays */
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("pin", hexkey(&g_ch[5].key))), 0);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("evict", "--to-bytes", "60K", "--json")), 0);
  CU_ASSERT(num(j, "count") >= 2);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json")), 0);
  CU_ASSERT(num(j, "matched_bytes") <= 60 * 1024);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(ls_field(&g_ch[5].key, "pinned"), 1);
  /* a target the pinned 48K entry keeps out of reach: said first; the dry run
     exits 0 with target_reachable false, the real one 1 (after evicting what
     it may) */
  char *out;
  CU_ASSERT_EQUAL(
      cli_run_json(&g_env, &j, CLI_ARGS("evict", "--to-bytes", "40K", "--dry-run", "--json")), 0);
  CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(j, "target_reachable")));
  CU_ASSERT_EQUAL(num(j, "bytes_left"), 48 * 1024);
  CU_ASSERT_EQUAL(num(j, "pinned_bytes"), 48 * 1024);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(
      cli_run_json(&g_env, &j, CLI_ARGS("evict", "--to-bytes", "100K", "--dry-run", "--json")), 0);
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "target_reachable")));
  cJSON_Delete(j);
  int before = count_entries();
  CU_ASSERT_EQUAL(cli_run(&g_env, &out, CLI_ARGS("evict", "--to-bytes", "40K")), 1);
  free(out);
  CU_ASSERT_EQUAL(count_entries(), 1); /* every unpinned entry went, the pinned one stays */
  CU_ASSERT(before >= 1);
  CU_ASSERT_EQUAL(put_all(), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("pin", hexkey(&g_ch[5].key))), 0);
  /* --all asks for --yes (exit 2, nothing deleted) */
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", "--all")), 2);
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", "--all", "--yes")), 0); /* pinned stays */
  CU_ASSERT_EQUAL(count_entries(), 1);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", "--all", "--include-pinned", "--yes")),
                  0);
  CU_ASSERT_EQUAL(count_entries(), 0);
  CU_ASSERT_EQUAL(put_all(), 0);
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS);
}

/* Byte offset of the value of entry i in an archive (archive.h layout). */
static long value_offset(const unsigned char *a, size_t n, int i) {
  size_t off = 32;
  for (int k = 0; off + 40 <= n; k++) {
    uint32_t ml = (uint32_t)a[off + 4] | (uint32_t)a[off + 5] << 8 | (uint32_t)a[off + 6] << 16 |
                  (uint32_t)a[off + 7] << 24;
    uint64_t vl = 0;
    for (int b = 7; b >= 0; b--)
      vl = vl << 8 | a[off + 8 + b];
    if (k == i) return (long)(off + 40 + ml);
    off += 40 + ml + vl;
  }
  return -1;
}

static int write_file(const char *path, const unsigned char *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(p, 1, n, f);
  return fclose(f) == 0 && w == n ? 0 : -1;
}

static void test_export_import(void) {
  char arc[400], bad[400], cut[400];
  snprintf(arc, sizeof arc, "%s/all.kvsa", g_dir);
  snprintf(bad, sizeof bad, "%s/bad.kvsa", g_dir);
  snprintf(cut, sizeof cut, "%s/cut.kvsa", g_dir);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("pin", hexkey(&g_ch[4].key))), 0);
  cJSON *j;
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j, CLI_ARGS("export", arc, "--json", "--page", "2")),
                        0);
  CU_ASSERT_EQUAL(num(j, "entries"), N_CHUNKS);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("import", "--verify-only", arc)), 0);

  /* round trip: everything back, bytes and pin included */
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", "--all", "--include-pinned", "--yes")),
                  0);
  CU_ASSERT_EQUAL(count_entries(), 0);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("import", arc, "--json")), 0);
  CU_ASSERT_EQUAL(num(j, "imported"), N_CHUNKS);
  cJSON_Delete(j);
  for (int i = 0; i < N_CHUNKS; i++) {
    uint8_t *v = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(th_get(&g_c, &g_ch[i], &v, &n), KVS_OK);
    CU_ASSERT(n == g_ch[i].vbytes && v && !memcmp(v, g_ch[i].value, n));
    free(v);
  }
  CU_ASSERT_EQUAL(ls_field(&g_ch[4].key, "pinned"), 1);

  /* one flipped byte in entry 2's value: reported, skipped; others imported */
  size_t n = 0;
  unsigned char *a = kvs_test_read_file(arc, &n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(a);
  long vo = value_offset(a, n, 2);
  CU_ASSERT_FATAL(vo > 0);
  a[vo + 100] ^= 0x5A;
  CU_ASSERT_EQUAL(write_file(bad, a, n), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("evict", "--all", "--include-pinned", "--yes")),
                  0);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("import", bad, "--json")), 1);
  CU_ASSERT_EQUAL(num(j, "imported"), N_CHUNKS - 1);
  CU_ASSERT_EQUAL(num(j, "bad"), 1);
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "complete")));
  const cJSON *sk = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "skipped"), 0);
  CU_ASSERT_EQUAL(num(sk, "index"), 2);
  const cJSON *kk = sk ? cJSON_GetObjectItem(sk, "key") : NULL;
  int bad_i = -1;
  for (int i = 0; i < N_CHUNKS && cJSON_IsString(kk); i++)
    if (!strcmp(kk->valuestring, hexkey(&g_ch[i].key))) bad_i = i;
  CU_ASSERT(bad_i >= 0);
  cJSON_Delete(j);
  for (int i = 0; i < N_CHUNKS; i++) { /* nothing half-written: the bad one is absent */
    uint8_t *v = NULL;
    size_t vn = 0;
    CU_ASSERT_EQUAL(th_get(&g_c, &g_ch[i], &v, &vn), i == bad_i ? KVS_ENOENT : KVS_OK);
    if (i != bad_i) CU_ASSERT(vn == g_ch[i].vbytes && v && !memcmp(v, g_ch[i].value, vn));
    free(v);
  }
  CU_ASSERT_EQUAL(count_entries(), N_CHUNKS - 1);

  /* truncated in the middle of entry 3: the first 3 go in, then it stops */
  long cut_at = value_offset(a, n, 3) + 10;
  a[vo + 100] ^= 0x5A;
  CU_ASSERT_EQUAL(write_file(cut, a, (size_t)cut_at), 0);
  CU_ASSERT_EQUAL(cli_run_json(&g_env, &j, CLI_ARGS("import", cut, "--json")), 1);
  CU_ASSERT_EQUAL(num(j, "imported"), 3);
  CU_ASSERT(cJSON_IsFalse(cJSON_GetObjectItem(j, "complete")));
  cJSON_Delete(j);
  /* not an archive at all */
  CU_ASSERT_EQUAL(write_file(cut, (const unsigned char *)"hello", 5), 0);
  CU_ASSERT_EQUAL(cli_run(&g_env, NULL, CLI_ARGS("import", cut)), 1);
  free(a);
  CU_ASSERT_EQUAL(put_all(), 0);
}

int main(void) {
  static const kvs_test_case cases[] = {{"help_and_usage", test_help_and_usage},
                                        {"unreachable", test_unreachable},
                                        {"bad_url_and_config", test_bad_url_and_config},
                                        {"wrong_token", test_wrong_token},
                                        {"status", test_status},
                                        {"ls", test_ls},
                                        {"show", test_show},
                                        {"pin_ttl", test_pin_ttl},
                                        {"bench", test_bench},
                                        {"doctor", test_doctor},
                                        {"evict", test_evict},
                                        {"export_import", test_export_import},
                                        {NULL, NULL}};
  return kvs_test_run_fixture("cli", cases, suite_init, suite_clean);
}
