/* chunk.c - chunk boundaries and keys, computed exactly as kvstashd does
 * (kvs_key_content / kvs_key_prefix from core). */
#include "client_int.h"

size_t kvs_chunk_prefix_count(size_t n_tokens, uint32_t chunk_tokens, unsigned flags) {
  if (chunk_tokens == 0) return 0;
  size_t n = n_tokens / chunk_tokens;
  if ((flags & KVS_CHUNK_TAIL) && n_tokens % chunk_tokens) n++;
  return n;
}

kvs_err kvs_chunk_prefix(const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                         uint32_t chunk_tokens, unsigned flags, kvs_chunk *out, size_t cap,
                         size_t *n_out) {
  if (!model || (!tokens && n_tokens) || !n_out || chunk_tokens == 0) return KVS_EINVAL;
  if (n_tokens > UINT32_MAX) return KVS_ERANGE;
  size_t n = kvs_chunk_prefix_count(n_tokens, chunk_tokens, flags);
  *n_out = n;
  if (n > cap || (n && !out)) return KVS_ERANGE;
  kvs_key parent;
  for (size_t i = 0; i < n; i++) {
    size_t start = i * (size_t)chunk_tokens;
    size_t len = n_tokens - start < chunk_tokens ? n_tokens - start : chunk_tokens;
    out[i].kind = KVS_CHUNK_PREFIX;
    out[i].start = (uint32_t)start;
    out[i].n_tokens = (uint32_t)len;
    out[i].key = kvs_key_prefix(model, i ? &parent : NULL, tokens + start, len);
    parent = out[i].key;
  }
  return KVS_OK;
}

kvs_err kvs_chunk_spans(const kvs_model_id *model, const int32_t *tokens, size_t n_tokens,
                        const kvs_span *spans, size_t n_spans, kvs_chunk *out) {
  if (!model || (!tokens && n_tokens) || (n_spans && (!spans || !out))) return KVS_EINVAL;
  for (size_t i = 0; i < n_spans; i++) {
    uint64_t end = (uint64_t)spans[i].start + spans[i].n_tokens;
    if (spans[i].n_tokens == 0 || end > n_tokens) return KVS_ERANGE;
    out[i].kind = KVS_CHUNK_CONTENT;
    out[i].start = spans[i].start;
    out[i].n_tokens = spans[i].n_tokens;
    out[i].key = kvs_key_content(model, tokens + spans[i].start, spans[i].n_tokens);
  }
  return KVS_OK;
}
