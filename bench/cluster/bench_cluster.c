/* kvs-bench-cluster: a kvstash cluster (docs/cluster.md) through its
 * etcd:// URL.
 *
 *   kvs-bench-cluster [--quick] [--seconds S] [--clients C] [--size BYTES]
 *                     [--keys N] [--timeout MS] [--nodes 1,2,3] [--etcd PATH]
 *                     [--kvstashd PATH]
 *   kvs-bench-cluster --url etcd://HOST:2379/NAME [--tenant T --token K] ...
 *
 * Without --url it starts etcd and kvstashd nodes itself on loopback (temp
 * dirs, free ports) and, for each node count, measures PUT then GET req/s
 * and p99 of C caller threads sharing one cluster client (raw KV entries of
 * about BYTES: 1 layer, BYTES/8192 heads of 128, 16 tokens; R = 2, a put
 * is acknowledged by both owners); every GET's bytes are compared. Then,
 * with the largest count: the failover time (kill -9 of the preferred owner
 * of a key -> first successful get of that key: immediate when the client
 * saw the connection drop first, else bounded by the node's deadline, half of
 * --timeout, default 2000 ms) and the rebalance rate (a
 * node joins; kvs_cluster_rebalance copies what it now owns: MB/s). With
 * --url it measures PUT/GET against that running cluster only (nothing is
 * killed; the bench's keys are deleted at the end).
 * Prints a table and a last line of JSON. Every loop is bounded in time and
 * count; everything it started is stopped on exit. */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "kvstash.h"
#include "kvstash_cluster.h"
#include "bench_json.h"
#include "bench_version.h"

#ifndef KVS_BENCH_KVSTASHD
#define KVS_BENCH_KVSTASHD "kvstashd"
#endif
#define MAX_NODES 8
#define MAX_LAT   400000

static char g_dir[256];
static pid_t g_etcd, g_node[MAX_NODES];
static int g_etcd_port;
static char g_node_url[MAX_NODES][64];

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &l) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

static pid_t spawn(char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static void stop_pid(pid_t *p, int sig) {
  if (*p <= 0) return;
  kill(*p, sig);
  for (int i = 0; i < 100; i++) {
    if (waitpid(*p, NULL, WNOHANG) == *p) {
      *p = 0;
      return;
    }
    sleep_ms(50);
  }
  kill(*p, SIGKILL);
  waitpid(*p, NULL, 0);
  *p = 0;
}

static void cleanup(void) {
  for (int i = 0; i < MAX_NODES; i++)
    stop_pid(&g_node[i], SIGTERM);
  stop_pid(&g_etcd, SIGTERM);
  if (g_dir[0] && !strncmp(g_dir, "/tmp/kvs-bench-cluster-", 23)) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  }
}

static void on_signal(int sig) {
  (void)sig;
  exit(130); /* atexit cleanup */
}

static int start_etcd(const char *bin) {
  g_etcd_port = free_port();
  int peer = free_port();
  char data[300], client[64], peer_url[64], init[96], log[300];
  snprintf(data, sizeof data, "%s/etcd", g_dir);
  snprintf(client, sizeof client, "http://127.0.0.1:%d", g_etcd_port);
  snprintf(peer_url, sizeof peer_url, "http://127.0.0.1:%d", peer);
  snprintf(init, sizeof init, "b=http://127.0.0.1:%d", peer);
  snprintf(log, sizeof log, "%s/etcd.log", g_dir);
  char *argv[] = {(char *)bin, "--name",
                  "b",         "--data-dir",
                  data,        "--listen-client-urls",
                  client,      "--advertise-client-urls",
                  client,      "--listen-peer-urls",
                  peer_url,    "--initial-advertise-peer-urls",
                  peer_url,    "--initial-cluster",
                  init,        "--log-level",
                  "warn",      NULL};
  g_etcd = spawn(argv, log);
  return g_etcd > 0 ? 0 : -1;
}

static int start_node(const char *bin, int i) {
  int port = free_port(), http = free_port();
  char dd[300], listen[80], h[64], cl[128], id[32], log[300];
  snprintf(dd, sizeof dd, "--data_dir=%s/n%d", g_dir, i);
  snprintf(g_node_url[i], sizeof g_node_url[i], "tcp://127.0.0.1:%d", port);
  snprintf(listen, sizeof listen, "--listen=%s", g_node_url[i]);
  snprintf(h, sizeof h, "--http=127.0.0.1:%d", http);
  snprintf(cl, sizeof cl, "--cluster=etcd://127.0.0.1:%d/bench", g_etcd_port);
  snprintf(id, sizeof id, "--cluster_node_id=n%d", i);
  snprintf(log, sizeof log, "%s/n%d.log", g_dir, i);
  char *argv[] = {(char *)bin,   dd,  listen, h, cl, id, "--cluster_lease_ttl_s=3",
                  "--workers=4", NULL};
  g_node[i] = spawn(argv, log);
  return g_node[i] > 0 ? 0 : -1;
}

static int view_size(kvs_client *c) {
  kvs_cluster_node nodes[MAX_NODES];
  size_t n = 0;
  return kvs_cluster_nodes(c, nodes, MAX_NODES, &n) == KVS_OK ? (int)n : -1;
}

static int wait_view(kvs_client *c, int n, int ms) {
  for (int t = 0; t < ms; t += 20) {
    if (view_size(c) == n) return 0;
    sleep_ms(20);
  }
  return -1;
}

/* ----------------------------------------------------------- workload */
typedef struct wl {
  kvs_client *c;
  kvs_model_id model;
  kvs_layout lay;
  uint32_t T;
  int n_keys;
  int32_t *tok;  /* n_keys x T */
  kvs_chunk *ch; /* n_keys */
  uint16_t *kv;  /* one value, the same for every key (content differs by key: first bytes) */
  size_t bytes;
} wl;

typedef struct worker {
  wl *w;
  int put, id, n_threads;
  double end;
  double *lat;
  size_t n_lat;
  uint64_t ok, errs, wrong;
  unsigned long long seed;
} worker;

static void fill_kv(const wl *w, int k, uint16_t *out) {
  memcpy(out, w->kv, w->bytes);
  uint32_t v = (uint32_t)k * 2654435761u;
  memcpy(out, &v, sizeof v); /* each key's value differs */
}

static void *work_main(void *arg) {
  worker *t = arg;
  wl *w = t->w;
  uint16_t *buf = malloc(w->bytes), *want = malloc(w->bytes);
  int k = t->id;
  while (now_s() < t->end && t->n_lat < MAX_LAT) {
    if (t->put) {
      k = (k + t->n_threads) % w->n_keys;
    } else {
      t->seed = t->seed * 6364136223846793005ull + 1442695040888963407ull;
      k = (int)((t->seed >> 33) % (unsigned long long)w->n_keys);
    }
    double t0 = now_s();
    int rv;
    if (t->put) {
      fill_kv(w, k, buf);
      rv = kvs_put(w->c, &w->model, &w->tok[(size_t)k * w->T], &w->ch[k], &w->lay, buf, NULL);
    } else {
      rv = kvs_get(w->c, &w->model, &w->tok[(size_t)k * w->T], &w->ch[k], &w->lay, buf, w->bytes,
                   NULL);
    }
    t->lat[t->n_lat++] = now_s() - t0;
    if (rv != KVS_OK) {
      t->errs++;
      continue;
    }
    t->ok++;
    if (!t->put) {
      fill_kv(w, k, want);
      const uint8_t *a = (const uint8_t *)buf, *b = (const uint8_t *)want;
      for (size_t i = 0; i < w->bytes; i++)
        t->wrong += a[i] != b[i];
    }
  }
  free(buf);
  free(want);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct phase {
  double rps, p50_ms, p99_ms;
  uint64_t ok, errs, wrong;
} phase;

static phase run_phase(wl *w, int put, int clients, double seconds) {
  worker *t = calloc((size_t)clients, sizeof *t);
  pthread_t *th = calloc((size_t)clients, sizeof *th);
  double t0 = now_s(), end = t0 + seconds;
  for (int i = 0; i < clients; i++) {
    t[i] = (worker){.w = w,
                    .put = put,
                    .id = i,
                    .n_threads = clients,
                    .end = end,
                    .seed = 1234567ull + (unsigned long long)i};
    t[i].lat = malloc(MAX_LAT * sizeof(double));
    pthread_create(&th[i], NULL, work_main, &t[i]);
  }
  phase p = {0};
  size_t n = 0;
  for (int i = 0; i < clients; i++) {
    pthread_join(th[i], NULL);
    n += t[i].n_lat;
  }
  double el = now_s() - t0;
  double *all = malloc((n ? n : 1) * sizeof *all);
  n = 0;
  for (int i = 0; i < clients; i++) {
    memcpy(all + n, t[i].lat, t[i].n_lat * sizeof(double));
    n += t[i].n_lat;
    p.ok += t[i].ok;
    p.errs += t[i].errs;
    p.wrong += t[i].wrong;
    free(t[i].lat);
  }
  qsort(all, n, sizeof *all, cmp_d);
  p.rps = (double)p.ok / el;
  p.p50_ms = n ? all[n / 2] * 1e3 : 0;
  p.p99_ms = n ? all[(size_t)((double)(n - 1) * 0.99)] * 1e3 : 0;
  free(all);
  free(t);
  free(th);
  return p;
}

/* Cluster lookup (kvs_cluster_lookup) of 64 cached keys, one caller, for
 * about `seconds` (at most 20,000 calls): p50 / p99 in ms. */
static void lookup_lat(wl *w, double seconds, double *p50, double *p99, int *n_calls) {
  int nk = w->n_keys < 64 ? w->n_keys : 64;
  kvs_chunk *c = malloc((size_t)nk * sizeof *c);
  kvs_cluster_where *out = calloc((size_t)nk * 8, sizeof *out);
  double *lat = malloc(20000 * sizeof *lat);
  for (int k = 0; k < nk; k++) {
    c[k] = w->ch[k];
    c[k].start = (uint32_t)k * w->T; /* chunk k's tokens in the shared array */
  }
  int n = 0;
  double end = now_s() + seconds;
  while (n < 20000 && now_s() < end) {
    double t0 = now_s();
    if (kvs_cluster_lookup(w->c, &w->model, w->tok, (size_t)nk * w->T, c, (size_t)nk, out) !=
        KVS_OK)
      break;
    lat[n++] = now_s() - t0;
  }
  qsort(lat, (size_t)n, sizeof *lat, cmp_d);
  *p50 = n ? lat[n / 2] * 1e3 : -1;
  *p99 = n ? lat[(size_t)((double)(n - 1) * 0.99)] * 1e3 : -1;
  *n_calls = n;
  free(c);
  free(out);
  free(lat);
}

static int parse_list(const char *s, int *out, int cap) {
  int n = 0;
  char tmp[128];
  snprintf(tmp, sizeof tmp, "%s", s);
  for (char *sv = NULL, *p = strtok_r(tmp, ",", &sv); p && n < cap; p = strtok_r(NULL, ",", &sv))
    out[n++] = atoi(p);
  return n;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-cluster")) return 0;
  double seconds = 3;
  uint32_t timeout_ms = 2000;
  int clients = 4, n_keys = 256, nodes_list[MAX_NODES] = {1, 2, 3}, n_list = 3;
  size_t size = 64 << 10;
  const char *url = NULL, *tenant = "bench", *token = NULL, *kvd = KVS_BENCH_KVSTASHD;
  const char *etcd = "etcd";
  if (access("/usr/bin/etcd", X_OK) == 0) etcd = "/usr/bin/etcd";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--quick")) {
      seconds = 1;
      n_keys = 64;
    } else if (!strcmp(a, "--seconds") && v)
      seconds = atof(argv[++i]);
    else if (!strcmp(a, "--clients") && v)
      clients = atoi(argv[++i]);
    else if (!strcmp(a, "--size") && v)
      size = (size_t)strtoull(argv[++i], NULL, 10);
    else if (!strcmp(a, "--keys") && v)
      n_keys = atoi(argv[++i]);
    else if (!strcmp(a, "--timeout") && v)
      timeout_ms = (uint32_t)atoi(argv[++i]);
    else if (!strcmp(a, "--nodes") && v)
      n_list = parse_list(argv[++i], nodes_list, MAX_NODES - 1);
    else if (!strcmp(a, "--url") && v)
      url = argv[++i];
    else if (!strcmp(a, "--tenant") && v)
      tenant = argv[++i];
    else if (!strcmp(a, "--token") && v)
      token = argv[++i];
    else if (!strcmp(a, "--etcd") && v)
      etcd = argv[++i];
    else if (!strcmp(a, "--kvstashd") && v)
      kvd = argv[++i];
    else {
      fprintf(stderr,
              "usage: kvs-bench-cluster [--quick] [--seconds S] [--clients C] [--size B] "
              "[--keys N] [--timeout MS] [--nodes 1,2,3] [--etcd PATH] [--kvstashd PATH] | --url "
              "etcd://HOST:PORT/NAME [--tenant T] [--token K]\n");
      return 2;
    }
  }
  if (clients < 1 || clients > 256 || n_keys < 1 || n_keys > 100000 || size < 8192 ||
      seconds <= 0 || seconds > 600 || n_list < 1) {
    fprintf(stderr, "kvs-bench-cluster: bad option value\n");
    return 2;
  }
  for (int i = 0; i < n_list; i++)
    if (nodes_list[i] < 1 || nodes_list[i] > MAX_NODES - 1) {
      fprintf(stderr, "kvs-bench-cluster: --nodes between 1 and %d\n", MAX_NODES - 1);
      return 2;
    }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  char own_url[128];
  if (!url) {
    snprintf(g_dir, sizeof g_dir, "/tmp/kvs-bench-cluster-XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    atexit(cleanup);
    if (start_etcd(etcd)) return 1;
    snprintf(own_url, sizeof own_url, "etcd://127.0.0.1:%d/bench", g_etcd_port);
    url = own_url;
  }
  /* the workload */
  wl w = {.T = 16, .n_keys = n_keys};
  uint32_t heads = (uint32_t)(size / 8192);
  w.lay = (kvs_layout){.n_layers = 1,
                       .n_kv_heads = heads,
                       .head_dim = 128,
                       .dtype = KVS_DTYPE_F16,
                       .rope_type = KVS_ROPE_NORM,
                       .rope_dims = 128,
                       .rope_theta = 10000.0f,
                       .rope_freq_scale = 1.0f};
  w.bytes = kvs_layout_token_bytes(&w.lay) * w.T;
  w.model = kvs_hash128_buf("kvs-bench-cluster", 17);
  w.tok = malloc((size_t)n_keys * w.T * sizeof *w.tok);
  w.ch = malloc((size_t)n_keys * sizeof *w.ch);
  w.kv = malloc(w.bytes);
  unsigned long long s = 99;
  for (size_t i = 0; i < w.bytes / 2; i++) {
    s = s * 6364136223846793005ull + 1;
    w.kv[i] = (uint16_t)(0x3C00 ^ ((s >> 40) & 0x03FF)); /* finite f16 */
  }
  for (int k = 0; k < n_keys; k++) {
    for (uint32_t j = 0; j < w.T; j++)
      w.tok[(size_t)k * w.T + j] = (int32_t)((k * 131 + (int)j * 7) % 30000);
    kvs_span sp = {0, w.T};
    kvs_chunk_spans(&w.model, &w.tok[(size_t)k * w.T], w.T, &sp, 1, &w.ch[k]);
  }
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.tenant = tenant;
  o.token = token;
  o.flags = KVS_CLIENT_LAZY;
  o.request_timeout_ms = timeout_ms; /* a member (node) gets half of it */
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c) != KVS_OK) {
    fprintf(stderr, "cluster client: %s\n", kvs_client_errmsg(c));
    return 1;
  }
  w.c = c;
  printf("kvs-bench-cluster: %s, value %zu bytes, %d callers, %d keys, %.1f s per phase\n", url,
         w.bytes, clients, n_keys, seconds);
  printf("%6s %10s %9s %9s %10s %9s %9s %7s %6s %10s %10s\n", "nodes", "put/s", "put p50",
         "put p99", "get/s", "get p50", "get p99", "errors", "wrong", "lookup p50", "lookup p99");
  cJSON *rows = cJSON_CreateArray(); /* of the last line (bench_json.h) */
  int started = 0, own = g_etcd > 0, max_n = 0;
  uint64_t wrong_total = 0;
  for (int li = 0; li < (own ? n_list : 1); li++) {
    int n = own ? nodes_list[li] : view_size(c);
    if (own) {
      while (started < n)
        if (start_node(kvd, started++)) {
          cJSON_Delete(rows);
          return 1;
        }
      if (wait_view(c, n, 20000)) {
        fprintf(stderr, "the view did not reach %d nodes (logs in %s)\n", n, g_dir);
        cJSON_Delete(rows);
        return 1;
      }
    }
    if (n > max_n) max_n = n;
    phase pp = run_phase(&w, 1, clients, seconds);
    phase pg = run_phase(&w, 0, clients, seconds);
    wrong_total += pg.wrong;
    double lk50, lk99;
    int lkn;
    lookup_lat(&w, seconds, &lk50, &lk99, &lkn);
    printf("%6d %10.0f %7.2fms %7.2fms %10.0f %7.2fms %7.2fms %7llu %6llu %8.3fms %8.3fms\n", n,
           pp.rps, pp.p50_ms, pp.p99_ms, pg.rps, pg.p50_ms, pg.p99_ms,
           (unsigned long long)(pp.errs + pg.errs), (unsigned long long)pg.wrong, lk50, lk99);
    cJSON *row = cJSON_CreateObject();
    cJSON_AddNumberToObject(row, "nodes", n);
    bench_json_num(row, "put_per_s", "%.1f", pp.rps);
    bench_json_num(row, "put_p50_ms", "%.3f", pp.p50_ms);
    bench_json_num(row, "put_p99_ms", "%.3f", pp.p99_ms);
    bench_json_num(row, "get_per_s", "%.1f", pg.rps);
    bench_json_num(row, "get_p50_ms", "%.3f", pg.p50_ms);
    bench_json_num(row, "get_p99_ms", "%.3f", pg.p99_ms);
    cJSON_AddNumberToObject(row, "errors", (double)(pp.errs + pg.errs));
    bench_json_num(row, "lookup64_p50_ms", "%.3f", lk50);
    bench_json_num(row, "lookup64_p99_ms", "%.3f", lk99);
    cJSON_AddNumberToObject(row, "lookups", lkn);
    cJSON_AddItemToArray(rows, row);
  }
  double failover_ms = -1, reb_mb_s = -1, reb_s = 0;
  unsigned long long reb_copied = 0, reb_bytes = 0;
  uint32_t replicas = kvs_cluster_replicas(c);
  if (own && max_n >= 2) { /* failover: the preferred owner of key 0 dies */
    uint32_t r = replicas;
    kvs_cluster_where *wh = calloc(r ? r : 1, sizeof *wh);
    int victim = -1;
    if (kvs_cluster_lookup(c, &w.model, w.tok, w.T, &w.ch[0], 1, wh) == KVS_OK && wh[0].node[0])
      victim = atoi(wh[0].node + 1);
    free(wh);
    if (victim >= 0 && victim < started) {
      uint16_t *buf = malloc(w.bytes);
      kill(g_node[victim], SIGKILL);
      double t0 = now_s();
      waitpid(g_node[victim], NULL, 0);
      g_node[victim] = 0;
      for (int i = 0; i < 3000; i++) { /* at most 30 s */
        if (kvs_get(c, &w.model, w.tok, &w.ch[0], &w.lay, buf, w.bytes, NULL) == KVS_OK) {
          failover_ms = (now_s() - t0) * 1e3;
          break;
        }
        sleep_ms(10);
      }
      free(buf);
      printf("failover: kill -9 of n%d (preferred owner of a key) -> first get of it served "
             "after %.2f ms\n",
             victim, failover_ms);
      /* the dead node leaves the view when its lease runs out; then a new
       * node joins and the rebalance copies what it now owns */
      wait_view(c, started - 1, 20000);
      if (start_node(kvd, started) == 0 && wait_view(c, started, 20000) == 0) {
        started++;
        kvs_cluster_rebalance_stats st;
        if (kvs_cluster_rebalance(c, 0, &st) == KVS_OK) {
          reb_s = st.seconds;
          reb_copied = st.copied;
          reb_bytes = st.copied_bytes;
          reb_mb_s = st.seconds > 0 ? (double)st.copied_bytes / st.seconds / 1048576.0 : 0;
          printf("rebalance after a node died and one joined: %llu copies (%.1f MiB) in %.2f s = "
                 "%.1f MiB/s (%llu scanned, %llu dropped, %llu failed)\n",
                 reb_copied, (double)reb_bytes / 1048576.0, reb_s, reb_mb_s,
                 (unsigned long long)st.scanned, (unsigned long long)st.dropped,
                 (unsigned long long)st.failed);
        }
      }
    }
  }
  if (!own) /* leave an operator's cluster as found */
    for (int k = 0; k < n_keys; k++)
      kvs_delete(c, &w.ch[k].key);
  kvs_client_free(c);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "bench", "cluster");
  cJSON_AddStringToObject(j, "url", own ? "own" : url);
  cJSON_AddNumberToObject(j, "value_bytes", (double)w.bytes);
  cJSON_AddNumberToObject(j, "clients", clients);
  cJSON_AddNumberToObject(j, "keys", n_keys);
  bench_json_num(j, "seconds", "%.1f", seconds);
  cJSON_AddNumberToObject(j, "timeout_ms", timeout_ms);
  cJSON_AddNumberToObject(j, "replicas", replicas);
  cJSON_AddItemToObject(j, "rows", rows);
  cJSON_AddNumberToObject(j, "wrong_bytes", (double)wrong_total);
  bench_json_num(j, "failover_ms", "%.3f", failover_ms);
  cJSON_AddNumberToObject(j, "rebalance_copies", (double)reb_copied);
  cJSON_AddNumberToObject(j, "rebalance_bytes", (double)reb_bytes);
  bench_json_num(j, "rebalance_s", "%.3f", reb_s);
  bench_json_num(j, "rebalance_mib_per_s", "%.1f", reb_mb_s);
  bench_json_print(j);
  free(w.tok);
  free(w.ch);
  free(w.kv);
  return wrong_total ? 1 : 0;
}
