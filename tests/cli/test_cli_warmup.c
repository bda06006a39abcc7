/* test_cli_warmup.c - `kvstash warmup` through the reference engine (SmolLM2
 * from the model cache; skipped with 77 where it is absent): two short text
 * documents become content chunks in a real kvstashd, a second run finds them
 * cached, and `show` decodes an entry's tokens back to text. Kept short: the
 * CPU forward is slow under ASan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_helper.h"
#include "kvs_test.h"
#include "svc_helper.h"

static th_daemon g_d;
static cli_env g_env;
static char g_http[64];
static const char *g_model;

static int suite_init(void) {
  if (th_daemon_start(&g_d, NULL) != 0) return -1;
  snprintf(g_http, sizeof g_http, "127.0.0.1:%d", g_d.http_port);
  g_env = (cli_env){.url = g_d.url, .http = g_http, .tenant = "docs", .model_path = g_model};
  return 0;
}

static int suite_clean(void) {
  th_daemon_stop(&g_d);
  th_daemon_cleanup(&g_d);
  return 0;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = o ? cJSON_GetObjectItem(o, k) : NULL;
  return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static void test_warmup(void) {
  char a[400], b[400];
  snprintf(a, sizeof a, "%s/a.txt", g_d.dir);
  snprintf(b, sizeof b, "%s/b.jsonl", g_d.dir);
  FILE *f = fopen(a, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("The Eiffel Tower is in Paris. It was built for the 1889 World Fair.", f);
  fclose(f);
  f = fopen(b, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("{\"title\": \"Everest\", \"text\": \"Mount Everest is the highest mountain.\"}\n", f);
  fclose(f);
  cJSON *j;
  /* the bar (forced on: stderr is no terminal here) knows its total up front:
     tokens, a rate, an ETA, and ends at 100% of that total */
  char *out = NULL, *err = NULL;
  setenv("KVS_PROGRESS", "always", 1);
  CU_ASSERT_EQUAL_FATAL(
      cli_run_err(&g_env, &out, &err,
                  CLI_ARGS("warmup", a, b, "--chunk-tokens", "12", "--profile", "int8", "--json")),
      0);
  unsetenv("KVS_PROGRESS");
  j = out ? cJSON_Parse(out) : NULL;
  free(out);
  const char *last = err ? strrchr(err, '\r') : NULL;
  CU_ASSERT_PTR_NOT_NULL_FATAL(last);
  unsigned long long done = 0, total = 0;
  const char *pct = strstr(last, "100% ");
  CU_ASSERT_PTR_NOT_NULL(pct);
  CU_ASSERT(pct && sscanf(pct, "100%% %llu/%llu", &done, &total) == 2);
  CU_ASSERT(total > 0 && done == total);
  CU_ASSERT_EQUAL(total, (unsigned long long)num(j, "tokens")); /* every token computed */
  CU_ASSERT_PTR_NOT_NULL(strstr(last, "tokens/s"));
  CU_ASSERT_PTR_NOT_NULL(strstr(last, "ETA"));
  CU_ASSERT_PTR_NOT_NULL(strstr(last, "warmup ["));
  free(err);
  int computed = (int)num(j, "computed");
  CU_ASSERT(computed >= 2);
  CU_ASSERT_EQUAL(num(j, "already_cached"), 0);
  CU_ASSERT(num(j, "stored_bytes") > 0);
  cJSON_Delete(j);
  /* again: every chunk is found cached, nothing computed */
  CU_ASSERT_EQUAL(
      cli_run_json(&g_env, &j,
                   CLI_ARGS("warmup", a, b, "--chunk-tokens", "12", "--profile", "int8", "--json")),
      0);
  CU_ASSERT_EQUAL(num(j, "computed"), 0);
  CU_ASSERT_EQUAL(num(j, "already_cached"), computed);
  cJSON_Delete(j);
  CU_ASSERT_EQUAL_FATAL(
      cli_run_json(&g_env, &j, CLI_ARGS("ls", "--json", "--sort", "created", "--reverse")), 0);
  CU_ASSERT_EQUAL(num(j, "matched"), computed);
  const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "items"), 0);
  const cJSON *k = first ? cJSON_GetObjectItem(first, "key") : NULL;
  char key[33] = "";
  if (cJSON_IsString(k)) snprintf(key, sizeof key, "%s", k->valuestring);
  cJSON_Delete(j);
  /* the first chunk of a.txt, decoded back to text by the same model */
  CU_ASSERT_EQUAL_FATAL(cli_run_json(&g_env, &j, CLI_ARGS("show", key, "--json")), 0);
  CU_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(j, "model_known")));
  const cJSON *t = cJSON_GetObjectItem(j, "text");
  CU_ASSERT(cJSON_IsString(t) && strstr(t->valuestring, "Eiffel"));
  cJSON_Delete(j);
  /* a model that is not there: exit 1 and a message */
  cli_env e = g_env;
  e.model_path = "/nonexistent/model.gguf";
  CU_ASSERT_EQUAL(cli_run(&e, NULL, CLI_ARGS("warmup", a)), 1);
}

int main(void) {
  g_model = kvs_test_model_path();
  if (!g_model) {
    fprintf(stderr, "cli_warmup: no SmolLM2 GGUF (KVS_MODEL_PATH or the model cache): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {{"warmup", test_warmup}, {NULL, NULL}};
  return kvs_test_run_fixture("cli_warmup", cases, suite_init, suite_clean);
}
