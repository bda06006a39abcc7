/* Write-behind (durability = ram, cachesvc/store_wb.c) on the real store
 * and RocksDB in a temporary directory, in process: the writer is held
 * (kvs__wb_pause) where a case needs values still waiting, so nothing here
 * depends on timing.
 *
 *   pending_get      a PUT acknowledged before its write is served from RAM
 *                    (no T0 copy: ram_bytes 0), then from disk
 *   restart          close writes the backlog; a new store reads it all
 *   backlog_full     past write_behind_entries a PUT writes through (on disk
 *                    at once), everything correct after a restart
 *   del_overwrite    DELETE / overwrite of a waiting entry: the writer skips
 *                    the stale job, nothing comes back (nor after a restart)
 *   evict_pending    the first tier over capacity while values wait: dropped
 *                    cleanly, or (with a cold tier) demoted from RAM
 *   full_disk        (needs a tmpfs mount: root, as in CI) the write fails:
 *                    the entry stays RAM-only, counted, gone with its RAM copy
 *                    and after a restart; never wrong bytes
 *   daemon_restart   the real kvstashd: 24 PUTs of 1 MiB read back at once,
 *                    /metrics shows the write-behind, SIGTERM writes the
 *                    backlog, the restarted daemon serves them all from disk */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvs_test.h"
#include "store_int.h"
#include "svc_helper.h"

static char g_dir[64];
static kvs__metrics g_met;

typedef struct chunk {
  kvs_wire_meta m;
  int32_t tok[8];
  uint64_t seg_end;
  uint8_t *v;
  kvs__skey sk;
} chunk;

/* A chunk of `bytes` whose content depends on (id, ver); the key on id only. */
static void mk(kvs__store *s, chunk *c, int id, int ver, size_t bytes) {
  memset(c, 0, sizeof *c);
  for (int i = 0; i < 8; i++)
    c->tok[i] = id * 100 + i;
  kvs_model_id model = kvs_hash128_buf("wb-model", 8);
  c->m.key = kvs_key_content(&model, c->tok, 8);
  c->m.model = model;
  c->m.key_kind = KVS_KEY_KIND_CONTENT;
  c->m.n_tokens = 8;
  kvs_layout l = {2, 2, 64, KVS_DTYPE_F16, KVS_ROPE_NORM, 64, 10000.f, 1.f, 0, 0, 0, 0};
  c->m.layout = l;
  c->m.codec_profile = 1;
  c->m.n_segments = 1;
  c->seg_end = bytes;
  c->v = malloc(bytes);
  for (size_t i = 0; i < bytes; i++)
    c->v[i] = (uint8_t)(i * 31 + (size_t)id * 7 + (size_t)ver * 101);
  c->m.value_bytes = bytes;
  c->m.checksum = kvs_checksum64(c->v, bytes);
  c->m.tokens_le = (const uint8_t *)c->tok;
  c->m.seg_end_le = (const uint8_t *)&c->seg_end;
  kvs__store_skey(s, "t", &c->m.key, &c->sk);
}
static void rekey(kvs__store *s, chunk *c) { kvs__store_skey(s, "t", &c->m.key, &c->sk); }

static kvs_err put(kvs__store *s, chunk *c) { return kvs__store_put(s, &c->sk, &c->m, c->v, 0, 0); }

/* KVS_OK only with the right bytes (KVS_ECORRUPT for wrong ones); *tier
 * where it came from. */
static kvs_err get(kvs__store *s, chunk *c, int *tier) {
  kvs__vref v;
  kvs_err rc = kvs__store_get(s, &c->sk, &c->m.model, (const uint8_t *)c->tok, c->m.n_tokens, &v);
  if (rc != KVS_OK) return rc;
  if (tier) *tier = v.tier;
  if (v.buf->len != c->m.value_bytes || memcmp(v.buf->data, c->v, v.buf->len) != 0)
    rc = KVS_ECORRUPT;
  kvs__vref_release(&v);
  return rc;
}

static int exists_tier(kvs__store *s, chunk *c) {
  kvs_wire_exists_resp e;
  if (kvs__store_exists(s, &c->sk, &c->m.model, &e) != KVS_OK || !e.present) return -1;
  return e.tier;
}

static void cfg_base(kvs_svc_config *c, const char *sub) {
  kvs_svc_config_defaults(c);
  snprintf(c->data_dir, sizeof c->data_dir, "%s/%s", g_dir, sub);
  c->durability = KVS_SVC_DUR_RAM;
  c->blob_min = 4096;
}

static kvs__store *open_store(const kvs_svc_config *c) {
  memset(&g_met, 0, sizeof g_met);
  kvs__store *s = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs__store_open(c, &g_met, &s), KVS_OK);
  return s;
}

static uint64_t ld(atomic_uint_fast64_t *a) { return atomic_load(a); }

static void test_pending_get(void) {
  kvs_svc_config c;
  cfg_base(&c, "pending");
  c.ram_bytes = 0; /* no T0 copy: what answers is the write-behind's own buffer */
  kvs__store *s = open_store(&c);
  chunk a;
  mk(s, &a, 1, 0, 300000);
  kvs__wb_pause(s, 1);
  CU_ASSERT_EQUAL(put(s, &a), KVS_OK);
  kvs__wb_view w;
  kvs__store_wb_view(s, &w);
  CU_ASSERT_EQUAL(w.entries, 1);
  CU_ASSERT_EQUAL(w.bytes, 300000);
  int tier = -1;
  CU_ASSERT_EQUAL(get(s, &a, &tier), KVS_OK);
  CU_ASSERT_EQUAL(tier, 0);
  CU_ASSERT_EQUAL(exists_tier(s, &a), 0);
  kvs__wb_pause(s, 0);
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  CU_ASSERT_EQUAL(ld(&g_met.wb_written), 1);
  kvs__store_wb_view(s, &w);
  CU_ASSERT_EQUAL(w.entries, 0);
  CU_ASSERT_EQUAL(get(s, &a, &tier), KVS_OK);
  CU_ASSERT_EQUAL(tier, 1); /* now from the disk tier */
  kvs__store_close(s);
  free(a.v);
}

static void test_restart(void) {
  kvs_svc_config c;
  cfg_base(&c, "restart");
  kvs__store *s = open_store(&c);
  enum { N = 12 };
  chunk ch[N];
  kvs__wb_pause(s, 1); /* all of them still waiting at the close */
  for (int i = 0; i < N; i++) {
    mk(s, &ch[i], 10 + i, 0, 100000 + (size_t)i * 1000);
    CU_ASSERT_EQUAL(put(s, &ch[i]), KVS_OK);
  }
  kvs__wb_view w;
  kvs__store_wb_view(s, &w);
  CU_ASSERT_EQUAL(w.entries, N);
  kvs__store_close(s); /* drains although paused */
  CU_ASSERT_EQUAL(ld(&g_met.wb_written), N);
  s = open_store(&c);
  for (int i = 0; i < N; i++) {
    int tier = -1;
    rekey(s, &ch[i]);
    CU_ASSERT_EQUAL(get(s, &ch[i], &tier), KVS_OK);
    CU_ASSERT_EQUAL(tier, 1);
    free(ch[i].v);
  }
  kvs__store_close(s);
}

static void test_backlog_full(void) {
  kvs_svc_config c;
  cfg_base(&c, "full");
  c.ram_bytes = 0;
  c.wb_entries = 2;
  kvs__store *s = open_store(&c);
  chunk ch[4];
  kvs__wb_pause(s, 1);
  for (int i = 0; i < 4; i++) {
    mk(s, &ch[i], 30 + i, 0, 50000);
    CU_ASSERT_EQUAL(put(s, &ch[i]), KVS_OK);
  }
  CU_ASSERT_EQUAL(ld(&g_met.wb_fellback), 2);
  CU_ASSERT_EQUAL(exists_tier(s, &ch[0]), 0); /* waiting: in RAM */
  CU_ASSERT_EQUAL(exists_tier(s, &ch[1]), 0);
  CU_ASSERT_EQUAL(exists_tier(s, &ch[2]), 1); /* written through: on disk already */
  CU_ASSERT_EQUAL(exists_tier(s, &ch[3]), 1);
  for (int i = 0; i < 4; i++)
    CU_ASSERT_EQUAL(get(s, &ch[i], NULL), KVS_OK);
  /* a SYNC put writes through whatever the backlog holds */
  chunk y;
  mk(s, &y, 39, 0, 50000);
  CU_ASSERT_EQUAL(kvs__store_put(s, &y.sk, &y.m, y.v, KVS_WIRE_F_SYNC, 0), KVS_OK);
  CU_ASSERT_EQUAL(exists_tier(s, &y), 1);
  kvs__wb_pause(s, 0);
  CU_ASSERT(kvs__wb_wait_idle(s, 20000));
  CU_ASSERT_EQUAL(ld(&g_met.wb_written), 2);
  kvs__store_close(s);
  s = open_store(&c);
  for (int i = 0; i < 4; i++) {
    rekey(s, &ch[i]);
    CU_ASSERT_EQUAL(get(s, &ch[i], NULL), KVS_OK);
    free(ch[i].v);
  }
  rekey(s, &y);
  CU_ASSERT_EQUAL(get(s, &y, NULL), KVS_OK);
  free(y.v);
  kvs__store_close(s);
}

static int g_released;
static void count_release(void *owner) {
  g_released++;
  free(owner);
}
/* A put of c's bytes in a borrowed buffer (as the data plane hands over a
 * request frame): g_released counts when the store lets them go. */
static kvs_err put_borrowed(kvs__store *s, chunk *c) {
  uint8_t *copy = malloc(c->m.value_bytes);
  memcpy(copy, c->v, c->m.value_bytes);
  kvs__buf *b = kvs__buf_wrap(copy, c->m.value_bytes, count_release, copy);
  kvs_err rc = b ? kvs__store_put_buf(s, &c->sk, &c->m, b, 0, 0) : KVS_ENOMEM;
  kvs__buf_unref(b);
  return rc;
}

static void test_del_overwrite(void) {
  kvs_svc_config c;
  cfg_base(&c, "del");
  kvs__store *s = open_store(&c);
  chunk a1, a2, b, c1, c2;
  mk(s, &a1, 40, 1, 80000);
  mk(s, &a2, 40, 2, 90000);
  mk(s, &b, 41, 0, 70000);
  mk(s, &c1, 42, 1, 60000);
  mk(s, &c2, 42, 2, 65000);
  CU_ASSERT_EQUAL(put(s, &a1), KVS_OK); /* a1 on disk first */
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  kvs__wb_pause(s, 1);
  g_released = 0;
  CU_ASSERT_EQUAL(put_borrowed(s, &a2), KVS_OK); /* waiting, over a1 on disk */
  CU_ASSERT_EQUAL(put(s, &b), KVS_OK);
  CU_ASSERT_EQUAL(put_borrowed(s, &c1), KVS_OK);
  CU_ASSERT_EQUAL(g_released, 0);       /* held: T0 and the write-behind */
  CU_ASSERT_EQUAL(put(s, &c2), KVS_OK); /* c1's job is stale now */
  CU_ASSERT_EQUAL(g_released, 1);       /* c1's bytes let go at the overwrite, not at the writer */
  CU_ASSERT_EQUAL(get(s, &a2, NULL), KVS_OK);
  CU_ASSERT_EQUAL(kvs__store_delete(s, &a2.sk), KVS_OK);
  CU_ASSERT_EQUAL(g_released, 2); /* a2's at the DELETE */
  CU_ASSERT_EQUAL(get(s, &a2, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(get(s, &a1, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(get(s, &c2, NULL), KVS_OK);
  kvs__wb_pause(s, 0);
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  CU_ASSERT_EQUAL(ld(&g_met.wb_skipped), 2); /* a2 (deleted), c1 (overwritten) */
  CU_ASSERT_EQUAL(ld(&g_met.wb_written), 1 + 2);
  CU_ASSERT_EQUAL(get(s, &a2, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(get(s, &c2, NULL), KVS_OK);
  CU_ASSERT_EQUAL(get(s, &c1, NULL), KVS_ECORRUPT); /* same key, c2's bytes: c1 gone */
  kvs__store_close(s);
  s = open_store(&c);
  chunk *all[] = {&a1, &a2, &b, &c1, &c2};
  for (int i = 0; i < 5; i++)
    rekey(s, all[i]);
  CU_ASSERT_EQUAL(get(s, &a2, NULL), KVS_ENOENT); /* neither version came back */
  CU_ASSERT_EQUAL(get(s, &b, NULL), KVS_OK);
  CU_ASSERT_EQUAL(get(s, &c2, NULL), KVS_OK);
  kvs__store_close(s);
  for (int i = 0; i < 5; i++)
    free(all[i]->v);
}

/* The first tier holds ~4 values; 10 are put while the writer waits. */
static void evict_case(const char *sub, int cold) {
  kvs_svc_config c;
  cfg_base(&c, sub);
  c.disk_bytes = 4 * 110000;
  c.ram_bytes = 0;
  if (cold) {
    snprintf(c.cold_dir, sizeof c.cold_dir, "%s/%s-cold", g_dir, sub);
    c.cold_bytes = 64u << 20;
  }
  kvs__store *s = open_store(&c);
  enum { N = 10 };
  chunk ch[N];
  kvs__wb_pause(s, 1);
  for (int i = 0; i < N; i++) {
    mk(s, &ch[i], 50 + i, 0, 100000);
    CU_ASSERT_EQUAL(put(s, &ch[i]), KVS_OK);
  }
  uint64_t moved = cold ? ld(&g_met.demotions) : ld(&g_met.stat[KVS_STAT_EVICTIONS]);
  CU_ASSERT(moved >= N - 4);
  int ok = 0, gone = 0;
  for (int i = 0; i < N; i++) {
    kvs_err rc = get(s, &ch[i], NULL);
    CU_ASSERT(rc == KVS_OK || (!cold && rc == KVS_ENOENT));
    ok += rc == KVS_OK;
    gone += rc == KVS_ENOENT;
  }
  CU_ASSERT_EQUAL(ok + gone, N);
  kvs__wb_pause(s, 0);
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  /* every job written or skipped (its entry evicted or moved first) */
  CU_ASSERT_EQUAL(ld(&g_met.wb_written) + ld(&g_met.wb_skipped), N);
  CU_ASSERT(ld(&g_met.wb_skipped) >= moved);
  kvs__store_close(s);
  s = open_store(&c);
  int ok2 = 0;
  for (int i = 0; i < N; i++) {
    rekey(s, &ch[i]);
    int tier = -1;
    kvs_err rc = get(s, &ch[i], &tier);
    CU_ASSERT(rc == KVS_OK || rc == KVS_ENOENT); /* never other bytes */
    ok2 += rc == KVS_OK;
    if (cold && rc == KVS_OK) CU_ASSERT(tier == 1 || tier == 2);
    free(ch[i].v);
  }
  CU_ASSERT_EQUAL(ok2, ok);
  if (cold) CU_ASSERT_EQUAL(ok2, N);
  kvs__store_close(s);
}
static void test_evict_pending(void) {
  evict_case("evict", 0);
  evict_case("demote", 1);
}

static int fill(const char *path) { /* writes until the filesystem is full */
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return -1;
  static char buf[1 << 16];
  memset(buf, 0xAB, sizeof buf);
  for (int i = 0; i < 4096; i++)
    if (write(fd, buf, sizeof buf) <= 0) break;
  close(fd);
  return 0;
}

static void test_full_disk(void) {
  char mnt[128], ballast[160];
  snprintf(mnt, sizeof mnt, "%s/tmpfs", g_dir);
  CU_ASSERT_FATAL(mkdir(mnt, 0700) == 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=48m,mode=0700") != 0) {
    fprintf(stderr, "full_disk: cannot mount a tmpfs (%s): case skipped (CI runs as root)\n",
            strerror(errno));
    rmdir(mnt);
    return;
  }
  kvs_svc_config c;
  cfg_base(&c, "x");
  snprintf(c.data_dir, sizeof c.data_dir, "%s/data", mnt);
  c.ram_bytes = 2u << 20;
  c.evict_lru = 1;
  kvs__store *s = open_store(&c);
  chunk a, f[8];
  mk(s, &a, 60, 0, 256000);
  kvs__wb_pause(s, 1);
  CU_ASSERT_EQUAL(put(s, &a), KVS_OK);
  snprintf(ballast, sizeof ballast, "%s/ballast", mnt);
  CU_ASSERT_EQUAL(fill(ballast), 0);
  kvs__wb_pause(s, 0);
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  CU_ASSERT_EQUAL(ld(&g_met.wb_failed), 1);
  CU_ASSERT(ld(&g_met.nospace_refused) >= 1);
  kvs__wb_view w;
  kvs__store_wb_view(s, &w);
  CU_ASSERT_EQUAL(w.ramonly, 1);
  int tier = -1;
  CU_ASSERT_EQUAL(get(s, &a, &tier), KVS_OK); /* reads go on, from RAM */
  CU_ASSERT_EQUAL(tier, 0);
  /* space again; RAM-only means: gone with its RAM copy (LRU: a is the oldest) */
  CU_ASSERT_EQUAL(unlink(ballast), 0);
  for (int i = 0; i < 8; i++) {
    mk(s, &f[i], 61 + i, 0, 256000);
    CU_ASSERT_EQUAL(put(s, &f[i]), KVS_OK);
  }
  CU_ASSERT_FATAL(kvs__wb_wait_idle(s, 20000));
  CU_ASSERT_EQUAL(ld(&g_met.wb_written), 8);
  kvs__store_wb_view(s, &w);
  CU_ASSERT_EQUAL(w.ramonly, 0);
  CU_ASSERT_EQUAL(get(s, &a, NULL), KVS_ENOENT);
  kvs__store_close(s);
  s = open_store(&c);
  rekey(s, &a);
  CU_ASSERT_EQUAL(get(s, &a, NULL), KVS_ENOENT); /* nor after a restart */
  for (int i = 0; i < 8; i++) {
    rekey(s, &f[i]);
    CU_ASSERT_EQUAL(get(s, &f[i], NULL), KVS_OK);
    free(f[i].v);
  }
  kvs__store_close(s);
  if (umount2(mnt, MNT_DETACH) != 0) fprintf(stderr, "umount %s: %s\n", mnt, strerror(errno));
  rmdir(mnt);
  free(a.v);
}

static unsigned long long metric(int port, const char *key) {
  char *body = NULL;
  unsigned long long v = ~0ull;
  if (th_http(port, "GET", "/metrics", &body) == 200 && body) {
    const char *m = strstr(body, key);
    if (m) v = strtoull(m + strlen(key), NULL, 10);
  }
  free(body);
  return v;
}

static void test_daemon_restart(void) {
  const char *const args[] = {"--durability=ram", "--ram_bytes=64M", NULL};
  th_daemon d;
  memset(&d, 0, sizeof d);
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
  enum { N = 24 };
  th_chunk ch[N];
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 700 + (uint64_t)i, 32, 1u << 20, 4);
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  }
  int good = 0;
  for (int i = 0; i < N; i++) { /* at once: from RAM, written or not */
    uint8_t *v = NULL;
    size_t n = 0;
    good +=
        th_get(&c, &ch[i], &v, &n) == KVS_OK && n == ch[i].vbytes && memcmp(v, ch[i].value, n) == 0;
    free(v);
  }
  CU_ASSERT_EQUAL(good, N);
  CU_ASSERT(metric(d.http_port, "\nkvstash_writebehind_limit_entries ") == 1024);
  unsigned long long done =
      metric(d.http_port, "kvstash_writebehind_writes_total{result=\"done\"} ");
  unsigned long long back = metric(d.http_port, "\nkvstash_writebehind_backlog_entries ");
  CU_ASSERT(done <= N && back <= N);
  th_close(&c);
  CU_ASSERT_EQUAL_FATAL(th_daemon_stop(&d), 0); /* SIGTERM: the backlog is written */
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
  good = 0;
  for (int i = 0; i < N; i++) {
    uint8_t *v = NULL;
    size_t n = 0;
    good +=
        th_get(&c, &ch[i], &v, &n) == KVS_OK && n == ch[i].vbytes && memcmp(v, ch[i].value, n) == 0;
    free(v);
    th_chunk_free(&ch[i]);
  }
  CU_ASSERT_EQUAL(good, N);
  kvs_wire_stats_resp st;
  CU_ASSERT_EQUAL(th_stats_tiers(&c, &st), KVS_OK);
  const kvs_wire_tier_row *disk = th_tier(&st, "disk");
  CU_ASSERT(disk && disk->entries == N);
  CU_ASSERT_EQUAL(metric(d.http_port, "\nkvstash_writebehind_backlog_entries "), 0);
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

static const kvs_test_case cases[] = {
    {"pending_get", test_pending_get},       {"restart", test_restart},
    {"backlog_full", test_backlog_full},     {"del_overwrite", test_del_overwrite},
    {"evict_pending", test_evict_pending},   {"full_disk", test_full_disk},
    {"daemon_restart", test_daemon_restart}, {NULL, NULL},
};

int main(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/kvs-wb-XXXXXX");
  if (!mkdtemp(g_dir)) return 1;
  int rc = kvs_test_run("cachesvc_writebehind", cases);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g_dir);
  return rc;
}
