/* The tier ops table (cachesvc/tier.h) over a temporary directory, through
 * its RocksDB implementation: put/get/del/iterate/used/capacity/name, the
 * records delivered again at open, and the quarantine form of del. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_test.h"
#include "tier.h"

static char g_dir[64];

static void skey(kvs__skey *k, int i) {
  memset(k->b, 0, sizeof k->b);
  k->b[0] = 7;
  k->b[8] = (uint8_t)i;
  k->b[23] = (uint8_t)(0xA0 + i);
}

typedef struct seen {
  int n, drop_first;
  kvs__skey k[8];
  size_t len[8];
  int resets;
} seen;

static int on_record(void *arg, const kvs__skey *k, const uint8_t *rec, size_t len) {
  seen *s = arg;
  if (s->drop_first && s->n == 0) {
    s->drop_first = 0;
    return KVS__TIER_DROP;
  }
  CU_ASSERT(len >= 4 && memcmp(rec, "rec", 3) == 0);
  if (s->n < 8) {
    s->k[s->n] = *k;
    s->len[s->n] = len;
  }
  s->n++;
  return KVS_OK;
}
static void on_reset(void *arg) { ((seen *)arg)->resets++; }

static kvs__tier *open_tier(seen *s) {
  static kvs__metrics met; /* the counters the tier bumps */
  char dir[128];
  snprintf(dir, sizeof dir, "%s/tier", g_dir);
  kvs__tier_conf c = {.name = "disk",
                      .dir = dir,
                      .capacity = 1u << 20,
                      .blob_min = 64,
                      .met = &met,
                      .on_record = on_record,
                      .on_reset = on_reset,
                      .arg = s};
  kvs__tier *t = NULL;
  CU_ASSERT_EQUAL_FATAL(kvs__tier_rocksdb.open(&c, &t), KVS_OK);
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  return t;
}

static void test_ops(void) {
  seen s = {0};
  kvs__tier *t = open_tier(&s);
  const kvs__tier_ops *o = t->ops;
  CU_ASSERT_EQUAL(s.n, 0); /* a new directory: nothing to load */
  CU_ASSERT_STRING_EQUAL(o->name(t), "disk");
  CU_ASSERT_STRING_EQUAL(o->kind, "rocksdb");
  CU_ASSERT_EQUAL(o->capacity(t), 1u << 20);
  CU_ASSERT_EQUAL(o->used(t), 0);
  CU_ASSERT(o->room(t, 4096, KVS__TIER_PUT | KVS__TIER_QUIET)); /* a temp dir has room */

  uint8_t small[40], big[5000];
  for (size_t i = 0; i < sizeof small; i++)
    small[i] = (uint8_t)i;
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 7);
  kvs__skey k[3];
  for (int i = 0; i < 3; i++)
    skey(&k[i], i);
  const uint8_t rec0[] = "rec0", rec1[] = "rec1-longer", rec2[] = "rec2";
  CU_ASSERT_EQUAL(o->put(t, &k[0], rec0, sizeof rec0, small, sizeof small, KVS__TIER_SYNC), KVS_OK);
  CU_ASSERT_EQUAL(o->put(t, &k[1], rec1, sizeof rec1, big, sizeof big, 0), KVS_OK); /* a blob */
  CU_ASSERT_EQUAL(o->put(t, &k[2], rec2, sizeof rec2, small, 10, 0), KVS_OK);
  /* the index charges what it stores; used/capacity read it back */
  t->used += sizeof rec0 + sizeof small + sizeof rec1 + sizeof big + sizeof rec2 + 10;
  CU_ASSERT_EQUAL(o->used(t), sizeof rec0 + sizeof small + sizeof rec1 + sizeof big + 15);

  kvs__buf *b = NULL;
  CU_ASSERT_EQUAL(o->get(t, &k[1], sizeof big, kvs_checksum64(big, sizeof big), &b), KVS_OK);
  CU_ASSERT(b && b->len == sizeof big && memcmp(b->data, big, sizeof big) == 0);
  kvs__buf_unref(b);
  b = NULL;
  CU_ASSERT_EQUAL(o->get(t, &k[0], sizeof small, kvs_checksum64(small, sizeof small) ^ 1, &b),
                  KVS_ECHECKSUM); /* the value's own checksum is verified */
  CU_ASSERT_PTR_NULL(b);
  CU_ASSERT_EQUAL(o->get(t, &k[0], sizeof small + 1, kvs_checksum64(small, sizeof small), &b),
                  KVS_ECORRUPT); /* and its length */
  kvs__skey absent;
  skey(&absent, 9);
  CU_ASSERT_EQUAL(o->get(t, &absent, 1, 0, &b), KVS_ENOENT);

  seen it = {0};
  CU_ASSERT_EQUAL(o->iterate(t, on_record, &it), KVS_OK);
  CU_ASSERT_EQUAL(it.n, 3);
  CU_ASSERT(memcmp(it.k[0].b, k[0].b, 24) == 0 && it.len[0] == sizeof rec0); /* key order */
  CU_ASSERT(memcmp(it.k[1].b, k[1].b, 24) == 0 && it.len[1] == sizeof rec1);

  /* del: record and value gone */
  CU_ASSERT_EQUAL(o->del(t, &k[2], NULL, 0, KVS__TIER_SYNC), KVS_OK);
  CU_ASSERT_EQUAL(o->get(t, &k[2], 10, kvs_checksum64(small, 10), &b), KVS_ENOENT);
  /* del with a record: the value goes, the (quarantine) record stays */
  const uint8_t recq[] = "recQ";
  CU_ASSERT_EQUAL(o->del(t, &k[0], recq, sizeof recq, KVS__TIER_SYNC), KVS_OK);
  CU_ASSERT_EQUAL(o->get(t, &k[0], sizeof small, kvs_checksum64(small, sizeof small), &b),
                  KVS_ENOENT);
  /* the record alone (value NULL) rewrites it, the value untouched */
  const uint8_t rec1b[] = "rec1-patched";
  CU_ASSERT_EQUAL(o->put(t, &k[1], rec1b, sizeof rec1b, NULL, 0, 0), KVS_OK);
  CU_ASSERT_EQUAL(o->get(t, &k[1], sizeof big, kvs_checksum64(big, sizeof big), &b), KVS_OK);
  kvs__buf_unref(b);
  memset(&it, 0, sizeof it);
  CU_ASSERT_EQUAL(o->iterate(t, on_record, &it), KVS_OK);
  CU_ASSERT_EQUAL(it.n, 2);
  CU_ASSERT_EQUAL(it.len[0], sizeof recq);
  CU_ASSERT_EQUAL(it.len[1], sizeof rec1b);
  o->close(t);

  /* open again: the two records are delivered; DROP deletes the first */
  seen again = {.drop_first = 1};
  t = open_tier(&again);
  CU_ASSERT_EQUAL(again.n, 1);
  CU_ASSERT(memcmp(again.k[0].b, k[1].b, 24) == 0);
  CU_ASSERT_EQUAL(again.resets, 0);    /* nothing corrupt: no recovery */
  CU_ASSERT_EQUAL(t->ops->used(t), 0); /* a new handle: the index charges it again */
  t->ops->close(t);
  seen third = {0};
  t = open_tier(&third);
  CU_ASSERT_EQUAL(third.n, 1); /* the dropped one is gone on disk */
  t->ops->close(t);
}

static void test_names(void) {
  CU_ASSERT_STRING_EQUAL(kvs__tier_name(0), "ram");
  CU_ASSERT_STRING_EQUAL(kvs__tier_name(1), "disk");
  CU_ASSERT_STRING_EQUAL(kvs__tier_name(2), "cold"); /* the list in cachesvc/tier.h */
  CU_ASSERT_STRING_EQUAL(kvs__tier_name(KVS__NTIERS + 1), "?");
}

static int init(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/kvs-tier-XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}
static int clean(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const kvs_test_case cases[] = {{"ops", test_ops}, {"names", test_names}, {NULL, NULL}};
int main(void) { return kvs_test_run_fixture("cachesvc_tier", cases, init, clean); }
