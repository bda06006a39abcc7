/* kvstash_cluster.h - libkvstash over a cluster of kvstashd nodes.
 *
 * kvs_client_create with opts.url = "etcd://host:2379[,host:port...]/NAME"
 * (optionally "?r=N") gives a client of the cluster NAME whose members are
 * registered in etcd (docs/cluster.md). The calls of kvstash.h then route by
 * rendezvous hashing of the chunk key over the live nodes, weighted by
 * capacity:
 *   put     goes to the R owners (client fan-out, in parallel); an owner that
 *           cannot be reached is replaced by the next node in HRW order, and
 *           the put succeeds only when R nodes (or every node, when fewer)
 *           acknowledged it.
 *   get     asks the preferred owner (one on this host first), then the other
 *           owners, then up to two more nodes in HRW order; a hit on another
 *           node than the preferred one copies the entry (checksum verified)
 *           to the preferred one in the background (read repair).
 *   lookup  asks each chunk's owners (misses go to the next owner).
 *   exists  like get; delete, pin, unpin, ttl go to every node (success when
 *           one had the key); stats add up over the nodes; ping answers when
 *           one node does.
 * kvs_get_start / kvs_put_start and kvs_client_stream answer KVS_ENOTSUP on
 * a cluster client (the batches work, one chunk after the other).
 * Tenant and token are the same on every node (each node's config). */
#ifndef KVSTASH_CLUSTER_H
#define KVSTASH_CLUSTER_H

#include "kvstash.h"

#ifdef __cplusplus
extern "C" {
#endif
KVS_API_BEGIN

/* 1 when c was made from an etcd:// URL. */
int kvs_client_is_cluster(kvs_client *c);

typedef struct kvs_cluster_node {
  char id[64];
  char data[256];   /* tcp://host:port */
  char stream[256]; /* tcp+stream://host:port or "" */
  char http[128];   /* host:port of /metrics, or "" */
  char host[80];    /* host id (same = same machine) */
  char zone[64];
  uint64_t capacity; /* placement weight */
  uint32_t replicas;
  int draining;
  int connected; /* this client has a connection to it now */
} kvs_cluster_node;

/* The current view (what etcd said last): up to cap nodes into out, sorted
 * by id; *n = nodes in the view (may exceed cap). KVS_EINVAL on a client
 * that is not a cluster client. */
kvs_err kvs_cluster_nodes(kvs_client *c, kvs_cluster_node *out, size_t cap, size_t *n);
/* R of the cluster (the URL's r, else the nodes' cluster_replicas). */
uint32_t kvs_cluster_replicas(kvs_client *c);

/* Cluster lookup for routers: for each of chunks[n_chunks] (cut from
 * tokens), which nodes hold it and in which tier. out[i * r + j], j < r
 * (r = kvs_cluster_replicas): node id ("" = none) and tier (0 RAM, 1 disk,
 * 2 cold) of the j-th owner that holds chunk i, owners in preference
 * order. One LOOKUP per node involved. */
typedef struct kvs_cluster_where {
  char node[64];
  int tier;
} kvs_cluster_where;
kvs_err kvs_cluster_lookup(kvs_client *c, const kvs_model_id *model, const int32_t *tokens,
                           size_t n_tokens, const kvs_chunk *chunks, size_t n_chunks,
                           kvs_cluster_where *out);

/* What the cluster client did (monotonic since create). */
typedef struct kvs_cluster_counters {
  uint64_t put_replaced;  /* owner copies of puts written to a stand-in node */
  uint64_t get_fallbacks; /* gets answered by another node than the preferred */
  uint64_t repairs;       /* read repairs done */
  uint64_t repair_failed; /* read repairs that failed */
  uint64_t views;         /* membership changes seen */
} kvs_cluster_counters;
kvs_err kvs_cluster_get_counters(kvs_client *c, kvs_cluster_counters *out);

/* Rebalance (docs/cluster.md): for this client's tenant, every entry of
 * every node is checked against the current view; each is copied (EXPORT
 * record -> IMPORT, checksum verified by the receiver, written whole or not
 * at all) to the owners that lack it, and deleted from a node that is no
 * longer an owner once all its owners hold it. bytes_per_s limits the copy
 * rate (0 = none). Progress counters in *st (may be NULL). */
typedef struct kvs_cluster_rebalance_stats {
  uint64_t scanned, copied, copied_bytes, dropped, failed;
  double seconds;
} kvs_cluster_rebalance_stats;
kvs_err kvs_cluster_rebalance(kvs_client *c, uint64_t bytes_per_s, kvs_cluster_rebalance_stats *st);
/* Marks node_id draining in etcd (it then owns nothing new; its record
 * keeps its lease, so it leaves when the node stops), then rebalances. */
kvs_err kvs_cluster_drain(kvs_client *c, const char *node_id, uint64_t bytes_per_s,
                          kvs_cluster_rebalance_stats *st);

KVS_API_END
#ifdef __cplusplus
}
#endif
#endif
