/* abi.c - kvs_abi_layout: the sizes and field offsets of the public structs,
 * as this library was compiled, for bindings that mirror them (the Python
 * binding's ctypes structures check themselves against it at load, so a field
 * added here and not there fails loudly instead of letting C read past a
 * Python object). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "kvstash.h"

typedef struct abi_field {
  const char *strct, *field;
  size_t size, offset, fsize;
} abi_field;

#define F(T, m)                                                                                    \
  { #T, #m, sizeof(T), offsetof(T, m), sizeof(((T *)0)->m) }
static const abi_field k_fields[] = {
    F(kvs_hash128, b),
    F(kvs_layout, n_layers),
    F(kvs_layout, n_kv_heads),
    F(kvs_layout, head_dim),
    F(kvs_layout, dtype),
    F(kvs_layout, rope_type),
    F(kvs_layout, rope_dims),
    F(kvs_layout, rope_theta),
    F(kvs_layout, rope_freq_scale),
    F(kvs_layout, rope_scaling),
    F(kvs_layout, rope_orig_ctx),
    F(kvs_layout, rope_scale_a),
    F(kvs_layout, rope_scale_b),
    F(kvs_chunk, key),
    F(kvs_chunk, start),
    F(kvs_chunk, n_tokens),
    F(kvs_chunk, kind),
    F(kvs_span, start),
    F(kvs_span, n_tokens),
    F(kvs_client_opts, url),
    F(kvs_client_opts, tenant),
    F(kvs_client_opts, token),
    F(kvs_client_opts, connect_timeout_ms),
    F(kvs_client_opts, request_timeout_ms),
    F(kvs_client_opts, n_sockets),
    F(kvs_client_opts, max_retries),
    F(kvs_client_opts, retry_backoff_ms),
    F(kvs_client_opts, max_msg_bytes),
    F(kvs_client_opts, flags),
    F(kvs_client_opts, tls_ca_file),
    F(kvs_client_opts, tls_server_name),
    F(kvs_client_opts, tls_cert_key_file),
    F(kvs_client_opts, n_workers),
    F(kvs_client_counters, gets),
    F(kvs_client_counters, shm_gets),
    F(kvs_client_counters, shm_fallbacks),
    F(kvs_client_counters, shm_regroups),
    F(kvs_client_counters, shm_bytes),
    F(kvs_client_counters, leases),
    F(kvs_client_counters, releases),
    F(kvs_client_counters, release_lost),
    F(kvs_client_counters, shm_maps),
    F(kvs_client_counters, stream_gets),
    F(kvs_client_counters, stream_fallbacks),
    F(kvs_client_counters, shm_puts),
    F(kvs_client_counters, sock_puts),
    F(kvs_client_counters, shm_put_fallbacks),
    F(kvs_entry_info, present),
    F(kvs_entry_info, tier),
    F(kvs_entry_info, pinned),
    F(kvs_entry_info, value_bytes),
    F(kvs_tier_stat, name),
    F(kvs_tier_stat, tier),
    F(kvs_tier_stat, present),
    F(kvs_tier_stat, used),
    F(kvs_tier_stat, capacity),
    F(kvs_tier_stat, entries),
    F(kvs_put_opts, profile),
    F(kvs_put_opts, layers_per_group),
    F(kvs_put_opts, ttl_s),
    F(kvs_put_opts, flags),
    F(kvs_put_opts, codec),
    F(kvs_get_opts, dtype),
    F(kvs_get_opts, head_begin),
    F(kvs_get_opts, head_end),
    F(kvs_get_opts, window),
    F(kvs_get_opts, flags),
    F(kvs_get_opts, on_group),
    F(kvs_get_opts, user),
    F(kvs_get_opts, paged),
    F(kvs_paged_kv, k_cache),
    F(kvs_paged_kv, v_cache),
    F(kvs_paged_kv, block_table),
    F(kvs_paged_kv, block_size),
    F(kvs_paged_kv, num_blocks),
    F(kvs_paged_kv, n_layers),
    F(kvs_model_desc, arch),
    F(kvs_model_desc, layout),
    F(kvs_model_desc, n_embd),
    F(kvs_model_desc, n_heads),
    F(kvs_model_desc, n_ff),
    F(kvs_model_desc, n_vocab),
    F(kvs_model_desc, norm_eps),
    F(kvs_model_desc, weights),
};
#undef F

size_t kvs_abi_layout(char *out, size_t cap) {
  size_t n = 0;
  const char *cur = "";
  char line[160];
  for (size_t i = 0; i < sizeof k_fields / sizeof *k_fields; i++) {
    const abi_field *f = &k_fields[i];
    int k = 0;
    if (strcmp(cur, f->strct)) {
      k = snprintf(line, sizeof line, "%s%s %zu", i ? "\n" : "", f->strct, f->size);
      cur = f->strct;
    }
    k += snprintf(line + k, sizeof line - (size_t)k, " %s@%zu:%zu", f->field, f->offset, f->fsize);
    if (out && n + 1 < cap) /* what fits, cut short at cap - 1 */
      memcpy(out + n, line, n + (size_t)k < cap ? (size_t)k : cap - 1 - n);
    n += (size_t)k;
  }
  if (out && cap) out[n < cap ? n : cap - 1] = 0;
  return n;
}
