/* http.c - kvstashd's control plane on libevent's evhttp, in its own thread.
 *
 *   GET  /health             200 while the process runs
 *   GET  /ready              200 when the store is open and not draining, else 503
 *   GET  /metrics            Prometheus text
 *   GET  /v1/stats           JSON counters
 *   GET  /v1/entries?tenant=T[&limit=N][&cursor=HEX]   a page of a tenant's entries
 *   GET  /v1/entry?tenant=T&key=HEX[&detail=1]         one entry (detail: layout, codec,
 *                                                      segments, checksum check, token ids)
 *   GET  /v1/info                                      configuration an operator needs
 *   GET  /v1/tenants                                   entries and bytes of configured tenants
 *   POST /v1/evict?tenant=T&key=HEX                    drop an entry
 *   POST /v1/pin?tenant=T&key=HEX[&pin=0]              pin (or unpin)
 * /v1/ requires `Authorization: Bearer <admin_token>` when admin_token is set.
 * Bound to loopback by default. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <cjson/cJSON.h>
#include <event2/thread.h>
#include <sodium.h>
#include <sys/queue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_net.h"
#include "svc_int.h"

#define RET(x)                                                                                     \
  do {                                                                                             \
    x;                                                                                             \
    return;                                                                                        \
  } while (0)

static void use_pthreads(void) { (void)evthread_use_pthreads(); }

struct kvs__http {
  kvs_svc_config cfg;
  kvs__store *st;
  kvs__metrics *met;
  atomic_int *ready;
  struct event_base *base;
  struct evhttp *http;
  pthread_t th;
  int started;
};

static void reply(struct evhttp_request *req, int code, const char *ctype, const char *body) {
  struct evbuffer *b = evbuffer_new();
  if (!b) return;
  evbuffer_add(b, body, strlen(body));
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
  evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
  evbuffer_free(b);
}

static void reply_err(struct evhttp_request *req, int code, kvs_err e, const char *what) {
  char body[256];
  snprintf(body, sizeof body, "{\"error\":\"%s\",\"code\":%d,\"message\":\"%s\"}\n", kvs_errname(e),
           (int)e, what ? what : kvs_strerror(e));
  reply(req, code, "application/json", body);
}

static int status_of(kvs_err e) {
  switch (e) {
  case KVS_ENOENT: return 404;
  case KVS_EINVAL: return 400;
  case KVS_EAUTH: return 401;
  case KVS_EQUARANTINE: return 410;
  default: return 500;
  }
}

static int admin_ok(kvs__http *h, struct evhttp_request *req) {
  if (!h->cfg.admin_token[0]) return 1;
  const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  if (!a || strncmp(a, "Bearer ", 7) != 0) return 0;
  a += 7;
  size_t n = strlen(h->cfg.admin_token);
  if (strlen(a) != n) return 0;
  return sodium_memcmp(a, h->cfg.admin_token, n) == 0;
}

/* tenant + key query args -> storage key. */
static kvs_err entry_key(kvs__http *h, struct evkeyvalq *q, kvs__skey *sk) {
  const char *tenant = evhttp_find_header(q, "tenant");
  const char *key = evhttp_find_header(q, "key");
  kvs_key k;
  if (!tenant || !*tenant || strlen(tenant) > KVS_WIRE_TENANT_MAX || !key || strlen(key) != 32 ||
      kvs_hash128_from_hex(key, &k) != KVS_OK)
    return KVS_EINVAL;
  kvs__store_skey(h->st, tenant, &k, sk);
  return KVS_OK;
}

/* The item's fields after an opening brace, without the closing one. */
static void item_json_open(struct evbuffer *b, const kvs__item *it) {
  char key[33], model[33];
  kvs_hash128_hex(&it->it.key, key);
  kvs_hash128_hex(&it->it.model, model);
  evbuffer_add_printf(b,
                      "{\"key\":\"%s\",\"model\":\"%s\",\"kind\":\"%s\",\"tokens\":%u,"
                      "\"tier\":%u,\"pinned\":%s,\"quarantined\":%s,\"bytes\":%llu,"
                      "\"hits\":%llu,\"created_ms\":%llu,\"last_used_ms\":%llu,\"ttl_s\":%u",
                      key, model, it->it.key_kind == KVS_KEY_KIND_PREFIX ? "prefix" : "content",
                      it->it.n_tokens, it->it.tier, it->it.pinned ? "true" : "false",
                      it->quarantined ? "true" : "false", (unsigned long long)it->it.value_bytes,
                      (unsigned long long)it->it.hits, (unsigned long long)it->it.created_ms,
                      (unsigned long long)it->it.last_used_ms, it->it.ttl_s);
}

/* The rest of an entry for `kvstash show`: what only the metadata record
 * and the value hold. Reads the value (no hit counted) to check it against
 * its checksum now. */
static void detail_json(struct evbuffer *b, kvs__http *h, const kvs__skey *sk, int quarantined) {
  kvs__vref v;
  if (quarantined || kvs__store_read(h->st, sk, &v) != KVS_OK) {
    evbuffer_add_printf(b, ",\"checksum_ok\":%s", quarantined ? "false" : "null");
    return;
  }
  const kvs_wire_meta *m = &v.m;
  const kvs_layout *l = &m->layout;
  evbuffer_add_printf(b,
                      ",\"layout\":{\"n_layers\":%u,\"n_kv_heads\":%u,\"head_dim\":%u,"
                      "\"dtype\":\"%s\",\"rope_type\":%u,\"rope_dims\":%u,\"rope_theta\":%g,"
                      "\"rope_freq_scale\":%g}",
                      l->n_layers, l->n_kv_heads, l->head_dim, kvs_dtype_name(l->dtype),
                      l->rope_type, l->rope_dims, (double)l->rope_theta,
                      (double)l->rope_freq_scale);
  int ok = v.buf && v.buf->len == m->value_bytes &&
           kvs_checksum64(v.buf->data, v.buf->len) == m->checksum;
  evbuffer_add_printf(b,
                      ",\"codec_profile\":%u,\"codec_params_bytes\":%u,\"segments\":%u,"
                      "\"checksum\":\"%016llx\",\"checksum_ok\":%s,\"meta_bytes\":%zu,"
                      "\"token_ids\":[",
                      m->codec_profile, m->codec_params_len, m->n_segments,
                      (unsigned long long)m->checksum, ok ? "true" : "false", v.meta_len);
  for (uint32_t i = 0; i < m->n_tokens; i++)
    evbuffer_add_printf(b, "%s%d", i ? "," : "", (int32_t)kvs_wire_rd32(m->tokens_le, i));
  evbuffer_add_printf(b, "]");
  kvs__vref_release(&v);
}

/* Entries and bytes of one tenant, by walking its listing. */
static void tenant_usage(kvs__http *h, const char *tenant, uint64_t *entries, uint64_t *bytes,
                         uint64_t *pinned) {
  uint8_t tid[8], cur[16];
  kvs__store_tenant_id(h->st, tenant, tid);
  *entries = *bytes = *pinned = 0;
  kvs__item *items = malloc(sizeof *items * KVS_WIRE_MAX_LIST);
  if (!items) return;
  int more = 1, first = 1;
  while (more) {
    uint32_t n = 0;
    more = 0;
    if (kvs__store_list(h->st, tid, first ? NULL : cur, KVS_WIRE_MAX_LIST, items, &n, &more) !=
            KVS_OK ||
        n == 0)
      break;
    for (uint32_t i = 0; i < n; i++) {
      *entries += 1;
      *bytes += items[i].it.value_bytes;
      *pinned += items[i].it.pinned;
    }
    memcpy(cur, items[n - 1].sk.b + 8, 16);
    first = 0;
  }
  free(items);
}

static void item_json(struct evbuffer *b, const kvs__item *it) {
  item_json_open(b, it);
  evbuffer_add_printf(b, "}");
}

static void send_json(struct evhttp_request *req, struct evbuffer *b) {
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
  evhttp_send_reply(req, 200, "OK", b);
  evbuffer_free(b);
}

/* GET /v1/info: what the process is (version, pid, uptime, clients now)
 * and the configuration an operator needs. Malloc'd, NULL on ENOMEM. */
static char *info_json(kvs__http *h) {
  const kvs_svc_config *c = &h->cfg;
  const kvs__metrics *m = h->met;
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  int64_t msg = atomic_load(&h->met->clients_msg), str = atomic_load(&h->met->clients_stream);
  cJSON_AddStringToObject(o, "version", kvs_version());
  cJSON_AddNumberToObject(o, "wire_version", KVS_WIRE_VERSION);
  cJSON_AddNumberToObject(o, "pid", (double)getpid());
  cJSON_AddNumberToObject(o, "start_time_s", (double)(m->start_unix_ms / 1000u));
  cJSON_AddNumberToObject(o, "uptime_s", (double)(kvs_now_ns() - m->start_mono_ns) * 1e-9);
  cJSON_AddNumberToObject(o, "connected_clients", (double)(msg + str));
  cJSON *cc = cJSON_AddObjectToObject(o, "connections");
  if (cc) {
    cJSON_AddNumberToObject(cc, "message", (double)msg);
    cJSON_AddNumberToObject(cc, "stream", (double)str);
  }
  cJSON_AddNumberToObject(o, "ram_bytes", (double)c->ram_bytes);
  cJSON_AddNumberToObject(o, "disk_bytes", (double)c->disk_bytes);
  cJSON_AddNumberToObject(o, "cold_bytes", (double)c->cold_bytes);
  kvs__tier_row tr[KVS__MAX_TIER_ROWS];
  int ntr = kvs__store_tier_rows(h->st, tr, KVS__MAX_TIER_ROWS);
  int below = 0; /* a disk tier below the first one is open */
  for (int i = 2; i < ntr; i++)
    below |= tr[i].present;
  cJSON_AddBoolToObject(o, "cold_tier", below);
  cJSON *ta = cJSON_AddArrayToObject(o, "tiers");
  for (int i = 0; ta && i < ntr; i++) {
    cJSON *t = cJSON_CreateObject();
    if (!t) break;
    cJSON_AddStringToObject(t, "name", tr[i].name);
    cJSON_AddNumberToObject(t, "tier", tr[i].wire);
    cJSON_AddBoolToObject(t, "present", tr[i].present);
    cJSON_AddNumberToObject(t, "used", (double)tr[i].used);
    cJSON_AddNumberToObject(t, "capacity", (double)tr[i].capacity);
    cJSON_AddNumberToObject(t, "entries", (double)tr[i].entries);
    cJSON_AddItemToArray(ta, t);
  }
  cJSON_AddStringToObject(o, "durability", kvs__durability_name(c->durability));
  cJSON_AddNumberToObject(o, "workers", c->workers);
  cJSON_AddNumberToObject(o, "max_msg", (double)c->max_msg);
  kvs__auth *a = kvs__auth_get(&h->met->auth);
  int nt = a ? a->n : 0;
  kvs__auth_put(a);
  cJSON_AddBoolToObject(o, "auth", nt > 0);
  cJSON_AddNumberToObject(o, "tenants", nt);
  cJSON *rl = cJSON_AddObjectToObject(o, "config_reloads");
  if (rl) {
    cJSON_AddNumberToObject(rl, "ok", (double)atomic_load(&h->met->reloads_ok));
    cJSON_AddNumberToObject(rl, "error", (double)atomic_load(&h->met->reloads_err));
    char why[sizeof h->met->reload_error];
    pthread_mutex_lock(&h->met->reload_mu);
    memcpy(why, h->met->reload_error, sizeof why);
    pthread_mutex_unlock(&h->met->reload_mu);
    cJSON_AddStringToObject(rl, "last_error", why);
  }
  cJSON_AddBoolToObject(o, "shm", c->shm);
  cJSON_AddNumberToObject(o, "default_ttl_s", c->default_ttl_s);
  cJSON_AddNumberToObject(o, "half_life_s", c->half_life_s);
  cJSON_AddStringToObject(o, "eviction", c->evict_lru ? "lru" : "cost");
  cJSON *l = cJSON_AddArrayToObject(o, "listen");
  for (int i = 0; l && i < c->n_listen; i++)
    cJSON_AddItemToArray(l, cJSON_CreateString(c->listen[i]));
  char *t = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!t) return NULL;
  size_t n = strlen(t);
  char *out = realloc(t, n + 2); /* a newline, like every other answer */
  if (!out) {
    free(t);
    return NULL;
  }
  memcpy(out + n, "\n", 2);
  return out;
}

static void handle_v1(kvs__http *h, struct evhttp_request *req, const char *path,
                      struct evkeyvalq *q) {
  enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
  if (!admin_ok(h, req)) RET(reply_err(req, 401, KVS_EAUTH, NULL));
  if (!strcmp(path, "/v1/stats")) {
    uint64_t v[KVS__STAT_COUNT];
    kvs__store_stats(h->st, v);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{");
    for (int i = 0; i < KVS__STAT_COUNT; i++)
      evbuffer_add_printf(b, "%s\"%s\":%llu", i ? "," : "", kvs_wire_stat_name((uint32_t)i),
                          (unsigned long long)v[i]);
    evbuffer_add_printf(b, ",\"auth_failures\":%llu,\"bad_frames\":%llu}\n",
                        (unsigned long long)atomic_load(&h->met->auth_failures),
                        (unsigned long long)atomic_load(&h->met->bad_frames));
    RET(send_json(req, b));
  }
  if (!strcmp(path, "/v1/events")) { /* cluster.c, docs/cluster.md */
    char *j =
        kvs__events_json(h->met, evhttp_find_header(q, "after"), evhttp_find_header(q, "limit"));
    if (!j) RET(reply_err(req, 404, KVS_ENOENT, "not in a cluster: no events kept"));
    reply(req, 200, "application/json", j);
    RET(free(j));
  }
  if (!strcmp(path, "/v1/entries")) {
    const char *tenant = evhttp_find_header(q, "tenant");
    const char *lim = evhttp_find_header(q, "limit");
    const char *cur = evhttp_find_header(q, "cursor");
    uint32_t limit = lim ? (uint32_t)strtoul(lim, NULL, 10) : 100;
    if (limit == 0 || limit > KVS_WIRE_MAX_LIST) limit = KVS_WIRE_MAX_LIST;
    if (!tenant || !*tenant || strlen(tenant) > KVS_WIRE_TENANT_MAX)
      RET(reply_err(req, 400, KVS_EINVAL, "tenant= required"));
    kvs_hash128 c;
    if (cur && kvs_hash128_from_hex(cur, &c) != KVS_OK)
      RET(reply_err(req, 400, KVS_EINVAL, "cursor"));
    uint8_t tid[8];
    kvs__store_tenant_id(h->st, tenant, tid);
    kvs__item *items = malloc(sizeof *items * limit);
    uint32_t n = 0;
    int more = 0;
    if (!items ||
        kvs__store_list(h->st, tid, cur ? c.b : NULL, limit, items, &n, &more) != KVS_OK) {
      free(items);
      RET(reply_err(req, 500, KVS_ENOMEM, NULL));
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"items\":[");
    for (uint32_t i = 0; i < n; i++) {
      if (i) evbuffer_add_printf(b, ",");
      item_json(b, &items[i]);
    }
    char next[33] = "";
    if (n) {
      kvs_hash128 nc;
      memcpy(nc.b, items[n - 1].sk.b + 8, 16);
      kvs_hash128_hex(&nc, next);
    }
    evbuffer_add_printf(b, "],\"more\":%s,\"next_cursor\":\"%s\"}\n", more ? "true" : "false",
                        next);
    free(items);
    RET(send_json(req, b));
  }
  kvs__skey sk;
  if (!strcmp(path, "/v1/entry")) {
    if (entry_key(h, q, &sk) != KVS_OK) RET(reply_err(req, 400, KVS_EINVAL, "tenant=, key="));
    kvs__item it;
    kvs_err e = kvs__store_info(h->st, &sk, &it);
    if (e != KVS_OK) RET(reply_err(req, status_of(e), e, NULL));
    struct evbuffer *b = evbuffer_new();
    item_json_open(b, &it);
    const char *detail = evhttp_find_header(q, "detail");
    if (detail && strcmp(detail, "0") != 0) detail_json(b, h, &sk, it.quarantined);
    evbuffer_add_printf(b, "}");
    evbuffer_add_printf(b, "\n");
    RET(send_json(req, b));
  }
  if (!strcmp(path, "/v1/info")) {
    char *t = info_json(h);
    if (!t) RET(reply_err(req, 500, KVS_ENOMEM, NULL));
    reply(req, 200, "application/json", t);
    free(t);
    return;
  }
  if (!strcmp(path, "/v1/tenants")) {
    /* only configured tenants have names the server knows; with auth off
     * any name is a tenant and none can be enumerated (keys are salted) */
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"tenants\":[");
    kvs__auth *a = kvs__auth_get(&h->met->auth);
    int nt = a ? a->n : 0;
    for (int i = 0; i < nt; i++) {
      uint64_t e, by, pn;
      tenant_usage(h, a->t[i].name, &e, &by, &pn);
      evbuffer_add_printf(b,
                          "%s{\"tenant\":\"%s\",\"entries\":%llu,\"bytes\":%llu,"
                          "\"pinned\":%llu}",
                          i ? "," : "", a->t[i].name, (unsigned long long)e, (unsigned long long)by,
                          (unsigned long long)pn);
    }
    kvs__auth_put(a);
    evbuffer_add_printf(b, "],\"enumerable\":%s}\n", nt ? "true" : "false");
    RET(send_json(req, b));
  }
  if (!strcmp(path, "/v1/evict") || !strcmp(path, "/v1/pin")) {
    if (cmd != EVHTTP_REQ_POST) RET(reply_err(req, 405, KVS_EINVAL, "POST required"));
    if (entry_key(h, q, &sk) != KVS_OK) RET(reply_err(req, 400, KVS_EINVAL, "tenant=, key="));
    kvs_err e;
    if (path[4] == 'e') {
      e = kvs__store_delete(h->st, &sk);
    } else {
      const char *pin = evhttp_find_header(q, "pin");
      e = kvs__store_pin(h->st, &sk, !(pin && !strcmp(pin, "0")));
    }
    if (e != KVS_OK) RET(reply_err(req, status_of(e), e, NULL));
    RET(reply(req, 200, "application/json", "{\"ok\":true}\n"));
  }
  reply_err(req, 404, KVS_ENOENT, "no such endpoint");
}

static void on_request(struct evhttp_request *req, void *arg) {
  kvs__http *h = arg;
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  if (!path) RET(reply_err(req, 400, KVS_EINVAL, "bad URI"));
  if (!strcmp(path, "/health")) RET(reply(req, 200, "text/plain", "ok\n"));
  if (!strcmp(path, "/ready")) {
    int r = atomic_load(h->ready);
    RET(reply(req, r ? 200 : 503, "text/plain", r ? "ready\n" : "not ready\n"));
  }
  if (!strcmp(path, "/metrics")) {
    char *t = kvs__metrics_text(h->met, h->st);
    reply(req, 200, "text/plain; version=0.0.4", t ? t : "");
    free(t);
    return;
  }
  if (!strncmp(path, "/v1/", 4)) {
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *qs = evhttp_uri_get_query(uri);
    if (qs && evhttp_parse_query_str(qs, &q) != 0) {
      evhttp_clear_headers(&q);
      RET(reply_err(req, 400, KVS_EINVAL, "bad query"));
    }
    handle_v1(h, req, path, &q);
    evhttp_clear_headers(&q);
    return;
  }
  reply_err(req, 404, KVS_ENOENT, "no such endpoint");
}

#define KVS__HTTP_MAX_HEADERS (16u << 10) /* the whole header block, bytes */
#define KVS__HTTP_MAX_BODY    (64u << 10)
#define KVS__HTTP_TIMEOUT_S   10 /* a request read (or an answer written) within this */

static void *http_main(void *arg) {
  kvs__http *h = arg;
  event_base_dispatch(h->base);
  return NULL;
}

kvs_err kvs__http_start(const kvs_svc_config *c, kvs__store *st, kvs__metrics *met,
                        atomic_int *ready, kvs__http **out) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, use_pthreads);
  kvs__http *h = calloc(1, sizeof *h);
  if (!h) return KVS_ENOMEM;
  h->cfg = *c;
  h->st = st;
  h->met = met;
  h->ready = ready;
  char host[128];
  int port = 0;
  if (kvs_hostport_split(c->http, host, sizeof host, &port) != KVS_OK) { /* [v6]: no brackets */
    free(h);
    return KVS_EINVAL;
  }
  h->base = event_base_new();
  h->http = h->base ? evhttp_new(h->base) : NULL;
  if (!h->http) {
    kvs__http_stop(h);
    return KVS_ENOMEM;
  }
  evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
  /* Bounds before the admin token is even looked at: a header block or body
   * over the limit, or a request that does not arrive whole within the
   * timeout, closes the connection (an unbounded header was buffered whole). */
  evhttp_set_max_headers_size(h->http, KVS__HTTP_MAX_HEADERS);
  evhttp_set_max_body_size(h->http, KVS__HTTP_MAX_BODY);
  evhttp_set_timeout(h->http, KVS__HTTP_TIMEOUT_S);
  evhttp_set_gencb(h->http, on_request, h);
  if (!evhttp_bind_socket_with_handle(h->http, host, (ev_uint16_t)port)) {
    KVS_LOGE("http", "cannot bind", "addr=%s", c->http);
    kvs__http_stop(h);
    return KVS_EBUSY;
  }
  if (pthread_create(&h->th, NULL, http_main, h) != 0) {
    kvs__http_stop(h);
    return KVS_EINTERNAL;
  }
  h->started = 1;
  KVS_LOGI("http", "control plane listening", "addr=%s", c->http);
  *out = h;
  return KVS_OK;
}

void kvs__http_stop(kvs__http *h) {
  if (!h) return;
  if (h->started) {
    event_base_loopbreak(h->base);
    pthread_join(h->th, NULL);
  }
  if (h->http) evhttp_free(h->http);
  if (h->base) event_base_free(h->base);
  free(h);
}
