/* stream.c - GETs over kvstashd's byte-stream listener (kvs_client_stream):
 * plain frames on TCP / IPC connections made with nng's stream API
 * (docs/protocol.md "Byte streams"), beside the REQ/REP pool of conn.c.
 *
 * A connection carries one request at a time; idle ones wait in a pool
 * (dialed on demand, at most KVS__SCONN_MAX). The answer is read without an
 * nng message: header first (checked, payload_len bounded by max_msg_bytes
 * before anything is allocated), then the payload straight into the
 * connection's buffer, which is kept and reused - the decoder reads the value
 * from there, so a GET's bytes are copied once, socket to buffer, as a RESP
 * reader does. Whatever stands in the way of the stream (no listener, a
 * connection lost before the answer began) sends the same request through
 * the REQ/REP path instead, so a get never fails for the stream's sake. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_int.h"
#include "kvs_wire.h"

#define KVS__SCONN_MAX 64

enum { SC_SEND, SC_HDR, SC_BODY };

struct kvs__sconn {
  kvs_client *c;
  nng_stream *s;   /* NULL until dialed */
  const char *url; /* the stream URL of the call it serves (kept alive until close) */
  nng_aio *aio;    /* dial, then one send or recv at a time */
  int state;
  int reused; /* came from the pool: a failure before any answer byte may be a stale conn */
  uint8_t hdr[KVS_WIRE_HDR_SIZE];
  uint8_t *buf; /* the answer's payload; kept between calls */
  size_t cap, have, want;
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
  kvs__call *call = g ? kvs__call_new(c, req, kvs_wire_op_idempotent(KVS_OP_GET), (uint32_t)((deadline_ns - now) / 1000000), check,
                                      nng_get_done, g)
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
static void sconn_cb(void *arg);

static int64_t left_ms(const kvs__sconn *s) {
  uint64_t now = kvs_now_ns();
  return now >= s->deadline_ns ? 0 : (int64_t)((s->deadline_ns - now) / 1000000 + 1);
}

/* Back to the pool (or closed when the client is closing / the pool is full). */
static void sconn_idle(kvs__sconn *s) {
  kvs_client *c = s->c;
  pthread_mutex_lock(&c->mu);
  s->req = NULL;
  s->done = NULL;
  s->next = c->sidle;
  c->sidle = s;
  c->s_active--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

/* A dead connection: closed now, freed at kvs_client_free (its aio cannot
 * be freed from its own callback), or reused for a redial. */
static void sconn_drop(kvs__sconn *s) {
  if (s->s) {
    nng_stream_free(s->s); /* closes; frees through nng's reaper */
    s->s = NULL;
  }
}

static void io(kvs__sconn *s, void *p, size_t n, int send) {
  nng_iov iov = {p, n};
  nng_aio_set_iov(s->aio, 1, &iov);
  int64_t ms = left_ms(s);
  nng_aio_set_timeout(s->aio, (nng_duration)(ms > 0 ? ms : 1));
  if (send)
    nng_stream_send(s->s, s->aio);
  else
    nng_stream_recv(s->s, s->aio);
}

static void finish(kvs__sconn *s, int rv, const char *msg, const uint8_t *p, size_t n) {
  kvs__get_done_fn done = s->done;
  void *arg = s->arg;
  nng_msg *req = s->req;
  s->req = NULL;
  if (rv == KVS_OK) atomic_fetch_add(&s->c->n_stream_gets, 1);
  done(arg, rv, msg, p, n);
  nng_msg_free(req);
  sconn_idle(s); /* a dropped one (s->s NULL) is redialed on its next use */
}

static void start_send(kvs__sconn *s) {
  s->state = SC_SEND;
  s->have = 0;
  s->want = nng_msg_len(s->req);
  io(s, nng_msg_body(s->req), s->want, 1);
}

/* The stream could not carry this request: the REQ/REP path takes it. */
static void fallback(kvs__sconn *s, const char *why, int nng_rv) {
  kvs_client *c = s->c;
  KVS_LOGD("client", "stream get goes through REQ/REP", "why=\"%s\" err=\"%s\"", why,
           nng_rv ? nng_strerror(nng_rv) : "");
  atomic_fetch_add(&c->n_stream_fallbacks, 1);
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

static void sconn_cb(void *arg) {
  kvs__sconn *s = arg;
  kvs_client *c = s->c;
  int rv = nng_aio_result(s->aio);
  if (!s->req) return; /* an abort while idle */
  if (!s->s) {         /* the dial */
    if (rv) {          /* no listener there: the stream is not tried again for a second */
      pthread_mutex_lock(&c->mu);
      c->stream_retry_ns = kvs_now_ns() + 1000000000ull;
      pthread_mutex_unlock(&c->mu);
      fallback(s, "cannot reach the stream listener", rv);
      return;
    }
    s->s = nng_aio_get_output(s->aio, 0);
    start_send(s);
    return;
  }
  if (rv) {
    int closing;
    pthread_mutex_lock(&c->mu);
    closing = c->closed;
    pthread_mutex_unlock(&c->mu);
    /* before any byte of the answer the request may be repeated (GET is
     * idempotent): a pooled connection the server closed, a listener gone */
    if (!closing && rv != NNG_ETIMEDOUT && (s->state != SC_BODY && s->have == 0)) {
      fallback(s, s->reused ? "pooled stream connection lost" : "stream connection lost", rv);
      return;
    }
    char msg[KVS__ERRMSG_LEN];
    snprintf(msg, sizeof msg, "stream %s %s: %s",
             s->state == SC_SEND ? "sending to" : "waiting for the answer from", s->url,
             nng_strerror(rv));
    sconn_drop(s);
    finish(s, closing ? KVS_ECLOSED : kvs__err_from_nng(rv), msg, NULL, 0);
    return;
  }
  s->have += nng_aio_count(s->aio);
  if (s->have < s->want) {
    if (s->state == SC_SEND)
      io(s, (uint8_t *)nng_msg_body(s->req) + s->have, s->want - s->have, 1);
    else
      io(s, (s->state == SC_HDR ? s->hdr : s->buf) + s->have, s->want - s->have, 0);
    return;
  }
  if (s->state == SC_SEND) {
    s->state = SC_HDR;
    s->have = 0;
    s->want = KVS_WIRE_HDR_SIZE;
    io(s, s->hdr, s->want, 0);
    return;
  }
  char msg[KVS__ERRMSG_LEN] = "";
  if (s->state == SC_HDR) {
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
    s->state = SC_BODY;
    s->have = 0;
    s->want = h.payload_len;
    if (s->want) {
      io(s, s->buf, s->want, 0);
      return;
    }
  }
  /* the whole answer: status through the caller's check, as over REQ/REP */
  int32_t status = kvs_wire_hdr_status(s->hdr);
  if (status < 0) {
    size_t ml = s->want < KVS_WIRE_MAX_ERRMSG ? s->want : KVS_WIRE_MAX_ERRMSG;
    snprintf(msg, sizeof msg, "kvstashd %s: %s: %.*s", kvs_wire_op_name(s->op), kvs_errname(status),
             (int)ml, (const char *)s->buf);
    if (status == KVS_EBUSY) { /* draining: the REQ/REP path retries, or says so */
      fallback(s, "stream listener draining", 0);
      return;
    }
    finish(s, status, msg, NULL, 0);
    return;
  }
  finish(s, KVS_OK, "", s->buf, s->want);
}

void kvs__get_call(kvs_client *c, nng_msg *req, uint32_t timeout_ms, kvs__call_check_fn check,
                   kvs__get_done_fn done, void *arg) {
  uint64_t deadline =
      kvs_now_ns() + (uint64_t)(timeout_ms ? timeout_ms : c->o.request_timeout_ms) * 1000000ull;
  kvs__sconn *s = NULL;
  int reused = 0;
  nng_stream_dialer *dialer = NULL;
  pthread_mutex_lock(&c->mu);
  if (c->stream_dialer && !c->closed && kvs_now_ns() >= c->stream_retry_ns) {
    dialer = c->stream_dialer; /* a replaced one stays alive until kvs_client_free */
    s = c->sidle;
    if (s) {
      c->sidle = s->next;
      reused = s->s != NULL;
    } else if (c->n_sconns < KVS__SCONN_MAX && (s = calloc(1, sizeof *s))) {
      if (nng_aio_alloc(&s->aio, sconn_cb, s)) {
        free(s);
        s = NULL;
      } else {
        s->c = c;
        s->all_next = c->sall;
        c->sall = s;
        c->n_sconns++;
      }
    }
    if (s) {
      c->s_active++;
      s->url = c->stream_url;
    }
  }
  pthread_mutex_unlock(&c->mu);
  if (!s) { /* no stream, or every connection busy: the REQ/REP pool */
    via_nng(c, req, deadline, check, done, arg);
    return;
  }
  const uint8_t *h = nng_msg_body(req);
  s->req = req;
  s->op = kvs_wire_hdr_op(h);
  s->req_id = kvs_wire_hdr_req_id(h);
  s->deadline_ns = deadline;
  s->check = check;
  s->done = done;
  s->arg = arg;
  s->reused = reused;
  if (s->s) {
    start_send(s);
    return;
  }
  nng_aio_set_timeout(s->aio, (nng_duration)c->o.connect_timeout_ms);
  nng_stream_dialer_dial(dialer, s->aio);
}

/* host of a "scheme://HOST:PORT" URL into out ("" when there is none);
 * -1 when it does not fit */
static int url_host(const char *url, char *out, size_t cap) {
  out[0] = 0;
  const char *h = strstr(url, "://");
  if (!h) return 0;
  h += 3;
  const char *colon = strrchr(h, ':');
  size_t n = colon ? (size_t)(colon - h) : strlen(h);
  if (n >= cap) return -1;
  memcpy(out, h, n);
  out[n] = 0;
  return 0;
}

static int loopback(const char *host) {
  return !strncmp(host, "127.", 4) || !strcmp(host, "localhost") || !strcmp(host, "[::1]");
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
      const char *port = strrchr(t + 13, ':');
      if (!port || strlen(port) < 2 || strlen(port) > 6 ||
          strspn(port + 1, "0123456789") != strlen(port + 1))
        continue;
      char host[256], mine[256];
      if (url_host(t, host, sizeof host) || url_host(client_url, mine, sizeof mine)) continue;
      int wild =
          !host[0] || !strcmp(host, "*") || !strcmp(host, "0.0.0.0") || !strcmp(host, "[::]");
      if (loopback(host) && !loopback(mine)) continue; /* not reachable from where we are */
      w = snprintf(out, cap, "tcp+stream://%s%s", wild ? mine : host, port);
    }
    if (w > 0 && (size_t)w < cap) return KVS_OK;
  }
  return KVS_ENOENT;
}

/* A stream URL no longer in use: its dialer may still be dialing and its
 * string may be in a message being written, so both live until close. */
struct kvs__olddialer {
  nng_stream_dialer *d;
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
  char nu[512]; /* tcp+stream://x -> tcp://x */
  if (strlen(url) >= sizeof nu) return kvs__seterr(c, KVS_EINVAL, "stream URL too long");
  snprintf(nu, sizeof nu, "%.3s%s", url, url + 10);
  pthread_mutex_lock(&c->mu);
  int busy = c->stream_named, same = c->stream_url && !strcmp(c->stream_url, url);
  if (same || busy) {
    if (same && named) c->stream_named = 1;
    pthread_mutex_unlock(&c->mu);
    return busy && named ? kvs__seterr(c, KVS_EBUSY, "the stream URL is set once per client")
                         : KVS_OK;
  }
  pthread_mutex_unlock(&c->mu);
  nng_stream_dialer *d = NULL;
  int rv = nng_stream_dialer_alloc(&d, nu);
  if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "stream URL %s: %s", url, nng_strerror(rv));
  if (tcp) (void)nng_stream_dialer_set_bool(d, NNG_OPT_TCP_NODELAY, true);
  char *copy = strdup(url);
  struct kvs__olddialer *old = malloc(sizeof *old);
  if (!copy || !old) {
    nng_stream_dialer_free(d);
    free(copy);
    free(old);
    return KVS_ENOMEM;
  }
  nng_stream *stale[KVS__SCONN_MAX];
  int n_stale = 0;
  pthread_mutex_lock(&c->mu);
  if (c->stream_named || c->closed) { /* named meanwhile on another thread */
    int busy2 = c->stream_named && named;
    pthread_mutex_unlock(&c->mu);
    nng_stream_dialer_free(d);
    free(copy);
    free(old);
    return busy2 ? kvs__seterr(c, KVS_EBUSY, "the stream URL is set once per client") : KVS_OK;
  }
  if (c->stream_dialer) {
    *old = (struct kvs__olddialer){c->stream_dialer, c->stream_url, c->old_dialers};
    c->old_dialers = old;
    old = NULL;
    for (kvs__sconn *x = c->sidle; x; x = x->next)
      if (x->s && n_stale < KVS__SCONN_MAX) stale[n_stale++] = x->s, x->s = NULL;
  }
  c->stream_url = copy;
  c->stream_dialer = d;
  c->stream_retry_ns = 0;
  if (named) c->stream_named = 1;
  pthread_mutex_unlock(&c->mu);
  free(old);
  for (int i = 0; i < n_stale; i++)
    nng_stream_free(stale[i]);
  return KVS_OK;
}

/* The daemon no longer offers a stream (asked again after a reconnect):
 * gets stay on REQ/REP. A named stream stays. */
static void stream_unset(kvs_client *c) {
  struct kvs__olddialer *old = malloc(sizeof *old);
  pthread_mutex_lock(&c->mu);
  if (old && c->stream_dialer && !c->stream_named) {
    *old = (struct kvs__olddialer){c->stream_dialer, c->stream_url, c->old_dialers};
    c->old_dialers = old;
    old = NULL;
    c->stream_dialer = NULL;
    c->stream_url = NULL;
  }
  pthread_mutex_unlock(&c->mu);
  free(old);
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
  int ask = c->stream_auto && !c->stream_named && !c->stream_known && !c->stream_asking &&
            !c->closed && c->pipes > 0 && kvs_now_ns() >= c->stream_ask_ns;
  if (ask) {
    c->stream_asking = 1;
    c->stream_known = 1; /* a connection lost while asking clears it again */
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
  c->stream_asking = 0;
  if (!answered) { /* no answer (down, refused, timed out): ask again a second later */
    c->stream_known = 0;
    c->stream_ask_ns = kvs_now_ns() + 1000000000ull;
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
  int busy = c->stream_named;
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
  if (!strcmp(url, "auto")) return stream_auto(c);
  return stream_set(c, url, 1);
}

void kvs__stream_close(kvs_client *c) {
  /* c->closed is set: no new stream call starts. Abort those in flight
   * (their done runs with KVS_ECLOSED, or they fall back to REQ/REP, which
   * ends at once) until none is left - an abort that lands between two
   * operations of a call does nothing, hence the loop - then free. The
   * streams themselves are closed only here, after every callback is over. */
  pthread_mutex_lock(&c->mu);
  kvs__sconn *all = c->sall;
  while (c->s_active > 0) {
    pthread_mutex_unlock(&c->mu);
    for (kvs__sconn *s = all; s; s = s->all_next)
      nng_aio_abort(s->aio, NNG_ECLOSED);
    pthread_mutex_lock(&c->mu);
    if (c->s_active > 0) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 10 * 1000000;
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
  }
  c->sall = NULL;
  c->sidle = NULL;
  pthread_mutex_unlock(&c->mu);
  for (kvs__sconn *s = all; s; s = s->all_next)
    nng_aio_stop(s->aio);
  while (all) {
    kvs__sconn *n = all->all_next;
    nng_aio_free(all->aio);
    if (all->s) nng_stream_free(all->s);
    free(all->buf);
    free(all);
    all = n;
  }
  if (c->stream_dialer) nng_stream_dialer_free(c->stream_dialer);
  c->stream_dialer = NULL;
  free(c->stream_url);
  c->stream_url = NULL;
  while (c->old_dialers) {
    struct kvs__olddialer *o = c->old_dialers;
    c->old_dialers = o->next;
    nng_stream_dialer_free(o->d);
    free(o->url);
    free(o);
  }
}
