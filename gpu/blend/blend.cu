#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kvs_gpu_blend.h"
#include "kvs_gpu_int.h"
#include <string.h>

#define KVS_MAX_PAIRS 512

struct rope_args {
  float table[2 * KVS_MAX_PAIRS];
};

/* One thread per (token, head, pair). The table is a kernel argument
 * (constant bank), shared by every thread. Rounding matches the CPU twin:
 * load to f32, rotate in f32, round once to the storage type. */
template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
__global__ void rope_shift_kernel(T *k, uint32_t n_tokens, uint32_t heads, uint32_t head_dim,
                                  uint32_t half, int neox, size_t stride, rope_args a) {
  size_t gid = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  size_t total = (size_t)n_tokens * heads * half;
  if (gid >= total) return;
  uint32_t i = gid % half;
  size_t th = gid / half;
  uint32_t h = th % heads;
  size_t t = th / heads;
  size_t base = t * stride + (size_t)h * head_dim;
  uint32_t ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
  float x0 = to_f<T>(k[base + ia]), x1 = to_f<T>(k[base + ib]);
  float c = a.table[2 * i], s = a.table[2 * i + 1];
  /* fmaf off: the CPU twin computes x0*c - x1*s with separate roundings */
  float y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  float y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  k[base + ia] = from_f<T>(y0);
  k[base + ib] = from_f<T>(y1);
}

extern "C" kvs_err kvs_gpu_rope_shift(const kvs_layout *l, void *d_k, uint32_t n_tokens,
                                      size_t stride, const float *table, void *stream) {
  if (!l || !table) return KVS_EINVAL;
  KVS_TRY(kvs_layout_validate(l));
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  uint32_t half = l->rope_dims / 2;
  if (half == 0 || half > KVS_MAX_PAIRS) return KVS_ELAYOUT;
  if (stride < (size_t)l->n_kv_heads * l->head_dim) return KVS_EINVAL;
  if (n_tokens == 0) return KVS_OK;
  rope_args a;
  memcpy(a.table, table, sizeof(float) * 2 * half);
  size_t total = (size_t)n_tokens * l->n_kv_heads * half;
  unsigned threads = 256, blocks = (unsigned)((total + threads - 1) / threads);
  int neox = l->rope_type == KVS_ROPE_NEOX;
  cudaStream_t st = (cudaStream_t)stream;
  if (l->dtype == KVS_DTYPE_F16)
    rope_shift_kernel<__half><<<blocks, threads, 0, st>>>((__half *)d_k, n_tokens, l->n_kv_heads,
                                                          l->head_dim, half, neox, stride, a);
  else if (l->dtype == KVS_DTYPE_BF16)
    rope_shift_kernel<__nv_bfloat16><<<blocks, threads, 0, st>>>(
        (__nv_bfloat16 *)d_k, n_tokens, l->n_kv_heads, l->head_dim, half, neox, stride, a);
  else
    return KVS_ENOTSUP;
  KVS_CUDA_TRY(cudaGetLastError());
  return KVS_OK;
}

/* One block per token; threads stride over heads*dims, then a tree reduction
 * in shared memory. The CPU twin sums sequentially, so floats agree within
 * a stated relative tolerance, not bit for bit. */
__global__ void deviation_kernel(const __half *ka, const __half *va, const __half *kb,
                                 const __half *vb, size_t w, float *dev) {
  __shared__ float part[256];
  size_t t = blockIdx.x;
  float s = 0;
  for (size_t j = threadIdx.x; j < w; j += blockDim.x) {
    float dk = __half2float(ka[t * w + j]) - __half2float(kb[t * w + j]);
    float dv = __half2float(va[t * w + j]) - __half2float(vb[t * w + j]);
    s += dk * dk + dv * dv;
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (unsigned o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) dev[t] = part[0];
}

extern "C" kvs_err kvs_gpu_blend_deviation_f16(const kvs_layout *l, uint32_t n, const kvs_f16 *ka,
                                               const kvs_f16 *va, const kvs_f16 *kb,
                                               const kvs_f16 *vb, float *dev, void *stream) {
  if (!l || !dev) return KVS_EINVAL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (n == 0) return KVS_OK;
  size_t w = (size_t)l->n_kv_heads * l->head_dim;
  deviation_kernel<<<n, 256, 0, (cudaStream_t)stream>>>(
      (const __half *)ka, (const __half *)va, (const __half *)kb, (const __half *)vb, w, dev);
  KVS_CUDA_TRY(cudaGetLastError());
  return KVS_OK;
}

__global__ void gather_rows_kernel(float *dst, const float *src, const uint32_t *rows,
                                   size_t width) {
  const float *s = src + (size_t)rows[blockIdx.x] * width;
  float *d = dst + (size_t)blockIdx.x * width;
  for (size_t j = threadIdx.x; j < width; j += blockDim.x)
    d[j] = s[j];
}

extern "C" kvs_err kvs_gpu_gather_rows_f32(float *dst, const float *src, const uint32_t *rows,
                                           uint32_t n, size_t width, void *stream) {
  if ((!dst || !src || !rows) && n) return KVS_EINVAL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (n == 0) return KVS_OK;
  uint32_t *d_rows = NULL;
  cudaStream_t st = (cudaStream_t)stream;
  KVS_CUDA_TRY(cudaMalloc(&d_rows, n * sizeof *d_rows));
  cudaError_t e = cudaMemcpyAsync(d_rows, rows, n * sizeof *d_rows, cudaMemcpyHostToDevice, st);
  if (e == cudaSuccess) {
    gather_rows_kernel<<<n, 256, 0, st>>>(dst, src, d_rows, width);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  cudaFree(d_rows);
  if (e != cudaSuccess) return kvs__cuda_err(e, __FILE__, __LINE__, "gather_rows");
  return KVS_OK;
}
