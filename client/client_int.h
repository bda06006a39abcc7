/* client_int.h - internals of libkvstash shared by its source files (and by
 * the white-box tests in tests/client). Nothing here is installed.
 *
 * The files, each calling only files listed before it (checked by the
 * client_layers test, tools/check-client-layers):
 *   conn.c     errors, the REQ/REP pool, calls with deadline and retries
 *   frame.c    request frames: build, seal, check a reply, round trip
 *   shm.c      same-host segments mapped, worker threads
 *   stream.c   GETs over the byte-stream listener (else REQ/REP)
 *   op.c       a get's or put's handle (op_int.h): wait, free
 *   get.c      the get / lease state machine, device decode buffers
 *   put.c      encode + PUT
 *   ops.c      ping, key ops, stats, lookup
 *   admin.c    LIST / EXPORT / IMPORT (kvstash_admin.h)
 *   node.c     a client of one kvstashd: options, create, free, counters
 *   cluster.c  an etcd:// client over node clients
 *   api.c      the public calls: cluster or node, and the batches
 * (chunk.c, abi.c and codec_seam.c stand alone.) */
#ifndef KVS_CLIENT_INT_H
#define KVS_CLIENT_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "kvstash.h"

#define KVS__ERRMSG_LEN 256

/* One REQ context of the pool and the aio that drives it. A slot serves one
 * call at a time; idle slots wait in the client's free list. */
typedef struct kvs__slot {
  nng_ctx ctx;
  nng_aio *aio;
  uint32_t sock;          /* index into kvs_client.socks */
  struct kvs__call *call; /* the call it serves now, NULL when idle */
  struct kvs__slot *next; /* free list / all list */
  struct kvs__slot *all_next;
} kvs__slot;

typedef struct kvs__call kvs__call;
/* Called once when a call finishes (success or error), on an nng thread or on
 * the starting thread when the call fails to start. The call stays valid until
 * kvs__call_free. */
typedef void (*kvs__call_done_fn)(kvs__call *call, void *arg);
/* Inspects a reply before it is accepted: returns KVS_OK, or an error (a
 * KVS_EBUSY/KVS_EAGAIN reply makes an idempotent call retry). May write the
 * reason into call->errmsg. */
typedef int (*kvs__call_check_fn)(kvs__call *call, nng_msg *rep);

enum { KVS__ST_IDLE, KVS__ST_SEND, KVS__ST_RECV, KVS__ST_SLEEP, KVS__ST_DONE };

struct kvs__call {
  kvs_client *c;
  nng_msg *req; /* the request, kept for retries; owned by the call */
  nng_msg *rep; /* the accepted reply after success; owned by the call */
  int rv;       /* kvs_err of the call */
  int idempotent;
  int state;
  uint32_t attempt;
  uint64_t deadline_ns; /* kvs_now_ns() clock */
  uint64_t seed;        /* backoff jitter */
  kvs__slot *slot;
  kvs__call_check_fn check;
  kvs__call_done_fn done;
  void *arg;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int finished;
  char errmsg[KVS__ERRMSG_LEN];
};

/* A tenant segment mapped read-only (same-host fast path). Mappings live until
 * kvs_client_free: a get may still read one after the server moved on to a
 * new segment (restart), so none is unmapped earlier. */
typedef struct kvs__shmmap {
  char name[72];
  const uint8_t *base;
  uint64_t size;
  int registered; /* cudaHostRegister'ed (device gets DMA from it) */
  /* the same segment mapped read-write, for shared-memory puts (mapped on
   * the first put that needs it) */
  uint8_t *wbase;
  int wregistered; /* 1 registered (device puts DMA into it), -1 failed, 0 not tried */
  struct kvs__shmmap *next;
} kvs__shmmap;

/* A job of the client's worker threads (decodes of shared-memory groups). */
typedef struct kvs__job {
  void (*fn)(void *arg);
  void *arg;
  struct kvs__job *next;
} kvs__job;

/* The client's state, grouped by the file that owns each part. Locks: `mu`
 * guards the lifecycle flag, the pool's lists and counts and the stream
 * state; `shm.mu` the mappings, the workers and the device pool. */
struct kvs_client {
  kvs_client_opts o; /* its strings point at the copies below */
  char *url, *tenant, *token;
  char *tls_ca, *tls_name, *tls_cert;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* pipes changed / a call ended / a stream connection went idle */
  int closed;        /* kvs_client_free began: no new nng operation starts */
  /* REQ/REP pool and calls (conn.c), under mu but for the atomics */
  struct kvs__pool {
    void *tls; /* nng_tls_config *, tls+tcp:// only */
    nng_socket *socks;
    uint32_t n_socks;
    kvs__slot *free_slots;
    kvs__slot *all_slots;
    uint32_t rr; /* next socket for a new slot */
    int active;  /* calls started and not yet finished */
    int pipes;   /* connections up */
    atomic_uint_fast64_t next_id;
    atomic_int in_nng;   /* threads inside an nng ctx/aio call of this client */
    atomic_int bg_calls; /* fire-and-forget calls (RELEASE) whose done has not returned */
  } pool;
  /* same-host fast path (shm.c; the device pool: get.c), under shm.mu */
  struct kvs__shm {
    atomic_int on; /* gets try LEASE first */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;
    kvs__shmmap *maps;
    kvs__job *jobs, *jobs_tail;
    pthread_t *workers;
    int n_workers, work_stop;
    struct kvs__devnode *devpool; /* device decode buffers of finished gets */
    int n_devpool;
    atomic_int put_off; /* the server has no shared-memory puts (or refused them): socket */
    void *bounce;       /* pinned bounce buffer of device puts into an unregistered mapping */
    size_t bounce_len;
    pthread_mutex_t bounce_mu;
  } shm;
  /* byte-stream GETs (stream.c), under mu */
  struct kvs__stream {
    char *url;                     /* the stream's URL (named or found), NULL = off */
    struct kvs__olddialer *old;    /* URLs replaced: a connection may still name one */
    int auto_find;                 /* found by asking the daemon (not opted out, not named) */
    int named;                     /* set by kvs_client_stream */
    int asking;                    /* a thread is asking now */
    int known;                     /* asked since the last connection loss */
    uint64_t ask_ns;               /* after a failed ask: not again before this */
    struct kvs__sconn *idle, *all; /* idle connections / all of them */
    int n_conns, active;           /* connections made / serving a call */
    uint64_t retry_ns;             /* after a failed dial: REQ/REP until then */
  } stream;
  /* kvs_client_counters, as atomics (every file counts its own) */
  struct kvs__counters {
    atomic_uint_fast64_t gets, shm_gets, shm_fallbacks, shm_regroups, shm_bytes, leases, releases,
        release_lost, shm_maps, stream_gets, stream_fallbacks, shm_puts, sock_puts,
        shm_put_fallbacks;
  } ctr;
  struct kvs__cluster *cluster; /* an etcd:// client (cluster.c): every call goes there */
};

/* ---- cluster clients (cluster.c, kvstash_cluster.h): the calls' hooks (api.c) */
kvs_err kvs__cluster_create(const kvs_client_opts *o, kvs_client **out);
void kvs__cluster_free(kvs_client *c);
kvs_err kvs__cluster_put(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                         const kvs_put_opts *o);
kvs_err kvs__cluster_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, void *out,
                         uint64_t out_cap, const kvs_get_opts *o);
kvs_err kvs__cluster_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                            kvs_entry_info *info);
kvs_err kvs__cluster_keyop(kvs_client *c, int op, const kvs_key *key, uint32_t arg);
kvs_err kvs__cluster_ping(kvs_client *c);
kvs_err kvs__cluster_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n);
kvs_err kvs__cluster_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks,
                            uint32_t mode, uint8_t *status, size_t *n_prefix);
kvs_err kvs__cluster_batch(kvs_client *c, int put, const kvs_model_id *model, const int32_t *tokens,
                           const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                           void *const *outs, const uint64_t *caps, const void *const *kvs,
                           const kvs_get_opts *go, const kvs_put_opts *po, kvs_err *rvs);
#define KVS__NOT_ON_CLUSTER(c)                                                                     \
  kvs__seterr((c), KVS_ENOTSUP, "not on a cluster client (etcd://): use a node's URL")

/* Records err with a printf message as this thread's last error on c and
 * returns err. */
int kvs__seterr(kvs_client *c, int err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
kvs_err kvs__err_from_nng(int nng_rv);

/* The transport: one request, one reply, with retries and a deadline.
 * kvs__call_start takes ownership of req. timeout_ms 0 = the client's
 * request_timeout_ms. */
kvs__call *kvs__call_new(kvs_client *c, nng_msg *req, int idempotent, uint32_t timeout_ms,
                         kvs__call_check_fn check, kvs__call_done_fn done, void *arg);
void kvs__call_start(kvs__call *call);
/* Blocks until the call is finished; returns call->rv. */
int kvs__call_wait(kvs__call *call);
/* Frees the call (waits for it first); also frees any reply still held. */
void kvs__call_free(kvs__call *call);
/* Synchronous convenience: send req, wait, hand the reply to *rep (caller
 * frees with nng_msg_free). On error the message is recorded on c. */
int kvs__roundtrip(kvs_client *c, nng_msg *req, int idempotent, kvs__call_check_fn check,
                   nng_msg **rep);

/* ---- the pool (conn.c), opened and closed by node.c */
kvs_err kvs__pool_open(kvs_client *c);
void kvs__pool_close(kvs_client *c);

/* ---- request frames (frame.c) */
/* A request frame: 128 zeroed header bytes + payload bytes written in place. */
int kvs__frame_new(size_t payload, nng_msg **m);
uint8_t *kvs__frame_payload(nng_msg *m);
/* Writes m's header for op: a fresh request id, c's tenant and token, the
 * payload length. */
int kvs__frame_seal(kvs_client *c, nng_msg *m, uint16_t op);
/* A kvs__call_check_fn: accepts a response to call->req (right op,
 * RESPONSE flag, status 0); a server error comes back as its kvs_err with
 * the server's message in call->errmsg. */
int kvs__check_reply(kvs__call *call, nng_msg *rep);
/* The payload of a reply (after its header). */
const uint8_t *kvs__reply_payload(nng_msg *rep, size_t *n);
/* Seals req's header for op, does one round trip and checks the reply (right
 * op, a response, status 0; a server error comes back with its message);
 * *rep (may be NULL) gets the reply. req is consumed. */
int kvs__frame_roundtrip(kvs_client *c, nng_msg *req, uint16_t op, int idempotent, nng_msg **rep);
/* A PING with its own deadline, its reply checked; *rep gets it (caller
 * frees). Unlike kvs__frame_roundtrip it leaves the thread's error message
 * alone: for the client's own questions, not the caller's. */
int kvs__ping_quiet(kvs_client *c, uint32_t timeout_ms, nng_msg **rep);

/* From PING's answer (adv[n]: comma-separated +stream listen URLs), the
 * stream URL for a client of client_url (tcp:// or ipc://): the first of its
 * transport, a wildcard host replaced by client_url's (a loopback one is
 * skipped unless client_url is loopback too), written to out.
 * KVS_ENOENT when none fits, KVS_EPROTO for a malformed list, KVS_ENOTSUP
 * for another client scheme. (A parser of what a server sends: fuzzed.) */
int kvs__stream_pick(const uint8_t *adv, size_t n, const char *client_url, char *out, size_t cap);

/* ---- byte-stream GETs (stream.c) */
typedef struct kvs__sconn kvs__sconn;
/* The answer of a GET: rv (a kvs_err; a server error with its message in
 * errmsg) and, on KVS_OK, the answer's payload - a view valid only during
 * the callback. Called once, on an nng thread or a stream connection's
 * thread (or on the caller's when the call cannot start). */
typedef void (*kvs__get_done_fn)(void *arg, int rv, const char *errmsg, const uint8_t *payload,
                                 size_t n);
/* One GET round trip: over the client's byte stream when it has one (on the
 * connection's own thread, the payload read into its reused buffer, no nng
 * message), otherwise - or when the stream cannot carry it before its answer
 * began - by kvs__call with check (idempotent, retried). req is a sealed
 * GET frame, consumed. timeout_ms 0 = the client's request timeout. */
void kvs__get_call(kvs_client *c, nng_msg *req, uint32_t timeout_ms, kvs__call_check_fn check,
                   kvs__get_done_fn done, void *arg);
/* Before a get starts, on the caller's thread: when the client looks for the
 * stream by itself and has not asked since it (re)connected, one PING asks
 * the daemon for its listener (at most timeout_ms) and the answer is kept.
 * Never fails: without an answer, gets go through REQ/REP. */
void kvs__stream_default(kvs_client *c, uint32_t timeout_ms);
/* At kvs_client_free, once c->closed is set: ends the stream calls in
 * flight (KVS_ECLOSED), joins the connection threads, frees them. */
void kvs__stream_close(kvs_client *c);

/* ---- same-host fast path (shm.c) */
/* The mapping of segment `name` (mapped read-only on first use, then cached).
 * KVS_EIO / KVS_EPERM / KVS_ENOENT with the reason in errbuf when it cannot
 * be opened. register_host: also make it DMA-able for the GPU (once; a
 * failure to register is not an error). */
kvs_err kvs__shm_map(kvs_client *c, const char *name, int register_host, kvs__shmmap **out,
                     char *errbuf, size_t errlen);
/* The same segment mapped read-write (shared-memory puts), once per client;
 * register_host: also make that mapping DMA-able (once; m->wregistered
 * says whether it worked). Errors as kvs__shm_map. */
kvs_err kvs__shm_map_rw(kvs_client *c, const char *name, int register_host, kvs__shmmap **out,
                        char *errbuf, size_t errlen);
/* Runs fn(arg) on one of the client's worker threads (started on first use:
 * opts.n_workers of them). KVS_ECLOSED when the client is closing (fn is
 * then not run). */
kvs_err kvs__work_submit(kvs_client *c, void (*fn)(void *), void *arg);
/* Wall clock in ms, the clock of a lease's expires_ms. */
uint64_t kvs__wall_ms(void);
/* At kvs_client_free: stops and joins the workers (jobs queued still run);
 * then, once nothing reads them, unmaps the segments. */
void kvs__shm_workers_stop(kvs_client *c);
void kvs__shm_unmap_all(kvs_client *c);

/* ---- gets and puts of a node client (get.c, put.c; op.c: their handle) */
/* sync: on_group is called by kvs__node_get on the caller's thread. */
kvs_err kvs__node_get_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            const kvs_chunk *chunk, const kvs_layout *layout, void *out,
                            uint64_t out_cap, const kvs_get_opts *o, int sync, kvs_op **opp);
kvs_err kvs__node_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                      const kvs_chunk *chunk, const kvs_layout *layout, void *out, uint64_t out_cap,
                      const kvs_get_opts *o);
kvs_err kvs__node_put_start(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                            const kvs_put_opts *o, kvs_op **opp);
/* Frees the pool of device decode buffers (get.c); at kvs_client_free. */
void kvs__devpool_free(kvs_client *c);

/* ---- simple calls of a node client (ops.c) */
kvs_err kvs__node_ping(kvs_client *c);
kvs_err kvs__node_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                         kvs_entry_info *info);
kvs_err kvs__node_delete(kvs_client *c, const kvs_key *key);
kvs_err kvs__node_pin(kvs_client *c, const kvs_key *key);
kvs_err kvs__node_unpin(kvs_client *c, const kvs_key *key);
kvs_err kvs__node_ttl(kvs_client *c, const kvs_key *key, uint32_t ttl_s);
kvs_err kvs__node_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n);
kvs_err kvs__node_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks, uint32_t mode,
                         uint8_t *status, size_t *n_prefix);

/* ---- a client of one kvstashd (node.c): kvs_client_create / _free for a
 * tcp://, ipc:// or tls+tcp:// URL (also the members of a cluster client) */
kvs_err kvs__node_create(const kvs_client_opts *o, kvs_client **out);
void kvs__node_free(kvs_client *c);

#endif
