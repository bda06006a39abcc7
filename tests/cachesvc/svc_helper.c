#include "svc_helper.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>
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

int th_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &l) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* Daemons and dirs still alive, so that a test that fails half-way (a
 * CUnit FATAL assertion leaves the function) does not leave them behind:
 * at exit every one left is killed and removed. */
#define TH_MAX 32
static pid_t g_pids[TH_MAX];
static char g_dirs[TH_MAX][256];
static int g_atexit;

static void th_reap_all(void) {
  for (int i = 0; i < TH_MAX; i++)
    if (g_pids[i] > 0) {
      kill(g_pids[i], SIGKILL);
      waitpid(g_pids[i], NULL, 0);
      g_pids[i] = 0;
    }
  for (int i = 0; i < TH_MAX; i++)
    if (g_dirs[i][0] && strncmp(g_dirs[i], "/tmp/kvs-svc-test-", 18) == 0) {
      char cmd[400];
      snprintf(cmd, sizeof cmd, "rm -rf '%.255s'", g_dirs[i]);
      if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dirs[i]);
      g_dirs[i][0] = 0;
    }
}

static void track_pid(pid_t pid, int add) {
  if (!g_atexit) {
    atexit(th_reap_all);
    g_atexit = 1;
  }
  for (int i = 0; i < TH_MAX; i++)
    if (add ? g_pids[i] == 0 : g_pids[i] == pid) {
      g_pids[i] = add ? pid : 0;
      return;
    }
}

static void track_dir(const char *dir, int add) {
  for (int i = 0; i < TH_MAX; i++)
    if (add ? !g_dirs[i][0] : strcmp(g_dirs[i], dir) == 0) {
      if (add)
        snprintf(g_dirs[i], sizeof g_dirs[i], "%.255s", dir);
      else
        g_dirs[i][0] = 0;
      return;
    }
}

static const char *daemon_path(void) {
  static char p[1024];
  const char *b = getenv("KVS_BUILD_DIR");
  snprintf(p, sizeof p, "%s/cachesvc/kvstashd", b ? b : ".");
  return p;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Three distinct free ports: a port probed and released can be handed out
 * again by the very next probe (two listeners on one port: the daemon
 * refuses to start, seen in a test run). */
static int free_ports3(int *a, int *b, int *c) {
  for (int tries = 0; tries < 50; tries++) {
    *a = th_free_port(), *b = th_free_port(), *c = th_free_port();
    if (*a < 0 || *b < 0 || *c < 0) return -1;
    if (*a != *b && *a != *c && *b != *c) return 0;
  }
  return -1;
}

static int daemon_start_once(th_daemon *d, const char *const *extra);

/* Another process may still take a probed port before the daemon binds it:
 * a daemon that exits while starting is started again on new ports. */
int th_daemon_start(th_daemon *d, const char *const *extra) {
  int rc = -1;
  for (int attempt = 0; attempt < 3 && rc != 0; attempt++)
    rc = daemon_start_once(d, extra);
  return rc;
}

static int daemon_start_once(th_daemon *d, const char *const *extra) {
  if (!d->dir[0]) {
    snprintf(d->dir, sizeof d->dir, "/tmp/kvs-svc-test-XXXXXX");
    if (!mkdtemp(d->dir)) return -1;
  }
  int known = 0;
  for (int i = 0; i < TH_MAX; i++)
    known |= strcmp(g_dirs[i], d->dir) == 0;
  if (!known) track_dir(d->dir, 1);
  if (free_ports3(&d->port, &d->http_port, &d->sport)) return -1;
  snprintf(d->surl, sizeof d->surl, "tcp+stream://127.0.0.1:%d", d->sport);
  snprintf(d->url, sizeof d->url, "tcp://127.0.0.1:%d", d->port);
  snprintf(d->ipc, sizeof d->ipc, "ipc://%s/kvs.sock", d->dir);
  snprintf(d->log, sizeof d->log, "%s/kvstashd.log", d->dir);
  char a_data[320], a_listen[1000], a_http[64];
  snprintf(a_data, sizeof a_data, "--data_dir=%s/data", d->dir);
  snprintf(a_listen, sizeof a_listen, "--listen=%s,%s,%s", d->url, d->ipc, d->surl);
  snprintf(a_http, sizeof a_http, "--http=127.0.0.1:%d", d->http_port);
  const char *argv[64];
  int n = 0;
  argv[n++] = daemon_path();
  argv[n++] = a_data;
  argv[n++] = a_listen;
  argv[n++] = a_http;
  argv[n++] = "--workers=4";
  argv[n++] = "--log_level=info";
  for (int i = 0; extra && extra[i] && n < 62; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 2);
      dup2(fd, 1);
      close(fd);
    }
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  d->pid = pid;
  track_pid(pid, 1);
  /* ready = answers a PING (auth errors count: it answered) */
  for (int i = 0; i < 200; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      track_pid(pid, 0);
      d->pid = 0;
      th_daemon_dump_log(d);
      return -1;
    }
    th_conn c;
    if (th_connect(&c, d->url, "probe", NULL, 300) == 0) {
      int rc = th_call(&c, KVS_OP_PING, 0, NULL, 0, NULL, NULL);
      th_close(&c);
      if (rc == KVS_OK || rc == KVS_EAUTH) return 0;
    }
    sleep_ms(100);
  }
  th_daemon_kill9(d);
  return -1;
}

int th_daemon_stop(th_daemon *d) {
  if (d->pid <= 0) return -1;
  kill(d->pid, SIGTERM);
  for (int i = 0; i < 300; i++) {
    int st;
    pid_t r = waitpid(d->pid, &st, WNOHANG);
    if (r == d->pid) {
      track_pid(d->pid, 0);
      d->pid = 0;
      int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      if (rc != 0) th_daemon_dump_log(d); /* why it did not stop cleanly */
      return rc;
    }
    sleep_ms(100);
  }
  fprintf(stderr, "kvstashd %d did not stop within 30 s: killed\n", (int)d->pid);
  th_daemon_kill9(d);
  th_daemon_dump_log(d);
  return -1;
}

void th_daemon_kill9(th_daemon *d) {
  if (d->pid <= 0) return;
  kill(d->pid, SIGKILL);
  int st;
  waitpid(d->pid, &st, 0);
  track_pid(d->pid, 0);
  d->pid = 0;
}

void th_daemon_cleanup(th_daemon *d) {
  if (d->pid > 0) th_daemon_kill9(d);
  if (!d->dir[0] || strncmp(d->dir, "/tmp/kvs-svc-test-", 18) != 0) return;
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d->dir);
  track_dir(d->dir, 0);
  d->dir[0] = 0;
}

void th_daemon_dump_log(const th_daemon *d) {
  FILE *f = fopen(d->log, "r");
  if (!f) return;
  char line[1024];
  fprintf(stderr, "---- kvstashd log %s ----\n", d->log);
  while (fgets(line, sizeof line, f))
    fputs(line, stderr);
  fclose(f);
}

/* --------------------------------------------------------------- client */
static int connect_impl(th_conn *c, const char *url, const char *ca_file, const char *tenant,
                        const char *token, int timeout_ms) {
  memset(c, 0, sizeof *c);
  if (nng_req0_open(&c->s) != 0) return -1;
  c->open = 1;
  nng_socket_set_ms(c->s, NNG_OPT_RECVTIMEO, timeout_ms);
  nng_socket_set_ms(c->s, NNG_OPT_SENDTIMEO, timeout_ms);
  nng_socket_set_size(c->s, NNG_OPT_RECVMAXSZ, 0);
  nng_socket_set_ms(c->s, NNG_OPT_REQ_RESENDTIME, 600000);
  nng_dialer dl;
  int rv = nng_dialer_create(&dl, c->s, url);
  if (rv == 0 && ca_file) {
    nng_tls_config *tc = NULL;
    rv = nng_tls_config_alloc(&tc, NNG_TLS_MODE_CLIENT);
    if (rv == 0) rv = nng_tls_config_ca_file(tc, ca_file);
    if (rv == 0) rv = nng_tls_config_server_name(tc, "localhost");
    if (rv == 0) rv = nng_tls_config_auth_mode(tc, NNG_TLS_AUTH_MODE_REQUIRED);
    if (rv == 0) rv = nng_dialer_set_ptr(dl, NNG_OPT_TLS_CONFIG, tc);
    if (tc) nng_tls_config_free(tc);
  }
  if (rv == 0) rv = nng_dialer_start(dl, 0);
  if (rv != 0) {
    th_close(c);
    return -1;
  }
  snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
  if (token) snprintf(c->token, sizeof c->token, "%s", token);
  c->next_id = 1;
  return 0;
}

int th_connect(th_conn *c, const char *url, const char *tenant, const char *token, int timeout_ms) {
  return connect_impl(c, url, NULL, tenant, token, timeout_ms);
}

int th_connect_tls(th_conn *c, const char *url, const char *ca_file, const char *tenant,
                   const char *token, int timeout_ms) {
  return connect_impl(c, url, ca_file, tenant, token, timeout_ms);
}

void th_close(th_conn *c) {
  if (c->open) nng_close(c->s);
  c->open = 0;
}

static int exchange(th_conn *c, nng_msg *m, uint64_t id, uint16_t op, int check, uint8_t **reply,
                    size_t *reply_len) {
  if (reply) *reply = NULL;
  if (reply_len) *reply_len = 0;
  int rv = nng_sendmsg(c->s, m, 0);
  if (rv != 0) {
    nng_msg_free(m);
    return rv == NNG_ETIMEDOUT ? KVS_ETIMEDOUT : KVS_ECONN;
  }
  nng_msg *a = NULL;
  rv = nng_recvmsg(c->s, &a, 0);
  if (rv != 0) return rv == NNG_ETIMEDOUT ? KVS_ETIMEDOUT : KVS_ECONN;
  kvs_wire_hdr h;
  int rc = kvs_wire_hdr_decode(nng_msg_body(a), nng_msg_len(a), &h);
  if (rc == KVS_OK && !(h.flags & KVS_WIRE_F_RESPONSE)) rc = KVS_EPROTO;
  if (rc == KVS_OK && check && (h.req_id != id || h.op != op)) rc = KVS_EPROTO;
  if (rc == KVS_OK) {
    rc = h.status;
    if (reply) {
      *reply = malloc(h.payload_len ? h.payload_len : 1);
      memcpy(*reply, (uint8_t *)nng_msg_body(a) + KVS_WIRE_HDR_SIZE, h.payload_len);
    }
    if (reply_len) *reply_len = h.payload_len;
  }
  nng_msg_free(a);
  return rc;
}

int th_call(th_conn *c, uint16_t op, uint32_t flags, const void *payload, size_t n, uint8_t **reply,
            size_t *reply_len) {
  kvs_wire_hdr h;
  uint64_t id = c->next_id++;
  if (kvs_wire_hdr_init(&h, op, id, c->tenant, c->token[0] ? c->token : NULL, strlen(c->token)) !=
      KVS_OK)
    return KVS_EINVAL;
  h.flags = flags;
  h.payload_len = (uint32_t)n;
  nng_msg *m;
  if (nng_msg_alloc(&m, KVS_WIRE_HDR_SIZE + n) != 0) return KVS_ENOMEM;
  kvs_wire_hdr_encode(&h, nng_msg_body(m));
  if (n) memcpy((uint8_t *)nng_msg_body(m) + KVS_WIRE_HDR_SIZE, payload, n);
  return exchange(c, m, id, op, 1, reply, reply_len);
}

int th_send_raw(th_conn *c, const void *frame, size_t n, uint8_t **reply, size_t *reply_len) {
  nng_msg *m;
  if (nng_msg_alloc(&m, n) != 0) return KVS_ENOMEM;
  if (n) memcpy(nng_msg_body(m), frame, n);
  return exchange(c, m, 0, 0, 0, reply, reply_len);
}

/* --------------------------------------------------------------- streams */
int th_sconnect(th_sconn *c, const char *url, const char *tenant, const char *token,
                int timeout_ms) {
  memset(c, 0, sizeof *c);
  snprintf(c->tenant, sizeof c->tenant, "%s", tenant);
  snprintf(c->token, sizeof c->token, "%s", token ? token : "");
  c->next_id = 1;
  c->timeout_ms = timeout_ms;
  char u[320];
  snprintf(u, sizeof u, "%.3s%s", url, strstr(url, "://") ? strstr(url, "://") : "");
  nng_stream_dialer *d = NULL;
  nng_aio *aio = NULL;
  int rv = nng_stream_dialer_alloc(&d, u);
  if (rv == 0) rv = nng_aio_alloc(&aio, NULL, NULL);
  if (rv == 0) {
    nng_aio_set_timeout(aio, timeout_ms);
    nng_stream_dialer_dial(d, aio);
    nng_aio_wait(aio);
    rv = nng_aio_result(aio);
    if (rv == 0) c->s = nng_aio_get_output(aio, 0);
  }
  if (aio) nng_aio_free(aio);
  if (d) nng_stream_dialer_free(d);
  return rv == 0 ? 0 : -1;
}

void th_sclose(th_sconn *c) {
  if (c->s) nng_stream_free(c->s);
  c->s = NULL;
}

static int sio(th_sconn *c, void *p, size_t n, int wr) {
  nng_aio *aio;
  if (!c->s) return KVS_ECONN;
  if (nng_aio_alloc(&aio, NULL, NULL) != 0) return KVS_ENOMEM;
  int rc = KVS_OK;
  size_t done = 0;
  while (done < n) {
    nng_iov iov = {(uint8_t *)p + done, n - done};
    nng_aio_set_iov(aio, 1, &iov);
    nng_aio_set_timeout(aio, c->timeout_ms);
    if (wr)
      nng_stream_send(c->s, aio);
    else
      nng_stream_recv(c->s, aio);
    nng_aio_wait(aio);
    int rv = nng_aio_result(aio);
    if (rv != 0) {
      rc = rv == NNG_ETIMEDOUT ? KVS_ETIMEDOUT : KVS_ECONN;
      break;
    }
    done += nng_aio_count(aio);
  }
  nng_aio_free(aio);
  return rc;
}

int th_swrite(th_sconn *c, const void *p, size_t n) { return sio(c, (void *)p, n, 1); }
int th_sread(th_sconn *c, void *p, size_t n) { return sio(c, p, n, 0); }

int th_sread_answer(th_sconn *c, kvs_wire_hdr *h, uint8_t **payload) {
  uint8_t hb[KVS_WIRE_HDR_SIZE];
  if (payload) *payload = NULL;
  int rc = th_sread(c, hb, sizeof hb);
  if (rc) return rc;
  if (kvs_wire_hdr_decode_head(hb, h) != KVS_OK || !(h->flags & KVS_WIRE_F_RESPONSE))
    return KVS_EPROTO;
  uint8_t *p = malloc(h->payload_len ? h->payload_len : 1);
  if (!p) return KVS_ENOMEM;
  rc = th_sread(c, p, h->payload_len);
  if (rc || !payload)
    free(p);
  else
    *payload = p;
  return rc ? rc : h->status;
}

static int s_send_req(th_sconn *c, uint16_t op, const void *payload, size_t n, uint64_t *id) {
  kvs_wire_hdr h;
  *id = c->next_id++;
  if (kvs_wire_hdr_init(&h, op, *id, c->tenant, c->token[0] ? c->token : NULL, strlen(c->token)) !=
      KVS_OK)
    return KVS_EINVAL;
  h.payload_len = (uint32_t)n;
  uint8_t *f = malloc(KVS_WIRE_HDR_SIZE + n);
  if (!f) return KVS_ENOMEM;
  kvs_wire_hdr_encode(&h, f);
  if (n) memcpy(f + KVS_WIRE_HDR_SIZE, payload, n);
  int rc = th_swrite(c, f, KVS_WIRE_HDR_SIZE + n);
  free(f);
  return rc;
}

int th_scall(th_sconn *c, uint16_t op, const void *payload, size_t n, uint8_t **reply,
             size_t *reply_len) {
  uint64_t id;
  int rc = s_send_req(c, op, payload, n, &id);
  if (rc) return rc;
  kvs_wire_hdr h;
  uint8_t *p = NULL;
  rc = th_sread_answer(c, &h, &p);
  if (rc == KVS_ECONN || rc == KVS_ETIMEDOUT || rc == KVS_EPROTO || rc == KVS_ENOMEM) {
    free(p);
    return rc;
  }
  if (h.req_id != id || h.op != op) {
    free(p);
    return KVS_EPROTO;
  }
  if (reply)
    *reply = p;
  else
    free(p);
  if (reply_len) *reply_len = h.payload_len;
  return rc;
}

int th_sget_send(th_sconn *c, const th_chunk *ch, uint32_t seg_first, uint32_t seg_count,
                 uint64_t *id) {
  kvs_wire_get_req g = {.key = ch->key,
                        .model = ch->model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = seg_first,
                        .seg_count = seg_count,
                        .n_tokens = ch->n_tokens,
                        .tokens_le = (const uint8_t *)ch->tokens};
  size_t n = kvs_wire_get_req_size(&g);
  uint8_t *p = malloc(n);
  kvs_wire_get_req_encode(&g, p, n, NULL);
  int rc = s_send_req(c, KVS_OP_GET, p, n, id);
  free(p);
  return rc;
}

int th_sget(th_sconn *c, const th_chunk *ch, uint32_t seg_first, uint32_t seg_count,
            uint8_t **value, size_t *len) {
  uint64_t id;
  if (value) *value = NULL;
  int rc = th_sget_send(c, ch, seg_first, seg_count, &id);
  if (rc) return rc;
  return th_sget_recv(c, id, NULL, value, len);
}

int th_sget_recv(th_sconn *c, uint64_t id, const uint8_t *hdr, uint8_t **value, size_t *len) {
  int rc;
  if (value) *value = NULL;
  uint8_t hb[KVS_WIRE_HDR_SIZE];
  kvs_wire_hdr h;
  if (hdr)
    memcpy(hb, hdr, sizeof hb);
  else if ((rc = th_sread(c, hb, sizeof hb)))
    return rc;
  if (kvs_wire_hdr_decode_head(hb, &h) != KVS_OK || h.req_id != id || h.op != KVS_OP_GET)
    return KVS_EPROTO;
  if (h.status != 0) { /* the error message */
    uint8_t *m = malloc(h.payload_len + 1);
    rc = th_sread(c, m, h.payload_len);
    free(m);
    return rc ? rc : h.status;
  }
  uint8_t fixed[KVS_WIRE_GET_RESP_FIXED];
  size_t head_len;
  if ((rc = th_sread(c, fixed, sizeof fixed))) return rc;
  if (kvs_wire_get_resp_head_len(fixed, h.payload_len, &head_len) != KVS_OK) return KVS_EPROTO;
  uint8_t *head = malloc(head_len);
  memcpy(head, fixed, sizeof fixed);
  rc = th_sread(c, head + sizeof fixed, head_len - sizeof fixed);
  kvs_wire_get_resp a;
  if (!rc && kvs_wire_get_resp_decode_head(head, head_len, h.payload_len, &a) != KVS_OK)
    rc = KVS_EPROTO;
  free(head);
  if (rc) return rc;
  uint8_t *v = malloc(a.byte_len ? a.byte_len : 1); /* the value, straight in */
  rc = th_sread(c, v, a.byte_len);
  if (!rc && a.byte_len == a.value_bytes && kvs_checksum64(v, a.byte_len) != a.checksum)
    rc = KVS_ECHECKSUM;
  if (rc || !value) {
    free(v);
    return rc;
  }
  *value = v;
  if (len) *len = a.byte_len;
  return KVS_OK;
}

/* --------------------------------------------------------------- chunks */
static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void th_chunk_make(th_chunk *c, uint64_t seed, uint32_t n_tokens, size_t vbytes, uint32_t n_seg) {
  memset(c, 0, sizeof *c);
  uint64_t st = seed * 7919 + 1;
  c->model = kvs_hash128_buf("test-model", 10);
  c->n_tokens = n_tokens;
  c->tokens = malloc(4u * n_tokens);
  for (uint32_t i = 0; i < n_tokens; i++)
    c->tokens[i] = (int32_t)(mix(&st) % 49152);
  c->key = kvs_key_content(&c->model, c->tokens, n_tokens);
  c->vbytes = vbytes;
  c->value = malloc(vbytes ? vbytes : 1);
  for (size_t i = 0; i + 8 <= vbytes; i += 8) {
    uint64_t r = mix(&st);
    memcpy(c->value + i, &r, 8);
  }
  for (size_t i = vbytes & ~(size_t)7; i < vbytes; i++)
    c->value[i] = (uint8_t)mix(&st);
  c->n_seg = n_seg;
  c->seg_end = malloc(8u * n_seg);
  for (uint32_t g = 0; g < n_seg; g++)
    c->seg_end[g] = (uint64_t)vbytes * (g + 1) / n_seg;
}

void th_chunk_free(th_chunk *c) {
  free(c->tokens);
  free(c->value);
  free(c->seg_end);
  memset(c, 0, sizeof *c);
}

static void chunk_meta(const th_chunk *ch, kvs_wire_meta *m) {
  memset(m, 0, sizeof *m);
  m->key = ch->key;
  m->model = ch->model;
  m->key_kind = KVS_KEY_KIND_CONTENT;
  m->n_tokens = ch->n_tokens;
  kvs_layout l = {2, 2, 64, KVS_DTYPE_F16, KVS_ROPE_NORM, 64, 10000.f, 1.f, 0, 0, 0, 0};
  m->layout = l;
  m->codec_profile = 1;
  m->n_segments = ch->n_seg;
  m->ttl_s = ch->ttl_s;
  m->value_bytes = ch->vbytes;
  m->checksum = kvs_checksum64(ch->value, ch->vbytes);
  m->tokens_le = (const uint8_t *)ch->tokens;
  m->seg_end_le = (const uint8_t *)ch->seg_end;
}

int th_put(th_conn *c, const th_chunk *ch, uint32_t flags) {
  kvs_wire_meta m;
  chunk_meta(ch, &m);
  size_t ml = kvs_wire_meta_size(&m);
  uint8_t *p = malloc(ml + ch->vbytes);
  kvs_wire_meta_encode(&m, p, ml, NULL);
  memcpy(p + ml, ch->value, ch->vbytes);
  int rc = th_call(c, KVS_OP_PUT, flags, p, ml + ch->vbytes, NULL, NULL);
  free(p);
  return rc;
}

int th_get(th_conn *c, const th_chunk *ch, uint8_t **value, size_t *len) {
  kvs_wire_get_req g = {.key = ch->key,
                        .model = ch->model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = KVS_WIRE_SEG_ALL,
                        .n_tokens = ch->n_tokens,
                        .tokens_le = (const uint8_t *)ch->tokens};
  size_t n = kvs_wire_get_req_size(&g);
  uint8_t *p = malloc(n);
  kvs_wire_get_req_encode(&g, p, n, NULL);
  uint8_t *rep = NULL;
  size_t rl = 0;
  int rc = th_call(c, KVS_OP_GET, 0, p, n, &rep, &rl);
  free(p);
  if (value) *value = NULL;
  if (rc == KVS_OK) {
    kvs_wire_get_resp a;
    rc = kvs_wire_get_resp_decode(rep, rl, &a);
    if (rc == KVS_OK && (a.meta_len == 0 || a.byte_len != a.value_bytes ||
                         kvs_checksum64(a.bytes, a.byte_len) != a.checksum))
      rc = KVS_ECHECKSUM;
    if (rc == KVS_OK && value) {
      *value = malloc(a.byte_len ? a.byte_len : 1);
      memcpy(*value, a.bytes, a.byte_len);
      if (len) *len = a.byte_len;
    }
  }
  free(rep);
  return rc;
}

int th_key_op(th_conn *c, uint16_t op, const th_chunk *ch, uint32_t arg, uint8_t **reply,
              size_t *reply_len) {
  kvs_wire_key_req k = {.key = ch->key, .model = ch->model, .arg = arg};
  uint8_t p[KVS_WIRE_KEY_REQ_SIZE];
  kvs_wire_key_req_encode(&k, p, sizeof p, NULL);
  return th_call(c, op, 0, p, sizeof p, reply, reply_len);
}

int th_stats_tiers(th_conn *c, kvs_wire_stats_resp *out) {
  uint8_t *rep = NULL;
  size_t rl = 0;
  int rc = th_call(c, KVS_OP_STATS, 0, NULL, 0, &rep, &rl);
  if (rc == KVS_OK) rc = kvs_wire_stats_resp_decode(rep, rl, out);
  free(rep);
  return rc;
}

const kvs_wire_tier_row *th_tier(const kvs_wire_stats_resp *s, const char *name) {
  for (uint32_t i = 0; i < s->n_tiers; i++)
    if (!strcmp(s->tiers[i].name, name)) return &s->tiers[i];
  return NULL;
}

int th_stats(th_conn *c, uint64_t v[KVS__STAT_COUNT]) {
  uint8_t *rep = NULL;
  size_t rl = 0;
  int rc = th_call(c, KVS_OP_STATS, 0, NULL, 0, &rep, &rl);
  if (rc == KVS_OK) {
    kvs_wire_stats_resp s;
    rc = kvs_wire_stats_resp_decode(rep, rl, &s);
    for (int i = 0; i < KVS__STAT_COUNT; i++)
      v[i] = (uint32_t)i < s.n ? s.v[i] : 0;
  }
  free(rep);
  return rc;
}

int th_lease(th_conn *c, const th_chunk *ch, uint64_t release_id, kvs_wire_lease_resp *out) {
  kvs_wire_get_req g = {.key = ch->key,
                        .model = ch->model,
                        .flags = KVS_WIRE_GET_META,
                        .seg_first = 0,
                        .seg_count = 0,
                        .n_tokens = ch->n_tokens,
                        .tokens_le = (const uint8_t *)ch->tokens};
  size_t n = kvs_wire_get_req_size(&g);
  uint8_t *p = malloc(8 + n);
  memcpy(p, &release_id, 8);
  kvs_wire_get_req_encode(&g, p + 8, n, NULL);
  uint8_t *rep = NULL;
  size_t rl = 0;
  int rc = th_call(c, KVS_OP_LEASE, 0, p, 8 + n, &rep, &rl);
  free(p);
  if (rc == KVS_OK) rc = kvs_wire_lease_resp_decode(rep, rl, out);
  free(rep);
  return rc;
}

int th_release(th_conn *c, uint64_t lease_id) {
  return th_call(c, KVS_OP_RELEASE, 0, &lease_id, 8, NULL, NULL);
}

const uint8_t *th_shm_map(const char *name, size_t *size) {
  int fd = shm_open(name, O_RDONLY, 0);
  if (fd < 0) return NULL;
  struct stat st;
  void *p = MAP_FAILED;
  if (fstat(fd, &st) == 0 && st.st_size > 0)
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return NULL;
  *size = (size_t)st.st_size;
  return p;
}

/* ---------------------------------------------------------------- http */
int th_http(int port, const char *method, const char *path, char **body) {
  *body = NULL;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", method, path);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len + 4096 > cap) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = 0;
  int code = -1;
  if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1) code = -1;
  char *b = strstr(buf, "\r\n\r\n");
  *body = strdup(b ? b + 4 : "");
  free(buf);
  return code;
}

int th_wait_written(const th_daemon *d) {
  for (int i = 0; i < 400; i++) {
    char *body = NULL;
    const char *k = "\nkvstash_writebehind_backlog_entries ";
    int empty = th_http(d->http_port, "GET", "/metrics", &body) == 200 && body && strstr(body, k) &&
                strtoull(strstr(body, k) + strlen(k), NULL, 10) == 0;
    free(body);
    if (empty) return 1;
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return 0;
}
