/* kvstash - the admin CLI of kvstash: one binary, verbs, tables for people
 * and --json for scripts (docs/cli.md).
 *
 * Settings come from flags, then the environment (KVS_URL, KVS_HTTP,
 * KVS_TENANT, KVS_TOKEN, KVS_ADMIN_TOKEN, KVS_CONFIG), then a config file
 * (--config, $KVS_CONFIG or ~/.config/kvstash/cli.conf, in kvstashd's
 * `key = value` format: a kvstashd.conf works as it is), then the defaults of
 * kvstashd (tcp://127.0.0.1:7878, HTTP 127.0.0.1:7879, tenant "default"). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "kvs_conf.h"
#include "kvs_conf_options.h"

typedef struct verb {
  const char *name;
  cli_verb_fn fn;
  const char *summary;
} verb;

static const verb verbs[] = {
    {"status", cmd_status, "server, tiers, capacity, hit rate, top tenants"},
    {"ls", cmd_ls, "list entries: filter by model, tier, kind, age, size; sort; page"},
    {"show", cmd_show, "one entry: metadata, layout, codec, sizes, checksum, tokens as text"},
    {"evict", cmd_evict, "delete entries by key, age, model, tier or down to a byte target"},
    {"pin", cmd_pin, "protect entries from eviction"},
    {"unpin", cmd_pin, "let pinned entries be evicted again"},
    {"ttl", cmd_ttl, "set an entry's idle TTL (0 = none)"},
    {"export", cmd_export, "write the tenant's entries to a checksummed archive"},
    {"import", cmd_import, "load an archive; bad entries are reported and skipped"},
    {"warmup", cmd_warmup, "compute chunk KV of documents with the reference engine and store it"},
    {"bench", cmd_bench, "PUT/GET throughput and latency against the running server"},
    {"doctor", cmd_doctor, "check server, auth, store, model cache and GPU; say what is wrong"},
    {"cluster", cmd_cluster, "etcd:// clusters: status, nodes, drain NODE, rebalance, events"},
    {NULL, NULL, NULL}};

static void main_help(FILE *f) {
  fprintf(f, "kvstash - admin CLI of the kvstash KV-cache store\n\n"
             "usage: kvstash [global options] VERB [options] [args]\n"
             "       kvstash VERB --help     (every verb has help with an example)\n\n"
             "verbs:\n");
  for (const verb *v = verbs; v->name; v++)
    fprintf(f, "  %-8s %s\n", v->name, v->summary);
  fprintf(f,
          "\nglobal options (anywhere on the line):\n"
          "  -u, --url URL          data plane, tcp://HOST:PORT or ipc://PATH  [$KVS_URL]\n"
          "      --http HOST:PORT   HTTP control plane                          [$KVS_HTTP]\n"
          "  -t, --tenant NAME      tenant namespace                            [$KVS_TENANT]\n"
          "  -k, --token TOKEN      the tenant's token                          [$KVS_TOKEN]\n"
          "      --admin-token TOK  bearer token of the HTTP admin API     [$KVS_ADMIN_TOKEN]\n"
          "  -c, --config FILE      key = value file (a kvstashd.conf works)    [$KVS_CONFIG]\n"
          "      --timeout MS       connect/request deadline (default 2000)\n"
          "      --json             one JSON document on stdout instead of tables\n"
          "      --no-progress      no progress bars (they show only on a terminal)\n"
          "  -h, --help             this text\n"
          "  -V, --version          the version (of the CLI, libkvstash, the wire protocol)\n\n"
          "config file keys: url (or listen: the first URL), http, tenant (NAME or NAME:TOKEN,\n"
          "  as in kvstashd.conf), token, admin_token. Default file: ~/.config/kvstash/cli.conf\n\n"
          "exit codes: 0 ok, 1 operation failed, 2 usage error, 3 server unreachable,\n"
          "            4 auth failed (wrong or missing token)\n\n"
          "examples:\n"
          "  kvstash status\n"
          "  kvstash -t rag -k \"$TOKEN\" ls --sort size --limit 20\n"
          "  kvstash evict --older-than 7d --dry-run\n"
          "  kvstash export backup.kvsa && kvstash import backup.kvsa\n");
}

static void set(char *dst, size_t cap, const char *v) {
  size_t n = v ? strlen(v) : 0;
  if (n >= cap) n = cap - 1; /* cut at the field's size */
  if (n) memcpy(dst, v, n);
  dst[n] = 0;
}

/* The keys the CLI takes from a `key = value` file, read with kvstashd's own
 * parser (core/conf.c: quotes, comments, one-line errors). kvstashd's other
 * keys (its option table, core/kvs_conf_options.h) are skipped, so a
 * kvstashd.conf works as it is; any other key is a typo, refused with the
 * nearest key of either list. */
#define CLI_SVC_KEY(key, ...) #key,
static const char *const cfg_keys[] = {"url",    "listen",     "http",
                                       "tenant", "token",      "admin_token",
                                       "model",  "model_path", KVS_SVC_OPTION_MAP(CLI_SVC_KEY)};
#undef CLI_SVC_KEY
#define CFG_N_KEYS (sizeof cfg_keys / sizeof cfg_keys[0])
typedef struct cfg_ctx {
  cli *x;
  int got_url, got_tenant, got_token;
} cfg_ctx;

static kvs_err cfg_cb(void *ctx, const char *k, const char *v, char *why, size_t why_cap) {
  cfg_ctx *c = ctx;
  cli *x = c->x;
  if (!strcmp(k, "url") || (!strcmp(k, "listen") && !c->got_url)) {
    char u[512];
    snprintf(u, sizeof u, "%s", v);
    char *comma = strchr(u, ',');
    if (comma) *comma = 0;
    char *p = u;
    while (*p == ' ' || *p == '\t')
      p++;
    size_t n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      p[--n] = 0;
    set(x->url, sizeof x->url, p);
    c->got_url = 1;
  } else if (!strcmp(k, "http")) {
    set(x->http, sizeof x->http, v);
  } else if (!strcmp(k, "tenant") && !c->got_tenant) {
    /* kvstashd's NAME:TOKEN: the first one is the default (-t NAME picks another) */
    char t[256];
    snprintf(t, sizeof t, "%s", v);
    char *colon = strchr(t, ':');
    if (colon) {
      *colon = 0;
      if (!c->got_token) set(x->token, sizeof x->token, colon + 1);
    }
    set(x->tenant, sizeof x->tenant, t);
    c->got_tenant = 1;
  } else if (!strcmp(k, "token")) {
    set(x->token, sizeof x->token, v);
    c->got_token = 1;
  } else if (!strcmp(k, "admin_token")) {
    set(x->admin_token, sizeof x->admin_token, v);
  } else if (!strcmp(k, "model") || !strcmp(k, "model_path")) {
    set(x->model_path, sizeof x->model_path, v);
  } else {
    size_t i = 0;
    while (i < CFG_N_KEYS && strcmp(k, cfg_keys[i]) != 0)
      i++;
    if (i == CFG_N_KEYS) {
      const char *s = kvs_conf_suggest(k, cfg_keys, CFG_N_KEYS);
      if (s)
        snprintf(why, why_cap, "unknown key \"%.64s\" (did you mean \"%s\"?)", k, s);
      else
        snprintf(why, why_cap, "unknown key \"%.64s\" (neither the CLI's nor kvstashd's)", k);
      return KVS_EINVAL;
    }
  }
  return KVS_OK;
}

/* 0 ok (a missing optional file too), -1 when the file cannot be read or
 * does not parse (the one-line reason is printed). */
static int load_config(cli *x, const char *path, int must_exist, int *got_token) {
  if (!must_exist && access(path, R_OK) != 0) return 0;
  cfg_ctx c = {.x = x};
  char err[512] = "";
  kvs_err e = kvs_conf_parse_file(path, cfg_cb, &c, err, sizeof err);
  if (e != KVS_OK) {
    fprintf(stderr, "kvstash: config %s\n", err[0] ? err : kvs_strerror(e));
    return -1;
  }
  *got_token = c.got_token;
  return 0;
}

/* A data-plane URL the client can dial: tcp://HOST:PORT, tls+tcp://HOST:PORT
 * (port 1-65535) or ipc://PATH. */
static int url_ok(const char *u, const char **why) {
  const char *hp = NULL;
  if (!strncmp(u, "etcd://", 7)) return 1; /* a cluster (cmd_cluster.c): libkvstash checks it */
  if (!strncmp(u, "ipc://", 6)) {
    if (!u[6]) *why = "ipc:// needs a path";
    return u[6] != 0;
  }
  if (!strncmp(u, "tcp://", 6))
    hp = u + 6;
  else if (!strncmp(u, "tls+tcp://", 10))
    hp = u + 10;
  if (!hp) {
    *why = "tcp://HOST:PORT, tls+tcp://HOST:PORT or ipc://PATH";
    return 0;
  }
  int port;
  if (hp[0] == ':' || !hp[0] || kvs_conf_hostport(hp, &port) != KVS_OK) {
    *why = "HOST:PORT with a port 1-65535";
    return 0;
  }
  return 1;
}

typedef struct gopt {
  const char *lng;
  char shrt;
  int arg;
} gopt;
static const gopt gopts[] = {{"url", 'u', 1},   {"http", 0, 1},        {"tenant", 't', 1},
                             {"token", 'k', 1}, {"admin-token", 0, 1}, {"config", 'c', 1},
                             {"timeout", 0, 1}, {"json", 0, 0},        {"no-progress", 0, 0},
                             {NULL, 0, 0}};

/* Is argv[i] a global option? Sets *g and *val (value, possibly argv[i+1]:
 * *used = 2). */
static int match_global(int argc, char **argv, int i, const gopt **g, const char **val, int *used) {
  const char *a = argv[i];
  *used = 1;
  *val = NULL;
  for (const gopt *o = gopts; o->lng; o++) {
    size_t n = strlen(o->lng);
    int hit = 0;
    if (a[0] == '-' && a[1] == '-' && !strncmp(a + 2, o->lng, n) &&
        (a[2 + n] == 0 || (a[2 + n] == '=' && o->arg))) {
      hit = 1;
      if (a[2 + n] == '=') *val = a + 3 + n;
    } else if (o->shrt && a[0] == '-' && a[1] == o->shrt && a[2] == 0) {
      hit = 1;
    }
    if (!hit) continue;
    *g = o;
    if (o->arg && !*val) {
      if (i + 1 >= argc) return -1;
      *val = argv[i + 1];
      *used = 2;
    }
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  cli x;
  memset(&x, 0, sizeof x);
  x.timeout_ms = 2000;
  /* 1. split global options from the verb's arguments */
  char **rest = calloc((size_t)argc + 1, sizeof *rest);
  if (!rest) return CLI_FAIL;
  int nrest = 0, no_progress = 0, help = 0;
  const char *f_url = NULL, *f_http = NULL, *f_tenant = NULL, *f_token = NULL, *f_admin = NULL,
             *f_config = NULL, *f_timeout = NULL;
  for (int i = 1; i < argc; i++) {
    const gopt *g;
    const char *val;
    int used;
    if (!strcmp(argv[i], "--")) { /* the rest is the verb's */
      while (i < argc)
        rest[nrest++] = argv[i++];
      break;
    }
    int m = match_global(argc, argv, i, &g, &val, &used);
    if (m < 0) {
      free(rest);
      return cli_usage_err(NULL, "option %s needs a value", argv[i]);
    }
    if (m == 0) {
      if (nrest == 0 && (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))) help = 1;
      if (nrest == 0 && (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version"))) {
        printf("kvstash %s (libkvstash %s, wire %u)\n", kvs_version(), kvs_client_version(),
               (unsigned)KVS_WIRE_VERSION);
        free(rest);
        return CLI_OK;
      }
      rest[nrest++] = argv[i];
      continue;
    }
    i += used - 1;
    if (!strcmp(g->lng, "url"))
      f_url = val;
    else if (!strcmp(g->lng, "http"))
      f_http = val;
    else if (!strcmp(g->lng, "tenant"))
      f_tenant = val;
    else if (!strcmp(g->lng, "token"))
      f_token = val;
    else if (!strcmp(g->lng, "admin-token"))
      f_admin = val;
    else if (!strcmp(g->lng, "config"))
      f_config = val;
    else if (!strcmp(g->lng, "timeout"))
      f_timeout = val;
    else if (!strcmp(g->lng, "json"))
      x.json = 1;
    else if (!strcmp(g->lng, "no-progress"))
      no_progress = 1;
  }
  if (help || nrest == 0) {
    main_help(help ? stdout : stderr);
    free(rest);
    return help ? CLI_OK : CLI_USAGE;
  }
  if (!strcmp(rest[0], "help")) {
    if (nrest > 1)
      cli_verb_help(rest[1]);
    else
      main_help(stdout);
    free(rest);
    return CLI_OK;
  }
  const verb *v = verbs;
  while (v->name && strcmp(v->name, rest[0]))
    v++;
  if (!v->name) {
    int rc = cli_usage_err(NULL, "unknown verb '%s' (kvstash --help lists them)", rest[0]);
    free(rest);
    return rc;
  }

  /* 2. settings: defaults < config file < environment < flags */
  set(x.url, sizeof x.url, "tcp://127.0.0.1:7878");
  set(x.http, sizeof x.http, "127.0.0.1:7879");
  set(x.tenant, sizeof x.tenant, "default");
  const char *cfg = f_config ? f_config : getenv("KVS_CONFIG");
  char cfg_path[1024] = "";
  int cfg_token = 0; /* the config file set `token =` */
  if (cfg && *cfg) {
    snprintf(cfg_path, sizeof cfg_path, "%s", cfg);
    if (load_config(&x, cfg_path, 1, &cfg_token) != 0) {
      free(rest);
      return CLI_USAGE;
    }
  } else if (getenv("HOME")) {
    snprintf(cfg_path, sizeof cfg_path, "%s/.config/kvstash/cli.conf", getenv("HOME"));
    if (load_config(&x, cfg_path, 0, &cfg_token) != 0) {
      free(rest);
      return CLI_USAGE;
    }
    if (access(cfg_path, R_OK) != 0) cfg_path[0] = 0;
  }
  char cfg_tenant[64];
  snprintf(cfg_tenant, sizeof cfg_tenant, "%s", x.tenant);
  const char *e;
  if ((e = getenv("KVS_URL")) && *e) set(x.url, sizeof x.url, e);
  if ((e = getenv("KVS_HTTP"))) set(x.http, sizeof x.http, e);
  if ((e = getenv("KVS_TENANT")) && *e) set(x.tenant, sizeof x.tenant, e);
  if ((e = getenv("KVS_TOKEN"))) set(x.token, sizeof x.token, e);
  if ((e = getenv("KVS_ADMIN_TOKEN"))) set(x.admin_token, sizeof x.admin_token, e);
  if (f_url) set(x.url, sizeof x.url, f_url);
  if (f_http) set(x.http, sizeof x.http, f_http);
  if (f_tenant) set(x.tenant, sizeof x.tenant, f_tenant);
  if (f_token) set(x.token, sizeof x.token, f_token);
  if (f_admin) set(x.admin_token, sizeof x.admin_token, f_admin);
  /* -t NAME (or $KVS_TENANT) with no token given: NAME's token from the
     config file's `tenant = NAME:TOKEN` lines (a kvstashd.conf), never the
     token of the file's first tenant */
  int token_given = f_token || getenv("KVS_TOKEN");
  if (!token_given && !cfg_token && strcmp(x.tenant, cfg_tenant)) {
    x.token[0] = 0;
    if (cfg_path[0]) {
      char err[512] = "";
      kvs_err te =
          kvs_conf_tenant_token(cfg_path, x.tenant, x.token, sizeof x.token, err, sizeof err);
      if (te != KVS_OK && te != KVS_ENOENT) {
        fprintf(stderr, "kvstash: config %s\n", err);
        free(rest);
        return CLI_USAGE;
      }
      if (te == KVS_ENOENT) x.token[0] = 0;
    }
  }
  /* a URL that cannot be dialed is a usage error (2), found before any
     connection is tried (not for --help) */
  int verb_help = 0;
  for (int i = 1; i < nrest; i++)
    verb_help |= !strcmp(rest[i], "-h") || !strcmp(rest[i], "--help");
  const char *why = NULL;
  if (!verb_help && !url_ok(x.url, &why)) {
    int rc = cli_usage_err(NULL, "bad URL '%s': %s (--url / $KVS_URL / config url)", x.url, why);
    free(rest);
    return rc;
  }
  int hport;
  if (!verb_help && x.http[0] && kvs_conf_hostport(x.http, &hport) != KVS_OK) {
    int rc = cli_usage_err(NULL, "bad HTTP address '%s': HOST:PORT with a port 1-65535 (--http)",
                           x.http);
    free(rest);
    return rc;
  }
  if (f_timeout) {
    char *end;
    unsigned long t = strtoul(f_timeout, &end, 10);
    if (*end || t == 0 || t > 3600000) {
      free(rest);
      return cli_usage_err(NULL, "--timeout takes milliseconds (1..3600000)");
    }
    x.timeout_ms = (uint32_t)t;
  }
  if (!x.model_path[0]) cli_default_model_path(x.model_path, sizeof x.model_path);
  x.progress = !no_progress && !x.json && isatty(STDOUT_FILENO) && isatty(STDERR_FILENO);

  /* 3. the verb */
  rest[nrest] = NULL;
  int rc = v->fn(&x, nrest, rest);
  kvs_client_free(x.c);
  kvs_client_lib_fini();
  free(rest);
  fflush(stdout);
  return rc;
}
