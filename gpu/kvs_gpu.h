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

#ifdef __cplusplus
}
#endif
#endif
