/* svc_int.h - internals of kvstashd shared by its files (not installed).
 *
 *   store.c     put/get orchestration over the index (store_int.h has the
 *               store's layers: store_index.c, store_shm.c)
 *   tier.h      the tier ops table and the tier list; tier_rocksdb.c
 *   record.c    the stored metadata record (parsed from disk: fuzzed)
 *   metrics.c   counters, latency histograms, Prometheus text
 *   request.c   below both data planes: tenants/tokens and the header check,
 *               a GET's lookup and answer fields, listen-URL kinds, drain
 *   dataplane.c nng REP workers: decode, auth, dispatch to the store
 *   stream.c    byte-stream GET listeners (tcp+stream://, ipc+stream://)
 *   http.c      libevent control plane
 *   config.c    config file + flags
 *   svc.c       wiring: create / stop / free
 * Calls go down only: svc.c -> dataplane.c, stream.c, http.c -> request.c ->
 * store.c (ctest cachesvc_layers checks there is no cycle). */
#ifndef KVS_SVC_INT_H
#define KVS_SVC_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "kvs_svc.h"
#include "kvs_wire.h"

/* tiers a server reports: RAM + the disk tiers (cachesvc/tier.h) */
#define KVS__MAX_TIER_ROWS (1 + KVS_WIRE_MAX_TIER)

/* ---------------------------------------------------------------- auth */
/* The tenants and tokens in force: an immutable snapshot, replaced whole on
 * a reload (SIGHUP). Readers take a reference under a mutex held only for
 * that (kvs__auth_get), check, and drop it; the reload swaps the pointer
 * and drops the holder's reference, so the old table is freed by whoever
 * holds it last. A request is checked once, at its header: one admitted
 * before a swap finishes under the table it was admitted by. */
typedef struct kvs__auth {
  atomic_int refs;
  int n; /* 0 = auth off */
  kvs_svc_tenant t[KVS_SVC_MAX_TENANTS];
} kvs__auth;
typedef struct kvs__authref {
  pthread_mutex_t mu;
  kvs__auth *cur;
} kvs__authref;
/* A table of c's tenants (refs = 1); NULL on ENOMEM. */
kvs__auth *kvs__auth_new(const kvs_svc_config *c);
kvs__auth *kvs__auth_get(kvs__authref *r); /* a reference on the current table */
void kvs__auth_put(kvs__auth *a);          /* drops one; NULL does nothing */
/* Installs a (taking over its reference) and drops the old table's. */
void kvs__auth_swap(kvs__authref *r, kvs__auth *a);

/* ------------------------------------------------------------- metrics */
#define KVS__HIST_BUCKETS 14
extern const double kvs__hist_bounds_s[KVS__HIST_BUCKETS]; /* last is +Inf */
typedef struct kvs__hist {
  atomic_uint_fast64_t bucket[KVS__HIST_BUCKETS];
  atomic_uint_fast64_t count;
  atomic_uint_fast64_t sum_ns;
} kvs__hist;

typedef struct kvs__metrics {
  atomic_uint_fast64_t stat[KVS__STAT_COUNT]; /* kvs_wire_stat order; bytes_t* and
                                                 entries are gauges set by the store */
  atomic_uint_fast64_t auth_failures;
  atomic_uint_fast64_t bad_frames;
  atomic_uint_fast64_t timeouts;
  atomic_uint_fast64_t promotions, demotions;
  atomic_uint_fast64_t bytes_out_tier[KVS__MAX_TIER_ROWS]; /* GET/EXPORT bytes by wire tier */
  atomic_uint_fast64_t bytes_demoted, bytes_promoted;
  atomic_uint_fast64_t nospace_refused; /* writes refused: the disk's free-space reserve */
  atomic_uint_fast64_t slow_jammed; /* data-plane connections whose answers are dropped: not read */
  atomic_uint_fast64_t disk_corrupt;                /* RocksDB corruption statuses on value reads */
  atomic_uint_fast64_t tiers_repaired, tiers_reset; /* corrupt at start: repaired / set aside */
  /* write-behind (durability = ram): values written to the first tier,
   * writes that failed (the entry stays RAM-only), PUTs written through
   * because the backlog was full, jobs skipped (entry deleted, overwritten
   * or moved before its write) */
  atomic_uint_fast64_t wb_written, wb_failed, wb_fellback, wb_skipped;
  kvs__hist op_latency[KVS__OP_MAX + 1];
  /* connections open now: nng pipes (tcp/ipc/tls) and byte-stream sockets */
  atomic_int_fast64_t clients_msg, clients_stream;
  uint64_t start_unix_ms; /* set once at start, before any thread reads it */
  uint64_t start_mono_ns;
  _Atomic(struct kvs__cluster *) cluster;       /* set while in a cluster (cluster.c) */
  kvs__authref auth;                            /* tenants + tokens in force (svc.c) */
  atomic_uint_fast64_t reloads_ok, reloads_err; /* SIGHUP reloads applied / rejected */
  pthread_mutex_t reload_mu;                    /* guards reload_error */
  char reload_error[512]; /* why the last reload was rejected ("" after a good one) */
} kvs__metrics;

void kvs__hist_observe(kvs__hist *h, uint64_t ns);
/* Counts one LOOKUP: its chunks and tokens, and those status[] says cached
 * (status[i] != 0; chunks after a PREFIX lookup's first miss count as missed). */
void kvs__metrics_lookup(kvs__metrics *m, const kvs_wire_lookup_req *q, const uint8_t *status);
#define KVS__INC(m, i, v) atomic_fetch_add_explicit(&(m)->stat[i], (v), memory_order_relaxed)

/* --------------------------------------------------------------- store */
/* A storage key: tenant id (8 bytes) || salted key (16 bytes). Both are
 * keyed BLAKE2b of the server secret, so neither reveals nor lets a client
 * choose another tenant's keys. */
typedef struct kvs__skey {
  uint8_t b[24];
} kvs__skey;

/* ------------------------------------------------ shared-memory segments */
typedef struct kvs__shm kvs__shm;
/* Creates (or truncates) the POSIX shm object `name`, mode 0600, and maps it. */
kvs__shm *kvs__shm_create(const char *name, uint64_t size);
/* Unmaps and unlinks. Every buffer in it must be gone. NULL does nothing. */
void kvs__shm_destroy(kvs__shm *m);
const char *kvs__shm_name(const kvs__shm *m);
uint8_t *kvs__shm_base(const kvs__shm *m);
int kvs__shm_alloc(kvs__shm *m, uint64_t len, uint64_t *off); /* 1 = ok */
void kvs__shm_free(kvs__shm *m, uint64_t off, uint64_t len);
uint64_t kvs__shm_used(kvs__shm *m);

/* Refcounted bytes of one value; the T0 tier, every reader and every lease
 * hold a ref, so eviction never frees (or lets anyone reuse) bytes under a
 * reader. The bytes are inline, or a range of a shared-memory segment, or
 * borrowed from an owner (a request frame) that `release` frees at the last
 * unref. */
typedef struct kvs__buf {
  atomic_int refs;
  size_t len;
  uint8_t *data;
  kvs__shm *shm; /* data = shm base + shm_off when set */
  uint64_t shm_off;
  void (*release)(void *owner); /* borrowed bytes: called at the last unref */
  void *owner;
  uint8_t inline_data[];
} kvs__buf;
kvs__buf *kvs__buf_new(size_t len);                  /* refs = 1; NULL on ENOMEM */
kvs__buf *kvs__buf_new_shm(kvs__shm *m, size_t len); /* NULL when the segment is full */
/* Shortens b to len (<= b->len, > 0) while only its creator holds it: a
 * shared-memory range gives its tail back to the segment. */
void kvs__buf_shm_trim(kvs__buf *b, size_t len);
/* len bytes at data, owned by owner: release(owner) at the last unref (the
 * buffer takes the owner over, also when it returns NULL: ENOMEM). */
kvs__buf *kvs__buf_wrap(uint8_t *data, size_t len, void (*release)(void *), void *owner);
void kvs__buf_ref(kvs__buf *b);
void kvs__buf_unref(kvs__buf *b);

/* What a GET gets: a ref on the bytes and a copy of the current meta
 * (wire encoding, server fields filled in). Release with kvs__vref_release. */
typedef struct kvs__vref {
  kvs__buf *buf;
  uint8_t *meta; /* malloc'd */
  size_t meta_len;
  kvs_wire_meta m; /* decoded view of meta */
  uint8_t tier;    /* where it was found */
} kvs__vref;
void kvs__vref_release(kvs__vref *v);

typedef struct kvs__store kvs__store;
kvs_err kvs__store_open(const kvs_svc_config *c, kvs__metrics *met, kvs__store **out);
/* Flushes hit counters and the WAL, closes. NULL does nothing. */
void kvs__store_close(kvs__store *s);
/* Maintenance, about once a second: TTL expiry; with flush_counters, hit
 * counters and last-use times written back (without fsync). */
void kvs__store_tick(kvs__store *s, int flush_counters);

void kvs__store_skey(const kvs__store *s, const char *tenant, const kvs_key *key, kvs__skey *out);
void kvs__store_tenant_id(const kvs__store *s, const char *tenant, uint8_t out[8]);

/* PUT: value already parsed (m->value_bytes bytes). flags: KVS_WIRE_F_NX,
 * KVS_WIRE_F_SYNC. keep_server_fields: IMPORT restores created/hits/pin. */
kvs_err kvs__store_put(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                       const uint8_t *value, uint32_t flags, int keep_server_fields);
/* The same for a value already held in a buffer (heap or a tenant's
 * shared-memory segment): value->len must be m->value_bytes (else
 * KVS_EINVAL). The store verifies the checksum, then takes its own refs on
 * value (the RAM copy, the write-behind queue) and never copies the bytes;
 * the caller keeps its ref and drops it after the call, whatever it returns.
 * The bytes must not change after KVS_OK. */
kvs_err kvs__store_put_buf(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                           kvs__buf *value, uint32_t flags, int keep_server_fields);
/* GET: model and tokens must match (KVS_EMODEL / KVS_ETOKENS); tokens NULL
 * skips the token check (EXPORT only). Counts a hit. */
kvs_err kvs__store_get(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                       const uint8_t *tokens_le, uint32_t n_tokens, kvs__vref *out);
/* The same from RAM only, never blocking on disk: KVS_EAGAIN when the entry
 * is cached but not in T0 (nothing counted then). */
kvs_err kvs__store_get_t0(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                          const uint8_t *tokens_le, uint32_t n_tokens, kvs__vref *out);
/* A GET's lookup and answer fields, for both data planes (REQ/REP and byte
 * streams): on KVS_OK *v holds the value (release it) and *a, *head (bytes of
 * the answer's head, meta included when asked) describe the answer; the value
 * bytes to send are v->buf->data + a->byte_off, a->byte_len long. Otherwise
 * nothing is held: KVS_EAGAIN (fast and not in RAM: retry on a worker) or
 * the error to answer, with *why (may be NULL) naming it. */
kvs_err kvs__get_prepare(kvs__store *st, const char *tenant, const kvs_wire_get_req *g, int fast,
                         kvs__vref *v, kvs_wire_get_resp *a, size_t *head, const char **why);
/* LEASE: like GET, but the value must be (or, with may_block, be brought)
 * in the tenant's shared-memory segment; the lease holds a ref until
 * released or expired. KVS_EAGAIN: not in shared memory (use GET), or
 * !may_block and it would need the disk. KVS_ENOTSUP when shm is off. */
typedef struct kvs__lease_out {
  uint64_t lease_id, expires_ms, offset;
  char shm_name[KVS_WIRE_SHM_NAME_MAX + 1];
  kvs__vref v; /* meta + a ref on the bytes (release it) */
} kvs__lease_out;
kvs_err kvs__store_lease(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                         const uint8_t *tokens_le, uint32_t n_tokens, int may_block,
                         kvs__lease_out *out);
/* Releases a lease of this tenant (KVS_ENOENT when unknown or expired). */
kvs_err kvs__store_release(kvs__store *s, const uint8_t tenant_id[8], uint64_t lease_id);
/* Shared-memory puts (store_shm.c; docs/protocol.md "PUT_RESERVE"): a range
 * of `bytes` in tenant tid's segment, the reservation's until taken,
 * aborted, expired (lease_ms) or dropped with its connection `conn`.
 * KVS_ENOTSUP with shm off; KVS_EAGAIN when the segment has no room (the
 * client puts through the socket); KVS_EBUSY at the reservation cap. */
typedef struct kvs__resv_out {
  uint64_t id, expires_ms, offset, bytes;
  char shm_name[KVS_WIRE_SHM_NAME_MAX + 1];
} kvs__resv_out;
kvs_err kvs__store_reserve(kvs__store *s, const uint8_t tid[8], const kvs_key *key,
                           const kvs_model_id *model, uint64_t bytes, uint32_t conn,
                           kvs__resv_out *out);
/* Takes reservation id of tenant tid out of the table (PUT_COMMIT): *b gets
 * its ref (the caller's now: kvs__buf_unref frees the range), *key and
 * *model what it was made for. KVS_ENOENT when unknown, expired or another
 * tenant's. */
kvs_err kvs__store_resv_take(kvs__store *s, const uint8_t tid[8], uint64_t id, kvs_key *key,
                             kvs_model_id *model, kvs__buf **b);
/* PUT_ABORT: frees the range now (KVS_ENOENT as above). */
kvs_err kvs__store_resv_abort(kvs__store *s, const uint8_t tid[8], uint64_t id);
/* The connection closed: its reservations are freed. */
void kvs__store_resv_drop_conn(kvs__store *s, uint32_t conn);
/* Reservations held now (all tenants). */
size_t kvs__store_resv_count(kvs__store *s);
/* 0 = miss, 1 + tier = cached and matching. No bytes read, no hit counted. */
int kvs__store_probe(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                     const uint8_t *tokens_le, uint32_t n_tokens);
kvs_err kvs__store_exists(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                          kvs_wire_exists_resp *out);
kvs_err kvs__store_delete(kvs__store *s, const kvs__skey *k);
kvs_err kvs__store_pin(kvs__store *s, const kvs__skey *k, int pin);
kvs_err kvs__store_ttl(kvs__store *s, const kvs__skey *k, uint32_t ttl_s);
/* Fills v[KVS__STAT_COUNT] (gauges from the store, counters from metrics). */
void kvs__store_stats(kvs__store *s, uint64_t *v);

/* A page of a tenant's entries in salted-key order, after cursor (NULL =
 * from the start). Writes up to limit items; *more, next_cursor set. */
typedef struct kvs__item {
  kvs__skey sk;
  kvs_wire_list_item it;
  uint8_t quarantined;
} kvs__item;
kvs_err kvs__store_list(kvs__store *s, const uint8_t tenant_id[8], const uint8_t *cursor,
                        uint32_t limit, kvs__item *items, uint32_t *n, int *more);
/* Entry info by storage key (admin). */
kvs_err kvs__store_info(kvs__store *s, const kvs__skey *k, kvs__item *out);
/* Server-side read for EXPORT: no token check, no hit counted. */
kvs_err kvs__store_read(kvs__store *s, const kvs__skey *k, kvs__vref *out);
/* The write-behind backlog now (durability = ram; zeros otherwise). */
typedef struct kvs__wb_view {
  uint64_t entries, bytes;     /* acknowledged, not on disk yet */
  uint64_t oldest_ms;          /* age of the oldest of them (0: none) */
  uint64_t ramonly, ramonly_b; /* entries (bytes) whose write failed: RAM only */
  uint64_t max_entries, max_bytes;
} kvs__wb_view;
void kvs__store_wb_view(kvs__store *s, kvs__wb_view *out);
/* One row per tier: RAM (wire tier 0), then the disk tiers in the order of
 * KVS__TIER_LIST (cachesvc/tier.h), absent ones included (present 0). */
typedef struct kvs__tier_row {
  char name[16];
  uint8_t wire;    /* the tier's number on the wire (meta, EXISTS, LIST) */
  uint8_t present; /* configured and open */
  uint64_t used, capacity, entries;
} kvs__tier_row;
/* Fills up to max rows; returns how many. */
int kvs__store_tier_rows(kvs__store *s, kvs__tier_row *rows, int max);
/* A numeric property of a disk tier (tier.h's prop op; 0 when absent). */
uint64_t kvs__store_tier_prop(kvs__store *s, unsigned wire, const char *prop);

/* -------------------------------------------------------- stored record */
/* The value of a metadata key in RocksDB:
 *   0 u32 magic "KVSR" | 4 u16 version 1 | 6 u8 state (0 ok, 1 quarantined)
 *   7 u8 0 | 8 u64 XXH3-64 of bytes 16.. | 16 wire meta (docs/protocol.md) */
#define KVS__REC_MAGIC 0x5253564Bu
#define KVS__REC_HEAD  16u
size_t kvs__record_size(const kvs_wire_meta *m);
kvs_err kvs__record_encode(const kvs_wire_meta *m, uint8_t state, uint8_t *out, size_t cap,
                           size_t *written);
/* Checks magic, version, checksum, then the meta. Views point into p. */
kvs_err kvs__record_decode(const uint8_t *p, size_t n, kvs_wire_meta *m, uint8_t *state);

/* ------------------------------------------------------------ planes */
typedef struct kvs__dataplane kvs__dataplane;
kvs_err kvs__dataplane_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                             kvs__dataplane **out);
/* Drain: stop taking requests, finish those in flight, close listeners. */
void kvs__dataplane_stop(kvs__dataplane *d);

/* Whether the frame header's tenant + token pass the tenants in force
 * (m->auth; constant time in the token; always 1 with auth off). */
int kvs__auth_ok(kvs__metrics *m, const kvs_wire_hdr *h);
/* 1 for a tcp+stream:// or ipc+stream:// listen URL (served by stream.c,
 * not by the REP socket). */
int kvs__stream_url(const char *url);

/* Drain: sets *draining (new requests get KVS_EBUSY), then waits at most
 * 10 s for *inflight to reach 0. Both data planes stop this way. */
void kvs__drain(atomic_int *draining, atomic_int *inflight);

typedef struct kvs__streamplane kvs__streamplane;
/* Listens on every +stream URL of c->listen (*out NULL when there is none).
 * c must outlive the plane. */
kvs_err kvs__stream_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                          kvs__streamplane **out);
/* Drain (new requests: KVS_EBUSY; those in flight finish, at most 10 s),
 * then close listeners and connections and free. NULL does nothing. */
void kvs__stream_stop(kvs__streamplane *p);

/* ------------------------------------------------------------ options */
/* config.c: KVS_SVC_OPTION_MAP (core/kvs_conf_options.h) expanded, one
 * descriptor per option, in the table's order; static, read-only. */
enum { KVS__OPT_STR, KVS__OPT_U32, KVS__OPT_SIZE, KVS__OPT_NUM, KVS__OPT_ENUM, KVS__OPT_FN };
enum {
  KVS__OPT_LIVE = 1u,   /* a SIGHUP reload applies it; else "needs restart" */
  KVS__OPT_REPEAT = 2u, /* each line appends; an int count follows the field */
  KVS__OPT_GT = 4u,     /* NUM: > lo, not >= lo */
};
typedef struct kvs__opt {
  const char *key;
  int type;          /* KVS__OPT_STR.. */
  size_t off, size;  /* the field in kvs_svc_config */
  const char *def;   /* default as text; NULL = zero */
  double lo, hi;     /* range (U32, SIZE, NUM); STR: lo 1 = not empty */
  const char *words; /* ENUM: "w0|w1|..." */
  kvs_err (*set)(kvs_svc_config *c, const char *key, const char *v); /* FN */
  unsigned flags;                                                    /* KVS__OPT_LIVE.. */
  const char *why;                                                   /* a bad value's reason */
  const char *help;                                                  /* --help text */
} kvs__opt;
extern const kvs__opt kvs__opts[];
extern const size_t kvs__n_opts;
/* The option named key, or NULL. */
const kvs__opt *kvs__opt_find(const char *key);
/* "ram", "async" or "sync" (KVS_SVC_DUR_*). */
const char *kvs__durability_name(int durability);

/* ------------------------------------------------------------- quotas */
/* quota.c: `quota = <tenant>:ram=SIZE,disk=SIZE,entries=N,rate=R,burst=B`
 * (repeated; a later line for the same tenant replaces it). 0 ok, -1 bad
 * (kvs__quota_config_why() says why, static). */
int kvs__quota_config_set(kvs_svc_config *c, const char *v);
const char *kvs__quota_config_why(void);
/* Per-tenant usage and refusals (store.c); kinds of refusal: */
enum { KVS__QREF_DISK, KVS__QREF_ENTRIES, KVS__QREF_RATE, KVS__QREF_N };
typedef struct kvs__quota_view {
  kvs_svc_quota q;               /* the limits */
  uint64_t ram, disk, entries;   /* usage now */
  uint64_t refused[KVS__QREF_N]; /* counters */
} kvs__quota_view;
/* The i-th configured quota; 0 when i is past the last. */
int kvs__store_quota(kvs__store *s, int i, kvs__quota_view *out);
/* Token bucket of the tenant's request rate: KVS_OK, or KVS_EQUOTA (counted)
 * when the tenant has a rate quota and no token left. Cheap when no quota
 * names this tenant. */
kvs_err kvs__store_admit(kvs__store *s, const char *tenant);

/* ------------------------------------------------------------ cluster */
/* cluster.c: the cluster, cluster_* options, and the node's membership
 * (record + lease in etcd, the view of the others). docs/cluster.md. */
/* One cluster_* option (its defaults are in KVS_SVC_OPTION_MAP). 0 ok, -1 bad value, -2
 * unknown key. */
int kvs__cluster_config_set(kvs_svc_cluster_config *c, const char *key, const char *v);
typedef struct kvs__cluster kvs__cluster;
/* *out NULL when c->cluster.url is empty. c must outlive it. */
kvs_err kvs__cluster_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                           kvs__cluster **out);
/* Deregisters (deletes the record, revokes the lease; bounded), stops. */
void kvs__cluster_stop(kvs__cluster *cl);
/* Stored/removed events for KV-aware routers (docs/cluster.md, "Events"):
 * kept in a ring while the node is in a cluster (a no-op otherwise). The
 * store calls kvs__event with its lock held (it only copies 64 bytes). */
enum { KVS__EV_STORED = 1, KVS__EV_REMOVED = 2 };
void kvs__event(kvs__metrics *m, int type, const uint8_t tenant_id[8], const uint8_t key[16],
                const kvs_model_id *model, uint8_t tier);
/* GET /v1/events?after=SEQ&limit=N: a malloc'd JSON page; NULL when the node
 * is not in a cluster. */
char *kvs__events_json(kvs__metrics *m, const char *after, const char *limit);
/* Prometheus lines of the cluster (appended to /metrics); "" when off. */
void kvs__cluster_metrics(kvs__metrics *m, char *out, size_t cap);

typedef struct kvs__http kvs__http;
kvs_err kvs__http_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                        atomic_int *ready, kvs__http **out);
void kvs__http_stop(kvs__http *h);
/* Prometheus text exposition into a malloc'd string. */
char *kvs__metrics_text(kvs__metrics *m, kvs__store *st);

#endif
