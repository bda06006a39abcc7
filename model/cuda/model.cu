/* model.cu - the reference model's forward pass on the GPU (see kvs_gpu_model.h).
 *
 * Device buffers (E = n_embd, H/G heads/kv heads, D head_dim, F n_ff, T max tokens):
 *   weights fp16: embd (V, E); per layer wqkv (H*D + 2*G*D, E) = [wq; wk; wv],
 *   wo (E, H*D), wgu (2F, E) = [gate; up], wdown (E, F); output (V, E) (may
 *   alias embd); norms f32 (E).
 *   kv fp16: (L, 2, cap, G, D).  activations: x f32 (T, E) residual, xn fp16
 *   (T, E), qkv f32 (T, H*D + 2*G*D), q fp16 (T, H, D), att fp16 (T, H*D),
 *   gu fp16 (T, 2F), act fp16 (T, F). */
#include <cublas_v2.h>
#include <cuda_fp16.h>

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu_int.h"
#include "kvs_gpu_model.h"
#include "model_int.h"
#include "model_rand.h"

#define CUBLAS_TRY(call)                                                                           \
  do {                                                                                             \
    cublasStatus_t s_ = (call);                                                                    \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                             \
      KVS_LOGE("gpu", "cublas failed", "status=%d what=\"%s\"", (int)s_, #call);                   \
      return KVS_ECUDA;                                                                            \
    }                                                                                              \
  } while (0)

/* ------------------------------------------------------------- kernels */
__global__ void k_embed(const half *__restrict__ emb, const int *__restrict__ tok,
                        float *__restrict__ x, int E) {
  int i = blockIdx.x;
  const half *row = emb + (size_t)tok[i] * E;
  for (int j = threadIdx.x; j < E; j += blockDim.x)
    x[(size_t)i * E + j] = __half2float(row[j]);
}

/* one block (256 threads) per row: y = half(x * rsqrt(mean(x^2) + eps) * w) */
__global__ void k_rmsnorm(const float *__restrict__ x, const float *__restrict__ w,
                          half *__restrict__ y, int E, float eps) {
  __shared__ float red[32];
  const float *xi = x + (size_t)blockIdx.x * E;
  float ss = 0.f;
  for (int j = threadIdx.x; j < E; j += blockDim.x)
    ss += xi[j] * xi[j];
  for (int o = 16; o > 0; o >>= 1)
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    ss = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1)
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x == 0) red[0] = ss;
  }
  __syncthreads();
  float r = rsqrtf(red[0] / (float)E + eps);
  for (int j = threadIdx.x; j < E; j += blockDim.x)
    y[(size_t)blockIdx.x * E + j] = __float2half(xi[j] * r * w[j]);
}

/* Angle of pair i at position pos, in double as the CPU twin does. */
__device__ __forceinline__ void rope_cs(uint32_t pos, int i, int D, double log_theta, float *c,
                                        float *s) {
  double a = (double)pos * exp(-2.0 * i / D * log_theta);
  double sd, cd;
  sincos(a, &sd, &cd);
  *c = (float)cd;
  *s = (float)sd;
}

/* qkv (n, H*D + 2*G*D) f32 (+ bias (H*D + 2*G*D) when not NULL: qwen2) ->
 * q (n, H, D) fp16 rotated (skipped when q is NULL); K rotated and V into
 * Kc/Vc rows slot[i] (NULL: past + i), RoPE position pos[i] (NULL: past + i),
 * pairs (2j, 2j+1) or, with neox, (j, j + D/2). One block per token. */
__global__ void k_rope_qkv(const float *__restrict__ qkv, half *__restrict__ q,
                           half *__restrict__ Kc, half *__restrict__ Vc, int H, int G, int D,
                           int past, const int *__restrict__ pos_arr,
                           const int *__restrict__ slot_arr, double log_theta,
                           const float *__restrict__ bias, int neox) {
  __shared__ float cs[KVS_MAX_HEAD_DIM / 2], sn[KVS_MAX_HEAD_DIM / 2];
  int i = blockIdx.x;
  uint32_t pos = (uint32_t)(pos_arr ? pos_arr[i] : past + i);
  size_t slot = (size_t)(slot_arr ? slot_arr[i] : past + i);
  int HD = H * D, GD = G * D, W = HD + 2 * GD;
  const float *row = qkv + (size_t)i * W;
  for (int j = threadIdx.x; j < D / 2; j += blockDim.x)
    rope_cs(pos, j, D, log_theta, &cs[j], &sn[j]);
  __syncthreads();
  int h0 = q ? 0 : H, pairs = (H + G - h0) * (D / 2);
  int a0 = neox ? 1 : 2, a1 = neox ? D / 2 : 1; /* element of pair j: a0 * j and a0 * j + a1 */
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    int head = h0 + p / (D / 2), j = p % (D / 2);
    float c = cs[j], s = sn[j];
    int e0 = head * D + a0 * j, e1 = e0 + a1; /* q heads then k heads are contiguous */
    float x0 = row[e0], x1 = row[e1];
    if (bias) x0 += bias[e0], x1 += bias[e1];
    half o0 = __float2half(x0 * c - x1 * s), o1 = __float2half(x0 * s + x1 * c);
    if (head < H) {
      q[(size_t)i * HD + e0] = o0;
      q[(size_t)i * HD + e1] = o1;
    } else {
      size_t o = slot * GD + (e0 - HD);
      Kc[o] = o0;
      Kc[o + a1] = o1;
    }
  }
  for (int j = threadIdx.x; j < GD; j += blockDim.x)
    Vc[slot * GD + j] = __float2half(row[HD + GD + j] + (bias ? bias[HD + GD + j] : 0.0f));
}

/* in-place f32 rope for the twin test: x (n, H, D), NORM or NEOX pairs */
__global__ void k_rope_f32(float *x, const uint32_t *pos, int H, int D, double log_theta,
                           int neox) {
  int i = blockIdx.x, a0 = neox ? 1 : 2, a1 = neox ? D / 2 : 1;
  for (int p = threadIdx.x; p < H * (D / 2); p += blockDim.x) {
    int head = p / (D / 2), j = p % (D / 2);
    float c, s;
    rope_cs(pos[i], j, D, log_theta, &c, &s);
    float *e = x + ((size_t)i * H + head) * D + a0 * j;
    float x0 = e[0], x1 = e[a1];
    e[0] = x0 * c - x1 * s;
    e[a1] = x0 * s + x1 * c;
  }
}

__global__ void k_swiglu(const half *__restrict__ gu, half *__restrict__ out, int F, size_t total) {
  for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total;
       t += (size_t)gridDim.x * blockDim.x) {
    size_t i = t / F, j = t % F;
    float g = __half2float(gu[i * 2 * F + j]), u = __half2float(gu[i * 2 * F + F + j]);
    out[t] = __float2half(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void k_rand_half(half *dst, size_t n, uint64_t seed, uint32_t tid, kvs__rscale s) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = __float2half(kvs__rand_weight(seed, tid, i, s));
}
__global__ void k_rand_f32(float *dst, size_t n, uint64_t seed, uint32_t tid, kvs__rscale s) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    dst[i] = kvs__rand_weight(seed, tid, i, s);
}

/* Flash attention, causal, GQA, FlashAttention-2 style on mma.sync
 * (m16n8k16, fp16 in, f32 accumulate). Block = 4 warps of one head; each warp
 * owns MT m16 tiles (16 * MT query rows; block rows BR = 64 * MT) and keeps
 * their scores, probabilities and output in registers: in tile mt, thread
 * (group g = lane/4, t = lane%4) holds rows g and g+8, columns 2t, 2t+1 of
 * every 8-wide tile, so a row's max and sum need two quad shuffles. Key/value
 * tiles of BC = 64 rows stream through shared memory with cp.async,
 * double-buffered (tile t+1 loads while tile t computes); rows are padded by
 * 8 halves so the fragment loads are free of bank conflicts, and V fragments
 * come transposed through ldmatrix.trans. Every K and V fragment a warp loads
 * from shared memory feeds MT mma's: at D = 64 a warp of 16 rows was bound by
 * shared-memory bandwidth, and MT = 2 halves the bytes read per MAC (D = 128
 * keeps MT = 1: its O, Q and S fragments take 128 registers per m16 tile).
 * Probabilities go from the S accumulators straight into the A operand of
 * P V (the accumulator layout of two 8-wide tiles is the A layout of one
 * 16-wide one). Row maxima are kept on raw scores, and the softmax scale is
 * folded into the exponent: p = exp2(s * scale_log2 - m * scale_log2), one
 * FFMA. Key tiles that no row of the warp needs masked (wholly at or before
 * its smallest slot and before the end of the keys) skip the mask compares.
 * No T x T matrix, and no scores in shared memory. Blocks run heaviest first
 * (the last query rows see the most keys).
 * Split over the keys (flash-decoding) when there are few query rows (decode,
 * a question prefilled on top of 8K reused tokens, a recomputed subset): grid
 * z = nsplit blocks share one query block, each takes a contiguous range of
 * key tiles and writes its unnormalized O with its row max (scaled by
 * scale_log2) and sum (f32) to a workspace; k_flash_combine merges them.
 * Without it such a call would run on H blocks of a 132-SM GPU. */
#define FA_NW 4
#define FA_BC 64

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const half *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ void cp_async16(half *dst, const half *src, int bytes) {
  unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
  half2 h = __floats2half2_rn(a, b); /* a in the low half: the lower column */
  return *reinterpret_cast<uint32_t *>(&h);
}

template <int D> struct fa_smem {
  static constexpr int LDS = D + 8; /* padded row, in halves */
  static constexpr size_t tile = (size_t)FA_BC * LDS;
  static constexpr size_t total = 2 /* stages */ * 2 /* K, V */ * tile * sizeof(half);
};

/* MT: m16 tiles per warp (1 or 2). Blocks per SM: 3 with one tile per warp
 * (D = 128 then fits in 168 registers without spilling; left free, ptxas took
 * 172 and only 2 blocks fit), 2 with two (D = 64 takes 232 registers). */
template <int D, int MT>
__global__ void __launch_bounds__(FA_NW * 32, MT == 1 ? 3 : 2)
    k_flash_attn(const half *__restrict__ Q, const half *__restrict__ K, const half *__restrict__ V,
                 half *__restrict__ O, int n, int H, int G, int past, const int *__restrict__ qslot,
                 int kv_len, float scale_log2, float *__restrict__ ws) {
  static_assert(MT == 1 || MT == 2, "one or two m16 tiles per warp");
  typedef fa_smem<D> L;
  constexpr int BR = 16 * MT * FA_NW, BC = FA_BC, LDS = L::LDS, NT = D / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  half *sK = reinterpret_cast<half *>(smem); /* [stage][BC][LDS] */
  half *sV = sK + 2 * L::tile;
  __shared__ int sW[FA_NW];
  const int h = blockIdx.y, grp = h / (H / G);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BR; /* heaviest first */
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g8 = lane >> 2, t4 = lane & 3;
  const size_t ldq = (size_t)H * D, ldk = (size_t)G * D;
  /* this thread's rows: r[mt][0] = row g of the warp's m16 tile mt, r[mt][1]
   * = row g + 8, and their slots (rows past n: slot 0, never written). wmax:
   * the warp's largest slot; wmin: its smallest over rows < n. */
  int r[MT][2], qs[MT][2], wmax = 0, wmin = INT_MAX;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
      const int row = q0 + (warp * MT + mt) * 16 + hi * 8 + g8;
      r[mt][hi] = row;
      qs[mt][hi] = row < n ? (qslot ? qslot[row] : past + row) : 0;
      wmax = max(wmax, qs[mt][hi]);
      if (row < n) wmin = min(wmin, qs[mt][hi]);
    }
  for (int off = 16; off > 0; off >>= 1) {
    wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, off));
    wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, off));
  }
  if (lane == 0) sW[warp] = wmax;
  /* Q fragments straight from global memory, once */
  uint32_t qa[MT][D / 16][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int ra = r[mt][0], rb = r[mt][1];
    const half *p0 = Q + (size_t)ra * ldq + h * D + t4 * 2,
               *p1 = Q + (size_t)rb * ldq + h * D + t4 * 2;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      qa[mt][kk][0] = ra < n ? *reinterpret_cast<const uint32_t *>(p0 + kk * 16) : 0u;
      qa[mt][kk][1] = rb < n ? *reinterpret_cast<const uint32_t *>(p1 + kk * 16) : 0u;
      qa[mt][kk][2] = ra < n ? *reinterpret_cast<const uint32_t *>(p0 + kk * 16 + 8) : 0u;
      qa[mt][kk][3] = rb < n ? *reinterpret_cast<const uint32_t *>(p1 + kk * 16 + 8) : 0u;
    }
  }
  __syncthreads();
  int bmax = 0;
#pragma unroll
  for (int w = 0; w < FA_NW; w++)
    bmax = max(bmax, sW[w]);
  const int kend = min(kv_len, bmax + 1), all_tiles = (kend + BC - 1) / BC;
  /* this block's key tiles: all of them, or its share of a split */
  const int nsplit = gridDim.z, per = (all_tiles + nsplit - 1) / nsplit;
  const int tfirst = blockIdx.z * per, ntiles = min(all_tiles, tfirst + per);

  /* one K/V tile into stage s: 16-byte copies, rows at or past kend
   * zero-filled. Thread tid copies chunk c0 of rows tr0, tr0 + RS, ...: one
   * base pointer and one row stride, not an address per copy, live across
   * the loop (at D = 128 those addresses spilled). */
  constexpr int CPR = D / 8, RS = FA_NW * 32 / CPR; /* chunks per row, rows per pass */
  static_assert((FA_NW * 32) % CPR == 0 && BC % RS == 0, "whole rows per pass");
  const int tr0 = tid / CPR, c0 = (tid % CPR) * 8;
  const half *gk = K + grp * D + c0, *gv = V + grp * D + c0;
  auto load_tile = [&](int t, int s) {
    const int kt = t * BC;
    half *dk = sK + s * L::tile + tr0 * LDS + c0, *dv = sV + s * L::tile + tr0 * LDS + c0;
#pragma unroll
    for (int p = 0; p < BC / RS; p++) {
      const int row = kt + tr0 + p * RS;
      const size_t off = row < kend ? (size_t)row * ldk : 0;
      cp_async16(dk + p * RS * LDS, gk + off, row < kend ? 16 : 0);
      cp_async16(dv + p * RS * LDS, gv + off, row < kend ? 16 : 0);
    }
    cp_async_commit();
  };

  /* o: unnormalized output; m: row max of the raw scores seen so far; l:
   * this thread's part of the row sum (reduced over the quad at the end) */
  float o[MT][NT][4], m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int j = 0; j < NT; j++)
      o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  if (tfirst < ntiles) load_tile(tfirst, tfirst & 1);
  for (int t = tfirst; t < ntiles; t++) {
    if (t + 1 < ntiles) {
      load_tile(t + 1, (t + 1) & 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int kt = t * BC;
    if (kt <= wmax) { /* else every row of this warp precedes the tile */
      const half *tk = sK + (t & 1) * L::tile, *tv = sV + (t & 1) * L::tile;
      /* S = Q K^T: each K fragment feeds MT mma's */
      float s[MT][BC / 8][4];
#pragma unroll
      for (int j = 0; j < BC / 8; j++) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
          s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
        const half *kr = tk + (j * 8 + g8) * LDS + t4 * 2;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
          uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + kk * 16);
          uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + kk * 16 + 8);
#pragma unroll
          for (int mt = 0; mt < MT; mt++)
            mma16816(s[mt][j], qa[mt][kk], b0, b1);
        }
      }
      /* mask (causal by slot, and the end of the keys), row max of raw scores */
      float mx[MT][2];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
        mx[mt][0] = mx[mt][1] = -INFINITY;
      if (kt + BC <= kend && kt + BC - 1 <= wmin) { /* warp-uniform: no key masked */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
          for (int j = 0; j < BC / 8; j++) {
            mx[mt][0] = fmaxf(mx[mt][0], fmaxf(s[mt][j][0], s[mt][j][1]));
            mx[mt][1] = fmaxf(mx[mt][1], fmaxf(s[mt][j][2], s[mt][j][3]));
          }
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
          for (int j = 0; j < BC / 8; j++) {
            const int k0 = kt + j * 8 + t4 * 2, k1 = k0 + 1;
            const int sa = qs[mt][0], sb = qs[mt][1];
            s[mt][j][0] = (k0 <= sa && k0 < kend) ? s[mt][j][0] : -INFINITY;
            s[mt][j][1] = (k1 <= sa && k1 < kend) ? s[mt][j][1] : -INFINITY;
            s[mt][j][2] = (k0 <= sb && k0 < kend) ? s[mt][j][2] : -INFINITY;
            s[mt][j][3] = (k1 <= sb && k1 < kend) ? s[mt][j][3] : -INFINITY;
            mx[mt][0] = fmaxf(mx[mt][0], fmaxf(s[mt][j][0], s[mt][j][1]));
            mx[mt][1] = fmaxf(mx[mt][1], fmaxf(s[mt][j][2], s[mt][j][3]));
          }
      }
      /* online softmax, per row (mt, hi). A row sees no key yet (m = -inf)
       * only in a split that starts past its slot: its bias is 0 then, so
       * exp2 gives 0, never inf - inf. */
      float a[MT][2], nb[MT][2];
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hi = 0; hi < 2; hi++) {
          float x = mx[mt][hi];
          x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
          x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
          const float mn = fmaxf(m[mt][hi], x);
          nb[mt][hi] = mn == -INFINITY ? 0.f : -mn * scale_log2;
          /* exp2((m - mn) * scale_log2): 0 while m was -inf */
          a[mt][hi] = mn == -INFINITY ? 1.f : exp2f(fmaf(m[mt][hi], scale_log2, nb[mt][hi]));
          m[mt][hi] = mn;
        }
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
        for (int j = 0; j < BC / 8; j++) {
          s[mt][j][0] = exp2f(fmaf(s[mt][j][0], scale_log2, nb[mt][0]));
          s[mt][j][1] = exp2f(fmaf(s[mt][j][1], scale_log2, nb[mt][0]));
          s[mt][j][2] = exp2f(fmaf(s[mt][j][2], scale_log2, nb[mt][1]));
          s[mt][j][3] = exp2f(fmaf(s[mt][j][3], scale_log2, nb[mt][1]));
          ls0 += s[mt][j][0] + s[mt][j][1];
          ls1 += s[mt][j][2] + s[mt][j][3];
        }
        l[mt][0] = l[mt][0] * a[mt][0] + ls0;
        l[mt][1] = l[mt][1] * a[mt][1] + ls1;
#pragma unroll
        for (int j = 0; j < NT; j++) {
          o[mt][j][0] *= a[mt][0], o[mt][j][1] *= a[mt][0];
          o[mt][j][2] *= a[mt][1], o[mt][j][3] *= a[mt][1];
        }
      }
      /* O += P V, 16 keys at a time: each V fragment feeds MT pairs of mma's */
#pragma unroll
      for (int kc = 0; kc < BC / 16; kc++) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          pa[mt][0] = pack_half2(s[mt][2 * kc][0], s[mt][2 * kc][1]);
          pa[mt][1] = pack_half2(s[mt][2 * kc][2], s[mt][2 * kc][3]);
          pa[mt][2] = pack_half2(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
          pa[mt][3] = pack_half2(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
        }
        const half *vr =
            tv + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + (lane >> 4) * 8;
#pragma unroll
        for (int np = 0; np < D / 16; np++) {
          uint32_t b[4];
          ldsm_x4_t(b, vr + np * 16);
#pragma unroll
          for (int mt = 0; mt < MT; mt++) {
            mma16816(o[mt][2 * np], pa[mt], b[0], b[1]);
            mma16816(o[mt][2 * np + 1], pa[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads(); /* stage t&1 is reloaded by the next iteration */
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
      l[mt][hi] += __shfl_xor_sync(0xffffffffu, l[mt][hi], 1);
      l[mt][hi] += __shfl_xor_sync(0xffffffffu, l[mt][hi], 2);
    }
  /* a split's partial: O unnormalized, then (m * scale_log2, l) per row, in
   * the units k_flash_combine merges */
  if (nsplit > 1) {
    const size_t zb = (size_t)blockIdx.z * n * H;
    float *po = ws + zb * D, *pml = ws + (size_t)nsplit * n * H * D;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int hi = 0; hi < 2; hi++) {
        const int row = r[mt][hi];
        if (row >= n) continue;
#pragma unroll
        for (int j = 0; j < NT; j++)
          *reinterpret_cast<float2 *>(po + ((size_t)row * H + h) * D + j * 8 + t4 * 2) =
              make_float2(o[mt][j][2 * hi], o[mt][j][2 * hi + 1]);
        if (t4 == 0)
          *reinterpret_cast<float2 *>(pml + 2 * (zb + (size_t)row * H + h)) =
              make_float2(m[mt][hi] * scale_log2, l[mt][hi]);
      }
    return;
  }
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hi = 0; hi < 2; hi++) {
      const int row = r[mt][hi];
      if (row >= n) continue;
      const float inv = 1.f / l[mt][hi];
#pragma unroll
      for (int j = 0; j < NT; j++)
        *reinterpret_cast<half2 *>(O + (size_t)row * ldq + h * D + j * 8 + t4 * 2) =
            __floats2half2_rn(o[mt][j][2 * hi] * inv, o[mt][j][2 * hi + 1] * inv);
    }
}

/* One thread per (row, head, 2 columns): merge the nsplit partial results. */
template <int D>
__global__ void k_flash_combine(const float *__restrict__ ws, half *__restrict__ O, int n, int H,
                                int nsplit) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)n * H * (D / 2)) return;
  const size_t rh = i / (D / 2);
  const int c = (int)(i % (D / 2)) * 2;
  const float *pml = ws + (size_t)nsplit * n * H * D;
  float mx = -INFINITY;
  for (int z = 0; z < nsplit; z++)
    mx = fmaxf(mx, pml[2 * ((size_t)z * n * H + rh)]);
  float a = 0.f, b = 0.f, l = 0.f;
  for (int z = 0; z < nsplit; z++) {
    const size_t zr = (size_t)z * n * H + rh;
    const float m = pml[2 * zr];
    if (m == -INFINITY) continue; /* this split saw no key of the row */
    const float w = exp2f(m - mx);
    l += w * pml[2 * zr + 1];
    const float2 o = *reinterpret_cast<const float2 *>(ws + zr * D + c);
    a += w * o.x, b += w * o.y;
  }
  *reinterpret_cast<half2 *>(O + rh * D + c) = __floats2half2_rn(a / l, b / l);
}

/* ws (may be NULL: no split) is a workspace grown on demand (*ws_bytes). */
template <int D>
static kvs_err launch_flash_t(const half *q, const half *k, const half *v, half *o, int n, int H,
                              int G, int past, const int *qslot, int kv_len, cudaStream_t st,
                              float **ws, size_t *ws_bytes) {
  /* two m16 tiles per warp at D = 64; D = 128 has no registers for them */
  constexpr int MT = D == 64 ? 2 : 1, BR = 16 * MT * FA_NW;
  void (*const kern)(const half *, const half *, const half *, half *, int, int, int, int,
                     const int *, int, float, float *) = k_flash_attn<D, MT>;
  size_t smem = fa_smem<D>::total;
  static int configured = 0, n_sm = 0;
  if (!configured) {
    KVS_CUDA_TRY(
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int dev = 0;
    KVS_CUDA_TRY(cudaGetDevice(&dev));
    KVS_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    configured = 1;
  }
  const int nqb = (n + BR - 1) / BR;
  /* split when the grid would not fill two blocks (8 warps) per SM, keeping
   * >= 4 key tiles per split */
  int nsplit = 1;
  if (ws && nqb * H < 2 * n_sm) {
    int by_sm = (2 * n_sm + nqb * H - 1) / (nqb * H),
        by_keys = (kv_len + 4 * FA_BC - 1) / (4 * FA_BC);
    nsplit = by_sm < by_keys ? by_sm : by_keys;
    if (nsplit > 32) nsplit = 32;
    if (nsplit < 1) nsplit = 1;
  }
  if (nsplit > 1) {
    size_t need = (size_t)nsplit * n * H * (D + 2) * sizeof(float);
    if (need > *ws_bytes) {
      cudaFree(*ws);
      *ws = NULL, *ws_bytes = 0;
      KVS_CUDA_TRY(cudaMalloc(ws, need));
      *ws_bytes = need;
    }
  }
  dim3 grid((unsigned)nqb, (unsigned)H, (unsigned)nsplit);
  float scale_log2 = 1.4426950408889634f / sqrtf((float)D);
  kern<<<grid, FA_NW * 32, smem, st>>>(q, k, v, o, n, H, G, past, qslot, kv_len, scale_log2,
                                       nsplit > 1 ? *ws : NULL);
  KVS_CUDA_TRY(cudaGetLastError());
  if (nsplit > 1) {
    size_t th = (size_t)n * H * (D / 2);
    k_flash_combine<D><<<(unsigned)((th + 255) / 256), 256, 0, st>>>(*ws, o, n, H, nsplit);
    KVS_CUDA_TRY(cudaGetLastError());
  }
  return KVS_OK;
}

/* Query i sits in slot qslot[i] (device array; NULL: past + i) and attends
 * slots 0..its slot, all < kv_len. */
static kvs_err launch_flash(const half *q, const half *k, const half *v, half *o, int n, int H,
                            int G, int D, int past, const int *qslot, int kv_len, cudaStream_t st,
                            float **ws, size_t *ws_bytes) {
  if (n <= 0) return KVS_OK;
  if (D == 64)
    return launch_flash_t<64>(q, k, v, o, n, H, G, past, qslot, kv_len, st, ws, ws_bytes);
  if (D == 128)
    return launch_flash_t<128>(q, k, v, o, n, H, G, past, qslot, kv_len, st, ws, ws_bytes);
  return KVS_ENOTSUP;
}

/* ------------------------------------------------------------- model */
typedef struct gpu_layer {
  float *attn_norm, *ffn_norm;
  float *bqkv; /* (H*D + 2*G*D) = [bq; bk; bv] when cfg.qkv_bias (qwen2), else NULL */
  half *wqkv, *wo, *wgu, *wdown;
} gpu_layer;

struct kvs_gpu_seq {
  kvs_gpu_model *g;
  half *kv; /* (L, 2, cap, G, D) */
  uint32_t cap, len;
};

struct kvs_gpu_model {
  kvs_model_cfg cfg;
  cublasHandle_t blas;
  cudaStream_t st;
  cudaEvent_t ev0, ev1;
  half *embd, *output;
  float *out_norm;
  gpu_layer *layers;
  uint32_t T; /* tokens per call (activation buffers) */
  kvs_gpu_seq *seq0;
  int *tok, *d_idx, *d_pos;
  float *x, *qkv;
  half *xn, *q, *att, *gu, *act;
  float *logits;
  size_t logits_rows;
  double pf_ms, pf_tokens;
  float *fa_ws; /* split-K attention workspace, grown on demand */
  size_t fa_ws_bytes;
};

static int blocks_for(size_t n) {
  size_t b = (n + 255) / 256;
  return (int)(b > 65535 ? 65535 : (b ? b : 1));
}

/* dst (rows, cols) fp16 from host f32 src, converted in chunks */
static kvs_err upload_half(half *dst, const float *src, size_t n) {
  const size_t chunk = 1u << 22;
  kvs_f16 *tmp = (kvs_f16 *)malloc(chunk * sizeof(kvs_f16));
  if (!tmp) return KVS_ENOMEM;
  for (size_t a = 0; a < n; a += chunk) {
    size_t m = n - a < chunk ? n - a : chunk;
    for (size_t i = 0; i < m; i++)
      tmp[i] = kvs_f32_to_f16(src[a + i]);
    cudaError_t e = cudaMemcpy(dst + a, tmp, m * sizeof(kvs_f16), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
      free(tmp);
      return kvs__cuda_err(e, __FILE__, __LINE__, "upload");
    }
  }
  free(tmp);
  return KVS_OK;
}

static kvs_err put_half(kvs_gpu_model *g, const kvs__model_weights *w, half *dst, const float *src,
                        size_t n, uint32_t tid) {
  if (w->host) return upload_half(dst, src, n);
  k_rand_half<<<blocks_for(n), 256, 0, g->st>>>(dst, n, w->seed, tid,
                                                kvs__rand_scale(&w->cfg, tid));
  KVS_CUDA_TRY(cudaGetLastError());
  return KVS_OK;
}
static kvs_err put_f32(kvs_gpu_model *g, const kvs__model_weights *w, float *dst, const float *src,
                       size_t n, uint32_t tid) {
  if (w->host) {
    KVS_CUDA_TRY(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyHostToDevice));
    return KVS_OK;
  }
  k_rand_f32<<<blocks_for(n), 256, 0, g->st>>>(dst, n, w->seed, tid, kvs__rand_scale(&w->cfg, tid));
  KVS_CUDA_TRY(cudaGetLastError());
  return KVS_OK;
}

#define DMALLOC(p, bytes) KVS_CUDA_TRY(cudaMalloc((void **)&(p), (bytes)))

static kvs_err create(kvs_gpu_model *g, const kvs__model_weights *w, uint32_t T) {
  const kvs_model_cfg *c = &w->cfg;
  size_t E = c->n_embd, HD = (size_t)c->n_heads * c->head_dim,
         GD = (size_t)c->n_kv_heads * c->head_dim;
  size_t F = c->n_ff, V = c->n_vocab, L = c->n_layers;
  if (c->head_dim != 64 && c->head_dim != 128) return KVS_ENOTSUP;
  if (E % 8 || HD % 8) return KVS_ENOTSUP;
  KVS_CUDA_TRY(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
  KVS_CUDA_TRY(cudaEventCreate(&g->ev0));
  KVS_CUDA_TRY(cudaEventCreate(&g->ev1));
  CUBLAS_TRY(cublasCreate(&g->blas));
  CUBLAS_TRY(cublasSetStream(g->blas, g->st));
  g->layers = (gpu_layer *)calloc(L, sizeof *g->layers);
  if (!g->layers) return KVS_ENOMEM;
  DMALLOC(g->embd, V * E * 2);
  KVS_TRY(put_half(g, w, g->embd, w->tok_embd, V * E, KVS__RT_EMBD));
  if (w->host && w->output == w->tok_embd) {
    g->output = g->embd;
  } else {
    DMALLOC(g->output, V * E * 2);
    KVS_TRY(put_half(g, w, g->output, w->output, V * E, KVS__RT_OUTPUT));
  }
  DMALLOC(g->out_norm, E * 4);
  KVS_TRY(put_f32(g, w, g->out_norm, w->out_norm, E, KVS__RT_OUT_NORM));
  for (size_t l = 0; l < L; l++) {
    gpu_layer *gl = &g->layers[l];
    const kvs__layer_weights *hl = w->host ? &w->layers[l] : NULL;
    uint32_t b = KVS__RT_LAYER(l);
    DMALLOC(gl->attn_norm, E * 4);
    DMALLOC(gl->ffn_norm, E * 4);
    DMALLOC(gl->wqkv, (HD + 2 * GD) * E * 2);
    DMALLOC(gl->wo, E * HD * 2);
    DMALLOC(gl->wgu, 2 * F * E * 2);
    DMALLOC(gl->wdown, E * F * 2);
    KVS_TRY(put_f32(g, w, gl->attn_norm, hl ? hl->attn_norm : NULL, E, b + 0));
    KVS_TRY(put_half(g, w, gl->wqkv, hl ? hl->wq : NULL, HD * E, b + 1));
    KVS_TRY(put_half(g, w, gl->wqkv + HD * E, hl ? hl->wk : NULL, GD * E, b + 2));
    KVS_TRY(put_half(g, w, gl->wqkv + (HD + GD) * E, hl ? hl->wv : NULL, GD * E, b + 3));
    KVS_TRY(put_half(g, w, gl->wo, hl ? hl->wo : NULL, E * HD, b + 4));
    KVS_TRY(put_f32(g, w, gl->ffn_norm, hl ? hl->ffn_norm : NULL, E, b + 5));
    KVS_TRY(put_half(g, w, gl->wgu, hl ? hl->w_gate : NULL, F * E, b + 6));
    KVS_TRY(put_half(g, w, gl->wgu + F * E, hl ? hl->w_up : NULL, F * E, b + 7));
    KVS_TRY(put_half(g, w, gl->wdown, hl ? hl->w_down : NULL, E * F, b + 8));
    if (c->qkv_bias) {
      DMALLOC(gl->bqkv, (HD + 2 * GD) * 4);
      KVS_TRY(put_f32(g, w, gl->bqkv, hl ? hl->bq : NULL, HD, b + 9));
      KVS_TRY(put_f32(g, w, gl->bqkv + HD, hl ? hl->bk : NULL, GD, b + 10));
      KVS_TRY(put_f32(g, w, gl->bqkv + HD + GD, hl ? hl->bv : NULL, GD, b + 11));
    }
  }
  g->T = T;
  DMALLOC(g->tok, (size_t)T * 4);
  DMALLOC(g->d_idx, (size_t)T * 4);
  DMALLOC(g->d_pos, (size_t)T * 4);
  DMALLOC(g->x, (size_t)T * E * 4);
  DMALLOC(g->xn, (size_t)T * E * 2);
  DMALLOC(g->qkv, (size_t)T * (HD + 2 * GD) * 4);
  DMALLOC(g->q, (size_t)T * HD * 2);
  DMALLOC(g->att, (size_t)T * HD * 2);
  DMALLOC(g->gu, (size_t)T * 2 * F * 2);
  DMALLOC(g->act, (size_t)T * F * 2);
  KVS_CUDA_TRY(cudaStreamSynchronize(g->st));
  return kvs_gpu_seq_create(g, T, &g->seq0);
}

extern "C" void kvs_gpu_seq_free(kvs_gpu_seq *s) {
  if (!s) return;
  cudaStreamSynchronize(s->g->st);
  cudaFree(s->kv);
  free(s);
}

extern "C" void kvs_gpu_model_free(kvs_gpu_model *g) {
  if (!g) return;
  if (g->st) cudaStreamSynchronize(g->st);
  kvs_gpu_seq_free(g->seq0);
  if (g->output != g->embd) cudaFree(g->output);
  cudaFree(g->embd);
  cudaFree(g->out_norm);
  for (uint32_t l = 0; g->layers && l < g->cfg.n_layers; l++) {
    gpu_layer *gl = &g->layers[l];
    cudaFree(gl->attn_norm);
    cudaFree(gl->ffn_norm);
    cudaFree(gl->wqkv);
    cudaFree(gl->bqkv);
    cudaFree(gl->wo);
    cudaFree(gl->wgu);
    cudaFree(gl->wdown);
  }
  free(g->layers);
  cudaFree(g->tok);
  cudaFree(g->d_idx);
  cudaFree(g->d_pos);
  cudaFree(g->x);
  cudaFree(g->xn);
  cudaFree(g->qkv);
  cudaFree(g->q);
  cudaFree(g->att);
  cudaFree(g->gu);
  cudaFree(g->act);
  cudaFree(g->logits);
  cudaFree(g->fa_ws);
  if (g->blas) cublasDestroy(g->blas);
  if (g->ev0) cudaEventDestroy(g->ev0);
  if (g->ev1) cudaEventDestroy(g->ev1);
  if (g->st) cudaStreamDestroy(g->st);
  free(g);
}

extern "C" kvs_err kvs_gpu_model_create(const kvs__model_weights *w, uint32_t max_tokens,
                                        kvs_gpu_model **out) {
  if (!w || !out || !max_tokens || (!w->host && !w->random)) return KVS_EINVAL;
  *out = NULL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  kvs_gpu_model *g = (kvs_gpu_model *)calloc(1, sizeof *g);
  if (!g) return KVS_ENOMEM;
  g->cfg = w->cfg;
  kvs_err e = create(g, w, max_tokens);
  if (e) {
    kvs_gpu_model_free(g);
    return e;
  }
  *out = g;
  return KVS_OK;
}

extern "C" const kvs_model_cfg *kvs_gpu_model_config(const kvs_gpu_model *g) {
  return g ? &g->cfg : NULL;
}
extern "C" uint32_t kvs_gpu_model_max_tokens(const kvs_gpu_model *g) { return g ? g->T : 0; }

static size_t seq_plane(const kvs_gpu_seq *s) {
  return (size_t)s->cap * s->g->cfg.n_kv_heads * s->g->cfg.head_dim;
}

extern "C" kvs_err kvs_gpu_seq_create(kvs_gpu_model *g, uint32_t cap, kvs_gpu_seq **out) {
  if (!g || !cap || !out) return KVS_EINVAL;
  *out = NULL;
  kvs_gpu_seq *s = (kvs_gpu_seq *)calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  s->g = g;
  s->cap = cap;
  size_t bytes = (size_t)g->cfg.n_layers * 2 * seq_plane(s) * 2;
  cudaError_t e = cudaMalloc((void **)&s->kv, bytes);
  if (e != cudaSuccess) {
    free(s);
    return kvs__cuda_err(e, __FILE__, __LINE__, "kv cache");
  }
  *out = s;
  return KVS_OK;
}
extern "C" uint32_t kvs_gpu_seq_len(const kvs_gpu_seq *s) { return s ? s->len : 0; }
extern "C" uint32_t kvs_gpu_seq_capacity(const kvs_gpu_seq *s) { return s ? s->cap : 0; }
extern "C" kvs_err kvs_gpu_seq_truncate(kvs_gpu_seq *s, uint32_t n) {
  if (!s || n > s->len) return KVS_EINVAL;
  s->len = n;
  return KVS_OK;
}

static half *seq_k(kvs_gpu_seq *s, uint32_t l) { return s->kv + (size_t)2 * l * seq_plane(s); }
static half *seq_v(kvs_gpu_seq *s, uint32_t l) { return seq_k(s, l) + seq_plane(s); }

/* Y (n, out) = X (n, in) W^T with W (out, in) row-major; beta = 1 accumulates. */
static kvs_err gemm(kvs_gpu_model *g, const half *W, const half *X, void *Y, cudaDataType yt, int n,
                    int in, int out, float beta) {
  float alpha = 1.0f;
  CUBLAS_TRY(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_16F, in,
                          X, CUDA_R_16F, in, &beta, Y, yt, out, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
  return KVS_OK;
}

/* One layer for N tokens with hidden x (N, E) f32 on the device, in place.
 * Token i: cache slot d_slot[i], RoPE position d_pos[i] (device arrays;
 * NULL: past + i); attention over slots 0..slot, all < kv_len. */
static kvs_err run_layer(kvs_gpu_model *g, kvs_gpu_seq *s, uint32_t l, int N, float *x, int past,
                         const int *d_pos, const int *d_slot, int kv_len) {
  const kvs_model_cfg *c = &g->cfg;
  int E = (int)c->n_embd, H = (int)c->n_heads, G = (int)c->n_kv_heads, D = (int)c->head_dim;
  int HD = H * D, GD = G * D, F = (int)c->n_ff;
  gpu_layer *gl = &g->layers[l];
  half *Kc = seq_k(s, l), *Vc = seq_v(s, l);
  k_rmsnorm<<<N, 256, 0, g->st>>>(x, gl->attn_norm, g->xn, E, c->norm_eps);
  KVS_TRY(gemm(g, gl->wqkv, g->xn, g->qkv, CUDA_R_32F, N, E, HD + 2 * GD, 0.0f));
  k_rope_qkv<<<N, 256, 0, g->st>>>(g->qkv, g->q, Kc, Vc, H, G, D, past, d_pos, d_slot,
                                   log((double)c->rope_theta), gl->bqkv,
                                   c->rope_type == KVS_ROPE_NEOX);
  KVS_TRY(launch_flash(g->q, Kc, Vc, g->att, N, H, G, D, past, d_slot, kv_len, g->st, &g->fa_ws,
                       &g->fa_ws_bytes));
  KVS_TRY(gemm(g, gl->wo, g->att, x, CUDA_R_32F, N, HD, E, 1.0f));
  k_rmsnorm<<<N, 256, 0, g->st>>>(x, gl->ffn_norm, g->xn, E, c->norm_eps);
  KVS_TRY(gemm(g, gl->wgu, g->xn, g->gu, CUDA_R_16F, N, E, 2 * F, 0.0f));
  size_t tot = (size_t)N * F;
  k_swiglu<<<blocks_for(tot), 256, 0, g->st>>>(g->gu, g->act, F, tot);
  KVS_TRY(gemm(g, gl->wdown, g->act, x, CUDA_R_32F, N, F, E, 1.0f));
  return KVS_OK;
}

/* final norm + head for `rows` hidden rows (device) into logits (device) */
static kvs_err run_logits(kvs_gpu_model *g, const float *x, int rows, float *logits) {
  int E = (int)g->cfg.n_embd, V = (int)g->cfg.n_vocab;
  for (int a = 0; a < rows; a += (int)g->T) {
    int nb = rows - a < (int)g->T ? rows - a : (int)g->T;
    k_rmsnorm<<<nb, 256, 0, g->st>>>(x + (size_t)a * E, g->out_norm, g->xn, E, g->cfg.norm_eps);
    KVS_TRY(gemm(g, g->output, g->xn, logits + (size_t)a * V, CUDA_R_32F, nb, E, V, 0.0f));
  }
  return KVS_OK;
}

static kvs_err check_tokens(const kvs_gpu_model *g, const int32_t *tokens, uint32_t n) {
  for (uint32_t i = 0; i < n; i++)
    if (tokens[i] < 0 || (uint32_t)tokens[i] >= g->cfg.n_vocab) return KVS_EINVAL;
  return KVS_OK;
}

/* Appends tokens in slices of T; logits_dev: last row, or all rows (n, V). */
static kvs_err seq_prefill(kvs_gpu_model *g, kvs_gpu_seq *s, const int32_t *tokens, uint32_t n,
                           int all_logits, float *logits_dev) {
  int E = (int)g->cfg.n_embd, V = (int)g->cfg.n_vocab;
  for (uint32_t a = 0; a < n; a += g->T) {
    int nb = (int)(n - a < g->T ? n - a : g->T);
    int past = (int)s->len;
    KVS_CUDA_TRY(
        cudaMemcpyAsync(g->tok, tokens + a, (size_t)nb * 4, cudaMemcpyHostToDevice, g->st));
    k_embed<<<nb, 256, 0, g->st>>>(g->embd, g->tok, g->x, E);
    for (uint32_t l = 0; l < g->cfg.n_layers; l++)
      KVS_TRY(run_layer(g, s, l, nb, g->x, past, NULL, NULL, past + nb));
    s->len += (uint32_t)nb;
    if (logits_dev && all_logits)
      KVS_TRY(run_logits(g, g->x, nb, logits_dev + (size_t)a * V));
    else if (logits_dev && a + (uint32_t)nb == n)
      KVS_TRY(run_logits(g, g->x + (size_t)(nb - 1) * E, 1, logits_dev));
  }
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_seq_prefill(kvs_gpu_model *g, kvs_gpu_seq *s, const int32_t *tokens,
                                       uint32_t n, int all_logits, float *logits_dev, double *ms) {
  if (!g || !s || s->g != g || (!tokens && n)) return KVS_EINVAL;
  if (n > s->cap - s->len) return KVS_ERANGE;
  KVS_TRY(check_tokens(g, tokens, n));
  if (!n) return KVS_OK;
  KVS_CUDA_TRY(cudaEventRecord(g->ev0, g->st));
  KVS_TRY(seq_prefill(g, s, tokens, n, all_logits, logits_dev));
  KVS_CUDA_TRY(cudaEventRecord(g->ev1, g->st));
  KVS_CUDA_TRY(cudaEventSynchronize(g->ev1));
  KVS_CUDA_TRY(cudaGetLastError());
  float f;
  KVS_CUDA_TRY(cudaEventElapsedTime(&f, g->ev0, g->ev1));
  g->pf_ms += f;
  g->pf_tokens += n;
  if (ms) *ms = f;
  return KVS_OK;
}

extern "C" double kvs_gpu_model_prefill_sec_per_token(const kvs_gpu_model *g) {
  return g && g->pf_tokens > 0 ? g->pf_ms * 1e-3 / g->pf_tokens : 0.0;
}

extern "C" kvs_err kvs_gpu_model_reset(kvs_gpu_model *g) {
  if (!g) return KVS_EINVAL;
  g->seq0->len = 0;
  return KVS_OK;
}
extern "C" uint32_t kvs_gpu_model_len(const kvs_gpu_model *g) { return g ? g->seq0->len : 0; }

extern "C" kvs_err kvs_gpu_model_prefill(kvs_gpu_model *g, const int32_t *tokens, uint32_t n,
                                         int all_logits, float *logits, double *ms) {
  if (!g || (!tokens && n)) return KVS_EINVAL;
  size_t rows = logits ? (all_logits ? n : 1) : 0;
  if (rows > g->logits_rows) {
    cudaFree(g->logits);
    g->logits = NULL;
    g->logits_rows = 0;
    DMALLOC(g->logits, rows * (size_t)g->cfg.n_vocab * 4);
    g->logits_rows = rows;
  }
  KVS_TRY(kvs_gpu_seq_prefill(g, g->seq0, tokens, n, all_logits, rows ? g->logits : NULL, ms));
  if (rows)
    KVS_CUDA_TRY(
        cudaMemcpy(logits, g->logits, rows * (size_t)g->cfg.n_vocab * 4, cudaMemcpyDeviceToHost));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_seq_kv_read(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                                       void *k, void *v) {
  if (!s || layer >= s->g->cfg.n_layers || (n && (!k || !v))) return KVS_EINVAL;
  if (start > s->len || n > s->len - start) return KVS_ERANGE;
  size_t row = (size_t)s->g->cfg.n_kv_heads * s->g->cfg.head_dim;
  KVS_CUDA_TRY(cudaStreamSynchronize(s->g->st)); /* the layers that wrote it are done */
  KVS_CUDA_TRY(cudaMemcpy(k, seq_k(s, layer) + start * row, n * row * 2, cudaMemcpyDefault));
  KVS_CUDA_TRY(cudaMemcpy(v, seq_v(s, layer) + start * row, n * row * 2, cudaMemcpyDefault));
  /* a device-to-device cudaMemcpy returns before it completes: finish it here */
  KVS_CUDA_TRY(cudaStreamSynchronize(cudaStreamLegacy));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_seq_kv_write(kvs_gpu_seq *s, uint32_t layer, uint32_t start, uint32_t n,
                                        const void *k, const void *v) {
  if (!s || layer >= s->g->cfg.n_layers || (n && (!k || !v))) return KVS_EINVAL;
  if (start > s->cap || n > s->cap - start) return KVS_ERANGE;
  size_t row = (size_t)s->g->cfg.n_kv_heads * s->g->cfg.head_dim;
  KVS_CUDA_TRY(cudaStreamSynchronize(s->g->st));
  KVS_CUDA_TRY(cudaMemcpy(seq_k(s, layer) + start * row, k, n * row * 2, cudaMemcpyDefault));
  KVS_CUDA_TRY(cudaMemcpy(seq_v(s, layer) + start * row, v, n * row * 2, cudaMemcpyDefault));
  /* The layers run on g->st, a non-blocking stream that does not wait for the
   * legacy stream, and a device-to-device cudaMemcpy returns before it
   * completes: finish the copies (and any kernel the caller queued on the
   * legacy stream for k, v) before the next layer reads the cache, and before
   * the caller reuses k, v. */
  KVS_CUDA_TRY(cudaStreamSynchronize(cudaStreamLegacy));
  if (start + n > s->len) s->len = start + n;
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_model_kv_read(kvs_gpu_model *g, uint32_t layer, uint32_t start,
                                         uint32_t n, kvs_f16 *k, kvs_f16 *v) {
  if (!g) return KVS_EINVAL;
  return kvs_gpu_seq_kv_read(g->seq0, layer, start, n, k, v);
}

extern "C" kvs_err kvs_gpu_embed(kvs_gpu_model *g, const int32_t *tokens, uint32_t n,
                                 float *hidden_dev) {
  if (!g || (n && (!tokens || !hidden_dev))) return KVS_EINVAL;
  if (n > g->T) return KVS_ERANGE;
  KVS_TRY(check_tokens(g, tokens, n));
  if (!n) return KVS_OK;
  KVS_CUDA_TRY(cudaMemcpyAsync(g->tok, tokens, (size_t)n * 4, cudaMemcpyHostToDevice, g->st));
  k_embed<<<n, 256, 0, g->st>>>(g->embd, g->tok, hidden_dev, (int)g->cfg.n_embd);
  KVS_CUDA_TRY(cudaGetLastError());
  KVS_CUDA_TRY(cudaStreamSynchronize(g->st));
  return KVS_OK;
}

/* idx/pos (host) -> d_idx/d_pos; *kv_len = max idx + 1 */
static kvs_err upload_slots(kvs_gpu_model *g, uint32_t n, const uint32_t *idx, const uint32_t *pos,
                            uint32_t cap, int *kv_len) {
  uint32_t mx = 0;
  if (idx) {
    for (uint32_t i = 0; i < n; i++) {
      if (idx[i] >= cap) return KVS_ERANGE;
      mx = idx[i] > mx ? idx[i] : mx;
    }
    KVS_CUDA_TRY(cudaMemcpyAsync(g->d_idx, idx, (size_t)n * 4, cudaMemcpyHostToDevice, g->st));
  }
  const uint32_t *p = pos ? pos : idx;
  for (uint32_t i = 0; i < n; i++)
    if (p[i] > INT32_MAX) return KVS_ERANGE;
  KVS_CUDA_TRY(cudaMemcpyAsync(g->d_pos, p, (size_t)n * 4, cudaMemcpyHostToDevice, g->st));
  if (kv_len) *kv_len = (int)mx + 1;
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_layer(kvs_gpu_model *g, kvs_gpu_seq *s, uint32_t layer, uint32_t n,
                                 const uint32_t *idx, const uint32_t *pos, float *hidden_dev) {
  if (!g || !s || s->g != g || layer >= g->cfg.n_layers || (n && (!idx || !hidden_dev)))
    return KVS_EINVAL;
  if (n > g->T) return KVS_ERANGE;
  if (!n) return KVS_OK;
  int kv_len = 0;
  KVS_TRY(upload_slots(g, n, idx, pos, s->cap, &kv_len));
  KVS_TRY(run_layer(g, s, layer, (int)n, hidden_dev, 0, g->d_pos, g->d_idx, kv_len));
  if ((uint32_t)kv_len > s->len) s->len = (uint32_t)kv_len;
  KVS_CUDA_TRY(cudaGetLastError());
  KVS_CUDA_TRY(cudaStreamSynchronize(g->st));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_layer_kv(kvs_gpu_model *g, uint32_t layer, uint32_t n,
                                    const uint32_t *pos, const float *hidden_dev, void *k_dev,
                                    void *v_dev) {
  if (!g || layer >= g->cfg.n_layers || !pos || (n && (!hidden_dev || !k_dev || !v_dev)))
    return KVS_EINVAL;
  if (n > g->T) return KVS_ERANGE;
  if (!n) return KVS_OK;
  const kvs_model_cfg *c = &g->cfg;
  int E = (int)c->n_embd, HD = (int)(c->n_heads * c->head_dim),
      GD = (int)(c->n_kv_heads * c->head_dim);
  KVS_TRY(upload_slots(g, n, NULL, pos, 0, NULL));
  gpu_layer *gl = &g->layers[layer];
  k_rmsnorm<<<n, 256, 0, g->st>>>(hidden_dev, gl->attn_norm, g->xn, E, c->norm_eps);
  KVS_TRY(gemm(g, gl->wqkv, g->xn, g->qkv, CUDA_R_32F, (int)n, E, HD + 2 * GD, 0.0f));
  k_rope_qkv<<<n, 256, 0, g->st>>>(g->qkv, NULL, (half *)k_dev, (half *)v_dev, (int)c->n_heads,
                                   (int)c->n_kv_heads, (int)c->head_dim, 0, g->d_pos, NULL,
                                   log((double)c->rope_theta), gl->bqkv,
                                   c->rope_type == KVS_ROPE_NEOX);
  KVS_CUDA_TRY(cudaGetLastError());
  KVS_CUDA_TRY(cudaStreamSynchronize(g->st));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_logits(kvs_gpu_model *g, uint32_t n, const float *hidden_dev,
                                  float *logits_dev) {
  if (!g || (n && (!hidden_dev || !logits_dev))) return KVS_EINVAL;
  if (!n) return KVS_OK;
  KVS_TRY(run_logits(g, hidden_dev, (int)n, logits_dev));
  KVS_CUDA_TRY(cudaGetLastError());
  KVS_CUDA_TRY(cudaStreamSynchronize(g->st));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_buffer_alloc(size_t bytes, void **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  KVS_CUDA_TRY(cudaMalloc(out, bytes ? bytes : 1));
  return KVS_OK;
}
extern "C" void kvs_gpu_buffer_free(void *p) {
  if (p) cudaFree(p);
}
extern "C" kvs_err kvs_gpu_copy(void *dst, const void *src, size_t bytes) {
  if (!bytes) return KVS_OK;
  if (!dst || !src) return KVS_EINVAL;
  KVS_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  return KVS_OK;
}

/* ------------------------------------------------ single-kernel wrappers */
template <typename T> static kvs_err to_dev(T **d, const void *h, size_t bytes) {
  KVS_CUDA_TRY(cudaMalloc((void **)d, bytes ? bytes : 1));
  if (h && bytes) KVS_CUDA_TRY(cudaMemcpy(*d, h, bytes, cudaMemcpyHostToDevice));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_rmsnorm_host(const float *x, const float *w, kvs_f16 *y, uint32_t n,
                                        uint32_t E, float eps) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  float *dx = NULL, *dw = NULL;
  half *dy = NULL;
  kvs_err e = to_dev(&dx, x, (size_t)n * E * 4);
  if (!e) e = to_dev(&dw, w, (size_t)E * 4);
  if (!e) e = to_dev(&dy, NULL, (size_t)n * E * 2);
  if (!e && n) {
    k_rmsnorm<<<n, 256>>>(dx, dw, dy, (int)E, eps);
    cudaError_t ce = cudaMemcpy(y, dy, (size_t)n * E * 2, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) e = kvs__cuda_err(ce, __FILE__, __LINE__, "rmsnorm");
  }
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  return e;
}

extern "C" kvs_err kvs_gpu_rope_host(float *q, uint32_t n, uint32_t H, uint32_t D,
                                     const uint32_t *pos, float theta, int neox) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  float *dq = NULL;
  uint32_t *dp = NULL;
  kvs_err e = to_dev(&dq, q, (size_t)n * H * D * 4);
  if (!e) e = to_dev(&dp, pos, (size_t)n * 4);
  if (!e && n) {
    k_rope_f32<<<n, 256>>>(dq, dp, (int)H, (int)D, log((double)theta), neox);
    cudaError_t ce = cudaMemcpy(q, dq, (size_t)n * H * D * 4, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) e = kvs__cuda_err(ce, __FILE__, __LINE__, "rope");
  }
  cudaFree(dq);
  cudaFree(dp);
  return e;
}

extern "C" kvs_err kvs_gpu_swiglu_host(const kvs_f16 *gu, kvs_f16 *out, uint32_t n, uint32_t F) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  half *dg = NULL, *dout = NULL;
  size_t tot = (size_t)n * F;
  kvs_err e = to_dev(&dg, gu, tot * 4);
  if (!e) e = to_dev(&dout, NULL, tot * 2);
  if (!e && tot) {
    k_swiglu<<<blocks_for(tot), 256>>>(dg, dout, (int)F, tot);
    cudaError_t ce = cudaMemcpy(out, dout, tot * 2, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) e = kvs__cuda_err(ce, __FILE__, __LINE__, "swiglu");
  }
  cudaFree(dg);
  cudaFree(dout);
  return e;
}

extern "C" kvs_err kvs_gpu_flash_attn_host(const kvs_f16 *q, const kvs_f16 *k, const kvs_f16 *v,
                                           kvs_f16 *out, uint32_t n, uint32_t H, uint32_t G,
                                           uint32_t D, uint32_t past, uint32_t kv_len, int split) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (!G || H % G || kv_len < past + n) return KVS_EINVAL;
  half *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
  kvs_err e = to_dev(&dq, q, (size_t)n * H * D * 2);
  if (!e) e = to_dev(&dk, k, (size_t)kv_len * G * D * 2);
  if (!e) e = to_dev(&dv, v, (size_t)kv_len * G * D * 2);
  if (!e) e = to_dev(&dout, NULL, (size_t)n * H * D * 2);
  float *ws = NULL;
  size_t ws_bytes = 0;
  if (!e)
    e = launch_flash(dq, dk, dv, dout, (int)n, (int)H, (int)G, (int)D, (int)past, NULL, (int)kv_len,
                     0, split ? &ws : NULL, &ws_bytes);
  cudaFree(ws);
  if (!e && n) {
    cudaError_t ce = cudaMemcpy(out, dout, (size_t)n * H * D * 2, cudaMemcpyDeviceToHost);
    if (ce != cudaSuccess) e = kvs__cuda_err(ce, __FILE__, __LINE__, "flash_attn");
  }
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  return e;
}
