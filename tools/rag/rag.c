#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <zstd.h>

#include "kvs_gpu.h"
#include "kvs_rag.h"

/* Logits come back in the engine's memory: a device buffer for a GPU engine,
 * copied to the host for the greedy choice. */
typedef struct lbuf {
  float *host, *eng;
  int dev;
  uint32_t n;
} lbuf;

static kvs_err lbuf_init(lbuf *b, const kvs_engine_info *in) {
  memset(b, 0, sizeof *b);
  b->n = in->n_vocab, b->dev = in->mem == KVS_ENGINE_MEM_DEVICE;
  b->host = malloc(b->n * sizeof(float));
  if (!b->host) return KVS_ENOMEM;
  if (!b->dev) {
    b->eng = b->host;
    return KVS_OK;
  }
  return kvs_gpu_alloc((void **)&b->eng, b->n * sizeof(float));
}
static kvs_err lbuf_sync(lbuf *b) {
  return b->dev ? kvs_gpu_copy_d2h(b->host, b->eng, b->n * sizeof(float), NULL) : KVS_OK;
}
static void lbuf_free(lbuf *b) {
  if (b->dev) kvs_gpu_free(b->eng);
  free(b->host);
}

static const char *INSTRUCTION =
    "<|im_start|>system\nYou are a helpful assistant. Answer the question using the passages. "
    "Reply with a short answer only.<|im_end|>\n<|im_start|>user\n";

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void kvs_rag_items_free(kvs_rag_item *it, size_t n) {
  for (size_t i = 0; it && i < n; i++) {
    free(it[i].question);
    for (size_t j = 0; j < it[i].n_answers; j++)
      free(it[i].answers[j]);
    free(it[i].answers);
    for (size_t j = 0; j < it[i].n_passages; j++)
      free(it[i].title[j]), free(it[i].text[j]);
  }
  free(it);
}

const char *kvs_rag_data_path(const char *arg) {
  if (arg && *arg) return arg;
  const char *env = getenv("KVS_RAG_DATA");
  return env && *env ? env : KVS_RAG_DEFAULT_DATA;
}

/* data[0..n) as text: a zstd frame (the repo's data/rag copy) decompressed,
 * anything else copied; NUL-terminated, *out owned by the caller. */
static kvs_err unpack(const char *data, size_t n, char **out, size_t *n_out) {
  static const unsigned char zmagic[4] = {0x28, 0xb5, 0x2f, 0xfd}; /* ZSTD_MAGICNUMBER, LE */
  if (n < 4 || memcmp(data, zmagic, 4)) {
    char *plain = malloc(n + 1);
    if (!plain) return KVS_ENOMEM;
    if (n) memcpy(plain, data, n);
    plain[n] = 0;
    *out = plain, *n_out = n;
    return KVS_OK;
  }
  unsigned long long dn = ZSTD_getFrameContentSize(data, n);
  /* the content size is in the frame header (zstd writes it for a file);
     1 GiB bounds what a corrupt header can ask for */
  if (dn == ZSTD_CONTENTSIZE_UNKNOWN || dn == ZSTD_CONTENTSIZE_ERROR || dn > (1ull << 30))
    return KVS_ECORRUPT;
  char *plain = malloc((size_t)dn + 1);
  if (!plain) return KVS_ENOMEM;
  size_t r = ZSTD_decompress(plain, (size_t)dn, data, n);
  if (ZSTD_isError(r) || r != dn) {
    free(plain);
    return KVS_ECORRUPT;
  }
  plain[r] = 0;
  *out = plain, *n_out = r;
  return KVS_OK;
}

/* The file's bytes as they are (*out owned, NUL-terminated). */
static kvs_err read_raw(const char *path, char **out, size_t *n_out) {
  FILE *f = fopen(path, "rb");
  if (!f) return KVS_ENOENT;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc(sz > 0 ? (size_t)sz + 1 : 1);
  size_t got = buf && sz > 0 ? fread(buf, 1, (size_t)sz, f) : 0;
  fclose(f);
  if (!buf) return KVS_ENOMEM;
  buf[got] = 0;
  *out = buf, *n_out = got;
  return KVS_OK;
}

kvs_err kvs_rag_read(const char *path, char **out, size_t *n_out) {
  *out = NULL, *n_out = 0;
  char *raw;
  size_t n;
  KVS_TRY(read_raw(path, &raw, &n));
  kvs_err err = unpack(raw, n, out, n_out);
  free(raw);
  return err;
}

kvs_err kvs_rag_parse(const char *data, size_t len, kvs_rag_item **out, size_t *n_out) {
  *out = NULL, *n_out = 0;
  char *buf = NULL;
  size_t got = 0;
  KVS_TRY(unpack(data, len, &buf, &got));
  cJSON *root = cJSON_ParseWithLength(buf, got);
  free(buf);
  if (!cJSON_IsArray(root)) {
    cJSON_Delete(root);
    return KVS_ECORRUPT;
  }
  size_t n = (size_t)cJSON_GetArraySize(root);
  kvs_rag_item *it = calloc(n ? n : 1, sizeof *it);
  kvs_err err = it ? KVS_OK : KVS_ENOMEM;
  for (size_t i = 0; !err && i < n; i++) {
    cJSON *x = cJSON_GetArrayItem(root, (int)i);
    cJSON *q = cJSON_GetObjectItem(x, "question"), *a = cJSON_GetObjectItem(x, "answers");
    cJSON *c = cJSON_GetObjectItem(x, "ctxs");
    if (!cJSON_IsString(q) || !cJSON_IsArray(a) || !cJSON_IsArray(c)) {
      err = KVS_ECORRUPT;
      break;
    }
    it[i].question = dupstr(q->valuestring);
    size_t na = (size_t)cJSON_GetArraySize(a);
    it[i].answers = calloc(na ? na : 1, sizeof(char *));
    if (!it[i].question || !it[i].answers) {
      err = KVS_ENOMEM;
      break;
    }
    it[i].n_answers = na;
    for (size_t j = 0; !err && j < na; j++) {
      cJSON *s = cJSON_GetArrayItem(a, (int)j);
      it[i].answers[j] = dupstr(cJSON_IsString(s) ? s->valuestring : "");
      if (!it[i].answers[j]) err = KVS_ENOMEM;
    }
    size_t np = (size_t)cJSON_GetArraySize(c);
    if (np > KVS_RAG_MAX_PASSAGES) np = KVS_RAG_MAX_PASSAGES;
    for (size_t j = 0; !err && j < np; j++) {
      cJSON *p = cJSON_GetArrayItem(c, (int)j);
      cJSON *t = cJSON_GetObjectItem(p, "title"), *tx = cJSON_GetObjectItem(p, "text");
      it[i].title[j] = dupstr(cJSON_IsString(t) ? t->valuestring : "");
      it[i].text[j] = dupstr(cJSON_IsString(tx) ? tx->valuestring : "");
      it[i].n_passages = j + 1;
      if (!it[i].title[j] || !it[i].text[j]) err = KVS_ENOMEM;
    }
  }
  cJSON_Delete(root);
  if (err) {
    kvs_rag_items_free(it, n);
    return err;
  }
  *out = it, *n_out = n;
  return KVS_OK;
}

kvs_err kvs_rag_load(const char *path, kvs_rag_item **out, size_t *n_out) {
  *out = NULL, *n_out = 0;
  char *raw;
  size_t n;
  KVS_TRY(read_raw(path, &raw, &n));
  kvs_err err = kvs_rag_parse(raw, n, out, n_out);
  free(raw);
  return err;
}

static kvs_err append(const kvs_tok *tok, const char *text, int special, kvs_rag_prompt *p,
                      uint32_t *cap) {
  size_t len = strlen(text), need = kvs_tok_bound(len) + 2, n = 0;
  if (p->n_tokens + need > *cap) {
    uint32_t nc = (uint32_t)((p->n_tokens + need) * 2);
    int32_t *t = realloc(p->tokens, nc * sizeof *t);
    if (!t) return KVS_ENOMEM;
    p->tokens = t, *cap = nc;
  }
  KVS_TRY(
      kvs_tok_encode(tok, text, len, special, 0, p->tokens + p->n_tokens, *cap - p->n_tokens, &n));
  p->start[p->n_segs] = p->n_tokens;
  p->len[p->n_segs] = (uint32_t)n;
  p->n_tokens += (uint32_t)n;
  p->n_segs++;
  return KVS_OK;
}

/* A few-shot instruction: two made-up exchanges (not from MuSiQue) that show
 * the short answer MuSiQue's gold answers are; it is the prefix chunk, reused
 * exactly, so it costs nothing at answer time. */
static const char *INSTRUCTION_SHOTS =
    "<|im_start|>system\nYou are a helpful assistant. Answer the question using the passages. "
    "Reply with a short answer only: a name, a place, a date or a number, no sentence.<|im_end|>\n"
    "<|im_start|>user\nQuestion: What is the capital of the country where the Eiffel Tower "
    "stands?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n"
    "<|im_start|>user\nQuestion: Who wrote the novel that the film Jaws is based on?<|im_end|>\n"
    "<|im_start|>assistant\nPeter Benchley<|im_end|>\n<|im_start|>user\n";

/* The question's turn, by style (the passages and the instruction are the same
 * in every style, so the chunks' KV is too). */
static const char *const QUESTION_FMT[] = {
    "Question: %s<|im_end|>\n<|im_start|>assistant\n",
    "Question: %s\nAnswer in a few words.<|im_end|>\n<|im_start|>assistant\n",
    "Question: %s<|im_end|>\n<|im_start|>assistant\nAnswer:",
    "Question: %s\nAnswer in a few words.<|im_end|>\n<|im_start|>assistant\nAnswer:",
    "Question: %s<|im_end|>\n<|im_start|>assistant\n", /* 4: with INSTRUCTION_SHOTS */
};

int kvs_rag_n_styles(void) { return (int)(sizeof QUESTION_FMT / sizeof *QUESTION_FMT); }

kvs_err kvs_rag_prompt_build(const kvs_tok *tok, const kvs_rag_item *item, kvs_rag_prompt *p) {
  return kvs_rag_prompt_build_style(tok, item, 0, p);
}

kvs_err kvs_rag_prompt_build_style(const kvs_tok *tok, const kvs_rag_item *item, int style,
                                   kvs_rag_prompt *p) {
  memset(p, 0, sizeof *p);
  if (style < 0 || style >= kvs_rag_n_styles()) return KVS_EINVAL;
  uint32_t cap = 0;
  kvs_err err = append(tok, style == 4 ? INSTRUCTION_SHOTS : INSTRUCTION, 1, p, &cap);
  for (size_t i = 0; !err && i < item->n_passages; i++) {
    size_t n = strlen(item->title[i]) + strlen(item->text[i]) + 16;
    char *s = malloc(n);
    if (!s) return KVS_ENOMEM;
    snprintf(s, n, "%s\n%s\n\n", item->title[i], item->text[i]);
    err = append(tok, s, 0, p, &cap); /* passage text never parses special tokens */
    free(s);
  }
  if (!err) {
    size_t n = strlen(item->question) + 128;
    char *s = malloc(n);
    if (!s) return KVS_ENOMEM;
    snprintf(s, n, QUESTION_FMT[style], item->question);
    err = append(tok, s, 1, p, &cap);
    free(s);
  }
  if (err) kvs_rag_prompt_free(p);
  return err;
}

void kvs_rag_prompt_free(kvs_rag_prompt *p) {
  free(p->tokens);
  memset(p, 0, sizeof *p);
}

kvs_err kvs_rag_chunk_kv_ctx(kvs_engine *e, const int32_t *ctx, uint32_t n_ctx,
                             const int32_t *tokens, uint32_t n, void *out) {
  kvs_engine_info in;
  KVS_TRY(e->ops->info(e, &in));
  if (n_ctx && !ctx) return KVS_EINVAL;
  kvs_engine_seq *s;
  KVS_TRY(e->ops->seq_create(e, n_ctx + n, &s));
  kvs_err err = n_ctx ? e->ops->prefill(e, s, ctx, n_ctx, 0, NULL) : KVS_OK;
  if (!err) err = e->ops->prefill(e, s, tokens, n, 0, NULL);
  size_t plane = (size_t)kvs_layout_plane_elems(&in.layout, n) * kvs_dtype_size(in.layout.dtype);
  for (uint32_t l = 0; !err && l < in.layout.n_layers; l++)
    err = e->ops->kv_read(e, s, l, n_ctx, n, (char *)out + 2 * l * plane,
                          (char *)out + (2 * l + 1) * plane);
  e->ops->seq_free(e, s);
  /* stored as if the chunk started at position 0 (content keys, DESIGN.md) */
  if (!err && n_ctx) err = kvs_rope_shift_chunk(&in.layout, out, n, -(int64_t)n_ctx);
  return err;
}

kvs_err kvs_rag_chunk_kv(kvs_engine *e, const int32_t *tokens, uint32_t n, void *out) {
  return kvs_rag_chunk_kv_ctx(e, NULL, 0, tokens, n, out);
}

/* greedy continuation from the logits of the last prompt token */
static kvs_err decode(kvs_engine *e, const kvs_tok *tok, kvs_engine_seq *s, lbuf *lb,
                      uint32_t n_vocab, uint32_t max_new, kvs_rag_answer *a) {
  float *logits = lb->host;
  /* tok may be NULL (random-weight speed runs): no stop tokens, no text */
  kvs_token end = tok ? kvs_tok_find(tok, "<|im_end|>") : -1, eos = tok ? kvs_tok_eos(tok) : -1;
  a->n = 0;
  if (max_new > KVS_RAG_MAX_ANSWER) max_new = KVS_RAG_MAX_ANSWER;
  for (uint32_t i = 0; i < max_new; i++) {
    int32_t t = kvs_argmax(logits, n_vocab);
    if (t == end || t == eos) break;
    a->ids[a->n++] = t;
    if (i + 1 < max_new) {
      KVS_TRY(e->ops->prefill(e, s, &t, 1, 0, lb->eng));
      KVS_TRY(lbuf_sync(lb));
    }
  }
  size_t n = 0;
  a->text[0] = 0;
  if (!tok) return KVS_OK;
  kvs_err de = kvs_tok_decode(tok, a->ids, a->n, a->text, sizeof a->text, &n);
  return de == KVS_ERANGE ? KVS_OK : de; /* a long answer is cut, not an error */
}

kvs_err kvs_rag_answer_full(kvs_engine *e, const kvs_tok *tok, const kvs_rag_prompt *p,
                            uint32_t max_new, kvs_rag_answer *a) {
  kvs_engine_info in;
  KVS_TRY(e->ops->info(e, &in));
  lbuf lb;
  kvs_err err = lbuf_init(&lb, &in);
  kvs_engine_seq *s = NULL;
  if (!err) err = e->ops->seq_create(e, p->n_tokens + max_new + 1, &s);
  if (err) {
    lbuf_free(&lb);
    return err;
  }
  float *lg = lb.host;
  uint64_t t0 = kvs_now_ns();
  err = e->ops->prefill(e, s, p->tokens, p->n_tokens, 0, lb.eng);
  if (!err) err = lbuf_sync(&lb);
  a->ttft_s = (kvs_now_ns() - t0) / 1e9;
  memset(&a->blend, 0, sizeof a->blend);
  if (!err && a->first_logits) memcpy(a->first_logits, lg, in.n_vocab * sizeof *lg);
  if (!err) err = decode(e, tok, s, &lb, in.n_vocab, max_new, a);
  e->ops->seq_free(e, s);
  lbuf_free(&lb);
  return err;
}

kvs_err kvs_rag_request(const kvs_rag_prompt *p, kvs_reuse_segment *segs, kvs_reuse_request *req) {
  if (!p || !segs || !req || p->n_segs < 2) return KVS_EINVAL;
  for (uint32_t i = 0; i < p->n_segs; i++) {
    segs[i].kind = i == 0 ? KVS_SEG_PREFIX : i + 1 == p->n_segs ? KVS_SEG_NEW : KVS_SEG_CONTENT;
    segs[i].n_tokens = p->len[i];
  }
  *req = (kvs_reuse_request){
      .tokens = p->tokens, .n_tokens = p->n_tokens, .segs = segs, .n_segs = p->n_segs};
  return KVS_OK;
}

/* the request through reuse/ (a kvs_reuse, or a loader), then greedy decoding */
static kvs_err answer_reuse(kvs_engine *e, kvs_reuse *r, const kvs_tok *tok,
                            const kvs_rag_prompt *p, const int *seg_cached, kvs_blend_load_fn load,
                            void *ctx, const kvs_blend_opts *o, uint32_t max_new, kvs_rag_answer *a,
                            kvs_reuse_result *res) {
  kvs_engine_info in;
  KVS_TRY(e->ops->info(e, &in));
  kvs_reuse_segment segs[KVS_RAG_MAX_PASSAGES + 2];
  kvs_reuse_request req;
  KVS_TRY(kvs_rag_request(p, segs, &req));
  lbuf lb;
  kvs_err err = lbuf_init(&lb, &in);
  kvs_engine_seq *s = NULL;
  if (!err) err = e->ops->seq_create(e, p->n_tokens + max_new + 1, &s);
  if (err) {
    lbuf_free(&lb);
    return err;
  }
  float *lg = lb.host;
  uint64_t t0 = kvs_now_ns();
  kvs_reuse_result rz;
  if (r) {
    err = kvs_reuse_run(r, s, &req, lb.eng, &rz, NULL, 0);
    a->blend = rz.blend;
    if (res) *res = rz;
  } else {
    /* the instruction is one prefix chunk: chunk i is prompt segment i */
    err = kvs_reuse_run_loader(e, s, &req, p->len[0], seg_cached, load, ctx, o, lb.eng, &a->blend);
  }
  if (!err) err = lbuf_sync(&lb);
  a->ttft_s = (kvs_now_ns() - t0) / 1e9;
  if (!err && a->first_logits) memcpy(a->first_logits, lg, in.n_vocab * sizeof *lg);
  if (!err) err = decode(e, tok, s, &lb, in.n_vocab, max_new, a);
  e->ops->seq_free(e, s);
  lbuf_free(&lb);
  return err;
}

kvs_err kvs_rag_answer_blend(kvs_engine *e, const kvs_tok *tok, const kvs_rag_prompt *p,
                             const int *seg_cached, kvs_blend_load_fn load, void *ctx,
                             const kvs_blend_opts *o, uint32_t max_new, kvs_rag_answer *a) {
  return answer_reuse(e, NULL, tok, p, seg_cached, load, ctx, o, max_new, a, NULL);
}

kvs_err kvs_rag_answer_reuse(kvs_reuse *r, kvs_engine *e, const kvs_tok *tok,
                             const kvs_rag_prompt *p, uint32_t max_new, kvs_rag_answer *a,
                             kvs_reuse_result *res) {
  if (!r) return KVS_EINVAL;
  return answer_reuse(e, r, tok, p, NULL, NULL, NULL, NULL, max_new, a, res);
}

/* ------------------------------------------------------------ scoring */
static size_t normalize(const char *s, char *out, size_t cap) {
  size_t k = 0;
  int space = 1;
  for (const unsigned char *p = (const unsigned char *)s; *p && k + 1 < cap; p++) {
    int c = *p;
    if (isalnum(c) || c >= 0x80) {
      out[k++] = (char)tolower(c);
      space = 0;
    } else if (isspace(c) || c == '-' || c == '/') {
      if (!space) out[k++] = ' ';
      space = 1;
    } /* other punctuation dropped */
  }
  while (k && out[k - 1] == ' ')
    k--;
  out[k] = 0;
  return k;
}

/* split into words, dropping a, an, the */
static size_t words(char *s, char **w, size_t cap) {
  size_t n = 0;
  for (char *t = strtok(s, " "); t && n < cap; t = strtok(NULL, " "))
    if (strcmp(t, "a") && strcmp(t, "an") && strcmp(t, "the")) w[n++] = t;
  return n;
}

static double f1_one(const char *pred, const char *gold) {
  char a[1024], b[1024];
  normalize(pred, a, sizeof a), normalize(gold, b, sizeof b);
  char *wa[128], *wb[128];
  size_t na = words(a, wa, 128), nb = words(b, wb, 128);
  if (na == 0 || nb == 0) return na == nb;
  int used[128] = {0};
  size_t common = 0;
  for (size_t i = 0; i < na; i++)
    for (size_t j = 0; j < nb; j++)
      if (!used[j] && strcmp(wa[i], wb[j]) == 0) {
        used[j] = 1, common++;
        break;
      }
  if (!common) return 0;
  double p = (double)common / na, r = (double)common / nb;
  return 2 * p * r / (p + r);
}

double kvs_rag_f1(const char *pred, char *const *golds, size_t n) {
  double best = 0;
  for (size_t i = 0; i < n; i++)
    best = fmax(best, f1_one(pred, golds[i]));
  return best;
}

int kvs_rag_same_answer(const char *x, const char *y) {
  char a[1024], b[1024];
  normalize(x, a, sizeof a), normalize(y, b, sizeof b);
  return strcmp(a, b) == 0;
}

double kvs_rag_kl(const float *lp, const float *lq, uint32_t n) {
  double mp = -INFINITY, mq = -INFINITY, zp = 0, zq = 0, kl = 0;
  for (uint32_t i = 0; i < n; i++)
    mp = fmax(mp, lp[i]), mq = fmax(mq, lq[i]);
  for (uint32_t i = 0; i < n; i++)
    zp += exp(lp[i] - mp), zq += exp(lq[i] - mq);
  for (uint32_t i = 0; i < n; i++) {
    double p = exp(lp[i] - mp) / zp;
    if (p > 0) kl += p * ((lp[i] - mp - log(zp)) - (lq[i] - mq - log(zq)));
  }
  return kl < 0 ? 0 : kl;
}
