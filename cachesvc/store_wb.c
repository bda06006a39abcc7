/* store_wb.c - write-behind (durability = ram): a PUT is acknowledged once
 * its value is verified, indexed and held in RAM; one writer thread writes
 * it into the first tier afterwards, in the order the PUTs came
 * (store_int.h has the layers and the lock order).
 *
 *   queue      FIFO of kvs__wjob, bounded by write_behind_bytes and
 *              write_behind_entries (reserved before a PUT is indexed); a
 *              PUT that finds it full writes through on its own thread
 *              (backpressure: the backlog never grows past its bounds)
 *   writer     per job, under the key's stripe lock: if the entry still
 *              points at this job, its record (built now: pins, TTLs and
 *              hits set meanwhile included) and value go to the tier in one
 *              WriteBatch; a job whose entry was deleted, overwritten,
 *              evicted or moved is skipped, so nothing is resurrected
 *   failure    (a full disk, an I/O error) the entry stays in T0 only
 *              (ramonly: dropped with its RAM copy, counted) and whatever
 *              older copy of the key the tier held is deleted
 *   stop       kvs__wb_stop writes every queued job before the tiers close
 *   priority   the writer runs at nice 10 (and RocksDB's flush and
 *              compaction threads at low CPU priority, tier_rocksdb.c), so
 *              on a busy host the acknowledgments are not queued behind
 *              the disk writes they were meant to skip */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "store_int.h"

kvs__wjob *kvs__wb_job_new(const kvs__skey *k, kvs__buf *b) {
  kvs__wjob *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->sk = *k;
  kvs__buf_ref(b);
  j->buf = b;
  j->bytes = b->len;
  return j;
}

void kvs__wb_job_free(kvs__wjob *j) {
  if (!j) return;
  kvs__buf_unref(j->buf);
  free(j);
}

int kvs__wb_reserve(kvs__store *s, uint64_t bytes) {
  pthread_mutex_lock(&s->wb_mu);
  int ok = s->wb_started && !s->wb_stop && s->wb_n + 1 <= s->cfg.wb_entries &&
           s->wb_bytes + bytes <= s->cfg.wb_bytes;
  if (ok) {
    s->wb_n++;
    s->wb_bytes += bytes;
  }
  pthread_mutex_unlock(&s->wb_mu);
  if (!ok) atomic_fetch_add_explicit(&s->met->wb_fellback, 1, memory_order_relaxed);
  return ok;
}

static void unreserve_locked(kvs__store *s, uint64_t bytes) {
  s->wb_n--;
  s->wb_bytes -= bytes;
  if (s->wb_n == 0) pthread_cond_broadcast(&s->wb_idle);
}

void kvs__wb_unreserve(kvs__store *s, uint64_t bytes) {
  pthread_mutex_lock(&s->wb_mu);
  unreserve_locked(s, bytes);
  pthread_mutex_unlock(&s->wb_mu);
}

uint64_t kvs__wb_pending(kvs__store *s) {
  pthread_mutex_lock(&s->wb_mu);
  uint64_t b = s->wb_bytes;
  pthread_mutex_unlock(&s->wb_mu);
  return b;
}

void kvs__wb_enqueue(kvs__store *s, kvs__wjob *j) {
  j->enq_ns = kvs_now_ns();
  j->next = NULL;
  pthread_mutex_lock(&s->wb_mu);
  if (s->wb_tail)
    s->wb_tail->next = j;
  else
    s->wb_head = j;
  s->wb_tail = j;
  pthread_cond_signal(&s->wb_cv);
  pthread_mutex_unlock(&s->wb_mu);
}

/* One job: written when its entry still points at it. */
static void write_one(kvs__store *s, kvs__wjob *j) {
  pthread_rwlock_t *sl = kvs__stripe_of(s, &j->sk);
  pthread_rwlock_wrlock(sl);
  pthread_mutex_lock(&s->mu);
  kvs__entry *e = kvs__ix_find(s, &j->sk);
  uint8_t *rec = NULL;
  size_t rl = 0;
  unsigned tn = 0;
  int live = e && e->wb == j;
  if (live) {
    tn = e->tier;
    rec = kvs__ix_record(e, tn, 0, &rl);
    e->dirty = 0; /* the record written now carries the counters */
  }
  pthread_mutex_unlock(&s->mu);
  if (!live) {
    pthread_rwlock_unlock(sl);
    atomic_fetch_add_explicit(&s->met->wb_skipped, 1, memory_order_relaxed);
    return;
  }
  kvs__tier *t = kvs__tier_at(s, tn);
  /* unlogged: what a crash loses before the memtable flush was only ever
   * promised in RAM (tier.h, KVS__TIER_NOWAL) */
  kvs_err rc = rec ? t->ops->put(t, &j->sk, rec, rl, j->buf->data, j->buf->len, KVS__TIER_NOWAL)
                   : KVS_ENOMEM;
  free(rec);
  if (rc != KVS_OK) /* no older copy of the key may come back at a restart */
    (void)t->ops->del(t, &j->sk, NULL, 0, 0);
  pthread_mutex_lock(&s->mu);
  e = kvs__ix_find(s, &j->sk);
  if (e && e->wb == j) { /* (the stripe kept everyone else off it) */
    e->wb = NULL;
    if (rc != KVS_OK) {
      if (e->t0 && !e->ramonly) {
        e->ramonly = 1;
        s->ramonly_n++;
        s->ramonly_bytes += e->value_bytes;
      } else if (!e->t0) {
        kvs__ix_remove(s, e); /* no copy left anywhere: a miss from now on */
      }
    }
  }
  pthread_mutex_unlock(&s->mu);
  pthread_rwlock_unlock(sl);
  if (rc == KVS_OK)
    atomic_fetch_add_explicit(&s->met->wb_written, 1, memory_order_relaxed);
  else {
    atomic_fetch_add_explicit(&s->met->wb_failed, 1, memory_order_relaxed);
    char hex[33];
    kvs_hash128 kh;
    memcpy(kh.b, j->sk.b + 8, 16);
    kvs_hash128_hex(&kh, hex);
    KVS_LOGW("store", "write-behind failed: the entry stays in RAM only", "skey=%s tier=%s err=%s",
             hex, t->name, kvs_errname(rc));
  }
}

static void *writer_main(void *arg) {
  kvs__store *s = arg;
  /* below the request threads: where cores are short, the acknowledgments
   * (checksum + index) go first and the disk write waits (nice 10 on this
   * thread only; best effort) */
  (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  pthread_mutex_lock(&s->wb_mu);
  for (;;) {
    while ((!s->wb_head || s->wb_paused) && !s->wb_stop)
      pthread_cond_wait(&s->wb_cv, &s->wb_mu);
    kvs__wjob *j = s->wb_head;
    if (!j) break; /* stopping, and nothing left */
    s->wb_head = j->next;
    if (!s->wb_head) s->wb_tail = NULL;
    s->wb_cur_ns = j->enq_ns;
    pthread_mutex_unlock(&s->wb_mu);
    write_one(s, j);
    uint64_t bytes = j->bytes;
    kvs__wb_job_free(j); /* the value's ref goes before the backlog says empty */
    pthread_mutex_lock(&s->wb_mu);
    s->wb_cur_ns = 0;
    unreserve_locked(s, bytes);
  }
  pthread_mutex_unlock(&s->wb_mu);
  return NULL;
}

kvs_err kvs__wb_start(kvs__store *s) {
  pthread_mutex_lock(&s->wb_mu);
  s->wb_stop = 0;
  int rc = pthread_create(&s->wb_thr, NULL, writer_main, s);
  s->wb_started = rc == 0;
  pthread_mutex_unlock(&s->wb_mu);
  return rc == 0 ? KVS_OK : KVS_EINTERNAL;
}

void kvs__wb_stop(kvs__store *s) {
  pthread_mutex_lock(&s->wb_mu);
  int started = s->wb_started;
  uint64_t n = s->wb_n, b = s->wb_bytes;
  s->wb_stop = 1;
  pthread_cond_broadcast(&s->wb_cv);
  pthread_mutex_unlock(&s->wb_mu);
  if (!started) return;
  if (n)
    KVS_LOGI("store", "writing the write-behind backlog before closing", "entries=%llu bytes=%llu",
             (unsigned long long)n, (unsigned long long)b);
  pthread_join(s->wb_thr, NULL); /* it leaves once the queue is empty */
  pthread_mutex_lock(&s->wb_mu);
  s->wb_started = 0;
  pthread_mutex_unlock(&s->wb_mu);
}

int kvs__wb_wait_idle(kvs__store *s, int timeout_ms) {
  pthread_mutex_lock(&s->wb_mu);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  int rc = 0;
  while (s->wb_n && rc == 0)
    rc = pthread_cond_timedwait(&s->wb_idle, &s->wb_mu, &ts);
  int idle = s->wb_n == 0;
  pthread_mutex_unlock(&s->wb_mu);
  return idle;
}

void kvs__wb_pause(kvs__store *s, int on) {
  pthread_mutex_lock(&s->wb_mu);
  s->wb_paused = on;
  pthread_cond_broadcast(&s->wb_cv);
  pthread_mutex_unlock(&s->wb_mu);
}

void kvs__store_wb_view(kvs__store *s, kvs__wb_view *out) {
  memset(out, 0, sizeof *out);
  uint64_t now = kvs_now_ns();
  pthread_mutex_lock(&s->wb_mu);
  out->entries = s->wb_n;
  out->bytes = s->wb_bytes;
  uint64_t oldest = s->wb_cur_ns ? s->wb_cur_ns : s->wb_head ? s->wb_head->enq_ns : 0;
  out->oldest_ms = oldest && now > oldest ? (now - oldest) / 1000000u : 0;
  pthread_mutex_unlock(&s->wb_mu);
  out->max_entries = s->cfg.durability == KVS_SVC_DUR_RAM ? s->cfg.wb_entries : 0;
  out->max_bytes = s->cfg.durability == KVS_SVC_DUR_RAM ? s->cfg.wb_bytes : 0;
  pthread_mutex_lock(&s->mu);
  out->ramonly = s->ramonly_n;
  out->ramonly_b = s->ramonly_bytes;
  pthread_mutex_unlock(&s->mu);
}
