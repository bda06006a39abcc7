/* kvs-bench-codec: size, reconstruction error and CPU speed of every codec
 * profile on synthetic KV (per-channel key outliers, token-correlated
 * values) of the SmolLM2-135M shape (30 x 3 x 64) and the Llama-3-8B shape
 * (32 x 8 x 128); with --gpu, GPU decode throughput; with --real (when the
 * reference model is built), the fidelity criteria of issue 23 (KL over question +
 * answer, margin-aware top-1, first token) on real KV of MuSiQue items (items 0-99;
 * $KVS_MODEL_PATH picks the GGUF, default SmolLM2; bench_real.c).
 *
 *   kvs-bench-codec [--tokens 256,1024,4096] [--shape smol|8b|both] [--gpu|--gpu-only]
 *                   [--real N] [--quick] [--dense-dec]
 * Prints a table per shape, and a last line of JSON. Single-threaded: GB/s
 * figures are per core, counted in fp16 bytes of KV (2 bytes per element). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_codec.h"
#include "codec_int.h" /* kvs__codec_set_simd: scalar vs SIMD side by side */
#include "kvs_codec.h"
#include "kvs_synth.h"
#include "bench_version.h"

typedef struct row {
  char name[48];
  int profile;
  float step;
  double bits, rel_mse, max_err, enc_gbs, dec_gbs;
  int ok;
} row;

static double now_s(void) { return (double)kvs_now_ns() * 1e-9; }

static int measure(int profile, float step, const kvs_layout *l, uint32_t T, const uint16_t *kv,
                   double min_time, row *r) {
  kvs_codec_params p;
  kvs_codec_params_default(profile, l->n_layers, &p);
  if (profile == KVS_PROFILE_DENSE && step > 0) p.k_step = step, p.v_step = 2 * step;
  size_t cap = kvs_codec_encode_bound(&p, l, T), len = 0;
  uint64_t elems = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
  uint8_t *buf = malloc(cap);
  uint16_t *out = malloc(elems * 2);
  memset(r, 0, sizeof *r);
  r->profile = profile;
  r->step = step;
  if (profile == KVS_PROFILE_DENSE && step > 0)
    snprintf(r->name, sizeof r->name, "dense@%.2f/%.2f", step, 2 * step);
  else
    snprintf(r->name, sizeof r->name, "%s", kvs_codec_profile_name(profile));
  if (!buf || !out) goto done;
  double t0 = now_s(), t1;
  int reps = 0;
  do {
    if (kvs_codec_encode(&p, l, T, kv, buf, cap, &len) != KVS_OK) goto done;
    reps++;
    t1 = now_s();
  } while (t1 - t0 < min_time && reps < 50);
  r->enc_gbs = (double)elems * 2 * reps / (t1 - t0) / 1e9;
  kvs_codec_info info;
  if (kvs_codec_parse_header(buf, len, &info) != KVS_OK) goto done;
  size_t wsn = kvs_codec_decode_workspace_bound(&info);
  void *ws = malloc(wsn);
  kvs_codec_out o = kvs_codec_out_contiguous(out, elems * 2, KVS_DTYPE_F16);
  reps = 0;
  t0 = now_s();
  do {
    if (kvs_codec_decode(buf, len, &o, ws, wsn) != KVS_OK) {
      free(ws);
      goto done;
    }
    reps++;
    t1 = now_s();
  } while (t1 - t0 < min_time && reps < 50);
  free(ws);
  r->dec_gbs = (double)elems * 2 * reps / (t1 - t0) / 1e9;
  r->bits = kvs_codec_bits_per_elem(&info);
  double num = 0, den = 0, mx = 0;
  for (uint64_t i = 0; i < elems; i++) {
    double a = l->dtype == KVS_DTYPE_BF16 ? kvs_bf16_to_f32(kv[i]) : kvs_f16_to_f32(kv[i]);
    double b = kvs_f16_to_f32(out[i]), e = fabs(a - b);
    num += e * e, den += a * a;
    if (e > mx) mx = e;
  }
  r->rel_mse = num / den;
  r->max_err = mx;
  r->ok = 1;
done:
  free(buf);
  free(out);
  return r->ok;
}

/* thread CPU seconds: on a loaded machine, the time this core spent on the
 * work (wall time also counts other processes' turns) */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --dense-dec: CPU decode of the default dense profile, scalar reference
 * path vs the run-time SIMD path vs memcpy of the fp16 output, interleaved,
 * `reps` rounds; prints the best and the worst round of each, by wall time
 * and by thread CPU time. */
static int dense_dec_bench(const kvs_layout *l, const char *shape, uint32_t T, int reps,
                           double min_time) {
  uint64_t elems = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
  uint16_t *kv = malloc(elems * 2), *out = malloc(elems * 2), *out2 = malloc(elems * 2);
  kvs_codec_params p;
  kvs_codec_params_default(KVS_PROFILE_DENSE, l->n_layers, &p);
  size_t cap = kvs_codec_encode_bound(&p, l, T), len = 0;
  uint8_t *buf = malloc(cap);
  kvs_codec_info info;
  int ok = kv && out && out2 && buf;
  if (ok) kvs_synth_kv(l, T, 42 + T, kv);
  if (!ok || kvs_codec_encode(&p, l, T, kv, buf, cap, &len) != KVS_OK ||
      kvs_codec_parse_header(buf, len, &info) != KVS_OK) {
    free(kv), free(out), free(out2), free(buf);
    return 1;
  }
  size_t wsn = kvs_codec_decode_workspace_bound(&info);
  void *ws = malloc(wsn);
  kvs_codec_out o = kvs_codec_out_contiguous(out, elems * 2, KVS_DTYPE_F16);
  double best[2][3] = {{0}}, worst[2][3] = {{1e30, 1e30, 1e30}, {1e30, 1e30, 1e30}};
  const char *names[3] = {"scalar", "simd", "memcpy"};
  for (int r = 0; r < reps; r++)
    for (int m = 0; m < 3; m++) {
      kvs__codec_set_simd(m == 1);
      int n = 0;
      double t0 = now_s(), c0 = cpu_s(), t1;
      do {
        if (m == 2)
          memcpy(out2, out, elems * 2);
        else if (kvs_codec_decode(buf, len, &o, ws, wsn) != KVS_OK)
          return 1;
        n++;
        t1 = now_s();
      } while (t1 - t0 < min_time);
      double g[2] = {(double)elems * 2 * n / (t1 - t0) / 1e9,
                     (double)elems * 2 * n / (cpu_s() - c0) / 1e9};
      for (int k = 0; k < 2; k++) {
        if (g[k] > best[k][m]) best[k][m] = g[k];
        if (g[k] < worst[k][m]) worst[k][m] = g[k];
      }
    }
  kvs__codec_set_simd(1);
  printf("dense decode, %s, %u tokens, %.2f bits/el, fp16 out, 1 thread, %d rounds, GB/s best "
         "(worst), avx2 %s\n",
         shape, T, kvs_codec_bits_per_elem(&info), reps, kvs__cpu_has_avx2() ? "yes" : "no");
  for (int k = 0; k < 2; k++) {
    printf("  %-9s", k ? "cpu time" : "wall");
    for (int m = 0; m < 3; m++)
      printf("  %s %.3f (%.3f)", names[m], best[k][m], worst[k][m]);
    printf("  simd/scalar %.2fx\n", best[k][1] / best[k][0]);
  }
  free(kv), free(out), free(out2), free(buf), free(ws);
  return 0;
}

static const float k_dense_steps[] = {0.15f, 0.25f, 0.35f, 0.5f, 0.7f, 1.0f};
#define N_STEPS (sizeof k_dense_steps / sizeof k_dense_steps[0])

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-codec")) return 0;
  uint32_t tokens[8] = {256, 1024, 4096};
  int n_tok = 3, shape = 3, gpu = 0, real = 0, quick = 0, dense_dec = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
      n_tok = 0;
      for (char *s = strtok(argv[++i], ","); s && n_tok < 8; s = strtok(NULL, ","))
        tokens[n_tok++] = (uint32_t)atoi(s);
    } else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      i++;
      shape = !strcmp(argv[i], "smol") ? 1 : !strcmp(argv[i], "8b") ? 2 : 3;
    } else if (!strcmp(argv[i], "--gpu")) {
      gpu = 1;
    } else if (!strcmp(argv[i], "--gpu-only")) {
      gpu = 2; /* skip the CPU table (encodes still run on the CPU) */
    } else if (!strcmp(argv[i], "--real") && i + 1 < argc) {
      real = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--quick")) {
      quick = 1;
    } else if (!strcmp(argv[i], "--dense-dec")) {
      dense_dec = 1;
    } else if (!strcmp(argv[i], "--data") && i + 1 < argc) {
      setenv("KVS_RAG_DATA", argv[++i], 1); /* --real's MuSiQue file (read in bench_real.c) */
    } else {
      fprintf(stderr,
              "usage: %s [--tokens a,b,c] [--shape smol|8b|both] [--gpu|--gpu-only] [--real N] "
              "[--quick] [--dense-dec] [--data MUSIQUE]\n",
              argv[0]);
      return 2;
    }
  }
  double min_time = quick ? 0.05 : 0.3;
  kvs_layout shapes[2] = {
      {30, 3, 64, KVS_DTYPE_F16, KVS_ROPE_NORM, 64, 100000.0f, 1.0f, 0, 0, 0, 0},
      {32, 8, 128, KVS_DTYPE_BF16, KVS_ROPE_NORM, 128, 500000.0f, 1.0f, 0, 0, 0, 0}};
  const char *shape_name[2] = {"smollm2-135m", "llama3-8b"};
  if (dense_dec) {
    for (int si = 0; si < 2; si++)
      for (int ti = 0; shape & (1 << si) && ti < n_tok; ti++)
        if (dense_dec_bench(&shapes[si], shape_name[si], tokens[ti], 3, quick ? 0.1 : 0.4))
          return 1;
    return 0;
  }
  static const int profiles[] = {KVS_PROFILE_LOSSLESS, KVS_PROFILE_INT8, KVS_PROFILE_KIVI4,
                                 KVS_PROFILE_KIVI2,    KVS_PROFILE_FP4,  KVS_PROFILE_CACHEGEN};
  cJSON *root = cJSON_CreateObject(), *synth = cJSON_CreateArray();
  cJSON_AddStringToObject(root, "bench", "codec");
  cJSON_AddItemToObject(root, "synthetic", synth);
  /* dense vs cachegen at equal reconstruction error, on the first smol size */
  double cmp_cg_bits = 0, cmp_cg_mse = 0, cmp_dense_bits = 0, cmp_dense_mse = 0;
  float cmp_dense_step = 0;
  int have_cmp = 0;
  for (int si = 0; si < 2; si++) {
    if (!(shape & (1 << si))) continue;
    const kvs_layout *l = &shapes[si];
    for (int ti = 0; ti < n_tok; ti++) {
      uint32_t T = tokens[ti];
      uint64_t elems = 2ull * l->n_layers * T * l->n_kv_heads * l->head_dim;
      uint16_t *kv = malloc(elems * 2);
      if (!kv) return 1;
      kvs_synth_kv(l, T, 42 + T, kv);
      printf("\n== %s  %u tokens  (%.1f MB of %s KV), synthetic, 1 core\n", shape_name[si], T,
             elems * 2 / 1e6, kvs_dtype_name(l->dtype));
      printf("%-14s %8s %11s %10s %10s %10s\n", "profile", "bits/el", "rel_mse", "max_err",
             "enc GB/s", "dec GB/s");
      row rows[16];
      int nr = 0;
      for (size_t pi = 0; gpu < 2 && pi < sizeof profiles / sizeof profiles[0]; pi++)
        measure(profiles[pi], 0, l, T, kv, min_time, &rows[nr++]);
      for (size_t k = 0; gpu < 2 && k < N_STEPS; k++)
        measure(KVS_PROFILE_DENSE, k_dense_steps[k], l, T, kv, min_time, &rows[nr++]);
      for (int i = 0; i < nr; i++) {
        row *r = &rows[i];
        if (!r->ok) {
          printf("%-14s FAILED\n", r->name);
          continue;
        }
        printf("%-14s %8.3f %11.3e %10.4f %10.3f %10.3f\n", r->name, r->bits, r->rel_mse,
               r->max_err, r->enc_gbs, r->dec_gbs);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "shape", shape_name[si]);
        cJSON_AddNumberToObject(o, "tokens", T);
        cJSON_AddStringToObject(o, "profile", r->name);
        bench_json_num(o, "bits_per_elem", "%.4f", r->bits);
        bench_json_num(o, "rel_mse", "%.4e", r->rel_mse);
        bench_json_num(o, "max_err", "%.4f", r->max_err);
        bench_json_num(o, "enc_gbs", "%.3f", r->enc_gbs);
        bench_json_num(o, "dec_gbs", "%.3f", r->dec_gbs);
        cJSON_AddItemToArray(synth, o);
      }
      /* smallest dense setting at or below cachegen-ref's error */
      row *cg = NULL, *best = NULL;
      for (int i = 0; i < nr; i++)
        if (rows[i].ok && rows[i].profile == KVS_PROFILE_CACHEGEN) cg = &rows[i];
      for (int i = 0; cg && i < nr; i++)
        if (rows[i].ok && rows[i].profile == KVS_PROFILE_DENSE && rows[i].rel_mse <= cg->rel_mse &&
            (!best || rows[i].bits < best->bits))
          best = &rows[i];
      if (cg && best) {
        printf(
            "dense at cachegen-ref's error: %s %.3f bits/el vs cachegen-ref %.3f (%.2fx smaller), "
            "rel_mse %.3e vs %.3e\n",
            best->name, best->bits, cg->bits, cg->bits / best->bits, best->rel_mse, cg->rel_mse);
        if (!have_cmp) {
          have_cmp = 1;
          cmp_cg_bits = cg->bits, cmp_cg_mse = cg->rel_mse;
          cmp_dense_bits = best->bits, cmp_dense_mse = best->rel_mse, cmp_dense_step = best->step;
        }
      }
      if (gpu) bench_codec_gpu(l, T, kv, shape_name[si], synth);
      free(kv);
    }
  }
  if (have_cmp) {
    cJSON *o = cJSON_AddObjectToObject(root, "dense_vs_cachegen_synthetic");
    bench_json_num(o, "dense_step", "%.2f", cmp_dense_step);
    bench_json_num(o, "dense_bits", "%.4f", cmp_dense_bits);
    bench_json_num(o, "dense_rel_mse", "%.4e", cmp_dense_mse);
    bench_json_num(o, "cachegen_bits", "%.4f", cmp_cg_bits);
    bench_json_num(o, "cachegen_rel_mse", "%.4e", cmp_cg_mse);
  }
  if (real)
    bench_codec_real(real, root);
  else
    cJSON_AddNullToObject(root, "best_at_parity");
  return bench_json_print(root);
}
