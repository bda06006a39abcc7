/* cluster_etcd.c - the etcd v3 JSON gateway (POST /v3/...) through libcurl,
 * node records, and the membership view (list + watch of the nodes prefix).
 * Keys and values are base64 in the gateway's JSON; int64s come back as
 * strings. Every request has a deadline; the watch stops on a flag. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "kvs_net.h"
#include "cluster_int.h"

/* ------------------------------------------------------------- URL */
static int name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > KVS__CL_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.')) return 0;
  return 1;
}

kvs_err kvs__cl_url_parse(const char *url, kvs__cl_url *out) {
  if (!url || !out) return KVS_EINVAL;
  memset(out, 0, sizeof *out);
  if (strncmp(url, "etcd://", 7)) return KVS_EINVAL;
  const char *hosts = url + 7, *slash = strchr(hosts, '/');
  if (!slash || slash == hosts) return KVS_EINVAL;
  char hbuf[512];
  size_t hl = (size_t)(slash - hosts);
  if (hl >= sizeof hbuf) return KVS_EINVAL;
  memcpy(hbuf, hosts, hl);
  hbuf[hl] = 0;
  for (char *save = NULL, *t = strtok_r(hbuf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (out->n_ep >= KVS__CL_EP_MAX || kvs_hostport_split(t, NULL, 0, NULL) != KVS_OK ||
        strlen(t) > 100) /* HOST:PORT (core/kvs_net.h) */
      return KVS_EINVAL;
    for (const char *p = t; *p; p++)
      if (!(isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == ':' || *p == '[' ||
            *p == ']'))
        return KVS_EINVAL;
    snprintf(out->ep[out->n_ep++], sizeof out->ep[0], "http://%s", t);
  }
  if (out->n_ep == 0) return KVS_EINVAL;
  const char *q = strchr(slash + 1, '?');
  size_t nl = q ? (size_t)(q - slash - 1) : strlen(slash + 1);
  if (nl == 0 || nl > KVS__CL_NAME_MAX) return KVS_EINVAL;
  memcpy(out->name, slash + 1, nl);
  out->name[nl] = 0;
  if (!name_ok(out->name)) return KVS_EINVAL;
  if (q) {
    if (strncmp(q, "?r=", 3)) return KVS_EINVAL;
    char *end;
    errno = 0;
    unsigned long r = strtoul(q + 3, &end, 10);
    if (errno || end == q + 3 || *end || r < 1 || r > KVS__CL_MAX_R) return KVS_EINVAL;
    out->replicas = (uint32_t)r;
  }
  return KVS_OK;
}

/* ------------------------------------------------------------- base64 */
static const char b64c[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_enc(const void *src, size_t n) {
  const uint8_t *p = src;
  char *o = malloc((n + 2) / 3 * 4 + 1), *w = o;
  if (!o) return NULL;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < n) v |= p[i + 2];
    *w++ = b64c[v >> 18 & 63];
    *w++ = b64c[v >> 12 & 63];
    *w++ = i + 1 < n ? b64c[v >> 6 & 63] : '=';
    *w++ = i + 2 < n ? b64c[v & 63] : '=';
  }
  *w = 0;
  return o;
}

static int b64v(int ch) {
  const char *p = ch ? strchr(b64c, ch) : NULL;
  return p ? (int)(p - b64c) : -1;
}

/* malloc'd, NUL-terminated; NULL on bad input. */
static char *b64_dec(const char *s, size_t *n_out) {
  size_t n = strlen(s);
  if (n % 4) return NULL;
  char *o = malloc(n / 4 * 3 + 1);
  size_t w = 0;
  if (!o) return NULL;
  for (size_t i = 0; i < n; i += 4) {
    int a = b64v(s[i]), b = b64v(s[i + 1]), c = s[i + 2] == '=' ? 0 : b64v(s[i + 2]),
        d = s[i + 3] == '=' ? 0 : b64v(s[i + 3]);
    int pad2 = s[i + 2] == '=', pad3 = s[i + 3] == '=';
    if (a < 0 || b < 0 || c < 0 || d < 0 || (pad2 && !pad3) || ((pad2 || pad3) && i + 4 != n)) {
      free(o);
      return NULL;
    }
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    o[w++] = (char)(v >> 16);
    if (s[i + 2] != '=') o[w++] = (char)(v >> 8 & 255);
    if (s[i + 3] != '=') o[w++] = (char)(v & 255);
  }
  o[w] = 0;
  if (n_out) *n_out = w;
  return o;
}

/* -------------------------------------------------------------- HTTP */
struct kvs__etcd {
  kvs__cl_url u;
  uint32_t timeout_ms;
  int cur; /* endpoint that answered last */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_ALL); }

kvs__etcd *kvs__etcd_new(const kvs__cl_url *u, uint32_t timeout_ms) {
  pthread_once(&curl_once, curl_init_once);
  kvs__etcd *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->u = *u;
  e->timeout_ms = timeout_ms ? timeout_ms : 2000;
  return e;
}

void kvs__etcd_free(kvs__etcd *e) { free(e); }

typedef struct buf {
  char *p;
  size_t n, cap;
  int overflow;
} buf;

#define KVS__ETCD_MAX_ANSWER (64u << 20)

static size_t buf_write(char *data, size_t sz, size_t nm, void *arg) {
  buf *b = arg;
  size_t n = sz * nm;
  if (b->n + n + 1 > KVS__ETCD_MAX_ANSWER) {
    b->overflow = 1;
    return 0;
  }
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return 0;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, data, n);
  b->n += n;
  b->p[b->n] = 0;
  return n;
}

/* POSTs body (consumed) to path on the endpoints in turn; *resp the parsed
 * answer (cJSON_Delete it). */
static kvs_err etcd_post(kvs__etcd *e, const char *path, cJSON *body, cJSON **resp) {
  *resp = NULL;
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  if (!text) return KVS_ENOMEM;
  kvs_err rv = KVS_ECONN;
  for (int t = 0; t < e->u.n_ep; t++) {
    int idx = (e->cur + t) % e->u.n_ep;
    char url[256];
    snprintf(url, sizeof url, "%s%s", e->u.ep[idx], path);
    CURL *h = curl_easy_init();
    if (!h) {
      rv = KVS_ENOMEM;
      break;
    }
    buf b = {0};
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never through an environment proxy */
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    if (cc != CURLE_OK) {
      free(b.p);
      rv = cc == CURLE_OPERATION_TIMEDOUT ? KVS_ETIMEDOUT : KVS_ECONN;
      KVS_LOGD("cluster", "etcd request failed", "url=%s err=\"%s\"", url, curl_easy_strerror(cc));
      continue;
    }
    cJSON *j = b.p ? cJSON_Parse(b.p) : NULL;
    free(b.p);
    if (!j) {
      rv = KVS_EPROTO;
      continue;
    }
    e->cur = idx;
    if (code != 200) {
      /* an etcd error answer: {"error": ..., "code": N, "message": ...} */
      cJSON *msg = cJSON_GetObjectItemCaseSensitive(j, "message");
      KVS_LOGD("cluster", "etcd error", "url=%s http=%ld msg=\"%s\"", url, code,
               cJSON_IsString(msg) ? msg->valuestring : "");
      int notfound = cJSON_IsString(msg) && strstr(msg->valuestring, "not found");
      cJSON_Delete(j);
      free(text);
      return notfound ? KVS_ENOENT : KVS_EPROTO;
    }
    *resp = j;
    free(text);
    return KVS_OK;
  }
  free(text);
  return rv;
}

kvs_err kvs__http_get(const char *url, const char *bearer, uint32_t timeout_ms, char **body,
                      long *code) {
  pthread_once(&curl_once, curl_init_once);
  *body = NULL;
  *code = 0;
  CURL *h = curl_easy_init();
  if (!h) return KVS_ENOMEM;
  buf b = {0};
  struct curl_slist *hd = NULL;
  char auth[200];
  if (bearer && *bearer) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %.150s", bearer);
    hd = curl_slist_append(NULL, auth);
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  if (hd) curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  CURLcode cc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, code);
  curl_slist_free_all(hd);
  curl_easy_cleanup(h);
  if (cc != CURLE_OK) {
    free(b.p);
    return KVS_ECONN;
  }
  *body = b.p ? b.p : calloc(1, 1);
  return *body ? KVS_OK : KVS_ENOMEM;
}

static int64_t json_i64(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  if (cJSON_IsString(v)) return strtoll(v->valuestring, NULL, 10);
  if (cJSON_IsNumber(v)) return (int64_t)v->valuedouble;
  return 0;
}

static int add_b64(cJSON *o, const char *name, const void *p, size_t n) {
  char *s = b64_enc(p, n);
  if (!s) return -1;
  cJSON *r = cJSON_AddStringToObject(o, name, s);
  free(s);
  return r ? 0 : -1;
}

static int add_i64(cJSON *o, const char *name, int64_t v) {
  char s[32];
  snprintf(s, sizeof s, "%lld", (long long)v);
  return cJSON_AddStringToObject(o, name, s) ? 0 : -1;
}

/* prefix's range end: the prefix with its last byte + 1. */
static void range_end(const char *prefix, char *out, size_t cap) {
  snprintf(out, cap, "%s", prefix);
  size_t n = strlen(out);
  if (n) out[n - 1]++;
}

kvs_err kvs__etcd_lease_grant(kvs__etcd *e, uint32_t ttl_s, int64_t *id) {
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_i64(b, "TTL", ttl_s)) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/lease/grant", b, &r));
  *id = json_i64(r, "ID");
  cJSON_Delete(r);
  return *id ? KVS_OK : KVS_EPROTO;
}

kvs_err kvs__etcd_lease_keepalive(kvs__etcd *e, int64_t id, int64_t *ttl_left) {
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_i64(b, "ID", id)) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  /* a streaming call: one request in, the first answer out, as one line */
  KVS_TRY(etcd_post(e, "/v3/lease/keepalive", b, &r));
  const cJSON *res = cJSON_GetObjectItemCaseSensitive(r, "result");
  *ttl_left = res ? json_i64(res, "TTL") : 0;
  cJSON_Delete(r);
  return KVS_OK;
}

kvs_err kvs__etcd_lease_revoke(kvs__etcd *e, int64_t id) {
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_i64(b, "ID", id)) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/lease/revoke", b, &r));
  cJSON_Delete(r);
  return KVS_OK;
}

kvs_err kvs__etcd_put(kvs__etcd *e, const char *key, const char *val, size_t val_len,
                      int64_t lease) {
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_b64(b, "key", key, strlen(key)) || add_b64(b, "value", val, val_len) ||
      (lease && add_i64(b, "lease", lease))) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/kv/put", b, &r));
  cJSON_Delete(r);
  return KVS_OK;
}

kvs_err kvs__etcd_delete(kvs__etcd *e, const char *key) {
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_b64(b, "key", key, strlen(key))) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/kv/deleterange", b, &r));
  cJSON_Delete(r);
  return KVS_OK;
}

/* Calls fn for one {"key":b64,"value":b64} object. */
static int kv_call(const cJSON *kv, kvs__etcd_kv_fn fn, void *arg, int with_value) {
  const cJSON *k = cJSON_GetObjectItemCaseSensitive(kv, "key");
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(kv, "value");
  if (!cJSON_IsString(k)) return -1;
  char *key = b64_dec(k->valuestring, NULL);
  size_t vl = 0;
  char *val = with_value ? b64_dec(cJSON_IsString(v) ? v->valuestring : "", &vl) : NULL;
  if (!key || (with_value && !val)) {
    free(key);
    free(val);
    return -1;
  }
  fn(arg, key, val, vl);
  free(key);
  free(val);
  return 0;
}

kvs_err kvs__etcd_range(kvs__etcd *e, const char *prefix, kvs__etcd_kv_fn fn, void *arg,
                        int64_t *rev) {
  char end[512];
  range_end(prefix, end, sizeof end);
  cJSON *b = cJSON_CreateObject(), *r;
  if (!b || add_b64(b, "key", prefix, strlen(prefix)) ||
      add_b64(b, "range_end", end, strlen(end))) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/kv/range", b, &r));
  const cJSON *hdr = cJSON_GetObjectItemCaseSensitive(r, "header");
  if (rev) *rev = hdr ? json_i64(hdr, "revision") : 0;
  const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(r, "kvs"), *kv;
  kvs_err rv = KVS_OK;
  if (fn) cJSON_ArrayForEach(kv, kvs) {
      if (kv_call(kv, fn, arg, 1)) rv = KVS_EPROTO;
    }
  cJSON_Delete(r);
  return rv;
}

static void get_one(void *arg, const char *key, const char *val, size_t n) {
  (void)key;
  char **out = arg;
  if (*out) return;
  *out = malloc(n + 1);
  if (*out) {
    memcpy(*out, val, n);
    (*out)[n] = 0;
  }
}

kvs_err kvs__etcd_get(kvs__etcd *e, const char *key, char **val, size_t *val_len) {
  return kvs__etcd_get_lease(e, key, val, val_len, NULL);
}

kvs_err kvs__etcd_get_lease(kvs__etcd *e, const char *key, char **val, size_t *val_len,
                            int64_t *lease) {
  cJSON *b = cJSON_CreateObject(), *r;
  *val = NULL;
  if (!b || add_b64(b, "key", key, strlen(key))) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  KVS_TRY(etcd_post(e, "/v3/kv/range", b, &r));
  const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(r, "kvs"), *kv;
  cJSON_ArrayForEach(kv, kvs) { kv_call(kv, get_one, val, 1); }
  cJSON_Delete(r);
  if (!*val) return KVS_ENOENT;
  if (val_len) *val_len = strlen(*val);
  return KVS_OK;
}

/* ---- watch: one long POST; the answer is a stream of JSON lines */
typedef struct watch_ctx {
  buf line;
  kvs__etcd_kv_fn fn;
  void *arg;
  atomic_int *stop;
  uint64_t end_ns;
  int64_t *last_rev;
  kvs_err rv;
  int created;
} watch_ctx;

static void watch_line(watch_ctx *w, const char *s) {
  cJSON *j = cJSON_Parse(s);
  if (!j) {
    w->rv = KVS_EPROTO;
    return;
  }
  const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "result");
  if (!res) {
    w->rv = KVS_EPROTO;
    cJSON_Delete(j);
    return;
  }
  if (json_i64(res, "compact_revision") > 0) w->rv = KVS_ERANGE;
  const cJSON *cr = cJSON_GetObjectItemCaseSensitive(res, "created");
  if (cJSON_IsTrue(cr)) w->created = 1;
  if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "canceled")) && w->rv == KVS_OK)
    w->rv = KVS_ECANCELED;
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(res, "events"), *ev;
  cJSON_ArrayForEach(ev, evs) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(ev, "kv");
    int del = cJSON_IsString(type) && !strcmp(type->valuestring, "DELETE");
    if (kv) {
      kv_call(kv, w->fn, w->arg, !del);
      int64_t mr = json_i64(kv, "mod_revision");
      if (mr > *w->last_rev) *w->last_rev = mr;
    }
  }
  cJSON_Delete(j);
}

static size_t watch_write(char *data, size_t sz, size_t nm, void *arg) {
  watch_ctx *w = arg;
  size_t n = sz * nm;
  for (size_t i = 0; i < n; i++) {
    if (data[i] == '\n') {
      if (w->line.n) watch_line(w, w->line.p);
      w->line.n = 0;
      if (w->rv != KVS_OK) return 0;
      continue;
    }
    if (buf_write(&data[i], 1, 1, &w->line) != 1) return 0;
  }
  return n;
}

static int watch_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
  (void)a, (void)b, (void)c, (void)d;
  watch_ctx *w = arg;
  return atomic_load(w->stop) || kvs_now_ns() >= w->end_ns;
}

kvs_err kvs__etcd_watch(kvs__etcd *e, const char *prefix, int64_t start_rev, kvs__etcd_kv_fn fn,
                        void *arg, atomic_int *stop, uint32_t max_ms, int64_t *last_rev) {
  char end[512];
  range_end(prefix, end, sizeof end);
  cJSON *b = cJSON_CreateObject(), *cr = cJSON_AddObjectToObject(b, "create_request");
  if (!cr || add_b64(cr, "key", prefix, strlen(prefix)) ||
      add_b64(cr, "range_end", end, strlen(end)) || add_i64(cr, "start_revision", start_rev)) {
    cJSON_Delete(b);
    return KVS_ENOMEM;
  }
  char *text = cJSON_PrintUnformatted(b);
  cJSON_Delete(b);
  if (!text) return KVS_ENOMEM;
  char url[256];
  snprintf(url, sizeof url, "%s/v3/watch", e->u.ep[e->cur]);
  CURL *h = curl_easy_init();
  if (!h) {
    free(text);
    return KVS_ENOMEM;
  }
  watch_ctx w = {.fn = fn,
                 .arg = arg,
                 .stop = stop,
                 .end_ns = kvs_now_ns() + (uint64_t)max_ms * 1000000ull,
                 .last_rev = last_rev};
  struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &w);
  curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, watch_progress);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, &w);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 5L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 2L);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  CURLcode cc = curl_easy_perform(h);
  curl_slist_free_all(hd);
  curl_easy_cleanup(h);
  free(text);
  free(w.line.p);
  if (w.rv != KVS_OK) return w.rv;
  if (cc == CURLE_ABORTED_BY_CALLBACK) return KVS_OK; /* stop flag or max_ms */
  if (cc != CURLE_OK) {
    e->cur = (e->cur + 1) % e->u.n_ep;
    return KVS_ECONN;
  }
  return KVS_ECONN; /* the server ended the stream */
}

/* ------------------------------------------------------------- nodes */
int kvs__node_id_ok(const char *id) {
  size_t n = id ? strlen(id) : 0;
  if (n == 0 || n > KVS__CL_ID_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)id[i]) || strchr("_.:-", id[i]))) return 0;
  return 1;
}

char *kvs__node_to_json(const kvs__node *n) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  char cap[32], st[32];
  snprintf(cap, sizeof cap, "%llu", (unsigned long long)n->capacity);
  snprintf(st, sizeof st, "%llu", (unsigned long long)n->started_ms);
  int bad = !cJSON_AddStringToObject(o, "id", n->id) ||
            !cJSON_AddStringToObject(o, "data", n->data) ||
            !cJSON_AddStringToObject(o, "stream", n->stream) ||
            !cJSON_AddStringToObject(o, "http", n->http) ||
            !cJSON_AddStringToObject(o, "host", n->host) ||
            !cJSON_AddStringToObject(o, "zone", n->zone) ||
            !cJSON_AddStringToObject(o, "capacity", cap) ||
            !cJSON_AddNumberToObject(o, "replicas", n->replicas) ||
            !cJSON_AddStringToObject(o, "state", n->draining ? "draining" : "up") ||
            !cJSON_AddStringToObject(o, "started_ms", st);
  char *s = bad ? NULL : cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return s;
}

static int jstr(const cJSON *o, const char *name, char *out, size_t cap, int required) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  if (!cJSON_IsString(v)) return required ? -1 : (out[0] = 0, 0);
  if (strlen(v->valuestring) >= cap) return -1;
  memcpy(out, v->valuestring, strlen(v->valuestring) + 1);
  return 0;
}

kvs_err kvs__node_from_json(const char *json, size_t len, kvs__node *out) {
  memset(out, 0, sizeof *out);
  cJSON *o = cJSON_ParseWithLength(json, len);
  if (!o) return KVS_EPROTO;
  char state[16], cap[32], st[32];
  int bad = jstr(o, "id", out->id, sizeof out->id, 1) ||
            jstr(o, "data", out->data, sizeof out->data, 1) ||
            jstr(o, "stream", out->stream, sizeof out->stream, 0) ||
            jstr(o, "http", out->http, sizeof out->http, 0) ||
            jstr(o, "host", out->host, sizeof out->host, 0) ||
            jstr(o, "zone", out->zone, sizeof out->zone, 0) ||
            jstr(o, "capacity", cap, sizeof cap, 1) || jstr(o, "state", state, sizeof state, 0) ||
            jstr(o, "started_ms", st, sizeof st, 0);
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "replicas");
  out->replicas = cJSON_IsNumber(r) && r->valuedouble >= 1 && r->valuedouble <= KVS__CL_MAX_R
                      ? (uint32_t)r->valuedouble
                      : 2;
  cJSON_Delete(o);
  if (bad || !kvs__node_id_ok(out->id) || strncmp(out->data, "tcp://", 6)) return KVS_EPROTO;
  char *end;
  out->capacity = strtoull(cap, &end, 10);
  if (*end || out->capacity == 0) return KVS_EPROTO;
  out->started_ms = strtoull(st, NULL, 10);
  out->draining = !strcmp(state, "draining");
  return KVS_OK;
}

void kvs__host_id(char *out, size_t cap) {
  out[0] = 0;
  FILE *f = fopen("/etc/machine-id", "r");
  if (f) {
    char line[128];
    if (fgets(line, sizeof line, f)) {
      line[strcspn(line, "\r\n")] = 0;
      snprintf(out, cap, "%s", line);
    }
    fclose(f);
  }
  if (!out[0] && gethostname(out, cap) != 0) snprintf(out, cap, "unknown");
  out[cap - 1] = 0;
}

/* ----------------------------------------------------------- members */
struct kvs__members {
  kvs__cl_url u;
  kvs__etcd *e;
  char prefix[KVS__CL_NAME_MAX + 32];
  kvs__members_fn on_change;
  void *arg;
  pthread_t th;
  atomic_int stop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  kvs__node *nodes; /* under mu */
  size_t n, cap;
  uint64_t version;
  int listed;
  atomic_int etcd_ok;
  /* a listing in progress (only the thread touches these) */
  kvs__node *fresh;
  size_t n_fresh, cap_fresh;
};

static void nodes_add(kvs__node **v, size_t *n, size_t *cap, const kvs__node *nd) {
  for (size_t i = 0; i < *n; i++)
    if (!strcmp((*v)[i].id, nd->id)) {
      (*v)[i] = *nd;
      return;
    }
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 8;
    kvs__node *p = realloc(*v, c * sizeof *p);
    if (!p) return;
    *v = p;
    *cap = c;
  }
  (*v)[(*n)++] = *nd;
}

static void list_cb(void *arg, const char *key, const char *val, size_t n) {
  kvs__members *m = arg;
  kvs__node nd;
  if (kvs__node_from_json(val, n, &nd) != KVS_OK) {
    KVS_LOGW("cluster", "bad node record skipped", "key=%s", key);
    return;
  }
  nodes_add(&m->fresh, &m->n_fresh, &m->cap_fresh, &nd);
}

static void watch_cb(void *arg, const char *key, const char *val, size_t n) {
  kvs__members *m = arg;
  const char *id = key + strlen(m->prefix);
  pthread_mutex_lock(&m->mu);
  if (val) {
    kvs__node nd;
    if (kvs__node_from_json(val, n, &nd) == KVS_OK)
      nodes_add(&m->nodes, &m->n, &m->cap, &nd);
    else
      KVS_LOGW("cluster", "bad node record skipped", "key=%s", key);
  } else {
    for (size_t i = 0; i < m->n; i++)
      if (!strcmp(m->nodes[i].id, id)) {
        m->nodes[i] = m->nodes[--m->n];
        break;
      }
  }
  m->version++;
  pthread_mutex_unlock(&m->mu);
  KVS_LOGI("cluster", "membership changed", "node=%s event=%s", id, val ? "put" : "delete");
  if (m->on_change) m->on_change(m->arg);
}

static void msleep_stop(kvs__members *m, uint32_t ms) {
  for (uint32_t t = 0; t < ms && !atomic_load(&m->stop); t += 10) {
    struct timespec ts = {0, 10 * 1000000};
    nanosleep(&ts, NULL);
  }
}

static void *members_main(void *arg) {
  kvs__members *m = arg;
  uint32_t backoff = 50;
  while (!atomic_load(&m->stop)) {
    m->n_fresh = 0;
    int64_t rev = 0;
    kvs_err rv = kvs__etcd_range(m->e, m->prefix, list_cb, m, &rev);
    atomic_store(&m->etcd_ok, rv == KVS_OK);
    if (rv != KVS_OK) {
      KVS_LOGD("cluster", "etcd listing failed, keeping the last view", "err=%s", kvs_errname(rv));
      msleep_stop(m, backoff);
      backoff = backoff * 2 > 1000 ? 1000 : backoff * 2;
      continue;
    }
    backoff = 50;
    pthread_mutex_lock(&m->mu);
    int changed =
        m->n != m->n_fresh || (m->n && memcmp(m->nodes, m->fresh, m->n * sizeof *m->nodes) != 0);
    kvs__node *t = m->nodes;
    size_t tc = m->cap;
    m->nodes = m->fresh;
    m->n = m->n_fresh;
    m->cap = m->cap_fresh;
    m->fresh = t;
    m->cap_fresh = tc;
    if (changed) m->version++;
    m->listed = 1;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
    if (changed && m->on_change) m->on_change(m->arg);
    /* watch from the listing on; a watch is renewed every 30 s (and the
     * view listed again), so a silently dead connection costs at most that */
    int64_t last = rev;
    for (int round = 0; round < 1 && !atomic_load(&m->stop); round++) {
      rv = kvs__etcd_watch(m->e, m->prefix, last + 1, watch_cb, m, &m->stop, 30000, &last);
      if (rv != KVS_OK) atomic_store(&m->etcd_ok, 0);
    }
    if (rv != KVS_OK) msleep_stop(m, 100);
  }
  return NULL;
}

kvs_err kvs__members_start(const kvs__cl_url *u, uint32_t timeout_ms, kvs__members_fn on_change,
                           void *arg, kvs__members **out) {
  kvs__members *m = calloc(1, sizeof *m);
  if (!m) return KVS_ENOMEM;
  m->u = *u;
  m->e = kvs__etcd_new(u, timeout_ms);
  if (!m->e) {
    free(m);
    return KVS_ENOMEM;
  }
  snprintf(m->prefix, sizeof m->prefix, "/kvstash/%s/nodes/", u->name);
  m->on_change = on_change;
  m->arg = arg;
  pthread_mutex_init(&m->mu, NULL);
  pthread_cond_init(&m->cv, NULL);
  if (pthread_create(&m->th, NULL, members_main, m) != 0) {
    kvs__etcd_free(m->e);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
    return KVS_EINTERNAL;
  }
  *out = m;
  return KVS_OK;
}

void kvs__members_stop(kvs__members *m) {
  if (!m) return;
  atomic_store(&m->stop, 1);
  pthread_join(m->th, NULL);
  kvs__etcd_free(m->e);
  free(m->nodes);
  free(m->fresh);
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
  free(m);
}

int kvs__members_wait(kvs__members *m, uint32_t ms) {
  uint64_t end = kvs_now_ns() + (uint64_t)ms * 1000000ull;
  pthread_mutex_lock(&m->mu);
  while (!m->listed && kvs_now_ns() < end) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&m->cv, &m->mu, &ts);
  }
  int r = m->listed;
  pthread_mutex_unlock(&m->mu);
  return r;
}

kvs_err kvs__members_get(kvs__members *m, kvs__node **nodes, size_t *n, uint64_t *version) {
  pthread_mutex_lock(&m->mu);
  *nodes = NULL;
  *n = m->n;
  if (version) *version = m->version;
  if (m->n) {
    *nodes = malloc(m->n * sizeof **nodes);
    if (!*nodes) {
      pthread_mutex_unlock(&m->mu);
      *n = 0;
      return KVS_ENOMEM;
    }
    memcpy(*nodes, m->nodes, m->n * sizeof **nodes);
  }
  pthread_mutex_unlock(&m->mu);
  return KVS_OK;
}

int kvs__members_etcd_ok(kvs__members *m) { return atomic_load(&m->etcd_ok); }
