#include <stdio.h>

#include "kvs_gpu.h"
#include "kvs_test.h"

static void test_device(void) {
  char name[256] = {0};
  int maj = 0, min = 0;
  CU_ASSERT_EQUAL(kvs_gpu_device_info(0, name, sizeof name, &maj, &min), KVS_OK);
  CU_ASSERT(maj >= 7);
  CU_ASSERT(name[0] != 0);
  printf("\n  device 0: %s (sm_%d%d)\n", name, maj, min);
  CU_ASSERT_EQUAL(kvs_gpu_device_info(-1, name, sizeof name, &maj, &min), KVS_ENODEV);
}

int main(void) {
  if (kvs_gpu_device_count() == 0) {
    printf("no CUDA device (compiled=%d): skipped\n", kvs_gpu_compiled());
    return KVS_TEST_SKIP;
  }
  static const kvs_test_case cases[] = {{"device info", test_device}, {NULL, NULL}};
  return kvs_test_run("gpu_device", cases);
}
