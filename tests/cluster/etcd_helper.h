/* etcd_helper.h - a real etcd for the cluster tests: its own temp data dir,
 * free loopback ports, every wait bounded; killed at exit if a test leaves
 * it running. */
#ifndef KVS_ETCD_HELPER_H
#define KVS_ETCD_HELPER_H
#include <sys/types.h>

typedef struct th_etcd {
  pid_t pid;
  char dir[256];
  int port, peer_port;
  char url[300]; /* etcd://127.0.0.1:PORT/NAME is built by the test */
} th_etcd;

/* Path of the etcd binary ($KVS_ETCD, else /usr/bin/etcd, else PATH), or
 * NULL when there is none (the test then skips). */
const char *th_etcd_binary(void);
/* Starts (first call: new dir and ports; later calls: the same ones) and
 * waits until it answers (at most 20 s). 0 on success. */
int th_etcd_start(th_etcd *e);
/* SIGTERM, then SIGKILL after 5 s. */
void th_etcd_stop(th_etcd *e);
void th_etcd_cleanup(th_etcd *e);
#endif
