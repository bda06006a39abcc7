/* stream.c - kvstashd's byte-stream data plane: GET (and PING) on plain TCP
 * or IPC connections made with nng's stream API (listen = tcp+stream://... or
 * ipc+stream://...), beside the nng REQ/REP data plane of dataplane.c.
 *
 * Why: a GET answer over REQ/REP is an nng message, which nng 1.5 allocates
 * zero-filled and which the value is copied into before the kernel copies it
 * again. Here the answer is an iov: the answer's head (frame header + GET
 * head + meta, a few hundred bytes in a per-connection buffer) and the value's
 * bytes where the RAM tier holds them. The request keeps its ref on the value
 * (kvs__vref) until the kernel has taken the last byte, so the bytes can be
 * neither evicted nor reused under the send.
 *
 * Framing (docs/protocol.md "Byte streams"): the frames of kvs_wire.h back to
 * back; the header's payload_len is the length prefix. A connection carries
 * one request at a time. Every header is checked (kvs_wire_hdr_decode_head)
 * and its payload_len bounded (KVS_WIRE_STREAM_MAX_REQ, max_msg) before the
 * payload is read; a bad header or an oversized request gets its error answer
 * and the connection is closed (the framing can no longer be trusted); a bad
 * payload, a refused token or another op get their error answer and the
 * connection goes on. Once a frame has begun, the rest of it must arrive
 * within request_deadline_ms; an idle connection is closed after
 * KVS__STREAM_IDLE_MS; each send must progress within request_deadline_ms.
 *
 * Threads: everything runs in the aio callbacks (nng's task threads) except
 * GETs that need the disk (T1/T2) and the freeing of dead connections, which
 * go to this plane's own worker threads. A connection has at most one aio
 * operation outstanding (it reads a request, or writes its answer). */
#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc_int.h"

#define KVS__STREAM_IDLE_MS   300000 /* an idle connection is closed after this */
#define KVS__STREAM_MAX_CONNS 1024   /* more are accepted and closed at once */

typedef struct sconn sconn;

typedef struct sjob {
  sconn *c;      /* a deferred GET of c, or c to free when dead */
  int free_conn; /* 1: free c */
  struct sjob *next;
} sjob;

typedef struct slisten {
  kvs__streamplane *p;
  nng_stream_listener *l;
  nng_aio *acc;
} slisten;

struct kvs__streamplane {
  const kvs_svc_config *cfg; /* the service's, outlives the plane */
  kvs__store *st;
  kvs__metrics *met;
  slisten ls[KVS_SVC_MAX_LISTEN];
  int nl;
  pthread_mutex_t mu; /* guards conns, nconns */
  sconn *conns;
  int nconns;
  atomic_int draining, closing, inflight;
  pthread_mutex_t qmu; /* guards the job queue */
  pthread_cond_t qcv;
  sjob *qhead, *qtail;
  int qstop;
  pthread_t *w;
  int nw;
};

enum { RX_HDR, RX_PAYLOAD, WORK, TX };

struct sconn {
  kvs__streamplane *p;
  nng_stream *s;
  nng_aio *rx, *tx;
  int state;
  uint8_t *buf; /* the request frame: header + payload */
  size_t cap, have, want;
  uint64_t frame_deadline_ns, t0;
  kvs_wire_hdr h;
  kvs__vref v; /* the value being sent (has_v) */
  int has_v;
  uint8_t *head; /* the answer's head */
  size_t head_cap;
  nng_iov iov[2];
  unsigned niov;
  int close_after; /* the framing is lost: close once the answer is out */
  sconn *prev, *next;
};

/* ------------------------------------------------------------ helpers */
static void conn_close(sconn *c);

static void job_push(kvs__streamplane *p, sconn *c, int free_conn) {
  sjob *j = malloc(sizeof *j);
  if (!j) { /* cannot queue: the conn leaks rather than being freed under a callback */
    KVS_LOGE("stream", "no memory for a job", "%s", "");
    return;
  }
  *j = (sjob){c, free_conn, NULL};
  pthread_mutex_lock(&p->qmu);
  if (p->qtail)
    p->qtail->next = j;
  else
    p->qhead = j;
  p->qtail = j;
  pthread_cond_signal(&p->qcv);
  pthread_mutex_unlock(&p->qmu);
}

static int head_reserve(sconn *c, size_t n) {
  if (n <= c->head_cap) return 1;
  uint8_t *h = realloc(c->head, n);
  if (!h) return 0;
  c->head = h;
  c->head_cap = n;
  return 1;
}

static void hdr_answer(uint8_t out[KVS_WIRE_HDR_SIZE], uint16_t op, uint64_t req_id, int32_t status,
                       uint32_t payload) {
  kvs_wire_hdr h;
  memset(&h, 0, sizeof h);
  h.magic = KVS_WIRE_MAGIC;
  h.version = KVS_WIRE_VERSION;
  h.op = (op >= 1 && op <= KVS__OP_MAX) ? op : KVS_OP_PING;
  h.flags = KVS_WIRE_F_RESPONSE;
  h.status = status;
  h.req_id = req_id;
  h.payload_len = payload;
  kvs_wire_hdr_encode(&h, out);
}

/* ------------------------------------------------------------ sending */
static void tx_more(sconn *c) {
  kvs__streamplane *p = c->p;
  nng_aio_set_iov(c->tx, c->niov, c->iov); /* niov <= 2: cannot fail */
  nng_aio_set_timeout(c->tx, (nng_duration)p->cfg->deadline_ms);
  nng_stream_send(c->s, c->tx);
}

/* Sends what c->iov holds; the answer (head, and the value when has_v). */
static void tx_start(sconn *c) {
  kvs__streamplane *p = c->p;
  int32_t st;
  memcpy(&st, c->head + 12, 4);
  KVS__INC(p->met, KVS_STAT_REQUESTS, 1);
  if (st != 0) KVS__INC(p->met, KVS_STAT_ERRORS, 1);
  c->state = TX;
  tx_more(c);
}

static void answer_err(sconn *c, uint16_t op, uint64_t id, kvs_err err, const char *detail) {
  char msg[KVS_WIRE_MAX_ERRMSG + 1];
  int n = snprintf(msg, sizeof msg, "%s%s%s", kvs_strerror(err), detail ? ": " : "",
                   detail ? detail : "");
  size_t len = n < 0 ? 0 : (size_t)n > KVS_WIRE_MAX_ERRMSG ? KVS_WIRE_MAX_ERRMSG : (size_t)n;
  if (!head_reserve(c, KVS_WIRE_HDR_SIZE + KVS_WIRE_MAX_ERRMSG)) { /* no memory: give up */
    c->close_after = 1;
    len = 0;
    if (!c->head) {
      atomic_fetch_sub(&c->p->inflight, 1);
      conn_close(c);
      return;
    }
  }
  hdr_answer(c->head, op, id, err, (uint32_t)len);
  memcpy(c->head + KVS_WIRE_HDR_SIZE, msg, len);
  c->iov[0] = (nng_iov){c->head, KVS_WIRE_HDR_SIZE + len};
  c->niov = 1;
  tx_start(c);
}

/* ---------------------------------------------------------------- GET */
/* fast: on an nng thread, RAM tier only; returns 1 when the request must go
 * to a worker (the entry is on disk). Otherwise the answer is on its way. */
static int do_get(sconn *c, const kvs_wire_req *r, int fast) {
  kvs__streamplane *p = c->p;
  const kvs_wire_get_req *g = &r->u.get;
  uint64_t id = r->hdr.req_id;
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(&r->hdr, tenant);
  kvs__vref v;
  kvs_wire_get_resp a;
  size_t head = 0;
  const char *why = NULL;
  kvs_err rc = kvs__get_prepare(p->st, tenant, g, fast, &v, &a, &head, &why);
  if (rc == KVS_EAGAIN && fast) return 1;
  if (rc != KVS_OK) {
    answer_err(c, KVS_OP_GET, id, rc, why);
    return 0;
  }
  int with_meta = (g->flags & KVS_WIRE_GET_META) != 0;
  size_t w = 0;
  if ((uint64_t)head + a.byte_len > KVS_WIRE_MAX_PAYLOAD) {
    kvs__vref_release(&v);
    answer_err(c, KVS_OP_GET, id, KVS_ETOOBIG, "answer over 4 GiB: ask for fewer segments");
    return 0;
  }
  if (!head_reserve(c, KVS_WIRE_HDR_SIZE + head) ||
      kvs_wire_get_resp_encode_head(&a, with_meta ? &v.m : NULL, c->head + KVS_WIRE_HDR_SIZE, head,
                                    &w) != KVS_OK) {
    kvs__vref_release(&v);
    answer_err(c, KVS_OP_GET, id, KVS_ENOMEM, NULL);
    return 0;
  }
  hdr_answer(c->head, KVS_OP_GET, id, KVS_OK, (uint32_t)(head + a.byte_len));
  /* no copy of the value: the kernel reads it from the RAM tier's buffer,
   * which c->v keeps alive until the send is over */
  c->v = v;
  c->has_v = 1;
  c->iov[0] = (nng_iov){c->head, KVS_WIRE_HDR_SIZE + head};
  c->iov[1] = (nng_iov){v.buf->data + a.byte_off, (size_t)a.byte_len};
  c->niov = a.byte_len ? 2 : 1;
  KVS__INC(p->met, KVS_STAT_BYTES_OUT, a.byte_len);
  atomic_fetch_add_explicit(&p->met->bytes_out_tier[v.tier < 3 ? v.tier : 2], a.byte_len,
                            memory_order_relaxed);
  tx_start(c);
  return 0;
}

/* A whole request frame is in c->buf. */
static void on_request(sconn *c) {
  kvs__streamplane *p = c->p;
  const kvs_wire_hdr *h = &c->h;
  c->state = WORK;
  c->t0 = kvs_now_ns();
  atomic_fetch_add(&p->inflight, 1);
  if (h->flags & KVS_WIRE_F_RESPONSE) {
    answer_err(c, h->op, h->req_id, KVS_EPROTO, "not a request");
    return;
  }
  if (!kvs__auth_ok(p->cfg, h)) { /* before any other work */
    atomic_fetch_add_explicit(&p->met->auth_failures, 1, memory_order_relaxed);
    char t[KVS_WIRE_TENANT_MAX + 1];
    kvs_wire_hdr_tenant(h, t);
    KVS_LOGW("stream", "auth refused", "tenant=%s op=%s", t, kvs_wire_op_name(h->op));
    answer_err(c, h->op, h->req_id, KVS_EAUTH, NULL);
    return;
  }
  if (atomic_load(&p->draining)) {
    c->close_after = 1;
    answer_err(c, h->op, h->req_id, KVS_EBUSY, "draining");
    return;
  }
  kvs_wire_req r;
  kvs_err rc = kvs_wire_req_decode(c->buf, KVS_WIRE_HDR_SIZE + h->payload_len, &r);
  if (rc != KVS_OK) {
    atomic_fetch_add_explicit(&p->met->bad_frames, 1, memory_order_relaxed);
    answer_err(c, h->op, h->req_id, rc, "bad payload");
    return;
  }
  switch (h->op) {
  case KVS_OP_PING:
    if (!head_reserve(c, KVS_WIRE_HDR_SIZE)) {
      c->close_after = 1;
      answer_err(c, h->op, h->req_id, KVS_ENOMEM, NULL);
      return;
    }
    hdr_answer(c->head, KVS_OP_PING, h->req_id, KVS_OK, 0);
    c->iov[0] = (nng_iov){c->head, KVS_WIRE_HDR_SIZE};
    c->niov = 1;
    tx_start(c);
    return;
  case KVS_OP_GET:
    if (do_get(c, &r, 1)) job_push(p, c, 0); /* on disk: a worker reads it */
    return;
  default:
    answer_err(c, h->op, h->req_id, KVS_ENOTSUP,
               "a stream listener serves GET and PING; use the nng data plane");
    return;
  }
}

/* ------------------------------------------------------------ reading */
static void rx_more(sconn *c) {
  kvs__streamplane *p = c->p;
  nng_iov iov = {c->buf + c->have, c->want - c->have};
  nng_aio_set_iov(c->rx, 1, &iov);
  nng_duration ms = KVS__STREAM_IDLE_MS;
  if (c->have > 0 || c->state == RX_PAYLOAD) { /* a frame has begun: its deadline */
    uint64_t now = kvs_now_ns();
    ms = now >= c->frame_deadline_ns ? 1
                                     : (nng_duration)((c->frame_deadline_ns - now) / 1000000 + 1);
  }
  (void)p;
  nng_aio_set_timeout(c->rx, ms);
  nng_stream_recv(c->s, c->rx);
}

static void rx_next_frame(sconn *c) {
  c->state = RX_HDR;
  c->have = 0;
  c->want = KVS_WIRE_HDR_SIZE;
  c->close_after = 0;
  rx_more(c);
}

/* The header is in: check it, bound the payload, then read it. */
static void on_header(sconn *c) {
  kvs__streamplane *p = c->p;
  kvs_err rc = kvs_wire_hdr_decode_head(c->buf, &c->h);
  uint64_t id = 0;
  memcpy(&id, c->buf + 16, 8);
  if (rc != KVS_OK) {
    atomic_fetch_add_explicit(&p->met->bad_frames, 1, memory_order_relaxed);
    KVS_LOGD("stream", "bad frame header", "err=%s", kvs_errname(rc));
    c->close_after = 1; /* where the next frame starts is unknown */
    c->t0 = kvs_now_ns();
    atomic_fetch_add(&p->inflight, 1);
    answer_err(c, KVS_OP_PING, id, rc, "bad frame header");
    return;
  }
  uint64_t limit = KVS_WIRE_STREAM_MAX_REQ;
  if (p->cfg->max_msg && p->cfg->max_msg - KVS_WIRE_HDR_SIZE < limit)
    limit = p->cfg->max_msg - KVS_WIRE_HDR_SIZE;
  if (c->h.payload_len > limit) { /* refused before any allocation */
    atomic_fetch_add_explicit(&p->met->bad_frames, 1, memory_order_relaxed);
    c->close_after = 1;
    c->t0 = kvs_now_ns();
    atomic_fetch_add(&p->inflight, 1);
    answer_err(c, c->h.op, c->h.req_id, KVS_ETOOBIG, "request over the stream limit");
    return;
  }
  size_t need = KVS_WIRE_HDR_SIZE + c->h.payload_len;
  if (need > c->cap) {
    uint8_t *b = realloc(c->buf, need);
    if (!b) {
      c->close_after = 1;
      c->t0 = kvs_now_ns();
      atomic_fetch_add(&p->inflight, 1);
      answer_err(c, c->h.op, c->h.req_id, KVS_ENOMEM, NULL);
      return;
    }
    c->buf = b;
    c->cap = need;
  }
  c->want = need;
  if (c->have == c->want) {
    on_request(c);
    return;
  }
  c->state = RX_PAYLOAD;
  rx_more(c);
}

static void rx_cb(void *arg) {
  sconn *c = arg;
  kvs__streamplane *p = c->p;
  int rv = nng_aio_result(c->rx);
  if (rv != 0) {
    /* peer gone, idle or too slow, or we are closing */
    if (rv != NNG_ECLOSED && rv != NNG_ECANCELED && c->have > 0)
      KVS_LOGD("stream", "request not completed", "have=%zu err=\"%s\"", c->have, nng_strerror(rv));
    if (!atomic_load(&p->closing)) conn_close(c);
    return;
  }
  if (c->have == 0)
    c->frame_deadline_ns = kvs_now_ns() + (uint64_t)p->cfg->deadline_ms * 1000000ull;
  c->have += nng_aio_count(c->rx);
  if (c->have < c->want) {
    rx_more(c);
    return;
  }
  if (c->state == RX_HDR)
    on_header(c);
  else
    on_request(c);
}

static void tx_cb(void *arg) {
  sconn *c = arg;
  kvs__streamplane *p = c->p;
  int rv = nng_aio_result(c->tx);
  if (rv == 0) {
    size_t n = nng_aio_count(c->tx);
    unsigned k = 0;
    for (unsigned i = 0; i < c->niov; i++) { /* drop what went out */
      size_t d = n < c->iov[i].iov_len ? n : c->iov[i].iov_len;
      n -= d;
      c->iov[i].iov_buf = (uint8_t *)c->iov[i].iov_buf + d;
      c->iov[i].iov_len -= d;
      if (c->iov[i].iov_len) c->iov[k++] = c->iov[i];
    }
    c->niov = k;
    if (k > 0) {
      tx_more(c);
      return;
    }
  }
  /* the answer is out (or cannot be): the value may go */
  if (c->has_v) {
    kvs__vref_release(&c->v);
    c->has_v = 0;
  }
  uint64_t dt = kvs_now_ns() - c->t0;
  if (c->h.op >= 1 && c->h.op <= KVS__OP_MAX) kvs__hist_observe(&p->met->op_latency[c->h.op], dt);
  atomic_fetch_sub(&p->inflight, 1);
  if (rv != 0 || c->close_after) {
    if (rv != 0 && rv != NNG_ECLOSED)
      KVS_LOGD("stream", "answer not delivered", "err=\"%s\"", nng_strerror(rv));
    if (!atomic_load(&p->closing)) conn_close(c);
    return;
  }
  if (atomic_load(&p->closing)) return;
  rx_next_frame(c);
}

/* ------------------------------------------------------ connections */
static void conn_free(sconn *c) {
  nng_stream_close(c->s);
  if (c->rx) nng_aio_free(c->rx); /* waits for a callback still returning */
  if (c->tx) nng_aio_free(c->tx);
  if (c->has_v) kvs__vref_release(&c->v);
  nng_stream_free(c->s);
  free(c->buf);
  free(c->head);
  free(c);
}

/* From a callback or a worker: unlink, close, and let a worker free it
 * (an aio cannot be freed from its own callback). Once the plane is
 * closing, kvs__stream_stop owns every connection still listed: nothing is
 * done here then. The job is queued under mu, so stop (which takes mu after
 * setting closing) never misses one, and p outlives every queued job. */
static void conn_close(sconn *c) {
  kvs__streamplane *p = c->p;
  pthread_mutex_lock(&p->mu);
  if (atomic_load(&p->closing)) {
    pthread_mutex_unlock(&p->mu);
    return;
  }
  if (c->prev)
    c->prev->next = c->next;
  else
    p->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  p->nconns--;
  nng_stream_close(c->s);
  if (c->has_v) {
    kvs__vref_release(&c->v);
    c->has_v = 0;
  }
  job_push(p, c, 1);
  pthread_mutex_unlock(&p->mu);
}

static void accept_cb(void *arg) {
  slisten *ls = arg;
  kvs__streamplane *p = ls->p;
  nng_aio *aio = ls->acc;
  int rv = nng_aio_result(aio);
  if (rv != 0) {
    if (rv == NNG_ECLOSED || atomic_load(&p->closing)) return;
    KVS_LOGW("stream", "accept failed", "err=\"%s\"", nng_strerror(rv));
    nng_msleep(10); /* e.g. out of descriptors: do not spin */
    nng_stream_listener_accept(ls->l, aio);
    return;
  }
  nng_stream *s = nng_aio_get_output(aio, 0);
  sconn *c = calloc(1, sizeof *c);
  int ok = c && !atomic_load(&p->closing) && nng_aio_alloc(&c->rx, rx_cb, c) == 0 &&
           nng_aio_alloc(&c->tx, tx_cb, c) == 0 && (c->buf = malloc(4096)) != NULL;
  pthread_mutex_lock(&p->mu);
  if (ok && p->nconns >= KVS__STREAM_MAX_CONNS) ok = 0;
  if (ok) {
    c->p = p;
    c->s = s;
    c->cap = 4096;
    c->next = p->conns;
    if (p->conns) p->conns->prev = c;
    p->conns = c;
    p->nconns++;
  }
  pthread_mutex_unlock(&p->mu);
  if (!ok) {
    if (c) {
      if (c->rx) nng_aio_free(c->rx);
      if (c->tx) nng_aio_free(c->tx);
      free(c->buf);
      free(c);
    }
    nng_stream_free(s);
    KVS_LOGW("stream", "connection refused", "why=%s", "limit, closing or no memory");
  } else {
    (void)nng_stream_set_bool(s, NNG_OPT_TCP_NODELAY, true);
    rx_next_frame(c);
  }
  if (!atomic_load(&p->closing)) nng_stream_listener_accept(ls->l, aio);
}

static void *worker_main(void *arg) {
  kvs__streamplane *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->qmu);
    while (!p->qhead && !p->qstop)
      pthread_cond_wait(&p->qcv, &p->qmu);
    sjob *j = p->qhead;
    if (!j) {
      pthread_mutex_unlock(&p->qmu);
      break;
    }
    p->qhead = j->next;
    if (!p->qhead) p->qtail = NULL;
    pthread_mutex_unlock(&p->qmu);
    sconn *c = j->c;
    int free_conn = j->free_conn;
    free(j);
    if (free_conn) {
      conn_free(c);
      continue;
    }
    /* a GET of an entry on disk; c is not touched after its send started */
    kvs_wire_req r;
    if (kvs_wire_req_decode(c->buf, KVS_WIRE_HDR_SIZE + c->h.payload_len, &r) != KVS_OK) {
      answer_err(c, c->h.op, c->h.req_id, KVS_EINTERNAL, NULL); /* decoded before: cannot happen */
      continue;
    }
    uint64_t waited = kvs_now_ns() - c->t0;
    if (waited > (uint64_t)p->cfg->deadline_ms * 1000000ull) {
      atomic_fetch_add_explicit(&p->met->timeouts, 1, memory_order_relaxed);
      answer_err(c, KVS_OP_GET, r.hdr.req_id, KVS_ETIMEDOUT, "queued past the request deadline");
      continue;
    }
    (void)do_get(c, &r, 0);
  }
  return NULL;
}

/* ------------------------------------------------------- start / stop */
int kvs__stream_url(const char *url) {
  return !strncmp(url, "tcp+stream://", 13) || !strncmp(url, "ipc+stream://", 13);
}

kvs_err kvs__stream_start(const kvs_svc_config *cfg, kvs__store *st, kvs__metrics *met,
                          kvs__streamplane **out) {
  *out = NULL;
  int n = 0;
  for (int i = 0; i < cfg->n_listen; i++)
    n += kvs__stream_url(cfg->listen[i]);
  if (n == 0) return KVS_OK; /* no stream listener configured */
  kvs__streamplane *p = calloc(1, sizeof *p);
  if (!p) return KVS_ENOMEM;
  p->cfg = cfg;
  p->st = st;
  p->met = met;
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->qmu, NULL);
  pthread_cond_init(&p->qcv, NULL);
  p->nw = cfg->workers / 2 > 1 ? cfg->workers / 2 : 1;
  p->w = calloc((size_t)p->nw, sizeof *p->w);
  if (!p->w) {
    p->nw = 0;
    kvs__stream_stop(p);
    return KVS_ENOMEM;
  }
  for (int i = 0; i < p->nw; i++)
    if (pthread_create(&p->w[i], NULL, worker_main, p) != 0) {
      p->nw = i;
      kvs__stream_stop(p);
      return KVS_EINTERNAL;
    }
  for (int i = 0; i < cfg->n_listen; i++) {
    const char *u = cfg->listen[i];
    if (!kvs__stream_url(u)) continue;
    char nu[sizeof cfg->listen[0]]; /* tcp+stream://x -> tcp://x */
    snprintf(nu, sizeof nu, "%.3s%s", u, u + 10);
    nng_stream_listener *l = NULL;
    int rv = nng_stream_listener_alloc(&l, nu);
    if (rv == 0 && !strncmp(nu, "ipc://", 6))
      (void)nng_stream_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
    if (rv == 0) (void)nng_stream_listener_set_bool(l, NNG_OPT_TCP_NODELAY, true);
    if (rv == 0) rv = nng_stream_listener_listen(l);
    if (rv != 0) {
      KVS_LOGE("stream", "cannot listen", "url=%s err=\"%s\"", u, nng_strerror(rv));
      if (l) nng_stream_listener_free(l);
      kvs__stream_stop(p);
      return rv == NNG_EADDRINUSE ? KVS_EBUSY : KVS_ECONN;
    }
    p->ls[p->nl].p = p;
    p->ls[p->nl].l = l;
    p->nl++;
    KVS_LOGI("stream", "listening", "url=%s", u);
  }
  for (int i = 0; i < p->nl; i++) {
    if (nng_aio_alloc(&p->ls[i].acc, accept_cb, &p->ls[i]) != 0) {
      kvs__stream_stop(p);
      return KVS_ENOMEM;
    }
  }
  for (int i = 0; i < p->nl; i++)
    nng_stream_listener_accept(p->ls[i].l, p->ls[i].acc);
  *out = p;
  return KVS_OK;
}

void kvs__stream_stop(kvs__streamplane *p) {
  if (!p) return;
  /* drain: new requests get KVS_EBUSY; wait (at most 10 s) for those in flight */
  atomic_store(&p->draining, 1);
  for (int i = 0; i < 10000 && atomic_load(&p->inflight) > 0; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  atomic_store(&p->closing, 1);
  for (int i = 0; i < p->nl; i++)
    nng_stream_listener_close(p->ls[i].l);
  for (int i = 0; i < p->nl; i++)
    if (p->ls[i].acc) nng_aio_stop(p->ls[i].acc);
  /* close every connection still listed: from here on their callbacks (and
   * conn_close) leave them alone, and the list no longer changes (accepts
   * are stopped above) */
  pthread_mutex_lock(&p->mu);
  for (sconn *c = p->conns; c; c = c->next)
    nng_stream_close(c->s);
  pthread_mutex_unlock(&p->mu);
  for (sconn *c = p->conns; c; c = c->next) { /* outside mu: a callback may be waiting on it */
    nng_aio_stop(c->rx);
    nng_aio_stop(c->tx);
  }
  /* the workers finish their queue (deferred GETs end on closed streams,
   * dead connections are freed), then stop */
  pthread_mutex_lock(&p->qmu);
  p->qstop = 1;
  pthread_cond_broadcast(&p->qcv);
  pthread_mutex_unlock(&p->qmu);
  for (int i = 0; i < p->nw; i++)
    pthread_join(p->w[i], NULL);
  for (sjob *j = p->qhead; j;) { /* none left unless no worker ever ran */
    sjob *n = j->next;
    if (j->free_conn) conn_free(j->c);
    free(j);
    j = n;
  }
  while (p->conns) {
    sconn *c = p->conns;
    p->conns = c->next;
    conn_free(c);
  }
  for (int i = 0; i < p->nl; i++) {
    if (p->ls[i].acc) nng_aio_free(p->ls[i].acc);
    nng_stream_listener_free(p->ls[i].l);
  }
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->qmu);
  pthread_cond_destroy(&p->qcv);
  free(p->w);
  free(p);
}
