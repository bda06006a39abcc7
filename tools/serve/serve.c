/* kvs-serve - an OpenAI-compatible HTTP server on the reference engine, with
 * kvstash reuse (see docs/serve.md).
 *
 *   kvs-serve --model GGUF [--listen 127.0.0.1:8000] [--kvstash URL] [--gpu]
 *
 * Endpoints: POST /v1/chat/completions, POST /v1/completions (JSON, or SSE
 * with "stream": true), GET /v1/models, GET /health. Greedy decoding:
 * temperature/top_p are accepted and ignored (the reference engine is for
 * measuring reuse, where sampling noise would hide what reuse changes). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvs_engine.h"
#include "kvs_engines.h"
#include "kvs_gpu.h"
#include "kvs_gpu_blend.h"
#include "kvs_gpu_model.h"
#include "kvs_model.h"
#include "kvs_net.h"
#include "kvs_reuse.h"
#include "kvstash.h"
#include "model_int.h"
#include "serve_int.h"

#ifndef KVS_SERVE_VERSION
#define KVS_SERVE_VERSION "0"
#endif

/* ---------------------------------------------------------------- jobs */
typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE } job_state;

struct server;
typedef struct job {
  struct job *next; /* queue link */
  struct server *sv;
  srv_req req;
  struct evhttp_request *http; /* NULL once the client went away (loop thread only) */
  struct evhttp_connection *conn;
  struct event *wake; /* activated by the worker: outbox has news */
  char id[40];
  int64_t created;
  /* outbox: written by the worker, drained by the loop, under mu */
  pthread_mutex_t mu;
  char *text; /* generated text not yet sent */
  size_t text_n, text_cap;
  int done;
  kvs_err err;
  char errmsg[256];
  const char *finish; /* "stop" | "length" */
  uint32_t prompt_tokens, completion_tokens, reused_tokens, recomputed_tokens, prefilled_tokens;
  double ttft_s;
  /* where the time went (usage.kvstash): waiting in the queue, the LOOKUP,
   * the stores kvs_reuse_run queued before returning (on the TTFT path) */
  uint64_t t_enq;
  double queue_s, lookup_s, store_s;
  uint32_t n_chunks, n_load, n_miss, n_recompute, full_prefill, n_forced;
  /* the TTFT path by stage (s): getting the sequence ready, then
   * kvs_reuse_run's stages (plan, starting the gets, the run: blend's load
   * waits, recompute through the layers and the NEW tokens' prefill, or the
   * plain prefill; then the gets' ends), then the logits to the host */
  double st_seq, st_plan, st_gets, st_run, st_load_wait, st_recompute, st_prefill, st_finish,
      st_logits;
  /* loop side */
  int started;          /* SSE headers sent */
  atomic_int cancelled; /* the client closed: the worker stops early */
} job;                  /* owned by the loop thread: freed there once done (the worker never
                         * touches a job after it has set done under mu and activated wake) */

typedef struct server {
  struct event_base *base;
  struct evhttp *http;
  kvs_model *model;
  kvs_gpu_model *gm;
  kvs_engine *eng;
  kvs_engine_info info;
  const kvs_tok *tok;
  kvs_tok *own_tok; /* --random-8b: the tokenizer of --model, weights random */
  kvs_gguf *tok_gguf;
  char model_name[128];
  kvs_client *cl;       /* NULL without --kvstash */
  srv_answers *answers; /* the worker's: ids of recent answers by text */
  /* the worker's buffers in engine memory, kept between requests (a device
   * cudaMalloc/cudaFree per request synchronises the whole device) */
  void *scratch; /* KV read back for stores */
  size_t scratch_cap;
  kvs_engine_seq *seq; /* the worker's sequence, kept between requests */
  uint32_t seq_cap;
  float *lg_dev; /* device engine: the logits */
  kvs_reuse *ru;
  uint32_t chunk_tokens;
  uint32_t max_ctx, default_max_tokens, max_queue;
  /* queue */
  pthread_mutex_t qmu;
  pthread_cond_t qcv;
  job *head, *tail;
  uint32_t queued;
  int stopping;
  pthread_t worker;
  uint64_t n_requests, n_rejected;
  double busy_s; /* the worker's time spent on jobs (under qmu) */
  int working;   /* the worker is on a job, its stores included (under qmu) */
  /* stores after the answers (the worker's; read under qmu): the time spent
   * reading KV out and queueing it, and stores not even copied because the
   * store queue held more than the tier absorbs in store_backlog_s */
  double store_after_s;
  uint64_t stores_skipped;
  double store_backlog_s;
  uint32_t store_queue;
  double drain_per_s; /* stores the tier absorbs per second (EWMA; 0: not measured; written
                       * by the worker under qmu) */
  uint64_t drain_done, drain_t;
  uint32_t drain_active;
  int stage_log; /* --stage-log: one line per request on stderr */
} server;

static void job_free(job *j) {
  if (j->wake) event_free(j->wake);
  srv_req_free(&j->req);
  pthread_mutex_destroy(&j->mu);
  free(j->text);
  free(j);
}

/* ------------------------------------------------------------ HTTP out */
static void send_json(struct evhttp_request *r, int code, const char *reason, cJSON *body) {
  char *s = cJSON_PrintUnformatted(body);
  struct evbuffer *b = evbuffer_new();
  if (b && s) evbuffer_add(b, s, strlen(s));
  evhttp_add_header(evhttp_request_get_output_headers(r), "Content-Type", "application/json");
  evhttp_send_reply(r, code, reason, b);
  if (b) evbuffer_free(b);
  free(s);
}

static void send_error(struct evhttp_request *r, int code, const char *type, const char *msg) {
  cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
  cJSON_AddStringToObject(e, "message", msg);
  cJSON_AddStringToObject(e, "type", type);
  cJSON_AddNullToObject(e, "param");
  cJSON_AddNullToObject(e, "code");
  send_json(r, code, code == 400 ? "Bad Request" : code == 404 ? "Not Found" : "Error", o);
  cJSON_Delete(o);
}

static cJSON *usage_json(const job *j) {
  cJSON *u = cJSON_CreateObject();
  cJSON_AddNumberToObject(u, "prompt_tokens", j->prompt_tokens);
  cJSON_AddNumberToObject(u, "completion_tokens", j->completion_tokens);
  cJSON_AddNumberToObject(u, "total_tokens", j->prompt_tokens + j->completion_tokens);
  cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
  cJSON_AddNumberToObject(d, "cached_tokens", j->reused_tokens);
  cJSON *k = cJSON_AddObjectToObject(u, "kvstash");
  cJSON_AddNumberToObject(k, "reused_tokens", j->reused_tokens);
  cJSON_AddNumberToObject(k, "recomputed_tokens", j->recomputed_tokens);
  cJSON_AddNumberToObject(k, "prefilled_tokens", j->prefilled_tokens);
  cJSON_AddNumberToObject(k, "ttft_ms", j->ttft_s * 1e3);
  cJSON_AddNumberToObject(k, "queue_ms", j->queue_s * 1e3);
  cJSON_AddNumberToObject(k, "lookup_ms", j->lookup_s * 1e3);
  cJSON_AddNumberToObject(k, "store_ms", j->store_s * 1e3);
  cJSON_AddNumberToObject(k, "chunks", j->n_chunks);
  cJSON_AddNumberToObject(k, "chunks_loaded", j->n_load);
  cJSON_AddNumberToObject(k, "chunks_missed", j->n_miss);
  cJSON_AddNumberToObject(k, "chunks_recomputed", j->n_recompute);
  /* of prefilled_tokens: missing chunks' tokens run through blend's layer path
   * (chunks after the last loaded one are prefilled with the new tokens) */
  cJSON_AddNumberToObject(k, "forced_tokens", j->n_forced);
  cJSON_AddNumberToObject(k, "full_prefill", j->full_prefill);
  cJSON *st = cJSON_AddObjectToObject(k, "stages_ms"); /* the TTFT path by stage */
  cJSON_AddNumberToObject(st, "seq", j->st_seq * 1e3);
  cJSON_AddNumberToObject(st, "lookup", j->lookup_s * 1e3);
  cJSON_AddNumberToObject(st, "plan", j->st_plan * 1e3);
  cJSON_AddNumberToObject(st, "gets", j->st_gets * 1e3);
  cJSON_AddNumberToObject(st, "run", j->st_run * 1e3);
  cJSON_AddNumberToObject(st, "load_wait", j->st_load_wait * 1e3);
  cJSON_AddNumberToObject(st, "recompute", j->st_recompute * 1e3);
  cJSON_AddNumberToObject(st, "prefill", j->st_prefill * 1e3);
  cJSON_AddNumberToObject(st, "finish", j->st_finish * 1e3);
  cJSON_AddNumberToObject(st, "logits", j->st_logits * 1e3);
  return u;
}

/* One response object (or stream chunk) in the OpenAI shape. */
static cJSON *response_json(const server *sv, const job *j, int chunk, const char *text, size_t n,
                            const char *finish, int role) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "id", j->id);
  cJSON_AddStringToObject(o, "object",
                          j->req.chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                      : "text_completion");
  cJSON_AddNumberToObject(o, "created", (double)j->created);
  cJSON_AddStringToObject(o, "model", sv->model_name);
  cJSON *cs = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
  cJSON_AddItemToArray(cs, c);
  cJSON_AddNumberToObject(c, "index", 0);
  char *t = malloc(n + 1);
  if (t) memcpy(t, text ? text : "", n), t[n] = 0;
  if (j->req.chat) {
    cJSON *m = cJSON_AddObjectToObject(c, chunk ? "delta" : "message");
    if (role || !chunk) cJSON_AddStringToObject(m, "role", "assistant");
    if (t && (n || !chunk)) cJSON_AddStringToObject(m, "content", t);
  } else {
    cJSON_AddStringToObject(c, "text", t ? t : "");
  }
  free(t);
  if (finish)
    cJSON_AddStringToObject(c, "finish_reason", finish);
  else
    cJSON_AddNullToObject(c, "finish_reason");
  if (!chunk) cJSON_AddItemToObject(o, "usage", usage_json(j));
  return o;
}

static void sse_send(struct evhttp_request *r, cJSON *o) {
  struct evbuffer *b = evbuffer_new();
  if (!b) return;
  char *s = cJSON_PrintUnformatted(o);
  evbuffer_add_printf(b, "data: %s\n\n", s ? s : "{}");
  free(s);
  evhttp_send_reply_chunk(r, b);
  evbuffer_free(b);
}

/* Loop thread: move what the worker produced to the client. */
static void job_wake(evutil_socket_t fd, short what, void *arg) {
  job *j = arg;
  const server *sv = j->sv;
  (void)fd, (void)what;
  pthread_mutex_lock(&j->mu);
  int done = j->done;
  char *text = j->text;
  size_t n = j->text_n;
  if (j->req.stream || done) j->text = NULL, j->text_n = j->text_cap = 0;
  pthread_mutex_unlock(&j->mu);
  struct evhttp_request *r = j->http;
  if (r && j->req.stream) {
    if (!j->started && !(done && j->err)) {
      struct evkeyvalq *h = evhttp_request_get_output_headers(r);
      evhttp_add_header(h, "Content-Type", "text/event-stream");
      evhttp_add_header(h, "Cache-Control", "no-cache");
      evhttp_send_reply_start(r, 200, "OK");
      j->started = 1;
      if (j->req.chat) {
        cJSON *o = response_json(sv, j, 1, "", 0, NULL, 1);
        sse_send(r, o);
        cJSON_Delete(o);
      }
    }
    if (j->started && n) {
      cJSON *o = response_json(sv, j, 1, text, n, NULL, 0);
      sse_send(r, o);
      cJSON_Delete(o);
    }
    if (done && j->started) {
      if (j->err) {
        cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "message", j->errmsg);
        cJSON_AddStringToObject(e, "type", "server_error");
        sse_send(r, o);
        cJSON_Delete(o);
      } else {
        cJSON *o = response_json(sv, j, 1, "", 0, j->finish, 0);
        if (j->req.include_usage) cJSON_AddItemToObject(o, "usage", usage_json(j));
        sse_send(r, o);
        cJSON_Delete(o);
      }
      struct evbuffer *b = evbuffer_new();
      if (b) {
        evbuffer_add_printf(b, "data: [DONE]\n\n");
        evhttp_send_reply_chunk(r, b);
        evbuffer_free(b);
      }
      evhttp_send_reply_end(r);
    } else if (done) {
      send_error(r, 500, "server_error", j->errmsg);
    }
  } else if (r && done) {
    if (j->err)
      send_error(r, j->err == KVS_ETOOBIG ? 400 : 500,
                 j->err == KVS_ETOOBIG ? "invalid_request_error" : "server_error", j->errmsg);
    else {
      cJSON *o = response_json(sv, j, 0, text, n, j->finish, 0);
      send_json(r, 200, "OK", o);
      cJSON_Delete(o);
    }
  }
  if (done && r) {
    evhttp_connection_set_closecb(j->conn, NULL, NULL);
    j->http = NULL;
  }
  free(text);
  if (done) job_free(j);
}

/* ------------------------------------------------------------- worker */
static void out_text(job *j, const char *s, size_t n) {
  pthread_mutex_lock(&j->mu);
  if (j->text_n + n + 1 > j->text_cap) {
    size_t c = j->text_cap ? j->text_cap : 256;
    while (c < j->text_n + n + 1)
      c *= 2;
    char *t = realloc(j->text, c);
    if (!t) {
      pthread_mutex_unlock(&j->mu);
      return; /* dropped text; the job fails below on its next allocation */
    }
    j->text = t, j->text_cap = c;
  }
  memcpy(j->text + j->text_n, s, n);
  j->text_n += n;
  j->text[j->text_n] = 0;
  pthread_mutex_unlock(&j->mu);
  if (j->req.stream) event_active(j->wake, 0, 0);
}

/* The worker's KV scratch of at least n bytes, engine memory; NULL when it
 * cannot be had. Kept (and grown) between requests. */
static void *scratch_get(server *sv, size_t n) {
  if (n <= sv->scratch_cap) return sv->scratch;
  int dev = sv->info.mem == KVS_ENGINE_MEM_DEVICE;
  if (dev)
    kvs_gpu_free(sv->scratch);
  else
    free(sv->scratch);
  sv->scratch = NULL, sv->scratch_cap = 0;
  if (dev ? kvs_gpu_alloc(&sv->scratch, n) != KVS_OK : !(sv->scratch = malloc(n))) return NULL;
  sv->scratch_cap = n;
  return sv->scratch;
}

/* Whether one more store may be copied out of the engine now: the store
 * queue holds fewer than the tier absorbs in store_backlog_s (measured:
 * stores finished per second over windows in which the queue never ran
 * empty) and fewer than its own bound. A store refused here costs no copy
 * and is counted (stores_skipped); one the tier cannot absorb would wait in
 * the queue, its KV copied for nothing, and be dropped there or stored late. */
static int store_room(server *sv) {
  uint32_t q = 0, act = 0;
  kvs_reuse_counters rc;
  if (kvs_reuse_store_backlog(sv->ru, &q, &act) != KVS_OK ||
      kvs_reuse_get_counters(sv->ru, &rc) != KVS_OK)
    return 0;
  uint64_t now = kvs_now_ns(), done = rc.stores_done + rc.stores_failed;
  if (!sv->drain_t || now - sv->drain_t > 100000000u) { /* a window of >= 100 ms */
    if (sv->drain_t && sv->drain_active && act && done > sv->drain_done) {
      double rate = (double)(done - sv->drain_done) / ((now - sv->drain_t) / 1e9);
      pthread_mutex_lock(&sv->qmu); /* /health reads it */
      sv->drain_per_s = sv->drain_per_s > 0 ? 0.7 * sv->drain_per_s + 0.3 * rate : rate;
      pthread_mutex_unlock(&sv->qmu);
    }
    sv->drain_t = now, sv->drain_done = done, sv->drain_active = act;
  }
  double allowed = sv->drain_per_s > 0 ? sv->drain_per_s * sv->store_backlog_s : 1e9;
  if (allowed < 2) allowed = 2;
  if (q < sv->store_queue && act < allowed) return 1;
  pthread_mutex_lock(&sv->qmu);
  sv->stores_skipped++;
  pthread_mutex_unlock(&sv->qmu);
  return 0;
}

/* Stores chunks [first, last) of the prefix chain over ids[0..n_kv), where
 * first is the chunk in which the prompt's PREFIX segment ends (store_computed
 * stored the whole chunks before it, and of this one only the PREFIX's part,
 * a tail chunk under another key) and last the last whole chunk the sequence
 * holds KV for. Best effort: a full store queue drops it (counted by
 * kvs_reuse). */
static void store_answer(server *sv, kvs_engine_seq *s, const int32_t *ids, uint32_t n_ids,
                         uint32_t n_kv, uint32_t prefix_len) {
  uint32_t C = sv->chunk_tokens, n = n_kv < n_ids ? n_kv : n_ids;
  uint32_t first = prefix_len / C, last = n / C;
  if (last <= first || last * C >= n_ids) return; /* nothing new, or no token left for NEW */
  kvs_reuse_segment rs[2] = {{.kind = KVS_SEG_PREFIX, .n_tokens = last * C},
                             {.kind = KVS_SEG_NEW, .n_tokens = n_ids - last * C}};
  kvs_reuse_request rq = {.tokens = ids, .n_tokens = n_ids, .segs = rs, .n_segs = 2};
  const kvs_layout *l = &sv->info.layout;
  size_t plane = (size_t)C * l->n_kv_heads * l->head_dim * kvs_dtype_size(l->dtype);
  void *kv = scratch_get(sv, 2 * plane * l->n_layers);
  kvs_err e = kv ? KVS_OK : KVS_ENOMEM;
  for (uint32_t c = first; !e && c < last; c++) {
    if (!store_room(sv)) continue;
    for (uint32_t y = 0; !e && y < l->n_layers; y++) /* canonical (layers, 2, C, heads, dim) */
      e = sv->eng->ops->kv_read(sv->eng, s, y, c * C, C, (char *)kv + 2 * y * plane,
                                (char *)kv + (2 * y + 1) * plane);
    if (!e) e = kvs_reuse_store(sv->ru, &rq, c, kv, 0);
    if (e == KVS_EAGAIN) e = KVS_OK; /* dropped and counted: the next chunk may fit */
  }
  if (e) kvs_log(KVS_LOG_WARN, "serve", "storing the conversation's chunks: %s", kvs_strerror(e));
}

/* Stores the chunks kvs_reuse_run computed that kvstashd lacks (MISS in dec[nch]),
 * cut as it cuts them (the PREFIX chain of chunk_tokens, the tail included,
 * then one chunk per CONTENT segment), after the answer rather than before
 * the first token: KV read from the sequence, a CONTENT chunk re-rotated as if
 * at position 0 (what kvs_reuse stores), then queued. Best effort (a full
 * queue drops, counted by kvs_reuse). */
static void store_computed(server *sv, kvs_engine_seq *s, const kvs_reuse_request *rq,
                           const uint8_t *dec, uint32_t nch, int skip_tail) {
  const kvs_layout *l = &sv->info.layout;
  uint32_t C = sv->chunk_tokens, prefix = 0, big = 0;
  for (uint32_t i = 0; i < rq->n_segs && rq->segs[i].kind == KVS_SEG_PREFIX; i++)
    prefix += rq->segs[i].n_tokens;
  uint32_t n_pre = prefix ? (uint32_t)kvs_chunk_prefix_count(prefix, C, KVS_CHUNK_TAIL) : 0;
  for (uint32_t i = 0; i < rq->n_segs; i++)
    if (rq->segs[i].kind == KVS_SEG_CONTENT && rq->segs[i].n_tokens > big)
      big = rq->segs[i].n_tokens;
  if (big < C) big = C;
  size_t tb = (size_t)l->n_kv_heads * l->head_dim * kvs_dtype_size(l->dtype);
  int dev = sv->info.mem == KVS_ENGINE_MEM_DEVICE;
  void *kv = scratch_get(sv, 2 * tb * big * l->n_layers);
  kvs_err e = kv ? KVS_OK : KVS_ENOMEM;
  uint32_t pos = prefix, si = 0;
  for (uint32_t k = 0; !e && k < nch; k++) {
    uint32_t start, n, content = k >= n_pre;
    if (!content) {
      start = k * C, n = k + 1 < n_pre ? C : prefix - k * C;
    } else { /* the next CONTENT segment */
      while (si < rq->n_segs && rq->segs[si].kind != KVS_SEG_CONTENT)
        si++;
      if (si == rq->n_segs) break;
      start = pos, n = rq->segs[si].n_tokens, pos += n, si++;
    }
    if (dec[k] != KVS_REUSE_MISS) continue; /* loaded, or stored already (RECOMPUTE) */
    /* the PREFIX's last, partial chunk: store_answer stores it whole (the
     * key the next turn looks up), a tail key would only serve this prompt
     * sent again */
    if (!content && skip_tail && k + 1 == n_pre && n < C) continue;
    if (!store_room(sv)) continue;
    size_t plane = tb * n; /* canonical (layers, 2, n, heads, dim) */
    for (uint32_t y = 0; !e && y < l->n_layers; y++)
      e = sv->eng->ops->kv_read(sv->eng, s, y, start, n, (char *)kv + 2 * y * plane,
                                (char *)kv + (2 * y + 1) * plane);
    if (!e && content && start) {
      if (!dev) {
        e = kvs_rope_shift_chunk(l, kv, n, -(int64_t)start);
      } else {
        float table[KVS_MAX_HEAD_DIM];
        e = kvs_rope_shift_table(l, -(int64_t)start, table);
        for (uint32_t y = 0; !e && y < l->n_layers; y++)
          e = kvs_gpu_rope_shift(l, (char *)kv + 2 * y * plane, n,
                                 (size_t)l->n_kv_heads * l->head_dim, table, NULL);
        if (!e) e = kvs_gpu_sync(NULL);
      }
    }
    if (!e) e = kvs_reuse_store(sv->ru, rq, k, kv, 0);
    if (e == KVS_EAGAIN) e = KVS_OK; /* dropped and counted */
  }
  if (e) kvs_log(KVS_LOG_WARN, "serve", "storing the computed chunks: %s", kvs_strerror(e));
}

/* The worker's sequence, empty, for at least cap tokens: kept between
 * requests (a device engine's sequence is cudaMalloc'd, and cudaFree
 * synchronises the whole device: it waited for the stores in flight), grown
 * by 4K-token steps up to --ctx. */
static kvs_err seq_get(server *sv, uint32_t cap, kvs_engine_seq **out) {
  *out = NULL;
  if (sv->seq && sv->seq_cap >= cap) {
    KVS_TRY(sv->eng->ops->seq_truncate(sv->eng, sv->seq, 0));
    *out = sv->seq;
    return KVS_OK;
  }
  if (sv->seq) sv->eng->ops->seq_free(sv->eng, sv->seq);
  sv->seq = NULL, sv->seq_cap = 0;
  uint32_t c = (cap + 4095) / 4096 * 4096;
  if (c > sv->max_ctx) c = sv->max_ctx; /* run_job keeps cap <= max_ctx */
  if (c < cap) c = cap;
  KVS_TRY(sv->eng->ops->seq_create(sv->eng, c, &sv->seq));
  sv->seq_cap = c, *out = sv->seq;
  return KVS_OK;
}

/* Hands the job's end to the loop thread, which then owns (and frees) it. */
static void job_finish(job *j, kvs_err e) {
  pthread_mutex_lock(&j->mu);
  j->err = e;
  if (e && !j->errmsg[0])
    snprintf(j->errmsg, sizeof j->errmsg, "generation failed: %s", kvs_strerror(e));
  j->done = 1;
  /* activated under mu: the loop cannot see done, and free the job, before
   * this call has returned */
  event_active(j->wake, 0, 0);
  pthread_mutex_unlock(&j->mu);
}

/* Generates the answer of one job: full prefill (reuse comes through reuse/),
 * greedy decode, text handed over as whole UTF-8 characters, stop strings
 * checked on the text so far (never streamed past a stop). */
static void run_job(server *sv, job *j) {
  srv_prompt p;
  kvs_err e = srv_prompt_build(sv->tok, &j->req, sv->answers, &p);
  if (e) {
    job_finish(j, e);
    return;
  }
  uint32_t max_new = j->req.max_tokens ? j->req.max_tokens : sv->default_max_tokens;
  if (p.n_tokens + max_new + 1 > sv->max_ctx) {
    snprintf(j->errmsg, sizeof j->errmsg,
             "prompt (%u tokens) + max_tokens (%u) exceed the context (%u)", p.n_tokens, max_new,
             sv->max_ctx);
    srv_prompt_free(&p);
    job_finish(j, KVS_ETOOBIG);
    return;
  }
  j->prompt_tokens = p.n_tokens;
  uint32_t V = sv->info.n_vocab;
  float *host = malloc(V * sizeof *host), *lg = host;
  char *gen = NULL; /* all generated bytes */
  size_t gen_n = 0, gen_cap = 0, sent = 0;
  kvs_engine_seq *s = NULL;
  if (!host) e = KVS_ENOMEM;
  int dev = sv->info.mem == KVS_ENGINE_MEM_DEVICE;
  if (!e && dev) lg = sv->lg_dev;
  uint64_t t0 = kvs_now_ns();
  if (!e) e = seq_get(sv, p.n_tokens + max_new + 1, &s);
  j->st_seq = (kvs_now_ns() - t0) / 1e9;
  int reuse = sv->ru && j->req.reuse;
  kvs_reuse_segment rs[SRV_MAX_DOCS + 2];
  kvs_reuse_request rq = {
      .tokens = p.tokens, .n_tokens = p.n_tokens, .segs = rs, .n_segs = p.n_segs};
  for (uint32_t i = 0; i < p.n_segs; i++)
    rs[i] = (kvs_reuse_segment){.kind = p.segs[i].kind == SRV_SEG_PREFIX    ? KVS_SEG_PREFIX
                                        : p.segs[i].kind == SRV_SEG_CONTENT ? KVS_SEG_CONTENT
                                                                            : KVS_SEG_NEW,
                                .n_tokens = p.segs[i].len};
  uint8_t *dec = NULL; /* per chunk: loaded, or computed here (stored after the answer) */
  uint32_t nch = 0;
  if (!e && reuse) e = kvs_reuse_count_chunks(sv->ru, &rq, &nch);
  if (!e && reuse && !(dec = calloc(nch + 1, 1))) e = KVS_ENOMEM;
  if (!e && reuse) {
    kvs_reuse_result res;
    memset(&res, 0, sizeof res);
    e = kvs_reuse_run(sv->ru, s, &rq, lg, &res, dec, nch);
    j->lookup_s = res.t_lookup_s;
    j->store_s = (kvs_now_ns() - t0) / 1e9 - res.t_total_s; /* its stores, after the logits */
    j->n_chunks = res.n_chunks, j->n_load = res.n_load, j->n_miss = res.n_miss;
    j->n_recompute = res.n_recompute, j->full_prefill = res.full_prefill;
    j->n_forced = res.full_prefill ? 0 : res.blend.n_forced;
    j->st_plan = res.stages.plan_s, j->st_gets = res.stages.gets_s, j->st_run = res.stages.run_s;
    j->st_finish = res.stages.finish_s, j->st_load_wait = res.blend.t_load_wait_s;
    j->st_recompute = res.blend.t_recompute_s, j->st_prefill = res.blend.t_prefill_s;
    /* loaded tokens are reused; of them, blending recomputed some; the rest
     * (missing chunks and the new tail) was prefilled in full */
    j->reused_tokens = res.blend.n_ctx - res.blend.n_forced;
    j->recomputed_tokens = res.blend.n_recomputed > res.blend.n_forced
                               ? res.blend.n_recomputed - res.blend.n_forced
                               : 0;
    j->prefilled_tokens = res.blend.n_forced + res.blend.n_prefilled;
  } else if (!e) {
    uint64_t tp = kvs_now_ns();
    e = sv->eng->ops->prefill(sv->eng, s, p.tokens, p.n_tokens, 0, lg);
    j->prefilled_tokens = p.n_tokens, j->full_prefill = 1;
    j->st_run = j->st_prefill = (kvs_now_ns() - tp) / 1e9;
  }
  uint64_t tl = kvs_now_ns();
  if (!e && dev) e = kvs_gpu_copy_d2h(host, lg, V * sizeof *host, NULL);
  j->ttft_s = (kvs_now_ns() - t0) / 1e9;
  j->st_logits = (kvs_now_ns() - tl) / 1e9;
  if (sv->stage_log && !e)
    fprintf(stderr,
            "kvs-serve stage: reuse=%d tokens=%u reused=%u recomputed=%u prefilled=%u forced=%u "
            "chunks=%u load=%u recompute=%u miss=%u full_prefill=%u queue_ms=%.2f seq_ms=%.2f "
            "lookup_ms=%.2f plan_ms=%.2f gets_ms=%.2f run_ms=%.2f load_wait_ms=%.2f "
            "recompute_ms=%.2f prefill_ms=%.2f finish_ms=%.2f logits_ms=%.2f ttft_ms=%.2f\n",
            reuse, p.n_tokens, j->reused_tokens, j->recomputed_tokens, j->prefilled_tokens,
            j->n_forced, j->n_chunks, j->n_load, j->n_recompute, j->n_miss, j->full_prefill,
            j->queue_s * 1e3, j->st_seq * 1e3, j->lookup_s * 1e3, j->st_plan * 1e3,
            j->st_gets * 1e3, j->st_run * 1e3, j->st_load_wait * 1e3, j->st_recompute * 1e3,
            j->st_prefill * 1e3, j->st_finish * 1e3, j->st_logits * 1e3, j->ttft_s * 1e3);
  int32_t *ids = malloc((size_t)(p.n_tokens + max_new) * sizeof *ids); /* prompt + answer */
  if (!e && !ids) e = KVS_ENOMEM;
  if (!e) memcpy(ids, p.tokens, p.n_tokens * sizeof *ids);
  uint32_t n_ids = p.n_tokens;
  kvs_token end = kvs_tok_find(sv->tok, "<|im_end|>"), eos = kvs_tok_eos(sv->tok);
  j->finish = "length";
  size_t hold = 0;
  int cut = 0; /* a stop string cut the answer: its text is not all its ids */
  for (size_t i = 0; i < j->req.n_stop; i++)
    if (strlen(j->req.stop[i]) > hold) hold = strlen(j->req.stop[i]);
  for (uint32_t i = 0; !e && i < max_new; i++) {
    if (atomic_load(&j->cancelled)) break;
    int32_t t = kvs_argmax(host, V);
    if (t == end || t == eos) {
      j->finish = "stop";
      break;
    }
    j->completion_tokens++;
    ids[n_ids++] = t;
    size_t pl = 0;
    const char *piece = kvs_tok_piece(sv->tok, t, &pl);
    char buf[256];
    size_t bn = 0;
    /* the tokenizer's own decode turns byte-level pieces into text */
    if (kvs_tok_decode(sv->tok, &t, 1, buf, sizeof buf, &bn) == KVS_OK) piece = buf, pl = bn;
    if (gen_n + pl + 1 > gen_cap) {
      size_t c = gen_cap ? gen_cap * 2 : 1024;
      while (c < gen_n + pl + 1)
        c *= 2;
      char *g = realloc(gen, c);
      if (!g) {
        e = KVS_ENOMEM;
        break;
      }
      gen = g, gen_cap = c;
    }
    memcpy(gen + gen_n, piece, pl);
    gen_n += pl;
    gen[gen_n] = 0;
    size_t stop_at = SIZE_MAX;
    for (size_t k = 0; k < j->req.n_stop; k++) {
      const char *f = strstr(gen + (sent > hold ? sent - hold : 0), j->req.stop[k]);
      if (f && (size_t)(f - gen) < stop_at) stop_at = (size_t)(f - gen);
    }
    if (stop_at != SIZE_MAX) {
      if (stop_at > sent) out_text(j, gen + sent, stop_at - sent);
      sent = gen_n;
      j->finish = "stop", cut = 1;
      break;
    }
    /* send whole characters, keeping back what could still start a stop string */
    size_t ready = srv_utf8_complete(gen, gen_n);
    ready = ready > hold ? ready - (hold ? hold - 1 : 0) : 0;
    ready = srv_utf8_complete(gen, ready);
    if (ready > sent) out_text(j, gen + sent, ready - sent), sent = ready;
    if (i + 1 < max_new) {
      e = sv->eng->ops->prefill(sv->eng, s, &t, 1, 0, lg);
      if (!e && dev) e = kvs_gpu_copy_d2h(host, lg, V * sizeof *host, NULL);
    }
  }
  if (!e && gen_n > sent) out_text(j, gen + sent, gen_n - sent);
  /* the next turn sends this answer back as text: it gets these ids */
  if (!e && !cut && !atomic_load(&j->cancelled) && n_ids > p.n_tokens)
    (void)srv_answers_put(sv->answers, gen ? gen : "", gen_n, ids + p.n_tokens,
                          n_ids - p.n_tokens); /* best effort */
  /* a conversation's next turn starts with this prompt and this answer: store
   * the prefix chain's whole chunks that the answer completed (the prompt's
   * own by store_computed), off the critical path: after the
   * client has its answer. Not with documents: the next turn's history does
   * not carry them. */
  int store = !e && reuse && j->req.chat && !j->req.n_docs && s;
  uint32_t prefix_len = p.segs[0].kind == SRV_SEG_PREFIX ? p.segs[0].len : 0;
  job_finish(j, e); /* j is the loop's from here on */
  uint64_t ts = kvs_now_ns();
  /* store_answer stores the chunk in which the PREFIX ends whole when the
   * sequence runs past that chunk with a token left for a next turn */
  uint32_t C = sv->chunk_tokens, n_kv = s ? sv->eng->ops->seq_len(sv->eng, s) : 0;
  uint32_t n_end = n_kv < n_ids ? n_kv : n_ids;
  int whole = store && n_end / C > prefix_len / C && (n_end / C) * C < n_ids;
  if (!e && dec) store_computed(sv, s, &rq, dec, nch, whole);
  free(dec);
  if (store) store_answer(sv, s, ids, n_ids, n_kv, prefix_len);
  if (reuse) {
    pthread_mutex_lock(&sv->qmu);
    sv->store_after_s += (kvs_now_ns() - ts) / 1e9;
    pthread_mutex_unlock(&sv->qmu);
  }
  free(ids);
  free(host);
  free(gen);
  srv_prompt_free(&p);
}

static void *worker_main(void *arg) {
  server *sv = arg;
  for (;;) {
    pthread_mutex_lock(&sv->qmu);
    while (!sv->head && !sv->stopping)
      pthread_cond_wait(&sv->qcv, &sv->qmu);
    job *j = sv->head;
    if (!j) {
      pthread_mutex_unlock(&sv->qmu);
      return NULL;
    }
    sv->head = j->next;
    if (!sv->head) sv->tail = NULL;
    sv->queued--, sv->working = 1;
    pthread_mutex_unlock(&sv->qmu);
    uint64_t t0 = kvs_now_ns();
    j->queue_s = (t0 - j->t_enq) / 1e9;
    if (atomic_load(&j->cancelled))
      job_finish(j, KVS_ECANCELED);
    else
      run_job(sv, j); /* finishes the job (then the loop's), maybe stores after */
    pthread_mutex_lock(&sv->qmu);
    sv->busy_s += (kvs_now_ns() - t0) / 1e9, sv->working = 0;
    pthread_mutex_unlock(&sv->qmu);
  }
}

/* ------------------------------------------------------------ HTTP in */
static void on_close(struct evhttp_connection *c, void *arg) {
  job *j = arg;
  (void)c;
  atomic_store(&j->cancelled, 1);
  j->http = NULL; /* libevent frees the request with the connection */
}

static void handle_completion(struct evhttp_request *r, server *sv, int chat) {
  if (evhttp_request_get_command(r) != EVHTTP_REQ_POST) {
    send_error(r, 405, "invalid_request_error", "use POST");
    return;
  }
  struct evbuffer *in = evhttp_request_get_input_buffer(r);
  size_t len = evbuffer_get_length(in);
  const char *body = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
  job *j = calloc(1, sizeof *j);
  if (!j) {
    send_error(r, 500, "server_error", "out of memory");
    return;
  }
  char err[256];
  kvs_err e = srv_req_parse(body ? body : "", len, chat, &j->req, err, sizeof err);
  if (e) {
    send_error(r, e == KVS_ENOMEM ? 500 : 400, "invalid_request_error",
               err[0] ? err : kvs_strerror(e));
    srv_req_free(&j->req);
    free(j);
    return;
  }
  pthread_mutex_init(&j->mu, NULL);
  j->sv = sv, j->http = r, j->conn = evhttp_request_get_connection(r);
  j->created = (int64_t)time(NULL);
  j->t_enq = kvs_now_ns();
  static uint64_t seq;
  snprintf(j->id, sizeof j->id, "%s-%" PRIx64 "%06" PRIu64, chat ? "chatcmpl" : "cmpl",
           (uint64_t)j->created, ++seq);
  j->wake = event_new(sv->base, -1, 0, job_wake, j);
  pthread_mutex_lock(&sv->qmu);
  int full = sv->queued >= sv->max_queue || !j->wake;
  if (!full) {
    if (sv->tail)
      sv->tail->next = j;
    else
      sv->head = j;
    sv->tail = j, sv->queued++, sv->n_requests++;
    pthread_cond_signal(&sv->qcv);
  } else {
    sv->n_rejected++;
  }
  pthread_mutex_unlock(&sv->qmu);
  if (full) {
    send_error(r, 503, "server_busy", "the request queue is full; retry later");
    job_free(j);
    return;
  }
  evhttp_connection_set_closecb(j->conn, on_close, j);
}

static void handle(struct evhttp_request *r, void *arg) {
  server *sv = arg;
  const char *uri = evhttp_request_get_uri(r);
  struct evhttp_uri *u = evhttp_uri_parse(uri);
  const char *path = u ? evhttp_uri_get_path(u) : NULL;
  if (!path) {
    send_error(r, 400, "invalid_request_error", "bad URI");
  } else if (!strcmp(path, "/v1/chat/completions")) {
    handle_completion(r, sv, 1);
  } else if (!strcmp(path, "/v1/completions")) {
    handle_completion(r, sv, 0);
  } else if (!strcmp(path, "/v1/models")) {
    cJSON *o = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(o, "data"),
          *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "id", sv->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "kvstash");
    cJSON_AddItemToArray(d, m);
    send_json(r, 200, "OK", o);
    cJSON_Delete(o);
  } else if (!strcmp(path, "/health")) {
    cJSON *o = cJSON_CreateObject();
    pthread_mutex_lock(&sv->qmu);
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON_AddNumberToObject(o, "queued", sv->queued);
    cJSON_AddNumberToObject(o, "requests", (double)sv->n_requests);
    cJSON_AddNumberToObject(o, "rejected", (double)sv->n_rejected);
    cJSON_AddNumberToObject(o, "busy_s", sv->busy_s);
    cJSON_AddNumberToObject(o, "working", sv->working);
    pthread_mutex_unlock(&sv->qmu);
    kvs_reuse_counters rc;
    if (sv->ru && kvs_reuse_get_counters(sv->ru, &rc) == KVS_OK) {
      cJSON *k = cJSON_AddObjectToObject(o, "reuse");
      cJSON_AddNumberToObject(k, "requests", (double)rc.requests);
      cJSON_AddNumberToObject(k, "chunks", (double)rc.chunks);
      cJSON_AddNumberToObject(k, "loads", (double)rc.loads);
      cJSON_AddNumberToObject(k, "recomputes", (double)rc.recomputes);
      cJSON_AddNumberToObject(k, "misses", (double)rc.misses);
      cJSON_AddNumberToObject(k, "hits_ram", (double)rc.hits_by_tier[0]);
      cJSON_AddNumberToObject(k, "hits_disk", (double)(rc.hits_by_tier[1] + rc.hits_by_tier[2]));
      cJSON_AddNumberToObject(k, "retries", (double)rc.retries);
      cJSON_AddNumberToObject(k, "stores_queued", (double)rc.stores_queued);
      cJSON_AddNumberToObject(k, "stores_done", (double)rc.stores_done);
      cJSON_AddNumberToObject(k, "stores_failed", (double)rc.stores_failed);
      cJSON_AddNumberToObject(k, "stores_dropped", (double)rc.stores_dropped);
      pthread_mutex_lock(&sv->qmu);
      cJSON_AddNumberToObject(k, "stores_skipped", (double)sv->stores_skipped);
      cJSON_AddNumberToObject(k, "store_after_s", sv->store_after_s);
      cJSON_AddNumberToObject(k, "store_drain_per_s", sv->drain_per_s);
      pthread_mutex_unlock(&sv->qmu);
      cJSON_AddNumberToObject(k, "store_copy_s", rc.store_copy_s);
      cJSON_AddNumberToObject(k, "store_encode_s", rc.store_encode_s);
      cJSON_AddNumberToObject(k, "store_ack_s", rc.store_ack_s);
      cJSON_AddNumberToObject(k, "full_prefills", (double)rc.full_prefills);
      cJSON_AddNumberToObject(k, "explores", (double)rc.explores);
      cJSON_AddNumberToObject(k, "get_pool_hits", (double)rc.get_pool_hits);
      cJSON_AddNumberToObject(k, "recompute_us_per_token", rc.recompute_s_per_token * 1e6);
      cJSON_AddNumberToObject(k, "full_us_per_token", rc.full_s_per_token * 1e6);
      cJSON_AddNumberToObject(k, "ram_latency_ms", rc.latency_s[0] * 1e3);
      cJSON_AddNumberToObject(k, "ram_gbps", rc.bytes_per_s[0] / 1e9);
      cJSON_AddNumberToObject(k, "prefill_us_per_token", rc.prefill_s_per_token * 1e6);
    }
    send_json(r, 200, "OK", o);
    cJSON_Delete(o);
  } else {
    send_error(r, 404, "invalid_request_error", "no such endpoint");
  }
  if (u) evhttp_uri_free(u);
}

static void on_signal(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  event_base_loopexit(arg, NULL);
}

static void usage(FILE *f) {
  fprintf(f, "usage: kvs-serve --model GGUF [options]\n"
             "  --listen HOST:PORT    where to listen (default 127.0.0.1:8000)\n"
             "  --model-name NAME     the id /v1/models reports (default: the file's name)\n"
             "  --gpu                 run the CUDA engine (needs a device)\n"
             "  --random-8b           Llama-3-8B-shaped seeded random weights on the GPU (speed\n"
             "                        runs; implies --gpu); --model then gives the tokenizer\n"
             "  --kvstash URL         reuse KV through this kvstashd (tenant and token from\n"
             "                        KVS_TENANT / KVS_TOKEN); without it nothing is reused\n"
             "  --strategy NAME       blend strategy for documents: none, cacheblend, epic,\n"
             "                        adaptive (default), full; NAME:P sets epic's tokens per\n"
             "                        chunk start or the ratio of the others\n"
             "  --profile NAME        codec profile of stored KV (default dense)\n"
             "  --policy NAME         auto (default: load or recompute from measured figures),\n"
             "                        load, recompute\n"
             "  --chunk-tokens N      chunk size of a conversation's prefix chain (default 256;\n"
             "                        smaller: less of the last chunk recomputed, more gets)\n"
             "  --ctx N               context tokens per request (default 8192)\n"
             "  --max-tokens N        default max_tokens (default 256)\n"
             "  --queue N             requests waiting at most (default 64; more get 503)\n"
             "  --store-queue N       stores of computed KV waiting at most (default 64; more\n"
             "                        are dropped, counted in /health)\n"
             "  --store-backlog S     copy a store out only while the queue holds less than\n"
             "                        the tier absorbs in S seconds (measured; default 2);\n"
             "                        the others are skipped before any copy (stores_skipped)\n"
             "  --stage-log           one line per request on stderr: the TTFT path by stage\n"
             "  --version             print the version\n");
}

int main(int argc, char **argv) {
  const char *model_path = NULL, *listen = "127.0.0.1:8000", *name = NULL, *kvs_url = NULL;
  const char *strategy = "adaptive", *profile = "dense", *policy = "auto";
  int use_gpu = 0, random8b = 0;
  uint32_t store_queue = 64; /* a RAG request may compute 10+ chunks at once */
  server sv = {.max_ctx = 8192, .default_max_tokens = 256, .max_queue = 64, .store_backlog_s = 2};
  static struct option lo[] = {{"model", 1, 0, 'm'},
                               {"listen", 1, 0, 'l'},
                               {"model-name", 1, 0, 'n'},
                               {"gpu", 0, 0, 'g'},
                               {"ctx", 1, 0, 'c'},
                               {"max-tokens", 1, 0, 't'},
                               {"queue", 1, 0, 'q'},
                               {"version", 0, 0, 'V'},
                               {"help", 0, 0, 'h'},
                               {"kvstash", 1, 0, 'K'},
                               {"strategy", 1, 0, 's'},
                               {"profile", 1, 0, 'p'},
                               {"policy", 1, 0, 'P'},
                               {"random-8b", 0, 0, 'R'},
                               {"chunk-tokens", 1, 0, 'C'},
                               {"store-queue", 1, 0, 'Q'},
                               {"store-backlog", 1, 0, 'B'},
                               {"stage-log", 0, 0, 'G'},
                               {0, 0, 0, 0}};
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    char *end = NULL;
    switch (c) {
    case 'm': model_path = optarg; break;
    case 'l': listen = optarg; break;
    case 'n': name = optarg; break;
    case 'g': use_gpu = 1; break;
    case 'c': sv.max_ctx = (uint32_t)strtoul(optarg, &end, 10); break;
    case 't': sv.default_max_tokens = (uint32_t)strtoul(optarg, &end, 10); break;
    case 'q': sv.max_queue = (uint32_t)strtoul(optarg, &end, 10); break;
    case 'C': sv.chunk_tokens = (uint32_t)strtoul(optarg, &end, 10); break;
    case 'Q': store_queue = (uint32_t)strtoul(optarg, &end, 10); break;
    case 'B': sv.store_backlog_s = strtod(optarg, &end); break;
    case 'G': sv.stage_log = 1; break;
    case 'K': kvs_url = optarg; break;
    case 'R': random8b = use_gpu = 1; break;
    case 's': strategy = optarg; break;
    case 'p': profile = optarg; break;
    case 'P': policy = optarg; break;
    case 'V': printf("kvs-serve %s\n", KVS_SERVE_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
    if (end && *end) {
      fprintf(stderr, "kvs-serve: --%s wants a number, not '%s'\n", lo[0].name, optarg);
      return 2;
    }
  }
  if (!model_path) {
    usage(stderr);
    return 2;
  }
  if (sv.max_ctx < 16 || sv.default_max_tokens < 1 || sv.default_max_tokens > SRV_MAX_TOKENS_OUT ||
      (sv.chunk_tokens && (sv.chunk_tokens < 16 || sv.chunk_tokens > 4096))) {
    fprintf(stderr,
            "kvs-serve: --ctx must be >= 16, --max-tokens in 1..%d, --chunk-tokens in 16..4096\n",
            SRV_MAX_TOKENS_OUT);
    return 2;
  }
  char host[256];
  int port = 0;
  if (kvs_hostport_split(listen, host, sizeof host, &port) != KVS_OK) {
    fprintf(stderr, "kvs-serve: --listen wants HOST:PORT with a port in 1..65535, not '%s'\n",
            listen);
    return 2;
  }

  kvs_err e;
  if (random8b) { /* the tokenizer from the file, the weights random (vocab to match) */
    e = kvs_gguf_open(model_path, &sv.tok_gguf);
    if (!e) e = kvs_tok_create(sv.tok_gguf, &sv.own_tok);
    kvs_model_cfg cfg;
    kvs_model_cfg_llama3_8b(&cfg);
    cfg.n_vocab = sv.own_tok ? kvs_tok_n_vocab(sv.own_tok) : 0;
    if (!e) e = kvs_model_create_random(&cfg, 8, 0, &sv.model);
    sv.tok = sv.own_tok;
  } else {
    e = kvs_model_load(model_path, &sv.model);
    if (sv.model) sv.tok = kvs_model_tok(sv.model);
  }
  if (e) {
    fprintf(stderr, "kvs-serve: model %s: %s\n", model_path, kvs_strerror(e));
    return 1;
  }
  if (use_gpu) {
    kvs__model_weights w;
    kvs__model_weights_get(sv.model, &w);
    e = kvs_gpu_model_create(&w, sv.max_ctx, &sv.gm);
    if (!e) e = kvs_gpu_model_engine(sv.gm, kvs_model_get_id(sv.model), &sv.eng);
  } else {
    e = kvs_model_engine(sv.model, &sv.eng);
  }
  if (!e) e = sv.eng->ops->info(sv.eng, &sv.info);
  if (e || !sv.tok) {
    fprintf(stderr, "kvs-serve: engine: %s\n", e ? kvs_strerror(e) : "the model has no tokenizer");
    return 1;
  }
  char sname[32]; /* NAME[:P]: P is epic's tokens per chunk start, else the ratio */
  snprintf(sname, sizeof sname, "%s", strategy);
  char *scolon = strchr(sname, ':');
  if (scolon) *scolon++ = 0;
  int strat = kvs_sel_parse(sname), prof = kvs_profile_from_name(profile);
  int pol = !strcmp(policy, "auto")        ? KVS_REUSE_PLAN_AUTO
            : !strcmp(policy, "load")      ? KVS_REUSE_PLAN_ALWAYS_LOAD
            : !strcmp(policy, "recompute") ? KVS_REUSE_PLAN_ALWAYS_RECOMPUTE
                                           : -1;
  if (strat < 0 || prof < 0 || pol < 0) {
    fprintf(stderr, "kvs-serve: unknown --strategy '%s', --profile '%s' or --policy '%s'\n",
            strategy, profile, policy);
    return 2;
  }
  if (kvs_url) {
    kvs_client_opts co;
    kvs_client_opts_init(&co);
    co.url = kvs_url, co.tenant = getenv("KVS_TENANT"), co.token = getenv("KVS_TOKEN");
    kvs_reuse_opts ro;
    kvs_reuse_opts_init(&ro);
    ro.blend.sel = kvs_sel_defaults((uint32_t)strat);
    if (scolon && strat == KVS_SEL_EPIC) ro.blend.sel.epic_first = (uint32_t)atoi(scolon);
    if (scolon && strat != KVS_SEL_EPIC) ro.blend.sel.ratio = (float)atof(scolon);
    /* ro.store off: kvs_reuse_run would store what it computed before it
     * returns, i.e. before the first token; run_job stores after the answer */
    ro.policy = (uint32_t)pol, ro.store = 0, ro.store_profile = (uint32_t)prof;
    ro.prefix_chunk_tokens = sv.chunk_tokens, ro.store_queue = store_queue ? store_queue : 1;
    sv.store_queue = ro.store_queue;
    e = kvs_client_create(&co, &sv.cl);
    if (!e) e = kvs_reuse_create(sv.cl, sv.eng, &ro, &sv.ru);
    if (e) {
      fprintf(stderr, "kvs-serve: kvstash at %s: %s (%s)\n", kvs_url, kvs_strerror(e),
              sv.cl ? kvs_client_errmsg(sv.cl) : "");
      return 1;
    }
    sv.chunk_tokens = ro.prefix_chunk_tokens ? ro.prefix_chunk_tokens : KVS_DEFAULT_CHUNK_TOKENS;
  }
  if (srv_answers_create(4096, 64u << 20, &sv.answers) != KVS_OK) return 1;
  if (sv.info.mem == KVS_ENGINE_MEM_DEVICE &&
      kvs_gpu_alloc((void **)&sv.lg_dev, sv.info.n_vocab * sizeof *sv.lg_dev) != KVS_OK) {
    fprintf(stderr, "kvs-serve: no device memory for the logits\n");
    return 1;
  }
  const char *base = strrchr(model_path, '/');
  snprintf(sv.model_name, sizeof sv.model_name, "%s", name ? name : base ? base + 1 : model_path);

  evthread_use_pthreads();
  sv.base = event_base_new();
  sv.http = evhttp_new(sv.base);
  if (!sv.base || !sv.http) return 1;
  evhttp_set_max_body_size(sv.http, SRV_MAX_BODY);
  evhttp_set_max_headers_size(sv.http, 64 << 10);
  evhttp_set_timeout(sv.http, 600);
  evhttp_set_allowed_methods(sv.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
  evhttp_set_gencb(sv.http, handle, &sv);
  if (evhttp_bind_socket(sv.http, host, (uint16_t)port) != 0) {
    fprintf(stderr, "kvs-serve: cannot listen on %s: %s\n", listen, strerror(errno));
    return 1;
  }
  pthread_mutex_init(&sv.qmu, NULL);
  pthread_cond_init(&sv.qcv, NULL);
  if (pthread_create(&sv.worker, NULL, worker_main, &sv) != 0) return 1;
  signal(SIGPIPE, SIG_IGN);
  struct event *si = evsignal_new(sv.base, SIGINT, on_signal, sv.base);
  struct event *st = evsignal_new(sv.base, SIGTERM, on_signal, sv.base);
  event_add(si, NULL);
  event_add(st, NULL);
  fprintf(stderr, "kvs-serve: %s (%s, %u layers) on http://%s, reuse %s%s\n", sv.model_name,
          sv.info.name, sv.info.layout.n_layers, listen, kvs_url ? "through " : "off",
          kvs_url ? kvs_url : "");
  event_base_dispatch(sv.base);

  pthread_mutex_lock(&sv.qmu);
  sv.stopping = 1;
  for (job *j = sv.head; j; j = j->next)
    atomic_store(&j->cancelled, 1);
  pthread_cond_signal(&sv.qcv);
  pthread_mutex_unlock(&sv.qmu);
  pthread_join(sv.worker, NULL);
  event_free(si);
  event_free(st);
  evhttp_free(sv.http);
  event_base_free(sv.base);
  kvs_reuse_free(sv.ru); /* waits for queued stores */
  if (sv.seq) sv.eng->ops->seq_free(sv.eng, sv.seq);
  kvs_client_free(sv.cl);
  if (sv.info.mem == KVS_ENGINE_MEM_DEVICE) {
    kvs_gpu_free(sv.scratch);
    kvs_gpu_free(sv.lg_dev);
  } else {
    free(sv.scratch);
  }
  kvs_engine_free(sv.eng);
  kvs_gpu_model_free(sv.gm);
  kvs_model_free(sv.model);
  kvs_tok_free(sv.own_tok);
  srv_answers_free(sv.answers);
  kvs_gguf_free(sv.tok_gguf);
  fprintf(stderr, "kvs-serve: stopped\n");
  return 0;
}
