/* kvs_gpu_int.h - private to gpu/: mapping CUDA errors into kvs_err. */
#ifndef KVS_GPU_INT_H
#define KVS_GPU_INT_H
#include <cuda_runtime.h>

#include "kvs_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif
/* Logs the CUDA error with its location and returns KVS_ECUDA (or KVS_ENOMEM
 * for allocation failures, KVS_ENODEV when no device is usable). */
kvs_err kvs__cuda_err(cudaError_t e, const char *file, int line, const char *what);
#ifdef __cplusplus
}
#endif

#define KVS_CUDA_TRY(call)                                                                         \
  do {                                                                                             \
    cudaError_t kvs__e = (call);                                                                   \
    if (kvs__e != cudaSuccess) return kvs__cuda_err(kvs__e, __FILE__, __LINE__, #call);            \
  } while (0)
#endif
