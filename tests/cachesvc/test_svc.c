/* Integration tests of kvstashd: the real daemon, started on loopback by the
 * test (free ports, temp data dir) and stopped after, also on failure. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_test.h"
#include "svc_helper.h"

static th_daemon g_d; /* shared daemon with two tenants */
static const char *const g_args[] = {"--tenant=alpha:tok-alpha-123", "--tenant=beta:tok-beta-456",
                                     "--ram_bytes=8M", NULL};

static int suite_init(void) {
  memset(&g_d, 0, sizeof g_d);
  if (th_daemon_start(&g_d, g_args) != 0) {
    th_daemon_cleanup(&g_d);
    return 1;
  }
  return 0;
}

static int suite_clean(void) {
  int st = th_daemon_stop(&g_d); /* the log on stderr when it did not exit 0 */
  th_daemon_cleanup(&g_d);
  return st == 0 ? 0 : 1;
}

static void conn_alpha(th_conn *c) {
  CU_ASSERT_FATAL(th_connect(c, g_d.url, "alpha", "tok-alpha-123", 10000) == 0);
}

static void test_put_get(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 1, 256, 100000, 4);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  uint8_t *v = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL_FATAL(th_get(&c, &ch, &v, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, ch.vbytes);
  CU_ASSERT(memcmp(v, ch.value, n) == 0);
  free(v);
  /* NX refuses an existing key; a plain PUT overwrites */
  CU_ASSERT_EQUAL(th_put(&c, &ch, KVS_WIRE_F_NX), KVS_EEXIST);
  ch.value[5] ^= 0xFF;
  CU_ASSERT_EQUAL(th_put(&c, &ch, KVS_WIRE_F_SYNC), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_get(&c, &ch, &v, &n), KVS_OK);
  CU_ASSERT(memcmp(v, ch.value, n) == 0);
  free(v);
  /* over ipc:// the same entry */
  th_conn ci;
  CU_ASSERT_FATAL(th_connect(&ci, g_d.ipc, "alpha", "tok-alpha-123", 10000) == 0);
  CU_ASSERT_EQUAL(th_get(&ci, &ch, &v, &n), KVS_OK);
  CU_ASSERT(v && memcmp(v, ch.value, n) == 0);
  free(v);
  th_close(&ci);
  th_chunk_free(&ch);
  th_close(&c);
}

/* GET by layer group: meta first, then single segments. */
static void test_segments(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 2, 128, 70001, 7);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  kvs_wire_get_req g = {.key = ch.key,
                        .model = ch.model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = 0,
                        .n_tokens = ch.n_tokens,
                        .tokens_le = (const uint8_t *)ch.tokens};
  uint8_t req[4096];
  size_t rn;
  kvs_wire_get_req_encode(&g, req, sizeof req, &rn);
  uint8_t *rep;
  size_t rl;
  CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_GET, 0, req, rn, &rep, &rl), KVS_OK);
  kvs_wire_get_resp a;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_get_resp_decode(rep, rl, &a), KVS_OK);
  CU_ASSERT_EQUAL(a.meta.n_segments, 7);
  CU_ASSERT_EQUAL(a.byte_len, 0);
  CU_ASSERT_EQUAL(a.meta.hits, 1);
  CU_ASSERT(kvs_wire_tokens_equal(a.meta.tokens_le, ch.tokens, ch.n_tokens));
  free(rep);
  for (uint32_t s = 0; s < 7; s++) {
    g.flags = 0;
    g.seg_first = s;
    g.seg_count = 1;
    kvs_wire_get_req_encode(&g, req, sizeof req, &rn);
    CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_GET, 0, req, rn, &rep, &rl), KVS_OK);
    CU_ASSERT_EQUAL_FATAL(kvs_wire_get_resp_decode(rep, rl, &a), KVS_OK);
    uint64_t off = s ? ch.seg_end[s - 1] : 0;
    CU_ASSERT_EQUAL(a.byte_off, off);
    CU_ASSERT_EQUAL(a.byte_len, ch.seg_end[s] - off);
    CU_ASSERT(memcmp(a.bytes, ch.value + off, (size_t)a.byte_len) == 0);
    free(rep);
  }
  g.seg_first = 6;
  g.seg_count = 2; /* past the end */
  kvs_wire_get_req_encode(&g, req, sizeof req, &rn);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_GET, 0, req, rn, NULL, NULL), KVS_ERANGE);
  th_chunk_free(&ch);
  th_close(&c);
}

/* Prefix chain: 4 chunks, the first 2 cached -> n_prefix 2. */
static void test_lookup(void) {
  th_conn c;
  conn_alpha(&c);
  enum { CH = 4, T = 16 };
  int32_t tok[CH * T];
  for (int i = 0; i < CH * T; i++)
    tok[i] = 1000 + i;
  kvs_model_id model = kvs_hash128_buf("test-model", 10);
  kvs_wire_lookup_chunk chunks[CH];
  kvs_key parent = {{0}};
  th_chunk ch[CH];
  for (int i = 0; i < CH; i++) {
    chunks[i].key = kvs_key_prefix(&model, &parent, tok + i * T, T);
    chunks[i].tok_off = (uint32_t)(i * T);
    chunks[i].tok_len = T;
    parent = chunks[i].key;
    th_chunk_make(&ch[i], 100 + (uint64_t)i, T, 1000, 1);
    memcpy(ch[i].tokens, tok + i * T, sizeof(int32_t) * T);
    ch[i].key = chunks[i].key;
  }
  CU_ASSERT_EQUAL(th_put(&c, &ch[0], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&c, &ch[1], 0), KVS_OK);
  CU_ASSERT_EQUAL(th_put(&c, &ch[3], 0), KVS_OK); /* cached but after a gap */
  uint8_t req[4096];
  size_t rn;
  for (uint32_t mode = 0; mode <= 1; mode++) {
    CU_ASSERT_EQUAL(
        kvs_wire_lookup_req_encode(&model, mode, chunks, CH, tok, CH * T, req, sizeof req, &rn),
        KVS_OK);
    uint8_t *rep;
    size_t rl;
    CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_LOOKUP, 0, req, rn, &rep, &rl), KVS_OK);
    kvs_wire_lookup_resp a;
    CU_ASSERT_EQUAL_FATAL(kvs_wire_lookup_resp_decode(rep, rl, &a), KVS_OK);
    CU_ASSERT_EQUAL(a.n_prefix, 2);
    CU_ASSERT(a.status[0] != 0 && a.status[1] != 0 && a.status[2] == 0);
    CU_ASSERT_EQUAL(a.status[3] != 0, mode == KVS_WIRE_LOOKUP_EACH);
    free(rep);
  }
  /* a different model with the same keys: nothing cached */
  kvs_model_id other = kvs_hash128_buf("other", 5);
  kvs_wire_lookup_req_encode(&other, 0, chunks, CH, tok, CH * T, req, sizeof req, &rn);
  uint8_t *rep;
  size_t rl;
  CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_LOOKUP, 0, req, rn, &rep, &rl), KVS_OK);
  kvs_wire_lookup_resp a;
  CU_ASSERT_EQUAL(kvs_wire_lookup_resp_decode(rep, rl, &a), KVS_OK);
  CU_ASSERT_EQUAL(a.n_prefix, 0);
  free(rep);
  for (int i = 0; i < CH; i++)
    th_chunk_free(&ch[i]);
  th_close(&c);
}

static void test_key_ops(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 3, 64, 5000, 2);
  uint8_t *rep;
  size_t rl;
  kvs_wire_exists_resp e;
  CU_ASSERT_EQUAL_FATAL(th_key_op(&c, KVS_OP_EXISTS, &ch, 0, &rep, &rl), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_exists_resp_decode(rep, rl, &e), KVS_OK);
  CU_ASSERT_EQUAL(e.present, 0);
  free(rep);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_key_op(&c, KVS_OP_EXISTS, &ch, 0, &rep, &rl), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_exists_resp_decode(rep, rl, &e), KVS_OK);
  CU_ASSERT_EQUAL(e.present, 1);
  CU_ASSERT_EQUAL(e.value_bytes, 5000);
  CU_ASSERT_EQUAL(e.pinned, 0);
  free(rep);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_PIN, &ch, 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_key_op(&c, KVS_OP_EXISTS, &ch, 0, &rep, &rl), KVS_OK);
  CU_ASSERT_EQUAL(kvs_wire_exists_resp_decode(rep, rl, &e), KVS_OK);
  CU_ASSERT_EQUAL(e.pinned, 1);
  free(rep);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_UNPIN, &ch, 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_PIN, &ch, 0, NULL, NULL), KVS_ENOENT);
  /* TTL: 1 s idle, then gone */
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_TTL, &ch, 1, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_OK);
  usleep(2200 * 1000);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ENOENT);
  uint64_t v[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, v), KVS_OK);
  CU_ASSERT(v[KVS_STAT_PUTS] >= 2);
  th_chunk_free(&ch);
  th_close(&c);
}

/* A key collision (same key, other tokens) or another model never serves KV. */
static void test_model_tokens(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 4, 32, 3000, 1);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  ch.tokens[31] ^= 1;
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ETOKENS);
  ch.tokens[31] ^= 1;
  ch.n_tokens = 31;
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ETOKENS);
  ch.n_tokens = 32;
  ch.model.b[0] ^= 1;
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_EMODEL);
  ch.model.b[0] ^= 1;
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_OK);
  th_chunk_free(&ch);
  th_close(&c);
}

static void test_auth(void) {
  th_conn c;
  th_chunk ch;
  th_chunk_make(&ch, 6, 16, 100, 1);
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "alpha", "wrong-token", 10000) == 0);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_EAUTH);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_EAUTH);
  th_close(&c);
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "alpha", "tok-alpha-12", 10000) == 0); /* prefix */
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_EAUTH);
  th_close(&c);
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "alpha", NULL, 10000) == 0);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_EAUTH);
  th_close(&c);
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "gamma", "tok-alpha-123", 10000) == 0);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_EAUTH);
  th_close(&c);
  /* beta's token does not open alpha */
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "alpha", "tok-beta-456", 10000) == 0);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_EAUTH);
  th_close(&c);
  /* a malformed payload with a bad token is refused for auth, not parsed */
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "alpha", "bad", 10000) == 0);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_GET, 0, "xx", 2, NULL, NULL), KVS_EAUTH);
  th_close(&c);
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "beta", "tok-beta-456", 10000) == 0);
  /* PING answers with the byte-stream listeners (how clients find them) */
  uint8_t *rep = NULL;
  size_t rl = 0;
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, &rep, &rl), KVS_OK);
  CU_ASSERT(rep && rl == strlen(g_d.surl) && memcmp(rep, g_d.surl, rl) == 0);
  free(rep);
  th_close(&c);
  th_chunk_free(&ch);
}

static void test_tenant_isolation(void) {
  th_conn a, b;
  conn_alpha(&a);
  CU_ASSERT_FATAL(th_connect(&b, g_d.url, "beta", "tok-beta-456", 10000) == 0);
  th_chunk ch;
  th_chunk_make(&ch, 7, 48, 20000, 2);
  CU_ASSERT_EQUAL_FATAL(th_put(&a, &ch, 0), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&b, &ch, NULL, NULL), KVS_ENOENT);
  uint8_t *rep;
  size_t rl;
  kvs_wire_exists_resp e;
  CU_ASSERT_EQUAL_FATAL(th_key_op(&b, KVS_OP_EXISTS, &ch, 0, &rep, &rl), KVS_OK);
  kvs_wire_exists_resp_decode(rep, rl, &e);
  CU_ASSERT_EQUAL(e.present, 0);
  free(rep);
  CU_ASSERT_EQUAL(th_key_op(&b, KVS_OP_DELETE, &ch, 0, NULL, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_key_op(&b, KVS_OP_PIN, &ch, 0, NULL, NULL), KVS_ENOENT);
  /* beta's LIST does not show alpha's entries */
  kvs_wire_page_req pq = {.has_cursor = 0, .limit = 100};
  uint8_t req[KVS_WIRE_PAGE_REQ_SIZE];
  kvs_wire_page_req_encode(&pq, req, sizeof req, NULL);
  CU_ASSERT_EQUAL_FATAL(th_call(&b, KVS_OP_LIST, 0, req, sizeof req, &rep, &rl), KVS_OK);
  kvs_wire_page_resp pr;
  CU_ASSERT_EQUAL(kvs_wire_page_resp_decode(KVS_OP_LIST, rep, rl, &pr), KVS_OK);
  CU_ASSERT_EQUAL(pr.n, 0);
  free(rep);
  /* beta writing the same key makes its own entry */
  th_chunk other;
  th_chunk_make(&other, 7, 48, 20000, 2);
  other.value[0] ^= 0x55;
  CU_ASSERT_EQUAL(th_put(&b, &other, 0), KVS_OK);
  uint8_t *v;
  size_t n;
  CU_ASSERT_EQUAL_FATAL(th_get(&a, &ch, &v, &n), KVS_OK);
  CU_ASSERT(memcmp(v, ch.value, n) == 0);
  free(v);
  CU_ASSERT_EQUAL_FATAL(th_get(&b, &other, &v, &n), KVS_OK);
  CU_ASSERT(memcmp(v, other.value, n) == 0);
  free(v);
  th_chunk_free(&other);
  th_chunk_free(&ch);
  th_close(&a);
  th_close(&b);
}

static int alive(void) {
  th_conn c;
  conn_alpha(&c);
  int ok = th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL) == KVS_OK;
  th_close(&c);
  return ok;
}

/* Bad frames of every kind get a clear error, and the daemon lives on. */

static void test_bad_frames(void) {
  th_conn c;
  conn_alpha(&c);
  uint8_t f[4096];
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_PING, 77, "alpha", "tok-alpha-123", 13);
  kvs_wire_hdr_encode(&h, f);
  CU_ASSERT_EQUAL(th_send_raw(&c, f, KVS_WIRE_HDR_SIZE, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_send_raw(&c, f, 0, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_send_raw(&c, f, 20, NULL, NULL), KVS_ETRUNC);
  struct {
    size_t off;
    uint8_t val;
    int want;
  } muts[] = {{0, 'x', KVS_EMAGIC},  {4, 9, KVS_EVERSION}, {6, 200, KVS_ENOTSUP},
              {8, 0x40, KVS_EPROTO}, {24, 5, KVS_ETRUNC},  {28, 0, KVS_EPROTO},
              {32, '!', KVS_EPROTO}, {12, 1, KVS_EPROTO}};
  for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
    uint8_t g[KVS_WIRE_HDR_SIZE];
    memcpy(g, f, sizeof g);
    g[muts[i].off] = muts[i].val;
    uint8_t *rep = NULL;
    size_t rl = 0;
    CU_ASSERT_EQUAL(th_send_raw(&c, g, sizeof g, &rep, &rl), muts[i].want);
    CU_ASSERT(rl > 0 && rl <= KVS_WIRE_MAX_ERRMSG); /* a message comes with it */
    free(rep);
  }
  /* payload errors, per op */
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PING, 0, "x", 1, NULL, NULL), KVS_EPROTO);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_GET, 0, f, 47, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_LOOKUP, 0, f, 3, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_EXISTS, 0, f, 39, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_LIST, 0, f, 23, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_IMPORT, 0, f, 4, NULL, NULL), KVS_ETRUNC);
  memset(f, 0, sizeof f);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PUT, 0, f, 200, NULL, NULL), KVS_EPROTO); /* kind 0 */
  /* GET with an absurd token count: refused before any allocation */
  uint32_t big = 0x7FFFFFFF;
  memcpy(f + 44, &big, 4);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_GET, 0, f, 52, NULL, NULL), KVS_ERANGE);
  /* PUT whose value does not match its checksum */
  th_chunk ch;
  th_chunk_make(&ch, 8, 16, 4000, 1);
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  m.key = ch.key;
  m.model = ch.model;
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = 16;
  m.n_segments = 1;
  m.value_bytes = 4000;
  m.checksum = kvs_checksum64(ch.value, 4000) ^ 1;
  m.tokens_le = (const uint8_t *)ch.tokens;
  m.seg_end_le = (const uint8_t *)ch.seg_end;
  size_t ml = kvs_wire_meta_size(&m);
  uint8_t *p = malloc(ml + 4000);
  kvs_wire_meta_encode(&m, p, ml, NULL);
  memcpy(p + ml, ch.value, 4000);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PUT, 0, p, ml + 4000, NULL, NULL), KVS_ECHECKSUM);
  CU_ASSERT_EQUAL(th_call(&c, KVS_OP_PUT, 0, p, ml + 3999, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ENOENT); /* nothing half-written */
  free(p);
  th_chunk_free(&ch);
  th_close(&c);
  /* a frame over max_msg is dropped by the transport: no answer, daemon
   * alive. Sent on a plain socket speaking nng's SP-over-TCP framing (the
   * REQ handshake, then an 8-byte big-endian length and the body): an nng
   * socket whose pipe the peer dropped mid-send can deadlock in nng_close in
   * nng 1.5.2 (upstream nng#1543), and once it does, every later nng_close
   * in the process waits behind it (seen in test runs, even with that close
   * on a thread of its own). */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CU_ASSERT_FATAL(fd >= 0);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)g_d.port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CU_ASSERT_FATAL(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
  const uint8_t sp[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0}; /* SP v0, protocol REQ (48) */
  uint8_t peer[8];
  CU_ASSERT_EQUAL(write(fd, sp, sizeof sp), 8);
  CU_ASSERT_EQUAL(recv(fd, peer, sizeof peer, MSG_WAITALL), 8);
  CU_ASSERT(peer[1] == 'S' && peer[2] == 'P' && peer[5] == 0x31); /* REP (49) */
  size_t huge = (64u << 20) + 4096;
  uint8_t *hb = calloc(1, huge + 12);
  uint64_t mlen = 4 + huge; /* REQ's request id, then the frame */
  for (int i = 0; i < 8; i++)
    hb[i] = (uint8_t)(mlen >> (56 - 8 * i));
  hb[8] = 0x80, hb[11] = 1; /* request id 1, high bit set */
  kvs_wire_hdr_init(&h, KVS_OP_PING, 5, "alpha", "tok-alpha-123", 13);
  h.payload_len = (uint32_t)(huge - KVS_WIRE_HDR_SIZE);
  kvs_wire_hdr_encode(&h, hb + 12);
  /* the daemon reads the length, refuses it and drops the connection: the
     send stops short (EPIPE/ECONNRESET) or the read that follows sees the
     close; never an answer */
  signal(SIGPIPE, SIG_IGN);
  size_t sent = 0;
  while (sent < huge + 12) {
    ssize_t w = send(fd, hb + sent, huge + 12 - sent, MSG_NOSIGNAL);
    if (w <= 0) break;
    sent += (size_t)w;
  }
  uint8_t one;
  ssize_t r = recv(fd, &one, 1, 0);
  CU_ASSERT(r <= 0); /* closed (0), reset or timed out (-1): no answer */
  close(fd);
  free(hb);
  CU_ASSERT(alive());
}

static void test_list_export_import(void) {
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, g_d.url, "beta", "tok-beta-456", 10000) == 0);
  enum { N = 25 };
  th_chunk ch[N];
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 1000 + (uint64_t)i, 20, 3000 + (size_t)i, 3);
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  }
  /* LIST in pages of 7 sees every entry once (plus test_tenant_isolation's one) */
  kvs_wire_page_req pq = {.has_cursor = 0, .limit = 7};
  int seen = 0, pages = 0, found[N] = {0};
  for (;;) {
    uint8_t req[KVS_WIRE_PAGE_REQ_SIZE];
    kvs_wire_page_req_encode(&pq, req, sizeof req, NULL);
    uint8_t *rep;
    size_t rl;
    CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_LIST, 0, req, sizeof req, &rep, &rl), KVS_OK);
    kvs_wire_page_resp pr;
    CU_ASSERT_EQUAL_FATAL(kvs_wire_page_resp_decode(KVS_OP_LIST, rep, rl, &pr), KVS_OK);
    for (uint32_t i = 0; i < pr.n; i++) {
      kvs_wire_list_item it;
      kvs_wire_list_item_decode(pr.items + (size_t)i * KVS_WIRE_LIST_ITEM_SIZE, &it);
      for (int j = 0; j < N; j++)
        if (kvs_hash128_equal(&it.key, &ch[j].key)) {
          found[j]++;
          CU_ASSERT_EQUAL(it.value_bytes, ch[j].vbytes);
        }
      seen++;
    }
    pages++;
    int more = pr.more;
    pq.has_cursor = 1;
    memcpy(pq.cursor, pr.next_cursor, 16);
    free(rep);
    if (!more || pages > 20) break;
  }
  CU_ASSERT(seen >= N);
  CU_ASSERT(pages >= 4);
  for (int j = 0; j < N; j++)
    CU_ASSERT_EQUAL(found[j], 1);
  /* EXPORT everything, delete, IMPORT back */
  pq.has_cursor = 0;
  pq.limit = 1000;
  uint8_t req[KVS_WIRE_PAGE_REQ_SIZE];
  kvs_wire_page_req_encode(&pq, req, sizeof req, NULL);
  uint8_t *rep;
  size_t rl;
  CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_EXPORT, 0, req, sizeof req, &rep, &rl), KVS_OK);
  kvs_wire_page_resp pr;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_page_resp_decode(KVS_OP_EXPORT, rep, rl, &pr), KVS_OK);
  CU_ASSERT_EQUAL(pr.n, (uint32_t)seen);
  for (int j = 0; j < N; j++)
    CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_DELETE, &ch[j], 0, NULL, NULL), KVS_OK);
  CU_ASSERT_EQUAL(th_get(&c, &ch[3], NULL, NULL), KVS_ENOENT);
  size_t il = 8 + pr.items_len;
  uint8_t *imp = malloc(il);
  memset(imp, 0, 8);
  memcpy(imp, &pr.n, 4);
  memcpy(imp + 8, pr.items, pr.items_len);
  free(rep);
  CU_ASSERT_EQUAL_FATAL(th_call(&c, KVS_OP_IMPORT, 0, imp, il, &rep, &rl), KVS_OK);
  kvs_wire_import_resp ir;
  CU_ASSERT_EQUAL(kvs_wire_import_resp_decode(rep, rl, &ir), KVS_OK);
  CU_ASSERT_EQUAL(ir.n_ok, (uint32_t)seen);
  CU_ASSERT_EQUAL(ir.n_failed, 0);
  free(rep);
  free(imp);
  for (int j = 0; j < N; j++) {
    uint8_t *v;
    size_t n;
    CU_ASSERT_EQUAL(th_get(&c, &ch[j], &v, &n), KVS_OK);
    if (v) CU_ASSERT(n == ch[j].vbytes && memcmp(v, ch[j].value, n) == 0);
    free(v);
    th_chunk_free(&ch[j]);
  }
  th_close(&c);
}

static void test_http(void) {
  char *body = NULL;
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/health", &body), 200);
  free(body);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/ready", &body), 200);
  free(body);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/metrics", &body), 200);
  CU_ASSERT(body && strstr(body, "kvstash_get_hits_total"));
  CU_ASSERT(body && strstr(body, "kvstash_request_seconds_bucket{op=\"GET\""));
  CU_ASSERT(body && strstr(body, "kvstash_rocksdb{tier=\"disk\""));
  CU_ASSERT(body && strstr(body, "kvstash_tier_bytes_out_total{tier=\"ram\"} "));
  CU_ASSERT(body &&
            !strstr(body, "kvstash_tier_bytes_out_total{tier=\"ram\"} 0\n")); /* T0 served */
  free(body);
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 9, 16, 999, 1);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  char hex[33], path[256];
  kvs_hash128_hex(&ch.key, hex);
  snprintf(path, sizeof path, "/v1/entry?tenant=alpha&key=%s", hex);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", path, &body), 200);
  CU_ASSERT(body && strstr(body, "\"bytes\":999"));
  free(body);
  snprintf(path, sizeof path, "/v1/pin?tenant=alpha&key=%s", hex);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "POST", path, &body), 200);
  free(body);
  snprintf(path, sizeof path, "/v1/entry?tenant=alpha&key=%s", hex);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", path, &body), 200);
  CU_ASSERT(body && strstr(body, "\"pinned\":true"));
  free(body);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/v1/entries?tenant=alpha&limit=1000", &body), 200);
  CU_ASSERT(body && strstr(body, hex));
  free(body);
  snprintf(path, sizeof path, "/v1/evict?tenant=alpha&key=%s", hex);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", path, &body), 405);
  free(body);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "POST", path, &body), 200);
  free(body);
  CU_ASSERT_EQUAL(th_get(&c, &ch, NULL, NULL), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/v1/stats", &body), 200);
  CU_ASSERT(body && strstr(body, "\"auth_failures\":"));
  free(body);
  CU_ASSERT_EQUAL(th_http(g_d.http_port, "GET", "/nope", &body), 404);
  free(body);
  th_chunk_free(&ch);
  th_close(&c);
}

/* ------------------------------------------------------ concurrency */
typedef struct worker_arg {
  int id, ok, bad;
} worker_arg;

static void *client_main(void *p) {
  worker_arg *w = p;
  th_conn c;
  const char *url = w->id % 2 ? g_d.url : g_d.ipc;
  if (th_connect(&c, url, "alpha", "tok-alpha-123", 20000) != 0) {
    w->bad++;
    return NULL;
  }
  for (int i = 0; i < 20; i++) {
    th_chunk ch;
    th_chunk_make(&ch, 50000 + (uint64_t)w->id * 100 + (uint64_t)i, 64, 30000 + (size_t)i * 100, 4);
    if (th_put(&c, &ch, 0) != KVS_OK) w->bad++;
    uint8_t *v = NULL;
    size_t n = 0;
    if (th_get(&c, &ch, &v, &n) == KVS_OK && n == ch.vbytes && memcmp(v, ch.value, n) == 0)
      w->ok++;
    else
      w->bad++;
    free(v);
    th_chunk_free(&ch);
  }
  th_close(&c);
  return NULL;
}

static void test_concurrent(void) {
  enum { NT = 12 };
  pthread_t th[NT];
  worker_arg w[NT];
  for (int i = 0; i < NT; i++) {
    w[i] = (worker_arg){i, 0, 0};
    pthread_create(&th[i], NULL, client_main, &w[i]);
  }
  int ok = 0, bad = 0;
  for (int i = 0; i < NT; i++) {
    pthread_join(th[i], NULL);
    ok += w[i].ok;
    bad += w[i].bad;
  }
  CU_ASSERT_EQUAL(bad, 0);
  CU_ASSERT_EQUAL(ok, NT * 20);
}

/* ------------------------------------------- own daemons: restart etc. */
static void test_restart(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--cold_dir=", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  enum { N = 30 };
  th_chunk ch[N];
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 7000 + (uint64_t)i, 100, i % 3 ? 150000 : 2000, 2);
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  }
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_PIN, &ch[0], 0, NULL, NULL), KVS_OK);
  for (int k = 0; k < 3; k++)
    CU_ASSERT_EQUAL(th_get(&c, &ch[1], NULL, NULL), KVS_OK);
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  for (int round = 0; round < 2; round++) {
    CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
    CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
    for (int i = 0; i < N; i++) {
      uint8_t *v = NULL;
      size_t n = 0;
      CU_ASSERT_EQUAL(th_get(&c, &ch[i], &v, &n), KVS_OK);
      CU_ASSERT(v && n == ch[i].vbytes && memcmp(v, ch[i].value, n) == 0);
      free(v);
    }
    uint8_t *rep;
    size_t rl;
    kvs_wire_exists_resp e;
    CU_ASSERT_EQUAL_FATAL(th_key_op(&c, KVS_OP_EXISTS, &ch[0], 0, &rep, &rl), KVS_OK);
    kvs_wire_exists_resp_decode(rep, rl, &e);
    CU_ASSERT_EQUAL(e.pinned, 1); /* pins survive restarts */
    free(rep);
    th_close(&c);
    CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  }
  for (int i = 0; i < N; i++)
    th_chunk_free(&ch[i]);
  th_daemon_cleanup(&d);
}

static int flip_blob_bytes(const char *dir) {
  DIR *dd = opendir(dir);
  if (!dd) return 0;
  struct dirent *e;
  int flipped = 0;
  while ((e = readdir(dd))) {
    size_t l = strlen(e->d_name);
    if (l < 5 || strcmp(e->d_name + l - 5, ".blob") != 0) continue;
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    int fd = open(p, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) continue;
    for (int k = 1; k <= 9; k++) { /* spread over the file, away from header and footer */
      off_t at = st.st_size * k / 10;
      uint8_t b;
      if (pread(fd, &b, 1, at) == 1) {
        b ^= 0x5A;
        if (pwrite(fd, &b, 1, at) == 1) flipped++;
      }
    }
    close(fd);
  }
  closedir(dd);
  return flipped;
}

static void test_corruption(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--blob_min=4K", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  enum { N = 6 };
  th_chunk ch[N];
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 9000 + (uint64_t)i, 64, 200000, 4);
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  }
  th_close(&c);
  CU_ASSERT_EQUAL_FATAL(th_daemon_stop(&d), 0);
  char t1[400];
  snprintf(t1, sizeof t1, "%s/data/t1", d.dir);
  CU_ASSERT_FATAL(flip_blob_bytes(t1) > 0);
  CU_ASSERT_FATAL(th_daemon_start(&d, NULL) == 0);
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  int quarantined = 0, served = 0;
  for (int i = 0; i < N; i++) {
    uint8_t *v = NULL;
    size_t n = 0;
    int rc = th_get(&c, &ch[i], &v, &n);
    if (rc == KVS_OK) { /* only ever the right bytes */
      CU_ASSERT(n == ch[i].vbytes && memcmp(v, ch[i].value, n) == 0);
      served++;
    } else {
      CU_ASSERT_EQUAL(rc, KVS_EQUARANTINE);
      quarantined++;
      /* and it stays quarantined */
      CU_ASSERT_EQUAL(th_get(&c, &ch[i], NULL, NULL), KVS_EQUARANTINE);
    }
    free(v);
  }
  CU_ASSERT(quarantined >= 1);
  uint64_t v[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, v), KVS_OK);
  CU_ASSERT_EQUAL(v[KVS_STAT_QUARANTINES], (uint64_t)quarantined);
  /* a fresh PUT replaces a quarantined entry */
  for (int i = 0; i < N; i++)
    if (th_get(&c, &ch[i], NULL, NULL) == KVS_EQUARANTINE) {
      CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
      CU_ASSERT_EQUAL(th_get(&c, &ch[i], NULL, NULL), KVS_OK);
      break;
    }
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  /* quarantine survives a restart */
  CU_ASSERT_FATAL(th_daemon_start(&d, NULL) == 0);
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  int still = 0;
  for (int i = 0; i < N; i++)
    still += th_get(&c, &ch[i], NULL, NULL) == KVS_EQUARANTINE;
  CU_ASSERT_EQUAL(still, quarantined - 1);
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  (void)served;
  for (int i = 0; i < N; i++)
    th_chunk_free(&ch[i]);
  th_daemon_cleanup(&d);
}

/* Far more data than the tiers hold: puts keep succeeding, old entries are
 * demoted then evicted, pinned and hot ones stay. */
static void test_capacity(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  char cold[400];
  snprintf(d.dir, sizeof d.dir, "/tmp/kvs-svc-test-XXXXXX");
  CU_ASSERT_FATAL(mkdtemp(d.dir) != NULL);
  snprintf(cold, sizeof cold, "--cold_dir=%s/cold", d.dir);
  const char *const args[] = {
      "--disk_bytes=3M", "--cold_bytes=3M", "--ram_bytes=1M", cold, "--blob_min=16K", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
  enum { N = 48 };
  th_chunk ch[N];
  int put_ok = 0;
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 20000 + (uint64_t)i, 128, 256 * 1024, 2);
    put_ok += th_put(&c, &ch[i], 0) == KVS_OK;
    if (i == 0) CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_PIN, &ch[0], 0, NULL, NULL), KVS_OK);
  }
  CU_ASSERT_EQUAL(put_ok, N);
  uint64_t v[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, v), KVS_OK);
  CU_ASSERT(v[KVS_STAT_EVICTIONS] > 0);
  /* STATS' tier rows (wire version 2): RAM first, then the tier list */
  kvs_wire_stats_resp sr;
  CU_ASSERT_EQUAL_FATAL(th_stats_tiers(&c, &sr), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(sr.n_tiers, 3);
  CU_ASSERT_STRING_EQUAL(sr.tiers[0].name, "ram");
  CU_ASSERT_STRING_EQUAL(sr.tiers[1].name, "disk");
  CU_ASSERT_STRING_EQUAL(sr.tiers[2].name, "cold");
  for (uint32_t t = 0; t < 3; t++) {
    CU_ASSERT_EQUAL(sr.tiers[t].tier, t); /* the numbers meta/EXISTS/LIST carry */
    CU_ASSERT_EQUAL(sr.tiers[t].present, 1);
  }
  const kvs_wire_tier_row *ram = th_tier(&sr, "ram"), *disk = th_tier(&sr, "disk"),
                          *coldt = th_tier(&sr, "cold");
  CU_ASSERT_FATAL(ram && disk && coldt);
  CU_ASSERT_EQUAL(ram->capacity, 1u << 20);
  CU_ASSERT_EQUAL(disk->capacity, 3u << 20);
  CU_ASSERT_EQUAL(coldt->capacity, 3u << 20);
  CU_ASSERT(disk->used <= 3u << 20 && disk->used > 0);
  CU_ASSERT(coldt->used <= 3u << 20);
  CU_ASSERT(coldt->used > 0); /* demoted before evicted */
  CU_ASSERT(ram->used <= 1u << 20);
  CU_ASSERT(disk->entries + coldt->entries == sr.v[KVS_STAT_ENTRIES]); /* each on one tier */
  CU_ASSERT(coldt->entries > 0 && disk->entries > 0);
  CU_ASSERT(ram->entries <= disk->entries + coldt->entries); /* copies of them */
  /* the pinned first entry and the last one are there, the bytes right */
  int idx[2] = {0, N - 1};
  for (int k = 0; k < 2; k++) {
    uint8_t *val = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(th_get(&c, &ch[idx[k]], &val, &n), KVS_OK);
    CU_ASSERT(val && memcmp(val, ch[idx[k]].value, n) == 0);
    free(val);
  }
  int present = 0, gone = 0;
  for (int i = 0; i < N; i++) {
    int rc = th_get(&c, &ch[i], NULL, NULL);
    present += rc == KVS_OK;
    gone += rc == KVS_ENOENT;
  }
  CU_ASSERT_EQUAL(present + gone, N);
  CU_ASSERT(gone > 0 && present > 2);
  /* a hit on a T2 entry moves it back up when T1 has room */
  int t2 = -1;
  for (int i = 0; i < N && t2 < 0; i++) {
    uint8_t *rep;
    size_t rl;
    kvs_wire_exists_resp e;
    if (th_key_op(&c, KVS_OP_EXISTS, &ch[i], 0, &rep, &rl) == KVS_OK &&
        kvs_wire_exists_resp_decode(rep, rl, &e) == KVS_OK && e.present && e.tier == 2)
      t2 = i;
    free(rep);
  }
  th_close(&c);
  CU_ASSERT(t2 >= 0); /* T2 holds more entries than T0 can */
  char *body = NULL;
  CU_ASSERT_EQUAL(th_http(d.http_port, "GET", "/metrics", &body), 200);
  CU_ASSERT(body && strstr(body, "kvstash_demotions_total"));
  unsigned long long promo0 = 0, promo1 = 0;
  const char *pm = body ? strstr(body, "\nkvstash_promotions_total ") : NULL;
  if (pm) promo0 = strtoull(pm + 26, NULL, 10);
  free(body);
  if (t2 >= 0) { /* make room in T1, then hit the T2 entry */
    CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
    for (int i = 0; i < N; i++)
      if (i != t2 && i != 0) (void)th_key_op(&c, KVS_OP_DELETE, &ch[i], 0, NULL, NULL);
    uint8_t *val = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(th_get(&c, &ch[t2], &val, &n), KVS_OK);
    CU_ASSERT(val && n == ch[t2].vbytes && memcmp(val, ch[t2].value, n) == 0);
    free(val);
    th_close(&c);
    CU_ASSERT_EQUAL(th_http(d.http_port, "GET", "/metrics", &body), 200);
    pm = body ? strstr(body, "\nkvstash_promotions_total ") : NULL;
    if (pm) promo1 = strtoull(pm + 26, NULL, 10);
    CU_ASSERT_EQUAL(promo1, promo0 + 1);
    free(body);
  }
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  for (int i = 0; i < N; i++)
    th_chunk_free(&ch[i]);
  th_daemon_cleanup(&d);
}

/* Eviction keeps what saves the most recompute per byte: entries with hits
 * (and more tokens) outlive cold ones of the same size. */
/* Cost-aware (lru = 0) or plain LRU eviction over the same history. */
static void eviction_case(int lru) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--disk_bytes=2M", "--ram_bytes=0",
                              "--cold_dir=", lru ? "--eviction=lru" : "--eviction=cost", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
  enum { N = 14 };
  th_chunk ch[N];
  for (int i = 0; i < N; i++) /* entry 2 has 4x the tokens of the others */
    th_chunk_make(&ch[i], 40000 + (uint64_t)i, i == 2 ? 512 : 128, 256 * 1024, 1);
  for (int i = 0; i < 6; i++)
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  CU_ASSERT(th_wait_written(&d));
  for (int k = 0; k < 5; k++) { /* entries 0 and 1 are hot */
    CU_ASSERT_EQUAL(th_get(&c, &ch[0], NULL, NULL), KVS_OK);
    CU_ASSERT_EQUAL(th_get(&c, &ch[1], NULL, NULL), KVS_OK);
  }
  for (int i = 6; i < N; i++)
    CU_ASSERT_EQUAL(th_put(&c, &ch[i], 0), KVS_OK);
  uint64_t v[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, v), KVS_OK);
  CU_ASSERT(v[KVS_STAT_EVICTIONS] >= 6);
  int st[N];
  for (int i = 0; i < N; i++) {
    uint8_t *rep;
    size_t rl;
    kvs_wire_exists_resp e = {0};
    st[i] = th_key_op(&c, KVS_OP_EXISTS, &ch[i], 0, &rep, &rl) == KVS_OK &&
            kvs_wire_exists_resp_decode(rep, rl, &e) == KVS_OK && e.present;
    free(rep);
  }
  if (lru) { /* the six least recently used go, hot or not, whatever they would save */
    for (int i = 0; i < 6; i++)
      CU_ASSERT(!st[i]);
  } else {
    CU_ASSERT(st[0] && st[1]);             /* hot */
    CU_ASSERT(st[2]);                      /* many tokens for its bytes */
    CU_ASSERT(!st[3] && !st[4] && !st[5]); /* cold, oldest */
  }
  CU_ASSERT(st[N - 1]); /* just written */
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  for (int i = 0; i < N; i++)
    th_chunk_free(&ch[i]);
  th_daemon_cleanup(&d);
}

static void test_eviction_order(void) { eviction_case(0); }
static void test_eviction_lru(void) { eviction_case(1); }

/* tls+tcp:// with a self-signed certificate made by openssl for the test. */
static void test_tls(void) {
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    fprintf(stderr, "openssl not found: TLS test skipped\n");
    return;
  }
  th_daemon d;
  memset(&d, 0, sizeof d);
  snprintf(d.dir, sizeof d.dir, "/tmp/kvs-svc-test-XXXXXX");
  CU_ASSERT_FATAL(mkdtemp(d.dir) != NULL);
  char cmd[1400];
  snprintf(
      cmd, sizeof cmd,
      "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
      "-keyout key.pem -out cert.pem -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost >/dev/null 2>&1 && cat cert.pem key.pem > both.pem",
      d.dir);
  CU_ASSERT_FATAL(system(cmd) == 0);
  int port = th_free_port();
  char listen[160], certarg[400], ca[400], url[128];
  snprintf(url, sizeof url, "tls+tcp://127.0.0.1:%d", port);
  snprintf(listen, sizeof listen, "--listen=%s", url);
  snprintf(certarg, sizeof certarg, "--tls_cert_key_file=%s/both.pem", d.dir);
  snprintf(ca, sizeof ca, "%s/cert.pem", d.dir);
  const char *const args[] = {listen, certarg, NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect_tls(&c, url, ca, "t", NULL, 10000) == 0);
  th_chunk ch;
  th_chunk_make(&ch, 31337, 32, 50000, 2);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  uint8_t *v = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL(th_get(&c, &ch, &v, &n), KVS_OK);
  CU_ASSERT(v && n == ch.vbytes && memcmp(v, ch.value, n) == 0);
  free(v);
  th_close(&c);
  /* plain tcp to the TLS port: the dial fails, or no answer comes */
  char plain[128];
  snprintf(plain, sizeof plain, "tcp://127.0.0.1:%d", port);
  if (th_connect(&c, plain, "t", NULL, 1000) == 0) {
    CU_ASSERT_NOT_EQUAL(th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL), KVS_OK);
    th_close(&c);
  }
  th_chunk_free(&ch);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* Same-host fast path: LEASE says where the bytes are in the tenant's
 * segment; a leased range is never reused until released or expired. */
static void test_shm_lease(void) {
  int probe = shm_open("/kvstash-test-probe", O_CREAT | O_RDWR, 0600);
  if (probe < 0) {
    fprintf(stderr, "no POSIX shared memory here: shm test skipped\n");
    return;
  }
  close(probe);
  shm_unlink("/kvstash-test-probe");
  th_conn c0;
  conn_alpha(&c0); /* the shared daemon runs with shm off */
  th_chunk ch;
  th_chunk_make(&ch, 4242, 32, 200000, 2);
  CU_ASSERT_EQUAL(th_put(&c0, &ch, 0), KVS_OK);
  kvs_wire_lease_resp lr;
  CU_ASSERT_EQUAL(th_lease(&c0, &ch, 0, &lr), KVS_ENOTSUP);
  th_close(&c0);

  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--shm=on",         "--ram_bytes=1M",   "--lease_ms=1500",
                              "--tenant=t:tok-t", "--tenant=u:tok-u", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c, cu;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", "tok-t", 10000) == 0);
  CU_ASSERT_FATAL(th_connect(&cu, d.url, "u", "tok-u", 10000) == 0);
  CU_ASSERT_EQUAL(th_lease(&c, &ch, 0, &lr), KVS_ENOENT);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_lease(&c, &ch, 0, &lr), KVS_OK);
  CU_ASSERT_EQUAL(lr.value_bytes, ch.vbytes);
  CU_ASSERT_EQUAL(lr.meta.n_tokens, 32);
  CU_ASSERT(lr.expires_ms > kvs_wall_ms());
  char path[200];
  snprintf(path, sizeof path, "/dev/shm%s", lr.shm_name);
  struct stat st;
  CU_ASSERT(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600); /* the daemon's user only */
  size_t msz = 0;
  const uint8_t *map = th_shm_map(lr.shm_name, &msz);
  CU_ASSERT_FATAL(map != NULL);
  CU_ASSERT_FATAL(lr.offset + lr.value_bytes <= msz);
  CU_ASSERT(memcmp(map + lr.offset, ch.value, ch.vbytes) == 0);
  CU_ASSERT_EQUAL(kvs_checksum64(map + lr.offset, ch.vbytes), lr.checksum);
  /* another tenant: neither the entry nor the lease */
  kvs_wire_lease_resp lu;
  CU_ASSERT_EQUAL(th_lease(&cu, &ch, 0, &lu), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_release(&cu, lr.lease_id), KVS_ENOENT);
  /* delete the entry and churn the RAM tier: the leased range stays intact */
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL), KVS_OK);
  for (int i = 0; i < 8; i++) {
    th_chunk o;
    th_chunk_make(&o, 5000 + (uint64_t)i, 32, 200000, 1);
    CU_ASSERT_EQUAL(th_put(&c, &o, 0), KVS_OK);
    kvs_wire_lease_resp lo;
    if (th_lease(&c, &o, 0, &lo) == KVS_OK) {
      CU_ASSERT(lo.offset + lo.value_bytes <= lr.offset || lo.offset >= lr.offset + lr.value_bytes);
      CU_ASSERT_EQUAL(th_release(&c, lo.lease_id), KVS_OK);
    }
    th_chunk_free(&o);
  }
  CU_ASSERT(memcmp(map + lr.offset, ch.value, ch.vbytes) == 0);
  uint64_t sv[KVS__STAT_COUNT];
  CU_ASSERT_EQUAL(th_stats(&c, sv), KVS_OK);
  CU_ASSERT_EQUAL(sv[KVS_STAT_LEASES], 1); /* the gauge: this lease is held */
  CU_ASSERT_EQUAL(th_release(&c, lr.lease_id), KVS_OK);
  CU_ASSERT_EQUAL(th_release(&c, lr.lease_id), KVS_ENOENT);
  CU_ASSERT_EQUAL(th_stats(&c, sv), KVS_OK);
  CU_ASSERT_EQUAL(sv[KVS_STAT_LEASES], 0);
  /* a lease expires by itself; release in the same trip as the next lease.
   * The churn above filled the 1M RAM tier with entries the write-behind
   * writer may still hold (not evictable until on disk): wait, so that the
   * PUT lands in the RAM tier (a lease maps T0 bytes) whatever the timing */
  CU_ASSERT(th_wait_written(&d));
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  kvs_wire_lease_resp l1, l2;
  CU_ASSERT_EQUAL_FATAL(th_lease(&c, &ch, 0, &l1), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_lease(&c, &ch, l1.lease_id, &l2), KVS_OK);
  CU_ASSERT_EQUAL(th_release(&c, l1.lease_id), KVS_ENOENT); /* released by the second LEASE */
  usleep(3000 * 1000);
  CU_ASSERT_EQUAL(th_release(&c, l2.lease_id), KVS_ENOENT); /* expired */
  munmap((void *)map, msz);
  th_close(&c);
  th_close(&cu);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  CU_ASSERT(stat(path, &st) != 0); /* segments are unlinked at shutdown */
  th_chunk_free(&ch);
  th_daemon_cleanup(&d);
}

/* ------------------------------------------------ byte-stream listener */
static void sconn_alpha(th_sconn *c) {
  CU_ASSERT_FATAL(th_sconnect(c, g_d.surl, "alpha", "tok-alpha-123", 10000) == 0);
}

/* GETs over tcp+stream:// equal what was PUT (whole value and single
 * segments), several requests on one connection, errors keep it usable. */
static void test_stream_get(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 4101, 300, 1000003, 5);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  th_sconn s;
  sconn_alpha(&s);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
  for (int round = 0; round < 3; round++) {
    uint8_t *v = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(th_sget(&s, &ch, 0, KVS_WIRE_SEG_ALL, &v, &n), KVS_OK);
    CU_ASSERT_EQUAL(n, ch.vbytes);
    CU_ASSERT(v && memcmp(v, ch.value, n) == 0);
    free(v);
  }
  for (uint32_t g = 0; g < ch.n_seg; g++) {
    uint8_t *v = NULL;
    size_t n = 0;
    uint64_t off = g ? ch.seg_end[g - 1] : 0;
    CU_ASSERT_EQUAL_FATAL(th_sget(&s, &ch, g, 1, &v, &n), KVS_OK);
    CU_ASSERT_EQUAL(n, ch.seg_end[g] - off);
    CU_ASSERT(v && memcmp(v, ch.value + off, n) == 0);
    free(v);
  }
  CU_ASSERT_EQUAL(th_sget(&s, &ch, 9, 1, NULL, NULL), KVS_ERANGE);
  th_chunk miss;
  th_chunk_make(&miss, 4102, 16, 100, 1);
  CU_ASSERT_EQUAL(th_sget(&s, &miss, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_ENOENT);
  /* wrong tokens, other ops, bad payloads: an answer, and the connection goes on */
  ch.tokens[3] ^= 1;
  CU_ASSERT_EQUAL(th_sget(&s, &ch, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_ETOKENS);
  ch.tokens[3] ^= 1;
  uint8_t kr[KVS_WIRE_KEY_REQ_SIZE] = {0};
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_EXISTS, kr, sizeof kr, NULL, NULL), KVS_ENOTSUP);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_GET, kr, 7, NULL, NULL), KVS_ETRUNC);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
  /* another tenant does not see it */
  th_sconn b;
  CU_ASSERT_FATAL(th_sconnect(&b, g_d.surl, "beta", "tok-beta-456", 10000) == 0);
  CU_ASSERT_EQUAL(th_sget(&b, &ch, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_ENOENT);
  th_sclose(&b);
  /* an entry on disk only (T1) comes the same way: evict it from RAM by
   * filling the 8 MiB tier with others */
  th_chunk fill[6];
  for (int i = 0; i < 6; i++) {
    th_chunk_make(&fill[i], 4200 + (uint64_t)i, 64, 2u << 20, 2);
    CU_ASSERT_EQUAL(th_put(&c, &fill[i], 0), KVS_OK);
  }
  uint8_t *v = NULL;
  size_t n = 0;
  CU_ASSERT_EQUAL(th_sget(&s, &ch, 0, KVS_WIRE_SEG_ALL, &v, &n), KVS_OK);
  CU_ASSERT(v && n == ch.vbytes && memcmp(v, ch.value, n) == 0);
  free(v);
  for (int i = 0; i < 6; i++) {
    th_key_op(&c, KVS_OP_DELETE, &fill[i], 0, NULL, NULL);
    th_chunk_free(&fill[i]);
  }
  th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL);
  th_chunk_free(&miss);
  th_chunk_free(&ch);
  th_sclose(&s);
  th_close(&c);
}

/* A client that sends ahead: frames written back to back (whole, and one cut
 * inside its header) are each answered, in order, and the stream stays in
 * step. The listener reads as much as arrives, so this is its leftover path. */
static void test_stream_pipelined(void) {
  enum { NF = 4 };
  uint8_t f[NF * KVS_WIRE_HDR_SIZE];
  for (int i = 0; i < NF; i++) {
    kvs_wire_hdr h;
    CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_init(&h, KVS_OP_PING, 100 + (uint64_t)i, "alpha",
                                            "tok-alpha-123", strlen("tok-alpha-123")),
                          KVS_OK);
    kvs_wire_hdr_encode(&h, f + i * KVS_WIRE_HDR_SIZE);
  }
  th_sconn s;
  sconn_alpha(&s);
  /* three whole frames and the first 40 bytes of the fourth in one write */
  size_t first = 3 * KVS_WIRE_HDR_SIZE + 40;
  CU_ASSERT_EQUAL_FATAL(th_swrite(&s, f, first), KVS_OK);
  for (int i = 0; i < 3; i++) {
    kvs_wire_hdr a;
    CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), KVS_OK);
    CU_ASSERT_EQUAL(a.req_id, 100 + (uint64_t)i);
    CU_ASSERT_EQUAL(a.op, KVS_OP_PING);
  }
  /* the rest of the fourth */
  CU_ASSERT_EQUAL_FATAL(th_swrite(&s, f + first, sizeof f - first), KVS_OK);
  kvs_wire_hdr a;
  CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), KVS_OK);
  CU_ASSERT_EQUAL(a.req_id, 103);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
  th_sclose(&s);
}

/* Wrong or missing tokens are refused before anything is looked up. */
static void test_stream_auth(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 4301, 32, 5000, 1);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  th_sconn s;
  CU_ASSERT_FATAL(th_sconnect(&s, g_d.surl, "alpha", "tok-wrong", 10000) == 0);
  CU_ASSERT_EQUAL(th_sget(&s, &ch, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_EAUTH);
  CU_ASSERT_EQUAL(th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_EAUTH);
  th_sclose(&s);
  CU_ASSERT_FATAL(th_sconnect(&s, g_d.surl, "alpha", "", 10000) == 0);
  CU_ASSERT_EQUAL(th_sget(&s, &ch, 0, KVS_WIRE_SEG_ALL, NULL, NULL), KVS_EAUTH);
  th_sclose(&s);
  th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL);
  th_chunk_free(&ch);
  th_close(&c);
}

static int stream_alive(void) {
  th_sconn s;
  if (th_sconnect(&s, g_d.surl, "alpha", "tok-alpha-123", 10000) != 0) return 0;
  int ok = th_scall(&s, KVS_OP_PING, NULL, 0, NULL, NULL) == KVS_OK;
  th_sclose(&s);
  return ok;
}

/* Bad framing: an answer where one can be given, then the connection is
 * closed; never a crash or a hang. */
static void test_stream_bad_frames(void) {
  kvs_wire_hdr h, a;
  uint8_t f[KVS_WIRE_HDR_SIZE];
  th_sconn s;
  /* oversized length prefix: refused before any allocation, then closed */
  sconn_alpha(&s);
  kvs_wire_hdr_init(&h, KVS_OP_GET, 9, "alpha", "tok-alpha-123", 13);
  h.payload_len = 0xFFFFFFF0u;
  kvs_wire_hdr_encode(&h, f);
  CU_ASSERT_EQUAL(th_swrite(&s, f, sizeof f), KVS_OK);
  CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), KVS_ETOOBIG);
  CU_ASSERT_EQUAL(a.req_id, 9);
  uint8_t one;
  CU_ASSERT_EQUAL(th_sread(&s, &one, 1), KVS_ECONN);
  th_sclose(&s);
  /* just over the stream's request bound */
  sconn_alpha(&s);
  h.payload_len = KVS_WIRE_STREAM_MAX_REQ + 1;
  kvs_wire_hdr_encode(&h, f);
  CU_ASSERT_EQUAL(th_swrite(&s, f, sizeof f), KVS_OK);
  CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), KVS_ETOOBIG);
  th_sclose(&s);
  /* garbage header */
  sconn_alpha(&s);
  uint8_t junk[KVS_WIRE_HDR_SIZE];
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (uint8_t)(i * 37 + 11);
  CU_ASSERT_EQUAL(th_swrite(&s, junk, sizeof junk), KVS_OK);
  CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), KVS_EMAGIC);
  CU_ASSERT_EQUAL(th_sread(&s, &one, 1), KVS_ECONN);
  th_sclose(&s);
  /* a header mutation of each kind */
  struct {
    size_t off;
    uint8_t val;
    int want;
  } muts[] = {{4, 9, KVS_EVERSION}, {6, 200, KVS_ENOTSUP}, {8, 0x40, KVS_EPROTO},
              {28, 0, KVS_EPROTO},  {32, '!', KVS_EPROTO}, {12, 1, KVS_EPROTO}};
  kvs_wire_hdr_init(&h, KVS_OP_PING, 10, "alpha", "tok-alpha-123", 13);
  kvs_wire_hdr_encode(&h, f);
  for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
    uint8_t g[KVS_WIRE_HDR_SIZE];
    memcpy(g, f, sizeof g);
    g[muts[i].off] = muts[i].val;
    sconn_alpha(&s);
    CU_ASSERT_EQUAL(th_swrite(&s, g, sizeof g), KVS_OK);
    CU_ASSERT_EQUAL(th_sread_answer(&s, &a, NULL), muts[i].want);
    th_sclose(&s);
  }
  /* truncated: part of a header, part of a payload, then the peer goes */
  sconn_alpha(&s);
  CU_ASSERT_EQUAL(th_swrite(&s, f, 50), KVS_OK);
  th_sclose(&s);
  sconn_alpha(&s);
  kvs_wire_hdr_init(&h, KVS_OP_GET, 11, "alpha", "tok-alpha-123", 13);
  h.payload_len = 1000;
  kvs_wire_hdr_encode(&h, f);
  CU_ASSERT_EQUAL(th_swrite(&s, f, sizeof f), KVS_OK);
  CU_ASSERT_EQUAL(th_swrite(&s, junk, 20), KVS_OK);
  th_sclose(&s);
  /* what an nng REQ client dialing the stream port would send (its SP
   * header), then gone; (an nng socket itself is not used here: closing one
   * whose handshake failed can deadlock in nng 1.5.2, nng#1543) */
  sconn_alpha(&s);
  const uint8_t sp[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
  CU_ASSERT_EQUAL(th_swrite(&s, sp, sizeof sp), KVS_OK);
  th_sclose(&s);
  CU_ASSERT(stream_alive());
  CU_ASSERT(alive());
}

/* A reader killed in the middle of a large answer: the server's send fails,
 * the entry's ref is dropped, nothing is wedged; the bytes of an entry
 * deleted while a GET was sending it stay intact until sent. */
static void test_stream_killed_client(void) {
  th_conn c;
  conn_alpha(&c);
  th_chunk ch;
  th_chunk_make(&ch, 4401, 128, 6u << 20, 3);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch, 0), KVS_OK);
  kvs_wire_get_req g = {.key = ch.key,
                        .model = ch.model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = ch.n_tokens,
                        .tokens_le = (const uint8_t *)ch.tokens};
  size_t pl = kvs_wire_get_req_size(&g);
  uint8_t *frame = malloc(KVS_WIRE_HDR_SIZE + pl);
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_GET, 1, "alpha", "tok-alpha-123", 13);
  h.payload_len = (uint32_t)pl;
  kvs_wire_hdr_encode(&h, frame);
  kvs_wire_get_req_encode(&g, frame + KVS_WIRE_HDR_SIZE, pl, NULL);
  for (int k = 0; k < 3; k++) {
    /* a child on a plain socket: sends the GET, reads 100 bytes, stalls; killed */
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      struct sockaddr_in sa;
      memset(&sa, 0, sizeof sa);
      sa.sin_family = AF_INET;
      sa.sin_port = htons((uint16_t)g_d.sport);
      sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) _exit(1);
      size_t n = KVS_WIRE_HDR_SIZE + pl, w = 0;
      while (w < n) {
        ssize_t r = write(fd, frame + w, n - w);
        if (r <= 0) _exit(1);
        w += (size_t)r;
      }
      uint8_t b[100];
      if (read(fd, b, sizeof b) <= 0) _exit(1);
      for (;;)
        pause();
    }
    usleep(200000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  /* a reader that stops half-way while the entry is deleted and its RAM reused */
  th_sconn s;
  sconn_alpha(&s);
  CU_ASSERT_EQUAL(th_swrite(&s, frame, KVS_WIRE_HDR_SIZE + pl), KVS_OK);
  uint8_t hb[KVS_WIRE_HDR_SIZE];
  CU_ASSERT_EQUAL(th_sread(&s, hb, sizeof hb), KVS_OK);
  kvs_wire_hdr a;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_decode_head(hb, &a), KVS_OK);
  CU_ASSERT_EQUAL(a.status, 0);
  CU_ASSERT_EQUAL(th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL), KVS_OK);
  th_chunk other;
  th_chunk_make(&other, 4402, 128, 6u << 20, 3);
  CU_ASSERT_EQUAL(th_put(&c, &other, 0), KVS_OK);
  uint8_t *rest = malloc(a.payload_len);
  CU_ASSERT_EQUAL(th_sread(&s, rest, a.payload_len), KVS_OK);
  kvs_wire_get_resp r;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_get_resp_decode(rest, a.payload_len, &r), KVS_OK);
  CU_ASSERT(r.byte_len == ch.vbytes && memcmp(r.bytes, ch.value, ch.vbytes) == 0);
  free(rest);
  th_sclose(&s);
  th_key_op(&c, KVS_OP_DELETE, &other, 0, NULL, NULL);
  th_chunk_free(&other);
  free(frame);
  th_chunk_free(&ch);
  th_close(&c);
  CU_ASSERT(stream_alive());
  CU_ASSERT(alive());
}

/* kvstashd stops (drains and exits 0) with stream connections open in
 * every state: idle, mid-frame, and an answer not read. */
static void test_stream_stop(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--ram_bytes=64M", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  th_chunk ch;
  th_chunk_make(&ch, 4501, 64, 8u << 20, 2);
  CU_ASSERT_EQUAL(th_put(&c, &ch, 0), KVS_OK);
  th_sconn idle, mid, unread;
  CU_ASSERT_FATAL(th_sconnect(&idle, d.surl, "t", NULL, 5000) == 0);
  CU_ASSERT_FATAL(th_sconnect(&mid, d.surl, "t", NULL, 5000) == 0);
  CU_ASSERT_FATAL(th_sconnect(&unread, d.surl, "t", NULL, 5000) == 0);
  CU_ASSERT_EQUAL(th_scall(&idle, KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
  uint8_t f[KVS_WIRE_HDR_SIZE];
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_PING, 1, "t", NULL, 0);
  kvs_wire_hdr_encode(&h, f);
  CU_ASSERT_EQUAL(th_swrite(&mid, f, 60), KVS_OK);
  kvs_wire_get_req g = {.key = ch.key,
                        .model = ch.model,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = ch.n_tokens,
                        .tokens_le = (const uint8_t *)ch.tokens};
  uint8_t p[KVS_WIRE_GET_REQ_FIXED + 4 * 64];
  size_t pl = kvs_wire_get_req_size(&g);
  kvs_wire_get_req_encode(&g, p, sizeof p, NULL);
  kvs_wire_hdr_init(&h, KVS_OP_GET, 2, "t", NULL, 0);
  h.payload_len = (uint32_t)pl;
  uint8_t fr[KVS_WIRE_HDR_SIZE + sizeof p];
  kvs_wire_hdr_encode(&h, fr);
  memcpy(fr + KVS_WIRE_HDR_SIZE, p, pl);
  CU_ASSERT_EQUAL(th_swrite(&unread, fr, KVS_WIRE_HDR_SIZE + pl), KVS_OK);
  usleep(100000);
  uint64_t t0 = kvs_now_ns();
  int st = th_daemon_stop(&d);
  CU_ASSERT_EQUAL(st, 0);
  /* not a timed assertion: printed (the unread answer no longer holds the
   * stop for the whole send deadline; stream.c, KVS__STREAM_DRAIN_SEND_MS) */
  fprintf(stderr, "stream_stop: stopped in %.1f s\n", (double)(kvs_now_ns() - t0) * 1e-9);
  uint8_t one;
  CU_ASSERT_EQUAL(th_sread(&idle, &one, 1), KVS_ECONN);
  th_sclose(&idle);
  th_sclose(&mid);
  th_sclose(&unread);
  th_close(&c);
  th_chunk_free(&ch);
  th_daemon_cleanup(&d);
}

static const kvs_test_case cases[] = {{"put_get", test_put_get},
                                      {"segments", test_segments},
                                      {"lookup", test_lookup},
                                      {"key_ops", test_key_ops},
                                      {"model_tokens", test_model_tokens},
                                      {"auth", test_auth},
                                      {"tenant_isolation", test_tenant_isolation},
                                      {"bad_frames", test_bad_frames},
                                      {"list_export_import", test_list_export_import},
                                      {"http", test_http},
                                      {"concurrent", test_concurrent},
                                      {"restart", test_restart},
                                      {"corruption", test_corruption},
                                      {"capacity", test_capacity},
                                      {"eviction_order", test_eviction_order},
                                      {"eviction_lru", test_eviction_lru},
                                      {"tls", test_tls},
                                      {"shm_lease", test_shm_lease},
                                      {"stream_get", test_stream_get},
                                      {"stream_auth", test_stream_auth},
                                      {"stream_pipelined", test_stream_pipelined},
                                      {"stream_bad_frames", test_stream_bad_frames},
                                      {"stream_killed_client", test_stream_killed_client},
                                      {"stream_stop", test_stream_stop},
                                      {NULL, NULL}};

int main(void) { return kvs_test_run_fixture("cachesvc_daemon", cases, suite_init, suite_clean); }
