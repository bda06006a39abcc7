/* kvs_rag.h - the RAG job shared by the demo, the blend benchmark and the
 * CLI's warm-up: MuSiQue items, the prompt (instruction prefix chunk, one
 * content chunk per passage, the question), chunk KV computed alone, and the
 * greedy answer by full prefill or through reuse/ (kvs_reuse.h owns the
 * segment driver and the loader from kvstashd).
 * Internal to tools/ and bench/ (not installed). */
#ifndef KVS_RAG_H
#define KVS_RAG_H

#include "kvs_blend.h"
#include "kvs_core.h"
#include "kvs_engine.h"
#include "kvs_model.h"
#include "kvs_reuse.h"

#define KVS_RAG_MAX_PASSAGES 16
#define KVS_RAG_MAX_ANSWER   64

typedef struct kvs_rag_item {
  char *question;
  char **answers; /* gold answers (with aliases) */
  size_t n_answers;
  char *title[KVS_RAG_MAX_PASSAGES];
  char *text[KVS_RAG_MAX_PASSAGES];
  size_t n_passages;
} kvs_rag_item;

/* The MuSiQue file to read: arg when given, else $KVS_RAG_DATA, else the
 * repository's copy (data/rag/musique_s.json.zst, KVS_RAG_DEFAULT_DATA). */
const char *kvs_rag_data_path(const char *arg);
/* A whole file into *buf (NUL-terminated, owned by the caller: free), a zstd
 * frame decompressed on the fly. KVS_ENOENT, KVS_ECORRUPT (a bad frame). */
kvs_err kvs_rag_read(const char *path, char **buf, size_t *n);

/* Reads the MuSiQue file, plain or zstd (an array of {question, answers, ctxs[{title,text}]}).
 * *items owned by the caller: kvs_rag_items_free. */
kvs_err kvs_rag_load(const char *path, kvs_rag_item **items, size_t *n);
/* The same from memory: data[0..len), plain JSON or a zstd frame of it
 * (need not be NUL-terminated). KVS_ECORRUPT for anything else; a ctxs list
 * longer than KVS_RAG_MAX_PASSAGES keeps its first ones. Fuzzed
 * (tests/tools/fuzz_rag_data.c). */
kvs_err kvs_rag_parse(const char *data, size_t len, kvs_rag_item **items, size_t *n);
void kvs_rag_items_free(kvs_rag_item *items, size_t n);

/* A prompt cut into segments: seg 0 the instruction (prefix chunk),
 * 1..n_passages the passages (content chunks), last the question (new). */
typedef struct kvs_rag_prompt {
  int32_t *tokens; /* [n_tokens], owned */
  uint32_t n_tokens;
  uint32_t start[KVS_RAG_MAX_PASSAGES + 2], len[KVS_RAG_MAX_PASSAGES + 2];
  uint32_t n_segs;
} kvs_rag_prompt;

kvs_err kvs_rag_prompt_build(const kvs_tok *tok, const kvs_rag_item *item, kvs_rag_prompt *p);
/* The same with the question's turn in another style (0 is kvs_rag_prompt_build). */
kvs_err kvs_rag_prompt_build_style(const kvs_tok *tok, const kvs_rag_item *item, int style,
                                   kvs_rag_prompt *p);
int kvs_rag_n_styles(void);
void kvs_rag_prompt_free(kvs_rag_prompt *p);

/* KV of tokens[n] prefilled alone from position 0, canonical layout
 * (n_layers, 2, n, kv_heads, head_dim) f16 into out (kvs_layout_token_bytes * n). */
kvs_err kvs_rag_chunk_kv(kvs_engine *e, const int32_t *tokens, uint32_t n, void *out);
/* The same, the chunk prefilled after ctx[n_ctx] (a fixed lead-in such as the
 * chat template's first token, so the chunk's own first tokens do not turn into
 * attention sinks); only the chunk's KV is kept, K re-rotated back to position
 * 0. n_ctx 0 is kvs_rag_chunk_kv. */
kvs_err kvs_rag_chunk_kv_ctx(kvs_engine *e, const int32_t *ctx, uint32_t n_ctx,
                             const int32_t *tokens, uint32_t n, void *out);

typedef struct kvs_rag_answer {
  int32_t ids[KVS_RAG_MAX_ANSWER];
  uint32_t n;
  char text[1024];
  double ttft_s;       /* prompt in -> first answer token's logits */
  float *first_logits; /* [n_vocab] if the caller set it, logits of the first answer token */
  kvs_blend_stats blend;
} kvs_rag_answer;

/* Greedy answer with a full prefill of the whole prompt. */
kvs_err kvs_rag_answer_full(kvs_engine *e, const kvs_tok *tok, const kvs_rag_prompt *p,
                            uint32_t max_new, kvs_rag_answer *a);
/* The prompt as a reuse/ request: segment 0 PREFIX, passages CONTENT, the
 * question NEW. segs[p->n_segs] backs req. With prefix_chunk_tokens =
 * p->len[0], reuse/ cuts chunk i = prompt segment i (i < n_segs - 1). */
kvs_err kvs_rag_request(const kvs_rag_prompt *p, kvs_reuse_segment *segs, kvs_reuse_request *req);
/* Greedy answer reusing cached chunks through reuse/'s segment driver
 * (kvs_reuse_run_loader): seg_cached[i] says whether segment i (instruction,
 * passages) has KV from load(). */
kvs_err kvs_rag_answer_blend(kvs_engine *e, const kvs_tok *tok, const kvs_rag_prompt *p,
                             const int *seg_cached, kvs_blend_load_fn load, void *ctx,
                             const kvs_blend_opts *o, uint32_t max_new, kvs_rag_answer *a);

/* Greedy answer through kvs_reuse_run (plan, fetch from kvstashd, blend,
 * store); res (may be NULL) gets the request's figures. */
kvs_err kvs_rag_answer_reuse(kvs_reuse *r, kvs_engine *e, const kvs_tok *tok,
                             const kvs_rag_prompt *p, uint32_t max_new, kvs_rag_answer *a,
                             kvs_reuse_result *res);

/* SQuAD-style answer scoring: lower case, no punctuation or articles. */
double kvs_rag_f1(const char *pred, char *const *golds, size_t n_golds);
int kvs_rag_same_answer(const char *a, const char *b);
/* KL(p || q) of softmax(lp) and softmax(lq) over n logits, in nats. */
double kvs_rag_kl(const float *lp, const float *lq, uint32_t n);

#endif
