/* kvs-bench-trace - open-loop replay of chat and RAG traffic against kvs-serve,
 * with kvstash reuse and without (the same server, "kvstash": {"reuse": false}),
 * reporting what a deployment sees: TTFT and end-to-end latency percentiles,
 * throughput, token hit rate, tokens recomputed, and kvstashd's own counters.
 *
 * Arrivals follow BurstGPT's modelled path: Gamma inter-arrival times with a
 * burstiness shape < 1 (a shape of 1 is Poisson) scaled to the chosen rate;
 * lengths are Zipf. The published trace files are not reachable here, so the
 * parameters are flags, printed, and seeded.
 *
 * Workloads:
 *   chat  sessions of --turns A-B turns arrive open-loop; within a session the
 *         next turn is sent a think time (exponential, --think mean) after the
 *         answer, and carries the whole conversation so far (context grows);
 *         user turns are MuSiQue passages cut to Zipf lengths + a question.
 *   rag   questions with --passages A-B documents drawn with Zipf popularity
 *         (--zipf) from all MuSiQue passages, in random order, so popular
 *         passages recur across questions at new positions.
 *
 *   kvs-bench-trace --serve 127.0.0.1:8000 --workload rag --rate 2 --requests 50
 * Last line: JSON. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvs_net.h"
#include "kvs_rag.h"
#include "serve_int.h"
#include "bench_version.h"

/* ------------------------------------------------------------- random */
static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double rng_u01(uint64_t *s) { return ((rng_next(s) >> 11) + 0.5) / 9007199254740992.0; }
static double rng_normal(uint64_t *s) {
  return sqrt(-2 * log(rng_u01(s))) * cos(2 * M_PI * rng_u01(s));
}
/* Gamma(shape k, scale 1): Marsaglia-Tsang; k < 1 by the boost U^(1/k). */
static double rng_gamma(uint64_t *s, double k) {
  if (k < 1) return rng_gamma(s, k + 1) * pow(rng_u01(s), 1 / k);
  double d = k - 1.0 / 3, c = 1 / sqrt(9 * d);
  for (;;) {
    double x = rng_normal(s), v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    double u = rng_u01(s);
    if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
  }
}
typedef struct zipf {
  double *cdf;
  uint32_t n;
} zipf;
static int zipf_init(zipf *z, uint32_t n, double s) {
  z->n = n, z->cdf = malloc(n * sizeof *z->cdf);
  if (!z->cdf) return -1;
  double t = 0;
  for (uint32_t i = 0; i < n; i++)
    z->cdf[i] = t += 1 / pow(i + 1, s);
  for (uint32_t i = 0; i < n; i++)
    z->cdf[i] /= t;
  return 0;
}
static uint32_t zipf_draw(const zipf *z, uint64_t *s) { /* rank 0 most popular */
  double u = rng_u01(s);
  uint32_t lo = 0, hi = z->n - 1;
  while (lo < hi) {
    uint32_t m = (lo + hi) / 2;
    if (z->cdf[m] < u)
      lo = m + 1;
    else
      hi = m;
  }
  return lo;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* ----------------------------------------------------------- the trace */
typedef struct opts {
  char host[256];
  int port;
  const char *metrics; /* kvstashd HTTP host:port, optional */
  const char *workload, *data, *modes;
  double rate, burst, think, zipf_s, duration;
  uint32_t requests, turns_min, turns_max, pass_min, pass_max, max_out, inflight, warmup;
  uint32_t upass_min, upass_max; /* chat: passages a user turn pastes */
  uint64_t seed;
} opts;

/* the server's TTFT path by stage (usage.kvstash.stages_ms), in order */
static const char *STAGES[] = {"queue",     "seq",       "lookup",  "plan",   "gets",  "run",
                               "load_wait", "recompute", "prefill", "finish", "logits"};
#define N_STAGES (sizeof STAGES / sizeof *STAGES)

typedef struct sample {
  double ttft, e2e;
  uint32_t prompt, out, reused, recomputed;
  uint32_t turn;    /* 0-based turn of its session (chat) */
  uint32_t history; /* prompt + answer tokens of the session's previous turn */
  double queue_ms, server_ttft_ms, lookup_ms, store_ms; /* the server's usage.kvstash */
  double stage_ms[N_STAGES];                            /* [0]: queue_ms */
  uint32_t full_prefill, loaded_chunks;
  int ok;
} sample;

typedef struct session { /* one conversation (chat) or one question (rag) */
  cJSON *msgs;           /* the conversation so far (chat) */
  uint32_t turns_left;
  uint32_t turn, history; /* this turn (0-based); prompt + answer tokens of the last */
  uint64_t rng;
  double due;           /* when its next request is sent */
  struct session *next; /* pending list, by due time */
} session;

typedef struct run {
  const opts *o;
  const kvs_rag_item *items;
  size_t n_items;
  const char **passages; /* all passages, popularity rank = index after a seeded shuffle */
  uint32_t n_passages;
  zipf pz, lz;
  int reuse;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  session *pending; /* sorted by due */
  uint32_t in_flight, sent, sessions_open;
  int stop;
  sample *s;
  uint32_t n_s, cap_s;
  double t0;
} run;

static void pending_add(run *r, session *ss) { /* under mu */
  session **p = &r->pending;
  while (*p && (*p)->due <= ss->due)
    p = &(*p)->next;
  ss->next = *p, *p = ss;
  pthread_cond_broadcast(&r->cv);
}

typedef struct sse {
  double t_send, ttft;
  char line[1 << 15];
  size_t ln;
  char *text;
  size_t text_n;
  cJSON *usage;
} sse;

static void sse_data(void *ctx, const char *d, size_t n) {
  sse *x = ctx;
  for (size_t i = 0; i < n; i++) {
    if (d[i] != '\n') {
      if (x->ln + 1 < sizeof x->line) x->line[x->ln++] = d[i];
      continue;
    }
    x->line[x->ln] = 0;
    x->ln = 0;
    if (strncmp(x->line, "data: {", 7)) continue;
    cJSON *j = cJSON_Parse(x->line + 6);
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    cJSON *t = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "delta"), "content");
    if (cJSON_IsString(t) && t->valuestring[0]) {
      if (x->ttft < 0) x->ttft = now_s() - x->t_send;
      size_t l = strlen(t->valuestring);
      char *nt = realloc(x->text, x->text_n + l + 1);
      if (nt) memcpy(nt + x->text_n, t->valuestring, l + 1), x->text = nt, x->text_n += l;
    }
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    if (cJSON_IsObject(u) && !x->usage) x->usage = cJSON_Duplicate(u, 1);
    cJSON_Delete(j);
  }
}

static uint32_t jnum(const cJSON *o, const char *a, const char *b) {
  const cJSON *v = cJSON_GetObjectItem(o, a);
  if (b) v = cJSON_GetObjectItem(v, b);
  return cJSON_IsNumber(v) ? (uint32_t)v->valuedouble : 0;
}

static char *cut_words(const char *s, uint32_t words) {
  size_t i = 0;
  for (uint32_t w = 0; s[i] && w < words; w++) {
    while (s[i] == ' ')
      i++;
    while (s[i] && s[i] != ' ')
      i++;
  }
  char *d = malloc(i + 1);
  if (d) memcpy(d, s, i), d[i] = 0;
  return d;
}

/* Builds the next request of a session; returns the JSON body (malloc'd). */
static char *next_request(run *r, session *ss) {
  const opts *o = r->o;
  cJSON *req = cJSON_CreateObject();
  cJSON_AddBoolToObject(req, "stream", 1);
  cJSON_AddItemToObject(req, "stream_options", cJSON_Parse("{\"include_usage\":true}"));
  cJSON_AddNumberToObject(req, "max_tokens", 8 + zipf_draw(&r->lz, &ss->rng) % (o->max_out - 7));
  cJSON *k = cJSON_AddObjectToObject(req, "kvstash");
  cJSON_AddBoolToObject(k, "reuse", r->reuse);
  const kvs_rag_item *it = &r->items[rng_next(&ss->rng) % r->n_items];
  if (!strcmp(o->workload, "rag")) {
    cJSON *m = cJSON_AddArrayToObject(req, "messages"), *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    cJSON_AddStringToObject(u, "content", it->question);
    cJSON_AddItemToArray(m, u);
    cJSON *docs = cJSON_AddArrayToObject(req, "documents");
    uint32_t n = o->pass_min + (uint32_t)(rng_next(&ss->rng) % (o->pass_max - o->pass_min + 1)),
             got = 0;
    uint32_t pick[64];
    while (got < n) { /* distinct passages by popularity */
      uint32_t p = zipf_draw(&r->pz, &ss->rng), dup = 0;
      for (uint32_t i = 0; i < got; i++)
        dup |= pick[i] == p;
      if (!dup) pick[got++] = p;
    }
    for (uint32_t i = 0; i < n; i++)
      cJSON_AddItemToArray(docs, cJSON_CreateString(r->passages[pick[i]]));
  } else {
    /* a user turn: --user-passages passages (the last cut to a Zipf length
     * in words), then a question */
    uint32_t np = o->upass_min + (uint32_t)(rng_next(&ss->rng) % (o->upass_max - o->upass_min + 1));
    size_t cap = strlen(it->question) + 4, n = 0;
    const char *pp[32];
    for (uint32_t i = 0; i < np; i++)
      pp[i] = r->passages[rng_next(&ss->rng) % r->n_passages], cap += strlen(pp[i]) + 2;
    char *cut = cut_words(pp[np - 1], 16 + zipf_draw(&r->lz, &ss->rng) % 240);
    char *t = malloc(cap);
    for (uint32_t i = 0; t && i + 1 < np; i++)
      n += (size_t)snprintf(t + n, cap - n, "%s\n\n", pp[i]);
    if (t) snprintf(t + n, cap - n, "%s\n\n%s", cut ? cut : "", it->question);
    free(cut);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "role", "user");
    cJSON_AddStringToObject(u, "content", t ? t : "");
    cJSON_AddItemToArray(ss->msgs, u);
    free(t);
    cJSON_AddItemReferenceToObject(req, "messages", ss->msgs);
  }
  char *body = cJSON_PrintUnformatted(req);
  cJSON_Delete(req);
  return body;
}

typedef struct job {
  run *r;
  session *ss;
} job;

static void *fire(void *arg) {
  job *jb = arg;
  run *r = jb->r;
  session *ss = jb->ss;
  free(jb);
  char *body = next_request(r, ss);
  sse x = {.t_send = ss->due, .ttft = -1};
  int code = srv_http(r->o->host, r->o->port, "POST", "/v1/chat/completions", body, 600000,
                      sse_data, &x, NULL);
  double end = now_s();
  free(body);
  sample sm = {.ttft = x.ttft,
               .e2e = end - ss->due,
               .ok = code == 200 && x.usage != NULL,
               .turn = ss->turn,
               .history = ss->history};
  if (x.usage) {
    const cJSON *k = cJSON_GetObjectItem(x.usage, "kvstash");
    const cJSON *v;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(k, "queue_ms"))) sm.queue_ms = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(k, "ttft_ms"))) sm.server_ttft_ms = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(k, "lookup_ms"))) sm.lookup_ms = v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItem(k, "store_ms"))) sm.store_ms = v->valuedouble;
    const cJSON *st = cJSON_GetObjectItem(k, "stages_ms");
    sm.stage_ms[0] = sm.queue_ms;
    for (size_t i = 1; i < N_STAGES; i++)
      if (cJSON_IsNumber(v = cJSON_GetObjectItem(st, STAGES[i]))) sm.stage_ms[i] = v->valuedouble;
    sm.full_prefill = jnum(x.usage, "kvstash", "full_prefill");
    sm.loaded_chunks = jnum(x.usage, "kvstash", "chunks_loaded");
    sm.prompt = jnum(x.usage, "prompt_tokens", NULL),
    sm.out = jnum(x.usage, "completion_tokens", NULL);
    sm.reused = jnum(x.usage, "kvstash", "reused_tokens");
    sm.recomputed = jnum(x.usage, "kvstash", "recomputed_tokens");
    if (sm.ttft < 0) sm.ttft = sm.e2e; /* an empty answer: its first token is its end */
  }
  cJSON_Delete(x.usage);
  pthread_mutex_lock(&r->mu);
  if (r->n_s == r->cap_s) {
    sample *ns = realloc(r->s, (r->cap_s = r->cap_s ? 2 * r->cap_s : 256) * sizeof *ns);
    if (ns) r->s = ns;
  }
  if (r->n_s < r->cap_s) r->s[r->n_s++] = sm;
  r->in_flight--;
  int more = sm.ok && ss->msgs && --ss->turns_left > 0 && !r->stop;
  if (more) { /* the answer joins the conversation; the next turn after a think time */
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "role", "assistant");
    cJSON_AddStringToObject(a, "content", x.text ? x.text : "");
    cJSON_AddItemToArray(ss->msgs, a);
    ss->turn++, ss->history = sm.prompt + sm.out;
    ss->due = now_s() + (r->o->think > 0 ? -log(rng_u01(&ss->rng)) * r->o->think : 0);
    pending_add(r, ss);
  } else {
    r->sessions_open--;
    cJSON_Delete(ss->msgs);
    free(ss);
  }
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  free(x.text);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double pct(double *v, uint32_t n, double p) {
  if (!n) return 0;
  size_t i = (size_t)ceil(p / 100 * n);
  return v[i ? i - 1 : 0];
}

/* kvstashd's counters (Prometheus text), summed over label sets. */
static double metric(const char *text, const char *name) {
  double sum = 0;
  size_t nl = strlen(name);
  for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
    if (strncmp(l, name, nl) || (l[nl] != ' ' && l[nl] != '{')) continue;
    const char *v = strchr(l, ' ');
    if (v) sum += strtod(v + 1, NULL);
  }
  return sum;
}
static char *scrape(const opts *o) {
  if (!o->metrics) return NULL;
  char host[256];
  int port = 0;
  if (kvs_hostport_split(o->metrics, host, sizeof host, &port) != KVS_OK) return NULL;
  char *b = NULL;
  return srv_http(host, port, "GET", "/metrics", NULL, 10000, NULL, NULL, &b) == 200 ? b : NULL;
}

/* kvs-serve's /health figures read at a mode's start and end: the worker's
 * busy time (seconds; -1 when unknown) and its reuse counters */
static const char *HEALTH[] = {"busy_s",         "stores_dropped", "stores_failed",
                               "stores_skipped", "store_after_s",  "chunks",
                               "hits_ram",       "hits_disk",      "full_prefills"};
#define N_HEALTH (sizeof HEALTH / sizeof *HEALTH)
static void serve_health(const opts *o, double v[N_HEALTH]) {
  char *b = NULL;
  for (size_t i = 0; i < N_HEALTH; i++)
    v[i] = 0;
  v[0] = -1;
  if (srv_http(o->host, o->port, "GET", "/health", NULL, 10000, NULL, NULL, &b) == 200) {
    cJSON *j = cJSON_Parse(b), *ru = cJSON_GetObjectItem(j, "reuse"), *x;
    for (size_t i = 0; i < N_HEALTH; i++)
      if (cJSON_IsNumber(x = cJSON_GetObjectItem(i ? ru : j, HEALTH[i]))) v[i] = x->valuedouble;
    cJSON_Delete(j);
  }
  free(b);
}

static const char *METRICS[] = {"kvstash_lookup_chunks_total",
                                "kvstash_lookup_chunks_hit_total",
                                "kvstash_lookup_tokens_total",
                                "kvstash_lookup_tokens_hit_total",
                                "kvstash_evictions_total",
                                "kvstash_tier_bytes_out_total",
                                "kvstash_tier_bytes_out_total{tier=\"ram\"}",
                                "kvstash_tier_bytes_out_total{tier=\"disk\"}",
                                "kvstash_puts_total",
                                "kvstash_bytes_in_total"};
#define N_METRICS (sizeof METRICS / sizeof *METRICS)

static int run_mode(run *r, cJSON *out) {
  const opts *o = r->o;
  uint64_t rng = o->seed;
  r->t0 = now_s(), r->n_s = 0, r->sent = 0, r->stop = 0;
  char *m0 = scrape(o);
  double h0[N_HEALTH], h1[N_HEALTH];
  serve_health(o, h0);
  double next_arrival = r->t0, mean_gap = 1 / o->rate;
  uint32_t started = 0;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    double t = now_s();
    int more_sessions = started < o->requests && (o->duration <= 0 || t - r->t0 < o->duration);
    if (!more_sessions && !r->pending && !r->in_flight) break;
    if (more_sessions && next_arrival <= t) { /* a new session arrives */
      session *ss = calloc(1, sizeof *ss);
      ss->rng = rng_next(&rng);
      ss->due = next_arrival;
      ss->turns_left =
          !strcmp(o->workload, "chat")
              ? o->turns_min + (uint32_t)(rng_next(&ss->rng) % (o->turns_max - o->turns_min + 1))
              : 1;
      if (!strcmp(o->workload, "chat")) ss->msgs = cJSON_CreateArray();
      started++, r->sessions_open++;
      pending_add(r, ss);
      next_arrival += rng_gamma(&rng, o->burst) / o->burst * mean_gap; /* mean gap 1/rate */
      continue;
    }
    if (r->pending && r->pending->due <= t && r->in_flight < o->inflight) {
      session *ss = r->pending;
      r->pending = ss->next;
      r->in_flight++, r->sent++;
      job *jb = malloc(sizeof *jb);
      jb->r = r, jb->ss = ss;
      pthread_t th;
      pthread_attr_t at;
      pthread_attr_init(&at);
      pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
      if (pthread_create(&th, &at, fire, jb)) {
        r->in_flight--;
        free(jb);
        pending_add(r, ss);
      }
      pthread_attr_destroy(&at);
      continue;
    }
    double wake = 1e18;
    if (more_sessions) wake = next_arrival;
    if (r->pending && r->in_flight < o->inflight && r->pending->due < wake) wake = r->pending->due;
    if (wake > t + 0.2) wake = t + 0.2;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double w = wake - t;
    ts.tv_sec += (time_t)w;
    ts.tv_nsec += (long)((w - (time_t)w) * 1e9);
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  pthread_mutex_unlock(&r->mu);
  double wall = now_s() - r->t0;
  char *m1 = scrape(o);
  serve_health(o, h1);
  double util = h0[0] >= 0 && h1[0] >= 0 ? (h1[0] - h0[0]) / wall : -1;
  double dh[N_HEALTH]; /* this mode's share of the counters */
  for (size_t i = 0; i < N_HEALTH; i++)
    dh[i] = h1[i] - h0[i];

  uint32_t n = r->n_s, ok = 0;
  double *tt = malloc((n + 1) * sizeof *tt), *ee = malloc((n + 1) * sizeof *ee);
  uint64_t prompt = 0, reused = 0, recomputed = 0, outt = 0;
  double q_ms = 0, st_ms = 0, lk_ms = 0, sto_ms = 0;
  /* chat, by turn: the history the previous turn left (prompt + answer) and
   * how much of it this turn reused */
  enum { TURNS = 13 };
  uint64_t bt_n[TURNS] = {0}, bt_prompt[TURNS] = {0}, bt_hist[TURNS] = {0}, bt_reused[TURNS] = {0};
  for (uint32_t i = 0; i < n; i++) {
    const sample *x = &r->s[i];
    if (!x->ok) continue;
    tt[ok] = x->ttft, ee[ok] = x->e2e, ok++;
    prompt += x->prompt, reused += x->reused, recomputed += x->recomputed, outt += x->out;
    q_ms += x->queue_ms, st_ms += x->server_ttft_ms, lk_ms += x->lookup_ms, sto_ms += x->store_ms;
    uint32_t t = x->turn < TURNS - 1 ? x->turn : TURNS - 1;
    bt_n[t]++, bt_prompt[t] += x->prompt, bt_hist[t] += x->history, bt_reused[t] += x->reused;
  }
  qsort(tt, ok, sizeof *tt, cmp_d);
  qsort(ee, ok, sizeof *ee, cmp_d);
  const char *mode = r->reuse ? "kvstash" : "no-reuse";
  printf("%-9s server busy %.0f%%\n", r->reuse ? "kvstash" : "no-reuse", 100 * util);
  printf("%-9s %5u req %3u err  TTFT p50 %8.1f p90 %8.1f p99 %8.1f ms  e2e p50 %8.1f p99 %8.1f ms  "
         "%.2f req/s %.0f tok/s  hit %.1f%% of %llu prompt tokens, %llu recomputed\n",
         mode, n, n - ok, 1e3 * pct(tt, ok, 50), 1e3 * pct(tt, ok, 90), 1e3 * pct(tt, ok, 99),
         1e3 * pct(ee, ok, 50), 1e3 * pct(ee, ok, 99), ok / wall, outt / wall,
         prompt ? 100.0 * reused / prompt : 0, (unsigned long long)prompt,
         (unsigned long long)recomputed);
  if (ok)
    printf("%-9s server side, mean per request: queue %.1f ms, TTFT in server %.1f ms (lookup "
           "%.2f ms, stores %.2f ms); stores dropped %.0f, skipped before a copy %.0f, failed "
           "%.0f; worker busy storing after answers %.1f%%\n",
           mode, q_ms / ok, st_ms / ok, lk_ms / ok, sto_ms / ok, dh[1], dh[3], dh[2],
           100 * dh[4] / wall);
  if (ok && dh[5] > 0)
    printf("%-9s chunks %.0f: found in RAM %.0f (%.1f%%), on disk %.0f (%.1f%%)\n", mode, dh[5],
           dh[6], 100 * dh[6] / dh[5], dh[7], 100 * dh[7] / dh[5]);
  /* the TTFT path by stage: mean / p50 over the answered requests */
  cJSON *stj = cJSON_CreateObject();
  uint32_t n_full = 0, n_loaded = 0;
  if (ok) {
    double *sv = malloc((ok + 1) * sizeof *sv);
    printf("%-9s stages ms (mean/p50):", mode);
    for (size_t k = 0; sv && k < N_STAGES; k++) {
      uint32_t m = 0;
      double sum = 0;
      for (uint32_t i = 0; i < n; i++)
        if (r->s[i].ok) sv[m++] = r->s[i].stage_ms[k], sum += r->s[i].stage_ms[k];
      qsort(sv, m, sizeof *sv, cmp_d);
      printf(" %s %.2f/%.2f", STAGES[k], sum / ok, pct(sv, m, 50));
      cJSON *e = cJSON_AddObjectToObject(stj, STAGES[k]);
      cJSON_AddNumberToObject(e, "mean", sum / ok);
      cJSON_AddNumberToObject(e, "p50", pct(sv, m, 50));
    }
    for (uint32_t i = 0; i < n; i++)
      if (r->s[i].ok) n_full += r->s[i].full_prefill, n_loaded += r->s[i].loaded_chunks > 0;
    printf("; plain prefill %u, loaded something %u of %u\n", n_full, n_loaded, ok);
    free(sv);
  }
  if (!strcmp(o->workload, "chat")) {
    printf("%-9s by turn (requests, mean prompt, reused / last turn's prompt+answer):", mode);
    for (int t = 0; t < TURNS; t++)
      if (bt_n[t])
        printf(" %d:%llu,%llu,%.0f%%", t + 1, (unsigned long long)bt_n[t],
               (unsigned long long)(bt_prompt[t] / bt_n[t]),
               bt_hist[t] ? 100.0 * bt_reused[t] / bt_hist[t] : 0.0);
    printf("\n");
  }
  cJSON *j = cJSON_AddObjectToObject(out, mode);
  cJSON_AddNumberToObject(j, "requests", n);
  cJSON_AddNumberToObject(j, "errors", n - ok);
  cJSON_AddNumberToObject(j, "ttft_p50_ms", 1e3 * pct(tt, ok, 50));
  cJSON_AddNumberToObject(j, "ttft_p90_ms", 1e3 * pct(tt, ok, 90));
  cJSON_AddNumberToObject(j, "ttft_p99_ms", 1e3 * pct(tt, ok, 99));
  cJSON_AddNumberToObject(j, "e2e_p50_ms", 1e3 * pct(ee, ok, 50));
  cJSON_AddNumberToObject(j, "e2e_p99_ms", 1e3 * pct(ee, ok, 99));
  cJSON_AddNumberToObject(j, "req_per_s", ok / wall);
  cJSON_AddNumberToObject(j, "server_busy", util);
  cJSON_AddNumberToObject(j, "out_tokens_per_s", outt / wall);
  cJSON_AddNumberToObject(j, "prompt_tokens", (double)prompt);
  cJSON_AddNumberToObject(j, "reused_tokens", (double)reused);
  cJSON_AddNumberToObject(j, "recomputed_tokens", (double)recomputed);
  cJSON_AddNumberToObject(j, "token_hit_rate", prompt ? (double)reused / prompt : 0);
  cJSON_AddNumberToObject(j, "queue_ms_mean", ok ? q_ms / ok : 0);
  cJSON_AddNumberToObject(j, "server_ttft_ms_mean", ok ? st_ms / ok : 0);
  cJSON_AddNumberToObject(j, "lookup_ms_mean", ok ? lk_ms / ok : 0);
  cJSON_AddNumberToObject(j, "store_ms_mean", ok ? sto_ms / ok : 0);
  cJSON_AddNumberToObject(j, "stores_dropped", dh[1]);
  cJSON_AddNumberToObject(j, "stores_failed", dh[2]);
  cJSON_AddNumberToObject(j, "stores_skipped", dh[3]);
  cJSON_AddNumberToObject(j, "store_after_busy", dh[4] / wall);
  cJSON_AddNumberToObject(j, "reuse_chunks", dh[5]);
  cJSON_AddNumberToObject(j, "ram_hit_rate", dh[5] > 0 ? dh[6] / dh[5] : 0);
  cJSON_AddNumberToObject(j, "disk_hit_rate", dh[5] > 0 ? dh[7] / dh[5] : 0);
  cJSON_AddNumberToObject(j, "full_prefill_requests", n_full);
  cJSON_AddNumberToObject(j, "requests_that_loaded", n_loaded);
  cJSON_AddItemToObject(j, "stages_ms", stj);
  if (!strcmp(o->workload, "chat")) {
    uint64_t h = 0, hr = 0; /* turns after the first: reused / history */
    for (int t = 1; t < TURNS; t++)
      h += bt_hist[t], hr += bt_reused[t];
    cJSON_AddNumberToObject(j, "history_reuse", h ? (double)hr / h : 0);
  }
  if (m0 && m1) {
    cJSON *k = cJSON_AddObjectToObject(j, "kvstashd");
    for (size_t i = 0; i < N_METRICS; i++)
      cJSON_AddNumberToObject(k, METRICS[i], metric(m1, METRICS[i]) - metric(m0, METRICS[i]));
    double asked = metric(m1, METRICS[0]) - metric(m0, METRICS[0]);
    double hit = metric(m1, METRICS[1]) - metric(m0, METRICS[1]);
    cJSON_AddNumberToObject(j, "chunk_hit_rate", asked > 0 ? hit / asked : 0);
    double ram = metric(m1, METRICS[6]) - metric(m0, METRICS[6]),
           disk = metric(m1, METRICS[7]) - metric(m0, METRICS[7]);
    cJSON_AddNumberToObject(j, "ram_share_of_bytes_out", ram + disk > 0 ? ram / (ram + disk) : 0);
    printf(
        "          kvstashd: chunks looked up %.0f, hit %.0f (%.1f%%), evictions %.0f, puts %.0f, "
        "bytes out RAM %.0f MB disk %.0f MB\n",
        asked, hit, asked > 0 ? 100 * hit / asked : 0.0,
        metric(m1, "kvstash_evictions_total") - metric(m0, "kvstash_evictions_total"),
        metric(m1, "kvstash_puts_total") - metric(m0, "kvstash_puts_total"), ram / 1e6, disk / 1e6);
  }
  free(m0), free(m1), free(tt), free(ee);
  return ok == n ? 0 : 1;
}

/* Unmeasured requests first, with reuse on and off, so that neither measured
 * mode pays for the server's first calls (CUDA and cuBLAS set-up, first
 * allocations, the reuse client's first figures). */
static void warm_up(run *r, uint32_t n) {
  int keep = r->reuse;
  uint64_t rng = r->o->seed ^ 0xfeed;
  for (uint32_t i = 0; i < 2 * n; i++) {
    r->reuse = i % 2 == 0;
    session ss = {.rng = rng_next(&rng), .turns_left = 1};
    if (!strcmp(r->o->workload, "chat")) ss.msgs = cJSON_CreateArray();
    char *body = next_request(r, &ss);
    srv_http(r->o->host, r->o->port, "POST", "/v1/chat/completions", body, 600000, NULL, NULL,
             NULL);
    free(body);
    cJSON_Delete(ss.msgs);
  }
  r->reuse = keep;
}

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: kvs-bench-trace --serve HOST:PORT [options]\n"
      "  --workload chat|rag   (default rag)\n"
      "  --rate R              sessions (chat) or questions (rag) per second (default 1)\n"
      "  --burst K             Gamma shape of inter-arrival times, < 1 is burstier (default 0.5)\n"
      "  --requests N          sessions/questions to start (default 20)\n"
      "  --duration S          stop starting new ones after S seconds (default: no limit)\n"
      "  --turns A-B           chat turns per session (default 2-12)\n"
      "  --think S             mean think time between turns, seconds (default 1)\n"
      "  --user-passages A-B   chat: passages a user turn pastes, the last cut to a Zipf\n"
      "                        length (default 1-1)\n"
      "  --passages A-B        rag documents per question (default 5-10)\n"
      "  --zipf S              passage popularity / length exponent (default 1.1)\n"
      "  --max-out N           answers up to N tokens, Zipf (default 32)\n"
      "  --inflight N          requests in flight at most (default 64)\n"
      "  --modes LIST          kvstash,no-reuse (default both, in that order)\n"
      "  --metrics HOST:PORT   kvstashd's HTTP control plane, for its counters\n"
      "  --data FILE           MuSiQue subset (default the repo's data/)\n"
      "  --warmup N            unmeasured requests per mode before the first (default 3)\n"
      "  --seed N              (default 1)\n");
}

static int range(const char *s, uint32_t *a, uint32_t *b) {
  return sscanf(s, "%u-%u", a, b) == 2 && *a >= 1 && *a <= *b ? 0 : -1;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-trace")) return 0;
  opts o = {.workload = "rag",
            .data = NULL,
            .modes = "kvstash,no-reuse",
            .rate = 1,
            .burst = 0.5,
            .think = 1,
            .zipf_s = 1.1,
            .requests = 20,
            .turns_min = 2,
            .turns_max = 12,
            .pass_min = 5,
            .pass_max = 10,
            .upass_min = 1,
            .upass_max = 1,
            .max_out = 32,
            .inflight = 64,
            .warmup = 3,
            .seed = 1};
  const char *serve = NULL;
  static struct option lo[] = {{"serve", 1, 0, 'S'},         {"workload", 1, 0, 'w'},
                               {"rate", 1, 0, 'r'},          {"burst", 1, 0, 'b'},
                               {"requests", 1, 0, 'n'},      {"duration", 1, 0, 'd'},
                               {"turns", 1, 0, 't'},         {"think", 1, 0, 'k'},
                               {"passages", 1, 0, 'p'},      {"zipf", 1, 0, 'z'},
                               {"max-out", 1, 0, 'o'},       {"inflight", 1, 0, 'i'},
                               {"modes", 1, 0, 'm'},         {"metrics", 1, 0, 'M'},
                               {"data", 1, 0, 'D'},          {"seed", 1, 0, 's'},
                               {"help", 0, 0, 'h'},          {"warmup", 1, 0, 'W'},
                               {"user-passages", 1, 0, 'U'}, {0, 0, 0, 0}};
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    int bad = 0;
    switch (c) {
    case 'S': serve = optarg; break;
    case 'w': o.workload = optarg; break;
    case 'r': bad = (o.rate = atof(optarg)) <= 0; break;
    case 'b': bad = (o.burst = atof(optarg)) <= 0; break;
    case 'n': bad = (o.requests = (uint32_t)atoi(optarg)) < 1; break;
    case 'd': o.duration = atof(optarg); break;
    case 't': bad = range(optarg, &o.turns_min, &o.turns_max); break;
    case 'k': o.think = atof(optarg); break;
    case 'p': bad = range(optarg, &o.pass_min, &o.pass_max) || o.pass_max > 32; break;
    case 'z': bad = (o.zipf_s = atof(optarg)) <= 0; break;
    case 'o': bad = (o.max_out = (uint32_t)atoi(optarg)) < 8; break;
    case 'i': bad = (o.inflight = (uint32_t)atoi(optarg)) < 1; break;
    case 'm': o.modes = optarg; break;
    case 'M': o.metrics = optarg; break;
    case 'D': o.data = optarg; break;
    case 's': o.seed = strtoull(optarg, NULL, 10); break;
    case 'W': o.warmup = (uint32_t)atoi(optarg); break;
    case 'U': bad = range(optarg, &o.upass_min, &o.upass_max) || o.upass_max > 32; break;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
    if (bad) {
      fprintf(stderr, "kvs-bench-trace: bad value '%s' for --%s\n", optarg, lo[0].name);
      return 2;
    }
  }
  if (!serve || kvs_hostport_split(serve, o.host, sizeof o.host, &o.port) != KVS_OK ||
      (strcmp(o.workload, "chat") && strcmp(o.workload, "rag"))) {
    usage(stderr);
    return 2;
  }
  run r = {.o = &o};
  kvs_rag_item *items = NULL;
  size_t n_items = 0;
  o.data = kvs_rag_data_path(o.data);
  kvs_err e = kvs_rag_load(o.data, &items, &n_items);
  if (e || !n_items) {
    fprintf(stderr, "kvs-bench-trace: %s: %s\n", o.data, e ? kvs_strerror(e) : "no items");
    return 1;
  }
  /* items 0-99 only: 100-149 are held out for quality figures */
  r.items = items, r.n_items = n_items > 100 ? 100 : n_items;
  for (size_t i = 0; i < r.n_items; i++)
    r.n_passages += (uint32_t)items[i].n_passages;
  r.passages = malloc(r.n_passages * sizeof *r.passages);
  uint32_t k = 0;
  for (size_t i = 0; i < r.n_items; i++)
    for (size_t p = 0; p < items[i].n_passages; p++)
      r.passages[k++] = items[i].text[p];
  uint64_t sh = o.seed ^ 0x5eed;
  for (uint32_t i = k; i > 1; i--) { /* popularity order: a seeded shuffle */
    uint32_t j = (uint32_t)(rng_next(&sh) % i);
    const char *t = r.passages[i - 1];
    r.passages[i - 1] = r.passages[j], r.passages[j] = t;
  }
  if (zipf_init(&r.pz, r.n_passages, o.zipf_s) || zipf_init(&r.lz, 256, o.zipf_s)) return 1;
  pthread_mutex_init(&r.mu, NULL);
  pthread_cond_init(&r.cv, NULL);
  printf("kvs-bench-trace: %s workload on %s:%d, rate %.2f/s, Gamma shape %.2f, %u %s, zipf %.2f, "
         "seed %llu; %u passages from %zu items\n",
         o.workload, o.host, o.port, o.rate, o.burst, o.requests,
         strcmp(o.workload, "chat") ? "questions" : "sessions", o.zipf_s,
         (unsigned long long)o.seed, r.n_passages, r.n_items);
  cJSON *out = cJSON_CreateObject();
  cJSON_AddStringToObject(out, "bench", "trace");
  cJSON_AddStringToObject(out, "workload", o.workload);
  cJSON_AddNumberToObject(out, "rate", o.rate);
  cJSON_AddNumberToObject(out, "burst", o.burst);
  cJSON_AddNumberToObject(out, "seed", (double)o.seed);
  int rc = 0;
  warm_up(&r, o.warmup);
  char modes[256];
  snprintf(modes, sizeof modes, "%s", o.modes);
  for (char *sv = NULL, *m = strtok_r(modes, ",", &sv); m; m = strtok_r(NULL, ",", &sv)) {
    if (strcmp(m, "kvstash") && strcmp(m, "no-reuse")) {
      fprintf(stderr, "kvs-bench-trace: unknown mode '%s'\n", m);
      return 2;
    }
    r.reuse = !strcmp(m, "kvstash");
    rc |= run_mode(&r, out);
  }
  cJSON *a = cJSON_GetObjectItem(out, "kvstash"), *b = cJSON_GetObjectItem(out, "no-reuse");
  if (a && b) {
    double x = cJSON_GetObjectItem(a, "ttft_p50_ms")->valuedouble,
           y = cJSON_GetObjectItem(b, "ttft_p50_ms")->valuedouble;
    double x9 = cJSON_GetObjectItem(a, "ttft_p99_ms")->valuedouble,
           y9 = cJSON_GetObjectItem(b, "ttft_p99_ms")->valuedouble;
    cJSON_AddNumberToObject(out, "ttft_p50_speedup", x > 0 ? y / x : 0);
    cJSON_AddNumberToObject(out, "ttft_p99_speedup", x9 > 0 ? y9 / x9 : 0);
    printf("TTFT with kvstash: p50 %.2fx, p99 %.2fx lower than without\n", x > 0 ? y / x : 0,
           x9 > 0 ? y9 / x9 : 0);
  }
  char *js = cJSON_PrintUnformatted(out);
  printf("%s\n", js);
  free(js);
  cJSON_Delete(out);
  free(r.passages), free(r.pz.cdf), free(r.lz.cdf), free(r.s);
  kvs_rag_items_free(items, n_items);
  return rc;
}
