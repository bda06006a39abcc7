/* codec_enc.cu - GPU encode of the dense profile (see kvs_gpu_codec.h).
 *
 * Bytes identical to the CPU encoder (codec/prof_entropy.c dense_enc): every
 * reduction runs in the CPU's order on one thread (per channel over tokens,
 * per token over the row, per plane over the tokens' sums), every float and
 * double operation is an explicit round-to-nearest intrinsic (no FMA
 * contraction), and the f16/bf16 conversions are the shared kvs_half.h ones.
 * Kernels, all planes of the chunk at once:
 *   k_chan      thread per (plane, channel): mean, channel RMS
 *   k_tok       thread per (plane, token): normalised row (+ rotation), token
 *               RMS, the row's sum of squares
 *   k_step      thread per plane: the quantizer step
 *   k_quant     thread per symbol: q, clip flag, min/max
 *   k_hist      block of 1024 symbols: shift by qmin, histogram, clip count
 *   k_exc_scan / k_exc_write: the exception list in symbol order, capped
 *   (host: frequencies, as the CPU encoder normalises them)
 *   k_rans      warp per rANS block: lane j encodes its symbols backwards,
 *               words placed by ballot in the order the CPU encoder emits
 *   (host: plane and block offsets)
 *   k_pack_fixed / k_pack_blocks: the plane bodies
 * The host copies the bodies back and wraps them in the container
 * (kvs_codec_encode_planes: headers, directory, checksums). */
#include <math.h>
#include <atomic>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu_codec.h"
#include "kvs_gpu_int.h"

extern "C" kvs_err kvs__rans_normalize(const uint32_t *counts, uint32_t n, uint16_t *freq);

#define E_PAD4(n)    (((n) + 3ull) & ~3ull)
#define E_CDIV(a, b) (((a) + (b)-1) / (b))
#define E_CHUNK      1024u /* symbols per k_hist block (exception counting unit) */

namespace {

/* 8-byte multiple: host scratch lays [P] of these after a u64 array */
struct enc_stat {
  float step;
  int qmin, qmax;
  uint32_t n_exc_raw;
  uint32_t counts[256];
};
static_assert(sizeof(enc_stat) % 8 == 0, "enc_stat keeps the host scratch aligned");

struct enc_ctx {
  const uint16_t *kv; /* (2*n_layers, T, H, D) f16 or bf16 */
  uint32_t dtype, T, H, D, HD, S, nbh, P, max_exc, nchunks;
  uint64_t n;              /* T*H*D */
  const uint32_t *flags;   /* [P] */
  const float *rel;        /* [P] step / RMS */
  float *y;                /* [P][T][H][D] normalised (rotated) values */
  uint8_t *sym;            /* [P][H][T][D] */
  uint8_t *excf;           /* [P][H][T][D] clip flags */
  float *mean, *cs;        /* [P][HD] */
  float *ts;               /* [P][T] */
  double *ssp;             /* [P][T] */
  enc_stat *st;            /* [P] */
  uint32_t *chunk;         /* [P][nchunks] */
  uint32_t *exc;           /* [P][max_exc] */
  const uint32_t *freq;    /* [P][256] */
  const uint32_t *cum;     /* [P][256] */
  uint32_t *nw;            /* [P][H][nbh] */
  uint32_t *states;        /* [P][H][nbh][32] */
  uint16_t *words;         /* [P][H][nbh][32*S] in encoder order */
  const uint64_t *pl_off;  /* [P] body offset in out */
  const uint32_t *pl_info; /* [P][4]: body bytes, n_sym, n_exc, 0 */
  const uint32_t *blk_off; /* [P][H][nbh] from the plane start */
  uint8_t *out;
};

__device__ __forceinline__ float ld(const enc_ctx &c, uint32_t p, uint64_t i) {
  uint16_t h = c.kv[(uint64_t)p * c.n + i];
  return c.dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(h) : kvs_f16_to_f32(h);
}

__device__ __forceinline__ uint16_t to_in(const enc_ctx &c, float v) {
  return c.dtype == KVS_DTYPE_BF16 ? kvs_f32_to_bf16(v) : kvs_f32_to_f16(v);
}

__device__ __forceinline__ float f16r(float x) { return kvs_f16_to_f32(kvs_f32_to_f16(x)); }

/* prof_entropy.c f16_scale */
__device__ __forceinline__ float f16_scale(double v) {
  if (!(v >= 6.2e-5)) return 1.0f;
  if (v > 65504.0) return 65504.0f;
  return f16r((float)v);
}

__device__ __forceinline__ uint32_t t0_of(const enc_ctx &c, uint32_t p) {
  return (c.flags[p] & KVS_DENSE_SINK) && c.T > 1 ? 1u : 0u;
}

/* codec_int.h kvs__fwht, operation for operation */
__device__ void fwht(float *x, uint32_t n) {
  if (n >= 4) {
    for (uint32_t i = 0; i < n; i += 4) {
      float a = x[i], b = x[i + 1], cc = x[i + 2], d = x[i + 3];
      float s0 = __fadd_rn(a, b), s1 = __fsub_rn(a, b), s2 = __fadd_rn(cc, d),
            s3 = __fsub_rn(cc, d);
      x[i] = __fadd_rn(s0, s2), x[i + 1] = __fadd_rn(s1, s3), x[i + 2] = __fsub_rn(s0, s2),
      x[i + 3] = __fsub_rn(s1, s3);
    }
  } else if (n == 2) {
    float a = x[0], b = x[1];
    x[0] = __fadd_rn(a, b), x[1] = __fsub_rn(a, b);
  }
  for (uint32_t len = 4; len < n; len <<= 1)
    for (uint32_t i = 0; i < n; i += len << 1)
      for (uint32_t j = 0; j < len; j++) {
        float a = x[i + j], b = x[i + len + j];
        x[i + j] = __fadd_rn(a, b);
        x[i + len + j] = __fsub_rn(a, b);
      }
  float s = __fdiv_rn(1.0f, __fsqrt_rn((float)n));
  for (uint32_t i = 0; i < n; i++)
    x[i] = __fmul_rn(x[i], s);
}

__global__ void k_chan(enc_ctx c) {
  uint64_t id = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= (uint64_t)c.P * c.HD) return;
  uint32_t p = (uint32_t)(id / c.HD), ch = (uint32_t)(id % c.HD);
  uint32_t t0 = t0_of(c, p), Ts = c.T - t0;
  double m = 0;
  for (uint32_t t = t0; t < c.T; t++) {
    float v = ld(c, p, (uint64_t)t * c.HD + ch);
    if (isfinite(v)) m = __dadd_rn(m, (double)v);
  }
  m = __ddiv_rn(m, (double)Ts);
  float mf = f16r((float)(m > 65504 ? 65504 : m < -65504 ? -65504 : m));
  float csv = 1.0f;
  if (c.flags[p] & KVS_DENSE_CHAN) {
    float acc = 0;
    for (uint32_t t = 0; t < c.T; t++) {
      float v = __fsub_rn(ld(c, p, (uint64_t)t * c.HD + ch), mf);
      float yv = isfinite(v) && t >= t0 ? v : 0.0f;
      acc = __fadd_rn(acc, __fmul_rn(yv, yv));
    }
    csv = f16_scale(sqrt((double)__fdiv_rn(acc, (float)Ts)));
  }
  c.mean[id] = mf;
  c.cs[id] = csv;
}

__global__ void k_tok(enc_ctx c) {
  uint64_t id = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= (uint64_t)c.P * c.T) return;
  uint32_t p = (uint32_t)(id / c.T), t = (uint32_t)(id % c.T), f = c.flags[p];
  uint32_t t0 = t0_of(c, p), HD = c.HD;
  float *r = c.y + (uint64_t)p * c.n + (uint64_t)t * HD;
  const float *mean = c.mean + (uint64_t)p * HD, *cs = c.cs + (uint64_t)p * HD;
  for (uint32_t ch = 0; ch < HD; ch++) {
    float v = __fsub_rn(ld(c, p, (uint64_t)t * HD + ch), mean[ch]);
    float yv = isfinite(v) && t >= t0 ? v : 0.0f;
    if (f & KVS_DENSE_CHAN) yv = __fdiv_rn(yv, cs[ch]);
    r[ch] = yv;
  }
  float tsv = 1.0f;
  if (f & KVS_DENSE_TOKEN) {
    double ss = 0;
    for (uint32_t ch = 0; ch < HD; ch++)
      ss = __dadd_rn(ss, __dmul_rn((double)r[ch], (double)r[ch]));
    tsv = f16_scale(sqrt(__ddiv_rn(ss, (double)HD)));
    for (uint32_t ch = 0; ch < HD; ch++)
      r[ch] = __fdiv_rn(r[ch], tsv);
  }
  if (f & KVS_DENSE_ROTATED)
    for (uint32_t h = 0; h < c.H; h++)
      fwht(r + h * c.D, c.D);
  double st = 0;
  for (uint32_t ch = 0; ch < HD; ch++)
    st = __dadd_rn(st, __dmul_rn((double)r[ch], (double)r[ch]));
  c.ts[id] = tsv;
  c.ssp[id] = st;
}

__global__ void k_step(enc_ctx c) {
  uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= c.P) return;
  double ss = 0;
  for (uint32_t t = 0; t < c.T; t++)
    ss = __dadd_rn(ss, c.ssp[(uint64_t)p * c.T + t]);
  uint32_t Ts = c.T - t0_of(c, p);
  double rms = sqrt(__ddiv_rn(ss, __dmul_rn((double)Ts, (double)c.HD)));
  float s = (float)__dmul_rn((double)c.rel[p], rms);
  enc_stat *st = c.st + p;
  st->step = s > 1e-30f && s < 1e30f ? s : 1.0f;
  st->qmin = 127, st->qmax = -127, st->n_exc_raw = 0;
  for (int i = 0; i < 256; i++)
    st->counts[i] = 0;
}

/* grid (symbols / 256, P) */
__global__ void k_quant(enc_ctx c) {
  uint32_t p = blockIdx.y;
  uint64_t si = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int q = 0;
  bool live = si < c.n;
  if (live) {
    uint32_t TD = c.T * c.D, h = (uint32_t)(si / TD), rem = (uint32_t)(si % TD);
    uint32_t t = rem / c.D, d = rem % c.D;
    uint64_t xi = ((uint64_t)t * c.H + h) * c.D + d;
    float r = __fdiv_rn(c.y[(uint64_t)p * c.n + xi], c.st[p].step);
    if (!(r == r))
      q = 0;
    else if (r <= -127.0f)
      q = -127;
    else if (r >= 127.0f)
      q = 127;
    else
      q = __float2int_rn(r);
    c.sym[(uint64_t)p * c.n + si] = (uint8_t)(int8_t)q;
    c.excf[(uint64_t)p * c.n + si] = !(fabsf(r) <= 127.5f) && isfinite(ld(c, p, xi));
  }
  int lo = live ? q : 127, hi = live ? q : -127;
  for (int o = 16; o > 0; o >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMin(&c.st[p].qmin, lo);
    atomicMax(&c.st[p].qmax, hi);
  }
}

/* grid (nchunks, P), E_CHUNK threads */
__global__ void k_hist(enc_ctx c) {
  __shared__ uint32_t h[256];
  uint32_t p = blockIdx.y;
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x)
    h[i] = 0;
  __syncthreads();
  uint64_t si = (uint64_t)blockIdx.x * E_CHUNK + threadIdx.x;
  int fl = 0;
  if (si < c.n) {
    uint8_t *s = c.sym + (uint64_t)p * c.n + si;
    uint32_t v = (uint32_t)((int)(int8_t)*s - c.st[p].qmin);
    *s = (uint8_t)v;
    atomicAdd(&h[v], 1u);
    fl = c.excf[(uint64_t)p * c.n + si];
  }
  int cnt = __syncthreads_count(fl);
  for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x)
    if (h[i]) atomicAdd(&c.st[p].counts[i], h[i]);
  if (threadIdx.x == 0) c.chunk[(uint64_t)p * c.nchunks + blockIdx.x] = (uint32_t)cnt;
}

__global__ void k_exc_scan(enc_ctx c) {
  uint32_t p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= c.P) return;
  uint32_t run = 0;
  for (uint32_t k = 0; k < c.nchunks; k++) {
    uint32_t v = c.chunk[(uint64_t)p * c.nchunks + k];
    c.chunk[(uint64_t)p * c.nchunks + k] = run;
    run += v;
  }
  c.st[p].n_exc_raw = run;
}

/* grid (nchunks, P), E_CHUNK threads: flagged symbols in order, the first
 * max_exc of the plane kept (the CPU encoder's cap) */
__global__ void k_exc_write(enc_ctx c) {
  __shared__ uint32_t wsum[E_CHUNK / 32];
  uint32_t p = blockIdx.y, lane = threadIdx.x & 31, wid = threadIdx.x / 32;
  uint64_t si = (uint64_t)blockIdx.x * E_CHUNK + threadIdx.x;
  bool fl = si < c.n && c.excf[(uint64_t)p * c.n + si];
  uint32_t m = __ballot_sync(0xffffffffu, fl);
  if (lane == 0) wsum[wid] = __popc(m);
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t run = 0;
    for (uint32_t w = 0; w < E_CHUNK / 32; w++) {
      uint32_t v = wsum[w];
      wsum[w] = run;
      run += v;
    }
  }
  __syncthreads();
  if (!fl) return;
  uint32_t rank =
      c.chunk[(uint64_t)p * c.nchunks + blockIdx.x] + wsum[wid] + __popc(m & ((1u << lane) - 1u));
  if (rank < c.max_exc) c.exc[(uint64_t)p * c.max_exc + rank] = (uint32_t)si;
}

/* warp per (plane, head, block); mirrors rans.c kvs__rans_enc_block */
__global__ void k_rans(enc_ctx c) {
  uint64_t item = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  uint32_t lane = threadIdx.x & 31;
  if (item >= (uint64_t)c.P * c.H * c.nbh) return;
  uint32_t p = (uint32_t)(item / ((uint64_t)c.H * c.nbh));
  uint32_t r = (uint32_t)(item % ((uint64_t)c.H * c.nbh)), h = r / c.nbh, b = r % c.nbh;
  uint64_t per_head = (uint64_t)c.T * c.D, blk = 32ull * c.S, i0 = (uint64_t)b * blk;
  uint32_t cnt = (uint32_t)(per_head - i0 < blk ? per_head - i0 : blk);
  const uint8_t *sy = c.sym + (uint64_t)p * c.n + (uint64_t)h * per_head + i0;
  uint16_t *wd = c.words + item * blk;
  const uint32_t *freq = c.freq + (uint64_t)p * 256, *cum = c.cum + (uint64_t)p * 256;
  uint32_t x = KVS_RANS_L, nw = 0;
  for (uint32_t k = (cnt + 31) / 32; k-- > 0;) {
    uint32_t i = k * 32 + lane;
    bool act = i < cnt;
    uint32_t f = 1, cm = 0;
    if (act) {
      uint32_t s = sy[i];
      f = freq[s], cm = cum[s];
    }
    bool emit = act && (uint64_t)x >= ((uint64_t)f << 20);
    uint32_t m = __ballot_sync(0xffffffffu, emit);
    if (emit) {
      /* the CPU encoder walks lanes 31..0: lanes above this one go first */
      wd[nw + __popc((uint32_t)((uint64_t)m >> (lane + 1)))] = (uint16_t)x;
      x >>= 16;
    }
    nw += __popc(m);
    if (act) x = ((x / f) << KVS_RANS_PROB_BITS) + (x % f) + cm;
  }
  c.states[item * 32 + lane] = x;
  if (lane == 0) c.nw[item] = nw;
}

/* block per plane: everything before the rANS blocks */
__global__ void k_pack_fixed(enc_ctx c) {
  uint32_t p = blockIdx.x, f = c.flags[p], HD = c.HD, T = c.T;
  const enc_stat &st = c.st[p];
  uint8_t *b = c.out + c.pl_off[p];
  uint32_t n_sym = c.pl_info[4 * p + 1], n_exc = c.pl_info[4 * p + 2];
  if (threadIdx.x == 0) {
    kvs__wr32(b, c.pl_info[4 * p]);
    b[4] = (uint8_t)n_sym;
    b[5] = (uint8_t)(int8_t)st.qmin;
    b[6] = (uint8_t)f;
    b[7] = 0;
    kvs__wr32(b + 8, __float_as_uint(st.step));
  }
  for (uint32_t s = threadIdx.x; s < n_sym; s += blockDim.x)
    kvs__wr16(b + 12 + 2 * s, (uint16_t)c.freq[(uint64_t)p * 256 + s]);
  uint8_t *q = b + 12 + E_PAD4(2ull * n_sym);
  uint64_t hd = E_PAD4(2ull * HD);
  for (uint32_t i = threadIdx.x; i < HD; i += blockDim.x)
    kvs__wr16(q + 2 * i, kvs_f32_to_f16(c.mean[(uint64_t)p * HD + i]));
  q += hd;
  if (f & KVS_DENSE_CHAN) {
    for (uint32_t i = threadIdx.x; i < HD; i += blockDim.x)
      kvs__wr16(q + 2 * i, kvs_f32_to_f16(c.cs[(uint64_t)p * HD + i]));
    q += hd;
  }
  if (f & KVS_DENSE_TOKEN) {
    for (uint32_t t = threadIdx.x; t < T; t += blockDim.x)
      kvs__wr16(q + 2 * t, kvs_f32_to_f16(c.ts[(uint64_t)p * T + t]));
    q += E_PAD4(2ull * T);
  }
  if (f & KVS_DENSE_SINK) {
    for (uint32_t i = threadIdx.x; i < HD; i += blockDim.x)
      kvs__wr16(q + 2 * i, to_in(c, ld(c, p, i)));
    q += hd;
  }
  if (threadIdx.x == 0) kvs__wr32(q, n_exc);
  q += 4;
  for (uint32_t i = threadIdx.x; i < n_exc; i += blockDim.x) {
    uint32_t si = c.exc[(uint64_t)p * c.max_exc + i];
    uint32_t h = si / (T * c.D), t = (si / c.D) % T, d = si % c.D;
    kvs__wr32(q + 4ull * i, si);
    kvs__wr16(q + 4ull * n_exc + 2ull * i, to_in(c, ld(c, p, ((uint64_t)t * c.H + h) * c.D + d)));
  }
  q += 4ull * n_exc + E_PAD4(2ull * n_exc);
  if (threadIdx.x == 0) kvs__wr32(q, c.nbh);
  for (uint32_t k = threadIdx.x; k < c.H * c.nbh; k += blockDim.x)
    kvs__wr32(q + 4 + 4ull * k, c.blk_off[(uint64_t)p * c.H * c.nbh + k]);
}

/* warp per rANS block: n_words, states, words in decoder order */
__global__ void k_pack_blocks(enc_ctx c) {
  uint64_t item = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  uint32_t lane = threadIdx.x & 31;
  if (item >= (uint64_t)c.P * c.H * c.nbh) return;
  uint32_t p = (uint32_t)(item / ((uint64_t)c.H * c.nbh));
  uint8_t *dst = c.out + c.pl_off[p] + c.blk_off[item];
  uint32_t nw = c.nw[item];
  const uint16_t *wd = c.words + item * 32ull * c.S;
  if (lane == 0) kvs__wr32(dst, nw);
  kvs__wr32(dst + 4 + 4 * lane, c.states[item * 32 + lane]);
  for (uint32_t k = lane; k < nw; k += 32)
    kvs__wr16(dst + KVS_RANS_BLOCK_HDR + 2ull * k, wd[nw - 1 - k]);
}

/* ------------------------------------------------------------------ host */
struct enc_geo {
  uint32_t T, H, D, HD, S, nbh, P, max_exc, nchunks;
  uint64_t n, body_cap; /* bound of one plane body */
};

struct enc_ws {
  size_t flags, rel, y, sym, excf, mean, cs, ts, ssp, st, chunk, exc, freq, cum, nw, states, words,
      pl_off, pl_info, blk_off, out, total;
};

bool geo_of(const kvs_codec_params *p, const kvs_layout *l, uint32_t T, enc_geo *g) {
  if (!p || !l || p->profile != KVS_CODEC_DENSE || !p->group || !T) return false;
  g->T = T, g->H = l->n_kv_heads, g->D = l->head_dim, g->HD = g->H * g->D, g->S = p->group;
  g->n = (uint64_t)T * g->HD;
  g->nbh = (uint32_t)E_CDIV((uint64_t)T * g->D, 32ull * g->S);
  g->P = 2 * l->n_layers;
  g->max_exc = (uint32_t)(g->n / 16);
  g->nchunks = (uint32_t)E_CDIV(g->n, (uint64_t)E_CHUNK);
  uint64_t hd = E_PAD4(2ull * g->HD);
  g->body_cap = 12 + E_PAD4(2ull * 255) + 3 * hd + E_PAD4(2ull * T) + 4 + 4ull * g->max_exc +
                E_PAD4(2ull * g->max_exc) + 4 + 4ull * g->H * g->nbh +
                (uint64_t)g->H * g->nbh * E_PAD4(KVS_RANS_BLOCK_HDR + 2ull * 32 * g->S);
  return true;
}

enc_ws ws_enc_of(const enc_geo &g) {
  enc_ws w;
  size_t o = 0;
  auto take = [&](size_t bytes) {
    size_t at = o;
    o = (o + bytes + 255) & ~(size_t)255;
    return at;
  };
  uint64_t P = g.P, blocks = P * g.H * g.nbh;
  w.flags = take(4 * P), w.rel = take(4 * P);
  w.y = take(4 * P * g.n), w.sym = take(P * g.n), w.excf = take(P * g.n);
  w.mean = take(4 * P * g.HD), w.cs = take(4 * P * g.HD);
  w.ts = take(4 * P * g.T), w.ssp = take(8 * P * g.T);
  w.st = take(sizeof(enc_stat) * P), w.chunk = take(4 * P * g.nchunks);
  w.exc = take(4 * P * (g.max_exc ? g.max_exc : 1));
  w.freq = take(4 * P * 256), w.cum = take(4 * P * 256);
  w.nw = take(4 * blocks), w.states = take(4 * 32 * blocks),
  w.words = take(2 * 32ull * g.S * blocks);
  w.pl_off = take(8 * P), w.pl_info = take(16 * P), w.blk_off = take(4 * blocks);
  /* the whole container: prefix, a segment header and padding per segment,
   * the plane bodies at their final offsets */
  w.out = take(KVS_CODEC_HEADER_BYTES + 8ull * KVS_CODEC_MAX_SEGMENTS +
               (KVS_CODEC_SEG_HEADER_BYTES + 8ull) * KVS_CODEC_MAX_SEGMENTS + P * g.body_cap);
  w.total = o;
  return w;
}

/* The plane bodies already lie in out at their container offsets (copied
 * from the device in one piece); the container code only checks where it
 * expects each one and writes the headers and checksums around them. */
struct host_planes {
  const uint8_t *out;
  const uint64_t *off; /* [P] from out */
  const uint32_t *len; /* [P] */
};

kvs_err plane_in_place(void *ctx, uint32_t layer, uint32_t kv, uint8_t *at, size_t cap,
                       size_t *len) {
  const host_planes *hp = (const host_planes *)ctx;
  uint32_t p = 2 * layer + kv;
  if (hp->len[p] > cap || at != hp->out + hp->off[p]) return KVS_EINTERNAL;
  *len = hp->len[p];
  return KVS_OK;
}

/* codec.c eff_lpg: layers per segment of the container, *nseg segments */
uint32_t seg_lpg_of(const kvs_codec_params *p, uint32_t n_layers, uint32_t *nseg) {
  uint32_t lpg = p->layers_per_group ? p->layers_per_group : 1;
  if (lpg > n_layers) lpg = n_layers;
  uint32_t min_lpg = (uint32_t)E_CDIV(n_layers, KVS_CODEC_MAX_SEGMENTS);
  lpg = lpg < min_lpg ? min_lpg : lpg;
  *nseg = (uint32_t)E_CDIV(n_layers, lpg);
  return lpg;
}

/* process-wide timers (kvs_gpu_codec_encode_timing) */
std::atomic<uint64_t> g_t_calls, g_t_gpu, g_t_copy, g_t_host;

unsigned grid_of(uint64_t threads, unsigned tpb) {
  return (unsigned)E_CDIV(threads, (uint64_t)tpb);
}

kvs_err encode(const kvs_codec_params *prm, const kvs_layout *l, uint32_t T, const void *d_kv,
               void *out, size_t cap, size_t *out_len, void *d_ws, size_t ws_len, cudaStream_t st) {
  enc_geo g;
  if (!geo_of(prm, l, T, &g)) return KVS_ENOTSUP;
  if (kvs_codec_encode_bound(prm, l, T) == 0) return KVS_EINVAL; /* every other check */
  if (!d_kv || !out || !out_len || !d_ws) return KVS_EINVAL;
  enc_ws w = ws_enc_of(g);
  if (ws_len < w.total) return KVS_EINVAL;
  uint8_t *ws = (uint8_t *)d_ws;
  uint32_t P = g.P;
  uint64_t blocks = (uint64_t)P * g.H * g.nbh;
  bool pow2 = g.D >= 2 && (g.D & (g.D - 1)) == 0;
  /* host scratch, one allocation */
  size_t hbytes = 8ull * P + sizeof(enc_stat) * P + 8ull * P * 256 + 4ull * blocks + 8ull * P +
                  16ull * P + 4ull * blocks;
  uint8_t *hs = (uint8_t *)malloc(hbytes);
  if (!hs) return KVS_ENOMEM;
  uint64_t *h_off = (uint64_t *)(void *)hs; /* the 8-byte array first: aligned */
  enc_stat *h_st = (enc_stat *)(h_off + P);
  uint32_t *h_flags = (uint32_t *)(h_st + P);
  float *h_rel = (float *)(h_flags + P);
  uint32_t *h_freq = (uint32_t *)(h_rel + P), *h_cum = h_freq + 256ull * P;
  uint32_t *h_nw = h_cum + 256ull * P;
  uint32_t *h_info = h_nw + blocks, *h_blk = h_info + 4ull * P;
  kvs_err rc = KVS_OK;
  uint64_t t_start = kvs_now_ns(), t_copy = t_start, t_host = t_start;
#define E_TRY(call)                                                                                \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      rc = kvs__cuda_err(e_, __FILE__, __LINE__, #call);                                           \
      goto done;                                                                                   \
    }                                                                                              \
  } while (0)
  {
    for (uint32_t p = 0; p < P; p++) {
      uint32_t layer = p / 2, kv = p % 2, f = kv ? prm->v_flags : prm->k_flags;
      if (!pow2) f &= ~KVS_DENSE_ROTATED;
      float rel = kv ? prm->v_step : prm->k_step; /* prof_entropy.c dense_step */
      if (layer < prm->fine_layers) rel *= prm->fine_scale;
      h_flags[p] = f, h_rel[p] = rel;
    }
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.kv = (const uint16_t *)d_kv, c.dtype = l->dtype, c.T = T, c.H = g.H, c.D = g.D, c.HD = g.HD;
    c.S = g.S, c.nbh = g.nbh, c.P = P, c.max_exc = g.max_exc, c.nchunks = g.nchunks, c.n = g.n;
    c.flags = (const uint32_t *)(ws + w.flags), c.rel = (const float *)(ws + w.rel);
    c.y = (float *)(ws + w.y), c.sym = ws + w.sym, c.excf = ws + w.excf;
    c.mean = (float *)(ws + w.mean), c.cs = (float *)(ws + w.cs), c.ts = (float *)(ws + w.ts);
    c.ssp = (double *)(ws + w.ssp), c.st = (enc_stat *)(ws + w.st);
    c.chunk = (uint32_t *)(ws + w.chunk), c.exc = (uint32_t *)(ws + w.exc);
    c.freq = (const uint32_t *)(ws + w.freq), c.cum = (const uint32_t *)(ws + w.cum);
    c.nw = (uint32_t *)(ws + w.nw), c.states = (uint32_t *)(ws + w.states);
    c.words = (uint16_t *)(ws + w.words);
    c.pl_off = (const uint64_t *)(ws + w.pl_off), c.pl_info = (const uint32_t *)(ws + w.pl_info);
    c.blk_off = (const uint32_t *)(ws + w.blk_off), c.out = ws + w.out;

    E_TRY(cudaMemcpyAsync(ws + w.flags, h_flags, 4ull * P, cudaMemcpyHostToDevice, st));
    E_TRY(cudaMemcpyAsync(ws + w.rel, h_rel, 4ull * P, cudaMemcpyHostToDevice, st));
    k_chan<<<grid_of((uint64_t)P * g.HD, 128), 128, 0, st>>>(c);
    k_tok<<<grid_of((uint64_t)P * T, 64), 64, 0, st>>>(c);
    k_step<<<grid_of(P, 64), 64, 0, st>>>(c);
    k_quant<<<dim3(grid_of(g.n, 256), P), 256, 0, st>>>(c);
    k_hist<<<dim3(g.nchunks, P), E_CHUNK, 0, st>>>(c);
    k_exc_scan<<<grid_of(P, 64), 64, 0, st>>>(c);
    k_exc_write<<<dim3(g.nchunks, P), E_CHUNK, 0, st>>>(c);
    E_TRY(cudaGetLastError());
    E_TRY(cudaMemcpyAsync(h_st, ws + w.st, sizeof(enc_stat) * P, cudaMemcpyDeviceToHost, st));
    E_TRY(cudaStreamSynchronize(st));

    /* frequencies exactly as the CPU encoder makes them */
    for (uint32_t p = 0; p < P && rc == KVS_OK; p++) {
      uint32_t n_sym = (uint32_t)(h_st[p].qmax - h_st[p].qmin + 1);
      uint16_t fr[256];
      if (n_sym < 1 || n_sym > 255) {
        rc = KVS_EINTERNAL;
        break;
      }
      rc = kvs__rans_normalize(h_st[p].counts, n_sym, fr);
      uint32_t cu = 0;
      for (uint32_t s = 0; s < 256; s++) {
        h_freq[256ull * p + s] = s < n_sym ? fr[s] : 0;
        h_cum[256ull * p + s] = cu;
        cu += s < n_sym ? fr[s] : 0;
      }
      h_info[4 * p + 1] = n_sym;
      h_info[4 * p + 2] = h_st[p].n_exc_raw < g.max_exc ? h_st[p].n_exc_raw : g.max_exc;
    }
    if (rc != KVS_OK) goto done;
    E_TRY(cudaMemcpyAsync(ws + w.freq, h_freq, 4ull * 256 * P, cudaMemcpyHostToDevice, st));
    E_TRY(cudaMemcpyAsync(ws + w.cum, h_cum, 4ull * 256 * P, cudaMemcpyHostToDevice, st));
    k_rans<<<grid_of(blocks * 32, 128), 128, 0, st>>>(c);
    E_TRY(cudaGetLastError());
    E_TRY(cudaMemcpyAsync(h_nw, ws + w.nw, 4ull * blocks, cudaMemcpyDeviceToHost, st));
    E_TRY(cudaStreamSynchronize(st));

    /* plane sizes and block offsets (prof_entropy.c dense_fixed); each plane
     * placed where the container will hold it (codec.c encode_with): the
     * prefix, then per segment its header and its planes, padded to 8 */
    uint32_t nseg = 0, seg_lpg = seg_lpg_of(prm, l->n_layers, &nseg);
    uint64_t total = KVS_CODEC_HEADER_BYTES + 8ull * nseg, seg_pay = 0, hd = E_PAD4(2ull * g.HD);
    for (uint32_t p = 0; p < P; p++) {
      uint32_t f = h_flags[p], n_sym = h_info[4 * p + 1], n_exc = h_info[4 * p + 2];
      uint64_t pos = 12 + E_PAD4(2ull * n_sym) + hd + ((f & KVS_DENSE_CHAN) ? hd : 0) +
                     ((f & KVS_DENSE_TOKEN) ? E_PAD4(2ull * T) : 0) +
                     ((f & KVS_DENSE_SINK) ? hd : 0) + 4 + 4ull * n_exc + E_PAD4(2ull * n_exc) + 4 +
                     4ull * g.H * g.nbh;
      for (uint64_t k = 0; k < (uint64_t)g.H * g.nbh; k++) {
        uint64_t item = (uint64_t)p * g.H * g.nbh + k;
        h_blk[item] = (uint32_t)pos;
        pos += E_PAD4(KVS_RANS_BLOCK_HDR + 2ull * h_nw[item]);
      }
      if (pos > UINT32_MAX) {
        rc = KVS_ETOOBIG;
        goto done;
      }
      h_info[4 * p] = (uint32_t)pos;
      uint32_t layer = p / 2;
      if (p % 2 == 0 && layer % seg_lpg == 0) { /* a segment starts */
        total += KVS_CODEC_SEG_HEADER_BYTES;
        seg_pay = 0;
      }
      h_off[p] = total;
      total += pos, seg_pay += pos;
      if (p % 2 == 1 && (layer + 1 == l->n_layers || (layer + 1) % seg_lpg == 0))
        total += ((seg_pay + 7) & ~7ull) - seg_pay; /* the segment's zero padding */
    }
    E_TRY(cudaMemcpyAsync(ws + w.pl_off, h_off, 8ull * P, cudaMemcpyHostToDevice, st));
    E_TRY(cudaMemcpyAsync(ws + w.pl_info, h_info, 16ull * P, cudaMemcpyHostToDevice, st));
    E_TRY(cudaMemcpyAsync(ws + w.blk_off, h_blk, 4ull * blocks, cudaMemcpyHostToDevice, st));
    if (total > cap) {
      rc = KVS_ENOSPC;
      goto done;
    }
    E_TRY(cudaMemsetAsync(ws + w.out, 0, total, st));
    k_pack_fixed<<<P, 256, 0, st>>>(c);
    k_pack_blocks<<<grid_of(blocks * 32, 128), 128, 0, st>>>(c);
    E_TRY(cudaGetLastError());
    E_TRY(cudaStreamSynchronize(st));
    t_copy = kvs_now_ns();
    /* one copy of the whole container into out; the host adds the headers */
    E_TRY(cudaMemcpyAsync(out, ws + w.out, total, cudaMemcpyDeviceToHost, st));
    E_TRY(cudaStreamSynchronize(st));
    t_host = kvs_now_ns();
    uint32_t *lens = h_nw; /* reuse: P <= blocks */
    for (uint32_t p = 0; p < P; p++)
      lens[p] = h_info[4 * p];
    host_planes hp = {(const uint8_t *)out, h_off, lens};
    rc = kvs_codec_encode_planes(prm, l, T, plane_in_place, &hp, out, cap, out_len);
    if (rc == KVS_OK && *out_len != total) rc = KVS_EINTERNAL;
  }
done:
#undef E_TRY
  /* a failed call leaves nothing in flight that reads the host scratch */
  if (rc != KVS_OK) cudaStreamSynchronize(st);
  free(hs);
  if (rc == KVS_OK) {
    uint64_t t_end = kvs_now_ns();
    g_t_calls++;
    g_t_gpu += t_copy - t_start;
    g_t_copy += t_host - t_copy;
    g_t_host += t_end - t_host;
  }
  return rc;
}

} // namespace

extern "C" size_t kvs_gpu_codec_encode_workspace_bound(const kvs_codec_params *p,
                                                       const kvs_layout *layout,
                                                       uint32_t n_tokens) {
  enc_geo g;
  if (!geo_of(p, layout, n_tokens, &g) || kvs_codec_encode_bound(p, layout, n_tokens) == 0)
    return 0;
  return ws_enc_of(g).total;
}

extern "C" kvs_err kvs_gpu_codec_encode(const kvs_codec_params *p, const kvs_layout *layout,
                                        uint32_t n_tokens, const void *d_kv, void *out, size_t cap,
                                        size_t *out_len, void *d_ws, size_t ws_len, void *stream) {
  if (kvs_gpu_device_count() == 0) return KVS_ENODEV;
  return encode(p, layout, n_tokens, d_kv, out, cap, out_len, d_ws, ws_len, (cudaStream_t)stream);
}

extern "C" void kvs_gpu_codec_encode_timing(kvs_gpu_codec_enc_timing *out) {
  if (!out) return;
  out->calls = g_t_calls.load(), out->gpu_ns = g_t_gpu.load();
  out->copy_ns = g_t_copy.load(), out->host_ns = g_t_host.load();
}
