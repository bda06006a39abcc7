#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define XXH_INLINE_ALL /* the reference XXH3 of the checksum test, built here */
#include <xxhash.h>

#include "kvs_core.h"
#include "kvs_le.h"
#include "kvs_net.h"
#include "kvs_test.h"
#include "kvs_wire.h"

static void test_err_table(void) {
  CU_ASSERT_STRING_EQUAL(kvs_errname(KVS_OK), "KVS_OK");
  CU_ASSERT_STRING_EQUAL(kvs_errname(KVS_ECHECKSUM), "KVS_ECHECKSUM");
  CU_ASSERT_STRING_EQUAL(kvs_strerror(KVS_ECHECKSUM), "checksum mismatch");
  CU_ASSERT_STRING_EQUAL(kvs_errname(12345), "KVS_EUNKNOWN");
  CU_ASSERT_STRING_EQUAL(kvs_strerror(-9999), "unknown error");
  /* every code from -1 down to the last is named, and names are distinct */
  for (int e = -1; e > KVS__ERR_MIN; e--) {
    CU_ASSERT_STRING_NOT_EQUAL(kvs_errname(e), "KVS_EUNKNOWN");
    CU_ASSERT(strlen(kvs_strerror(e)) > 3);
    for (int f = e - 1; f > KVS__ERR_MIN; f--)
      CU_ASSERT_STRING_NOT_EQUAL(kvs_errname(e), kvs_errname(f));
  }
  CU_ASSERT_EQUAL(kvs_err_from_errno(ENOSPC), KVS_ENOSPC);
  CU_ASSERT_EQUAL(kvs_err_from_errno(ENOENT), KVS_ENOENT);
  CU_ASSERT_EQUAL(kvs_err_from_errno(0), KVS_OK);
  CU_ASSERT_EQUAL(kvs_err_from_errno(EXDEV), KVS_EIO);
}

static void test_log(void) {
  CU_ASSERT_EQUAL(kvs_log_parse_level("debug"), KVS_LOG_DEBUG);
  CU_ASSERT_EQUAL(kvs_log_parse_level("3"), 3);
  CU_ASSERT_EQUAL(kvs_log_parse_level("loud"), -1);
  /* capture stderr and check the key=value line */
  int fds[2];
  CU_ASSERT_FATAL(pipe(fds) == 0);
  int saved = dup(2);
  dup2(fds[1], 2);
  kvs_log_set_level(KVS_LOG_INFO);
  KVS_LOGI("test", "hello world", "n=%d name=%s", 42, "x");
  KVS_LOGD("test", "not shown", "n=%d", 1);
  dup2(saved, 2);
  close(saved);
  close(fds[1]);
  char buf[1024] = {0};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  CU_ASSERT(n > 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(buf, "level=info comp=test msg=\"hello world\" n=42 name=x\n"));
  CU_ASSERT_PTR_NULL(strstr(buf, "not shown"));
  CU_ASSERT(strncmp(buf, "ts=", 3) == 0);
  kvs_log_set_level(KVS_LOG_WARN);
}

static kvs_layout smol(void) {
  kvs_layout l = {.n_layers = 30,
                  .n_kv_heads = 3,
                  .head_dim = 64,
                  .dtype = KVS_DTYPE_F16,
                  .rope_type = KVS_ROPE_NORM,
                  .rope_dims = 64,
                  .rope_theta = 100000.0f,
                  .rope_freq_scale = 1.0f};
  return l;
}

static void test_layout(void) {
  kvs_layout l = smol();
  CU_ASSERT_EQUAL(kvs_layout_validate(&l), KVS_OK);
  CU_ASSERT_EQUAL(kvs_layout_token_bytes(&l), 23040u); /* SmolLM2-135M: 23,040 B/token */
  kvs_layout l8 = {.n_layers = 32,
                   .n_kv_heads = 8,
                   .head_dim = 128,
                   .dtype = KVS_DTYPE_BF16,
                   .rope_type = KVS_ROPE_NORM,
                   .rope_dims = 128,
                   .rope_theta = 500000.0f,
                   .rope_freq_scale = 1.0f};
  CU_ASSERT_EQUAL(kvs_layout_token_bytes(&l8), 131072u); /* Llama-3-8B */
  CU_ASSERT_EQUAL(kvs_layout_plane_elems(&l, 256), 256u * 3 * 64);
  CU_ASSERT(kvs_layout_equal(&l, &l));
  CU_ASSERT(!kvs_layout_equal(&l, &l8));
  kvs_layout b = l;
  b.n_layers = 0;
  CU_ASSERT_EQUAL(kvs_layout_validate(&b), KVS_ELAYOUT);
  b = l, b.dtype = 9;
  CU_ASSERT_EQUAL(kvs_layout_validate(&b), KVS_ELAYOUT);
  b = l, b.rope_dims = 65;
  CU_ASSERT_EQUAL(kvs_layout_validate(&b), KVS_ELAYOUT);
  b = l, b.rope_theta = NAN;
  CU_ASSERT_EQUAL(kvs_layout_validate(&b), KVS_ELAYOUT);
  b = l, b.head_dim = KVS_MAX_HEAD_DIM + 1;
  CU_ASSERT_EQUAL(kvs_layout_validate(&b), KVS_ELAYOUT);
  CU_ASSERT_EQUAL(kvs_layout_validate(NULL), KVS_EINVAL);
}

static void test_half_exhaustive(void) {
  /* every finite f16 survives f16 -> f32 -> f16 and matches the compiler's _Float16 */
  int bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = kvs_f16_to_f32((kvs_f16)h);
    _Float16 ref;
    memcpy(&ref, &h, 2);
    if (isnan(f)) {
      bad += !isnan((float)ref);
      bad += !isnan(kvs_f16_to_f32(kvs_f32_to_f16(f)));
      continue;
    }
    bad += f != (float)ref;
    bad += kvs_f32_to_f16(f) != (kvs_f16)h;
  }
  CU_ASSERT_EQUAL(bad, 0);
}

static void test_half_rounding(void) {
  unsigned long long s = 7;
  int bad = 0;
  for (int i = 0; i < 2000000; i++) {
    uint32_t u = (uint32_t)kvs_test_rand(&s);
    float f;
    memcpy(&f, &u, 4);
    if (isnan(f)) continue;
    _Float16 r = (_Float16)f;
    uint16_t rb;
    memcpy(&rb, &r, 2);
    bad += kvs_f32_to_f16(f) != rb;
  }
  CU_ASSERT_EQUAL(bad, 0);
  /* bf16: round to nearest even, exact for representable values */
  CU_ASSERT_EQUAL(kvs_f32_to_bf16(1.0f), 0x3f80);
  CU_ASSERT_EQUAL(kvs_bf16_to_f32(0x3f80), 1.0f);
  CU_ASSERT_EQUAL(kvs_f32_to_bf16(kvs__bits_f32(0x3f808000u)), 0x3f80); /* tie -> even */
  CU_ASSERT_EQUAL(kvs_f32_to_bf16(kvs__bits_f32(0x3f818000u)), 0x3f82); /* tie -> even */
  CU_ASSERT_EQUAL(kvs_f32_to_bf16(kvs__bits_f32(0x3f808001u)), 0x3f81);
  CU_ASSERT(isnan(kvs_bf16_to_f32(kvs_f32_to_bf16(NAN))));
  CU_ASSERT(isinf(kvs_bf16_to_f32(kvs_f32_to_bf16(INFINITY))));
}

/* on_piece of kvs_checksum64_copy: pieces arrive in order, end to end */
static void count_piece(void *arg, size_t off, size_t len) {
  size_t *seen = arg;
  CU_ASSERT_EQUAL(off, *seen);
  CU_ASSERT(len > 0);
  *seen += len;
}

static void test_hash_and_hex(void) {
  kvs_hash128 a = kvs_hash128_buf("abc", 3), b = kvs_hash128_buf("abd", 3);
  CU_ASSERT(!kvs_hash128_equal(&a, &b));
  char hex[33];
  kvs_hash128_hex(&a, hex);
  CU_ASSERT_EQUAL(strlen(hex), 32);
  kvs_hash128 c;
  CU_ASSERT_EQUAL(kvs_hash128_from_hex(hex, &c), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(&a, &c));
  CU_ASSERT_EQUAL(kvs_hash128_from_hex("zz", &c), KVS_EINVAL);
  hex[31] = 'g';
  CU_ASSERT_EQUAL(kvs_hash128_from_hex(hex, &c), KVS_EINVAL);
  /* streaming equals one-shot across odd split points */
  static uint8_t big[100000];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (uint8_t)(i * 31 + 7);
  kvs_hasher *h = kvs_hasher_create();
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  kvs_hasher_update(h, big, 777);
  kvs_hasher_update(h, big + 777, sizeof big - 777);
  kvs_hash128 s = kvs_hasher_digest(h), o = kvs_hash128_buf(big, sizeof big);
  CU_ASSERT(kvs_hash128_equal(&s, &o));
  kvs_hasher_free(h);
  kvs_hasher_free(NULL);
  CU_ASSERT_NOT_EQUAL(kvs_checksum64(big, 1000), kvs_checksum64(big, 999));
  /* kvs_checksum64 (its AVX2 build where the CPU has AVX2: core/hash_avx2.c)
   * is XXH3-64 as xxHash's portable build computes it (this file's inline
   * copy, compiled without AVX2), across every length class of XXH3 */
  CU_ASSERT_EQUAL(kvs_checksum64("", 0), 0x2D06800538D394C2ull); /* XXH3-64 of nothing */
  const size_t lens[] = {1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 4096, 99999};
  for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
    for (size_t off = 0; off < 3; off++)
      CU_ASSERT_EQUAL(kvs_checksum64(big + off, lens[i] - (off && lens[i] > 2 ? off : 0)),
                      XXH3_64bits(big + off, lens[i] - (off && lens[i] > 2 ? off : 0)));
  uint8_t *huge = malloc((1u << 20) + 7);
  CU_ASSERT_PTR_NOT_NULL_FATAL(huge);
  for (size_t i = 0; i < (1u << 20) + 7; i++)
    huge[i] = (uint8_t)(i * 131 + (i >> 9));
  CU_ASSERT_EQUAL(kvs_checksum64(huge, (1u << 20) + 7), XXH3_64bits(huge, (1u << 20) + 7));
  free(huge);
  /* copy + checksum in pieces: the same checksum, the same bytes, every piece told */
  static uint8_t dst[100000];
  const size_t ns[] = {0, 1, 4095, 65536, 99999}, ps[] = {0, 1000, 4096, 65536};
  for (size_t ia = 0; ia < 5; ia++)
    for (size_t ib = 0; ib < 4; ib++) {
      memset(dst, 0xEE, sizeof dst);
      size_t seen = 0;
      uint64_t sum = kvs_checksum64_copy(dst, big, ns[ia], ps[ib], count_piece, &seen);
      CU_ASSERT_EQUAL(sum, kvs_checksum64(big, ns[ia]));
      CU_ASSERT(memcmp(dst, big, ns[ia]) == 0);
      CU_ASSERT_EQUAL(seen, ns[ia]);
      if (ns[ia] < sizeof dst) CU_ASSERT_EQUAL(dst[ns[ia]], 0xEE);
    }
}

static void test_model_id(void) {
  kvs_model_desc d = {.arch = "llama",
                      .layout = smol(),
                      .n_embd = 576,
                      .n_heads = 9,
                      .n_ff = 1536,
                      .n_vocab = 49152,
                      .norm_eps = 1e-5f};
  d.weights = kvs_hash128_buf("weights", 7);
  kvs_model_id a, b;
  CU_ASSERT_EQUAL(kvs_model_id_compute(&d, &a), KVS_OK);
  CU_ASSERT_EQUAL(kvs_model_id_compute(&d, &b), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(&a, &b));
  /* each input changes the id */
  kvs_model_desc e = d;
  e.layout.rope_theta = 10000.0f;
  CU_ASSERT_EQUAL(kvs_model_id_compute(&e, &b), KVS_OK);
  CU_ASSERT(!kvs_hash128_equal(&a, &b));
  e = d, e.weights.b[15] ^= 1;
  kvs_model_id_compute(&e, &b);
  CU_ASSERT(!kvs_hash128_equal(&a, &b));
  e = d, e.arch = "llamb";
  kvs_model_id_compute(&e, &b);
  CU_ASSERT(!kvs_hash128_equal(&a, &b));
  e = d, e.layout.dtype = KVS_DTYPE_BF16;
  kvs_model_id_compute(&e, &b);
  CU_ASSERT(!kvs_hash128_equal(&a, &b));
  e = d, e.layout.n_layers = 0;
  CU_ASSERT_EQUAL(kvs_model_id_compute(&e, &b), KVS_ELAYOUT);
}

static void test_keys(void) {
  kvs_model_id m = kvs_hash128_buf("m", 1), m2 = kvs_hash128_buf("m2", 2);
  int32_t t[4] = {1, 2, 3, 4}, u[4] = {1, 2, 3, 5};
  kvs_key c1 = kvs_key_content(&m, t, 4), c2 = kvs_key_content(&m, u, 4);
  kvs_key c3 = kvs_key_content(&m2, t, 4), c4 = kvs_key_content(&m, t, 3);
  CU_ASSERT(!kvs_hash128_equal(&c1, &c2));
  CU_ASSERT(!kvs_hash128_equal(&c1, &c3));
  CU_ASSERT(!kvs_hash128_equal(&c1, &c4));
  /* prefix keys chain: same tokens under different parents differ, and differ from content keys */
  kvs_key p1 = kvs_key_prefix(&m, NULL, t, 4);
  kvs_key p2 = kvs_key_prefix(&m, &p1, t, 4);
  kvs_key p2b = kvs_key_prefix(&m, &c2, t, 4);
  kvs_key zero = {{0}};
  kvs_key p1z = kvs_key_prefix(&m, &zero, t, 4);
  CU_ASSERT(kvs_hash128_equal(&p1, &p1z));
  CU_ASSERT(!kvs_hash128_equal(&p1, &c1));
  CU_ASSERT(!kvs_hash128_equal(&p2, &p2b));
  /* keys are stored: their bytes must never change between versions */
  kvs_model_id z = {{0}};
  kvs_key g = kvs_key_content(&z, t, 4);
  char hex[33];
  kvs_hash128_hex(&g, hex);
  FILE *f = fopen(kvs_test_src_path("tests/core/golden_content_key.txt"), "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  char want[64] = {0};
  CU_ASSERT(fscanf(f, "%63s", want) == 1);
  fclose(f);
  CU_ASSERT_STRING_EQUAL(hex, want);
}

/* core/kvs_le.h: byte order, unaligned access, round trips. */
static void test_le(void) {
  uint8_t b[11] = {0};
  kvs__wr16(b + 1, 0x0102);
  CU_ASSERT(b[1] == 0x02 && b[2] == 0x01);
  CU_ASSERT_EQUAL(kvs__rd16(b + 1), 0x0102);
  kvs__wr32(b + 1, 0x01020304u);
  CU_ASSERT(b[1] == 0x04 && b[2] == 0x03 && b[3] == 0x02 && b[4] == 0x01);
  CU_ASSERT_EQUAL(kvs__rd32(b + 1), 0x01020304u);
  kvs__wr64(b + 3, 0x0102030405060708ull);
  CU_ASSERT(b[3] == 0x08 && b[10] == 0x01 && b[2] == 0x03);
  CU_ASSERT_EQUAL(kvs__rd64(b + 3), 0x0102030405060708ull);
  CU_ASSERT_EQUAL(kvs__rd32(b + 3), 0x05060708u);
  CU_ASSERT_EQUAL(kvs_wire_rd64(b + 3, 0), 0x0102030405060708ull);
  kvs__wr32(b, 0xFFFFFFFFu);
  CU_ASSERT_EQUAL(kvs__rd32(b), 0xFFFFFFFFu);
  CU_ASSERT_EQUAL(kvs_wire_rd32(b, 0), 0xFFFFFFFFu);
}

/* KVS_WIRE_OP_MAP: names, the client's retry policy and the data plane's
 * fast path as they were hand-written before the map (session 6). */
static void test_wire_op_map(void) {
  static const char *names[] = {"?",       "PING",        "PUT",        "GET",      "LOOKUP",
                                "EXISTS",  "DELETE",      "PIN",        "UNPIN",    "TTL",
                                "STATS",   "LIST",        "EXPORT",     "IMPORT",   "LEASE",
                                "RELEASE", "PUT_RESERVE", "PUT_COMMIT", "PUT_ABORT"};
  static const int idem[] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 1};
  static const int fast[] = {0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1};
  CU_ASSERT_EQUAL_FATAL(KVS__OP_MAX, 18);
  for (unsigned op = 0; op <= KVS__OP_MAX; op++) {
    CU_ASSERT_STRING_EQUAL(kvs_wire_op_name((uint16_t)op), names[op]);
    CU_ASSERT_EQUAL(kvs_wire_op_idempotent((uint16_t)op), idem[op]);
    CU_ASSERT_EQUAL(kvs_wire_op_fast((uint16_t)op), fast[op]);
  }
  CU_ASSERT_STRING_EQUAL(kvs_wire_op_name(KVS__OP_MAX + 1), "?");
  CU_ASSERT_EQUAL(kvs_wire_op_idempotent(KVS__OP_MAX + 1), 0);
  CU_ASSERT_EQUAL(kvs_wire_op_fast(0xFFFF), 0);
  CU_ASSERT_EQUAL(KVS_OP_LEASE, 14);
  CU_ASSERT_EQUAL(KVS_OP_RELEASE, 15);
  CU_ASSERT_EQUAL(KVS_OP_PUT_RESERVE, 16); /* the shared-memory put (session 8) */
  CU_ASSERT_EQUAL(KVS_OP_PUT_ABORT, 18);

  /* the named header offsets address the fields kvs_wire_hdr_encode writes */
  kvs_wire_hdr h;
  uint8_t b[KVS_WIRE_HDR_SIZE];
  CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_init(&h, KVS_OP_PUT, 0x1122334455667788ull, "ten", "tok", 3),
                        KVS_OK);
  h.payload_len = 77;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_encode(&h, b), KVS_OK);
  CU_ASSERT_EQUAL(kvs__rd32(b + KVS_WIRE_OFF_MAGIC), KVS_WIRE_MAGIC);
  CU_ASSERT_EQUAL(kvs__rd16(b + KVS_WIRE_OFF_VERSION), KVS_WIRE_VERSION);
  CU_ASSERT_EQUAL(kvs_wire_hdr_op(b), KVS_OP_PUT);
  CU_ASSERT_EQUAL(kvs_wire_hdr_req_id(b), 0x1122334455667788ull);
  CU_ASSERT_EQUAL(kvs_wire_hdr_status(b), 0);
  CU_ASSERT_EQUAL(kvs__rd32(b + KVS_WIRE_OFF_PAYLOAD_LEN), 77);
  CU_ASSERT(b[KVS_WIRE_OFF_TENANT_LEN] == 3 && b[KVS_WIRE_OFF_TOKEN_LEN] == 3);
  CU_ASSERT(memcmp(b + KVS_WIRE_OFF_TENANT, "ten", 3) == 0 &&
            memcmp(b + KVS_WIRE_OFF_TOKEN, "tok", 3) == 0);
  /* flags added in place: the same bytes as encoding them */
  kvs_wire_hdr_add_flags(b, KVS_WIRE_F_SYNC);
  kvs_wire_hdr_add_flags(b, KVS_WIRE_F_NX);
  uint8_t want[KVS_WIRE_HDR_SIZE];
  h.flags = KVS_WIRE_F_SYNC | KVS_WIRE_F_NX;
  CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_encode(&h, want), KVS_OK);
  CU_ASSERT(memcmp(b, want, sizeof b) == 0);
  kvs_wire_hdr d;
  uint8_t frame[KVS_WIRE_HDR_SIZE + 77] = {0};
  memcpy(frame, b, sizeof b);
  CU_ASSERT_EQUAL_FATAL(kvs_wire_hdr_decode(frame, sizeof frame, &d), KVS_OK);
  CU_ASSERT_EQUAL(d.flags, KVS_WIRE_F_SYNC | KVS_WIRE_F_NX);
}

static void test_hostport(void) {
  char h[16] = "untouched";
  int port = -1;
  CU_ASSERT_EQUAL(kvs_hostport_split("127.0.0.1:8080", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "127.0.0.1");
  CU_ASSERT_EQUAL(port, 8080);
  CU_ASSERT_EQUAL(kvs_hostport_split("[::1]:65535", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "::1");
  CU_ASSERT_EQUAL(port, 65535);
  CU_ASSERT_EQUAL(kvs_hostport_split(":1", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "");
  CU_ASSERT_EQUAL(port, 1);
  CU_ASSERT_EQUAL(kvs_hostport_split("[::]:9", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "::");
  CU_ASSERT_EQUAL(kvs_hostport_split("localhost:80", NULL, 0, NULL), KVS_OK);
  strcpy(h, "untouched");
  port = -1;
  /* bad port */
  CU_ASSERT_EQUAL(kvs_hostport_split("h:0", h, sizeof h, &port), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_hostport_split("h:65536", h, sizeof h, &port), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_hostport_split("h:1234567", h, sizeof h, &port), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_hostport_split("h:+80", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("h:80x", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("h:", h, sizeof h, &port), KVS_EINVAL);
  /* no port */
  CU_ASSERT_EQUAL(kvs_hostport_split("h", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("[::1]", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split(NULL, h, sizeof h, &port), KVS_EINVAL);
  /* IPv6 written wrong */
  CU_ASSERT_EQUAL(kvs_hostport_split("::1:80", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("[::1]80", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("[::1:80", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_hostport_split("a]:80", h, sizeof h, &port), KVS_EINVAL);
  /* too long for the caller's buffer */
  CU_ASSERT_EQUAL(kvs_hostport_split("0123456789abcdef:80", h, sizeof h, &port), KVS_ERANGE);
  CU_ASSERT_STRING_EQUAL(h, "untouched");
  CU_ASSERT_EQUAL(port, -1);
  /* URLs */
  CU_ASSERT_EQUAL(kvs_url_hostport("tcp+stream://[::1]:7001", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "::1");
  CU_ASSERT_EQUAL(port, 7001);
  CU_ASSERT_EQUAL(kvs_url_hostport("http://node1:80/metrics", h, sizeof h, &port), KVS_OK);
  CU_ASSERT_STRING_EQUAL(h, "node1");
  CU_ASSERT_EQUAL(port, 80);
  CU_ASSERT_EQUAL(kvs_url_hostport("node1:80", h, sizeof h, &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_url_hostport("tcp://node1", h, sizeof h, &port), KVS_EINVAL);
}

int main(void) {
  static const kvs_test_case cases[] = {{"error table", test_err_table},
                                        {"logging", test_log},
                                        {"layout", test_layout},
                                        {"fp16 exhaustive", test_half_exhaustive},
                                        {"fp16/bf16 rounding", test_half_rounding},
                                        {"hash128 + hex", test_hash_and_hex},
                                        {"model id", test_model_id},
                                        {"chunk keys", test_keys},
                                        {"little-endian helpers", test_le},
                                        {"wire op map + header offsets", test_wire_op_map},
                                        {"host:port splitting", test_hostport},
                                        {NULL, NULL}};
  return kvs_test_run("core", cases);
}
