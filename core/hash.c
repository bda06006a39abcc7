#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvs_core.h"

struct kvs_hasher {
  XXH3_state_t st;
};

static kvs_hash128 from_xxh(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  kvs_hash128 out;
  memcpy(out.b, c.digest, 16);
  return out;
}

kvs_hash128 kvs_hash128_buf(const void *p, size_t n) { return from_xxh(XXH3_128bits(p, n)); }

kvs_hasher *kvs_hasher_create(void) {
  kvs_hasher *h = malloc(sizeof *h);
  if (!h) return NULL;
  XXH3_128bits_reset(&h->st);
  return h;
}
void kvs_hasher_update(kvs_hasher *h, const void *p, size_t n) {
  XXH3_128bits_update(&h->st, p, n);
}
kvs_hash128 kvs_hasher_digest(const kvs_hasher *h) { return from_xxh(XXH3_128bits_digest(&h->st)); }
void kvs_hasher_free(kvs_hasher *h) { free(h); }

int kvs_hash128_equal(const kvs_hash128 *a, const kvs_hash128 *b) {
  return memcmp(a->b, b->b, 16) == 0;
}

void kvs_hash128_hex(const kvs_hash128 *h, char out[33]) {
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    out[2 * i] = hx[h->b[i] >> 4];
    out[2 * i + 1] = hx[h->b[i] & 15];
  }
  out[32] = 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

kvs_err kvs_hash128_from_hex(const char *hex, kvs_hash128 *out) {
  if (!hex || !out) return KVS_EINVAL;
  for (int i = 0; i < 16; i++) {
    int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return KVS_EINVAL;
    out->b[i] = (uint8_t)(hi << 4 | lo);
  }
  return hex[32] == 0 ? KVS_OK : KVS_EINVAL;
}

#if defined(KVS__XXH3_AVX2)
/* hash_avx2.c: the same XXH3-64, built for AVX2, where the CPU and the OS
 * have it (checked once; every thread computes the same answer). */
uint64_t kvs__xxh3_64_avx2(const void *p, size_t n);
static int have_avx2(void) {
  static atomic_int have = -1;
  int h = atomic_load_explicit(&have, memory_order_relaxed);
  if (h < 0) {
    __builtin_cpu_init();
    h = __builtin_cpu_supports("avx2") ? 1 : 0;
    atomic_store_explicit(&have, h, memory_order_relaxed);
  }
  return h;
}
uint64_t kvs_checksum64(const void *p, size_t n) {
  return have_avx2() ? kvs__xxh3_64_avx2(p, n) : XXH3_64bits(p, n);
}
#else
uint64_t kvs_checksum64(const void *p, size_t n) { return XXH3_64bits(p, n); }
#endif

uint64_t kvs_checksum64_copy(void *dst, const void *src, size_t n, size_t piece,
                             void (*on_piece)(void *arg, size_t off, size_t len), void *arg) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  if (!piece) piece = (size_t)256 << 10;
  for (size_t off = 0; off < n; off += piece) {
    size_t len = n - off < piece ? n - off : piece;
    memcpy((uint8_t *)dst + off, (const uint8_t *)src + off, len);
    XXH3_64bits_update(&st, (const uint8_t *)dst + off, len);
    if (on_piece) on_piece(arg, off, len);
  }
  return XXH3_64bits_digest(&st);
}

static void put_u32(XXH3_state_t *st, uint32_t v) {
  uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  XXH3_128bits_update(st, b, 4);
}
static void put_f32(XXH3_state_t *st, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  put_u32(st, u);
}

kvs_err kvs_model_id_compute(const kvs_model_desc *d, kvs_model_id *out) {
  if (!d || !out || !d->arch) return KVS_EINVAL;
  KVS_TRY(kvs_layout_validate(&d->layout));
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, "kvstash-model-v1", 16);
  uint32_t alen = (uint32_t)strlen(d->arch);
  put_u32(&st, alen);
  XXH3_128bits_update(&st, d->arch, alen);
  const kvs_layout *l = &d->layout;
  put_u32(&st, l->n_layers);
  put_u32(&st, l->n_kv_heads);
  put_u32(&st, l->head_dim);
  put_u32(&st, l->dtype);
  put_u32(&st, l->rope_type);
  put_u32(&st, l->rope_dims);
  put_f32(&st, l->rope_theta);
  put_f32(&st, l->rope_freq_scale);
  if (l->rope_scaling != KVS_ROPE_SCALING_NONE) { /* unscaled ids stay what they were */
    put_u32(&st, l->rope_scaling);
    put_f32(&st, l->rope_orig_ctx);
    put_f32(&st, l->rope_scale_a);
    put_f32(&st, l->rope_scale_b);
  }
  put_u32(&st, d->n_embd);
  put_u32(&st, d->n_heads);
  put_u32(&st, d->n_ff);
  put_u32(&st, d->n_vocab);
  put_f32(&st, d->norm_eps);
  XXH3_128bits_update(&st, d->weights.b, 16);
  *out = from_xxh(XXH3_128bits_digest(&st));
  return KVS_OK;
}

static void put_tokens(XXH3_state_t *st, const int32_t *t, size_t n) {
  uint8_t buf[256];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t v = (uint32_t)t[i];
    buf[k++] = (uint8_t)v;
    buf[k++] = (uint8_t)(v >> 8);
    buf[k++] = (uint8_t)(v >> 16);
    buf[k++] = (uint8_t)(v >> 24);
    if (k == sizeof buf) {
      XXH3_128bits_update(st, buf, k);
      k = 0;
    }
  }
  if (k) XXH3_128bits_update(st, buf, k);
}

kvs_key kvs_key_content(const kvs_model_id *model, const int32_t *tokens, size_t n) {
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, "C", 1);
  XXH3_128bits_update(&st, model->b, 16);
  put_u32(&st, (uint32_t)n);
  put_tokens(&st, tokens, n);
  return from_xxh(XXH3_128bits_digest(&st));
}

kvs_key kvs_key_prefix(const kvs_model_id *model, const kvs_key *parent, const int32_t *tokens,
                       size_t n) {
  static const kvs_key zero;
  XXH3_state_t st;
  XXH3_128bits_reset(&st);
  XXH3_128bits_update(&st, "P", 1);
  XXH3_128bits_update(&st, model->b, 16);
  XXH3_128bits_update(&st, (parent ? parent : &zero)->b, 16);
  put_u32(&st, (uint32_t)n);
  put_tokens(&st, tokens, n);
  return from_xxh(XXH3_128bits_digest(&st));
}

uint64_t kvs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t kvs_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}
