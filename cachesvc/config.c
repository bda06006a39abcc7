/* config.c - kvstashd's options: a `key = value` file and the same keys as
 * flags. The file format is core/kvs_conf.h's (shared with the CLI): one
 * option per line, `#` comments, quoted values; sizes take K/M/G/T suffixes
 * (powers of 1024). Every error is one line (kvs_svc_config_error). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_conf.h"
#include "svc_int.h"

void kvs_svc_config_defaults(kvs_svc_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->data_dir, sizeof c->data_dir, "./kvstash-data");
  snprintf(c->listen[0], sizeof c->listen[0], "tcp://127.0.0.1:7878");
  snprintf(c->listen[1], sizeof c->listen[1], "tcp+stream://127.0.0.1:7880");
  c->n_listen = 0; /* the defaults apply only when no listen option is given */
  snprintf(c->http, sizeof c->http, "127.0.0.1:7879");
  c->workers = 8;
  c->max_msg = 64ull << 20;
  c->deadline_ms = 10000;
  c->durability_sync = 1;
  c->ram_bytes = 1ull << 30;
  c->disk_bytes = 64ull << 30;
  c->cold_bytes = 256ull << 30;
  c->blob_min = 64ull << 10;
  c->half_life_s = 3600;
  c->prefill_cost = 1.0;
  c->flush_interval_ms = 5000;
  c->lease_ms = 5000;
  c->log_level = KVS_LOG_WARN;
  kvs__cluster_config_defaults(&c->cluster);
}

/* The last error of this thread, one line (kvs_svc_config_error). */
static _Thread_local char g_err[640];
static _Thread_local char g_flag[640]; /* the same error as a flag would say it */

const char *kvs_svc_config_error(void) { return g_err; }

static int bad(const char *key, const char *value, const char *why) {
  snprintf(g_err, sizeof g_err, "%s = \"%.200s\": %s", key, value ? value : "", why);
  snprintf(g_flag, sizeof g_flag, "--%s=%.200s: %s", key, value ? value : "", why);
  return KVS_EINVAL;
}

/* The option names, read from the usage text (so that a key documented
 * there, by whichever file adds it, is also suggested for a typo). */
static const char *suggest_key(const char *key) {
  static _Thread_local char names[4096];
  const char *cand[128];
  size_t n = 0;
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) return NULL;
  kvs_svc_config_usage(f);
  fclose(f);
  size_t used = 0;
  for (char *line = text; line && *line && n < 128;) {
    char *nl = strchr(line, '\n');
    size_t k = 0;
    if (line[0] == ' ' && line[1] == ' ' && line[2] != ' ')
      while (line[2 + k] == '_' || (line[2 + k] >= 'a' && line[2 + k] <= 'z'))
        k++;
    if (k && (line[2 + k] == ' ' || line[2 + k] == '\n' || !line[2 + k]) &&
        used + k + 1 < sizeof names) {
      memcpy(names + used, line + 2, k);
      names[used + k] = 0;
      cand[n++] = names + used;
      used += k + 1;
    }
    line = nl ? nl + 1 : NULL;
  }
  free(text);
  return kvs_conf_suggest(key, cand, n);
}

static int unknown(const char *key) {
  const char *s = suggest_key(key);
  if (s) {
    snprintf(g_err, sizeof g_err, "unknown option \"%.64s\" (did you mean \"%s\"?)", key, s);
    snprintf(g_flag, sizeof g_flag, "unknown option --%.64s (did you mean --%s?)", key, s);
  } else {
    snprintf(g_err, sizeof g_err, "unknown option \"%.64s\" (kvstashd --help lists them)", key);
    snprintf(g_flag, sizeof g_flag, "unknown option --%.64s (kvstashd --help lists them)", key);
  }
  return KVS_EINVAL;
}

/* tcp://HOST:PORT, tls+tcp://, tcp+stream://: the port 1..65535; ipc://,
 * ipc+stream://: a path. */
static int url_ok(const char *u) {
  const char *sep = strstr(u, "://");
  if (!sep) return 0;
  const char *rest = sep + 3;
  if (!strncmp(u, "ipc", 3)) return *rest != 0;
  return *rest && kvs_conf_hostport(rest, NULL) == KVS_OK;
}

static int parse_size(const char *v, uint64_t *out) {
  return kvs_conf_parse_size(v, out) == KVS_OK ? 0 : -1;
}

static int parse_u32(const char *v, uint32_t *out) {
  errno = 0;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || end == v || *end || x > 0xFFFFFFFFull) return -1;
  *out = (uint32_t)x;
  return 0;
}

static int copy_str(char *dst, size_t cap, const char *v) {
  size_t n = strlen(v);
  if (n >= cap) return -1;
  memcpy(dst, v, n + 1);
  return 0;
}

static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > KVS_WIRE_TENANT_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return 0;
  return 1;
}

kvs_err kvs_svc_config_set(kvs_svc_config *c, const char *key, const char *v) {
  if (!c || !key || !v) return KVS_EINVAL;
  uint32_t u;
  if (!strcmp(key, "data_dir")) {
    if (!*v || copy_str(c->data_dir, sizeof c->data_dir, v)) return bad(key, v, "path");
  } else if (!strcmp(key, "cold_dir")) {
    if (copy_str(c->cold_dir, sizeof c->cold_dir, v)) return bad(key, v, "path too long");
  } else if (!strcmp(key, "listen")) {
    /* comma-separated list; appends */
    char tmp[1024];
    if (copy_str(tmp, sizeof tmp, v)) return bad(key, v, "too long");
    for (char *save = NULL, *tok = strtok_r(tmp, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save)) {
      if (strncmp(tok, "tcp://", 6) && strncmp(tok, "ipc://", 6) &&
          strncmp(tok, "tls+tcp://", 10) && !kvs__stream_url(tok))
        return bad(key, tok,
                   "tcp://, ipc://, tls+tcp://, tcp+stream:// or ipc+stream:// URL expected");
      if (!url_ok(tok)) return bad(key, tok, "HOST:PORT with a port of 1..65535 (or ipc://PATH)");
      if (c->n_listen >= KVS_SVC_MAX_LISTEN) return bad(key, tok, "too many listeners");
      if (copy_str(c->listen[c->n_listen], sizeof c->listen[0], tok))
        return bad(key, tok, "too long");
      c->n_listen++;
    }
  } else if (!strcmp(key, "http")) {
    if (copy_str(c->http, sizeof c->http, v)) return bad(key, v, "too long");
    if (*v && kvs_conf_hostport(v, NULL) != KVS_OK)
      return bad(key, v, "HOST:PORT with a port of 1..65535 expected (or empty = off)");
  } else if (!strcmp(key, "tls_cert_key_file")) {
    if (copy_str(c->tls_cert_key_file, sizeof c->tls_cert_key_file, v))
      return bad(key, v, "too long");
  } else if (!strcmp(key, "admin_token")) {
    if (copy_str(c->admin_token, sizeof c->admin_token, v)) return bad(key, v, "at most 64 bytes");
  } else if (!strcmp(key, "workers")) {
    if (parse_u32(v, &u) || u < 1 || u > 256) return bad(key, v, "1..256");
    c->workers = (int)u;
  } else if (!strcmp(key, "max_msg")) {
    if (parse_size(v, &c->max_msg) || c->max_msg < 4096 || c->max_msg > 0xFFFFFFFFull)
      return bad(key, v, "4K..4G");
  } else if (!strcmp(key, "request_deadline_ms")) {
    if (parse_u32(v, &c->deadline_ms) || c->deadline_ms == 0) return bad(key, v, "ms > 0");
  } else if (!strcmp(key, "durability")) {
    if (!strcmp(v, "sync"))
      c->durability_sync = 1;
    else if (!strcmp(v, "async"))
      c->durability_sync = 0;
    else
      return bad(key, v, "sync or async");
  } else if (!strcmp(key, "ram_bytes")) {
    if (parse_size(v, &c->ram_bytes)) return bad(key, v, "size");
  } else if (!strcmp(key, "disk_bytes")) {
    if (parse_size(v, &c->disk_bytes) || c->disk_bytes == 0) return bad(key, v, "size > 0");
  } else if (!strcmp(key, "cold_bytes")) {
    if (parse_size(v, &c->cold_bytes)) return bad(key, v, "size");
  } else if (!strcmp(key, "blob_min")) {
    if (parse_size(v, &c->blob_min)) return bad(key, v, "size");
  } else if (!strcmp(key, "default_ttl_s")) {
    if (parse_u32(v, &c->default_ttl_s)) return bad(key, v, "seconds");
  } else if (!strcmp(key, "half_life_s")) {
    char *end;
    c->half_life_s = strtod(v, &end);
    if (end == v || *end || c->half_life_s < 0) return bad(key, v, "seconds >= 0");
  } else if (!strcmp(key, "eviction")) {
    if (!strcmp(v, "cost"))
      c->evict_lru = 0;
    else if (!strcmp(v, "lru"))
      c->evict_lru = 1;
    else
      return bad(key, v, "cost | lru");
  } else if (!strcmp(key, "prefill_cost")) {
    char *end;
    c->prefill_cost = strtod(v, &end);
    if (end == v || *end || c->prefill_cost <= 0) return bad(key, v, "number > 0");
  } else if (!strcmp(key, "model_cost")) {
    const char *colon = strchr(v, ':');
    if (!colon || colon - v != 32) return bad(key, v, "<32 hex model id>:<cost>");
    if (c->n_model_costs >= KVS_SVC_MAX_MODEL_COSTS) return bad(key, v, "too many");
    char hex[33];
    memcpy(hex, v, 32);
    hex[32] = 0;
    kvs_svc_model_cost *mc = &c->model_costs[c->n_model_costs];
    char *end;
    mc->cost = strtod(colon + 1, &end);
    if (kvs_hash128_from_hex(hex, &mc->model) != KVS_OK || end == colon + 1 || *end ||
        mc->cost <= 0)
      return bad(key, v, "<32 hex model id>:<cost>");
    c->n_model_costs++;
  } else if (!strcmp(key, "tenant")) {
    const char *colon = strchr(v, ':');
    if (!colon || !name_ok(v, (size_t)(colon - v))) return bad(key, v, "<name>:<token>");
    size_t tl = strlen(colon + 1);
    if (tl == 0 || tl > KVS_WIRE_TOKEN_MAX) return bad(key, "(hidden)", "token of 1..64 bytes");
    if (c->n_tenants >= KVS_SVC_MAX_TENANTS) return bad(key, "(hidden)", "too many tenants");
    kvs_svc_tenant *t = &c->tenants[c->n_tenants++];
    memcpy(t->name, v, (size_t)(colon - v));
    t->name[colon - v] = 0;
    memcpy(t->token, colon + 1, tl + 1);
  } else if (!strcmp(key, "zero_freed")) {
    if (!strcmp(v, "on"))
      c->zero_freed = 1;
    else if (!strcmp(v, "off"))
      c->zero_freed = 0;
    else
      return bad(key, v, "on or off");
  } else if (!strcmp(key, "stream_insecure")) {
    if (!strcmp(v, "on"))
      c->stream_insecure = 1;
    else if (!strcmp(v, "off"))
      c->stream_insecure = 0;
    else
      return bad(key, v, "on or off");
  } else if (!strcmp(key, "shm")) {
    if (!strcmp(v, "on"))
      c->shm = 1;
    else if (!strcmp(v, "off"))
      c->shm = 0;
    else
      return bad(key, v, "on or off");
  } else if (!strcmp(key, "shm_bytes")) {
    if (parse_size(v, &c->shm_bytes)) return bad(key, v, "size");
  } else if (!strcmp(key, "lease_ms")) {
    if (parse_u32(v, &c->lease_ms) || c->lease_ms == 0 || c->lease_ms > 600000)
      return bad(key, v, "1..600000 ms");
  } else if (!strcmp(key, "flush_interval_ms")) {
    if (parse_u32(v, &c->flush_interval_ms) || c->flush_interval_ms == 0) return bad(key, v, "ms");
  } else if (!strcmp(key, "log_level")) {
    int l = kvs_log_parse_level(v);
    if (l < 0) return bad(key, v, "error|warn|info|debug|trace");
    c->log_level = l;
  } else if (!strcmp(key, "quota")) {
    if (kvs__quota_config_set(c, v)) return bad(key, v, kvs__quota_config_why()); /* quota.c */
  } else if (!strncmp(key, "cluster", 7)) {
    int r = kvs__cluster_config_set(&c->cluster, key, v); /* cluster.c; -2: no such key */
    if (r) return r == -2 ? unknown(key) : bad(key, v, "see docs/cluster.md");
  } else {
    return unknown(key);
  }
  return KVS_OK;
}

static kvs_err load_cb(void *ctx, const char *key, const char *value, char *why, size_t cap) {
  kvs_err rc = kvs_svc_config_set(ctx, key, value);
  if (rc != KVS_OK) snprintf(why, cap, "%s", g_err);
  return rc;
}

kvs_err kvs_svc_config_load(kvs_svc_config *c, const char *path) {
  char err[sizeof g_err];
  kvs_err rc = kvs_conf_parse_file(path, load_cb, c, err, sizeof err);
  if (rc != KVS_OK) snprintf(g_err, sizeof g_err, "%s", err);
  return rc;
}

kvs_err kvs_svc_config_args(kvs_svc_config *c, int argc, char **argv, int *help) {
  *help = 0;
  /* the config file first, so that flags override it */
  for (int i = 1; i < argc; i++) {
    const char *file = NULL;
    if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
      file = argv[++i];
    else if (!strncmp(argv[i], "--config=", 9))
      file = argv[i] + 9;
    if (file) KVS_TRY(kvs_svc_config_load(c, file));
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      *help = 1;
      return KVS_OK;
    }
    if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
      i++;
      continue;
    }
    if (!strncmp(a, "--config=", 9)) continue;
    if (strncmp(a, "--", 2) != 0) {
      snprintf(g_err, sizeof g_err, "%.100s: options are --key=value or -c FILE", a);
      return KVS_EINVAL;
    }
    char key[64];
    const char *val;
    const char *eq = strchr(a, '=');
    if (eq) {
      size_t kl = (size_t)(eq - a - 2);
      if (kl >= sizeof key) {
        unknown(a + 2);
        memcpy(g_err, g_flag, sizeof g_err);
        return KVS_EINVAL;
      }
      memcpy(key, a + 2, kl);
      key[kl] = 0;
      val = eq + 1;
    } else {
      if (strlen(a + 2) >= sizeof key) {
        unknown(a + 2);
        memcpy(g_err, g_flag, sizeof g_err);
        return KVS_EINVAL;
      }
      if (i + 1 >= argc) {
        snprintf(g_err, sizeof g_err, "%.100s: no value (--key=value or --key value)", a);
        return KVS_EINVAL;
      }
      snprintf(key, sizeof key, "%s", a + 2);
      val = argv[++i];
    }
    for (char *p = key; *p; p++)
      if (*p == '-') *p = '_';
    kvs_err rc = kvs_svc_config_set(c, key, val);
    if (rc != KVS_OK) {
      memcpy(g_err, g_flag, sizeof g_err);
      return rc;
    }
  }
  return KVS_OK;
}

void kvs_svc_config_usage(FILE *f) {
  fputs("usage: kvstashd [-c FILE] [--key=value ...] [--check-config]   (-V/--version, -h/--help)\n"
        "--check-config: read the config and the flags, say what is wrong or OK, exit (2 or 0).\n"
        "Every option can be given in the config file (key = value) or as a flag.\n"
        "  data_dir            T1 store and server secret        (./kvstash-data)\n"
        "  cold_dir            T2 store on a colder disk; empty = no T2 ()\n"
        "  listen              nng URLs, comma list or repeated   (tcp://127.0.0.1:7878,\n"
        "                      tcp+stream://127.0.0.1:7880)\n"
        "                      tcp+stream:// ipc+stream://: byte-stream GET listeners\n"
        "  http                control plane host:port; empty = off (127.0.0.1:7879)\n"
        "  admin_token         bearer token required by /v1/      ()\n"
        "  tls_cert_key_file   PEM cert + key for tls+tcp:// listeners ()\n"
        "  tenant              name:token, repeated; none = auth off\n"
        "  workers             data-plane threads                 (8)\n"
        "  max_msg             largest frame, bytes               (64M)\n"
        "  request_deadline_ms answer or log as late after        (10000)\n"
        "  durability          sync | async                       (sync)\n"
        "  ram_bytes           T0 RAM budget                      (1G)\n"
        "  disk_bytes          T1 capacity                        (64G)\n"
        "  cold_bytes          T2 capacity                        (256G)\n"
        "  blob_min            values >= this go to blob files    (64K)\n"
        "  default_ttl_s       idle TTL when a PUT gives none; 0 = none (0)\n"
        "  half_life_s         age half-life of the eviction score (3600)\n"
        "  eviction            cost (recompute saved per byte) | lru (cost)\n"
        "  prefill_cost        per-token recompute cost, default  (1.0)\n"
        "  model_cost          <hex model id>:<cost>, repeated\n"
        "  flush_interval_ms   hit counters to disk every         (5000)\n"
        "  stream_insecure     allow tcp+stream:// off loopback on|off (off)\n"
        "  zero_freed          zero RAM-tier and shm ranges when freed on|off (off)\n"
        "  shm                 same-host shared-memory fast path on|off (off)\n"
        "  shm_bytes           per-tenant segment size; 0 = ram_bytes (0)\n"
        "  lease_ms            how long a LEASE pins its range    (5000)\n"
        "  log_level           error|warn|info|debug|trace        (warn)\n",
        f);
  kvs__quota_usage(f);
  kvs__cluster_usage(f);
}
