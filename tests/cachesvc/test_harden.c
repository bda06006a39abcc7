/* Hardening tests of kvstashd (issue 19): what a hostile or unlucky client,
 * and a damaged disk, must not be able to do to the service. The real daemon
 * on loopback, as in test_svc.c; every wait bounded in count and time, no
 * timed assertion (a bound is only ever a generous "it did happen"). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvs_test.h"
#include "svc_helper.h"

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Open descriptors of a process (its /proc/PID/fd entries), -1 if unreadable. */
static int count_fds(pid_t pid) {
  char p[64];
  snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(p);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

static int tcp_dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* --------------------------------------------------- HTTP control plane */
/* A header that never ends: the daemon answers an error or closes the
 * connection once the header block passes its limit, instead of buffering
 * all of it (and waiting for more forever); the control plane goes on. */
static void test_http_header_limit(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--admin_token=adm-secret", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  int fd = tcp_dial(d.http_port);
  CU_ASSERT_FATAL(fd >= 0);
  struct timeval tv = {20, 0}; /* generous: the daemon acts after 16 KiB, at once */
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const char *start = "GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Big: ";
  CU_ASSERT(write(fd, start, strlen(start)) == (ssize_t)strlen(start));
  char chunk[4096];
  memset(chunk, 'a', sizeof chunk);
  size_t sent = 0;
  for (int i = 0; i < 64; i++) { /* 256 KiB of one header line, no end */
    ssize_t w = send(fd, chunk, sizeof chunk, MSG_NOSIGNAL);
    if (w <= 0) break; /* closed on us already: fine */
    sent += (size_t)w;
  }
  char ans[512];
  ssize_t r = recv(fd, ans, sizeof ans - 1, 0);
  int timed_out = r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  CU_ASSERT(!timed_out); /* an answer or EOF, not a server still reading */
  if (r > 0) {
    ans[r] = 0;
    CU_ASSERT(strncmp(ans, "HTTP/1.1 4", 10) == 0);
  }
  close(fd);
  fprintf(stderr, "http_header_limit: sent %zu header bytes, answer %zd bytes%s\n", sent, r,
          timed_out ? " (timed out)" : "");
  char *body = NULL;
  CU_ASSERT_EQUAL(th_http(d.http_port, "GET", "/health", &body), 200);
  free(body);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* ------------------------------------------------ byte-stream descriptors */
/* Connections the peer closed give their descriptor back promptly, without
 * waiting for the next connection to arrive. */
static void test_stream_fd_close(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  CU_ASSERT_FATAL(th_daemon_start(&d, NULL) == 0);
  int base = count_fds(d.pid);
  CU_ASSERT_FATAL(base > 0);
  enum { N = 60 };
  th_sconn s[N];
  int opened = 0;
  for (int i = 0; i < N; i++) {
    if (th_sconnect(&s[i], d.surl, "t", NULL, 10000) != 0) break;
    CU_ASSERT_EQUAL(th_scall(&s[i], KVS_OP_PING, NULL, 0, NULL, NULL), KVS_OK);
    opened++;
  }
  CU_ASSERT_EQUAL(opened, N);
  int during = count_fds(d.pid);
  CU_ASSERT(during >= base + opened - 4); /* the count does see them (base: +- a probe) */
  for (int i = 0; i < opened; i++)
    th_sclose(&s[i]);
  /* no new connection from here on: the daemon must notice by itself */
  int now = during;
  for (int i = 0; i < 100 && now > base + 2; i++) { /* at most 10 s */
    sleep_ms(100);
    now = count_fds(d.pid);
  }
  fprintf(stderr, "stream_fd_close: fds %d before, %d with %d connections, %d after close\n", base,
          during, opened, now);
  CU_ASSERT(now <= base + 2);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* ------------------------------------------------- a reader that never reads */
/* A GET frame of the whole value of ch (tenant "t", no token). */
static uint8_t *get_frame(const th_chunk *ch, uint64_t id, size_t *n) {
  kvs_wire_get_req g = {.key = ch->key,
                        .model = ch->model,
                        .flags = 0,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = ch->n_tokens,
                        .tokens_le = (const uint8_t *)ch->tokens};
  size_t pl = kvs_wire_get_req_size(&g);
  uint8_t *f = malloc(KVS_WIRE_HDR_SIZE + pl);
  kvs_wire_hdr h;
  kvs_wire_hdr_init(&h, KVS_OP_GET, id, "t", NULL, 0);
  h.payload_len = (uint32_t)pl;
  kvs_wire_hdr_encode(&h, f);
  kvs_wire_get_req_encode(&g, f + KVS_WIRE_HDR_SIZE, pl, NULL);
  *n = KVS_WIRE_HDR_SIZE + pl;
  return f;
}

static int write_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

/* An SP (nng) REQ peer on a plain TCP socket with a tiny receive buffer: it
 * sends n pipelined GETs of ch and never reads an answer. -1 on failure. */
static int attacker_start(int port, const th_chunk *ch, int n) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  /* SP over TCP: "\0SP\0", protocol (REQ0 = 48) big-endian, 2 zero bytes */
  static const uint8_t hello[8] = {0, 'S', 'P', 0, 0, 48, 0, 0};
  uint8_t peer[8];
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || write_all(fd, hello, 8) != 0 ||
      recv(fd, peer, 8, MSG_WAITALL) != 8 || peer[5] != 49) {
    close(fd);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    size_t fl;
    uint8_t *f = get_frame(ch, 1000 + (uint64_t)i, &fl);
    uint8_t pre[12];
    uint64_t len = fl + 4; /* the REQ backtrace (request id, top bit set) + the frame */
    for (int k = 0; k < 8; k++)
      pre[k] = (uint8_t)(len >> (56 - 8 * k));
    uint32_t rid = 0x80000000u | (uint32_t)(i + 1);
    for (int k = 0; k < 4; k++)
      pre[8 + k] = (uint8_t)(rid >> (24 - 8 * k));
    int ok = write_all(fd, pre, sizeof pre) == 0 && write_all(fd, f, fl) == 0;
    free(f);
    if (!ok) {
      close(fd);
      return -1;
    }
  }
  return fd;
}

/* Pipelined GETs of a 1 MiB entry from connections that never read cost
 * only those connections: a healthy client's requests are all answered
 * within its (generous) timeout while the attackers are connected, a bound
 * far below the send deadline; the attackers' answers are dropped (counted). */
static void test_slow_reader(void) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  /* a send deadline (30 s) far above the healthy client's timeout (10 s): the
   * fix must not be the deadline alone */
  const char *const args[] = {"--ram_bytes=64M", "--request_deadline_ms=30000", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 10000) == 0);
  th_chunk big, small;
  th_chunk_make(&big, 7001, 64, 1u << 20, 4);
  th_chunk_make(&small, 7002, 16, 4096, 1);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &big, 0), KVS_OK);
  CU_ASSERT_EQUAL_FATAL(th_put(&c, &small, 0), KVS_OK);
  int afd[2];
  for (int k = 0; k < 2; k++) { /* two attackers, one after the other */
    afd[k] = attacker_start(d.port, &big, 80);
    CU_ASSERT_FATAL(afd[k] >= 0);
  }
  sleep_ms(300); /* let the daemon take them in */
  enum { ROUNDS = 40 };
  int ok = 0;
  for (int i = 0; i < ROUNDS && ok == 2 * i; i++) { /* the first miss ends it */
    ok += th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL) == KVS_OK;
    uint8_t *v = NULL;
    size_t n = 0;
    if (th_get(&c, (i & 1) ? &small : &big, &v, &n) == KVS_OK)
      ok += n == ((i & 1) ? small.vbytes : big.vbytes);
    free(v);
  }
  fprintf(stderr, "slow_reader: %d of %d healthy answers\n", ok, 2 * ROUNDS);
  CU_ASSERT_EQUAL(ok, 2 * ROUNDS);
  /* each attacker got at most what fit in the socket buffers: its other
   * answers were dropped (bounded read: 20 s per read, 256 MiB in all) */
  for (int k = 0; k < 2; k++) {
    struct timeval tv = {2, 0};
    setsockopt(afd[k], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t *buf = malloc(1 << 20);
    size_t got = 0;
    ssize_t r;
    while (got < (256u << 20) && (r = recv(afd[k], buf, 1 << 20, 0)) > 0)
      got += (size_t)r;
    CU_ASSERT(got < 80u * (1u << 20)); /* not every answer was kept for it */
    fprintf(stderr, "slow_reader: attacker %d read %zu bytes in all\n", k, got);
    free(buf);
    close(afd[k]);
  }
  char *body = NULL;
  CU_ASSERT_EQUAL(th_http(d.http_port, "GET", "/metrics", &body), 200);
  unsigned long long closed = 0;
  static const char key[] = "\nkvstash_slow_conns_total ";
  const char *m = body ? strstr(body, key) : NULL;
  if (m) closed = strtoull(m + sizeof key - 1, NULL, 10);
  CU_ASSERT(closed >= 2);
  free(body);
  th_chunk_free(&big);
  th_chunk_free(&small);
  th_close(&c);
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
}

/* ------------------------------------------------------- damaged disk */
/* Paths of the tier-1 files ending in ext (".sst", ".blob"), up to max. */
static int list_files(const char *dir, const char *ext, char out[][512], int max) {
  DIR *dd = opendir(dir);
  if (!dd) return 0;
  int n = 0;
  struct dirent *e;
  size_t el = strlen(ext);
  while ((e = readdir(dd)) && n < max) {
    size_t l = strlen(e->d_name);
    if (l > el && strcmp(e->d_name + l - el, ext) == 0)
      snprintf(out[n++], 512, "%s/%s", dir, e->d_name);
  }
  closedir(dd);
  return n;
}

static int flip_bit(const char *path, unsigned long long *rng, long *at_out) {
  int fd = open(path, O_RDWR);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  off_t at = (off_t)(kvs_test_rand(rng) % (unsigned long long)st.st_size);
  uint8_t b;
  int ok = pread(fd, &b, 1, at) == 1;
  b ^= (uint8_t)(1u << (kvs_test_rand(rng) % 8));
  ok = ok && pwrite(fd, &b, 1, at) == 1;
  close(fd);
  *at_out = (long)at;
  return ok ? 0 : -1;
}

/* Seeded single-bit flips over the SST and blob files of a stopped store,
 * one per trial on a fresh copy: the daemon always starts (salvaging,
 * repairing or setting aside what RocksDB reports corrupt), never crashes,
 * never serves wrong bytes (every GET is the stored value or an error
 * answer), and keeps serving most entries (the share is printed and bounded
 * below). */
static void test_bitflips(void) {
  enum { N = 24, TRIALS = 50 };
  th_daemon d;
  memset(&d, 0, sizeof d);
  /* no RAM tier: every GET reads the disk; half the values in blob files */
  const char *const args[] = {"--blob_min=4K", "--ram_bytes=0", "--cold_dir=", NULL};
  CU_ASSERT_FATAL(th_daemon_start(&d, args) == 0);
  th_conn c;
  CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
  th_chunk ch[N];
  for (int i = 0; i < N; i++) {
    th_chunk_make(&ch[i], 8100 + (uint64_t)i, 16, i % 2 ? 16384 : 1024, 2);
    CU_ASSERT_EQUAL_FATAL(th_put(&c, &ch[i], 0), KVS_OK);
  }
  th_close(&c);
  CU_ASSERT_EQUAL_FATAL(th_daemon_stop(&d), 0); /* memtables flushed: SST + blob files */
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp -a '%s/data' '%s/pristine'", d.dir, d.dir);
  CU_ASSERT_FATAL(system(cmd) == 0);
  unsigned long long rng = 0x19u;
  int served = 0, errors = 0, wrong = 0, starts = 0, crashes = 0;
  for (int t = 0; t < TRIALS; t++) {
    snprintf(cmd, sizeof cmd, "rm -rf '%s/data' && cp -a '%s/pristine' '%s/data'", d.dir, d.dir,
             d.dir);
    CU_ASSERT_FATAL(system(cmd) == 0);
    char t1[400];
    snprintf(t1, sizeof t1, "%s/data/t1", d.dir);
    char files[16][512];
    int nf = list_files(t1, (t & 1) ? ".blob" : ".sst", files, 16);
    CU_ASSERT_FATAL(nf > 0);
    long at = 0;
    const char *victim = files[kvs_test_rand(&rng) % (unsigned long long)nf];
    CU_ASSERT_FATAL(flip_bit(victim, &rng, &at) == 0);
    if (th_daemon_start(&d, args) != 0) {
      fprintf(stderr, "bitflips: trial %d (%s @%ld): the daemon did not start\n", t, victim, at);
      CU_FAIL("daemon did not start");
      continue;
    }
    starts++;
    CU_ASSERT_FATAL(th_connect(&c, d.url, "t", NULL, 20000) == 0);
    int s_here = 0;
    for (int i = 0; i < N; i++) {
      uint8_t *v = NULL;
      size_t n = 0;
      int rc = th_get(&c, &ch[i], &v, &n); /* th_get checks the answer's checksum too */
      if (rc == KVS_OK) {
        if (n == ch[i].vbytes && memcmp(v, ch[i].value, n) == 0)
          s_here++;
        else
          wrong++;
      } else {
        /* an error answer, never a transport failure (a crash) */
        CU_ASSERT(rc == KVS_EQUARANTINE || rc == KVS_ECORRUPT || rc == KVS_ENOENT || rc == KVS_EIO);
        errors++;
      }
      free(v);
    }
    served += s_here;
    int alive = th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL) == KVS_OK;
    crashes += !alive;
    th_close(&c);
    int st = th_daemon_stop(&d);
    crashes += st != 0;
    if (s_here < N)
      fprintf(stderr, "bitflips: trial %d (%s @%ld): %d of %d served\n", t, strrchr(victim, '/'),
              at, s_here, N);
  }
  fprintf(stderr,
          "bitflips: %d trials, %d starts, %d crashes, %d of %d GETs served (%.1f%%), "
          "%d errors, %d wrong\n",
          TRIALS, starts, crashes, served, TRIALS * N, 100.0 * served / (TRIALS * N), errors,
          wrong);
  CU_ASSERT_EQUAL(starts, TRIALS);
  CU_ASSERT_EQUAL(crashes, 0);
  CU_ASSERT_EQUAL(wrong, 0);
  /* A flip in a value's blob record costs that entry; in an SST data block,
   * the entries of that block (salvage, store.c); in an SST's index, footer
   * or properties the whole table (RocksDB cannot open it: repair drops it).
   * This store is one SST: measured 67-69% served over 50 flips. */
  CU_ASSERT(served * 100 >= TRIALS * N * 55);
  for (int i = 0; i < N; i++)
    th_chunk_free(&ch[i]);
  th_daemon_cleanup(&d);
}

/* ------------------------------------------- plaintext stream off loopback */
/* kvstashd with only listen URL `url` (and --extra when not NULL): its exit
 * status within 30 s (-1 when it had to be killed: it kept running), its
 * stderr in log (cap bytes). It never gets past the listen it is refused. */
static int run_daemon_once(const char *url, const char *extra, char *log, size_t cap) {
  char dir[] = "/tmp/kvs-harden-XXXXXX";
  if (!mkdtemp(dir)) return -2;
  char a_data[128], a_listen[400], path[1024], logp[160];
  snprintf(a_data, sizeof a_data, "--data_dir=%s/data", dir);
  snprintf(a_listen, sizeof a_listen, "--listen=%s", url);
  snprintf(logp, sizeof logp, "%s/log", dir);
  const char *b = getenv("KVS_BUILD_DIR");
  snprintf(path, sizeof path, "%s/cachesvc/kvstashd", b ? b : ".");
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) dup2(fd, 2), dup2(fd, 1), close(fd);
    if (extra)
      execl(path, path, a_data, a_listen, "--http=", extra, (char *)NULL);
    else
      execl(path, path, a_data, a_listen, "--http=", (char *)NULL);
    _exit(127);
  }
  int st = 0, rc = -1;
  for (int i = 0; i < 300; i++) { /* at most 30 s */
    if (waitpid(pid, &st, WNOHANG) == pid) {
      rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      break;
    }
    sleep_ms(100);
  }
  if (rc == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  FILE *f = fopen(logp, "r");
  size_t n = f ? fread(log, 1, cap - 1, f) : 0;
  log[n] = 0;
  if (f) fclose(f);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return rc;
}

/* A tcp+stream:// listener (plaintext) on a non-loopback address is refused
 * at start unless stream_insecure=on; nothing is ever bound off loopback
 * here: the refusal comes before the bind. */
static void test_stream_nonloopback(void) {
  char log[8192];
  int port = th_free_port();
  char url[96];
  const char *hosts[] = {"0.0.0.0", "*", "[::]"};
  for (int i = 0; i < 3; i++) {
    snprintf(url, sizeof url, "tcp+stream://%s:%d", hosts[i], port);
    int rc = run_daemon_once(url, NULL, log, sizeof log);
    CU_ASSERT_EQUAL(rc, 1); /* "cannot start" */
    CU_ASSERT(strstr(log, "refusing a non-loopback address") != NULL);
    if (rc != 1) fprintf(stderr, "%s: exit %d\n%s\n", url, rc, log);
  }
  /* a bad value of the switch is refused too */
  int rc = run_daemon_once("tcp+stream://127.0.0.1:1", "--stream_insecure=maybe", log, sizeof log);
  CU_ASSERT_EQUAL(rc, 2);
}

/* ----------------------------------------------------- zeroing freed RAM */
/* With zero_freed=on, the shared-memory range of an entry is zeros once
 * nothing holds it (lease released, entry deleted); with it off, the old
 * bytes stay readable there, which is what the switch is for. The range is
 * read through the daemon's segment, mapped as a client would. */
static int freed_range_zero(int zero) {
  th_daemon d;
  memset(&d, 0, sizeof d);
  const char *const args[] = {"--shm=on", "--ram_bytes=4M", "--lease_ms=60000",
                              zero ? "--zero_freed=on" : "--zero_freed=off", NULL};
  if (th_daemon_start(&d, args) != 0) return -1;
  th_conn c;
  int result = -1;
  if (th_connect(&c, d.url, "t", NULL, 10000) == 0) {
    th_chunk ch;
    th_chunk_make(&ch, 9101, 32, 65536, 1);
    kvs_wire_lease_resp lr;
    size_t msz = 0;
    const uint8_t *map = NULL;
    /* under durability = ram the writer holds the value until it is on
     * disk, and only the last ref frees (and zeroes) the range: wait for it */
    if (th_put(&c, &ch, 0) == KVS_OK && th_wait_written(&d) &&
        th_lease(&c, &ch, 0, &lr) == KVS_OK && (map = th_shm_map(lr.shm_name, &msz)) != NULL &&
        lr.offset + ch.vbytes <= msz && memcmp(map + lr.offset, ch.value, ch.vbytes) == 0 &&
        th_release(&c, lr.lease_id) == KVS_OK &&
        th_key_op(&c, KVS_OP_DELETE, &ch, 0, NULL, NULL) == KVS_OK) {
      size_t nz = 0;
      for (size_t i = 0; i < ch.vbytes; i++)
        nz += map[lr.offset + i] != 0;
      result = nz == 0;
      fprintf(stderr, "zero_freed=%s: %zu of %zu bytes of the freed range not zero\n",
              zero ? "on" : "off", nz, ch.vbytes);
    }
    if (map) munmap((void *)map, msz);
    th_chunk_free(&ch);
    th_close(&c);
  }
  CU_ASSERT_EQUAL(th_daemon_stop(&d), 0);
  th_daemon_cleanup(&d);
  return result;
}

static void test_zero_freed(void) {
  int probe = shm_open("/kvstash-harden-probe", O_CREAT | O_RDWR, 0600);
  if (probe < 0) {
    fprintf(stderr, "no POSIX shared memory here: zero_freed skipped\n");
    return;
  }
  close(probe);
  shm_unlink("/kvstash-harden-probe");
  CU_ASSERT_EQUAL(freed_range_zero(1), 1);
  CU_ASSERT_EQUAL(freed_range_zero(0), 0); /* off: the bytes are still there */
}

static const kvs_test_case cases[] = {
    {"http_header_limit", test_http_header_limit},
    {"stream_fd_close", test_stream_fd_close},
    {"slow_reader", test_slow_reader},
    {"bitflips", test_bitflips},
    {"stream_nonloopback", test_stream_nonloopback},
    {"zero_freed", test_zero_freed},
    {NULL, NULL},
};

int main(void) { return kvs_test_run("cachesvc_harden", cases); }
