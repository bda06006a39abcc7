/* cmd_ops.c - the verbs that do work around the store: warmup (documents
 * through the reference engine into chunk KV, as tools/demo.c pre-warms),
 * bench (PUT/GET throughput against the running server) and doctor. */
#include <getopt.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kvs_gpu.h"
#include "kvs_engines.h"
#include "kvs_model.h"
#include "kvs_rag.h"

static int help_asked(int argc, char **argv, const char *verb) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      cli_verb_help(verb);
      return 1;
    }
  return 0;
}

/* --------------------------------------------------------------- warmup */
typedef struct warm {
  cli *x;
  kvs_model *model;
  kvs_engine *eng;
  const kvs_tok *tok;
  const kvs_model_id *mid;
  kvs_layout layout;
  kvs_put_opts po;
  int force;
  void *kv; /* (n_layers, 2, max_tokens, kv_heads, head_dim) f16 */
  uint32_t kv_tokens;
  uint64_t computed, cached, bytes, tokens;
  cli_progress pr;
} warm;

/* The work, planned whole before any of it runs (so the bar knows its total):
 * one job per document or MuSiQue item, its tokens and chunks. */
typedef struct warm_job {
  int32_t *tokens;
  size_t n_tokens;
  kvs_chunk *ch;
  size_t n;
} warm_job;
typedef struct warm_plan {
  warm_job *jobs;
  size_t n, cap;
  uint64_t chunk_tokens; /* tokens in all chunks: the bar's total */
} warm_plan;

/* Takes tokens and ch (malloc'd) into the plan. */
static kvs_err plan_add(warm_plan *pl, int32_t *tokens, size_t n_tokens, kvs_chunk *ch, size_t n) {
  if (pl->n == pl->cap) {
    size_t nc = pl->cap ? pl->cap * 2 : 16;
    warm_job *nj = realloc(pl->jobs, nc * sizeof *nj);
    if (!nj) {
      free(tokens);
      free(ch);
      return KVS_ENOMEM;
    }
    pl->jobs = nj, pl->cap = nc;
  }
  pl->jobs[pl->n++] = (warm_job){tokens, n_tokens, ch, n};
  for (size_t i = 0; i < n; i++)
    pl->chunk_tokens += ch[i].n_tokens;
  return KVS_OK;
}

static void plan_free(warm_plan *pl) {
  for (size_t i = 0; i < pl->n; i++)
    free(pl->jobs[i].tokens), free(pl->jobs[i].ch);
  free(pl->jobs);
}

/* Computes and stores the chunks of tokens not cached yet (all with force). */
static kvs_err warm_chunks(warm *w, const int32_t *tokens, size_t n_tokens, const kvs_chunk *ch,
                           size_t n) {
  uint8_t *st = calloc(n ? n : 1, 1);
  if (!st) return KVS_ENOMEM;
  kvs_err e = w->force
                  ? KVS_OK
                  : kvs_lookup(w->x->c, w->mid, tokens, n_tokens, ch, n, KVS_LOOKUP_EACH, st, NULL);
  for (size_t i = 0; i < n && e == KVS_OK; i++) {
    if (st[i]) {
      w->cached++;
      cli_progress_add(&w->pr, ch[i].n_tokens, 0);
      continue;
    }
    uint32_t len = ch[i].n_tokens;
    if (len > w->kv_tokens) {
      void *nk = realloc(w->kv, kvs_layout_token_bytes(&w->layout) * len);
      if (!nk) {
        e = KVS_ENOMEM;
        break;
      }
      w->kv = nk, w->kv_tokens = len;
    }
    if ((e = kvs_rag_chunk_kv(w->eng, tokens + ch[i].start, len, w->kv))) break;
    if ((e = kvs_put(w->x->c, w->mid, tokens, &ch[i], &w->layout, w->kv, &w->po))) break;
    kvs_entry_info ei;
    if (kvs_exists(w->x->c, w->mid, &ch[i].key, &ei) == KVS_OK) w->bytes += ei.value_bytes;
    w->computed++;
    w->tokens += len;
    cli_progress_add(&w->pr, len, kvs_layout_token_bytes(&w->layout) * len);
  }
  free(st);
  return e;
}

/* A document: its tokens cut into content chunks of chunk_tokens (planned). */
static kvs_err warm_text(warm *w, warm_plan *pl, const char *text, size_t len,
                         uint32_t chunk_tokens) {
  size_t cap = kvs_tok_bound(len), n = 0;
  int32_t *t = malloc(sizeof *t * (cap ? cap : 1));
  if (!t) return KVS_ENOMEM;
  kvs_err e = kvs_tok_encode(w->tok, text, len, 0, 0, t, cap, &n);
  size_t nc = (n + chunk_tokens - 1) / chunk_tokens;
  kvs_span *sp = calloc(nc ? nc : 1, sizeof *sp);
  kvs_chunk *ch = calloc(nc ? nc : 1, sizeof *ch);
  if (e == KVS_OK && (!sp || !ch)) e = KVS_ENOMEM;
  for (size_t i = 0; e == KVS_OK && i < nc; i++) {
    sp[i].start = (uint32_t)(i * chunk_tokens);
    sp[i].n_tokens =
        (uint32_t)(n - i * chunk_tokens < chunk_tokens ? n - i * chunk_tokens : chunk_tokens);
  }
  if (e == KVS_OK && nc) e = kvs_chunk_spans(w->mid, t, n, sp, nc, ch);
  free(sp);
  if (e == KVS_OK && nc) return plan_add(pl, t, n, ch, nc);
  free(ch);
  free(t);
  return e;
}

static char *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, len = 0;
  char *b = malloc(cap);
  for (size_t r; b && (r = fread(b + len, 1, cap - len - 1, f)) > 0;) {
    len += r;
    if (cap - len < 4096) {
      char *nb = realloc(b, cap * 2);
      if (!nb) free(b);
      b = nb, cap *= 2;
    }
  }
  fclose(f);
  if (b) b[len] = 0;
  *n = len;
  return b;
}

static const char *fmt_of(const char *path) {
  size_t n = strlen(path);
  if (n > 6 && !strcmp(path + n - 6, ".jsonl")) return "jsonl";
  if (n > 5 && !strcmp(path + n - 5, ".json")) return "musique";
  if (n > 9 && !strcmp(path + n - 9, ".json.zst")) return "musique"; /* data/rag's copy */
  return "text";
}

int cmd_warmup(cli *x, int argc, char **argv) {
  if (help_asked(argc, argv, "warmup")) return CLI_OK;
  enum { O_FMT = 1, O_MODEL, O_PROF, O_CHUNK, O_ITEMS, O_FORCE };
  static struct option lo[] = {{"format", 1, 0, O_FMT},
                               {"model", 1, 0, O_MODEL},
                               {"profile", 1, 0, O_PROF},
                               {"chunk-tokens", 1, 0, O_CHUNK},
                               {"items", 1, 0, O_ITEMS},
                               {"force", 0, 0, O_FORCE},
                               {0, 0, 0, 0}};
  const char *format = NULL, *profile = "dense";
  long chunk = 256, items = 1;
  int force = 0;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    char *end = NULL;
    switch (c) {
    case O_FMT: format = optarg; break;
    case O_MODEL: snprintf(x->model_path, sizeof x->model_path, "%s", optarg); break;
    case O_PROF: profile = optarg; break;
    case O_CHUNK:
      chunk = strtol(optarg, &end, 10);
      if (*end || chunk < 1 || chunk > 8192)
        return cli_usage_err("warmup", "--chunk-tokens 1..8192");
      break;
    case O_ITEMS:
      items = strtol(optarg, &end, 10);
      if (*end || items < 1) return cli_usage_err("warmup", "--items takes a positive number");
      break;
    case O_FORCE: force = 1; break;
    default: return cli_usage_err("warmup", "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind >= argc) return cli_usage_err("warmup", "FILE expected");
  if (format && strcmp(format, "text") && strcmp(format, "jsonl") && strcmp(format, "musique"))
    return cli_usage_err("warmup", "--format takes text, jsonl or musique");
  int prof = kvs_profile_from_name(profile);
  if (prof < 0)
    return cli_usage_err("warmup", "unknown or unavailable codec profile '%s'", profile);
  FILE *mf = fopen(x->model_path, "rb");
  if (!mf)
    return cli_fail(x, "warmup", KVS_ENOENT,
                    "no model at %s (--model, $KVS_MODEL_PATH, or tools/fetch-model)",
                    x->model_path);
  fclose(mf);
  int rc = cli_client(x, "warmup");
  if (rc) return rc;
  warm w;
  memset(&w, 0, sizeof w);
  w.x = x;
  w.force = force;
  w.po.profile = (uint32_t)prof;
  w.po.layers_per_group = 2;
  uint64_t t0 = kvs_now_ns();
  kvs_err e = kvs_model_load(x->model_path, &w.model);
  if (e == KVS_OK) e = kvs_model_engine(w.model, &w.eng);
  if (e) {
    kvs_model_free(w.model);
    return cli_fail(x, "warmup", e, "loading %s: %s", x->model_path, kvs_strerror(e));
  }
  kvs_engine_info info;
  w.eng->ops->info(w.eng, &info);
  w.layout = info.layout;
  w.tok = kvs_model_tok(w.model);
  w.mid = kvs_model_get_id(w.model);
  double t_load = (double)(kvs_now_ns() - t0) / 1e9;
  const char *failed_file = NULL;
  warm_plan plan = {0};
  t0 = kvs_now_ns();
  for (int i = optind; i < argc && e == KVS_OK; i++) {
    const char *fm = format ? format : fmt_of(argv[i]);
    failed_file = argv[i];
    if (!strcmp(fm, "musique")) {
      kvs_rag_item *it = NULL;
      size_t n_it = 0;
      if ((e = kvs_rag_load(argv[i], &it, &n_it))) break;
      for (size_t k = 0; k < n_it && k < (size_t)items && e == KVS_OK; k++) {
        kvs_rag_prompt pr = {0};
        if ((e = kvs_rag_prompt_build(w.tok, &it[k], &pr))) break;
        /* as the demo: the instruction as a prefix chunk, each passage a content chunk */
        kvs_chunk ch[KVS_RAG_MAX_PASSAGES + 2];
        size_t n_ch = 0;
        uint32_t n_pass = pr.n_segs - 2;
        e = kvs_chunk_prefix(w.mid, pr.tokens, pr.len[0], pr.len[0], KVS_CHUNK_TAIL, ch, 1, &n_ch);
        kvs_span sp[KVS_RAG_MAX_PASSAGES];
        for (uint32_t p = 0; p < n_pass; p++)
          sp[p].start = pr.start[p + 1], sp[p].n_tokens = pr.len[p + 1];
        if (e == KVS_OK) e = kvs_chunk_spans(w.mid, pr.tokens, pr.n_tokens, sp, n_pass, ch + 1);
        kvs_chunk *chc = e == KVS_OK ? malloc((1 + n_pass) * sizeof *chc) : NULL;
        if (e == KVS_OK && !chc) e = KVS_ENOMEM;
        if (e == KVS_OK) {
          memcpy(chc, ch, (1 + n_pass) * sizeof *chc);
          e = plan_add(&plan, pr.tokens, pr.n_tokens, chc, 1 + n_pass);
          pr.tokens = NULL; /* the plan owns them now */
        }
        kvs_rag_prompt_free(&pr);
      }
      kvs_rag_items_free(it, n_it);
    } else {
      size_t len;
      char *text = read_all(argv[i], &len);
      if (!text) {
        e = KVS_ENOENT;
        break;
      }
      if (!strcmp(fm, "text")) {
        e = warm_text(&w, &plan, text, len, (uint32_t)chunk);
      } else { /* jsonl: {"text": ..., "title": ...} a line */
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && e == KVS_OK;
             line = strtok_r(NULL, "\n", &save)) {
          cJSON *o = cJSON_Parse(line);
          const cJSON *t = o ? cJSON_GetObjectItem(o, "text") : NULL;
          if (cJSON_IsString(t) && t->valuestring[0])
            e = warm_text(&w, &plan, t->valuestring, strlen(t->valuestring), (uint32_t)chunk);
          else if (line[strspn(line, " \t\r")])
            fprintf(stderr, "kvstash warmup: %s: a line without \"text\" skipped\n", argv[i]);
          cJSON_Delete(o);
        }
      }
      free(text);
    }
  }
  /* the plan is whole: a bar with its total (tokens), rate and ETA */
  cli_progress_start(x, &w.pr, "warmup", plan.chunk_tokens);
  w.pr.unit = "tokens";
  for (size_t i = 0; e == KVS_OK && i < plan.n; i++)
    e = warm_chunks(&w, plan.jobs[i].tokens, plan.jobs[i].n_tokens, plan.jobs[i].ch,
                    plan.jobs[i].n);
  if (e && plan.n) failed_file = "storing chunks";
  cli_progress_end(&w.pr);
  plan_free(&plan);
  double t_run = (double)(kvs_now_ns() - t0) / 1e9;
  free(w.kv);
  kvs_engine_free(w.eng);
  kvs_model_free(w.model);
  if (e)
    return cli_fail(x, "warmup", e, "%s: %s %s", failed_file ? failed_file : "?", kvs_strerror(e),
                    kvs_client_errmsg(x->c));
  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "computed", (double)w.computed);
    cJSON_AddNumberToObject(j, "already_cached", (double)w.cached);
    cJSON_AddNumberToObject(j, "tokens", (double)w.tokens);
    cJSON_AddNumberToObject(j, "stored_bytes", (double)w.bytes);
    cJSON_AddStringToObject(j, "profile", profile);
    cJSON_AddNumberToObject(j, "model_load_s", t_load);
    cJSON_AddNumberToObject(j, "seconds", t_run);
    cli_print_json(j);
  } else {
    char b[32];
    printf("warmed %llu chunks (%llu tokens) in %.2f s, %llu already cached; stored %s ('%s')\n",
           (unsigned long long)w.computed, (unsigned long long)w.tokens, t_run,
           (unsigned long long)w.cached, cli_fmt_bytes(w.bytes, b, sizeof b), profile);
  }
  return CLI_OK;
}

/* ---------------------------------------------------------------- bench */
static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int cmd_bench(cli *x, int argc, char **argv) {
  if (help_asked(argc, argv, "bench")) return CLI_OK;
  enum { O_SEC = 1, O_SIZE, O_N, O_PROF };
  static struct option lo[] = {{"seconds", 1, 0, O_SEC},
                               {"size", 1, 0, O_SIZE},
                               {"entries", 1, 0, O_N},
                               {"profile", 1, 0, O_PROF},
                               {0, 0, 0, 0}};
  double seconds = 3;
  uint64_t size = 256 << 10;
  long n = 16;
  const char *profile = "raw";
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    char *end = NULL;
    switch (c) {
    case O_SEC:
      seconds = strtod(optarg, &end);
      if (*end || seconds <= 0 || seconds > 3600)
        return cli_usage_err("bench", "--seconds 0..3600");
      break;
    case O_SIZE:
      if (cli_parse_size(optarg, &size) || size < 4096 || size > (256ull << 20))
        return cli_usage_err("bench", "--size takes 4K..256M");
      break;
    case O_N:
      n = strtol(optarg, &end, 10);
      if (*end || n < 1 || n > 4096) return cli_usage_err("bench", "--entries 1..4096");
      break;
    case O_PROF: profile = optarg; break;
    default: return cli_usage_err("bench", "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return cli_usage_err("bench", "unexpected argument '%s'", argv[optind]);
  int prof = kvs_profile_from_name(profile);
  if (prof < 0) return cli_usage_err("bench", "unknown or unavailable codec profile '%s'", profile);
  int rc = cli_client(x, "bench");
  if (rc) return rc;
  /* synthetic KV: 4 layers x 4 kv heads x 64 dims f16 = 4 KiB a token */
  kvs_layout l = {.n_layers = 4,
                  .n_kv_heads = 4,
                  .head_dim = 64,
                  .dtype = KVS_DTYPE_F16,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_dims = 64,
                  .rope_theta = 10000.0f,
                  .rope_freq_scale = 1.0f};
  uint64_t tb = kvs_layout_token_bytes(&l);
  uint32_t nt = (uint32_t)(size / tb ? size / tb : 1);
  kvs_model_id mid;
  memset(&mid, 0, sizeof mid);
  memcpy(mid.b, "kvstash-bench\0\0", 16);
  int32_t *tok = malloc(sizeof *tok * nt * (size_t)n);
  uint16_t *kv = malloc(tb * nt);
  void *out = malloc(kvs_get_bound(&l, nt, NULL));
  kvs_chunk *ch = calloc((size_t)n, sizeof *ch);
  kvs_span *sp = calloc((size_t)n, sizeof *sp);
  size_t lat_cap = 1 << 20;
  uint64_t *lat = malloc(sizeof *lat * lat_cap);
  if (!tok || !kv || !out || !ch || !sp || !lat) {
    free(tok), free(kv), free(out), free(ch), free(sp), free(lat);
    return cli_fail(x, "bench", KVS_ENOMEM, "no memory for %ld x %llu bytes", n,
                    (unsigned long long)size);
  }
  uint64_t seed = kvs_now_ns();
  for (size_t i = 0; i < nt * (size_t)n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    tok[i] = (int32_t)(seed >> 40) & 0xFFFF;
  }
  for (size_t i = 0; i < tb * nt / 2; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    kv[i] = (uint16_t)(0x3400 | ((seed >> 48) & 0x07FF)); /* finite, 0.25..1 */
  }
  for (long i = 0; i < n; i++)
    sp[i].start = (uint32_t)i * nt, sp[i].n_tokens = nt;
  kvs_err e = kvs_chunk_spans(&mid, tok, nt * (size_t)n, sp, (size_t)n, ch);
  kvs_put_opts po = {.profile = (uint32_t)prof, .layers_per_group = 1};
  uint64_t stored = 0;
  cli_progress pr;
  cli_progress_start(x, &pr, "bench put", (uint64_t)n);
  uint64_t t0 = kvs_now_ns();
  for (long i = 0; i < n && e == KVS_OK; i++) {
    e = kvs_put(x->c, &mid, tok, &ch[i], &l, kv, &po);
    cli_progress_add(&pr, 1, tb * nt);
  }
  double t_put = (double)(kvs_now_ns() - t0) / 1e9;
  cli_progress_end(&pr);
  for (long i = 0; i < n && e == KVS_OK; i++) {
    kvs_entry_info ei;
    if (kvs_exists(x->c, &mid, &ch[i].key, &ei) == KVS_OK) stored += ei.value_bytes;
  }
  size_t gets = 0;
  double t_get = 0;
  if (e == KVS_OK) {
    cli_progress_start(x, &pr, "bench get", 0);
    t0 = kvs_now_ns();
    uint64_t end = t0 + (uint64_t)(seconds * 1e9);
    for (uint64_t now = t0; now < end && e == KVS_OK; now = kvs_now_ns()) {
      uint64_t a = kvs_now_ns();
      e = kvs_get(x->c, &mid, tok, &ch[gets % (size_t)n], &l, out, kvs_get_bound(&l, nt, NULL),
                  NULL);
      if (gets < lat_cap) lat[gets] = kvs_now_ns() - a;
      gets++;
      cli_progress_add(&pr, 1, tb * nt);
    }
    t_get = (double)(kvs_now_ns() - t0) / 1e9;
    cli_progress_end(&pr);
  }
  kvs_err err_run = e;
  char msg[256];
  snprintf(msg, sizeof msg, "%s", kvs_client_errmsg(x->c));
  for (long i = 0; i < n; i++)
    kvs_delete(x->c, &ch[i].key); /* clean up, best effort */
  size_t nl = gets < lat_cap ? gets : lat_cap;
  qsort(lat, nl, sizeof *lat, cmp_u64);
  double p50 = nl ? (double)lat[nl / 2] / 1e6 : 0, p99 = nl ? (double)lat[nl * 99 / 100] / 1e6 : 0;
  free(tok), free(kv), free(out), free(ch), free(sp), free(lat);
  if (err_run) return cli_fail(x, "bench", err_run, "%s", msg);
  double raw_mb = (double)(tb * nt) / 1048576.0; /* MiB: one unit system, powers of 1024 */
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "profile", profile);
  cJSON_AddNumberToObject(j, "entries", (double)n);
  cJSON_AddNumberToObject(j, "tokens_per_entry", nt);
  cJSON_AddNumberToObject(j, "raw_bytes_per_entry", (double)(tb * nt));
  cJSON_AddNumberToObject(j, "stored_bytes_per_entry", (double)stored / (double)n);
  cJSON_AddNumberToObject(j, "put_per_s", (double)n / t_put);
  cJSON_AddNumberToObject(j, "put_raw_mib_per_s", (double)n * raw_mb / t_put);
  cJSON_AddNumberToObject(j, "gets", (double)gets);
  cJSON_AddNumberToObject(j, "get_per_s", (double)gets / t_get);
  cJSON_AddNumberToObject(j, "get_raw_mib_per_s", (double)gets * raw_mb / t_get);
  cJSON_AddNumberToObject(j, "get_p50_ms", p50);
  cJSON_AddNumberToObject(j, "get_p99_ms", p99);
  if (!x->json) {
    printf("bench against %s, tenant %s: %ld entries of %u tokens (%.2f MiB fp16, stored %.2f MiB "
           "'%s')\n",
           x->url, x->tenant, n, nt, raw_mb, (double)stored / (double)n / 1048576.0, profile);
    printf("  put  %8.1f /s  %8.1f MiB/s (fp16)\n", (double)n / t_put, (double)n * raw_mb / t_put);
    printf("  get  %8.1f /s  %8.1f MiB/s (fp16)  p50 %.3f ms  p99 %.3f ms  (%zu gets in %.1f s)\n",
           (double)gets / t_get, (double)gets * raw_mb / t_get, p50, p99, gets, t_get);
    char *s = cJSON_PrintUnformatted(j);
    printf("%s\n", s ? s : "{}");
    free(s);
    cJSON_Delete(j);
  } else {
    cli_print_json(j);
  }
  return CLI_OK;
}

/* --------------------------------------------------------------- doctor */
typedef struct checks {
  cJSON *arr;
  int json, fails, warns;
} checks;

static void check(checks *c, const char *name, int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static void check(checks *c, const char *name, int level, const char *fmt, ...) {
  static const char *lv[] = {"ok", "warn", "FAIL"};
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (level == 2) c->fails++;
  if (level == 1) c->warns++;
  if (c->json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "check", name);
    cJSON_AddStringToObject(o, "status", level == 0 ? "ok" : level == 1 ? "warn" : "fail");
    cJSON_AddStringToObject(o, "message", msg);
    cJSON_AddItemToArray(c->arr, o);
  } else {
    printf("%-4s  %-11s %s\n", lv[level], name, msg);
  }
}

static int sha256_file(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f || sodium_init() < 0) {
    if (f) fclose(f);
    return -1;
  }
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  unsigned char buf[1 << 16], out[32];
  for (size_t r; (r = fread(buf, 1, sizeof buf, f)) > 0;)
    crypto_hash_sha256_update(&st, buf, r);
  fclose(f);
  crypto_hash_sha256_final(&st, out);
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", out[i]);
  return 0;
}

int cmd_doctor(cli *x, int argc, char **argv) {
  if (help_asked(argc, argv, "doctor")) return CLI_OK;
  static struct option lo[] = {{"model", 1, 0, 'm'}, {"sha256", 0, 0, 's'}, {0, 0, 0, 0}};
  int sha = 0;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    if (c == 'm')
      snprintf(x->model_path, sizeof x->model_path, "%s", optarg);
    else if (c == 's')
      sha = 1;
    else
      return cli_usage_err("doctor", "unknown option '%s'", argv[optind - 1]);
  }
  if (optind < argc) return cli_usage_err("doctor", "unexpected argument '%s'", argv[optind]);
  checks c = {.json = x->json};
  cJSON *j = x->json ? cJSON_CreateObject() : NULL;
  if (j) c.arr = cJSON_AddArrayToObject(j, "checks");
  int exit_hint = CLI_OK;

  /* data plane */
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = x->url, o.tenant = x->tenant, o.token = x->token[0] ? x->token : NULL;
  o.connect_timeout_ms = x->timeout_ms, o.n_sockets = 1;
  o.request_timeout_ms = x->timeout_ms * 5 > 10000 ? x->timeout_ms * 5 : 10000;
  kvs_err e = kvs_client_create(&o, &x->c);
  if (e == KVS_OK) e = kvs_ping(x->c);
  if (e == KVS_OK) {
    check(&c, "data plane", 0, "%s answers, tenant '%s' accepted", x->url, x->tenant);
  } else if (e == KVS_EAUTH) {
    check(&c, "auth", 2, "%s refused the token of tenant '%s' (--token / $KVS_TOKEN)", x->url,
          x->tenant);
    exit_hint = CLI_AUTH;
  } else {
    check(&c, "data plane", 2, "%s: %s (is kvstashd running? --url / $KVS_URL)", x->url,
          x->c ? kvs_client_errmsg(x->c) : kvs_strerror(e));
    exit_hint = e == KVS_ECONN || e == KVS_ETIMEDOUT ? CLI_UNREACHABLE : CLI_FAIL;
  }
  int dp_ok = e == KVS_OK;
  if (!dp_ok) {
    kvs_client_free(x->c);
    x->c = NULL;
  }

  /* control plane */
  int st = 0;
  char *body = NULL;
  cJSON *info = NULL, *hs = NULL;
  e = cli_http(x, "GET", "/health", &st, &body);
  free(body);
  if (e != KVS_OK || st != 200) {
    check(&c, "http", 2, "control plane %s: %s", x->http[0] ? x->http : "(none)",
          e ? "unreachable (--http / $KVS_HTTP)" : "not healthy");
  } else {
    check(&c, "http", 0, "control plane %s healthy", x->http);
    body = NULL;
    if (cli_http(x, "GET", "/ready", &st, &body) == KVS_OK && st == 200)
      check(&c, "ready", 0, "store open, data plane serving");
    else
      check(&c, "ready", 2, "/ready answered %d (draining or not open)", st);
    free(body);
    e = cli_http_json(x, "GET", "/v1/info", &info);
    if (e == KVS_EAUTH)
      check(&c, "admin token", 2, "HTTP admin API refused it (--admin-token)");
    else if (e)
      check(&c, "admin api", 2, "/v1/info: %s", kvs_strerror(e));
    else
      check(&c, "admin api", 0, "admin token accepted");
    if (info) cli_http_json(x, "GET", "/v1/stats", &hs);
  }
  /* auth: off means any client reads, writes and evicts every entry */
  const cJSON *auth = info ? cJSON_GetObjectItem(info, "auth") : NULL;
  if (cJSON_IsFalse(auth))
    check(&c, "auth", 1,
          "auth is off: any client that reaches %s can read, overwrite and evict every entry "
          "(kvstashd.conf: tenant = NAME:TOKEN, and admin_token for the HTTP API)",
          x->url);
  else if (cJSON_IsTrue(auth))
    check(&c, "auth", 0, "on (%llu tenants with tokens)",
          (unsigned long long)(cJSON_IsNumber(cJSON_GetObjectItem(info, "tenants"))
                                   ? cJSON_GetObjectItem(info, "tenants")->valuedouble
                                   : 0));
  else if (dp_ok && !x->token[0])
    check(&c, "auth", 1,
          "%s accepted a client without a token: auth is off (kvstashd.conf: tenant = "
          "NAME:TOKEN)",
          x->url);

  /* store sanity */
  if (dp_ok) {
    uint64_t v[64] = {0};
    size_t n = 0;
    if (kvs_stats(x->c, v, 64, &n) != KVS_OK) {
      check(&c, "store", 2, "STATS failed: %s", kvs_client_errmsg(x->c));
    } else {
      int bad = 0;
      if (v[KVS_STAT_QUARANTINES])
        check(&c, "store", 1,
              "%llu entries quarantined (checksum or RocksDB corruption; see "
              "the server log)",
              (unsigned long long)v[KVS_STAT_QUARANTINES]),
            bad = 1;
      if (v[KVS_STAT_REQUESTS] > 100 && v[KVS_STAT_ERRORS] * 10 > v[KVS_STAT_REQUESTS])
        check(&c, "store", 1, "%llu of %llu requests failed",
              (unsigned long long)v[KVS_STAT_ERRORS], (unsigned long long)v[KVS_STAT_REQUESTS]),
            bad = 1;
      kvs_tier_stat tiers[16]; /* the server's tier list */
      size_t nt = 0;
      if (kvs_stats_tiers(x->c, tiers, 16, &nt) != KVS_OK) nt = 0;
      for (size_t t = 0; t < nt; t++) {
        double cap = (double)tiers[t].capacity;
        if (tiers[t].present && cap > 0 && (double)tiers[t].used > 0.95 * cap)
          check(&c, "capacity", 1, "tier %s at %.0f%% of its capacity", tiers[t].name,
                100.0 * (double)tiers[t].used / cap),
              bad = 1;
      }
      if (!bad)
        check(&c, "store", 0, "%llu entries, %llu quarantined, %llu errors of %llu requests",
              (unsigned long long)v[KVS_STAT_ENTRIES], (unsigned long long)v[KVS_STAT_QUARANTINES],
              (unsigned long long)v[KVS_STAT_ERRORS], (unsigned long long)v[KVS_STAT_REQUESTS]);
    }
  }
  if (info) { /* RocksDB background errors, from the Prometheus text */
    body = NULL;
    if (cli_http(x, "GET", "/metrics", &st, &body) == KVS_OK && st == 200 && body) {
      unsigned long long errs = 0;
      for (char *p = strstr(body, "background-errors"); p; p = strstr(p + 1, "background-errors")) {
        char *sp = strchr(p, ' ');
        if (sp) errs += strtoull(sp + 1, NULL, 10);
      }
      if (errs)
        check(&c, "rocksdb", 2, "%llu background errors (disk full or failing?)", errs);
      else
        check(&c, "rocksdb", 0, "no background errors");
    }
    free(body);
  }

  /* model cache */
  char mb[32];
  FILE *mf = fopen(x->model_path, "rb");
  if (!mf) {
    check(&c, "model", 1, "no model at %s (warmup and show's text need it: tools/fetch-model)",
          x->model_path);
  } else {
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, mf);
    fseek(mf, 0, SEEK_END);
    long size = ftell(mf);
    fclose(mf);
    if (got != 4 || memcmp(magic, "GGUF", 4))
      check(&c, "model", 2, "%s is not a GGUF file (re-fetch it: tools/fetch-model)",
            x->model_path);
    else if (!sha)
      check(&c, "model", 0, "%s: GGUF, %s (--sha256 to verify its hash)", x->model_path,
            cli_fmt_bytes((uint64_t)size, mb, sizeof mb));
    else {
      char hex[65], want[65] = "";
      FILE *hf = fopen(KVS_CLI_MODEL_SHA256_FILE, "r");
      if (hf) {
        if (fscanf(hf, "%64s", want) != 1) want[0] = 0;
        fclose(hf);
      }
      if (sha256_file(x->model_path, hex))
        check(&c, "model", 2, "cannot hash %s", x->model_path);
      else if (!want[0])
        check(&c, "model", 1, "sha256 %s (no %s to compare)", hex, KVS_CLI_MODEL_SHA256_FILE);
      else if (strcmp(hex, want))
        check(&c, "model", 2, "sha256 %s differs from %s (re-fetch)", hex, want);
      else
        check(&c, "model", 0, "%s: sha256 matches tools/model.sha256", x->model_path);
    }
  }

  /* GPU */
  if (!kvs_gpu_compiled()) {
    check(&c, "gpu", 1, "built without CUDA: the CPU decode path runs");
  } else {
    int nd = kvs_gpu_device_count();
    char name[256] = "";
    if (nd > 0 && kvs_gpu_device_info(0, name, sizeof name, NULL, NULL) == KVS_OK)
      check(&c, "gpu", 0, "%d device(s): %s", nd, name);
    else
      check(&c, "gpu", 1, "CUDA compiled but no device visible: the CPU path runs");
  }
  cJSON_Delete(info);
  cJSON_Delete(hs);
  if (j) {
    cJSON_AddNumberToObject(j, "failed", c.fails);
    cJSON_AddNumberToObject(j, "warnings", c.warns);
    cli_print_json(j);
  } else {
    printf("%s: %d failed, %d warning(s)\n", c.fails ? "problems found" : "healthy", c.fails,
           c.warns);
  }
  if (exit_hint != CLI_OK) return exit_hint;
  return c.fails ? CLI_FAIL : CLI_OK;
}
