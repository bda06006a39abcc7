/* example.c - kvs-llama-chat: llama.cpp serving SmolLM2 with kvstash attached.
 * The part an engine developer copies is marked "kvstash:"; the rest is plain
 * llama.cpp. kvstash goes through reuse/ (kvs_reuse_run) over the llama.cpp
 * engine (kvs_llama_engine: a state-restore engine): it plans (one lookup,
 * load or recompute per chunk), restores, decodes the rest and stores what
 * it computed. Two jobs:
 *  - a two-turn chat (turn 1 = system + a MuSiQue context + a question; turn
 *    2 = a follow-up): turn 2 loads turn 1's prefix chunks from kvstashd;
 *  - a MuSiQue RAG prompt: the instruction a prefix, every passage a
 *    content-keyed chunk (stored as computed in the first prompt, re-rotated
 *    to its offset when loaded; no token recomputed: strategy none).
 *
 *   kvs-llama-chat --model SmolLM2-135M-Instruct.Q4_1.gguf
 *                  --data musique_s.json [--item 0] [--url tcp://127.0.0.1:7878]
 *                  [--threads 2] [--passages 5]
 * Without --url (or with kvstashd down) it runs, without reuse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_engine.h"
#include "kvs_llama.h"
#include "kvs_rag.h"
#include "kvs_reuse.h"
#include "llama.h"

static const char *INSTRUCTION =
    "<|im_start|>system\nYou are a helpful assistant. Answer the question using the passages. "
    "Reply with a short answer only.<|im_end|>\n<|im_start|>user\n";

typedef struct toks {
  int32_t *v;
  size_t n, cap;
} toks;

/* Appends the tokens of text (special tokens parsed when `special`). */
static int tok_append(const struct llama_vocab *vocab, toks *t, const char *text, int special) {
  int32_t len = (int32_t)strlen(text);
  size_t need = t->n + (size_t)len + 8;
  if (need > t->cap) {
    int32_t *v = realloc(t->v, need * 2 * sizeof *v);
    if (!v) return -1;
    t->v = v, t->cap = need * 2;
  }
  int32_t k =
      llama_tokenize(vocab, text, len, t->v + t->n, (int32_t)(t->cap - t->n), false, special != 0);
  if (k < 0) return -1;
  t->n += (size_t)k;
  return 0;
}

/* Greedy: up to max_new tokens after a prefill of n_past tokens; appends
 * them to t (not the end token) and prints their text. */
static void generate(struct llama_context *ctx, const struct llama_vocab *vocab, toks *t,
                     int max_new) {
  const int32_t n_vocab = llama_vocab_n_tokens(vocab);
  llama_token end = -1;
  llama_tokenize(vocab, "<|im_end|>", 10, &end, 1, false, true);
  for (int i = 0; i < max_new; i++) {
    const float *lg = llama_get_logits_ith(ctx, -1);
    int32_t best = 0;
    for (int32_t j = 1; j < n_vocab; j++)
      if (lg[j] > lg[best]) best = j;
    if (best == end || llama_vocab_is_eog(vocab, best)) break;
    char piece[64];
    int m = llama_token_to_piece(vocab, best, piece, sizeof piece - 1, 0, false);
    if (m > 0) fwrite(piece, 1, (size_t)m, stdout);
    tok_append(vocab, t, "", 0); /* make room */
    t->v[t->n++] = best;
    struct llama_batch b = llama_batch_get_one(&t->v[t->n - 1], 1);
    if (llama_decode(ctx, b) != 0) break;
  }
  printf("\n");
}

/* Without kvstash: the prompt decoded in one go into seq 0, from position 0. */
static void plain(struct llama_context *ctx, const int32_t *tok, size_t n) {
  llama_memory_clear(llama_get_memory(ctx), true);
  struct llama_batch b = llama_batch_get_one((int32_t *)tok, (int32_t)n);
  if (llama_decode(ctx, b) != 0) fprintf(stderr, "llama_decode failed\n");
}

static void show(const char *what, const kvs_reuse_result *s, uint32_t n) {
  printf("  [%s] tokens=%u chunks=%u loaded=%u recomputed=%u missed=%u stored=%u dropped=%u  "
         "lookup %.1f ms, TTFT %.1f ms\n",
         what, n, s->n_chunks, s->n_load, s->n_recompute, s->n_miss, s->n_store_queued,
         s->n_store_dropped, s->t_lookup_s * 1e3, s->t_total_s * 1e3);
}

/* kvstash: one request through reuse/: the sequence holds the prompt and the
 * last token's logits are ready (llama_get_logits_ith(ctx, -1)) */
static kvs_engine_seq *request(kvs_reuse *r, kvs_engine *e, const int32_t *tok,
                               const kvs_reuse_segment *sg, uint32_t n_sg, uint32_t extra,
                               kvs_reuse_result *res) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < n_sg; i++)
    n += sg[i].n_tokens;
  kvs_reuse_request q = {.tokens = tok, .n_tokens = n, .segs = sg, .n_segs = n_sg};
  kvs_engine_seq *s = NULL;
  if (e->ops->seq_create(e, n + extra, &s)) return NULL;
  kvs_err err = kvs_reuse_run(r, s, &q, NULL, res, NULL, 0);
  if (err) {
    fprintf(stderr, "kvs_reuse_run: %s\n", kvs_strerror(err));
    e->ops->seq_free(e, s);
    return NULL;
  }
  return s;
}

int main(int argc, char **argv) {
  const char *model_path = NULL, *data = NULL, *url = NULL;
  int item = 0, threads = 2, max_passages = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model"))
      model_path = argv[i + 1];
    else if (!strcmp(argv[i], "--data"))
      data = argv[i + 1];
    else if (!strcmp(argv[i], "--url"))
      url = argv[i + 1];
    else if (!strcmp(argv[i], "--item"))
      item = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--passages"))
      max_passages = atoi(argv[i + 1]);
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in a log */
  data = kvs_rag_data_path(data);   /* default: the repo's data/rag copy */
  if (!model_path) {
    fprintf(stderr, "usage: kvs-llama-chat --model GGUF [--data musique.json[.zst]] [--url URL] "
                    "[--item N] [--threads N] [--passages N]\n");
    return 2;
  }
  kvs_rag_item *items = NULL;
  size_t n_items = 0;
  if (kvs_rag_load(data, &items, &n_items) != KVS_OK || (size_t)item >= n_items) {
    fprintf(stderr, "cannot read item %d of %s\n", item, data);
    return 1;
  }
  const kvs_rag_item *it = &items[item];

  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  struct llama_model *model = llama_model_load_from_file(model_path, mp);
  if (!model) return 1;
  const struct llama_vocab *vocab = llama_model_get_vocab(model);
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 8192;
  cp.n_batch = 8192;
  cp.n_ubatch = 256; /* kvstash: chunk_tokens (256) is a multiple: exact logits */
  cp.n_seq_max = 1;
  cp.kv_unified = true;
  cp.n_threads = cp.n_threads_batch = threads;
  struct llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) return 1;

  /* kvstash: a client (lazy: a kvstashd that is down only means no reuse) */
  kvs_client *client = NULL;
  if (url) {
    kvs_client_opts co;
    kvs_client_opts_init(&co);
    co.url = url;
    co.flags = KVS_CLIENT_LAZY;
    co.request_timeout_ms = 2000;
    if (kvs_client_create(&co, &client) != KVS_OK) {
      fprintf(stderr, "kvstash client: %s (going on without it)\n",
              client ? kvs_client_errmsg(client) : "no memory");
      kvs_client_free(client);
      client = NULL;
    }
  }
  /* kvstash: attach to the context; an engine over it; reuse/ over both */
  kvs_llama_opts ao;
  kvs_llama_opts_init(&ao);
  ao.client = client;
  ao.gguf_path = model_path;
  ao.flash_attn = cp.flash_attn;
  kvs_llama *kv = NULL;
  kvs_engine *eng = NULL;
  if (kvs_llama_create(model, ctx, &ao, &kv) != KVS_OK || kvs_llama_engine(kv, &eng) != KVS_OK)
    return 1;
  kvs_reuse *ru = NULL;
  kvs_reuse_opts ro;
  kvs_reuse_opts_init(&ro);
  ro.store = 1; /* store what a request computed, off the critical path */
  if (client && kvs_reuse_create(client, eng, &ro, &ru) != KVS_OK) {
    fprintf(stderr, "kvs_reuse_create failed: going on without kvstash\n");
    ru = NULL;
  }

  /* ---- chat: turn 1 = system + passages + question */
  toks t = {0};
  tok_append(vocab, &t, INSTRUCTION, 1);
  for (size_t i = 0; i < it->n_passages && (int)i < max_passages; i++) {
    char buf[8192];
    snprintf(buf, sizeof buf, "%s\n%s\n\n", it->title[i], it->text[i]);
    tok_append(vocab, &t, buf, 0);
  }
  char q[2048];
  snprintf(q, sizeof q, "Question: %s<|im_end|>\n<|im_start|>assistant\n", it->question);
  kvs_reuse_result st;
  memset(&st, 0, sizeof st);
  size_t n_ctx1 = t.n;
  tok_append(vocab, &t, q, 1);
  printf("turn 1 (%zu tokens): ", t.n);
  /* kvstash: the system prompt and the context a PREFIX (chunk chain), the question NEW */
  kvs_reuse_segment s1[2] = {{KVS_SEG_PREFIX, (uint32_t)n_ctx1},
                             {KVS_SEG_NEW, (uint32_t)(t.n - n_ctx1)}};
  kvs_engine_seq *sq = ru ? request(ru, eng, t.v, s1, 2, 64, &st) : NULL;
  if (!sq) plain(ctx, t.v, t.n);
  uint32_t n_prompt = (uint32_t)t.n;
  generate(ctx, vocab, &t, 24);
  if (sq) eng->ops->seq_free(eng, sq), show("turn 1", &st, n_prompt);
  /* turn 2: the conversation so far + a follow-up; a server would land here
   * on any replica, or after the slot was reused: the prefix comes back from
   * kvstashd (turn 1's whole chunks; what turn 2 computes is stored too) */
  size_t n_hist = t.n;
  tok_append(vocab, &t,
             "<|im_end|>\n<|im_start|>user\nIn which passage did you find it? "
             "Give its title.<|im_end|>\n<|im_start|>assistant\n",
             1);
  printf("turn 2 (%zu tokens): ", t.n);
  kvs_reuse_segment s2[2] = {{KVS_SEG_PREFIX, (uint32_t)n_hist},
                             {KVS_SEG_NEW, (uint32_t)(t.n - n_hist)}};
  if (ru) kvs_reuse_flush(ru); /* turn 1's stores acknowledged (a demo: no race) */
  sq = ru ? request(ru, eng, t.v, s2, 2, 64, &st) : NULL;
  if (!sq) plain(ctx, t.v, t.n);
  n_prompt = (uint32_t)t.n;
  generate(ctx, vocab, &t, 24);
  if (sq) eng->ops->seq_free(eng, sq), show("turn 2", &st, n_prompt);

  /* ---- RAG: instruction (PREFIX) + passages (CONTENT chunks), the question NEW */
  toks r = {0};
  kvs_reuse_segment sr[KVS_RAG_MAX_PASSAGES + 2];
  uint32_t ns = 0;
  tok_append(vocab, &r, INSTRUCTION, 1);
  sr[ns++] = (kvs_reuse_segment){KVS_SEG_PREFIX, (uint32_t)r.n};
  for (size_t i = 0; i < it->n_passages && (int)i < max_passages; i++) {
    char buf[8192];
    size_t s0 = r.n;
    snprintf(buf, sizeof buf, "%s\n%s\n\n", it->title[i], it->text[i]);
    tok_append(vocab, &r, buf, 0);
    sr[ns++] = (kvs_reuse_segment){KVS_SEG_CONTENT, (uint32_t)(r.n - s0)};
  }
  size_t nq = r.n;
  tok_append(vocab, &r, q, 1);
  sr[ns++] = (kvs_reuse_segment){KVS_SEG_NEW, (uint32_t)(r.n - nq)};
  toks a = r;
  a.v = malloc(r.cap * sizeof *a.v);
  printf("RAG, full prefill (%zu tokens): ", r.n);
  plain(ctx, r.v, r.n);
  memcpy(a.v, r.v, r.n * sizeof *a.v), a.n = r.n;
  generate(ctx, vocab, &a, 24);
  for (int pass = 0; ru && pass < 2; pass++) {
    printf("RAG through reuse/, %s (%zu tokens): ", pass ? "chunks loaded" : "first", r.n);
    if (pass) kvs_reuse_flush(ru);
    kvs_engine_seq *sx = request(ru, eng, r.v, sr, ns, 64, &st);
    if (!sx) break;
    memcpy(a.v, r.v, r.n * sizeof *a.v), a.n = r.n;
    generate(ctx, vocab, &a, 24);
    eng->ops->seq_free(eng, sx);
    show(pass ? "reuse" : "first", &st, (uint32_t)r.n);
  }
  printf("gold: %s\n", it->n_answers ? it->answers[0] : "?");

  free(a.v), free(r.v), free(t.v);
  kvs_reuse_free(ru);
  kvs_engine_free(eng);
  kvs_llama_free(kv);
  kvs_client_free(client);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  kvs_rag_items_free(items, n_items);
  return 0;
}
