/* conn.c - the connection pool and the transport under every call: one
 * request, one reply, on a REQ context taken from the pool, with a deadline
 * and retries with exponential backoff. Everything is driven by the slot's
 * nng aio, so a call never holds a thread while it waits; the synchronous
 * forms simply wait for the asynchronous one. The lowest layer of the
 * client: it calls no other file of client/ (docs/client.md "Source
 * layout"). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_int.h"
#include "kvs_net.h"

#include <nng/supplemental/tls/tls.h>

/* ------------------------------------------------------------ errors */
static __thread struct {
  const kvs_client *c;
  char msg[KVS__ERRMSG_LEN];
} kvs__tl_err;

int kvs__seterr(kvs_client *c, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(kvs__tl_err.msg, sizeof kvs__tl_err.msg, fmt, ap);
  va_end(ap);
  kvs__tl_err.c = c;
  KVS_LOGD("client", "call failed", "err=%s why=\"%s\"", kvs_errname(err), kvs__tl_err.msg);
  return err;
}

const char *kvs_client_errmsg(kvs_client *c) {
  return c && kvs__tl_err.c == c ? kvs__tl_err.msg : "";
}

kvs_err kvs__err_from_nng(int rv) {
  switch (rv) {
  case 0: return KVS_OK;
  case NNG_ETIMEDOUT: return KVS_ETIMEDOUT;
  case NNG_ECLOSED: return KVS_ECLOSED;
  case NNG_ECANCELED: return KVS_ECANCELED;
  case NNG_ENOMEM: return KVS_ENOMEM;
  case NNG_EMSGSIZE: return KVS_ETOOBIG;
  case NNG_EPROTO: return KVS_EPROTO;
  case NNG_EINVAL:
  case NNG_EADDRINVAL: return KVS_EINVAL;
  case NNG_EAGAIN: return KVS_EAGAIN;
  case NNG_EPERM: return KVS_EPERM;
  case NNG_ENOTSUP: return KVS_ENOTSUP;
  case NNG_ECONNREFUSED:
  case NNG_ECONNSHUT:
  case NNG_ECONNRESET:
  case NNG_ECONNABORTED:
  case NNG_EUNREACHABLE:
  case NNG_EPEERAUTH: return KVS_ECONN;
  default: return KVS_EIO;
  }
}

/* -------------------------------------------------------------- pool */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg) {
  kvs_client *c = arg;
  (void)p;
  pthread_mutex_lock(&c->mu);
  if (ev == NNG_PIPE_EV_ADD_POST)
    c->pool.pipes++;
  else if (ev == NNG_PIPE_EV_REM_POST && c->pool.pipes > 0)
    c->pool.pipes--;
  /* a connection lost: the daemon may have restarted with other listeners,
   * so the next get asks again which stream it offers */
  if (ev == NNG_PIPE_EV_REM_POST) c->stream.known = 0;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void kvs_client_lib_fini(void) { nng_fini(); }

int kvs_client_connected(kvs_client *c) {
  if (!c) return 0;
  pthread_mutex_lock(&c->mu);
  int n = c->pool.pipes;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* The client TLS config of a tls+tcp:// client: the server is always
 * verified against tls_ca_file. */
static int tls_setup(kvs_client *c) {
  if (!c->tls_ca || !*c->tls_ca)
    return kvs__seterr(c, KVS_EINVAL,
                       "tls+tcp:// needs opts.tls_ca_file (the CA or self-signed certificate "
                       "the server's certificate is checked against)");
  nng_tls_config *cfg = NULL;
  int rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT);
  if (rv)
    return kvs__seterr(c, rv == NNG_ENOTSUP ? KVS_ENOTSUP : kvs__err_from_nng(rv),
                       "TLS is not available in this nng (%s)", nng_strerror(rv));
  c->pool.tls = cfg;
  char host[256];
  if (c->tls_name && *c->tls_name)
    snprintf(host, sizeof host, "%s", c->tls_name);
  else if (kvs_url_hostport(c->url, host, sizeof host, NULL) != KVS_OK) /* core/kvs_net.h */
    return kvs__seterr(c, KVS_EINVAL, "%s: not tls+tcp://HOST:PORT", c->url);
  rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED);
  if (rv == 0) rv = nng_tls_config_server_name(cfg, host);
  if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "TLS config: %s", nng_strerror(rv));
  rv = nng_tls_config_ca_file(cfg, c->tls_ca);
  if (rv) return kvs__seterr(c, KVS_EINVAL, "TLS CA file %s: %s", c->tls_ca, nng_strerror(rv));
  if (c->tls_cert && *c->tls_cert) {
    rv = nng_tls_config_cert_key_file(cfg, c->tls_cert, NULL);
    if (rv)
      return kvs__seterr(c, KVS_EINVAL, "TLS certificate/key file %s: %s", c->tls_cert,
                         nng_strerror(rv));
  }
  return KVS_OK;
}

/* Opens the pool's sockets and dials opts.url (TLS set up first for
 * tls+tcp://); unless KVS_CLIENT_LAZY, waits for a first connection. */
kvs_err kvs__pool_open(kvs_client *c) {
  int tls = strncmp(c->url, "tls+tcp://", 10) == 0;
  if (tls) {
    int rv = tls_setup(c);
    if (rv) return rv;
  }
  for (uint32_t i = 0; i < c->o.n_sockets; i++) {
    int rv = nng_req0_open(&c->pool.socks[i]);
    if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "nng_req0_open: %s", nng_strerror(rv));
    c->pool.n_socks++;
    nng_socket s = c->pool.socks[i];
    /* our own retries replace REQ's blind resend, which would repeat a
     * slow put every minute */
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, c->o.max_msg_bytes);
    nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 10);
    nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 500);
    nng_pipe_notify(s, NNG_PIPE_EV_ADD_POST, pipe_event, c);
    nng_pipe_notify(s, NNG_PIPE_EV_REM_POST, pipe_event, c);
    nng_dialer dl;
    rv = nng_dialer_create(&dl, s, c->url);
    if (rv == 0 && c->pool.tls) rv = nng_dialer_set_ptr(dl, NNG_OPT_TLS_CONFIG, c->pool.tls);
    if (rv == 0) rv = nng_dialer_start(dl, NNG_FLAG_NONBLOCK);
    if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "dial %s: %s", c->url, nng_strerror(rv));
  }
  if (c->o.flags & KVS_CLIENT_LAZY) return KVS_OK;
  uint64_t deadline = kvs_now_ns() + (uint64_t)c->o.connect_timeout_ms * 1000000ull;
  pthread_mutex_lock(&c->mu);
  while (c->pool.pipes == 0 && kvs_now_ns() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 5 * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  }
  int up = c->pool.pipes;
  pthread_mutex_unlock(&c->mu);
  if (!up)
    return kvs__seterr(c, KVS_ECONN, "no connection to %s within %u ms (is kvstashd running?)",
                       c->url, c->o.connect_timeout_ms);
  return KVS_OK;
}

/* At kvs_client_free, once c->closed is set and the callers above (workers,
 * stream connections) are stopped: aborts the calls in flight until none is
 * left, waits for fire-and-forget callbacks and threads still inside nng,
 * then closes the sockets and frees the slots and the TLS config. */
void kvs__pool_close(kvs_client *c) {
  pthread_mutex_lock(&c->mu);
  while (c->pool.active > 0) {
    size_t n = 0;
    for (kvs__slot *s = c->pool.all_slots; s; s = s->all_next)
      n++;
    nng_aio **aios = calloc(n ? n : 1, sizeof *aios);
    n = 0;
    for (kvs__slot *s = c->pool.all_slots; s && aios; s = s->all_next)
      aios[n++] = s->aio;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++)
      nng_aio_abort(aios[i], NNG_ECLOSED);
    free(aios);
    pthread_mutex_lock(&c->mu);
    if (c->pool.active > 0) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 10 * 1000000;
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    }
  }
  pthread_mutex_unlock(&c->mu);
  /* a finished call's done callback may still be running (it runs after the
   * call left `active`); RELEASE's touches the client */
  while (atomic_load(&c->pool.bg_calls) > 0) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  /* an nng_ctx_send can still be returning on another thread after its
   * call has finished; closing the socket under it is the nng race */
  while (atomic_load(&c->pool.in_nng) > 0) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  for (uint32_t i = 0; i < c->pool.n_socks; i++)
    nng_close(c->pool.socks[i]);
  kvs__slot *s = c->pool.all_slots;
  while (s) {
    kvs__slot *next = s->all_next;
    nng_aio_free(s->aio);
    free(s);
    s = next;
  }
  if (c->pool.tls) nng_tls_config_free(c->pool.tls);
  c->pool.tls = NULL;
}

/* ----------------------------------------------------------- calls */
static void slot_cb(void *arg);

/* Takes an idle slot or makes one on the next socket; under c->mu. */
static kvs__slot *slot_get_locked(kvs_client *c) {
  kvs__slot *s = c->pool.free_slots;
  if (s) {
    c->pool.free_slots = s->next;
    return s;
  }
  s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->sock = c->pool.rr++ % c->pool.n_socks;
  if (nng_aio_alloc(&s->aio, slot_cb, s)) {
    free(s);
    return NULL;
  }
  if (nng_ctx_open(&s->ctx, c->pool.socks[s->sock])) {
    nng_aio_free(s->aio);
    free(s);
    return NULL;
  }
  s->all_next = c->pool.all_slots;
  c->pool.all_slots = s;
  return s;
}

kvs__call *kvs__call_new(kvs_client *c, nng_msg *req, int idempotent, uint32_t timeout_ms,
                         kvs__call_check_fn check, kvs__call_done_fn done, void *arg) {
  kvs__call *call = calloc(1, sizeof *call);
  if (!call) {
    nng_msg_free(req);
    return NULL;
  }
  call->c = c;
  call->req = req;
  call->idempotent = idempotent;
  call->check = check;
  call->done = done;
  call->arg = arg;
  uint64_t now = kvs_now_ns();
  call->deadline_ns =
      now + (uint64_t)(timeout_ms ? timeout_ms : c->o.request_timeout_ms) * 1000000ull;
  call->seed = now ^ (uint64_t)(uintptr_t)call;
  pthread_mutex_init(&call->mu, NULL);
  pthread_cond_init(&call->cv, NULL);
  return call;
}

static void call_finish(kvs__call *call, int rv) {
  kvs_client *c = call->c;
  call->rv = rv;
  call->state = KVS__ST_DONE;
  pthread_mutex_lock(&c->mu);
  if (call->slot) {
    call->slot->call = NULL;
    call->slot->next = c->pool.free_slots;
    c->pool.free_slots = call->slot;
    call->slot = NULL;
  }
  c->pool.active--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  kvs__call_done_fn done = call->done;
  void *arg = call->arg;
  pthread_mutex_lock(&call->mu);
  call->finished = 1;
  pthread_cond_broadcast(&call->cv);
  pthread_mutex_unlock(&call->mu);
  /* done may free the call: nothing touches it after this */
  if (done) done(call, arg);
}

static int64_t remaining_ms(const kvs__call *call) {
  uint64_t now = kvs_now_ns();
  if (now >= call->deadline_ns) return 0;
  return (int64_t)((call->deadline_ns - now + 999999) / 1000000);
}

static void fail(kvs__call *call, int rv, const char *what, int nng_rv) {
  if (!call->errmsg[0] || rv != call->rv) {
    if (nng_rv)
      snprintf(call->errmsg, sizeof call->errmsg, "%s %s: %s", what, call->c->url,
               nng_strerror(nng_rv));
    else if (!call->errmsg[0])
      snprintf(call->errmsg, sizeof call->errmsg, "%s %s", what, call->c->url);
  }
  call_finish(call, rv);
}

/* Whether the call may start another nng operation; finishes it with
 * KVS_ECLOSED when the client is closing. */
static int allowed(kvs__call *call) {
  kvs_client *c = call->c;
  pthread_mutex_lock(&c->mu);
  int ok = !c->closed;
  pthread_mutex_unlock(&c->mu);
  if (!ok) {
    snprintf(call->errmsg, sizeof call->errmsg, "client closed");
    call_finish(call, KVS_ECLOSED);
  }
  return ok;
}

static void send_attempt(kvs__call *call) {
  kvs__slot *s = call->slot;
  int64_t ms = remaining_ms(call);
  if (ms <= 0) {
    snprintf(call->errmsg, sizeof call->errmsg, "deadline passed before attempt %u to %s",
             call->attempt + 1, call->c->url);
    call_finish(call, KVS_ETIMEDOUT);
    return;
  }
  nng_msg *m;
  if (nng_msg_dup(&m, call->req)) {
    fail(call, KVS_ENOMEM, "copying the request for", 0);
    return;
  }
  if (!allowed(call)) {
    nng_msg_free(m);
    return;
  }
  call->state = KVS__ST_SEND;
  nng_aio_set_msg(s->aio, m);
  nng_aio_set_timeout(s->aio, (nng_duration)ms);
  kvs_client *c = call->c; /* the call may be finished and freed before send returns */
  atomic_fetch_add(&c->pool.in_nng, 1);
  nng_ctx_send(s->ctx, s->aio);
  atomic_fetch_sub(&c->pool.in_nng, 1);
}

static int retryable(int rv) { return rv == KVS_ECONN || rv == KVS_EBUSY || rv == KVS_EAGAIN; }

/* Retries after a backoff when the call may be repeated and time is left;
 * finishes it otherwise. sent: whether the request may have reached the server. */
static void retry_or_fail(kvs__call *call, int rv, int sent, const char *what, int nng_rv) {
  kvs_client *c = call->c;
  if (retryable(rv) && (call->idempotent || !sent) && call->attempt < c->o.max_retries) {
    uint64_t ms = (uint64_t)c->o.retry_backoff_ms << (call->attempt < 16 ? call->attempt : 16);
    call->seed = call->seed * 6364136223846793005ull + 1442695040888963407ull;
    ms = ms / 2 + (call->seed >> 33) % (ms + 1); /* 0.5x .. 1.5x */
    if ((int64_t)ms < remaining_ms(call)) {
      KVS_LOGD("client", "retrying", "attempt=%u backoff_ms=%llu err=%s", call->attempt + 1,
               (unsigned long long)ms, kvs_errname(rv));
      if (!allowed(call)) return;
      call->attempt++;
      call->state = KVS__ST_SLEEP;
      atomic_fetch_add(&c->pool.in_nng, 1);
      nng_sleep_aio((nng_duration)(ms ? ms : 1), call->slot->aio);
      atomic_fetch_sub(&c->pool.in_nng, 1);
      return;
    }
  }
  fail(call, rv, what, nng_rv);
}

/* A deadline that passed while no connection was up is a connection
 * failure, and says so. */
static int no_connection(kvs__call *call) {
  if (kvs_client_connected(call->c) > 0) return 0;
  snprintf(call->errmsg, sizeof call->errmsg,
           "no connection to %s before the deadline (is kvstashd running?)", call->c->url);
  call_finish(call, KVS_ECONN);
  return 1;
}

static void slot_cb(void *arg) {
  kvs__slot *s = arg;
  kvs__call *call = s->call;
  if (!call) return; /* an abort of an idle slot at close */
  int nrv = nng_aio_result(s->aio);
  switch (call->state) {
  case KVS__ST_SEND:
    if (nrv) {
      nng_msg *m = nng_aio_get_msg(s->aio);
      if (m) nng_msg_free(m);
      if (nrv == NNG_ETIMEDOUT && no_connection(call)) return;
      retry_or_fail(call, kvs__err_from_nng(nrv), 0, "sending to", nrv);
      return;
    }
    if (!allowed(call)) return;
    call->state = KVS__ST_RECV;
    {
      int64_t ms = remaining_ms(call);
      nng_aio_set_timeout(s->aio, (nng_duration)(ms > 0 ? ms : 1));
    }
    {
      kvs_client *c = call->c; /* the call may be gone before recv returns */
      atomic_fetch_add(&c->pool.in_nng, 1);
      nng_ctx_recv(s->ctx, s->aio);
      atomic_fetch_sub(&c->pool.in_nng, 1);
    }
    return;
  case KVS__ST_RECV: {
    if (nrv) {
      if (nrv == NNG_ETIMEDOUT && no_connection(call)) return;
      retry_or_fail(call, kvs__err_from_nng(nrv), 1, "waiting for the reply from", nrv);
      return;
    }
    nng_msg *rep = nng_aio_get_msg(s->aio);
    int rv = call->check ? call->check(call, rep) : KVS_OK;
    if (rv < 0) {
      nng_msg_free(rep);
      retry_or_fail(call, rv, 1, "request refused by", 0);
      return;
    }
    call->rep = rep;
    call_finish(call, KVS_OK);
    return;
  }
  case KVS__ST_SLEEP:
    if (nrv) {
      fail(call, nrv == NNG_ECLOSED ? KVS_ECLOSED : kvs__err_from_nng(nrv), "backoff ended for",
           nrv);
      return;
    }
    send_attempt(call);
    return;
  default: return;
  }
}

void kvs__call_start(kvs__call *call) {
  kvs_client *c = call->c;
  pthread_mutex_lock(&c->mu);
  c->pool.active++; /* call_finish gives it back */
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    snprintf(call->errmsg, sizeof call->errmsg, "client closed");
    call_finish(call, KVS_ECLOSED);
    return;
  }
  kvs__slot *s = slot_get_locked(c);
  pthread_mutex_unlock(&c->mu);
  if (!s) {
    snprintf(call->errmsg, sizeof call->errmsg, "no memory for a context");
    call_finish(call, KVS_ENOMEM);
    return;
  }
  s->call = call;
  call->slot = s;
  send_attempt(call);
}

int kvs__call_wait(kvs__call *call) {
  pthread_mutex_lock(&call->mu);
  while (!call->finished)
    pthread_cond_wait(&call->cv, &call->mu);
  pthread_mutex_unlock(&call->mu);
  return call->rv;
}

void kvs__call_free(kvs__call *call) {
  if (!call) return;
  kvs__call_wait(call);
  if (call->req) nng_msg_free(call->req);
  if (call->rep) nng_msg_free(call->rep);
  pthread_mutex_destroy(&call->mu);
  pthread_cond_destroy(&call->cv);
  free(call);
}

int kvs__roundtrip(kvs_client *c, nng_msg *req, int idempotent, kvs__call_check_fn check,
                   nng_msg **rep) {
  *rep = NULL;
  kvs__call *call = kvs__call_new(c, req, idempotent, 0, check, NULL, NULL);
  if (!call) return kvs__seterr(c, KVS_ENOMEM, "no memory for a call");
  kvs__call_start(call);
  int rv = kvs__call_wait(call);
  if (rv == KVS_OK) {
    *rep = call->rep;
    call->rep = NULL;
  } else {
    kvs__seterr(c, rv, "%s", call->errmsg);
  }
  kvs__call_free(call);
  return rv;
}
