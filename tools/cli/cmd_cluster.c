/* cmd_cluster.c - `kvstash cluster status|nodes|drain NODE|rebalance`
 * (docs/cluster.md): the CLI's view of a cluster through its etcd:// URL. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kvs_net.h"
#include "kvstash_cluster.h"

static const char cluster_help[] =
    "usage: kvstash -u etcd://HOST:2379/NAME cluster VERB [options]\n\n"
    "  status             nodes, R, entries and bytes of each node, totals\n"
    "  nodes              the membership view (etcd): id, data URL, host, zone,\n"
    "                     capacity, state, whether this machine reaches it\n"
    "  drain NODE         mark NODE draining (it owns nothing new), copy its keys to\n"
    "                     their new owners and delete them from it (this tenant)\n"
    "  rebalance          copy every key of this tenant to owners that lack it and drop\n"
    "                     copies no longer owned (after a join or a leave)\n"
    "  events             every node's stored/removed events (GET /v1/events, admin\n"
    "                     token): --after SEQ (default 0), --limit N (default 1000)\n"
    "  --rate MB          copy at most MB MiB/s (drain, rebalance; default 64, 0 = no limit)\n\n"
    "example:\n  kvstash -u etcd://10.0.0.1:2379/prod -t team-a cluster rebalance --rate 200\n";

static int nodes_of(cli *x, kvs_cluster_node **out, size_t *n) {
  *out = NULL;
  size_t cap = 0;
  for (int t = 0; t < 3; t++) {
    kvs_err e = kvs_cluster_nodes(x->c, *out, cap, n);
    if (e != KVS_OK) return cli_fail(x, "cluster", e, "%s", kvs_client_errmsg(x->c));
    if (*n <= cap) return CLI_OK;
    free(*out);
    cap = *n + 4;
    *out = calloc(cap, sizeof **out);
    if (!*out) return cli_fail(x, "cluster", KVS_ENOMEM, "out of memory");
  }
  return cli_fail(x, "cluster", KVS_EAGAIN, "the view keeps changing");
}

/* Entries (v[0]) and the bytes its disk tiers hold (*disk; the RAM tier
 * holds copies) of one node, by its own data URL (-1 when unreachable). */
static int node_stats(cli *x, const kvs_cluster_node *nd, uint64_t *v, size_t cap, size_t *n,
                      uint64_t *disk) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = nd->data;
  o.tenant = x->tenant;
  o.token = x->token[0] ? x->token : NULL;
  o.connect_timeout_ms = x->timeout_ms < 1000 ? x->timeout_ms : 1000;
  o.n_sockets = 1;
  kvs_client *c = NULL;
  int rc = kvs_client_create(&o, &c) == KVS_OK && kvs_stats(c, v, cap, n) == KVS_OK ? 0 : -1;
  kvs_tier_stat t[16];
  size_t nt = 0;
  *disk = 0;
  if (rc == 0 && kvs_stats_tiers(c, t, 16, &nt) != KVS_OK) rc = -1;
  for (size_t i = 0; i < nt; i++)
    if (t[i].tier > 0) *disk += t[i].used;
  kvs_client_free(c);
  return rc;
}

static int do_nodes(cli *x, int with_stats) {
  kvs_cluster_node *nodes;
  size_t n;
  int rc = nodes_of(x, &nodes, &n);
  if (rc) return rc;
  cJSON *arr = x->json ? cJSON_CreateArray() : NULL;
  uint64_t tot_entries = 0, tot_bytes = 0;
  if (!x->json)
    printf("%-16s %-24s %-10s %-8s %10s %-9s %-4s%s\n", "NODE", "DATA", "HOST", "ZONE", "CAPACITY",
           "STATE", "UP", with_stats ? "   ENTRIES      BYTES" : "");
  for (size_t i = 0; i < n; i++) {
    const kvs_cluster_node *nd = &nodes[i];
    uint64_t v[8] = {0};
    size_t nv = 0;
    uint64_t bytes = 0; /* disk tiers (the RAM tier holds copies) */
    int st = with_stats ? node_stats(x, nd, v, 8, &nv, &bytes) : -1;
    if (st == 0) tot_entries += v[0], tot_bytes += bytes;
    char cap[32], b[32];
    if (x->json) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "id", nd->id);
      cJSON_AddStringToObject(o, "data", nd->data);
      cJSON_AddStringToObject(o, "stream", nd->stream);
      cJSON_AddStringToObject(o, "http", nd->http);
      cJSON_AddStringToObject(o, "host", nd->host);
      cJSON_AddStringToObject(o, "zone", nd->zone);
      cJSON_AddNumberToObject(o, "capacity", (double)nd->capacity);
      cJSON_AddNumberToObject(o, "replicas", nd->replicas);
      cJSON_AddStringToObject(o, "state", nd->draining ? "draining" : "up");
      cJSON_AddBoolToObject(o, "connected", nd->connected);
      if (with_stats && st == 0) {
        cJSON_AddNumberToObject(o, "entries", (double)v[0]);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
      }
      cJSON_AddItemToArray(arr, o);
    } else {
      char host[9] = {0};
      memcpy(host, nd->host, strnlen(nd->host, 8)); /* the host id's first 8 chars */
      printf("%-16s %-24s %-10s %-8s %10s %-9s %-4s", nd->id, nd->data, host,
             nd->zone[0] ? nd->zone : "-", cli_fmt_bytes(nd->capacity, cap, sizeof cap),
             nd->draining ? "draining" : "up", nd->connected ? "yes" : "no");
      if (with_stats && st == 0)
        printf(" %9llu %10s", (unsigned long long)v[0], cli_fmt_bytes(bytes, b, sizeof b));
      else if (with_stats)
        printf(" %9s %10s", "?", "?");
      printf("\n");
    }
  }
  uint32_t r = kvs_cluster_replicas(x->c);
  if (x->json) {
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "url", x->url);
    cJSON_AddNumberToObject(doc, "replicas", r);
    cJSON_AddItemToObject(doc, "nodes", arr);
    if (with_stats) {
      cJSON_AddNumberToObject(doc, "entries_total", (double)tot_entries);
      cJSON_AddNumberToObject(doc, "bytes_total", (double)tot_bytes);
    }
    cli_print_json(doc);
  } else if (with_stats) {
    char b[32];
    printf("%zu node(s), R = %u: %llu stored copies, %s on disk\n", n, r,
           (unsigned long long)tot_entries, cli_fmt_bytes(tot_bytes, b, sizeof b));
  }
  free(nodes);
  return CLI_OK;
}

static int do_move(cli *x, const char *node, uint64_t rate) {
  kvs_cluster_rebalance_stats st;
  kvs_err e =
      node ? kvs_cluster_drain(x->c, node, rate, &st) : kvs_cluster_rebalance(x->c, rate, &st);
  if (e != KVS_OK) return cli_fail(x, "cluster", e, "%s", kvs_client_errmsg(x->c));
  if (x->json) {
    cJSON *o = cJSON_CreateObject();
    if (node) cJSON_AddStringToObject(o, "drained", node);
    cJSON_AddNumberToObject(o, "scanned", (double)st.scanned);
    cJSON_AddNumberToObject(o, "copied", (double)st.copied);
    cJSON_AddNumberToObject(o, "copied_bytes", (double)st.copied_bytes);
    cJSON_AddNumberToObject(o, "dropped", (double)st.dropped);
    cJSON_AddNumberToObject(o, "failed", (double)st.failed);
    cJSON_AddNumberToObject(o, "seconds", st.seconds);
    cli_print_json(o);
  } else {
    char b[32];
    printf("%s%s: %llu copies scanned, %llu copied (%s, %.1f MiB/s), %llu dropped, %llu failed, "
           "%.2f s\n",
           node ? "drain " : "rebalance", node ? node : "", (unsigned long long)st.scanned,
           (unsigned long long)st.copied, cli_fmt_bytes(st.copied_bytes, b, sizeof b),
           st.seconds > 0 ? (double)st.copied_bytes / st.seconds / 1048576.0 : 0.0,
           (unsigned long long)st.dropped, (unsigned long long)st.failed, st.seconds);
  }
  return st.failed ? CLI_FAIL : CLI_OK;
}

/* Every node's stored/removed events after seq `after` (GET /v1/events on
 * each node's control plane, with the admin token): a table, or with
 * --json {"nodes":[page, ...]}. A wildcard HTTP host is replaced by the
 * host of the node's data URL. */
static int do_events(cli *x, uint64_t after, uint32_t limit) {
  kvs_cluster_node *nodes;
  size_t n;
  int rc = nodes_of(x, &nodes, &n);
  if (rc) return rc;
  char saved[sizeof x->http];
  memcpy(saved, x->http, sizeof saved);
  cJSON *all = x->json ? cJSON_CreateArray() : NULL;
  int failed = 0;
  if (!x->json)
    printf("%-12s %8s %-13s %-32s %-8s %s\n", "NODE", "SEQ", "TYPE", "BLOCK", "MEDIUM", "TENANT");
  for (size_t i = 0; i < n; i++) {
    const kvs_cluster_node *nd = &nodes[i];
    char hh[256], dh[256]; /* core/kvs_net.h: HOST:PORT, brackets off */
    int hp = 0, dp = 0;
    if (!nd->http[0] || kvs_hostport_split(nd->http, hh, sizeof hh, &hp) != KVS_OK) continue;
    const char *h = hh;
    if (!hh[0] || !strcmp(hh, "0.0.0.0") || !strcmp(hh, "::")) { /* the data URL's host */
      if (kvs_url_hostport(nd->data, dh, sizeof dh, &dp) != KVS_OK) continue;
      h = dh;
    }
    snprintf(x->http, sizeof x->http, strchr(h, ':') ? "[%s]:%d" : "%s:%d", h, hp);
    char path[96];
    snprintf(path, sizeof path, "/v1/events?after=%llu&limit=%u", (unsigned long long)after, limit);
    cJSON *j = NULL;
    kvs_err e = cli_http_json(x, "GET", path, &j);
    if (e != KVS_OK) {
      fprintf(stderr, "kvstash cluster events: %s (%s): %s\n", nd->id, x->http, kvs_strerror(e));
      failed++;
      continue;
    }
    if (x->json) {
      cJSON_AddItemToArray(all, j);
      continue;
    }
    const cJSON *ev;
    cJSON_ArrayForEach(ev, cJSON_GetObjectItem(j, "events")) {
      const cJSON *seq = cJSON_GetObjectItem(ev, "seq"), *type = cJSON_GetObjectItem(ev, "type"),
                  *bh = cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "block_hashes"), 0),
                  *med = cJSON_GetObjectItem(ev, "medium"),
                  *ten = cJSON_GetObjectItem(ev, "tenant");
      printf(
          "%-12s %8.0f %-13s %-32s %-8s %s\n", nd->id, cJSON_IsNumber(seq) ? seq->valuedouble : 0,
          cJSON_IsString(type) ? type->valuestring : "?",
          cJSON_IsString(bh) ? bh->valuestring : "?", cJSON_IsString(med) ? med->valuestring : "?",
          cJSON_IsString(ten) ? ten->valuestring : "?");
    }
    cJSON_Delete(j);
  }
  memcpy(x->http, saved, sizeof saved);
  if (x->json) {
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "nodes", all);
    cli_print_json(doc);
  }
  free(nodes);
  return failed ? CLI_FAIL : CLI_OK;
}

int cmd_cluster(cli *x, int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      fputs(cluster_help, stdout);
      return CLI_OK;
    }
  if (argc < 2)
    return cli_usage_err("cluster", "a verb: status, nodes, drain NODE, rebalance, events");
  const char *verb = argv[1];
  uint64_t rate = 64ull << 20, after = 0;
  uint32_t limit = 1000;
  const char *node = NULL;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "--rate") && i + 1 < argc) {
      char *end;
      double mb = strtod(argv[++i], &end);
      if (end == argv[i] || *end || mb < 0) return cli_usage_err("cluster", "--rate MB (>= 0)");
      rate = (uint64_t)(mb * 1048576.0);
    } else if (!strcmp(argv[i], "--after") && i + 1 < argc) {
      after = strtoull(argv[++i], NULL, 10);
    } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
      limit = (uint32_t)strtoul(argv[++i], NULL, 10);
      if (limit < 1 || limit > 10000) return cli_usage_err("cluster", "--limit 1..10000");
    } else if (!strncmp(argv[i], "--", 2)) {
      return cli_usage_err("cluster", "unknown option '%s'", argv[i]);
    } else if (!strcmp(verb, "drain") && !node) {
      node = argv[i];
    } else {
      return cli_usage_err("cluster", "unexpected argument '%s'", argv[i]);
    }
  }
  if (strncmp(x->url, "etcd://", 7))
    return cli_usage_err("cluster", "needs a cluster URL: -u etcd://HOST:2379/NAME (got %s)",
                         x->url);
  if (!strcmp(verb, "drain") && !node) return cli_usage_err("cluster", "drain NODE");
  if (strcmp(verb, "status") && strcmp(verb, "nodes") && strcmp(verb, "drain") &&
      strcmp(verb, "rebalance") && strcmp(verb, "events"))
    return cli_usage_err("cluster", "unknown verb '%s'", verb);
  int rc = cli_client(x, "cluster");
  if (rc) return rc;
  if (!strcmp(verb, "status")) return do_nodes(x, 1);
  if (!strcmp(verb, "nodes")) return do_nodes(x, 0);
  if (!strcmp(verb, "events")) return do_events(x, after, limit);
  return do_move(x, node, rate);
}
