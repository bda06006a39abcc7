/* bench_sim.c: offline quantizer study on real KV (see there). */
#ifndef KVS_BENCH_SIM_H
#define KVS_BENCH_SIM_H
#include <stdint.h>

#include "kvs_half.h"

typedef struct sim_cal {
  uint32_t L, H, D;
  double theta;
  int neox;
  uint64_t n, nq;
  double *sum[2], *cross[2]; /* [dom: 0 post-RoPE, 1 pre-RoPE (K)][(l, kv, h)][D][D] */
  /* transforms per domain (0 post-RoPE KLT, 1 pre-RoPE KLT (K), 2 weighted: K pre-RoPE
     in the queries' metric, V in the output projection's): z = fwd x, x = inv z */
  float *fwd[3], *inv[3];
  double *wq;            /* [(l, kv=0, h)][D][D]: sum of q q^T, pre-RoPE */
  double *mv;            /* [(l, kv=1, h)][D][D]: sum over the group's heads of W_o,h^T W_o,h */
  double *jsum, *jcross; /* KVS_SIM_VK: per layer, moments of [K pre-RoPE; V] (2*H*D) */
  float *vpa, *vpb;      /* V ~ vpa k_pre + vpb per layer ([L][HD][HD], [L][HD]) */
  uint32_t grp, nqs, nqs_cap; /* sample queries kept per layer: [l][nqs_cap][H*grp][D] */
  float *qs;
} sim_cal;

typedef struct sim_cfg {
  float k_step, v_step, fine_scale;
  uint32_t fine_layers;
  int k_mode, v_mode; /* 0 channels, 1 KLT (post-RoPE), 2 KLT pre-RoPE (K), 3 weighted KLT */
  int k_tok, v_tok;   /* token scales */
  int one_table;      /* one entropy table per plane (dense) instead of per component */
  float alpha_k, alpha_v;
  const float *w;       /* [L][2][H*D] channel weights (mode 0) or NULL */
  float beta_k, beta_v; /* > 0: token steps x (E[p_t^2] / geo mean)^(-beta/2), p the
                           attention of the calibration queries on this chunk */
  float top_frac;       /* > 0: only the top_frac tokens by that weight get finer, never coarser */
  int dpcm;             /* predict each component from the previous token (closed loop) */
  int v_pred;           /* V minus its linear prediction from the decoded K (KVS_SIM_VK) */
} sim_cfg;

sim_cal *sim_cal_new(uint32_t L, uint32_t H, uint32_t D, double theta, int neox);
void sim_cal_free(sim_cal *c);
void sim_cal_add(sim_cal *c, const uint16_t *kv, uint32_t T);
void sim_cal_add_q(sim_cal *c, uint32_t l, const float *q, uint32_t n, uint32_t grp,
                   const uint32_t *pos);
/* wo (E, H*grp*D) of layer l */
void sim_cal_set_wo(sim_cal *c, uint32_t l, const float *wo, uint32_t E, uint32_t grp);
void sim_cal_finish(sim_cal *c);
/* KVS_SIM_VK set during calibration: prints the Gaussian bound of coding V given K */
void sim_vk_report(sim_cal *c, double vstep);
/* returns bits per element; kv_bits[0|1] += the bits of the K | V planes */
double sim_run(const sim_cal *c, const sim_cfg *g, const uint16_t *kv, uint16_t *dec, uint32_t T,
               double *kv_bits);
#endif
