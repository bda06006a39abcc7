/* GPU kernels of blend/ against their CPU twins (label gpu; skips without a device). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_blend.h"
#include "kvs_gpu.h"
#include "kvs_gpu_blend.h"
#include "kvs_test.h"

#define GUARD 4096

static void test_rope_shift_bitexact(void) {
  uint32_t dts[2] = {KVS_DTYPE_F16, KVS_DTYPE_BF16}, types[2] = {KVS_ROPE_NORM, KVS_ROPE_NEOX};
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) {
      kvs_layout l = {.n_layers = 1,
                      .n_kv_heads = 8,
                      .head_dim = 128,
                      .dtype = dts[a],
                      .rope_type = types[b],
                      .rope_dims = 128,
                      .rope_theta = 500000.0f,
                      .rope_freq_scale = 1.0f};
      uint32_t n = 1000;
      size_t w = 8 * 128, bytes = n * w * 2;
      unsigned long long s = 1 + a + 2 * b;
      uint16_t *cpu = malloc(bytes), *gpu = malloc(bytes + 2 * GUARD);
      for (size_t i = 0; i < n * w; i++)
        cpu[i] = dts[a] == KVS_DTYPE_F16 ? kvs_f32_to_f16(3 * kvs_test_randf(&s))
                                         : kvs_f32_to_bf16(3 * kvs_test_randf(&s));
      float table[128];
      CU_ASSERT_EQUAL(kvs_rope_shift_table(&l, 7777, table), KVS_OK);
      unsigned char *d = NULL;
      CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc((void **)&d, bytes + 2 * GUARD), KVS_OK);
      memset(gpu, 0xA5, bytes + 2 * GUARD);
      memcpy((char *)gpu + GUARD, cpu, bytes);
      CU_ASSERT_EQUAL(kvs_gpu_copy_h2d(d, gpu, bytes + 2 * GUARD, NULL), KVS_OK);
      CU_ASSERT_EQUAL(kvs_gpu_rope_shift(&l, d + GUARD, n, w, table, NULL), KVS_OK);
      CU_ASSERT_EQUAL(kvs_rope_shift(&l, cpu, n, w, table), KVS_OK);
      CU_ASSERT_EQUAL(kvs_gpu_copy_d2h(gpu, d, bytes + 2 * GUARD, NULL), KVS_OK);
      CU_ASSERT(memcmp((char *)gpu + GUARD, cpu, bytes) == 0); /* bit for bit */
      int guards_ok = 1;
      for (size_t i = 0; i < GUARD; i++)
        guards_ok &=
            ((unsigned char *)gpu)[i] == 0xA5 && ((unsigned char *)gpu)[GUARD + bytes + i] == 0xA5;
      CU_ASSERT(guards_ok);
      kvs_gpu_free(d);
      free(cpu), free(gpu);
    }
}

static void test_deviation(void) {
  kvs_layout l = {.n_layers = 1,
                  .n_kv_heads = 3,
                  .head_dim = 64,
                  .dtype = KVS_DTYPE_F16,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_dims = 64,
                  .rope_theta = 1e5f,
                  .rope_freq_scale = 1.0f};
  uint32_t n = 777;
  size_t w = 192, e = n * w;
  unsigned long long s = 9;
  kvs_f16 *h = malloc(4 * e * 2);
  for (size_t i = 0; i < 4 * e; i++)
    h[i] = kvs_f32_to_f16(kvs_test_randf(&s));
  float *cpu = malloc(n * 4), *gpu = malloc(n * 4);
  CU_ASSERT_EQUAL(kvs_blend_deviation_f16(&l, n, h, h + e, h + 2 * e, h + 3 * e, cpu), KVS_OK);
  kvs_f16 *d = NULL;
  float *dd = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc((void **)&d, 4 * e * 2), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(kvs_gpu_alloc((void **)&dd, n * 4), KVS_OK);
  kvs_gpu_copy_h2d(d, h, 4 * e * 2, NULL);
  CU_ASSERT_EQUAL(kvs_gpu_blend_deviation_f16(&l, n, d, d + e, d + 2 * e, d + 3 * e, dd, NULL),
                  KVS_OK);
  kvs_gpu_copy_d2h(gpu, dd, n * 4, NULL);
  double worst = 0;
  for (uint32_t t = 0; t < n; t++)
    worst = fmax(worst, fabs(gpu[t] - cpu[t]) / fmax(cpu[t], 1e-6));
  printf("\n  deviation max relative error GPU vs CPU: %.2e (tolerance 1e-4)\n", worst);
  CU_ASSERT(worst < 1e-4);
  kvs_gpu_free(d), kvs_gpu_free(dd);
  free(h), free(cpu), free(gpu);
}

int main(void) {
  if (kvs_gpu_device_count() == 0) {
    printf("no CUDA device: skipped\n");
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {
      {"rope shift bit-exact vs CPU twin", test_rope_shift_bitexact},
      {"deviation vs CPU twin", test_deviation},
      {NULL, NULL}};
  return kvs_test_run("gpu_blend", cases);
}
