/* kvstashd's config file and flags. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvs_svc.h"
#include "kvs_test.h"

static void test_defaults(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_STRING_EQUAL(c.listen[0], "tcp://127.0.0.1:7878"); /* loopback only */
  CU_ASSERT(strncmp(c.http, "127.0.0.1:", 10) == 0);
  CU_ASSERT_EQUAL(c.durability_sync, 1);
  CU_ASSERT_EQUAL(c.n_tenants, 0);
}

static void test_example_file(void) {
  kvs_svc_config c;
  kvs_svc_config_defaults(&c);
  CU_ASSERT_EQUAL_FATAL(kvs_svc_config_load(&c, kvs_test_src_path("cachesvc/kvstashd.conf.example")),
                        KVS_OK);
  CU_ASSERT_STRING_EQUAL(c.data_dir, "/var/lib/kvstash");
  CU_ASSERT_EQUAL(c.n_listen, 2);
  CU_ASSERT_STRING_EQUAL(c.listen[1], "ipc:///run/kvstash/kvstash.sock");
  CU_ASSERT_EQUAL(c.ram_bytes, 8ull << 30);
  CU_ASSERT_EQUAL(c.cold_bytes, 4ull << 40);
  CU_ASSERT_EQUAL(c.max_msg, 64ull << 20);
  CU_ASSERT_EQUAL(c.log_level, KVS_LOG_INFO);
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
  CU_ASSERT_EQUAL(c.durability_sync, 0);
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

static const kvs_test_case cases[] = {{"defaults", test_defaults},
                                      {"example_file", test_example_file},
                                      {"flags_override", test_flags_override},
                                      {"rejects", test_rejects},
                                      {NULL, NULL}};

int main(void) { return kvs_test_run("cachesvc_config", cases); }
