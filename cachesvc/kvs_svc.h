/* kvs_svc.h - kvstashd, the kvstash cache service, as a library.
 *
 * The kvstashd binary (main.c) is a thin shell around this: load a config,
 * create the service, start it, wait for SIGTERM, stop it. Tests and the
 * benchmark start the binary as a separate process; this header exists so the
 * service can also be embedded.
 *
 * What it does (docs/kvstashd.md has the operator's view, docs/protocol.md the
 * wire format): an nng REP data plane (tcp:// and ipc:// at once), an HTTP
 * control plane on libevent, and tiered storage: T0 RAM (byte budget, LRU,
 * refcounted buffers), T1 RocksDB on the primary path, T2 a second RocksDB on a
 * colder path; cost-aware eviction, TTL expiry, pins, checksums on every disk
 * read with quarantine, per-tenant key salting and bearer-token auth. */
#ifndef KVS_SVC_H
#define KVS_SVC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvs_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVS_SVC_MAX_LISTEN      8
#define KVS_SVC_MAX_TENANTS     64
#define KVS_SVC_MAX_MODEL_COSTS 32
#define KVS_SVC_MAX_QUOTAS      64

/* A tenant's quota (`quota = <tenant>:ram=1G,disk=10G,entries=100000,rate=5000,burst=10000`,
 * parsed by cachesvc/quota.c); 0 = no limit of that kind. */
typedef struct kvs_svc_quota {
  char tenant[33];
  uint64_t ram_bytes;  /* ram: the tenant's RAM-tier (T0) copies, bytes */
  uint64_t disk_bytes; /* disk: the tenant's entries on the disk tiers (T1 + T2), bytes */
  uint64_t entries;    /* entries: entries stored */
  double rate;         /* rate: data-plane requests per second (token bucket) */
  double burst;        /* burst: bucket size, requests (default: rate, at least 1) */
} kvs_svc_quota;

typedef struct kvs_svc_tenant {
  char name[33];  /* [A-Za-z0-9_.-], 1..32 */
  char token[65]; /* bearer token, 1..64 bytes */
} kvs_svc_tenant;

typedef struct kvs_svc_model_cost {
  kvs_model_id model;
  double cost; /* relative prefill cost per token */
} kvs_svc_model_cost;

/* Cluster membership (docs/cluster.md); url "" = a node on its own. Parsed
 * by cachesvc/cluster.c (keys cluster, cluster_*). */
typedef struct kvs_svc_cluster_config {
  char url[512];              /* cluster: etcd://host:2379[,host:port]/NAME */
  char node_id[64];           /* cluster_node_id: default <hostname>-<data port> */
  char advertise[256];        /* cluster_advertise: data URL the others dial (first tcp://) */
  char advertise_stream[256]; /* cluster_advertise_stream: (first tcp+stream://) */
  char zone[64];              /* cluster_zone */
  char host_id[80];           /* cluster_host_id: same value = same host (/etc/machine-id) */
  uint64_t capacity;          /* cluster_capacity: placement weight (0 = disk_bytes) */
  uint32_t replicas;          /* cluster_replicas: R (2) */
  uint32_t lease_ttl_s;       /* cluster_lease_ttl_s: the record's etcd lease (5) */
} kvs_svc_cluster_config;

/* durability (docs/kvstashd.md): when a PUT is acknowledged.
 *   RAM    once verified and held in RAM; the disk write follows, off the
 *          request (a bounded write-behind queue; full: written through)
 *   ASYNC  once written to RocksDB (WAL, not fsync'ed)
 *   SYNC   once written and the WAL fsync'ed */
enum { KVS_SVC_DUR_RAM = 0, KVS_SVC_DUR_ASYNC = 1, KVS_SVC_DUR_SYNC = 2 };

/* Every option, with its config-file key (= the flag name, `--key=value`); the
 * keys, defaults, checks and reload flags are KVS_SVC_OPTION_MAP's
 * (core/kvs_conf_options.h). */
typedef struct kvs_svc_config {
  char data_dir[512];                   /* data_dir: T1 RocksDB + secret; default ./kvstash-data */
  char cold_dir[512];                   /* cold_dir: T2 RocksDB; "" = no T2 */
  char listen[KVS_SVC_MAX_LISTEN][256]; /* listen: nng URLs (comma list or repeated) */
  int n_listen;
  char http[128];              /* http: host:port of the control plane; "" = off */
  char admin_token[65];        /* admin_token: bearer token for /v1/ ("" = none) */
  char tls_cert_key_file[512]; /* tls_cert_key_file: PEM with certificate + key, for
                                  tls+tcp:// listeners */
  int workers;                 /* workers: data-plane threads */
  uint64_t max_msg;            /* max_msg: largest frame accepted, bytes */
  uint32_t deadline_ms;        /* request_deadline_ms */
  int durability;              /* durability: KVS_SVC_DUR_RAM (0) | _ASYNC (1) | _SYNC (2) */
  uint64_t wb_bytes;           /* write_behind_bytes: durability=ram's backlog bound, bytes */
  uint32_t wb_entries;         /* write_behind_entries: ... and entries */
  uint64_t ram_bytes;          /* ram_bytes: T0 budget */
  uint64_t disk_bytes;         /* disk_bytes: T1 capacity (values + metadata) */
  uint64_t cold_bytes;         /* cold_bytes: T2 capacity */
  uint64_t blob_min;           /* blob_min: values at least this large go to blob files */
  uint32_t default_ttl_s;      /* default_ttl_s: applied when a PUT has ttl 0; 0 = none */
  double half_life_s;          /* half_life_s: age decay of the eviction score */
  int evict_lru;               /* eviction: cost (0, default) | lru (1: least recently used
                                * first, for comparison with cost-aware eviction) */
  double prefill_cost;         /* prefill_cost: default per-token cost */
  kvs_svc_model_cost model_costs[KVS_SVC_MAX_MODEL_COSTS]; /* model_cost: <hex id>:<cost> */
  int n_model_costs;
  kvs_svc_tenant tenants[KVS_SVC_MAX_TENANTS]; /* tenant: <name>:<token> (repeat) */
  int n_tenants;                               /* 0 = auth off: any tenant name, no token */
  uint32_t flush_interval_ms;                  /* flush_interval_ms: hit counters to disk */
  int stream_insecure; /* stream_insecure: on|off; tcp+stream:// (plaintext) may listen
                          off loopback only when on */
  int zero_freed;      /* zero_freed: on|off; a freed RAM-tier or shared-memory range is
                          zeroed before it can be reused */
  int shm;             /* shm: on|off, the same-host shared-memory fast path */
  uint64_t shm_bytes;  /* shm_bytes: size of each tenant's segment (0 = ram_bytes) */
  uint32_t lease_ms;   /* lease_ms: how long a LEASE holds its range */
  int log_level;       /* log_level: error|warn|info|debug|trace */
  kvs_svc_quota quotas[KVS_SVC_MAX_QUOTAS]; /* quota: <tenant>:<kind>=<n>,... (repeat) */
  int n_quotas;
  kvs_svc_cluster_config cluster; /* cluster, cluster_*: see docs/cluster.md */
} kvs_svc_config;

/* Fills the defaults (loopback only, data dir ./kvstash-data, sync). */
void kvs_svc_config_defaults(kvs_svc_config *c);
/* Sets one option from its text form. `listen` and `tenant` and `model_cost`
 * append. KVS_EINVAL for an unknown key (with the nearest key suggested) or a
 * bad value; kvs_svc_config_error() says which, in one line. */
kvs_err kvs_svc_config_set(kvs_svc_config *c, const char *key, const char *value);
/* Reads a config file (core/kvs_conf.h's format: `key = value` lines, `#`
 * comments, "quoted" or 'quoted' values, blank lines). */
kvs_err kvs_svc_config_load(kvs_svc_config *c, const char *path);
/* Parses argv: `-c FILE` / `--config=FILE` first, then every `--key=value`
 * or `--key value` over it. *help set on -h/--help. */
kvs_err kvs_svc_config_args(kvs_svc_config *c, int argc, char **argv, int *help);
void kvs_svc_config_usage(FILE *f);
/* `kvstashd --print-config [--key=value ...]`: writes a kvstashd.conf to f
 * with every option of the table in its order, its help as comments, each
 * flag given as a `key = value` line (a repeated one once per flag, in flag
 * order) and every other option commented out with its default. argv[1..]
 * are only such flags (dashes read as underscores, `--key value` too); each
 * is checked as kvstashd would, and a bad one writes nothing: KVS_EINVAL.
 * cachesvc/kvstashd.conf.example is this output (cmake/KvsConfExample.cmake). */
kvs_err kvs_svc_config_print(FILE *f, int argc, char **argv);
/* The last error of the functions above on this thread, one line
 * without a newline: `PATH:LINE: key = "value": why`, `--key=value: why`,
 * `unknown option "lissten" (did you mean "listen"?)`. Static, thread-local. */
const char *kvs_svc_config_error(void);

typedef struct kvs_svc kvs_svc;

/* Opens the stores (creating the data dir and the server secret on first
 * run), loads the index, binds the listeners and the HTTP port, and starts the
 * threads. The config is copied. */
kvs_err kvs_svc_create(const kvs_svc_config *c, kvs_svc **out);
/* Graceful stop: refuse new work, let requests in flight finish, flush hit
 * counters and the WAL, close. Idempotent. */
void kvs_svc_stop(kvs_svc *s);
/* Stops (if not yet) and frees. NULL does nothing. */
void kvs_svc_free(kvs_svc *s);
/* Live reload (kvstashd does it on SIGHUP): c is the config read again, or
 * NULL when it could not be read (why says why: logged, counted in
 * kvstash_config_reloads_total{result="error"}, shown in /v1/info, and the
 * config in force kept). Applied at once: the tenants and their tokens (a
 * new table swapped in whole; requests admitted before finish) and
 * log_level. Every other option that differs is logged "needs restart" and
 * left as it is. KVS_OK when applied, KVS_EINVAL when rejected. */
kvs_err kvs_svc_reload(kvs_svc *s, const kvs_svc_config *c, const char *why);

#ifdef __cplusplus
}
#endif
#endif
