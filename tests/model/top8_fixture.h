/* top8_fixture.h - llama.cpp's top-8 logits for fixture prompts, read and
 * scored in one place for the model tests and bench/model's check-reference.
 *
 * The file (tests/model/fixtures/logits_top8.dat, qwen2_*_top8.dat; written by
 * tools/llamacpp/make_fixtures.py and make_qwen2_fixtures.py) is records, all
 * little-endian: { u32 n | n x i32 token ids | n x 8 x (i32 id, f32 logit) },
 * the 8 pairs of a position best first. Header-only (static functions): the
 * tests and the bench include it. */
#ifndef KVS_TOP8_FIXTURE_H
#define KVS_TOP8_FIXTURE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_model.h"

/* The stated tolerances (docs/model.md): llama.cpp rounds activations to 8
 * bits for its quantized products and Q / attention weights to fp16, we keep
 * f32 activations. Positions whose llama.cpp top-2 margin is at most
 * TOP8_MARGIN_TOL are near-ties: top-1 may legitimately differ there; they
 * are counted and printed, not hidden. */
#define TOP8_MARGIN_TOL 0.75f
#define TOP8_LOGIT_TOL  2.0f

typedef struct {
  uint32_t n;         /* tokens of the prompt */
  kvs_token *ids;     /* (n) owned: freed by the next top8_next */
  const uint8_t *top; /* (n, 8, {i32 id, f32 logit}) inside the caller's file buffer */
} top8_prompt;

/* The record at *off of file[0..len) into *p (p->ids = NULL before the first
 * call). 1: one more prompt, *off past it; 0: the end (p->ids freed); -1: a
 * record cut short or empty (p->ids freed). */
static inline int top8_next(const uint8_t *file, size_t len, size_t *off, top8_prompt *p) {
  free(p->ids);
  p->ids = NULL;
  if (*off == len) return 0;
  if (len - *off < 4) return -1;
  uint32_t n;
  memcpy(&n, file + *off, 4);
  if (n == 0 || (len - *off - 4) / 68 < n) return -1;
  p->ids = malloc((size_t)n * sizeof *p->ids);
  if (!p->ids) return -1;
  memcpy(p->ids, file + *off + 4, 4 * (size_t)n);
  p->n = n;
  p->top = file + *off + 4 + 4 * (size_t)n;
  *off += 4 + 68 * (size_t)n;
  return 1;
}

/* llama.cpp's 8 best at position i of p: ids and logits, best first. */
static inline void top8_at(const top8_prompt *p, uint32_t i, int32_t id[8], float v[8]) {
  for (int k = 0; k < 8; k++) {
    memcpy(&id[k], p->top + ((size_t)i * 8 + k) * 8, 4);
    memcpy(&v[k], p->top + ((size_t)i * 8 + k) * 8 + 4, 4);
  }
}

typedef struct {
  uint32_t positions, checked, agree, ties, tie_agree;
  float max_err;  /* largest |our logit - llama.cpp's| over its top 8 */
  double sum_err; /* for the mean, over n_err */
  size_t n_err;
} top8_score;

/* Scores our logits row (V) at one position against llama.cpp's id/v (top8_at).
 * Returns our top-1 when the position is checked (margin > TOP8_MARGIN_TOL)
 * and it differs from llama.cpp's, else -1. */
static inline kvs_token top8_add(top8_score *s, const float *row, uint32_t V, const int32_t id[8],
                                 const float v[8]) {
  for (int k = 0; k < 8; k++) {
    float err = fabsf(row[id[k]] - v[k]);
    s->max_err = err > s->max_err ? err : s->max_err;
    s->sum_err += err;
    s->n_err++;
  }
  kvs_token ours = kvs_argmax(row, V);
  s->positions++;
  if (v[0] - v[1] > TOP8_MARGIN_TOL) {
    s->checked++;
    s->agree += ours == id[0];
    return ours == id[0] ? -1 : ours;
  }
  s->ties++;
  s->tie_agree += ours == id[0];
  return -1;
}

static inline double top8_mean_err(const top8_score *s) {
  return s->n_err ? s->sum_err / (double)s->n_err : 0.0;
}
static inline double top8_agreement(const top8_score *s) {
  return s->checked ? (double)s->agree / s->checked : 0.0;
}

/* The CPU model m over every prompt of file[0..len): each prefilled alone
 * (logits at every position), scored into *s; a checked position where the
 * top-1 differs is printed. KVS_ECORRUPT for a record cut short. */
static inline kvs_err top8_run_cpu(kvs_model *m, const uint8_t *file, size_t len, top8_score *s) {
  uint32_t V = kvs_model_config(m)->n_vocab;
  top8_prompt p = {0};
  size_t off = 0;
  kvs_err err = KVS_OK;
  int more;
  while (!err && (more = top8_next(file, len, &off, &p)) != 0) {
    if (more < 0) return KVS_ECORRUPT;
    kvs_seq *seq = NULL;
    float *lg = malloc((size_t)p.n * V * sizeof *lg);
    err = lg ? kvs_seq_create(m, p.n, &seq) : KVS_ENOMEM;
    if (!err) err = kvs_model_prefill(m, seq, p.ids, p.n, 1, lg);
    for (uint32_t i = 0; !err && i < p.n; i++) {
      int32_t id[8];
      float v[8];
      top8_at(&p, i, id, v);
      const float *row = lg + (size_t)i * V;
      kvs_token ours = top8_add(s, row, V, id, v);
      if (ours >= 0)
        printf("\n  DISAGREE pos %u: ours %d (%.3f) llama.cpp %d (%.3f, margin %.3f)", i, ours,
               row[ours], id[0], v[0], v[0] - v[1]);
    }
    kvs_seq_free(seq);
    free(lg);
  }
  free(p.ids);
  return err;
}

/* One line of figures (tag: a prefix, "" for none). */
static inline void top8_print(const char *tag, const top8_score *s) {
  printf("\n  %spositions=%u checked(margin>%.2f)=%u agree=%u near_ties=%u (of which top-1 equal "
         "%u) max_logit_err=%.4f (tol %.2f) mean_logit_err=%.4f top1_agreement=%.4f\n",
         tag, s->positions, TOP8_MARGIN_TOL, s->checked, s->agree, s->ties, s->tie_agree,
         s->max_err, TOP8_LOGIT_TOL, top8_mean_err(s), top8_agreement(s));
}

#endif
