/* refengine.c - libkvstash_refengine: the reference engine (model/) behind a
 * handful of plain C functions, so that the Python RAG example can tokenize
 * text and compute real chunk KV through ctypes. Example code, not part of
 * libkvstash's API. */
#include <stdlib.h>
#include <string.h>

#include "kvs_model.h"

typedef struct kvsx {
  kvs_model *m;
} kvsx;

kvsx *kvsx_open(const char *gguf) {
  kvsx *x = calloc(1, sizeof *x);
  if (!x || kvs_model_load(gguf, &x->m)) {
    free(x);
    return NULL;
  }
  return x;
}

void kvsx_close(kvsx *x) {
  if (!x) return;
  kvs_model_free(x->m);
  free(x);
}

void kvsx_layout(kvsx *x, kvs_layout *out) { *out = kvs_model_layout(x->m); }

void kvsx_model_id(kvsx *x, uint8_t out[16]) { memcpy(out, kvs_model_get_id(x->m)->b, 16); }

/* Token ids of text (no BOS, special tokens parsed). */
int kvsx_tokenize(kvsx *x, const char *text, int32_t *out, size_t cap, size_t *n) {
  return kvs_tok_encode(kvs_model_tok(x->m), text, strlen(text), 1, 0, out, cap, n);
}

size_t kvsx_tokenize_bound(size_t len) { return kvs_tok_bound(len) + 1; }

/* KV of tokens[n] prefilled alone at positions 0..n-1 (a content chunk), in
 * the canonical layout (n_layers, 2, n, kv_heads, head_dim) fp16 into kv. */
int kvsx_chunk_kv(kvsx *x, const int32_t *tokens, uint32_t n, void *kv) {
  kvs_seq *s;
  int rv = kvs_seq_create(x->m, n, &s);
  if (rv) return rv;
  rv = kvs_model_prefill(x->m, s, tokens, n, 0, NULL);
  if (rv == KVS_OK) {
    kvs_layout l = kvs_model_layout(x->m);
    size_t plane = (size_t)n * l.n_kv_heads * l.head_dim * sizeof(kvs_f16);
    for (uint32_t i = 0; i < l.n_layers; i++) {
      memcpy((char *)kv + 2 * i * plane, kvs_seq_k(s, i), plane);
      memcpy((char *)kv + (2 * i + 1) * plane, kvs_seq_v(s, i), plane);
    }
  }
  kvs_seq_free(s);
  return rv;
}
