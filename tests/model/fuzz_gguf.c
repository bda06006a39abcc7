/* libFuzzer target: GGUF parse, every metadata getter, tensor dequant and the
 * tokenizer over arbitrary bytes. Must never crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvs_log_set_level(KVS_LOG_ERROR);
  kvs_gguf *g;
  if (kvs_gguf_open_mem(data, size, &g) != KVS_OK) return 0;
  for (uint64_t i = 0; i < kvs_gguf_kv_count(g); i++) {
    uint32_t len;
    const char *k = kvs_gguf_kv_key(g, i, &len);
    char key[300];
    if (len >= sizeof key) continue;
    memcpy(key, k, len);
    key[len] = 0;
    uint64_t u;
    uint32_t u32, et;
    float f;
    int b;
    const char *s;
    uint64_t n;
    kvs_gguf_get_u64(g, key, &u);
    kvs_gguf_get_u32(g, key, &u32);
    kvs_gguf_get_f32(g, key, &f);
    kvs_gguf_get_bool(g, key, &b);
    kvs_gguf_get_str(g, key, &s, &n);
    if (kvs_gguf_get_arr(g, key, &et, &n) == KVS_OK && n <= 4096) {
      const char **p = malloc((n + 1) * sizeof *p);
      uint32_t *l = malloc((n + 1) * sizeof *l);
      float *fv = malloc((n + 1) * sizeof *fv);
      int32_t *iv = malloc((n + 1) * sizeof *iv);
      kvs_gguf_get_arr_str(g, key, p, l, n);
      kvs_gguf_get_arr_f32(g, key, fv, n);
      kvs_gguf_get_arr_i32(g, key, iv, n);
      free(p);
      free(l);
      free(fv);
      free(iv);
    }
  }
  for (uint64_t i = 0; i < kvs_gguf_tensor_count(g); i++) {
    const kvs_gguf_tensor *t = kvs_gguf_tensor_at(g, i);
    if (!t->data || t->n_elems > (1u << 20)) continue;
    float *dst = malloc(t->n_elems * sizeof *dst);
    if (dst) kvs_dequant(t->type, t->data, dst, t->n_elems);
    free(dst);
  }
  kvs_tok *tok;
  if (kvs_tok_create(g, &tok) == KVS_OK) {
    const char text[] = "Hello <|im_start|> world 123, it's\n\n  ok";
    kvs_token ids[128];
    size_t n;
    if (kvs_tok_encode(tok, text, sizeof text - 1, 1, 1, ids, 128, &n) == KVS_OK) {
      char back[512];
      size_t bl;
      kvs_tok_decode(tok, ids, n, back, sizeof back, &bl);
    }
    kvs_tok_free(tok);
  }
  kvs_gguf_free(g);
  return 0;
}
