/* kvs-svc-storm - the client half of the crash test (crash_test.sh).
 *
 *   kvs-svc-storm put    URL ACKLOG SEED COUNT BYTES THREADS
 *       puts COUNT deterministic entries from THREADS clients; after each
 *       acknowledged put, appends its index to ACKLOG (one write(2) per line).
 *       Stops at the first transport error (the daemon was killed).
 *   kvs-svc-storm verify URL ACKLOG SEED COUNT BYTES MODE
 *       reads every index back. Anything served must be exactly the bytes
 *       that were put (else: CORRUPT). MODE sync: every acknowledged index
 *       must be served (else: LOST). Exit 0 when both hold.
 * Every loop is bounded in count; every call in time (20 s). */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "svc_helper.h"

typedef struct job {
  const char *url;
  int fd;
  uint64_t seed;
  long count, t, nt;
  size_t bytes;
  long acked;
} job;

static void *put_main(void *p) {
  job *j = p;
  th_conn c;
  /* short timeout: when the daemon dies mid-request, stop soon */
  if (th_connect(&c, j->url, "storm", NULL, 5000) != 0) return NULL;
  for (long i = j->t; i < j->count; i += j->nt) {
    th_chunk ch;
    th_chunk_make(&ch, j->seed * 1000000ull + (uint64_t)i, 64, j->bytes, 4);
    int rc = th_put(&c, &ch, 0);
    th_chunk_free(&ch);
    if (rc != KVS_OK) break;
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", i);
    if (write(j->fd, line, (size_t)n) != n) break;
    j->acked++;
  }
  th_close(&c);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: kvs-svc-storm put|verify URL ACKLOG SEED COUNT BYTES THREADS|MODE\n");
    return 2;
  }
  const char *url = argv[2], *acklog = argv[3];
  uint64_t seed = strtoull(argv[4], NULL, 10);
  long count = strtol(argv[5], NULL, 10);
  size_t bytes = strtoull(argv[6], NULL, 10);
  if (count <= 0 || count > 1000000 || bytes == 0 || bytes > (64u << 20)) return 2;
  if (!strcmp(argv[1], "put")) {
    long nt = strtol(argv[7], NULL, 10);
    if (nt < 1 || nt > 64) return 2;
    int fd = open(acklog, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
    if (fd < 0) return 1;
    job jobs[64];
    pthread_t th[64];
    for (long t = 0; t < nt; t++) {
      jobs[t] = (job){url, fd, seed, count, t, nt, bytes, 0};
      pthread_create(&th[t], NULL, put_main, &jobs[t]);
    }
    long acked = 0;
    for (long t = 0; t < nt; t++) {
      pthread_join(th[t], NULL);
      acked += jobs[t].acked;
    }
    close(fd);
    printf("storm: %ld puts acknowledged\n", acked);
    return 0;
  }
  if (strcmp(argv[1], "verify") != 0) return 2;
  int sync = !strcmp(argv[7], "sync");
  char *acked = calloc((size_t)count, 1);
  FILE *f = fopen(acklog, "r");
  long n_acked = 0, idx;
  while (f && fscanf(f, "%ld", &idx) == 1)
    if (idx >= 0 && idx < count && !acked[idx]) {
      acked[idx] = 1;
      n_acked++;
    }
  if (f) fclose(f);
  th_conn c;
  if (th_connect(&c, url, "storm", NULL, 20000) != 0) return 1;
  long served = 0, lost = 0, corrupt = 0, other = 0;
  for (long i = 0; i < count; i++) {
    th_chunk ch;
    th_chunk_make(&ch, seed * 1000000ull + (uint64_t)i, 64, bytes, 4);
    uint8_t *v = NULL;
    size_t n = 0;
    int rc = th_get(&c, &ch, &v, &n);
    if (rc == KVS_OK) {
      served++;
      if (n != ch.vbytes || memcmp(v, ch.value, n) != 0) corrupt++;
    } else if (rc == KVS_ECHECKSUM || rc == KVS_EQUARANTINE) {
      corrupt++; /* a corrupt answer, or stored bytes that went bad */
    } else if (rc != KVS_ENOENT) {
      other++;
    }
    if (rc != KVS_OK && acked[i]) lost++;
    free(v);
    th_chunk_free(&ch);
  }
  th_close(&c);
  free(acked);
  printf("verify: acked=%ld served=%ld lost_acked=%ld corrupt=%ld errors=%ld mode=%s\n", n_acked,
         served, lost, corrupt, other, sync ? "sync" : "async");
  int ok = corrupt == 0 && other == 0 && (!sync || lost == 0);
  printf("verify: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
