/* store.c - kvs_reuse's stores: a bounded queue and one worker thread that
 * puts; a full queue drops (counted), a request never waits for a store.
 *
 * The worker keeps up to store_inflight puts in flight (kvs_put_start
 * encodes on the worker, then the request goes out while the next chunk
 * encodes). Device staging buffers come from a pool kept for the life of
 * the kvs_reuse: cudaMalloc is slow and cudaFree synchronizes the whole
 * device (it would stall the requests running beside the store). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvs_gpu.h"
#include "kvs_gpu_blend.h"
#include "reuse_int.h"

#define STORE_INFLIGHT_MAX 64u

struct kvs__store_item {
  kvs__store_item *next;
  kvs_chunk ch;     /* start = 0: tokens holds the chunk's own tokens */
  int32_t *tokens;  /* [ch.n_tokens] */
  void *kv;         /* canonical layout, engine memory */
  size_t kv_cap;    /* bytes of kv (a pooled device buffer may be larger) */
  int dev;          /* kv is device memory (from the pool) */
  int waiter, done; /* kvs_reuse_store(wait = 1) */
  kvs_err result;
};

/* ---- device buffer pool (under qmu) */
static void *pool_take(kvs_reuse *r, size_t bytes, size_t *cap) {
  pthread_mutex_lock(&r->qmu);
  uint32_t best = r->n_pool;
  for (uint32_t i = 0; i < r->n_pool; i++)
    if (r->pool[i].bytes >= bytes && (best == r->n_pool || r->pool[i].bytes < r->pool[best].bytes))
      best = i;
  void *p = NULL;
  if (best < r->n_pool) {
    p = r->pool[best].p, *cap = r->pool[best].bytes;
    r->pool[best] = r->pool[--r->n_pool];
    r->st_pool_hits++;
  }
  pthread_mutex_unlock(&r->qmu);
  return p;
}

static void pool_give(kvs_reuse *r, void *p, size_t cap) {
  if (!p) return;
  pthread_mutex_lock(&r->qmu);
  int kept = r->n_pool < r->pool_cap;
  if (kept) r->pool[r->n_pool].p = p, r->pool[r->n_pool++].bytes = cap;
  pthread_mutex_unlock(&r->qmu);
  if (!kept) kvs_gpu_free(p); /* more than the queue can hold at once */
}

static void item_free(kvs_reuse *r, kvs__store_item *it) {
  if (!it) return;
  if (it->dev)
    pool_give(r, it->kv, it->kv_cap);
  else
    free(it->kv);
  free(it->tokens);
  free(it);
}

/* The KV buffer is no longer needed once kvs_put_start returned: the put
 * holds the encoded bytes. */
static void item_release_kv(kvs_reuse *r, kvs__store_item *it) {
  if (it->dev)
    pool_give(r, it->kv, it->kv_cap);
  else
    free(it->kv);
  it->kv = NULL;
}

/* under qmu: a put finished (or failed to start) */
static void item_finish_locked(kvs_reuse *r, kvs__store_item *it, kvs_err e) {
  if (e)
    r->st_failed++;
  else
    r->st_done++, r->st_bytes += kvs_layout_token_bytes(&r->info.layout) * it->ch.n_tokens;
  r->n_active--;
  if (it->waiter) {
    it->result = e, it->done = 1;
  } else {
    pthread_mutex_unlock(&r->qmu);
    item_free(r, it);
    pthread_mutex_lock(&r->qmu);
  }
  pthread_cond_broadcast(&r->qidle);
}

typedef struct inflight {
  kvs__store_item *it;
  kvs_op *op;
  uint64_t t_sent;
} inflight;

/* Waits for the put in flight f and finishes its item (qmu held on entry
 * and exit, released while waiting). */
static void reap_locked(kvs_reuse *r, inflight *f) {
  pthread_mutex_unlock(&r->qmu);
  kvs_err e = kvs_op_wait(f->op);
  uint64_t t = kvs_now_ns();
  if (e)
    KVS_LOGW("reuse", "store failed", "err=%s detail=\"%s\"", kvs_strerror(e),
             kvs_client_errmsg(r->c));
  kvs_op_free(f->op);
  pthread_mutex_lock(&r->qmu);
  r->st_ack_ns += t - f->t_sent;
  item_finish_locked(r, f->it, e);
}

static void *worker(void *arg) {
  kvs_reuse *r = arg;
  uint32_t W = r->o.store_inflight, nf = 0;
  inflight fl[STORE_INFLIGHT_MAX];
  pthread_mutex_lock(&r->qmu);
  for (;;) {
    while (nf && kvs_op_done(fl[0].op)) { /* answered puts, in order, without waiting */
      inflight f = fl[0];
      memmove(fl, fl + 1, --nf * sizeof *fl);
      reap_locked(r, &f);
    }
    if (!r->head || nf >= W) {
      if (!r->head && !nf) {
        if (r->stop) break; /* stopping, drained */
        pthread_cond_wait(&r->qcv, &r->qmu);
      } else if (nf >= W) { /* window full: wait for the oldest */
        inflight f = fl[0];
        memmove(fl, fl + 1, --nf * sizeof *fl);
        reap_locked(r, &f);
      } else { /* puts in flight, nothing queued: a new store or an answer */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&r->qcv, &r->qmu, &ts);
      }
      continue;
    }
    kvs__store_item *it = r->head;
    r->head = it->next;
    if (!r->head) r->tail = NULL;
    r->n_q--;
    pthread_mutex_unlock(&r->qmu);
    kvs_put_opts po = {.profile = r->o.store_profile,
                       .layers_per_group = r->o.layers_per_group,
                       .flags = it->dev ? KVS_PUT_DEVICE : 0};
    kvs_op *op = NULL;
    uint64_t t0 = kvs_now_ns();
    kvs_err e = kvs_put_start(r->c, &r->info.model_id, it->tokens, &it->ch, &r->info.layout, it->kv,
                              &po, &op);
    uint64_t t1 = kvs_now_ns();
    if (e)
      KVS_LOGW("reuse", "store failed", "err=%s detail=\"%s\"", kvs_strerror(e),
               kvs_client_errmsg(r->c));
    item_release_kv(r, it);
    pthread_mutex_lock(&r->qmu);
    r->st_encode_ns += t1 - t0;
    if (e)
      item_finish_locked(r, it, e);
    else
      fl[nf++] = (inflight){it, op, t1};
  }
  pthread_mutex_unlock(&r->qmu);
  return NULL;
}

kvs_err kvs__store_start(kvs_reuse *r) {
  if (!r->o.store_inflight) r->o.store_inflight = 4;
  if (r->o.store_inflight > STORE_INFLIGHT_MAX) r->o.store_inflight = STORE_INFLIGHT_MAX;
  r->pool_cap = r->o.store_queue + r->o.store_inflight;
  r->pool = calloc(r->pool_cap, sizeof *r->pool);
  if (!r->pool) return KVS_ENOMEM;
  pthread_mutex_init(&r->qmu, NULL);
  pthread_cond_init(&r->qcv, NULL);
  pthread_cond_init(&r->qidle, NULL);
  if (pthread_create(&r->worker, NULL, worker, r) != 0) {
    pthread_cond_destroy(&r->qidle);
    pthread_cond_destroy(&r->qcv);
    pthread_mutex_destroy(&r->qmu);
    free(r->pool);
    r->pool = NULL;
    return KVS_ENOMEM;
  }
  r->worker_on = 1;
  return KVS_OK;
}

void kvs__store_stop(kvs_reuse *r) {
  if (!r->worker_on) return;
  pthread_mutex_lock(&r->qmu);
  r->stop = 1;
  pthread_cond_broadcast(&r->qcv);
  pthread_mutex_unlock(&r->qmu);
  pthread_join(r->worker, NULL);
  r->worker_on = 0;
  for (uint32_t i = 0; i < r->n_pool; i++)
    kvs_gpu_free(r->pool[i].p);
  free(r->pool);
  r->pool = NULL, r->n_pool = 0;
  pthread_cond_destroy(&r->qidle);
  pthread_cond_destroy(&r->qcv);
  pthread_mutex_destroy(&r->qmu);
}

/* Queues it (owned from here on). wait: blocks until stored, returns the
 * put's result. Else KVS_EAGAIN (it freed) when the queue is full. */
static kvs_err enqueue(kvs_reuse *r, kvs__store_item *it, int wait, uint64_t copy_ns) {
  pthread_mutex_lock(&r->qmu);
  r->st_copy_ns += copy_ns;
  if (!wait && r->n_q >= r->o.store_queue) {
    r->st_dropped++;
    pthread_mutex_unlock(&r->qmu);
    item_free(r, it);
    return KVS_EAGAIN;
  }
  it->waiter = wait;
  if (r->tail)
    r->tail->next = it;
  else
    r->head = it;
  r->tail = it;
  r->n_q++, r->n_active++, r->st_queued++;
  pthread_cond_signal(&r->qcv);
  kvs_err e = KVS_OK;
  if (wait) {
    while (!it->done)
      pthread_cond_wait(&r->qidle, &r->qmu);
    e = it->result;
  }
  pthread_mutex_unlock(&r->qmu);
  if (wait) item_free(r, it);
  return e;
}

static int queue_full(kvs_reuse *r) {
  pthread_mutex_lock(&r->qmu);
  int full = r->n_q >= r->o.store_queue;
  if (full) r->st_dropped++;
  pthread_mutex_unlock(&r->qmu);
  return full;
}

static kvs_err item_new(kvs_reuse *r, const kvs_reuse_request *req, const kvs__rchunk *c,
                        kvs__store_item **out) {
  kvs__store_item *it = calloc(1, sizeof *it);
  if (!it) return KVS_ENOMEM;
  it->ch = c->ch;
  it->ch.start = 0;
  it->dev = r->dev;
  it->kv_cap = 0;
  it->tokens = malloc((size_t)c->ch.n_tokens * sizeof *it->tokens);
  size_t bytes = kvs_layout_token_bytes(&r->info.layout) * c->ch.n_tokens;
  kvs_err e = it->tokens ? KVS_OK : KVS_ENOMEM;
  if (!e)
    memcpy(it->tokens, req->tokens + c->ch.start, (size_t)c->ch.n_tokens * sizeof *it->tokens);
  if (!e && r->dev) {
    it->kv = pool_take(r, bytes, &it->kv_cap);
    if (!it->kv) e = kvs_gpu_alloc(&it->kv, bytes), it->kv_cap = bytes;
  } else if (!e) {
    e = (it->kv = malloc(bytes)) ? KVS_OK : KVS_ENOMEM;
  }
  if (e) {
    item_free(r, it);
    return e;
  }
  *out = it;
  return KVS_OK;
}

kvs_err kvs__store_from_seq(kvs_reuse *r, kvs_engine_seq *s, const kvs_reuse_request *req,
                            const kvs__rchunk *c) {
  if (queue_full(r)) return KVS_EAGAIN; /* before copying anything */
  uint64_t t0 = kvs_now_ns();
  kvs__store_item *it;
  KVS_TRY(item_new(r, req, c, &it));
  const kvs_layout *l = &r->info.layout;
  size_t plane = (size_t)kvs_layout_plane_elems(l, c->ch.n_tokens) * kvs_dtype_size(l->dtype);
  kvs_err e = KVS_OK;
  for (uint32_t y = 0; !e && y < l->n_layers; y++)
    e = r->e->ops->kv_read(r->e, s, y, c->ch.start, c->ch.n_tokens, (char *)it->kv + 2 * y * plane,
                           (char *)it->kv + (2 * y + 1) * plane);
  /* a content chunk is stored as if at position 0 */
  if (!e && c->kind == KVS_SEG_CONTENT && c->ch.start) {
    if (!r->dev) {
      e = kvs_rope_shift_chunk(l, it->kv, c->ch.n_tokens, -(int64_t)c->ch.start);
    } else {
      float table[KVS_MAX_HEAD_DIM];
      e = kvs_rope_shift_table(l, -(int64_t)c->ch.start, table);
      size_t W = (size_t)l->n_kv_heads * l->head_dim;
      for (uint32_t y = 0; !e && y < l->n_layers; y++)
        e = kvs_gpu_rope_shift(l, (char *)it->kv + 2 * y * plane, c->ch.n_tokens, W, table,
                               r->stream);
      if (!e) e = kvs_gpu_sync(r->stream);
    }
  }
  if (e) {
    item_free(r, it);
    return e;
  }
  return enqueue(r, it, 0, kvs_now_ns() - t0);
}

kvs_err kvs_reuse_store(kvs_reuse *r, const kvs_reuse_request *req, uint32_t chunk, const void *kv,
                        int wait) {
  if (!r || !req || !kv) return KVS_EINVAL;
  kvs__rchunk *ch;
  uint32_t nch;
  KVS_TRY(kvs__cut(req, &r->info.model_id, r->o.prefix_chunk_tokens, &ch, &nch, NULL));
  kvs_err e = chunk < nch ? KVS_OK : KVS_ERANGE;
  if (!e && !wait && queue_full(r)) e = KVS_EAGAIN;
  uint64_t t0 = kvs_now_ns();
  kvs__store_item *it = NULL;
  if (!e) e = item_new(r, req, &ch[chunk], &it);
  size_t bytes = kvs_layout_token_bytes(&r->info.layout) * (e ? 0 : ch[chunk].ch.n_tokens);
  free(ch);
  if (!e && r->dev) {
    e = kvs_gpu_copy_d2d(it->kv, kv, bytes, r->stream);
    if (!e) e = kvs_gpu_sync(r->stream);
  } else if (!e) {
    memcpy(it->kv, kv, bytes);
  }
  if (e) {
    item_free(r, it);
    return e;
  }
  return enqueue(r, it, wait, kvs_now_ns() - t0);
}

kvs_err kvs_reuse_flush(kvs_reuse *r) {
  if (!r) return KVS_EINVAL;
  pthread_mutex_lock(&r->qmu);
  while (r->n_active)
    pthread_cond_wait(&r->qidle, &r->qmu);
  pthread_mutex_unlock(&r->qmu);
  return KVS_OK;
}

void kvs__store_counters(kvs_reuse *r, kvs_reuse_counters *out) {
  pthread_mutex_lock(&r->qmu);
  out->stores_queued = r->st_queued, out->stores_done = r->st_done;
  out->stores_failed = r->st_failed, out->stores_dropped = r->st_dropped;
  out->store_bytes = r->st_bytes;
  out->store_copy_s = r->st_copy_ns / 1e9, out->store_encode_s = r->st_encode_ns / 1e9;
  out->store_ack_s = r->st_ack_ns / 1e9, out->store_pool_hits = r->st_pool_hits;
  pthread_mutex_unlock(&r->qmu);
}
