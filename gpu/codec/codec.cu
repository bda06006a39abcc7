/* codec.cu - GPU decode of every lossy codec profile (see kvs_gpu_codec.h).
 *
 * Three launches per call, whatever the number of segments:
 *   k_walk     one thread per segment: checks the segment header, finds
 *              every plane's offset (planes are length-prefixed);
 *   k_dense_lut / nothing   per dense plane, the 4096-entry rANS table;
 *   k_<profile> warps over (plane, row) or (plane, head, rANS block).
 * Every read is bounded by the plane's length; any inconsistency sets the
 * status word (kvs_gpu_codec_status -> KVS_ECORRUPT) and skips the store.
 * Arithmetic mirrors the CPU twin operation by operation with explicit
 * round-to-nearest intrinsics (no FMA contraction), so outputs match. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include "kvs_gpu_codec.h"
#include "kvs_gpu_int.h"

#define G_PAD4(n)    (((n) + 3ull) & ~3ull)
#define G_CDIV(a, b) (((a) + (b)-1) / (b))
#define NO_PLANE     (~0ull)

namespace {

struct gout {
  uint32_t dtype, T, Hs, D, h0, paged, bs, num_blocks;
  void *base;
  void *const *kc; /* device arrays [n_layers] of device pointers */
  void *const *vc;
  const int32_t *bt;
};

struct gctx {
  const uint8_t *base;       /* segment bytes are addressed from here */
  const uint64_t *plane_off; /* [2*n_layers], from base */
  const uint32_t *lut;       /* dense: [2*n_layers][4096] */
  uint32_t p0, p1;           /* planes to decode: [p0, p1) */
  uint32_t T, H, D, h0, h1, n_layers, in_dtype;
  kvs_codec_params prm;
  int *flag;
  gout o;
};

__device__ __forceinline__ void fail(int *flag) { atomicExch(flag, 1); }

__device__ __forceinline__ float f16f(const uint8_t *p) {
  return __half2float(__ushort_as_half(kvs__rd16(p)));
}

__device__ __forceinline__ float raw_f(const uint8_t *p, uint32_t dtype) {
  uint16_t h = kvs__rd16(p);
  return dtype == KVS_DTYPE_BF16 ? __bfloat162float(__ushort_as_bfloat16(h))
                                 : __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ void store(const gctx &c, uint32_t layer, uint32_t kv, uint32_t t,
                                      uint32_t h, uint32_t d, float v) {
  const gout &o = c.o;
  uint64_t idx;
  uint8_t *dst;
  if (!o.paged) {
    idx = ((((uint64_t)(2u * layer + kv) * o.T + t) * o.Hs + (h - o.h0)) * o.D) + d;
    dst = (uint8_t *)o.base;
  } else {
    int32_t blk = o.bt[t / o.bs];
    if (blk < 0 || (uint32_t)blk >= o.num_blocks) {
      fail(c.flag);
      return;
    }
    uint64_t slot = (uint64_t)blk * o.bs + t % o.bs;
    idx = (slot * o.Hs + (h - o.h0)) * o.D + d;
    dst = (uint8_t *)(kv ? o.vc[layer] : o.kc[layer]);
  }
  if (o.dtype == KVS_DTYPE_F32) {
    ((float *)dst)[idx] = v;
  } else if (o.dtype == KVS_DTYPE_F16) {
    ((__half *)dst)[idx] = __float2half_rn(v);
  } else {
    ((__nv_bfloat16 *)dst)[idx] = __float2bfloat16_rn(v);
  }
}

/* ------------------------------------------------------------ plane walk */
/* segment places, by value: the kernel parameter space holds them (2 KiB) */
struct seg_table {
  uint64_t start[KVS_CODEC_MAX_SEGMENTS], len[KVS_CODEC_MAX_SEGMENTS];
};

__global__ void k_walk(const uint8_t *base, const seg_table segs, uint32_t g0, uint32_t g1,
                       uint32_t lpg, uint32_t n_layers, uint64_t *plane_off, int *flag) {
  const uint64_t *seg_start = segs.start, *seg_len = segs.len;
  uint32_t g = g0 + blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= g1) return;
  uint32_t first = g * lpg, nl = n_layers - first < lpg ? n_layers - first : lpg;
  for (uint32_t i = 0; i < 2 * nl; i++)
    plane_off[2 * first + i] = NO_PLANE;
  const uint8_t *s = base + seg_start[g];
  uint64_t len = seg_len[g];
  if (len < KVS_CODEC_SEG_HEADER_BYTES || kvs__rd32(s + KVS_SH_MAGIC) != KVS_CODEC_SEG_MAGIC ||
      kvs__rd32(s + KVS_SH_INDEX) != g || kvs__rd32(s + KVS_SH_FIRST_LAYER) != first ||
      kvs__rd32(s + KVS_SH_N_LAYERS) != nl ||
      kvs__rd64(s + KVS_SH_PAYLOAD) != len - KVS_CODEC_SEG_HEADER_BYTES) {
    fail(flag);
    return;
  }
  uint64_t off = KVS_CODEC_SEG_HEADER_BYTES;
  for (uint32_t i = 0; i < 2 * nl; i++) {
    if (len - off < 4) {
      fail(flag);
      return;
    }
    uint32_t pb = kvs__rd32(s + off);
    if (pb < 4 || (pb & 3u) || pb > len - off) {
      fail(flag);
      return;
    }
    plane_off[2 * first + i] = seg_start[g] + off;
    off += pb;
  }
}

/* --------------------------------------------------- fixed-rate profiles */
/* One warp per output row (plane, t, h): lanes stride over head_dim. */
template <int PROF> __global__ void k_fixed(gctx c) {
  uint32_t Hs = c.h1 - c.h0;
  uint64_t rows_per_plane = (uint64_t)c.T * Hs;
  uint64_t item = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  uint32_t lane = threadIdx.x & 31;
  if (item >= rows_per_plane * (c.p1 - c.p0)) return;
  uint32_t p = c.p0 + (uint32_t)(item / rows_per_plane);
  uint64_t r = item % rows_per_plane;
  uint32_t t = (uint32_t)(r / Hs), h = c.h0 + (uint32_t)(r % Hs);
  uint32_t layer = p / 2, kv = p % 2, D = c.D, H = c.H;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE) return;
  const uint8_t *b = c.base + off;
  uint64_t n = kvs__rd32(b), rows = (uint64_t)c.T * H, e = rows * D;
  uint64_t row = (uint64_t)t * H + h;
  if (PROF == KVS_CODEC_INT8) {
    if (n != G_PAD4(4 + rows * 2 + rows * D)) {
      if (lane == 0) fail(c.flag);
      return;
    }
    float s = f16f(b + 4 + 2 * row);
    const int8_t *codes = (const int8_t *)(b + 4 + rows * 2 + row * D);
    for (uint32_t d = lane; d < D; d += 32)
      store(c, layer, kv, t, h, d, __fmul_rn((float)codes[d], s));
  } else if (PROF == KVS_CODEC_KIVI2 || PROF == KVS_CODEC_KIVI4) {
    uint32_t bits = PROF == KVS_CODEC_KIVI2 ? 2 : 4, G = c.prm.group, qmask = (1u << bits) - 1;
    uint64_t ng = kv == 0 ? (uint64_t)G_CDIV(c.T, G) * H * D : rows * G_CDIV(D, G);
    if (n != G_PAD4(4 + ng * 4 + (e * bits + 7) / 8)) {
      if (lane == 0) fail(c.flag);
      return;
    }
    const uint8_t *gp = b + 4, *codes = gp + ng * 4;
    for (uint32_t d = lane; d < D; d += 32) {
      uint64_t g = kv == 0 ? ((uint64_t)(t / G) * H + h) * D + d : row * G_CDIV(D, G) + d / G;
      uint64_t bit = (row * D + d) * bits;
      uint32_t q = (codes[bit >> 3] >> (bit & 7)) & qmask;
      store(c, layer, kv, t, h, d,
            __fadd_rn(__fmul_rn((float)q, f16f(gp + 4 * g)), f16f(gp + 4 * g + 2)));
    }
  } else { /* fp4 */
    uint32_t nb = G_CDIV(D, KVS_FP4_BLOCK);
    if (n != G_PAD4(4 + rows * nb + (e + 1) / 2)) {
      if (lane == 0) fail(c.flag);
      return;
    }
    const float val[8] = KVS_FP4_VALUES;
    const uint8_t *sc = b + 4, *codes = sc + rows * nb;
    for (uint32_t d = lane; d < D; d += 32) {
      uint8_t ex = sc[row * nb + d / KVS_FP4_BLOCK];
      if (ex == 255) {
        fail(c.flag);
        return;
      }
      uint64_t i = row * D + d;
      uint32_t code = (codes[i >> 1] >> ((i & 1) * 4)) & 15u;
      float v = ldexpf(val[code & 7], (int)ex - 127);
      store(c, layer, kv, t, h, d, (code & 8) ? -v : v);
    }
  }
}

/* --------------------------------------------------------- rANS helpers */
struct rans_block {
  uint32_t nw;
  const uint8_t *w;
  bool ok;
};

__device__ __forceinline__ rans_block open_block(const uint8_t *blk, uint64_t avail, uint32_t lane,
                                                 uint32_t *x) {
  rans_block r;
  r.ok = avail >= KVS_RANS_BLOCK_HDR;
  r.nw = r.ok ? kvs__rd32(blk) : 0;
  r.ok = r.ok && G_PAD4(KVS_RANS_BLOCK_HDR + 2ull * r.nw) <= avail;
  r.w = blk + KVS_RANS_BLOCK_HDR;
  *x = r.ok ? kvs__rd32(blk + 4 + 4 * lane) : KVS_RANS_L;
  r.ok = r.ok && *x >= KVS_RANS_L;
  r.ok = __all_sync(0xffffffffu, r.ok);
  return r;
}

/* lanes with `need` take the next words in lane order (the CPU twin's order) */
__device__ __forceinline__ uint32_t renorm(uint32_t x, bool need, uint32_t lane, uint32_t *pos,
                                           const rans_block &rb, bool *bad) {
  uint32_t m = __ballot_sync(0xffffffffu, need);
  uint32_t k = *pos + __popc(m & ((1u << lane) - 1u));
  if (need) {
    if (k < rb.nw)
      x = (x << 16) | kvs__rd16(rb.w + 2ull * k);
    else
      *bad = true;
  }
  *pos += __popc(m);
  return x;
}

__device__ __forceinline__ bool close_block(uint32_t x, uint32_t pos, const rans_block &rb,
                                            bool bad) {
  return __all_sync(0xffffffffu, !bad && x == KVS_RANS_L && pos == rb.nw);
}

/* ----------------------------------------------------------- cachegen-ref */
__device__ uint32_t cg_bins_dev(const kvs_codec_params &p, uint32_t layer, uint32_t kv) {
  if (kv == 0)
    return layer < p.cg_key_first_layers    ? p.cg_bins[0]
           : layer < p.cg_key_second_layers ? p.cg_bins[1]
                                            : p.cg_bins[2];
  return layer < p.cg_value_first_layers ? p.cg_bins[3] : p.cg_bins[4];
}

/* One warp per (plane, block of 32 channels); lane j decodes channel 32b+j
 * over all tokens with its own table (linear search of its frequencies). */
__global__ void k_cachegen(gctx c) {
  uint32_t HD = c.H * c.D, nb = G_CDIV(HD, 32u);
  uint32_t b_lo = c.h0 * c.D / 32, b_hi = G_CDIV(c.h1 * c.D, 32u), nbs = b_hi - b_lo;
  uint64_t item = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  uint32_t lane = threadIdx.x & 31;
  if (item >= (uint64_t)nbs * (c.p1 - c.p0)) return;
  uint32_t p = c.p0 + (uint32_t)(item / nbs), bi = b_lo + (uint32_t)(item % nbs);
  uint32_t layer = p / 2, kv = p % 2, T = c.T;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE || bi >= nb) return;
  const uint8_t *b = c.base + off;
  uint64_t n = kvs__rd32(b);
  uint32_t B = cg_bins_dev(c.prm, layer, kv), n_sym = B - 1;
  uint64_t fixed = 8 + G_PAD4(2ull * T) + G_PAD4(2ull * HD * n_sym) + 4ull * nb;
  if (n < fixed || kvs__rd16(b + 4) != n_sym) {
    if (lane == 0) fail(c.flag);
    return;
  }
  const uint8_t *tm = b + 8, *fr = tm + G_PAD4(2ull * T), *offs = fr + G_PAD4(2ull * HD * n_sym);
  uint32_t boff = kvs__rd32(offs + 4ull * bi);
  if (boff < fixed || boff >= n) {
    if (lane == 0) fail(c.flag);
    return;
  }
  uint32_t x;
  rans_block rb = open_block(b + boff, n - boff, lane, &x);
  if (!rb.ok) {
    if (lane == 0) fail(c.flag);
    return;
  }
  uint32_t ch = bi * 32 + lane;
  bool valid = ch < HD, bad = false;
  const uint8_t *freq = fr + 2ull * (valid ? ch : 0) * n_sym;
  float half = (float)(B / 2 - 1);
  uint32_t pos = 0, h = ch / c.D, d = ch % c.D;
  bool mine = valid && h >= c.h0 && h < c.h1;
  for (uint32_t t = 0; t < T; t++) {
    uint32_t slot = x & (KVS_RANS_PROB_SCALE - 1), s = 0, f = KVS_RANS_PROB_SCALE, cum = 0;
    if (valid) {
      for (s = 0; s < n_sym; s++) {
        f = kvs__rd16(freq + 2 * s);
        if (slot < cum + f) break;
        cum += f;
      }
      if (s == n_sym) bad = true, s = 0, f = 1, cum = slot;
    }
    x = f * (x >> KVS_RANS_PROB_BITS) + slot - cum;
    x = renorm(x, x < KVS_RANS_L, lane, &pos, rb, &bad);
    if (mine) {
      float v = __fmul_rn(__fdiv_rn(__fsub_rn((float)s, half), half), f16f(tm + 2ull * t));
      store(c, layer, kv, t, h, d, v);
    }
  }
  if (!close_block(x, pos, rb, bad) && lane == 0) fail(c.flag);
}

/* ------------------------------------------------------------------ dense */
__device__ __forceinline__ uint32_t dense_pflags_dev(const gctx &c, uint32_t kv) {
  uint32_t f = kv ? c.prm.v_flags : c.prm.k_flags;
  bool pow2 = c.D >= 2 && (c.D & (c.D - 1)) == 0;
  return pow2 ? f : (f & ~KVS_DENSE_ROTATED);
}

struct dense_hdr {
  uint32_t n_sym, flags, nbh, n_exc;
  int qmin;
  float step;
  const uint8_t *mean, *chan, *tok, *sink, *offs, *exc_i, *exc_v;
  uint64_t fixed, n;
  bool ok;
};

__device__ dense_hdr dense_parse(const gctx &c, const uint8_t *b, uint32_t kv) {
  dense_hdr r;
  memset(&r, 0, sizeof r);
  uint32_t HD = c.H * c.D, S = c.prm.group;
  r.n = kvs__rd32(b);
  if (r.n < 12) return r; /* not ok: nothing past plane_bytes may be read */
  r.n_sym = b[4];
  r.qmin = (int8_t)b[5];
  r.flags = b[6];
  uint32_t u = kvs__rd32(b + 8);
  memcpy(&r.step, &u, 4);
  r.nbh = (uint32_t)G_CDIV((uint64_t)c.T * c.D, 32ull * S);
  uint64_t hd = G_PAD4(2ull * HD);
  r.mean = b + 12 + G_PAD4(2ull * r.n_sym);
  const uint8_t *q = r.mean + hd;
  r.chan = (r.flags & KVS_DENSE_CHAN) ? q : NULL;
  q += (r.flags & KVS_DENSE_CHAN) ? hd : 0;
  r.tok = (r.flags & KVS_DENSE_TOKEN) ? q : NULL;
  q += (r.flags & KVS_DENSE_TOKEN) ? G_PAD4(2ull * c.T) : 0;
  r.sink = (r.flags & KVS_DENSE_SINK) ? q : NULL;
  q += (r.flags & KVS_DENSE_SINK) ? hd : 0;
  /* bound n_exc before using it to find what follows */
  uint64_t max_exc = (uint64_t)c.T * HD / 16;
  bool room = r.n >= (uint64_t)(q - b) + 4;
  r.n_exc = room ? kvs__rd32(q) : 0;
  room = room && r.n_exc <= max_exc;
  if (!room) r.n_exc = 0;
  r.exc_i = q + 4;
  r.exc_v = r.exc_i + 4ull * r.n_exc;
  q = r.exc_v + G_PAD4(2ull * r.n_exc);
  r.fixed = (uint64_t)(q - b) + 4 + 4ull * c.H * r.nbh;
  r.offs = q + 4;
  r.ok = room && r.n >= 12 && r.n_sym > 0 && b[7] == 0 && r.flags == dense_pflags_dev(c, kv) &&
         r.step > 0.0f && r.step < 1e30f && r.n >= r.fixed && kvs__rd32(q) == r.nbh;
  return r;
}

/* one block of threads per plane: the packed decode table */
__global__ void k_dense_lut(gctx c, uint32_t *lut_all) {
  uint32_t p = c.p0 + blockIdx.x;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE) return;
  const uint8_t *b = c.base + off;
  __shared__ uint32_t cum[257];
  __shared__ int ok;
  dense_hdr hd = dense_parse(c, b, p % 2);
  if (threadIdx.x == 0) {
    uint32_t a = 0;
    for (uint32_t s = 0; hd.ok && s < hd.n_sym; s++)
      cum[s] = a, a += kvs__rd16(b + 12 + 2 * s);
    cum[hd.ok ? hd.n_sym : 0] = a;
    ok = hd.ok && a == KVS_RANS_PROB_SCALE;
    if (!ok) fail(c.flag);
  }
  __syncthreads();
  if (!ok) return;
  uint32_t *lut = lut_all + (uint64_t)p * KVS_RANS_PROB_SCALE;
  for (uint32_t slot = threadIdx.x; slot < KVS_RANS_PROB_SCALE; slot += blockDim.x) {
    uint32_t lo = 0, hi = hd.n_sym; /* largest s with cum[s] <= slot */
    while (hi - lo > 1) {
      uint32_t mid = (lo + hi) / 2;
      if (cum[mid] <= slot)
        lo = mid;
      else
        hi = mid;
    }
    lut[slot] = KVS_RANS_LUT_ENTRY(lo, cum[lo + 1] - cum[lo], slot - cum[lo]);
  }
}

/* One warp per (plane, head, rANS block). Without rotation each decoded
 * symbol is stored at once (32 consecutive elements per step); with it, M
 * steps make one row that is rotated across the warp before the stores. */
template <int M> __global__ void k_dense(gctx c) {
  uint32_t Hs = c.h1 - c.h0, S = c.prm.group;
  uint32_t nbh = (uint32_t)G_CDIV((uint64_t)c.T * c.D, 32ull * S);
  uint64_t per_plane = (uint64_t)Hs * nbh;
  uint64_t item = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  uint32_t lane = threadIdx.x & 31;
  if (item >= per_plane * (c.p1 - c.p0)) return;
  uint32_t p = c.p0 + (uint32_t)(item / per_plane);
  uint32_t r = (uint32_t)(item % per_plane), h = c.h0 + r / nbh, bi = r % nbh;
  uint32_t layer = p / 2, kv = p % 2, D = c.D;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE) return;
  const uint8_t *b = c.base + off;
  dense_hdr hd = dense_parse(c, b, kv);
  if (!hd.ok) return; /* k_dense_lut reported it */
  bool rot = (hd.flags & KVS_DENSE_ROTATED) != 0;
  if (rot != (M > 0)) return; /* the host launched the other variant */
  uint32_t boff = kvs__rd32(hd.offs + 4ull * (h * nbh + bi));
  if (boff < hd.fixed || boff >= hd.n) {
    if (lane == 0) fail(c.flag);
    return;
  }
  uint32_t x;
  rans_block rb = open_block(b + boff, hd.n - boff, lane, &x);
  if (!rb.ok) {
    if (lane == 0) fail(c.flag);
    return;
  }
  const uint32_t *lut = c.lut + (uint64_t)p * KVS_RANS_PROB_SCALE;
  uint64_t per_head = (uint64_t)c.T * D, i0 = (uint64_t)bi * 32 * S;
  uint32_t cnt = (uint32_t)(per_head - i0 < 32ull * S ? per_head - i0 : 32ull * S);
  uint32_t pos = 0;
  bool bad = false;
  float rs = __fdiv_rn(1.0f, __fsqrt_rn((float)D));
  float v[M > 0 ? M : 1];
  for (uint32_t k = 0; k * 32 < cnt; k++) {
    uint32_t i = k * 32 + lane;
    bool act = i < cnt;
    uint32_t s = 0;
    if (act) {
      uint32_t e = lut[x & (KVS_RANS_PROB_SCALE - 1)];
      x = KVS_RANS_LUT_FREQ(e) * (x >> KVS_RANS_PROB_BITS) + KVS_RANS_LUT_BIAS(e);
      s = KVS_RANS_LUT_SYM(e);
    }
    x = renorm(x, act && x < KVS_RANS_L, lane, &pos, rb, &bad);
    if (s >= hd.n_sym) bad = true;
    float q = __fmul_rn((float)(hd.qmin + (int)s), hd.step);
    uint64_t ie = i0 + i;
    uint32_t t = (uint32_t)(ie / D), d = (uint32_t)(ie % D);
    if (M == 0) {
      if (!act) continue;
      float y;
      if (t == 0 && hd.sink) {
        y = raw_f(hd.sink + 2ull * (h * D + d), c.in_dtype);
      } else {
        float g = hd.tok ? f16f(hd.tok + 2ull * t) : 1.0f;
        float cf = hd.chan ? f16f(hd.chan + 2ull * (h * D + d)) : 1.0f;
        y = __fadd_rn(__fmul_rn(__fmul_rn(q, g), cf), f16f(hd.mean + 2ull * (h * D + d)));
      }
      store(c, layer, kv, t, h, d, y);
    } else {
      /* rows are whole inside a block (checked by the host): element
         j*32+lane of the row arrives at step k = row*M + j */
      constexpr uint32_t MM = M > 0 ? M : 1;
      uint32_t j = k % MM;
#pragma unroll
      for (int jj = 0; jj < (int)MM; jj++)
        if (jj == (int)j) v[jj] = q;
      if (j != MM - 1) continue;
        /* the CPU twin's butterflies, in the same order: strides 1..16 across
           lanes, 32.. inside the lane; then the 1/sqrt(D) scale */
#pragma unroll
      for (int jj = 0; jj < M; jj++)
        for (uint32_t st = 1; st < 32; st <<= 1) {
          float o = __shfl_xor_sync(0xffffffffu, v[jj], st);
          v[jj] = (lane & st) ? __fsub_rn(o, v[jj]) : __fadd_rn(v[jj], o);
        }
#pragma unroll
      for (int st = 1; st < M; st <<= 1)
#pragma unroll
        for (int jj = 0; jj < M; jj++)
          if (!(jj & st)) {
            float a = v[jj], bb = v[jj + st];
            v[jj] = __fadd_rn(a, bb);
            v[jj + st] = __fsub_rn(a, bb);
          }
      uint32_t tr = t; /* row of this step's elements */
      float g = hd.tok ? f16f(hd.tok + 2ull * tr) : 1.0f;
#pragma unroll
      for (int jj = 0; jj < M; jj++) {
        uint32_t dd = jj * 32 + lane;
        float y;
        if (tr == 0 && hd.sink) {
          y = raw_f(hd.sink + 2ull * (h * D + dd), c.in_dtype);
        } else {
          float cf = hd.chan ? f16f(hd.chan + 2ull * (h * D + dd)) : 1.0f;
          y = __fadd_rn(__fmul_rn(__fmul_rn(__fmul_rn(v[jj], rs), g), cf),
                        f16f(hd.mean + 2ull * (h * D + dd)));
        }
        store(c, layer, kv, tr, h, dd, y);
      }
    }
  }
  if (!close_block(x, pos, rb, bad) && lane == 0) fail(c.flag);
}

/* Exceptions (elements clipped at +-127 steps) overwrite their decoded
 * value with the exact one: one block per plane, after k_dense. */
__global__ void k_dense_exc(gctx c) {
  uint32_t p = c.p0 + blockIdx.x;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE) return;
  const uint8_t *b = c.base + off;
  dense_hdr hd = dense_parse(c, b, p % 2);
  if (!hd.ok) return;
  uint64_t total = (uint64_t)c.T * c.H * c.D;
  for (uint32_t i = threadIdx.x; i < hd.n_exc; i += blockDim.x) {
    uint32_t si = kvs__rd32(hd.exc_i + 4ull * i);
    if (si >= total || (i > 0 && si <= kvs__rd32(hd.exc_i + 4ull * (i - 1)))) {
      fail(c.flag);
      continue;
    }
    uint32_t h = si / (c.T * c.D), t = (si / c.D) % c.T, d = si % c.D;
    if (h < c.h0 || h >= c.h1) continue;
    store(c, p / 2, p % 2, t, h, d, raw_f(hd.exc_v + 2ull * i, c.in_dtype));
  }
}

/* ------------------------------------------------------------------ host */
struct ws_layout {
  size_t flag, seg_start, seg_len, plane_off, kc, vc, lut, total;
};

ws_layout ws_of(const kvs_codec_info *info) {
  ws_layout w;
  size_t np = 2ull * info->layout.n_layers;
  w.flag = 0;
  w.seg_start = 256;
  w.seg_len = w.seg_start + 8ull * (KVS_CODEC_MAX_SEGMENTS + 1);
  w.plane_off = w.seg_len + 8ull * (KVS_CODEC_MAX_SEGMENTS + 1);
  w.kc = w.plane_off + 8 * np;
  w.vc = w.kc + 8ull * info->layout.n_layers;
  w.lut = (w.vc + 8ull * info->layout.n_layers + 255) & ~(size_t)255;
  w.total = w.lut + (info->profile == KVS_CODEC_DENSE ? 4ull * KVS_RANS_PROB_SCALE * np : 0);
  return w;
}

kvs_err launch(const kvs_codec_info *info, uint32_t g0, uint32_t g1, const uint8_t *d_base,
               uint64_t base_off, const kvs_codec_out *out, void *d_ws, size_t ws_len,
               cudaStream_t st) {
  const kvs_layout *l = &info->layout;
  if (info->profile == KVS_CODEC_LOSSLESS) return KVS_ENOTSUP;
  if (info->profile < 1 || info->profile > KVS_CODEC_PROFILE_MAX) return KVS_ENOTSUP;
  if (!out || !d_base || !d_ws) return KVS_EINVAL;
  ws_layout w = ws_of(info);
  if (ws_len < w.total) return KVS_EINVAL;
  uint32_t h0 = out->head_begin, h1 = out->head_end ? out->head_end : l->n_kv_heads;
  if (h0 >= h1 || h1 > l->n_kv_heads) return KVS_EINVAL;
  if (out->dtype != KVS_DTYPE_F16 && out->dtype != KVS_DTYPE_BF16 && out->dtype != KVS_DTYPE_F32)
    return KVS_EINVAL;
  if (!out->base && (!out->k_cache || !out->v_cache || !out->block_table || !out->block_size ||
                     out->n_layers != l->n_layers))
    return KVS_EINVAL;
  size_t osz = out->dtype == KVS_DTYPE_F32 ? 4 : 2;
  if (out->base &&
      (!out->base_bytes ||
       2ull * l->n_layers * info->n_tokens * (h1 - h0) * l->head_dim * osz > out->base_bytes))
    return KVS_ELAYOUT;
  uint32_t D = l->head_dim;
  int rot_m = 0;
  if (info->profile == KVS_CODEC_DENSE) {
    uint32_t pf = (info->params.k_flags | info->params.v_flags);
    bool pow2 = D >= 2 && (D & (D - 1)) == 0;
    if ((pf & KVS_DENSE_ROTATED) && pow2) {
      if (D != 32 && D != 64 && D != 128) return KVS_ENOTSUP;
      if ((32ull * info->params.group) % D) return KVS_ENOTSUP;
      rot_m = (int)(D / 32);
    }
  }
  uint8_t *ws = (uint8_t *)d_ws;
  static_assert(sizeof(seg_table) <= 2048, "kernel parameters stay small");
  seg_table segs;
  for (uint32_t g = 0; g < info->n_segments; g++) {
    segs.start[g] = info->seg_offset[g] - base_off;
    segs.len[g] = info->seg_offset[g + 1] - info->seg_offset[g];
  }
  KVS_CUDA_TRY(cudaMemsetAsync(ws + w.flag, 0, 4, st)); /* status: this call only */
  if (!out->base) {
    KVS_CUDA_TRY(
        cudaMemcpyAsync(ws + w.kc, out->k_cache, 8ull * l->n_layers, cudaMemcpyHostToDevice, st));
    KVS_CUDA_TRY(
        cudaMemcpyAsync(ws + w.vc, out->v_cache, 8ull * l->n_layers, cudaMemcpyHostToDevice, st));
    /* the caller's pointer arrays may change once we return */
    KVS_CUDA_TRY(cudaStreamSynchronize(st));
  }
  int *flag = (int *)(ws + w.flag);
  uint64_t *plane_off = (uint64_t *)(ws + w.plane_off);
  k_walk<<<G_CDIV(g1 - g0, 64u), 64, 0, st>>>(d_base, segs, g0, g1, info->layers_per_group,
                                              l->n_layers, plane_off, flag);
  KVS_CUDA_TRY(cudaGetLastError());
  gctx c;
  memset(&c, 0, sizeof c);
  c.base = d_base;
  c.plane_off = plane_off;
  c.lut = (const uint32_t *)(ws + w.lut);
  c.p0 = 2 * g0 * info->layers_per_group;
  c.p1 =
      2 * (g1 * info->layers_per_group < l->n_layers ? g1 * info->layers_per_group : l->n_layers);
  c.T = info->n_tokens, c.H = l->n_kv_heads, c.D = D, c.h0 = h0, c.h1 = h1;
  c.n_layers = l->n_layers, c.in_dtype = l->dtype, c.prm = info->params, c.flag = flag;
  c.o.dtype = out->dtype, c.o.T = info->n_tokens, c.o.Hs = h1 - h0, c.o.D = D, c.o.h0 = h0;
  c.o.paged = out->base ? 0 : 1;
  c.o.base = out->base;
  c.o.bs = out->block_size, c.o.num_blocks = out->num_blocks, c.o.bt = out->block_table;
  c.o.kc = (void *const *)(ws + w.kc), c.o.vc = (void *const *)(ws + w.vc);
  uint32_t np = c.p1 - c.p0, tpb = 256;
  uint64_t warps;
  switch (info->profile) {
  case KVS_CODEC_INT8:
  case KVS_CODEC_KIVI2:
  case KVS_CODEC_KIVI4:
  case KVS_CODEC_FP4: {
    warps = (uint64_t)np * c.T * (h1 - h0);
    unsigned grid = (unsigned)G_CDIV(warps * 32, (uint64_t)tpb);
    if (info->profile == KVS_CODEC_INT8)
      k_fixed<KVS_CODEC_INT8><<<grid, tpb, 0, st>>>(c);
    else if (info->profile == KVS_CODEC_KIVI2)
      k_fixed<KVS_CODEC_KIVI2><<<grid, tpb, 0, st>>>(c);
    else if (info->profile == KVS_CODEC_KIVI4)
      k_fixed<KVS_CODEC_KIVI4><<<grid, tpb, 0, st>>>(c);
    else
      k_fixed<KVS_CODEC_FP4><<<grid, tpb, 0, st>>>(c);
    break;
  }
  case KVS_CODEC_CACHEGEN: {
    uint32_t b_lo = h0 * D / 32, b_hi = G_CDIV(h1 * D, 32u);
    warps = (uint64_t)np * (b_hi - b_lo);
    k_cachegen<<<(unsigned)G_CDIV(warps * 32, 128ull), 128, 0, st>>>(c);
    break;
  }
  case KVS_CODEC_DENSE: {
    k_dense_lut<<<np, 256, 0, st>>>(c, (uint32_t *)(ws + w.lut));
    KVS_CUDA_TRY(cudaGetLastError());
    uint32_t nbh = (uint32_t)G_CDIV((uint64_t)c.T * D, 32ull * c.prm.group);
    warps = (uint64_t)np * (h1 - h0) * nbh;
    unsigned grid = (unsigned)G_CDIV(warps * 32, 128ull);
    /* K and V planes may differ in rotation: both variants run, each
       decodes the planes whose flags it matches */
    k_dense<0><<<grid, 128, 0, st>>>(c);
    if (rot_m == 1) k_dense<1><<<grid, 128, 0, st>>>(c);
    if (rot_m == 2) k_dense<2><<<grid, 128, 0, st>>>(c);
    if (rot_m == 4) k_dense<4><<<grid, 128, 0, st>>>(c);
    KVS_CUDA_TRY(cudaGetLastError());
    k_dense_exc<<<np, 256, 0, st>>>(c); /* after the rows it overwrites */
    break;
  }
  default: return KVS_ENOTSUP;
  }
  KVS_CUDA_TRY(cudaGetLastError());
  return KVS_OK;
}

} // namespace

extern "C" size_t kvs_gpu_codec_workspace_bound(const kvs_codec_info *info) {
  return info ? ws_of(info).total : 0;
}

extern "C" kvs_err kvs_gpu_codec_decode(const kvs_codec_info *info, const void *d_bytes,
                                        const kvs_codec_out *out, void *d_ws, size_t ws_len,
                                        void *stream) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (!info || info->n_segments == 0 || info->n_segments > KVS_CODEC_MAX_SEGMENTS)
    return KVS_EINVAL;
  return launch(info, 0, info->n_segments, (const uint8_t *)d_bytes, 0, out, d_ws, ws_len,
                (cudaStream_t)stream);
}

extern "C" kvs_err kvs_gpu_codec_decode_segment(const kvs_codec_info *info, uint32_t g,
                                                const void *d_seg, const kvs_codec_out *out,
                                                void *d_ws, size_t ws_len, void *stream) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (!info || g >= info->n_segments || info->n_segments > KVS_CODEC_MAX_SEGMENTS)
    return KVS_EINVAL;
  return launch(info, g, g + 1, (const uint8_t *)d_seg, info->seg_offset[g], out, d_ws, ws_len,
                (cudaStream_t)stream);
}

extern "C" kvs_err kvs_gpu_codec_workspace_init(void *d_ws, void *stream) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (!d_ws) return KVS_EINVAL;
  KVS_CUDA_TRY(cudaMemsetAsync(d_ws, 0, 256, (cudaStream_t)stream));
  return KVS_OK;
}

extern "C" kvs_err kvs_gpu_codec_status(void *d_ws, void *stream) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  if (!d_ws) return KVS_EINVAL;
  int flag = 0;
  KVS_CUDA_TRY(cudaMemcpyAsync(&flag, d_ws, 4, cudaMemcpyDeviceToHost, (cudaStream_t)stream));
  KVS_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)stream));
  if (flag) KVS_CUDA_TRY(cudaMemset(d_ws, 0, 4)); /* the next call starts clean */
  return flag ? KVS_ERR_AT(KVS_ECORRUPT, "GPU decode found a malformed stream") : KVS_OK;
}
