/* tier.h - a storage tier of kvstashd behind one ops table, and the list of
 * the tiers (not installed; docs/architecture.md, "Adding a tier").
 *
 * A tier keeps, per storage key, a metadata record (record.c's bytes) and
 * the entry's encoded value, and writes the two together (one atomic step).
 * It knows nothing of the index, eviction, quotas or the wire: the store
 * (store.c, store_index.c) decides what goes where and calls these ops.
 *
 * The RAM copies (wire tier 0, "ram") are not a tier of this table: they are
 * the index's own memory (refcounted kvs__buf copies hung off index entries,
 * in LRU order, maybe in a tenant's shared-memory segment), a copy of an
 * entry that always also lives on exactly one tier of the list. They have no
 * keys of their own to open, iterate or recover, and a GET from RAM must not
 * pay an indirect call and a lookup of its own: see store_index.c.
 *
 * Wire tier numbers (meta byte 33, EXISTS, LIST, LOOKUP answers) are 0 for
 * RAM and 1 + the position in KVS__TIER_LIST; metrics labels, STATS rows,
 * logs and the CLI use the names. */
#ifndef KVS_TIER_H
#define KVS_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "svc_int.h"

/* The disk tiers, hottest first: a PUT lands in the first; under pressure a
 * tier demotes into the next one present and a hit promotes back into the
 * one above. X(name, ops, dir, subdir, capacity, optional):
 *   name      metrics label / STATS row / log name (at most 15 chars)
 *   ops       its kvs__tier_ops (one implementation serves many tiers)
 *   dir       kvs_svc_config field with its directory ("" = absent when optional)
 *   subdir    appended to dir ("" = the directory itself)
 *   capacity  kvs_svc_config field with its byte budget (records + values)
 *   optional  1: the tier is absent when its dir is "" */
#define KVS__TIER_LIST(X)                                                                          \
  X("disk", kvs__tier_rocksdb, data_dir, "t1", disk_bytes, 0)                                      \
  X("cold", kvs__tier_rocksdb, cold_dir, "", cold_bytes, 1)

#define KVS__TIER_COUNT_ONE(name, ops, dir, subdir, cap, opt) +1
enum { KVS__NTIERS = 0 KVS__TIER_LIST(KVS__TIER_COUNT_ONE) };
/* wire tier numbers go up to KVS_WIRE_MAX_TIER (core/kvs_wire.h) */
_Static_assert(KVS__NTIERS <= KVS_WIRE_MAX_TIER, "more tiers than the wire can name");

/* "ram" for 0, the list's name for 1.., "?" past the list. */
const char *kvs__tier_name(unsigned wire_tier);

typedef struct kvs__tier_ops kvs__tier_ops;

/* What every tier handle starts with (the implementation's state follows). */
typedef struct kvs__tier {
  const kvs__tier_ops *ops;
  char name[16];
  uint64_t capacity;
  /* Bytes the index has charged to this tier (records + values of the
   * entries it holds, exact). The store's index knows every entry's size and
   * keeps this under its lock; a tier never reads itself to count. */
  uint64_t used;
} kvs__tier;

/* open calls it for every record it holds (the index loads from them), and
 * iterate for every record: KVS_OK keeps the record, KVS__TIER_DROP has the
 * tier delete that key (record and value), any other kvs_err stops. */
#define KVS__TIER_DROP 1
typedef int (*kvs__tier_visit)(void *arg, const kvs__skey *k, const uint8_t *rec, size_t len);

typedef struct kvs__tier_conf {
  const char *name; /* copied */
  const char *dir;
  uint64_t capacity;
  uint64_t blob_min;         /* values at least this large may go to blob files */
  int background_low;        /* the implementation's own threads at low CPU priority */
  kvs__metrics *met;         /* nospace_refused, disk_corrupt, tiers_repaired, tiers_reset */
  kvs__tier_visit on_record; /* see above; may be NULL */
  /* Called before open delivers the records again (it found the store
   * corrupt and recovered what it could): forget what was delivered. */
  void (*on_reset)(void *arg);
  void *arg;
} kvs__tier_conf;

/* flags of put, del and room */
enum {
  KVS__TIER_SYNC = 1,  /* durable before returning */
  KVS__TIER_PUT = 2,   /* room: a client's PUT (keeps the larger reserve free) */
  KVS__TIER_QUIET = 4, /* room: a probe, neither counted nor logged */
  /* put: no write-ahead log (durability = ram's write-behind): the record
   * and value still land together (one batch, flushed together), but a
   * crash before the memtable flush loses them -- a miss, never half an
   * entry. Deletes and quarantines never take it: they stay logged, so a
   * crash never brings back what they removed. */
  KVS__TIER_NOWAL = 8
};

struct kvs__tier_ops {
  const char *kind; /* "rocksdb" */
  /* Opens (creating) the tier and delivers its records to c->on_record.
   * Corrupt stores are recovered (the implementation says how) rather than
   * refused where that is possible. */
  kvs_err (*open)(const kvs__tier_conf *c, kvs__tier **out);
  /* The value of k into a new buffer, verified: it must be len bytes with
   * XXH3-64 checksum. KVS_ENOENT absent, KVS_ECHECKSUM / KVS_ECORRUPT bad. */
  kvs_err (*get)(kvs__tier *t, const kvs__skey *k, uint64_t len, uint64_t checksum, kvs__buf **out);
  /* Writes k's record and, when value is not NULL, its value, together.
   * KVS_ENOSPC when the medium has no room left (counted). */
  kvs_err (*put)(kvs__tier *t, const kvs__skey *k, const uint8_t *rec, size_t rec_len,
                 const uint8_t *value, size_t value_len, unsigned flags);
  /* Deletes k's value and record; with rec, the record is replaced by it in
   * the same step (a quarantined entry keeps its record, not its bytes). */
  kvs_err (*del)(kvs__tier *t, const kvs__skey *k, const uint8_t *rec, size_t rec_len,
                 unsigned flags);
  /* Every record, in key order (see kvs__tier_visit). */
  kvs_err (*iterate)(kvs__tier *t, kvs__tier_visit fn, void *arg);
  uint64_t (*used)(const kvs__tier *t);
  uint64_t (*capacity)(const kvs__tier *t);
  /* Makes what was written durable and closes. NULL does nothing. */
  void (*close)(kvs__tier *t);
  const char *(*name)(const kvs__tier *t);
  /* Whether `bytes` more fit on the medium now (free space, not capacity:
   * the index checks that). Refusals are counted and logged unless QUIET. */
  int (*room)(kvs__tier *t, uint64_t bytes, unsigned flags);
  /* A numeric property for /metrics ("rocksdb.estimate-num-keys"); 0 when
   * the tier has no such thing. */
  uint64_t (*prop)(kvs__tier *t, const char *prop);
};

extern const kvs__tier_ops kvs__tier_rocksdb; /* tier_rocksdb.c */

/* The generic used/capacity/name of a kvs__tier (implementations may point
 * their ops at these). */
uint64_t kvs__tier_used(const kvs__tier *t);
uint64_t kvs__tier_capacity(const kvs__tier *t);
const char *kvs__tier_get_name(const kvs__tier *t);

#endif
