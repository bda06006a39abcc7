#include <math.h>

#include "kvs_core.h"

size_t kvs_dtype_size(uint32_t dtype) {
  switch (dtype) {
  case KVS_DTYPE_F16: return 2;
  case KVS_DTYPE_BF16: return 2;
  case KVS_DTYPE_F32: return 4;
  default: return 0;
  }
}

const char *kvs_dtype_name(uint32_t dtype) {
  switch (dtype) {
  case KVS_DTYPE_F16: return "f16";
  case KVS_DTYPE_BF16: return "bf16";
  case KVS_DTYPE_F32: return "f32";
  default: return "unknown";
  }
}

static kvs_err bad(const char *why) {
  KVS_LOGD("core", "invalid layout", "reason=\"%s\"", why);
  return KVS_ELAYOUT;
}

kvs_err kvs_layout_validate(const kvs_layout *l) {
  if (!l) return KVS_EINVAL;
  if (l->n_layers == 0 || l->n_layers > KVS_MAX_LAYERS) return bad("n_layers");
  if (l->n_kv_heads == 0 || l->n_kv_heads > KVS_MAX_KV_HEADS) return bad("n_kv_heads");
  if (l->head_dim == 0 || l->head_dim > KVS_MAX_HEAD_DIM) return bad("head_dim");
  if (kvs_dtype_size(l->dtype) == 0) return bad("dtype");
  if (l->rope_type != KVS_ROPE_NORM && l->rope_type != KVS_ROPE_NEOX) return bad("rope_type");
  if (l->rope_dims > l->head_dim || (l->rope_dims & 1u)) return bad("rope_dims");
  if (!(l->rope_theta > 0.0f) || !isfinite(l->rope_theta)) return bad("rope_theta");
  if (!(l->rope_freq_scale > 0.0f) || !isfinite(l->rope_freq_scale)) return bad("rope_freq_scale");
  if (l->rope_scaling == KVS_ROPE_SCALING_NONE) {
    if (l->rope_orig_ctx != 0.0f || l->rope_scale_a != 0.0f || l->rope_scale_b != 0.0f)
      return bad("rope scaling parameters without a scaling");
  } else if (l->rope_scaling == KVS_ROPE_SCALING_YARN ||
             l->rope_scaling == KVS_ROPE_SCALING_LLAMA3) {
    if (!(l->rope_orig_ctx >= 1.0f) || !isfinite(l->rope_orig_ctx)) return bad("rope_orig_ctx");
    if (!(l->rope_scale_a > 0.0f) || !isfinite(l->rope_scale_a) || !(l->rope_scale_b > 0.0f) ||
        !isfinite(l->rope_scale_b))
      return bad("rope scaling parameters");
    if (l->rope_scaling == KVS_ROPE_SCALING_LLAMA3 && !(l->rope_scale_b > l->rope_scale_a))
      return bad("llama3 high_freq_factor <= low_freq_factor");
  } else {
    return bad("rope_scaling");
  }
  return KVS_OK;
}

uint64_t kvs_layout_token_bytes(const kvs_layout *l) {
  return 2ull * l->n_layers * l->n_kv_heads * l->head_dim * kvs_dtype_size(l->dtype);
}

uint64_t kvs_layout_plane_elems(const kvs_layout *l, uint64_t n_tokens) {
  return n_tokens * l->n_kv_heads * l->head_dim;
}

int kvs_layout_equal(const kvs_layout *a, const kvs_layout *b) {
  return a->n_layers == b->n_layers && a->n_kv_heads == b->n_kv_heads &&
         a->head_dim == b->head_dim && a->dtype == b->dtype && a->rope_type == b->rope_type &&
         a->rope_dims == b->rope_dims && a->rope_theta == b->rope_theta &&
         a->rope_freq_scale == b->rope_freq_scale && a->rope_scaling == b->rope_scaling &&
         a->rope_orig_ctx == b->rope_orig_ctx && a->rope_scale_a == b->rope_scale_a &&
         a->rope_scale_b == b->rope_scale_b;
}
