/* kvs-bench-client - the prefix-hit fetch: a context of N tokens, stored in
 * kvstashd as 256-token prefix chunks, is looked up and fetched + decoded
 * into host memory (or device memory with --gpu) through libkvstash, over
 * tcp:// and ipc:// loopback, over the byte-stream listener (tcp+stream://,
 * kvs_client_stream) and through the same-host shared-memory path
 * (LEASE, bytes decoded in place), per codec profile, and with a client made
 * with defaults only (kvs_client_opts_init, URL, tenant: the fastest path it
 * finds by itself - in place when shm is on, else the byte stream); the
 * tcp and ipc rows opt out of both (REQ/REP only); beside it, in the same
 * run, a plain memcpy of the same fp16 KV (the floor: the bytes are already in
 * this process) and, with --gpu, a copy of the raw fp16 KV from pinned RAM to
 * the device. One untimed warm-up per row. Prints a table and, last, one line
 * of JSON.
 *
 *   kvs-bench-client [--tokens 2048] [--chunk 256] [--layers 32] [--heads 8]
 *                    [--dim 128] [--iters 5] [--profiles raw,int8 (--gpu: int8,dense)]
 *                    (a profile may carry dense steps: dense:0.1/0.1 = K step / V step)
 *                    [--window 4 (group requests in flight per chunk)]
 *                    [--lpg 1 (layers per group)] [--no-shm]
 *                    [--kvstashd PATH | --url URL[,URL2]] [--gpu | --device]
 *
 * Without --url it starts kvstashd itself (RAM tier large enough to hold
 * everything, shm = on with a segment as large as the encoded values when
 * /dev/shm has the room, temp data dir) and stops it at the end. With --url
 * the shm row uses the second URL (or the first) and needs the daemon's shm
 * on; rows where a get fell back to the socket say so. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_gpu.h"
#include "kvstash.h"
#include "bench_json.h"
#include "bench_version.h"
#ifdef KVS_BENCH_HAVE_CODEC
#include "kvs_codec.h"
#endif

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

static pid_t spawn(const char *bin, const char *tcp, const char *stream, const char *ipc,
                   const char *dir, uint64_t ram, uint64_t max_msg, uint64_t shm_bytes) {
  char a1[300], a2[200], a3[300], a4[64], a5[64], a6[64];
  snprintf(a1, sizeof a1, "--listen=%s,%s", tcp, stream);
  snprintf(a2, sizeof a2, "--listen=%s", ipc);
  snprintf(a3, sizeof a3, "--data_dir=%s/data", dir);
  snprintf(a4, sizeof a4, "--ram_bytes=%llu", (unsigned long long)ram);
  snprintf(a5, sizeof a5, "--max_msg=%llu", (unsigned long long)max_msg);
  snprintf(a6, sizeof a6, "--shm_bytes=%llu", (unsigned long long)shm_bytes);
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (shm_bytes)
      execl(bin, bin, a1, a2, a3, a4, a5, "--http=", "--durability=async", "--shm=on", a6,
            (char *)NULL);
    else
      execl(bin, bin, a1, a2, a3, a4, a5, "--http=", "--durability=async", (char *)NULL);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  return pid;
}

/* shm: 1 = the shm row, 0 = REQ/REP (or a named stream) only, -1 = the
 * default client: nothing but the URL and the tenant set */
static kvs_client *connect_to(const char *url, int shm) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url;
  o.tenant = "bench";
  if (shm >= 0) {
    o.flags = (shm ? KVS_CLIENT_SHM : KVS_CLIENT_NO_SHM) | KVS_CLIENT_NO_STREAM;
    o.connect_timeout_ms = 10000;
    o.request_timeout_ms = 120000;
    o.n_sockets = 4;
  }
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c) || kvs_ping(c)) {
    fprintf(stderr, "cannot reach %s: %s\n", url, kvs_client_errmsg(c));
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-client")) return 0;
  /* the last line's JSON (bench_json.h), grown as rows come */
  cJSON *jf = cJSON_CreateObject();
  char key[160];
  uint32_t T = 2048, CT = 256, L = 32, H = 8, D = 128;
  int iters = 5, device = 0, window = 4, lpg = 1, use_shm = 1;
  const char *profiles = NULL, *bin = getenv("KVS_KVSTASHD"), *urls = NULL;
  if (!bin || !*bin) bin = KVS_BENCH_KVSTASHD;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--device") || !strcmp(a, "--gpu"))
      device = 1;
    else if (!strcmp(a, "--no-shm"))
      use_shm = 0;
    else if (v && !strcmp(a, "--tokens"))
      T = (uint32_t)atoi(v), i++;
    else if (v && !strcmp(a, "--chunk"))
      CT = (uint32_t)atoi(v), i++;
    else if (v && !strcmp(a, "--layers"))
      L = (uint32_t)atoi(v), i++;
    else if (v && !strcmp(a, "--heads"))
      H = (uint32_t)atoi(v), i++;
    else if (v && !strcmp(a, "--dim"))
      D = (uint32_t)atoi(v), i++;
    else if (v && !strcmp(a, "--iters"))
      iters = atoi(v), i++;
    else if (v && !strcmp(a, "--window"))
      window = atoi(v), i++;
    else if (v && !strcmp(a, "--lpg"))
      lpg = atoi(v), i++;
    else if (v && !strcmp(a, "--profiles"))
      profiles = v, i++;
    else if (v && !strcmp(a, "--kvstashd"))
      bin = v, i++;
    else if (v && !strcmp(a, "--url"))
      urls = v, i++;
    else {
      fprintf(stderr, "usage: see the comment at the top of bench/client/bench_client.c\n");
      return 2;
    }
  }
  if (iters < 1 || iters > 100 || !CT || T < CT) return 2;
  if (!profiles) profiles = device ? "int8,dense" : "raw,int8";
  if (device && kvs_gpu_device_count() < 1) {
    fprintf(stderr, "--device: no GPU device here\n");
    return 77;
  }
  const kvs_layout lay = {.n_layers = L,
                          .n_kv_heads = H,
                          .head_dim = D,
                          .dtype = KVS_DTYPE_F16,
                          .rope_type = KVS_ROPE_NORM,
                          .rope_dims = D,
                          .rope_theta = 500000.0f,
                          .rope_freq_scale = 1.0f};
  const size_t n_chunks = T / CT, chunk_bytes = kvs_layout_token_bytes(&lay) * CT;
  const size_t total = n_chunks * chunk_bytes;
  printf("kvs-bench-client: %u tokens (%zu chunks of %u) of L=%u H=%u D=%u f16 = %.1f MiB, "
         "%d iterations, median\n",
         (unsigned)(n_chunks * CT), n_chunks, CT, L, H, D, total / 1048576.0, iters);

  /* the KV: random f16 in [-4, 4) (random data is the worst case for a codec) */
  unsigned long long st = 0x9E3779B97F4A7C15ull;
  uint16_t *kv = malloc(total);
  uint8_t *dst = malloc(total);
  if (!kv || !dst) return 1;
  for (size_t i = 0; i < total / 2; i++) {
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    kv[i] = kvs_f32_to_f16((float)((int)(st >> 40) % 8192) / 1024.0f - 4.0f);
  }
  int32_t *tok = malloc(n_chunks * CT * sizeof *tok);
  for (size_t i = 0; i < n_chunks * CT; i++)
    tok[i] = (int32_t)((i * 2654435761u) % 49152);
  kvs_model_id model = kvs_hash128_buf("bench-client", 12);
  kvs_chunk *ch = malloc(n_chunks * sizeof *ch);
  size_t nc;
  kvs_chunk_prefix(&model, tok, n_chunks * CT, CT, 0, ch, n_chunks, &nc);

  /* baseline: memcpy of the same bytes, chunk by chunk, into a warm buffer */
  memcpy(dst, kv, total);
  double *t = malloc((size_t)iters * sizeof *t);
  for (int it = 0; it < iters; it++) {
    double t0 = now_ms();
    for (size_t c = 0; c < n_chunks; c++)
      memcpy(dst + c * chunk_bytes, (uint8_t *)kv + c * chunk_bytes, chunk_bytes);
    t[it] = now_ms() - t0;
  }
  double memcpy_ms = median(t, iters);
  printf("%-28s %9.2f ms %8.2f GB/s\n", "memcpy (host, baseline)", memcpy_ms,
         total / memcpy_ms / 1e6);
  /* --gpu: the raw fp16 KV copied to the device from pinned RAM (the copy a
   * cache in pinned host memory would cost) */
  double h2d_ms = -1;
  void *dev = NULL, *pinned = NULL;
  if (device) {
    if (kvs_gpu_alloc(&dev, total) || kvs_gpu_alloc_host(&pinned, total)) {
      fprintf(stderr, "cannot allocate %zu bytes on the device / pinned\n", total);
      return 1;
    }
    memcpy(pinned, kv, total);
    for (int it = -1; it < iters; it++) {
      double t0 = now_ms();
      kvs_gpu_copy_h2d(dev, pinned, total, NULL);
      kvs_gpu_sync(NULL);
      if (it >= 0) t[it] = now_ms() - t0;
    }
    h2d_ms = median(t, iters);
    printf("%-28s %9.2f ms %8.2f GB/s\n", "H2D pinned fp16 (baseline)", h2d_ms,
           total / h2d_ms / 1e6);
    kvs_gpu_free_host(pinned);
    /* the same copy from a registered mapping of a /dev/shm file: what the
     * shared-memory path DMAs from (kvstashd's segment is such a file) */
    char shp[64];
    snprintf(shp, sizeof shp, "/dev/shm/kvs-bench-h2d.%d", (int)getpid());
    int fd = open(shp, O_RDWR | O_CREAT | O_EXCL, 0600);
    void *map = MAP_FAILED;
    if (fd >= 0 && ftruncate(fd, (off_t)total) == 0)
      map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd >= 0) {
      close(fd);
      unlink(shp);
    }
    if (map != MAP_FAILED) {
      memcpy(map, kv, total);
      if (kvs_gpu_host_register(map, total, 1) == KVS_OK) {
        for (int it = -1; it < iters; it++) {
          double t0 = now_ms();
          kvs_gpu_copy_h2d(dev, map, total, NULL);
          kvs_gpu_sync(NULL);
          if (it >= 0) t[it] = now_ms() - t0;
        }
        double ms = median(t, iters);
        char thp[64] = "?";
        FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
        if (f) {
          if (!fgets(thp, sizeof thp, f)) snprintf(thp, sizeof thp, "?");
          fclose(f);
          thp[strcspn(thp, "\n")] = 0;
        }
        printf("%-28s %9.2f ms %8.2f GB/s  (shmem THP: %s)\n", "H2D registered /dev/shm", ms,
               total / ms / 1e6, thp);
        kvs_gpu_host_unregister(map);
      }
      munmap(map, total);
    }
  }

  /* the server */
  char dir[64] = "", tcp[64], ipc[128], stream[80] = "";
  pid_t pid = -1;
  if (!urls) {
    if (!bin || access(bin, X_OK)) {
      fprintf(stderr, "kvstashd not found (--kvstashd PATH or $KVS_KVSTASHD)\n");
      return 77;
    }
    snprintf(dir, sizeof dir, "/tmp/kvs-bench-client.XXXXXX");
    if (!mkdtemp(dir)) return 1;
    srand((unsigned)getpid());
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", 20000 + rand() % 20000);
    snprintf(ipc, sizeof ipc, "ipc://%s/kvstashd.sock", dir);
    snprintf(stream, sizeof stream, "tcp+stream://127.0.0.1:%d", 20000 + rand() % 20000);
    /* the segment holds every profile's values (raw is the largest): room
     * for twice the raw bytes, when /dev/shm has it */
    uint64_t shm_bytes = use_shm ? (uint64_t)total * 2 + (64u << 20) : 0;
    struct statvfs sv;
    if (shm_bytes && (statvfs("/dev/shm", &sv) != 0 ||
                      (uint64_t)sv.f_bavail * sv.f_frsize < shm_bytes + (256u << 20))) {
      fprintf(stderr, "/dev/shm has less than %.1f GiB free: no shm rows\n",
              (shm_bytes + (256u << 20)) / 1073741824.0);
      shm_bytes = 0;
    }
    use_shm = shm_bytes != 0;
    pid = spawn(bin, tcp, stream, ipc, dir, (uint64_t)total * 4 + (64u << 20),
                chunk_bytes + (8u << 20), shm_bytes);
  } else {
    snprintf(tcp, sizeof tcp, "%s", urls);
    char *comma = strchr(tcp, ',');
    if (comma)
      *comma = 0, snprintf(ipc, sizeof ipc, "%s", strchr(urls, ',') + 1);
    else
      ipc[0] = 0;
  }
  /* stream: GETs over the byte-stream listener (kvs_client_stream), the
   * rest of the calls over tcp:// (only when this bench started kvstashd) */
  const char *url_v[5] = {tcp, ipc, ipc[0] ? ipc : tcp, stream, tcp};
  const char *url_name[5] = {"tcp", "ipc", "shm", "stream", "default"};
  kvs_client *cl[5] = {connect_to(tcp, 0), ipc[0] ? connect_to(ipc, 0) : NULL,
                       use_shm ? connect_to(url_v[2], 1) : NULL,
                       stream[0] ? connect_to(tcp, 0) : NULL, connect_to(tcp, -1)};
  if (cl[3] && kvs_client_stream(cl[3], stream) != KVS_OK) {
    fprintf(stderr, "stream %s: %s\n", stream, kvs_client_errmsg(cl[3]));
    kvs_client_free(cl[3]);
    cl[3] = NULL;
  }
  int rc = cl[0] ? 0 : 1;

  cJSON_AddStringToObject(jf, "bench", "client");
  cJSON_AddNumberToObject(jf, "tokens", (double)(n_chunks * CT));
  cJSON_AddNumberToObject(jf, "chunk", CT);
  cJSON_AddNumberToObject(jf, "layers", L);
  cJSON_AddNumberToObject(jf, "heads", H);
  cJSON_AddNumberToObject(jf, "dim", D);
  cJSON_AddNumberToObject(jf, "bytes", (double)total);
  cJSON_AddNumberToObject(jf, "iters", iters);
  cJSON_AddNumberToObject(jf, "device", device);
  cJSON_AddNumberToObject(jf, "window", window);
  cJSON_AddNumberToObject(jf, "lpg", lpg);
  bench_json_num(jf, "memcpy_ms", "%.3f", memcpy_ms);
  bench_json_num(jf, "h2d_pinned_ms", "%.3f", h2d_ms);
  void **outs = malloc(n_chunks * sizeof *outs);
  uint64_t *caps = malloc(n_chunks * sizeof *caps);
  uint8_t *status = malloc(n_chunks);
  char prof[256];
  snprintf(prof, sizeof prof, "%s", profiles);
  for (char *save = NULL, *p = strtok_r(prof, ",", &save); p && !rc;
       p = strtok_r(NULL, ",", &save)) {
    char pname[64];
    snprintf(pname, sizeof pname, "%s", p);
    char *steps = strchr(pname, ':');
    if (steps) *steps++ = 0;
    int id = kvs_profile_from_name(pname);
#ifdef KVS_BENCH_HAVE_CODEC
    kvs_codec_params cp;
    int have_cp = 0;
    if (id > 0 && steps) {
      float ks = 0, vs = 0;
      if (sscanf(steps, "%f/%f", &ks, &vs) != 2 || ks <= 0 || vs <= 0 ||
          kvs_codec_params_default(id, L, &cp) != KVS_OK) {
        fprintf(stderr, "profile %s: steps are K/V, e.g. dense:0.1/0.1\n", p);
        rc = 2;
        break;
      }
      cp.k_step = ks, cp.v_step = vs, have_cp = 1;
    }
#else
    if (steps) id = -1;
#endif
    if (id < 0) {
      fprintf(stderr, "profile %s unknown or codec not built in: skipped\n", p);
      continue;
    }
    /* a fresh model id per profile, so that keys differ */
    kvs_model_id pm = kvs_hash128_buf(p, strlen(p));
    kvs_chunk_prefix(&pm, tok, n_chunks * CT, CT, 0, ch, n_chunks, &nc);
    const void **kvp = malloc(n_chunks * sizeof *kvp);
    for (size_t c = 0; c < n_chunks; c++)
      kvp[c] = (uint8_t *)kv + c * chunk_bytes;
    kvs_put_opts po = {.profile = (uint32_t)id, .layers_per_group = (uint32_t)lpg};
#ifdef KVS_BENCH_HAVE_CODEC
    if (have_cp) po.codec = &cp;
#endif
    double t0 = now_ms();
    int rv = kvs_put_batch(cl[0], &pm, tok, ch, n_chunks, &lay, kvp, &po, NULL);
    double put_ms = now_ms() - t0;
    free(kvp);
    if (rv) {
      fprintf(stderr, "put (%s): %s\n", p, kvs_client_errmsg(cl[0]));
      rc = 1;
      break;
    }
    uint64_t stored = 0;
    for (size_t c = 0; c < n_chunks; c++) {
      kvs_entry_info ei;
      if (kvs_exists(cl[0], &pm, &ch[c].key, &ei) == KVS_OK && ei.present) stored += ei.value_bytes;
    }
    double bpe = stored * 8.0 / (total / 2.0);
    printf("%-28s %9.2f ms (encode + store, not the measured path), %.2f bits/elem stored\n", p,
           put_ms, bpe);
    snprintf(key, sizeof key, "%s_bits_per_elem", p);
    bench_json_num(jf, key, "%.3f", bpe);
    for (int u = 0; u < 5 && !rc; u++) {
      if (!cl[u]) continue;
      double err = 0;
      kvs_client_counters k0, k1;
      kvs_client_get_counters(cl[u], &k0);
      for (int it = -1; it < iters && !rc; it++) { /* -1: warm-up, untimed */
        memset(dst, 0, total);
        for (size_t c = 0; c < n_chunks; c++)
          outs[c] = (device ? (uint8_t *)dev : dst) + c * chunk_bytes, caps[c] = chunk_bytes;
        kvs_get_opts go = {.window = (uint32_t)window, .flags = device ? KVS_GET_DEVICE : 0};
        size_t np = 0;
        t0 = now_ms();
        rv = kvs_lookup(cl[u], &pm, tok, n_chunks * CT, ch, n_chunks, KVS_LOOKUP_PREFIX, status,
                        &np);
        if (!rv && np != n_chunks) rv = KVS_ENOENT;
        if (!rv) rv = kvs_get_batch(cl[u], &pm, tok, ch, n_chunks, &lay, outs, caps, &go, NULL);
        if (it >= 0) t[it] = now_ms() - t0;
        if (rv) {
          fprintf(stderr, "get (%s, %s): %s\n", p, url_v[u], kvs_client_errmsg(cl[u]));
          rc = 1;
        }
      }
      if (rc) break;
      if (device) kvs_gpu_copy_d2h(dst, dev, total, NULL);
      /* check what came back: exact for raw/lossless, a relative error otherwise */
      double num = 0, den = 0;
      for (size_t i = 0; i < total / 2; i += 7) {
        double a = kvs_f16_to_f32(((uint16_t *)(void *)dst)[i]), b = kvs_f16_to_f32(kv[i]);
        num += (a - b) * (a - b), den += b * b;
      }
      err = den > 0 ? num / den : 0;
      double ms = median(t, iters);
      kvs_client_get_counters(cl[u], &k1);
      uint64_t in_place = k1.shm_gets - k0.shm_gets, fell = k1.shm_fallbacks - k0.shm_fallbacks;
      char name[64], note[96] = "";
      snprintf(name, sizeof name, "%s %s fetch+decode", url_name[u], p);
      if (u == 2)
        snprintf(note, sizeof note, "  in place %llu/%llu gets%s", (unsigned long long)in_place,
                 (unsigned long long)(n_chunks * (size_t)(iters + 1)),
                 fell ? " (SOME FELL BACK TO THE SOCKET)" : "");
      uint64_t sg = k1.stream_gets - k0.stream_gets, sf = k1.stream_fallbacks - k0.stream_fallbacks;
      if (u == 3)
        snprintf(note, sizeof note, "  %llu group GETs by stream%s", (unsigned long long)sg,
                 sf ? " (SOME WENT BY REQ/REP)" : "");
      if (u == 4)
        snprintf(note, sizeof note, "  %llu/%llu gets in place, %llu requests by stream",
                 (unsigned long long)in_place, (unsigned long long)(n_chunks * (size_t)(iters + 1)),
                 (unsigned long long)sg);
      printf("%-28s %9.2f ms %8.2f GB/s  %5.2fx memcpy  rel.err %.2e%s\n", name, ms,
             total / ms / 1e6, ms / memcpy_ms, err, note);
      snprintf(key, sizeof key, "%s_%s_ms", url_name[u], p);
      bench_json_num(jf, key, "%.3f", ms);
      snprintf(key, sizeof key, "%s_%s_vs_memcpy", url_name[u], p);
      bench_json_num(jf, key, "%.2f", ms / memcpy_ms);
      snprintf(key, sizeof key, "%s_%s_relerr", url_name[u], p);
      bench_json_num(jf, key, "%.3g", err);
      const char *pre = u == 2 ? "shm" : u == 3 ? "stream" : "default";
      const char *k1n = u == 2 ? "in_place" : u == 3 ? "gets" : "in_place";
      const char *k2n = u == 2 ? "fallbacks" : u == 3 ? "fallbacks" : "stream_gets";
      uint64_t v1 = u == 3 ? sg : in_place, v2 = u == 2 ? fell : u == 3 ? sf : sg;
      if (u >= 2) {
        snprintf(key, sizeof key, "%s_%s_%s", pre, p, k1n);
        cJSON_AddNumberToObject(jf, key, (double)v1);
        snprintf(key, sizeof key, "%s_%s_%s", pre, p, k2n);
        cJSON_AddNumberToObject(jf, key, (double)v2);
      }
    }
  }
  if (bench_json_print(jf)) rc = 1;
  for (int u = 0; u < 5; u++)
    kvs_client_free(cl[u]);
  kvs_client_lib_fini();
  if (pid > 0) {
    kill(pid, SIGTERM);
    int ws;
    waitpid(pid, &ws, 0);
  }
  if (dir[0]) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  }
  kvs_gpu_free(dev);
  free(outs), free(caps), free(status), free(t), free(ch), free(tok), free(kv), free(dst);
  return rc;
}
