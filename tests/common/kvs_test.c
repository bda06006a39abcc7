#include "kvs_test.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

/* Watchdog ($KVS_TEST_WATCHDOG_S, set by kvs_add_test a little under the
 * ctest timeout): a test still running then prints the backtraces of its
 * threads and of its child processes (a kvstashd it started), through gdb
 * where it is installed, and exits 1, so a hang leaves evidence in the log
 * instead of a bare ctest timeout. */
static void *watchdog(void *arg) {
  long secs = (long)(intptr_t)arg;
  struct timespec ts = {secs, 0};
  while (nanosleep(&ts, &ts) != 0) {
  }
  fprintf(stderr, "\nkvs_test watchdog: still running after %ld s; backtraces follow\n", secs);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "kids=$(pgrep -P %d | grep -vx $$); command -v gdb >/dev/null && "
           "for p in %d $kids; do echo \"== pid $p\"; "
           "timeout 60 gdb -p $p -batch -nx -ex 'thread apply all bt' 2>/dev/null | "
           "grep -E '^(Thread|#)'; done >&2; [ -n \"$kids\" ] && kill -9 $kids; true",
           (int)getpid(), (int)getpid());
  if (system(cmd) != 0) fprintf(stderr, "kvs_test watchdog: no backtraces (gdb missing?)\n");
  _exit(1);
}

static void start_watchdog(void) {
  const char *w = getenv("KVS_TEST_WATCHDOG_S");
  long secs = w ? strtol(w, NULL, 10) : 0;
  if (secs <= 0) return;
#ifdef PR_SET_PTRACER
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0); /* let gdb attach under yama */
#endif
  pthread_t th;
  if (pthread_create(&th, NULL, watchdog, (void *)(intptr_t)secs) == 0) pthread_detach(th);
}

int kvs_test_run_fixture(const char *suite, const kvs_test_case *cases, int (*init)(void),
                         int (*clean)(void)) {
  /* unbuffered: when ctest kills a hung test, its log still shows which case hung */
  setvbuf(stdout, NULL, _IONBF, 0);
  start_watchdog();
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite s = CU_add_suite(suite, init, clean);
  if (!s) {
    CU_cleanup_registry();
    return 1;
  }
  for (const kvs_test_case *c = cases; c->name; c++)
    if (!CU_add_test(s, c->name, c->fn)) {
      CU_cleanup_registry();
      return 1;
    }
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  unsigned ran = CU_get_number_of_tests_run();
  int suite_failed = CU_get_number_of_suites_failed();
  CU_cleanup_registry();
  if (suite_failed || failed) return 1;
  return ran > 0 ? 0 : 1;
}

int kvs_test_run(const char *suite, const kvs_test_case *cases) {
  return kvs_test_run_fixture(suite, cases, NULL, NULL);
}

static const char *join(const char *env, const char *fallback, const char *rel) {
  static char buf[4096];
  const char *base = getenv(env);
  if (!base) base = fallback;
  snprintf(buf, sizeof buf, "%s/%s", base, rel);
  return buf;
}

const char *kvs_test_src_path(const char *rel) { return join("KVS_SOURCE_DIR", ".", rel); }
const char *kvs_test_build_path(const char *rel) { return join("KVS_BUILD_DIR", ".", rel); }

const char *kvs_test_model_path(void) {
  static char buf[4096];
  const char *p = getenv("KVS_MODEL_PATH");
  if (p && access(p, R_OK) == 0) return p;
  const char *dir = getenv("KVS_MODEL_DIR");
  if (dir)
    snprintf(buf, sizeof buf, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
  else
    snprintf(buf, sizeof buf, "%s/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             getenv("HOME") ? getenv("HOME") : "/root");
  return access(buf, R_OK) == 0 ? buf : NULL;
}

unsigned char *kvs_test_read_file(const char *path, size_t *n) {
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = sz >= 0 ? malloc((size_t)sz + 1) : NULL;
  if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *n = b ? (size_t)sz : 0;
  return b;
}

unsigned long long kvs_test_rand(unsigned long long *s) {
  unsigned long long z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

float kvs_test_randf(unsigned long long *s) {
  return (float)((kvs_test_rand(s) >> 40) * (1.0 / 16777216.0) * 2.0 - 1.0);
}
