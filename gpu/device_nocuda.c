/* Built instead of device.cu when kvstash is compiled without CUDA. */
#include "kvs_gpu.h"

int kvs_gpu_compiled(void) { return 0; }
int kvs_gpu_device_count(void) { return 0; }
kvs_err kvs_gpu_device_info(int dev, char *name, size_t len, int *ccmaj, int *ccmin) {
  (void)dev, (void)name, (void)len, (void)ccmaj, (void)ccmin;
  return KVS_ENODEV;
}
