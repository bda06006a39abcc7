/* kvstashd's config file and flags. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_conf.h"
#include "kvs_svc.h"
#include "svc_int.h"
#include "kvs_test.h"

static void test_defaults(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_STRING_EQUAL(c.listen[0], "tcp://127.0.0.1:7878");        /* loopback only */
  CU_ASSERT_STRING_EQUAL(c.listen[1], "tcp+stream://127.0.0.1:7880"); /* loopback too */
  CU_ASSERT_EQUAL(c.n_listen, 0); /* both apply until a listen option is given */
  CU_ASSERT(strncmp(c.http, "127.0.0.1:", 10) == 0);
  CU_ASSERT_EQUAL(c.durability, KVS_SVC_DUR_RAM);
  CU_ASSERT_EQUAL(c.n_tenants, 0);
}

static void test_example_file(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL_FATAL(
      kvs_svc_config_load(&c, kvs_test_src_path("cachesvc/kvstashd.conf.example")), KVS_OK);
  CU_ASSERT_STRING_EQUAL(c.data_dir, "/var/lib/kvstash");
  CU_ASSERT_EQUAL_FATAL(c.n_listen, 3);
  CU_ASSERT_STRING_EQUAL(c.listen[1], "ipc:///run/kvstash/kvstash.sock");
  CU_ASSERT_STRING_EQUAL(c.listen[2], "tcp+stream://127.0.0.1:7880");
  CU_ASSERT_EQUAL(c.ram_bytes, 8ull << 30);
  CU_ASSERT_EQUAL(c.cold_bytes, 4ull << 40);
  CU_ASSERT_EQUAL(c.max_msg, 64ull << 20);
  CU_ASSERT_EQUAL(c.log_level, KVS_LOG_INFO);
}

/* --print-config: its output, read back as a config file, gives what the
 * same flags give; a bad flag writes nothing. */
static void test_print_config(void) {
  char *argv[] = {"kvstashd",          "--workers=3", "--tenant", "a:tok#1",
                  "--tenant=b: x ",    "--ram-bytes", "1.5M",     "--listen=ipc:///tmp/k.sock",
                  "--log_level=debug", NULL};
  int argc = 9;
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  CU_ASSERT_EQUAL(kvs_svc_config_print(f, argc, argv), KVS_OK);
  fclose(f);
  /* every option of the table has its line, set or commented out */
  for (size_t i = 0; i < kvs__n_opts; i++) {
    char line[80];
    snprintf(line, sizeof line, "\n%s = ", kvs__opts[i].key);
    char commented[80];
    snprintf(commented, sizeof commented, "\n# %s =", kvs__opts[i].key);
    CU_ASSERT(strstr(text, line) || strstr(text, commented));
  }
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "\n# cluster_replicas = 2\n"));
  char path[] = "/tmp/kvs-print-XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_EQUAL(write(fd, text, len), (ssize_t)len);
  close(fd);
  free(text);
  static kvs_svc_config from_file, from_flags; /* large: not on the stack */
  kvs_svc_config_defaults(&from_file);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&from_file, path), KVS_OK);
  unlink(path);
  kvs_svc_config_defaults(&from_flags);
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&from_flags, argc, argv, &help), KVS_OK);
  CU_ASSERT_EQUAL(from_file.n_tenants, 2);
  CU_ASSERT_STRING_EQUAL(from_file.tenants[0].token, "tok#1");
  CU_ASSERT_STRING_EQUAL(from_file.tenants[1].token, " x "); /* quoted, so kept */
  CU_ASSERT_EQUAL(from_file.workers, 3);
  CU_ASSERT(memcmp(&from_file, &from_flags, sizeof from_file) == 0);
  /* a bad value, an unknown key, a config file, a line break that would add a line: an error
   * and nothing written */
  char *bad[][3] = {{"kvstashd", "--workers=0", NULL},
                    {"kvstashd", "--wrokers=3", NULL},
                    {"kvstashd", "-c", "/etc/kvstash/kvstashd.conf"},
                    {"kvstashd", "--tenant=a:x\nlisten=tcp://0.0.0.0:1", NULL}};
  for (int i = 0; i < 4; i++) {
    text = NULL;
    f = open_memstream(&text, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(kvs_svc_config_print(f, bad[i][2] ? 3 : 2, bad[i]), KVS_EINVAL);
    fclose(f);
    CU_ASSERT_EQUAL(len, 0);
    free(text);
    if (i == 1) CU_ASSERT_PTR_NOT_NULL(strstr(kvs_svc_config_error(), "did you mean --workers?"));
  }
}

static void test_flags_override(void) {
  char path[] = "/tmp/kvs-conf-XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  const char *text = "# comment\n  workers = 3  \n\ndurability=async # trailing\n"
                     "tenant = a:tok1\ntenant = b.c_d-e:tok2\nram_bytes = 1.5M\n";
  CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  char cfg[64];
  snprintf(cfg, sizeof cfg, "--config=%s", path);
  char *argv[] = {"kvstashd", "--workers", "5", cfg, "--max-msg=1M", NULL};
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 5, argv, &help), KVS_OK);
  CU_ASSERT_EQUAL(help, 0);
  CU_ASSERT_EQUAL(c.workers, 5); /* flag over file */
  CU_ASSERT_EQUAL(c.durability, KVS_SVC_DUR_ASYNC);
  CU_ASSERT_EQUAL(c.max_msg, 1u << 20);
  CU_ASSERT_EQUAL(c.ram_bytes, 1572864u);
  CU_ASSERT_EQUAL(c.n_tenants, 2);
  CU_ASSERT_STRING_EQUAL(c.tenants[1].name, "b.c_d-e");
  CU_ASSERT_STRING_EQUAL(c.tenants[1].token, "tok2");
  unlink(path);
}

static void test_rejects(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "nope", "1"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "workers", "0"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "workers", "3x"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "durability", "maybe"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "listen", "http://x"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "tenant", "bad name:tok"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "tenant", "a:"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "max_msg", "10"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "model_cost", "zz:1"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "model_cost", "000102030405060708090a0b0c0d0e0f:2.5"),
                  KVS_OK);
  CU_ASSERT_EQUAL(c.n_model_costs, 1);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", "nohostport"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", ""), KVS_OK);
  char *argv[] = {"kvstashd", "positional", NULL};
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 2, argv, &help), KVS_EINVAL);
}

/* A temp file holding text; its path in path (cap 64). */
static void write_tmp(char *path, const char *text, size_t n) {
  snprintf(path, 64, "/tmp/kvs-conf-XXXXXX");
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  CU_ASSERT_EQUAL(write(fd, text, n), (ssize_t)n);
  close(fd);
}

static void test_quotes(void) {
  char path[64];
  const char *text = "tenant = \"a:tok#1 x\"   # the token has a # and a space\n"
                     "tenant = b:tok#2      # unquoted: # inside a word is kept\n"
                     "tenant = 'c:it''s'    # no: text after the closing quote\n";
  write_tmp(path, text, strlen(text));
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_EINVAL);
  CU_ASSERT_EQUAL_FATAL(c.n_tenants, 2);
  CU_ASSERT_STRING_EQUAL(c.tenants[0].token, "tok#1 x");
  CU_ASSERT_STRING_EQUAL(c.tenants[1].token, "tok#2");
  const char *e = kvs_svc_config_error();
  CU_ASSERT(strstr(e, path) == e && strstr(e, ":3: text after the closing quote") != NULL);
  CU_ASSERT(!strchr(e, '\n'));
  unlink(path);
  /* escapes, single quotes, empty values, comments, CRLF, dashes in keys */
  const char *t2 = "# top\r\n   # indented comment\n\ncold_dir = \"/mnt/a \\\"b\\\" \\\\c\"\n"
                   "admin_token='x\\y#z'\r\nmax-msg = 1M#not a comment? no: a bad size\n";
  write_tmp(path, t2, strlen(t2));
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(c.cold_dir, "/mnt/a \"b\" \\c");
  CU_ASSERT_STRING_EQUAL(c.admin_token, "x\\y#z");
  CU_ASSERT(strstr(kvs_svc_config_error(), ":6: max_msg = \"1M#not a comment? no: a bad size\"") !=
            NULL);
  unlink(path);
  const char *t3 = "cold_dir =\nhttp = \"\"   # off\nworkers = 3 # trailing\n";
  write_tmp(path, t3, strlen(t3));
  kvs_svc_config_defaults(&c);
  snprintf(c.cold_dir, sizeof c.cold_dir, "x");
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_OK);
  CU_ASSERT_STRING_EQUAL(c.cold_dir, "");
  CU_ASSERT_STRING_EQUAL(c.http, "");
  CU_ASSERT_EQUAL(c.workers, 3);
  unlink(path);
}

/* Each bad file: its one-line error ends with want. */
static void test_file_errors(void) {
  static const struct {
    const char *text, *want;
  } cases[] = {
      {"workers 3\n", ":1: expected `key = value`"},
      {"= 3\n", ":1: no key before `=`"},
      {"\nwork ers = 3\n", ":2: a key is letters, digits"},
      {"tenant = \"a:b\n", ":1: unterminated \" quote"},
      {"tenant = 'a:b\n", ":1: unterminated ' quote"},
      {"tenant = \"a:\\n\"\n", ":1: unknown escape"},
      {"lissten = tcp://127.0.0.1:7000\n",
       ":1: unknown option \"lissten\" (did you mean \"listen\"?)"},
      {"ram-byte = 1G\n", ":1: unknown option \"ram_byte\" (did you mean \"ram_bytes\"?)"},
      {"zzzzzz = 1\n", ":1: unknown option \"zzzzzz\" (kvstashd --help lists them)"},
      {"listen = tcp://127.0.0.1:78790\n", "listen = \"tcp://127.0.0.1:78790\": HOST:PORT"},
      {"listen = tcp://127.0.0.1:0\n", "listen = \"tcp://127.0.0.1:0\": HOST:PORT"},
      {"listen = tcp+stream://127.0.0.1:7x\n", "HOST:PORT with a port of 1..65535 (or ipc://PATH)"},
      {"listen = tcp://127.0.0.1\n", "HOST:PORT"},
      {"http = 127.0.0.1:65536\n", "http = \"127.0.0.1:65536\": HOST:PORT"},
      {"http = 127.0.0.1:-1\n", "HOST:PORT"},
      {"workers = 0\n", ":1: workers = \"0\": 1..256"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[64];
    write_tmp(path, cases[i].text, strlen(cases[i].text));
    kvs_svc_config c;
    kvs_svc_config_defaults(&c);
    CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_EINVAL);
    const char *e = kvs_svc_config_error();
    if (!strstr(e, cases[i].want) || strchr(e, '\n') || strncmp(e, path, strlen(path)) != 0) {
      fprintf(stderr, "case %zu: got <%s> want <%s>\n", i, e, cases[i].want);
      CU_FAIL("config error text");
    }
    unlink(path);
  }
  /* a NUL byte, an overlong line, a missing file: one line each too */
  char path[64];
  write_tmp(path, "workers = 3\nx\0y = 1\n", 20);
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_EINVAL);
  CU_ASSERT(strstr(kvs_svc_config_error(), ":2: NUL byte") != NULL);
  unlink(path);
  char *big = malloc(6000);
  CU_ASSERT_FATAL(big != NULL);
  memset(big, 'a', 6000);
  memcpy(big, "data_dir = ", 11);
  write_tmp(path, big, 6000);
  free(big);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, path), KVS_EINVAL);
  CU_ASSERT(strstr(kvs_svc_config_error(), ":1: line longer than 4096 bytes") != NULL);
  unlink(path);
  CU_ASSERT_EQUAL(kvs_svc_config_load(&c, "/nonexistent/kvstashd.conf"), KVS_ENOENT);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(),
                         "/nonexistent/kvstashd.conf: No such file or directory");
  /* flags say it as flags */
  char *argv[] = {"kvstashd", "--lissten=tcp://127.0.0.1:7000", NULL};
  int help = 0;
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 2, argv, &help), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(),
                         "unknown option --lissten (did you mean --listen?)");
  char *argv2[] = {"kvstashd", "--workers", "999", NULL};
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 3, argv2, &help), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(), "--workers=999: 1..256");
  char *argv3[] = {"kvstashd", "--workers", NULL};
  CU_ASSERT_EQUAL(kvs_svc_config_args(&c, 2, argv3, &help), KVS_EINVAL);
  CU_ASSERT(strstr(kvs_svc_config_error(), "--workers: no value") != NULL);
}

static void test_ports(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "listen", "tcp://127.0.0.1:1,tcp://[::1]:65535"), KVS_OK);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "listen", "ipc:///tmp/x.sock,tls+tcp://h:443"), KVS_OK);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "listen", "ipc://"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", "0.0.0.0:8080"), KVS_OK);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", ":8080"), KVS_OK);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", "[::1]:8080"), KVS_OK);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "http", "[::1]8080"), KVS_EINVAL);
  int port = 0;
  CU_ASSERT_EQUAL(kvs_conf_port("65535", &port), KVS_OK);
  CU_ASSERT_EQUAL(port, 65535);
  CU_ASSERT_EQUAL(kvs_conf_port("65536", &port), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_conf_port("0", &port), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_conf_port("+80", &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_port("", &port), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_port("123456", &port), KVS_EINVAL);
}

static void test_sizes(void) {
  uint64_t v = 7;
  CU_ASSERT_EQUAL(kvs_conf_parse_size("0", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 0);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("4096", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 4096);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("64k", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 64u << 10);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("1.5G", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 3ull << 29);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("2MiB", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 2u << 20);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("3tb", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 3ull << 40);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("100B", &v), KVS_OK);
  CU_ASSERT_EQUAL(v, 100);
  v = 7;
  CU_ASSERT_EQUAL(kvs_conf_parse_size("", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("G", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("-1", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("1X", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("1GG", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("1 G", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("nan", &v), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("inf", &v), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("16777216T", &v), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_conf_parse_size("1e400", &v), KVS_ERANGE);
  CU_ASSERT_EQUAL(v, 7); /* untouched on error */
  /* its callers keep their own bounds and messages */
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "ram_bytes", "2G"), KVS_OK);
  CU_ASSERT_EQUAL(c.ram_bytes, 2ull << 30);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "max_msg", "1K"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "disk_bytes", "0"), KVS_EINVAL);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&c, "ram_bytes", "lots"), KVS_EINVAL);
}

static void test_shared_parser(void) {
  /* what the CLI calls: a tenant's token and single keys from a kvstashd.conf */
  char path[64];
  const char *text = "tenant = rag:tok-rag\ntenant = \"eng:tok # eng\"\n"
                     "admin_token = adm\nlisten = tcp://a:1\nlisten = tcp://b:2\n";
  write_tmp(path, text, strlen(text));
  char tok[65], err[512];
  CU_ASSERT_EQUAL(kvs_conf_tenant_token(path, "eng", tok, sizeof tok, err, sizeof err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(tok, "tok # eng");
  CU_ASSERT_EQUAL(kvs_conf_tenant_token(path, "rag", tok, sizeof tok, err, sizeof err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(tok, "tok-rag");
  CU_ASSERT_EQUAL(kvs_conf_tenant_token(path, "ra", tok, sizeof tok, err, sizeof err), KVS_ENOENT);
  CU_ASSERT(strstr(err, "no tenant \"ra\" (tenants there: rag, eng)") != NULL);
  CU_ASSERT_EQUAL(kvs_conf_tenant_token(path, "rag", tok, 4, err, sizeof err), KVS_ERANGE);
  CU_ASSERT_EQUAL(kvs_conf_get(path, "admin_token", tok, sizeof tok, err, sizeof err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(tok, "adm");
  CU_ASSERT_EQUAL(kvs_conf_get(path, "listen", tok, sizeof tok, err, sizeof err), KVS_OK);
  CU_ASSERT_STRING_EQUAL(tok, "tcp://b:2");
  CU_ASSERT_EQUAL(kvs_conf_get(path, "http", tok, sizeof tok, err, sizeof err), KVS_ENOENT);
  CU_ASSERT_EQUAL(kvs_conf_tenant_token("/nonexistent", "a", tok, sizeof tok, err, sizeof err),
                  KVS_ENOENT);
  unlink(path);
  /* the example config parses with the shared parser too */
  CU_ASSERT_EQUAL(kvs_conf_get(kvs_test_src_path("cachesvc/kvstashd.conf.example"), "data_dir", tok,
                               sizeof tok, err, sizeof err),
                  KVS_OK);
  CU_ASSERT_STRING_EQUAL(tok, "/var/lib/kvstash");
  /* edit distance and suggestions */
  CU_ASSERT_EQUAL(kvs_conf_edit_distance("listen", "lissten"), 1);
  CU_ASSERT_EQUAL(kvs_conf_edit_distance("", "abc"), 3);
  CU_ASSERT_EQUAL(kvs_conf_edit_distance("kitten", "sitting"), 3);
  const char *keys[] = {"workers", "max_msg", "ram_bytes", "shm"};
  CU_ASSERT_STRING_EQUAL(kvs_conf_suggest("worker", keys, 4), "workers");
  CU_ASSERT_STRING_EQUAL(kvs_conf_suggest("max_mgs", keys, 4), "max_msg");
  CU_ASSERT_PTR_NULL(kvs_conf_suggest("ab", keys, 4));
  CU_ASSERT_PTR_NULL(kvs_conf_suggest("workers", keys, 4)); /* itself: no typo */
  CU_ASSERT_PTR_NULL(kvs_conf_suggest("durability", keys, 4));
}

/* KVS_SVC_OPTION_MAP (core/kvs_conf_options.h) against what it generates:
 * the defaults, --help, typo suggestions, the reload flags. */
static void test_option_table(void) {
  kvs_svc_config d;
  kvs_svc_config_defaults(&d);
  /* the defaults kvstashd had when they were written by hand */
  CU_ASSERT_STRING_EQUAL(d.data_dir, "./kvstash-data");
  CU_ASSERT_STRING_EQUAL(d.http, "127.0.0.1:7879");
  CU_ASSERT_STRING_EQUAL(d.cold_dir, "");
  CU_ASSERT_EQUAL(d.workers, 8);
  CU_ASSERT_EQUAL(d.max_msg, 64ull << 20);
  CU_ASSERT_EQUAL(d.deadline_ms, 10000);
  CU_ASSERT_EQUAL(d.ram_bytes, 1ull << 30);
  CU_ASSERT_EQUAL(d.disk_bytes, 64ull << 30);
  CU_ASSERT_EQUAL(d.cold_bytes, 256ull << 30);
  CU_ASSERT_EQUAL(d.blob_min, 64ull << 10);
  CU_ASSERT_EQUAL(d.default_ttl_s, 0);
  CU_ASSERT_EQUAL(d.half_life_s, 3600);
  CU_ASSERT_EQUAL(d.evict_lru, 0);
  CU_ASSERT_EQUAL(d.prefill_cost, 1.0);
  CU_ASSERT_EQUAL(d.flush_interval_ms, 5000);
  CU_ASSERT_EQUAL(d.lease_ms, 5000);
  CU_ASSERT_EQUAL(d.shm + d.zero_freed + d.stream_insecure, 0);
  CU_ASSERT_EQUAL(d.log_level, KVS_LOG_WARN);
  CU_ASSERT_EQUAL(d.cluster.replicas, 2);
  CU_ASSERT_EQUAL(d.cluster.lease_ttl_s, 5);
  CU_ASSERT_EQUAL(d.cluster.capacity, 0);
  CU_ASSERT_EQUAL(d.n_model_costs + d.n_tenants + d.n_quotas, 0);

  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  kvs_svc_config_usage(f);
  fclose(f);
  static kvs_svc_config z; /* large: not on the stack */
  int live = 0;
  for (size_t i = 0; i < kvs__n_opts; i++) {
    const kvs__opt *o = &kvs__opts[i];
    CU_ASSERT_PTR_EQUAL(kvs__opt_find(o->key), o);
    /* each entry's default, set on a zeroed config, gives kvs_svc_config_defaults's field */
    memset(&z, 0, sizeof z);
    if (o->def) {
      CU_ASSERT_EQUAL(kvs_svc_config_set(&z, o->key, o->def), KVS_OK);
      if (o->flags & KVS__OPT_REPEAT) /* its count is the int after it: 1 here, 0 in d */
        CU_ASSERT(*(int *)((char *)&z + o->off + o->size) >= 1 &&
                  *(int *)((char *)&d + o->off + o->size) == 0);
    }
    if (memcmp((char *)&z + o->off, (char *)&d + o->off, o->size) != 0)
      fprintf(stderr, "option %s: default differs from kvs_svc_config_defaults\n", o->key);
    CU_ASSERT(memcmp((char *)&z + o->off, (char *)&d + o->off, o->size) == 0);
    /* --help lists it, at the start of a line */
    char line[80];
    snprintf(line, sizeof line, "\n  %s ", o->key);
    if (!strstr(text, line)) fprintf(stderr, "option %s: not in --help\n", o->key);
    CU_ASSERT(strstr(text, line) != NULL);
    /* a typo of it suggests it: a letter dropped, a letter doubled */
    size_t kl = strlen(o->key);
    char typo[80];
    for (int kind = 0; kind < 2; kind++) {
      if (kind == 0)
        snprintf(typo, sizeof typo, "%.*s%s", (int)(kl / 2), o->key, o->key + kl / 2 + 1);
      else
        snprintf(typo, sizeof typo, "%.*s%s", (int)(kl / 2 + 1), o->key, o->key + kl / 2);
      char want[120];
      snprintf(want, sizeof want, "unknown option \"%s\" (did you mean \"%s\"?)", typo, o->key);
      CU_ASSERT_EQUAL(kvs_svc_config_set(&z, typo, "1"), KVS_EINVAL);
      if (strcmp(kvs_svc_config_error(), want) != 0)
        fprintf(stderr, "typo %s: %s\n", typo, kvs_svc_config_error());
      CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(), want);
    }
    if (o->flags & KVS__OPT_LIVE) live++;
  }
  free(text);
  /* what a SIGHUP applies (docs/kvstashd.md): tenants and log_level; the rest needs a restart */
  CU_ASSERT_EQUAL(live, 2);
  CU_ASSERT(kvs__opt_find("tenant")->flags & KVS__OPT_LIVE);
  CU_ASSERT(kvs__opt_find("log_level")->flags & KVS__OPT_LIVE);
  CU_ASSERT_PTR_NULL(kvs__opt_find("nope"));
  /* a bad value leaves the field as it was */
  CU_ASSERT_EQUAL(kvs_svc_config_set(&d, "disk_bytes", "0"), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(), "disk_bytes = \"0\": size > 0");
  CU_ASSERT_EQUAL(d.disk_bytes, 64ull << 30);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&d, "half_life_s", "-1"), KVS_EINVAL);
  CU_ASSERT_EQUAL(d.half_life_s, 3600);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&d, "prefill_cost", "0"), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(), "prefill_cost = \"0\": number > 0");
  CU_ASSERT_EQUAL(kvs_svc_config_set(&d, "eviction", "lru"), KVS_OK);
  CU_ASSERT_EQUAL(d.evict_lru, 1);
  CU_ASSERT_EQUAL(kvs_svc_config_set(&d, "cluster_replicas", "0"), KVS_EINVAL);
  CU_ASSERT_STRING_EQUAL(kvs_svc_config_error(), "cluster_replicas = \"0\": see docs/cluster.md");
}

static const kvs_test_case cases[] = {{"defaults", test_defaults},
                                      {"option_table", test_option_table},
                                      {"quotes", test_quotes},
                                      {"file_errors", test_file_errors},
                                      {"ports", test_ports},
                                      {"sizes", test_sizes},
                                      {"shared_parser", test_shared_parser},
                                      {"example_file", test_example_file},
                                      {"flags_override", test_flags_override},
                                      {"print_config", test_print_config},
                                      {"rejects", test_rejects},
                                      {NULL, NULL}};

/* Seed corpus of fuzz_record: valid records (ok and quarantined), one cut short. */
static int write_record_corpus(const char *dir) {
  int32_t tok[5] = {1, 2, 3, 4, 5};
  uint64_t seg[2] = {10, 30};
  kvs_wire_meta m;
  memset(&m, 0, sizeof m);
  m.model = kvs_hash128_buf("m", 1);
  m.key = kvs_key_content(&m.model, tok, 5);
  m.key_kind = KVS_KEY_KIND_CONTENT;
  m.n_tokens = 5;
  m.n_segments = 2;
  m.value_bytes = 30;
  m.codec_profile = 3;
  m.codec_params = (const uint8_t *)"abc";
  m.codec_params_len = 3;
  m.tokens_le = (const uint8_t *)tok;
  m.seg_end_le = (const uint8_t *)seg;
  m.hits = 7;
  m.pinned = 1;
  uint8_t buf[1024];
  size_t n = 0;
  for (int state = 0; state <= 1; state++) {
    if (kvs__record_encode(&m, (uint8_t)state, buf, sizeof buf, &n) != KVS_OK) return 1;
    char path[1024];
    snprintf(path, sizeof path, "%s/record_%d", dir, state);
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    fwrite(buf, 1, state ? n : n, f);
    fclose(f);
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/record_short", dir);
  FILE *f = fopen(path, "wb");
  if (!f) return 1;
  fwrite(buf, 1, n - 9, f);
  fclose(f);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-record-corpus") == 0)
    return write_record_corpus(argv[2]);
  return kvs_test_run("cachesvc_config", cases);
}
