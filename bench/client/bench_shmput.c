/* kvs-bench-shmput - a put's time to its acknowledgement, through the
 * same-host shared-memory put (PUT_RESERVE, the encoder writes into the
 * range, PUT_COMMIT) vs the socket (one PUT frame over ipc://), same daemon,
 * same run, the two interleaved put by put. Chunks of the 8B shape (32
 * layers, 8 KV heads, head_dim 128, fp16) with --tokens tokens each; the raw
 * profile by default (an encode that is a reordering copy, so the figures
 * are the put path's own: 112 tokens = 14.7 MB, the size of one dense-encoded
 * 512-token chunk of issue 17's store), or --profile dense (CPU encoder).
 * Per put: start = kvs_put_start (encode, and for shm the PUT_RESERVE round
 * trip and the checksum), ack = from then until kvs_op_wait returns, total.
 * Prints medians, the load average, and a last line of JSON.
 *
 *   kvs-bench-shmput [--tokens 112] [--puts 16] [--profile raw|dense]
 *                    [--durability ram|async|sync] [--kvstashd PATH] */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_json.h"
#include "bench_version.h"
#include "kvstash.h"

#ifndef KVS_BENCH_KVSTASHD
#define KVS_BENCH_KVSTASHD ""
#endif

static double now_ms(void) { return (double)kvs_now_ns() / 1e6; }
static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static pid_t spawn(const char *bin, const char *ipc, const char *dir, const char *durability,
                   uint64_t ram) {
  char a1[400], a2[400], a3[64], a4[64], a5[64];
  snprintf(a1, sizeof a1, "--listen=%s", ipc);
  snprintf(a2, sizeof a2, "--data_dir=%s/data", dir);
  snprintf(a3, sizeof a3, "--ram_bytes=%llu", (unsigned long long)ram);
  snprintf(a4, sizeof a4, "--shm_bytes=%llu", (unsigned long long)ram);
  snprintf(a5, sizeof a5, "--durability=%s", durability);
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execl(bin, bin, a1, a2, a3, a4, a5, "--http=", "--shm=on", "--max_msg=1G", "--log_level=error",
          (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  return pid;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-shmput")) return 0;
  uint32_t T = 112;
  int puts = 16;
  const char *profile = "raw", *durability = "ram", *bin = KVS_BENCH_KVSTASHD;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--tokens") && v)
      T = (uint32_t)atoi(v), i++;
    else if (!strcmp(a, "--puts") && v)
      puts = atoi(v), i++;
    else if (!strcmp(a, "--profile") && v)
      profile = v, i++;
    else if (!strcmp(a, "--durability") && v)
      durability = v, i++;
    else if (!strcmp(a, "--kvstashd") && v)
      bin = v, i++;
    else {
      fprintf(stderr, "usage: kvs-bench-shmput [--tokens 112] [--puts 16] [--profile raw|dense]\n"
                      "                        [--durability ram|async|sync] [--kvstashd PATH]\n");
      return 2;
    }
  }
  int prof = kvs_profile_from_name(profile);
  if (prof < 0 || T < 1 || T > 8192 || puts < 1 || puts > 1000 || !bin[0]) {
    fprintf(stderr, "bad arguments (profile %s, kvstashd '%s')\n", profile, bin);
    return 2;
  }
  const kvs_layout lay = {.n_layers = 32,
                          .n_kv_heads = 8,
                          .head_dim = 128,
                          .dtype = KVS_DTYPE_F16,
                          .rope_type = KVS_ROPE_NORM,
                          .rope_dims = 128,
                          .rope_theta = 500000.0f,
                          .rope_freq_scale = 1.0f};
  size_t kv_bytes = kvs_layout_token_bytes(&lay) * T;
  uint16_t *kv = malloc(kv_bytes);
  const size_t n_tok = (size_t)T * 2 * (size_t)(puts + 1); /* a chunk per put, distinct keys */
  int32_t *tok = malloc(sizeof *tok * n_tok);
  if (!kv || !tok) return 1;
  unsigned long long s = 1;
  for (size_t i = 0; i < kv_bytes / 2; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    kv[i] = kvs_f32_to_f16(((float)(s >> 40) / (float)(1ull << 24) - 0.5f) * 4.0f);
  }
  for (size_t i = 0; i < n_tok; i++)
    tok[i] = (int32_t)(i % 100003);

  char dir[] = "/tmp/kvs-bench-shmput.XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char ipc[320];
  snprintf(ipc, sizeof ipc, "ipc://%s/s", dir);
  /* room for every put twice over (both paths keep their values in RAM) */
  uint64_t ram = (uint64_t)kv_bytes * 2 * (uint64_t)puts * 2 + (256u << 20);
  pid_t pid = spawn(bin, ipc, dir, durability, ram);
  kvs_client *c[2] = {NULL, NULL}; /* 0: shm put, 1: socket put */
  for (int k = 0; k < 2; k++) {
    kvs_client_opts o;
    kvs_client_opts_init(&o);
    o.url = ipc, o.tenant = "bench", o.connect_timeout_ms = 20000, o.request_timeout_ms = 60000;
    o.flags = KVS_CLIENT_SHM | KVS_CLIENT_NO_STREAM | (k ? KVS_CLIENT_NO_SHM_PUT : 0);
    if (kvs_client_create(&o, &c[k])) {
      fprintf(stderr, "connect %s: %s\n", ipc, kvs_client_errmsg(c[k]));
      return 1;
    }
  }
  kvs_model_id model = kvs_hash128_buf("bench-shmput", 12);
  double *st[2], *ack[2], *tot[2];
  for (int k = 0; k < 2; k++) {
    st[k] = calloc((size_t)puts, sizeof(double));
    ack[k] = calloc((size_t)puts, sizeof(double));
    tot[k] = calloc((size_t)puts, sizeof(double));
  }
  uint64_t vbytes = 0;
  int fail = 0;
  /* one untimed warm-up each (maps the segment, sizes buffers), then the
   * two paths alternate put by put */
  for (int i = -1; i < puts && !fail; i++)
    for (int k = 0; k < 2 && !fail; k++) {
      int slot = (i + 1) * 2 + k;
      kvs_span sp = {(uint32_t)slot * T, T};
      kvs_chunk ch;
      kvs_chunk_spans(&model, tok, n_tok, &sp, 1, &ch);
      kvs_put_opts po = {.profile = (uint32_t)prof, .layers_per_group = 4};
      kvs_op *op = NULL;
      double t0 = now_ms();
      int rv = kvs_put_start(c[k], &model, tok, &ch, &lay, kv, &po, &op);
      double t1 = now_ms();
      if (rv == KVS_OK) rv = kvs_op_wait(op);
      double t2 = now_ms();
      kvs_op_free(op);
      if (rv) {
        fprintf(stderr, "put (%s): %s\n", k ? "socket" : "shm", kvs_client_errmsg(c[k]));
        fail = 1;
      }
      if (i >= 0) st[k][i] = t1 - t0, ack[k][i] = t2 - t1, tot[k][i] = t2 - t0;
      if (!vbytes) {
        kvs_entry_info inf;
        if (kvs_exists(c[k], &model, &ch.key, &inf) == KVS_OK) vbytes = inf.value_bytes;
      }
    }
  kvs_client_counters kc[2];
  for (int k = 0; k < 2; k++)
    kvs_client_get_counters(c[k], &kc[k]);
  double la[3] = {0, 0, 0};
  if (getloadavg(la, 3) < 0) la[0] = la[1] = la[2] = -1;
  if (!fail) {
    printf("kvs-bench-shmput: %d puts per path (interleaved, 1 warm-up each), %u tokens of 8B "
           "shape (%.1f MB fp16), profile %s -> %.2f MB encoded, kvstashd durability=%s, ipc://; "
           "load average %.2f %.2f %.2f\n",
           puts, T, kv_bytes / 1e6, profile, vbytes / 1e6, durability, la[0], la[1], la[2]);
    printf("%-8s %10s %10s %10s %10s %10s  %s\n", "path", "start_ms", "ack_ms", "total_ms",
           "min_total", "GB/s enc", "counters");
    const char *nm[2] = {"shm", "socket"};
    for (int k = 0; k < 2; k++) {
      double ms = median(st[k], puts), ma = median(ack[k], puts), mt = median(tot[k], puts);
      printf("%-8s %10.2f %10.2f %10.2f %10.2f %10.2f  shm_puts %llu sock_puts %llu "
             "fallbacks %llu\n",
             nm[k], ms, ma, mt, tot[k][0], vbytes / (mt / 1e3) / 1e9,
             (unsigned long long)kc[k].shm_puts, (unsigned long long)kc[k].sock_puts,
             (unsigned long long)kc[k].shm_put_fallbacks);
    }
    if (kc[0].shm_puts != (uint64_t)puts + 1 || kc[1].sock_puts != (uint64_t)puts + 1) {
      fprintf(stderr, "a put took the other path (see counters)\n");
      fail = 1;
    }
    cJSON *js = cJSON_CreateObject();
    cJSON_AddStringToObject(js, "bench", "shmput");
    bench_json_num(js, "tokens", "%.0f", T);
    bench_json_num(js, "value_bytes", "%.0f", (double)vbytes);
    bench_json_num(js, "shm_start_ms", "%.3f", median(st[0], puts));
    bench_json_num(js, "shm_ack_ms", "%.3f", median(ack[0], puts));
    bench_json_num(js, "shm_total_ms", "%.3f", median(tot[0], puts));
    bench_json_num(js, "sock_start_ms", "%.3f", median(st[1], puts));
    bench_json_num(js, "sock_ack_ms", "%.3f", median(ack[1], puts));
    bench_json_num(js, "sock_total_ms", "%.3f", median(tot[1], puts));
    bench_json_num(js, "loadavg1", "%.2f", la[0]);
    cJSON_AddStringToObject(js, "profile", profile);
    cJSON_AddStringToObject(js, "durability", durability);
    bench_json_print(js);
  }
  for (int k = 0; k < 2; k++) {
    kvs_client_free(c[k]);
    free(st[k]), free(ack[k]), free(tot[k]);
  }
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  free(kv), free(tok);
  kvs_client_lib_fini();
  return fail;
}
