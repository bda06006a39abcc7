/* kvstashd - the kvstash cache service. See docs/kvstashd.md. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_svc.h"

int main(int argc, char **argv) {
  /* Answers of MiBs are allocated and freed per request: keep them in the
   * heap instead of an mmap + page faults + munmap each time. */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  kvs_svc_config cfg;
  kvs_svc_config_defaults(&cfg);
  const char *env = getenv("KVS_LOG");
  if (env && kvs_log_parse_level(env) >= 0) cfg.log_level = kvs_log_parse_level(env);
  kvs_log_set_level(cfg.log_level);
  int help = 0;
  kvs_err rc = kvs_svc_config_args(&cfg, argc, argv, &help);
  if (help) {
    kvs_svc_config_usage(stdout);
    return 0;
  }
  if (rc != KVS_OK) {
    kvs_svc_config_usage(stderr);
    return 2;
  }
  /* Block the stop signals in every thread; this one waits for them. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  kvs_svc *svc = NULL;
  rc = kvs_svc_create(&cfg, &svc);
  if (rc != KVS_OK) {
    fprintf(stderr, "kvstashd: cannot start: %s (%s)\n", kvs_strerror(rc), kvs_errname(rc));
    return 1;
  }
  fprintf(stderr, "kvstashd: ready\n");
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) continue; /* no reload yet: keep running */
    KVS_LOGI("svc", "signal", "sig=%d", sig);
    break;
  }
  kvs_svc_free(svc);
  fprintf(stderr, "kvstashd: stopped\n");
  return 0;
}
