/* store.c - kvstashd's storage: an in-memory index over two RocksDB tiers and
 * a RAM tier.
 *
 *   T0  RAM: refcounted copies of hot values (byte budget, LRU order, the
 *       victim among the LRU tail chosen by score). A copy, never the only one.
 *   T1  RocksDB on data_dir. Every entry lives on exactly one disk tier.
 *   T2  RocksDB on cold_dir (optional). T1 demotes into it under pressure; a
 *       hit in T2 promotes back to T1 when T1 has room.
 *
 * RocksDB keys: 'm' || skey -> metadata record (record.c), 'v' || skey ->
 * encoded value (blob files when >= blob_min); both in one WriteBatch.
 *
 * Locks: `mu` guards the index and every entry field; the 256 striped rwlocks
 * serialize disk work per key (readers shared, writers exclusive). Order:
 * stripe, then mu; never two stripes except by trylock (eviction skips a busy
 * victim). The T0 fast path takes only mu. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <rocksdb/c.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "svc_int.h"

#define NSTRIPES 256
#define KEYLEN   25 /* 'm' or 'v' + skey */

/* --------------------------------------------------------------- buffers */
kvs__buf *kvs__buf_new(size_t len) {
  kvs__buf *b = malloc(sizeof *b + (len ? len : 1));
  if (!b) return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  b->data = b->inline_data;
  b->shm = NULL;
  b->shm_off = 0;
  return b;
}
kvs__buf *kvs__buf_new_shm(kvs__shm *m, size_t len) {
  uint64_t off;
  if (!m || !kvs__shm_alloc(m, len, &off)) return NULL;
  kvs__buf *b = malloc(sizeof *b);
  if (!b) {
    kvs__shm_free(m, off, len);
    return NULL;
  }
  atomic_init(&b->refs, 1);
  b->len = len;
  b->data = kvs__shm_base(m) + off;
  b->shm = m;
  b->shm_off = off;
  return b;
}
/* zero_freed of the process's store (one store per process in kvstashd; an
 * embedder with several gets zeroing when any of them asks for it). */
static atomic_int g_zero_freed;

void kvs__buf_ref(kvs__buf *b) { atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed); }
void kvs__buf_unref(kvs__buf *b) {
  if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
    /* the last ref: no reader and no lease sees these bytes any more */
    if (atomic_load_explicit(&g_zero_freed, memory_order_relaxed) && b->len)
      sodium_memzero(b->data, b->len);
    if (b->shm) kvs__shm_free(b->shm, b->shm_off, b->len); /* the range may be reused now */
    free(b);
  }
}
void kvs__vref_release(kvs__vref *v) {
  if (!v) return;
  kvs__buf_unref(v->buf);
  free(v->meta);
  memset(v, 0, sizeof *v);
}

/* ----------------------------------------------------------------- types */
typedef struct entry {
  kvs__skey sk;
  struct entry *hnext;
  struct entry *lprev, *lnext; /* T0 LRU, head = most recent */
  kvs_model_id model;
  uint8_t tier; /* disk tier: 1 or 2 */
  uint8_t pinned, quarantined, dirty;
  uint32_t n_tokens, ttl_s, tok_off;
  uint64_t value_bytes, disk_bytes, checksum, hits, created_ms, last_used_ms, expire_ms;
  uint8_t *meta; /* wire meta as stored; server fields patched on the way out */
  uint32_t meta_len;
  kvs__buf *t0;
} entry;

typedef struct tierdb {
  rocksdb_t *db;
  rocksdb_options_t *opt;
  uint64_t cap, used;
  pthread_mutex_t evict_mu;
  /* Free space on the tier's filesystem (see disk_room): a PUT needs
   * `reserve` left after it, any other write `floor`. */
  char dir[512];
  uint64_t reserve, floor;
  atomic_int full; /* 1 while writes are refused for space (logged on change) */
} tierdb;

#define MAX_SEGS   64
#define MAX_LEASES 65536

typedef struct lease {
  uint64_t id, expires_ms;
  uint8_t tid[8];
  kvs__buf *b;
} lease;

/* A tenant's quota and what it uses (docs/kvstashd.md, "Tenant quotas").
 * ram/disk/entries/pend_* are guarded by the store's mu; the bucket by rmu. */
typedef struct tquota {
  kvs_svc_quota q;
  uint8_t tid[8];
  uint64_t ram, disk, entries;      /* T0 copies, disk-tier bytes (T1 + T2), entries */
  uint64_t pend_disk, pend_entries; /* reserved by PUTs in flight */
  pthread_mutex_t rmu;
  double tokens;
  uint64_t last_ns;
  atomic_uint_fast64_t refused[KVS__QREF_N];
} tquota;

struct kvs__store {
  kvs_svc_config cfg;
  tquota *quota; /* cfg.n_quotas of them */
  int nquota;
  /* same-host fast path: one segment per tenant id, leases on their ranges */
  pthread_mutex_t shm_mu;
  struct {
    uint8_t tid[8];
    kvs__shm *seg;
  } segs[MAX_SEGS];
  int nsegs;
  char inst[9];  /* hex id of this daemon's data dir, in segment names */
  char nonce[9]; /* random per start: a client never maps a previous run's segment */
  lease *leases; /* guarded by mu */
  size_t nleases, capleases;
  uint64_t lease_seq;
  kvs__metrics *met;
  uint8_t secret[32];
  tierdb t[3]; /* [1], [2]; [0] unused */
  int has_cold;
  rocksdb_writeoptions_t *wo_sync, *wo_async;
  rocksdb_readoptions_t *ro;
  pthread_mutex_t mu;
  pthread_rwlock_t stripe[NSTRIPES];
  entry **bucket;
  size_t nbucket, count;
  entry *lru_head, *lru_tail;
  uint64_t t0_used;
  atomic_int closing;
};

static uint64_t sk_hash(const kvs__skey *k) {
  uint64_t h;
  memcpy(&h, k->b + 8, 8); /* salted bytes: already uniform */
  return h;
}
static pthread_rwlock_t *stripe_of(kvs__store *s, const kvs__skey *k) {
  return &s->stripe[sk_hash(k) % NSTRIPES];
}
static void dbkey(char out[KEYLEN], char kind, const kvs__skey *k) {
  out[0] = kind;
  memcpy(out + 1, k->b, 24);
}

/* ------------------------------------------------------------ keys, salt */
void kvs__store_tenant_id(const kvs__store *s, const char *tenant, uint8_t out[8]) {
  uint8_t in[1 + KVS_WIRE_TENANT_MAX], h[16];
  size_t tl = strnlen(tenant, KVS_WIRE_TENANT_MAX);
  in[0] = 'T';
  memcpy(in + 1, tenant, tl);
  crypto_generichash(h, 16, in, 1 + tl, s->secret, sizeof s->secret);
  memcpy(out, h, 8);
}

void kvs__store_skey(const kvs__store *s, const char *tenant, const kvs_key *key, kvs__skey *out) {
  uint8_t in[2 + KVS_WIRE_TENANT_MAX + 16];
  size_t tl = strnlen(tenant, KVS_WIRE_TENANT_MAX);
  in[0] = 'K';
  in[1] = (uint8_t)tl;
  memcpy(in + 2, tenant, tl);
  memcpy(in + 2 + tl, key->b, 16);
  kvs__store_tenant_id(s, tenant, out->b);
  crypto_generichash(out->b + 8, 16, in, 2 + tl + 16, s->secret, sizeof s->secret);
}

/* The tenant's segment, created on first use; NULL when shm is off or the
 * segment cannot be made. Takes shm_mu only. */
static kvs__shm *seg_for(kvs__store *s, const uint8_t tid[8]) {
  if (!s->cfg.shm) return NULL;
  kvs__shm *m = NULL;
  pthread_mutex_lock(&s->shm_mu);
  for (int i = 0; i < s->nsegs; i++)
    if (memcmp(s->segs[i].tid, tid, 8) == 0) m = s->segs[i].seg;
  if (!m && s->nsegs < MAX_SEGS) {
    char name[KVS_WIRE_SHM_NAME_MAX + 1];
    kvs_hash128 h;
    memcpy(h.b, tid, 8);
    memset(h.b + 8, 0, 8);
    char hex[33];
    kvs_hash128_hex(&h, hex);
    hex[16] = 0;
    snprintf(name, sizeof name, "/kvstash-%s-%s-%s", s->inst, s->nonce, hex);
    m = kvs__shm_create(name, s->cfg.shm_bytes ? s->cfg.shm_bytes : s->cfg.ram_bytes);
    if (m) {
      memcpy(s->segs[s->nsegs].tid, tid, 8);
      s->segs[s->nsegs++].seg = m;
    }
  }
  pthread_mutex_unlock(&s->shm_mu);
  return m;
}

/* A copy of value in the tenant's segment, or on the heap. */
static kvs__buf *t0_copy(kvs__store *s, const kvs__skey *k, const uint8_t *value, size_t n) {
  kvs__buf *b = kvs__buf_new_shm(seg_for(s, k->b), n);
  if (!b) b = kvs__buf_new(n);
  if (b) memcpy(b->data, value, n);
  return b;
}

/* ------------------------------------------------------------ the index */
/* The quota of the tenant whose id starts sk (NULL: none). */
static tquota *tq_of(kvs__store *s, const uint8_t *tid) {
  for (int i = 0; i < s->nquota; i++)
    if (memcmp(s->quota[i].tid, tid, 8) == 0) return &s->quota[i];
  return NULL;
}
/* Disk-tier bytes an entry holds (a quarantined one keeps only its record). */
static uint64_t charged(const entry *e) {
  return e->quarantined ? e->disk_bytes - e->value_bytes : e->disk_bytes;
}

static entry *find(kvs__store *s, const kvs__skey *k) {
  for (entry *e = s->bucket[sk_hash(k) & (s->nbucket - 1)]; e; e = e->hnext)
    if (memcmp(e->sk.b, k->b, 24) == 0) return e;
  return NULL;
}

static void insert(kvs__store *s, entry *e) {
  if (s->count + 1 > s->nbucket) {
    size_t nb = s->nbucket * 2;
    entry **nbk = calloc(nb, sizeof *nbk);
    if (nbk) {
      for (size_t i = 0; i < s->nbucket; i++) {
        entry *x = s->bucket[i];
        while (x) {
          entry *nx = x->hnext;
          size_t j = sk_hash(&x->sk) & (nb - 1);
          x->hnext = nbk[j];
          nbk[j] = x;
          x = nx;
        }
      }
      free(s->bucket);
      s->bucket = nbk;
      s->nbucket = nb;
    }
  }
  size_t j = sk_hash(&e->sk) & (s->nbucket - 1);
  e->hnext = s->bucket[j];
  s->bucket[j] = e;
  s->count++;
  tquota *q = tq_of(s, e->sk.b);
  if (q) {
    q->entries++;
    q->disk += charged(e);
  }
}

static void lru_unlink(kvs__store *s, entry *e) {
  if (e->lprev)
    e->lprev->lnext = e->lnext;
  else if (s->lru_head == e)
    s->lru_head = e->lnext;
  if (e->lnext)
    e->lnext->lprev = e->lprev;
  else if (s->lru_tail == e)
    s->lru_tail = e->lprev;
  e->lprev = e->lnext = NULL;
}
static void lru_front(kvs__store *s, entry *e) {
  lru_unlink(s, e);
  e->lnext = s->lru_head;
  if (s->lru_head) s->lru_head->lprev = e;
  s->lru_head = e;
  if (!s->lru_tail) s->lru_tail = e;
}
/* Drops the RAM copy (a reader holding a ref keeps the bytes alive). mu held. */
static void t0_drop(kvs__store *s, entry *e) {
  if (!e->t0) return;
  lru_unlink(s, e);
  s->t0_used -= e->value_bytes;
  tquota *q = tq_of(s, e->sk.b);
  if (q) q->ram -= e->value_bytes;
  kvs__buf_unref(e->t0);
  e->t0 = NULL;
}

static void remove_entry(kvs__store *s, entry *e) { /* mu held; frees e */
  size_t j = sk_hash(&e->sk) & (s->nbucket - 1);
  for (entry **pp = &s->bucket[j]; *pp; pp = &(*pp)->hnext)
    if (*pp == e) {
      *pp = e->hnext;
      break;
    }
  s->count--;
  tquota *q = tq_of(s, e->sk.b);
  if (q) {
    q->entries--;
    q->disk -= charged(e);
  }
  if (e->meta) kvs__event(s->met, KVS__EV_REMOVED, e->sk.b, e->meta, &e->model, e->tier);
  t0_drop(s, e);
  if (!e->quarantined)
    s->t[e->tier].used -= e->disk_bytes;
  else
    s->t[e->tier].used -= e->disk_bytes - e->value_bytes;
  free(e->meta);
  free(e);
}

static double model_cost(kvs__store *s, const kvs_model_id *m) {
  for (int i = 0; i < s->cfg.n_model_costs; i++)
    if (kvs_hash128_equal(&s->cfg.model_costs[i].model, m)) return s->cfg.model_costs[i].cost;
  return s->cfg.prefill_cost;
}

/* Recompute saved per byte, decayed by time since last use. */
static double score(kvs__store *s, const entry *e, uint64_t now_ms) {
  if (s->cfg.evict_lru) return (double)e->last_used_ms; /* oldest first */
  double age = now_ms > e->last_used_ms ? (double)(now_ms - e->last_used_ms) * 1e-3 : 0.0;
  double decay = s->cfg.half_life_s > 0 ? exp2(-age / s->cfg.half_life_s) : 1.0;
  return ((double)e->hits + 1.0) * (double)e->n_tokens * model_cost(s, &e->model) /
         ((double)e->value_bytes + 1.0) * decay;
}

/* Makes room in T0 for `need` bytes: among the 8 least recent, drop the one
 * that saves least per byte; repeat. mu held. */
static int t0_make_room(kvs__store *s, uint64_t need, const entry *keep) {
  uint64_t now = kvs_wall_ms();
  while (s->t0_used + need > s->cfg.ram_bytes) {
    entry *victim = NULL;
    double best = 0;
    int k = 0;
    for (entry *e = s->lru_tail; e && k < 8; e = e->lprev) {
      if (e == keep) continue;
      k++;
      double sc = score(s, e, now);
      if (!victim || sc < best) {
        victim = e;
        best = sc;
      }
    }
    if (!victim) return 0;
    t0_drop(s, victim);
  }
  return 1;
}

/* Keeps a RAM copy of e's value (takes a ref on b). mu held. */
static void t0_put(kvs__store *s, entry *e, kvs__buf *b) {
  if (!b || e->t0 || e->quarantined || s->cfg.ram_bytes == 0) return;
  if (e->value_bytes > s->cfg.ram_bytes / 2) return; /* one entry never flushes the tier */
  tquota *q = tq_of(s, e->sk.b);
  if (q && q->q.ram_bytes) { /* over its RAM quota: drop the tenant's own copies, LRU first */
    if (e->value_bytes > q->q.ram_bytes) return;
    for (entry *x = s->lru_tail; x && q->ram + e->value_bytes > q->q.ram_bytes;) {
      entry *prev = x->lprev;
      if (x != e && memcmp(x->sk.b, e->sk.b, 8) == 0) t0_drop(s, x);
      x = prev;
    }
    if (q->ram + e->value_bytes > q->q.ram_bytes) return;
  }
  if (!t0_make_room(s, e->value_bytes, e)) return;
  kvs__buf_ref(b);
  e->t0 = b;
  s->t0_used += e->value_bytes;
  if (q) q->ram += e->value_bytes;
  lru_front(s, e);
}

static int expired(const entry *e, uint64_t now_ms) {
  return e->expire_ms && now_ms >= e->expire_ms;
}

/* The stored meta with the server fields of e. */
static void patch_meta(const entry *e, uint8_t *meta, uint8_t tier) {
  meta[33] = tier;
  meta[34] = e->pinned;
  uint32_t ttl = e->ttl_s;
  memcpy(meta + 84, &ttl, 4);
  memcpy(meta + 104, &e->created_ms, 8);
  memcpy(meta + 112, &e->last_used_ms, 8);
  memcpy(meta + 120, &e->hits, 8);
}

/* A record (state) for e as it will sit on `tier`, malloc'd. mu held. */
static uint8_t *entry_record(const entry *e, int tier, uint8_t state, size_t *len) {
  uint8_t *meta = malloc(e->meta_len);
  if (!meta) return NULL;
  memcpy(meta, e->meta, e->meta_len);
  patch_meta(e, meta, (uint8_t)tier);
  kvs_wire_meta m;
  uint8_t *rec = NULL;
  if (kvs_wire_meta_decode(meta, e->meta_len, &m, NULL) == KVS_OK) {
    size_t rl = kvs__record_size(&m);
    rec = malloc(rl);
    if (rec && kvs__record_encode(&m, state, rec, rl, len) != KVS_OK) {
      free(rec);
      rec = NULL;
    }
  }
  free(meta);
  return rec;
}

static int tokens_match(const entry *e, const uint8_t *tokens_le, uint32_t n) {
  return n == e->n_tokens && memcmp(e->meta + e->tok_off, tokens_le, 4u * (size_t)n) == 0;
}

/* ------------------------------------------------------------- rocksdb */
static kvs_err rerr(char *err, const char *what) {
  if (!err) return KVS_OK;
  kvs_err e = strstr(err, "Corruption")                           ? KVS_ECORRUPT
              : strstr(err, "No space") || strstr(err, "NoSpace") ? KVS_ENOSPC
                                                                  : KVS_EIO;
  KVS_LOGE("store", "rocksdb error", "op=%s err=\"%s\"", what, err);
  free(err);
  return e;
}

/* ---------------------------------------------------------- disk space
 * RocksDB must never itself run out of space: Debian's build asserts (abort)
 * on the write after a failed WAL write, and a full disk at a flush stops the
 * DB. So every write first checks the filesystem's free space (statvfs, one
 * syscall): it must leave, after twice its own size (the WAL now, an SST or
 * blob file at the flush), `reserve` for a PUT and `floor` for everything
 * else (deletes, metadata, quarantine), which keeps RocksDB's own work (a
 * memtable flush, compaction, blob GC: bounded by the sizes set in open_db)
 * inside the reserve. Refused writes get KVS_ENOSPC and are counted
 * (nospace_refused); they succeed again by themselves once space is free. */
static uint64_t disk_avail(const tierdb *t) {
  struct statvfs v;
  if (statvfs(t->dir, &v) != 0) return UINT64_MAX; /* unknown: RocksDB will say */
  return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

static int disk_fits(const tierdb *t, uint64_t avail, uint64_t bytes, int is_put) {
  uint64_t keep = is_put ? t->reserve : t->floor;
  return avail >= keep && (avail - keep) / 2 >= bytes;
}

/* disk_fits, counted and logged when refused (writes a client asked for). */
static int disk_room(kvs__store *s, int tier, uint64_t bytes, int is_put) {
  tierdb *t = &s->t[tier];
  uint64_t avail = disk_avail(t);
  int ok = disk_fits(t, avail, bytes, is_put);
  if (!ok) {
    atomic_fetch_add_explicit(&s->met->nospace_refused, 1, memory_order_relaxed);
    if (atomic_exchange(&t->full, 1) == 0)
      KVS_LOGE("store", "disk nearly full: writes refused (KVS_ENOSPC) until space is freed",
               "tier=%d dir=%s avail=%llu reserve=%llu floor=%llu", tier, t->dir,
               (unsigned long long)avail, (unsigned long long)t->reserve,
               (unsigned long long)t->floor);

  } else if (is_put && atomic_exchange(&t->full, 0) == 1) {
    KVS_LOGI("store", "disk space available again: writes resume", "tier=%d avail=%llu", tier,
             (unsigned long long)avail);
  }
  return ok;
}

static kvs_err db_write(kvs__store *s, int tier, rocksdb_writebatch_t *wb, int sync) {
  size_t n = 0;
  (void)rocksdb_writebatch_data(wb, &n);
  if (!disk_room(s, tier, n, 0)) return KVS_ENOSPC;
  char *err = NULL;
  rocksdb_write(s->t[tier].db, sync ? s->wo_sync : s->wo_async, wb, &err);
  return rerr(err, "write");
}

static kvs_err db_del(kvs__store *s, int tier, const kvs__skey *k, int sync) {
  char km[KEYLEN], kv[KEYLEN];
  dbkey(km, 'm', k);
  dbkey(kv, 'v', k);
  rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
  rocksdb_writebatch_delete(wb, km, KEYLEN);
  rocksdb_writebatch_delete(wb, kv, KEYLEN);
  kvs_err e = db_write(s, tier, wb, sync);
  rocksdb_writebatch_destroy(wb);
  return e;
}

static kvs_err db_put(kvs__store *s, int tier, const kvs__skey *k, const uint8_t *rec,
                      size_t rec_len, const uint8_t *value, size_t vlen, int sync) {
  char km[KEYLEN], kv[KEYLEN];
  dbkey(km, 'm', k);
  dbkey(kv, 'v', k);
  rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
  rocksdb_writebatch_put(wb, km, KEYLEN, (const char *)rec, rec_len);
  rocksdb_writebatch_put(wb, kv, KEYLEN, (const char *)value, vlen);
  kvs_err e = db_write(s, tier, wb, sync);
  rocksdb_writebatch_destroy(wb);
  return e;
}

/* Reads and verifies a value into a new buffer. KVS_ECHECKSUM / KVS_ECORRUPT
 * mean the stored bytes are bad. */
static kvs_err db_read_value(kvs__store *s, int tier, const kvs__skey *k, uint64_t len,
                             uint64_t checksum, kvs__buf **out) {
  char kv[KEYLEN];
  dbkey(kv, 'v', k);
  char *err = NULL;
  rocksdb_pinnableslice_t *ps = rocksdb_get_pinned(s->t[tier].db, s->ro, kv, KEYLEN, &err);
  if (err) {
    kvs_err rc = rerr(err, "get");
    if (rc == KVS_ECORRUPT)
      atomic_fetch_add_explicit(&s->met->disk_corrupt, 1, memory_order_relaxed);
    return rc == KVS_ENOSPC ? KVS_EIO : rc;
  }
  if (!ps) return KVS_ENOENT;
  size_t n = 0;
  const char *v = rocksdb_pinnableslice_value(ps, &n);
  kvs_err rc = KVS_OK;
  if (n != len)
    rc = KVS_ECORRUPT;
  else if (kvs_checksum64(v, n) != checksum)
    rc = KVS_ECHECKSUM;
  if (rc == KVS_OK) {
    kvs__buf *b = kvs__buf_new(n);
    if (!b)
      rc = KVS_ENOMEM;
    else {
      memcpy(b->data, v, n);
      *out = b;
    }
  }
  rocksdb_pinnableslice_destroy(ps);
  return rc;
}

/* The stored bytes failed verification: never serve them again. */
static void quarantine(kvs__store *s, const kvs__skey *k, kvs_err why) {
  pthread_rwlock_t *sl = stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  int tier = 0;
  if (e && !e->quarantined) {
    t0_drop(s, e);
    tquota *q = tq_of(s, e->sk.b);
    if (q) q->disk -= e->value_bytes;
    e->quarantined = 1;
    s->t[e->tier].used -= e->value_bytes;
    tier = e->tier;
    rec = entry_record(e, e->tier, 1, &rl);
    char hex[33];
    kvs_hash128 kh;
    memcpy(kh.b, k->b + 8, 16);
    kvs_hash128_hex(&kh, hex);
    KVS_LOGE("store", "entry quarantined", "skey=%s tier=%d reason=%s bytes=%llu", hex, tier,
             kvs_errname(why), (unsigned long long)e->value_bytes);
    KVS__INC(s->met, KVS_STAT_QUARANTINES, 1);
  }
  pthread_mutex_unlock(&s->mu);
  if (tier) {
    char km[KEYLEN], kv[KEYLEN];
    dbkey(km, 'm', k);
    dbkey(kv, 'v', k);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    if (rec) rocksdb_writebatch_put(wb, km, KEYLEN, (const char *)rec, rl);
    rocksdb_writebatch_delete(wb, kv, KEYLEN);
    (void)db_write(s, tier, wb, 1);
    rocksdb_writebatch_destroy(wb);
  }
  free(rec);
  pthread_rwlock_unlock(sl);
}

/* ------------------------------------------------------------ eviction */
typedef struct cand {
  double score;
  kvs__skey sk;
} cand;
static int cand_cmp(const void *a, const void *b) {
  double x = ((const cand *)a)->score, y = ((const cand *)b)->score;
  return x < y ? -1 : x > y;
}

static kvs_err ensure_room(kvs__store *s, int tier, uint64_t need);

/* Frees one entry's bytes in `tier`: demotes it T1 -> T2 when there is a T2
 * with room, else drops it. Returns 1 when bytes were freed. */
static int evict_one(kvs__store *s, int tier, const kvs__skey *k) {
  pthread_rwlock_t *sl = stripe_of(s, k);
  if (pthread_rwlock_trywrlock(sl) != 0) return 0; /* busy (maybe our own PUT): skip */
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  if (!e || e->tier != tier || e->pinned) {
    pthread_mutex_unlock(&s->mu);
    pthread_rwlock_unlock(sl);
    return 0;
  }
  int demote = tier == 1 && s->has_cold && !e->quarantined;
  uint64_t vlen = e->value_bytes, ck = e->checksum, db = e->disk_bytes;
  kvs__buf *val = NULL;
  uint8_t *rec = NULL;
  size_t rl = 0;
  if (demote) {
    if (e->t0) {
      val = e->t0;
      kvs__buf_ref(val);
    }
    rec = entry_record(e, 2, 0, &rl);
    if (!rec) demote = 0;
  }
  pthread_mutex_unlock(&s->mu);
  if (demote &&
      (ensure_room(s, 2, db) != KVS_OK || !disk_fits(&s->t[2], disk_avail(&s->t[2]), db, 1)))
    demote = 0; /* no room on T2's disk: dropped instead */
  if (demote && !val) {
    kvs_err rc = db_read_value(s, 1, k, vlen, ck, &val);
    if (rc == KVS_ECHECKSUM || rc == KVS_ECORRUPT) {
      free(rec);
      pthread_rwlock_unlock(sl);
      quarantine(s, k, rc);
      return 1;
    }
    if (rc != KVS_OK) demote = 0;
  }
  int sync = s->cfg.durability_sync;
  if (demote && db_put(s, 2, k, rec, rl, val->data, val->len, sync) == KVS_OK) {
    (void)db_del(s, 1, k, sync);
    pthread_mutex_lock(&s->mu);
    e = find(s, k);
    if (e) {
      e->tier = 2;
      s->t[1].used -= db;
      s->t[2].used += db;
    }
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add_explicit(&s->met->demotions, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->met->bytes_demoted, db, memory_order_relaxed);
  } else {
    (void)db_del(s, tier, k, sync);
    pthread_mutex_lock(&s->mu);
    e = find(s, k);
    if (e) remove_entry(s, e);
    pthread_mutex_unlock(&s->mu);
    KVS__INC(s->met, KVS_STAT_EVICTIONS, 1);
  }
  kvs__buf_unref(val);
  free(rec);
  pthread_rwlock_unlock(sl);
  return 1;
}

/* Ensures tier has room for `need` more bytes, evicting down to 90% of the
 * capacity by ascending score (pins are never evicted). KVS_ENOSPC when the
 * pinned and busy entries alone leave no room. */
static kvs_err ensure_room(kvs__store *s, int tier, uint64_t need) {
  tierdb *t = &s->t[tier];
  pthread_mutex_lock(&t->evict_mu);
  pthread_mutex_lock(&s->mu);
  if (t->used + need <= t->cap) {
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&t->evict_mu);
    return KVS_OK;
  }
  uint64_t low = t->cap / 10 * 9;
  uint64_t target = low > need ? low - need : 0;
  size_t nc = 0, cap = s->count ? s->count : 1;
  cand *c = malloc(cap * sizeof *c);
  uint64_t now = kvs_wall_ms();
  for (size_t i = 0; c && i < s->nbucket; i++)
    for (entry *e = s->bucket[i]; e; e = e->hnext)
      if (e->tier == tier && !e->pinned && nc < cap) {
        c[nc].score = e->quarantined ? -1.0 : score(s, e, now);
        c[nc].sk = e->sk;
        nc++;
      }
  pthread_mutex_unlock(&s->mu);
  if (c) qsort(c, nc, sizeof *c, cand_cmp);
  for (size_t i = 0; i < nc; i++) {
    pthread_mutex_lock(&s->mu);
    int done = t->used <= target;
    pthread_mutex_unlock(&s->mu);
    if (done) break;
    evict_one(s, tier, &c[i].sk);
  }
  free(c);
  pthread_mutex_lock(&s->mu);
  int ok = t->used + need <= t->cap;
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&t->evict_mu);
  return ok ? KVS_OK : KVS_ENOSPC;
}

/* ----------------------------------------------------------------- PUT */
/* Checks a PUT of `need` disk bytes against its tenant's disk and entries
 * quotas, counting what the entry it replaces frees, and reserves them
 * (*qo set; the caller gives them back). KVS_EQUOTA (counted) when over. */
static kvs_err quota_reserve(kvs__store *s, const kvs__skey *k, uint64_t need, tquota **qo) {
  *qo = NULL;
  tquota *q = tq_of(s, k->b);
  if (!q) return KVS_OK;
  kvs_err rc = KVS_OK;
  pthread_mutex_lock(&s->mu);
  entry *old = find(s, k);
  uint64_t freed = old ? charged(old) : 0, freed_n = old ? 1 : 0;
  if (q->q.disk_bytes && q->disk + q->pend_disk + need > q->q.disk_bytes + freed) {
    atomic_fetch_add_explicit(&q->refused[KVS__QREF_DISK], 1, memory_order_relaxed);
    rc = KVS_EQUOTA;
  } else if (q->q.entries && q->entries + q->pend_entries + 1 > q->q.entries + freed_n) {
    atomic_fetch_add_explicit(&q->refused[KVS__QREF_ENTRIES], 1, memory_order_relaxed);
    rc = KVS_EQUOTA;
  } else {
    q->pend_disk += need;
    q->pend_entries++;
    *qo = q;
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int kvs__store_quota(kvs__store *s, int i, kvs__quota_view *out) {
  if (i < 0 || i >= s->nquota) return 0;
  tquota *q = &s->quota[i];
  pthread_mutex_lock(&s->mu);
  out->q = q->q;
  out->ram = q->ram;
  out->disk = q->disk;
  out->entries = q->entries;
  pthread_mutex_unlock(&s->mu);
  for (int j = 0; j < KVS__QREF_N; j++)
    out->refused[j] = atomic_load_explicit(&q->refused[j], memory_order_relaxed);
  return 1;
}

kvs_err kvs__store_admit(kvs__store *s, const char *tenant) {
  for (int i = 0; i < s->nquota; i++) {
    tquota *q = &s->quota[i];
    if (q->q.rate <= 0 || strcmp(q->q.tenant, tenant) != 0) continue;
    uint64_t now = kvs_now_ns();
    pthread_mutex_lock(&q->rmu);
    if (now > q->last_ns) {
      q->tokens += (double)(now - q->last_ns) * 1e-9 * q->q.rate;
      if (q->tokens > q->q.burst) q->tokens = q->q.burst;
      q->last_ns = now;
    }
    int ok = q->tokens >= 1.0;
    if (ok) q->tokens -= 1.0;
    pthread_mutex_unlock(&q->rmu);
    if (ok) return KVS_OK;
    atomic_fetch_add_explicit(&q->refused[KVS__QREF_RATE], 1, memory_order_relaxed);
    return KVS_EQUOTA;
  }
  return KVS_OK;
}

kvs_err kvs__store_put(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                       const uint8_t *value, uint32_t flags, int keep_server_fields) {
  if (atomic_load(&s->closing)) return KVS_EBUSY;
  if (kvs_checksum64(value, (size_t)m->value_bytes) != m->checksum) return KVS_ECHECKSUM;
  kvs_wire_meta mm = *m;
  uint64_t now = kvs_wall_ms();
  if (!keep_server_fields) {
    mm.created_ms = now;
    mm.last_used_ms = now;
    mm.hits = 0;
    mm.pinned = 0;
  }
  if (mm.ttl_s == 0 && !keep_server_fields) mm.ttl_s = s->cfg.default_ttl_s;
  mm.tier = 1;
  mm.flags = 0;
  size_t ml = kvs_wire_meta_size(&mm);
  size_t rl = ml + KVS__REC_HEAD;
  uint8_t *rec = malloc(rl);
  uint8_t *meta = malloc(ml);
  entry *ne = calloc(1, sizeof *ne);
  kvs__buf *copy = NULL;
  tquota *q = NULL; /* set while this PUT holds a reservation in its tenant's quota */
  uint64_t need = 0;
  kvs_err rc = KVS_ENOMEM;
  if (!rec || !meta || !ne) goto out;
  rc = kvs__record_encode(&mm, 0, rec, rl, &rl);
  if (rc != KVS_OK) goto out;
  memcpy(meta, rec + KVS__REC_HEAD, ml);
  need = rl + mm.value_bytes;
  rc = KVS_ETOOBIG;
  if (need > s->t[1].cap) goto out;
  rc = quota_reserve(s, k, need, &q); /* before ensure_room: never evicts others for it */
  if (rc != KVS_OK) goto out;
  if (s->cfg.ram_bytes && mm.value_bytes <= s->cfg.ram_bytes / 2)
    copy = t0_copy(s, k, value, (size_t)mm.value_bytes);
  rc = ensure_room(s, 1, need);
  if (rc != KVS_OK) goto out;
  rc = KVS_ENOSPC;
  if (!disk_room(s, 1, need, 1)) goto out; /* before RocksDB can run out */

  pthread_rwlock_t *sl = stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  entry *old = find(s, k);
  if ((flags & KVS_WIRE_F_NX) && old && !old->quarantined && !expired(old, now)) {
    pthread_mutex_unlock(&s->mu);
    pthread_rwlock_unlock(sl);
    rc = KVS_EEXIST;
    goto out;
  }
  int old_tier = old ? old->tier : 0;
  pthread_mutex_unlock(&s->mu);
  int sync = s->cfg.durability_sync || (flags & KVS_WIRE_F_SYNC);
  rc = db_put(s, 1, k, rec, rl, value, (size_t)mm.value_bytes, sync);
  if (rc == KVS_OK && old_tier == 2) (void)db_del(s, 2, k, sync);
  if (rc == KVS_OK) {
    pthread_mutex_lock(&s->mu);
    old = find(s, k);
    if (old) remove_entry(s, old);
    ne->sk = *k;
    ne->model = mm.model;
    ne->tier = 1;
    ne->pinned = mm.pinned;
    ne->n_tokens = mm.n_tokens;
    ne->ttl_s = mm.ttl_s;
    ne->tok_off = KVS_WIRE_META_FIXED + 8u * mm.n_segments;
    ne->value_bytes = mm.value_bytes;
    ne->disk_bytes = need;
    ne->checksum = mm.checksum;
    ne->hits = mm.hits;
    ne->created_ms = mm.created_ms;
    ne->last_used_ms = mm.last_used_ms;
    ne->expire_ms = mm.ttl_s ? now + 1000ull * mm.ttl_s : 0;
    ne->meta = meta;
    ne->meta_len = (uint32_t)ml;
    meta = NULL;
    insert(s, ne);
    kvs__event(s->met, KVS__EV_STORED, ne->sk.b, ne->meta, &ne->model, 1); /* cluster.c */
    s->t[1].used += need;
    t0_put(s, ne, copy);
    ne = NULL;
    pthread_mutex_unlock(&s->mu);
    KVS__INC(s->met, KVS_STAT_PUTS, 1);
  }
  pthread_rwlock_unlock(sl);
out:
  if (q) {
    pthread_mutex_lock(&s->mu);
    q->pend_disk -= need;
    q->pend_entries--;
    pthread_mutex_unlock(&s->mu);
  }
  kvs__buf_unref(copy);
  free(rec);
  free(meta);
  free(ne);
  return rc;
}

/* ----------------------------------------------------------------- GET */
static void fill_vref(kvs__store *s, entry *e, kvs__buf *b, uint8_t tier, kvs__vref *out) {
  (void)s;
  out->buf = b;
  out->tier = tier;
  out->meta = malloc(e->meta_len);
  if (out->meta) {
    memcpy(out->meta, e->meta, e->meta_len);
    patch_meta(e, out->meta, tier);
    out->meta_len = e->meta_len;
    if (kvs_wire_meta_decode(out->meta, out->meta_len, &out->m, NULL) != KVS_OK) {
      free(out->meta);
      out->meta = NULL;
      out->meta_len = 0;
    }
  }
}

static kvs_err check_hit(entry *e, const kvs_model_id *model, const uint8_t *tokens_le,
                         uint32_t n_tokens, uint64_t now) {
  if (!e || expired(e, now)) return KVS_ENOENT;
  if (e->quarantined) return KVS_EQUARANTINE;
  if (model && !kvs_hash128_equal(&e->model, model)) return KVS_EMODEL;
  if (tokens_le && !tokens_match(e, tokens_le, n_tokens)) return KVS_ETOKENS;
  return KVS_OK;
}

/* A hit: counted, and the idle TTL starts again. mu held. */
static void touch(entry *e, uint64_t now) {
  e->hits++;
  e->last_used_ms = now;
  e->expire_ms = e->ttl_s ? now + 1000ull * e->ttl_s : 0;
  e->dirty = 1;
}

static void promote(kvs__store *s, const kvs__skey *k, kvs__buf *val) {
  pthread_rwlock_t *sl = stripe_of(s, k);
  if (pthread_rwlock_trywrlock(sl) != 0) return;
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  uint64_t db = 0;
  if (e && e->tier == 2 && !e->quarantined && s->t[1].used + e->disk_bytes <= s->t[1].cap &&
      disk_fits(&s->t[1], disk_avail(&s->t[1]), e->disk_bytes, 1)) {
    rec = entry_record(e, 1, 0, &rl);
    db = e->disk_bytes;
  }
  pthread_mutex_unlock(&s->mu);
  int sync = s->cfg.durability_sync;
  if (rec && db_put(s, 1, k, rec, rl, val->data, val->len, sync) == KVS_OK) {
    (void)db_del(s, 2, k, sync);
    pthread_mutex_lock(&s->mu);
    e = find(s, k);
    if (e) {
      e->tier = 1;
      s->t[2].used -= db;
      s->t[1].used += db;
    }
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add_explicit(&s->met->promotions, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->met->bytes_promoted, db, memory_order_relaxed);
  }
  free(rec);
  pthread_rwlock_unlock(sl);
}

static kvs_err get_impl(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                        const uint8_t *tokens_le, uint32_t n_tokens, int count_hit,
                        kvs__vref *out) {
  memset(out, 0, sizeof *out);
  uint64_t now = kvs_wall_ms();
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  kvs_err rc = check_hit(e, model, tokens_le, n_tokens, now);
  if (rc == KVS_OK && e->t0) { /* T0: no disk, no stripe */
    kvs__buf_ref(e->t0);
    if (count_hit) {
      touch(e, now);
      lru_front(s, e);
    }
    fill_vref(s, e, e->t0, 0, out);
    pthread_mutex_unlock(&s->mu);
    return out->meta ? KVS_OK : (kvs__vref_release(out), KVS_ENOMEM);
  }
  pthread_mutex_unlock(&s->mu);
  if (rc != KVS_OK) return rc;
  if (count_hit == 2) return KVS_EAGAIN; /* T0 only: the caller may not block */

  pthread_rwlock_t *sl = stripe_of(s, k);
  pthread_rwlock_rdlock(sl);
  pthread_mutex_lock(&s->mu);
  e = find(s, k);
  rc = check_hit(e, model, tokens_le, n_tokens, now);
  int tier = rc == KVS_OK ? e->tier : 0;
  uint64_t vlen = rc == KVS_OK ? e->value_bytes : 0, ck = rc == KVS_OK ? e->checksum : 0;
  kvs__buf *b = NULL;
  if (rc == KVS_OK && e->t0) { /* filled meanwhile */
    b = e->t0;
    kvs__buf_ref(b);
    tier = 0;
  }
  pthread_mutex_unlock(&s->mu);
  if (rc == KVS_OK && !b) rc = db_read_value(s, tier, k, vlen, ck, &b);
  pthread_rwlock_unlock(sl);
  if (rc == KVS_ECHECKSUM || rc == KVS_ECORRUPT || (rc == KVS_ENOENT && tier)) {
    quarantine(s, k, rc);
    return KVS_EQUARANTINE;
  }
  if (rc != KVS_OK) return rc;
  kvs__buf *t0b = b; /* what T0 keeps: in the tenant's segment when shm is on */
  if (count_hit && s->cfg.shm && !b->shm && b->len <= s->cfg.ram_bytes / 2) {
    kvs__buf *sb = kvs__buf_new_shm(seg_for(s, k->b), b->len);
    if (sb) {
      memcpy(sb->data, b->data, b->len);
      t0b = sb;
    }
  }
  pthread_mutex_lock(&s->mu);
  e = find(s, k);
  if (!e) { /* deleted while we read: serve nothing rather than a ghost */
    pthread_mutex_unlock(&s->mu);
    if (t0b != b) kvs__buf_unref(t0b);
    kvs__buf_unref(b);
    return KVS_ENOENT;
  }
  if (count_hit) {
    touch(e, now);
    t0_put(s, e, t0b);
  }
  if (t0b != b) kvs__buf_unref(t0b);
  fill_vref(s, e, b, (uint8_t)tier, out);
  pthread_mutex_unlock(&s->mu);
  if (!out->meta) {
    kvs__vref_release(out);
    return KVS_ENOMEM;
  }
  if (tier == 2 && count_hit) promote(s, k, b);
  return KVS_OK;
}

kvs_err kvs__store_get(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                       const uint8_t *tokens_le, uint32_t n_tokens, kvs__vref *out) {
  kvs_err rc = get_impl(s, k, model, tokens_le, n_tokens, 1, out);
  KVS__INC(s->met, rc == KVS_OK ? KVS_STAT_HITS : KVS_STAT_MISSES, 1);
  return rc;
}

kvs_err kvs__store_get_t0(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                          const uint8_t *tokens_le, uint32_t n_tokens, kvs__vref *out) {
  kvs_err rc = get_impl(s, k, model, tokens_le, n_tokens, 2, out);
  if (rc != KVS_EAGAIN) KVS__INC(s->met, rc == KVS_OK ? KVS_STAT_HITS : KVS_STAT_MISSES, 1);
  return rc;
}

kvs_err kvs__store_read(kvs__store *s, const kvs__skey *k, kvs__vref *out) {
  return get_impl(s, k, NULL, NULL, 0, 0, out);
}

int kvs__store_probe(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                     const uint8_t *tokens_le, uint32_t n_tokens) {
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  int r = 0;
  if (check_hit(e, model, tokens_le, n_tokens, kvs_wall_ms()) == KVS_OK)
    r = 1 + (e->t0 ? 0 : e->tier);
  pthread_mutex_unlock(&s->mu);
  return r;
}

kvs_err kvs__store_exists(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                          kvs_wire_exists_resp *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  kvs_err rc = check_hit(e, model, NULL, 0, kvs_wall_ms());
  if (rc == KVS_OK) {
    out->present = 1;
    out->tier = e->t0 ? 0 : e->tier;
    out->pinned = e->pinned;
    out->value_bytes = e->value_bytes;
  }
  pthread_mutex_unlock(&s->mu);
  return rc == KVS_ENOENT || rc == KVS_EMODEL ? KVS_OK : rc;
}

/* ------------------------------------------------------------- leases */
kvs_err kvs__store_lease(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                         const uint8_t *tokens_le, uint32_t n_tokens, int may_block,
                         kvs__lease_out *out) {
  memset(out, 0, sizeof *out);
  if (!s->cfg.shm) return KVS_ENOTSUP;
  for (int attempt = 0; attempt < 2; attempt++) {
    uint64_t now = kvs_wall_ms();
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, k);
    kvs_err rc = check_hit(e, model, tokens_le, n_tokens, now);
    if (rc == KVS_OK && e->t0 && e->t0->shm) {
      if (s->nleases >= MAX_LEASES) {
        pthread_mutex_unlock(&s->mu);
        return KVS_EBUSY;
      }
      if (s->nleases == s->capleases) {
        size_t nc = s->capleases ? 2 * s->capleases : 256;
        lease *nl = realloc(s->leases, nc * sizeof *nl);
        if (!nl) {
          pthread_mutex_unlock(&s->mu);
          return KVS_ENOMEM;
        }
        s->leases = nl;
        s->capleases = nc;
      }
      touch(e, now);
      kvs__buf *b = e->t0;
      lease *l = &s->leases[s->nleases++];
      l->id = ++s->lease_seq;
      l->expires_ms = now + s->cfg.lease_ms;
      memcpy(l->tid, k->b, 8);
      l->b = b;
      kvs__buf_ref(b); /* the lease's */
      kvs__buf_ref(b); /* out->v's */
      fill_vref(s, e, b, 0, &out->v);
      out->lease_id = l->id;
      out->expires_ms = l->expires_ms;
      out->offset = b->shm_off;
      snprintf(out->shm_name, sizeof out->shm_name, "%s", kvs__shm_name(b->shm));
      pthread_mutex_unlock(&s->mu);
      KVS__INC(s->met, KVS_STAT_HITS, 1);
      if (!out->v.meta) {
        kvs__vref_release(&out->v);
        (void)kvs__store_release(s, k->b, out->lease_id);
        return KVS_ENOMEM;
      }
      return KVS_OK;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != KVS_OK) {
      KVS__INC(s->met, KVS_STAT_MISSES, 1);
      return rc;
    }
    if (!may_block || attempt == 1) return KVS_EAGAIN;
    /* read it (from disk) into T0, which places it in the segment, then retry */
    kvs__vref v;
    rc = get_impl(s, k, model, tokens_le, n_tokens, 1, &v);
    if (rc != KVS_OK) return rc;
    kvs__vref_release(&v);
  }
  return KVS_EAGAIN;
}

kvs_err kvs__store_release(kvs__store *s, const uint8_t tenant_id[8], uint64_t lease_id) {
  kvs__buf *b = NULL;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nleases; i++)
    if (s->leases[i].id == lease_id && memcmp(s->leases[i].tid, tenant_id, 8) == 0) {
      b = s->leases[i].b;
      s->leases[i] = s->leases[--s->nleases];
      break;
    }
  pthread_mutex_unlock(&s->mu);
  if (!b) return KVS_ENOENT;
  kvs__buf_unref(b);
  return KVS_OK;
}

static void expire_leases(kvs__store *s, uint64_t now, int all) {
  enum { B = 256 };
  kvs__buf *drop[B];
  int n;
  do {
    n = 0;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->nleases && n < B;) {
      if (all || s->leases[i].expires_ms <= now) {
        drop[n++] = s->leases[i].b;
        s->leases[i] = s->leases[--s->nleases];
      } else {
        i++;
      }
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++)
      kvs__buf_unref(drop[i]);
  } while (n == B);
}

/* ----------------------------------------------- delete, pin, ttl, stats */
static kvs_err delete_impl(kvs__store *s, const kvs__skey *k, int only_expired) {
  pthread_rwlock_t *sl = stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  int tier = 0;
  if (e && (!only_expired || expired(e, kvs_wall_ms()))) tier = e->tier;
  pthread_mutex_unlock(&s->mu);
  kvs_err rc = tier ? db_del(s, tier, k, s->cfg.durability_sync) : KVS_ENOENT;
  if (rc == KVS_OK) {
    pthread_mutex_lock(&s->mu);
    e = find(s, k);
    if (e) remove_entry(s, e);
    pthread_mutex_unlock(&s->mu);
  }
  pthread_rwlock_unlock(sl);
  return rc;
}

kvs_err kvs__store_delete(kvs__store *s, const kvs__skey *k) { return delete_impl(s, k, 0); }

/* Rewrites e's metadata record. sync: pins and TTLs follow the durability
 * mode; hit counters (advisory) never wait for an fsync. */
static kvs_err rewrite_meta(kvs__store *s, const kvs__skey *k, int sync) {
  pthread_rwlock_t *sl = stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  int tier = 0;
  kvs_err rc = KVS_ENOENT;
  if (e) {
    tier = e->tier;
    rec = entry_record(e, tier, e->quarantined, &rl);
    e->dirty = 0;
    rc = rec ? KVS_OK : KVS_ENOMEM;
  }
  pthread_mutex_unlock(&s->mu);
  if (rec) {
    char km[KEYLEN];
    dbkey(km, 'm', k);
    char *err = NULL;
    if (disk_room(s, tier, rl + KEYLEN, 0)) {
      rocksdb_put(s->t[tier].db, sync && s->cfg.durability_sync ? s->wo_sync : s->wo_async, km,
                  KEYLEN, (const char *)rec, rl, &err);
      rc = rerr(err, "put meta");
    } else {
      rc = KVS_ENOSPC;
    }
  }
  free(rec);
  pthread_rwlock_unlock(sl);
  return rc;
}

kvs_err kvs__store_pin(kvs__store *s, const kvs__skey *k, int pin) {
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  kvs_err rc = check_hit(e, NULL, NULL, 0, kvs_wall_ms());
  if (rc == KVS_OK) e->pinned = pin ? 1 : 0;
  pthread_mutex_unlock(&s->mu);
  return rc == KVS_OK ? rewrite_meta(s, k, 1) : rc;
}

kvs_err kvs__store_ttl(kvs__store *s, const kvs__skey *k, uint32_t ttl_s) {
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  kvs_err rc = check_hit(e, NULL, NULL, 0, kvs_wall_ms());
  if (rc == KVS_OK) {
    uint64_t now = kvs_wall_ms();
    e->ttl_s = ttl_s;
    e->last_used_ms = now;
    e->expire_ms = ttl_s ? now + 1000ull * ttl_s : 0;
  }
  pthread_mutex_unlock(&s->mu);
  return rc == KVS_OK ? rewrite_meta(s, k, 1) : rc;
}

void kvs__store_stats(kvs__store *s, uint64_t *v) {
  for (int i = 0; i < KVS__STAT_COUNT; i++)
    v[i] = atomic_load_explicit(&s->met->stat[i], memory_order_relaxed);
  pthread_mutex_lock(&s->mu);
  v[KVS_STAT_ENTRIES] = s->count;
  v[KVS_STAT_BYTES_T0] = s->t0_used;
  v[KVS_STAT_BYTES_T1] = s->t[1].used;
  v[KVS_STAT_BYTES_T2] = s->t[2].used;
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_lock(&s->shm_mu);
  v[KVS_STAT_LEASES] = (uint64_t)s->nleases;
  pthread_mutex_unlock(&s->shm_mu);
}

int kvs__store_has_cold(const kvs__store *s) { return s->has_cold; }

uint64_t kvs__store_rocksdb_prop(kvs__store *s, int tier, const char *prop) {
  if (tier < 1 || tier > 2 || !s->t[tier].db) return 0;
  char *v = rocksdb_property_value(s->t[tier].db, prop);
  uint64_t r = v ? strtoull(v, NULL, 10) : 0;
  free(v);
  return r;
}

/* ---------------------------------------------------------------- list */
static void item_of(const entry *e, kvs__item *it) {
  memset(it, 0, sizeof *it);
  it->sk = e->sk;
  memcpy(it->it.key.b, e->meta, 16);
  it->it.model = e->model;
  it->it.n_tokens = e->n_tokens;
  it->it.key_kind = e->meta[32];
  it->it.tier = e->t0 ? 0 : e->tier;
  it->it.pinned = e->pinned;
  it->it.value_bytes = e->value_bytes;
  it->it.hits = e->hits;
  it->it.last_used_ms = e->last_used_ms;
  it->it.created_ms = e->created_ms;
  it->it.ttl_s = e->ttl_s;
  it->quarantined = e->quarantined;
}

static int item_cmp(const void *a, const void *b) {
  return memcmp(((const kvs__item *)a)->sk.b + 8, ((const kvs__item *)b)->sk.b + 8, 16);
}

kvs_err kvs__store_list(kvs__store *s, const uint8_t tenant_id[8], const uint8_t *cursor,
                        uint32_t limit, kvs__item *items, uint32_t *n, int *more) {
  *n = 0;
  *more = 0;
  pthread_mutex_lock(&s->mu);
  size_t cap = s->count ? s->count : 1, k = 0;
  kvs__item *all = malloc(cap * sizeof *all);
  if (!all) {
    pthread_mutex_unlock(&s->mu);
    return KVS_ENOMEM;
  }
  uint64_t now = kvs_wall_ms();
  for (size_t i = 0; i < s->nbucket; i++)
    for (entry *e = s->bucket[i]; e; e = e->hnext) {
      if (memcmp(e->sk.b, tenant_id, 8) != 0 || expired(e, now)) continue;
      if (cursor && memcmp(e->sk.b + 8, cursor, 16) <= 0) continue;
      if (k < cap) item_of(e, &all[k++]);
    }
  pthread_mutex_unlock(&s->mu);
  qsort(all, k, sizeof *all, item_cmp);
  uint32_t take = k < limit ? (uint32_t)k : limit;
  memcpy(items, all, take * sizeof *all);
  *n = take;
  *more = k > take;
  free(all);
  return KVS_OK;
}

kvs_err kvs__store_info(kvs__store *s, const kvs__skey *k, kvs__item *out) {
  pthread_mutex_lock(&s->mu);
  entry *e = find(s, k);
  kvs_err rc = e && !expired(e, kvs_wall_ms()) ? KVS_OK : KVS_ENOENT;
  if (rc == KVS_OK) item_of(e, out);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* ------------------------------------------------------ maintenance */
void kvs__store_tick(kvs__store *s, int flush_counters) {
  enum { BATCH = 256 };
  kvs__skey ks[BATCH];
  int n = 0;
  uint64_t now = kvs_wall_ms();
  expire_leases(s, now, 0);
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket && n < BATCH; i++)
    for (entry *e = s->bucket[i]; e && n < BATCH; e = e->hnext)
      if (expired(e, now)) ks[n++] = e->sk;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < n; i++)
    if (delete_impl(s, &ks[i], 1) == KVS_OK) KVS__INC(s->met, KVS_STAT_EXPIRED, 1);
  /* hit counters and last-used times go to disk lazily */
  if (!flush_counters) return;
  n = 0;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket && n < BATCH; i++)
    for (entry *e = s->bucket[i]; e && n < BATCH; e = e->hnext)
      if (e->dirty) ks[n++] = e->sk;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < n; i++)
    (void)rewrite_meta(s, &ks[i], 0);
}

/* ------------------------------------------------------- open, close */
static kvs_err mkdirs(const char *path) {
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return kvs_err_from_errno(errno);
      *p = '/';
    }
  if (mkdir(tmp, 0700) != 0 && errno != EEXIST) return kvs_err_from_errno(errno);
  return KVS_OK;
}

static kvs_err load_secret(kvs__store *s) {
  char path[600];
  snprintf(path, sizeof path, "%s/secret", s->cfg.data_dir);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t r = read(fd, s->secret, sizeof s->secret);
    close(fd);
    if (r != (ssize_t)sizeof s->secret) {
      KVS_LOGE("store", "server secret unreadable", "path=%s", path);
      return KVS_ECORRUPT;
    }
    return KVS_OK;
  }
  randombytes_buf(s->secret, sizeof s->secret);
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return kvs_err_from_errno(errno);
  ssize_t w = write(fd, s->secret, sizeof s->secret);
  int ok = w == (ssize_t)sizeof s->secret && fsync(fd) == 0;
  close(fd);
  if (!ok) return KVS_EIO;
  KVS_LOGI("store", "created server secret", "path=%s", path);
  return KVS_OK;
}

static uint64_t clamp_u64(uint64_t v, uint64_t lo, uint64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

static kvs_err open_db(kvs__store *s, int tier, const char *dir) {
  KVS_TRY(mkdirs(dir));
  /* What RocksDB writes on its own (a memtable flush, a blob file) scales
   * with the filesystem, and the PUT reserve covers it (disk_room): two
   * memtables plus the WAL, two blob files, 1 MiB. 64 MiB memtables and
   * 256 MiB blob files from 2 GiB / 8 GiB filesystems up. */
  tierdb *t = &s->t[tier];
  snprintf(t->dir, sizeof t->dir, "%s", dir);
  struct statvfs v;
  uint64_t fs = statvfs(dir, &v) == 0 ? (uint64_t)v.f_blocks * v.f_frsize : (64ull << 30);
  uint64_t wb = clamp_u64(fs / 32, 1ull << 20, 64ull << 20);
  uint64_t blob = clamp_u64(fs / 32, 1ull << 20, 256ull << 20);
  t->reserve = 3 * wb + 2 * blob + (1ull << 20);
  t->floor = wb + (1ull << 20); /* a delete or metadata write: one WAL file to open */
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(o, 1);
  rocksdb_options_set_paranoid_checks(o, 1);
  rocksdb_options_increase_parallelism(o, 2);
  rocksdb_options_set_enable_blob_files(o, 1);
  rocksdb_options_set_min_blob_size(o, s->cfg.blob_min);
  rocksdb_options_set_blob_file_size(o, blob);
  rocksdb_options_set_enable_blob_gc(o, 1);
  rocksdb_options_set_write_buffer_size(o, wb);
  rocksdb_options_set_max_total_wal_size(o, 8 * wb);
  rocksdb_options_set_keep_log_file_num(o, 3);
  char *err = NULL;
  rocksdb_t *db = rocksdb_open(o, dir, &err);
  if (err) {
    kvs_err rc = strstr(err, "Corruption") ? KVS_ECORRUPT : KVS_EIO;
    KVS_LOGE("store", "cannot open RocksDB", "dir=%s err=\"%s\"", dir, err);
    free(err);
    rocksdb_options_destroy(o);
    return rc;
  }
  s->t[tier].db = db;
  s->t[tier].opt = o;
  KVS_LOGI("store", "tier opened", "tier=%d dir=%s fs_bytes=%llu reserve=%llu memtable=%llu", tier,
           dir, (unsigned long long)fs, (unsigned long long)t->reserve, (unsigned long long)wb);
  return KVS_OK;
}

/* Rebuilds the index from the metadata records of a tier. */
static kvs_err load_tier(kvs__store *s, int tier) {
  /* bounded to the 'm' keys: positioning on a 'v' key would read its blob */
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_iterate_upper_bound(ro, "n", 1);
  rocksdb_iterator_t *it = rocksdb_create_iterator(s->t[tier].db, ro);
  rocksdb_iter_seek(it, "m", 1);
  size_t loaded = 0, bad = 0;
  for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t kl, vl;
    const char *key = rocksdb_iter_key(it, &kl);
    if (kl < 1 || key[0] != 'm') break;
    const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it, &vl);
    kvs__skey sk;
    kvs_wire_meta m;
    uint8_t state = 0;
    if (kl != KEYLEN) continue;
    memcpy(sk.b, key + 1, 24);
    if (kvs__record_decode(val, vl, &m, &state) != KVS_OK) {
      bad++; /* unreadable metadata: the entry is gone, drop its bytes */
      (void)db_del(s, tier, &sk, 0);
      KVS__INC(s->met, KVS_STAT_QUARANTINES, 1);
      continue;
    }
    if (find(s, &sk)) { /* demotion interrupted by a crash: T1's copy wins */
      if (tier == 2) (void)db_del(s, 2, &sk, 0);
      continue;
    }
    entry *e = calloc(1, sizeof *e);
    uint8_t *meta = malloc(vl - KVS__REC_HEAD);
    if (!e || !meta) {
      free(e);
      free(meta);
      rocksdb_iter_destroy(it);
      rocksdb_readoptions_destroy(ro);
      return KVS_ENOMEM;
    }
    memcpy(meta, val + KVS__REC_HEAD, vl - KVS__REC_HEAD);
    e->sk = sk;
    e->model = m.model;
    e->tier = (uint8_t)tier;
    e->pinned = m.pinned;
    e->quarantined = state;
    e->n_tokens = m.n_tokens;
    e->ttl_s = m.ttl_s;
    e->tok_off = KVS_WIRE_META_FIXED + 8u * m.n_segments;
    e->value_bytes = m.value_bytes;
    e->disk_bytes = vl + m.value_bytes;
    e->checksum = m.checksum;
    e->hits = m.hits;
    e->created_ms = m.created_ms;
    e->last_used_ms = m.last_used_ms;
    e->expire_ms = m.ttl_s ? m.last_used_ms + 1000ull * m.ttl_s : 0;
    e->meta = meta;
    e->meta_len = (uint32_t)(vl - KVS__REC_HEAD);
    insert(s, e);
    s->t[tier].used += state ? vl : e->disk_bytes;
    loaded++;
  }
  char *err = NULL;
  rocksdb_iter_get_error(it, &err);
  rocksdb_iter_destroy(it);
  rocksdb_readoptions_destroy(ro);
  if (err) return rerr(err, "load");
  KVS_LOGI("store", "tier loaded", "tier=%d entries=%zu bad=%zu bytes=%llu", tier, loaded, bad,
           (unsigned long long)s->t[tier].used);
  return KVS_OK;
}

static void close_db(kvs__store *s, int tier) {
  if (!s->t[tier].db) return;
  rocksdb_close(s->t[tier].db);
  rocksdb_options_destroy(s->t[tier].opt);
  s->t[tier].db = NULL;
  s->t[tier].opt = NULL;
}

/* Forgets what a failed load_tier put in the index for `tier`. */
static void unload_tier(kvs__store *s, int tier) {
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket; i++) {
    entry *e = s->bucket[i];
    while (e) {
      entry *nx = e->hnext;
      if (e->tier == tier) remove_entry(s, e);
      e = nx;
    }
  }
  s->t[tier].used = 0;
  pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------ salvage
 * A tier RocksDB reports corrupt at start is copied, as far as it can be
 * read, into a fresh store beside it, which then takes its place (the old
 * directory is kept as <dir>.corrupt-<unix time>). The metadata records are
 * scanned in key order; where the scan hits an unreadable block, it probes
 * forward (seeks at last-good-key + 2^j, then bisects) to the first readable
 * key after it, so one bad block costs the entries in that block, not the
 * whole file (RocksDB's own repair drops the whole table). Each value is read
 * with checksums on and checked against its record's XXH3-64: what cannot be
 * read, or does not match, is left behind (counted as lost). */
static void key_add_pow2(uint8_t k[KEYLEN], int bit) { /* k += 2^bit (big-endian); saturates */
  int byte = KEYLEN - 1 - bit / 8;
  unsigned carry = 1u << (bit % 8);
  for (int i = byte; i >= 1 && carry; i--) {
    unsigned v = k[i] + carry;
    k[i] = (uint8_t)v;
    carry = v >> 8;
  }
  if (carry) memset(k + 1, 0xFF, KEYLEN - 1);
}

/* 25-byte big-endian arithmetic for seek_past_damage: out = a - b (a >= b),
 * a += b, a >>= 1. */
static void key_sub(const uint8_t *a, const uint8_t *b, uint8_t *out) {
  int borrow = 0;
  for (int i = KEYLEN - 1; i >= 0; i--) {
    int v = (int)a[i] - (int)b[i] - borrow;
    borrow = v < 0;
    out[i] = (uint8_t)(v + (borrow ? 256 : 0));
  }
}
static void key_addk(uint8_t *a, const uint8_t *b) {
  unsigned carry = 0;
  for (int i = KEYLEN - 1; i >= 0; i--) {
    unsigned v = (unsigned)a[i] + b[i] + carry;
    a[i] = (uint8_t)v;
    carry = v >> 8;
  }
}
static void key_shr1(uint8_t *a) {
  unsigned carry = 0;
  for (int i = 0; i < KEYLEN; i++) {
    unsigned v = a[i];
    a[i] = (uint8_t)((v >> 1) | (carry << 7));
    carry = v & 1;
  }
}

/* Whether a seek at p fails with an error (lands in a damaged block). */
static int seek_fails(rocksdb_iterator_t *it, const uint8_t *p) {
  rocksdb_iter_seek(it, (const char *)p, KEYLEN);
  char *err = NULL;
  rocksdb_iter_get_error(it, &err);
  free(err);
  return err != NULL;
}

/* Positions it on the first readable 'm' key after the damaged block that
 * `last` (a key at or before it) could not get past: a seek at last + 2^j
 * for growing j until one does not fail, then bisection between the last
 * failing and the first working position (at most ~2 x 192 seeks). 0 when
 * nothing readable follows. */
static int seek_past_damage(rocksdb_iterator_t *it, const uint8_t last[KEYLEN]) {
  uint8_t lo[KEYLEN], hi[KEYLEN];
  memcpy(lo, last, KEYLEN);
  int found = 0;
  for (int j = 0; j < 8 * (KEYLEN - 1) && !found; j++) {
    memcpy(hi, last, KEYLEN);
    key_add_pow2(hi, j);
    if (seek_fails(it, hi))
      memcpy(lo, hi, KEYLEN);
    else
      found = 1;
  }
  if (!found) return 0;
  for (int guard = 0; guard < 8 * KEYLEN + 8; guard++) {
    uint8_t d[KEYLEN], one[KEYLEN] = {0};
    one[KEYLEN - 1] = 1;
    key_sub(hi, lo, d);
    if (memcmp(d, one, KEYLEN) <= 0) break; /* adjacent */
    key_shr1(d);
    uint8_t mid[KEYLEN];
    memcpy(mid, lo, KEYLEN);
    key_addk(mid, d);
    if (seek_fails(it, mid))
      memcpy(lo, mid, KEYLEN);
    else
      memcpy(hi, mid, KEYLEN);
  }
  return !seek_fails(it, hi) && rocksdb_iter_valid(it);
}

static kvs_err salvage_tier(kvs__store *s, const char *dir, size_t *kept, size_t *lost) {
  *kept = *lost = 0;
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.salvage", dir);
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(o, 1);
  rocksdb_options_set_enable_blob_files(o, 1);
  rocksdb_options_set_min_blob_size(o, s->cfg.blob_min);
  char *err = NULL;
  rocksdb_destroy_db(o, tmp, &err); /* a salvage an earlier start left half done */
  free(err);
  err = NULL;
  rocksdb_t *old = rocksdb_open_for_read_only(o, dir, 0, &err);
  if (err) {
    KVS_LOGE("store", "salvage: cannot open the damaged store", "err=\"%s\"", err);
    free(err);
    rocksdb_options_destroy(o);
    return KVS_ECORRUPT;
  }
  rocksdb_t *nu = rocksdb_open(o, tmp, &err);
  if (err) {
    KVS_LOGE("store", "salvage: cannot create the new store", "dir=%s err=\"%s\"", tmp, err);
    free(err);
    rocksdb_close(old);
    rocksdb_options_destroy(o);
    return KVS_EIO;
  }
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_iterate_upper_bound(ro, "n", 1);
  rocksdb_readoptions_t *vro = rocksdb_readoptions_create(); /* checksums verified */
  rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
  rocksdb_iterator_t *it = rocksdb_create_iterator(old, ro);
  kvs_err rc = KVS_OK;
  uint8_t last[KEYLEN];
  memset(last, 0, sizeof last);
  last[0] = 'm';
  rocksdb_iter_seek(it, "m", 1);
  for (int guard = 0; guard < (1 << 24) && rc == KVS_OK; guard++) {
    if (!rocksdb_iter_valid(it)) {
      char *ie = NULL;
      rocksdb_iter_get_error(it, &ie);
      if (!ie) break; /* the end */
      free(ie);
      (*lost)++; /* at least one record in the damaged block */
      if (!seek_past_damage(it, last)) break;
      continue;
    }
    size_t kl, vl;
    const char *key = rocksdb_iter_key(it, &kl);
    if (kl < 1 || key[0] != 'm') break;
    if (kl == KEYLEN) memcpy(last, key, KEYLEN);
    const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it, &vl);
    kvs_wire_meta m;
    uint8_t state = 0;
    if (kl != KEYLEN || kvs__record_decode(val, vl, &m, &state) != KVS_OK) {
      (*lost)++;
      rocksdb_iter_next(it);
      continue;
    }
    char kv[KEYLEN];
    memcpy(kv, key, KEYLEN);
    kv[0] = 'v';
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    int ok = 1;
    rocksdb_writebatch_put(wb, key, KEYLEN, (const char *)val, vl);
    if (!state) { /* quarantined records have no value to copy */
      size_t n = 0;
      char *ve = NULL;
      char *v = rocksdb_get(old, vro, kv, KEYLEN, &n, &ve);
      ok = !ve && v && n == m.value_bytes && kvs_checksum64(v, n) == m.checksum;
      if (ok) rocksdb_writebatch_put(wb, kv, KEYLEN, v, n);
      free(ve);
      free(v);
    }
    if (ok) {
      char *we = NULL;
      rocksdb_write(nu, wo, wb, &we);
      if (we) {
        KVS_LOGE("store", "salvage: write failed", "err=\"%s\"", we);
        free(we);
        rc = KVS_EIO;
      } else {
        (*kept)++;
      }
    } else {
      (*lost)++;
    }
    rocksdb_writebatch_destroy(wb);
    rocksdb_iter_next(it);
  }
  rocksdb_iter_destroy(it);
  rocksdb_readoptions_destroy(ro);
  rocksdb_readoptions_destroy(vro);
  if (rc == KVS_OK) {
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(nu, fo, &err);
    rocksdb_flushoptions_destroy(fo);
    if (err) {
      free(err);
      rc = KVS_EIO;
    }
  }
  rocksdb_writeoptions_destroy(wo);
  rocksdb_close(nu);
  rocksdb_close(old);
  char aside[600];
  snprintf(aside, sizeof aside, "%s.corrupt-%llu", dir, (unsigned long long)(kvs_wall_ms() / 1000));
  if (rc == KVS_OK && (rename(dir, aside) != 0 || rename(tmp, dir) != 0)) {
    KVS_LOGE("store", "salvage: cannot swap the directories", "dir=%s err=\"%s\"", dir,
             strerror(errno));
    rc = KVS_EIO;
  }
  if (rc != KVS_OK) {
    err = NULL;
    rocksdb_destroy_db(o, tmp, &err);
    free(err);
  }
  rocksdb_options_destroy(o);
  if (rc == KVS_OK)
    KVS_LOGW("store", "tier salvaged: the damaged store is kept aside",
             "dir=%s aside=%s kept=%zu "
             "lost=%zu",
             dir, aside, *kept, *lost);
  return rc;
}

/* Opens a tier and loads its index. When RocksDB reports corruption (at open,
 * or in the scan of the metadata records), the decision is: salvage (above:
 * the entries in damaged blocks are gone, the rest kept), else repair
 * (rocksdb_repair_db: a table with any damage is set aside in the tier's
 * lost/ directory and its entries are gone), and when even the repaired store
 * does not open and load, the tier's directory is renamed aside
 * (<dir>.corrupt-<unix time>, kept for the operator) and the tier starts
 * empty. Either way the daemon starts and serves what is left; both are
 * logged and counted (tiers_repaired, tiers_reset). */
static kvs_err open_tier(kvs__store *s, int tier, const char *dir) {
  kvs_err rc = open_db(s, tier, dir);
  if (rc == KVS_OK) rc = load_tier(s, tier);
  if (rc != KVS_ECORRUPT) return rc;
  unload_tier(s, tier);
  close_db(s, tier);
  size_t kept = 0, lost = 0;
  KVS_LOGE("store", "tier corrupt: salvaging what can be read", "tier=%d dir=%s", tier, dir);
  if (salvage_tier(s, dir, &kept, &lost) == KVS_OK) {
    rc = open_db(s, tier, dir);
    if (rc == KVS_OK) rc = load_tier(s, tier);
    if (rc == KVS_OK) {
      atomic_fetch_add_explicit(&s->met->tiers_repaired, 1, memory_order_relaxed);
      return KVS_OK;
    }
    unload_tier(s, tier);
    close_db(s, tier);
    if (rc != KVS_ECORRUPT) return rc;
  }
  KVS_LOGE("store", "tier corrupt: repairing", "tier=%d dir=%s", tier, dir);
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_enable_blob_files(o, 1);
  rocksdb_options_set_min_blob_size(o, s->cfg.blob_min);
  char *err = NULL;
  rocksdb_repair_db(o, dir, &err);
  rocksdb_options_destroy(o);
  if (err) {
    KVS_LOGE("store", "repair failed", "tier=%d err=\"%s\"", tier, err);
    free(err);
  } else {
    rc = open_db(s, tier, dir);
    if (rc == KVS_OK) rc = load_tier(s, tier);
    if (rc == KVS_OK) {
      atomic_fetch_add_explicit(&s->met->tiers_repaired, 1, memory_order_relaxed);
      KVS_LOGW("store", "tier repaired: entries in unreadable files are gone", "tier=%d", tier);
      return KVS_OK;
    }
    unload_tier(s, tier);
    close_db(s, tier);
    if (rc != KVS_ECORRUPT) return rc;
  }
  char aside[600];
  snprintf(aside, sizeof aside, "%s.corrupt-%llu", dir, (unsigned long long)(kvs_wall_ms() / 1000));
  if (rename(dir, aside) != 0) {
    KVS_LOGE("store", "cannot set the corrupt tier aside", "dir=%s err=\"%s\"", dir,
             strerror(errno));
    return KVS_ECORRUPT;
  }
  atomic_fetch_add_explicit(&s->met->tiers_reset, 1, memory_order_relaxed);
  KVS_LOGE("store", "tier unrepairable: set aside, starting it empty", "tier=%d dir=%s aside=%s",
           tier, dir, aside);
  rc = open_db(s, tier, dir);
  if (rc == KVS_OK) rc = load_tier(s, tier);
  return rc;
}

kvs_err kvs__store_open(const kvs_svc_config *c, kvs__metrics *met, kvs__store **out) {
  if (sodium_init() < 0) return KVS_EINTERNAL;
  kvs__store *s = calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  s->cfg = *c;
  s->met = met;
  if (c->zero_freed) atomic_store(&g_zero_freed, 1);
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->shm_mu, NULL);
  for (int i = 0; i < NSTRIPES; i++)
    pthread_rwlock_init(&s->stripe[i], NULL);
  for (int i = 0; i < 3; i++)
    pthread_mutex_init(&s->t[i].evict_mu, NULL);
  s->t[1].cap = c->disk_bytes;
  s->t[2].cap = c->cold_bytes;
  s->nbucket = 1024;
  s->bucket = calloc(s->nbucket, sizeof *s->bucket);
  s->wo_sync = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(s->wo_sync, 1);
  s->wo_async = rocksdb_writeoptions_create();
  s->ro = rocksdb_readoptions_create();
  /* RocksDB's block and blob checksums are verified on every read although
   * values carry our own XXH3-64 (checked in db_read_value): without them a
   * flipped bit in an SST block or a blob record header is parsed as it is,
   * and Debian's RocksDB (built with assertions) aborts on what it finds.
   * A corruption status is an answer (KVS_ECORRUPT + quarantine), never a
   * crash. Cost: a CRC32c of the bytes read (~1 ms per MiB, table-driven). */
  rocksdb_readoptions_set_verify_checksums(s->ro, 1);
  kvs_err rc = s->bucket ? KVS_OK : KVS_ENOMEM;
  if (rc == KVS_OK) rc = mkdirs(c->data_dir);
  if (rc == KVS_OK) rc = load_secret(s);
  if (rc == KVS_OK && c->n_quotas > 0) { /* before the tiers load: they count usage */
    s->quota = calloc((size_t)c->n_quotas, sizeof *s->quota);
    if (!s->quota) rc = KVS_ENOMEM;
    for (int i = 0; s->quota && i < c->n_quotas; i++) {
      tquota *q = &s->quota[i];
      q->q = c->quotas[i];
      kvs__store_tenant_id(s, q->q.tenant, q->tid);
      pthread_mutex_init(&q->rmu, NULL);
      q->tokens = q->q.burst;
      q->last_ns = kvs_now_ns();
    }
    if (s->quota) s->nquota = c->n_quotas;
  }
  if (rc == KVS_OK) { /* names this daemon's segments: stable across restarts */
    uint8_t h[16];
    crypto_generichash(h, 16, (const uint8_t *)"I", 1, s->secret, sizeof s->secret);
    snprintf(s->inst, sizeof s->inst, "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    snprintf(s->nonce, sizeof s->nonce, "%08x", randombytes_random());
    /* segments a previous run of this store left behind (killed): unlink */
    char prefix[32];
    int pl = snprintf(prefix, sizeof prefix, "kvstash-%s-", s->inst);
    DIR *dd = opendir("/dev/shm");
    struct dirent *de;
    while (dd && (de = readdir(dd))) {
      if (strncmp(de->d_name, prefix, (size_t)pl) != 0) continue;
      char nm[300];
      snprintf(nm, sizeof nm, "/%s", de->d_name);
      if (shm_unlink(nm) == 0) KVS_LOGI("shm", "stale segment removed", "name=%s", nm);
    }
    if (dd) closedir(dd);
  }
  char p1[600];
  snprintf(p1, sizeof p1, "%s/t1", c->data_dir);
  if (rc == KVS_OK) rc = open_tier(s, 1, p1);
  if (rc == KVS_OK && c->cold_dir[0]) {
    rc = open_tier(s, 2, c->cold_dir);
    s->has_cold = rc == KVS_OK;
  }
  if (rc != KVS_OK) {
    kvs__store_close(s);
    return rc;
  }
  *out = s;
  return KVS_OK;
}

void kvs__store_close(kvs__store *s) {
  if (!s) return;
  atomic_store(&s->closing, 1);
  if (s->bucket) {
    /* flush every dirty hit counter, then the WAL */
    for (;;) {
      kvs__skey ks[256];
      int n = 0;
      pthread_mutex_lock(&s->mu);
      for (size_t i = 0; i < s->nbucket && n < 256; i++)
        for (entry *e = s->bucket[i]; e && n < 256; e = e->hnext)
          if (e->dirty && s->t[e->tier].db) ks[n++] = e->sk;
      pthread_mutex_unlock(&s->mu);
      if (!n) break;
      for (int i = 0; i < n; i++)
        if (rewrite_meta(s, &ks[i], 0) != KVS_OK) {
          pthread_mutex_lock(&s->mu);
          entry *e = find(s, &ks[i]);
          if (e) e->dirty = 0;
          pthread_mutex_unlock(&s->mu);
        }
    }
  }
  for (int t = 1; t <= 2; t++) {
    if (!s->t[t].db) continue;
    char *err = NULL;
    rocksdb_flush_wal(s->t[t].db, 1, &err);
    (void)rerr(err, "flush wal");
    /* memtables to SST/blob files, so a restart does not replay the WAL */
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(s->t[t].db, fo, &err);
    (void)rerr(err, "flush");
    rocksdb_flushoptions_destroy(fo);
    rocksdb_close(s->t[t].db);
    rocksdb_options_destroy(s->t[t].opt);
  }
  expire_leases(s, 0, 1);
  free(s->leases);
  if (s->bucket) {
    for (size_t i = 0; i < s->nbucket; i++) {
      entry *e = s->bucket[i];
      while (e) {
        entry *nx = e->hnext;
        kvs__buf_unref(e->t0);
        free(e->meta);
        free(e);
        e = nx;
      }
    }
    free(s->bucket);
  }
  for (int i = 0; i < s->nsegs; i++)
    kvs__shm_destroy(s->segs[i].seg); /* no buffer left */
  pthread_mutex_destroy(&s->shm_mu);
  if (s->wo_sync) rocksdb_writeoptions_destroy(s->wo_sync);
  if (s->wo_async) rocksdb_writeoptions_destroy(s->wo_async);
  if (s->ro) rocksdb_readoptions_destroy(s->ro);
  for (int i = 0; i < NSTRIPES; i++)
    pthread_rwlock_destroy(&s->stripe[i]);
  for (int i = 0; i < 3; i++)
    pthread_mutex_destroy(&s->t[i].evict_mu);
  pthread_mutex_destroy(&s->mu);
  for (int i = 0; i < s->nquota; i++)
    pthread_mutex_destroy(&s->quota[i].rmu);
  free(s->quota);
  sodium_memzero(s->secret, sizeof s->secret);
  free(s);
}
