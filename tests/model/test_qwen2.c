/* Qwen2 without the real weights (runs in CI):
 *  - the dequantizers Q5_0, Q5_1, Q4_K, Q5_K, Q6_K on hand-built blocks,
 *    packed as ggml's quantize_row_*_ref packs them (ggml-common.h layouts),
 *    golden values from the unpacked integers;
 *  - the "qwen2" pre-tokenizer: ids equal llama.cpp's on MuSiQue passages and
 *    400 edge-case texts, over the Qwen2.5-Coder vocabulary stored in
 *    fixtures/qwen2_vocab.gguf.zst (tokenizer keys only); ChatML prompts give
 *    llama.cpp's ids;
 *  - a tiny qwen2 GGUF (the real vocabulary, random weights, tied and untied
 *    output) loaded by kvs_model_load: every logit equals a naive double
 *    forward written here (Q/K/V biases, NEOX RoPE, GQA), which differs from
 *    it without the biases or with NORM pairs (so the check has teeth). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "kvs_model.h"
#include "kvs_test.h"

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

/* ------------------------------------------------------------ dequant */
/* Q4_K / Q5_K scales: 8 sub-blocks of 32, 6-bit scale sc[j] and min m[j],
 * packed into 12 bytes as ggml's quantize_row_q4_K_ref does. */
static void pack_scales_k4(const uint8_t *sc, const uint8_t *m, uint8_t *q) {
  memset(q, 0, 12);
  for (int j = 0; j < 8; j++) {
    if (j < 4) {
      q[j] = sc[j];
      q[j + 4] = m[j];
    } else {
      q[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      q[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
      q[j] |= (uint8_t)((m[j] >> 4) << 6);
    }
  }
}

static void test_q4_k_q5_k(void) {
  for (int five = 0; five <= 1; five++) {
    uint8_t blk[2 * 176];
    uint8_t L[2][256], sc[2][8], mn[2][8];
    float d[2] = {0.5f, -0.25f}, dmin[2] = {0.25f, 0.125f};
    uint32_t bb = five ? 176 : 144, type = five ? KVS_GGML_Q5_K : KVS_GGML_Q4_K;
    memset(blk, 0, sizeof blk);
    for (int b = 0; b < 2; b++) {
      uint8_t *p = blk + b * bb;
      for (int j = 0; j < 8; j++) {
        sc[b][j] = (uint8_t)((j * 9 + b * 17 + 5) % 64); /* all 6 bits used */
        mn[b][j] = (uint8_t)((j * 23 + b * 7 + 40) % 64);
      }
      for (int i = 0; i < 256; i++)
        L[b][i] = (uint8_t)((i * 7 + b * 3 + i / 32) % (five ? 32 : 16));
      put16(p, kvs_f32_to_f16(d[b]));
      put16(p + 2, kvs_f32_to_f16(dmin[b]));
      pack_scales_k4(sc[b], mn[b], p + 4);
      uint8_t *qh = p + 16, *qs = p + (five ? 48 : 16);
      for (int j = 0, g = 0; j < 256; j += 64, g++)
        for (int l = 0; l < 32; l++) {
          qs[32 * g + l] = (uint8_t)((L[b][j + l] & 15) | (L[b][j + l + 32] & 15) << 4);
          if (five) {
            qh[l] |= (uint8_t)((L[b][j + l] >> 4) << (2 * g));
            qh[l] |= (uint8_t)((L[b][j + l + 32] >> 4) << (2 * g + 1));
          }
        }
    }
    CU_ASSERT_EQUAL(kvs_ggml_block_elems(type), 256);
    CU_ASSERT_EQUAL(kvs_ggml_row_bytes(type, 512), 2 * bb);
    CU_ASSERT_EQUAL(kvs_ggml_row_bytes(type, 500), 0);
    float out[512];
    CU_ASSERT_EQUAL(kvs_dequant(type, blk, out, 500), KVS_EINVAL);
    CU_ASSERT_EQUAL_FATAL(kvs_dequant(type, blk, out, 512), KVS_OK);
    int bad = 0;
    for (int b = 0; b < 2; b++)
      for (int i = 0; i < 256; i++) {
        float want = d[b] * sc[b][i / 32] * L[b][i] - dmin[b] * mn[b][i / 32];
        bad += out[256 * b + i] != want;
      }
    CU_ASSERT_EQUAL(bad, 0);
  }
}

static void test_q6_k(void) {
  uint8_t blk[2 * 210];
  uint8_t L[2][256];
  int8_t sc[2][16];
  float d[2] = {0.125f, -2.0f};
  memset(blk, 0, sizeof blk);
  for (int b = 0; b < 2; b++) {
    uint8_t *p = blk + 210 * b, *ql = p, *qh = p + 128;
    for (int j = 0; j < 16; j++)
      sc[b][j] = (int8_t)(j * 13 - 100 + b);
    for (int i = 0; i < 256; i++)
      L[b][i] = (uint8_t)((i * 11 + b * 5 + i / 16) % 64);
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
      for (int l = 0; l < 32; l++) {
        const uint8_t *x = L[b] + j + l;
        ql[l] = (uint8_t)((x[0] & 0xF) | (x[64] & 0xF) << 4);
        ql[l + 32] = (uint8_t)((x[32] & 0xF) | (x[96] & 0xF) << 4);
        qh[l] = (uint8_t)((x[0] >> 4) | (x[32] >> 4) << 2 | (x[64] >> 4) << 4 | (x[96] >> 4) << 6);
      }
    memcpy(p + 192, sc[b], 16);
    put16(p + 208, kvs_f32_to_f16(d[b]));
  }
  float out[512];
  CU_ASSERT_EQUAL(kvs_ggml_block_bytes(KVS_GGML_Q6_K), 210);
  CU_ASSERT_EQUAL_FATAL(kvs_dequant(KVS_GGML_Q6_K, blk, out, 512), KVS_OK);
  int bad = 0;
  for (int b = 0; b < 2; b++)
    for (int i = 0; i < 256; i++)
      bad += out[256 * b + i] != d[b] * sc[b][i / 16] * (L[b][i] - 32);
  CU_ASSERT_EQUAL(bad, 0);
}

static void test_q5_0_q5_1(void) {
  for (int one = 0; one <= 1; one++) {
    uint32_t bb = one ? 24 : 22, type = one ? KVS_GGML_Q5_1 : KVS_GGML_Q5_0;
    uint8_t blk[3 * 24], L[3][32];
    float d[3] = {0.5f, -0.125f, 4.0f}, m[3] = {-3.0f, 0.5f, 1.25f};
    memset(blk, 0, sizeof blk);
    for (int b = 0; b < 3; b++) {
      uint8_t *p = blk + bb * b;
      put16(p, kvs_f32_to_f16(d[b]));
      if (one) put16(p + 2, kvs_f32_to_f16(m[b]));
      uint8_t *qh = p + 2 + 2 * one, *qs = qh + 4;
      for (int j = 0; j < 32; j++)
        L[b][j] = (uint8_t)((j * 13 + b * 7) % 32);
      uint32_t h = 0;
      for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((L[b][j] & 15) | (L[b][j + 16] & 15) << 4);
        h |= (uint32_t)(L[b][j] >> 4) << j | (uint32_t)(L[b][j + 16] >> 4) << (j + 16);
      }
      for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
    }
    float out[96];
    CU_ASSERT_EQUAL(kvs_ggml_block_bytes(type), bb);
    CU_ASSERT_EQUAL_FATAL(kvs_dequant(type, blk, out, 96), KVS_OK);
    int bad = 0;
    for (int b = 0; b < 3; b++)
      for (int j = 0; j < 32; j++)
        bad += out[32 * b + j] != (one ? L[b][j] * d[b] + m[b] : (L[b][j] - 16) * d[b]);
    CU_ASSERT_EQUAL(bad, 0);
  }
}

/* ---------------------------------------------------------- tokenizer */
static uint8_t *g_vocab; /* the tokenizer-only GGUF */
static size_t g_vocab_n;
static kvs_gguf *g_gguf;
static kvs_tok *g_tok;

static uint8_t *unzstd(const char *rel, size_t *n) {
  size_t zn;
  uint8_t *z = kvs_test_read_file(kvs_test_src_path(rel), &zn);
  if (!z) return NULL;
  unsigned long long rn = ZSTD_getFrameContentSize(z, zn);
  uint8_t *raw = NULL;
  /* 32 zero bytes more: the vocabulary GGUF ends with its keys, and a GGUF's
   * (empty) data section starts at the next multiple of 32 */
  if (rn != ZSTD_CONTENTSIZE_ERROR && rn != ZSTD_CONTENTSIZE_UNKNOWN &&
      (raw = calloc(rn + 32, 1)) && ZSTD_decompress(raw, rn, z, zn) != rn) {
    free(raw);
    raw = NULL;
  }
  free(z);
  *n = (size_t)rn;
  return raw;
}

static int encode_eq(const char *text, uint32_t len, int special, const int32_t *want,
                     uint32_t n_want, int *roundtrip) {
  size_t cap = kvs_tok_bound(len) + 1, n = 0;
  kvs_token *ids = malloc(cap * sizeof *ids);
  kvs_err e = kvs_tok_encode(g_tok, text, len, special, 0, ids, cap, &n);
  int ok = e == KVS_OK && n == n_want && !memcmp(ids, want, n * sizeof *ids);
  *roundtrip = 0;
  if (e == KVS_OK) {
    char *back = malloc(len + 64);
    size_t bl;
    *roundtrip = kvs_tok_decode(g_tok, ids, n, back, len + 64, &bl) == KVS_OK && bl == len &&
                 !memcmp(back, text, len);
    free(back);
  }
  if (!ok) {
    size_t i = 0;
    while (i < n && i < n_want && ids[i] == want[i])
      i++;
    printf("\n  mismatch at %zu of %u/%zu in \"%.*s\": ours %d llama.cpp %d", i, n_want, n,
           (int)(len < 80 ? len : 80), text, i < n ? ids[i] : -1, i < n_want ? want[i] : -1);
  }
  free(ids);
  return ok;
}

static void test_tokenizer(void) {
  CU_ASSERT_EQUAL(kvs_tok_n_vocab(g_tok), 151936);
  CU_ASSERT_EQUAL(kvs_tok_eos(g_tok), 151645);
  CU_ASSERT_EQUAL(kvs_tok_find(g_tok, "<|im_end|>"), 151645);
  CU_ASSERT_EQUAL(kvs_tok_find(g_tok, "<|im_start|>"), 151644);
  size_t n;
  uint8_t *raw = unzstd("tests/model/fixtures/qwen2_tok.bin.zst", &n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(raw);
  size_t off = 0, texts = 0, eq = 0, rt = 0, tokens = 0;
  while (off + 8 <= n) {
    uint32_t flags, len, nid;
    memcpy(&flags, raw + off, 4);
    memcpy(&len, raw + off + 4, 4);
    const char *text = (const char *)raw + off + 8;
    memcpy(&nid, raw + off + 8 + len, 4);
    int32_t *want = malloc(((size_t)nid + 1) * 4);
    memcpy(want, raw + off + 12 + len, (size_t)nid * 4);
    off += 12 + (size_t)len + 4 * (size_t)nid;
    int r;
    eq += encode_eq(text, len, flags & 1, want, nid, &r);
    rt += r;
    texts++;
    tokens += nid;
    free(want);
  }
  printf("\n  %zu texts, %zu tokens: %zu equal to llama.cpp's ids, %zu decode back\n", texts,
         tokens, eq, rt);
  CU_ASSERT_EQUAL(off, n);
  CU_ASSERT(texts >= 700);
  CU_ASSERT_EQUAL(eq, texts);
  CU_ASSERT_EQUAL(rt, texts);
  free(raw);
}

/* The logit fixture's prompts (ChatML with parse_special, code, mixed
 * scripts) tokenize to the ids llama.cpp ran; ChatML from kvs_chat_format is
 * the fixture's first prompt. */
static void test_prompts_chatml(void) {
  size_t pn, ln;
  uint8_t *pr =
      kvs_test_read_file(kvs_test_src_path("tests/model/fixtures/qwen2_prompts.dat"), &pn);
  uint8_t *lg =
      kvs_test_read_file(kvs_test_src_path("tests/model/fixtures/qwen2_0.5b_top8.dat"), &ln);
  CU_ASSERT_PTR_NOT_NULL_FATAL(pr);
  CU_ASSERT_PTR_NOT_NULL_FATAL(lg);
  size_t po = 0, lo = 0, k = 0;
  while (po + 8 <= pn && lo + 4 <= ln) {
    uint32_t flags, len, nid;
    memcpy(&flags, pr + po, 4);
    memcpy(&len, pr + po + 4, 4);
    memcpy(&nid, lg + lo, 4);
    int r;
    CU_ASSERT(encode_eq((const char *)pr + po + 8, len, flags & 1, (const int32_t *)(lg + lo + 4),
                        nid, &r));
    if (k == 0) {
      kvs_chat_msg msgs[] = {
          {"system", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
          {"user", "What is the capital of France? Answer in one word."}};
      char buf[512];
      size_t bl;
      CU_ASSERT_EQUAL(kvs_chat_format(msgs, 2, 1, buf, sizeof buf, &bl), KVS_OK);
      CU_ASSERT(bl == len && !memcmp(buf, pr + po + 8, len));
    }
    po += 8 + len;
    lo += 4 + 4 * (size_t)nid + 64 * (size_t)nid;
    k++;
  }
  CU_ASSERT_EQUAL(k, 5);
  free(pr);
  free(lg);
}

/* ------------------------------------------------ tiny qwen2 GGUF model */
enum { TE = 32, TH = 4, TG = 2, TD = 8, TF = 48, TL = 2, TV = 151936 };

typedef struct tw {
  float *embd, *out, *onorm; /* embd/out (V, E), fp16 values */
  float *anorm[TL], *wq[TL], *wk[TL], *wv[TL], *wo[TL], *fnorm[TL], *wg[TL], *wu[TL], *wd[TL];
  float *bq[TL], *bk[TL], *bv[TL];
} tw;

static float *rnd(size_t n, float scale, float add, int f16, unsigned long long *st) {
  float *p = malloc(n * sizeof *p);
  for (size_t i = 0; i < n; i++) {
    p[i] = add + scale * kvs_test_randf(st);
    if (f16) p[i] = kvs_f16_to_f32(kvs_f32_to_f16(p[i]));
  }
  return p;
}

static void tw_make(tw *w) {
  unsigned long long st = 42;
  float se = 1.7f / sqrtf(TE);
  w->embd = rnd((size_t)TV * TE, 1.0f, 0, 1, &st);
  w->out = rnd((size_t)TV * TE, se, 0, 1, &st);
  w->onorm = rnd(TE, 0.1f, 1.0f, 0, &st);
  for (int l = 0; l < TL; l++) {
    w->anorm[l] = rnd(TE, 0.1f, 1.0f, 0, &st);
    w->wq[l] = rnd(TH * TD * TE, se, 0, 1, &st);
    w->wk[l] = rnd(TG * TD * TE, se, 0, 1, &st);
    w->wv[l] = rnd(TG * TD * TE, se, 0, 1, &st);
    w->wo[l] = rnd(TE * TH * TD, 1.7f / sqrtf(TH * TD), 0, 1, &st);
    w->fnorm[l] = rnd(TE, 0.1f, 1.0f, 0, &st);
    w->wg[l] = rnd(TF * TE, se, 0, 1, &st);
    w->wu[l] = rnd(TF * TE, se, 0, 1, &st);
    w->wd[l] = rnd(TE * TF, 1.7f / sqrtf(TF), 0, 1, &st);
    w->bq[l] = rnd(TH * TD, 1.0f, 0, 0, &st);
    w->bk[l] = rnd(TG * TD, 1.0f, 0, 0, &st);
    w->bv[l] = rnd(TG * TD, 1.0f, 0, 0, &st);
  }
}

static void tw_free(tw *w) {
  free(w->embd), free(w->out), free(w->onorm);
  for (int l = 0; l < TL; l++) {
    free(w->anorm[l]), free(w->wq[l]), free(w->wk[l]), free(w->wv[l]), free(w->wo[l]);
    free(w->fnorm[l]), free(w->wg[l]), free(w->wu[l]), free(w->wd[l]);
    free(w->bq[l]), free(w->bk[l]), free(w->bv[l]);
  }
}

/* GGUF writer: the vocabulary's keys, the qwen2 keys, then the tensors. */
typedef struct gbuf {
  uint8_t *p;
  size_t n, cap;
} gbuf;
static void gput(gbuf *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2;
    b->p = realloc(b->p, b->cap);
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void g32(gbuf *b, uint32_t v) { gput(b, &v, 4); }
static void g64(gbuf *b, uint64_t v) { gput(b, &v, 8); }
static void gstr(gbuf *b, const char *s) {
  g64(b, strlen(s));
  gput(b, s, strlen(s));
}
static void gkv_u32(gbuf *b, const char *k, uint32_t v) {
  gstr(b, k);
  g32(b, KVS_GGUF_U32);
  g32(b, v);
}
static void gkv_f32(gbuf *b, const char *k, float v) {
  gstr(b, k);
  g32(b, KVS_GGUF_F32);
  gput(b, &v, 4);
}

typedef struct tensor_src {
  char name[48];
  const float *data;
  uint64_t cols, rows;
  uint32_t type; /* F32 or F16 */
} tensor_src;

static char *write_tiny(const tw *w, int tied) {
  tensor_src ts[64];
  int nt = 0;
#define T(nm, d, c, r, ty)                                                                         \
  do {                                                                                             \
    snprintf(ts[nt].name, sizeof ts[nt].name, "%s", nm);                                           \
    ts[nt].data = d, ts[nt].cols = c, ts[nt].rows = r, ts[nt].type = ty;                           \
    nt++;                                                                                          \
  } while (0)
  T("token_embd.weight", w->embd, TE, TV, KVS_GGML_F16);
  if (!tied) T("output.weight", w->out, TE, TV, KVS_GGML_F16);
  T("output_norm.weight", w->onorm, TE, 1, KVS_GGML_F32);
  for (int l = 0; l < TL; l++) {
    char nm[48];
#define TLW(suffix, d, c, r)                                                                       \
  snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                                                 \
  T(nm, d, c, r, KVS_GGML_F32)
    TLW("attn_norm.weight", w->anorm[l], TE, 1);
    TLW("attn_q.weight", w->wq[l], TE, TH * TD);
    TLW("attn_k.weight", w->wk[l], TE, TG * TD);
    TLW("attn_v.weight", w->wv[l], TE, TG * TD);
    TLW("attn_q.bias", w->bq[l], TH * TD, 1);
    TLW("attn_k.bias", w->bk[l], TG * TD, 1);
    TLW("attn_v.bias", w->bv[l], TG * TD, 1);
    TLW("attn_output.weight", w->wo[l], TH * TD, TE);
    TLW("ffn_norm.weight", w->fnorm[l], TE, 1);
    TLW("ffn_gate.weight", w->wg[l], TE, TF);
    TLW("ffn_up.weight", w->wu[l], TE, TF);
    TLW("ffn_down.weight", w->wd[l], TF, TE);
#undef TLW
  }
#undef T
  gbuf b = {0};
  uint64_t nkv;
  memcpy(&nkv, g_vocab + 16, 8);
  gput(&b, "GGUF", 4);
  g32(&b, 3);
  g64(&b, (uint64_t)nt);
  g64(&b, nkv + 8);
  gput(&b, g_vocab + 24, g_vocab_n - 24); /* the vocabulary's keys (no tensors follow them) */
  gkv_u32(&b, "qwen2.embedding_length", TE);
  gkv_u32(&b, "qwen2.block_count", TL);
  gkv_u32(&b, "qwen2.feed_forward_length", TF);
  gkv_u32(&b, "qwen2.attention.head_count", TH);
  gkv_u32(&b, "qwen2.attention.head_count_kv", TG);
  gkv_u32(&b, "qwen2.context_length", 4096);
  gkv_f32(&b, "qwen2.rope.freq_base", 1e6f);
  gkv_f32(&b, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f);
  uint64_t off = 0;
  for (int i = 0; i < nt; i++) {
    gstr(&b, ts[i].name);
    g32(&b, ts[i].rows > 1 ? 2 : 1);
    g64(&b, ts[i].cols);
    if (ts[i].rows > 1) g64(&b, ts[i].rows);
    g32(&b, ts[i].type);
    g64(&b, off);
    off += ts[i].cols * ts[i].rows * (ts[i].type == KVS_GGML_F16 ? 2 : 4);
    off = (off + 31) & ~(uint64_t)31;
  }
  static const uint8_t zero[32];
  gput(&b, zero, (32 - b.n % 32) % 32);
  size_t base = b.n;
  for (int i = 0; i < nt; i++) {
    uint64_t n = ts[i].cols * ts[i].rows;
    for (uint64_t j = 0; j < n; j++) {
      if (ts[i].type == KVS_GGML_F16) {
        uint16_t h = kvs_f32_to_f16(ts[i].data[j]);
        gput(&b, &h, 2);
      } else {
        gput(&b, &ts[i].data[j], 4);
      }
    }
    gput(&b, zero, (32 - (b.n - base) % 32) % 32);
  }
  static char path[64];
  snprintf(path, sizeof path, "/tmp/kvs_qwen2_tiny_XXXXXX");
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_FATAL(write(fd, b.p, b.n) == (ssize_t)b.n);
  close(fd);
  free(b.p);
  return path;
}

/* y (rows) = W (rows, cols) x (+ bias) */
static void mv(const float *W, const double *x, double *y, int rows, int cols, const float *bias) {
  for (int r = 0; r < rows; r++) {
    double s = bias ? bias[r] : 0;
    for (int c = 0; c < cols; c++)
      s += (double)W[(size_t)r * cols + c] * x[c];
    y[r] = s;
  }
}
static void rmsn(const double *x, const float *w, double *y, int n, double eps) {
  double ss = 0;
  for (int i = 0; i < n; i++)
    ss += x[i] * x[i];
  double r = 1.0 / sqrt(ss / n + eps);
  for (int i = 0; i < n; i++)
    y[i] = x[i] * r * w[i];
}
static void rope(double *v, int pos, int neox) {
  for (int i = 0; i < TD / 2; i++) {
    double a = pos * pow(1e6, -2.0 * i / TD), c = cos(a), s = sin(a);
    int p0 = neox ? i : 2 * i, p1 = neox ? i + TD / 2 : 2 * i + 1;
    double x0 = v[p0], x1 = v[p1];
    v[p0] = x0 * c - x1 * s;
    v[p1] = x0 * s + x1 * c;
  }
}

/* Naive double forward: logits (n, V). bias = 0 drops the Q/K/V biases,
 * neox = 0 rotates adjacent pairs instead. */
static void reference(const tw *w, int tied, const kvs_token *ids, int n, int bias, int neox,
                      double *logits) {
  double *x = calloc((size_t)n * TE, sizeof *x), *xn = malloc(TE * sizeof *xn);
  double *K = malloc((size_t)n * TG * TD * sizeof *K),
         *Vv = malloc((size_t)n * TG * TD * sizeof *Vv);
  double *Q = malloc((size_t)n * TH * TD * sizeof *Q), *att = malloc(TH * TD * sizeof *att);
  double *sc = malloc((size_t)n * sizeof *sc), *g = malloc(TF * sizeof *g),
         *u = malloc(TF * sizeof *u);
  double *tmp = malloc(TE * sizeof *tmp);
  for (int t = 0; t < n; t++)
    for (int j = 0; j < TE; j++)
      x[(size_t)t * TE + j] = w->embd[(size_t)ids[t] * TE + j];
  for (int l = 0; l < TL; l++) {
    for (int t = 0; t < n; t++) {
      rmsn(x + (size_t)t * TE, w->anorm[l], xn, TE, 1e-6);
      mv(w->wq[l], xn, Q + (size_t)t * TH * TD, TH * TD, TE, bias ? w->bq[l] : NULL);
      mv(w->wk[l], xn, K + (size_t)t * TG * TD, TG * TD, TE, bias ? w->bk[l] : NULL);
      mv(w->wv[l], xn, Vv + (size_t)t * TG * TD, TG * TD, TE, bias ? w->bv[l] : NULL);
      for (int h = 0; h < TH; h++)
        rope(Q + ((size_t)t * TH + h) * TD, t, neox);
      for (int h = 0; h < TG; h++)
        rope(K + ((size_t)t * TG + h) * TD, t, neox);
    }
    for (int t = 0; t < n; t++) {
      for (int h = 0; h < TH; h++) {
        int gq = h / (TH / TG);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= t; j++) {
          double d = 0;
          for (int c = 0; c < TD; c++)
            d += Q[((size_t)t * TH + h) * TD + c] * K[((size_t)j * TG + gq) * TD + c];
          sc[j] = d / sqrt((double)TD);
          mx = sc[j] > mx ? sc[j] : mx;
        }
        for (int j = 0; j <= t; j++)
          sum += (sc[j] = exp(sc[j] - mx));
        for (int c = 0; c < TD; c++) {
          double o = 0;
          for (int j = 0; j <= t; j++)
            o += sc[j] / sum * Vv[((size_t)j * TG + gq) * TD + c];
          att[h * TD + c] = o;
        }
      }
      double *xt = x + (size_t)t * TE;
      mv(w->wo[l], att, tmp, TE, TH * TD, NULL);
      for (int j = 0; j < TE; j++)
        xt[j] += tmp[j];
      rmsn(xt, w->fnorm[l], xn, TE, 1e-6);
      mv(w->wg[l], xn, g, TF, TE, NULL);
      mv(w->wu[l], xn, u, TF, TE, NULL);
      for (int j = 0; j < TF; j++)
        g[j] = g[j] / (1 + exp(-g[j])) * u[j];
      mv(w->wd[l], g, tmp, TE, TF, NULL);
      for (int j = 0; j < TE; j++)
        xt[j] += tmp[j];
    }
  }
  for (int t = 0; t < n; t++) {
    rmsn(x + (size_t)t * TE, w->onorm, xn, TE, 1e-6);
    mv(tied ? w->embd : w->out, xn, logits + (size_t)t * TV, TV, TE, NULL);
  }
  free(x), free(xn), free(K), free(Vv), free(Q), free(att), free(sc), free(g), free(u), free(tmp);
}

static void test_tiny_model(void) {
  tw w;
  tw_make(&w);
  enum { N = 12 };
  kvs_token ids[N];
  unsigned long long st = 9;
  for (int i = 0; i < N; i++)
    ids[i] = (kvs_token)(kvs_test_rand(&st) % TV); /* most ids above 65535 */
  double *ref = malloc((size_t)N * TV * sizeof *ref), *alt = malloc((size_t)N * TV * sizeof *alt);
  float *lg = malloc((size_t)N * TV * sizeof *lg);
  for (int tied = 0; tied <= 1; tied++) {
    char *path = write_tiny(&w, tied);
    kvs_model *m = NULL;
    kvs_err e = kvs_model_load(path, &m);
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(e, KVS_OK);
    const kvs_model_cfg *c = kvs_model_config(m);
    CU_ASSERT_EQUAL(c->qkv_bias, 1);
    CU_ASSERT_EQUAL(c->rope_type, KVS_ROPE_NEOX);
    CU_ASSERT_EQUAL(c->head_dim, TD);
    CU_ASSERT_EQUAL(c->n_kv_heads, TG);
    CU_ASSERT_EQUAL(c->rope_theta, 1e6f);
    CU_ASSERT_EQUAL(kvs_model_layout(m).rope_type, KVS_ROPE_NEOX);
    kvs_seq *s;
    CU_ASSERT_EQUAL_FATAL(kvs_seq_create(m, N, &s), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_model_prefill(m, s, ids, N, 1, lg), KVS_OK);
    reference(&w, tied, ids, N, 1, 1, ref);
    double err = 0, d_nobias = 0, d_norm = 0;
    for (size_t i = 0; i < (size_t)N * TV; i++)
      err = fmax(err, fabs(lg[i] - ref[i]));
    reference(&w, tied, ids, N, 0, 1, alt);
    for (size_t i = 0; i < (size_t)N * TV; i++)
      d_nobias = fmax(d_nobias, fabs(alt[i] - ref[i]));
    reference(&w, tied, ids, N, 1, 0, alt);
    for (size_t i = 0; i < (size_t)N * TV; i++)
      d_norm = fmax(d_norm, fabs(alt[i] - ref[i]));
    /* one-token decode step (the fp16 matvec path) after N-1 tokens */
    kvs_seq *s2;
    float *last = malloc(TV * sizeof *last);
    CU_ASSERT_EQUAL_FATAL(kvs_seq_create(m, N, &s2), KVS_OK);
    CU_ASSERT_EQUAL(kvs_model_prefill(m, s2, ids, N - 1, 0, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_model_prefill(m, s2, ids + N - 1, 1, 0, last), KVS_OK);
    double err1 = 0;
    for (size_t i = 0; i < TV; i++)
      err1 = fmax(err1, fabs(last[i] - ref[(size_t)(N - 1) * TV + i]));
    printf("\n  %s output: max |logit - naive double| %.2e (decode step %.2e); without biases the"
           " naive logits move by %.2f, with NORM pairs by %.2f",
           tied ? "tied" : "untied", err, err1, d_nobias, d_norm);
    /* K and V pass through the fp16 cache; logits are O(1) */
    CU_ASSERT(err < 1e-2);
    CU_ASSERT(err1 < 1e-2);
    CU_ASSERT(d_nobias > 0.1);
    CU_ASSERT(d_norm > 0.1);
    free(last);
    kvs_seq_free(s2);
    kvs_seq_free(s);
    kvs_model_free(m);
  }
  printf("\n");
  free(ref), free(alt), free(lg);
  tw_free(&w);
}

static int init(void) {
  g_vocab = unzstd("tests/model/fixtures/qwen2_vocab.gguf.zst", &g_vocab_n);
  kvs_err e =
      g_vocab ? kvs_gguf_open_mem(g_vocab, (g_vocab_n + 31) & ~(size_t)31, &g_gguf) : KVS_ENOENT;
  if (!e) e = kvs_tok_create(g_gguf, &g_tok);
  if (e) fprintf(stderr, "qwen2 vocabulary fixture: %s\n", kvs_errname(e));
  return e != KVS_OK;
}
static int clean(void) {
  kvs_tok_free(g_tok);
  kvs_gguf_free(g_gguf);
  free(g_vocab);
  return 0;
}

int main(void) {
  static const kvs_test_case cases[] = {{"Q4_K and Q5_K blocks", test_q4_k_q5_k},
                                        {"Q6_K blocks", test_q6_k},
                                        {"Q5_0 and Q5_1 blocks", test_q5_0_q5_1},
                                        {"qwen2 pre-tokenizer vs llama.cpp", test_tokenizer},
                                        {"prompts and ChatML", test_prompts_chatml},
                                        {"tiny qwen2 GGUF vs naive forward", test_tiny_model},
                                        {NULL, NULL}};
  return kvs_test_run_fixture("model_qwen2", cases, init, clean);
}
