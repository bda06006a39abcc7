/* kvs-test-fake-kvstashd URL - runs the in-test STAND-IN server
 * (fake_kvstashd.c) until SIGTERM/SIGINT, for the Python tests. */
#include <signal.h>
#include <stdio.h>

#include "fake_kvstashd.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s URL\n", argv[0]);
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* before nng starts its threads */
  fake_kvstashd *f = fake_kvstashd_start(argv[1]);
  if (!f) {
    fprintf(stderr, "cannot listen on %s\n", argv[1]);
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  fake_kvstashd_stop(f);
  return 0;
}
