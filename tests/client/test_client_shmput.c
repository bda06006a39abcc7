/* Shared-memory puts (PUT_RESERVE / PUT_COMMIT / PUT_ABORT) against the real
 * kvstashd with shm = on: the client's put through shared memory loads back
 * the same bytes; the protocol's refusals frame by frame (a range corrupted
 * after it was written, a reservation that expired, was aborted, belongs to
 * another tenant, or whose connection closed: refused, nothing stored, the
 * range free again); a daemon with shm off: the socket put. */
#include <fcntl.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvs_test.h"
#include "kvs_wire.h"
#include "kvstash.h"
#include "client_util.h"
#include "server.h"

/* segments of 8 MiB: two ranges of 5 MiB never fit at once, so a second
 * reservation of 5 MiB succeeds only once the first range is free */
#define SEG_BYTES "8M"
#define BIG       ((uint64_t)5 << 20)
#define LEASE_MS  400
static test_server srv; /* shm on */
static kvs_model_id model;
static const kvs_layout lay = {.n_layers = 4,
                               .n_kv_heads = 2,
                               .head_dim = 64,
                               .dtype = KVS_DTYPE_F16,
                               .rope_type = KVS_ROPE_NORM,
                               .rope_dims = 64,
                               .rope_theta = 10000.0f,
                               .rope_freq_scale = 1.0f};
static unsigned long long seed = 7;

static int suite_init(void) {
  char flag[128];
  snprintf(flag, sizeof flag, "--shm=on --shm_bytes=%s --lease_ms=%d", SEG_BYTES, LEASE_MS);
  int rv = test_server_start_flag(&srv, "real", flag);
  if (rv == 77) exit(77);
  model = kvs_hash128_buf("shmput-model", 12);
  return rv;
}

static int suite_clean(void) {
  test_server_stop(&srv);
  return 0;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static kvs_client *client(const char *url, const char *tenant, uint32_t flags) {
  return test_client_connect(url, tenant, flags);
}

static uint16_t *make_kv(uint32_t T) { return test_make_kv(&lay, T, &seed); }
static int32_t *make_tokens(size_t n) { return test_make_tokens(n, &seed); }

static void counters(kvs_client *c, kvs_client_counters *k) {
  memset(k, 0, sizeof *k);
  CU_ASSERT_EQUAL(kvs_client_get_counters(c, k), KVS_OK);
}

/* ------------------------------------------------ through the client */
/* A put through shared memory (raw and, where built, dense: the CPU
 * encoders write into the range) gets back what a socket put of the same KV
 * gets back: raw bit for bit, the codec the same value size and decode. */
static void test_put_get(void) {
  kvs_client *c = client(srv.url, "alpha", 0);
  kvs_client *s = client(srv.url, "alpha", KVS_CLIENT_NO_SHM_PUT);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  CU_ASSERT_PTR_NOT_NULL_FATAL(s);
  kvs_client_counters k0, k;
  counters(c, &k0);
  const uint32_t T = 96;
  int32_t *tok = make_tokens(2 * T);
  uint16_t *kv = make_kv(T);
  int dense = kvs_profile_from_name("dense");
  uint32_t profiles[2] = {KVS_PROFILE_RAW, dense > 0 ? (uint32_t)dense : KVS_PROFILE_RAW};
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb), *out2 = malloc(nb);
  int n_puts = 0;
  for (int i = 0; i < 2; i++) {
    kvs_span sp[2] = {{0, T}, {T, T}};
    kvs_chunk ch[2];
    kvs_chunk_spans(&model, tok, 2 * T, sp, 2, ch);
    kvs_put_opts po = {.profile = profiles[i], .layers_per_group = 1 + (uint32_t)i};
    CU_ASSERT_EQUAL(kvs_put(c, &model, tok, &ch[0], &lay, kv, &po), KVS_OK); /* shm */
    CU_ASSERT_EQUAL(kvs_put(s, &model, tok, &ch[1], &lay, kv, &po), KVS_OK); /* socket */
    n_puts++;
    kvs_entry_info a, b;
    CU_ASSERT_EQUAL(kvs_exists(c, &model, &ch[0].key, &a), KVS_OK);
    CU_ASSERT_EQUAL(kvs_exists(c, &model, &ch[1].key, &b), KVS_OK);
    CU_ASSERT(a.present && b.present);
    CU_ASSERT_EQUAL(a.value_bytes, b.value_bytes); /* the same encoding */
    memset(out, 0, nb);
    memset(out2, 0xFF, nb);
    /* read back by the socket client: nothing of the shm path on this side */
    CU_ASSERT_EQUAL(kvs_get(s, &model, tok, &ch[0], &lay, out, nb, NULL), KVS_OK);
    CU_ASSERT_EQUAL(kvs_get(s, &model, tok, &ch[1], &lay, out2, nb, NULL), KVS_OK);
    CU_ASSERT(memcmp(out, out2, nb) == 0);
    if (profiles[i] == KVS_PROFILE_RAW) CU_ASSERT(memcmp(out, kv, nb) == 0);
  }
  counters(c, &k);
  CU_ASSERT_EQUAL(k.shm_puts - k0.shm_puts, (uint64_t)n_puts);
  CU_ASSERT_EQUAL(k.sock_puts - k0.sock_puts, 0);
  CU_ASSERT_EQUAL(k.shm_put_fallbacks - k0.shm_put_fallbacks, 0);
  counters(s, &k);
  CU_ASSERT_EQUAL(k.shm_puts, 0);
  CU_ASSERT_EQUAL(k.sock_puts, (uint64_t)n_puts);
  /* NX through shared memory: refused for a present key, nothing changed */
  kvs_span sp = {0, T};
  kvs_chunk ch;
  kvs_chunk_spans(&model, tok, 2 * T, &sp, 1, &ch);
  kvs_put_opts nx = {.profile = KVS_PROFILE_RAW, .flags = KVS_PUT_NX};
  CU_ASSERT_EQUAL(kvs_put(c, &model, tok, &ch, &lay, kv, &nx), KVS_EEXIST);
  kvs_client_free(c);
  kvs_client_free(s);
  free(out), free(out2), free(kv), free(tok);
}

/* A daemon with shm off: the first put asks once, is refused and goes
 * through the socket; later puts do not ask again. */
static void test_shm_off_fallback(void) {
  test_server off;
  memset(&off, 0, sizeof off);
  CU_ASSERT_EQUAL_FATAL(test_server_start_flag(&off, "real", NULL), 0);
  kvs_client *c = client(off.url, "alpha", 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(c);
  const uint32_t T = 40;
  int32_t *tok = make_tokens(2 * T);
  uint16_t *kv = make_kv(T);
  kvs_span sp[2] = {{0, T}, {T, T}};
  kvs_chunk ch[2];
  kvs_chunk_spans(&model, tok, 2 * T, sp, 2, ch);
  for (int i = 0; i < 2; i++)
    CU_ASSERT_EQUAL(kvs_put(c, &model, tok, &ch[i], &lay, kv, NULL), KVS_OK);
  kvs_client_counters k;
  counters(c, &k);
  CU_ASSERT_EQUAL(k.shm_puts, 0);
  CU_ASSERT_EQUAL(k.sock_puts, 2);
  CU_ASSERT_EQUAL(k.shm_put_fallbacks, 1); /* the first put only */
  uint64_t nb = kvs_get_bound(&lay, T, NULL);
  uint16_t *out = malloc(nb);
  CU_ASSERT_EQUAL(kvs_get(c, &model, tok, &ch[1], &lay, out, nb, NULL), KVS_OK);
  CU_ASSERT(memcmp(out, kv, nb) == 0);
  kvs_client_free(c);
  test_server_stop(&off);
  free(out), free(kv), free(tok);
}

/* ------------------------------------------------ frame by frame */
typedef struct raw {
  nng_socket s;
  char tenant[33];
  uint64_t id;
} raw;

static int raw_open(raw *r, const char *tenant, const char *url) {
  memset(r, 0, sizeof *r);
  snprintf(r->tenant, sizeof r->tenant, "%s", tenant);
  if (nng_req0_open(&r->s)) return -1;
  nng_socket_set_ms(r->s, NNG_OPT_RECVTIMEO, 20000);
  nng_socket_set_size(r->s, NNG_OPT_RECVMAXSZ, 0);
  return nng_dial(r->s, url, NULL, 0) ? -1 : 0;
}

/* One request; the answer's status, *rep (malloc'd, may be NULL) its payload. */
static int raw_call(raw *r, uint16_t op, uint32_t flags, const void *p, size_t n, uint8_t **rep,
                    size_t *rn) {
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, op, ++r->id, r->tenant, NULL, 0);
  h.flags = flags;
  h.payload_len = (uint32_t)n;
  uint8_t *buf = malloc(KVS_WIRE_HDR_SIZE + n);
  kvs_wire_hdr_encode(&h, buf);
  if (n) memcpy(buf + KVS_WIRE_HDR_SIZE, p, n);
  int rv = nng_send(r->s, buf, KVS_WIRE_HDR_SIZE + n, 0);
  free(buf);
  if (rv) return KVS_ECONN;
  nng_msg *m = NULL;
  if (nng_recvmsg(r->s, &m, 0)) return KVS_ETIMEDOUT;
  kvs_wire_hdr a;
  int st = kvs_wire_hdr_decode(nng_msg_body(m), nng_msg_len(m), &a) == KVS_OK && a.op == op
               ? a.status
               : KVS_EPROTO;
  if (rep) {
    *rn = nng_msg_len(m) - KVS_WIRE_HDR_SIZE;
    *rep = malloc(*rn + 1);
    memcpy(*rep, (uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE, *rn);
  }
  nng_msg_free(m);
  return st;
}

static int reserve(raw *r, const kvs_key *key, uint64_t bytes, kvs_wire_put_reserve_resp *a) {
  kvs_wire_put_reserve_req q = {.key = *key, .model = model, .bytes = bytes};
  uint8_t p[KVS_WIRE_PUT_RESERVE_REQ_SIZE];
  kvs_wire_put_reserve_req_encode(&q, p, sizeof p, NULL);
  uint8_t *rep = NULL;
  size_t rn = 0;
  int st = raw_call(r, KVS_OP_PUT_RESERVE, 0, p, sizeof p, &rep, &rn);
  if (st == KVS_OK) st = kvs_wire_put_reserve_resp_decode(rep, rn, a);
  free(rep);
  return st;
}

static int abort_resv(raw *r, uint64_t id) {
  uint8_t p[8];
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(id >> (8 * i));
  return raw_call(r, KVS_OP_PUT_ABORT, 0, p, 8, NULL, NULL);
}

/* A value of vb bytes written at the reserved range, and its meta. */
typedef struct val {
  int32_t tok[8];
  uint64_t seg_end[2];
  kvs_wire_meta m;
} val;

static uint8_t *map_range(const kvs_wire_put_reserve_resp *a, uint8_t **base, size_t *len) {
  int fd = shm_open(a->shm_name, O_RDWR, 0);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) || (uint64_t)st.st_size < a->offset + a->bytes) {
    if (fd >= 0) close(fd);
    return NULL;
  }
  *len = (size_t)st.st_size;
  *base = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  return *base == MAP_FAILED ? NULL : *base + a->offset;
}

static void write_value(const kvs_wire_put_reserve_resp *a, const kvs_key *key, uint64_t vb, val *v,
                        int corrupt) {
  uint8_t *base = NULL;
  size_t len = 0;
  uint8_t *dst = map_range(a, &base, &len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dst);
  for (uint64_t i = 0; i < vb; i++)
    dst[i] = (uint8_t)(kvs_test_rand(&seed) & 0xFF);
  for (int i = 0; i < 8; i++)
    v->tok[i] = i + 1;
  v->seg_end[0] = vb / 2;
  v->seg_end[1] = vb;
  memset(&v->m, 0, sizeof v->m);
  v->m.key = *key;
  v->m.model = model;
  v->m.key_kind = KVS_KEY_KIND_CONTENT;
  v->m.n_tokens = 8;
  v->m.layout = lay;
  v->m.n_segments = 2;
  v->m.value_bytes = vb;
  v->m.checksum = kvs_checksum64(dst, vb);
  v->m.tokens_le = (const uint8_t *)v->tok;
  v->m.seg_end_le = (const uint8_t *)v->seg_end;
  if (corrupt) dst[vb / 3] ^= 0x40; /* after the checksum was taken */
  munmap(base, len);
}

static int commit(raw *r, uint64_t id, const val *v, uint32_t flags) {
  size_t n = kvs_wire_put_commit_req_size(&v->m);
  uint8_t *p = malloc(n);
  CU_ASSERT_EQUAL_FATAL(kvs_wire_put_commit_req_encode(id, &v->m, p, n, NULL), KVS_OK);
  int st = raw_call(r, KVS_OP_PUT_COMMIT, flags, p, n, NULL, NULL);
  free(p);
  return st;
}

/* KVS_OK when present, KVS_ENOENT when not. */
static int exists(raw *r, const kvs_key *key) {
  kvs_wire_key_req q = {.key = *key, .model = model};
  uint8_t p[KVS_WIRE_KEY_REQ_SIZE];
  kvs_wire_key_req_encode(&q, p, sizeof p, NULL);
  uint8_t *rep = NULL;
  size_t rn = 0;
  int st = raw_call(r, KVS_OP_EXISTS, 0, p, sizeof p, &rep, &rn);
  if (st == KVS_OK) st = rn == KVS_WIRE_EXISTS_RESP_SIZE && rep[0] == 1 ? KVS_OK : KVS_ENOENT;
  free(rep);
  return st;
}

static kvs_key key_of(const char *s) { return kvs_hash128_buf(s, strlen(s)); }

/* A commit, then a commit of bytes changed after their checksum was taken:
 * refused (KVS_ECHECKSUM), nothing stored, the range free again. */
static void test_commit_and_corrupt(void) {
  raw r;
  CU_ASSERT_EQUAL_FATAL(raw_open(&r, "t_corrupt", srv.url), 0);
  kvs_key good = key_of("good"), bad = key_of("bad");
  kvs_wire_put_reserve_resp a;
  val v;
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &good, 4096, &a), KVS_OK);
  CU_ASSERT(a.bytes == 4096 && a.expires_ms > 0 && a.shm_name[0] == '/');
  write_value(&a, &good, 3000, &v, 0);
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_OK);
  CU_ASSERT_EQUAL(exists(&r, &good), KVS_OK);
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_ENOENT); /* used up */

  CU_ASSERT_EQUAL_FATAL(reserve(&r, &bad, BIG, &a), KVS_OK);
  write_value(&a, &bad, BIG - 100, &v, 1);
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_ECHECKSUM);
  CU_ASSERT_EQUAL(exists(&r, &bad), KVS_ENOENT); /* nothing indexed */
  CU_ASSERT_EQUAL(abort_resv(&r, a.resv_id), KVS_ENOENT);
  /* the range is free: a second range of that size fits again */
  CU_ASSERT_EQUAL(reserve(&r, &bad, BIG, &a), KVS_OK);
  /* a meta that does not fit the reservation: refused, the range freed */
  write_value(&a, &bad, BIG, &v, 0);
  v.m.value_bytes = BIG + 64; /* over the range */
  v.seg_end[1] = BIG + 64;
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_ERANGE);
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &bad, BIG, &a), KVS_OK);
  kvs_key other = key_of("other");
  write_value(&a, &other, 1000, &v, 0); /* meta of another key than reserved */
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_EINVAL);
  CU_ASSERT_EQUAL(exists(&r, &other), KVS_ENOENT);
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &bad, BIG, &a), KVS_OK);
  CU_ASSERT_EQUAL(abort_resv(&r, a.resv_id), KVS_OK);
  /* bad frames: a zero size, a reserved field set */
  uint8_t p[KVS_WIRE_PUT_RESERVE_REQ_SIZE] = {0};
  CU_ASSERT_EQUAL(raw_call(&r, KVS_OP_PUT_RESERVE, 0, p, sizeof p, NULL, NULL), KVS_ETOOBIG);
  p[32] = 1;
  p[40] = 1;
  CU_ASSERT_EQUAL(raw_call(&r, KVS_OP_PUT_RESERVE, 0, p, sizeof p, NULL, NULL), KVS_EPROTO);
  CU_ASSERT_EQUAL(raw_call(&r, KVS_OP_PUT_RESERVE, 0, p, 20, NULL, NULL), KVS_ETRUNC);
  nng_close(r.s);
}

/* An unanswered reservation: refused after expires_ms, its range free. */
static void test_expiry(void) {
  raw r;
  CU_ASSERT_EQUAL_FATAL(raw_open(&r, "t_expiry", srv.url), 0);
  kvs_key k = key_of("exp");
  kvs_wire_put_reserve_resp a, b;
  val v;
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &k, BIG, &a), KVS_OK);
  write_value(&a, &k, 2000, &v, 0);
  CU_ASSERT_EQUAL(reserve(&r, &k, BIG, &b), KVS_EAGAIN); /* no room for a second */
  sleep_ms(LEASE_MS + 200);
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_ENOENT);
  CU_ASSERT_EQUAL(exists(&r, &k), KVS_ENOENT);
  CU_ASSERT_EQUAL(reserve(&r, &k, BIG, &b), KVS_OK); /* freed */
  CU_ASSERT_EQUAL(abort_resv(&r, b.resv_id), KVS_OK);
  CU_ASSERT_EQUAL(abort_resv(&r, b.resv_id), KVS_ENOENT);
  nng_close(r.s);
}

/* Another tenant can neither commit nor abort a reservation; its owner can. */
static void test_other_tenant(void) {
  raw r, o;
  CU_ASSERT_EQUAL_FATAL(raw_open(&r, "t_owner", srv.url), 0);
  CU_ASSERT_EQUAL_FATAL(raw_open(&o, "t_other", srv.url), 0);
  kvs_key k = key_of("mine");
  kvs_wire_put_reserve_resp a;
  val v;
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &k, 8192, &a), KVS_OK);
  write_value(&a, &k, 5000, &v, 0);
  CU_ASSERT_EQUAL(commit(&o, a.resv_id, &v, 0), KVS_ENOENT);
  CU_ASSERT_EQUAL(abort_resv(&o, a.resv_id), KVS_ENOENT);
  CU_ASSERT_EQUAL(exists(&o, &k), KVS_ENOENT);
  CU_ASSERT_EQUAL(commit(&r, a.resv_id, &v, 0), KVS_OK); /* still the owner's */
  CU_ASSERT_EQUAL(exists(&r, &k), KVS_OK);
  CU_ASSERT_EQUAL(exists(&o, &k), KVS_ENOENT);
  nng_close(r.s);
  nng_close(o.s);
}

/* A connection that closes with a reservation: the range is freed. (A
 * daemon whose reservations last 60 s, so expiry cannot be what frees it.) */
static void test_disconnect(void) {
  test_server longd;
  memset(&longd, 0, sizeof longd);
  CU_ASSERT_EQUAL_FATAL(
      test_server_start_flag(&longd, "real", "--shm=on --shm_bytes=" SEG_BYTES " --lease_ms=60000"),
      0);
  raw r;
  CU_ASSERT_EQUAL_FATAL(raw_open(&r, "t_disc", longd.url), 0);
  kvs_key k = key_of("disc");
  kvs_wire_put_reserve_resp a;
  CU_ASSERT_EQUAL_FATAL(reserve(&r, &k, BIG, &a), KVS_OK);
  CU_ASSERT_EQUAL(reserve(&r, &k, BIG, &a), KVS_EAGAIN);
  nng_close(r.s);
  CU_ASSERT_EQUAL_FATAL(raw_open(&r, "t_disc", longd.url), 0);
  /* the pipe's removal reaches the daemon asynchronously: at most 500 tries */
  int st = KVS_EAGAIN;
  for (int i = 0; i < 500 && st == KVS_EAGAIN; i++) {
    st = reserve(&r, &k, BIG, &a);
    if (st == KVS_EAGAIN) sleep_ms(10);
  }
  CU_ASSERT_EQUAL(st, KVS_OK);
  nng_close(r.s);
  test_server_stop(&longd);
}

static const kvs_test_case cases[] = {{"put_get", test_put_get},
                                      {"shm_off_fallback", test_shm_off_fallback},
                                      {"commit_and_corrupt", test_commit_and_corrupt},
                                      {"expiry", test_expiry},
                                      {"other_tenant", test_other_tenant},
                                      {"disconnect", test_disconnect},
                                      {NULL, NULL}};

int main(void) {
  int rv = kvs_test_run_fixture("client_shmput", cases, suite_init, suite_clean);
  kvs_client_lib_fini();
  return rv;
}
