/* conf.c - the kvstashd.conf format (kvs_conf.h): tokenizer, file reading,
 * single-key lookups for the CLI, typo suggestions, port checks. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_conf.h"
#include "kvs_core.h"
#include "kvs_net.h"

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static int key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

/* One line (NUL-terminated, no newline), tokenized in place: 0 = nothing on
 * it, 1 = *key and *val set, -1 = *why says what is wrong. */
static int split_line(char *s, char **key, char **val, const char **why) {
  char *p = s;
  while (is_blank(*p))
    p++;
  if (!*p || *p == '#') return 0;
  char *eq = strchr(p, '=');
  if (!eq) {
    *why = "expected `key = value`";
    return -1;
  }
  char *ke = eq;
  while (ke > p && is_blank(ke[-1]))
    ke--;
  if (ke == p) {
    *why = "no key before `=`";
    return -1;
  }
  if ((size_t)(ke - p) > KVS_CONF_KEY_MAX) {
    *why = "key too long";
    return -1;
  }
  for (char *k = p; k < ke; k++) {
    if (!key_char(*k)) {
      *why = "a key is letters, digits, `_`, `-` and `.` (quote values, not keys)";
      return -1;
    }
    if (*k == '-') *k = '_';
  }
  *ke = 0;
  *key = p;
  char *v = eq + 1;
  while (is_blank(*v))
    v++;
  if (*v == '"' || *v == '\'') {
    char q = *v;
    char *out = v, *i = v + 1;
    for (;;) {
      if (!*i) {
        *why = q == '"' ? "unterminated \" quote" : "unterminated ' quote";
        return -1;
      }
      if (*i == q) break;
      if (q == '"' && *i == '\\') {
        if (i[1] != '"' && i[1] != '\\') {
          *why = "unknown escape in \"...\" (only \\\" and \\\\)";
          return -1;
        }
        i++;
      }
      *out++ = *i++;
    }
    char *rest = i + 1;
    *out = 0;
    while (is_blank(*rest))
      rest++;
    if (*rest && *rest != '#') {
      *why = "text after the closing quote";
      return -1;
    }
    *val = v;
    return 1;
  }
  char *e = v;
  while (*e && !(*e == '#' && (e == v || is_blank(e[-1]))))
    e++;
  while (e > v && is_blank(e[-1]))
    e--;
  *e = 0;
  *val = v;
  return 1;
}

static void seterr(char *err, size_t cap, const char *name, unsigned line, const char *why) {
  if (!err || !cap) return;
  if (line)
    snprintf(err, cap, "%s:%u: %s", name, line, why);
  else
    snprintf(err, cap, "%s: %s", name, why);
}

kvs_err kvs_conf_parse_mem(const char *text, size_t n, const char *name, kvs_conf_fn fn, void *ctx,
                           char *err, size_t err_cap) {
  if (err && err_cap) err[0] = 0;
  if (!name) name = "config";
  if ((!text && n) || !fn) {
    seterr(err, err_cap, name, 0, "no text or no callback");
    return KVS_EINVAL;
  }
  if (n > KVS_CONF_FILE_MAX) {
    seterr(err, err_cap, name, 0, "larger than 1 MiB");
    return KVS_EINVAL;
  }
  char *line = malloc(KVS_CONF_LINE_MAX + 1);
  if (!line) {
    seterr(err, err_cap, name, 0, "out of memory");
    return KVS_ENOMEM;
  }
  kvs_err rc = KVS_OK;
  unsigned lineno = 0;
  size_t pos = 0;
  while (pos < n && rc == KVS_OK) {
    lineno++;
    const char *nl = memchr(text + pos, '\n', n - pos);
    size_t len = nl ? (size_t)(nl - (text + pos)) : n - pos;
    if (len > KVS_CONF_LINE_MAX) {
      seterr(err, err_cap, name, lineno, "line longer than 4096 bytes");
      rc = KVS_EINVAL;
      break;
    }
    if (memchr(text + pos, 0, len)) {
      seterr(err, err_cap, name, lineno, "NUL byte (not a text file?)");
      rc = KVS_EINVAL;
      break;
    }
    memcpy(line, text + pos, len);
    line[len] = 0;
    pos += len + (nl ? 1 : 0);
    char *key = NULL, *val = NULL;
    const char *why = NULL;
    int k = split_line(line, &key, &val, &why);
    if (k < 0) {
      seterr(err, err_cap, name, lineno, why);
      rc = KVS_EINVAL;
    } else if (k > 0) {
      char cwhy[512] = "";
      rc = fn(ctx, key, val, cwhy, sizeof cwhy);
      if (rc != KVS_OK) seterr(err, err_cap, name, lineno, cwhy[0] ? cwhy : kvs_strerror(rc));
    }
  }
  free(line);
  return rc;
}

kvs_err kvs_conf_parse_file(const char *path, kvs_conf_fn fn, void *ctx, char *err,
                            size_t err_cap) {
  if (err && err_cap) err[0] = 0;
  if (!path) return KVS_EINVAL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    seterr(err, err_cap, path, 0, strerror(e));
    return kvs_err_from_errno(e);
  }
  char *buf = malloc(KVS_CONF_FILE_MAX + 1);
  if (!buf) {
    fclose(f);
    seterr(err, err_cap, path, 0, "out of memory");
    return KVS_ENOMEM;
  }
  size_t n = fread(buf, 1, KVS_CONF_FILE_MAX + 1, f);
  int rerr = ferror(f);
  fclose(f);
  kvs_err rc;
  if (rerr) {
    seterr(err, err_cap, path, 0, "read error (a directory?)");
    rc = KVS_EIO;
  } else if (n > KVS_CONF_FILE_MAX) {
    seterr(err, err_cap, path, 0, "larger than 1 MiB");
    rc = KVS_EINVAL;
  } else {
    rc = kvs_conf_parse_mem(buf, n, path, fn, ctx, err, err_cap);
  }
  free(buf);
  return rc;
}

typedef struct get_ctx {
  const char *key;
  char *out;
  size_t cap;
  int found, too_long;
} get_ctx;

static kvs_err get_cb(void *p, const char *key, const char *value, char *why, size_t why_cap) {
  get_ctx *g = p;
  if (strcmp(key, g->key) != 0) return KVS_OK;
  size_t n = strlen(value);
  g->found = 1;
  g->too_long = n >= g->cap;
  if (!g->too_long) memcpy(g->out, value, n + 1);
  return KVS_OK;
}

kvs_err kvs_conf_get(const char *path, const char *key, char *out, size_t cap, char *err,
                     size_t err_cap) {
  if (!path || !key || !out || !cap) return KVS_EINVAL;
  get_ctx g = {key, out, cap, 0, 0};
  kvs_err rc = kvs_conf_parse_file(path, get_cb, &g, err, err_cap);
  if (rc != KVS_OK) return rc;
  if (!g.found) {
    char why[160];
    snprintf(why, sizeof why, "no `%.64s` line", key);
    seterr(err, err_cap, path, 0, why);
    return KVS_ENOENT;
  }
  if (g.too_long) {
    seterr(err, err_cap, path, 0, "value too long");
    return KVS_ERANGE;
  }
  return KVS_OK;
}

typedef struct tok_ctx {
  const char *tenant;
  char *out;
  size_t cap;
  int found, too_long;
  char names[256]; /* the tenants seen, for the message when none matches */
} tok_ctx;

static kvs_err tok_cb(void *p, const char *key, const char *value, char *why, size_t why_cap) {
  tok_ctx *t = p;
  if (strcmp(key, "tenant") != 0) return KVS_OK;
  const char *colon = strchr(value, ':');
  if (!colon) {
    snprintf(why, why_cap, "tenant: expected NAME:TOKEN");
    return KVS_EINVAL;
  }
  size_t nl = (size_t)(colon - value);
  if (nl == strlen(t->tenant) && !memcmp(value, t->tenant, nl)) {
    size_t n = strlen(colon + 1);
    t->found = 1;
    t->too_long = n >= t->cap;
    if (!t->too_long) memcpy(t->out, colon + 1, n + 1);
  } else {
    size_t used = strlen(t->names);
    if (used + nl + 3 < sizeof t->names)
      snprintf(t->names + used, sizeof t->names - used, "%s%.*s", used ? ", " : "", (int)nl, value);
  }
  return KVS_OK;
}

kvs_err kvs_conf_tenant_token(const char *path, const char *tenant, char *token, size_t cap,
                              char *err, size_t err_cap) {
  if (!path || !tenant || !token || !cap) return KVS_EINVAL;
  tok_ctx t = {.tenant = tenant, .out = token, .cap = cap};
  kvs_err rc = kvs_conf_parse_file(path, tok_cb, &t, err, err_cap);
  if (rc != KVS_OK) return rc;
  if (!t.found) {
    char why[400];
    snprintf(why, sizeof why, "no tenant \"%.40s\" (tenants there: %s)", tenant,
             t.names[0] ? t.names : "none");
    seterr(err, err_cap, path, 0, why);
    return KVS_ENOENT;
  }
  if (t.too_long) {
    seterr(err, err_cap, path, 0, "token too long");
    return KVS_ERANGE;
  }
  return KVS_OK;
}

size_t kvs_conf_edit_distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > KVS_CONF_KEY_MAX || nb > KVS_CONF_KEY_MAX) return (size_t)-1;
  size_t row[KVS_CONF_KEY_MAX + 1];
  for (size_t j = 0; j <= nb; j++)
    row[j] = j;
  for (size_t i = 1; i <= na; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

const char *kvs_conf_suggest(const char *word, const char *const *cands, size_t n) {
  if (!word || !cands) return NULL;
  size_t len = strlen(word), limit = len / 3 > 2 ? len / 3 : 2;
  if (limit >= len) limit = len ? len - 1 : 0; /* "ab" is not a typo of anything */
  const char *best = NULL;
  size_t bd = (size_t)-1;
  for (size_t i = 0; i < n; i++) {
    if (!cands[i]) continue;
    size_t d = kvs_conf_edit_distance(word, cands[i]);
    if (d < bd) {
      bd = d;
      best = cands[i];
    }
  }
  return best && bd <= limit && bd > 0 ? best : NULL;
}

kvs_err kvs_conf_parse_size(const char *s, uint64_t *out) {
  if (!s || !out) return KVS_EINVAL;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno == ERANGE && v != 0) return KVS_ERANGE;
  if (errno || end == s || !(v >= 0)) return KVS_EINVAL;
  static const char units[] = "KMGT";
  const char *u = *end ? strchr(units, toupper((unsigned char)*end)) : NULL;
  double mul = 1;
  if (u) {
    for (const char *k = units; k <= u; k++)
      mul *= 1024.0;
    end++;
  }
  if (toupper((unsigned char)*end) == 'I') end++; /* KiB */
  if (toupper((unsigned char)*end) == 'B') end++;
  if (*end) return KVS_EINVAL;
  if (!(v * mul <= 1.8e19)) return KVS_ERANGE; /* also inf */
  *out = (uint64_t)(v * mul);
  return KVS_OK;
}

kvs_err kvs_conf_port(const char *s, int *port) {
  if (!s || !*s || strlen(s) > 5) return KVS_EINVAL;
  long v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return KVS_EINVAL;
    v = v * 10 + (*p - '0');
  }
  if (v < 1 || v > 65535) return KVS_ERANGE;
  if (port) *port = (int)v;
  return KVS_OK;
}

kvs_err kvs_conf_hostport(const char *s, int *port) { return kvs_hostport_split(s, NULL, 0, port); }
