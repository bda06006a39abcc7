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

int main(void) {
  if (!mkdtemp(g_dir)) return 1;
  static const kvs_test_case cases[] = {{"the repo's MuSiQue copy", test_repo_copy},
                                        {"plain, truncated, missing", test_plain_and_bad},
                                        {NULL, NULL}};
  int rc = kvs_test_run("rag_data", cases);
  rmdir(g_dir);
  return rc;
}
