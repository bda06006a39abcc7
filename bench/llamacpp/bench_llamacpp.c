/* bench_llamacpp.c - kvs-bench-llamacpp: second-turn time to first token of
 * llama.cpp with kvstash attached vs llama.cpp alone, side by side in one run,
 * and answer agreement of RAG chunk reuse vs a full prefill.
 *
 *   kvs-bench-llamacpp --model GGUF --data musique_s.json [--item 0]
 *       [--min-tokens 1024] [--threads 2] [--reps 3] [--url tcp://...]
 *       [--rag-items 0] [--rag-passages 5] [--recompute 16] [--gpu-layers 0]
 *       [--flash-attn 0|1 (llama.cpp's flash attention: its V cache is then not
 *        transposed, which makes a restore one copy per layer)]
 * Without --url it starts kvstashd itself ($KVS_BUILD_DIR/cachesvc/kvstashd).
 * Chat: turn 1 = instruction + MuSiQue passages of --item (until --min-tokens)
 * + question + the gold answer; turn 2 = a follow-up question. "alone" = a
 * fresh sequence prefilled whole (the request landed where turn 1's KV is not:
 * another replica, or the slot was reused); "kvstash" = restore + decode the
 * rest (logits checked bit-equal to "alone"); "warm slot" = the same context
 * still holds turn 1 (llama.cpp's best case, no store involved).
 * RAG (--rag-items N): items 0..N-1 only (never 100-149). Last line: JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_llama.h"
#include "kvs_rag.h"
#include "llama.h"
#include "svc_helper.h"
#include "bench_json.h"
#include "bench_version.h"

static const char *INSTRUCTION =
    "<|im_start|>system\nYou are a helpful assistant. Answer the question using the passages. "
    "Reply with a short answer only.<|im_end|>\n<|im_start|>user\n";

typedef struct toks {
  int32_t *v;
  size_t n, cap;
} toks;

static const struct llama_vocab *g_vocab;
static int32_t g_nv;

static void tok_append(toks *t, const char *text, int special) {
  int32_t len = (int32_t)strlen(text);
  size_t need = t->n + (size_t)len + 8;
  if (need > t->cap) {
    t->cap = need * 2;
    t->v = realloc(t->v, t->cap * sizeof *t->v);
    if (!t->v) abort();
  }
  int32_t k = llama_tokenize(g_vocab, text, len, t->v + t->n, (int32_t)(t->cap - t->n), false,
                             special != 0);
  if (k > 0) t->n += (size_t)k;
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
  (void)user;
  if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int32_t argmax(struct llama_context *ctx) {
  const float *lg = llama_get_logits_ith(ctx, -1);
  int32_t b = 0;
  for (int32_t j = 1; j < g_nv; j++)
    if (lg[j] > lg[b]) b = j;
  return b;
}

/* Greedy answer text (up to max_new tokens) after a prefill of n tokens. */
static void answer(struct llama_context *ctx, size_t n, int max_new, char *out, size_t cap) {
  llama_token end = -1;
  llama_tokenize(g_vocab, "<|im_end|>", 10, &end, 1, false, true);
  size_t o = 0;
  for (int i = 0; i < max_new; i++) {
    llama_token t = argmax(ctx);
    if (t == end || llama_vocab_is_eog(g_vocab, t)) break;
    char piece[64];
    int m = llama_token_to_piece(g_vocab, t, piece, sizeof piece, 0, false);
    if (m > 0 && o + (size_t)m < cap) memcpy(out + o, piece, (size_t)m), o += (size_t)m;
    struct llama_batch b = llama_batch_get_one(&t, 1);
    (void)n;
    if (llama_decode(ctx, b) != 0) break;
  }
  out[o] = 0;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-llamacpp")) return 0;
  const char *model_path = NULL, *data = NULL, *url = NULL;
  int item = 0, threads = 2, reps = 3, rag_items = 0, rag_passages = 5, recompute = 16, ngl = 0,
      fa = 0;
  size_t min_tokens = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--model"))
      model_path = v;
    else if (!strcmp(k, "--data"))
      data = v;
    else if (!strcmp(k, "--url"))
      url = v;
    else if (!strcmp(k, "--item"))
      item = atoi(v);
    else if (!strcmp(k, "--threads"))
      threads = atoi(v);
    else if (!strcmp(k, "--reps"))
      reps = atoi(v);
    else if (!strcmp(k, "--min-tokens"))
      min_tokens = (size_t)atol(v);
    else if (!strcmp(k, "--rag-items"))
      rag_items = atoi(v);
    else if (!strcmp(k, "--rag-passages"))
      rag_passages = atoi(v);
    else if (!strcmp(k, "--recompute"))
      recompute = atoi(v);
    else if (!strcmp(k, "--gpu-layers"))
      ngl = atoi(v);
    else if (!strcmp(k, "--flash-attn"))
      fa = atoi(v) != 0;
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows in a log */
  data = kvs_rag_data_path(data);   /* default: the repo's data/rag copy */
  if (!model_path || reps < 1 || reps > 32 || rag_items > 100) {
    fprintf(stderr,
            "usage: kvs-bench-llamacpp --model GGUF [--data musique_s.json[.zst]] [options]\n");
    return 2;
  }
  kvs_rag_item *items = NULL;
  size_t n_items = 0;
  if (kvs_rag_load(data, &items, &n_items) != KVS_OK || (size_t)item >= n_items) return 1;
  th_daemon d;
  memset(&d, 0, sizeof d);
  if (!url) {
    if (th_daemon_start(&d, NULL) != 0) {
      fprintf(stderr, "cannot start kvstashd ($KVS_BUILD_DIR/cachesvc/kvstashd); use --url\n");
      return 1;
    }
    url = d.url;
  }
  llama_log_set(quiet, NULL);
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = ngl;
  struct llama_model *model = llama_model_load_from_file(model_path, mp);
  if (!model) return 1;
  g_vocab = llama_model_get_vocab(model);
  g_nv = llama_vocab_n_tokens(g_vocab);
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 8192;
  cp.n_batch = 8192;
  cp.n_ubatch = 256;
  cp.n_seq_max = 2;
  cp.kv_unified = true;
  cp.n_threads = cp.n_threads_batch = threads;
  cp.no_perf = true;
  cp.flash_attn = fa != 0;
  struct llama_context *ctx = llama_init_from_model(model, cp);
  kvs_client_opts co;
  kvs_client_opts_init(&co);
  co.url = url;
  kvs_client *client = NULL;
  if (!ctx || kvs_client_create(&co, &client) != KVS_OK) {
    fprintf(stderr, "context or kvstash client failed\n");
    return 1;
  }
  kvs_llama_opts ao;
  kvs_llama_opts_init(&ao);
  ao.client = client;
  ao.gguf_path = model_path;
  ao.flash_attn = cp.flash_attn;
  kvs_llama *kv = NULL, *alone = NULL;
  ao.client = NULL;
  if (kvs_llama_create(model, ctx, &ao, &alone) != KVS_OK) return 1; /* llama.cpp alone */
  ao.client = client;
  if (kvs_llama_create(model, ctx, &ao, &kv) != KVS_OK) return 1;

  /* ---- chat */
  const kvs_rag_item *it = &items[item];
  toks t = {0};
  tok_append(&t, INSTRUCTION, 1);
  for (size_t i = 0; i < it->n_passages && t.n < min_tokens; i++) {
    char buf[8192];
    snprintf(buf, sizeof buf, "%s\n%s\n\n", it->title[i], it->text[i]);
    tok_append(&t, buf, 0);
  }
  char q[4096];
  snprintf(q, sizeof q, "Question: %s<|im_end|>\n<|im_start|>assistant\n%s", it->question,
           it->n_answers ? it->answers[0] : "");
  tok_append(&t, q, 1);
  const size_t n1 = t.n;
  tok_append(&t,
             "<|im_end|>\n<|im_start|>user\nWhich passage says so? Give its title."
             "<|im_end|>\n<|im_start|>assistant\n",
             1);
  const size_t n2 = t.n;
  kvs_llama_stats st;
  uint64_t t0 = kvs_now_ns();
  kvs_llama_prefill(kv, 0, t.v, n1, &st);
  llama_synchronize(ctx); /* a GPU decode returns before the logits are there */
  double turn1 = (double)(kvs_now_ns() - t0) * 1e-9;
  kvs_llama_store(kv, 0, t.v, n1, &st);
  printf("turn 1: %zu tokens, prefill %.3f s, stored %u chunks in %.3f s (failed %u)\n", n1, turn1,
         st.n_put, st.t_put_s, st.n_failed);
  double a_s[32], k_s[32], w_s[32];
  float *ref = malloc((size_t)g_nv * sizeof *ref);
  int exact = 1;
  uint32_t restored = 0;
  for (int r = 0; r < reps; r++) {
    t0 = kvs_now_ns();
    kvs_llama_prefill(alone, 0, t.v, n2, &st); /* clears the context, decodes all */
    llama_synchronize(ctx);
    a_s[r] = (double)(kvs_now_ns() - t0) * 1e-9;
    memcpy(ref, llama_get_logits_ith(ctx, -1), (size_t)g_nv * sizeof *ref);
    t0 = kvs_now_ns();
    kvs_llama_prefill(kv, 0, t.v, n2, &st);
    llama_synchronize(ctx);
    k_s[r] = (double)(kvs_now_ns() - t0) * 1e-9;
    restored = st.n_restored;
    exact &= memcmp(ref, llama_get_logits_ith(ctx, -1), (size_t)g_nv * sizeof *ref) == 0;
    printf("  rep %d: alone %.3f s | kvstash %.3f s (restored %u, lookup %.1f ms, fetch %.1f ms, "
           "restore %.1f ms, decode %.1f ms)\n",
           r, a_s[r], k_s[r], st.n_restored, st.t_lookup_s * 1e3, st.t_fetch_s * 1e3,
           st.t_restore_s * 1e3, st.t_decode_s * 1e3);
    /* warm slot: turn 1 still in the context, decode the follow-up only */
    kvs_llama_prefill(alone, 0, t.v, n1, NULL);
    struct llama_batch b = llama_batch_init((int32_t)(n2 - n1), 0, 1);
    for (size_t i = n1; i < n2; i++) {
      size_t j = i - n1;
      b.token[j] = t.v[i], b.pos[j] = (int32_t)i, b.n_seq_id[j] = 1, b.seq_id[j][0] = 0;
      b.logits[j] = i == n2 - 1;
    }
    b.n_tokens = (int32_t)(n2 - n1);
    t0 = kvs_now_ns();
    llama_decode(ctx, b);
    llama_synchronize(ctx);
    w_s[r] = (double)(kvs_now_ns() - t0) * 1e-9;
    llama_batch_free(b);
  }
  double am = median(a_s, reps), km = median(k_s, reps), wm = median(w_s, reps);
  printf("second turn (%zu tokens, %u restored): TTFT llama.cpp alone %.3f s, with kvstash %.3f s "
         "(x%.2f), warm slot %.3f s; logits bit-equal: %s\n",
         n2, restored, am, km, am / km, wm, exact ? "yes" : "NO");

  /* ---- RAG agreement on items 0..rag_items-1 */
  int agree0 = 0, agreer = 0, n_rag = 0;
  double f_full = 0, f_r0 = 0, f_rr = 0, t_full = 0, t_r0 = 0, t_rr = 0;
  for (int ii = 0; ii < rag_items && (size_t)ii < n_items; ii++) {
    const kvs_rag_item *x = &items[ii];
    toks r = {0};
    kvs_span sp[KVS_RAG_MAX_PASSAGES + 1];
    size_t ns = 0;
    tok_append(&r, INSTRUCTION, 1);
    sp[ns++] = (kvs_span){0, (uint32_t)r.n};
    for (size_t i = 0; i < x->n_passages && (int)i < rag_passages; i++) {
      char buf[8192];
      size_t s0 = r.n;
      snprintf(buf, sizeof buf, "%s\n%s\n\n", x->title[i], x->text[i]);
      tok_append(&r, buf, 0);
      sp[ns++] = (kvs_span){(uint32_t)s0, (uint32_t)(r.n - s0)};
    }
    snprintf(q, sizeof q, "Question: %s<|im_end|>\n<|im_start|>assistant\n", x->question);
    tok_append(&r, q, 1);
    char full[512], a0[512], ar[512];
    kvs_llama_rag_opts o0 = {0, -1}, orr = {(uint32_t)recompute, -1};
    t0 = kvs_now_ns();
    kvs_llama_prefill_rag(alone, 0, r.v, r.n, NULL, 0, NULL, &st);
    t_full += (double)(kvs_now_ns() - t0) * 1e-9;
    answer(ctx, r.n, 16, full, sizeof full);
    kvs_llama_prefill_rag(kv, 0, r.v, r.n, sp, ns, &o0, &st); /* computes + puts the chunks */
    t0 = kvs_now_ns();
    kvs_llama_prefill_rag(kv, 0, r.v, r.n, sp, ns, &o0, &st);
    t_r0 += (double)(kvs_now_ns() - t0) * 1e-9;
    answer(ctx, r.n, 16, a0, sizeof a0);
    t0 = kvs_now_ns();
    kvs_llama_prefill_rag(kv, 0, r.v, r.n, sp, ns, &orr, &st);
    t_rr += (double)(kvs_now_ns() - t0) * 1e-9;
    answer(ctx, r.n, 16, ar, sizeof ar);
    agree0 += kvs_rag_same_answer(full, a0);
    agreer += kvs_rag_same_answer(full, ar);
    f_full += kvs_rag_f1(full, x->answers, x->n_answers);
    f_r0 += kvs_rag_f1(a0, x->answers, x->n_answers);
    f_rr += kvs_rag_f1(ar, x->answers, x->n_answers);
    n_rag++;
    printf("  rag item %d (%zu tokens): full \"%s\" | reuse \"%s\" | reuse+recompute%d \"%s\" | "
           "gold \"%s\"\n",
           ii, r.n, full, a0, recompute, ar, x->n_answers ? x->answers[0] : "");
    free(r.v);
  }
  if (n_rag)
    printf("RAG %d items: same answer as full prefill: reuse %d, reuse+recompute%d %d; F1 full "
           "%.3f reuse %.3f recompute %.3f; prefill s/item full %.3f reuse %.3f recompute %.3f\n",
           n_rag, agree0, recompute, agreer, f_full / n_rag, f_r0 / n_rag, f_rr / n_rag,
           t_full / n_rag, t_r0 / n_rag, t_rr / n_rag);
  cJSON *j = cJSON_CreateObject(); /* the last line (bench_json.h) */
  cJSON_AddStringToObject(j, "bench", "llamacpp");
  cJSON_AddStringToObject(j, "llama", kvs_llama_build_version());
  cJSON_AddNumberToObject(j, "threads", threads);
  cJSON_AddNumberToObject(j, "gpu_layers", ngl);
  cJSON_AddNumberToObject(j, "flash_attn", fa);
  cJSON_AddNumberToObject(j, "turn2_tokens", (double)n2);
  cJSON_AddNumberToObject(j, "restored", restored);
  bench_json_num(j, "ttft_alone_s", "%.4f", am);
  bench_json_num(j, "ttft_kvstash_s", "%.4f", km);
  bench_json_num(j, "speedup", "%.3f", am / km);
  bench_json_num(j, "ttft_warm_slot_s", "%.4f", wm);
  cJSON_AddBoolToObject(j, "logits_exact", exact);
  cJSON_AddNumberToObject(j, "rag_items", n_rag);
  cJSON_AddNumberToObject(j, "rag_same_reuse", agree0);
  cJSON_AddNumberToObject(j, "rag_same_recompute", agreer);
  bench_json_print(j);
  free(ref), free(t.v);
  kvs_llama_free(kv), kvs_llama_free(alone);
  kvs_client_free(client);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  kvs_rag_items_free(items, n_items);
  if (d.pid) {
    th_daemon_stop(&d);
    th_daemon_cleanup(&d);
  }
  return exact ? 0 : 1;
}
