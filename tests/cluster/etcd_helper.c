#include "etcd_helper.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cluster_int.h"
#include "svc_helper.h"

static pid_t g_pid;
static char g_dir[256];

static void reap(void) {
  if (g_pid > 0) {
    kill(g_pid, SIGKILL);
    waitpid(g_pid, NULL, 0);
    g_pid = 0;
  }
  if (g_dir[0] && !strncmp(g_dir, "/tmp/kvs-etcd-test-", 19)) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%.255s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    g_dir[0] = 0;
  }
}

const char *th_etcd_binary(void) {
  static char p[512];
  const char *e = getenv("KVS_ETCD");
  if (e && access(e, X_OK) == 0) return e;
  if (access("/usr/bin/etcd", X_OK) == 0) return "/usr/bin/etcd";
  const char *path = getenv("PATH");
  if (!path) return NULL;
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *s = NULL, *d = strtok_r(tmp, ":", &s); d; d = strtok_r(NULL, ":", &s)) {
    snprintf(p, sizeof p, "%.480s/etcd", d);
    if (access(p, X_OK) == 0) return p;
  }
  return NULL;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int answers(const th_etcd *e) {
  char url[128];
  snprintf(url, sizeof url, "etcd://127.0.0.1:%d/probe", e->port);
  kvs__cl_url u;
  if (kvs__cl_url_parse(url, &u) != KVS_OK) return 0;
  kvs__etcd *c = kvs__etcd_new(&u, 500);
  if (!c) return 0;
  int64_t rev = 0;
  kvs_err rv = kvs__etcd_put(c, "/probe", "1", 1, 0);
  if (rv == KVS_OK) rv = kvs__etcd_range(c, "/probe", NULL, NULL, &rev);
  kvs__etcd_free(c);
  return rv == KVS_OK;
}

int th_etcd_start(th_etcd *e) {
  const char *bin = th_etcd_binary();
  if (!bin) return -1;
  if (!e->dir[0]) {
    snprintf(e->dir, sizeof e->dir, "/tmp/kvs-etcd-test-XXXXXX");
    if (!mkdtemp(e->dir)) return -1;
    snprintf(g_dir, sizeof g_dir, "%s", e->dir);
    atexit(reap);
    for (int t = 0; t < 50; t++) {
      e->port = th_free_port();
      e->peer_port = th_free_port();
      if (e->port > 0 && e->peer_port > 0 && e->port != e->peer_port) break;
    }
  }
  char data[320], client[64], peer[64], init[96], logp[320];
  snprintf(data, sizeof data, "%s/data", e->dir);
  snprintf(client, sizeof client, "http://127.0.0.1:%d", e->port);
  snprintf(peer, sizeof peer, "http://127.0.0.1:%d", e->peer_port);
  snprintf(init, sizeof init, "t=http://127.0.0.1:%d", e->peer_port);
  snprintf(logp, sizeof logp, "%s/etcd.log", e->dir);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execl(bin, bin, "--name", "t", "--data-dir", data, "--listen-client-urls", client,
          "--advertise-client-urls", client, "--listen-peer-urls", peer,
          "--initial-advertise-peer-urls", peer, "--initial-cluster", init, "--enable-pprof=false",
          "--log-level", "warn", (char *)NULL);
    _exit(127);
  }
  e->pid = g_pid = pid;
  for (int i = 0; i < 200; i++) { /* 20 s */
    if (answers(e)) return 0;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      e->pid = g_pid = 0;
      fprintf(stderr, "etcd exited while starting; its log: %s\n", logp);
      return -1;
    }
    sleep_ms(100);
  }
  th_etcd_stop(e);
  return -1;
}

void th_etcd_stop(th_etcd *e) {
  if (e->pid <= 0) return;
  kill(e->pid, SIGTERM);
  for (int i = 0; i < 50; i++) {
    if (waitpid(e->pid, NULL, WNOHANG) == e->pid) {
      e->pid = g_pid = 0;
      return;
    }
    sleep_ms(100);
  }
  kill(e->pid, SIGKILL);
  waitpid(e->pid, NULL, 0);
  e->pid = g_pid = 0;
}

void th_etcd_cleanup(th_etcd *e) {
  th_etcd_stop(e);
  reap();
  e->dir[0] = 0;
}
