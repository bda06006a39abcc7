/* svc.c - wiring of kvstashd: store, data plane, control plane, maintenance. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc_int.h"

struct kvs_svc {
  kvs_svc_config cfg;
  kvs__metrics met;
  kvs__store *st;
  kvs__dataplane *dp;
  kvs__streamplane *sp;
  kvs__http *http;
  kvs__cluster *cl;
  atomic_int ready;
  pthread_t maint;
  int maint_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stopping, stopped;
};

/* TTL expiry once a second; hit counters to disk every flush_interval_ms. */
static void *maint_main(void *arg) {
  kvs_svc *s = arg;
  uint64_t last_flush = kvs_now_ns();
  pthread_mutex_lock(&s->mu);
  while (!s->stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    if (s->stopping) break;
    pthread_mutex_unlock(&s->mu);
    uint64_t now = kvs_now_ns();
    int flush = now - last_flush >= (uint64_t)s->cfg.flush_interval_ms * 1000000ull;
    if (flush) last_flush = now;
    kvs__store_tick(s->st, flush);
    pthread_mutex_lock(&s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

kvs_err kvs_svc_create(const kvs_svc_config *c, kvs_svc **out) {
  if (!c || !out) return KVS_EINVAL;
  kvs_svc *s = calloc(1, sizeof *s);
  if (!s) return KVS_ENOMEM;
  s->cfg = *c;
  if (s->cfg.n_listen == 0) s->cfg.n_listen = 2; /* listen[0..1] hold the defaults */
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  s->met.start_unix_ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
  s->met.start_mono_ns = kvs_now_ns();
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  pthread_mutex_init(&s->met.auth.mu, NULL);
  pthread_mutex_init(&s->met.reload_mu, NULL);
  s->met.auth.cur = kvs__auth_new(&s->cfg);
  if (!s->met.auth.cur) {
    kvs_svc_free(s);
    return KVS_ENOMEM;
  }
  kvs_log_set_level(s->cfg.log_level);
  if (s->cfg.n_tenants == 0)
    KVS_LOGW("svc", "no tenant configured: auth is off, any tenant name is accepted", "%s", "");
  kvs_err rc = kvs__store_open(&s->cfg, &s->met, &s->st);
  if (rc == KVS_OK) rc = kvs__dataplane_start(&s->cfg, s->st, &s->met, &s->dp);
  if (rc == KVS_OK) rc = kvs__stream_start(&s->cfg, s->st, &s->met, &s->sp);
  if (rc == KVS_OK && s->cfg.http[0])
    rc = kvs__http_start(&s->cfg, s->st, &s->met, &s->ready, &s->http);
  if (rc == KVS_OK) rc = kvs__cluster_start(&s->cfg, s->st, &s->met, &s->cl);
  if (rc == KVS_OK) {
    rc = pthread_create(&s->maint, NULL, maint_main, s) == 0 ? KVS_OK : KVS_EINTERNAL;
    s->maint_started = rc == KVS_OK;
  }
  if (rc != KVS_OK) {
    kvs_svc_free(s);
    return rc;
  }
  atomic_store(&s->ready, 1);
  KVS_LOGI("svc", "kvstashd ready", "data_dir=%s durability=%s workers=%d", s->cfg.data_dir,
           kvs__durability_name(s->cfg.durability), s->cfg.workers);
  *out = s;
  return KVS_OK;
}

void kvs_svc_stop(kvs_svc *s) {
  if (!s || s->stopped) return;
  s->stopped = 1;
  atomic_store(&s->ready, 0);
  KVS_LOGI("svc", "draining", "%s", "");
  kvs__cluster_stop(s->cl); /* leave the cluster first: clients stop routing here */
  s->cl = NULL;
  kvs__stream_stop(s->sp); /* both planes finish the requests in flight */
  s->sp = NULL;
  kvs__dataplane_stop(s->dp);
  s->dp = NULL;
  pthread_mutex_lock(&s->mu);
  s->stopping = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (s->maint_started) pthread_join(s->maint, NULL);
  s->maint_started = 0;
  kvs__http_stop(s->http);
  s->http = NULL;
  kvs__store_close(s->st); /* flushes counters and the WAL */
  s->st = NULL;
  KVS_LOGI("svc", "stopped", "%s", "");
}

void kvs_svc_free(kvs_svc *s) {
  if (!s) return;
  kvs_svc_stop(s);
  kvs__auth_swap(&s->met.auth, NULL);
  pthread_mutex_destroy(&s->met.reload_mu);
  pthread_mutex_destroy(&s->met.auth.mu);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* ------------------------------------------------------------- reload */
static void reload_failed(kvs_svc *s, const char *why) {
  atomic_fetch_add(&s->met.reloads_err, 1);
  pthread_mutex_lock(&s->met.reload_mu);
  snprintf(s->met.reload_error, sizeof s->met.reload_error, "%s", why && *why ? why : "error");
  pthread_mutex_unlock(&s->met.reload_mu);
  KVS_LOGE("svc", "reload rejected, the config in force is kept", "why=%s", s->met.reload_error);
}

/* Logs each option of n that differs from o and cannot change live (the
 * options without LIVE in KVS_SVC_OPTION_MAP): its field, and for a repeated
 * option the count after it, byte for byte (config.c zero-fills strings). */
static int needs_restart(const kvs_svc_config *o, const kvs_svc_config *n) {
  int k = 0;
  for (size_t i = 0; i < kvs__n_opts; i++) {
    const kvs__opt *op = &kvs__opts[i];
    if (op->flags & KVS__OPT_LIVE) continue;
    size_t len = op->size + (op->flags & KVS__OPT_REPEAT ? sizeof(int) : 0);
    if (memcmp((const char *)o + op->off, (const char *)n + op->off, len) != 0) {
      KVS_LOGW("svc", "reload: option changed, needs restart (old value kept)", "key=%s", op->key);
      k++;
    }
  }
  return k;
}

kvs_err kvs_svc_reload(kvs_svc *s, const kvs_svc_config *c, const char *why) {
  if (!s) return KVS_EINVAL;
  if (!c) {
    reload_failed(s, why);
    return KVS_EINVAL;
  }
  kvs_svc_config n = *c;
  if (n.n_listen == 0) n.n_listen = 2; /* as kvs_svc_create */
  kvs__auth *a = kvs__auth_new(&n);
  if (!a) {
    reload_failed(s, "out of memory");
    return KVS_ENOMEM;
  }
  int restart = needs_restart(&s->cfg, &n);
  if (s->cfg.n_tenants && !n.n_tenants)
    KVS_LOGW("svc", "reload: no tenant configured any more: auth is off", "%s", "");
  kvs__auth_swap(&s->met.auth, a);
  /* the planes read the auth table (or their own copies of the config),
   * never these fields of s->cfg: only the reloading thread touches them */
  memcpy(s->cfg.tenants, n.tenants, sizeof s->cfg.tenants);
  s->cfg.n_tenants = n.n_tenants;
  s->cfg.log_level = n.log_level;
  kvs_log_set_level(n.log_level);
  atomic_fetch_add(&s->met.reloads_ok, 1);
  pthread_mutex_lock(&s->met.reload_mu);
  s->met.reload_error[0] = 0;
  pthread_mutex_unlock(&s->met.reload_mu);
  KVS_LOGW("svc", "config reloaded", "tenants=%d log_level=%d needs_restart=%d", n.n_tenants,
           n.log_level, restart);
  return KVS_OK;
}
