/* kvs_conf_options.h - kvstashd's options, one table.
 *
 * Each line of KVS_SVC_OPTION_MAP is one option of kvstashd.conf (= the flag
 * `--key=value`). cachesvc/config.c expands it into the option descriptors
 * that parse values (kvs_svc_config_set), fill the defaults
 * (kvs_svc_config_defaults), write `kvstashd --help` and suggest the nearest
 * key for a typo; cachesvc/svc.c's reload uses the LIVE flag to tell what a
 * SIGHUP applies and what needs a restart; the CLI (tools/cli/main.c) takes
 * the key column to know which keys of a kvstashd.conf are kvstashd's (and
 * skips them) and which are typos. The header needs nothing: the columns
 * are only tokens until a file expands them.
 *
 * X(key, type, field, def, lo, hi, ext, flags, why, help)
 *   key    the config key and flag name (a `-` in a flag is read as `_`)
 *   type   STR (char array), U32 (4-byte unsigned or int), SIZE (uint64_t, K/M/G/T
 *          suffixes), NUM (double), ENUM (int: the index of the word in ext's
 *          W("w0|w1")), FN (ext's F(setter) does the work, config.c)
 *   field  where the value lands in kvs_svc_config (for REPEAT: the array;
 *          its count, an int, follows it in the struct)
 *   def    the default as text, parsed like a config value (and shown in
 *          --help in parentheses); NULL = zero and nothing shown
 *   lo,hi  the range (U32, SIZE, NUM); STR: lo 1 = must not be empty
 *   flags  LIVE: a SIGHUP reload applies it (else: needs restart);
 *          REPEAT: each line appends; GT: NUM must be > lo (not >= lo)
 *   why    the error message's reason for a bad value (FN: its own)
 *   help   one line of --help; a `\n` continues it on the next line
 *
 * Adding an option: one line here, its field in kvs_svc_config
 * (cachesvc/kvs_svc.h), and a line in docs/kvstashd.md. */
#ifndef KVS_CONF_OPTIONS_H
#define KVS_CONF_OPTIONS_H

/* clang-format off */
#define KVS_SVC_OPTION_MAP(X)                                                                      \
  X(data_dir, STR, data_dir, "./kvstash-data", 1, 0, NONE, 0, "path",                              \
    "T1 store and server secret")                                                                  \
  X(cold_dir, STR, cold_dir, "", 0, 0, NONE, 0, "path too long",                                   \
    "T2 store on a colder disk; empty = no T2")                                                    \
  X(listen, FN, listen, "tcp://127.0.0.1:7878,tcp+stream://127.0.0.1:7880", 0, 0, F(set_listen),   \
    REPEAT, "",                                                                                    \
    "nng URLs, comma list or repeated\n"                                                           \
    "tcp+stream:// ipc+stream://: byte-stream GET listeners")                                      \
  X(http, FN, http, "127.0.0.1:7879", 0, 0, F(set_http), 0, "",                                    \
    "control plane host:port; empty = off")                                                        \
  X(admin_token, STR, admin_token, "", 0, 0, NONE, 0, "at most 64 bytes",                          \
    "bearer token required by /v1/")                                                               \
  X(tls_cert_key_file, STR, tls_cert_key_file, "", 0, 0, NONE, 0, "too long",                      \
    "PEM cert + key for tls+tcp:// listeners")                                                     \
  X(tenant, FN, tenants, NULL, 0, 0, F(set_tenant), LIVE | REPEAT, "",                             \
    "name:token, repeated; none = auth off")                                                       \
  X(workers, U32, workers, "8", 1, 256, NONE, 0, "1..256", "data-plane threads")                   \
  X(max_msg, SIZE, max_msg, "64M", 4096, 4294967295.0, NONE, 0, "4K..4G", "largest frame, bytes")  \
  X(request_deadline_ms, U32, deadline_ms, "10000", 1, 4294967295.0, NONE, 0, "ms > 0",            \
    "answer or log as late after")                                                                 \
  X(durability, ENUM, durability, "ram", 0, 0, W("ram|async|sync"), 0, "ram, async or sync",       \
    "ram: ack once held in RAM, disk write behind\n"                                               \
    "async: written before the ack | sync: + fsync")                                               \
  X(write_behind_bytes, SIZE, wb_bytes, "1G", 1, 1.8e19, NONE, 0, "size > 0",                      \
    "durability=ram: most value bytes not yet on disk")                                            \
  X(write_behind_entries, U32, wb_entries, "1024", 1, 1000000, NONE, 0, "1..1000000",              \
    "durability=ram: most entries not yet on disk")                                                \
  X(ram_bytes, SIZE, ram_bytes, "1G", 0, 1.8e19, NONE, 0, "size", "T0 RAM budget")                 \
  X(disk_bytes, SIZE, disk_bytes, "64G", 1, 1.8e19, NONE, 0, "size > 0", "T1 capacity")            \
  X(cold_bytes, SIZE, cold_bytes, "256G", 0, 1.8e19, NONE, 0, "size", "T2 capacity")               \
  X(blob_min, SIZE, blob_min, "64K", 0, 1.8e19, NONE, 0, "size",                                   \
    "values >= this go to blob files")                                                             \
  X(default_ttl_s, U32, default_ttl_s, "0", 0, 4294967295.0, NONE, 0, "seconds",                   \
    "idle TTL when a PUT gives none; 0 = none")                                                    \
  X(half_life_s, NUM, half_life_s, "3600", 0, 0, NONE, 0, "seconds >= 0",                          \
    "age half-life of the eviction score")                                                         \
  X(eviction, ENUM, evict_lru, "cost", 0, 0, W("cost|lru"), 0, "cost | lru",                       \
    "cost (recompute saved per byte) | lru")                                                       \
  X(prefill_cost, NUM, prefill_cost, "1.0", 0, 0, NONE, GT, "number > 0",                          \
    "per-token recompute cost, default")                                                           \
  X(model_cost, FN, model_costs, NULL, 0, 0, F(set_model_cost), REPEAT, "",                        \
    "<hex model id>:<cost>, repeated")                                                             \
  X(flush_interval_ms, U32, flush_interval_ms, "5000", 1, 4294967295.0, NONE, 0, "ms",             \
    "hit counters to disk every")                                                                  \
  X(stream_insecure, ENUM, stream_insecure, "off", 0, 0, W("off|on"), 0, "on or off",              \
    "allow tcp+stream:// off loopback on|off")                                                     \
  X(zero_freed, ENUM, zero_freed, "off", 0, 0, W("off|on"), 0, "on or off",                        \
    "zero RAM-tier and shm ranges when freed on|off")                                              \
  X(shm, ENUM, shm, "off", 0, 0, W("off|on"), 0, "on or off",                                      \
    "same-host shared-memory fast path on|off")                                                    \
  X(shm_bytes, SIZE, shm_bytes, "0", 0, 1.8e19, NONE, 0, "size",                                   \
    "per-tenant segment size; 0 = ram_bytes")                                                      \
  X(lease_ms, U32, lease_ms, "5000", 1, 600000, NONE, 0, "1..600000 ms",                           \
    "how long a LEASE pins its range")                                                             \
  X(log_level, FN, log_level, "warn", 0, 0, F(set_log_level), LIVE, "",                            \
    "error|warn|info|debug|trace")                                                                 \
  X(quota, FN, quotas, NULL, 0, 0, F(set_quota), REPEAT, "",                                       \
    "<tenant>:ram=SIZE,disk=SIZE,entries=N,rate=PER_S[,burst=N],\n"                                \
    "repeated; a missing kind = no limit")                                                         \
  /* cluster (docs/cluster.md; values checked by cachesvc/cluster.c) */                            \
  X(cluster, FN, cluster.url, "", 0, 0, F(set_cluster), 0, "",                                     \
    "etcd://host:2379[,host:port]/NAME; empty = on its own")                                       \
  X(cluster_node_id, FN, cluster.node_id, NULL, 0, 0, F(set_cluster), 0, "",                       \
    "this node's id; default <hostname>-<port>")                                                   \
  X(cluster_advertise, FN, cluster.advertise, NULL, 0, 0, F(set_cluster), 0, "",                   \
    "data URL the others dial; default the first tcp:// listen")                                   \
  X(cluster_advertise_stream, FN, cluster.advertise_stream, NULL, 0, 0, F(set_cluster), 0, "",     \
    "byte-stream URL; default the first tcp+stream://")                                            \
  X(cluster_zone, FN, cluster.zone, "", 0, 0, F(set_cluster), 0, "",                               \
    "failure zone, informational")                                                                 \
  X(cluster_host_id, FN, cluster.host_id, NULL, 0, 0, F(set_cluster), 0, "",                       \
    "same value = same host; default /etc/machine-id")                                             \
  X(cluster_capacity, FN, cluster.capacity, NULL, 0, 0, F(set_cluster), 0, "",                     \
    "placement weight, bytes; default disk_bytes")                                                 \
  X(cluster_replicas, FN, cluster.replicas, "2", 0, 0, F(set_cluster), 0, "",                      \
    "R, copies of each key")                                                                       \
  X(cluster_lease_ttl_s, FN, cluster.lease_ttl_s, "5", 0, 0, F(set_cluster), 0, "",                \
    "etcd lease of the node's record")
/* clang-format on */

#endif
