/* cmd_entries.c - verbs on the entries of a tenant: status, ls, show, evict,
 * pin/unpin, ttl. Data plane (LIST, STATS, DELETE, PIN, TTL) for everything
 * a tenant's token allows; the HTTP admin API for what only the server can
 * say (capacity, configured tenants, an entry's full metadata). */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "kvs_model.h"

static int want_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) break;
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
  }
  return 0;
}
#define HELP_OR_GO(verb)                                                                           \
  do {                                                                                             \
    if (want_help(argc, argv)) {                                                                   \
      cli_verb_help(verb);                                                                         \
      return CLI_OK;                                                                               \
    }                                                                                              \
  } while (0)

/* ---------------------------------------------------------------- status */
static uint64_t jnum(const cJSON *o, const char *k) {
  const cJSON *v = o ? cJSON_GetObjectItem(o, k) : NULL;
  return cJSON_IsNumber(v) ? (uint64_t)v->valuedouble : 0;
}

static int cmp_tenant_bytes(const void *a, const void *b) {
  const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
  uint64_t bx = jnum(x, "bytes"), by = jnum(y, "bytes");
  return bx < by ? 1 : bx > by ? -1 : 0;
}

int cmd_status(cli *x, int argc, char **argv) {
  HELP_OR_GO("status");
  if (argc > 1) return cli_usage_err("status", "no argument expected");
  int rc = cli_client(x, "status");
  if (rc) return rc;
  uint64_t v[64];
  size_t n = 0;
  kvs_err e = kvs_stats(x->c, v, 64, &n);
  if (e) return cli_fail(x, "status", e, "STATS: %s", kvs_client_errmsg(x->c));
  for (size_t i = n; i < KVS__STAT_COUNT; i++)
    v[i] = 0;
  kvs_tier_stat tiers[16]; /* the server's tier list, from the same STATS answer */
  size_t n_tiers = 0;
  e = kvs_stats_tiers(x->c, tiers, 16, &n_tiers); /* per node: none on a cluster client */
  if (e && e != KVS_ENOTSUP) return cli_fail(x, "status", e, "STATS: %s", kvs_client_errmsg(x->c));
  /* control plane: optional (status still reports the data plane) */
  cJSON *info = NULL, *ten = NULL, *hstats = NULL;
  kvs_err he = x->http[0] ? cli_http_json(x, "GET", "/v1/info", &info) : KVS_ENOENT;
  kvs_err te = KVS_OK, se = KVS_OK;
  if (he == KVS_OK) te = cli_http_json(x, "GET", "/v1/tenants", &ten);
  if (he == KVS_OK) se = cli_http_json(x, "GET", "/v1/stats", &hstats);
  /* a refused admin token is said, and is the exit code (4), never passed
     over as if the control plane were merely absent */
  int refused = he == KVS_EAUTH || te == KVS_EAUTH || se == KVS_EAUTH;
  int st = 0;
  char *ready = NULL;
  if (he == KVS_OK && cli_http(x, "GET", "/ready", &st, &ready) != KVS_OK) st = 0;
  free(ready);
  /* the current tenant's usage (always available, through LIST) */
  kvs_admin_item *items = NULL;
  size_t n_items = 0;
  uint64_t t_bytes = 0, t_pinned = 0;
  if (cli_list_all(x, &items, &n_items) == KVS_OK)
    for (size_t i = 0; i < n_items; i++)
      t_bytes += items[i].value_bytes, t_pinned += items[i].pinned;
  free(items);

  uint64_t hits = v[KVS_STAT_HITS], misses = v[KVS_STAT_MISSES];
  double hit_rate = hits + misses ? (double)hits / (double)(hits + misses) : 0;
  /* top tenants: configured ones by bytes, else just this one */
  const cJSON *tl = ten ? cJSON_GetObjectItem(ten, "tenants") : NULL;
  int nt = cJSON_IsArray(tl) ? cJSON_GetArraySize(tl) : 0;
  const cJSON **tops = calloc((size_t)(nt ? nt : 1), sizeof *tops);
  for (int i = 0; i < nt && tops; i++)
    tops[i] = cJSON_GetArrayItem(tl, i);
  if (tops && nt) qsort(tops, (size_t)nt, sizeof *tops, cmp_tenant_bytes);

  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON *srv = cJSON_AddObjectToObject(j, "server");
    cJSON_AddStringToObject(srv, "url", x->url);
    cJSON_AddBoolToObject(srv, "data_plane", 1);
    cJSON_AddStringToObject(srv, "http", x->http);
    cJSON_AddBoolToObject(srv, "http_ok", he == KVS_OK);
    if (he != KVS_OK) cJSON_AddStringToObject(srv, "http_error", kvs_errname(he));
    cJSON_AddBoolToObject(srv, "ready", st == 200);
    cJSON_AddBoolToObject(srv, "admin_token_refused", refused);
    if (info) {
      const cJSON *ver = cJSON_GetObjectItem(info, "version");
      if (cJSON_IsString(ver)) cJSON_AddStringToObject(srv, "version", ver->valuestring);
      cJSON_AddNumberToObject(srv, "pid", (double)jnum(info, "pid"));
      cJSON_AddNumberToObject(srv, "uptime_s", (double)jnum(info, "uptime_s"));
      cJSON_AddNumberToObject(srv, "start_time_s", (double)jnum(info, "start_time_s"));
      cJSON_AddNumberToObject(srv, "connected_clients", (double)jnum(info, "connected_clients"));
    }
    cJSON *c = cJSON_AddObjectToObject(j, "counters");
    for (size_t i = 0; i < n; i++)
      cJSON_AddNumberToObject(c, kvs_stat_name((uint32_t)i), (double)v[i]);
    if (hstats) {
      cJSON_AddNumberToObject(c, "auth_failures", (double)jnum(hstats, "auth_failures"));
      cJSON_AddNumberToObject(c, "bad_frames", (double)jnum(hstats, "bad_frames"));
    }
    cJSON_AddNumberToObject(j, "entries", (double)v[KVS_STAT_ENTRIES]);
    cJSON_AddNumberToObject(j, "hit_rate", hit_rate);
    cJSON *jt = cJSON_AddArrayToObject(j, "tiers");
    for (size_t t = 0; t < n_tiers; t++) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddStringToObject(o, "tier", tiers[t].name);
      cJSON_AddNumberToObject(o, "bytes", (double)tiers[t].used);
      cJSON_AddNumberToObject(o, "capacity", (double)tiers[t].capacity);
      cJSON_AddNumberToObject(o, "entries", (double)tiers[t].entries);
      cJSON_AddBoolToObject(o, "configured", tiers[t].present);
      cJSON_AddItemToArray(jt, o);
    }
    cJSON *tt = cJSON_AddArrayToObject(j, "top_tenants");
    for (int i = 0; i < nt && i < 10 && tops; i++)
      cJSON_AddItemToArray(tt, cJSON_Duplicate(tops[i], 1));
    cJSON *me = cJSON_AddObjectToObject(j, "tenant");
    cJSON_AddStringToObject(me, "tenant", x->tenant);
    cJSON_AddNumberToObject(me, "entries", (double)n_items);
    cJSON_AddNumberToObject(me, "bytes", (double)t_bytes);
    cJSON_AddNumberToObject(me, "pinned", (double)t_pinned);
    if (info) cJSON_AddItemToObject(j, "config", cJSON_Duplicate(info, 1));
    cli_print_json(j);
  } else {
    char b1[32], b2[32];
    printf("kvstashd   %s  (data plane ok)\n", x->url);
    if (info) {
      const cJSON *ver = cJSON_GetObjectItem(info, "version");
      printf("server     version %s, pid %llu, up %s, %llu clients connected\n",
             cJSON_IsString(ver) ? ver->valuestring : "?", (unsigned long long)jnum(info, "pid"),
             cli_fmt_age(jnum(info, "uptime_s") * 1000, b1, sizeof b1),
             (unsigned long long)jnum(info, "connected_clients"));
    }
    if (he == KVS_OK)
      printf("http       %s  (%s)\n", x->http, st == 200 ? "ready" : "not ready");
    else if (!x->http[0])
      printf("http       -  (no control plane given: --http)\n");
    else
      printf("http       %s  (%s: %s)\n", x->http,
             he == KVS_EAUTH ? "admin token refused" : "unreachable", kvs_errname(he));
    printf("entries    %llu\n", (unsigned long long)v[KVS_STAT_ENTRIES]);
    for (size_t t = 0; t < n_tiers; t++) {
      uint64_t cap = tiers[t].capacity, used = tiers[t].used;
      if (!tiers[t].present) {
        printf("tier %-5s -  (not configured)\n", tiers[t].name);
        continue;
      }
      if (cap)
        printf("tier %-5s %s of %s (%.1f%%), %llu entries\n", tiers[t].name,
               cli_fmt_bytes(used, b1, sizeof b1), cli_fmt_bytes(cap, b2, sizeof b2),
               100.0 * (double)used / (double)cap, (unsigned long long)tiers[t].entries);
      else
        printf("tier %-5s %s, %llu entries\n", tiers[t].name, cli_fmt_bytes(used, b1, sizeof b1),
               (unsigned long long)tiers[t].entries);
    }
    printf("hit rate   %.1f%%  (%llu hits, %llu misses)\n", 100 * hit_rate,
           (unsigned long long)hits, (unsigned long long)misses);
    printf("activity   %llu puts, %llu evictions, %llu expired, %llu quarantined\n",
           (unsigned long long)v[KVS_STAT_PUTS], (unsigned long long)v[KVS_STAT_EVICTIONS],
           (unsigned long long)v[KVS_STAT_EXPIRED], (unsigned long long)v[KVS_STAT_QUARANTINES]);
    printf("traffic    in %s, out %s, %llu requests, %llu errors\n",
           cli_fmt_bytes(v[KVS_STAT_BYTES_IN], b1, sizeof b1),
           cli_fmt_bytes(v[KVS_STAT_BYTES_OUT], b2, sizeof b2),
           (unsigned long long)v[KVS_STAT_REQUESTS], (unsigned long long)v[KVS_STAT_ERRORS]);
    printf("tenant     %s: %zu entries, %s, %llu pinned\n", x->tenant, n_items,
           cli_fmt_bytes(t_bytes, b1, sizeof b1), (unsigned long long)t_pinned);
    if (nt && tops) {
      printf("top tenants\n");
      for (int i = 0; i < nt && i < 5; i++) {
        const cJSON *nm = cJSON_GetObjectItem(tops[i], "tenant");
        printf("  %-20s %8llu entries  %s\n", cJSON_IsString(nm) ? nm->valuestring : "?",
               (unsigned long long)jnum(tops[i], "entries"),
               cli_fmt_bytes(jnum(tops[i], "bytes"), b1, sizeof b1));
      }
    } else if (he == KVS_OK && te == KVS_OK) {
      printf("top tenants  (auth off: tenants are not enumerable)\n");
    }
  }
  if (refused)
    fprintf(stderr,
            "kvstash status: the HTTP control plane (%s) refused the admin token (%s): server "
            "info, capacities and tenants are not shown; set --admin-token or "
            "$KVS_ADMIN_TOKEN (kvstashd.conf admin_token)\n",
            x->http, x->admin_token[0] ? "the one given" : "none given");
  free(tops);
  cJSON_Delete(info);
  cJSON_Delete(ten);
  cJSON_Delete(hstats);
  return refused ? CLI_AUTH : CLI_OK;
}

/* ------------------------------------------------------------ filters */
typedef struct filt {
  const char *model;         /* hex prefix */
  const char *tier_arg;      /* --tier: a name of the server's tier list, or its number */
  int tier, kind, pinned;    /* -1 = any */
  uint64_t older_s, newer_s; /* UINT64_MAX = unset */
  uint64_t min_size, max_size;
} filt;

static void filt_init(filt *f) {
  memset(f, 0, sizeof *f);
  f->tier = f->kind = f->pinned = -1;
  f->older_s = f->newer_s = UINT64_MAX;
  f->max_size = UINT64_MAX;
}

static int filt_match(const filt *f, const kvs_admin_item *it, uint64_t now_ms) {
  if (f->model) {
    char hex[33];
    kvs_hash128_hex(&it->model, hex);
    if (strncasecmp(hex, f->model, strlen(f->model))) return 0;
  }
  if (f->tier >= 0 && it->tier != f->tier) return 0;
  if (f->kind >= 0 && it->kind != f->kind) return 0;
  if (f->pinned >= 0 && !!it->pinned != f->pinned) return 0;
  uint64_t age = now_ms > it->last_used_ms ? now_ms - it->last_used_ms : 0;
  if (f->older_s != UINT64_MAX && age < f->older_s * 1000) return 0;
  if (f->newer_s != UINT64_MAX && age >= f->newer_s * 1000) return 0;
  if (it->value_bytes < f->min_size || it->value_bytes > f->max_size) return 0;
  return 1;
}

/* --tier NAME|N against the server's tier rows (STATS): 0 ok, else the exit code. */
static int filt_tier(cli *x, filt *f, const char *verb) {
  if (!f->tier_arg) return 0;
  kvs_tier_stat t[16];
  size_t n = 0;
  kvs_err e = kvs_stats_tiers(x->c, t, 16, &n);
  if (e) return cli_fail(x, verb, e, "STATS: %s", kvs_client_errmsg(x->c));
  char names[160] = "";
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    char num[8];
    snprintf(num, sizeof num, "%u", t[i].tier);
    if (!strcmp(f->tier_arg, t[i].name) || !strcmp(f->tier_arg, num)) {
      f->tier = (int)t[i].tier;
      return 0;
    }
    int k = snprintf(names + w, sizeof names - w, "%s%s (%u)", i ? ", " : "", t[i].name, t[i].tier);
    if (k > 0 && (size_t)k < sizeof names - w) w += (size_t)k;
  }
  return cli_usage_err(verb, "--tier %s: no such tier (the server's: %s)", f->tier_arg, names);
}

/* Shared filter options of ls and evict; 1 when opt was one of them, -1 on a bad value. */
enum { O_MODEL = 1000, O_TIER, O_KIND, O_PINNED, O_UNPINNED, O_OLDER, O_NEWER, O_MINSZ, O_MAXSZ };
static int filt_opt(filt *f, int c, const char *arg, const char *verb) {
  uint64_t u;
  switch (c) {
  case O_MODEL: f->model = arg; return 1;
  case O_TIER: /* resolved against the server's tiers once connected (filt_tier) */
    if (!*arg) return cli_usage_err(verb, "--tier takes a tier name or number"), -1;
    f->tier_arg = arg;
    return 1;
  case O_KIND:
    if (!strcmp(arg, "prefix"))
      f->kind = KVS_CHUNK_PREFIX;
    else if (!strcmp(arg, "content"))
      f->kind = KVS_CHUNK_CONTENT;
    else
      return cli_usage_err(verb, "--kind takes prefix or content"), -1;
    return 1;
  case O_PINNED: f->pinned = 1; return 1;
  case O_UNPINNED: f->pinned = 0; return 1;
  case O_OLDER:
  case O_NEWER:
    if (cli_parse_duration(arg, &u)) return cli_usage_err(verb, "bad duration '%s'", arg), -1;
    if (c == O_OLDER)
      f->older_s = u;
    else
      f->newer_s = u;
    return 1;
  case O_MINSZ:
  case O_MAXSZ:
    if (cli_parse_size(arg, &u)) return cli_usage_err(verb, "bad size '%s'", arg), -1;
    if (c == O_MINSZ)
      f->min_size = u;
    else
      f->max_size = u;
    return 1;
  default: return 0;
  }
}
#define FILT_OPTS                                                                                  \
  {"model", 1, 0, O_MODEL}, {"tier", 1, 0, O_TIER}, {"kind", 1, 0, O_KIND},                        \
      {"pinned", 0, 0, O_PINNED}, {"unpinned", 0, 0, O_UNPINNED}, {"older-than", 1, 0, O_OLDER},   \
      {"newer-than", 1, 0, O_NEWER}, {"min-size", 1, 0, O_MINSZ}, {                                \
    "max-size", 1, 0, O_MAXSZ                                                                      \
  }

/* ------------------------------------------------------------------ ls */
static int sort_field;
static int sort_rev;
static int cmp_items(const void *a, const void *b) {
  const kvs_admin_item *x = a, *y = b;
  int r = 0;
  uint64_t u = 0, w = 0;
  switch (sort_field) {
  case 0: u = y->last_used_ms, w = x->last_used_ms; break; /* newest first */
  case 1: u = y->created_ms, w = x->created_ms; break;
  case 2: u = y->value_bytes, w = x->value_bytes; break; /* largest first */
  case 3: u = y->hits, w = x->hits; break;
  case 4: u = y->n_tokens, w = x->n_tokens; break;
  default: r = memcmp(x->key.b, y->key.b, 16); break;
  }
  if (sort_field <= 4) r = u < w ? -1 : u > w ? 1 : memcmp(x->key.b, y->key.b, 16);
  return sort_rev ? -r : r;
}

static void print_table(const kvs_admin_item *v, size_t n, int full_keys, uint64_t now) {
  printf("%-*s %-7s %6s %10s %-4s %3s %6s %6s %6s  %s\n", full_keys ? 32 : 12, "KEY", "KIND",
         "TOKENS", "SIZE", "TIER", "PIN", "HITS", "USED", "TTL", "MODEL");
  for (size_t i = 0; i < n; i++) {
    const kvs_admin_item *it = &v[i];
    char key[33], model[33], sz[32], age[16], ttl[16];
    kvs_hash128_hex(&it->key, key);
    kvs_hash128_hex(&it->model, model);
    if (!full_keys) key[12] = 0;
    model[8] = 0;
    if (it->ttl_s)
      cli_fmt_age((uint64_t)it->ttl_s * 1000, ttl, sizeof ttl);
    else
      snprintf(ttl, sizeof ttl, "-");
    printf("%-*s %-7s %6u %10s %-4s %3s %6llu %6s %6s  %s\n", full_keys ? 32 : 12, key,
           it->kind == KVS_CHUNK_PREFIX ? "prefix" : "content", it->n_tokens,
           cli_fmt_bytes(it->value_bytes, sz, sizeof sz), cli_tier_name(it->tier),
           it->pinned ? "yes" : "-", (unsigned long long)it->hits,
           cli_fmt_age(now > it->last_used_ms ? now - it->last_used_ms : 0, age, sizeof age), ttl,
           model);
  }
}

int cmd_ls(cli *x, int argc, char **argv) {
  HELP_OR_GO("ls");
  enum { O_SORT = 2000, O_REV, O_LIMIT, O_OFFSET, O_FULL };
  static struct option lo[] = {FILT_OPTS,
                               {"sort", 1, 0, O_SORT},
                               {"reverse", 0, 0, O_REV},
                               {"limit", 1, 0, O_LIMIT},
                               {"offset", 1, 0, O_OFFSET},
                               {"full-keys", 0, 0, O_FULL},
                               {0, 0, 0, 0}};
  filt f;
  filt_init(&f);
  long limit = 50, offset = 0;
  int full = 0;
  sort_field = 0, sort_rev = 0;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    int r = filt_opt(&f, c, optarg, "ls");
    if (r < 0) return CLI_USAGE;
    if (r) continue;
    char *end;
    switch (c) {
    case O_SORT: {
      static const char *names[] = {"used", "created", "size", "hits", "tokens", "key"};
      sort_field = -1;
      for (int i = 0; i < 6; i++)
        if (!strcmp(optarg, names[i])) sort_field = i;
      if (sort_field < 0)
        return cli_usage_err("ls", "--sort takes used|created|size|hits|tokens|key");
      break;
    }
    case O_REV: sort_rev = 1; break;
    case O_LIMIT:
    case O_OFFSET: {
      long v = strtol(optarg, &end, 10);
      if (*end || v < 0) return cli_usage_err("ls", "bad number '%s'", optarg);
      if (c == O_LIMIT)
        limit = v;
      else
        offset = v;
      break;
    }
    case O_FULL: full = 1; break;
    default: return cli_usage_err("ls", "unknown option '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) return cli_usage_err("ls", "unexpected argument '%s'", argv[optind]);
  int rc = cli_client(x, "ls");
  if (rc || (rc = filt_tier(x, &f, "ls"))) return rc;
  cli_tier_names_load(x);
  kvs_admin_item *v;
  size_t n;
  kvs_err e = cli_list_all(x, &v, &n);
  if (e) return cli_fail(x, "ls", e, "LIST: %s", kvs_client_errmsg(x->c));
  uint64_t now = kvs_wall_ms();
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (filt_match(&f, &v[i], now)) v[m++] = v[i];
  qsort(v, m, sizeof *v, cmp_items);
  size_t first = (size_t)offset < m ? (size_t)offset : m;
  size_t shown = limit == 0 || (size_t)limit > m - first ? m - first : (size_t)limit;
  uint64_t total_bytes = 0;
  for (size_t i = 0; i < m; i++)
    total_bytes += v[i].value_bytes;
  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "tenant", x->tenant);
    cJSON_AddNumberToObject(j, "matched", (double)m);
    cJSON_AddNumberToObject(j, "matched_bytes", (double)total_bytes);
    cJSON_AddNumberToObject(j, "offset", (double)first);
    cJSON *a = cJSON_AddArrayToObject(j, "items");
    for (size_t i = 0; i < shown; i++)
      cJSON_AddItemToArray(a, cli_item_json(&v[first + i]));
    cli_print_json(j);
  } else {
    char b[32];
    print_table(v + first, shown, full, now);
    printf("%zu of %zu entries shown (%s matched, tenant %s)%s\n", shown, m,
           cli_fmt_bytes(total_bytes, b, sizeof b), x->tenant,
           first + shown < m ? "; --offset/--limit for more" : "");
  }
  free(v);
  return CLI_OK;
}

/* ---------------------------------------------------------------- show */
/* Decodes token ids to text when the model at path is the entry's model. */
static char *tokens_text(const char *path, const char *model_hex, const cJSON *ids, int *known) {
  *known = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fclose(f);
  kvs_model *m = NULL;
  if (kvs_model_load(path, &m) != KVS_OK) return NULL;
  char hex[33];
  kvs_hash128_hex(kvs_model_get_id(m), hex);
  char *out = NULL;
  const kvs_tok *tok = kvs_model_tok(m);
  if (!strcasecmp(hex, model_hex) && tok) {
    *known = 1;
    int n = cJSON_GetArraySize(ids);
    int32_t *t = malloc(sizeof *t * (size_t)(n ? n : 1));
    size_t need = 0;
    if (t) {
      for (int i = 0; i < n; i++)
        t[i] = (int32_t)cJSON_GetArrayItem(ids, i)->valuedouble;
      kvs_tok_decode(tok, t, (size_t)n, NULL, 0, &need);
      out = malloc(need + 1);
      if (out && kvs_tok_decode(tok, t, (size_t)n, out, need + 1, &need) != KVS_OK) {
        free(out);
        out = NULL;
      }
    }
    free(t);
  }
  kvs_model_free(m);
  return out;
}

int cmd_show(cli *x, int argc, char **argv) {
  HELP_OR_GO("show");
  static struct option lo[] = {{"no-text", 0, 0, 'n'}, {"model", 1, 0, 'm'}, {0, 0, 0, 0}};
  int text = 1;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    if (c == 'n')
      text = 0;
    else if (c == 'm')
      snprintf(x->model_path, sizeof x->model_path, "%s", optarg);
    else
      return cli_usage_err("show", "unknown option '%s'", argv[optind - 1]);
  }
  if (optind != argc - 1) return cli_usage_err("show", "one KEY expected");
  kvs_key k;
  const char *ks = argv[optind];
  int rc = CLI_OK;
  if (strlen(ks) != 32) { /* a prefix: resolved through the data plane */
    if ((rc = cli_client(x, "show")) || (rc = cli_resolve_key(x, "show", ks, &k))) return rc;
    cli_tier_names_load(x);
  } else if (kvs_hash128_from_hex(ks, &k) != KVS_OK) {
    return cli_usage_err("show", "'%s' is not a key", ks);
  } else {
    cli_tier_names_http(x); /* a full key: the control plane alone */
  }
  char hex[33], path[256];
  kvs_hash128_hex(&k, hex);
  snprintf(path, sizeof path, "/v1/entry?tenant=%s&key=%s&detail=1", x->tenant, hex);
  cJSON *j = NULL;
  kvs_err e = cli_http_json(x, "GET", path, &j);
  if (e == KVS_ECONN)
    return cli_fail(x, "show", e, "HTTP control plane unreachable at '%s' (--http)", x->http);
  if (e == KVS_EAUTH)
    return cli_fail(x, "show", e, "HTTP admin API refused the admin token (--admin-token)");
  if (e == KVS_ENOENT) return cli_fail(x, "show", e, "no entry %s in tenant %s", hex, x->tenant);
  if (e) return cli_fail(x, "show", e, "GET /v1/entry: %s", kvs_strerror(e));
  const cJSON *ids = cJSON_GetObjectItem(j, "token_ids");
  const cJSON *mid = cJSON_GetObjectItem(j, "model");
  char *txt = NULL;
  int known = 0;
  if (text && cJSON_IsArray(ids) && cJSON_IsString(mid))
    txt = tokens_text(x->model_path, mid->valuestring, ids, &known);
  const cJSON *cp = cJSON_GetObjectItem(j, "codec_profile");
  const char *pname = cJSON_IsNumber(cp) ? cli_profile_name((int)cp->valuedouble) : "?";
  if (x->json) {
    cJSON_AddBoolToObject(j, "model_known", known);
    if (cJSON_IsNumber(cp)) cJSON_AddStringToObject(j, "codec_profile_name", pname);
    if (txt) cJSON_AddStringToObject(j, "text", txt);
    cli_print_json(j);
    free(txt);
    return CLI_OK;
  }
  char b[32], age[16];
  uint64_t now = kvs_wall_ms();
  const cJSON *it;
#define S(k) (cJSON_IsString(it = cJSON_GetObjectItem(j, k)) ? it->valuestring : "?")
#define N(k) jnum(j, k)
  printf("key          %s\n", S("key"));
  printf("tenant       %s\n", x->tenant);
  printf("model        %s%s\n", S("model"), known ? "  (the reference model)" : "");
  printf("kind         %s\n", S("kind"));
  printf("tokens       %llu\n", (unsigned long long)N("tokens"));
  printf("size         %s (%llu bytes encoded)\n", cli_fmt_bytes(N("bytes"), b, sizeof b),
         (unsigned long long)N("bytes"));
  printf("tier         %s\n", cli_tier_name((unsigned)N("tier")));
  printf("pinned       %s\n", cJSON_IsTrue(cJSON_GetObjectItem(j, "pinned")) ? "yes" : "no");
  printf("hits         %llu\n", (unsigned long long)N("hits"));
  printf("created      %s ago\n", cli_fmt_age(now - N("created_ms"), age, sizeof age));
  printf("last used    %s ago\n", cli_fmt_age(now - N("last_used_ms"), age, sizeof age));
  printf("ttl          %s\n",
         N("ttl_s") ? cli_fmt_age(N("ttl_s") * 1000, age, sizeof age) : "none");
  const cJSON *l = cJSON_GetObjectItem(j, "layout");
  if (l) {
    const cJSON *dt = cJSON_GetObjectItem(l, "dtype");
    printf("layout       %llu layers x %llu kv heads x %llu dims, %s, rope type %llu dims %llu "
           "theta %g\n",
           (unsigned long long)jnum(l, "n_layers"), (unsigned long long)jnum(l, "n_kv_heads"),
           (unsigned long long)jnum(l, "head_dim"), cJSON_IsString(dt) ? dt->valuestring : "?",
           (unsigned long long)jnum(l, "rope_type"), (unsigned long long)jnum(l, "rope_dims"),
           cJSON_GetObjectItem(l, "rope_theta") ? cJSON_GetObjectItem(l, "rope_theta")->valuedouble
                                                : 0.0);
    uint64_t raw =
        2 * jnum(l, "n_layers") * jnum(l, "n_kv_heads") * jnum(l, "head_dim") * 2 * N("tokens");
    printf("codec        profile '%s' (%llu), %llu parameter bytes, %llu segments; %.2fx vs "
           "fp16\n",
           pname, (unsigned long long)N("codec_profile"),
           (unsigned long long)N("codec_params_bytes"), (unsigned long long)N("segments"),
           N("bytes") ? (double)raw / (double)N("bytes") : 0);
    printf("checksum     %s  %s\n", S("checksum"),
           cJSON_IsTrue(cJSON_GetObjectItem(j, "checksum_ok")) ? "ok (verified now)" : "MISMATCH");
  } else {
    printf("checksum     %s\n", cJSON_IsTrue(cJSON_GetObjectItem(j, "quarantined"))
                                    ? "QUARANTINED (value deleted)"
                                    : "not readable now");
  }
  if (cJSON_IsArray(ids)) {
    int n = cJSON_GetArraySize(ids);
    printf("token ids   ");
    for (int i = 0; i < n && i < 16; i++)
      printf(" %d", (int)cJSON_GetArrayItem(ids, i)->valuedouble);
    printf("%s\n", n > 16 ? " ..." : "");
  }
  if (txt)
    printf("text         \"%s\"\n", txt);
  else if (text)
    printf("text         (model not known here: --model GGUF of model %.8s...)\n", S("model"));
#undef S
#undef N
  free(txt);
  cJSON_Delete(j);
  return CLI_OK;
}

/* --------------------------------------------------------------- evict */
/* The server's eviction score (docs/kvstashd.md) without the per-model
 * cost: lower goes first. */
static double score(const kvs_admin_item *it, uint64_t now) {
  double age_s = now > it->last_used_ms ? (double)(now - it->last_used_ms) / 1000.0 : 0;
  return ((double)it->hits + 1) * it->n_tokens / (double)(it->value_bytes ? it->value_bytes : 1) *
         exp2(-age_s / 3600.0);
}
static uint64_t score_now;
static int cmp_score(const void *a, const void *b) {
  double x = score(a, score_now), y = score(b, score_now);
  return x < y ? -1 : x > y ? 1 : 0;
}

int cmd_evict(cli *x, int argc, char **argv) {
  HELP_OR_GO("evict");
  enum { O_ALL = 2000, O_TO, O_INCPIN, O_DRY, O_YES };
  static struct option lo[] = {FILT_OPTS,
                               {"all", 0, 0, O_ALL},
                               {"to-bytes", 1, 0, O_TO},
                               {"include-pinned", 0, 0, O_INCPIN},
                               {"dry-run", 0, 0, O_DRY},
                               {"yes", 0, 0, O_YES},
                               {0, 0, 0, 0}};
  filt f;
  filt_init(&f);
  int all = 0, incpin = 0, dry = 0, nfilt = 0, yes = 0;
  uint64_t to_bytes = UINT64_MAX;
  optind = 0;
  opterr = 0;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    int r = filt_opt(&f, c, optarg, "evict");
    if (r < 0) return CLI_USAGE;
    if (r) {
      nfilt++;
      continue;
    }
    switch (c) {
    case O_ALL: all = 1; break;
    case O_TO:
      if (cli_parse_size(optarg, &to_bytes)) return cli_usage_err("evict", "bad size '%s'", optarg);
      break;
    case O_INCPIN: incpin = 1; break;
    case O_DRY: dry = 1; break;
    case O_YES: yes = 1; break;
    default: return cli_usage_err("evict", "unknown option '%s'", argv[optind - 1]);
    }
  }
  int nkeys = argc - optind;
  if (!nkeys && !nfilt && !all && to_bytes == UINT64_MAX)
    return cli_usage_err("evict", "name keys, or a filter (--all, --older-than, --model, "
                                  "--tier, --kind, --min-size, --to-bytes)");
  if (nkeys && (nfilt || all || to_bytes != UINT64_MAX))
    return cli_usage_err("evict", "keys and filters do not mix");
  if (all && !nfilt && to_bytes == UINT64_MAX && !dry && !yes)
    return cli_usage_err("evict",
                         "--all deletes every %sentry of tenant '%s': add --yes to do it "
                         "(--dry-run lists them)",
                         incpin ? "" : "unpinned ", x->tenant);
  int rc = cli_client(x, "evict");
  if (rc || (rc = filt_tier(x, &f, "evict"))) return rc;
  kvs_admin_item *v = NULL;
  size_t n = 0, m = 0;
  uint64_t now = kvs_wall_ms(), pinned_bytes = 0, left_bytes = 0;
  int unreachable = 0;
  kvs_err e = cli_list_all(x, &v, &n);
  if (e) return cli_fail(x, "evict", e, "LIST: %s", kvs_client_errmsg(x->c));
  if (nkeys) { /* the named keys, in the given order; unknown ones are errors */
    kvs_admin_item *sel = calloc((size_t)nkeys, sizeof *sel);
    for (int i = 0; i < nkeys && sel; i++) {
      kvs_key k;
      if ((rc = cli_resolve_key(x, "evict", argv[optind + i], &k))) {
        free(sel);
        free(v);
        return rc;
      }
      size_t j = 0;
      while (j < n && memcmp(v[j].key.b, k.b, 16))
        j++;
      if (j == n) {
        free(sel);
        free(v);
        return cli_fail(x, "evict", KVS_ENOENT, "no entry %s", argv[optind + i]);
      }
      sel[m++] = v[j];
    }
    free(v);
    v = sel;
  } else {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
      total += v[i].value_bytes;
      if (v[i].pinned) pinned_bytes += v[i].value_bytes;
    }
    for (size_t i = 0; i < n; i++)
      if ((incpin || !v[i].pinned) && filt_match(&f, &v[i], now)) v[m++] = v[i];
    if (to_bytes != UINT64_MAX) { /* lowest score first, until the tenant fits */
      score_now = now;
      qsort(v, m, sizeof *v, cmp_score);
      size_t k = 0;
      while (k < m && total > to_bytes)
        total -= v[k++].value_bytes;
      m = k;
      left_bytes = total;
      unreachable = total > to_bytes;
    }
  }
  char tb[32], lb[32], pb[32];
  if (unreachable) /* said before anything is deleted, dry run or not */
    fprintf(stderr,
            "kvstash evict: --to-bytes %s is out of reach: evicting every %sentry that matches "
            "leaves %s (%s of it pinned%s)\n",
            cli_fmt_bytes(to_bytes, tb, sizeof tb), incpin ? "" : "unpinned ",
            cli_fmt_bytes(left_bytes, lb, sizeof lb), cli_fmt_bytes(pinned_bytes, pb, sizeof pb),
            incpin ? "" : "; --include-pinned counts them, or unpin some");
  uint64_t bytes = 0;
  size_t done = 0, failed = 0;
  cJSON *j = x->json ? cJSON_CreateObject() : NULL;
  cJSON *arr = j ? cJSON_AddArrayToObject(j, "evicted") : NULL;
  if (!x->json && m) print_table(v, m, 0, now);
  for (size_t i = 0; i < m; i++) {
    e = dry ? KVS_OK : kvs_delete(x->c, &v[i].key);
    if (e == KVS_OK || e == KVS_ENOENT) { /* gone meanwhile: also gone */
      done++;
      bytes += v[i].value_bytes;
      if (arr) cJSON_AddItemToArray(arr, cli_item_json(&v[i]));
    } else {
      failed++;
      char hex[33];
      kvs_hash128_hex(&v[i].key, hex);
      fprintf(stderr, "kvstash evict: %s: %s\n", hex, kvs_client_errmsg(x->c));
    }
  }
  char b[32];
  if (j) {
    cJSON_AddBoolToObject(j, "dry_run", dry);
    cJSON_AddNumberToObject(j, "count", (double)done);
    cJSON_AddNumberToObject(j, "bytes", (double)bytes);
    cJSON_AddNumberToObject(j, "failed", (double)failed);
    if (to_bytes != UINT64_MAX) {
      cJSON_AddBoolToObject(j, "target_reachable", !unreachable);
      cJSON_AddNumberToObject(j, "bytes_left", (double)left_bytes);
      cJSON_AddNumberToObject(j, "pinned_bytes", (double)pinned_bytes);
    }
    cli_print_json(j);
  } else {
    printf("%s %zu entries, %s%s\n", dry ? "would evict" : "evicted", done,
           cli_fmt_bytes(bytes, b, sizeof b), failed ? " (some failed, see above)" : "");
  }
  free(v);
  /* a real eviction that could not reach its target did not do its job */
  return failed || (unreachable && !dry) ? CLI_FAIL : CLI_OK;
}

/* ----------------------------------------------------------- pin / ttl */
int cmd_pin(cli *x, int argc, char **argv) {
  const char *verb = argv[KVS_STAT_ENTRIES];
  int pin = !strcmp(verb, "pin");
  HELP_OR_GO(verb);
  if (argc < 2) return cli_usage_err(verb, "KEY expected");
  for (int i = 1; i < argc; i++)
    if (argv[i][0] == '-') return cli_usage_err(verb, "unknown option '%s'", argv[i]);
  int rc = cli_client(x, verb);
  if (rc) return rc;
  cJSON *j = x->json ? cJSON_CreateObject() : NULL;
  cJSON *a = j ? cJSON_AddArrayToObject(j, pin ? "pinned" : "unpinned") : NULL;
  for (int i = 1; i < argc; i++) {
    kvs_key k;
    if ((rc = cli_resolve_key(x, verb, argv[i], &k))) break;
    kvs_err e = pin ? kvs_pin(x->c, &k) : kvs_unpin(x->c, &k);
    char hex[33];
    kvs_hash128_hex(&k, hex);
    if (e) {
      rc = cli_fail(x, verb, e, "%s: %s", hex, kvs_client_errmsg(x->c));
      break;
    }
    if (a)
      cJSON_AddItemToArray(a, cJSON_CreateString(hex));
    else
      printf("%s %s\n", pin ? "pinned" : "unpinned", hex);
  }
  if (j && rc == CLI_OK)
    cli_print_json(j);
  else
    cJSON_Delete(j);
  return rc;
}

int cmd_ttl(cli *x, int argc, char **argv) {
  HELP_OR_GO("ttl");
  if (argc != 3) return cli_usage_err("ttl", "KEY and DURATION expected");
  uint64_t s;
  if (cli_parse_duration(argv[2], &s) || s > 0xFFFFFFFFull)
    return cli_usage_err("ttl", "bad duration '%s' (e.g. 3600, 90m, 12h, 7d; 0 = none)", argv[2]);
  int rc = cli_client(x, "ttl");
  kvs_key k;
  if (rc || (rc = cli_resolve_key(x, "ttl", argv[1], &k))) return rc;
  kvs_err e = kvs_ttl(x->c, &k, (uint32_t)s);
  char hex[33];
  kvs_hash128_hex(&k, hex);
  if (e) return cli_fail(x, "ttl", e, "%s: %s", hex, kvs_client_errmsg(x->c));
  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "key", hex);
    cJSON_AddNumberToObject(j, "ttl_s", (double)s);
    cli_print_json(j);
  } else {
    printf("%s: ttl %llu s%s\n", hex, (unsigned long long)s, s ? "" : " (never expires)");
  }
  return CLI_OK;
}
