/* reuse_int.h - private to reuse/. */
#ifndef KVS_REUSE_INT_H
#define KVS_REUSE_INT_H

#include <pthread.h>

#include "kvs_reuse.h"

/* one chunk of a request */
typedef struct kvs__rchunk {
  kvs_chunk ch;      /* key, start, n_tokens */
  uint32_t kind;     /* KVS_SEG_PREFIX or KVS_SEG_CONTENT */
  uint32_t decision; /* kvs_reuse_decision */
  uint8_t tier;
  int failed;
  double est_load_s, est_recompute_s;
  kvs_op *op; /* the get in flight */
  void *buf;  /* its output (engine memory) */
  size_t buf_cap;
  uint64_t t_start, t_first, t_last;
  int waited_first, waited_last; /* the loader waited for the data there */
} kvs__rchunk;

typedef struct kvs__store_item kvs__store_item;

#define KVS__GPOOL 64

struct kvs_reuse {
  kvs_client *c;
  kvs_engine *e;
  kvs_engine_info info;
  kvs_reuse_opts o;
  int dev;            /* device engine */
  int stateful;       /* no layer ops (a state-restore engine): prefix reuse only */
  void *stream;       /* device engine: the loader's copies */
  pthread_mutex_t mu; /* the figures and counters below */
  double lat[KVS_REUSE_TIERS], bps[KVS_REUSE_TIERS];
  uint64_t samples[KVS_REUSE_TIERS];
  int warm[KVS_REUSE_TIERS];             /* a request's gets warmed the tier up */
  uint64_t last_sample[KVS_REUSE_TIERS]; /* request number of the last sample */
  uint64_t req_no, rng;
  double spt, rr;
  double cost[2]; /* calibrated s/token: KVS_REUSE_COST_RECOMPUTE, _FULL */
  uint64_t cost_samples[2];
  kvs_reuse_counters ct;
  /* gets' device buffers kept between requests (cudaFree synchronises the
   * device: it would wait for the stores in flight); under mu */
  struct {
    void *p;
    size_t bytes;
  } gpool[KVS__GPOOL];
  uint32_t n_gpool;
  /* store queue (store.c) */
  pthread_t worker;
  int worker_on;
  pthread_mutex_t qmu;
  pthread_cond_t qcv, qidle;
  kvs__store_item *head, *tail;
  uint32_t n_q;      /* waiting in the queue (bounded by store_queue) */
  uint32_t n_active; /* queued or in flight: what kvs_reuse_flush waits for */
  int stop;
  struct {
    void *p;
    size_t bytes;
  } * pool; /* device staging buffers kept for reuse [pool_cap] */
  uint32_t n_pool, pool_cap;
  uint64_t st_queued, st_done, st_failed, st_dropped, st_bytes, st_pool_hits;
  uint64_t st_copy_ns, st_encode_ns, st_ack_ns;
};

kvs_err kvs__cut(const kvs_reuse_request *req, const kvs_model_id *mid, uint32_t chunk_tokens,
                 kvs__rchunk **out, uint32_t *n_out, uint32_t *n_ctx);
kvs_err kvs__store_start(kvs_reuse *r);
void kvs__store_stop(kvs_reuse *r);
/* Copies chunk c's KV out of s and queues its put; KVS_EAGAIN when the queue
 * is full (dropped, counted). */
kvs_err kvs__store_from_seq(kvs_reuse *r, kvs_engine_seq *s, const kvs_reuse_request *req,
                            const kvs__rchunk *c);
void kvs__store_counters(kvs_reuse *r, kvs_reuse_counters *out);

#endif
