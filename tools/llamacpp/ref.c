/* ref.c - kvs-llama-ref: asks llama.cpp (libllama) for the reference numbers
 * that kvstash's model/ is checked against. Built by tools/llamacpp/build.sh,
 * not part of the CMake tree (CI never needs llama.cpp).
 *
 *   kvs-llama-ref tok MODEL IN OUT
 *       IN: records { u32 flags (bit0 parse_special) | u32 len | len bytes }
 *       OUT: per record { u32 n | n x i32 ids } (llama_tokenize, add_special=0)
 *   kvs-llama-ref logits MODEL IN OUT K
 *       IN as for tok; each record is tokenized, run in ONE batch with every
 *       position's logits kept (fresh context per prompt), and written as
 *       { u32 n | n x i32 ids | n x K x (i32 id, f32 logit) } (top-K, descending)
 *   kvs-llama-ref bench MODEL IDS N_GEN THREADS
 *       prefill of the prompt in IDS (raw i32 token ids) in one batch, then
 *       N_GEN greedy decode steps; prints {"prefill_tok_s":..,"decode_tok_s":..}
 *   kvs-llama-ref f32 MODEL OUT
 *       writes MODEL with every tensor dequantized to F32 (llama_model_quantize,
 *       ALL_F32): llama.cpp then multiplies with f32 activations, the reference
 *       without its 8-bit activation rounding (docs/model.md says why)
 * All integers little-endian (x86). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llama.h"

static void die(const char *m) {
  fprintf(stderr, "kvs-llama-ref: %s\n", m);
  exit(1);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int read_rec(FILE *f, uint32_t *flags, char **text, uint32_t *len) {
  if (fread(flags, 4, 1, f) != 1) return 0;
  if (fread(len, 4, 1, f) != 1) die("bad record");
  *text = malloc(*len + 1);
  if (!*text || fread(*text, 1, *len, f) != *len) die("bad record text");
  (*text)[*len] = 0;
  return 1;
}

static int32_t *tokenize(const struct llama_vocab *vocab, const char *text, uint32_t len,
                         int parse_special, int32_t *n_out) {
  int32_t cap = (int32_t)len + 16;
  int32_t *ids = malloc((size_t)cap * sizeof *ids);
  int32_t n = llama_tokenize(vocab, text, (int32_t)len, ids, cap, false, parse_special != 0);
  if (n < 0) die("tokenize failed");
  *n_out = n;
  return ids;
}

static struct llama_context *new_ctx(struct llama_model *model, uint32_t n_ctx, int threads) {
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_ctx;
  cp.n_batch = n_ctx;
  cp.n_ubatch = n_ctx;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.no_perf = true;
  struct llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) die("context");
  return ctx;
}

typedef struct {
  int32_t id;
  float v;
} pair;
static int cmp_pair(const void *a, const void *b) {
  const pair *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return x->id - y->id;
}

int main(int argc, char **argv) {
  if (argc < 3) die("usage: tok|logits|bench|f32 MODEL ...");
  llama_backend_init();
  if (!strcmp(argv[1], "f32")) {
    if (argc < 4) die("need OUT");
    struct llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.ftype = LLAMA_FTYPE_ALL_F32;
    qp.allow_requantize = 1;
    if (llama_model_quantize(argv[2], argv[3], &qp) != 0) die("f32 conversion");
    llama_backend_free();
    return 0;
  }
  struct llama_model_params mp = llama_model_default_params();
  struct llama_model *model = llama_model_load_from_file(argv[2], mp);
  if (!model) die("model load");
  const struct llama_vocab *vocab = llama_model_get_vocab(model);
  int32_t n_vocab = llama_vocab_n_tokens(vocab);
  if (!strcmp(argv[1], "tok") || !strcmp(argv[1], "logits")) {
    if (argc < 5) die("need IN OUT");
    int k = argc > 5 ? atoi(argv[5]) : 0;
    FILE *in = fopen(argv[3], "rb"), *out = fopen(argv[4], "wb");
    if (!in || !out) die("open files");
    uint32_t flags, len;
    char *text;
    pair *pr = malloc((size_t)n_vocab * sizeof *pr);
    while (read_rec(in, &flags, &text, &len)) {
      int32_t n;
      int32_t *ids = tokenize(vocab, text, len, flags & 1, &n);
      uint32_t un = (uint32_t)n;
      fwrite(&un, 4, 1, out);
      fwrite(ids, 4, (size_t)n, out);
      if (!strcmp(argv[1], "logits") && n > 0) {
        struct llama_context *ctx = new_ctx(model, (uint32_t)n, 2);
        struct llama_batch b = llama_batch_init(n, 0, 1);
        for (int32_t i = 0; i < n; i++) {
          b.token[i] = ids[i];
          b.pos[i] = i;
          b.n_seq_id[i] = 1;
          b.seq_id[i][0] = 0;
          b.logits[i] = 1;
        }
        b.n_tokens = n;
        if (llama_decode(ctx, b) != 0) die("decode");
        for (int32_t i = 0; i < n; i++) {
          const float *lg = llama_get_logits_ith(ctx, i);
          for (int32_t j = 0; j < n_vocab; j++)
            pr[j] = (pair){j, lg[j]};
          qsort(pr, (size_t)n_vocab, sizeof *pr, cmp_pair);
          for (int j = 0; j < k; j++) {
            fwrite(&pr[j].id, 4, 1, out);
            fwrite(&pr[j].v, 4, 1, out);
          }
        }
        llama_batch_free(b);
        llama_free(ctx);
      }
      free(ids);
      free(text);
    }
    free(pr);
    fclose(in);
    fclose(out);
  } else if (!strcmp(argv[1], "bench")) {
    if (argc < 6) die("need IDS N_GEN THREADS");
    FILE *fi = fopen(argv[3], "rb");
    if (!fi) die("open ids");
    fseek(fi, 0, SEEK_END);
    int np = (int)(ftell(fi) / 4);
    fseek(fi, 0, SEEK_SET);
    int32_t *pids = malloc((size_t)(np ? np : 1) * 4);
    if (np <= 0 || fread(pids, 4, (size_t)np, fi) != (size_t)np) die("read ids");
    fclose(fi);
    int ng = atoi(argv[4]), th = atoi(argv[5]);
    struct llama_context *ctx = new_ctx(model, (uint32_t)(np + ng + 1), th);
    struct llama_batch b = llama_batch_init(np, 0, 1);
    for (int i = 0; i < np; i++) {
      b.token[i] = pids[i];
      b.pos[i] = i;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = 0;
      b.logits[i] = i == np - 1;
    }
    b.n_tokens = np;
    double t0 = now_s();
    if (llama_decode(ctx, b) != 0) die("decode");
    double t1 = now_s();
    int32_t tok = 0;
    for (int i = 0; i < ng; i++) {
      const float *lg = llama_get_logits_ith(ctx, -1);
      int32_t best = 0;
      for (int32_t j = 1; j < n_vocab; j++)
        if (lg[j] > lg[best]) best = j;
      tok = best;
      struct llama_batch one = llama_batch_get_one(&tok, 1);
      if (llama_decode(ctx, one) != 0) die("decode step");
    }
    double t2 = now_s();
    printf("{\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f}\n", np / (t1 - t0),
           ng > 0 ? ng / (t2 - t1) : 0.0);
    llama_batch_free(b);
    llama_free(ctx);
    free(pids);
  } else {
    die("unknown mode");
  }
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
