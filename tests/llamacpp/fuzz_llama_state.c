/* libFuzzer target for the llama.cpp sequence-state parser
 * (engines/llamacpp/llama_state.c; pure C, built without libllama). Input:
 * 3 bytes that pick a small F16 layout (layers 1-4, KV heads 1-4, head_dim
 * 8-64), then a state blob. A blob that parses is converted to the canonical
 * layout whole and in two parts; one whose cells come in position order must
 * convert back to the same bytes (kvs_llama.h promises it), else abort(). */
#include <stdlib.h>
#include <string.h>

#include "kvs_llama.h"

#define CAP (8u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kvs_log_set_level(KVS_LOG_ERROR); /* every rejected blob logs a warning */
  if (size < 3) return 0;
  kvs_layout l = {.n_layers = 1u + data[0] % 4u,
                  .n_kv_heads = 1u + data[1] % 4u,
                  .head_dim = 8u * (1u + data[2] % 8u),
                  .dtype = KVS_DTYPE_F16,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_theta = 10000.0f,
                  .rope_freq_scale = 1.0f};
  l.rope_dims = l.head_dim;
  const uint8_t *st = data + 3;
  const size_t n = size - 3;
  kvs_llama_state_info info;
  if (kvs_llama_state_parse(&l, st, n, &info) != KVS_OK) return 0;
  const size_t tok = kvs_layout_token_bytes(&l);
  if (info.n_tokens == 0 || (uint64_t)tok * info.n_tokens > CAP) return 0;
  const size_t all = tok * info.n_tokens;
  uint8_t *kv = malloc(all);
  if (!kv) return 0;
  if (kvs_llama_state_to_canonical(&l, st, n, 0, info.n_tokens, kv, all) == KVS_OK) {
    const uint32_t half = info.n_tokens / 2;
    uint8_t *a = malloc(tok * half + 1), *b = malloc(tok * (info.n_tokens - half));
    if (a && b && half > 0 &&
        kvs_llama_state_to_canonical(&l, st, n, 0, half, a, tok * half) == KVS_OK &&
        kvs_llama_state_to_canonical(&l, st, n, half, info.n_tokens, b,
                                     tok * (info.n_tokens - half)) == KVS_OK) {
      const void *parts[2] = {a, b};
      const uint32_t pt[2] = {half, info.n_tokens - half};
      size_t cap = kvs_llama_state_bound(&l, &info), got = 0;
      uint8_t *back = cap && cap <= CAP ? malloc(cap) : NULL;
      if (back &&
          kvs_llama_state_from_canonical(&l, &info, parts, pt, 2, back, cap, &got) == KVS_OK &&
          info.ordered && (got != n || memcmp(back, st, n) != 0))
        abort(); /* an ordered blob must come back byte for byte */
      free(back);
    }
    free(a), free(b);
  }
  /* a range past the end is refused, never read */
  (void)kvs_llama_state_to_canonical(&l, st, n, info.n_tokens, info.n_tokens + 1, kv, all);
  free(kv);
  return 0;
}
