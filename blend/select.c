#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"

static const char *const g_names[] = {"none", "cacheblend", "epic", "adaptive", "full"};

const char *kvs_sel_name(uint32_t s) { return s < 5 ? g_names[s] : "unknown"; }

int kvs_sel_parse(const char *s) {
  for (int i = 0; s && i < 5; i++)
    if (strcmp(s, g_names[i]) == 0) return i;
  return -1;
}

kvs_sel_params kvs_sel_defaults(uint32_t strategy) {
  kvs_sel_params p = {.strategy = strategy};
  switch (strategy) {
  case KVS_SEL_CACHEBLEND: p.ratio = 0.15f; break; /* the paper's operating point */
  case KVS_SEL_EPIC: p.epic_first = 16; break;
  case KVS_SEL_ADAPTIVE:
    p.ratio = 0.15f;
    p.epic_first = 4;
    p.sink_tokens = 4;
    p.adaptive_mass = 0.5f;
    p.min_ratio = 0.02f;
    break;
  default: break;
  }
  return p;
}

static int by_dev_desc(const void *a, const void *b, void *ctx) {
  const float *d = ctx;
  uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
  /* NaN deviations sort first: a token whose KV is broken must be recomputed */
  float x = isnan(d[i]) ? INFINITY : d[i], y = isnan(d[j]) ? INFINITY : d[j];
  if (x > y) return -1;
  if (x < y) return 1;
  return i < j ? -1 : (i > j);
}

/* ratio * n rounded up, forgiving the float error of ratios such as 0.1f */
static uint32_t share(float ratio, uint32_t n) {
  double x = ceil((double)ratio * n - 1e-4);
  return x <= 0 ? 0 : x >= n ? n : (uint32_t)x;
}

static kvs_err sorted_by_deviation(uint32_t n, const float *dev, uint32_t *idx) {
  for (uint32_t i = 0; i < n; i++)
    idx[i] = i;
  qsort_r(idx, n, sizeof *idx, by_dev_desc, (void *)dev);
  return KVS_OK;
}

kvs_err kvs_blend_select(const kvs_sel_params *p, uint32_t n, const float *dev,
                         const uint8_t *chunk_start, uint8_t *sel, uint32_t *n_selected,
                         uint32_t *scratch) {
  if (!p || !n_selected || (n && !sel)) return KVS_EINVAL;
  *n_selected = 0;
  if (n == 0) return KVS_OK;
  memset(sel, 0, n);
  uint32_t count = 0;
  switch (p->strategy) {
  case KVS_SEL_NONE: break;
  case KVS_SEL_FULL:
    memset(sel, 1, n);
    count = n;
    break;
  case KVS_SEL_EPIC: {
    uint32_t left = 0;
    for (uint32_t i = 0; i < n; i++) {
      if (i == 0 || (chunk_start && chunk_start[i])) left = p->epic_first;
      if (left) {
        sel[i] = 1, count++, left--;
      }
    }
    break;
  }
  case KVS_SEL_CACHEBLEND:
  case KVS_SEL_ADAPTIVE: {
    if (!dev) return KVS_EINVAL;
    if (!(p->ratio >= 0.0f && p->ratio <= 1.0f)) return KVS_EINVAL;
    uint32_t *idx = scratch ? scratch : malloc((size_t)n * sizeof *idx);
    if (!idx) return KVS_ENOMEM;
    sorted_by_deviation(n, dev, idx);
    uint32_t cap = share(p->ratio, n);
    if (p->strategy == KVS_SEL_CACHEBLEND) {
      for (uint32_t r = 0; r < cap; r++)
        sel[idx[r]] = 1;
      count = cap;
    } else {
      /* structural picks first: the prompt's sinks and each chunk's first tokens,
       * whose stored KV saw no context at all */
      uint32_t left = 0;
      for (uint32_t i = 0; i < n; i++) {
        if (i == 0 || (chunk_start && chunk_start[i])) left = p->epic_first;
        if (i < p->sink_tokens || left) {
          if (!sel[i]) sel[i] = 1, count++;
        }
        if (left) left--;
      }
      /* then by deviation until the deviation left is a small share of the total */
      double total = 0, taken = 0;
      for (uint32_t i = 0; i < n; i++)
        total += isfinite(dev[i]) ? dev[i] : 0;
      for (uint32_t i = 0; i < n; i++)
        if (sel[i] && isfinite(dev[i])) taken += dev[i];
      uint32_t floor_n = share(p->min_ratio, n);
      for (uint32_t r = 0; r < n && count < cap; r++) {
        uint32_t i = idx[r];
        if (sel[i]) continue;
        int must = !isfinite(dev[i]) || count < floor_n;
        if (!must && total > 0 && (total - taken) <= (double)p->adaptive_mass * total) break;
        sel[i] = 1, count++;
        taken += isfinite(dev[i]) ? dev[i] : 0;
      }
    }
    if (!scratch) free(idx);
    break;
  }
  default: return KVS_EINVAL;
  }
  *n_selected = count;
  return KVS_OK;
}

kvs_err kvs_blend_deviation_f16(const kvs_layout *l, uint32_t n, const kvs_f16 *ka,
                                const kvs_f16 *va, const kvs_f16 *kb, const kvs_f16 *vb,
                                float *dev) {
  if (!l || !dev || (n && (!ka || !va || !kb || !vb))) return KVS_EINVAL;
  size_t w = (size_t)l->n_kv_heads * l->head_dim;
  for (uint32_t t = 0; t < n; t++) {
    float s = 0;
    for (size_t j = 0; j < w; j++) {
      float dk = kvs_f16_to_f32(ka[t * w + j]) - kvs_f16_to_f32(kb[t * w + j]);
      float dv = kvs_f16_to_f32(va[t * w + j]) - kvs_f16_to_f32(vb[t * w + j]);
      s += dk * dk + dv * dv;
    }
    dev[t] = s;
  }
  return KVS_OK;
}

kvs_load_plan kvs_blend_plan(const kvs_cost_model *m, uint64_t enc, uint64_t dec, uint32_t n) {
  kvs_load_plan p = {0};
  double fetch = m->fetch_bytes_per_s > 0 ? (double)enc / m->fetch_bytes_per_s : INFINITY;
  double decode = m->decode_bytes_per_s > 0 ? (double)dec / m->decode_bytes_per_s : INFINITY;
  p.recompute_s = m->prefill_s_per_token * n;
  p.load_s = m->fetch_latency_s + fetch + decode + m->recompute_ratio * p.recompute_s;
  p.load = p.load_s < p.recompute_s;
  return p;
}
