/* llama_state.c - llama.cpp sequence state bytes <-> kvstash canonical KV.
 * The byte layout is in kvs_llama.h; it is that of llama.cpp 0.3.16
 * (llama-kv-cache-unified.cpp state_write / state_read). Pure: no libllama
 * call, so that the format is checked here the same way for every caller. */
#include <stdlib.h>
#include <string.h>

#include "kvs_llama.h"
#include "llama_int.h"

typedef struct rd {
  const uint8_t *p;
  size_t n, off;
} rd;

static int rd_u32(rd *r, uint32_t *v) {
  if (r->n - r->off < 4) return 0;
  memcpy(v, r->p + r->off, 4);
  r->off += 4;
  return 1;
}
static int rd_u64(rd *r, uint64_t *v) {
  if (r->n - r->off < 8) return 0;
  memcpy(v, r->p + r->off, 8);
  r->off += 8;
  return 1;
}
/* Skips len bytes, returning where they start (NULL when short). */
static const uint8_t *rd_take(rd *r, uint64_t len) {
  if (r->n - r->off < len) return NULL;
  const uint8_t *q = r->p + r->off;
  r->off += (size_t)len;
  return q;
}

/* Where the parts of a parsed blob are. */
typedef struct parsed {
  kvs_llama_state_info info;
  const uint8_t *meta;              /* cell records (12 bytes each) */
  const uint8_t *k[KVS_MAX_LAYERS]; /* per layer: cells x row */
  const uint8_t *v[KVS_MAX_LAYERS]; /* per layer: cells x row, or row-major transposed */
  uint32_t *order;                  /* order[t] = cell index of position pos0 + t (malloc'd) */
} parsed;

#define FAIL(e, what)                                                                              \
  do {                                                                                             \
    err = KVS_ERR_AT(e, what);                                                                     \
    KVS_LOGW("llama", "state rejected", "reason=\"%s\" at=%zu", what, r.off);                      \
    goto out;                                                                                      \
  } while (0)

static kvs_err parse(const kvs_layout *l, const void *state, size_t n, parsed *ps) {
  memset(ps, 0, sizeof *ps);
  kvs_err err = KVS_OK;
  rd r = {state, n, 0};
  uint8_t *seen = NULL;
  if (!l || !state || l->dtype != KVS_DTYPE_F16 || l->n_layers > KVS_MAX_LAYERS)
    return KVS_ERR_AT(KVS_EINVAL, "layout");
  const uint64_t row = (uint64_t)l->n_kv_heads * l->head_dim * 2;
  uint32_t n_stream, cells = 0, stream = 0, found = 0;
  if (!rd_u32(&r, &n_stream) || n_stream == 0 || n_stream > KVS_LLAMA_MAX_STREAMS)
    FAIL(KVS_EVERSION, "n_stream");
  ps->info.n_stream = n_stream;
  for (uint32_t s = 0; s < n_stream; s++) {
    uint32_t cc;
    if (!rd_u32(&r, &cc)) FAIL(KVS_EVERSION, "cell_count");
    if (cc == 0) continue;
    if (found) FAIL(KVS_ENOTSUP, "cells in more than one stream");
    found = 1, stream = s, cells = cc;
    if ((uint64_t)cc * 12 > r.n - r.off) FAIL(KVS_EVERSION, "cell records");
    ps->meta = r.p + r.off;
    int32_t pmin = INT32_MAX, pmax = INT32_MIN, sid0 = 0;
    for (uint32_t i = 0; i < cc; i++) {
      int32_t pos, sid;
      uint32_t nsid;
      memcpy(&pos, r.p + r.off, 4);
      memcpy(&nsid, r.p + r.off + 4, 4);
      if (nsid != 1) FAIL(KVS_EVERSION, "n_seq_id != 1");
      memcpy(&sid, r.p + r.off + 8, 4);
      if (i == 0) sid0 = sid;
      if (sid != sid0) FAIL(KVS_ECORRUPT, "mixed seq ids");
      if (pos < 0) FAIL(KVS_ECORRUPT, "negative position");
      if (pos < pmin) pmin = pos;
      if (pos > pmax) pmax = pos;
      r.off += 12;
    }
    if ((int64_t)pmax - pmin + 1 != (int64_t)cc) FAIL(KVS_ECORRUPT, "positions not contiguous");
    ps->info.pos0 = pmin;
    ps->info.seq_id = sid0;
    uint32_t v_trans, n_layer;
    if (!rd_u32(&r, &v_trans) || v_trans > 1) FAIL(KVS_EVERSION, "v_trans");
    if (!rd_u32(&r, &n_layer)) FAIL(KVS_EVERSION, "n_layer");
    if (n_layer != l->n_layers) FAIL(KVS_ELAYOUT, "layer count differs from the model");
    ps->info.v_trans = v_trans;
    for (uint32_t li = 0; li < n_layer; li++) {
      uint32_t type;
      uint64_t rb;
      if (!rd_u32(&r, &type)) FAIL(KVS_EVERSION, "k type");
      if (type != KVS_GGML_TYPE_F16) FAIL(KVS_ENOTSUP, "K cache type is not F16");
      if (!rd_u64(&r, &rb)) FAIL(KVS_EVERSION, "k row size");
      if (rb != row) FAIL(KVS_ELAYOUT, "K row size differs from heads x head_dim");
      if (!(ps->k[li] = rd_take(&r, rb * cc))) FAIL(KVS_EVERSION, "k rows");
    }
    for (uint32_t li = 0; li < n_layer; li++) {
      uint32_t type;
      if (!rd_u32(&r, &type)) FAIL(KVS_EVERSION, "v type");
      if (type != KVS_GGML_TYPE_F16) FAIL(KVS_ENOTSUP, "V cache type is not F16");
      if (!v_trans) {
        uint64_t rb;
        if (!rd_u64(&r, &rb)) FAIL(KVS_EVERSION, "v row size");
        if (rb != row) FAIL(KVS_ELAYOUT, "V row size differs from heads x head_dim");
      } else {
        uint32_t el, nev;
        if (!rd_u32(&r, &el) || el != 2) FAIL(KVS_EVERSION, "v element size");
        if (!rd_u32(&r, &nev)) FAIL(KVS_EVERSION, "v embd");
        if ((uint64_t)nev * 2 != row) FAIL(KVS_ELAYOUT, "V width differs from heads x head_dim");
      }
      if (!(ps->v[li] = rd_take(&r, row * cc))) FAIL(KVS_EVERSION, "v rows");
    }
  }
  if (r.off != r.n) FAIL(KVS_EVERSION, "trailing bytes");
  ps->info.stream = stream;
  ps->info.n_tokens = cells;
  ps->info.ordered = 1;
  if (cells) {
    ps->order = malloc((size_t)cells * sizeof *ps->order);
    seen = calloc(cells, 1);
    if (!ps->order || !seen) FAIL(KVS_ENOMEM, "order");
    for (uint32_t i = 0; i < cells; i++) {
      int32_t pos;
      memcpy(&pos, ps->meta + (size_t)i * 12, 4);
      uint32_t t = (uint32_t)(pos - ps->info.pos0);
      if (seen[t]) FAIL(KVS_ECORRUPT, "position repeated");
      seen[t] = 1;
      ps->order[t] = i;
      if (t != i) ps->info.ordered = 0;
    }
  }
out:
  free(seen);
  if (err) {
    free(ps->order);
    ps->order = NULL;
  }
  return err;
}

kvs_err kvs_llama_state_parse(const kvs_layout *l, const void *state, size_t n,
                              kvs_llama_state_info *info) {
  parsed *ps = malloc(sizeof *ps);
  if (!ps) return KVS_ENOMEM;
  kvs_err err = parse(l, state, n, ps);
  if (!err && info) *info = ps->info;
  free(ps->order);
  free(ps);
  return err;
}

kvs_err kvs_llama_state_to_canonical(const kvs_layout *l, const void *state, size_t n, uint32_t b,
                                     uint32_t e, void *out, size_t out_cap) {
  parsed *ps = malloc(sizeof *ps);
  if (!ps) return KVS_ENOMEM;
  kvs_err err = parse(l, state, n, ps);
  if (err) goto done;
  if (b > e || e > ps->info.n_tokens) {
    err = KVS_ERR_AT(KVS_ERANGE, "token range");
    goto done;
  }
  const uint32_t cnt = e - b, cells = ps->info.n_tokens;
  const size_t row = (size_t)l->n_kv_heads * l->head_dim * 2, plane = row * cnt;
  if (out_cap < 2 * plane * l->n_layers) {
    err = KVS_ERR_AT(KVS_ERANGE, "out_cap");
    goto done;
  }
  const size_t width = (size_t)l->n_kv_heads * l->head_dim;
  for (uint32_t li = 0; li < l->n_layers; li++) {
    uint8_t *k = (uint8_t *)out + 2 * li * plane, *v = k + plane;
    for (uint32_t t = 0; t < cnt; t++)
      memcpy(k + t * row, ps->k[li] + (size_t)ps->order[b + t] * row, row);
    if (!ps->info.v_trans) {
      for (uint32_t t = 0; t < cnt; t++)
        memcpy(v + t * row, ps->v[li] + (size_t)ps->order[b + t] * row, row);
    } else {
      /* transposed: element j of cell c at (j * cells + c) */
      /* byte copies: neither the blob nor out need be 2-byte aligned */
      const uint8_t *src = ps->v[li];
      for (uint32_t t = 0; t < cnt; t++) {
        const size_t c = ps->order[b + t];
        for (size_t j = 0; j < width; j++)
          memcpy(v + 2 * (t * width + j), src + 2 * (j * cells + c), 2);
      }
    }
  }
done:
  free(ps->order);
  free(ps);
  return err;
}

size_t kvs_llama_state_bound(const kvs_layout *l, const kvs_llama_state_info *in) {
  size_t n = 4 + 4 * (size_t)in->n_stream;
  if (!in->n_tokens) return n;
  const size_t row = (size_t)l->n_kv_heads * l->head_dim * 2;
  n += (size_t)in->n_tokens * 12 + 8;
  /* per layer and plane: a 12-byte header (type + row size, or type +
   * element size + width when V is transposed), then the rows */
  n += (size_t)l->n_layers * 2 * (12 + row * in->n_tokens);
  return n;
}

static void wr_u32(uint8_t **p, uint32_t v) {
  memcpy(*p, &v, 4);
  *p += 4;
}
static void wr_u64(uint8_t **p, uint64_t v) {
  memcpy(*p, &v, 8);
  *p += 8;
}

kvs_err kvs_llama_state_from_canonical(const kvs_layout *l, const kvs_llama_state_info *in,
                                       const void *const *parts, const uint32_t *part_tokens,
                                       size_t n_parts, void *out, size_t cap, size_t *n_out) {
  if (!l || !in || !out || l->dtype != KVS_DTYPE_F16 || in->n_stream == 0 ||
      in->n_stream > KVS_LLAMA_MAX_STREAMS || in->stream >= in->n_stream || in->v_trans > 1 ||
      in->pos0 < 0 || (n_parts && (!parts || !part_tokens)))
    return KVS_ERR_AT(KVS_EINVAL, "from_canonical args");
  uint64_t sum = 0;
  for (size_t i = 0; i < n_parts; i++)
    sum += part_tokens[i];
  if (sum != in->n_tokens) return KVS_ERR_AT(KVS_EINVAL, "part tokens");
  const size_t need = kvs_llama_state_bound(l, in);
  if (cap < need) return KVS_ERR_AT(KVS_ERANGE, "state cap");
  const uint32_t cells = in->n_tokens;
  const size_t row = (size_t)l->n_kv_heads * l->head_dim * 2,
               width = (size_t)l->n_kv_heads * l->head_dim;
  uint8_t *p = out;
  wr_u32(&p, in->n_stream);
  for (uint32_t s = 0; s < in->n_stream; s++) {
    wr_u32(&p, s == in->stream ? cells : 0);
    if (s != in->stream || !cells) continue;
    for (uint32_t i = 0; i < cells; i++) {
      wr_u32(&p, (uint32_t)(in->pos0 + (int32_t)i));
      wr_u32(&p, 1);
      wr_u32(&p, (uint32_t)in->seq_id);
    }
    wr_u32(&p, in->v_trans);
    wr_u32(&p, l->n_layers);
    for (int kv = 0; kv < 2; kv++) {
      for (uint32_t li = 0; li < l->n_layers; li++) {
        wr_u32(&p, KVS_GGML_TYPE_F16);
        if (kv == 0 || !in->v_trans) {
          wr_u64(&p, row);
        } else {
          wr_u32(&p, 2);
          wr_u32(&p, (uint32_t)width);
        }
        if (kv == 0 || !in->v_trans) {
          for (size_t i = 0; i < n_parts; i++) {
            const size_t plane = row * part_tokens[i];
            memcpy(p, (const uint8_t *)parts[i] + (2 * li + (size_t)kv) * plane, plane);
            p += plane;
          }
        } else {
          uint16_t *dst = (uint16_t *)(void *)p;
          for (size_t j = 0; j < width; j++) {
            for (size_t i = 0; i < n_parts; i++) {
              const size_t pt = part_tokens[i], plane = row * pt;
              const uint16_t *src = (const uint16_t *)(const void *)((const uint8_t *)parts[i] +
                                                                     (2 * li + 1) * plane);
              for (size_t t = 0; t < pt; t++)
                *dst++ = src[t * width + j];
            }
          }
          p += row * cells;
        }
      }
    }
  }
  *n_out = (size_t)(p - (uint8_t *)out);
  return *n_out == need ? KVS_OK : KVS_ERR_AT(KVS_EINTERNAL, "state size");
}
