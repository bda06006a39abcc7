/* Real-KV fidelity for kvs-bench-codec: SmolLM2-135M (model/) prefills a
 * context (ChatML system line + the first passages of a MuSiQue item, items
 * of 0..99 only: 100-149 are held out), its KV goes through each profile, the
 * decoded KV replaces the cache, and the question is run on top of it. The
 * next-token distributions over the question's tokens are compared with the
 * ones computed on the original fp16 KV: KL(ref || decoded) averaged over
 * positions and items, top-1 agreement, and the perplexity change of the
 * question tokens themselves.
 *
 * Environment (for sweeps): KVS_BENCH_DENSE replaces the dense settings (see
 * below), KVS_BENCH_FIXED=0 drops the fixed-rate profiles, KVS_BENCH_ITEM0=k
 * starts at item k (validation sets), KVS_BENCH_FLIPS=1 prints every top-1
 * disagreement with the reference's logit gap between its top token and the
 * decoded run's top token (near-ties flip under any perturbation). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_codec.h"
#include "kvs_codec.h"

#ifndef KVS_BENCH_HAVE_MODEL
void bench_codec_real(int n, cJSON *root) {
  (void)n;
  printf("--real: the reference model (model/) is not in this build\n");
  cJSON_AddNullToObject(root, "best_at_parity");
}
#else
#include "kvs_model.h"
#include "kvs_rag.h"

/* ---------------------------------------------- minimal MuSiQue reader */
/* Reads the JSON string starting after the opening quote at *p into a new
 * buffer (\uXXXX to UTF-8, surrogate pairs included); advances *p. */
static char *json_str(const char **p) {
  const char *s = *p;
  size_t cap = 256, n = 0;
  char *o = malloc(cap);
  while (*s && *s != '"') {
    if (n + 8 > cap) o = realloc(o, cap *= 2);
    if (*s != '\\') {
      o[n++] = *s++;
      continue;
    }
    s++;
    char c = *s++;
    if (c == 'n')
      o[n++] = '\n';
    else if (c == 't')
      o[n++] = '\t';
    else if (c == 'r')
      o[n++] = '\r';
    else if (c == 'b' || c == 'f')
      o[n++] = ' ';
    else if (c == 'u') {
      unsigned cp = (unsigned)strtoul((char[5]){s[0], s[1], s[2], s[3], 0}, NULL, 16);
      s += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && s[0] == '\\' && s[1] == 'u') {
        unsigned lo = (unsigned)strtoul((char[5]){s[2], s[3], s[4], s[5], 0}, NULL, 16);
        s += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      }
      if (cp < 0x80)
        o[n++] = (char)cp;
      else if (cp < 0x800)
        o[n++] = (char)(0xc0 | cp >> 6), o[n++] = (char)(0x80 | (cp & 63));
      else if (cp < 0x10000)
        o[n++] = (char)(0xe0 | cp >> 12), o[n++] = (char)(0x80 | ((cp >> 6) & 63)),
        o[n++] = (char)(0x80 | (cp & 63));
      else
        o[n++] = (char)(0xf0 | cp >> 18), o[n++] = (char)(0x80 | ((cp >> 12) & 63)),
        o[n++] = (char)(0x80 | ((cp >> 6) & 63)), o[n++] = (char)(0x80 | (cp & 63));
    } else {
      o[n++] = c;
    }
  }
  o[n] = 0;
  *p = *s ? s + 1 : s;
  return o;
}

typedef struct item {
  char *passage[2];
  char *question;
} item;

/* Items in file order: each item's "ctxs" texts come before its "question". */
static int load_items(const char *path, item *items, int max) {
  char *buf = NULL;
  size_t got = 0;
  if (kvs_rag_read(path, &buf, &got)) return 0; /* plain or .zst */
  int n = 0, np = 0;
  memset(items, 0, sizeof *items * (size_t)max);
  for (const char *p = buf; *p && n < max;) {
    const char *t = strstr(p, "\"text\": \""), *q = strstr(p, "\"question\": \"");
    if (!q) break;
    if (t && t < q) {
      p = t + 9;
      char *s = json_str(&p);
      if (np < 2)
        items[n].passage[np++] = s;
      else
        free(s);
    } else {
      p = q + 13;
      items[n].question = json_str(&p);
      n++, np = 0;
    }
  }
  free(buf);
  return n;
}

/* ------------------------------------------------------------ harness */
typedef struct cfg {
  char name[40];
  int profile;
  uint32_t k_flags, v_flags;
  float step, v_step, fine_scale;
  uint32_t fine_layers;
  uint32_t probe_lo, probe_hi, probe_kv; /* probe_kv != 0: only these planes lossy */
  double kl, top1, dppl, bits;
  int n;
} cfg;

static double kl_div(const float *ref, const float *got, uint32_t V, int *same_top) {
  double mr = -INFINITY, mg = -INFINITY;
  uint32_t ar = 0, ag = 0;
  for (uint32_t i = 0; i < V; i++) {
    if (ref[i] > mr) mr = ref[i], ar = i;
    if (got[i] > mg) mg = got[i], ag = i;
  }
  double zr = 0, zg = 0;
  for (uint32_t i = 0; i < V; i++)
    zr += exp(ref[i] - mr), zg += exp(got[i] - mg);
  double lzr = log(zr) + mr, lzg = log(zg) + mg, kl = 0;
  for (uint32_t i = 0; i < V; i++) {
    double lp = ref[i] - lzr, lq = got[i] - lzg;
    kl += exp(lp) * (lp - lq);
  }
  *same_top = ar == ag;
  return kl > 0 ? kl : 0;
}

static double logprob(const float *lg, uint32_t V, int32_t tok) {
  double m = -INFINITY, z = 0;
  for (uint32_t i = 0; i < V; i++)
    m = lg[i] > m ? lg[i] : m;
  for (uint32_t i = 0; i < V; i++)
    z += exp(lg[i] - m);
  return lg[tok] - m - log(z);
}

void bench_codec_real(int n_items, cJSON *root) {
  const char *mp = getenv("KVS_MODEL_PATH");
  char def[512];
  if (!mp) {
    snprintf(def, sizeof def, "%s/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             getenv("HOME") ? getenv("HOME") : ".");
    mp = def;
  }
  const char *dp = kvs_rag_data_path(NULL); /* --data, else the repo's data/rag copy */
  /* KVS_BENCH_ITEM0=k runs items k..k+n-1 (validation on items not used for
     choosing); never past item 99: 100-149 are held out */
  int item0 = getenv("KVS_BENCH_ITEM0") ? atoi(getenv("KVS_BENCH_ITEM0")) : 0;
  if (item0 < 0) item0 = 0;
  if (item0 > 99) item0 = 99;
  if (item0 + n_items > 100) n_items = 100 - item0;
  item *items = calloc(100, sizeof *items);
  int have = load_items(dp, items, 100);
  kvs_model *m = NULL;
  if (have < item0 + n_items || kvs_model_load(mp, &m) != KVS_OK) {
    printf("--real: model (%s) or data (%s) not available\n", mp, dp);
    cJSON_AddNullToObject(root, "best_at_parity");
    free(items);
    return;
  }
  const kvs_tok *tok = kvs_model_tok(m);
  kvs_layout lay = kvs_model_layout(m);
  uint32_t V = kvs_model_config(m)->n_vocab, L = lay.n_layers, H = lay.n_kv_heads, D = lay.head_dim;
  /* fixed-rate profiles, then dense settings "kflags,vflags,kstep,vstep,fine_layers
     [,fine_scale[,lo,hi,kv]]" (KVS_BENCH_DENSE="k,v,ks,vs,f;k,v,ks,vs,f,fs;..." replaces
     the default list; fine_scale defaults to 0.5). lo,hi,kv is a sensitivity probe:
     only layers [lo,hi) take the decoded K (kv 1), V (2) or both (3), the other
     planes stay exact (bits are still those of the whole encoding) */
  cfg cfgs[64];
  int nc = 0;
  static const int fixed[] = {KVS_PROFILE_LOSSLESS, KVS_PROFILE_INT8, KVS_PROFILE_KIVI4,
                              KVS_PROFILE_KIVI2,    KVS_PROFILE_FP4,  KVS_PROFILE_CACHEGEN};
  memset(cfgs, 0, sizeof cfgs);
  /* KVS_BENCH_FIXED=0 leaves the fixed-rate profiles out (dense sweeps) */
  int want_fixed = !getenv("KVS_BENCH_FIXED") || atoi(getenv("KVS_BENCH_FIXED"));
  for (size_t i = 0; want_fixed && i < sizeof fixed / sizeof fixed[0]; i++) {
    cfgs[nc].profile = fixed[i];
    snprintf(cfgs[nc].name, sizeof cfgs[nc].name, "%s", kvs_codec_profile_name(fixed[i]));
    nc++;
  }
  const char *dl = getenv("KVS_BENCH_DENSE");
  char dbuf[2048];
  snprintf(dbuf, sizeof dbuf, "%s",
           dl ? dl
              : "8,12,0.1,0.1,0;8,12,0.15,0.15,0;8,12,0.25,0.5,0;8,12,0.35,0.7,0;8,12,0.5,1.0,0;"
                "8,12,0.7,1.4,0;8,12,0.35,0.35,0;9,13,0.35,0.35,0;0,0,0.35,0.35,0");
  for (char *sv = NULL, *tokn = strtok_r(dbuf, ";", &sv); tokn && nc < 64;
       tokn = strtok_r(NULL, ";", &sv)) {
    unsigned kf, vf, fl;
    float st, vst, fs = 0.5f;
    unsigned lo = 0, hi = 0, pkv = 0;
    int got =
        sscanf(tokn, "%u,%u,%f,%f,%u,%f,%u,%u,%u", &kf, &vf, &st, &vst, &fl, &fs, &lo, &hi, &pkv);
    if (got < 5) continue;
    cfg *c = &cfgs[nc++];
    c->probe_lo = lo, c->probe_hi = hi, c->probe_kv = got == 9 ? pkv : 0;
    c->profile = KVS_PROFILE_DENSE, c->k_flags = kf, c->v_flags = vf, c->step = st;
    c->v_step = vst, c->fine_layers = fl, c->fine_scale = fs;
    snprintf(c->name, sizeof c->name, "dense:%u,%u@%.3g/%.3g", kf, vf, st, vst);
    if (fl)
      snprintf(c->name + strlen(c->name), sizeof c->name - strlen(c->name), "/f%u*%.3g", fl, fs);
    if (c->probe_kv)
      snprintf(c->name + strlen(c->name), sizeof c->name - strlen(c->name), " L%u-%u%s", lo, hi,
               pkv == 1   ? "K"
               : pkv == 2 ? "V"
                          : "KV");
  }

  const uint32_t max_ctx = 512;
  kvs_seq *seq = NULL;
  kvs_seq_create(m, max_ctx + 128, &seq);
  size_t plane = (size_t)max_ctx * H * D;
  uint16_t *kv = malloc(2 * L * plane * 2), *dec = malloc(2 * L * plane * 2);
  float *ref = malloc((size_t)128 * V * 4), *got = malloc((size_t)128 * V * 4);
  int32_t *ids = malloc(sizeof(int32_t) * 4096);
  char *text = malloc(1 << 16);
  double t_start = (double)kvs_now_ns() * 1e-9;
  for (int it = 0; it < n_items; it++) {
    item *x = &items[item0 + it];
    size_t tn = 0;
    snprintf(text, 1 << 16,
             "<|im_start|>system\nAnswer the question from the passages.<|im_end|>\n"
             "<|im_start|>user\n%s\n\n%s",
             x->passage[0] ? x->passage[0] : "", x->passage[1] ? x->passage[1] : "");
    if (kvs_tok_encode(tok, text, strlen(text), 1, 0, ids, 4096, &tn) != KVS_OK) continue;
    uint32_t T = tn < max_ctx ? (uint32_t)tn : max_ctx;
    snprintf(text, 1 << 16, "\n\nQuestion: %s<|im_end|>\n<|im_start|>assistant\n", x->question);
    size_t qn = 0;
    if (kvs_tok_encode(tok, text, strlen(text), 1, 0, ids + T, 4096 - T, &qn) != KVS_OK) continue;
    if (qn > 127) qn = 127;
    kvs_seq_truncate(seq, 0);
    if (kvs_model_prefill(m, seq, ids, T, 0, NULL) != KVS_OK) continue;
    for (uint32_t l = 0; l < L; l++) {
      memcpy(kv + (2 * l) * (size_t)T * H * D, kvs_seq_k(seq, l), (size_t)T * H * D * 2);
      memcpy(kv + (2 * l + 1) * (size_t)T * H * D, kvs_seq_v(seq, l), (size_t)T * H * D * 2);
    }
    if (kvs_model_prefill(m, seq, ids + T, (uint32_t)qn, 1, ref) != KVS_OK) continue;
    for (int c = 0; c < nc; c++) {
      kvs_codec_params p;
      kvs_codec_params_default(cfgs[c].profile, L, &p);
      if (cfgs[c].profile == KVS_PROFILE_DENSE)
        p.k_step = cfgs[c].step, p.v_step = cfgs[c].v_step, p.fine_layers = cfgs[c].fine_layers,
        p.fine_scale = cfgs[c].fine_scale, p.k_flags = cfgs[c].k_flags, p.v_flags = cfgs[c].v_flags;
      size_t bcap = kvs_codec_encode_bound(&p, &lay, T), blen = 0;
      uint8_t *b = malloc(bcap);
      kvs_codec_info info;
      kvs_codec_out o = kvs_codec_out_contiguous(dec, 2ull * L * T * H * D * 2, KVS_DTYPE_F16);
      if (kvs_codec_encode(&p, &lay, T, kv, b, bcap, &blen) != KVS_OK ||
          kvs_codec_parse_header(b, blen, &info) != KVS_OK ||
          kvs_codec_decode(b, blen, &o, NULL, 0) != KVS_OK) {
        free(b);
        continue;
      }
      free(b);
      if (getenv("KVS_BENCH_KEEP0")) /* experiment: keep the first tokens exact */
        for (uint32_t pl = 0; pl < 2 * L; pl++)
          memcpy(dec + (size_t)pl * T * H * D, kv + (size_t)pl * T * H * D,
                 (size_t)atoi(getenv("KVS_BENCH_KEEP0")) * H * D * 2);
      if (cfgs[c].probe_kv)
        for (uint32_t pl = 0; pl < 2 * L; pl++) {
          uint32_t l = pl / 2, kvb = 1u << (pl & 1);
          if (l >= cfgs[c].probe_lo && l < cfgs[c].probe_hi && (cfgs[c].probe_kv & kvb)) continue;
          memcpy(dec + (size_t)pl * T * H * D, kv + (size_t)pl * T * H * D, (size_t)T * H * D * 2);
        }
      kvs_seq_truncate(seq, T);
      for (uint32_t l = 0; l < L; l++) {
        memcpy(kvs_seq_k(seq, l), dec + (2 * l) * (size_t)T * H * D, (size_t)T * H * D * 2);
        memcpy(kvs_seq_v(seq, l), dec + (2 * l + 1) * (size_t)T * H * D, (size_t)T * H * D * 2);
      }
      if (kvs_model_prefill(m, seq, ids + T, (uint32_t)qn, 1, got) != KVS_OK) continue;
      double kl = 0, agree = 0, lp_ref = 0, lp_got = 0;
      for (uint32_t i = 0; i < qn; i++) {
        int same;
        kl += kl_div(ref + (size_t)i * V, got + (size_t)i * V, V, &same);
        agree += same;
        if (!same && getenv("KVS_BENCH_FLIPS")) { /* which positions flip, and how close
                                                     the reference's top two were */
          const float *r = ref + (size_t)i * V, *g2 = got + (size_t)i * V;
          uint32_t ar = 0, ag = 0;
          for (uint32_t j = 1; j < V; j++)
            ar = r[j] > r[ar] ? j : ar, ag = g2[j] > g2[ag] ? j : ag;
          fprintf(stderr, "flip: %s item %d pos %u ref gap %.4f\n", cfgs[c].name, item0 + it, i,
                  r[ar] - r[ag]);
        }
        if (i + 1 < qn) {
          lp_ref += logprob(ref + (size_t)i * V, V, ids[T + i + 1]);
          lp_got += logprob(got + (size_t)i * V, V, ids[T + i + 1]);
        }
      }
      cfgs[c].kl += kl / qn;
      cfgs[c].top1 += agree / qn;
      cfgs[c].dppl += exp(-lp_got / (qn - 1)) / exp(-lp_ref / (qn - 1)) - 1;
      cfgs[c].bits += kvs_codec_bits_per_elem(&info);
      cfgs[c].n++;
    }
    fprintf(stderr, "real: item %d/%d (ctx %u tokens, question %zu) %.0fs\n", it + 1, n_items, T,
            qn, (double)kvs_now_ns() * 1e-9 - t_start);
  }
  printf("\n== real SmolLM2-135M KV, MuSiQue items %d..%d (context <= %u tokens, first 2 "
         "passages)\n",
         item0, item0 + n_items - 1, max_ctx);
  printf("%-28s %8s %10s %9s %10s\n", "profile", "bits/el", "KL", "top1", "ppl chg");
  int best = -1;
  cJSON_AddNumberToObject(root, "real_first_item", item0);
  cJSON *rows = cJSON_AddArrayToObject(root, "real");
  for (int c = 0; c < nc; c++) {
    cfg *r = &cfgs[c];
    if (!r->n) continue;
    r->kl /= r->n, r->top1 /= r->n, r->dppl /= r->n, r->bits /= r->n;
    printf("%-28s %8.3f %10.5f %9.4f %+9.4f%%\n", r->name, r->bits, r->kl, r->top1, 100 * r->dppl);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "profile", r->name);
    bench_json_num(o, "bits_per_elem", "%.4f", r->bits);
    bench_json_num(o, "kl", "%.6f", r->kl);
    bench_json_num(o, "top1_agreement", "%.4f", r->top1);
    bench_json_num(o, "ppl_change", "%.5f", r->dppl);
    cJSON_AddNumberToObject(o, "items", r->n);
    cJSON_AddItemToArray(rows, o);
    if (r->kl <= 0.01 && r->top1 >= 0.99 && (best < 0 || r->bits < cfgs[best].bits)) best = c;
  }
  if (best >= 0) {
    cJSON *o = cJSON_AddObjectToObject(root, "best_at_parity");
    cJSON_AddStringToObject(o, "profile", cfgs[best].name);
    bench_json_num(o, "bits_per_elem", "%.4f", cfgs[best].bits);
    bench_json_num(o, "kl", "%.6f", cfgs[best].kl);
    bench_json_num(o, "top1_agreement", "%.4f", cfgs[best].top1);
  } else {
    cJSON_AddNullToObject(root, "best_at_parity");
  }
  for (int i = 0; i < 100; i++)
    free(items[i].passage[0]), free(items[i].passage[1]), free(items[i].question);
  free(items), free(kv), free(dec), free(ref), free(got), free(ids), free(text);
  kvs_seq_free(seq);
  kvs_model_free(m);
}
#endif
