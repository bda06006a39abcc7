/* store.c - kvs_reuse's stores: a bounded queue and one worker thread that
 * puts; a full queue drops (counted), a request never waits for a store. */
#include <stdlib.h>
#include <string.h>

#include "kvs_gpu.h"
#include "kvs_gpu_blend.h"
#include "reuse_int.h"

struct kvs__store_item {
  kvs__store_item *next;
  kvs_chunk ch;     /* start = 0: tokens holds the chunk's own tokens */
  int32_t *tokens;  /* [ch.n_tokens] */
  void *kv;         /* canonical layout, engine memory */
  int dev;          /* kv is device memory */
  int waiter, done; /* kvs_reuse_store(wait = 1) */
  kvs_err result;
};

static void item_free(kvs__store_item *it) {
  if (!it) return;
  if (it->dev)
    kvs_gpu_free(it->kv);
  else
    free(it->kv);
  free(it->tokens);
  free(it);
}

static void *worker(void *arg) {
  kvs_reuse *r = arg;
  pthread_mutex_lock(&r->qmu);
  for (;;) {
    while (!r->head && !r->stop)
      pthread_cond_wait(&r->qcv, &r->qmu);
    if (!r->head) break; /* stopping, drained */
    kvs__store_item *it = r->head;
    r->head = it->next;
    if (!r->head) r->tail = NULL;
    r->n_q--, r->busy = 1;
    pthread_mutex_unlock(&r->qmu);
    kvs_put_opts po = {.profile = r->o.store_profile,
                       .layers_per_group = r->o.layers_per_group,
                       .flags = it->dev ? KVS_PUT_DEVICE : 0};
    kvs_err e = kvs_put(r->c, &r->info.model_id, it->tokens, &it->ch, &r->info.layout, it->kv, &po);
    if (e)
      KVS_LOGW("reuse", "store failed", "err=%s detail=\"%s\"", kvs_strerror(e),
               kvs_client_errmsg(r->c));
    pthread_mutex_lock(&r->qmu);
    r->busy = 0;
    if (e)
      r->st_failed++;
    else
      r->st_done++, r->st_bytes += kvs_layout_token_bytes(&r->info.layout) * it->ch.n_tokens;
    if (it->waiter)
      it->result = e, it->done = 1;
    else
      item_free(it);
    pthread_cond_broadcast(&r->qidle);
  }
  pthread_mutex_unlock(&r->qmu);
  return NULL;
}

kvs_err kvs__store_start(kvs_reuse *r) {
  pthread_mutex_init(&r->qmu, NULL);
  pthread_cond_init(&r->qcv, NULL);
  pthread_cond_init(&r->qidle, NULL);
  if (pthread_create(&r->worker, NULL, worker, r) != 0) {
    pthread_cond_destroy(&r->qidle);
    pthread_cond_destroy(&r->qcv);
    pthread_mutex_destroy(&r->qmu);
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
  pthread_cond_destroy(&r->qidle);
  pthread_cond_destroy(&r->qcv);
  pthread_mutex_destroy(&r->qmu);
}

/* Queues it (owned from here on). wait: blocks until stored, returns the
 * put's result. Else KVS_EAGAIN (it freed) when the queue is full. */
static kvs_err enqueue(kvs_reuse *r, kvs__store_item *it, int wait) {
  pthread_mutex_lock(&r->qmu);
  if (!wait && r->n_q >= r->o.store_queue) {
    r->st_dropped++;
    pthread_mutex_unlock(&r->qmu);
    item_free(it);
    return KVS_EAGAIN;
  }
  it->waiter = wait;
  if (r->tail)
    r->tail->next = it;
  else
    r->head = it;
  r->tail = it;
  r->n_q++, r->st_queued++;
  pthread_cond_signal(&r->qcv);
  kvs_err e = KVS_OK;
  if (wait) {
    while (!it->done)
      pthread_cond_wait(&r->qidle, &r->qmu);
    e = it->result;
  }
  pthread_mutex_unlock(&r->qmu);
  if (wait) item_free(it);
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
  it->tokens = malloc((size_t)c->ch.n_tokens * sizeof *it->tokens);
  size_t bytes = kvs_layout_token_bytes(&r->info.layout) * c->ch.n_tokens;
  kvs_err e = it->tokens ? KVS_OK : KVS_ENOMEM;
  if (!e)
    memcpy(it->tokens, req->tokens + c->ch.start, (size_t)c->ch.n_tokens * sizeof *it->tokens);
  if (!e && r->dev)
    e = kvs_gpu_alloc(&it->kv, bytes);
  else if (!e)
    e = (it->kv = malloc(bytes)) ? KVS_OK : KVS_ENOMEM;
  if (e) {
    item_free(it);
    return e;
  }
  *out = it;
  return KVS_OK;
}

kvs_err kvs__store_from_seq(kvs_reuse *r, kvs_engine_seq *s, const kvs_reuse_request *req,
                            const kvs__rchunk *c) {
  if (queue_full(r)) return KVS_EAGAIN; /* before copying anything */
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
    item_free(it);
    return e;
  }
  return enqueue(r, it, 0);
}

kvs_err kvs_reuse_store(kvs_reuse *r, const kvs_reuse_request *req, uint32_t chunk, const void *kv,
                        int wait) {
  if (!r || !req || !kv) return KVS_EINVAL;
  kvs__rchunk *ch;
  uint32_t nch;
  KVS_TRY(kvs__cut(req, &r->info.model_id, r->o.prefix_chunk_tokens, &ch, &nch, NULL));
  kvs_err e = chunk < nch ? KVS_OK : KVS_ERANGE;
  if (!e && !wait && queue_full(r)) e = KVS_EAGAIN;
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
    item_free(it);
    return e;
  }
  return enqueue(r, it, wait);
}

kvs_err kvs_reuse_flush(kvs_reuse *r) {
  if (!r) return KVS_EINVAL;
  pthread_mutex_lock(&r->qmu);
  while (r->head || r->busy)
    pthread_cond_wait(&r->qidle, &r->qmu);
  pthread_mutex_unlock(&r->qmu);
  return KVS_OK;
}

void kvs__store_counters(kvs_reuse *r, kvs_reuse_counters *out) {
  pthread_mutex_lock(&r->qmu);
  out->stores_queued = r->st_queued, out->stores_done = r->st_done;
  out->stores_failed = r->st_failed, out->stores_dropped = r->st_dropped;
  out->store_bytes = r->st_bytes;
  pthread_mutex_unlock(&r->qmu);
}
