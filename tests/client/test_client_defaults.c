/* What a newcomer copies must reach the daemon: libkvstash's default URL is
 * where kvstashd listens by default, and every loopback kvstashd URL
 * (tcp://, tcp+stream://) in the quick start, the client's docs and the
 * client's examples (README.md, docs/client.md, docs/cli.md, docs/kvstashd.md,
 * client/) names kvstashd's default port for it. Issue 18 found every client
 * example on a port (7070) that nothing listens on. */
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

/* the port of a "scheme://host:port" listen URL */
static long port_of(const char *s) {
  const char *c = strrchr(s, ':');
  return c ? strtol(c + 1, NULL, 10) : -1;
}

static long port_nng, port_stream;
static int n_files, n_urls, n_bad;

/* Every "tcp://127.0.0.1:N", "tcp+stream://localhost:N" (and tls+tcp://) in
 * the file: N must be the default port of that kind of listener. */
static void scan(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  static const char *schemes[] = {"tcp://", "tcp+stream://"};
  static const char *hosts[] = {"127.0.0.1:", "localhost:"};
  char line[4096];
  int ln = 0;
  n_files++;
  while (fgets(line, sizeof line, f)) {
    ln++;
    for (int k = 0; k < 2; k++) {
      for (const char *p = strstr(line, schemes[k]); p; p = strstr(p + 1, schemes[k])) {
        const char *h = p + strlen(schemes[k]), *d = NULL;
        for (int j = 0; j < 2 && !d; j++)
          if (!strncmp(h, hosts[j], strlen(hosts[j]))) d = h + strlen(hosts[j]);
        if (!d || *d < '0' || *d > '9') continue; /* another host, or "PORT" in words */
        long port = strtol(d, NULL, 10), want = k ? port_stream : port_nng;
        n_urls++;
        if (port != want) {
          n_bad++;
          fprintf(stderr, "%s:%d: %s...:%ld, but kvstashd listens on port %ld by default\n", path,
                  ln, schemes[k], port, want);
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
  CU_ASSERT_FATAL(!strncmp(cfg.listen[0], "tcp://", 6));
  CU_ASSERT_FATAL(!strncmp(cfg.listen[1], "tcp+stream://", 13));
  port_nng = port_of(cfg.listen[0]);
  port_stream = port_of(cfg.listen[1]);
  CU_ASSERT(port_nng > 0 && port_stream > 0);
  char p[1024];
  static const char *files[] = {"README.md", "docs/client.md", "docs/cli.md", "docs/kvstashd.md"};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(p, sizeof p, "%s/%s", src, files[i]);
    scan(p);
  }
  snprintf(p, sizeof p, "%s/client", src);
  CU_ASSERT_EQUAL(nftw(p, visit, 16, FTW_PHYS), 0);
  CU_ASSERT(n_files > 10);
  CU_ASSERT(n_urls > 5); /* the scan saw the URLs it is about */
  CU_ASSERT_EQUAL(n_bad, 0);
}

static const kvs_test_case cases[] = {
    {"default_url", test_default_url}, {"doc_ports", test_doc_ports}, {NULL, NULL}};

int main(void) { return kvs_test_run("client_defaults", cases); }
