/* cluster.c - a kvs_client over a cluster (kvstash_cluster.h,
 * docs/cluster.md): etcd:// URLs, routing by HRW, fan-out puts, reads
 * across owners with read repair, the cluster lookup and the rebalance.
 *
 * A cluster client is a kvs_client whose `cluster` is set: the calls of
 * kvstash.h come here (hooks at their top in ops.c / conn.c); each member
 * node gets an ordinary kvs_client of the same tenant and token, made on
 * first use and kept until kvs_client_free (a node that leaves and comes
 * back at the same URL reuses it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_int.h"
#include "cluster_int.h"
#include "kvs_wire.h"
#include "kvstash_admin.h"
#include "kvstash_cluster.h"

typedef struct member {
  char id[KVS__CL_ID_MAX + 1];
  char data[256];
  kvs_client *c; /* NULL while being made */
} member;

struct kvs__cluster {
  kvs__cl_url u;
  kvs_client_opts o; /* for the members (url set per member) */
  kvs__members *m;
  char host[80];
  pthread_mutex_t mu; /* guards members */
  member *mem;
  size_t n_mem, cap_mem;
  atomic_uint_fast64_t put_replaced, get_fallbacks, repairs, repair_failed, views;
  atomic_int repairs_inflight;
};

static void on_view(void *arg) {
  struct kvs__cluster *cl = arg;
  atomic_fetch_add(&cl->views, 1);
}

kvs_err kvs__cluster_create(const kvs_client_opts *o, kvs_client **out) {
  kvs__cl_url u;
  if (kvs__cl_url_parse(o->url, &u) != KVS_OK) return KVS_EINVAL;
  kvs_client *c = calloc(1, sizeof *c);
  struct kvs__cluster *cl = calloc(1, sizeof *cl);
  if (!c || !cl) {
    free(c);
    free(cl);
    return KVS_ENOMEM;
  }
  c->cluster = cl;
  c->o = *o;
  kvs_client_opts d;
  kvs_client_opts_init(&d);
  if (!c->o.connect_timeout_ms) c->o.connect_timeout_ms = d.connect_timeout_ms;
  if (!c->o.request_timeout_ms) c->o.request_timeout_ms = d.request_timeout_ms;
  c->url = strdup(o->url);
  c->tenant = strdup(o->tenant && *o->tenant ? o->tenant : "default");
  c->token = strdup(o->token ? o->token : "");
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  pthread_mutex_init(&c->shm.mu, NULL);
  pthread_cond_init(&c->shm.work_cv, NULL);
  pthread_mutex_init(&cl->mu, NULL);
  cl->u = u;
  cl->o = c->o;
  cl->o.tenant = c->tenant;
  cl->o.token = c->token;
  cl->o.tls_ca_file = cl->o.tls_server_name = cl->o.tls_cert_key_file = NULL;
  /* a node that dies under a call costs its member's deadline: half of the
   * caller's, so that the next owner still answers within it */
  cl->o.request_timeout_ms = c->o.request_timeout_ms / 2 > 200 ? c->o.request_timeout_ms / 2 : 200;
  kvs__host_id(cl->host, sizeof cl->host);
  *out = c;
  if (!c->url || !c->tenant || !c->token) return KVS_ENOMEM;
  kvs_wire_hdr probe;
  if (kvs_wire_hdr_init(&probe, KVS_OP_PING, 0, c->tenant, c->token, strlen(c->token)))
    return kvs__seterr(c, KVS_EINVAL, "tenant must be 1..%u of [A-Za-z0-9_.-], token <= %u bytes",
                       KVS_WIRE_TENANT_MAX, KVS_WIRE_TOKEN_MAX);
  kvs_err rv = kvs__members_start(
      &u, c->o.connect_timeout_ms < 1000 ? c->o.connect_timeout_ms : 1000, on_view, cl, &cl->m);
  if (rv != KVS_OK) return kvs__seterr(c, rv, "cannot start the membership watch");
  if (c->o.flags & KVS_CLIENT_LAZY) return KVS_OK;
  if (!kvs__members_wait(cl->m, c->o.connect_timeout_ms))
    return kvs__seterr(c, KVS_ECONN, "etcd at %s did not answer within %u ms", u.ep[0] + 7,
                       c->o.connect_timeout_ms);
  return KVS_OK;
}

void kvs__cluster_free(kvs_client *c) {
  struct kvs__cluster *cl = c->cluster;
  for (int i = 0; i < 1000 && atomic_load(&cl->repairs_inflight) > 0; i++) {
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
  }
  kvs__members_stop(cl->m);
  for (size_t i = 0; i < cl->n_mem; i++)
    kvs__node_free(cl->mem[i].c);
  free(cl->mem);
  pthread_mutex_destroy(&cl->mu);
  free(cl);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->shm.mu);
  pthread_cond_destroy(&c->shm.work_cv);
  free(c->url);
  free(c->tenant);
  free(c->token);
  free(c);
}

int kvs_client_is_cluster(kvs_client *c) { return c && c->cluster; }

/* The member client of node nd (made on first use; a node is dialed for at
 * most 300 ms here, and its client then keeps reconnecting on its own). */
static kvs_client *member_of(struct kvs__cluster *cl, const kvs__node *nd) {
  pthread_mutex_lock(&cl->mu);
  for (size_t i = 0; i < cl->n_mem; i++)
    if (!strcmp(cl->mem[i].id, nd->id) && !strcmp(cl->mem[i].data, nd->data)) {
      kvs_client *m = cl->mem[i].c;
      pthread_mutex_unlock(&cl->mu);
      return m;
    }
  pthread_mutex_unlock(&cl->mu);
  kvs_client_opts o = cl->o;
  o.url = nd->data;
  o.flags |= KVS_CLIENT_LAZY;
  kvs_client *mc = NULL;
  if (kvs__node_create(&o, &mc) != KVS_OK) {
    kvs__node_free(mc);
    return NULL;
  }
  /* wait briefly for a first connection, so that the caller can tell a
   * dead node from a live one */
  for (int i = 0; i < 60 && !kvs_client_connected(mc); i++) {
    struct timespec ts = {0, 5 * 1000000};
    nanosleep(&ts, NULL);
  }
  pthread_mutex_lock(&cl->mu);
  for (size_t i = 0; i < cl->n_mem; i++)
    if (!strcmp(cl->mem[i].id, nd->id) && !strcmp(cl->mem[i].data, nd->data)) {
      kvs_client *m = cl->mem[i].c; /* made by another thread meanwhile */
      pthread_mutex_unlock(&cl->mu);
      kvs__node_free(mc);
      return m;
    }
  if (cl->n_mem == cl->cap_mem) {
    size_t cap = cl->cap_mem ? cl->cap_mem * 2 : 8;
    member *p = realloc(cl->mem, cap * sizeof *p);
    if (!p) {
      pthread_mutex_unlock(&cl->mu);
      kvs__node_free(mc);
      return NULL;
    }
    cl->mem = p;
    cl->cap_mem = cap;
  }
  member *m = &cl->mem[cl->n_mem++];
  snprintf(m->id, sizeof m->id, "%s", nd->id);
  snprintf(m->data, sizeof m->data, "%s", nd->data);
  m->c = mc;
  pthread_mutex_unlock(&cl->mu);
  return mc;
}

uint32_t kvs_cluster_replicas(kvs_client *c) {
  if (!c || !c->cluster) return 0;
  struct kvs__cluster *cl = c->cluster;
  if (cl->u.replicas) return cl->u.replicas;
  kvs__node *nodes;
  size_t n;
  uint32_t r = 0;
  if (kvs__members_get(cl->m, &nodes, &n, NULL) == KVS_OK)
    for (size_t i = 0; i < n; i++)
      if (nodes[i].replicas > r) r = nodes[i].replicas;
  free(nodes);
  return r ? r : 2;
}

/* A route: the view, and the nodes to try for a key, in order. */
typedef struct route {
  kvs__node *nodes;
  size_t n;
  size_t order[64];
  size_t n_order;
  size_t n_owners; /* the first n_owners of order are the key's owners */
  uint32_t r;
} route;

static void route_free(route *rt) { free(rt->nodes); }

/* Owners in HRW order, then the rest (up to `extra` more). With
 * prefer_local, an owner on this host moves to the front; reachable
 * owners go before unreachable ones. */
static kvs_err route_key(kvs_client *c, const kvs_key *key, size_t extra, int prefer_local,
                         route *rt) {
  struct kvs__cluster *cl = c->cluster;
  memset(rt, 0, sizeof *rt);
  rt->r = kvs_cluster_replicas(c);
  KVS_TRY(kvs__members_get(cl->m, &rt->nodes, &rt->n, NULL));
  if (rt->n == 0)
    return kvs__seterr(c, KVS_ECONN, "cluster %s has no node (etcd %s)", cl->u.name,
                       kvs__members_etcd_ok(cl->m) ? "up" : "unreachable");
  size_t k = rt->r + extra;
  if (k > rt->n) k = rt->n;
  if (k > 64) k = 64;
  kvs__hrw_order(key, rt->nodes, rt->n, rt->order, k);
  rt->n_order = k;
  rt->n_owners = rt->r < k ? rt->r : k;
  if (prefer_local) {
    for (size_t i = 1; i < rt->n_owners; i++)
      if (!strcmp(rt->nodes[rt->order[i]].host, cl->host) &&
          strcmp(rt->nodes[rt->order[0]].host, cl->host)) {
        size_t t = rt->order[i];
        memmove(&rt->order[1], &rt->order[0], i * sizeof rt->order[0]);
        rt->order[0] = t;
        break;
      }
  }
  return KVS_OK;
}

/* Errors that say "this node, not the request": try another node. */
static int node_error(int rv) {
  return rv == KVS_ECONN || rv == KVS_ETIMEDOUT || rv == KVS_ECLOSED || rv == KVS_EBUSY ||
         rv == KVS_EAGAIN || rv == KVS_ENOSPC || rv == KVS_EIO || rv == KVS_EINTERNAL ||
         rv == KVS_ECANCELED;
}

/* ------------------------------------------------------------------ put */
kvs_err kvs__cluster_put(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, const void *kv,
                         const kvs_put_opts *o) {
  if (!model || !tokens || !chunk || !layout || !kv) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  route rt;
  KVS_TRY(route_key(c, &chunk->key, 64, 0, &rt));
  /* reachable nodes first, in HRW order: an unreachable owner is replaced
   * by the next node (a later rebalance puts the copy where it belongs) */
  size_t cand[64], n_cand = 0;
  kvs_client *mc[64];
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; i < rt.n_order; i++) {
      const kvs__node *nd = &rt.nodes[rt.order[i]];
      kvs_client *m = member_of(cl, nd);
      int up = m && kvs_client_connected(m) > 0 && !nd->draining;
      if ((pass == 0) != up) continue;
      if (!m) continue;
      mc[n_cand] = m;
      cand[n_cand++] = i;
    }
  size_t want = rt.r < rt.n ? rt.r : rt.n;
  size_t acks = 0, next = 0;
  int last = KVS_ECONN;
  char why[KVS__ERRMSG_LEN] = "";
  while (acks < want && next < n_cand) {
    size_t batch = want - acks, started = 0;
    kvs_op *ops[KVS__CL_MAX_R];
    size_t who[KVS__CL_MAX_R];
    if (batch > KVS__CL_MAX_R) batch = KVS__CL_MAX_R;
    for (; started < batch && next < n_cand; next++) {
      int rv = kvs__node_put_start(mc[next], model, tokens, chunk, layout, kv, o, &ops[started]);
      if (rv != KVS_OK) {
        last = rv;
        snprintf(why, sizeof why, "%s", kvs_client_errmsg(mc[next]));
        if (!node_error(rv)) break;
        continue;
      }
      who[started++] = next;
    }
    for (size_t i = 0; i < started; i++) {
      int rv = kvs_op_wait(ops[i]);
      if (rv == KVS_OK) {
        acks++;
        if (cand[who[i]] >= rt.n_owners) atomic_fetch_add(&cl->put_replaced, 1);
      } else {
        last = rv;
        snprintf(why, sizeof why, "%s: %s", rt.nodes[rt.order[cand[who[i]]]].id,
                 kvs_client_errmsg(mc[who[i]]));
      }
      kvs_op_free(ops[i]);
    }
    if (!node_error(last) && acks < want && last != KVS_ECONN) break;
  }
  route_free(&rt);
  if (acks >= want) return KVS_OK;
  return kvs__seterr(c, last, "put stored on %zu of %zu nodes (%s)", acks, want, why);
}

/* ------------------------------------------------------- read repair */
/* Copies one entry from src to dst: GET with meta of every segment
 * (checksum checked here), then IMPORT (checked again by dst, written
 * whole or not at all). */
static kvs_err copy_entry(kvs_client *src, kvs_client *dst, const kvs_model_id *model,
                          const kvs_key *key, const int32_t *tokens, uint32_t n_tokens) {
  kvs_wire_get_req g = {.key = *key,
                        .model = *model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = n_tokens,
                        .tokens_le = (const uint8_t *)tokens};
  size_t sz = kvs_wire_get_req_size(&g), w;
  nng_msg *m, *rep = NULL;
  if (!sz) return KVS_ERANGE;
  if (kvs__frame_new(sz, &m)) return KVS_ENOMEM;
  int rv = kvs_wire_get_req_encode(&g, kvs__frame_payload(m), sz, &w);
  if (rv) {
    nng_msg_free(m);
    return rv;
  }
  KVS_TRY(kvs__frame_roundtrip(src, m, KVS_OP_GET, 1, &rep));
  const uint8_t *p = (const uint8_t *)nng_msg_body(rep) + KVS_WIRE_HDR_SIZE;
  size_t pn = nng_msg_len(rep) - KVS_WIRE_HDR_SIZE;
  kvs_wire_get_resp a;
  rv = kvs_wire_get_resp_decode(p, pn, &a);
  if (rv == KVS_OK && (!a.meta_len || a.byte_off != 0 || a.byte_len != a.value_bytes))
    rv = KVS_EPROTO;
  if (rv == KVS_OK && kvs_checksum64(a.bytes, a.byte_len) != a.checksum) rv = KVS_ECHECKSUM;
  if (rv == KVS_OK)
    rv = kvs_admin_import(dst, p + KVS_WIRE_GET_RESP_FIXED, a.meta_len, a.bytes, a.byte_len);
  nng_msg_free(rep);
  return rv;
}

typedef struct repair_job {
  struct kvs__cluster *cl;
  kvs_client *src, *dst;
  kvs_model_id model;
  kvs_key key;
  uint32_t n_tokens;
  int32_t tokens[];
} repair_job;

static void *repair_main(void *arg) {
  repair_job *j = arg;
  kvs_err rv = copy_entry(j->src, j->dst, &j->model, &j->key, j->tokens, j->n_tokens);
  atomic_fetch_add(rv == KVS_OK ? &j->cl->repairs : &j->cl->repair_failed, 1);
  atomic_fetch_sub(&j->cl->repairs_inflight, 1);
  free(j);
  return NULL;
}

/* At most 4 repairs at once per client; more are skipped (the rebalance
 * catches them). */
static void repair_start(struct kvs__cluster *cl, kvs_client *src, kvs_client *dst,
                         const kvs_model_id *model, const kvs_key *key, const int32_t *tokens,
                         uint32_t n_tokens) {
  if (atomic_fetch_add(&cl->repairs_inflight, 1) >= 4) {
    atomic_fetch_sub(&cl->repairs_inflight, 1);
    return;
  }
  repair_job *j = malloc(sizeof *j + (size_t)n_tokens * sizeof(int32_t));
  pthread_t th;
  if (j) {
    *j = (repair_job){
        .cl = cl, .src = src, .dst = dst, .model = *model, .key = *key, .n_tokens = n_tokens};
    memcpy(j->tokens, tokens, (size_t)n_tokens * sizeof(int32_t));
  }
  if (!j || pthread_create(&th, NULL, repair_main, j) != 0) {
    free(j);
    atomic_fetch_sub(&cl->repairs_inflight, 1);
    return;
  }
  pthread_detach(th);
}

/* ------------------------------------------------------------------ get */
/* Tries the route's nodes in order (reachable ones first among the
 * owners); fn does the call on one member. */
typedef int (*try_fn)(kvs_client *m, void *arg);

static kvs_err route_try(kvs_client *c, route *rt, try_fn fn, void *arg, size_t *hit_at,
                         kvs_client **hit, kvs_client **first) {
  struct kvs__cluster *cl = c->cluster;
  size_t seq[64], ns = 0;
  kvs_client *mc[64];
  /* owners: reachable, then not; then the others the same way */
  for (int part = 0; part < 2; part++)
    for (int pass = 0; pass < 2; pass++)
      for (size_t i = part ? rt->n_owners : 0; i < (part ? rt->n_order : rt->n_owners); i++) {
        kvs_client *m = member_of(cl, &rt->nodes[rt->order[i]]);
        if (!m || (pass == 0) != (kvs_client_connected(m) > 0)) continue;
        mc[ns] = m;
        seq[ns++] = i;
      }
  if (first) *first = ns ? member_of(cl, &rt->nodes[rt->order[0]]) : NULL;
  int last = KVS_ENOENT, miss = 0;
  char why[KVS__ERRMSG_LEN] = "";
  for (size_t t = 0; t < ns; t++) {
    int rv = fn(mc[t], arg);
    if (rv == KVS_OK) {
      *hit_at = seq[t];
      *hit = mc[t];
      return KVS_OK;
    }
    if (rv == KVS_ENOENT || rv == KVS_EQUARANTINE || rv == KVS_ECHECKSUM) {
      miss++;
      continue;
    }
    last = rv;
    snprintf(why, sizeof why, "%s: %s", rt->nodes[rt->order[seq[t]]].id, kvs_client_errmsg(mc[t]));
    if (!node_error(rv)) return kvs__seterr(c, rv, "%s", why);
  }
  if (miss) return kvs__seterr(c, KVS_ENOENT, "not cached on %d node(s) asked", miss);
  return kvs__seterr(c, last, "no node answered (%s)", why[0] ? why : "none reachable");
}

typedef struct get_args {
  const kvs_model_id *model;
  const int32_t *tokens;
  const kvs_chunk *chunk;
  const kvs_layout *layout;
  void *out;
  uint64_t out_cap;
  const kvs_get_opts *o;
} get_args;

static int try_get(kvs_client *m, void *arg) {
  get_args *a = arg;
  return kvs__node_get(m, a->model, a->tokens, a->chunk, a->layout, a->out, a->out_cap, a->o);
}

kvs_err kvs__cluster_get(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                         const kvs_chunk *chunk, const kvs_layout *layout, void *out,
                         uint64_t out_cap, const kvs_get_opts *o) {
  if (!model || !tokens || !chunk || !layout || !out) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  route rt;
  KVS_TRY(route_key(c, &chunk->key, 2, 1, &rt));
  get_args a = {model, tokens, chunk, layout, out, out_cap, o};
  size_t at = 0;
  kvs_client *hit = NULL, *pref = NULL;
  kvs_err rv = route_try(c, &rt, try_get, &a, &at, &hit, &pref);
  if (rv == KVS_OK && hit != pref) {
    atomic_fetch_add(&cl->get_fallbacks, 1);
    if (pref && kvs_client_connected(pref) > 0)
      repair_start(cl, hit, pref, model, &chunk->key, tokens + chunk->start, chunk->n_tokens);
  }
  route_free(&rt);
  return rv;
}

typedef struct exists_args {
  const kvs_model_id *model;
  const kvs_key *key;
  kvs_entry_info *info;
} exists_args;

static int try_exists(kvs_client *m, void *arg) {
  exists_args *a = arg;
  int rv = kvs__node_exists(m, a->model, a->key, a->info);
  return rv == KVS_OK && !a->info->present ? KVS_ENOENT : rv;
}

kvs_err kvs__cluster_exists(kvs_client *c, const kvs_model_id *model, const kvs_key *key,
                            kvs_entry_info *info) {
  if (!model || !key || !info) return KVS_EINVAL;
  route rt;
  KVS_TRY(route_key(c, key, 2, 1, &rt));
  exists_args a = {model, key, info};
  size_t at;
  kvs_client *hit;
  kvs_err rv = route_try(c, &rt, try_exists, &a, &at, &hit, NULL);
  route_free(&rt);
  if (rv == KVS_ENOENT) {
    memset(info, 0, sizeof *info);
    return KVS_OK;
  }
  return rv;
}

/* --------------------------------------------------- every-node ops */
/* op: 0 delete, 1 pin, 2 unpin, 3 ttl. KVS_OK when one node had it. */
kvs_err kvs__cluster_keyop(kvs_client *c, int op, const kvs_key *key, uint32_t arg) {
  if (!key) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  int ok = 0, last = KVS_ENOENT;
  for (size_t i = 0; i < n; i++) {
    kvs_client *m = member_of(cl, &nodes[i]);
    if (!m || kvs_client_connected(m) <= 0) continue;
    int rv = op == 0   ? kvs__node_delete(m, key)
             : op == 1 ? kvs__node_pin(m, key)
             : op == 2 ? kvs__node_unpin(m, key)
                       : kvs__node_ttl(m, key, arg);
    if (rv == KVS_OK)
      ok++;
    else if (rv != KVS_ENOENT)
      last = rv;
  }
  free(nodes);
  if (ok) return KVS_OK;
  return kvs__seterr(c, last, "%s", last == KVS_ENOENT ? "no node has the key" : "failed");
}

kvs_err kvs__cluster_ping(kvs_client *c) {
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  int last = KVS_ECONN;
  for (size_t i = 0; i < n && last != KVS_OK; i++) {
    kvs_client *m = member_of(cl, &nodes[i]);
    if (m) last = kvs__node_ping(m);
  }
  free(nodes);
  return last == KVS_OK ? KVS_OK : kvs__seterr(c, last, "no node of %s answered", cl->u.name);
}

kvs_err kvs__cluster_stats(kvs_client *c, uint64_t *v, size_t cap, size_t *n_out) {
  if (!n_out || (cap && !v)) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  uint64_t tmp[64];
  size_t most = 0;
  int ok = 0;
  if (cap) memset(v, 0, cap * sizeof *v);
  for (size_t i = 0; i < n; i++) {
    kvs_client *m = member_of(cl, &nodes[i]);
    size_t k = 0;
    if (!m || kvs__node_stats(m, tmp, cap < 64 ? cap : 64, &k) != KVS_OK) continue;
    ok++;
    for (size_t j = 0; j < k; j++)
      v[j] += tmp[j];
    if (k > most) most = k;
  }
  free(nodes);
  *n_out = most;
  return ok ? KVS_OK : kvs__seterr(c, KVS_ECONN, "no node answered STATS");
}

/* --------------------------------------------------------------- lookup */
/* For each chunk, its owners are asked in preference order: round j sends
 * one LOOKUP (mode EACH) per node for the chunks still unresolved whose
 * j-th owner it is. With where != NULL every owner is asked. */
static kvs_err lookup_rounds(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                             size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks,
                             uint8_t *status, kvs_cluster_where *where) {
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  if (n == 0) {
    free(nodes);
    return kvs__seterr(c, KVS_ECONN, "cluster %s has no node", cl->u.name);
  }
  uint32_t r = kvs_cluster_replicas(c);
  size_t k = r < n ? r : n;
  size_t *own = malloc(n_chunks * k * sizeof *own + 1);
  size_t *idx = malloc(n_chunks * sizeof *idx + 1);
  kvs_chunk *sub = malloc(n_chunks * sizeof *sub + 1);
  uint8_t *st = malloc(n_chunks + 1);
  if (!own || !idx || !sub || !st) {
    free(own), free(idx), free(sub), free(st), free(nodes);
    return KVS_ENOMEM;
  }
  for (size_t i = 0; i < n_chunks; i++) {
    kvs__hrw_order(&chunks[i].key, nodes, n, &own[i * k], k);
    status[i] = 0;
  }
  if (where) memset(where, 0, n_chunks * r * sizeof *where);
  kvs_err rv = KVS_OK;
  int answered = 0;
  for (size_t j = 0; j < k && rv == KVS_OK; j++)
    for (size_t nd = 0; nd < n && rv == KVS_OK; nd++) {
      size_t ns = 0;
      for (size_t i = 0; i < n_chunks; i++)
        if (own[i * k + j] == nd && (where || !status[i])) {
          idx[ns] = i;
          sub[ns++] = chunks[i];
        }
      if (!ns) continue;
      kvs_client *m = member_of(cl, &nodes[nd]);
      if (!m || kvs_client_connected(m) <= 0) continue;
      kvs_err e = kvs__node_lookup(m, model, tokens, n_tokens, sub, ns, KVS_LOOKUP_EACH, st, NULL);
      if (e != KVS_OK) {
        if (!node_error(e)) rv = kvs__seterr(c, e, "%s", kvs_client_errmsg(m));
        continue;
      }
      answered++;
      for (size_t s = 0; s < ns; s++) {
        if (!st[s]) continue;
        if (!status[idx[s]]) status[idx[s]] = st[s];
        if (where) {
          kvs_cluster_where *w = &where[idx[s] * r + j];
          snprintf(w->node, sizeof w->node, "%s", nodes[nd].id);
          w->tier = st[s] - 1;
        }
      }
    }
  free(own), free(idx), free(sub), free(st), free(nodes);
  if (rv == KVS_OK && !answered && n_chunks)
    rv = kvs__seterr(c, KVS_ECONN, "no owner of any chunk answered");
  return rv;
}

kvs_err kvs__cluster_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                            size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks,
                            uint32_t mode, uint8_t *status, size_t *n_prefix) {
  if (!model || !tokens || (n_chunks && (!chunks || !status))) return KVS_EINVAL;
  if (mode != KVS_LOOKUP_EACH && mode != KVS_LOOKUP_PREFIX) return KVS_EINVAL;
  KVS_TRY(lookup_rounds(c, model, tokens, n_tokens, chunks, n_chunks, status, NULL));
  size_t p = 0;
  while (p < n_chunks && status[p])
    p++;
  if (mode == KVS_LOOKUP_PREFIX)
    for (size_t i = p; i < n_chunks; i++)
      status[i] = 0;
  if (n_prefix) *n_prefix = p;
  return KVS_OK;
}

/* One LOOKUP per node holding any owner copy of the chunks, the nodes asked
 * in parallel (one thread each beyond the first): a router's question costs
 * one round trip, not R x nodes. */
typedef struct lk_job {
  kvs_client *m;
  const kvs_model_id *model;
  const int32_t *tokens;
  size_t n_tokens, ns;
  kvs_chunk *sub;
  size_t *idx, *jj; /* chunk index, owner rank */
  uint8_t *st;
  kvs_err rv;
} lk_job;

static void *lk_main(void *arg) {
  lk_job *j = arg;
  j->rv = j->m ? kvs__node_lookup(j->m, j->model, j->tokens, j->n_tokens, j->sub, j->ns,
                                  KVS_LOOKUP_EACH, j->st, NULL)
               : KVS_ECONN;
  return NULL;
}

kvs_err kvs_cluster_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                           size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks,
                           kvs_cluster_where *out) {
  if (!c || !c->cluster || !model || !tokens || (n_chunks && (!chunks || !out))) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  uint32_t r = kvs_cluster_replicas(c);
  if (n_chunks) memset(out, 0, n_chunks * r * sizeof *out);
  if (n == 0 || n_chunks == 0) {
    free(nodes);
    return n ? KVS_OK : kvs__seterr(c, KVS_ECONN, "cluster %s has no node", cl->u.name);
  }
  size_t k = r < n ? r : n;
  size_t *own = malloc(n_chunks * k * sizeof *own);
  lk_job *jobs = calloc(n, sizeof *jobs);
  pthread_t *th = calloc(n, sizeof *th);
  int *started = calloc(n, sizeof *started);
  kvs_err rv = own && jobs && th && started ? KVS_OK : KVS_ENOMEM;
  for (size_t i = 0; rv == KVS_OK && i < n_chunks; i++)
    kvs__hrw_order(&chunks[i].key, nodes, n, &own[i * k], k);
  for (size_t nd = 0; rv == KVS_OK && nd < n; nd++) {
    lk_job *j = &jobs[nd];
    *j = (lk_job){.model = model, .tokens = tokens, .n_tokens = n_tokens};
    for (size_t i = 0; rv == KVS_OK && i < n_chunks; i++)
      for (size_t o = 0; o < k; o++) {
        if (own[i * k + o] != nd) continue;
        if (!j->sub) {
          j->sub = malloc(n_chunks * sizeof *j->sub);
          j->idx = malloc(n_chunks * sizeof *j->idx);
          j->jj = malloc(n_chunks * sizeof *j->jj);
          j->st = malloc(n_chunks);
          if (!j->sub || !j->idx || !j->jj || !j->st) {
            rv = KVS_ENOMEM;
            break;
          }
        }
        j->sub[j->ns] = chunks[i];
        j->idx[j->ns] = i;
        j->jj[j->ns++] = o;
      }
    if (j->ns) {
      j->m = member_of(cl, &nodes[nd]);
      if (j->m && kvs_client_connected(j->m) <= 0) j->m = NULL;
    }
  }
  size_t first = n;
  for (size_t nd = 0; rv == KVS_OK && nd < n; nd++) {
    if (!jobs[nd].ns) continue;
    if (first == n) {
      first = nd; /* runs on this thread, after the others started */
      continue;
    }
    started[nd] = pthread_create(&th[nd], NULL, lk_main, &jobs[nd]) == 0;
    if (!started[nd]) lk_main(&jobs[nd]);
  }
  if (rv == KVS_OK && first < n) lk_main(&jobs[first]);
  int answered = 0;
  for (size_t nd = 0; jobs && nd < n; nd++) {
    lk_job *j = &jobs[nd];
    if (started && started[nd]) pthread_join(th[nd], NULL);
    if (rv == KVS_OK && j->ns && j->rv == KVS_OK) {
      answered++;
      for (size_t s = 0; s < j->ns; s++)
        if (j->st[s]) {
          kvs_cluster_where *w = &out[j->idx[s] * r + j->jj[s]];
          snprintf(w->node, sizeof w->node, "%s", nodes[nd].id);
          w->tier = j->st[s] - 1;
        }
    } else if (rv == KVS_OK && j->ns && j->m && !node_error(j->rv)) {
      rv = kvs__seterr(c, j->rv, "%s", kvs_client_errmsg(j->m));
    }
    free(j->sub), free(j->idx), free(j->jj), free(j->st);
  }
  free(own), free(jobs), free(th), free(started), free(nodes);
  if (rv == KVS_OK && !answered) rv = kvs__seterr(c, KVS_ECONN, "no owner of any chunk answered");
  return rv;
}

/* --------------------------------------------------------------- batches */
kvs_err kvs__cluster_batch(kvs_client *c, int put, const kvs_model_id *model, const int32_t *tokens,
                           const kvs_chunk *chunks, size_t n, const kvs_layout *layout,
                           void *const *outs, const uint64_t *caps, const void *const *kvs,
                           const kvs_get_opts *go, const kvs_put_opts *po, kvs_err *rvs) {
  int first = KVS_OK;
  for (size_t i = 0; i < n; i++) {
    int rv = put ? kvs__cluster_put(c, model, tokens, &chunks[i], layout, kvs[i], po)
                 : kvs__cluster_get(c, model, tokens, &chunks[i], layout, outs[i], caps[i], go);
    if (rvs) rvs[i] = rv;
    if (rv && !first) first = rv;
  }
  return first;
}

/* ------------------------------------------------------------- nodes */
static int node_cmp(const void *a, const void *b) {
  return strcmp(((const kvs__node *)a)->id, ((const kvs__node *)b)->id);
}

kvs_err kvs_cluster_nodes(kvs_client *c, kvs_cluster_node *out, size_t cap, size_t *n_out) {
  if (!c || !c->cluster || !n_out || (cap && !out)) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  if (n) qsort(nodes, n, sizeof *nodes, node_cmp);
  for (size_t i = 0; i < n && i < cap; i++) {
    kvs_cluster_node *o = &out[i];
    memset(o, 0, sizeof *o);
    snprintf(o->id, sizeof o->id, "%s", nodes[i].id);
    snprintf(o->data, sizeof o->data, "%s", nodes[i].data);
    snprintf(o->stream, sizeof o->stream, "%s", nodes[i].stream);
    snprintf(o->http, sizeof o->http, "%s", nodes[i].http);
    snprintf(o->host, sizeof o->host, "%s", nodes[i].host);
    snprintf(o->zone, sizeof o->zone, "%s", nodes[i].zone);
    o->capacity = nodes[i].capacity;
    o->replicas = nodes[i].replicas;
    o->draining = nodes[i].draining;
    kvs_client *m = member_of(cl, &nodes[i]);
    o->connected = m && kvs_client_connected(m) > 0;
  }
  *n_out = n;
  free(nodes);
  return KVS_OK;
}

kvs_err kvs_cluster_get_counters(kvs_client *c, kvs_cluster_counters *out) {
  if (!c || !c->cluster || !out) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  out->put_replaced = atomic_load(&cl->put_replaced);
  out->get_fallbacks = atomic_load(&cl->get_fallbacks);
  out->repairs = atomic_load(&cl->repairs);
  out->repair_failed = atomic_load(&cl->repair_failed);
  out->views = atomic_load(&cl->views);
  return KVS_OK;
}

/* ------------------------------------------------------------ rebalance */
static void rate_wait(uint64_t t0, uint64_t bytes, uint64_t bps) {
  if (!bps) return;
  uint64_t due = t0 + (uint64_t)((double)bytes / (double)bps * 1e9);
  uint64_t now = kvs_now_ns();
  if (due > now) {
    uint64_t d = due - now;
    struct timespec ts = {(time_t)(d / 1000000000ull), (long)(d % 1000000000ull)};
    nanosleep(&ts, NULL);
  }
}

kvs_err kvs_cluster_rebalance(kvs_client *c, uint64_t bytes_per_s,
                              kvs_cluster_rebalance_stats *st) {
  if (!c || !c->cluster) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs_cluster_rebalance_stats s = {0};
  uint64_t t0 = kvs_now_ns();
  kvs__node *nodes;
  size_t n;
  KVS_TRY(kvs__members_get(cl->m, &nodes, &n, NULL));
  uint32_t r = kvs_cluster_replicas(c);
  size_t k = r < n ? r : n;
  kvs_err rv = KVS_OK;
  for (size_t src = 0; src < n && rv == KVS_OK; src++) {
    kvs_client *sm = member_of(cl, &nodes[src]);
    if (!sm || kvs_client_connected(sm) <= 0) continue;
    kvs_admin_cursor cur;
    kvs_admin_cursor_init(&cur);
    for (int more = 1; more && rv == KVS_OK;) {
      kvs_admin_page *pg = NULL;
      kvs_err e = kvs_admin_export(sm, &cur, 64, &pg);
      if (e != KVS_OK) {
        s.failed++;
        break;
      }
      size_t pc = kvs_admin_page_count(pg);
      more = !cur.done;
      for (size_t i = 0; i < pc; i++) {
        const kvs_admin_record *rec = kvs_admin_page_record(pg, i);
        kvs_wire_meta m;
        size_t used;
        s.scanned++;
        if (kvs_wire_meta_decode(rec->meta, rec->meta_len, &m, &used) != KVS_OK) {
          s.failed++;
          continue;
        }
        size_t own[KVS__CL_MAX_R];
        kvs__hrw_order(&rec->key, nodes, n, own, k);
        int self_owner = 0, all_have = 1;
        for (size_t j = 0; j < k; j++) {
          if (own[j] == src) {
            self_owner = 1;
            continue;
          }
          kvs_client *dm = member_of(cl, &nodes[own[j]]);
          kvs_entry_info info = {0};
          if (!dm || kvs__node_exists(dm, &m.model, &rec->key, &info) != KVS_OK) {
            all_have = 0;
            continue;
          }
          if (info.present) continue;
          rate_wait(t0, s.copied_bytes + rec->value_bytes, bytes_per_s);
          if (kvs_admin_import(dm, rec->meta, rec->meta_len, rec->value, rec->value_bytes) ==
              KVS_OK) {
            s.copied++;
            s.copied_bytes += rec->value_bytes;
          } else {
            s.failed++;
            all_have = 0;
          }
        }
        if (!self_owner && all_have && kvs__node_delete(sm, &rec->key) == KVS_OK) s.dropped++;
      }
      kvs_admin_page_free(pg);
    }
  }
  free(nodes);
  s.seconds = (double)(kvs_now_ns() - t0) / 1e9;
  if (st) *st = s;
  return rv;
}

typedef struct drain_find {
  const char *id;
  char *val;
  int64_t lease;
} drain_find;

kvs_err kvs_cluster_drain(kvs_client *c, const char *node_id, uint64_t bytes_per_s,
                          kvs_cluster_rebalance_stats *st) {
  if (!c || !c->cluster || !kvs__node_id_ok(node_id)) return KVS_EINVAL;
  struct kvs__cluster *cl = c->cluster;
  kvs__etcd *e = kvs__etcd_new(&cl->u, 2000);
  if (!e) return KVS_ENOMEM;
  char key[256];
  snprintf(key, sizeof key, "/kvstash/%s/nodes/%s", cl->u.name, node_id);
  char *val = NULL;
  int64_t lease = 0;
  kvs_err rv = kvs__etcd_get_lease(e, key, &val, NULL, &lease);
  kvs__node nd;
  if (rv == KVS_OK) rv = kvs__node_from_json(val, strlen(val), &nd);
  free(val);
  if (rv == KVS_OK) {
    nd.draining = 1;
    char *j = kvs__node_to_json(&nd);
    rv = j ? kvs__etcd_put(e, key, j, strlen(j), lease) : KVS_ENOMEM;
    free(j);
  }
  kvs__etcd_free(e);
  if (rv != KVS_OK)
    return kvs__seterr(c, rv, "cannot mark %s draining (%s)", node_id,
                       rv == KVS_ENOENT ? "no such node" : "etcd");
  /* let the view catch up (bounded), then move the keys */
  for (int i = 0; i < 200; i++) {
    kvs__node *nodes;
    size_t n;
    int seen = 0;
    if (kvs__members_get(cl->m, &nodes, &n, NULL) == KVS_OK)
      for (size_t j = 0; j < n; j++)
        seen |= !strcmp(nodes[j].id, node_id) && nodes[j].draining;
    free(nodes);
    if (seen) break;
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
  }
  return kvs_cluster_rebalance(c, bytes_per_s, st);
}
