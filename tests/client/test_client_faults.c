/* Replies the real kvstashd never sends, staged for every op of
 * KVS_WIRE_OP_MAP: the client's reply checks (wrong op, no RESPONSE flag, a
 * short frame, a server error with its message, a payload that does not
 * decode) and its retry policy (a KVS_EBUSY answer is retried exactly when
 * the op map says the op is idempotent).
 *
 * The staged server implements no op: it answers any request whose header
 * names an op of the map with the fault of the moment, so a new row in the
 * map is covered without touching this file. Everything an op means (store,
 * get, lookup, errors of a real entry) is tested against the real kvstashd
 * (client_ops, client_stream, client_python); this file replaced the
 * in-memory stand-in that used to duplicate those against a second server. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "client_int.h"
#include "kvs_test.h"
#include "kvs_wire.h"
#include "server.h"

enum {
  F_OK,           /* a well-formed empty answer */
  F_WRONG_OP,     /* the answer names another op */
  F_NOT_RESPONSE, /* the RESPONSE flag is missing */
  F_SHORT,        /* fewer bytes than a header */
  F_STATUS,       /* status KVS_ENOENT with a message */
  F_BUSY,         /* status KVS_EBUSY, every time */
  F_GARBAGE,      /* a well-formed header, a payload that decodes as nothing */
};

static const uint16_t k_ops[] = {
#define OP_ID(id, name, idem, fast, rq, rs) id,
    KVS_WIRE_OP_MAP(OP_ID)
#undef OP_ID
};
#define N_OPS (sizeof k_ops / sizeof k_ops[0])

typedef struct stage {
  nng_socket s;
  pthread_t th;
  atomic_int fault;
  atomic_int seen;    /* requests received */
  atomic_int last_op; /* op of the last request */
} stage;

static char url[128];

static void reply(stage *st, nng_msg *req) {
  kvs_wire_hdr h;
  int f = atomic_load(&st->fault);
  nng_msg *m = NULL;
  if (kvs_wire_hdr_decode(nng_msg_body(req), nng_msg_len(req), &h)) return; /* not ours */
  atomic_store(&st->last_op, h.op);
  if (nng_msg_alloc(&m, KVS_WIRE_HDR_SIZE)) return;
  const char *msg = f == F_STATUS ? "staged miss" : f == F_BUSY ? "staged busy" : "";
  static const uint8_t garbage[7] = {0xff, 0xfe, 0xfd, 0x01, 0x02, 0x03, 0x04};
  h.flags = f == F_NOT_RESPONSE ? 0 : KVS_WIRE_F_RESPONSE;
  h.status = f == F_STATUS ? KVS_ENOENT : f == F_BUSY ? KVS_EBUSY : 0;
  if (f == F_WRONG_OP) h.op = (uint16_t)(h.op % KVS__OP_MAX + 1);
  h.token_len = 0;
  memset(h.token, 0, sizeof h.token);
  size_t n = f == F_GARBAGE ? sizeof garbage : strlen(msg);
  h.payload_len = (uint32_t)n;
  kvs_wire_hdr_encode(&h, nng_msg_body(m));
  if (f == F_GARBAGE)
    nng_msg_append(m, garbage, n);
  else if (n)
    nng_msg_append(m, msg, n);
  if (f == F_SHORT) nng_msg_chop(m, nng_msg_len(m) - 16);
  if (nng_sendmsg(st->s, m, 0)) nng_msg_free(m);
}

static void *stage_run(void *arg) {
  stage *st = arg;
  for (int i = 0; i < 100000; i++) { /* bounded; the socket's close ends it first */
    nng_msg *m;
    if (nng_recvmsg(st->s, &m, 0)) return NULL;
    atomic_fetch_add(&st->seen, 1);
    reply(st, m);
    nng_msg_free(m);
  }
  return NULL;
}

static stage st;
static kvs_client *cl;

static int init(void) {
  snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
  memset(&st, 0, sizeof st);
  if (nng_rep0_open(&st.s) || nng_listen(st.s, url, NULL, 0) ||
      pthread_create(&st.th, NULL, stage_run, &st))
    return 1;
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.request_timeout_ms = 3000;
  o.max_retries = 2;
  o.retry_backoff_ms = 1;
  /* the stage speaks REQ/REP frames only: no lease, no byte stream */
  o.flags = KVS_CLIENT_NO_SHM | KVS_CLIENT_NO_STREAM;
  return kvs_client_create(&o, &cl) != KVS_OK;
}

static int clean(void) {
  kvs_client_free(cl);
  nng_close(st.s);
  pthread_join(st.th, NULL);
  return 0;
}

/* One request of op with an empty payload; the reply's error message in msg. */
static int call_op(uint16_t op, char *msg, size_t cap) {
  nng_msg *m = NULL;
  if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
  int rv = kvs__frame_roundtrip(cl, m, op, kvs_wire_op_idempotent(op), NULL);
  snprintf(msg, cap, "%s", kvs_client_errmsg(cl));
  return rv;
}

static void test_retry_policy(void) {
  atomic_store(&st.fault, F_BUSY);
  for (size_t i = 0; i < N_OPS; i++) {
    char msg[KVS__ERRMSG_LEN];
    atomic_store(&st.seen, 0);
    CU_ASSERT_EQUAL(call_op(k_ops[i], msg, sizeof msg), KVS_EBUSY);
    int want = kvs_wire_op_idempotent(k_ops[i]) ? 1 + (int)cl->o.max_retries : 1;
    CU_ASSERT_EQUAL(atomic_load(&st.seen), want);
    if (atomic_load(&st.seen) != want)
      fprintf(stderr, "op %s: %d attempts, want %d\n", kvs_wire_op_name(k_ops[i]),
              atomic_load(&st.seen), want);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "staged busy"));
  }
}

static void test_bad_headers(void) {
  for (size_t i = 0; i < N_OPS; i++) {
    uint16_t op = k_ops[i];
    char msg[KVS__ERRMSG_LEN];
    atomic_store(&st.fault, F_OK);
    CU_ASSERT_EQUAL(call_op(op, msg, sizeof msg), KVS_OK);
    CU_ASSERT_EQUAL(atomic_load(&st.last_op), op);
    atomic_store(&st.fault, F_WRONG_OP);
    CU_ASSERT_EQUAL(call_op(op, msg, sizeof msg), KVS_EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "is not an answer to"));
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, kvs_wire_op_name(op)));
    atomic_store(&st.fault, F_NOT_RESPONSE);
    CU_ASSERT_EQUAL(call_op(op, msg, sizeof msg), KVS_EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "is not an answer to"));
    atomic_store(&st.fault, F_SHORT);
    CU_ASSERT_EQUAL(call_op(op, msg, sizeof msg), KVS_EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "malformed reply"));
    atomic_store(&st.fault, F_STATUS);
    CU_ASSERT_EQUAL(call_op(op, msg, sizeof msg), KVS_ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "staged miss"));
  }
}

/* Answers that pass the header checks but whose payload does not decode:
 * every call that reads a payload says KVS_EPROTO, none crashes. */
static void test_bad_payloads(void) {
  atomic_store(&st.fault, F_GARBAGE);
  kvs_model_id model = kvs_hash128_buf("m", 1);
  int32_t tok[16] = {0};
  kvs_span sp = {0, 16};
  kvs_chunk ch;
  CU_ASSERT_EQUAL_FATAL(kvs_chunk_spans(&model, tok, 16, &sp, 1, &ch), KVS_OK);
  kvs_entry_info info;
  CU_ASSERT_EQUAL(kvs_exists(cl, &model, &ch.key, &info), KVS_EPROTO);
  uint64_t v[8];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_stats(cl, v, 8, &n), KVS_EPROTO);
  uint8_t status[1];
  CU_ASSERT_EQUAL(kvs_lookup(cl, &model, tok, 16, &ch, 1, KVS_LOOKUP_EACH, status, NULL),
                  KVS_EPROTO);
  kvs_layout lay = {.n_layers = 2,
                    .n_kv_heads = 2,
                    .head_dim = 8,
                    .dtype = KVS_DTYPE_F16,
                    .rope_type = KVS_ROPE_NORM,
                    .rope_dims = 8,
                    .rope_theta = 10000.0f,
                    .rope_freq_scale = 1.0f};
  uint64_t nb = kvs_get_bound(&lay, 16, NULL);
  void *out = malloc(nb);
  kvs_err grv = kvs_get(cl, &model, tok, &ch, &lay, out, nb, NULL);
  CU_ASSERT_EQUAL(grv, KVS_EPROTO);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(cl), "bad GET answer"));
  free(out);
  /* and the client is fine afterwards */
  atomic_store(&st.fault, F_OK);
  CU_ASSERT_EQUAL(kvs_ping(cl), KVS_OK);
}

static const kvs_test_case cases[] = {{"retry_policy", test_retry_policy},
                                      {"bad_headers", test_bad_headers},
                                      {"bad_payloads", test_bad_payloads},
                                      {NULL, NULL}};

int main(void) {
  int rv = kvs_test_run_fixture("client_faults", cases, init, clean);
  kvs_client_lib_fini();
  return rv;
}
