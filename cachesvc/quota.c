/* quota.c - the `quota` option: per-tenant limits (docs/kvstashd.md,
 * "Tenant quotas"). Enforcement is in store.c (bytes, entries, rate). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_conf.h"
#include "svc_int.h"

static _Thread_local char g_why[128];

const char *kvs__quota_config_why(void) { return g_why; }

static int fail(const char *why) {
  snprintf(g_why, sizeof g_why, "%s", why);
  return -1;
}

static int name_ok(const char *p, size_t n) {
  if (n == 0 || n > 32) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '_' || ch == '.' || ch == '-'))
      return 0;
  }
  return 1;
}

static int parse_num(const char *v, double *out) {
  char *end = NULL;
  double d = strtod(v, &end);
  if (!end || end == v || *end || !(d >= 0) || d > 1e12) return -1;
  *out = d;
  return 0;
}

int kvs__quota_config_set(kvs_svc_config *c, const char *v) {
  const char *colon = strchr(v, ':');
  if (!colon || !name_ok(v, (size_t)(colon - v)))
    return fail("<tenant>:ram=SIZE,disk=SIZE,entries=N,rate=PER_S[,burst=N]");
  kvs_svc_quota q;
  memset(&q, 0, sizeof q);
  memcpy(q.tenant, v, (size_t)(colon - v));
  const char *p = colon + 1;
  if (!*p) return fail("no limit given (ram=, disk=, entries=, rate=)");
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    char item[96];
    if (n == 0 || n >= sizeof item) return fail("empty or overlong item");
    memcpy(item, p, n);
    item[n] = 0;
    char *eq = strchr(item, '=');
    if (!eq) return fail("items are kind=value");
    *eq = 0;
    const char *val = eq + 1;
    double d = 0;
    if (!strcmp(item, "ram")) {
      if (kvs_conf_parse_size(val, &q.ram_bytes) != KVS_OK) return fail("ram: size expected");
    } else if (!strcmp(item, "disk")) {
      if (kvs_conf_parse_size(val, &q.disk_bytes) != KVS_OK) return fail("disk: size expected");
    } else if (!strcmp(item, "entries")) {
      if (parse_num(val, &d) || d != (double)(uint64_t)d) return fail("entries: count expected");
      q.entries = (uint64_t)d;
    } else if (!strcmp(item, "rate")) {
      if (parse_num(val, &q.rate)) return fail("rate: requests per second expected");
    } else if (!strcmp(item, "burst")) {
      if (parse_num(val, &q.burst) || q.burst < 1) return fail("burst: count >= 1 expected");
    } else {
      return fail("unknown kind (ram, disk, entries, rate, burst)");
    }
    p += n;
    if (*p == ',') p++;
  }
  if (q.rate > 0 && q.burst == 0) q.burst = q.rate < 1 ? 1 : q.rate;
  int i = 0;
  while (i < c->n_quotas && strcmp(c->quotas[i].tenant, q.tenant) != 0)
    i++;
  if (i == c->n_quotas) {
    if (c->n_quotas >= KVS_SVC_MAX_QUOTAS) return fail("too many quotas");
    c->n_quotas++;
  }
  c->quotas[i] = q;
  return 0;
}
