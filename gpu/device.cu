#include <stdio.h>
#include <stdlib.h>
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

extern "C" kvs_err kvs_gpu_alloc(void **p, size_t n) {
  if (!p) return KVS_EINVAL;
  *p = NULL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  KVS_CUDA_TRY(cudaMalloc(p, n ? n : 1));
  return KVS_OK;
}
extern "C" void kvs_gpu_free(void *p) {
  if (p) cudaFree(p);
}
extern "C" kvs_err kvs_gpu_alloc_host(void **p, size_t n) {
  if (!p) return KVS_EINVAL;
  *p = NULL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  KVS_CUDA_TRY(cudaMallocHost(p, n ? n : 1));
  return KVS_OK;
}
extern "C" void kvs_gpu_free_host(void *p) {
  if (p) cudaFreeHost(p);
}
extern "C" kvs_err kvs_gpu_host_register(const void *p, size_t n, int read_only) {
  if (!p || !n) return KVS_EINVAL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  unsigned flags = cudaHostRegisterPortable | (read_only ? cudaHostRegisterReadOnly : 0u);
  KVS_CUDA_TRY(cudaHostRegister(const_cast<void *>(p), n, flags));
  return KVS_OK;
}
extern "C" void kvs_gpu_host_unregister(const void *p) {
  if (p) cudaHostUnregister(const_cast<void *>(p));
}
extern "C" kvs_err kvs_gpu_memset(void *p, int v, size_t n) {
  KVS_CUDA_TRY(cudaMemset(p, v, n));
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_copy_h2d(void *d, const void *s, size_t n, void *st) {
  KVS_CUDA_TRY(cudaMemcpyAsync(d, s, n, cudaMemcpyHostToDevice, (cudaStream_t)st));
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_copy_d2h(void *d, const void *s, size_t n, void *st) {
  KVS_CUDA_TRY(cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToHost, (cudaStream_t)st));
  KVS_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)st));
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_copy_d2d(void *d, const void *s, size_t n, void *st) {
  KVS_CUDA_TRY(cudaMemcpyAsync(d, s, n, cudaMemcpyDeviceToDevice, (cudaStream_t)st));
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_sync(void *st) {
  if (st)
    KVS_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)st));
  else
    KVS_CUDA_TRY(cudaDeviceSynchronize());
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_stream_create(void **st) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  cudaStream_t s;
  KVS_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *st = (void *)s;
  return KVS_OK;
}
extern "C" void kvs_gpu_stream_free(void *st) {
  if (st) cudaStreamDestroy((cudaStream_t)st);
}
struct kvs_gpu_timer {
  cudaEvent_t a, b;
};
extern "C" kvs_err kvs_gpu_timer_create(kvs_gpu_timer **t) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  kvs_gpu_timer *x = (kvs_gpu_timer *)calloc(1, sizeof *x);
  if (!x) return KVS_ENOMEM;
  if (cudaEventCreate(&x->a) != cudaSuccess || cudaEventCreate(&x->b) != cudaSuccess) {
    free(x);
    return KVS_ECUDA;
  }
  *t = x;
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_timer_start(kvs_gpu_timer *t, void *st) {
  KVS_CUDA_TRY(cudaEventRecord(t->a, (cudaStream_t)st));
  return KVS_OK;
}
extern "C" kvs_err kvs_gpu_timer_stop_ms(kvs_gpu_timer *t, void *st, float *ms) {
  KVS_CUDA_TRY(cudaEventRecord(t->b, (cudaStream_t)st));
  KVS_CUDA_TRY(cudaEventSynchronize(t->b));
  KVS_CUDA_TRY(cudaEventElapsedTime(ms, t->a, t->b));
  return KVS_OK;
}
extern "C" void kvs_gpu_timer_free(kvs_gpu_timer *t) {
  if (!t) return;
  cudaEventDestroy(t->a);
  cudaEventDestroy(t->b);
  free(t);
}
