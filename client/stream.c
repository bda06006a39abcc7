/* stream.c - GETs over kvstashd's byte-stream listener (found by the
 * client at its first get, or named with kvs_client_stream): plain frames on
 * TCP / Unix-socket connections (docs/protocol.md "Byte streams"), beside the
 * REQ/REP pool of conn.c.
 *
 * A connection carries one request at a time and has a thread of its own
 * that writes the request and reads the answer with plain send()/read(),
 * as the daemon's side does: no nng aio in between, whose completion of
 * every partial read is a hop to a task thread (a 1 MiB answer arrives in
 * many pieces over loopback; each hop, on a busy box, a wait for a core).
 * Idle connections wait in a pool (dialed on demand, at most
 * KVS__SCONN_MAX). The answer is read without an nng message: header first
 * (checked, payload_len bounded by max_msg_bytes before anything is
 * allocated), then the payload straight into the connection's buffer, which
 * is kept and reused - the decoder reads the value from there, so a GET's
 * bytes are copied once, socket to buffer, as a RESP reader does. Whatever
 * stands in the way of the stream (no listener, a connection lost before the
 * answer began) sends the same request through the REQ/REP path instead, so
 * a get never fails for the stream's sake. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"
#include "kvs_net.h"
#include "kvs_wire.h"

#define KVS__SCONN_MAX 64
/* A blocked connection thread looks at the client's closing flag this often. */
#define KVS__SCONN_SLICE_MS 100

struct kvs__sconn {
  kvs_client *c;
  int fd;          /* -1 until dialed (and after a failure) */
  const char *url; /* the stream URL of the call it serves (kept alive until close) */
  pthread_t th;
  pthread_cond_t cv; /* under c->mu: a call was handed over, or the client closes */
  int has_call;
  int reused; /* came from the pool connected: a failure before any answer byte may be stale */
  uint8_t hdr[KVS_WIRE_HDR_SIZE];
  uint8_t *buf; /* the answer's payload; kept between calls */
  size_t cap;
  /* the call it serves */
  nng_msg *req;
  uint16_t op;
  uint64_t req_id, deadline_ns;
  kvs__call_check_fn check;
  kvs__get_done_fn done;
  void *arg;
  struct kvs__sconn *next;     /* idle list */
  struct kvs__sconn *all_next; /* every connection */
};

/* ------------------------------------------------------ the nng path */
typedef struct nng_get {
  kvs__get_done_fn done;
  void *arg;
} nng_get;

static void nng_get_done(kvs__call *call, void *arg) {
  nng_get g = *(nng_get *)arg;
  free(arg);
  const uint8_t *p = NULL;
  size_t n = 0;
  if (call->rv == KVS_OK) {
    p = (const uint8_t *)nng_msg_body(call->rep) + KVS_WIRE_HDR_SIZE;
    n = nng_msg_len(call->rep) - KVS_WIRE_HDR_SIZE;
  }
  char msg[KVS__ERRMSG_LEN];
  snprintf(msg, sizeof msg, "%s", call->errmsg);
  g.done(g.arg, call->rv, msg, p, n);
  kvs__call_free(call);
}

static void via_nng(kvs_client *c, nng_msg *req, uint64_t deadline_ns, kvs__call_check_fn check,
                    kvs__get_done_fn done, void *arg) {
  uint64_t now = kvs_now_ns();
  if (now + 1000000 >= deadline_ns) {
    nng_msg_free(req);
    done(arg, KVS_ETIMEDOUT, "the get's deadline passed", NULL, 0);
    return;
  }
  nng_get *g = malloc(sizeof *g);
  kvs__call *call =
      g ? kvs__call_new(c, req, kvs_wire_op_idempotent(KVS_OP_GET),
                        (uint32_t)((deadline_ns - now) / 1000000), check, nng_get_done, g)
        : NULL;
  if (!call) {
    if (!g) nng_msg_free(req);
    free(g);
    done(arg, KVS_ENOMEM, "no memory for a call", NULL, 0);
    return;
  }
  *g = (nng_get){done, arg};
  kvs__call_start(call);
}

/* ---------------------------------------------------------- streams */
static int closing(kvs_client *c) {
  pthread_mutex_lock(&c->mu);
  int v = c->closed;
  pthread_mutex_unlock(&c->mu);
  return v;
}

/* Waits until fd is ready for ev, in slices (the client may be closing):
 * 0 ready, KVS_ETIMEDOUT at the deadline, KVS_ECLOSED when closing. */
static int wait_fd(kvs__sconn *s, short ev, uint64_t deadline_ns) {
  for (;;) {
    if (closing(s->c)) return KVS_ECLOSED;
    uint64_t now = kvs_now_ns();
    if (now >= deadline_ns) return KVS_ETIMEDOUT;
    uint64_t left = (deadline_ns - now) / 1000000 + 1;
    struct pollfd pf = {s->fd, ev, 0};
    int r = poll(&pf, 1, (int)(left < KVS__SCONN_SLICE_MS ? left : KVS__SCONN_SLICE_MS));
    if (r > 0) return 0; /* ready, or an error the next send/read reports */
    if (r < 0 && errno != EINTR) return KVS_EIO;
  }
}

/* Writes or reads all n bytes. 0, or a kvs_err with *moved (bytes moved
 * before it) for the caller to tell "nothing of the answer yet". */
static int xfer(kvs__sconn *s, uint8_t *p, size_t n, int send_, size_t *moved) {
  size_t have = 0;
  *moved = 0;
  while (have < n) {
    ssize_t r =
        send_ ? send(s->fd, p + have, n - have, MSG_NOSIGNAL) : read(s->fd, p + have, n - have);
    if (r > 0) {
      have += (size_t)r;
      *moved = have;
      continue;
    }
    if (r == 0 && !send_) return KVS_ECONN; /* the daemon closed the connection */
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return KVS_ECONN;
    int w = wait_fd(s, send_ ? POLLOUT : POLLIN, s->deadline_ns);
    if (w) return w;
  }
  return 0;
}

/* host and port of "tcp+stream://HOST:PORT" ([v6] brackets dropped), or the
 * path of "ipc+stream:///path". -1 when malformed. */
static int stream_addr(const char *url, char *host, size_t hcap, char *port, size_t pcap) {
  const char *h = url + 13;
  if (!strncmp(url, "ipc+stream://", 13)) {
    if (!*h || strlen(h) >= hcap || strlen(h) >= sizeof((struct sockaddr_un *)0)->sun_path)
      return -1;
    snprintf(host, hcap, "%s", h);
    port[0] = 0;
    return 0;
  }
  if (strncmp(url, "tcp+stream://", 13)) return -1;
  int p = 0; /* core/kvs_net.h: the one HOST:PORT splitter */
  if (kvs_url_hostport(url, host, hcap, &p) != KVS_OK || !host[0]) return -1;
  int w = snprintf(port, pcap, "%d", p);
  return w > 0 && (size_t)w < pcap ? 0 : -1;
}

/* A connection to the stream URL (non-blocking, TCP_NODELAY), within the
 * client's connect timeout; -1 when there is none. */
static int dial(kvs__sconn *s) {
  kvs_client *c = s->c;
  char host[256], port[16];
  if (stream_addr(s->url, host, sizeof host, port, sizeof port)) return -1;
  uint64_t dl = kvs_now_ns() + (uint64_t)c->o.connect_timeout_ms * 1000000ull;
  if (dl > s->deadline_ns) dl = s->deadline_ns;
  if (!port[0]) { /* ipc */
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, host, strlen(host) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
      close(fd);
      return -1;
    }
    (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) return -1;
  int fd = -1;
  for (struct addrinfo *x = ai; x && fd < 0; x = x->ai_next) {
    fd = socket(x->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int rv = connect(fd, x->ai_addr, x->ai_addrlen), err = 0;
    if (rv != 0 && errno == EINPROGRESS) {
      s->fd = fd;
      int w = wait_fd(s, POLLOUT, dl);
      s->fd = -1;
      socklen_t el = sizeof err;
      if (w || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = w ? w : errno;
      rv = err ? -1 : 0;
    }
    if (rv != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd >= 0) {
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

static void sconn_drop(kvs__sconn *s) {
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

/* Back to the pool (a dropped one is dialed again on its next use). */
static void sconn_idle(kvs__sconn *s) {
  kvs_client *c = s->c;
  pthread_mutex_lock(&c->mu);
  s->req = NULL;
  s->done = NULL;
  s->next = c->stream.idle;
  c->stream.idle = s;
  c->stream.active--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void finish(kvs__sconn *s, int rv, const char *msg, const uint8_t *p, size_t n) {
  nng_msg *req = s->req;
  s->req = NULL;
  if (rv == KVS_OK) atomic_fetch_add(&s->c->ctr.stream_gets, 1);
  s->done(s->arg, rv, msg, p, n);
  nng_msg_free(req);
  sconn_idle(s);
}

/* The stream could not carry this request: the REQ/REP path takes it. */
static void fallback(kvs__sconn *s, const char *why, int err) {
  kvs_client *c = s->c;
  KVS_LOGD("client", "stream get goes through REQ/REP", "why=\"%s\" err=%s", why, kvs_errname(err));
  atomic_fetch_add(&c->ctr.stream_fallbacks, 1);
  nng_msg *req = s->req;
  kvs__get_done_fn done = s->done;
  void *arg = s->arg;
  kvs__call_check_fn check = s->check;
  uint64_t deadline = s->deadline_ns;
  s->req = NULL;
  sconn_drop(s);
  sconn_idle(s);
  via_nng(c, req, deadline, check, done, arg);
}

static int stream_drop_found(kvs_client *c, const char *url);

/* One request on the connection's own thread: dial if needed, write, read
 * the head, then the payload into the kept buffer. */
static void serve(kvs__sconn *s) {
  kvs_client *c = s->c;
  char msg[KVS__ERRMSG_LEN] = "";
  if (s->fd < 0) {
    s->reused = 0;
    s->fd = dial(s);
    if (s->fd < 0) {
      /* no listener there. One the client found by itself (advertised, but
       * not reachable from here: a firewall, another network) is given up
       * until the next connection loss asks again, so that gets do not wait
       * out a connect timeout every second; a named one is tried again a
       * second later. */
      if (!stream_drop_found(c, s->url)) {
        pthread_mutex_lock(&c->mu);
        c->stream.retry_ns = kvs_now_ns() + 1000000000ull;
        pthread_mutex_unlock(&c->mu);
      }
      fallback(s, "cannot reach the stream listener", KVS_ECONN);
      return;
    }
  }
  size_t moved = 0;
  int stage = 0; /* 0 send, 1 head, 2 body */
  int rv = xfer(s, nng_msg_body(s->req), nng_msg_len(s->req), 1, &moved);
  if (!rv) stage = 1, rv = xfer(s, s->hdr, KVS_WIRE_HDR_SIZE, 0, &moved);
  if (rv) {
    /* before any byte of the answer the request may be repeated (GET is
     * idempotent): a pooled connection the server closed, a listener gone */
    if (rv != KVS_ECLOSED && rv != KVS_ETIMEDOUT && (stage == 0 || moved == 0)) {
      fallback(s, s->reused ? "pooled stream connection lost" : "stream connection lost", rv);
      return;
    }
    snprintf(msg, sizeof msg, "stream %s %s: %s",
             stage ? "waiting for the answer from" : "sending to", s->url, kvs_errname(rv));
    sconn_drop(s);
    finish(s, rv, msg, NULL, 0);
    return;
  }
  kvs_wire_hdr h;
  int e = kvs_wire_hdr_decode_head(s->hdr, &h);
  if (e == KVS_OK && (!(h.flags & KVS_WIRE_F_RESPONSE) || h.op != s->op || h.req_id != s->req_id))
    e = KVS_EPROTO;
  if (e == KVS_OK && h.payload_len > c->o.max_msg_bytes) e = KVS_ETOOBIG;
  if (e == KVS_OK && h.payload_len > s->cap) { /* grows to the largest answer, then reused */
    uint8_t *b = realloc(s->buf, h.payload_len);
    if (!b)
      e = KVS_ENOMEM;
    else
      s->buf = b, s->cap = h.payload_len;
  }
  if (e) {
    snprintf(msg, sizeof msg, "bad answer from %s (%s)", s->url, kvs_errname(e));
    sconn_drop(s); /* the framing is lost */
    finish(s, e == KVS_ENOMEM ? e : KVS_EPROTO, msg, NULL, 0);
    return;
  }
  size_t n = h.payload_len;
  rv = n ? xfer(s, s->buf, n, 0, &moved) : 0;
  if (rv) {
    snprintf(msg, sizeof msg, "stream waiting for the answer from %s: %s", s->url, kvs_errname(rv));
    sconn_drop(s);
    finish(s, rv, msg, NULL, 0);
    return;
  }
  /* the whole answer: status through the caller's check, as over REQ/REP */
  int32_t status = kvs_wire_hdr_status(s->hdr);
  if (status < 0) {
    size_t ml = n < KVS_WIRE_MAX_ERRMSG ? n : KVS_WIRE_MAX_ERRMSG;
    snprintf(msg, sizeof msg, "kvstashd %s: %s: %.*s", kvs_wire_op_name(s->op), kvs_errname(status),
             (int)ml, (const char *)s->buf);
    if (status == KVS_EBUSY) { /* draining: the REQ/REP path retries, or says so */
      fallback(s, "stream listener draining", status);
      return;
    }
    finish(s, status, msg, NULL, 0);
    return;
  }
  finish(s, KVS_OK, "", s->buf, n);
}

static void *sconn_main(void *arg) {
  kvs__sconn *s = arg;
  kvs_client *c = s->c;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    while (!s->has_call && !c->closed)
      pthread_cond_wait(&s->cv, &c->mu);
    if (!s->has_call) break; /* closing, nothing handed over */
    s->has_call = 0;
    pthread_mutex_unlock(&c->mu);
    serve(s);
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

void kvs__get_call(kvs_client *c, nng_msg *req, uint32_t timeout_ms, kvs__call_check_fn check,
                   kvs__get_done_fn done, void *arg) {
  uint64_t deadline =
      kvs_now_ns() + (uint64_t)(timeout_ms ? timeout_ms : c->o.request_timeout_ms) * 1000000ull;
  kvs__sconn *s = NULL;
  int fresh = 0;
  pthread_mutex_lock(&c->mu);
  if (c->stream.url && !c->closed && kvs_now_ns() >= c->stream.retry_ns) {
    s = c->stream.idle;
    if (s) {
      c->stream.idle = s->next;
    } else if (c->stream.n_conns < KVS__SCONN_MAX && (s = calloc(1, sizeof *s))) {
      s->c = c;
      s->fd = -1;
      pthread_cond_init(&s->cv, NULL);
      fresh = 1;
    }
    if (s) {
      c->stream.active++;
      s->url = c->stream.url;
      s->reused = s->fd >= 0;
      const uint8_t *h = nng_msg_body(req);
      s->req = req;
      s->op = kvs_wire_hdr_op(h);
      s->req_id = kvs_wire_hdr_req_id(h);
      s->deadline_ns = deadline;
      s->check = check;
      s->done = done;
      s->arg = arg;
      if (fresh && pthread_create(&s->th, NULL, sconn_main, s) != 0) {
        pthread_cond_destroy(&s->cv);
        free(s);
        s = NULL;
        c->stream.active--;
      } else if (fresh) {
        s->all_next = c->stream.all;
        c->stream.all = s;
        c->stream.n_conns++;
      }
    }
    if (s) {
      s->has_call = 1;
      pthread_cond_signal(&s->cv);
    }
  }
  pthread_mutex_unlock(&c->mu);
  if (!s) /* no stream, or every connection busy: the REQ/REP pool */
    via_nng(c, req, deadline, check, done, arg);
}

/* hosts as kvs_url_hostport gives them: IPv6 without brackets */
static int loopback(const char *host) {
  return !strncmp(host, "127.", 4) || !strcmp(host, "localhost") || !strcmp(host, "::1");
}

int kvs__stream_pick(const uint8_t *adv, size_t n, const char *client_url, char *out, size_t cap) {
  int ipc = !strncmp(client_url, "ipc://", 6);
  if (!ipc && strncmp(client_url, "tcp://", 6)) return KVS_ENOTSUP;
  char list[4096];
  if (n >= sizeof list || (n && memchr(adv, 0, n))) return KVS_EPROTO;
  if (n) memcpy(list, adv, n);
  list[n] = 0;
  const char *want = ipc ? "ipc+stream://" : "tcp+stream://";
  for (char *sv = NULL, *t = strtok_r(list, ",", &sv); t; t = strtok_r(NULL, ",", &sv)) {
    if (strncmp(t, want, 13)) continue;
    int w;
    if (ipc) {
      w = snprintf(out, cap, "%s", t);
    } else {
      char host[256], mine[256];
      int port = 0, mport = 0;
      if (kvs_url_hostport(t, host, sizeof host, &port) != KVS_OK ||
          kvs_url_hostport(client_url, mine, sizeof mine, &mport) != KVS_OK)
        continue;
      int wild = !host[0] || !strcmp(host, "*") || !strcmp(host, "0.0.0.0") || !strcmp(host, "::");
      if (loopback(host) && !loopback(mine)) continue; /* not reachable from where we are */
      const char *h = wild ? mine : host;
      int v6 = strchr(h, ':') != NULL;
      w = snprintf(out, cap, "tcp+stream://%s%s%s:%d", v6 ? "[" : "", h, v6 ? "]" : "", port);
    }
    if (w > 0 && (size_t)w < cap) return KVS_OK;
  }
  return KVS_ENOENT;
}

/* A stream URL no longer in use: a connection thread may still be writing
 * it into a message, so it lives until close. */
struct kvs__olddialer {
  char *url;
  struct kvs__olddialer *next;
};

/* Makes url (tcp+stream:// or ipc+stream://) the client's stream. named: by
 * kvs_client_stream (KVS_EBUSY when it named one already); else found by
 * asking, which never replaces a named one. The connections to the previous
 * stream that sit idle are closed (the next get dials the new one). */
static kvs_err stream_set(kvs_client *c, const char *url, int named) {
  int tcp = !strncmp(url, "tcp+stream://", 13), ipc = !strncmp(url, "ipc+stream://", 13);
  if (!tcp && !ipc)
    return kvs__seterr(c, KVS_EINVAL, "stream URL must be tcp+stream:// or ipc+stream://");
  char host[256], port[16];
  if (strlen(url) >= 512 || stream_addr(url, host, sizeof host, port, sizeof port))
    return kvs__seterr(c, KVS_EINVAL, "stream URL %.300s: not %s", url,
                       tcp ? "tcp+stream://HOST:PORT" : "ipc+stream:///PATH");
  pthread_mutex_lock(&c->mu);
  int busy = c->stream.named, same = c->stream.url && !strcmp(c->stream.url, url);
  if (same || busy) {
    if (same && named) c->stream.named = 1;
    pthread_mutex_unlock(&c->mu);
    return busy && named ? kvs__seterr(c, KVS_EBUSY, "the stream URL is set once per client")
                         : KVS_OK;
  }
  pthread_mutex_unlock(&c->mu);
  char *copy = strdup(url);
  struct kvs__olddialer *old = malloc(sizeof *old);
  if (!copy || !old) {
    free(copy);
    free(old);
    return KVS_ENOMEM;
  }
  int stale[KVS__SCONN_MAX], n_stale = 0;
  pthread_mutex_lock(&c->mu);
  if (c->stream.named || c->closed) { /* named meanwhile on another thread */
    int busy2 = c->stream.named && named;
    pthread_mutex_unlock(&c->mu);
    free(copy);
    free(old);
    return busy2 ? kvs__seterr(c, KVS_EBUSY, "the stream URL is set once per client") : KVS_OK;
  }
  if (c->stream.url) {
    *old = (struct kvs__olddialer){c->stream.url, c->stream.old};
    c->stream.old = old;
    old = NULL;
    for (kvs__sconn *x = c->stream.idle; x; x = x->next)
      if (x->fd >= 0 && n_stale < KVS__SCONN_MAX) stale[n_stale++] = x->fd, x->fd = -1;
  }
  c->stream.url = copy;
  c->stream.retry_ns = 0;
  if (named) c->stream.named = 1;
  pthread_mutex_unlock(&c->mu);
  free(old);
  for (int i = 0; i < n_stale; i++)
    close(stale[i]);
  return KVS_OK;
}

/* The daemon no longer offers a stream (asked again after a reconnect):
 * gets stay on REQ/REP. A named stream stays. */
static void stream_unset(kvs_client *c) {
  struct kvs__olddialer *old = malloc(sizeof *old);
  pthread_mutex_lock(&c->mu);
  if (old && c->stream.url && !c->stream.named) {
    *old = (struct kvs__olddialer){c->stream.url, c->stream.old};
    c->stream.old = old;
    old = NULL;
    c->stream.url = NULL;
  }
  pthread_mutex_unlock(&c->mu);
  free(old);
}

/* The stream the client found (not a named one), when it is still url,
 * dropped: 1 when it was. */
static int stream_drop_found(kvs_client *c, const char *url) {
  struct kvs__olddialer *old = malloc(sizeof *old);
  int dropped = 0;
  pthread_mutex_lock(&c->mu);
  if (old && c->stream.url && !c->stream.named && !strcmp(c->stream.url, url)) {
    *old = (struct kvs__olddialer){c->stream.url, c->stream.old};
    c->stream.old = old;
    old = NULL;
    c->stream.url = NULL;
    dropped = 1;
  }
  pthread_mutex_unlock(&c->mu);
  free(old);
  if (dropped)
    KVS_LOGI("client", "the daemon's stream listener cannot be reached: gets stay on REQ/REP",
             "url=%s", url);
  return dropped;
}

/* PING, whose answer lists the daemon's +stream listeners (docs/protocol.md),
 * and the one kvs__stream_pick picks into url. quiet: the client's own
 * question (the thread's error message is left alone). */
static kvs_err stream_ask(kvs_client *c, uint32_t timeout_ms, int quiet, char *url, size_t cap) {
  nng_msg *rep = NULL;
  kvs_err rv;
  if (quiet) {
    rv = kvs__ping_quiet(c, timeout_ms, &rep);
  } else {
    nng_msg *m = NULL;
    if (kvs__frame_new(0, &m)) return KVS_ENOMEM;
    rv = kvs__frame_roundtrip(c, m, KVS_OP_PING, kvs_wire_op_idempotent(KVS_OP_PING), &rep);
  }
  if (rv) return rv;
  rv = kvs__stream_pick((const uint8_t *)nng_msg_body(rep) + KVS_WIRE_HDR_SIZE,
                        nng_msg_len(rep) - KVS_WIRE_HDR_SIZE, c->url, url, cap);
  nng_msg_free(rep);
  return rv;
}

void kvs__stream_default(kvs_client *c, uint32_t timeout_ms) {
  pthread_mutex_lock(&c->mu);
  int ask = c->stream.auto_find && !c->stream.named && !c->stream.known && !c->stream.asking &&
            !c->closed && c->pool.pipes > 0 && kvs_now_ns() >= c->stream.ask_ns;
  if (ask) {
    c->stream.asking = 1;
    c->stream.known = 1; /* a connection lost while asking clears it again */
  }
  pthread_mutex_unlock(&c->mu);
  if (!ask) return;
  char url[600];
  kvs_err rv = stream_ask(c, timeout_ms, 1, url, sizeof url);
  int answered = rv == KVS_OK || rv == KVS_ENOENT || rv == KVS_EPROTO || rv == KVS_ENOTSUP;
  if (rv == KVS_OK) {
    if (stream_set(c, url, 0) != KVS_OK)
      KVS_LOGI("client", "the daemon's stream listener is not usable", "url=%s", url);
  } else if (answered) {
    stream_unset(c);
  }
  KVS_LOGD("client", "asked for the stream listener", "url=%s err=%s", rv == KVS_OK ? url : "-",
           kvs_errname(rv));
  pthread_mutex_lock(&c->mu);
  c->stream.asking = 0;
  if (!answered) { /* no answer (down, refused, timed out): ask again a second later */
    c->stream.known = 0;
    c->stream.ask_ns = kvs_now_ns() + 1000000000ull;
  }
  pthread_mutex_unlock(&c->mu);
}

/* "auto", named: ask now and say what came of it. */
static kvs_err stream_auto(kvs_client *c) {
  char url[600];
  if (kvs__stream_pick(NULL, 0, c->url, url, sizeof url) == KVS_ENOTSUP)
    return kvs__seterr(c, KVS_ENOTSUP, "stream \"auto\": only for tcp:// and ipc:// (not %s)",
                       c->url);
  pthread_mutex_lock(&c->mu);
  int busy = c->stream.named;
  pthread_mutex_unlock(&c->mu);
  if (busy) return kvs__seterr(c, KVS_EBUSY, "the stream URL is set once per client");
  kvs_err rv = stream_ask(c, 0, 0, url, sizeof url);
  if (rv == KVS_EPROTO)
    return kvs__seterr(c, rv, "PING answer from %s: not a list of listen URLs", c->url);
  if (rv == KVS_ENOENT)
    return kvs__seterr(c, rv, "kvstashd at %s has no %s listener", c->url,
                       strncmp(c->url, "ipc://", 6) ? "tcp+stream://" : "ipc+stream://");
  if (rv) return rv;
  return stream_set(c, url, 1);
}

kvs_err kvs_client_stream(kvs_client *c, const char *url) {
  if (!c || !url) return KVS_EINVAL;
  if (c->cluster) return KVS__NOT_ON_CLUSTER(c);
  if (!strcmp(url, "auto")) return stream_auto(c);
  return stream_set(c, url, 1);
}

void kvs__stream_close(kvs_client *c) {
  /* c->closed is set: no call is handed to a connection any more, and a
   * connection thread sees it within KVS__SCONN_SLICE_MS wherever it waits
   * (its call ends with KVS_ECLOSED, or falls back to REQ/REP, which ends
   * at once). Wake the idle ones, join them all, then free. */
  pthread_mutex_lock(&c->mu);
  kvs__sconn *all = c->stream.all;
  for (kvs__sconn *s = all; s; s = s->all_next)
    pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&c->mu);
  for (kvs__sconn *s = all; s; s = s->all_next)
    pthread_join(s->th, NULL);
  pthread_mutex_lock(&c->mu);
  c->stream.all = NULL;
  c->stream.idle = NULL;
  pthread_mutex_unlock(&c->mu);
  while (all) {
    kvs__sconn *n = all->all_next;
    sconn_drop(all);
    pthread_cond_destroy(&all->cv);
    free(all->buf);
    free(all);
    all = n;
  }
  free(c->stream.url);
  c->stream.url = NULL;
  while (c->stream.old) {
    struct kvs__olddialer *o = c->stream.old;
    c->stream.old = o->next;
    free(o->url);
    free(o);
  }
}
