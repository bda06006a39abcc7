/* metrics.c - counters and latency histograms, and their Prometheus text. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_int.h"

const double kvs__hist_bounds_s[KVS__HIST_BUCKETS] = {
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 250e-3, 1.0,
    1e300};

void kvs__hist_observe(kvs__hist *h, uint64_t ns) {
  double s = (double)ns * 1e-9;
  int i = 0;
  while (i < KVS__HIST_BUCKETS - 1 && s > kvs__hist_bounds_s[i]) i++;
  atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

typedef struct sbuf {
  char *p;
  size_t n, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if (b->p && b->n + (size_t)k < b->cap) {
      b->n += (size_t)k;
      return;
    }
    size_t nc = (b->cap ? b->cap * 2 : 8192) + (size_t)k;
    char *np = realloc(b->p, nc);
    if (!np) return;
    b->p = np;
    b->cap = nc;
  }
}

static uint64_t ld(atomic_uint_fast64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

char *kvs__metrics_text(kvs__metrics *m, kvs__store *st) {
  sbuf b = {0};
  uint64_t v[KVS__STAT_COUNT];
  kvs__store_stats(st, v);
  static const struct {
    int stat;
    const char *name, *type, *help;
  } rows[] = {
      {KVS_STAT_HITS, "kvstash_hits_total", "counter", "GET/LOOKUP hits"},
      {KVS_STAT_MISSES, "kvstash_misses_total", "counter", "GET/LOOKUP misses"},
      {KVS_STAT_PUTS, "kvstash_puts_total", "counter", "entries stored"},
      {KVS_STAT_EVICTIONS, "kvstash_evictions_total", "counter", "entries evicted for capacity"},
      {KVS_STAT_QUARANTINES, "kvstash_quarantines_total", "counter",
       "entries quarantined (checksum mismatch on read)"},
      {KVS_STAT_EXPIRED, "kvstash_expired_total", "counter", "entries expired by TTL"},
      {KVS_STAT_BYTES_IN, "kvstash_bytes_in_total", "counter", "value bytes received"},
      {KVS_STAT_BYTES_OUT, "kvstash_bytes_out_total", "counter", "value bytes sent"},
      {KVS_STAT_REQUESTS, "kvstash_requests_total", "counter", "data-plane requests"},
      {KVS_STAT_ERRORS, "kvstash_errors_total", "counter", "data-plane error answers"},
      {KVS_STAT_ENTRIES, "kvstash_entries", "gauge", "entries stored"},
      {KVS_STAT_LEASES, "kvstash_leases", "gauge", "shared-memory leases held (all tenants)"},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
    sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", rows[i].name, rows[i].help,
              rows[i].name, rows[i].type, rows[i].name, (unsigned long long)v[rows[i].stat]);
  sb_printf(&b, "# HELP kvstash_tier_bytes bytes held per tier\n# TYPE kvstash_tier_bytes gauge\n");
  for (int t = 0; t < 3; t++)
    sb_printf(&b, "kvstash_tier_bytes{tier=\"%d\"} %llu\n", t,
              (unsigned long long)v[KVS_STAT_BYTES_T0 + t]);
  sb_printf(&b, "# HELP kvstash_tier_bytes_out_total value bytes served, by the tier they came from\n"
                "# TYPE kvstash_tier_bytes_out_total counter\n");
  for (int t = 0; t < 3; t++)
    sb_printf(&b, "kvstash_tier_bytes_out_total{tier=\"%d\"} %llu\n", t,
              (unsigned long long)ld(&m->bytes_out_tier[t]));
  sb_printf(&b, "# HELP kvstash_tier_bytes_moved_total bytes moved between disk tiers\n"
                "# TYPE kvstash_tier_bytes_moved_total counter\n"
                "kvstash_tier_bytes_moved_total{from=\"1\",to=\"2\"} %llu\n"
                "kvstash_tier_bytes_moved_total{from=\"2\",to=\"1\"} %llu\n",
            (unsigned long long)ld(&m->bytes_demoted), (unsigned long long)ld(&m->bytes_promoted));
  sb_printf(&b, "# TYPE kvstash_auth_failures_total counter\nkvstash_auth_failures_total %llu\n",
            (unsigned long long)ld(&m->auth_failures));
  sb_printf(&b, "# TYPE kvstash_bad_frames_total counter\nkvstash_bad_frames_total %llu\n",
            (unsigned long long)ld(&m->bad_frames));
  sb_printf(&b, "# TYPE kvstash_timeouts_total counter\nkvstash_timeouts_total %llu\n",
            (unsigned long long)ld(&m->timeouts));
  sb_printf(&b, "# TYPE kvstash_promotions_total counter\nkvstash_promotions_total %llu\n",
            (unsigned long long)ld(&m->promotions));
  sb_printf(&b, "# TYPE kvstash_demotions_total counter\nkvstash_demotions_total %llu\n",
            (unsigned long long)ld(&m->demotions));
  sb_printf(&b, "# HELP kvstash_request_seconds data-plane latency by op\n"
                "# TYPE kvstash_request_seconds histogram\n");
  for (int op = 1; op <= KVS__OP_MAX; op++) {
    kvs__hist *h = &m->op_latency[op];
    uint64_t cnt = ld(&h->count);
    if (!cnt) continue;
    uint64_t cum = 0;
    const char *name = kvs_wire_op_name((uint16_t)op);
    for (int i = 0; i < KVS__HIST_BUCKETS; i++) {
      cum += ld(&h->bucket[i]);
      if (i == KVS__HIST_BUCKETS - 1)
        sb_printf(&b, "kvstash_request_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n", name,
                  (unsigned long long)cum);
      else
        sb_printf(&b, "kvstash_request_seconds_bucket{op=\"%s\",le=\"%g\"} %llu\n", name,
                  kvs__hist_bounds_s[i], (unsigned long long)cum);
    }
    sb_printf(&b, "kvstash_request_seconds_sum{op=\"%s\"} %.9f\n", name,
              (double)ld(&h->sum_ns) * 1e-9);
    sb_printf(&b, "kvstash_request_seconds_count{op=\"%s\"} %llu\n", name,
              (unsigned long long)cnt);
  }
  static const char *props[] = {"rocksdb.estimate-num-keys", "rocksdb.total-sst-files-size",
                                "rocksdb.live-blob-file-size", "rocksdb.cur-size-all-mem-tables",
                                "rocksdb.num-running-compactions", "rocksdb.background-errors"};
  sb_printf(&b, "# HELP kvstash_rocksdb RocksDB properties per disk tier\n"
                "# TYPE kvstash_rocksdb gauge\n");
  for (int t = 1; t <= 2; t++) {
    if (t == 2 && !kvs__store_has_cold(st)) break;
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
      sb_printf(&b, "kvstash_rocksdb{tier=\"%d\",property=\"%s\"} %llu\n", t, props[i] + 8,
                (unsigned long long)kvs__store_rocksdb_prop(st, t, props[i]));
  }
  if (!b.p) b.p = calloc(1, 1);
  return b.p;
}
