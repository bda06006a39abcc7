/* kvstashd - the kvstash cache service. See docs/kvstashd.md. */
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "kvs_svc.h"

/* Shutdown guard: nng 1.5.2 (Debian 12) can deadlock in nng_close (upstream
 * nng#1543, fixed after 1.5.2). Stopping drains requests in flight (at most
 * 10 s), then closes the sockets and the store; if that has not finished
 * after KVS_STOP_GUARD_S seconds, the process exits anyway. Nothing is lost
 * that a kill -9 would not lose: acknowledged puts are in RocksDB's WAL
 * (synced in `sync` mode), which the crash test checks. */
#define KVS_STOP_GUARD_S 30
static void *stop_guard(void *arg) {
  (void)arg;
  struct timespec ts = {KVS_STOP_GUARD_S, 0};
  while (nanosleep(&ts, &ts) != 0) {
  }
  static const char m[] = "kvstashd: shutdown stuck for 30 s (nng_close?); exiting without it\n";
  if (write(2, m, sizeof m - 1) < 0) { /* nothing more to do */
  }
  _exit(3);
}

int main(int argc, char **argv) {
  /* Answers of MiBs are allocated and freed per request: keep them in the
   * heap instead of an mmap + page faults + munmap each time. */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  /* --version answers at once; --check-config parses everything, says so,
   * exits; --print-config writes a config file of the other flags, exits */
  int check_only = 0, print_only = 0, n = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
      printf("kvstashd %s\n", kvs_version());
      return 0;
    }
    if (!strcmp(argv[i], "--check-config")) {
      check_only = 1;
      continue;
    }
    if (!strcmp(argv[i], "--print-config")) {
      print_only = 1;
      continue;
    }
    argv[n++] = argv[i];
    if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
      argv[n++] = argv[++i]; /* its value */
  }
  argc = n;
  argv[argc] = NULL;
  if (print_only) {
    if (kvs_svc_config_print(stdout, argc, argv) != KVS_OK || fflush(stdout) != 0) {
      fprintf(stderr, "kvstashd: %s\n", kvs_svc_config_error());
      return 2;
    }
    return 0;
  }
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
  if (rc != KVS_OK) { /* one line, and an exit status systemd does not restart on */
    fprintf(stderr, "kvstashd: %s\n", kvs_svc_config_error());
    return 2;
  }
  if (check_only) {
    printf("kvstashd: config OK\n");
    return 0;
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
  /* systemd (Type=notify): ready once the store is open and every listener is
   * bound. Without $NOTIFY_SOCKET this does nothing. */
  (void)sd_notifyf(0, "READY=1\nSTATUS=serving\nMAINPID=%lu", (unsigned long)getpid());
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) { /* reload here, on this ordinary thread (no handler runs) */
      (void)sd_notifyf(0, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
                       (unsigned long long)(kvs_now_ns() / 1000u));
      KVS_LOGW("svc", "SIGHUP: reloading the config", "%s", "");
      kvs_svc_config nc;
      kvs_svc_config_defaults(&nc);
      if (env && kvs_log_parse_level(env) >= 0) nc.log_level = kvs_log_parse_level(env);
      int h2 = 0;
      if (kvs_svc_config_args(&nc, argc, argv, &h2) == KVS_OK)
        (void)kvs_svc_reload(svc, &nc, NULL);
      else
        (void)kvs_svc_reload(svc, NULL, kvs_svc_config_error());
      explicit_bzero(&nc, sizeof nc); /* tokens */
      (void)sd_notify(0, "READY=1\nSTATUS=serving");
      continue;
    }
    KVS_LOGI("svc", "signal", "sig=%d", sig);
    (void)sd_notify(0, "STOPPING=1\nSTATUS=draining");
    break;
  }
  pthread_t guard;
  if (pthread_create(&guard, NULL, stop_guard, NULL) == 0) pthread_detach(guard);
  kvs_svc_free(svc);
  fprintf(stderr, "kvstashd: stopped\n");
  return 0;
}
