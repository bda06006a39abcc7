/* op_int.h - a kvs_op, the handle of a get or put in flight (get.c, put.c),
 * and the little they share (op.c). Nothing here is installed. */
#ifndef KVS_OP_INT_H
#define KVS_OP_INT_H

#include "client_int.h"
#include "codec_seam.h"

enum { KVS__OP_GET = 1, KVS__OP_PUT = 2 };

struct kvs_op {
  int kind;
  kvs_client *c;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;  /* references held by calls and callbacks still running */
  int inflight; /* group requests issued and not yet answered (<= window) */
  int failed;
  int finished;
  uint64_t t_done_ns; /* kvs_now_ns() when it finished (kvs_op_finished_ns) */
  int rv;
  char errmsg[KVS__ERRMSG_LEN];
  /* get */
  kvs_model_id model;
  kvs_key key;
  int32_t *tokens;
  uint32_t T;
  kvs_layout layout;
  uint8_t *out;              /* host output (or the staging buffer: own_out) */
  void *dev_out;             /* KVS_GET_DEVICE, contiguous: the caller's device buffer */
  int device;                /* KVS_GET_DEVICE */
  int own_out;               /* out is a staging buffer allocated here */
  const kvs_paged_kv *paged; /* a paged destination (&paged_copy), or NULL */
  kvs_paged_kv paged_copy;
  int32_t *bt_host;     /* the block table read at the start (device ones copied) */
  int stage_paged;      /* decoded into out, then scattered into the blocks */
  int gpu_decode;       /* device get decoded by the GPU codec kernels */
  uint64_t max_seg;     /* largest group segment: the device staging it needs */
  void *copy_stream;    /* device get decoded on the host: its copies */
  uint64_t deadline_ns; /* of the whole get: every group request shares it */
  uint64_t out_bytes;
  uint32_t dtype, hb, he, window;
  kvs_group_fn on_group;
  void *user;
  int sync;          /* on_group is called by kvs_get on its thread */
  kvs__decoder *dec; /* set once the first answer is in */
  uint32_t G, next_g, n_ready;
  uint8_t *ready; /* [G] */
  uint8_t *ws;    /* window x ws_each */
  size_t ws_each;
  uint8_t *ws_busy; /* [window] */
  /* same-host fast path: the value read in place under a lease */
  int lease_state;     /* 0 none, 1 held, 2 released (or being released) */
  atomic_int shm_dead; /* the lease ran out: the remaining groups go by socket */
  int whole_failed;    /* the all-groups decode failed: group by group from now on */
  uint64_t lease_id, lease_expires_ms;
  const uint8_t *shm_val; /* the value's bytes in the mapped segment */
  uint64_t *seg_end;      /* [n_segs] end offsets of the wire segments in the value */
  uint32_t n_segs;
};

kvs_op *kvs__op_new(kvs_client *c, int kind);
/* Under op->mu: the op is finished when no call is outstanding and it either
 * failed or has every group; wakes its waiters. */
void kvs__op_update_locked(kvs_op *op);
/* Under op->mu: the op's first failure (rv, msg) is the one it reports. */
void kvs__op_fail_locked(kvs_op *op, int rv, const char *msg);

#endif
