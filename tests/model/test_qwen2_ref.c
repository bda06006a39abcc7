/* Qwen2.5-Coder (0.5B and 1.5B, tools/fetch-model) against llama.cpp: top-1
 * at every position of the fixture prompts (tests/model/fixtures/qwen2_*,
 * made by tools/llamacpp/make_qwen2_fixtures.py) whose llama.cpp top-2 margin
 * exceeds TOP8_MARGIN_TOL, near-ties counted and printed, and |logit
 * difference| over llama.cpp's top-8 under TOP8_LOGIT_TOL (top8_fixture.h:
 * the same stated tolerances as SmolLM2's). Each model is checked when it is in the model cache
 * ($KVS_MODEL_DIR or ~/.cache/kvstash/models) and KVS_QWEN2_TESTS=1 (the two
 * take about 6 minutes of a shared 2-core box and 12 GB of memory, so a plain
 * ctest run does not start them); exit 77 otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_model.h"
#include "kvs_test.h"
#include "top8_fixture.h"

static const struct {
  const char *tag, *file;
} MODELS[] = {{"0.5b", "qwen2.5-coder-0.5b-instruct.gguf"},
              {"1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}};

static const char *model_path(int i) {
  static char buf[4096];
  const char *dir = getenv("KVS_MODEL_DIR"), *home = getenv("HOME");
  if (dir)
    snprintf(buf, sizeof buf, "%s/%s", dir, MODELS[i].file);
  else
    snprintf(buf, sizeof buf, "%s/.cache/kvstash/models/%s", home ? home : ".", MODELS[i].file);
  return access(buf, R_OK) == 0 ? buf : NULL;
}

static void check_model(int mi) {
  const char *path = model_path(mi);
  if (!path) {
    printf("\n  %s: not in the model cache, skipped", MODELS[mi].tag);
    return;
  }
  char rel[128];
  snprintf(rel, sizeof rel, "tests/model/fixtures/qwen2_%s_top8.dat", MODELS[mi].tag);
  size_t ln;
  uint8_t *l = kvs_test_read_file(kvs_test_src_path(rel), &ln);
  CU_ASSERT_PTR_NOT_NULL_FATAL(l);
  kvs_model *m;
  CU_ASSERT_EQUAL_FATAL(kvs_model_load(path, &m), KVS_OK);
  top8_score sc = {0};
  CU_ASSERT_EQUAL(top8_run_cpu(m, l, ln, &sc), KVS_OK);
  char tag[16];
  snprintf(tag, sizeof tag, "%s: ", MODELS[mi].tag);
  top8_print(tag, &sc);
  CU_ASSERT(sc.positions > 500);
  CU_ASSERT_EQUAL(sc.agree, sc.checked);
  CU_ASSERT(sc.max_err < TOP8_LOGIT_TOL);
  kvs_model_free(m);
  free(l);
}

static void test_05b(void) { check_model(0); }
static void test_15b(void) { check_model(1); }

int main(void) {
  const char *on = getenv("KVS_QWEN2_TESTS");
  if (!on || strcmp(on, "1")) {
    printf("KVS_QWEN2_TESTS=1 not set (the Qwen2 checks take minutes): skipped\n");
    return KVS_TEST_SKIP;
  }
  if (!model_path(0) && !model_path(1)) {
    printf("no Qwen2.5-Coder in the model cache (tools/fetch-model qwen2.5-coder-0.5b): skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {{"Qwen2.5-Coder-0.5B vs llama.cpp", test_05b},
                                        {"Qwen2.5-Coder-1.5B vs llama.cpp", test_15b},
                                        {NULL, NULL}};
  return kvs_test_run("model_qwen2_ref", cases);
}
