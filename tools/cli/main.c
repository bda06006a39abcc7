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
    {"cluster", cmd_cluster, "etcd:// clusters: status, nodes, drain NODE, rebalance"},
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

static void set(char *dst, size_t cap, const char *v) { snprintf(dst, cap, "%s", v ? v : ""); }

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1]))
    s[--n] = 0;
  return s;
}

/* Reads the keys the CLI knows from a `key = value` file; others (the rest of
 * a kvstashd.conf) are ignored. 0 ok, -1 when the file cannot be read. */
static int load_config(cli *x, const char *path, int must_exist) {
  FILE *f = fopen(path, "r");
  if (!f) {
    if (must_exist) fprintf(stderr, "kvstash: cannot read config %s\n", path);
    return must_exist ? -1 : 0;
  }
  char line[1024];
  int got_url = 0, got_tenant = 0;
  while (fgets(line, sizeof line, f)) {
    char *h = strchr(line, '#');
    if (h) *h = 0;
    char *eq = strchr(line, '=');
    if (!eq) continue;
    *eq = 0;
    char *k = trim(line), *v = trim(eq + 1);
    for (char *p = k; *p; p++)
      if (*p == '-') *p = '_';
    if (!strcmp(k, "url") || (!strcmp(k, "listen") && !got_url)) {
      char *comma = strchr(v, ',');
      if (comma) *comma = 0;
      set(x->url, sizeof x->url, trim(v));
      got_url = 1;
    } else if (!strcmp(k, "http")) {
      set(x->http, sizeof x->http, v);
    } else if (!strcmp(k, "tenant") && !got_tenant) {
      char *colon = strchr(v, ':'); /* kvstashd's NAME:TOKEN: the first one */
      if (colon) {
        *colon = 0;
        set(x->token, sizeof x->token, colon + 1);
      }
      set(x->tenant, sizeof x->tenant, v);
      got_tenant = 1;
    } else if (!strcmp(k, "token")) {
      set(x->token, sizeof x->token, v);
    } else if (!strcmp(k, "admin_token")) {
      set(x->admin_token, sizeof x->admin_token, v);
    } else if (!strcmp(k, "model") || !strcmp(k, "model_path")) {
      set(x->model_path, sizeof x->model_path, v);
    }
  }
  fclose(f);
  return 0;
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
  if (cfg && *cfg) {
    if (load_config(&x, cfg, 1) != 0) {
      free(rest);
      return CLI_USAGE;
    }
  } else if (getenv("HOME")) {
    char p[1024];
    snprintf(p, sizeof p, "%s/.config/kvstash/cli.conf", getenv("HOME"));
    load_config(&x, p, 0);
  }
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
