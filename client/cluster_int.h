/* cluster_int.h - what kvstashd and libkvstash share to form a cluster
 * (docs/cluster.md): an etcd v3 client over its JSON gateway (libcurl +
 * cJSON), the membership view kept from a watch of
 * /kvstash/<cluster>/nodes/, and rendezvous (HRW) placement.
 *
 * Nothing here is installed; the public side is kvstash_cluster.h. */
#ifndef KVS_CLUSTER_INT_H
#define KVS_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kvs_core.h"

/* ------------------------------------------------------------- URL */
#define KVS__CL_NAME_MAX 64
#define KVS__CL_EP_MAX   4
/* "etcd://h1:2379[,h2:2379...]/NAME[?r=N]": the etcd endpoints as
 * "http://h:p" and the cluster name ([A-Za-z0-9_.-], 1..64). r = 0 when the
 * URL gives none. KVS_EINVAL on anything else. */
typedef struct kvs__cl_url {
  char ep[KVS__CL_EP_MAX][128];
  int n_ep;
  char name[KVS__CL_NAME_MAX + 1];
  uint32_t replicas;
} kvs__cl_url;
kvs_err kvs__cl_url_parse(const char *url, kvs__cl_url *out);

/* ------------------------------------------------------------ etcd */
typedef struct kvs__etcd kvs__etcd;
/* A client of the endpoints in u (tried in turn); every request is bounded
 * by timeout_ms. NULL on ENOMEM. */
kvs__etcd *kvs__etcd_new(const kvs__cl_url *u, uint32_t timeout_ms);
void kvs__etcd_free(kvs__etcd *e);
kvs_err kvs__etcd_lease_grant(kvs__etcd *e, uint32_t ttl_s, int64_t *id);
/* One keepalive round: *ttl_left 0 when the lease is gone (grant again). */
kvs_err kvs__etcd_lease_keepalive(kvs__etcd *e, int64_t id, int64_t *ttl_left);
kvs_err kvs__etcd_lease_revoke(kvs__etcd *e, int64_t id);
/* lease 0 = none. */
kvs_err kvs__etcd_put(kvs__etcd *e, const char *key, const char *val, size_t val_len,
                      int64_t lease);
kvs_err kvs__etcd_delete(kvs__etcd *e, const char *key);
/* Every key under prefix: fn(arg, key, val, val_len) per key (val is
 * NUL-terminated too); *rev = the store revision of the answer. */
typedef void (*kvs__etcd_kv_fn)(void *arg, const char *key, const char *val, size_t val_len);
kvs_err kvs__etcd_range(kvs__etcd *e, const char *prefix, kvs__etcd_kv_fn fn, void *arg,
                        int64_t *rev);
/* One key: KVS_ENOENT when absent; *val malloc'd (NUL-terminated). */
kvs_err kvs__etcd_get(kvs__etcd *e, const char *key, char **val, size_t *val_len);
/* The same, and the key's lease (0 = none) in *lease (may be NULL). */
kvs_err kvs__etcd_get_lease(kvs__etcd *e, const char *key, char **val, size_t *val_len,
                            int64_t *lease);
/* Watches prefix from revision start_rev on until *stop is set, the stream
 * breaks (an error) or max_ms passes (KVS_OK). put (val != NULL) and delete
 * (val == NULL) events go to fn; *last_rev follows them. KVS_ERANGE when
 * start_rev was compacted (list again). */
kvs_err kvs__etcd_watch(kvs__etcd *e, const char *prefix, int64_t start_rev, kvs__etcd_kv_fn fn,
                        void *arg, atomic_int *stop, uint32_t max_ms, int64_t *last_rev);

/* A plain HTTP GET (tests, CLI): *body malloc'd, NUL-terminated; *code the
 * HTTP status. bearer may be NULL. KVS_ECONN when nothing answered. */
kvs_err kvs__http_get(const char *url, const char *bearer, uint32_t timeout_ms, char **body,
                      long *code);

/* ------------------------------------------------------------ nodes */
#define KVS__CL_ID_MAX 63
typedef struct kvs__node {
  char id[KVS__CL_ID_MAX + 1];
  char data[256];   /* nng data-plane URL (tcp://host:port) */
  char stream[256]; /* tcp+stream:// GET listener, "" = none */
  char http[128];   /* control plane host:port, "" = none */
  char host[80];    /* host id: same value = same machine (shared memory) */
  char zone[64];
  uint64_t capacity; /* bytes; the HRW weight */
  uint32_t replicas; /* R the node was configured with */
  int draining;      /* 1: owns nothing new, hands its keys over */
  uint64_t started_ms;
} kvs__node;
/* JSON of a node record (docs/cluster.md) into a malloc'd string. */
char *kvs__node_to_json(const kvs__node *n);
/* Parses a record; KVS_EPROTO when a field is missing or bad. */
kvs_err kvs__node_from_json(const char *json, size_t len, kvs__node *out);
/* The host id of this machine: /etc/machine-id, else the host name. */
void kvs__host_id(char *out, size_t cap);
/* 1 when id is 1..63 of [A-Za-z0-9_.:-]. */
int kvs__node_id_ok(const char *id);

/* The membership view: a thread lists /kvstash/<name>/nodes/ and then
 * watches it (re-listing after any break, backing off to 1 s); when etcd
 * cannot be reached the last view stays. */
typedef struct kvs__members kvs__members;
typedef void (*kvs__members_fn)(void *arg);
/* Starts the thread; on_change (may be NULL) is called on it after every
 * change. KVS_ENOMEM, or KVS_EINTERNAL when the thread cannot start. */
kvs_err kvs__members_start(const kvs__cl_url *u, uint32_t timeout_ms, kvs__members_fn on_change,
                           void *arg, kvs__members **out);
void kvs__members_stop(kvs__members *m); /* NULL does nothing */
/* Waits until a first listing succeeded, at most ms. 1 when it has. */
int kvs__members_wait(kvs__members *m, uint32_t ms);
/* A copy of the view: *nodes (malloc'd, free it; NULL when empty), *n;
 * *version counts changes. */
kvs_err kvs__members_get(kvs__members *m, kvs__node **nodes, size_t *n, uint64_t *version);
/* 1 while the last etcd request succeeded. */
int kvs__members_etcd_ok(kvs__members *m);

/* ------------------------------------------------------------ placement */
#define KVS__CL_MAX_R 8
/* Rendezvous (HRW) order of nodes[n] for key, weighted by capacity
 * (score = w / -ln(u), u uniform from hash(key, node id)): writes the
 * indices of the best k nodes (k <= n) to order[], best first. Draining
 * nodes are ranked after every other (they own nothing new). Deterministic:
 * the same key and node set give the same order on every machine. */
void kvs__hrw_order(const kvs_key *key, const kvs__node *nodes, size_t n, size_t *order, size_t k);
/* The HRW score alone (tests). */
double kvs__hrw_score(const kvs_key *key, const char *node_id, uint64_t weight);

#endif
