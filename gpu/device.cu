#include <stdio.h>
#include <string.h>

#include "kvs_gpu_int.h"

extern "C" kvs_err kvs__cuda_err(cudaError_t e, const char *file, int line, const char *what) {
  kvs_log(KVS_LOG_ERROR, "gpu", "CUDA call failed", "err=%s where=%s:%d call=\"%s\"",
          cudaGetErrorName(e), file, line, what);
  switch (e) {
  case cudaErrorMemoryAllocation: return KVS_ENOMEM;
  case cudaErrorNoDevice:
  case cudaErrorInsufficientDriver: return KVS_ENODEV;
  default: return KVS_ECUDA;
  }
}

extern "C" int kvs_gpu_compiled(void) { return 1; }

extern "C" int kvs_gpu_device_count(void) {
  static int cached = -1;
  if (cached >= 0) return cached;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError(); /* clear the sticky error: no device is not a failure */
    n = 0;
  }
  cached = n;
  return n;
}

extern "C" kvs_err kvs_gpu_device_info(int dev, char *name, size_t len, int *ccmaj, int *ccmin) {
  if (dev < 0 || dev >= kvs_gpu_device_count()) return KVS_ENODEV;
  cudaDeviceProp p;
  KVS_CUDA_TRY(cudaGetDeviceProperties(&p, dev));
  if (name && len) snprintf(name, len, "%s", p.name);
  if (ccmaj) *ccmaj = p.major;
  if (ccmin) *ccmin = p.minor;
  return KVS_OK;
}
