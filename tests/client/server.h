/* server.h - start the server the client tests talk to: the real kvstashd
 * binary ($KVS_KVSTASHD, set by CMake when the target exists) on a free
 * loopback port with a temporary data dir. (Replies kvstashd never sends are
 * staged by test_client_faults.c.) */
#ifndef KVS_TEST_SERVER_H
#define KVS_TEST_SERVER_H
#include <sys/types.h>

typedef struct test_server {
  int real;
  pid_t pid;
  char url[128];
  char dir[256];
  char bin[512];
  char flag[256];
} test_server;

/* mode "real" (the only one). Returns 0 when up, 77 when the real binary is
 * missing (the caller skips), 1 on failure. Messages on stderr. */
int test_server_start(test_server *s, const char *mode);
/* A free loopback TCP port, never one this process was handed recently. */
int test_free_port(void);
/* Same, with extra kvstashd flags separated by spaces (e.g. "--tenant=a:secret";
 * NULL = none). */
int test_server_start_flag(test_server *s, const char *mode, const char *flag);
void test_server_stop(test_server *s);
/* Real server only: stops the daemon keeping its data dir (and URL). */
void test_server_kill(test_server *s);
/* Real server only: starts it again on the same URL and data dir. */
int test_server_restart(test_server *s);
#endif
