/* kvs-bench-blend - fidelity and time to first token of RAG chunk reuse.
 *
 * For each MuSiQue item: instruction prefix + passages as content chunks +
 * the question, greedy answer with SmolLM2. Each passage's KV is computed
 * alone from position 0 (what kvstash stores), optionally passed through a
 * codec profile, then reused by each strategy through kvs_blend_run. Against
 * the full prefill of the same prompt, in the same run:
 *   answer agreement (same first 16 tokens, or the same normalized answer),
 *   answers equal after SQuAD normalisation alone (answer_equal),
 *   F1 against the gold answers, KL(full || reuse) at the first answer token,
 *   share of reused tokens recomputed, time to first token;
 *   teacher-forced over the question and answer positions (the full
 *   prefill's answer fed to both): mean KL(full || reuse) and top-1 agreement
 *   at positions whose full-prefill top-2 margin exceeds --margin (default
 *   1.0 logit; the positions below it are counted as dropped).
 * "none" (no recompute) is the floor; "full" (every reused token recomputed
 * through the same pipeline) is the noise floor: what numerics alone move.
 * Tune on items 0-99 only; 100-149 are held out for acceptance figures.
 * Last line: JSON. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_codec.h"
#include "kvs_gpu.h"
#include "kvs_gpu_codec.h"
#include "kvs_engines.h"
#include "kvs_gpu_model.h"
#include "model_int.h" /* kvs__model_weights_get */
#include "kvs_rag.h"
#include "bench_json.h"
#include "bench_version.h"
#include "kvs_reuse.h"
#include "kvstash.h"

extern char **environ;

/* --kvd-strategy: the blend strategy of the kvstashd rows other than "none"
 * (default adaptive); its parameter: epic tokens per chunk start (cacheblend
 * and adaptive take theirs from the row's ratio) */
static int g_kvd_strat = KVS_SEL_ADAPTIVE;
static float g_kvd_epic = -1;

static int kvd_strategy(const char *arg, float *ratio) {
  char kb[64];
  snprintf(kb, sizeof kb, "%s", arg);
  char *colon = strchr(kb, ':');
  if (colon) *colon = 0;
  if ((g_kvd_strat = kvs_sel_parse(kb)) < 0) return -1;
  if (colon && g_kvd_strat == KVS_SEL_EPIC) g_kvd_epic = (float)atof(colon + 1);
  if (colon && g_kvd_strat != KVS_SEL_EPIC) *ratio = (float)atof(colon + 1);
  return 0;
}

typedef struct mem_kv {
  void *kv[KVS_RAG_MAX_PASSAGES + 2];
  const kvs_rag_prompt *p;
  size_t tok_plane_bytes;
  void *stream;                     /* load_mem_dev: the loader's copy stream */
  int fd[KVS_RAG_MAX_PASSAGES + 2]; /* load_disk_dev: one file per chunk */
  void *bounce;                     /* load_disk_dev: pinned buffer of one layer's K and V */
} mem_kv;

static kvs_err load_mem(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  mem_kv *m = ctx;
  size_t plane = m->tok_plane_bytes * m->p->len[seg];
  memcpy(k, (char *)m->kv[seg] + 2 * layer * plane, plane);
  memcpy(v, (char *)m->kv[seg] + (2 * layer + 1) * plane, plane);
  return KVS_OK;
}

/* Straight into device memory (kvs_blend_opts.load_device): one DMA per
 * plane from the pinned RAM tier on the loader's own stream, no host copy. */
static kvs_err load_mem_dev(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  mem_kv *m = ctx;
  size_t plane = m->tok_plane_bytes * m->p->len[seg];
  KVS_TRY(kvs_gpu_copy_h2d(k, (char *)m->kv[seg] + 2 * layer * plane, plane, m->stream));
  KVS_TRY(kvs_gpu_copy_h2d(v, (char *)m->kv[seg] + (2 * layer + 1) * plane, plane, m->stream));
  return kvs_gpu_sync(m->stream);
}

/* From the disk tier into device memory: one read of the layer's K and V
 * planes (they lie back to back in the chunk's file) into a pinned buffer,
 * then one DMA each. The files were written, synced and dropped from the
 * page cache (posix_fadvise DONTNEED), so the reads go to the device. */
static kvs_err load_disk_dev(void *ctx, uint32_t seg, uint32_t layer, void *k, void *v) {
  mem_kv *m = ctx;
  size_t plane = m->tok_plane_bytes * m->p->len[seg], got = 0;
  off_t off = (off_t)(2 * layer * plane);
  while (got < 2 * plane) {
    ssize_t r = pread(m->fd[seg], (char *)m->bounce + got, 2 * plane - got, off + (off_t)got);
    if (r <= 0) return KVS_EIO;
    got += (size_t)r;
  }
  KVS_TRY(kvs_gpu_copy_h2d(k, m->bounce, plane, m->stream));
  KVS_TRY(kvs_gpu_copy_h2d(v, (char *)m->bounce + plane, plane, m->stream));
  return kvs_gpu_sync(m->stream);
}

/* Writes each cached chunk's KV to DIR/chunkN, syncs it and drops it from the
 * page cache; opens it for load_disk_dev. */
static int disk_tier(mem_kv *mk, const kvs_rag_prompt *p, size_t tb, const char *dir) {
  size_t maxb = 0;
  for (uint32_t s = 0; s + 1 < p->n_segs; s++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/kvs-blend-chunk%u", dir, s);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return fprintf(stderr, "disk tier: cannot create %s\n", path), -1;
    unlink(path); /* gone when closed */
    size_t n = tb * p->len[s], done = 0;
    while (done < n) {
      ssize_t w = write(fd, (char *)mk->kv[s] + done, n - done);
      if (w <= 0) return fprintf(stderr, "disk tier: write failed\n"), -1;
      done += (size_t)w;
    }
    if (fsync(fd) != 0) return fprintf(stderr, "disk tier: fsync failed\n"), -1;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    mk->fd[s] = fd;
    size_t layer = 2 * mk->tok_plane_bytes * p->len[s];
    if (layer > maxb) maxb = layer;
  }
  kvs_gpu_alloc_host(&mk->bounce, maxb);
  return mk->bounce ? 0 : -1;
}

/* PyTorch SDPA prefill of the same 8B shape and length, same run (the
 * model bench's script); -1 when torch is not importable. */
static double torch_ms(uint32_t n) {
  char cmd[4400];
  const char *src = getenv("KVS_SOURCE_DIR"); /* tools/gpu run sets it */
  snprintf(cmd, sizeof cmd,
           "python3 %s/bench/model/torch_prefill.py --shape 8b --tokens %u 2>/dev/null",
           src ? src : ".", n);
  FILE *f = popen(cmd, "r");
  double ms = -1;
  char line[512];
  while (f && fgets(line, sizeof line, f)) {
    const char *q = strstr(line, "\"ms\":");
    if (q) ms = atof(q + 5);
  }
  if (f) pclose(f);
  return ms;
}

/* The same model on the GPU (fp16 weights, device KV and hidden states). */
static kvs_err gpu_engine(kvs_model *m, uint32_t max_tokens, kvs_gpu_model **gm, kvs_engine **e) {
  kvs__model_weights w;
  kvs__model_weights_get(m, &w);
  KVS_TRY(kvs_gpu_model_create(&w, max_tokens, gm));
  return kvs_gpu_model_engine(*gm, kvs_model_get_id(m), e);
}

/* ---- rows through kvstashd (kvs_reuse_run) */
typedef struct kvd {
  pid_t pid;
  char dir[64], ipc[160], ipcs[160], tcp[64], tcps[64];
} kvd;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t n = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &n) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* A kvstashd on a temporary dir: ipc:// (shared memory on), ipc+stream://,
 * tcp:// and tcp+stream:// on loopback; ram = the RAM tier's budget;
 * durability "sync" (the daemon's default) or "async". */
static int kvd_start(kvd *d, const char *bin, const char *ram, const char *durability) {
  memset(d, 0, sizeof *d);
  snprintf(d->dir, sizeof d->dir, "/tmp/kvs-bench-blend.XXXXXX");
  if (!mkdtemp(d->dir)) return -1;
  snprintf(d->ipc, sizeof d->ipc, "ipc://%s/s", d->dir);
  snprintf(d->ipcs, sizeof d->ipcs, "ipc+stream://%s/ss", d->dir);
  snprintf(d->tcp, sizeof d->tcp, "tcp://127.0.0.1:%d", free_port());
  snprintf(d->tcps, sizeof d->tcps, "tcp+stream://127.0.0.1:%d", free_port());
  char a1[128], a2[700], a3[64], a4[64];
  snprintf(a1, sizeof a1, "--data-dir=%s/db", d->dir);
  snprintf(a2, sizeof a2, "--listen=%s,%s,%s,%s", d->ipc, d->ipcs, d->tcp, d->tcps);
  snprintf(a3, sizeof a3, "--ram-bytes=%s", ram);
  snprintf(a4, sizeof a4, "--durability=%s", durability);
  char *argv[] = {(char *)bin,         a1,  a2, a3, a4, "--http=", "--shm=on", "--max-msg=1G",
                  "--log-level=error", NULL};
  return posix_spawn(&d->pid, bin, NULL, NULL, argv, environ) == 0 ? 0 : -1;
}

static void kvd_stop(kvd *d) {
  if (d->pid <= 0) return;
  kill(d->pid, SIGTERM);
  waitpid(d->pid, NULL, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d->dir);
  d->pid = 0;
}

/* A client: url, flags (KVS_CLIENT_*), and a byte-stream listener (or NULL) */
static kvs_client *kvd_client(const char *url, uint32_t flags, const char *stream,
                              const char *tenant) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = url, o.flags = flags, o.tenant = tenant, o.connect_timeout_ms = 20000;
  o.request_timeout_ms = 60000;
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c)) return NULL;
  if (stream && kvs_client_stream(c, stream)) fprintf(stderr, "stream %s: not taken\n", stream);
  return c;
}

/* ---- store rows: every chunk of p (dkv[i]: chunk i's KV in engine memory)
 * stored with the dense profile through reuse/'s store queue, broken down by
 * stage with reuse/'s store counters and the GPU encoder's timers. */
typedef struct store_fig {
  double wall_s;                /* queued until every put was answered; < 0 failed */
  kvs_reuse_counters ct;        /* this store's share of the counters */
  kvs_gpu_codec_enc_timing enc; /* this store's share of the GPU encoder's timers */
} store_fig;

/* --store-only (with --speed8b --kvstashd): the full prefill and the store
 * rows, nothing else (a short GPU call) */
static int g_store_only;

typedef struct store_rows {
  int cpu_path, concurrent;            /* in: the CPU-encode path / the concurrent-request rows */
  uint64_t kv_bytes;                   /* out: fp16 bytes of one store of every chunk */
  store_fig serial, piped, cpu, async; /* async: a daemon with durability = async */
  /* a daemon with durability = ram (acknowledged once in RAM, written
   * behind): shared-memory puts (the client's default on this host) and the
   * same through the socket ($KVS_CLIENT_SHM_PUT=0) */
  store_fig ram, ram_sock;
  /* a request alone vs while a store of every chunk drains (medians, ms) */
  double ttft_alone_ms, ttft_store_ms, full_alone_ms, full_store_ms, drain_ms;
} store_rows;

static kvs_reuse *store_ctx(kvs_engine *e, kvs_client *c, const kvs_rag_prompt *p,
                            uint32_t inflight) {
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.store_profile = KVS_PROFILE_DENSE, o.store_queue = 64, o.layers_per_group = 4;
  o.store_inflight = inflight;
  o.prefix_chunk_tokens = p->len[0];
  kvs_reuse *r = NULL;
  return kvs_reuse_create(c, e, &o, &r) ? NULL : r;
}

/* Queues every chunk (not waiting); *before gets the figures before. */
static int store_begin(kvs_reuse *r, const kvs_rag_prompt *p, void *const *dkv, store_fig *before) {
  kvs_reuse_segment segs[KVS_RAG_MAX_PASSAGES + 2];
  kvs_reuse_request req;
  if (kvs_rag_request(p, segs, &req)) return -1;
  kvs_reuse_get_counters(r, &before->ct);
  kvs_gpu_codec_encode_timing(&before->enc);
  before->wall_s = kvs_now_ns() / 1e9;
  for (uint32_t i = 0; i + 1 < p->n_segs; i++)
    if (kvs_reuse_store(r, &req, i, dkv[i], 0)) fprintf(stderr, "store %u refused\n", i);
  return 0;
}

/* Waits for the stores queued since *b; f = the differences. */
static void store_end(kvs_reuse *r, const kvs_rag_prompt *p, const store_fig *b, store_fig *f) {
  kvs_reuse_flush(r);
  f->wall_s = kvs_now_ns() / 1e9 - b->wall_s;
  kvs_reuse_get_counters(r, &f->ct);
  kvs_gpu_codec_encode_timing(&f->enc);
  f->ct.stores_done -= b->ct.stores_done, f->ct.stores_failed -= b->ct.stores_failed;
  f->ct.store_bytes -= b->ct.store_bytes, f->ct.store_pool_hits -= b->ct.store_pool_hits;
  f->ct.store_copy_s -= b->ct.store_copy_s, f->ct.store_encode_s -= b->ct.store_encode_s;
  f->ct.store_ack_s -= b->ct.store_ack_s;
  f->enc.calls -= b->enc.calls, f->enc.gpu_ns -= b->enc.gpu_ns;
  f->enc.copy_ns -= b->enc.copy_ns, f->enc.host_ns -= b->enc.host_ns;
  if (f->ct.stores_done != p->n_segs - 1) {
    fprintf(stderr, "store: %llu of %u done (%llu failed)\n", (unsigned long long)f->ct.stores_done,
            p->n_segs - 1, (unsigned long long)f->ct.stores_failed);
    f->wall_s = -1;
  }
}

/* One store of every chunk through r, until all are acknowledged.
 * gpu_encode "0": the device KV is copied to the host and CPU-encoded. */
static double store_all(kvs_reuse *r, const kvs_rag_prompt *p, void *const *dkv,
                        const char *gpu_encode, store_fig *f) {
  store_fig b, tmp;
  if (!f) f = &tmp;
  setenv("KVS_CLIENT_GPU_ENCODE", gpu_encode, 1);
  if (!r || store_begin(r, p, dkv, &b)) {
    unsetenv("KVS_CLIENT_GPU_ENCODE");
    return f->wall_s = -1;
  }
  store_end(r, p, &b, f);
  unsetenv("KVS_CLIENT_GPU_ENCODE");
  return f->wall_s;
}

/* The best (shortest) of n stores after one warm-up (the warm-up fills the
 * pool of device buffers and the encoder's workspace). */
static double store_best(kvs_reuse *r, const kvs_rag_prompt *p, void *const *dkv,
                         const char *gpu_encode, int n, store_fig *best) {
  store_fig f;
  best->wall_s = -1;
  if (store_all(r, p, dkv, gpu_encode, &f) < 0) return -1;
  for (int i = 0; i < n; i++) {
    if (store_all(r, p, dkv, gpu_encode, &f) < 0) return -1;
    if (best->wall_s < 0 || f.wall_s < best->wall_s) *best = f;
  }
  return best->wall_s;
}

static void print_store_fig(const char *name, const store_fig *f, uint64_t kv_bytes) {
  uint64_t n = f->ct.stores_done ? f->ct.stores_done : 1;
  printf("%-26s %9.1f %7.2f %9.2f %10.2f %8.2f %8.2f %8.2f %10.2f\n", name, f->wall_s * 1e3,
         f->wall_s > 0 ? kv_bytes / f->wall_s / 1e9 : 0, f->ct.store_copy_s * 1e3 / n,
         f->ct.store_encode_s * 1e3 / n, f->enc.calls ? f->enc.gpu_ns / 1e6 / f->enc.calls : 0,
         f->enc.calls ? f->enc.copy_ns / 1e6 / f->enc.calls : 0,
         f->enc.calls ? f->enc.host_ns / 1e6 / f->enc.calls : 0, f->ct.store_ack_s * 1e3 / n);
}

static void print_store_rows(const store_rows *s, uint32_t chunks, uint32_t tokens) {
  printf("store: %u chunks, %u tokens of KV (%.1f MB fp16) from device memory, dense lpg 4, "
         "through reuse/'s queue until every put was acknowledged (best of 2 after a warm-up); "
         "per put: copy = into the queue, put_start = encode + request frame, gpu/d2h/host = the "
         "GPU encoder's split of it, ack = request sent to answer\n",
         chunks, tokens, s->kv_bytes / 1e6);
  printf("%-26s %9s %7s %9s %10s %8s %8s %8s %10s\n", "store path", "wall_ms", "GB/s", "copy_ms",
         "put_start", "gpu_ms", "d2h_ms", "host_ms", "ack_ms");
  print_store_fig("gpu encode, 1 in flight", &s->serial, s->kv_bytes);
  print_store_fig("gpu encode, 4 in flight", &s->piped, s->kv_bytes);
  if (s->concurrent) print_store_fig("gpu, 4, durability=async", &s->async, s->kv_bytes);
  if (s->concurrent) print_store_fig("gpu, 4, ram, shm put", &s->ram, s->kv_bytes);
  if (s->concurrent) print_store_fig("gpu, 4, ram, socket put", &s->ram_sock, s->kv_bytes);
  if (s->cpu_path) print_store_fig("cpu encode, 4 in flight", &s->cpu, s->kv_bytes);
  if (s->concurrent)
    printf("concurrent request (median, alone vs while a store of every chunk drains, drain %.1f "
           "ms): kvs-shm/none %.2f vs %.2f ms (%+.1f%%), full prefill %.2f vs %.2f ms (%+.1f%%)\n",
           s->drain_ms, s->ttft_alone_ms, s->ttft_store_ms,
           100 * (s->ttft_store_ms / s->ttft_alone_ms - 1), s->full_alone_ms, s->full_store_ms,
           100 * (s->full_store_ms / s->full_alone_ms - 1));
}

/* The store rows into the bench's JSON line. */
static void store_rows_json(cJSON *o, const store_rows *s) {
  bench_json_num(o, "store_gpu_ms", "%.3f", s->piped.wall_s * 1e3);
  bench_json_num(o, "store_gpu_serial_ms", "%.3f", s->serial.wall_s * 1e3);
  bench_json_num(o, "store_gpu_async_ms", "%.3f", s->async.wall_s * 1e3);
  bench_json_num(o, "store_gpu_ram_shm_ms", "%.3f", s->ram.wall_s * 1e3);
  bench_json_num(o, "store_gpu_ram_sock_ms", "%.3f", s->ram_sock.wall_s * 1e3);
  bench_json_num(o, "store_cpu_ms", "%.3f", s->cpu.wall_s * 1e3);
  bench_json_num(o, "store_gpu_copy_ms", "%.3f", s->piped.ct.store_copy_s * 1e3);
  bench_json_num(o, "store_gpu_put_start_ms", "%.3f", s->piped.ct.store_encode_s * 1e3);
  bench_json_num(o, "store_gpu_ack_ms", "%.3f", s->piped.ct.store_ack_s * 1e3);
  bench_json_num(o, "ttft_alone_ms", "%.3f", s->ttft_alone_ms);
  bench_json_num(o, "ttft_with_store_ms", "%.3f", s->ttft_store_ms);
  bench_json_num(o, "full_alone_ms", "%.3f", s->full_alone_ms);
  bench_json_num(o, "full_with_store_ms", "%.3f", s->full_store_ms);
  bench_json_num(o, "drain_ms", "%.3f", s->drain_ms);
}

static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* A request's TTFT (ms, median of reps) alone and while a store of every
 * chunk drains (started just before the request, another tenant's keys so
 * the request's own entries stay put); alternated, one warm-up each. */
static int concurrent_rows(kvs_engine *e, kvs_client *c_req, kvs_client *c_store,
                           const kvs_rag_prompt *p, void *const *dkv, uint32_t policy, int reps,
                           double *alone_ms, double *with_ms, double *drain_ms) {
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(KVS_SEL_NONE);
  o.policy = policy;
  o.prefix_chunk_tokens = p->len[0];
  kvs_reuse *rq = NULL, *rs = store_ctx(e, c_store, p, 4);
  if (!rs || kvs_reuse_create(c_req, e, &o, &rq)) return -1;
  double ta[16], tw[16], td[16];
  int R = reps < 1 ? 1 : reps > 16 ? 16 : reps, err = 0;
  kvs_rag_answer a = {0};
  if (store_all(rs, p, dkv, "1", NULL) < 0 || kvs_rag_answer_reuse(rq, e, NULL, p, 1, &a, NULL))
    err = -1; /* warm-up of both */
  for (int rep = 0; rep < R && !err; rep++) {
    if (kvs_rag_answer_reuse(rq, e, NULL, p, 1, &a, NULL)) err = -1;
    ta[rep] = a.ttft_s * 1e3;
    store_fig b, f;
    setenv("KVS_CLIENT_GPU_ENCODE", "1", 1);
    if (!err && store_begin(rs, p, dkv, &b)) err = -1;
    if (!err && kvs_rag_answer_reuse(rq, e, NULL, p, 1, &a, NULL)) err = -1;
    tw[rep] = a.ttft_s * 1e3;
    if (!err) store_end(rs, p, &b, &f);
    unsetenv("KVS_CLIENT_GPU_ENCODE");
    td[rep] = err ? -1 : f.wall_s * 1e3;
    if (!err && f.wall_s < 0) err = -1;
  }
  kvs_reuse_free(rq), kvs_reuse_free(rs);
  if (err) return -1;
  qsort(ta, (size_t)R, sizeof *ta, cmp_dbl), qsort(tw, (size_t)R, sizeof *tw, cmp_dbl);
  qsort(td, (size_t)R, sizeof *td, cmp_dbl);
  *alone_ms = ta[R / 2], *with_ms = tw[R / 2];
  if (drain_ms) *drain_ms = td[R / 2];
  return 0;
}

/* Median TTFT (s) of `reps` requests through kvs_reuse_run (a fresh
 * kvs_reuse: the plan's rows include its warm-up); *last gets the last
 * request's figures. slow_bps > 0: the RAM tier slowed to that many decoded
 * bytes/s (reuse/'s bench-only knob). */
static double reuse_row(kvs_engine *e, kvs_client *c, const kvs_rag_prompt *p, uint32_t policy,
                        uint32_t strat, float ratio, int reps, kvs_reuse_result *last,
                        double slow_bps) {
  kvs_reuse_opts o;
  kvs_reuse_opts_init(&o);
  o.blend.sel = kvs_sel_defaults(strat);
  if (ratio >= 0 && (strat == KVS_SEL_CACHEBLEND || strat == KVS_SEL_ADAPTIVE))
    o.blend.sel.ratio = ratio;
  if (g_kvd_epic >= 0 && strat == KVS_SEL_EPIC) o.blend.sel.epic_first = (uint32_t)g_kvd_epic;
  o.policy = policy;
  o.prefix_chunk_tokens = p->len[0];
  o.bench_tier_bytes_per_s[0] = slow_bps;
  kvs_reuse *r;
  if (kvs_reuse_create(c, e, &o, &r)) return -1;
  double t[16] = {0};
  int R = reps > 16 ? 16 : reps;
  for (int rep = 0; rep < R; rep++) {
    kvs_rag_answer a = {0};
    kvs_err err = kvs_rag_answer_reuse(r, e, NULL, p, 1, &a, last);
    if (err) {
      fprintf(stderr, "reuse row: %s (%s)\n", kvs_strerror(err), kvs_client_errmsg(c));
      kvs_reuse_free(r);
      return -1;
    }
    t[rep] = a.ttft_s;
  }
  kvs_reuse_free(r);
  for (int i = 1; i < R; i++)
    for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
      double x = t[j];
      t[j] = t[j - 1], t[j - 1] = x;
    }
  return t[R / 2];
}

typedef struct kvrow {
  char name[32];
  double ms;
  kvs_reuse_result res;
} kvrow;

/* The controller on a slowed RAM tier: the loader sees at most B / (f x
 * T_recompute) bytes/s (B the prompt's stored KV, T_recompute the
 * ram/recompute row), so that loading everything takes about f = 0.5, 1 and
 * 2 times recomputing it; plan vs always-load rows (always-recompute does not
 * fetch: the ram/recompute row). */
static int ctl_slowed_rows(kvs_engine *e, kvs_client *c, const kvs_rag_prompt *p, int reps,
                           float ratio, kvrow *rows, int n, int cap) {
  double t_rec = 0;
  for (int k = 0; k < n; k++)
    if (!strcmp(rows[k].name, "ram/recompute")) t_rec = rows[k].ms / 1e3;
  kvs_engine_info in;
  if (!(t_rec > 0) || e->ops->info(e, &in)) return n;
  uint64_t bytes = 0;
  for (uint32_t i = 0; i + 1 < p->n_segs; i++)
    bytes += kvs_layout_token_bytes(&in.layout) * p->len[i];
  static const double f[3] = {0.5, 1, 2};
  static const char *nm[3] = {"slow0.5x", "slow1x", "slow2x"};
  for (int i = 0; i < 3 && n + 2 <= cap; i++) {
    double bps = bytes / (f[i] * t_rec);
    for (int j = 0; j < 2; j++, n++) {
      kvrow *w = &rows[n];
      snprintf(w->name, sizeof w->name, "%s/%s", nm[i], j ? "load" : "plan");
      memset(&w->res, 0, sizeof w->res);
      w->ms = 1e3 * reuse_row(e, c, p, j ? KVS_REUSE_PLAN_ALWAYS_LOAD : KVS_REUSE_PLAN_AUTO,
                              (uint32_t)g_kvd_strat, ratio, reps, &w->res, bps);
    }
  }
  return n;
}

/* plan / min(always load, always recompute, full prefill) per controller case
 * (X/plan rows; a case without its own recompute row uses ram/recompute;
 * full_ms: the plain full prefill of the same run, 0 = none); the ratios into
 * js (may be NULL) */
static void print_ctl(const kvrow *rows, int n, double full_ms, cJSON *js) {
  double rec_ram = 0;
  for (int k = 0; k < n; k++)
    if (!strcmp(rows[k].name, "ram/recompute")) rec_ram = rows[k].ms;
  for (int k = 0; k < n; k++) {
    const char *sl = strstr(rows[k].name, "/plan");
    if (!sl || sl[5]) continue;
    int pl = (int)(sl - rows[k].name);
    double ld = 0, rc = rec_ram;
    for (int j = 0; j < n; j++) {
      if (strncmp(rows[j].name, rows[k].name, (size_t)pl) || rows[j].name[pl] != '/') continue;
      if (!strcmp(rows[j].name + pl, "/load")) ld = rows[j].ms;
      if (!strcmp(rows[j].name + pl, "/recompute")) rc = rows[j].ms;
    }
    double best = ld > 0 && rc > 0 ? fmin(ld, rc) : ld > 0 ? ld : rc;
    if (full_ms > 0 && (!(best > 0) || full_ms < best)) best = full_ms;
    double q = best > 0 ? rows[k].ms / best : 0;
    const kvs_reuse_result *r = &rows[k].res;
    printf("controller %-10.*s plan %9.2f ms  load %9.2f  recompute %9.2f  full %9.2f  "
           "plan/min %.3f %s  (last request: load %u recompute %u explore %u full %u; est plan "
           "%.2f full %.2f ms)\n",
           pl, rows[k].name, rows[k].ms, ld, rc, full_ms, q, q <= 1.05 ? "ok" : "OVER 1.05",
           r->n_load, r->n_recompute, r->n_explore, r->full_prefill, r->est_plan_s * 1e3,
           r->est_full_s * 1e3);
    char key[32];
    snprintf(key, sizeof key, "%.*s", pl, rows[k].name);
    if (js) bench_json_num(js, key, "%.3f", q);
  }
}

/* The rows through kvstashd for prompt p on engine e: transports (RAM tier),
 * the disk tier, and the controller (plan vs always load / recompute).
 * dkv: chunk KV in engine memory for the pre-warm. Returns the row count. */
static int g_ctl_only; /* --ctl-only: the controller rows alone (no transports) */

static int kvstashd_rows(kvs_engine *e, const kvs_rag_prompt *p, void *const *dkv,
                         const char *kvstashd, int reps, float ratio, kvrow *rows, int cap,
                         store_rows *sr) {
  kvd ram, dsk;
  int n = 0;
  if (kvd_start(&ram, kvstashd, "8G", "sync") || kvd_start(&dsk, kvstashd, "1M", "sync"))
    return fprintf(stderr, "kvstashd: cannot start %s\n", kvstashd), -1;
  kvs_client *c_shm = kvd_client(ram.ipc, 0, NULL, NULL);
  kvs_client *c_ipcs = kvd_client(ram.ipc, KVS_CLIENT_NO_SHM, ram.ipcs, NULL);
  kvs_client *c_tcps = kvd_client(ram.tcp, KVS_CLIENT_NO_SHM, ram.tcps, NULL);
  kvs_client *c_dsk = kvd_client(dsk.ipc, KVS_CLIENT_NO_SHM, NULL, NULL);
  kvs_client *c_cpu = kvd_client(ram.ipc, 0, NULL, "cpu");
  if (!c_shm || !c_ipcs || !c_tcps || !c_dsk || !c_cpu) {
    fprintf(stderr, "kvstashd: no answer\n");
    n = -1;
    goto out;
  }
  /* pre-warm (and the store rows): GPU encode with 1 and 4 puts in flight,
   * the CPU-encode path beside (another tenant) */
  kvs_reuse *rs1 = store_ctx(e, c_shm, p, 1), *rs4 = store_ctx(e, c_shm, p, 4);
  int bad = store_best(rs1, p, dkv, "1", 2, &sr->serial) < 0 ||
            store_best(rs4, p, dkv, "1", 2, &sr->piped) < 0;
  kvs_reuse_free(rs1), kvs_reuse_free(rs4);
  sr->kv_bytes = sr->piped.ct.store_bytes;
  if (!bad && sr->concurrent) { /* the same on a daemon that does not fsync its log per put */
    kvd asy;
    kvs_client *c_asy = NULL;
    if (kvd_start(&asy, kvstashd, "8G", "async") == 0 &&
        (c_asy = kvd_client(asy.ipc, 0, NULL, NULL)) != NULL) {
      kvs_reuse *ra = store_ctx(e, c_asy, p, 4);
      bad = store_best(ra, p, dkv, "1", 2, &sr->async) < 0;
      kvs_reuse_free(ra);
    } else {
      bad = 1;
    }
    kvs_client_free(c_asy);
    kvd_stop(&asy);
  }
  if (!bad && sr->concurrent) { /* durability = ram: shm put vs socket put */
    kvd dram;
    kvs_client *c_ram = NULL;
    if (kvd_start(&dram, kvstashd, "8G", "ram") == 0 &&
        (c_ram = kvd_client(dram.ipc, 0, NULL, NULL)) != NULL) {
      kvs_reuse *rr = store_ctx(e, c_ram, p, 4);
      bad = store_best(rr, p, dkv, "1", 2, &sr->ram) < 0;
      setenv("KVS_CLIENT_SHM_PUT", "0", 1);
      if (!bad) bad = store_best(rr, p, dkv, "1", 2, &sr->ram_sock) < 0;
      unsetenv("KVS_CLIENT_SHM_PUT");
      kvs_reuse_free(rr);
      kvs_client_counters kc;
      if (kvs_client_get_counters(c_ram, &kc) == KVS_OK)
        printf("durability=ram client: shm_puts %llu sock_puts %llu shm_put_fallbacks %llu\n",
               (unsigned long long)kc.shm_puts, (unsigned long long)kc.sock_puts,
               (unsigned long long)kc.shm_put_fallbacks);
    } else {
      bad = 1;
    }
    kvs_client_free(c_ram);
    kvd_stop(&dram);
  }
  if (!bad && sr->cpu_path) {
    kvs_reuse *rc = store_ctx(e, c_cpu, p, 4);
    bad = store_all(rc, p, dkv, "0", &sr->cpu) < 0;
    kvs_reuse_free(rc);
  }
  kvs_reuse *rd = bad || g_store_only ? NULL : store_ctx(e, c_dsk, p, 4);
  if (bad || (!g_store_only && store_all(rd, p, dkv, "1", NULL) < 0)) {
    kvs_reuse_free(rd);
    n = -1;
    goto out;
  }
  kvs_reuse_free(rd);
  struct {
    const char *name;
    kvs_client *c;
    uint32_t policy, strat;
  } spec[] = {
      {"kvs-shm/none", c_shm, KVS_REUSE_PLAN_ALWAYS_LOAD, KVS_SEL_NONE},
      {"kvs-shm/blend", c_shm, KVS_REUSE_PLAN_ALWAYS_LOAD, (uint32_t)g_kvd_strat},
      {"kvs-ipc+stream/none", c_ipcs, KVS_REUSE_PLAN_ALWAYS_LOAD, KVS_SEL_NONE},
      {"kvs-tcp+stream/none", c_tcps, KVS_REUSE_PLAN_ALWAYS_LOAD, KVS_SEL_NONE},
      {"kvs-disk/none", c_dsk, KVS_REUSE_PLAN_ALWAYS_LOAD, KVS_SEL_NONE},
      {"ram/plan", c_shm, KVS_REUSE_PLAN_AUTO, (uint32_t)g_kvd_strat},
      {"ram/load", c_shm, KVS_REUSE_PLAN_ALWAYS_LOAD, (uint32_t)g_kvd_strat},
      {"ram/recompute", c_shm, KVS_REUSE_PLAN_ALWAYS_RECOMPUTE, (uint32_t)g_kvd_strat},
      {"disk/plan", c_dsk, KVS_REUSE_PLAN_AUTO, (uint32_t)g_kvd_strat},
      {"disk/load", c_dsk, KVS_REUSE_PLAN_ALWAYS_LOAD, (uint32_t)g_kvd_strat},
      {"disk/recompute", c_dsk, KVS_REUSE_PLAN_ALWAYS_RECOMPUTE, (uint32_t)g_kvd_strat},
  };
  for (size_t k = 0; !g_store_only && k < sizeof spec / sizeof *spec && n < cap; k++) {
    if (g_ctl_only && !strncmp(spec[k].name, "kvs-", 4)) continue;
    kvrow *w = &rows[n];
    snprintf(w->name, sizeof w->name, "%s", spec[k].name);
    memset(&w->res, 0, sizeof w->res);
    double t = reuse_row(e, spec[k].c, p, spec[k].policy, spec[k].strat, ratio, reps, &w->res, 0);
    w->ms = t * 1e3;
    n++;
  }
  if (!g_store_only) n = ctl_slowed_rows(e, c_shm, p, reps, ratio, rows, n, cap);
  if (sr->concurrent && (concurrent_rows(e, c_shm, c_cpu, p, dkv, KVS_REUSE_PLAN_ALWAYS_LOAD, reps,
                                         &sr->ttft_alone_ms, &sr->ttft_store_ms, &sr->drain_ms) ||
                         concurrent_rows(e, c_shm, c_cpu, p, dkv, KVS_REUSE_PLAN_ALWAYS_RECOMPUTE,
                                         reps, &sr->full_alone_ms, &sr->full_store_ms, NULL)))
    fprintf(stderr, "concurrent request rows failed\n"), sr->concurrent = 0;
out:
  kvs_client_free(c_shm), kvs_client_free(c_ipcs), kvs_client_free(c_tcps);
  kvs_client_free(c_dsk), kvs_client_free(c_cpu);
  kvd_stop(&ram), kvd_stop(&dsk);
  return n;
}

static void print_kvrows(const kvrow *rows, int n, double full_ms, double ref_ms) {
  printf("%-20s %10s %9s %8s %6s %6s %6s %9s %10s %10s\n", "through kvstashd", "ttft_ms", "speedup",
         "vs_ref", "load", "recomp", "miss", "lookup_ms", "load_wait", "est_l/r_ms");
  for (int k = 0; k < n; k++) {
    const kvs_reuse_result *r = &rows[k].res;
    printf("%-20s %10.2f %8.2fx %7.2fx %6u %6u %6u %9.3f %10.2f %5.1f/%.1f\n", rows[k].name,
           rows[k].ms, full_ms / rows[k].ms, ref_ms > 0 ? rows[k].ms / ref_ms : 0, r->n_load,
           r->n_recompute, r->n_miss, r->t_lookup_s * 1e3, r->blend.t_load_wait_s * 1e3,
           r->est_load_s * 1e3, r->est_recompute_s * 1e3);
  }
}

/* Speed at the 8B shape (seeded random weights, GPU): a prefix chunk, n_pass
 * passages of pass_tok random tokens held in host RAM (the RAM tier), and a
 * question. Times to first token are medians of `reps` runs. */
static int speed8b(uint32_t n_pass, uint32_t pass_tok, uint32_t q_tok, int reps, float ratio,
                   const char *disk, const char *kvstashd, const kvs_model_cfg *cfg) {
  kvs_model *m;
  kvs_gpu_model *gm;
  kvs_engine *e;
  kvs_err err;
  uint32_t prefix = 32, n = prefix + n_pass * pass_tok + q_tok;
  if ((err = kvs_model_create_random(cfg, 42, 0, &m)) || (err = gpu_engine(m, n + 64, &gm, &e))) {
    fprintf(stderr, "speed8b: %s\n", kvs_strerror(err));
    return err == KVS_ENODEV ? 77 : 1;
  }
  kvs_engine_info in;
  e->ops->info(e, &in);
  kvs_rag_prompt p = {0};
  p.tokens = malloc(n * sizeof *p.tokens);
  unsigned long long r = 7;
  for (uint32_t i = 0; i < n; i++)
    r = r * 6364136223846793005ull + 1442695040888963407ull,
    p.tokens[i] = (int32_t)((r >> 33) % in.n_vocab);
  p.start[0] = 0, p.len[0] = prefix, p.n_segs = 1;
  for (uint32_t i = 0; i < n_pass; i++, p.n_segs++)
    p.start[p.n_segs] = prefix + i * pass_tok, p.len[p.n_segs] = pass_tok;
  p.start[p.n_segs] = n - q_tok, p.len[p.n_segs] = q_tok, p.n_segs++;
  p.n_tokens = n;
  size_t tb = kvs_layout_token_bytes(&in.layout);
  mem_kv mk = {.p = &p, .tok_plane_bytes = (size_t)in.layout.n_kv_heads * in.layout.head_dim * 2};
  int cached[KVS_RAG_MAX_PASSAGES + 2];
  for (uint32_t s = 0; s + 1 < p.n_segs; s++) {
    cached[s] = 1;
    kvs_gpu_alloc_host(&mk.kv[s], tb * p.len[s]); /* pinned: the RAM tier of a local kvstashd */
    if (!mk.kv[s] || (err = kvs_rag_chunk_kv(e, p.tokens + p.start[s], p.len[s], mk.kv[s])))
      return fprintf(stderr, "chunk kv: %s\n", kvs_strerror(err)), 1;
  }
  printf("kvs-bench-blend --speed8b: %s shape (random weights) on the GPU, %u tokens = "
         "prefix %u + %u x %u passages + question %u; KV %.1f MB in pinned host RAM\n",
         cfg ? "SmolLM2-135M" : "Llama-3-8B", n, prefix, n_pass, pass_tok, q_tok,
         tb * (n - q_tok) / 1e6);
  if ((err = kvs_gpu_stream_create(&mk.stream)))
    return fprintf(stderr, "stream: %s\n", kvs_strerror(err)), 1;
  for (int s = 0; s < KVS_RAG_MAX_PASSAGES + 2; s++)
    mk.fd[s] = -1;
  if (disk && disk_tier(&mk, &p, tb, disk) != 0) return 1;
  /* rows 2-5 load through a pinned host stage (a memcpy per layer, then one
   * copy to the device); rows 6-9 load straight into device memory; rows
   * 10-13 read the chunks from files (the disk tier) into device memory */
  enum { NR = 14 };
  const char *names[NR] = {"full",
                           "prefix-only",
                           "none",
                           "epic",
                           "cacheblend",
                           "adaptive",
                           "none/dev",
                           "epic/dev",
                           "cacheblend/dev",
                           "adaptive/dev",
                           "none/disk",
                           "epic/disk",
                           "cacheblend/disk",
                           "adaptive/disk"};
  double med[NR] = {0}, brk[NR][3] = {{0}}; /* last run: load wait, recompute, prefill (ms) */
  double rec[NR] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  /* --ctl-only, --store-only: the full prefill only */
  int nr = g_ctl_only || g_store_only ? 1 : disk ? NR : 10;
  for (int k = 0; k < nr; k++) {
    double t[16] = {0};
    int R = reps > 16 ? 16 : reps;
    for (int rep = 0; rep < R; rep++) {
      kvs_rag_answer a = {0};
      if (k == 0) {
        err = kvs_rag_answer_full(e, NULL, &p, 1, &a);
      } else if (k == 1) { /* reuse the prefix only: every passage is prefilled */
        kvs_rag_prompt q = p;
        q.n_segs = 2, q.len[1] = n - prefix, q.start[1] = prefix;
        int c1[2] = {1, 0};
        kvs_blend_opts o = {.sel = kvs_sel_defaults(KVS_SEL_NONE)};
        err = kvs_rag_answer_blend(e, NULL, &q, c1, load_mem, &mk, &o, 1, &a);
      } else {
        uint32_t sel[] = {0, 0, KVS_SEL_NONE, KVS_SEL_EPIC, KVS_SEL_CACHEBLEND, KVS_SEL_ADAPTIVE};
        int dev = k >= 6, dsk = k >= 10;
        uint32_t sk = sel[dsk ? k - 8 : dev ? k - 4 : k];
        kvs_blend_opts o = {.sel = kvs_sel_defaults(sk), .check_layer = 1, .load_device = dev};
        if (ratio >= 0 && (sk == KVS_SEL_CACHEBLEND || sk == KVS_SEL_ADAPTIVE)) o.sel.ratio = ratio;
        err = kvs_rag_answer_blend(e, NULL, &p, cached,
                                   dsk   ? load_disk_dev
                                   : dev ? load_mem_dev
                                         : load_mem,
                                   &mk, &o, 1, &a);
        rec[k] = a.blend.n_candidates ? (double)a.blend.n_recomputed / a.blend.n_candidates : 0;
      }
      if (err) return fprintf(stderr, "%s: %s\n", names[k], kvs_strerror(err)), 1;
      t[rep] = a.ttft_s;
      brk[k][0] = a.blend.t_load_wait_s * 1e3, brk[k][1] = a.blend.t_recompute_s * 1e3;
      brk[k][2] = a.blend.t_prefill_s * 1e3;
    }
    for (int i = 1; i < R; i++) /* insertion sort for the median */
      for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
        double x = t[j];
        t[j] = t[j - 1], t[j - 1] = x;
      }
    med[k] = t[R / 2];
  }
  /* the same prompt through kvstashd (kvs_reuse_run), chunks stored dense from device memory */
  kvrow kr[32];
  int nkr = 0;
  /* --ctl-only: neither the CPU-encode store nor the concurrent-request rows */
  store_rows sr = {.cpu_path = !g_ctl_only, .concurrent = !g_ctl_only};
  if (kvstashd) {
    void *dkv[KVS_RAG_MAX_PASSAGES + 2] = {0};
    for (uint32_t s = 0; s + 1 < p.n_segs; s++)
      if (kvs_gpu_alloc(&dkv[s], tb * p.len[s]) ||
          kvs_gpu_copy_h2d(dkv[s], mk.kv[s], tb * p.len[s], NULL) || kvs_gpu_sync(NULL))
        return fprintf(stderr, "device copy of chunk %u failed\n", s), 1;
    nkr = kvstashd_rows(e, &p, dkv, kvstashd, reps, ratio, kr, 32, &sr);
    for (uint32_t s = 0; s + 1 < p.n_segs; s++)
      kvs_gpu_free(dkv[s]);
    if (nkr < 0) return 1;
    if (g_store_only) {
      printf("full prefill %.2f ms (median of %d)\n", med[0] * 1e3, reps);
      print_store_rows(&sr, p.n_segs - 1, n - q_tok);
      cJSON *js = cJSON_CreateObject();
      cJSON_AddStringToObject(js, "bench", "blend-store8b");
      cJSON_AddNumberToObject(js, "tokens", n - q_tok);
      bench_json_num(js, "kv_mb", "%.1f", sr.kv_bytes / 1e6);
      bench_json_num(js, "full_ms", "%.3f", med[0] * 1e3);
      store_rows_json(js, &sr);
      bench_json_print(js);
      return 0;
    }
  }
  for (uint32_t s = 0; s + 1 < p.n_segs; s++)
    kvs_gpu_free_host(mk.kv[s]), mk.kv[s] = NULL;
  kvs_engine_free(e), e = NULL;
  kvs_gpu_model_free(gm), gm = NULL; /* PyTorch gets the memory */
  double tms = g_ctl_only ? 0 : torch_ms(n);
  printf("%-14s %10s %10s %9s %10s %10s %10s\n", "strategy", "ttft_ms", "speedup", "recompute",
         "load_wait", "recomp_ms", "prefill_ms");
  cJSON *json = cJSON_CreateObject(); /* the last line (bench_json.h) */
  cJSON_AddStringToObject(json, "bench", "blend-speed8b");
  cJSON_AddNumberToObject(json, "tokens", n);
  cJSON_AddNumberToObject(json, "passages", n_pass);
  cJSON_AddNumberToObject(json, "passage_tokens", pass_tok);
  cJSON *jt = cJSON_AddObjectToObject(json, "ttft_ms");
  for (int k = 0; k < nr; k++) {
    printf("%-14s %10.2f %9.2fx %8.1f%% %10.2f %10.2f %10.2f\n", names[k], med[k] * 1e3,
           med[0] / med[k], 100 * rec[k], brk[k][0], brk[k][1], brk[k][2]);
    bench_json_num(jt, names[k], "%.3f", med[k] * 1e3);
  }
  printf("%-14s %10.2f  (PyTorch SDPA full prefill, same shape, same run; ours/torch %.2f)\n",
         "torch-sdpa", tms, tms > 0 ? med[0] * 1e3 / tms : 0);
  if (kvstashd) {
    print_kvrows(kr, nkr, med[0] * 1e3, med[6] * 1e3);
    print_store_rows(&sr, p.n_segs - 1, n - q_tok);
  }
  bench_json_num(json, "torch_sdpa_ms", "%.3f", tms);
  bench_json_num(json, "speedup_adaptive", "%.3f", med[0] / med[5]);
  bench_json_num(json, "speedup_cacheblend", "%.3f", med[0] / med[4]);
  bench_json_num(json, "speedup_epic", "%.3f", med[0] / med[3]);
  bench_json_num(json, "speedup_adaptive_dev", "%.3f", med[0] / med[9]);
  bench_json_num(json, "speedup_cacheblend_dev", "%.3f", med[0] / med[8]);
  bench_json_num(json, "speedup_epic_dev", "%.3f", med[0] / med[7]);
  if (kvstashd) { /* the kvstashd rows go into the JSON too */
    store_rows_json(json, &sr);
    cJSON *jk = cJSON_AddObjectToObject(json, "kvstashd_ms");
    for (int k = 0; k < nkr; k++)
      bench_json_num(jk, kr[k].name, "%.3f", kr[k].ms);
    print_ctl(kr, nkr, med[0] * 1e3, cJSON_AddObjectToObject(json, "ctl_plan_over_min"));
  }
  bench_json_print(json);
  for (int s = 0; s < KVS_RAG_MAX_PASSAGES + 2; s++)
    if (mk.fd[s] >= 0) close(mk.fd[s]);
  if (mk.bounce) kvs_gpu_free_host(mk.bounce);
  kvs_gpu_stream_free(mk.stream);
  free(p.tokens);
  kvs_engine_free(e);
  kvs_gpu_model_free(gm);
  kvs_model_free(m);
  return 0;
}

typedef struct agg {
  double agree, agree1, f1, kl, frac, ttft, equal;
  double tf_kl, tf_pos, tf_checked, tf_agree, tf_dropped; /* teacher-forced sums */
  int n;
} agg;

/* Teacher-forced logits of the question and answer positions: the prompt's
 * chunks as a full prefill (o NULL) or through kvs_blend_run over the cached
 * chunks (o set), then the cache cut back to the question's start and the
 * question plus ans[0..n_ans-1) prefilled with every position's logits.
 * out: (len[last] + n_ans - 1, n_vocab) host floats; *n_pos gets the count. */
static kvs_err tf_logits(kvs_engine *e, const kvs_rag_prompt *p, const int *cached,
                         kvs_blend_load_fn load, void *ctx, const kvs_blend_opts *o,
                         const int32_t *ans, uint32_t n_ans, float *out, uint32_t *n_pos) {
  kvs_engine_info in;
  KVS_TRY(e->ops->info(e, &in));
  uint32_t q0 = p->start[p->n_segs - 1], nq = p->len[p->n_segs - 1];
  uint32_t n = nq + (n_ans ? n_ans - 1 : 0);
  int32_t *toks = malloc((size_t)n * sizeof *toks);
  if (!toks) return KVS_ENOMEM;
  memcpy(toks, p->tokens + q0, (size_t)nq * sizeof *toks);
  if (n_ans > 1) memcpy(toks + nq, ans, (size_t)(n_ans - 1) * sizeof *toks);
  size_t lbytes = (size_t)n * in.n_vocab * sizeof(float), l1 = (size_t)in.n_vocab * sizeof(float);
  int dev = in.mem == KVS_ENGINE_MEM_DEVICE;
  void *dl = NULL, *d1 = NULL;
  kvs_err err = KVS_OK;
  if (dev && !(err = kvs_gpu_buffer_alloc(lbytes, &dl))) err = kvs_gpu_buffer_alloc(l1, &d1);
  kvs_engine_seq *s = NULL;
  if (!err) err = e->ops->seq_create(e, p->n_tokens + n_ans + 1, &s);
  if (!err && !o) err = e->ops->prefill(e, s, p->tokens, q0, 0, NULL);
  if (!err && o) {
    kvs_blend_segment segs[KVS_RAG_MAX_PASSAGES + 2];
    for (uint32_t i = 0; i < p->n_segs; i++) {
      segs[i].kind = i == 0 ? KVS_SEG_PREFIX : i + 1 == p->n_segs ? KVS_SEG_NEW : KVS_SEG_CONTENT;
      segs[i].tokens = p->tokens + p->start[i];
      segs[i].n_tokens = p->len[i];
      segs[i].stored_pos0 = 0;
      segs[i].cached = i + 1 < p->n_segs && cached[i];
    }
    kvs_blend_stats bs;
    /* the blend's own last-token logits land in out's first row (host) or d1 */
    err = kvs_blend_run(e, s, segs, p->n_segs, load, ctx, o, dev ? d1 : (void *)out, &bs);
    if (!err) err = e->ops->seq_truncate(e, s, q0);
  }
  if (!err) err = e->ops->prefill(e, s, toks, n, 1, dev ? dl : (void *)out);
  if (!err && dev) err = kvs_gpu_copy(out, dl, lbytes);
  if (s) e->ops->seq_free(e, s);
  kvs_gpu_buffer_free(dl);
  kvs_gpu_buffer_free(d1);
  free(toks);
  *n_pos = n;
  return err;
}

/* top-2 margin of a row and its argmax */
static float row_margin(const float *r, uint32_t V, uint32_t *top) {
  uint32_t b = 0;
  for (uint32_t v = 1; v < V; v++)
    if (r[v] > r[b]) b = v;
  float m2 = -INFINITY;
  for (uint32_t v = 0; v < V; v++)
    if (v != b && r[v] > m2) m2 = r[v];
  *top = b;
  return r[b] - m2;
}

static int parse_range(const char *s, int *a, int *b) {
  if (sscanf(s, "%d-%d", a, b) == 2) return *a >= 0 && *b >= *a;
  if (sscanf(s, "%d", a) == 1) return *b = *a, *a >= 0;
  return 0;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-blend")) return 0;
  const char *model_path = getenv("KVS_MODEL_PATH"), *data = NULL, *profile = "none";
  char strategies[256] = "none,epic,cacheblend,adaptive,full";
  int a = 0, b = 4, passages = 0;
  uint32_t max_new = 32, s8_pass = 8, s8_tok = 512;
  float ratio = -1;
  int use_gpu = 0, s8 = 0, chunk_ctx = 0, style = 0;
  const char *disk_dir = NULL, *kvstashd = NULL, *strategies_file = NULL;
  uint32_t check_layer = 1;
  float margin_tol = 1.0f;
  int tf = 1;
  static struct option lo[] = {{"model", 1, 0, 'm'},
                               {"data", 1, 0, 'd'},
                               {"items", 1, 0, 'i'},
                               {"passages", 1, 0, 'p'},
                               {"strategies", 1, 0, 's'},
                               {"ratio", 1, 0, 'r'},
                               {"profile", 1, 0, 'c'},
                               {"max-new", 1, 0, 'n'},
                               {"gpu", 0, 0, 'g'},
                               {"speed8b", 0, 0, '8'},
                               {"passage-tokens", 1, 0, 't'},
                               {"n-passages", 1, 0, 'q'},
                               {"chunk-ctx", 1, 0, 'x'},
                               {"style", 1, 0, 'y'},
                               {"disk", 1, 0, 'k'},
                               {"kvstashd", 1, 0, 'K'},
                               {"check-layer", 1, 0, 'l'},
                               {"margin", 1, 0, 'M'},
                               {"no-tf", 0, 0, 'T'},
                               {"help", 0, 0, 'h'},
                               {"kvd-strategy", 1, 0, 'S'},
                               {"strategies-file", 1, 0, 'F'},
                               {"shape", 1, 0, 'Z'},
                               {"ctl-only", 0, 0, 'C'},
                               {"store-only", 0, 0, 'O'},
                               {0, 0, 0, 0}};
  /* --shape smol: SmolLM2-135M's shape (random weights) for --speed8b */
  static const kvs_model_cfg smol = {.n_vocab = 49152,
                                     .n_embd = 576,
                                     .n_layers = 30,
                                     .n_heads = 9,
                                     .n_kv_heads = 3,
                                     .head_dim = 64,
                                     .n_ff = 1536,
                                     .n_ctx_train = 8192,
                                     .rope_theta = 100000,
                                     .norm_eps = 1e-5f,
                                     .rope_type = KVS_ROPE_NORM};
  const kvs_model_cfg *s8_cfg = NULL;
  for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    switch (c) {
    case 'm': model_path = optarg; break;
    case 'd': data = optarg; break;
    case 'i':
      if (!parse_range(optarg, &a, &b)) return fprintf(stderr, "bad --items\n"), 2;
      break;
    case 'p': passages = atoi(optarg); break;
    case 's': snprintf(strategies, sizeof strategies, "%s", optarg); break;
    case 'r': ratio = (float)atof(optarg); break;
    case 'c': profile = optarg; break;
    case 'n': max_new = (uint32_t)atoi(optarg); break;
    case 'g': use_gpu = 1; break;
    case '8': s8 = 1; break;
    case 'y': style = atoi(optarg); break;
    case 'k': disk_dir = optarg; break;
    case 'K': kvstashd = optarg; break;
    case 'x': chunk_ctx = atoi(optarg); break;
    case 'l': check_layer = (uint32_t)atoi(optarg); break;
    case 'M': margin_tol = (float)atof(optarg); break;
    case 'T': tf = 0; break;
    case 'F': strategies_file = optarg; break;
    case 'S':
      if (kvd_strategy(optarg, &ratio)) return fprintf(stderr, "bad --kvd-strategy\n"), 2;
      break;
    case 'C': g_ctl_only = 1; break;
    case 'Z':
      if (strcmp(optarg, "smol") && strcmp(optarg, "8b"))
        return fprintf(stderr, "bad --shape\n"), 2;
      s8_cfg = strcmp(optarg, "smol") ? NULL : &smol;
      break;
    case 'O': g_store_only = 1; break;
    case 't': s8_tok = (uint32_t)atoi(optarg); break;
    case 'q': s8_pass = (uint32_t)atoi(optarg); break;
    default:
      fprintf(
          stderr,
          "usage: kvs-bench-blend --model GGUF [--data MUSIQUE] --items A-B [--gpu]\n"
          "         [--passages N] [--strategies a[:param],b...] [--ratio R] [--profile P|none]\n"
          "         [--max-new N] [--chunk-ctx N] [--style S] [--check-layer L]\n"
          "         [--margin LOGITS] [--no-tf]\n"
          "       kvs-bench-blend --speed8b [--n-passages N] [--passage-tokens T] [--ratio R]\n"
          "         [--disk DIR] [--kvstashd BIN] [--shape 8b|smol] [--ctl-only]\n"
          "         [--store-only]\n"
          "  strategies: none, epic[:first tokens], cacheblend[:ratio], adaptive[:cap], full\n"
          "  --chunk-ctx N: passages prefilled after the instruction's first N tokens\n"
          "    (-1 all of it, -2 everything before them: oracle KV); --style 0-4: the\n"
          "    question turn / few-shot instruction; --disk: add rows read from files there\n"
          "  --kvstashd BIN: add rows through kvstashd (kvs_reuse_run: shm, ipc+stream,\n"
          "    tcp+stream, disk tier; plan vs always load / recompute, RAM tier slowed to\n"
          "    3 rates; the store timing); --ctl-only: the full prefill and the controller\n"
          "    rows only; --shape smol: SmolLM2-135M's shape instead of the 8B's\n"
          "    --store-only: the full prefill and the store rows only\n"
          "  --kvd-strategy S[:P]: the strategy of those rows (default adaptive; P: epic's\n"
          "    tokens per chunk, else the ratio, as --ratio)\n"
          "  --strategies-file F: load the model, then wait for F and take the strategy\n"
          "    list from its first line, --kvd-strategy from its second if there (a run\n"
          "    that starts before its strategies are chosen)\n"
          "  --margin: top-1 agreement counts positions whose full-prefill top-2 margin\n"
          "    exceeds it (default 1.0); --no-tf: skip the teacher-forced position metrics\n");
      return c == 'h' ? 0 : 2;
    }
  }
  if (s8) return speed8b(s8_pass, s8_tok, 64, 5, ratio, disk_dir, kvstashd, s8_cfg);
  data = kvs_rag_data_path(data); /* default: the repo's data/rag copy */
  if (!model_path) return fprintf(stderr, "need --model\n"), 2;
  int prof = strcmp(profile, "none") ? kvs_codec_profile_from_name(profile) : -1;
  if (strcmp(profile, "none") && prof < 0) return fprintf(stderr, "unknown profile\n"), 2;
  kvs_model *model;
  kvs_engine *eng;
  kvs_err e;
  if ((e = kvs_model_load(model_path, &model)) || (e = kvs_model_engine(model, &eng)))
    return fprintf(stderr, "model: %s\n", kvs_strerror(e)), 1;
  kvs_gpu_model *gm = NULL;
  if (use_gpu) {
    kvs_engine_free(eng);
    if ((e = gpu_engine(model, 16384, &gm, &eng)))
      return fprintf(stderr, "gpu: %s\n", kvs_strerror(e)), 1;
  }
  if (strategies_file) { /* loaded ahead: wait (at most 20 min) for the strategy list */
    FILE *sf = NULL;
    for (int w = 0; w < 12000 && !(sf = fopen(strategies_file, "r")); w++)
      usleep(100000);
    if (!sf) return fprintf(stderr, "no %s\n", strategies_file), 1;
    usleep(200000); /* let its writer finish the line */
    char line2[64] = "";
    if (!fgets(strategies, sizeof strategies, sf)) strategies[0] = 0;
    if (!fgets(line2, sizeof line2, sf)) line2[0] = 0;
    fclose(sf);
    strategies[strcspn(strategies, "\r\n \t")] = 0;
    line2[strcspn(line2, "\r\n \t")] = 0;
    if (!strategies[0]) return fprintf(stderr, "empty %s\n", strategies_file), 1;
    if (line2[0] && kvd_strategy(line2, &ratio)) return fprintf(stderr, "bad line 2\n"), 1;
  }
  /* a strategy with an optional parameter: cacheblend:0.3 (ratio), adaptive:0.3 (cap),
   * epic:32 (tokens per chunk start) */
  enum { MAX_STRAT = 16 };
  int strat[MAX_STRAT], n_strat = 0;
  float sparam[MAX_STRAT];
  char label[MAX_STRAT][32];
  for (char *t = strtok(strategies, ","); t && n_strat < MAX_STRAT; t = strtok(NULL, ",")) {
    snprintf(label[n_strat], sizeof label[n_strat], "%s", t);
    char *colon = strchr(t, ':');
    sparam[n_strat] = colon ? (float)atof(colon + 1) : -1;
    if (colon) *colon = 0;
    if ((strat[n_strat] = kvs_sel_parse(t)) < 0) return fprintf(stderr, "bad strategy %s\n", t), 2;
    n_strat++;
  }
  kvs_engine_info info;
  eng->ops->info(eng, &info);
  const kvs_tok *tok = kvs_model_tok(model);
  kvs_rag_item *items;
  size_t n_items;
  if ((e = kvs_rag_load(data, &items, &n_items)))
    return fprintf(stderr, "data: %s\n", kvs_strerror(e)), 1;
  if ((size_t)b >= n_items) b = (int)n_items - 1;
  if (a < 100 && b >= 100)
    fprintf(stderr, "note: items %d-%d include held-out items (100-149): report, never tune\n", a,
            b);

  agg full = {0}, st[MAX_STRAT];
  memset(st, 0, sizeof st);
  double bits_sum = 0;
  int bits_n = 0;
  float *lf = malloc(info.n_vocab * 4), *lb = malloc(info.n_vocab * 4);
  size_t tb = kvs_layout_token_bytes(&info.layout);
  printf(
      "kvs-bench-blend: items %d-%d, passages %s, KV %s, strategies %s, engine %s, chunk ctx %d, "
      "check layer %u, prompt style %d\n",
      a, b, passages ? "limited" : "all", profile, strategies, info.name, chunk_ctx, check_layer,
      style);
  for (int i = a; i <= b; i++) {
    kvs_rag_item it = items[i];
    if (passages > 0 && (size_t)passages < it.n_passages) it.n_passages = (size_t)passages;
    kvs_rag_prompt p;
    if ((e = kvs_rag_prompt_build_style(tok, &it, style, &p)))
      return fprintf(stderr, "prompt: %s\n", kvs_strerror(e)), 1;
    kvs_rag_answer af = {.first_logits = lf};
    if ((e = kvs_rag_answer_full(eng, tok, &p, max_new, &af)))
      return fprintf(stderr, "full: %s\n", kvs_strerror(e)), 1;
    double f1_full = kvs_rag_f1(af.text, it.answers, it.n_answers);
    full.f1 += f1_full, full.ttft += af.ttft_s, full.n++;
    mem_kv m = {.p = &p,
                .tok_plane_bytes = (size_t)info.layout.n_kv_heads * info.layout.head_dim * 2};
    int cached[KVS_RAG_MAX_PASSAGES + 2];
    uint64_t raw = 0, enc = 0;
    for (uint32_t s = 0; s + 1 < p.n_segs; s++) {
      cached[s] = 1;
      m.kv[s] = malloc(tb * p.len[s]);
      /* passages after the first chunk_ctx tokens of the instruction (-1: all of it) */
      /* -2: everything before the passage in this prompt (an oracle: the KV a full
       * prefill has there, for checking the pipeline, not something a cache can hold) */
      uint32_t nx = s == 0                                            ? 0
                    : chunk_ctx == -2                                 ? p.start[s]
                    : chunk_ctx < 0 || (uint32_t)chunk_ctx > p.len[0] ? p.len[0]
                                                                      : (uint32_t)chunk_ctx;
      if ((e = kvs_rag_chunk_kv_ctx(eng, p.tokens, nx, p.tokens + p.start[s], p.len[s], m.kv[s])))
        return fprintf(stderr, "chunk kv: %s\n", kvs_strerror(e)), 1;
      if (prof >= 0) { /* what a fetch would give back: encode, then decode */
        kvs_codec_params cp;
        kvs_codec_params_default(prof, info.layout.n_layers, &cp);
        size_t cap = kvs_codec_encode_bound(&cp, &info.layout, p.len[s]), len = 0;
        void *buf = malloc(cap);
        if ((e = kvs_codec_encode(&cp, &info.layout, p.len[s], m.kv[s], buf, cap, &len)))
          return fprintf(stderr, "encode: %s\n", kvs_strerror(e)), 1;
        kvs_codec_out o = kvs_codec_out_contiguous(m.kv[s], tb * p.len[s], KVS_DTYPE_F16);
        if ((e = kvs_codec_decode(buf, len, &o, NULL, 0)))
          return fprintf(stderr, "decode: %s\n", kvs_strerror(e)), 1;
        raw += tb * p.len[s], enc += len;
        free(buf);
      }
    }
    if (raw) bits_sum += 16.0 * enc / raw, bits_n++;
    printf("item %3d (%u tokens) full: \"%s\" F1 %.2f ttft %.2fs\n", i, p.n_tokens, af.text,
           f1_full, af.ttft_s);
    uint32_t tf_n = 0, V = info.n_vocab;
    float *tf_full = NULL, *tf_reuse = NULL;
    if (tf) {
      size_t rows = p.len[p.n_segs - 1] + af.n + 1;
      tf_full = malloc(rows * V * sizeof(float));
      tf_reuse = malloc(rows * V * sizeof(float));
      if (!tf_full || !tf_reuse) return fprintf(stderr, "tf: out of memory\n"), 1;
      if ((e = tf_logits(eng, &p, cached, load_mem, &m, NULL, af.ids, af.n, tf_full, &tf_n)))
        return fprintf(stderr, "tf full: %s\n", kvs_strerror(e)), 1;
    }
    for (int s = 0; s < n_strat; s++) {
      kvs_blend_opts o = {.sel = kvs_sel_defaults((uint32_t)strat[s]), .check_layer = check_layer};
      if (ratio >= 0 && (strat[s] == KVS_SEL_CACHEBLEND || strat[s] == KVS_SEL_ADAPTIVE))
        o.sel.ratio = ratio;
      if (sparam[s] >= 0 && (strat[s] == KVS_SEL_CACHEBLEND || strat[s] == KVS_SEL_ADAPTIVE))
        o.sel.ratio = sparam[s];
      if (sparam[s] >= 0 && strat[s] == KVS_SEL_EPIC) o.sel.epic_first = (uint32_t)sparam[s];
      kvs_rag_answer ab = {.first_logits = lb};
      if ((e = kvs_rag_answer_blend(eng, tok, &p, cached, load_mem, &m, &o, max_new, &ab)))
        return fprintf(stderr, "blend: %s\n", kvs_strerror(e)), 1;
      int same16 = ab.n == af.n || (ab.n >= 16 && af.n >= 16);
      for (uint32_t t = 0; same16 && t < ab.n && t < 16; t++)
        same16 = ab.ids[t] == af.ids[t];
      int agree = same16 || kvs_rag_same_answer(ab.text, af.text);
      double f1 = kvs_rag_f1(ab.text, it.answers, it.n_answers);
      double kl = kvs_rag_kl(lf, lb, info.n_vocab);
      double frac =
          ab.blend.n_candidates ? (double)ab.blend.n_recomputed / ab.blend.n_candidates : 0;
      st[s].agree1 += ab.n && af.n ? ab.ids[0] == af.ids[0] : ab.n == af.n;
      st[s].agree += agree, st[s].f1 += f1, st[s].kl += kl, st[s].frac += frac;
      st[s].ttft += ab.ttft_s, st[s].n++;
      st[s].equal += kvs_rag_same_answer(ab.text, af.text);
      double tkl = 0;
      uint32_t tck = 0, tag = 0, tdr = 0, tn = 0;
      if (tf) {
        if ((e = tf_logits(eng, &p, cached, load_mem, &m, &o, af.ids, af.n, tf_reuse, &tn)))
          return fprintf(stderr, "tf blend: %s\n", kvs_strerror(e)), 1;
        for (uint32_t r = 0; r < tn && r < tf_n; r++) {
          const float *rf = tf_full + (size_t)r * V, *rr = tf_reuse + (size_t)r * V;
          tkl += kvs_rag_kl(rf, rr, V);
          uint32_t tf1, tr1;
          if (row_margin(rf, V, &tf1) > margin_tol) {
            (void)row_margin(rr, V, &tr1);
            tck++, tag += tf1 == tr1;
          } else {
            tdr++;
          }
        }
        st[s].tf_kl += tkl, st[s].tf_pos += tn, st[s].tf_checked += tck, st[s].tf_agree += tag;
        st[s].tf_dropped += tdr;
      }
      printf("   %-10s %s F1 %.2f KL %.4f recompute %4.1f%% ttft %.2fs tf: KL %.4f top1 %u/%u "
             "(%u near-ties) \"%s\"\n",
             label[s], agree ? "agree " : "DIFFER", f1, kl, 100 * frac, ab.ttft_s,
             tn ? tkl / tn : 0.0, tag, tck, tdr, ab.text);
    }
    free(tf_full), free(tf_reuse);
    if (kvstashd && i == a) { /* the controller on this model, first item only */
      void *dkv[KVS_RAG_MAX_PASSAGES + 2] = {0};
      for (uint32_t s = 0; s + 1 < p.n_segs; s++) {
        if (use_gpu) {
          if (kvs_gpu_alloc(&dkv[s], tb * p.len[s]) ||
              kvs_gpu_copy_h2d(dkv[s], m.kv[s], tb * p.len[s], NULL) || kvs_gpu_sync(NULL))
            return fprintf(stderr, "device copy failed\n"), 1;
        } else {
          dkv[s] = m.kv[s];
        }
      }
      kvrow kr[32];
      store_rows sr = {0};
      int nkr = kvstashd_rows(eng, &p, dkv, kvstashd, 5, ratio, kr, 32, &sr);
      if (use_gpu)
        for (uint32_t s = 0; s + 1 < p.n_segs; s++)
          kvs_gpu_free(dkv[s]);
      if (nkr < 0) return 1;
      kvs_rag_answer a2 = {0};
      double fm[5];
      for (int rep = 0; rep < 5; rep++) { /* full prefill, same conditions (max_new 1) */
        if ((e = kvs_rag_answer_full(eng, NULL, &p, 1, &a2))) return 1;
        fm[rep] = a2.ttft_s * 1e3;
      }
      for (int x = 1; x < 5; x++)
        for (int y = x; y > 0 && fm[y] < fm[y - 1]; y--) {
          double t = fm[y];
          fm[y] = fm[y - 1], fm[y - 1] = t;
        }
      printf("item %d through kvstashd on %s (%u tokens), full prefill %.2f ms (median of 5):\n", i,
             info.name, p.n_tokens, fm[2]);
      print_kvrows(kr, nkr, fm[2], 0);
      cJSON *jc = cJSON_CreateObject();
      cJSON_AddStringToObject(jc, "bench", "blend-controller");
      cJSON_AddStringToObject(jc, "engine", info.name);
      cJSON_AddNumberToObject(jc, "item", i);
      cJSON_AddNumberToObject(jc, "tokens", p.n_tokens);
      bench_json_num(jc, "full_ms", "%.3f", fm[2]);
      for (int k = 0; k < nkr; k++)
        bench_json_num(jc, kr[k].name, "%.3f", kr[k].ms);
      print_ctl(kr, nkr, fm[2], cJSON_AddObjectToObject(jc, "ctl_plan_over_min"));
      bench_json_print(jc);
    }
    for (uint32_t s = 0; s + 1 < p.n_segs; s++)
      free(m.kv[s]);
    kvs_rag_prompt_free(&p);
    fflush(stdout);
  }
  int n = full.n ? full.n : 1;
  printf("\nteacher-forced positions: question + answer tokens of the full prefill's answer; "
         "top-1 where the full prefill's top-2 margin > %.2f logits\n",
         margin_tol);
  printf("%-15s %9s %6s %6s %8s %8s %10s %8s %8s %6s %9s %9s %8s\n", "strategy", "agreement",
         "tok1", "F1", "F1-full", "KL", "recompute", "ttft_s", "speedup", "equal", "tf_KL",
         "tf_top1", "dropped");
  printf("%-15s %9s %6s %6.3f %8s %8s %10s %8.3f %8s\n", "full", "-", "-", full.f1 / n, "-", "-",
         "100%", full.ttft / n, "1.00x");
  cJSON *json = cJSON_CreateObject(); /* the last line (bench_json.h) */
  char items_s[32];
  snprintf(items_s, sizeof items_s, "%d-%d", a, b);
  cJSON_AddStringToObject(json, "bench", "blend");
  cJSON_AddStringToObject(json, "items", items_s);
  cJSON_AddNumberToObject(json, "n_items", full.n);
  cJSON_AddStringToObject(json, "kv", profile);
  bench_json_num(json, "margin", "%.2f", margin_tol);
  bench_json_num(json, "bits_per_elem", "%.3f", bits_n ? bits_sum / bits_n : 16.0);
  cJSON *jf = cJSON_AddObjectToObject(json, "full");
  bench_json_num(jf, "f1", "%.4f", full.f1 / n);
  bench_json_num(jf, "ttft_s", "%.4f", full.ttft / n);
  cJSON *jst = cJSON_AddObjectToObject(json, "strategies");
  for (int s = 0; s < n_strat; s++) {
    agg *g = &st[s];
    double sp = g->ttft > 0 ? full.ttft / g->ttft : 0;
    double tkl = g->tf_pos > 0 ? g->tf_kl / g->tf_pos : 0;
    double ttop = g->tf_checked > 0 ? g->tf_agree / g->tf_checked : 0;
    printf("%-15s %9.3f %6.3f %6.3f %+8.3f %8.4f %9.1f%% %8.3f %7.2fx %6.3f %9.5f %9.4f %8.0f\n",
           label[s], g->agree / n, g->agree1 / n, g->f1 / n, (g->f1 - full.f1) / n, g->kl / n,
           100 * g->frac / n, g->ttft / n, sp, g->equal / n, tkl, ttop, g->tf_dropped);
    cJSON *o = cJSON_AddObjectToObject(jst, label[s]);
    bench_json_num(o, "answer_agreement", "%.4f", g->agree / n);
    bench_json_num(o, "first_token_agreement", "%.4f", g->agree1 / n);
    bench_json_num(o, "f1", "%.4f", g->f1 / n);
    bench_json_num(o, "f1_delta", "%.4f", (g->f1 - full.f1) / n);
    bench_json_num(o, "kl", "%.5f", g->kl / n);
    bench_json_num(o, "recompute_frac", "%.4f", g->frac / n);
    bench_json_num(o, "ttft_s", "%.4f", g->ttft / n);
    bench_json_num(o, "speedup", "%.3f", sp);
    bench_json_num(o, "answer_equal", "%.4f", g->equal / n);
    bench_json_num(o, "tf_kl", "%.6f", tkl);
    bench_json_num(o, "tf_top1", "%.4f", ttop);
    bench_json_num(o, "tf_positions", "%.0f", g->tf_pos);
    bench_json_num(o, "tf_checked", "%.0f", g->tf_checked);
    bench_json_num(o, "tf_dropped", "%.0f", g->tf_dropped);
  }
  int ours = -1;
  for (int s = 0; s < n_strat; s++)
    if (strat[s] == KVS_SEL_ADAPTIVE) ours = s;
  if (ours >= 0) {
    bench_json_num(json, "answer_agreement", "%.4f", st[ours].agree / n);
    bench_json_num(json, "f1_delta", "%.4f", (st[ours].f1 - full.f1) / n);
  }
  bench_json_print(json);
  free(lf), free(lb);
  kvs_rag_items_free(items, n_items);
  kvs_engine_free(eng);
  kvs_gpu_model_free(gm);
  kvs_model_free(model);
  return 0;
}
