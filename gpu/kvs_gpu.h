/* kvs_gpu.h - the GPU side of kvstash: device discovery and the entry points
 * of the CUDA kernels (codec decode, RoPE re-rotation, blending, the reference
 * model). Each kernel module declares its functions in its own kvs_gpu_*.h
 * beside this one.
 *
 * One binary runs with or without a GPU: when kvstash was built without CUDA,
 * or no device is present at run time, every entry point returns KVS_ENODEV
 * and callers take the CPU path. CUDA errors become kvs_err codes here. */
#ifndef KVS_GPU_H
#define KVS_GPU_H

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when kvstash was compiled with CUDA. */
int kvs_gpu_compiled(void);
/* Number of usable CUDA devices now (0 without CUDA, driver or device).
 * The answer is computed once and cached. */
int kvs_gpu_device_count(void);
/* Name and compute capability of device `dev` into name[len]. */
kvs_err kvs_gpu_device_info(int dev, char *name, size_t len, int *cc_major, int *cc_minor);

/* Plain device memory and copies, for callers that hold no CUDA headers
 * (tests, benchmarks, the client). Streams are passed as void* (a
 * cudaStream_t, NULL = the default stream). All return KVS_ENODEV without
 * CUDA or a device. kvs_gpu_free(NULL) does nothing. */
kvs_err kvs_gpu_alloc(void **dptr, size_t bytes);
void kvs_gpu_free(void *dptr);
kvs_err kvs_gpu_alloc_host(void **hptr, size_t bytes); /* pinned host memory */
void kvs_gpu_free_host(void *hptr);
/* Page-locks existing host memory (e.g. a read-only shared-memory mapping) so
 * that copies from it are DMA; the memory stays the caller's. read_only: the
 * pages are mapped PROT_READ. */
kvs_err kvs_gpu_host_register(const void *hptr, size_t bytes, int read_only);
void kvs_gpu_host_unregister(const void *hptr);
kvs_err kvs_gpu_memset(void *dptr, int value, size_t bytes);
kvs_err kvs_gpu_copy_h2d(void *dst, const void *src, size_t bytes, void *stream);
kvs_err kvs_gpu_copy_d2h(void *dst, const void *src, size_t bytes, void *stream);
/* device to device, asynchronous on stream (kvs_gpu_sync to wait) */
kvs_err kvs_gpu_copy_d2d(void *dst, const void *src, size_t bytes, void *stream);
kvs_err kvs_gpu_sync(void *stream); /* NULL: the whole device */
kvs_err kvs_gpu_stream_create(void **stream);
void kvs_gpu_stream_free(void *stream);
/* Device-side timing between two points on a stream, in milliseconds. */
typedef struct kvs_gpu_timer kvs_gpu_timer;
kvs_err kvs_gpu_timer_create(kvs_gpu_timer **t);
kvs_err kvs_gpu_timer_start(kvs_gpu_timer *t, void *stream);
kvs_err kvs_gpu_timer_stop_ms(kvs_gpu_timer *t, void *stream, float *ms);
void kvs_gpu_timer_free(kvs_gpu_timer *t);

#ifdef __cplusplus
}
#endif
#endif
