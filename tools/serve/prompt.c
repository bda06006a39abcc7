/* prompt.c - a request's ChatML prompt as token ids cut into reusable segments.
 *
 * Template markers (<|im_start|>, <|im_end|>) are tokenized as special tokens
 * and every piece of client text as plain text, so a client cannot inject a
 * turn boundary. Special tokens split the text anyway, and "role\n" is
 * tokenized apart from the content (so that a turn's ids do not change when it
 * moves from last turn into the history), so a prompt without documents has the
 * ids of a whole-string tokenization of its ChatML text (as llama.cpp makes
 * them) wherever the byte-level pre-tokenizer splits after the "\n" anyway (a
 * content that starts with a letter or digit); a document is tokenized alone, so that its ids (and
 * its content key) do not depend on what stands around it: at its edges the
 * ids may differ from a whole-string tokenization (e.g. "\n\n" before the
 * question is one token at a chunk's end, two inside a run of text). */
#include <stdlib.h>
#include <string.h>

#include "kvs_model.h"
#include "serve_int.h"

static kvs_err append(const kvs_tok *tok, srv_prompt *p, uint32_t *cap, const char *text,
                      int special) {
  size_t len = strlen(text);
  if (!len) return KVS_OK;
  size_t bound = kvs_tok_bound(len);
  if (p->n_tokens + bound > UINT32_MAX / 2) return KVS_ETOOBIG;
  if (p->n_tokens + bound > *cap) {
    uint32_t nc = *cap ? *cap : 256;
    while (nc < p->n_tokens + bound)
      nc *= 2;
    int32_t *t = realloc(p->tokens, (size_t)nc * sizeof *t);
    if (!t) return KVS_ENOMEM;
    p->tokens = t, *cap = nc;
  }
  size_t n = 0;
  KVS_TRY(
      kvs_tok_encode(tok, text, len, special, 0, p->tokens + p->n_tokens, *cap - p->n_tokens, &n));
  p->n_tokens += (uint32_t)n;
  return KVS_OK;
}

static kvs_err append_ids(srv_prompt *p, uint32_t *cap, const int32_t *ids, uint32_t n) {
  if (p->n_tokens + (uint64_t)n > UINT32_MAX / 2) return KVS_ETOOBIG;
  if (p->n_tokens + n > *cap) {
    uint32_t nc = *cap ? *cap : 256;
    while (nc < p->n_tokens + n)
      nc *= 2;
    int32_t *t = realloc(p->tokens, (size_t)nc * sizeof *t);
    if (!t) return KVS_ENOMEM;
    p->tokens = t, *cap = nc;
  }
  memcpy(p->tokens + p->n_tokens, ids, (size_t)n * sizeof *ids);
  p->n_tokens += n;
  return KVS_OK;
}

/* "<|im_start|>role\ncontent<|im_end|>\n": "role\n" and the content
 * tokenized apart, as the last user turn and the generated answer are (the
 * prefix chain of a conversation must not change between its turns); ids,
 * when given, stand for the content */
static kvs_err turn(const kvs_tok *tok, srv_prompt *p, uint32_t *cap, const char *role,
                    const char *content, const int32_t *ids, uint32_t n_ids, int close) {
  KVS_TRY(append(tok, p, cap, "<|im_start|>", 1));
  size_t n = strlen(role) + 2;
  char *s = malloc(n);
  if (!s) return KVS_ENOMEM;
  memcpy(s, role, n - 2);
  memcpy(s + n - 2, "\n", 2);
  kvs_err e = append(tok, p, cap, s, 0);
  free(s);
  if (!e) e = ids ? append_ids(p, cap, ids, n_ids) : append(tok, p, cap, content, 0);
  if (e || !close) return e;
  KVS_TRY(append(tok, p, cap, "<|im_end|>", 1));
  return append(tok, p, cap, "\n", 0);
}

static void seg_close(srv_prompt *p, uint32_t kind, uint32_t start) {
  if (p->n_tokens == start) return; /* empty segments are left out */
  p->segs[p->n_segs++] = (srv_seg){.kind = kind, .start = start, .len = p->n_tokens - start};
}

static kvs_err docs(const kvs_tok *tok, const srv_req *r, srv_prompt *p, uint32_t *cap) {
  for (size_t i = 0; i < r->n_docs; i++) {
    uint32_t s = p->n_tokens;
    size_t n = strlen(r->docs[i]);
    char *d = malloc(n + 3);
    if (!d) return KVS_ENOMEM;
    memcpy(d, r->docs[i], n);
    memcpy(d + n, "\n\n", 3);
    kvs_err e = append(tok, p, cap, d, 0); /* each document alone: its ids do not depend on
                                            * what stands before it */
    free(d);
    KVS_TRY(e);
    seg_close(p, SRV_SEG_CONTENT, s);
  }
  return KVS_OK;
}

static kvs_err build(const kvs_tok *tok, const srv_req *r, const srv_answers *answers,
                     srv_prompt *p) {
  uint32_t cap = 0, s = 0;
  if (!r->chat) {
    KVS_TRY(docs(tok, r, p, &cap));
    s = p->n_tokens;
    KVS_TRY(append(tok, p, &cap, r->prompt, 0));
    seg_close(p, SRV_SEG_NEW, s);
    return p->n_tokens ? KVS_OK : KVS_EINVAL;
  }
  size_t last_user = r->n_msgs;
  for (size_t i = 0; i < r->n_msgs; i++)
    if (!strcmp(r->msgs[i].role, "user")) last_user = i;
  for (size_t i = 0; i < r->n_msgs; i++) {
    const char *role = strcmp(r->msgs[i].role, "developer") ? r->msgs[i].role : "system";
    if (i != last_user) {
      uint32_t n_ids = 0;
      const int32_t *ids =
          !strcmp(role, "assistant")
              ? srv_answers_get(answers, r->msgs[i].content, strlen(r->msgs[i].content), &n_ids)
              : NULL;
      KVS_TRY(turn(tok, p, &cap, role, r->msgs[i].content, ids, n_ids, 1));
      continue;
    }
    /* the history and the opening of the last user turn are the prefix; its
     * documents follow as content chunks; its own text is new */
    KVS_TRY(append(tok, p, &cap, "<|im_start|>", 1));
    KVS_TRY(append(tok, p, &cap, "user\n", 0));
    seg_close(p, SRV_SEG_PREFIX, 0);
    KVS_TRY(docs(tok, r, p, &cap));
    s = p->n_tokens;
    KVS_TRY(append(tok, p, &cap, r->msgs[i].content, 0));
    KVS_TRY(append(tok, p, &cap, "<|im_end|>", 1));
    KVS_TRY(append(tok, p, &cap, "\n", 0));
  }
  if (last_user == r->n_msgs) { /* no user turn: everything so far is history */
    seg_close(p, SRV_SEG_PREFIX, 0);
    s = p->n_tokens;
  }
  KVS_TRY(turn(tok, p, &cap, "assistant", "", NULL, 0, 0));
  seg_close(p, SRV_SEG_NEW, s);
  return KVS_OK;
}

kvs_err srv_prompt_build(const kvs_tok *tok, const srv_req *r, const srv_answers *answers,
                         srv_prompt *p) {
  memset(p, 0, sizeof *p);
  kvs_err e = build(tok, r, answers, p);
  if (e) srv_prompt_free(p);
  return e;
}

void srv_prompt_free(srv_prompt *p) {
  if (!p) return;
  free(p->tokens);
  memset(p, 0, sizeof *p);
}
