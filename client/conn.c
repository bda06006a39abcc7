/* conn.c - the connection pool and the transport under every call: one
 * request, one reply, on a REQ context taken from the pool, with a deadline
 * and retries with exponential backoff. Everything is driven by the slot's
 * nng aio, so a call never holds a thread while it waits; the synchronous
 * forms simply wait for the asynchronous one. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"

#include <nng/supplemental/tls/tls.h>
#include "kvs_gpu.h"
#include "kvs_wire.h"

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

/* ------------------------------------------------------------ options */
const char *kvs_client_version(void) { return "0.1.0"; }

void kvs_client_opts_init(kvs_client_opts *o) {
  memset(o, 0, sizeof *o);
  o->url = KVS_DEFAULT_URL;
  o->connect_timeout_ms = 2000;
  o->request_timeout_ms = 10000;
  o->n_sockets = 2;
  o->max_retries = 3;
  o->retry_backoff_ms = 10;
  o->max_msg_bytes = 1u << 30;
}

/* -------------------------------------------------------------- pool */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg) {
  kvs_client *c = arg;
  (void)p;
  pthread_mutex_lock(&c->mu);
  if (ev == NNG_PIPE_EV_ADD_POST)
    c->pipes++;
  else if (ev == NNG_PIPE_EV_REM_POST && c->pipes > 0)
    c->pipes--;
  /* a connection lost: the daemon may have restarted with other listeners,
   * so the next get asks again which stream it offers */
  if (ev == NNG_PIPE_EV_REM_POST) c->stream_known = 0;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

void kvs_client_lib_fini(void) { nng_fini(); }

int kvs_client_connected(kvs_client *c) {
  if (!c) return 0;
  pthread_mutex_lock(&c->mu);
  int n = c->pipes;
  pthread_mutex_unlock(&c->mu);
  return n;
}

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

/* Whether gets should try the shared-memory path: only where the server can
 * be on this host - ipc://, or tcp:// to a loopback address - unless the
 * caller says otherwise. Never over TLS (a TLS client is remote by intent). */
static int shm_wanted(const char *url, uint32_t flags) {
  if (flags & KVS_CLIENT_NO_SHM) return 0;
  if (!strncmp(url, "tls+tcp://", 10)) return 0;
  if (flags & KVS_CLIENT_SHM) return 1;
  if (!strncmp(url, "ipc://", 6)) return 1;
  const char *h = url + 6;
  return !strncmp(h, "127.", 4) || !strncmp(h, "localhost:", 10) || !strncmp(h, "[::1]:", 6);
}

/* Whether gets look for the daemon's byte stream by themselves: not when
 * opted out (the flag, or $KVS_CLIENT_STREAM=off|0|no as a fallback for a
 * program whose options cannot be changed), never over TLS (the stream is
 * plain TCP). */
static int stream_wanted(const char *url, uint32_t flags) {
  if (flags & KVS_CLIENT_NO_STREAM) return 0;
  if (!strncmp(url, "tls+tcp://", 10)) return 0;
  const char *e = getenv("KVS_CLIENT_STREAM");
  if (e && (!strcmp(e, "off") || !strcmp(e, "0") || !strcmp(e, "no"))) return 0;
  return 1;
}

/* The host of a tls+tcp:// URL, the name its certificate must carry by default. */
static void url_host(const char *url, char *out, size_t cap) {
  const char *h = strstr(url, "://");
  h = h ? h + 3 : url;
  size_t n = 0;
  if (*h == '[') { /* [v6]:port */
    h++;
    while (h[n] && h[n] != ']')
      n++;
  } else {
    while (h[n] && h[n] != ':' && h[n] != '/')
      n++;
  }
  if (n >= cap) n = cap - 1;
  memcpy(out, h, n);
  out[n] = 0;
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
  c->tls = cfg;
  char host[256];
  if (c->tls_name && *c->tls_name)
    snprintf(host, sizeof host, "%s", c->tls_name);
  else
    url_host(c->url, host, sizeof host);
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

kvs_err kvs_client_create(const kvs_client_opts *o, kvs_client **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  if (!o || !o->url || !*o->url) return KVS_EINVAL;
  if (!strncmp(o->url, "etcd://", 7)) return kvs__cluster_create(o, out); /* cluster.c */
  int tls = strncmp(o->url, "tls+tcp://", 10) == 0;
  if (strncmp(o->url, "tcp://", 6) && strncmp(o->url, "ipc://", 6) && !tls) return KVS_EINVAL;
  kvs_client *c = calloc(1, sizeof *c);
  if (!c) return KVS_ENOMEM;
  c->o = *o;
  kvs_client_opts d;
  kvs_client_opts_init(&d);
  if (!c->o.connect_timeout_ms) c->o.connect_timeout_ms = d.connect_timeout_ms;
  if (!c->o.request_timeout_ms) c->o.request_timeout_ms = d.request_timeout_ms;
  if (!c->o.n_sockets) c->o.n_sockets = d.n_sockets;
  if (c->o.n_sockets > 64) c->o.n_sockets = 64;
  if (!c->o.retry_backoff_ms) c->o.retry_backoff_ms = 1;
  if (!c->o.max_msg_bytes) c->o.max_msg_bytes = d.max_msg_bytes;
  c->url = dupstr(o->url);
  c->tenant = dupstr(o->tenant && *o->tenant ? o->tenant : "default");
  c->token = dupstr(o->token ? o->token : "");
  c->tls_ca = dupstr(o->tls_ca_file);
  c->tls_name = dupstr(o->tls_server_name);
  c->tls_cert = dupstr(o->tls_cert_key_file);
  c->o.tls_ca_file = c->tls_ca;
  c->o.tls_server_name = c->tls_name;
  c->o.tls_cert_key_file = c->tls_cert;
  c->socks = calloc(c->o.n_sockets, sizeof *c->socks);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  pthread_mutex_init(&c->shm_mu, NULL);
  pthread_cond_init(&c->work_cv, NULL);
  atomic_init(&c->shm_on, shm_wanted(c->url, c->o.flags));
  c->stream_auto = stream_wanted(c->url, c->o.flags);
  atomic_init(&c->next_id, 1);
  atomic_init(&c->in_nng, 0);
  c->o.url = c->url;
  c->o.tenant = c->tenant;
  c->o.token = c->token;
  if (!c->url || !c->tenant || !c->token || !c->socks) {
    kvs_client_free(c);
    return KVS_ENOMEM;
  }
  *out = c;
  kvs_wire_hdr probe;
  if (kvs_wire_hdr_init(&probe, KVS_OP_PING, 0, c->tenant, c->token, strlen(c->token)))
    return kvs__seterr(c, KVS_EINVAL,
                       "tenant must be 1..%u of [A-Za-z0-9_.-] and the token at most %u bytes",
                       KVS_WIRE_TENANT_MAX, KVS_WIRE_TOKEN_MAX);
  if (tls) {
    int rv = tls_setup(c);
    if (rv) return rv;
  }
  for (uint32_t i = 0; i < c->o.n_sockets; i++) {
    int rv = nng_req0_open(&c->socks[i]);
    if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "nng_req0_open: %s", nng_strerror(rv));
    c->n_socks++;
    nng_socket s = c->socks[i];
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
    if (rv == 0 && c->tls) rv = nng_dialer_set_ptr(dl, NNG_OPT_TLS_CONFIG, c->tls);
    if (rv == 0) rv = nng_dialer_start(dl, NNG_FLAG_NONBLOCK);
    if (rv) return kvs__seterr(c, kvs__err_from_nng(rv), "dial %s: %s", c->url, nng_strerror(rv));
  }
  if (c->o.flags & KVS_CLIENT_LAZY) return KVS_OK;
  uint64_t deadline = kvs_now_ns() + (uint64_t)c->o.connect_timeout_ms * 1000000ull;
  pthread_mutex_lock(&c->mu);
  while (c->pipes == 0 && kvs_now_ns() < deadline) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 5 * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  }
  int up = c->pipes;
  pthread_mutex_unlock(&c->mu);
  if (!up)
    return kvs__seterr(c, KVS_ECONN, "no connection to %s within %u ms (is kvstashd running?)",
                       c->url, c->o.connect_timeout_ms);
  return KVS_OK;
}

void kvs_client_free(kvs_client *c) {
  if (!c) return;
  if (c->cluster) return kvs__cluster_free(c);
  /* No call starts a new nng operation once closed is set (see allowed());
   * those in flight are aborted until none is left, and only then are the
   * sockets closed: closing a socket under a context operation that is just
   * starting is a race inside nng 1.5 (it panics). */
  pthread_mutex_lock(&c->mu);
  c->closed = 1;
  pthread_mutex_unlock(&c->mu);
  /* the workers first: a job may still start a call (a group it re-fetches
   * through the socket), which then ends at once with KVS_ECLOSED */
  pthread_mutex_lock(&c->shm_mu);
  c->work_stop = 1;
  pthread_cond_broadcast(&c->work_cv);
  pthread_mutex_unlock(&c->shm_mu);
  for (int i = 0; i < c->n_workers; i++)
    pthread_join(c->workers[i], NULL);
  kvs__stream_close(c); /* stream gets end; a fallback among them ends at once */
  pthread_mutex_lock(&c->mu);
  while (c->active > 0) {
    size_t n = 0;
    for (kvs__slot *s = c->all_slots; s; s = s->all_next)
      n++;
    nng_aio **aios = calloc(n ? n : 1, sizeof *aios);
    n = 0;
    for (kvs__slot *s = c->all_slots; s && aios; s = s->all_next)
      aios[n++] = s->aio;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < n; i++)
      nng_aio_abort(aios[i], NNG_ECLOSED);
    free(aios);
    pthread_mutex_lock(&c->mu);
    if (c->active > 0) {
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
  while (atomic_load(&c->bg_calls) > 0) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  /* an nng_ctx_send can still be returning on another thread after its
   * call has finished; closing the socket under it is the nng race */
  while (atomic_load(&c->in_nng) > 0) {
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  for (uint32_t i = 0; i < c->n_socks; i++)
    nng_close(c->socks[i]);
  kvs__slot *s = c->all_slots;
  while (s) {
    kvs__slot *next = s->all_next;
    nng_aio_free(s->aio);
    free(s);
    s = next;
  }
  for (kvs__shmmap *m = c->maps; m;) {
    kvs__shmmap *next = m->next;
    if (m->registered) kvs_gpu_host_unregister(m->base);
    munmap((void *)(uintptr_t)m->base, (size_t)m->size);
    free(m);
    m = next;
  }
  if (c->tls) nng_tls_config_free(c->tls);
  kvs__devpool_free(c);
  free(c->workers);
  pthread_mutex_destroy(&c->shm_mu);
  pthread_cond_destroy(&c->work_cv);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c->socks);
  free(c->tls_ca);
  free(c->tls_name);
  free(c->tls_cert);
  free(c->url);
  free(c->tenant);
  free(c->token);
  free(c);
}

/* ----------------------------------------------------------- calls */
static void slot_cb(void *arg);

/* Takes an idle slot or makes one on the next socket; under c->mu. */
static kvs__slot *slot_get_locked(kvs_client *c) {
  kvs__slot *s = c->free_slots;
  if (s) {
    c->free_slots = s->next;
    return s;
  }
  s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->sock = c->rr++ % c->n_socks;
  if (nng_aio_alloc(&s->aio, slot_cb, s)) {
    free(s);
    return NULL;
  }
  if (nng_ctx_open(&s->ctx, c->socks[s->sock])) {
    nng_aio_free(s->aio);
    free(s);
    return NULL;
  }
  s->all_next = c->all_slots;
  c->all_slots = s;
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
    call->slot->next = c->free_slots;
    c->free_slots = call->slot;
    call->slot = NULL;
  }
  c->active--;
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
  atomic_fetch_add(&c->in_nng, 1);
  nng_ctx_send(s->ctx, s->aio);
  atomic_fetch_sub(&c->in_nng, 1);
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
      atomic_fetch_add(&c->in_nng, 1);
      nng_sleep_aio((nng_duration)(ms ? ms : 1), call->slot->aio);
      atomic_fetch_sub(&c->in_nng, 1);
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
      atomic_fetch_add(&c->in_nng, 1);
      nng_ctx_recv(s->ctx, s->aio);
      atomic_fetch_sub(&c->in_nng, 1);
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
  c->active++; /* call_finish gives it back */
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

/* --------------------------------------------- same-host fast path */
uint64_t kvs__wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int kvs_client_shm_enabled(kvs_client *c) { return c ? atomic_load(&c->shm_on) : 0; }

kvs_err kvs_client_get_counters(kvs_client *c, kvs_client_counters *o) {
  if (!c || !o) return KVS_EINVAL;
  o->gets = atomic_load(&c->n_gets);
  o->shm_gets = atomic_load(&c->n_shm_gets);
  o->shm_fallbacks = atomic_load(&c->n_shm_fallbacks);
  o->shm_regroups = atomic_load(&c->n_shm_regroups);
  o->shm_bytes = atomic_load(&c->n_shm_bytes);
  o->leases = atomic_load(&c->n_leases);
  o->releases = atomic_load(&c->n_releases);
  o->release_lost = atomic_load(&c->n_release_lost);
  o->shm_maps = atomic_load(&c->n_shm_maps);
  o->stream_gets = atomic_load(&c->n_stream_gets);
  o->stream_fallbacks = atomic_load(&c->n_stream_fallbacks);
  return KVS_OK;
}

kvs_err kvs__shm_map(kvs_client *c, const char *name, int register_host, kvs__shmmap **out,
                     char *errbuf, size_t errlen) {
  *out = NULL;
  if (!name || name[0] != '/' || strlen(name) >= sizeof((kvs__shmmap *)0)->name) {
    snprintf(errbuf, errlen, "bad segment name");
    return KVS_EPROTO;
  }
  pthread_mutex_lock(&c->shm_mu);
  kvs__shmmap *m = c->maps;
  while (m && strcmp(m->name, name))
    m = m->next;
  kvs_err rv = KVS_OK;
  if (!m) {
    /* mapped under shm_mu: two gets of a new segment map it once */
    int fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size <= 0) {
      int e = errno;
      snprintf(errbuf, errlen, "cannot open segment %s: %s", name, strerror(e));
      rv = e == EACCES || e == EPERM ? KVS_EPERM : e == ENOENT ? KVS_ENOENT : KVS_EIO;
    } else {
      void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
      m = p == MAP_FAILED ? NULL : calloc(1, sizeof *m);
      if (!m) {
        snprintf(errbuf, errlen, "cannot map segment %s: %s", name,
                 p == MAP_FAILED ? strerror(errno) : "no memory");
        if (p != MAP_FAILED) munmap(p, (size_t)st.st_size);
        rv = KVS_EIO;
      } else {
        snprintf(m->name, sizeof m->name, "%s", name);
        m->base = p;
        m->size = (uint64_t)st.st_size;
        m->next = c->maps;
        c->maps = m;
        atomic_fetch_add(&c->n_shm_maps, 1);
      }
    }
    if (fd >= 0) close(fd);
  }
  if (m && register_host && !m->registered) {
    /* once per mapping: copies to the device are then DMA from the segment */
    m->registered = kvs_gpu_host_register(m->base, (size_t)m->size, 1) == KVS_OK ? 1 : -1;
  }
  pthread_mutex_unlock(&c->shm_mu);
  *out = m;
  return rv;
}

static void *worker_main(void *arg) {
  kvs_client *c = arg;
  pthread_mutex_lock(&c->shm_mu);
  for (;;) {
    while (!c->jobs && !c->work_stop)
      pthread_cond_wait(&c->work_cv, &c->shm_mu);
    kvs__job *j = c->jobs;
    if (!j) break; /* stopping, and nothing is left */
    c->jobs = j->next;
    if (!c->jobs) c->jobs_tail = NULL;
    pthread_mutex_unlock(&c->shm_mu);
    j->fn(j->arg);
    free(j);
    pthread_mutex_lock(&c->shm_mu);
  }
  pthread_mutex_unlock(&c->shm_mu);
  return NULL;
}

kvs_err kvs__work_submit(kvs_client *c, void (*fn)(void *), void *arg) {
  kvs__job *j = malloc(sizeof *j);
  if (!j) return KVS_ENOMEM;
  *j = (kvs__job){fn, arg, NULL};
  pthread_mutex_lock(&c->shm_mu);
  if (c->work_stop) {
    pthread_mutex_unlock(&c->shm_mu);
    free(j);
    return KVS_ECLOSED;
  }
  if (!c->workers) { /* first use: one thread per core, 2..16 ($KVS_CLIENT_WORKERS: 1..256) */
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int want = n < 2 ? 2 : n > 16 ? 16 : (int)n;
    const char *ew = getenv("KVS_CLIENT_WORKERS");
    if (ew && atoi(ew) >= 1 && atoi(ew) <= 256) want = atoi(ew);
    c->workers = calloc((size_t)want, sizeof *c->workers);
    for (int i = 0; c->workers && i < want; i++)
      if (pthread_create(&c->workers[i], NULL, worker_main, c) == 0) c->n_workers++;
  }
  if (c->n_workers == 0) {
    pthread_mutex_unlock(&c->shm_mu);
    free(j);
    return KVS_ENOMEM;
  }
  if (c->jobs_tail)
    c->jobs_tail->next = j;
  else
    c->jobs = j;
  c->jobs_tail = j;
  pthread_cond_signal(&c->work_cv);
  pthread_mutex_unlock(&c->shm_mu);
  return KVS_OK;
}
