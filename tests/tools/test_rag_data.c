/* test_rag_data.c - the MuSiQue subset the repository carries
 * (data/rag/musique_s.json.zst, data/README.md) read the way every tool reads
 * it (kvs_rag_load: zstd decompressed on the fly), a plain copy read the same,
 * and a truncated or missing file refused with its code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_rag.h"
#include "kvs_test.h"

static char g_dir[] = "/tmp/kvs-rag-data.XXXXXX";

static void test_repo_copy(void) {
  /* the default is the repo's copy (no --data, no KVS_RAG_DATA) */
  unsetenv("KVS_RAG_DATA");
  const char *p = kvs_rag_data_path(NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(strstr(p, "data/rag/musique_s.json.zst"));
  CU_ASSERT_STRING_EQUAL(kvs_rag_data_path("x.json"), "x.json");
  char *buf = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_rag_read(p, &buf, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, 3760082); /* data/README.md: the decompressed size */
  CU_ASSERT_EQUAL(strlen(buf), n);
  CU_ASSERT_EQUAL(buf[0], '[');
  free(buf);

  kvs_rag_item *it = NULL;
  size_t ni = 0;
  CU_ASSERT_EQUAL_FATAL(kvs_rag_load(p, &it, &ni), KVS_OK);
  CU_ASSERT_EQUAL(ni, 150);
  CU_ASSERT_STRING_EQUAL(it[0].question,
                         "Where was the author of Hannibal and Scipio educated at?");
  for (size_t i = 0; i < ni; i++) {
    CU_ASSERT_EQUAL(it[i].n_passages, 10);
    CU_ASSERT(it[i].n_answers >= 1);
  }
  kvs_rag_items_free(it, ni);
}

static void test_plain_and_bad(void) {
  char *z = NULL;
  size_t zn = 0;
  /* the raw bytes of the .zst (a plain read would be what a reader without
     decompression sees) */
  FILE *f = fopen(kvs_rag_data_path(NULL), "rb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  z = malloc(400000);
  zn = fread(z, 1, 400000, f);
  fclose(f);
  CU_ASSERT(zn > 1000 && zn < 400000);

  char path[256];
  /* a truncated frame: KVS_ECORRUPT, nothing returned */
  snprintf(path, sizeof path, "%s/cut.json.zst", g_dir);
  f = fopen(path, "wb");
  fwrite(z, 1, zn / 2, f);
  fclose(f);
  kvs_rag_item *it = (kvs_rag_item *)1;
  size_t ni = 7;
  CU_ASSERT_EQUAL(kvs_rag_load(path, &it, &ni), KVS_ECORRUPT);
  CU_ASSERT_PTR_NULL(it);
  CU_ASSERT_EQUAL(ni, 0);
  /* a frame header alone (content size claimed, no data) */
  f = fopen(path, "wb");
  fwrite(z, 1, 12, f);
  fclose(f);
  CU_ASSERT_EQUAL(kvs_rag_load(path, &it, &ni), KVS_ECORRUPT);
  free(z);

  /* a plain JSON copy reads as it is; $KVS_RAG_DATA picks it */
  snprintf(path, sizeof path, "%s/two.json", g_dir);
  f = fopen(path, "wb");
  fputs("[{\"question\":\"q1\",\"answers\":[\"a\"],\"ctxs\":[{\"title\":\"t\",\"text\":\"x\"}]},"
        "{\"question\":\"q2\",\"answers\":[],\"ctxs\":[]}]",
        f);
  fclose(f);
  setenv("KVS_RAG_DATA", path, 1);
  CU_ASSERT_STRING_EQUAL(kvs_rag_data_path(NULL), path);
  CU_ASSERT_EQUAL_FATAL(kvs_rag_load(kvs_rag_data_path(NULL), &it, &ni), KVS_OK);
  CU_ASSERT_EQUAL(ni, 2);
  CU_ASSERT_STRING_EQUAL(it[1].question, "q2");
  CU_ASSERT_STRING_EQUAL(it[0].text[0], "x");
  kvs_rag_items_free(it, ni);
  unsetenv("KVS_RAG_DATA");
  unlink(path);
  snprintf(path, sizeof path, "%s/cut.json.zst", g_dir);
  unlink(path);

  snprintf(path, sizeof path, "%s/none.json.zst", g_dir);
  CU_ASSERT_EQUAL(kvs_rag_load(path, &it, &ni), KVS_ENOENT);
}

/* The fuzz seeds (tests/tools/corpus_rag_data/) as golden vectors: what
 * each must give through kvs_rag_parse. */
static void test_seeds(void) {
  static const struct {
    const char *file;
    kvs_err want;
    size_t items, passages; /* of item 0 when OK */
  } seeds[] = {{"ok.json", KVS_OK, 1, 2},
               {"ok.json.zst", KVS_OK, 1, 2},
               {"empty_array.json", KVS_OK, 0, 0},
               {"many_passages.json", KVS_OK, 1, KVS_RAG_MAX_PASSAGES},
               {"odd_types.json", KVS_OK, 1, 3},
               {"not_array.json", KVS_ECORRUPT, 0, 0},
               {"answers_not_array.json", KVS_ECORRUPT, 0, 0},
               {"question_not_string.json", KVS_ECORRUPT, 0, 0},
               {"cut.json", KVS_ECORRUPT, 0, 0},
               {"cut.json.zst", KVS_ECORRUPT, 0, 0},
               {"huge_size.json.zst", KVS_ECORRUPT, 0, 0},
               {"magic_only.zst", KVS_ECORRUPT, 0, 0}};
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    char rel[128];
    snprintf(rel, sizeof rel, "tests/tools/corpus_rag_data/%s", seeds[i].file);
    size_t n;
    uint8_t *d = kvs_test_read_file(kvs_test_src_path(rel), &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    kvs_rag_item *it = NULL;
    size_t ni = 0;
    kvs_err e = kvs_rag_parse((const char *)d, n, &it, &ni);
    if (e != seeds[i].want) fprintf(stderr, "%s: %s\n", seeds[i].file, kvs_errname(e));
    CU_ASSERT_EQUAL(e, seeds[i].want);
    CU_ASSERT_EQUAL(ni, seeds[i].items);
    if (e == KVS_OK && ni) {
      CU_ASSERT_EQUAL(it[0].n_passages, seeds[i].passages);
      CU_ASSERT_STRING_EQUAL(it[0].text[it[0].n_passages - 1],
                             !strcmp(seeds[i].file, "many_passages.json") ? "p15"
                             : !strcmp(seeds[i].file, "odd_types.json")   ? ""
                                                                          : "z");
    }
    kvs_rag_items_free(it, ni);
    free(d);
  }
}

int main(void) {
  if (!mkdtemp(g_dir)) return 1;
  static const kvs_test_case cases[] = {{"the repo's MuSiQue copy", test_repo_copy},
                                        {"plain, truncated, missing", test_plain_and_bad},
                                        {"fuzz seeds as golden vectors", test_seeds},
                                        {NULL, NULL}};
  int rc = kvs_test_run("rag_data", cases);
  rmdir(g_dir);
  return rc;
}
