/* kvs-bench-service: kvstashd against redis-server, both started by this
 * program on this machine in the same run.
 *
 *   kvs-bench-service [--quick] [--seconds S] [--sizes 64K,1M,8M]
 *                     [--clients 1,4,16,64] [--no-put] [--no-tokens] [--tokens-only]
 *
 * For each value size and client count: PUT then GET throughput (req/s,
 * GB/s) and latency (p50, p99) of
 *   kvstashd over tcp:// and ipc://  (durability = sync: the WAL is fsync'ed
 *                                     before each PUT is acknowledged)
 *   redis-server over TCP and its Unix socket (no persistence: save "",
 *                                     appendonly no)
 *   a bare nng REP server (GET only): the transport's ceiling, a minimal
 *                                     server that allocates and copies the
 *                                     answer and does nothing else
 *   kvstashd shm (GET only): the same-host fast path (shm = on): LEASE over
 *                                     ipc://, bytes copied out of the mapped
 *                                     segment into the reader's buffer
 *   libkvstash (GET only): kvs_get of a raw KV entry of the row's size (1
 *                                     layer, size/8192 heads of 128, 16 tokens),
 *                                     tcp://, one kvs_client per caller:
 *                                     "lib default" made with kvs_client_opts_init
 *                                     and the URL only (here it reads in place:
 *                                     shm = on), "lib no-shm" the same with
 *                                     KVS_CLIENT_NO_SHM (what a client on another
 *                                     host gets: the byte stream it finds by
 *                                     itself), "lib req/rep" with
 *                                     KVS_CLIENT_NO_STREAM too; each GET is two
 *                                     requests (meta + descriptor, then the value)
 *                                     and a decode into the caller's buffer
 *   kvstashd stream (GET only): the byte-stream listener (tcp+stream://, and
 *                                     ipc+stream:// beside Redis's Unix socket; nng's
 *                                     stream API): the daemon writes the value
 *                                     from its RAM tier to the socket; the
 *                                     reader reads the head, then the value
 *                                     straight into its buffer
 * Each client is a thread with its own connection doing one request at a
 * time. GETs read random keys of a working set put first (RAM-resident on
 * both sides). Then the KV-tokens-per-second comparison: a 256-token chunk of
 * SmolLM2-135M-shaped synthetic KV, stored by kvstashd encoded with the dense
 * codec and by Redis as raw fp16; tokens delivered per second = GET req/s x
 * 256 (fetch only; decoding is the GPU library's job and is not timed here).
 * Prints a table and a last line of JSON. Every loop is bounded in time and in
 * count; both servers are stopped on exit. */
#include <errno.h>
#include <hiredis.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_codec.h"
#include "kvs_net.h"
#include "kvs_synth.h"
#include "kvs_wire.h"
#include "kvstash.h"
#include "bench_json.h"
#include "bench_version.h"

#ifndef KVS_BENCH_KVSTASHD
#define KVS_BENCH_KVSTASHD "kvstashd"
#endif

#define MAX_OPS_PER_THREAD 200000
#define MAX_CLIENTS        64

static double now_s(void) { return (double)kvs_now_ns() * 1e-9; }
static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ servers */
static char g_dir[256];
static pid_t g_kvs_pid, g_redis_pid, g_bare_pid;
static char g_bare_tcp[128], g_bare_ipc[300];
static volatile uint64_t *g_bare_size; /* shared with the bare server process */
static char g_kvs_tcp[128], g_kvs_ipc[300], g_redis_sock[300], g_kvs_stream[128];
static char g_kvs_stream_ipc[320];
static int g_redis_port;

static int free_port(void) {
  /* ports from the pid, away from the defaults; bind-checked by the servers */
  static int next = 0;
  return 20000 + (int)(getpid() % 20000) + next++;
}

static pid_t spawn(char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE *f = freopen(log, "a", stderr);
    (void)f;
    if (!freopen("/dev/null", "w", stdout)) _exit(126);
    execvp(argv[0], argv);
    _exit(127);
  }
  return pid;
}

static void stop(pid_t *pid) {
  if (*pid <= 0) return;
  kill(*pid, SIGTERM);
  for (int i = 0; i < 300; i++) {
    int st;
    if (waitpid(*pid, &st, WNOHANG) == *pid) {
      *pid = 0;
      return;
    }
    sleep_ms(100);
  }
  kill(*pid, SIGKILL);
  waitpid(*pid, NULL, 0);
  *pid = 0;
}

static void cleanup(void) {
  stop(&g_bare_pid);
  stop(&g_kvs_pid);
  stop(&g_redis_pid);
  if (g_dir[0]) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  }
}

static void on_signal(int sig) {
  (void)sig;
  cleanup();
  _exit(1);
}

/* --------------------------------------------------------- kvs client */
typedef struct kconn {
  nng_socket s;
} kconn;

static int kconnect(kconn *c, const char *url) {
  if (nng_req0_open(&c->s) != 0) return -1;
  nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, 30000);
  nng_socket_set_ms(c->s, NNG_OPT_SENDTIMEO, 30000);
  nng_socket_set_size(c->s, NNG_OPT_RECVMAXSZ, 0);
  nng_socket_set_ms(c->s, NNG_OPT_REQ_RESENDTIME, 600000);
  if (nng_dial(c->s, url, NULL, 0) != 0) {
    nng_close(c->s);
    return -1;
  }
  return 0;
}

typedef struct kentry {
  kvs_model_id model;
  kvs_key key;
  int32_t tokens[64];
  uint8_t *frame_get; /* a GET request frame */
  size_t get_len;
  uint8_t *frame_lease; /* a LEASE request frame (release id at byte 128) */
  size_t lease_len;
} kentry;

static int kcall(kconn *c, nng_msg *m, size_t *reply_len) {
  if (nng_sendmsg(c->s, m, 0) != 0) {
    nng_msg_free(m);
    return -1;
  }
  nng_msg *a;
  if (nng_recvmsg(c->s, &a, 0) != 0) return -1;
  int32_t st;
  memcpy(&st, (uint8_t *)nng_msg_body(a) + 12, 4);
  *reply_len = nng_msg_len(a);
  nng_msg_free(a);
  return st;
}

static nng_msg *kput_msg(const kentry *e, const uint8_t *value, size_t n, uint64_t checksum,
                         uint32_t profile, const uint64_t *seg_end, uint32_t n_seg) {
  uint64_t whole = n;
  if (!seg_end || !n_seg) seg_end = &whole, n_seg = 1;
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  m.key = e->key;
  m.model = e->model;
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = 64;
  kvs_layout l = {30, 3, 64, KVS_DTYPE_F16, KVS_ROPE_NEOX, 64, 100000.f, 1.f, 0, 0, 0, 0};
  m.layout = l;
  m.codec_profile = profile;
  m.n_segments = n_seg;
  m.value_bytes = n;
  m.checksum = checksum;
  m.tokens_le = (const uint8_t *)e->tokens;
  m.seg_end_le = (const uint8_t *)seg_end; /* little-endian hosts only, as the rest */
  size_t ml = kvs_wire_meta_size(&m);
  if (ml > 4096) return NULL;
  /* reserve + append: nng_msg_alloc of the full size would also zero it */
  nng_msg *msg;
  uint8_t head[KVS_WIRE_HDR_SIZE + 4096];
  if (nng_msg_alloc(&msg, 0) != 0) return NULL;
  if (nng_msg_reserve(msg, KVS_WIRE_HDR_SIZE + ml + n) != 0) {
    nng_msg_free(msg);
    return NULL;
  }
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_PUT, 1, "bench", NULL, 0);
  h.payload_len = (uint32_t)(ml + n);
  kvs_wire_hdr_encode(&h, head);
  kvs_wire_meta_encode(&m, head + KVS_WIRE_HDR_SIZE, ml, NULL);
  nng_msg_append(msg, head, KVS_WIRE_HDR_SIZE + ml);
  nng_msg_append(msg, value, n);
  return msg;
}

static void kentry_init(kentry *e, uint64_t id) {
  e->model = kvs_hash128_buf("bench-model", 11);
  uint64_t s = id * 31 + 7;
  for (int i = 0; i < 64; i++)
    e->tokens[i] = (int32_t)(kvs_synth_rand(&s) % 49152);
  e->key = kvs_key_content(&e->model, e->tokens, 64);
  kvs_wire_get_req g = {.key = e->key,
                        .model = e->model,
                        .flags = 0,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = 64,
                        .tokens_le = (const uint8_t *)e->tokens};
  size_t pl = kvs_wire_get_req_size(&g);
  e->get_len = KVS_WIRE_HDR_SIZE + pl;
  e->frame_get = malloc(e->get_len);
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_GET, 2, "bench", NULL, 0);
  h.payload_len = (uint32_t)pl;
  kvs_wire_hdr_encode(&h, e->frame_get);
  kvs_wire_get_req_encode(&g, e->frame_get + KVS_WIRE_HDR_SIZE, pl, NULL);
  e->lease_len = KVS_WIRE_HDR_SIZE + 8 + pl;
  e->frame_lease = calloc(1, e->lease_len);
  kvs_wire_hdr_init(&h, KVS_OP_LEASE, 3, "bench", NULL, 0);
  h.payload_len = (uint32_t)(8 + pl);
  kvs_wire_hdr_encode(&h, e->frame_lease);
  kvs_wire_get_req_encode(&g, e->frame_lease + KVS_WIRE_HDR_SIZE + 8, pl, NULL);
}

static void kentry_free(kentry *e) {
  free(e->frame_get);
  free(e->frame_lease);
}

/* Same-host read: LEASE (releasing the previous lease in the same trip),
 * then the bytes copied out of the mapped segment into the reader's buffer,
 * as an engine would into its staging buffer. */
typedef struct shm_reader {
  char name[KVS_WIRE_SHM_NAME_MAX + 1];
  const uint8_t *map;
  size_t map_len;
  uint64_t last_lease;
} shm_reader;

static int shm_get(kconn *c, shm_reader *sr, const kentry *e, uint8_t *dst, size_t size) {
  nng_msg *m;
  if (nng_msg_alloc(&m, 0) != 0) return 0;
  nng_msg_append(m, e->frame_lease, e->lease_len);
  memcpy((uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE, &sr->last_lease, 8);
  if (nng_sendmsg(c->s, m, 0) != 0) {
    nng_msg_free(m);
    return 0;
  }
  nng_msg *a;
  if (nng_recvmsg(c->s, &a, 0) != 0) return 0;
  int ok = 0;
  kvs_wire_hdr h;
  kvs_wire_lease_resp lr;
  if (kvs_wire_hdr_decode(nng_msg_body(a), nng_msg_len(a), &h) == KVS_OK && h.status == 0 &&
      kvs_wire_lease_resp_decode((uint8_t *)nng_msg_body(a) + KVS_WIRE_HDR_SIZE,
                                 nng_msg_len(a) - KVS_WIRE_HDR_SIZE, &lr) == KVS_OK &&
      lr.value_bytes == size) {
    sr->last_lease = lr.lease_id;
    if (!sr->map || strcmp(sr->name, lr.shm_name) != 0) {
      if (sr->map) munmap((void *)sr->map, sr->map_len);
      sr->map = NULL;
      int fd = shm_open(lr.shm_name, O_RDONLY, 0);
      struct stat st;
      if (fd >= 0 && fstat(fd, &st) == 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
          sr->map = p;
          sr->map_len = (size_t)st.st_size;
          snprintf(sr->name, sizeof sr->name, "%s", lr.shm_name);
        }
      }
      if (fd >= 0) close(fd);
    }
    if (sr->map && lr.offset + size <= sr->map_len) {
      memcpy(dst, sr->map + lr.offset, size);
      ok = 1;
    }
  }
  nng_msg_free(a);
  return ok;
}

/* The byte-stream GET: one plain socket, one request at a time, read with
 * read() like the Redis reader below (redis_raw_get), so that both servers
 * are measured with the same, fastest kind of client. (nng's stream API on
 * this side added a task-thread hop per partial read: bench/RESULTS.md.) */
typedef struct sconn {
  int fd;
} sconn;

static int sconnect(sconn *c, const char *url) {
  c->fd = -1;
  const char *rest = strstr(url, "://");
  if (!rest) return -1;
  rest += 3;
  if (!strncmp(url, "ipc", 3)) { /* ipc+stream:///path */
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(rest) >= sizeof a.sun_path) return -1;
    memcpy(a.sun_path, rest, strlen(rest) + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) goto fail;
    return 0;
  }
  char host[128], port[8];
  int p = 0;
  if (kvs_hostport_split(rest, host, sizeof host, &p) != KVS_OK) return -1;
  snprintf(port, sizeof port, "%d", p);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) return -1;
  c->fd = socket(ai->ai_family, SOCK_STREAM, 0);
  int one = 1, ok = c->fd >= 0 && connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0;
  freeaddrinfo(ai);
  if (!ok) goto fail;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as hiredis does */
  return 0;
fail:
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  return -1;
}

static void sclose(sconn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}

/* Exactly n bytes out (wr) or in; 0 on success. */
static int sio(sconn *c, void *p, size_t n, int wr) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = wr ? write(c->fd, (uint8_t *)p + done, n - done)
                   : read(c->fd, (uint8_t *)p + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

/* GET over the stream: the request out, the 128-byte header and the GET
 * head in, then the value straight into dst. Returns the value length or -1. */
static long stream_get(sconn *c, const kentry *e, uint8_t *dst, size_t cap) {
  if (sio(c, e->frame_get, e->get_len, 1) != 0) return -1;
  uint8_t head[KVS_WIRE_HDR_SIZE + KVS_WIRE_GET_RESP_FIXED];
  if (sio(c, head, KVS_WIRE_HDR_SIZE, 0) != 0) return -1;
  kvs_wire_hdr h;
  if (kvs_wire_hdr_decode_head(head, &h) != KVS_OK || h.status != 0 ||
      h.payload_len < KVS_WIRE_GET_RESP_FIXED)
    return -1;
  uint8_t *fixed = head + KVS_WIRE_HDR_SIZE;
  size_t head_len;
  kvs_wire_get_resp r;
  if (sio(c, fixed, KVS_WIRE_GET_RESP_FIXED, 0) != 0 ||
      kvs_wire_get_resp_head_len(fixed, h.payload_len, &head_len) != KVS_OK ||
      head_len != KVS_WIRE_GET_RESP_FIXED || /* no meta asked */
      kvs_wire_get_resp_decode_head(fixed, head_len, h.payload_len, &r) != KVS_OK ||
      r.byte_len > cap)
    return -1;
  if (sio(c, dst, (size_t)r.byte_len, 0) != 0) return -1;
  return (long)r.byte_len;
}

/* Redis GET on the connection's socket: the command out, "$len\r\n" and
 * exactly len + 2 bytes read straight into buf. hiredis 0.14 grows its reply
 * buffer piecewise, which for multi-MiB values measured the client rather
 * than the server; this is the fastest a client can read RESP, so Redis is
 * compared at its best. Returns the value length or -1. */
static long redis_raw_get(int fd, const uint8_t key[16], uint8_t *buf, size_t cap) {
  uint8_t cmd[64];
  memcpy(cmd, "*2\r\n$3\r\nGET\r\n$16\r\n", 18);
  memcpy(cmd + 18, key, 16);
  memcpy(cmd + 34, "\r\n", 2);
  if (write(fd, cmd, 36) != 36) return -1;
  char head[32];
  size_t h = 0;
  while (h < sizeof head - 1) { /* "$<len>\r\n", byte by byte: a few bytes */
    if (read(fd, head + h, 1) != 1) return -1;
    if (head[h++] == '\n') break;
  }
  head[h] = 0;
  if (head[0] != '$') return -1;
  long len = strtol(head + 1, NULL, 10);
  if (len < 0 || (size_t)len + 2 > cap) return -1;
  size_t got = 0, need = (size_t)len + 2;
  while (got < need) {
    ssize_t r = read(fd, buf + got, need - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return len;
}

/* One caller, W connections: the value's segments split into W contiguous
 * ranges, the W requests sent at once (one per connection), then the W
 * answers read in order, each straight to its place in dst - how a client
 * fetches one large entry over several connections (libkvstash keeps a
 * window of segment GETs in flight the same way). kvstashd: GET with
 * seg_first/seg_count over its stream listener; Redis: GETRANGE of the same
 * byte ranges over its TCP port. Returns the bytes read or -1. */
#define MAX_WINDOW 8
static int g_window = 4;

static long striped_get(sconn *c, int w, int redis, const kentry *e, const uint64_t *seg_end,
                        uint32_t n_seg, uint8_t *dst, size_t size) {
  uint64_t whole = size;
  if (!seg_end || !n_seg) seg_end = &whole, n_seg = 1;
  if (w > (int)n_seg) w = (int)n_seg;
  if (seg_end[n_seg - 1] != size) return -1;
  uint64_t off[MAX_WINDOW], len[MAX_WINDOW];
  for (int p = 0; p < w; p++) { /* requests out */
    uint32_t s0 = (uint32_t)((uint64_t)p * n_seg / (uint64_t)w);
    uint32_t s1 = (uint32_t)((uint64_t)(p + 1) * n_seg / (uint64_t)w);
    off[p] = s0 ? seg_end[s0 - 1] : 0;
    len[p] = seg_end[s1 - 1] - off[p];
    uint8_t req[KVS_WIRE_HDR_SIZE + 1024];
    size_t rl;
    if (redis) {
      char a[24], b[24];
      int la = snprintf(a, sizeof a, "%llu", (unsigned long long)off[p]);
      int lb = snprintf(b, sizeof b, "%llu", (unsigned long long)(off[p] + len[p] - 1));
      rl = (size_t)snprintf((char *)req, 64, "*4\r\n$8\r\nGETRANGE\r\n$16\r\n");
      memcpy(req + rl, e->key.b, 16);
      rl += 16;
      rl += (size_t)snprintf((char *)req + rl, 96, "\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", la, a, lb, b);
    } else {
      kvs_wire_get_req g = {.key = e->key,
                            .model = e->model,
                            .seg_first = s0,
                            .seg_count = s1 - s0,
                            .n_tokens = 64,
                            .tokens_le = (const uint8_t *)e->tokens};
      size_t pl = kvs_wire_get_req_size(&g);
      if (pl > 1024) return -1;
      kvs_wire_hdr h;
      kvs_wire_hdr_init(&h, KVS_OP_GET, 5, "bench", NULL, 0);
      h.payload_len = (uint32_t)pl;
      kvs_wire_hdr_encode(&h, req);
      if (kvs_wire_get_req_encode(&g, req + KVS_WIRE_HDR_SIZE, pl, NULL) != KVS_OK) return -1;
      rl = KVS_WIRE_HDR_SIZE + pl;
    }
    if (sio(&c[p], req, rl, 1) != 0) return -1;
  }
  /* answers in, from whichever connection has bytes: each is a head of
   * known length (kvstashd: frame header + GET head; Redis: "$len\r\n"),
   * the range (straight into dst) and a tail (Redis: "\r\n"), read with
   * one recvmsg per readiness */
  uint8_t head[MAX_WINDOW][KVS_WIRE_HDR_SIZE + KVS_WIRE_GET_RESP_FIXED] = {{0}},
                                               tail[MAX_WINDOW][2] = {{0}};
  size_t hlen[MAX_WINDOW], tlen[MAX_WINDOW], got[MAX_WINDOW];
  for (int p = 0; p < w; p++) {
    char a[24];
    hlen[p] = redis ? (size_t)snprintf(a, sizeof a, "$%llu", (unsigned long long)len[p]) + 2
                    : sizeof head[p];
    tlen[p] = redis ? 2 : 0;
    got[p] = 0;
  }
  for (int left = w; left > 0;) {
    struct pollfd pf[MAX_WINDOW];
    int map[MAX_WINDOW], np = 0;
    for (int p = 0; p < w; p++)
      if (got[p] < hlen[p] + len[p] + tlen[p]) {
        pf[np] = (struct pollfd){.fd = c[p].fd, .events = POLLIN};
        map[np++] = p;
      }
    if (poll(pf, (nfds_t)np, 30000) <= 0) return -1;
    for (int i = 0; i < np; i++) {
      if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int p = map[i];
      struct iovec iov[3];
      int n = 0;
      size_t g = got[p], body = (size_t)len[p];
      if (g < hlen[p]) iov[n++] = (struct iovec){head[p] + g, hlen[p] - g};
      size_t b0 = g > hlen[p] ? g - hlen[p] : 0;
      if (b0 < body) iov[n++] = (struct iovec){dst + off[p] + b0, body - b0};
      size_t t0 = g > hlen[p] + body ? g - hlen[p] - body : 0;
      if (t0 < tlen[p]) iov[n++] = (struct iovec){tail[p] + t0, tlen[p] - t0};
      struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
      ssize_t r = recvmsg(c[p].fd, &m, MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) return -1;
      got[p] += (size_t)r;
      if (got[p] == hlen[p] + body + tlen[p]) left--;
    }
  }
  for (int p = 0; p < w; p++) { /* every answer is the one asked for */
    if (redis) {
      char want[32];
      snprintf(want, sizeof want, "$%llu\r\n", (unsigned long long)len[p]);
      if (memcmp(head[p], want, hlen[p]) != 0 || memcmp(tail[p], "\r\n", 2) != 0) return -1;
      continue;
    }
    kvs_wire_hdr h;
    size_t head_len;
    kvs_wire_get_resp r;
    uint8_t *fixed = head[p] + KVS_WIRE_HDR_SIZE;
    if (kvs_wire_hdr_decode_head(head[p], &h) != KVS_OK || h.status != 0 ||
        h.payload_len < KVS_WIRE_GET_RESP_FIXED ||
        kvs_wire_get_resp_head_len(fixed, h.payload_len, &head_len) != KVS_OK ||
        head_len != KVS_WIRE_GET_RESP_FIXED ||
        kvs_wire_get_resp_decode_head(fixed, head_len, h.payload_len, &r) != KVS_OK ||
        r.byte_off != off[p] || r.byte_len != len[p] ||
        h.payload_len != KVS_WIRE_GET_RESP_FIXED + len[p])
      return -1;
  }
  return (long)size;
}

/* ------------------------------------------------------------ workload */
enum {
  SYS_KVS_TCP,
  SYS_KVS_IPC,
  SYS_REDIS_TCP,
  SYS_REDIS_UNIX,
  SYS_BARE_TCP,
  SYS_BARE_IPC,
  SYS_KVS_SHM,
  SYS_KVS_STREAM,
  SYS_KVS_STREAM_IPC,
  SYS_KVS_STREAM_W, /* one caller, g_window connections (striped_get) */
  SYS_REDIS_TCP_W,  /* the same against Redis: GETRANGE on g_window connections */
  SYS_LIB_DEFAULT,  /* libkvstash, a default-configured client */
  SYS_LIB_NOSHM,    /* the same, KVS_CLIENT_NO_SHM */
  SYS_LIB_REQREP,   /* the same, KVS_CLIENT_NO_SHM | KVS_CLIENT_NO_STREAM */
  N_SYS
};
static const char *sys_name[N_SYS] = {
    "kvstashd tcp", "kvstashd ipc", "redis tcp",     "redis unix",        "bare-nng tcp",
    "bare-nng ipc", "kvstashd shm", "kvstashd strm", "kvstashd strm-ipc", "kvstashd strm-w",
    "redis tcp-w",  "lib default",  "lib no-shm",    "lib req/rep"};
static const char *sys_key[N_SYS] = {
    "kvs_tcp",          "kvs_ipc",     "redis_tcp",      "redis_unix",     "bare_nng_tcp",
    "bare_nng_ipc",     "kvs_shm",     "kvs_stream_tcp", "kvs_stream_ipc", "kvs_stream_tcp_window",
    "redis_tcp_window", "lib_default", "lib_no_shm",     "lib_reqrep"};
#define IS_REDIS(sys)                                                                              \
  ((sys) == SYS_REDIS_TCP || (sys) == SYS_REDIS_UNIX || (sys) == SYS_REDIS_TCP_W)
#define IS_LIB(sys) ((sys) >= SYS_LIB_DEFAULT)
#define IS_NNG(sys) (!IS_REDIS(sys) && !IS_LIB(sys))
/* bare server, shm, stream, windows: GETs only */
#define IS_READONLY(sys) ((sys) >= SYS_BARE_TCP)
#define IS_WINDOW(sys)   ((sys) == SYS_KVS_STREAM_W || (sys) == SYS_REDIS_TCP_W)

/* The transport's ceiling: a minimal synchronous nng REP server (its own
 * process) answering every request with a GET answer of *g_bare_size value
 * bytes, allocated and copied per request as any server must. */
static void bare_server(void) {
  nng_socket s;
  if (nng_rep0_open(&s) != 0 || nng_listen(s, g_bare_tcp, NULL, 0) != 0 ||
      nng_listen(s, g_bare_ipc, NULL, 0) != 0)
    _exit(1);
  size_t cap = 0;
  uint8_t *src = NULL;
  for (;;) {
    nng_msg *req;
    if (nng_recvmsg(s, &req, 0) != 0) continue;
    nng_msg_free(req);
    size_t n = (size_t)*g_bare_size;
    if (n > cap) {
      free(src);
      src = calloc(1, n);
      cap = src ? n : 0;
      if (!src) _exit(1);
    }
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0) continue;
    uint8_t head[KVS_WIRE_HDR_SIZE + KVS_WIRE_GET_RESP_FIXED] = {0};
    nng_msg_append(m, head, sizeof head);
    nng_msg_append(m, src, n);
    if (nng_sendmsg(s, m, 0) != 0) nng_msg_free(m);
  }
}

/* libkvstash rows: their own entries, raw KV of the row's size */
typedef struct lentry {
  int32_t tok[16];
  kvs_chunk ch;
} lentry;
static lentry *g_lkeys;
static kvs_layout g_llay;
static kvs_model_id g_lmodel;
static int g_lib_ok;                                 /* entries stored for this size */
static atomic_uint_fast64_t g_lib_shm, g_lib_stream; /* paths the rows' gets took */

static kvs_client *lib_client(int sys) {
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = g_kvs_tcp;
  o.tenant = "bench";
  o.flags = sys == SYS_LIB_DEFAULT ? 0
            : sys == SYS_LIB_NOSHM ? KVS_CLIENT_NO_SHM
                                   : KVS_CLIENT_NO_SHM | KVS_CLIENT_NO_STREAM;
  kvs_client *c = NULL;
  if (kvs_client_create(&o, &c) != KVS_OK) {
    fprintf(stderr, "libkvstash client: %s\n", kvs_client_errmsg(c));
    kvs_client_free(c);
    return NULL;
  }
  return c;
}

/* Stores n entries of `size` bytes of raw KV (1 layer, size/8192 heads of
 * 128 dims, 16 tokens) for the libkvstash rows; 0 when the size does not fit
 * that shape. */
static int lib_fill(size_t size, int n, const uint8_t *value) {
  g_lib_ok = 0;
  free(g_lkeys);
  g_lkeys = NULL;
  if (size % 8192 || size / 8192 < 1 || size / 8192 > KVS_MAX_KV_HEADS) return 0;
  kvs_layout l = {
      1, (uint32_t)(size / 8192), 128, KVS_DTYPE_F16, KVS_ROPE_NEOX, 128, 1e4f, 1.f, 0, 0, 0, 0};
  g_llay = l;
  g_lmodel = kvs_hash128_buf("bench-lib", 9);
  g_lkeys = calloc((size_t)n, sizeof *g_lkeys);
  kvs_client *c = lib_client(SYS_LIB_REQREP);
  int ok = g_lkeys && c;
  uint64_t s = size * 7 + 1;
  for (int k = 0; ok && k < n; k++) {
    lentry *e = &g_lkeys[k];
    for (int i = 0; i < 16; i++)
      e->tok[i] = (int32_t)(kvs_synth_rand(&s) % 49152);
    kvs_span sp = {0, 16};
    ok = kvs_chunk_spans(&g_lmodel, e->tok, 16, &sp, 1, &e->ch) == KVS_OK &&
         kvs_put(c, &g_lmodel, e->tok, &e->ch, &g_llay, value, NULL) == KVS_OK;
    if (!ok) fprintf(stderr, "libkvstash fill: %s\n", kvs_client_errmsg(c));
  }
  kvs_client_free(c);
  g_lib_ok = ok;
  return ok;
}

typedef struct run_cfg {
  int sys, put, clients;
  int fill; /* put every key once, one client */
  size_t size;
  int n_keys;
  kentry *keys;
  const uint8_t *value;
  uint64_t checksum;
  uint32_t profile;
  double seconds;
  const uint64_t *seg_end; /* the values' segment table (NULL: one segment) */
  uint32_t n_seg;
} run_cfg;

typedef struct thr {
  const run_cfg *rc;
  int id;
  pthread_barrier_t *bar;
  double *lat;
  long n, errors;
} thr;

static void *thr_main(void *p) {
  thr *t = p;
  const run_cfg *rc = t->rc;
  kconn kc;
  sconn sc, wc[MAX_WINDOW];
  sc.fd = -1;
  for (int j = 0; j < MAX_WINDOW; j++)
    wc[j].fd = -1;
  redisContext *rcx = NULL;
  kvs_client *lib = NULL;
  int ok = 0, nw = IS_WINDOW(rc->sys) ? g_window : 0;
  uint8_t *lbuf = IS_LIB(rc->sys) && !rc->put ? malloc(rc->size) : NULL;
  if (IS_LIB(rc->sys)) {
    /* one untimed get first: the client's first get asks for the stream and
       maps the segment */
    ok = g_lib_ok && lbuf && (lib = lib_client(rc->sys)) != NULL &&
         kvs_get(lib, &g_lmodel, g_lkeys[0].tok, &g_lkeys[0].ch, &g_llay, lbuf, rc->size, NULL) ==
             KVS_OK;
  } else if (nw) {
    char rurl[64];
    snprintf(rurl, sizeof rurl, "tcp://127.0.0.1:%d", g_redis_port);
    ok = 1;
    for (int j = 0; j < nw; j++)
      ok = ok && sconnect(&wc[j], rc->sys == SYS_KVS_STREAM_W ? g_kvs_stream : rurl) == 0;
  } else if (rc->sys == SYS_KVS_STREAM || rc->sys == SYS_KVS_STREAM_IPC)
    ok = sconnect(&sc, rc->sys == SYS_KVS_STREAM ? g_kvs_stream : g_kvs_stream_ipc) == 0;
  else if (IS_NNG(rc->sys))
    ok = kconnect(&kc, rc->sys == SYS_KVS_TCP                             ? g_kvs_tcp
                       : rc->sys == SYS_KVS_IPC || rc->sys == SYS_KVS_SHM ? g_kvs_ipc
                       : rc->sys == SYS_BARE_TCP                          ? g_bare_tcp
                                                                          : g_bare_ipc) == 0;
  else {
    rcx = rc->sys == SYS_REDIS_TCP ? redisConnect("127.0.0.1", g_redis_port)
                                   : redisConnectUnix(g_redis_sock);
    ok = rcx && !rcx->err;
  }
  kvs_client_counters k0 = {0};
  if (lib) kvs_client_get_counters(lib, &k0);
  pthread_barrier_wait(t->bar);
  if (!ok) {
    t->errors++;
    kvs_client_free(lib);
    free(lbuf);
    if (rcx) redisFree(rcx);
    for (int j = 0; j < MAX_WINDOW; j++)
      sclose(&wc[j]);
    return NULL;
  }
  uint64_t rs = 0x1234 + (uint64_t)t->id * 977;
  uint8_t *rbuf = (rcx || nw || rc->sys == SYS_KVS_SHM || rc->sys == SYS_KVS_STREAM ||
                   rc->sys == SYS_KVS_STREAM_IPC) &&
                          !rc->put
                      ? malloc(rc->size + 2)
                      : NULL;
  shm_reader sr;
  memset(&sr, 0, sizeof sr);
  double t_end = now_s() + rc->seconds;
  long i = 0;
  while (t->n < MAX_OPS_PER_THREAD) {
    int k;
    if (rc->fill) {
      if (i >= rc->n_keys) break;
      k = (int)i;
    } else if (rc->put) /* each client its own keys */
      k = (int)((t->id + (long)rc->clients * i) % rc->n_keys);
    else
      k = (int)(kvs_synth_rand(&rs) % (uint64_t)rc->n_keys);
    i++;
    const kentry *e = &rc->keys[k];
    double t0 = now_s();
    int good = 0;
    if (lib) {
      const lentry *le = &g_lkeys[k % rc->n_keys];
      good = !rc->put &&
             kvs_get(lib, &g_lmodel, le->tok, &le->ch, &g_llay, lbuf, rc->size, NULL) == KVS_OK;
    } else if (nw) {
      good = rbuf && !rc->put &&
             striped_get(wc, nw, rc->sys == SYS_REDIS_TCP_W, e, rc->seg_end, rc->n_seg, rbuf,
                         rc->size) == (long)rc->size;
    } else if (rc->sys == SYS_KVS_SHM && !rc->put) {
      good = rbuf && shm_get(&kc, &sr, e, rbuf, rc->size);
    } else if (rc->sys == SYS_KVS_STREAM || rc->sys == SYS_KVS_STREAM_IPC) {
      good = rbuf && !rc->put && stream_get(&sc, e, rbuf, rc->size) == (long)rc->size;
    } else if (!rcx) {
      nng_msg *m = NULL;
      if (rc->put) {
        m = kput_msg(e, rc->value, rc->size, rc->checksum, rc->profile, rc->seg_end, rc->n_seg);
      } else if (nng_msg_alloc(&m, e->get_len) == 0) {
        memcpy(nng_msg_body(m), e->frame_get, e->get_len);
      }
      size_t rl = 0;
      good = m && kcall(&kc, m, &rl) == 0 &&
             (rc->put || rl == KVS_WIRE_HDR_SIZE + KVS_WIRE_GET_RESP_FIXED + rc->size);
    } else {
      if (rc->put) {
        redisReply *r = redisCommand(rcx, "SET %b %b", e->key.b, (size_t)16, rc->value, rc->size);
        good = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
      } else {
        good = rbuf && redis_raw_get(rcx->fd, e->key.b, rbuf, rc->size + 2) == (long)rc->size;
      }
    }
    double t1 = now_s();
    if (good)
      t->lat[t->n++] = t1 - t0;
    else if (++t->errors > 100)
      break;
    if (t1 >= t_end && !rc->fill) break;
    if (t1 >= t_end + 120) break; /* a fill is bounded too */
  }
  if (sr.last_lease) { /* give the last range back */
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) == 0) {
      kvs_wire_hdr h;
      uint8_t f[KVS_WIRE_HDR_SIZE + 8];
      kvs_wire_hdr_init(&h, KVS_OP_RELEASE, 4, "bench", NULL, 0);
      h.payload_len = 8;
      kvs_wire_hdr_encode(&h, f);
      memcpy(f + KVS_WIRE_HDR_SIZE, &sr.last_lease, 8);
      nng_msg_append(m, f, sizeof f);
      size_t rl;
      (void)kcall(&kc, m, &rl);
    }
  }
  if (sr.map) munmap((void *)sr.map, sr.map_len);
  free(rbuf);
  if (lib) {
    kvs_client_counters k1;
    kvs_client_get_counters(lib, &k1);
    atomic_fetch_add(&g_lib_shm, k1.shm_gets - k0.shm_gets);
    atomic_fetch_add(&g_lib_stream, k1.stream_gets - k0.stream_gets);
    kvs_client_free(lib);
    free(lbuf);
    return NULL;
  }
  for (int j = 0; j < MAX_WINDOW; j++)
    sclose(&wc[j]);
  if (rcx)
    redisFree(rcx);
  else if (nw)
    ;
  else if (rc->sys == SYS_KVS_STREAM || rc->sys == SYS_KVS_STREAM_IPC)
    sclose(&sc);
  else
    nng_close(kc.s);
  return NULL;
}

static int dcmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct result {
  double rps, gbs, p50, p99;
  double cpu_us; /* server CPU (user + system) per request */
  long n, errors;
} result;

/* CPU seconds (user + system) a process has used, from /proc/PID/stat. */
static double proc_cpu_s(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  unsigned long ut = 0, st = 0;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    return 0;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static result run(const run_cfg *rc) {
  thr t[MAX_CLIENTS];
  pthread_t th[MAX_CLIENTS];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)rc->clients + 1);
  for (int i = 0; i < rc->clients; i++) {
    t[i] = (thr){rc, i, &bar, malloc(sizeof(double) * MAX_OPS_PER_THREAD), 0, 0};
    pthread_create(&th[i], NULL, thr_main, &t[i]);
  }
  pid_t server = rc->sys == SYS_BARE_TCP || rc->sys == SYS_BARE_IPC ? g_bare_pid
                 : IS_NNG(rc->sys) || IS_LIB(rc->sys)               ? g_kvs_pid
                                                                    : g_redis_pid;
  double cpu0 = proc_cpu_s(server);
  pthread_barrier_wait(&bar);
  double t0 = now_s();
  for (int i = 0; i < rc->clients; i++)
    pthread_join(th[i], NULL);
  double el = now_s() - t0;
  double cpu = proc_cpu_s(server) - cpu0;
  pthread_barrier_destroy(&bar);
  long n = 0, err = 0;
  for (int i = 0; i < rc->clients; i++) {
    n += t[i].n;
    err += t[i].errors;
  }
  double *all = malloc(sizeof(double) * (size_t)(n ? n : 1));
  long k = 0;
  for (int i = 0; i < rc->clients; i++) {
    memcpy(all + k, t[i].lat, sizeof(double) * (size_t)t[i].n);
    k += t[i].n;
    free(t[i].lat);
  }
  qsort(all, (size_t)n, sizeof(double), dcmp);
  result r = {0};
  r.n = n;
  r.errors = err;
  r.rps = (double)n / el;
  r.cpu_us = n ? cpu / (double)n * 1e6 : 0;
  r.gbs = r.rps * (double)rc->size / 1e9;
  r.p50 = n ? all[n / 2] * 1e6 : 0;
  r.p99 = n ? all[(size_t)((double)(n - 1) * 0.99)] * 1e6 : 0;
  free(all);
  return r;
}

/* a / b, 0 where b was not measured (--only) */
static double ratio(double a, double b) { return b > 0 ? a / b : 0; }

/* The round with the median req/s (its p99 with it) of n rounds. */
#define MAX_REPS 15
static int g_reps = 1;
static int g_sys_on[N_SYS];

static int rps_cmp(const void *a, const void *b) {
  double x = ((const result *)a)->rps, y = ((const result *)b)->rps;
  return x < y ? -1 : x > y;
}

static result median_result(const result *r, int n) {
  result t[MAX_REPS];
  memcpy(t, r, sizeof(result) * (size_t)n);
  qsort(t, (size_t)n, sizeof(result), rps_cmp);
  return t[n / 2];
}

/* --------------------------------------------------------------- setup */
static int start_servers(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/kvs-bench-svc-XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  int kport = free_port();
  g_redis_port = free_port();
  snprintf(g_kvs_tcp, sizeof g_kvs_tcp, "tcp://127.0.0.1:%d", kport);
  snprintf(g_kvs_ipc, sizeof g_kvs_ipc, "ipc://%s/kvs.sock", g_dir);
  snprintf(g_kvs_stream, sizeof g_kvs_stream, "tcp+stream://127.0.0.1:%d", free_port());
  snprintf(g_kvs_stream_ipc, sizeof g_kvs_stream_ipc, "ipc+stream://%s/kvs-stream.sock", g_dir);
  snprintf(g_redis_sock, sizeof g_redis_sock, "%s/redis.sock", g_dir);
  snprintf(g_bare_tcp, sizeof g_bare_tcp, "tcp://127.0.0.1:%d", free_port());
  snprintf(g_bare_ipc, sizeof g_bare_ipc, "ipc://%s/bare.sock", g_dir);
  g_bare_size = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g_bare_size == MAP_FAILED) return -1;
  *g_bare_size = 1;
  g_bare_pid = fork(); /* before this process has any thread */
  if (g_bare_pid == 0) bare_server();
  char a_data[300], a_listen[1000], log[300];
  snprintf(a_data, sizeof a_data, "--data_dir=%s/data", g_dir);
  snprintf(a_listen, sizeof a_listen, "--listen=%s,%s,%s,%s", g_kvs_tcp, g_kvs_ipc, g_kvs_stream,
           g_kvs_stream_ipc);
  snprintf(log, sizeof log, "%s/kvstashd.log", g_dir);
  char *kargv[] = {
      KVS_BENCH_KVSTASHD, a_data,          a_listen,      "--http=",  "--durability=sync",
      "--ram_bytes=3G",   "--max_msg=64M", "--workers=8", "--shm=on", NULL};
  g_kvs_pid = spawn(kargv, log);
  char port[16], rlog[300];
  snprintf(port, sizeof port, "%d", g_redis_port);
  snprintf(rlog, sizeof rlog, "%s/redis.log", g_dir);
  char *rargv[] = {"redis-server",
                   "--port",
                   port,
                   "--bind",
                   "127.0.0.1",
                   "--unixsocket",
                   g_redis_sock,
                   "--unixsocketperm",
                   "700",
                   "--save",
                   "",
                   "--appendonly",
                   "no",
                   "--dir",
                   g_dir,
                   "--logfile",
                   rlog,
                   NULL};
  g_redis_pid = spawn(rargv, rlog);
  for (int i = 0; i < 100; i++) { /* both up within 10 s */
    sleep_ms(100);
    kconn c;
    int kok = 0, rok = 0;
    if (kconnect(&c, g_kvs_tcp) == 0) {
      nng_close(c.s);
      kok = 1;
    }
    redisContext *r = redisConnectUnix(g_redis_sock);
    if (r && !r->err) rok = 1;
    if (r) redisFree(r);
    if (kok && rok) return 0;
  }
  return -1;
}

static int parse_list(const char *s, long *out, int max) {
  int n = 0;
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s", s);
  for (char *sv = NULL, *t = strtok_r(tmp, ",", &sv); t && n < max; t = strtok_r(NULL, ",", &sv)) {
    char *end;
    long v = strtol(t, &end, 10);
    if (*end == 'K' || *end == 'k')
      v <<= 10;
    else if (*end == 'M' || *end == 'm')
      v <<= 20;
    out[n++] = v;
  }
  return n;
}

int main(int argc, char **argv) {
  if (kvs_bench_version(argc, argv, "kvs-bench-service")) return 0;
  long sizes[8] = {64 << 10, 1 << 20, 8 << 20}, clients[8] = {1, 4, 16, 64};
  int n_sizes = 3, n_clients = 4, do_tokens = 1, do_put = 1;
  const char *only = NULL;
  double seconds = 1.0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) {
      sizes[0] = 1 << 20;
      n_sizes = 1;
      clients[0] = 1;
      clients[1] = 4;
      n_clients = 2;
      seconds = 0.5;
    } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
      seconds = atof(argv[++i]);
    } else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) {
      n_sizes = parse_list(argv[++i], sizes, 8);
    } else if (!strcmp(argv[i], "--clients") && i + 1 < argc) {
      n_clients = parse_list(argv[++i], clients, 8);
    } else if (!strcmp(argv[i], "--tokens-only")) {
      n_sizes = 0;
    } else if (!strcmp(argv[i], "--no-put")) {
      do_put = 0;
    } else if (!strcmp(argv[i], "--no-tokens")) {
      do_tokens = 0;
    } else if (!strcmp(argv[i], "--window") && i + 1 < argc) {
      g_window = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      g_reps = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
      only = argv[++i];
    } else {
      fprintf(stderr, "usage: kvs-bench-service [--quick] [--seconds S] [--sizes 64K,1M,8M] "
                      "[--clients 1,4,16,64] [--no-put] [--no-tokens] [--tokens-only] "
                      "[--window W] [--reps N] [--only sys,sys,...]\n");
      return 2;
    }
  }
  if (seconds <= 0 || seconds > 30) seconds = 1.0;
  if (g_window < 1 || g_window > MAX_WINDOW) g_window = 4;
  if (g_reps < 1 || g_reps > MAX_REPS) g_reps = 1;
  for (int sys = 0; sys < N_SYS; sys++) { /* --only: the systems named by their JSON keys */
    char pat[64];
    snprintf(pat, sizeof pat, ",%s,", sys_key[sys]);
    char list[512];
    snprintf(list, sizeof list, ",%s,", only ? only : "");
    g_sys_on[sys] = !only || strstr(list, pat) != NULL;
  }
  for (int i = 0; i < n_clients; i++)
    if (clients[i] < 1 || clients[i] > MAX_CLIENTS) clients[i] = 1;
  atexit(cleanup);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  if (start_servers() != 0) {
    fprintf(stderr, "could not start kvstashd (%s) and redis-server\n", KVS_BENCH_KVSTASHD);
    return 1;
  }
  printf("kvs-bench-service: kvstashd (durability=sync) vs redis-server (no persistence), "
         "%.1f s per point, %ld cores\n",
         seconds, sysconf(_SC_NPROCESSORS_ONLN));
  printf("%-14s %-4s %7s %7s %10s %8s %9s %9s %9s %6s\n", "system", "op", "size", "clients",
         "req/s", "GB/s", "p50 us", "p99 us", "srvCPUus", "errors");
  /* the last line's JSON (bench_json.h), grown as rows come */
  cJSON *jf = cJSON_CreateObject();
  cJSON_AddStringToObject(jf, "bench", "service");
  bench_json_num(jf, "seconds", "%.2f", seconds);
  cJSON *jrows = cJSON_AddArrayToObject(jf, "rows");
  /* get ratios at 1 MiB: [client index] tcp vs tcp, ipc vs unix */
  double ratio_tcp[8] = {0}, ratio_ipc[8] = {0}, p99r_tcp[8] = {0}, p99r_ipc[8] = {0};
  double bare_tcp[8] = {0}, bare_ipc[8] = {0}, shm_unix[8] = {0};
  double ratio_stream[8] = {0}, p99r_stream[8] = {0}, ratio_sipc[8] = {0}, p99r_sipc[8] = {0};
  double ratio_win[8] = {0}, p99r_win[8] = {0}, win_vs_redis_best[8] = {0};
  double lib_vs_redis[3][8] = {{0}}, lib_p99r[3][8] = {{0}}; /* default, no-shm, req/rep */
  int have_1m = 0;
  for (int si = 0; si < n_sizes; si++) {
    size_t size = (size_t)sizes[si];
    int n_keys = (int)((256u << 20) / size);
    if (n_keys > 256) n_keys = 256;
    if (n_keys < 16) n_keys = 16;
    uint8_t *value = malloc(size);
    uint64_t s = size;
    for (size_t i = 0; i + 8 <= size; i += 8) {
      uint64_t r = kvs_synth_rand(&s);
      memcpy(value + i, &r, 8);
    }
    uint64_t ck = kvs_checksum64(value, size);
    /* stored as a KV entry is: in segments (30 layer groups + a prefix, as
     * libkvstash puts a 30-layer model's chunk), equal here */
    uint64_t seg_end[31];
    for (int g = 0; g < 31; g++)
      seg_end[g] = (uint64_t)size * (uint64_t)(g + 1) / 31u;
    kentry *keys = calloc((size_t)n_keys, sizeof *keys);
    for (int k = 0; k < n_keys; k++)
      kentry_init(&keys[k], (uint64_t)k + 1000000u * (uint64_t)si);
    for (int sys = 0; sys < N_SYS; sys++) { /* the working set, on both servers */
      if (sys == SYS_KVS_IPC || sys == SYS_REDIS_UNIX || sys == SYS_KVS_STREAM ||
          sys == SYS_KVS_STREAM_IPC || IS_WINDOW(sys) || IS_LIB(sys))
        continue; /* same servers */
      run_cfg fill = {sys, 1, 1, 1, size, n_keys, keys, value, ck, 0, seconds, seg_end, 31};
      result r = run(&fill);
      if (r.n != n_keys)
        fprintf(stderr, "fill of %s: %ld of %d keys\n", sys_name[sys], r.n, n_keys);
    }
    if ((g_sys_on[SYS_LIB_DEFAULT] || g_sys_on[SYS_LIB_NOSHM] || g_sys_on[SYS_LIB_REQREP]) &&
        !lib_fill(size, n_keys, value))
      fprintf(stderr, "no libkvstash rows at %zu bytes (not a multiple of 8 KiB up to 8 MiB)\n",
              size);
    for (int ci = 0; ci < n_clients; ci++) {
      static result res[N_SYS][2];
      memset(res, 0, sizeof res);
      *g_bare_size = size;
      static result reps[N_SYS][MAX_REPS];
      for (int op = do_put; op >= 0; op--) /* PUT, then GET (g_reps rounds, interleaved) */
        for (int rep = 0; rep < (op ? 1 : g_reps); rep++)
          for (int sys = 0; sys < N_SYS; sys++) {
            if (op == 1 && IS_READONLY(sys)) continue; /* bare server, shm, stream: GETs only */
            if (!g_sys_on[sys] || (IS_LIB(sys) && !g_lib_ok)) continue;
            run_cfg rc = {sys, op, (int)clients[ci], 0,       size, n_keys, keys, value,
                          ck,  0,  seconds,          seg_end, 31};
            result *r = op ? &res[sys][op] : &reps[sys][rep];
            atomic_store(&g_lib_shm, 0);
            atomic_store(&g_lib_stream, 0);
            *r = run(&rc);
            if (!op && rep == g_reps - 1) res[sys][0] = median_result(reps[sys], g_reps);
            printf("%-14s %-4s %6zuK %7ld %10.0f %8.3f %9.0f %9.0f %9.1f %6ld\n", sys_name[sys],
                   op ? "PUT" : "GET", size >> 10, clients[ci], r->rps, r->gbs, r->p50, r->p99,
                   r->cpu_us, r->errors);
            fflush(stdout);
            cJSON *jr = cJSON_CreateObject();
            cJSON_AddStringToObject(jr, "system", sys_key[sys]);
            cJSON_AddStringToObject(jr, "op", op ? "put" : "get");
            cJSON_AddNumberToObject(jr, "size", (double)size);
            cJSON_AddNumberToObject(jr, "clients", (double)clients[ci]);
            bench_json_num(jr, "rps", "%.1f", r->rps);
            bench_json_num(jr, "gbs", "%.4f", r->gbs);
            bench_json_num(jr, "p50_us", "%.1f", r->p50);
            bench_json_num(jr, "p99_us", "%.1f", r->p99);
            bench_json_num(jr, "server_cpu_us", "%.1f", r->cpu_us);
            cJSON_AddNumberToObject(jr, "errors", (double)r->errors);
            cJSON_AddItemToArray(jrows, jr);
            if (IS_LIB(sys)) { /* which path the gets took (counters of the clients) */
              unsigned long long a = atomic_load(&g_lib_shm), b = atomic_load(&g_lib_stream);
              printf("%-14s      (%ld gets: %llu in place, %llu requests by the byte stream)\n", "",
                     r->n, a, b);
              cJSON_AddNumberToObject(jr, "shm_gets", (double)a);
              cJSON_AddNumberToObject(jr, "stream_requests", (double)b);
            }
          }
      if (size == (1u << 20)) {
        have_1m = 1;
        ratio_tcp[ci] = ratio(res[SYS_KVS_TCP][0].rps, res[SYS_REDIS_TCP][0].rps);
        ratio_ipc[ci] = ratio(res[SYS_KVS_IPC][0].rps, res[SYS_REDIS_UNIX][0].rps);
        p99r_tcp[ci] = ratio(res[SYS_KVS_TCP][0].p99, res[SYS_REDIS_TCP][0].p99);
        p99r_ipc[ci] = ratio(res[SYS_KVS_IPC][0].p99, res[SYS_REDIS_UNIX][0].p99);
        bare_tcp[ci] = ratio(res[SYS_KVS_TCP][0].rps, res[SYS_BARE_TCP][0].rps);
        bare_ipc[ci] = ratio(res[SYS_KVS_IPC][0].rps, res[SYS_BARE_IPC][0].rps);
        shm_unix[ci] = ratio(res[SYS_KVS_SHM][0].rps, res[SYS_REDIS_UNIX][0].rps);
        ratio_stream[ci] = ratio(res[SYS_KVS_STREAM][0].rps, res[SYS_REDIS_TCP][0].rps);
        p99r_stream[ci] = ratio(res[SYS_KVS_STREAM][0].p99, res[SYS_REDIS_TCP][0].p99);
        ratio_sipc[ci] = ratio(res[SYS_KVS_STREAM_IPC][0].rps, res[SYS_REDIS_UNIX][0].rps);
        p99r_sipc[ci] = ratio(res[SYS_KVS_STREAM_IPC][0].p99, res[SYS_REDIS_UNIX][0].p99);
        ratio_win[ci] = ratio(res[SYS_KVS_STREAM_W][0].rps, res[SYS_REDIS_TCP_W][0].rps);
        p99r_win[ci] = ratio(res[SYS_KVS_STREAM_W][0].p99, res[SYS_REDIS_TCP_W][0].p99);
        double rb = res[SYS_REDIS_TCP][0].rps > res[SYS_REDIS_TCP_W][0].rps
                        ? res[SYS_REDIS_TCP][0].rps
                        : res[SYS_REDIS_TCP_W][0].rps;
        win_vs_redis_best[ci] = ratio(res[SYS_KVS_STREAM_W][0].rps, rb);
        for (int u = 0; u < 3; u++) {
          lib_vs_redis[u][ci] = ratio(res[SYS_LIB_DEFAULT + u][0].rps, res[SYS_REDIS_TCP][0].rps);
          lib_p99r[u][ci] = ratio(res[SYS_LIB_DEFAULT + u][0].p99, res[SYS_REDIS_TCP][0].p99);
        }
      }
    }
    for (int k = 0; k < n_keys; k++)
      kentry_free(&keys[k]);
    free(keys);
    free(value);
  }
  if (have_1m) {
    printf("\nGET at 1 MiB, kvstashd / redis:\n");
    cJSON *ja = cJSON_AddArrayToObject(jf, "get_ratio_vs_redis_1MiB");
    for (int ci = 0; ci < n_clients; ci++) {
      printf("  %3ld clients: req/s tcp %.2fx, ipc-vs-unix %.2fx; p99 tcp %.2fx, ipc-vs-unix %.2fx;"
             " kvstashd / bare nng: tcp %.2fx, ipc %.2fx; shm-lease vs unix %.2fx;"
             " stream tcp %.2fx (p99 %.2fx), stream ipc-vs-unix %.2fx (p99 %.2fx)\n",
             clients[ci], ratio_tcp[ci], ratio_ipc[ci], p99r_tcp[ci], p99r_ipc[ci], bare_tcp[ci],
             bare_ipc[ci], shm_unix[ci], ratio_stream[ci], p99r_stream[ci], ratio_sipc[ci],
             p99r_sipc[ci]);
      printf("               one caller on %d connections: stream-w / redis tcp-w %.2fx (p99 "
             "%.2fx), stream-w / the better of redis tcp and tcp-w %.2fx\n",
             g_window, ratio_win[ci], p99r_win[ci], win_vs_redis_best[ci]);
      printf("               libkvstash kvs_get / redis tcp: default %.2fx (p99 %.2fx), no-shm "
             "%.2fx (p99 %.2fx), req/rep %.2fx (p99 %.2fx)\n",
             lib_vs_redis[0][ci], lib_p99r[0][ci], lib_vs_redis[1][ci], lib_p99r[1][ci],
             lib_vs_redis[2][ci], lib_p99r[2][ci]);
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "clients", (double)clients[ci]);
      bench_json_num(o, "tcp", "%.3f", ratio_tcp[ci]);
      bench_json_num(o, "ipc_vs_unix", "%.3f", ratio_ipc[ci]);
      bench_json_num(o, "p99_ratio_tcp", "%.3f", p99r_tcp[ci]);
      bench_json_num(o, "p99_ratio_ipc_vs_unix", "%.3f", p99r_ipc[ci]);
      bench_json_num(o, "vs_bare_nng_tcp", "%.3f", bare_tcp[ci]);
      bench_json_num(o, "vs_bare_nng_ipc", "%.3f", bare_ipc[ci]);
      bench_json_num(o, "shm_vs_unix", "%.3f", shm_unix[ci]);
      bench_json_num(o, "stream_tcp", "%.3f", ratio_stream[ci]);
      bench_json_num(o, "p99_ratio_stream_tcp", "%.3f", p99r_stream[ci]);
      cJSON_AddItemToArray(ja, o);
    }
    /* libkvstash clients (kvs_get) against Redis over TCP, by client count */
    ja = cJSON_AddArrayToObject(jf, "lib_get_ratio_vs_redis_1MiB");
    for (int ci = 0; ci < n_clients; ci++) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "clients", (double)clients[ci]);
      bench_json_num(o, "default", "%.3f", lib_vs_redis[0][ci]);
      bench_json_num(o, "p99_default", "%.3f", lib_p99r[0][ci]);
      bench_json_num(o, "no_shm", "%.3f", lib_vs_redis[1][ci]);
      bench_json_num(o, "p99_no_shm", "%.3f", lib_p99r[1][ci]);
      bench_json_num(o, "reqrep", "%.3f", lib_vs_redis[2][ci]);
      bench_json_num(o, "p99_reqrep", "%.3f", lib_p99r[2][ci]);
      cJSON_AddItemToArray(ja, o);
    }
    /* the byte-stream GET path against Redis over TCP, by client count */
    ja = cJSON_AddArrayToObject(jf, "stream_get_ratio_vs_redis_1MiB");
    for (int ci = 0; ci < n_clients; ci++) {
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "clients", (double)clients[ci]);
      bench_json_num(o, "get_ratio_vs_redis", "%.3f", ratio_stream[ci]);
      bench_json_num(o, "p99_ratio_vs_redis", "%.3f", p99r_stream[ci]);
      bench_json_num(o, "ipc_vs_unix", "%.3f", ratio_sipc[ci]);
      bench_json_num(o, "p99_ratio_ipc_vs_unix", "%.3f", p99r_sipc[ci]);
      cJSON_AddNumberToObject(o, "window", g_window);
      bench_json_num(o, "window_ratio_vs_redis_window", "%.3f", ratio_win[ci]);
      bench_json_num(o, "window_p99_ratio", "%.3f", p99r_win[ci]);
      bench_json_num(o, "window_vs_redis_best", "%.3f", win_vs_redis_best[ci]);
      cJSON_AddItemToArray(ja, o);
    }
  }
  if (do_tokens) {
    /* 256 tokens of SmolLM2-135M-shaped KV: raw fp16 in Redis, dense in kvstashd */
    kvs_layout l = {30, 3, 64, KVS_DTYPE_F16, KVS_ROPE_NEOX, 64, 100000.f, 1.f, 0, 0, 0, 0};
    uint32_t T = 256;
    size_t raw = (size_t)(2ull * l.n_layers * T * l.n_kv_heads * l.head_dim * 2);
    uint16_t *kv = malloc(raw);
    kvs_synth_kv(&l, T, 42, kv);
    kvs_codec_params p;
    kvs_codec_params_default(KVS_PROFILE_DENSE, l.n_layers, &p);
    size_t cap = kvs_codec_encode_bound(&p, &l, T), enc_len = 0;
    uint8_t *enc = malloc(cap);
    if (kvs_codec_encode(&p, &l, T, kv, enc, cap, &enc_len) == KVS_OK) {
      kentry keys[16];
      for (int k = 0; k < 16; k++)
        kentry_init(&keys[k], 9000000u + (uint64_t)k);
      /* segment tables as libkvstash stores them: the codec's (prefix + one
       * per layer group) for kvstashd; 30 layers + a prefix for raw fp16 */
      uint64_t kseg[512], rseg[31];
      uint32_t n_kseg = 0;
      kvs_codec_info *info = malloc(sizeof *info);
      if (info && kvs_codec_parse_header(enc, enc_len, info) == KVS_OK &&
          info->n_segments + 1 <= 512) {
        n_kseg = info->n_segments + 1;
        for (uint32_t g = 0; g < n_kseg; g++)
          kseg[g] = info->seg_offset[g];
        if (kseg[n_kseg - 1] != enc_len) n_kseg = 0; /* then one segment */
      }
      free(info);
      for (int g = 0; g < 31; g++)
        rseg[g] = (uint64_t)raw * (uint64_t)(g + 1) / 31u;
      printf("\nKV tokens/s: 256-token chunk, %zu B raw fp16 (redis) vs %zu B dense (kvstashd), "
             "%.2f bits/elem\n",
             raw, enc_len, 8.0 * (double)enc_len / ((double)raw / 2));
      cJSON *jt = cJSON_AddObjectToObject(jf, "tokens");
      cJSON_AddNumberToObject(jt, "chunk_tokens", T);
      cJSON_AddNumberToObject(jt, "raw_bytes", (double)raw);
      cJSON_AddNumberToObject(jt, "dense_bytes", (double)enc_len);
      cJSON *jtr = cJSON_AddArrayToObject(jt, "rows");
      long tc[2] = {1, 4};
      for (int kv_side = 1; kv_side >= 0; kv_side--) { /* the chunks, put once on each side */
        size_t sz = kv_side ? enc_len : raw;
        const uint8_t *val = kv_side ? enc : (const uint8_t *)kv;
        run_cfg fill = {kv_side ? SYS_KVS_IPC : SYS_REDIS_TCP,
                        1,
                        1,
                        1,
                        sz,
                        16,
                        keys,
                        val,
                        kvs_checksum64(val, sz),
                        KVS_PROFILE_DENSE,
                        seconds,
                        kv_side ? (n_kseg ? kseg : NULL) : rseg,
                        kv_side ? n_kseg : 31};
        result r = run(&fill);
        if (r.n != 16) fprintf(stderr, "tokens fill: %ld of 16 chunks\n", r.n);
      }
      for (int ci = 0; ci < 2; ci++) {
        double tps[N_SYS] = {0};
        static result reps[N_SYS][MAX_REPS];
        for (int rep = 0; rep < g_reps; rep++)
          for (int sys = 0; sys < N_SYS; sys++) {
            if (sys == SYS_BARE_TCP || sys == SYS_BARE_IPC || IS_LIB(sys) || !g_sys_on[sys])
              continue;
            int is_kvs = IS_NNG(sys);
            run_cfg rc = {sys,
                          0,
                          (int)tc[ci],
                          0,
                          is_kvs ? enc_len : raw,
                          16,
                          keys,
                          NULL,
                          0,
                          KVS_PROFILE_DENSE,
                          seconds,
                          is_kvs ? (n_kseg ? kseg : NULL) : rseg,
                          is_kvs ? n_kseg : 31};
            reps[sys][rep] = run(&rc);
            result *r = &reps[sys][rep];
            printf("  %-14s %ld clients: %10.0f tokens/s (%.0f req/s, p99 %.0f us)\n",
                   sys_name[sys], tc[ci], r->rps * T, r->rps, r->p99);
            fflush(stdout);
            if (rep == g_reps - 1) tps[sys] = median_result(reps[sys], g_reps).rps * T;
          }
        double rt = ratio(tps[SYS_KVS_TCP], tps[SYS_REDIS_TCP]);
        double ri = ratio(tps[SYS_KVS_IPC], tps[SYS_REDIS_UNIX]);
        double rs = ratio(tps[SYS_KVS_SHM], tps[SYS_REDIS_UNIX]);
        double rst = ratio(tps[SYS_KVS_STREAM], tps[SYS_REDIS_TCP]);
        double rsi = ratio(tps[SYS_KVS_STREAM_IPC], tps[SYS_REDIS_UNIX]);
        double rww = ratio(tps[SYS_KVS_STREAM_W], tps[SYS_REDIS_TCP_W]);
        double rwb = ratio(tps[SYS_KVS_STREAM_W], fmax(tps[SYS_REDIS_TCP], tps[SYS_REDIS_TCP_W]));
        printf("  -> dense kvstashd / raw redis: tcp %.2fx, ipc-vs-unix %.2fx, shm-vs-unix %.2fx, "
               "stream-vs-tcp %.2fx, stream-ipc-vs-unix %.2fx, stream-w-vs-tcp-w %.2fx "
               "(vs the better redis tcp row %.2fx)\n",
               rt, ri, rs, rst, rsi, rww, rwb);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "clients", (double)tc[ci]);
        bench_json_num(o, "kvs_tcp", "%.0f", tps[SYS_KVS_TCP]);
        bench_json_num(o, "kvs_ipc", "%.0f", tps[SYS_KVS_IPC]);
        bench_json_num(o, "kvs_shm", "%.0f", tps[SYS_KVS_SHM]);
        bench_json_num(o, "redis_tcp", "%.0f", tps[SYS_REDIS_TCP]);
        bench_json_num(o, "redis_unix", "%.0f", tps[SYS_REDIS_UNIX]);
        bench_json_num(o, "ratio_tcp", "%.3f", rt);
        bench_json_num(o, "ratio_ipc_vs_unix", "%.3f", ri);
        bench_json_num(o, "ratio_shm_vs_unix", "%.3f", rs);
        bench_json_num(o, "kvs_stream_tcp", "%.0f", tps[SYS_KVS_STREAM]);
        bench_json_num(o, "ratio_stream_vs_tcp", "%.3f", rst);
        bench_json_num(o, "ratio_stream_ipc_vs_unix", "%.3f", rsi);
        cJSON_AddNumberToObject(o, "window", g_window);
        bench_json_num(o, "kvs_stream_tcp_window", "%.0f", tps[SYS_KVS_STREAM_W]);
        bench_json_num(o, "redis_tcp_window", "%.0f", tps[SYS_REDIS_TCP_W]);
        bench_json_num(o, "ratio_window", "%.3f", rww);
        bench_json_num(o, "ratio_window_vs_redis_best", "%.3f", rwb);
        cJSON_AddItemToArray(jtr, o);
      }
      for (int k = 0; k < 16; k++)
        kentry_free(&keys[k]);
    } else {
      printf("\ndense encode failed: tokens/s comparison skipped\n");
    }
    free(enc);
    free(kv);
  }
  int rc = bench_json_print(jf);
  free(g_lkeys);
  return rc;
}
