/* codec.cu - GPU decode of every lossy codec profile (see kvs_gpu_codec.h).
 *
 * A few launches per call, whatever the number of segments:
 *   k_walk     one thread per segment: checks the segment header, finds
 *              every plane's offset (planes are length-prefixed);
 *   k_dense_lut / nothing   per dense plane, the 4096-entry rANS table;
 *   k_<profile> warps over (plane, row) or (plane, head, rANS block)
 *              (dense: one launch, two where only K or V is rotated, then
 *              k_dense_exc for the exceptions).
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

/* the output row (t, h) of plane (layer, kv): the address of its element
 * 0, or NULL where a paged block is out of range (reported) */
__device__ __forceinline__ uint8_t *out_row(const gctx &c, uint32_t layer, uint32_t kv, uint32_t t,
                                            uint32_t h) {
  const gout &o = c.o;
  uint64_t row;
  uint8_t *dst;
  if (!o.paged) {
    row = ((uint64_t)(2u * layer + kv) * o.T + t) * o.Hs + (h - o.h0);
    dst = (uint8_t *)o.base;
  } else {
    int32_t blk = o.bt[t / o.bs];
    if (blk < 0 || (uint32_t)blk >= o.num_blocks) {
      fail(c.flag);
      return NULL;
    }
    row = ((uint64_t)blk * o.bs + t % o.bs) * o.Hs + (h - o.h0);
    dst = (uint8_t *)(kv ? o.vc[layer] : o.kc[layer]);
  }
  return dst + row * o.D * (o.dtype == KVS_DTYPE_F32 ? 4u : 2u);
}

__device__ __forceinline__ void put(uint8_t *row, uint32_t d, uint32_t dtype, float v) {
  if (dtype == KVS_DTYPE_F32) {
    ((float *)row)[d] = v;
  } else if (dtype == KVS_DTYPE_F16) {
    ((__half *)row)[d] = __float2half_rn(v);
  } else {
    ((__nv_bfloat16 *)row)[d] = __float2bfloat16_rn(v);
  }
}

__device__ __forceinline__ void store(const gctx &c, uint32_t layer, uint32_t kv, uint32_t t,
                                      uint32_t h, uint32_t d, float v) {
  uint8_t *row = out_row(c, layer, kv, t, h);
  if (row) put(row, d, c.o.dtype, v);
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

/* The rANS words of one dense block, read ahead into registers: a window
 * of 128 words from `base` (a multiple of 64), lane j holding the pairs of
 * words base+2j, base+2j+1 (lo) and base+64+2j, base+65+2j (hi). A lane
 * that renormalizes takes its word from the lane that holds it by a shuffle,
 * so no global load sits on the decoder's serial path; when the low half is
 * used up the window slides and the next 64 words are loaded, some 8 steps
 * before they are needed. Pair i lies inside the block's checked bytes for
 * i < npairs (a block is padded to 4 bytes), and only words k < nw are
 * used, as by renorm(). */
struct rans_window {
  const uint8_t *w; /* word 0 */
  uint32_t nw, npairs, base, pos, lo, hi;
  bool al4; /* w is 4-byte aligned: one 32-bit load per pair */
};

__device__ __forceinline__ uint32_t win_pair(const rans_window &rw, uint32_t i) {
  if (i >= rw.npairs) return 0;
  const uint8_t *a = rw.w + 4ull * i;
  return rw.al4 ? __ldg((const unsigned int *)a) : kvs__rd32(a);
}

/* open_block() with the window: false (for the whole warp) when malformed */
__device__ __forceinline__ bool open_window(const uint8_t *blk, uint64_t avail, uint32_t lane,
                                            uint32_t *x, rans_window *rw) {
  bool ok = avail >= KVS_RANS_BLOCK_HDR;
  uint32_t nw = ok ? kvs__rd32(blk) : 0;
  ok = ok && G_PAD4(KVS_RANS_BLOCK_HDR + 2ull * nw) <= avail;
  *x = ok ? kvs__rd32(blk + 4 + 4 * lane) : KVS_RANS_L;
  ok = __all_sync(0xffffffffu, ok && *x >= KVS_RANS_L);
  if (!ok) return false;
  rw->w = blk + KVS_RANS_BLOCK_HDR;
  rw->nw = nw, rw->npairs = nw / 2 + (nw & 1u);
  rw->al4 = ((uintptr_t)rw->w & 3u) == 0;
  rw->base = 0, rw->pos = 0;
  rw->lo = win_pair(*rw, lane);
  rw->hi = win_pair(*rw, 32 + lane);
  return true;
}

/* renorm() from the window; lt: the lanes below this one */
__device__ __forceinline__ uint32_t renorm_win(uint32_t x, bool need, uint32_t lane, uint32_t lt,
                                               rans_window *rw, bool *bad) {
  uint32_t m = __ballot_sync(0xffffffffu, need);
  uint32_t k = rw->pos + __popc(m & lt), idx = k - rw->base; /* idx < 96 */
  uint32_t src = (idx >> 1) & 31u;
  uint32_t a = __shfl_sync(0xffffffffu, rw->lo, src), b = __shfl_sync(0xffffffffu, rw->hi, src);
  uint32_t pair = idx < 64 ? a : b, word = (idx & 1u) ? pair >> 16 : pair & 0xffffu;
  if (need) {
    if (k < rw->nw)
      x = (x << 16) | word;
    else
      *bad = true;
  }
  rw->pos += __popc(m);
  if (rw->pos - rw->base >= 64) { /* the same for every lane */
    rw->base += 64;
    rw->lo = rw->hi;
    rw->hi = win_pair(*rw, rw->base / 2 + 32 + lane);
  }
  return x;
}

/* one step of the warp's rANS block: the symbol of each active lane (0 for
 * the others); lut is the plane's table in shared memory */
__device__ __forceinline__ uint32_t dense_sym(uint32_t *x, bool act, const uint32_t *lut,
                                              uint32_t lane, uint32_t lt, rans_window *rw,
                                              bool *bad) {
  uint32_t s = 0;
  if (act) {
    uint32_t e = lut[*x & (KVS_RANS_PROB_SCALE - 1)];
    *x = KVS_RANS_LUT_FREQ(e) * (*x >> KVS_RANS_PROB_BITS) + KVS_RANS_LUT_BIAS(e);
    s = KVS_RANS_LUT_SYM(e);
  }
  *x = renorm_win(*x, act && *x < KVS_RANS_L, lane, lt, rw, bad);
  return s;
}

/* the CPU twin's checks of a dense plane's scales: finite channel means,
 * channel and token scales positive and finite */
__device__ __forceinline__ bool dense_scales_ok(float mean, float chan, float tok) {
  return isfinite(mean) && chan > 0.0f && chan < INFINITY && tok > 0.0f && tok < INFINITY;
}

/* Any head_dim, element by element, no rotation: element i0+32k+lane at
 * step k. (t, d) advance by 32 elements a step, so no division per element. */
__device__ __forceinline__ void dense_elems(const gctx &c, const dense_hdr &hd, const uint32_t *lut,
                                            uint32_t p, uint32_t h, uint32_t bi, uint32_t lane,
                                            uint32_t *x, rans_window *rw, bool *bad) {
  uint32_t layer = p / 2, kv = p % 2, D = c.D, S = c.prm.group, lt = (1u << lane) - 1u;
  uint64_t per_head = (uint64_t)c.T * D, i0 = (uint64_t)bi * 32 * S;
  uint32_t cnt = (uint32_t)(per_head - i0 < 32ull * S ? per_head - i0 : 32ull * S);
  uint32_t t = (uint32_t)(i0 / D), d = (uint32_t)(i0 % D) + lane;
  t += d / D, d %= D;
  uint32_t dt = 32 / D, dd = 32 % D; /* a step: 32 = dt rows + dd elements */
  for (uint32_t k = 0; k * 32 < cnt; k++) {
    bool act = k * 32 + lane < cnt;
    uint32_t s = dense_sym(x, act, lut, lane, lt, rw, bad);
    if (s >= hd.n_sym) *bad = true;
    if (act) {
      float q = __fmul_rn((float)(hd.qmin + (int)s), hd.step);
      uint32_t ch = h * D + d;
      float g = hd.tok ? f16f(hd.tok + 2ull * t) : 1.0f;
      float cf = hd.chan ? f16f(hd.chan + 2ull * ch) : 1.0f;
      float mf = f16f(hd.mean + 2ull * ch);
      if (!dense_scales_ok(mf, cf, g)) *bad = true;
      float y = t == 0 && hd.sink ? raw_f(hd.sink + 2ull * ch, c.in_dtype)
                                  : __fadd_rn(__fmul_rn(__fmul_rn(q, g), cf), mf);
      store(c, layer, kv, t, h, d, y);
    }
    d += dd, t += dt;
    if (d >= D) d -= D, t++;
  }
}

/* store one element of an output row, OUT a KVS_DTYPE_* known at compile time */
template <uint32_t OUT> __device__ __forceinline__ void put_as(uint8_t *row, uint32_t d, float v) {
  if (OUT == KVS_DTYPE_F32)
    ((float *)row)[d] = v;
  else if (OUT == KVS_DTYPE_F16)
    ((__half *)row)[d] = __float2half_rn(v);
  else
    ((__nv_bfloat16 *)row)[d] = __float2bfloat16_rn(v);
}

/* head_dim = 32*DM and blocks of whole rows (the host checks): the DM steps
 * of row t give its elements j*32+lane, j < DM. Channel means and scales
 * stay in registers; the token scale, the row's address and whether it is
 * the sink are found once a row, the output dtype (OUT) at compile time.
 * ROT: the row is rotated across the warp first (the CPU twin's
 * butterflies, in the same order), then scaled by 1/sqrt(D). */
template <int DM, bool ROT, uint32_t OUT>
__device__ __forceinline__ void dense_rows(const gctx &c, const dense_hdr &hd, const uint32_t *lut,
                                           uint32_t p, uint32_t h, uint32_t bi, uint32_t lane,
                                           uint32_t *x, rans_window *rw, bool *bad) {
  constexpr uint32_t D = 32u * DM;
  uint32_t layer = p / 2, kv = p % 2, lt = (1u << lane) - 1u;
  uint32_t rpb = 32u * c.prm.group / D; /* rows per rANS block */
  uint32_t t0 = bi * rpb, rows = c.T - t0 < rpb ? c.T - t0 : rpb;
  uint64_t ch0 = (uint64_t)h * D + lane; /* channel of element j: ch0 + 32j */
  float mf[DM], cf[DM];
#pragma unroll
  for (int j = 0; j < DM; j++) {
    mf[j] = f16f(hd.mean + 2 * (ch0 + 32 * j));
    cf[j] = hd.chan ? f16f(hd.chan + 2 * (ch0 + 32 * j)) : 1.0f;
    if (!dense_scales_ok(mf[j], cf[j], 1.0f)) *bad = true;
  }
  float rs = ROT ? __fdiv_rn(1.0f, __fsqrt_rn((float)D)) : 1.0f;
  for (uint32_t r = 0; r < rows; r++) {
    uint32_t t = t0 + r;
    float g = hd.tok ? f16f(hd.tok + 2ull * t) : 1.0f; /* loads while the row decodes */
    if (!dense_scales_ok(0.0f, 1.0f, g)) *bad = true;
    float v[DM];
#pragma unroll
    for (int j = 0; j < DM; j++) {
      uint32_t s = dense_sym(x, true, lut, lane, lt, rw, bad);
      if (s >= hd.n_sym) *bad = true;
      v[j] = __fmul_rn((float)(hd.qmin + (int)s), hd.step);
    }
    if (ROT) {
      /* strides 1..16 across lanes, 32.. inside the lane */
#pragma unroll
      for (int j = 0; j < DM; j++)
#pragma unroll
        for (uint32_t st = 1; st < 32; st <<= 1) {
          float o = __shfl_xor_sync(0xffffffffu, v[j], st);
          v[j] = (lane & st) ? __fsub_rn(o, v[j]) : __fadd_rn(v[j], o);
        }
#pragma unroll
      for (int st = 1; st < DM; st <<= 1)
#pragma unroll
        for (int j = 0; j < DM; j++)
          if (!(j & st)) {
            float a = v[j], b = v[j + st];
            v[j] = __fadd_rn(a, b);
            v[j + st] = __fsub_rn(a, b);
          }
    }
    uint8_t *dst = out_row(c, layer, kv, t, h);
    if (!dst) continue;      /* reported */
    if (t == 0 && hd.sink) { /* token 0 kept exact */
#pragma unroll
      for (int j = 0; j < DM; j++)
        put_as<OUT>(dst, j * 32 + lane, raw_f(hd.sink + 2 * (ch0 + 32 * j), c.in_dtype));
      continue;
    }
#pragma unroll
    for (int j = 0; j < DM; j++) {
      float y = ROT ? __fadd_rn(__fmul_rn(__fmul_rn(__fmul_rn(v[j], rs), g), cf[j]), mf[j])
                    : __fadd_rn(__fmul_rn(__fmul_rn(v[j], g), cf[j]), mf[j]);
      put_as<OUT>(dst, j * 32 + lane, y);
    }
  }
}

/* warps per thread block of k_dense; a thread block decodes one plane */
#define DENSE_WARPS 4

/* One warp per (plane, head, rANS block); a thread block holds DENSE_WARPS
 * of one plane (plane c.p0 + pfirst + blockIdx.y * pstride), parses its
 * header once and copies its decode table into shared memory. DM > 0: rows
 * of 32*DM elements (dense_rows), else dense_elems. ROT: the planes are
 * rotated (the host launches K and V planes apart where they differ). */
template <int DM, bool ROT>
__global__ void __launch_bounds__(32 * DENSE_WARPS)
    k_dense(gctx c, uint32_t pfirst, uint32_t pstride) {
  __shared__ uint32_t lut[KVS_RANS_PROB_SCALE];
  __shared__ dense_hdr shd;
  uint32_t p = c.p0 + pfirst + blockIdx.y * pstride, lane = threadIdx.x & 31;
  uint64_t off = c.plane_off[p];
  if (off == NO_PLANE) return; /* the whole thread block */
  const uint8_t *b = c.base + off;
  if (threadIdx.x == 0) shd = dense_parse(c, b, p % 2);
  __syncthreads();
  if (!shd.ok) return; /* k_dense_lut reported it */
  const uint32_t *glut = c.lut + (uint64_t)p * KVS_RANS_PROB_SCALE;
  for (uint32_t i = threadIdx.x; i < KVS_RANS_PROB_SCALE; i += blockDim.x)
    lut[i] = glut[i];
  __syncthreads();
  const dense_hdr hd = shd;
  uint64_t item = (uint64_t)blockIdx.x * DENSE_WARPS + threadIdx.x / 32;
  if (item >= (uint64_t)(c.h1 - c.h0) * hd.nbh) return;
  uint32_t h = c.h0 + (uint32_t)(item / hd.nbh), bi = (uint32_t)(item % hd.nbh);
  if (((hd.flags & KVS_DENSE_ROTATED) != 0) != ROT) { /* the host's choice: cannot happen */
    if (lane == 0) fail(c.flag);
    return;
  }
  uint32_t boff = kvs__rd32(hd.offs + 4ull * (h * hd.nbh + bi));
  if (boff < hd.fixed || boff >= hd.n) {
    if (lane == 0) fail(c.flag);
    return;
  }
  uint32_t x;
  rans_window rw;
  if (!open_window(b + boff, hd.n - boff, lane, &x, &rw)) {
    if (lane == 0) fail(c.flag);
    return;
  }
  bool bad = false;
  constexpr int R = DM ? DM : 1; /* k_dense<0> never takes that branch */
  if (DM == 0)
    dense_elems(c, hd, lut, p, h, bi, lane, &x, &rw, &bad);
  else if (c.o.dtype == KVS_DTYPE_F16)
    dense_rows<R, ROT, KVS_DTYPE_F16>(c, hd, lut, p, h, bi, lane, &x, &rw, &bad);
  else if (c.o.dtype == KVS_DTYPE_BF16)
    dense_rows<R, ROT, KVS_DTYPE_BF16>(c, hd, lut, p, h, bi, lane, &x, &rw, &bad);
  else
    dense_rows<R, ROT, KVS_DTYPE_F32>(c, hd, lut, p, h, bi, lane, &x, &rw, &bad);
  if (!__all_sync(0xffffffffu, !bad && x == KVS_RANS_L && rw.pos == rw.nw) && lane == 0)
    fail(c.flag);
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

/* k_dense for `dm` (see launch) over the planes pfirst, pfirst + pstride, ...
 * of [c.p0, c.p1): grid (thread blocks per plane, planes) */
void launch_dense(uint32_t dm, bool rot, const gctx &c, uint32_t pfirst, uint32_t pstride,
                  dim3 grid, cudaStream_t st) {
  unsigned tpb = 32 * DENSE_WARPS;
  if (rot) { /* head_dim 32, 64 or 128 */
    if (dm == 1) k_dense<1, true><<<grid, tpb, 0, st>>>(c, pfirst, pstride);
    if (dm == 2) k_dense<2, true><<<grid, tpb, 0, st>>>(c, pfirst, pstride);
    if (dm == 4) k_dense<4, true><<<grid, tpb, 0, st>>>(c, pfirst, pstride);
    return;
  }
  switch (dm) {
  case 1: k_dense<1, false><<<grid, tpb, 0, st>>>(c, pfirst, pstride); break;
  case 2: k_dense<2, false><<<grid, tpb, 0, st>>>(c, pfirst, pstride); break;
  case 4: k_dense<4, false><<<grid, tpb, 0, st>>>(c, pfirst, pstride); break;
  case 8: k_dense<8, false><<<grid, tpb, 0, st>>>(c, pfirst, pstride); break;
  default: k_dense<0, false><<<grid, tpb, 0, st>>>(c, pfirst, pstride); break;
  }
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
  if (info->profile == KVS_CODEC_DENSE) {
    /* rotation: rows of one warp step or a few, whole inside a rANS block */
    uint32_t pf = (info->params.k_flags | info->params.v_flags);
    bool pow2 = D >= 2 && (D & (D - 1)) == 0;
    if ((pf & KVS_DENSE_ROTATED) && pow2) {
      if (D != 32 && D != 64 && D != 128) return KVS_ENOTSUP;
      if ((32ull * info->params.group) % D) return KVS_ENOTSUP;
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
    /* rows of 32, 64, 128 or 256 elements that no rANS block splits go
       row by row (rotation implies it: checked above), else element by
       element */
    uint32_t S = c.prm.group, dm = D % 32 == 0 && (32ull * S) % D == 0 ? D / 32 : 0;
    if (dm != 1 && dm != 2 && dm != 4 && dm != 8) dm = 0;
    bool pow2 = D >= 2 && (D & (D - 1)) == 0;
    bool rot_k = pow2 && (c.prm.k_flags & KVS_DENSE_ROTATED);
    bool rot_v = pow2 && (c.prm.v_flags & KVS_DENSE_ROTATED);
    uint32_t nbh = (uint32_t)G_CDIV((uint64_t)c.T * D, 32ull * S);
    unsigned bx = (unsigned)G_CDIV((uint64_t)(h1 - h0) * nbh, (uint64_t)DENSE_WARPS);
    if (rot_k == rot_v) {
      launch_dense(dm, rot_k, c, 0, 1, dim3(bx, np), st);
    } else { /* K planes are even, V planes odd */
      launch_dense(dm, rot_k, c, 0, 2, dim3(bx, np / 2), st);
      launch_dense(dm, rot_v, c, 1, 2, dim3(bx, np / 2), st);
    }
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
