/* stream.c - kvstashd's byte-stream data plane: GET (and PING) on plain TCP
 * or Unix-domain connections (listen = tcp+stream://host:port or
 * ipc+stream:///path), beside the nng REQ/REP data plane of dataplane.c.
 *
 * Why: a GET answer over REQ/REP is an nng message, which nng 1.5 allocates
 * zero-filled and which the value is copied into before the kernel copies it
 * again. Here the answer is a gather list written with one sendmsg: the answer's
 * head (frame header + GET head + meta, a few hundred bytes in a
 * per-connection buffer) and the value's bytes where the RAM tier holds them.
 * The request keeps its ref on the value (kvs__vref) until sendmsg has handed
 * the last byte to the kernel (which copies it), so the bytes can be neither
 * evicted nor reused under the send.
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
 * Threads: one blocking thread per connection (read a request, answer it,
 * repeat; an entry on disk is read on that thread too) and one accepting
 * thread per listener. Plain sockets, not nng's stream API: its aio
 * completions crossed from the poller to a task thread two or three times
 * per request, which at one client cost more than the request itself
 * (bench/RESULTS.md, service). A connection that ends on its own closes its fd at
 * once and parks its thread on a list the accepting thread joins within 1 s. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kvs_net.h"
#include "svc_int.h"

#define KVS__STREAM_IDLE_MS       300000     /* an idle connection is closed after this */
#define KVS__STREAM_MAX_CONNS     1024       /* more are accepted and closed at once */
#define KVS__STREAM_STACK         (1u << 20) /* RocksDB reads (disk GETs) run on it too */
#define KVS__STREAM_DRAIN_SEND_MS 1000       /* a send's progress bound once the plane drains */

typedef struct sconn sconn;

typedef struct slisten {
  kvs__streamplane *p;
  int fd;
  pthread_t th;
  int started;
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* ipc: unlinked at stop */
} slisten;

struct kvs__streamplane {
  const kvs_svc_config *cfg; /* the service's, outlives the plane */
  kvs__store *st;
  kvs__metrics *met;
  slisten ls[KVS_SVC_MAX_LISTEN];
  int nl;
  pthread_mutex_t mu; /* guards conns, nconns, dead */
  sconn *conns;       /* live connections (their threads run) */
  sconn *dead;        /* ended on their own: to join and free */
  int nconns;
  atomic_int draining, closing, inflight;
};

struct sconn {
  kvs__streamplane *p;
  int fd;
  pthread_t th;
  uint8_t *buf; /* the request frame: header + payload, and what was read past it */
  size_t cap, have, want;
  uint64_t frame_deadline_ns, t0;
  kvs_wire_hdr h;
  kvs__vref v; /* the value being sent (has_v) */
  int has_v;
  uint8_t *head; /* the answer's head */
  size_t head_cap;
  struct iovec iov[2];
  int niov;
  int answered;    /* the handler left an answer in iov */
  int close_after; /* the framing is lost: close once the answer is out */
  sconn *prev, *next;
};

/* ------------------------------------------------------------ helpers */
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
/* The answer (c->iov: head, and the value when has_v) goes out on the
 * connection's own thread (conn_main), right after the handler returns. */
static void tx_start(sconn *c) {
  kvs__streamplane *p = c->p;
  int32_t st;
  memcpy(&st, c->head + 12, 4);
  KVS__INC(p->met, KVS_STAT_REQUESTS, 1);
  if (st != 0) KVS__INC(p->met, KVS_STAT_ERRORS, 1);
  c->answered = 1;
}

static void answer_err(sconn *c, uint16_t op, uint64_t id, kvs_err err, const char *detail) {
  char msg[KVS_WIRE_MAX_ERRMSG + 1];
  int n = snprintf(msg, sizeof msg, "%s%s%s", kvs_strerror(err), detail ? ": " : "",
                   detail ? detail : "");
  size_t len = n < 0 ? 0 : (size_t)n > KVS_WIRE_MAX_ERRMSG ? KVS_WIRE_MAX_ERRMSG : (size_t)n;
  if (!head_reserve(c, KVS_WIRE_HDR_SIZE + KVS_WIRE_MAX_ERRMSG)) { /* no memory: give up */
    c->close_after = 1;
    len = 0;
    if (!c->head) return; /* nothing can be sent: the connection closes */
  }
  hdr_answer(c->head, op, id, err, (uint32_t)len);
  memcpy(c->head + KVS_WIRE_HDR_SIZE, msg, len);
  c->iov[0] = (struct iovec){c->head, KVS_WIRE_HDR_SIZE + len};
  c->niov = 1;
  tx_start(c);
}

/* ---------------------------------------------------------------- GET */
/* On the connection's thread: an entry on disk (T1/T2) is read here too. */
static void do_get(sconn *c, const kvs_wire_req *r) {
  kvs__streamplane *p = c->p;
  const kvs_wire_get_req *g = &r->u.get;
  uint64_t id = r->hdr.req_id;
  char tenant[KVS_WIRE_TENANT_MAX + 1];
  kvs_wire_hdr_tenant(&r->hdr, tenant);
  kvs__vref v;
  kvs_wire_get_resp a;
  size_t head = 0;
  const char *why = NULL;
  kvs_err rc = kvs__get_prepare(p->st, tenant, g, 0, &v, &a, &head, &why);
  if (rc != KVS_OK) {
    answer_err(c, KVS_OP_GET, id, rc, why);
    return;
  }
  int with_meta = (g->flags & KVS_WIRE_GET_META) != 0;
  size_t w = 0;
  if ((uint64_t)head + a.byte_len > KVS_WIRE_MAX_PAYLOAD) {
    kvs__vref_release(&v);
    answer_err(c, KVS_OP_GET, id, KVS_ETOOBIG, "answer over 4 GiB: ask for fewer segments");
    return;
  }
  if (!head_reserve(c, KVS_WIRE_HDR_SIZE + head) ||
      kvs_wire_get_resp_encode_head(&a, with_meta ? &v.m : NULL, c->head + KVS_WIRE_HDR_SIZE, head,
                                    &w) != KVS_OK) {
    kvs__vref_release(&v);
    answer_err(c, KVS_OP_GET, id, KVS_ENOMEM, NULL);
    return;
  }
  hdr_answer(c->head, KVS_OP_GET, id, KVS_OK, (uint32_t)(head + a.byte_len));
  /* no copy of the value: the kernel reads it from the RAM tier's buffer,
   * which c->v keeps alive until the send is over */
  c->v = v;
  c->has_v = 1;
  c->iov[0] = (struct iovec){c->head, KVS_WIRE_HDR_SIZE + head};
  c->iov[1] = (struct iovec){v.buf->data + a.byte_off, (size_t)a.byte_len};
  c->niov = a.byte_len ? 2 : 1;
  KVS__INC(p->met, KVS_STAT_BYTES_OUT, a.byte_len);
  atomic_fetch_add_explicit(&p->met->bytes_out_tier[v.tier < KVS__MAX_TIER_ROWS ? v.tier : 0],
                            a.byte_len, memory_order_relaxed);
  tx_start(c);
}

/* A whole request frame is in c->buf. */
static void on_request(sconn *c) {
  kvs__streamplane *p = c->p;
  const kvs_wire_hdr *h = &c->h;
  c->t0 = kvs_now_ns();
  atomic_fetch_add(&p->inflight, 1);
  if (h->flags & KVS_WIRE_F_RESPONSE) {
    answer_err(c, h->op, h->req_id, KVS_EPROTO, "not a request");
    return;
  }
  if (!kvs__auth_ok(p->met, h)) { /* before any other work */
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
  if (p->cfg->n_quotas) { /* the tenant's request rate (quota) */
    char t[KVS_WIRE_TENANT_MAX + 1];
    kvs_wire_hdr_tenant(h, t);
    if (kvs__store_admit(p->st, t) != KVS_OK) {
      answer_err(c, h->op, h->req_id, KVS_EQUOTA, "tenant request rate");
      return;
    }
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
    c->iov[0] = (struct iovec){c->head, KVS_WIRE_HDR_SIZE};
    c->niov = 1;
    tx_start(c);
    return;
  case KVS_OP_GET: do_get(c, &r); return;
  default:
    answer_err(c, h->op, h->req_id, KVS_ENOTSUP,
               "a stream listener serves GET and PING; use the nng data plane");
    return;
  }
}

/* ------------------------------------------------------------ reading */
/* Waits until fd is readable (POLLIN) or writable, at most ms (< 0: no
 * limit). 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short ev, int ms) {
  struct pollfd pf = {fd, ev, 0};
  for (;;) {
    int r = poll(&pf, 1, ms);
    if (r >= 0) return r > 0 ? 1 : 0;
    if (errno != EINTR) return -1;
  }
}

static int ms_left(uint64_t deadline_ns) {
  uint64_t now = kvs_now_ns();
  return now >= deadline_ns ? 0 : (int)((deadline_ns - now) / 1000000 + 1);
}

/* Reads until c->have >= c->want, taking whatever else arrives (a client
 * that sends ahead: kept for the next frame). The first byte of a frame may
 * take KVS__STREAM_IDLE_MS, the rest must come by the frame's deadline.
 * 0 when there, -1 when the connection is to close (peer gone, idle or too
 * slow, or the plane closing). */
static int fill(sconn *c) {
  kvs__streamplane *p = c->p;
  while (c->have < c->want) {
    if (atomic_load(&p->closing)) return -1;
    int ms = c->have ? ms_left(c->frame_deadline_ns) : KVS__STREAM_IDLE_MS;
    int w = wait_fd(c->fd, POLLIN, ms);
    if (w <= 0) {
      if (w == 0 && c->have)
        KVS_LOGD("stream", "request not completed", "have=%zu err=\"%s\"", c->have, "timed out");
      return -1;
    }
    ssize_t n = read(c->fd, c->buf + c->have, c->cap - c->have);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      if (n < 0 && c->have)
        KVS_LOGD("stream", "request not completed", "have=%zu err=\"%s\"", c->have,
                 strerror(errno));
      return -1;
    }
    if (c->have == 0)
      c->frame_deadline_ns = kvs_now_ns() + (uint64_t)p->cfg->deadline_ms * 1000000ull;
    c->have += (size_t)n;
  }
  return 0;
}

/* The header is in c->buf: check it, bound the payload, make room for it.
 * 0 to read the payload, 1 when an error answer is ready instead. */
static int on_header(sconn *c) {
  kvs__streamplane *p = c->p;
  kvs_err rc = kvs_wire_hdr_decode_head(c->buf, &c->h);
  uint64_t id = kvs_wire_hdr_req_id(c->buf);
  if (rc != KVS_OK) {
    atomic_fetch_add_explicit(&p->met->bad_frames, 1, memory_order_relaxed);
    KVS_LOGD("stream", "bad frame header", "err=%s", kvs_errname(rc));
    c->close_after = 1; /* where the next frame starts is unknown */
    c->t0 = kvs_now_ns();
    atomic_fetch_add(&p->inflight, 1);
    c->h.op = KVS_OP_PING;
    answer_err(c, KVS_OP_PING, id, rc, "bad frame header");
    return 1;
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
    return 1;
  }
  size_t need = KVS_WIRE_HDR_SIZE + c->h.payload_len;
  if (need > c->cap) {
    uint8_t *b = realloc(c->buf, need);
    if (!b) {
      c->close_after = 1;
      c->t0 = kvs_now_ns();
      atomic_fetch_add(&p->inflight, 1);
      answer_err(c, c->h.op, c->h.req_id, KVS_ENOMEM, NULL);
      return 1;
    }
    c->buf = b;
    c->cap = need;
  }
  c->want = need;
  return 0;
}

/* ------------------------------------------------------------ sending */
/* Writes c->iov whole. It must make progress within request_deadline_ms,
 * and within KVS__STREAM_DRAIN_SEND_MS once the plane drains: a peer that
 * does not read would otherwise hold the stop for the whole deadline.
 * 0 sent, -1 not (the connection closes). */
static int send_all(sconn *c) {
  kvs__streamplane *p = c->p;
  struct iovec *iov = c->iov;
  int n = c->niov;
  uint64_t last = kvs_now_ns();
  while (n > 0) {
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    /* a gone peer: EPIPE, not SIGPIPE */
    ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        uint64_t lim =
            atomic_load(&p->draining) ? KVS__STREAM_DRAIN_SEND_MS : (uint64_t)p->cfg->deadline_ms;
        if (kvs_now_ns() - last >= lim * 1000000ull) {
          KVS_LOGD("stream", "answer not delivered", "err=\"%s\"", "no progress in time");
          return -1;
        }
        if (wait_fd(c->fd, POLLOUT, 100) < 0) return -1;
        continue;
      }
      if (errno != EPIPE && errno != ECONNRESET)
        KVS_LOGD("stream", "answer not delivered", "err=\"%s\"", strerror(errno));
      return -1;
    }
    last = kvs_now_ns();
    size_t d = (size_t)w;
    while (n > 0 && d >= iov->iov_len)
      d -= iov->iov_len, iov++, n--;
    if (n > 0) iov->iov_base = (uint8_t *)iov->iov_base + d, iov->iov_len -= d;
  }
  return 0;
}

/* ------------------------------------------------------ connections */
static void conn_free(sconn *c) {
  if (c->has_v) kvs__vref_release(&c->v);
  if (c->fd >= 0) close(c->fd);
  free(c->buf);
  free(c->head);
  free(c);
}

/* Joins and frees the connections that ended on their own. */
static void reap(kvs__streamplane *p) {
  pthread_mutex_lock(&p->mu);
  sconn *d = p->dead;
  p->dead = NULL;
  pthread_mutex_unlock(&p->mu);
  while (d) {
    sconn *n = d->next;
    pthread_join(d->th, NULL);
    conn_free(d);
    d = n;
  }
}

/* One connection: read a request, answer it, until the peer goes, the
 * framing is lost or the plane closes. */
static void *conn_main(void *arg) {
  sconn *c = arg;
  kvs__streamplane *p = c->p;
  for (;;) {
    /* the frame: what was read past the previous one comes first */
    size_t extra = c->have > c->want ? c->have - c->want : 0;
    if (extra) memmove(c->buf, c->buf + c->want, extra);
    c->have = extra;
    c->want = KVS_WIRE_HDR_SIZE;
    c->answered = 0;
    if (extra) c->frame_deadline_ns = kvs_now_ns() + (uint64_t)p->cfg->deadline_ms * 1000000ull;
    if (fill(c) != 0) break;
    if (on_header(c) == 0) {
      if (fill(c) != 0) break;
      on_request(c);
    }
    if (!c->answered) { /* no memory even for the error answer */
      atomic_fetch_sub(&p->inflight, 1);
      break;
    }
    int sent = send_all(c) == 0;
    /* the answer is out (or cannot be): the value may go */
    if (c->has_v) {
      kvs__vref_release(&c->v);
      c->has_v = 0;
    }
    uint64_t dt = kvs_now_ns() - c->t0;
    if (c->h.op >= 1 && c->h.op <= KVS__OP_MAX) kvs__hist_observe(&p->met->op_latency[c->h.op], dt);
    atomic_fetch_sub(&p->inflight, 1);
    if (!sent || c->close_after || atomic_load(&p->closing)) break;
  }
  /* unlink; stop owns the connections still listed once the plane closes */
  pthread_mutex_lock(&p->mu);
  if (!atomic_load(&p->closing)) {
    if (c->prev)
      c->prev->next = c->next;
    else
      p->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    p->nconns--;
    atomic_fetch_sub(&p->met->clients_stream, 1);
    c->prev = NULL;
    c->next = p->dead;
    p->dead = c;
    close(c->fd); /* now, not when the thread is joined: the peer is gone */
    c->fd = -1;
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

static void *accept_main(void *arg) {
  slisten *ls = arg;
  kvs__streamplane *p = ls->p;
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setstacksize(&at, KVS__STREAM_STACK);
  /* non-blocking: a connection gone between poll and accept costs no wait */
  (void)fcntl(ls->fd, F_SETFL, fcntl(ls->fd, F_GETFL) | O_NONBLOCK);
  while (!atomic_load(&p->closing)) {
    /* wakes at least once a second to join the threads of ended connections */
    int w = wait_fd(ls->fd, POLLIN, 1000);
    reap(p);
    if (w == 0) continue;
    int fd = accept4(ls->fd, NULL, NULL,
                     SOCK_CLOEXEC); /* the new fd blocks: O_NONBLOCK is not inherited */
    if (fd < 0) {
      if (atomic_load(&p->closing)) break;
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      KVS_LOGW("stream", "accept failed", "err=\"%s\"", strerror(errno));
      struct timespec ts = {0, 10000000}; /* e.g. out of descriptors: do not spin */
      nanosleep(&ts, NULL);
      continue;
    }
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails on ipc: fine */
    sconn *c = calloc(1, sizeof *c);
    int ok = c && (c->buf = malloc(4096)) != NULL;
    pthread_mutex_lock(&p->mu);
    if (ok && (p->nconns >= KVS__STREAM_MAX_CONNS || atomic_load(&p->closing))) ok = 0;
    if (ok) {
      c->p = p;
      c->fd = fd;
      c->cap = 4096;
      c->want = KVS_WIRE_HDR_SIZE;
      ok = pthread_create(&c->th, &at, conn_main, c) == 0;
    }
    if (ok) {
      c->next = p->conns;
      if (p->conns) p->conns->prev = c;
      p->conns = c;
      p->nconns++;
      atomic_fetch_add(&p->met->clients_stream, 1);
    }
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
      if (c) free(c->buf);
      free(c);
      close(fd);
      KVS_LOGW("stream", "connection refused", "why=%s", "limit, closing or no memory");
    }
  }
  pthread_attr_destroy(&at);
  return NULL;
}

/* ------------------------------------------------------- start / stop */
/* A listening socket for tcp+stream://host:port ("*" or no host: every
 * address; [v6] in brackets) or ipc+stream:///path (mode 0600; a stale
 * socket file left by a dead daemon is replaced, a live one is not). */
static int is_loopback(const struct sockaddr *a) {
  if (a->sa_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
  if (a->sa_family == AF_INET6) {
    const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(x) ||
           (IN6_IS_ADDR_V4MAPPED(x) && x->s6_addr[12] == 127); /* ::ffff:127.x.y.z */
  }
  return 0;
}

static kvs_err listen_on(const char *url, slisten *ls, int insecure) {
  const char *rest = url + 13;
  ls->fd = -1;
  if (!strncmp(url, "ipc", 3)) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(rest) >= sizeof a.sun_path) return KVS_EINVAL;
    memcpy(a.sun_path, rest, strlen(rest) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return KVS_ECONN;
    int b = bind(fd, (struct sockaddr *)&a, sizeof a);
    if (b != 0 && errno == EADDRINUSE) {
      int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      int live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0;
      if (probe >= 0) close(probe);
      struct stat sb;
      if (live || stat(a.sun_path, &sb) != 0 || !S_ISSOCK(sb.st_mode)) {
        close(fd); /* a live daemon, or not a socket file: never removed */
        return KVS_EBUSY;
      }
      unlink(a.sun_path); /* stale: its daemon is gone */
      b = bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (b != 0) {
      kvs_err rc = errno == EADDRINUSE ? KVS_EBUSY : KVS_ECONN;
      close(fd);
      return rc;
    }
    (void)chmod(a.sun_path, 0600);
    if (listen(fd, 128) != 0) {
      close(fd);
      return KVS_ECONN;
    }
    memcpy(ls->path, a.sun_path, sizeof ls->path);
    ls->fd = fd;
    return KVS_OK;
  }
  char host[256], port[16];
  int portn = 0;
  if (kvs_hostport_split(rest, host, sizeof host, &portn) != KVS_OK) return KVS_EINVAL;
  snprintf(port, sizeof port, "%d", portn);
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                  *ai = NULL;
  int any = !host[0] || !strcmp(host, "*");
  if (getaddrinfo(any ? NULL : host, port, &hints, &ai) != 0 || !ai) return KVS_EINVAL;
  kvs_err rc = KVS_ECONN;
  /* The byte stream is plaintext (the tenant token travels in the clear and
   * answers are not encrypted): off loopback only when asked for by name. */
  for (struct addrinfo *x = ai; x && !insecure; x = x->ai_next)
    if (!is_loopback(x->ai_addr)) {
      KVS_LOGE("stream", "tcp+stream:// is plaintext: refusing a non-loopback address",
               "url=%s hint=\"set stream_insecure=on to allow it, or use tls+tcp://\"", url);
      freeaddrinfo(ai);
      return KVS_EPERM;
    }
  for (struct addrinfo *x = ai; x && ls->fd < 0; x = x->ai_next) {
    int fd = socket(x->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(fd, x->ai_addr, x->ai_addrlen) == 0 && listen(fd, 128) == 0) {
      ls->fd = fd;
      rc = KVS_OK;
    } else {
      rc = errno == EADDRINUSE ? KVS_EBUSY : KVS_ECONN;
      close(fd);
    }
  }
  freeaddrinfo(ai);
  return rc;
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
  for (int i = 0; i < cfg->n_listen; i++) {
    const char *u = cfg->listen[i];
    if (!kvs__stream_url(u)) continue;
    slisten *ls = &p->ls[p->nl];
    ls->p = p;
    kvs_err rc = listen_on(u, ls, cfg->stream_insecure);
    if (rc != KVS_OK) {
      KVS_LOGE("stream", "cannot listen", "url=%s err=\"%s\"", u, kvs_strerror(rc));
      kvs__stream_stop(p);
      return rc == KVS_EBUSY || rc == KVS_EPERM ? rc : KVS_ECONN;
    }
    p->nl++;
    KVS_LOGI("stream", "listening", "url=%s", u);
  }
  for (int i = 0; i < p->nl; i++) {
    if (pthread_create(&p->ls[i].th, NULL, accept_main, &p->ls[i]) != 0) {
      kvs__stream_stop(p);
      return KVS_EINTERNAL;
    }
    p->ls[i].started = 1;
  }
  *out = p;
  return KVS_OK;
}

void kvs__stream_stop(kvs__streamplane *p) {
  if (!p) return;
  kvs__drain(&p->draining, &p->inflight); /* new requests: KVS_EBUSY; those in flight finish */
  atomic_store(&p->closing, 1);
  /* wake the accepts (shutdown makes a blocked accept return) and every
   * connection's read or write; from here on the list no longer changes */
  for (int i = 0; i < p->nl; i++)
    if (p->ls[i].fd >= 0) shutdown(p->ls[i].fd, SHUT_RDWR);
  for (int i = 0; i < p->nl; i++)
    if (p->ls[i].started) pthread_join(p->ls[i].th, NULL);
  pthread_mutex_lock(&p->mu);
  for (sconn *c = p->conns; c; c = c->next)
    shutdown(c->fd, SHUT_RDWR);
  pthread_mutex_unlock(&p->mu);
  while (p->conns) {
    sconn *c = p->conns;
    p->conns = c->next;
    pthread_join(c->th, NULL);
    conn_free(c);
  }
  reap(p);
  for (int i = 0; i < p->nl; i++) {
    if (p->ls[i].fd >= 0) close(p->ls[i].fd);
    if (p->ls[i].path[0]) unlink(p->ls[i].path);
  }
  pthread_mutex_destroy(&p->mu);
  free(p);
}
