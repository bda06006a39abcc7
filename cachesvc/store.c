/* store.c - kvstashd's storage, top layer: put/get orchestration over the
 * index (store_index.c) and the tiers of KVS__TIER_LIST (tier.h), with the
 * RAM copies, shared memory and leases of store_shm.c (store_int.h has the
 * layers and the lock order).
 *
 *   PUT    lands in the first tier (room made by eviction there, the
 *          tenant's quota reserved first), a RAM copy kept when it fits
 *   GET    from RAM without a stripe or disk; else from the entry's tier,
 *          verified (a bad read quarantines the entry), copied into RAM and
 *          moved up one tier when the tier above has room
 *   LEASE  a GET that hands out the value's range in the tenant's segment
 *   and    EXISTS/probe, DELETE, pins, TTLs (expiry in kvs__store_tick),
 *          hit counters written back lazily, quotas, STATS */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_int.h"

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

/* ----------------------------------------------------------------- PUT */
/* Checks a PUT of `need` disk bytes against its tenant's disk and entries
 * quotas, counting what the entry it replaces frees, and reserves them
 * (*qo set; the caller gives them back). KVS_EQUOTA (counted) when over. */
static kvs_err quota_reserve(kvs__store *s, const kvs__skey *k, uint64_t need, kvs__tquota **qo) {
  *qo = NULL;
  kvs__tquota *q = kvs__ix_quota_of(s, k->b);
  if (!q) return KVS_OK;
  kvs_err rc = KVS_OK;
  pthread_mutex_lock(&s->mu);
  kvs__entry *old = kvs__ix_find(s, k);
  uint64_t freed = old ? kvs__ix_charged(old) : 0, freed_n = old ? 1 : 0;
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
  kvs__tquota *q = &s->quota[i];
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
    kvs__tquota *q = &s->quota[i];
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

/* The one PUT: value's bytes, held in vbuf when the caller has them in a
 * buffer (the store takes its own refs, never copies them), else copied
 * into one when the store keeps a RAM copy or writes behind.
 *
 * durability = ram (and no KVS_WIRE_F_SYNC): once room is reserved in the
 * write-behind backlog, the entry is indexed with its value held in RAM
 * (e->wb) and acknowledged; store_wb.c writes it to the first tier. With
 * the backlog full, or another durability, the record and value are written
 * here, before the answer (write-through). Either way the first tier's
 * capacity is charged now and its free space checked now (with what the
 * backlog will still write), so a full disk refuses the PUT up front. */
static kvs_err put_impl(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                        const uint8_t *value, kvs__buf *vbuf, uint32_t flags,
                        int keep_server_fields) {
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
  mm.tier = KVS__TIER_FIRST;
  mm.flags = 0;
  size_t ml = kvs_wire_meta_size(&mm);
  size_t rl = ml + KVS__REC_HEAD;
  uint8_t *rec = malloc(rl);
  uint8_t *meta = malloc(ml);
  kvs__entry *ne = calloc(1, sizeof *ne);
  kvs__buf *copy = NULL;
  kvs__wjob *job = NULL; /* set while this PUT holds a reservation in the write-behind backlog */
  kvs__tquota *q = NULL; /* set while this PUT holds a reservation in its tenant's quota */
  uint64_t need = 0;
  kvs_err rc = KVS_ENOMEM;
  if (!rec || !meta || !ne) goto out;
  rc = kvs__record_encode(&mm, 0, rec, rl, &rl);
  if (rc != KVS_OK) goto out;
  memcpy(meta, rec + KVS__REC_HEAD, ml);
  need = rl + mm.value_bytes;
  rc = KVS_ETOOBIG;
  kvs__tier *t1 = kvs__tier_at(s, KVS__TIER_FIRST);
  if (need > t1->capacity) goto out;
  rc = quota_reserve(s, k, need, &q); /* before ensure_room: never evicts others for it */
  if (rc != KVS_OK) goto out;
  if (s->cfg.ram_bytes && mm.value_bytes <= s->cfg.ram_bytes / 2) {
    if (vbuf && (vbuf->shm || !s->cfg.shm)) /* T0 keeps the caller's bytes */
      kvs__buf_ref(copy = vbuf);
    else /* (with shm on, a copy in the tenant's segment: leases read it in place) */
      copy = kvs__sh_copy(s, k, value, (size_t)mm.value_bytes);
  }
  if (s->cfg.durability == KVS_SVC_DUR_RAM && !(flags & KVS_WIRE_F_SYNC) &&
      kvs__wb_reserve(s, mm.value_bytes)) {
    kvs__buf *wb = copy ? copy : vbuf;
    kvs__buf *own = wb ? NULL : kvs__sh_copy(s, k, value, (size_t)mm.value_bytes);
    job = kvs__wb_job_new(k, wb ? wb : own);
    kvs__buf_unref(own);
    if (!job) kvs__wb_unreserve(s, mm.value_bytes); /* no memory: written through */
  }
  rc = kvs__ix_ensure_room(s, KVS__TIER_FIRST, need);
  if (rc != KVS_OK) goto out;
  rc = KVS_ENOSPC; /* before the medium runs out, the backlog's bytes counted in */
  if (!t1->ops->room(t1, need + kvs__wb_pending(s), KVS__TIER_PUT)) goto out;

  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  kvs__entry *old = kvs__ix_find(s, k);
  if ((flags & KVS_WIRE_F_NX) && old && !old->quarantined && !kvs__expired(old, now)) {
    pthread_mutex_unlock(&s->mu);
    pthread_rwlock_unlock(sl);
    rc = KVS_EEXIST;
    goto out;
  }
  int old_tier = old ? old->tier : 0;
  pthread_mutex_unlock(&s->mu);
  unsigned wf = kvs__wflags(s, (flags & KVS_WIRE_F_SYNC) != 0);
  kvs__tier *ot = old_tier != KVS__TIER_FIRST ? kvs__tier_at(s, (unsigned)old_tier) : NULL;
  if (job) { /* written behind; an older copy in a lower tier goes now */
    rc = KVS_OK;
    if (ot) (void)ot->ops->del(ot, k, NULL, 0, wf);
  } else {
    rc = t1->ops->put(t1, k, rec, rl, value, (size_t)mm.value_bytes, wf);
    if (rc == KVS_OK && ot) (void)ot->ops->del(ot, k, NULL, 0, wf);
  }
  if (rc == KVS_OK) {
    pthread_mutex_lock(&s->mu);
    old = kvs__ix_find(s, k);
    if (old) kvs__ix_remove(s, old);
    ne->sk = *k;
    ne->model = mm.model;
    ne->tier = KVS__TIER_FIRST;
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
    kvs__ix_insert(s, ne);
    kvs__event(s->met, KVS__EV_STORED, ne->sk.b, ne->meta, &ne->model,
               KVS__TIER_FIRST); /* cluster.c */
    t1->used += need;
    kvs__ix_t0_put(s, ne, copy);
    if (job) {
      ne->wb = job;
      kvs__wb_enqueue(s, job); /* the queue owns it now */
      job = NULL;
    }
    ne = NULL;
    pthread_mutex_unlock(&s->mu);
    KVS__INC(s->met, KVS_STAT_PUTS, 1);
  }
  pthread_rwlock_unlock(sl);
out:
  if (job) {
    kvs__wb_unreserve(s, job->bytes);
    kvs__wb_job_free(job);
  }
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

kvs_err kvs__store_put(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                       const uint8_t *value, uint32_t flags, int keep_server_fields) {
  return put_impl(s, k, m, value, NULL, flags, keep_server_fields);
}

kvs_err kvs__store_put_buf(kvs__store *s, const kvs__skey *k, const kvs_wire_meta *m,
                           kvs__buf *value, uint32_t flags, int keep_server_fields) {
  if (!value || value->len != m->value_bytes) return KVS_EINVAL;
  return put_impl(s, k, m, value->data, value, flags, keep_server_fields);
}

/* ----------------------------------------------------------------- GET */

/* A hit below the first tier moves the entry to the tier above when that
 * has room (never evicting for it). */
static void promote(kvs__store *s, const kvs__skey *k, kvs__buf *val) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  if (pthread_rwlock_trywrlock(sl) != 0) return;
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  uint64_t db = 0;
  unsigned above = e ? kvs__tier_above(s, e->tier) : 0;
  kvs__tier *from = e ? kvs__tier_at(s, e->tier) : NULL, *to = kvs__tier_at(s, above);
  if (to && !e->quarantined && to->used + e->disk_bytes <= to->capacity &&
      to->ops->room(to, e->disk_bytes, KVS__TIER_PUT | KVS__TIER_QUIET)) {
    rec = kvs__ix_record(e, above, 0, &rl);
    db = e->disk_bytes;
  }
  pthread_mutex_unlock(&s->mu);
  if (rec && kvs__ix_relocate(s, k, from, to, above, rec, rl, val)) {
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
  kvs__entry *e = kvs__ix_find(s, k);
  kvs_err rc = kvs__ix_check(e, model, tokens_le, n_tokens, now);
  kvs__buf *rb = rc == KVS_OK ? kvs__ix_ram(e) : NULL;
  if (rb) { /* T0 (or a value the write-behind holds): no disk, no stripe */
    kvs__buf_ref(rb);
    if (count_hit) {
      kvs__ix_touch(e, now);
      if (e->t0) kvs__ix_lru_front(s, e);
    }
    kvs__ix_fill_vref(e, rb, 0, out);
    pthread_mutex_unlock(&s->mu);
    return out->meta ? KVS_OK : (kvs__vref_release(out), KVS_ENOMEM);
  }
  pthread_mutex_unlock(&s->mu);
  if (rc != KVS_OK) return rc;
  if (count_hit == 2) return KVS_EAGAIN; /* T0 only: the caller may not block */

  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  pthread_rwlock_rdlock(sl);
  pthread_mutex_lock(&s->mu);
  e = kvs__ix_find(s, k);
  rc = kvs__ix_check(e, model, tokens_le, n_tokens, now);
  int tier = rc == KVS_OK ? e->tier : 0;
  uint64_t vlen = rc == KVS_OK ? e->value_bytes : 0, ck = rc == KVS_OK ? e->checksum : 0;
  kvs__buf *b = NULL;
  if (rc == KVS_OK && kvs__ix_ram(e)) { /* filled meanwhile */
    b = kvs__ix_ram(e);
    kvs__buf_ref(b);
    tier = 0;
  }
  pthread_mutex_unlock(&s->mu);
  if (rc == KVS_OK && !b) {
    kvs__tier *t = kvs__tier_at(s, (unsigned)tier);
    rc = t->ops->get(t, k, vlen, ck, &b);
  }
  pthread_rwlock_unlock(sl);
  if (rc == KVS_ECHECKSUM || rc == KVS_ECORRUPT || (rc == KVS_ENOENT && tier)) {
    kvs__ix_quarantine(s, k, rc);
    return KVS_EQUARANTINE;
  }
  if (rc != KVS_OK) return rc;
  kvs__buf *t0b = b; /* what T0 keeps: in the tenant's segment when shm is on */
  if (count_hit && s->cfg.shm && !b->shm && b->len <= s->cfg.ram_bytes / 2) {
    kvs__buf *sb = kvs__buf_new_shm(kvs__sh_seg_for(s, k->b), b->len);
    if (sb) {
      memcpy(sb->data, b->data, b->len);
      t0b = sb;
    }
  }
  pthread_mutex_lock(&s->mu);
  e = kvs__ix_find(s, k);
  if (!e) { /* deleted while we read: serve nothing rather than a ghost */
    pthread_mutex_unlock(&s->mu);
    if (t0b != b) kvs__buf_unref(t0b);
    kvs__buf_unref(b);
    return KVS_ENOENT;
  }
  if (count_hit) {
    kvs__ix_touch(e, now);
    kvs__ix_t0_put(s, e, t0b);
  }
  if (t0b != b) kvs__buf_unref(t0b);
  kvs__ix_fill_vref(e, b, (uint8_t)tier, out);
  pthread_mutex_unlock(&s->mu);
  if (!out->meta) {
    kvs__vref_release(out);
    return KVS_ENOMEM;
  }
  if (tier > (int)KVS__TIER_FIRST && count_hit) promote(s, k, b);
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
  kvs__entry *e = kvs__ix_find(s, k);
  int r = 0;
  if (kvs__ix_check(e, model, tokens_le, n_tokens, kvs_wall_ms()) == KVS_OK)
    r = 1 + (kvs__ix_ram(e) ? 0 : e->tier);
  pthread_mutex_unlock(&s->mu);
  return r;
}

kvs_err kvs__store_exists(kvs__store *s, const kvs__skey *k, const kvs_model_id *model,
                          kvs_wire_exists_resp *out) {
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  kvs_err rc = kvs__ix_check(e, model, NULL, 0, kvs_wall_ms());
  if (rc == KVS_OK) {
    out->present = 1;
    out->tier = kvs__ix_ram(e) ? 0 : e->tier;
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
    kvs__entry *e = kvs__ix_find(s, k);
    kvs_err rc = kvs__ix_check(e, model, tokens_le, n_tokens, now);
    kvs__buf *b = rc == KVS_OK ? kvs__ix_ram(e) : NULL;
    if (b && b->shm) {
      kvs__lease l;
      rc = kvs__sh_lease_add(s, k->b, b, now, &l); /* the lease's ref */
      if (rc != KVS_OK) {
        pthread_mutex_unlock(&s->mu);
        return rc;
      }
      kvs__ix_touch(e, now);
      kvs__buf_ref(b); /* out->v's */
      kvs__ix_fill_vref(e, b, 0, &out->v);
      out->lease_id = l.id;
      out->expires_ms = l.expires_ms;
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

/* ----------------------------------------------- delete, pin, ttl, stats */
static kvs_err delete_impl(kvs__store *s, const kvs__skey *k, int only_expired) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  int tier = 0;
  if (e && (!only_expired || kvs__expired(e, kvs_wall_ms()))) tier = e->tier;
  pthread_mutex_unlock(&s->mu);
  kvs__tier *t = kvs__tier_at(s, (unsigned)tier);
  kvs_err rc = t ? t->ops->del(t, k, NULL, 0, kvs__wflags(s, 0)) : KVS_ENOENT;
  if (rc == KVS_OK) {
    pthread_mutex_lock(&s->mu);
    e = kvs__ix_find(s, k);
    if (e) kvs__ix_remove(s, e);
    pthread_mutex_unlock(&s->mu);
  }
  pthread_rwlock_unlock(sl);
  return rc;
}

kvs_err kvs__store_delete(kvs__store *s, const kvs__skey *k) { return delete_impl(s, k, 0); }

/* Rewrites e's metadata record. sync: pins and TTLs follow the durability
 * mode; hit counters (advisory) never wait for an fsync. */
static kvs_err rewrite_meta(kvs__store *s, const kvs__skey *k, int sync) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, k);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  uint8_t *rec = NULL;
  size_t rl = 0;
  int tier = 0;
  kvs_err rc = KVS_ENOENT;
  if (e && !kvs__ix_on_disk(e)) { /* the write-behind writes the record as it is then */
    e->dirty = 0;
    rc = KVS_OK;
  } else if (e) {
    tier = e->tier;
    rec = kvs__ix_record(e, tier, e->quarantined, &rl);
    e->dirty = 0;
    rc = rec ? KVS_OK : KVS_ENOMEM;
  }
  pthread_mutex_unlock(&s->mu);
  if (rec) {
    kvs__tier *t = kvs__tier_at(s, (unsigned)tier);
    unsigned wf = s->cfg.durability == KVS_SVC_DUR_RAM ? KVS__TIER_NOWAL /* as the values */
                  : sync && s->cfg.durability == KVS_SVC_DUR_SYNC ? KVS__TIER_SYNC
                                                                  : 0;
    rc = t->ops->put(t, k, rec, rl, NULL, 0, wf); /* the record alone */
  }
  free(rec);
  pthread_rwlock_unlock(sl);
  return rc;
}

kvs_err kvs__store_pin(kvs__store *s, const kvs__skey *k, int pin) {
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  kvs_err rc = kvs__ix_check(e, NULL, NULL, 0, kvs_wall_ms());
  if (rc == KVS_OK) e->pinned = pin ? 1 : 0;
  pthread_mutex_unlock(&s->mu);
  return rc == KVS_OK ? rewrite_meta(s, k, 1) : rc;
}

kvs_err kvs__store_ttl(kvs__store *s, const kvs__skey *k, uint32_t ttl_s) {
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, k);
  kvs_err rc = kvs__ix_check(e, NULL, NULL, 0, kvs_wall_ms());
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
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_lock(&s->shm_mu);
  v[KVS_STAT_LEASES] = (uint64_t)s->nleases;
  pthread_mutex_unlock(&s->shm_mu);
}

int kvs__store_tier_rows(kvs__store *s, kvs__tier_row *rows, int max) {
  int n = 0;
  pthread_mutex_lock(&s->mu);
  for (unsigned w = 0; w <= KVS__NTIERS && n < max; w++, n++) {
    kvs__tier_row *r = &rows[n];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", kvs__tier_name(w));
    r->wire = (uint8_t)w;
    if (w == 0) { /* RAM: the index's own copies */
      r->present = s->cfg.ram_bytes > 0;
      r->used = s->t0_used;
      r->capacity = s->cfg.ram_bytes;
      r->entries = s->t0_count;
      continue;
    }
    kvs__tier *t = kvs__tier_at(s, w);
    if (!t) continue;
    r->present = 1;
    r->used = t->ops->used(t);
    r->capacity = t->ops->capacity(t);
    r->entries = s->tier_entries[w - 1];
  }
  pthread_mutex_unlock(&s->mu);
  return n;
}

uint64_t kvs__store_tier_prop(kvs__store *s, unsigned wire, const char *prop) {
  kvs__tier *t = kvs__tier_at(s, wire);
  return t && t->ops->prop ? t->ops->prop(t, prop) : 0;
}

/* ------------------------------------------------------ maintenance */
void kvs__store_tick(kvs__store *s, int flush_counters) {
  enum { BATCH = 256 };
  kvs__skey ks[BATCH];
  int n = 0;
  uint64_t now = kvs_wall_ms();
  kvs__sh_expire(s, now, 0);
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket && n < BATCH; i++)
    for (kvs__entry *e = s->bucket[i]; e && n < BATCH; e = e->hnext)
      if (kvs__expired(e, now)) ks[n++] = e->sk;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < n; i++)
    if (delete_impl(s, &ks[i], 1) == KVS_OK) KVS__INC(s->met, KVS_STAT_EXPIRED, 1);
  /* hit counters and last-used times go to disk lazily */
  if (!flush_counters) return;
  n = 0;
  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < s->nbucket && n < BATCH; i++)
    for (kvs__entry *e = s->bucket[i]; e && n < BATCH; e = e->hnext)
      if (e->dirty) ks[n++] = e->sk;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < n; i++)
    (void)rewrite_meta(s, &ks[i], 0);
}

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

/* Opens the tiers of KVS__TIER_LIST, loading the index from their records
 * in list order (a key found in two tiers: the upper one's copy wins). */
static kvs_err open_tiers(kvs__store *s) {
#define KVS__TIER_SPEC_ONE(name, ops, dir, subdir, cap, opt)                                       \
  {name, &ops, offsetof(kvs_svc_config, dir), subdir, offsetof(kvs_svc_config, cap), opt},
  static const struct {
    const char *name;
    const kvs__tier_ops *ops;
    size_t dir_off;
    const char *subdir;
    size_t cap_off;
    int optional;
  } spec[KVS__NTIERS] = {KVS__TIER_LIST(KVS__TIER_SPEC_ONE)};
#undef KVS__TIER_SPEC_ONE
  for (unsigned i = 0; i < KVS__NTIERS; i++) {
    const char *dir = (const char *)&s->cfg + spec[i].dir_off;
    uint64_t cap;
    memcpy(&cap, (const char *)&s->cfg + spec[i].cap_off, sizeof cap);
    if (!dir[0]) {
      if (spec[i].optional) continue;
      KVS_LOGE("store", "tier without a directory", "tier=%s", spec[i].name);
      return KVS_EINVAL;
    }
    char path[600];
    if (spec[i].subdir[0])
      snprintf(path, sizeof path, "%s/%s", dir, spec[i].subdir);
    else
      snprintf(path, sizeof path, "%s", dir);
    kvs__ix_loader L = {.s = s, .tier = i + 1};
    kvs__tier_conf tc = {.name = spec[i].name,
                         .dir = path,
                         .capacity = cap,
                         .blob_min = s->cfg.blob_min,
                         .background_low = s->cfg.durability == KVS_SVC_DUR_RAM,
                         .met = s->met,
                         .on_record = kvs__ix_load_record,
                         .on_reset = kvs__ix_unload,
                         .arg = &L};
    kvs__tier *t = NULL;
    kvs_err rc = spec[i].ops->open(&tc, &t);
    if (rc != KVS_OK) return rc;
    pthread_mutex_lock(&s->mu);
    s->tier[i] = t;
    t->used = L.used;
    pthread_mutex_unlock(&s->mu);
    KVS_LOGI("store", "tier loaded", "tier=%s kind=%s entries=%zu bad=%zu bytes=%llu", t->name,
             t->ops->kind, L.loaded, L.bad, (unsigned long long)L.used);
  }
  return KVS_OK;
}

kvs_err kvs__store_open(const kvs_svc_config *c, kvs__metrics *met, kvs__store **out) {
  if (sodium_init() < 0) return KVS_EINTERNAL;
  kvs__store *s = calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  s->cfg = *c;
  s->met = met;
  kvs__buf_zero_freed(c->zero_freed);
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->shm_mu, NULL);
  pthread_mutex_init(&s->wb_mu, NULL);
  pthread_cond_init(&s->wb_cv, NULL);
  pthread_cond_init(&s->wb_idle, NULL);
  for (int i = 0; i < KVS__NSTRIPES; i++)
    pthread_rwlock_init(&s->stripe[i], NULL);
  for (int i = 0; i < KVS__NTIERS; i++)
    pthread_mutex_init(&s->evict_mu[i], NULL);
  s->nbucket = 1024;
  s->bucket = calloc(s->nbucket, sizeof *s->bucket);
  kvs_err rc = s->bucket ? KVS_OK : KVS_ENOMEM;
  if (rc == KVS_OK) rc = mkdirs(c->data_dir);
  if (rc == KVS_OK) rc = load_secret(s);
  if (rc == KVS_OK && c->n_quotas > 0) { /* before the tiers load: they count usage */
    s->quota = calloc((size_t)c->n_quotas, sizeof *s->quota);
    if (!s->quota) rc = KVS_ENOMEM;
    for (int i = 0; s->quota && i < c->n_quotas; i++) {
      kvs__tquota *q = &s->quota[i];
      q->q = c->quotas[i];
      kvs__store_tenant_id(s, q->q.tenant, q->tid);
      pthread_mutex_init(&q->rmu, NULL);
      q->tokens = q->q.burst;
      q->last_ns = kvs_now_ns();
    }
    if (s->quota) s->nquota = c->n_quotas;
  }
  if (rc == KVS_OK) kvs__sh_init(s);
  if (rc == KVS_OK) rc = open_tiers(s);
  if (rc == KVS_OK && c->durability == KVS_SVC_DUR_RAM) rc = kvs__wb_start(s);
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
  kvs__wb_stop(s); /* every acknowledged PUT written before the tiers close */
  if (s->bucket) {
    /* flush every dirty hit counter, then the WAL */
    for (;;) {
      kvs__skey ks[256];
      int n = 0;
      pthread_mutex_lock(&s->mu);
      for (size_t i = 0; i < s->nbucket && n < 256; i++)
        for (kvs__entry *e = s->bucket[i]; e && n < 256; e = e->hnext)
          if (e->dirty && kvs__tier_at(s, e->tier)) ks[n++] = e->sk;
      pthread_mutex_unlock(&s->mu);
      if (!n) break;
      for (int i = 0; i < n; i++)
        if (rewrite_meta(s, &ks[i], 0) != KVS_OK) {
          pthread_mutex_lock(&s->mu);
          kvs__entry *e = kvs__ix_find(s, &ks[i]);
          if (e) e->dirty = 0;
          pthread_mutex_unlock(&s->mu);
        }
    }
  }
  for (int i = 0; i < KVS__NTIERS; i++)
    if (s->tier[i]) s->tier[i]->ops->close(s->tier[i]); /* made durable, closed */
  kvs__sh_expire(s, 0, 1);
  if (s->bucket) {
    for (size_t i = 0; i < s->nbucket; i++) {
      kvs__entry *e = s->bucket[i];
      while (e) {
        kvs__entry *nx = e->hnext;
        kvs__buf_unref(e->t0);
        free(e->meta);
        free(e);
        e = nx;
      }
    }
    free(s->bucket);
  }
  kvs__sh_free(s);
  pthread_mutex_destroy(&s->shm_mu);
  pthread_mutex_destroy(&s->wb_mu);
  pthread_cond_destroy(&s->wb_cv);
  pthread_cond_destroy(&s->wb_idle);
  for (int i = 0; i < KVS__NSTRIPES; i++)
    pthread_rwlock_destroy(&s->stripe[i]);
  for (int i = 0; i < KVS__NTIERS; i++)
    pthread_mutex_destroy(&s->evict_mu[i]);
  pthread_mutex_destroy(&s->mu);
  for (int i = 0; i < s->nquota; i++)
    pthread_mutex_destroy(&s->quota[i].rmu);
  free(s->quota);
  sodium_memzero(s->secret, sizeof s->secret);
  free(s);
}
