/* tier_rocksdb.c - a kvstashd tier in a RocksDB directory (tier.h's ops).
 *
 * Keys: 'm' || skey -> metadata record (record.c), 'v' || skey -> encoded
 * value (blob files when >= blob_min); both in one WriteBatch.
 *
 * Every write first checks the filesystem's free space (see room), every
 * value read verifies RocksDB's block and blob checksums and the value's own
 * XXH3-64, and a store found corrupt at open is salvaged, repaired or set
 * aside rather than refused (see open_tier). */
#include <errno.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "tier.h"

#define KEYLEN 25 /* 'm' or 'v' + skey */

typedef struct rtier {
  kvs__tier base; /* first: a kvs__tier * is an rtier * */
  rocksdb_t *db;
  rocksdb_options_t *opt;
  rocksdb_writeoptions_t *wo_sync, *wo_async, *wo_nowal;
  rocksdb_readoptions_t *ro;
  kvs__metrics *met;
  uint64_t blob_min;
  /* Free space on the tier's filesystem (see room): a PUT needs `reserve`
   * left after it, any other write `floor`. */
  char dir[512];
  uint64_t reserve, floor;
  atomic_int full; /* 1 while writes are refused for space (logged on change) */
} rtier;

static void dbkey(char out[KEYLEN], char kind, const kvs__skey *k) {
  out[0] = kind;
  memcpy(out + 1, k->b, 24);
}

static kvs_err rerr(char *err, const char *what) {
  if (!err) return KVS_OK;
  kvs_err e = strstr(err, "Corruption")                           ? KVS_ECORRUPT
              : strstr(err, "No space") || strstr(err, "NoSpace") ? KVS_ENOSPC
                                                                  : KVS_EIO;
  KVS_LOGE("store", "rocksdb error", "op=%s err=\"%s\"", what, err);
  free(err);
  return e;
}

static void count(kvs__metrics *m, atomic_uint_fast64_t *c) {
  if (m) atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
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
static uint64_t disk_avail(const rtier *t) {
  struct statvfs v;
  if (statvfs(t->dir, &v) != 0) return UINT64_MAX; /* unknown: RocksDB will say */
  return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

static int disk_fits(const rtier *t, uint64_t avail, uint64_t bytes, int is_put) {
  uint64_t keep = is_put ? t->reserve : t->floor;
  return avail >= keep && (avail - keep) / 2 >= bytes;
}

static int rt_room(kvs__tier *bt, uint64_t bytes, unsigned flags) {
  rtier *t = (rtier *)bt;
  int is_put = (flags & KVS__TIER_PUT) != 0;
  uint64_t avail = disk_avail(t);
  int ok = disk_fits(t, avail, bytes, is_put);
  if (flags & KVS__TIER_QUIET) return ok;
  if (!ok) {
    count(t->met, t->met ? &t->met->nospace_refused : NULL);
    if (atomic_exchange(&t->full, 1) == 0)
      KVS_LOGE("store", "disk nearly full: writes refused (KVS_ENOSPC) until space is freed",
               "tier=%s dir=%s avail=%llu reserve=%llu floor=%llu", t->base.name, t->dir,
               (unsigned long long)avail, (unsigned long long)t->reserve,
               (unsigned long long)t->floor);

  } else if (is_put && atomic_exchange(&t->full, 0) == 1) {
    KVS_LOGI("store", "disk space available again: writes resume", "tier=%s avail=%llu",
             t->base.name, (unsigned long long)avail);
  }
  return ok;
}

static rocksdb_writeoptions_t *wopts(const rtier *t, unsigned flags) {
  return (flags & KVS__TIER_SYNC)    ? t->wo_sync
         : (flags & KVS__TIER_NOWAL) ? t->wo_nowal
                                     : t->wo_async;
}

static kvs_err db_write(rtier *t, rocksdb_writebatch_t *wb, unsigned flags) {
  size_t n = 0;
  (void)rocksdb_writebatch_data(wb, &n);
  if (!rt_room(&t->base, n, 0)) return KVS_ENOSPC;
  char *err = NULL;
  rocksdb_write(t->db, wopts(t, flags), wb, &err);
  return rerr(err, "write");
}

/* ------------------------------------------------------------- the ops */
static kvs_err rt_put(kvs__tier *bt, const kvs__skey *k, const uint8_t *rec, size_t rl,
                      const uint8_t *value, size_t vlen, unsigned flags) {
  rtier *t = (rtier *)bt;
  char km[KEYLEN], kv[KEYLEN];
  dbkey(km, 'm', k);
  if (!value) { /* the record alone (hit counters, pins, TTLs) */
    if (!rt_room(bt, rl + KEYLEN, 0)) return KVS_ENOSPC;
    char *err = NULL;
    rocksdb_put(t->db, wopts(t, flags), km, KEYLEN, (const char *)rec, rl, &err);
    return rerr(err, "put meta");
  }
  dbkey(kv, 'v', k);
  rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
  rocksdb_writebatch_put(wb, km, KEYLEN, (const char *)rec, rl);
  rocksdb_writebatch_put(wb, kv, KEYLEN, (const char *)value, vlen);
  kvs_err e = db_write(t, wb, flags);
  rocksdb_writebatch_destroy(wb);
  return e;
}

static kvs_err rt_del(kvs__tier *bt, const kvs__skey *k, const uint8_t *rec, size_t rl,
                      unsigned flags) {
  rtier *t = (rtier *)bt;
  char km[KEYLEN], kv[KEYLEN];
  dbkey(km, 'm', k);
  dbkey(kv, 'v', k);
  rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
  if (rec)
    rocksdb_writebatch_put(wb, km, KEYLEN, (const char *)rec, rl);
  else
    rocksdb_writebatch_delete(wb, km, KEYLEN);
  rocksdb_writebatch_delete(wb, kv, KEYLEN);
  kvs_err e = db_write(t, wb, flags & ~(unsigned)KVS__TIER_NOWAL); /* always logged */
  rocksdb_writebatch_destroy(wb);
  return e;
}

static kvs_err rt_get(kvs__tier *bt, const kvs__skey *k, uint64_t len, uint64_t checksum,
                      kvs__buf **out) {
  rtier *t = (rtier *)bt;
  char kv[KEYLEN];
  dbkey(kv, 'v', k);
  char *err = NULL;
  rocksdb_pinnableslice_t *ps = rocksdb_get_pinned(t->db, t->ro, kv, KEYLEN, &err);
  if (err) {
    kvs_err rc = rerr(err, "get");
    if (rc == KVS_ECORRUPT) count(t->met, t->met ? &t->met->disk_corrupt : NULL);
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

/* Every 'm' record in key order; KVS__TIER_DROP deletes the key (not
 * synced: a record that could not be read is gone either way). */
static kvs_err rt_iterate(kvs__tier *bt, kvs__tier_visit fn, void *arg) {
  rtier *t = (rtier *)bt;
  /* bounded to the 'm' keys: positioning on a 'v' key would read its blob */
  rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
  rocksdb_readoptions_set_iterate_upper_bound(ro, "n", 1);
  rocksdb_iterator_t *it = rocksdb_create_iterator(t->db, ro);
  rocksdb_iter_seek(it, "m", 1);
  kvs_err rc = KVS_OK;
  for (; rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
    size_t kl, vl;
    const char *key = rocksdb_iter_key(it, &kl);
    if (kl < 1 || key[0] != 'm') break;
    if (kl != KEYLEN) continue;
    const uint8_t *val = (const uint8_t *)rocksdb_iter_value(it, &vl);
    kvs__skey sk;
    memcpy(sk.b, key + 1, 24);
    int r = fn ? fn(arg, &sk, val, vl) : KVS_OK;
    if (r == KVS__TIER_DROP)
      (void)rt_del(bt, &sk, NULL, 0, 0);
    else if (r != KVS_OK) {
      rc = (kvs_err)r;
      break;
    }
  }
  char *err = NULL;
  if (rc == KVS_OK) rocksdb_iter_get_error(it, &err);
  rocksdb_iter_destroy(it);
  rocksdb_readoptions_destroy(ro);
  if (err) return rerr(err, "load");
  return rc;
}

static uint64_t rt_prop(kvs__tier *bt, const char *prop) {
  rtier *t = (rtier *)bt;
  if (!t->db) return 0;
  char *v = rocksdb_property_value(t->db, prop);
  uint64_t r = v ? strtoull(v, NULL, 10) : 0;
  free(v);
  return r;
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

static uint64_t clamp_u64(uint64_t v, uint64_t lo, uint64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

static kvs_err open_db(rtier *t) {
  const char *dir = t->dir;
  KVS_TRY(mkdirs(dir));
  /* What RocksDB writes on its own (a memtable flush, a blob file) scales
   * with the filesystem, and the PUT reserve covers it (room): two
   * memtables plus the WAL, two blob files, 1 MiB. 64 MiB memtables and
   * 256 MiB blob files from 2 GiB / 8 GiB filesystems up. */
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
  rocksdb_options_set_min_blob_size(o, t->blob_min);
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
  t->db = db;
  t->opt = o;
  KVS_LOGI("store", "tier opened", "tier=%s dir=%s fs_bytes=%llu reserve=%llu memtable=%llu",
           t->base.name, dir, (unsigned long long)fs, (unsigned long long)t->reserve,
           (unsigned long long)wb);
  return KVS_OK;
}

static void close_db(rtier *t) {
  if (!t->db) return;
  rocksdb_close(t->db);
  rocksdb_options_destroy(t->opt);
  t->db = NULL;
  t->opt = NULL;
}

/* ------------------------------------------------------------ salvage
 * A store RocksDB reports corrupt at start is copied, as far as it can be
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

static kvs_err salvage(const rtier *t, size_t *kept, size_t *lost) {
  const char *dir = t->dir;
  *kept = *lost = 0;
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.salvage", dir);
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_create_if_missing(o, 1);
  rocksdb_options_set_enable_blob_files(o, 1);
  rocksdb_options_set_min_blob_size(o, t->blob_min);
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

/* Opens the store and delivers its records. */
static kvs_err open_load(rtier *t, const kvs__tier_conf *c) {
  kvs_err rc = open_db(t);
  if (rc == KVS_OK) rc = rt_iterate(&t->base, c->on_record, c->arg);
  return rc;
}
/* Forgets a failed open_load. */
static void unload(rtier *t, const kvs__tier_conf *c) {
  if (c->on_reset) c->on_reset(c->arg);
  close_db(t);
}

/* Opens the tier and delivers its records. When RocksDB reports corruption
 * (at open, or in the scan of the metadata records), the decision is:
 * salvage (above: the entries in damaged blocks are gone, the rest kept),
 * else repair (rocksdb_repair_db: a table with any damage is set aside in
 * the tier's lost/ directory and its entries are gone), and when even the
 * repaired store does not open and load, the tier's directory is renamed
 * aside (<dir>.corrupt-<unix time>, kept for the operator) and the tier
 * starts empty. Either way the daemon starts and serves what is left; both
 * are logged and counted (tiers_repaired, tiers_reset). */
static kvs_err open_tier(rtier *t, const kvs__tier_conf *c) {
  const char *dir = t->dir;
  kvs_err rc = open_load(t, c);
  if (rc != KVS_ECORRUPT) return rc;
  unload(t, c);
  size_t kept = 0, lost = 0;
  KVS_LOGE("store", "tier corrupt: salvaging what can be read", "tier=%s dir=%s", t->base.name,
           dir);
  if (salvage(t, &kept, &lost) == KVS_OK) {
    rc = open_load(t, c);
    if (rc == KVS_OK) {
      count(t->met, t->met ? &t->met->tiers_repaired : NULL);
      return KVS_OK;
    }
    unload(t, c);
    if (rc != KVS_ECORRUPT) return rc;
  }
  KVS_LOGE("store", "tier corrupt: repairing", "tier=%s dir=%s", t->base.name, dir);
  rocksdb_options_t *o = rocksdb_options_create();
  rocksdb_options_set_enable_blob_files(o, 1);
  rocksdb_options_set_min_blob_size(o, t->blob_min);
  char *err = NULL;
  rocksdb_repair_db(o, dir, &err);
  rocksdb_options_destroy(o);
  if (err) {
    KVS_LOGE("store", "repair failed", "tier=%s err=\"%s\"", t->base.name, err);
    free(err);
  } else {
    rc = open_load(t, c);
    if (rc == KVS_OK) {
      count(t->met, t->met ? &t->met->tiers_repaired : NULL);
      KVS_LOGW("store", "tier repaired: entries in unreadable files are gone", "tier=%s",
               t->base.name);
      return KVS_OK;
    }
    unload(t, c);
    if (rc != KVS_ECORRUPT) return rc;
  }
  char aside[600];
  snprintf(aside, sizeof aside, "%s.corrupt-%llu", dir, (unsigned long long)(kvs_wall_ms() / 1000));
  if (rename(dir, aside) != 0) {
    KVS_LOGE("store", "cannot set the corrupt tier aside", "dir=%s err=\"%s\"", dir,
             strerror(errno));
    return KVS_ECORRUPT;
  }
  count(t->met, t->met ? &t->met->tiers_reset : NULL);
  KVS_LOGE("store", "tier unrepairable: set aside, starting it empty", "tier=%s dir=%s aside=%s",
           t->base.name, dir, aside);
  return open_load(t, c);
}

static void rt_close(kvs__tier *bt) {
  rtier *t = (rtier *)bt;
  if (!t) return;
  if (t->db) {
    char *err = NULL;
    rocksdb_flush_wal(t->db, 1, &err);
    (void)rerr(err, "flush wal");
    /* memtables to SST/blob files, so a restart does not replay the WAL */
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(t->db, fo, &err);
    (void)rerr(err, "flush");
    rocksdb_flushoptions_destroy(fo);
  }
  close_db(t);
  if (t->wo_sync) rocksdb_writeoptions_destroy(t->wo_sync);
  if (t->wo_async) rocksdb_writeoptions_destroy(t->wo_async);
  if (t->wo_nowal) rocksdb_writeoptions_destroy(t->wo_nowal);
  if (t->ro) rocksdb_readoptions_destroy(t->ro);
  free(t);
}

static kvs_err rt_open(const kvs__tier_conf *c, kvs__tier **out) {
  *out = NULL;
  static atomic_int lowered;
  if (c->background_low && atomic_exchange(&lowered, 1) == 0) {
    /* RocksDB's flush and compaction threads (the process's default env,
     * shared by every tier) below the request threads: under write-behind
     * they are off the acknowledgment path, and may wait for a core */
    rocksdb_env_t *env = rocksdb_create_default_env();
    rocksdb_env_lower_thread_pool_cpu_priority(env);
    rocksdb_env_lower_high_priority_thread_pool_cpu_priority(env);
    rocksdb_env_destroy(env);
  }
  if (strlen(c->dir) >= sizeof((rtier *)0)->dir) return KVS_EINVAL;
  rtier *t = calloc(1, sizeof *t);
  if (!t) return KVS_ENOMEM;
  t->base.ops = &kvs__tier_rocksdb;
  snprintf(t->base.name, sizeof t->base.name, "%s", c->name);
  t->base.capacity = c->capacity;
  t->met = c->met;
  t->blob_min = c->blob_min;
  snprintf(t->dir, sizeof t->dir, "%s", c->dir);
  t->wo_sync = rocksdb_writeoptions_create();
  rocksdb_writeoptions_set_sync(t->wo_sync, 1);
  t->wo_async = rocksdb_writeoptions_create();
  t->wo_nowal = rocksdb_writeoptions_create();
  rocksdb_writeoptions_disable_WAL(t->wo_nowal, 1);
  t->ro = rocksdb_readoptions_create();
  /* RocksDB's block and blob checksums are verified on every read although
   * values carry our own XXH3-64 (checked in rt_get): without them a
   * flipped bit in an SST block or a blob record header is parsed as it is,
   * and Debian's RocksDB (built with assertions) aborts on what it finds.
   * A corruption status is an answer (KVS_ECORRUPT + quarantine), never a
   * crash. Cost: a CRC32c of the bytes read (~1 ms per MiB, table-driven). */
  rocksdb_readoptions_set_verify_checksums(t->ro, 1);
  kvs_err rc = open_tier(t, c);
  if (rc != KVS_OK) {
    close_db(t);
    t->db = NULL;
    rt_close(&t->base);
    return rc;
  }
  *out = &t->base;
  return KVS_OK;
}

const kvs__tier_ops kvs__tier_rocksdb = {
    .kind = "rocksdb",
    .open = rt_open,
    .get = rt_get,
    .put = rt_put,
    .del = rt_del,
    .iterate = rt_iterate,
    .used = kvs__tier_used,
    .capacity = kvs__tier_capacity,
    .close = rt_close,
    .name = kvs__tier_get_name,
    .room = rt_room,
    .prop = rt_prop,
};
