/* example.c - kvs-llama-chat: llama.cpp serving SmolLM2 with kvstash attached.
 * The part an engine developer copies is marked "kvstash:"; the rest is plain
 * llama.cpp. Two jobs:
 *  - a two-turn chat (turn 1 = system + a MuSiQue context + a question; turn
 *    2 = a follow-up): turn 2 restores turn 1's prefix from kvstashd;
 *  - a MuSiQue RAG prompt: every passage's KV is a content-keyed chunk,
 *    computed alone once, restored at its offset (llama.cpp's K shift).
 *
 *   kvs-llama-chat --model SmolLM2-135M-Instruct.Q4_1.gguf
 *                  --data musique_s.json [--item 0] [--url tcp://127.0.0.1:7878]
 *                  [--threads 2] [--recompute 8] [--passages 5]
 * Without --url (or with kvstashd down) it runs, without reuse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_llama.h"
#include "kvs_rag.h"
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

static void show(const char *what, const kvs_llama_stats *s) {
  printf("  [%s] tokens=%u restored=%u decoded=%u put=%u failed=%u  lookup %.1f ms, fetch %.1f "
         "ms, restore %.1f ms, decode %.1f ms, put %.1f ms\n",
         what, s->n_tokens, s->n_restored, s->n_decoded, s->n_put, s->n_failed, s->t_lookup_s * 1e3,
         s->t_fetch_s * 1e3, s->t_restore_s * 1e3, s->t_decode_s * 1e3, s->t_put_s * 1e3);
}

int main(int argc, char **argv) {
  const char *model_path = NULL, *data = NULL, *url = NULL;
  int item = 0, threads = 2, recompute = 8, max_passages = 5;
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
    else if (!strcmp(argv[i], "--recompute"))
      recompute = atoi(argv[i + 1]);
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in a log */
  data = kvs_rag_data_path(data);   /* default: the repo's data/rag copy */
  if (!model_path) {
    fprintf(stderr, "usage: kvs-llama-chat --model GGUF [--data musique.json[.zst]] [--url URL] "
                    "[--item N] [--threads N] [--recompute R] [--passages N]\n");
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
  cp.n_seq_max = 2;  /* kvstash: seq 1 is the RAG scratch sequence */
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
  /* kvstash: attach to the context */
  kvs_llama_opts ao;
  kvs_llama_opts_init(&ao);
  ao.client = client;
  ao.gguf_path = model_path;
  ao.flash_attn = cp.flash_attn;
  kvs_llama *kv = NULL;
  if (kvs_llama_create(model, ctx, &ao, &kv) != KVS_OK) return 1;

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
  tok_append(vocab, &t, q, 1);
  kvs_llama_stats st;
  printf("turn 1 (%zu tokens): ", t.n);
  kvs_llama_prefill(kv, 0, t.v, t.n, &st); /* kvstash: lookup + restore + decode the rest */
  generate(ctx, vocab, &t, 24);
  show("turn 1 prefill", &st);
  kvs_llama_store(kv, 0, t.v, t.n, &st); /* kvstash: put new full chunks, after the reply */
  show("turn 1 store", &st);
  /* turn 2: the conversation so far + a follow-up; a server would land here
   * on any replica, or after the slot was reused: the prefix comes back from
   * kvstashd */
  tok_append(vocab, &t,
             "<|im_end|>\n<|im_start|>user\nIn which passage did you find it? "
             "Give its title.<|im_end|>\n<|im_start|>assistant\n",
             1);
  printf("turn 2 (%zu tokens): ", t.n);
  kvs_llama_prefill(kv, 0, t.v, t.n, &st);
  size_t n2 = t.n;
  generate(ctx, vocab, &t, 24);
  show("turn 2 prefill", &st);
  kvs_llama_store(kv, 0, t.v, n2, &st);

  /* ---- RAG: instruction + passages as content chunks, the question new */
  toks r = {0};
  kvs_span spans[KVS_RAG_MAX_PASSAGES + 1];
  size_t ns = 0;
  tok_append(vocab, &r, INSTRUCTION, 1);
  spans[ns++] = (kvs_span){0, (uint32_t)r.n};
  for (size_t i = 0; i < it->n_passages && (int)i < max_passages; i++) {
    char buf[8192];
    size_t s0 = r.n;
    snprintf(buf, sizeof buf, "%s\n%s\n\n", it->title[i], it->text[i]);
    tok_append(vocab, &r, buf, 0);
    spans[ns++] = (kvs_span){(uint32_t)s0, (uint32_t)(r.n - s0)};
  }
  tok_append(vocab, &r, q, 1);
  printf("RAG, full prefill (%zu tokens): ", r.n);
  kvs_llama_prefill_rag(kv, 0, r.v, r.n, NULL, 0, NULL, &st); /* no spans: plain decode */
  toks a = r;
  a.v = malloc(r.cap * sizeof *a.v);
  memcpy(a.v, r.v, r.n * sizeof *a.v);
  generate(ctx, vocab, &a, 24);
  show("full", &st);
  kvs_llama_rag_opts ro = {(uint32_t)recompute, -1};
  for (int pass = 0; pass < 2; pass++) {
    printf("RAG, chunks %s, recompute %d (%zu tokens): ", pass ? "reused" : "computed + put",
           recompute, r.n);
    kvs_llama_prefill_rag(kv, 0, r.v, r.n, spans, ns, &ro, &st); /* kvstash */
    a.n = r.n;
    generate(ctx, vocab, &a, 24);
    show(pass ? "reuse" : "first", &st);
  }
  printf("gold: %s\n", it->n_answers ? it->answers[0] : "?");

  free(a.v), free(r.v), free(t.v);
  kvs_llama_free(kv);
  kvs_client_free(client);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  kvs_rag_items_free(items, n_items);
  return 0;
}
