/* Fuzz target: the MuSiQue data file every RAG tool reads (tools/rag,
 * kvs_rag_parse: plain JSON or a zstd frame of it, an array of {question,
 * answers, ctxs[{title, text}]}). Whatever parses must be whole: every string
 * there, at most KVS_RAG_MAX_PASSAGES passages; whatever does not parse
 * returns nothing. Seeds: tests/tools/corpus_rag_data/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_rag.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvs_rag_item *it = (kvs_rag_item *)&size; /* must be reset */
  size_t n = 1;
  kvs_err e = kvs_rag_parse((const char *)data, size, &it, &n);
  if (e != KVS_OK) {
    if (it || n) abort();
    return 0;
  }
  if (!it) abort();
  for (size_t i = 0; i < n; i++) {
    if (!it[i].question || !it[i].answers || it[i].n_passages > KVS_RAG_MAX_PASSAGES) abort();
    for (size_t j = 0; j < it[i].n_answers; j++)
      if (!it[i].answers[j]) abort();
    for (size_t j = 0; j < it[i].n_passages; j++)
      if (!it[i].title[j] || !it[i].text[j]) abort();
  }
  kvs_rag_items_free(it, n);
  return 0;
}
