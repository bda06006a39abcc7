/* node.c - a client of one kvstashd (tcp://, ipc://, tls+tcp://): its
 * options (with the documented environment fallbacks), creation and
 * teardown over the layers below - the REQ/REP pool (conn.c), the byte
 * stream (stream.c), the same-host mappings and workers (shm.c), the device
 * buffers of gets (get.c) - and its counters. The public kvs_client_create
 * (api.c) makes one of these, or a cluster client (cluster.c) whose members
 * are these. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "kvs_gpu.h"
#include "kvs_wire.h"

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

/* The environment, only where the caller's options leave a choice open
 * (docs/client.md "Tuning"): for a program whose options cannot be changed.
 * $KVS_CLIENT_STREAM=off|0|no  -> KVS_CLIENT_NO_STREAM
 * $KVS_CLIENT_BATCH=0          -> KVS_CLIENT_NO_WHOLE_DECODE
 * $KVS_CLIENT_DMA=staged       -> KVS_CLIENT_DMA_STAGED
 * ($KVS_CLIENT_GPU_ENCODE=0 is read by each device put instead: put.c)
 * $KVS_CLIENT_WORKERS=1..256   -> n_workers, when 0 */
static void opts_from_env(kvs_client_opts *o) {
  const char *e = getenv("KVS_CLIENT_STREAM");
  if (e && (!strcmp(e, "off") || !strcmp(e, "0") || !strcmp(e, "no")))
    o->flags |= KVS_CLIENT_NO_STREAM;
  e = getenv("KVS_CLIENT_BATCH");
  if (e && !strcmp(e, "0")) o->flags |= KVS_CLIENT_NO_WHOLE_DECODE;
  e = getenv("KVS_CLIENT_DMA");
  if (e && !strcmp(e, "staged")) o->flags |= KVS_CLIENT_DMA_STAGED;
  e = getenv("KVS_CLIENT_WORKERS");
  if (!o->n_workers && e && atoi(e) >= 1 && atoi(e) <= 256) o->n_workers = (uint32_t)atoi(e);
  if (o->n_workers > 256) o->n_workers = 256;
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
 * opted out (KVS_CLIENT_NO_STREAM), never over TLS (the stream is plain
 * TCP). */
static int stream_wanted(const char *url, uint32_t flags) {
  if (flags & KVS_CLIENT_NO_STREAM) return 0;
  if (!strncmp(url, "tls+tcp://", 10)) return 0;
  return 1;
}

kvs_err kvs__node_create(const kvs_client_opts *o, kvs_client **out) {
  if (!out) return KVS_EINVAL;
  *out = NULL;
  if (!o || !o->url || !*o->url) return KVS_EINVAL;
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
  c->pool.socks = calloc(c->o.n_sockets, sizeof *c->pool.socks);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  pthread_mutex_init(&c->shm.mu, NULL);
  pthread_mutex_init(&c->shm.bounce_mu, NULL);
  pthread_cond_init(&c->shm.work_cv, NULL);
  opts_from_env(&c->o);
  atomic_init(&c->shm.on, shm_wanted(c->url, c->o.flags));
  c->stream.auto_find = stream_wanted(c->url, c->o.flags);
  atomic_init(&c->pool.next_id, 1);
  atomic_init(&c->pool.in_nng, 0);
  c->o.url = c->url;
  c->o.tenant = c->tenant;
  c->o.token = c->token;
  if (!c->url || !c->tenant || !c->token || !c->pool.socks) {
    kvs__node_free(c);
    return KVS_ENOMEM;
  }
  *out = c;
  kvs_wire_hdr probe;
  if (kvs_wire_hdr_init(&probe, KVS_OP_PING, 0, c->tenant, c->token, strlen(c->token)))
    return kvs__seterr(c, KVS_EINVAL,
                       "tenant must be 1..%u of [A-Za-z0-9_.-] and the token at most %u bytes",
                       KVS_WIRE_TENANT_MAX, KVS_WIRE_TOKEN_MAX);
  return kvs__pool_open(c);
}

void kvs__node_free(kvs_client *c) {
  if (!c) return;
  /* No call starts a new nng operation once closed is set (see allowed());
   * those in flight are aborted until none is left, and only then are the
   * sockets closed: closing a socket under a context operation that is just
   * starting is a race inside nng 1.5 (it panics). */
  pthread_mutex_lock(&c->mu);
  c->closed = 1;
  pthread_mutex_unlock(&c->mu);
  /* the workers first: a job may still start a call (a group it re-fetches
   * through the socket), which then ends at once with KVS_ECLOSED */
  kvs__shm_workers_stop(c);
  kvs__stream_close(c); /* stream gets end; a fallback among them ends at once */
  kvs__pool_close(c);
  kvs__shm_unmap_all(c);
  kvs__devpool_free(c);
  if (c->shm.bounce) kvs_gpu_free_host(c->shm.bounce);
  pthread_mutex_destroy(&c->shm.bounce_mu);
  pthread_mutex_destroy(&c->shm.mu);
  pthread_cond_destroy(&c->shm.work_cv);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c->pool.socks);
  free(c->tls_ca);
  free(c->tls_name);
  free(c->tls_cert);
  free(c->url);
  free(c->tenant);
  free(c->token);
  free(c);
}

kvs_err kvs_client_get_counters(kvs_client *c, kvs_client_counters *o) {
  if (!c || !o) return KVS_EINVAL;
  o->gets = atomic_load(&c->ctr.gets);
  o->shm_gets = atomic_load(&c->ctr.shm_gets);
  o->shm_fallbacks = atomic_load(&c->ctr.shm_fallbacks);
  o->shm_regroups = atomic_load(&c->ctr.shm_regroups);
  o->shm_bytes = atomic_load(&c->ctr.shm_bytes);
  o->leases = atomic_load(&c->ctr.leases);
  o->releases = atomic_load(&c->ctr.releases);
  o->release_lost = atomic_load(&c->ctr.release_lost);
  o->shm_maps = atomic_load(&c->ctr.shm_maps);
  o->stream_gets = atomic_load(&c->ctr.stream_gets);
  o->stream_fallbacks = atomic_load(&c->ctr.stream_fallbacks);
  o->shm_puts = atomic_load(&c->ctr.shm_puts);
  o->sock_puts = atomic_load(&c->ctr.sock_puts);
  o->shm_put_fallbacks = atomic_load(&c->ctr.shm_put_fallbacks);
  return KVS_OK;
}
