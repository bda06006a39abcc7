/* gguf.c - GGUF v2/v3 reader over mmap (or caller memory).
 *
 * FORMAT (little-endian; ggml docs/gguf.md):
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 type | value }
 *     string = u64 len | len bytes;  array = u32 elem_type | u64 n | n values
 *   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   padding to `general.alignment` (default 32) | tensor data (offsets relative here)
 * Every read goes through a cursor that checks the remaining size first. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvs_le.h"
#include "model_int.h"

typedef struct gguf_kv {
  const char *key;
  uint32_t key_len;
  uint32_t type;
  uint32_t elem_type; /* arrays */
  uint64_t n;         /* arrays: count; strings: byte length */
  const uint8_t *val; /* value bytes (arrays: first element) */
} gguf_kv;

struct kvs_gguf {
  const uint8_t *base;
  size_t size;
  int mapped;
  uint32_t version;
  uint64_t n_kv, n_tensors;
  gguf_kv *kv;
  kvs_gguf_tensor *tensors;
};

typedef struct cur {
  const uint8_t *p, *end;
} cur;

#define NEED(c, n)                                                                                 \
  KVS_RETURN_ERROR_IF((uint64_t)((c)->end - (c)->p) < (uint64_t)(n), KVS_ETRUNC, "gguf: truncated")

static uint32_t rd32(const uint8_t *p) { return kvs__rd32(p); } /* core/kvs_le.h */
static uint64_t rd64(const uint8_t *p) { return kvs__rd64(p); }

static kvs_err get_u32(cur *c, uint32_t *v) {
  NEED(c, 4);
  *v = rd32(c->p);
  c->p += 4;
  return KVS_OK;
}
static kvs_err get_u64(cur *c, uint64_t *v) {
  NEED(c, 8);
  *v = rd64(c->p);
  c->p += 8;
  return KVS_OK;
}
static kvs_err get_str(cur *c, const char **s, uint64_t *len) {
  KVS_TRY(get_u64(c, len));
  NEED(c, *len);
  *s = (const char *)c->p;
  c->p += *len;
  return KVS_OK;
}

static uint32_t scalar_size(uint32_t t) {
  switch (t) {
  case KVS_GGUF_U8:
  case KVS_GGUF_I8:
  case KVS_GGUF_BOOL: return 1;
  case KVS_GGUF_U16:
  case KVS_GGUF_I16: return 2;
  case KVS_GGUF_U32:
  case KVS_GGUF_I32:
  case KVS_GGUF_F32: return 4;
  case KVS_GGUF_U64:
  case KVS_GGUF_I64:
  case KVS_GGUF_F64: return 8;
  default: return 0;
  }
}

static kvs_err skip_value(cur *c, uint32_t type, gguf_kv *kv) {
  uint32_t sz = scalar_size(type);
  if (sz) {
    NEED(c, sz);
    if (kv) kv->val = c->p;
    c->p += sz;
    return KVS_OK;
  }
  if (type == KVS_GGUF_STRING) {
    const char *s;
    uint64_t len;
    KVS_TRY(get_str(c, &s, &len));
    if (kv) {
      kv->val = (const uint8_t *)s;
      kv->n = len;
    }
    return KVS_OK;
  }
  if (type == KVS_GGUF_ARRAY) {
    uint32_t et;
    uint64_t n;
    KVS_TRY(get_u32(c, &et));
    KVS_TRY(get_u64(c, &n));
    /* nested arrays are legal in the spec but no model uses them */
    KVS_RETURN_ERROR_IF(et == KVS_GGUF_ARRAY, KVS_ECORRUPT, "gguf: nested array");
    if (kv) {
      kv->elem_type = et;
      kv->n = n;
      kv->val = c->p;
    }
    uint32_t es = scalar_size(et);
    if (es) {
      KVS_RETURN_ERROR_IF(n > (uint64_t)(c->end - c->p) / es, KVS_ETRUNC, "gguf: array truncated");
      c->p += n * es;
      return KVS_OK;
    }
    KVS_RETURN_ERROR_IF(et != KVS_GGUF_STRING, KVS_ECORRUPT, "gguf: bad array type");
    /* each string takes at least 8 bytes: bounds n before the walk */
    KVS_RETURN_ERROR_IF(n > (uint64_t)(c->end - c->p) / 8, KVS_ETRUNC, "gguf: array truncated");
    for (uint64_t i = 0; i < n; i++) {
      const char *s;
      uint64_t len;
      KVS_TRY(get_str(c, &s, &len));
    }
    return KVS_OK;
  }
  return KVS_ERR_AT(KVS_ECORRUPT, "gguf: bad value type");
}

uint32_t kvs_ggml_block_elems(uint32_t type) {
  switch (type) {
  case KVS_GGML_F32:
  case KVS_GGML_F16:
  case KVS_GGML_BF16: return 1;
  case KVS_GGML_Q4_0:
  case KVS_GGML_Q4_1:
  case KVS_GGML_Q5_0:
  case KVS_GGML_Q5_1:
  case KVS_GGML_Q8_0: return 32;
  case KVS_GGML_Q4_K:
  case KVS_GGML_Q5_K:
  case KVS_GGML_Q6_K: return 256;
  default: return 0;
  }
}
uint32_t kvs_ggml_block_bytes(uint32_t type) {
  switch (type) {
  case KVS_GGML_F32: return 4;
  case KVS_GGML_F16:
  case KVS_GGML_BF16: return 2;
  case KVS_GGML_Q4_0: return 18;
  case KVS_GGML_Q4_1: return 20;
  case KVS_GGML_Q5_0: return 22;
  case KVS_GGML_Q5_1: return 24;
  case KVS_GGML_Q8_0: return 34;
  case KVS_GGML_Q4_K: return 144;
  case KVS_GGML_Q5_K: return 176;
  case KVS_GGML_Q6_K: return 210;
  default: return 0;
  }
}
const char *kvs_ggml_type_name(uint32_t type) {
  switch (type) {
  case KVS_GGML_F32: return "f32";
  case KVS_GGML_F16: return "f16";
  case KVS_GGML_BF16: return "bf16";
  case KVS_GGML_Q4_0: return "q4_0";
  case KVS_GGML_Q4_1: return "q4_1";
  case KVS_GGML_Q5_0: return "q5_0";
  case KVS_GGML_Q5_1: return "q5_1";
  case KVS_GGML_Q8_0: return "q8_0";
  case KVS_GGML_Q4_K: return "q4_K";
  case KVS_GGML_Q5_K: return "q5_K";
  case KVS_GGML_Q6_K: return "q6_K";
  default: return "unsupported";
  }
}
uint64_t kvs_ggml_row_bytes(uint32_t type, uint64_t n) {
  uint32_t be = kvs_ggml_block_elems(type);
  if (!be || n % be) return 0;
  return n / be * kvs_ggml_block_bytes(type);
}

void kvs_gguf_free(kvs_gguf *g) {
  if (!g) return;
  if (g->mapped) munmap((void *)g->base, g->size);
  free(g->kv);
  free(g->tensors);
  free(g);
}

static kvs_err parse(kvs_gguf *g) {
  cur c = {g->base, g->base + g->size};
  uint32_t magic;
  KVS_TRY(get_u32(&c, &magic));
  KVS_RETURN_ERROR_IF(magic != 0x46554747u, KVS_EMAGIC, "gguf: bad magic");
  KVS_TRY(get_u32(&c, &g->version));
  KVS_RETURN_ERROR_IF(g->version != 2 && g->version != 3, KVS_EVERSION, "gguf: version");
  KVS_TRY(get_u64(&c, &g->n_tensors));
  KVS_TRY(get_u64(&c, &g->n_kv));
  KVS_RETURN_ERROR_IF(g->n_tensors > KVS_GGUF_MAX_TENSORS, KVS_ETOOBIG, "gguf: too many tensors");
  KVS_RETURN_ERROR_IF(g->n_kv > KVS_GGUF_MAX_KV, KVS_ETOOBIG, "gguf: too many kv");
  /* every kv takes >= 12 bytes, every tensor >= 24: refuse counts the file cannot hold */
  KVS_RETURN_ERROR_IF(g->n_kv * 12 + g->n_tensors * 24 > (uint64_t)(c.end - c.p), KVS_ETRUNC,
                      "gguf: counts exceed file");
  g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
  g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
  if (!g->kv || !g->tensors) return KVS_ENOMEM;
  for (uint64_t i = 0; i < g->n_kv; i++) {
    gguf_kv *kv = &g->kv[i];
    uint64_t klen;
    KVS_TRY(get_str(&c, &kv->key, &klen));
    KVS_RETURN_ERROR_IF(klen == 0 || klen > 65535, KVS_ECORRUPT, "gguf: key length");
    kv->key_len = (uint32_t)klen;
    KVS_TRY(get_u32(&c, &kv->type));
    KVS_TRY(skip_value(&c, kv->type, kv));
  }
  uint64_t align = 32;
  int64_t ai = kvs_gguf_find_kv(g, "general.alignment");
  if (ai >= 0) {
    KVS_RETURN_ERROR_IF(g->kv[ai].type != KVS_GGUF_U32, KVS_ECORRUPT, "gguf: alignment type");
    align = rd32(g->kv[ai].val);
    KVS_RETURN_ERROR_IF(align == 0 || (align & (align - 1)) || align > 65536, KVS_ECORRUPT,
                        "gguf: alignment");
  }
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    kvs_gguf_tensor *t = &g->tensors[i];
    uint64_t nlen;
    KVS_TRY(get_str(&c, &t->name, &nlen));
    KVS_RETURN_ERROR_IF(nlen == 0 || nlen > 255, KVS_ECORRUPT, "gguf: tensor name length");
    t->name_len = (uint32_t)nlen;
    KVS_TRY(get_u32(&c, &t->n_dims));
    KVS_RETURN_ERROR_IF(t->n_dims == 0 || t->n_dims > KVS_GGUF_MAX_DIMS, KVS_ECORRUPT,
                        "gguf: n_dims");
    t->n_elems = 1;
    for (uint32_t d = 0; d < KVS_GGUF_MAX_DIMS; d++)
      t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
      KVS_TRY(get_u64(&c, &t->ne[d]));
      KVS_RETURN_ERROR_IF(t->ne[d] == 0 || t->ne[d] > (1ull << 40), KVS_ECORRUPT, "gguf: dim");
      KVS_RETURN_ERROR_IF(t->n_elems > (1ull << 40) / t->ne[d], KVS_ECORRUPT, "gguf: tensor size");
      t->n_elems *= t->ne[d];
    }
    KVS_TRY(get_u32(&c, &t->type));
    uint64_t off;
    KVS_TRY(get_u64(&c, &off));
    KVS_RETURN_ERROR_IF(off % align, KVS_ECORRUPT, "gguf: tensor offset alignment");
    t->data = (const void *)(uintptr_t)off; /* resolved below */
    if (kvs_ggml_block_elems(t->type)) {
      KVS_RETURN_ERROR_IF(t->ne[0] % kvs_ggml_block_elems(t->type), KVS_ECORRUPT,
                          "gguf: row not whole blocks");
      t->n_bytes = kvs_ggml_row_bytes(t->type, t->ne[0]) * (t->n_elems / t->ne[0]);
    } else {
      KVS_RETURN_ERROR_IF(t->type > 64, KVS_ECORRUPT, "gguf: tensor type");
      t->n_bytes = 0;
    }
  }
  uint64_t hdr = (uint64_t)(c.p - g->base);
  uint64_t data_start = (hdr + align - 1) / align * align;
  KVS_RETURN_ERROR_IF(data_start > g->size, KVS_ETRUNC, "gguf: data section truncated");
  uint64_t data_size = g->size - data_start;
  for (uint64_t i = 0; i < g->n_tensors; i++) {
    kvs_gguf_tensor *t = &g->tensors[i];
    uint64_t off = (uint64_t)(uintptr_t)t->data;
    KVS_RETURN_ERROR_IF(off > data_size || t->n_bytes > data_size - off, KVS_ETRUNC,
                        "gguf: tensor data out of file");
    t->data = t->n_bytes ? g->base + data_start + off : NULL;
    for (uint64_t j = 0; j < i; j++)
      KVS_RETURN_ERROR_IF(g->tensors[j].name_len == t->name_len &&
                              !memcmp(g->tensors[j].name, t->name, t->name_len),
                          KVS_ECORRUPT, "gguf: duplicate tensor name");
  }
  return KVS_OK;
}

kvs_err kvs_gguf_open_mem(const void *data, size_t size, kvs_gguf **out) {
  if (!out || (!data && size)) return KVS_EINVAL;
  *out = NULL;
  kvs_gguf *g = calloc(1, sizeof *g);
  if (!g) return KVS_ENOMEM;
  g->base = data;
  g->size = size;
  kvs_err e = parse(g);
  if (e) {
    kvs_gguf_free(g);
    return e;
  }
  *out = g;
  return KVS_OK;
}

kvs_err kvs_gguf_open(const char *path, kvs_gguf **out) {
  if (!path || !out) return KVS_EINVAL;
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return kvs_err_from_errno(errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int en = errno;
    close(fd);
    return kvs_err_from_errno(en);
  }
  if (st.st_size < 24) {
    close(fd);
    return KVS_ERR_AT(KVS_ETRUNC, "gguf: file too small");
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return kvs_err_from_errno(errno);
  kvs_gguf *g = calloc(1, sizeof *g);
  if (!g) {
    munmap(p, (size_t)st.st_size);
    return KVS_ENOMEM;
  }
  g->base = p;
  g->size = (size_t)st.st_size;
  g->mapped = 1;
  kvs_err e = parse(g);
  if (e) {
    KVS_LOGW("model", "gguf open failed", "path=\"%s\" err=%s", path, kvs_errname(e));
    kvs_gguf_free(g);
    return e;
  }
  *out = g;
  return KVS_OK;
}

const void *kvs_gguf_bytes(const kvs_gguf *g, size_t *size) {
  if (size) *size = g->size;
  return g->base;
}
uint32_t kvs_gguf_version(const kvs_gguf *g) { return g->version; }
uint64_t kvs_gguf_kv_count(const kvs_gguf *g) { return g->n_kv; }
const char *kvs_gguf_kv_key(const kvs_gguf *g, uint64_t i, uint32_t *len) {
  if (i >= g->n_kv) return NULL;
  if (len) *len = g->kv[i].key_len;
  return g->kv[i].key;
}
uint32_t kvs_gguf_kv_type(const kvs_gguf *g, uint64_t i) {
  return i < g->n_kv ? g->kv[i].type : UINT32_MAX;
}

int64_t kvs_gguf_find_kv(const kvs_gguf *g, const char *key) {
  size_t kl = strlen(key);
  for (uint64_t i = 0; i < g->n_kv; i++)
    if (g->kv[i].key_len == kl && !memcmp(g->kv[i].key, key, kl)) return (int64_t)i;
  return -1;
}

static kvs_err scalar_i(uint32_t type, const uint8_t *p, int64_t *si, uint64_t *ui,
                        int *is_signed) {
  *is_signed = 0;
  switch (type) {
  case KVS_GGUF_U8:
  case KVS_GGUF_BOOL: *ui = p[0]; return KVS_OK;
  case KVS_GGUF_U16: *ui = (uint64_t)p[0] | (uint64_t)p[1] << 8; return KVS_OK;
  case KVS_GGUF_U32: *ui = rd32(p); return KVS_OK;
  case KVS_GGUF_U64: *ui = rd64(p); return KVS_OK;
  case KVS_GGUF_I8: *si = (int8_t)p[0]; break;
  case KVS_GGUF_I16: *si = (int16_t)((uint16_t)p[0] | (uint16_t)p[1] << 8); break;
  case KVS_GGUF_I32: *si = (int32_t)rd32(p); break;
  case KVS_GGUF_I64: *si = (int64_t)rd64(p); break;
  default: return KVS_EINVAL;
  }
  *is_signed = 1;
  return KVS_OK;
}

kvs_err kvs_gguf_get_u64(const kvs_gguf *g, const char *key, uint64_t *out) {
  int64_t i = kvs_gguf_find_kv(g, key);
  if (i < 0) return KVS_ENOENT;
  int64_t si = 0;
  uint64_t ui = 0;
  int sg;
  KVS_TRY(scalar_i(g->kv[i].type, g->kv[i].val, &si, &ui, &sg));
  if (sg) {
    if (si < 0) return KVS_ERANGE;
    ui = (uint64_t)si;
  }
  *out = ui;
  return KVS_OK;
}

kvs_err kvs_gguf_get_u32(const kvs_gguf *g, const char *key, uint32_t *out) {
  uint64_t v;
  KVS_TRY(kvs_gguf_get_u64(g, key, &v));
  if (v > UINT32_MAX) return KVS_ERANGE;
  *out = (uint32_t)v;
  return KVS_OK;
}

kvs_err kvs_gguf_get_f32(const kvs_gguf *g, const char *key, float *out) {
  int64_t i = kvs_gguf_find_kv(g, key);
  if (i < 0) return KVS_ENOENT;
  if (g->kv[i].type == KVS_GGUF_F32) {
    uint32_t u = rd32(g->kv[i].val);
    memcpy(out, &u, 4);
    return KVS_OK;
  }
  if (g->kv[i].type == KVS_GGUF_F64) {
    uint64_t u = rd64(g->kv[i].val);
    double d;
    memcpy(&d, &u, 8);
    *out = (float)d;
    return KVS_OK;
  }
  return KVS_EINVAL;
}

kvs_err kvs_gguf_get_bool(const kvs_gguf *g, const char *key, int *out) {
  int64_t i = kvs_gguf_find_kv(g, key);
  if (i < 0) return KVS_ENOENT;
  if (g->kv[i].type != KVS_GGUF_BOOL) return KVS_EINVAL;
  *out = g->kv[i].val[0] != 0;
  return KVS_OK;
}

kvs_err kvs_gguf_get_str(const kvs_gguf *g, const char *key, const char **s, uint64_t *len) {
  int64_t i = kvs_gguf_find_kv(g, key);
  if (i < 0) return KVS_ENOENT;
  if (g->kv[i].type != KVS_GGUF_STRING) return KVS_EINVAL;
  *s = (const char *)g->kv[i].val;
  *len = g->kv[i].n;
  return KVS_OK;
}

kvs_err kvs_gguf_get_arr(const kvs_gguf *g, const char *key, uint32_t *elem_type, uint64_t *n) {
  int64_t i = kvs_gguf_find_kv(g, key);
  if (i < 0) return KVS_ENOENT;
  if (g->kv[i].type != KVS_GGUF_ARRAY) return KVS_EINVAL;
  if (elem_type) *elem_type = g->kv[i].elem_type;
  if (n) *n = g->kv[i].n;
  return KVS_OK;
}

static const gguf_kv *arr(const kvs_gguf *g, const char *key, kvs_err *e) {
  int64_t i = kvs_gguf_find_kv(g, key);
  *e = KVS_OK;
  if (i < 0)
    *e = KVS_ENOENT;
  else if (g->kv[i].type != KVS_GGUF_ARRAY)
    *e = KVS_EINVAL;
  return *e ? NULL : &g->kv[i];
}

kvs_err kvs_gguf_get_arr_f32(const kvs_gguf *g, const char *key, float *out, uint64_t cap) {
  kvs_err e;
  const gguf_kv *kv = arr(g, key, &e);
  if (!kv) return e;
  if (kv->elem_type != KVS_GGUF_F32) return KVS_EINVAL;
  uint64_t n = kv->n < cap ? kv->n : cap;
  for (uint64_t j = 0; j < n; j++) {
    uint32_t u = rd32(kv->val + 4 * j);
    memcpy(&out[j], &u, 4);
  }
  return KVS_OK;
}

kvs_err kvs_gguf_get_arr_i32(const kvs_gguf *g, const char *key, int32_t *out, uint64_t cap) {
  kvs_err e;
  const gguf_kv *kv = arr(g, key, &e);
  if (!kv) return e;
  uint32_t es = scalar_size(kv->elem_type);
  if (!es || kv->elem_type == KVS_GGUF_F32 || kv->elem_type == KVS_GGUF_F64) return KVS_EINVAL;
  uint64_t n = kv->n < cap ? kv->n : cap;
  for (uint64_t j = 0; j < n; j++) {
    int64_t si = 0;
    uint64_t ui = 0;
    int sg;
    KVS_TRY(scalar_i(kv->elem_type, kv->val + es * j, &si, &ui, &sg));
    out[j] = sg ? (int32_t)si : (int32_t)ui;
  }
  return KVS_OK;
}

kvs_err kvs_gguf_get_arr_str(const kvs_gguf *g, const char *key, const char **ptrs, uint32_t *lens,
                             uint64_t cap) {
  kvs_err e;
  const gguf_kv *kv = arr(g, key, &e);
  if (!kv) return e;
  if (kv->elem_type != KVS_GGUF_STRING) return KVS_EINVAL;
  cur c = {kv->val, g->base + g->size};
  uint64_t n = kv->n < cap ? kv->n : cap;
  for (uint64_t j = 0; j < n; j++) {
    const char *s;
    uint64_t len;
    KVS_TRY(get_str(&c, &s, &len)); /* validated at open; cannot fail */
    if (len > UINT32_MAX) return KVS_ETOOBIG;
    ptrs[j] = s;
    lens[j] = (uint32_t)len;
  }
  return KVS_OK;
}

uint64_t kvs_gguf_tensor_count(const kvs_gguf *g) { return g->n_tensors; }
const kvs_gguf_tensor *kvs_gguf_tensor_at(const kvs_gguf *g, uint64_t i) {
  return i < g->n_tensors ? &g->tensors[i] : NULL;
}
const kvs_gguf_tensor *kvs_gguf_find_tensor(const kvs_gguf *g, const char *name) {
  size_t nl = strlen(name);
  for (uint64_t i = 0; i < g->n_tensors; i++)
    if (g->tensors[i].name_len == nl && !memcmp(g->tensors[i].name, name, nl))
      return &g->tensors[i];
  return NULL;
}

/* ------------------------------------------------------------- dequant */
static float f16le(const uint8_t *p) { return kvs_f16_to_f32((kvs_f16)(p[0] | p[1] << 8)); }

/* The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block from
 * its 12 packed bytes (ggml get_scale_min_k4). */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

/* Super-blocks of 256 (ggml dequantize_row_q4_K / _q5_K / _q6_K; the float
 * operations in the same order, so the values are ggml's bit for bit). */
static void dq_q4_K(const uint8_t *p, float *y, uint64_t nb) {
  for (uint64_t b = 0; b < nb; b++, p += 144) {
    float d = f16le(p), mn = f16le(p + 2);
    const uint8_t *sc = p + 4, *q = p + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
      uint8_t s0, m0, s1, m1;
      scale_min_k4(is, sc, &s0, &m0);
      scale_min_k4(is + 1, sc, &s1, &m1);
      float d1 = d * s0, n1 = mn * m0, d2 = d * s1, n2 = mn * m1;
      for (int l = 0; l < 32; l++)
        *y++ = d1 * (q[l] & 0xF) - n1;
      for (int l = 0; l < 32; l++)
        *y++ = d2 * (q[l] >> 4) - n2;
    }
  }
}
static void dq_q5_K(const uint8_t *p, float *y, uint64_t nb) {
  for (uint64_t b = 0; b < nb; b++, p += 176) {
    float d = f16le(p), mn = f16le(p + 2);
    const uint8_t *sc = p + 4, *qh = p + 16, *ql = p + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t s0, m0, s1, m1;
      scale_min_k4(is, sc, &s0, &m0);
      scale_min_k4(is + 1, sc, &s1, &m1);
      float d1 = d * s0, n1 = mn * m0, d2 = d * s1, n2 = mn * m1;
      for (int l = 0; l < 32; l++)
        *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - n1;
      for (int l = 0; l < 32; l++)
        *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - n2;
    }
  }
}
static void dq_q6_K(const uint8_t *p, float *y, uint64_t nb) {
  for (uint64_t b = 0; b < nb; b++, p += 210) {
    const uint8_t *ql = p, *qh = p + 128;
    const int8_t *sc = (const int8_t *)(p + 192);
    float d = f16le(p + 208);
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
      for (int l = 0; l < 32; l++) {
        int is = l / 16;
        int q1 = (int8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
  }
}

kvs_err kvs_dequant(uint32_t type, const void *src, float *dst, uint64_t n) {
  uint32_t be = kvs_ggml_block_elems(type);
  if (!be) return KVS_ENOTSUP;
  if (n % be) return KVS_EINVAL;
  const uint8_t *p = src;
  switch (type) {
  case KVS_GGML_F32: memcpy(dst, p, n * 4); return KVS_OK;
  case KVS_GGML_F16:
    for (uint64_t i = 0; i < n; i++)
      dst[i] = kvs_f16_to_f32((kvs_f16)(p[2 * i] | p[2 * i + 1] << 8));
    return KVS_OK;
  case KVS_GGML_BF16:
    for (uint64_t i = 0; i < n; i++)
      dst[i] = kvs_bf16_to_f32((kvs_bf16)(p[2 * i] | p[2 * i + 1] << 8));
    return KVS_OK;
  case KVS_GGML_Q4_0: /* { f16 d; u8 qs[16] }: x[j] = (lo4 - 8) d, x[j+16] = (hi4 - 8) d */
    for (uint64_t b = 0; b < n / 32; b++, p += 18, dst += 32) {
      float d = kvs_f16_to_f32((kvs_f16)(p[0] | p[1] << 8));
      for (int j = 0; j < 16; j++) {
        dst[j] = (float)((p[2 + j] & 0x0f) - 8) * d;
        dst[j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
      }
    }
    return KVS_OK;
  case KVS_GGML_Q4_1: /* { f16 d; f16 m; u8 qs[16] }: x = q d + m */
    for (uint64_t b = 0; b < n / 32; b++, p += 20, dst += 32) {
      float d = kvs_f16_to_f32((kvs_f16)(p[0] | p[1] << 8));
      float m = kvs_f16_to_f32((kvs_f16)(p[2] | p[3] << 8));
      for (int j = 0; j < 16; j++) {
        dst[j] = (float)(p[4 + j] & 0x0f) * d + m;
        dst[j + 16] = (float)(p[4 + j] >> 4) * d + m;
      }
    }
    return KVS_OK;
  case KVS_GGML_Q8_0: /* { f16 d; i8 qs[32] }: x = q d */
    for (uint64_t b = 0; b < n / 32; b++, p += 34, dst += 32) {
      float d = kvs_f16_to_f32((kvs_f16)(p[0] | p[1] << 8));
      for (int j = 0; j < 32; j++)
        dst[j] = (float)(int8_t)p[2 + j] * d;
    }
    return KVS_OK;
  case KVS_GGML_Q5_0: /* { f16 d; u8 qh[4]; u8 qs[16] }: x = (lo4 | bit j of qh << 4) - 16, times d
                       */
  case KVS_GGML_Q5_1: /* { f16 d; f16 m; u8 qh[4]; u8 qs[16] }: x = (lo4 | bit << 4) d + m */
    for (uint64_t b = 0, bb = kvs_ggml_block_bytes(type); b < n / 32; b++, p += bb, dst += 32) {
      int one = type == KVS_GGML_Q5_1;
      float d = f16le(p), m = one ? f16le(p + 2) : 0.0f;
      const uint8_t *h = p + 2 + 2 * one, *qs = h + 4;
      uint32_t qh =
          (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
      for (int j = 0; j < 16; j++) {
        int x0 = (qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
        int x1 = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
        if (one) {
          dst[j] = x0 * d + m;
          dst[j + 16] = x1 * d + m;
        } else {
          dst[j] = (x0 - 16) * d;
          dst[j + 16] = (x1 - 16) * d;
        }
      }
    }
    return KVS_OK;
  case KVS_GGML_Q4_K: dq_q4_K(p, dst, n / 256); return KVS_OK;
  case KVS_GGML_Q5_K: dq_q5_K(p, dst, n / 256); return KVS_OK;
  case KVS_GGML_Q6_K: dq_q6_K(p, dst, n / 256); return KVS_OK;
  default: return KVS_ENOTSUP;
  }
}
