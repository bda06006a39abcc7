#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvstash.h"
#include "server.h"

static int probe_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  int port = -1;
  if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) &&
      !getsockname(fd, (struct sockaddr *)&a, &len))
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* A port probed and released can come back from the very next probe: never
 * hand out one of the last few again in this process. */
int test_free_port(void) {
  static int recent[16], n;
  for (int tries = 0; tries < 50; tries++) {
    int p = probe_port(), seen = 0;
    if (p < 0) return -1;
    for (int i = 0; i < 16; i++)
      seen |= recent[i] == p;
    if (seen) continue;
    recent[n++ % 16] = p;
    return p;
  }
  return -1;
}
#define free_port test_free_port

static void rm_rf(const char *dir) {
  char cmd[400];
  if (!dir[0] || strncmp(dir, "/tmp/kvs-client-test.", 21)) return;
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int test_server_start(test_server *s, const char *mode) {
  return test_server_start_flag(s, mode, NULL);
}

int test_server_start_flag(test_server *s, const char *mode, const char *flag) {
  memset(s, 0, sizeof *s);
  if (strcmp(mode, "real")) {
    fprintf(stderr, "server mode %s: only \"real\" (the kvstashd binary)\n", mode);
    return 1;
  }
  const char *bin = getenv("KVS_KVSTASHD");
  if (!bin || access(bin, X_OK)) {
    fprintf(stderr, "SKIP: the kvstashd binary is missing (%s); build target kvstashd\n",
            bin ? bin : "$KVS_KVSTASHD unset");
    return 77;
  }
  s->real = 1;
  snprintf(s->bin, sizeof s->bin, "%s", bin);
  if (flag) snprintf(s->flag, sizeof s->flag, "%s", flag);
  snprintf(s->dir, sizeof s->dir, "/tmp/kvs-client-test.XXXXXX");
  if (!mkdtemp(s->dir)) return 1;
  int port = free_port();
  if (port < 0) return 1;
  snprintf(s->url, sizeof s->url, "tcp://127.0.0.1:%d", port);
  return test_server_restart(s);
}

int test_server_restart(test_server *s) {
  char a_listen[200], a_data[300];
  snprintf(a_listen, sizeof a_listen, "--listen=%s", s->url);
  snprintf(a_data, sizeof a_data, "--data_dir=%s/data", s->dir);
  const char *bin = s->bin, *flag = s->flag[0] ? s->flag : NULL;
  s->pid = fork();
  if (s->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
    /* flag: zero or more kvstashd flags separated by spaces */
    char fl[sizeof s->flag],
        *argv[16] = {(char *)bin, a_listen, a_data, "--http=", "--log_level=error"};
    int n = 5;
    snprintf(fl, sizeof fl, "%s", flag ? flag : "");
    for (char *save = NULL, *t = strtok_r(fl, " ", &save); t && n < 15;
         t = strtok_r(NULL, " ", &save))
      argv[n++] = t;
    argv[n] = NULL;
    execv(bin, argv);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  if (s->pid < 0) return 1;
  /* up when a client connects and a PING answers */
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  o.url = s->url;
  o.connect_timeout_ms = 10000;
  kvs_client *c = NULL;
  int rv = kvs_client_create(&o, &c);
  if (rv == KVS_OK) rv = kvs_ping(c);
  if (rv == KVS_EAUTH) rv = KVS_OK; /* up, and refusing a tenant it does not know */
  if (rv) fprintf(stderr, "kvstashd did not come up: %s\n", kvs_client_errmsg(c));
  kvs_client_free(c);
  if (rv) {
    test_server_stop(s);
    return 1;
  }
  return 0;
}

void test_server_kill(test_server *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGTERM);
  int st;
  for (int i = 0; i < 100; i++) {
    if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
      s->pid = 0;
      return;
    }
    struct timespec ts = {0, 50 * 1000000};
    nanosleep(&ts, NULL);
  }
  kill(s->pid, SIGKILL);
  waitpid(s->pid, &st, 0);
  s->pid = 0;
}

void test_server_stop(test_server *s) {
  test_server_kill(s);
  if (s->real) rm_rf(s->dir);
}
