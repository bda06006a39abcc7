/* Offline quantizer study for kvs-bench-codec --real (issue 23): candidate
 * transforms of real KV, measured by the real model's KL like the profiles, with
 * bits estimated as the empirical entropy of the symbols (one adaptive table per
 * component, its cost counted) plus the side information. Nothing here is a
 * format: it tells which quantizer is worth one.
 *
 * Per plane (layer, K|V) and KV head, tokens 1..T-1 (token 0 exact, like dense's
 * sink): optionally de-rotate K to its pre-RoPE value (positions 0..T-1), project
 * onto a basis B (identity, or the eigenvectors of the calibration items'
 * covariance of that domain, optionally in the metric of a weight matrix),
 * subtract the chunk's mean per component, quantize every component with one
 * uniform step (rel x the plane's RMS in that domain; with component weights
 * the step of component c is step / sqrt(w_c)), reconstruct, re-rotate. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_sim.h"

/* ------------------------------------------------------------ rope */
static void rope_row(float *x, uint32_t D, double pos, double theta, int neox, int inverse) {
  uint32_t step = neox ? 1 : 2, off = neox ? D / 2 : 1;
  for (uint32_t i = 0; i < D / 2; i++) {
    double a = pos * pow(theta, -2.0 * i / D) * (inverse ? -1 : 1);
    double c = cos(a), s = sin(a);
    float *p = x + step * i;
    double x0 = p[0], x1 = p[off];
    p[0] = (float)(x0 * c - x1 * s);
    p[off] = (float)(x0 * s + x1 * c);
  }
}

/* ------------------------------------------------------------ Jacobi */
/* symmetric a (n x n, destroyed) -> eigenvalues ev (descending), vectors in
   columns of v (n x n) */
static void jacobi(double *a, uint32_t n, double *ev, double *v) {
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < n; j++)
      v[i * n + j] = i == j;
  for (int sweep = 0; sweep < 30; sweep++) {
    double off = 0, tot = 0;
    for (uint32_t i = 0; i < n; i++)
      for (uint32_t j = 0; j < n; j++)
        *(i == j ? &tot : &off) += a[i * n + j] * a[i * n + j];
    if (off <= 1e-22 * (tot + off)) break;
    for (uint32_t p = 0; p < n; p++)
      for (uint32_t q = p + 1; q < n; q++) {
        double apq = a[p * n + q];
        if (fabs(apq) < 1e-300) continue;
        double th = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
        double c = 1 / sqrt(t * t + 1), s = t * c;
        for (uint32_t k = 0; k < n; k++) {
          double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (uint32_t k = 0; k < n; k++) {
          double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (uint32_t k = 0; k < n; k++) {
          double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  for (uint32_t i = 0; i < n; i++)
    ev[i] = a[i * n + i];
  /* sort descending (selection; n is small) */
  for (uint32_t i = 0; i < n; i++) {
    uint32_t b = i;
    for (uint32_t j = i + 1; j < n; j++)
      if (ev[j] > ev[b]) b = j;
    if (b == i) continue;
    double t = ev[i];
    ev[i] = ev[b], ev[b] = t;
    for (uint32_t k = 0; k < n; k++) {
      t = v[k * n + i];
      v[k * n + i] = v[k * n + b], v[k * n + b] = t;
    }
  }
}

/* ------------------------------------------------------------ calibration */
sim_cal *sim_cal_new(uint32_t L, uint32_t H, uint32_t D, double theta, int neox) {
  sim_cal *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->L = L, c->H = H, c->D = D, c->theta = theta, c->neox = neox;
  size_t np = (size_t)L * 2 * H; /* (layer, kv, head) */
  for (int dom = 0; dom < 2; dom++) {
    c->sum[dom] = calloc(np * D, sizeof(double));
    c->cross[dom] = calloc(np * D * D, sizeof(double));
  }
  for (int dom = 0; dom < 3; dom++) {
    c->fwd[dom] = calloc(np * D * D, sizeof(float));
    c->inv[dom] = calloc(np * D * D, sizeof(float));
  }
  c->wq = calloc(np * D * D, sizeof(double));
  c->mv = calloc(np * D * D, sizeof(double));
  return c;
}

void sim_cal_free(sim_cal *c) {
  if (!c) return;
  for (int dom = 0; dom < 2; dom++)
    free(c->sum[dom]), free(c->cross[dom]);
  for (int dom = 0; dom < 3; dom++)
    free(c->fwd[dom]), free(c->inv[dom]);
  free(c->wq), free(c->qs), free(c->mv), free(c->jsum), free(c->jcross), free(c->vpa), free(c->vpb);
  free(c);
}

/* kv: (2L planes) of (T, H, D) fp16; positions 0..T-1 */
void sim_cal_add(sim_cal *c, const uint16_t *kv, uint32_t T) {
  uint32_t L = c->L, H = c->H, D = c->D;
  float row[512];
  for (uint32_t pl = 0; pl < 2 * L; pl++)
    for (uint32_t t = 1; t < T; t++)
      for (uint32_t h = 0; h < H; h++)
        for (int dom = 0; dom < 2; dom++) {
          if (dom == 1 && (pl & 1)) continue; /* pre-RoPE: K only */
          const uint16_t *src = kv + ((size_t)pl * T + t) * H * D + (size_t)h * D;
          for (uint32_t d = 0; d < D; d++)
            row[d] = kvs_f16_to_f32(src[d]);
          if (dom == 1) rope_row(row, D, t, c->theta, c->neox, 1);
          size_t ix = (size_t)pl * H + h;
          double *s = c->sum[dom] + ix * D, *x = c->cross[dom] + ix * D * D;
          for (uint32_t i = 0; i < D; i++) {
            s[i] += row[i];
            for (uint32_t j = 0; j < D; j++)
              x[i * D + j] += (double)row[i] * row[j];
          }
        }
  c->n += T - 1;
  if (!getenv("KVS_SIM_VK")) return;
  /* joint [K pre-RoPE (all heads); V (all heads)] moments per layer, for the
     V-from-K bound of sim_vk_report */
  uint32_t HD = H * D, J = 2 * HD;
  if (!c->jsum) {
    c->jsum = calloc((size_t)L * J, sizeof(double));
    c->jcross = calloc((size_t)L * J * J, sizeof(double));
    if (!c->jsum || !c->jcross) return;
  }
  float *z = malloc(sizeof(float) * J);
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t t = 1; t < T; t++) {
      for (uint32_t kvp = 0; kvp < 2; kvp++)
        for (uint32_t h = 0; h < H; h++) {
          const uint16_t *src = kv + ((size_t)(2 * l + kvp) * T + t) * HD + (size_t)h * D;
          float *r = z + kvp * HD + h * D;
          for (uint32_t d = 0; d < D; d++)
            r[d] = kvs_f16_to_f32(src[d]);
          if (!kvp) rope_row(r, D, t, c->theta, c->neox, 1);
        }
      double *js = c->jsum + (size_t)l * J, *jx = c->jcross + (size_t)l * J * J;
      for (uint32_t i = 0; i < J; i++) {
        js[i] += z[i];
        for (uint32_t j = 0; j < J; j++)
          jx[(size_t)i * J + j] += (double)z[i] * z[j];
      }
    }
  free(z);
}

/* reverse water-filling rate (bits per component) of a covariance's eigenvalues at
   distortion theta per component */
static double rwf_rate(const double *ev, uint32_t n, double theta) {
  double r = 0;
  for (uint32_t i = 0; i < n; i++)
    if (ev[i] > theta) r += 0.5 * log2(ev[i] / theta);
  return r / n;
}

/* Upper bound of what predicting V from the (exact) pre-RoPE K of the same token and
   layer would save: per layer and V head, the Gaussian reverse water-filling rate of
   V's covariance and of its covariance given K, at the distortion of a uniform step
   of vstep x V's RMS (step^2/12 per component). */
void sim_vk_report(sim_cal *c, double vstep) {
  if (!c->jsum || !c->n) return;
  uint32_t L = c->L, H = c->H, D = c->D, HD = H * D, J = 2 * HD;
  double *C = malloc(sizeof(double) * J * J), *Lc = malloc(sizeof(double) * HD * HD);
  double *X = malloc(sizeof(double) * HD * D), *a = malloc(sizeof(double) * D * D);
  double *v = malloc(sizeof(double) * D * D), *ev = malloc(sizeof(double) * D);
  double tot_v = 0, tot_c = 0;
  for (uint32_t l = 0; l < L; l++) {
    const double *js = c->jsum + (size_t)l * J, *jx = c->jcross + (size_t)l * J * J;
    double n = (double)c->n;
    for (uint32_t i = 0; i < J; i++)
      for (uint32_t j = 0; j < J; j++)
        C[(size_t)i * J + j] = jx[(size_t)i * J + j] / n - js[i] / n * js[j] / n;
    /* Cholesky of Ckk (+ 1e-6 mean diagonal) */
    double tr = 0;
    for (uint32_t i = 0; i < HD; i++)
      tr += C[(size_t)i * J + i];
    for (uint32_t i = 0; i < HD; i++)
      for (uint32_t j = 0; j <= i; j++) {
        double s = C[(size_t)i * J + j] + (i == j ? 1e-6 * tr / HD : 0);
        for (uint32_t k = 0; k < j; k++)
          s -= Lc[(size_t)i * HD + k] * Lc[(size_t)j * HD + k];
        Lc[(size_t)i * HD + j] =
            i == j ? sqrt(s > 1e-300 ? s : 1e-300) : s / Lc[(size_t)j * HD + j];
      }
    /* the predictor V ~ A k_pre + b, A = Cvk Ckk^-1 (rows: V channel), for vpred */
    if (!c->vpa)
      c->vpa = calloc((size_t)L * HD * HD, sizeof(float)),
      c->vpb = calloc((size_t)L * HD, sizeof(float));
    for (uint32_t o = 0; o < HD && c->vpa; o++) {
      double *y = X; /* solve Ckk a = Ckv[:, o] by forward and back substitution */
      for (uint32_t i = 0; i < HD; i++) {
        double s = C[(size_t)i * J + HD + o];
        for (uint32_t k = 0; k < i; k++)
          s -= Lc[(size_t)i * HD + k] * y[k];
        y[i] = s / Lc[(size_t)i * HD + i];
      }
      for (uint32_t i = HD; i-- > 0;) {
        double s = y[i];
        for (uint32_t k = i + 1; k < HD; k++)
          s -= Lc[(size_t)k * HD + i] * y[k];
        y[i] = s / Lc[(size_t)i * HD + i];
      }
      double bb = js[HD + o] / n;
      for (uint32_t i = 0; i < HD; i++) {
        c->vpa[((size_t)l * HD + o) * HD + i] = (float)y[i];
        bb -= y[i] * js[i] / n;
      }
      c->vpb[(size_t)l * HD + o] = (float)bb;
    }
    double lv = 0, lc = 0;
    for (uint32_t h = 0; h < H; h++) {
      /* X = L^-1 Ckv_h (HD x D) */
      for (uint32_t d = 0; d < D; d++)
        for (uint32_t i = 0; i < HD; i++) {
          double s = C[(size_t)i * J + HD + h * D + d];
          for (uint32_t k = 0; k < i; k++)
            s -= Lc[(size_t)i * HD + k] * X[(size_t)k * D + d];
          X[(size_t)i * D + d] = s / Lc[(size_t)i * HD + i];
        }
      double vtr = 0;
      for (uint32_t d = 0; d < D; d++)
        vtr += C[(size_t)(HD + h * D + d) * J + HD + h * D + d];
      double theta = vstep * vstep * (vtr / D) / 12;
      for (uint32_t i = 0; i < D; i++)
        for (uint32_t j = 0; j < D; j++)
          a[i * D + j] = C[(size_t)(HD + h * D + i) * J + HD + h * D + j];
      jacobi(a, D, ev, v);
      lv += rwf_rate(ev, D, theta);
      for (uint32_t i = 0; i < D; i++)
        for (uint32_t j = 0; j < D; j++) {
          double s = C[(size_t)(HD + h * D + i) * J + HD + h * D + j];
          for (uint32_t k = 0; k < HD; k++)
            s -= X[(size_t)k * D + i] * X[(size_t)k * D + j];
          a[i * D + j] = s;
        }
      jacobi(a, D, ev, v);
      lc += rwf_rate(ev, D, theta);
    }
    fprintf(stderr, "sim: V|K layer %u: V %.3f bits/el, V given K %.3f\n", l, lv / H, lc / H);
    tot_v += lv / H, tot_c += lc / H;
  }
  fprintf(stderr,
          "sim: V|K all layers (Gaussian bound, V step %.2g x RMS): V %.3f, given K %.3f bits/el\n",
          vstep, tot_v / L, tot_c / L);
  free(C), free(Lc), free(X), free(a), free(v), free(ev);
}

/* q: (n, H_q, D) post-RoPE queries of layer l at positions pos[n], grp query heads
   per KV head: accumulates E[q q^T] per KV head (post-RoPE domain) */
void sim_cal_add_q(sim_cal *c, uint32_t l, const float *q, uint32_t n, uint32_t grp,
                   const uint32_t *pos) {
  uint32_t H = c->H, D = c->D;
  float r[512];
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t hq = 0; hq < H * grp; hq++) {
      memcpy(r, q + ((size_t)i * H * grp + hq) * D, sizeof(float) * D);
      rope_row(r, D, pos[i], c->theta, c->neox, 1); /* pre-RoPE */
      double *w = c->wq + ((size_t)l * 2 * H + hq / grp) * D * D;
      for (uint32_t a = 0; a < D; a++)
        for (uint32_t b = 0; b < D; b++)
          w[a * D + b] += (double)r[a] * r[b];
    }
  if (l == 0) c->nq += n;
  /* keep the queries themselves (sample) */
  if (!c->qs) {
    c->grp = grp, c->nqs_cap = 256;
    c->qs = calloc((size_t)c->L * c->nqs_cap * H * grp * D, sizeof(float));
    if (!c->qs) return;
  }
  uint32_t at = l == c->L - 1 ? c->nqs : c->nqs; /* same count for every layer */
  for (uint32_t i = 0; i < n && at + i < c->nqs_cap; i++)
    memcpy(c->qs + (((size_t)l * c->nqs_cap + at + i) * H * grp) * D, q + (size_t)i * H * grp * D,
           sizeof(float) * H * grp * D);
  if (l == c->L - 1) c->nqs = at + n < c->nqs_cap ? at + n : c->nqs_cap;
}

/* E[p_t^2] per token over the sample queries of layer l and all query heads,
   p = softmax over the chunk's exact keys (kplane (T, H, D) fp16) */
static void token_weights(const sim_cal *c, uint32_t l, const uint16_t *kplane, uint32_t T,
                          double *w) {
  uint32_t H = c->H, D = c->D, G = c->grp;
  float *kf = malloc(sizeof(float) * T * H * D), *sc = malloc(sizeof(float) * T);
  for (size_t i = 0; i < (size_t)T * H * D; i++)
    kf[i] = kvs_f16_to_f32(kplane[i]);
  for (uint32_t t = 0; t < T; t++)
    w[t] = 0;
  float scale = 1.0f / sqrtf((float)D);
  for (uint32_t i = 0; i < c->nqs; i++)
    for (uint32_t hq = 0; hq < H * G; hq++) {
      const float *q = c->qs + (((size_t)l * c->nqs_cap + i) * H * G + hq) * D;
      uint32_t h = hq / G;
      float mx = -INFINITY;
      for (uint32_t t = 0; t < T; t++) {
        const float *k = kf + ((size_t)t * H + h) * D;
        float a = 0;
        for (uint32_t d = 0; d < D; d++)
          a += q[d] * k[d];
        sc[t] = a * scale;
        mx = sc[t] > mx ? sc[t] : mx;
      }
      double z = 0;
      for (uint32_t t = 0; t < T; t++)
        z += sc[t] = expf(sc[t] - mx);
      for (uint32_t t = 0; t < T; t++) {
        double p = sc[t] / z;
        w[t] += p * p;
      }
    }
  free(kf), free(sc);
}

void sim_cal_set_wo(sim_cal *c, uint32_t l, const float *wo, uint32_t E, uint32_t grp) {
  uint32_t H = c->H, D = c->D, HQD = H * grp * D;
  for (uint32_t hq = 0; hq < H * grp; hq++) {
    double *m = c->mv + ((size_t)(l * 2 + 1) * H + hq / grp) * D * D;
    for (uint32_t e = 0; e < E; e++) {
      const float *r = wo + (size_t)e * HQD + (size_t)hq * D;
      for (uint32_t a = 0; a < D; a++)
        for (uint32_t b = 0; b < D; b++)
          m[a * D + b] += (double)r[a] * r[b];
    }
  }
}

/* A^(1/2) and A^(-1/2) of a symmetric PSD matrix (regularised: + 1e-3 mean eigenvalue) */
static void sqrtm(const double *A, uint32_t D, double *S, double *Si, double *a, double *v,
                  double *ev) {
  memcpy(a, A, sizeof(double) * D * D);
  jacobi(a, D, ev, v);
  double tr = 0;
  for (uint32_t i = 0; i < D; i++)
    tr += ev[i] > 0 ? ev[i] : 0;
  for (uint32_t i = 0; i < D; i++)
    for (uint32_t j = 0; j < D; j++) {
      double s = 0, si = 0;
      for (uint32_t k = 0; k < D; k++) {
        double e = (ev[k] > 0 ? ev[k] : 0) + 1e-3 * tr / D;
        s += v[i * D + k] * sqrt(e) * v[j * D + k];
        si += v[i * D + k] / sqrt(e) * v[j * D + k];
      }
      S[i * D + j] = s, Si[i * D + j] = si;
    }
}

/* transforms of each (layer, kv, head) and domain: the eigenvectors of the
   covariance (in the weighted metric for domain 2) */
void sim_cal_finish(sim_cal *c) {
  uint32_t D = c->D, H = c->H;
  size_t np = (size_t)c->L * 2 * H;
  double *a = malloc(sizeof(double) * D * D), *v = malloc(sizeof(double) * D * D);
  double *cov = malloc(sizeof(double) * D * D), *W = malloc(sizeof(double) * D * D);
  double *S = malloc(sizeof(double) * D * D), *Si = malloc(sizeof(double) * D * D);
  double *ev = malloc(sizeof(double) * D);
  float rq[512];
  for (int dom = 0; dom < 3; dom++)
    for (size_t ix = 0; ix < np; ix++) {
      int kvp = (ix / H) & 1;
      if (dom == 1 && kvp) continue;
      int src = dom == 0 ? 0 : dom == 1 ? 1 : kvp ? 0 : 1;
      const double *s = c->sum[src] + ix * D, *x = c->cross[src] + ix * D * D;
      for (uint32_t i = 0; i < D; i++)
        for (uint32_t j = 0; j < D; j++)
          cov[i * D + j] = x[i * D + j] / c->n - s[i] / c->n * s[j] / c->n;
      float *F = c->fwd[dom] + ix * D * D, *G = c->inv[dom] + ix * D * D;
      if (dom < 2) {
        memcpy(a, cov, sizeof(double) * D * D);
        jacobi(a, D, ev, v);
        for (uint32_t i = 0; i < D; i++)
          for (uint32_t j = 0; j < D; j++)
            F[j * D + i] = (float)v[i * D + j], G[i * D + j] = (float)v[i * D + j];
        continue;
      }
      /* the metric: V, sum of W_o^T W_o; K, the pre-RoPE queries' second moment
         averaged over query-key distances 0..1023 (R_d^T Q R_d) */
      if (kvp) {
        memcpy(W, c->mv + ix * D * D, sizeof(double) * D * D);
      } else {
        const double *Q = c->wq + (ix - 0) * D * D;
        memset(W, 0, sizeof(double) * D * D);
        for (uint32_t dist = 0; dist < 1024; dist += 8) {
          /* W += R^T Q R: columns of Q R via rotating rows of Q^T = Q */
          for (uint32_t i = 0; i < D; i++) { /* row i of Q R = (R^T Q_i)^T: rotate by -dist */
            for (uint32_t j = 0; j < D; j++)
              rq[j] = (float)Q[i * D + j];
            rope_row(rq, D, dist, c->theta, c->neox, 0);
            for (uint32_t j = 0; j < D; j++)
              a[i * D + j] = rq[j];
          }
          for (uint32_t j = 0; j < D; j++) { /* then R^T applied to each column */
            for (uint32_t i = 0; i < D; i++)
              rq[i] = (float)a[i * D + j];
            rope_row(rq, D, dist, c->theta, c->neox, 0);
            for (uint32_t i = 0; i < D; i++)
              W[i * D + j] += rq[i];
          }
        }
      }
      double trw = 0; /* unit mean eigenvalue: the transformed values stay in f16 range */
      for (uint32_t i = 0; i < D; i++)
        trw += W[i * D + i];
      for (uint32_t i = 0; i < D * D && trw > 0; i++)
        W[i] /= trw / D;
      sqrtm(W, D, S, Si, a, v, ev);
      /* A = S cov S; U = eig(A); F = U^T S; G = Si U */
      double *tmp = malloc(sizeof(double) * D * D);
      for (uint32_t i = 0; i < D; i++)
        for (uint32_t j = 0; j < D; j++) {
          double t = 0;
          for (uint32_t k = 0; k < D; k++)
            t += cov[i * D + k] * S[k * D + j];
          tmp[i * D + j] = t;
        }
      for (uint32_t i = 0; i < D; i++)
        for (uint32_t j = 0; j < D; j++) {
          double t = 0;
          for (uint32_t k = 0; k < D; k++)
            t += S[i * D + k] * tmp[k * D + j];
          a[i * D + j] = t;
        }
      jacobi(a, D, ev, v);
      for (uint32_t j = 0; j < D; j++)
        for (uint32_t i = 0; i < D; i++) {
          double f = 0, g = 0;
          for (uint32_t k = 0; k < D; k++)
            f += v[k * D + j] * S[k * D + i], g += Si[i * D + k] * v[k * D + j];
          F[j * D + i] = (float)f, G[i * D + j] = (float)g;
        }
      free(tmp);
      if (getenv("KVS_SIM_DEBUG")) {
        int bad = 0;
        for (uint32_t i = 0; i < D * D; i++)
          bad += !isfinite(F[i]) || !isfinite(G[i]);
        fprintf(stderr, "sim: dom %d ix %zu tr(W) %g nonfinite %d ev0 %g evD %g\n", dom, ix, trw,
                bad, ev[0], ev[D - 1]);
      }
    }
  free(a), free(v), free(ev), free(cov), free(W), free(S), free(Si);
}

/* ------------------------------------------------------------ the quantizer */
static double entropy_bits(const int32_t *sym, uint64_t n, int32_t *lo_out, int32_t *hi_out) {
  int32_t lo = INT32_MAX, hi = INT32_MIN;
  for (uint64_t i = 0; i < n; i++)
    lo = sym[i] < lo ? sym[i] : lo, hi = sym[i] > hi ? sym[i] : hi;
  uint32_t ns = (uint32_t)(hi - lo + 1);
  uint32_t *cnt = calloc(ns, 4);
  for (uint64_t i = 0; i < n; i++)
    cnt[sym[i] - lo]++;
  double b = 0;
  for (uint32_t s = 0; s < ns; s++)
    if (cnt[s]) b -= cnt[s] * log2((double)cnt[s] / n);
  free(cnt);
  *lo_out = lo, *hi_out = hi;
  return b;
}

/* kv -> dec (both (2L, T, H, D) fp16); returns bits per element */
double sim_run(const sim_cal *c, const sim_cfg *g, const uint16_t *kv, uint16_t *dec, uint32_t T,
               double *kv_bits) {
  uint32_t L = c->L, H = c->H, D = c->D;
  size_t HD = (size_t)H * D;
  float *y = malloc(sizeof(float) * T * HD);
  int32_t *sym = malloc(sizeof(int32_t) * T * D);
  float *ts = malloc(sizeof(float) * T), *cw = malloc(sizeof(float) * HD);
  double bits = 0;
  for (uint32_t pl = 0; pl < 2 * L; pl++) {
    int kvp = pl & 1;
    uint32_t l = pl / 2;
    int mode = kvp ? g->v_mode : g->k_mode; /* 0 channels, 1 KLT post, 2 KLT pre-RoPE (K) */
    int dom = mode == 3 ? 2 : mode == 2 && !kvp ? 1 : 0;
    int derope = !kvp && (mode == 2 || mode == 3);
    float rel = kvp ? g->v_step : g->k_step;
    if (l < g->fine_layers) rel *= g->fine_scale;
    const uint16_t *src = kv + (size_t)pl * T * HD;
    double bits_before = bits;
    /* V predicted from the decoded K of the same token (pre-RoPE), closed loop */
    float *vp = NULL;
    if (kvp && g->v_pred && c->vpa) {
      vp = malloc(sizeof(float) * T * HD);
      const uint16_t *kd = dec + (size_t)(2 * l) * T * HD;
      float kr[1024];
      for (uint32_t t = 1; t < T; t++) {
        for (size_t i = 0; i < HD; i++)
          kr[i] = kvs_f16_to_f32(kd[(size_t)t * HD + i]);
        for (uint32_t h = 0; h < H; h++)
          rope_row(kr + h * D, D, t, c->theta, c->neox, 1);
        for (size_t o = 0; o < HD; o++) {
          const float *A = c->vpa + ((size_t)l * HD + o) * HD;
          float a = c->vpb[(size_t)l * HD + o];
          for (size_t i = 0; i < HD; i++)
            a += A[i] * kr[i];
          vp[(size_t)t * HD + o] = a;
        }
      }
    }
    /* transform */
    for (uint32_t t = 1; t < T; t++)
      for (uint32_t h = 0; h < H; h++) {
        float row[512], out[512] = {0}; /* cppcheck: the D loop may not run */
        for (uint32_t d = 0; d < D; d++)
          row[d] = kvs_f16_to_f32(src[(size_t)t * HD + h * D + d]) -
                   (vp ? vp[(size_t)t * HD + h * D + d] : 0.0f);
        if (derope) rope_row(row, D, t, c->theta, c->neox, 1);
        if (mode) {
          const float *B = c->fwd[dom] + ((size_t)pl * H + h) * D * D;
          for (uint32_t j = 0; j < D; j++) {
            float a = 0;
            for (uint32_t d = 0; d < D; d++)
              a += B[j * D + d] * row[d];
            out[j] = a;
          }
          memcpy(row, out, sizeof(float) * D);
        }
        memcpy(y + (size_t)t * HD + h * D, row, sizeof(float) * D);
      }
    /* component weights: w_c^(alpha/2) scales the component before the uniform step */
    for (size_t i = 0; i < HD; i++)
      cw[i] = 1.0f;
    float alpha = kvp ? g->alpha_v : g->alpha_k;
    if (alpha > 0 && g->w) {
      const float *w = g->w + ((size_t)l * 2 + kvp) * HD;
      double lg = 0;
      for (size_t i = 0; i < HD; i++)
        lg += log(w[i] > 1e-30f ? w[i] : 1e-30f);
      lg /= HD;
      for (size_t i = 0; i < HD; i++)
        cw[i] = (float)exp(0.5 * alpha * (log(w[i] > 1e-30f ? w[i] : 1e-30f) - lg));
    }
    /* chunk mean per component, then token scales (over the row), then the step */
    double ss = 0;
    for (size_t i = 0; i < HD; i++) {
      double m = 0;
      for (uint32_t t = 1; t < T; t++)
        m += y[(size_t)t * HD + i];
      m /= (T - 1);
      float mf = kvs_f16_to_f32(kvs_f32_to_f16((float)m));
      for (uint32_t t = 1; t < T; t++)
        y[(size_t)t * HD + i] = (y[(size_t)t * HD + i] - mf) * cw[i];
      y[i] = mf; /* row 0 holds the means (token 0 is exact) */
    }
    int tok = kvp ? g->v_tok : g->k_tok;
    float beta = kvp ? g->beta_v : g->beta_k;
    double *tw = NULL;
    if (beta > 0 && c->nqs) {
      tw = malloc(sizeof(double) * T);
      token_weights(c, l, kv + (size_t)(2 * l) * T * HD, T, tw);
      double lg = 0;
      for (uint32_t t = 1; t < T; t++)
        lg += log(tw[t] + 1e-30);
      lg /= (T - 1);
      if (g->top_frac > 0) { /* refine only: reference = the (1 - top_frac) quantile */
        double *srt = malloc(sizeof(double) * T);
        memcpy(srt, tw + 1, sizeof(double) * (T - 1));
        for (uint32_t a = 1; a < T - 1; a++) /* insertion sort: T is small */
          for (uint32_t b = a; b > 0 && srt[b - 1] > srt[b]; b--) {
            double x = srt[b];
            srt[b] = srt[b - 1], srt[b - 1] = x;
          }
        lg = log(srt[(uint32_t)((T - 2) * (1 - g->top_frac))] + 1e-30);
        free(srt);
      }
      for (uint32_t t = 1; t < T; t++) {
        double f = exp(-0.5 * beta * (log(tw[t] + 1e-30) - lg));
        if (g->top_frac > 0) f = log(tw[t] + 1e-30) >= lg ? 1.0 / beta : 1.0; /* refine top */
        tw[t] = f < 1.0 / 64 ? 1.0 / 64 : f > 64 ? 64 : f;
      }
    }
    for (uint32_t t = 1; t < T; t++) {
      double s = 0;
      for (size_t i = 0; i < HD; i++)
        s += (double)y[(size_t)t * HD + i] * y[(size_t)t * HD + i];
      double tsv = (tok ? sqrt(s / HD) : 1.0) * (tw ? tw[t] : 1.0);
      ts[t] = tok || tw ? kvs_f16_to_f32(kvs_f32_to_f16((float)tsv + 1e-20f)) : 1.0f;
      if (!(ts[t] > 0)) ts[t] = 1.0f;
      ss += s / ((double)ts[t] * ts[t]);
    }
    float step = (float)(rel * sqrt(ss / ((double)(T - 1) * HD)));
    if (!(step > 0)) step = 1.0f;
    /* quantize per component, entropy per component (table cost: 6 bits per
       symbol of its range) or one table per plane */
    int32_t *all = g->one_table ? malloc(sizeof(int32_t) * T * HD) : NULL;
    uint64_t na = 0;
    for (size_t i = 0; i < HD; i++) {
      /* closed-loop prediction from the previous token's reconstruction */
      double rho = 0;
      if (g->dpcm) {
        double sxy = 0, sxx = 0;
        for (uint32_t t = 2; t < T; t++)
          sxy += (double)y[(size_t)t * HD + i] * y[(size_t)(t - 1) * HD + i],
              sxx += (double)y[(size_t)(t - 1) * HD + i] * y[(size_t)(t - 1) * HD + i];
        rho = sxx > 0 ? sxy / sxx : 0;
        rho = rho < 0 ? 0 : rho > 0.98 ? 0.98 : rho;
        rho = floor(rho * 64) / 64; /* stored in 6 bits */
        bits += 6;
      }
      float prev = 0;
      for (uint32_t t = 1; t < T; t++) {
        float pred = (float)rho * prev;
        float r = (y[(size_t)t * HD + i] - pred) / ts[t] / step;
        int32_t q = (int32_t)lrintf(r);
        sym[t - 1] = q;
        if (all) all[na++] = q;
        y[(size_t)t * HD + i] = prev = pred + (float)q * step * ts[t];
      }
      if (!all) {
        int32_t lo, hi;
        bits += entropy_bits(sym, T - 1, &lo, &hi) + (hi > lo ? 6.0 * (hi - lo + 1) : 8);
      }
    }
    if (all) {
      int32_t lo, hi;
      bits += entropy_bits(all, na, &lo, &hi) + 16.0 * (hi - lo + 1);
      free(all);
    }
    bits += 16.0 * HD * 2 + (tok || tw ? 16.0 * T : 0) + 32;
    free(tw); /* means, token 0, token scales, step */
    kv_bits[kvp] += bits - bits_before;
    /* inverse */
    uint16_t *dst = dec + (size_t)pl * T * HD;
    for (size_t i = 0; i < HD; i++)
      dst[i] = src[i];
    for (uint32_t t = 1; t < T; t++)
      for (uint32_t h = 0; h < H; h++) {
        float row[512], out[512] = {0}; /* cppcheck: the D loop may not run */
        for (uint32_t d = 0; d < D; d++) {
          size_t i = (size_t)h * D + d;
          row[d] = y[(size_t)t * HD + i] / cw[i] + y[i];
        }
        if (mode) {
          const float *B = c->inv[dom] + ((size_t)pl * H + h) * D * D;
          for (uint32_t d = 0; d < D; d++) {
            float a = 0;
            for (uint32_t j = 0; j < D; j++)
              a += B[d * D + j] * row[j];
            out[d] = a;
          }
          memcpy(row, out, sizeof(float) * D);
        }
        if (derope) rope_row(row, D, t, c->theta, c->neox, 0);
        for (uint32_t d = 0; d < D; d++)
          dst[(size_t)t * HD + h * D + d] =
              kvs_f32_to_f16(row[d] + (vp ? vp[(size_t)t * HD + h * D + d] : 0.0f));
      }
    free(vp);
  }
  free(y), free(sym), free(ts), free(cw);
  return bits / ((double)2 * L * T * HD);
}
