/* GPU decode against its CPU twin (codec/): for every lossy profile, shapes
 * of SmolLM2 and Llama-3-8B, contiguous, per-segment, head-range and paged
 * output; GPU encode of dense against the CPU encoder, byte for byte. Tolerance: max |gpu - cpu| <=
 * 1e-3 x RMS of the CPU output (one wrong rANS symbol or code moves an element by a quantizer step,
 * 0.1-1 x RMS, so this also proves the symbols equal); NaN positions equal; guard bytes around
 * every output untouched. Bit-exact element counts are printed. Skips (77) without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu_codec.h"
#include "kvs_synth.h"
#include "kvs_test.h"

#ifdef KVS_HAVE_CUDA
#include <cuda_runtime.h>

#define GUARD 4096
#define CK(x) CU_ASSERT_EQUAL_FATAL((x), cudaSuccess)

static kvs_layout lay(uint32_t L, uint32_t H, uint32_t D, uint32_t dtype) {
  kvs_layout l = {.n_layers = L,
                  .n_kv_heads = H,
                  .head_dim = D,
                  .dtype = dtype,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_dims = D,
                  .rope_theta = 10000.0f,
                  .rope_freq_scale = 1.0f};
  return l;
}

/* device buffer of n bytes between two guard zones of 0xa5 */
static uint8_t *dalloc_guarded(size_t n) {
  uint8_t *d = NULL;
  if (cudaMalloc((void **)&d, n + 2 * GUARD) != cudaSuccess) return NULL;
  cudaMemset(d, 0xa5, n + 2 * GUARD);
  return d + GUARD;
}

static int guards_ok(uint8_t *d, size_t n) {
  uint8_t *h = malloc(n + 2 * GUARD);
  cudaMemcpy(h, d - GUARD, n + 2 * GUARD, cudaMemcpyDeviceToHost);
  int ok = 1;
  for (size_t i = 0; i < GUARD; i++)
    ok &= h[i] == 0xa5 && h[GUARD + n + i] == 0xa5;
  free(h);
  return ok;
}

/* compares f16 outputs: 1 when within tolerance; counts exact matches */
static int compare(const uint16_t *cpu, const uint16_t *gpu, size_t n, const char *what) {
  double ss = 0, maxd = 0;
  size_t exact = 0, nan_mismatch = 0;
  for (size_t i = 0; i < n; i++) {
    float a = kvs_f16_to_f32(cpu[i]), b = kvs_f16_to_f32(gpu[i]);
    if (isnan(a) != isnan(b)) nan_mismatch++;
    if (isnan(a) || isnan(b)) continue;
    ss += (double)a * a;
    double d = fabs((double)a - b);
    if (d > maxd) maxd = d;
    exact += cpu[i] == gpu[i];
  }
  double rms = sqrt(ss / (n ? n : 1)), norm = maxd / (rms > 0 ? rms : 1);
  printf("  %-34s exact %zu/%zu  max|d|/rms %.3g  nan mismatches %zu\n", what, exact, n, norm,
         nan_mismatch);
  return norm <= 1e-3 && nan_mismatch == 0;
}

static void one(int profile, const kvs_layout *l, uint32_t T, uint32_t lpg, uint32_t kf,
                uint32_t vf) {
  size_t ne = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
  uint16_t *kv = malloc(ne * 2), *ref = malloc(ne * 2), *got = malloc(ne * 2);
  kvs_synth_kv(l, T, 5 + T, kv);
  kvs_codec_params p;
  kvs_codec_params_default(profile, l->n_layers, &p);
  p.layers_per_group = lpg;
  if (profile == KVS_PROFILE_DENSE) p.k_flags = kf, p.v_flags = vf;
  size_t cap = kvs_codec_encode_bound(&p, l, T), len;
  uint8_t *b = malloc(cap);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, l, T, kv, b, cap, &len), KVS_OK);
  kvs_codec_info info;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_verify(b, len, &info), KVS_OK);
  kvs_codec_out co = kvs_codec_out_contiguous(ref, ne * 2, KVS_DTYPE_F16);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_decode(b, len, &co, NULL, 0), KVS_OK);
  char what[128];
  snprintf(what, sizeof what, "%s L%u H%u D%u T%u k%u v%u", kvs_codec_profile_name(profile),
           l->n_layers, l->n_kv_heads, l->head_dim, T, kf, vf);

  uint8_t *db = NULL, *ws = NULL;
  CK(cudaMalloc((void **)&db, len));
  CK(cudaMemcpy(db, b, len, cudaMemcpyHostToDevice));
  size_t wsn = kvs_gpu_codec_workspace_bound(&info);
  CK(cudaMalloc((void **)&ws, wsn));
  CU_ASSERT_EQUAL(kvs_gpu_codec_workspace_init(ws, NULL), KVS_OK);
  /* whole chunk, contiguous */
  uint8_t *dout = dalloc_guarded(ne * 2);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout);
  kvs_codec_out go = kvs_codec_out_contiguous(dout, ne * 2, KVS_DTYPE_F16);
  CU_ASSERT_EQUAL(kvs_gpu_codec_decode(&info, db, &go, ws, wsn, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs_gpu_codec_status(ws, NULL), KVS_OK);
  CK(cudaMemcpy(got, dout, ne * 2, cudaMemcpyDeviceToHost));
  CU_ASSERT(compare(ref, got, ne, what));
  CU_ASSERT(guards_ok(dout, ne * 2));
  /* segment by segment, as they arrive */
  CK(cudaMemset(dout, 0, ne * 2));
  for (uint32_t g = 0; g < info.n_segments; g++) {
    CU_ASSERT_EQUAL(
        kvs_gpu_codec_decode_segment(&info, g, db + info.seg_offset[g], &go, ws, wsn, NULL),
        KVS_OK);
    CU_ASSERT_EQUAL(kvs_gpu_codec_status(ws, NULL), KVS_OK); /* each call resets it */
  }
  uint16_t *got2 = malloc(ne * 2);
  CK(cudaMemcpy(got2, dout, ne * 2, cudaMemcpyDeviceToHost));
  CU_ASSERT_EQUAL(memcmp(got, got2, ne * 2), 0);
  CU_ASSERT(guards_ok(dout, ne * 2));
  /* the last head only, against the CPU's head-range decode */
  uint32_t H = l->n_kv_heads;
  if (H > 1) {
    size_t nh = ne / H;
    uint16_t *cref = malloc(nh * 2), *cgot = malloc(nh * 2);
    kvs_codec_out ch = kvs_codec_out_contiguous(cref, nh * 2, KVS_DTYPE_F16);
    ch.head_begin = H - 1;
    CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &ch, NULL, 0), KVS_OK);
    uint8_t *dh = dalloc_guarded(nh * 2);
    kvs_codec_out gh = kvs_codec_out_contiguous(dh, nh * 2, KVS_DTYPE_F16);
    gh.head_begin = H - 1;
    CU_ASSERT_EQUAL(kvs_gpu_codec_decode(&info, db, &gh, ws, wsn, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_gpu_codec_status(ws, NULL), KVS_OK);
    CK(cudaMemcpy(cgot, dh, nh * 2, cudaMemcpyDeviceToHost));
    CU_ASSERT(compare(cref, cgot, nh, "  last head"));
    CU_ASSERT(guards_ok(dh, nh * 2));
    cudaFree(dh - GUARD);
    free(cref), free(cgot);
  }
  /* paged: blocks of 16 tokens in reverse order, block 0 unused */
  {
    uint32_t bs = 16, nblk = (T + bs - 1) / bs, num_blocks = nblk + 1;
    size_t cache_b = (size_t)num_blocks * bs * H * l->head_dim * 2;
    int32_t *table = malloc(sizeof(int32_t) * nblk);
    for (uint32_t i = 0; i < nblk; i++)
      table[i] = (int32_t)(nblk - i);
    void **hk = malloc(sizeof(void *) * l->n_layers), **hv = malloc(sizeof(void *) * l->n_layers);
    void **dk = malloc(sizeof(void *) * l->n_layers), **dv = malloc(sizeof(void *) * l->n_layers);
    for (uint32_t i = 0; i < l->n_layers; i++) {
      hk[i] = malloc(cache_b), hv[i] = malloc(cache_b);
      memset(hk[i], 0, cache_b), memset(hv[i], 0, cache_b);
      dk[i] = dalloc_guarded(cache_b), dv[i] = dalloc_guarded(cache_b);
      cudaMemset(dk[i], 0, cache_b), cudaMemset(dv[i], 0, cache_b);
    }
    int32_t *dtable = NULL;
    CK(cudaMalloc((void **)&dtable, sizeof(int32_t) * nblk));
    CK(cudaMemcpy(dtable, table, sizeof(int32_t) * nblk, cudaMemcpyHostToDevice));
    kvs_codec_out cp = {.dtype = KVS_DTYPE_F16,
                        .k_cache = hk,
                        .v_cache = hv,
                        .block_table = table,
                        .block_size = bs,
                        .num_blocks = num_blocks,
                        .n_layers = l->n_layers};
    CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &cp, NULL, 0), KVS_OK);
    kvs_codec_out gp = cp;
    gp.k_cache = dk, gp.v_cache = dv, gp.block_table = dtable;
    CU_ASSERT_EQUAL(kvs_gpu_codec_decode(&info, db, &gp, ws, wsn, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_gpu_codec_status(ws, NULL), KVS_OK);
    int ok = 1;
    uint16_t *tmp = malloc(cache_b);
    for (uint32_t i = 0; i < l->n_layers; i++) {
      CK(cudaMemcpy(tmp, dk[i], cache_b, cudaMemcpyDeviceToHost));
      ok &= compare(hk[i], tmp, cache_b / 2, "  paged K (untouched slots too)");
      CK(cudaMemcpy(tmp, dv[i], cache_b, cudaMemcpyDeviceToHost));
      ok &= compare(hv[i], tmp, cache_b / 2, "  paged V (untouched slots too)");
      ok &= guards_ok(dk[i], cache_b) && guards_ok(dv[i], cache_b);
      free(hk[i]), free(hv[i]);
      cudaFree((uint8_t *)dk[i] - GUARD), cudaFree((uint8_t *)dv[i] - GUARD);
    }
    CU_ASSERT(ok);
    free(tmp), free(table), free(hk), free(hv), free(dk), free(dv);
    cudaFree(dtable);
  }
  /* a corrupted rANS word is caught by the GPU's end-of-block checks, as by
     the CPU's (given the same bytes with their checksums fixed) */
  if (profile == KVS_PROFILE_DENSE || profile == KVS_PROFILE_CACHEGEN) {
    uint64_t p0 = info.seg_offset[0] + KVS_CODEC_SEG_HEADER_BYTES;
    uint32_t pb = kvs__rd32(b + p0);
    b[p0 + pb - 8] ^= 0x5a;
    CK(cudaMemcpy(db, b, len, cudaMemcpyHostToDevice));
    CU_ASSERT_EQUAL(kvs_gpu_codec_decode(&info, db, &go, ws, wsn, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_gpu_codec_status(ws, NULL), KVS_ECORRUPT);
    uint64_t s0 = info.seg_offset[0];
    kvs__wr64(b + s0 + KVS_SH_CHECKSUM,
              kvs_checksum64(b + s0 + KVS_CODEC_SEG_HEADER_BYTES,
                             info.seg_offset[1] - s0 - KVS_CODEC_SEG_HEADER_BYTES));
    CU_ASSERT_EQUAL(kvs_codec_decode(b, len, &co, NULL, 0), KVS_ECORRUPT);
  }
  cudaFree(dout - GUARD);
  cudaFree(db), cudaFree(ws);
  free(kv), free(ref), free(got), free(got2), free(b);
}

static void test_gpu_vs_cpu(void) {
  kvs_layout smol = lay(4, 3, 64, KVS_DTYPE_F16), big = lay(2, 8, 128, KVS_DTYPE_BF16);
  static const int profiles[] = {KVS_PROFILE_INT8, KVS_PROFILE_KIVI2,    KVS_PROFILE_KIVI4,
                                 KVS_PROFILE_FP4,  KVS_PROFILE_CACHEGEN, KVS_PROFILE_DENSE};
  kvs_codec_params d;
  kvs_codec_params_default(KVS_PROFILE_DENSE, 4, &d);
  for (size_t i = 0; i < sizeof profiles / sizeof profiles[0]; i++) {
    one(profiles[i], &smol, 300, 3, d.k_flags, d.v_flags);
    one(profiles[i], &big, 257, 1, d.k_flags, d.v_flags);
  }
  /* dense with every option, rotation included (both head dims) */
  uint32_t all = KVS_DENSE_ROTATED | KVS_DENSE_CHAN | KVS_DENSE_TOKEN | KVS_DENSE_SINK;
  one(KVS_PROFILE_DENSE, &smol, 300, 2, KVS_DENSE_ROTATED | KVS_DENSE_SINK, all);
  one(KVS_PROFILE_DENSE, &big, 257, 1, all, KVS_DENSE_ROTATED);
  one(KVS_PROFILE_DENSE, &smol, 1, 4, 0, KVS_DENSE_TOKEN);
}

static void test_lossless_refused(void) {
  kvs_layout l = lay(2, 2, 64, KVS_DTYPE_F16);
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_LOSSLESS, 2, &p);
  size_t ne = 2ull * 2 * 16 * 2 * 64, cap = kvs_codec_encode_bound(&p, &l, 16), len;
  uint16_t *kv = malloc(ne * 2);
  kvs_synth_kv(&l, 16, 1, kv);
  uint8_t *b = malloc(cap);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, &l, 16, kv, b, cap, &len), KVS_OK);
  kvs_codec_info info;
  CU_ASSERT_EQUAL_FATAL(kvs_codec_parse_header(b, len, &info), KVS_OK);
  uint8_t one_byte;
  kvs_codec_out o = kvs_codec_out_contiguous(&one_byte, 1, KVS_DTYPE_F16);
  CU_ASSERT_EQUAL(kvs_gpu_codec_decode(&info, b, &o, &one_byte, 1 << 20, NULL), KVS_ENOTSUP);
  free(b), free(kv);
}

/* GPU encode of dense: the very bytes of the CPU encoder. */
static void enc_one(const kvs_layout *l, uint32_t T, uint32_t lpg, uint32_t group, uint32_t kf,
                    uint32_t vf, int spikes) {
  size_t ne = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
  uint16_t *kv = malloc(ne * 2);
  kvs_synth_kv(l, T, 11 + T, kv);
  if (spikes) { /* clipped elements (exceptions), an Inf and a NaN */
    for (size_t i = 7; i < ne; i += ne / 9 + 1)
      kv[i] = l->dtype == KVS_DTYPE_BF16 ? kvs_f32_to_bf16(3000.0f) : kvs_f32_to_f16(3000.0f);
    kv[ne / 2 + 1] = l->dtype == KVS_DTYPE_BF16 ? 0x7f80 : 0x7c00;
    kv[ne / 3 + 5] = l->dtype == KVS_DTYPE_BF16 ? 0x7fc1 : 0x7e01;
  }
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_DENSE, l->n_layers, &p);
  p.layers_per_group = lpg, p.group = group, p.k_flags = kf, p.v_flags = vf;
  p.fine_layers = 1;
  size_t cap = kvs_codec_encode_bound(&p, l, T), len = 0, glen = 0;
  uint8_t *ref = malloc(cap), *got = malloc(cap);
  CU_ASSERT_EQUAL_FATAL(kvs_codec_encode(&p, l, T, kv, ref, cap, &len), KVS_OK);
  size_t wsn = kvs_gpu_codec_encode_workspace_bound(&p, l, T);
  CU_ASSERT_FATAL(wsn > 0);
  uint8_t *d_kv = dalloc_guarded(ne * 2), *d_ws = dalloc_guarded(wsn);
  CU_ASSERT_PTR_NOT_NULL_FATAL(d_kv);
  CU_ASSERT_PTR_NOT_NULL_FATAL(d_ws);
  CK(cudaMemcpy(d_kv, kv, ne * 2, cudaMemcpyHostToDevice));
  memset(got, 0x5a, cap);
  kvs_err rc = kvs_gpu_codec_encode(&p, l, T, d_kv, got, cap, &glen, d_ws, wsn, NULL);
  CU_ASSERT_EQUAL(rc, KVS_OK);
  CU_ASSERT_EQUAL(glen, len);
  size_t first = 0;
  while (first < len && first < glen && ref[first] == got[first])
    first++;
  printf("  dense encode %ux%ux%u T=%u S=%u flags %u/%u%s: %zu bytes, %s (first difference at "
         "%zu)\n",
         l->n_layers, l->n_kv_heads, l->head_dim, T, group, kf, vf, spikes ? " spikes" : "", len,
         rc == KVS_OK && glen == len && first == len ? "identical" : "DIFFERENT", first);
  CU_ASSERT_EQUAL(first, len);
  CU_ASSERT(guards_ok(d_kv, ne * 2));
  CU_ASSERT(guards_ok(d_ws, wsn));
  /* a workspace one byte short is refused */
  CU_ASSERT_EQUAL(kvs_gpu_codec_encode(&p, l, T, d_kv, got, cap, &glen, d_ws, wsn - 1, NULL),
                  KVS_EINVAL);
  cudaFree(d_kv - GUARD), cudaFree(d_ws - GUARD);
  free(kv), free(ref), free(got);
}

static void test_dense_encode(void) {
  kvs_layout smol = lay(4, 3, 64, KVS_DTYPE_F16), big = lay(2, 8, 128, KVS_DTYPE_BF16);
  kvs_layout odd = lay(3, 2, 48, KVS_DTYPE_F16);
  kvs_codec_params d;
  kvs_codec_params_default(KVS_PROFILE_DENSE, 4, &d);
  uint32_t all = KVS_DENSE_FLAGS_ALL;
  enc_one(&smol, 300, 3, 256, d.k_flags, d.v_flags, 0);
  enc_one(&big, 257, 1, 256, d.k_flags, d.v_flags, 0);
  enc_one(&big, 1024, 2, 256, d.k_flags, d.v_flags, 1);
  enc_one(&smol, 300, 2, 7, KVS_DENSE_ROTATED | KVS_DENSE_SINK, all, 1);
  enc_one(&big, 257, 1, 256, all, KVS_DENSE_ROTATED, 0);
  enc_one(&smol, 1, 4, 256, 0, KVS_DENSE_TOKEN, 0);
  enc_one(&odd, 90, 1, 5, all, KVS_DENSE_CHAN, 1);
  for (uint32_t f = 0; f <= KVS_DENSE_FLAGS_ALL; f++)
    enc_one(&smol, 64, 2, 3, f, f ^ KVS_DENSE_TOKEN, f & 1);
}

static void test_encode_refused(void) {
  kvs_layout l = lay(2, 2, 64, KVS_DTYPE_F16);
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_INT8, 2, &p);
  uint8_t b[16];
  size_t len;
  CU_ASSERT_EQUAL(kvs_gpu_codec_encode_workspace_bound(&p, &l, 16), 0);
  CU_ASSERT_EQUAL(kvs_gpu_codec_encode(&p, &l, 16, b, b, sizeof b, &len, b, 1 << 20, NULL),
                  KVS_ENOTSUP);
}

static const kvs_test_case cases[] = {{"gpu_vs_cpu", test_gpu_vs_cpu},
                                      {"lossless_refused", test_lossless_refused},
                                      {"dense_encode", test_dense_encode},
                                      {"encode_refused", test_encode_refused},
                                      {NULL, NULL}};

int main(void) {
  if (kvs_gpu_device_count() == 0) {
    printf("no GPU: skipped\n");
    return KVS_TEST_SKIP;
  }
  return kvs_test_run("codec_gpu", cases);
}
#else
int main(void) {
  printf("built without CUDA: skipped\n");
  return KVS_TEST_SKIP;
}
#endif
