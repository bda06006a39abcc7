/* tokenizer.c - GPT-2-style byte-level BPE over a GGUF vocabulary, with
 * llama.cpp's pre-tokenization for Qwen2 ("qwen2": see qwen2_split) and for
 * SmolLM2 ("smollm"):
 *   1. special tokens (control / user-defined) are cut out first, longest first;
 *   2. every \p{N} code point becomes its own piece (text between kept);
 *   3. each piece is split by the GPT-2 pattern
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   4. each word's UTF-8 bytes are mapped to GPT-2's printable code points and
 *      merged by rank (lowest rank first, leftmost first among equals).
 * Unicode categories come from utf8proc; White_Space is the Unicode property
 * (25 code points). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "model_int.h"

/* ------------------------------------------------------------ strmap */
kvs_err kvs__strmap_init(kvs__strmap *m, uint64_t n_keys, uint64_t total_bytes) {
  memset(m, 0, sizeof *m);
  m->cap = 16;
  while (m->cap < n_keys * 2)
    m->cap <<= 1;
  m->slot = malloc(m->cap * sizeof *m->slot);
  m->key = malloc((n_keys + 1) * sizeof *m->key);
  m->klen = malloc((n_keys + 1) * sizeof *m->klen);
  m->val = malloc((n_keys + 1) * sizeof *m->val);
  m->arena = malloc(total_bytes + 1);
  m->arena_cap = total_bytes + 1;
  m->n_keys_cap = n_keys;
  if (!m->slot || !m->key || !m->klen || !m->val || !m->arena) {
    kvs__strmap_free(m);
    return KVS_ENOMEM;
  }
  memset(m->slot, 0xff, m->cap * sizeof *m->slot);
  return KVS_OK;
}

void kvs__strmap_free(kvs__strmap *m) {
  free(m->slot);
  free(m->key);
  free(m->klen);
  free(m->val);
  free(m->arena);
  memset(m, 0, sizeof *m);
}

static uint64_t find_slot(const kvs__strmap *m, const char *k, uint32_t len, int *found) {
  uint64_t h = XXH3_64bits(k, len) & (m->cap - 1);
  for (;;) {
    int32_t s = m->slot[h];
    if (s < 0) {
      *found = 0;
      return h;
    }
    if (m->klen[s] == len && !memcmp(m->key[s], k, len)) {
      *found = 1;
      return h;
    }
    h = (h + 1) & (m->cap - 1);
  }
}

kvs_err kvs__strmap_put(kvs__strmap *m, const char *k, uint32_t len, int32_t val) {
  int found;
  uint64_t h = find_slot(m, k, len, &found);
  if (found) return KVS_OK;
  if (m->n >= m->n_keys_cap || m->arena_used + len > m->arena_cap) return KVS_ERANGE;
  char *dst = m->arena + m->arena_used;
  memcpy(dst, k, len);
  m->arena_used += len;
  m->key[m->n] = dst;
  m->klen[m->n] = len;
  m->val[m->n] = val;
  m->slot[h] = (int32_t)m->n;
  m->n++;
  return KVS_OK;
}

int32_t kvs__strmap_get(const kvs__strmap *m, const char *k, uint32_t len) {
  if (!m->cap) return -1;
  int found;
  uint64_t h = find_slot(m, k, len, &found);
  return found ? m->val[m->slot[h]] : -1;
}

/* ------------------------------------------------------------ tokenizer */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

struct kvs_tok {
  uint32_t n_vocab;
  char **text; /* token text (mapped code points for normal tokens), NUL-terminated */
  uint32_t *len;
  int32_t *type;
  char **bytes; /* decoded bytes of each token */
  uint32_t *bytes_len;
  kvs__strmap vocab;  /* text -> id */
  kvs__strmap merges; /* "a b" -> rank */
  int32_t *special;   /* ids of special tokens, longest text first */
  uint32_t n_special;
  kvs_token bos, eos;
  int add_bos;
  int qwen2;             /* pre-tokenizer "qwen2" (else the smollm/GPT-2 split) */
  uint16_t byte_cp[256]; /* byte -> GPT-2 code point */
  int16_t cp_byte[512];  /* code point (< 512) -> byte, -1 when unmapped */
};

static void init_byte_map(kvs_tok *t) {
  int n = 0;
  for (int i = 0; i < 512; i++)
    t->cp_byte[i] = -1;
  for (int b = 0; b < 256; b++) {
    int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    t->byte_cp[b] = (uint16_t)(keep ? b : 256 + n++);
    t->cp_byte[t->byte_cp[b]] = (int16_t)b;
  }
}

void kvs_tok_free(kvs_tok *t) {
  if (!t) return;
  for (uint32_t i = 0; t->text && i < t->n_vocab; i++)
    free(t->text[i]);
  for (uint32_t i = 0; t->bytes && i < t->n_vocab; i++)
    free(t->bytes[i]);
  free(t->text);
  free(t->len);
  free(t->type);
  free(t->bytes);
  free(t->bytes_len);
  free(t->special);
  kvs__strmap_free(&t->vocab);
  kvs__strmap_free(&t->merges);
  free(t);
}

/* Decodes one UTF-8 code point at s[i..n); invalid bytes give U+FFFD and
 * advance by one, as llama.cpp does. */
static uint32_t utf8_next(const uint8_t *s, size_t n, size_t *i) {
  utf8proc_int32_t cp;
  utf8proc_ssize_t k = utf8proc_iterate(s + *i, (utf8proc_ssize_t)(n - *i), &cp);
  if (k <= 0) {
    (*i)++;
    return 0xFFFD;
  }
  *i += (size_t)k;
  return (uint32_t)cp;
}

static int is_special_type(int32_t ty) {
  return ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
  const kvs_tok *t = ctx;
  uint32_t la = t->len[*(const int32_t *)a], lb = t->len[*(const int32_t *)b];
  if (la != lb) return la > lb ? -1 : 1;
  return *(const int32_t *)a - *(const int32_t *)b;
}

kvs_err kvs_tok_create(const kvs_gguf *g, kvs_tok **out) {
  if (!g || !out) return KVS_EINVAL;
  *out = NULL;
  const char *s;
  uint64_t slen;
  kvs_err e = kvs_gguf_get_str(g, "tokenizer.ggml.model", &s, &slen);
  if (e) return e == KVS_ENOENT ? KVS_ERR_AT(KVS_ENOTSUP, "tok: no tokenizer model") : e;
  if (slen != 4 || memcmp(s, "gpt2", 4)) return KVS_ERR_AT(KVS_ENOTSUP, "tok: model not gpt2");
  if (kvs_gguf_get_str(g, "tokenizer.ggml.pre", &s, &slen) == KVS_OK) {
    static const char *ok[] = {"smollm", "gpt2", "starcoder", "refact", "default", "qwen2"};
    int good = 0;
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
      good |= strlen(ok[i]) == slen && !memcmp(ok[i], s, slen);
    if (!good) return KVS_ERR_AT(KVS_ENOTSUP, "tok: pre-tokenizer");
  }
  uint32_t et;
  uint64_t nv, nm = 0;
  KVS_TRY(kvs_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &nv));
  KVS_RETURN_ERROR_IF(et != KVS_GGUF_STRING || nv == 0 || nv > (1u << 24), KVS_ECORRUPT,
                      "tok: tokens array");
  kvs_tok *t = calloc(1, sizeof *t);
  if (!t) return KVS_ENOMEM;
  init_byte_map(t);
  t->n_vocab = (uint32_t)nv;
  const char **ptrs = malloc(nv * sizeof *ptrs);
  uint32_t *lens = malloc(nv * sizeof *lens);
  const char **mptrs = NULL;
  uint32_t *mlens = NULL;
  t->text = calloc(nv, sizeof *t->text);
  t->len = calloc(nv, sizeof *t->len);
  t->type = calloc(nv, sizeof *t->type);
  t->bytes = calloc(nv, sizeof *t->bytes);
  t->bytes_len = calloc(nv, sizeof *t->bytes_len);
  e = KVS_ENOMEM;
  if (!ptrs || !lens || !t->text || !t->len || !t->type || !t->bytes || !t->bytes_len) goto fail;
  if ((e = kvs_gguf_get_arr_str(g, "tokenizer.ggml.tokens", ptrs, lens, nv))) goto fail;
  for (uint64_t i = 0; i < nv; i++)
    t->type[i] = TT_NORMAL;
  uint64_t ntt;
  if (kvs_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &ntt) == KVS_OK) {
    if (ntt != nv) {
      e = KVS_ERR_AT(KVS_ECORRUPT, "tok: token_type count");
      goto fail;
    }
    if ((e = kvs_gguf_get_arr_i32(g, "tokenizer.ggml.token_type", t->type, nv))) goto fail;
  }
  uint64_t total = 0;
  for (uint64_t i = 0; i < nv; i++)
    total += lens[i];
  if ((e = kvs__strmap_init(&t->vocab, nv, total))) goto fail;
  for (uint64_t i = 0; i < nv; i++) {
    e = KVS_ENOMEM;
    if (!(t->text[i] = malloc(lens[i] + 1))) goto fail;
    memcpy(t->text[i], ptrs[i], lens[i]);
    t->text[i][lens[i]] = 0;
    t->len[i] = lens[i];
    if ((e = kvs__strmap_put(&t->vocab, ptrs[i], lens[i], (int32_t)i))) goto fail;
    /* decoded bytes: specials stay as text; normal tokens map code points back */
    e = KVS_ENOMEM;
    if (!(t->bytes[i] = malloc(lens[i] + 1))) goto fail;
    if (is_special_type(t->type[i])) {
      memcpy(t->bytes[i], ptrs[i], lens[i]);
      t->bytes_len[i] = lens[i];
    } else {
      size_t k = 0, o = 0;
      while (k < lens[i]) {
        uint32_t cp = utf8_next((const uint8_t *)ptrs[i], lens[i], &k);
        if (cp < 512 && t->cp_byte[cp] >= 0) {
          t->bytes[i][o++] = (char)t->cp_byte[cp];
        } else { /* not a byte-level token: keep its UTF-8 */
          utf8proc_uint8_t buf[4];
          utf8proc_ssize_t w = utf8proc_encode_char((utf8proc_int32_t)cp, buf);
          if (o + (size_t)w > lens[i]) break;
          memcpy(t->bytes[i] + o, buf, (size_t)w);
          o += (size_t)w;
        }
      }
      t->bytes_len[i] = (uint32_t)o;
    }
    t->bytes[i][t->bytes_len[i]] = 0;
  }
  /* special tokens, longest first */
  t->special = malloc(nv * sizeof *t->special);
  e = KVS_ENOMEM;
  if (!t->special) goto fail;
  for (uint64_t i = 0; i < nv; i++)
    if (is_special_type(t->type[i]) && lens[i] > 0) t->special[t->n_special++] = (int32_t)i;
  qsort_r(t->special, t->n_special, sizeof *t->special, cmp_special, t);
  /* merges */
  if (kvs_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm) == KVS_OK) {
    e = KVS_ECORRUPT;
    if (et != KVS_GGUF_STRING || nm > (1u << 24)) goto fail;
    e = KVS_ENOMEM;
    mptrs = malloc((nm ? nm : 1) * sizeof *mptrs);
    mlens = malloc((nm ? nm : 1) * sizeof *mlens);
    if (!mptrs || !mlens) goto fail;
    if ((e = kvs_gguf_get_arr_str(g, "tokenizer.ggml.merges", mptrs, mlens, nm))) goto fail;
    total = 0;
    for (uint64_t i = 0; i < nm; i++)
      total += mlens[i];
    if ((e = kvs__strmap_init(&t->merges, nm, total))) goto fail;
    for (uint64_t i = 0; i < nm; i++)
      if ((e = kvs__strmap_put(&t->merges, mptrs[i], mlens[i], (int32_t)i))) goto fail;
  }
  uint32_t v;
  t->bos =
      kvs_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &v) == KVS_OK && v < nv ? (int32_t)v : -1;
  t->eos =
      kvs_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &v) == KVS_OK && v < nv ? (int32_t)v : -1;
  int ab = 0;
  t->add_bos = kvs_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &ab) == KVS_OK && ab;
  t->qwen2 = kvs_gguf_get_str(g, "tokenizer.ggml.pre", &s, &slen) == KVS_OK && slen == 5 &&
             !memcmp(s, "qwen2", 5);
  free(ptrs);
  free(lens);
  free(mptrs);
  free(mlens);
  *out = t;
  return KVS_OK;
fail:
  free(ptrs);
  free(lens);
  free(mptrs);
  free(mlens);
  kvs_tok_free(t);
  return e;
}

uint32_t kvs_tok_n_vocab(const kvs_tok *t) { return t->n_vocab; }
kvs_token kvs_tok_bos(const kvs_tok *t) { return t->bos; }
kvs_token kvs_tok_eos(const kvs_tok *t) { return t->eos; }
kvs_token kvs_tok_find(const kvs_tok *t, const char *text) {
  return kvs__strmap_get(&t->vocab, text, (uint32_t)strlen(text));
}
const char *kvs_tok_piece(const kvs_tok *t, kvs_token id, size_t *len) {
  if (id < 0 || (uint32_t)id >= t->n_vocab) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = t->bytes_len[id];
  return t->bytes[id];
}

/* A byte yields at most one token, except an invalid UTF-8 byte, which becomes
 * U+FFFD (3 bytes) and so at most 3 tokens. */
size_t kvs_tok_bound(size_t text_len) { return 3 * text_len + 1; }

/* ---------------------------------------------------------- encoding */
typedef struct outbuf {
  kvs_token *ids;
  size_t cap, n;
} outbuf;

static void emit(outbuf *o, kvs_token id) {
  if (o->n < o->cap) o->ids[o->n] = id;
  o->n++;
}

enum { F_LETTER = 1, F_NUMBER = 2, F_SPACE = 4 };

static int cp_flags(uint32_t cp) {
  switch (cp) {
  case 0x09:
  case 0x0A:
  case 0x0B:
  case 0x0C:
  case 0x0D:
  case 0x20:
  case 0x85:
  case 0xA0:
  case 0x1680:
  case 0x2028:
  case 0x2029:
  case 0x202F:
  case 0x205F:
  case 0x3000: return F_SPACE;
  default: break;
  }
  if (cp >= 0x2000 && cp <= 0x200A) return F_SPACE;
  switch (utf8proc_category((utf8proc_int32_t)cp)) {
  case UTF8PROC_CATEGORY_LU:
  case UTF8PROC_CATEGORY_LL:
  case UTF8PROC_CATEGORY_LT:
  case UTF8PROC_CATEGORY_LM:
  case UTF8PROC_CATEGORY_LO: return F_LETTER;
  case UTF8PROC_CATEGORY_ND:
  case UTF8PROC_CATEGORY_NL:
  case UTF8PROC_CATEGORY_NO: return F_NUMBER;
  default: return 0;
  }
}

/* scratch for one fragment: code points, their byte offsets, symbol list */
typedef struct work {
  uint32_t *cp;
  size_t *off; /* byte offset of cp[i] in the fragment; off[n] = length */
  int *fl;
  char *mapped;      /* mapped UTF-8 of the current word */
  size_t *sym_start; /* symbols: byte ranges in mapped */
  size_t *sym_len;
  size_t cap;
} work;

/* BPE over one word (bytes w[0..n)), emitting ids. */
static void bpe_word(const kvs_tok *t, work *wk, const uint8_t *w, size_t n, outbuf *o) {
  size_t m = 0, ns = 0;
  for (size_t i = 0; i < n; i++) {
    utf8proc_uint8_t buf[4];
    utf8proc_ssize_t k = utf8proc_encode_char(t->byte_cp[w[i]], buf);
    wk->sym_start[ns] = m;
    wk->sym_len[ns++] = (size_t)k;
    memcpy(wk->mapped + m, buf, (size_t)k);
    m += (size_t)k;
  }
  /* the whole word may already be a token (llama.cpp's ignore_merges is off
   * for smollm, so always merge; this is only a fast path with equal result
   * when merges are complete) */
  char pair[1024];
  while (ns > 1) {
    int32_t best = -1;
    size_t bi = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
      size_t la = wk->sym_len[i], lb = wk->sym_len[i + 1];
      if (la + lb + 1 > sizeof pair) continue;
      memcpy(pair, wk->mapped + wk->sym_start[i], la);
      pair[la] = ' ';
      memcpy(pair + la + 1, wk->mapped + wk->sym_start[i + 1], lb);
      int32_t r = kvs__strmap_get(&t->merges, pair, (uint32_t)(la + lb + 1));
      if (r >= 0 && (best < 0 || r < best)) {
        best = r;
        bi = i;
      }
    }
    if (best < 0) break;
    wk->sym_len[bi] += wk->sym_len[bi + 1];
    memmove(&wk->sym_start[bi + 1], &wk->sym_start[bi + 2], (ns - bi - 2) * sizeof(size_t));
    memmove(&wk->sym_len[bi + 1], &wk->sym_len[bi + 2], (ns - bi - 2) * sizeof(size_t));
    ns--;
  }
  for (size_t i = 0; i < ns; i++) {
    const char *sp = wk->mapped + wk->sym_start[i];
    int32_t id = kvs__strmap_get(&t->vocab, sp, (uint32_t)wk->sym_len[i]);
    if (id >= 0) {
      emit(o, id);
      continue;
    }
    for (size_t b = 0; b < wk->sym_len[i]; b++) { /* llama.cpp's fallback: raw bytes */
      int32_t bid = kvs__strmap_get(&t->vocab, sp + b, 1);
      if (bid >= 0) emit(o, bid);
    }
  }
}

/* GPT-2 split of code points [a, b) (one \p{N}-free piece or single digit). */
static void gpt2_split(const kvs_tok *t, work *wk, const uint8_t *frag, size_t a, size_t b,
                       outbuf *o) {
  size_t pos = a, prev = a;
#define FL(p) ((p) < b ? wk->fl[p] : -1)
#define WORD(end)                                                                                  \
  do {                                                                                             \
    if ((end) > prev) bpe_word(t, wk, frag + wk->off[prev], wk->off[end] - wk->off[prev], o);      \
    prev = (end);                                                                                  \
  } while (0)
  while (pos < b) {
    uint32_t c = wk->cp[pos];
    if (c == '\'' && pos + 1 < b) {
      uint32_t n1 = wk->cp[pos + 1];
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        pos += 2;
        WORD(pos);
        continue;
      }
      if (pos + 2 < b) {
        uint32_t n2 = wk->cp[pos + 2];
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          pos += 3;
          WORD(pos);
          continue;
        }
      }
    }
    int f2 = c == ' ' ? FL(pos + 1) : wk->fl[pos];
    if (f2 > 0 && (f2 & F_LETTER)) {
      pos += c == ' ';
      while (FL(pos) > 0 && (FL(pos) & F_LETTER))
        pos++;
      WORD(pos);
      continue;
    }
    if (f2 > 0 && (f2 & F_NUMBER)) {
      pos += c == ' ';
      while (FL(pos) > 0 && (FL(pos) & F_NUMBER))
        pos++;
      WORD(pos);
      continue;
    }
    if (f2 == 0) { /* in range, not space/letter/number */
      pos += c == ' ';
      while (FL(pos) == 0)
        pos++;
      WORD(pos);
      continue;
    }
    size_t nws = 0;
    while (FL(pos + nws) > 0 && (FL(pos + nws) & F_SPACE))
      nws++;
    if (nws > 1 && pos + nws < b) { /* \s+(?!\S): leave the last space to the next word */
      pos += nws - 1;
      WORD(pos);
      continue;
    }
    if (nws > 0) {
      pos += nws;
      WORD(pos);
      continue;
    }
    pos++;
    WORD(pos);
  }
#undef FL
#undef WORD
}

/* llama.cpp's "qwen2" split of code points [a, b): the pattern
 *   (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (leftmost alternative first), written out as llama.cpp's hand-made matcher
 * for the llama3 pattern, which differs only in \p{N}{1,3}. */
static void qwen2_split(const kvs_tok *t, work *wk, const uint8_t *frag, size_t a, size_t b,
                        outbuf *o) {
  size_t pos = a, prev = a;
#define FL(p)    ((p) < b ? wk->fl[p] : -1) /* -1 outside, 0 neither space, letter nor number */
#define IS(p, F) (FL(p) > 0 && (FL(p) & (F)))
#define WORD(end)                                                                                  \
  do {                                                                                             \
    if ((end) > prev) bpe_word(t, wk, frag + wk->off[prev], wk->off[end] - wk->off[prev], o);      \
    prev = (end);                                                                                  \
  } while (0)
  while (pos < b) {
    uint32_t c = wk->cp[pos];
    if (c == '\'' && pos + 1 < b) {
      uint32_t n1 = wk->cp[pos + 1] | 0x20; /* ASCII letters only: [sS] */
      int ascii1 = wk->cp[pos + 1] < 128;
      if (ascii1 && (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd')) {
        pos += 2;
        WORD(pos);
        continue;
      }
      if (ascii1 && pos + 2 < b && wk->cp[pos + 2] < 128) {
        uint32_t n2 = wk->cp[pos + 2] | 0x20;
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          pos += 3;
          WORD(pos);
          continue;
        }
      }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!(c == '\r' || c == '\n' || IS(pos, F_NUMBER)) &&
        (IS(pos, F_LETTER) || IS(pos + 1, F_LETTER))) {
      pos++;
      while (IS(pos, F_LETTER))
        pos++;
      WORD(pos);
      continue;
    }
    if (IS(pos, F_NUMBER)) { /* \p{N}: one at a time */
      pos++;
      WORD(pos);
      continue;
    }
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' (a lone space at the end lands here too, as in llama.cpp) */
    int f2 = c == ' ' ? FL(pos + 1) : FL(pos);
    if (f2 <= 0) {
      pos += c == ' ';
      while (FL(pos) == 0)
        pos++;
      while (pos < b && (wk->cp[pos] == '\r' || wk->cp[pos] == '\n'))
        pos++;
      WORD(pos);
      continue;
    }
    size_t nws = 0, last_nl = 0;
    while (IS(pos + nws, F_SPACE)) {
      uint32_t c2 = wk->cp[pos + nws];
      if (c2 == '\r' || c2 == '\n') last_nl = pos + nws + 1;
      nws++;
    }
    if (last_nl > 0) { /* \s*[\r\n]+ */
      pos = last_nl;
      WORD(pos);
      continue;
    }
    if (nws > 1 && pos + nws < b) { /* \s+(?!\S) */
      pos += nws - 1;
      WORD(pos);
      continue;
    }
    if (nws > 0) {
      pos += nws;
      WORD(pos);
      continue;
    }
    pos++;
    WORD(pos);
  }
#undef FL
#undef IS
#undef WORD
}

static kvs_err encode_fragment(const kvs_tok *t, const uint8_t *s, size_t n, outbuf *o) {
  if (n == 0) return KVS_OK;
  work wk;
  memset(&wk, 0, sizeof wk);
  wk.cp = malloc((n + 1) * sizeof *wk.cp);
  wk.off = malloc((n + 1) * sizeof *wk.off);
  wk.fl = malloc((n + 1) * sizeof *wk.fl);
  wk.mapped = malloc(2 * n + 4);
  wk.sym_start = malloc((n + 1) * sizeof(size_t));
  wk.sym_len = malloc((n + 1) * sizeof(size_t));
  kvs_err e = KVS_ENOMEM;
  if (!wk.cp || !wk.off || !wk.fl || !wk.mapped || !wk.sym_start || !wk.sym_len) goto done;
  /* invalid UTF-8 becomes U+FFFD: re-encode the fragment so that words are
   * cut from valid bytes, as llama.cpp does */
  size_t ncp = 0, i = 0, need = 0;
  while (i < n) {
    size_t i0 = i;
    wk.cp[ncp++] = utf8_next(s, n, &i);
    need += wk.cp[ncp - 1] == 0xFFFD && i - i0 == 1 && s[i0] >= 0x80 ? 3 : i - i0;
  }
  uint8_t *clean = malloc(need + 1);
  if (!clean) goto done;
  size_t w = 0;
  for (size_t k = 0; k < ncp; k++) {
    wk.off[k] = w;
    w += (size_t)utf8proc_encode_char((utf8proc_int32_t)wk.cp[k], clean + w);
    wk.fl[k] = cp_flags(wk.cp[k]);
  }
  wk.off[ncp] = w;
  if (w * 2 + 4 > 2 * n + 4) { /* replacement chars grew the text */
    free(wk.mapped);
    free(wk.sym_start);
    free(wk.sym_len);
    wk.mapped = malloc(2 * w + 4);
    wk.sym_start = malloc((w + 1) * sizeof(size_t));
    wk.sym_len = malloc((w + 1) * sizeof(size_t));
    if (!wk.mapped || !wk.sym_start || !wk.sym_len) {
      free(clean);
      goto done;
    }
  }
  if (t->qwen2) {
    qwen2_split(t, &wk, clean, 0, ncp, o);
    free(clean);
    e = KVS_OK;
    goto done;
  }
  /* stage 1: \p{N} code points alone; stage 2 on each piece */
  size_t a = 0;
  for (size_t k = 0; k < ncp; k++) {
    if (wk.fl[k] & F_NUMBER) {
      if (k > a) gpt2_split(t, &wk, clean, a, k, o);
      gpt2_split(t, &wk, clean, k, k + 1, o);
      a = k + 1;
    }
  }
  if (a < ncp) gpt2_split(t, &wk, clean, a, ncp, o);
  free(clean);
  e = KVS_OK;
done:
  free(wk.cp);
  free(wk.off);
  free(wk.fl);
  free(wk.mapped);
  free(wk.sym_start);
  free(wk.sym_len);
  return e;
}

/* Cuts special tokens out of s[0..n) (longest first at each position) and
 * encodes the text between them. */
static kvs_err encode_special(const kvs_tok *t, const uint8_t *s, size_t n, int parse_special,
                              outbuf *o) {
  size_t a = 0, i = 0;
  while (i < n) {
    int32_t hit = -1;
    for (uint32_t k = 0; k < t->n_special; k++) {
      int32_t id = t->special[k];
      if (!parse_special && t->type[id] != TT_USER) continue;
      uint32_t l = t->len[id];
      if (l <= n - i && !memcmp(s + i, t->text[id], l)) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      i++;
      continue;
    }
    KVS_TRY(encode_fragment(t, s + a, i - a, o));
    emit(o, hit);
    i += t->len[hit];
    a = i;
  }
  return encode_fragment(t, s + a, n - a, o);
}

kvs_err kvs_tok_encode(const kvs_tok *t, const char *text, size_t len, int parse_special,
                       int add_bos, kvs_token *out, size_t cap, size_t *n_out) {
  if (!t || (!text && len) || (!out && cap) || !n_out) return KVS_EINVAL;
  outbuf o = {out, cap, 0};
  if (add_bos && t->add_bos && t->bos >= 0) emit(&o, t->bos);
  KVS_TRY(encode_special(t, (const uint8_t *)text, len, parse_special, &o));
  *n_out = o.n;
  return o.n <= cap ? KVS_OK : KVS_ERANGE;
}

kvs_err kvs_tok_decode(const kvs_tok *t, const kvs_token *ids, size_t n, char *out, size_t cap,
                       size_t *n_out) {
  if (!t || (!ids && n) || (!out && cap) || !n_out) return KVS_EINVAL;
  size_t w = 0;
  int full = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_vocab) return KVS_EINVAL;
    uint32_t l = t->bytes_len[ids[i]];
    if (w + l < cap && !full)
      memcpy(out + w, t->bytes[ids[i]], l);
    else
      full = 1;
    w += l;
  }
  if (cap) out[w < cap ? w : cap - 1] = 0;
  *n_out = w;
  return w < cap ? KVS_OK : KVS_ERANGE;
}

kvs_err kvs_chat_format(const kvs_chat_msg *msgs, size_t n, int add_generation_prompt, char *out,
                        size_t cap, size_t *n_out) {
  if ((!msgs && n) || (!out && cap) || !n_out) return KVS_EINVAL;
  size_t w = 0;
  int full = 0;
#define PUT(str)                                                                                   \
  do {                                                                                             \
    size_t l_ = strlen(str);                                                                       \
    if (w + l_ < cap && !full)                                                                     \
      memcpy(out + w, (str), l_);                                                                  \
    else                                                                                           \
      full = 1;                                                                                    \
    w += l_;                                                                                       \
  } while (0)
  for (size_t i = 0; i < n; i++) {
    if (!msgs[i].role || !msgs[i].content) return KVS_EINVAL;
    PUT("<|im_start|>");
    PUT(msgs[i].role);
    PUT("\n");
    PUT(msgs[i].content);
    PUT("<|im_end|>\n");
  }
  if (add_generation_prompt) PUT("<|im_start|>assistant\n");
#undef PUT
  if (cap) out[w < cap ? w : cap - 1] = 0;
  *n_out = w;
  return w < cap ? KVS_OK : KVS_ERANGE;
}
