/* kvs_test.h - the small layer over CUnit that every test binary uses.
 *
 *   static void test_x(void) { CU_ASSERT_EQUAL(...); }
 *   static const kvs_test_case cases[] = {{"x", test_x}, {NULL, NULL}};
 *   int main(void) { return kvs_test_run("core", cases); }
 *
 * kvs_test_run returns 0 when every test passed, 1 on a failure, and
 * KVS_TEST_SKIP (77, ctest's "skipped") when a suite's precondition is absent. */
#ifndef KVS_TEST_H
#define KVS_TEST_H
#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <stddef.h>

#define KVS_TEST_SKIP 77

typedef struct kvs_test_case {
  const char *name;
  void (*fn)(void);
} kvs_test_case;

int kvs_test_run(const char *suite, const kvs_test_case *cases);
/* Same with set-up/tear-down for the suite (CUnit's init/clean: 0 = ok). */
int kvs_test_run_fixture(const char *suite, const kvs_test_case *cases, int (*init)(void),
                         int (*clean)(void));

/* Path helpers: $KVS_SOURCE_DIR / $KVS_BUILD_DIR (set by ctest) joined with rel. */
const char *kvs_test_src_path(const char *rel);   /* static buffer, valid until next call */
const char *kvs_test_build_path(const char *rel); /* static buffer, valid until next call */
/* Path of the fetched SmolLM2 GGUF ($KVS_MODEL_PATH, or the model cache), or
 * NULL when it is not there (tests then skip with a message). */
const char *kvs_test_model_path(void);
/* Reads a whole file into a new buffer (one spare byte at the end); *n gets
 * its size. NULL when it cannot be opened or read. The caller frees it. */
unsigned char *kvs_test_read_file(const char *path, size_t *n);
/* Deterministic pseudo-random numbers for test data (splitmix64). */
unsigned long long kvs_test_rand(unsigned long long *state);
float kvs_test_randf(unsigned long long *state); /* uniform in [-1, 1) */
#endif
