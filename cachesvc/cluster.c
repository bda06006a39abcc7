/* cluster.c - a kvstashd node in a cluster (docs/cluster.md).
 *
 * The node writes its record (data / stream / HTTP URLs, host id, zone,
 * capacity, R) under /kvstash/<cluster>/nodes/<id> with an etcd lease and
 * keeps the lease alive every ttl/3; it watches the prefix for the view of
 * the others (client/cluster_etcd.c). etcd is the only membership truth:
 * when it cannot be reached the node goes on serving and keeps its last
 * view; once etcd answers again the lease is renewed, or granted anew and
 * the record written again when it ran out. No secret goes through etcd:
 * tenants and tokens stay in each node's config. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster_int.h"
#include "kvs_conf.h"
#include "kvs_net.h"
#include "svc_int.h"
#include "tier.h"

/* ------------------------------------------------------------ config */
static int cpy(char *dst, size_t cap, const char *v) {
  size_t n = strlen(v);
  if (n >= cap) return -1;
  memset(dst, 0, cap); /* whole field: a reload compares fields byte for byte */
  memcpy(dst, v, n + 1);
  return 0;
}

int kvs__cluster_config_set(kvs_svc_cluster_config *c, const char *key, const char *v) {
  char *end;
  errno = 0;
  if (!strcmp(key, "cluster")) {
    kvs__cl_url u;
    if (*v && kvs__cl_url_parse(v, &u) != KVS_OK) return -1;
    if (*v && u.replicas) c->replicas = u.replicas;
    return cpy(c->url, sizeof c->url, v);
  }
  if (!strcmp(key, "cluster_node_id"))
    return (*v && !kvs__node_id_ok(v)) ? -1 : cpy(c->node_id, sizeof c->node_id, v);
  if (!strcmp(key, "cluster_advertise"))
    return (*v && strncmp(v, "tcp://", 6)) ? -1 : cpy(c->advertise, sizeof c->advertise, v);
  if (!strcmp(key, "cluster_advertise_stream"))
    return (*v && strncmp(v, "tcp+stream://", 13))
               ? -1
               : cpy(c->advertise_stream, sizeof c->advertise_stream, v);
  if (!strcmp(key, "cluster_zone")) return cpy(c->zone, sizeof c->zone, v);
  if (!strcmp(key, "cluster_host_id")) return cpy(c->host_id, sizeof c->host_id, v);
  if (!strcmp(key, "cluster_capacity"))
    return kvs_conf_parse_size(v, &c->capacity) == KVS_OK ? 0 : -1;
  if (!strcmp(key, "cluster_replicas") || !strcmp(key, "cluster_lease_ttl_s")) {
    unsigned long x = strtoul(v, &end, 10);
    if (errno || end == v || *end) return -1;
    if (key[8] == 'r') {
      if (x < 1 || x > KVS__CL_MAX_R) return -1;
      c->replicas = (uint32_t)x;
    } else {
      if (x < 2 || x > 300) return -1;
      c->lease_ttl_s = (uint32_t)x;
    }
    return 0;
  }
  return -2;
}

/* ----------------------------------------------------------- runtime */
static pthread_mutex_t metrics_mu = PTHREAD_MUTEX_INITIALIZER; /* also guards the events */

#define KVS__EV_RING 65536u
struct ev {
  uint64_t seq, ts_ms;
  uint8_t type, tier, tenant[8], key[16];
  kvs_model_id model;
};
struct kvs__cluster {
  const kvs_svc_config *cfg;
  kvs__cl_url u;
  kvs__etcd *e;
  kvs__node self;
  char key[256];
  char *record;
  int64_t lease;
  kvs__members *m;
  kvs__metrics *met;
  pthread_t th;
  atomic_int stop;
  atomic_int registered;
  atomic_int m_ready;  /* cl->m is set */
  atomic_int draining; /* someone marked this node draining (kvstash cluster drain) */
  atomic_uint_fast64_t registrations, keepalive_failures, view_changes;
  /* events, under metrics_mu: ring[seq % KVS__EV_RING] */
  struct ev *ring;
  uint64_t next_seq; /* seq of the next event; the first is 1 */
};

/* host:port of a tcp:// URL; a wildcard host becomes this host's name. */
static int url_host_port(const char *url, const char *scheme, char *out, size_t cap,
                         unsigned *port) {
  size_t sl = strlen(scheme);
  char host[200];
  int p = 0;
  if (strncmp(url, scheme, sl) || kvs_hostport_split(url + sl, host, sizeof host, &p) != KVS_OK)
    return -1;
  *port = (unsigned)p;
  if (!host[0] || !strcmp(host, "0.0.0.0") || !strcmp(host, "*") || !strcmp(host, "::")) {
    if (gethostname(host, sizeof host) != 0) return -1;
    host[sizeof host - 1] = 0;
  }
  int v6 = strchr(host, ':') != NULL;
  snprintf(out, cap, "%s%s%s%s:%u", scheme, v6 ? "[" : "", host, v6 ? "]" : "", *port);
  return 0;
}

static int build_self(kvs__cluster *cl) {
  const kvs_svc_config *c = cl->cfg;
  const kvs_svc_cluster_config *cc = &c->cluster;
  kvs__node *n = &cl->self;
  memset(n, 0, sizeof *n);
  unsigned port = 0, sport = 0;
  char tmp[256];
  if (cc->advertise[0]) {
    if (url_host_port(cc->advertise, "tcp://", n->data, sizeof n->data, &port)) return -1;
  } else {
    for (int i = 0; i < c->n_listen && !n->data[0]; i++)
      if (!strncmp(c->listen[i], "tcp://", 6) &&
          url_host_port(c->listen[i], "tcp://", n->data, sizeof n->data, &port))
        return -1;
  }
  if (!n->data[0]) return -1;
  if (cc->advertise_stream[0]) {
    if (url_host_port(cc->advertise_stream, "tcp+stream://", n->stream, sizeof n->stream, &sport))
      return -1;
  } else {
    for (int i = 0; i < c->n_listen && !n->stream[0]; i++)
      if (!strncmp(c->listen[i], "tcp+stream://", 13))
        url_host_port(c->listen[i], "tcp+stream://", n->stream, sizeof n->stream, &sport);
  }
  snprintf(n->http, sizeof n->http, "%s", c->http);
  if (cc->node_id[0]) {
    snprintf(n->id, sizeof n->id, "%s", cc->node_id);
  } else {
    char hn[64];
    if (gethostname(hn, sizeof hn) != 0) snprintf(hn, sizeof hn, "node");
    hn[sizeof hn - 1] = 0;
    snprintf(tmp, sizeof tmp, "%.40s-%u", hn, port);
    memcpy(n->id, tmp, strlen(tmp) + 1);
    if (!kvs__node_id_ok(n->id)) return -1;
  }
  if (cc->host_id[0])
    snprintf(n->host, sizeof n->host, "%s", cc->host_id);
  else
    kvs__host_id(n->host, sizeof n->host);
  snprintf(n->zone, sizeof n->zone, "%s", cc->zone);
  n->capacity = cc->capacity ? cc->capacity : c->disk_bytes;
  n->replicas = cc->replicas;
  n->started_ms = (uint64_t)time(NULL) * 1000;
  return 0;
}

static void sleep_stop(kvs__cluster *cl, uint32_t ms) {
  for (uint32_t t = 0; t < ms && !atomic_load(&cl->stop); t += 10) {
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
  }
}

static kvs_err do_register(kvs__cluster *cl) {
  int64_t id = 0;
  if (atomic_load(&cl->draining) && !cl->self.draining) { /* keep the mark on re-registering */
    cl->self.draining = 1;
    char *j = kvs__node_to_json(&cl->self);
    if (!j) return KVS_ENOMEM;
    free(cl->record);
    cl->record = j;
  }
  KVS_TRY(kvs__etcd_lease_grant(cl->e, cl->cfg->cluster.lease_ttl_s, &id));
  kvs_err rv = kvs__etcd_put(cl->e, cl->key, cl->record, strlen(cl->record), id);
  if (rv != KVS_OK) {
    kvs__etcd_lease_revoke(cl->e, id);
    return rv;
  }
  cl->lease = id;
  atomic_store(&cl->registered, 1);
  atomic_fetch_add(&cl->registrations, 1);
  KVS_LOGI("cluster", "registered", "key=%s lease=%lld", cl->key, (long long)id);
  return KVS_OK;
}

/* Keeps the record alive: keepalive every ttl/3; a lost lease (etcd lost
 * it, or it ran out while etcd was away) is granted again and the record
 * written again. */
static void *keep_main(void *arg) {
  kvs__cluster *cl = arg;
  uint32_t period = cl->cfg->cluster.lease_ttl_s * 1000 / 3;
  uint32_t backoff = 100;
  while (!atomic_load(&cl->stop)) {
    if (!cl->lease) {
      kvs_err rv = do_register(cl);
      if (rv != KVS_OK) {
        KVS_LOGD("cluster", "registration failed, retrying", "err=%s", kvs_errname(rv));
        sleep_stop(cl, backoff);
        backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
        continue;
      }
      backoff = 100;
    }
    sleep_stop(cl, period);
    if (atomic_load(&cl->stop)) break;
    int64_t left = 0;
    kvs_err rv = kvs__etcd_lease_keepalive(cl->e, cl->lease, &left);
    if (rv == KVS_OK && left > 0) continue;
    atomic_fetch_add(&cl->keepalive_failures, 1);
    if (rv == KVS_OK || rv == KVS_ENOENT) { /* the lease is gone: register again */
      KVS_LOGW("cluster", "lease lost, registering again", "lease=%lld", (long long)cl->lease);
      atomic_store(&cl->registered, 0);
      cl->lease = 0;
    } else {
      KVS_LOGD("cluster", "keepalive failed (etcd away?), serving on", "err=%s", kvs_errname(rv));
    }
  }
  return NULL;
}

static void on_view(void *arg) {
  kvs__cluster *cl = arg;
  atomic_fetch_add(&cl->view_changes, 1);
  kvs__node *nodes = NULL;
  size_t n = 0;
  /* the first calls may come before kvs__members_start has returned cl->m */
  if (!atomic_load(&cl->m_ready) || kvs__members_get(cl->m, &nodes, &n, NULL) != KVS_OK) return;
  for (size_t i = 0; i < n; i++)
    if (!strcmp(nodes[i].id, cl->self.id) && nodes[i].draining && !atomic_load(&cl->draining)) {
      atomic_store(&cl->draining, 1);
      KVS_LOGW("cluster", "this node is draining: it owns no new keys", "node=%s", cl->self.id);
    }
  free(nodes);
}

kvs_err kvs__cluster_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                           kvs__cluster **out) {
  (void)st;
  *out = NULL;
  if (!c->cluster.url[0]) return KVS_OK;
  kvs__cluster *cl = calloc(1, sizeof *cl);
  if (!cl) return KVS_ENOMEM;
  cl->cfg = c;
  if (kvs__cl_url_parse(c->cluster.url, &cl->u) != KVS_OK || build_self(cl)) {
    KVS_LOGE("cluster", "cannot describe this node (cluster, cluster_advertise, listen?)", "url=%s",
             c->cluster.url);
    free(cl);
    return KVS_EINVAL;
  }
  snprintf(cl->key, sizeof cl->key, "/kvstash/%s/nodes/%s", cl->u.name, cl->self.id);
  cl->record = kvs__node_to_json(&cl->self);
  cl->e = kvs__etcd_new(&cl->u, 1000);
  if (!cl->record || !cl->e) {
    kvs__cluster_stop(cl);
    return KVS_ENOMEM;
  }
  kvs_err rv = kvs__members_start(&cl->u, 1000, on_view, cl, &cl->m);
  if (rv == KVS_OK) {
    atomic_store(&cl->m_ready, 1);
    on_view(cl); /* a change seen before m_ready was set */
  }
  if (rv == KVS_OK && pthread_create(&cl->th, NULL, keep_main, cl) != 0) rv = KVS_EINTERNAL;
  if (rv != KVS_OK) {
    kvs__members_stop(cl->m);
    kvs__etcd_free(cl->e);
    free(cl->record);
    free(cl);
    return rv;
  }
  cl->ring = calloc(KVS__EV_RING, sizeof *cl->ring);
  if (!cl->ring) {
    kvs__cluster_stop(cl);
    return KVS_ENOMEM;
  }
  cl->next_seq = 1;
  cl->met = met;
  atomic_store(&met->cluster, cl);
  KVS_LOGI("cluster", "joining", "cluster=%s node=%s data=%s", cl->u.name, cl->self.id,
           cl->self.data);
  *out = cl;
  return KVS_OK;
}

void kvs__cluster_stop(kvs__cluster *cl) {
  if (!cl) return;
  atomic_store(&cl->stop, 1);
  if (cl->met) {
    pthread_mutex_lock(&metrics_mu); /* /metrics may be reading it */
    atomic_store(&cl->met->cluster, NULL);
    pthread_mutex_unlock(&metrics_mu);
  }
  if (cl->m) { /* started */
    pthread_join(cl->th, NULL);
    if (cl->lease) { /* leave now rather than when the lease runs out */
      kvs__etcd_delete(cl->e, cl->key);
      kvs__etcd_lease_revoke(cl->e, cl->lease);
    }
    kvs__members_stop(cl->m);
  }
  kvs__etcd_free(cl->e);
  free(cl->record);
  free(cl->ring);
  free(cl);
}

void kvs__event(kvs__metrics *m, int type, const uint8_t tenant_id[8], const uint8_t key[16],
                const kvs_model_id *model, uint8_t tier) {
  if (!atomic_load_explicit(&m->cluster, memory_order_relaxed)) return; /* not in a cluster */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  pthread_mutex_lock(&metrics_mu);
  kvs__cluster *cl = atomic_load(&m->cluster);
  if (cl && cl->ring) {
    struct ev *e = &cl->ring[cl->next_seq % KVS__EV_RING];
    e->seq = cl->next_seq++;
    e->ts_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    e->type = (uint8_t)type;
    e->tier = tier;
    memcpy(e->tenant, tenant_id, 8);
    memcpy(e->key, key, 16);
    e->model = *model;
  }
  pthread_mutex_unlock(&metrics_mu);
}

static void hex(const uint8_t *p, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++)
    out[2 * i] = d[p[i] >> 4], out[2 * i + 1] = d[p[i] & 15];
  out[2 * n] = 0;
}

char *kvs__events_json(kvs__metrics *m, const char *after_s, const char *limit_s) {
  uint64_t after = after_s ? strtoull(after_s, NULL, 10) : 0;
  uint64_t limit = limit_s ? strtoull(limit_s, NULL, 10) : 1000;
  if (limit == 0 || limit > 10000) limit = 10000;
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  if (!f) return NULL;
  pthread_mutex_lock(&metrics_mu);
  kvs__cluster *cl = atomic_load(&m->cluster);
  if (!cl || !cl->ring) {
    pthread_mutex_unlock(&metrics_mu);
    fclose(f);
    free(out);
    return NULL;
  }
  uint64_t oldest = cl->next_seq > KVS__EV_RING ? cl->next_seq - KVS__EV_RING : 1;
  uint64_t from = after + 1 < oldest ? oldest : after + 1;
  uint64_t to = from + limit < cl->next_seq ? from + limit : cl->next_seq;
  fprintf(f, "{\"node\":\"%s\",\"dropped\":%llu,\"next\":%llu,\"more\":%s,\"events\":[",
          cl->self.id, (unsigned long long)(from - (after + 1)), (unsigned long long)(to - 1),
          to < cl->next_seq ? "true" : "false");
  for (uint64_t s = from; s < to; s++) {
    const struct ev *e = &cl->ring[s % KVS__EV_RING];
    char t[17], k[33], md[33];
    hex(e->tenant, 8, t);
    hex(e->key, 16, k);
    hex(e->model.b, 16, md);
    fprintf(f,
            "%s{\"seq\":%llu,\"ts_ms\":%llu,\"type\":\"%s\",\"tenant\":\"%s\","
            "\"block_hashes\":[\"%s\"],\"model\":\"%s\",\"medium\":\"%s\"}",
            s == from ? "" : ",", (unsigned long long)e->seq, (unsigned long long)e->ts_ms,
            e->type == KVS__EV_STORED ? "BlockStored" : "BlockRemoved", t, k, md,
            kvs__tier_name(e->tier));
  }
  pthread_mutex_unlock(&metrics_mu);
  fprintf(f, "]}\n");
  fclose(f);
  return out;
}

void kvs__cluster_metrics(kvs__metrics *met, char *out, size_t cap) {
  out[0] = 0;
  pthread_mutex_lock(&metrics_mu);
  kvs__cluster *cl = atomic_load(&met->cluster);
  if (!cl) {
    pthread_mutex_unlock(&metrics_mu);
    return;
  }
  kvs__node *nodes = NULL;
  size_t n = 0;
  uint64_t ver = 0;
  kvs__members_get(cl->m, &nodes, &n, &ver);
  free(nodes);
  snprintf(out, cap,
           "# TYPE kvstash_cluster_nodes gauge\nkvstash_cluster_nodes %zu\n"
           "# TYPE kvstash_cluster_registered gauge\nkvstash_cluster_registered %d\n"
           "# TYPE kvstash_cluster_etcd_up gauge\nkvstash_cluster_etcd_up %d\n"
           "# TYPE kvstash_cluster_registrations_total counter\n"
           "kvstash_cluster_registrations_total %llu\n"
           "# TYPE kvstash_cluster_keepalive_failures_total counter\n"
           "kvstash_cluster_keepalive_failures_total %llu\n"
           "# TYPE kvstash_cluster_view_changes_total counter\n"
           "kvstash_cluster_view_changes_total %llu\n",
           n, atomic_load(&cl->registered), kvs__members_etcd_ok(cl->m),
           (unsigned long long)atomic_load(&cl->registrations),
           (unsigned long long)atomic_load(&cl->keepalive_failures),
           (unsigned long long)atomic_load(&cl->view_changes));
  pthread_mutex_unlock(&metrics_mu);
}
