/* config.c - kvstashd's options: a `key = value` file and the same keys as
 * flags. Every option is one line of KVS_SVC_OPTION_MAP (core/kvs_conf_options.h);
 * this file expands it into the descriptors that parse values, fill the
 * defaults, print --help and suggest keys. The file format is core/kvs_conf.h's
 * (shared with the CLI): one option per line, `#` comments, quoted values;
 * sizes take K/M/G/T suffixes (powers of 1024). Every error is one line
 * (kvs_svc_config_error). */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_conf.h"
#include "kvs_conf_options.h"
#include "svc_int.h"

/* The last error of this thread, one line (kvs_svc_config_error). */
static _Thread_local char g_err[640];
static _Thread_local char g_flag[640]; /* the same error as a flag would say it */

const char *kvs_svc_config_error(void) { return g_err; }

static kvs_err bad(const char *key, const char *value, const char *why) {
  snprintf(g_err, sizeof g_err, "%s = \"%.200s\": %s", key, value ? value : "", why);
  snprintf(g_flag, sizeof g_flag, "--%s=%.200s: %s", key, value ? value : "", why);
  return KVS_EINVAL;
}

/* ------------------------------------------------- the FN options' setters */
static int copy_str(char *dst, size_t cap, const char *v) {
  size_t n = strlen(v);
  if (n >= cap) return -1;
  memset(dst, 0, cap); /* whole field: a reload compares fields byte for byte */
  memcpy(dst, v, n + 1);
  return 0;
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

static int name_ok(const char *s, size_t n) {
  if (n == 0 || n > KVS_WIRE_TENANT_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return 0;
  return 1;
}

/* comma-separated list; appends */
static kvs_err set_listen(kvs_svc_config *c, const char *key, const char *v) {
  char tmp[1024];
  if (strlen(v) >= sizeof tmp) return bad(key, v, "too long");
  memcpy(tmp, v, strlen(v) + 1);
  for (char *save = NULL, *tok = strtok_r(tmp, ", ", &save); tok;
       tok = strtok_r(NULL, ", ", &save)) {
    if (strncmp(tok, "tcp://", 6) && strncmp(tok, "ipc://", 6) && strncmp(tok, "tls+tcp://", 10) &&
        !kvs__stream_url(tok))
      return bad(key, tok,
                 "tcp://, ipc://, tls+tcp://, tcp+stream:// or ipc+stream:// URL expected");
    if (!url_ok(tok)) return bad(key, tok, "HOST:PORT with a port of 1..65535 (or ipc://PATH)");
    if (c->n_listen >= KVS_SVC_MAX_LISTEN) return bad(key, tok, "too many listeners");
    if (copy_str(c->listen[c->n_listen], sizeof c->listen[0], tok))
      return bad(key, tok, "too long");
    c->n_listen++;
  }
  return KVS_OK;
}

static kvs_err set_http(kvs_svc_config *c, const char *key, const char *v) {
  if (strlen(v) >= sizeof c->http) return bad(key, v, "too long");
  if (*v && kvs_conf_hostport(v, NULL) != KVS_OK)
    return bad(key, v, "HOST:PORT with a port of 1..65535 expected (or empty = off)");
  copy_str(c->http, sizeof c->http, v);
  return KVS_OK;
}

static kvs_err set_tenant(kvs_svc_config *c, const char *key, const char *v) {
  const char *colon = strchr(v, ':');
  if (!colon || !name_ok(v, (size_t)(colon - v))) return bad(key, v, "<name>:<token>");
  size_t tl = strlen(colon + 1);
  if (tl == 0 || tl > KVS_WIRE_TOKEN_MAX) return bad(key, "(hidden)", "token of 1..64 bytes");
  if (c->n_tenants >= KVS_SVC_MAX_TENANTS) return bad(key, "(hidden)", "too many tenants");
  kvs_svc_tenant *t = &c->tenants[c->n_tenants++];
  memset(t, 0, sizeof *t);
  memcpy(t->name, v, (size_t)(colon - v));
  memcpy(t->token, colon + 1, tl + 1);
  return KVS_OK;
}

static kvs_err set_model_cost(kvs_svc_config *c, const char *key, const char *v) {
  const char *colon = strchr(v, ':');
  if (!colon || colon - v != 32) return bad(key, v, "<32 hex model id>:<cost>");
  if (c->n_model_costs >= KVS_SVC_MAX_MODEL_COSTS) return bad(key, v, "too many");
  char hex[33];
  memcpy(hex, v, 32);
  hex[32] = 0;
  kvs_svc_model_cost mc;
  char *end;
  mc.cost = strtod(colon + 1, &end);
  if (kvs_hash128_from_hex(hex, &mc.model) != KVS_OK || end == colon + 1 || *end || !(mc.cost > 0))
    return bad(key, v, "<32 hex model id>:<cost>");
  c->model_costs[c->n_model_costs++] = mc;
  return KVS_OK;
}

static kvs_err set_log_level(kvs_svc_config *c, const char *key, const char *v) {
  int l = kvs_log_parse_level(v);
  if (l < 0) return bad(key, v, "error|warn|info|debug|trace");
  c->log_level = l;
  return KVS_OK;
}

static kvs_err set_quota(kvs_svc_config *c, const char *key, const char *v) {
  if (kvs__quota_config_set(c, v)) return bad(key, v, kvs__quota_config_why()); /* quota.c */
  return KVS_OK;
}

static kvs_err set_cluster(kvs_svc_config *c, const char *key, const char *v) {
  if (kvs__cluster_config_set(&c->cluster, key, v)) /* cluster.c */
    return bad(key, v, "see docs/cluster.md");
  return KVS_OK;
}

/* ------------------------------------------------------------ the table */
#define KVS__FIELD_SIZE(field) sizeof(((kvs_svc_config *)0)->field)
/* ext: one designated initializer each (no comma: cppcheck's preprocessor wants it so) */
#define NONE    .words = NULL
#define W(list) .words = list
#define F(fn)   .set = fn
#define KVS__OPT(key_, type_, field_, def_, lo_, hi_, ext_, flags_, why_, help_)                   \
  {.key = #key_,                                                                                   \
   .type = KVS__OPT_##type_,                                                                       \
   .off = offsetof(kvs_svc_config, field_),                                                        \
   .size = KVS__FIELD_SIZE(field_),                                                                \
   .def = def_,                                                                                    \
   .lo = (double)(lo_),                                                                            \
   .hi = (double)(hi_),                                                                            \
   ext_,                                                                                           \
   .flags = (flags_),                                                                              \
   .why = why_,                                                                                    \
   .help = help_},
#define LIVE   KVS__OPT_LIVE
#define REPEAT KVS__OPT_REPEAT
#define GT     KVS__OPT_GT
const kvs__opt kvs__opts[] = {KVS_SVC_OPTION_MAP(KVS__OPT)};
#undef GT
#undef REPEAT
#undef LIVE
#undef F
#undef W
#undef NONE
const size_t kvs__n_opts = sizeof kvs__opts / sizeof kvs__opts[0];

/* Each typed field has the size its type writes. */
#define KVS__OPTSZ_STR  0
#define KVS__OPTSZ_FN   0
#define KVS__OPTSZ_U32  4
#define KVS__OPTSZ_ENUM sizeof(int)
#define KVS__OPTSZ_SIZE sizeof(uint64_t)
#define KVS__OPTSZ_NUM  sizeof(double)
#define KVS__OPT_ASSERT(key, type, field, ...)                                                     \
  _Static_assert(KVS__OPTSZ_##type == 0 || KVS__OPTSZ_##type == KVS__FIELD_SIZE(field),            \
                 #key ": field size does not match its type");
KVS_SVC_OPTION_MAP(KVS__OPT_ASSERT)

/* A REPEAT option's count follows its array (kvs__opt's flags; reload compares both). */
#define KVS__COUNT_FOLLOWS(arr, n)                                                                 \
  _Static_assert(offsetof(kvs_svc_config, n) ==                                                    \
                     offsetof(kvs_svc_config, arr) + sizeof(((kvs_svc_config *)0)->arr),           \
                 #n " must follow " #arr);
KVS__COUNT_FOLLOWS(listen, n_listen)
KVS__COUNT_FOLLOWS(tenants, n_tenants)
KVS__COUNT_FOLLOWS(model_costs, n_model_costs)
KVS__COUNT_FOLLOWS(quotas, n_quotas)

const kvs__opt *kvs__opt_find(const char *key) {
  for (size_t i = 0; i < kvs__n_opts; i++)
    if (!strcmp(kvs__opts[i].key, key)) return &kvs__opts[i];
  return NULL;
}

static int parse_u32(const char *v, uint32_t *out) {
  errno = 0;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || end == v || *end || x > 0xFFFFFFFFull) return -1;
  *out = (uint32_t)x;
  return 0;
}

/* 0..n-1: v's index among the `|`-separated words; -1: none of them */
static int word_index(const char *words, const char *v) {
  size_t vl = strlen(v);
  for (int i = 0; words && *words; i++) {
    const char *bar = strchr(words, '|');
    size_t wl = bar ? (size_t)(bar - words) : strlen(words);
    if (wl == vl && !memcmp(words, v, vl)) return i;
    if (!bar) break;
    words = bar + 1;
  }
  return -1;
}

/* One option: parsed in full, then stored (a bad value leaves the field as it was). */
static kvs_err opt_set(kvs_svc_config *c, const kvs__opt *o, const char *v) {
  char *f = (char *)c + o->off;
  switch (o->type) {
  case KVS__OPT_STR:
    if ((o->lo >= 1 && !*v) || copy_str(f, o->size, v)) return bad(o->key, v, o->why);
    return KVS_OK;
  case KVS__OPT_U32: {
    uint32_t u;
    if (parse_u32(v, &u) || u < o->lo || u > o->hi) return bad(o->key, v, o->why);
    memcpy(f, &u, sizeof u);
    return KVS_OK;
  }
  case KVS__OPT_SIZE: {
    uint64_t u;
    if (kvs_conf_parse_size(v, &u) != KVS_OK || (double)u < o->lo || (double)u > o->hi)
      return bad(o->key, v, o->why);
    memcpy(f, &u, sizeof u);
    return KVS_OK;
  }
  case KVS__OPT_NUM: {
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(o->flags & KVS__OPT_GT ? d > o->lo : d >= o->lo))
      return bad(o->key, v, o->why);
    memcpy(f, &d, sizeof d);
    return KVS_OK;
  }
  case KVS__OPT_ENUM: {
    int i = word_index(o->words, v);
    if (i < 0) return bad(o->key, v, o->why);
    memcpy(f, &i, sizeof i);
    return KVS_OK;
  }
  case KVS__OPT_FN: return o->set(c, o->key, v);
  }
  return KVS_EINVAL;
}

void kvs_svc_config_defaults(kvs_svc_config *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < kvs__n_opts; i++) {
    const kvs__opt *o = &kvs__opts[i];
    if (!o->def) continue;
    kvs_err rc = opt_set(c, o, o->def);
    assert(rc == KVS_OK && "a default in KVS_SVC_OPTION_MAP does not parse");
    (void)rc;
    /* a repeated option's default applies only while none is given (listen) */
    if (o->flags & KVS__OPT_REPEAT) memset((char *)c + o->off + o->size, 0, sizeof(int));
  }
}

/* The nearest key for a typo, from the table. */
static const char *suggest_key(const char *key) {
  const char *cand[sizeof kvs__opts / sizeof kvs__opts[0]];
  for (size_t i = 0; i < kvs__n_opts; i++)
    cand[i] = kvs__opts[i].key;
  return kvs_conf_suggest(key, cand, kvs__n_opts);
}

static kvs_err unknown(const char *key) {
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

kvs_err kvs_svc_config_set(kvs_svc_config *c, const char *key, const char *v) {
  if (!c || !key || !v) return KVS_EINVAL;
  const kvs__opt *o = kvs__opt_find(key);
  return o ? opt_set(c, o, v) : unknown(key);
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

/* argv[*i], a `--key=value` or `--key value` flag (i past the value after):
 * the key with dashes made underscores in key[cap], the value in *val.
 * KVS_EINVAL with g_err set (as a flag says it) when it is none. */
static kvs_err next_flag(int argc, char **argv, int *i, char *key, size_t cap, const char **val) {
  const char *a = argv[*i];
  if (strncmp(a, "--", 2) != 0) {
    snprintf(g_err, sizeof g_err, "%.100s: options are --key=value or -c FILE", a);
    return KVS_EINVAL;
  }
  const char *eq = strchr(a, '=');
  size_t kl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
  if (kl >= cap) {
    unknown(a + 2);
    memcpy(g_err, g_flag, sizeof g_err);
    return KVS_EINVAL;
  }
  if (!eq && *i + 1 >= argc) {
    snprintf(g_err, sizeof g_err, "%.100s: no value (--key=value or --key value)", a);
    return KVS_EINVAL;
  }
  memcpy(key, a + 2, kl);
  key[kl] = 0;
  *val = eq ? eq + 1 : argv[++*i];
  for (char *p = key; *p; p++)
    if (*p == '-') *p = '_';
  return KVS_OK;
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
    char key[64];
    const char *val;
    KVS_TRY(next_flag(argc, argv, &i, key, sizeof key, &val));
    kvs_err rc = kvs_svc_config_set(c, key, val);
    if (rc != KVS_OK) {
      memcpy(g_err, g_flag, sizeof g_err);
      return rc;
    }
  }
  return KVS_OK;
}

/* The heading of the group that starts at o, or NULL. */
static const char *group_heading(const kvs__opt *o) {
  return strcmp(o->key, "cluster") ? NULL : "cluster (docs/cluster.md)";
}

/* v as a config value: bare when the parser reads it back unchanged, else
 * "double-quoted" with \" and \\ escaped (core/kvs_conf.h's format). */
static void put_value(FILE *f, const char *v) {
  size_t n = strlen(v);
  int bare = n > 0 && !isspace((unsigned char)v[0]) && !isspace((unsigned char)v[n - 1]) &&
             v[0] != '"' && v[0] != '\'' && !strchr(v, '#');
  if (bare) {
    fputs(v, f);
    return;
  }
  fputc('"', f);
  for (const char *p = v; *p; p++) {
    if (*p == '"' || *p == '\\') fputc('\\', f);
    fputc(*p, f);
  }
  fputc('"', f);
}

kvs_err kvs_svc_config_print(FILE *f, int argc, char **argv) {
  /* every flag checked first: nothing is written for a bad one */
  kvs_svc_config *scratch = malloc(sizeof *scratch); /* large: not on the stack */
  if (!scratch) return KVS_ENOMEM;
  kvs_svc_config_defaults(scratch);
  kvs_err rc = KVS_OK;
  for (int i = 1; i < argc && rc == KVS_OK; i++) {
    char key[64];
    const char *val;
    if (!strcmp(argv[i], "-c") || !strncmp(argv[i], "--config", 8)) {
      snprintf(g_err, sizeof g_err, "--print-config takes --key=value flags, not a config file");
      rc = KVS_EINVAL;
      break;
    }
    rc = next_flag(argc, argv, &i, key, sizeof key, &val);
    if (rc == KVS_OK && (rc = kvs_svc_config_set(scratch, key, val)) != KVS_OK)
      memcpy(g_err, g_flag, sizeof g_err);
    else if (rc == KVS_OK && strpbrk(val, "\r\n")) { /* the file format has no escape for them */
      snprintf(g_err, sizeof g_err, "--%s: a value with a line break cannot be written to a file",
               key);
      rc = KVS_EINVAL;
    }
  }
  free(scratch);
  if (rc != KVS_OK) return rc;
  fputs("# kvstashd.conf: `key = value`, one per line; `#` starts a comment (docs/kvstashd.md).\n"
        "# Every key is also a flag, --key=value. Sizes take K/M/G/T (powers of 1024).\n"
        "# Written by `kvstashd --print-config`: every option with its help; a commented-out\n"
        "# line shows the default. [live]: a SIGHUP applies it; other changes need a restart.\n",
        f);
  for (size_t k = 0; k < kvs__n_opts; k++) {
    const kvs__opt *o = &kvs__opts[k];
    const char *head = group_heading(o);
    if (head) fprintf(f, "\n# ---- %s\n", head);
    const char *h = o->help;
    fputc('\n', f);
    for (const char *nl; (nl = strchr(h, '\n')) != NULL; h = nl + 1)
      fprintf(f, "# %.*s\n", (int)(nl - h), h);
    fprintf(f, "# %s%s\n", h, o->flags & KVS__OPT_LIVE ? " [live]" : "");
    int given = 0;
    for (int i = 1; i < argc; i++) {
      char key[64];
      const char *val;
      if (next_flag(argc, argv, &i, key, sizeof key, &val) != KVS_OK) return KVS_EINVAL;
      if (strcmp(key, o->key)) continue;
      fprintf(f, "%s = ", o->key);
      put_value(f, val);
      fputc('\n', f);
      given = 1;
    }
    if (!given) {
      fprintf(f, "# %s =", o->key);
      if (o->def && *o->def) {
        fputc(' ', f);
        put_value(f, o->def);
      }
      fputc('\n', f);
    }
  }
  return ferror(f) ? KVS_EIO : KVS_OK;
}

/* Help lines: the key, the help, the default in parentheses; a `\n` in the
 * help continues under the help column. */
void kvs_svc_config_usage(FILE *f) {
  fputs("usage: kvstashd [-c FILE] [--key=value ...] [--check-config]   (-V/--version, -h/--help)\n"
        "       kvstashd --print-config [--key=value ...]\n"
        "--check-config: read the config and the flags, say what is wrong or OK, exit (2 or 0).\n"
        "--print-config: write a kvstashd.conf with every option, its help and default, the\n"
        "flags given set (no -c), exit.\n"
        "Every option can be given in the config file (key = value) or as a flag.\n",
        f);
  for (size_t i = 0; i < kvs__n_opts; i++) {
    const kvs__opt *o = &kvs__opts[i];
    const char *head = group_heading(o);
    if (head) fprintf(f, "%s:\n", head);
    fprintf(f, "  %-19s ", o->key);
    const char *h = o->help;
    for (const char *nl; (nl = strchr(h, '\n')) != NULL; h = nl + 1)
      fprintf(f, "%.*s\n  %-19s ", (int)(nl - h), h, "");
    if (o->def)
      fprintf(f, strlen(h) < 34 ? "%-34s(%s)\n" : "%s (%s)\n", h, o->def);
    else
      fprintf(f, "%s\n", h);
  }
}

const char *kvs__durability_name(int durability) {
  return durability == KVS_SVC_DUR_SYNC    ? "sync"
         : durability == KVS_SVC_DUR_ASYNC ? "async"
                                           : "ram";
}
