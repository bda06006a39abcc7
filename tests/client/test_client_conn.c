/* Chunk keys and the transport (pool, retries, deadlines, close) against a
 * small nng REP server run inside the test, so that failures the real
 * kvstashd never produces on purpose (busy replies, silence) can be staged. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "client_int.h"
#include "kvs_test.h"

/* ------------------------------------------------------------ chunking */
static kvs_model_id model(void) { return kvs_hash128_buf("test-model", 10); }

static void test_chunk_prefix(void) {
  kvs_model_id m = model();
  int32_t tok[1000];
  for (int i = 0; i < 1000; i++)
    tok[i] = i * 7 + 3;
  CU_ASSERT_EQUAL(kvs_chunk_prefix_count(1000, 256, 0), 3);
  CU_ASSERT_EQUAL(kvs_chunk_prefix_count(1000, 256, KVS_CHUNK_TAIL), 4);
  CU_ASSERT_EQUAL(kvs_chunk_prefix_count(1024, 256, KVS_CHUNK_TAIL), 4);
  kvs_chunk ch[4];
  size_t n = 0;
  CU_ASSERT_EQUAL(kvs_chunk_prefix(&m, tok, 1000, 256, KVS_CHUNK_TAIL, ch, 2, &n), KVS_ERANGE);
  CU_ASSERT_EQUAL(n, 4);
  CU_ASSERT_EQUAL(kvs_chunk_prefix(&m, tok, 1000, 256, KVS_CHUNK_TAIL, ch, 4, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, 4);
  kvs_key parent = kvs_key_prefix(&m, NULL, tok, 256);
  CU_ASSERT(kvs_hash128_equal(&ch[0].key, &parent));
  for (int i = 1; i < 4; i++) {
    size_t len = i == 3 ? 1000 - 768 : 256;
    kvs_key k = kvs_key_prefix(&m, &parent, tok + 256 * i, len);
    CU_ASSERT(kvs_hash128_equal(&ch[i].key, &k));
    CU_ASSERT_EQUAL(ch[i].start, 256u * i);
    CU_ASSERT_EQUAL(ch[i].n_tokens, len);
    CU_ASSERT_EQUAL(ch[i].kind, KVS_CHUNK_PREFIX);
    parent = k;
  }
  /* a different first chunk changes every later key */
  tok[5]++;
  kvs_chunk ch2[4];
  CU_ASSERT_EQUAL(kvs_chunk_prefix(&m, tok, 1000, 256, 0, ch2, 4, &n), KVS_OK);
  CU_ASSERT_EQUAL(n, 3);
  for (int i = 0; i < 3; i++)
    CU_ASSERT(!kvs_hash128_equal(&ch[i].key, &ch2[i].key));
  CU_ASSERT_EQUAL(kvs_chunk_prefix(&m, tok, 10, 0, 0, ch2, 4, &n), KVS_EINVAL);
}

static void test_chunk_spans(void) {
  kvs_model_id m = model();
  int32_t a[300], b[300];
  unsigned long long st = 5;
  for (int i = 0; i < 300; i++)
    a[i] = b[i] = (int32_t)(kvs_test_rand(&st) % 50000);
  /* the same passage at offsets 10 (in a) and 120 (in b) gets the same key */
  for (int i = 0; i < 64; i++)
    b[120 + i] = a[10 + i];
  kvs_span sa[2] = {{10, 64}, {100, 50}}, sb[1] = {{120, 64}};
  kvs_chunk ca[2], cb[1];
  CU_ASSERT_EQUAL(kvs_chunk_spans(&m, a, 300, sa, 2, ca), KVS_OK);
  CU_ASSERT_EQUAL(kvs_chunk_spans(&m, b, 300, sb, 1, cb), KVS_OK);
  CU_ASSERT(kvs_hash128_equal(&ca[0].key, &cb[0].key));
  CU_ASSERT(!kvs_hash128_equal(&ca[0].key, &ca[1].key));
  kvs_key k = kvs_key_content(&m, a + 100, 50);
  CU_ASSERT(kvs_hash128_equal(&ca[1].key, &k));
  CU_ASSERT_EQUAL(ca[1].kind, KVS_CHUNK_CONTENT);
  kvs_span bad[1] = {{290, 11}};
  CU_ASSERT_EQUAL(kvs_chunk_spans(&m, a, 300, bad, 1, cb), KVS_ERANGE);
  bad[0].n_tokens = 0;
  CU_ASSERT_EQUAL(kvs_chunk_spans(&m, a, 300, bad, 1, cb), KVS_ERANGE);
  /* another model, another key */
  kvs_model_id m2 = kvs_hash128_buf("other-model", 11);
  CU_ASSERT_EQUAL(kvs_chunk_spans(&m2, b, 300, sb, 1, cb), KVS_OK);
  CU_ASSERT(!kvs_hash128_equal(&ca[0].key, &cb[0].key));
}

/* ------------------------------------------------------- staged server */
/* Replies to each request with its body. A request whose body starts with
 * "busy" gets "BUSY" for the first `busy_left` requests; "mute" gets no reply. */
typedef struct fake {
  nng_socket s;
  pthread_t th;
  atomic_int busy_left;
  atomic_int seen;
  int stop;
} fake;

static char url[128];

static void *fake_run(void *arg) {
  fake *f = arg;
  for (;;) {
    nng_msg *m;
    if (nng_recvmsg(f->s, &m, 0)) return NULL;
    atomic_fetch_add(&f->seen, 1);
    if (nng_msg_len(m) >= 4 && !memcmp(nng_msg_body(m), "mute", 4)) {
      nng_msg_free(m);
      continue;
    }
    if (nng_msg_len(m) >= 4 && !memcmp(nng_msg_body(m), "busy", 4) &&
        atomic_fetch_sub(&f->busy_left, 1) > 0) {
      nng_msg_clear(m);
      nng_msg_append(m, "BUSY", 4);
    }
    if (nng_sendmsg(f->s, m, 0)) nng_msg_free(m);
  }
}

static void fake_start(fake *f) {
  memset(f, 0, sizeof *f);
  CU_ASSERT_FATAL(nng_rep0_open(&f->s) == 0);
  CU_ASSERT_FATAL(nng_listen(f->s, url, NULL, 0) == 0);
  CU_ASSERT_FATAL(pthread_create(&f->th, NULL, fake_run, f) == 0);
}

static void fake_stop(fake *f) {
  nng_close(f->s);
  pthread_join(f->th, NULL);
}

static int check_busy(kvs__call *call, nng_msg *rep) {
  if (nng_msg_len(rep) == 4 && !memcmp(nng_msg_body(rep), "BUSY", 4)) {
    snprintf(call->errmsg, sizeof call->errmsg, "server busy");
    return KVS_EBUSY;
  }
  return KVS_OK;
}

static kvs_client *connect_fake(uint32_t timeout_ms, uint32_t flags) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.tenant = "t1";
  o.request_timeout_ms = timeout_ms;
  o.connect_timeout_ms = 1000;
  o.flags = flags;
  kvs_client *c = NULL;
  kvs_err rv = kvs_client_create(&o, &c);
  CU_ASSERT_EQUAL(rv, KVS_OK);
  if (rv) {
    fprintf(stderr, "create: %s: %s\n", kvs_errname(rv), kvs_client_errmsg(c));
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

static nng_msg *msg_of(const char *s) {
  nng_msg *m;
  nng_msg_alloc(&m, 0);
  nng_msg_append(m, s, strlen(s));
  return m;
}

static void test_no_server(void) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.connect_timeout_ms = 200;
  kvs_client *c = NULL;
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_ECONN);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(c), url));
  kvs_client_free(c);
  o.url = "http://x";
  CU_ASSERT_EQUAL(kvs_client_create(&o, &c), KVS_EINVAL);
  CU_ASSERT_PTR_NULL(c);
  /* lazy: create succeeds, a call fails with ECONN at its deadline */
  o.url = url;
  o.flags = KVS_CLIENT_LAZY;
  o.request_timeout_ms = 150;
  CU_ASSERT_EQUAL_FATAL(kvs_client_create(&o, &c), KVS_OK);
  nng_msg *rep;
  CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("hello"), 1, NULL, &rep), KVS_ECONN);
  CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(c), "no connection"));
  kvs_client_free(c);
  kvs_client_free(NULL);
}

static void test_echo(void) {
  fake f;
  fake_start(&f);
  kvs_client *c = connect_fake(2000, 0);
  if (c) {
    CU_ASSERT(kvs_client_connected(c) >= 1);
    nng_msg *rep = NULL;
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("hello"), 1, NULL, &rep), KVS_OK);
    CU_ASSERT_FATAL(rep != NULL);
    CU_ASSERT_EQUAL(nng_msg_len(rep), 5);
    CU_ASSERT(!memcmp(nng_msg_body(rep), "hello", 5));
    nng_msg_free(rep);
    kvs_client_free(c);
  }
  fake_stop(&f);
}

typedef struct worker {
  kvs_client *c;
  int id, ok;
} worker;

static void *worker_run(void *arg) {
  worker *w = arg;
  for (int i = 0; i < 50; i++) {
    char buf[64];
    snprintf(buf, sizeof buf, "w%d-i%d", w->id, i);
    nng_msg *rep;
    if (kvs__roundtrip(w->c, msg_of(buf), 1, NULL, &rep)) continue;
    if (nng_msg_len(rep) == strlen(buf) && !memcmp(nng_msg_body(rep), buf, strlen(buf))) w->ok++;
    nng_msg_free(rep);
  }
  return NULL;
}

static void test_concurrent(void) {
  fake f;
  fake_start(&f);
  kvs_client *c = connect_fake(5000, 0);
  if (c) {
    worker w[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
      w[i] = (worker){c, i, 0};
      pthread_create(&th[i], NULL, worker_run, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
      pthread_join(th[i], NULL);
      CU_ASSERT_EQUAL(w[i].ok, 50);
    }
    kvs_client_free(c);
  }
  fake_stop(&f);
}

static void test_retry_busy(void) {
  fake f;
  fake_start(&f);
  kvs_client *c = connect_fake(3000, 0);
  if (c) {
    nng_msg *rep = NULL;
    atomic_store(&f.busy_left, 2);
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("busy-idem"), 1, check_busy, &rep), KVS_OK);
    CU_ASSERT_EQUAL(atomic_load(&f.seen), 3); /* two refusals, then the answer */
    if (rep) CU_ASSERT(!memcmp(nng_msg_body(rep), "busy-idem", 9));
    nng_msg_free(rep);
    /* not idempotent: the request reached the server, so no retry */
    atomic_store(&f.busy_left, 1);
    atomic_store(&f.seen, 0);
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("busy-put"), 0, check_busy, &rep), KVS_EBUSY);
    CU_ASSERT_EQUAL(atomic_load(&f.seen), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(kvs_client_errmsg(c), "busy"));
    /* more refusals than retries: the error comes back */
    atomic_store(&f.busy_left, 100);
    atomic_store(&f.seen, 0);
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("busy-idem"), 1, check_busy, &rep), KVS_EBUSY);
    CU_ASSERT_EQUAL(atomic_load(&f.seen), 1 + (int)c->o.max_retries);
    kvs_client_free(c);
  }
  fake_stop(&f);
}

static void test_deadline(void) {
  fake f;
  fake_start(&f);
  kvs_client *c = connect_fake(200, 0);
  if (c) {
    nng_msg *rep = NULL;
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("mute"), 1, NULL, &rep), KVS_ETIMEDOUT);
    CU_ASSERT_PTR_NULL(rep);
    /* the context is usable again after a timeout */
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("again"), 1, NULL, &rep), KVS_OK);
    nng_msg_free(rep);
    kvs_client_free(c);
  }
  fake_stop(&f);
}

static void *late_server(void *arg) {
  usleep(200 * 1000);
  fake_start(arg);
  return NULL;
}

static void test_lazy_late_server(void) {
  kvs_client *c = connect_fake(5000, KVS_CLIENT_LAZY);
  fake f;
  pthread_t th;
  pthread_create(&th, NULL, late_server, &f);
  if (c) {
    nng_msg *rep = NULL;
    CU_ASSERT_EQUAL(kvs__roundtrip(c, msg_of("early"), 1, NULL, &rep), KVS_OK);
    nng_msg_free(rep);
  }
  pthread_join(th, NULL);
  kvs_client_free(c);
  fake_stop(&f);
}

typedef struct closer {
  kvs_client *c;
  int rv;
} closer;

static void *mute_call(void *arg) {
  closer *k = arg;
  nng_msg *rep = NULL;
  k->rv = kvs__roundtrip(k->c, msg_of("mute"), 1, NULL, &rep);
  return NULL;
}

static void test_close_in_flight(void) {
  fake f;
  fake_start(&f);
  kvs_client *c = connect_fake(10000, 0);
  if (c) {
    closer k = {c, 1};
    pthread_t th;
    pthread_create(&th, NULL, mute_call, &k);
    while (atomic_load(&f.seen) == 0)
      usleep(1000);
    kvs_client_free(c);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(k.rv, KVS_ECLOSED);
  }
  fake_stop(&f);
}

static const kvs_test_case cases[] = {{"chunk_prefix", test_chunk_prefix},
                                      {"chunk_spans", test_chunk_spans},
                                      {"no_server", test_no_server},
                                      {"echo", test_echo},
                                      {"concurrent", test_concurrent},
                                      {"retry_busy", test_retry_busy},
                                      {"deadline", test_deadline},
                                      {"lazy_late_server", test_lazy_late_server},
                                      {"close_in_flight", test_close_in_flight},
                                      {NULL, NULL}};

int main(void) {
  snprintf(url, sizeof url, "ipc:///tmp/kvs-test-client-%d.sock", (int)getpid());
  int rv = kvs_test_run("client_conn", cases);
  unlink(url + 6);
  kvs_client_lib_fini();
  return rv;
}
