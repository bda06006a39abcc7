/* store_index.c - the store's middle layer: the in-memory index over the
 * tiers (store_int.h).
 *
 *   the index  a hash table of every entry (key, model, tokens, sizes,
 *              counters, which tier holds it), rebuilt at start from the
 *              tiers' records (kvs__ix_load_record)
 *   T0 (ram)   refcounted copies of hot values hung off their entries: a
 *              byte budget, LRU order, the victim among the LRU tail chosen
 *              by score. A copy, never the only one: every entry lives on
 *              exactly one tier of KVS__TIER_LIST -- or is on its way there
 *              (e->wb: store_wb.c holds the bytes until they are written),
 *              or its write failed (e->ramonly: dropped with its copy).
 *   eviction   a tier over its capacity frees down to 90% by ascending
 *              score; an entry moves to the next tier below when there is
 *              one with room, else it is dropped (kvs__ix_ensure_room) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* ------------------------------------------------------------ the index */
kvs__tquota *kvs__ix_quota_of(kvs__store *s, const uint8_t *tid) {
  for (int i = 0; i < s->nquota; i++)
    if (memcmp(s->quota[i].tid, tid, 8) == 0) return &s->quota[i];
  return NULL;
}
uint64_t kvs__ix_charged(const kvs__entry *e) {
  return e->quarantined ? e->disk_bytes - e->value_bytes : e->disk_bytes;
}

kvs__entry *kvs__ix_find(kvs__store *s, const kvs__skey *k) {
  for (kvs__entry *e = s->bucket[kvs__sk_hash(k) & (s->nbucket - 1)]; e; e = e->hnext)
    if (memcmp(e->sk.b, k->b, 24) == 0) return e;
  return NULL;
}

void kvs__ix_insert(kvs__store *s, kvs__entry *e) {
  if (s->count + 1 > s->nbucket) {
    size_t nb = s->nbucket * 2;
    kvs__entry **nbk = calloc(nb, sizeof *nbk);
    if (nbk) {
      for (size_t i = 0; i < s->nbucket; i++) {
        kvs__entry *x = s->bucket[i];
        while (x) {
          kvs__entry *nx = x->hnext;
          size_t j = kvs__sk_hash(&x->sk) & (nb - 1);
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
  size_t j = kvs__sk_hash(&e->sk) & (s->nbucket - 1);
  e->hnext = s->bucket[j];
  s->bucket[j] = e;
  s->count++;
  s->tier_entries[e->tier - 1]++;
  kvs__tquota *q = kvs__ix_quota_of(s, e->sk.b);
  if (q) {
    q->entries++;
    q->disk += kvs__ix_charged(e);
  }
}

void kvs__ix_move(kvs__store *s, kvs__entry *e, unsigned to) {
  uint64_t c = kvs__ix_charged(e);
  kvs__tier_at(s, e->tier)->used -= c;
  s->tier_entries[e->tier - 1]--;
  e->tier = (uint8_t)to;
  kvs__tier_at(s, to)->used += c;
  s->tier_entries[to - 1]++;
}

static void lru_unlink(kvs__store *s, kvs__entry *e) {
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
void kvs__ix_lru_front(kvs__store *s, kvs__entry *e) {
  lru_unlink(s, e);
  e->lnext = s->lru_head;
  if (s->lru_head) s->lru_head->lprev = e;
  s->lru_head = e;
  if (!s->lru_tail) s->lru_tail = e;
}
void kvs__ix_t0_drop(kvs__store *s, kvs__entry *e) {
  if (!e->t0) return;
  lru_unlink(s, e);
  s->t0_used -= e->value_bytes;
  s->t0_count--;
  kvs__tquota *q = kvs__ix_quota_of(s, e->sk.b);
  if (q) q->ram -= e->value_bytes;
  kvs__buf_unref(e->t0);
  e->t0 = NULL;
}

/* A waiting write-behind job of e will be skipped: its value goes now (a
 * DELETE or an overwrite frees -- and with zero_freed zeroes -- the bytes
 * at once, not when the writer gets there). The caller holds e's stripe,
 * which the writer holds while it reads a job's bytes. mu held. */
static void wb_detach(kvs__entry *e) {
  if (!e->wb) return;
  kvs__buf_unref(e->wb->buf);
  e->wb->buf = NULL;
  e->wb = NULL;
}

void kvs__ix_remove(kvs__store *s, kvs__entry *e) { /* mu held; frees e */
  size_t j = kvs__sk_hash(&e->sk) & (s->nbucket - 1);
  for (kvs__entry **pp = &s->bucket[j]; *pp; pp = &(*pp)->hnext)
    if (*pp == e) {
      *pp = e->hnext;
      break;
    }
  s->count--;
  s->tier_entries[e->tier - 1]--;
  kvs__tquota *q = kvs__ix_quota_of(s, e->sk.b);
  if (q) {
    q->entries--;
    q->disk -= kvs__ix_charged(e);
  }
  if (e->meta) kvs__event(s->met, KVS__EV_REMOVED, e->sk.b, e->meta, &e->model, e->tier);
  if (e->ramonly) {
    s->ramonly_n--;
    s->ramonly_bytes -= e->value_bytes;
  }
  kvs__ix_t0_drop(s, e);
  wb_detach(e);
  kvs__tier *t = kvs__tier_at(s, e->tier);
  if (t) t->used -= kvs__ix_charged(e);
  free(e->meta);
  free(e);
}

/* ---------------------------------------------------- per-entry helpers */
void kvs__ix_touch(kvs__entry *e, uint64_t now) {
  e->hits++;
  e->last_used_ms = now;
  e->expire_ms = e->ttl_s ? now + 1000ull * e->ttl_s : 0;
  e->dirty = 1;
}

void kvs__ix_patch_meta(const kvs__entry *e, uint8_t *meta, uint8_t tier) {
  meta[33] = tier;
  meta[34] = e->pinned;
  uint32_t ttl = e->ttl_s;
  memcpy(meta + 84, &ttl, 4);
  memcpy(meta + 104, &e->created_ms, 8);
  memcpy(meta + 112, &e->last_used_ms, 8);
  memcpy(meta + 120, &e->hits, 8);
}

uint8_t *kvs__ix_record(const kvs__entry *e, unsigned tier, uint8_t state, size_t *len) {
  uint8_t *meta = malloc(e->meta_len);
  if (!meta) return NULL;
  memcpy(meta, e->meta, e->meta_len);
  kvs__ix_patch_meta(e, meta, (uint8_t)tier);
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

static int tokens_match(const kvs__entry *e, const uint8_t *tokens_le, uint32_t n) {
  return n == e->n_tokens && memcmp(e->meta + e->tok_off, tokens_le, 4u * (size_t)n) == 0;
}

kvs_err kvs__ix_check(const kvs__entry *e, const kvs_model_id *model, const uint8_t *tokens_le,
                      uint32_t n_tokens, uint64_t now) {
  if (!e || kvs__expired(e, now)) return KVS_ENOENT;
  if (e->quarantined) return KVS_EQUARANTINE;
  if (model && !kvs_hash128_equal(&e->model, model)) return KVS_EMODEL;
  if (tokens_le && !tokens_match(e, tokens_le, n_tokens)) return KVS_ETOKENS;
  return KVS_OK;
}

void kvs__ix_fill_vref(const kvs__entry *e, kvs__buf *b, uint8_t tier, kvs__vref *out) {
  out->buf = b;
  out->tier = tier;
  out->meta = malloc(e->meta_len);
  if (out->meta) {
    memcpy(out->meta, e->meta, e->meta_len);
    kvs__ix_patch_meta(e, out->meta, tier);
    out->meta_len = e->meta_len;
    if (kvs_wire_meta_decode(out->meta, out->meta_len, &out->m, NULL) != KVS_OK) {
      free(out->meta);
      out->meta = NULL;
      out->meta_len = 0;
    }
  }
}

/* ------------------------------------------------------------- scoring */
static double model_cost(kvs__store *s, const kvs_model_id *m) {
  for (int i = 0; i < s->cfg.n_model_costs; i++)
    if (kvs_hash128_equal(&s->cfg.model_costs[i].model, m)) return s->cfg.model_costs[i].cost;
  return s->cfg.prefill_cost;
}

/* Recompute saved per byte, decayed by time since last use. */
static double score(kvs__store *s, const kvs__entry *e, uint64_t now_ms) {
  if (s->cfg.evict_lru) return (double)e->last_used_ms; /* oldest first */
  double age = now_ms > e->last_used_ms ? (double)(now_ms - e->last_used_ms) * 1e-3 : 0.0;
  double decay = s->cfg.half_life_s > 0 ? exp2(-age / s->cfg.half_life_s) : 1.0;
  return ((double)e->hits + 1.0) * (double)e->n_tokens * model_cost(s, &e->model) /
         ((double)e->value_bytes + 1.0) * decay;
}

/* ------------------------------------------------------------------ T0 */
/* Drops e's RAM copy for room; an entry with no other copy goes with it. */
static void t0_evict(kvs__store *s, kvs__entry *e) {
  if (e->ramonly)
    kvs__ix_remove(s, e);
  else
    kvs__ix_t0_drop(s, e);
}

/* Makes room in T0 for `need` bytes: among the 8 least recent, drop the one
 * that saves least per byte; repeat. mu held. */
static int t0_make_room(kvs__store *s, uint64_t need, const kvs__entry *keep) {
  uint64_t now = kvs_wall_ms();
  while (s->t0_used + need > s->cfg.ram_bytes) {
    kvs__entry *victim = NULL;
    double best = 0;
    int k = 0;
    for (kvs__entry *e = s->lru_tail; e && k < 8; e = e->lprev) {
      if (e == keep) continue;
      k++;
      double sc = score(s, e, now);
      if (!victim || sc < best) {
        victim = e;
        best = sc;
      }
    }
    if (!victim) return 0;
    t0_evict(s, victim);
  }
  return 1;
}

void kvs__ix_t0_put(kvs__store *s, kvs__entry *e, kvs__buf *b) {
  if (!b || e->t0 || e->quarantined || s->cfg.ram_bytes == 0) return;
  if (e->value_bytes > s->cfg.ram_bytes / 2) return; /* one entry never flushes the tier */
  kvs__tquota *q = kvs__ix_quota_of(s, e->sk.b);
  if (q && q->q.ram_bytes) { /* over its RAM quota: drop the tenant's own copies, LRU first */
    if (e->value_bytes > q->q.ram_bytes) return;
    for (kvs__entry *x = s->lru_tail; x && q->ram + e->value_bytes > q->q.ram_bytes;) {
      kvs__entry *prev = x->lprev;
      if (x != e && memcmp(x->sk.b, e->sk.b, 8) == 0) t0_evict(s, x);
      x = prev;
    }
    if (q->ram + e->value_bytes > q->q.ram_bytes) return;
  }
  if (!t0_make_room(s, e->value_bytes, e)) return;
  kvs__buf_ref(b);
  e->t0 = b;
  s->t0_used += e->value_bytes;
  s->t0_count++;
  if (q) q->ram += e->value_bytes;
  kvs__ix_lru_front(s, e);
}

/* ---------------------------------------------------------- quarantine */
void kvs__ix_quarantine(kvs__store *s, const kvs__skey *k, kvs_err why) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  kvs__tier *t = NULL;
  if (e && !e->quarantined) {
    kvs__ix_t0_drop(s, e);
    kvs__tquota *q = kvs__ix_quota_of(s, e->sk.b);
    if (q) q->disk -= e->value_bytes;
    e->quarantined = 1;
    t = kvs__tier_at(s, e->tier);
    t->used -= e->value_bytes;
    rec = kvs__ix_record(e, e->tier, 1, &rl);
    char hex[33];
    kvs_hash128 kh;
    memcpy(kh.b, k->b + 8, 16);
    kvs_hash128_hex(&kh, hex);
    KVS_LOGE("store", "entry quarantined", "skey=%s tier=%s reason=%s bytes=%llu", hex, t->name,
             kvs_errname(why), (unsigned long long)e->value_bytes);
    KVS__INC(s->met, KVS_STAT_QUARANTINES, 1);
  }
  pthread_mutex_unlock(&s->mu);
  if (t) /* the value goes; the record stays, marked (gone too when it could not be made) */
    (void)t->ops->del(t, k, rec, rl, KVS__TIER_SYNC);
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

/* Frees one entry's bytes in `tier`: moves it to the next tier below when
 * there is one with room, else drops it. Returns 1 when bytes were freed. */
int kvs__ix_relocate(kvs__store *s, const kvs__skey *k, kvs__tier *from, kvs__tier *to, unsigned tn,
                     const uint8_t *rec, size_t rl, const kvs__buf *val) {
  unsigned wf = kvs__wflags(s, 0);
  if (to->ops->put(to, k, rec, rl, val->data, val->len, wf) != KVS_OK) return 0;
  (void)from->ops->del(from, k, NULL, 0, wf);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  if (e) {
    kvs__ix_move(s, e, tn);
    wb_detach(e); /* written now (its write-behind job is skipped) */
    if (e->ramonly) {
      e->ramonly = 0;
      s->ramonly_n--;
      s->ramonly_bytes -= e->value_bytes;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return 1;
}

static int evict_one(kvs__store *s, unsigned tier, const kvs__skey *k) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  if (pthread_rwlock_trywrlock(sl) != 0) return 0; /* busy (maybe our own PUT): skip */
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  if (!e || e->tier != tier || e->pinned) {
    pthread_mutex_unlock(&s->mu);
    pthread_rwlock_unlock(sl);
    return 0;
  }
  kvs__tier *from = kvs__tier_at(s, tier);
  unsigned below = e->quarantined ? 0 : kvs__tier_below(s, tier);
  kvs__tier *to = kvs__tier_at(s, below);
  uint64_t vlen = e->value_bytes, ck = e->checksum, db = e->disk_bytes;
  kvs__buf *val = NULL;
  uint8_t *rec = NULL;
  size_t rl = 0;
  if (to) {
    if ((val = kvs__ix_ram(e))) /* a value not written yet moves from RAM */
      kvs__buf_ref(val);
    rec = kvs__ix_record(e, below, 0, &rl);
    if (!rec) to = NULL;
  }
  pthread_mutex_unlock(&s->mu);
  if (to && (kvs__ix_ensure_room(s, below, db) != KVS_OK ||
             !to->ops->room(to, db, KVS__TIER_PUT | KVS__TIER_QUIET)))
    to = NULL; /* no room below: dropped instead */
  if (to && !val) {
    kvs_err rc = from->ops->get(from, k, vlen, ck, &val);
    if (rc == KVS_ECHECKSUM || rc == KVS_ECORRUPT) {
      free(rec);
      pthread_rwlock_unlock(sl);
      kvs__ix_quarantine(s, k, rc);
      return 1;
    }
    if (rc != KVS_OK) to = NULL;
  }
  if (to && kvs__ix_relocate(s, k, from, to, below, rec, rl, val)) {
    atomic_fetch_add_explicit(&s->met->demotions, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->met->bytes_demoted, db, memory_order_relaxed);
  } else {
    (void)from->ops->del(from, k, NULL, 0, kvs__wflags(s, 0));
    pthread_mutex_lock(&s->mu);
    e = kvs__ix_find(s, k);
    if (e) kvs__ix_remove(s, e);
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
kvs_err kvs__ix_ensure_room(kvs__store *s, unsigned tier, uint64_t need) {
  kvs__tier *t = kvs__tier_at(s, tier);
  if (!t) return KVS_ENOSPC;
  pthread_mutex_lock(&s->evict_mu[tier - 1]);
  pthread_mutex_lock(&s->mu);
  if (t->used + need <= t->capacity) {
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->evict_mu[tier - 1]);
    return KVS_OK;
  }
  uint64_t low = t->capacity / 10 * 9;
  uint64_t target = low > need ? low - need : 0;
  size_t nc = 0, cap = s->count ? s->count : 1;
  cand *c = malloc(cap * sizeof *c);
  uint64_t now = kvs_wall_ms();
  for (size_t i = 0; c && i < s->nbucket; i++)
    for (kvs__entry *e = s->bucket[i]; e; e = e->hnext)
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
  int ok = t->used + need <= t->capacity;
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&s->evict_mu[tier - 1]);
  return ok ? KVS_OK : KVS_ENOSPC;
}

/* ------------------------------------------------------------- loading */
int kvs__ix_load_record(void *arg, const kvs__skey *sk, const uint8_t *val, size_t vl) {
  kvs__ix_loader *L = arg;
  kvs__store *s = L->s;
  kvs_wire_meta m;
  uint8_t state = 0;
  if (kvs__record_decode(val, vl, &m, &state) != KVS_OK) {
    L->bad++; /* unreadable metadata: the entry is gone, drop its bytes */
    KVS__INC(s->met, KVS_STAT_QUARANTINES, 1);
    return KVS__TIER_DROP;
  }
  if (kvs__ix_find(s, sk)) /* a move down interrupted by a crash: the upper tier's copy wins */
    return KVS__TIER_DROP;
  kvs__entry *e = calloc(1, sizeof *e);
  uint8_t *meta = malloc(vl - KVS__REC_HEAD);
  if (!e || !meta) {
    free(e);
    free(meta);
    return KVS_ENOMEM;
  }
  memcpy(meta, val + KVS__REC_HEAD, vl - KVS__REC_HEAD);
  e->sk = *sk;
  e->model = m.model;
  e->tier = (uint8_t)L->tier;
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
  kvs__ix_insert(s, e);
  L->used += kvs__ix_charged(e);
  L->loaded++;
  return KVS_OK;
}

/* Forgets what a failed load put in the index for L->tier. */
void kvs__ix_unload(void *arg) {
  kvs__ix_loader *L = arg;
  kvs__store *s = L->s;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket; i++) {
    kvs__entry *e = s->bucket[i];
    while (e) {
      kvs__entry *nx = e->hnext;
      if (e->tier == L->tier) kvs__ix_remove(s, e);
      e = nx;
    }
  }
  pthread_mutex_unlock(&s->mu);
  L->loaded = L->bad = 0;
  L->used = 0;
}

/* ---------------------------------------------------------------- list */
static void item_of(const kvs__entry *e, kvs__item *it) {
  memset(it, 0, sizeof *it);
  it->sk = e->sk;
  memcpy(it->it.key.b, e->meta, 16);
  it->it.model = e->model;
  it->it.n_tokens = e->n_tokens;
  it->it.key_kind = e->meta[32];
  it->it.tier = kvs__ix_ram(e) ? 0 : e->tier;
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
    for (kvs__entry *e = s->bucket[i]; e; e = e->hnext) {
      if (memcmp(e->sk.b, tenant_id, 8) != 0 || kvs__expired(e, now)) continue;
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
  kvs__entry *e = kvs__ix_find(s, k);
  kvs_err rc = e && !kvs__expired(e, kvs_wall_ms()) ? KVS_OK : KVS_ENOENT;
  if (rc == KVS_OK) item_of(e, out);
  pthread_mutex_unlock(&s->mu);
  return rc;
}
