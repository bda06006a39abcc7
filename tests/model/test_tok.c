/* Tokenizer: ids equal llama.cpp's on every MuSiQue passage and question
 * (fixture made by tools/llamacpp/make_fixtures.py), on the fixture prompts,
 * and decode(encode(x)) == x. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "kvs_model.h"
#include "kvs_test.h"

static kvs_gguf *g_gguf;
static kvs_tok *g_tok;

static uint32_t rd32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* Compares one text; prints the first difference. Returns 1 when equal. */
static int check_text(const char *text, uint32_t len, int special, const int32_t *want,
                      uint32_t n_want, int verbose) {
  size_t cap = kvs_tok_bound(len) + 1, n = 0;
  kvs_token *ids = malloc(cap * sizeof *ids);
  kvs_err e = kvs_tok_encode(g_tok, text, len, special, 0, ids, cap, &n);
  int ok = e == KVS_OK && n == n_want && !memcmp(ids, want, n * sizeof *ids);
  if (!ok && verbose) {
    size_t i = 0;
    while (i < n && i < n_want && ids[i] == want[i])
      i++;
    size_t pl, wl;
    const char *p = i < n ? kvs_tok_piece(g_tok, ids[i], &pl) : "";
    const char *w = i < n_want ? kvs_tok_piece(g_tok, want[i], &wl) : "";
    printf("\n  mismatch at %zu of %u/%zu: ours %d '%.*s' llama.cpp %d '%.*s'\n", i, n_want, n,
           i < n ? ids[i] : -1, (int)(i < n ? pl : 0), p, i < n_want ? want[i] : -1,
           (int)(i < n_want ? wl : 0), w);
  }
  /* decoding gives the text back */
  if (e == KVS_OK) {
    char *back = malloc(len + 64);
    size_t bl;
    CU_ASSERT_EQUAL_FATAL(kvs_tok_decode(g_tok, ids, n, back, len + 64, &bl), KVS_OK);
    CU_ASSERT(bl == len && !memcmp(back, text, len));
    free(back);
  }
  free(ids);
  return ok;
}

/* Records { u32 flags | u32 len | text | u32 n | n x u16 ids } (zstd):
 * every text must tokenize to llama.cpp's ids. */
static void check_tok_fixture(const char *rel, const char *what, size_t want_texts) {
  size_t zn;
  uint8_t *z = kvs_test_read_file(kvs_test_src_path(rel), &zn);
  CU_ASSERT_PTR_NOT_NULL_FATAL(z);
  unsigned long long rn = ZSTD_getFrameContentSize(z, zn);
  CU_ASSERT_FATAL(rn != ZSTD_CONTENTSIZE_ERROR && rn != ZSTD_CONTENTSIZE_UNKNOWN);
  uint8_t *raw = malloc(rn);
  CU_ASSERT_FATAL(ZSTD_decompress(raw, rn, z, zn) == rn);
  free(z);
  size_t off = 0, texts = 0, equal = 0, tokens = 0;
  int32_t *want = malloc(1 << 20);
  while (off + 8 <= rn) {
    uint32_t flags = rd32(raw + off), len = rd32(raw + off + 4);
    const char *text = (const char *)raw + off + 8;
    off += 8 + len;
    uint32_t n = rd32(raw + off);
    for (uint32_t i = 0; i < n; i++) {
      uint16_t v;
      memcpy(&v, raw + off + 4 + 2 * i, 2);
      want[i] = v;
    }
    off += 4 + 2 * (size_t)n;
    texts++;
    tokens += n;
    equal += (size_t)check_text(text, len, flags & 1, want, n, texts - equal <= 3);
  }
  printf("\n  %s: %zu/%zu texts tokenized as llama.cpp does (%zu tokens)\n", what, equal, texts,
         tokens);
  CU_ASSERT_EQUAL(texts, want_texts);
  CU_ASSERT_EQUAL(equal, texts);
  free(want);
  free(raw);
}

static void test_musique_all(void) {
  check_tok_fixture("tests/model/fixtures/musique_tok.bin.zst", "musique", 1650);
}

static void test_tricky(void) {
  check_tok_fixture("tests/model/fixtures/tricky_tok.bin.zst", "edge cases", 400);
}

static void test_fixture_prompts(void) {
  size_t pn, ln;
  uint8_t *p = kvs_test_read_file(kvs_test_src_path("tests/model/fixtures/prompts.dat"), &pn);
  uint8_t *l = kvs_test_read_file(kvs_test_src_path("tests/model/fixtures/logits_top8.dat"), &ln);
  CU_ASSERT_FATAL(p && l);
  size_t po = 0, lo = 0, k = 0;
  while (po + 8 <= pn) {
    uint32_t flags = rd32(p + po), len = rd32(p + po + 4);
    uint32_t n = rd32(l + lo);
    CU_ASSERT(
        check_text((const char *)p + po + 8, len, flags & 1, (const int32_t *)(l + lo + 4), n, 1));
    po += 8 + len;
    lo += 4 + 4 * (size_t)n + 64 * (size_t)n;
    k++;
  }
  CU_ASSERT_EQUAL(k, 5);
  free(p);
  free(l);
}

static void test_special_and_chat(void) {
  kvs_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
  char buf[256];
  size_t n;
  CU_ASSERT_EQUAL(kvs_chat_format(msgs, 2, 1, buf, sizeof buf, &n), KVS_OK);
  CU_ASSERT_STRING_EQUAL(buf,
                         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                         "<|im_start|>assistant\n");
  CU_ASSERT_EQUAL(n, strlen(buf));
  char small[8];
  CU_ASSERT_EQUAL(kvs_chat_format(msgs, 2, 1, small, sizeof small, &n), KVS_ERANGE);
  CU_ASSERT_EQUAL(n, strlen(buf));
  kvs_token ims = kvs_tok_find(g_tok, "<|im_start|>"), ime = kvs_tok_find(g_tok, "<|im_end|>");
  CU_ASSERT(ims > 0 && ime > 0 && ims != ime);
  kvs_token ids[64];
  size_t ni;
  CU_ASSERT_EQUAL(kvs_tok_encode(g_tok, buf, strlen(buf), 1, 1, ids, 64, &ni), KVS_OK);
  CU_ASSERT_EQUAL(ids[0], ims); /* no BOS: SmolLM2 says add_bos_token = false */
  size_t n_ims = 0;
  for (size_t i = 0; i < ni; i++)
    n_ims += ids[i] == ims;
  CU_ASSERT_EQUAL(n_ims, 3);
  /* without parse_special the markers are plain text */
  size_t nplain;
  CU_ASSERT_EQUAL(kvs_tok_encode(g_tok, buf, strlen(buf), 0, 0, ids, 64, &nplain), KVS_OK);
  CU_ASSERT(nplain > ni);
  for (size_t i = 0; i < nplain; i++)
    CU_ASSERT(ids[i] != ims);
  /* cap too small reports the needed size */
  size_t need;
  CU_ASSERT_EQUAL(kvs_tok_encode(g_tok, buf, strlen(buf), 1, 0, ids, 2, &need), KVS_ERANGE);
  CU_ASSERT_EQUAL(need, ni);
  /* invalid UTF-8 does not crash and decodes to replacement characters */
  const char bad[] = "ab\xff\xfe cd \xe2\x82";
  CU_ASSERT_EQUAL(kvs_tok_encode(g_tok, bad, sizeof bad - 1, 0, 0, ids, 64, &ni), KVS_OK);
  CU_ASSERT(ni > 0 && ni <= kvs_tok_bound(sizeof bad - 1));
  const char junk[] = "\xff\xfe\xfd\x80\x81";
  CU_ASSERT_EQUAL(kvs_tok_encode(g_tok, junk, 5, 0, 1, ids, 64, &ni), KVS_OK);
  CU_ASSERT(ni <= kvs_tok_bound(5));
}

static int init(void) {
  const char *p = kvs_test_model_path();
  if (kvs_gguf_open(p, &g_gguf) != KVS_OK) return 1;
  return kvs_tok_create(g_gguf, &g_tok) != KVS_OK;
}
static int clean(void) {
  kvs_tok_free(g_tok);
  kvs_gguf_free(g_gguf);
  return 0;
}

int main(void) {
  if (!kvs_test_model_path()) {
    printf("model not fetched: skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {{"fixture prompts", test_fixture_prompts},
                                        {"special tokens and ChatML", test_special_and_chat},
                                        {"all MuSiQue passages vs llama.cpp", test_musique_all},
                                        {"Unicode edge cases vs llama.cpp", test_tricky},
                                        {NULL, NULL}};
  return kvs_test_run_fixture("model_tok", cases, init, clean);
}
