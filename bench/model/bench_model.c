/* kvs-bench-model: speed of the reference engine, with its baselines measured
 * in the same run.
 *
 *   kvs-bench-model [--model GGUF] [--cpu-tokens 512,2048] [--decode 32]
 *                   [--gpu-tokens 1024,2048,4096,8192,16384,32768] [--no-gpu] [--no-8b]
 *                   [--llama-ref PATH] [--check-reference] [--fixtures DIR] [--torch-script PATH]
 *                   [--no-recompute] [--no-qwen]
 *
 * CPU: prefill tokens/s and greedy decode tokens/s of kvs_model on real text
 * (MuSiQue passages, token ids from the fixture), and llama.cpp's on the SAME
 * ids (tools/llamacpp's kvs-llama-ref, when built), 2 threads each.
 * GPU (when a device is there): prefill time at each --gpu-tokens size for
 * SmolLM2, the Qwen2.5-1.5B shape (biases, NEOX; --no-qwen skips it) and the
 * Llama-3-8B shape (seeded random weights), beside a
 * PyTorch scaled_dot_product_attention prefill of the same shape
 * (bench/model/torch_prefill.py) when torch with CUDA is importable.
 * Also (unless --no-recompute): 15% of the longest CPU prompt recomputed layer
 * by layer over copied KV plus 32 new tokens, against its full prefill; on
 * the GPU the same probe at min(largest size, 8192) tokens per model.
 * --check-reference: top-1 agreement with llama.cpp on the fixtures
 * (positions whose llama.cpp top-2 margin > 0.75), CPU and GPU.
 * Last line: one JSON object with every figure. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "kvs_gpu_model.h"
#include "model_int.h" /* kvs__model_weights_get */
#include "kvs_model.h"
#include "bench_json.h"
#include "bench_version.h"
#include "top8_fixture.h" /* tests/model/: the fixture reader the tests use */

#ifndef KVS_SOURCE_DIR
#define KVS_SOURCE_DIR "."
#endif
#define MARGIN_TOL TOP8_MARGIN_TOL

/* The last line (bench_json.h): every figure is added to J as it is measured. */
static cJSON *J;

static uint8_t *read_file(const char *path, size_t *n) {
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)sz + 1);
  if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
    free(b);
    b = NULL;
  }
  fclose(f);
  *n = (size_t)sz;
  return b;
}

static int parse_list(const char *s, uint32_t *out, int cap) {
  int n = 0;
  while (s && *s && n < cap) {
    out[n++] = (uint32_t)strtoul(s, NULL, 10);
    s = strchr(s, ',');
    if (s) s++;
  }
  return n;
}

/* Real-text prompt: MuSiQue passages' llama.cpp ids from the fixture,
 * concatenated until n tokens (wrapping around if needed). */
static kvs_token *real_prompt(const char *fixdir, uint32_t n) {
  char p[8192];
  snprintf(p, sizeof p, "%s/musique_tok.bin.zst", fixdir);
  size_t zn;
  uint8_t *z = read_file(p, &zn);
  if (!z) return NULL;
  unsigned long long rn = ZSTD_getFrameContentSize(z, zn);
  if (rn == ZSTD_CONTENTSIZE_ERROR || rn == ZSTD_CONTENTSIZE_UNKNOWN) {
    free(z);
    return NULL;
  }
  uint8_t *raw = malloc(rn);
  if (!raw || ZSTD_decompress(raw, rn, z, zn) != rn) {
    free(z);
    free(raw);
    return NULL;
  }
  free(z);
  kvs_token *ids = malloc(n * sizeof *ids);
  uint32_t k = 0;
  while (k < n) {
    size_t off = 0;
    while (off + 8 <= rn && k < n) {
      uint32_t len, cnt;
      memcpy(&len, raw + off + 4, 4);
      off += 8 + len;
      memcpy(&cnt, raw + off, 4);
      for (uint32_t i = 0; i < cnt && k < n; i++) {
        uint16_t v;
        memcpy(&v, raw + off + 4 + 2 * i, 2);
        ids[k++] = v;
      }
      off += 4 + 2 * (size_t)cnt;
    }
  }
  free(raw);
  return ids;
}

static void bench_cpu(kvs_model *m, const char *fixdir, const char *ref, const char *gguf,
                      const uint32_t *sizes, int ns, uint32_t n_dec) {
  uint32_t V = kvs_model_config(m)->n_vocab;
  float *lg = malloc((size_t)V * 4);
  cJSON *rows = cJSON_AddArrayToObject(J, "cpu");
  for (int si = 0; si < ns; si++) {
    uint32_t n = sizes[si];
    kvs_token *ids = real_prompt(fixdir, n);
    if (!ids) {
      fprintf(stderr, "no fixture prompt in %s\n", fixdir);
      break;
    }
    kvs_seq *s;
    if (kvs_seq_create(m, n + n_dec + 1, &s) != KVS_OK) break;
    uint64_t t0 = kvs_now_ns();
    kvs_err e = kvs_model_prefill(m, s, ids, n, 0, lg);
    double pf = (double)(kvs_now_ns() - t0) * 1e-9;
    t0 = kvs_now_ns();
    for (uint32_t i = 0; !e && i < n_dec; i++) {
      kvs_token t = kvs_argmax(lg, V);
      e = kvs_model_prefill(m, s, &t, 1, 0, lg);
    }
    double dc = (double)(kvs_now_ns() - t0) * 1e-9;
    kvs_seq_free(s);
    double ours_pf = n / pf, ours_dc = n_dec ? n_dec / dc : 0;
    /* llama.cpp on the same ids, same run */
    double ll_pf = -1, ll_dc = -1;
    if (ref && access(ref, X_OK) == 0) {
      char tmp[] = "/tmp/kvs-bench-ids-XXXXXX";
      int fd = mkstemp(tmp);
      if (fd >= 0) {
        FILE *f = fdopen(fd, "wb");
        fwrite(ids, 4, n, f);
        fclose(f);
        char cmd[16384];
        snprintf(cmd, sizeof cmd, "'%s' bench '%s' '%s' %u 2 2>/dev/null", ref, gguf, tmp, n_dec);
        FILE *pp = popen(cmd, "r");
        char line[512];
        while (pp && fgets(line, sizeof line, pp)) {
          if (sscanf(line, "{\"prefill_tok_s\":%lf,\"decode_tok_s\":%lf}", &ll_pf, &ll_dc) == 2)
            break;
        }
        if (pp) pclose(pp);
        unlink(tmp);
      }
    }
    printf("cpu  prompt %5u tokens: prefill %8.1f tok/s  decode %6.1f tok/s | llama.cpp prefill "
           "%8.1f tok/s  decode %6.1f tok/s | ratio prefill %.2f decode %.2f%s\n",
           n, ours_pf, ours_dc, ll_pf, ll_dc, ll_pf > 0 ? ours_pf / ll_pf : 0,
           ll_dc > 0 ? ours_dc / ll_dc : 0, e ? " (ERROR)" : "");
    fflush(stdout);
    cJSON *row = cJSON_CreateObject();
    cJSON_AddNumberToObject(row, "tokens", n);
    bench_json_num(row, "prefill_tok_s", "%.2f", ours_pf);
    bench_json_num(row, "decode_tok_s", "%.2f", ours_dc);
    bench_json_num(row, "llamacpp_prefill_tok_s", "%.2f", ll_pf);
    bench_json_num(row, "llamacpp_decode_tok_s", "%.2f", ll_dc);
    cJSON_AddItemToArray(rows, row);
    free(ids);
  }
  free(lg);
}

/* What selective recompute costs on this engine: a full prefill of n tokens
 * against running every layer for a fraction of them over KV copied in (the
 * blend path through the engine ops), then 32 new tokens prefilled on top. */
static void bench_recompute(kvs_model *m, const char *fixdir, uint32_t n, double frac) {
  const kvs_model_cfg *c = kvs_model_config(m);
  kvs_token *ids = real_prompt(fixdir, n + 32);
  if (!ids) return;
  kvs_seq *a, *b;
  if (kvs_seq_create(m, n + 32, &a) || kvs_seq_create(m, n + 32, &b)) return;
  uint64_t t0 = kvs_now_ns();
  kvs_err e = kvs_model_prefill(m, a, ids, n, 0, NULL);
  double full = (double)(kvs_now_ns() - t0) * 1e-9;
  size_t plane = (size_t)n * c->n_kv_heads * c->head_dim * sizeof(kvs_f16);
  for (uint32_t l = 0; l < c->n_layers; l++) {
    memcpy(kvs_seq_k(b, l), kvs_seq_k(a, l), plane);
    memcpy(kvs_seq_v(b, l), kvs_seq_v(a, l), plane);
  }
  uint32_t ns = 0, step = (uint32_t)(1.0 / frac + 0.5);
  uint32_t *idx = malloc(n * sizeof *idx);
  kvs_token *sub = malloc(n * sizeof *sub);
  for (uint32_t i = 0; i < n; i += step)
    idx[ns] = i, sub[ns++] = ids[i];
  float *h = malloc((size_t)ns * c->n_embd * sizeof *h);
  t0 = kvs_now_ns();
  if (!e) e = kvs_model_embed(m, sub, ns, h);
  for (uint32_t l = 0; !e && l < c->n_layers; l++)
    e = kvs_model_layer(m, b, l, ns, idx, NULL, h);
  double rec = (double)(kvs_now_ns() - t0) * 1e-9;
  t0 = kvs_now_ns();
  if (!e) e = kvs_model_prefill(m, b, ids + n, 32, 0, NULL);
  double suf = (double)(kvs_now_ns() - t0) * 1e-9;
  printf("cpu  recompute %u of %u tokens layer by layer: %.3f s + 32 new tokens %.3f s | full "
         "prefill %.3f s | speedup %.2fx%s\n",
         ns, n, rec, suf, full, full / (rec + suf), e ? " (ERROR)" : "");
  cJSON *o = cJSON_AddObjectToObject(J, "cpu_recompute");
  cJSON_AddNumberToObject(o, "tokens", n);
  cJSON_AddNumberToObject(o, "recomputed", ns);
  bench_json_num(o, "recompute_s", "%.4f", rec);
  bench_json_num(o, "suffix_s", "%.4f", suf);
  bench_json_num(o, "full_prefill_s", "%.4f", full);
  free(idx), free(sub), free(h), free(ids);
  kvs_seq_free(a);
  kvs_seq_free(b);
}

/* The GPU recompute probes, added to J after the "gpu" array */
static cJSON *J_recompute;

/* The same probe on the GPU engine path (device buffers), n tokens. */
static void bench_gpu_recompute(const char *name, kvs_gpu_model *gm, uint32_t n) {
  const kvs_model_cfg *c = kvs_gpu_model_config(gm);
  uint32_t V = c->n_vocab;
  size_t row = (size_t)c->n_kv_heads * c->head_dim;
  kvs_token *ids = malloc((n + 32) * sizeof *ids);
  uint32_t *idx = malloc(n * sizeof *idx);
  kvs_token *sub = malloc(n * sizeof *sub);
  kvs_gpu_seq *a = NULL, *b = NULL;
  void *kb = NULL, *vb = NULL, *h = NULL;
  double full = 0, rec = 0, suf = 0;
  uint32_t ns = 0;
  kvs_err e = ids && idx && sub ? KVS_OK : KVS_ENOMEM;
  for (uint32_t i = 0; !e && i < n + 32; i++)
    ids[i] = (kvs_token)((i * 7919u + 13) % V);
  for (uint32_t i = 0; !e && i < n; i += 7)
    idx[ns] = i, sub[ns++] = ids[i];
  if (!e) e = kvs_gpu_seq_create(gm, n + 32, &a);
  if (!e) e = kvs_gpu_seq_create(gm, n + 32, &b);
  if (!e) e = kvs_gpu_buffer_alloc(n * row * 2, &kb);
  if (!e) e = kvs_gpu_buffer_alloc(n * row * 2, &vb);
  if (!e) e = kvs_gpu_buffer_alloc((size_t)ns * c->n_embd * 4, &h);
  if (!e) e = kvs_gpu_seq_prefill(gm, a, ids, n, 0, NULL, NULL); /* warm-up */
  if (!e) e = kvs_gpu_seq_truncate(a, 0);
  if (!e) e = kvs_gpu_seq_prefill(gm, a, ids, n, 0, NULL, &full);
  for (uint32_t l = 0; !e && l < c->n_layers; l++) {
    e = kvs_gpu_seq_kv_read(a, l, 0, n, kb, vb);
    if (!e) e = kvs_gpu_seq_kv_write(b, l, 0, n, kb, vb);
  }
  uint64_t t0 = kvs_now_ns();
  if (!e) e = kvs_gpu_embed(gm, sub, ns, h);
  for (uint32_t l = 0; !e && l < c->n_layers; l++)
    e = kvs_gpu_layer(gm, b, l, ns, idx, NULL, h);
  rec = (double)(kvs_now_ns() - t0) * 1e-6;
  if (!e) e = kvs_gpu_seq_prefill(gm, b, ids + n, 32, 0, NULL, &suf);
  if (e) {
    printf("gpu  %s recompute probe: error %s\n", name, kvs_errname(e));
  } else {
    printf("gpu  %-8s recompute %u of %u tokens layer by layer: %.2f ms + 32 new tokens %.2f ms | "
           "full prefill %.2f ms | speedup %.2fx\n",
           name, ns, n, rec, suf, full, full / (rec + suf));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", name);
    cJSON_AddNumberToObject(o, "recompute_tokens", ns);
    cJSON_AddNumberToObject(o, "of", n);
    bench_json_num(o, "recompute_ms", "%.3f", rec);
    bench_json_num(o, "suffix_ms", "%.3f", suf);
    bench_json_num(o, "full_ms", "%.3f", full);
    cJSON_AddItemToArray(J_recompute, o);
  }
  kvs_gpu_buffer_free(kb), kvs_gpu_buffer_free(vb), kvs_gpu_buffer_free(h);
  kvs_gpu_seq_free(a);
  kvs_gpu_seq_free(b);
  free(ids), free(idx), free(sub);
}

/* fraction of fixture positions (llama.cpp margin > MARGIN_TOL) where our top-1 agrees */
static void check_reference(kvs_model *m, const char *fixdir) {
  char p[8192];
  snprintf(p, sizeof p, "%s/logits_top8.dat", fixdir);
  size_t ln;
  uint8_t *l = read_file(p, &ln);
  if (!l) {
    printf("check-reference: no fixtures in %s\n", fixdir);
    return;
  }
  uint32_t V = kvs_model_config(m)->n_vocab;
  kvs__model_weights w;
  kvs__model_weights_get(m, &w);
  kvs_gpu_model *gm = NULL;
  int gpu = kvs_gpu_model_create(&w, 1024, &gm) == KVS_OK;
  uint32_t pos = 0, chk = 0, agree = 0, agree_g = 0, ties = 0;
  float maxe = 0, maxe_g = 0;
  size_t off = 0;
  top8_prompt tp = {0};
  int more;
  while ((more = top8_next(l, ln, &off, &tp)) != 0) {
    if (more < 0) {
      printf("check-reference: %s is cut short\n", p);
      exit(1);
    }
    uint32_t n = tp.n;
    const kvs_token *ids = tp.ids;
    float *lg = malloc((size_t)n * V * 4), *lgg = gpu ? malloc((size_t)n * V * 4) : NULL;
    kvs_seq *s;
    if (kvs_seq_create(m, n, &s) || kvs_model_prefill(m, s, ids, n, 1, lg)) {
      printf("check-reference: CPU prefill failed\n");
      exit(1);
    }
    kvs_seq_free(s);
    if (gpu && (kvs_gpu_model_reset(gm) || kvs_gpu_model_prefill(gm, ids, n, 1, lgg, NULL)))
      gpu = 0;
    for (uint32_t i = 0; i < n; i++) {
      int32_t rid[8];
      float rv[8];
      top8_at(&tp, i, rid, rv);
      for (int k = 0; k < 8; k++) {
        maxe = fmaxf(maxe, fabsf(lg[(size_t)i * V + rid[k]] - rv[k]));
        if (gpu) maxe_g = fmaxf(maxe_g, fabsf(lgg[(size_t)i * V + rid[k]] - rv[k]));
      }
      pos++;
      if (rv[0] - rv[1] > MARGIN_TOL) {
        chk++;
        agree += kvs_argmax(lg + (size_t)i * V, V) == rid[0];
        if (gpu) agree_g += kvs_argmax(lgg + (size_t)i * V, V) == rid[0];
      } else {
        ties++;
      }
    }
    free(lg), free(lgg);
  }
  printf("check-reference: %u positions, %u with llama.cpp top-2 margin > %.2f, %u near-ties\n",
         pos, chk, MARGIN_TOL, ties);
  printf("top1_agreement_vs_llamacpp=%.4f (cpu, max |dlogit| over llama.cpp top-8 %.3f)\n",
         chk ? (double)agree / chk : 0, maxe);
  if (gpu)
    printf("top1_agreement_vs_llamacpp_gpu=%.4f (gpu, max |dlogit| %.3f)\n",
           chk ? (double)agree_g / chk : 0, maxe_g);
  bench_json_num(J, "top1_agreement_vs_llamacpp", "%.4f", chk ? (double)agree / chk : 0);
  cJSON_AddNumberToObject(J, "reference_positions", pos);
  cJSON_AddNumberToObject(J, "reference_checked", chk);
  cJSON_AddNumberToObject(J, "reference_near_ties", ties);
  bench_json_num(J, "max_logit_err", "%.4f", maxe);
  if (gpu) {
    bench_json_num(J, "top1_agreement_vs_llamacpp_gpu", "%.4f", chk ? (double)agree_g / chk : 0);
    bench_json_num(J, "max_logit_err_gpu", "%.4f", maxe_g);
  }
  kvs_gpu_model_free(gm);
  free(l);
}

/* PyTorch SDPA prefill of the same shape, all sizes in one process:
 * {"tokens":T,"ms":x} lines */
static void torch_ms(const char *script, const char *shape, const uint32_t *sizes, int ns,
                     double *ms) {
  char list[512] = "";
  size_t w = 0;
  for (int i = 0; i < ns; i++) {
    ms[i] = -1;
    w += (size_t)snprintf(list + w, sizeof list - w, "%s%u", i ? "," : "", sizes[i]);
    if (w >= sizeof list) return;
  }
  char cmd[8800];
  snprintf(cmd, sizeof cmd, "python3 '%s' --shape %s --tokens %s 2>/dev/null", script, shape, list);
  FILE *pp = popen(cmd, "r");
  if (!pp) return;
  char line[512];
  while (fgets(line, sizeof line, pp)) {
    unsigned t;
    double v;
    if (sscanf(line, "{\"tokens\":%u,\"ms\":%lf}", &t, &v) == 2)
      for (int i = 0; i < ns; i++)
        if (sizes[i] == t) ms[i] = v;
  }
  pclose(pp);
}

static void bench_gpu(const char *name, kvs_model *m, const uint32_t *sizes, int ns,
                      const char *torch, int have_torch, cJSON *rows) {
  kvs__model_weights w;
  kvs__model_weights_get(m, &w);
  uint32_t maxT = 0;
  for (int i = 0; i < ns; i++)
    maxT = sizes[i] > maxT ? sizes[i] : maxT;
  kvs_gpu_model *gm;
  kvs_err e = kvs_gpu_model_create(&w, maxT, &gm);
  if (e) {
    printf("gpu  %s: not run (%s)\n", name, kvs_errname(e));
    return;
  }
  uint32_t V = w.cfg.n_vocab;
  kvs_token *ids = malloc(maxT * sizeof *ids);
  for (uint32_t i = 0; i < maxT; i++)
    ids[i] = (kvs_token)((i * 7919u + 13) % V);
  float *lg = malloc((size_t)V * 4);
  double ours[16], tms[16];
  int done = 0;
  for (int i = 0; i < ns; i++) {
    double ms = 0, best = 1e30;
    for (int rep = 0; rep < 3; rep++) { /* the first run warms up cuBLAS and the caches */
      kvs_gpu_model_reset(gm);
      e = kvs_gpu_model_prefill(gm, ids, sizes[i], 0, lg, &ms);
      if (e) break;
      if (rep > 0 && ms < best) best = ms;
    }
    if (e) {
      printf("gpu  %s %6u tokens: error %s\n", name, sizes[i], kvs_errname(e));
      break;
    }
    ours[done++] = best;
  }
  free(ids);
  free(lg);
  if (done) bench_gpu_recompute(name, gm, sizes[done - 1] < 8192 ? sizes[done - 1] : 8192);
  kvs_gpu_model_free(gm); /* torch gets the memory back */
  for (int i = 0; i < done; i++)
    tms[i] = -1;
  if (have_torch && done) torch_ms(torch, name, sizes, done, tms);
  for (int i = 0; i < done; i++) {
    uint32_t T = sizes[i];
    printf("gpu  %-8s %6u tokens: prefill %9.2f ms (%9.0f tok/s) | torch sdpa %9.2f ms | "
           "ours/torch %.2f\n",
           name, T, ours[i], T / ours[i] * 1e3, tms[i], tms[i] > 0 ? ours[i] / tms[i] : 0);
    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "model", name);
    cJSON_AddNumberToObject(row, "tokens", T);
    bench_json_num(row, "ms", "%.3f", ours[i]);
    bench_json_num(row, "torch_ms", "%.3f", tms[i]);
    cJSON_AddItemToArray(rows, row);
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-model")) return 0;
  const char *home = getenv("HOME") ? getenv("HOME") : "/root";
  char model_path[4096], ref_path[4096], fixdir[4096], torch[4096];
  snprintf(model_path, sizeof model_path,
           "%s/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
  if (getenv("KVS_MODEL_PATH"))
    snprintf(model_path, sizeof model_path, "%s", getenv("KVS_MODEL_PATH"));
  snprintf(ref_path, sizeof ref_path, "%s/.cache/kvstash/llama.cpp/bin/kvs-llama-ref", home);
  snprintf(fixdir, sizeof fixdir, "%s/tests/model/fixtures", KVS_SOURCE_DIR);
  snprintf(torch, sizeof torch, "%s/bench/model/torch_prefill.py", KVS_SOURCE_DIR);
  uint32_t cpu_sizes[16] = {512, 2048}, gpu_sizes[16] = {1024, 2048, 4096, 8192, 16384, 32768};
  int n_cpu = 2, n_gpu = 6, no_gpu = 0, no_8b = 0, no_qwen = 0, check = 0, recompute = 1;
  uint32_t n_dec = 32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--model") && v)
      snprintf(model_path, sizeof model_path, "%s", v), i++;
    else if (!strcmp(a, "--llama-ref") && v)
      snprintf(ref_path, sizeof ref_path, "%s", v), i++;
    else if (!strcmp(a, "--fixtures") && v)
      snprintf(fixdir, sizeof fixdir, "%s", v), i++;
    else if (!strcmp(a, "--torch-script") && v)
      snprintf(torch, sizeof torch, "%s", v), i++;
    else if (!strcmp(a, "--cpu-tokens") && v)
      n_cpu = parse_list(v, cpu_sizes, 16), i++;
    else if (!strcmp(a, "--gpu-tokens") && v)
      n_gpu = parse_list(v, gpu_sizes, 16), i++;
    else if (!strcmp(a, "--decode") && v)
      n_dec = (uint32_t)atoi(v), i++;
    else if (!strcmp(a, "--no-gpu"))
      no_gpu = 1;
    else if (!strcmp(a, "--no-8b"))
      no_8b = 1;
    else if (!strcmp(a, "--no-qwen"))
      no_qwen = 1;
    else if (!strcmp(a, "--no-recompute"))
      recompute = 0;
    else if (!strcmp(a, "--check-reference"))
      check = 1;
    else {
      fprintf(stderr, "usage: see the comment at the top of bench/model/bench_model.c\n");
      return 2;
    }
  }
  kvs_model *m;
  kvs_err e = kvs_model_load(model_path, &m);
  if (e) {
    fprintf(stderr, "cannot load %s: %s\n", model_path, kvs_strerror(e));
    return 1;
  }
  J = cJSON_CreateObject();
  J_recompute = cJSON_CreateArray();
  cJSON_AddStringToObject(J, "bench", "model");
  if (check) check_reference(m, fixdir);
  int have_llama = access(ref_path, X_OK) == 0;
  printf("llama.cpp reference: %s\n",
         have_llama ? ref_path : "not built (tools/llamacpp/build.sh)");
  bench_cpu(m, fixdir, have_llama ? ref_path : NULL, model_path, cpu_sizes, n_cpu, n_dec);
  if (recompute) bench_recompute(m, fixdir, cpu_sizes[n_cpu - 1], 0.15);
  int gpu = !no_gpu && kvs_gpu_device_count() > 0;
  if (gpu) {
    char name[256] = "";
    int maj = 0, mn = 0;
    kvs_gpu_device_info(0, name, sizeof name, &maj, &mn);
    printf("gpu device: %s (sm_%d%d)\n", name, maj, mn);
    cJSON_AddStringToObject(J, "gpu_device", name);
    int have_torch =
        system("python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' "
               ">/dev/null 2>&1") == 0;
    printf("pytorch: %s\n", have_torch ? "available" : "not importable (torch columns are -1)");
    cJSON *rows = cJSON_AddArrayToObject(J, "gpu");
    /* the loaded file's row; its torch twin runs the shape of the same name */
    kvs__model_weights lw;
    kvs__model_weights_get(m, &lw);
    int loaded_qwen = lw.cfg.qkv_bias && lw.cfg.n_embd == 1536;
    const char *lname = loaded_qwen                               ? "qwen1.5b"
                        : lw.cfg.qkv_bias && lw.cfg.n_embd == 896 ? "qwen0.5b"
                                                                  : "smollm2";
    bench_gpu(lname, m, gpu_sizes, n_gpu, torch, have_torch, rows);
    if (!no_qwen && !loaded_qwen) { /* Qwen2.5-1.5B shape: biases, NEOX, untied output */
      kvs_model_cfg qc = {.n_vocab = 151936,
                          .n_embd = 1536,
                          .n_layers = 28,
                          .n_heads = 12,
                          .n_kv_heads = 2,
                          .head_dim = 128,
                          .n_ff = 8960,
                          .n_ctx_train = 32768,
                          .rope_theta = 1e6f,
                          .norm_eps = 1e-6f,
                          .rope_type = KVS_ROPE_NEOX,
                          .qkv_bias = 1};
      kvs_model *qm;
      if (kvs_model_create_random(&qc, 1, 0, &qm) == KVS_OK) {
        bench_gpu("qwen1.5b", qm, gpu_sizes, n_gpu, torch, have_torch, rows);
        kvs_model_free(qm);
      }
    }
    if (!no_8b) {
      kvs_model *big;
      if (kvs_model_create_random(NULL, 1, 0, &big) == KVS_OK) {
        bench_gpu("8b", big, gpu_sizes, n_gpu, torch, have_torch, rows);
        kvs_model_free(big);
      }
    }
    cJSON_AddItemToObject(J, "gpu_recompute", J_recompute);
  } else {
    printf("gpu: none (%s)\n", kvs_gpu_compiled() ? "no device" : "built without CUDA");
    cJSON_AddNullToObject(J, "gpu_device");
    cJSON_AddArrayToObject(J, "gpu");
    cJSON_Delete(J_recompute);
  }
  kvs_model_free(m);
  return bench_json_print(J);
}
