/* GGUF reader and dequantizers: hand-built blocks per type, the golden
 * hand-made files of corpus_gguf/ (ok_* open, bad_<ERR>_* fail with that
 * error), every prefix of a small file, and the real model truncated at many
 * points. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_model.h"
#include "kvs_test.h"

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void test_q4_0(void) {
  uint8_t blk[2 * 18];
  float out[64];
  for (int b = 0; b < 2; b++) {
    uint8_t *p = blk + 18 * b;
    put16(p, kvs_f32_to_f16(b ? -0.5f : 0.5f));
    for (int j = 0; j < 16; j++)
      p[2 + j] = (uint8_t)(j | (15 - j) << 4);
  }
  CU_ASSERT_EQUAL(kvs_ggml_row_bytes(KVS_GGML_Q4_0, 64), 36);
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_Q4_0, blk, out, 64), KVS_OK);
  for (int b = 0; b < 2; b++)
    for (int j = 0; j < 16; j++) {
      float d = b ? -0.5f : 0.5f;
      CU_ASSERT_EQUAL(out[32 * b + j], (float)(j - 8) * d);
      CU_ASSERT_EQUAL(out[32 * b + j + 16], (float)(15 - j - 8) * d);
    }
}

static void test_q4_1(void) {
  uint8_t blk[20];
  float out[32];
  put16(blk, kvs_f32_to_f16(0.25f));
  put16(blk + 2, kvs_f32_to_f16(-1.0f));
  for (int j = 0; j < 16; j++)
    blk[4 + j] = (uint8_t)((j * 7) % 16 | ((j * 3) % 16) << 4);
  CU_ASSERT_EQUAL(kvs_ggml_block_bytes(KVS_GGML_Q4_1), 20);
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_Q4_1, blk, out, 32), KVS_OK);
  for (int j = 0; j < 16; j++) {
    CU_ASSERT_EQUAL(out[j], (float)((j * 7) % 16) * 0.25f - 1.0f);
    CU_ASSERT_EQUAL(out[j + 16], (float)((j * 3) % 16) * 0.25f - 1.0f);
  }
}

static void test_q8_0(void) {
  uint8_t blk[34];
  float out[32];
  put16(blk, kvs_f32_to_f16(0.125f));
  for (int j = 0; j < 32; j++)
    blk[2 + j] = (uint8_t)(int8_t)(j * 9 - 128);
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_Q8_0, blk, out, 32), KVS_OK);
  for (int j = 0; j < 32; j++)
    CU_ASSERT_EQUAL(out[j], (float)(int8_t)(j * 9 - 128) * 0.125f);
}

static void test_float_types(void) {
  const float vals[4] = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-8f};
  uint8_t h[8], bf[8], f[16];
  float out[4];
  for (int i = 0; i < 4; i++) {
    put16(h + 2 * i, kvs_f32_to_f16(vals[i]));
    put16(bf + 2 * i, kvs_f32_to_bf16(vals[i]));
    memcpy(f + 4 * i, &vals[i], 4);
  }
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_F16, h, out, 4), KVS_OK);
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(out[i], vals[i]); /* all exact in fp16 */
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_BF16, bf, out, 4), KVS_OK);
  CU_ASSERT_EQUAL(out[0], 1.0f);
  CU_ASSERT_EQUAL(out[1], -2.5f);
  CU_ASSERT(fabsf(out[2] - 65504.0f) <= 256.0f);
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_F32, f, out, 4), KVS_OK);
  CU_ASSERT(!memcmp(out, vals, sizeof vals));
  /* refusals */
  CU_ASSERT_EQUAL(kvs_dequant(10 /* Q2_K */, f, out, 256), KVS_ENOTSUP);
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_Q4_K, f, out, 4), KVS_EINVAL); /* not whole blocks */
  CU_ASSERT_EQUAL(kvs_dequant(KVS_GGML_Q8_0, f, out, 31), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_ggml_row_bytes(KVS_GGML_Q4_1, 33), 0);
}

static int errcode(const char *name) {
  for (int e = 0; e > KVS__ERR_MIN; e--)
    if (!strcmp(kvs_errname(e), name)) return e;
  return 1;
}

static void test_golden_files(void) {
  const char *dir = kvs_test_src_path("tests/model/corpus_gguf");
  char dpath[4096];
  snprintf(dpath, sizeof dpath, "%s", dir);
  DIR *d = opendir(dpath);
  CU_ASSERT_PTR_NOT_NULL_FATAL(d);
  struct dirent *ent;
  int n_ok = 0, n_bad = 0;
  while ((ent = readdir(d))) {
    if (!strstr(ent->d_name, ".gguf")) continue;
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dpath, ent->d_name);
    kvs_gguf *g = NULL;
    kvs_err e = kvs_gguf_open(p, &g);
    if (!strncmp(ent->d_name, "ok_", 3)) {
      CU_ASSERT_EQUAL(e, KVS_OK);
      n_ok++;
    } else {
      char want[64] = "KVS_";
      const char *s = ent->d_name + 4;
      size_t l = strcspn(s, "_");
      memcpy(want + 4, s, l);
      want[4 + l] = 0;
      if (e != errcode(want)) printf("\n  %s: got %s", ent->d_name, kvs_errname(e));
      CU_ASSERT_EQUAL(e, errcode(want));
      CU_ASSERT_PTR_NULL(g);
      n_bad++;
    }
    kvs_gguf_free(g);
  }
  closedir(d);
  CU_ASSERT(n_ok >= 3 && n_bad >= 15);
}

static void test_small_contents(void) {
  size_t n;
  uint8_t *b =
      kvs_test_read_file(kvs_test_src_path("tests/model/corpus_gguf/ok_small.gguf.case"), &n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  kvs_gguf *g;
  CU_ASSERT_EQUAL_FATAL(kvs_gguf_open_mem(b, n, &g), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gguf_version(g), 3);
  uint64_t u;
  uint32_t u32;
  float f;
  int bo;
  const char *s;
  CU_ASSERT_EQUAL(kvs_gguf_get_u64(g, "t.u8", &u), KVS_OK);
  CU_ASSERT_EQUAL(u, 7);
  CU_ASSERT_EQUAL(kvs_gguf_get_u32(g, "t.u16", &u32), KVS_OK);
  CU_ASSERT_EQUAL(u32, 513);
  CU_ASSERT_EQUAL(kvs_gguf_get_u64(g, "t.i16", &u), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_gguf_get_u32(g, "t.u64", &u32), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_gguf_get_u64(g, "t.u64", &u), KVS_OK);
  CU_ASSERT_EQUAL(u, 1ull << 40);
  CU_ASSERT_EQUAL(kvs_gguf_get_f32(g, "t.f32", &f), KVS_OK);
  CU_ASSERT_EQUAL(f, 1.5f);
  CU_ASSERT_EQUAL(kvs_gguf_get_f32(g, "t.f64", &f), KVS_OK);
  CU_ASSERT_EQUAL(f, 0.25f);
  CU_ASSERT_EQUAL(kvs_gguf_get_bool(g, "t.bool", &bo), KVS_OK);
  CU_ASSERT_EQUAL(bo, 1);
  CU_ASSERT_EQUAL(kvs_gguf_get_f32(g, "t.u8", &f), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_gguf_get_u64(g, "nope", &u), KVS_ENOENT);
  CU_ASSERT_EQUAL(kvs_gguf_get_str(g, "general.architecture", &s, &u), KVS_OK);
  CU_ASSERT(u == 5 && !memcmp(s, "llama", 5));
  int32_t iv[3];
  CU_ASSERT_EQUAL(kvs_gguf_get_arr_i32(g, "t.arr_i32", iv, 3), KVS_OK);
  CU_ASSERT(iv[0] == 1 && iv[1] == -2 && iv[2] == 3);
  const char *p[2];
  uint32_t l[2], et;
  CU_ASSERT_EQUAL(kvs_gguf_get_arr(g, "t.arr_str", &et, &u), KVS_OK);
  CU_ASSERT(et == KVS_GGUF_STRING && u == 2);
  CU_ASSERT_EQUAL(kvs_gguf_get_arr_str(g, "t.arr_str", p, l, 2), KVS_OK);
  CU_ASSERT(l[0] == 2 && !memcmp(p[0], "ab", 2) && l[1] == 3 && !memcmp(p[1], "xyz", 3));
  CU_ASSERT_EQUAL(kvs_gguf_tensor_count(g), 3);
  const kvs_gguf_tensor *t = kvs_gguf_find_tensor(g, "a.q4_0");
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  CU_ASSERT(t->ne[0] == 32 && t->ne[1] == 2 && t->n_elems == 64 && t->n_bytes == 36);
  float out[64];
  CU_ASSERT_EQUAL(kvs_dequant(t->type, t->data, out, t->n_elems), KVS_OK);
  CU_ASSERT_EQUAL(out[0], -4.0f);
  CU_ASSERT_EQUAL(out[16], 3.5f);
  t = kvs_gguf_find_tensor(g, "c.f16");
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  CU_ASSERT_EQUAL(kvs_dequant(t->type, t->data, out, 4), KVS_OK);
  CU_ASSERT(out[0] == 1.0f && out[1] == -2.0f && out[3] == 65504.0f);
  CU_ASSERT_PTR_NULL(kvs_gguf_find_tensor(g, "a.q4"));
  kvs_gguf_free(g);
  /* every strict prefix fails cleanly */
  int fails = 0;
  for (size_t k = 0; k < n; k++) {
    uint8_t *c = malloc(k ? k : 1); /* exact-size copy: ASan catches any overread */
    memcpy(c, b, k);
    kvs_err e = kvs_gguf_open_mem(c, k, &g);
    fails += e != KVS_OK;
    if (e == KVS_OK) kvs_gguf_free(g);
    free(c);
  }
  CU_ASSERT_EQUAL(fails, (int)n);
  kvs_gguf_free(NULL);
  free(b);
}

static void test_real_truncated(void) {
  const char *path = kvs_test_model_path();
  if (!path) {
    printf("(model absent) ");
    return;
  }
  kvs_gguf *full;
  CU_ASSERT_EQUAL_FATAL(kvs_gguf_open(path, &full), KVS_OK);
  size_t size;
  const uint8_t *bytes = kvs_gguf_bytes(full, &size);
  uint64_t data_end = 0;
  for (uint64_t i = 0; i < kvs_gguf_tensor_count(full); i++) {
    const kvs_gguf_tensor *t = kvs_gguf_tensor_at(full, i);
    uint64_t e = (uint64_t)((const uint8_t *)t->data - bytes) + t->n_bytes;
    data_end = e > data_end ? e : data_end;
  }
  CU_ASSERT(data_end <= size);
  /* many cut points: dense in the header (metadata, vocab, tensor table), sparse in data */
  unsigned long long rs = 7;
  int n = 0, failed = 0;
  for (int i = 0; i < 400; i++) {
    size_t cut =
        i < 250 ? (size_t)(kvs_test_rand(&rs) % 1700000) : (size_t)(kvs_test_rand(&rs) % size);
    if (i < 20) cut = (size_t)i * 3;
    kvs_gguf *g = NULL;
    kvs_err e = kvs_gguf_open_mem(bytes, cut, &g);
    n++;
    if (cut < data_end) {
      failed += e != KVS_OK;
      CU_ASSERT(e == KVS_ETRUNC || e == KVS_ECORRUPT);
    }
    kvs_gguf_free(g);
  }
  printf("\n  %d cut points, %d refused (every cut before the end of tensor data)\n", n, failed);
  kvs_gguf_free(full);
}

/* Exact BPE on the tiny vocabulary of ok_tok.gguf: byte symbols are ids
 * 0-255 in byte order, then Ġw=256 or=257 ld=258 Ġwor=259 Ġworld=260,
 * <|im_start|>=261 <|im_end|>=262; merges in that order. */
static void test_tiny_tokenizer(void) {
  size_t n;
  uint8_t *b =
      kvs_test_read_file(kvs_test_src_path("tests/model/corpus_gguf/ok_tok.gguf.case"), &n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(b);
  kvs_gguf *g;
  CU_ASSERT_EQUAL_FATAL(kvs_gguf_open_mem(b, n, &g), KVS_OK);
  kvs_tok *t;
  CU_ASSERT_EQUAL_FATAL(kvs_tok_create(g, &t), KVS_OK);
  kvs_gguf_free(g); /* the tokenizer keeps its own copy */
  free(b);
  kvs_token ids[32];
  size_t k;
  /* " world" -> Ġworld; "world" has no leading space: w + or + ld */
  CU_ASSERT_EQUAL(kvs_tok_encode(t, " world", 6, 0, 0, ids, 32, &k), KVS_OK);
  CU_ASSERT(k == 1 && ids[0] == 260);
  CU_ASSERT_EQUAL(kvs_tok_encode(t, "world", 5, 0, 0, ids, 32, &k), KVS_OK);
  CU_ASSERT(k == 3 && ids[0] == 'w' && ids[1] == 257 && ids[2] == 258);
  /* digits split one by one; the special cut out with parse_special */
  CU_ASSERT_EQUAL(kvs_tok_encode(t, "<|im_start|>42 world", 20, 1, 0, ids, 32, &k), KVS_OK);
  CU_ASSERT(k == 4 && ids[0] == 261 && ids[1] == '4' && ids[2] == '2' && ids[3] == 260);
  CU_ASSERT_EQUAL(kvs_tok_encode(t, "<|im_start|>", 12, 0, 0, ids, 32, &k), KVS_OK);
  CU_ASSERT(k > 1 && ids[0] == '<');
  /* two spaces before a word: the first stands alone (\s+(?!\S)) */
  CU_ASSERT_EQUAL(kvs_tok_encode(t, "a  world", 8, 0, 0, ids, 32, &k), KVS_OK);
  CU_ASSERT(k == 3 && ids[0] == 'a' && ids[1] == ' ');
  CU_ASSERT(k == 3 && ids[2] == 260);
  char out[64];
  size_t ol;
  CU_ASSERT_EQUAL(kvs_tok_decode(t, ids, k, out, sizeof out, &ol), KVS_OK);
  CU_ASSERT_STRING_EQUAL(out, "a  world");
  CU_ASSERT_EQUAL(kvs_tok_bos(t), 261);
  CU_ASSERT_EQUAL(kvs_tok_eos(t), 262);
  kvs_tok_free(t);
  kvs_tok_free(NULL);
}

int main(void) {
  kvs_log_set_level(KVS_LOG_ERROR);
  static const kvs_test_case cases[] = {{"q4_0 blocks", test_q4_0},
                                        {"q4_1 blocks", test_q4_1},
                                        {"q8_0 blocks", test_q8_0},
                                        {"f16/bf16/f32 and refusals", test_float_types},
                                        {"golden files", test_golden_files},
                                        {"small file contents and prefixes", test_small_contents},
                                        {"real model truncated", test_real_truncated},
                                        {"tiny BPE vocabulary", test_tiny_tokenizer},
                                        {NULL, NULL}};
  return kvs_test_run("model_gguf", cases);
}
