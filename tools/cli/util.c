/* util.c - what every verb of the CLI uses: help texts, errors and exit
 * codes, the data-plane client, a small HTTP client for the control plane,
 * key resolution, parsing and formatting, progress bars. */
#include <arpa/inet.h>
#include <ctype.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli.h"
#include "kvs_conf.h"
#include "kvs_net.h"

/* ----------------------------------------------------------------- help */
typedef struct help {
  const char *verb, *text;
} help;

static const help helps[] = {
    {"status",
     "usage: kvstash status\n\n"
     "Server reachability (data plane + HTTP), entries, bytes per tier against capacity,\n"
     "hit rate, traffic counters, and the largest tenants (configured tenants; with auth\n"
     "off tenants cannot be enumerated, so the current tenant's usage is shown).\n\n"
     "example:\n  kvstash status --json | jq .hit_rate\n"},
    {"ls", "usage: kvstash ls [options]\n\n"
           "Entries of the tenant (-t), newest use first.\n"
           "  --model HEX        model id (or a prefix of it)\n"
           "  --tier T           ram, disk, cold (the server's tiers) or 0, 1, 2\n"
           "  --kind K           prefix | content\n"
           "  --pinned / --unpinned\n"
           "  --older-than DUR   last used more than DUR ago (30s, 15m, 2h, 7d)\n"
           "  --newer-than DUR   last used less than DUR ago\n"
           "  --min-size SIZE    value bytes (K, M, G suffixes)\n"
           "  --max-size SIZE\n"
           "  --sort FIELD       used (default) | created | size | hits | tokens | key\n"
           "  --reverse          reverse the order\n"
           "  --limit N          rows shown (default 50, 0 = all)\n"
           "  --offset N         skip N rows first (paging)\n"
           "  --full-keys        print whole 32-hex keys\n\n"
           "example:\n  kvstash ls --tier disk --min-size 1M --sort size --limit 10\n"},
    {"show", "usage: kvstash show KEY [--no-text] [--model GGUF]\n\n"
             "One entry: metadata, layout, codec profile, sizes, segments, checksum (verified now\n"
             "against the stored bytes), token ids and, when the reference model at --model /\n"
             "$KVS_MODEL_PATH has the entry's model id, the tokens decoded to text.\n"
             "KEY is 32 hex digits or an unambiguous prefix. Uses the HTTP admin API.\n\n"
             "example:\n  kvstash show 3fa9c2 --json\n"},
    {"evict",
     "usage: kvstash evict [KEY...] [filters] [--dry-run] [--yes]\n\n"
     "Deletes the named keys, or every entry matching the filters (pinned entries are\n"
     "skipped unless --include-pinned):\n"
     "  --all              every entry of the tenant (asks for --yes)\n"
     "  --older-than DUR   last used more than DUR ago\n"
     "  --model HEX        of this model (prefix)\n"
     "  --tier T           on this tier (name or number)\n"
     "  --kind K           prefix | content\n"
     "  --min-size SIZE    at least this large\n"
     "  --to-bytes SIZE    evict the lowest-value entries (server's score: hits x tokens /\n"
     "                     bytes, halved each hour of idleness) until the tenant holds\n"
     "                     at most SIZE; when pinned (or unmatched) entries keep it\n"
     "                     above SIZE it says so first (exit 1 unless --dry-run)\n"
     "  --include-pinned   pinned entries may go too\n"
     "  --dry-run          print what would go, delete nothing\n"
     "  --yes              confirm --all\n"
     "SIZE: bytes, or with K, M, G, T (KiB, MiB, GiB, TiB: powers of 1024, as printed)\n\n"
     "example:\n  kvstash evict --older-than 7d --dry-run\n"
     "  kvstash evict --to-bytes 10G\n"},
    {"pin", "usage: kvstash pin KEY...\n\nPinned entries are never evicted nor demoted "
            "(a TTL still applies).\n\nexample:\n  kvstash pin 3fa9c2 81be07\n"},
    {"unpin", "usage: kvstash unpin KEY...\n\nexample:\n  kvstash unpin 3fa9c2\n"},
    {"ttl", "usage: kvstash ttl KEY DURATION\n\nIdle TTL: the entry expires DURATION after "
            "its last use; 0 = never.\n\nexample:\n  kvstash ttl 3fa9c2 12h\n"},
    {"export",
     "usage: kvstash export FILE [--page N]\n\n"
     "Streams every entry of the tenant into FILE ('-' = stdout): a self-describing,\n"
     "checksummed archive (docs/cli.md). Written to FILE.part and renamed when complete.\n\n"
     "example:\n  kvstash -t rag export rag-$(date +%F).kvsa\n"},
    {"import", "usage: kvstash import FILE [--verify-only]\n\n"
               "Reads an archive ('-' = stdin), verifies every entry (header and value checksums,\n"
               "metadata) before sending it; a bad entry is reported and skipped, the others are\n"
               "imported; the server writes each entry whole or not at all. Exit 1 when any entry\n"
               "was skipped or refused. --verify-only checks the archive and sends nothing.\n\n"
               "example:\n  kvstash -t rag import rag-2025-01-31.kvsa\n"},
    {"warmup",
     "usage: kvstash warmup FILE... [options]\n\n"
     "Runs documents through the reference engine and stores their chunk KV (content\n"
     "keys), skipping chunks already cached:\n"
     "  --format F         text (a file = a document) | jsonl (one {\"text\":...} a line)\n"
     "                     | musique (the MuSiQue JSON, plain or .zst as the repo's\n"
     "                     data/rag/musique_s.json.zst: instruction + passages per item);\n"
     "                     default: from the file name (.jsonl, .json[.zst], else text)\n"
     "  --model GGUF       the reference engine's model ($KVS_MODEL_PATH)\n"
     "  --profile NAME     codec profile (default dense; raw always works)\n"
     "  --chunk-tokens N   passage size for text/jsonl (default 256)\n"
     "  --items N          MuSiQue items to warm (default 1)\n"
     "  --force            recompute and store even when cached\n\n"
     "example:\n  kvstash warmup docs/*.txt --profile int8\n"},
    {"bench", "usage: kvstash bench [--seconds S] [--size BYTES] [--entries N] [--profile NAME]\n\n"
              "Puts N synthetic chunks of about BYTES each (default 16 x 256K), then GETs them\n"
              "in a loop for S seconds (default 3); prints throughput and latency (p50/p99) and\n"
              "a last JSON line. With --profile the client-side codec encode/decode is part of\n"
              "the figures. The bench entries are deleted at the end.\n\n"
              "example:\n  kvstash bench --seconds 10 --size 1M --profile int8\n"},
    {"doctor",
     "usage: kvstash doctor [--model GGUF] [--sha256]\n\n"
     "Checks: data plane reachable, token accepted, HTTP control plane and admin token,\n"
     "store counters sane (quarantines, errors, capacity), RocksDB background errors,\n"
     "the model file (present, GGUF magic, size; --sha256 compares tools/model.sha256),\n"
     "the GPU (CUDA compiled, device present). Exit 1 when any check fails (3/4 when the\n"
     "server is unreachable / the token is refused).\n\n"
     "example:\n  kvstash doctor\n"},
    {NULL, NULL}};

void cli_verb_help(const char *verb) {
  for (const help *h = helps; h->verb; h++)
    if (!strcmp(h->verb, verb)) {
      fputs(h->text, stdout);
      fputs("\nglobal options and exit codes: kvstash --help\n", stdout);
      return;
    }
  printf("no verb '%s' (kvstash --help lists them)\n", verb);
}

/* --------------------------------------------------------------- errors */
int cli_usage_err(const char *verb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "kvstash%s%s: ", verb ? " " : "", verb ? verb : "");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n(kvstash %s%s--help for usage)\n", verb ? verb : "", verb ? " " : "");
  return CLI_USAGE;
}

int cli_exit_of(kvs_err e) {
  switch (e) {
  case KVS_OK: return CLI_OK;
  case KVS_ECONN: return CLI_UNREACHABLE;
  case KVS_EAUTH: return CLI_AUTH;
  default: return CLI_FAIL;
  }
}

int cli_fail(cli *x, const char *verb, kvs_err e, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kvstash %s: %s\n", verb, msg);
  if (x->json) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "error", kvs_errname(e));
    cJSON_AddNumberToObject(j, "code", e);
    cJSON_AddStringToObject(j, "message", msg);
    cJSON_AddNumberToObject(j, "exit", cli_exit_of(e));
    cli_print_json(j);
  }
  return cli_exit_of(e);
}

int cli_client(cli *x, const char *verb) {
  if (x->c) return CLI_OK;
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = x->url;
  o.tenant = x->tenant;
  o.token = x->token[0] ? x->token : NULL;
  o.connect_timeout_ms = x->timeout_ms;
  o.request_timeout_ms = x->timeout_ms * 5 > 10000 ? x->timeout_ms * 5 : 10000;
  o.n_sockets = 1;
  kvs_err e = kvs_client_create(&o, &x->c);
  if (e == KVS_EINVAL && !x->c)
    return cli_fail(x, verb, KVS_EINVAL, "bad URL '%s' (tcp://HOST:PORT or ipc://PATH)", x->url);
  if (e != KVS_OK) {
    const char *why = x->c ? kvs_client_errmsg(x->c) : kvs_strerror(e);
    int rc = e == KVS_ECONN || e == KVS_ETIMEDOUT
                 ? cli_fail(x, verb, KVS_ECONN, "kvstashd unreachable at %s: %s", x->url, why)
                 : cli_fail(x, verb, e, "cannot use %s: %s", x->url, why);
    kvs_client_free(x->c);
    x->c = NULL;
    return rc;
  }
  e = kvs_ping(x->c);
  if (e == KVS_EAUTH)
    return cli_fail(x, verb, e,
                    "kvstashd at %s refused the token of tenant '%s' (--token / "
                    "$KVS_TOKEN)",
                    x->url, x->tenant);
  if (e != KVS_OK)
    return cli_fail(x, verb, e == KVS_ETIMEDOUT ? KVS_ECONN : e, "kvstashd at %s: %s", x->url,
                    kvs_client_errmsg(x->c));
  return CLI_OK;
}

/* ----------------------------------------------------------------- HTTP */
typedef struct {
  int status;
  char *body;
  kvs_err err;
  struct event_base *base;
} http_res;

static void http_done(struct evhttp_request *req, void *arg) {
  http_res *r = arg;
  event_base_loopbreak(r->base); /* the connection's own events would keep the loop going */
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (!code) return; /* connect failure, timeout or no valid response: r->err stays KVS_ECONN */
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  size_t n = evbuffer_get_length(in);
  r->body = malloc(n + 1);
  r->err = r->body ? KVS_OK : KVS_ENOMEM;
  if (!r->body) return;
  evbuffer_remove(in, r->body, n);
  r->body[n] = 0;
  r->status = code;
}

/* One request with libevent's HTTP client on a private event base. */
kvs_err cli_http(cli *x, const char *method, const char *path, int *status, char **body) {
  *body = NULL;
  *status = 0;
  if (!x->http[0]) return KVS_ECONN;
  const char *hp = strncmp(x->http, "http://", 7) ? x->http : x->http + 7;
  char host[256], auth[300];
  int port = 0;
  if (kvs_hostport_split(hp, host, sizeof host, &port) != KVS_OK) return KVS_EINVAL;
  struct event_base *base = event_base_new();
  http_res r = {0, NULL, KVS_ECONN, base};
  struct evhttp_connection *conn =
      base ? evhttp_connection_base_new(base, NULL, host, (ev_uint16_t)port) : NULL;
  struct evhttp_request *req = conn ? evhttp_request_new(http_done, &r) : NULL;
  if (req) {
    struct timeval tv = {(time_t)(x->timeout_ms / 1000),
                         (suseconds_t)(x->timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(conn, &tv);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", hp);
    evhttp_add_header(h, "Connection", "close");
    snprintf(auth, sizeof auth, "Bearer %s", x->admin_token);
    if (x->admin_token[0]) evhttp_add_header(h, "Authorization", auth);
    enum evhttp_cmd_type m = strcmp(method, "POST") ? EVHTTP_REQ_GET : EVHTTP_REQ_POST;
    if (evhttp_make_request(conn, req, m, path) == 0) /* frees req either way */
      event_base_dispatch(base);
  }
  if (conn) evhttp_connection_free(conn);
  if (base) event_base_free(base);
  if (!base || !conn || !req) return KVS_ENOMEM;
  *status = r.status;
  *body = r.body;
  return r.err;
}

kvs_err cli_http_json(cli *x, const char *method, const char *path, cJSON **out) {
  *out = NULL;
  int st;
  char *body;
  KVS_TRY(cli_http(x, method, path, &st, &body));
  cJSON *j = cJSON_Parse(body);
  free(body);
  if (st == 401) {
    cJSON_Delete(j);
    return KVS_EAUTH;
  }
  if (st != 200) {
    cJSON *c = j ? cJSON_GetObjectItem(j, "code") : NULL;
    kvs_err e = cJSON_IsNumber(c) ? (kvs_err)c->valueint : st == 404 ? KVS_ENOENT : KVS_EIO;
    cJSON_Delete(j);
    return e;
  }
  if (!cJSON_IsObject(j)) {
    cJSON_Delete(j);
    return KVS_EPROTO;
  }
  *out = j;
  return KVS_OK;
}

/* --------------------------------------------------------------- entries */
kvs_err cli_list_all(cli *x, kvs_admin_item **items, size_t *n) {
  *items = NULL;
  *n = 0;
  size_t cap = 1024;
  kvs_admin_item *v = malloc(cap * sizeof *v);
  if (!v) return KVS_ENOMEM;
  kvs_admin_cursor cur;
  kvs_admin_cursor_init(&cur);
  while (!cur.done) {
    if (*n + KVS_WIRE_MAX_LIST_CLI > cap) {
      kvs_admin_item *nv = realloc(v, cap * 2 * sizeof *v);
      if (!nv) {
        free(v);
        return KVS_ENOMEM;
      }
      v = nv, cap *= 2;
    }
    size_t got = 0;
    kvs_err e = kvs_admin_list(x->c, &cur, KVS_WIRE_MAX_LIST_CLI, v + *n, &got);
    if (e) {
      free(v);
      *n = 0;
      return e;
    }
    *n += got;
  }
  *items = v;
  return KVS_OK;
}

static int is_hex(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!isxdigit((unsigned char)*s)) return 0;
  return 1;
}

int cli_resolve_key(cli *x, const char *verb, const char *s, kvs_key *out) {
  size_t n = strlen(s);
  if (!is_hex(s) || n > 32 || n < 4)
    return cli_usage_err(verb, "'%s' is not a key (32 hex digits, or a prefix of 4 or more)", s);
  if (n == 32) return kvs_hash128_from_hex(s, out) == KVS_OK ? CLI_OK : CLI_USAGE;
  kvs_admin_item *items;
  size_t m;
  kvs_err e = cli_list_all(x, &items, &m);
  if (e) return cli_fail(x, verb, e, "listing keys: %s", kvs_client_errmsg(x->c));
  int found = 0;
  for (size_t i = 0; i < m; i++) {
    char hex[33];
    kvs_hash128_hex(&items[i].key, hex);
    if (!strncasecmp(hex, s, n)) {
      if (found++) break;
      *out = items[i].key;
    }
  }
  free(items);
  if (found == 1) return CLI_OK;
  return cli_fail(x, verb, found ? KVS_EINVAL : KVS_ENOENT,
                  found ? "key prefix '%s' is ambiguous" : "no entry with a key starting '%s'", s);
}

cJSON *cli_item_json(const kvs_admin_item *it) {
  char key[33], model[33];
  kvs_hash128_hex(&it->key, key);
  kvs_hash128_hex(&it->model, model);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "key", key);
  cJSON_AddStringToObject(j, "model", model);
  cJSON_AddStringToObject(j, "kind", it->kind == KVS_CHUNK_PREFIX ? "prefix" : "content");
  cJSON_AddNumberToObject(j, "tokens", it->n_tokens);
  cJSON_AddNumberToObject(j, "bytes", (double)it->value_bytes);
  cJSON_AddNumberToObject(j, "tier", it->tier);
  cJSON_AddBoolToObject(j, "pinned", it->pinned);
  cJSON_AddNumberToObject(j, "hits", (double)it->hits);
  cJSON_AddNumberToObject(j, "created_ms", (double)it->created_ms);
  cJSON_AddNumberToObject(j, "last_used_ms", (double)it->last_used_ms);
  cJSON_AddNumberToObject(j, "ttl_s", it->ttl_s);
  return j;
}

void cli_print_json(cJSON *j) {
  char *s = cJSON_Print(j);
  if (s) printf("%s\n", s);
  free(s);
  cJSON_Delete(j);
}

/* ------------------------------------------------------ parse / format */
int cli_parse_size(const char *s, uint64_t *out) {
  return kvs_conf_parse_size(s, out) == KVS_OK ? 0 : -1;
}

int cli_parse_duration(const char *s, uint64_t *seconds) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v < 0) return -1;
  double mul = 1;
  if (*end == 's')
    end++;
  else if (*end == 'm')
    mul = 60, end++;
  else if (*end == 'h')
    mul = 3600, end++;
  else if (*end == 'd')
    mul = 86400, end++;
  else if (*end == 'w')
    mul = 604800, end++;
  if (*end || v * mul > 1e15) return -1;
  *seconds = (uint64_t)(v * mul);
  return 0;
}

const char *cli_fmt_bytes(uint64_t b, char *buf, size_t cap) {
  static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int i = 0;
  while (v >= 1024 && i < 4)
    v /= 1024, i++;
  if (i == 0)
    snprintf(buf, cap, "%llu B", (unsigned long long)b);
  else
    snprintf(buf, cap, "%.1f %s", v, u[i]);
  return buf;
}

const char *cli_fmt_age(uint64_t ms, char *buf, size_t cap) {
  uint64_t s = ms / 1000;
  if (s < 60)
    snprintf(buf, cap, "%llus", (unsigned long long)s);
  else if (s < 3600)
    snprintf(buf, cap, "%llum", (unsigned long long)(s / 60));
  else if (s < 86400)
    snprintf(buf, cap, "%lluh", (unsigned long long)(s / 3600));
  else
    snprintf(buf, cap, "%llud", (unsigned long long)(s / 86400));
  return buf;
}

const char *cli_profile_name(int profile) {
  /* the names kvs_profile_from_name knows (kvstash.h, kvs_codec.h) */
  static const char *names[] = {"raw",   "lossless", "int8",         "kivi2",
                                "kivi4", "fp4",      "cachegen-ref", "dense"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (kvs_profile_from_name(names[i]) == profile) return names[i];
  return profile == 0 ? "raw" : "?";
}

/* The server's tier names by number, from its STATS tier rows; a number the
 * server did not name (or before cli_tier_names_load) shows as the number. */
static char g_tier_name[16][16];
void cli_tier_names_load(cli *x) {
  kvs_tier_stat t[16];
  size_t n = 0;
  if (kvs_stats_tiers(x->c, t, 16, &n) != KVS_OK) return;
  for (size_t i = 0; i < n; i++)
    if (t[i].tier < 16)
      snprintf(g_tier_name[t[i].tier], sizeof g_tier_name[0], "%.*s",
               (int)sizeof g_tier_name[0] - 1, t[i].name);
}
void cli_tier_names_http(cli *x) {
  cJSON *info = NULL;
  if (cli_http_json(x, "GET", "/v1/info", &info) != KVS_OK) return;
  const cJSON *a = cJSON_GetObjectItem(info, "tiers"), *t;
  cJSON_ArrayForEach(t, a) {
    const cJSON *nm = cJSON_GetObjectItem(t, "name"), *no = cJSON_GetObjectItem(t, "tier");
    if (cJSON_IsString(nm) && cJSON_IsNumber(no) && no->valuedouble >= 0 && no->valuedouble < 16)
      snprintf(g_tier_name[(int)no->valuedouble], sizeof g_tier_name[0], "%s", nm->valuestring);
  }
  cJSON_Delete(info);
}
const char *cli_tier_name(unsigned tier) {
  static char num[16][12];
  if (tier >= 16) return "?";
  if (g_tier_name[tier][0]) return g_tier_name[tier];
  snprintf(num[tier], sizeof num[0], "tier%u", tier);
  return num[tier];
}

/* ------------------------------------------------------------- progress */
void cli_progress_start(cli *x, cli_progress *p, const char *label, uint64_t total) {
  memset(p, 0, sizeof *p);
  p->label = label;
  p->total = total;
  p->on = x->progress;
  p->t0_ns = p->last_ns = kvs_now_ns();
  if (getenv("KVS_PROGRESS") && !strcmp(getenv("KVS_PROGRESS"), "always")) p->on = 1;
}

static void progress_draw(cli_progress *p, int final) {
  double t = (double)(kvs_now_ns() - p->t0_ns) / 1e9;
  double rate = t > 0 ? (double)p->bytes / t : 0;
  char rb[48];
  if (p->unit)
    snprintf(rb, sizeof rb, "%.0f %s", t > 0 ? (double)p->done / t : 0, p->unit);
  else
    cli_fmt_bytes((uint64_t)rate, rb, sizeof rb);
  if (p->total) {
    double f = p->done >= p->total ? 1.0 : (double)p->done / (double)p->total;
    int w = 30, fill = (int)(f * w);
    char bar[31];
    for (int i = 0; i < w; i++)
      bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    double eta = f > 0 && !final ? t / f - t : 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %llu/%llu  %s/s  ETA %.0fs   ", p->label, bar, f * 100,
            (unsigned long long)p->done, (unsigned long long)p->total, rb, eta);
  } else {
    fprintf(stderr, "\r%s %llu  %s/s   ", p->label, (unsigned long long)p->done, rb);
  }
  if (final) fputc('\n', stderr);
  fflush(stderr);
}

void cli_progress_add(cli_progress *p, uint64_t units, uint64_t bytes) {
  p->done += units;
  p->bytes += bytes;
  if (!p->on) return;
  uint64_t now = kvs_now_ns();
  if (now - p->last_ns < 100000000ull) return; /* 10 redraws a second at most */
  p->last_ns = now;
  progress_draw(p, 0);
}

void cli_progress_end(cli_progress *p) {
  if (p->on) progress_draw(p, 1);
  p->on = 0;
}

void cli_default_model_path(char *out, size_t cap) {
  const char *e = getenv("KVS_MODEL_PATH");
  if (e && *e) {
    snprintf(out, cap, "%s", e);
    return;
  }
  const char *home = getenv("HOME");
  snprintf(out, cap, "%s/.cache/kvstash/models/SmolLM2-135M-Instruct.Q4_1.gguf",
           home ? home : "/root");
}
