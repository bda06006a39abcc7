/* What a newcomer copies must reach the daemon: libkvstash's default URL is
 * where kvstashd listens by default, and every loopback URL in the docs and
 * examples (README.md, docs/, client/) names one of kvstashd's default ports
 * (listen, byte stream, HTTP). Issue 18 found every client example on a port
 * (7070) that nothing listens on. */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvs_svc.h"
#include "kvs_test.h"
#include "kvstash.h"

static kvs_svc_config cfg;

static void test_default_url(void) {
  kvs_svc_config_defaults(&cfg);
  CU_ASSERT_STRING_EQUAL(KVS_DEFAULT_URL, cfg.listen[0]);
  kvs_client_opts o;
  kvs_client_opts_init(&o);
  CU_ASSERT_PTR_NOT_NULL_FATAL(o.url);
  CU_ASSERT_STRING_EQUAL(o.url, cfg.listen[0]);
}

/* the port of "host:port" at the end of a default listen URL or address */
static long port_of(const char *s) {
  const char *c = strrchr(s, ':');
  return c ? strtol(c + 1, NULL, 10) : -1;
}

static long ports[4];
static int n_ports, n_files, n_urls, n_bad;

/* Every "127.0.0.1:N" / "localhost:N" in the file: N must be a default port. */
static void scan(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char line[4096];
  int ln = 0;
  n_files++;
  while (fgets(line, sizeof line, f)) {
    ln++;
    static const char *hosts[] = {"127.0.0.1:", "localhost:"};
    for (int h = 0; h < 2; h++) {
      for (const char *p = strstr(line, hosts[h]); p; p = strstr(p + 1, hosts[h])) {
        const char *d = p + strlen(hosts[h]);
        if (*d < '0' || *d > '9') continue; /* "127.0.0.1:PORT" and the like */
        long port = strtol(d, NULL, 10);
        int ok = 0;
        for (int i = 0; i < n_ports; i++)
          ok |= port == ports[i];
        n_urls++;
        if (!ok) {
          n_bad++;
          fprintf(stderr, "%s:%d: port %ld is not one kvstashd listens on by default\n", path, ln,
                  port);
        }
      }
    }
  }
  fclose(f);
}

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st;
  (void)ftw;
  if (type != FTW_F) return 0;
  if (strstr(path, "/tests/") || strstr(path, "/build/") || strstr(path, "/.git/")) return 0;
  static const char *ext[] = {".md", ".c", ".h", ".py", ".conf", ".example"};
  const char *dot = strrchr(path, '.');
  for (size_t i = 0; dot && i < sizeof ext / sizeof *ext; i++)
    if (!strcmp(dot, ext[i])) scan(path);
  return 0;
}

static void test_doc_ports(void) {
  const char *src = getenv("KVS_SOURCE_DIR");
  CU_ASSERT_PTR_NOT_NULL_FATAL(src);
  kvs_svc_config_defaults(&cfg);
  ports[n_ports++] = port_of(cfg.listen[0]);
  ports[n_ports++] = port_of(cfg.listen[1]);
  ports[n_ports++] = port_of(cfg.http);
  for (int i = 0; i < n_ports; i++)
    CU_ASSERT(ports[i] > 0);
  char p[1024];
  snprintf(p, sizeof p, "%s/README.md", src);
  scan(p);
  static const char *dirs[] = {"docs", "client", "cachesvc"};
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
    snprintf(p, sizeof p, "%s/%s", src, dirs[i]);
    CU_ASSERT_EQUAL(nftw(p, visit, 16, FTW_PHYS), 0);
  }
  CU_ASSERT(n_files > 10);
  CU_ASSERT(n_urls > 5); /* the scan saw the URLs it is about */
  CU_ASSERT_EQUAL(n_bad, 0);
}

static const kvs_test_case cases[] = {
    {"default_url", test_default_url}, {"doc_ports", test_doc_ports}, {NULL, NULL}};

int main(void) { return kvs_test_run("client_defaults", cases); }
