/* metrics.c - counters and latency histograms, and their Prometheus text. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_int.h"

const double kvs__hist_bounds_s[KVS__HIST_BUCKETS] = {25e-6,  50e-6,  100e-6, 250e-6, 500e-6,
                                                      1e-3,   2.5e-3, 5e-3,   10e-3,  25e-3,
                                                      100e-3, 250e-3, 1.0,    1e300};

void kvs__hist_observe(kvs__hist *h, uint64_t ns) {
  double s = (double)ns * 1e-9;
  int i = 0;
  while (i < KVS__HIST_BUCKETS - 1 && s > kvs__hist_bounds_s[i])
    i++;
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

static uint64_t ld(atomic_uint_fast64_t *a) {
  return atomic_load_explicit(a, memory_order_relaxed);
}

void kvs__metrics_lookup(kvs__metrics *m, const kvs_wire_lookup_req *q, const uint8_t *status) {
  uint64_t hit = 0, tokens = 0, tokens_hit = 0;
  for (uint32_t i = 0; i < q->n_chunks; i++) {
    kvs_wire_lookup_chunk c;
    kvs_wire_lookup_chunk_at(q, i, &c);
    tokens += c.tok_len;
    if (status[i]) {
      hit++;
      tokens_hit += c.tok_len;
    }
  }
  KVS__INC(m, KVS_STAT_LOOKUPS, 1);
  KVS__INC(m, KVS_STAT_LOOKUP_CHUNKS, q->n_chunks);
  KVS__INC(m, KVS_STAT_LOOKUP_CHUNKS_HIT, hit);
  KVS__INC(m, KVS_STAT_LOOKUP_TOKENS, tokens);
  KVS__INC(m, KVS_STAT_LOOKUP_TOKENS_HIT, tokens_hit);
}

static void family(sbuf *b, const char *name, const char *type, const char *help) {
  sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(sbuf *b, const char *name, const char *type, const char *help, uint64_t v) {
  family(b, name, type, help);
  sb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

char *kvs__metrics_text(kvs__metrics *m, kvs__store *st) {
  sbuf b = {0};
  uint64_t v[KVS__STAT_COUNT];
  kvs__store_stats(st, v);
  family(&b, "kvstash_build_info", "gauge", "always 1; the labels say which kvstashd this is");
  sb_printf(&b, "kvstash_build_info{version=\"%s\",wire_version=\"%u\"} 1\n", kvs_version(),
            (unsigned)KVS_WIRE_VERSION);
  family(&b, "kvstash_start_time_seconds", "gauge", "when this kvstashd started, Unix time");
  sb_printf(&b, "kvstash_start_time_seconds %.3f\n", (double)m->start_unix_ms / 1000.0);
  family(&b, "kvstash_connected_clients", "gauge",
         "data-plane connections open now, by plane (message: nng tcp/ipc/tls, stream: "
         "byte-stream GET listeners)");
  sb_printf(&b, "kvstash_connected_clients{plane=\"message\"} %lld\n",
            (long long)atomic_load(&m->clients_msg));
  sb_printf(&b, "kvstash_connected_clients{plane=\"stream\"} %lld\n",
            (long long)atomic_load(&m->clients_stream));
  static const struct {
    int stat;
    const char *name, *type, *help;
  } rows[] = {
      {KVS_STAT_LOOKUPS, "kvstash_lookup_requests_total", "counter",
       "LOOKUP requests (an engine asking which chunks are cached before a prefill)"},
      {KVS_STAT_LOOKUP_CHUNKS, "kvstash_lookup_chunks_total", "counter",
       "chunks asked about by LOOKUP"},
      {KVS_STAT_LOOKUP_CHUNKS_HIT, "kvstash_lookup_chunks_hit_total", "counter",
       "chunks LOOKUP found cached (model and tokens matching)"},
      {KVS_STAT_LOOKUP_TOKENS, "kvstash_lookup_tokens_total", "counter",
       "tokens of the chunks asked about by LOOKUP"},
      {KVS_STAT_LOOKUP_TOKENS_HIT, "kvstash_lookup_tokens_hit_total", "counter",
       "tokens of the chunks LOOKUP found cached: the prefill work reuse can save"},
      {KVS_STAT_HITS, "kvstash_get_hits_total", "counter",
       "GET and LEASE requests answered with the value (one per request, whatever its "
       "segments)"},
      {KVS_STAT_MISSES, "kvstash_get_misses_total", "counter",
       "GET and LEASE requests for a value not cached (or model/tokens not matching)"},
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
    one(&b, rows[i].name, rows[i].type, rows[i].help, v[rows[i].stat]);
  one(&b, "kvstash_lookup_chunks_missed_total", "counter",
      "chunks asked about by LOOKUP and not cached (chunks_total - chunks_hit_total)",
      v[KVS_STAT_LOOKUP_CHUNKS] - v[KVS_STAT_LOOKUP_CHUNKS_HIT]);
  one(&b, "kvstash_lookup_tokens_missed_total", "counter",
      "tokens of the chunks LOOKUP did not find cached: what must be prefilled",
      v[KVS_STAT_LOOKUP_TOKENS] - v[KVS_STAT_LOOKUP_TOKENS_HIT]);
  /* the tiers by the names of the tier list (cachesvc/tier.h), absent ones at 0 */
  kvs__tier_row tr[KVS__MAX_TIER_ROWS];
  int ntr = kvs__store_tier_rows(st, tr, KVS__MAX_TIER_ROWS);
  family(&b, "kvstash_tier_bytes", "gauge", "bytes held per tier (ram, then the disk tiers)");
  for (int t = 0; t < ntr; t++)
    sb_printf(&b, "kvstash_tier_bytes{tier=\"%s\"} %llu\n", tr[t].name,
              (unsigned long long)tr[t].used);
  family(&b, "kvstash_tier_capacity_bytes", "gauge", "byte budget per tier (0: absent)");
  for (int t = 0; t < ntr; t++)
    sb_printf(&b, "kvstash_tier_capacity_bytes{tier=\"%s\"} %llu\n", tr[t].name,
              (unsigned long long)(tr[t].present ? tr[t].capacity : 0));
  family(&b, "kvstash_tier_entries", "gauge",
         "entries per tier (ram: those with a RAM copy, also counted in their disk tier)");
  for (int t = 0; t < ntr; t++)
    sb_printf(&b, "kvstash_tier_entries{tier=\"%s\"} %llu\n", tr[t].name,
              (unsigned long long)tr[t].entries);
  family(&b, "kvstash_tier_bytes_out_total", "counter",
         "value bytes served, by the tier they came from");
  for (int t = 0; t < ntr; t++)
    sb_printf(&b, "kvstash_tier_bytes_out_total{tier=\"%s\"} %llu\n", tr[t].name,
              (unsigned long long)ld(&m->bytes_out_tier[tr[t].wire]));
  /* demotions go down the list, promotions up (totals over neighbours: with
   * two disk tiers, exactly disk -> cold and cold -> disk) */
  family(&b, "kvstash_tier_bytes_moved_total", "counter", "bytes moved between the disk tiers");
  if (ntr > 2)
    sb_printf(&b,
              "kvstash_tier_bytes_moved_total{from=\"%s\",to=\"%s\"} %llu\n"
              "kvstash_tier_bytes_moved_total{from=\"%s\",to=\"%s\"} %llu\n",
              tr[1].name, tr[ntr - 1].name, (unsigned long long)ld(&m->bytes_demoted),
              tr[ntr - 1].name, tr[1].name, (unsigned long long)ld(&m->bytes_promoted));
  one(&b, "kvstash_auth_failures_total", "counter",
      "requests refused for a wrong or missing tenant token", ld(&m->auth_failures));
  family(&b, "kvstash_config_reloads_total", "counter",
         "config reloads (SIGHUP): applied (ok) or rejected, the config in force kept (error)");
  sb_printf(&b, "kvstash_config_reloads_total{result=\"ok\"} %llu\n",
            (unsigned long long)ld(&m->reloads_ok));
  sb_printf(&b, "kvstash_config_reloads_total{result=\"error\"} %llu\n",
            (unsigned long long)ld(&m->reloads_err));
  one(&b, "kvstash_bad_frames_total", "counter", "malformed frames received (answered or dropped)",
      ld(&m->bad_frames));
  one(&b, "kvstash_nospace_refused_total", "counter",
      "writes refused KVS_ENOSPC: the disk's free-space reserve", ld(&m->nospace_refused));
  one(&b, "kvstash_slow_conns_total", "counter",
      "data-plane connections whose answers are dropped (not read within the deadline or past "
      "the per-connection cap)",
      ld(&m->slow_jammed));
  one(&b, "kvstash_disk_corrupt_total", "counter", "RocksDB corruption statuses on value reads",
      ld(&m->disk_corrupt));
  family(&b, "kvstash_tiers_recovered_total", "counter",
         "disk tiers found corrupt at start: salvaged or repaired, or set aside");
  sb_printf(&b, "kvstash_tiers_recovered_total{how=\"repaired\"} %llu\n",
            (unsigned long long)ld(&m->tiers_repaired));
  sb_printf(&b, "kvstash_tiers_recovered_total{how=\"set_aside\"} %llu\n",
            (unsigned long long)ld(&m->tiers_reset));
  one(&b, "kvstash_timeouts_total", "counter",
      "requests answered KVS_ETIMEDOUT unrun after request_deadline_ms in the queue, and answers "
      "whose send timed out",
      ld(&m->timeouts));
  one(&b, "kvstash_promotions_total", "counter",
      "entries moved from the cold tier to the disk tier", ld(&m->promotions));
  one(&b, "kvstash_demotions_total", "counter", "entries moved from the disk tier to the cold tier",
      ld(&m->demotions));
  kvs__wb_view wv;
  kvs__store_wb_view(st, &wv);
  one(&b, "kvstash_writebehind_backlog_entries", "gauge",
      "PUTs acknowledged from RAM whose disk write is still to come (durability = ram)",
      wv.entries);
  one(&b, "kvstash_writebehind_backlog_bytes", "gauge",
      "value bytes acknowledged from RAM, not on disk yet", wv.bytes);
  family(&b, "kvstash_writebehind_oldest_seconds", "gauge",
         "age of the oldest acknowledged PUT not on disk yet (0: none)");
  sb_printf(&b, "kvstash_writebehind_oldest_seconds %.3f\n", (double)wv.oldest_ms / 1000.0);
  one(&b, "kvstash_writebehind_limit_entries", "gauge",
      "write_behind_entries (0: durability is not ram)", wv.max_entries);
  one(&b, "kvstash_writebehind_limit_bytes", "gauge",
      "write_behind_bytes (0: durability is not ram)", wv.max_bytes);
  family(&b, "kvstash_writebehind_writes_total", "counter",
         "write-behind disk writes: done, failed (the entry stays in RAM only), fellback (backlog "
         "full: the PUT wrote through), skipped (deleted, overwritten or moved first)");
  sb_printf(&b,
            "kvstash_writebehind_writes_total{result=\"done\"} %llu\n"
            "kvstash_writebehind_writes_total{result=\"failed\"} %llu\n"
            "kvstash_writebehind_writes_total{result=\"fellback\"} %llu\n"
            "kvstash_writebehind_writes_total{result=\"skipped\"} %llu\n",
            (unsigned long long)ld(&m->wb_written), (unsigned long long)ld(&m->wb_failed),
            (unsigned long long)ld(&m->wb_fellback), (unsigned long long)ld(&m->wb_skipped));
  one(&b, "kvstash_ram_only_entries", "gauge",
      "entries whose write-behind failed (a full disk): in RAM only, lost with their RAM copy",
      wv.ramonly);
  one(&b, "kvstash_ram_only_bytes", "gauge", "their value bytes", wv.ramonly_b);
  family(&b, "kvstash_request_seconds", "histogram", "data-plane latency by op");
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
    sb_printf(&b, "kvstash_request_seconds_count{op=\"%s\"} %llu\n", name, (unsigned long long)cnt);
  }
  static const char *props[] = {
      "rocksdb.estimate-num-keys",       "rocksdb.total-sst-files-size",
      "rocksdb.live-blob-file-size",     "rocksdb.cur-size-all-mem-tables",
      "rocksdb.num-running-compactions", "rocksdb.background-errors"};
  family(&b, "kvstash_rocksdb", "gauge", "RocksDB properties per disk tier (disk, cold)");
  for (int t = 1; t < ntr; t++) {
    if (!tr[t].present) continue;
    for (size_t i = 0; i < sizeof props / sizeof props[0]; i++)
      sb_printf(&b, "kvstash_rocksdb{tier=\"%s\",property=\"%s\"} %llu\n", tr[t].name, props[i] + 8,
                (unsigned long long)kvs__store_tier_prop(st, tr[t].wire, props[i]));
  }
  kvs__quota_view qv;
  if (kvs__store_quota(st, 0, &qv)) { /* tenants with a quota line */
    static const char *ref_kind[KVS__QREF_N] = {"disk", "entries", "rate"};
    family(&b, "kvstash_quota_limit", "gauge",
           "tenant quotas: ram and disk in bytes, entries, rate in requests per second (set ones)");
    for (int i = 0; kvs__store_quota(st, i, &qv); i++) {
      const kvs_svc_quota *q = &qv.q;
      if (q->ram_bytes)
        sb_printf(&b, "kvstash_quota_limit{tenant=\"%s\",kind=\"ram\"} %llu\n", q->tenant,
                  (unsigned long long)q->ram_bytes);
      if (q->disk_bytes)
        sb_printf(&b, "kvstash_quota_limit{tenant=\"%s\",kind=\"disk\"} %llu\n", q->tenant,
                  (unsigned long long)q->disk_bytes);
      if (q->entries)
        sb_printf(&b, "kvstash_quota_limit{tenant=\"%s\",kind=\"entries\"} %llu\n", q->tenant,
                  (unsigned long long)q->entries);
      if (q->rate > 0)
        sb_printf(&b, "kvstash_quota_limit{tenant=\"%s\",kind=\"rate\"} %g\n", q->tenant, q->rate);
    }
    family(&b, "kvstash_quota_used", "gauge",
           "what a tenant with a quota uses: ram and disk in bytes (disk = both disk tiers), "
           "entries");
    for (int i = 0; kvs__store_quota(st, i, &qv); i++)
      sb_printf(&b,
                "kvstash_quota_used{tenant=\"%s\",kind=\"ram\"} %llu\n"
                "kvstash_quota_used{tenant=\"%s\",kind=\"disk\"} %llu\n"
                "kvstash_quota_used{tenant=\"%s\",kind=\"entries\"} %llu\n",
                qv.q.tenant, (unsigned long long)qv.ram, qv.q.tenant, (unsigned long long)qv.disk,
                qv.q.tenant, (unsigned long long)qv.entries);
    family(&b, "kvstash_quota_refused_total", "counter",
           "requests refused KVS_EQUOTA, by tenant and the quota they hit (disk, entries, rate)");
    for (int i = 0; kvs__store_quota(st, i, &qv); i++)
      for (int k = 0; k < KVS__QREF_N; k++)
        sb_printf(&b, "kvstash_quota_refused_total{tenant=\"%s\",kind=\"%s\"} %llu\n", qv.q.tenant,
                  ref_kind[k], (unsigned long long)qv.refused[k]);
  }
  char cl[1024];
  kvs__cluster_metrics(m, cl, sizeof cl); /* "" when not in a cluster */
  sb_printf(&b, "%s", cl);
  if (!b.p) b.p = calloc(1, 1);
  return b.p;
}
