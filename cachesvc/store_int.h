/* store_int.h - the store's own internals, shared by its files (not
 * installed). The store is three layers, each calling only those below it:
 *
 *   store.c        put/get orchestration: open/close, keys and salt, PUT,
 *                  GET (+ promotion), LEASE, EXISTS/probe, DELETE, pins,
 *                  TTLs and their expiry, hit-counter flushes, quotas, STATS
 *   store_index.c  the in-memory index: hash table, the RAM copies (T0) in
 *                  LRU order, eviction scoring, room-making in a tier
 *                  (demotion down the tier list), quarantine, loading from a
 *                  tier's records, listing
 *   store_wb.c     write-behind (durability = ram): the bounded queue of
 *                  PUTs acknowledged from RAM and their writer thread,
 *                  which writes each into the first tier
 *   store_shm.c    refcounted buffers, shared-memory segments per tenant,
 *                  the lease table
 *
 * and below them the tiers (tier.h: KVS__TIER_LIST, one ops table each), which
 * hand values back in store_shm.c's buffers. ctest cachesvc_layers checks that
 * no call goes up.
 *
 * Locks: `mu` guards the index, every entry field, the tiers' `used` and the
 * lease table; the 256 striped rwlocks serialize disk work per key (readers
 * shared, writers exclusive); evict_mu[i] serializes room-making in tier i.
 * Order: evict_mu, stripe, then mu, then wb_mu (the write-behind queue: a
 * leaf); never two stripes except by trylock (eviction skips a busy
 * victim). The T0 fast path takes only mu. */
#ifndef KVS_STORE_INT_H
#define KVS_STORE_INT_H

#include "svc_int.h"
#include "tier.h"

#define KVS__NSTRIPES 256
#define KVS__MAX_SEGS 64

/* The wire number of the list's first tier (where PUTs land). */
#define KVS__TIER_FIRST 1u

/* A write-behind job: one acknowledged PUT's value on its way to the first
 * tier (store_wb.c). The queue owns it; the entry's `wb` points at it while
 * the value is not on disk yet, for identity only: the writer skips a job
 * whose entry was deleted, overwritten, evicted or moved meanwhile. */
typedef struct kvs__wjob {
  struct kvs__wjob *next;
  kvs__skey sk;
  kvs__buf *buf; /* a ref on the value */
  uint64_t bytes, enq_ns;
} kvs__wjob;

typedef struct kvs__entry {
  kvs__skey sk;
  struct kvs__entry *hnext;
  struct kvs__entry *lprev, *lnext; /* T0 LRU, head = most recent */
  kvs_model_id model;
  uint8_t tier; /* wire number of the disk tier holding it (1..KVS__NTIERS) */
  uint8_t pinned, quarantined, dirty;
  /* ramonly: its write-behind failed (a full disk): the entry lives in T0
   * alone, is dropped with its RAM copy and is gone at a restart */
  uint8_t ramonly;
  uint32_t n_tokens, ttl_s, tok_off;
  uint64_t value_bytes, disk_bytes, checksum, hits, created_ms, last_used_ms, expire_ms;
  uint8_t *meta; /* wire meta as stored; server fields patched on the way out */
  uint32_t meta_len;
  kvs__buf *t0;
  kvs__wjob *wb; /* set while the value waits for the writer (mu guards it) */
} kvs__entry;

typedef struct kvs__lease {
  uint64_t id, expires_ms;
  uint8_t tid[8];
  kvs__buf *b;
} kvs__lease;

/* A range of a tenant's segment reserved for a shared-memory put (PUT_RESERVE
 * .. PUT_COMMIT / PUT_ABORT), store_shm.c. */
typedef struct kvs__resv {
  uint64_t id, expires_ms;
  uint8_t tid[8];
  uint32_t conn; /* the data-plane connection that made it (0: none) */
  kvs_key key;
  kvs_model_id model;
  kvs__buf *b;
} kvs__resv;

/* A tenant's quota and what it uses (docs/kvstashd.md, "Tenant quotas").
 * ram/disk/entries/pend_* are guarded by the store's mu; the bucket by rmu. */
typedef struct kvs__tquota {
  kvs_svc_quota q;
  uint8_t tid[8];
  uint64_t ram, disk, entries;      /* T0 copies, disk-tier bytes (all tiers), entries */
  uint64_t pend_disk, pend_entries; /* reserved by PUTs in flight */
  pthread_mutex_t rmu;
  double tokens;
  uint64_t last_ns;
  atomic_uint_fast64_t refused[KVS__QREF_N];
} kvs__tquota;

struct kvs__store {
  kvs_svc_config cfg;
  kvs__tquota *quota; /* cfg.n_quotas of them */
  int nquota;
  /* same-host fast path: one segment per tenant id, leases on their ranges */
  pthread_mutex_t shm_mu;
  struct {
    uint8_t tid[8];
    kvs__shm *seg;
  } segs[KVS__MAX_SEGS];
  int nsegs;
  char inst[9];       /* hex id of this daemon's data dir, in segment names */
  char nonce[9];      /* random per start: a client never maps a previous run's segment */
  kvs__lease *leases; /* guarded by mu */
  size_t nleases, capleases;
  uint64_t lease_seq;
  kvs__resv *resv; /* shared-memory put reservations (store_shm.c), guarded by mu */
  size_t nresv, capresv;
  uint64_t resv_seq;
  kvs__metrics *met;
  uint8_t secret[32];
  /* the tiers of KVS__TIER_LIST by position (wire number - 1); NULL = absent */
  kvs__tier *tier[KVS__NTIERS];
  uint64_t tier_entries[KVS__NTIERS]; /* entries per tier (guarded by mu) */
  pthread_mutex_t evict_mu[KVS__NTIERS];
  pthread_mutex_t mu;
  pthread_rwlock_t stripe[KVS__NSTRIPES];
  kvs__entry **bucket;
  size_t nbucket, count;
  kvs__entry *lru_head, *lru_tail;
  uint64_t t0_used;
  size_t t0_count;                   /* entries with a RAM copy */
  uint64_t ramonly_n, ramonly_bytes; /* entries whose write-behind failed (mu) */
  atomic_int closing;
  /* write-behind (store_wb.c): FIFO of jobs, its bounds' use, the writer */
  pthread_mutex_t wb_mu;
  pthread_cond_t wb_cv, wb_idle;
  kvs__wjob *wb_head, *wb_tail;
  uint64_t wb_n, wb_bytes; /* reserved: queued, being written, or about to be queued */
  uint64_t wb_cur_ns;      /* enq_ns of the job being written (0: none) */
  int wb_stop, wb_started;
  int wb_paused; /* tests (test_writebehind.c): the writer waits while set; stop overrides */
  pthread_t wb_thr;
};

/* The tier of a wire number (NULL: none, or absent). */
static inline kvs__tier *kvs__tier_at(const kvs__store *s, unsigned wire) {
  return wire >= 1 && wire <= KVS__NTIERS ? s->tier[wire - 1] : NULL;
}
/* The next present tier below `wire` (0: none). */
static inline unsigned kvs__tier_below(const kvs__store *s, unsigned wire) {
  for (unsigned w = wire + 1; w <= KVS__NTIERS; w++)
    if (s->tier[w - 1]) return w;
  return 0;
}
/* The next present tier above `wire` (0: none). */
static inline unsigned kvs__tier_above(const kvs__store *s, unsigned wire) {
  for (unsigned w = wire > KVS__NTIERS ? KVS__NTIERS : wire; w-- > 1;)
    if (s->tier[w - 1]) return w;
  return 0;
}

static inline uint64_t kvs__sk_hash(const kvs__skey *k) {
  uint64_t h;
  memcpy(&h, k->b + 8, 8); /* salted bytes: already uniform */
  return h;
}
static inline pthread_rwlock_t *kvs__stripe_of(kvs__store *s, const kvs__skey *k) {
  return &s->stripe[kvs__sk_hash(k) % KVS__NSTRIPES];
}
/* The bytes of e held in RAM: its T0 copy, else the value waiting for the
 * write-behind (a GET serves both). NULL: read it from e's tier. mu held. */
static inline kvs__buf *kvs__ix_ram(const kvs__entry *e) {
  return e->t0 ? e->t0 : e->wb ? e->wb->buf : NULL;
}
/* Whether e's record and value are on its tier (not pending, not RAM-only). */
static inline int kvs__ix_on_disk(const kvs__entry *e) { return !e->wb && !e->ramonly; }
static inline int kvs__expired(const kvs__entry *e, uint64_t now_ms) {
  return e->expire_ms && now_ms >= e->expire_ms;
}
/* tier flags of a write under the configured durability (or sync) */
static inline unsigned kvs__wflags(const kvs__store *s, int sync) {
  return (s->cfg.durability == KVS_SVC_DUR_SYNC || sync) ? KVS__TIER_SYNC : 0;
}

/* ------------------------------------------------ store_shm.c (bottom) */
/* zero_freed of the process's store (one store per process in kvstashd; an
 * embedder with several gets zeroing when any of them asks for it). */
void kvs__buf_zero_freed(int on);
/* Names this store's segments (inst from the secret, a nonce per start) and
 * unlinks the segments a previous run of it left behind. */
void kvs__sh_init(kvs__store *s);
/* The tenant's segment, created on first use; NULL when shm is off or the
 * segment cannot be made. Takes shm_mu only. */
kvs__shm *kvs__sh_seg_for(kvs__store *s, const uint8_t tid[8]);
/* A copy of value in the tenant's segment, or on the heap (NULL: ENOMEM). */
kvs__buf *kvs__sh_copy(kvs__store *s, const kvs__skey *k, const uint8_t *value, size_t n);
/* A new lease of tenant tid on b (mu held; takes a ref on b). KVS_EBUSY at
 * the lease cap, KVS_ENOMEM. */
kvs_err kvs__sh_lease_add(kvs__store *s, const uint8_t tid[8], kvs__buf *b, uint64_t now,
                          kvs__lease *out);
/* Drops the leases and put reservations expired at now (all with all),
 * their refs outside mu. */
void kvs__sh_expire(kvs__store *s, uint64_t now, int all);
/* Frees the lease table and the segments (every buffer gone). */
void kvs__sh_free(kvs__store *s);

/* ------------------------------------------------ store_wb.c (middle) */
/* Starts the writer (durability = ram). */
kvs_err kvs__wb_start(kvs__store *s);
/* Writes every queued job, then stops the writer. Safe when not started. */
void kvs__wb_stop(kvs__store *s);
/* Reserves room for one more value of `bytes` in the backlog: 1, or 0 when
 * the backlog is at write_behind_bytes / write_behind_entries (counted: the
 * PUT writes through). */
int kvs__wb_reserve(kvs__store *s, uint64_t bytes);
void kvs__wb_unreserve(kvs__store *s, uint64_t bytes);
/* Bytes reserved in the backlog now (not on disk yet). */
uint64_t kvs__wb_pending(kvs__store *s);
/* A job for k's value b (takes a ref on b); NULL on ENOMEM. */
kvs__wjob *kvs__wb_job_new(const kvs__skey *k, kvs__buf *b);
/* Frees a job never queued (its reservation given back by the caller). */
void kvs__wb_job_free(kvs__wjob *j);
/* Queues j (reserved before) for the writer. mu held; takes wb_mu. */
void kvs__wb_enqueue(kvs__store *s, kvs__wjob *j);
/* Waits (at most timeout_ms) until the backlog is empty: 1 when it is. */
int kvs__wb_wait_idle(kvs__store *s, int timeout_ms);
/* Holds (1) or lets go (0) the writer: tests only. */
void kvs__wb_pause(kvs__store *s, int on);

/* --------------------------------------------- store_index.c (middle) */
kvs__entry *kvs__ix_find(kvs__store *s, const kvs__skey *k);
/* Adds e (counted in its tier's entries and its tenant's quota; the caller
 * charges the tier's used). mu held. */
void kvs__ix_insert(kvs__store *s, kvs__entry *e);
/* Removes and frees e, uncharging its tier (event REMOVED). mu held. */
void kvs__ix_remove(kvs__store *s, kvs__entry *e);
/* Moves e to tier `to`: entries and used move with it. mu held. */
void kvs__ix_move(kvs__store *s, kvs__entry *e, unsigned to);
/* An entry's record and value written into tier `to` (number `tn`), then
 * dropped from `from` and its index entry moved (demotion, promotion). The
 * key's stripe lock held, not mu. 0 when `to` refused the put: nothing
 * changed. */
int kvs__ix_relocate(kvs__store *s, const kvs__skey *k, kvs__tier *from, kvs__tier *to, unsigned tn,
                     const uint8_t *rec, size_t rl, const kvs__buf *val);
kvs__tquota *kvs__ix_quota_of(kvs__store *s, const uint8_t *tid);
/* Disk-tier bytes an entry holds (a quarantined one keeps only its record). */
uint64_t kvs__ix_charged(const kvs__entry *e);
void kvs__ix_lru_front(kvs__store *s, kvs__entry *e);
/* Keeps a RAM copy of e's value (takes a ref on b) when the budget and the
 * tenant's RAM quota allow, dropping others by score. mu held. */
void kvs__ix_t0_put(kvs__store *s, kvs__entry *e, kvs__buf *b);
/* Drops the RAM copy (a reader holding a ref keeps the bytes alive). mu held. */
void kvs__ix_t0_drop(kvs__store *s, kvs__entry *e);
/* A hit: counted, and the idle TTL starts again. mu held. */
void kvs__ix_touch(kvs__entry *e, uint64_t now);
/* The stored meta with the server fields of e. */
void kvs__ix_patch_meta(const kvs__entry *e, uint8_t *meta, uint8_t tier);
/* A record (state) for e as it will sit on `tier`, malloc'd. mu held. */
uint8_t *kvs__ix_record(const kvs__entry *e, unsigned tier, uint8_t state, size_t *len);
/* Whether e answers a GET of (model, tokens) now: KVS_OK, KVS_ENOENT,
 * KVS_EQUARANTINE, KVS_EMODEL, KVS_ETOKENS. NULLs skip a check. */
kvs_err kvs__ix_check(const kvs__entry *e, const kvs_model_id *model, const uint8_t *tokens_le,
                      uint32_t n_tokens, uint64_t now);
/* out's meta (a copy, patched) and b (the caller's ref moves into out). */
void kvs__ix_fill_vref(const kvs__entry *e, kvs__buf *b, uint8_t tier, kvs__vref *out);
/* Ensures tier has room for `need` more bytes (see store_index.c). */
kvs_err kvs__ix_ensure_room(kvs__store *s, unsigned tier, uint64_t need);
/* The stored bytes failed verification: never serve them again. Takes the
 * key's stripe (not held by the caller). */
void kvs__ix_quarantine(kvs__store *s, const kvs__skey *k, kvs_err why);
/* Loading the index from a tier's records (kvs__tier_conf's callbacks);
 * arg is a kvs__ix_loader. */
typedef struct kvs__ix_loader {
  kvs__store *s;
  unsigned tier;
  size_t loaded, bad;
  uint64_t used; /* bytes to charge the tier once it is open */
} kvs__ix_loader;
int kvs__ix_load_record(void *arg, const kvs__skey *k, const uint8_t *rec, size_t len);
void kvs__ix_unload(void *arg);

#endif
