/* kvs-bench-put: how long kvstashd takes to acknowledge a large PUT, by
 * durability mode, in one run on this machine.
 *
 *   kvs-bench-put [--count N] [--sizes 14700000,32M] [--modes sync,async,ram]
 *                 [--rounds R]
 *
 * For each mode a fresh kvstashd (started by this program: ipc:// listener,
 * its own temp data dir, ram_bytes 4G) gets one warm-up PUT, then N serial
 * PUTs of each size (distinct keys, random bytes: nothing compresses), one
 * client, one request at a time over ipc://. A PUT's time is from the send
 * of its frame to its answer (the client's frame is built before the clock
 * starts). Printed per mode and size: ack ms (min, median, mean, max), the
 * sum, GB/s of acknowledged bytes, the daemon's own mean time per PUT (its
 * request histogram on /metrics: arrival of the whole request to the answer
 * queued; the rest of ack ms is the transfer), and how long the SIGTERM stop took (the
 * write-behind backlog written, the memtables flushed). `sync` fsyncs the WAL
 * before each answer, `async` writes RocksDB without fsync, `ram` answers once
 * the value is held in RAM and writes it behind (docs/kvstashd.md,
 * "Durability"). The load average is printed beside (a shared box).
 * KVS_BENCH_KVSTASHD=/path/to/kvstashd runs another build's daemon.
 * A table, then one line of JSON. Every loop is bounded. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_core.h"
#include "kvs_wire.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}
static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* a PUT frame of `n` random bytes for key number id */
static nng_msg *put_msg(uint64_t id, const uint8_t *value, size_t n) {
  int32_t tok[64];
  uint64_t s = id * 2654435761u + 1;
  for (int i = 0; i < 64; i++)
    tok[i] = (int32_t)(rnd(&s) % 49152);
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  m.model = kvs_hash128_buf("bench-put", 9);
  m.key = kvs_key_content(&m.model, tok, 64);
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = 64;
  kvs_layout l = {32, 8, 128, KVS_DTYPE_F16, KVS_ROPE_NEOX, 128, 500000.f, 1.f, 0, 0, 0, 0};
  m.layout = l;
  m.codec_profile = 1;
  uint64_t seg_end = n;
  m.n_segments = 1;
  m.value_bytes = n;
  m.checksum = kvs_checksum64(value, n);
  m.tokens_le = (const uint8_t *)tok;
  m.seg_end_le = (const uint8_t *)&seg_end;
  size_t ml = kvs_wire_meta_size(&m);
  uint8_t head[KVS_WIRE_HDR_SIZE + 4096];
  if (ml > 4096) return NULL;
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_PUT, id, "bench", NULL, 0);
  h.payload_len = (uint32_t)(ml + n);
  kvs_wire_hdr_encode(&h, head);
  kvs_wire_meta_encode(&m, head + KVS_WIRE_HDR_SIZE, ml, NULL);
  nng_msg *msg;
  if (nng_msg_alloc(&msg, 0) != 0) return NULL;
  if (nng_msg_reserve(msg, KVS_WIRE_HDR_SIZE + ml + n) != 0 ||
      nng_msg_append(msg, head, KVS_WIRE_HDR_SIZE + ml) != 0 ||
      nng_msg_append(msg, value, n) != 0) {
    nng_msg_free(msg);
    return NULL;
  }
  return msg;
}

static int call(nng_socket s, nng_msg *m) {
  if (nng_sendmsg(s, m, 0) != 0) {
    nng_msg_free(m);
    return -1;
  }
  nng_msg *a;
  if (nng_recvmsg(s, &a, 0) != 0) return -1;
  int32_t st = -1;
  if (nng_msg_len(a) >= 16) memcpy(&st, (uint8_t *)nng_msg_body(a) + 12, 4);
  nng_msg_free(a);
  return st;
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  int port = 0;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &al) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* The daemon's own time for PUTs so far (kvstash_request_seconds{op="PUT"}:
 * from the request's arrival to its answer queued): sum (s) and count. */
static int put_seconds(int port, double *sum, double *cnt) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  const char *q = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, q, strlen(q)) != (ssize_t)strlen(q)) {
    close(fd);
    return -1;
  }
  size_t cap = 1 << 20, n = 0;
  char *b = malloc(cap + 1);
  ssize_t r;
  while (b && n < cap && (r = read(fd, b + n, cap - n)) > 0)
    n += (size_t)r;
  close(fd);
  if (!b) return -1;
  b[n] = 0;
  const char *s = strstr(b, "kvstash_request_seconds_sum{op=\"PUT\"} ");
  const char *c = strstr(b, "kvstash_request_seconds_count{op=\"PUT\"} ");
  int ok = s && c;
  if (ok) {
    *sum = strtod(strchr(s, '}') + 2, NULL);
    *cnt = strtod(strchr(c, '}') + 2, NULL);
  }
  free(b);
  return ok ? 0 : -1;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static long parse_size(const char *t) {
  char *end;
  double v = strtod(t, &end);
  if (*end == 'K' || *end == 'k') v *= 1024;
  if (*end == 'M' || *end == 'm') v *= 1024 * 1024;
  return (long)v;
}

typedef struct row {
  char mode[8];
  long size;
  double min, med, mean, max, sum, gbs, stop_ms;
  double daemon_ms; /* the daemon's mean time per PUT (its request histogram) */
  int ok;
} row;

/* One daemon of `mode`: warm-up, then count PUTs of each size. */
static int run_mode(const char *mode, const long *sizes, int nsizes, int count, uint8_t *value,
                    row *rows, int *nrows, uint64_t *key_base) {
  char dir[] = "/tmp/kvs-bench-put-XXXXXX";
  if (!mkdtemp(dir)) return -1;
  char a_data[300], a_listen[320], a_dur[96], url[300], log[300], a_http[64];
  int hport = free_port();
  snprintf(a_http, sizeof a_http, "--http=127.0.0.1:%d", hport);
  snprintf(a_data, sizeof a_data, "--data_dir=%s/data", dir);
  snprintf(url, sizeof url, "ipc://%s/kvs.sock", dir);
  snprintf(a_listen, sizeof a_listen, "--listen=%s", url);
  snprintf(a_dur, sizeof a_dur, "--durability=%s", mode);
  snprintf(log, sizeof log, "%s/kvstashd.log", dir);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen(log, "a", stderr) || !freopen("/dev/null", "w", stdout)) _exit(126);
    const char *bin = getenv("KVS_BENCH_KVSTASHD"); /* another build's daemon, to compare */
    if (!bin || !*bin) bin = KVS_BENCH_KVSTASHD;
    execl(bin, bin, a_data, a_listen, a_http, a_dur, "--ram_bytes=4G", "--max_msg=64M",
          "--workers=4", "--log_level=warn", (char *)NULL);
    _exit(127);
  }
  nng_socket s;
  int up = 0;
  if (nng_req0_open(&s) != 0) return -1;
  nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 60000);
  nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 60000);
  nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);
  nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 600000);
  for (int i = 0; i < 100 && !up; i++) { /* up within 10 s */
    sleep_ms(100);
    up = nng_dial(s, url, NULL, 0) == 0;
  }
  int rc = up ? 0 : -1;
  if (up) {
    nng_msg *w = put_msg((*key_base)++, value, (size_t)sizes[0]); /* warm-up */
    if (!w || call(s, w) != 0) rc = -1;
  }
  double *t = calloc((size_t)count, sizeof *t);
  for (int z = 0; z < nsizes && rc == 0; z++) {
    double s0 = 0, c0 = 0, s1 = 0, c1 = 0;
    int have = 0;
    for (int k = 0; k < 20 && !have; k++) /* the control plane may start after the data plane */
      if (!(have = put_seconds(hport, &s0, &c0) == 0)) sleep_ms(50);
    for (int i = 0; i < count && rc == 0; i++) {
      uint64_t st = (*key_base)++;
      value[0] = (uint8_t)st; /* a new value each time */
      nng_msg *m = put_msg(st, value, (size_t)sizes[z]);
      double t0 = now_ms();
      if (!m || call(s, m) != 0) rc = -1;
      t[i] = now_ms() - t0;
    }
    if (rc != 0) break;
    row *r = &rows[(*nrows)++];
    memset(r, 0, sizeof *r);
    snprintf(r->mode, sizeof r->mode, "%.7s", mode);
    r->size = sizes[z];
    for (int i = 0; i < count; i++)
      r->sum += t[i];
    qsort(t, (size_t)count, sizeof *t, cmp_d);
    r->min = t[0];
    r->med = t[count / 2];
    r->max = t[count - 1];
    r->mean = r->sum / count;
    r->gbs = (double)sizes[z] * count / (r->sum * 1e-3) / 1e9;
    r->ok = 1;
    r->daemon_ms = -1;
    if (have && put_seconds(hport, &s1, &c1) == 0 && c1 > c0)
      r->daemon_ms = (s1 - s0) / (c1 - c0) * 1e3;
  }
  free(t);
  nng_close(s);
  double t0 = now_ms();
  kill(pid, SIGTERM);
  int st = 0, gone = 0;
  for (int i = 0; i < 1200 && !gone; i++) { /* 120 s */
    if (waitpid(pid, &st, WNOHANG) == pid)
      gone = 1;
    else
      sleep_ms(100 > i ? 5 : 100);
  }
  if (!gone) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    rc = -1;
  }
  double stop = now_ms() - t0;
  for (int i = *nrows - nsizes; i >= 0 && i < *nrows; i++)
    rows[i].stop_ms = stop;
  if (rc != 0) {
    fprintf(stderr, "kvs-bench-put: %s failed; daemon log:\n", mode);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "tail -20 %s >&2", log);
    if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
  }
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
  return rc;
}

int main(int argc, char **argv) {
  int count = 16, rounds = 1;
  const char *sizes_s = "14700000,32M", *modes_s = "sync,async,ram";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--count") && i + 1 < argc)
      count = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
      sizes_s = argv[++i];
    else if (!strcmp(argv[i], "--modes") && i + 1 < argc)
      modes_s = argv[++i];
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
      rounds = atoi(argv[++i]);
    else {
      fprintf(stderr,
              "usage: kvs-bench-put [--count N] [--sizes 14700000,32M] [--modes sync,async,ram] "
              "[--rounds R]\n");
      return 2;
    }
  }
  if (count < 1 || count > 1000 || rounds < 1 || rounds > 20) return 2;
  long sizes[8];
  int nsizes = 0;
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s", sizes_s);
  for (char *sv = NULL, *t = strtok_r(tmp, ",", &sv); t && nsizes < 8; t = strtok_r(NULL, ",", &sv))
    if ((sizes[nsizes] = parse_size(t)) > 0 && sizes[nsizes] <= (60l << 20)) nsizes++;
  char modes[8][8];
  int nmodes = 0;
  snprintf(tmp, sizeof tmp, "%s", modes_s);
  for (char *sv = NULL, *t = strtok_r(tmp, ",", &sv); t && nmodes < 8; t = strtok_r(NULL, ",", &sv))
    snprintf(modes[nmodes++], sizeof modes[0], "%s", t);
  if (!nsizes || !nmodes) return 2;
  long maxs = 0;
  for (int z = 0; z < nsizes; z++)
    maxs = sizes[z] > maxs ? sizes[z] : maxs;
  uint8_t *value = malloc((size_t)maxs);
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  for (long i = 0; i + 8 <= maxs; i += 8) {
    uint64_t r = rnd(&seed);
    memcpy(value + i, &r, 8);
  }
  double la0[3] = {0};
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &la0[0], &la0[1], &la0[2]) != 3) la0[0] = -1;
    fclose(f);
  }
  static row rows[64 * 20]; /* zeroed */
  int nrows = 0, fail = 0;
  uint64_t key_base = 1;
  for (int r = 0; r < rounds; r++)
    for (int m = 0; m < nmodes; m++)
      if (run_mode(modes[m], sizes, nsizes, count, value, rows, &nrows, &key_base) != 0) fail = 1;
  double la1 = -1;
  f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &la1) != 1) la1 = -1;
    fclose(f);
  }
  printf("kvs-bench-put: %d serial PUTs per size, one client, ipc://; load average %.2f at the "
         "start, %.2f at the end (%ld cores online)\n",
         count, la0[0], la1, sysconf(_SC_NPROCESSORS_ONLN));
  printf("%-6s %10s %8s %8s %8s %8s %9s %7s %10s %9s\n", "mode", "bytes", "min_ms", "med_ms",
         "mean_ms", "max_ms", "sum_ms", "GB/s", "daemon_ms", "stop_ms");
  for (int i = 0; i < nrows; i++)
    printf("%-6s %10ld %8.1f %8.1f %8.1f %8.1f %9.1f %7.2f %10.1f %9.0f\n", rows[i].mode,
           rows[i].size, rows[i].min, rows[i].med, rows[i].mean, rows[i].max, rows[i].sum,
           rows[i].gbs, rows[i].daemon_ms, rows[i].stop_ms);
  printf("{\"bench\":\"kvs-bench-put\",\"count\":%d,\"load\":[%.2f,%.2f],\"rows\":[", count, la0[0],
         la1);
  for (int i = 0; i < nrows; i++)
    printf("%s{\"mode\":\"%s\",\"bytes\":%ld,\"min_ms\":%.2f,\"med_ms\":%.2f,\"mean_ms\":%.2f,"
           "\"max_ms\":%.2f,\"sum_ms\":%.1f,\"gbs\":%.3f,\"daemon_ms\":%.2f,\"stop_ms\":%.0f}",
           i ? "," : "", rows[i].mode, rows[i].size, rows[i].min, rows[i].med, rows[i].mean,
           rows[i].max, rows[i].sum, rows[i].gbs, rows[i].daemon_ms, rows[i].stop_ms);
  printf("],\"ok\":%s}\n", fail ? "false" : "true");
  free(value);
  return fail;
}
